//! From a laid-out workspace to a [`Graph`]: Unikraft's make decides *what*
//! to compile, we capture it.
//!
//! 1. Clear the build dir, place origin archives (no network in the sandbox),
//!    write `kraft.defconfig` (the caller's kconfig + the target's
//!    `CONFIG_PLAT_*`/`CONFIG_ARCH_*` + `CONFIG_UK_NAME`), and run
//!    `make defconfig UK_DEFCONFIG=...`, as kraftkit does, with `C=` pointing
//!    into the build dir so the app stays read-only.
//! 2. `make fetch prepare`.
//! 3. `make -n all`: every printed line that runs a `.cmd` file becomes an
//!    action whose script is that file's text (Unikraft writes `.cmd` files
//!    with `$(file ...)`, so they exist even under `-n`); other command lines
//!    become `Script` actions; noise (`printf` labels, `:`, `make` recursion
//!    and messages, fixdep, `mkdir`, `rm`, `echo`) is dropped. The executor
//!    reads the compiler's `-MD` depfile itself, so fixdep is not needed.
//!
//! All make runs happen in the [`Sandbox`]; the build dir left behind (the
//! *prepared* build dir: `.config`, kconfig tools, `config.h`, unpacked and
//! patched origin sources, generated headers) is what the actions expect to
//! start from. It is cached with the graph, and restored on a cache hit.
//!
//! # Edges
//!
//! An action depends on the producer of each of its inputs. `Script`
//! actions (generated headers, `multiboot.py`, `sed`, `ln`, ...) have
//! inputs and outputs that cannot be read reliably from a command line
//! (headers are only found through depfiles, some scripts modify files in
//! place), so they are *barriers* that keep make's order: a script depends
//! on every earlier action (through the sinks since the previous barrier)
//! and every later action depends on it. In Unikraft they only occur before
//! the first compile and after the final link, so this costs no parallelism.
//!
//! # Files
//!
//! | file | concept |
//! |---|---|
//! | `target` | the target's kconfig (`CONFIG_PLAT_*`, `CONFIG_ARCH_*`, the cross prefix) |
//! | `mounts` | where the core, libraries, app and build dir appear inside |
//! | `fetches` | origin archives: the stand-in `wget` that serves locked ones and records new ones |
//! | `make_n` | `make -n all` output → raw commands → the graph |
//! | `command` | one printed command: what it reads, writes and runs |
//! | `edges` | dependencies between actions, barriers for scripts |
//! | `units` | cache units (musl split by source directory) |
//! | `key` | the plan key: every input and why |
//! | `cache` | the plan cache and the build dir's marker |
//! | `bundle` | a cached plan as one file, shared through the team cache |
//! | `graph` | the action graph a plan produces |
//! | `upstream` | the same for a plain make project (upstream musl) |

pub mod bundle;
pub mod cache;
pub mod command;
pub mod edges;
pub mod fetches;
pub mod graph;
pub mod key;
pub mod make_n;
pub mod mounts;
pub mod target;
pub mod units;
pub mod upstream;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::exec::sandbox::{Mount, Sandbox};
use crate::plan::graph::Graph;

pub use crate::plan::cache::fingerprint_build_files;
pub(crate) use crate::plan::cache::{load_cached, set_aside, restore_prepared, store_cached, write_marker, PLAN_FILE};
pub use crate::plan::edges::merge_in_place;
pub use crate::plan::fetches::{OriginFetch, OriginProvider, PlacedOrigin};
pub use crate::plan::make_n::parse_make_n;
pub use crate::plan::mounts::{inside_app, inside_build, inside_core, inside_lib};
pub use crate::plan::target::Target;
pub use crate::plan::units::{default_unit_rules, summary, UnitRule};

/// Bump when the parser or the cache layout changes: old plans are ignored.
pub const PLAN_FORMAT: u32 = 6;

#[derive(Debug, Clone)]
pub struct PlanInput {
    /// Unikraft core tree, mounted read-only at `/kraft/unikraft`.
    pub core: Utf8PathBuf,
    /// Libraries in `L=` order: (name, host dir) → `/kraft/libs/<name>`.
    pub libs: Vec<(String, Utf8PathBuf)>,
    /// The app directory and its name (= `CONFIG_UK_NAME`) → `/kraft/apps/<name>`.
    pub app: Utf8PathBuf,
    pub app_name: String,
    /// Writable host build dir → `/kraft/build`. Its contents are replaced.
    pub build: Utf8PathBuf,
    pub target: Target,
    /// Kconfig from the Kraftfile (`CONFIG_X`, value as in `.config`).
    pub kconfig: Vec<(String, String)>,
    /// Origin archives: host file → path relative to the build dir
    /// (`libmusl/musl-1.2.3.tar.gz`).
    pub origins: Vec<(Utf8PathBuf, Utf8PathBuf)>,
    /// Extra environment for every command (`SOURCE_DATE_EPOCH`, ...).
    pub env: Vec<(String, String)>,
    pub unit_rules: Vec<UnitRule>,
    /// Identity of components whose content is known to the caller (store
    /// hash / tree hash), by component name (`unikraft`, `lib:<name>`,
    /// `app`). Components without one are fingerprinted by their build
    /// description files and `recipe:<name>`, their recipe's blake3 (see
    /// [`plan_key`]).
    pub component_hashes: Vec<(String, String)>,
    /// Parallel jobs for the make runs that do work (`defconfig` builds the
    /// kconfig tools, `fetch prepare` unpacks and patches). Not a key input:
    /// Unikraft's makefiles are built with `-j` by kraftkit and by hand, and
    /// the prepared tree is the same either way (compared file by file on
    /// helloworld+musl).
    pub jobs: usize,
    /// Variables on make's command line, overriding the makefiles' own:
    /// what would otherwise come from the clock or from `git` in the tree
    /// (`HOSTUTC`, `UK_FULLVERSION`), fixed from the lock instead.
    pub make_vars: Vec<(String, String)>,
}

impl PlanInput {
    pub fn mounts(&self) -> Vec<Mount> {
        let mut m = vec![Mount::ro(self.core.clone(), inside_core())];
        for (name, dir) in &self.libs {
            m.push(Mount::ro(dir.clone(), inside_lib(name)));
        }
        m.push(Mount::ro(self.app.clone(), inside_app(&self.app_name)));
        m.push(Mount::rw(self.build.clone(), inside_build()));
        m
    }

    /// `make -C /kraft/unikraft A=... L=... O=/kraft/build C=/kraft/build/.config`
    pub fn make_command(&self) -> String {
        let libs: Vec<String> = self.libs.iter().map(|(n, _)| inside_lib(n).to_string()).collect();
        let mut command = format!(
            "make -C {} A={} L={} O={} C={}/.config",
            inside_core(),
            inside_app(&self.app_name),
            libs.join(":"),
            inside_build(),
            inside_build()
        );
        // A foreign architecture builds with the cross toolchain, as kraftkit does.
        if let Some(prefix) = self.target.cross_compile() {
            command.push_str(&format!(" CROSS_COMPILE={prefix}"));
        }
        for (name, value) in &self.make_vars {
            command.push_str(&format!(" {name}={}", crate::util::shell::quote(value)));
        }
        command
    }

    /// The defconfig handed to `make defconfig`: target, then the caller's
    /// kconfig, then `CONFIG_UK_NAME` (later entries win).
    pub fn defconfig(&self) -> Vec<(String, String)> {
        let mut all = self.target.kconfig();
        all.extend(self.kconfig.iter().cloned());
        all.push(("CONFIG_UK_NAME".into(), format!("\"{}\"", self.app_name)));
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in all {
            out.retain(|(ok, _)| *ok != k);
            out.push((k, v));
        }
        out
    }
}

/// The result of planning.
#[derive(Debug, Clone)]
pub struct Plan {
    pub graph: Graph,
    pub key: String,
    /// True when the graph came from the cache (make did not run).
    pub cached: bool,
    /// How many times make was invoked by this call (0 on a cache hit).
    pub make_runs: usize,
    /// Wall time of the whole call.
    pub elapsed: Duration,
    /// Each make run (its first argument) and its wall time, in order.
    pub make_seconds: Vec<(String, f64)>,
    /// Requested kconfig values that `.config` does not have after
    /// `make defconfig` (unknown symbol or unmet dependency).
    pub warnings: Vec<String>,
}

/// Plans `input`, using `cache_dir` (if given) to skip make entirely when
/// the [`plan_key`] is unchanged. On return the build dir is in the prepared
/// state either way.
pub fn plan(input: &PlanInput, cache_dir: Option<&Utf8Path>) -> Result<Plan> {
    plan_with(input, cache_dir, None)
}

/// [`plan`], learning the origin archives the configuration downloads from
/// make (see [`fetches`]) and getting each from `origins` before `make
/// fetch` runs. Without a provider, only `input.origins` are placed.
pub fn plan_with(input: &PlanInput, cache_dir: Option<&Utf8Path>, origins: Option<&dyn OriginProvider>) -> Result<Plan> {
    let start = Instant::now();
    std::fs::create_dir_all(&input.build).with_context(|| format!("creating build dir {}", input.build))?;
    let sandbox = Sandbox::new(input.mounts(), input.env.clone())?.with_shell_stand_in();
    let key = plan_key(input, &sandbox)?;
    let entry = cache_dir.map(|c| c.join(&key));
    if let Some(entry) = &entry {
        let pinned = |placed: &[PlacedOrigin]| origins.is_none_or(|o| placed.iter().all(|p| o.still_pinned(p)));
        if let Some(cached) = load_cached(entry)?.filter(|c| pinned(&c.origins)) {
            if cache::restore_prepared(entry, &input.build, &key, &cached.graph)? {
                let (graph, warnings) = (cached.graph, cached.warnings);
                return Ok(Plan { graph, key, cached: true, make_runs: 0, elapsed: start.elapsed(), warnings, make_seconds: Vec::new() });
            }
        }
    }

    cache::set_aside(&input.build)?;
    // Commands in a new sandbox: one started before sees the old dir.
    let sandbox = Sandbox::new(input.mounts(), input.env.clone())?.with_shell_stand_in();
    let make = input.make_command();
    let build = inside_build();
    let jobs = format!("-j{}", input.jobs.max(1));
    let mut make_runs = 0;
    let mut make_seconds = Vec::new();
    // `answer`, when given, is called every few milliseconds while make runs.
    let mut run_make = |args: &str, answer: Option<&mut dyn FnMut() -> Result<()>>| -> Result<std::process::Output> {
        make_runs += 1;
        let began = Instant::now();
        let script = format!("{make} {args}");
        let out = match answer {
            None => sandbox.run(&script, &build),
            Some(answer) => run_answering(&sandbox, &script, &build, answer),
        };
        let label = args.split_whitespace().find(|a| !a.starts_with("-j")).unwrap_or("");
        make_seconds.push((label.to_owned(), began.elapsed().as_secs_f64()));
        out
    };
    let failed = |args: &str, out: &std::process::Output| -> anyhow::Error {
        anyhow::anyhow!(
            "`make {args}` failed in the {} sandbox ({}):\n{}{}",
            sandbox.backend(),
            out.status,
            crate::util::text::tail(&String::from_utf8_lossy(&out.stdout), 20),
            crate::util::text::tail(&String::from_utf8_lossy(&out.stderr), 40)
        )
    };
    place_origins(input)?;
    write_defconfig(input)?;
    let args = format!("defconfig UK_DEFCONFIG={build}/kraft.defconfig");
    let out = run_make(&format!("{jobs} {args}"), None)?;
    if !out.status.success() {
        return Err(failed(&args, &out));
    }
    let config = std::fs::read_to_string(input.build.join(".config")).context("make defconfig wrote no .config")?;
    let warnings = check_config(&config, &input.defconfig());
    let placed = match origins {
        None => {
            let out = run_make(&format!("{jobs} fetch prepare"), None)?;
            if !out.status.success() {
                return Err(failed("fetch prepare", &out));
            }
            Vec::new()
        }
        Some(origins) => {
            // Archives the lock does not pin yet are got while make waits
            // for them (see `fetches`).
            let mut staged = origins.staged()?;
            let wget = fetches::stage(&input.build, &build, &staged)?;
            let mut failures = Vec::new();
            // `-k`: every library's download is tried in this one run.
            let args = format!("-k fetch prepare WGET={wget}");
            let mut answer = || fetches::answer_requests(&input.build, &build, &mut staged, origins, &mut failures);
            let out = run_make(&format!("{jobs} {args}"), Some(&mut answer))?;
            let (placed, missing) = fetches::collect(&input.build, &build, &staged)?;
            if !missing.is_empty() {
                // Why make got no file: the provider's own error (`--locked`,
                // offline, not found), else make's output.
                if let Some(at) = failures.iter().position(|(dest, _)| missing.iter().any(|m| m.dest == *dest)) {
                    return Err(failures.swap_remove(at).1);
                }
                let names: Vec<String> = missing.iter().map(|m| m.urls.join(" or ")).collect();
                return Err(failed(&args, &out).context(format!("make got no file for {}", names.join(", "))));
            }
            if !out.status.success() {
                return Err(failed(&args, &out));
            }
            placed
        }
    };
    let out = run_make("-n all", None)?;
    if !out.status.success() {
        return Err(failed("-n all", &out));
    }
    let printed = sandbox.rewrite_to_inside(&String::from_utf8_lossy(&out.stdout));
    let graph = parse_make_n(&printed, &sandbox, &input.unit_rules)?;

    if let Some(entry) = &entry {
        cache::store_cached_with(entry, &graph, &warnings, &input.build, &placed)?;
    }
    write_marker(&input.build, &key)?;
    Ok(Plan { graph, key, cached: false, make_runs, elapsed: start.elapsed(), warnings, make_seconds })
}

/// Runs `script` in a sandbox of its own, calling `answer` until it exits.
fn run_answering(sandbox: &Sandbox, script: &str, cwd: &Utf8Path, answer: &mut dyn FnMut() -> Result<()>) -> Result<std::process::Output> {
    use std::io::{Read, Seek};
    let capture = || tempfile::tempfile().context("creating a temporary file for make's output");
    let (mut stdout, mut stderr) = (capture()?, capture()?);
    let mut cmd = sandbox.command(script, cwd)?;
    cmd.stdin(std::process::Stdio::null()).stdout(stdout.try_clone()?).stderr(stderr.try_clone()?);
    let mut child = cmd.spawn().with_context(|| format!("spawning make ({} sandbox)", sandbox.backend()))?;
    let status = loop {
        if let Err(e) = answer() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        if let Some(status) = child.try_wait().context("waiting for make")? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |file: &mut std::fs::File| -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        file.seek(std::io::SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    Ok(std::process::Output { status, stdout: read(&mut stdout)?, stderr: read(&mut stderr)? })
}

/// Copies `input.origins` (archives a recipe places) into the build dir.
fn place_origins(input: &PlanInput) -> Result<()> {
    for (host, rel) in &input.origins {
        if rel.is_absolute() || rel.components().any(|c| c.as_str() == "..") {
            bail!("origin archive destination {rel} must be relative to the build dir, without `..`");
        }
        let dest = input.build.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).with_context(|| format!("creating {}", dest.parent().unwrap()))?;
        std::fs::copy(host, &dest).with_context(|| format!("placing origin archive {host} at {dest}"))?;
    }
    Ok(())
}

/// `<build>/kraft.defconfig`: what `make defconfig UK_DEFCONFIG=` reads.
fn write_defconfig(input: &PlanInput) -> Result<()> {
    let mut defconfig = String::new();
    for (k, v) in input.defconfig() {
        if v == "n" {
            writeln!(defconfig, "# {k} is not set").unwrap();
        } else {
            writeln!(defconfig, "{k}={v}").unwrap();
        }
    }
    let path = input.build.join("kraft.defconfig");
    std::fs::write(&path, &defconfig).with_context(|| format!("writing {path}"))
}

fn check_config(config: &str, wanted: &[(String, String)]) -> Vec<String> {
    let mut have: HashMap<&str, &str> = HashMap::new();
    for line in config.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if k.starts_with("CONFIG_") {
                have.insert(k, v);
            }
        } else if let Some(rest) = line.strip_prefix("# ") {
            if let Some(k) = rest.strip_suffix(" is not set") {
                have.insert(k, "n");
            }
        }
    }
    let mut warnings = Vec::new();
    for (k, v) in wanted {
        let got = have.get(k.as_str()).copied().unwrap_or("n");
        let norm = |s: &str| s.trim_matches('"').to_string();
        if norm(got) != norm(v) {
            warnings.push(format!("{k}={v} was requested but .config has {k}={got}"));
        }
    }
    warnings
}

// ---------------------------------------------------------------------------
// Plan key and cache
// ---------------------------------------------------------------------------

/// The plan key: every input and why is in [`key`] (and the table of every
/// key in [`crate::exec::fingerprint`]).
pub fn plan_key(input: &PlanInput, sandbox: &Sandbox) -> Result<String> {
    key::plan_key(input, sandbox)
}

