//! The content-addressed store.
//!
//! ```text
//! <root>/
//!   trees/<blake3-hex>/              source trees, read-only (files 0444/0555, dirs 0555)
//!   archives/<sha256-hex>/<name>     origin archives, verified against their sha256
//!   blobs/<aa>/<blake3-hex>          build outputs (single files), read-only
//!   tmp/                             staging, same file system as the above
//!   locks/                           lock files (never deleted)
//!   verified-blobs                   blobs verified once: inode, size, ctime of each
//!   probes/<blake3>.json             toolchain probe outputs (`exec::fingerprint::toolchain`)
//! ```
//!
//! The root is `$KRAFT_STORE`, else `$XDG_CACHE_HOME/kraft-xtask`, else
//! `$HOME/.cache/kraft-xtask` ([`Store::default_root`]).
//!
//! Invariants:
//!
//! * Whatever is visible under `trees/`, `archives/` or `blobs/` is complete:
//!   it is built under `tmp/` and appears by one `rename(2)` on the same file
//!   system. A name's existence therefore means its content is there.
//! * Names are hashes of contents, checked at insertion. Later corruption
//!   (disk, a user editing a tree) is found by [`Store::verify`].
//! * Concurrent processes are safe: inserts of the same name serialize on a
//!   lock (`flock` on `locks/…`), and a rename never replaces a complete
//!   entry with anything but the same content.
//!
//! One concept per file: [`lock`] (cross-process locks), [`tree`] (source
//! trees and their hash), [`origin`] (origin archives by sha256), [`blob`]
//! (build outputs, zstd-compressed, and restoring them), [`verified`]
//! (blobs verified once and unchanged since), [`verify`]
//! (rehashing everything), [`entry`] (listing and removing entries, shared
//! checks); [`nar`] and [`archive`] serialize and unpack.

pub mod archive;
pub mod blob;
pub mod entry;
pub mod lock;
pub mod nar;
pub mod origin;
pub mod tree;
pub mod verified;
pub mod verify;

use std::fs;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;

pub use blob::{compress, decompress, BlobEncoding, BlobFile};
pub use lock::StoreLock;
pub use tree::tree_hash;
pub use verify::{EntryKind, VerifyProblem, VerifyReport};

/// A content-addressed store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: Utf8PathBuf,
    /// Blobs verified before and unchanged since (see [`verified`]).
    verified: std::sync::Arc<verified::Ledger>,
}

impl Store {
    /// Open (creating if needed) the store at `root`. A relative root is made
    /// absolute against the current directory.
    pub fn open(root: impl Into<Utf8PathBuf>) -> anyhow::Result<Store> {
        let mut root: Utf8PathBuf = root.into();
        if root.is_relative() {
            let cwd = std::env::current_dir().context("reading the current directory")?;
            let cwd = Utf8PathBuf::from_path_buf(cwd)
                .map_err(|p| anyhow::anyhow!("current directory {} is not UTF-8", p.display()))?;
            root = cwd.join(root);
        }
        let verified = std::sync::Arc::new(verified::Ledger::new(&root));
        let store = Store { root, verified };
        for dir in ["trees", "archives", "blobs", "tmp", "locks"] {
            let path = store.root.join(dir);
            fs::create_dir_all(&path).map_err(|e| {
                anyhow::Error::new(
                    Diagnostic::new(format!("cannot create store directory {path}: {e}"))
                        .help("set KRAFT_STORE to a writable directory"),
                )
            })?;
        }
        Ok(store)
    }

    /// `$KRAFT_STORE`, else `$XDG_CACHE_HOME/kraft-xtask`, else
    /// `$HOME/.cache/kraft-xtask`. Empty variables count as unset, and a
    /// relative `XDG_CACHE_HOME` is ignored (as the XDG spec says).
    pub fn default_root() -> anyhow::Result<Utf8PathBuf> {
        let config = crate::config::Config::get();
        if let Some(root) = config.store.clone() {
            return Ok(root);
        }
        if let Some(cache) = config.xdg_cache_home.clone().filter(|p| p.is_absolute()) {
            return Ok(cache.join("kraft-xtask"));
        }
        if let Some(home) = config.home.clone() {
            return Ok(home.join(".cache").join("kraft-xtask"));
        }
        Err(Diagnostic::new("cannot find a place for the store: none of KRAFT_STORE, XDG_CACHE_HOME, HOME is set")
            .help("set KRAFT_STORE to a directory, e.g. `export KRAFT_STORE=$PWD/.kraft-store`")
            .into())
    }

    pub fn root(&self) -> &Utf8Path {
        &self.root
    }

    fn tmp_dir(&self) -> Utf8PathBuf {
        self.root.join("tmp")
    }

}
