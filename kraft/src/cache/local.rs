//! The local action cache: action key → the outputs it produced.
//!
//! ```text
//! <store>/ac/<aa>/<key-hex>      an Entry (JSON): outputs as blob hashes + modes, discovered inputs
//! <store>/ac/<aa>/<prekey-hex>   a Manifest (JSON): header-path lists seen for this pre-key
//! <store>/blobs/<aa>/<blake3>    the output bytes (the store's blobs, read-only)
//! ```
//!
//! Keys and pre-keys are derived with different domain tags (see
//! `fingerprint.rs`), so they share the `ac/` namespace without collisions;
//! each file says which kind it is.
//!
//! Rules:
//!
//! * Writes are atomic (temp file in `<store>/tmp`, rename), so a reader sees a
//!   whole entry or none. Entries are written only after every blob they name
//!   is in the store.
//! * A missing, unreadable, malformed or wrong-version entry, and a missing or
//!   corrupt blob, is a **miss**, never an error: the action runs and rewrites
//!   the entry. Corrupt files found on the way are removed.
//! * Restores are all-or-nothing: every output is copied next to its
//!   destination, verified against its hash, and only then are all renamed
//!   into place.
//!
//! A remote tier ([`crate::cache::http`]: HTTP `GET/PUT/HEAD` on `/ac/<key>` and
//! `/cas/<sha256>`) sits behind the local one when the cache is made
//! [`ActionCache::with_remote`]: [`ActionCache::get`] and
//! [`ActionCache::manifest`] fall back to it on a local miss and copy what
//! they fetched (verified) into the local tier; [`ActionCache::put`] and
//! [`ActionCache::add_to_manifest`] also queue an upload, and a local hit
//! queues one that is sent only if the server lacks the entry. Uploaded
//! entries carry each output's `sha256` (its CAS name), computed by the
//! uploader; local entries need not have it. Large outputs travel as the
//! store keeps them, one zstd frame (`zstd_size` in the entry, the CAS name
//! being the frame's SHA-256): a download is checked against that name, then
//! decoded and checked against the output's blake3 and size.
//!
//! A hit touches the entry's mtime: `cache gc` keeps recently used entries
//! ([`collect_garbage`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::exec::fingerprint::Hash;
use crate::cache::http::{BlobUpload, RemoteTier, Upload};
use crate::exec::state::{now_ns, Stamp};
use crate::store::BlobEncoding;
use super::writer::{Write, Writer};
use crate::store::Store;

pub(crate) const AC_VERSION: u32 = 1;
/// Most header lists remembered per pre-key.
const MANIFEST_CAPACITY: usize = 16;

/// Outputs from this size on may be stored in the background
/// ([`ActionCache::store_output_or_defer`]).
pub const DEFER_MIN: u64 = 8 << 20;

/// An output hashed but not yet in the store.
#[derive(Debug, Clone)]
pub struct PendingBlob {
    host: Utf8PathBuf,
    blake3: String,
    size: u64,
    stamp: Stamp,
}

/// One output of a cached action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedOutput {
    /// Under `/kraft`.
    pub path: Utf8PathBuf,
    /// Blob name in the store (blake3 hex).
    pub blake3: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// SHA-256 hex of the bytes: the blob's name in a remote CAS. Set in
    /// entries that went through the remote cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Set in uploaded entries whose CAS entry is one zstd frame of the
    /// bytes (as the store keeps large outputs): the frame's size. The
    /// `sha256` then names the frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_size: Option<u64>,
}

/// What an action produced for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub outputs: Vec<CachedOutput>,
    /// Discovered inputs (sorted) whose hashes are part of the key.
    #[serde(default)]
    pub discovered: Vec<Utf8PathBuf>,
    /// What the command printed (compiler warnings), replayed on a hit.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum File {
    Entry { version: u32, entry: Entry },
    Manifest { version: u32, candidates: Vec<Vec<Utf8PathBuf>> },
}

/// A restored output: where it is now, its hash, and its stamp after the rename.
#[derive(Debug, Clone)]
pub struct Restored {
    pub path: Utf8PathBuf,
    pub host: Utf8PathBuf,
    pub hash: Hash,
    pub mode: u32,
    pub stamp: Stamp,
    pub hashed_at_ns: i64,
}

/// The action cache of one store.
#[derive(Debug, Clone)]
pub struct ActionCache {
    store: Store,
    dir: Utf8PathBuf,
    remote: Option<Arc<RemoteTier>>,
    writer: Arc<Writer>,
}


impl ActionCache {
    pub fn new(store: &Store) -> ActionCache {
        ActionCache { store: store.clone(), dir: store.root().join("ac"), remote: None, writer: Arc::default() }
    }

    /// The same cache with a writer of its own (for the writer's thread,
    /// which must not hold the writer that waits for it).
    pub(super) fn without_writer(&self) -> ActionCache {
        ActionCache { writer: Arc::default(), ..self.clone() }
    }

    /// Wait until every queued entry and manifest is written; the first
    /// write error, if any. A build calls it before it returns.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.writer.flush()
    }

    /// Put a remote tier behind the local one (for one build).
    pub fn with_remote(mut self, remote: Option<Arc<RemoteTier>>) -> ActionCache {
        self.remote = remote;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn entry_path(&self, key: &Hash) -> Utf8PathBuf {
        let hex = key.to_hex();
        self.dir.join(&hex[..2]).join(hex.as_str())
    }

    fn read(&self, key: &Hash) -> Option<File> {
        let path = self.entry_path(key);
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice::<File>(&bytes) {
            Ok(f) => Some(f),
            Err(_) => {
                // Corrupt (a torn write cannot happen; a disk or a user can).
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    fn write(&self, key: &Hash, file: &File) -> anyhow::Result<()> {
        let path = self.entry_path(key);
        let dir = path.parent().expect("entry has a parent");
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        let bytes = serde_json::to_vec(file)?;
        let tmp = tempfile::Builder::new()
            .prefix("ac-")
            .tempfile_in(self.store.root().join("tmp"))
            .context("creating a temporary action cache entry")?;
        fs::write(tmp.path(), &bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(&path).map_err(|e| e.error).with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// The entry for `key`, if there is a well-formed one: local, else
    /// (with a remote tier) fetched, verified and copied into the local tier.
    pub fn get(&self, key: &Hash) -> Option<Entry> {
        match self.read(key) {
            Some(File::Entry { version: AC_VERSION, entry }) => {
                touch(&self.entry_path(key));
                self.publish(key, &entry, true);
                Some(entry)
            }
            Some(_) => None,
            None => self.get_remote(key),
        }
    }

    fn get_remote(&self, key: &Hash) -> Option<Entry> {
        let tier = self.remote.as_ref().filter(|t| t.enabled())?;
        let payload = tier.get_ac(key.to_hex().as_str())?;
        let Ok(File::Entry { version: AC_VERSION, entry }) = serde_json::from_slice::<File>(&payload) else {
            return None;
        };
        for out in &entry.outputs {
            if self.store.has_blob(&out.blake3) {
                continue;
            }
            let sha256 = out.sha256.as_deref()?;
            if let Some(frame_size) = out.zstd_size {
                let frame = tier.get_blob(sha256, Some(frame_size))?;
                match crate::store::blob::frame_blake3(&frame, out.size) {
                    Ok((hash, size)) if hash.to_hex().as_str() == out.blake3 && size == out.size => {}
                    _ => {
                        tier.discard_blob(sha256, "it does not decode to the entry's blake3");
                        return None;
                    }
                }
                self.store.insert_blob_encoded(&out.blake3, BlobEncoding::Zstd, &frame).ok()?;
                continue;
            }
            let bytes = tier.get_blob(sha256, Some(out.size))?;
            if blake3::hash(&bytes).to_hex().as_str() != out.blake3 {
                tier.discard_blob(sha256, "it does not match the entry's blake3");
                return None;
            }
            self.store.insert_blob_bytes(&bytes).ok()?;
        }
        self.write(key, &File::Entry { version: AC_VERSION, entry: entry.clone() }).ok()?;
        tier.note_hit();
        Some(entry)
    }

    /// Record `entry` under `key` (in the background: see [`ActionCache::flush`]).
    /// Every blob it names must already be stored.
    pub fn put(&self, key: &Hash, entry: &Entry) -> anyhow::Result<()> {
        self.writer.send(self, Write::Entry(*key, entry.clone()));
        Ok(())
    }

    pub(super) fn put_now(&self, key: &Hash, entry: &Entry) -> anyhow::Result<()> {
        self.write(key, &File::Entry { version: AC_VERSION, entry: entry.clone() })?;
        self.publish(key, entry, false);
        Ok(())
    }

    /// Queue the upload of an entry and its blobs (when the remote is writable).
    fn publish(&self, key: &Hash, entry: &Entry, only_if_missing: bool) {
        let Some(tier) = self.remote.as_ref().filter(|t| t.writable()) else { return };
        // The CAS gets each blob as stored: a compressed blob is sent as its
        // frame, named by the frame's SHA-256, and the entry says so.
        let mut frame_sizes = Vec::with_capacity(entry.outputs.len());
        let mut blobs = Vec::with_capacity(entry.outputs.len());
        for o in &entry.outputs {
            let Some(blob) = self.store.blob_file(&o.blake3) else { return };
            let frame_size = (blob.encoding == BlobEncoding::Zstd).then_some(blob.stored_size);
            // A known SHA-256 is reused only if it names this very form.
            let sha256 = o.sha256.clone().filter(|_| o.zstd_size == frame_size);
            frame_sizes.push(frame_size);
            blobs.push(BlobUpload { path: blob.path, sha256 });
        }
        let mut entry = entry.clone();
        let payload = Box::new(move |shas: &[String]| {
            for ((out, sha), frame_size) in entry.outputs.iter_mut().zip(shas).zip(frame_sizes) {
                out.sha256 = Some(sha.clone());
                out.zstd_size = frame_size;
            }
            serde_json::to_vec(&File::Entry { version: AC_VERSION, entry }).ok()
        });
        tier.upload(Upload { key: key.to_hex().to_string(), blobs, payload, only_if_missing });
    }

    fn publish_manifest(&self, prekey: &Hash, candidates: Vec<Vec<Utf8PathBuf>>, only_if_missing: bool) {
        let Some(tier) = self.remote.as_ref().filter(|t| t.writable()) else { return };
        let payload =
            Box::new(move |_: &[String]| serde_json::to_vec(&File::Manifest { version: AC_VERSION, candidates }).ok());
        tier.upload(Upload { key: prekey.to_hex().to_string(), blobs: Vec::new(), payload, only_if_missing });
    }

    /// Header-path lists recorded for `prekey`, most recent first; with a
    /// remote tier, the remote's lists follow the local ones.
    pub fn manifest(&self, prekey: &Hash) -> Vec<Vec<Utf8PathBuf>> {
        let mut candidates = self.local_manifest(prekey);
        if !candidates.is_empty() {
            self.publish_manifest(prekey, candidates.clone(), true);
        }
        if let Some(tier) = self.remote.as_ref().filter(|t| t.enabled()) {
            if let Some(payload) = tier.get_ac(prekey.to_hex().as_str()) {
                if let Ok(File::Manifest { version: AC_VERSION, candidates: remote }) = serde_json::from_slice(&payload) {
                    for c in remote {
                        if !candidates.contains(&c) {
                            candidates.push(c);
                        }
                    }
                }
            }
        }
        candidates
    }

    fn local_manifest(&self, prekey: &Hash) -> Vec<Vec<Utf8PathBuf>> {
        match self.read(prekey) {
            Some(File::Manifest { version: AC_VERSION, candidates }) => candidates,
            _ => Vec::new(),
        }
    }

    /// Put `discovered` first in the manifest of `prekey` (in the background,
    /// after the entries queued before it).
    pub fn add_to_manifest(&self, prekey: &Hash, discovered: &[Utf8PathBuf]) -> anyhow::Result<()> {
        self.writer.send(self, Write::Manifest(*prekey, discovered.to_vec()));
        Ok(())
    }

    pub(super) fn add_to_manifest_now(&self, prekey: &Hash, discovered: &[Utf8PathBuf]) -> anyhow::Result<()> {
        let current = self.local_manifest(prekey);
        if current.first().map(|c| c.as_slice()) == Some(discovered) {
            return Ok(());
        }
        // One lock per 256th of the key space, not per key: a lock file per
        // key would be one more file created per action, and creating files
        // is what a cold build's tool spends most of its own time on.
        let _lock = self.store.lock(&format!("ac-manifests-{}", &prekey.to_hex()[..2]))?;
        let mut candidates = self.local_manifest(prekey);
        candidates.retain(|c| c.as_slice() != discovered);
        candidates.insert(0, discovered.to_vec());
        candidates.truncate(MANIFEST_CAPACITY);
        self.write(prekey, &File::Manifest { version: AC_VERSION, candidates: candidates.clone() })?;
        self.publish_manifest(prekey, candidates, false);
        Ok(())
    }

    /// Copy `host` into the store as a blob; returns the output record.
    pub fn store_output(&self, path: &Utf8Path, host: &Utf8Path) -> anyhow::Result<(CachedOutput, Stamp)> {
        let (output, stamp, pending) = self.store_output_or_defer(path, host, false)?;
        debug_assert!(pending.is_none());
        Ok((output, stamp))
    }

    /// [`ActionCache::store_output`], but with `defer` an output of
    /// [`DEFER_MIN`] bytes or more is only hashed: its blob is written by the
    /// background writer before the entry that names it
    /// ([`ActionCache::put_after_blobs`]). Compressing such an output takes
    /// about a second (the musl partial links), and the next link of the
    /// chain need not wait for it.
    pub fn store_output_or_defer(&self, path: &Utf8Path, host: &Utf8Path, defer: bool) -> anyhow::Result<(CachedOutput, Stamp, Option<PendingBlob>)> {
        let meta = fs::metadata(host).with_context(|| format!("reading output {host}"))?;
        let stamp = Stamp::of(&meta);
        let (blake3, pending) = if defer && meta.len() >= DEFER_MIN {
            let (hash, _) = crate::util::hash::blake3_file(host.as_std_path()).with_context(|| format!("hashing {host}"))?;
            let hash = hash.to_hex().to_string();
            let pending = (!self.store.has_blob(&hash)).then(|| PendingBlob { host: host.to_owned(), blake3: hash.clone(), size: meta.len(), stamp });
            (hash, pending)
        } else {
            (self.store.insert_blob_file(host)?, None)
        };
        let after = fs::metadata(host).map(|m| Stamp::of(&m)).ok();
        if after != Some(stamp) {
            anyhow::bail!("output {host} changed while it was being stored");
        }
        Ok((
            CachedOutput {
                path: path.to_owned(),
                blake3,
                size: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
                sha256: None,
                zstd_size: None,
            },
            stamp,
            pending,
        ))
    }

    /// [`ActionCache::put`] once every pending blob is in the store. An
    /// output that changed since it was hashed is stored under its new
    /// content's name and the entry is dropped: a later miss, never an
    /// entry naming other bytes.
    pub fn put_after_blobs(&self, key: &Hash, entry: &Entry, pending: Vec<PendingBlob>) -> anyhow::Result<()> {
        if pending.is_empty() {
            return self.put(key, entry);
        }
        self.writer.send(self, Write::EntryAfterBlobs(*key, entry.clone(), pending));
        Ok(())
    }

    pub(super) fn put_after_blobs_now(&self, key: &Hash, entry: &Entry, pending: &[PendingBlob]) -> anyhow::Result<()> {
        for blob in pending {
            let unchanged = fs::metadata(&blob.host).map(|m| Stamp::of(&m)).ok() == Some(blob.stamp);
            if !unchanged {
                return Ok(());
            }
            // Hashed when the action ended: read once more, to copy.
            match self.store.insert_blob_file_hashed(&blob.host, &blob.blake3, blob.size) {
                Ok(()) => {}
                // Changed or removed by a later action meanwhile: no entry, as above.
                Err(_) if fs::metadata(&blob.host).map(|m| Stamp::of(&m)).ok() != Some(blob.stamp) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.put_now(key, entry)
    }

    /// Put every output of `entry` in place (at `to_host(path)`), or none.
    /// Returns `None` on a miss (a blob missing or corrupt; corrupt blobs are
    /// removed from the store).
    pub fn restore(
        &self,
        entry: &Entry,
        to_host: &dyn Fn(&Utf8Path) -> Utf8PathBuf,
    ) -> anyhow::Result<Option<Vec<Restored>>> {
        self.restore_outputs(&entry.outputs, to_host)
    }

    /// Whether the store holds the bytes of every output of `entry`, each
    /// read and hashed (a corrupt one is removed: the entry is a miss, as
    /// it is for [`ActionCache::restore`]).
    pub fn holds_outputs(&self, entry: &Entry) -> anyhow::Result<bool> {
        for out in &entry.outputs {
            if !self.store.verify_blob(&out.blake3)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`ActionCache::restore`] for outputs of any provenance (outputs a
    /// build left in the store: see `exec::in_store`).
    pub fn restore_outputs(
        &self,
        outputs: &[CachedOutput],
        to_host: &dyn Fn(&Utf8Path) -> Utf8PathBuf,
    ) -> anyhow::Result<Option<Vec<Restored>>> {
        for out in outputs {
            if !self.store.has_blob(&out.blake3) {
                return Ok(None);
            }
        }
        let mut staged = Vec::with_capacity(outputs.len());
        for out in outputs {
            let host = to_host(&out.path);
            let dir = host.parent().expect("output has a parent");
            fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.", host.file_name().unwrap_or("out")))
                .suffix(".restore")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {dir}"))?;
            let tmp_path = Utf8Path::from_path(tmp.path()).expect("utf-8 temp path").to_owned();
            let mut file = tmp.reopen().with_context(|| format!("opening {tmp_path}"))?;
            let Some(hash) = self.store.restore_blob(&out.blake3, &mut file, &tmp_path)? else {
                return Ok(None);
            };
            drop(file);
            let hashed_at_ns = now_ns();
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(out.mode))
                .with_context(|| format!("setting the mode of {}", tmp.path().display()))?;
            staged.push((tmp, host, out, hash, hashed_at_ns));
        }
        let mut restored = Vec::with_capacity(staged.len());
        for (tmp, host, out, hash, hashed_at_ns) in staged {
            tmp.persist(&host).map_err(|e| e.error).with_context(|| format!("restoring {host}"))?;
            let stamp = Stamp::of(&fs::metadata(&host).with_context(|| format!("reading metadata of {host}"))?);
            restored.push(Restored { path: out.path.clone(), host, hash, mode: out.mode, stamp, hashed_at_ns });
        }
        Ok(Some(restored))
    }
}

/// Mark an entry as used now (its mtime), for `cache gc`.
fn touch(path: &Utf8Path) {
    if let Ok(file) = fs::OpenOptions::new().write(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

// ------------------------------------------------------------------ verify

/// The result of [`ActionCache::verify`].
#[derive(Debug, Clone, Default)]
pub struct AcVerifyReport {
    pub entries_checked: usize,
    pub manifests_checked: usize,
    /// `(file, what is wrong)`.
    pub problems: Vec<(Utf8PathBuf, String)>,
    /// Whether the problem files were deleted.
    pub removed: bool,
}

impl AcVerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Every `ac/<aa>/<name>` file, with its name.
pub(crate) fn ac_files(dir: &Utf8Path) -> Vec<(String, Utf8PathBuf)> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(2).max_depth(2).into_iter().filter_map(Result::ok) {
        let Ok(path) = Utf8PathBuf::from_path_buf(entry.path().to_owned()) else { continue };
        if entry.file_type().is_file() {
            files.push((path.file_name().unwrap_or("").to_owned(), path));
        }
    }
    files.sort();
    files
}

impl ActionCache {
    /// Check every `ac/` file: it parses, has the current version, is named
    /// by a hash under its prefix, and (entries) every blob it names is in
    /// the store. With `remove`, bad files are deleted (a miss, as for any
    /// missing entry).
    pub fn verify(&self, remove: bool) -> anyhow::Result<AcVerifyReport> {
        let mut report = AcVerifyReport { removed: remove, ..Default::default() };
        for (name, path) in ac_files(&self.dir) {
            let prefix = path.parent().and_then(|p| p.file_name()).unwrap_or("");
            let problem = if !crate::util::hash::is_hex64(&name) || !name.starts_with(prefix) {
                Some("name is not a hash under its prefix".to_owned())
            } else {
                match fs::read(&path).map_err(|e| e.to_string()).and_then(|b| {
                    serde_json::from_slice::<File>(&b).map_err(|e| format!("malformed: {e}"))
                }) {
                    Err(e) => Some(e),
                    Ok(File::Manifest { version, .. }) => {
                        report.manifests_checked += 1;
                        (version != AC_VERSION).then(|| format!("manifest version {version}"))
                    }
                    Ok(File::Entry { version, entry }) => {
                        report.entries_checked += 1;
                        if version != AC_VERSION {
                            Some(format!("entry version {version}"))
                        } else {
                            entry
                                .outputs
                                .iter()
                                .find(|o| !self.store.has_blob(&o.blake3))
                                .map(|o| format!("blob {} of {} is missing", o.blake3, o.path))
                        }
                    }
                }
            };
            if let Some(problem) = problem {
                if remove {
                    fs::remove_file(&path).with_context(|| format!("removing {path}"))?;
                }
                report.problems.push((path, problem));
            }
        }
        Ok(report)
    }
}
