//! Remote caching and remote execution over REAPI, end to end on the fixture
//! app, against a real BuildGrid (the venv `.ci/setup` installs under
//! `target/buildgrid-venv`, with Debian's PostgreSQL) started by each test on
//! loopback and stopped by it, and real `xtask worker` processes.
//!
//! Without BuildGrid the tests print `SKIPPED` and pass, except under
//! `CI=true`, where that is a failure. Assertions are on images, on the
//! engine's per-build report (`remote.json`) and on what ran; never on time.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use camino::{Utf8Path, Utf8PathBuf};
use serde_json::Value;
use support::*;

/// The CI writer's key and a stranger's (seeds; ids `ci` and `laptop`).
const CI_SEED: [u8; 32] = [11; 32];
const LAPTOP_SEED: [u8; 32] = [22; 32];

fn key_text(id: &str, seed: &[u8; 32]) -> String {
    use base64::Engine as _;
    format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(seed))
}

fn public_text(id: &str, seed: &[u8; 32]) -> String {
    use base64::Engine as _;
    let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
    format!("{id}:{}", base64::engine::general_purpose::STANDARD.encode(public.as_bytes()))
}

/// A BuildGrid (and its PostgreSQL) on a free loopback port; stopped on drop.
struct Engine {
    url: String,
    dir: tempfile::TempDir,
}

impl Engine {
    fn scripts() -> Utf8PathBuf {
        repo_root().join("reapi/buildgrid")
    }

    /// `None` (skip) when the venv is missing; a failure under CI=true.
    fn start() -> Option<Engine> {
        let venv = repo_root().join("target/buildgrid-venv");
        if !venv.join("bin/bgd").exists() {
            let message = format!("BuildGrid not installed at {venv} (run .ci/setup)");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::Builder::new().prefix("bgd-").tempdir().unwrap();
        let status = Command::new(Self::scripts().join("start.sh"))
            .arg(port.to_string())
            .arg(dir.path())
            .env("BGD_VENV", venv.as_str())
            .status()
            .expect("running start.sh");
        assert!(status.success(), "BuildGrid did not start; see {}", dir.path().display());
        Some(Engine { url: format!("grpc://127.0.0.1:{port}/main"), dir })
    }

    /// Kill the server at once (its own process group), as a crash would.
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.path().join("bgd.pid")).unwrap();
        let status = Command::new("kill").args(["-KILL", "--", &format!("-{}", pid.trim())]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = Command::new(Self::scripts().join("stop.sh")).arg(self.dir.path()).status();
    }
}

/// `xtask worker` processes; killed on drop.
struct Workers(Vec<Child>);

impl Workers {
    fn spawn(engine: &Engine, n: usize, dir: &Utf8Path) -> Workers {
        Workers(
            (0..n)
                .map(|i| {
                    let cache = dir.join(format!("worker-{i}"));
                    Command::new(env!("CARGO_BIN_EXE_xtask"))
                        .args(["-j", "2", "worker", "--engine", &engine.url, "--cache-dir", cache.as_str()])
                        .current_dir(dir)
                        .env_remove("KRAFT_STORE")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("worker-{i}.log"))).unwrap()))
                        .spawn()
                        .expect("spawning xtask worker")
                })
                .collect(),
        )
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One client: the fixture app in a workspace and a store of its own.
struct Client {
    ws: Utf8PathBuf,
    store: Utf8PathBuf,
    env: Vec<(String, String)>,
}

impl Client {
    fn new(root: &Utf8Path, name: &str, env: &[(&str, String)]) -> Client {
        let ws = root.join(name).join("ws");
        make_workspace(&ws);
        write_greet_recipe(&ws);
        for dir in ["core", "lib-greet", "app-hello"] {
            copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
        }
        let _ = std::fs::remove_file(ws.join("apps/app-hello/kraft.lock"));
        let mut all = vec![("KRAFT_ARCHIVE_DIR".to_string(), fixtures().join("archives").to_string())];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Client { store: root.join(name).join("store"), ws, env: all }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(["--message-format", "json"]).args(args).current_dir(&self.ws);
        for var in ["KRAFT_MIRRORS", "KRAFT_ARCHIVE_DIR", "KRAFT_STORE", "KRAFT_REMOTE_CACHE", "KRAFT_CACHE_SECRET", "CI"] {
            cmd.env_remove(var);
        }
        for var in ["KRAFT_CACHE_SIGNING_KEY", "KRAFT_CACHE_TRUSTED_KEYS", "KRAFT_REMOTE_UPLOAD"] {
            cmd.env_remove(var);
        }
        cmd.env("KRAFT_STORE", self.store.as_str()).env("CARGO_TARGET_DIR", self.ws.join("target").as_str());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// `build app-hello` with `flags`; returns stderr and the JSON events.
    fn build(&self, flags: &[&str]) -> (String, Vec<Value>) {
        let mut args = flags.to_vec();
        args.extend(["build", "app-hello"]);
        let out = self.command(&args).output().expect("xtask runs");
        assert_ok(&out);
        (stderr(&out), events(&String::from_utf8_lossy(&out.stdout)))
    }

    fn out_dir(&self) -> Utf8PathBuf {
        self.ws.join("target/kraft/app-hello/linuxu-x86_64")
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(self.out_dir().join("hello_linuxu-x86_64")).expect("the image was installed")
    }

    fn remote_report(&self) -> Value {
        let path = self.out_dir().join("remote.json");
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))).unwrap()
    }
}

fn events(stdout: &str) -> Vec<Value> {
    stdout.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Names of actions that ran here (`outcome: ran` events).
fn ran(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["reason"] == "action-finished" && e["outcome"] == "ran")
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect()
}

fn count(report: &Value, field: &str) -> u64 {
    report[field].as_u64().unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[test]
fn remote_execution_on_two_workers_matches_a_local_build_and_feeds_a_second_client() {
    let Some(engine) = Engine::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let _workers = Workers::spawn(&engine, 2, &root);

    let local = Client::new(&root, "local", &[]);
    local.build(&[]);

    let ci = Client::new(&root, "ci", &[("KRAFT_CACHE_SIGNING_KEY", key_text("ci", &CI_SEED))]);
    let (stderr, _) = ci.build(&["-j", "8", "--remote-exec", &engine.url, "--remote-upload"]);
    assert_eq!(ci.image(), local.image(), "remote execution gave another image:\n{stderr}");
    let report = ci.remote_report();
    assert!(count(&report, "executed_remotely") > 0, "{report}");
    assert_eq!(count(&report, "ran_locally"), 0, "{report}\n{stderr}");
    assert_eq!(count(&report, "published"), count(&report, "executed_remotely"), "{report}");
    assert!(count(&report, "bytes_uploaded") > 0, "{report}");
    assert!(report["gave_up"].is_null(), "{report}");

    // A second client, empty store, trusting CI's key: every action is an
    // action-cache hit; nothing runs, locally or remotely.
    let laptop = Client::new(&root, "laptop", &[("KRAFT_CACHE_TRUSTED_KEYS", public_text("ci", &CI_SEED))]);
    let (stderr, events) = laptop.build(&["--remote-exec", &engine.url]);
    assert_eq!(laptop.image(), local.image());
    let report = laptop.remote_report();
    assert_eq!(count(&report, "ran_locally"), 0, "{report}\n{stderr}");
    assert_eq!(count(&report, "executed_remotely"), 0, "{report}");
    assert_eq!(count(&report, "cache_hits"), report["actions"].as_array().unwrap().len() as u64, "{report}");
    assert!(ran(&events).is_empty(), "ran locally: {:?}", ran(&events));
}

#[test]
fn an_entry_written_by_an_untrusted_client_is_not_used() {
    let Some(engine) = Engine::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let cache = engine.url.clone();

    // A client with its own key publishes every result (cache only, no workers).
    let stranger = Client::new(&root, "stranger", &[("KRAFT_CACHE_SIGNING_KEY", key_text("laptop", &LAPTOP_SEED))]);
    stranger.build(&["--remote-cache", &cache, "--remote-upload"]);
    let published = count(&stranger.remote_report(), "published");
    assert!(published > 0, "{}", stranger.remote_report());

    // A reader trusting only CI ignores those entries and builds everything.
    let reader = Client::new(&root, "reader", &[("KRAFT_CACHE_TRUSTED_KEYS", public_text("ci", &CI_SEED))]);
    let (stderr, events) = reader.build(&["--remote-cache", &cache]);
    let report = reader.remote_report();
    assert_eq!(count(&report, "cache_hits"), 0, "{report}");
    assert_eq!(count(&report, "untrusted_entries"), published, "{report}");
    assert_eq!(ran(&events).len() as u64, published, "{report}");
    let warnings: Vec<&str> =
        events.iter().filter(|e| e["reason"] == "warning").filter_map(|e| e["rendered"].as_str()).collect();
    assert!(warnings.iter().any(|w| w.contains("not trusted") && w.contains("`laptop`")), "{warnings:?}\n{stderr}");
    assert_eq!(reader.image(), stranger.image());

    // The same entries are used by whoever trusts that key (the control).
    let friend = Client::new(&root, "friend", &[("KRAFT_CACHE_TRUSTED_KEYS", public_text("laptop", &LAPTOP_SEED))]);
    let (_, events) = friend.build(&["--remote-cache", &cache]);
    assert_eq!(count(&friend.remote_report(), "cache_hits"), published);
    assert!(ran(&events).is_empty());
}

#[test]
fn killing_the_engine_mid_build_finishes_the_build_locally() {
    let Some(engine) = Engine::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let _workers = Workers::spawn(&engine, 2, &root);
    let local = Client::new(&root, "local", &[]);
    local.build(&[]);

    let client = Client::new(&root, "client", &[("KRAFT_CACHE_SIGNING_KEY", key_text("ci", &CI_SEED))]);
    let mut child = client
        .command(&["-j", "1", "--remote-exec", &engine.url, "--remote-upload", "build", "app-hello"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.unwrap();
        // The first action is done (remotely): the engine dies now, with
        // the rest of the graph still to do (`-j 1`: one action at a time).
        if !killed && line.contains("\"action-finished\"") {
            engine.kill();
            killed = true;
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(killed, "no action finished:\n{stderr}");
    assert!(out.status.success(), "the build failed:\n{stderr}");
    assert_eq!(stderr.matches("the rest of the build runs locally").count(), 1, "{stderr}");
    let report = client.remote_report();
    assert!(!report["gave_up"].is_null(), "{report}");
    assert!(count(&report, "executed_remotely") >= 1, "{report}");
    assert!(count(&report, "ran_locally") >= 1, "{report}");
    assert_eq!(client.image(), local.image());
}
