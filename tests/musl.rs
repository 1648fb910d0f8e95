//! Upstream musl 1.2.3 through the engine (recipe `musl-upstream`): the
//! sysroot links a working static program, the graph compiles exactly what
//! musl's own `make` compiles, a second build does nothing, a fresh work dir
//! with a warm store runs nothing, and editing one source recompiles one
//! object.
//!
//! Needs `musl-1.2.3.tar.gz` in `$KRAFT_TEST_MUSL_DIR` (default
//! `/tmp/archives`; CI gets it with `.ci/get-musl-tarball.sh`). Without it
//! the test is skipped with a message, except under `CI=true`, where it
//! fails. Cost: one cold musl build (~1 min with 2 jobs).

use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::pipeline::sysroot::{build_musl, SysrootOptions};
use kraft::source::fetch::{Fetcher, NetworkMode};
use kraft::plan::graph::ActionKind;
use kraft::source::mirror::Mirrors;
use kraft::source::recipe::{ComponentKind, RecipeBook};
use kraft::store::Store;

const TARBALL: &str = "musl-1.2.3.tar.gz";

fn tarball_dir() -> Option<Utf8PathBuf> {
    let dir = Utf8PathBuf::from(std::env::var("KRAFT_TEST_MUSL_DIR").unwrap_or_else(|_| "/tmp/archives".into()));
    if dir.join(TARBALL).is_file() {
        return Some(dir);
    }
    let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
    assert!(!ci, "CI=true but {dir}/{TARBALL} is missing: run .ci/get-musl-tarball.sh {dir} first (or set KRAFT_TEST_MUSL_DIR)");
    eprintln!("skipping the upstream musl test: no {dir}/{TARBALL} (set KRAFT_TEST_MUSL_DIR, or run .ci/get-musl-tarball.sh)");
    None
}

fn sh(script: &str, cwd: &Utf8Path) -> String {
    let out = Command::new("bash").arg("-c").arg(script).current_dir(cwd).output().unwrap();
    assert!(
        out.status.success(),
        "`{script}` in {cwd} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compile commands in `make -n` output: the compiler with `-c`.
fn count_compiles(printed: &str) -> usize {
    printed
        .lines()
        .filter(|l| {
            let first = l.split_whitespace().next().unwrap_or("");
            (first == "gcc" || first == "cc") && l.split_whitespace().any(|w| w == "-c")
        })
        .count()
}

#[test]
fn upstream_musl_sysroot() {
    let Some(archives) = tarball_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = Utf8Path::from_path(tmp.path()).unwrap().canonicalize_utf8().unwrap();
    let store = Store::open(root.join("store")).unwrap();
    let mut mirrors = Mirrors::default();
    mirrors.archive_dir = Some(archives.clone());
    let fetcher = Fetcher::new(&store, &mirrors, NetworkMode { offline: true });
    let recipes = RecipeBook::load(&[]).unwrap();
    let recipe = recipes.get("musl-upstream", ComponentKind::Library);
    let targets = recipe.file.make.clone().unwrap().targets;
    let opts = SysrootOptions { source: None, work: root.join("work"), out: root.join("sysroot"), jobs: 2 };

    // 1. Cold: everything runs.
    let cold = build_musl(&fetcher, &recipes, &opts).unwrap();
    assert!(!cold.plan.cached);
    assert_eq!(cold.report.run, cold.report.total, "{:?}", cold.report);
    assert_eq!(cold.report.restored, 0);

    // Units: one per src/<dir>, plus crt, lib, prepare.
    let units: Vec<String> = cold.plan.graph.units().into_iter().map(|(u, _)| u).collect();
    for u in ["src/string", "src/stdio", "src/math", "crt", "lib", "prepare"] {
        assert!(units.iter().any(|x| x == u), "no unit {u} in {units:?}");
    }
    assert!(!units.iter().any(|u| u.contains("x86_64")), "arch dirs are split off: {units:?}");

    // 2. The same compiles as musl's own make, counted in a fresh, in-tree
    //    configured copy of the release.
    let fresh = root.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    kraft::store::archive::unpack_tar_gz(&archives.join(TARBALL), &fresh).unwrap();
    let tree = fresh.join("musl-1.2.3");
    sh("./configure >/dev/null", &tree);
    let libc_only = count_compiles(&sh("make -n lib/libc.a", &tree));
    let all = count_compiles(&sh(&format!("make -n {}", targets.join(" ")), &tree));
    assert!(libc_only > 1000, "make -n lib/libc.a printed only {libc_only} compiles");
    assert_eq!(cold.compile_actions(), all, "graph compiles vs make -n {}", targets.join(" "));
    let archive = cold
        .plan
        .graph
        .actions
        .iter()
        .find(|a| a.outputs.iter().any(|o| o.as_str() == "/kraft/build/lib/libc.a"))
        .expect("an action writes lib/libc.a");
    let members = archive.inputs.iter().filter(|i| i.extension().is_some_and(|e| e == "o" || e == "lo")).count();
    assert_eq!(members, libc_only, "libc.a members vs compiles of make -n lib/libc.a");

    // 3. The sysroot links a static hello world that runs.
    let sysroot = &cold.sysroot;
    for f in ["include/stdio.h", "include/bits/alltypes.h", "include/bits/syscall.h", "include/sys/types.h", "lib/libc.a", "lib/crt1.o", "lib/crti.o", "lib/crtn.o", "lib/Scrt1.o", "lib/rcrt1.o", "lib/libm.a"] {
        assert!(sysroot.join(f).is_file(), "sysroot lacks {f}");
    }
    let hello = root.join("hello");
    std::fs::create_dir(&hello).unwrap();
    std::fs::write(hello.join("hello.c"), "#include <stdio.h>\n#include <string.h>\nint main(void) { printf(\"hello from musl %zu\\n\", strlen(\"kraft\")); return 0; }\n").unwrap();
    let link = format!(
        "gcc -nostdinc -isystem {s}/include -nostdlib -static -o hello {s}/lib/crt1.o {s}/lib/crti.o hello.c {s}/lib/libc.a -lgcc {s}/lib/crtn.o",
        s = sysroot
    );
    sh(&link, &hello);
    assert_eq!(sh("./hello", &hello), "hello from musl 5\n");
    let file = sh("file hello || true", &hello);
    assert!(file.is_empty() || file.contains("statically linked"), "{file}");

    // 4. No-op: nothing runs, nothing is restored, make does not run.
    let noop = build_musl(&fetcher, &recipes, &opts).unwrap();
    assert!(noop.plan.cached);
    assert_eq!(noop.plan.make_runs, 0);
    assert_eq!((noop.report.run, noop.report.restored), (0, 0), "{:?}", noop.report);
    assert_eq!(noop.report.up_to_date, noop.report.total);

    // 5. A local copy of the source in a fresh work dir, warm store: the
    //    actions' keys do not depend on where the tree lives, so nothing runs.
    let src = root.join("src");
    kraft::util::fs::copy_tree(&tree, &src).unwrap();
    sh("rm -f config.mak", &src); // the in-tree configure of step 2
    let local = SysrootOptions { source: Some(src.clone()), work: root.join("work2"), out: root.join("sysroot2"), jobs: 2 };
    let warm = build_musl(&fetcher, &recipes, &local).unwrap();
    let ran_log = |work: &str| -> Vec<String> {
        let state = kraft::exec::state::BuildState::load(&root.join(work).join("state.json"));
        state
            .last_build
            .entries
            .iter()
            .filter(|e| e.outcome == kraft::exec::state::Outcome::Ran)
            .map(|e| format!("{} ({})", e.name, e.reason))
            .collect()
    };
    assert_eq!(warm.report.run, 0, "fresh dir, warm store ran: {:?}", ran_log("work2"));
    assert_eq!(warm.report.restored, warm.report.total);

    // 6. Edit one source: exactly one compile runs (then the archive).
    let strlen = src.join("src/string/strlen.c");
    let mut text = std::fs::read_to_string(&strlen).unwrap();
    text.push_str("\nint kraft_test_marker(void) { return 42; }\n");
    std::fs::write(&strlen, text).unwrap();
    let edited = build_musl(&fetcher, &recipes, &local).unwrap();
    assert!(edited.plan.cached, "editing a .c file does not replan");
    let ran: Vec<String> = {
        let state = kraft::exec::state::BuildState::load(&root.join("work2/state.json"));
        state.last_build.entries.iter().filter(|e| e.outcome == kraft::exec::state::Outcome::Ran).map(|e| e.name.clone()).collect()
    };
    let compiles_ran: Vec<&String> = ran
        .iter()
        .filter(|n| edited.plan.graph.actions.iter().any(|a| &a.name == *n && a.kind == ActionKind::Compile))
        .collect();
    assert_eq!(compiles_ran.len(), 1, "ran: {ran:?}");
    assert!(compiles_ran[0].contains("src/string/strlen."), "{compiles_ran:?}");
    assert_eq!(edited.report.unit("src/string").unwrap().built, 1);
    let libc = std::fs::read(edited.sysroot.join("lib/libc.a")).unwrap();
    assert!(libc.windows(18).any(|w| w == b"kraft_test_marker\0"), "the edit reached libc.a");
}
