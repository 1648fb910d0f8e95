//! Where sources come from: the Kraftfile, the workspace, recipes, mirrors,
//! git, resolution to commits, the lock, and fetching into the store
//! ([`fetch`] for sources, [`origins`] for the origin archives libraries
//! download, learned from make and pinned on first use).

pub mod app;
pub mod fetch;
pub mod git;
pub mod kraftfile;
pub mod lock;
pub mod mirror;
pub mod origins;
pub mod recipe;
pub mod resolve;
pub mod workspace;
