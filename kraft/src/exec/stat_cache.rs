//! The stat cache: a file's content hash, trusted while `stat` reports the
//! same stamp (mtime, ctime, size, inode), so a no-op build stats files but
//! hashes none. Kept in the build state (see [`crate::exec::state`]).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::exec::fingerprint::Hash;

/// Identity of a file's current version as `stat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub size: u64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec()),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec()),
            size: meta.size(),
            ino: meta.ino(),
        }
    }

    /// How long after this stamp's timestamps a later write could still leave
    /// them unchanged (timestamp granularity): a jiffy-ish on nanosecond file
    /// systems, two seconds on ones that only keep seconds.
    fn granularity_ns(&self) -> i64 {
        if self.mtime_ns % 1_000_000_000 == 0 && self.ctime_ns % 1_000_000_000 == 0 {
            2_000_000_000
        } else {
            20_000_000
        }
    }

    fn newest_ns(&self) -> i64 {
        self.mtime_ns.max(self.ctime_ns)
    }
}

/// One stat-cache entry: the stamp a file had when it was hashed, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatEntry {
    pub stamp: Stamp,
    pub hash: Hash,
    /// Wall clock (ns since epoch) when `hash` was computed. An entry whose
    /// stamp is not older than this by the timestamp granularity is *racy*: a
    /// write in the same clock tick would not change the stamp (git's "racily
    /// clean" problem). [`StatCache::settle`] resolves racy entries before the
    /// state is saved.
    pub hashed_at_ns: i64,
}

impl StatEntry {
    fn is_racy(&self) -> bool {
        self.stamp.newest_ns() + self.stamp.granularity_ns() > self.hashed_at_ns
    }
}

/// Path → content hash, trusted as long as `stat` reports the same stamp.
///
/// Keys are paths as the graph names them (under `/kraft`) or, for toolchain
/// programs, absolute host paths. Thread-safe; hashing happens outside the lock.
#[derive(Debug, Default)]
pub struct StatCache {
    entries: Mutex<HashMap<String, StatEntry>>,
    /// Keys looked up during this build; the rest are dropped on save.
    used: Mutex<std::collections::HashSet<String>>,
    hashed: AtomicUsize,
    stated: AtomicUsize,
    /// What each path was found to be during this build: a file is stated at
    /// most once per build (as ninja does), however many actions read it.
    /// Writes by the engine itself go through [`StatCache::record`].
    seen: Mutex<HashMap<String, Option<Hash>>>,
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// blake3 of a file's contents, as an I/O result naming the path.
fn hash_file(path: &Utf8Path) -> io::Result<Hash> {
    crate::util::hash::blake3_file(path).map(|(hash, _)| hash).map_err(|e| io::Error::other(format!("{e:#}")))
}

impl StatCache {
    pub fn from_entries(entries: HashMap<String, StatEntry>) -> Self {
        StatCache { entries: Mutex::new(entries), ..Default::default() }
    }

    /// Forget every entry under one of `roots` (inside paths whose host
    /// directory changed: their stamps describe other files).
    pub fn forget_under(&self, roots: &[String]) {
        let under = |key: &str| roots.iter().any(|r| crate::exec::mounts::strip_dir_prefix(key, r).is_some());
        self.entries.lock().unwrap().retain(|key, _| !under(key));
    }

    /// Every key (inside path) this build looked at.
    pub fn used_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.used.lock().unwrap().iter().cloned().collect();
        keys.sort();
        keys
    }

    /// Number of files whose contents were read and hashed through this cache.
    pub fn files_hashed(&self) -> usize {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Count a hash computed outside [`StatCache::hash`] (storing an output).
    pub fn note_hashed(&self) {
        self.hashed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn files_stated(&self) -> usize {
        self.stated.load(Ordering::Relaxed)
    }

    /// Content hash of `host` (recorded under `key`), or `None` if it does not
    /// exist. Hashes only when the file's stamp differs from the cached one.
    /// What `key` was found to be earlier in this build, if it was looked at.
    pub fn seen(&self, key: &str) -> Option<Option<Hash>> {
        self.seen.lock().unwrap().get(key).copied()
    }

    pub fn hash(&self, key: &str, host: &Utf8Path) -> io::Result<Option<Hash>> {
        if let Some(seen) = self.seen.lock().unwrap().get(key) {
            return Ok(*seen);
        }
        let result = self.hash_uncached(key, host)?;
        self.seen.lock().unwrap().insert(key.to_owned(), result);
        Ok(result)
    }

    fn hash_uncached(&self, key: &str, host: &Utf8Path) -> io::Result<Option<Hash>> {
        self.used.lock().unwrap().insert(key.to_owned());
        self.stated.fetch_add(1, Ordering::Relaxed);
        let meta = match fs::metadata(host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.entries.lock().unwrap().remove(key);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if !meta.is_file() {
            return Err(io::Error::other(format!("{host} is not a regular file")));
        }
        let stamp = Stamp::of(&meta);
        if let Some(entry) = self.entries.lock().unwrap().get(key) {
            if entry.stamp == stamp {
                return Ok(Some(entry.hash));
            }
        }
        let hashed_at_ns = now_ns();
        let hash = hash_file(host)?;
        self.hashed.fetch_add(1, Ordering::Relaxed);
        // Re-stat: if the file changed while we read it, do not cache the hash.
        let after = fs::metadata(host).map(|m| Stamp::of(&m)).ok();
        if after == Some(stamp) {
            self.entries.lock().unwrap().insert(key.to_owned(), StatEntry { stamp, hash, hashed_at_ns });
        }
        Ok(Some(hash))
    }

    /// Record a hash computed elsewhere (e.g. while storing an output), if the
    /// file still has `stamp`.
    pub fn record(&self, key: &str, host: &Utf8Path, stamp: Stamp, hash: Hash, hashed_at_ns: i64) {
        self.seen.lock().unwrap().insert(key.to_owned(), Some(hash));
        self.used.lock().unwrap().insert(key.to_owned());
        if fs::metadata(host).map(|m| Stamp::of(&m)).ok() == Some(stamp) {
            self.entries.lock().unwrap().insert(key.to_owned(), StatEntry { stamp, hash, hashed_at_ns });
        }
    }

    /// An output whose bytes this build left in the store (see
    /// `exec::in_store`): absent from its path, known by its hash.
    pub fn record_in_store(&self, key: &str, hash: Hash) {
        self.seen.lock().unwrap().insert(key.to_owned(), Some(hash));
        self.used.lock().unwrap().insert(key.to_owned());
    }

    /// Resolve racy entries before saving: wait out the timestamp granularity
    /// (at most ~50 ms), then rehash the files written too close to their
    /// hashing. An entry that would need a longer wait is dropped instead (the
    /// next build rehashes that file). Afterwards every kept entry is safe: any
    /// later write changes the stamp.
    pub fn settle(&self, to_host: &dyn Fn(&str) -> Utf8PathBuf) {
        let mut entries = self.entries.lock().unwrap();
        let used = self.used.lock().unwrap();
        entries.retain(|k, _| used.contains(k));
        let racy: Vec<String> = entries.iter().filter(|(_, e)| e.is_racy()).map(|(k, _)| k.clone()).collect();
        if racy.is_empty() {
            return;
        }
        let wait_until = racy.iter().map(|k| {
            let e = &entries[k];
            e.stamp.newest_ns() + e.stamp.granularity_ns()
        });
        let wait_until = wait_until.filter(|t| *t - now_ns() < 50_000_000).max().unwrap_or(0);
        let wait = wait_until - now_ns();
        if wait > 0 {
            std::thread::sleep(Duration::from_nanos(wait as u64 + 1_000_000));
        }
        for key in racy {
            let host = to_host(&key);
            let now = now_ns();
            let before = fs::metadata(&host).map(|m| Stamp::of(&m)).ok();
            let fresh = match before {
                Some(stamp) if stamp.newest_ns() + stamp.granularity_ns() <= now => hash_file(&host)
                    .ok()
                    .filter(|_| fs::metadata(&host).map(|m| Stamp::of(&m)).ok() == Some(stamp))
                    .map(|hash| StatEntry { stamp, hash, hashed_at_ns: now }),
                _ => None,
            };
            if fresh.is_some() {
                self.hashed.fetch_add(1, Ordering::Relaxed);
            }
            match fresh {
                Some(e) => {
                    entries.insert(key, e);
                }
                None => {
                    entries.remove(&key);
                }
            }
        }
    }

    pub fn into_entries(self) -> HashMap<String, StatEntry> {
        self.entries.into_inner().unwrap()
    }

    pub fn snapshot(&self) -> HashMap<String, StatEntry> {
        self.entries.lock().unwrap().clone()
    }
}

