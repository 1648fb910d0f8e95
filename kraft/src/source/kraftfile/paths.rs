//! Path normalisation for the Kraftfile: the directory it lives in, made
//! absolute, and `.`/`..` resolved lexically (the file system is never asked,
//! so a symlink cannot change what a path in the Kraftfile means).

use camino::{Utf8Component, Utf8Path, Utf8PathBuf};

/// The Kraftfile's directory, absolute and lexically normalized.
pub fn absolute_dir(path: &Utf8Path) -> Utf8PathBuf {
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
pub fn normalize_lexically(path: &Utf8Path) -> Utf8PathBuf {
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

/// `~` for `~/…` sources.
pub fn home_dir() -> Option<Utf8PathBuf> {
    crate::config::Config::get().home.clone()
}

/// Why `written` (an `outdir` or `rootfs`) does not stay inside the app
/// directory: absolute, or leaving it through `..`.
pub fn escapes_app_dir(written: &str) -> Option<&'static str> {
    let path = Utf8Path::new(written);
    if path.is_absolute() || written.starts_with('~') {
        return Some("is absolute");
    }
    let mut depth: usize = 0;
    for c in path.components() {
        match c {
            Utf8Component::Normal(_) => depth += 1,
            Utf8Component::ParentDir if depth == 0 => return Some("leaves the app directory through `..`"),
            Utf8Component::ParentDir => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalization() {
        assert_eq!(normalize_lexically(Utf8Path::new("/a/b/../c/./d")), Utf8PathBuf::from("/a/c/d"));
        assert_eq!(normalize_lexically(Utf8Path::new("/../a")), Utf8PathBuf::from("/a"));
        assert_eq!(normalize_lexically(Utf8Path::new("a/../../b")), Utf8PathBuf::from("../b"));
    }

    #[test]
    fn app_relative_paths() {
        assert_eq!(escapes_app_dir(".unikraft/build"), None);
        assert_eq!(escapes_app_dir("a/../b"), None);
        assert!(escapes_app_dir("../x").is_some());
        assert!(escapes_app_dir("a/../../x").is_some());
        assert!(escapes_app_dir("/etc").is_some());
    }
}
