//! Actions as REAPI Actions: the remote cache and remote execution.
//!
//! The engine ([`crate::exec`]) brings an action up to date from its local
//! cache first. When that misses and a REAPI engine is configured
//! (`--remote-exec URL`, or `--remote-cache grpc://…`), the action goes
//! through [`Remote::run`]:
//!
//! 1. it becomes an REAPI `Action`: a `Command` (argv `env -C <cwd> bash -c
//!    <script>`: the sandbox's own invocation of the script in its working
//!    directory; the sandbox's environment; its outputs and depfile as
//!    output paths relative to the input root; working directory the root)
//!    and an input root, `/kraft` as the action sees it (see [`inputs`]).
//!    The toolchain identity the local key uses (the toolchain part of its
//!    `env` field) is the platform property `kraft-toolchain`, so an action
//!    only lands on a worker whose toolchain hashes the same; the other part
//!    of `env`, the sandbox's environment, is the Command's environment, and
//!    remote execution needs the bubblewrap sandbox on both sides;
//! 2. the engine's action cache is asked for it; a trusted (signed) entry's
//!    outputs are downloaded: a remote hit;
//! 3. with `--remote-exec`, inputs missing on the engine are uploaded and it
//!    is executed there; a writer (`--remote-upload` + signing key) then
//!    publishes the result signed;
//! 4. otherwise it runs locally; a writer uploads its outputs and publishes.
//!
//! Whatever happened, the outputs are then on disk and the engine stores
//! them in the local cache under the local key, as for a local run, so later
//! local lookups hit. The REAPI digest is a function of the same inputs as
//! the local key (command, input files, toolchain), so both agree.
//!
//! If the engine fails (gone, refusing, broken), this build stops using it:
//! one warning, and every remaining action runs locally, at most as many at
//! a time as there are cores (`-j` may exceed them for remote execution).
//!
//! | file | concept |
//! |---|---|
//! | `inputs.rs` | an action's input root as a Merkle tree, uploaded once per digest |
//! | `worker.rs` | `cargo xtask worker`: runs an engine's leases in the same sandbox |

pub mod inputs;
pub mod worker;

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use camino::Utf8PathBuf;
use kraft_reapi::proto::reapi::ActionResult;
use kraft_reapi::{Client, ClientOptions, CommandBuilder, PreparedAction};

use crate::cache::reapi::ReapiCache;
use crate::exec::fingerprint::Hash;
use crate::exec::remote::inputs::InputRoots;
use crate::exec::sandbox::Sandbox;
use crate::plan::graph::{Action, Graph, SANDBOX_ROOT};

/// The platform property carrying the toolchain identity.
pub const TOOLCHAIN_PROPERTY: &str = "kraft-toolchain";
/// A wildcard platform property (not matched): directories a command writes
/// into beyond its declared outputs, which a worker must not share between
/// leases. Set to `build` for script actions (Unikraft's prepare steps
/// rewrite files under the build dir they do not declare).
pub const PRIVATE_DIRS_PROPERTY: &str = "kraft-hint";

/// How one action was settled through the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Settled {
    /// A trusted action-cache entry: nothing ran.
    CacheHit,
    /// Executed by a worker of the engine.
    Executed,
    /// Ran here.
    Local,
}

/// One action's line in the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActionLine {
    pub action: String,
    pub settled: Settled,
    /// Bytes this action sent to the engine (inputs, or outputs it published).
    pub bytes_uploaded: u64,
    pub seconds: f64,
    /// Where the time went, for an action executed remotely.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

/// Seconds of one remote execution, by phase: the client's side (input
/// root, upload, waiting for the engine) and the worker's, from the
/// result's `ExecutedActionMetadata`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Phases {
    pub client_root: f64,
    pub client_upload: f64,
    pub client_wait: f64,
    pub queued: f64,
    pub worker_fetch: f64,
    pub worker_execute: f64,
    pub worker_upload: f64,
    pub client_download: f64,
}

fn seconds_between(a: &Option<kraft_reapi::proto::protobuf::Timestamp>, b: &Option<kraft_reapi::proto::protobuf::Timestamp>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) => ((b.seconds - a.seconds) as f64 + (b.nanos - a.nanos) as f64 * 1e-9).max(0.0),
        _ => 0.0,
    }
}

impl Phases {
    fn plus(&self, o: &Phases) -> Phases {
        Phases {
            client_root: self.client_root + o.client_root,
            client_upload: self.client_upload + o.client_upload,
            client_wait: self.client_wait + o.client_wait,
            queued: self.queued + o.queued,
            worker_fetch: self.worker_fetch + o.worker_fetch,
            worker_execute: self.worker_execute + o.worker_execute,
            worker_upload: self.worker_upload + o.worker_upload,
            client_download: self.client_download + o.client_download,
        }
    }

    fn from_metadata(mut self, meta: Option<&kraft_reapi::proto::reapi::ExecutedActionMetadata>) -> Phases {
        if let Some(m) = meta {
            self.queued = seconds_between(&m.queued_timestamp, &m.worker_start_timestamp);
            self.worker_fetch = seconds_between(&m.input_fetch_start_timestamp, &m.input_fetch_completed_timestamp);
            self.worker_execute = seconds_between(&m.execution_start_timestamp, &m.execution_completed_timestamp);
            self.worker_upload = seconds_between(&m.output_upload_start_timestamp, &m.output_upload_completed_timestamp);
        }
        self
    }
}

/// What the engine did for one build.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RemoteReport {
    pub engine: String,
    pub cache_hits: usize,
    pub executed_remotely: usize,
    pub ran_locally: usize,
    pub untrusted_entries: usize,
    pub published: usize,
    pub bytes_uploaded: u64,
    /// Bytes of outputs, stdout and stderr downloaded from the engine.
    pub bytes_downloaded: u64,
    /// Why the build stopped using the engine, if it did.
    pub gave_up: Option<String>,
    /// [`Phases`] summed over the actions executed remotely.
    pub phase_totals: Phases,
    pub actions: Vec<ActionLine>,
}

/// Which engine a session uses, and how.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `grpc://host:port[/instance]`.
    pub url: String,
    /// Execute actions there (`--remote-exec`), else only use its cache.
    pub execute: bool,
    /// Publish results (`--remote-upload` / `KRAFT_REMOTE_UPLOAD=1`; needs a signing key).
    pub upload: bool,
    /// The remote-cache URL is this engine's (so the HTTP cache is off).
    pub is_cache_url: bool,
    /// The keys to sign and verify entries with; `None`: from
    /// `KRAFT_CACHE_SIGNING_KEY` and `KRAFT_CACHE_TRUSTED_KEYS`.
    pub keys: Option<std::sync::Arc<crate::cache::signing::CacheKeys>>,
}

fn is_grpc(url: &str) -> bool {
    url.starts_with("grpc://") || url.starts_with("grpcs://")
}

impl Settings {
    /// `--remote-exec URL`, else a `grpc://` remote cache URL (flag >
    /// `KRAFT_REMOTE_CACHE` > workspace), else none.
    pub fn resolve(remote_exec: Option<&str>, remote_cache: Option<&str>, upload: bool, workspace_cache: Option<&str>) -> Option<Settings> {
        let upload = upload || crate::config::Config::get().remote_upload;
        let cache = crate::cache::http::resolve_url(remote_cache, workspace_cache).filter(|u| is_grpc(u));
        let is_cache_url = cache.is_some();
        match remote_exec.map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => Some(Settings { url: url.to_string(), execute: true, upload, is_cache_url, keys: None }),
            None => cache.map(|url| Settings { url, execute: false, upload, is_cache_url, keys: None }),
        }
    }
}

/// Set up the engine for one target's build; `None` (after a warning) when
/// it cannot be reached: the build is then local.
pub fn for_build(settings: &Settings, output: &crate::output::Output, graph: &Graph, sandbox: &Sandbox) -> Option<Remote> {
    if sandbox.backend() != "bwrap" {
        output.warning(&crate::diag::Diagnostic::new(format!(
            "not using the REAPI engine {}: builds without the bubblewrap sandbox (KRAFT_SANDBOX=none) are not hermetic and stay local",
            settings.url
        )));
        return None;
    }
    let warn = Box::new(|message: &str| eprintln!("warning: {message}"));
    match Remote::new(settings, graph, sandbox, warn) {
        Ok(remote) => {
            let what = if settings.execute { "executing on" } else { "caching in" };
            output.status("Remote", &format!("{what} {} ({})", settings.url, remote.describe()));
            Some(remote)
        }
        Err(e) => {
            output.warning(&crate::diag::Diagnostic::new(format!(
                "cannot use the REAPI engine {}: {e:#}; building locally",
                settings.url
            )));
            None
        }
    }
}

/// After a target's build: the summary line, a warning about untrusted
/// entries, and the per-action report in `<out_dir>/remote.json`, which it
/// returns.
pub fn finish(output: &crate::output::Output, remote: Option<&Remote>, out_dir: &camino::Utf8Path) -> Option<RemoteReport> {
    let remote = remote?;
    let report = remote.report();
    output.status(
        "Remote",
        &format!(
            "{} cache hits, {} executed remotely, {} ran locally, {} uploaded, {} published",
            report.cache_hits,
            report.executed_remotely,
            report.ran_locally,
            human_bytes(report.bytes_uploaded),
            report.published
        ),
    );
    if report.untrusted_entries > 0 {
        let why = remote.first_untrusted().unwrap_or_default();
        output.warning(
            &crate::diag::Diagnostic::new(format!("{} remote cache entries were not trusted and were rebuilt: {why}", report.untrusted_entries))
                .help("trust the writer's key with KRAFT_CACHE_TRUSTED_KEYS=keyid:base64pubkey if it is yours"),
        );
    }
    if let Ok(json) = serde_json::to_vec_pretty(&report) {
        let _ = crate::util::fs::write_atomic(&out_dir.join("remote.json"), &json);
    }
    Some(report)
}

/// `grpc://host:port/instance` → (`grpc://host:port`, `instance`).
pub fn split_instance(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap_or(("grpc", url));
    match rest.split_once('/') {
        Some((host, instance)) => (
            format!("{scheme}://{host}"),
            instance.trim_matches('/').to_string(),
        ),
        None => (format!("{scheme}://{rest}"), String::new()),
    }
}

/// Connect to an engine (`grpc://host:port[/instance]`).
pub fn connect(url: &str, options: ClientOptions) -> anyhow::Result<Client> {
    let (endpoint, instance) = split_instance(url);
    let client = Client::connect_with(&endpoint, &instance, options)?;
    client
        .capabilities()
        .with_context(|| format!("asking {url} for its capabilities"))?;
    Ok(client)
}

/// The REAPI side of one build.
pub struct Remote {
    url: String,
    cache: ReapiCache,
    execute: bool,
    roots: InputRoots,
    env: Vec<(String, String)>,
    down: AtomicBool,
    gave_up: Mutex<Option<String>>,
    warn: Box<dyn Fn(&str) + Send + Sync>,
    local_slots: crate::exec::slots::Slots,
    lines: Mutex<Vec<ActionLine>>,
    downloaded: std::sync::atomic::AtomicU64,
}

fn output(code: i32, stdout: Vec<u8>, stderr: Vec<u8>) -> Output {
    Output {
        status: ExitStatus::from_raw((code & 0xff) << 8),
        stdout,
        stderr,
    }
}

impl Remote {
    /// Set up the engine for a build of `graph` in `sandbox`. `execute`:
    /// send actions to it (else it is only a cache); `upload`: publish results.
    pub fn new(settings: &Settings, graph: &Graph, sandbox: &Sandbox, warn: Box<dyn Fn(&str) + Send + Sync>) -> anyhow::Result<Remote> {
        let (url, execute, upload) = (settings.url.as_str(), settings.execute, settings.upload);
        let keys = match &settings.keys {
            Some(keys) => (**keys).clone(),
            None => {
                let config = crate::config::Config::get();
                let (keys, problems) = crate::cache::signing::CacheKeys::parse(
                    config.cache_signing_key.as_deref(),
                    config.cache_trusted_keys.as_deref(),
                );
                for problem in problems {
                    warn(&format!("{url}: {problem}"));
                }
                keys
            }
        };
        if !keys.can_verify() {
            warn(&format!(
                "{url}: no key is trusted (KRAFT_CACHE_TRUSTED_KEYS, KRAFT_CACHE_SIGNING_KEY): no cached result will be used"
            ));
        }
        if upload && !keys.can_sign() {
            warn("--remote-upload without KRAFT_CACHE_SIGNING_KEY: nothing will be published");
        }
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(30),
            execute_timeout: Duration::from_secs(1800),
            ..ClientOptions::default()
        };
        let client = connect(url, options)?;
        let roots = InputRoots::new(sandbox.mounts(), graph)?;
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Ok(Remote {
            url: url.to_string(),
            cache: ReapiCache::new(client, keys, upload),
            execute,
            roots,
            env: sandbox.full_env(),
            down: AtomicBool::new(false),
            gave_up: Mutex::new(None),
            warn,
            local_slots: crate::exec::slots::Slots::new(cores),
            lines: Mutex::default(),
            downloaded: Default::default(),
        })
    }

    /// The read-only trees and prepared files every root holds (for the status line).
    pub fn describe(&self) -> String {
        self.roots.describe()
    }

    /// The REAPI Command and Action of `action` (and its input root).
    fn prepare(
        &self,
        action: &Action,
        toolchain: &Hash,
    ) -> anyhow::Result<(PreparedAction, inputs::ActionRoot)> {
        let root = self.roots.root_for(action.id, &action.inputs)?;
        let mut command = CommandBuilder::new([
            "env",
            "-C",
            action.cwd.as_str(),
            "bash",
            "-c",
            action.script.as_str(),
        ]);
        for (k, v) in &self.env {
            command = command.env(k, v);
        }
        for out in self.roots.outputs_of(action.id) {
            command = command.output(out.as_str());
        }
        if action.kind == crate::plan::graph::ActionKind::Script {
            command = command.platform_property(PRIVATE_DIRS_PROPERTY, "build");
        }
        let command = command
            .platform_property(TOOLCHAIN_PROPERTY, toolchain.to_hex().as_str())
            .build()?;
        let prepared = PreparedAction::new(&command, root.digest.clone(), |a| a);
        Ok((prepared, root))
    }

    /// Give up on the engine for the rest of the build (one warning).
    fn give_up(&self, why: String) {
        if !self.down.swap(true, Ordering::SeqCst) {
            (self.warn)(&format!(
                "{}: {why}; the rest of the build runs locally",
                self.url
            ));
            *self.gave_up.lock().expect("gave_up") = Some(why);
        }
    }

    fn note(&self, action: &Action, settled: Settled, bytes: u64, began: Instant, phases: Option<Phases>) {
        self.lines.lock().expect("lines").push(ActionLine {
            action: action.name.clone(),
            settled,
            bytes_uploaded: bytes,
            seconds: began.elapsed().as_secs_f64(),
            phases,
        });
    }

    /// Bring `action` up to date through the engine, else with `local`.
    /// Returns what it printed and whether it was a cache hit (nothing ran).
    /// `toolchain` is the key's toolchain identity.
    pub fn run(
        &self,
        action: &Action,
        toolchain: &Hash,
        local: &dyn Fn() -> anyhow::Result<Output>,
    ) -> anyhow::Result<(Output, bool)> {
        let began = Instant::now();
        if self.down.load(Ordering::SeqCst) {
            let out = {
                let _slot = self.local_slots.take();
                local()?
            };
            self.note(action, Settled::Local, 0, began, None);
            return Ok((out, false));
        }
        let (prepared, root) = self.prepare(action, toolchain)?;
        let root_seconds = began.elapsed().as_secs_f64();
        match self.remote(action, &prepared, &root) {
            Ok(Some((out, settled, bytes, phases))) => {
                let phases = phases.map(|p| Phases { client_root: root_seconds, ..p });
                self.note(action, settled, bytes, began, phases);
                return Ok((out, settled == Settled::CacheHit));
            }
            Ok(None) => {}
            Err(e) => self.give_up(format!("{e:#}")),
        }
        let out = {
            let _slot = self.local_slots.take();
            local()?
        };
        let mut bytes = 0;
        if out.status.success() && self.cache.writes() && !self.down.load(Ordering::SeqCst) {
            let outputs: Vec<(String, Utf8PathBuf)> = self
                .roots
                .outputs_of(action.id)
                .iter()
                .filter_map(|rel| Some((rel.clone(), self.roots.output_host(rel)?)))
                .filter(|(_, host)| host.is_file())
                .collect();
            match self.cache.publish_local_run(
                prepared.digest(),
                &outputs,
                &out.stdout,
                &out.stderr,
            ) {
                Ok(b) => bytes = b,
                Err(e) => self.give_up(format!("publishing {}: {e:#}", action.name)),
            }
        }
        self.note(action, Settled::Local, bytes, began, None);
        Ok((out, false))
    }

    /// The engine's part: cache lookup, then execution. `None`: run locally.
    fn remote(
        &self,
        action: &Action,
        prepared: &PreparedAction,
        root: &inputs::ActionRoot,
    ) -> anyhow::Result<Option<(Output, Settled, u64, Option<Phases>)>> {
        let digest = prepared.digest().clone();
        if let Some(result) = self.cache.lookup(&digest)? {
            if let Some((out, _)) = self.settle(action, &result)? {
                self.cache.note_hit();
                return Ok(Some((out, Settled::CacheHit, 0, None)));
            }
        }
        if !self.execute {
            return Ok(None);
        }
        let extra = [prepared.command_blob.clone(), prepared.action_blob.clone()];
        let t = Instant::now();
        let mut bytes = self.roots.upload(&self.cache, root, &extra)?;
        let mut client_upload = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let outcome = match self.cache.client().execute(&digest, true) {
            // REAPI's answer for inputs the CAS no longer holds (evicted
            // since we checked): upload them again and retry, once.
            Err(e) if e.rpc_code() == Some(kraft_reapi::Code::FailedPrecondition) => {
                self.roots.forget_present();
                let t = Instant::now();
                bytes += self.roots.upload(&self.cache, root, &extra)?;
                client_upload += t.elapsed().as_secs_f64();
                self.cache.client().execute(&digest, true)?
            }
            other => other?,
        };
        let client_wait = t.elapsed().as_secs_f64() - client_upload;
        let t = Instant::now();
        let Some((out, result)) = self.settle(action, &outcome.result)? else {
            anyhow::bail!(
                "the engine's result for {} names outputs outside the build",
                action.name
            );
        };
        let client_download = t.elapsed().as_secs_f64();
        let phases = Phases { client_upload, client_wait, client_download, ..Phases::default() }
            .from_metadata(result.execution_metadata.as_ref());
        if out.status.success() {
            self.cache.publish(&digest, result)?;
        }
        Ok(Some((out, Settled::Executed, bytes, Some(phases))))
    }

    /// Download a result's outputs; `None` if it names a path outside the build dir.
    fn settle(
        &self,
        action: &Action,
        result: &ActionResult,
    ) -> anyhow::Result<Option<(Output, ActionResult)>> {
        if result
            .output_files
            .iter()
            .any(|f| self.roots.output_host(&f.path).is_none())
        {
            return Ok(None);
        }
        let (stdout, stderr) = self
            .cache
            .download(result, &|rel| self.roots.output_host(rel))
            .with_context(|| format!("downloading the outputs of {}", action.name))?;
        let bytes: i64 = result.output_files.iter().filter_map(|f| f.digest.as_ref()).map(|d| d.size_bytes).sum();
        self.downloaded.fetch_add(bytes.max(0) as u64 + (stdout.len() + stderr.len()) as u64, Ordering::Relaxed);
        Ok(Some((
            output(result.exit_code, stdout, stderr),
            result.clone(),
        )))
    }

    /// The report of this build (counters and one line per action).
    pub fn report(&self) -> RemoteReport {
        let lines = self.lines.lock().expect("lines").clone();
        let counters = self.cache.counters();
        let count = |s: Settled| lines.iter().filter(|l| l.settled == s).count();
        RemoteReport {
            engine: self.url.clone(),
            cache_hits: count(Settled::CacheHit),
            executed_remotely: count(Settled::Executed),
            ran_locally: count(Settled::Local),
            untrusted_entries: counters.untrusted,
            published: counters.published,
            bytes_uploaded: lines.iter().map(|l| l.bytes_uploaded).sum(),
            bytes_downloaded: self.downloaded.load(Ordering::Relaxed),
            gave_up: self.gave_up.lock().expect("gave_up").clone(),
            phase_totals: lines.iter().filter_map(|l| l.phases.as_ref()).fold(Phases::default(), |t, p| t.plus(p)),
            actions: lines,
        }
    }

    /// Why the first untrusted entry was ignored, if one was.
    pub fn first_untrusted(&self) -> Option<String> {
        self.cache.first_untrusted()
    }
}

/// `/kraft`, the root every input tree stands for.
pub fn root_inside() -> Utf8PathBuf {
    Utf8PathBuf::from(SANDBOX_ROOT)
}

/// Bytes as `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    }
}
