//! `kraft.lock`: every component pinned, Nix-style.
//!
//! The lock lives beside the Kraftfile. It is TOML, written and updated with
//! toml_edit so that comments and order survive edits. For each component:
//!
//! | field           | meaning                                                              |
//! |-----------------|----------------------------------------------------------------------|
//! | `name`, `kind`  | `unikraft`/`core`, or the library name/`library`                     |
//! | `requested`     | the version the Kraftfile asked for (or the recipe's default)        |
//! | `source`        | `git+<upstream url>` (before mirrors) or `path+<dir>` for local dirs |
//! | `ref`           | the ref the version resolved through (`refs/heads/stable`, ...)      |
//! | `commit`        | the exact commit                                                     |
//! | `commit-time`   | committer time (seconds); the newest one is the build's date         |
//! | `tree-blake3`   | blake3 tree hash of the exported commit (the store's key)            |
//! | `nar-hash`      | sha256 of the tree's Nix NAR, SRI form: what `nix hash path` prints  |
//! | `recipe`        | the recipe's name and the blake3 of its bytes                        |
//! | `[[component.archive]]` | each origin archive the build downloads: name, url, sha256   |
//!
//! A local `source` directory is not pinned (as cargo does not pin path
//! dependencies): it is hashed by content at build time, so editing it does
//! not make `--locked` fail. `kraft.lock.schema` is the JSON Schema of this
//! file.

use anyhow::Context;
use camino::Utf8Path;
use serde::{Deserialize, Serialize};
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

use crate::diag::{Diagnostic, Location};
use crate::source::recipe::line_col;

pub const FILE_NAME: &str = "kraft.lock";
pub const FORMAT_VERSION: i64 = 1;

const HEADER: &str = "\
# kraft.lock: written by kraft-xtask; commit it.
# Every component is pinned to an exact commit and content hash.
# Change it with `cargo xtask update <app> [component]`, not by hand.
";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LockedArchive {
    pub name: String,
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LockedComponent {
    pub name: String,
    pub kind: String,
    pub requested: String,
    pub source: String,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_blake3: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
    pub recipe: String,
    pub recipe_blake3: String,
    #[serde(default, rename = "archive", skip_serializing_if = "Vec::is_empty")]
    pub archives: Vec<LockedArchive>,
}

impl LockedComponent {
    /// The upstream git URL, for git sources.
    pub fn git_url(&self) -> Option<&str> {
        self.source.strip_prefix("git+")
    }

    /// The local directory, for path sources (relative to the lock's dir).
    pub fn local_path(&self) -> Option<&str> {
        self.source.strip_prefix("path+")
    }
}

impl LockedComponent {
    /// The archives a (re)locked entry carries: the recipe's placed ones
    /// (known up front), then those learned from make on earlier builds
    /// (kept while the entry is kept; `update` drops them, so they are
    /// learned again, as cargo re-resolves an updated dependency).
    pub fn with_recipe_archives(&self, recipe: &crate::source::recipe::Recipe) -> Vec<LockedArchive> {
        let mut out: Vec<LockedArchive> = recipe
            .placed_archives()
            .map(|a| LockedArchive { name: a.name.clone(), url: a.url.clone(), sha256: a.sha256.clone() })
            .collect();
        for archive in &self.archives {
            if !out.iter().any(|a| a.name == archive.name) {
                out.push(archive.clone());
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Lock {
    pub version: i64,
    #[serde(default, rename = "component")]
    pub components: Vec<LockedComponent>,
}

impl Default for Lock {
    fn default() -> Self {
        Lock { version: FORMAT_VERSION, components: Vec::new() }
    }
}

/// A lock as read from disk: the data and the document (for comments).
#[derive(Debug)]
pub struct LockFile {
    pub lock: Lock,
    pub document: DocumentMut,
    pub text: String,
}

impl Lock {
    pub fn get(&self, name: &str) -> Option<&LockedComponent> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The locked archive downloaded from one of `urls`, and its component.
    pub fn archive_for(&self, urls: &[String]) -> Option<(&LockedComponent, &LockedArchive)> {
        self.components.iter().find_map(|c| c.archives.iter().find(|a| urls.contains(&a.url)).map(|a| (c, a)))
    }

    /// The build date: the newest commit time among the components.
    pub fn source_date_epoch(&self) -> Option<i64> {
        self.components.iter().filter_map(|c| c.commit_time).max()
    }

    /// Read `path`; `Ok(None)` when there is none.
    pub fn read(path: &Utf8Path) -> anyhow::Result<Option<LockFile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {path}")),
        };
        Ok(Some(Lock::parse(path, &text)?))
    }

    pub fn parse(path: &Utf8Path, text: &str) -> anyhow::Result<LockFile> {
        let located = |offset: Option<usize>, message: String| {
            let (line, column) = line_col(text, offset.unwrap_or(0));
            Diagnostic::at(Location::new(path, line, column), message)
                .help("regenerate it: delete kraft.lock and run `cargo xtask lock <app>`")
        };
        let document: DocumentMut =
            text.parse().map_err(|err: toml_edit::TomlError| located(err.span().map(|s| s.start), format!("kraft.lock is not valid TOML: {}", err.message())))?;
        let lock: Lock = toml_edit::de::from_document(document.clone())
            .map_err(|err| located(err.span().map(|s| s.start), format!("invalid kraft.lock: {}", err.message())))?;
        if lock.version != FORMAT_VERSION {
            return Err(located(
                text.find("version"),
                format!("kraft.lock has format version {}, this tool writes version {FORMAT_VERSION}", lock.version),
            )
            .into());
        }
        Ok(LockFile { lock, document, text: text.to_string() })
    }

    /// Render, keeping the comments and order of `previous` where it has them.
    pub fn render(&self, previous: Option<&DocumentMut>) -> String {
        let mut document = previous.cloned().unwrap_or_else(|| {
            let mut doc = DocumentMut::new();
            doc.decor_mut().set_prefix(HEADER);
            doc
        });
        document["version"] = value(self.version);
        let mut old_tables: Vec<Table> = match document.remove("component") {
            Some(Item::ArrayOfTables(array)) => array.into_iter().collect(),
            _ => Vec::new(),
        };
        let mut array = ArrayOfTables::new();
        for component in &self.components {
            let position = old_tables.iter().position(|t| t.get("name").and_then(|n| n.as_str()) == Some(&component.name));
            let mut table = position.map(|i| old_tables.remove(i)).unwrap_or_default();
            fill_component(&mut table, component);
            array.push(table);
        }
        document.insert("component", Item::ArrayOfTables(array));
        document.to_string()
    }
}

/// Set each field, in the order of the schema, keeping the table's decor.
fn fill_component(table: &mut Table, c: &LockedComponent) {
    fn set(table: &mut Table, key: &str, item: Option<Item>) {
        match item {
            Some(item) => {
                let same = table.get(key).map(|old| old.to_string().trim() == item.to_string().trim()).unwrap_or(false);
                if !same {
                    table.insert(key, item);
                }
            }
            None => {
                table.remove(key);
            }
        }
    }
    set(table, "name", Some(value(&c.name)));
    set(table, "kind", Some(value(&c.kind)));
    set(table, "requested", Some(value(&c.requested)));
    set(table, "source", Some(value(&c.source)));
    set(table, "ref", c.git_ref.as_ref().map(value));
    set(table, "commit", c.commit.as_ref().map(value));
    set(table, "commit-time", c.commit_time.map(value));
    set(table, "tree-blake3", c.tree_blake3.as_ref().map(value));
    set(table, "nar-hash", c.nar_hash.as_ref().map(value));
    set(table, "recipe", Some(value(&c.recipe)));
    set(table, "recipe-blake3", Some(value(&c.recipe_blake3)));
    if c.archives.is_empty() {
        table.remove("archive");
    } else {
        let mut old: Vec<Table> = match table.remove("archive") {
            Some(Item::ArrayOfTables(array)) => array.into_iter().collect(),
            _ => Vec::new(),
        };
        let mut array = ArrayOfTables::new();
        for archive in &c.archives {
            let position = old.iter().position(|t| t.get("name").and_then(|n| n.as_str()) == Some(&archive.name));
            let mut t = position.map(|i| old.remove(i)).unwrap_or_default();
            set(&mut t, "name", Some(value(&archive.name)));
            set(&mut t, "url", Some(value(&archive.url)));
            set(&mut t, "sha256", Some(value(&archive.sha256)));
            array.push(t);
        }
        table.insert("archive", Item::ArrayOfTables(array));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        Lock {
            version: 1,
            components: vec![LockedComponent {
                name: "musl".into(),
                kind: "library".into(),
                requested: "stable".into(),
                source: "git+https://github.com/unikraft/lib-musl.git".into(),
                git_ref: Some("refs/heads/stable".into()),
                commit: Some("a".repeat(40)),
                commit_time: Some(1_700_000_000),
                tree_blake3: Some("b".repeat(64)),
                nar_hash: Some("sha256-AAAA".into()),
                recipe: "musl".into(),
                recipe_blake3: "c".repeat(64),
                archives: vec![LockedArchive { name: "musl-1.2.3.tar.gz".into(), url: "https://x/musl-1.2.3.tar.gz".into(), sha256: "d".repeat(64) }],
            }],
        }
    }

    #[test]
    fn round_trip_keeps_comments() {
        let lock = sample();
        let text = lock.render(None);
        let commented = text.replace("[[component]]\n", "[[component]]\n# pinned for the demo\n");
        let parsed = Lock::parse(Utf8Path::new("kraft.lock"), &commented).unwrap();
        assert_eq!(parsed.lock, lock);
        assert_eq!(lock.render(Some(&parsed.document)), commented);
    }

    #[test]
    fn bad_lock_is_located() {
        let err = Lock::parse(Utf8Path::new("kraft.lock"), "version = 1\n[[component]]\nname = 3\n").unwrap_err().to_string();
        assert!(err.starts_with("kraft.lock:"), "{err}");
    }
}
