//! Outputs left in the store: a build whose actions all come from the
//! cache does not write their objects into the build dir.
//!
//! A fresh output dir over a warm store (a new checkout, a CI runner with
//! a team cache) restores every output: helloworld+musl's 1,459, 1.5 GB
//! with two 372 MB partial links of musl, which `cp -a` alone takes 3 s
//! to copy. Yet only the image is wanted. As Bazel's "build without the
//! bytes", an object or partial link restored from the cache into a place
//! where nothing is stays in the store: its hash is known, so the actions
//! after it are keyed, looked up and restored exactly as before.
//!
//! The first action of the build that has to run a command writes every
//! output left so far (under one lock, so a command on another worker
//! waits for it too), and from then on the build restores as it always
//! did: a command sees the build dir a build that restored everything
//! would have shown it. The build state lists the outputs still in the
//! store; the next build seeds them (when nothing has appeared at their
//! path and the store still holds their bytes), so its first command gets
//! them too. `KRAFT_MATERIALIZE=all` writes every output as it is
//! restored.
//!
//! Leaving an output checks that its blob is whole: read and hashed the
//! first time, then trusted while its inode, size and ctime are unchanged
//! (`store::verified`). Writing it later hashes it again.
//!
//! Only compiles and partial links stay in the store: what they write is
//! read by later actions alone. The image, its `.dbg` and whatever scripts
//! write (generated headers, which a compile reads without naming them)
//! are always written.

use std::collections::BTreeSet;
use std::sync::Mutex;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::cache::local::{ActionCache, CachedOutput};
use crate::exec::stat_cache::StatCache;
use crate::plan::graph::ActionKind;

/// `KRAFT_MATERIALIZE`: whether outputs restored from the cache may stay
/// in the store (see the module docs); a bad value is an error.
pub fn setting() -> anyhow::Result<bool> {
    match crate::config::Config::get().materialize.as_deref().map(str::trim) {
        None | Some("") | Some("needed") => Ok(true),
        Some("all") => Ok(false),
        Some(other) => anyhow::bail!(
            "KRAFT_MATERIALIZE={other}: expected `needed` or `all`\n  \
             help: `all` writes every output into the build dir; unset it to leave objects restored from the cache in the store until a command needs them"
        ),
    }
}

#[derive(Debug, Default)]
pub struct InStore {
    enabled: bool,
    state: Mutex<Left>,
}

#[derive(Debug, Default)]
struct Left {
    /// Set once a command ran (or the build writes everything): nothing
    /// more stays in the store.
    written: bool,
    outputs: Vec<CachedOutput>,
}

impl InStore {
    pub fn new(enabled: bool) -> InStore {
        InStore { enabled, state: Mutex::default() }
    }

    /// Whether outputs may stay in the store in this build at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether an action of `kind` may leave `outputs` in the store:
    /// compiles and partial links, where nothing is at their paths (a file
    /// there, of another version, is replaced by restoring as always).
    /// Checked before their blobs are read.
    pub fn may_leave(&self, kind: ActionKind, outputs: &[CachedOutput], to_host: &dyn Fn(&Utf8Path) -> Utf8PathBuf) -> bool {
        self.enabled
            && matches!(kind, ActionKind::Compile | ActionKind::PartialLink)
            && outputs.iter().all(|out| std::fs::symlink_metadata(to_host(&out.path)).is_err())
    }

    /// Leaves `outputs` (restored from the cache; their bytes are in the
    /// store, verified) there, and tells `stats` their hashes. `false`: a
    /// command has run in this build, and the caller restores them.
    pub fn leave(&self, outputs: &[CachedOutput], stats: &StatCache) -> anyhow::Result<bool> {
        let mut left = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if left.written {
            return Ok(false);
        }
        for out in outputs {
            let hash = crate::exec::fingerprint::Hash::from_hex(&out.blake3).context("a cache entry with a malformed blob hash")?;
            stats.record_in_store(out.path.as_str(), hash);
        }
        left.outputs.extend(outputs.iter().cloned());
        Ok(true)
    }

    /// An output the last build left in the store, still absent from its
    /// path, whose bytes the store holds (the caller checked).
    pub fn seed(&self, output: CachedOutput, stats: &StatCache) -> anyhow::Result<()> {
        let hash = crate::exec::fingerprint::Hash::from_hex(&output.blake3).context("a malformed hash in the build state")?;
        stats.record_in_store(output.path.as_str(), hash);
        self.state.lock().unwrap_or_else(|e| e.into_inner()).outputs.push(output);
        Ok(())
    }

    /// Writes every output left in the store into the build dir; from now
    /// on nothing is left. Called before any command runs: it returns when
    /// they are all written, also to a caller on another worker.
    pub fn write_all(&self, cache: &ActionCache, to_host: &(dyn Fn(&Utf8Path) -> Utf8PathBuf + Sync), stats: &StatCache) -> anyhow::Result<()> {
        let mut left = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if left.written {
            return Ok(());
        }
        let outputs = std::mem::take(&mut left.outputs);
        // Decompressing and writing, on as many threads as there are cores
        // (nothing else runs meanwhile: every worker waits for this).
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(outputs.len().max(1));
        let chunk = outputs.len().div_ceil(threads).max(1);
        let results: Vec<anyhow::Result<()>> = std::thread::scope(|scope| {
            let handles: Vec<_> = outputs
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || -> anyhow::Result<()> {
                        let restored = cache.restore_outputs(part, to_host)?.with_context(|| {
                            format!(
                                "the store no longer holds outputs this build left there ({} and others; removed by `cache gc`?)\n  \
                                 help: build again: the next build restores or rebuilds them",
                                part[0].path
                            )
                        })?;
                        for r in restored {
                            stats.record(r.path.as_str(), &r.host, r.stamp, r.hash, r.hashed_at_ns);
                        }
                        Ok(())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("writing outputs left in the store panicked")))).collect()
        });
        left.written = true;
        results.into_iter().collect()
    }

    /// The outputs still only in the store, for the build state.
    pub fn left(&self) -> BTreeSet<Utf8PathBuf> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).outputs.iter().map(|o| o.path.clone()).collect()
    }
}
