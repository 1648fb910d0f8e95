//! Origin archives for the planner, pinned by `kraft.lock`.
//!
//! The planner learns from make which archives a configuration downloads
//! (`plan::fetches`); this module gets each one and pins it:
//!
//! * an archive the lock has (by URL) comes from the store, or from
//!   `KRAFT_ARCHIVE_DIR`, a mirror or the network, and must match the locked
//!   sha256. A moving branch archive whose upstream changed fails naming
//!   both hashes, the URL, and `cargo xtask update <app> <component>`;
//! * a new one is trusted on first use (like go.sum or a Nix `fetchurl`
//!   hash): fetched, hashed (checked against the recipe's sha256 if one
//!   knows it), and added to the lock under the library it belongs to;
//! * with `--locked` a new one is refused, naming it and the command that
//!   adds it.
//!
//! The lock file is read again for every lookup and every addition, so the
//! targets of one build (planned one after another) see each other's
//! additions.

use anyhow::Context;
use camino::Utf8PathBuf;

use crate::diag::Diagnostic;
use crate::plan::fetches::{OriginFetch, OriginProvider, PlacedOrigin, StagedOrigin};
use crate::session::Session;
use crate::source::fetch::ArchiveRequest;
use crate::source::lock::{Lock, LockedArchive};
use crate::source::recipe::ComponentKind;

/// Every archive `lock` pins, in the store and verified: the store's copy,
/// or one got from `KRAFT_ARCHIVE_DIR`, a mirror or the network. Content
/// that differs from the pin fails naming both hashes, the URL, and the
/// `update` command that pins it again.
pub fn fetch_locked(session: &Session, app: &str, lock: &Lock) -> anyhow::Result<Vec<StagedOrigin>> {
    let fetcher = session.fetcher();
    let mut staged = Vec::new();
    for component in &lock.components {
        let recipe = session.recipes.get(&component.name, ComponentKind::Library);
        for locked in &component.archives {
            let mut urls = vec![locked.url.clone()];
            urls.extend(recipe.archive_hint(&locked.url, &locked.name).iter().flat_map(|h| h.mirrors.iter().cloned()));
            let request = ArchiveRequest { name: &locked.name, urls: &urls };
            // A recipe that names the old sha256 is pinned too: say to change it first.
            let recipe_pin = recipe.archive_hint(&locked.url, &locked.name).filter(|h| h.sha256.eq_ignore_ascii_case(&locked.sha256));
            let mismatch = |origin: &str, actual: &str| -> anyhow::Error {
                let update = format!("`cargo xtask update {app} {}`", component.name);
                let fix = match recipe_pin {
                    Some(_) => format!(
                        "recipe `{}` ({}) pins sha256 {} too; if the new content is expected, set its sha256 to {actual}, then run {update} to pin it again",
                        recipe.name(),
                        recipe.origin,
                        locked.sha256
                    ),
                    None => format!("if the new content is expected (a branch archive moves when its upstream does), run {update} to pin it again"),
                };
                Diagnostic::new(format!(
                    "origin archive {} of `{}` changed: kraft.lock pins sha256 {}, but {} now has sha256 {actual} (got from {origin})",
                    locked.name, component.name, locked.sha256, locked.url
                ))
                .help(format!("{fix}; otherwise check where the file came from (KRAFT_ARCHIVE_DIR, a mirror)"))
                .into()
            };
            let file = fetcher.archive_pinned(&request, &locked.sha256, &mismatch)?;
            staged.push(StagedOrigin { url: locked.url.clone(), sha256: locked.sha256.clone(), file });
        }
    }
    Ok(staged)
}

/// What identifies the app's lock, without borrowing the session.
#[derive(Debug, Clone)]
pub struct AppOrigins {
    /// The app's name as the user wrote it (for the commands we suggest).
    pub app: String,
    pub lock_path: Utf8PathBuf,
}

impl AppOrigins {
    pub fn bind<'s>(&self, session: &'s Session) -> LockedOrigins<'s> {
        LockedOrigins { session, app: self.clone() }
    }
}

/// The provider a build plans with.
pub struct LockedOrigins<'s> {
    session: &'s Session,
    app: AppOrigins,
}

impl LockedOrigins<'_> {
    fn read_lock(&self) -> anyhow::Result<Lock> {
        Ok(Lock::read(&self.app.lock_path)?.map(|f| f.lock).unwrap_or_default())
    }

    /// The lock component an archive belongs to: the library whose build
    /// dir it lands in (`liblwip/…` → `lwip` or `liblwip`), else the core.
    fn owner(&self, lock: &Lock, fetch: &OriginFetch) -> String {
        let library = fetch.library();
        let bare = library.strip_prefix("lib").unwrap_or(library);
        [bare, library]
            .iter()
            .find_map(|name| lock.components.iter().find(|c| c.kind == "library" && c.name == *name))
            .or_else(|| lock.components.iter().find(|c| c.kind == "core"))
            .map(|c| c.name.clone())
            .unwrap_or_else(|| "unikraft".into())
    }

    /// The archive the lock pins for one of `fetch`'s URLs, verified in the store.
    fn pinned(&self, fetch: &OriginFetch) -> anyhow::Result<StagedOrigin> {
        let staged = fetch_locked(self.session, &self.app.app, &self.read_lock()?)?;
        staged
            .into_iter()
            .find(|s| fetch.urls.contains(&s.url))
            .with_context(|| format!("{}: pinned {} but cannot find it again", self.app.lock_path, fetch.urls.join(" or ")))
    }

    fn add_to_lock(&self, owner: &str, archive: LockedArchive) -> anyhow::Result<()> {
        let _guard = self.session.store.lock(&format!("kraft-lock:{}", self.app.lock_path))?;
        let previous = Lock::read(&self.app.lock_path)?;
        let mut lock = previous.as_ref().map(|p| p.lock.clone()).unwrap_or_default();
        let Some(component) = lock.components.iter_mut().find(|c| c.name == owner) else {
            anyhow::bail!("{}: no component `{owner}` to record origin archive {} under", self.app.lock_path, archive.name);
        };
        if component.archives.iter().any(|a| a.url == archive.url && a.sha256 == archive.sha256) {
            return Ok(());
        }
        component.archives.retain(|a| a.name != archive.name);
        component.archives.push(archive);
        let text = lock.render(previous.as_ref().map(|p| &p.document));
        crate::util::fs::write_atomic(&self.app.lock_path, text.as_bytes())
    }
}

impl OriginProvider for LockedOrigins<'_> {
    fn staged(&self) -> anyhow::Result<Vec<StagedOrigin>> {
        fetch_locked(self.session, &self.app.app, &self.read_lock()?)
    }

    fn provide(&self, fetch: &OriginFetch) -> anyhow::Result<StagedOrigin> {
        let lock = self.read_lock()?;
        let fetcher = self.session.fetcher();
        let name = fetch.file_name().to_string();
        let owner = self.owner(&lock, fetch);
        let recipe = self.session.recipes.get(&owner, ComponentKind::Library);
        let hint = recipe.archive_hint(&fetch.urls[0], &name).cloned();
        let mut urls = fetch.urls.clone();
        urls.extend(hint.iter().flat_map(|h| h.mirrors.iter().cloned()));
        let request = ArchiveRequest { name: &name, urls: &urls };
        if lock.archive_for(&fetch.urls).is_some() {
            // Pinned since make started (by an earlier request for the same URL).
            return self.pinned(fetch);
        }
        let url = fetch.urls[0].clone();
        if self.session.locked {
            return Err(Diagnostic::new(format!(
                "origin archive {name} ({url}), downloaded by `{}` for this configuration, is not in {} and --locked was given (CI=true implies --locked)",
                owner, self.app.lock_path
            ))
            .help(format!("run `cargo xtask build {}` without --locked to lock it, and commit kraft.lock", self.app.app))
            .into());
        }
        let (_, sha256, origin) = fetcher.archive_first_use(&request)?;
        if let Some(known) = hint.as_ref().filter(|h| h.sha256 != sha256) {
            return Err(Diagnostic::new(format!(
                "origin archive {name} from {origin} has sha256 {sha256}, but recipe `{}` says {url} has sha256 {}",
                recipe.name(),
                known.sha256
            ))
            .help(format!("check where {name} came from (KRAFT_ARCHIVE_DIR, a mirror), or fix the recipe {}", recipe.origin))
            .into());
        }
        self.add_to_lock(&owner, LockedArchive { name: name.clone(), url: url.clone(), sha256: sha256.clone() })?;
        self.session.output.status("Locking", &format!("{owner} archive {name} ({url}) sha256 {}", &sha256[..16]));
        self.pinned(fetch)
    }

    fn still_pinned(&self, placed: &PlacedOrigin) -> bool {
        let Ok(lock) = self.read_lock() else { return false };
        lock.archive_for(std::slice::from_ref(&placed.url)).is_some_and(|(_, a)| a.sha256 == placed.sha256)
            && self.session.store.find_archive(&placed.sha256).is_some()
    }
}
