//! `build <app> [-t plat/arch] [--check-repro]`.

use kraft::session::Session;

use crate::flags::BuildArgs;

pub fn run(session: &Session, args: &BuildArgs) -> anyhow::Result<()> {
    if args.check_repro {
        return kraft::repro::check(session, &args.app, args.target.as_deref());
    }
    kraft::pipeline::target::build_app(session, &args.app, args.target.as_deref()).map(drop)
}
