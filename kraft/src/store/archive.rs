//! Safe unpacking of origin archives (`.tar.gz` downloads, `git archive`
//! output) into a staging directory.
//!
//! An archive comes from the network, so every entry is checked before
//! anything is written, and the first bad entry aborts the unpacking with an
//! error naming the archive and the entry. Refused:
//!
//! * absolute paths and paths with a `..` component;
//! * symlinks with an absolute target, or whose target, resolved lexically
//!   from the link's directory, leaves the tree. `..` is only accepted as a
//!   leading component of a target (`../../include/x.h`): after a normal
//!   component it would be resolved by the kernel through whatever that
//!   component is (possibly another symlink), which no lexical check can
//!   vouch for;
//! * hard links whose target is not a regular file already unpacked from the
//!   same archive (they are unpacked as copies);
//! * character and block devices, fifos, sparse and other exotic entries;
//! * entries that would be written through a symlink (any parent component,
//!   or the entry itself, being a symlink created earlier), and symlinks or
//!   hard links replacing something that already exists.
//!
//! Modes are normalized: directories 0755, files 0755 when the owner exec bit
//! is set and 0644 otherwise. Ownership, setuid/setgid/sticky bits and
//! timestamps are not restored. Long names (GNU and pax) are handled by the
//! `tar` crate; pax global headers (which `git archive` writes, holding the
//! commit id) are skipped.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use tar::EntryType;

use crate::diag::Diagnostic;
use crate::util::tree_path::{self, check_symlink_target};

/// Unpack a gzip-compressed tarball into `dest` (an existing directory,
/// normally a fresh staging directory). See the module docs for what is
/// refused.
pub fn unpack_tar_gz(archive: &Utf8Path, dest: &Utf8Path) -> anyhow::Result<()> {
    let file = fs::File::open(archive).with_context(|| format!("opening archive {archive}"))?;
    let reader = flate2::read::MultiGzDecoder::new(io::BufReader::new(file));
    unpack_tar_named(reader, dest, archive.as_str())
}

/// Unpack a plain tar stream (e.g. `git archive` output) into `dest`.
/// Errors call the archive "tar stream"; use [`unpack_tar_named`] to name it.
pub fn unpack_tar(reader: impl Read, dest: &Utf8Path) -> anyhow::Result<()> {
    unpack_tar_named(reader, dest, "tar stream")
}

/// [`unpack_tar`], with `name` (a path, a URL, `git archive <commit>`...)
/// used in error messages.
pub fn unpack_tar_named(reader: impl Read, dest: &Utf8Path, name: &str) -> anyhow::Result<()> {
    let meta = fs::metadata(dest).with_context(|| format!("unpacking {name}: destination {dest}"))?;
    anyhow::ensure!(meta.is_dir(), "unpacking {name}: destination {dest} is not a directory");
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().with_context(|| format!("reading archive {name}"))?;
    for entry in entries {
        let mut entry = entry.with_context(|| format!("reading archive {name}"))?;
        unpack_entry(&mut entry, dest.as_std_path(), name)?;
    }
    Ok(())
}

/// If `dir` holds exactly one entry and it is a directory (the usual
/// `project-1.2.3/` wrapper of release tarballs), return its path.
pub fn single_top_level_dir(dir: &Utf8Path) -> anyhow::Result<Option<Utf8PathBuf>> {
    let mut entries = fs::read_dir(dir).with_context(|| format!("listing {dir}"))?;
    let Some(first) = entries.next() else { return Ok(None) };
    let first = first.with_context(|| format!("listing {dir}"))?;
    if entries.next().is_some() || !first.file_type()?.is_dir() {
        return Ok(None);
    }
    let name = first.file_name();
    let Some(name) = name.to_str() else { return Ok(None) };
    Ok(Some(dir.join(name)))
}

fn refuse(archive: &str, entry: &[u8], why: impl std::fmt::Display) -> anyhow::Error {
    Diagnostic::new(format!(
        "refusing to unpack archive {archive}: entry `{}` {why}",
        String::from_utf8_lossy(entry)
    ))
    .help("the archive is malformed or hostile; check where it came from (URL, mirror, commit) before trusting it")
    .into()
}

/// Turn an archive path into a list of normal components: no root, no `..`
/// (the checks live in `util::tree_path`, shared with git exports).
fn archive_components<'a>(raw: &'a [u8], archive: &str, what: &str) -> anyhow::Result<Vec<&'a OsStr>> {
    tree_path::normal_components(raw).map_err(|why| match why {
        tree_path::PathProblem::Absolute => refuse(archive, raw, format_args!("has an absolute {what}")),
        why => refuse(archive, raw, format_args!("{why} in its {what}")),
    })
}

/// Check that no prefix of `components` (the parents, and the entry itself
/// when `include_last`) is a symlink under `dest`. Returns the full path.
fn no_symlink_on_path(dest: &Path, components: &[&OsStr], include_last: bool, archive: &str, raw: &[u8]) -> anyhow::Result<PathBuf> {
    tree_path::no_symlink_on_path(dest, components, include_last).map_err(|why| refuse(archive, raw, why))
}

fn create_parents(dest: &Path, components: &[&OsStr]) -> io::Result<()> {
    let mut path = dest.to_path_buf();
    for c in &components[..components.len().saturating_sub(1)] {
        path.push(c);
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dest: &Path, archive: &str) -> anyhow::Result<()> {
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink) {
        return Ok(());
    }
    let raw: Vec<u8> = entry.path_bytes().into_owned();
    let components = archive_components(&raw, archive, "path")?;

    match kind {
        EntryType::Regular | EntryType::Continuous => {}
        EntryType::Directory | EntryType::Symlink | EntryType::Link => {}
        EntryType::Char | EntryType::Block => return Err(refuse(archive, &raw, "is a device node")),
        EntryType::Fifo => return Err(refuse(archive, &raw, "is a fifo")),
        EntryType::GNUSparse => return Err(refuse(archive, &raw, "is a sparse file (unsupported)")),
        other => return Err(refuse(archive, &raw, format_args!("has unsupported type {other:?}"))),
    }

    if components.is_empty() {
        if kind == EntryType::Directory {
            return Ok(()); // `./`: the destination itself.
        }
        return Err(refuse(archive, &raw, "has an empty path"));
    }

    let path = no_symlink_on_path(dest, &components, true, archive, &raw)?;
    let existing = match fs::symlink_metadata(&path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("checking {}", path.display()))),
    };
    let write_err = |e: io::Error| anyhow::Error::new(e).context(format!("unpacking {archive}: writing {}", path.display()));

    match kind {
        EntryType::Directory => {
            match &existing {
                Some(m) if m.is_dir() => {}
                Some(_) => return Err(refuse(archive, &raw, "is a directory replacing a file unpacked earlier")),
                None => {
                    create_parents(dest, &components).map_err(write_err)?;
                    fs::DirBuilder::new().mode(0o755).create(&path).map_err(write_err)?;
                }
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(write_err)?;
        }
        EntryType::Regular | EntryType::Continuous => {
            match &existing {
                Some(m) if m.is_file() => fs::remove_file(&path).map_err(write_err)?,
                Some(_) => return Err(refuse(archive, &raw, "is a file replacing a directory unpacked earlier")),
                None => create_parents(dest, &components).map_err(write_err)?,
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            let mode = if mode & 0o100 != 0 { 0o755 } else { 0o644 };
            // create_new: O_EXCL never follows a symlink at the last component.
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path).map_err(write_err)?;
            io::copy(entry, &mut file)
                .with_context(|| format!("unpacking {archive}: entry `{}`", String::from_utf8_lossy(&raw)))?;
            file.set_permissions(fs::Permissions::from_mode(mode)).map_err(write_err)?;
        }
        EntryType::Symlink => {
            if existing.is_some() {
                return Err(refuse(archive, &raw, "is a symlink replacing something unpacked earlier"));
            }
            let target: Cow<'_, [u8]> = entry
                .link_name_bytes()
                .ok_or_else(|| refuse(archive, &raw, "is a symlink without a target"))?;
            check_symlink_target(&target, components.len() - 1)
                .map_err(|why| refuse(archive, &raw, format_args!("is a symlink to `{}`, which {why}", String::from_utf8_lossy(&target))))?;
            create_parents(dest, &components).map_err(write_err)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(write_err)?;
        }
        EntryType::Link => {
            if existing.is_some() {
                return Err(refuse(archive, &raw, "is a hard link replacing something unpacked earlier"));
            }
            let target: Vec<u8> = entry
                .link_name_bytes()
                .ok_or_else(|| refuse(archive, &raw, "is a hard link without a target"))?
                .into_owned();
            let target_components = archive_components(&target, archive, "hard link target")
                .map_err(|_| refuse(archive, &raw, format_args!("is a hard link to `{}`, which leaves the tree", String::from_utf8_lossy(&target))))?;
            if target_components.is_empty() {
                return Err(refuse(archive, &raw, "is a hard link to the archive root"));
            }
            let source = no_symlink_on_path(dest, &target_components, true, archive, &raw)?;
            match fs::symlink_metadata(&source) {
                Ok(m) if m.is_file() => {}
                _ => {
                    return Err(refuse(
                        archive,
                        &raw,
                        format_args!("is a hard link to `{}`, which is not a file unpacked earlier", String::from_utf8_lossy(&target)),
                    ))
                }
            }
            create_parents(dest, &components).map_err(write_err)?;
            // A copy, not a link: store trees never share inodes.
            let mut from = fs::File::open(&source).map_err(write_err)?;
            let mode = from.metadata().map_err(write_err)?.permissions().mode() & 0o777;
            let mut to = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&path).map_err(write_err)?;
            io::copy(&mut from, &mut to).map_err(write_err)?;
            to.set_permissions(fs::Permissions::from_mode(mode)).map_err(write_err)?;
        }
        _ => unreachable!(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_symlink_target;

    #[test]
    fn symlink_targets() {
        assert!(check_symlink_target(b"a", 0).is_ok());
        assert!(check_symlink_target(b"./a/b", 0).is_ok());
        assert!(check_symlink_target(b"../a", 1).is_ok());
        assert!(check_symlink_target(b"../a", 0).is_err());
        assert!(check_symlink_target(b"../../a", 1).is_err());
        assert!(check_symlink_target(b"/etc/passwd", 3).is_err());
        assert!(check_symlink_target(b"a/../../b", 5).is_err());
        assert!(check_symlink_target(b"..", 1).is_ok());
        assert!(check_symlink_target(b"", 1).is_err());
    }
}
