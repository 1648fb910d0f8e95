//! `check-exact <app>`: the mutation corpus. Build a copy of the app, apply
//! one mutation at a time, build incrementally, and compare against a clean
//! build of the same inputs (fresh store, fresh target dir):
//!
//! * **exact**: every output the clean build's actions wrote, and the image
//!   and `.dbg`, are byte-identical in the incremental build dir;
//! * **needless**: an action that *ran* although its key is the one it had
//!   before the mutation (none of its inputs changed; an input a dependency
//!   rewrote byte for byte the same does not count).
//!
//! Mutations come in groups (`--only source,header`, run in the order
//! named), most with a revert;
//! a mutation whose inputs equal the starting point's (a revert, a `touch`,
//! an unrelated variable) is compared with the first build, which was itself
//! clean. A mutation may also expect a clean build to *fail* (an origin
//! archive whose bytes no longer match the lock): then the incremental build
//! must still equal the first one, and the clean build must fail with an
//! error naming what the mutation says (see `origin.rs`). Every build is a
//! child `xtask` process, as a user would run it, with `CI` removed (some
//! mutations change the lock). Files outside the app copy that a mutation
//! edits (a workspace recipe) are put back at the end, whatever happened.
//! Prints one line per mutation and `exact: N/N, needless: K`; fails unless
//! all are exact and none needless.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use kraft::exec::state::{BuildState, Outcome};
use kraft::session::Session;

use crate::flags::CheckExactArgs;

mod mutations;
mod origin;

use mutations::{cleanup_wrappers, corpus_for, Mutation};

/// What an incremental build after a mutation is compared with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// A clean build of the mutated inputs.
    Clean,
    /// The inputs are the starting point's: compare with the first build.
    Baseline,
    /// As `Baseline`, and a clean build (fresh store) must fail with an
    /// error holding every string of `World::expected_error`.
    BaselineCleanFails,
}

/// The world a build sees: the app copy, the store, the environment.
#[derive(Clone)]
struct World {
    app: Utf8PathBuf,
    store: Utf8PathBuf,
    env: Vec<(String, String)>,
    /// What a failing clean build's error must say (`BaselineCleanFails`).
    expected_error: Vec<String>,
}

/// What one build left: output path (relative to the build dir, or
/// `installed:<name>` for the image and `.dbg` beside it) → blake3.
type Outputs = BTreeMap<String, String>;

struct Built {
    /// `target/kraft/<app>/<plat>-<arch>` of this build.
    out_dir: Utf8PathBuf,
    ran: usize,
    restored: usize,
    needless: Vec<String>,
    outputs: Outputs,
    /// Outputs (keys of `outputs`) the build left in the store
    /// (`exec::in_store`): their bytes are the blob their hash names.
    in_store: std::collections::HashSet<String>,
}

struct Corpus<'a> {
    session: &'a Session,
    exe: Utf8PathBuf,
    scratch: Utf8PathBuf,
    target: Option<String>,
    /// Where the incremental builds go (the app's name fixes the subdir).
    target_dir: Utf8PathBuf,
    app_name: String,
    kraftfile_name: String,
    /// `<plat>-<arch>`: from `-t`, or the one target the first build made.
    target_subdir: std::cell::RefCell<Option<String>>,
    /// Files outside the app copy that mutations edited or created, with the
    /// text to put back (`None`: remove) when the corpus ends, even on an error.
    restore_at_exit: std::cell::RefCell<Vec<(Utf8PathBuf, Option<String>)>>,
}

fn hash_file(path: &Utf8Path) -> String {
    match kraft::util::hash::blake3_file(path) {
        Ok((h, _)) => h.to_hex().to_string(),
        Err(_) => "missing".into(),
    }
}

impl Corpus<'_> {
    fn out_dir(&self, target_dir: &Utf8Path) -> Result<Utf8PathBuf> {
        let app_dir = target_dir.join("kraft").join(&self.app_name);
        if let Some(sub) = self.target.as_ref().map(|t| t.replace('/', "-")).or_else(|| self.target_subdir.borrow().clone()) {
            return Ok(app_dir.join(sub));
        }
        let dirs: Vec<String> = app_dir
            .read_dir_utf8()
            .with_context(|| format!("listing {app_dir}"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .map(|e| e.file_name().to_string())
            .collect();
        match dirs.as_slice() {
            [one] => {
                *self.target_subdir.borrow_mut() = Some(one.clone());
                Ok(app_dir.join(one))
            }
            _ => bail!("{app_dir}: the app has several targets; choose one with -t"),
        }
    }

    /// An `xtask` child process seeing `world`, its builds going to `target_dir`.
    fn command(&self, world: &World, target_dir: &Utf8Path) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.current_dir(&self.session.workspace.root);
        cmd.env_remove("CI").env("KRAFT_STORE", &world.store).env("CARGO_TARGET_DIR", target_dir);
        for (k, v) in &world.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run `xtask <args>` in `world` (not a build: `update`, `lock`).
    fn xtask(&self, world: &World, args: &[&str]) -> Result<()> {
        let out = self.command(world, &self.target_dir).args(args).output().with_context(|| format!("running {}", self.exe))?;
        if !out.status.success() {
            bail!("`xtask {}` failed:\n{}", args.join(" "), kraft::util::text::tail(&String::from_utf8_lossy(&out.stderr), 30));
        }
        Ok(())
    }

    /// Remember `path`'s current text (or that there is no such file), to be
    /// put back when the corpus ends.
    fn restore_at_exit(&self, path: &Utf8Path) -> Result<()> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        let mut saved = self.restore_at_exit.borrow_mut();
        if !saved.iter().any(|(p, _)| p == path) {
            saved.push((path.to_owned(), text));
        }
        Ok(())
    }

    /// `xtask build`; `json` for the events, else the human output (errors on stderr).
    fn build_command(&self, world: &World, target_dir: &Utf8Path, json: bool) -> Command {
        let mut cmd = self.command(world, target_dir);
        cmd.args(["--message-format", if json { "json" } else { "human" }, "-j", &self.session.jobs.to_string(), "build", world.app.as_str()]);
        if let Some(t) = &self.target {
            cmd.args(["-t", t]);
        }
        cmd
    }

    /// Run `xtask build` in `world` with `target_dir`; collect what it did.
    fn build(&self, world: &World, target_dir: &Utf8Path) -> Result<Built> {
        let before = self.out_dir(target_dir).ok().map(|d| BuildState::load(&d.join("state.json")));
        let out = self.build_command(world, target_dir, true).output().with_context(|| format!("running {}", self.exe))?;
        if !out.status.success() {
            bail!("the build failed:\n{}", kraft::util::text::tail(&String::from_utf8_lossy(&out.stderr), 30));
        }
        let out_dir = self.out_dir(target_dir)?;
        let after = BuildState::load(&out_dir.join("state.json"));
        let mut built = Built { out_dir: out_dir.clone(), ran: 0, restored: 0, needless: Vec::new(), outputs: Outputs::new(), in_store: Default::default() };
        // A no-op build leaves the state untouched: its log is the last one.
        let did_work = before.as_ref().is_none_or(|b| b.last_build.started_ns != after.last_build.started_ns);
        if did_work {
            for entry in &after.last_build.entries {
                match entry.outcome {
                    Outcome::Ran => {
                        built.ran += 1;
                        let old = before.as_ref().and_then(|b| b.actions.get(&entry.name));
                        let new = after.actions.get(&entry.name);
                        if let (Some(old), Some(new)) = (old, new) {
                            if old.key == new.key {
                                built.needless.push(entry.name.clone());
                            }
                        }
                    }
                    Outcome::Restored => built.restored += 1,
                    Outcome::Failed => {}
                }
            }
        }
        let build_dir = out_dir.join("build");
        for record in after.actions.values() {
            for o in &record.outputs {
                if let Some(rel) = o.path.strip_prefix("/kraft/build").ok() {
                    // An output left in the store (`exec::in_store`) is its
                    // blob, named by the hash of its bytes.
                    let hash = if after.in_store.contains(&o.path) && !build_dir.join(rel).exists() {
                        built.in_store.insert(rel.to_string());
                        o.hash.to_hex().to_string()
                    } else {
                        hash_file(&build_dir.join(rel))
                    };
                    built.outputs.insert(rel.to_string(), hash);
                }
            }
        }
        // The installed image and .dbg: every regular file beside the build dir.
        for entry in out_dir.read_dir_utf8().with_context(|| format!("listing {out_dir}"))?.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let bookkeeping = [".json", ".lock", ".toolchain"].iter().any(|x| name.ends_with(x)) || name.starts_with('.');
            if path.is_file() && !bookkeeping {
                built.outputs.insert(format!("installed:{name}"), hash_file(path));
            }
        }
        Ok(built)
    }

    /// A clean build of `world`: fresh store, fresh target dir, removed after.
    fn clean(&self, world: &World) -> Result<Outputs> {
        let dir = self.scratch.join("clean");
        let _ = kraft::util::fs::remove_tree(&dir);
        let clean = World { store: dir.join("store"), ..world.clone() };
        let built = self.build(&clean, &dir.join("target"))?;
        // Only what the clean build's own actions wrote counts.
        let _ = kraft::util::fs::remove_tree(&dir);
        Ok(built.outputs)
    }

    /// A clean build of `world` that must fail: its error, or why it is
    /// not the expected one.
    fn clean_fails(&self, world: &World) -> Result<String, String> {
        let dir = self.scratch.join("clean");
        let _ = kraft::util::fs::remove_tree(&dir);
        let clean = World { store: dir.join("store"), ..world.clone() };
        let out = self.build_command(&clean, &dir.join("target"), false).output().map_err(|e| format!("running {}: {e}", self.exe));
        let _ = kraft::util::fs::remove_tree(&dir);
        let out = out?;
        if out.status.success() {
            return Err("a clean build succeeded, but it should have failed".into());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let error = stderr.lines().skip_while(|l| !l.starts_with("error")).collect::<Vec<_>>().join("\n");
        match world.expected_error.iter().find(|s| !stderr.contains(s.as_str())) {
            Some(missing) => Err(format!("the clean build failed without naming {missing}: {}", kraft::util::text::tail(&stderr, 8))),
            None => Ok(if error.is_empty() { stderr } else { error }),
        }
    }

    /// Put back what mutations edited outside the app copy.
    fn restore_files(&self) {
        for (path, text) in self.restore_at_exit.borrow_mut().drain(..) {
            if let Err(err) = put_back(&path, text.as_deref()) {
                eprintln!("warning: could not restore {path}: {err:#}");
            }
        }
    }
}

/// Write `text` to `path`, or remove `path` when `None`.
fn put_back(path: &Utf8Path, text: Option<&str>) -> Result<()> {
    match text {
        Some(text) => std::fs::write(path, text).with_context(|| format!("writing {path}")),
        None => match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {path}")),
            _ => Ok(()),
        },
    }
}

pub fn run(session: &Session, args: &CheckExactArgs) -> Result<()> {
    let app = session.workspace.app(&args.app, session.kraftfile.as_deref())?;
    let exe = Utf8PathBuf::from_path_buf(std::env::current_exe().context("locating the xtask binary")?)
        .map_err(|p| anyhow::anyhow!("non-UTF-8 path {}", p.display()))?;
    let scratch = session.workspace.target_dir.join("kraft/check-exact").join(&app.name);
    let _ = kraft::util::fs::remove_tree(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating directory {scratch}"))?;

    // The app is copied (with its siblings when the Kraftfile names `../`
    // sources) so that mutations never touch the user's files.
    let kraftfile_text = std::fs::read_to_string(&app.kraftfile).with_context(|| format!("reading {}", app.kraftfile))?;
    let parent = app.dir.parent().context("the app directory has no parent")?;
    let with_siblings = kraftfile_text.contains("../");
    let src = scratch.join("src");
    let app_copy = if with_siblings {
        let dest = src.join(parent.file_name().unwrap_or("apps"));
        kraft::util::fs::copy_tree_except(parent, &dest, &["target", ".git"])?;
        dest.join(app.dir.file_name().unwrap_or("app"))
    } else {
        let dest = src.join(app.dir.file_name().unwrap_or("app"));
        kraft::util::fs::copy_tree_except(&app.dir, &dest, &["target", ".git"])?;
        dest
    };
    kraft::util::fs::make_writable(&src)?;
    let kraftfile_name = app.kraftfile.file_name().unwrap_or("Kraftfile").to_string();
    let corpus = Corpus {
        session,
        exe,
        scratch: scratch.clone(),
        target: args.target.clone(),
        target_dir: scratch.join("target"),
        app_name: app.dir.file_name().unwrap_or("app").to_string(),
        kraftfile_name,
        target_subdir: Default::default(),
        restore_at_exit: Default::default(),
    };
    let start = World { app: app_copy.clone(), store: scratch.join("store"), env: Vec::new(), expected_error: Vec::new() };
    let result = run_corpus(&corpus, args, &start, &scratch);
    corpus.restore_files();
    cleanup_wrappers();
    if !args.keep {
        let _ = kraft::util::fs::remove_tree(&scratch);
    }
    result
}

fn run_corpus(corpus: &Corpus<'_>, args: &CheckExactArgs, start: &World, scratch: &Utf8Path) -> Result<()> {
    let app_copy = &start.app;
    // A group name, or the start of a mutation's name (`source: new`).
    let wanted = |m: &Mutation<'_>| args.only.is_empty() || args.only.iter().any(|o| o == m.group || m.name.starts_with(o.as_str()));

    eprintln!("{:>12} {} (first build, clean)", "Building", app_copy);
    let first = corpus.build(start, &corpus.target_dir)?;
    let baseline = first.outputs.clone();
    // After the first build: the lock it wrote says which origin archives exist.
    let mutations = corpus_for(corpus, start, scratch)?;
    // With `--only`, in the order it names them (a group keeps its own order).
    let rank = |m: &Mutation<'_>| args.only.iter().position(|o| o == m.group || m.name.starts_with(o.as_str())).unwrap_or(0);
    let mut selected: Vec<&Mutation<'_>> = mutations.iter().filter(|m| wanted(m)).collect();
    selected.sort_by_key(|m| rank(m));
    let mut world = start.clone();
    let (mut checked, mut exact, mut needless) = (0usize, 0usize, 0usize);
    for mutation in selected {
        (mutation.apply)(&mut world).with_context(|| format!("applying mutation {}", mutation.name))?;
        let began = std::time::Instant::now();
        let built = corpus.build(&world, &corpus.target_dir).with_context(|| format!("building after mutation {}", mutation.name))?;
        let (reference, clean_failure) = match mutation.compare {
            Compare::Baseline => (baseline.clone(), None),
            Compare::BaselineCleanFails => (baseline.clone(), Some(corpus.clean_fails(&world))),
            Compare::Clean => (corpus.clean(&world).with_context(|| format!("clean build for mutation {}", mutation.name))?, None),
        };
        world.expected_error.clear();
        // Every file the reference build's actions wrote, read from the
        // incremental build's directories (not from its records), or for
        // an output it left in the store, the hash its blob is named by.
        let file_of = |key: &str| match key.strip_prefix("installed:") {
            Some(name) => built.out_dir.join(name),
            None => built.out_dir.join("build").join(key),
        };
        let actual = |key: &str| match built.in_store.contains(key) {
            true => built.outputs.get(key).cloned().unwrap_or_default(),
            false => hash_file(&file_of(key)),
        };
        let stale: Vec<&String> = reference.iter().filter(|(k, v)| actual(k) != **v).map(|(k, _)| k).collect();
        checked += 1;
        needless += built.needless.len();
        let verdict = if !stale.is_empty() {
            "STALE"
        } else if matches!(clean_failure, Some(Err(_))) {
            "WRONG"
        } else {
            exact += 1;
            "exact"
        };
        let mut line = format!(
            "{verdict:<6} {:<44} ran {:>4}, restored {:>4}, {} outputs compared ({:.1}s)",
            mutation.name,
            built.ran,
            built.restored,
            reference.len(),
            began.elapsed().as_secs_f64()
        );
        if !stale.is_empty() {
            line.push_str(&format!("; differ: {}", stale.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
        }
        match &clean_failure {
            Some(Ok(error)) => line.push_str(&format!("; a clean build fails as it should: {}", error.lines().next().unwrap_or(""))),
            Some(Err(why)) => line.push_str(&format!("; {why}")),
            None => {}
        }
        if !built.needless.is_empty() {
            line.push_str(&format!("; needless: {}", built.needless.iter().take(5).cloned().collect::<Vec<_>>().join(", ")));
        }
        println!("{line}");
    }
    println!("exact: {exact}/{checked}, needless: {needless}");
    if exact != checked || needless > 0 {
        bail!("the incremental builds differ from clean builds or did needless work (see above)");
    }
    Ok(())
}

