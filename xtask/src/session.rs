//! What every command needs: the workspace, the store, mirrors, the network
//! mode and the output. Built once from the global flags.

use camino::Utf8PathBuf;

use crate::fetch::{Fetcher, NetworkMode};
use crate::flags::Global;
use crate::mirror::Mirrors;
use crate::output::Output;
use crate::recipe::RecipeBook;
use crate::store::Store;
use crate::workspace::Workspace;

pub struct Session {
    /// The flags it was made from (to make variants of it).
    pub global: Global,
    pub workspace: Workspace,
    pub store: Store,
    pub mirrors: Mirrors,
    pub recipes: RecipeBook,
    pub mode: NetworkMode,
    /// `--locked`/`--frozen`, or CI=true: the lock must not change.
    pub locked: bool,
    pub jobs: usize,
    pub output: Output,
    pub kraftfile: Option<Utf8PathBuf>,
    /// The shared cache, if configured (flag > KRAFT_REMOTE_CACHE > workspace).
    pub remote: Option<crate::remote::RemoteCache>,
}

impl Session {
    pub fn new(workspace: Workspace, global: &Global) -> anyhow::Result<Session> {
        let store_root = match &global.store {
            Some(dir) => dir.clone(),
            None => Store::default_root()?,
        };
        let store = Store::open(store_root)?;
        let mirrors = Mirrors::from_env_and(&workspace.mirror_rules())?;
        let recipes = RecipeBook::load(&workspace.recipes_dirs())?;
        let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
        Ok(Session {
            global: global.clone(),
            store,
            mirrors,
            recipes,
            mode: NetworkMode { offline: global.offline || global.frozen },
            locked: global.locked || global.frozen || ci,
            jobs: global.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
            output: Output::new(global.message_format),
            kraftfile: global.kraftfile.clone(),
            remote: crate::remote::RemoteCache::from_env(global.remote_cache.as_deref(), workspace.metadata.remote_cache.as_deref())
                .map(|r| r.with_warnings(|message| eprintln!("warning: {message}"))),
            workspace,
        })
    }

    pub fn fetcher(&self) -> Fetcher<'_> {
        Fetcher::new(&self.store, &self.mirrors, self.mode)
    }
}
