//! `recipes/*.toml`: where a component comes from and how it builds.
//!
//! Every recipe is an optional override. A recipe names the component's git
//! source and how Kraftfile versions map to refs, what it knows about origin
//! archives (a known sha256, mirrors; the archives themselves are learned
//! from make, see `plan::fetches`), where
//! its tree is mounted in the build sandbox, and how its actions group into
//! cache units. Recipes are content-addressed: the blake3 of the file's bytes
//! is recorded in `kraft.lock` and is part of every cache key it touches.
//!
//! The recipes in this repository's `recipes/` are built into the tool; a
//! workspace can add or override recipes with a `recipes/` directory of its
//! own (`[workspace.metadata.kraft] recipes = "..."`). A library without a
//! recipe gets the default one: `https://github.com/unikraft/lib-<name>.git`,
//! no origin archives, one cache unit.

use std::collections::BTreeMap;

use anyhow::Context;
use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Location};

/// Recipes shipped with the tool (the repository's `recipes/`).
const BUILTIN: &[(&str, &str)] = &[
    ("unikraft.toml", include_str!("../../../recipes/unikraft.toml")),
    ("musl.toml", include_str!("../../../recipes/musl.toml")),
    ("lwip.toml", include_str!("../../../recipes/lwip.toml")),
    ("app.toml", include_str!("../../../recipes/app.toml")),
    ("musl-upstream.toml", include_str!("../../../recipes/musl-upstream.toml")),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    Core,
    Library,
    App,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Core => "core",
            ComponentKind::Library => "library",
            ComponentKind::App => "app",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeHeader {
    pub name: String,
    pub kind: ComponentKind,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceSpec {
    /// Upstream git URL, before mirror rewriting.
    pub git: String,
    /// How a numeric Kraftfile version maps to a tag: `{version}` is replaced.
    #[serde(default = "default_version_tag")]
    pub version_tag: String,
    /// The version used when the Kraftfile gives none.
    #[serde(default = "default_version")]
    pub default_version: String,
}

fn default_version_tag() -> String {
    "RELEASE-{version}".into()
}
fn default_version() -> String {
    "stable".into()
}

/// What a recipe knows about an origin archive. Optional: the planner
/// learns each archive a build downloads from make itself, and the lock pins
/// it on first use. A recipe entry adds a known sha256 (checked on that first
/// use instead of trusted), mirrors, and, with `dest`, a file placed before
/// make runs and locked with the component (for cores whose `fetch` does not
/// go through `$(WGET)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginArchive {
    /// File name, also how `KRAFT_ARCHIVE_DIR` finds it.
    pub name: String,
    pub url: String,
    pub sha256: String,
    /// Where the library's makefile expects it, relative to the build dir:
    /// placed before make runs, and locked with the component.
    #[serde(default)]
    pub dest: Option<String>,
    /// Further URLs with the same content, tried after `url`.
    #[serde(default)]
    pub mirrors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Mount point below the sandbox root; `{name}` is the component name.
    pub mount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UnitSplit {
    /// The Unikraft library (its build directory name, e.g. `libmusl`).
    pub library: String,
    /// Objects whose source lies below `<...>/<by-source-dir>/<dir>/` form the
    /// unit `<library>/<by-source-dir>/<dir>`.
    pub by_source_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Units {
    /// Only `per-library` exists today: a unit per Unikraft library.
    #[serde(default = "default_units")]
    pub default: String,
    #[serde(default)]
    pub split: Vec<UnitSplit>,
}

fn default_units() -> String {
    "per-library".into()
}

impl Default for Units {
    fn default() -> Self {
        Units { default: default_units(), split: Vec::new() }
    }
}

/// A standalone make-based component (upstream musl): how to configure it
/// and which make targets to plan. See `plan_make`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MakeSpec {
    /// Run in the empty build directory; `{src}` is the source tree's
    /// mount point inside the sandbox.
    pub configure: Vec<String>,
    /// Lines appended to the file configure generates (`config.mak`).
    #[serde(default)]
    pub config_append: Vec<String>,
    /// The generated file `config-append` goes to.
    #[serde(default = "default_config_file")]
    pub config_file: String,
    /// What `make -n` is asked for, in this order.
    pub targets: Vec<String>,
}

fn default_config_file() -> String {
    "config.mak".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    pub recipe: RecipeHeader,
    pub source: Option<SourceSpec>,
    pub layout: Layout,
    #[serde(default)]
    pub archive: Vec<OriginArchive>,
    #[serde(default)]
    pub units: Units,
    /// Only for standalone make-based components (`musl-upstream`).
    #[serde(default)]
    pub make: Option<MakeSpec>,
}

/// A loaded recipe and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    pub file: RecipeFile,
    /// blake3 of the recipe's bytes (hex); part of every key it touches.
    pub hash: String,
    /// Where it came from: a path, or `builtin:<file>`.
    pub origin: String,
}

impl Recipe {
    /// The text of a built-in recipe, by its `origin` (`builtin:recipes/musl.toml`):
    /// what a workspace recipe of the same name starts from to override it.
    pub fn builtin_text(origin: &str) -> Option<&'static str> {
        BUILTIN.iter().find(|(file, _)| origin.strip_prefix("builtin:recipes/") == Some(*file)).map(|(_, text)| *text)
    }

    /// What this recipe knows about an archive make downloads from `url`
    /// (by URL, else by file name).
    pub fn archive_hint(&self, url: &str, file_name: &str) -> Option<&OriginArchive> {
        self.file.archive.iter().find(|a| a.url == url || a.mirrors.iter().any(|m| m == url)).or_else(|| self.file.archive.iter().find(|a| a.name == file_name))
    }

    /// The archives placed before make runs (those with a `dest`).
    pub fn placed_archives(&self) -> impl Iterator<Item = &OriginArchive> {
        self.file.archive.iter().filter(|a| a.dest.is_some())
    }

    pub fn name(&self) -> &str {
        &self.file.recipe.name
    }

    pub fn kind(&self) -> ComponentKind {
        self.file.recipe.kind
    }

    /// Parse a recipe's text; errors carry file:line:column.
    pub fn parse(origin: &str, text: &str) -> anyhow::Result<Recipe> {
        let file: RecipeFile = toml_edit::de::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((1, 1));
            Diagnostic::at(Location::new(origin, line, column), format!("invalid recipe: {}", err.message()))
                .help("see recipes/musl.toml for a complete recipe: [recipe], [source], [layout], [[archive]], [units]")
        })?;
        for archive in &file.archive {
            if archive.sha256.len() != 64 || !archive.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                let offset = text.find(&archive.sha256).unwrap_or(0);
                let (line, column) = line_col(text, offset);
                return Err(Diagnostic::at(
                    Location::new(origin, line, column),
                    format!("archive `{}`: sha256 must be 64 hex digits", archive.name),
                )
                .help(format!("compute it with `sha256sum {}`", archive.name))
                .into());
            }
        }
        Ok(Recipe { file, hash: blake3::hash(text.as_bytes()).to_hex().to_string(), origin: origin.to_string() })
    }

    /// The recipe for a library nobody wrote one for.
    pub fn default_library(name: &str) -> Recipe {
        let text = format!(
            "# default recipe for library {name}\n[recipe]\nname = \"{name}\"\nkind = \"library\"\n\n[source]\ngit = \"https://github.com/unikraft/lib-{name}.git\"\n\n[layout]\nmount = \"libs/{name}\"\n"
        );
        Recipe::parse(&format!("default:{name}"), &text).expect("default recipe parses")
    }

    /// The sandbox mount point, below the sandbox root.
    pub fn mount(&self, component_name: &str) -> String {
        self.file.layout.mount.replace("{name}", component_name)
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, column)
}

/// All recipes known to a workspace, by component name.
#[derive(Debug, Clone, Default)]
pub struct RecipeBook {
    recipes: BTreeMap<String, Recipe>,
}

impl RecipeBook {
    /// The built-in recipes, overridden by `*.toml` in each of `dirs`, in order.
    pub fn load(dirs: &[Utf8PathBuf]) -> anyhow::Result<RecipeBook> {
        let mut book = RecipeBook::default();
        for (file, text) in BUILTIN {
            book.add(Recipe::parse(&format!("builtin:recipes/{file}"), text)?);
        }
        for dir in dirs {
            if !dir.is_dir() {
                return Err(Diagnostic::new(format!("recipe directory {dir} does not exist"))
                    .help("fix `recipes` in [workspace.metadata.kraft] of Cargo.toml")
                    .into());
            }
            let mut files: Vec<Utf8PathBuf> = Vec::new();
            for entry in dir.read_dir_utf8().with_context(|| format!("reading recipes in {dir}"))? {
                let path = entry?.into_path();
                if path.extension() == Some("toml") {
                    files.push(path);
                }
            }
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                book.add(Recipe::parse(path.as_str(), &text)?);
            }
        }
        Ok(book)
    }

    fn add(&mut self, recipe: Recipe) {
        self.recipes.insert(recipe.name().to_string(), recipe);
    }

    /// The recipe for a component: its own, or the default library recipe.
    pub fn get(&self, name: &str, kind: ComponentKind) -> Recipe {
        match self.recipes.get(name) {
            Some(recipe) => recipe.clone(),
            None if kind == ComponentKind::Library => Recipe::default_library(name),
            None => self.recipes.get("app").cloned().expect("app recipe is built in"),
        }
    }

    pub fn core(&self) -> Recipe {
        self.recipes.get("unikraft").cloned().expect("unikraft recipe is built in")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_recipes_parse() {
        let book = RecipeBook::load(&[]).unwrap();
        let musl = book.get("musl", ComponentKind::Library);
        assert_eq!(musl.file.archive[0].name, "musl-1.2.3.tar.gz");
        assert_eq!(musl.mount("musl"), "libs/musl");
        let other = book.get("ukfoo", ComponentKind::Library);
        assert_eq!(other.file.source.unwrap().git, "https://github.com/unikraft/lib-ukfoo.git");
    }

    #[test]
    fn bad_recipe_is_located() {
        let err = Recipe::parse("r.toml", "[recipe]\nname = \"x\"\nkind = \"weird\"\n[layout]\nmount=\"a\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("r.toml:3:"), "{text}");
    }
}
