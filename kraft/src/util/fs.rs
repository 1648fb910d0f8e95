//! File-system helpers. Every error names the path and the operation.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use anyhow::{bail, Context, Result};
use std::ffi::OsStr;
use std::path::Path;

use camino::{Utf8Path, Utf8PathBuf};

/// Write `bytes` to `path` through a temporary file in the same directory
/// and a rename, so readers see the old or the new contents, never a mix.
/// The parent directory is created if missing.
pub fn write_atomic(path: &Utf8Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_str().is_empty()).unwrap_or(Utf8Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating directory {dir}"))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).with_context(|| format!("creating a temporary file in {dir}"))?;
    tmp.write_all(bytes).with_context(|| format!("writing {path}"))?;
    tmp.as_file().sync_data().with_context(|| format!("syncing {path}"))?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming a temporary file to {path}"))?;
    Ok(())
}

/// Copy the tree `from` into `to` (created if missing): directories, regular
/// files with their owner-exec bit (0755 or 0644), and symlinks as symlinks.
/// An existing file or link at a destination is replaced. Other file types
/// (devices, sockets, fifos) are an error. Names need not be UTF-8.
pub fn copy_tree(from: impl AsRef<Path>, to: impl AsRef<Path>) -> Result<()> {
    copy_tree_except(from, to, &[])
}

/// [`copy_tree`], leaving out every entry whose name is in `skip` (at any
/// depth), e.g. `.git`.
pub fn copy_tree_except(from: impl AsRef<Path>, to: impl AsRef<Path>, skip: &[&str]) -> Result<()> {
    copy_dir(from.as_ref(), to.as_ref(), skip)
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o755).create(to).with_context(|| format!("creating directory {}", to.display()))?;
    for entry in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry.with_context(|| format!("listing {}", from.display()))?;
        let name = entry.file_name();
        if skip.iter().any(|s| OsStr::new(s) == name) {
            continue;
        }
        let src = from.join(&name);
        let dst = to.join(&name);
        let meta = fs::symlink_metadata(&src).with_context(|| format!("reading the metadata of {}", src.display()))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            copy_dir(&src, &dst, skip)?;
        } else if ft.is_file() {
            let mode = if meta.mode() & 0o100 != 0 { 0o755 } else { 0o644 };
            remove_if_present(&dst)?;
            let mut input = fs::File::open(&src).with_context(|| format!("opening {}", src.display()))?;
            let mut output = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&dst)
                .with_context(|| format!("creating {}", dst.display()))?;
            io::copy(&mut input, &mut output).with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            output.set_permissions(fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {}", dst.display()))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).with_context(|| format!("reading the link {}", src.display()))?;
            remove_if_present(&dst)?;
            std::os::unix::fs::symlink(&target, &dst).with_context(|| format!("creating the link {}", dst.display()))?;
        } else {
            bail!("{} is not a regular file, directory or symlink", src.display());
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Give the owner write access to every directory and file under `root`,
/// so a read-only tree (store trees are 0555/0444) can be removed.
pub fn make_writable(root: impl AsRef<Path>) -> Result<()> {
    let root = root.as_ref();
    let meta = fs::symlink_metadata(root).with_context(|| format!("reading the metadata of {}", root.display()))?;
    if meta.is_dir() {
        fs::set_permissions(root, fs::Permissions::from_mode((meta.mode() & 0o777) | 0o700))
            .with_context(|| format!("making {} writable", root.display()))?;
        for entry in fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
            make_writable(entry.with_context(|| format!("listing {}", root.display()))?.path())?;
        }
    } else if meta.is_file() {
        fs::set_permissions(root, fs::Permissions::from_mode((meta.mode() & 0o777) | 0o200))
            .with_context(|| format!("making {} writable", root.display()))?;
    }
    Ok(())
}

/// Remove a tree that may hold read-only directories. Missing is fine.
pub fn remove_tree(dir: &Utf8Path) -> Result<()> {
    if fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    make_writable(dir)?;
    fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))
}

/// Trees to remove when the command is done ([`remove_deferred`]).
static DEFERRED: std::sync::Mutex<Vec<Utf8PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Removes `dir` when the command is done, not now (see
/// `plan::cache::set_aside` for why).
pub fn remove_later(dir: Utf8PathBuf) {
    DEFERRED.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
}

/// Removes every tree given to [`remove_later`]; one that cannot be is
/// left (the next set-aside of the same dir removes it first).
pub fn remove_deferred() {
    let dirs = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs {
        let _ = remove_tree(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_links_and_modes_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(tmp.path()).unwrap();
        let from = root.join("from");
        fs::create_dir_all(from.join("d")).unwrap();
        fs::write(from.join("d/x"), "x").unwrap();
        fs::write(from.join("run"), "#!/bin/sh").unwrap();
        fs::set_permissions(from.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("d/x", from.join("l")).unwrap();
        let to = root.join("to");
        copy_tree(&from, &to).unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(fs::read_to_string(to.join("l")).unwrap(), "x");
        assert_eq!(fs::metadata(to.join("run")).unwrap().mode() & 0o777, 0o755);
        fs::set_permissions(to.join("d"), fs::Permissions::from_mode(0o555)).unwrap();
        remove_tree(&to).unwrap();
        assert!(!to.exists());
    }

    #[test]
    fn write_atomic_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = Utf8Path::from_path(tmp.path()).unwrap().join("a/b");
        write_atomic(&path, b"1").unwrap();
        write_atomic(&path, b"2").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"2");
    }
}
