//! `cache gc`: remove what recent locks and recent builds do not need, from
//! every part of the store (sources, action cache, blobs, plans, `tmp/`),
//! never what a running build uses.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::cache::local::{ac_files, File, AC_VERSION};
use crate::store::Store;


/// What `cache gc` keeps.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Trees (blake3) named by the lock files: always kept.
    pub keep_trees: std::collections::HashSet<String>,
    /// Archives (sha256) named by the lock files: always kept.
    pub keep_archives: std::collections::HashSet<String>,
    /// Action-cache entries used (hit or written) within this long are kept,
    /// with their blobs, unless `max_size` evicts them.
    pub max_age: std::time::Duration,
    /// Evict least recently used entries until the store is at most this big.
    pub max_size: Option<u64>,
    /// Anything younger than this is never removed (a concurrent build or
    /// fetch may be about to reference it).
    pub grace: std::time::Duration,
    /// Report, remove nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            keep_trees: Default::default(),
            keep_archives: Default::default(),
            max_age: std::time::Duration::from_secs(30 * 24 * 3600),
            max_size: None,
            grace: std::time::Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

/// What `cache gc` did (or would do, dry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_entries: usize,
    pub removed_blobs: usize,
    pub removed_trees: usize,
    pub removed_archives: usize,
    /// Cached plans (`plans/<key>`) not used within `max_age`, and plan
    /// directories a crashed build left half-written.
    pub removed_plans: usize,
    /// Leftovers in `tmp/` older than the grace period.
    pub removed_temp: usize,
    pub freed_bytes: u64,
    /// Size of trees, archives, blobs and `ac/` afterwards.
    pub kept_bytes: u64,
    /// `max_size` could not be met without removing locked sources.
    pub over_budget: bool,
}

struct Item {
    path: Utf8PathBuf,
    bytes: u64,
    /// Last use: the mtime. [`ActionCache::get`] touches an entry on every
    /// hit; atime is not used (any reader, `cache verify` or gc itself,
    /// would refresh it).
    used: std::time::SystemTime,
}

fn item(path: Utf8PathBuf) -> Option<Item> {
    let meta = fs::symlink_metadata(&path).ok()?;
    let used = meta.modified().ok()?;
    let bytes = if meta.is_dir() {
        walkdir::WalkDir::new(&path)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .sum()
    } else {
        meta.len()
    };
    Some(Item { path, bytes, used })
}

fn subdirs(dir: &Utf8Path) -> Vec<(String, Utf8PathBuf)> {
    let mut out: Vec<(String, Utf8PathBuf)> = match dir.read_dir_utf8() {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| (e.file_name().to_owned(), e.path().to_owned())).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Delete a store entry: a file, or a read-only tree (moved into `tmp/`
/// first, so it vanishes at once).
fn remove_entry(store: &Store, path: &Utf8Path) -> anyhow::Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {path}")),
            _ => Ok(()),
        };
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).with_context(|| format!("making {path} writable"))?;
    let tmp = store.root().join("tmp");
    let trash = tempfile::Builder::new().prefix("gc-").tempdir_in(&tmp).with_context(|| format!("creating a directory in {tmp}"))?;
    let target = trash.path().join("x");
    fs::rename(path, &target).with_context(|| format!("moving {path} out of the store"))?;
    for entry in walkdir::WalkDir::new(&target).into_iter().filter_map(Result::ok) {
        if entry.file_type().is_dir() {
            let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o755));
        }
    }
    fs::remove_dir_all(&target).with_context(|| format!("deleting {path}"))?;
    Ok(())
}

/// Remove what is not needed: sources no lock names, action-cache entries
/// not used within `max_age`, blobs no kept entry names; then, over
/// `max_size`, the least recently used entries and the blobs only they
/// named. Locked sources are never removed; nothing younger than `grace` is.
/// Cached plans not used within `max_age` go too, unless a build holds the
/// plan's lock (it is planning with it right now); so do leftovers in `tmp/`
/// older than `grace` (a running build's temporary files are younger).
/// `git/` and `locks/` are left alone.
pub fn collect_garbage(store: &Store, options: &GcOptions) -> anyhow::Result<GcReport> {
    use std::collections::{HashMap, HashSet};
    let now = std::time::SystemTime::now();
    let age = |i: &Item| now.duration_since(i.used).unwrap_or_default();
    let root = store.root();
    let mut report = GcReport::default();
    let mut doomed: Vec<(Utf8PathBuf, u64, Option<String>)> = Vec::new(); // path, bytes, lock name
    let mut kept_bytes = 0u64;

    // Sources.
    for (kind, keep, lock) in
        [("trees", &options.keep_trees, "tree"), ("archives", &options.keep_archives, "archive")]
    {
        for (name, path) in subdirs(&root.join(kind)) {
            let Some(it) = item(path) else { continue };
            if keep.contains(&name) || age(&it) < options.grace {
                kept_bytes += it.bytes;
            } else {
                if kind == "trees" {
                    report.removed_trees += 1;
                } else {
                    report.removed_archives += 1;
                }
                doomed.push((it.path, it.bytes, Some(format!("{lock}:{name}"))));
            }
        }
    }

    // Plans: last use is the plan file's mtime (the build touches it on a hit).
    for (name, path) in subdirs(&root.join("plans")) {
        let Some(mut it) = item(path.clone()) else { continue };
        if let Ok(used) = fs::metadata(path.join(crate::plan::PLAN_FILE)).and_then(|m| m.modified()) {
            it.used = it.used.max(used);
        }
        let half_written = name.starts_with('.') && age(&it) >= options.grace;
        let unused = !name.starts_with('.') && age(&it) > options.max_age && age(&it) >= options.grace;
        if half_written || unused {
            report.removed_plans += 1;
            doomed.push((it.path, it.bytes, Some(format!("plan-{name}"))));
        }
    }
    // Temporary files and directories of builds that did not finish.
    for (name, path) in subdirs(&root.join("tmp")) {
        let Some(it) = item(path) else { continue };
        if !name.starts_with("gc-") && age(&it) >= options.grace {
            report.removed_temp += 1;
            doomed.push((it.path, it.bytes, None));
        }
    }

    // Action cache: entries by last use, manifests, and what they name.
    let mut entries: Vec<(Item, Vec<String>)> = Vec::new();
    let mut manifests: Vec<Item> = Vec::new();
    for (_, path) in ac_files(&root.join("ac")) {
        let parsed = fs::read(&path).ok().and_then(|b| serde_json::from_slice::<File>(&b).ok());
        let Some(it) = item(path) else { continue };
        match parsed {
            Some(File::Entry { version: AC_VERSION, entry }) if age(&it) <= options.max_age => {
                entries.push((it, entry.outputs.into_iter().map(|o| o.blake3).collect()))
            }
            Some(File::Manifest { version: AC_VERSION, .. }) if age(&it) <= options.max_age => manifests.push(it),
            _ => {
                report.removed_entries += 1;
                doomed.push((it.path, it.bytes, None));
            }
        }
    }
    entries.sort_by_key(|(it, _)| std::cmp::Reverse(it.used)); // most recent first
    let mut refs: HashMap<String, usize> = HashMap::new();
    for (_, blobs) in &entries {
        for b in blobs {
            *refs.entry(b.clone()).or_default() += 1;
        }
    }
    let mut blobs: HashMap<String, Item> = HashMap::new();
    for (_, dir) in subdirs(&root.join("blobs")) {
        for (name, path) in subdirs(&dir) {
            // Entries name blobs by hash; a compressed blob's file adds `.zst`.
            let name = name.strip_suffix(crate::store::blob::ZSTD_SUFFIX).map(str::to_owned).unwrap_or(name);
            if let Some(it) = item(path) {
                blobs.insert(name, it);
            }
        }
    }
    let mut young_blobs: HashSet<String> = HashSet::new();
    for (name, it) in &blobs {
        if refs.contains_key(name) {
            kept_bytes += it.bytes;
        } else if age(it) < options.grace {
            young_blobs.insert(name.clone());
            kept_bytes += it.bytes;
        } else {
            report.removed_blobs += 1;
            doomed.push((it.path.clone(), it.bytes, Some(format!("blob:{name}"))));
        }
    }
    kept_bytes += entries.iter().map(|(it, _)| it.bytes).sum::<u64>();
    kept_bytes += manifests.iter().map(|it| it.bytes).sum::<u64>();

    // Size budget: evict least recently used entries (and blobs only they named).
    if let Some(max) = options.max_size {
        while kept_bytes > max {
            let Some((it, names)) = entries.pop() else { break };
            if age(&it) < options.grace {
                entries.push((it, names));
                break;
            }
            kept_bytes -= it.bytes;
            report.removed_entries += 1;
            doomed.push((it.path, it.bytes, None));
            for name in names {
                let count = refs.get_mut(&name).expect("counted");
                *count -= 1;
                if *count == 0 && !young_blobs.contains(&name) {
                    if let Some(b) = blobs.get(&name) {
                        kept_bytes -= b.bytes;
                        report.removed_blobs += 1;
                        doomed.push((b.path.clone(), b.bytes, Some(format!("blob:{name}"))));
                    }
                }
            }
        }
        // Manifests are tiny, but they go too once no entry is left.
        if kept_bytes > max && entries.is_empty() {
            for it in manifests.drain(..) {
                kept_bytes -= it.bytes;
                doomed.push((it.path, it.bytes, None));
            }
        }
        report.over_budget = kept_bytes > max;
    }

    report.kept_bytes = kept_bytes;
    for (path, bytes, lock) in doomed {
        report.freed_bytes += bytes;
        if options.dry_run {
            continue;
        }
        let _lock = match &lock {
            // A plan in use by a running build is skipped, not waited for.
            Some(name) if name.starts_with("plan-") => match store.try_lock(name)? {
                Some(lock) => Some(lock),
                None => {
                    report.removed_plans -= 1;
                    report.freed_bytes -= bytes;
                    continue;
                }
            },
            Some(name) => Some(store.lock(name)?),
            None => None,
        };
        remove_entry(store, &path)?;
    }
    // The record of verified blobs only grows; it starts again after a
    // collection that removed blobs (what it named is verified again).
    if report.removed_blobs > 0 && !options.dry_run {
        let _ = fs::remove_file(root.join(crate::store::verified::FILE));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_temporary_files_go_unless_a_build_holds_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Utf8Path::from_path(dir.path()).unwrap().join("store")).unwrap();
        let plans = store.root().join("plans");
        for name in ["unused", "in-use", ".plan-half"] {
            fs::create_dir_all(plans.join(name).join("prepared")).unwrap();
            fs::write(plans.join(name).join(crate::plan::PLAN_FILE), "{}").unwrap();
        }
        fs::create_dir_all(store.root().join("tmp")).unwrap();
        fs::write(store.root().join("tmp/.tmp-left-over"), "x").unwrap();
        let held = store.lock("plan-in-use").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let options = GcOptions { max_age: std::time::Duration::ZERO, grace: std::time::Duration::ZERO, ..GcOptions::default() };
        let report = collect_garbage(&store, &options).unwrap();
        assert!(!plans.join("unused").exists() && !plans.join(".plan-half").exists());
        assert!(plans.join("in-use").join(crate::plan::PLAN_FILE).is_file(), "a plan a build holds stays");
        assert!(!store.root().join("tmp/.tmp-left-over").exists());
        assert_eq!((report.removed_plans, report.removed_temp), (2, 1));
        drop(held);
    }
}
