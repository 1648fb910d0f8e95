//! The build pipeline: lock, fetch, no-op check, plan, execute, record,
//! install. [`target`] builds a Unikraft image, [`sysroot`] a plain make
//! project; both go through the stages of one [`OutputDir`]:
//!
//! 1. [`OutputDir::open`] takes the output directory's lock (a second build
//!    of the same output waits, says so, then finds the work done);
//! 2. [`OutputDir::noop`] is the stat-only check: nothing moved since the
//!    last successful build → stop here;
//! 3. [`OutputDir::plan`] plans under a store lock on the plan key (a
//!    concurrent build of the same plan waits and reuses the entry);
//! 4. the caller executes the graph and installs what it produced;
//! 5. [`OutputDir::record`] writes the no-op snapshot: the files the build
//!    used, the build state, and what was installed.

pub mod sysroot;
pub mod target;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::exec::mounts::MountMap;
use crate::exec::noop::Snapshot;
use crate::plan::Plan;
use crate::store::Store;

/// One output directory (`target/kraft/<app>/<target>/`, the sysroot's
/// work dir), held for the length of a build.
pub struct OutputDir {
    pub dir: Utf8PathBuf,
    /// Key of the no-op snapshot: the plan key, the host directories
    /// behind the mounts (another checkout is another snapshot), and
    /// whether outputs may stay in the store.
    noop_key: String,
    _lock: std::fs::File,
}

impl OutputDir {
    /// Lock `dir` (created if missing), waiting for another build of it.
    pub fn open(dir: &Utf8Path, plan_key: &str, mounts: &MountMap) -> Result<OutputDir> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating directory {dir}"))?;
        let lock = crate::exec::lock::wait_for(&dir.join(".lock"), dir)?;
        // `KRAFT_MATERIALIZE=all` after a build that left outputs in the
        // store is not a no-op: it writes them.
        let materialize = if crate::exec::in_store::setting()? { "" } else { "+materialize:all" };
        Ok(OutputDir { dir: dir.to_owned(), noop_key: format!("{plan_key}+mounts:{}{materialize}", mounts.host_digest()), _lock: lock })
    }

    pub fn state_path(&self) -> Utf8PathBuf {
        self.dir.join("state.json")
    }

    fn noop_path(&self) -> Utf8PathBuf {
        self.dir.join("noop.json")
    }

    /// The last successful build's snapshot, if nothing it used has moved.
    pub fn noop(&self) -> Option<Snapshot> {
        crate::exec::noop::check(&self.noop_path(), &self.noop_key)
    }

    /// Forget the snapshot, then plan with `make` under the store's lock on
    /// `plan_key`; a cached plan's last use is noted for `cache gc`.
    pub fn plan(&self, store: &Store, plan_key: &str, make: impl FnOnce() -> Result<Plan>) -> Result<Plan> {
        crate::exec::noop::invalidate(&self.noop_path());
        let plan = {
            let _plan_lock = store.lock(&format!("plan-{plan_key}"))?;
            make()?
        };
        if plan.cached {
            // Best effort: the entry may be read-only.
            let used = store.root().join("plans").join(&plan.key).join(crate::plan::PLAN_FILE);
            if let Ok(file) = std::fs::File::options().append(true).open(&used) {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        }
        Ok(plan)
    }

    /// The snapshot the next no-op check compares with: every file the
    /// build used (`watched`), plus the build state (gone or rewritten, the
    /// directory is not what the snapshot describes).
    pub fn record(&self, actions: usize, units: usize, mut watched: Vec<Utf8PathBuf>) {
        watched.push(self.state_path());
        crate::exec::noop::record(&self.noop_path(), &self.noop_key, actions, units, &watched);
    }
}
