//! A small hand-built build graph with real gcc compiles (the shape of
//! `tests/exec.rs`), for tests that need real actions: two objects sharing a
//! header, `ld -r`, a third object, a link and a strip.
//!
//! ```text
//! <dir>/src   → /kraft/src    (read-only)  a.c b.c c.c include/common.h include/other.h
//! <dir>/build → /kraft/build  (read-write) libab/{a,b}.o libab/libab.o app/c.o app/app.dbg app/app
//! ```
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::sync::Mutex;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::exec::{execute, BuildReport, Event, ExecContext};
use kraft::plan::graph::{Action, ActionId, ActionKind, Graph};
use kraft::cache::http::RemoteCache;
use kraft::exec::sandbox::{Mount, Sandbox};
use kraft::exec::state::Outcome;
use kraft::store::Store;

pub const COMMON_H: &str = "#define A_VALUE 40\n#define B_VALUE 2\n";
pub const OTHER_H: &str = "#define OTHER 7\n";
pub const A_C: &str = "#include \"common.h\"\n/* a comment */\nint a(void) { return A_VALUE; }\n";
pub const B_C: &str = "#include \"common.h\"\nint b(void) { return B_VALUE; }\n";
pub const C_C: &str = "#include <stdio.h>\n#include \"other.h\"\nint a(void);\nint b(void);\n\
                       int main(void) { printf(\"sum=%d other=%d\\n\", a() + b(), OTHER); return 0; }\n";
/// What the built program prints.
pub const APP_OUTPUT: &str = "sum=42 other=7\n";
/// The compile actions (with depfiles).
pub const COMPILES: [&str; 3] = ["libab/a.o", "libab/b.o", "app/c.o"];

/// The sources every graph here compiles, written into `src`.
pub fn write_sources(src: &Utf8Path) {
    fs::create_dir_all(src.join("include")).unwrap();
    for (path, text) in
        [("a.c", A_C), ("b.c", B_C), ("c.c", C_C), ("include/common.h", COMMON_H), ("include/other.h", OTHER_H)]
    {
        fs::write(src.join(path), text).unwrap();
    }
}

pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

pub fn compile(id: usize, unit: &str, name: &str, src: &str, define: &str, deps: Vec<usize>) -> Action {
    let out = format!("/kraft/build/{name}");
    let (dir, file) = out.rsplit_once('/').unwrap();
    let depfile = format!("{dir}/.{file}.d");
    Action {
        id: ActionId(id),
        name: name.into(),
        kind: ActionKind::Compile,
        unit: unit.into(),
        script: format!("gcc -O2 -I/kraft/src/include -D{define} -Wp,-MD,{depfile} -c /kraft/src/{src} -o {out}"),
        cwd: "/kraft/build".into(),
        inputs: vec![format!("/kraft/src/{src}").into()],
        outputs: vec![out.into()],
        depfile: Some(depfile.into()),
        deps: deps.into_iter().map(ActionId).collect(),
    }
}

pub fn step(id: usize, kind: ActionKind, unit: &str, name: &str, script: &str, inputs: &[&str], deps: &[usize]) -> Action {
    Action {
        id: ActionId(id),
        name: name.into(),
        kind,
        unit: unit.into(),
        script: script.into(),
        cwd: "/kraft/build".into(),
        inputs: inputs.iter().map(|i| Utf8PathBuf::from(format!("/kraft/build/{i}"))).collect(),
        outputs: vec![format!("/kraft/build/{name}").into()],
        depfile: None,
        deps: deps.iter().copied().map(ActionId).collect(),
    }
}

pub fn graph() -> Graph {
    Graph {
        actions: vec![
            compile(0, "libab", "libab/a.o", "a.c", "UNIT_AB", vec![]),
            compile(1, "libab", "libab/b.o", "b.c", "UNIT_AB", vec![]),
            step(
                2,
                ActionKind::PartialLink,
                "libab",
                "libab/libab.o",
                "ld -r libab/a.o libab/b.o -o libab/libab.o",
                &["libab/a.o", "libab/b.o"],
                &[0, 1],
            ),
            compile(3, "app", "app/c.o", "c.c", "UNIT_APP", vec![]),
            step(
                4,
                ActionKind::Link,
                "app",
                "app/app.dbg",
                "gcc libab/libab.o app/c.o -o app/app.dbg",
                &["libab/libab.o", "app/c.o"],
                &[2, 3],
            ),
            step(5, ActionKind::Objcopy, "app", "app/app", "strip -o app/app app/app.dbg", &["app/app.dbg"], &[4]),
        ],
    }
}

/// What one build did, by action name.
#[derive(Debug, Default)]
pub struct Seen {
    pub ran: BTreeSet<String>,
    pub restored: BTreeSet<String>,
}

/// A source tree, a build dir and a store of its own (a "client").
pub struct Client {
    pub dir: tempfile::TempDir,
    pub src: Utf8PathBuf,
    pub build: Utf8PathBuf,
    pub store: Store,
    pub state: Utf8PathBuf,
    pub sandbox: Sandbox,
    pub graph: Graph,
    pub jobs: usize,
}

impl Client {
    /// A fresh client with an empty store.
    pub fn new() -> Client {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap().to_owned();
        let src = root.join("src");
        let build = root.join("build");
        write_sources(&src);
        fs::create_dir_all(&build).unwrap();
        let mounts = vec![Mount::ro(&src, "/kraft/src"), Mount::rw(&build, "/kraft/build")];
        let sandbox = Sandbox::new(mounts, vec![]).unwrap();
        Client {
            store: Store::open(root.join("store")).unwrap(),
            state: build.join(".kraft/state.json"),
            dir,
            src,
            build,
            sandbox,
            graph: graph(),
            jobs: 4,
        }
    }

    /// Build; `after_finished` is called after each action that ran or was
    /// restored (on the scheduling thread, before the next action starts
    /// when `jobs == 1`).
    pub fn try_build_with(
        &self,
        remote: Option<&RemoteCache>,
        after_finished: &(dyn Fn(&str) + Sync),
    ) -> (anyhow::Result<BuildReport>, Seen) {
        let seen = Mutex::new(Seen::default());
        let events = |e: &Event<'_>| {
            if let Event::Finished { action, outcome: Some(outcome), .. } = e {
                {
                    let mut s = seen.lock().unwrap();
                    match outcome {
                        Outcome::Ran => s.ran.insert(action.name.clone()),
                        Outcome::Restored => s.restored.insert(action.name.clone()),
                        Outcome::Failed => false,
                    };
                }
                after_finished(&action.name);
            }
        };
        let mut ctx = ExecContext::new(&self.sandbox, &self.store, self.state.clone());
        ctx.jobs = self.jobs;
        ctx.events = &events;
        ctx.remote = remote;
        let result = execute(&self.graph, &ctx);
        (result, seen.into_inner().unwrap())
    }

    pub fn build(&self, remote: Option<&RemoteCache>) -> (BuildReport, Seen) {
        match self.try_build_with(remote, &|_| {}) {
            (Ok(report), seen) => (report, seen),
            (Err(e), _) => panic!("build failed: {e:#}"),
        }
    }

    pub fn run_app(&self) -> String {
        let out = std::process::Command::new(self.build.join("app/app")).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// Host path of a build output (`libab/a.o`).
    pub fn output(&self, name: &str) -> Utf8PathBuf {
        self.build.join(name)
    }
}
