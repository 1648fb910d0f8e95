//! The action cache's background writer: entries and manifests (and the
//! blobs of large outputs, before the entry naming them) are written by one
//! thread, so a worker goes back to compiling as soon as its outputs
//! are in the store (a worker blocked on file-system bookkeeping is a core
//! not compiling; under load, ~20-90 ms per action).

use std::sync::Arc;

use camino::Utf8PathBuf;

use super::local::{ActionCache, Entry, PendingBlob};
use crate::exec::fingerprint::Hash;

/// One write the background writer does for [`ActionCache::put`] or
/// [`ActionCache::add_to_manifest`].
pub(super) enum Write {
    Entry(Hash, Entry),
    /// An entry whose large outputs were only hashed: their blobs first.
    EntryAfterBlobs(Hash, Entry, Vec<PendingBlob>),
    Manifest(Hash, Vec<Utf8PathBuf>),
}

/// Entries and manifests are written by one background thread, so a worker
/// goes back to compiling as soon as its outputs are in the store (a
/// worker blocked on file-system bookkeeping is a core not compiling).
/// Started on the first write; [`ActionCache::flush`] (and the last drop)
/// waits for everything queued. Order is kept: an entry is written after
/// the blobs it names (stored before `put`), a manifest after the entries
/// queued before it.
#[derive(Debug, Default)]
pub(super) struct Writer {
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<Write>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The first write that failed.
    error: Arc<std::sync::Mutex<Option<String>>>,
}

impl Writer {
    pub(super) fn send(&self, cache: &ActionCache, write: Write) {
        let mut queue = self.queue.lock().unwrap();
        if queue.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Write>();
            // The thread's cache must not own this writer (it would wait for itself).
            let worker = cache.without_writer();
            let error = self.error.clone();
            let spawned = std::thread::Builder::new().name("kraft-ac-writer".into()).spawn(move || {
                for write in rx {
                    let result = match write {
                        Write::Entry(key, entry) => worker.put_now(&key, &entry),
                        Write::EntryAfterBlobs(key, entry, pending) => worker.put_after_blobs_now(&key, &entry, &pending),
                        Write::Manifest(prekey, discovered) => worker.add_to_manifest_now(&prekey, &discovered),
                    };
                    if let Err(e) = result {
                        error.lock().unwrap().get_or_insert(format!("{e:#}"));
                    }
                }
            });
            match spawned {
                Ok(handle) => {
                    *self.thread.lock().unwrap() = Some(handle);
                    *queue = Some(tx);
                }
                Err(_) => {
                    drop(queue);
                    return Self::run_now(cache, write, &self.error);
                }
            }
        }
        if let Err(std::sync::mpsc::SendError(write)) = queue.as_ref().expect("started above").send(write) {
            drop(queue);
            Self::run_now(cache, write, &self.error);
        }
    }

    fn run_now(cache: &ActionCache, write: Write, error: &std::sync::Mutex<Option<String>>) {
        let result = match write {
            Write::Entry(key, entry) => cache.put_now(&key, &entry),
            Write::EntryAfterBlobs(key, entry, pending) => cache.put_after_blobs_now(&key, &entry, &pending),
            Write::Manifest(prekey, discovered) => cache.add_to_manifest_now(&prekey, &discovered),
        };
        if let Err(e) = result {
            error.lock().unwrap().get_or_insert(format!("{e:#}"));
        }
    }

    pub(super) fn flush(&self) -> anyhow::Result<()> {
        drop(self.queue.lock().unwrap().take());
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
        match self.error.lock().unwrap().take() {
            Some(e) => Err(anyhow::anyhow!("writing the action cache: {e}")),
            None => Ok(()),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

