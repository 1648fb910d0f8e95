//! A team cache for `uk/remote-warm-reapi`: BuildGrid on loopback, started
//! with the repository's own scripts (`reapi/buildgrid/start.sh`, the ones
//! the tests use) from the venv `.ci/setup` installs, and stopped on drop.

use std::net::TcpListener;
use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// The engine; stopped (with its PostgreSQL) on drop.
pub struct BuildGrid {
    scripts: Utf8PathBuf,
    dir: Utf8PathBuf,
    port: u16,
}

impl BuildGrid {
    /// Start BuildGrid with its state under `dir` (replaced). `workspace`
    /// is the repository root (scripts and venv).
    pub fn start(workspace: &Utf8Path, dir: &Utf8Path) -> Result<BuildGrid> {
        let scripts = workspace.join("reapi/buildgrid");
        let venv = workspace.join("target/buildgrid-venv");
        if !venv.join("bin/bgd").exists() {
            bail!("uk/remote-warm-reapi needs BuildGrid in {venv} (run .ci/setup)");
        }
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))?;
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let status = Command::new(scripts.join("start.sh"))
            .arg(port.to_string())
            .arg(dir)
            .env("BGD_VENV", &venv)
            .status()
            .with_context(|| format!("running {scripts}/start.sh"))?;
        if !status.success() {
            bail!("BuildGrid did not start ({status}); see {dir}/bgd.log");
        }
        Ok(BuildGrid { scripts, dir: dir.to_owned(), port })
    }

    /// `grpc://127.0.0.1:PORT/main`.
    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}/main", self.port)
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        let _ = Command::new(self.scripts.join("stop.sh")).arg(&self.dir).status();
    }
}
