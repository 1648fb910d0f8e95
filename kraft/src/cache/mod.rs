//! Action caches: the local one in the store and the shared one a team
//! reads over the network.

pub mod http;
pub mod local;
mod writer;
