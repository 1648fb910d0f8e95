//! The plan cache: `<cache>/<key>/plan.json.zst` beside the prepared build
//! dir packed as `prepared.tar.zst` (a tenth of the tree's size, and one
//! file to share: see [`super::bundle`]), the build dir's marker, and the
//! identities that go into the plan key.
//!
//! The plan is JSON compressed with zstd: helloworld+musl's is 14 MB of
//! JSON, nearly all of it compile lines that differ in a file name, and
//! 0.1 MB compressed. Raw, it was 7% of the store after one build.

use anyhow::{Context, Result};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};

use crate::plan::fetches::PlacedOrigin;
use crate::plan::graph::Graph;
use crate::plan::PLAN_FORMAT;


/// `<build>/.kraft-plan`: the plan key the build dir was prepared for.
const MARKER: &str = ".kraft-plan";

pub(crate) fn read_marker(build: &Utf8Path) -> Option<String> {
    std::fs::read_to_string(build.join(MARKER)).ok().map(|s| s.trim().to_string())
}

pub(crate) fn write_marker(build: &Utf8Path, key: &str) -> Result<()> {
    std::fs::write(build.join(MARKER), key).with_context(|| format!("writing {}", build.join(MARKER)))
}

pub(crate) fn is_build_file(name: &str) -> bool {
    name.starts_with("Makefile") || name.ends_with(".uk") || name.ends_with(".mk") || name.starts_with("Config.uk")
}

/// blake3 over (relative path, content) of the build description files.
pub fn fingerprint_build_files(dir: &Utf8Path) -> Result<String> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git") {
        let entry = entry?;
        if entry.file_type().is_file() && is_build_file(&entry.file_name().to_string_lossy()) {
            files.push(entry.into_path());
        }
    }
    let mut h = blake3::Hasher::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&f)?;
        h.update(rel.as_bytes());
        h.update(&[0]);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CachedPlan {
    format: u32,
    pub warnings: Vec<String>,
    pub graph: Graph,
    /// The origin archives planning placed (checked against the lock on a hit).
    #[serde(default)]
    pub origins: Vec<PlacedOrigin>,
}

/// The files of a cache entry, `<cache>/<key>/<file>`.
pub(crate) const PLAN_FILE: &str = "plan.json.zst";
pub(crate) const PREPARED_FILE: &str = "prepared.tar.zst";

/// The zstd level of `plan.json.zst`: level 3 already gets 150×; higher
/// levels gain a few KB and cost milliseconds on every plan made.
const PLAN_ZSTD_LEVEL: i32 = 3;

/// The cache entry `entry`, if it is complete and of this format. An entry
/// that does not read (half-written, another format, corrupt) is `None`:
/// the caller plans with make and replaces it.
pub(crate) fn load_cached(entry: &Utf8Path) -> Result<Option<CachedPlan>> {
    let Ok(packed) = std::fs::read(entry.join(PLAN_FILE)) else { return Ok(None) };
    let Ok(json) = zstd::decode_all(packed.as_slice()) else { return Ok(None) };
    match serde_json::from_slice::<CachedPlan>(&json) {
        Ok(c) if c.format == PLAN_FORMAT && entry.join(PREPARED_FILE).is_file() => Ok(Some(c)),
        _ => Ok(None),
    }
}

/// Puts the build dir in the prepared state of `entry` (unless its marker
/// says it already is). `false`: the entry's tree does not unpack; it is
/// removed and the caller plans with make.
/// Outputs of `graph` already in the build dir stay (see
/// [`super::bundle::sync_tree`]).
pub(crate) fn restore_prepared(entry: &Utf8Path, build: &Utf8Path, key: &str, graph: &Graph) -> Result<bool> {
    // A build dir already prepared for this very plan is left as it is:
    // that is what makes a no-op build cost nothing.
    if read_marker(build).as_deref() == Some(key) {
        return Ok(true);
    }
    std::fs::create_dir_all(build).with_context(|| format!("creating {build}"))?;
    let inside = super::inside_build();
    let keep: std::collections::HashSet<camino::Utf8PathBuf> = graph
        .actions
        .iter()
        .flat_map(|a| a.outputs.iter().chain(a.depfile.iter()))
        .filter_map(|p| p.strip_prefix(&inside).ok().map(|r| r.to_owned()))
        .collect();
    let unpacked = std::fs::read(entry.join(PREPARED_FILE))
        .map_err(anyhow::Error::from)
        .and_then(|bytes| super::bundle::sync_tree(&bytes, build, &keep));
    if unpacked.is_err() {
        let _ = std::fs::remove_dir_all(entry);
        clear_dir(build)?;
        return Ok(false);
    }
    write_marker(build, key)?;
    Ok(true)
}

pub(crate) fn store_cached(entry: &Utf8Path, graph: &Graph, warnings: &[String], build: &Utf8Path) -> Result<()> {
    store_cached_with(entry, graph, warnings, build, &[])
}

pub(crate) fn store_cached_with(entry: &Utf8Path, graph: &Graph, warnings: &[String], build: &Utf8Path, origins: &[PlacedOrigin]) -> Result<()> {
    let parent = entry.parent().unwrap();
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".plan-").tempdir_in(parent)?;
    let tmp_path = Utf8Path::from_path(tmp.path()).unwrap();
    super::bundle::pack_tree(build, &tmp_path.join(PREPARED_FILE))?;
    let cached = CachedPlan { format: PLAN_FORMAT, warnings: warnings.to_vec(), graph: graph.clone(), origins: origins.to_vec() };
    let json = serde_json::to_vec(&cached)?;
    std::fs::write(tmp_path.join(PLAN_FILE), zstd::encode_all(json.as_slice(), PLAN_ZSTD_LEVEL)?)?;
    let tmp_path = tmp.keep();
    if entry.exists() {
        std::fs::remove_dir_all(entry)?;
    }
    if let Err(e) = std::fs::rename(&tmp_path, entry) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        if !entry.join(PLAN_FILE).exists() {
            return Err(e).context("storing plan in cache");
        }
    }
    Ok(())
}

/// Empties `dir` for a plan made with make, and does not delete anything
/// now: its old contents are renamed aside (`<dir>.set-aside`) and removed
/// when the command is done ([`crate::util::fs::remove_deferred`]).
/// This file system is ext4 without a journal, where creating a file
/// within 60 s of deleting others (360 s while the inode table is not yet
/// written back) skips every recently deleted inode of its group: make is about to create ~6,000 files, just where the old
/// plan's ~6,000 were.
///
/// A sandbox started before this still sees the old directory (its bind
/// mount follows the inode): the caller starts its commands in a new one.
pub(crate) fn set_aside(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    if std::fs::read_dir(dir).with_context(|| format!("reading {dir}"))?.next().is_none() {
        return Ok(());
    }
    let aside = camino::Utf8PathBuf::from(format!("{dir}.set-aside"));
    // Left by a command that did not finish.
    crate::util::fs::remove_tree(&aside)?;
    std::fs::rename(dir, &aside).with_context(|| format!("moving {dir} aside to {aside}"))?;
    std::fs::create_dir(dir).with_context(|| format!("creating {dir}"))?;
    crate::util::fs::remove_later(aside);
    Ok(())
}

pub(crate) fn clear_dir(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
