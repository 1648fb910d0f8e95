//! The runner's side: inside the sandbox, read one request at a time, run
//! it, clean up after it, answer.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Output, Stdio};

use anyhow::{Context, Result};

use super::{read_frame, write_frame, Request};

/// The runner: inside the sandbox, one action per request, then clean up.
pub(super) fn serve() -> Result<()> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    loop {
        let request = match read_frame(&mut input) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e).context("reading a request"),
        };
        let request: Request = serde_json::from_slice(&request).context("decoding a request")?;
        let out = run_one(&request).unwrap_or_else(|e| Output {
            // As a fresh bwrap would: it cannot exec, or the directory is missing.
            status: ExitStatus::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: format!("kraft sandbox runner: cannot run the command in {}: {e}\n", request.cwd).into_bytes(),
        });
        empty_dir("/tmp");
        empty_dir("/dev/shm");
        output.write_all(&out.status.into_raw().to_le_bytes())?;
        write_frame(&mut output, &out.stdout)?;
        write_frame(&mut output, &out.stderr)?;
        output.flush()?;
    }
}

/// One action: `bash -c script`. When bash exits, whatever it left running
/// is killed, as bwrap does when its command exits, so a background
/// process holding the output pipes cannot hold the action open.
fn run_one(request: &Request) -> std::io::Result<Output> {
    let piped = |mut cmd: Command| {
        cmd.current_dir(&request.cwd).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
        cmd
    };
    let bash = || {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(&request.script);
        piped(cmd)
    };
    // One plain program: run it as bash would, without bash (see `simple`).
    let direct = super::simple::words(&request.script).and_then(|words| {
        let path = std::env::var("PATH").unwrap_or_default();
        let program = super::simple::resolve(&words[0], &path)?;
        let mut cmd = Command::new(&program);
        cmd.arg0(&words[0]).args(&words[1..]).envs(super::simple::bash_env(request.cwd.as_str(), &program));
        Some(piped(cmd))
    });
    let mut child = match direct.map(|mut cmd| cmd.spawn()) {
        Some(Ok(child)) => child,
        // Not a plain command, or one bash would run differently (a
        // script without `#!`): bash decides.
        _ => bash().spawn()?,
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = child.wait();
    kill_strays();
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    // A command killed by a signal: bwrap reports it as exit 128 + signal.
    let status = status?;
    let status = match status.signal() {
        Some(signal) => ExitStatus::from_raw((128 + signal) << 8),
        None => status,
    };
    Ok(Output { status, stdout, stderr })
}

/// Reads a pipe to its end on a thread of its own (stdout and stderr at
/// once, so neither fills up while the other is read).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Kills every process in the sandbox's PID namespace but bwrap's reaper
/// (PID 1) and the runner, and waits until they are gone.
fn kill_strays() {
    let me = std::process::id();
    for _round in 0..100 {
        let mut left = 0;
        for pid in proc_pids() {
            if pid != 1 && pid != me {
                // SAFETY: kill(2) with a PID from this namespace's /proc.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                left += 1;
            }
        }
        if left == 0 {
            return;
        }
        // Killed processes linger until the reaper collects them.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn proc_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        // Gone between the listing and the read: as good as reaped.
        .unwrap_or(true)
}

fn empty_dir(dir: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let _ = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
    }
}
