//! `run`: build, then boot the image. QEMU targets boot under
//! `qemu-system-<arch>` (KVM when `/dev/kvm` is usable, TCG otherwise) with
//! the console on stdio; `linuxu` targets are host programs and run directly.

use std::process::Command;

use anyhow::Context;

use kraft::diag::Diagnostic;
use crate::flags::RunArgs;
use kraft::session::Session;

pub fn run(session: &Session, args: &RunArgs) -> anyhow::Result<()> {
    let (_, builds) = kraft::pipeline::target::build_app(session, &args.app, args.target.as_deref())?;
    let build = builds.first().context("no target was built")?;
    let image = build.image.clone().ok_or_else(|| {
        Diagnostic::new(format!("{}: the build produced no image", build.target)).help("see `cargo xtask graph` for the final link")
    })?;
    let (plat, arch) = build.target.split_once('/').unwrap_or(("qemu", "x86_64"));
    let mut command = if plat == "linuxu" {
        Command::new(&image)
    } else {
        let qemu = format!("qemu-system-{arch}");
        let mut cmd = Command::new(&qemu);
        cmd.args(["-kernel", image.as_str(), "-nographic", "-no-reboot", "-m", &args.memory.to_string()]);
        cmd.args(["-cpu", "max"]);
        let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        cmd.args(["-accel", if kvm { "kvm" } else { "tcg" }]);
        session.output.status("Booting", &format!("{image} with {qemu} ({})", if kvm { "kvm" } else { "tcg, no KVM" }));
        cmd
    };
    if args.timeout > 0 {
        let program = command.get_program().to_owned();
        let rest: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        command = Command::new("timeout");
        command.arg("--foreground").arg(args.timeout.to_string()).arg(program).args(rest);
    }
    let status = command.status().with_context(|| format!("starting {:?} (is qemu-system installed?)", command.get_program()))?;
    // timeout(1) exits 124 when it stopped the guest: that is the expected end.
    if !status.success() && !(args.timeout > 0 && status.code() == Some(124)) {
        anyhow::bail!("{} exited with {status}", command.get_program().to_string_lossy());
    }
    Ok(())
}
