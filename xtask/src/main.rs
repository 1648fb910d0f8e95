//! `cargo xtask`: parse flags, build a session, dispatch to a command.

use std::process::ExitCode;

use camino::Utf8PathBuf;
use clap::Parser;
use kraft_xtask::flags::{Command, Flags};
use kraft_xtask::output::Output;
use kraft_xtask::resolve::Update;
use kraft_xtask::session::Session;
use kraft_xtask::workspace::Workspace;
use kraft_xtask::commands;

fn main() -> ExitCode {
    let flags = Flags::parse();
    let output = Output::new(flags.global.message_format);
    match run(flags) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output.error(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let cwd = Utf8PathBuf::from_path_buf(std::env::current_dir()?).map_err(|p| anyhow::anyhow!("non-UTF-8 directory {}", p.display()))?;
    let workspace = Workspace::discover(&cwd)?;
    let session = Session::new(workspace, &flags.global)?;
    match &flags.command {
        Command::Lock(args) => commands::lock::lock_app(&session, &args.app, Update::Nothing).map(drop),
        Command::Update(args) => {
            let update = if args.components.is_empty() { Update::All } else { Update::Only(args.components.clone()) };
            commands::lock::lock_app(&session, &args.app, update).map(drop)
        }
        Command::Fetch(args) => commands::lock::fetch_app(&session, &args.app).map(drop),
        Command::Cache(args) => commands::cache::run(&session, &args.command),
        Command::Build(args) if args.check_repro => commands::repro::check(&session, &args.app, args.target.as_deref()),
        Command::Build(args) => commands::build::build_app(&session, &args.app, args.target.as_deref()).map(drop),
        Command::Run(args) => commands::run::run(&session, args),
        Command::Graph(args) => commands::graph::run(&session, args),
        Command::Explain(args) => commands::explain::run(&session, args),
        Command::Sysroot(args) => commands::sysroot::run(&session, &args.component, args.source.as_deref(), args.out.as_deref()),
        Command::Bench(args) => {
            let opts = commands::bench::BenchOptions { runs: args.runs.max(1), filter: args.filter.clone(), jobs: session.jobs };
            commands::bench::run(&session, &opts).map(drop)
        }
    }
}
