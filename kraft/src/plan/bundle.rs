//! A cached plan as one file, for the team cache: a tar of the plan cache
//! entry (`plan.json` and `prepared/`), zstd-compressed.
//!
//! A fresh machine whose plan key the team has already planned fetches the
//! bundle and unpacks it into its own plan cache; `plan_with` then finds a
//! local hit and make never runs. The bundle is trusted the way an action
//! entry is: the team cache's signed `ac/` document names its SHA-256 (see
//! `cache::http`), and unpacking lands in a temporary directory that only a
//! rename makes visible, so a bad bundle leaves nothing behind.
//!
//! The plan key already covers every input of planning (see [`super::key`]),
//! so a bundle published under it is the plan this machine would make.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use crate::cache::http::RemoteTier;

/// The file in a plan cache entry that holds its bundle, once packed.
pub const BUNDLE_FILE: &str = "bundle.tar.zst";
/// A bundle unpacks to at most this much (a hostile frame cannot fill the disk).
pub const MAX_UNPACKED: u64 = 4 << 30;

/// Packs `entry` (`plan.json`, `prepared/`) into `entry/bundle.tar.zst` and
/// returns its path. Entries are in name order; owners are left out.
pub fn pack(entry: &Utf8Path) -> Result<camino::Utf8PathBuf> {
    let dest = entry.join(BUNDLE_FILE);
    let tmp = tempfile::Builder::new().prefix(".bundle-").tempfile_in(entry).with_context(|| format!("creating a temporary file in {entry}"))?;
    let encoder = zstd::stream::write::Encoder::new(tmp.as_file(), crate::store::blob::ZSTD_LEVEL)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    tar.append_path_with_name(entry.join("plan.json"), "plan.json").with_context(|| format!("packing {entry}/plan.json"))?;
    tar.append_dir_all("prepared", entry.join("prepared")).with_context(|| format!("packing {entry}/prepared"))?;
    let encoder = tar.into_inner().with_context(|| format!("packing {entry}"))?;
    let mut file = encoder.finish().with_context(|| format!("compressing the bundle of {entry}"))?;
    file.flush()?;
    tmp.persist(&dest).map_err(|e| e.error).with_context(|| format!("writing {dest}"))?;
    Ok(dest)
}

/// Unpacks `bundle` as the plan cache entry `entry`: into a temporary
/// directory beside it, checked (a `plan.json` and a `prepared/` directory),
/// then renamed into place. An entry already there is left as it is.
pub fn unpack(bundle: &[u8], entry: &Utf8Path) -> Result<()> {
    let parent = entry.parent().context("a plan cache entry has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
    let tmp = tempfile::Builder::new().prefix(".plan-").tempdir_in(parent).with_context(|| format!("creating a temporary directory in {parent}"))?;
    let decoder = zstd::stream::read::Decoder::new(bundle).context("reading a plan bundle")?;
    let mut tar = tar::Archive::new(decoder.take(MAX_UNPACKED));
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(false);
    // `unpack` refuses absolute paths, `..` and writes through symlinks
    // that leave the directory.
    tar.unpack(tmp.path()).context("unpacking a plan bundle")?;
    let tmp_path = Utf8Path::from_path(tmp.path()).context("a temporary directory with a UTF-8 name")?;
    if !tmp_path.join("plan.json").is_file() || !tmp_path.join("prepared").is_dir() {
        bail!("the plan bundle has no plan.json or no prepared/ directory");
    }
    if entry.join("plan.json").exists() {
        return Ok(());
    }
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, entry) {
        let _ = std::fs::remove_dir_all(&kept);
        if !entry.join("plan.json").exists() {
            return Err(e).with_context(|| format!("moving a plan bundle to {entry}"));
        }
    }
    Ok(())
}

/// The bundle kind of a plan in the team cache.
const KIND: &str = "plan";

/// Fetches plan `key` from the team cache into `plans/<key>` when the plan
/// cache lacks it; returns the bundle's size when it did. A bundle that does
/// not unpack is an error (it was signed, so the publisher is at fault).
pub fn fetch(tier: &RemoteTier, plans: &Utf8Path, key: &str) -> Result<Option<u64>> {
    let entry = plans.join(key);
    if entry.join("plan.json").is_file() || !tier.enabled() {
        return Ok(None);
    }
    let Some(bundle) = tier.get_bundle(KIND, key) else { return Ok(None) };
    unpack(&bundle, &entry).with_context(|| format!("the team cache's plan {key}"))?;
    Ok(Some(bundle.len() as u64))
}

/// Publishes plan `key` (just made, in `plans/<key>`) to the team cache,
/// when this build may write there.
pub fn publish(tier: &RemoteTier, plans: &Utf8Path, key: &str) -> Result<()> {
    if !tier.writable() {
        return Ok(());
    }
    let path = pack(&plans.join(key))?;
    tier.put_bundle(KIND, key, path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_unpacks_to_the_entry_it_was_packed_from() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        let entry = root.join("a");
        std::fs::create_dir_all(entry.join("prepared/libmusl/src")).unwrap();
        std::fs::write(entry.join("plan.json"), b"{}").unwrap();
        std::fs::write(entry.join("prepared/libmusl/src/x.c"), b"int x;").unwrap();
        std::os::unix::fs::symlink("src/x.c", entry.join("prepared/libmusl/link")).unwrap();
        let tool = entry.join("prepared/conf");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let bundle = std::fs::read(pack(&entry).unwrap()).unwrap();

        let copy = root.join("b");
        unpack(&bundle, &copy).unwrap();
        assert_eq!(std::fs::read(copy.join("prepared/libmusl/src/x.c")).unwrap(), b"int x;");
        assert_eq!(std::fs::read_link(copy.join("prepared/libmusl/link")).unwrap().to_str(), Some("src/x.c"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(copy.join("prepared/conf")).unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111);
        assert!(!copy.join(BUNDLE_FILE).exists(), "the bundle does not contain itself");
    }

    #[test]
    fn a_bad_bundle_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        assert!(unpack(b"not zstd", &root.join("a")).is_err());
        // A well-formed archive without a plan is refused too.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(1);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "other", &b"x"[..]).unwrap();
        let frame = zstd::bulk::compress(&tar.into_inner().unwrap(), 3).unwrap();
        assert!(unpack(&frame, &root.join("a")).is_err());
        let left: Vec<_> = std::fs::read_dir(root).unwrap().collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
    }
}
