//! Running a [`Graph`]: in parallel, content-addressed, with exact invalidation.
//!
//! For every action, once all its deps are done (ready actions start in graph
//! order, which is make's order):
//!
//! 1. compute its [`Fingerprint`] (through the stat cache: unchanged files are
//!    not re-read) and compare it with the one recorded in the build dir's
//!    state. Same fingerprint and outputs intact → **up to date**, no work.
//! 2. otherwise look the key up in the [`ActionCache`] (two levels: the
//!    pre-key's manifest lists header sets, each gives a key with the headers'
//!    current hashes). Hit → **restore** the outputs from blobs.
//! 3. miss → **run** the script in the sandbox, store its outputs as blobs,
//!    parse its depfile into discovered inputs, write the cache entry.
//!
//! Dependents compute their keys from their inputs' *contents*, so an action
//! whose output came out byte-identical stops the rebuild there (early
//! cutoff).
//!
//! A failing action stops scheduling; running ones finish; the failed
//! action's outputs are deleted and it is not recorded. The state (records of
//! everything that did finish, stat cache, log) is saved in every case.

pub mod explain;
pub mod fingerprint;
pub mod noop;
pub mod sandbox;
pub mod state;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::fs;
use std::process::Output;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::cache::local::{ActionCache, CachedOutput, Entry};
use crate::exec::fingerprint::{env_hash, key_from, DirtyReason, Fingerprint, Hash, Toolchain, ToolchainSpec};
use crate::plan::graph::{Action, ActionId, Graph, SANDBOX_ROOT};
use crate::cache::http::RemoteCache;
use crate::exec::sandbox::Sandbox;
use crate::exec::state::{ActionRecord, BuildState, LastBuild, LogEntry, Outcome, OutputRecord, StatCache};
use crate::store::Store;
use crate::timings::Phase;

/// What the engine needs from a sandbox. Implemented by [`Sandbox`]; tests
/// may wrap it (to count or fail runs).
pub trait Runner: Sync {
    /// Run `bash -c script` in `cwd` (an inside path), capturing output.
    fn run(&self, script: &str, cwd: &Utf8Path) -> anyhow::Result<Output>;
    /// Host path of an inside path, if it is in a mount.
    fn to_host(&self, inside: &Utf8Path) -> Option<Utf8PathBuf>;
    /// Inside path of a host path, if it is in a mount.
    fn to_inside(&self, host: &Utf8Path) -> Option<Utf8PathBuf>;
    /// Host paths in free text → inside paths (identity when sandboxed).
    fn rewrite_to_inside(&self, text: &str) -> String;
    /// Whether commands are isolated (bwrap) rather than run on the host.
    fn hermetic(&self) -> bool;
}

impl Runner for Sandbox {
    fn run(&self, script: &str, cwd: &Utf8Path) -> anyhow::Result<Output> {
        Sandbox::run(self, script, cwd)
    }
    fn to_host(&self, inside: &Utf8Path) -> Option<Utf8PathBuf> {
        Sandbox::to_host(self, inside)
    }
    fn to_inside(&self, host: &Utf8Path) -> Option<Utf8PathBuf> {
        Sandbox::to_inside(self, host)
    }
    fn rewrite_to_inside(&self, text: &str) -> String {
        Sandbox::rewrite_to_inside(self, text)
    }
    fn hermetic(&self) -> bool {
        self.backend() == "bwrap"
    }
}

/// How an action that is not up to date is being brought up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Run,
    Restore,
}

/// Progress, for the CLI (progress bar, verbose log, compiler warnings).
#[derive(Debug)]
pub enum Event<'a> {
    /// Before any action: how many there are.
    Planned { total: usize },
    /// An action starts running in the sandbox (restores are not announced:
    /// they are quick).
    Started { action: &'a Action, reason: &'a DirtyReason },
    /// An action is done. `stdout`/`stderr` are what it printed (replayed
    /// from the cache for restores; empty for up-to-date actions).
    Finished {
        action: &'a Action,
        /// `None`: it was up to date.
        outcome: Option<Outcome>,
        reason: Option<&'a DirtyReason>,
        duration: Duration,
        stdout: &'a str,
        stderr: &'a str,
        done: usize,
        total: usize,
    },
    /// An action failed; the build stops after running actions finish.
    Failed { action: &'a Action, error: &'a ActionFailed },
}

fn ignore_events(_: &Event<'_>) {}

/// Everything [`execute`] needs besides the graph.
pub struct ExecContext<'a> {
    pub runner: &'a dyn Runner,
    pub store: &'a Store,
    /// The build dir's state file (e.g. `<build>/.kraft/state.json`).
    pub state_path: Utf8PathBuf,
    /// Parallel actions; default: number of cores.
    pub jobs: usize,
    pub toolchain: ToolchainSpec,
    pub events: &'a (dyn Fn(&Event<'_>) + Sync),
    /// The team cache behind the local action cache (default: none). See
    /// [`crate::cache::http`]: it never fails a build.
    pub remote: Option<&'a RemoteCache>,
}

impl<'a> ExecContext<'a> {
    pub fn new(runner: &'a dyn Runner, store: &'a Store, state_path: impl Into<Utf8PathBuf>) -> Self {
        ExecContext {
            runner,
            store,
            state_path: state_path.into(),
            jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            toolchain: ToolchainSpec::default(),
            events: &ignore_events,
            remote: None,
        }
    }
}

/// Per-unit counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitReport {
    pub unit: String,
    pub total: usize,
    pub built: usize,
    pub cached: usize,
    pub fresh: usize,
    /// Sum of the time spent running/restoring this unit's actions.
    pub busy: Duration,
    /// From the first start to the last finish of this unit's work.
    pub wall: Duration,
}

impl UnitReport {
    /// `built` if anything ran, else `cached` if anything was restored, else `fresh`.
    pub fn status(&self) -> &'static str {
        if self.built > 0 {
            "built"
        } else if self.cached > 0 {
            "cached"
        } else {
            "fresh"
        }
    }
}

impl fmt::Display for UnitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<6}  {}  {} objects  {:.2}s", self.status(), self.unit, self.total, self.wall.as_secs_f64())
    }
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildReport {
    pub total: usize,
    /// Ran in the sandbox.
    pub run: usize,
    /// Restored from the action cache.
    pub restored: usize,
    pub up_to_date: usize,
    /// Files read and hashed (0 on a no-op build: the stat cache answered).
    pub files_hashed: usize,
    /// Units in graph order.
    pub units: Vec<UnitReport>,
    pub duration: Duration,
    /// Action entries fetched from the remote cache (their outputs restored).
    pub remote_hits: usize,
    /// Action entries (and header manifests) uploaded to the remote cache.
    pub remote_uploads: usize,
    /// Warnings of the remote tier (already printed through its sink).
    pub remote_warnings: Vec<String>,
    /// Host paths of every file the build read or wrote (sources, headers,
    /// outputs, toolchain programs): what a later no-op check must stat.
    pub watched: Vec<Utf8PathBuf>,
    /// Busy time per phase (compile, link, restore, store writes, ...).
    pub timings: crate::timings::Timings,
}

impl BuildReport {
    /// One line per unit: `built|cached|fresh  <unit>  <n> objects  <time>`.
    pub fn summary_lines(&self) -> Vec<String> {
        self.units.iter().map(|u| u.to_string()).collect()
    }

    pub fn unit(&self, name: &str) -> Option<&UnitReport> {
        self.units.iter().find(|u| u.unit == name)
    }
}

/// The error of a failed build: which action, and what it said.
#[derive(Debug, Clone)]
pub struct ActionFailed {
    pub name: String,
    pub unit: String,
    pub cwd: Utf8PathBuf,
    pub command: String,
    /// Exit code, `None` if killed by a signal or it never ran.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Set when the action failed for another reason than its exit status
    /// (a declared output or depfile missing, an I/O error).
    pub message: Option<String>,
    /// Counters up to the failure.
    pub report: BuildReport,
}

impl fmt::Display for ActionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, self.status) {
            (Some(m), _) => write!(f, "{} (unit {}) failed: {m}", self.name, self.unit)?,
            (None, Some(code)) => write!(f, "{} (unit {}) failed with exit status {code}", self.name, self.unit)?,
            (None, None) => write!(f, "{} (unit {}) was killed by a signal", self.name, self.unit)?,
        }
        write!(f, "\n  command (in {}):\n", self.cwd)?;
        for line in self.command.trim_end().lines() {
            writeln!(f, "    {line}")?;
        }
        let out = format!("{}{}", self.stdout, self.stderr);
        if !out.trim().is_empty() {
            writeln!(f, "  output:")?;
            for line in out.trim_end().lines() {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ActionFailed {}

// ----------------------------------------------------------------- worker

/// Read-only context shared by workers.
struct Shared<'a> {
    runner: &'a dyn Runner,
    cache: ActionCache,
    stats: &'a StatCache,
    env: Hash,
    clock: &'a crate::timings::Clock,
}

enum Done {
    Fresh,
    Finished { record: Box<ActionRecord>, outcome: Outcome, reason: DirtyReason, stdout: String, stderr: String },
}

struct Failure {
    status: Option<i32>,
    stdout: String,
    stderr: String,
    message: Option<String>,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { status: None, stdout: String::new(), stderr: String::new(), message: Some(format!("{e:#}")) }
    }
}

impl Shared<'_> {
    fn host(&self, inside: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
        self.runner.to_host(inside).with_context(|| format!("{inside} is not in any sandbox mount"))
    }

    fn hash(&self, inside: &Utf8Path) -> anyhow::Result<Option<Hash>> {
        if let Some(seen) = self.stats.seen(inside.as_str()) {
            return Ok(seen);
        }
        let host = self.host(inside)?;
        self.stats.hash(inside.as_str(), &host).with_context(|| format!("hashing {host}"))
    }

    fn hash_all(&self, paths: &[Utf8PathBuf]) -> anyhow::Result<Vec<(Utf8PathBuf, Option<Hash>)>> {
        paths.iter().map(|p| Ok((p.clone(), self.hash(p)?))).collect()
    }

    /// Bring one action up to date. `old` is its record from the last build.
    fn process(
        &self,
        action: &Action,
        old: Option<&ActionRecord>,
        started: &dyn Fn(&DirtyReason),
    ) -> Result<Done, Failure> {
        let script = self.runner.rewrite_to_inside(&action.script);
        let mut fp = Fingerprint {
            script: fingerprint::script_hash(action, &script),
            env: self.env,
            inputs: self.clock.time(Phase::Keys, || self.hash_all(&action.inputs))?,
            discovered: Vec::new(),
        };
        let reason = match old {
            None => DirtyReason::NeverBuilt,
            Some(rec) => {
                if action.depfile.is_some() {
                    let paths: Vec<Utf8PathBuf> = rec.fingerprint.discovered.iter().map(|(p, _)| p.clone()).collect();
                    fp.discovered = self.hash_all(&paths)?;
                }
                if let Some(reason) = fp.compare(&rec.fingerprint) {
                    reason
                } else if rec.key != fp.key() {
                    DirtyReason::KeyFormatChanged
                } else if let Some(reason) = self.check_outputs(rec)? {
                    reason
                } else {
                    return Ok(Done::Fresh);
                }
            }
        };

        // Action cache: candidate header sets, the last build's first.
        let prekey = fp.prekey();
        let mut candidates: Vec<Vec<(Utf8PathBuf, Option<Hash>)>> = Vec::new();
        if action.depfile.is_some() {
            if old.is_some() {
                candidates.push(fp.discovered.clone());
            }
            for paths in self.cache.manifest(&prekey) {
                if candidates.iter().any(|c| c.iter().map(|(p, _)| p).eq(paths.iter())) {
                    continue;
                }
                candidates.push(self.hash_all(&paths)?);
            }
            // A depfile naming no header under the sandbox root (a source
            // including nothing) leaves no manifest entry: try the empty set.
            if !candidates.iter().any(|c| c.is_empty()) {
                candidates.push(Vec::new());
            }
        } else {
            candidates.push(Vec::new());
        }
        for discovered in candidates {
            let key = key_from(prekey, &discovered);
            let Some(entry) = self.clock.time(Phase::Lookup, || self.cache.get(&key)) else { continue };
            if !entry.discovered.iter().eq(discovered.iter().map(|(p, _)| p))
                || !entry.outputs.iter().map(|o| &o.path).eq(action.outputs.iter())
            {
                continue;
            }
            let to_host = |p: &Utf8Path| self.runner.to_host(p).unwrap_or_else(|| p.to_owned());
            let Some(restored) = self.clock.time(Phase::Restore, || self.cache.restore(&entry, &to_host))? else { continue };
            let mut outputs = Vec::new();
            for r in restored {
                self.stats.record(r.path.as_str(), &r.host, r.stamp, r.hash, r.hashed_at_ns);
                outputs.push(OutputRecord { path: r.path, hash: r.hash, mode: r.mode });
            }
            fp.discovered = discovered;
            let record = Box::new(ActionRecord { key: fp.key(), fingerprint: fp, outputs });
            return Ok(Done::Finished {
                record,
                outcome: Outcome::Restored,
                reason,
                stdout: entry.stdout,
                stderr: entry.stderr,
            });
        }

        // Run.
        started(&reason);
        // Outputs that are also inputs are updated in place (objcopy
        // --update-section, multiboot.py on the image): keep them.
        let mut to_clear: Vec<&Utf8PathBuf> = action.outputs.iter().filter(|o| !action.inputs.contains(o)).collect();
        to_clear.extend(action.depfile.iter());
        for out in to_clear {
            let host = self.host(out)?;
            if let Some(dir) = host.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            }
            match fs::remove_file(&host) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::Error::new(e).context(format!("removing stale {host}")).into()),
            }
        }
        self.clock.note_spawn();
        let output = self.clock.time(Phase::of(action.kind), || self.runner.run(&action.script, &action.cwd))?;
        let stdout = self.runner.rewrite_to_inside(&String::from_utf8_lossy(&output.stdout));
        let stderr = self.runner.rewrite_to_inside(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(Failure { status: output.status.code(), stdout, stderr, message: None });
        }
        let fail = |message: String| Failure {
            status: Some(0),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            message: Some(message),
        };
        for out in &action.outputs {
            let host = self.host(out)?;
            if !host.is_file() {
                return Err(fail(format!("it did not write its declared output {out}")));
            }
        }
        if let Some(depfile) = &action.depfile {
            let host = self.host(depfile)?;
            let text = match fs::read(&host) {
                Ok(bytes) => self.runner.rewrite_to_inside(&String::from_utf8_lossy(&bytes)),
                Err(e) => return Err(fail(format!("cannot read its depfile {depfile}: {e}"))),
            };
            let paths = self.discovered_inputs(action, &text);
            fp.discovered = self.hash_all(&paths)?;
        }
        let mut outputs = Vec::new();
        let mut cached = Vec::new();
        for out in &action.outputs {
            let host = self.host(out)?;
            let hashed_at = crate::exec::state::now_ns();
            let (c, stamp) = self.clock.time(Phase::StoreWrite, || self.cache.store_output(out, &host))?;
            let hash = Hash::from_hex(&c.blake3).context("store returned a malformed blob hash")?;
            self.stats.note_hashed();
            self.stats.record(out.as_str(), &host, stamp, hash, hashed_at);
            outputs.push(OutputRecord { path: out.clone(), hash, mode: c.mode });
            cached.push(c);
        }
        let key = fp.key();
        self.clock.time(Phase::CacheWrite, || self.write_cache(&key, &prekey, &fp, cached, &stdout, &stderr))?;
        let record = Box::new(ActionRecord { key, fingerprint: fp, outputs });
        Ok(Done::Finished { record, outcome: Outcome::Ran, reason, stdout, stderr })
    }

    fn write_cache(
        &self,
        key: &Hash,
        prekey: &Hash,
        fp: &Fingerprint,
        outputs: Vec<CachedOutput>,
        stdout: &str,
        stderr: &str,
    ) -> anyhow::Result<()> {
        let discovered: Vec<Utf8PathBuf> = fp.discovered.iter().map(|(p, _)| p.clone()).collect();
        let entry = Entry { outputs, discovered: discovered.clone(), stdout: stdout.into(), stderr: stderr.into() };
        self.cache.put(key, &entry)?;
        if !discovered.is_empty() {
            self.cache.add_to_manifest(prekey, &discovered)?;
        }
        Ok(())
    }

    /// Depfile prerequisites that count as discovered inputs: under
    /// `/kraft`, not already known inputs or own outputs; sorted.
    fn discovered_inputs(&self, action: &Action, depfile: &str) -> Vec<Utf8PathBuf> {
        let known: BTreeSet<&Utf8Path> =
            action.inputs.iter().chain(action.outputs.iter()).map(|p| p.as_path()).collect();
        let mut set = BTreeSet::new();
        for dep in fingerprint::parse_depfile(depfile) {
            let path = Utf8Path::new(&dep);
            let abs = if path.is_absolute() { path.to_owned() } else { action.cwd.join(path) };
            let abs = fingerprint::normalize(&abs);
            if !abs.starts_with(SANDBOX_ROOT) || known.contains(abs.as_path()) {
                continue;
            }
            set.insert(abs);
        }
        set.into_iter().collect()
    }

    fn check_outputs(&self, rec: &ActionRecord) -> anyhow::Result<Option<DirtyReason>> {
        for out in &rec.outputs {
            match self.hash(&out.path)? {
                None => return Ok(Some(DirtyReason::OutputMissing { path: out.path.clone() })),
                Some(h) if h != out.hash => {
                    return Ok(Some(DirtyReason::OutputModified {
                        path: out.path.clone(),
                        old: out.hash.to_hex().to_string(),
                        new: Some(h.to_hex().to_string()),
                    }))
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

// ----------------------------------------------------------------- driver

/// Identify the toolchain (once per build), through the stat cache.
fn probe_toolchain(runner: &dyn Runner, spec: &ToolchainSpec, cwd: &Utf8Path, stats: &StatCache, memo: &Utf8Path) -> Toolchain {
    let script = Toolchain::probe_script(spec);
    let text = match probe_memo::load(memo, &script) {
        Some(text) => text,
        None => {
            let text = match runner.run(&script, cwd) {
                Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
                Err(e) => format!("text\tprobe failed: {e}"),
            };
            probe_memo::save(memo, &script, &text);
            text
        }
    };
    Toolchain::from_probe(&text, stats).unwrap_or_else(|_| Toolchain::from_components(Default::default()))
}

/// The toolchain probe spawns a sandbox and a dozen processes (~100 ms); a
/// no-op build must not pay that. Its output is kept beside the state with
/// the stamp (size, mtime, ctime, inode) of every program it named, and
/// reused while the probe script is the same and no such program changed.
/// The programs' contents are still hashed into the key (through the stat
/// cache), so a reused probe can never hide a changed compiler.
mod probe_memo {
    use std::os::unix::fs::MetadataExt;

    use camino::Utf8Path;

    fn stamp(path: &str) -> Option<String> {
        let m = std::fs::metadata(path).ok()?;
        Some(format!("{path} {} {} {} {}", m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000, m.ctime(), m.ino()))
    }

    fn stamps(text: &str) -> Option<Vec<String>> {
        text.lines()
            .filter_map(|line| line.strip_prefix("prog\t"))
            .map(|rest| rest.split_once('\t').map(|(_, path)| path))
            .map(|path| path.and_then(stamp))
            .collect()
    }

    pub fn load(memo: &Utf8Path, script: &str) -> Option<String> {
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(memo).ok()?).ok()?;
        if saved["script"].as_str()? != script {
            return None;
        }
        let text = saved["output"].as_str()?.to_string();
        let now = stamps(&text)?;
        let then: Vec<String> = saved["stamps"].as_array()?.iter().filter_map(|s| s.as_str().map(String::from)).collect();
        (now == then && !now.is_empty()).then_some(text)
    }

    pub fn save(memo: &Utf8Path, script: &str, text: &str) {
        if let Some(stamps) = stamps(text) {
            let value = serde_json::json!({"script": script, "output": text, "stamps": stamps});
            let _ = crate::util::fs::write_atomic(memo, value.to_string().as_bytes());
        }
    }
}

/// Run `graph`; see the module docs.
///
/// On an action failure the error is an [`ActionFailed`] (downcast it to get
/// the details and the partial report); other errors are I/O problems of the
/// engine itself (state file, store).
pub fn execute(graph: &Graph, ctx: &ExecContext<'_>) -> anyhow::Result<BuildReport> {
    let start = Instant::now();
    let started_ns = crate::exec::state::now_ns();
    let _lock = lock_build_dir(&ctx.state_path)?;
    let BuildState { actions: mut records, stats, last_build: _, toolchain: old_toolchain } = BuildState::load(&ctx.state_path);

    let total = graph.actions.len();
    (ctx.events)(&Event::Planned { total });
    let toolchain = match graph.actions.first() {
        Some(first) => {
            let memo = ctx.state_path.with_file_name(format!("{}.toolchain", ctx.state_path.file_name().unwrap_or("state")));
            probe_toolchain(ctx.runner, &ctx.toolchain, &first.cwd, &stats, &memo)
        }
        None => Toolchain::from_components(Default::default()),
    };
    let remote = ctx.remote.map(|r| Arc::new(r.start()));
    let clock = crate::timings::Clock::default();
    let shared = Shared {
        clock: &clock,
        runner: ctx.runner,
        cache: ActionCache::new(ctx.store).with_remote(remote.clone()),
        stats: &stats,
        env: env_hash(&toolchain, ctx.runner.hermetic()),
    };

    // Dependency counts (deduplicated edges).
    let mut waiting: Vec<usize> = vec![0; total];
    let mut dependents: Vec<Vec<ActionId>> = vec![Vec::new(); total];
    for action in &graph.actions {
        let deps: BTreeSet<ActionId> = action.deps.iter().copied().filter(|d| d.0 < total && *d != action.id).collect();
        waiting[action.id.0] = deps.len();
        for d in deps {
            dependents[d.0].push(action.id);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..total).filter(|&i| waiting[i] == 0).map(Reverse).collect();

    let unit_order = graph.units();
    let unit_index: HashMap<&str, usize> = unit_order.iter().enumerate().map(|(i, (u, _))| (u.as_str(), i)).collect();
    let mut report = BuildReport {
        total,
        units: unit_order
            .iter()
            .map(|(u, ids)| UnitReport { unit: u.clone(), total: ids.len(), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let mut unit_span: Vec<Option<(Instant, Instant)>> = vec![None; report.units.len()];
    let mut log: Vec<LogEntry> = Vec::new();
    let mut failure: Option<ActionFailed> = None;
    let mut done = 0usize;
    let jobs = ctx.jobs.max(1);

    type Job<'r> = (usize, Option<&'r ActionRecord>);
    type JobResult = (usize, Result<Done, Failure>, Option<DirtyReason>, Instant, Duration);

    let records_snapshot = records.clone();
    let (job_tx, job_rx) = mpsc::channel::<Job<'_>>();
    let (res_tx, res_rx) = mpsc::channel::<JobResult>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(total.max(1)) {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            let shared = &shared;
            let events = ctx.events;
            scope.spawn(move || loop {
                let job = job_rx.lock().unwrap().recv();
                let Ok((i, old)) = job else { break };
                let action = &graph.actions[i];
                let began = Instant::now();
                let why: std::cell::RefCell<Option<DirtyReason>> = Default::default();
                let announce = |reason: &DirtyReason| {
                    *why.borrow_mut() = Some(reason.clone());
                    events(&Event::Started { action, reason });
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.process(action, old, &announce)
                }))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("internal error: panicked").into()));
                if res_tx.send((i, result, why.into_inner(), began, began.elapsed())).is_err() {
                    break;
                }
            });
        }
        drop(res_tx);

        let mut running = 0usize;
        loop {
            while failure.is_none() && running < jobs {
                let Some(Reverse(i)) = ready.pop() else { break };
                let name = &graph.actions[i].name;
                job_tx.send((i, records_snapshot.get(name))).expect("workers alive");
                running += 1;
            }
            if running == 0 {
                break;
            }
            let (i, result, why, began, duration) = res_rx.recv().expect("workers alive");
            running -= 1;
            done += 1;
            let action = &graph.actions[i];
            let u = unit_index[action.unit.as_str()];
            match result {
                Ok(Done::Fresh) => {
                    report.up_to_date += 1;
                    report.units[u].fresh += 1;
                    (ctx.events)(&Event::Finished {
                        action,
                        outcome: None,
                        reason: None,
                        duration,
                        stdout: "",
                        stderr: "",
                        done,
                        total,
                    });
                }
                Ok(Done::Finished { record, outcome, reason, stdout, stderr }) => {
                    let unit = &mut report.units[u];
                    match outcome {
                        Outcome::Ran => {
                            report.run += 1;
                            unit.built += 1;
                        }
                        _ => {
                            report.restored += 1;
                            unit.cached += 1;
                        }
                    }
                    unit.busy += duration;
                    let end = began + duration;
                    let span = unit_span[u].get_or_insert((began, end));
                    span.0 = span.0.min(began);
                    span.1 = span.1.max(end);
                    (ctx.events)(&Event::Finished {
                        action,
                        outcome: Some(outcome),
                        reason: Some(&reason),
                        duration,
                        stdout: &stdout,
                        stderr: &stderr,
                        done,
                        total,
                    });
                    log.push(LogEntry {
                        name: action.name.clone(),
                        unit: action.unit.clone(),
                        outcome,
                        reason,
                        duration_ms: duration.as_millis() as u64,
                    });
                    records.insert(action.name.clone(), *record);
                }
                Err(f) => {
                    // Nothing half-written stays: delete its outputs, forget its record.
                    for out in action.outputs.iter().chain(action.depfile.iter()) {
                        if let Some(host) = ctx.runner.to_host(out) {
                            let _ = fs::remove_file(host);
                        }
                    }
                    records.remove(&action.name);
                    let reason = why.unwrap_or(DirtyReason::NeverBuilt);
                    log.push(LogEntry {
                        name: action.name.clone(),
                        unit: action.unit.clone(),
                        outcome: Outcome::Failed,
                        reason,
                        duration_ms: duration.as_millis() as u64,
                    });
                    let err = ActionFailed {
                        name: action.name.clone(),
                        unit: action.unit.clone(),
                        cwd: action.cwd.clone(),
                        command: action.script.clone(),
                        status: f.status,
                        stdout: f.stdout,
                        stderr: f.stderr,
                        message: f.message,
                        report: BuildReport::default(),
                    };
                    (ctx.events)(&Event::Failed { action, error: &err });
                    if failure.is_none() {
                        failure = Some(err);
                    }
                    continue;
                }
            }
            for &d in &dependents[i] {
                waiting[d.0] -= 1;
                if waiting[d.0] == 0 {
                    ready.push(Reverse(d.0));
                }
            }
        }
        drop(job_tx);
    });

    let flushed = shared.cache.flush();
    for (u, span) in unit_span.iter().enumerate() {
        if let Some((a, b)) = span {
            report.units[u].wall = *b - *a;
        }
    }
    let cycle = failure.is_none() && done < total;
    if let Some(remote) = &remote {
        let stats = remote.finish();
        report.remote_hits = stats.hits;
        report.remote_uploads = stats.uploads;
        report.remote_warnings = stats.warnings;
        ctx.store.count_uploaded(stats.uploaded_bytes);
    }

    // Forget actions no longer in the graph? No: keep them (switching
    // configurations back and forth stays cheap); they cost only state size.
    let to_host = |key: &str| {
        let p = Utf8Path::new(key);
        if p.starts_with(SANDBOX_ROOT) {
            ctx.runner.to_host(p).unwrap_or_else(|| p.to_owned())
        } else {
            p.to_owned()
        }
    };
    stats.settle(&to_host);
    report.files_hashed = stats.files_hashed();
    report.watched = stats.used_keys().iter().map(|key| to_host(key)).collect();
    report.duration = start.elapsed();
    report.timings = clock.snapshot();
    // A build that did nothing changes nothing worth writing: the records are
    // the old ones and no file was hashed. Skipping the save keeps a no-op
    // build read-only (and `explain` on the last build that did work).
    let did_nothing = report.run == 0
        && report.restored == 0
        && report.files_hashed == 0
        && failure.is_none()
        && !cycle
        && old_toolchain == toolchain.components;
    if !did_nothing {
        let state = BuildState {
            actions: records,
            stats,
            last_build: LastBuild { started_ns, succeeded: failure.is_none() && !cycle, entries: log },
            toolchain: toolchain.components.clone(),
        };
        state.save(&ctx.state_path)?;
    }

    if let Some(mut f) = failure {
        f.report = report;
        return Err(f.into());
    }
    flushed?;
    if cycle {
        anyhow::bail!("dependency cycle: {} of {total} actions could not be scheduled", total - done);
    }
    Ok(report)
}

/// One build at a time per build dir.
fn lock_build_dir(state_path: &Utf8Path) -> anyhow::Result<fs::File> {
    let lock_path = Utf8PathBuf::from(format!("{state_path}.lock"));
    if let Some(dir) = lock_path.parent().filter(|d| !d.as_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {lock_path}"))?;
    // A lock can look held for a moment without another build: a process
    // forked elsewhere in this one (a parallel test, a sandbox spawn) holds a
    // copy of the descriptor until its exec closes it. Wait a little before
    // concluding that another build really owns the directory.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another build is using this build directory (lock {lock_path} is held for more than 10 s)"
            ),
            Err(fs::TryLockError::Error(e)) => return Err(anyhow::Error::new(e).context(format!("locking {lock_path}"))),
        }
    }
}
