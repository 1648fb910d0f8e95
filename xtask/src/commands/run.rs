//! `run`: build, then boot the image. QEMU targets boot under
//! `qemu-system-<arch>` with the console on stdio; `linuxu` targets are host
//! programs and run directly.
//!
//! Acceleration (`--accel`): `auto` uses KVM when `/dev/kvm` opens, and falls
//! back to TCG, with one warning, when KVM then fails to run the guest: in
//! nested virtualisation `/dev/kvm` often opens but QEMU stops with "KVM
//! internal error" or cannot set an MSR, and without the fallback the guest
//! would hang there or never start.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::flags::{Accel, RunArgs};
use kraft::diag::Diagnostic;
use kraft::session::Session;

/// What QEMU prints when KVM cannot run this guest on this host.
const KVM_FAILURES: [&str; 3] = ["KVM internal error", "failed to set MSR", "kvm_init_vcpu failed"];

pub fn run(session: &Session, args: &RunArgs) -> anyhow::Result<()> {
    let (_, builds) = kraft::pipeline::target::build_app(session, &args.app, args.target.as_deref())?;
    let build = builds.first().context("no target was built")?;
    let image = build.image.clone().ok_or_else(|| {
        Diagnostic::new(format!("{}: the build produced no image", build.target)).help("see `cargo xtask graph` for the final link")
    })?;
    let (plat, arch) = build.target.split_once('/').unwrap_or(("qemu", "x86_64"));
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    if plat == "linuxu" {
        return finish(&image.to_string(), launch(Command::new(&image), timeout)?, timeout);
    }
    let qemu = format!("qemu-system-{arch}");
    let qemu_with = |accel: &str| {
        let mut cmd = Command::new(&qemu);
        cmd.args(["-kernel", image.as_str(), "-nographic", "-no-reboot", "-m", &args.memory.to_string()]);
        cmd.args(["-cpu", "max", "-accel", accel]);
        cmd
    };
    let kvm_opens = || std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let kvm = match args.accel {
        Accel::Kvm => true,
        Accel::Tcg => false,
        Accel::Auto => kvm_opens(),
    };
    if kvm {
        session.output.status("Booting", &format!("{image} with {qemu} (kvm)"));
        match launch(qemu_with("kvm"), timeout)? {
            Launched::KvmFailed(line) if args.accel == Accel::Auto => {
                session.output.warning(
                    &Diagnostic::new(format!("KVM cannot run the guest on this host ({line}); booting again with TCG"))
                        .help("pass --accel tcg to skip KVM"),
                );
            }
            Launched::KvmFailed(line) => anyhow::bail!("{qemu} with KVM: {line}"),
            done => return finish(&qemu, done, timeout),
        }
    }
    session.output.status("Booting", &format!("{image} with {qemu} (tcg{})", if kvm_opens() { "" } else { ", no KVM" }));
    finish(&qemu, launch(qemu_with("tcg"), timeout)?, timeout)
}

enum Launched {
    Exited(ExitStatus),
    TimedOut,
    KvmFailed(String),
}

/// Run `command` with stderr passed through line by line, watching it for
/// [`KVM_FAILURES`]; stop it at `timeout`.
fn launch(mut command: Command, timeout: Option<Duration>) -> anyhow::Result<Launched> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program} (is it installed? `cargo xtask doctor` says how)"))?;
    let failed = Arc::new(AtomicBool::new(false));
    let failure = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().context("QEMU's stderr")?;
    let reader = {
        let (failed, failure) = (failed.clone(), failure.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if KVM_FAILURES.iter().any(|f| line.contains(f)) && !failed.swap(true, Ordering::SeqCst) {
                    *failure.lock().expect("failure") = line.trim().to_string();
                }
            }
        })
    };
    let start = Instant::now();
    let outcome = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {program}"))? {
            break Launched::Exited(status);
        }
        if failed.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            break Launched::KvmFailed(failure.lock().expect("failure").clone());
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            break Launched::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    // A failure line printed just before QEMU exited still counts.
    if let (Launched::Exited(_), true) = (&outcome, failed.load(Ordering::SeqCst)) {
        return Ok(Launched::KvmFailed(failure.lock().expect("failure").clone()));
    }
    Ok(outcome)
}

fn finish(program: &str, launched: Launched, timeout: Option<Duration>) -> anyhow::Result<()> {
    match launched {
        Launched::Exited(status) if status.success() => Ok(()),
        Launched::Exited(status) => anyhow::bail!("{program} exited with {status}"),
        // Stopping the guest at --timeout is the expected end.
        Launched::TimedOut => {
            eprintln!("stopped {program} after {}s (--timeout)", timeout.map_or(0, |t| t.as_secs()));
            Ok(())
        }
        Launched::KvmFailed(line) => anyhow::bail!("{program} with KVM: {line}"),
    }
}
