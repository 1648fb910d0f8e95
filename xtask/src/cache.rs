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
//! A remote tier (HTTP `GET/PUT/HEAD` on `/ac/<key>` and `/cas/<hash>`) can be
//! layered in front later: [`ActionCache::get`] falls back to it on a local
//! miss and copies what it fetched into the local tier; [`ActionCache::put`]
//! also uploads. Entries carry everything needed for that (blob hash, size,
//! mode); a `sha256`-addressed CAS would add a `sha256` field to
//! [`CachedOutput`], filled only when the remote is enabled.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::fingerprint::Hash;
use crate::state::{hash_file, now_ns, Stamp};
use crate::store::Store;

const AC_VERSION: u32 = 1;
/// Most header lists remembered per pre-key.
const MANIFEST_CAPACITY: usize = 16;

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
enum File {
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
}

impl ActionCache {
    pub fn new(store: &Store) -> ActionCache {
        ActionCache { store: store.clone(), dir: store.root().join("ac") }
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
        fs::write(tmp.path(), &bytes)?;
        tmp.persist(&path).map_err(|e| e.error).with_context(|| format!("writing {path}"))?;
        Ok(())
    }

    /// The entry for `key`, if there is a well-formed one.
    pub fn get(&self, key: &Hash) -> Option<Entry> {
        match self.read(key)? {
            File::Entry { version: AC_VERSION, entry } => Some(entry),
            _ => None,
        }
    }

    /// Record `entry` under `key`. Every blob it names must already be stored.
    pub fn put(&self, key: &Hash, entry: &Entry) -> anyhow::Result<()> {
        self.write(key, &File::Entry { version: AC_VERSION, entry: entry.clone() })
    }

    /// Header-path lists recorded for `prekey`, most recent first.
    pub fn manifest(&self, prekey: &Hash) -> Vec<Vec<Utf8PathBuf>> {
        match self.read(prekey) {
            Some(File::Manifest { version: AC_VERSION, candidates }) => candidates,
            _ => Vec::new(),
        }
    }

    /// Put `discovered` first in the manifest of `prekey`.
    pub fn add_to_manifest(&self, prekey: &Hash, discovered: &[Utf8PathBuf]) -> anyhow::Result<()> {
        let current = self.manifest(prekey);
        if current.first().map(|c| c.as_slice()) == Some(discovered) {
            return Ok(());
        }
        let _lock = self.store.lock(&format!("ac-{}", prekey.to_hex()))?;
        let mut candidates = self.manifest(prekey);
        candidates.retain(|c| c.as_slice() != discovered);
        candidates.insert(0, discovered.to_vec());
        candidates.truncate(MANIFEST_CAPACITY);
        self.write(prekey, &File::Manifest { version: AC_VERSION, candidates })
    }

    /// Copy `host` into the store as a blob; returns the output record.
    pub fn store_output(&self, path: &Utf8Path, host: &Utf8Path) -> anyhow::Result<(CachedOutput, Stamp)> {
        let meta = fs::metadata(host).with_context(|| format!("reading output {host}"))?;
        let stamp = Stamp::of(&meta);
        let blake3 = self.store.insert_blob_file(host)?;
        let after = fs::metadata(host).map(|m| Stamp::of(&m)).ok();
        if after != Some(stamp) {
            anyhow::bail!("output {host} changed while it was being stored");
        }
        Ok((
            CachedOutput { path: path.to_owned(), blake3, size: meta.len(), mode: meta.permissions().mode() & 0o7777 },
            stamp,
        ))
    }

    /// Put every output of `entry` in place (at `to_host(path)`), or none.
    /// Returns `None` on a miss (a blob missing or corrupt; corrupt blobs are
    /// removed from the store).
    pub fn restore(
        &self,
        entry: &Entry,
        to_host: &dyn Fn(&Utf8Path) -> Utf8PathBuf,
    ) -> anyhow::Result<Option<Vec<Restored>>> {
        for out in &entry.outputs {
            if !self.store.has_blob(&out.blake3) {
                return Ok(None);
            }
        }
        let mut staged = Vec::with_capacity(entry.outputs.len());
        for out in &entry.outputs {
            let host = to_host(&out.path);
            let dir = host.parent().expect("output has a parent");
            fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{}.", host.file_name().unwrap_or("out")))
                .suffix(".restore")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temporary file in {dir}"))?;
            let blob = self.store.blob_path(&out.blake3);
            // fs::copy uses copy_file_range, which reflinks where the file system can.
            match fs::copy(&blob, tmp.path()) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e).with_context(|| format!("copying {blob}")),
            }
            let hashed_at_ns = now_ns();
            let tmp_path = Utf8Path::from_path(tmp.path()).expect("utf-8 temp path").to_owned();
            let hash = hash_file(&tmp_path)?;
            if hash.to_hex().as_str() != out.blake3 {
                // Corrupt blob: drop it so the next insert rewrites it.
                let _ = fs::remove_file(&blob);
                return Ok(None);
            }
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(out.mode))?;
            staged.push((tmp, host, out, hash, hashed_at_ns));
        }
        let mut restored = Vec::with_capacity(staged.len());
        for (tmp, host, out, hash, hashed_at_ns) in staged {
            tmp.persist(&host).map_err(|e| e.error).with_context(|| format!("restoring {host}"))?;
            let stamp = Stamp::of(&fs::metadata(&host)?);
            restored.push(Restored { path: out.path.clone(), host, hash, mode: out.mode, stamp, hashed_at_ns });
        }
        Ok(Some(restored))
    }
}
