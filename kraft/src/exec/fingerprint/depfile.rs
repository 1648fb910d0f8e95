//! Make-syntax depfiles (what `gcc -MD` and Unikraft's `fixdep` write): the
//! prerequisites they name become an action's discovered inputs.

use camino::{Utf8Path, Utf8PathBuf};

/// The prerequisites named in a make-syntax depfile, in order, deduplicated.
///
/// Handles what gcc writes (`-MD`, `-MP` phony rules, `\`-newline
/// continuations, `\ ` for spaces, `\#`, `$$`) and Kbuild/Unikraft `fixdep`
/// output (`source_x := file`, `deps_x := \` lists, `$(wildcard ...)` ignored).
pub fn parse_depfile(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in logical_lines(text) {
        let tokens = tokenize(&line);
        let Some(sep) = tokens.iter().position(|t| t.sep.is_some()) else { continue };
        let sep_tok = &tokens[sep];
        let is_assign = sep_tok.sep == Some(Sep::Assign);
        if is_assign {
            let var = tokens[..=sep].first().map(|t| t.text.as_str()).unwrap_or("");
            if !(var.starts_with("deps_") || var.starts_with("source_")) {
                continue;
            }
        }
        let mut rest: Vec<&Token> = Vec::new();
        if !sep_tok.after.is_empty() {
            // `target:dep` written without a space.
            rest.push(sep_tok);
        }
        rest.extend(tokens[sep + 1..].iter());
        let mut depth = 0i32;
        for t in rest {
            let word = if t.sep.is_some() { t.after.as_str() } else { t.text.as_str() };
            if word.contains("$(") || depth > 0 {
                depth += word.matches("$(").count() as i32 - word.matches(')').count() as i32;
                depth = depth.max(0);
                continue;
            }
            if word.is_empty() {
                continue;
            }
            if seen.insert(word.to_owned()) {
                out.push(word.to_owned());
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sep {
    Rule,
    Assign,
}

#[derive(Debug)]
struct Token {
    text: String,
    /// This token contains the rule's `:` (or `:=`); `text` is before it.
    sep: Option<Sep>,
    /// Text after the separator within the same token.
    after: String,
}

/// Join `\`-newline continuations and drop comments.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars().peekable();
    let mut in_comment = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('\n')) => {
                chars.next();
                cur.push(' ');
            }
            '\\' if matches!(chars.peek(), Some('\r')) => {
                chars.next();
                if matches!(chars.peek(), Some('\n')) {
                    chars.next();
                }
                cur.push(' ');
            }
            '\\' => {
                if !in_comment {
                    cur.push('\\');
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
            }
            '\n' => {
                in_comment = false;
                lines.push(std::mem::take(&mut cur));
            }
            '#' => in_comment = true,
            _ if in_comment => {}
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

fn tokenize(line: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut after = String::new();
    let mut sep: Option<Sep> = None;
    let mut seen_sep = false;
    let mut chars = line.chars().peekable();
    let flush = |tokens: &mut Vec<Token>, text: &mut String, after: &mut String, sep: &mut Option<Sep>| {
        if !text.is_empty() || sep.is_some() || !after.is_empty() {
            tokens.push(Token { text: std::mem::take(text), sep: sep.take(), after: std::mem::take(after) });
        }
    };
    while let Some(c) = chars.next() {
        let buf = if sep.is_some() { &mut after } else { &mut text };
        match c {
            '\\' => match chars.next() {
                Some(n @ (' ' | '#' | ':' | '\\' | '\t')) => buf.push(n),
                Some(n) => {
                    buf.push('\\');
                    buf.push(n);
                }
                None => buf.push('\\'),
            },
            '$' if matches!(chars.peek(), Some('$')) => {
                chars.next();
                buf.push('$');
            }
            ' ' | '\t' | '\r' => flush(&mut tokens, &mut text, &mut after, &mut sep),
            ':' if !seen_sep && sep.is_none() => {
                seen_sep = true;
                if matches!(chars.peek(), Some('=')) {
                    chars.next();
                    sep = Some(Sep::Assign);
                } else {
                    if matches!(chars.peek(), Some(':')) {
                        chars.next();
                    }
                    sep = Some(Sep::Rule);
                }
            }
            _ => buf.push(c),
        }
    }
    flush(&mut tokens, &mut text, &mut after, &mut sep);
    tokens
}

/// Lexically normalize an absolute path (`.` and `..` components).
pub fn normalize(path: &Utf8Path) -> Utf8PathBuf {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.as_str().split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    Utf8PathBuf::from(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_depfile() {
        let d = "build/a.o: src/a.c include/common.h \\\n /usr/include/stdio.h include/with\\ space.h \\\n  include/$$dollar.h\n\ninclude/common.h:\n";
        assert_eq!(
            parse_depfile(d),
            vec!["src/a.c", "include/common.h", "/usr/include/stdio.h", "include/with space.h", "include/$dollar.h"]
        );
    }

    #[test]
    fn fixdep_output() {
        let d = "cmd_a.o := gcc -c a.c\n\nsource_a.o := /kraft/a.c\n\ndeps_a.o := \\\n  /kraft/a.h \\\n    $(wildcard include/config/foo.h) \\\n  /kraft/b.h \\\n\na.o: $(deps_a.o)\n\n$(deps_a.o):\n";
        assert_eq!(parse_depfile(d), vec!["/kraft/a.c", "/kraft/a.h", "/kraft/b.h"]);
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize(Utf8Path::new("/kraft/build/../inc/./x.h")), "/kraft/inc/x.h");
    }
}
