//! Accounting helpers of the bench: what one sandbox start costs, how big a
//! store is, and the floor of a configuration change (the share of the
//! work that must be redone).

use std::time::Instant;

use anyhow::Result;
use camino::Utf8Path;
use kraft::exec::sandbox::Sandbox;

/// Seconds one sandboxed command costs beyond the same command run by a
/// plain `bash -c` (median of `n` tries each; the namespace setup).
pub fn sandbox_start_seconds(n: usize) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let host = Utf8Path::from_path(dir.path()).expect("utf-8 temp dir").to_owned();
    // A start each time, not this thread's resident sandbox.
    let sandbox = Sandbox::new(vec![kraft::exec::sandbox::Mount::rw(host, "/kraft/build")], Vec::new())?.per_action();
    let cwd = Utf8Path::new("/kraft/build");
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(super::measure::median(&times))
    };
    let sandboxed = time(&mut || sandbox.run("true", cwd).map(drop))?;
    let plain = time(&mut || std::process::Command::new("bash").args(["-c", "true"]).output().map(drop).map_err(Into::into))?;
    Ok((sandboxed - plain).max(0.0))
}

/// Bytes of the files under `dir` (what `cache stats` counts).
pub fn tree_bytes(dir: &Utf8Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// The floor of a change that reaches every object reading `header`:
/// from a cold build's state (every action ran, with its time), the busy
/// seconds of the actions whose depfile named the header, all busy
/// seconds, and how many actions each.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Floor {
    pub reading_s: f64,
    pub all_s: f64,
    pub reading_actions: usize,
    pub all_actions: usize,
}

impl Floor {
    pub fn of(state_path: &Utf8Path, header_suffix: &str) -> Floor {
        let state = kraft::exec::state::BuildState::load(state_path);
        let mut floor = Floor::default();
        for entry in &state.last_build.entries {
            let seconds = entry.duration_ms as f64 / 1000.0;
            floor.all_s += seconds;
            floor.all_actions += 1;
            let reads = state
                .actions
                .get(&entry.name)
                .is_some_and(|r| r.fingerprint.discovered.iter().any(|(p, _)| p.as_str().ends_with(header_suffix)));
            if reads {
                floor.reading_s += seconds;
                floor.reading_actions += 1;
            }
        }
        floor
    }

    pub fn share(&self) -> f64 {
        if self.all_s > 0.0 { self.reading_s / self.all_s } else { 0.0 }
    }
}
