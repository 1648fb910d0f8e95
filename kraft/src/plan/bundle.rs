//! A plan cache entry as files: the prepared build dir packed into one
//! zstd-compressed tar, and the entry shared through the team cache.
//!
//! The prepared tree (unpacked and patched origin sources, kconfig tools,
//! generated headers: ~4,300 files, 32 MiB for helloworld+musl) packs into
//! ~3 MiB, so the store keeps it packed and a plan cache hit unpacks it.
//!
//! A fresh machine whose plan key the team has already planned fetches the
//! entry's two files (`plan.json.zst`, `prepared.tar.zst`) into its own plan
//! cache; `plan_with` then finds a local hit and make never runs. They are
//! trusted the way an action entry is: the team cache's signed `ac/`
//! document names their SHA-256s (see `cache::http`), and they land in a
//! temporary directory that only a rename makes visible. The shared plan key
//! they are published under covers every input of planning, tools by content
//! (see [`super::key`]), so the entry is the plan this machine would make.

use std::io::{Read, Write};

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

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

/// Makes `dir` hold exactly the tree packed by [`pack_tree`], plus the
/// existing files named in `keep` (relative paths: the outputs of the plan
/// the tree belongs to, which the executor then checks by content). Unlike
/// emptying `dir` and unpacking, files already there with the same bytes,
/// mode and link target are left alone: switching back and forth between
/// two configurations rewrites only what differs, and the other outputs
/// stay in place for the executor to find up to date. Everything else in
/// `dir` is removed, so what a command can see is what a fresh unpack shows.
/// Into an empty `dir` with nothing to keep, it is a plain unpack. Files get
/// the current time (as a copy would), not the packed one.
pub fn sync_tree(packed: &[u8], dir: &Utf8Path, keep: &HashSet<Utf8PathBuf>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let decoder = zstd::stream::read::Decoder::new(packed).context("reading a packed tree")?;
    let mut tar = tar::Archive::new(decoder.take(MAX_UNPACKED));
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(false);
    let mut in_tree: HashSet<Utf8PathBuf> = HashSet::new();
    for entry in tar.entries().context("reading a packed tree")? {
        let mut entry = entry.context("reading a packed tree")?;
        let rel = Utf8PathBuf::try_from(entry.path().context("a packed path")?.into_owned()).context("a packed path that is not UTF-8")?;
        let rel: Utf8PathBuf = rel.components().filter(|c| !matches!(c, camino::Utf8Component::CurDir)).collect();
        if rel.as_str().is_empty() {
            continue;
        }
        if !rel.components().all(|c| matches!(c, camino::Utf8Component::Normal(_))) {
            bail!("the packed tree names {rel}, outside {dir}");
        }
        let host = dir.join(&rel);
        let kind = entry.header().entry_type();
        let existing = std::fs::symlink_metadata(&host).ok();
        in_tree.insert(rel);
        if kind == tar::EntryType::Regular {
            let mode = entry.header().mode().context("a packed file's mode")? & 0o7777;
            let mut want = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut want).context("reading a packed tree")?;
            let same = existing.as_ref().is_some_and(|md| {
                md.is_file() && md.len() == want.len() as u64 && md.permissions().mode() & 0o7777 == mode
            }) && std::fs::read(&host).is_ok_and(|have| have == want);
            if !same {
                write_inside(dir, &host, existing.as_ref(), &want, mode)?;
            }
            continue;
        }
        let same = match (&existing, kind) {
            (Some(md), tar::EntryType::Directory) => md.is_dir(),
            (Some(md), tar::EntryType::Symlink) => {
                md.file_type().is_symlink() && std::fs::read_link(&host).ok() == entry.link_name().ok().flatten().map(|l| l.into_owned())
            }
            _ => false,
        };
        if same {
            continue;
        }
        if let Some(md) = existing {
            remove_node(&host, &md)?;
        }
        // `unpack_in` refuses writes through symlinks that leave the directory.
        if !entry.unpack_in(dir).with_context(|| format!("unpacking {host}"))? {
            bail!("the packed tree names {host}, outside {dir}");
        }
    }
    // What neither the tree nor the plan's outputs account for goes.
    let mut stale_dirs = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).contents_first(true) {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let rel = Utf8Path::from_path(entry.path().strip_prefix(dir)?).context("a non-UTF-8 path in the build dir")?.to_owned();
        if in_tree.contains(&rel) || keep.contains(&rel) {
            continue;
        }
        if entry.file_type().is_dir() {
            stale_dirs.push(entry.into_path());
        } else {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for stale in stale_dirs {
        // Directories still holding kept outputs stay.
        let _ = std::fs::remove_dir(stale);
    }
    Ok(())
}

fn remove_node(host: &Utf8Path, md: &std::fs::Metadata) -> Result<()> {
    if md.is_dir() { std::fs::remove_dir_all(host) } else { std::fs::remove_file(host) }.with_context(|| format!("replacing {host}"))
}

/// Writes one file of a packed tree at `host`, under `dir`, replacing what
/// is there; refuses a parent that resolves outside `dir` (through a
/// symlink in the tree).
fn write_inside(dir: &Utf8Path, host: &Utf8Path, existing: Option<&std::fs::Metadata>, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let parent = host.parent().context("a packed file has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {parent}"))?;
    let (real_parent, real_dir) = (parent.canonicalize_utf8()?, dir.canonicalize_utf8()?);
    if !real_parent.starts_with(&real_dir) {
        bail!("the packed tree writes {host} through a link out of {dir}");
    }
    if let Some(md) = existing {
        remove_node(host, md)?;
    }
    std::fs::write(host, bytes).with_context(|| format!("writing {host}"))?;
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {host}"))
}

/// Fetches the plan of `input` from the team cache into `plans/<key>` when
/// the plan cache lacks it; returns the bytes fetched when it did. The team
/// cache names it by the shared plan key (tools by content: see
/// [`super::key`]). A plan of another format is an error (it was
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
        sync_tree(&std::fs::read(root.join("t.tar.zst")).unwrap(), &copy, &HashSet::new()).unwrap();
        assert_eq!(std::fs::read(copy.join("libmusl/src/x.c")).unwrap(), b"int x;");
        assert_eq!(std::fs::read_link(copy.join("libmusl/link")).unwrap().to_str(), Some("src/x.c"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(copy.join("conf")).unwrap().permissions());
        assert_eq!(mode & 0o111, 0o111);
    }

    #[test]
    fn a_tree_that_would_leave_its_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        assert!(sync_tree(b"not zstd", root, &HashSet::new()).is_err());
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
        assert!(sync_tree(&frame, &into, &HashSet::new()).is_err());
        assert!(!Utf8Path::new("/tmp/kraft-escaped").exists());
    }

    #[test]
    fn syncing_keeps_what_is_equal_and_the_plans_outputs_and_nothing_else() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        let tree = root.join("a");
        std::fs::create_dir_all(tree.join("lib/src")).unwrap();
        std::fs::write(tree.join("lib/src/same.c"), b"same").unwrap();
        std::fs::write(tree.join("lib/src/changed.c"), b"new!").unwrap();
        std::fs::write(tree.join("config.h"), b"#define A 1\n").unwrap();
        std::os::unix::fs::symlink("src/same.c", tree.join("lib/link")).unwrap();
        pack_tree(&tree, &root.join("t.tar.zst")).unwrap();
        let packed = std::fs::read(root.join("t.tar.zst")).unwrap();

        // A build dir of another plan: equal files, a changed one (same
        // size), a file where the tree has a directory, a link elsewhere,
        // this plan's output, another plan's output and its directory.
        let build = root.join("b");
        std::fs::create_dir_all(build.join("lib/src")).unwrap();
        std::fs::create_dir_all(build.join("other/deep")).unwrap();
        std::fs::write(build.join("lib/src/same.c"), b"same").unwrap();
        std::fs::write(build.join("lib/src/changed.c"), b"old!").unwrap();
        std::fs::write(build.join("config.h"), b"#define A 0\n").unwrap();
        std::os::unix::fs::symlink("src/changed.c", build.join("lib/link")).unwrap();
        std::fs::write(build.join("lib/out.o"), b"object").unwrap();
        std::fs::write(build.join("other/deep/stale.o"), b"stale").unwrap();
        std::fs::write(build.join(".kraft-plan"), b"another key").unwrap();
        let same_inode = std::fs::metadata(build.join("lib/src/same.c")).unwrap().ino();

        let keep: HashSet<Utf8PathBuf> = ["lib/out.o".into(), "lib/missing.o".into()].into_iter().collect();
        sync_tree(&packed, &build, &keep).unwrap();

        let mut files: Vec<String> = walkdir::WalkDir::new(&build)
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap().path().strip_prefix(&build).unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["config.h", "lib", "lib/link", "lib/out.o", "lib/src", "lib/src/changed.c", "lib/src/same.c"]);
        assert_eq!(std::fs::read(build.join("lib/src/changed.c")).unwrap(), b"new!");
        assert_eq!(std::fs::read(build.join("config.h")).unwrap(), b"#define A 1\n");
        assert_eq!(std::fs::read_link(build.join("lib/link")).unwrap().to_str(), Some("src/same.c"));
        assert_eq!(std::fs::read(build.join("lib/out.o")).unwrap(), b"object");
        assert_eq!(std::fs::metadata(build.join("lib/src/same.c")).unwrap().ino(), same_inode, "an equal file is left alone");
    }
}
