//! Tests of the content-addressed store, NAR hashing and safe unpacking.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use kraft::store::archive::{unpack_tar, unpack_tar_gz, unpack_tar_named};
use kraft::store::nar::{nar_hash, write_nar};
use kraft::store::{tree_hash, EntryKind, Store};
use kraft::util::hash::sha256_file;

fn blake3_file(path: &Utf8Path) -> anyhow::Result<String> {
    Ok(kraft::util::hash::blake3_file(path)?.0.to_hex().to_string())
}
use sha2::Digest;

fn utf8(p: &Path) -> Utf8PathBuf {
    Utf8PathBuf::from_path_buf(p.to_path_buf()).unwrap()
}

fn tempdir() -> (tempfile::TempDir, Utf8PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let p = utf8(t.path());
    (t, p)
}

fn write(path: impl AsRef<Path>, contents: &[u8], mode: u32) {
    let path = path.as_ref();
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree exercising every NAR/tree-hash feature.
fn make_sample_tree(root: &Utf8Path) {
    fs::create_dir_all(root).unwrap();
    write(root.join("README"), b"hello\n", 0o644);
    write(root.join("empty"), b"", 0o644);
    write(root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
    write(root.join("group-exec-only"), b"g\n", 0o614);
    write(root.join("src/lib/deep/nested.c"), b"int x;\n", 0o644);
    write(root.join("src/a-b"), b"1", 0o644);
    write(root.join("src/a.b"), b"2", 0o644);
    write(root.join("src/a/x"), b"3", 0o644);
    write(root.join("src/B"), b"upper", 0o644);
    // Exactly 8 bytes (no padding) and a large file (several buffers).
    write(root.join("eight"), b"01234567", 0o644);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(root.join("big.bin"), &big, 0o644);
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("dir with spaces/ünïcødé")).unwrap();
    write(root.join("dir with spaces/new\nline"), b"nl", 0o644);
    write(root.join("dir with spaces/tab\tand 'quote\""), b"q", 0o755);
    let odd = root.as_std_path().join(OsStr::from_bytes(b"non-utf8-\xff\xfe"));
    write(&odd, b"odd", 0o644);
    symlink("../README", root.join("src/link-to-readme")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("lib", root.join("src/lib-link")).unwrap();
}

fn nix_available() -> bool {
    Command::new("nix").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn nix_hash_path(path: &Utf8Path) -> String {
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "hash", "path"])
        .arg(path.as_str())
        .output()
        .expect("running nix");
    assert!(out.status.success(), "nix hash path {path} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ------------------------------------------------------------------- NAR

#[test]
fn nar_hash_known_answers() {
    // Values computed with `nix hash path` (Nix 2.8).
    let (_t, dir) = tempdir();
    let root = dir.join("d");
    write(root.join("f"), b"a\n", 0o600);
    assert_eq!(nar_hash(&root).unwrap(), "sha256-Pjg8ZIVnla4dTiCCG4/zJ/Pi35EWVkErypwbLNrkolM=");
    // Group exec bit alone does not make a file executable for Nix.
    fs::set_permissions(root.join("f"), fs::Permissions::from_mode(0o610)).unwrap();
    assert_eq!(nar_hash(&root).unwrap(), "sha256-Pjg8ZIVnla4dTiCCG4/zJ/Pi35EWVkErypwbLNrkolM=");
    fs::set_permissions(root.join("f"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(nar_hash(&root).unwrap(), "sha256-yNoYQjY/uQ8VwddZQFumcT9Sx+A59chcEHUPreo8MEE=");
}

#[test]
fn nar_streaming_hash_equals_serialization() {
    let (_t, dir) = tempdir();
    let root = dir.join("tree");
    make_sample_tree(&root);
    let mut bytes = Vec::new();
    write_nar(&root, &mut bytes).unwrap();
    assert_eq!(bytes.len() % 8, 0);
    assert_eq!(&bytes[..8], &13u64.to_le_bytes());
    assert_eq!(&bytes[8..21], b"nix-archive-1");
    let digest = sha2::Sha256::digest(&bytes);
    use base64::Engine as _;
    let sri = format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest));
    assert_eq!(nar_hash(&root).unwrap(), sri);
}

#[test]
fn nar_hash_matches_nix() {
    if !nix_available() {
        println!("SKIPPED nar_hash_matches_nix: `nix` is not installed (apt-get install nix-bin)");
        return;
    }
    let (_t, dir) = tempdir();
    let root = dir.join("tree");
    make_sample_tree(&root);
    let mut paths = vec![
        root.clone(),
        root.join("src"),
        root.join("run.sh"),
        root.join("empty"),
        root.join("empty-dir"),
        root.join("big.bin"),
        root.join("src/link-to-readme"),
        root.join("dangling"),
        root.join("group-exec-only"),
    ];
    paths.push(root.join("dir with spaces"));
    for path in paths {
        assert_eq!(nar_hash(&path).unwrap(), nix_hash_path(&path), "NAR hash of {path}");
    }
}

// ------------------------------------------------------------- tree hash

#[test]
fn tree_hash_encoding_is_as_documented() {
    let (_t, dir) = tempdir();
    write(dir.join("a"), b"x", 0o644);
    write(dir.join("d/run"), b"yz", 0o755);
    symlink("../a", dir.join("d/l")).unwrap();

    let mut h = blake3::Hasher::new();
    h.update(b"kraft-tree-v1\n");
    let s = |h: &mut blake3::Hasher, b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    h.update(b"f");
    s(&mut h, b"a");
    h.update(&1u64.to_le_bytes());
    h.update(blake3::hash(b"x").as_bytes());
    h.update(b"d");
    s(&mut h, b"d");
    h.update(b"l");
    s(&mut h, b"d/l");
    s(&mut h, b"../a");
    h.update(b"x");
    s(&mut h, b"d/run");
    h.update(&2u64.to_le_bytes());
    h.update(blake3::hash(b"yz").as_bytes());
    assert_eq!(tree_hash(&dir).unwrap(), h.finalize().to_hex().as_str());
}

#[test]
fn tree_hash_stability_and_sensitivity() {
    let (_t, dir) = tempdir();
    let a = dir.join("a");
    let b = dir.join("b/c/other-root-name");
    make_sample_tree(&a);
    make_sample_tree(&b);
    let h0 = tree_hash(&a).unwrap();
    assert_eq!(h0.len(), 64);
    assert_eq!(tree_hash(&a).unwrap(), h0, "stable across runs");
    assert_eq!(tree_hash(&b).unwrap(), h0, "independent of location and creation order");

    // Mode bits other than owner-exec, and times, do not count.
    fs::set_permissions(a.join("README"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(a.join("src"), fs::Permissions::from_mode(0o700)).unwrap();
    let f = fs::File::options().write(true).open(a.join("empty")).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(12345)).unwrap();
    drop(f);
    assert_eq!(tree_hash(&a).unwrap(), h0);

    let check = |what: &str, change: &dyn Fn(), undo: &dyn Fn()| {
        change();
        let h = tree_hash(&a).unwrap();
        assert_ne!(h, h0, "{what} must change the tree hash");
        undo();
        assert_eq!(tree_hash(&a).unwrap(), h0, "undoing {what} must restore the hash");
    };
    check("content", &|| fs::write(a.join("src/a/x"), b"4").unwrap(), &|| fs::write(a.join("src/a/x"), b"3").unwrap());
    check(
        "appending a byte to a big file",
        &|| {
            let mut f = fs::OpenOptions::new().append(true).open(a.join("big.bin")).unwrap();
            f.write_all(b"!").unwrap();
        },
        &|| {
            let f = fs::OpenOptions::new().write(true).open(a.join("big.bin")).unwrap();
            f.set_len(300_000).unwrap();
        },
    );
    check(
        "exec bit",
        &|| fs::set_permissions(a.join("README"), fs::Permissions::from_mode(0o700)).unwrap(),
        &|| fs::set_permissions(a.join("README"), fs::Permissions::from_mode(0o644)).unwrap(),
    );
    check(
        "symlink target",
        &|| {
            fs::remove_file(a.join("dangling")).unwrap();
            symlink("does/not/exist2", a.join("dangling")).unwrap();
        },
        &|| {
            fs::remove_file(a.join("dangling")).unwrap();
            symlink("does/not/exist", a.join("dangling")).unwrap();
        },
    );
    check(
        "rename",
        &|| fs::rename(a.join("src/a.b"), a.join("src/a.c")).unwrap(),
        &|| fs::rename(a.join("src/a.c"), a.join("src/a.b")).unwrap(),
    );
    check(
        "moving a file into a subdirectory",
        &|| fs::rename(a.join("eight"), a.join("empty-dir/eight")).unwrap(),
        &|| fs::rename(a.join("empty-dir/eight"), a.join("eight")).unwrap(),
    );
    check(
        "an empty directory",
        &|| fs::create_dir(a.join("src/new-empty")).unwrap(),
        &|| fs::remove_dir(a.join("src/new-empty")).unwrap(),
    );
    check(
        "file replaced by symlink with same text",
        &|| {
            fs::remove_file(a.join("src/a-b")).unwrap();
            symlink("1", a.join("src/a-b")).unwrap();
        },
        &|| {
            fs::remove_file(a.join("src/a-b")).unwrap();
            write(a.join("src/a-b"), b"1", 0o644);
        },
    );
}

// ----------------------------------------------------------------- store

/// A temporary directory holding a store; its read-only trees are made
/// writable again on drop so that non-root runs can delete it.
struct StoreDir(tempfile::TempDir);

impl Drop for StoreDir {
    fn drop(&mut self) {
        fn writable(p: &Path) {
            let Ok(m) = fs::symlink_metadata(p) else { return };
            if m.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
                for e in fs::read_dir(p).into_iter().flatten().flatten() {
                    writable(&e.path());
                }
            }
        }
        writable(self.0.path());
    }
}

fn open_store() -> (StoreDir, Store) {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(utf8(t.path()).join("store")).unwrap();
    (StoreDir(t), store)
}

fn dir_entries(path: &Utf8Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn insert_tree_moves_from_staging_and_is_read_only() {
    let (_t, store) = open_store();
    for d in ["trees", "archives", "blobs", "tmp", "locks"] {
        assert!(store.root().join(d).is_dir(), "{d}/ created");
    }
    let stage = store.staging_dir().unwrap();
    let staged = utf8(stage.path());
    make_sample_tree(&staged);
    let expected = tree_hash(&staged).unwrap();
    let hash = store.insert_tree(&staged, Some(&expected), "test@1").unwrap();
    assert_eq!(hash, expected);
    assert!(store.has_tree(&hash));
    assert!(!staged.exists(), "a staging dir is moved, not copied");
    let tree = store.tree_path(&hash);
    assert_eq!(tree_hash(&tree).unwrap(), hash);
    let mode = |p: &Utf8Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&tree), 0o555);
    assert_eq!(mode(&tree.join("src")), 0o555);
    assert_eq!(mode(&tree.join("README")), 0o444);
    assert_eq!(mode(&tree.join("run.sh")), 0o555);
    assert_eq!(mode(&tree.join("group-exec-only")), 0o444);
    drop(stage);
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new());

    // Idempotent: same content again, from outside the store (copied, and the
    // source is left alone).
    let (_t2, outside) = tempdir();
    make_sample_tree(&outside);
    assert_eq!(store.insert_tree(&outside, None, "again").unwrap(), hash);
    assert!(outside.join("README").is_file(), "a directory outside tmp/ is never moved");
    assert_eq!(dir_entries(&store.root().join("trees")), vec![hash.clone()]);
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn insert_tree_mismatch_names_both_hashes_and_origin() {
    let (_t, store) = open_store();
    let wrong = "0123456789abcdef".repeat(4);
    for inside_store in [true, false] {
        let stage = store.staging_dir().unwrap();
        let (_t2, outside) = tempdir();
        let staged = if inside_store { utf8(stage.path()) } else { outside.clone() };
        make_sample_tree(&staged);
        let actual = tree_hash(&staged).unwrap();
        let origin = "https://example.org/unikraft.git@deadbeef";
        let err = store.insert_tree(&staged, Some(&wrong), origin).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&wrong), "{msg}");
        assert!(msg.contains(&actual), "{msg}");
        assert!(msg.contains(origin), "{msg}");
        assert!(err.downcast_ref::<kraft::Diagnostic>().is_some(), "a user-facing diagnostic");
        assert_eq!(dir_entries(&store.root().join("trees")), Vec::<String>::new(), "nothing inserted");
        assert!(!store.has_tree(&actual) && !store.has_tree(&wrong));
        assert!(staged.join("README").is_file(), "staged tree left for the caller");
        drop(stage);
    }
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new(), "no staging leftovers");
    // A malformed expected hash is an error too.
    let (_t3, d) = tempdir();
    assert!(store.insert_tree(&d, Some("abc"), "x").is_err());
}

#[test]
fn archives_and_blobs() {
    let (_t, store) = open_store();
    let (_t2, dir) = tempdir();
    let file = dir.join("src.tar.gz");
    fs::write(&file, b"pretend archive").unwrap();
    let sha = sha256_file(&file).unwrap();
    assert_eq!(sha, format!("{:x}", sha2::Sha256::digest(b"pretend archive")));

    let wrong = "f".repeat(64);
    let err = store.insert_archive(&file, "src.tar.gz", &wrong, "https://example.org/src.tar.gz").unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&wrong) && msg.contains(&sha) && msg.contains("https://example.org/src.tar.gz"), "{msg}");
    assert_eq!(dir_entries(&store.root().join("archives")), Vec::<String>::new());
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new());

    let path = store.insert_archive(&file, "src.tar.gz", &sha, "origin").unwrap();
    assert_eq!(path, store.archive_path(&sha, "src.tar.gz"));
    assert_eq!(fs::read(&path).unwrap(), b"pretend archive");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o444);
    assert_eq!(store.insert_archive(&file, "src.tar.gz", &sha, "origin").unwrap(), path);
    // Same content under a second name.
    let second = store.insert_archive(&file, "mirror-name.tgz", &sha, "origin").unwrap();
    assert!(second.is_file() && path.is_file());
    assert_eq!(store.find_archive(&sha), Some(second.clone()));
    assert!(store.insert_archive(&file, "../x", &sha, "origin").is_err());

    let h = store.insert_blob_bytes(b"kernel image").unwrap();
    assert_eq!(h, blake3::hash(b"kernel image").to_hex().as_str());
    assert_eq!(store.blob_path(&h), store.root().join("blobs").join(&h[..2]).join(&h));
    assert_eq!(fs::read(store.blob_path(&h)).unwrap(), b"kernel image");
    let f = dir.join("out.bin");
    fs::write(&f, b"kernel image").unwrap();
    assert_eq!(store.insert_blob_file(&f).unwrap(), h);
    assert_eq!(blake3_file(&store.blob_path(&h)).unwrap(), h);
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new());
}

#[test]
fn locks_exclude_across_store_instances() {
    let (_t, store) = open_store();
    let other = Store::open(store.root()).unwrap();
    let guard = store.lock("https://example.org/x.git").unwrap();
    assert!(other.try_lock("https://example.org/x.git").unwrap().is_none());
    assert!(other.try_lock("https://example.org/y.git").unwrap().is_some());
    drop(guard);
    assert!(other.try_lock("https://example.org/x.git").unwrap().is_some());
}

#[test]
fn concurrent_inserts_from_threads() {
    let (_t, store) = open_store();
    let root = store.root().to_owned();
    let (_t2, src) = tempdir();
    make_sample_tree(&src.join("tree"));
    let expected = tree_hash(&src.join("tree")).unwrap();
    fs::write(src.join("a.tar.gz"), vec![7u8; 1 << 20]).unwrap();
    let sha = sha256_file(&src.join("a.tar.gz")).unwrap();

    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (root, src, expected, sha, barrier) = (root.clone(), src.clone(), expected.clone(), sha.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each thread has its own Store value, as separate commands would.
                let store = Store::open(root).unwrap();
                let stage = store.staging_dir().unwrap();
                let staged = utf8(stage.path()).join("t");
                make_sample_tree(&staged);
                barrier.wait();
                let h = if i % 2 == 0 {
                    store.insert_tree(&staged, Some(&expected), "thread").unwrap()
                } else {
                    store.insert_tree(&src.join("tree"), Some(&expected), "thread").unwrap()
                };
                let a = store.insert_archive(&src.join("a.tar.gz"), "a.tar.gz", &sha, "thread").unwrap();
                let b = store.insert_blob_bytes(b"same blob").unwrap();
                (h, a, b)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &results {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(results[0].0, expected);
    assert_eq!(dir_entries(&root.join("trees")), vec![expected.clone()]);
    assert_eq!(tree_hash(&store.tree_path(&expected)).unwrap(), expected);
    assert_eq!(sha256_file(&results[0].1).unwrap(), sha);
    assert_eq!(dir_entries(&root.join("tmp")), Vec::<String>::new());
    assert!(store.verify(false).unwrap().is_clean());
}

const HELPER_ENV: &str = "KRAFT_STORE_TEST_HELPER";

/// Not a test by itself: the body of each child process of
/// `concurrent_inserts_from_processes`.
#[test]
fn helper_process_insert() {
    let Ok(spec) = std::env::var(HELPER_ENV) else { return };
    let mut parts = spec.split('\n');
    let (root, src, go) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let store = Store::open(root).unwrap();
    let src = Utf8Path::new(src);
    let stage = store.staging_dir().unwrap();
    let staged = utf8(stage.path()).join("t");
    make_sample_tree(&staged);
    let sha = sha256_file(&src.join("a.tar.gz")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(go).exists() {
        assert!(Instant::now() < deadline, "parent never said go");
        std::thread::sleep(Duration::from_millis(2));
    }
    let h = store.insert_tree(&staged, None, "process").unwrap();
    let a = store.insert_archive(&src.join("a.tar.gz"), "a.tar.gz", &sha, "process").unwrap();
    let b = store.insert_blob_file(&src.join("a.tar.gz")).unwrap();
    println!("RESULT {h} {a} {b}");
}

#[test]
fn concurrent_inserts_from_processes() {
    let (_t, store) = open_store();
    let (_t2, src) = tempdir();
    fs::write(src.join("a.tar.gz"), vec![9u8; 4 << 20]).unwrap();
    let go = src.join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", "helper_process_insert", "--nocapture", "--test-threads=1"])
                .env(HELPER_ENV, format!("{}\n{}\n{}", store.root(), src, go))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    fs::write(&go, b"").unwrap();
    let mut results = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let line = stdout.lines().find_map(|l| l.split_once("RESULT ").map(|(_, r)| r)).unwrap_or_else(|| panic!("no result in:\n{stdout}"));
        results.push(line.to_string());
    }
    for r in &results {
        assert_eq!(r, &results[0]);
    }
    let trees = dir_entries(&store.root().join("trees"));
    assert_eq!(trees.len(), 1);
    assert_eq!(tree_hash(&store.tree_path(&trees[0])).unwrap(), trees[0]);
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new());
    let report = store.verify(false).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.trees_checked, report.archives_checked, report.blobs_checked), (1, 1, 1));
}

#[test]
fn verify_finds_and_removes_corruption() {
    let (_t, store) = open_store();
    let stage = store.staging_dir().unwrap();
    make_sample_tree(&utf8(stage.path()));
    let tree = store.insert_tree(&utf8(stage.path()), None, "t").unwrap();
    let stage2 = store.staging_dir().unwrap();
    write(stage2.path().join("only"), b"intact", 0o644);
    let good_tree = store.insert_tree(&utf8(stage2.path()), None, "t").unwrap();
    let blob = store.insert_blob_bytes(b"blob contents").unwrap();
    let good_blob = store.insert_blob_bytes(b"another blob").unwrap();
    let (_t2, dir) = tempdir();
    fs::write(dir.join("x.tgz"), b"archive bytes").unwrap();
    let sha = sha256_file(&dir.join("x.tgz")).unwrap();
    let archive = store.insert_archive(&dir.join("x.tgz"), "x.tgz", &sha, "o").unwrap();

    let clean = store.verify(false).unwrap();
    assert!(clean.is_clean(), "{clean:?}");
    assert_eq!((clean.trees_checked, clean.archives_checked, clean.blobs_checked), (2, 1, 2));

    // Corrupt one of each (read-only modes must be overridden first, as a
    // careless user or a disk fault would).
    let blob_path = store.blob_path(&blob);
    fs::set_permissions(&blob_path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&blob_path, b"bit rot").unwrap();
    let tree_path = store.tree_path(&tree);
    fs::set_permissions(tree_path.join("src/a"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(tree_path.join("src/a/x"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(tree_path.join("src/a/x"), b"edited").unwrap();
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&archive, b"truncated").unwrap();

    let report = store.verify(false).unwrap();
    assert_eq!(report.problems.len(), 3, "{report:?}");
    let kinds: Vec<EntryKind> = report.problems.iter().map(|p| p.kind).collect();
    assert!(kinds.contains(&EntryKind::Tree) && kinds.contains(&EntryKind::Blob) && kinds.contains(&EntryKind::Archive));
    let tree_problem = report.problems.iter().find(|p| p.kind == EntryKind::Tree).unwrap();
    assert_eq!(tree_problem.expected, tree);
    assert_eq!(tree_problem.path, tree_path);
    assert!(tree_problem.actual.as_deref().is_some_and(|a| a != tree));
    assert!(report.problems.iter().all(|p| !p.removed));
    assert!(tree_path.exists() && blob_path.exists() && archive.exists(), "verify(false) removes nothing");

    let report = store.verify(true).unwrap();
    assert_eq!(report.problems.len(), 3);
    assert!(report.problems.iter().all(|p| p.removed));
    assert!(!tree_path.exists() && !blob_path.exists() && !archive.exists());
    assert!(!store.has_tree(&tree));
    assert!(store.has_tree(&good_tree), "intact entries stay");
    assert!(store.blob_path(&good_blob).is_file());
    assert_eq!(dir_entries(&store.root().join("tmp")), Vec::<String>::new(), "trash is emptied");
    assert!(store.verify(false).unwrap().is_clean());

    // Re-inserting brings it back.
    drop(stage);
    let stage = store.staging_dir().unwrap();
    make_sample_tree(&utf8(stage.path()));
    assert_eq!(store.insert_tree(&utf8(stage.path()), Some(&tree), "t").unwrap(), tree);
}

// --------------------------------------------------------------- archives

/// A header with raw name/link bytes, bypassing the `tar` crate's checks, as
/// a hostile archive would be built.
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32, link: Option<&[u8]>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            old.linkname[..link.len()].copy_from_slice(link);
        }
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    h
}

enum E<'a> {
    File(&'a [u8], &'a [u8], u32),
    Dir(&'a [u8]),
    Symlink(&'a [u8], &'a [u8]),
    Hardlink(&'a [u8], &'a [u8]),
    Fifo(&'a [u8]),
    Char(&'a [u8]),
}

fn build_tar(entries: &[E]) -> Vec<u8> {
    use tar::EntryType as T;
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match *e {
            E::File(name, data, mode) => b.append(&raw_header(name, T::Regular, data.len() as u64, mode, None), data).unwrap(),
            E::Dir(name) => b.append(&raw_header(name, T::Directory, 0, 0o755, None), &[][..]).unwrap(),
            E::Symlink(name, target) => b.append(&raw_header(name, T::Symlink, 0, 0o777, Some(target)), &[][..]).unwrap(),
            E::Hardlink(name, target) => b.append(&raw_header(name, T::Link, 0, 0o644, Some(target)), &[][..]).unwrap(),
            E::Fifo(name) => b.append(&raw_header(name, T::Fifo, 0, 0o644, None), &[][..]).unwrap(),
            E::Char(name) => b.append(&raw_header(name, T::Char, 0, 0o644, None), &[][..]).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

#[test]
fn hostile_tarballs_are_refused() {
    let cases: Vec<(&str, Vec<E>, &str)> = vec![
        ("parent", vec![E::File(b"../evil", b"x", 0o644)], "../evil"),
        ("nested-parent", vec![E::Dir(b"a/"), E::File(b"a/../../evil", b"x", 0o644)], "a/../../evil"),
        ("absolute", vec![E::File(b"/abs", b"x", 0o644)], "/abs"),
        ("symlink-escape", vec![E::Symlink(b"link", b"../outside"), E::File(b"link/evil", b"x", 0o644)], "link"),
        ("symlink-escape-deep", vec![E::Symlink(b"a/b/link", b"../../../outside")], "a/b/link"),
        ("symlink-absolute", vec![E::Symlink(b"etc", b"/etc")], "etc"),
        ("symlink-inner-dotdot", vec![E::Symlink(b"d/l", b"x/../../..")], "d/l"),
        ("write-through-symlink", vec![E::Dir(b"sub/"), E::Symlink(b"link", b"sub"), E::File(b"link/evil", b"x", 0o644)], "link/evil"),
        ("overwrite-symlink", vec![E::Symlink(b"f", b"g"), E::File(b"f", b"x", 0o644)], "f"),
        ("hardlink-escape", vec![E::Hardlink(b"h", b"../../etc/passwd")], "h"),
        ("hardlink-absolute", vec![E::Hardlink(b"h", b"/etc/passwd")], "h"),
        ("hardlink-to-missing", vec![E::Hardlink(b"h", b"nothing")], "h"),
        ("fifo", vec![E::Fifo(b"pipe")], "pipe"),
        ("device", vec![E::Char(b"null")], "null"),
    ];
    for (label, entries, entry_name) in cases {
        let (_t, dir) = tempdir();
        let dest = dir.join("a/b/dest");
        fs::create_dir_all(&dest).unwrap();
        let tar_bytes = build_tar(&entries);
        let archive_path = dir.join(format!("{label}.tar.gz"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        fs::write(&archive_path, gz.finish().unwrap()).unwrap();

        let err = unpack_tar_gz(&archive_path, &dest).expect_err(label);
        let msg = format!("{err:#}");
        let reason = match label {
            "parent" | "nested-parent" => "has a `..` component",
            "absolute" => "has an absolute path",
            "symlink-escape" | "symlink-escape-deep" | "hardlink-escape" | "hardlink-absolute" => "leaves the tree",
            "symlink-absolute" => "is absolute",
            "symlink-inner-dotdot" => "`..` after a normal component",
            "write-through-symlink" | "overwrite-symlink" => "written through a symlink",
            "hardlink-to-missing" => "not a file unpacked earlier",
            "fifo" => "is a fifo",
            "device" => "is a device node",
            _ => unreachable!(),
        };
        assert!(msg.contains(reason), "{label}: refused for the wrong reason: {msg}");
        assert!(msg.contains(archive_path.as_str()), "{label}: error must name the archive: {msg}");
        assert!(msg.contains(&format!("`{entry_name}`")), "{label}: error must name the entry `{entry_name}`: {msg}");
        assert!(!dir.join("evil").exists() && !dir.join("a/evil").exists() && !dir.join("a/b/evil").exists() && !dir.join("a/outside").exists());
        assert!(!dest.join("sub/evil").exists(), "{label}: nothing written through a symlink");

        let err = unpack_tar_named(&tar_bytes[..], &dest, "git archive deadbeef").map(|_| ()).err();
        // Same result on a plain stream (dest may now hold earlier entries, so
        // only check that it fails and names the stream).
        let msg = format!("{:#}", err.expect(label));
        assert!(msg.contains("git archive deadbeef"), "{msg}");
    }
}

#[test]
fn good_tarball_unpacks_with_normalized_modes() {
    use tar::EntryType as T;
    let (_t, dir) = tempdir();
    let dest = dir.join("dest");
    fs::create_dir(&dest).unwrap();

    let mut b = tar::Builder::new(Vec::new());
    // A pax global header, as `git archive` writes first.
    let record = format!("52 comment={}\n", "a".repeat(40));
    assert_eq!(record.len(), 52);
    let mut g = tar::Header::new_ustar();
    g.set_path("pax_global_header").unwrap();
    g.set_entry_type(T::XGlobalHeader);
    g.set_size(record.len() as u64);
    g.set_mode(0o666);
    g.set_cksum();
    b.append(&g, record.as_bytes()).unwrap();
    b.append(&raw_header(b"./", T::Directory, 0, 0o775, None), &[][..]).unwrap();
    b.append(&raw_header(b"proj/", T::Directory, 0, 0o700, None), &[][..]).unwrap();
    b.append(&raw_header(b"proj/run", T::Regular, 3, 0o4775, None), &b"#!x"[..]).unwrap();
    b.append(&raw_header(b"proj/data", T::Regular, 4, 0o600, None), &b"data"[..]).unwrap();
    b.append(&raw_header(b"proj/inc/deep/x.h", T::Regular, 1, 0o444, None), &b"h"[..]).unwrap();
    b.append(&raw_header(b"proj/inc/link.h", T::Symlink, 0, 0o777, Some(b"deep/x.h")), &[][..]).unwrap();
    b.append(&raw_header(b"proj/inc/deep/up", T::Symlink, 0, 0o777, Some(b"../../data")), &[][..]).unwrap();
    b.append(&raw_header(b"proj/copy", T::Link, 0, 0o644, Some(b"proj/data")), &[][..]).unwrap();
    // A long name (GNU long-name extension, added by the tar crate).
    let long = format!("proj/{}/file.c", "long-directory-name".repeat(8));
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_entry_type(T::Regular);
    b.append_data(&mut h, &long, &b"lc"[..]).unwrap();
    let tar_bytes = b.into_inner().unwrap();

    unpack_tar(&tar_bytes[..], &dest).unwrap();
    let p = dest.join("proj");
    let mode = |q: &Utf8Path| fs::symlink_metadata(q).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&p), 0o755);
    assert_eq!(mode(&p.join("run")), 0o755, "exec kept, setuid dropped");
    assert_eq!(mode(&p.join("data")), 0o644);
    assert_eq!(mode(&p.join("inc/deep/x.h")), 0o644);
    assert_eq!(fs::read_link(p.join("inc/link.h")).unwrap(), Path::new("deep/x.h"));
    assert_eq!(fs::read(p.join("inc/deep/up")).unwrap(), b"data", "relative symlink resolves inside");
    assert_eq!(fs::read(p.join("copy")).unwrap(), b"data");
    assert!(!fs::symlink_metadata(p.join("copy")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read(dest.join(&long)).unwrap(), b"lc");
    assert!(!dest.join("pax_global_header").exists());
    assert_eq!(
        kraft::store::archive::single_top_level_dir(&dest).unwrap(),
        Some(dest.join("proj"))
    );
}

/// Large outputs are kept as one zstd frame, still named by the blake3 of
/// their bytes; restores give the exact bytes back; a corrupt frame is a
/// miss (and removed), and `verify` hashes what a frame decodes to.
#[test]
fn large_blobs_are_compressed_and_restore_exactly() {
    let (_t, store) = open_store();
    let (_t2, dir) = tempdir();
    // Debug-info-like: compressible, larger than the threshold.
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| format!("DW_TAG_{} ", i % 97).into_bytes()).collect();
    let file = dir.join("lib.ld.o");
    fs::write(&file, &big).unwrap();
    let h = store.insert_blob_file(&file).unwrap();
    assert_eq!(h, blake3::hash(&big).to_hex().as_str(), "the name is the hash of the uncompressed bytes");
    assert!(!store.blob_path(&h).exists());
    let blob = store.blob_file(&h).unwrap();
    assert_eq!(blob.path, store.blob_zstd_path(&h));
    assert_eq!(blob.encoding, kraft::store::BlobEncoding::Zstd);
    assert!(blob.stored_size * 5 < big.len() as u64, "{} of {}", blob.stored_size, big.len());
    assert_eq!(fs::metadata(&blob.path).unwrap().permissions().mode() & 0o777, 0o444);
    assert_eq!(kraft::store::decompress(&fs::read(&blob.path).unwrap(), big.len() as u64).unwrap(), big);
    assert_eq!(store.read_blob(&h).unwrap(), big);

    // Restore into a fresh file: exact bytes.
    let dest = dir.join("restored.o");
    let mut out = fs::File::create(&dest).unwrap();
    let got = store.restore_blob(&h, &mut out, &dest).unwrap().unwrap();
    drop(out);
    assert_eq!(got.to_hex().as_str(), h);
    assert_eq!(fs::read(&dest).unwrap(), big);

    // Incompressible large bytes stay raw; small ones too.
    let mut noise = vec![0u8; 100_000];
    blake3::Hasher::new().update(b"noise").finalize_xof().fill(&mut noise);
    let hn = store.insert_blob_bytes(&noise).unwrap();
    assert_eq!(store.blob_file(&hn).unwrap().encoding, kraft::store::BlobEncoding::Raw);
    assert_eq!(store.verify(false).unwrap().blobs_checked, 2);
    assert!(store.verify(false).unwrap().is_clean());

    // A corrupt frame: verify reports it, a restore is a miss and removes it.
    let mut perms = fs::metadata(&blob.path).unwrap().permissions();
    perms.set_mode(0o644);
    fs::set_permissions(&blob.path, perms).unwrap();
    let mut frame = fs::read(&blob.path).unwrap();
    let mid = frame.len() / 2;
    frame[mid] ^= 0x55;
    fs::write(&blob.path, &frame).unwrap();
    let report = store.verify(false).unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert_eq!(report.problems[0].expected, h);
    let dest2 = dir.join("restored2.o");
    let mut out = fs::File::create(&dest2).unwrap();
    assert!(store.restore_blob(&h, &mut out, &dest2).unwrap().is_none());
    assert!(!store.has_blob(&h), "the corrupt blob is gone, so the next insert rewrites it");
    assert_eq!(store.insert_blob_file(&file).unwrap(), h);
    assert_eq!(store.read_blob(&h).unwrap(), big);
}

/// A large output's blob may be stored after its action finished (the next
/// link need not wait for its compression): its entry is written only once
/// the blob is in the store, and an output that changed in between gets no
/// entry at all, never one that names other bytes.
#[test]
fn deferred_large_outputs_reach_the_store_before_their_entry() {
    use kraft::cache::local::{ActionCache, Entry, DEFER_MIN};
    let (_t, store) = open_store();
    let (_t2, dir) = tempdir();
    let cache = ActionCache::new(&store);
    let big: Vec<u8> = (0..1_300_000u32).flat_map(|i| format!("DW_TAG_{} ", i % 97).into_bytes()).collect();
    assert!(big.len() as u64 >= DEFER_MIN);
    let entry_of = |out| Entry { outputs: vec![out], discovered: Vec::new(), stdout: String::new(), stderr: String::new() };

    let file = dir.join("libmusl.ld.o");
    fs::write(&file, &big).unwrap();
    let (out, _, pending) = cache.store_output_or_defer(Utf8Path::new("/kraft/build/libmusl.ld.o"), &file, true).unwrap();
    assert_eq!(out.blake3, blake3::hash(&big).to_hex().as_str());
    let pending = pending.expect("a large output is deferred");
    let key = blake3::hash(b"action one");
    cache.put_after_blobs(&key, &entry_of(out.clone()), vec![pending]).unwrap();
    cache.flush().unwrap();
    assert_eq!(store.read_blob(&out.blake3).unwrap(), big, "the blob is in the store");
    assert_eq!(cache.get(&key).expect("then the entry").outputs, vec![out.clone()]);

    // Changed after hashing: no entry, and the store holds only true names.
    let file2 = dir.join("libmusl.o");
    fs::write(&file2, &big[1..]).unwrap();
    let (out2, _, pending2) = cache.store_output_or_defer(Utf8Path::new("/kraft/build/libmusl.o"), &file2, true).unwrap();
    let mut changed = big.clone();
    changed[7] ^= 1;
    fs::write(&file2, &changed).unwrap();
    let key2 = blake3::hash(b"action two");
    cache.put_after_blobs(&key2, &entry_of(out2.clone()), pending2.into_iter().collect()).unwrap();
    cache.flush().unwrap();
    assert!(cache.get(&key2).is_none(), "no entry for an output that changed");
    assert!(!store.has_blob(&out2.blake3));
    assert!(store.verify(false).unwrap().is_clean());

    // Without `defer`, or below the size, the blob is stored at once.
    let (out3, _, pending3) = cache.store_output_or_defer(Utf8Path::new("/kraft/build/x.o"), &file2, false).unwrap();
    assert!(pending3.is_none() && store.has_blob(&out3.blake3));
}

#[test]
fn a_blob_verified_once_is_trusted_only_while_unchanged() {
    let (_t, store) = open_store();
    let ledger = store.root().join(kraft::store::verified::FILE);
    let recorded = |hash: &str| fs::read_to_string(&ledger).unwrap_or_default().lines().filter(|l| l.starts_with(hash)).count();
    let blobs: Vec<String> = (0..4).map(|i| store.insert_blob_bytes(format!("blob {i} ").repeat(1000).as_bytes()).unwrap()).collect();
    // Just written: a ctime this recent could hide a write in the same
    // clock tick, so nothing is recorded and every check reads the blob.
    assert!(store.verify_blob(&blobs[0]).unwrap());
    assert_eq!(recorded(&blobs[0]), 0);
    std::thread::sleep(Duration::from_millis(2100));
    for hash in &blobs {
        assert!(store.verify_blob(hash).unwrap());
        assert!(store.verify_blob(hash).unwrap());
        assert_eq!(recorded(hash), 1, "verified once, recorded once");
    }
    let path = |hash: &str| store.blob_file(hash).unwrap().path;
    // Written in place (same length), replaced by rename, truncated: each
    // is read again, found corrupt and removed, also by another process's
    // view of the same store.
    let in_place = path(&blobs[0]);
    let len = fs::metadata(&in_place).unwrap().len() as usize;
    fs::set_permissions(&in_place, fs::Permissions::from_mode(0o644)).unwrap();
    fs::OpenOptions::new().write(true).open(&in_place).unwrap().write_all(&vec![b'x'; len]).unwrap();
    let replaced = path(&blobs[1]);
    let staged = replaced.with_extension("staged");
    fs::write(&staged, b"other bytes").unwrap();
    fs::rename(&staged, &replaced).unwrap();
    let truncated = path(&blobs[2]);
    fs::set_permissions(&truncated, fs::Permissions::from_mode(0o644)).unwrap();
    fs::OpenOptions::new().write(true).open(&truncated).unwrap().set_len(1).unwrap();
    let other = Store::open(store.root()).unwrap();
    for (hash, file) in [(&blobs[0], &in_place), (&blobs[1], &replaced)] {
        assert!(!store.verify_blob(hash).unwrap(), "{file}");
        assert!(!file.exists(), "a corrupt blob is removed");
    }
    assert!(!other.verify_blob(&blobs[2]).unwrap());
    assert!(!truncated.exists());
    // A change that leaves the bytes alone (a mode) is read again, and passes.
    let moded = path(&blobs[3]);
    fs::set_permissions(&moded, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(store.verify_blob(&blobs[3]).unwrap());
    assert!(moded.exists());
    // `cache gc` that removes blobs starts the record again.
    let report = kraft::cache::gc::collect_garbage(&store, &kraft::cache::gc::GcOptions { grace: Duration::ZERO, ..Default::default() }).unwrap();
    assert!(report.removed_blobs > 0, "{report:?}");
    assert!(!ledger.exists());
}
