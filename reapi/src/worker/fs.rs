//! Local filesystem side of the worker: materialising an input root from the
//! CAS into a directory, and turning the files a command produced into
//! `ActionResult` outputs plus the blobs to upload.
//!
//! Everything read from the server (directory entry names, digests) is
//! validated before it touches the filesystem: names must be single path
//! components, so a malicious or corrupt tree cannot escape the sandbox.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Digest, Directory, OutputDirectory, OutputFile, OutputSymlink,
};

use crate::client::Client;
use crate::digest::{decode, digest_string, validate_digest, Blob};
use crate::error::{Error, Result};
use crate::merkle::{split_relative_path, InputFile, InputSymlink, MerkleTree};

/// Upper bound of file bytes fetched in one round of `read_blobs`.
const FETCH_ROUND_BYTES: i64 = 64 * 1024 * 1024;

const OP_MATERIALISE: &str = "materialise input root";

fn check_name(client: &Client, name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(client.bad(
            OP_MATERIALISE,
            format!("invalid directory entry name {name:?}"),
        ));
    }
    Ok(())
}

fn checked_digest(client: &Client, d: Option<&Digest>, what: &str) -> Result<Digest> {
    let d = d.ok_or_else(|| client.bad(OP_MATERIALISE, format!("{what} has no digest")))?;
    validate_digest(d).map_err(|e| client.bad(OP_MATERIALISE, format!("{what}: {e}")))?;
    Ok(d.clone())
}

fn write_file(path: &Path, data: &[u8], executable: bool) -> Result<()> {
    fs::write(path, data).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    let mode = if executable { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
}

/// The worker's blob cache: `files/<hash>-<size>[x]` and
/// `dirs/<hash>-<size>`, written atomically, read-only once there.
struct BlobCache<'a> {
    dir: &'a Path,
    copy_prefixes: &'a [String],
    /// The command's output paths: an input there is copied (it may be
    /// updated in place), every other input is a read-only hard link.
    outputs: HashSet<&'a str>,
}

impl BlobCache<'_> {
    fn path(&self, kind: &str, d: &Digest, executable: bool) -> PathBuf {
        let x = if executable { "x" } else { "" };
        self.dir
            .join(kind)
            .join(format!("{}-{}{x}", d.hash, d.size_bytes))
    }

    fn put(&self, path: &Path, data: &[u8], mode: u32) -> Result<()> {
        let dir = path.parent().expect("cache path has a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let tmp = dir.join(format!(".tmp-{}", crate::digest::random_uuid()));
        fs::write(&tmp, data).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("chmod {}", tmp.display()), e))?;
        fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    }

    /// Directory blobs, from the cache or (then cached) the CAS.
    fn read_dirs(&self, client: &Client, digests: &[Digest]) -> Result<Vec<Vec<u8>>> {
        let mut out: Vec<Option<Vec<u8>>> = digests
            .iter()
            .map(|d| fs::read(self.path("dirs", d, false)).ok())
            .collect();
        let missing: Vec<usize> = (0..digests.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let want: Vec<Digest> = missing.iter().map(|&i| digests[i].clone()).collect();
            for (i, data) in missing.into_iter().zip(client.read_blobs(&want)?) {
                self.put(&self.path("dirs", &digests[i], false), &data, 0o444)?;
                out[i] = Some(data);
            }
        }
        Ok(out.into_iter().map(|o| o.expect("filled")).collect())
    }

    /// Place every file: fetch the missing ones into the cache, then link
    /// (or copy, under `copy_prefixes`) each into the input root.
    fn place(&self, client: &Client, root: &Path, files: &[(Digest, PathBuf, bool)]) -> Result<()> {
        let mut missing: Vec<(Digest, bool)> = Vec::new();
        let mut seen = HashSet::new();
        for (d, _, x) in files {
            if !self.path("files", d, *x).exists() && seen.insert((d.hash.clone(), *x)) {
                missing.push((d.clone(), *x));
            }
        }
        let mut i = 0;
        while i < missing.len() {
            let start = i;
            let mut bytes = 0i64;
            while i < missing.len()
                && (i == start || bytes + missing[i].0.size_bytes <= FETCH_ROUND_BYTES)
            {
                bytes += missing[i].0.size_bytes;
                i += 1;
            }
            let want: Vec<Digest> = missing[start..i].iter().map(|(d, _)| d.clone()).collect();
            for ((d, x), data) in missing[start..i].iter().zip(client.read_blobs(&want)?) {
                self.put(
                    &self.path("files", d, *x),
                    &data,
                    if *x { 0o555 } else { 0o444 },
                )?;
            }
        }
        for (d, p, x) in files {
            let cached = self.path("files", d, *x);
            let rel = p.strip_prefix(root).unwrap_or(p).to_string_lossy();
            let copy = self.outputs.contains(rel.as_ref())
                || self.copy_prefixes.iter().any(|prefix| rel.starts_with(prefix.as_str()));
            if copy {
                fs::copy(&cached, p).map_err(|e| {
                    Error::io(
                        format!("copying {} to {}", cached.display(), p.display()),
                        e,
                    )
                })?;
                let mode = if *x { 0o755 } else { 0o644 };
                fs::set_permissions(p, fs::Permissions::from_mode(mode))
                    .map_err(|e| Error::io(format!("chmod {}", p.display()), e))?;
            } else {
                fs::hard_link(&cached, p).map_err(|e| {
                    Error::io(
                        format!("linking {} to {}", cached.display(), p.display()),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Downloads the tree rooted at `root_digest` into the existing directory
/// `dest`, through the worker's blob cache when it has one.
///
/// With [`super::WorkerConfig::share_dirs`], a directory that holds no
/// output path is not materialised in `dest`: it is materialised once per
/// digest under `<cache>/trees/`, an empty mount point is left in its place,
/// and it is returned as (mount point, shared tree) for the executor to
/// bind read-only. A lease then costs a few directories, not every file.
pub(crate) fn materialise(
    client: &Client,
    root_digest: &Digest,
    dest: &Path,
    cfg: &super::WorkerConfig,
    outputs: &[String],
    extra_private: &[String],
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut shared = Vec::new();
    materialise_into(client, root_digest, dest, cfg, outputs, extra_private, cfg.share_dirs, &mut shared)?;
    Ok(shared)
}

/// The shared, read-only copy of the tree `digest` under `<cache>/trees/`.
fn shared_tree(client: &Client, digest: &Digest, cfg: &super::WorkerConfig) -> Result<PathBuf> {
    let cache = cfg.cache_dir.as_deref().expect("sharing needs a cache");
    let path = cache.join("trees").join(format!("{}-{}", digest.hash, digest.size_bytes));
    if path.is_dir() {
        return Ok(path);
    }
    let tmp = cache.join("trees").join(format!(".tmp-{}", crate::digest::random_uuid()));
    fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    materialise_into(client, digest, &tmp, cfg, &[], &[], false, &mut Vec::new())?;
    if fs::rename(&tmp, &path).is_err() {
        // Another lease made it first.
        let _ = fs::remove_dir_all(&tmp);
    }
    Ok(path)
}

fn materialise_into(
    client: &Client,
    root_digest: &Digest,
    dest: &Path,
    cfg: &super::WorkerConfig,
    outputs: &[String],
    extra_private: &[String],
    share: bool,
    shared: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<()> {
    let cache = cfg.cache_dir.as_deref().map(|dir| BlobCache {
        dir,
        copy_prefixes: &cfg.copy_prefixes,
        outputs: outputs.iter().map(String::as_str).collect(),
    });
    let mut level: Vec<(Digest, PathBuf)> = vec![(root_digest.clone(), dest.to_path_buf())];
    let mut files: Vec<(Digest, PathBuf, bool)> = Vec::new();
    let mut dirs_seen = 0usize;
    while !level.is_empty() {
        let digests: Vec<Digest> = level.iter().map(|(d, _)| d.clone()).collect();
        let blobs = match &cache {
            Some(cache) => cache.read_dirs(client, &digests)?,
            None => client.read_blobs(&digests)?,
        };
        let mut next = Vec::new();
        for ((digest, path), blob) in level.iter().zip(blobs) {
            dirs_seen += 1;
            if dirs_seen > 1_000_000 {
                return Err(client.bad(OP_MATERIALISE, "input tree has more than 1e6 directories"));
            }
            let dir: Directory = decode("Directory", &blob).map_err(|e| {
                client.bad(OP_MATERIALISE, format!("{}: {e}", digest_string(digest)))
            })?;
            let mut names = HashSet::new();
            for sub in &dir.directories {
                check_name(client, &sub.name)?;
                let d = checked_digest(client, sub.digest.as_ref(), &sub.name)?;
                names.insert(sub.name.as_str());
                let p = path.join(&sub.name);
                fs::create_dir(&p)
                    .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
                if share && cache.is_some() {
                    let rel = p.strip_prefix(dest).unwrap_or(&p).to_string_lossy().into_owned();
                    let prefix = format!("{rel}/");
                    // `private_dirs` keeps only the directory itself private
                    // (its children are still shared when they hold no
                    // output); a lease's `extra_private` keeps whole subtrees.
                    let private = cfg.private_dirs.iter().any(|d| *d == rel)
                        || extra_private.iter().any(|d| *d == rel || rel.starts_with(&format!("{d}/")));
                    if !private && !outputs.iter().any(|o| o.starts_with(&prefix) || *o == rel) {
                        shared.push((p, shared_tree(client, &d, cfg)?));
                        continue;
                    }
                }
                next.push((d, p));
            }
            for f in &dir.files {
                check_name(client, &f.name)?;
                if !names.insert(f.name.as_str()) {
                    return Err(client.bad(OP_MATERIALISE, format!("duplicate entry {:?}", f.name)));
                }
                let d = checked_digest(client, f.digest.as_ref(), &f.name)?;
                files.push((d, path.join(&f.name), f.is_executable));
            }
            for s in &dir.symlinks {
                check_name(client, &s.name)?;
                if !names.insert(s.name.as_str()) {
                    return Err(client.bad(OP_MATERIALISE, format!("duplicate entry {:?}", s.name)));
                }
                let p = path.join(&s.name);
                std::os::unix::fs::symlink(&s.target, &p)
                    .map_err(|e| Error::io(format!("creating symlink {}", p.display()), e))?;
            }
        }
        level = next;
    }
    if let Some(cache) = &cache {
        return cache.place(client, dest, &files);
    }
    // Fetch file contents in rounds bounded by FETCH_ROUND_BYTES, each
    // distinct blob once per round.
    let mut i = 0;
    while i < files.len() {
        let mut round_bytes = 0i64;
        let start = i;
        while i < files.len()
            && (i == start || round_bytes + files[i].0.size_bytes <= FETCH_ROUND_BYTES)
        {
            round_bytes += files[i].0.size_bytes;
            i += 1;
        }
        let round = &files[start..i];
        let mut unique: Vec<Digest> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (d, _, _) in round {
            if !index.contains_key(d.hash.as_str()) {
                index.insert(d.hash.as_str(), unique.len());
                unique.push(d.clone());
            }
        }
        let datas = client.read_blobs(&unique)?;
        for (d, p, x) in round {
            write_file(p, &datas[index[d.hash.as_str()]], *x)?;
        }
    }
    Ok(())
}

/// Creates the parent directories of every output path under `working_dir`.
pub(crate) fn create_output_parents(working_dir: &Path, outputs: &[String]) -> Result<()> {
    for o in outputs {
        split_relative_path(o)?;
        if let Some(parent) = working_dir.join(o).parent() {
            fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
    }
    Ok(())
}

/// Outputs of an action, ready to be put in an `ActionResult`.
#[derive(Default)]
pub(crate) struct CollectedOutputs {
    pub files: Vec<OutputFile>,
    pub symlinks: Vec<OutputSymlink>,
    pub directories: Vec<OutputDirectory>,
    pub blobs: Vec<Blob>,
}

fn is_executable(meta: &fs::Metadata) -> bool {
    meta.permissions().mode() & 0o111 != 0
}

/// Walks a directory into files/symlinks relative to it, reading contents.
fn scan_dir(
    root: &Path,
    blobs: &mut Vec<Blob>,
) -> Result<(Vec<InputFile>, Vec<InputSymlink>, Vec<String>)> {
    let (mut files, mut links, mut empty) = (Vec::new(), Vec::new(), Vec::new());
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd =
            fs::read_dir(&dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        let mut any = false;
        for entry in rd {
            any = true;
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let name = entry.file_name().into_string().map_err(|n| {
                Error::InvalidArgument(format!(
                    "non UTF-8 output file name {n:?} in {}",
                    dir.display()
                ))
            })?;
            let rel_path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path)
                    .map_err(|e| Error::io(format!("readlink {}", path.display()), e))?;
                links.push(InputSymlink {
                    path: rel_path,
                    target: target.to_string_lossy().into_owned(),
                });
            } else if meta.is_dir() {
                stack.push((path, rel_path));
            } else if meta.is_file() {
                let data = fs::read(&path)
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                let blob = Blob::new(data);
                files.push(InputFile {
                    path: rel_path,
                    digest: blob.digest.clone(),
                    is_executable: is_executable(&meta),
                });
                blobs.push(blob);
            }
        }
        if !any && !rel.is_empty() {
            empty.push(rel);
        }
    }
    Ok((files, links, empty))
}

/// Collects the declared outputs found under `working_dir`. Missing outputs
/// are skipped (REAPI: the action result simply does not list them).
pub(crate) fn collect_outputs(working_dir: &Path, outputs: &[String]) -> Result<CollectedOutputs> {
    let mut out = CollectedOutputs::default();
    for o in outputs {
        let path = working_dir.join(o);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)
                .map_err(|e| Error::io(format!("readlink {}", path.display()), e))?;
            out.symlinks.push(OutputSymlink {
                path: o.clone(),
                target: target.to_string_lossy().into_owned(),
                node_properties: None,
            });
        } else if meta.is_dir() {
            let (files, links, empty) = scan_dir(&path, &mut out.blobs)?;
            let tree = MerkleTree::build(&files, &links, &empty)?;
            let tree_blob = Blob::from_message(&tree.to_tree());
            out.directories.push(OutputDirectory {
                path: o.clone(),
                tree_digest: Some(tree_blob.digest.clone()),
                is_topologically_sorted: false,
                root_directory_digest: Some(tree.root_digest.clone()),
            });
            out.blobs.push(tree_blob);
            out.blobs.extend(tree.blobs());
        } else if meta.is_file() {
            let data =
                fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let blob = Blob::new(data);
            out.files.push(OutputFile {
                path: o.clone(),
                digest: Some(blob.digest.clone()),
                is_executable: is_executable(&meta),
                contents: vec![],
                node_properties: None,
            });
            out.blobs.push(blob);
        }
    }
    Ok(out)
}
