//! Version → exact commit, and the lock that records it.
//!
//! A Kraftfile version becomes a commit the way kraftkit reads it:
//!
//! | written            | tried, in order                                                 |
//! |--------------------|-----------------------------------------------------------------|
//! | 40 hex digits      | that commit                                                     |
//! | `0.16.3` (numeric) | the recipe's `version-tag` (`RELEASE-0.16.3`), then tag `0.16.3` |
//! | anything else      | branch `refs/heads/<v>`, then tag `refs/tags/<v>`               |
//! | 4–39 hex digits    | an abbreviated commit, when no ref has that name                |
//!
//! Locking follows cargo: an entry whose Kraftfile request (source and
//! version) and recipe are unchanged is kept as it is; only new or changed
//! components, or those named by `update`, are resolved again.

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;
use crate::source::fetch::Fetcher;
use crate::source::kraftfile::{Component, Kraftfile, Source};
use crate::source::lock::{Lock, LockedComponent, FORMAT_VERSION};
use crate::source::recipe::{ComponentKind, Recipe, RecipeBook};

/// Which components to move regardless of the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Keep every entry that still matches the Kraftfile.
    Nothing,
    /// `cargo xtask update <app>`: re-resolve all.
    All,
    /// `cargo xtask update <app> <component>`.
    Only(Vec<String>),
}

/// What the Kraftfile asks for, per component, with its recipe.
#[derive(Debug, Clone)]
pub struct Wanted {
    pub component: Component,
    pub kind: ComponentKind,
    pub recipe: Recipe,
    /// `git+<url>` or `path+<dir>` as the lock records it.
    pub source: String,
    pub requested: String,
}

pub fn wanted(kraftfile: &Kraftfile, recipes: &RecipeBook) -> anyhow::Result<Vec<Wanted>> {
    let mut out = Vec::new();
    let mut push = |component: &Component, kind: ComponentKind| -> anyhow::Result<()> {
        let recipe = match kind {
            ComponentKind::Core => recipes.core(),
            _ => recipes.get(&component.name, kind),
        };
        let spec = recipe.file.source.clone();
        let requested = component
            .version
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| spec.as_ref().map(|s| s.default_version.clone()))
            .unwrap_or_else(|| "stable".into());
        let source = match &component.source {
            Some(Source::Local { path, .. }) => format!("path+{}", relative_to(path, kraftfile.dir())),
            Some(Source::Git { url }) => format!("git+{url}"),
            None => match &spec {
                Some(spec) => format!("git+{}", spec.git),
                None => {
                    return Err(Diagnostic::at(component.location.clone(), format!("no source known for `{}`", component.name))
                        .help("give `source:` (a git URL or a local directory) or add a recipe in recipes/")
                        .into())
                }
            },
        };
        out.push(Wanted { component: component.clone(), kind, recipe, source, requested });
        Ok(())
    };
    match &kraftfile.unikraft {
        Some(core) => push(core, ComponentKind::Core)?,
        None => {
            return Err(Diagnostic::new(format!("{}: no `unikraft` component", kraftfile.path))
                .help("add `unikraft: stable` (or a version) to the Kraftfile")
                .into())
        }
    }
    for library in &kraftfile.libraries {
        push(library, ComponentKind::Library)?;
    }
    Ok(out)
}

/// Path of `path` relative to `base` when below it, else as is.
fn relative_to(path: &Utf8Path, base: &Utf8Path) -> String {
    pathdiff(path, base).unwrap_or_else(|| path.to_string())
}

fn pathdiff(path: &Utf8Path, base: &Utf8Path) -> Option<String> {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut parts: Vec<String> = std::iter::repeat("..".to_string()).take(base.len() - common).collect();
    parts.extend(path[common..].iter().map(|c| c.as_str().to_string()));
    Some(if parts.is_empty() { ".".into() } else { parts.join("/") })
}

/// Does the lock entry still answer the Kraftfile's request?
fn still_matches(entry: &LockedComponent, want: &Wanted) -> bool {
    entry.source == want.source && entry.requested == want.requested && entry.kind == want.kind.as_str()
}

/// Pick the ref a version names, among `refs` (as `ls-remote` lists them).
pub fn pick_ref(refs: &[(String, String)], version: &str, version_tag: &str) -> Option<(String, String)> {
    let find = |name: &str| -> Option<(String, String)> {
        let peeled = format!("{name}^{{}}");
        refs.iter()
            .find(|(r, _)| *r == peeled)
            .or_else(|| refs.iter().find(|(r, _)| r == name))
            .map(|(_, oid)| (name.to_string(), oid.clone()))
    };
    if version.len() == 40 && version.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some((version.to_lowercase(), version.to_lowercase()));
    }
    let numeric = !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.') && version.as_bytes()[0].is_ascii_digit();
    if numeric {
        let tag = version_tag.replace("{version}", version);
        if let Some(found) = find(&format!("refs/tags/{tag}")) {
            return Some(found);
        }
    }
    find(&format!("refs/heads/{version}")).or_else(|| find(&format!("refs/tags/{version}")))
}

/// Resolve every wanted component, reusing lock entries where allowed.
pub fn resolve(
    wanted: &[Wanted],
    previous: Option<&Lock>,
    update: &Update,
    fetcher: &Fetcher,
) -> anyhow::Result<Lock> {
    let mut lock = Lock { version: FORMAT_VERSION, components: Vec::new() };
    if let Update::Only(names) = update {
        for name in names {
            if !wanted.iter().any(|w| &w.component.name == name) {
                let known: Vec<&str> = wanted.iter().map(|w| w.component.name.as_str()).collect();
                return Err(Diagnostic::new(format!("no component `{name}` in this app"))
                    .help(format!("components: {}", known.join(", ")))
                    .into());
            }
        }
    }
    for want in wanted {
        let name = &want.component.name;
        let forced = match update {
            Update::Nothing => false,
            Update::All => true,
            Update::Only(names) => names.contains(name),
        };
        let kept = previous.and_then(|p| p.get(name)).filter(|entry| !forced && still_matches(entry, want));
        let mut entry = match kept {
            Some(entry) => entry.clone(),
            None => resolve_one(want, fetcher)?,
        };
        // The recipe is data of this tool, not of upstream: always current.
        entry.recipe = want.recipe.name().to_string();
        entry.recipe_blake3 = want.recipe.hash.clone();
        entry.archives = entry.with_recipe_archives(&want.recipe);
        lock.components.push(entry);
    }
    Ok(lock)
}

fn resolve_one(want: &Wanted, fetcher: &Fetcher) -> anyhow::Result<LockedComponent> {
    let base = LockedComponent {
        name: want.component.name.clone(),
        kind: want.kind.as_str().to_string(),
        requested: want.requested.clone(),
        source: want.source.clone(),
        git_ref: None,
        commit: None,
        commit_time: None,
        tree_blake3: None,
        nar_hash: None,
        recipe: want.recipe.name().to_string(),
        recipe_blake3: want.recipe.hash.clone(),
        archives: Vec::new(),
    };
    let Some(url) = want.source.strip_prefix("git+") else {
        return Ok(base); // local directories are hashed at build time, not pinned
    };
    let version_tag = want.recipe.file.source.as_ref().map(|s| s.version_tag.as_str()).unwrap_or("RELEASE-{version}");
    let (repo, refs) = fetcher.refs(url)?;
    let (git_ref, commit) = match pick_ref(&refs, &want.requested, version_tag) {
        Some(found) => found,
        None => {
            let abbreviated = (4..40).contains(&want.requested.len()) && want.requested.bytes().all(|b| b.is_ascii_hexdigit());
            match abbreviated.then(|| repo.rev_parse(&want.requested)).flatten() {
                Some(commit) => (commit.clone(), commit),
                None => {
                    let mut names: Vec<&str> = refs
                        .iter()
                        .filter_map(|(r, _)| r.strip_prefix("refs/heads/").or_else(|| r.strip_prefix("refs/tags/")))
                        .filter(|r| !r.ends_with("^{}"))
                        .collect();
                    names.sort();
                    names.dedup();
                    let shown: Vec<&str> = names.iter().rev().take(12).copied().collect();
                    return Err(Diagnostic::at(
                        want.component.location.clone(),
                        format!("`{}` version `{}` names no branch, tag or commit of {url}", want.component.name, want.requested),
                    )
                    .help(format!("use one of: {}", shown.join(", ")))
                    .into());
                }
            }
        }
    };
    let tree = fetcher.git_tree(url, &commit, None)?;
    let commit_time = repo.commit_time(&commit).context("reading the commit time")?;
    Ok(LockedComponent {
        git_ref: Some(git_ref),
        commit: Some(commit),
        commit_time: Some(commit_time),
        tree_blake3: Some(tree.blake3),
        nar_hash: Some(tree.nar_hash),
        ..base
    })
}

/// Make sure every locked source and archive is in the store, verified.
/// Returns the tree path of each component (local ones: their directory).
pub fn materialize(lock: &Lock, lock_dir: &Utf8Path, fetcher: &Fetcher) -> anyhow::Result<Vec<(String, Utf8PathBuf)>> {
    let mut trees = Vec::new();
    for component in &lock.components {
        let path = if let Some(url) = component.git_url() {
            let (Some(commit), Some(blake3), Some(nar)) = (&component.commit, &component.tree_blake3, &component.nar_hash) else {
                return Err(Diagnostic::new(format!("kraft.lock: component `{}` has a git source but no commit or hashes", component.name))
                    .help("run `cargo xtask update <app> <component>` to pin it again")
                    .into());
            };
            fetcher.git_tree(url, commit, Some((blake3, nar)))?.path
        } else if let Some(dir) = component.local_path() {
            lock_dir.join(dir)
        } else {
            return Err(Diagnostic::new(format!("kraft.lock: component `{}` has an unknown source `{}`", component.name, component.source))
                .help("sources are `git+<url>` or `path+<dir>`")
                .into());
        };
        // Origin archives: `source::origins::fetch_locked`, which names the app.
        trees.push((component.name.clone(), path));
    }
    Ok(trees)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs() -> Vec<(String, String)> {
        vec![
            ("refs/heads/stable".into(), "a".repeat(40)),
            ("refs/tags/RELEASE-0.16.3".into(), "b".repeat(40)),
            ("refs/tags/RELEASE-0.16.3^{}".into(), "c".repeat(40)),
            ("refs/tags/v1".into(), "d".repeat(40)),
        ]
    }

    #[test]
    fn versions_map_like_kraftkit() {
        assert_eq!(pick_ref(&refs(), "stable", "RELEASE-{version}").unwrap().0, "refs/heads/stable");
        // annotated tags resolve to the commit they point at
        assert_eq!(pick_ref(&refs(), "0.16.3", "RELEASE-{version}").unwrap(), ("refs/tags/RELEASE-0.16.3".into(), "c".repeat(40)));
        assert_eq!(pick_ref(&refs(), "v1", "RELEASE-{version}").unwrap().1, "d".repeat(40));
        assert_eq!(pick_ref(&refs(), &"e".repeat(40), "").unwrap().1, "e".repeat(40));
        assert!(pick_ref(&refs(), "nope", "RELEASE-{version}").is_none());
    }

    #[test]
    fn relative_paths() {
        assert_eq!(pathdiff("/a/b/lib".into(), "/a/b/app".into()).unwrap(), "../lib");
        assert_eq!(pathdiff("/a/b/app/x".into(), "/a/b/app".into()).unwrap(), "x");
    }
}
