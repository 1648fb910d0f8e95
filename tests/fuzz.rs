//! Property tests ("fuzzing" on stable Rust, with proptest) of every parser
//! that reads text from outside: the Kraftfile loader, the `kraft.lock`
//! reader, the depfile parser and the `make -n` parser. Inputs are built
//! from each format's own tokens (so they reach deep into the grammar) mixed
//! with arbitrary text and, for the lock, random edits of a real lock file.
//!
//! Each property runs a fixed number of cases with a fixed seed (the runs are
//! reproducible and bounded), asserts that no input panics (proptest turns a
//! panic into a failure and shrinks it) and that no input takes a second,
//! and prints how many cases ran and how long they took.

mod support;

use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// A hang guard, not a speed claim: no single input may take this long
/// (the slowest seen is printed; it is tens of milliseconds on an idle
/// machine, and CI machines may be loaded).
const PER_INPUT: Duration = Duration::from_secs(30);

/// Run `property` over `cases` inputs from `strategy` with a fixed seed;
/// print the count, the total and the slowest input's time.
fn run<S: Strategy>(name: &str, cases: u32, strategy: S, property: impl Fn(S::Value)) {
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 2_000, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let start = Instant::now();
    let slowest = std::cell::Cell::new(Duration::ZERO);
    let count = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |input| {
        let t = Instant::now();
        property(input);
        let took = t.elapsed();
        slowest.set(slowest.get().max(took));
        count.set(count.get() + 1);
        prop_assert!(took < PER_INPUT, "one input took {took:?}");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    eprintln!("fuzz {name}: {} inputs in {:?} (slowest {:?}), no panic", count.get(), start.elapsed(), slowest.get());
}

/// Text made of `tokens` (and now and then an arbitrary string).
fn token_soup(tokens: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        8 => prop::sample::select(tokens).prop_map(str::to_owned),
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect::<String>()),
        1 => prop::collection::vec(any::<u8>(), 0..6).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    prop::collection::vec(piece, 0..max).prop_map(|p| p.concat())
}

const KRAFTFILE_TOKENS: &[&str] = &[
    "spec: v0.6\n", "spec: '0.5'\n", "spec: v0.7\n", "specification: ", "name: ", "unikraft:", "libraries:", "targets:", "kconfig:",
    "cmd: ", "env:", "labels:", "rootfs: ", "outdir: ", "runtime: ", "template: ", "volumes:", "source: ", "version: ", "plat: ",
    "arch: ", "platform: ", "architecture: ", "x-ext: ", "\n", "\n  ", "\n    ", "\n      ", "  ", "- ", "? ", ": ", ":", ",", "[", "]",
    "{", "}", "&a ", "*a", "&b ", "*b", "<<: ", "!!str ", "!!int ", "|\n", ">-\n", "---\n", "...\n", "%YAML 1.1\n", "#", "\"", "'",
    "\\", "\\0", "\t", "\r\n", "\r", "~", "null", "y", "n", "yes", "off", "0.10", "1e3", "0x1F", ".inf", "stable", "qemu/x86_64",
    "kvm/arm64", "fc/arm", "xen", "linuxu", "CONFIG_X", "CONFIG_LIBLWIP", "=y", "CONFIG_A=\"a b\"", "musl", "lwip", "lib-x",
    "https://github.com/unikraft/unikraft.git", "?branch=staging", "git@host:repo.git", "./", "../", "/etc", "~/x", "$(shell id)",
    "`id`", "-rf", "--upload-pack=x", "..", "\u{0}", "é", "\u{feff}",
];

#[test]
fn kraftfile_loader_never_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let path = Utf8PathBuf::from_path_buf(tmp.path().join("Kraftfile")).unwrap();
    run("kraftfile", 4_000, token_soup(KRAFTFILE_TOKENS, 60), |text| {
        if let Err(e) = kraft::source::kraftfile::parse(&path, &text) {
            // Every refusal is a located diagnostic, never a bare error.
            let located = e.downcast_ref::<kraft::Diagnostic>().is_some_and(|d| d.location.is_some());
            assert!(located, "an unlocated error for {text:?}: {e:#}");
        }
    });
}

const LOCK_TOKENS: &[&str] = &[
    "version = 1\n", "version = 2\n", "[[component]]\n", "[[component.archive]]\n", "[component]\n", "name = \"musl\"\n",
    "kind = \"library\"\n", "kind = \"core\"\n", "requested = \"0.16.3\"\n", "source = \"git+https://x/y.git\"\n",
    "source = \"path+/tmp\"\n", "ref = \"refs/tags/v1\"\n", "commit = \"", "0123456789abcdef0123456789abcdef01234567", "\"\n",
    "commit-time = 1711549710\n", "commit-time = -1\n", "commit-time = 99999999999999999999\n", "tree-blake3 = \"",
    "nar-hash = \"sha256-", "=\"\n", "sha256 = \"", "url = \"", "recipe = \"musl\"\n", "# comment\n", "\n", " ", "=", "\"", "'",
    "'''", "\"\"\"", "[", "]", "{", "}", ",", ".", "inf", "nan", "true", "1979-05-27T07:32:00Z", "\\u0000", "\\", "\t", "\r\n",
];

#[test]
fn lock_reader_never_panics() {
    let real = std::fs::read_to_string(support::fixtures().join("app-hello/kraft.lock")).unwrap();
    let path = Utf8Path::new("/nonexistent/kraft.lock");
    // Edits of a real lock: (position, bytes removed, text inserted).
    let edits = prop::collection::vec((any::<prop::sample::Index>(), 0..8usize, token_soup(LOCK_TOKENS, 3)), 1..6);
    let mutated = edits.prop_map(move |edits| {
        let mut text = real.clone().into_bytes();
        for (at, remove, insert) in edits {
            let at = at.index(text.len() + 1);
            let end = (at + remove).min(text.len());
            text.splice(at..end, insert.into_bytes());
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let strategy = prop_oneof![token_soup(LOCK_TOKENS, 40), mutated];
    run("kraft.lock", 3_000, strategy, |text| {
        if let Err(e) = kraft::source::lock::Lock::parse(path, &text) {
            let located = e.downcast_ref::<kraft::Diagnostic>().is_some_and(|d| d.location.is_some());
            assert!(located, "an unlocated error for {text:?}: {e:#}");
        }
    });
}

const DEPFILE_TOKENS: &[&str] = &[
    "a.o", "a.o:", ":", " ", "  ", "\t", "\n", "\\\n", "\\ ", "\\#", "\\", "$$", "$(wildcard ", ")", "(", "#", "|", "=", ":=",
    "deps_a.o := \\\n", "source_a.o := ", "/kraft/unikraft/include/uk/config.h", "/kraft/build/x.h", "b.h", "c.h:", "\r\n",
    "cmd_a.o := gcc", "%", "*", "\"", "'", "é",
];

#[test]
fn depfile_parser_never_panics() {
    run("depfile", 5_000, token_soup(DEPFILE_TOKENS, 80), |text| {
        let deps = kraft::exec::fingerprint::parse_depfile(&text);
        assert!(deps.iter().all(|d| !d.is_empty()), "an empty dependency from {text:?}");
    });
}

const MAKE_N_TOKENS: &[&str] = &[
    "gcc ", "cc ", "-c ", "-o ", "-I", "-MD ", "-MF ", "/kraft/build/", "/kraft/unikraft/", "/kraft/apps/hello/", "a.o ", "b.c ",
    "lib/libc.a ", "libmusl/origin/src/string/", "ar rc ", "ranlib ", "ld ", "cp ", "mv ", "sed -i ", "mkdir -p ", "ln -sf ",
    "rm -f ", "touch ", "echo ", "printf ", "set -e; ", "; ", " && ", " || ", "|", ">", ">>", "2>&1 ", "<", "'", "\"", "\\\n",
    "\\", "\n", " ", "\t", "$(", ")", "$$", "`", "#", "make[1]: Entering directory '/kraft/build'\n",
    "make[1]: Leaving directory '/kraft/build'\n", "make: Nothing to be done for 'all'.\n", "  CC      a.o\n", "true\n",
    ".cmd", "/kraft/build/.a.o.cmd", "source /kraft/build/.a.o.cmd\n", "cd /kraft/build && ", "../", "/etc/passwd", "é",
];

#[test]
fn make_n_parser_never_panics() {
    use kraft::exec::sandbox::{Backend, Mount, Sandbox};
    let tmp = tempfile::tempdir().unwrap();
    let root = Utf8PathBuf::from_path_buf(tmp.path().to_owned()).unwrap();
    for dir in ["build", "core", "app"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("build/.a.o.cmd"), "gcc -c -o /kraft/build/a.o /kraft/unikraft/b.c\n").unwrap();
    let mounts = vec![
        Mount::rw(root.join("build"), "/kraft/build"),
        Mount::ro(root.join("core"), "/kraft/unikraft"),
        Mount::ro(root.join("app"), "/kraft/apps/hello"),
    ];
    // Bwrap only names the path mapping here: nothing is spawned.
    let sandbox = Sandbox::with_backend(mounts, Vec::new(), Backend::Bwrap).unwrap();
    let rules = kraft::plan::default_unit_rules();
    run("make -n", 3_000, token_soup(MAKE_N_TOKENS, 60), |text| {
        let _ = kraft::plan::parse_make_n(&text, &sandbox, &rules);
    });
}
