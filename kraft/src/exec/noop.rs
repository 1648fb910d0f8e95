//! The no-op check: is anything at all different since the last successful
//! build of this target?
//!
//! After a build succeeds, the target's directory gets `noop.json`: the plan
//! key and the stamp (size, mtime, ctime, inode; or "absent") of every file
//! the build looked at — every source, every header a depfile listed, every
//! output, the installed image, the toolchain programs — as the engine's
//! stat cache saw them. The next build computes the plan key (cheap: the
//! Kraftfile, the lock, recipes and build description files) and stats those
//! files. If the key is the same and no stamp moved, nothing can be out of
//! date: the plan is not loaded, no action is fingerprinted, nothing runs.
//! Any difference falls through to the full engine, which decides exactly
//! what to do and records why.
//!
//! This trusts stamps exactly as the stat cache does (and as ninja and make
//! trust mtimes), with one guard against racy writes: a snapshot is only
//! written when every file is older than the snapshot by more than the file
//! system's timestamp granularity, so a write in the same tick as the build
//! cannot hide.

use std::os::unix::fs::MetadataExt;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::exec::state::now_ns;

/// Files written this close to the snapshot are not trusted (ns).
const RACY_NS: i64 = 20_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub key: String,
    /// Action and unit counts of the build, for the summary.
    pub actions: usize,
    pub units: usize,
    pub taken_ns: i64,
    /// `(path, [size, mtime_ns, ctime_ns, ino])`, or no stamp when absent.
    pub files: Vec<(Utf8PathBuf, Option<[i64; 4]>)>,
}

fn stamp(path: &Utf8Path) -> Option<[i64; 4]> {
    let m = std::fs::metadata(path).ok()?;
    Some([
        m.size() as i64,
        m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec()),
        m.ctime().saturating_mul(1_000_000_000).saturating_add(m.ctime_nsec()),
        m.ino() as i64,
    ])
}

/// Record a snapshot after a successful build (best effort: a snapshot that
/// cannot be written, or would be racy, is simply not there next time).
pub fn record(path: &Utf8Path, key: &str, actions: usize, units: usize, files: &[Utf8PathBuf]) {
    let _ = std::fs::remove_file(path);
    // Outputs were just written: wait out the timestamp granularity once
    // (at most RACY_NS) rather than not recording at all.
    let newest = files.iter().filter_map(|f| stamp(f)).map(|[_, m, c, _]| m.max(c)).max().unwrap_or(0);
    let wait = newest + RACY_NS - now_ns() + 1_000_000;
    if wait > 0 && wait <= 2 * RACY_NS {
        std::thread::sleep(std::time::Duration::from_nanos(wait as u64));
    }
    let taken_ns = now_ns();
    let mut stamped = Vec::with_capacity(files.len());
    for file in files {
        let s = stamp(file);
        if let Some([_, mtime, ctime, _]) = s {
            if mtime.max(ctime) > taken_ns - RACY_NS {
                return; // written too recently to trust its stamp
            }
        }
        stamped.push((file.clone(), s));
    }
    let snapshot = Snapshot { key: key.to_string(), actions, units, taken_ns, files: stamped };
    if let Ok(bytes) = serde_json::to_vec(&snapshot) {
        let _ = crate::util::fs::write_atomic(path, &bytes);
    }
}

/// The snapshot, if the plan key is the same and no file changed.
pub fn check(path: &Utf8Path, key: &str) -> Option<Snapshot> {
    let snapshot: Snapshot = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if snapshot.key != key {
        return None;
    }
    for (file, then) in &snapshot.files {
        if stamp(file) != *then {
            return None;
        }
    }
    Some(snapshot)
}

/// Forget the snapshot (before anything that may change the build dir).
pub fn invalidate(path: &Utf8Path) {
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_change_or_new_key_misses() {
        let dir = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(dir.path()).unwrap();
        let file = dir.join("a.c");
        std::fs::write(&file, "int a;").unwrap();
        let absent = dir.join("gone.h");
        std::thread::sleep(std::time::Duration::from_millis(30));
        let snap = dir.join("noop.json");
        record(&snap, "k1", 3, 1, &[file.clone(), absent.clone()]);
        assert!(check(&snap, "k1").is_some());
        assert!(check(&snap, "k2").is_none(), "another plan key");
        std::fs::write(&absent, "").unwrap();
        assert!(check(&snap, "k1").is_none(), "a file that appeared");
        std::fs::remove_file(&absent).unwrap();
        assert!(check(&snap, "k1").is_some());
        std::fs::write(&file, "int b;").unwrap();
        assert!(check(&snap, "k1").is_none(), "an edited file");
    }

    #[test]
    fn fresh_files_are_waited_out_not_trusted_early() {
        let dir = tempfile::tempdir().unwrap();
        let dir = Utf8Path::from_path(dir.path()).unwrap();
        let file = dir.join("fresh.o");
        std::fs::write(&file, "x").unwrap();
        let snap = dir.join("noop.json");
        record(&snap, "k", 1, 1, &[file.clone()]);
        let saved: Snapshot = serde_json::from_slice(&std::fs::read(&snap).unwrap()).unwrap();
        let [_, mtime, _, _] = saved.files[0].1.unwrap();
        assert!(saved.taken_ns > mtime + RACY_NS, "snapshot taken after the granularity window");
    }
}
