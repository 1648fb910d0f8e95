//! Cross-process locks on store names (`locks/…`): an `flock` on a fresh
//! open file description, so they also exclude other `Store` values in the
//! same process. Lock files are never deleted (that would race with lockers).

use std::fs;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use super::Store;

/// An exclusive lock on a name, held until dropped. Works across processes
/// and across `Store` values within one process (it is an `flock` on a fresh
/// open file description).
#[derive(Debug)]
pub struct StoreLock {
    _file: fs::File,
    path: Utf8PathBuf,
}

impl StoreLock {
    /// The lock file (for messages).
    pub fn path(&self) -> &Utf8Path {
        &self.path
    }
}

impl Store {
    /// Exclusive cross-process lock on `name` (any string: a URL, a hash);
    /// blocks until available, released on drop. Lock files stay in
    /// `locks/` (deleting them would race with other lockers).
    pub fn lock(&self, name: &str) -> anyhow::Result<StoreLock> {
        let path = self.lock_path(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening lock file {path}"))?;
        file.lock().with_context(|| format!("locking {path} (for {name})"))?;
        Ok(StoreLock { _file: file, path })
    }

    /// Like [`Store::lock`] but returns `None` instead of waiting.
    pub fn try_lock(&self, name: &str) -> anyhow::Result<Option<StoreLock>> {
        let path = self.lock_path(name);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening lock file {path}"))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file, path })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(anyhow::Error::new(e).context(format!("locking {path}"))),
        }
    }

    fn lock_path(&self, name: &str) -> Utf8PathBuf {
        // A readable prefix for humans, the hash for uniqueness.
        let readable: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
            .take(48)
            .collect();
        let hash = blake3::hash(name.as_bytes()).to_hex();
        self.root.join("locks").join(format!("{readable}-{}.lock", &hash[..16]))
    }
}
