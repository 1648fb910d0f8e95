//! Mirrors: where upstream URLs are really fetched from.
//!
//! `KRAFT_MIRRORS` holds `UPSTREAM_PREFIX=REPLACEMENT` pairs separated by `;`;
//! the same map can live in `[workspace.metadata.kraft.mirrors]`. The longest
//! matching prefix wins; the environment overrides the workspace for the same
//! prefix. A replacement may be a URL or a local path, so
//! `KRAFT_MIRRORS='https://github.com/=/srv/mirror/github/'` serves
//! `https://github.com/unikraft/lib-musl.git` from
//! `/srv/mirror/github/unikraft/lib-musl.git`.
//!
//! `KRAFT_ARCHIVE_DIR` names a directory where origin archives are looked up
//! by file name before any URL is tried. Whatever the origin, every archive is
//! verified against its locked sha256 before it enters the store.

use std::collections::BTreeMap;

use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mirrors {
    /// prefix -> replacement
    rules: BTreeMap<String, String>,
    /// Directory of origin archives, by file name.
    pub archive_dir: Option<Utf8PathBuf>,
}

/// Where a fetch really goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local file or directory: usable offline.
    Local(Utf8PathBuf),
    /// Needs the network.
    Remote(String),
}

impl Location {
    /// What to hand to git (a path or a URL).
    pub fn as_git_arg(&self) -> &str {
        match self {
            Location::Local(path) => path.as_str(),
            Location::Remote(url) => url,
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Remote(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_git_arg())
    }
}

impl Mirrors {
    /// Parse `KRAFT_MIRRORS`'s syntax. `origin` names where it came from, for errors.
    pub fn parse_pairs(text: &str, origin: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut pairs = Vec::new();
        for (index, pair) in text.split(';').map(str::trim).enumerate() {
            if pair.is_empty() {
                continue;
            }
            let Some((prefix, replacement)) = pair.split_once('=') else {
                return Err(Diagnostic::new(format!(
                    "{origin}: entry {} (`{pair}`) is not of the form UPSTREAM_PREFIX=REPLACEMENT",
                    index + 1
                ))
                .help("example: KRAFT_MIRRORS='https://github.com/=/srv/mirror/github/'")
                .into());
            };
            if prefix.is_empty() || replacement.is_empty() {
                return Err(Diagnostic::new(format!("{origin}: entry {} (`{pair}`) has an empty side", index + 1))
                    .help("both the upstream prefix and its replacement must be given")
                    .into());
            }
            pairs.push((prefix.to_string(), replacement.to_string()));
        }
        Ok(pairs)
    }

    /// Workspace rules first, then `KRAFT_MIRRORS` and `KRAFT_ARCHIVE_DIR` on top.
    pub fn from_env_and(workspace: &BTreeMap<String, String>) -> anyhow::Result<Mirrors> {
        let mut mirrors = Mirrors::default();
        for (prefix, replacement) in workspace {
            mirrors.add(prefix, replacement);
        }
        let config = crate::config::Config::get();
        if let Some(text) = &config.mirrors {
            for (prefix, replacement) in Mirrors::parse_pairs(text, "KRAFT_MIRRORS")? {
                mirrors.add(&prefix, &replacement);
            }
        }
        if let Some(dir) = config.archive_dir.clone() {
            if !dir.is_dir() {
                return Err(Diagnostic::new(format!("KRAFT_ARCHIVE_DIR={dir} is not a directory"))
                    .help("point it at a directory holding origin archives by file name, or unset it")
                    .into());
            }
            mirrors.archive_dir = Some(dir);
        }
        Ok(mirrors)
    }

    pub fn add(&mut self, prefix: &str, replacement: &str) {
        self.rules.insert(prefix.to_string(), replacement.to_string());
    }

    /// Rewrite an upstream URL through the longest matching prefix.
    pub fn rewrite(&self, url: &str) -> Location {
        let best = self
            .rules
            .iter()
            .filter(|(prefix, _)| url.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len());
        let rewritten = match best {
            Some((prefix, replacement)) => format!("{replacement}{}", &url[prefix.len()..]),
            None => url.to_string(),
        };
        classify(&rewritten)
    }

    /// An origin archive from the archive directory, if it is there.
    pub fn archive_file(&self, file_name: &str) -> Option<Utf8PathBuf> {
        let dir = self.archive_dir.as_ref()?;
        let path = dir.join(file_name);
        path.is_file().then_some(path)
    }
}

/// `file://` URLs and plain paths are local; anything with a scheme is remote.
pub fn classify(url: &str) -> Location {
    if let Some(path) = url.strip_prefix("file://") {
        return Location::Local(Utf8PathBuf::from(path));
    }
    if url.contains("://") || is_scp_like(url) {
        Location::Remote(url.to_string())
    } else {
        Location::Local(Utf8Path::new(url).to_owned())
    }
}

/// git's `user@host:path` form.
fn is_scp_like(url: &str) -> bool {
    match url.split_once(':') {
        Some((host, _)) => host.contains('@') && !host.contains('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut m = Mirrors::default();
        m.add("https://github.com/", "/srv/mirror/github/");
        m.add("https://github.com/unikraft/lib-musl", "https://example.test/musl");
        assert_eq!(
            m.rewrite("https://github.com/unikraft/unikraft.git"),
            Location::Local("/srv/mirror/github/unikraft/unikraft.git".into())
        );
        assert_eq!(
            m.rewrite("https://github.com/unikraft/lib-musl.git"),
            Location::Remote("https://example.test/musl.git".into())
        );
        assert_eq!(m.rewrite("https://other.test/x"), Location::Remote("https://other.test/x".into()));
    }

    #[test]
    fn bad_pairs_are_explained() {
        let err = Mirrors::parse_pairs("a=b;nonsense", "KRAFT_MIRRORS").unwrap_err().to_string();
        assert!(err.contains("entry 2 (`nonsense`)"), "{err}");
        assert_eq!(Mirrors::parse_pairs(" a=b ; ;c=d", "x").unwrap().len(), 2);
    }

    #[test]
    fn classify_urls() {
        assert!(classify("git@github.com:unikraft/unikraft.git").is_remote());
        assert!(!classify("/srv/x.git").is_remote());
        assert_eq!(classify("file:///srv/x.git"), Location::Local("/srv/x.git".into()));
    }
}
