//! Planning the fixture app (`fixtures/`) through the real sandbox: the
//! action list, the plan cache, and a sequential run of the graph that
//! produces a working program.
//!
//! The real Unikraft check (`real_unikraft_helloworld`) is `#[ignore]`d: it
//! needs local checkouts and qemu (see its doc comment).

use std::fmt::Write as _;
use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::plan::graph::{ActionKind, Graph};
use kraft::plan::{self, PlanInput, Target, UnitRule};
use kraft::exec::sandbox::Sandbox;

fn fixtures() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("fixtures")
}

fn copy_dir(from: &Utf8Path, to: &Utf8Path) {
    kraft::util::fs::copy_tree(from, to).unwrap();
}

/// `git init` + one commit with a fixed identity and date; returns the tree hash.
fn git_commit(dir: &Utf8Path) -> String {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "kraft")
            .env("GIT_AUTHOR_EMAIL", "kraft@example.invalid")
            .env("GIT_COMMITTER_NAME", "kraft")
            .env("GIT_COMMITTER_EMAIL", "kraft@example.invalid")
            .env("GIT_AUTHOR_DATE", "2000-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2000-01-01T00:00:00Z")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "fixture"]);
    git(&["rev-parse", "HEAD^{tree}"])
}

struct Workspace {
    _dir: tempfile::TempDir,
    root: Utf8PathBuf,
    input: PlanInput,
}

fn workspace() -> Workspace {
    let dir = tempfile::tempdir().unwrap();
    let root = Utf8Path::from_path(dir.path()).unwrap().canonicalize_utf8().unwrap();
    for d in ["core", "lib-greet", "app-hello"] {
        copy_dir(&fixtures().join(d), &root.join(d));
    }
    let core_tree = git_commit(&root.join("core"));
    let greet_tree = git_commit(&root.join("lib-greet"));
    let input = PlanInput {
        core: root.join("core"),
        libs: vec![("greet".into(), root.join("lib-greet"))],
        app: root.join("app-hello"),
        app_name: "hello".into(),
        build: root.join("build"),
        target: Target::new("linuxu", "x86_64"),
        // What app-hello's Kraftfile asks for.
        kconfig: vec![
            ("CONFIG_LIBUKPRINT_LOGLEVEL".into(), "4".into()),
            ("CONFIG_LIBGREET".into(), "y".into()),
            ("CONFIG_LIBGREET_EXCLAIM".into(), "2".into()),
        ],
        origins: vec![(fixtures().join("archives/greet-1.0.tar.gz"), "libgreet/greet-1.0.tar.gz".into())],
        env: vec![("SOURCE_DATE_EPOCH".into(), "946684800".into())],
        unit_rules: vec![UnitRule { lib: "libgreet".into(), split_by_dir_prefix: Some("libgreet/origin/*".into()) }],
        component_hashes: vec![("unikraft".into(), core_tree), ("lib:greet".into(), greet_tree)],
        make_vars: vec![],
        jobs: 2,
    };
    Workspace { _dir: dir, root, input }
}

/// One line per action: name, kind, unit, deps (by name).
fn render(graph: &Graph) -> String {
    let mut out = String::new();
    for a in &graph.actions {
        let deps: Vec<&str> = a.deps.iter().map(|d| graph.get(*d).name.as_str()).collect();
        writeln!(out, "{:<32} {:<12} {:<22} <- {}", a.name, format!("{:?}", a.kind), a.unit, deps.join(" ")).unwrap();
    }
    out
}

/// A tiny sequential runner (the real executor is parallel and cached).
fn run_graph(graph: &Graph, input: &PlanInput) {
    let sandbox = Sandbox::new(input.mounts(), input.env.clone()).unwrap();
    for a in &graph.actions {
        for o in &a.outputs {
            let host = sandbox.to_host(o).unwrap();
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        }
        let out = sandbox.run(&a.script, &a.cwd).unwrap();
        assert!(
            out.status.success(),
            "action {} failed:\n{}\n{}",
            a.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for o in &a.outputs {
            let host = sandbox.to_host(o).unwrap();
            assert!(host.symlink_metadata().is_ok(), "action {} did not write {o}", a.name);
        }
    }
}

#[test]
fn fixture_plan_cache_and_run() {
    let ws = workspace();
    let cache = ws.root.join("plan-cache");

    let first = plan::plan(&ws.input, Some(&cache)).unwrap();
    assert!(!first.cached);
    assert_eq!(first.make_runs, 3, "defconfig, fetch prepare, -n all");
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);
    insta::assert_snapshot!("fixture_actions", render(&first.graph));

    // Every path is in the sandbox namespace.
    let host_root = ws.root.as_str();
    let json = serde_json::to_string(&first.graph).unwrap();
    assert!(!json.contains(host_root), "host path leaked into the plan");

    let compile = first.graph.actions.iter().find(|a| a.name == "libgreet/punct.o").unwrap();
    assert_eq!(compile.kind, ActionKind::Compile);
    assert_eq!(compile.depfile.as_deref(), Some(Utf8Path::new("/kraft/build/libgreet/.punct.o.d")));
    assert!(compile.inputs.contains(&"/kraft/build/libgreet/origin/greet-1.0/src/format/punct.c".into()));
    assert_eq!(compile.outputs, vec![Utf8PathBuf::from("/kraft/build/libgreet/punct.o")]);

    // Second call: same key, from the cache, make not run.
    std::fs::write(ws.root.join("build/junk"), "x").unwrap();
    let second = plan::plan(&ws.input, Some(&cache)).unwrap();
    assert!(second.cached);
    assert_eq!(second.make_runs, 0);
    assert_eq!(second.key, first.key);
    assert_eq!(second.graph, first.graph);
    assert!(ws.root.join("build/junk").exists(), "a build dir prepared for this plan is left alone");

    // A build dir prepared for another plan (or never) is reset from the cache.
    std::fs::remove_file(ws.root.join("build/.kraft-plan")).unwrap();
    let third = plan::plan(&ws.input, Some(&cache)).unwrap();
    assert!(third.cached && third.make_runs == 0);
    assert!(!ws.root.join("build/junk").exists(), "build dir restored to the prepared state");

    // A kconfig change changes the key.
    let mut changed = ws.input.clone();
    changed.kconfig.push(("CONFIG_LIBUKPRINT_LOGLEVEL".into(), "2".into()));
    let sandbox = Sandbox::new(changed.mounts(), changed.env.clone()).unwrap();
    assert_ne!(plan::plan_key(&changed, &sandbox).unwrap(), first.key);
    // So does a Makefile.uk edit in a component without a caller hash.
    let mut edited = ws.input.clone();
    std::fs::write(ws.root.join("app-hello/Makefile.uk"), "$(eval $(call addlib,apphello))\nAPPHELLO_SRCS-y += $(APPHELLO_BASE)/main.c\n\n").unwrap();
    edited.env.clear();
    edited.env.extend(ws.input.env.iter().cloned());
    assert_ne!(plan::plan_key(&edited, &sandbox).unwrap(), first.key);
    std::fs::copy(fixtures().join("app-hello/Makefile.uk"), ws.root.join("app-hello/Makefile.uk")).unwrap();

    // Running the (cached) graph from the restored build dir gives the program.
    run_graph(&second.graph, &ws.input);
    let image = ws.root.join("build/hello_linuxu-x86_64");
    let out = Command::new(&image).arg("arg1").output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(stdout.contains("Hello, world!!\n"), "{stdout}");
    assert!(stdout.contains("loglevel=4"), "{stdout}");
    assert!(stdout.contains("arg[1]: arg1"), "{stdout}");
}

#[test]
fn kconfig_value_changes_program() {
    let mut ws = workspace();
    ws.input.kconfig = vec![("CONFIG_LIBGREET".into(), "y".into()), ("CONFIG_NO_SUCH_SYMBOL".into(), "y".into())];
    let p = plan::plan(&ws.input, None).unwrap();
    assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
    assert!(p.warnings[0].contains("CONFIG_NO_SUCH_SYMBOL"));
    run_graph(&p.graph, &ws.input);
    let out = Command::new(ws.root.join("build/hello_linuxu-x86_64")).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("Hello, world!\n") && stdout.contains("loglevel=3"), "{stdout}");
}

/// The real thing, local only:
/// ```text
/// KRAFT_REAL_UK=/tmp/uk KRAFT_REAL_MUSL=/tmp/musl KRAFT_REAL_APP=/tmp/hello \
/// KRAFT_REAL_MUSL_TGZ=/tmp/archives/musl-1.2.3.tar.gz KRAFT_REAL_BUILD=/tmp/real-build \
///   cargo test -p xtask --test plan real_unikraft_helloworld -- --ignored --nocapture
/// ```
/// Plans unikraft + lib-musl + app-helloworld for qemu/x86_64, runs the
/// actions two at a time (respecting deps), boots the image in qemu.
#[test]
#[ignore]
fn real_unikraft_helloworld() {
    let var = |k: &str| Utf8PathBuf::from(std::env::var(k).unwrap_or_else(|_| panic!("set {k}")));
    let input = PlanInput {
        core: var("KRAFT_REAL_UK"),
        libs: vec![("musl".into(), var("KRAFT_REAL_MUSL"))],
        app: var("KRAFT_REAL_APP"),
        app_name: "helloworld".into(),
        build: var("KRAFT_REAL_BUILD"),
        target: Target::new("qemu", "x86_64"),
        kconfig: vec![("CONFIG_LIBMUSL".into(), "y".into())],
        origins: vec![(var("KRAFT_REAL_MUSL_TGZ"), "libmusl/musl-1.2.3.tar.gz".into())],
        env: vec![("SOURCE_DATE_EPOCH".into(), "946684800".into())],
        unit_rules: plan::default_unit_rules(),
        component_hashes: vec![],
        make_vars: vec![],
        jobs: 2,
    };
    let p = plan::plan(&input, None).unwrap();
    let (total, kinds, units) = plan::summary(&p.graph);
    let musl = p.graph.actions.iter().filter(|a| a.kind == ActionKind::Compile && a.unit.starts_with("libmusl")).count();
    eprintln!("plan: {:?}, {} make runs, warnings {:?}", p.elapsed, p.make_runs, p.warnings);
    eprintln!("actions: {total}, kinds {kinds:?}, musl compiles {musl}, units {}", units.len());
    for a in p.graph.actions.iter().filter(|a| a.kind != ActionKind::Compile) {
        if a.kind == ActionKind::PartialLink {
            continue;
        }
        eprintln!("  {:?} {} [{}] deps={}", a.kind, a.name, a.unit, a.deps.len());
    }
    std::fs::write(input.build.join("kraft-plan.json"), serde_json::to_vec_pretty(&p.graph).unwrap()).unwrap();

    // Two-at-a-time runner honouring deps.
    let start = std::time::Instant::now();
    let sandbox = Sandbox::new(input.mounts(), input.env.clone()).unwrap();
    let n = p.graph.actions.len();
    let mut done = vec![false; n];
    let mut started = vec![false; n];
    let (tx, rx) = std::sync::mpsc::channel::<(usize, std::process::Output)>();
    let mut running = 0;
    let mut finished = 0;
    std::thread::scope(|s| {
        while finished < n {
            while running < 2 {
                let Some(i) = (0..n).find(|&i| !started[i] && p.graph.actions[i].deps.iter().all(|d| done[d.0])) else { break };
                started[i] = true;
                running += 1;
                let a = &p.graph.actions[i];
                for o in &a.outputs {
                    std::fs::create_dir_all(sandbox.to_host(o).unwrap().parent().unwrap()).unwrap();
                }
                let tx = tx.clone();
                let sandbox = &sandbox;
                s.spawn(move || {
                    let out = sandbox.run(&a.script, &a.cwd).unwrap();
                    tx.send((i, out)).unwrap();
                });
            }
            let (i, out) = rx.recv().unwrap();
            running -= 1;
            finished += 1;
            done[i] = true;
            assert!(
                out.status.success(),
                "{} failed:\n{}\n{}",
                p.graph.actions[i].name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    eprintln!("build: {:?}", start.elapsed());

    let image = input.build.join("helloworld_qemu-x86_64");
    let out = Command::new("timeout")
        .args(["20", "qemu-system-x86_64", "-kernel", image.as_str(), "-nographic", "-m", "64", "-no-reboot"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(stdout.contains("Hello world!"));
}

/// Steps that patch the image in place fold into the step that wrote it, so
/// one action owns the file and a no-op build has nothing to redo.
#[test]
fn in_place_steps_fold_into_their_producer() {
    use kraft::plan::graph::{Action, ActionId, Graph};
    let p = |s: &str| Utf8PathBuf::from(s);
    let action = |id: usize, name: &str, kind: ActionKind, inputs: &[&str], outputs: &[&str], deps: &[usize]| Action {
        id: ActionId(id),
        name: name.into(),
        kind,
        unit: "image".into(),
        script: format!("run {name}"),
        cwd: p("/kraft/build"),
        inputs: inputs.iter().map(|s| p(s)).collect(),
        outputs: outputs.iter().map(|s| p(s)).collect(),
        depfile: None,
        deps: deps.iter().map(|d| ActionId(*d)).collect(),
    };
    let graph = Graph {
        actions: vec![
            action(0, "app.dbg", ActionKind::Link, &["/kraft/build/a.o"], &["/kraft/build/app.dbg"], &[]),
            action(1, "app", ActionKind::Objcopy, &["/kraft/build/app.dbg"], &["/kraft/build/app"], &[0]),
            action(2, "app.bootinfo", ActionKind::Objcopy, &["/kraft/build/app"], &["/kraft/build/app.bootinfo", "/kraft/build/app"], &[1]),
            action(3, "script:1", ActionKind::Script, &["/kraft/build/app"], &["/kraft/build/app"], &[0, 2]),
            action(4, "script:2", ActionKind::Script, &["/kraft/build/app.dbg"], &["/kraft/build/gdb.py"], &[3]),
        ],
    };
    let merged = plan::merge_in_place(graph);
    let names: Vec<&str> = merged.actions.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["app.dbg", "app", "script:2"]);
    let image = &merged.actions[1];
    assert_eq!(image.script, "{ { run app\n} && { run app.bootinfo\n}\n} && { run script:1\n}");
    assert_eq!(image.outputs, vec![p("/kraft/build/app"), p("/kraft/build/app.bootinfo")]);
    assert_eq!(image.inputs, vec![p("/kraft/build/app.dbg")]);
    assert_eq!(merged.actions[2].deps, vec![ActionId(1)], "dependents of folded steps depend on the owner");
    assert!(merged.actions.iter().enumerate().all(|(i, a)| a.id.0 == i));
}

/// The plan key names tools by stat stamp (cheap, this machine only); the
/// shared plan key, which names a plan in the team cache, by content: a copy
/// of the same program elsewhere (new inode, new mtime) keeps it, other
/// bytes change it.
#[test]
fn shared_plan_key_names_tools_by_content_not_stamps() {
    let ws = workspace();
    let bin = ws.root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let sed = bin.join("sed");
    std::fs::copy("/usr/bin/sed", &sed).unwrap();
    let mut input = ws.input.clone();
    input.env.push(("PATH".into(), format!("{bin}:/usr/bin:/bin")));
    std::fs::create_dir_all(&input.build).unwrap();
    let sandbox = Sandbox::new(input.mounts(), input.env.clone()).unwrap();
    let keys = || (plan::plan_key(&input, &sandbox).unwrap(), plan::key::shared_plan_key(&input, &sandbox).unwrap());
    let (local, shared) = keys();
    assert_ne!(local, shared);

    // The same program again: another inode and mtime.
    std::fs::remove_file(&sed).unwrap();
    std::fs::copy("/usr/bin/sed", &sed).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options().write(true).open(&sed).unwrap().set_modified(old).unwrap();
    let (local2, shared2) = keys();
    assert_ne!(local2, local, "the plan key sees the stamp");
    assert_eq!(shared2, shared, "the shared plan key does not");

    // Other bytes under the same name.
    let mut bytes = std::fs::read(&sed).unwrap();
    bytes.push(0);
    std::fs::remove_file(&sed).unwrap();
    std::fs::write(&sed, bytes).unwrap();
    let (_, shared3) = keys();
    assert_ne!(shared3, shared, "the shared plan key sees the bytes");
}
