//! The mutation corpus on the fixture app: `cargo xtask check-exact` builds
//! a copy of the app, applies one mutation at a time (sources, headers,
//! kconfig, Makefile.uk, recipes, compiler wrappers, environment variables,
//! a library bump, moving, copying and renaming the checkout, moving the
//! store, removing parts of the target dir; and reverting each), builds
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
    for group in ["source:", "header:", "kconfig:", "Makefile.uk:", "recipe:", "toolchain:", "env:", "component:", "checkout:", "store:", "target:"] {
        assert!(stdout.contains(group), "no {group} mutation ran:\n{stdout}");
    }
}
