//! Bring locked sources into the store, verified.
//!
//! Git sources go through a bare cache repository per upstream URL and are
//! exported at the exact commit; origin archives come from
//! `KRAFT_ARCHIVE_DIR`, a mirror, or their URL, in that order. Nothing enters
//! the store unverified: a tree must match the lock's blake3 and NAR hash, an
//! archive its sha256, or the fetch fails naming both hashes and the source.

use std::collections::HashSet;
use std::sync::Mutex;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;
use crate::source::git::CacheRepo;
use crate::source::lock::LockedArchive;
use crate::source::mirror::{Location, Mirrors};
use crate::store::Store;

/// How much network a command may use (cargo's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetworkMode {
    /// `--offline`: only the store and local mirrors.
    pub offline: bool,
}

/// A tree in the store with both of its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredTree {
    pub path: Utf8PathBuf,
    pub blake3: String,
    pub nar_hash: String,
}

pub struct Fetcher<'a> {
    pub store: &'a Store,
    pub mirrors: &'a Mirrors,
    pub mode: NetworkMode,
    /// URLs already fetched by this process: fetch each at most once.
    fetched: Mutex<HashSet<String>>,
}

impl<'a> Fetcher<'a> {
    pub fn new(store: &'a Store, mirrors: &'a Mirrors, mode: NetworkMode) -> Self {
        Fetcher { store, mirrors, mode, fetched: Mutex::new(HashSet::new()) }
    }

    /// The cache repository for an upstream URL; `refresh` fetches it (once
    /// per process) unless that would need the network while offline.
    pub fn repo(&self, url: &str, refresh: bool) -> anyhow::Result<CacheRepo> {
        let repo = CacheRepo::open(&self.store.root().join("git"), url)?;
        if refresh {
            let location = self.mirrors.rewrite(url);
            let mut fetched = self.fetched.lock().unwrap();
            if !fetched.contains(url) && self.may_use(&location) {
                let _guard = self.store.lock(&format!("git:{url}"))?;
                repo.fetch(location.as_git_arg())?;
                fetched.insert(url.to_string());
            }
        }
        Ok(repo)
    }

    fn may_use(&self, location: &Location) -> bool {
        !(self.mode.offline && location.is_remote())
    }

    fn offline_error(&self, what: &str, url: &str) -> anyhow::Error {
        Diagnostic::new(format!("cannot get {what}: --offline was given, the store has no copy, and {url} needs the network"))
            .help(format!(
                "run once without --offline to fill the store ({}), or serve it locally with KRAFT_MIRRORS='{}=/path/to/mirror/'",
                self.store.root(),
                url_prefix(url)
            ))
            .into()
    }

    /// Resolve a ref (`refs/heads/stable`) or commit in the upstream's cache
    /// repository, fetching first unless offline.
    pub fn refs(&self, url: &str) -> anyhow::Result<(CacheRepo, Vec<(String, String)>)> {
        let location = self.mirrors.rewrite(url);
        let repo = self.repo(url, true)?;
        if !self.may_use(&location) && repo.refs()?.is_empty() {
            return Err(self.offline_error(&format!("the refs of {url}"), url));
        }
        let refs = repo.refs()?;
        Ok((repo, refs))
    }

    /// Export `commit` of `url` into the store. With `expected` hashes (from
    /// the lock) the tree must match them, and an existing store entry is
    /// reused without touching git or the network.
    pub fn git_tree(&self, url: &str, commit: &str, expected: Option<(&str, &str)>) -> anyhow::Result<StoredTree> {
        if let Some((blake3, nar)) = expected {
            if self.store.has_tree(blake3) {
                let recorded = self.recorded_nar(blake3);
                if recorded.as_deref() == Some(nar) {
                    return Ok(StoredTree { path: self.store.tree_path(blake3), blake3: blake3.into(), nar_hash: nar.into() });
                }
                if let Some(recorded) = recorded {
                    return Err(hash_mismatch("NAR hash", &format!("{url} at {commit}"), nar, &recorded));
                }
            }
        }
        let origin = format!("{url} at {commit}");
        let _guard = self.store.lock(&format!("git:{url}"))?;
        let mut repo = CacheRepo::open(&self.store.root().join("git"), url)?;
        if !repo.has_commit(commit) {
            let location = self.mirrors.rewrite(url);
            if !self.may_use(&location) {
                return Err(self.offline_error(&format!("commit {commit}"), url));
            }
            drop(_guard);
            repo = self.repo(url, true)?;
            if !repo.has_commit(commit) {
                return Err(Diagnostic::new(format!("{location} has no commit {commit}"))
                    .help("the commit may have been force-pushed away upstream; run `cargo xtask update <app> <component>` to re-resolve")
                    .into());
            }
        }
        let staging = self.store.staging_dir()?;
        let staged = Utf8Path::from_path(staging.path()).context("non-UTF-8 staging path")?.join("tree");
        std::fs::create_dir(&staged)?;
        repo.export(commit, &staged)?;
        self.insert_verified(&staged, expected, &origin)
    }

    /// Hash a local directory into the store (`.git` left out).
    pub fn local_tree(&self, dir: &Utf8Path) -> anyhow::Result<StoredTree> {
        if !dir.is_dir() {
            return Err(Diagnostic::new(format!("local source {dir} is not a directory"))
                .help("fix `source:` in the Kraftfile; relative paths are relative to the Kraftfile's directory")
                .into());
        }
        let staging = self.store.staging_dir()?;
        let staged = Utf8Path::from_path(staging.path()).context("non-UTF-8 staging path")?.join("tree");
        crate::util::fs::copy_tree_except(dir, &staged, &[".git"])?;
        self.insert_verified(&staged, None, dir.as_str())
    }

    fn insert_verified(&self, staged: &Utf8Path, expected: Option<(&str, &str)>, origin: &str) -> anyhow::Result<StoredTree> {
        let nar_hash = crate::store::nar::nar_hash(staged)?;
        if let Some((_, expected_nar)) = expected {
            if expected_nar != nar_hash {
                return Err(hash_mismatch("NAR hash", origin, expected_nar, &nar_hash));
            }
        }
        let blake3 = self.store.insert_tree(staged, expected.map(|(b, _)| b), origin)?;
        self.record_nar(&blake3, &nar_hash)?;
        Ok(StoredTree { path: self.store.tree_path(&blake3), blake3, nar_hash })
    }

    fn nar_record_path(&self, blake3: &str) -> Utf8PathBuf {
        self.store.root().join("nar").join(blake3)
    }

    fn recorded_nar(&self, blake3: &str) -> Option<String> {
        std::fs::read_to_string(self.nar_record_path(blake3)).ok().map(|s| s.trim().to_string())
    }

    fn record_nar(&self, blake3: &str, nar: &str) -> anyhow::Result<()> {
        let path = self.nar_record_path(blake3);
        std::fs::create_dir_all(path.parent().unwrap())?;
        crate::util::fs::write_atomic(&path, nar.as_bytes())
    }

    /// An origin archive in the store, verified against its sha256.
    pub fn archive(&self, archive: &LockedArchive) -> anyhow::Result<Utf8PathBuf> {
        let stored = self.store.archive_path(&archive.sha256, &archive.name);
        if stored.is_file() {
            return Ok(stored);
        }
        let _guard = self.store.lock(&format!("fetch-archive:{}", archive.sha256))?;
        if stored.is_file() {
            return Ok(stored);
        }
        if let Some(file) = self.mirrors.archive_file(&archive.name) {
            return self.store.insert_archive(&file, &archive.name, &archive.sha256, file.as_str());
        }
        match self.mirrors.rewrite(&archive.url) {
            Location::Local(path) => {
                if !path.is_file() {
                    return Err(Diagnostic::new(format!("origin archive {} not found at {path} (mirror of {})", archive.name, archive.url))
                        .help("put the file there, or in the directory named by KRAFT_ARCHIVE_DIR")
                        .into());
                }
                self.store.insert_archive(&path, &archive.name, &archive.sha256, path.as_str())
            }
            Location::Remote(url) => {
                if self.mode.offline {
                    return Err(Diagnostic::new(format!(
                        "cannot get origin archive {}: --offline was given and the store has no copy",
                        archive.name
                    ))
                    .help(format!("put {} in a directory and set KRAFT_ARCHIVE_DIR to it, or run once without --offline", archive.name))
                    .into());
                }
                let staging = self.store.staging_dir()?;
                let file = Utf8Path::from_path(staging.path()).context("non-UTF-8 staging path")?.join(&archive.name);
                download(&url, &file)?;
                self.store.insert_archive(&file, &archive.name, &archive.sha256, &url)
            }
        }
    }
}

/// Where to get an origin archive the lock may not pin yet.
#[derive(Debug, Clone)]
pub struct ArchiveRequest<'r> {
    /// File name: the store's name for it and how `KRAFT_ARCHIVE_DIR` finds it.
    pub name: &'r str,
    /// URLs to try in order (make's, then a recipe's mirrors).
    pub urls: &'r [String],
}

impl<'a> Fetcher<'a> {
    /// An origin archive pinned to `sha256`: the store's copy, or one got
    /// from `KRAFT_ARCHIVE_DIR`, a mirror or the network and checked. A
    /// different content fails with `mismatch` (the caller knows which
    /// command fixes it).
    pub fn archive_pinned(
        &self,
        request: &ArchiveRequest<'_>,
        sha256: &str,
        mismatch: &dyn Fn(&str, &str) -> anyhow::Error,
    ) -> anyhow::Result<Utf8PathBuf> {
        let stored = self.store.archive_path(sha256, request.name);
        if stored.is_file() {
            return Ok(stored);
        }
        if let Some(found) = self.store.find_archive(sha256) {
            return Ok(found);
        }
        let _guard = self.store.lock(&format!("fetch-archive:{sha256}"))?;
        let got = self.obtain(request)?;
        let actual = crate::util::hash::sha256_file(&got.file)?;
        if actual != sha256.to_ascii_lowercase() {
            return Err(mismatch(&got.origin, &actual));
        }
        self.store.insert_archive(&got.file, request.name, sha256, &got.origin)
    }

    /// An origin archive seen for the first time (trust on first use): got
    /// like [`Fetcher::archive_pinned`], stored, and returned with its
    /// sha256 and where it came from.
    pub fn archive_first_use(&self, request: &ArchiveRequest<'_>) -> anyhow::Result<(Utf8PathBuf, String, String)> {
        let got = self.obtain(request)?;
        let sha256 = crate::util::hash::sha256_file(&got.file)?;
        let path = self.store.insert_archive(&got.file, request.name, &sha256, &got.origin)?;
        Ok((path, sha256, got.origin))
    }

    /// The archive's bytes from the first place that has them:
    /// `KRAFT_ARCHIVE_DIR` by name, then each URL through the mirrors (a
    /// local file, or the network unless offline).
    fn obtain(&self, request: &ArchiveRequest<'_>) -> anyhow::Result<Obtained> {
        if let Some(file) = self.mirrors.archive_file(request.name) {
            return Ok(Obtained { origin: file.to_string(), file, _staging: None });
        }
        let mut tried = Vec::new();
        for url in request.urls {
            match self.mirrors.rewrite(url) {
                Location::Local(path) if path.is_file() => {
                    return Ok(Obtained { origin: format!("{url} (mirror {path})"), file: path, _staging: None })
                }
                Location::Local(path) => tried.push(format!("{path} (local mirror of {url}): no such file")),
                Location::Remote(remote) if self.mode.offline => tried.push(format!("{remote}: --offline")),
                Location::Remote(remote) => {
                    let staging = self.store.staging_dir()?;
                    let file = Utf8Path::from_path(staging.path()).context("non-UTF-8 staging path")?.join(request.name);
                    match download(&remote, &file) {
                        Ok(()) => return Ok(Obtained { origin: remote, file, _staging: Some(staging) }),
                        Err(err) => tried.push(format!("{remote}: {err}")),
                    }
                }
            }
        }
        Err(Diagnostic::new(format!("cannot get origin archive {}: {}", request.name, tried.join("; ")))
            .help(format!(
                "put {} in a directory and set KRAFT_ARCHIVE_DIR to it, map its URL with KRAFT_MIRRORS, or run without --offline",
                request.name
            ))
            .into())
    }
}

/// A file got for the store; `_staging` keeps a download's temp dir alive.
struct Obtained {
    file: Utf8PathBuf,
    origin: String,
    _staging: Option<tempfile::TempDir>,
}

pub fn hash_mismatch(what: &str, origin: &str, expected: &str, actual: &str) -> anyhow::Error {
    Diagnostic::new(format!("{what} mismatch for {origin}: kraft.lock says {expected}, the source has {actual}"))
        .help("if the lock was edited by hand, restore it from version control; if upstream moved, run `cargo xtask update <app> <component>`")
        .into()
}

fn url_prefix(url: &str) -> String {
    match url.find("://") {
        Some(i) => match url[i + 3..].find('/') {
            Some(j) => url[..i + 3 + j + 1].to_string(),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Download with a timeout; no retries hidden from the user.
fn download(url: &str, dest: &Utf8Path) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(300)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|err| {
        Diagnostic::new(format!("downloading {url} failed: {err}"))
            .help("check the network, or put the file in KRAFT_ARCHIVE_DIR, or map the URL with KRAFT_MIRRORS")
    })?;
    let mut reader = response.into_body().into_reader();
    let mut file = std::fs::File::create(dest)?;
    std::io::copy(&mut reader, &mut file).with_context(|| format!("downloading {url}"))?;
    Ok(())
}
