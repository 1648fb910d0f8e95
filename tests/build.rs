//! `cargo xtask build` end to end on the fixture core, library and app: the
//! real planner (make in bubblewrap), the real engine, real gcc. Assertions
//! are on the engine's own counters and on what ran, never on time.

mod support;

use std::collections::BTreeSet;

use camino::Utf8PathBuf;
use serde_json::Value;
use support::*;

struct App {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    ws: Utf8PathBuf,
    store: Utf8PathBuf,
}

/// Events of one `--message-format json` build.
struct Build {
    ok: bool,
    stderr: String,
    events: Vec<Value>,
}

impl Build {
    fn target(&self) -> &Value {
        self.events.iter().find(|e| e["reason"] == "target-finished").unwrap_or_else(|| panic!("no target-finished event:\n{}", self.stderr))
    }
    fn count(&self, field: &str) -> u64 {
        self.target()[field].as_u64().unwrap_or_else(|| panic!("no {field}"))
    }
    /// Names of the actions that ran in the sandbox.
    fn ran(&self) -> BTreeSet<String> {
        self.events
            .iter()
            .filter(|e| e["reason"] == "action-finished" && e["outcome"] == "ran")
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The object files under `build`, relative to it.
fn objects_in(build: &camino::Utf8Path) -> BTreeSet<String> {
    walkdir::WalkDir::new(build)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.file_name().to_string_lossy().ends_with(".o"))
        .map(|e| e.path().strip_prefix(build.as_std_path()).unwrap().display().to_string())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

impl App {
    /// The fixture app with local `source:` directories, in a workspace of its own.
    fn local() -> App {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let ws = root.join("ws");
        make_workspace(&ws);
        write_greet_recipe(&ws);
        for dir in ["core", "lib-greet", "app-hello"] {
            copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
        }
        let _ = std::fs::remove_file(ws.join("apps/app-hello/kraft.lock"));
        App { store: root.join("store"), _tmp: tmp, root, ws }
    }

    fn app_dir(&self) -> Utf8PathBuf {
        self.ws.join("apps/app-hello")
    }

    fn xtask(&self, args: &[&str]) -> std::process::Output {
        let archives = fixtures().join("archives");
        xtask(&self.ws, &self.store, &[("KRAFT_ARCHIVE_DIR", archives.as_str())], args)
    }

    fn build(&self) -> Build {
        let out = self.xtask(&["--message-format", "json", "build", "app-hello"]);
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        Build { ok: out.status.success(), stderr: stderr(&out), events }
    }

    fn run_image(&self) -> String {
        let image = self.ws.join("target/kraft/app-hello/linuxu-x86_64/hello_linuxu-x86_64");
        let out = std::process::Command::new(&image).output().unwrap_or_else(|e| panic!("running {image}: {e}"));
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.ws.join("apps").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} not in {path}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
}

#[test]
fn cold_noop_edits_kconfig_and_explain() {
    let app = App::local();

    // Cold: everything runs, make plans.
    let cold = app.build();
    assert!(cold.ok, "{}", cold.stderr);
    let total = cold.count("actions");
    assert_eq!(cold.count("run"), total);
    assert_eq!(cold.count("make_runs"), 3);
    assert!(total >= 18, "{total}");
    assert!(app.run_image().contains("Hello, world!!\n"));

    // No-op: no action, no make, not one file hashed.
    let noop = app.build();
    assert!(noop.ok, "{}", noop.stderr);
    assert_eq!((noop.count("run"), noop.count("restored"), noop.count("make_runs")), (0, 0, 0));
    assert_eq!(noop.count("up_to_date"), total);
    assert_eq!(noop.count("files_hashed"), 0);
    assert_eq!(noop.target()["plan_cached"], true);
    // Once the outputs are older than the timestamp granularity, the no-op
    // check answers alone: it stats the recorded files and stops.
    let again = app.build();
    assert!(again.target()["noop_check_files"].as_u64().unwrap_or(0) > total, "{:?}", again.target());
    assert_eq!(again.count("run") + again.count("restored"), 0);

    // Editing the app's main.c recompiles that object and relinks what depends on it.
    app.edit("app-hello/main.c", "printf(\"%s\\n\", buf);", "printf(\"%s?\\n\", buf);");
    let edit = app.build();
    assert!(edit.ok, "{}", edit.stderr);
    assert_eq!(edit.count("make_runs"), 0, "a source edit does not re-plan");
    assert_eq!(
        edit.ran(),
        set(&["apphello/main.o", "apphello.ld.o", "apphello.o", "hello_linuxu-x86_64.dbg", "hello_linuxu-x86_64"])
    );
    assert!(app.run_image().contains("Hello, world!!?\n"));

    // A comment-only edit recompiles to the same bytes: early cutoff, nothing else runs.
    app.edit("app-hello/main.c", "return 0;", "return 0; /* unchanged code */");
    let cutoff = app.build();
    assert_eq!(cutoff.ran(), set(&["apphello/main.o"]));

    // One file of a local library: that object, its library's partial links, the image.
    app.edit("lib-greet/glue.c", "greet_punct());", "\"?\");");
    let lib = app.build();
    assert!(lib.ok, "{}", lib.stderr);
    assert_eq!(
        lib.ran(),
        set(&["libgreet/glue.o", "libgreet.ld.o", "libgreet.o", "hello_linuxu-x86_64.dbg", "hello_linuxu-x86_64"])
    );
    assert!(app.run_image().contains("Hello, world??\n"), "{}", app.run_image());
    app.edit("lib-greet/glue.c", "\"?\");", "greet_punct());");
    assert!(app.build().ok);

    // A kconfig change re-plans; it reaches exactly the objects that read the
    // generated config header, and those whose bytes do not change stop there.
    app.edit("app-hello/Kraftfile", "CONFIG_LIBGREET_EXCLAIM: 2", "CONFIG_LIBGREET_EXCLAIM: 3");
    let flip = app.build();
    assert!(flip.ok, "{}", flip.stderr);
    assert_eq!(flip.count("make_runs"), 3, "a kconfig change re-plans");
    let ran = flip.ran();
    for untouched in ["libgreet/hello.o", "libgreet/world.o", "libgreet/join.o", "libgreet/glue.o"] {
        assert!(!ran.contains(untouched), "{untouched} does not read the config header but ran: {ran:?}");
    }
    assert!(ran.contains("libgreet/punct.o"), "{ran:?}");
    assert!(ran.contains("hello_linuxu-x86_64.dbg"), "{ran:?}");
    assert!(app.run_image().contains("Hello, world!!!?\n"), "{}", app.run_image());

    // explain says why each of those ran: the config header changed.
    let out = app.xtask(&["explain", "app-hello"]);
    assert_ok(&out);
    let explain = String::from_utf8(out.stdout).unwrap();
    let punct = explain.lines().find(|l| l.contains("libgreet/punct.o")).unwrap_or_else(|| panic!("{explain}"));
    assert!(punct.contains("header /kraft/build/include/uk/bits/config.h changed"), "{punct}");
    for name in &ran {
        assert!(explain.lines().any(|l| l.contains(name.as_str())), "{name} missing from explain:\n{explain}");
    }
    let unit = app.xtask(&["explain", "app-hello", "libgreet/src/format"]);
    let unit = String::from_utf8(unit.stdout).unwrap();
    assert!(unit.contains("libgreet/punct.o") && !unit.contains("apphello"), "{unit}");

    // Back to the first configuration: every action comes from the cache.
    app.edit("app-hello/Kraftfile", "CONFIG_LIBGREET_EXCLAIM: 3", "CONFIG_LIBGREET_EXCLAIM: 2");
    let back = app.build();
    assert_eq!(back.count("run"), 0, "ran: {:?}", back.ran());
    assert_eq!(back.count("make_runs"), 0, "the old plan is cached");
    assert!(app.run_image().contains("Hello, world!!?\n"), "{}", app.run_image());
}

#[test]
fn fresh_checkout_with_a_warm_store_runs_nothing() {
    let app = App::local();
    assert!(app.build().ok);
    // The same sources in another directory, another target dir, same store.
    let other = app.root.join("ws2");
    make_workspace(&other);
    write_greet_recipe(&other);
    copy_dir(&app.ws.join("apps"), &other.join("apps"));
    let archives = fixtures().join("archives");
    let out = xtask(&other, &app.store, &[("KRAFT_ARCHIVE_DIR", archives.as_str())], &["--message-format", "json", "build", "app-hello"]);
    assert_ok(&out);
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let target = events.iter().find(|e| e["reason"] == "target-finished").unwrap();
    assert_eq!(target["run"], 0, "{target}");
    assert_eq!(target["make_runs"], 0);
    // Bit-identical to the first checkout's image.
    let a = std::fs::read(app.ws.join("target/kraft/app-hello/linuxu-x86_64/hello_linuxu-x86_64")).unwrap();
    let b = std::fs::read(other.join("target/kraft/app-hello/linuxu-x86_64/hello_linuxu-x86_64")).unwrap();
    assert!(a == b, "images differ");

    // Nothing ran, so the objects stayed in the store (`exec::in_store`):
    // the state lists them, and the build dir does not hold them.
    let objects = |ws: &camino::Utf8Path| objects_in(&ws.join("target/kraft/app-hello/linuxu-x86_64/build"));
    let all = objects(&app.ws);
    assert!(all.len() >= 4, "{all:?}");
    let state: Value = serde_json::from_slice(&std::fs::read(other.join("target/kraft/app-hello/linuxu-x86_64/state.json")).unwrap()).unwrap();
    let left = state["in_store"].as_array().map_or(0, Vec::len);
    assert!(left >= all.len(), "{left} outputs left in the store, {} objects: {state}", all.len());
    assert!(objects(&other).is_empty(), "{:?}", objects(&other));

    // A bad setting is an error that says what to write.
    let out = xtask(&other, &app.store, &[("KRAFT_ARCHIVE_DIR", archives.as_str()), ("KRAFT_MATERIALIZE", "some")], &["build", "app-hello"]);
    assert_fails_with(&out, "KRAFT_MATERIALIZE=some: expected `needed` or `all`");
    // `all` writes them, byte for byte the first checkout's, running nothing.
    let out = xtask(&other, &app.store, &[("KRAFT_ARCHIVE_DIR", archives.as_str()), ("KRAFT_MATERIALIZE", "all")], &["build", "app-hello"]);
    assert_ok(&out);
    assert_eq!(objects(&other), all);
    for rel in &all {
        let [x, y] = [&app.ws, &other].map(|ws| std::fs::read(ws.join("target/kraft/app-hello/linuxu-x86_64/build").join(rel)).unwrap());
        assert!(x == y, "{rel} differs");
    }
}

/// Outputs left in the store are written before the first command of a
/// later build runs: an edit after a fresh checkout compiles and links
/// against every object, as after a build that wrote them all.
#[test]
fn a_command_after_a_build_that_left_objects_in_the_store_sees_them_all() {
    let app = App::local();
    assert!(app.build().ok);
    let build = app.ws.join("target/kraft/app-hello/linuxu-x86_64/build");
    let objects = || objects_in(&build);
    let all = objects();
    std::fs::remove_dir_all(app.ws.join("target/kraft/app-hello")).unwrap();
    let fresh = app.build();
    assert!(fresh.ok, "{}", fresh.stderr);
    assert!(objects().is_empty(), "objects stay in the store: {:?}", objects());
    app.edit("app-hello/main.c", "return 0;", "puts(\"edited\"); return 0;");
    let edited = app.build();
    assert!(edited.ok, "{}", edited.stderr);
    assert_eq!(objects(), all, "every object is written before the compile runs");
    assert!(app.run_image().contains("edited"));
}

#[test]
fn a_failing_compile_is_reported_and_a_fix_recovers() {
    let app = App::local();
    assert!(app.build().ok);
    app.edit("app-hello/main.c", "return 0;", "return nonsense;");
    let out = app.xtask(&["build", "app-hello"]);
    assert_fails_with(&out, "apphello/main.o (unit apphello) failed");
    assert!(stderr(&out).contains("nonsense"), "the compiler's message is shown: {}", stderr(&out));
    app.edit("app-hello/main.c", "return nonsense;", "return 0;");
    let fixed = app.build();
    assert!(fixed.ok, "{}", fixed.stderr);
    assert!(app.run_image().contains("Hello, world!!\n"));
}

#[test]
fn git_sources_through_mirrors_build_locked() {
    let app = App::local();
    let mirror = app.root.join("mirror");
    make_repo(&mirror.join("unikraft"), "unikraft", &fixtures().join("core"));
    make_repo(&mirror.join("unikraft"), "lib-greet", &fixtures().join("lib-greet"));
    let kraftfile = app.app_dir().join("Kraftfile");
    let text = std::fs::read_to_string(&kraftfile).unwrap();
    std::fs::write(&kraftfile, text.replace("source: ../core", "version: stable").replace("source: ../lib-greet", "version: stable")).unwrap();
    let mirrors = format!("https://github.com/={mirror}/");
    let archives = fixtures().join("archives");
    let env = [("KRAFT_MIRRORS", mirrors.as_str()), ("KRAFT_ARCHIVE_DIR", archives.as_str())];
    assert_ok(&xtask(&app.ws, &app.store, &env, &["build", "app-hello"]));
    assert!(app.run_image().contains("Hello, world!!\n"));
    // CI=true means --locked: the lock written above is used as it is, offline.
    let frozen = xtask(&app.ws, &app.store, &[("CI", "true")], &["--frozen", "build", "app-hello"]);
    assert_ok(&frozen);
}

#[test]
fn two_clean_builds_in_different_places_are_bit_identical() {
    let first = App::local();
    let second = App::local(); // another checkout path, another store
    let archives = fixtures().join("archives");
    let a = xtask(&first.ws, &first.store, &[("KRAFT_ARCHIVE_DIR", archives.as_str())], &["build", "app-hello"]);
    assert_ok(&a);
    let env = [
        ("KRAFT_ARCHIVE_DIR", archives.as_str()),
        ("HOME", "/nonexistent/other-user"),
        ("USER", "someone-else"),
        ("LANG", "de_DE.UTF-8"),
        ("TZ", "America/New_York"),
        ("CFLAGS", "-O0 -g3"),
        ("SOURCE_DATE_EPOCH", "1"),
        // A sandbox per action here, a resident one per worker in the first.
        ("KRAFT_SANDBOX_RESIDENT", "0"),
    ];
    let b = xtask(&second.ws, &second.store, &env, &["build", "app-hello"]);
    assert_ok(&b);
    for file in ["hello_linuxu-x86_64", "hello_linuxu-x86_64.dbg"] {
        let one = sha256_hex(&first.ws.join("target/kraft/app-hello/linuxu-x86_64").join(file));
        let two = sha256_hex(&second.ws.join("target/kraft/app-hello/linuxu-x86_64").join(file));
        assert_eq!(one, two, "{file} differs between two clean builds");
    }
    // The command that checks it does the same, and says so.
    let out = xtask(&first.ws, &first.store, &[("KRAFT_ARCHIVE_DIR", archives.as_str())], &["build", "--check-repro", "app-hello"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("Identical linuxu/x86_64/hello_linuxu-x86_64 sha256"), "{}", stderr(&out));
}

#[test]
fn a_difference_is_located_in_its_elf_section() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = utf8(tmp.path());
    let compile = |name: &str, value: &str| {
        std::fs::write(dir.join(format!("{name}.c")), format!("int code(void) {{ return 1; }}\nconst char stamp[] = \"{value}\";\n")).unwrap();
        let status = std::process::Command::new("gcc")
            .args(["-c", "-O2", "-o", &format!("{name}.o"), &format!("{name}.c")])
            .current_dir(&dir)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(dir.join(format!("{name}.o"))).unwrap()
    };
    let a = compile("a", "2024-01-01");
    let b = compile("b", "2024-01-02");
    let located = kraft::repro::first_differing_section(&a, &b);
    assert!(located.contains("section .rodata"), "{located}");
}
