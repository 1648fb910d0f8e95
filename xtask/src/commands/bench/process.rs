//! Our side as a user runs it: `xtask build` in a process of its own.
//!
//! The timed run then includes the process's start (reading the workspace,
//! the lock, the Kraftfile), as make's side includes make's, and the tool's
//! own CPU and peak RSS are its process's alone, not the bench's (which
//! keeps what earlier scenarios allocated). The build reports both, with
//! its phases, in `--message-format json` (`target-finished`,
//! `build-finished`).

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::measure::{record_phases, record_tool_use, Phases};

/// A team cache to read from (never written).
pub struct Remote<'a> {
    /// `--remote-cache`: an HTTP cache or a `grpc://` engine's action cache.
    pub url: &'a str,
    /// `KRAFT_CACHE_TRUSTED_KEYS`.
    pub trusted_keys: &'a str,
}

/// What the harness checks of a build besides its phases.
pub struct Built {
    pub remote_hits: u64,
}

/// `xtask --store <store> -j <jobs> --remote-cache '' build <app> --target qemu/x86_64`,
/// from `workspace`, with no team cache or engine from the environment.
pub fn build(workspace: &Utf8Path, store: &Utf8Path, jobs: usize, app: &Utf8Path) -> Result<()> {
    build_with(workspace, store, jobs, app, None).map(drop)
}

/// [`build`], reading `remote` when given.
pub fn build_with(workspace: &Utf8Path, store: &Utf8Path, jobs: usize, app: &Utf8Path, remote: Option<&Remote<'_>>) -> Result<Built> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let jobs = jobs.to_string();
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["--store", store.as_str(), "-j", &jobs, "--remote-cache", remote.map_or("", |r| r.url), "--message-format", "json"])
        .args(["build", app.as_str(), "--target", "qemu/x86_64"])
        .current_dir(workspace);
    for var in ["KRAFT_REMOTE_CACHE", "KRAFT_REMOTE_EXEC", "KRAFT_REMOTE_UPLOAD", "KRAFT_CACHE_SIGNING_KEY", "KRAFT_CACHE_TRUSTED_KEYS"] {
        cmd.env_remove(var);
    }
    if let Some(remote) = remote {
        cmd.env("KRAFT_CACHE_TRUSTED_KEYS", remote.trusted_keys);
    }
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("running {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`xtask build {app}` failed ({}):\n{}{}", out.status, kraft::util::text::tail(&stdout, 20), kraft::util::text::tail(&stderr, 40));
    }
    let mut phases = Phases::default();
    let mut finished = None;
    let mut built = Built { remote_hits: 0 };
    for line in stdout.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match event["reason"].as_str() {
            Some("target-finished") => {
                add_target(&mut phases, &event)?;
                built.remote_hits += event["remote_hits"].as_u64().unwrap_or(0);
            }
            Some("build-finished") => finished = Some(event),
            _ => {}
        }
    }
    let finished = finished.with_context(|| format!("`xtask build {app}` printed no build-finished event"))?;
    let number = |key: &str| finished[key].as_f64().with_context(|| format!("build-finished has no `{key}`"));
    record_phases(phases);
    record_tool_use(number("cpu_seconds")?, number("peak_rss_mb")?);
    Ok(built)
}

fn add_target(phases: &mut Phases, event: &serde_json::Value) -> Result<()> {
    let number = |key: &str| event[key].as_f64().with_context(|| format!("target-finished has no `{key}`"));
    let count = |key: &str| event[key].as_u64().map(|n| n as usize).with_context(|| format!("target-finished has no `{key}`"));
    let make_s: Vec<(String, f64)> = serde_json::from_value(event["make_seconds"].clone()).context("target-finished: `make_seconds`")?;
    let busy: kraft::timings::Timings = serde_json::from_value(event["busy"].clone()).context("target-finished: `busy`")?;
    phases.plan_s += number("plan_seconds")?;
    phases.make_s.extend(make_s);
    phases.exec_s += number("exec_seconds")?;
    phases.busy = phases.busy.plus(&busy);
    phases.actions_run += count("run")?;
    phases.actions_restored += count("restored")?;
    Ok(())
}
