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
use crate::kraftfile;

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
    pub fn discover(dir: &Utf8Path) -> anyhow::Result<Workspace> {
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
        Ok(Workspace { root: metadata.workspace_root, target_dir: metadata.target_directory, metadata: kraft })
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
