//! Input roots: what an action sees under `/kraft`, as a REAPI Merkle tree.
//!
//! The root of every input tree is `/kraft` itself. It holds:
//!
//! * every read-only mount (the core at `unikraft/`, each library at
//!   `libs/<name>/`, the app at `apps/<name>/`), each hashed once per build
//!   into a subtree that is grafted by digest into every action's root;
//! * the *prepared* build dir: what `make fetch prepare` left under
//!   `build/` (the `.config`, generated headers, unpacked origin archives),
//!   i.e. every file there that no action of the graph produces, as found
//!   when the build starts;
//! * the outputs of the action's dependencies (transitively), as they are
//!   when it is scheduled, and its declared inputs under `build/`.
//!
//! Headers an action reads are inside those trees, so the root is complete
//! without the depfile: the REAPI digest needs no manifest lookup.
//!
//! Blobs are uploaded once per engine and process: a digest that was found
//! present or uploaded is never asked about again (FindMissingBlobs is
//! called only for the rest).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Mutex;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use kraft_reapi::proto::reapi::Digest;
use kraft_reapi::{Blob, InputFile, InputSymlink, MerkleTree};

use crate::exec::sandbox::Mount;
use crate::plan::graph::{ActionId, Graph, SANDBOX_ROOT};

/// Most bytes sent in one upload call.
const UPLOAD_ROUND_BYTES: u64 = 32 * 1024 * 1024;

/// A file of an input root: content digest, executable bit, where it is.
#[derive(Debug, Clone)]
struct Entry {
    digest: Digest,
    executable: bool,
    host: Utf8PathBuf,
}

/// The input roots of one build.
pub struct InputRoots {
    /// The writable mount (the build dir): inside path, host path.
    build: Mount,
    mounts: Vec<Mount>,
    /// Read-only trees: path relative to `/kraft` → root digest.
    grafts: Vec<(String, Digest)>,
    /// Directory blobs and files of the read-only trees (uploaded with the first action).
    base_dirs: Vec<Blob>,
    base_files: Vec<Entry>,
    base_symlinks: usize,
    /// The prepared build dir: path relative to `/kraft` → entry.
    prepared: BTreeMap<String, Entry>,
    prepared_symlinks: Vec<InputSymlink>,
    /// The prepared build dir by directory (relative to `/kraft`), hashed
    /// once: an action's root re-hashes only the directories on the way to
    /// its overlay files and grafts every other one by this digest.
    prepared_dirs: HashMap<String, PreparedDir>,
    /// Per action: its outputs and depfile, relative to `/kraft`.
    outputs: Vec<Vec<String>>,
    deps: Vec<Vec<ActionId>>,
    /// Digest cache by host path and stamp.
    digests: Mutex<HashMap<Utf8PathBuf, ((u64, i64, i64), Digest)>>,
    /// Digests the engine is known to hold.
    present: Mutex<HashSet<String>>,
    /// Whether the base trees were uploaded.
    base_sent: Mutex<bool>,
}

/// One directory of the prepared build dir.
#[derive(Default)]
struct PreparedDir {
    digest: Option<Digest>,
    /// Direct files (relative paths), symlinks and subdirectories.
    files: Vec<String>,
    symlinks: Vec<InputSymlink>,
    dirs: Vec<String>,
}

/// The Merkle builder's view of files by path.
fn input_files(files: &BTreeMap<String, Entry>) -> Vec<InputFile> {
    files
        .iter()
        .map(|(p, e)| InputFile { path: p.clone(), digest: e.digest.clone(), is_executable: e.executable })
        .collect()
}

/// `a/b/c` → `a/b`, `a` → ``.
fn parent_of(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// One action's root, ready to upload.
pub struct ActionRoot {
    pub digest: Digest,
    dirs: Vec<Blob>,
    files: Vec<Entry>,
}

/// `/kraft/x/y` → `x/y`.
pub fn relative(inside: &Utf8Path) -> Option<String> {
    inside
        .strip_prefix(SANDBOX_ROOT)
        .ok()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
}

fn stamp(meta: &fs::Metadata) -> (u64, i64, i64) {
    (
        meta.len(),
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        meta.ino() as i64,
    )
}

impl InputRoots {
    /// Hash the read-only mounts and the prepared build dir of `graph`'s build.
    pub fn new(mounts: &[Mount], graph: &Graph) -> anyhow::Result<InputRoots> {
        let build = mounts
            .iter()
            .find(|m| m.writable)
            .cloned()
            .context("no writable build mount")?;
        let mut outputs = Vec::with_capacity(graph.actions.len());
        let mut produced = HashSet::new();
        for action in &graph.actions {
            let paths: Vec<String> = action
                .outputs
                .iter()
                .chain(action.depfile.iter())
                .filter_map(|p| relative(p))
                .collect();
            produced.extend(paths.iter().cloned());
            outputs.push(paths);
        }
        let mut roots = InputRoots {
            build: build.clone(),
            mounts: mounts.to_vec(),
            grafts: Vec::new(),
            base_dirs: Vec::new(),
            base_files: Vec::new(),
            base_symlinks: 0,
            prepared: BTreeMap::new(),
            prepared_symlinks: Vec::new(),
            prepared_dirs: HashMap::new(),
            outputs,
            deps: graph.actions.iter().map(|a| a.deps.clone()).collect(),
            digests: Mutex::default(),
            present: Mutex::default(),
            base_sent: Mutex::new(false),
        };
        for mount in mounts.iter().filter(|m| !m.writable) {
            let rel = relative(&mount.inside)
                .with_context(|| format!("mount {} is not under {SANDBOX_ROOT}", mount.inside))?;
            let (files, symlinks) = roots.walk(&mount.host, "", &|_| true)?;
            let inputs = input_files(&files);
            let tree = MerkleTree::build(&inputs, &symlinks, &[])
                .with_context(|| format!("hashing {}", mount.host))?;
            roots.base_dirs.extend(tree.blobs());
            roots.base_files.extend(files.into_values());
            roots.base_symlinks += symlinks.len();
            roots.grafts.push((rel, tree.root_digest));
        }
        let build_rel = relative(&build.inside).context("the build mount is /kraft itself")?;
        let (files, symlinks) =
            roots.walk(&build.host, &build_rel, &|rel| !produced.contains(rel))?;
        roots.prepared = files;
        roots.prepared_symlinks = symlinks;
        roots.index_prepared(&build_rel)?;
        Ok(roots)
    }

    /// Hash the prepared build dir once as its own tree (its blobs go up
    /// with the read-only trees) and index it by directory.
    fn index_prepared(&mut self, build_rel: &str) -> anyhow::Result<()> {
        let inputs = input_files(&self.prepared);
        let tree = MerkleTree::build(&inputs, &self.prepared_symlinks, &[build_rel.to_string()])
            .context("hashing the prepared build dir")?;
        let by_digest: HashMap<&str, &kraft_reapi::proto::reapi::Directory> =
            tree.directories.iter().map(|d| (d.digest.hash.as_str(), &d.directory)).collect();
        // Walk the tree from the root to give every directory its digest.
        let mut dirs: HashMap<String, PreparedDir> = HashMap::new();
        let mut stack = vec![(String::new(), tree.root_digest.clone())];
        while let Some((path, digest)) = stack.pop() {
            let directory = by_digest.get(digest.hash.as_str()).context("the prepared tree lacks a directory")?;
            let entry = dirs.entry(path.clone()).or_default();
            entry.digest = Some(digest);
            for sub in &directory.directories {
                let child = if path.is_empty() { sub.name.clone() } else { format!("{path}/{}", sub.name) };
                entry.dirs.push(child.clone());
                stack.push((child, sub.digest.clone().context("a directory node without a digest")?));
            }
        }
        for path in self.prepared.keys() {
            dirs.entry(parent_of(path).to_string()).or_default().files.push(path.clone());
        }
        for link in &self.prepared_symlinks {
            dirs.entry(parent_of(&link.path).to_string()).or_default().symlinks.push(link.clone());
        }
        self.base_dirs.extend(tree.blobs());
        self.base_files.extend(self.prepared.values().cloned());
        self.prepared_dirs = dirs;
        Ok(())
    }

    /// Files and symlinks under `dir`, relative paths prefixed with `prefix`.
    fn walk(
        &self,
        dir: &Utf8Path,
        prefix: &str,
        keep: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<(BTreeMap<String, Entry>, Vec<InputSymlink>)> {
        let mut files = BTreeMap::new();
        let mut symlinks = Vec::new();
        for item in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name()
        {
            let item = item.with_context(|| format!("listing {dir}"))?;
            let Ok(rel) = item.path().strip_prefix(dir) else {
                continue;
            };
            let Some(rel) = rel.to_str().filter(|r| !r.is_empty()) else {
                continue;
            };
            let rel = if prefix.is_empty() {
                rel.to_string()
            } else {
                format!("{prefix}/{rel}")
            };
            if !keep(&rel) {
                continue;
            }
            let host = Utf8Path::from_path(item.path())
                .with_context(|| format!("non-UTF-8 path under {dir}"))?
                .to_owned();
            if item.file_type().is_symlink() {
                let target =
                    fs::read_link(&host).with_context(|| format!("reading link {host}"))?;
                if let Some(target) = target.to_str().filter(|t| !t.is_empty()) {
                    symlinks.push(InputSymlink {
                        path: rel,
                        target: target.to_string(),
                    });
                }
            } else if item.file_type().is_file() {
                if let Some(entry) = self.entry(&host)? {
                    files.insert(rel, entry);
                }
            }
        }
        Ok((files, symlinks))
    }

    /// Digest of a host file (through the stamp cache); `None` if it is gone.
    fn entry(&self, host: &Utf8Path) -> anyhow::Result<Option<Entry>> {
        let meta = match fs::metadata(host) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {host}")),
        };
        let stamp = stamp(&meta);
        let executable = meta.permissions().mode() & 0o111 != 0;
        if let Some((s, d)) = self.digests.lock().expect("digests").get(host) {
            if *s == stamp {
                return Ok(Some(Entry {
                    digest: d.clone(),
                    executable,
                    host: host.to_owned(),
                }));
            }
        }
        let digest = file_digest(host)?;
        self.digests
            .lock()
            .expect("digests")
            .insert(host.to_owned(), (stamp, digest.clone()));
        Ok(Some(Entry {
            digest,
            executable,
            host: host.to_owned(),
        }))
    }

    /// Host path of a path relative to `/kraft` (in the build mount).
    fn build_host(&self, rel: &str) -> Option<Utf8PathBuf> {
        let inside = Utf8Path::new(SANDBOX_ROOT).join(rel);
        let tail = inside.strip_prefix(&self.build.inside).ok()?;
        Some(self.build.host.join(tail))
    }

    /// Host path of a result's output path (relative to `/kraft`), if it is
    /// in the build dir (outputs may not go anywhere else).
    pub fn output_host(&self, rel: &str) -> Option<Utf8PathBuf> {
        kraft_reapi::merkle::split_relative_path(rel).ok()?;
        self.build_host(rel)
    }

    /// Outputs (and depfile) of `id`, relative to `/kraft`.
    pub fn outputs_of(&self, id: ActionId) -> &[String] {
        &self.outputs[id.0]
    }

    /// The input root of action `id` with `inputs` (its declared inputs, inside paths).
    ///
    /// The overlay (declared inputs under the build dir and the outputs of
    /// every transitive dependency, as they are now) is laid over the
    /// prepared build dir. Only the directories on the way to an overlay
    /// file are built again; every other prepared directory is grafted by
    /// the digest [`Self::index_prepared`] gave it. The digest is the same
    /// as that of the whole tree built file by file.
    pub fn root_for(&self, id: ActionId, inputs: &[Utf8PathBuf]) -> anyhow::Result<ActionRoot> {
        let mut overlay: Vec<String> = inputs.iter().filter_map(|p| relative(p)).collect();
        let mut seen = HashSet::new();
        let mut stack: Vec<ActionId> = self.deps[id.0].clone();
        while let Some(dep) = stack.pop() {
            if dep == id || !seen.insert(dep) || dep.0 >= self.deps.len() {
                continue;
            }
            overlay.extend(self.outputs[dep.0].iter().cloned());
            stack.extend(self.deps[dep.0].iter().copied());
        }
        // Keep only paths in the build dir (the rest are read-only trees).
        overlay.retain(|rel| self.build_host(rel).is_some());
        let mut touched: HashSet<&str> = HashSet::new();
        touched.insert("");
        for rel in &overlay {
            let mut dir = parent_of(rel);
            while touched.insert(dir) {
                dir = parent_of(dir);
            }
        }
        let mut files: BTreeMap<String, Entry> = BTreeMap::new();
        let mut symlinks: Vec<InputSymlink> = Vec::new();
        let mut grafts = self.grafts.clone();
        for dir in &touched {
            let Some(prepared) = self.prepared_dirs.get(*dir) else { continue };
            for path in &prepared.files {
                files.insert(path.clone(), self.prepared[path].clone());
            }
            symlinks.extend(prepared.symlinks.iter().cloned());
            for sub in prepared.dirs.iter().filter(|d| !touched.contains(d.as_str())) {
                if let Some(digest) = &self.prepared_dirs[sub].digest {
                    grafts.push((sub.clone(), digest.clone()));
                }
            }
        }
        for rel in overlay {
            let Some(host) = self.build_host(&rel) else {
                continue;
            };
            match self.entry(&host)? {
                Some(entry) => {
                    files.insert(rel, entry);
                }
                None => {
                    files.remove(&rel);
                }
            }
        }
        let inputs = input_files(&files);
        let tree = MerkleTree::build_grafted(&inputs, &symlinks, &[], &grafts)
            .context("building the action's input tree")?;
        Ok(ActionRoot {
            digest: tree.root_digest.clone(),
            dirs: tree.blobs(),
            files: files.into_values().collect(),
        })
    }

    /// Make sure the engine holds everything `root` (plus `extra` blobs, the
    /// Command and Action) names; returns the bytes sent.
    pub fn upload(
        &self,
        cache: &crate::cache::reapi::ReapiCache,
        root: &ActionRoot,
        extra: &[Blob],
    ) -> anyhow::Result<u64> {
        let mut sent = 0;
        {
            let mut base_sent = self.base_sent.lock().expect("base");
            if !*base_sent {
                sent += self.send(cache, &self.base_dirs, &self.base_files)?;
                *base_sent = true;
            }
        }
        let mut blobs = root.dirs.clone();
        blobs.extend(extra.iter().cloned());
        sent += self.send(cache, &blobs, &root.files)?;
        Ok(sent)
    }

    fn send(
        &self,
        cache: &crate::cache::reapi::ReapiCache,
        blobs: &[Blob],
        files: &[Entry],
    ) -> anyhow::Result<u64> {
        let todo: Vec<Digest> = {
            let present = self.present.lock().expect("present");
            let mut seen = HashSet::new();
            blobs
                .iter()
                .map(|b| &b.digest)
                .chain(files.iter().map(|f| &f.digest))
                .filter(|d| !present.contains(&d.hash) && seen.insert(d.hash.clone()))
                .cloned()
                .collect()
        };
        if todo.is_empty() {
            return Ok(0);
        }
        let missing: HashSet<String> = cache
            .client()
            .find_missing_blobs(&todo)?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let by_hash: HashMap<&str, &Blob> =
            blobs.iter().map(|b| (b.digest.hash.as_str(), b)).collect();
        let file_by_hash: HashMap<&str, &Entry> =
            files.iter().map(|f| (f.digest.hash.as_str(), f)).collect();
        let mut round: Vec<Blob> = Vec::new();
        let mut round_bytes = 0u64;
        let mut sent = 0u64;
        for d in todo.iter().filter(|d| missing.contains(&d.hash)) {
            let blob = match (
                by_hash.get(d.hash.as_str()),
                file_by_hash.get(d.hash.as_str()),
            ) {
                (Some(b), _) => (*b).clone(),
                (None, Some(f)) => {
                    let data =
                        fs::read(&f.host).with_context(|| format!("reading input {}", f.host))?;
                    let blob = Blob::new(data);
                    if blob.digest.hash != d.hash {
                        anyhow::bail!("input {} changed while the build was uploading it", f.host);
                    }
                    blob
                }
                (None, None) => continue,
            };
            round_bytes += blob.data.len() as u64;
            round.push(blob);
            if round_bytes >= UPLOAD_ROUND_BYTES {
                cache.client().upload_blobs(&round)?;
                sent += round_bytes;
                round.clear();
                round_bytes = 0;
            }
        }
        if !round.is_empty() {
            cache.client().upload_blobs(&round)?;
            sent += round_bytes;
        }
        self.present
            .lock()
            .expect("present")
            .extend(todo.into_iter().map(|d| d.hash));
        Ok(sent)
    }

    /// Forget which blobs the engine holds (it said one is missing): the
    /// next upload asks FindMissingBlobs about everything again.
    pub fn forget_present(&self) {
        self.present.lock().expect("present").clear();
        *self.base_sent.lock().expect("base") = false;
    }

    /// Counts of the read-only trees and the prepared build dir, for the report.
    pub fn describe(&self) -> String {
        // `base_files` ends with the prepared build dir's files.
        let read_only = &self.base_files[..self.base_files.len() - self.prepared.len()];
        let mib = |files: &[Entry]| files.iter().map(|f| f.digest.size_bytes).sum::<i64>() as f64 / 1048576.0;
        format!(
            "{} read-only trees ({} files, {} symlinks, {:.1} MiB), {} prepared build files ({:.1} MiB)",
            self.grafts.len(),
            read_only.len(),
            self.base_symlinks,
            mib(read_only),
            self.prepared.len(),
            mib(&self.base_files[read_only.len()..])
        )
    }

    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }
}

/// SHA-256 digest of a file, streamed.
fn file_digest(host: &Utf8Path) -> anyhow::Result<Digest> {
    use std::io::Read;
    let mut file = fs::File::open(host).with_context(|| format!("opening {host}"))?;
    let mut hasher = kraft_reapi::digest::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {host}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::graph::{Action, ActionKind};

    fn action(id: usize, inputs: &[&str], outputs: &[&str], deps: &[usize]) -> Action {
        Action {
            id: ActionId(id),
            name: format!("a{id}"),
            kind: ActionKind::Compile,
            unit: "u".into(),
            script: "true".into(),
            cwd: "/kraft/build".into(),
            inputs: inputs.iter().map(Utf8PathBuf::from).collect(),
            outputs: outputs.iter().map(Utf8PathBuf::from).collect(),
            depfile: None,
            deps: deps.iter().map(|&d| ActionId(d)).collect(),
        }
    }

    /// The root built from the prepared index and grafts has the digest of
    /// the same files built one by one (so the shortcut changes no key).
    #[test]
    fn grafted_root_equals_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        let host = Utf8Path::from_path(dir.path()).unwrap().join("build");
        for (path, text) in [
            (".config", "CONFIG_X=y"),
            ("include/uk/bits/config.h", "#define X 1"),
            ("libmusl/origin/src/a.c", "int a;"),
            ("libmusl/origin/src/b.c", "int b;"),
            ("libmusl/origin/include/c.h", "int c;"),
            ("libfoo/x.o", "stale object from a make run"),
        ] {
            let p = host.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, text).unwrap();
        }
        std::os::unix::fs::symlink("origin/src", host.join("libmusl/src-link")).unwrap();
        let graph = Graph {
            actions: vec![
                action(0, &["/kraft/build/libmusl/origin/src/a.c"], &["/kraft/build/libmusl/a.o"], &[]),
                action(1, &[], &["/kraft/build/libfoo/x.o"], &[]),
                action(2, &["/kraft/build/libmusl/a.o", "/kraft/build/libfoo/x.o"], &["/kraft/build/image"], &[0, 1]),
            ],
        };
        let roots = InputRoots::new(&[Mount::rw(host.clone(), "/kraft/build")], &graph).unwrap();
        fs::write(host.join("libmusl/a.o"), "object a").unwrap();
        fs::write(host.join("libfoo/x.o"), "object x").unwrap();
        for id in 0..3 {
            let root = roots.root_for(ActionId(id), &graph.actions[id].inputs).unwrap();
            let mut files: BTreeMap<String, Entry> = roots.prepared.clone();
            for a in [0, 1].iter().filter(|&&d| graph.actions[id].deps.contains(&ActionId(d))) {
                for out in roots.outputs_of(ActionId(*a)) {
                    files.insert(out.clone(), roots.entry(&roots.build_host(out).unwrap()).unwrap().unwrap());
                }
            }
            let inputs = input_files(&files);
            let whole = MerkleTree::build(&inputs, &roots.prepared_symlinks, &[]).unwrap();
            assert_eq!(root.digest, whole.root_digest, "action {id}");
        }
    }
}
