//! The `unikraft` core and `libraries` entries (every form kraftkit accepts:
//! a version, a URL, a directory, a map of `source`/`version`/`kconfig`), and
//! `kconfig` in its map and list forms.

use super::scalar::{unquote_kconfig, Kind};
use super::schema::Cx;
use super::sources::{classify, looks_like_path, Spec};
use super::validate;
use super::yaml::{Node, Value};
use super::{Component, Source};

impl Cx<'_> {
    /// Classify a component string (see [`Spec`]).
    pub fn classify(&self, s: &str) -> Spec {
        classify(&self.dir, s)
    }

    /// A classified source that is safe to use: a git URL git cannot take
    /// for an option, or a local directory holding a Unikraft tree.
    fn check_source(&self, node: &Node, what: &str, source: &Source, version: Option<&str>, core: bool) -> anyhow::Result<()> {
        match source {
            Source::Git { url } => self.check(
                node,
                &format!("the source URL `{}` of {what}", url.escape_debug()),
                validate::url_problem(url),
                "write a git URL such as `https://github.com/unikraft/lib-lwip.git`",
            )?,
            Source::Local { path, .. } => self.check(
                node,
                &format!("the source directory of {what}:"),
                validate::local_tree_problem(path, core),
                if core {
                    "point `unikraft` at a checkout of the Unikraft core (it holds `Makefile` and `Config.uk`)"
                } else {
                    "point the library at a Unikraft library checkout (it holds `Makefile.uk`)"
                },
            )?,
        }
        if let Some(version) = version {
            self.check_version(node, version)?;
        }
        Ok(())
    }

    /// `unikraft:` or one `libraries:` entry.
    pub fn component(&mut self, name: &str, k: &Node, v: &Node, library: bool) -> anyhow::Result<Component> {
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
                                    self.check_source(ev, &what, &source, version.as_deref(), !library)?;
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
                            self.warn(ek, format!("unknown key `{other}` in {what} (kraftkit ignores it)"), "use `source`, `version` or `kconfig`")
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
            Value::Scalar { .. } => self.component_scalar(&mut c, v, &what, &example, library)?,
        }
        Ok(c)
    }

    /// `name: <version | URL | directory>` (or null, a boolean, a number).
    fn component_scalar(&mut self, c: &mut Component, v: &Node, what: &str, example: &str, library: bool) -> anyhow::Result<()> {
        let name = c.name.clone();
        match v.scalar() {
            Some((_, Kind::Null)) if library => {
                self.warn(v, format!("{what} has no value; kraftkit rejects an empty library entry"), format!("write `{example}`"));
            }
            Some((_, Kind::Null)) => {}
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
                    self.check_source(v, what, &source, version.as_deref(), !library)?;
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
                Spec::Version(version) => {
                    self.check_version(v, &version)?;
                    c.version = Some(version)
                }
            },
            None => {}
        }
        Ok(())
    }

    pub fn libraries(&mut self, v: &Node) -> anyhow::Result<Vec<crate::source::kraftfile::Component>> {
        let entries = self.map(v, "libraries", "write `libraries:` followed by `name: version` lines, e.g. `lwip: stable`")?;
        let mut out = Vec::new();
        for (k, val) in entries {
            let name = self.key(k).to_string();
            if name.is_empty() {
                return Err(self.err(k, "a library needs a name", "write `lwip: stable`"));
            }
            self.name(k, "the library name", &name)?;
            out.push(self.component(&name, k, val, true)?);
        }
        Ok(out)
    }

    /// kconfig as a map (`CONFIG_X: y`) or a list (`- CONFIG_X=y`).
    pub fn kconfig(&mut self, v: &Node) -> anyhow::Result<Vec<(String, String)>> {
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
                    self.check_kconfig(k, &key, val, &value)?;
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
                    self.check_kconfig(item, &key, item, &value)?;
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

    /// A kconfig key and value end up as a line of `.config`, which make
    /// includes: refuse what would change its meaning; warn about a key
    /// Kconfig would ignore.
    fn check_kconfig(&mut self, key_node: &Node, key: &str, value_node: &Node, value: &str) -> anyhow::Result<()> {
        self.check(
            key_node,
            &format!("the kconfig option `{}`", key.escape_debug()),
            validate::kconfig_key_problem(key),
            "write a Kconfig symbol: `CONFIG_` followed by letters, digits and `_`",
        )?;
        self.check(
            value_node,
            &format!("the value `{}` of kconfig option `{key}`", value.escape_debug()),
            validate::kconfig_value_problem(value),
            "kconfig values are `y`, `n`, numbers or plain strings: no line breaks, control characters, `$` or backquotes",
        )?;
        if !key.starts_with("CONFIG_") {
            self.warn(
                key_node,
                format!("kconfig option `{key}` lacks the `CONFIG_` prefix; kraftkit passes it on as is and Kconfig ignores it"),
                format!("write `CONFIG_{key}`"),
            );
        }
        Ok(())
    }
}
