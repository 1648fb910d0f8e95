//! Shared test support: real git repositories made from `fixtures/`, a
//! throwaway cargo workspace, and the real `xtask` binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use camino::{Utf8Path, Utf8PathBuf};

pub fn repo_root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

pub fn fixtures() -> Utf8PathBuf {
    repo_root().join("fixtures")
}

/// Run git with a fixed identity and dates, so commits are reproducible.
pub fn git(dir: &Utf8Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir.as_str())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn copy_dir(from: &Utf8Path, to: &Utf8Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let dest = to.as_std_path().join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else if entry.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A git repository at `mirror/<name>.git` (bare, as a mirror serves it)
/// holding `content`, with `stable` and `staging` branches and a
/// `RELEASE-0.1.0` tag. Returns the path of the work repo used to make
/// further commits (push with `push_all`).
pub fn make_repo(mirror: &Utf8Path, name: &str, content: &Utf8Path) -> Utf8PathBuf {
    let work = mirror.parent().unwrap().join("work").join(name);
    std::fs::create_dir_all(&work).unwrap();
    copy_dir(content, &work);
    git(&work, &["init", "-q", "-b", "stable"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "initial"]);
    git(&work, &["tag", "-a", "RELEASE-0.1.0", "-m", "release 0.1.0"]);
    git(&work, &["branch", "staging"]);
    let bare = mirror.join(format!("{name}.git"));
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(mirror, &["clone", "-q", "--bare", work.as_str(), bare.as_str()]);
    work
}

/// Commit a change in a work repo and push every branch and tag to its bare mirror.
pub fn commit_and_push(work: &Utf8Path, mirror_repo: &Utf8Path, file: &str, text: &str) -> String {
    std::fs::write(work.join(file), text).unwrap();
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", &format!("change {file}")]);
    git(work, &["push", "-q", "--force", mirror_repo.as_str(), "stable"]);
    git(work, &["rev-parse", "HEAD"])
}

/// A cargo workspace in `dir` whose kraft settings point at `recipes/`.
pub fn make_workspace(dir: &Utf8Path) {
    std::fs::create_dir_all(dir.join("apps")).unwrap();
    std::fs::create_dir_all(dir.join("recipes")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"fixture-workspace\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[lib]\npath = \"lib.rs\"\n\n[workspace]\n\n[workspace.metadata.kraft]\napps = \"apps\"\nrecipes = \"recipes\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("lib.rs"), "").unwrap();
}

pub fn sha256_hex(path: &Utf8Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    format!("{:x}", sha2::Sha256::digest(&bytes))
}

/// The recipe of the fixture library `greet`, with its origin archive.
pub fn write_greet_recipe(workspace: &Utf8Path) {
    let archive = fixtures().join("archives/greet-1.0.tar.gz");
    let text = format!(
        "[recipe]\nname = \"greet\"\nkind = \"library\"\n\n[source]\ngit = \"https://github.com/unikraft/lib-greet.git\"\n\n[layout]\nmount = \"libs/greet\"\n\n[[archive]]\nname = \"greet-1.0.tar.gz\"\nurl = \"https://example.invalid/releases/greet-1.0.tar.gz\"\nsha256 = \"{}\"\ndest = \"libgreet/greet-1.0.tar.gz\"\n\n[[units.split]]\nlibrary = \"libgreet\"\nby-source-dir = \"src\"\n",
        sha256_hex(&archive)
    );
    std::fs::write(workspace.join("recipes/greet.toml"), text).unwrap();
}

/// The real binary, with a clean kraft environment.
pub fn xtask(cwd: &Utf8Path, store: &Utf8Path, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).current_dir(cwd);
    for var in ["KRAFT_MIRRORS", "KRAFT_ARCHIVE_DIR", "KRAFT_STORE", "KRAFT_REMOTE_CACHE", "KRAFT_CACHE_SIGNING_KEY", "KRAFT_CACHE_TRUSTED_KEYS", "CI"] {
        cmd.env_remove(var);
    }
    cmd.env("KRAFT_STORE", store.as_str());
    cmd.env("CARGO_TARGET_DIR", cwd.join("target").as_str());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("xtask runs")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "xtask failed:\nstdout: {}\nstderr: {}", String::from_utf8_lossy(&out.stdout), stderr(out));
}

#[track_caller]
pub fn assert_fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure, got success: {}", stderr(out));
    assert!(stderr(out).contains(needle), "expected {needle:?} in:\n{}", stderr(out));
}

pub fn utf8(path: &Path) -> Utf8PathBuf {
    Utf8PathBuf::from_path_buf(path.to_owned()).unwrap()
}
