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

/// `xtask --store <store> -j <jobs> --remote-cache '' build <app> --target qemu/x86_64`,
/// from `workspace`, with no team cache or engine from the environment.
pub fn build(workspace: &Utf8Path, store: &Utf8Path, jobs: usize, app: &Utf8Path) -> Result<()> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let jobs = jobs.to_string();
    let out = std::process::Command::new(&exe)
        .args(["--store", store.as_str(), "-j", &jobs, "--remote-cache", "", "--message-format", "json"])
        .args(["build", app.as_str(), "--target", "qemu/x86_64"])
        .current_dir(workspace)
        .env_remove("KRAFT_REMOTE_CACHE")
        .env_remove("KRAFT_REMOTE_EXEC")
        .env_remove("KRAFT_REMOTE_UPLOAD")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!("`xtask build {app}` failed ({}):\n{}{}", out.status, kraft::util::text::tail(&stdout, 20), kraft::util::text::tail(&stderr, 40));
    }
    let mut phases = Phases::default();
    let mut finished = None;
    for line in stdout.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        match event["reason"].as_str() {
            Some("target-finished") => add_target(&mut phases, &event)?,
            Some("build-finished") => finished = Some(event),
            _ => {}
        }
    }
    let finished = finished.with_context(|| format!("`xtask build {app}` printed no build-finished event"))?;
    let number = |key: &str| finished[key].as_f64().with_context(|| format!("build-finished has no `{key}`"));
    record_phases(phases);
    record_tool_use(number("cpu_seconds")?, number("peak_rss_mb")?);
    Ok(())
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
