//! `cargo xtask bench [--runs N] [--filter S]`: our builds against make, on
//! the same trees, alternately in one run (see [`measure`]). Our Unikraft
//! builds without a team cache run as `xtask build` processes of their own
//! ([`process`]), as make's side runs make; the others, and the musl
//! scenarios, run inside the bench's process.
//! Results: a table on stdout and `target/kraft/bench/bench-<unix time>.json`
//! (and `latest.json`).
//!
//! Upstream musl 1.2.3 (recipe `musl-upstream`), each against
//! `./configure && make -j<jobs> lib/libc.a` on a fresh copy of the same
//! tree (our side also builds the crt objects and empty archives and lays
//! out the sysroot: 19 more actions than make's `lib/libc.a`):
//!
//! | scenario          | ours                                         | baseline                          |
//! |-------------------|----------------------------------------------|-----------------------------------|
//! | `musl/cold`       | empty store, fresh tree, fresh work dir      | fresh tree: configure && make     |
//! | `musl/no-op`      | second build                                 | `make` in the built tree          |
//! | `musl/edit-one`   | a new function appended to src/string/strlen.c | same edit, `make`               |
//! | `musl/warm-fresh` | fresh tree, fresh work dir, warm store       | fresh tree: configure && make     |
//!
//! Real Unikraft helloworld with lib-musl (when `KRAFT_MIRRORS` resolves
//! github.com/unikraft; otherwise skipped with one line), each against
//! Unikraft's `make -j<jobs>` run directly on a checkout in a temp dir with
//! the same `.config`: `uk/cold`, `uk/no-op`, `uk/printk-flip`,
//! `uk/edit-main`, `uk/warm-fresh`, `uk/second-app`, `uk/config-revert`
//! (flip the printk level and build, flip back: the timed build is all in
//! the store), `uk/cold-j1` and `musl/cold-j1` (one job each side: the cost
//! per action without scheduling), `uk/remote-warm` (empty store and output
//! dir, a team cache on nginx filled by one build; bytes on the wire) and
//! `uk/remote-warm-reapi` (the same against BuildGrid's REAPI action cache,
//! see [`buildgrid`]).
//!
//! Every run is accounted for (`measure::RunUse`): the tool's own CPU
//! against its children's, its peak RSS, and for our side the phases the
//! build reports (each make run of the plan, an estimate of sandbox starts,
//! busy time compiling, linking, restoring, writing the store, ...), the
//! store's size, and for printk-flip, second-app and config-revert the
//! floor: the compile time of the objects that read the config header.
//! Last, each goal of issue 12 ([`goals`]): met, or the phase that holds it
//! and its floor.


pub mod account;
pub mod buildgrid;
pub mod goals;
pub mod measure;
pub mod musl;
pub mod nginx;
pub mod process;
pub mod trash;
pub mod unikraft;

use anyhow::Result;
use camino::Utf8PathBuf;
use kraft::session::Session;

use measure::{format_table, ScenarioResult};
pub use measure::BenchOptions;

/// Whether `KRAFT_MIRRORS` maps Unikraft's repositories somewhere.
pub fn unikraft_mirrored(session: &Session) -> bool {
    kraft::config::Config::get().mirrors.as_ref().is_some_and(|m| !m.is_empty())
        && !session.mirrors.rewrite("https://github.com/unikraft/unikraft.git").is_remote()
}

/// `cargo xtask bench`.
pub fn run(session: &Session, opts: &BenchOptions) -> Result<Vec<ScenarioResult>> {
    let out_dir = session.workspace.target_dir.join("kraft").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let log = |m: &str| eprintln!("{m}");
    let mut results = Vec::new();
    let work = out_dir.join("work");
    trash::init(&out_dir.join("trash"))?;
    let spawn_cost = account::sandbox_start_seconds(20)?;
    measure::set_spawn_cost(spawn_cost);
    log(&format!("one sandbox start costs {:.1} ms (median of 20, beyond a plain bash -c)", spawn_cost * 1000.0));
    musl::musl_scenarios(session, opts, &work.join("musl"), &mut results, &log)?;
    let mut failure = None;
    if unikraft_mirrored(session) {
        failure = unikraft::scenarios(session, opts, &work.join("unikraft"), &mut results, &log).err();
    } else {
        println!("skipping the Unikraft scenarios: set KRAFT_MIRRORS so that https://github.com/unikraft/ resolves to a local mirror");
    }
    let _ = musl::remove(&work);
    if let Err(e) = trash::empty() {
        log(&format!("emptying the bench's trash: {e:#}"));
    }
    print!("{}", format_table(&results));
    print!("{}", measure::format_phases(&results));
    let checked = goals::check(&results, opts.jobs);
    print!("{}", goals::format(&checked));
    let json = serde_json::json!({
        "goals": checked,
        "runs": opts.runs,
        "jobs": opts.jobs,
        "sandbox_start_s": spawn_cost,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "scenarios": results,
    });
    let text = serde_json::to_string_pretty(&json)?;
    let stamp = json["unix_time"].as_u64().unwrap_or(0);
    let file: Utf8PathBuf = out_dir.join(format!("bench-{stamp}.json"));
    std::fs::write(&file, &text)?;
    std::fs::write(out_dir.join("latest.json"), &text)?;
    println!("results: {file}");
    match failure {
        Some(e) => Err(e),
        None => Ok(results),
    }
}
