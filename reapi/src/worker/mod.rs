//! Remote Workers API (`google.devtools.remoteworkers.v1test2`) worker, the
//! protocol BuildGrid uses to hand actions to its bots.
//!
//! [`run_worker_with`] registers a bot with `CreateBotSession`, advertising
//! the given platform properties on its primary device (BuildGrid matches a
//! job's platform properties against these) and its capacity (`jobs`) as the
//! worker config `capacity`. It then loops on `UpdateBotSession`
//! (long-polling for work), runs each new lease on its own thread — download
//! the Action, Command and input root from the CAS into a private sandbox
//! under [`WorkerConfig::work_dir`], call the executor, upload the outputs —
//! and reports the lease as `COMPLETED` with its `ActionResult` packed in an
//! `Any` in `Lease.result`, which is how BuildGrid expects results.
//!
//! Setting [`WorkerConfig::stop`] makes the bot report `BOT_TERMINATING` (so
//! no new work is assigned), finish and report running leases, and return.

mod fs;
mod lease;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2::{Action, Command, Digest};
use prost::Message;
use tokio::sync::Notify;

use crate::client::{backoff, Client, ClientOptions};
use crate::error::{Error, Result};
use crate::proto::remoteworkers::{
    bots_client::BotsClient, device, worker, BotSession, BotStatus, CreateBotSessionRequest,
    Device, Lease, LeaseState, UpdateBotSessionRequest, Worker,
};
use googleapis_tonic_google_devtools_remoteworkers_v1test2::google::rpc::Status as LeaseStatus;

/// Error type executors return; any error converts into it with `?`.
pub type ExecutorError = Box<dyn std::error::Error + Send + Sync>;

/// One action handed to the executor, with its inputs already on disk.
#[derive(Debug, Clone)]
pub struct WorkRequest {
    /// Server-side lease (job) id.
    pub lease_id: String,
    /// Digest of the action.
    pub action_digest: Digest,
    /// The action.
    pub action: Action,
    /// Its command (argv, environment, outputs, working directory).
    pub command: Command,
    /// Directory holding the materialised input root.
    pub input_root: PathBuf,
    /// With [`WorkerConfig::share_dirs`]: (empty mount point in
    /// `input_root`, shared read-only tree to bind there).
    pub shared_dirs: Vec<(PathBuf, PathBuf)>,
    /// `input_root` joined with `command.working_directory`: run here. Parent
    /// directories of all declared outputs already exist.
    pub working_dir: PathBuf,
    /// The action's timeout, if it has one; the executor should enforce it.
    pub timeout: Option<Duration>,
}

/// A file produced by the executor, reported explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedFile {
    /// Path relative to the working directory (as in `Command.output_paths`).
    pub path: String,
    /// Content.
    pub contents: Vec<u8>,
    /// Executable bit.
    pub is_executable: bool,
}

/// What the executor returns.
#[derive(Debug, Clone, Default)]
pub struct WorkResult {
    /// Exit code of the command.
    pub exit_code: i32,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
    /// `None`: the worker collects the command's declared output paths
    /// (files, directories, symlinks) from `working_dir`. `Some`: exactly
    /// these files are reported.
    pub output_files: Option<Vec<ProducedFile>>,
}

/// Worker settings. [`WorkerConfig::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Server URL, `grpc://HOST:PORT`.
    pub engine_url: String,
    /// REAPI instance name (the bot session's parent).
    pub instance_name: String,
    /// Platform properties advertised on the primary device.
    pub platform_properties: Vec<(String, String)>,
    /// Maximum concurrent leases (advertised as capacity).
    pub jobs: usize,
    /// Directory for per-lease sandboxes.
    pub work_dir: PathBuf,
    /// Bot id; default `HOSTNAME-PID-RANDOM`.
    pub bot_id: Option<String>,
    /// Set to `true` to drain and return.
    pub stop: Arc<AtomicBool>,
    /// Deadline of one `UpdateBotSession` long-poll.
    pub poll_timeout: Duration,
    /// Deadline of `CreateBotSession` (kept short, see the module docs).
    pub create_timeout: Duration,
    /// Interval of keep-alive updates while leases run; keep it well below
    /// the server's bot session keepalive timeout.
    pub heartbeat: Duration,
    /// Keep sandboxes after leases finish (debugging).
    pub keep_sandboxes: bool,
    /// Local cache of input blobs (files and `Directory` messages) by
    /// digest: a blob is fetched from the CAS once per worker, then linked
    /// into each lease's input root. `None`: every lease fetches everything.
    pub cache_dir: Option<PathBuf>,
    /// Input paths (relative to the input root) under these prefixes are
    /// copied out of the cache instead of hard-linked, because the command
    /// may write to them. Inputs that are also declared outputs are always
    /// copied; every other input is a read-only hard link.
    pub copy_prefixes: Vec<String>,
    /// Share read-only subtrees (those holding no output path) between
    /// leases instead of materialising them each time; the executor must
    /// bind [`WorkRequest::shared_dirs`] (needs `cache_dir`).
    pub share_dirs: bool,
    /// Directories (relative to the input root) never shared themselves,
    /// because commands write into them beyond what they declare (a build
    /// directory); their subdirectories that hold no output still are.
    pub private_dirs: Vec<String>,
    /// A `Command` platform property naming (comma-separated) more private
    /// directories for that command, whole subtrees (it writes anywhere
    /// under them).
    pub private_dirs_property: Option<String>,
    /// Give up after this many consecutive failed session RPCs.
    pub max_consecutive_errors: u32,
    /// Options of the internal CAS client.
    pub client_options: ClientOptions,
}

impl WorkerConfig {
    /// Defaults: sandboxes in `$TMPDIR/kraft-reapi-worker`, 30 s polls, 10 s heartbeat.
    pub fn new(
        engine_url: &str,
        instance_name: &str,
        platform_properties: &[(String, String)],
        jobs: usize,
    ) -> Self {
        Self {
            engine_url: engine_url.to_string(),
            instance_name: instance_name.to_string(),
            platform_properties: platform_properties.to_vec(),
            jobs: jobs.max(1),
            work_dir: std::env::temp_dir().join("kraft-reapi-worker"),
            bot_id: None,
            stop: Arc::new(AtomicBool::new(false)),
            poll_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_millis(2500),
            heartbeat: Duration::from_secs(10),
            keep_sandboxes: false,
            cache_dir: None,
            copy_prefixes: Vec::new(),
            share_dirs: false,
            private_dirs: Vec::new(),
            private_dirs_property: None,
            max_consecutive_errors: 20,
            client_options: ClientOptions::default(),
        }
    }
}

/// Runs a worker until a fatal error (never returns `Ok` since there is no
/// stop flag; use [`run_worker_with`] for that).
pub fn run_worker<F>(
    engine_url: &str,
    instance: &str,
    platform_properties: &[(String, String)],
    jobs: usize,
    executor: F,
) -> Result<()>
where
    F: Fn(&WorkRequest) -> std::result::Result<WorkResult, ExecutorError> + Sync,
{
    run_worker_with(
        &WorkerConfig::new(engine_url, instance, platform_properties, jobs),
        executor,
    )
}

fn default_bot_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &crate::digest::random_uuid()[..8]
    )
}

/// Maps a lease failure to the status reported to the server. BuildGrid
/// retries INTERNAL and UNAVAILABLE (up to its max attempts).
fn failure_status(e: &Error) -> LeaseStatus {
    let code = match e {
        Error::BadResponse { .. } | Error::InvalidArgument(_) => tonic::Code::InvalidArgument,
        Error::Rpc { status, .. } if status.code == tonic::Code::NotFound => {
            tonic::Code::FailedPrecondition
        }
        Error::Rpc { .. } | Error::Timeout { .. } | Error::Connect { .. } => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Internal,
    };
    LeaseStatus {
        code: code as i32,
        message: e.to_string(),
        details: vec![],
    }
}

struct Session<'a> {
    client: &'a Client,
    cfg: &'a WorkerConfig,
    bot_id: String,
}

impl Session<'_> {
    fn new_session_proto(&self) -> BotSession {
        BotSession {
            bot_id: self.bot_id.clone(),
            status: BotStatus::Ok as i32,
            worker: Some(Worker {
                devices: vec![Device {
                    handle: self.bot_id.clone(),
                    properties: self
                        .cfg
                        .platform_properties
                        .iter()
                        .map(|(k, v)| device::Property {
                            key: k.clone(),
                            value: v.clone(),
                        })
                        .collect(),
                }],
                properties: vec![],
                configs: vec![worker::Config {
                    key: "capacity".into(),
                    value: self.cfg.jobs.to_string(),
                }],
            }),
            ..Default::default()
        }
    }

    async fn create(&self) -> Result<BotSession> {
        const OP: &str = "Bots.CreateBotSession";
        // Short deadline: BuildGrid long-polls CreateBotSession for up to 80%
        // of it, but only hands out work reliably from UpdateBotSession, and
        // skips the wait entirely when the deadline is under ~3 s.
        let t = self.cfg.create_timeout;
        let s = self
            .client
            .unary(OP, t, |ch| {
                let req = Client::request(
                    CreateBotSessionRequest {
                        parent: self.cfg.instance_name.clone(),
                        bot_session: Some(self.new_session_proto()),
                    },
                    t,
                );
                async move { BotsClient::new(ch).create_bot_session(req).await }
            })
            .await?;
        if s.name.is_empty() {
            return Err(self
                .client
                .bad(OP, "server returned a bot session without a name"));
        }
        Ok(s)
    }

    async fn update(&self, session: &BotSession) -> Result<BotSession> {
        const OP: &str = "Bots.UpdateBotSession";
        let t = self.cfg.poll_timeout;
        let req = Client::request(
            UpdateBotSessionRequest {
                name: session.name.clone(),
                bot_session: Some(session.clone()),
                update_mask: None,
            },
            t,
        );
        let mut bots = BotsClient::new(self.client.channel());
        let fut = bots.update_bot_session(req);
        match tokio::time::timeout(t + Duration::from_secs(5), fut).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(self.client.rpc_err(OP, &status)),
            Err(_) => Err(self.client.timeout_err(OP, t)),
        }
    }
}

async fn wait_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a worker until `cfg.stop` is set (then drains) or a fatal error.
pub fn run_worker_with<F>(cfg: &WorkerConfig, executor: F) -> Result<()>
where
    F: Fn(&WorkRequest) -> std::result::Result<WorkResult, ExecutorError> + Sync,
{
    let client = Client::connect_with(
        &cfg.engine_url,
        &cfg.instance_name,
        cfg.client_options.clone(),
    )?;
    std::fs::create_dir_all(&cfg.work_dir)
        .map_err(|e| Error::io(format!("creating worker dir {}", cfg.work_dir.display()), e))?;
    let sess = Session {
        client: &client,
        cfg,
        bot_id: cfg.bot_id.clone().unwrap_or_else(default_bot_id),
    };
    let notify = Arc::new(Notify::new());
    let (tx, rx) = mpsc::channel::<(String, Lease)>();
    let executor = &executor;

    std::thread::scope(|scope| -> Result<()> {
        let mut session = client.block_on(sess.create())?;
        let mut running: HashSet<String> = HashSet::new();
        let mut finished: HashMap<String, Lease> = HashMap::new();
        let mut cancelled: HashSet<String> = HashSet::new();
        let mut errors = 0u32;
        let mut quick_return = false;
        loop {
            let stopping = cfg.stop.load(Ordering::SeqCst);
            rx_pending(&rx, &mut running, &mut finished, &mut cancelled);
            if stopping && running.is_empty() && finished.is_empty() {
                return Ok(());
            }
            // Nothing to report and the server would not long-poll (at
            // capacity, draining, or it just answered instantly): wait for a
            // completion, the stop flag or the heartbeat instead of spinning.
            if finished.is_empty() && (running.len() >= cfg.jobs || stopping || quick_return) {
                let wait = if quick_return && running.len() < cfg.jobs && !stopping {
                    Duration::from_millis(250)
                } else {
                    cfg.heartbeat
                };
                client.block_on(async {
                    tokio::select! {
                        _ = notify.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = wait_flag(&cfg.stop), if !stopping => {}
                    }
                });
                quick_return = false;
                if rx_pending(&rx, &mut running, &mut finished, &mut cancelled)
                    || cfg.stop.load(Ordering::SeqCst) != stopping
                {
                    continue;
                }
            }

            session.status = if stopping {
                BotStatus::BotTerminating
            } else {
                BotStatus::Ok
            } as i32;
            for l in session.leases.iter_mut() {
                if let Some(done) = finished.get(&l.id) {
                    *l = done.clone();
                }
            }
            for (id, done) in &finished {
                if !session.leases.iter().any(|l| &l.id == id) {
                    session.leases.push(done.clone());
                }
            }
            let sent_completed: Vec<String> = finished.keys().cloned().collect();
            let started = Instant::now();
            let res = client.block_on(async {
                tokio::select! {
                    r = sess.update(&session) => Some(r),
                    _ = notify.notified() => None,
                    _ = wait_flag(&cfg.stop), if !stopping => None,
                }
            });
            let new_session = match res {
                None => continue,
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    errors += 1;
                    if errors >= cfg.max_consecutive_errors {
                        return Err(e);
                    }
                    std::thread::sleep(backoff(errors));
                    if !e.is_transient() {
                        // Session unknown/closed on the server: start a new one.
                        // Results of leases still running will be ignored by it.
                        match client.block_on(sess.create()) {
                            Ok(s) => {
                                session = s;
                                finished.clear();
                            }
                            Err(e2) if errors + 1 >= cfg.max_consecutive_errors => return Err(e2),
                            Err(_) => errors += 1,
                        }
                    }
                    continue;
                }
            };
            errors = 0;
            quick_return =
                started.elapsed() < Duration::from_millis(100) && running.len() < cfg.jobs;
            for id in sent_completed {
                finished.remove(&id);
            }
            session = new_session;
            let mut keep = Vec::with_capacity(session.leases.len());
            for mut l in std::mem::take(&mut session.leases) {
                let state = LeaseState::try_from(l.state).unwrap_or(LeaseState::Unspecified);
                match state {
                    LeaseState::Cancelled => {
                        if running.contains(&l.id) {
                            cancelled.insert(l.id.clone());
                        }
                        continue;
                    }
                    LeaseState::Pending | LeaseState::Active
                        if !running.contains(&l.id) && !finished.contains_key(&l.id) =>
                    {
                        if stopping {
                            continue;
                        }
                        l.state = LeaseState::Active as i32;
                        running.insert(l.id.clone());
                        quick_return = false;
                        let lease = l.clone();
                        let (tx, notify, client, sess) =
                            (tx.clone(), notify.clone(), &client, &sess);
                        scope.spawn(move || {
                            let mut done = lease.clone();
                            match lease::run_lease(client, sess.cfg, &sess.bot_id, &lease, executor)
                            {
                                Ok(result) => {
                                    done.status = Some(LeaseStatus::default());
                                    done.result = Some(prost_types::Any {
                                        type_url: lease::ACTION_RESULT_URL.into(),
                                        value: result.encode_to_vec(),
                                    });
                                }
                                Err(e) => done.status = Some(failure_status(&e)),
                            }
                            done.state = LeaseState::Completed as i32;
                            done.payload = None;
                            let _ = tx.send((lease.id.clone(), done));
                            notify.notify_one();
                        });
                    }
                    _ => {}
                }
                keep.push(l);
            }
            session.leases = keep;
        }
    })
}

/// Drains completions; returns whether any arrived.
fn rx_pending(
    rx: &mpsc::Receiver<(String, Lease)>,
    running: &mut HashSet<String>,
    finished: &mut HashMap<String, Lease>,
    cancelled: &mut HashSet<String>,
) -> bool {
    let mut any = false;
    while let Ok((id, done)) = rx.try_recv() {
        any = true;
        running.remove(&id);
        if !cancelled.remove(&id) {
            finished.insert(id, done);
        }
    }
    any
}
