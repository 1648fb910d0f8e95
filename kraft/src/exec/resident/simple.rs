//! Commands that need no shell: a compile line is one program and its
//! words, and `bash -c` only adds its own start (~1.5 ms, as much as the
//! namespace setup it replaced) to each of musl's ~1,200 compiles.
//!
//! [`words`] accepts a script only when `bash -c` would run it as exactly
//! one external program with literal arguments: no expansion of any kind
//! (`$`, backquotes, globs, braces, tildes, backslashes), no operator,
//! redirection, comment or assignment, and a first word that is neither a
//! reserved word nor a builtin. Anything else is `None`, and bash runs it.
//! The runner then gives the program the environment bash would have given
//! it (`PWD`, `SHLVL`, `_`; see [`bash_env`]), so what it sees is the same.
//! [`and_list`] is the same for commands joined by `&&`, the one operator
//! the bash stand-in (`shell`) takes apart.

/// The words of `script` if it is one plain external command.
pub(super) fn words(script: &str) -> Option<Vec<String>> {
    let mut list = and_list(script)?;
    if list.len() != 1 {
        return None;
    }
    let words = list.pop()?;
    is_program(&words[0]).then_some(words)
}

/// `true` when bash would look `word`, a command's first word, up in PATH:
/// not empty, not an assignment (`NAME=value cmd`), not a builtin or
/// reserved word.
pub(super) fn is_program(word: &str) -> bool {
    !word.is_empty() && !word.contains('=') && !BASH_WORDS.contains(&word)
}

/// The words of each command of `script` if it is commands of literal
/// words joined by `&&` (one command is a list of one). The words are as
/// in [`words`]; whether a first word is a program is the caller's
/// question.
pub(super) fn and_list(script: &str) -> Option<Vec<Vec<String>>> {
    let mut list: Vec<Vec<String>> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    // bash runs one command in place of itself (`exec`, which its SHLVL
    // shows) only when nothing but one newline follows it.
    let body = script.strip_suffix('\n').unwrap_or(script);
    if body.contains('\n') {
        return None;
    }
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                words.extend(word.take());
            }
            '&' => {
                // `&&` ends a command; a lone `&` sends one to the background.
                if chars.next() != Some('&') {
                    return None;
                }
                words.extend(word.take());
                if words.is_empty() {
                    return None;
                }
                list.push(std::mem::take(&mut words));
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '$' | '`' | '\\' | '!' => return None,
                        c => w.push(c),
                    }
                }
            }
            '~' => {
                // A tilde expands at a word's start and after `=` or `:`.
                let w = word.get_or_insert_with(String::new);
                if w.is_empty() || w.ends_with(['=', ':']) {
                    return None;
                }
                w.push(c);
            }
            c if c.is_ascii_alphanumeric() || "_-./+,:=@%^".contains(c) => {
                word.get_or_insert_with(String::new).push(c);
            }
            _ => return None,
        }
    }
    words.extend(word);
    if words.is_empty() {
        return None;
    }
    list.push(words);
    // An assignment or reserved word anywhere in the list is bash's.
    list.iter().all(|w| !w[0].is_empty() && !w[0].contains('=') && !RESERVED.contains(&w[0].as_str())).then_some(list)
}

/// The program's path, as bash's PATH search finds it (`None`: not found,
/// and bash should say so itself).
pub(super) fn resolve(program: &str, path: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    path.split(':')
        .map(|dir| std::path::Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .find(|p| executable(p))
}

/// What `bash -c` sets in the environment of the one program it runs in
/// its own place: `PWD` (the working directory), `SHLVL` (as inherited:
/// bash counts itself, then uncounts itself for the exec) and `_` (the
/// program's path). The variables and values are bash's; the order of the
/// environment block is not (bash's follows its hash table), and no
/// compiler or linker reads that order.
pub(super) fn bash_env(cwd: &str, program: &std::path::Path) -> [(String, String); 3] {
    let level = std::env::var("SHLVL").ok().and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0).max(0);
    [
        ("PWD".into(), cwd.into()),
        ("SHLVL".into(), level.to_string()),
        ("_".into(), program.to_string_lossy().into_owned()),
    ]
}

/// bash's reserved words: a list that has one is not a list of commands.
const RESERVED: &[&str] = &[
    "!", "[[", "]]", "{", "}", "case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if", "in",
    "select", "then", "time", "until", "while",
];

/// bash's reserved words and builtins: a first word among them is not
/// looked up in PATH.
const BASH_WORDS: &[&str] = &[
    "!", "[[", "]]", "{", "}", "case", "coproc", "do", "done", "elif", "else", "esac", "fi", "for", "function", "if", "in",
    "select", "then", "time", "until", "while", ".", ":", "[", "alias", "bg", "bind", "break", "builtin", "caller", "cd",
    "command", "compgen", "complete", "compopt", "continue", "declare", "dirs", "disown", "echo", "enable", "eval",
    "exec", "exit", "export", "false", "fc", "fg", "getopts", "hash", "help", "history", "jobs", "kill", "let", "local",
    "logout", "mapfile", "popd", "printf", "pushd", "pwd", "read", "readarray", "readonly", "return", "set", "shift",
    "shopt", "source", "suspend", "test", "times", "trap", "true", "type", "typeset", "ulimit", "umask", "unalias",
    "unset", "wait",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_are_split_as_bash_would() {
        let w = |s: &str| words(s).unwrap_or_else(|| panic!("{s:?} was refused"));
        assert_eq!(w("gcc -c a.c -o a.o\n"), ["gcc", "-c", "a.c", "-o", "a.o"]);
        assert_eq!(w(" gcc\t-c a.c \t\n"), ["gcc", "-c", "a.c"]);
        assert_eq!(w(r#"""gcc -DUK_CODENAME="Telesto" -DV=0.16.3~e45 '-DX="a b"'"#), ["gcc", "-DUK_CODENAME=Telesto", "-DV=0.16.3~e45", "-DX=\"a b\""]);
        assert_eq!(w("cc  -Wp,-MD,/kraft/build/.a.o.d\t-I/x "), ["cc", "-Wp,-MD,/kraft/build/.a.o.d", "-I/x"]);
        assert_eq!(w("cc ''"), ["cc", ""]);
    }

    #[test]
    fn anything_a_shell_would_interpret_goes_to_bash() {
        for script in [
            "cc a.c && ld a.o",
            "cc a.c; ld",
            "cc a.c | tee x",
            "cc a.c > log",
            "cc $CFLAGS a.c",
            "cc \"$X\" a.c",
            "cc `date` a.c",
            "cc *.c",
            "cc a?.c",
            "cc {a,b}.c",
            "cc ~/a.c",
            "cc -I=~/x",
            "cc -Ia:~/x",
            "cc a\\ b.c",
            "cc a.c # note",
            "cc (a)",
            "CC=gcc make",
            "echo hi",
            "cd /x",
            "true",
            "if true",
            "cc 'unterminated",
            "cc \"unterminated",
            "cc a.c\nld a.o",
            "cc a.c\n\n",
            "cc a.c\r",
            "",
            "''",
        ] {
            assert_eq!(words(script), None, "{script:?} must go to bash");
        }
    }

    #[test]
    fn and_lists_are_split_at_each_and() {
        let l = |s: &str| and_list(s).unwrap_or_else(|| panic!("{s:?} was refused"));
        assert_eq!(l("printf '  %-7s %s\\n' 'HOSTLN'  'a: b' &&  ln -sf /x /y"), [vec!["printf", "  %-7s %s\\n", "HOSTLN", "a: b"], vec!["ln", "-sf", "/x", "/y"]]);
        assert_eq!(l("a&&b && 'c&&d'"), [vec!["a"], vec!["b"], vec!["c&&d"]]);
        assert_eq!(l("gcc -c a.c\n"), [vec!["gcc", "-c", "a.c"]]);
        for script in ["a &", "a & b", "&& a", "a &&", "a && && b", "a &&& b", "a || b", "a; b", "X=1 && a", "a && if b", "a && ! b", "a\nb && c"] {
            assert_eq!(and_list(script), None, "{script:?} must go to bash");
        }
    }

    #[test]
    fn programs_are_found_as_bash_finds_them() {
        assert_eq!(resolve("sh", "/nonexistent:/bin:/usr/bin").unwrap(), std::path::Path::new("/bin/sh"));
        assert_eq!(resolve("no-such-program-here", "/bin:/usr/bin"), None);
        assert_eq!(resolve("/bin/sh", "").unwrap(), std::path::Path::new("/bin/sh"));
    }
}
