//! End-to-end tests against a real BuildGrid server started from the venv on
//! loopback (see `buildgrid/start.sh`).
//!
//! The venv is looked up at `$BGD_VENV`, else `target/buildgrid-venv` of the
//! workspace (what `.ci/setup` installs) next to the
//! crate. Without it the test is skipped with a message, unless `CI=true`,
//! where a missing venv is a failure. All scenarios share one server (it
//! takes several seconds to start), so they run as steps of one test.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kraft_reapi::proto::reapi::{ActionResult, Digest};
use kraft_reapi::worker::{run_worker_with, ExecutorError, WorkRequest, WorkResult, WorkerConfig};
use kraft_reapi::{
    digest_of, Blob, Client, ClientOptions, CommandBuilder, Error, InputFile, MerkleTree,
    PreparedAction,
};

const INSTANCE: &str = "main";

/// A running BuildGrid; stopped (with its PostgreSQL) on drop.
struct Server {
    url: String,
    dir: tempfile::TempDir,
    script_dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Proc::new(self.script_dir.join("stop.sh"))
            .arg(self.dir.path())
            .status();
        // Keep the server state and logs when a step failed, or on request.
        if thread::panicking() || std::env::var_os("KRAFT_REAPI_KEEP_SERVER_DIR").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("BuildGrid state and logs kept in {}", dir.display());
        }
    }
}

fn venv() -> PathBuf {
    match std::env::var_os("BGD_VENV") {
        Some(v) => PathBuf::from(v),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/buildgrid-venv"),
    }
}

/// Starts BuildGrid or returns `None` (skip) when the venv is missing.
fn start_server() -> Option<Server> {
    let venv = venv();
    if !venv.join("bin/bgd").exists() {
        let msg = format!(
            "BuildGrid venv not found at {} (run .ci/setup, or set BGD_VENV)",
            venv.display()
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::Builder::new().prefix("bgd-").tempdir().unwrap();
    let script_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildgrid");
    let server = Server {
        url: format!("grpc://127.0.0.1:{port}"),
        dir,
        script_dir,
    };
    let status = Proc::new(server.script_dir.join("start.sh"))
        .arg(port.to_string())
        .arg(server.dir.path())
        .env("BGD_VENV", &venv)
        .status()
        .expect("running buildgrid/start.sh");
    if !status.success() {
        let log = std::fs::read_to_string(server.dir.path().join("bgd.log")).unwrap_or_default();
        panic!("buildgrid/start.sh failed ({status}); bgd.log:\n{log}");
    }
    Some(server)
}

fn client(url: &str, opts: ClientOptions) -> Client {
    Client::connect_with(url, INSTANCE, opts).expect("connect")
}

fn cas_roundtrip(url: &str) {
    let c = client(url, ClientOptions::default());
    let caps = c.capabilities().unwrap();
    assert!(caps.max_batch_bytes > 1024 * 1024, "{caps:?}");
    assert!(caps.exec_enabled);

    let small: Vec<Blob> = (0..5)
        .map(|i| Blob::new(format!("small blob {i}")))
        .collect();
    let big = Blob::new(
        (0..5 * 1024 * 1024 + 123)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    assert!(
        big.data.len() > caps.max_batch_bytes,
        "big blob must exceed the batch limit"
    );
    let mut all = small.clone();
    all.push(big.clone());

    let digests: Vec<Digest> = all.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(c.find_missing_blobs(&digests).unwrap().len(), all.len());
    assert_eq!(c.upload_missing(&all).unwrap(), all.len());
    assert!(c.find_missing_blobs(&digests).unwrap().is_empty());
    assert_eq!(c.upload_missing(&all).unwrap(), 0, "nothing left to upload");
    let unknown = digest_of(b"never uploaded");
    assert_eq!(
        c.find_missing_blobs(&[unknown.clone(), digests[0].clone()])
            .unwrap(),
        vec![unknown.clone()]
    );

    let back = c.read_blobs(&digests).unwrap();
    for (b, d) in all.iter().zip(&back) {
        assert_eq!(&b.data, d);
    }
    assert_eq!(c.bytestream_read(&big.digest).unwrap(), big.data);
    // Streamed into a file (written from its start, whatever was there).
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &vec![7u8; big.data.len() + 100]).unwrap();
    c.bytestream_read_to(&big.digest, &mut file).unwrap();
    let mut streamed = Vec::new();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).unwrap();
    std::io::Read::read_to_end(&mut file, &mut streamed).unwrap();
    assert!(streamed == big.data, "the streamed file differs from the blob");
    // A digest the server holds other bytes for (same hash, other size) is refused.
    let mut wrong = big.digest.clone();
    wrong.size_bytes -= 1;
    assert!(c.bytestream_read_to(&wrong, &mut file).is_err());
    assert_eq!(c.read_blob(&digest_of(b"")).unwrap(), Vec::<u8>::new());

    // Force the ByteStream path for medium blobs with a tiny batch limit.
    let tiny = client(
        url,
        ClientOptions {
            max_batch_bytes: Some(64 * 1024),
            bytestream_chunk_bytes: 16 * 1024,
            ..Default::default()
        },
    );
    let medium = Blob::new(vec![42u8; 200 * 1024]);
    tiny.upload_blobs(std::slice::from_ref(&medium)).unwrap();
    assert_eq!(tiny.read_blob(&medium.digest).unwrap(), medium.data);

    let err = c.read_blob(&unknown).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(url) && msg.contains("BatchReadBlobs"), "{msg}");
    assert_eq!(err.rpc_code(), Some(tonic::Code::NotFound), "{msg}");
}

fn action_cache_roundtrip(url: &str) {
    let c = client(url, ClientOptions::default());
    let cmd = CommandBuilder::new(["true"]).build().unwrap();
    let prepared = PreparedAction::new(&cmd, digest_of(b""), |b| b.salt(b"ac-test".to_vec()));
    assert!(c.get_action_result(prepared.digest()).unwrap().is_none());
    let out = Blob::new("cached output");
    c.upload_blobs(std::slice::from_ref(&out)).unwrap();
    let result = ActionResult {
        exit_code: 3,
        stdout_digest: Some(out.digest.clone()),
        ..Default::default()
    };
    c.update_action_result(prepared.digest(), &result).unwrap();
    let got = c
        .get_action_result(prepared.digest())
        .unwrap()
        .expect("cached");
    assert_eq!(got.exit_code, 3);
    assert_eq!(got.stdout_digest, Some(out.digest));
}

/// Test executor: runs argv in the working directory with only the
/// command's environment, and records which actions it ran.
fn local_executor(
    log: Arc<Mutex<Vec<Vec<String>>>>,
) -> impl Fn(&WorkRequest) -> Result<WorkResult, ExecutorError> + Sync {
    move |req: &WorkRequest| {
        log.lock().unwrap().push(req.command.arguments.clone());
        let args = &req.command.arguments;
        let env: HashMap<_, _> = req
            .command
            .environment_variables
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        let out = Proc::new(&args[0])
            .args(&args[1..])
            .current_dir(&req.working_dir)
            .env_clear()
            .envs(env)
            .output()?;
        Ok(WorkResult {
            exit_code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
            output_files: None,
        })
    }
}

struct TestWorker {
    cfg: WorkerConfig,
    handle: Option<thread::JoinHandle<kraft_reapi::Result<()>>>,
    log: Arc<Mutex<Vec<Vec<String>>>>,
}

impl TestWorker {
    fn start(url: &str, bot_id: &str, props: &[(&str, &str)], work_dir: &Path) -> Self {
        let props: Vec<(String, String)> = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut cfg = WorkerConfig::new(url, INSTANCE, &props, 2);
        cfg.bot_id = Some(bot_id.to_string());
        cfg.work_dir = work_dir.join(bot_id);
        cfg.poll_timeout = Duration::from_secs(10);
        cfg.heartbeat = Duration::from_secs(2);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (c, l) = (cfg.clone(), log.clone());
        let handle = thread::spawn(move || run_worker_with(&c, local_executor(l)));
        TestWorker {
            cfg,
            handle: Some(handle),
            log,
        }
    }

    fn ran(&self, marker: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|argv| argv.iter().any(|a| a.contains(marker)))
    }

    fn stop(mut self) {
        self.cfg.stop.store(true, Ordering::SeqCst);
        let r = self
            .handle
            .take()
            .unwrap()
            .join()
            .expect("worker thread panicked");
        r.expect("worker returned an error");
    }
}

/// Uploads inputs + action for `sh -c script` with the given platform.
fn prepare_sh(c: &Client, script: &str, platform: &[(&str, &str)]) -> PreparedAction {
    let input = Blob::new("hello from the input root\n");
    let tree = MerkleTree::build(
        &[InputFile {
            path: "src/in.txt".into(),
            digest: input.digest.clone(),
            is_executable: false,
        }],
        &[],
        &[],
    )
    .unwrap();
    let mut cmd = CommandBuilder::new(["/bin/sh", "-c", script])
        .env("PATH", "/usr/bin:/bin")
        .output("out.txt")
        .output("gen/dir")
        .working_directory("src");
    for (k, v) in platform {
        cmd = cmd.platform_property(*k, *v);
    }
    let cmd = cmd.build().unwrap();
    let prepared = PreparedAction::new(&cmd, tree.root_digest.clone(), |b| {
        b.timeout(Duration::from_secs(60))
    });
    let mut blobs = tree.blobs();
    blobs.push(input);
    blobs.push(prepared.command_blob.clone());
    blobs.push(prepared.action_blob.clone());
    c.upload_missing(&blobs).unwrap();
    prepared
}

fn execute_with_worker(url: &str, work_dir: &Path) {
    let worker = TestWorker::start(
        url,
        "bot-x86",
        &[("kraft-arch", "x86_64"), ("OSFamily", "linux")],
        work_dir,
    );
    let c = client(
        url,
        ClientOptions {
            execute_timeout: Duration::from_secs(90),
            ..Default::default()
        },
    );
    let script = "echo hi > ../out.txt; mkdir -p ../gen/dir; echo x > ../gen/dir/f; cat in.txt; echo err >&2";
    // Outputs are relative to the working directory `src`.
    let script = script
        .replace("../out.txt", "out.txt")
        .replace("../gen", "gen");
    let prepared = prepare_sh(&c, &script, &[("kraft-arch", "x86_64")]);

    let t0 = Instant::now();
    let outcome = c.execute(prepared.digest(), true).expect("execute");
    eprintln!(
        "execute took {:?} (op {})",
        t0.elapsed(),
        outcome.operation_name
    );
    let r = &outcome.result;
    assert_eq!(r.exit_code, 0);
    assert!(!outcome.cached_result);
    let f = r
        .output_files
        .iter()
        .find(|f| f.path == "out.txt")
        .expect("out.txt in result");
    assert_eq!(c.read_blob(f.digest.as_ref().unwrap()).unwrap(), b"hi\n");
    assert_eq!(
        c.read_blob(r.stdout_digest.as_ref().unwrap()).unwrap(),
        b"hello from the input root\n"
    );
    assert_eq!(
        c.read_blob(r.stderr_digest.as_ref().unwrap()).unwrap(),
        b"err\n"
    );
    let d = r
        .output_directories
        .iter()
        .find(|d| d.path == "gen/dir")
        .expect("gen/dir in result");
    let tree: kraft_reapi::proto::reapi::Tree =
        prost::Message::decode(&c.read_blob(d.tree_digest.as_ref().unwrap()).unwrap()[..]).unwrap();
    assert_eq!(tree.root.unwrap().files[0].name, "f");
    assert_eq!(r.execution_metadata.as_ref().unwrap().worker, "bot-x86");
    assert!(worker.ran(&script));

    // Second run is served from the action cache.
    let again = c.execute(prepared.digest(), false).expect("cached execute");
    assert!(again.cached_result, "expected an action cache hit");
    assert!(c.get_action_result(prepared.digest()).unwrap().is_some());

    // Failing command: non-zero exit code is a result, not an error.
    let failing = prepare_sh(&c, "exit 7", &[("kraft-arch", "x86_64")]);
    let t0 = Instant::now();
    assert_eq!(
        c.execute(failing.digest(), true).unwrap().result.exit_code,
        7
    );
    eprintln!("second execute took {:?}", t0.elapsed());

    platform_mismatch(url, work_dir, &c, &worker);
    execute_survives_dropped_stream(url);
    worker.stop();
}

/// Loopback TCP proxy whose live connections can be cut on demand.
struct CuttableProxy {
    port: u16,
    conns: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let c2 = conns.clone();
        thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { return };
                let Ok(up) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                c2.lock()
                    .unwrap()
                    .extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
                for (mut from, mut to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        CuttableProxy { port, conns }
    }

    fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The Execute stream is cut while the action runs; the client must
/// re-attach with WaitExecution (over a new connection) and get the result.
fn execute_survives_dropped_stream(url: &str) {
    let upstream: std::net::SocketAddr = url.trim_start_matches("grpc://").parse().unwrap();
    let proxy = CuttableProxy::start(upstream);
    let proxied = format!("grpc://127.0.0.1:{}", proxy.port);
    let c = client(
        &proxied,
        ClientOptions {
            execute_timeout: Duration::from_secs(60),
            ..Default::default()
        },
    );
    let prepared = prepare_sh(
        &c,
        "sleep 3; echo after-cut > out.txt",
        &[("kraft-arch", "x86_64")],
    );
    let digest = prepared.digest().clone();
    let waiter = thread::spawn(move || c.execute(&digest, true).map(|o| (o, c)));
    thread::sleep(Duration::from_millis(1500));
    proxy.cut();
    let (outcome, c) = waiter
        .join()
        .unwrap()
        .expect("execute across a dropped stream");
    assert!(
        outcome.stream_retries >= 1,
        "the stream should have been re-attached"
    );
    let f = outcome
        .result
        .output_files
        .iter()
        .find(|f| f.path == "out.txt")
        .unwrap();
    assert_eq!(
        c.read_blob(f.digest.as_ref().unwrap()).unwrap(),
        b"after-cut\n"
    );
}

/// A job needing kraft-arch=arm64 must not go to the x86_64 bot; it runs
/// once a matching bot appears. Unregistered keys are rejected up front.
fn platform_mismatch(url: &str, work_dir: &Path, c: &Client, x86: &TestWorker) {
    let marker = "arm64-only-job";
    let prepared = prepare_sh(
        c,
        &format!("echo {marker} > out.txt"),
        &[("kraft-arch", "arm64")],
    );
    let digest = prepared.digest().clone();
    let url2 = url.to_string();
    let waiter = thread::spawn(move || {
        let c = client(
            &url2,
            ClientOptions {
                execute_timeout: Duration::from_secs(90),
                ..Default::default()
            },
        );
        c.execute(&digest, true)
    });
    thread::sleep(Duration::from_secs(5));
    assert!(!x86.ran(marker), "x86_64 bot must not run an arm64 job");
    assert!(
        !waiter.is_finished(),
        "arm64 job must stay queued without a matching bot"
    );

    let arm = TestWorker::start(url, "bot-arm", &[("kraft-arch", "arm64")], work_dir);
    let outcome = waiter.join().unwrap().expect("arm64 execute");
    assert_eq!(
        outcome.result.execution_metadata.as_ref().unwrap().worker,
        "bot-arm"
    );
    assert!(arm.ran(marker) && !x86.ran(marker));
    arm.stop();

    // A property key the scheduler does not know is refused at Execute.
    let bad = prepare_sh(c, "true", &[("no-such-key", "1")]);
    match c.execute(bad.digest(), true) {
        Err(e @ Error::Rpc { .. }) | Err(e @ Error::ExecutionFailed { .. }) => {
            assert_eq!(e.rpc_code(), Some(tonic::Code::FailedPrecondition), "{e}");
            assert!(e.to_string().contains(url), "{e}");
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
}

#[test]
fn buildgrid_end_to_end() {
    let Some(server) = start_server() else { return };
    let work_dir = tempfile::tempdir().unwrap();
    let steps: [(&str, &dyn Fn()); 3] = [
        ("cas_roundtrip", &|| cas_roundtrip(&server.url)),
        ("action_cache_roundtrip", &|| {
            action_cache_roundtrip(&server.url)
        }),
        ("execute_with_worker", &|| {
            execute_with_worker(&server.url, work_dir.path())
        }),
    ];
    for (name, step) in steps {
        let t = Instant::now();
        eprintln!("--- {name}");
        step();
        eprintln!("--- {name} ok ({:?})", t.elapsed());
    }
}
