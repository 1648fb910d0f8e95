//! Action fingerprints: what decides whether an action must run again, and
//! the cache key under which its outputs are stored.
//!
//! A [`Fingerprint`] is the set of things an action's outputs depend on, each
//! reduced to a blake3 hash. The action cache key is a hash of it; the
//! per-build-dir state keeps the last fingerprint of every action, and
//! comparing the two field by field yields a [`DirtyReason`], which both
//! decides that the action must be brought up to date and says why.
//!
//! # What goes into a key
//!
//! | field                  | contents                                                                                                                                                   | why                                                                                                 |
//! |------------------------|------------------------------------------------------------------------------------------------------------------------------------------------------------|-----------------------------------------------------------------------------------------------------|
//! | `script`               | [`KEY_VERSION`], the action kind, the bash script, `cwd`, the declared output paths and the depfile path                                                   | the command itself. Paths are all under `/kraft` (the sandbox mount), so two checkouts share keys. With the non-sandboxed fallback backend the host root in the script is first rewritten to `/kraft`. |
//! | `env`                  | the [`Toolchain`] id (hash of every toolchain program's bytes, the compiler's version / target / `-v` text) and whether the backend is hermetic (bwrap) | a compiler or binutils upgrade changes outputs without changing any input file. Fallback-backend outputs never mix with sandboxed ones. Computed once per build, through the stat cache. |
//! | `inputs`               | for each known input in the graph's order: path and content hash (or "missing")                                                                            | sources, and other actions' outputs: a dependency that came out byte-identical leaves this action's key unchanged (early cutoff). |
//! | `discovered`           | for each header the compiler reported in its depfile on the last run (only paths under `/kraft`; sorted): path and content hash                            | headers are found by the preprocessor, not declared. System headers (`/usr/...`) are covered by `env`. |
//!
//! Two keys are derived (the two levels of ccache's manifest / Bazel's
//! discovered inputs):
//!
//! * the **pre-key** hashes `script`, `env` and `inputs`: everything known
//!   before running. In the action cache it names a *manifest*: the lists of
//!   header paths that runs with this pre-key discovered.
//! * the **key** hashes the pre-key and `discovered`. In the action cache it
//!   names the outputs. For actions without a depfile, `discovered` is empty.
//!
//! So a lookup on a fresh build dir takes the pre-key, reads the manifest, and
//! for each header list computes the key with those headers' *current* hashes.
//!
//! What is not in the key: timestamps, the host path of the workspace or the
//! store, environment variables (the sandbox clears them), and tools other than
//! the toolchain that a `Script` action may run (python, sed: taken from the
//! sandbox's read-only `/usr`). A header newly created earlier in the include
//! path than the one last found is not noticed (as with ccache).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::plan::graph::Action;
use crate::exec::state::StatCache;

pub type Hash = blake3::Hash;

/// Bump when anything about how keys are computed changes.
pub const KEY_VERSION: &str = "kraft-xtask action key v1";

/// Everything an action's outputs depend on, as hashes. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub script: Hash,
    pub env: Hash,
    /// Known inputs in graph order; `None` = the file did not exist.
    pub inputs: Vec<(Utf8PathBuf, Option<Hash>)>,
    /// Discovered inputs (depfile), sorted by path; `None` = did not exist.
    pub discovered: Vec<(Utf8PathBuf, Option<Hash>)>,
}

fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn put_files(h: &mut blake3::Hasher, files: &[(Utf8PathBuf, Option<Hash>)]) {
    h.update(&(files.len() as u64).to_le_bytes());
    for (path, hash) in files {
        put(h, path.as_str().as_bytes());
        match hash {
            Some(hash) => {
                h.update(&[1]);
                h.update(hash.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
    }
}

/// Hash of an action's command: kind, script, cwd, outputs, depfile.
///
/// `script` is the action's script in inside (`/kraft`) form: the graph's
/// text, passed through the non-sandboxed backend's host → inside rewrite.
pub fn script_hash(action: &Action, script: &str) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
    put(&mut h, b"script");
    put(&mut h, format!("{:?}", action.kind).as_bytes());
    put(&mut h, script.as_bytes());
    put(&mut h, action.cwd.as_str().as_bytes());
    h.update(&(action.outputs.len() as u64).to_le_bytes());
    for o in &action.outputs {
        put(&mut h, o.as_str().as_bytes());
    }
    put(&mut h, action.depfile.as_ref().map_or("", |d| d.as_str()).as_bytes());
    h.finalize()
}

/// The `env` field: toolchain identity and backend hermeticity.
pub fn env_hash(toolchain: &Toolchain, hermetic: bool) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
    put(&mut h, b"env");
    h.update(toolchain.id.as_bytes());
    h.update(&[hermetic as u8]);
    h.finalize()
}

impl Fingerprint {
    /// Key of everything known before running (names the manifest).
    pub fn prekey(&self) -> Hash {
        let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
        put(&mut h, b"prekey");
        h.update(self.script.as_bytes());
        h.update(self.env.as_bytes());
        put_files(&mut h, &self.inputs);
        h.finalize()
    }

    /// The action key (names the outputs in the action cache).
    pub fn key(&self) -> Hash {
        key_from(self.prekey(), &self.discovered)
    }

    /// Why an action whose last build had fingerprint `old` must be brought
    /// up to date, or `None` if this fingerprint is the same.
    pub fn compare(&self, old: &Fingerprint) -> Option<DirtyReason> {
        if self.script != old.script {
            return Some(DirtyReason::ScriptChanged);
        }
        if self.env != old.env {
            return Some(DirtyReason::ToolchainChanged);
        }
        if let Some(r) = compare_files(&self.inputs, &old.inputs, false) {
            return Some(r);
        }
        compare_files(&self.discovered, &old.discovered, true)
    }
}

/// The key for a pre-key and a set of discovered inputs (sorted by path).
pub fn key_from(prekey: Hash, discovered: &[(Utf8PathBuf, Option<Hash>)]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
    put(&mut h, b"key");
    h.update(prekey.as_bytes());
    put_files(&mut h, discovered);
    h.finalize()
}

fn compare_files(
    new: &[(Utf8PathBuf, Option<Hash>)],
    old: &[(Utf8PathBuf, Option<Hash>)],
    header: bool,
) -> Option<DirtyReason> {
    // The common case (nothing changed) in one linear pass over the bytes;
    // `Path` comparison walks components and is far slower.
    let same = |(a, x): &(Utf8PathBuf, Option<Hash>), (b, y): &(Utf8PathBuf, Option<Hash>)| a.as_str() == b.as_str() && x == y;
    if new.len() == old.len() && new.iter().zip(old).all(|(n, o)| same(n, o)) {
        return None;
    }
    let old_map: HashMap<&str, &Option<Hash>> = old.iter().map(|(p, h)| (p.as_str(), h)).collect();
    let new_map: HashMap<&str, &Option<Hash>> = new.iter().map(|(p, h)| (p.as_str(), h)).collect();
    for (path, hash) in new {
        match old_map.get(path.as_str()) {
            None => return Some(DirtyReason::InputAdded { path: path.clone() }),
            Some(old_hash) if *old_hash != hash => {
                let (old, new) = (hex(old_hash), hex(hash));
                let path = path.clone();
                return Some(if header {
                    DirtyReason::HeaderChanged { path, old, new }
                } else {
                    DirtyReason::InputChanged { path, old, new }
                });
            }
            Some(_) => {}
        }
    }
    for (path, _) in old {
        if !new_map.contains_key(path.as_str()) {
            return Some(DirtyReason::InputRemoved { path: path.clone() });
        }
    }
    if new.iter().map(|(p, _)| p.as_str()).ne(old.iter().map(|(p, _)| p.as_str())) {
        return Some(DirtyReason::InputsReordered);
    }
    None
}

fn hex(h: &Option<Hash>) -> Option<String> {
    h.map(|h| h.to_hex().to_string())
}

/// Why an action was not up to date. The value drives the decision (any
/// reason means "bring it up to date": restore from the action cache or run)
/// and the message (`explain`, verbose builds).
///
/// Hashes are hex; `None` means the file did not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DirtyReason {
    /// No record of this action in this build directory.
    NeverBuilt,
    /// The command (script, cwd, declared outputs, depfile path) changed.
    ScriptChanged,
    /// The toolchain or the sandbox backend changed.
    ToolchainChanged,
    /// A known input's content changed.
    InputChanged { path: Utf8PathBuf, old: Option<String>, new: Option<String> },
    /// A header from the last depfile changed (or disappeared).
    HeaderChanged { path: Utf8PathBuf, old: Option<String>, new: Option<String> },
    /// The graph lists a new input.
    InputAdded { path: Utf8PathBuf },
    /// The graph no longer lists an input.
    InputRemoved { path: Utf8PathBuf },
    /// Same inputs, different order (matters to linkers).
    InputsReordered,
    /// An output recorded by the last build is gone.
    OutputMissing { path: Utf8PathBuf },
    /// An output was changed by something other than this action.
    OutputModified { path: Utf8PathBuf, old: String, new: Option<String> },
    /// The state's key does not match its fingerprint (key format changed).
    KeyFormatChanged,
}

fn short(h: &Option<String>) -> &str {
    match h {
        Some(h) => &h[..h.len().min(12)],
        None => "(missing)",
    }
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NeverBuilt => write!(f, "never built in this build directory"),
            DirtyReason::ScriptChanged => write!(f, "the command changed"),
            DirtyReason::ToolchainChanged => write!(f, "the toolchain changed"),
            DirtyReason::InputChanged { path, old, new } => {
                write!(f, "input {path} changed ({} -> {})", short(old), short(new))
            }
            DirtyReason::HeaderChanged { path, old, new } => {
                write!(f, "header {path} changed ({} -> {})", short(old), short(new))
            }
            DirtyReason::InputAdded { path } => write!(f, "new input {path}"),
            DirtyReason::InputRemoved { path } => write!(f, "input {path} no longer used"),
            DirtyReason::InputsReordered => write!(f, "inputs reordered"),
            DirtyReason::OutputMissing { path } => write!(f, "output {path} is missing"),
            DirtyReason::OutputModified { path, old, new } => {
                write!(f, "output {path} was modified ({} -> {})", short(&Some(old.clone())), short(new))
            }
            DirtyReason::KeyFormatChanged => write!(f, "the key format changed"),
        }
    }
}

// ---------------------------------------------------------------- toolchain

/// Which toolchain to identify. `cross_compile` is Unikraft's `CROSS_COMPILE`
/// prefix (`x86_64-linux-gnu-`, or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainSpec {
    pub cross_compile: String,
    /// The compiler driver (without prefix): `gcc`.
    pub cc: String,
    /// Programs the driver runs, resolved with `-print-prog-name=`.
    pub driver_programs: Vec<String>,
    /// Other tools Unikraft's rules call directly (with prefix).
    pub tools: Vec<String>,
}

impl Default for ToolchainSpec {
    fn default() -> Self {
        ToolchainSpec {
            cross_compile: String::new(),
            cc: "gcc".into(),
            driver_programs: ["cc1", "cc1plus", "collect2", "lto-wrapper", "as", "ld"].map(String::from).to_vec(),
            tools: ["ld", "as", "objcopy", "ar", "nm", "strip"].map(String::from).to_vec(),
        }
    }
}

/// The identity of the toolchain for one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// Component name (`gcc`, `cc1`, `version`, ...) → hash of its bytes.
    pub components: BTreeMap<String, Hash>,
    pub id: Hash,
}

impl Toolchain {
    pub fn from_components(components: BTreeMap<String, Hash>) -> Toolchain {
        let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
        put(&mut h, b"toolchain");
        for (k, v) in &components {
            put(&mut h, k.as_bytes());
            h.update(v.as_bytes());
        }
        Toolchain { components, id: h.finalize() }
    }

    /// The bash script that reports the toolchain, run in the sandbox.
    /// Output: `prog<TAB>name<TAB>path` lines, then `text<TAB>...` lines.
    pub fn probe_script(spec: &ToolchainSpec) -> String {
        let cc = format!("{}{}", spec.cross_compile, spec.cc);
        let q = |s: &str| crate::util::shell::quote(s);
        let mut s = String::from("export LC_ALL=C\n");
        s.push_str("r() { p=$(command -v \"$2\" 2>/dev/null) && p=$(readlink -f \"$p\") && printf 'prog\\t%s\\t%s\\n' \"$1\" \"$p\"; true; }\n");
        s.push_str(&format!("r {} {}\n", q(&spec.cc), q(&cc)));
        for p in &spec.driver_programs {
            // Prints an absolute path, or the bare name when it is not found
            // next to the driver (then PATH decides, as it does for gcc).
            s.push_str(&format!("r {} \"$({} -print-prog-name={} 2>/dev/null)\"\n", q(&format!("{}:{p}", spec.cc)), q(&cc), q(p)));
        }
        s.push_str(&format!("x=$({} -print-libgcc-file-name 2>/dev/null); [ -f \"$x\" ] && printf 'prog\\tlibgcc\\t%s\\n' \"$(readlink -f \"$x\")\"\n", q(&cc)));
        for t in &spec.tools {
            s.push_str(&format!("r {} {}\n", q(t), q(&format!("{}{t}", spec.cross_compile))));
        }
        s.push_str(&format!(
            "{{ {cc} -dumpfullversion; {cc} -dumpmachine; {cc} -v; }} 2>&1 | sed 's/^/text\\t/'\ntrue\n",
            cc = q(&cc)
        ));
        s
    }

    /// Build the identity from the probe script's output, hashing each
    /// program through the stat cache (keyed by its absolute path).
    pub fn from_probe(output: &str, stats: &StatCache) -> anyhow::Result<Toolchain> {
        let mut components = BTreeMap::new();
        let mut text = blake3::Hasher::new();
        for line in output.lines() {
            let mut parts = line.splitn(3, '\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("prog"), Some(name), Some(path)) => {
                    let path = Utf8Path::new(path);
                    let hash = match stats.hash(path.as_str(), path) {
                        Ok(Some(h)) => h,
                        // Not visible on the host at the same path: identify by name.
                        _ => blake3::hash(format!("unhashable:{path}").as_bytes()),
                    };
                    components.insert(name.to_owned(), hash);
                }
                (Some("text"), rest, more) => {
                    text.update(rest.unwrap_or("").as_bytes());
                    text.update(more.unwrap_or("").as_bytes());
                    text.update(b"\n");
                }
                _ => {}
            }
        }
        components.insert("version".into(), text.finalize());
        Ok(Toolchain::from_components(components))
    }
}

// ---------------------------------------------------------------- depfiles

/// The prerequisites named in a make-syntax depfile, in order, deduplicated.
///
/// Handles what gcc writes (`-MD`, `-MP` phony rules, `\`-newline
/// continuations, `\ ` for spaces, `\#`, `$$`) and Kbuild/Unikraft `fixdep`
/// output (`source_x := file`, `deps_x := \` lists, `$(wildcard ...)` ignored).
pub fn parse_depfile(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in logical_lines(text) {
        let tokens = tokenize(&line);
        let Some(sep) = tokens.iter().position(|t| t.sep.is_some()) else { continue };
        let sep_tok = &tokens[sep];
        let is_assign = sep_tok.sep == Some(Sep::Assign);
        if is_assign {
            let var = tokens[..=sep].first().map(|t| t.text.as_str()).unwrap_or("");
            if !(var.starts_with("deps_") || var.starts_with("source_")) {
                continue;
            }
        }
        let mut rest: Vec<&Token> = Vec::new();
        if !sep_tok.after.is_empty() {
            // `target:dep` written without a space.
            rest.push(sep_tok);
        }
        rest.extend(tokens[sep + 1..].iter());
        let mut depth = 0i32;
        for t in rest {
            let word = if t.sep.is_some() { t.after.as_str() } else { t.text.as_str() };
            if word.contains("$(") || depth > 0 {
                depth += word.matches("$(").count() as i32 - word.matches(')').count() as i32;
                depth = depth.max(0);
                continue;
            }
            if word.is_empty() {
                continue;
            }
            if seen.insert(word.to_owned()) {
                out.push(word.to_owned());
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    Rule,
    Assign,
}

#[derive(Debug)]
struct Token {
    text: String,
    /// This token contains the rule's `:` (or `:=`); `text` is before it.
    sep: Option<Sep>,
    /// Text after the separator within the same token.
    after: String,
}

/// Join `\`-newline continuations and drop comments.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut in_comment = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('\n')) => {
                chars.next();
                cur.push(' ');
            }
            '\\' if matches!(chars.peek(), Some('\r')) => {
                chars.next();
                if matches!(chars.peek(), Some('\n')) {
                    chars.next();
                }
                cur.push(' ');
            }
            '\\' => {
                if !in_comment {
                    cur.push('\\');
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
            }
            '\n' => {
                in_comment = false;
                lines.push(std::mem::take(&mut cur));
            }
            '#' => in_comment = true,
            _ if in_comment => {}
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

fn tokenize(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut after = String::new();
    let mut sep: Option<Sep> = None;
    let mut seen_sep = false;
    let mut chars = line.chars().peekable();
    let flush = |tokens: &mut Vec<Token>, text: &mut String, after: &mut String, sep: &mut Option<Sep>| {
        if !text.is_empty() || sep.is_some() || !after.is_empty() {
            tokens.push(Token { text: std::mem::take(text), sep: sep.take(), after: std::mem::take(after) });
        }
    };
    while let Some(c) = chars.next() {
        let buf = if sep.is_some() { &mut after } else { &mut text };
        match c {
            '\\' => match chars.next() {
                Some(n @ (' ' | '#' | ':' | '\\' | '\t')) => buf.push(n),
                Some(n) => {
                    buf.push('\\');
                    buf.push(n);
                }
                None => buf.push('\\'),
            },
            '$' if matches!(chars.peek(), Some('$')) => {
                chars.next();
                buf.push('$');
            }
            ' ' | '\t' | '\r' => flush(&mut tokens, &mut text, &mut after, &mut sep),
            ':' if !seen_sep && sep.is_none() => {
                seen_sep = true;
                if matches!(chars.peek(), Some('=')) {
                    chars.next();
                    sep = Some(Sep::Assign);
                } else {
                    if matches!(chars.peek(), Some(':')) {
                        chars.next();
                    }
                    sep = Some(Sep::Rule);
                }
            }
            _ => buf.push(c),
        }
    }
    flush(&mut tokens, &mut text, &mut after, &mut sep);
    tokens
}

/// Lexically normalize an absolute path (`.` and `..` components).
pub fn normalize(path: &Utf8Path) -> Utf8PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.as_str().split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Utf8PathBuf::from(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_depfile() {
        let d = "build/a.o: src/a.c include/common.h \\\n /usr/include/stdio.h include/with\\ space.h \\\n  include/$$dollar.h\n\ninclude/common.h:\n";
        assert_eq!(
            parse_depfile(d),
            vec!["src/a.c", "include/common.h", "/usr/include/stdio.h", "include/with space.h", "include/$dollar.h"]
        );
    }

    #[test]
    fn fixdep_output() {
        let d = "cmd_a.o := gcc -c a.c\n\nsource_a.o := /kraft/a.c\n\ndeps_a.o := \\\n  /kraft/a.h \\\n    $(wildcard include/config/foo.h) \\\n  /kraft/b.h \\\n\na.o: $(deps_a.o)\n\n$(deps_a.o):\n";
        assert_eq!(parse_depfile(d), vec!["/kraft/a.c", "/kraft/a.h", "/kraft/b.h"]);
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize(Utf8Path::new("/kraft/build/../inc/./x.h")), "/kraft/inc/x.h");
    }

    #[test]
    fn compare_reports_first_change() {
        let h = |s: &str| Some(blake3::hash(s.as_bytes()));
        let a = Fingerprint {
            script: blake3::hash(b"s"),
            env: blake3::hash(b"e"),
            inputs: vec![("/kraft/a.c".into(), h("1"))],
            discovered: vec![("/kraft/a.h".into(), h("1"))],
        };
        let mut b = a.clone();
        assert_eq!(b.compare(&a), None);
        b.discovered[0].1 = h("2");
        assert!(matches!(b.compare(&a), Some(DirtyReason::HeaderChanged { .. })));
        assert_ne!(a.key(), b.key());
        assert_eq!(a.prekey(), b.prekey());
    }
}
