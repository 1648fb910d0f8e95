//! `cache verify`: rehash every tree, archive and blob in the store.

use std::fs;

use anyhow::Context;
use camino::Utf8PathBuf;
use rayon::prelude::*;

use super::entry::list_dir;
use super::blob::ZSTD_SUFFIX;
use super::{tree_hash, Store};
use crate::util::hash::{is_hex64, sha256_file};

/// What kind of store entry a [`VerifyProblem`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Tree,
    Archive,
    Blob,
}

/// One corrupt or malformed entry found by [`Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyProblem {
    pub kind: EntryKind,
    pub path: Utf8PathBuf,
    /// The hash the entry's name promises (empty when the name is malformed).
    pub expected: String,
    /// The hash of what is there, when it could be computed.
    pub actual: Option<String>,
    /// Human-readable explanation.
    pub reason: String,
    /// Whether it was removed (only with `remove = true`).
    pub removed: bool,
}

/// The result of [`Store::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub trees_checked: usize,
    pub archives_checked: usize,
    pub blobs_checked: usize,
    pub problems: Vec<VerifyProblem>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Store {
    /// Rehash every tree, archive and blob. Entries whose content does not
    /// match their name, and malformed names, are reported; with `remove`,
    /// they are also deleted (first renamed into `tmp/`, so they vanish
    /// atomically). Staging leftovers in `tmp/` are not touched.
    pub fn verify(&self, remove: bool) -> anyhow::Result<VerifyReport> {
        let mut report = VerifyReport::default();

        // Trees.
        let trees = list_dir(&self.root.join("trees"))?;
        report.trees_checked = trees.len();
        let mut problems: Vec<VerifyProblem> = trees
            .par_iter()
            .filter_map(|(name, path)| {
                let problem = |actual: Option<String>, reason: String| VerifyProblem {
                    kind: EntryKind::Tree,
                    path: path.clone(),
                    expected: if is_hex64(name) { name.clone() } else { String::new() },
                    actual,
                    reason,
                    removed: false,
                };
                if !is_hex64(name) {
                    return Some(problem(None, "name is not a blake3 hash".into()));
                }
                match fs::symlink_metadata(path) {
                    Ok(m) if m.is_dir() => {}
                    _ => return Some(problem(None, "not a directory".into())),
                }
                match tree_hash(path) {
                    Ok(h) if h == *name => None,
                    Ok(h) => Some(problem(Some(h), "tree content does not match its hash".into())),
                    Err(e) => Some(problem(None, format!("cannot hash: {e:#}"))),
                }
            })
            .collect();

        // Archives: archives/<sha>/<file>.
        let archive_dirs = list_dir(&self.root.join("archives"))?;
        let mut archive_files = Vec::new();
        for (name, path) in &archive_dirs {
            let bad = |reason: &str| VerifyProblem {
                kind: EntryKind::Archive,
                path: path.clone(),
                expected: if is_hex64(name) { name.clone() } else { String::new() },
                actual: None,
                reason: reason.into(),
                removed: false,
            };
            if !is_hex64(name) {
                problems.push(bad("name is not a sha256 hash"));
            } else if !path.is_dir() || path.is_symlink() {
                problems.push(bad("not a directory"));
            } else {
                let files = list_dir(path)?;
                if files.is_empty() {
                    problems.push(bad("empty archive directory"));
                }
                archive_files.extend(files.into_iter().map(|(_, p)| (name.clone(), p)));
            }
        }
        report.archives_checked = archive_files.len();
        problems.extend(archive_files.par_iter().filter_map(|(sha, path)| {
            let problem = |actual: Option<String>, reason: String| VerifyProblem {
                kind: EntryKind::Archive,
                path: path.clone(),
                expected: sha.clone(),
                actual,
                reason,
                removed: false,
            };
            match fs::symlink_metadata(path) {
                Ok(m) if m.is_file() => {}
                _ => return Some(problem(None, "not a regular file".into())),
            }
            match sha256_file(path) {
                Ok(h) if h == *sha => None,
                Ok(h) => Some(problem(Some(h), "archive content does not match its sha256".into())),
                Err(e) => Some(problem(None, format!("cannot hash: {e:#}"))),
            }
        }).collect::<Vec<_>>());

        // Blobs: blobs/<aa>/<hash>, or <hash>.zst (a zstd frame of the bytes).
        let mut blob_files = Vec::new();
        for (prefix, dir) in list_dir(&self.root.join("blobs"))? {
            if prefix.len() != 2 || !dir.is_dir() || dir.is_symlink() {
                problems.push(VerifyProblem {
                    kind: EntryKind::Blob,
                    path: dir,
                    expected: String::new(),
                    actual: None,
                    reason: "not a blob prefix directory".into(),
                    removed: false,
                });
                continue;
            }
            for (name, path) in list_dir(&dir)? {
                blob_files.push((prefix.clone(), name, path));
            }
        }
        report.blobs_checked = blob_files.len();
        problems.extend(blob_files.par_iter().filter_map(|(prefix, file_name, path)| {
            let zstd = file_name.ends_with(ZSTD_SUFFIX);
            let name = file_name.strip_suffix(ZSTD_SUFFIX).unwrap_or(file_name);
            let problem = |actual: Option<String>, reason: String| VerifyProblem {
                kind: EntryKind::Blob,
                path: path.clone(),
                expected: if is_hex64(name) { name.to_owned() } else { String::new() },
                actual,
                reason,
                removed: false,
            };
            if !is_hex64(name) || !name.starts_with(prefix.as_str()) {
                return Some(problem(None, "name is not a blake3 hash under its prefix".into()));
            }
            match fs::symlink_metadata(path) {
                Ok(m) if m.is_file() => {}
                _ => return Some(problem(None, "not a regular file".into())),
            }
            let encoding = if zstd { super::BlobEncoding::Zstd } else { super::BlobEncoding::Raw };
            let hashed = fs::File::open(path).and_then(|f| super::blob::hash_stored(f, encoding)).with_context(|| format!("reading {path}"));
            match hashed.map(|h| h.to_hex().to_string()) {
                Ok(h) if h == name => None,
                Ok(h) => Some(problem(Some(h), "blob content does not match its hash".into())),
                Err(e) => Some(problem(None, format!("cannot hash: {e:#}"))),
            }
        }).collect::<Vec<_>>());

        problems.sort_by(|a, b| a.path.cmp(&b.path));
        if remove {
            for problem in &mut problems {
                let lock_name = match problem.kind {
                    EntryKind::Tree => format!("tree:{}", problem.expected),
                    EntryKind::Archive => format!("archive:{}", problem.expected),
                    EntryKind::Blob => format!("blob:{}", problem.expected),
                };
                let _lock = self.lock(&lock_name)?;
                self.remove_entry(&problem.path)
                    .with_context(|| format!("removing corrupt store entry {}", problem.path))?;
                if problem.kind == EntryKind::Archive {
                    // Drop archives/<sha>/ once its last file is gone
                    // (fails harmlessly when other names remain).
                    let archives = self.root.join("archives");
                    if let Some(dir) = problem.path.parent().filter(|d| d.parent() == Some(archives.as_path())) {
                        let _ = fs::remove_dir(dir);
                    }
                }
                problem.removed = true;
            }
        }
        report.problems = problems;
        Ok(report)
    }

}
