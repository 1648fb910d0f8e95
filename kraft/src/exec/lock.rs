//! Build-directory locks: a second build of the same target waits, says so
//! on one line (as cargo does), then finds the work done.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::Context;
use camino::Utf8Path;

/// Take the exclusive lock `lock_path` guarding `dir`, waiting as long as
/// another build holds it. Released when the returned file is dropped.
pub fn wait_for(lock_path: &Utf8Path, dir: &Utf8Path) -> anyhow::Result<fs::File> {
    if let Some(parent) = lock_path.parent().filter(|d| !d.as_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating directory {parent}"))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .with_context(|| format!("opening lock file {lock_path}"))?;
    // A lock can look held for a moment without another build: a process
    // forked elsewhere in this one (a parallel test, a sandbox spawn) holds
    // a copy of the descriptor until its exec closes it. Only a lock still
    // held after a short while is announced.
    let quiet_until = Instant::now() + Duration::from_millis(300);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < quiet_until => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(fs::TryLockError::WouldBlock) => break,
            Err(fs::TryLockError::Error(e)) => {
                return Err(anyhow::Error::new(e).context(format!("locking {lock_path}")))
            }
        }
    }
    eprintln!("{:>12} waiting for file lock on build directory {dir}", "Blocking");
    file.lock().with_context(|| format!("waiting for the lock {lock_path}"))?;
    Ok(file)
}
