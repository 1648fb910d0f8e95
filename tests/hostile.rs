//! Hostile input is refused early and clearly, never hangs, never writes
//! outside the store:
//!
//! * every Kraftfile in `tests/kraftfiles/hostile/<case>/` is refused by the
//!   loader in under a second and under 100 MB of allocation (counted by this
//!   binary's global allocator), with an error naming the line given by the
//!   file's last line, `# expect-line: N`;
//! * a crafted git repository whose tree holds a symlink and a path through
//!   it (`link -> /outside`, `link/pwned`) is refused when locked and fetched,
//!   and nothing appears outside the store.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use kraft::source::kraftfile;
use kraft::Diagnostic;

/// Counts live and peak heap bytes, so a test can bound what one call costs.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this binary run one at a time, so the peak belongs to one.
static SERIAL: Mutex<()> = Mutex::new(());

const MAX_TIME: Duration = Duration::from_secs(1);
const MAX_BYTES: usize = 100 << 20;

fn corpus() -> Utf8PathBuf {
    support::repo_root().join("tests/kraftfiles/hostile")
}

/// The line the error must name, from the file's last line.
fn expected_line(text: &str) -> usize {
    let last = text.trim_end().lines().last().unwrap_or("");
    last.trim()
        .strip_prefix("# expect-line:")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the last line must be `# expect-line: N`, found {last:?}"))
}

#[test]
fn hostile_kraftfiles_are_refused_fast_small_and_located() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cases: Vec<Utf8PathBuf> = std::fs::read_dir(corpus())
        .expect("reading tests/kraftfiles/hostile")
        .map(|e| Utf8PathBuf::from_path_buf(e.unwrap().path()).unwrap())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "the hostile corpus has only {} cases", cases.len());
    let mut slowest = (Duration::ZERO, String::new());
    let mut largest = (0usize, String::new());
    for dir in &cases {
        let case = dir.file_name().unwrap().to_string();
        let path = dir.join("Kraftfile");
        let text = std::fs::read(&path).unwrap();
        let line = expected_line(&String::from_utf8_lossy(&text));

        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let start = Instant::now();
        let result = kraftfile::load(&path);
        let took = start.elapsed();
        let bytes = PEAK.load(Ordering::Relaxed).saturating_sub(base);

        let err = match result {
            Ok(kf) => panic!("{case}: a hostile Kraftfile was accepted: {kf:#?}"),
            Err(e) => e,
        };
        let diag = err.downcast_ref::<Diagnostic>().unwrap_or_else(|| panic!("{case}: not a located diagnostic: {err:#}"));
        let location = diag.location.as_ref().unwrap_or_else(|| panic!("{case}: no location: {diag}"));
        assert_eq!(location.file, path, "{case}");
        assert_eq!(location.line, line, "{case}: the error names the wrong line: {diag}");
        assert!(diag.help.is_some(), "{case}: no help: {diag}");
        assert!(took < MAX_TIME, "{case}: refused in {took:?}, more than {MAX_TIME:?}");
        assert!(bytes < MAX_BYTES, "{case}: {bytes} bytes allocated, more than {MAX_BYTES}");
        if std::env::var_os("HOSTILE_SHOW").is_some() {
            eprintln!("{case}: {took:?} {bytes} B\n  {diag}");
        }
        if took > slowest.0 {
            slowest = (took, case.clone());
        }
        if bytes > largest.0 {
            largest = (bytes, case.clone());
        }
    }
    eprintln!(
        "{} hostile Kraftfiles refused; slowest {} ({:?}), largest {} ({} KiB)",
        cases.len(),
        slowest.1,
        slowest.0,
        largest.1,
        largest.0 >> 10
    );
}

/// Run git in `dir` on the bare repository `git_dir`, feeding `input`.
fn git_in(git_dir: &Utf8Path, args: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("git")
        .args(args)
        .env("GIT_DIR", git_dir.as_str())
        .env("GIT_AUTHOR_NAME", "Mallory")
        .env("GIT_AUTHOR_EMAIL", "mallory@example.invalid")
        .env("GIT_COMMITTER_NAME", "Mallory")
        .env("GIT_COMMITTER_EMAIL", "mallory@example.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2024-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git runs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A bare repository `<dir>/<name>.git` whose `stable` branch (and tag
/// `RELEASE-0.1.0`) is one commit of a tree built by hand from `entries`
/// (`mode kind name` lines as `git mktree` reads them, where `{link}` is a
/// blob holding `link_target`, `{file}` a blob holding "pwned" and `{sub}` a
/// tree holding `{file}` as `pwned`). Git's porcelain would never write such
/// trees; a hostile server can.
fn crafted_repo(dir: &Utf8Path, name: &str, link_target: &str, entries: &[&str]) -> (Utf8PathBuf, String) {
    let bare = dir.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).unwrap();
    git_in(&bare, &["init", "-q", "--bare", bare.as_str()], "");
    let file = git_in(&bare, &["hash-object", "-w", "--stdin"], "pwned\n");
    let link = git_in(&bare, &["hash-object", "-w", "--stdin"], link_target);
    let sub = git_in(&bare, &["mktree"], &format!("100644 blob {file}\tpwned\n"));
    let listing: String = entries
        .iter()
        .map(|e| e.replace("{link}", &link).replace("{file}", &file).replace("{sub}", &sub) + "\n")
        .collect();
    let tree = git_in(&bare, &["mktree"], &listing);
    let commit = git_in(&bare, &["commit-tree", &tree, "-m", "crafted"], "");
    git_in(&bare, &["update-ref", "refs/heads/stable", &commit], "");
    git_in(&bare, &["tag", "RELEASE-0.1.0", &commit], "");
    (bare, commit)
}

/// Every file under `root` named `pwned`, outside `except`.
fn pwned_files(root: &Utf8Path, except: &[&Utf8Path]) -> Vec<Utf8PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| Utf8PathBuf::from_path_buf(e.into_path()).unwrap())
        .filter(|p| p.file_name() == Some("pwned") && !except.iter().any(|x| p.starts_with(x)))
        .collect()
}

/// The crafted trees: each must be refused by the export itself (called
/// directly on the repository, so git's own fsck on fetch cannot help).
fn crafted_trees(outside: &Utf8Path) -> Vec<(&'static str, String, Vec<&'static str>)> {
    let up = "../".repeat(12) + outside.as_str().trim_start_matches('/');
    vec![
        ("symlink-then-path-through-it", outside.to_string(), vec!["120000 blob {link}\tlink", "040000 tree {sub}\tlink"]),
        ("relative-symlink-leaving-the-tree", up, vec!["120000 blob {link}\tlink", "040000 tree {sub}\tlink"]),
        ("dotdot-entry", String::new(), vec!["040000 tree {sub}\t.."]),
        ("git-dir-entry", String::new(), vec!["040000 tree {sub}\t.git"]),
        ("duplicate-entry", String::new(), vec!["100644 blob {file}\tpwned", "100644 blob {file}\tpwned"]),
        // Trees git's fsck accepts: only the export's own checks stop these.
        ("absolute-symlink", outside.to_string(), vec!["120000 blob {link}\tlink", "100644 blob {file}\tother"]),
        ("symlink-leaving-from-a-subdir", "../../outside".to_string(), vec!["040000 tree {sub}\tsub", "120000 blob {link}\tz-link"]),
    ]
}

#[test]
fn crafted_git_trees_are_refused_by_export_and_write_nothing_outside() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path()).to_owned();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    for (case, target, entries) in crafted_trees(&outside) {
        let (bare, commit) = crafted_repo(&root.join("repos"), case, &target, &entries);
        let dest = root.join("export").join(case);
        std::fs::create_dir_all(&dest).unwrap();
        let repo = kraft::source::git::CacheRepo { path: bare };
        let err = repo.export(&commit, &dest).expect_err(case);
        let text = format!("{err:#}");
        assert!(text.contains("refusing to export"), "{case}: {text}");
        assert!(pwned_files(&root, &[&root.join("export")]).is_empty(), "{case}: wrote outside: {text}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{case}");
    }
}

#[test]
fn crafted_git_repository_locked_and_fetched_writes_nothing_outside_the_store() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path()).to_owned();
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let mirror = root.join("mirror");
    support::make_repo(&mirror.join("unikraft"), "unikraft", &support::fixtures().join("core"));
    let ws = root.join("ws");
    support::make_workspace(&ws);
    support::write_greet_recipe(&ws);
    std::fs::create_dir_all(ws.join("apps/hello")).unwrap();
    std::fs::write(
        ws.join("apps/hello/Kraftfile"),
        "spec: v0.6\nname: hello\nunikraft: stable\nlibraries:\n  greet: stable\ntargets:\n  - qemu/x86_64\n",
    )
    .unwrap();
    let store = root.join("store");
    let mirrors = format!("https://github.com/={mirror}/");
    for (case, target, entries) in crafted_trees(&outside) {
        // Each case is served as lib-greet in turn.
        let _ = std::fs::remove_dir_all(mirror.join("unikraft/lib-greet.git"));
        let _ = std::fs::remove_file(ws.join("apps/hello/kraft.lock"));
        crafted_repo(&mirror.join("unikraft"), "lib-greet", &target, &entries);
        let out = support::xtask(&ws, &store, &[("KRAFT_MIRRORS", &mirrors)], &["fetch", "hello"]);
        let err = support::stderr(&out);
        assert!(!out.status.success(), "{case}: a crafted repository was fetched: {err}");
        assert!(!err.contains("panicked"), "{case}: {err}");
        assert!(pwned_files(&root, &[&store, &mirror]).is_empty(), "{case}: wrote outside the store: {err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{case}: {err}");
        eprintln!("{case}: refused: {}", err.lines().find(|l| l.contains("error")).unwrap_or(""));
    }
}

fn utf8(p: &std::path::Path) -> &Utf8Path {
    Utf8Path::from_path(p).unwrap()
}
