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
//! reads the keys and the read-only switch.
//!
//! | variable                      | meaning                                                            |
//! |-------------------------------|--------------------------------------------------------------------|
//! | `KRAFT_REMOTE_CACHE`          | the cache's base URL (`http://cache.internal:8080`)                |
//! | `KRAFT_CACHE_SIGNING_KEY`     | CI only: the Ed25519 private key (a file, or `keyid:base64`)       |
//! | `KRAFT_CACHE_TRUSTED_KEYS`    | every client: trusted public keys, `keyid:base64,keyid:base64`     |
//! | `KRAFT_REMOTE_CACHE_READONLY` | `1`/`true`: read, never write, even with the signing key           |
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
//! A *bundle* (a cached plan: `plan::bundle`; written and read in `bundle`)
//! is a few CAS blobs behind a signed `ac/` entry whose key is blake3 of a
//! domain, its kind and its name (the shared plan key), and whose payload is
//! `{kind, name, files: [{file, sha256, size}]}`.
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
//! { "version": 2, "payload": "<the local cache file, JSON, as a string>", "key": "<key id>", "sig": "<base64>" }
//! ```
//!
//! where `sig = Ed25519(private key, "kraft-xtask remote ac v2\0" || key id || "\0" || action-key-hex || "\0" || payload)`
//! (see `signing.rs`). The action key is signed, so a valid entry cannot be
//! replayed under another action's key.
//!
//! # Trust model
//!
//! The CAS is self-verifying (content is checked against its hash), so only
//! action entries, which map an action key to output hashes, need trust.
//! They are signed with Ed25519; three roles:
//!
//! * **CI, the writer**, holds the private key (`KRAFT_CACHE_SIGNING_KEY`)
//!   and publishes what it builds; its own public key is trusted implicitly.
//! * **A laptop, a reader**, holds only public keys
//!   (`KRAFT_CACHE_TRUSTED_KEYS`): it reads entries signed by a trusted key
//!   and cannot publish any that others would accept. It does not upload,
//!   and says so once per build unless `KRAFT_REMOTE_CACHE_READONLY=1` says
//!   that is intended.
//! * **The server is trusted with nothing**: it stores documents it cannot
//!   forge. A forged, tampered or unknown-key entry is ignored (one warning
//!   per build) and the action runs locally.
//!
//! A client that trusts no key is off: it reads and writes nothing (it could
//! not tell a forged entry from a real one), with one warning. Entries carry
//! their key id, so keys rotate by trusting the new one beside the old.
//!
//! # Failures
//!
//! The HTTP verbs live in `transport`. The remote cache never fails a
//! build. The first transport error, timeout
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::signing::CacheKeys;
use crate::util::hash::{hex, is_hex64 as is_sha256};

mod bundle;
mod transport;

/// Version of the signed `ac/` document.
const DOC_VERSION: u32 = 2;
const SIG_DOMAIN: &[u8] = b"kraft-xtask remote ac v2\0";
/// Largest `ac/` document accepted.
const MAX_DOC_BYTES: u64 = 16 << 20;

/// The warning of a client that trusts no key (the remote cache is off).
pub const NO_TRUSTED_KEYS_WARNING: &str = "remote cache disabled: no trusted key (set KRAFT_CACHE_TRUSTED_KEYS)";
/// The warning of a reader that could publish but holds no private key.
pub const NO_SIGNING_KEY_WARNING: &str =
    "remote cache: not uploading: no KRAFT_CACHE_SIGNING_KEY (only CI publishes; set KRAFT_REMOTE_CACHE_READONLY=1 to silence this)";

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
    /// Read only, even with the signing key.
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

/// The remote cache's configuration: URL, keys, options, warning sink.
/// Cheap to clone. Each build starts a [`RemoteTier`] from it.
#[derive(Clone)]
pub struct RemoteCache {
    base: String,
    keys: Arc<CacheKeys>,
    options: RemoteOptions,
    warn: WarnSink,
}

impl fmt::Debug for RemoteCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteCache")
            .field("url", &self.base)
            .field("signer", &self.keys.signer.as_ref().map(|s| &s.id))
            .field("trusted", &self.keys.trusted.iter().map(|(id, _)| id).collect::<Vec<_>>())
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
    /// Trusting no key, the cache is configured but inert: each build warns
    /// once ([`NO_TRUSTED_KEYS_WARNING`]) and never reads or writes.
    pub fn from_config(url: Option<&str>, keys: CacheKeys) -> Option<RemoteCache> {
        let url = url.map(str::trim).filter(|u| !u.is_empty())?;
        Some(RemoteCache {
            base: url.trim_end_matches('/').to_owned(),
            keys: Arc::new(keys),
            options: RemoteOptions::default(),
            warn: Arc::new(|msg: &str| eprintln!("warning: {msg}")),
        })
    }

    /// The usual wiring: URL by precedence ([`resolve_url`]), keys from
    /// `KRAFT_CACHE_SIGNING_KEY` and `KRAFT_CACHE_TRUSTED_KEYS` (a malformed
    /// key warns and is left out), read-only from `KRAFT_REMOTE_CACHE_READONLY`.
    pub fn from_env(flag: Option<&str>, workspace: Option<&str>) -> Option<RemoteCache> {
        let url = resolve_url(flag, workspace)?;
        let config = crate::config::Config::get();
        let (keys, problems) = CacheKeys::parse(config.cache_signing_key.as_deref(), config.cache_trusted_keys.as_deref());
        for problem in problems {
            eprintln!("warning: remote cache: {problem}");
        }
        let cache = RemoteCache::from_config(Some(&url), keys)?;
        let read_only = config.remote_read_only;
        Some(cache.read_only(read_only))
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Whether this client may publish (it holds a private key).
    pub fn can_sign(&self) -> bool {
        self.keys.can_sign()
    }

    /// Whether this client reads at all (it trusts at least one key).
    pub fn can_verify(&self) -> bool {
        self.keys.can_verify()
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
            keys: self.keys.clone(),
            options: self.options.clone(),
            warn: self.warn.clone(),
            disabled: AtomicBool::new(!self.keys.can_verify()),
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
        if !self.keys.can_verify() {
            inner.warn(NO_TRUSTED_KEYS_WARNING.to_owned());
        } else if !self.keys.can_sign() && !self.options.read_only {
            inner.warn(NO_SIGNING_KEY_WARNING.to_owned());
        }
        let writable = self.keys.can_sign() && self.keys.can_verify() && !self.options.read_only;
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
    /// Bytes of the bodies uploaded (blobs and entries).
    pub uploaded_bytes: u64,
    /// Warnings printed (at most a few per build).
    pub warnings: Vec<String>,
}

struct Inner {
    base: String,
    agent: ureq::Agent,
    keys: Arc<CacheKeys>,
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
    /// The id of the key that signed.
    key: String,
    /// Base64 Ed25519 signature of [`signed_message`].
    sig: String,
}

/// What an `ac/` document's signature covers.
fn signed_message(key_id: &str, action_key: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIG_DOMAIN.len() + key_id.len() + action_key.len() + payload.len() + 2);
    m.extend_from_slice(SIG_DOMAIN);
    m.extend_from_slice(key_id.as_bytes());
    m.push(0);
    m.extend_from_slice(action_key.as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

impl Inner {
    fn warn(&self, message: String) {
        (self.warn)(&message);
        self.warnings.lock().unwrap().push(message);
    }

    pub(super) fn enabled(&self) -> bool {
        !self.disabled.load(Ordering::Relaxed)
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
        let signer = self.keys.signer.as_ref()?;
        let (id, sig) = self.keys.sign(&signed_message(&signer.id, key, payload.as_bytes()))?;
        serde_json::to_vec(&SignedDoc { version: DOC_VERSION, payload, key: id, sig }).ok()
    }

    /// The payload of a document, if a trusted key signed it for `key`.
    fn verify(&self, key: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let doc = serde_json::from_slice::<SignedDoc>(bytes).ok().filter(|d| d.version == DOC_VERSION)?;
        let message = signed_message(&doc.key, key, doc.payload.as_bytes());
        self.keys.verify(&doc.key, &message, &doc.sig).then(|| doc.payload.into_bytes())
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
    /// malformed or not signed by a trusted key (the last warns once).
    pub fn get_ac(&self, key: &str) -> Option<Vec<u8>> {
        let inner = &self.inner;
        if !inner.keys.can_verify() {
            return None;
        }
        let bytes = inner.get("ac", key, MAX_DOC_BYTES).ok()?;
        let verified = inner.verify(key, &bytes);
        if verified.is_none() && !inner.bad_mac_warned.swap(true, Ordering::SeqCst) {
            let id = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["key"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "none".into());
            inner.warn(format!(
                "remote cache: ignored action entry {key}: not signed by a trusted key (key id `{id}`: forged, corrupt, \
                 or a key missing from KRAFT_CACHE_TRUSTED_KEYS); rebuilding locally"
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
            uploaded_bytes: self.inner.uploaded_bytes.load(Ordering::Relaxed),
            warnings: self.inner.warnings.lock().unwrap().clone(),
        }
    }
}

impl Drop for RemoteTier {
    fn drop(&mut self) {
        // Never leave the worker waiting on a sender.
        self.queue.get_mut().map(|q| q.take()).ok();
    }
}

#[cfg(test)]
mod tests;
