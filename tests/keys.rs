//! One test per row of the key table in `kraft::exec::fingerprint`: change
//! only that input, expect the rebuild it implies; and change things that
//! are in no key (timestamps, the store's path, unrelated variables) and
//! expect nothing to run.
//!
//! Engine-level rows use the small hand-built graph of `support/graphs.rs`;
//! the rest build the fixture app with the real binary.

mod support;
#[path = "support/graphs.rs"]
mod graphs;

use std::collections::BTreeSet;

use camino::Utf8PathBuf;
use kraft::exec::sandbox::{Backend, Sandbox};
use serde_json::Value;
use support::*;

/// A directory under `/usr/local` (visible inside the sandbox at the same
/// path), removed on drop; `None` when `/usr/local` is not writable (then
/// the test fails under CI and is skipped elsewhere).
struct HostDir(Utf8PathBuf);

impl HostDir {
    fn new(tag: &str) -> Option<HostDir> {
        let dir = Utf8PathBuf::from(format!("/usr/local/kraft-keys-{tag}-{}", std::process::id()));
        match std::fs::create_dir_all(&dir) {
            Ok(()) => Some(HostDir(dir)),
            Err(e) => {
                assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must be able to write {dir}: {e}");
                eprintln!("skipped: cannot write {dir}: {e}");
                None
            }
        }
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------ engine rows

#[test]
fn declared_input_and_header_under_kraft() {
    let client = graphs::Client::new();
    client.build(None);
    std::fs::write(client.src.join("b.c"), graphs::B_C.replace("B_VALUE", "B_VALUE + 1")).unwrap();
    let (_, seen) = client.build(None);
    assert_eq!(seen.ran, graphs::set(&["libab/b.o", "libab/libab.o", "app/app.dbg", "app/app"]));
    std::fs::write(client.src.join("include/other.h"), "#define OTHER 8\n").unwrap();
    let (_, seen) = client.build(None);
    assert_eq!(seen.ran, graphs::set(&["app/c.o", "app/app.dbg", "app/app"]));
}

#[test]
fn command_line() {
    let mut client = graphs::Client::new();
    client.build(None);
    let b = client.graph.actions.iter_mut().find(|a| a.name == "libab/b.o").unwrap();
    b.script = b.script.replace("-O2", "-O1");
    let (_, seen) = client.build(None);
    assert!(seen.ran.contains("libab/b.o") && !seen.ran.contains("libab/a.o"), "{:?}", seen.ran);
}

#[test]
fn host_header_named_by_a_depfile() {
    let Some(dir) = HostDir::new("include") else { return };
    let header = dir.0.join("host.h");
    std::fs::write(&header, "#define HOST_VALUE 1\n").unwrap();
    let client = graphs::Client::new();
    let c = format!("#include \"{header}\"\n{}", graphs::C_C.replace("OTHER);", "OTHER + HOST_VALUE);"));
    std::fs::write(client.src.join("c.c"), c).unwrap();
    client.build(None);
    let (r, _) = client.build(None);
    assert_eq!((r.run, r.files_hashed), (0, 0), "a no-op reads no host header");
    std::fs::write(&header, "#define HOST_VALUE 2\n").unwrap();
    let (_, seen) = client.build(None);
    assert_eq!(seen.ran, graphs::set(&["app/c.o", "app/app.dbg", "app/app"]), "a host header outside /kraft is an input");
    assert_eq!(client.run_app(), "sum=42 other=9\n");
}

#[test]
fn host_file_on_a_link_line() {
    let Some(dir) = HostDir::new("lib") else { return };
    let object = dir.0.join("extra.o");
    let compile = |value: i32| {
        let src = dir.0.join("extra.c");
        std::fs::write(&src, format!("int kraft_keys_extra(void) {{ return {value}; }}\n")).unwrap();
        let out = std::process::Command::new("gcc").args(["-c", src.as_str(), "-o", object.as_str()]).output().unwrap();
        assert!(out.status.success());
    };
    compile(1);
    let mut client = graphs::Client::new();
    let link = client.graph.actions.iter_mut().find(|a| a.name == "app/app.dbg").unwrap();
    link.script = format!("gcc libab/libab.o app/c.o {object} -o app/app.dbg");
    client.build(None);
    compile(2);
    let (_, seen) = client.build(None);
    assert_eq!(seen.ran, graphs::set(&["app/app.dbg", "app/app"]), "a host object on the link line is an input");
}

#[test]
fn sandbox_environment_and_backend() {
    let mut client = graphs::Client::new();
    client.build(None);
    let mounts = client.sandbox.mounts().to_vec();
    client.sandbox = Sandbox::new(mounts.clone(), vec![("SOURCE_DATE_EPOCH".into(), "1".into())]).unwrap();
    let (r, _) = client.build(None);
    assert_eq!(r.run, 6, "a variable passed into the sandbox is in every key");
    client.sandbox = Sandbox::new(mounts.clone(), vec![("SOURCE_DATE_EPOCH".into(), "1".into())]).unwrap();
    let (r, _) = client.build(None);
    assert_eq!(r.run, 0);
    if kraft::exec::sandbox::bwrap_usable().is_ok() {
        client.sandbox = Sandbox::with_backend(mounts, vec![("SOURCE_DATE_EPOCH".into(), "1".into())], Backend::None).unwrap();
        let (r, _) = client.build(None);
        assert_eq!(r.run, 6, "the backend is in every key");
    }
}

#[test]
fn key_format_version_is_in_every_key() {
    let h = blake3::hash(b"x");
    let fp = kraft::exec::fingerprint::Fingerprint { script: h, env: h, inputs: vec![], discovered: vec![] };
    let mut expected = blake3::Hasher::new_derive_key(kraft::exec::fingerprint::KEY_VERSION);
    expected.update(&(b"prekey".len() as u64).to_le_bytes());
    expected.update(b"prekey");
    expected.update(h.as_bytes());
    expected.update(h.as_bytes());
    expected.update(&0u64.to_le_bytes());
    assert_eq!(fp.prekey(), expected.finalize(), "the pre-key is derived under KEY_VERSION");
}

// ------------------------------------------------------------- app rows

struct App {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    ws: Utf8PathBuf,
    store: Utf8PathBuf,
    env: Vec<(String, String)>,
}

struct Build {
    stderr: String,
    events: Vec<Value>,
}

impl Build {
    fn target(&self) -> &Value {
        self.events.iter().find(|e| e["reason"] == "target-finished").unwrap_or_else(|| panic!("no target-finished:\n{}", self.stderr))
    }
    fn ran(&self) -> BTreeSet<String> {
        self.events
            .iter()
            .filter(|e| e["reason"] == "action-finished" && e["outcome"] == "ran")
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    }
    fn planned(&self) -> bool {
        self.target()["plan_cached"] == false
    }
    fn noop(&self) -> bool {
        !self.target()["noop_check_files"].is_null()
    }
    fn image(&self) -> Utf8PathBuf {
        Utf8PathBuf::from(self.target()["image"].as_str().unwrap())
    }
}

impl App {
    fn new() -> App {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let ws = root.join("ws");
        make_workspace(&ws);
        write_greet_recipe(&ws);
        for dir in ["core", "lib-greet", "app-hello"] {
            copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
        }
        let _ = std::fs::remove_file(ws.join("apps/app-hello/kraft.lock"));
        App { store: root.join("store"), _tmp: tmp, root, ws, env: Vec::new() }
    }

    fn build_path(&self, app: &str) -> Build {
        let archives = fixtures().join("archives");
        let mut env: Vec<(&str, &str)> = vec![("KRAFT_ARCHIVE_DIR", archives.as_str())];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let out = xtask(&self.ws, &self.store, &env, &["--message-format", "json", "build", app]);
        assert_ok(&out);
        let events = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
        Build { stderr: stderr(&out), events }
    }

    fn build(&self) -> Build {
        self.build_path("app-hello")
    }

    fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.into(), v.into()));
        }
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let path = self.ws.join("apps").join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{from:?} not in {path}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }
}

fn compiles(ran: &BTreeSet<String>) -> usize {
    ran.iter().filter(|a| a.ends_with(".o") && !a.ends_with(".ld.o")).count()
}

#[test]
fn toolchain_path_links_and_program_bytes() {
    let Some(dir) = HostDir::new("bin") else { return };
    let mut app = App::new();
    let first = app.build();
    let all = compiles(&first.ran());
    assert!(all > 0);

    // The commands' PATH: another directory first, nothing else.
    app.set_env("KRAFT_SANDBOX_PATH", Some("/usr/local/bin:/usr/bin:/bin"));
    let b = app.build();
    assert!(b.planned(), "the PATH is in the plan key");
    assert_eq!(compiles(&b.ran()), all, "the PATH is in every action key");

    // A link on the way to the same gcc.
    std::os::unix::fs::symlink("/usr/bin/gcc", dir.0.join("gcc")).unwrap();
    app.set_env("KRAFT_SANDBOX_PATH", Some(&format!("{}:/usr/bin:/bin", dir.0)));
    let b = app.build();
    assert!(b.planned());
    assert_eq!(compiles(&b.ran()), all, "each link from a name to its program is in the key");
    let again = app.build();
    assert!(again.noop(), "and a no-op stays a no-op:\n{}", again.stderr);

    // The program's bytes: the link becomes a wrapper that adds a flag.
    std::fs::remove_file(dir.0.join("gcc")).unwrap();
    std::fs::write(dir.0.join("gcc"), "#!/bin/sh\nexec /usr/bin/gcc \"$@\" -DKRAFT_KEYS_WRAPPER=1\n").unwrap();
    std::process::Command::new("chmod").args(["755", dir.0.join("gcc").as_str()]).status().unwrap();
    let b = app.build();
    assert_eq!(compiles(&b.ran()), all, "the program's bytes are in the key");

    // Back to the default PATH: everything comes from the cache.
    app.set_env("KRAFT_SANDBOX_PATH", None);
    let b = app.build();
    assert_eq!(b.ran(), BTreeSet::new());
}

#[test]
fn mount_map_two_checkouts_share_objects_but_not_snapshots() {
    let app = App::new();
    let a = app.build();
    let image_a = std::fs::read(a.image()).unwrap();
    // B: a copy of the checkout (with its sibling sources), one printf edited.
    let other = app.root.join("other/apps");
    copy_dir(&app.ws.join("apps"), &other);
    let main_b = other.join("app-hello/main.c");
    let text = std::fs::read_to_string(&main_b).unwrap();
    std::fs::write(&main_b, text.replace("printf(\"%s\\n\", buf);", "printf(\"B: %s\\n\", buf);")).unwrap();
    let b = app.build_path(other.join("app-hello").as_str());
    assert!(!b.noop(), "B's build must not trust A's snapshot:\n{}", b.stderr);
    assert!(b.ran().contains("apphello/main.o"), "B's edit is built: {:?}", b.ran());
    assert!(!b.ran().iter().any(|a| a.starts_with("lib")), "and nothing it does not reach: {:?}", b.ran());
    let image_b = std::fs::read(b.image()).unwrap();
    assert_ne!(image_a, image_b, "B's image has B's edit");
    let a2 = app.build();
    assert!(!a2.noop());
    assert!(a2.ran().is_empty(), "A's objects come from the cache: {:?}", a2.ran());
    assert_eq!(std::fs::read(a2.image()).unwrap(), image_a, "building A again gives A's image");
    // A copy without an edit shares every object: nothing runs.
    let c = app.root.join("third/apps");
    copy_dir(&app.ws.join("apps"), &c);
    let b = app.build_path(c.join("app-hello").as_str());
    assert!(b.ran().is_empty(), "{:?}", b.ran());
}

#[test]
fn kconfig_component_recipe_and_installed_image() {
    let app = App::new();
    let first = app.build();
    let all = first.ran();

    // kconfig: a new plan; the objects that read the config header.
    app.edit("app-hello/Kraftfile", "CONFIG_LIBUKPRINT_LOGLEVEL: 4", "CONFIG_LIBUKPRINT_LOGLEVEL: 3");
    let b = app.build();
    assert!(b.planned(), "the kconfig is in the plan key");
    assert!(!b.ran().is_empty() && b.ran().len() < all.len(), "only what reads the config header: {:?}", b.ran());

    // A component's content: that library's objects and what links them.
    let glue = app.ws.join("apps/lib-greet/glue.c");
    let text = std::fs::read_to_string(&glue).unwrap();
    std::fs::write(&glue, format!("{text}\nint kraft_keys_bump = 1;\n")).unwrap();
    let b = app.build();
    assert!(b.ran().iter().any(|a| a.contains("glue")), "{:?}", b.ran());
    assert!(!b.ran().iter().any(|a| a.starts_with("apphello/")), "the app's objects do not read the library's source: {:?}", b.ran());

    // A recipe: what it says reaches the plan key through the archives and
    // unit rules it gives (a git component's recipe hash is in the lock and
    // the plan key too); no object depends on its text.
    let recipe = app.ws.join("recipes/greet.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(&recipe, format!("{text}\n# a comment\n")).unwrap();
    let b = app.build();
    assert!(b.ran().is_empty(), "{:?}", b.ran());

    // The mount layout inside: the app's name is its mount point
    // (`/kraft/apps/<name>`) and CONFIG_UK_NAME.
    app.edit("app-hello/Kraftfile", "name: hello", "name: renamed");
    let r = app.build();
    assert!(r.planned() && !r.ran().is_empty(), "a renamed app is a new plan and new commands");
    app.edit("app-hello/Kraftfile", "name: renamed", "name: hello");
    let b = app.build();
    assert!(b.ran().is_empty(), "and renaming it back restores: {:?}", b.ran());

    // The installed image: stamped by the snapshot, reinstalled, nothing runs.
    std::fs::remove_file(b.image()).unwrap();
    let c = app.build();
    assert!(!c.noop());
    assert!(c.ran().is_empty());
    assert!(c.image().is_file());
}

#[test]
fn local_component_build_files_and_recipe_replan() {
    // A component given by a local path has no locked tree hash: its build
    // files (Makefile.uk, Config.uk) and its recipe are in the plan key by
    // content. Each edit below changes no command, so a new plan runs nothing.
    let app = App::new();
    app.build();
    let edits = [
        ("lib-greet/Makefile.uk", "library Makefile.uk"),
        ("lib-greet/Config.uk", "library Config.uk"),
        ("core/lib/ukprint/Makefile.uk", "core Makefile.uk"),
        ("../recipes/greet.toml", "library recipe"),
    ];
    for (rel, what) in edits {
        let path = app.ws.join("apps").join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}\n# kraft-keys: a comment\n")).unwrap();
        let b = app.build();
        assert!(b.planned(), "an edited {what} of a local component is a new plan:\n{}", b.stderr);
        assert!(b.ran().is_empty(), "a comment changes no command: {:?}", b.ran());
        assert!(app.build().noop(), "and then a no-op again");
    }
}

/// A make project shaped like upstream musl for `cargo xtask sysroot`
/// (a `configure` writing `config.mak` and a `Makefile` link into the build
/// dir, `make` printing its commands), small enough to build in a second.
fn write_mini_sysroot(recipes: &Utf8PathBuf, src: &Utf8PathBuf) {
    std::fs::create_dir_all(recipes).unwrap();
    std::fs::write(
        recipes.join("musl-upstream.toml"),
        "[recipe]\nname = \"musl-upstream\"\nkind = \"library\"\n\n[layout]\nmount = \"src/musl\"\n\n\
         [make]\nconfigure = [\"{src}/configure\"]\ntargets = [\"lib/libc.a\"]\n\n\
         [[units.split]]\nlibrary = \"musl-upstream\"\nby-source-dir = \"src\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(src.join("src/one")).unwrap();
    std::fs::create_dir_all(src.join("include")).unwrap();
    std::fs::write(src.join("include/one.h"), "int one(void);\n").unwrap();
    std::fs::write(src.join("src/one/one.c"), "int one(void) { return 1; }\n").unwrap();
    std::fs::write(
        src.join("configure"),
        "#!/bin/sh\nsrcdir=$(dirname \"$0\")\nprintf 'ARCH = x86_64\\nsrcdir = %s\\n' \"$srcdir\" > config.mak\n\
         ln -sf \"$srcdir/Makefile\" Makefile\nmkdir -p obj/src/one lib\n",
    )
    .unwrap();
    std::process::Command::new("chmod").args(["755", src.join("configure").as_str()]).status().unwrap();
    std::fs::write(
        src.join("Makefile"),
        "include config.mak\n\nlib/libc.a: obj/src/one/one.o\n\tar rc $@ $^\n\n\
         obj/src/one/one.o: $(srcdir)/src/one/one.c\n\tgcc -O2 -I$(srcdir)/include -MD -MF $@.d -c -o $@ $<\n",
    )
    .unwrap();
}

#[test]
fn sysroot_mount_map_in_the_noop_key() {
    use kraft::pipeline::sysroot::{build_musl, SysrootOptions};
    use kraft::source::fetch::{Fetcher, NetworkMode};
    let tmp = tempfile::tempdir().unwrap();
    let root = utf8(tmp.path());
    let (recipes_dir, a) = (root.join("recipes"), root.join("a/musl"));
    write_mini_sysroot(&recipes_dir, &a);
    let store = kraft::store::Store::open(root.join("store")).unwrap();
    let mirrors = kraft::source::mirror::Mirrors::default();
    let fetcher = Fetcher::new(&store, &mirrors, NetworkMode { offline: true });
    let recipes = kraft::source::recipe::RecipeBook::load(std::slice::from_ref(&recipes_dir)).unwrap();
    let opts = |source: &Utf8PathBuf| SysrootOptions { source: Some(source.clone()), work: root.join("work"), out: root.join("sysroot"), jobs: 2 };
    let noop = |b: &kraft::pipeline::sysroot::SysrootBuild| b.plan.graph.actions.is_empty() && b.plan.make_runs == 0;

    let cold = build_musl(&fetcher, &recipes, &opts(&a)).unwrap();
    assert!(cold.report.run > 0 && cold.report.run == cold.report.total, "{:?}", cold.report);
    let libc_a = std::fs::read(cold.sysroot.join("lib/libc.a")).unwrap();
    assert!(noop(&build_musl(&fetcher, &recipes, &opts(&a)).unwrap()), "the same source again is a no-op");

    // B: a copy of A in another directory, same work dir. Only the host
    // directory behind the source mount differs: the plan key and every
    // action key are the same, the no-op snapshot's key is not.
    let b = root.join("b/musl");
    kraft::util::fs::copy_tree(&a, &b).unwrap();
    let from_b = build_musl(&fetcher, &recipes, &opts(&b)).unwrap();
    assert!(!noop(&from_b), "A's snapshot must not vouch for B's files");
    assert!(from_b.plan.cached, "the plan key holds the source's content, not its place");
    assert_eq!(from_b.report.run, 0, "the action keys hold inside paths: {:?}", from_b.report);
    assert!(noop(&build_musl(&fetcher, &recipes, &opts(&b)).unwrap()), "then B's own snapshot holds");

    // An edit in B alone: B's build sees it (a no-op keyed without the
    // mounts would have trusted A's stamps), and A's build gets A back.
    std::fs::write(b.join("src/one/one.c"), "int one(void) { return 2; }\n").unwrap();
    let edited = build_musl(&fetcher, &recipes, &opts(&b)).unwrap();
    assert_eq!(edited.report.run, 2, "one compile and the archive: {:?}", edited.report);
    let back = build_musl(&fetcher, &recipes, &opts(&a)).unwrap();
    assert!(!noop(&back));
    assert_eq!((back.report.run, back.report.restored), (0, 2), "A's outputs come from the store: {:?}", back.report);
    assert_eq!(std::fs::read(back.sysroot.join("lib/libc.a")).unwrap(), libc_a, "A's archive again");
}

#[test]
fn what_is_in_no_key_runs_nothing() {
    let mut app = App::new();
    app.build();
    // Timestamps.
    for e in walkdir::WalkDir::new(app.ws.join("apps")).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let f = std::fs::File::options().append(true).open(e.path()).unwrap();
        f.set_modified(std::time::SystemTime::now()).unwrap();
    }
    let b = app.build();
    assert!(b.ran().is_empty(), "touched files: {:?}", b.ran());
    // Unrelated variables of the caller.
    for (k, v) in [("KRAFT_KEYS_UNRELATED", "1"), ("CC", "clang"), ("CFLAGS", "-O0"), ("TZ", "Asia/Tokyo"), ("LANG", "de_DE.UTF-8")] {
        app.set_env(k, Some(v));
    }
    let b = app.build();
    assert!(b.noop(), "unrelated variables keep a no-op a no-op:\n{}", b.stderr);
    // The store's path: moved, then used from its new place.
    let moved = app.root.join("store-moved");
    std::fs::rename(&app.store, &moved).unwrap();
    app.store = moved;
    let b = app.build();
    assert!(b.ran().is_empty(), "a moved store: {:?}", b.ran());
    assert!(!b.planned(), "the plan cache moved with the store");
    let b = app.build();
    assert!(b.noop());
}
