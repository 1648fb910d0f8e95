//! The remote cache against a real HTTP cache server: nginx on loopback with
//! WebDAV `PUT` serving `/ac/` and `/cas/` from a temporary directory (the
//! layout bazel-remote's HTTP protocol uses), and real gcc builds of the
//! small graph in `support/graphs.rs`.
//!
//! Each test starts its own nginx (`master_process off`, so killing the one
//! child stops the server) and counts what reached it from the files under
//! its root and its access log. Tests assert on counters, files and
//! warnings, never on time.
//!
//! The roles of the trust model: CI signs with its Ed25519 private key
//! (`ci_keys`), a laptop holds only the public key (`reader_keys`), and the
//! server holds nothing: the tests forge entries on it as an attacker who
//! owns it could, and check that they are ignored.

#[path = "support/graphs.rs"]
mod graphs;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use camino::{Utf8Path, Utf8PathBuf};
use graphs::{set, Client, APP_OUTPUT, COMPILES};
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use kraft::cache::http::{RemoteCache, RemoteOptions, NO_SIGNING_KEY_WARNING, NO_TRUSTED_KEYS_WARNING};
use kraft::cache::signing::CacheKeys;
use sha2::{Digest, Sha256};

const NGINX: &str = "/usr/sbin/nginx";
/// CI's private key (a fixed seed, so failures reproduce).
const CI_SEED: [u8; 32] = [0x11; 32];
/// A key the clients do not trust (an attacker's, or a rotated-out one).
const OTHER_SEED: [u8; 32] = [0x22; 32];

/// CI: signs with its private key (and trusts its public key).
fn ci_keys() -> CacheKeys {
    CacheKeys::none().signing("ci", CI_SEED)
}

/// A laptop: CI's public key only.
fn reader_keys() -> CacheKeys {
    CacheKeys { signer: None, trusted: ci_keys().trusted }
}

/// Sign `payload` for the action key `key` as the server-side attacker
/// would, with `seed` under `key_id` (the document format of cache/http.rs).
fn forge(key_id: &str, seed: [u8; 32], key: &str, payload: &str) -> serde_json::Value {
    let mut message = b"kraft-xtask remote ac v2\0".to_vec();
    message.extend_from_slice(key_id.as_bytes());
    message.push(0);
    message.extend_from_slice(key.as_bytes());
    message.push(0);
    message.extend_from_slice(payload.as_bytes());
    let sig = SigningKey::from_bytes(&seed).sign(&message);
    let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
    serde_json::json!({ "version": 2, "payload": payload, "key": key_id, "sig": sig })
}

/// An nginx serving a WebDAV-writable root; killed on drop.
struct Nginx {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
}

impl Nginx {
    /// `None` (with a message) when nginx is not installed, except under
    /// CI=true, where that is a failure.
    fn start() -> Option<Nginx> {
        if !Utf8Path::new(NGINX).exists() {
            let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
            assert!(!ci, "{NGINX} is missing: CI must install nginx (apt-get install nginx-light)");
            eprintln!("SKIPPED: {NGINX} is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = Utf8Path::from_path(dir.path()).unwrap().to_owned();
        for sub in ["root/ac", "root/cas", "body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"] {
            fs::create_dir_all(base.join(sub)).unwrap();
        }
        // A port the kernel just handed out; retry if someone takes it first.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = base.join("nginx.conf");
            fs::write(&conf, config(&base, port)).unwrap();
            let mut child = Command::new(NGINX)
                .args(["-p", base.as_str(), "-c", conf.as_str(), "-e", base.join("logs/error.log").as_str()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx starts");
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Nginx { dir, child: Some(child), port });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken, or a config problem (see error.log)
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nginx did not start: {}", fs::read_to_string(base.join("logs/error.log")).unwrap_or_default());
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn base(&self) -> Utf8PathBuf {
        Utf8Path::from_path(self.dir.path()).unwrap().to_owned()
    }

    fn root(&self) -> Utf8PathBuf {
        self.base().join("root")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Files under `root/<kind>`.
    fn files(&self, kind: &str) -> Vec<Utf8PathBuf> {
        let mut files: Vec<Utf8PathBuf> = fs::read_dir(self.root().join(kind))
            .unwrap()
            .map(|e| Utf8PathBuf::from_path_buf(e.unwrap().path()).unwrap())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
    }

    /// Access log lines: `METHOD URI STATUS`.
    fn requests(&self) -> Vec<String> {
        fs::read_to_string(self.base().join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn puts(&self) -> usize {
        self.requests().iter().filter(|l| l.starts_with("PUT ")).count()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(base: &Utf8Path, port: u16) -> String {
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    default_type application/octet-stream;
    log_format kraft '$request_method $uri $status';
    access_log {base}/logs/access.log kraft;
    client_body_temp_path {base}/body;
    proxy_temp_path {base}/proxy;
    fastcgi_temp_path {base}/fastcgi;
    uwsgi_temp_path {base}/uwsgi;
    scgi_temp_path {base}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {base}/root;
        location /ac/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
        location /cas/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
"#
    )
}

/// A remote cache whose warnings are collected; uploads are waited for long
/// enough that the tests never depend on timing.
fn remote(server: &Nginx, keys: CacheKeys) -> (RemoteCache, Arc<Mutex<Vec<String>>>) {
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let sink = warnings.clone();
    let options = RemoteOptions { upload_wait: Duration::from_secs(120), ..RemoteOptions::default() };
    let cache = RemoteCache::from_config(Some(&server.url()), keys)
        .unwrap()
        .with_options(options)
        .with_warnings(move |w| sink.lock().unwrap().push(w.to_owned()));
    (cache, warnings)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Fill a fresh server with a cold build; returns the server and the client.
fn filled() -> Option<(Nginx, Client)> {
    let server = Nginx::start()?;
    let (cache, warnings) = remote(&server, ci_keys());
    let ci = Client::new();
    let (report, seen) = ci.build(Some(&cache));
    assert_eq!(report.run, 6, "{report:#?}");
    assert_eq!(seen.ran.len(), 6);
    assert!(warnings.lock().unwrap().is_empty(), "{:?}", warnings.lock().unwrap());
    assert_eq!(ci.run_app(), APP_OUTPUT);
    Some((server, ci))
}

/// The `ac/` document (file, parsed) whose entry produces `output`.
fn ac_doc_for(server: &Nginx, output: &str) -> (Utf8PathBuf, serde_json::Value) {
    for file in server.files("ac") {
        let doc: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
        let payload: serde_json::Value = serde_json::from_str(doc["payload"].as_str().unwrap()).unwrap();
        if payload["type"] == "entry" && payload["entry"]["outputs"][0]["path"] == output {
            return (file, payload);
        }
    }
    panic!("no ac entry for {output}");
}

#[test]
fn cold_build_fills_the_server_and_an_empty_client_runs_nothing() {
    let Some((server, ci)) = filled() else { return };

    // 6 entries + 3 header manifests (one per compile); one blob per output.
    let ac = server.files("ac");
    let cas = server.files("cas");
    assert_eq!(ac.len(), 9, "{ac:?}");
    let outputs: std::collections::BTreeSet<String> = ["libab/a.o", "libab/b.o", "libab/libab.o", "app/c.o", "app/app.dbg", "app/app"]
        .iter()
        .map(|o| sha256_hex(&fs::read(ci.output(o)).unwrap()))
        .collect();
    let names: std::collections::BTreeSet<String> = cas.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, outputs, "the CAS holds exactly the outputs, named by SHA-256");
    for blob in &cas {
        assert_eq!(sha256_hex(&fs::read(blob).unwrap()), blob.file_name().unwrap());
    }
    let puts = server.puts();
    assert_eq!(puts, 9 + outputs.len(), "{:#?}", server.requests());

    // A laptop (CI's public key only, read-only), empty local store:
    // everything restored.
    let (cache, warnings) = remote(&server, reader_keys());
    let cache = cache.read_only(true);
    let laptop = Client::new();
    let (report, seen) = laptop.build(Some(&cache));
    assert_eq!((report.run, report.restored, report.remote_hits), (0, 6, 6), "{report:#?}");
    assert!(seen.ran.is_empty(), "nothing compiles: {:?}", seen.ran);
    assert!(warnings.lock().unwrap().is_empty(), "{:?}", warnings.lock().unwrap());
    assert_eq!(laptop.run_app(), APP_OUTPUT);
    assert_eq!(server.puts(), puts, "restoring from the remote does not upload it again");

    // Its next build is a no-op, without the network.
    let requests = server.requests().len();
    let (noop, _) = laptop.build(Some(&cache));
    assert_eq!(noop.up_to_date, 6);
    assert_eq!(server.requests().len(), requests);
}

#[test]
fn a_server_killed_mid_build_gives_one_warning_and_a_local_build() {
    let Some(server) = Nginx::start() else { return };
    let server = Mutex::new(server);
    let url = server.lock().unwrap().url();
    let warnings = Arc::new(Mutex::new(Vec::new()));
    let sink = warnings.clone();
    let cache = RemoteCache::from_config(Some(&url), ci_keys())
        .unwrap()
        .with_options(RemoteOptions { upload_wait: Duration::from_secs(120), ..RemoteOptions::default() })
        .with_warnings(move |w| sink.lock().unwrap().push(w.to_owned()));
    let mut client = Client::new();
    client.jobs = 1;
    let kill_after_first = |_: &str| server.lock().unwrap().kill();
    let (result, seen) = client.try_build_with(Some(&cache), &kill_after_first);
    let report = result.expect("the build succeeds without the server");
    assert_eq!(report.run, 6);
    assert_eq!(seen.ran.len(), 6);
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("unavailable") && warnings[0].contains(&url), "{warnings:?}");
    assert_eq!(report.remote_warnings, warnings);
    assert_eq!(client.run_app(), APP_OUTPUT);

    // A server that is down from the start: the same, one warning.
    let (cache, warnings) = {
        let w = Arc::new(Mutex::new(Vec::new()));
        let sink = w.clone();
        (RemoteCache::from_config(Some(&url), ci_keys()).unwrap().with_warnings(move |m| sink.lock().unwrap().push(m.to_owned())), w)
    };
    let other = Client::new();
    let (report, _) = other.build(Some(&cache));
    assert_eq!(report.run, 6);
    assert_eq!(warnings.lock().unwrap().len(), 1, "{:?}", warnings.lock().unwrap());
}

#[test]
fn a_corrupt_blob_on_the_server_is_discarded_and_rebuilt() {
    let Some((server, ci)) = filled() else { return };
    let a_o = fs::read(ci.output("libab/a.o")).unwrap();
    let name = sha256_hex(&a_o);
    let on_server = server.root().join("cas").join(&name);
    assert!(on_server.is_file());
    let mut corrupt = a_o.clone();
    corrupt[a_o.len() / 2] ^= 0xff;
    fs::write(&on_server, &corrupt).unwrap();

    // Another CI runner (it holds the signing key, so it re-uploads).
    let (cache, warnings) = remote(&server, ci_keys());
    let laptop = Client::new();
    let (report, seen) = laptop.build(Some(&cache));
    assert_eq!(seen.ran, set(&["libab/a.o"]), "{report:#?}");
    assert_eq!(report.remote_hits, 5);
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("corrupt") && warnings[0].contains(&name), "{warnings:?}");
    assert_eq!(fs::read(laptop.output("libab/a.o")).unwrap(), a_o, "the rebuilt object is the right one");
    assert_eq!(laptop.run_app(), APP_OUTPUT);
    // Nothing corrupt entered the local store.
    assert!(laptop.store.verify(false).unwrap().is_clean());
    // The writer re-uploaded the right bytes over the corrupt ones.
    assert_eq!(fs::read(&on_server).unwrap(), a_o);
}

#[test]
fn forged_and_untrusted_action_entries_are_ignored() {
    let Some((server, ci)) = filled() else { return };
    // Point a.o's entry at c.o's blob (a real blob, with valid hashes) and
    // sign it with another key under CI's key id.
    let (a_file, mut a_entry) = ac_doc_for(&server, "/kraft/build/libab/a.o");
    let (c_file, c_entry) = ac_doc_for(&server, "/kraft/build/app/c.o");
    let c_out = c_entry["entry"]["outputs"][0].clone();
    for field in ["blake3", "sha256", "size"] {
        a_entry["entry"]["outputs"][0][field] = c_out[field].clone();
    }
    let a_key = a_file.file_name().unwrap();
    fs::write(&a_file, forge("ci", OTHER_SEED, a_key, &a_entry.to_string()).to_string()).unwrap();
    // b.o's entry: tampered payload, CI's signature kept.
    let (b_file, _) = ac_doc_for(&server, "/kraft/build/libab/b.o");
    let mut b_doc: serde_json::Value = serde_json::from_slice(&fs::read(&b_file).unwrap()).unwrap();
    let tampered = b_doc["payload"].as_str().unwrap().replace(&ci_blake3(&ci, "libab/b.o"), c_out["blake3"].as_str().unwrap());
    b_doc["payload"] = tampered.into();
    fs::write(&b_file, b_doc.to_string()).unwrap();
    // c.o's entry: the right payload, re-signed by a key nobody trusts.
    let c_doc: serde_json::Value = serde_json::from_slice(&fs::read(&c_file).unwrap()).unwrap();
    let c_key = c_file.file_name().unwrap();
    fs::write(&c_file, forge("mallory", OTHER_SEED, c_key, c_doc["payload"].as_str().unwrap()).to_string()).unwrap();

    let (cache, warnings) = remote(&server, reader_keys());
    let laptop = Client::new();
    let (report, seen) = laptop.build(Some(&cache.read_only(true)));
    assert_eq!(seen.ran, set(&["libab/a.o", "libab/b.o", "app/c.o"]), "{report:#?}");
    assert_eq!(laptop.run_app(), APP_OUTPUT);
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "one warning per build: {warnings:?}");
    assert!(warnings[0].contains("not signed by a trusted key"), "{warnings:?}");
}

#[test]
fn keys_rotate_entries_carry_their_key_id() {
    let Some((server, _ci)) = filled() else { return };
    let ci_public = ci_keys().trusted;
    let next = CacheKeys::none().signing("ci-next", OTHER_SEED).trusted;

    // Trusting the old and the new key: CI's entries (old key) are read.
    let both = CacheKeys { signer: None, trusted: ci_public.iter().chain(&next).cloned().collect() };
    let (cache, warnings) = remote(&server, both);
    let (report, _) = Client::new().build(Some(&cache.read_only(true)));
    assert_eq!((report.run, report.remote_hits), (0, 6), "{report:#?}");
    assert!(warnings.lock().unwrap().is_empty());

    // After the old key is dropped, its entries are not trusted any more.
    let (cache, warnings) = remote(&server, CacheKeys { signer: None, trusted: next });
    let (report, _) = Client::new().build(Some(&cache.read_only(true)));
    assert_eq!((report.run, report.remote_hits), (6, 0), "{report:#?}");
    let warnings = warnings.lock().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("key id `ci`"), "{warnings:?}");
}

fn ci_blake3(client: &Client, output: &str) -> String {
    blake3::hash(&fs::read(client.output(output)).unwrap()).to_hex().to_string()
}

#[test]
fn a_client_trusting_no_key_neither_reads_nor_writes() {
    let Some((server, _ci)) = filled() else { return };
    let ac = server.files("ac");
    let cas = server.files("cas");
    let requests = server.requests().len();

    let (cache, warnings) = remote(&server, CacheKeys::none());
    let outsider = Client::new();
    let (report, seen) = outsider.build(Some(&cache));
    assert_eq!(seen.ran.len(), 6, "nothing is trusted without a trusted key");
    assert_eq!((report.remote_hits, report.remote_uploads), (0, 0));
    assert_eq!(*warnings.lock().unwrap(), vec![NO_TRUSTED_KEYS_WARNING.to_string()]);
    assert_eq!(server.files("ac"), ac);
    assert_eq!(server.files("cas"), cas);
    assert_eq!(server.requests().len(), requests, "not a single request: {:#?}", server.requests());
    assert_eq!(outsider.run_app(), APP_OUTPUT);
}

#[test]
fn a_reader_without_the_signing_key_does_not_upload_and_says_so_once() {
    let Some(server) = Nginx::start() else { return };
    let (cache, warnings) = remote(&server, reader_keys());
    assert!(!cache.can_sign() && cache.can_verify());
    let laptop = Client::new();
    let (report, _) = laptop.build(Some(&cache));
    assert_eq!((report.run, report.remote_uploads), (6, 0));
    assert_eq!(server.puts(), 0, "{:#?}", server.requests());
    assert_eq!(*warnings.lock().unwrap(), vec![NO_SIGNING_KEY_WARNING.to_string()]);
}

#[test]
fn a_read_only_client_reads_and_never_writes() {
    let Some(server) = Nginx::start() else { return };
    // Empty server: builds everything, uploads nothing. It holds the signing
    // key, and KRAFT_REMOTE_CACHE_READONLY still wins.
    let (cache, warnings) = remote(&server, ci_keys());
    let cache = cache.read_only(true);
    let laptop = Client::new();
    let (report, _) = laptop.build(Some(&cache));
    assert_eq!((report.run, report.remote_uploads), (6, 0));
    assert_eq!(server.puts(), 0, "{:#?}", server.requests());
    assert!(server.files("ac").is_empty() && server.files("cas").is_empty());
    assert!(warnings.lock().unwrap().is_empty());

    // Filled by CI: reads everything.
    let (writer, _) = remote(&server, ci_keys());
    Client::new().build(Some(&writer));
    let puts = server.puts();
    let other = Client::new();
    let (report, _) = other.build(Some(&cache));
    assert_eq!((report.run, report.remote_hits), (0, 6));
    assert_eq!(server.puts(), puts);
    // The objects came down into the store, where they stay until a
    // command needs them (`exec::in_store`); the app is written.
    let state = kraft::exec::state::BuildState::load(&other.state);
    for compile in COMPILES {
        assert!(!other.output(compile).exists(), "{compile} stays in the store");
        assert!(state.in_store.contains(&Utf8PathBuf::from("/kraft/build").join(compile)), "{compile}: {:?}", state.in_store);
        let record = state.actions.values().flat_map(|r| &r.outputs).find(|o| o.path.ends_with(compile)).unwrap();
        assert!(other.store.has_blob(record.hash.to_hex().as_str()));
    }
    assert_eq!(other.run_app(), APP_OUTPUT);
}

// ------------------------------------------------ cache verify / cache gc

fn set_age(path: &Utf8Path, days: u64) {
    let t = std::time::SystemTime::now() - Duration::from_secs(days * 24 * 3600);
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t)).unwrap();
}

/// The local `ac/` entry file of `output`, and its blob's name.
fn local_entry_for(client: &Client, output: &str) -> (Utf8PathBuf, String) {
    let blake3 = ci_blake3(client, output);
    for entry in walkdir::WalkDir::new(client.store.root().join("ac")).min_depth(2) {
        let path = Utf8PathBuf::from_path_buf(entry.unwrap().path().to_owned()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        if text.contains("\"type\":\"entry\"") && text.contains(&blake3) {
            return (path, blake3);
        }
    }
    panic!("no local entry for {output}");
}

#[test]
fn verify_checks_action_cache_entries_and_their_blobs() {
    use kraft::cache::local::ActionCache;
    let client = Client::new();
    client.build(None);
    let ac = ActionCache::new(&client.store);
    let clean = ac.verify(false).unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.entries_checked, clean.manifests_checked), (6, 3));

    let (entry, blob) = local_entry_for(&client, "libab/a.o");
    let blob_path = client.store.blob_path(&blob);
    fs::set_permissions(blob_path.parent().unwrap(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::remove_file(&blob_path).unwrap();
    let garbage = client.store.root().join("ac/zz/not-a-hash");
    fs::create_dir_all(garbage.parent().unwrap()).unwrap();
    fs::write(&garbage, "{").unwrap();
    let report = ac.verify(true).unwrap();
    let bad: Vec<&Utf8PathBuf> = report.problems.iter().map(|(p, _)| p).collect();
    assert_eq!(bad, vec![&entry, &garbage], "{report:?}");
    assert!(!entry.exists() && !garbage.exists());
    assert!(ac.verify(false).unwrap().is_clean());
}

#[test]
fn gc_keeps_locked_sources_and_recent_entries_and_honours_max_size() {
    use kraft::cache::gc::{collect_garbage, GcOptions};
    let client = Client::new();
    client.build(None);
    let store = &client.store;
    // Two source trees; only one is locked.
    let mut trees = Vec::new();
    for text in ["kept", "unlocked"] {
        let staged = store.staging_dir().unwrap();
        let dir = Utf8Path::from_path(staged.path()).unwrap();
        fs::write(dir.join("README"), text).unwrap();
        trees.push(store.insert_tree(dir, None, "test").unwrap());
    }
    let no_grace = GcOptions { grace: Duration::ZERO, ..GcOptions::default() };
    let keep = GcOptions { keep_trees: [trees[0].clone()].into(), ..no_grace.clone() };

    // Dry run: reports, removes nothing.
    let dry = collect_garbage(store, &GcOptions { dry_run: true, ..keep.clone() }).unwrap();
    assert_eq!((dry.removed_trees, dry.removed_entries, dry.removed_blobs), (1, 0, 0));
    assert!(store.has_tree(&trees[1]));

    // An entry unused for 40 days goes, with the blob only it named.
    let (old_entry, old_blob) = local_entry_for(&client, "app/app");
    set_age(&old_entry, 40);
    let r = collect_garbage(store, &keep).unwrap();
    assert_eq!((r.removed_trees, r.removed_entries, r.removed_blobs), (1, 1, 1), "{r:?}");
    assert!(store.has_tree(&trees[0]) && !store.has_tree(&trees[1]));
    assert!(!old_entry.exists() && !store.has_blob(&old_blob));

    // Over --max-size: the least recently used entry goes first.
    let (lru_entry, lru_blob) = local_entry_for(&client, "libab/a.o");
    set_age(&lru_entry, 10);
    let budget = r.kept_bytes - 1;
    let r = collect_garbage(store, &GcOptions { max_size: Some(budget), ..keep.clone() }).unwrap();
    assert_eq!((r.removed_entries, r.removed_blobs), (1, 1), "{r:?}");
    assert!(!lru_entry.exists() && !store.has_blob(&lru_blob));
    assert!(!r.over_budget && r.kept_bytes <= budget);

    // A client sharing the store rebuilds exactly what gc evicted.
    let mut other = Client::new();
    other.store = store.clone();
    let (_, seen) = other.build(None);
    assert_eq!(seen.ran, set(&["libab/a.o", "app/app"]));
    assert_eq!(other.run_app(), APP_OUTPUT);

    // A budget below the locked sources: everything else goes; over budget.
    let r = collect_garbage(store, &GcOptions { max_size: Some(1), ..keep }).unwrap();
    assert!(r.over_budget);
    assert!(store.has_tree(&trees[0]));
    assert!(kraft::cache::local::ActionCache::new(store).verify(false).unwrap().entries_checked == 0);
}

/// A large output travels as the store keeps it, one zstd frame: the CAS
/// entry is named by the frame's SHA-256, the entry says `zstd_size`, and a
/// client with an empty store gets the exact bytes back.
#[test]
fn large_outputs_travel_compressed() {
    use kraft::cache::local::{ActionCache, CachedOutput, Entry};
    let Some(server) = Nginx::start() else { return };
    let (cache, warnings) = remote(&server, ci_keys());
    let big: Vec<u8> = (0..200_000u32).flat_map(|i| format!("DW_AT_name {} ", i % 89).into_bytes()).collect();
    let key = blake3::hash(b"an action key for a large output");

    let ci_dir = tempfile::tempdir().unwrap();
    let ci_store = kraft::store::Store::open(Utf8Path::from_path(ci_dir.path()).unwrap().join("store")).unwrap();
    let blake3_hex = ci_store.insert_blob_bytes(&big).unwrap();
    let tier = Arc::new(cache.start());
    let ci = ActionCache::new(&ci_store).with_remote(Some(tier.clone()));
    let out = CachedOutput { path: "/kraft/build/libbig.ld.o".into(), blake3: blake3_hex.clone(), size: big.len() as u64, mode: 0o644, sha256: None, zstd_size: None };
    ci.put(&key, &Entry { outputs: vec![out], discovered: vec![], stdout: String::new(), stderr: String::new() }).unwrap();
    ci.flush().unwrap();
    let stats = tier.finish();
    assert_eq!(stats.uploads, 1, "{stats:?}");
    assert!(warnings.lock().unwrap().is_empty(), "{:?}", warnings.lock().unwrap());

    let frame = fs::read(ci_store.blob_zstd_path(&blake3_hex)).unwrap();
    assert_eq!(server.files("cas").len(), 1);
    let on_server = &server.files("cas")[0];
    assert_eq!(fs::read(on_server).unwrap(), frame, "the CAS holds the store's frame");
    assert_eq!(on_server.file_name().unwrap(), sha256_hex(&frame));
    assert!(stats.uploaded_bytes < big.len() as u64 / 5, "{} bytes sent for {}", stats.uploaded_bytes, big.len());
    let (_, payload) = ac_doc_for(&server, "/kraft/build/libbig.ld.o");
    assert_eq!(payload["entry"]["outputs"][0]["zstd_size"], frame.len() as u64);

    // An empty client: the entry and the frame come from the server, verified.
    let laptop_dir = tempfile::tempdir().unwrap();
    let laptop_store = kraft::store::Store::open(Utf8Path::from_path(laptop_dir.path()).unwrap().join("store")).unwrap();
    // A reader (it never uploads, so it is read-only and says nothing).
    let (cache, warnings) = remote(&server, reader_keys());
    let cache = cache.read_only(true);
    let laptop = ActionCache::new(&laptop_store).with_remote(Some(Arc::new(cache.start())));
    let entry = laptop.get(&key).expect("a remote hit");
    assert!(warnings.lock().unwrap().is_empty(), "{:?}", warnings.lock().unwrap());
    let target = Utf8Path::from_path(laptop_dir.path()).unwrap().join("build");
    let restored = laptop.restore(&entry, &|p: &Utf8Path| target.join(p.strip_prefix("/kraft/build").unwrap())).unwrap().unwrap();
    assert_eq!(fs::read(&restored[0].host).unwrap(), big);
}
