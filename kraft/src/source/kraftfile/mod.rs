//! The Kraftfile: a Unikraft app description, read the way kraftkit reads it.
//!
//! kraftkit (`unikraft/app/loader.go` and the `TransformFromSchema` functions
//! of `unikraft/{core,lib,target,plat,arch,runtime}`, `unikraft/component`,
//! `kconfig/config.go`, `schema/schema.go`) is the authority for what a
//! Kraftfile means. This module follows it with three rules of its own:
//!
//! * where kraftkit fails (an error, or a panic on a wrong type), loading fails
//!   with a located [`Diagnostic`] saying what is wrong and how to fix it;
//! * where kraftkit silently ignores something, a warning is pushed onto
//!   [`Kraftfile::warnings`];
//! * scalars keep the text they are written with: `version: 0.10` is the
//!   version `"0.10"` (kraftkit's YAML decoder would read the float `0.1`).
//!
//! YAML is read with `yaml-rust2`'s event API into a small tree that keeps each
//! scalar's raw text, whether it was quoted, and its position. Plain scalars
//! are then typed with YAML 1.1 rules, as kraftkit's `gopkg.in/yaml.v2` does
//! (so `y`, `yes`, `on` are booleans and become `y` in a kconfig map).

use std::collections::{BTreeMap, HashMap};

use camino::{Utf8Component, Utf8Path, Utf8PathBuf};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, Location};

/// Names looked for in an app directory, in kraftkit's order of preference.
pub const FILE_NAMES: [&str; 5] = ["kraft.yaml", "kraft.yml", "Kraftfile.yml", "Kraftfile.yaml", "Kraftfile"];

/// The newest Kraftfile specification kraftkit knows.
pub const SPEC_LATEST: &str = "v0.6";

/// Top-level keys kraftkit reads (besides `x-*` extension keys).
const TOP_LEVEL_KEYS: [&str; 15] = [
    "spec",
    "specification",
    "name",
    "cmd",
    "unikraft",
    "runtime",
    "template",
    "rootfs",
    "outdir",
    "labels",
    "env",
    "volumes",
    "targets",
    "libraries",
    "extensions",
];

/// Find the Kraftfile in `dir` (first of [`FILE_NAMES`] that exists as a file).
///
/// kraftkit itself refuses a directory holding more than one of these names;
/// this function takes the first, as documented in `FILE_NAMES`.
pub fn find(dir: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    if !dir.is_dir() {
        return Err(Diagnostic::new(format!("app directory `{dir}` does not exist"))
            .help("pass the directory that holds the app's Kraftfile")
            .into());
    }
    for name in FILE_NAMES {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Diagnostic::new(format!("no Kraftfile in `{dir}`"))
        .help(format!(
            "create `{dir}/Kraftfile` starting with `spec: v0.6` (accepted names: {})",
            FILE_NAMES.join(", ")
        ))
        .into())
}

/// Read and normalize one Kraftfile. A directory is searched with [`find`].
pub fn load(path: &Utf8Path) -> anyhow::Result<Kraftfile> {
    let path = if path.is_dir() { find(path)? } else { path.to_owned() };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Diagnostic::new(format!("cannot read Kraftfile `{path}`: {e}"))
            .help("check that the file exists, is readable and is UTF-8 text")
    })?;
    parse(&path, &text)
}

/// Parse text (path used for locations and resolving relative local sources).
pub fn parse(path: &Utf8Path, text: &str) -> anyhow::Result<Kraftfile> {
    let mut root = yaml::parse(path, text)?;
    let v07_notes = v07::normalize(&mut root);
    let dir = absolute_dir(path);
    let mut cx = Cx { path, dir, warnings: Vec::new() };
    let mut kf = cx.kraftfile(&root)?;
    kf.warnings = cx.warnings;
    kf.warnings.extend(v07_notes.into_iter().map(|n| Diagnostic::at(Location::new(path, n.line, n.column), n.message).help(n.help)));
    Ok(kf)
}

/// A normalized Kraftfile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Kraftfile {
    /// The file, as passed to [`load`] or [`parse`].
    pub path: Utf8PathBuf,
    /// `spec` (or `specification`) exactly as written: `"v0.6"`, `"0.5"`.
    pub spec: Option<String>,
    pub name: Option<String>,
    /// `cmd`; a string is split into words as kraftkit's `shellwords.Parse` does.
    pub cmd: Vec<String>,
    /// The `unikraft` core (name `"unikraft"`).
    pub unikraft: Option<Component>,
    /// `runtime`: a string as written; the map form gives `source[:version]`.
    pub runtime: Option<String>,
    pub rootfs: Option<String>,
    pub outdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub targets: Vec<Target>,
    /// `libraries`, in file order.
    pub libraries: Vec<Component>,
    pub warnings: Vec<Diagnostic>,
}

/// The Unikraft core or a library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    pub name: String,
    pub source: Option<Source>,
    /// Exactly as written; also taken from a source URL's `?branch=`, `?tag=`
    /// or `?version=`.
    pub version: Option<String>,
    /// `("CONFIG_X", "y")`, in file order, keys as written.
    pub kconfig: Vec<(String, String)>,
    /// Where it is declared (the key naming it).
    pub location: Location,
}

/// Where a component's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// A git URL (query string removed).
    Git { url: String },
    /// A local directory; `path` is absolute (joined to the Kraftfile's dir and
    /// normalized lexically), `written` as in the file.
    Local { path: Utf8PathBuf, written: String },
}

/// One build target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Normalized as kraftkit does: `kvm` → `qemu`, `firecracker` → `fc`.
    pub platform: String,
    pub architecture: String,
    pub name: Option<String>,
    pub kconfig: Vec<(String, String)>,
    pub location: Location,
}

impl Target {
    /// `"qemu/x86_64"`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.platform, self.architecture)
    }

    /// `"qemu-x86_64"`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.platform, self.architecture)
    }

    /// The options kraftkit sets for this target's architecture and platform
    /// (`ArchitectureConfig.KConfig`, `PlatformConfig.KConfig`, and the
    /// kraftcloud exception of `application.Configure`).
    pub fn implied_kconfig(&self) -> Vec<(String, String)> {
        let y = |k: &str| (k.to_string(), "y".to_string());
        let n = |k: &str| (k.to_string(), "n".to_string());
        let mut out = Vec::new();
        match self.architecture.as_str() {
            "x86_64" => out.push(y("CONFIG_ARCH_X86_64")),
            "arm" => out.push(y("CONFIG_ARCH_ARM_32")),
            "arm64" => out.push(y("CONFIG_ARCH_ARM_64")),
            _ => {}
        }
        match self.platform.as_str() {
            "fc" | "firecracker" | "kraftcloud" => {
                out.push(y("CONFIG_PLAT_KVM"));
                out.push(y("CONFIG_KVM_VMM_FIRECRACKER"));
            }
            "kvm" | "qemu" => {
                out.push(y("CONFIG_PLAT_KVM"));
                out.push(y("CONFIG_KVM_VMM_QEMU"));
            }
            "xen" => out.push(y("CONFIG_PLAT_XEN")),
            "linuxu" => out.push(y("CONFIG_PLAT_LINUXU")),
            _ => {}
        }
        if self.platform == "kraftcloud" {
            out.push(n("CONFIG_KVM_DEBUG_VGA_CONSOLE"));
            out.push(n("CONFIG_KVM_KERNEL_VGA_CONSOLE"));
        }
        out
    }
}

/// The option kraftkit sets to enable a library (`LibraryConfig.KConfig`):
/// `CONFIG_LIB<NAME>`, or `CONFIG_<NAME>` when the name starts with `lib`.
pub fn library_kconfig_symbol(name: &str) -> String {
    let upper = name.to_uppercase();
    if upper.starts_with("LIB") {
        format!("CONFIG_{upper}")
    } else {
        format!("CONFIG_LIB{upper}")
    }
}

impl Kraftfile {
    /// The directory holding the Kraftfile.
    pub fn dir(&self) -> &Utf8Path {
        match self.path.parent() {
            Some(p) if !p.as_str().is_empty() => p,
            _ => Utf8Path::new("."),
        }
    }

    /// All kconfig in effect for a target, merged as kraftkit's
    /// `application.Configure` does (later wins; a key keeps the position of
    /// its first setting):
    ///
    /// 1. the core's `kconfig`;
    /// 2. for each library in file order: its `kconfig`, then
    ///    [`library_kconfig_symbol`]`=y`;
    /// 3. the target's `kconfig`;
    /// 4. [`Target::implied_kconfig`] (kraftkit lets these override the target's).
    ///
    /// kraftkit iterates libraries in Go map order (random); file order is used
    /// here.
    pub fn kconfig_for(&self, target: &Target) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut set = |k: &str, v: &str| match index.get(k) {
            Some(&i) => out[i].1 = v.to_string(),
            None => {
                index.insert(k.to_string(), out.len());
                out.push((k.to_string(), v.to_string()));
            }
        };
        if let Some(core) = &self.unikraft {
            for (k, v) in &core.kconfig {
                set(k, v);
            }
        }
        for lib in &self.libraries {
            for (k, v) in &lib.kconfig {
                set(k, v);
            }
            set(&library_kconfig_symbol(&lib.name), "y");
        }
        for (k, v) in &target.kconfig {
            set(k, v);
        }
        for (k, v) in target.implied_kconfig() {
            set(&k, &v);
        }
        out
    }

    /// The library called `name`, if declared.
    pub fn library(&self, name: &str) -> Option<&Component> {
        self.libraries.iter().find(|l| l.name == name)
    }
}

// ---------------------------------------------------------------------------
// Paths

fn absolute_dir(path: &Utf8Path) -> Utf8PathBuf {
    let dir = match path.parent() {
        Some(p) if !p.as_str().is_empty() => p.to_owned(),
        _ => Utf8PathBuf::from("."),
    };
    let abs = if dir.is_absolute() {
        dir
    } else {
        match std::env::current_dir().ok().and_then(|d| Utf8PathBuf::from_path_buf(d).ok()) {
            Some(cwd) => cwd.join(dir),
            None => dir,
        }
    };
    normalize_lexically(&abs)
}

/// Remove `.` and resolve `..` without touching the file system.
fn normalize_lexically(path: &Utf8Path) -> Utf8PathBuf {
    let mut out = Utf8PathBuf::new();
    for c in path.components() {
        match c {
            Utf8Component::CurDir => {}
            Utf8Component::ParentDir => {
                let popped = match out.components().next_back() {
                    Some(Utf8Component::Normal(_)) => out.pop(),
                    Some(Utf8Component::RootDir) | Some(Utf8Component::Prefix(_)) => true,
                    _ => false,
                };
                if !popped {
                    out.push("..");
                }
            }
            other => out.push(other.as_str()),
        }
    }
    if out.as_str().is_empty() {
        out.push(".");
    }
    out
}

fn home_dir() -> Option<Utf8PathBuf> {
    crate::config::Config::get().home.clone()
}

// ---------------------------------------------------------------------------
// YAML: events to a small tree that keeps raw text, style and position

mod v07;

mod yaml {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Style {
        /// Plain (unquoted) scalar: typed by YAML 1.1 rules.
        Plain,
        /// Quoted, block, or tagged `!!str`: always a string.
        Quoted,
    }

    #[derive(Debug, Clone)]
    pub enum Value {
        Scalar { text: String, style: Style },
        Seq(Vec<Node>),
        Map(Vec<(Node, Node)>),
    }

    #[derive(Debug, Clone)]
    pub struct Node {
        pub value: Value,
        pub line: usize,
        pub column: usize,
    }

    /// A scalar's type, as `gopkg.in/yaml.v2` resolves it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        Null,
        Bool(bool),
        Number,
        Str,
    }

    impl Node {
        pub fn scalar(&self) -> Option<(&str, Kind)> {
            match &self.value {
                Value::Scalar { text, style: Style::Quoted } => Some((text, Kind::Str)),
                Value::Scalar { text, style: Style::Plain } => Some((text, resolve_plain(text))),
                _ => None,
            }
        }

        pub fn is_null(&self) -> bool {
            matches!(self.scalar(), Some((_, Kind::Null)))
        }

        /// "a string", "a list", ... for messages.
        pub fn describe(&self) -> String {
            match &self.value {
                Value::Seq(_) => "a list".into(),
                Value::Map(_) => "a map".into(),
                Value::Scalar { text, .. } => match self.scalar().map(|s| s.1) {
                    Some(Kind::Null) => "empty".into(),
                    Some(Kind::Bool(_)) => format!("the boolean `{text}`"),
                    Some(Kind::Number) => format!("the number `{text}`"),
                    _ => format!("the string `{text}`"),
                },
            }
        }
    }

    /// YAML 1.1 resolution of a plain scalar, following yaml.v2's `resolve`.
    pub fn resolve_plain(s: &str) -> Kind {
        match s {
            "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
            "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
                return Kind::Bool(true)
            }
            "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
                return Kind::Bool(false)
            }
            ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf"
            | "-.Inf" | "-.INF" => return Kind::Number,
            _ => {}
        }
        if is_yaml11_number(s) {
            Kind::Number
        } else {
            Kind::Str
        }
    }

    fn is_yaml11_number(s: &str) -> bool {
        let first = s.as_bytes()[0];
        if first == b'.' {
            return s.parse::<f64>().is_ok() && !s.contains(['e', 'E', 'i', 'n', 'I', 'N']);
        }
        if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
            return false;
        }
        let plain: String = s.chars().filter(|&c| c != '_').collect();
        let digits = plain.strip_prefix(['+', '-']).unwrap_or(&plain);
        let radix_ok = |rest: &str, radix: u32| !rest.is_empty() && rest.chars().all(|c| c.is_digit(radix));
        if let Some(rest) = digits.strip_prefix("0x") {
            return radix_ok(rest, 16);
        }
        if let Some(rest) = digits.strip_prefix("0b") {
            return radix_ok(rest, 2);
        }
        if let Some(rest) = digits.strip_prefix("0o") {
            return radix_ok(rest, 8);
        }
        // Decimal integer, or a float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
        let (mantissa, exponent) = match digits.find(['e', 'E']) {
            Some(i) => (&digits[..i], Some(&digits[i + 1..])),
            None => (digits, None),
        };
        let mantissa_ok = match mantissa.split_once('.') {
            Some((int, frac)) => {
                (int.is_empty() && !frac.is_empty() && frac.chars().all(|c| c.is_ascii_digit()))
                    || (!int.is_empty()
                        && int.chars().all(|c| c.is_ascii_digit())
                        && frac.chars().all(|c| c.is_ascii_digit()))
            }
            None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
        };
        let exponent_ok = match exponent {
            None => true,
            Some(e) => {
                let e = e.strip_prefix(['+', '-']).unwrap_or(e);
                !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
            }
        };
        mantissa_ok && exponent_ok
    }

    enum Frame {
        Seq { line: usize, column: usize, anchor: usize, items: Vec<Node> },
        Map { line: usize, column: usize, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
    }

    #[derive(Default)]
    struct Builder {
        stack: Vec<Frame>,
        anchors: HashMap<usize, Node>,
        root: Option<Node>,
        /// First structural problem: line, column, message, help.
        error: Option<(usize, usize, String, String)>,
    }

    impl Builder {
        fn fail(&mut self, line: usize, column: usize, message: String, help: String) {
            if self.error.is_none() {
                self.error = Some((line, column, message, help));
            }
        }

        fn finish(&mut self, node: Node, anchor: usize) {
            if anchor > 0 {
                self.anchors.insert(anchor, node.clone());
            }
            self.push(node);
        }

        fn push(&mut self, node: Node) {
            let mut problem = None;
            match self.stack.last_mut() {
                None => {
                    if self.root.is_none() {
                        self.root = Some(node);
                    }
                }
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map { entries, key, .. }) => match key.take() {
                    None => {
                        match &node.value {
                            Value::Scalar { text, style } => {
                                let kind = if *style == Style::Plain { resolve_plain(text) } else { Kind::Str };
                                if *style == Style::Plain && text == "<<" {
                                    problem = Some((
                                        node.line,
                                        node.column,
                                        "YAML merge keys (`<<`) are not supported".to_string(),
                                        "write the merged keys out".to_string(),
                                    ));
                                } else if kind != Kind::Str {
                                    problem = Some((
                                        node.line,
                                        node.column,
                                        format!("map keys must be strings, but YAML reads `{text}` as {}", match kind {
                                            Kind::Null => "null",
                                            Kind::Bool(_) => "a boolean",
                                            _ => "a number",
                                        }),
                                        format!("quote the key: `\"{text}\":`"),
                                    ));
                                } else if let Some((first, _)) = entries.iter().find(|(k, _)| {
                                    matches!(&k.value, Value::Scalar { text: t, .. } if t == text)
                                }) {
                                    problem = Some((
                                        node.line,
                                        node.column,
                                        format!("duplicate key `{text}` (first set on line {})", first.line),
                                        "remove one of the two entries".to_string(),
                                    ));
                                }
                            }
                            _ => {
                                problem = Some((
                                    node.line,
                                    node.column,
                                    "map keys must be strings".to_string(),
                                    "use a plain word as the key".to_string(),
                                ));
                            }
                        }
                        *key = Some(node);
                    }
                    Some(k) => {
                        let mut node = node;
                        // An empty value (`key:`) is marked where the next
                        // token starts; point at its key instead.
                        if matches!(&node.value, Value::Scalar { text, style: Style::Plain } if text.is_empty()) {
                            (node.line, node.column) = (k.line, k.column);
                        }
                        entries.push((k, node))
                    }
                },
            }
            if let Some((l, c, m, h)) = problem {
                self.fail(l, c, m, h);
            }
        }
    }

    impl MarkedEventReceiver for Builder {
        fn on_event(&mut self, ev: Event, mark: Marker) {
            let (line, column) = (mark.line(), mark.col() + 1);
            match ev {
                Event::Scalar(text, style, anchor, tag) => {
                    let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                    let style = if style == TScalarStyle::Plain && !is_str_tag { Style::Plain } else { Style::Quoted };
                    self.finish(Node { value: Value::Scalar { text, style }, line, column }, anchor);
                }
                Event::Alias(id) => match self.anchors.get(&id).cloned() {
                    Some(mut node) => {
                        node.line = line;
                        node.column = column;
                        self.push(node);
                    }
                    None => {
                        self.fail(line, column, "unknown YAML alias".into(), "define the anchor (`&name`) before using it".into());
                        self.push(Node { value: Value::Scalar { text: String::new(), style: Style::Plain }, line, column });
                    }
                },
                Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq { line, column, anchor, items: Vec::new() }),
                Event::MappingStart(anchor, _) => {
                    self.stack.push(Frame::Map { line, column, anchor, entries: Vec::new(), key: None })
                }
                Event::SequenceEnd => {
                    if let Some(Frame::Seq { line, column, anchor, items }) = self.stack.pop() {
                        self.finish(Node { value: Value::Seq(items), line, column }, anchor);
                    }
                }
                Event::MappingEnd => {
                    if let Some(Frame::Map { mut line, mut column, anchor, entries, .. }) = self.stack.pop() {
                        // A block mapping's start mark lies after its first
                        // key; point at that key instead.
                        if let Some((first, _)) = entries.first() {
                            if (first.line, first.column) < (line, column) {
                                (line, column) = (first.line, first.column);
                            }
                        }
                        self.finish(Node { value: Value::Map(entries), line, column }, anchor);
                    }
                }
                Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
            }
        }
    }

    fn yaml_help(info: &str) -> &'static str {
        if info.contains("tab") {
            "indent with spaces; YAML does not allow tabs for indentation"
        } else if info.contains("flow sequence") {
            "close the list with `]` (and separate items with `,`)"
        } else if info.contains("flow mapping") {
            "close the map with `}` (and separate entries with `,`)"
        } else if info.contains("quoted scalar") {
            "close the quoted string"
        } else {
            "check the indentation and quoting here; a value holding `: ` or starting with `{`, `[`, `*`, `&` or `%` must be quoted"
        }
    }

    /// Parse the first YAML document of `text`. Nothing is `Null` at 1:1.
    pub fn parse(path: &Utf8Path, text: &str) -> anyhow::Result<Node> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if let Err(e) = parser.load(&mut builder, false) {
            let m = e.marker();
            let info = e.info();
            return Err(Diagnostic::at(
                Location::new(path, m.line().max(1), m.col() + 1),
                format!("invalid YAML: {info}"),
            )
            .help(yaml_help(info))
            .into());
        }
        if let Some((line, column, message, help)) = builder.error {
            return Err(Diagnostic::at(Location::new(path, line, column), message).help(help).into());
        }
        Ok(builder
            .root
            .unwrap_or(Node { value: Value::Scalar { text: String::new(), style: Style::Plain }, line: 1, column: 1 }))
    }
}

use yaml::{Kind, Node, Value};

// ---------------------------------------------------------------------------
// Shell words (kraftkit runs `cmd` through mattn/go-shellwords' `Parse`)

/// Split a command line into words: blanks separate words, `'…'` is literal,
/// `"…"` groups, a backslash outside single quotes escapes the next character.
/// Characters go-shellwords treats specially (`; & | < >` stop parsing there,
/// backquotes and parentheses start substitutions) are refused unless quoted.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut buf = String::new();
    let mut have_word = false;
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in line.chars() {
        if escaped {
            buf.push(c);
            escaped = false;
            have_word = true;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => {
                single = !single;
                have_word = true;
            }
            '"' if !single => {
                double = !double;
                have_word = true;
            }
            ' ' | '\t' | '\r' | '\n' if !single && !double => {
                if have_word {
                    words.push(std::mem::take(&mut buf));
                    have_word = false;
                }
            }
            ';' | '&' | '|' | '<' | '>' | '`' | '(' | ')' if !single && !double => {
                return Err(format!("unquoted `{c}`"));
            }
            _ => {
                buf.push(c);
                have_word = true;
            }
        }
    }
    if escaped {
        return Err("a trailing backslash".into());
    }
    if single || double {
        return Err("an unterminated quote".into());
    }
    if have_word {
        words.push(buf);
    }
    Ok(words)
}

/// `"text"` with `\"` and `\\` escapes, as in a `.config` file.
fn unquote_kconfig(value: &str) -> Option<String> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Sources and versions

/// A string given as a component (`unikraft: stable`, `lwip: https://…`) or as
/// its `source:`, classified as kraftkit's `parseStringProp` does.
#[derive(Debug, PartialEq, Eq)]
enum Spec {
    Source { source: Source, version: Option<String> },
    Version(String),
}

/// The value of the first of `branch`, `tag`, `version` in a URL query.
fn query_version(query: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = query
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    ["branch", "tag", "version"].iter().find_map(|want| {
        pairs.iter().find(|(k, _)| k == want).map(|(_, v)| v.clone()).filter(|v| !v.is_empty())
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://host/...` with a non-empty host (Go's `url.Parse(s).Host != ""`).
fn url_with_host(s: &str) -> Option<(String, Option<String>)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        return None;
    }
    let (without_fragment, fragment) = match s.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let (base, version) = match without_fragment.split_once('?') {
        Some((base, query)) => (base.to_string(), query_version(query)),
        None => (without_fragment.to_string(), None),
    };
    let url = match fragment {
        Some(f) => format!("{base}#{f}"),
        None => base,
    };
    Some((url, version))
}

/// `user@host:path` (scp-like git address).
fn scp_like(s: &str) -> bool {
    if s.contains("://") || s.starts_with(['.', '/', '~']) {
        return false;
    }
    match (s.find('@'), s.find(':')) {
        (Some(at), Some(colon)) => at > 0 && colon > at + 1 && colon + 1 < s.len() && !s[..colon].contains('/'),
        _ => false,
    }
}

fn looks_like_path(s: &str) -> bool {
    s == "." || s == ".." || s == "~" || s.starts_with("./") || s.starts_with("../") || s.starts_with('/') || s.starts_with("~/")
}

// ---------------------------------------------------------------------------
// Normalization

struct Cx<'a> {
    path: &'a Utf8Path,
    /// Absolute, lexically normalized directory of the Kraftfile.
    dir: Utf8PathBuf,
    warnings: Vec<Diagnostic>,
}

type Entries = [(Node, Node)];

impl Cx<'_> {
    fn loc(&self, node: &Node) -> Location {
        Location::new(self.path, node.line, node.column)
    }

    fn err(&self, node: &Node, message: impl Into<String>, help: impl Into<String>) -> anyhow::Error {
        Diagnostic::at(self.loc(node), message).help(help).into()
    }

    fn warn(&mut self, node: &Node, message: impl Into<String>, help: impl Into<String>) {
        let d = Diagnostic::at(self.loc(node), message).help(help);
        self.warnings.push(d);
    }

    fn key<'n>(&self, key: &'n Node) -> &'n str {
        match &key.value {
            Value::Scalar { text, .. } => text,
            _ => "",
        }
    }

    /// A map (`null` counts as empty when `null_ok`).
    fn map<'n>(&self, node: &'n Node, what: &str, help: &str) -> anyhow::Result<&'n Entries> {
        match &node.value {
            Value::Map(entries) => Ok(entries),
            _ if node.is_null() => Ok(&[]),
            _ => Err(self.err(node, format!("`{what}` must be a map, found {}", node.describe()), help)),
        }
    }

    /// A scalar that YAML reads as a string.
    fn string(&self, node: &Node, what: &str, example: &str) -> anyhow::Result<String> {
        match node.scalar() {
            Some((text, Kind::Str)) => Ok(text.to_string()),
            Some((text, Kind::Bool(_) | Kind::Number)) => Err(self.err(
                node,
                format!("`{what}` must be a string, found {}", node.describe()),
                format!("quote it: `{what}: \"{text}\"`"),
            )),
            _ => Err(self.err(
                node,
                format!("`{what}` must be a string, found {}", node.describe()),
                format!("write `{what}: {example}`"),
            )),
        }
    }

    /// A version: a string or a number, kept as written.
    fn version(&mut self, node: &Node, what: &str) -> anyhow::Result<String> {
        match node.scalar() {
            Some((text, Kind::Str)) => Ok(text.to_string()),
            Some((text, Kind::Number)) => {
                self.warn_number_version(node, text);
                Ok(text.to_string())
            }
            _ => Err(self.err(
                node,
                format!("`{what}` must be a version, found {}", node.describe()),
                format!("write a branch, tag or version: `{what}: stable` or `{what}: \"0.17.0\"`"),
            )),
        }
    }

    /// kraftkit reads an unquoted number as a float and formats it back.
    fn warn_number_version(&mut self, node: &Node, text: &str) {
        if let Ok(f) = text.replace('_', "").parse::<f64>() {
            let go = format!("{f}");
            if go != text {
                self.warn(
                    node,
                    format!("kraftkit reads the version `{text}` as the number {go}"),
                    format!("quote it: \"{text}\""),
                );
            }
        }
    }

    fn kraftfile(&mut self, root: &Node) -> anyhow::Result<Kraftfile> {
        let entries = match &root.value {
            Value::Map(entries) => entries,
            _ => {
                return Err(self.err(
                    root,
                    format!("a Kraftfile must be a YAML map, found {}", root.describe()),
                    "start the file with `spec: v0.6` and add `unikraft:`, `targets:` and `libraries:` keys",
                ))
            }
        };
        let mut kf = Kraftfile {
            path: self.path.to_owned(),
            spec: None,
            name: None,
            cmd: Vec::new(),
            unikraft: None,
            runtime: None,
            rootfs: None,
            outdir: None,
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            targets: Vec::new(),
            libraries: Vec::new(),
            warnings: Vec::new(),
        };
        let mut spec_key: Option<&Node> = None;
        for (k, v) in entries {
            let key = self.key(k);
            match key {
                "spec" | "specification" => {
                    if let Some(first) = spec_key {
                        return Err(self.err(
                            k,
                            format!("`{key}` given twice (also as `{}` on line {})", self.key(first), first.line),
                            "keep only `spec`",
                        ));
                    }
                    spec_key = Some(k);
                    kf.spec = Some(self.spec(key, v)?);
                }
                "name" => kf.name = Some(self.string(v, "name", "my-app")?),
                "outdir" => kf.outdir = Some(self.string(v, "outdir", ".unikraft/build")?),
                "rootfs" => kf.rootfs = Some(self.string(v, "rootfs", "./Dockerfile")?),
                "cmd" => kf.cmd = self.cmd(v)?,
                "labels" => kf.labels = self.labels(v)?,
                "env" => kf.env = self.env(v)?,
                "unikraft" => kf.unikraft = Some(self.component("unikraft", k, v, false)?),
                "runtime" => kf.runtime = self.runtime(v)?,
                "template" => self.template(k, v)?,
                "volumes" => self.volumes(v)?,
                "libraries" => kf.libraries = self.libraries(v)?,
                "targets" => kf.targets = self.targets(v)?,
                "extensions" => {}
                _ if key.starts_with("x-") => {}
                _ => self.warn(
                    k,
                    format!("unknown key `{key}` (kraftkit ignores it)"),
                    format!("remove it, or use one of: {}; prefix extensions with `x-`", TOP_LEVEL_KEYS.join(", ")),
                ),
            }
        }
        if kf.spec.is_none() {
            return Err(self.err(
                root,
                "missing `spec`: kraftkit requires the Kraftfile's specification version",
                format!("add `spec: {SPEC_LATEST}` as the first line"),
            ));
        }
        Ok(kf)
    }

    fn spec(&mut self, key: &str, v: &Node) -> anyhow::Result<String> {
        let (text, kind) = match v.scalar() {
            Some((text, kind @ (Kind::Str | Kind::Number))) => (text.to_string(), kind),
            _ => {
                return Err(self.err(
                    v,
                    format!("`{key}` must be a version, found {}", v.describe()),
                    format!("write `spec: {SPEC_LATEST}`"),
                ))
            }
        };
        let bare = text.strip_prefix('v').unwrap_or(&text);
        let parts: Vec<&str> = bare.split('.').collect();
        let valid = parts.len() <= 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !valid {
            return Err(self.err(
                v,
                format!("`{key}: {text}` is not a specification version"),
                format!("write `spec: {SPEC_LATEST}` (or `v0.5` for older Kraftfiles)"),
            ));
        }
        if kind == Kind::Number {
            self.warn(
                v,
                format!("kraftkit requires `{key}` to be a string and rejects the number `{text}`"),
                format!("write `{key}: v{bare}`"),
            );
        }
        Ok(text)
    }

    fn cmd(&self, v: &Node) -> anyhow::Result<Vec<String>> {
        match &v.value {
            Value::Seq(items) => items
                .iter()
                .map(|item| match item.scalar() {
                    Some((text, Kind::Str)) => Ok(text.to_string()),
                    _ => Err(self.err(
                        item,
                        format!("every `cmd` argument must be a string, found {}", item.describe()),
                        match item.scalar() {
                            Some((text, _)) => format!("quote it: \"{text}\""),
                            None => "write `cmd: [\"/app\", \"--flag\"]`".to_string(),
                        },
                    )),
                })
                .collect(),
            _ if v.is_null() => Ok(Vec::new()),
            _ => match v.scalar() {
                Some((text, Kind::Str)) => split_words(text).map_err(|why| {
                    self.err(
                        v,
                        format!("`cmd` cannot be split into arguments: it has {why}"),
                        "quote or escape the character, or write the arguments as a list: `cmd: [\"/app\", \"--flag\"]`",
                    )
                }),
                _ => Err(self.err(
                    v,
                    format!("`cmd` must be a string or a list of strings, found {}", v.describe()),
                    "write `cmd: [\"/app\", \"--flag\"]`",
                )),
            },
        }
    }

    /// A scalar as Go's `fmt.Sprint` would render yaml.v2's value, except that
    /// numbers keep their text.
    fn sprint(&self, node: &Node, what: &str, help: &str) -> anyhow::Result<String> {
        match node.scalar() {
            Some((_, Kind::Null)) => Ok(String::new()),
            Some((_, Kind::Bool(b))) => Ok(b.to_string()),
            Some((text, _)) => Ok(text.to_string()),
            None => Err(self.err(node, format!("{what} must be a string, found {}", node.describe()), help)),
        }
    }

    fn labels(&self, v: &Node) -> anyhow::Result<BTreeMap<String, String>> {
        let help = "write `labels:` followed by `key: value` lines";
        let entries = self.map(v, "labels", help)?;
        let mut out = BTreeMap::new();
        for (k, val) in entries {
            let key = self.key(k).to_string();
            let value = self.sprint(val, &format!("label `{key}`"), "quote the value")?;
            out.insert(key, value);
        }
        Ok(out)
    }

    fn env(&mut self, v: &Node) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        match &v.value {
            Value::Seq(items) => {
                for item in items {
                    let text = match item.scalar() {
                        Some((text, Kind::Str)) => text.to_string(),
                        _ => {
                            return Err(self.err(
                                item,
                                format!("every `env` entry must be a `KEY=value` string, found {}", item.describe()),
                                "write `- KEY=value`, quoted if needed",
                            ))
                        }
                    };
                    let (key, value) = text.split_once('=').unwrap_or((&text, ""));
                    if key.is_empty() {
                        return Err(self.err(item, format!("`env` entry `{text}` has no name"), "write `- KEY=value`"));
                    }
                    if out.insert(key.to_string(), value.to_string()).is_some() {
                        self.warn(
                            item,
                            format!("environment variable `{key}` is set twice; the last value wins"),
                            "remove the earlier entry",
                        );
                    }
                }
            }
            _ => {
                let entries = self.map(v, "env", "write `env:` followed by `KEY: value` lines, or a list of `KEY=value`")?;
                for (k, val) in entries {
                    let key = self.key(k).to_string();
                    let value = self.sprint(val, &format!("environment variable `{key}`"), "quote the value")?;
                    out.insert(key, value);
                }
            }
        }
        Ok(out)
    }

    fn runtime(&mut self, v: &Node) -> anyhow::Result<Option<String>> {
        match &v.value {
            Value::Map(entries) => {
                let mut source = None;
                let mut version = None;
                for (k, val) in entries {
                    match self.key(k) {
                        "source" => source = Some(self.string(val, "source", "unikraft.org/base")?),
                        "version" => version = Some(self.version(val, "version")?),
                        "kconfig" => {
                            self.kconfig(val)?;
                        }
                        other => {
                            let other = other.to_string();
                            self.warn(k, format!("unknown key `{other}` in `runtime` (kraftkit ignores it)"), "use `source`, `version` or `kconfig`")
                        }
                    }
                }
                let Some(source) = source else {
                    return Err(self.err(v, "`runtime` has no `source`", "write `runtime: unikraft.org/base:latest`"));
                };
                Ok(Some(match version {
                    Some(version) => format!("{source}:{version}"),
                    None => source,
                }))
            }
            _ if v.is_null() => Ok(None),
            _ => Ok(Some(self.string(v, "runtime", "unikraft.org/base:latest")?)),
        }
    }

    fn template(&mut self, k: &Node, v: &Node) -> anyhow::Result<()> {
        match &v.value {
            Value::Map(_) => {}
            _ if matches!(v.scalar(), Some((_, Kind::Str | Kind::Number))) => {}
            _ => {
                return Err(self.err(
                    v,
                    format!("`template` must be a string or a map, found {}", v.describe()),
                    "write `template: <source>` or `template: {source: …, version: …}`",
                ))
            }
        }
        self.warn(
            k,
            "`template` is not applied by kraft-xtask",
            "copy the template's `unikraft`, `libraries` and `targets` into this Kraftfile",
        );
        Ok(())
    }

    fn volumes(&self, v: &Node) -> anyhow::Result<()> {
        match &v.value {
            Value::Seq(items) => {
                for item in items {
                    if !matches!(item.value, Value::Map(_)) && !matches!(item.scalar(), Some((_, Kind::Str))) {
                        return Err(self.err(
                            item,
                            format!("a volume must be a map or a string, found {}", item.describe()),
                            "write `- source: ./fs` with `destination: /`",
                        ));
                    }
                }
                Ok(())
            }
            _ if v.is_null() || matches!(v.scalar(), Some((_, Kind::Str))) => Ok(()),
            _ => Err(self.err(
                v,
                format!("`volumes` must be a string or a list, found {}", v.describe()),
                "write `volumes:` followed by `- source: ./fs` entries",
            )),
        }
    }

    /// Classify a component string (see [`Spec`]).
    fn classify(&self, s: &str) -> Spec {
        if let Some((url, version)) = url_with_host(s) {
            return Spec::Source { source: Source::Git { url }, version };
        }
        if scp_like(s) {
            let (url, version) = match s.split_once('?') {
                Some((base, q)) => (base.to_string(), query_version(q)),
                None => (s.to_string(), None),
            };
            return Spec::Source { source: Source::Git { url }, version };
        }
        let candidate = if let Some(rest) = s.strip_prefix("~/").or(if s == "~" { Some("") } else { None }) {
            home_dir().map(|h| h.join(rest))
        } else {
            Some(self.dir.join(s))
        };
        if let Some(candidate) = candidate {
            if !s.is_empty() && candidate.is_dir() {
                return Spec::Source {
                    source: Source::Local { path: normalize_lexically(&candidate), written: s.to_string() },
                    version: None,
                };
            }
        }
        Spec::Version(s.to_string())
    }

    /// `unikraft:` or one `libraries:` entry.
    fn component(&mut self, name: &str, k: &Node, v: &Node, library: bool) -> anyhow::Result<Component> {
        let what = if library { format!("library `{name}`") } else { "`unikraft`".to_string() };
        let example = if library { format!("{name}: stable") } else { "unikraft: stable".to_string() };
        let mut c = Component { name: name.to_string(), source: None, version: None, kconfig: Vec::new(), location: self.loc(k) };
        match &v.value {
            Value::Map(entries) => {
                let mut explicit_version: Option<(&Node, String)> = None;
                for (ek, ev) in entries {
                    match self.key(ek) {
                        "source" => {
                            let s = self.string(ev, "source", "https://github.com/unikraft/unikraft.git")?;
                            match self.classify(&s) {
                                Spec::Source { source, version } => {
                                    c.source = Some(source);
                                    if version.is_some() {
                                        c.version = version;
                                    }
                                }
                                Spec::Version(_) if looks_like_path(&s) => {
                                    return Err(self.err(
                                        ev,
                                        format!("the source directory `{s}` of {what} does not exist (looked in `{}`)", self.dir),
                                        "create the directory, or fix the path (relative paths start from the Kraftfile's directory)",
                                    ))
                                }
                                Spec::Version(_) => {
                                    return Err(self.err(
                                        ev,
                                        format!("the source `{s}` of {what} is neither a URL nor an existing directory"),
                                        "write a git URL such as `https://github.com/unikraft/lib-lwip.git` or a path such as `./libs/lwip`; put branches and tags in `version`",
                                    ))
                                }
                            }
                        }
                        "version" => {
                            let version = self.version(ev, "version")?;
                            explicit_version = Some((ev, version));
                        }
                        "kconfig" => c.kconfig = self.kconfig(ev)?,
                        other => {
                            let other = other.to_string();
                            self.warn(
                                ek,
                                format!("unknown key `{other}` in {what} (kraftkit ignores it)"),
                                "use `source`, `version` or `kconfig`",
                            )
                        }
                    }
                }
                if let Some((node, version)) = explicit_version {
                    if let Some(from_url) = &c.version {
                        if *from_url != version {
                            self.warn(
                                node,
                                format!("{what} has version `{version}` but its source URL asks for `{from_url}`; `version` wins"),
                                "remove the `?branch=`/`?tag=` from the URL or the `version` key",
                            );
                        }
                    }
                    c.version = Some(version);
                }
            }
            Value::Seq(_) => {
                return Err(self.err(
                    v,
                    format!("{what} must be a version, a source or a map, found a list"),
                    format!("write `{example}` or a map with `source`, `version` and `kconfig`"),
                ))
            }
            Value::Scalar { .. } => match v.scalar() {
                Some((_, Kind::Null)) => {
                    if library {
                        self.warn(
                            v,
                            format!("{what} has no value; kraftkit rejects an empty library entry"),
                            format!("write `{example}`"),
                        );
                    }
                }
                Some((_, Kind::Bool(true))) if library => {
                    self.warn(v, format!("{what} is `true`; kraftkit rejects a boolean library entry"), format!("write `{example}`"));
                }
                Some((text, Kind::Bool(_))) => {
                    return Err(self.err(
                        v,
                        format!("{what} cannot be the boolean `{text}`"),
                        if library {
                            format!("remove the entry to leave the library out, or write `{example}`")
                        } else {
                            format!("write `{example}`")
                        },
                    ))
                }
                Some((text, Kind::Number)) => {
                    if library {
                        self.warn(
                            v,
                            format!("kraftkit rejects the unquoted number `{text}` as a library entry"),
                            format!("quote it: `{name}: \"{text}\"`"),
                        );
                    } else {
                        self.warn(
                            v,
                            format!("kraftkit ignores the unquoted number `{text}` as the Unikraft version"),
                            format!("quote it: `unikraft: \"{text}\"`"),
                        );
                    }
                    c.version = Some(text.to_string());
                }
                Some((text, _)) => match self.classify(text) {
                    Spec::Source { source, version } => {
                        c.source = Some(source);
                        c.version = version;
                    }
                    Spec::Version(_) if looks_like_path(text) => {
                        return Err(self.err(
                            v,
                            format!("the source directory `{text}` of {what} does not exist (looked in `{}`)", self.dir),
                            "create the directory, or fix the path (relative paths start from the Kraftfile's directory)",
                        ))
                    }
                    Spec::Version(_) if text.contains("://") => {
                        return Err(self.err(
                            v,
                            format!("`{text}` is not a URL kraft-xtask can fetch {what} from: it names no host"),
                            "write a git URL such as `https://github.com/unikraft/unikraft.git`, or a directory path such as `./unikraft`",
                        ))
                    }
                    Spec::Version(version) => c.version = Some(version),
                },
                None => unreachable!(),
            },
        }
        Ok(c)
    }

    fn libraries(&mut self, v: &Node) -> anyhow::Result<Vec<Component>> {
        let entries = self.map(v, "libraries", "write `libraries:` followed by `name: version` lines, e.g. `lwip: stable`")?;
        let mut out = Vec::new();
        for (k, val) in entries {
            let name = self.key(k).to_string();
            if name.is_empty() {
                return Err(self.err(k, "a library needs a name", "write `lwip: stable`"));
            }
            out.push(self.component(&name, k, val, true)?);
        }
        Ok(out)
    }

    /// kconfig as a map (`CONFIG_X: y`) or a list (`- CONFIG_X=y`).
    fn kconfig(&mut self, v: &Node) -> anyhow::Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = Vec::new();
        match &v.value {
            Value::Map(entries) => {
                for (k, val) in entries {
                    let key = self.key(k).to_string();
                    let value = match val.scalar() {
                        Some((_, Kind::Null)) => {
                            return Err(self.err(
                                val,
                                format!("kconfig option `{key}` has no value"),
                                format!("write `{key}: y` (or `n`, a number, or a quoted string)"),
                            ))
                        }
                        Some((_, Kind::Bool(b))) => if b { "y" } else { "n" }.to_string(),
                        Some((text, _)) => text.to_string(),
                        None => {
                            return Err(self.err(
                                val,
                                format!("kconfig option `{key}` must be a single value, found {}", val.describe()),
                                format!("write `{key}: y`"),
                            ))
                        }
                    };
                    self.check_kconfig_key(k, &key);
                    out.push((key, value));
                }
            }
            Value::Seq(items) => {
                for item in items {
                    let text = match item.scalar() {
                        Some((text, Kind::Str)) => text,
                        _ => {
                            return Err(self.err(
                                item,
                                format!("kconfig list entries must be `CONFIG_X=value` strings, found {}", item.describe()),
                                "write `- CONFIG_X=y`",
                            ))
                        }
                    };
                    let (key, mut value) = match text.split_once('=') {
                        Some((k, val)) if !k.is_empty() && !val.is_empty() => (k.to_string(), val.to_string()),
                        _ => {
                            return Err(self.err(
                                item,
                                format!("kconfig option `{text}` must be a `KEY=value` pair with a value"),
                                "write `- CONFIG_X=y`",
                            ))
                        }
                    };
                    self.check_kconfig_key(item, &key);
                    if let Some(unquoted) = unquote_kconfig(&value) {
                        self.warn(
                            item,
                            format!("kraftkit keeps the quotes of `{text}` as part of the value; kraft-xtask removes them"),
                            format!("write it as a map entry, `{key}: {unquoted:?}`, to mean the same in both"),
                        );
                        value = unquoted;
                    }
                    if let Some(slot) = out.iter_mut().find(|(k, _)| *k == key) {
                        self.warn(item, format!("kconfig option `{key}` is set twice; the last value wins"), "remove the earlier entry");
                        slot.1 = value;
                    } else {
                        out.push((key, value));
                    }
                }
            }
            _ if v.is_null() => {}
            _ => {
                return Err(self.err(
                    v,
                    format!("`kconfig` must be a map or a list, found {}", v.describe()),
                    "write `kconfig:` followed by `CONFIG_X: y` lines, or a list of `- CONFIG_X=y`",
                ))
            }
        }
        Ok(out)
    }

    fn check_kconfig_key(&mut self, node: &Node, key: &str) {
        if !key.starts_with("CONFIG_") {
            self.warn(
                node,
                format!("kconfig option `{key}` lacks the `CONFIG_` prefix; kraftkit passes it on as is and Kconfig ignores it"),
                format!("write `CONFIG_{key}`"),
            );
        } else if key.len() == "CONFIG_".len() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.warn(
                node,
                format!("`{key}` is not a valid Kconfig option name; Kconfig ignores it"),
                "use only letters, digits and `_` after `CONFIG_`",
            );
        }
    }

    fn platform(&self, node: &Node, raw: &str) -> anyhow::Result<String> {
        if raw.is_empty() {
            return Err(self.err(node, "empty platform", "use one of qemu, fc, xen (kvm means qemu)"));
        }
        Ok(match raw {
            "kvm" | "qemu" => "qemu",
            "fc" | "firecracker" => "fc",
            "xen" => "xen",
            other => other,
        }
        .to_string())
    }

    fn architecture(&self, node: &Node, raw: &str) -> anyhow::Result<String> {
        if raw.is_empty() || raw.contains('/') {
            return Err(self.err(node, format!("`{raw}` is not an architecture"), "use one of x86_64, arm64, arm"));
        }
        Ok(raw.to_string())
    }

    fn targets(&mut self, v: &Node) -> anyhow::Result<Vec<Target>> {
        let items = match &v.value {
            Value::Seq(items) => items.as_slice(),
            _ if v.is_null() => &[],
            _ => {
                return Err(self.err(
                    v,
                    format!("`targets` must be a list, found {}", v.describe()),
                    "write `targets: [qemu/x86_64]`",
                ))
            }
        };
        let mut out: Vec<Target> = Vec::new();
        for item in items {
            let t = self.target(item)?;
            if let Some(prev) = out.iter().find(|p| p.id() == t.id()) {
                return Err(self.err(
                    item,
                    format!("target `{}` is listed twice (first on line {})", t.id(), prev.location.line),
                    "kraft-xtask builds one kernel per platform/architecture: remove one, or merge their `kconfig`",
                ));
            }
            out.push(t);
        }
        Ok(out)
    }

    fn target(&mut self, item: &Node) -> anyhow::Result<Target> {
        let location = self.loc(item);
        let split_help = "write `plat/arch`, e.g. `qemu/x86_64`";
        match &item.value {
            Value::Scalar { .. } => {
                let text = match item.scalar() {
                    Some((text, Kind::Str)) => text,
                    _ => return Err(self.err(item, format!("a target must be `plat/arch` or a map, found {}", item.describe()), split_help)),
                };
                let Some((plat, arch)) = text.split_once('/') else {
                    return Err(self.err(item, format!("invalid target `{text}`: expected `platform/architecture`"), split_help));
                };
                Ok(Target {
                    platform: self.platform(item, plat)?,
                    architecture: self.architecture(item, arch)?,
                    name: None,
                    kconfig: Vec::new(),
                    location,
                })
            }
            Value::Seq(_) => Err(self.err(item, "a target must be `plat/arch` or a map, found a list", split_help)),
            Value::Map(entries) => {
                let mut arch: Option<(&Node, String)> = None;
                let mut plat: Option<(&Node, String)> = None;
                let mut name: Option<(&Node, String)> = None;
                let mut kconfig = Vec::new();
                for (k, val) in entries {
                    let key = self.key(k).to_string();
                    match key.as_str() {
                        "name" | "kernel" => {
                            if let Some((prev, _)) = name {
                                return Err(self.err(
                                    k,
                                    format!("the target's name is given twice (also on line {})", prev.line),
                                    "keep only `name`",
                                ));
                            }
                            name = Some((k, self.string(val, &key, "my-kernel")?));
                        }
                        "architecture" | "arch" => {
                            if let Some((prev, _)) = arch {
                                return Err(self.err(
                                    k,
                                    format!("the target's architecture is given twice (also on line {})", prev.line),
                                    "keep only `architecture`",
                                ));
                            }
                            let raw = self.string(val, &key, "x86_64")?;
                            arch = Some((k, self.architecture(val, &raw)?));
                        }
                        "platform" | "plat" => {
                            if let Some((prev, _)) = plat {
                                return Err(self.err(
                                    k,
                                    format!("the target's platform is given twice (also on line {})", prev.line),
                                    "keep only `platform`",
                                ));
                            }
                            let raw = self.string(val, &key, "qemu")?;
                            let p = match raw.split_once('/') {
                                Some((p, a)) => {
                                    let a = self.architecture(val, a)?;
                                    if let Some((prev, existing)) = &arch {
                                        if *existing != a {
                                            return Err(self.err(
                                                val,
                                                format!("platform `{raw}` names architecture `{a}` but line {} says `{existing}`", prev.line),
                                                "write the platform without `/arch`, or make both agree",
                                            ));
                                        }
                                    } else {
                                        arch = Some((val, a));
                                    }
                                    p.to_string()
                                }
                                None => raw,
                            };
                            plat = Some((k, self.platform(val, &p)?));
                        }
                        "kconfig" => kconfig = self.kconfig(val)?,
                        _ => self.warn(
                            k,
                            format!("unknown key `{key}` in a target (kraftkit ignores it)"),
                            "use `name`, `architecture`/`arch`, `platform`/`plat` or `kconfig`",
                        ),
                    }
                }
                let Some((_, platform)) = plat else {
                    return Err(self.err(item, "this target has no platform", "add `platform: qemu` (or write the target as `qemu/x86_64`)"));
                };
                let Some((_, architecture)) = arch else {
                    return Err(self.err(item, "this target has no architecture", "add `architecture: x86_64` (or write the target as `qemu/x86_64`)"));
                };
                Ok(Target { platform, architecture, name: name.map(|n| n.1), kconfig, location })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> anyhow::Result<Kraftfile> {
        parse(Utf8Path::new("/app/Kraftfile"), text)
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn words_like_shellwords() {
        assert_eq!(split_words("/bin/app -p 80").unwrap(), ["/bin/app", "-p", "80"]);
        assert_eq!(split_words("  a   'b c'  \"d \\\" e\" f\\ g ''").unwrap(), ["a", "b c", "d \" e", "f g", ""]);
        assert_eq!(split_words("'a\\b'").unwrap(), ["a\\b"]);
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert!(split_words("a | b").is_err());
        assert!(split_words("'a").is_err());
        assert!(split_words("a\\").is_err());
        assert_eq!(split_words("'a | b'").unwrap(), ["a | b"]);
    }

    #[test]
    fn yaml11_plain_scalars() {
        use yaml::resolve_plain as r;
        for s in ["0.10", "1", "-3", "+4", "0x1F", "0o17", "0b101", "1_000", "1e3", "1.5e-3", ".5", "1.", ".inf"] {
            assert_eq!(r(s), Kind::Number, "{s}");
        }
        for s in ["v0.6", "0.10.0", "stable", "1.2.3", "0x", "1e", "e1", "2024-01-01", "."] {
            assert_eq!(r(s), Kind::Str, "{s}");
        }
        for s in ["y", "Yes", "ON", "true"] {
            assert_eq!(r(s), Kind::Bool(true), "{s}");
        }
        for s in ["n", "NO", "off", "False"] {
            assert_eq!(r(s), Kind::Bool(false), "{s}");
        }
        for s in ["", "~", "null"] {
            assert_eq!(r(s), Kind::Null, "{s}");
        }
    }

    #[test]
    fn versions_keep_their_text() {
        let kf = p("spec: v0.6\nunikraft:\n  version: 0.10\nlibraries:\n  musl: \"0.10\"\n  lwip: 0.17\n").unwrap();
        assert_eq!(kf.unikraft.unwrap().version.as_deref(), Some("0.10"));
        assert_eq!(kf.libraries[0].version.as_deref(), Some("0.10"));
        assert_eq!(kf.libraries[1].version.as_deref(), Some("0.17"));
        // `0.10` warns (kraftkit reads 0.1); `lwip: 0.17` warns (kraftkit rejects numbers).
        assert_eq!(kf.warnings.len(), 2, "{:?}", kf.warnings);
    }

    #[test]
    fn urls_and_versions() {
        let cx = Cx { path: Utf8Path::new("/nonexistent/Kraftfile"), dir: "/nonexistent".into(), warnings: vec![] };
        assert_eq!(
            cx.classify("https://github.com/unikraft/unikraft.git?branch=staging"),
            Spec::Source { source: Source::Git { url: "https://github.com/unikraft/unikraft.git".into() }, version: Some("staging".into()) }
        );
        assert_eq!(
            cx.classify("https://x.org/a?foo=1&tag=v1%2B2"),
            Spec::Source { source: Source::Git { url: "https://x.org/a".into() }, version: Some("v1+2".into()) }
        );
        assert_eq!(
            cx.classify("git@github.com:unikraft/lib-lwip.git"),
            Spec::Source { source: Source::Git { url: "git@github.com:unikraft/lib-lwip.git".into() }, version: None }
        );
        assert_eq!(cx.classify("stable"), Spec::Version("stable".into()));
        assert_eq!(cx.classify("file:///x"), Spec::Version("file:///x".into()));
        assert_eq!(cx.classify("staging@1.0"), Spec::Version("staging@1.0".into()));
    }

    #[test]
    fn kconfig_list_quotes() {
        assert_eq!(unquote_kconfig(r#""a b""#).as_deref(), Some("a b"));
        assert_eq!(unquote_kconfig(r#""say \"hi\"""#).as_deref(), Some(r#"say "hi""#));
        assert_eq!(unquote_kconfig("plain"), None);
        assert_eq!(unquote_kconfig(r#""a" "b""#), None);
        assert_eq!(unquote_kconfig("\""), None);
    }

    #[test]
    fn empty_values_point_at_their_key() {
        let e = err("spec: v0.6\nunikraft:\n  kconfig:\n    CONFIG_X:\n\n");
        assert!(e.starts_with("/app/Kraftfile:4:5: kconfig option `CONFIG_X` has no value"), "{e}");
    }

    #[test]
    fn lexical_normalization() {
        assert_eq!(normalize_lexically(Utf8Path::new("/a/b/../c/./d")), Utf8PathBuf::from("/a/c/d"));
        assert_eq!(normalize_lexically(Utf8Path::new("/../a")), Utf8PathBuf::from("/a"));
        assert_eq!(normalize_lexically(Utf8Path::new("a/../../b")), Utf8PathBuf::from("../b"));
    }

    #[test]
    fn located_errors() {
        let e = err("spec: v0.6\ntargets:\n  - qemu\n");
        assert!(e.starts_with("/app/Kraftfile:3:5: invalid target `qemu`"), "{e}");
        assert!(e.contains("help: "), "{e}");
        let e = err("spec: v0.6\nname: a\nname: b\n");
        assert!(e.starts_with("/app/Kraftfile:3:1: duplicate key `name` (first set on line 2)"), "{e}");
        let e = err("spec: v0.6\nname: [a\n");
        assert!(e.starts_with("/app/Kraftfile:"), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
        let e = err("name: a\n");
        assert!(e.starts_with("/app/Kraftfile:1:1: missing `spec`"), "{e}");
    }

    #[test]
    fn platforms_are_normalized() {
        let kf = p("spec: v0.6\ntargets:\n  - kvm/x86_64\n  - plat: firecracker/arm64\n  - {platform: xen, arch: arm}\n").unwrap();
        let ids: Vec<_> = kf.targets.iter().map(Target::id).collect();
        assert_eq!(ids, ["qemu/x86_64", "fc/arm64", "xen/arm"]);
        assert_eq!(kf.targets[0].dir_name(), "qemu-x86_64");
    }

    #[test]
    fn kconfig_merge_order() {
        let kf = p("spec: v0.6\nunikraft:\n  kconfig:\n    CONFIG_A: y\n    CONFIG_B: 1\nlibraries:\n  lwip:\n    kconfig: [CONFIG_B=2, CONFIG_LIBLWIP=n]\n  libposix-time: stable\ntargets:\n  - plat: qemu\n    arch: x86_64\n    kconfig:\n      CONFIG_A: n\n      CONFIG_KVM_VMM_QEMU: n\n").unwrap();
        let all = kf.kconfig_for(&kf.targets[0]);
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            all,
            [
                ("CONFIG_A", "n"),
                ("CONFIG_B", "2"),
                ("CONFIG_LIBLWIP", "y"),
                ("CONFIG_LIBPOSIX-TIME", "y"),
                ("CONFIG_KVM_VMM_QEMU", "y"),
                ("CONFIG_ARCH_X86_64", "y"),
                ("CONFIG_PLAT_KVM", "y"),
            ]
        );
    }
}
