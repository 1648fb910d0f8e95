//! One module per command; `main.rs` only dispatches.

pub mod bench;
pub mod bench_unikraft;
pub mod build;
pub mod cache;
pub mod explain;
pub mod graph;
pub mod lock;
pub mod repro;
pub mod run;
pub mod sysroot;
