//! The one set of checks for writing an untrusted tree (an archive's entries,
//! a git tree's paths) into a staging directory without writing outside it:
//! paths must be relative with no `..`, nothing may be written through a
//! symlink written earlier, and a symlink may not point out of the tree.
//! `store/archive.rs` and `source/git.rs` both use these.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Why a path cannot be written.
#[derive(Debug)]
pub enum PathProblem {
    /// A component `..`.
    ParentComponent,
    /// Starts at `/`.
    Absolute,
    /// A component `.git` (any case): it would give the tree a repository.
    GitDir,
    /// An earlier entry made a parent (or the entry itself) a symlink.
    ThroughSymlink,
    /// An earlier entry made a parent a file.
    ParentNotDir,
    /// The file system could not be asked; the path is named.
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathProblem::ParentComponent => write!(f, "has a `..` component"),
            PathProblem::Absolute => write!(f, "is absolute"),
            PathProblem::GitDir => write!(f, "has a `.git` component"),
            PathProblem::ThroughSymlink => write!(f, "would be written through a symlink unpacked earlier"),
            PathProblem::ParentNotDir => write!(f, "has a parent that is not a directory"),
            PathProblem::Io(path, e) => write!(f, "cannot be checked: stat {}: {e}", path.display()),
        }
    }
}

/// `raw` as a list of normal components: no root, no `..`; `.` dropped. An
/// empty result is the root itself.
pub fn normal_components(raw: &[u8]) -> Result<Vec<&OsStr>, PathProblem> {
    let mut out = Vec::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => return Err(PathProblem::ParentComponent),
            Component::RootDir | Component::Prefix(_) => return Err(PathProblem::Absolute),
        }
    }
    Ok(out)
}

/// Whether a component is `.git` in any case (git itself refuses these in
/// trees it checks out; a store tree must not hold a repository).
pub fn is_git_dir(component: &OsStr) -> bool {
    component.as_bytes().eq_ignore_ascii_case(b".git")
}

/// Check that no prefix of `components` under `dest` (the parents, and the
/// entry itself when `include_last`) is a symlink, and that every existing
/// parent is a directory. Returns the full path.
pub fn no_symlink_on_path(dest: &Path, components: &[&OsStr], include_last: bool) -> Result<PathBuf, PathProblem> {
    let mut path = dest.to_path_buf();
    let n = components.len();
    for (i, c) in components.iter().enumerate() {
        path.push(c);
        if i + 1 == n && !include_last {
            break;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(PathProblem::ThroughSymlink),
            Ok(m) if i + 1 < n && !m.is_dir() => return Err(PathProblem::ParentNotDir),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing further down can exist either.
                for rest in &components[i + 1..] {
                    path.push(rest);
                }
                return Ok(path);
            }
            Err(e) => return Err(PathProblem::Io(path, e)),
        }
    }
    Ok(path)
}

/// Why a symlink target, for a link `depth` directories below the root,
/// would leave the tree (or be unverifiable); `Ok` when it stays inside.
/// `..` is only accepted as a leading component (`../../include/x.h`): after
/// a normal component the kernel would resolve it through whatever that
/// component is (possibly another symlink), which no lexical check can vouch
/// for.
pub fn check_symlink_target(target: &[u8], depth: usize) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("is empty");
    }
    let mut ups = 0usize;
    let mut seen_normal = false;
    for component in Path::new(OsStr::from_bytes(target)).components() {
        match component {
            Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
            Component::CurDir => {}
            Component::ParentDir if seen_normal => return Err("has `..` after a normal component"),
            Component::ParentDir => {
                ups += 1;
                if ups > depth {
                    return Err("leaves the tree");
                }
            }
            Component::Normal(_) => seen_normal = true,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        assert_eq!(normal_components(b"a/./b").unwrap(), [OsStr::new("a"), OsStr::new("b")]);
        assert!(matches!(normal_components(b"a/../b"), Err(PathProblem::ParentComponent)));
        assert!(matches!(normal_components(b"/a"), Err(PathProblem::Absolute)));
        assert!(is_git_dir(OsStr::new(".GiT")));
        assert!(!is_git_dir(OsStr::new(".github")));
    }

    #[test]
    fn writes_through_symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        let c = [OsStr::new("link"), OsStr::new("x")];
        assert!(matches!(no_symlink_on_path(dir.path(), &c, true), Err(PathProblem::ThroughSymlink)));
        assert!(no_symlink_on_path(dir.path(), &[OsStr::new("other"), OsStr::new("x")], true).is_ok());
    }
}
