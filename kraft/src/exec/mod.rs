//! Running a [`Graph`]: in parallel, content-addressed, with exact invalidation.
//!
//! For every action, once all its deps are done (ready actions start in graph
//! order, which is make's order):
//!
//! 1. compute its [`Fingerprint`](fingerprint::Fingerprint) (through the stat cache: unchanged files are
//!    not re-read) and compare it with the one recorded in the build dir's
//!    state. Same fingerprint and outputs intact → **up to date**, no work.
//! 2. otherwise look the key up in the action cache (two levels: the
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
//!
//! | file | concept |
//! |---|---|
//! | `scheduler.rs` | dependency order, `-j` workers, counters, saving the state |
//! | `action.rs` | one action: fingerprint, compare, restore or run |
//! | `fingerprint/` | the keys and the table of every input (`mod.rs`), why an action is dirty, depfiles, the toolchain |
//! | `mounts.rs` | the mount map: inside path ↔ host path, once per target |
//! | `stat_cache.rs` | content hashes trusted while the stat stamp holds |
//! | `in_store.rs` | outputs restored from the cache but left in the store until a command needs them |
//! | `state.rs` | the build dir's records, on disk |
//! | `noop.rs` | the no-op snapshot |
//! | `lock.rs` | build-directory locks that wait |
//! | `slots.rs` | at most `-j` local commands while more actions wait on the network |
//! | `sandbox.rs` | spawning commands (bwrap or the host) |
//! | `resident.rs` | one long-lived sandbox per worker thread, running many actions |
//! | `explain.rs` | why the last build did what it did |
//! | `remote/` | actions as REAPI Actions: remote cache, remote execution, the worker |

mod action;
pub mod in_store;
pub(crate) mod slots;
pub mod explain;
pub mod lock;
pub mod fingerprint;
pub mod mounts;
pub mod noop;
pub mod remote;
pub mod resident;
pub mod sandbox;
mod scheduler;
pub mod stat_cache;
pub mod state;

use std::fmt;
use std::process::Output;
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};

use crate::cache::http::RemoteCache;
use crate::exec::fingerprint::{DirtyReason, SandboxIdentity, ToolchainSpec};
use crate::exec::mounts::MountMap;
use crate::exec::sandbox::Sandbox;
use crate::exec::state::Outcome;
use crate::plan::graph::Action;
use crate::store::Store;

pub use scheduler::execute;

/// What the engine needs from a sandbox. Implemented by [`Sandbox`]; tests
/// may wrap it (to count or fail runs).
pub trait Runner: Sync {
    /// Run `bash -c script` in `cwd` (an inside path), capturing output.
    fn run(&self, script: &str, cwd: &Utf8Path) -> anyhow::Result<Output>;
    /// The target's mount map: inside path ↔ host path.
    fn mounts(&self) -> &MountMap;
    /// Whether commands are isolated (bwrap) rather than run on the host:
    /// when not, host paths in what commands print are mapped back.
    fn hermetic(&self) -> bool;
    /// What of the sandbox goes into every action key: the backend and the
    /// commands' environment (never the mounts' host paths).
    fn identity(&self) -> SandboxIdentity;
}

impl Runner for Sandbox {
    fn run(&self, script: &str, cwd: &Utf8Path) -> anyhow::Result<Output> {
        Sandbox::run(self, script, cwd)
    }
    fn mounts(&self) -> &MountMap {
        self.mount_map()
    }
    fn hermetic(&self) -> bool {
        self.backend() == "bwrap"
    }
    fn identity(&self) -> SandboxIdentity {
        // The environment as a set: where a variable was overridden does not
        // matter, only its final value.
        let env: std::collections::BTreeMap<String, String> = self.full_env().into_iter().collect();
        SandboxIdentity { backend: self.backend().to_string(), env: env.into_iter().collect() }
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
    /// The toolchain to identify; its `path` is taken from the runner's
    /// environment.
    pub toolchain: ToolchainSpec,
    pub events: &'a (dyn Fn(&Event<'_>) + Sync),
    /// The team cache behind the local action cache (default: none). See
    /// [`crate::cache::http`]: it never fails a build.
    pub remote: Option<&'a RemoteCache>,
    /// The remote tier already started for this build (the plan used it);
    /// without one, a tier is started from `remote`.
    pub remote_tier: Option<std::sync::Arc<crate::cache::http::RemoteTier>>,
    /// A REAPI engine tried after a local cache miss (see [`remote`]).
    pub reapi: Option<&'a remote::Remote>,
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
            remote_tier: None,
            reapi: None,
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

