//! A plan cache entry as files: the prepared build dir packed into one
//! zstd-compressed tar, and the entry shared through the team cache.
//!
//! The prepared tree (unpacked and patched origin sources, kconfig tools,
//! generated headers: ~4,300 files, 32 MiB for helloworld+musl) packs into
//! ~3 MiB, so the store keeps it packed and a plan cache hit unpacks it.
//!
//! A fresh machine whose plan key the team has already planned fetches the
//! entry's two files (`plan.json`, `prepared.tar.zst`) into its own plan
//! cache; `plan_with` then finds a local hit and make never runs. They are
//! trusted the way an action entry is: the team cache's signed `ac/`
//! document names their SHA-256s (see `cache::http`), and they land in a
//! temporary directory that only a rename makes visible. The shared plan key
//! they are published under covers every input of planning, tools by content
//! (see [`super::key`]), so the entry is the plan this machine would make.

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::cache::{PLAN_FILE, PREPARED_FILE};
use super::PlanInput;
use crate::cache::http::RemoteTier;
use crate::exec::sandbox::Sandbox;

/// A packed tree unpacks to at most this much (a hostile frame cannot fill the disk).
pub const MAX_UNPACKED: u64 = 4 << 30;
/// The bundle kind of a plan in the team cache.
const KIND: &str = "plan";
/// The files of a plan cache entry, in the order they are shared.
const FILES: [&str; 2] = [PLAN_FILE, PREPARED_FILE];

/// Packs the tree `dir` into `dest` (a tar in name order, without owners
/// or times, zstd-compressed), through a temporary file and a rename.
pub fn pack_tree(dir: &Utf8Path, dest: &Utf8Path) -> Result<()> {
    let parent = dest.parent().context("a packed tree has a parent directory")?;
    let tmp = tempfile::Builder::new().prefix(".pack-").tempfile_in(parent).with_context(|| format!("creating a temporary file in {parent}"))?;
    let encoder = zstd::stream::write::Encoder::new(tmp.as_file(), crate::store::blob::ZSTD_LEVEL)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir).with_context(|| format!("packing {dir}"))?;
    let encoder = tar.into_inner().with_context(|| format!("packing {dir}"))?;
    let mut file = encoder.finish().with_context(|| format!("compressing {dir}"))?;
    file.flush()?;
    tmp.persist(dest).map_err(|e| e.error).with_context(|| format!("writing {dest}"))?;
    Ok(())
}

/// Unpacks a tree packed by [`pack_tree`] into the existing directory `dir`.
/// Files get the current time (as a copy would), not the packed one.
pub fn unpack_tree(packed: &[u8], dir: &Utf8Path) -> Result<()> {
    let decoder = zstd::stream::read::Decoder::new(packed).context("reading a packed tree")?;
    let mut tar = tar::Archive::new(decoder.take(MAX_UNPACKED));
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(false);
    // `unpack` refuses absolute paths, `..` and writes through symlinks
    // that leave the directory.
    tar.unpack(dir).with_context(|| format!("unpacking a packed tree into {dir}"))
}

/// Fetches the plan of `input` from the team cache into `plans/<key>` when
/// the plan cache lacks it; returns the bytes fetched when it did. The team
/// cache names it by the shared plan key (tools by content: see
/// [`super::key`]). A `plan.json` of another format is an error (it was
/// signed: the publisher is at fault).
pub fn fetch(tier: &RemoteTier, plans: &Utf8Path, key: &str, input: &PlanInput, sandbox: &Sandbox) -> Result<Option<u64>> {
    let entry = plans.join(key);
    if entry.join(PLAN_FILE).is_file() || !tier.enabled() {
        return Ok(None);
    }
    let shared = super::key::shared_plan_key(input, sandbox)?;
    let Some(files) = tier.get_bundle(KIND, &shared, &FILES) else { return Ok(None) };
    std::fs::create_dir_all(plans).with_context(|| format!("creating {plans}"))?;
    let tmp = tempfile::Builder::new().prefix(".plan-").tempdir_in(plans).with_context(|| format!("creating a temporary directory in {plans}"))?;
    let tmp_path = Utf8Path::from_path(tmp.path()).context("a temporary directory with a UTF-8 name")?;
    let mut bytes = 0;
    for (name, data) in FILES.iter().zip(&files) {
        std::fs::write(tmp_path.join(name), data).with_context(|| format!("writing {tmp_path}/{name}"))?;
        bytes += data.len() as u64;
    }
    // A packed tree that does not unpack is found by `restore_prepared`,
    // which removes the entry and plans with make.
    if super::cache::load_cached(tmp_path)?.is_none() {
        bail!("the team cache's plan {key} is not a plan of this format");
    }
    let kept = tmp.keep();
    if let Err(e) = std::fs::rename(&kept, &entry) {
        let _ = std::fs::remove_dir_all(&kept);
        if !entry.join(PLAN_FILE).exists() {
            return Err(e).with_context(|| format!("moving the team cache's plan to {entry}"));
        }
    }
    Ok(Some(bytes))
}

/// Publishes plan `key` of `input` (just made, in `plans/<key>`) to the
/// team cache under its shared plan key, when this build may write there.
pub fn publish(tier: &RemoteTier, plans: &Utf8Path, key: &str, input: &PlanInput, sandbox: &Sandbox) -> Result<()> {
    if tier.writable() {
        let shared = super::key::shared_plan_key(input, sandbox)?;
        let entry = plans.join(key);
        tier.put_bundle(KIND, &shared, FILES.iter().map(|f| entry.join(f)).collect());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_tree_unpacks_to_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        let tree = root.join("a");
        std::fs::create_dir_all(tree.join("libmusl/src")).unwrap();
        std::fs::write(tree.join("libmusl/src/x.c"), b"int x;").unwrap();
        std::os::unix::fs::symlink("src/x.c", tree.join("libmusl/link")).unwrap();
        let tool = tree.join("conf");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        pack_tree(&tree, &root.join("t.tar.zst")).unwrap();

        let copy = root.join("b");
        std::fs::create_dir(&copy).unwrap();
        unpack_tree(&std::fs::read(root.join("t.tar.zst")).unwrap(), &copy).unwrap();
        assert_eq!(std::fs::read(copy.join("libmusl/src/x.c")).unwrap(), b"int x;");
        assert_eq!(std::fs::read_link(copy.join("libmusl/link")).unwrap().to_str(), Some("src/x.c"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(copy.join("conf")).unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111);
    }

    #[test]
    fn a_tree_that_would_leave_its_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        assert!(unpack_tree(b"not zstd", root).is_err());
        // A link out of the directory, then a file written through it.
        let mut tar = tar::Builder::new(Vec::new());
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        tar.append_link(&mut link, "out", "/tmp").unwrap();
        let mut file = tar::Header::new_gnu();
        file.set_size(1);
        file.set_mode(0o644);
        file.set_cksum();
        tar.append_data(&mut file, "out/kraft-escaped", &b"x"[..]).unwrap();
        let frame = zstd::bulk::compress(&tar.into_inner().unwrap(), 3).unwrap();
        let into = root.join("into");
        std::fs::create_dir(&into).unwrap();
        assert!(unpack_tree(&frame, &into).is_err());
        assert!(!Utf8Path::new("/tmp/kraft-escaped").exists());
    }
}
