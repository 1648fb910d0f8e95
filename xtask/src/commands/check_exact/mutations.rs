//! The corpus of `check-exact`: each mutation changes one input of the app
//! copy (or of its environment), most followed by one that reverts it.

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use super::{Compare, Corpus, World};

/// Lines of a text file, for small edits.
fn edit(path: &Utf8Path, f: impl FnOnce(String) -> String) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    std::fs::write(path, f(text)).with_context(|| format!("writing {path}"))
}

fn touch(path: &Utf8Path) -> Result<()> {
    let file = std::fs::File::options().append(true).open(path).with_context(|| format!("opening {path}"))?;
    file.set_modified(std::time::SystemTime::now()).with_context(|| format!("touching {path}"))
}

/// The first `config X` / `bool` symbol of a Config.uk.
fn bool_symbols(config_uk: &Utf8Path) -> Vec<String> {
    let text = std::fs::read_to_string(config_uk).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.trim().strip_prefix("config ") {
            if lines.get(i + 1).is_some_and(|l| l.trim().starts_with("bool")) {
                let default_y = lines[i + 1..].iter().take(6).any(|l| l.trim() == "default y");
                out.push(format!("CONFIG_{}={}", name.trim(), if default_y { "n" } else { "y" }));
            }
        }
    }
    out
}

/// Add `CONFIG_X: v` to the kconfig of the Kraftfile's `unikraft` entry
/// (the map form is made from the string form when needed).
fn add_kconfig(kraftfile: &Utf8Path, setting: &str) -> Result<()> {
    let (key, value) = setting.split_once('=').unwrap_or((setting, "y"));
    let entry = format!("    {key}: '{value}'");
    let text = std::fs::read_to_string(kraftfile).with_context(|| format!("reading {kraftfile}"))?;
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let Some(i) = lines.iter().position(|l| l.starts_with("unikraft:")) else {
        bail!("{kraftfile}: no `unikraft:` entry to add {setting} to");
    };
    let scalar = lines[i]["unikraft:".len()..].trim().to_string();
    if !scalar.is_empty() {
        lines[i] = "unikraft:".into();
        lines.splice(i + 1..i + 1, [format!("  version: {scalar}"), "  kconfig:".into(), entry]);
    } else {
        let end = lines[i + 1..].iter().position(|l| !l.starts_with(' ') && !l.trim().is_empty()).map_or(lines.len(), |p| i + 1 + p);
        match lines[i + 1..end].iter().position(|l| l.trim_end() == "  kconfig:") {
            Some(k) => lines.insert(i + 2 + k, entry),
            None => lines.splice(i + 1..i + 1, ["  kconfig:".to_string(), entry]).for_each(drop),
        }
    }
    std::fs::write(kraftfile, lines.join("\n") + "\n").with_context(|| format!("writing {kraftfile}"))
}

/// The library name `addlib` gives in a Makefile.uk (`apphello`).
fn addlib_name(makefile: &Utf8Path) -> Option<String> {
    let text = std::fs::read_to_string(makefile).ok()?;
    let start = text.find("addlib,")? + "addlib,".len();
    let rest = &text[start..];
    Some(rest[..rest.find(')')?].trim().to_string())
}

type Apply<'w> = Box<dyn Fn(&mut World) -> Result<()> + 'w>;

pub(super) struct Mutation<'w> {
    pub group: &'static str,
    pub name: String,
    pub compare: Compare,
    pub apply: Apply<'w>,
}

pub(super) fn m<'w>(group: &'static str, name: &str, compare: Compare, apply: impl Fn(&mut World) -> Result<()> + 'w) -> Mutation<'w> {
    Mutation { group, name: name.to_string(), compare, apply: Box::new(apply) }
}

pub(super) fn set_env(world: &mut World, key: &str, value: Option<&str>) {
    world.env.retain(|(k, _)| k != key);
    if let Some(v) = value {
        world.env.push((key.into(), v.into()));
    }
}

/// A directory visible inside the sandbox (under `/usr`) for toolchain
/// wrappers, or `None` when `/usr/local` is not writable.
fn wrapper_dir() -> Option<Utf8PathBuf> {
    let dir = Utf8PathBuf::from(format!("/usr/local/kraft-exact-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("bin")).ok()?;
    Some(dir)
}

pub(super) fn cleanup_wrappers() {
    let _ = std::fs::remove_dir_all(format!("/usr/local/kraft-exact-{}", std::process::id()));
}

/// Write a compiler wrapper for every compiler name the target may use.
fn write_wrappers(bin: &Utf8Path, flags: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for name in ["gcc", "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc"] {
        let real = Utf8Path::new("/usr/bin").join(name);
        if !real.is_file() {
            continue;
        }
        let path = bin.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("#!/bin/sh\nexec {real} \"$@\" {flags}\n")).with_context(|| format!("writing {path}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("chmod {path}"))?;
    }
    Ok(())
}

/// The mutations, in order. Each group leaves the world as it found it.
/// Called after the first build, whose lock names the origin archives.
pub(super) fn corpus_for<'w>(corpus: &'w Corpus<'_>, start: &World, scratch: &Utf8Path) -> Result<Vec<Mutation<'w>>> {
    use Compare::{Baseline, Clean};
    let app = start.app.clone();
    let kraftfile = app.join(&corpus.kraftfile_name);
    let source = ["main.c", "hello.c"].iter().map(|n| app.join(n)).find(|p| p.is_file()).unwrap_or_else(|| app.join("main.c"));
    let source_name = source.file_name().unwrap_or("main.c").to_string();
    let makefile = app.join("Makefile.uk");
    let lib = addlib_name(&makefile).unwrap_or_else(|| "app".into());
    let original_source = std::fs::read_to_string(&source).unwrap_or_default();
    let original_kraftfile = std::fs::read_to_string(&kraftfile).unwrap_or_default();
    let original_makefile = std::fs::read_to_string(&makefile).unwrap_or_default();
    let symbols = bool_symbols(&app.join("Config.uk"));
    let header = app.join("kraft_exact.h");
    let mut out: Vec<Mutation<'w>> = Vec::new();

    let restore = |path: Utf8PathBuf, text: String| move |_: &mut World| std::fs::write(&path, &text).with_context(|| format!("writing {path}"));
    let append = |path: Utf8PathBuf, line: &'static str| move |_: &mut World| edit(&path, |t| t + line);

    // Sources.
    out.push(m("source", "source: new global", Clean, append(source.clone(), "\nint kraft_exact_probe = 1;\n")));
    out.push(m("source", "source: value changed", Clean, {
        let s = source.clone();
        move |_: &mut World| edit(&s, |t| t.replace("kraft_exact_probe = 1", "kraft_exact_probe = 2"))
    }));
    out.push(m("source", "source: reverted", Baseline, restore(source.clone(), original_source.clone())));
    out.push(m("source", "source: comment only", Clean, append(source.clone(), "/* kraft-exact: same object */\n")));
    out.push(m("source", "source: comment reverted", Baseline, restore(source.clone(), original_source.clone())));
    out.push(m("source", "source: touched", Baseline, {
        let s = source.clone();
        move |_: &mut World| touch(&s)
    }));
    out.push(m("source", "source: same bytes rewritten", Baseline, restore(source.clone(), original_source.clone())));
    out.push(m("source", "app: every file touched", Baseline, {
        let a = app.clone();
        move |_: &mut World| {
            for e in walkdir::WalkDir::new(&a).into_iter().flatten().filter(|e| e.file_type().is_file()) {
                touch(Utf8Path::from_path(e.path()).context("non-UTF-8 path")?)?;
            }
            Ok(())
        }
    }));

    // Headers.
    out.push(m("header", "header: added and included", Clean, {
        let (s, h, n) = (source.clone(), header.clone(), source_name.clone());
        move |_: &mut World| {
            std::fs::write(&h, "#define KRAFT_EXACT 1\nstatic const int kraft_exact_h = KRAFT_EXACT;\n")?;
            let _ = &n;
            edit(&s, |t| format!("#include \"kraft_exact.h\"\n{t}"))
        }
    }));
    out.push(m("header", "header: value changed", Clean, {
        let h = header.clone();
        move |_: &mut World| edit(&h, |t| t.replace("KRAFT_EXACT 1", "KRAFT_EXACT 2"))
    }));
    out.push(m("header", "header: touched", Clean, {
        let h = header.clone();
        move |_: &mut World| touch(&h)
    }));
    out.push(m("header", "header: comment only", Clean, append(header.clone(), "/* comment */\n")));
    out.push(m("header", "header: removed", Baseline, {
        let (s, h, text) = (source.clone(), header.clone(), original_source.clone());
        move |_: &mut World| {
            std::fs::write(&s, &text)?;
            std::fs::remove_file(&h).with_context(|| format!("removing {h}"))
        }
    }));

    // Kconfig values, and so the generated config header.
    for symbol in symbols.iter().take(2) {
        let name = symbol.split('=').next().unwrap_or("").to_string();
        out.push(m("kconfig", &format!("kconfig: {symbol}"), Clean, {
            let (k, s) = (kraftfile.clone(), symbol.clone());
            move |_: &mut World| add_kconfig(&k, &s)
        }));
        out.push(m("kconfig", &format!("kconfig: {name} reverted"), Baseline, restore(kraftfile.clone(), original_kraftfile.clone())));
    }

    // Build description: a flag for the app's library.
    out.push(m("makefile", "Makefile.uk: -D flag added", Clean, {
        let (mk, lib) = (makefile.clone(), lib.to_uppercase());
        move |_: &mut World| edit(&mk, |t| format!("{t}\n{lib}_CFLAGS-y += -DKRAFT_EXACT_MK=1\n"))
    }));
    out.push(m("makefile", "Makefile.uk: reverted", Baseline, restore(makefile.clone(), original_makefile.clone())));

    // Build descriptions changed without changing what is built: a new
    // plan, and no action runs.
    out.push(m("makefile", "Makefile.uk: comment added", Baseline, append(makefile.clone(), "\n# kraft-exact: a comment\n")));
    out.push(m("makefile", "Makefile.uk: comment reverted", Baseline, restore(makefile.clone(), original_makefile.clone())));
    let config_uk = app.join("Config.uk");
    if config_uk.is_file() {
        let original = std::fs::read_to_string(&config_uk).unwrap_or_default();
        out.push(m("makefile", "Config.uk: comment added", Baseline, append(config_uk.clone(), "\n# kraft-exact: a comment\n")));
        out.push(m("makefile", "Config.uk: comment reverted", Baseline, restore(config_uk.clone(), original)));
    }

    // Recipes of the workspace (a component's recipe is in the lock and keys).
    if let Some(recipe) = corpus.session.workspace.recipes_dirs().iter().filter_map(|d| d.read_dir_utf8().ok()).flatten().flatten().map(|e| e.path().to_owned()).find(|p| p.extension() == Some("toml")) {
        let original = std::fs::read_to_string(&recipe).unwrap_or_default();
        out.push(m("recipe", "recipe: edited", Clean, append(recipe.clone(), "\n# kraft-exact: a recipe edit\n")));
        out.push(m("recipe", "recipe: reverted", Baseline, restore(recipe.clone(), original)));
    }

    // The toolchain: wrappers found first in KRAFT_SANDBOX_PATH.
    if let Some(dir) = wrapper_dir() {
        let bin = dir.join("bin");
        let path = format!("{bin}:/usr/bin:/bin");
        out.push(m("toolchain", "toolchain: wrapper adds -D", Clean, {
            let (bin, path) = (bin.clone(), path.clone());
            move |w: &mut World| {
                write_wrappers(&bin, "-DKRAFT_EXACT_WRAPPER=1")?;
                set_env(w, "KRAFT_SANDBOX_PATH", Some(&path));
                Ok(())
            }
        }));
        out.push(m("toolchain", "toolchain: wrapper edited", Clean, {
            let bin = bin.clone();
            move |_: &mut World| write_wrappers(&bin, "-DKRAFT_EXACT_WRAPPER=2 -O1")
        }));
        out.push(m("toolchain", "toolchain: wrapper is a link", Clean, {
            let bin = bin.clone();
            move |_: &mut World| {
                for e in bin.read_dir_utf8()?.flatten() {
                    let name = e.file_name().to_string();
                    std::fs::remove_file(e.path())?;
                    std::os::unix::fs::symlink(Utf8Path::new("/usr/bin").join(&name), e.path())?;
                }
                Ok(())
            }
        }));
        out.push(m("toolchain", "toolchain: wrapper dir gone", Baseline, {
            let dir = dir.clone();
            move |w: &mut World| {
                set_env(w, "KRAFT_SANDBOX_PATH", None);
                let _ = std::fs::remove_dir_all(dir.join("bin"));
                std::fs::create_dir_all(dir.join("bin")).with_context(|| format!("creating {dir}/bin"))
            }
        }));
    }

    // The environment.
    for (key, value) in [("KRAFT_EXACT_UNRELATED", "1"), ("LANG", "de_DE.UTF-8"), ("TZ", "Asia/Tokyo"), ("SOURCE_DATE_EPOCH", "1"), ("CFLAGS", "-O0"), ("CC", "clang")] {
        out.push(m("env", &format!("env: {key}={value}"), Baseline, move |w: &mut World| {
            set_env(w, key, Some(value));
            Ok(())
        }));
    }
    let home = scratch.join("home");
    // cargo itself (run for `cargo metadata`, through rustup) is still found
    // where the caller's home keeps it.
    let config = kraft::config::Config::get();
    let cargo_home = config.cargo_home.clone().or_else(|| config.home.as_ref().map(|h| h.join(".cargo")));
    let rustup_home = config.home.as_ref().map(|h| h.join(".rustup")).filter(|p| p.is_dir());
    out.push(m("env", "env: HOME elsewhere", Baseline, move |w: &mut World| {
        std::fs::create_dir_all(&home).with_context(|| format!("creating {home}"))?;
        set_env(w, "HOME", Some(home.as_str()));
        if let Some(dir) = &cargo_home {
            set_env(w, "CARGO_HOME", Some(dir.as_str()));
        }
        if let Some(dir) = &rustup_home {
            set_env(w, "RUSTUP_HOME", Some(dir.as_str()));
        }
        Ok(())
    }));
    let cache_home = scratch.join("xdg-cache");
    out.push(m("env", "env: XDG_CACHE_HOME elsewhere", Baseline, move |w: &mut World| {
        set_env(w, "XDG_CACHE_HOME", Some(cache_home.as_str()));
        Ok(())
    }));
    if kraft::exec::sandbox::bwrap_usable().is_ok() {
        out.push(m("env", "env: KRAFT_SANDBOX=bwrap spelled out", Baseline, |w: &mut World| {
            set_env(w, "KRAFT_SANDBOX", Some("bwrap"));
            Ok(())
        }));
    }
    out.push(m("env", "env: unrelated variables unset", Baseline, |w: &mut World| {
        w.env.clear();
        Ok(())
    }));
    out.push(m("env", "env: KRAFT_SANDBOX_PATH default spelled out", Baseline, |w: &mut World| {
        set_env(w, "KRAFT_SANDBOX_PATH", Some("/usr/bin:/bin"));
        Ok(())
    }));
    out.push(m("env", "env: KRAFT_SANDBOX_PATH another dir", Clean, |w: &mut World| {
        set_env(w, "KRAFT_SANDBOX_PATH", Some("/usr/local/bin:/usr/bin:/bin"));
        Ok(())
    }));
    out.push(m("env", "env: KRAFT_SANDBOX_PATH reverted", Baseline, |w: &mut World| {
        set_env(w, "KRAFT_SANDBOX_PATH", None);
        Ok(())
    }));

    // Components: a local library's source (a path component is hashed by content).
    let lib_sources: Vec<Utf8PathBuf> = app
        .parent()
        .and_then(|p| p.read_dir_utf8().ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().starts_with("lib-") && e.path().is_dir())
        .filter_map(|e| walkdir::WalkDir::new(e.path()).sort_by_file_name().into_iter().flatten().find(|f| f.path().extension().is_some_and(|x| x == "c")))
        .filter_map(|f| Utf8PathBuf::from_path_buf(f.into_path()).ok())
        .collect();
    if let Some(lib_source) = lib_sources.first().filter(|_| original_kraftfile.contains("../")) {
        let original = std::fs::read_to_string(lib_source).unwrap_or_default();
        out.push(m("component", "component: library source bumped", Clean, append(lib_source.clone(), "\nint kraft_exact_lib_probe = 3;\n")));
        out.push(m("component", "component: library reverted", Baseline, restore(lib_source.clone(), original)));
    }

    // Origin archives: new bytes under the same URL (see `origin.rs`).
    out.extend(super::origin::mutations(corpus, start, scratch, &app.join("kraft.lock")).context("preparing the origin-archive mutations")?);

    // The checkout: moved, copied and edited, renamed.
    let src_root = app.parent().map(|p| if original_kraftfile.contains("../") { p.to_owned() } else { app.clone() }).unwrap_or_else(|| app.clone());
    let rel_app = app.strip_prefix(src_root.parent().unwrap_or(&src_root)).map(|p| p.to_owned()).unwrap_or_else(|_| app.clone());
    let moved = scratch.join("moved");
    let copied = scratch.join("copy");
    out.push(m("checkout", "checkout: moved", Clean, {
        let (from, to, rel) = (src_root.clone(), moved.clone(), rel_app.clone());
        move |w: &mut World| {
            std::fs::create_dir_all(&to)?;
            let dest = to.join(from.file_name().unwrap_or("src"));
            std::fs::rename(&from, &dest).with_context(|| format!("moving {from} to {dest}"))?;
            w.app = to.join(&rel);
            Ok(())
        }
    }));
    out.push(m("checkout", "checkout: moved back", Baseline, {
        let (from, to, app) = (src_root.clone(), moved.clone(), app.clone());
        move |w: &mut World| {
            let dest = to.join(from.file_name().unwrap_or("src"));
            std::fs::rename(&dest, &from).with_context(|| format!("moving {dest} to {from}"))?;
            w.app = app.clone();
            Ok(())
        }
    }));
    out.push(m("checkout", "checkout: copy with an edit (B)", Clean, {
        let (from, to, rel, name) = (src_root.clone(), copied.clone(), rel_app.clone(), source_name.clone());
        move |w: &mut World| {
            let dest = to.join(from.file_name().unwrap_or("src"));
            kraft::util::fs::copy_tree(&from, &dest)?;
            w.app = to.join(&rel);
            edit(&w.app.join(&name), |t| t + "\nint kraft_exact_copy_b = 42;\n")
        }
    }));
    out.push(m("checkout", "checkout: original again (A)", Baseline, {
        let app = app.clone();
        move |w: &mut World| {
            w.app = app.clone();
            Ok(())
        }
    }));
    out.push(m("checkout", "checkout: app renamed", Clean, {
        let k = kraftfile.clone();
        move |_: &mut World| {
            edit(&k, |t| {
                let mut lines: Vec<String> = t.lines().map(String::from).collect();
                match lines.iter().position(|l| l.starts_with("name:")) {
                    Some(i) => lines[i] = "name: kraftexact".into(),
                    None => lines.push("name: kraftexact".into()),
                }
                lines.join("\n") + "\n"
            })
        }
    }));
    out.push(m("checkout", "checkout: name reverted", Baseline, restore(kraftfile.clone(), original_kraftfile.clone())));

    // The store and the target dir: where things live is not an input.
    let moved_store = scratch.join("store-moved");
    out.push(m("store", "store: moved", Baseline, {
        let to = moved_store.clone();
        move |w: &mut World| {
            std::fs::rename(&w.store, &to).with_context(|| format!("moving {} to {to}", w.store))?;
            w.store = to.clone();
            Ok(())
        }
    }));
    out.push(m("store", "store: moved back", Baseline, {
        let to = start.store.clone();
        move |w: &mut World| {
            std::fs::rename(&w.store, &to).with_context(|| format!("moving {} to {to}", w.store))?;
            w.store = to.clone();
            Ok(())
        }
    }));
    let target_dir = corpus.target_dir.clone();
    let app_name = corpus.app_name.clone();
    let only_target = corpus.target.clone();
    let out_dirs = move || -> Vec<Utf8PathBuf> {
        let dir = target_dir.join("kraft").join(&app_name);
        dir.read_dir_utf8()
            .map(|r| r.flatten().map(|e| e.path().to_owned()).filter(|p| only_target.as_ref().is_none_or(|t| p.ends_with(t.replace('/', "-")))).collect())
            .unwrap_or_default()
    };
    for (name, what) in [("target: no-op snapshot removed", "noop.json"), ("target: build state removed", "state.json"), ("target: build dir removed", "build")] {
        let out_dirs = out_dirs.clone();
        out.push(m("target", name, Baseline, move |_: &mut World| {
            for dir in out_dirs() {
                let path = dir.join(what);
                if path.is_dir() {
                    kraft::util::fs::remove_tree(&path)?;
                } else {
                    let _ = std::fs::remove_file(&path);
                }
            }
            Ok(())
        }));
    }
    out.push(m("target", "target: installed image removed", Baseline, {
        let out_dirs = out_dirs.clone();
        move |_: &mut World| {
            for dir in out_dirs() {
                for e in dir.read_dir_utf8()?.flatten() {
                    if e.path().is_file() && !e.file_name().contains('.') {
                        std::fs::remove_file(e.path())?;
                    }
                }
            }
            Ok(())
        }
    }));
    out.push(m("target", "no change at all", Baseline, |_: &mut World| Ok(())));
    Ok(out)
}
