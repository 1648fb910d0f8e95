//! kraft.lock end to end: real git repositories made from fixtures, served
//! through KRAFT_MIRRORS, locked and fetched by the real binary.

mod support;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::source::lock::Lock;
use support::*;

struct World {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    ws: Utf8PathBuf,
    mirror: Utf8PathBuf,
    core_work: Utf8PathBuf,
    greet_work: Utf8PathBuf,
    store: Utf8PathBuf,
    mirrors_env: String,
}

impl World {
    fn new(kraftfile: &str) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let mirror = root.join("mirror");
        let core_work = make_repo(&mirror.join("unikraft"), "unikraft", &fixtures().join("core"));
        let greet_work = make_repo(&mirror.join("unikraft"), "lib-greet", &fixtures().join("lib-greet"));
        let ws = root.join("ws");
        make_workspace(&ws);
        write_greet_recipe(&ws);
        std::fs::create_dir_all(ws.join("apps/hello")).unwrap();
        std::fs::write(ws.join("apps/hello/Kraftfile"), kraftfile).unwrap();
        let mirrors_env = format!("https://github.com/={mirror}/");
        World { store: root.join("store"), _tmp: tmp, root, ws, mirror, core_work, greet_work, mirrors_env }
    }

    fn env(&self) -> Vec<(&str, String)> {
        vec![("KRAFT_MIRRORS", self.mirrors_env.clone()), ("KRAFT_ARCHIVE_DIR", fixtures().join("archives").to_string())]
    }

    fn run_with(&self, store: &Utf8Path, extra: &[(&str, &str)], args: &[&str]) -> std::process::Output {
        let env = self.env();
        let mut envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        envs.extend_from_slice(extra);
        xtask(&self.ws, store, &envs, args)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_with(&self.store, &[], args)
    }

    fn lock_path(&self) -> Utf8PathBuf {
        self.ws.join("apps/hello/kraft.lock")
    }

    fn lock_text(&self) -> String {
        std::fs::read_to_string(self.lock_path()).unwrap()
    }

    fn lock(&self) -> Lock {
        Lock::parse(&self.lock_path(), &self.lock_text()).unwrap().lock
    }

    fn mirror_rev(&self, repo: &str, rev: &str) -> String {
        git(&self.mirror.join("unikraft").join(format!("{repo}.git")), &["rev-parse", &format!("{rev}^{{commit}}")])
    }
}

const STABLE: &str = "spec: v0.6\nname: hello\nunikraft: stable\nlibraries:\n  greet: stable\ntargets:\n  - qemu/x86_64\n";

/// The `[[component]]` block of one component, as text.
fn block<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text.find(&format!("name = \"{name}\"")).unwrap();
    let end = text[start..].find("[[component]]").map(|e| start + e).unwrap_or(text.len());
    &text[start..end]
}

fn validate_against_schema(text: &str) {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("kraft.lock.schema")).unwrap()).unwrap();
    let instance: serde_json::Value = toml_edit::de::from_str(text).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(&instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "lock does not validate: {errors:#?}\n{text}");
}

fn nix_hash_path(path: &Utf8Path) -> Option<String> {
    let out = std::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "hash", "path", path.as_str()])
        .output();
    match out {
        Ok(out) if out.status.success() => Some(String::from_utf8(out.stdout).unwrap().trim().to_string()),
        Ok(out) => panic!("nix hash path failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(_) if std::env::var("CI").is_ok() => panic!("nix is not installed; CI must install nix-bin"),
        Err(_) => {
            eprintln!("nix not installed: skipping the NAR comparison");
            None
        }
    }
}

#[test]
fn lock_round_trip_matches_git_nix_and_schema() {
    let w = World::new(STABLE);
    let out = w.run(&["lock", "hello"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("Locking unikraft stable"), "{}", stderr(&out));
    let text = w.lock_text();
    validate_against_schema(&text);

    let lock = w.lock();
    let core = lock.get("unikraft").unwrap();
    let greet = lock.get("greet").unwrap();
    assert_eq!(core.commit.as_deref(), Some(w.mirror_rev("unikraft", "stable").as_str()));
    assert_eq!(greet.commit.as_deref(), Some(w.mirror_rev("lib-greet", "stable").as_str()));
    assert_eq!(core.source, "git+https://github.com/unikraft/unikraft.git");
    assert_eq!(core.git_ref.as_deref(), Some("refs/heads/stable"));
    assert_eq!(core.commit_time, Some(1704067200));
    assert_eq!(greet.archives.len(), 1);
    assert_eq!(greet.archives[0].sha256, sha256_hex(&fixtures().join("archives/greet-1.0.tar.gz")));

    // The NAR hash is what Nix computes for the exported tree.
    for component in [core, greet] {
        let tree = w.store.join("trees").join(component.tree_blake3.as_ref().unwrap());
        assert!(tree.is_dir(), "{tree} missing");
        if let Some(nix) = nix_hash_path(&tree) {
            assert_eq!(component.nar_hash.as_deref(), Some(nix.as_str()), "{}", component.name);
        }
    }

    // A second run leaves the file byte-identical; parse + render is the identity.
    assert_ok(&w.run(&["lock", "hello"]));
    assert_eq!(w.lock_text(), text);
    let parsed = Lock::parse(&w.lock_path(), &text).unwrap();
    assert_eq!(parsed.lock.render(Some(&parsed.document)), text);

    // Comments a user adds survive a re-lock that changes an entry.
    let commented = text.replace("[[component]]\nname = \"greet\"", "[[component]]\n# our fork of greet\nname = \"greet\"");
    std::fs::write(w.lock_path(), &commented).unwrap();
    commit_and_push(&w.greet_work, &w.mirror.join("unikraft/lib-greet.git"), "NEWS", "moved\n");
    assert_ok(&w.run(&["update", "hello", "greet"]));
    assert!(w.lock_text().contains("# our fork of greet\nname = \"greet\""), "{}", w.lock_text());
    validate_against_schema(&w.lock_text());
}

#[test]
fn update_moves_only_the_named_component() {
    let w = World::new(STABLE);
    assert_ok(&w.run(&["lock", "hello"]));
    let before = w.lock_text();
    let new_core = commit_and_push(&w.core_work, &w.mirror.join("unikraft/unikraft.git"), "NEWS", "core moved\n");
    let new_greet = commit_and_push(&w.greet_work, &w.mirror.join("unikraft/lib-greet.git"), "NEWS", "greet moved\n");

    // A plain lock keeps both pins although upstream moved.
    assert_ok(&w.run(&["lock", "hello"]));
    assert_eq!(w.lock_text(), before);

    let out = w.run(&["update", "hello", "greet"]);
    assert_ok(&out);
    assert!(stderr(&out).contains("Updating greet"), "{}", stderr(&out));
    let after = w.lock_text();
    assert_eq!(block(&after, "unikraft"), block(&before, "unikraft"), "unikraft must stay byte-identical");
    assert_eq!(w.lock().get("greet").unwrap().commit.as_deref(), Some(new_greet.as_str()));

    assert_ok(&w.run(&["update", "hello"]));
    assert_eq!(w.lock().get("unikraft").unwrap().commit.as_deref(), Some(new_core.as_str()));

    let out = w.run(&["update", "hello", "nosuch"]);
    assert_fails_with(&out, "no component `nosuch`");
    assert!(stderr(&out).contains("components: unikraft, greet"), "{}", stderr(&out));
}

#[test]
fn versions_resolve_like_kraftkit() {
    let w = World::new(STABLE);
    let tag_commit = w.mirror_rev("lib-greet", "RELEASE-0.1.0");
    let staging = w.mirror_rev("unikraft", "staging");
    let short = &staging[..10];
    let kraftfile = format!(
        "spec: v0.6\nname: hello\nunikraft: {short}\nlibraries:\n  greet: 0.1.0\ntargets:\n  - qemu/x86_64\n"
    );
    std::fs::write(w.ws.join("apps/hello/Kraftfile"), kraftfile).unwrap();
    assert_ok(&w.run(&["lock", "hello"]));
    let lock = w.lock();
    assert_eq!(lock.get("greet").unwrap().git_ref.as_deref(), Some("refs/tags/RELEASE-0.1.0"));
    assert_eq!(lock.get("greet").unwrap().commit.as_deref(), Some(tag_commit.as_str()));
    assert_eq!(lock.get("greet").unwrap().requested, "0.1.0");
    assert_eq!(lock.get("unikraft").unwrap().commit.as_deref(), Some(staging.as_str()));

    std::fs::write(w.ws.join("apps/hello/Kraftfile"), STABLE.replace("greet: stable", "greet: nosuchbranch")).unwrap();
    let out = w.run(&["lock", "hello"]);
    assert_fails_with(&out, "version `nosuchbranch` names no branch, tag or commit");
    assert!(stderr(&out).contains("Kraftfile:5:"), "located error expected: {}", stderr(&out));
    assert!(stderr(&out).contains("help: use one of:"), "{}", stderr(&out));
}

#[test]
fn locked_refuses_to_change_the_lock() {
    let w = World::new(STABLE);
    let out = w.run(&["--locked", "lock", "hello"]);
    assert_fails_with(&out, "kraft.lock is missing and --locked was given");

    assert_ok(&w.run(&["lock", "hello"]));
    assert_ok(&w.run(&["--locked", "lock", "hello"]));
    let before = w.lock_text();

    std::fs::write(w.ws.join("apps/hello/Kraftfile"), STABLE.replace("greet: stable", "greet: staging")).unwrap();
    let out = w.run(&["--locked", "lock", "hello"]);
    assert_fails_with(&out, "needs to be updated but --locked was given");
    assert!(stderr(&out).contains("`greet`: the Kraftfile asks for a different source or version"), "{}", stderr(&out));
    assert!(stderr(&out).contains("help: run `cargo xtask lock hello`"), "{}", stderr(&out));
    assert_eq!(w.lock_text(), before, "a refused lock leaves the file alone");

    // CI=true means --locked.
    let out = w.run_with(&w.store, &[("CI", "true")], &["lock", "hello"]);
    assert_fails_with(&out, "CI=true implies --locked");
    let out = w.run(&["--frozen", "update", "hello"]);
    assert_fails_with(&out, "cannot update kraft.lock");
}

#[test]
fn tampered_hashes_are_refused() {
    let w = World::new(STABLE);
    assert_ok(&w.run(&["lock", "hello"]));
    let text = w.lock_text();
    let real = w.lock().get("unikraft").unwrap().tree_blake3.clone().unwrap();
    let forged = "0".repeat(64);
    std::fs::write(w.lock_path(), text.replace(&real, &forged)).unwrap();

    let fresh_store = w.root.join("fresh-store");
    let out = w.run_with(&fresh_store, &[], &["fetch", "hello"]);
    assert_fails_with(&out, "does not match kraft.lock");
    assert!(stderr(&out).contains(&forged) && stderr(&out).contains(&real), "both hashes named: {}", stderr(&out));
    assert!(stderr(&out).contains("https://github.com/unikraft/unikraft.git"), "source named: {}", stderr(&out));
    assert!(!fresh_store.join("trees").join(&forged).exists());
    assert!(!fresh_store.join("trees").join(&real).exists(), "nothing unverified enters the store");

    // A forged NAR hash is caught too, even when the tree is already stored.
    let real_nar = w.lock().get("unikraft").unwrap().nar_hash.clone();
    std::fs::write(w.lock_path(), &text).unwrap();
    let nar = w.lock().get("unikraft").unwrap().nar_hash.clone().unwrap();
    let forged_nar = format!("sha256-{}=", "A".repeat(43));
    std::fs::write(w.lock_path(), text.replace(&nar, &forged_nar)).unwrap();
    let out = w.run(&["fetch", "hello"]);
    assert_fails_with(&out, "NAR hash mismatch");
    assert!(real_nar.is_some());

    // An origin archive that does not match its sha256 is refused.
    std::fs::write(w.lock_path(), &text).unwrap();
    let bad_dir = w.root.join("bad-archives");
    std::fs::create_dir_all(&bad_dir).unwrap();
    std::fs::write(bad_dir.join("greet-1.0.tar.gz"), b"not the archive").unwrap();
    let out = w.run_with(&w.root.join("store3"), &[("KRAFT_ARCHIVE_DIR", bad_dir.as_str())], &["fetch", "hello"]);
    assert_fails_with(&out, "greet-1.0.tar.gz");
    assert!(stderr(&out).to_lowercase().contains("sha256"), "{}", stderr(&out));
}

#[test]
fn offline_with_an_empty_store_fails_clearly() {
    let w = World::new(STABLE);
    // No mirror: the upstream needs the network.
    let out = xtask(&w.ws, &w.store, &[], &["--offline", "lock", "hello"]);
    assert_fails_with(&out, "--offline was given");
    assert!(stderr(&out).contains("https://github.com/unikraft/unikraft.git"), "{}", stderr(&out));
    assert!(stderr(&out).contains("help:"), "{}", stderr(&out));

    // With a lock, --frozen and an empty store: the same, for the pinned commit.
    assert_ok(&w.run(&["lock", "hello"]));
    let empty = w.root.join("empty-store");
    let out = xtask(&w.ws, &empty, &[], &["--frozen", "fetch", "hello"]);
    assert_fails_with(&out, "--offline was given");

    // Once fetched, the store alone is enough: no mirror, no network.
    assert_ok(&w.run(&["fetch", "hello"]));
    let out = xtask(&w.ws, &w.store, &[], &["--frozen", "fetch", "hello"]);
    assert_ok(&out);
}

#[test]
fn two_processes_lock_and_fetch_at_once() {
    let w = World::new(STABLE);
    // Two apps with the same components, fetched into one empty store at once.
    copy_dir(&w.ws.join("apps/hello"), &w.ws.join("apps/hello2"));
    let env = w.env();
    let spawn = |app: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(["fetch", app]).current_dir(&w.ws).env("KRAFT_STORE", w.store.as_str()).env_remove("CI");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        cmd.stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let children: Vec<_> = (0..4).map(|i| spawn(if i % 2 == 0 { "hello" } else { "hello2" })).collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let a = std::fs::read_to_string(w.ws.join("apps/hello/kraft.lock")).unwrap();
    let b = std::fs::read_to_string(w.ws.join("apps/hello2/kraft.lock")).unwrap();
    assert_eq!(a, b);
    let out = w.run(&["cache", "verify"]);
    assert_ok(&out);
    let trees: Vec<_> = std::fs::read_dir(w.store.join("trees")).unwrap().collect();
    assert_eq!(trees.len(), 2, "one tree per component, no leftovers");
}
