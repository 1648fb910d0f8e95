//! The mount map: for one target, which host directory is behind each
//! inside path (`/kraft/unikraft`, `/kraft/libs/<name>`, `/kraft/apps/<name>`,
//! `/kraft/build`).
//!
//! Built once per target (host paths canonicalized, parents before
//! children) and shared by everything that crosses between the two sides:
//! the sandbox (bind mounts, or text rewriting without bwrap), the planner,
//! the executor and its fingerprints (an inside path to the file to hash),
//! and the no-op snapshot (whose files are host paths, so its key carries
//! [`MountMap::host_digest`]).

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use serde::{Deserialize, Serialize};
use crate::plan::graph::SANDBOX_ROOT;

/// One directory made visible to build commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute host path (a directory).
    pub host: Utf8PathBuf,
    /// Absolute path inside the sandbox, under `/kraft`.
    pub inside: Utf8PathBuf,
    pub writable: bool,
}

impl Mount {
    pub fn ro(host: impl Into<Utf8PathBuf>, inside: impl Into<Utf8PathBuf>) -> Mount {
        Mount { host: host.into(), inside: inside.into(), writable: false }
    }
    pub fn rw(host: impl Into<Utf8PathBuf>, inside: impl Into<Utf8PathBuf>) -> Mount {
        Mount { host: host.into(), inside: inside.into(), writable: true }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountMap {
    /// Sorted by inside path: parents before children.
    mounts: Vec<Mount>,
}

impl MountMap {
    /// Check that every mount is under `/kraft` and canonicalize the host
    /// sides (so a `realpath` printed by make maps back exactly).
    pub fn new(mut mounts: Vec<Mount>) -> Result<MountMap> {
        for m in &mut mounts {
            if !m.inside.is_absolute() || !m.inside.starts_with(SANDBOX_ROOT) {
                bail!("sandbox mount {} must be under {SANDBOX_ROOT}", m.inside);
            }
            m.host = m.host.canonicalize_utf8().with_context(|| format!("resolving sandbox mount source {}", m.host))?;
        }
        mounts.sort_by(|a, b| a.inside.cmp(&b.inside));
        Ok(MountMap { mounts })
    }

    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// Host path for an inside path (longest matching mount wins).
    pub fn to_host(&self, inside: &Utf8Path) -> Option<Utf8PathBuf> {
        // On strings, not `Path::strip_prefix`: this runs for every file of
        // every action, and component-wise comparison dominated no-op builds.
        self.mounts
            .iter()
            .rev()
            .filter_map(|m| strip_dir_prefix(inside.as_str(), m.inside.as_str()).map(|rest| (m, rest)))
            .max_by_key(|(m, _)| m.inside.as_str().len())
            .map(|(m, rest)| if rest.is_empty() { m.host.clone() } else { m.host.join(rest) })
    }

    /// The file to read for a path an action names: inside paths through the
    /// map; paths outside `/kraft` (host headers, toolchain libraries) are
    /// the same on both sides (the sandbox mounts them at their host paths).
    pub fn file_for(&self, path: &Utf8Path) -> Option<Utf8PathBuf> {
        if strip_dir_prefix(path.as_str(), SANDBOX_ROOT).is_some() {
            self.to_host(path)
        } else {
            Some(path.to_owned())
        }
    }

    /// Inside path for a host path (longest matching mount wins).
    pub fn to_inside(&self, host: &Utf8Path) -> Option<Utf8PathBuf> {
        self.mounts
            .iter()
            .filter_map(|m| strip_dir_prefix(host.as_str(), m.host.as_str()).map(|rest| (m, rest)))
            .max_by_key(|(m, _)| m.host.as_str().len())
            .map(|(m, rest)| if rest.is_empty() { m.inside.clone() } else { m.inside.join(rest) })
    }

    /// Inside paths in free text → host paths.
    pub fn rewrite_to_host(&self, text: &str) -> String {
        let pairs: Vec<(&str, &str)> = self.mounts.iter().map(|m| (m.inside.as_str(), m.host.as_str())).collect();
        replace_prefixes(text, &pairs)
    }

    /// Host paths in free text (make's output, `.cmd` files, depfiles) →
    /// inside paths.
    pub fn rewrite_to_inside(&self, text: &str) -> String {
        let pairs: Vec<(&str, &str)> = self.mounts.iter().map(|m| (m.host.as_str(), m.inside.as_str())).collect();
        replace_prefixes(text, &pairs)
    }

    /// blake3 over every (inside, host, writable): where the sources were
    /// mounted from. In the no-op snapshot's key and the build state, never
    /// in an action key under bwrap (see the table in
    /// [`crate::exec::fingerprint`]).
    pub fn host_digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for m in &self.mounts {
            for part in [m.inside.as_str(), "\0", m.host.as_str(), if m.writable { "\0rw\n" } else { "\0ro\n" }] {
                h.update(part.as_bytes());
            }
        }
        h.finalize().to_hex()[..32].to_string()
    }
}

/// `inside<TAB>host` per mount, one a line: what the build state keeps to
/// know whose files its stat cache describes.
impl MountMap {
    pub fn listing(&self) -> String {
        self.mounts.iter().map(|m| format!("{}\t{}\n", m.inside, m.host)).collect()
    }

    /// Inside roots whose host directory is not the one `old` (a
    /// [`MountMap::listing`]) had.
    pub fn moved_since(&self, old: &str) -> Vec<String> {
        let before: std::collections::HashMap<&str, &str> = old.lines().filter_map(|l| l.split_once('\t')).collect();
        self.mounts
            .iter()
            .filter(|m| before.get(m.inside.as_str()) != Some(&m.host.as_str()))
            .map(|m| m.inside.to_string())
            .collect()
    }
}

/// `path` below `dir` (`""` for `dir` itself), on whole components: `/a/bc`
/// is not below `/a/b`. Both are normalized absolute paths.
pub(crate) fn strip_dir_prefix<'a>(path: &'a str, dir: &str) -> Option<&'a str> {
    let dir = dir.trim_end_matches('/');
    let rest = path.strip_prefix(dir)?;
    if rest.is_empty() {
        Some("")
    } else {
        rest.strip_prefix('/').map(|r| r.trim_start_matches('/'))
    }
}

/// Replaces each occurrence of a `from` path that ends at a path boundary
/// (end of text, `/`, or a character that cannot be part of a file name in
/// a command line), longest `from` first.
fn replace_prefixes(text: &str, pairs: &[(&str, &str)]) -> String {
    let mut pairs = pairs.to_vec();
    pairs.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'outer: while i < bytes.len() {
        if bytes[i] == b'/' {
            for (from, to) in &pairs {
                if text[i..].starts_with(from) {
                    let end = i + from.len();
                    let boundary = end == bytes.len()
                        || !matches!(bytes[end], b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'+');
                    if boundary {
                        out.push_str(to);
                        i = end;
                        continue 'outer;
                    }
                }
            }
        }
        let ch = text[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_both_ways_and_digests_hosts() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ha = Utf8Path::from_path(a.path()).unwrap().canonicalize_utf8().unwrap();
        let hb = Utf8Path::from_path(b.path()).unwrap().canonicalize_utf8().unwrap();
        let map = MountMap::new(vec![Mount::ro(&ha, "/kraft/apps/x")]).unwrap();
        assert_eq!(map.to_host("/kraft/apps/x/main.c".into()), Some(ha.join("main.c")));
        assert_eq!(map.to_inside(&ha.join("main.c")), Some("/kraft/apps/x/main.c".into()));
        assert_eq!(map.file_for("/usr/include/stdio.h".into()), Some("/usr/include/stdio.h".into()));
        assert_eq!(map.to_host("/kraft/apps/xy".into()), None);
        let other = MountMap::new(vec![Mount::ro(&hb, "/kraft/apps/x")]).unwrap();
        assert_ne!(map.host_digest(), other.host_digest(), "another checkout");
    }
}
