//! The mutation corpus on the fixture app: `cargo xtask check-exact` builds
//! a copy of the app, applies one mutation at a time (sources, headers,
//! kconfig, Makefile.uk, recipes, compiler wrappers, environment variables,
//! a library bump, an origin archive re-rolled under the same URL, moving,
//! copying and renaming the checkout, moving the store, removing parts of
//! the target dir; and reverting each), builds
//! incrementally and compares every output with a clean build (fresh store,
//! fresh target dir). It must print `exact: N/N, needless: 0` with N >= 50.

mod support;

use support::*;

#[test]
fn every_mutation_builds_exactly_what_a_clean_build_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let ws = root.join("ws");
    make_workspace(&ws);
    write_greet_recipe(&ws);
    for dir in ["core", "lib-greet", "app-hello"] {
        copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
    }
    let _ = std::fs::remove_file(ws.join("apps/app-hello/kraft.lock"));
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(std::fs::metadata("/usr/local").is_ok_and(|m| !m.permissions().readonly()), "CI must be able to write compiler wrappers under /usr/local");
    }
    let archives = fixtures().join("archives");
    let out = xtask(&ws, &root.join("store"), &[("KRAFT_ARCHIVE_DIR", archives.as_str())], &["check-exact", "app-hello"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert_ok(&out);
    let last = stdout.lines().last().unwrap_or("");
    let (n, rest) = last.strip_prefix("exact: ").and_then(|r| r.split_once('/')).unwrap_or_else(|| panic!("no summary line:\n{stdout}"));
    let n: usize = n.parse().unwrap();
    assert!(n >= 50, "only {n} mutations:\n{stdout}");
    assert_eq!(rest, format!("{n}, needless: 0"), "{stdout}");
    for group in ["source:", "header:", "kconfig:", "Makefile.uk:", "recipe:", "toolchain:", "env:", "component:", "origin:", "checkout:", "store:", "target:"] {
        assert!(stdout.contains(group), "no {group} mutation ran:\n{stdout}");
    }
    // The origin archive greet-1.0.tar.gz re-rolled: with the old pin a clean
    // build fails naming the archive (and, checked by the harness, the URL,
    // both sha256s and `cargo xtask update`); re-pinned, it rebuilds; reverted,
    // it restores.
    let line = |start: &str| stdout.lines().find(|l| l.contains(start)).unwrap_or_else(|| panic!("no line {start}:\n{stdout}")).to_string();
    let stale_pin = line("origin: greet-1.0.tar.gz new bytes, lock pins the old");
    assert!(stale_pin.contains("a clean build fails as it should: error: origin archive greet-1.0.tar.gz of `greet` changed"), "{stale_pin}");
    assert!(stale_pin.contains("ran    0"), "the store's pinned copy still serves the incremental build: {stale_pin}");
    let repinned = line("origin: greet-1.0.tar.gz re-pinned");
    assert!(!repinned.contains("ran    0,"), "re-pinning a changed archive must rebuild what it reaches: {repinned}");
    let reverted = line("origin: greet-1.0.tar.gz reverted");
    assert!(reverted.contains("ran    0,"), "the reverted archive's outputs come from the store: {reverted}");
}
