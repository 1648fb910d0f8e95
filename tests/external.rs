//! Use from another repository: a Unikraft project that is not this
//! workspace adopts the tool with an xtask crate of three lines (a
//! dependency on this library, a `main` that calls it, the `cargo xtask`
//! alias), keeps its apps and recipes in its own tree, and builds the
//! fixture app through it. Real cargo (offline), make, gcc, bubblewrap.

mod support;

use std::process::Command;

use camino::Utf8Path;
use support::*;

/// The adopting project's files, as README.md documents them. The package
/// is `uk-xtask` rather than the usual `xtask` only because the test shares
/// this workspace's target directory, whose `xtask` binary the other tests
/// run.
fn write_project(dir: &Utf8Path) {
    let files = [
        ("Cargo.toml", "[workspace]\nmembers = [\"xtask\"]\nresolver = \"2\"\n\n[workspace.metadata.kraft]\napps = \"apps\"\nrecipes = [\"recipes\"]\n\n# As in this workspace, so the shared target dir's dependencies are reused.\n[profile.dev.package.\"*\"]\nopt-level = 2\n".to_string()),
        (
            "xtask/Cargo.toml",
            format!(
                "[package]\nname = \"uk-xtask\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\nkraft-xtask = {{ package = \"xtask\", path = \"{}\" }}\n",
                repo_root().join("xtask")
            ),
        ),
        ("xtask/src/main.rs", "fn main() -> std::process::ExitCode {\n    kraft_xtask::main()\n}\n".to_string()),
        (".cargo/config.toml", "[alias]\nxtask = \"run --quiet --package uk-xtask --\"\n".to_string()),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    // The same dependency versions as this workspace (offline, no resolution surprises).
    std::fs::copy(repo_root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

fn cargo(dir: &Utf8Path, store: &Utf8Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(dir);
    for var in ["KRAFT_MIRRORS", "KRAFT_STORE", "KRAFT_REMOTE_CACHE", "KRAFT_CACHE_SECRET", "CI", "RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    // Shared with this workspace, so the library is not compiled again.
    cmd.env("CARGO_TARGET_DIR", repo_root().join("target").as_str());
    cmd.env("CARGO_NET_OFFLINE", "true");
    cmd.env("KRAFT_STORE", store.as_str());
    cmd.env("KRAFT_ARCHIVE_DIR", fixtures().join("archives").as_str());
    cmd.output().expect("cargo runs")
}

#[test]
fn another_repository_builds_its_own_app_through_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let project = root.join("unikraft-project");
    write_project(&project);
    // Its apps and recipes live in its own tree.
    for dir in ["core", "lib-greet"] {
        copy_dir(&fixtures().join(dir), &project.join("apps").join(dir));
    }
    copy_dir(&fixtures().join("app-hello"), &project.join("apps/ext-hello"));
    let _ = std::fs::remove_file(project.join("apps/ext-hello/kraft.lock"));
    std::fs::create_dir_all(project.join("recipes")).unwrap();
    write_greet_recipe(&project);
    let _ = std::fs::remove_dir_all(repo_root().join("target/kraft/ext-hello"));

    let built = cargo(&project, &root.join("store"), &["build", "--offline", "--package", "uk-xtask"]);
    assert_ok(&built);
    let out = cargo(&project, &root.join("store"), &["xtask", "build", "ext-hello"]);
    assert_ok(&out);
    assert!(project.join("apps/ext-hello/kraft.lock").is_file(), "the lock is written in the project's tree");
    let image = repo_root().join("target/kraft/ext-hello/linuxu-x86_64/hello_linuxu-x86_64");
    let run = Command::new(&image).output().unwrap_or_else(|e| panic!("running {image}: {e}"));
    assert!(String::from_utf8_lossy(&run.stdout).contains("Hello, world!!"), "{}", String::from_utf8_lossy(&run.stdout));
    let _ = std::fs::remove_dir_all(repo_root().join("target/kraft/ext-hello"));
}
