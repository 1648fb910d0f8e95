//! `cargo xtask` as a library: [`main`] parses the flags, opens a session
//! and dispatches to a command. This workspace's `xtask` binary is that one
//! call; another repository's xtask crate is too (see README.md, "Use from
//! another repository"), so its apps and recipes stay in its own tree.

pub mod commands;
pub mod flags;

use std::process::ExitCode;

use camino::Utf8PathBuf;
use clap::Parser;
use kraft::output::Output;
use kraft::session::Session;
use kraft::source::workspace::Workspace;

use flags::{Command, Flags};

/// The whole CLI: flags from the process's arguments, the workspace found
/// from the current directory. Returns the process's exit code.
pub fn main() -> ExitCode {
    // Inside a sandbox this binary may be the runner of many actions.
    kraft::exec::resident::serve_or_register();
    let flags = Flags::parse();
    let output = Output::new(flags.global.message_format);
    let result = run(flags);
    // What a plan set aside is removed once the work is done.
    kraft::util::fs::remove_deferred();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output.error(&err);
            ExitCode::FAILURE
        }
    }
}

fn run(flags: Flags) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().map_err(|e| anyhow::anyhow!("reading the current directory: {e}"))?;
    let cwd = Utf8PathBuf::from_path_buf(cwd).map_err(|p| anyhow::anyhow!("non-UTF-8 directory {}", p.display()))?;
    // A worker needs no workspace: it runs what the engine sends.
    if let Command::Worker(args) = &flags.command {
        return commands::worker::run(&flags.global, args);
    }
    let workspace = Workspace::discover(&cwd)?;
    let session = Session::new(workspace, &flags.global.options())?;
    match &flags.command {
        Command::Lock(args) => commands::lock::lock(&session, args),
        Command::Update(args) => commands::lock::update(&session, args),
        Command::Fetch(args) => commands::lock::fetch(&session, args),
        Command::Cache(args) => commands::cache::run(&session, &args.command),
        Command::Build(args) => commands::build::run(&session, args),
        Command::Run(args) => commands::run::run(&session, args),
        Command::Graph(args) => commands::graph::run(&session, args),
        Command::Explain(args) => commands::explain::run(&session, args),
        Command::Sysroot(args) => commands::sysroot::run(&session, &args.component, args.source.as_deref(), args.out.as_deref()),
        Command::Doctor(args) => commands::doctor::run(&session, args),
        Command::Worker(args) => commands::worker::run(&flags.global, args),
        Command::CheckExact(args) => commands::check_exact::run(&session, args),
        Command::Bench(args) => commands::bench::run(&session, &commands::bench::BenchOptions::from_args(args, session.jobs)).map(drop),
    }
}
