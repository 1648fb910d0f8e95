//! Helpers shared by the store's entry kinds: listing and removing entries,
//! checking hash arguments, copying while hashing.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use super::Store;
use crate::diag::Diagnostic;
use crate::util::fs::make_writable;
use crate::util::hash::is_hex64;

impl Store {
    /// Make an entry disappear atomically (rename into tmp/), then delete it.
    pub(crate) fn remove_entry(&self, path: &Utf8Path) -> anyhow::Result<()> {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return Ok(()); // already gone
        };
        if meta.is_dir() {
            // Moving a directory to another parent needs write permission on it.
            fs::set_permissions(path, fs::Permissions::from_mode((meta.mode() & 0o777) | 0o700))?;
        }
        let trash = tempfile::Builder::new().prefix("trash-").tempdir_in(self.tmp_dir())?;
        let target = trash.path().join("x");
        fs::rename(path, &target).with_context(|| format!("moving {path} out of the store"))?;
        make_writable(&target)?;
        let meta = fs::symlink_metadata(&target)?;
        if meta.is_dir() {
            fs::remove_dir_all(&target)?;
        } else {
            fs::remove_file(&target)?;
        }
        Ok(())
    }
}

pub(super) fn check_hash_arg(hash: &str, what: &str, origin: &str) -> anyhow::Result<()> {
    let lower = hash.to_ascii_lowercase();
    if !is_hex64(&lower) {
        return Err(Diagnostic::new(format!("{what} `{hash}` for {origin} is not 64 hexadecimal digits"))
            .help("hashes in kraft.lock are lowercase hex; regenerate the lock with `cargo xtask lock`")
            .into());
    }
    Ok(())
}

pub(super) fn check_file_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("archive file name `{name}` must be a single path component");
    }
    Ok(())
}

pub(super) fn hash_mismatch(what: &str, origin: &str, expected: &str, actual: &str) -> anyhow::Error {
    Diagnostic::new(format!(
        "{what} {origin} does not match kraft.lock: expected {expected}, got {actual}"
    ))
    .help(
        "the upstream content changed or a mirror serves something else; if the new content is \
         legitimate, re-pin it with `cargo xtask update <app> <component>` (or fix the recipe's \
         sha256); otherwise check the URL, KRAFT_MIRRORS and KRAFT_ARCHIVE_DIR",
    )
    .into()
}

/// Copy `reader` into `writer`, feeding every chunk to `feed`.
pub(super) fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write, mut feed: impl FnMut(&[u8])) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        feed(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// `(name, path)` of a directory's entries, sorted; names that are not UTF-8
/// are reported with a lossy name (they are malformed store entries anyway).
pub(super) fn list_dir(dir: &Utf8Path) -> anyhow::Result<Vec<(String, Utf8PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name.clone(), dir.join(name)));
    }
    out.sort();
    Ok(out)
}

/// Running totals kept in `<store>/counters.json` (for `cache stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Bytes this store's builds uploaded to a team cache, all time.
    pub uploaded_bytes: u64,
}

impl Store {
    fn counters_path(&self) -> Utf8PathBuf {
        self.root.join("counters.json")
    }

    pub fn counters(&self) -> Counters {
        fs::read(self.counters_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Add to the uploaded total (best effort: statistics never fail a build).
    pub fn count_uploaded(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let Ok(_lock) = self.lock("counters") else { return };
        let mut counters = self.counters();
        counters.uploaded_bytes += bytes;
        if let Ok(text) = serde_json::to_vec(&counters) {
            let _ = crate::util::fs::write_atomic(&self.counters_path(), &text);
        }
    }
}
