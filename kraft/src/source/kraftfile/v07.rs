//! Kraftfile v0.7 (kraftkit 0.12.12 and later), read beside v0.5 and v0.6.
//!
//! v0.7 keeps v0.6's meaning and adds forms; this pass rewrites each v0.7-only
//! form of a `spec: v0.7` file into its v0.6 equivalent on the YAML tree, so
//! the rest of the reader (and so the result) is the same as for the v0.6
//! twin:
//!
//! | v0.7 form | read as |
//! |---|---|
//! | `unikraft: <git url>@<ref>` (also a library's string) | `{source: <git url>, version: <ref>}`; an `@` in the URL's user part (`ssh://git@host/…`) is not a ref |
//! | `rootfs: {source: {path, type, dockerfile}, format}` | `rootfs: <path>` (type and format kept by kraftkit for packaging, which we do not do) |
//! | `rootfs: {source: <path>, type: …}` (deprecated) | `rootfs: <path>`, with a warning |
//! | `roms: [...]` | accepted and not applied (a warning), like `volumes` |
//!
//! Everything else v0.7 documents (`volumes` long-hand with `driver`,
//! `readonly` and `mode`, a single volume string, `template` long-hand,
//! short commits, `specification`) v0.6's reader already accepts.

use super::yaml::{Node, Style, Value};

/// A warning found while rewriting: position, message, help.
pub struct Note {
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: String,
}

/// Is this `spec` text v0.7 or later (`v0.7`, `0.7`, `v0.7.1`)?
pub fn is_v07(spec: &str) -> bool {
    let bare = spec.strip_prefix('v').unwrap_or(spec);
    let mut parts = bare.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => major > 0 || minor >= 7,
        _ => false,
    }
}

/// Rewrite the v0.7-only forms of `root` (a Kraftfile's top-level map) in
/// place, when its `spec` is v0.7 or later. Returns the warnings to report.
pub fn normalize(root: &mut Node) -> Vec<Note> {
    let mut notes = Vec::new();
    let Value::Map(entries) = &mut root.value else { return notes };
    let spec = entries.iter().find(|(k, _)| matches!(key(k), "spec" | "specification")).and_then(|(_, v)| scalar(v));
    if !spec.is_some_and(is_v07) {
        return notes;
    }
    entries.retain(|(k, _)| {
        if key(k) == "roms" {
            notes.push(Note {
                line: k.line,
                column: k.column,
                message: "`roms` is accepted but not applied by kraft-xtask".into(),
                help: "kraft-xtask builds the kernel image; attach read-only filesystems when running it".into(),
            });
            return false;
        }
        true
    });
    for (k, v) in entries.iter_mut() {
        match key(k) {
            "unikraft" => split_ref(v),
            "libraries" => {
                if let Value::Map(libraries) = &mut v.value {
                    for (_, library) in libraries.iter_mut() {
                        split_ref(library);
                    }
                }
            }
            "rootfs" => rootfs(v, &mut notes),
            _ => {}
        }
    }
    notes
}

fn key(node: &Node) -> &str {
    match &node.value {
        Value::Scalar { text, .. } => text,
        _ => "",
    }
}

fn scalar(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

fn string_node(text: &str, at: &Node) -> Node {
    Node { value: Value::Scalar { text: text.to_string(), style: Style::Quoted }, line: at.line, column: at.column }
}

/// `<git url>@<ref>` → `{source, version}`. The `@` must come after the
/// URL's path starts (after `host/` for `scheme://`, after `host:` for an
/// scp-like address), and the URL must look like git's.
pub fn split_git_ref(text: &str) -> Option<(&str, &str)> {
    let path_start = if let Some(i) = text.find("://") {
        i + 3 + text[i + 3..].find('/')?
    } else if let (Some(at), Some(colon)) = (text.find('@'), text.find(':')) {
        if at > colon || text[..colon].contains('/') {
            return None;
        }
        colon
    } else {
        return None;
    };
    let at = path_start + text[path_start..].rfind('@')?;
    let (url, reference) = (&text[..at], &text[at + 1..]);
    (!reference.is_empty()).then_some((url, reference))
}

fn split_ref(component: &mut Node) {
    let Value::Scalar { text, .. } = &component.value else { return };
    let Some((url, reference)) = split_git_ref(text) else { return };
    let (url, reference) = (url.to_string(), reference.to_string());
    let at = component.clone();
    component.value = Value::Map(vec![
        (string_node("source", &at), string_node(&url, &at)),
        (string_node("version", &at), string_node(&reference, &at)),
    ]);
}

fn rootfs(v: &mut Node, notes: &mut Vec<Note>) {
    let Value::Map(fields) = &v.value else { return };
    let source = fields.iter().find(|(k, _)| key(k) == "source").map(|(_, s)| s);
    let path = match source.map(|s| &s.value) {
        Some(Value::Map(inner)) => inner.iter().find(|(k, _)| key(k) == "path").and_then(|(_, p)| scalar(p)).map(str::to_string),
        Some(Value::Scalar { text, .. }) => {
            let at = source.unwrap();
            notes.push(Note {
                line: at.line,
                column: at.column,
                message: "`rootfs.source` as a plain string is deprecated in Kraftfile v0.7".into(),
                help: format!("write `source: {{ path: {text} }}`"),
            });
            Some(text.clone())
        }
        _ => None,
    };
    if let Some(path) = path {
        let at = v.clone();
        *v = string_node(&path, &at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_split_only_after_the_path_starts() {
        assert_eq!(
            split_git_ref("https://github.com/unikraft/unikraft.git@staging"),
            Some(("https://github.com/unikraft/unikraft.git", "staging"))
        );
        assert_eq!(split_git_ref("ssh://git@github.com/unikraft/unikraft.git"), None);
        assert_eq!(
            split_git_ref("ssh://git@github.com/unikraft/unikraft.git@v0.16.3"),
            Some(("ssh://git@github.com/unikraft/unikraft.git", "v0.16.3"))
        );
        assert_eq!(split_git_ref("git@github.com:unikraft/unikraft.git@stable"), Some(("git@github.com:unikraft/unikraft.git", "stable")));
        assert_eq!(split_git_ref("git@github.com:unikraft/unikraft.git"), None);
        assert_eq!(split_git_ref("stable"), None);
        assert_eq!(split_git_ref("path/to/unikraft"), None);
        assert!(is_v07("v0.7") && is_v07("0.7") && is_v07("v0.8") && !is_v07("v0.6") && !is_v07("0.5"));
    }
}
