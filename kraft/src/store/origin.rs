//! Origin archives in the store (`archives/<sha256>/<file name>`),
//! verified against the sha256 the lock pins.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use super::entry::{check_file_name, check_hash_arg, copy_hashing, hash_mismatch};
use super::Store;
use crate::util::hash::{hex, is_hex64};

impl Store {
    pub fn archive_path(&self, sha256_hex: &str, file_name: &str) -> Utf8PathBuf {
        self.root.join("archives").join(sha256_hex).join(file_name)
    }

    /// The archive with this sha256, under any file name, if present.
    pub fn find_archive(&self, sha256_hex: &str) -> Option<Utf8PathBuf> {
        if !is_hex64(sha256_hex) {
            return None;
        }
        let dir = self.root.join("archives").join(sha256_hex);
        let entries = fs::read_dir(&dir).ok()?;
        let mut names: Vec<String> =
            entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        names.into_iter().next().map(|n| dir.join(n))
    }

    /// Copy `file` in as `archives/<sha256>/<file_name>`, checking its
    /// sha256 against `expected_sha256` (an error naming both hashes and
    /// `origin` on mismatch, and nothing inserted). Idempotent; the file
    /// appears atomically, read-only.
    pub fn insert_archive(
        &self,
        file: &Utf8Path,
        file_name: &str,
        expected_sha256: &str,
        origin: &str,
    ) -> anyhow::Result<Utf8PathBuf> {
        check_hash_arg(expected_sha256, "expected sha256", origin)?;
        check_file_name(file_name)?;
        let expected = expected_sha256.to_ascii_lowercase();
        let dest = self.archive_path(&expected, file_name);
        if dest.is_file() {
            return Ok(dest);
        }

        // Copy into tmp/ while hashing: one read of the source.
        let mut staged = tempfile::Builder::new()
            .prefix("archive-")
            .tempfile_in(self.tmp_dir())
            .with_context(|| format!("creating a temporary file in {}", self.tmp_dir()))?;
        let mut source = fs::File::open(file).with_context(|| format!("opening {file}"))?;
        let mut hasher = Sha256::new();
        copy_hashing(&mut source, staged.as_file_mut(), |b| hasher.update(b))
            .with_context(|| format!("copying {file} into the store"))?;
        let actual = hex(&hasher.finalize());
        if actual != expected {
            return Err(hash_mismatch("sha256 of the archive", origin, &expected, &actual));
        }
        staged.as_file().sync_all().ok();
        staged.as_file().set_permissions(fs::Permissions::from_mode(0o444))?;

        let _lock = self.lock(&format!("archive:{expected}"))?;
        if dest.is_file() {
            return Ok(dest);
        }
        let dir = dest.parent().expect("archive path has a parent");
        if !dir.is_dir() {
            // Make the directory appear together with its file.
            let stage_dir = self.staging_dir()?;
            let inner = Utf8Path::from_path(stage_dir.path()).expect("store paths are UTF-8").join("d");
            fs::DirBuilder::new().mode(0o755).create(&inner)?;
            staged.persist(inner.join(file_name)).map_err(|e| e.error)?;
            match fs::rename(&inner, dir) {
                Ok(()) => {}
                Err(_) if dir.is_dir() => {
                    fs::rename(inner.join(file_name), &dest).with_context(|| format!("moving archive to {dest}"))?;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("moving archive to {dest}"))),
            }
        } else {
            staged.persist(&dest).map_err(|e| e.error).with_context(|| format!("moving archive to {dest}"))?;
        }
        Ok(dest)
    }
}
