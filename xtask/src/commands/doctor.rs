//! `doctor [app] [-t plat/arch]`: are the host programs a build and a run of
//! the app's targets need installed? Without an app: those of qemu/x86_64
//! and qemu/arm64 (native and cross compilers, both QEMUs).

use kraft::doctor::{self, Purpose};
use kraft::plan::Target;
use kraft::session::Session;

use crate::flags::DoctorArgs;

pub fn run(session: &Session, args: &DoctorArgs) -> anyhow::Result<()> {
    let targets: Vec<Target> = match &args.app {
        Some(app) => {
            let app = session.workspace.app(app, session.kraftfile.as_deref())?;
            let kraftfile = kraft::source::kraftfile::load(&app.kraftfile)?;
            kraftfile
                .targets
                .iter()
                .filter(|t| args.target.as_deref().is_none_or(|f| t.id() == f))
                .map(|t| Target::new(&t.platform, &t.architecture))
                .collect()
        }
        None => vec![Target::new("qemu", "x86_64"), Target::new("qemu", "arm64")],
    };
    let ids: Vec<String> = targets.iter().map(|t| format!("{}/{}", t.plat, t.arch)).collect();
    let found = doctor::check(&doctor::required(&targets, Purpose::BuildAndRun));
    eprintln!("Host programs for building and running {}:", ids.join(", "));
    eprint!("{}", doctor::report(&found));
    let missing: Vec<_> = found.iter().filter(|f| f.path.is_none()).map(|f| f.program).collect();
    if missing.is_empty() {
        eprintln!("All {} present.", found.len());
        return Ok(());
    }
    doctor::require(&format!("building and running {}", ids.join(", ")), &missing)
}
