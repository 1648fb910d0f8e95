//! Blobs verified once, and trusted while they are unchanged on disk.
//!
//! Verifying a blob reads, decompresses and hashes it. A warm build over a
//! fresh output dir leaves ~1,400 outputs in the store and verifies each
//! (`exec::in_store`): 1.3 GB of musl objects with `-g3`, over a second of
//! CPU, on every such build.
//!
//! A blob is never written in place: it is written under a temporary name,
//! made read-only and renamed. So once one has been verified, its identity
//! on disk (inode, size, ctime in nanoseconds) is appended to
//! `<store>/verified-blobs`, and a later check that finds the same
//! identity is a `stat`, not a read (what git's index does for the work
//! tree, for files nobody is meant to touch). Whatever writes to a blob,
//! truncates it, changes its mode or replaces it changes its ctime, which
//! no system call sets back, so it is read and hashed again.
//!
//! Two limits, both as git has them:
//! - *Racy*: ctime has the kernel's clock-tick granularity, so a write in
//!   the same tick as the last one could leave it unchanged. A blob whose
//!   ctime is under [`RACY`] old when verified is not recorded.
//! - Bits that rot under an unchanged inode are not seen here. Every blob
//!   written into a build dir is still hashed as it is written
//!   (`Store::restore_blob`), and `cache verify` reads them all.
//!
//! A line that does not parse (a write cut short) is ignored. `cache gc`
//! removes the file: what it named is verified again when next used.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use camino::{Utf8Path, Utf8PathBuf};

/// The file, in the store's root.
pub const FILE: &str = "verified-blobs";

/// How old a blob's ctime must be for its identity to be recorded.
const RACY: Duration = Duration::from_secs(2);

/// A file's identity on disk: what any change to it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    ino: u64,
    size: u64,
    ctime_s: i64,
    ctime_ns: i64,
}

impl Identity {
    pub(super) fn of(meta: &fs::Metadata) -> Identity {
        Identity { ino: meta.ino(), size: meta.len(), ctime_s: meta.ctime(), ctime_ns: meta.ctime_nsec() }
    }

    fn racy(&self) -> bool {
        let ctime = SystemTime::UNIX_EPOCH + Duration::new(self.ctime_s.max(0) as u64, self.ctime_ns.clamp(0, 999_999_999) as u32);
        SystemTime::now().duration_since(ctime).map_or(true, |age| age < RACY)
    }
}

/// The verified blobs of one store, read on first use.
#[derive(Debug)]
pub(super) struct Ledger {
    path: Utf8PathBuf,
    known: OnceLock<Mutex<HashMap<String, Identity>>>,
}

impl Ledger {
    pub(super) fn new(root: &Utf8Path) -> Ledger {
        Ledger { path: root.join(FILE), known: OnceLock::new() }
    }

    fn known(&self) -> &Mutex<HashMap<String, Identity>> {
        self.known.get_or_init(|| Mutex::new(fs::read_to_string(&self.path).map(|text| parse(&text)).unwrap_or_default()))
    }

    /// Whether blob `hash`, as it is now (`meta`), was verified before.
    pub(super) fn trusts(&self, hash: &str, meta: &fs::Metadata) -> bool {
        let known = self.known().lock().unwrap_or_else(|e| e.into_inner());
        known.get(hash) == Some(&Identity::of(meta))
    }

    /// Blob `hash` (`meta`, stat'ed before it was read) was just read and
    /// matched its name. Best effort: a store that cannot be written to
    /// still builds, it verifies again next time.
    pub(super) fn record(&self, hash: &str, meta: &fs::Metadata) {
        let identity = Identity::of(meta);
        if identity.racy() {
            return;
        }
        let mut known = self.known().lock().unwrap_or_else(|e| e.into_inner());
        if known.get(hash) == Some(&identity) {
            return;
        }
        let line = format!("{hash} {} {} {} {}\n", identity.ino, identity.size, identity.ctime_s, identity.ctime_ns);
        // One `write` with O_APPEND: lines from processes sharing the store
        // do not interleave.
        let written = fs::OpenOptions::new().create(true).append(true).open(&self.path).and_then(|mut f| f.write_all(line.as_bytes()));
        if written.is_ok() {
            known.insert(hash.to_owned(), identity);
        }
    }
}

fn parse(text: &str) -> HashMap<String, Identity> {
    let mut known = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let [hash, ino, size, ctime_s, ctime_ns] = fields.as_slice() else { continue };
        let (Ok(ino), Ok(size), Ok(ctime_s), Ok(ctime_ns)) = (ino.parse(), size.parse(), ctime_s.parse(), ctime_ns.parse()) else { continue };
        if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            known.insert((*hash).to_owned(), Identity { ino, size, ctime_s, ctime_ns });
        }
    }
    known
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cut_short_or_foreign_are_ignored() {
        let hash = "ab".repeat(32);
        let text = format!("{hash} 12 34 1700000000 5\n{hash} 12\nxyz 1 2 3 4\n{} 1 2 3", "cd".repeat(32));
        let known = parse(&text);
        assert_eq!(known.get(&hash), Some(&Identity { ino: 12, size: 34, ctime_s: 1_700_000_000, ctime_ns: 5 }));
        assert_eq!(known.len(), 1);
    }
}
