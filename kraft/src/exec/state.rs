//! Per-build-directory state: what the last build of this directory produced.
//!
//! This is kraft-xtask's `.ninja_log` + `.ninja_deps`: one file, written
//! atomically (temp + rename) at the end of every build, successful or not.
//! It holds
//!
//! * for every action name, an [`ActionRecord`]: the [`Fingerprint`] it was last
//!   built with (script hash, environment, known and discovered inputs with
//!   their content hashes), the key derived from it, and the hash and mode of
//!   every output it left behind;
//! * the [`StatCache`]: path → (mtime, ctime, size, inode, content hash), so a
//!   no-op build stats files but hashes none;
//! * [`LastBuild`]: which actions ran (or were restored) in the last build and
//!   the [`DirtyReason`] for each, for `explain`.
//!
//! On disk it is JSON, made compact by interning: every path and every hash
//! appears once in a table and records refer to them by index (a Unikraft
//! build has thousands of objects that each read the same few hundred
//! headers). A missing, unreadable or wrong-version state file is an empty
//! state: the next build recomputes every key (and mostly restores from the
//! action cache), it never fails because of it.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::exec::fingerprint::{DirtyReason, Fingerprint, Hash};

const STATE_VERSION: u32 = 1;

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

/// blake3 of a file's contents, streamed.
pub fn hash_file(path: &Utf8Path) -> io::Result<Hash> {
    let mut file = fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

impl StatCache {
    pub fn from_entries(entries: HashMap<String, StatEntry>) -> Self {
        StatCache { entries: Mutex::new(entries), ..Default::default() }
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

/// One output as recorded after an action ran or was restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub path: Utf8PathBuf,
    pub hash: Hash,
    /// Permission bits (`0o644`, `0o755`).
    pub mode: u32,
}

/// What the last successful run (or restore) of one action left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub fingerprint: Fingerprint,
    /// `fingerprint.key()` at the time; kept to spot format changes cheaply.
    pub key: Hash,
    pub outputs: Vec<OutputRecord>,
}

/// How an action that was not up to date got its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Ran in the sandbox.
    Ran,
    /// Outputs restored from the action cache.
    Restored,
    /// Ran and failed.
    Failed,
}

/// One line of the last build's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub name: String,
    pub unit: String,
    pub outcome: Outcome,
    pub reason: DirtyReason,
    pub duration_ms: u64,
}

/// What the last build did, in completion order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastBuild {
    pub started_ns: i64,
    pub succeeded: bool,
    pub entries: Vec<LogEntry>,
}

/// The state of one build directory.
#[derive(Debug, Default)]
pub struct BuildState {
    pub actions: BTreeMap<String, ActionRecord>,
    pub stats: StatCache,
    pub last_build: LastBuild,
    /// Toolchain components of the last build (program → hash), for explain.
    pub toolchain: BTreeMap<String, Hash>,
}

// ---- on-disk form -------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct Disk {
    version: u32,
    /// Interned paths.
    paths: Vec<String>,
    /// Interned hashes (hex).
    hashes: Vec<String>,
    actions: Vec<DiskAction>,
    /// `[path, hash, mtime_ns, ctime_ns, size, ino, hashed_at_ns]`.
    stats: Vec<(u32, u32, i64, i64, u64, u64, i64)>,
    last_build: LastBuild,
    toolchain: Vec<(String, u32)>,
}

#[derive(Serialize, Deserialize)]
struct DiskAction {
    name: String,
    key: u32,
    script: u32,
    env: u32,
    /// `[path, hash]`; hash `u32::MAX` means the file did not exist.
    inputs: Vec<(u32, u32)>,
    discovered: Vec<(u32, u32)>,
    /// `[path, hash, mode]`.
    outputs: Vec<(u32, u32, u32)>,
}

const MISSING: u32 = u32::MAX;

#[derive(Default)]
struct Interner {
    paths: Vec<String>,
    path_ix: HashMap<String, u32>,
    hashes: Vec<String>,
    hash_ix: HashMap<Hash, u32>,
}

impl Interner {
    fn path(&mut self, p: &str) -> u32 {
        if let Some(&i) = self.path_ix.get(p) {
            return i;
        }
        let i = self.paths.len() as u32;
        self.paths.push(p.to_owned());
        self.path_ix.insert(p.to_owned(), i);
        i
    }
    fn hash(&mut self, h: &Hash) -> u32 {
        if let Some(&i) = self.hash_ix.get(h) {
            return i;
        }
        let i = self.hashes.len() as u32;
        self.hashes.push(h.to_hex().to_string());
        self.hash_ix.insert(*h, i);
        i
    }
    fn opt_hash(&mut self, h: &Option<Hash>) -> u32 {
        h.as_ref().map_or(MISSING, |h| self.hash(h))
    }
}

impl BuildState {
    /// Load the state at `path`; anything unusable yields an empty state.
    pub fn load(path: &Utf8Path) -> BuildState {
        let Ok(bytes) = fs::read(path) else { return BuildState::default() };
        Self::decode(&bytes).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<BuildState> {
        let disk: Disk = serde_json::from_slice(bytes).ok()?;
        if disk.version != STATE_VERSION {
            return None;
        }
        let hashes: Vec<Hash> = disk.hashes.iter().map(|h| Hash::from_hex(h).ok()).collect::<Option<_>>()?;
        let path = |i: u32| disk.paths.get(i as usize).cloned();
        let hash = |i: u32| hashes.get(i as usize).copied();
        let opt_hash = |i: u32| if i == MISSING { Some(None) } else { hash(i).map(Some) };
        let pairs = |v: &[(u32, u32)]| -> Option<Vec<(Utf8PathBuf, Option<Hash>)>> {
            v.iter().map(|&(p, h)| Some((Utf8PathBuf::from(path(p)?), opt_hash(h)?))).collect()
        };
        let mut actions = BTreeMap::new();
        for a in &disk.actions {
            let fingerprint = Fingerprint {
                script: hash(a.script)?,
                env: hash(a.env)?,
                inputs: pairs(&a.inputs)?,
                discovered: pairs(&a.discovered)?,
            };
            let outputs = a
                .outputs
                .iter()
                .map(|&(p, h, mode)| Some(OutputRecord { path: path(p)?.into(), hash: hash(h)?, mode }))
                .collect::<Option<Vec<_>>>()?;
            actions.insert(a.name.clone(), ActionRecord { fingerprint, key: hash(a.key)?, outputs });
        }
        let mut stats = HashMap::new();
        for &(p, h, mtime_ns, ctime_ns, size, ino, hashed_at_ns) in &disk.stats {
            stats.insert(path(p)?, StatEntry { stamp: Stamp { mtime_ns, ctime_ns, size, ino }, hash: hash(h)?, hashed_at_ns });
        }
        let toolchain = disk.toolchain.iter().map(|(k, h)| Some((k.clone(), hash(*h)?))).collect::<Option<_>>()?;
        Some(BuildState { actions, stats: StatCache::from_entries(stats), last_build: disk.last_build, toolchain })
    }

    fn encode(&self) -> Vec<u8> {
        let mut ix = Interner::default();
        let mut actions = Vec::with_capacity(self.actions.len());
        for (name, rec) in &self.actions {
            let fp = &rec.fingerprint;
            let mut pairs = |v: &[(Utf8PathBuf, Option<Hash>)]| -> Vec<(u32, u32)> {
                v.iter().map(|(p, h)| (ix.path(p.as_str()), ix.opt_hash(h))).collect()
            };
            let inputs = pairs(&fp.inputs);
            let discovered = pairs(&fp.discovered);
            actions.push(DiskAction {
                name: name.clone(),
                key: ix.hash(&rec.key),
                script: ix.hash(&fp.script),
                env: ix.hash(&fp.env),
                inputs,
                discovered,
                outputs: rec.outputs.iter().map(|o| (ix.path(o.path.as_str()), ix.hash(&o.hash), o.mode)).collect(),
            });
        }
        let mut stats: Vec<_> = self
            .stats
            .snapshot()
            .into_iter()
            .map(|(p, e)| {
                (ix.path(&p), ix.hash(&e.hash), e.stamp.mtime_ns, e.stamp.ctime_ns, e.stamp.size, e.stamp.ino, e.hashed_at_ns)
            })
            .collect();
        stats.sort_unstable();
        let toolchain = self.toolchain.iter().map(|(k, h)| (k.clone(), ix.hash(h))).collect();
        let disk = Disk {
            version: STATE_VERSION,
            paths: ix.paths,
            hashes: ix.hashes,
            actions,
            stats,
            last_build: self.last_build.clone(),
            toolchain,
        };
        serde_json::to_vec(&disk).expect("state serializes")
    }

    /// Write the state to `path` atomically.
    pub fn save(&self, path: &Utf8Path) -> anyhow::Result<()> {
        let bytes = self.encode();
        crate::util::fs::write_atomic(path, &bytes).with_context(|| format!("writing build state {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut st = BuildState::default();
        let h = blake3::hash(b"x");
        st.actions.insert(
            "a.o".into(),
            ActionRecord {
                fingerprint: Fingerprint {
                    script: h,
                    env: h,
                    inputs: vec![("/kraft/a.c".into(), Some(h))],
                    discovered: vec![("/kraft/a.h".into(), None)],
                },
                key: h,
                outputs: vec![OutputRecord { path: "/kraft/a.o".into(), hash: h, mode: 0o644 }],
            },
        );
        let bytes = st.encode();
        let back = BuildState::decode(&bytes).unwrap();
        assert_eq!(back.actions, st.actions);
    }
}
