//! Shell quoting and word splitting, through `shlex` (POSIX rules), so every
//! string that reaches `bash -c` or make is quoted the same way.

/// `s` quoted for a POSIX shell; plain words stay as they are.
pub fn quote(s: &str) -> String {
    shlex::try_quote(s).map(|q| q.into_owned()).unwrap_or_else(|_| {
        // shlex refuses NUL bytes; no shell can take them either.
        format!("'{}'", s.replace('\0', "").replace('\'', r"'\''"))
    })
}

/// Words split as a POSIX shell would, or `None` for unbalanced quotes.
pub fn split(s: &str) -> Option<Vec<String>> {
    shlex::split(s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_what_needs_it() {
        assert_eq!(super::quote("abc/d.c"), "abc/d.c");
        assert_eq!(super::quote("a b"), "'a b'");
        assert_eq!(super::quote("$(x)"), "'$(x)'");
        assert_eq!(super::split("a 'b c'"), Some(vec!["a".into(), "b c".into()]));
    }
}
