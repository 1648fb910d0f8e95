//! One long-lived sandbox per worker thread, running many actions.
//!
//! Starting bubblewrap costs 4–12 ms of namespace and mount setup per
//! command; musl's ~1,200 compiles take ~30 ms each, so a fresh sandbox per
//! action is a third of the work. Instead, each worker thread starts one
//! bwrap with the target's layout (the sandbox's own command line) running a small server, the
//! *runner* (this crate's own binary, bound read-only at [`RUNNER_INSIDE`]),
//! and hands it one action at a time over a pipe.
//!
//! What an action sees is the same as in a sandbox of its own:
//!
//! | per-action sandbox                        | resident sandbox                                      |
//! |-------------------------------------------|-------------------------------------------------------|
//! | same mounts, env, namespaces, read-only root | the same: one bwrap command line builds both        |
//! | a fresh, empty `/tmp` (and `/dev/shm`)    | emptied after every action, before the next starts    |
//! | no process outlives the action            | every process but the runner is killed after each action (the sandbox has its own PID namespace, so `/proc` lists exactly them) |
//! | stdin empty; stdout and stderr captured   | the same, by the runner                               |
//!
//! so the backend, and with it every action key, is the same either way;
//! `tests/sandbox.rs` builds with both and compares the image bytes.
//!
//! The runner is used only when the process registered its own executable
//! ([`serve_or_register`], called first thing by the xtask CLI) and
//! `KRAFT_SANDBOX_RESIDENT` is not `0`. If it cannot start, one warning is
//! printed and actions get a sandbox each, as before.
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | the host side: one runner per worker thread and sandbox, the protocol |
//! | `runner.rs` | the runner inside: run, clean up, answer |
//! | `simple.rs` | commands that need no shell, and what bash would give them |
//! | `shell.rs` | the same binary as a stand-in for bash in planning sandboxes |
//!
//! Protocol (host → runner): a little-endian `u32` length, then a JSON
//! [`Request`]. Runner → host: the raw wait status (`i32`), then stdout and
//! stderr, each as a `u32` length and its bytes. End of input ends the runner.

mod runner;
mod shell;
mod simple;

pub use shell::REAL_BASH_INSIDE;

use std::cell::RefCell;
use std::io::{BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};


/// The argument that makes this crate's binary serve as a runner.
pub const RUNNER_ARG: &str = "__kraft-sandbox-runner";
/// Where the runner binary appears inside the sandbox (outside `/kraft`,
/// so nothing that lists the build's tree sees it).
pub const RUNNER_INSIDE: &str = "/.kraft-sandbox-runner";

static RUNNER_EXE: OnceLock<Utf8PathBuf> = OnceLock::new();

/// Called first by a binary that can serve as the runner: with
/// [`RUNNER_ARG`] it serves and exits; otherwise it registers itself as the
/// runner for this process's sandboxes.
pub fn serve_or_register() {
    shell::serve_if_started_as_bash();
    if std::env::args_os().nth(1).is_some_and(|a| a == RUNNER_ARG) {
        std::process::exit(match runner::serve() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("kraft sandbox runner: {e:#}");
                1
            }
        });
    }
    if let Ok(exe) = std::env::current_exe() {
        // A binary replaced while running (`/proc/self/exe` then ends in
        // " (deleted)") cannot be bound: actions get a sandbox each.
        if let Ok(exe) = Utf8PathBuf::from_path_buf(exe) {
            if exe.is_file() {
                register(exe);
            }
        }
    }
}

/// Use `exe` (a binary that calls [`serve_or_register`]) as the runner.
pub fn register(exe: Utf8PathBuf) {
    let _ = RUNNER_EXE.set(exe);
}

/// The registered binary, as the bash stand-in of a planning sandbox
/// (`shell`), unless `KRAFT_SANDBOX_RESIDENT=0` keeps this binary out of
/// sandboxes.
pub(crate) fn shell_stand_in_exe() -> Option<&'static Utf8Path> {
    runner_exe()
}

fn runner_exe() -> Option<&'static Utf8Path> {
    let per_action = crate::config::Config::get().sandbox_per_action;
    RUNNER_EXE.get().map(|p| p.as_path()).filter(|_| !per_action)
}

#[derive(Serialize, Deserialize)]
pub(super) struct Request {
    pub script: String,
    pub cwd: Utf8PathBuf,
}

/// A running runner in one sandbox.
struct Resident {
    sandbox: u64,
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

thread_local! {
    static RESIDENT: RefCell<Option<Resident>> = const { RefCell::new(None) };
}

/// Runs `script` in this thread's resident sandbox for the sandbox `id`,
/// starting it if needed with `bwrap`: the sandbox's bwrap command, with
/// the runner binary bound at the given inside path, up to the program.
/// `None`: no runner is registered, or it could not start (warned once);
/// the caller spawns a sandbox of its own.
pub(crate) fn run(
    id: u64,
    bwrap: &dyn Fn(&Utf8Path, &str) -> Result<Command>,
    script: &str,
    cwd: &Utf8Path,
) -> Option<Result<Output>> {
    let exe = runner_exe()?;
    RESIDENT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().is_none_or(|r| r.sandbox != id) {
            // Another target's sandbox (or none): replace it.
            *slot = None;
            match Resident::start(id, bwrap, exe) {
                Ok(r) => *slot = Some(r),
                Err(e) => {
                    warn_once(&e);
                    return None;
                }
            }
        }
        let resident = slot.as_mut().expect("started above");
        let result = resident.run(script, cwd);
        if result.is_err() {
            // A runner that broke the protocol is not reused.
            *slot = None;
        }
        Some(result)
    })
}

fn warn_once(e: &anyhow::Error) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| eprintln!("warning: cannot start a long-lived sandbox ({e:#}); each action starts its own"));
}

impl Resident {
    fn start(id: u64, bwrap: &dyn Fn(&Utf8Path, &str) -> Result<Command>, exe: &Utf8Path) -> Result<Resident> {
        let mut cmd = bwrap(exe, RUNNER_INSIDE)?;
        cmd.args([RUNNER_INSIDE, RUNNER_ARG]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("spawning bwrap")?;
        let to = child.stdin.take().expect("piped");
        let from = BufReader::new(child.stdout.take().expect("piped"));
        let mut resident = Resident { sandbox: id, child, to, from };
        // One round trip proves the runner is up inside the sandbox.
        let hello = resident.run("true", Utf8Path::new("/")).context("starting the runner")?;
        if !hello.status.success() {
            bail!("the runner's first command failed: {}", String::from_utf8_lossy(&hello.stderr).trim());
        }
        Ok(resident)
    }

    fn run(&mut self, script: &str, cwd: &Utf8Path) -> Result<Output> {
        let request = serde_json::to_vec(&Request { script: script.to_string(), cwd: cwd.to_owned() })?;
        let sent = write_frame(&mut self.to, &request).and_then(|()| self.to.flush());
        let answer = sent.and_then(|()| read_answer(&mut self.from));
        answer.map_err(|e| {
            let status = self.child.try_wait().ok().flatten();
            anyhow::anyhow!("the sandbox runner stopped answering ({e}; bwrap {status:?})")
        })
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        // bwrap's sandbox dies with it (`--die-with-parent`).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(super) fn write_frame(to: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("frame over 4 GiB"))?;
    to.write_all(&len.to_le_bytes())?;
    to.write_all(bytes)
}

pub(super) fn read_frame(from: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    from.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    from.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_answer(from: &mut impl Read) -> std::io::Result<Output> {
    let mut status = [0u8; 4];
    from.read_exact(&mut status)?;
    let stdout = read_frame(from)?;
    let stderr = read_frame(from)?;
    Ok(Output { status: ExitStatus::from_raw(i32::from_le_bytes(status)), stdout, stderr })
}
