//! Origin-archive mutations: the bytes behind a locked archive's URL change
//! (upstream re-rolled a release tarball), served from a scratch
//! `KRAFT_ARCHIVE_DIR` that holds every archive the lock pins, one of them
//! re-rolled with a line appended to one of its C sources. As with cargo and
//! a registry crate whose content changed, in three steps:
//!
//! 1. `origin: new bytes, lock pins the old`: the store's copy is the one
//!    the lock pins, so the incremental build uses it and equals the first
//!    build; a clean build (fresh store) must fail, naming the URL, the
//!    locked and the actual sha256 and the `update` command that pins again;
//! 2. `origin: re-pinned`: the new sha256 goes into the recipe that names
//!    the archive (if one does; a recipe is this tool's registry entry; a
//!    built-in one is overridden by a workspace recipe of the same name) and
//!    `cargo xtask update <app> <component>` pins the new bytes; the build
//!    rebuilds what the archive reaches and equals a clean build;
//! 3. `origin: reverted`: the old archive, recipe and lock; everything
//!    comes back from the store.

use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use kraft::source::lock::Lock;

use super::mutations::{m, Mutation};
use super::{Compare, Corpus, World};

/// The archive the mutations re-roll: the first tarball the lock pins.
struct Pinned {
    component: String,
    name: String,
    url: String,
    sha256: String,
}

/// `tar`'s compression flag for a tarball's name, `None` for other archives.
fn compression(name: &str) -> Option<&'static str> {
    [(".tar.gz", "-z"), (".tgz", "-z"), (".tar.xz", "-J"), (".tar.bz2", "-j"), (".tar", "")]
        .iter()
        .find(|(ext, _)| name.ends_with(ext))
        .map(|(_, flag)| *flag)
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Write to `dest` the tarball `original` with one line appended to its
/// first C source under a `src` directory (else its first C source).
fn reroll(original: &Utf8Path, dest: &Utf8Path, work: &Utf8Path, flag: &str) -> Result<()> {
    let tree = work.join("tree");
    let _ = kraft::util::fs::remove_tree(&tree);
    std::fs::create_dir_all(&tree).with_context(|| format!("creating directory {tree}"))?;
    run(Command::new("tar").arg(format!("-x{}f", flag.trim_start_matches('-'))).arg(original).arg("-C").arg(&tree), &format!("tar -x {original}"))?;
    let sources: Vec<Utf8PathBuf> = walkdir::WalkDir::new(&tree)
        .sort_by_file_name()
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "c"))
        .filter_map(|e| Utf8PathBuf::from_path_buf(e.into_path()).ok())
        .collect();
    let Some(source) = sources.iter().find(|p| p.strip_prefix(&tree).is_ok_and(|rel| rel.components().any(|c| c.as_str() == "src"))).or(sources.first()) else {
        bail!("{original} holds no C source to change");
    };
    kraft::util::fs::make_writable(&tree)?;
    let text = std::fs::read_to_string(source).with_context(|| format!("reading {source}"))?;
    std::fs::write(source, text + "\nint kraft_exact_origin_probe = 1;\n").with_context(|| format!("writing {source}"))?;
    let mut top: Vec<String> = tree.read_dir_utf8()?.flatten().map(|e| e.file_name().to_string()).collect();
    top.sort();
    let mut tar = Command::new("tar");
    tar.args(["--sort=name", "--mtime=@0", "--owner=0", "--group=0", "--numeric-owner"]);
    tar.arg(format!("-c{}f", flag.trim_start_matches('-'))).arg(dest).arg("-C").arg(&tree).args(&top);
    run(&mut tar, &format!("tar -c {dest}"))?;
    kraft::util::fs::remove_tree(&tree)
}

/// Where the new sha256 goes so that `update` may pin it: the recipe of
/// `component` when it names the old one (checked on first use, or placed
/// before make). A workspace recipe is edited; a built-in one is overridden
/// by a workspace recipe of the same name (the first recipes directory),
/// as a user would. Returns the file and its new text; `None` when no
/// recipe names the archive.
fn recipe_update(corpus: &Corpus<'_>, pinned: &Pinned, new_sha256: &str) -> Result<Option<(Utf8PathBuf, String)>> {
    let recipe = corpus.session.recipes.get(&pinned.component, kraft::source::recipe::ComponentKind::Library);
    if !recipe.archive_hint(&pinned.url, &pinned.name).is_some_and(|h| h.sha256.eq_ignore_ascii_case(&pinned.sha256)) {
        return Ok(None);
    }
    let (path, text) = match kraft::source::recipe::Recipe::builtin_text(&recipe.origin) {
        Some(text) => {
            let Some(dir) = corpus.session.workspace.recipes_dirs().into_iter().next() else {
                bail!("recipe `{}` is built in and pins {}; to override it the workspace needs a recipes directory ([workspace.metadata.kraft] recipes)", recipe.name(), pinned.name);
            };
            (dir.join(format!("{}.toml", recipe.name())), text.to_string())
        }
        None => {
            let path = Utf8PathBuf::from(&recipe.origin);
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading recipe {path}"))?;
            (path, text)
        }
    };
    Ok(Some((path, text.replace(&pinned.sha256, new_sha256))))
}

/// The three origin mutations, when the lock the first build wrote pins a
/// tarball; none otherwise.
pub(super) fn mutations<'w>(corpus: &'w Corpus<'_>, start: &World, scratch: &Utf8Path, lock_path: &Utf8Path) -> Result<Vec<Mutation<'w>>> {
    let Some(lock) = Lock::read(lock_path)? else { return Ok(Vec::new()) };
    let lock = lock.lock;
    let pinned = lock
        .components
        .iter()
        .flat_map(|c| c.archives.iter().map(move |a| (c, a)))
        .find(|(_, a)| compression(&a.name).is_some())
        .map(|(c, a)| Pinned { component: c.name.clone(), name: a.name.clone(), url: a.url.clone(), sha256: a.sha256.clone() });
    let Some(pinned) = pinned else { return Ok(Vec::new()) };
    let flag = compression(&pinned.name).unwrap_or("");

    // Every archive the lock pins, from the first build's store; the chosen one re-rolled.
    let store = kraft::store::Store::open(start.store.clone())?;
    let dir = scratch.join("archives");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating directory {dir}"))?;
    for archive in lock.components.iter().flat_map(|c| &c.archives) {
        let Some(file) = store.find_archive(&archive.sha256) else { bail!("the store has no copy of {} ({})", archive.name, archive.url) };
        if archive.name != pinned.name {
            std::fs::copy(&file, dir.join(&archive.name)).with_context(|| format!("copying {file} to {dir}"))?;
        }
    }
    let original = store.find_archive(&pinned.sha256).context("the pinned archive left the store")?;
    let rerolled = dir.join(&pinned.name);
    reroll(&original, &rerolled, scratch, flag)?;
    let new_sha256 = kraft::util::hash::sha256_file(&rerolled)?;
    let recipe = recipe_update(corpus, &pinned, &new_sha256)?;
    let lock_text = std::fs::read_to_string(lock_path).with_context(|| format!("reading {lock_path}"))?;

    let mut out = Vec::new();
    out.push(m("origin", &format!("origin: {} new bytes, lock pins the old", pinned.name), Compare::BaselineCleanFails, {
        let (dir, url, old, new) = (dir.clone(), pinned.url.clone(), pinned.sha256.clone(), new_sha256.clone());
        move |w: &mut World| {
            super::mutations::set_env(w, "KRAFT_ARCHIVE_DIR", Some(dir.as_str()));
            w.expected_error = vec![url.clone(), old.clone(), new.clone(), "cargo xtask update".into()];
            Ok(())
        }
    }));
    out.push(m("origin", &format!("origin: {} re-pinned (recipe, update)", pinned.name), Compare::Clean, {
        let (recipe, component) = (recipe.clone(), pinned.component.clone());
        move |w: &mut World| {
            if let Some((path, text)) = &recipe {
                corpus.restore_at_exit(path)?;
                std::fs::write(path, text).with_context(|| format!("writing {path}"))?;
            }
            corpus.xtask(w, &["update", w.app.as_str(), &component])
        }
    }));
    out.push(m("origin", &format!("origin: {} reverted (archive, recipe, lock)", pinned.name), Compare::Baseline, {
        let (recipe, lock_path) = (recipe.map(|(p, _)| p), lock_path.to_owned());
        move |w: &mut World| {
            super::mutations::set_env(w, "KRAFT_ARCHIVE_DIR", None);
            for (path, text) in corpus.restore_at_exit.borrow().iter().filter(|(p, _)| Some(p) == recipe.as_ref()) {
                super::put_back(path, text.as_deref())?;
            }
            std::fs::write(&lock_path, &lock_text).with_context(|| format!("writing {lock_path}"))
        }
    }));
    Ok(out)
}
