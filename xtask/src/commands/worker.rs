//! `worker --engine URL [-j N] [--cache-dir DIR]`: serve a REAPI engine's
//! Remote Workers API (see `kraft::exec::remote::worker`).

use crate::flags::{Global, WorkerArgs};

pub fn run(global: &Global, args: &WorkerArgs) -> anyhow::Result<()> {
    let jobs = global.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let cache = match (&args.cache_dir, &global.store) {
        (Some(dir), _) => dir.clone(),
        (None, Some(store)) => store.join("worker"),
        (None, None) => kraft::store::Store::default_root()?.join("worker"),
    };
    let say = |message: &str| eprintln!("worker: {message}");
    kraft::exec::remote::worker::run(&args.engine, jobs, &cache, &say)
}
