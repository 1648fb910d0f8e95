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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::exec::fingerprint::{DirtyReason, Fingerprint, Hash};
pub use crate::exec::stat_cache::{now_ns, Stamp, StatCache, StatEntry};

const STATE_VERSION: u32 = 1;

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
    /// [`MountMap::listing`](crate::exec::mounts::MountMap::listing) of the
    /// last build: whose files the stat cache's stamps describe.
    pub mounts: String,
    /// Outputs whose bytes the last build left in the store instead of
    /// the build dir (see [`crate::exec::in_store`]).
    pub in_store: BTreeSet<Utf8PathBuf>,
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
    #[serde(default)]
    mounts: String,
    /// Outputs left in the store (paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    in_store: Vec<u32>,
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
        let in_store = disk.in_store.iter().map(|&p| path(p).map(Utf8PathBuf::from)).collect::<Option<_>>()?;
        Some(BuildState {
            in_store,
            actions,
            stats: StatCache::from_entries(stats),
            last_build: disk.last_build,
            toolchain,
            mounts: disk.mounts,
        })
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
        let in_store = self.in_store.iter().map(|p| ix.path(p.as_str())).collect();
        let disk = Disk {
            version: STATE_VERSION,
            paths: ix.paths,
            hashes: ix.hashes,
            actions,
            stats,
            last_build: self.last_build.clone(),
            toolchain,
            mounts: self.mounts.clone(),
            in_store,
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
