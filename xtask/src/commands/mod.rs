//! One module per command; `main.rs` only dispatches.

pub mod cache;
pub mod lock;
