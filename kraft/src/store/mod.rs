//! The content-addressed store.
//!
//! ```text
//! <root>/
//!   trees/<blake3-hex>/              source trees, read-only (files 0444/0555, dirs 0555)
//!   archives/<sha256-hex>/<name>     origin archives, verified against their sha256
//!   blobs/<aa>/<blake3-hex>          build outputs (single files), read-only
//!   tmp/                             staging, same file system as the above
//!   locks/                           lock files (never deleted)
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

pub mod archive;
pub mod nar;

use crate::util::fs::make_writable;
use crate::util::hash::{hex, is_hex64, sha256_file};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::diag::Diagnostic;

/// A content-addressed store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: Utf8PathBuf,
}

/// An exclusive lock on a name, held until dropped. Works across processes
/// and across `Store` values within one process (it is an `flock` on a fresh
/// open file description).
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
    path: Utf8PathBuf,
}

impl StoreLock {
    /// The lock file (for messages).
    pub fn path(&self) -> &Utf8Path {
        &self.path
    }
}

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
        let store = Store { root };
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

    /// Exclusive cross-process lock on `name` (any string: a URL, a hash);
    /// blocks until available, released on drop. Lock files stay in
    /// `locks/` (deleting them would race with other lockers).
    pub fn lock(&self, name: &str) -> anyhow::Result<StoreLock> {
        let path = self.lock_path(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening lock file {path}"))?;
        file.lock().with_context(|| format!("locking {path} (for {name})"))?;
        Ok(StoreLock { _file: file, path })
    }

    /// Like [`Store::lock`] but returns `None` instead of waiting.
    pub fn try_lock(&self, name: &str) -> anyhow::Result<Option<StoreLock>> {
        let path = self.lock_path(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening lock file {path}"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file, path })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(anyhow::Error::new(e).context(format!("locking {path}"))),
        }
    }

    fn lock_path(&self, name: &str) -> Utf8PathBuf {
        // A readable prefix for humans, the hash for uniqueness.
        let readable: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .take(48)
            .collect();
        let hash = blake3::hash(name.as_bytes()).to_hex();
        self.root.join("locks").join(format!("{readable}-{}.lock", &hash[..16]))
    }

    // ---------------------------------------------------------------- trees

    pub fn tree_path(&self, blake3_hex: &str) -> Utf8PathBuf {
        self.root.join("trees").join(blake3_hex)
    }

    pub fn has_tree(&self, blake3_hex: &str) -> bool {
        is_hex64(blake3_hex) && self.tree_path(blake3_hex).is_dir()
    }

    /// A fresh directory inside `tmp/` (same file system as the store),
    /// removed on drop (unless [`Store::insert_tree`] moved it into place).
    pub fn staging_dir(&self) -> anyhow::Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(self.tmp_dir())
            .with_context(|| format!("creating a staging directory in {}", self.tmp_dir()))
    }

    /// Insert the directory `staged` into `trees/` and return its
    /// [`tree_hash`].
    ///
    /// A directory inside this store's `tmp/` (e.g. from
    /// [`Store::staging_dir`]) is moved; anything else is copied first, so
    /// user directories are never taken away. The tree is hashed in `tmp/`,
    /// checked against `expected` (an error naming both hashes and `origin`,
    /// and nothing inserted, on mismatch), made read-only and renamed into
    /// place. If the tree is already present, nothing is moved and the hash
    /// is returned. Safe against concurrent inserts from any process.
    pub fn insert_tree(&self, staged: &Utf8Path, expected: Option<&str>, origin: &str) -> anyhow::Result<String> {
        if let Some(expected) = expected {
            check_hash_arg(expected, "expected tree hash", origin)?;
        }
        let meta = fs::symlink_metadata(staged).with_context(|| format!("reading staged tree {staged}"))?;
        anyhow::ensure!(meta.is_dir(), "staged tree {staged} (from {origin}) is not a directory");

        // Move only what already lives in our tmp/; copy everything else.
        let mut _copy: Option<tempfile::TempDir> = None;
        let source: Utf8PathBuf = if self.is_in_tmp(staged)? {
            staged.to_owned()
        } else {
            let tmp = self.staging_dir()?;
            let dst = Utf8Path::from_path(tmp.path()).expect("store paths are UTF-8").join("tree");
            crate::util::fs::copy_tree(staged, &dst)
                .with_context(|| format!("copying {staged} into the store"))?;
            _copy = Some(tmp);
            dst
        };

        let actual = tree_hash(&source)?;
        if let Some(expected) = expected {
            if !expected.eq_ignore_ascii_case(&actual) {
                return Err(hash_mismatch("blake3 tree hash of the source tree", origin, expected, &actual));
            }
        }

        let _lock = self.lock(&format!("tree:{actual}"))?;
        let dest = self.tree_path(&actual);
        if dest.is_dir() {
            return Ok(actual);
        }
        set_tree_readonly(source.as_std_path(), false)?;
        match fs::rename(&source, &dest) {
            Ok(()) => {
                // Directories need write permission to be moved to another
                // parent, so the root goes read-only last.
                fs::set_permissions(&dest, fs::Permissions::from_mode(0o555))
                    .with_context(|| format!("making {dest} read-only"))?;
                Ok(actual)
            }
            Err(_) if dest.is_dir() => {
                // Someone without our lock (an older tool?) won: same content.
                let _ = make_writable(&source);
                Ok(actual)
            }
            Err(e) => {
                let _ = make_writable(&source);
                Err(anyhow::Error::new(e).context(format!("moving {source} to {dest}")))
            }
        }
    }

    fn is_in_tmp(&self, path: &Utf8Path) -> anyhow::Result<bool> {
        let tmp = fs::canonicalize(self.tmp_dir()).with_context(|| format!("resolving {}", self.tmp_dir()))?;
        let path = fs::canonicalize(path).with_context(|| format!("resolving {path}"))?;
        Ok(path != tmp && path.starts_with(&tmp))
    }

    // ------------------------------------------------------------- archives

    pub fn archive_path(&self, sha256_hex: &str, file_name: &str) -> Utf8PathBuf {
        self.root.join("archives").join(sha256_hex).join(file_name)
    }

    /// The archive with this sha256, under any file name, if present.
    pub fn find_archive(&self, sha256_hex: &str) -> Option<Utf8PathBuf> {
        if !is_hex64(sha256_hex) {
            return None;
        }
        let dir = self.root.join("archives").join(sha256_hex);
        let entries = fs::read_dir(&dir).ok()?;
        let mut names: Vec<String> =
            entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        names.into_iter().next().map(|n| dir.join(n))
    }

    /// Copy `file` in as `archives/<sha256>/<file_name>`, checking its
    /// sha256 against `expected_sha256` (an error naming both hashes and
    /// `origin` on mismatch, and nothing inserted). Idempotent; the file
    /// appears atomically, read-only.
    pub fn insert_archive(
        &self,
        file: &Utf8Path,
        file_name: &str,
        expected_sha256: &str,
        origin: &str,
    ) -> anyhow::Result<Utf8PathBuf> {
        check_hash_arg(expected_sha256, "expected sha256", origin)?;
        check_file_name(file_name)?;
        let expected = expected_sha256.to_ascii_lowercase();
        let dest = self.archive_path(&expected, file_name);
        if dest.is_file() {
            return Ok(dest);
        }

        // Copy into tmp/ while hashing: one read of the source.
        let mut staged = tempfile::Builder::new()
            .prefix("archive-")
            .tempfile_in(self.tmp_dir())
            .with_context(|| format!("creating a temporary file in {}", self.tmp_dir()))?;
        let mut source = fs::File::open(file).with_context(|| format!("opening {file}"))?;
        let mut hasher = Sha256::new();
        copy_hashing(&mut source, staged.as_file_mut(), |b| hasher.update(b))
            .with_context(|| format!("copying {file} into the store"))?;
        let actual = hex(&hasher.finalize());
        if actual != expected {
            return Err(hash_mismatch("sha256 of the archive", origin, &expected, &actual));
        }
        staged.as_file().sync_all().ok();
        staged.as_file().set_permissions(fs::Permissions::from_mode(0o444))?;

        let _lock = self.lock(&format!("archive:{expected}"))?;
        if dest.is_file() {
            return Ok(dest);
        }
        let dir = dest.parent().expect("archive path has a parent");
        if !dir.is_dir() {
            // Make the directory appear together with its file.
            let stage_dir = self.staging_dir()?;
            let inner = Utf8Path::from_path(stage_dir.path()).expect("store paths are UTF-8").join("d");
            fs::DirBuilder::new().mode(0o755).create(&inner)?;
            staged.persist(inner.join(file_name)).map_err(|e| e.error)?;
            match fs::rename(&inner, dir) {
                Ok(()) => {}
                Err(_) if dir.is_dir() => {
                    fs::rename(inner.join(file_name), &dest).with_context(|| format!("moving archive to {dest}"))?;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("moving archive to {dest}"))),
            }
        } else {
            staged.persist(&dest).map_err(|e| e.error).with_context(|| format!("moving archive to {dest}"))?;
        }
        Ok(dest)
    }

    // ---------------------------------------------------------------- blobs

    pub fn blob_path(&self, blake3_hex: &str) -> Utf8PathBuf {
        let prefix = blake3_hex.get(..2).unwrap_or("__");
        self.root.join("blobs").join(prefix).join(blake3_hex)
    }

    pub fn has_blob(&self, blake3_hex: &str) -> bool {
        is_hex64(blake3_hex) && self.blob_path(blake3_hex).is_file()
    }

    /// Copy a file in as a blob (read-only); returns its blake3 hex.
    pub fn insert_blob_file(&self, file: &Utf8Path) -> anyhow::Result<String> {
        let mut source = fs::File::open(file).with_context(|| format!("opening {file}"))?;
        self.insert_blob_reader(&mut source).with_context(|| format!("storing {file}"))
    }

    /// Store bytes as a blob; returns their blake3 hex.
    pub fn insert_blob_bytes(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.has_blob(&hash) {
            return Ok(hash);
        }
        let mut staged = self.blob_tempfile()?;
        staged.write_all(bytes)?;
        self.publish_blob(staged, &hash)?;
        Ok(hash)
    }

    fn blob_tempfile(&self) -> anyhow::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .with_context(|| format!("creating a temporary file in {}", self.tmp_dir()))
    }

    fn insert_blob_reader(&self, reader: &mut impl Read) -> anyhow::Result<String> {
        let mut staged = self.blob_tempfile()?;
        let mut hasher = blake3::Hasher::new();
        copy_hashing(reader, staged.as_file_mut(), |b| {
            hasher.update(b);
        })?;
        let hash = hasher.finalize().to_hex().to_string();
        if !self.has_blob(&hash) {
            self.publish_blob(staged, &hash)?;
        }
        Ok(hash)
    }

    /// Rename a complete temp file into place. Same name means same content,
    /// so replacing a concurrent writer's identical file is harmless and no
    /// lock is needed.
    fn publish_blob(&self, staged: tempfile::NamedTempFile, hash: &str) -> anyhow::Result<()> {
        // No fsync: a build writes a blob per object, and an fsync each costs
        // more than many compiles. A blob cut short by a crash cannot be used
        // wrongly: every restore rehashes it and treats a mismatch as a miss
        // (and `cache verify` removes it).
        staged.as_file().set_permissions(fs::Permissions::from_mode(0o444))?;
        let dest = self.blob_path(hash);
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        staged.persist(&dest).map_err(|e| e.error).with_context(|| format!("moving blob to {dest}"))?;
        Ok(())
    }

    // --------------------------------------------------------------- verify

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

        // Blobs: blobs/<aa>/<hash>.
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
        problems.extend(blob_files.par_iter().filter_map(|(prefix, name, path)| {
            let problem = |actual: Option<String>, reason: String| VerifyProblem {
                kind: EntryKind::Blob,
                path: path.clone(),
                expected: if is_hex64(name) { name.clone() } else { String::new() },
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
            match crate::util::hash::blake3_file(path).map(|(h, _)| h.to_hex().to_string()) {
                Ok(h) if h == *name => None,
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

    /// Make an entry disappear atomically (rename into tmp/), then delete it.
    fn remove_entry(&self, path: &Utf8Path) -> anyhow::Result<()> {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return Ok(()); // already gone
        };
        if meta.is_dir() {
            // Moving a directory to another parent needs write permission on it.
            fs::set_permissions(path, fs::Permissions::from_mode((meta.mode() & 0o777) | 0o700))?;
        }
        let trash = tempfile::Builder::new().prefix("trash-").tempdir_in(self.tmp_dir())?;
        let target = trash.path().join("x");
        fs::rename(path, &target).with_context(|| format!("moving {path} out of the store"))?;
        make_writable(&target)?;
        let meta = fs::symlink_metadata(&target)?;
        if meta.is_dir() {
            fs::remove_dir_all(&target)?;
        } else {
            fs::remove_file(&target)?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ hashing

/// Entry of a tree, as collected by [`walk_tree`].
enum Node {
    Dir,
    File { path: PathBuf, exec: bool },
    Symlink { target: Vec<u8> },
}

/// blake3 hash (lowercase hex) of the directory tree at `dir`.
///
/// The root itself contributes nothing but its contents (its name and mode do
/// not matter; it may be a symlink to a directory). The hash is
/// `blake3(HEADER || record*)` with `HEADER = b"kraft-tree-v1\n"` and one
/// record per entry below the root, in ascending bytewise order of the
/// entry's relative path (components joined by `/`, no leading `./`).
/// Integers are u64 little-endian; `str(x)` is `len(x)` then the bytes of
/// `x`. A record is one tag byte, then `str(relative path)`, then:
///
/// | tag   | entry                                  | followed by                                   |
/// |-------|----------------------------------------|-----------------------------------------------|
/// | `'d'` | directory                              | nothing                                       |
/// | `'f'` | regular file, owner exec bit clear     | size, then the 32-byte blake3 of its contents |
/// | `'x'` | regular file, owner exec bit (0o100) set | size, then the 32-byte blake3 of its contents |
/// | `'l'` | symlink (never followed)               | `str(target)`                                 |
///
/// Nothing else (other mode bits, owner, times, hard links) counts. Empty
/// directories count. Other file types (fifos, sockets, devices) are an
/// error. The exec bit is the owner's, as in Nix and git. File contents are
/// hashed in parallel.
pub fn tree_hash(dir: &Utf8Path) -> anyhow::Result<String> {
    let meta = fs::metadata(dir).with_context(|| format!("reading {dir}"))?;
    anyhow::ensure!(meta.is_dir(), "{dir} is not a directory");
    let mut entries = Vec::new();
    walk_tree(dir.as_std_path(), &mut Vec::new(), &mut entries)?;
    entries.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));

    let file_hashes: Vec<Option<(u64, [u8; 32])>> = entries
        .par_iter()
        .map(|(_, node)| match node {
            Node::File { path, .. } => crate::util::hash::blake3_file(path).map(|(h, size)| Some((size, *h.as_bytes()))),
            _ => Ok(None),
        })
        .collect::<anyhow::Result<_>>()?;

    let mut hasher = blake3::Hasher::new();
    hasher.update(b"kraft-tree-v1\n");
    let put = |hasher: &mut blake3::Hasher, bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    for ((rel, node), file_hash) in entries.iter().zip(&file_hashes) {
        match node {
            Node::Dir => {
                hasher.update(b"d");
                put(&mut hasher, rel);
            }
            Node::File { exec, .. } => {
                hasher.update(if *exec { b"x" } else { b"f" });
                put(&mut hasher, rel);
                let (size, digest) = file_hash.expect("hashed above");
                hasher.update(&size.to_le_bytes());
                hasher.update(&digest);
            }
            Node::Symlink { target } => {
                hasher.update(b"l");
                put(&mut hasher, rel);
                put(&mut hasher, target);
            }
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

fn walk_tree(dir: &Path, rel: &mut Vec<u8>, out: &mut Vec<(Vec<u8>, Node)>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(entry.file_name().as_bytes());
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push((rel.clone(), Node::Dir));
            walk_tree(&path, rel, out)?;
        } else if ft.is_file() {
            out.push((rel.clone(), Node::File { exec: meta.mode() & 0o100 != 0, path }));
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).with_context(|| format!("reading symlink {}", path.display()))?;
            out.push((rel.clone(), Node::Symlink { target: target.into_os_string().into_vec() }));
        } else {
            bail!("{} is not a regular file, directory or symlink; it cannot be part of a source tree", path.display());
        }
        rel.truncate(len);
    }
    Ok(())
}

fn check_hash_arg(hash: &str, what: &str, origin: &str) -> anyhow::Result<()> {
    let lower = hash.to_ascii_lowercase();
    if !is_hex64(&lower) {
        return Err(Diagnostic::new(format!("{what} `{hash}` for {origin} is not 64 hexadecimal digits"))
            .help("hashes in kraft.lock are lowercase hex; regenerate the lock with `cargo xtask lock`")
            .into());
    }
    Ok(())
}

fn check_file_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("archive file name `{name}` must be a single path component");
    }
    Ok(())
}

fn hash_mismatch(what: &str, origin: &str, expected: &str, actual: &str) -> anyhow::Error {
    Diagnostic::new(format!(
        "{what} {origin} does not match kraft.lock: expected {expected}, got {actual}"
    ))
    .help(
        "the upstream content changed or a mirror serves something else; if the new content is \
         legitimate, re-pin it with `cargo xtask update <app> <component>` (or fix the recipe's \
         sha256); otherwise check the URL, KRAFT_MIRRORS and KRAFT_ARCHIVE_DIR",
    )
    .into()
}

/// Copy `reader` into `writer`, feeding every chunk to `feed`.
fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write, mut feed: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        feed(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// `(name, path)` of a directory's entries, sorted; names that are not UTF-8
/// are reported with a lossy name (they are malformed store entries anyway).
fn list_dir(dir: &Utf8Path) -> anyhow::Result<Vec<(String, Utf8PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name.clone(), dir.join(name)));
    }
    out.sort();
    Ok(out)
}

/// Files 0444 (0555 if owner-executable), directories 0555; symlinks
/// untouched. The root directory too when `include_root`.
fn set_tree_readonly(root: &Path, include_root: bool) -> anyhow::Result<()> {
    fn walk(dir: &Path) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                walk(&path)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o555))?;
            } else if meta.is_file() {
                let mode = if meta.mode() & 0o100 != 0 { 0o555 } else { 0o444 };
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            }
        }
        Ok(())
    }
    walk(root).with_context(|| format!("making {} read-only", root.display()))?;
    if include_root {
        fs::set_permissions(root, fs::Permissions::from_mode(0o555))?;
    }
    Ok(())
}
