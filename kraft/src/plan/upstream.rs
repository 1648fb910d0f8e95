//! Planning a standalone make-based component whose make *prints* its
//! commands (upstream musl), with the same engine as Unikraft's `.cmd`-file
//! builds: [`plan::parse_make_n`](crate::plan::parse_make_n) reads the
//! printed lines (a line that runs a `.cmd` file takes that file's text,
//! any other command line is taken as is), and the shared analysis finds
//! outputs (`-o`, redirects, `ar`'s archive, `cp`'s target), inputs
//! (existing path-like words, other actions' outputs) and depfiles (`-MF`,
//! `-Wp,-MD,`), and builds the graph. Only the preparation differs:
//!
//! 1. the source tree is mounted read-only at the recipe's mount
//!    (`/kraft/src/musl`), the (emptied) build dir at `/kraft/build`;
//! 2. the recipe's `configure` runs in the build dir (an out-of-tree build:
//!    musl's configure writes `config.mak` and a `Makefile` symlink there);
//! 3. `config-append` lines go to the end of `config.mak` (musl writes no
//!    depfiles, so the recipe asks the compiler for `-MD -MF $@.d`);
//! 4. `make -n <targets>` is captured and parsed.
//!
//! Units: a compile whose source lies below `<mount>/<by-source-dir>/<dir>/`
//! is in unit `src/<dir>` (the first directory only: `src/string/x86_64/`
//! is in `src/string`), other compiles in their source's top directory
//! (`crt`), archives and copies into `lib/` in `lib`, the rest in `prepare`.
//!
//! The prepared build dir (config.mak, Makefile link) and the graph are
//! cached by a key like [`plan::plan_key`](crate::plan::plan_key); a build
//! dir already prepared for the same key is left alone, so a no-op build
//! finds every object where the last build left it.

use crate::util::shell::quote;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::plan::graph::{ActionKind, Graph, SANDBOX_ROOT};
use crate::plan::{self, inside_build, Plan, PLAN_FORMAT};
use crate::source::recipe::{MakeSpec, Recipe};
use crate::exec::sandbox::{Mount, Sandbox};

/// Everything planning a make-based component needs. Host paths absolute.
#[derive(Debug, Clone)]
pub struct MakePlanInput {
    /// Component name (the recipe's).
    pub name: String,
    /// The source tree (read-only), e.g. the unpacked musl-1.2.3/.
    pub source: Utf8PathBuf,
    /// Where `source` is mounted, e.g. `/kraft/src/musl`.
    pub mount: Utf8PathBuf,
    /// Writable build dir → `/kraft/build`.
    pub build: Utf8PathBuf,
    pub spec: MakeSpec,
    /// Unit split: sources below `<mount>/<this>/<dir>/` form `<this>/<dir>`.
    pub split_by_source_dir: Option<String>,
    pub env: Vec<(String, String)>,
    /// blake3 of the recipe (part of the key).
    pub recipe_hash: String,
}

impl MakePlanInput {
    /// The input for `recipe` (which must have a `[make]` section) on a
    /// source tree and a build dir.
    pub fn from_recipe(recipe: &Recipe, source: &Utf8Path, build: &Utf8Path) -> Result<MakePlanInput> {
        let Some(spec) = recipe.file.make.clone() else {
            bail!("recipe {} ({}) has no [make] section", recipe.name(), recipe.origin);
        };
        let split = recipe.file.units.split.iter().find(|s| s.library == recipe.name()).map(|s| s.by_source_dir.clone());
        Ok(MakePlanInput {
            name: recipe.name().to_string(),
            source: source.to_owned(),
            mount: Utf8PathBuf::from(format!("{SANDBOX_ROOT}/{}", recipe.mount(recipe.name()))),
            build: build.to_owned(),
            spec,
            split_by_source_dir: split,
            env: vec![("SOURCE_DATE_EPOCH".into(), "0".into())],
            recipe_hash: recipe.hash.clone(),
        })
    }

    pub fn mounts(&self) -> Vec<Mount> {
        vec![Mount::ro(self.source.clone(), self.mount.clone()), Mount::rw(self.build.clone(), inside_build())]
    }

    /// The configure command line (`{src}` replaced), shell-quoted.
    pub fn configure_command(&self) -> String {
        self.spec
            .configure
            .iter()
            .map(|w| quote(&w.replace("{src}", self.mount.as_str())))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn make_n_command(&self) -> String {
        let targets: Vec<String> = self.spec.targets.iter().map(|t| quote(t)).collect();
        format!("make -n {}", targets.join(" "))
    }
}

/// Plans `input`; see the module docs. `cache_dir` is shared with
/// [`plan::plan`] (`<store>/plans`): keys of the two kinds never collide.
pub fn plan(input: &MakePlanInput, cache_dir: Option<&Utf8Path>) -> Result<Plan> {
    let start = Instant::now();
    std::fs::create_dir_all(&input.build).with_context(|| format!("creating build dir {}", input.build))?;
    let sandbox = Sandbox::new(input.mounts(), input.env.clone())?.with_shell_stand_in();
    let key = plan_key(input, &sandbox)?;
    let entry = cache_dir.map(|c| c.join(&key));
    if let Some(entry) = &entry {
        if let Some(cached) = plan::load_cached(entry)? {
            if plan::restore_prepared(entry, &input.build, &key, &cached.graph)? {
                let (graph, warnings) = (cached.graph, cached.warnings);
                return Ok(Plan { graph, key, cached: true, make_runs: 0, elapsed: start.elapsed(), warnings, make_seconds: Vec::new() });
            }
        }
    }

    plan::set_aside(&input.build)?;
    // Commands in a new sandbox: one started before sees the old dir.
    let sandbox = Sandbox::new(input.mounts(), input.env.clone())?.with_shell_stand_in();
    let build = inside_build();
    let mut make_runs = 0;
    let make_seconds = std::cell::RefCell::new(Vec::new());
    let run = |what: &str, script: &str| -> Result<String> {
        let began = Instant::now();
        let out = sandbox.run(script, &build)?;
        make_seconds.borrow_mut().push((what.to_owned(), began.elapsed().as_secs_f64()));
        if !out.status.success() {
            bail!(
                "`{what}` failed in the {} sandbox ({}):\n{}{}",
                sandbox.backend(),
                out.status,
                crate::util::text::tail(&String::from_utf8_lossy(&out.stdout), 20),
                crate::util::text::tail(&String::from_utf8_lossy(&out.stderr), 40)
            );
        }
        Ok(sandbox.rewrite_to_inside(&String::from_utf8_lossy(&out.stdout)))
    };
    run("configure", &input.configure_command())?;
    if !input.spec.config_append.is_empty() {
        let config = input.build.join(&input.spec.config_file);
        let mut text = std::fs::read_to_string(&config)
            .with_context(|| format!("configure wrote no {}", input.spec.config_file))?;
        text.push_str("# added by kraft-xtask (recipe config-append)\n");
        for line in &input.spec.config_append {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&config, text)?;
    }
    make_runs += 1;
    let printed = run("make -n", &input.make_n_command())?;
    let mut graph = plan::parse_make_n(&printed, &sandbox, &[])?;
    assign_units(&mut graph, input);
    let warnings = Vec::new();
    if let Some(entry) = &entry {
        plan::store_cached(entry, &graph, &warnings, &input.build)?;
    }
    plan::write_marker(&input.build, &key)?;
    Ok(Plan { graph, key, cached: false, make_runs, elapsed: start.elapsed(), warnings, make_seconds: make_seconds.into_inner() })
}

fn assign_units(graph: &mut Graph, input: &MakePlanInput) {
    let build = inside_build();
    for a in &mut graph.actions {
        let source = if a.kind == ActionKind::Compile {
            let words: Vec<&str> = a.script.split_whitespace().collect();
            words.iter().rev().find(|w| w.starts_with(input.mount.as_str())).map(|w| Utf8PathBuf::from(*w))
        } else {
            None
        };
        a.unit = match source.as_ref().and_then(|s| s.strip_prefix(&input.mount).ok()) {
            Some(rel) => {
                let comps: Vec<&str> = rel.components().map(|c| c.as_str()).collect();
                match (&input.split_by_source_dir, comps.as_slice()) {
                    (Some(split), [top, dir, _, ..]) if top == split => format!("{top}/{dir}"),
                    (_, [top, _, ..]) => top.to_string(),
                    _ => "top".into(),
                }
            }
            None => {
                let in_lib = a.outputs.first().is_some_and(|o| o.starts_with(build.join("lib")));
                if in_lib { "lib".into() } else { "prepare".into() }
            }
        };
    }
}

/// The plan key: format, recipe, configure/make commands, mount layout,
/// the source's identity ([`source_fingerprint`]), env, sandbox backend and
/// tool versions.
pub fn plan_key(input: &MakePlanInput, sandbox: &Sandbox) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("kind", b"make-printed");
    field("format", &PLAN_FORMAT.to_le_bytes());
    field("recipe", input.recipe_hash.as_bytes());
    field("spec", serde_json::to_string(&input.spec)?.as_bytes());
    field("mount", input.mount.as_str().as_bytes());
    field("split", format!("{:?}", input.split_by_source_dir).as_bytes());
    field("source", source_fingerprint(&input.source)?.as_bytes());
    for (k, v) in &input.env {
        field("env", format!("{k}={v}").as_bytes());
    }
    field("backend", sandbox.backend().as_bytes());
    field("tools", crate::plan::key::tool_versions(sandbox, None).as_bytes());
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// What can change what configure and `make -n` do: the list of every
/// file's relative path (musl's Makefile globs `src/*/*.c`), and the content
/// of `configure`, `Makefile*`, `*.mak` and `VERSION`. Editing a `.c` file
/// does not change it (the executor sees that edit).
pub fn source_fingerprint(dir: &Utf8Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git") {
        let entry = entry?;
        if entry.file_type().is_dir() {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        h.update(rel.as_bytes());
        h.update(&[0]);
        let name = entry.file_name().to_string_lossy();
        let describes = name == "configure" || name.starts_with("Makefile") || name.ends_with(".mak") || name == "VERSION";
        if describes && entry.file_type().is_file() {
            let data = std::fs::read(entry.path())?;
            h.update(&(data.len() as u64).to_le_bytes());
            h.update(&data);
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

/// `ARCH = x86_64` from the prepared build dir's `config.mak`.
pub fn configured_arch(build: &Utf8Path) -> Result<String> {
    let text = std::fs::read_to_string(build.join("config.mak")).with_context(|| format!("reading {build}/config.mak"))?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "ARCH")
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .context("config.mak sets no ARCH")
}

/// Lays out a musl sysroot at `out` (`include/`, `lib/`), as musl's
/// `install-headers` and `install-libs` would (without the shared library
/// and the gcc wrapper): headers from `include/`, `arch/generic/bits/` and
/// `arch/<ARCH>/bits/` (the latter wins) and the generated
/// `obj/include/bits/*.h`; `lib/*.a` and `lib/*.o` from the build dir.
/// `out` is replaced.
pub fn install_musl_sysroot(source: &Utf8Path, build: &Utf8Path, out: &Utf8Path) -> Result<()> {
    let arch = configured_arch(build)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing old sysroot {out}"))?;
    }
    let inc = out.join("include");
    let lib = out.join("lib");
    std::fs::create_dir_all(&inc)?;
    std::fs::create_dir_all(&lib)?;
    let copy = |from: &Utf8Path, to: &Utf8Path| -> Result<()> {
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(from, to).with_context(|| format!("copying {from} to {to}"))?;
        Ok(())
    };
    let headers = |dir: &Utf8Path, depth: usize| -> Result<Vec<Utf8PathBuf>> {
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        for e in walkdir::WalkDir::new(dir).min_depth(1).max_depth(depth).sort_by_file_name() {
            let e = e?;
            if e.file_type().is_file() && e.file_name().to_string_lossy().ends_with(".h") {
                let p = Utf8PathBuf::from_path_buf(e.into_path()).map_err(|p| anyhow::anyhow!("non-UTF-8 {}", p.display()))?;
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
        Ok(out)
    };
    for rel in headers(&source.join("include"), 2)? {
        copy(&source.join("include").join(&rel), &inc.join(&rel))?;
    }
    for dir in [source.join("arch/generic/bits"), source.join("arch").join(&arch).join("bits"), build.join("obj/include/bits")] {
        for rel in headers(&dir, 1)? {
            copy(&dir.join(&rel), &inc.join("bits").join(&rel))?;
        }
    }
    for e in std::fs::read_dir(build.join("lib")).with_context(|| format!("reading {build}/lib"))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_file() && (name.ends_with(".a") || name.ends_with(".o")) {
            copy(&build.join("lib").join(&name), &lib.join(&name))?;
        }
    }
    Ok(())
}
