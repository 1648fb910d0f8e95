//! What every command needs: the workspace, the store, mirrors, the network
//! mode and the output. Built once from the global flags.

use camino::Utf8PathBuf;

use crate::source::fetch::{Fetcher, NetworkMode};
use crate::output::MessageFormat;
use crate::source::mirror::Mirrors;
use crate::output::Output;
use crate::source::recipe::RecipeBook;
use crate::store::Store;
use crate::source::workspace::Workspace;

/// The choices a command line makes; `cargo xtask` builds it from its global
/// flags.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Fail if kraft.lock is missing or would change.
    pub locked: bool,
    /// `locked` plus `offline`.
    pub frozen: bool,
    /// Only the store and local mirrors; never the network.
    pub offline: bool,
    /// The store root; `None`: [`Store::default_root`].
    pub store: Option<Utf8PathBuf>,
    /// A Kraftfile to read instead of looking one up in the app directory.
    pub kraftfile: Option<Utf8PathBuf>,
    pub message_format: MessageFormat,
    /// The shared cache URL; `Some("")` turns it off.
    pub remote_cache: Option<String>,
    /// Parallel jobs; `None`: the number of cores.
    pub jobs: Option<usize>,
    /// A REAPI engine to execute actions on (`grpc://host:port[/instance]`).
    pub remote_exec: Option<String>,
    /// Publish results to the shared cache (CI); also `KRAFT_REMOTE_UPLOAD=1`.
    pub remote_upload: bool,
}

pub struct Session {
    /// The options it was made from (to make variants of it).
    pub options: Options,
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
    pub remote: Option<crate::cache::http::RemoteCache>,
    /// The REAPI engine (a `grpc://` remote cache, or `--remote-exec`).
    pub reapi: Option<crate::exec::remote::Settings>,
}

impl Session {
    pub fn new(workspace: Workspace, global: &Options) -> anyhow::Result<Session> {
        let store_root = match &global.store {
            Some(dir) => dir.clone(),
            None => Store::default_root()?,
        };
        let store = Store::open(store_root)?;
        let mirrors = Mirrors::from_env_and(&workspace.mirror_rules())?;
        let recipes = RecipeBook::load(&workspace.recipes_dirs())?;
        let ci = crate::config::Config::get().ci;
        let reapi = crate::exec::remote::Settings::resolve(
            global.remote_exec.as_deref(),
            global.remote_cache.as_deref(),
            global.remote_upload,
            workspace.metadata.remote_cache.as_deref(),
        );
        // A `grpc://` cache URL is the engine's: the HTTP cache is then off.
        let http_cache = if reapi.as_ref().is_some_and(|r| r.is_cache_url) { Some("") } else { global.remote_cache.as_deref() };
        Ok(Session {
            options: global.clone(),
            store,
            mirrors,
            recipes,
            mode: NetworkMode { offline: global.offline || global.frozen },
            locked: global.locked || global.frozen || ci,
            jobs: global.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
            output: Output::new(global.message_format),
            kraftfile: global.kraftfile.clone(),
            reapi,
            remote: crate::cache::http::RemoteCache::from_env(http_cache, workspace.metadata.remote_cache.as_deref())
                .map(|r| r.with_warnings(|message| eprintln!("warning: {message}"))),
            workspace,
        })
    }

    pub fn fetcher(&self) -> Fetcher<'_> {
        Fetcher::new(&self.store, &self.mirrors, self.mode)
    }
}
