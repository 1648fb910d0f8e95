//! The one place that spawns build processes (make, compilers, Unikraft's
//! scripts).
//!
//! Every build command sees the same fixed file system layout, rooted at
//! [`SANDBOX_ROOT`](crate::plan::graph::SANDBOX_ROOT) (`/kraft`):
//!
//! | inside                  | host                                  | access     |
//! |-------------------------|---------------------------------------|------------|
//! | `/kraft/unikraft`       | the core tree (a store directory)     | read-only  |
//! | `/kraft/libs/<name>`    | each library                          | read-only  |
//! | `/kraft/apps/<name>`    | the app (named as `CONFIG_UK_NAME`)   | read-only  |
//! | `/kraft/build`          | the build directory                   | read-write |
//!
//! so command lines, depfiles and outputs never mention where the user's
//! checkout or store lives, and cache keys computed from them are portable.
//!
//! # Backends
//!
//! * `bwrap` (the default, and required): `bwrap --unshare-all
//!   --die-with-parent --new-session --clearenv`, a tmpfs root holding
//!   read-only `/usr`, `/bin`, `/lib*`, `/sbin`, `/etc`, a private tmpfs
//!   `/tmp`, minimal `/dev` and `/proc`, and the mounts above, with the root
//!   remounted read-only (only the build dir and `/tmp` take writes). No network
//!   (a network namespace of its own), no host `$HOME`, no host `/tmp`, no
//!   controlling terminal (`--new-session`: a build command cannot push
//!   keystrokes into the user's terminal with `TIOCSTI`). When bwrap is
//!   missing or unusable the build stops and says how to install it; there
//!   is no silent fallback.
//! * `none`, only when asked for with `KRAFT_SANDBOX=none`: commands run
//!   directly on the host, with the same cleared environment. Inside paths
//!   are *textually rewritten* to host paths in the script and the working
//!   directory ([`Sandbox::rewrite_to_host`]); callers that read what the
//!   commands print or write (make's output, `.cmd` files, depfiles) map it
//!   back with [`Sandbox::rewrite_to_inside`]. One warning is printed per
//!   process: outputs are not hermetic (the host's `/tmp`, network and file
//!   system are visible) and objects embed host paths (debug info,
//!   `__FILE__`), so they are only reproducible on the same layout.
//!
//! The backend is part of every key: the plan key has a `backend` field and
//! every action key's `env` field says whether it was built hermetically
//! (`exec::fingerprint::env_hash`), so results built unsandboxed never
//! satisfy a sandboxed build, locally or through the shared cache.
//!
//! # Environment
//!
//! Cleared, then `PATH=/usr/bin:/bin` (or `$KRAFT_SANDBOX_PATH`), `LC_ALL=C`, `TZ=UTC`,
//! `HOME=/nonexistent`, then the caller's `env` (e.g. `SOURCE_DATE_EPOCH`),
//! which may override the fixed ones.
//!
//! # Cost
//!
//! Measured on the 2-core dev VM (100 spawns of `bash -c true`): directly
//! ≈ 2.2 ms per spawn, through bwrap with the mounts of a Unikraft build
//! (core, musl, app, build) ≈ 5–12 ms per spawn (namespace + /proc setup).
//! `sandbox::tests::spawn_overhead` (ignored) re-measures. For musl's ~1,200
//! compiles of ~30 ms each that was a third of the work, so builds run their
//! actions in one long-lived sandbox per worker ([`crate::exec::resident`]):
//! ≈ 0.4 ms per action beyond the command itself.

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

pub use crate::exec::mounts::Mount;
use crate::exec::mounts::MountMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Bwrap,
    None,
}

#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Which sandbox this is, for the resident runners (clones share it:
    /// same mounts, same environment).
    id: u64,
    /// Whether `run` may use this thread's resident sandbox
    /// (`exec::resident`), when a runner is registered.
    resident: bool,
    /// Whether this binary stands in for bash (`exec::resident::shell`):
    /// planning sandboxes, where make starts bash for every `$(shell …)`.
    shell_stand_in: bool,
    mounts: MountMap,
    env: Vec<(String, String)>,
    backend: Backend,
}

thread_local! {
    static STARTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Sandboxes started (or, without bwrap, commands spawned) by this thread
/// so far: what the build's timings count as sandbox starts.
pub(crate) fn starts_on_this_thread() -> usize {
    STARTS.with(std::cell::Cell::get)
}

/// A new sandbox's id (see `Sandbox::id`).
fn next_id() -> u64 {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The fixed part of every build command's environment.
pub const BASE_ENV: [(&str, &str); 4] =
    [("PATH", "/usr/bin:/bin"), ("LC_ALL", "C"), ("TZ", "UTC"), ("HOME", "/nonexistent")];

impl Sandbox {
    /// Chooses the backend from `KRAFT_SANDBOX`: `bwrap` (the default) must
    /// work; `none` is the only way to run unconfined.
    pub fn new(mounts: Vec<Mount>, env: Vec<(String, String)>) -> Result<Sandbox> {
        let sandbox = Sandbox::chosen(mounts, env)?;
        sandbox.ensure_usable()?;
        Ok(sandbox)
    }

    /// [`Sandbox::new`] without checking that bubblewrap works: enough to
    /// compute keys, and what a no-op build needs (it runs nothing, so it
    /// does not start the bwrap probe). Call [`Sandbox::ensure_usable`]
    /// before running anything.
    pub fn chosen(mounts: Vec<Mount>, env: Vec<(String, String)>) -> Result<Sandbox> {
        let backend = match crate::config::Config::get().sandbox.as_deref() {
            Some("none") => Backend::None,
            None | Some("") | Some("bwrap") => Backend::Bwrap,
            Some(other) => bail!("KRAFT_SANDBOX={other}: expected `bwrap` or `none`\n  help: unset it to use bubblewrap"),
        };
        Sandbox::with_backend(mounts, env, backend)
    }

    /// With bubblewrap, that it can create the namespaces we need (probed
    /// once per process).
    pub fn ensure_usable(&self) -> Result<()> {
        if self.backend == Backend::Bwrap {
            if let Err(why) = bwrap_usable() {
                bail!(
                    "bubblewrap is required to run build commands, and it is unusable: {why}\n  \
                     help: install bubblewrap (`apt-get install bubblewrap`, or `bash .ci/setup`) and allow \
                     unprivileged user namespaces; to build without any sandbox (outputs not hermetic, \
                     cached apart from sandboxed ones) set KRAFT_SANDBOX=none explicitly"
                );
            }
        }
        Ok(())
    }

    pub fn with_backend(
        mounts: Vec<Mount>,
        env: Vec<(String, String)>,
        backend: Backend,
    ) -> Result<Sandbox> {
        // Canonical host paths, parents before children (see `MountMap`).
        let mounts = MountMap::new(mounts)?;
        if backend == Backend::None {
            warn_unsandboxed();
        }
        Ok(Sandbox { id: next_id(), resident: true, shell_stand_in: false, mounts, env, backend })
    }

    /// Never a resident sandbox: every `run` starts bwrap afresh.
    pub fn per_action(mut self) -> Sandbox {
        self.resident = false;
        self
    }

    /// With this binary standing in for bash (when it is registered; see
    /// `exec::resident::shell`): for make's many `$(shell mkdir -p …)`.
    /// The sandbox is new (another resident runner), and nothing a
    /// command sees differs.
    pub fn with_shell_stand_in(mut self) -> Sandbox {
        self.id = next_id();
        self.shell_stand_in = true;
        self
    }

    pub fn backend(&self) -> &str {
        match self.backend {
            Backend::Bwrap => "bwrap",
            Backend::None => "none",
        }
    }

    pub fn mounts(&self) -> &[Mount] {
        self.mounts.mounts()
    }

    /// Inside path ↔ host path, for this sandbox's mounts.
    pub fn mount_map(&self) -> &MountMap {
        &self.mounts
    }

    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// Runs `bash -c script` with `cwd` (an inside path) as working
    /// directory; stdout and stderr are captured, stdin is empty.
    pub fn run(&self, script: &str, cwd: &Utf8Path) -> Result<Output> {
        if self.backend == Backend::Bwrap && self.resident {
            let bwrap = |exe: &Utf8Path, inside: &str| self.bwrap(&[(exe, inside)], Utf8Path::new("/"));
            if let Some(result) = crate::exec::resident::run(self.id, &bwrap, script, cwd) {
                return result;
            }
        }
        let mut cmd = self.command(script, cwd)?;
        cmd.stdin(Stdio::null());
        cmd.output().with_context(|| format!("spawning build command ({} sandbox)", self.backend()))
    }

    /// The [`Command`] `run` would spawn, for callers that stream output.
    pub fn command(&self, script: &str, cwd: &Utf8Path) -> Result<Command> {
        let mut cmd;
        match self.backend {
            Backend::Bwrap => {
                cmd = self.bwrap(&[], cwd)?;
                cmd.args(["bash", "-c", script]);
            }
            Backend::None => {
                STARTS.with(|n| n.set(n.get() + 1));
                let host_cwd = self
                    .to_host(cwd)
                    .with_context(|| format!("working directory {cwd} is not in a sandbox mount"))?;
                cmd = Command::new(self.bash());
                cmd.env_clear();
                for (k, v) in self.full_env() {
                    cmd.env(k, v);
                }
                cmd.current_dir(host_cwd).arg("-c").arg(self.rewrite_to_host(script));
            }
        }
        Ok(cmd)
    }

    /// `bwrap` with this sandbox's layout and environment, up to the
    /// program to run; `extra` files are bound read-only at the given
    /// inside paths (the resident runner).
    pub(crate) fn bwrap(&self, extra: &[(&Utf8Path, &str)], cwd: &Utf8Path) -> Result<Command> {
        STARTS.with(|n| n.set(n.get() + 1));
        let mut cmd = Command::new("bwrap");
        cmd.args(["--unshare-all", "--die-with-parent", "--new-session", "--clearenv"]);
        for (k, v) in self.full_env() {
            cmd.arg("--setenv").arg(k).arg(v);
        }
        cmd.args(["--ro-bind", "/usr", "/usr"]);
        for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = std::path::Path::new(dir);
            match std::fs::symlink_metadata(p) {
                Ok(md) if md.file_type().is_symlink() => {
                    let target = std::fs::read_link(p).with_context(|| format!("reading the symlink {dir}"))?;
                    cmd.arg("--symlink").arg(target).arg(dir);
                }
                Ok(md) if md.is_dir() => {
                    cmd.args(["--ro-bind", dir, dir]);
                }
                _ => {}
            }
        }
        cmd.args(["--ro-bind", "/etc", "/etc", "--tmpfs", "/tmp", "--dev", "/dev", "--proc", "/proc"]);
        // On Nix systems the toolchain lives in the store (see KRAFT_SANDBOX_PATH).
        if std::path::Path::new("/nix/store").is_dir() {
            cmd.args(["--ro-bind", "/nix/store", "/nix/store"]);
        }
        for m in self.mounts.mounts() {
            cmd.arg(if m.writable { "--bind" } else { "--ro-bind" });
            cmd.arg(&m.host).arg(&m.inside);
        }
        for (host, inside) in extra {
            cmd.arg("--ro-bind").arg(host).arg(inside);
        }
        if let Some(exe) = self.shell_stand_in.then(crate::exec::resident::shell_stand_in_exe).flatten() {
            // Over bash at its real path (`/bin` may be a symlink to it).
            if let Ok(bash) = std::fs::canonicalize(self.bash()) {
                cmd.arg("--ro-bind").arg(&bash).arg(crate::exec::resident::REAL_BASH_INSIDE);
                cmd.arg("--ro-bind").arg(exe).arg(&bash);
            }
        }
        // The tmpfs root itself (where bwrap made `/kraft`) read-only
        // too: the build dir and the private /tmp are all that can
        // be written.
        cmd.args(["--remount-ro", "/"]);
        cmd.arg("--chdir").arg(cwd);
        Ok(cmd)
    }

    /// `bash` from the commands' PATH (a Nix build has no `/bin/bash`).
    fn bash(&self) -> std::path::PathBuf {
        let env = self.full_env();
        let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("/usr/bin:/bin");
        path.split(':')
            .map(|dir| std::path::Path::new(dir).join("bash"))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| "/bin/bash".into())
    }

    /// The commands' environment: [`BASE_ENV`], then `PATH` from
    /// `KRAFT_SANDBOX_PATH` when set (Nix shells and builds keep their
    /// toolchain outside /usr), then the caller's variables.
    pub fn full_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            BASE_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if let Some(path) = &crate::config::Config::get().sandbox_path {
            env.retain(|(k, _)| k != "PATH");
            env.push(("PATH".to_string(), path.clone()));
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Host path for an inside path (longest matching mount wins).
    pub fn to_host(&self, inside: &Utf8Path) -> Option<Utf8PathBuf> {
        self.mounts.to_host(inside)
    }

    /// Inside path for a host path (longest matching mount wins).
    pub fn to_inside(&self, host: &Utf8Path) -> Option<Utf8PathBuf> {
        self.mounts.to_inside(host)
    }

    /// Replaces inside paths in free text by host paths (`none` backend);
    /// identity under bwrap.
    pub fn rewrite_to_host(&self, text: &str) -> String {
        if self.backend == Backend::Bwrap {
            return text.to_string();
        }
        self.mounts.rewrite_to_host(text)
    }

    /// Replaces host paths in free text (make's output, `.cmd` files,
    /// depfiles) by inside paths; identity under bwrap.
    pub fn rewrite_to_inside(&self, text: &str) -> String {
        if self.backend == Backend::Bwrap {
            return text.to_string();
        }
        self.mounts.rewrite_to_inside(text)
    }
}

fn warn_unsandboxed() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        eprintln!(
            "warning: build commands run without a sandbox (KRAFT_SANDBOX=none): \
             outputs are not hermetic and are cached apart from sandboxed ones; paths are normalized by text replacement"
        );
    });
}

/// Whether `bwrap` exists and can create the namespaces we need (checked
/// once per process).
pub fn bwrap_usable() -> std::result::Result<(), String> {
    static CHECK: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let out = Command::new("bwrap")
                .args(["--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "/bin/sh", "-c", ":"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run `bwrap`: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(backend: Backend) -> (tempfile::TempDir, Sandbox) {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap().to_owned();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("build")).unwrap();
        std::fs::write(root.join("src/a.txt"), "hello\n").unwrap();
        let mounts = vec![Mount::ro(root.join("src"), "/kraft/unikraft"), Mount::rw(root.join("build"), "/kraft/build")];
        let sb = Sandbox::with_backend(mounts, vec![("SOURCE_DATE_EPOCH".into(), "0".into())], backend).unwrap();
        (dir, sb)
    }

    #[test]
    fn paths_map_both_ways() {
        let (_d, sb) = sb(Backend::None);
        let host = sb.to_host("/kraft/build/x/y.o".into()).unwrap();
        assert!(host.ends_with("build/x/y.o"));
        assert_eq!(sb.to_inside(&host).unwrap(), "/kraft/build/x/y.o");
        assert_eq!(sb.to_host("/kraft/other".into()), None);
        let text = "cc -I/kraft/unikraft/include /kraft/buildx /kraft/build";
        let there = sb.rewrite_to_host(text);
        assert!(there.contains("/kraft/buildx"));
        assert!(!there.contains("/kraft/unikraft"));
        assert_eq!(sb.rewrite_to_inside(&there), text);
    }

    #[test]
    fn environment_is_fixed_and_writes_land_in_build() {
        for backend in [Backend::Bwrap, Backend::None] {
            if backend == Backend::Bwrap && bwrap_usable().is_err() {
                // A missing tool skips a test only off CI.
                assert!(!crate::config::Config::get().ci, "bwrap is required under CI: {:?}", bwrap_usable());
                continue;
            }
            let (_d, sb) = sb(backend);
            let out = sb
                .run("env | sort; cat /kraft/unikraft/a.txt > out.txt; pwd", "/kraft/build".into())
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8(out.stdout).unwrap();
            assert!(stdout.contains("LC_ALL=C\n") && stdout.contains("SOURCE_DATE_EPOCH=0\n"), "{stdout}");
            assert!(!stdout.contains("CARGO"), "{stdout}");
            let host = sb.to_host("/kraft/build/out.txt".into()).unwrap();
            assert_eq!(std::fs::read_to_string(host).unwrap(), "hello\n");
            if backend == Backend::Bwrap {
                assert!(stdout.ends_with("/kraft/build\n"));
                let ro = sb.run("touch /kraft/unikraft/x", "/kraft/build".into()).unwrap();
                assert!(!ro.status.success(), "core must be read-only");
            }
        }
    }

    /// `cargo test -p xtask --lib spawn_overhead -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn spawn_overhead() {
        let n = 100;
        for backend in [Backend::None, Backend::Bwrap] {
            let (_d, sb) = sb(backend);
            let t = std::time::Instant::now();
            for _ in 0..n {
                assert!(sb.run("true", "/kraft/build".into()).unwrap().status.success());
            }
            eprintln!("{}: {:?} per spawn", sb.backend(), t.elapsed() / n);
        }
    }
}
