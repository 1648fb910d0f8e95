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

pub mod graph;
pub mod key;
pub mod upstream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::plan::graph::{Action, ActionId, ActionKind, Graph, SANDBOX_ROOT};
use crate::exec::sandbox::{Mount, Sandbox};

/// Bump when the parser or the cache layout changes: old plans are ignored.
pub const PLAN_FORMAT: u32 = 5;

pub fn inside_core() -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/unikraft"))
}
pub fn inside_lib(name: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/libs/{name}"))
}
pub fn inside_app(name: &str) -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/apps/{name}"))
}
pub fn inside_build() -> Utf8PathBuf {
    Utf8PathBuf::from(format!("{SANDBOX_ROOT}/build"))
}

/// Platform and architecture, as in a Kraftfile target (`qemu/x86_64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub plat: String,
    pub arch: String,
}

impl Target {
    pub fn new(plat: &str, arch: &str) -> Target {
        Target { plat: plat.into(), arch: arch.into() }
    }

    /// The kconfig symbols selecting this target (what kraftkit's
    /// platform/architecture components contribute).
    pub fn kconfig(&self) -> Vec<(String, String)> {
        let y = |k: &str| (k.to_string(), "y".to_string());
        let mut out = Vec::new();
        match self.plat.as_str() {
            "qemu" => out.extend([y("CONFIG_PLAT_KVM"), y("CONFIG_KVM_VMM_QEMU")]),
            "fc" | "firecracker" => out.extend([y("CONFIG_PLAT_KVM"), y("CONFIG_KVM_VMM_FIRECRACKER")]),
            "xen" => out.push(y("CONFIG_PLAT_XEN")),
            other => out.push(y(&format!("CONFIG_PLAT_{}", other.to_uppercase()))),
        }
        match self.arch.as_str() {
            "x86_64" => out.push(y("CONFIG_ARCH_X86_64")),
            "arm64" => out.push(y("CONFIG_ARCH_ARM_64")),
            "arm" => out.push(y("CONFIG_ARCH_ARM_32")),
            other => out.push(y(&format!("CONFIG_ARCH_{}", other.to_uppercase()))),
        }
        out
    }
}

/// How actions are grouped into cache units. By default an action's unit is
/// the library directory its primary output lives in (`<build>/libfoo/x.o`
/// → `libfoo`, `<build>/libfoo.ld.o` → `libfoo`); the final link, image and
/// raw steps are in `image` (or `prepare` before the first compile).
/// A rule with `split_by_dir_prefix` splits a library further by its
/// compile's *source* directory below that prefix (relative to the build
/// dir; a `*` component matches anything and is dropped):
/// `{ lib = "libmusl", split_by_dir_prefix = "libmusl/origin/*" }` puts
/// `.../origin/musl-1.2.3/src/string/strlen.c` in `libmusl/src/string`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitRule {
    pub lib: String,
    #[serde(default)]
    pub split_by_dir_prefix: Option<String>,
}

pub fn default_unit_rules() -> Vec<UnitRule> {
    vec![UnitRule { lib: "libmusl".into(), split_by_dir_prefix: Some("libmusl/origin/*".into()) }]
}

/// Everything planning needs. Host paths are absolute.
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
    /// description files (see [`plan_key`]).
    pub component_hashes: Vec<(String, String)>,
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
    /// Requested kconfig values that `.config` does not have after
    /// `make defconfig` (unknown symbol or unmet dependency).
    pub warnings: Vec<String>,
}

/// Plans `input`, using `cache_dir` (if given) to skip make entirely when
/// the [`plan_key`] is unchanged. On return the build dir is in the prepared
/// state either way.
pub fn plan(input: &PlanInput, cache_dir: Option<&Utf8Path>) -> Result<Plan> {
    let start = Instant::now();
    std::fs::create_dir_all(&input.build).with_context(|| format!("creating build dir {}", input.build))?;
    let sandbox = Sandbox::new(input.mounts(), input.env.clone())?;
    let key = plan_key(input, &sandbox)?;
    let entry = cache_dir.map(|c| c.join(&key));
    if let Some(entry) = &entry {
        if let Some((graph, warnings)) = load_cached(entry)? {
            // A build dir already prepared for this very plan is left as it
            // is: that is what makes a no-op build cost nothing.
            if read_marker(&input.build).as_deref() != Some(key.as_str()) {
                clear_dir(&input.build)?;
                crate::util::fs::copy_tree(&entry.join("prepared"), &input.build)?;
                write_marker(&input.build, &key)?;
            }
            return Ok(Plan { graph, key, cached: true, make_runs: 0, elapsed: start.elapsed(), warnings });
        }
    }

    // A fresh build dir: `make -n` only prints what is out of date.
    clear_dir(&input.build)?;
    for (host, rel) in &input.origins {
        if rel.is_absolute() || rel.components().any(|c| c.as_str() == "..") {
            bail!("origin archive destination {rel} must be relative to the build dir, without `..`");
        }
        let dest = input.build.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap())?;
        std::fs::copy(host, &dest).with_context(|| format!("placing origin archive {host} at {dest}"))?;
    }
    let mut defconfig = String::new();
    for (k, v) in input.defconfig() {
        if v == "n" {
            writeln!(defconfig, "# {k} is not set").unwrap();
        } else {
            writeln!(defconfig, "{k}={v}").unwrap();
        }
    }
    std::fs::write(input.build.join("kraft.defconfig"), &defconfig)?;

    let make = input.make_command();
    let build = inside_build();
    let mut make_runs = 0;
    let mut run_make = |args: &str| -> Result<String> {
        make_runs += 1;
        let out = sandbox.run(&format!("{make} {args}"), &build)?;
        if !out.status.success() {
            bail!(
                "`make {args}` failed in the {} sandbox ({}):\n{}{}",
                sandbox.backend(),
                out.status,
                crate::util::text::tail(&String::from_utf8_lossy(&out.stdout), 20),
                crate::util::text::tail(&String::from_utf8_lossy(&out.stderr), 40)
            );
        }
        Ok(sandbox.rewrite_to_inside(&String::from_utf8_lossy(&out.stdout)))
    };
    run_make(&format!("defconfig UK_DEFCONFIG={build}/kraft.defconfig"))?;
    let config = std::fs::read_to_string(input.build.join(".config")).context("make defconfig wrote no .config")?;
    let warnings = check_config(&config, &input.defconfig());
    run_make("fetch prepare")?;
    let printed = run_make("-n all")?;
    let graph = parse_make_n(&printed, &sandbox, &input.unit_rules)?;

    if let Some(entry) = &entry {
        store_cached(entry, &graph, &warnings, &input.build)?;
    }
    write_marker(&input.build, &key)?;
    Ok(Plan { graph, key, cached: false, make_runs, elapsed: start.elapsed(), warnings })
}

pub(crate) fn is_symlink_command(script: &str) -> bool {
    let mut words = script.split_whitespace();
    let program = words.next().unwrap_or("");
    (program == "ln" || program.ends_with("/ln")) && words.next().is_some_and(|flag| flag.starts_with('-') && flag.contains('s'))
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

/// The plan key: see [`key`].
pub fn plan_key(input: &PlanInput, sandbox: &Sandbox) -> Result<String> {
    key::plan_key(input, sandbox)
}

/// How the sandbox's `PATH` resolves make's tools (see [`key`]).
pub(crate) fn tool_versions(sandbox: &Sandbox) -> Result<String> {
    Ok(key::tool_versions(sandbox, None))
}

/// `<build>/.kraft-plan`: the plan key the build dir was prepared for.
const MARKER: &str = ".kraft-plan";

pub(crate) fn read_marker(build: &Utf8Path) -> Option<String> {
    std::fs::read_to_string(build.join(MARKER)).ok().map(|s| s.trim().to_string())
}

pub(crate) fn write_marker(build: &Utf8Path, key: &str) -> Result<()> {
    std::fs::write(build.join(MARKER), key).with_context(|| format!("writing {}", build.join(MARKER)))
}

fn is_build_file(name: &str) -> bool {
    name.starts_with("Makefile") || name.ends_with(".uk") || name.ends_with(".mk") || name.starts_with("Config.uk")
}

/// blake3 over (relative path, content) of the build description files.
pub fn fingerprint_build_files(dir: &Utf8Path) -> Result<String> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git") {
        let entry = entry?;
        if entry.file_type().is_file() && is_build_file(&entry.file_name().to_string_lossy()) {
            files.push(entry.into_path());
        }
    }
    let mut h = blake3::Hasher::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&f)?;
        h.update(rel.as_bytes());
        h.update(&[0]);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Serialize, Deserialize)]
struct CachedPlan {
    format: u32,
    warnings: Vec<String>,
    graph: Graph,
}

/// Cache entry layout: `<cache>/<key>/plan.json` and `<cache>/<key>/prepared/`.
pub(crate) fn load_cached(entry: &Utf8Path) -> Result<Option<(Graph, Vec<String>)>> {
    let file = entry.join("plan.json");
    let Ok(text) = std::fs::read_to_string(&file) else { return Ok(None) };
    match serde_json::from_str::<CachedPlan>(&text) {
        Ok(c) if c.format == PLAN_FORMAT && entry.join("prepared").is_dir() => Ok(Some((c.graph, c.warnings))),
        _ => Ok(None),
    }
}

pub(crate) fn store_cached(entry: &Utf8Path, graph: &Graph, warnings: &[String], build: &Utf8Path) -> Result<()> {
    let parent = entry.parent().unwrap();
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".plan-").tempdir_in(parent)?;
    let tmp_path = Utf8Path::from_path(tmp.path()).unwrap();
    crate::util::fs::copy_tree(build, &tmp_path.join("prepared"))?;
    let cached = CachedPlan { format: PLAN_FORMAT, warnings: warnings.to_vec(), graph: graph.clone() };
    std::fs::write(tmp_path.join("plan.json"), serde_json::to_vec(&cached)?)?;
    let tmp_path = tmp.keep();
    if entry.exists() {
        std::fs::remove_dir_all(entry)?;
    }
    if let Err(e) = std::fs::rename(&tmp_path, entry) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        if !entry.join("plan.json").exists() {
            return Err(e).context("storing plan in cache");
        }
    }
    Ok(())
}

pub(crate) fn clear_dir(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Parsing `make -n all`
// ---------------------------------------------------------------------------

/// One printed command, before it becomes an action.
struct Raw {
    script: String,
    /// The make target when the command ran a `.cmd` file (inside path,
    /// possibly not the real target for relative `.cmd` names).
    cmd_target: Option<Utf8PathBuf>,
}

/// Turns `make -n all` output (already in inside paths) into a graph.
/// `sandbox` maps inside paths to host paths to read `.cmd` files and test
/// which input files exist.
pub fn parse_make_n(printed: &str, sandbox: &Sandbox, rules: &[UnitRule]) -> Result<Graph> {
    let build = inside_build();
    let mut raws = Vec::new();
    for line in logical_lines(printed) {
        let Some(cmd) = strip_noise(&line) else { continue };
        if let Some(cmd_file) = runs_cmd_file(&cmd) {
            let path = normalize(&build, &cmd_file);
            let host = sandbox.to_host(&path).with_context(|| format!("{path} is outside the sandbox mounts"))?;
            let text = std::fs::read_to_string(&host).with_context(|| format!("reading {host} (printed by make -n)"))?;
            let text = sandbox.rewrite_to_inside(text.trim_end_matches('\n'));
            let target = Utf8PathBuf::from(path.as_str().strip_suffix(".cmd").unwrap());
            raws.push(Raw { script: text, cmd_target: Some(target) });
        } else {
            raws.push(Raw { script: cmd, cmd_target: None });
        }
    }
    Ok(build_graph(fold_in_place(raws), sandbox, rules))
}

/// Folds a printed command that only *modifies* a file the command just
/// before it wrote (`ranlib lib/libc.a` after `ar rc lib/libc.a ...`,
/// `sed ... >> x.h` after `cp x.h.in x.h`) into that command's action: the
/// executor clears an action's outputs before running it, so the two must be
/// one action. Commands run from `.cmd` files are never folded.
fn fold_in_place(raws: Vec<Raw>) -> Vec<Raw> {
    let build = inside_build();
    let mut out: Vec<Raw> = Vec::new();
    let mut prev_outputs: Vec<Utf8PathBuf> = Vec::new();
    for raw in raws {
        let an = analyze(&raw.script, &build);
        let foldable = raw.cmd_target.is_none()
            && !an.modifies.is_empty()
            && an.modifies.iter().all(|m| prev_outputs.contains(m))
            && an.outputs.iter().all(|o| an.modifies.contains(o));
        match out.last_mut() {
            Some(prev) if foldable && prev.cmd_target.is_none() => {
                prev.script.push_str(" && ");
                prev.script.push_str(&raw.script);
            }
            _ => {
                prev_outputs = an.outputs.clone();
                out.push(raw);
            }
        }
    }
    out
}

/// Joins backslash-continued lines.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if let Some(stripped) = line.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
        } else {
            cur.push_str(line);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Returns the command a printed line runs, or None for noise.
fn strip_noise(line: &str) -> Option<String> {
    let mut cmd = line.trim();
    // Unikraft's quiet label: `printf '  %-7s %s\n' 'CC' 'lib: x.o' && <cmd>`.
    if cmd.starts_with("printf '  %-7s %s\\n'") {
        cmd = cmd.split_once(" && ").map(|(_, rest)| rest.trim())?;
    }
    if cmd.is_empty() || cmd == ":" || cmd == "true" || cmd.starts_with('#') {
        return None;
    }
    let first = cmd.split_whitespace().next()?;
    let base = first.rsplit('/').next().unwrap_or(first);
    if first.starts_with("make:") || first.starts_with("make[") {
        return None; // make's own messages
    }
    match base {
        // Recursive make (it ran, also under -n), and housekeeping that the
        // executor does itself (output directories, depfile post-processing).
        "make" | "gmake" | "mkdir" | "rm" | "echo" | "fixdep" | "fixdep.sh" => None,
        _ => Some(cmd.to_string()),
    }
}

/// `/bin/bash x.cmd`, `bash x.cmd`, `sh x.cmd`, `$(SHELL) x.cmd` → `x.cmd`.
fn runs_cmd_file(cmd: &str) -> Option<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    if words.len() != 2 || !words[1].ends_with(".cmd") {
        return None;
    }
    let shell = words[0].rsplit('/').next().unwrap();
    matches!(shell, "bash" | "sh" | "dash").then(|| unquote(words[1]))
}

fn unquote(s: &str) -> String {
    s.chars().filter(|c| *c != '"' && *c != '\'').collect()
}

/// Lexical normalization against `base`: absolute result, no `.`/`..`/`//`.
fn normalize(base: &Utf8Path, p: &str) -> Utf8PathBuf {
    let joined = if p.starts_with('/') { p.to_string() } else { format!("{base}/{p}") };
    crate::exec::fingerprint::normalize(Utf8Path::new(&joined))
}

/// Shell-ish words of a script: quotes removed, operators as their own words.
fn words(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = script.chars().peekable();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n)
                }
            }
            (None, c) if c.is_whitespace() => flush(&mut cur, &mut out),
            (None, ';' | '|' | '&' | '(' | ')' | '{' | '}') => {
                flush(&mut cur, &mut out);
                out.push(c.to_string());
            }
            (None, '>' | '<') => {
                // `2>&1`, `>/dev/null`: keep fd digits out of file names.
                if cur.chars().all(|d| d.is_ascii_digit()) {
                    cur.clear();
                } else {
                    flush(&mut cur, &mut out);
                }
                out.push(c.to_string());
            }
            (None, c) => cur.push(c),
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Splits words into simple commands at `;`, `|`, `&`, `(`, `)`, `{`, `}`.
fn simple_commands(words: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    for w in words {
        if matches!(w.as_str(), ";" | "|" | "&" | "(" | ")" | "{" | "}") {
            out.push(Vec::new());
        } else {
            out.last_mut().unwrap().push(w.clone());
        }
    }
    out.retain(|c| !c.is_empty());
    // Drop leading shell keywords and `VAR=value` assignments.
    for c in &mut out {
        while c.first().is_some_and(|w| {
            matches!(w.as_str(), "if" | "then" | "else" | "elif" | "fi" | "do" | "done" | "while" | "until" | "!" | "exec")
                || w.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
        }) {
            c.remove(0);
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

fn tool(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

fn is_compiler(t: &str) -> bool {
    let t = tool(t);
    ["gcc", "cc", "clang", "g++", "c++", "clang++", "cpp", "as"]
        .iter()
        .any(|c| t == *c || t.ends_with(&format!("-{c}")) || (t.starts_with("gcc-") && *c == "gcc"))
}

#[derive(Default)]
struct Analysis {
    kind: Option<ActionKind>,
    outputs: Vec<Utf8PathBuf>,
    depfile: Option<Utf8PathBuf>,
    /// Path-like words (candidates for inputs).
    paths: Vec<Utf8PathBuf>,
    /// First compiled source (`-c X` / positional source of a compile).
    source: Option<Utf8PathBuf>,
    /// Files an objcopy/raw step may modify in place.
    in_place: Vec<Utf8PathBuf>,
    /// Files certainly modified rather than created: `>>` targets, `ranlib`'s
    /// archive (see [`fold_in_place`]).
    modifies: Vec<Utf8PathBuf>,
}

fn analyze(script: &str, cwd: &Utf8Path) -> Analysis {
    let mut a = Analysis::default();
    let words = words(script);
    let mut compiles = false;
    let mut links_r = false;
    let mut objcopy = false;
    // Redirect targets, over the whole script.
    for (i, w) in words.iter().enumerate() {
        if w == ">" {
            if let Some(t) = words.get(i + 1) {
                if t != "&" && t != ">" && t != "/dev/null" && !t.starts_with('&') {
                    a.outputs.push(normalize(cwd, t));
                    // `>>`: appends to what is there.
                    if i > 0 && words[i - 1] == ">" {
                        a.modifies.push(normalize(cwd, t));
                    }
                }
            }
        }
    }
    for cmd in simple_commands(&words) {
        let t = tool(&cmd[0]).to_string();
        let positional: Vec<&String> = cmd[1..]
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                !w.starts_with('-') && *w != ">" && *w != "<" && !(*i > 0 && matches!(cmd[*i].as_str(), "-o" | "-MF" | ">" | "<" | "-T" | "-x" | "-include" | "--update-section" | "--add-section"))
            })
            .map(|(_, w)| w)
            .collect();
        if is_compiler(&t) {
            if cmd.iter().any(|w| w == "-c" || w == "-E" || w == "-S") {
                compiles = true;
                if a.source.is_none() {
                    a.source = positional
                        .iter()
                        .find(|w| {
                            let ext = w.rsplit('.').next().unwrap_or("");
                            matches!(ext, "c" | "S" | "s" | "cc" | "cpp" | "cxx" | "C" | "m")
                        })
                        .map(|w| normalize(cwd, w));
                }
            }
            if cmd.iter().any(|w| w == "-r" || w == "-Wl,-r") {
                links_r = true;
            }
        } else if t == "ld" || t.ends_with("-ld") {
            if cmd.iter().any(|w| w == "-r") {
                links_r = true;
            }
        } else if t == "objcopy" || t.ends_with("-objcopy") || t == "strip" || t.ends_with("-strip") {
            objcopy = true;
            let files: Vec<&&String> = positional.iter().filter(|w| w.contains('/') || w.contains('.')).collect();
            if files.len() == 1 && !cmd.iter().any(|w| w == "-o") {
                a.in_place.push(normalize(cwd, files[0]));
            } else if files.len() >= 2 && !cmd.iter().any(|w| w == "-o") {
                a.outputs.push(normalize(cwd, files[files.len() - 1]));
            }
        } else if t == "ar" || t.ends_with("-ar") || t == "gcc-ar" {
            // `ar rc lib/libc.a a.o b.o`: the archive is the output, the
            // members are inputs (found below as path-like words). An
            // archive of a library's objects is a partial link.
            if positional.first().is_some_and(|op| op.contains(['r', 'q'])) {
                if let Some(archive) = positional.get(1) {
                    a.outputs.push(normalize(cwd, archive));
                    links_r = true;
                }
            }
        } else if t == "ranlib" || t.ends_with("-ranlib") {
            if let Some(archive) = positional.last() {
                a.outputs.push(normalize(cwd, archive));
                a.modifies.push(normalize(cwd, archive));
                objcopy = true;
            }
        } else if t == "ln" || t == "cp" || t == "mv" || t == "install" {
            if let Some(last) = positional.last() {
                a.outputs.push(normalize(cwd, last));
            }
        } else if !matches!(
            t.as_str(),
            "awk" | "gawk" | "mawk" | "sed" | "cat" | "cmp" | "grep" | "tr" | "sort" | "printf" | "test" | "[" | "fi" | "true"
        ) {
            // Unknown tools (multiboot.py, mkbootinfo.py): their path
            // arguments may be modified in place.
            for w in &positional {
                if w.starts_with('/') {
                    a.in_place.push(normalize(cwd, w));
                }
            }
        }
        for (i, w) in cmd.iter().enumerate() {
            if w == "-o" || w == "-MF" {
                if let Some(next) = cmd.get(i + 1) {
                    if w == "-o" {
                        a.outputs.push(normalize(cwd, next));
                    } else {
                        a.depfile = Some(normalize(cwd, next));
                    }
                }
            } else if let Some(rest) = w.strip_prefix("-o").filter(|r| r.starts_with('/')) {
                a.outputs.push(normalize(cwd, rest));
            } else if let Some(rest) = w.strip_prefix("-Wp,-MD,").or_else(|| w.strip_prefix("-Wp,-MMD,")) {
                a.depfile = Some(normalize(cwd, rest));
            }
        }
    }
    // Path-like pieces of every word (split at `=` and `,`).
    for w in &words {
        if w.starts_with("-I") || w.starts_with("-L") || w.starts_with("-D") || w.starts_with("-U") {
            continue;
        }
        for piece in w.split(['=', ',', ':']) {
            if piece.is_empty() || piece.starts_with('-') || piece.contains('$') || piece.contains('*') {
                continue;
            }
            if piece.starts_with('/') || piece.contains('/') || piece.contains('.') {
                a.paths.push(normalize(cwd, piece));
            }
        }
    }
    a.kind = Some(if compiles {
        ActionKind::Compile
    } else if links_r {
        ActionKind::PartialLink
    } else if objcopy {
        ActionKind::Objcopy
    } else {
        ActionKind::Script
    });
    a
}

fn build_graph(raws: Vec<Raw>, sandbox: &Sandbox, rules: &[UnitRule]) -> Graph {
    let build = inside_build();
    let mut actions: Vec<Action> = Vec::new();
    let mut producers: HashMap<Utf8PathBuf, ActionId> = HashMap::new();
    let mut exists_cache: HashMap<Utf8PathBuf, bool> = HashMap::new();
    let mut last_barrier: Option<ActionId> = None;
    let mut since_barrier: Vec<ActionId> = Vec::new();
    let mut script_count = 0;
    let mut seen_compile = false;
    let mut names: HashSet<String> = HashSet::new();

    for raw in raws {
        let id = ActionId(actions.len());
        let an = analyze(&raw.script, &build);
        let mut kind = an.kind.unwrap();
        let mut outputs = an.outputs.clone();
        // The .cmd's target; a relative .cmd name may stand for a deeper
        // file (`provided_syscalls.in.new.cmd` → `libsyscall_shim/...`).
        if let Some(target) = &raw.cmd_target {
            let rel = target.strip_prefix(&build).map(|r| r.as_str().to_string()).unwrap_or_default();
            let deeper = an.outputs.iter().chain(an.paths.iter()).find(|p| {
                !rel.is_empty() && (p.as_path() == target.as_path() || p.as_str().ends_with(&format!("/{rel}")))
            });
            // `objcopy -O binary X` under an `X.bin` label and `mklinux.py
            // X X.dbg` under `X.img` rewrite X in place (Unikraft's
            // build_linux on arm64): a label its command never names is not
            // an output of it.
            let unnamed = deeper.is_none()
                && !an.in_place.is_empty()
                && !raw.script.contains(target.file_name().unwrap_or(""));
            if !unnamed {
                let primary = deeper.cloned().unwrap_or_else(|| target.clone());
                outputs.retain(|o| *o != primary);
                outputs.insert(0, primary);
            }
        }
        // Files modified in place by objcopy/scripts: outputs if an earlier
        // action produced them (the image that multiboot.py patches).
        for p in &an.in_place {
            if producers.contains_key(p) && !outputs.contains(p) {
                outputs.push(p.clone());
            }
        }
        dedup(&mut outputs);
        // `ln -s` makes a symlink that may dangle on the host (its target is
        // an inside path, or a file a later step writes): it is a side effect,
        // not a content output. The prepared build dir already holds the ones
        // `prepare` made; the action still runs (once) for the others.
        if kind == ActionKind::Script && is_symlink_command(&raw.script) {
            outputs.clear();
        }
        let primary = outputs.first().cloned();
        let is_final_link = primary.as_ref().is_some_and(|p| p.as_str().ends_with(".dbg"));
        let in_build_root = primary.as_ref().is_some_and(|p| p.parent() == Some(build.as_path()));
        if is_final_link && kind != ActionKind::Compile {
            kind = ActionKind::Link;
        } else if kind == ActionKind::Objcopy
            && in_build_root
            && primary.as_ref().is_some_and(|p| {
                let n = p.file_name().unwrap_or("");
                n.ends_with(".o")
            })
        {
            kind = ActionKind::PartialLink;
        }
        let barrier = kind == ActionKind::Script;

        let mut inputs = Vec::new();
        for p in &an.paths {
            if outputs.contains(p) && !an.in_place.contains(p) {
                continue;
            }
            if Some(p) == an.depfile.as_ref() {
                continue;
            }
            let known = producers.contains_key(p)
                || *exists_cache.entry(p.clone()).or_insert_with(|| {
                    sandbox.to_host(p).is_some_and(|h| h.is_file())
                });
            if known {
                inputs.push(p.clone());
            }
        }
        dedup(&mut inputs);

        let mut deps: Vec<ActionId> =
            inputs.iter().filter_map(|i| producers.get(i).copied()).filter(|d| *d != id).collect();
        if barrier {
            // Depend on everything since the previous barrier (its sinks
            // suffice, but the list is short in practice) and on it.
            deps.extend(since_barrier.iter().copied());
            deps.extend(last_barrier);
        } else if let Some(b) = last_barrier {
            // Everything after a barrier depends on it, so a dep newer than
            // the barrier already implies it.
            if !deps.iter().any(|d| *d >= b) {
                deps.push(b);
            }
        }
        deps.sort();
        deps.dedup();
        if barrier {
            deps = sinks(&actions, &deps);
        }

        let rel_name = |p: &Utf8Path| p.strip_prefix(&build).map(|r| r.to_string()).unwrap_or_else(|_| p.to_string());
        let mut name = match (&primary, raw.cmd_target.is_some() || kind != ActionKind::Script) {
            (Some(p), true) => rel_name(p),
            _ => {
                script_count += 1;
                format!("script:{script_count}")
            }
        };
        if !names.insert(name.clone()) {
            name = format!("{name}#{}", id.0);
            names.insert(name.clone());
        }

        let unit = unit_of(kind, primary.as_deref(), an.source.as_deref(), &build, rules, seen_compile);
        if kind == ActionKind::Compile {
            seen_compile = true;
        }
        for o in &outputs {
            producers.insert(o.clone(), id);
        }
        actions.push(Action {
            id,
            name,
            kind,
            unit,
            script: raw.script,
            cwd: build.clone(),
            inputs,
            outputs,
            depfile: an.depfile,
            deps,
        });
        if barrier {
            last_barrier = Some(id);
            since_barrier.clear();
        } else {
            since_barrier.push(id);
        }
    }
    merge_in_place(Graph { actions })
}

/// Fold steps that rewrite another action's output in place (Unikraft's
/// `objcopy --update-section .uk_bootinfo` and `multiboot.py` on the stripped
/// image) into the action that produced it. Otherwise two actions would own
/// one file: the producer's record would never match the file on disk, and a
/// no-op build would restore and re-patch the image every time. A step is
/// folded only when everything else it waits for was already done before
/// the producer, so the merged action runs at the same point in the order.
pub fn merge_in_place(graph: Graph) -> Graph {
    let mut actions = graph.actions;
    // Map from old id to the id it was folded into (or itself).
    let mut owner: Vec<usize> = (0..actions.len()).collect();
    let mut removed = vec![false; actions.len()];
    let mut producer: HashMap<Utf8PathBuf, usize> = HashMap::new();
    for b in 0..actions.len() {
        let in_place: Vec<Utf8PathBuf> =
            actions[b].outputs.iter().filter(|o| actions[b].inputs.contains(o)).cloned().collect();
        let target = in_place.iter().filter_map(|p| producer.get(p).copied()).map(|a| owner[a]).max();
        if let Some(a) = target {
            let other_deps_done_before = actions[b].deps.iter().map(|d| owner[d.0]).all(|d| d == a || d < a);
            if other_deps_done_before && actions[a].kind != ActionKind::Compile {
                let step = std::mem::replace(&mut actions[b].script, String::new());
                let merged = format!("{{ {}\n}} && {{ {}\n}}", actions[a].script.trim_end(), step.trim_end());
                actions[a].script = merged;
                let (inputs, outputs) = (actions[b].inputs.clone(), actions[b].outputs.clone());
                for input in inputs {
                    if !actions[a].outputs.contains(&input) && !actions[a].inputs.contains(&input) {
                        actions[a].inputs.push(input);
                    }
                }
                for output in outputs {
                    if !actions[a].outputs.contains(&output) {
                        actions[a].outputs.push(output.clone());
                    }
                    producer.insert(output, a);
                }
                let extra: Vec<ActionId> = actions[b].deps.iter().map(|d| ActionId(owner[d.0])).filter(|d| d.0 != a).collect();
                actions[a].deps.extend(extra);
                owner[b] = a;
                removed[b] = true;
                continue;
            }
        }
        for output in actions[b].outputs.clone() {
            producer.insert(output, b);
        }
    }
    if !removed.iter().any(|r| *r) {
        return Graph { actions };
    }
    // Renumber: ids are indices.
    let mut new_id = vec![0usize; actions.len()];
    let mut next = 0;
    for (old, gone) in removed.iter().enumerate() {
        if !gone {
            new_id[old] = next;
            next += 1;
        }
    }
    let mut out = Vec::with_capacity(next);
    for (old, mut action) in actions.into_iter().enumerate() {
        if removed[old] {
            continue;
        }
        let me = new_id[old];
        action.id = ActionId(me);
        let mut deps: Vec<ActionId> =
            action.deps.iter().map(|d| ActionId(new_id[owner[d.0]])).filter(|d| d.0 != me).collect();
        deps.sort();
        deps.dedup();
        action.deps = deps;
        out.push(action);
    }
    Graph { actions: out }
}

/// Of `ids`, those no other member of `ids` (transitively) depends on.
fn sinks(actions: &[Action], ids: &[ActionId]) -> Vec<ActionId> {
    let set: HashSet<ActionId> = ids.iter().copied().collect();
    let mut covered: HashSet<ActionId> = HashSet::new();
    for id in ids {
        let mut stack: Vec<ActionId> = actions[id.0].deps.clone();
        while let Some(d) = stack.pop() {
            if covered.insert(d) {
                stack.extend(actions[d.0].deps.iter().copied());
            }
        }
    }
    let mut out: Vec<ActionId> = set.into_iter().filter(|i| !covered.contains(i)).collect();
    out.sort();
    out
}

fn dedup(v: &mut Vec<Utf8PathBuf>) {
    let mut seen = HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
}

fn unit_of(
    kind: ActionKind,
    primary: Option<&Utf8Path>,
    source: Option<&Utf8Path>,
    build: &Utf8Path,
    rules: &[UnitRule],
    seen_compile: bool,
) -> String {
    let fallback = if seen_compile { "image" } else { "prepare" };
    let Some(rel) = primary.and_then(|p| p.strip_prefix(build).ok()) else { return fallback.into() };
    if kind == ActionKind::Link {
        return "image".into();
    }
    let comps: Vec<&str> = rel.components().map(|c| c.as_str()).collect();
    let lib = if comps.len() > 1 {
        comps[0].to_string()
    } else if let Some(stem) = comps[0].strip_suffix(".ld.o").or_else(|| comps[0].strip_suffix(".o")) {
        stem.to_string()
    } else {
        return fallback.into();
    };
    if kind == ActionKind::Compile {
        for rule in rules.iter().filter(|r| r.lib == lib) {
            let (Some(prefix), Some(src)) = (&rule.split_by_dir_prefix, source) else { continue };
            let Ok(src_rel) = src.strip_prefix(build) else { continue };
            let src_comps: Vec<&str> = src_rel.components().map(|c| c.as_str()).collect();
            let pre: Vec<&str> = prefix.split('/').filter(|c| !c.is_empty()).collect();
            if src_comps.len() <= pre.len() + 1 {
                continue;
            }
            let matches = pre.iter().zip(&src_comps).all(|(p, s)| *p == "*" || p == s);
            if matches {
                let dir = &src_comps[pre.len()..src_comps.len() - 1];
                if dir.is_empty() {
                    return lib;
                }
                return format!("{lib}/{}", dir.join("/"));
            }
        }
    }
    lib
}

/// Summary counts for reports: (total, per kind, per unit).
pub fn summary(graph: &Graph) -> (usize, BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut kinds = BTreeMap::new();
    let mut units = BTreeMap::new();
    for a in &graph.actions {
        *kinds.entry(format!("{:?}", a.kind)).or_insert(0) += 1;
        *units.entry(a.unit.clone()).or_insert(0) += 1;
    }
    (graph.actions.len(), kinds, units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_noise() {
        assert_eq!(
            words(r#"""gcc -c a.c -o /x/a.o 2>&1 | { grep -Ev "x y" || true; }"#),
            vec!["gcc", "-c", "a.c", "-o", "/x/a.o", ">", "&", "1", "|", "{", "grep", "-Ev", "x y", "|", "|", "true", ";", "}"]
        );
        assert_eq!(strip_noise("printf '  %-7s %s\\n' 'CC' 'lib: a.o' &&  /bin/bash /kraft/build/a.o.cmd").as_deref(), Some("/bin/bash /kraft/build/a.o.cmd"));
        assert_eq!(strip_noise("/kraft/build/kconfig/fixdep a b 'c' > d && rm -f e"), None);
        assert_eq!(strip_noise("make: Entering directory '/kraft/unikraft'"), None);
        assert_eq!(strip_noise("make --no-print-directory -C /kraft/build all"), None);
        assert_eq!(strip_noise(":"), None);
        assert_eq!(runs_cmd_file("/bin/bash provided.in.cmd").as_deref(), Some("provided.in.cmd"));
        assert_eq!(normalize("/kraft/build".into(), "a/../b//c.o"), "/kraft/build/b/c.o");
    }
}
