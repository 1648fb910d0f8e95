//! kraft-xtask: a declarative, content-addressed build system for Unikraft
//! unikernels, usable as a Cargo xtask.
//!
//! The CLI (`src/main.rs`, `src/flags.rs`) is a thin shell over this library,
//! so another repository's own xtask can depend on it and expose the same
//! commands. The modules follow the data:
//!
//! | module      | concept                                                        |
//! |-------------|----------------------------------------------------------------|
//! | `diag`      | located errors and warnings                                    |
//! | `kraftfile` | the app description, as kraftkit reads it                      |
//! | `workspace` | the cargo workspace: apps directory, mirrors, target directory |
//! | `recipe`    | `recipes/*.toml`: where a component comes from, how it builds  |
//! | `mirror`    | URL rewriting (`KRAFT_MIRRORS`) and the archive directory      |
//! | `git`       | the one place that runs git                                    |
//! | `resolve`   | version → exact commit                                         |
//! | `nar`       | Nix's NAR serialization and its sha256                         |
//! | `archive`   | safe unpacking of origin archives                              |
//! | `store`     | the content-addressed store                                    |
//! | `lock`      | `kraft.lock`                                                   |
//! | `fetch`     | bring locked sources into the store, verified                  |

pub mod archive;
pub mod bench;
pub mod cache;
pub mod diag;
pub mod exec;
pub mod explain;
pub mod fetch;
pub mod fingerprint;
pub mod git;
pub mod graph;
pub mod kraftfile;
pub mod lock;
pub mod mirror;
pub mod nar;
pub mod noop;
pub mod plan;
pub mod plan_make;
pub mod recipe;
pub mod remote;
pub mod resolve;
pub mod sandbox;
pub mod state;
pub mod store;
pub mod workspace;

pub use diag::{Diagnostic, Location};
pub mod commands;
pub mod flags;
pub mod output;
pub mod session;
