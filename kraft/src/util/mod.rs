//! Helpers with one home each: [`fs`] (atomic writes, tree copies and
//! removal), [`hash`] (hex, file digests), [`shell`] (quoting, via `shlex`),
//! [`text`] (log tails), [`tree_path`] (writing an untrusted tree without
//! leaving its root).

pub mod fs;
pub mod hash;
pub mod shell;
pub mod text;
pub mod tree_path;
