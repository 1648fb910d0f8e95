//! Classifying a component string (`unikraft: stable`, `lwip: https://…`,
//! `source: ./libs/x`) as kraftkit's `parseStringProp` does: a URL with a host,
//! an scp-like git address, an existing directory, or else a version.

use camino::Utf8Path;

use super::paths::{home_dir, normalize_lexically};
use super::Source;

/// What a component string names.
#[derive(Debug, PartialEq, Eq)]
pub enum Spec {
    Source { source: Source, version: Option<String> },
    Version(String),
}

/// Classify `s`, with relative directories taken from `dir`.
pub fn classify(dir: &Utf8Path, s: &str) -> Spec {
    if let Some((url, version)) = url_with_host(s) {
        return Spec::Source { source: Source::Git { url }, version };
    }
    if scp_like(s) {
        let (url, version) = match s.split_once('?') {
            Some((base, q)) => (base.to_string(), query_version(q)),
            None => (s.to_string(), None),
        };
        return Spec::Source { source: Source::Git { url }, version };
    }
    let candidate = if let Some(rest) = s.strip_prefix("~/").or(if s == "~" { Some("") } else { None }) {
        home_dir().map(|h| h.join(rest))
    } else {
        Some(dir.join(s))
    };
    if let Some(candidate) = candidate {
        if !s.is_empty() && !s.contains('\0') && candidate.is_dir() {
            return Spec::Source {
                source: Source::Local { path: normalize_lexically(&candidate), written: s.to_string() },
                version: None,
            };
        }
    }
    Spec::Version(s.to_string())
}

/// The value of the first of `branch`, `tag`, `version` in a URL query.
fn query_version(query: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = query
        .split(['&', ';'])
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    ["branch", "tag", "version"]
        .iter()
        .find_map(|want| pairs.iter().find(|(k, _)| k == want).map(|(_, v)| v.clone()).filter(|v| !v.is_empty()))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://host/...` with a non-empty host (Go's `url.Parse(s).Host != ""`).
fn url_with_host(s: &str) -> Option<(String, Option<String>)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        return None;
    }
    let (without_fragment, fragment) = match s.split_once('#') {
        Some((a, f)) => (a, Some(f)),
        None => (s, None),
    };
    let (base, version) = match without_fragment.split_once('?') {
        Some((base, query)) => (base.to_string(), query_version(query)),
        None => (without_fragment.to_string(), None),
    };
    let url = match fragment {
        Some(f) => format!("{base}#{f}"),
        None => base,
    };
    Some((url, version))
}

/// `user@host:path` (scp-like git address).
fn scp_like(s: &str) -> bool {
    if s.contains("://") || s.starts_with(['.', '/', '~']) {
        return false;
    }
    match (s.find('@'), s.find(':')) {
        (Some(at), Some(colon)) => at > 0 && colon > at + 1 && colon + 1 < s.len() && !s[..colon].contains('/'),
        _ => false,
    }
}

/// Written as a path (so a missing directory is an error, not a version).
pub fn looks_like_path(s: &str) -> bool {
    s == "."
        || s == ".."
        || s == "~"
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('/')
        || s.starts_with("~/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_versions() {
        let classify = |s| classify(Utf8Path::new("/nonexistent"), s);
        assert_eq!(
            classify("https://github.com/unikraft/unikraft.git?branch=staging"),
            Spec::Source { source: Source::Git { url: "https://github.com/unikraft/unikraft.git".into() }, version: Some("staging".into()) }
        );
        assert_eq!(
            classify("https://x.org/a?foo=1&tag=v1%2B2"),
            Spec::Source { source: Source::Git { url: "https://x.org/a".into() }, version: Some("v1+2".into()) }
        );
        assert_eq!(
            classify("git@github.com:unikraft/lib-lwip.git"),
            Spec::Source { source: Source::Git { url: "git@github.com:unikraft/lib-lwip.git".into() }, version: None }
        );
        assert_eq!(classify("stable"), Spec::Version("stable".into()));
        assert_eq!(classify("file:///x"), Spec::Version("file:///x".into()));
        assert_eq!(classify("staging@1.0"), Spec::Version("staging@1.0".into()));
    }
}
