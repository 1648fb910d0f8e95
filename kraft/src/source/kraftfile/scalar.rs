//! YAML 1.1 typing of plain scalars, as kraftkit's `gopkg.in/yaml.v2` does it
//! (so `y`, `yes`, `on` are booleans and `0.10` is a number), while the text
//! itself is always kept as written.

/// A scalar's type, as `gopkg.in/yaml.v2` resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool(bool),
    Number,
    Str,
}

/// YAML 1.1 resolution of a plain scalar, following yaml.v2's `resolve`.
pub fn resolve_plain(s: &str) -> Kind {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Kind::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => return Kind::Bool(true),
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Kind::Bool(false)
        }
        ".nan" | ".NaN" | ".NAN" | ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf"
        | "-.INF" => return Kind::Number,
        _ => {}
    }
    if is_yaml11_number(s) {
        Kind::Number
    } else {
        Kind::Str
    }
}

fn is_yaml11_number(s: &str) -> bool {
    let first = s.as_bytes()[0];
    if first == b'.' {
        return s.parse::<f64>().is_ok() && !s.contains(['e', 'E', 'i', 'n', 'I', 'N']);
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return false;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let digits = plain.strip_prefix(['+', '-']).unwrap_or(&plain);
    let radix_ok = |rest: &str, radix: u32| !rest.is_empty() && rest.chars().all(|c| c.is_digit(radix));
    if let Some(rest) = digits.strip_prefix("0x") {
        return radix_ok(rest, 16);
    }
    if let Some(rest) = digits.strip_prefix("0b") {
        return radix_ok(rest, 2);
    }
    if let Some(rest) = digits.strip_prefix("0o") {
        return radix_ok(rest, 8);
    }
    // Decimal integer, or a float: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (int.is_empty() && !frac.is_empty() && frac.chars().all(|c| c.is_ascii_digit()))
                || (!int.is_empty() && int.chars().all(|c| c.is_ascii_digit()) && frac.chars().all(|c| c.is_ascii_digit()))
        }
        None => !mantissa.is_empty() && mantissa.chars().all(|c| c.is_ascii_digit()),
    };
    let exponent_ok = match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        }
    };
    mantissa_ok && exponent_ok
}

/// `"text"` with `\"` and `\\` escapes, as in a `.config` file.
pub fn unquote_kconfig(value: &str) -> Option<String> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml11_plain_scalars() {
        use resolve_plain as r;
        for s in ["0.10", "1", "-3", "+4", "0x1F", "0o17", "0b101", "1_000", "1e3", "1.5e-3", ".5", "1.", ".inf"] {
            assert_eq!(r(s), Kind::Number, "{s}");
        }
        for s in ["v0.6", "0.10.0", "stable", "1.2.3", "0x", "1e", "e1", "2024-01-01", "."] {
            assert_eq!(r(s), Kind::Str, "{s}");
        }
        for s in ["y", "Yes", "ON", "true"] {
            assert_eq!(r(s), Kind::Bool(true), "{s}");
        }
        for s in ["n", "NO", "off", "False"] {
            assert_eq!(r(s), Kind::Bool(false), "{s}");
        }
        for s in ["", "~", "null"] {
            assert_eq!(r(s), Kind::Null, "{s}");
        }
    }

    #[test]
    fn kconfig_list_quotes() {
        assert_eq!(unquote_kconfig(r#""a b""#).as_deref(), Some("a b"));
        assert_eq!(unquote_kconfig(r#""say \"hi\"""#).as_deref(), Some(r#"say "hi""#));
        assert_eq!(unquote_kconfig("plain"), None);
        assert_eq!(unquote_kconfig(r#""a" "b""#), None);
        assert_eq!(unquote_kconfig("\""), None);
    }
}
