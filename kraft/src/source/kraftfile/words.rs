//! `cmd` as one string, split into words. kraftkit runs it through
//! mattn/go-shellwords' `Parse`; here the splitting itself is shlex's POSIX
//! rules (`crate::util::shell`, shared with everything that quotes for a
//! shell), and this file only adds what go-shellwords refuses: characters a
//! shell would treat as operators or substitutions, outside quotes.

use crate::util::shell;

/// Characters that end a command or start a substitution in a shell; a `cmd`
/// holding one unquoted is ambiguous (go-shellwords stops parsing there).
const OPERATORS: [char; 8] = [';', '&', '|', '<', '>', '`', '(', ')'];

/// Split a command line into words: blanks separate words, `'…'` is literal,
/// `"…"` groups, a backslash outside single quotes escapes the next character.
/// Unquoted operators (`; & | < >`, backquotes, parentheses) and a `#` that
/// would start a shell comment are refused.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    if line.contains('\0') {
        return Err("a NUL character".into());
    }
    // A scan for quoting state only: what shlex would take silently but a
    // shell (or go-shellwords) would not.
    let (mut single, mut double, mut escaped, mut word_start) = (false, false, false, true);
    for c in line.chars() {
        if escaped {
            escaped = false;
            word_start = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            ' ' | '\t' | '\n' | '\r' if !single && !double => {
                word_start = true;
                continue;
            }
            '#' if !single && !double && word_start => return Err("an unquoted `#` (a shell comment)".into()),
            c if !single && !double && OPERATORS.contains(&c) => return Err(format!("unquoted `{c}`")),
            _ => {}
        }
        word_start = false;
    }
    if escaped {
        return Err("a trailing backslash".into());
    }
    if single || double {
        return Err("an unterminated quote".into());
    }
    // shlex separates words on space, tab and newline; a carriage return
    // (a CRLF file's quoted line) separates them too, as in go-shellwords.
    let normalized: String = line.chars().map(|c| if c == '\r' { ' ' } else { c }).collect();
    shell::split(&normalized).ok_or_else(|| "an unterminated quote".to_string())
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn words_like_shellwords() {
        assert_eq!(split_words("/bin/app -p 80").unwrap(), ["/bin/app", "-p", "80"]);
        assert_eq!(split_words("  a   'b c'  \"d \\\" e\" f\\ g ''").unwrap(), ["a", "b c", "d \" e", "f g", ""]);
        assert_eq!(split_words("'a\\b'").unwrap(), ["a\\b"]);
        assert_eq!(split_words("").unwrap(), Vec::<String>::new());
        assert!(split_words("a | b").is_err());
        assert!(split_words("'a").is_err());
        assert!(split_words("a\\").is_err());
        assert_eq!(split_words("'a | b'").unwrap(), ["a | b"]);
    }

    #[test]
    fn shell_syntax_is_refused_unquoted() {
        assert!(split_words("/app $(id)").is_err());
        assert!(split_words("/app # comment").is_err());
        assert_eq!(split_words("/app a#b '#c'").unwrap(), ["/app", "a#b", "#c"]);
        assert!(split_words("/app\0x").is_err());
    }
}
