//! The cargo workspace kraft-xtask runs in: where apps, recipes and outputs
//! live, and the settings in `[workspace.metadata.kraft]`:
//!
//! ```toml
//! [workspace.metadata.kraft]
//! apps = "apps"                 # where `cargo xtask build <name>` looks
//! recipes = "recipes"           # extra/overriding recipes (optional)
//! remote-cache = "http://..."   # shared cache (optional)
//! [workspace.metadata.kraft.mirrors]
//! "https://github.com/" = "/srv/mirror/github/"
//! ```

use std::collections::BTreeMap;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use serde::Deserialize;

use crate::diag::Diagnostic;
use crate::source::kraftfile;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KraftMetadata {
    pub apps: Option<String>,
    /// One directory or a list, relative to the workspace root.
    #[serde(default, deserialize_with = "one_or_many")]
    pub recipes: Vec<String>,
    pub remote_cache: Option<String>,
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: Utf8PathBuf,
    pub target_dir: Utf8PathBuf,
    pub metadata: KraftMetadata,
    /// `[workspace.metadata.kraft]` as cargo reported it.
    pub raw_metadata: serde_json::Value,
}

/// An app: a directory holding a Kraftfile, and its name for output paths.
#[derive(Debug, Clone)]
pub struct AppRef {
    pub name: String,
    pub dir: Utf8PathBuf,
    pub kraftfile: Utf8PathBuf,
}

impl Workspace {
    /// The workspace containing `dir`, read with cargo_metadata.
    ///
    /// `cargo metadata` costs more than a whole no-op build, so its answer is
    /// remembered (in the user's cache directory) together with the stamp of
    /// every file that could change it: each `Cargo.toml` and
    /// `.cargo/config[.toml]` from `dir` up to `/`, cargo's home config, and
    /// the target-dir environment. Any change asks cargo again.
    pub fn discover(dir: &Utf8Path) -> anyhow::Result<Workspace> {
        let memo = memo::path(dir);
        if let Some(workspace) = memo.as_deref().and_then(|m| memo::load(m, dir)) {
            return Ok(workspace);
        }
        let workspace = Workspace::discover_uncached(dir)?;
        if let Some(memo) = memo {
            memo::save(&memo, dir, &workspace);
        }
        Ok(workspace)
    }

    fn discover_uncached(dir: &Utf8Path) -> anyhow::Result<Workspace> {
        let metadata = cargo_metadata::MetadataCommand::new()
            .current_dir(dir)
            .no_deps()
            .other_options(vec!["--offline".to_string()])
            .exec()
            .context("reading the cargo workspace (cargo metadata)")?;
        let kraft = match metadata.workspace_metadata.get("kraft") {
            Some(value) => serde_json::from_value(value.clone()).map_err(|err| {
                Diagnostic::new(format!("{}: [workspace.metadata.kraft]: {err}", metadata.workspace_root.join("Cargo.toml")))
                    .help("keys: apps, recipes, remote-cache (strings) and [workspace.metadata.kraft.mirrors] (prefix = replacement)")
            })?,
            None => KraftMetadata::default(),
        };
        let raw = metadata.workspace_metadata.get("kraft").cloned().unwrap_or(serde_json::Value::Null);
        Ok(Workspace { root: metadata.workspace_root, target_dir: metadata.target_directory, metadata: kraft, raw_metadata: raw })
    }

    pub fn apps_dir(&self) -> Utf8PathBuf {
        self.root.join(self.metadata.apps.as_deref().unwrap_or("apps"))
    }

    pub fn recipes_dirs(&self) -> Vec<Utf8PathBuf> {
        self.metadata.recipes.iter().map(|r| self.root.join(r)).collect()
    }

    /// Mirror rules from the workspace, local replacements made absolute
    /// (relative to the workspace root).
    pub fn mirror_rules(&self) -> BTreeMap<String, String> {
        self.metadata
            .mirrors
            .iter()
            .map(|(prefix, replacement)| {
                let local = !replacement.contains("://") && !replacement.starts_with('/');
                let replacement = if local {
                    let trailing = if replacement.ends_with('/') { "/" } else { "" };
                    format!("{}{trailing}", self.root.join(replacement))
                } else {
                    replacement.clone()
                };
                (prefix.clone(), replacement)
            })
            .collect()
    }

    /// An app by name (under the apps directory) or by path; `kraftfile`
    /// overrides the file name (`-K`).
    pub fn app(&self, app: &str, kraftfile_override: Option<&Utf8Path>) -> anyhow::Result<AppRef> {
        let as_path = Utf8Path::new(app);
        let by_name = self.apps_dir().join(app);
        let dir = if !app.contains('/') && by_name.is_dir() {
            // Through symlinks, so the Kraftfile's relative sources resolve
            // where the app really is.
            by_name.canonicalize_utf8().with_context(|| format!("resolving {by_name}"))?
        } else if as_path.is_dir() {
            as_path.canonicalize_utf8().with_context(|| format!("resolving {app}"))?
        } else {
            let known = list_apps(&self.apps_dir());
            return Err(Diagnostic::new(format!("no app `{app}`: neither {} nor ./{app} is a directory", by_name))
                .help(if known.is_empty() {
                    format!("create {}/{app}/Kraftfile, or pass a path to a directory holding a Kraftfile", self.apps_dir())
                } else {
                    format!("known apps: {}", known.join(", "))
                })
                .into());
        };
        let kraftfile = match kraftfile_override {
            Some(file) if file.is_absolute() => file.to_owned(),
            Some(file) => std::env::current_dir()
                .ok()
                .and_then(|cwd| Utf8PathBuf::from_path_buf(cwd).ok())
                .map(|cwd| cwd.join(file))
                .unwrap_or_else(|| file.to_owned()),
            None => kraftfile::find(&dir)?,
        };
        // Outputs are named after what the user typed for a named app.
        let name = if !app.contains('/') && self.apps_dir().join(app).is_dir() {
            app.to_string()
        } else {
            dir.file_name().unwrap_or("app").to_string()
        };
        Ok(AppRef { name, dir, kraftfile })
    }

    /// `target/kraft/<app>/<plat>-<arch>/`.
    pub fn output_dir(&self, app: &str, target_dir_name: &str) -> Utf8PathBuf {
        self.target_dir.join("kraft").join(app).join(target_dir_name)
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

fn list_apps(dir: &Utf8Path) -> Vec<String> {
    let mut names: Vec<String> = dir
        .read_dir_utf8()
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The remembered answer of `cargo metadata` (see [`Workspace::discover`]).
mod memo {
    use std::os::unix::fs::MetadataExt;

    use camino::{Utf8Path, Utf8PathBuf};

    use super::{KraftMetadata, Workspace};


    pub fn path(dir: &Utf8Path) -> Option<Utf8PathBuf> {
        let config = crate::config::Config::get();
        let cache = config.xdg_cache_home.clone().or_else(|| config.home.as_ref().map(|h| h.join(".cache")))?;
        let mut h = blake3::Hasher::new();
        h.update(dir.as_str().as_bytes());
        Some(cache.join("kraft-xtask").join("workspaces").join(format!("{}.json", &h.finalize().to_hex()[..32])))
    }

    /// Everything that could change cargo's answer, stamped.
    fn inputs(dir: &Utf8Path) -> Vec<(String, Option<[i64; 3]>)> {
        let stamp = |p: &Utf8Path| {
            std::fs::metadata(p).ok().map(|m| [m.size() as i64, m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino() as i64])
        };
        let mut out = Vec::new();
        for ancestor in dir.ancestors() {
            for name in ["Cargo.toml", ".cargo/config.toml", ".cargo/config"] {
                let file = ancestor.join(name);
                out.push((file.to_string(), stamp(&file)));
            }
        }
        let config = crate::config::Config::get();
        let home = config.cargo_home.as_ref().map(|h| h.to_string()).or_else(|| config.home.as_ref().map(|h| format!("{h}/.cargo")));
        if let Some(home) = home {
            for name in ["config.toml", "config"] {
                let file = Utf8PathBuf::from(&home).join(name);
                out.push((file.to_string(), stamp(&file)));
            }
        }
        for (var, value) in &config.cargo_env {
            out.push((format!("env:{var}={value}"), None));
        }
        out
    }

    pub fn load(memo: &Utf8Path, dir: &Utf8Path) -> Option<Workspace> {
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(memo).ok()?).ok()?;
        let then: Vec<(String, Option<[i64; 3]>)> = serde_json::from_value(saved["inputs"].clone()).ok()?;
        if then != inputs(dir) {
            return None;
        }
        let raw = saved["kraft"].clone();
        let metadata: KraftMetadata = if raw.is_null() { KraftMetadata::default() } else { serde_json::from_value(raw.clone()).ok()? };
        Some(Workspace {
            root: Utf8PathBuf::from(saved["root"].as_str()?),
            target_dir: Utf8PathBuf::from(saved["target_dir"].as_str()?),
            metadata,
            raw_metadata: raw,
        })
    }

    pub fn save(memo: &Utf8Path, dir: &Utf8Path, workspace: &Workspace) {
        let value = serde_json::json!({
            "inputs": inputs(dir),
            "root": workspace.root,
            "target_dir": workspace.target_dir,
            "kraft": workspace.raw_metadata,
        });
        if let Some(parent) = memo.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = crate::util::fs::write_atomic(memo, value.to_string().as_bytes());
    }
}
