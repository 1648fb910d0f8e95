//! The sandbox, from the inside: build commands run in bubblewrap with no
//! network, with only the build directory writable and every `/kraft`
//! source read-only; and without bubblewrap a build stops instead of
//! silently running on the host, unless `KRAFT_SANDBOX=none` says so.
//!
//! Every property holds in both ways of running an action: a sandbox of its
//! own, and the resident sandbox of a worker (`exec::resident`, with the
//! `xtask` binary as its runner), which must also forget each action.
//!
//! A missing bwrap skips these tests on a developer machine (with a note)
//! and fails them under `CI=true`.

mod support;

use std::io::ErrorKind;
use std::net::TcpListener;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::exec::sandbox::{bwrap_usable, Backend, Mount, Sandbox};
use support::*;

/// Whether bwrap can be used; off CI a missing bwrap skips the caller.
fn bwrap_or_skip(test: &str) -> bool {
    match bwrap_usable() {
        Ok(()) => true,
        Err(why) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "{test}: bubblewrap is required under CI=true: {why}");
            eprintln!("{test}: skipped, bubblewrap is unusable: {why}");
            false
        }
    }
}

/// A sandbox with a core, a library and an app (read-only) and a build dir
/// (read-write), each holding a marker file.
struct World {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    sandbox: Sandbox,
}

impl World {
    /// The same world twice: resident sandbox, then a sandbox per action.
    fn both() -> [World; 2] {
        kraft::exec::resident::register(Utf8PathBuf::from(env!("CARGO_BIN_EXE_xtask")));
        [World::new(true), World::new(false)]
    }

    fn new(resident: bool) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let mut mounts = Vec::new();
        for (dir, inside, writable) in [
            ("core", "/kraft/unikraft", false),
            ("lib", "/kraft/libs/greet", false),
            ("app", "/kraft/apps/hello", false),
            ("build", "/kraft/build", true),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("marker"), format!("{dir}\n")).unwrap();
            mounts.push(if writable { Mount::rw(root.join(dir), inside) } else { Mount::ro(root.join(dir), inside) });
        }
        let sandbox = Sandbox::with_backend(mounts, Vec::new(), Backend::Bwrap).unwrap();
        let sandbox = if resident { sandbox } else { sandbox.per_action() };
        World { _tmp: tmp, root, sandbox }
    }

    /// Run `script` in /kraft/build; (success, stdout + stderr).
    fn run(&self, script: &str) -> (bool, String) {
        let out = self.sandbox.run(script, Utf8Path::new("/kraft/build")).unwrap();
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn network_is_off_inside() {
    if !bwrap_or_skip("network_is_off_inside") {
        return;
    }
    for w in World::both() {
        // A listener on the host's loopback: the sandbox's loopback is another one.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (ok, out) = w.run(&format!(
            "if (echo hello > /dev/tcp/127.0.0.1/{port}) 2>/dev/null; then echo connected; else echo refused; fi; \
             tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '"
        ));
        assert!(ok, "{out}");
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("refused"), "{out}");
        let interfaces: Vec<&str> = lines.collect();
        assert_eq!(interfaces, ["lo"], "only a loopback of its own: {out}");
        match listener.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            other => panic!("the host listener was reached from the sandbox: {other:?}"),
        }
        let (ok, out) = w.run("getent hosts example.com || echo no-resolution");
        assert!(ok && out.contains("no-resolution"), "{out}");
    }
}

#[test]
fn only_the_build_dir_is_writable() {
    if !bwrap_or_skip("only_the_build_dir_is_writable") {
        return;
    }
    for w in World::both() {
        let (ok, out) = w.run("echo built > /kraft/build/out.o");
        assert!(ok, "{out}");
        assert_eq!(std::fs::read_to_string(w.root.join("build/out.o")).unwrap(), "built\n");
        for target in ["/kraft/unikraft/x", "/kraft/libs/greet/x", "/kraft/apps/hello/x", "/usr/x", "/etc/x", "/kraft/x"] {
            let (ok, out) = w.run(&format!("echo evil > {target}"));
            assert!(!ok, "{target} was writable: {out}");
        }
        // Paths of the host are not there at all, and /tmp is private.
        let host_root = w.root.clone();
        let (ok, _) = w.run(&format!("ls {host_root}"));
        assert!(!ok, "the host path {host_root} is visible inside");
        let probe = format!("kraft-sandbox-probe-{}", std::process::id());
        let (ok, out) = w.run(&format!("echo x > /tmp/{probe}"));
        assert!(ok, "{out}");
        assert!(!Utf8Path::new("/tmp").join(&probe).exists(), "/tmp inside is the host's /tmp");
        let written: Vec<String> = walkdir::WalkDir::new(&w.root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.path().strip_prefix(w.root.as_std_path()).unwrap().display().to_string())
            .collect();
        let mut written = written;
        written.sort();
        assert_eq!(written, ["app/marker", "build/marker", "build/out.o", "core/marker", "lib/marker"]);
    }
}

#[test]
fn kraft_sources_are_read_only() {
    if !bwrap_or_skip("kraft_sources_are_read_only") {
        return;
    }
    for w in World::both() {
        for (dir, inside) in [("core", "/kraft/unikraft"), ("lib", "/kraft/libs/greet"), ("app", "/kraft/apps/hello")] {
            for script in [
                format!("echo evil >> {inside}/marker"),
                format!("rm -f {inside}/marker"),
                format!("chmod 777 {inside}/marker"),
                format!("mv {inside}/marker {inside}/moved"),
                format!("mkdir {inside}/sub"),
            ] {
                let (ok, out) = w.run(&script);
                assert!(!ok, "`{script}` succeeded: {out}");
            }
            assert_eq!(std::fs::read_to_string(w.root.join(dir).join("marker")).unwrap(), format!("{dir}\n"));
            let (ok, out) = w.run(&format!("cat {inside}/marker"));
            assert!(ok && out == format!("{dir}\n"), "{out}");
        }
    }
}

#[test]
fn no_controlling_terminal_inside() {
    if !bwrap_or_skip("no_controlling_terminal_inside") {
        return;
    }
    for w in World::both() {
        // --new-session: the command is a session leader without a terminal.
        let (_, out) = w.run("if (exec 3</dev/tty) 2>/dev/null; then echo tty; else echo no-tty; fi");
        assert_eq!(out.trim(), "no-tty");
    }
}

/// A directory holding the host tools `xtask` itself needs (cargo for
/// `cargo metadata`) and those the host-program check asks for, but not
/// `bwrap`.
#[test]
fn a_resident_sandbox_forgets_each_action() {
    if !bwrap_or_skip("a_resident_sandbox_forgets_each_action") {
        return;
    }
    let [w, _] = World::both();
    // Leave files in /tmp and /dev/shm, and processes behind: one in the
    // background, one in a session of its own.
    let (ok, out) = w.run(
        "echo left > /tmp/left; mkdir -p /tmp/dir/sub; echo left > /dev/shm/left; \
         (sleep 300 &); setsid sleep 301 > /dev/null 2>&1 < /dev/null & echo started",
    );
    assert!(ok && out.trim() == "started", "{out}");
    let (ok, out) = w.run(
        "ls -A /tmp /dev/shm; for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = sleep ] && echo running; done; true",
    );
    assert!(ok, "{out}");
    assert_eq!(out, "/dev/shm:\n\n/tmp:\n", "the next action saw what the last one left");
}

#[test]
fn a_resident_sandbox_answers_as_a_fresh_one() {
    if !bwrap_or_skip("a_resident_sandbox_answers_as_a_fresh_one") {
        return;
    }
    let answers: Vec<Vec<String>> = World::both()
        .iter()
        .map(|w| {
            let mut seen = Vec::new();
            for script in [
                "env | sort; pwd; umask",
                "echo out; echo err >&2; exit 3",
                "printf 'no newline'",
                "kill -9 $$",
                "cd /kraft/unikraft && pwd && ls",
                "head -c 70000 /dev/zero | tr '\\0' x; echo done >&2",
                // One plain program, which the runner starts without bash:
                // the same environment (bash's PWD, SHLVL, _), exit codes and output.
                "env",
                "/usr/bin/env",
                "env\n\n",
                "ls -a /kraft/unikraft",
                "cat missing-file",
                "no-such-program --flag",
                "sh -c 'exit 7'",
                "\"\"sh -c 'echo \"$0\" \"$#\"' a 'b c'",
            ] {
                let out = w.sandbox.run(script, Utf8Path::new("/kraft/build")).unwrap();
                let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                if script.ends_with("env") {
                    // Same variables and values; bash orders its environment
                    // block by its own hash table (see `resident::simple`).
                    let mut lines: Vec<&str> = stdout.lines().collect();
                    lines.sort();
                    stdout = lines.join("\n");
                }
                // Long output as its length: a difference stays readable.
                let stdout = if stdout.len() > 1000 { format!("{} bytes", stdout.len()) } else { stdout.to_string() };
                seen.push(format!("{script}: {:?} {stdout:?} {:?}", out.status, String::from_utf8_lossy(&out.stderr)));
            }
            seen
        })
        .collect();
    assert_eq!(answers[0], answers[1]);
    // A missing working directory fails the action, not the runner.
    let [w, _] = World::both();
    let out = w.sandbox.run("true", Utf8Path::new("/kraft/build/missing")).unwrap();
    assert!(!out.status.success());
    assert!(w.run("echo still here").1.contains("still here"));
}

fn path_without_bwrap(dir: &Utf8Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    for tool in ["cargo", "rustc", "git", "make", "gcc", "flex", "bison", "python3"] {
        let found = std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| Utf8Path::new(d).join(tool))
            .find(|p| p.is_file());
        if let Some(found) = found {
            std::os::unix::fs::symlink(found, dir.join(tool)).unwrap();
        }
    }
    dir.to_string()
}

#[test]
fn without_bwrap_a_build_stops_unless_sandbox_none_is_explicit() {
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let ws = root.join("ws");
    make_workspace(&ws);
    write_greet_recipe(&ws);
    for dir in ["core", "lib-greet", "app-hello"] {
        copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
    }
    let _ = std::fs::remove_file(ws.join("apps/app-hello/kraft.lock"));
    let path = path_without_bwrap(&root.join("bin"));
    let archives = fixtures().join("archives");
    let store = root.join("store");
    let env = |extra: &[(&'static str, &'static str)]| {
        let mut v: Vec<(&str, String)> = vec![("PATH", path.clone()), ("KRAFT_ARCHIVE_DIR", archives.to_string())];
        v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
        v
    };
    let run = |extra: &[(&'static str, &'static str)]| {
        let e = env(extra);
        let envs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xtask(&ws, &store, &envs, &["build", "app-hello"])
    };

    let refused = run(&[]);
    // Refused before planning (the host-program check) or at the sandbox.
    assert_fails_with(&refused, "bubblewrap is required");
    assert!(stderr(&refused).contains("KRAFT_SANDBOX=none"), "{}", stderr(&refused));
    assert!(!ws.join("target/kraft/app-hello").join("qemu-x86_64").exists() || !stderr(&refused).contains("built"));

    let explicit = run(&[("KRAFT_SANDBOX", "none")]);
    assert_ok(&explicit);
    assert!(stderr(&explicit).contains("without a sandbox"), "{}", stderr(&explicit));

    // The same app and store, sandboxed: nothing built unconfined is reused
    // (the backend is in the plan key and every action key).
    if !bwrap_or_skip("without_bwrap_a_build_stops_unless_sandbox_none_is_explicit") {
        return;
    }
    let sandboxed = xtask(&ws, &store, &[("KRAFT_ARCHIVE_DIR", archives.as_str())], &["--message-format", "json", "build", "app-hello"]);
    assert_ok(&sandboxed);
    let target: serde_json::Value = String::from_utf8_lossy(&sandboxed.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["reason"] == "target-finished")
        .expect("a target-finished event");
    assert_eq!(target["run"], target["actions"], "sandboxed build reused unsandboxed results: {target}");
    assert_eq!(target["make_runs"], 3, "the plan made unsandboxed was reused: {target}");
}

/// The bash stand-in of planning sandboxes (`exec::resident::shell`): make
/// with `SHELL := /bin/bash`, as Unikraft sets it, prints the same and
/// leaves the same tree with it as with bash itself, and it is in use.
#[test]
fn the_bash_stand_in_answers_as_bash() {
    if !bwrap_or_skip("the_bash_stand_in_answers_as_bash") {
        return;
    }
    let [plain, _] = World::both();
    let mut stand_in = World::new(true);
    stand_in.sandbox = stand_in.sandbox.clone().with_shell_stand_in();
    let makefile = r#"SHELL := /bin/bash
$(info mkdir: [$(shell mkdir -p deep/er/dir ./two)] $(.SHELLSTATUS))
$(info again: [$(shell mkdir -p deep/er/dir)] $(.SHELLSTATUS))
$(info over a file: [$(shell mkdir -p marker/sub)] $(.SHELLSTATUS))
$(info option: [$(shell mkdir -p -m 700 moded)] $(.SHELLSTATUS))
$(info env: $(sort $(shell env)))
$(info env piped: $(shell env | sort | tr '\n' ' '))
$(info missing: [$(shell no-such-tool -x)] $(.SHELLSTATUS))
$(info pwd: $(shell pwd) $(shell /bin/pwd) $(shell cd deep && pwd))
$(info compound: $(shell mkdir -p "x/y" && cd "x/y" >/dev/null && pwd))
$(info status: [$(shell sh -c 'exit 3')] $(.SHELLSTATUS))
$(info dirname: $(shell dirname /kraft/build/deep/er) $(shell dirname rel/x) $(shell dirname /a/) $(shell dirname a b))
$(info printf: [$(shell printf '  %-7s %s\n' 'HOSTLN'  'lib: a.h' && printf '%s|%5s' a b)] $(.SHELLSTATUS))
all:
	@echo recipe
	mkdir -p from/recipe
	printf '  %-7s %s\n' 'HOSTLN'  'lib: x' &&  ln -sf /kraft/build/deep link-new
	printf '  %-7s %s\n' 'HOSTLN'  'lib: x' &&  ln -sf /kraft/build/two link-new
	printf 'x\n' && ln -sf /kraft/build/deep moded
	-printf 'x\n' && ln -sf /nowhere no-such-dir/link
	-printf 'x\n' && no-such-tool
	env | sort > recipe-env
	ls -la --time-style=+ deep two moded from | sed 's/ [0-9]* root root / /'
"#;
    let answers: Vec<(String, Vec<String>)> = [&plain, &stand_in]
        .iter()
        .map(|w| {
            std::fs::write(w.root.join("build/Makefile"), makefile).unwrap();
            let out = w.sandbox.run("make", Utf8Path::new("/kraft/build")).unwrap();
            let said = format!("{:?}\n{}\n{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let mut tree: Vec<String> = walkdir::WalkDir::new(w.root.join("build"))
                .into_iter()
                .filter_map(Result::ok)
                .map(|e| {
                    let mode = std::os::unix::fs::PermissionsExt::mode(&e.path().symlink_metadata().unwrap().permissions());
                    let link = std::fs::read_link(e.path()).map(|t| format!(" -> {}", t.display())).unwrap_or_default();
                    format!("{} {mode:o}{link}", e.path().strip_prefix(w.root.as_std_path()).unwrap().display())
                })
                .collect();
            tree.push(std::fs::read_to_string(w.root.join("build/recipe-env")).unwrap_or_default());
            tree.sort();
            (said, tree)
        })
        .collect();
    assert!(answers[0].0.contains("mkdir: [] 0"), "{}", answers[0].0);
    assert!(answers[0].1.iter().any(|f| f.ends_with("build/link-new 120777 -> /kraft/build/deep")), "{:?}", answers[0].1);
    assert!(answers[0].1.iter().any(|f| f.ends_with("build/deep/two 120777 -> /kraft/build/two")), "{:?}", answers[0].1);
    assert_eq!(answers[0], answers[1]);
    // In use: a script bash must run is run by the real bash, bound apart.
    let exe = |w: &World| w.run("readlink /proc/$$/exe; true").1;
    assert_eq!(exe(&stand_in).trim(), kraft::exec::resident::REAL_BASH_INSIDE);
    assert_ne!(exe(&plain).trim(), kraft::exec::resident::REAL_BASH_INSIDE);
}
