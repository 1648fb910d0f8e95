//! The Kraftfile loader over the corpus in `tests/kraftfiles/`:
//!
//! * `ok/<case>/`: valid Kraftfiles (any accepted file name); the normalized
//!   model, warnings included, is snapshotted;
//! * `bad/<case>/Kraftfile`: invalid ones; the error text (file:line:col,
//!   message, help) is snapshotted;
//! * `discovery/<case>/`: directories holding several candidate names; each
//!   file's `name:` says which one it is, and `find` must pick the first of
//!   `FILE_NAMES`.
//!
//! Paths under the repository are written relative to it (`<repo>/…`) so the
//! snapshots do not depend on where the checkout lives.

use std::collections::BTreeSet;

use camino::{Utf8Path, Utf8PathBuf};
use kraft::source::kraftfile::{self, Kraftfile, Source, FILE_NAMES};
use kraft::{Diagnostic, Location};

fn repo() -> Utf8PathBuf {
    let manifest = Utf8Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = manifest.parent().expect("xtask has a parent directory");
    Utf8PathBuf::from_path_buf(repo.as_std_path().canonicalize().unwrap()).unwrap()
}

fn corpus(kind: &str) -> Utf8PathBuf {
    repo().join("tests/kraftfiles").join(kind)
}

fn cases(kind: &str) -> Vec<(String, Utf8PathBuf)> {
    let dir = corpus(kind);
    let mut out: Vec<(String, Utf8PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| {
            let name = e.file_name().into_string().unwrap();
            let path = dir.join(&name);
            (name, path)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no cases in {dir}");
    out
}

fn rel(path: &Utf8Path) -> Utf8PathBuf {
    match path.strip_prefix(repo()) {
        Ok(p) => Utf8Path::new("<repo>").join(p),
        Err(_) => path.to_owned(),
    }
}

fn rel_location(l: &mut Location) {
    l.file = rel(&l.file);
}

fn rel_diagnostic(d: &mut Diagnostic) {
    if let Some(l) = &mut d.location {
        rel_location(l);
    }
}

/// The Kraftfile with every path made relative to the repository.
fn relativize(mut kf: Kraftfile) -> Kraftfile {
    kf.path = rel(&kf.path);
    for c in kf.unikraft.iter_mut().chain(kf.libraries.iter_mut()) {
        rel_location(&mut c.location);
        if let Some(Source::Local { path, .. }) = &mut c.source {
            *path = rel(path);
        }
    }
    for t in &mut kf.targets {
        rel_location(&mut t.location);
    }
    for w in &mut kf.warnings {
        rel_diagnostic(w);
    }
    kf
}

fn error_text(err: &anyhow::Error) -> String {
    format!("{err:#}").replace(repo().as_str(), "<repo>")
}

/// Every snapshot file of `prefix` must belong to a case (no stale ones).
fn check_no_stale_snapshots(prefix: &str, names: &BTreeSet<String>) {
    let dir = repo().join("tests/snapshots");
    let Ok(entries) = std::fs::read_dir(&dir) else { return };
    for e in entries {
        let file = e.unwrap().file_name().into_string().unwrap();
        let Some(rest) = file.strip_prefix(&format!("kraftfile__{prefix}__")) else { continue };
        let Some(case) = rest.strip_suffix(".snap") else { continue };
        assert!(names.contains(case), "stale snapshot {file}: no case `{case}` in tests/kraftfiles/{prefix}");
    }
}

#[test]
fn ok_corpus() {
    let mut names = BTreeSet::new();
    for (case, dir) in cases("ok") {
        let path = kraftfile::find(&dir).unwrap_or_else(|e| panic!("{case}: {e:#}"));
        let kf = kraftfile::load(&path).unwrap_or_else(|e| panic!("{case}: {}", error_text(&e)));
        assert_eq!(kf.path, path);
        assert_eq!(kf.dir(), dir);
        // Every model location points at a real line of the file.
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        for l in kf
            .unikraft
            .iter()
            .chain(&kf.libraries)
            .map(|c| &c.location)
            .chain(kf.targets.iter().map(|t| &t.location))
            .chain(kf.warnings.iter().filter_map(|w| w.location.as_ref()))
        {
            assert_eq!(l.file, path, "{case}");
            assert!(l.line >= 1 && l.line <= lines && l.column >= 1, "{case}: {l}");
        }
        for w in &kf.warnings {
            assert!(w.location.is_some() && w.help.is_some(), "{case}: warning without location or help: {w}");
        }
        insta::assert_yaml_snapshot!(format!("ok__{case}"), relativize(kf));
        names.insert(case);
    }
    check_no_stale_snapshots("ok", &names);
}

#[test]
fn bad_corpus() {
    let mut names = BTreeSet::new();
    for (case, dir) in cases("bad") {
        let path = dir.join("Kraftfile");
        let err = match kraftfile::load(&path) {
            Ok(kf) => panic!("{case}: expected an error, got {kf:#?}"),
            Err(e) => e,
        };
        let diag = err.downcast_ref::<Diagnostic>().unwrap_or_else(|| panic!("{case}: not a Diagnostic: {err:#}"));
        let location = diag.location.as_ref().unwrap_or_else(|| panic!("{case}: no location: {diag}"));
        assert_eq!(location.file, path, "{case}");
        assert!(location.line >= 1 && location.column >= 1, "{case}: {location}");
        assert!(diag.help.is_some(), "{case}: no help: {diag}");
        let text = error_text(&err);
        assert!(text.starts_with(&format!("<repo>/tests/kraftfiles/bad/{case}/Kraftfile:")), "{case}: {text}");
        insta::assert_snapshot!(format!("bad__{case}"), text);
        names.insert(case);
    }
    check_no_stale_snapshots("bad", &names);
}

#[test]
fn discovery_order() {
    for (case, dir) in cases("discovery") {
        if case == "none" {
            let err = kraftfile::find(&dir).unwrap_err();
            let text = error_text(&err);
            assert!(text.contains("no Kraftfile in"), "{text}");
            assert!(text.contains("help: create"), "{text}");
            continue;
        }
        let present: Vec<&str> = FILE_NAMES.iter().copied().filter(|n| dir.join(n).is_file()).collect();
        let expected = present.first().unwrap_or_else(|| panic!("{case}: no candidate files"));
        let found = kraftfile::find(&dir).unwrap();
        assert_eq!(found, dir.join(expected), "{case}");
        // Loading the directory picks the same file; its `name` names it.
        let kf = kraftfile::load(&dir).unwrap();
        assert_eq!(kf.path, found, "{case}");
        assert_eq!(kf.name.as_deref(), Some(*expected), "{case}");
    }
}

#[test]
fn discovery_names_and_order() {
    assert_eq!(FILE_NAMES, ["kraft.yaml", "kraft.yml", "Kraftfile.yml", "Kraftfile.yaml", "Kraftfile"]);
    let err = kraftfile::find(&corpus("does-not-exist")).unwrap_err();
    assert!(error_text(&err).contains("does not exist"));
}

#[test]
fn explicit_path_overrides_discovery() {
    let dir = corpus("discovery").join("all-five");
    let kf = kraftfile::load(&dir.join("Kraftfile")).unwrap();
    assert_eq!(kf.name.as_deref(), Some("Kraftfile"));
}

#[test]
fn numeric_versions_stay_as_written() {
    let kf = kraftfile::load(&corpus("ok").join("kconfig-forms")).unwrap();
    let libelf = kf.library("libelf").unwrap();
    assert_eq!(libelf.version.as_deref(), Some("0.10"));
    let kconfig: Vec<(&str, &str)> = libelf.kconfig.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        kconfig,
        [
            ("CONFIG_LIBELF_STRING", "with spaces"),
            ("CONFIG_LIBELF_Q", "y"),
            ("CONFIG_LIBELF_NUMBER", "010"),
            ("CONFIG_LIBELF_FLOAT", "1.50"),
        ]
    );
    let kf = kraftfile::parse(Utf8Path::new("/x/Kraftfile"), "spec: v0.6\nunikraft: 0.10\n").unwrap();
    assert_eq!(kf.unikraft.unwrap().version.as_deref(), Some("0.10"));
}

#[test]
fn local_sources_are_absolute_and_normalized() {
    let dir = corpus("ok").join("local-sources");
    let kf = kraftfile::load(&dir).unwrap();
    assert_eq!(
        kf.unikraft.as_ref().unwrap().source,
        Some(Source::Local { path: dir.join("unikraft"), written: "./unikraft".into() })
    );
    assert_eq!(kf.libraries[0].source, Some(Source::Local { path: dir.join("libs/mylib"), written: "libs/mylib".into() }));
    assert_eq!(
        kf.libraries[1].source,
        Some(Source::Local { path: dir.join("libs/mylib"), written: "./libs/../libs/mylib/".into() })
    );
    assert_eq!(kf.libraries[1].version.as_deref(), Some("main"));

    // A relative Kraftfile path still yields absolute source paths.
    let cwd = Utf8PathBuf::from_path_buf(std::env::current_dir().unwrap()).unwrap();
    let relative = pathdiff(&dir, &cwd).join("Kraftfile");
    let kf = kraftfile::load(&relative).unwrap();
    match &kf.unikraft.unwrap().source {
        Some(Source::Local { path, .. }) => assert_eq!(path, &dir.join("unikraft")),
        other => panic!("{other:?}"),
    }
}

/// `path` relative to `base` (both absolute).
fn pathdiff(path: &Utf8Path, base: &Utf8Path) -> Utf8PathBuf {
    let p: Vec<_> = path.components().collect();
    let b: Vec<_> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = Utf8PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c.as_str());
    }
    out
}

#[test]
fn kconfig_for_merges_core_libraries_target() {
    let kf = kraftfile::load(&corpus("ok").join("v06-full")).unwrap();
    let qemu = &kf.targets[0];
    assert_eq!(qemu.id(), "qemu/x86_64");
    let all = kf.kconfig_for(qemu);
    let get = |k: &str| all.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    assert_eq!(get("CONFIG_LIBUKDEBUG_PRINTK_INFO"), Some("y"));
    assert_eq!(get("CONFIG_LIBUKALLOC_IFSTATS"), Some("n"));
    assert_eq!(get("CONFIG_LIBPOSIX_PROCESS_MAX_PID"), Some("0x400"));
    assert_eq!(get("CONFIG_LWIP_NUM_TCPCON"), Some("64"));
    assert_eq!(get("CONFIG_LIBMUSL"), Some("y"));
    assert_eq!(get("CONFIG_LIBLWIP"), Some("y"));
    assert_eq!(get("CONFIG_LIBNGINX"), Some("y"));
    assert_eq!(get("CONFIG_LIBNGINX_HTTP_SSL_MODULE"), Some("n"));
    assert_eq!(get("CONFIG_PLAT_KVM"), Some("y"));
    assert_eq!(get("CONFIG_KVM_VMM_QEMU"), Some("y"));
    assert_eq!(get("CONFIG_ARCH_X86_64"), Some("y"));
    assert_eq!(get("CONFIG_KVM_VMM_FIRECRACKER"), None);
    // Core first, in file order.
    assert_eq!(all[0].0, "CONFIG_LIBUKDEBUG_PRINTK_INFO");
    let fc = kf.targets.iter().find(|t| t.platform == "fc").unwrap();
    assert_eq!(fc.dir_name(), "fc-x86_64");
    assert!(kf.kconfig_for(fc).contains(&("CONFIG_KVM_VMM_FIRECRACKER".into(), "y".into())));
    let arm = kf.targets.iter().find(|t| t.architecture == "arm64").unwrap();
    assert!(kf.kconfig_for(arm).contains(&("CONFIG_ARCH_ARM_64".into(), "y".into())));
}

#[test]
fn warnings_are_located() {
    let kf = kraftfile::load(&corpus("ok").join("warnings-unknown-keys")).unwrap();
    let messages: Vec<String> = kf.warnings.iter().map(|w| w.to_string()).collect();
    let has = |needle: &str| messages.iter().any(|m| m.contains(needle));
    assert!(has("unknown key `branch` in `unikraft`"), "{messages:#?}");
    assert!(has("lacks the `CONFIG_` prefix"), "{messages:#?}");
    assert!(has("unknown key `patches`"), "{messages:#?}");
    assert!(has("unknown key `initrd` in a target"), "{messages:#?}");
    assert!(has("unknown key `networks`"), "{messages:#?}");
    assert!(has("`template` is not applied"), "{messages:#?}");
    assert!(has("`version` wins"), "{messages:#?}");
    let networks = kf.warnings.iter().find(|w| w.message.contains("`networks`")).unwrap();
    let l = networks.location.as_ref().unwrap();
    assert_eq!((l.line, l.column), (22, 1));
    // The kconfig key is kept as written.
    assert_eq!(kf.unikraft.as_ref().unwrap().kconfig, [("LIBUKDEBUG".to_string(), "y".to_string())]);
    assert_eq!(kf.library("sqlite").unwrap().version.as_deref(), Some("v2"));
    // A clean file has no warnings.
    assert!(kraftfile::load(&corpus("ok").join("v06-minimal")).unwrap().warnings.is_empty());
}
