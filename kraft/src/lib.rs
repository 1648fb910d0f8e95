//! kraft: a declarative, content-addressed build system for Unikraft
//! unikernels. `cargo xtask` (the `xtask` crate beside this one) is a thin CLI
//! over it; another repository's xtask can depend on it the same way.
//!
//! The folders follow the data, in the order it flows:
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | every environment variable the tool reads, read once at start |
//! | [`diag`] | located errors and warnings (`file:line:col`, what, how to fix) |
//! | [`session`] | what every command needs: workspace, store, mirrors, network mode, output |
//! | [`output`] | plain lines, a progress bar on a terminal, or typed JSON messages |
//! | [`output::message`] | the typed JSON messages (`--message-format json`) |
//! | [`output::progress`] | the progress bar, only on a terminal |
//! | [`source`] | where sources come from, in order: |
//! | [`source::kraftfile`] | the app description, read as kraftkit reads it |
//! | [`source::workspace`] | the cargo workspace: apps directory, mirrors, target directory |
//! | [`source::recipe`] | `recipes/*.toml`: optional overrides for where a component comes from |
//! | [`source::mirror`] | URL rewriting (`KRAFT_MIRRORS`) and the archive directory |
//! | [`source::git`] | the one place that runs git |
//! | [`source::resolve`] | version → exact commit |
//! | [`source::lock`] | `kraft.lock` |
//! | [`source::fetch`] | bring locked sources into the store, verified |
//! | [`source::app`] | an app, locked and fetched: the input to planning |
//! | [`store`] | the content-addressed store: layout, locks, trees, blobs |
//! | [`store::nar`] | Nix's NAR serialization and its sha256 |
//! | [`store::archive`] | safe unpacking of origin archives |
//! | [`plan`] | Unikraft's make, run to learn what to compile |
//! | [`plan::upstream`] | the same for a plain make project (upstream musl) |
//! | [`plan::graph`] | the action graph a plan produces |
//! | [`exec`] | the scheduler: run the graph in parallel, keyed, cached |
//! | [`exec::sandbox`] | the one place that spawns build commands (bubblewrap) |
//! | [`exec::fingerprint`] | every key and every input in it: the table to read first |
//! | [`exec::state`] | what the last build of a target did |
//! | [`exec::noop`] | the stat-only check that stops a build with nothing to do |
//! | [`exec::explain`] | why each action ran |
//! | [`exec::remote`] | actions as REAPI Actions: remote cache and remote execution |
//! | [`cache`] | action caches, local and shared: |
//! | [`cache::local`] | the local action cache and its garbage collector |
//! | [`cache::http`] | the shared cache over bazel-remote's HTTP protocol |
//! | [`cache::reapi`] | the shared cache as REAPI `ActionResult`s, signed |
//! | [`pipeline`] | lock → fetch → no-op check → plan → execute → record → install |
//! | [`doctor`] | the host programs a build needs, and how to install them |
//! | [`timings`] | where a build's time goes, per phase |
//! | [`repro`] | the bit-reproducibility check |
//! | [`util`] | helpers with one home each: files, hashing, shell quoting |

pub mod cache;
pub mod config;
pub mod diag;
pub mod doctor;
pub mod exec;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod repro;
pub mod session;
pub mod source;
pub mod store;
pub mod timings;
pub mod util;

pub use diag::{Diagnostic, Location};
