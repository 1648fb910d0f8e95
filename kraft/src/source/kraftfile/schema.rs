//! The Kraftfile's forms, top level: which keys exist and what each may hold
//! (`spec`, `name`, `cmd`, `labels`, `env`, `runtime`, `template`,
//! `volumes`, paths). Components live in `components.rs`, targets in
//! `targets.rs`; both use the helpers of [`Cx`] defined here.

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};

use super::paths::escapes_app_dir;
use super::scalar::Kind;
use super::validate;
use super::words::split_words;
use super::yaml::{Node, Value};
use super::{Kraftfile, SPEC_LATEST};
use crate::diag::{Diagnostic, Location};

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

/// Loading context: where the Kraftfile is, and the warnings so far.
pub struct Cx<'a> {
    pub path: &'a Utf8Path,
    /// Absolute, lexically normalized directory of the Kraftfile.
    pub dir: Utf8PathBuf,
    pub warnings: Vec<Diagnostic>,
}

pub type Entries = [(Node, Node)];

impl Cx<'_> {
    pub fn loc(&self, node: &Node) -> Location {
        Location::new(self.path, node.line, node.column)
    }

    pub fn err(&self, node: &Node, message: impl Into<String>, help: impl Into<String>) -> anyhow::Error {
        Diagnostic::at(self.loc(node), message).help(help).into()
    }

    pub fn warn(&mut self, node: &Node, message: impl Into<String>, help: impl Into<String>) {
        let d = Diagnostic::at(self.loc(node), message).help(help);
        self.warnings.push(d);
    }

    pub fn key<'n>(&self, key: &'n Node) -> &'n str {
        match &key.value {
            Value::Scalar { text, .. } => text,
            _ => "",
        }
    }

    /// A map (`null` counts as empty).
    pub fn map<'n>(&self, node: &'n Node, what: &str, help: &str) -> anyhow::Result<&'n Entries> {
        match &node.value {
            Value::Map(entries) => Ok(entries),
            _ if node.is_null() => Ok(&[]),
            _ => Err(self.err(node, format!("`{what}` must be a map, found {}", node.describe()), help)),
        }
    }

    /// A scalar that YAML reads as a string.
    pub fn string(&self, node: &Node, what: &str, example: &str) -> anyhow::Result<String> {
        let text = match node.scalar() {
            Some((text, Kind::Str)) => text.to_string(),
            Some((text, Kind::Bool(_) | Kind::Number)) => {
                return Err(self.err(
                    node,
                    format!("`{what}` must be a string, found {}", node.describe()),
                    format!("quote it: `{what}: \"{text}\"`"),
                ))
            }
            _ => {
                return Err(self.err(
                    node,
                    format!("`{what}` must be a string, found {}", node.describe()),
                    format!("write `{what}: {example}`"),
                ))
            }
        };
        self.check(node, &format!("`{what}`"), validate::text_problem(&text), "remove the character")?;
        Ok(text)
    }

    /// A name: `[A-Za-z0-9._-]`, no `..` (it becomes a file name and a make
    /// variable).
    pub fn name(&self, node: &Node, what: &str, name: &str) -> anyhow::Result<()> {
        match validate::name_problem(name) {
            None => Ok(()),
            Some(why) => Err(self.err(
                node,
                format!("{what} `{}` {why}", name.escape_debug()),
                "use only letters, digits, `.`, `_` and `-` (no `..`, not starting with `-`)",
            )),
        }
    }

    /// Refuse `what` at `node` for `problem`, if any.
    pub fn check(&self, node: &Node, what: &str, problem: Option<String>, help: &str) -> anyhow::Result<()> {
        match problem {
            None => Ok(()),
            Some(why) => Err(self.err(node, format!("{what} {why}"), help)),
        }
    }

    /// A version: a string or a number, kept as written.
    pub fn version(&mut self, node: &Node, what: &str) -> anyhow::Result<String> {
        let text = match node.scalar() {
            Some((text, Kind::Str)) => text.to_string(),
            Some((text, Kind::Number)) => {
                self.warn_number_version(node, text);
                text.to_string()
            }
            _ => {
                return Err(self.err(
                    node,
                    format!("`{what}` must be a version, found {}", node.describe()),
                    format!("write a branch, tag or version: `{what}: stable` or `{what}: \"0.17.0\"`"),
                ))
            }
        };
        self.check_version(node, &text)?;
        Ok(text)
    }

    /// A branch, tag or commit that is safe to hand to git.
    pub fn check_version(&self, node: &Node, version: &str) -> anyhow::Result<()> {
        self.check(
            node,
            &format!("the version `{}`", version.escape_debug()),
            validate::version_problem(version),
            "write a branch, tag or commit such as `stable`, `0.16.3` or `RELEASE-0.16.3`",
        )
    }

    /// kraftkit reads an unquoted number as a float and formats it back.
    pub fn warn_number_version(&mut self, node: &Node, text: &str) {
        if let Ok(f) = text.replace('_', "").parse::<f64>() {
            let go = format!("{f}");
            if go != text {
                self.warn(node, format!("kraftkit reads the version `{text}` as the number {go}"), format!("quote it: \"{text}\""));
            }
        }
    }

    pub fn kraftfile(&mut self, root: &Node) -> anyhow::Result<Kraftfile> {
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
                "name" => {
                    let name = self.string(v, "name", "my-app")?;
                    self.name(v, "the app name", &name)?;
                    kf.name = Some(name);
                }
                "outdir" => kf.outdir = Some(self.app_path(v, "outdir", ".unikraft/build")?),
                "rootfs" => kf.rootfs = Some(self.app_path(v, "rootfs", "./Dockerfile")?),
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

    /// `outdir` or `rootfs`: a path inside the app directory.
    fn app_path(&self, v: &Node, what: &str, example: &str) -> anyhow::Result<String> {
        let path = self.string(v, what, example)?;
        match escapes_app_dir(&path) {
            None => Ok(path),
            Some(why) => Err(self.err(
                v,
                format!("`{what}: {path}` {why}"),
                format!("write a path relative to the Kraftfile's directory and inside it, e.g. `{what}: {example}`"),
            )),
        }
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
        let valid = parts.len() <= 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 9 && p.chars().all(|c| c.is_ascii_digit()));
        if !valid {
            return Err(self.err(
                v,
                format!("`{key}: {text}` is not a specification version"),
                format!("write `spec: {SPEC_LATEST}` (or `v0.5` for older Kraftfiles)"),
            ));
        }
        if let Err(why) = validate::spec_support(bare) {
            return Err(self.err(
                v,
                format!("the specification `{text}` {why}"),
                format!("this tool reads {}; write `spec: {SPEC_LATEST}`, or update kraft-xtask", validate::known_specs()),
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
                    Some((text, Kind::Str)) => {
                        self.check(item, "this `cmd` argument", validate::text_problem(text), "remove the character")?;
                        Ok(text.to_string())
                    }
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
        let text = match node.scalar() {
            Some((_, Kind::Null)) => String::new(),
            Some((_, Kind::Bool(b))) => b.to_string(),
            Some((text, _)) => text.to_string(),
            None => return Err(self.err(node, format!("{what} must be a string, found {}", node.describe()), help)),
        };
        self.check(node, what, validate::text_problem(&text), "remove the character")?;
        Ok(text)
    }

    fn labels(&self, v: &Node) -> anyhow::Result<BTreeMap<String, String>> {
        let help = "write `labels:` followed by `key: value` lines";
        let entries = self.map(v, "labels", help)?;
        let mut out = BTreeMap::new();
        for (k, val) in entries {
            let key = self.key(k).to_string();
            self.check(k, "this label's name", validate::text_problem(&key), "remove the character")?;
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
                    self.check(item, "this `env` entry", validate::text_problem(&text), "remove the character")?;
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
                    self.check(k, "this environment variable's name", validate::text_problem(&key), "remove the character")?;
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
                            self.warn(
                                k,
                                format!("unknown key `{other}` in `runtime` (kraftkit ignores it)"),
                                "use `source`, `version` or `kconfig`",
                            )
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
}
