//! Action caches: the local one in the store ([`local`]) and the shared one
//! a team reads over the network ([`http`], or any REAPI server: [`reapi`]), whose entries CI signs and
//! clients verify ([`signing`]). [`gc`] collects garbage in the store;
//! `writer` writes entries in the background so compiles never wait on them.

pub mod gc;
pub mod http;
pub mod local;
pub mod reapi;
pub mod signing;
mod writer;
