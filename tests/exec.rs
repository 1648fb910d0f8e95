//! The execution engine on small hand-built graphs: real gcc, real depfiles,
//! `ld -r`, a final link, a program that runs.
//!
//! Layout of every fixture (host → inside):
//!
//! ```text
//! <tmp>/src   → /kraft/src    (read-only)  a.c b.c c.c include/common.h include/other.h
//! <tmp>/build → /kraft/build  (read-write) libab/{a,b}.o libab/libab.o app/c.o app/app.dbg app/app
//! <store>     the content-addressed store (shared between fixtures in some tests)
//! ```
//!
//! `common.h` is included by a.c and b.c, `other.h` by c.c. The sandbox is
//! the real one (`Sandbox::new`: bwrap when usable, else the `none` backend);
//! one test forces the `none` backend.
//!
//! Tests assert on counters and on which actions ran, never on time.

use std::collections::BTreeSet;
use std::fs;
use std::sync::Mutex;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::exec::{execute, ActionFailed, BuildReport, Event, ExecContext};
use kraft::exec::explain::{self, Filter};
use kraft::exec::fingerprint::DirtyReason;
use kraft::plan::graph::Graph;
use kraft::exec::sandbox::{Backend, Mount, Sandbox};
use kraft::exec::state::{BuildState, Outcome};
use kraft::store::Store;

#[path = "support/graphs.rs"]
mod graphs;
use graphs::{graph, set, write_sources};

struct Fixture {
    _dir: tempfile::TempDir,
    src: Utf8PathBuf,
    build: Utf8PathBuf,
    store: Store,
    state: Utf8PathBuf,
    sandbox: Sandbox,
    graph: Graph,
}

/// What one build did, by action name.
#[derive(Debug, Default)]
struct Seen {
    ran: BTreeSet<String>,
    restored: BTreeSet<String>,
}


impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store_root = Utf8Path::from_path(dir.path()).unwrap().join("store");
        Self::with_store(dir, &store_root, None)
    }

    /// A fresh source + build dir using the store at `store_root`.
    fn sharing(other: &Fixture) -> Fixture {
        Self::with_store(tempfile::tempdir().unwrap(), other.store.root(), None)
    }

    fn with_store(dir: tempfile::TempDir, store_root: &Utf8Path, backend: Option<Backend>) -> Fixture {
        let root = Utf8Path::from_path(dir.path()).unwrap().to_owned();
        let src = root.join("src");
        let build = root.join("build");
        write_sources(&src);
        fs::create_dir_all(&build).unwrap();
        let mounts = vec![Mount::ro(&src, "/kraft/src"), Mount::rw(&build, "/kraft/build")];
        let sandbox = match backend {
            Some(b) => Sandbox::with_backend(mounts, vec![], b).unwrap(),
            None => Sandbox::new(mounts, vec![]).unwrap(),
        };
        eprintln!("sandbox backend: {}", sandbox.backend());
        Fixture {
            store: Store::open(store_root).unwrap(),
            state: build.join(".kraft/state.json"),
            _dir: dir,
            src,
            build,
            sandbox,
            graph: graph(),
        }
    }

    fn try_build(&self) -> (anyhow::Result<BuildReport>, Seen) {
        let seen = Mutex::new(Seen::default());
        let events = |e: &Event<'_>| {
            if let Event::Finished { action, outcome: Some(outcome), .. } = e {
                let mut s = seen.lock().unwrap();
                match outcome {
                    Outcome::Ran => s.ran.insert(action.name.clone()),
                    Outcome::Restored => s.restored.insert(action.name.clone()),
                    Outcome::Failed => false,
                };
            }
        };
        let mut ctx = ExecContext::new(&self.sandbox, &self.store, self.state.clone());
        ctx.jobs = 4;
        ctx.events = &events;
        let result = execute(&self.graph, &ctx);
        (result, seen.into_inner().unwrap())
    }

    fn build(&self) -> (BuildReport, Seen) {
        let (result, seen) = self.try_build();
        match result {
            Ok(report) => (report, seen),
            Err(e) => panic!("build failed: {e:#}"),
        }
    }

    fn edit(&self, path: &str, from: &str, to: &str) {
        let path = self.src.join(path);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{path} does not contain {from:?}");
        fs::write(&path, text.replace(from, to)).unwrap();
    }

    fn run_app(&self) -> String {
        let out = std::process::Command::new(self.build.join("app/app")).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }
}

#[test]
fn cold_build_runs_everything_and_noop_runs_and_hashes_nothing() {
    let fx = Fixture::new();
    let (cold, seen) = fx.build();
    assert_eq!((cold.total, cold.run, cold.restored, cold.up_to_date), (6, 6, 0, 0), "{cold:#?}");
    assert_eq!(seen.ran.len(), 6);
    assert_eq!(fx.run_app(), "sum=42 other=7\n");
    let toolchain = BuildState::load(&fx.state).toolchain;
    for part in ["gcc", "gcc:cc1", "gcc:as", "gcc:ld", "libgcc", "ld", "objcopy", "version"] {
        assert!(toolchain.contains_key(part), "toolchain identity lacks {part}: {toolchain:?}");
    }
    let libab = cold.unit("libab").unwrap();
    assert_eq!((libab.total, libab.built, libab.status()), (3, 3, "built"));

    let (noop, seen) = fx.build();
    assert_eq!((noop.run, noop.restored, noop.up_to_date), (0, 0, 6), "{noop:#?}");
    assert_eq!(noop.files_hashed, 0, "a no-op build must not read any file");
    assert!(seen.ran.is_empty() && seen.restored.is_empty());
    assert!(noop.summary_lines().iter().all(|l| l.starts_with("fresh")), "{:?}", noop.summary_lines());
    assert_eq!(fx.run_app(), "sum=42 other=7\n");
}

#[test]
fn editing_a_source_rebuilds_that_object_and_what_links_it() {
    let fx = Fixture::new();
    fx.build();
    fx.edit("c.c", "sum=", "total=");
    let (r, seen) = fx.build();
    assert_eq!(seen.ran, set(&["app/c.o", "app/app.dbg", "app/app"]));
    assert_eq!((r.run, r.up_to_date), (3, 3));
    assert_eq!(r.unit("libab").unwrap().status(), "fresh");
    assert_eq!(fx.run_app(), "total=42 other=7\n");

    fx.edit("a.c", "return A_VALUE;", "return A_VALUE + 1;");
    let (_, seen) = fx.build();
    assert_eq!(seen.ran, set(&["libab/a.o", "libab/libab.o", "app/app.dbg", "app/app"]));
    assert_eq!(fx.run_app(), "total=43 other=7\n");
}

#[test]
fn editing_a_header_rebuilds_exactly_the_objects_that_read_it() {
    let fx = Fixture::new();
    fx.build();
    fx.edit("include/other.h", "7", "8");
    let (_, seen) = fx.build();
    assert_eq!(seen.ran, set(&["app/c.o", "app/app.dbg", "app/app"]));
    assert_eq!(fx.run_app(), "sum=42 other=8\n");

    fx.edit("include/common.h", "B_VALUE 2", "B_VALUE 3");
    let (_, seen) = fx.build();
    assert_eq!(seen.ran, set(&["libab/a.o", "libab/b.o", "libab/libab.o", "app/app.dbg", "app/app"]));
    assert_eq!(fx.run_app(), "sum=43 other=8\n");

    // Explain names the header, with both hashes.
    let state = BuildState::load(&fx.state);
    let list = explain::explain(&state, &Filter::Any("libab/a.o".into()));
    assert_eq!(list.len(), 1);
    match &list[0].entry.reason {
        DirtyReason::HeaderChanged { path, old: Some(old), new: Some(new) } => {
            assert_eq!(path, "/kraft/src/include/common.h");
            assert_ne!(old, new);
        }
        other => panic!("unexpected reason {other:?}"),
    }
    let text = explain::render(&fx.state, &Filter::Unit("libab".into()));
    assert!(text.contains("header /kraft/src/include/common.h changed"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
    let text = explain::render(&fx.state, &Filter::Any("app/app.dbg".into()));
    assert!(text.contains("input /kraft/build/libab/libab.o changed"), "{text}");
}

#[test]
fn byte_identical_output_stops_the_rebuild() {
    let fx = Fixture::new();
    fx.build();
    fx.edit("a.c", "a comment", "another comment");
    let (r, seen) = fx.build();
    assert_eq!(seen.ran, set(&["libab/a.o"]), "early cutoff: nothing downstream of a.o reruns");
    assert_eq!((r.run, r.restored, r.up_to_date), (1, 0, 5));
    let state = BuildState::load(&fx.state);
    let list = explain::explain(&state, &Filter::All);
    assert!(
        matches!(&list[0].entry.reason, DirtyReason::InputChanged { path, .. } if path == "/kraft/src/a.c"),
        "{list:?}"
    );
}

#[test]
fn deleted_or_modified_outputs_are_restored_without_running() {
    let fx = Fixture::new();
    fx.build();
    fs::remove_file(fx.build.join("libab/a.o")).unwrap();
    fs::remove_file(fx.build.join("app/app")).unwrap();
    let (r, seen) = fx.build();
    assert_eq!((r.run, r.restored, r.up_to_date), (0, 2, 4));
    assert_eq!(seen.restored, set(&["libab/a.o", "app/app"]));
    assert_eq!(fx.run_app(), "sum=42 other=7\n");
    let mode = fs::metadata(fx.build.join("app/app")).unwrap();
    assert!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111 != 0, "restored as executable");

    fs::write(fx.build.join("libab/libab.o"), "garbage").unwrap();
    let (r, seen) = fx.build();
    assert_eq!((r.run, r.restored), (0, 1));
    assert_eq!(seen.restored, set(&["libab/libab.o"]));
    let state = BuildState::load(&fx.state);
    assert!(matches!(state.last_build.entries[0].reason, DirtyReason::OutputModified { .. }));
    assert_eq!(fx.run_app(), "sum=42 other=7\n");
}

#[test]
fn fresh_build_dir_with_the_same_store_restores_everything() {
    let first = Fixture::new();
    first.build();
    let second = Fixture::sharing(&first);
    let (r, seen) = second.build();
    assert_eq!((r.run, r.restored, r.up_to_date), (0, 6, 0), "{r:#?}");
    assert_eq!(seen.restored.len(), 6);
    assert!(r.summary_lines().iter().all(|l| l.starts_with("cached")), "{:?}", r.summary_lines());
    assert_eq!(second.run_app(), "sum=42 other=7\n");
    // And the restored build dir is then up to date, headers included.
    let (r, _) = second.build();
    assert_eq!((r.run, r.restored, r.up_to_date), (0, 0, 6));
    second.edit("include/common.h", "A_VALUE 40", "A_VALUE 50");
    let (_, seen) = second.build();
    assert!(seen.ran.contains("libab/a.o") && seen.ran.contains("libab/b.o") && !seen.ran.contains("app/c.o"));
    assert_eq!(second.run_app(), "sum=52 other=7\n");
}

#[test]
fn a_failing_compile_reports_clearly_and_a_fixed_build_succeeds() {
    let fx = Fixture::new();
    fx.build();
    fx.edit("b.c", "return B_VALUE;", "return B_VALUE +;");
    let (result, seen) = fx.try_build();
    let err = result.unwrap_err();
    let failed = err.downcast_ref::<ActionFailed>().unwrap_or_else(|| panic!("not an ActionFailed: {err:#}"));
    assert_eq!((failed.name.as_str(), failed.unit.as_str()), ("libab/b.o", "libab"));
    assert!(failed.command.contains("gcc") && failed.command.contains("/kraft/src/b.c"));
    assert!(failed.stderr.contains("error"), "{}", failed.stderr);
    assert!(failed.stderr.contains("/kraft/src/b.c"), "paths are inside paths: {}", failed.stderr);
    let msg = err.to_string();
    assert!(msg.contains("libab/b.o") && msg.contains("exit status") && msg.contains("error"), "{msg}");
    assert!(!seen.ran.contains("libab/libab.o"), "nothing after the failure is scheduled");
    assert!(!fx.build.join("libab/b.o").exists(), "no half-written output stays");
    let state = BuildState::load(&fx.state);
    assert!(!state.last_build.succeeded);

    // Fixed differently: it compiles and everything downstream follows.
    fx.edit("b.c", "return B_VALUE +;", "return B_VALUE + 1;");
    let (_, seen) = fx.build();
    assert_eq!(seen.ran, set(&["libab/b.o", "libab/libab.o", "app/app.dbg", "app/app"]));
    assert_eq!(fx.run_app(), "sum=43 other=7\n");

    // Broken then reverted to a known version: restored from the cache.
    fx.edit("b.c", "return B_VALUE + 1;", "return B_VALUE +;");
    assert!(fx.try_build().0.is_err());
    fx.edit("b.c", "return B_VALUE +;", "return B_VALUE + 1;");
    let (r, seen) = fx.build();
    assert_eq!(seen.restored, set(&["libab/b.o"]));
    assert_eq!((r.run, r.up_to_date), (0, 5));
}

#[test]
fn a_corrupt_cache_blob_is_a_miss() {
    let first = Fixture::new();
    first.build();
    let a_o = fs::read(first.build.join("libab/a.o")).unwrap();
    let blob = first.store.blob_path(blake3::hash(&a_o).to_hex().as_str());
    let mut perms = fs::metadata(&blob).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    fs::set_permissions(&blob, perms).unwrap();
    fs::write(&blob, "not an object file").unwrap();

    let second = Fixture::sharing(&first);
    let (r, seen) = second.build();
    assert_eq!(seen.ran, set(&["libab/a.o"]), "the corrupt blob is not used");
    assert_eq!((r.run, r.restored), (1, 5));
    assert_eq!(second.run_app(), "sum=42 other=7\n");
    assert_eq!(fs::read(&blob).unwrap(), a_o, "the blob was rewritten");
}

#[test]
fn corrupt_cache_entries_and_state_are_misses() {
    let first = Fixture::new();
    first.build();
    // Garble every action cache file.
    for entry in walkdir::WalkDir::new(first.store.root().join("ac")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            fs::write(entry.path(), "{ not json").unwrap();
        }
    }
    let second = Fixture::sharing(&first);
    let (r, _) = second.build();
    assert_eq!((r.run, r.restored), (6, 0));
    // A garbled state file means: no records (then: restored from the cache).
    fs::write(&second.state, "garbage").unwrap();
    let (r, _) = second.build();
    assert_eq!((r.run, r.restored), (0, 6));
}

#[test]
fn a_changed_command_reruns_with_reason() {
    let mut fx = Fixture::new();
    fx.build();
    fx.graph.actions[5].script = "strip --strip-debug -o app/app app/app.dbg".into();
    let (_, seen) = fx.build();
    assert_eq!(seen.ran, set(&["app/app"]));
    let state = BuildState::load(&fx.state);
    assert_eq!(state.last_build.entries[0].reason, DirtyReason::ScriptChanged);
}

#[test]
fn a_different_toolchain_misses_the_cache() {
    let fx = Fixture::new();
    fx.build();
    let seen = Mutex::new(0usize);
    let count = |e: &Event<'_>| {
        if let Event::Started { reason, .. } = e {
            assert_eq!(**reason, DirtyReason::ToolchainChanged);
            *seen.lock().unwrap() += 1;
        }
    };
    let mut ctx = ExecContext::new(&fx.sandbox, &fx.store, fx.state.clone());
    ctx.events = &count;
    // Identifying one more tool changes the toolchain id, like an upgrade would.
    ctx.toolchain.tools.push("objdump".into());
    let r = execute(&fx.graph, &ctx).unwrap();
    assert_eq!((r.run, r.restored), (6, 0));
    assert_eq!(*seen.lock().unwrap(), 6);
}

#[test]
fn unsandboxed_backend_works_and_shares_keys_across_checkouts() {
    let dir = tempfile::tempdir().unwrap();
    let store_root = Utf8Path::from_path(dir.path()).unwrap().join("store");
    let first = Fixture::with_store(tempfile::tempdir().unwrap(), &store_root, Some(Backend::None));
    let (r, _) = first.build();
    assert_eq!(r.run, 6);
    assert_eq!(first.run_app(), "sum=42 other=7\n");
    let (r, _) = first.build();
    assert_eq!((r.run, r.files_hashed), (0, 0));
    first.edit("include/other.h", "7", "9");
    let (_, seen) = first.build();
    assert_eq!(seen.ran, set(&["app/c.o", "app/app.dbg", "app/app"]), "host depfile paths are mapped back");
    let second = Fixture::with_store(tempfile::tempdir().unwrap(), &store_root, Some(Backend::None));
    let (r, _) = second.build();
    assert_eq!((r.run, r.restored), (0, 6));
}

#[test]
fn a_fresh_build_dir_takes_the_toolchain_probe_from_the_store_while_its_stamps_hold() {
    let first = Fixture::new();
    first.build();
    let probes: Vec<_> = std::fs::read_dir(first.store.root().join("probes")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(probes.len(), 1, "{probes:?}");
    // Mark the probe's output kept in the store: a build that takes it
    // from there carries the mark into the memo beside its own state.
    let mut memo: serde_json::Value = serde_json::from_slice(&std::fs::read(&probes[0]).unwrap()).unwrap();
    memo["output"] = format!("{}text\tmarked in the store\n", memo["output"].as_str().unwrap()).into();
    std::fs::write(&probes[0], memo.to_string()).unwrap();
    let beside = |fx: &Fixture| std::fs::read_to_string(fx.state.with_file_name("state.json.toolchain")).unwrap();
    let second = Fixture::sharing(&first);
    second.build();
    assert!(beside(&second).contains("marked in the store"), "{}", beside(&second));
    // A kept probe whose programs' stamps moved is not used: the build probes.
    memo["stamps"][0] = "/usr/bin/gcc moved".into();
    std::fs::write(&probes[0], memo.to_string()).unwrap();
    let third = Fixture::sharing(&first);
    third.build();
    assert!(!beside(&third).contains("marked in the store"), "{}", beside(&third));
}
