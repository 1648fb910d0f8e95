//! The remote (team) cache: a second tier behind the local action cache,
//! spoken over bazel-remote's HTTP cache protocol.
//!
//! # Configuration
//!
//! The URL comes from, first match wins:
//!
//! 1. `--remote-cache URL` on the command line,
//! 2. the `KRAFT_REMOTE_CACHE` environment variable,
//! 3. `remote-cache = "URL"` in `[workspace.metadata.kraft]`.
//!
//! An empty value at a level switches the remote cache off (so
//! `KRAFT_REMOTE_CACHE= cargo xtask build app` ignores the workspace's
//! setting). [`resolve_url`] implements this; [`RemoteCache::from_env`] also
//! reads the secret and the read-only switch.
//!
//! | variable                      | meaning                                                            |
//! |-------------------------------|--------------------------------------------------------------------|
//! | `KRAFT_REMOTE_CACHE`          | the cache's base URL (`http://cache.internal:8080`)                |
//! | `KRAFT_CACHE_SECRET`          | the shared secret authenticating action entries (HMAC-SHA256)      |
//! | `KRAFT_REMOTE_CACHE_READONLY` | `1`/`true`: read, never write, even with the secret                |
//!
//! # Protocol
//!
//! bazel-remote's HTTP cache protocol (also served by nginx with WebDAV `PUT`):
//!
//! ```text
//! GET/HEAD/PUT <url>/cas/<sha256-hex>   content: the bytes of one output; the name is their SHA-256
//! GET/HEAD/PUT <url>/ac/<key-hex>       an action entry or a header manifest (see cache.rs), signed
//! ```
//!
//! Local blobs are named by blake3; the CAS is addressed by SHA-256, so the
//! uploader computes the SHA-256 of each output (in the background) and
//! records it in the entry it uploads. A download is checked against both:
//! the SHA-256 it was fetched by and the blake3 the entry names. A mismatch is
//! discarded with a warning, and the action runs locally; nothing unverified
//! is ever restored. With bazel-remote, run it with
//! `--disable_http_ac_validation` (our `ac/` documents are JSON, not Bazel
//! `ActionResult` protobufs).
//!
//! A signed `ac/` document is JSON:
//!
//! ```json
//! { "version": 1, "payload": "<the local cache file, JSON, as a string>", "mac": "<hex>" }
//! ```
//!
//! where `mac = HMAC-SHA256(secret, "kraft-xtask remote ac v1\0" || key-hex || "\0" || payload)`.
//! The key is inside the MAC, so a valid entry cannot be replayed under
//! another action's key.
//!
//! # Trust model
//!
//! The CAS is self-verifying (content is checked against its hash), so only
//! action entries, which map an action key to output hashes, need trust. They
//! are authenticated with the shared secret `KRAFT_CACHE_SECRET`:
//!
//! * **with the secret**: the client reads entries whose MAC verifies, and
//!   writes entries for what it built (CI). Set `KRAFT_REMOTE_CACHE_READONLY=1`
//!   to read only (developer laptops that hold the secret but should not
//!   publish what their possibly-modified toolchains produce).
//! * **without the secret**: the remote cache is off for that client: it
//!   reads nothing (it could not tell a forged entry from a real one) and
//!   writes nothing. It warns once per build: `remote cache disabled:
//!   KRAFT_CACHE_SECRET not set`.
//!
//! An entry with a missing or wrong MAC is ignored (one warning per build)
//! and the action runs locally; a client with write access then replaces
//! the entry with its own. Whoever holds the secret can publish entries, so
//! give it only to machines whose builds you would ship (CI), and to
//! developers who read with `KRAFT_REMOTE_CACHE_READONLY=1`. The server needs
//! no authentication of its own for integrity, though restricting `PUT` to
//! CI at the HTTP level is a sensible second layer.
//!
//! # Failures
//!
//! The remote cache never fails a build. The first transport error, timeout
//! or unexpected status (anything but 2xx, or 404 for a lookup) prints one
//! warning and switches the remote tier off for the rest of the build;
//! everything else is local. Timeouts are short: 2 s to connect, 10 s per
//! request ([`RemoteOptions`]).
//!
//! Uploads run on one background thread fed by a bounded queue (a full queue
//! drops the upload rather than slowing the build). At the end of the build
//! [`RemoteTier::finish`] waits at most [`RemoteOptions::upload_wait`]
//! (5 s) for pending uploads, then gives up with a warning. Blobs are
//! uploaded before the entry naming them (so a reader never finds an entry
//! whose blobs were never sent), each after a `HEAD` shows it missing.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the signed `ac/` document.
const DOC_VERSION: u32 = 1;
const MAC_DOMAIN: &[u8] = b"kraft-xtask remote ac v1\0";
/// Largest `ac/` document accepted.
const MAX_DOC_BYTES: u64 = 16 << 20;

/// The message of the warning printed when the secret is missing.
pub const NO_SECRET_WARNING: &str = "remote cache disabled: KRAFT_CACHE_SECRET not set";

/// Where warnings go: one line each, without the `warning: ` prefix.
pub type WarnSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Tunables; the defaults suit a cache on the local network.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Connect timeout (default 2 s).
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included (default 10 s).
    pub request_timeout: Duration,
    /// How long the end of a build waits for pending uploads (default 5 s).
    pub upload_wait: Duration,
    /// Uploads queued at most; more are dropped (default 1024).
    pub queue_capacity: usize,
    /// Read only, even with the secret.
    pub read_only: bool,
    /// Largest blob downloaded (default 1 GiB).
    pub max_blob_bytes: u64,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            upload_wait: Duration::from_secs(5),
            queue_capacity: 1024,
            read_only: false,
            max_blob_bytes: 1 << 30,
        }
    }
}

/// The remote cache's configuration: URL, secret, options, warning sink.
/// Cheap to clone. Each build starts a [`RemoteTier`] from it.
#[derive(Clone)]
pub struct RemoteCache {
    base: String,
    secret: Option<Arc<[u8]>>,
    options: RemoteOptions,
    warn: WarnSink,
}

impl fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteCache")
            .field("url", &self.base)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("options", &self.options)
            .finish()
    }
}

/// The URL by precedence: `flag` > `KRAFT_REMOTE_CACHE` > `workspace`. An
/// empty value at the level that wins means "off".
pub fn resolve_url(flag: Option<&str>, workspace: Option<&str>) -> Option<String> {
    let env = crate::config::Config::get().remote_cache.clone();
    let chosen = flag.map(str::to_owned).or(env).or(workspace.map(str::to_owned))?;
    let chosen = chosen.trim().to_owned();
    (!chosen.is_empty()).then_some(chosen)
}

impl RemoteCache {
    /// A remote cache at `url` (none when `url` is `None` or empty).
    /// Without a `secret` the cache is configured but inert: each build
    /// warns once ([`NO_SECRET_WARNING`]) and never reads or writes.
    pub fn from_config(url: Option<&str>, secret: Option<&[u8]>) -> Option<RemoteCache> {
        let url = url.map(str::trim).filter(|u| !u.is_empty())?;
        Some(RemoteCache {
            base: url.trim_end_matches('/').to_owned(),
            secret: secret.filter(|s| !s.is_empty()).map(Arc::from),
            options: RemoteOptions::default(),
            warn: Arc::new(|msg: &str| eprintln!("warning: {msg}")),
        })
    }

    /// The usual wiring: URL by precedence ([`resolve_url`]), the secret from
    /// `KRAFT_CACHE_SECRET`, read-only from `KRAFT_REMOTE_CACHE_READONLY`.
    pub fn from_env(flag: Option<&str>, workspace: Option<&str>) -> Option<RemoteCache> {
        let url = resolve_url(flag, workspace)?;
        let config = crate::config::Config::get();
        let secret = config.cache_secret.clone().map(|s| s.into_encoded_bytes());
        let cache = RemoteCache::from_config(Some(&url), secret.as_deref())?;
        let read_only = config.remote_read_only;
        Some(cache.read_only(read_only))
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    pub fn options(&self) -> &RemoteOptions {
        &self.options
    }

    pub fn with_options(mut self, options: RemoteOptions) -> Self {
        self.options = options;
        self
    }

    pub fn read_only(mut self, read_only: bool) -> Self {
        self.options.read_only = read_only;
        self
    }

    /// Send warnings somewhere else than stderr (the CLI's output, a test).
    pub fn with_warnings(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.warn = Arc::new(sink);
        self
    }

    /// Start the tier for one build (and its upload thread, if it may write).
    pub fn start(&self) -> RemoteTier {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(self.options.connect_timeout))
            .timeout_global(Some(self.options.request_timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let inner = Arc::new(Inner {
            base: self.base.clone(),
            agent,
            secret: self.secret.clone(),
            options: self.options.clone(),
            warn: self.warn.clone(),
            disabled: AtomicBool::new(self.secret.is_none()),
            bad_mac_warned: AtomicBool::new(false),
            warnings: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            uploads: AtomicUsize::new(0),
            uploaded_bytes: Default::default(),
            dropped: AtomicUsize::new(0),
            pending: Mutex::new(0),
            idle: Condvar::new(),
            reupload: Mutex::new(HashSet::new()),
        });
        if self.secret.is_none() {
            inner.warn(NO_SECRET_WARNING.to_owned());
        }
        let writable = self.secret.is_some() && !self.options.read_only;
        let queue = if writable {
            let (tx, rx) = mpsc::sync_channel::<Upload>(self.options.queue_capacity.max(1));
            let worker = inner.clone();
            let spawned = std::thread::Builder::new()
                .name("kraft-remote-upload".into())
                .spawn(move || worker.upload_loop(rx));
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    inner.warn(format!("remote cache: cannot start the upload thread ({e}); not uploading"));
                    None
                }
            }
        } else {
            None
        };
        RemoteTier { inner, queue: Mutex::new(queue) }
    }
}

/// One output to upload: the local blob and, if known, its SHA-256.
#[derive(Debug, Clone)]
pub struct BlobUpload {
    pub path: Utf8PathBuf,
    pub sha256: Option<String>,
}

/// Builds the `ac/` payload once the blobs' SHA-256s are known (in order).
pub type PayloadFn = Box<dyn FnOnce(&[String]) -> Option<Vec<u8>> + Send>;

/// One queued upload: blobs first, then the signed `ac/` document.
pub struct Upload {
    /// Hex of the action key (or pre-key, for a manifest).
    pub key: String,
    pub blobs: Vec<BlobUpload>,
    pub payload: PayloadFn,
    /// Skip everything if the server already has `ac/<key>` (used to
    /// publish local hits without re-sending what is there).
    pub only_if_missing: bool,
}

/// What the remote tier did in one build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteStats {
    /// Action entries fetched (with all their blobs) from the remote.
    pub hits: usize,
    /// Action entries (and manifests) uploaded.
    pub uploads: usize,
    /// Warnings printed (at most a few per build).
    pub warnings: Vec<String>,
    /// Bytes of the bodies uploaded (blobs and entries).
    pub uploaded_bytes: u64,
}

struct Inner {
    base: String,
    agent: ureq::Agent,
    secret: Option<Arc<[u8]>>,
    options: RemoteOptions,
    warn: WarnSink,
    disabled: AtomicBool,
    bad_mac_warned: AtomicBool,
    warnings: Mutex<Vec<String>>,
    hits: AtomicUsize,
    uploads: AtomicUsize,
    uploaded_bytes: std::sync::atomic::AtomicU64,
    dropped: AtomicUsize,
    pending: Mutex<usize>,
    idle: Condvar,
    /// CAS names found corrupt on the server: upload them even though they exist.
    reupload: Mutex<HashSet<String>>,
}

/// Why a request did not produce a body.
enum Fetch {
    Missing,
    /// Larger than the caller's limit: bad content, not a bad server.
    TooBig,
    Failed,
}

#[derive(Serialize, Deserialize)]
struct SignedDoc {
    version: u32,
    payload: String,
    mac: String,
}

impl Inner {
    fn warn(&self, message: String) {
        (self.warn)(&message);
        self.warnings.lock().unwrap().push(message);
    }

    fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::Relaxed)
    }

    /// The first failure of the build: one warning, then the tier is off.
    fn fail(&self, what: &str, error: &str) {
        if !self.disabled.swap(true, Ordering::SeqCst) {
            self.warn(format!(
                "remote cache {} unavailable ({what}: {error}); using the local cache only for the rest of this build",
                self.base
            ));
        }
    }

    fn url(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.base)
    }

    fn mac(&self, key: &str, payload: &[u8]) -> Option<Hmac<Sha256>> {
        let secret = self.secret.as_ref()?;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
        mac.update(MAC_DOMAIN);
        mac.update(key.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        Some(mac)
    }

    fn get(&self, kind: &str, name: &str, limit: u64) -> Result<Vec<u8>, Fetch> {
        if !self.enabled() {
            return Err(Fetch::Failed);
        }
        let url = self.url(kind, name);
        match self.agent.get(&url).call() {
            Ok(mut response) => match response.status().as_u16() {
                200 => match response.body_mut().with_config().limit(limit).read_to_vec() {
                    Ok(bytes) => Ok(bytes),
                    Err(ureq::Error::BodyExceedsLimit(_)) => Err(Fetch::TooBig),
                    Err(e) => {
                        self.fail(&format!("GET /{kind}/{name}"), &e.to_string());
                        Err(Fetch::Failed)
                    }
                },
                404 => Err(Fetch::Missing),
                status => {
                    self.fail(&format!("GET /{kind}/{name}"), &format!("HTTP {status}"));
                    Err(Fetch::Failed)
                }
            },
            Err(e) => {
                self.fail(&format!("GET /{kind}/{name}"), &e.to_string());
                Err(Fetch::Failed)
            }
        }
    }

    /// `Some(exists)`, or `None` after a failure.
    fn head(&self, kind: &str, name: &str) -> Option<bool> {
        if !self.enabled() {
            return None;
        }
        match self.agent.head(&self.url(kind, name)).call() {
            Ok(response) => match response.status().as_u16() {
                200..=299 => Some(true),
                404 => Some(false),
                status => {
                    self.fail(&format!("HEAD /{kind}/{name}"), &format!("HTTP {status}"));
                    None
                }
            },
            Err(e) => {
                self.fail(&format!("HEAD /{kind}/{name}"), &e.to_string());
                None
            }
        }
    }

    fn put(&self, kind: &str, name: &str, body: &[u8]) -> bool {
        if !self.enabled() {
            return false;
        }
        match self.agent.put(&self.url(kind, name)).send(body) {
            Ok(response) if response.status().is_success() => {
                self.uploaded_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                true
            }
            Ok(response) => {
                self.fail(&format!("PUT /{kind}/{name}"), &format!("HTTP {}", response.status().as_u16()));
                false
            }
            Err(e) => {
                self.fail(&format!("PUT /{kind}/{name}"), &e.to_string());
                false
            }
        }
    }

    fn upload_loop(self: Arc<Self>, rx: Receiver<Upload>) {
        while let Ok(job) = rx.recv() {
            if self.enabled() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.upload(job)));
            }
            let mut pending = self.pending.lock().unwrap();
            *pending -= 1;
            if *pending == 0 {
                self.idle.notify_all();
            }
        }
    }

    fn upload(&self, job: Upload) {
        if job.only_if_missing && self.head("ac", &job.key) != Some(false) {
            return;
        }
        let mut hashes = Vec::with_capacity(job.blobs.len());
        for blob in &job.blobs {
            let bytes = match std::fs::read(&blob.path) {
                Ok(b) => b,
                Err(_) => return, // gone from the local store (gc): nothing to publish
            };
            let sha = blob.sha256.clone().unwrap_or_else(|| hex(&Sha256::digest(&bytes)));
            let force = self.reupload.lock().unwrap().remove(&sha);
            let present = if force { Some(false) } else { self.head("cas", &sha) };
            match present {
                None => return,
                Some(true) => {}
                Some(false) => {
                    if !self.put("cas", &sha, &bytes) {
                        return;
                    }
                }
            }
            hashes.push(sha);
        }
        let Some(payload) = (job.payload)(&hashes) else { return };
        let Some(doc) = self.sign(&job.key, payload) else { return };
        if self.put("ac", &job.key, &doc) {
            self.uploads.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sign(&self, key: &str, payload: Vec<u8>) -> Option<Vec<u8>> {
        let payload = String::from_utf8(payload).ok()?;
        let mac = self.mac(key, payload.as_bytes())?.finalize().into_bytes();
        serde_json::to_vec(&SignedDoc { version: DOC_VERSION, payload, mac: hex(&mac) }).ok()
    }
}

/// The remote tier of one build. Shared by the build's workers.
pub struct RemoteTier {
    inner: Arc<Inner>,
    queue: Mutex<Option<SyncSender<Upload>>>,
}

impl fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTier").field("url", &self.inner.base).field("enabled", &self.inner.enabled()).finish()
    }
}

impl RemoteTier {
    /// Whether lookups may still go to the network.
    pub fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    /// Whether this build publishes what it builds.
    pub fn writable(&self) -> bool {
        self.inner.enabled() && self.queue.lock().unwrap().is_some()
    }

    /// The verified payload of `ac/<key>`: `None` if missing, unreachable,
    /// malformed or not signed with our secret (the last warns once).
    pub fn get_ac(&self, key: &str) -> Option<Vec<u8>> {
        let inner = &self.inner;
        inner.secret.as_ref()?;
        let bytes = inner.get("ac", key, MAX_DOC_BYTES).ok()?;
        let verified = serde_json::from_slice::<SignedDoc>(&bytes).ok().filter(|d| d.version == DOC_VERSION).and_then(|doc| {
            let mac = inner.mac(key, doc.payload.as_bytes())?;
            let given = unhex(&doc.mac)?;
            mac.verify_slice(&given).ok()?;
            Some(doc.payload.into_bytes())
        });
        if verified.is_none() && !inner.bad_mac_warned.swap(true, Ordering::SeqCst) {
            inner.warn(format!(
                "remote cache: ignored action entry {key}: not signed with this KRAFT_CACHE_SECRET (forged, corrupt, or another secret)"
            ));
        }
        verified
    }

    /// The bytes of `cas/<sha256>`, verified against the name (and `size`,
    /// when given). A mismatch is discarded with a warning, and the name is
    /// remembered so this build re-uploads the right content.
    pub fn get_blob(&self, sha256: &str, size: Option<u64>) -> Option<Vec<u8>> {
        if !is_sha256(sha256) {
            return None;
        }
        let limit = size.map(|s| s + 1).unwrap_or(self.inner.options.max_blob_bytes);
        let bytes = match self.inner.get("cas", sha256, limit) {
            Ok(bytes) => bytes,
            Err(Fetch::TooBig) => {
                self.discard_blob(sha256, "it is larger than the entry says");
                return None;
            }
            Err(_) => return None,
        };
        let actual = hex(&Sha256::digest(&bytes));
        if actual != sha256 || size.is_some_and(|s| s != bytes.len() as u64) {
            self.discard_blob(sha256, &format!("its SHA-256 is {actual}"));
            return None;
        }
        Some(bytes)
    }

    /// Report a downloaded blob that failed verification (warns once per name).
    pub fn discard_blob(&self, sha256: &str, why: &str) {
        if self.inner.reupload.lock().unwrap().insert(sha256.to_owned()) {
            self.inner.warn(format!("remote cache: discarded corrupt blob cas/{sha256} ({why}); rebuilding locally"));
        }
    }

    /// Count an action restored from the remote.
    pub fn note_hit(&self) {
        self.inner.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Queue an upload (dropped when read-only, disabled, or the queue is full).
    pub fn upload(&self, job: Upload) {
        if !self.inner.enabled() {
            return;
        }
        let queue = self.queue.lock().unwrap();
        let Some(tx) = queue.as_ref() else { return };
        *self.inner.pending.lock().unwrap() += 1;
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let mut pending = self.inner.pending.lock().unwrap();
                *pending -= 1;
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// End of the build: wait (at most `upload_wait`) for pending uploads,
    /// stop the upload thread, and say what happened. Idempotent.
    pub fn finish(&self) -> RemoteStats {
        let tx = self.queue.lock().unwrap().take();
        drop(tx); // the worker exits once the queue is drained
        let deadline = Instant::now() + self.inner.options.upload_wait;
        let mut pending = self.inner.pending.lock().unwrap();
        while *pending > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            pending = self.inner.idle.wait_timeout(pending, deadline - now).unwrap().0;
        }
        let left = *pending;
        drop(pending);
        if left > 0 {
            // Stop the worker from starting more (it finishes the request in flight).
            self.inner.disabled.store(true, Ordering::SeqCst);
            self.inner.warn(format!(
                "remote cache: gave up waiting for {left} pending upload(s) after {:.1}s",
                self.inner.options.upload_wait.as_secs_f64()
            ));
        }
        let dropped = self.inner.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            self.inner.warn(format!("remote cache: {dropped} upload(s) dropped (upload queue full)"));
        }
        RemoteStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            uploads: self.inner.uploads.load(Ordering::Relaxed),
            warnings: self.inner.warnings.lock().unwrap().clone(),
            uploaded_bytes: self.inner.uploaded_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Drop for RemoteTier {
    fn drop(&mut self) {
        // Never leave the worker waiting on a sender.
        self.queue.get_mut().map(|q| q.take()).ok();
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &camino::Utf8Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_and_off() {
        // Only the pure parts: the env level is exercised by the CLI tests.
        assert!(RemoteCache::from_config(None, Some(b"s")).is_none());
        assert!(RemoteCache::from_config(Some("  "), Some(b"s")).is_none());
        let c = RemoteCache::from_config(Some("http://h:1/"), None).unwrap();
        assert_eq!(c.url(), "http://h:1");
        assert!(!c.has_secret());
    }

    #[test]
    fn mac_binds_key_and_payload() {
        let cache = RemoteCache::from_config(Some("http://127.0.0.1:9"), Some(b"secret")).unwrap().read_only(true);
        let tier = cache.start();
        let doc = tier.inner.sign("k1", b"{\"x\":1}".to_vec()).unwrap();
        let parsed: SignedDoc = serde_json::from_slice(&doc).unwrap();
        let ok = tier.inner.mac("k1", parsed.payload.as_bytes()).unwrap();
        assert!(ok.verify_slice(&unhex(&parsed.mac).unwrap()).is_ok());
        let other_key = tier.inner.mac("k2", parsed.payload.as_bytes()).unwrap();
        assert!(other_key.verify_slice(&unhex(&parsed.mac).unwrap()).is_err());
        assert_eq!(unhex("0aff"), Some(vec![10, 255]));
        assert_eq!(unhex("0g"), None);
    }
}
