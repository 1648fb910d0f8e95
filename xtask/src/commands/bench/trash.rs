//! Deleting without deleting while the bench runs: trees a scenario
//! replaces (stores, build dirs, make's checkouts) are moved into a trash
//! dir, emptied when the bench ends.
//!
//! Why: on ext4 without a journal (this machine's root file system:
//! `/sys/fs/ext4/<dev>/journal_task` is `<none>`), allocating an inode
//! skips, one by one, every free inode of the block group deleted in the
//! last 60–300 s (`find_inode_bit` → `recently_deleted`, which reads each
//! one's deletion time). Right after a tree of thousands of files is
//! deleted, creating files costs time in proportion to how many were
//! deleted: a cold musl sysroot right after deleting a store took 8.1 s of
//! system time against 1.4 s without. The bench would measure its own
//! `rm -rf` (on both sides, and more on ours, which also writes the store).
//!
//! When the file system gets short of space (under [`MIN_FREE`]), the trash
//! is emptied on the spot, and the log says so.

use std::sync::Mutex;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

/// Free bytes below which the trash is emptied at once.
const MIN_FREE: u64 = 20 << 30;

static TRASH: Mutex<Option<(Utf8PathBuf, usize)>> = Mutex::new(None);

/// Use `dir` (on the same file system as everything the bench deletes) as
/// the trash; what an interrupted bench left there is kept for [`empty`].
pub fn init(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    *TRASH.lock().unwrap() = Some((dir.to_owned(), 0));
    Ok(())
}

/// Moves `path` (if it exists) out of the way, into the trash; without a
/// trash, or when space is short, removes it.
pub fn discard(path: &Utf8Path) -> Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let mut guard = TRASH.lock().unwrap();
    if let Some((dir, count)) = guard.as_mut() {
        if free_bytes(dir) < MIN_FREE {
            eprintln!("bench: under {} GiB free: emptying the trash now (file creation is slower for a while)", MIN_FREE >> 30);
            remove(dir)?;
            std::fs::create_dir_all(&*dir).with_context(|| format!("creating {dir}"))?;
        }
        *count += 1;
        let to = dir.join(count.to_string());
        remove(&to)?;
        if std::fs::rename(path, &to).is_ok() {
            return Ok(());
        }
    }
    remove(path)
}

/// Removes everything in the trash (the bench's last step).
pub fn empty() -> Result<()> {
    let taken = TRASH.lock().unwrap().take();
    match taken {
        Some((dir, _)) => remove(&dir),
        None => Ok(()),
    }
}

fn remove(path: &Utf8Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        // Store trees are read-only: `remove_tree` makes them writable first.
        Ok(meta) if meta.is_dir() => kraft::util::fs::remove_tree(path),
        Ok(_) => std::fs::remove_file(path).with_context(|| format!("removing {path}")),
        Err(_) => Ok(()),
    }
}

fn free_bytes(dir: &Utf8Path) -> u64 {
    let Ok(c) = std::ffi::CString::new(dir.as_str()) else { return u64::MAX };
    // SAFETY: statvfs writes only the struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return u64::MAX;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}
