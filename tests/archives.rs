//! Origin archives learned from make, pinned on first use: the fixture
//! library lib-pick has NO recipe, and its Makefile.uk downloads
//! `pick-1.0.tar.gz` or `pick-2.0.tar.gz` depending on `CONFIG_LIBPICK_V2`.
//! Real make in bubblewrap, real gcc, the real binary.

mod support;

use camino::Utf8PathBuf;
use support::*;

struct Pick {
    _tmp: tempfile::TempDir,
    root: Utf8PathBuf,
    ws: Utf8PathBuf,
}

impl Pick {
    fn new() -> Pick {
        let tmp = tempfile::tempdir().unwrap();
        let root = utf8(tmp.path());
        let ws = root.join("ws");
        make_workspace(&ws);
        for dir in ["core", "lib-pick", "app-pick"] {
            copy_dir(&fixtures().join(dir), &ws.join("apps").join(dir));
        }
        Pick { _tmp: tmp, root, ws }
    }

    fn store(&self) -> Utf8PathBuf {
        self.root.join("store")
    }

    /// `xtask ARGS app-pick` with the fixture archives in KRAFT_ARCHIVE_DIR.
    fn run(&self, global: &[&str], command: &str) -> std::process::Output {
        self.run_with(&fixtures().join("archives"), &self.store(), global, command)
    }

    fn run_with(&self, archives: &Utf8PathBuf, store: &Utf8PathBuf, global: &[&str], command: &str) -> std::process::Output {
        let mut args: Vec<&str> = global.to_vec();
        args.extend([command, "app-pick"]);
        xtask(&self.ws, store, &[("KRAFT_ARCHIVE_DIR", archives.as_str())], &args)
    }

    fn lock(&self) -> String {
        std::fs::read_to_string(self.ws.join("apps/app-pick/kraft.lock")).unwrap()
    }

    fn choose_v2(&self) {
        let path = self.ws.join("apps/app-pick/Kraftfile");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("CONFIG_LIBPICK_V2: 'n'", "CONFIG_LIBPICK_V2: 'y'")).unwrap();
    }

    fn image_says(&self) -> String {
        let image = self.ws.join("target/kraft/app-pick/linuxu-x86_64/pick_linuxu-x86_64");
        let out = std::process::Command::new(&image).output().unwrap_or_else(|e| panic!("running {image}: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn archive_sha(name: &str) -> String {
    sha256_hex(&fixtures().join("archives").join(name))
}

#[test]
fn an_archive_chosen_by_kconfig_is_locked_built_and_rebuilt_offline() {
    let pick = Pick::new();
    assert!(!fixtures().join("recipes/pick.toml").exists(), "lib-pick must have no recipe");

    // First build: make asks for pick-1.0.tar.gz; it is fetched and pinned.
    let first = pick.run(&[], "build");
    assert_ok(&first);
    assert!(stderr(&first).contains("Locking pick archive pick-1.0.tar.gz"), "{}", stderr(&first));
    let lock = pick.lock();
    assert!(lock.contains("url = \"https://example.invalid/pick/pick-1.0.tar.gz\""), "{lock}");
    assert!(lock.contains(&archive_sha("pick-1.0.tar.gz")), "{lock}");
    assert!(!lock.contains("pick-2.0"), "{lock}");
    assert!(pick.image_says().contains("pick 1.0"));
    // Got while make waited: `fetch prepare` ran once, not again once pinned.
    assert!(stderr(&first).contains("(3 make runs"), "{}", stderr(&first));
    let image = pick.ws.join("target/kraft/app-pick/linuxu-x86_64/pick_linuxu-x86_64");
    let first_image = std::fs::read(&image).unwrap();

    // Rebuild offline with --locked: nothing to fetch, nothing changes.
    let again = pick.run(&["--offline", "--locked"], "build");
    assert_ok(&again);
    assert_eq!(pick.lock(), lock);

    // A fresh checkout (no build dir, no plan cache), offline, without the
    // archive directory: the store's pinned copy is served to make.
    std::fs::remove_dir_all(pick.ws.join("target")).unwrap();
    std::fs::remove_dir_all(pick.store().join("plans")).unwrap();
    let nowhere = pick.root.join("no-archives");
    std::fs::create_dir_all(&nowhere).unwrap();
    let offline = pick.run_with(&nowhere, &pick.store(), &["--frozen"], "build");
    assert_ok(&offline);
    assert!(pick.image_says().contains("pick 1.0"));
    // Pinned before make ran or while it ran: the same image.
    assert_eq!(std::fs::read(&image).unwrap(), first_image, "the image differs from the first build's");
}

#[test]
fn switching_the_choice_locks_the_new_archive_and_locked_refuses_it() {
    let pick = Pick::new();
    assert_ok(&pick.run(&[], "build"));
    pick.choose_v2();

    // --locked: the new archive is named, with the command that adds it.
    let locked = pick.run(&["--locked"], "build");
    assert_fails_with(&locked, "origin archive pick-2.0.tar.gz (https://example.invalid/pick/pick-2.0.tar.gz)");
    assert_fails_with(&locked, "--locked");
    assert_fails_with(&locked, "run `cargo xtask build app-pick` without --locked");
    assert!(!pick.lock().contains("pick-2.0"));

    // Without it, the next build locks it, as cargo does a new dependency.
    let build = pick.run(&[], "build");
    assert_ok(&build);
    let lock = pick.lock();
    assert!(lock.contains(&archive_sha("pick-2.0.tar.gz")), "{lock}");
    assert!(lock.contains(&archive_sha("pick-1.0.tar.gz")), "the other choice stays pinned:\n{lock}");
    assert!(pick.image_says().contains("pick 2.0"));
}

#[test]
fn a_changed_archive_fails_with_both_hashes_and_update_pins_it_again() {
    let pick = Pick::new();
    assert_ok(&pick.run(&[], "build"));
    let pinned = archive_sha("pick-1.0.tar.gz");

    // Upstream "moved": the same URL now serves other bytes. A fresh store
    // must fetch it again, and the lock catches the difference.
    let moved = pick.root.join("moved");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::copy(fixtures().join("archives/pick-2.0.tar.gz"), moved.join("pick-1.0.tar.gz")).unwrap();
    let actual = sha256_hex(&moved.join("pick-1.0.tar.gz"));
    let fresh = pick.root.join("fresh-store");
    std::fs::remove_dir_all(pick.ws.join("target")).unwrap();
    let out = pick.run_with(&moved, &fresh, &[], "build");
    assert_fails_with(&out, &pinned);
    assert_fails_with(&out, &actual);
    assert_fails_with(&out, "https://example.invalid/pick/pick-1.0.tar.gz");
    assert_fails_with(&out, "cargo xtask update app-pick pick");

    // `update` drops what the library's old pin learned; the next build
    // learns it again.
    let update = xtask(&pick.ws, &fresh, &[], &["update", "app-pick", "pick"]);
    assert_ok(&update);
    assert!(!pick.lock().contains(&pinned), "{}", pick.lock());
    let rebuilt = pick.run(&[], "build");
    assert_ok(&rebuilt);
    assert!(pick.lock().contains(&pinned));
}
