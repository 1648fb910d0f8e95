//! `explain`: why each action of the last build ran, from the engine's own
//! record of the reason it used.

use kraft::exec::explain::{self, Filter};
use crate::flags::ExplainArgs;
use kraft::session::Session;

pub fn run(session: &Session, args: &ExplainArgs) -> anyhow::Result<()> {
    let app = session.workspace.app(&args.app, session.kraftfile.as_deref())?;
    let kraftfile = kraft::source::kraftfile::load(&app.kraftfile)?;
    let filter = match &args.what {
        Some(what) => Filter::Any(what.clone()),
        None => Filter::All,
    };
    for target in kraftfile.targets.iter().filter(|t| args.target.as_deref().is_none_or(|f| t.id() == f)) {
        let state = session.workspace.output_dir(&app.name, &target.dir_name()).join("state.json");
        if !state.is_file() {
            println!("{}: never built (run `cargo xtask build {}`)", target.id(), args.app);
            continue;
        }
        println!("{}:", target.id());
        print!("{}", explain::render(&state, &filter));
    }
    Ok(())
}
