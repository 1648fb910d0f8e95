//! Source trees in the store (`trees/<blake3>/`, read-only) and the tree
//! hash that names them.

use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};
use rayon::prelude::*;

use super::entry::{check_hash_arg, hash_mismatch};
use super::Store;
use crate::util::fs::make_writable;
use crate::util::hash::is_hex64;

impl Store {
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

}

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
