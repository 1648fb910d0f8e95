//! Where each component sits inside the build sandbox: fixed paths, so
//! every command line (and so every action key) is the same on every machine.

use camino::Utf8PathBuf;

use crate::plan::graph::SANDBOX_ROOT;

pub fn inside_core() -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/unikraft"))
}
pub fn inside_lib(name: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/libs/{name}"))
}
pub fn inside_app(name: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/apps/{name}"))
}
pub fn inside_build() -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/build"))
}

