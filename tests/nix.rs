//! Nix integration: `nix/from-kraft-lock.nix` reads a kraft.lock made the real
//! way (fixture git repositories served through KRAFT_MIRRORS, `xtask lock`),
//! Nix fetches the very trees the tool locked, and a mirror built by
//! `nix/mirror.nix` seeds a store that `xtask --frozen fetch` accepts without
//! git or network.
//!
//! Runs offline with a plain `nix` (Debian's nix-bin is enough): no nixpkgs,
//! no daemon, a throwaway store under a temp dir (NIX_STORE_DIR & co.), so
//! nothing outside the test's directory is touched. Full evaluation of
//! `flake.nix` needs nixpkgs and is not done here: the flake is parsed, and
//! its `lib.kraftLockSpecs` is evaluated with nixpkgs left out.
//!
//! Without nix the tests are skipped, except under CI=true, where a missing
//! nix is a failure.

mod support;

use std::process::Command;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::source::lock::{Lock, LockedComponent};
use serde_json::{json, Value};
use support::*;

// ------------------------------------------------------------------- world

struct World {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    ws: Utf8PathBuf,
    mirror: Utf8PathBuf,
    store: Utf8PathBuf,
}

const STABLE: &str = "spec: v0.6\nname: hello\nunikraft: stable\nlibraries:\n  greet: stable\ntargets:\n  - qemu/x86_64\n";

impl World {
    /// The fixture repositories in a mirror, a workspace with app `hello`,
    /// and its kraft.lock written by the real binary.
    fn locked() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let mirror = root.join("mirror");
        make_repo(&mirror.join("unikraft"), "unikraft", &fixtures().join("core"));
        make_repo(&mirror.join("unikraft"), "lib-greet", &fixtures().join("lib-greet"));
        let ws = root.join("ws");
        make_workspace(&ws);
        write_greet_recipe(&ws);
        std::fs::create_dir_all(ws.join("apps/hello")).unwrap();
        std::fs::write(ws.join("apps/hello/Kraftfile"), STABLE).unwrap();
        let w = World { store: root.join("store"), _tmp: tmp, root, ws, mirror };
        assert_ok(&w.run(&w.store, &w.mirror_env(), &["lock", "hello"]));
        w
    }

    fn mirror_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KRAFT_MIRRORS", format!("https://github.com/={}/", self.mirror)),
            ("KRAFT_ARCHIVE_DIR", fixtures().join("archives").to_string()),
        ]
    }

    fn run(&self, store: &Utf8Path, env: &[(&'static str, String)], args: &[&str]) -> std::process::Output {
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xtask(&self.ws, store, &envs, args)
    }

    fn lock_path(&self) -> Utf8PathBuf {
        self.ws.join("apps/hello/kraft.lock")
    }

    fn lock(&self) -> Lock {
        Lock::parse(&self.lock_path(), &std::fs::read_to_string(self.lock_path()).unwrap()).unwrap().lock
    }
}

// --------------------------------------------------------------------- nix

/// A nix with a private store, state, cache and config under `dir`.
struct Nix {
    dir: Utf8PathBuf,
}

impl Nix {
    /// `None` (and a message) when nix is not installed; a panic under CI=true.
    fn new(dir: &Utf8Path) -> Option<Nix> {
        let found = Command::new("nix-instantiate").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        if !found {
            let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
            assert!(!ci, "nix-instantiate is not installed; CI must install nix (Debian: apt-get install nix-bin)");
            eprintln!("nix is not installed: skipping the Nix integration test");
            return None;
        }
        for sub in ["store", "var", "log", "etc", "home", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("etc/nix.conf"), "sandbox = false\nsubstituters =\nbuild-users-group =\n").unwrap();
        Some(Nix { dir: dir.to_owned() })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for var in ["NIX_REMOTE", "NIX_PATH", "NIX_USER_CONF_FILES", "NIX_CONFIG"] {
            cmd.env_remove(var);
        }
        cmd.env("NIX_STORE_DIR", self.dir.join("store"))
            .env("NIX_STATE_DIR", self.dir.join("var"))
            .env("NIX_LOG_DIR", self.dir.join("log"))
            .env("NIX_CONF_DIR", self.dir.join("etc"))
            .env("HOME", self.dir.join("home"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("XDG_CONFIG_HOME", self.dir.join("home/.config"))
            // git (for builtins.fetchGit) must not read the user's settings.
            .env("GIT_CONFIG_NOSYSTEM", "1");
        cmd.args(["--option", "sandbox", "false", "--option", "substituters", ""]);
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `nix-instantiate --eval --strict --json --expr <expr>`, parsed.
    fn eval_json(&self, expr: &str) -> Value {
        let out = self.run("nix-instantiate", &["--eval", "--strict", "--json", "--expr", expr]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("nix printed no JSON ({e}): {out}"))
    }

    fn eval_fails(&self, expr: &str) -> String {
        let out = self.command("nix-instantiate").args(["--eval", "--strict", "--json", "--expr", expr]).output().unwrap();
        assert!(!out.status.success(), "expected failure of {expr}, got {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A Nix string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace("${", "\\${")
}

fn nix_dir() -> Utf8PathBuf {
    repo_root().join("nix")
}

/// What from-kraft-lock.nix must return for `lock`: every field taken from
/// the lock as the tool wrote it.
fn expected_specs(lock: &Lock) -> Value {
    let component = |c: &LockedComponent| {
        json!({
            "name": c.name,
            "kind": c.kind,
            "url": c.git_url().unwrap(),
            "rev": c.commit.as_deref().unwrap(),
            "ref": c.git_ref,
            "narHash": c.nar_hash.as_deref().unwrap(),
            "treeBlake3": c.tree_blake3.as_deref().unwrap(),
            "commitTime": c.commit_time,
        })
    };
    let mut archives: Vec<(String, Value)> = lock
        .components
        .iter()
        .flat_map(|c| c.archives.iter())
        .map(|a| (format!("{}/{}", a.sha256, a.name), json!({ "name": a.name, "url": a.url, "sha256": a.sha256 })))
        .collect();
    archives.sort_by(|a, b| a.0.cmp(&b.0));
    archives.dedup_by(|a, b| a.0 == b.0);
    json!({
        "version": 1,
        "components": lock.components.iter().filter(|c| c.git_url().is_some()).map(component).collect::<Vec<_>>(),
        "local": [],
        "archives": archives.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "sourceDateEpoch": lock.source_date_epoch(),
    })
}

// ------------------------------------------------------------------- tests

#[test]
fn nix_files_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(nix) = Nix::new(&utf8(tmp.path())) else { return };
    for file in ["flake.nix", "nix/from-kraft-lock.nix", "nix/mirror.nix", "nix/build-app.nix"] {
        nix.run("nix-instantiate", &["--parse", repo_root().join(file).as_str()]);
    }
}

#[test]
fn specs_carry_exactly_what_the_lock_pins() {
    let w = World::locked();
    let Some(nix) = Nix::new(&w.root.join("nix")) else { return };
    let lock = w.lock();
    assert_eq!(lock.components.len(), 2);
    assert!(lock.components.iter().any(|c| !c.archives.is_empty()), "the fixture has an origin archive");
    let expected = expected_specs(&lock);

    // As CI would call it: the file with the lock's path, nothing else.
    let out = nix.run(
        "nix-instantiate",
        &["--eval", "--strict", "--json", nix_dir().join("from-kraft-lock.nix").as_str(), "--arg", "lock", w.lock_path().as_str()],
    );
    let specs: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(specs, expected);

    // Through the flake's lib, which needs no nixpkgs for this.
    let flake = format!(
        "let flake = import ({}); outputs = flake.outputs {{ self = outputs; nixpkgs = throw \"no nixpkgs\"; }}; in outputs.lib.kraftLockSpecs {}",
        lit(repo_root().join("flake.nix").as_str()),
        lit(w.lock_path().as_str())
    );
    assert_eq!(nix.eval_json(&flake), expected);

    // The lock as TOML text reads the same.
    let text = std::fs::read_to_string(w.lock_path()).unwrap();
    let from_text = format!("import {} {{ lock = {}; }}", nix_dir().join("from-kraft-lock.nix"), lit(&text));
    assert_eq!(nix.eval_json(&from_text), expected);

    // A lock Nix cannot trust is refused, located, with the way out.
    let bad = w.root.join("bad.lock");
    let core = lock.get("unikraft").unwrap();
    std::fs::write(&bad, text.replace(core.commit.as_deref().unwrap(), "not-a-commit")).unwrap();
    let err = nix.eval_fails(&format!("import {} {{ lock = {}; }}", nix_dir().join("from-kraft-lock.nix"), lit(bad.as_str())));
    assert!(err.contains("component `unikraft`: malformed `commit`") && err.contains("cargo xtask lock"), "{err}");
    std::fs::write(&bad, text.replace("version = 1", "version = 2")).unwrap();
    let err = nix.eval_fails(&format!("import {} {{ lock = {}; }}", nix_dir().join("from-kraft-lock.nix"), lit(bad.as_str())));
    assert!(err.contains("format version 2"), "{err}");
}

#[test]
fn nix_fetches_the_trees_and_archives_the_tool_locked() {
    let w = World::locked();
    let Some(nix) = Nix::new(&w.root.join("nix")) else { return };
    let lock = w.lock();

    // Plain builtins.fetchGit on the bare mirror, by commit: Nix's NAR hash of
    // what it fetched is the lock's nar-hash.
    for (component, repo) in [("unikraft", "unikraft"), ("greet", "lib-greet")] {
        let c = lock.get(component).unwrap();
        let url = w.mirror.join(format!("unikraft/{repo}.git"));
        let expr = format!(
            "(builtins.fetchGit {{ url = {}; rev = {}; ref = {}; }}).narHash",
            lit(url.as_str()),
            lit(c.commit.as_deref().unwrap()),
            lit(c.git_ref.as_deref().unwrap())
        );
        assert_eq!(nix.eval_json(&expr), json!(c.nar_hash.as_deref().unwrap()), "{component}");
    }

    // from-kraft-lock.nix's own fetchers, with the mirror and archive dir
    // (as KRAFT_MIRRORS and KRAFT_ARCHIVE_DIR): fetchGit checks the nar-hash
    // itself, fetchurl the sha256; the fetched trees also have the lock's
    // blake3 tree hash, so they are the trees the tool stores.
    let expr = format!(
        "let r = import {} {{ lock = {}; fetch = true; mirrors = {{ \"https://github.com/\" = {}; }}; archiveDir = {}; }}; in \
         {{ trees = map (c: {{ inherit (c) name; src = toString c.src; }}) r.components; \
            archives = map (a: {{ inherit (a) name sha256; file = toString a.file; }}) r.archives; }}",
        nix_dir().join("from-kraft-lock.nix"),
        lit(w.lock_path().as_str()),
        lit(&format!("{}/", w.mirror)),
        lit(fixtures().join("archives").as_str()),
    );
    let fetched = nix.eval_json(&expr);
    for tree in fetched["trees"].as_array().unwrap() {
        let c = lock.get(tree["name"].as_str().unwrap()).unwrap();
        let src = Utf8PathBuf::from(tree["src"].as_str().unwrap());
        assert!(src.starts_with(nix.dir.join("store")), "{src} is in the test's Nix store");
        assert_eq!(
            kraft::store::tree_hash(&src).unwrap(),
            *c.tree_blake3.as_ref().unwrap(),
            "blake3 of the tree Nix fetched for {}",
            c.name
        );
    }
    let archives = fetched["archives"].as_array().unwrap();
    assert_eq!(archives.len(), 1);
    let file = Utf8PathBuf::from(archives[0]["file"].as_str().unwrap());
    assert_eq!(sha256_hex(&file), archives[0]["sha256"].as_str().unwrap());

    // A forged nar-hash makes Nix itself refuse the fetch.
    let text = std::fs::read_to_string(w.lock_path()).unwrap();
    let nar = lock.get("greet").unwrap().nar_hash.clone().unwrap();
    let forged = w.root.join("forged.lock");
    std::fs::write(&forged, text.replace(&nar, &format!("sha256-{}=", "A".repeat(43)))).unwrap();
    let err = nix.eval_fails(&expr.replace(w.lock_path().as_str(), forged.as_str()));
    assert!(err.to_lowercase().contains("hash mismatch"), "{err}");
}

/// nixpkgs' runCommandLocal, as far as nix/mirror.nix uses it, with the
/// host's /bin/sh and coreutils (the test's builds run unsandboxed).
const STUB_PKGS: &str = r#"{
  runtimeShell = "/bin/sh";
  runCommandLocal = name: env: script:
    derivation ({
      inherit name;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" script ];
      PATH = "/usr/local/bin:/usr/bin:/bin";
    } // builtins.removeAttrs env [ "passthru" ]) // (env.passthru or { });
  fetchgit = throw "fetchgit: not offline";
  fetchurl = throw "fetchurl: not offline";
}
"#;

#[test]
fn mirror_seeds_a_store_that_frozen_fetch_uses_offline() {
    let w = World::locked();
    let Some(nix) = Nix::new(&w.root.join("nix")) else { return };
    let lock = w.lock();
    let stub = w.root.join("stub-pkgs.nix");
    std::fs::write(&stub, STUB_PKGS).unwrap();
    let expr = format!(
        "import {} (import {}) {{ lock = {}; fixedOutput = false; mirrors = {{ \"https://github.com/\" = {}; }}; archiveDir = {}; }}",
        nix_dir().join("mirror.nix"),
        lit(stub.as_str()),
        lit(w.lock_path().as_str()),
        lit(&format!("{}/", w.mirror)),
        lit(fixtures().join("archives").as_str()),
    );
    let out = nix.run("nix-build", &["--no-out-link", "--expr", &expr]);
    let mirror = Utf8PathBuf::from(out.trim());
    assert!(mirror.starts_with(nix.dir.join("store")), "{mirror}");

    // The layout the tool reads.
    for c in &lock.components {
        let b3 = c.tree_blake3.as_deref().unwrap();
        assert!(mirror.join("store/trees").join(b3).is_dir(), "trees/{b3}");
        assert_eq!(std::fs::read_to_string(mirror.join("store/nar").join(b3)).unwrap(), c.nar_hash.clone().unwrap());
        for a in &c.archives {
            assert!(mirror.join("store/archives").join(&a.sha256).join(&a.name).is_file());
            assert_eq!(sha256_hex(&mirror.join("archives").join(&a.name)), a.sha256);
        }
    }

    // Seeded (copies or links), a fresh store is all `--frozen fetch` needs:
    // no KRAFT_MIRRORS, no archive directory, no git repositories.
    for (how, args) in [("copy", vec![]), ("link", vec!["--link"])] {
        let store = w.root.join(format!("seeded-{how}"));
        let seed = mirror.join("bin/kraft-seed-store");
        let mut cmd = Command::new(seed.as_str());
        let out = cmd.args(&args).arg(store.as_str()).output().unwrap();
        assert!(out.status.success(), "kraft-seed-store {how}: {}", String::from_utf8_lossy(&out.stderr));

        let out = w.run(&store, &[], &["--frozen", "fetch", "hello"]);
        assert_ok(&out);
        assert!(!store.join("git").exists() || std::fs::read_dir(store.join("git")).unwrap().next().is_none(), "no git was needed ({how})");
        if how == "copy" {
            // Copies are genuine store entries: read-only, hashes verified.
            assert_ok(&w.run(&store, &[], &["cache", "verify"]));
        }
        // Idempotent: seeding again changes nothing and still works.
        let out = Command::new(seed.as_str()).args(&args).arg(store.as_str()).output().unwrap();
        assert!(out.status.success(), "re-seeding {how}: {}", String::from_utf8_lossy(&out.stderr));
        assert_ok(&w.run(&store, &[], &["--frozen", "fetch", "hello"]));
    }

    // An empty store, by contrast, fails offline (the seeding is what helped).
    let out = w.run(&w.root.join("empty-store"), &[], &["--frozen", "fetch", "hello"]);
    assert_fails_with(&out, "--offline was given");
}
