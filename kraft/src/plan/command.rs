//! What one shell command does, read from its words: its kind (compile,
//! partial link, objcopy, script), outputs, depfile, candidate inputs and the
//! files it modifies in place.

use camino::Utf8Path;
use camino::Utf8PathBuf;

use crate::plan::graph::ActionKind;

pub(crate) fn is_symlink_command(script: &str) -> bool {
    let mut words = script.split_whitespace();
    let program = words.next().unwrap_or("");
    (program == "ln" || program.ends_with("/ln")) && words.next().is_some_and(|flag| flag.starts_with('-') && flag.contains('s'))
}

/// Shell-ish words of a script: quotes removed, operators as their own words.
/// Not `util::shell::split` (shlex): that keeps `;`, `|`, `&&`, `>` and `2>&1`
/// inside words, and the analysis needs them apart to find each simple
/// command and each redirect target.
pub(crate) fn words(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = script.chars().peekable();
    let flush = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n)
                }
            }
            (None, c) if c.is_whitespace() => flush(&mut cur, &mut out),
            (None, ';' | '|' | '&' | '(' | ')' | '{' | '}') => {
                flush(&mut cur, &mut out);
                out.push(c.to_string());
            }
            (None, '>' | '<') => {
                // `2>&1`, `>/dev/null`: keep fd digits out of file names.
                if cur.chars().all(|d| d.is_ascii_digit()) {
                    cur.clear();
                } else {
                    flush(&mut cur, &mut out);
                }
                out.push(c.to_string());
            }
            (None, c) => cur.push(c),
        }
    }
    flush(&mut cur, &mut out);
    out
}

/// Splits words into simple commands at `;`, `|`, `&`, `(`, `)`, `{`, `}`.
pub(crate) fn simple_commands(words: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    for w in words {
        if matches!(w.as_str(), ";" | "|" | "&" | "(" | ")" | "{" | "}") {
            out.push(Vec::new());
        } else {
            out.last_mut().unwrap().push(w.clone());
        }
    }
    out.retain(|c| !c.is_empty());
    // Drop leading shell keywords and `VAR=value` assignments.
    for c in &mut out {
        while c.first().is_some_and(|w| {
            matches!(w.as_str(), "if" | "then" | "else" | "elif" | "fi" | "do" | "done" | "while" | "until" | "!" | "exec")
                || w.split_once('=').is_some_and(|(k, _)| !k.is_empty() && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
        }) {
            c.remove(0);
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

pub(crate) fn tool(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

pub(crate) fn is_compiler(t: &str) -> bool {
    let t = tool(t);
    ["gcc", "cc", "clang", "g++", "c++", "clang++", "cpp", "as"]
        .iter()
        .any(|c| t == *c || t.ends_with(&format!("-{c}")) || (t.starts_with("gcc-") && *c == "gcc"))
}

#[derive(Default)]
pub(crate) struct Analysis {
    pub(crate) kind: Option<ActionKind>,
    pub(crate) outputs: Vec<Utf8PathBuf>,
    pub(crate) depfile: Option<Utf8PathBuf>,
    /// Path-like words (candidates for inputs).
    pub(crate) paths: Vec<Utf8PathBuf>,
    /// First compiled source (`-c X` / positional source of a compile).
    pub(crate) source: Option<Utf8PathBuf>,
    /// Files an objcopy/raw step may modify in place.
    pub(crate) in_place: Vec<Utf8PathBuf>,
    /// Files certainly modified rather than created: `>>` targets, `ranlib`'s
    /// archive (see [`fold_in_place`](crate::plan::make_n::fold_in_place)).
    pub(crate) modifies: Vec<Utf8PathBuf>,
}

pub(crate) fn analyze(script: &str, cwd: &Utf8Path) -> Analysis {
    let mut a = Analysis::default();
    let words = words(script);
    let mut compiles = false;
    let mut links_r = false;
    let mut objcopy = false;
    // Redirect targets, over the whole script.
    for (i, w) in words.iter().enumerate() {
        if w == ">" {
            if let Some(t) = words.get(i + 1) {
                if t != "&" && t != ">" && t != "/dev/null" && !t.starts_with('&') {
                    a.outputs.push(normalize(cwd, t));
                    // `>>`: appends to what is there.
                    if i > 0 && words[i - 1] == ">" {
                        a.modifies.push(normalize(cwd, t));
                    }
                }
            }
        }
    }
    for cmd in simple_commands(&words) {
        let t = tool(&cmd[0]).to_string();
        let positional: Vec<&String> = cmd[1..]
            .iter()
            .enumerate()
            .filter(|(i, w)| {
                !w.starts_with('-') && *w != ">" && *w != "<" && !(*i > 0 && matches!(cmd[*i].as_str(), "-o" | "-MF" | ">" | "<" | "-T" | "-x" | "-include" | "--update-section" | "--add-section"))
            })
            .map(|(_, w)| w)
            .collect();
        if is_compiler(&t) {
            if cmd.iter().any(|w| w == "-c" || w == "-E" || w == "-S") {
                compiles = true;
                if a.source.is_none() {
                    a.source = positional
                        .iter()
                        .find(|w| {
                            let ext = w.rsplit('.').next().unwrap_or("");
                            matches!(ext, "c" | "S" | "s" | "cc" | "cpp" | "cxx" | "C" | "m")
                        })
                        .map(|w| normalize(cwd, w));
                }
            }
            if cmd.iter().any(|w| w == "-r" || w == "-Wl,-r") {
                links_r = true;
            }
        } else if t == "ld" || t.ends_with("-ld") {
            if cmd.iter().any(|w| w == "-r") {
                links_r = true;
            }
        } else if t == "objcopy" || t.ends_with("-objcopy") || t == "strip" || t.ends_with("-strip") {
            objcopy = true;
            let files: Vec<&&String> = positional.iter().filter(|w| w.contains('/') || w.contains('.')).collect();
            if files.len() == 1 && !cmd.iter().any(|w| w == "-o") {
                a.in_place.push(normalize(cwd, files[0]));
            } else if files.len() >= 2 && !cmd.iter().any(|w| w == "-o") {
                a.outputs.push(normalize(cwd, files[files.len() - 1]));
            }
        } else if t == "ar" || t.ends_with("-ar") || t == "gcc-ar" {
            // `ar rc lib/libc.a a.o b.o`: the archive is the output, the
            // members are inputs (found below as path-like words). An
            // archive of a library's objects is a partial link.
            if positional.first().is_some_and(|op| op.contains(['r', 'q'])) {
                if let Some(archive) = positional.get(1) {
                    a.outputs.push(normalize(cwd, archive));
                    links_r = true;
                }
            }
        } else if t == "ranlib" || t.ends_with("-ranlib") {
            if let Some(archive) = positional.last() {
                a.outputs.push(normalize(cwd, archive));
                a.modifies.push(normalize(cwd, archive));
                objcopy = true;
            }
        } else if t == "ln" || t == "cp" || t == "mv" || t == "install" {
            if let Some(last) = positional.last() {
                a.outputs.push(normalize(cwd, last));
            }
        } else if !matches!(
            t.as_str(),
            "awk" | "gawk" | "mawk" | "sed" | "cat" | "cmp" | "grep" | "tr" | "sort" | "printf" | "test" | "[" | "fi" | "true"
        ) {
            // Unknown tools (multiboot.py, mkbootinfo.py): their path
            // arguments may be modified in place.
            for w in &positional {
                if w.starts_with('/') {
                    a.in_place.push(normalize(cwd, w));
                }
            }
        }
        for (i, w) in cmd.iter().enumerate() {
            if w == "-o" || w == "-MF" {
                if let Some(next) = cmd.get(i + 1) {
                    if w == "-o" {
                        a.outputs.push(normalize(cwd, next));
                    } else {
                        a.depfile = Some(normalize(cwd, next));
                    }
                }
            } else if let Some(rest) = w.strip_prefix("-o").filter(|r| r.starts_with('/')) {
                a.outputs.push(normalize(cwd, rest));
            } else if let Some(rest) = w.strip_prefix("-Wp,-MD,").or_else(|| w.strip_prefix("-Wp,-MMD,")) {
                a.depfile = Some(normalize(cwd, rest));
            }
        }
    }
    // Path-like pieces of every word (split at `=` and `,`).
    for w in &words {
        if w.starts_with("-I") || w.starts_with("-L") || w.starts_with("-D") || w.starts_with("-U") {
            continue;
        }
        for piece in w.split(['=', ',', ':']) {
            if piece.is_empty() || piece.starts_with('-') || piece.contains('$') || piece.contains('*') {
                continue;
            }
            if piece.starts_with('/') || piece.contains('/') || piece.contains('.') {
                a.paths.push(normalize(cwd, piece));
            }
        }
    }
    a.kind = Some(if compiles {
        ActionKind::Compile
    } else if links_r {
        ActionKind::PartialLink
    } else if objcopy {
        ActionKind::Objcopy
    } else {
        ActionKind::Script
    });
    a
}

/// One printed command, before it becomes an action.
pub(crate) struct Raw {
    pub(crate) script: String,
    /// The make target when the command ran a `.cmd` file (inside path,
    /// possibly not the real target for relative `.cmd` names).
    pub(crate) cmd_target: Option<Utf8PathBuf>,
}

/// Lexical normalization against `base`: absolute result, no `.`/`..`/`//`.
pub(crate) fn normalize(base: &Utf8Path, p: &str) -> Utf8PathBuf {
    let joined = if p.starts_with('/') { p.to_string() } else { format!("{base}/{p}") };
    crate::exec::fingerprint::normalize(Utf8Path::new(&joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_operators() {
        assert_eq!(
            words(r#"""gcc -c a.c -o /x/a.o 2>&1 | { grep -Ev "x y" || true; }"#),
            vec!["gcc", "-c", "a.c", "-o", "/x/a.o", ">", "&", "1", "|", "{", "grep", "-Ev", "x y", "|", "|", "true", ";", "}"]
        );
    }
}
