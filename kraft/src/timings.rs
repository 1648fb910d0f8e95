//! Where a build's time goes: busy time per phase, summed over the
//! executor's workers, filled in by the executor while it runs.
//!
//! The numbers are *busy* time (two workers each compiling for 1 s add 2 s
//! to `compile`), so they say what the work cost, not how long the build
//! took; the build's wall time is [`crate::exec::BuildReport::duration`].
//! Planning (each make run) is timed by the planner and reported beside
//! these ([`crate::plan::Plan::make_seconds`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::plan::graph::ActionKind;

/// One phase of the executor's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Commands of compile actions, spawned in the sandbox (spawn included).
    Compile,
    /// Partial and final links, objcopy steps (spawn included).
    Link,
    /// Other commands (generated headers, scripts).
    Script,
    /// Hashing inputs to compute keys (stat cache misses read files).
    Keys,
    /// Action-cache lookups (entries, manifests; remote fetches included).
    Lookup,
    /// Restoring outputs from blobs (decompressing or copying, verifying).
    Restore,
    /// Writing outputs into the store as blobs (hashing, compressing).
    StoreWrite,
    /// Writing action-cache entries and manifests.
    CacheWrite,
}

const PHASES: usize = 8;

impl Phase {
    /// The phase an action's command counts toward.
    pub fn of(kind: ActionKind) -> Phase {
        match kind {
            ActionKind::Compile => Phase::Compile,
            ActionKind::PartialLink | ActionKind::Link | ActionKind::Objcopy => Phase::Link,
            ActionKind::Script => Phase::Script,
        }
    }
}

/// Thread-safe accumulator, one per build.
#[derive(Debug, Default)]
pub struct Clock {
    nanos: [AtomicU64; PHASES],
    spawns: AtomicUsize,
}

impl Clock {
    pub fn add(&self, phase: Phase, elapsed: Duration) {
        self.nanos[phase as usize].fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Run `f`, adding its wall time to `phase`.
    pub fn time<T>(&self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(phase, start.elapsed());
        out
    }

    /// Count sandbox starts (for the sandbox-start estimate): one per
    /// command, or one per worker with a resident sandbox.
    pub fn note_spawns(&self, n: usize) {
        self.spawns.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Timings {
        let s = |p: Phase| self.nanos[p as usize].load(Ordering::Relaxed) as f64 / 1e9;
        Timings {
            compile_s: s(Phase::Compile),
            link_s: s(Phase::Link),
            script_s: s(Phase::Script),
            keys_s: s(Phase::Keys),
            lookup_s: s(Phase::Lookup),
            restore_s: s(Phase::Restore),
            store_write_s: s(Phase::StoreWrite),
            cache_write_s: s(Phase::CacheWrite),
            spawns: self.spawns.load(Ordering::Relaxed),
        }
    }
}

/// Busy seconds per phase of one build (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub compile_s: f64,
    pub link_s: f64,
    pub script_s: f64,
    pub keys_s: f64,
    pub lookup_s: f64,
    pub restore_s: f64,
    pub store_write_s: f64,
    pub cache_write_s: f64,
    /// Sandboxes started for actions (each pays a namespace setup).
    pub spawns: usize,
}

impl Eq for Timings {}

/// What this process has used so far: CPU seconds (user + system, from
/// `getrusage`) and peak resident set in MiB (`VmHWM`). Children are not
/// included. Not `ru_maxrss`: Linux carries that over an `execve` from the
/// forked copy of the parent, so a child of a large process would report
/// its parent's size.
pub fn own_usage() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let cpu = if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0 {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(usage.ru_utime) + tv(usage.ru_stime)
    } else {
        0.0
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let peak_kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
    (cpu, peak_kib.unwrap_or(0.0) / 1024.0)
}

impl Timings {
    /// Sum of two builds' timings (an app built for several targets).
    pub fn plus(&self, other: &Timings) -> Timings {
        Timings {
            compile_s: self.compile_s + other.compile_s,
            link_s: self.link_s + other.link_s,
            script_s: self.script_s + other.script_s,
            keys_s: self.keys_s + other.keys_s,
            lookup_s: self.lookup_s + other.lookup_s,
            restore_s: self.restore_s + other.restore_s,
            store_write_s: self.store_write_s + other.store_write_s,
            cache_write_s: self.cache_write_s + other.cache_write_s,
            spawns: self.spawns + other.spawns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_accumulate() {
        let clock = Clock::default();
        clock.add(Phase::Compile, Duration::from_millis(1500));
        clock.add(Phase::Compile, Duration::from_millis(500));
        clock.add(Phase::Restore, Duration::from_millis(250));
        clock.note_spawns(1);
        let t = clock.snapshot();
        assert_eq!((t.compile_s, t.restore_s, t.spawns), (2.0, 0.25, 1));
        assert_eq!(t.plus(&t).compile_s, 4.0);
        assert_eq!(Phase::of(ActionKind::PartialLink), Phase::Link);
    }
}
