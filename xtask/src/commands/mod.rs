//! One module per command; `main.rs` only dispatches.

pub mod bench;
pub mod build;
pub mod cache;
pub mod check_exact;
pub mod doctor;
pub mod explain;
pub mod graph;
pub mod lock;
pub mod run;
pub mod sysroot;
pub mod worker;
