//! `apps/helloworld`, the real example: its committed kraft.lock is valid
//! (schema, pinned commits, the musl archive, upstream URLs), and, when
//! `KRAFT_MIRRORS` serves Unikraft's repositories, it builds `--locked`
//! through them and boots in QEMU.

mod support;

use serde_json::Value;
use support::*;

const UNIKRAFT_0_16_3: &str = "e453b74a2e78a0de98563d75d8e0a97e668088e6";
const LIB_MUSL_0_16_3: &str = "fd1abc9257b40a74c69b3a40467a453bf8892439";
const MUSL_TARBALL_SHA256: &str = "7d5b0b6062521e4627e099e4c9dc8248d32a30285e959b7eecaa780cf8cfd4a4";

fn lock() -> (String, Value) {
    let text = std::fs::read_to_string(repo_root().join("apps/helloworld/kraft.lock")).expect("apps/helloworld/kraft.lock is committed");
    let value: Value = toml_edit::de::from_str(&text).unwrap();
    (text, value)
}

fn component<'a>(lock: &'a Value, name: &str) -> &'a Value {
    lock["component"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no component {name}"))
}

#[test]
fn the_committed_lock_is_valid_and_pins_upstream() {
    let (text, lock) = lock();
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("kraft.lock.schema")).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(&lock).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}\n{text}");

    let core = component(&lock, "unikraft");
    assert_eq!(core["source"], "git+https://github.com/unikraft/unikraft.git");
    assert_eq!(core["ref"], "refs/tags/RELEASE-0.16.3");
    assert_eq!(core["commit"], UNIKRAFT_0_16_3);
    let musl = component(&lock, "musl");
    assert_eq!(musl["source"], "git+https://github.com/unikraft/lib-musl.git");
    assert_eq!(musl["ref"], "refs/tags/RELEASE-0.16.3");
    assert_eq!(musl["commit"], LIB_MUSL_0_16_3);
    let archives = musl["archive"].as_array().expect("the musl tarball is pinned");
    assert_eq!(archives.len(), 1);
    assert_eq!(archives[0]["name"], "musl-1.2.3.tar.gz");
    assert_eq!(archives[0]["url"], "https://www.musl-libc.org/releases/musl-1.2.3.tar.gz");
    assert_eq!(archives[0]["sha256"], MUSL_TARBALL_SHA256);
    assert!(!text.contains("/srv/") && !text.contains("file://"), "mirrors must not leak into the lock:\n{text}");
}

#[test]
fn it_builds_locked_through_mirrors_and_boots() {
    let Some(mirrors) = std::env::var("KRAFT_MIRRORS").ok().filter(|m| !m.is_empty()) else {
        eprintln!("KRAFT_MIRRORS is not set: skipping the real build of apps/helloworld");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A warm store (KRAFT_STORE) makes this quick; without one it is a cold build.
    let store = std::env::var("KRAFT_STORE").ok().filter(|s| !s.is_empty()).map(Into::into).unwrap_or_else(|| utf8(tmp.path()).join("store"));
    let mut env = vec![("KRAFT_MIRRORS", mirrors.as_str())];
    let archives = std::env::var("KRAFT_ARCHIVE_DIR").unwrap_or_default();
    if !archives.is_empty() {
        env.push(("KRAFT_ARCHIVE_DIR", archives.as_str()));
    }
    let root = repo_root();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["--locked", "build", "helloworld"]).current_dir(&root).env("KRAFT_STORE", store.as_str());
    for (k, v) in &env {
        cmd.env(k, v);
    }
    assert_ok(&cmd.output().unwrap());
    // Boot with TCG: `run` picks KVM whenever /dev/kvm opens, which is not
    // always a KVM that works (nested machines).
    let image = root.join("target/kraft/helloworld/qemu-x86_64/helloworld_qemu-x86_64");
    let out = std::process::Command::new("timeout")
        .args(["60", "qemu-system-x86_64", "-accel", "tcg", "-nographic", "-m", "64", "-kernel", image.as_str(), "-append", "helloworld from-test"])
        .output()
        .expect("qemu-system-x86_64 runs (run .ci/setup)");
    let all = String::from_utf8_lossy(&out.stdout);
    assert!(all.contains("Hello from a kraft-xtask unikernel!"), "{all}");
    assert!(all.contains("= from-test (9 bytes)"), "{all}");
}
