//! What a value must look like before it can reach make, git or a path:
//! names, specification versions, platforms and architectures, kconfig keys
//! and values, versions and URLs, and local source trees. Each check returns
//! why a value is refused; the schema code turns that into a located error
//! with a fix.

use camino::Utf8Path;

/// Specification versions this tool reads, as `(major, minor)`.
pub const KNOWN_SPECS: [(u32, u32); 3] = [(0, 5), (0, 6), (0, 7)];

/// Platforms, and the kraftkit aliases that mean one of them.
pub const PLATFORMS: [&str; 5] = ["qemu", "fc", "xen", "linuxu", "kraftcloud"];
pub const PLATFORM_ALIASES: [(&str, &str); 2] = [("kvm", "qemu"), ("firecracker", "fc")];
pub const ARCHITECTURES: [&str; 3] = ["x86_64", "arm64", "arm"];

/// The longest name (of the app, a library or a target).
pub const MAX_NAME: usize = 128;

/// How a known specification compares: `Ok(())` known, otherwise why not.
pub fn spec_support(bare: &str) -> Result<(), &'static str> {
    let mut parts = bare.split('.').map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    let major = parts.next().unwrap_or(u32::MAX);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    if KNOWN_SPECS.contains(&(major, minor)) && patch == 0 {
        return Ok(());
    }
    let latest = KNOWN_SPECS[KNOWN_SPECS.len() - 1];
    if (major, minor) > latest || ((major, minor) == latest && patch > 0) {
        Err("is newer than this tool supports")
    } else {
        Err("is older than any this tool supports")
    }
}

/// The list for messages: `v0.5, v0.6, v0.7`.
pub fn known_specs() -> String {
    KNOWN_SPECS.iter().map(|(a, b)| format!("v{a}.{b}")).collect::<Vec<_>>().join(", ")
}

/// A platform as written, normalized (`kvm` → `qemu`), if known.
pub fn platform(raw: &str) -> Option<&'static str> {
    PLATFORMS.iter().find(|p| **p == raw).copied().or_else(|| PLATFORM_ALIASES.iter().find(|(a, _)| *a == raw).map(|(_, p)| *p))
}

pub fn platform_list() -> String {
    let aliases: Vec<String> = PLATFORM_ALIASES.iter().map(|(a, p)| format!("{a} means {p}")).collect();
    format!("{} ({})", PLATFORMS.join(", "), aliases.join(", "))
}

/// Why `name` cannot name an app, library or target (it becomes a file name,
/// a make variable and a kconfig symbol).
pub fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!("is longer than {MAX_NAME} characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Some(format!("holds {}", describe_char(c)));
    }
    if name.contains("..") || name == "." {
        return Some("holds `..` or is `.`".into());
    }
    if name.starts_with('-') {
        return Some("starts with `-`".into());
    }
    None
}

/// Why `key` is not a Kconfig symbol. Keys without the `CONFIG_` prefix are
/// only warned about (kraftkit passes them on), but every character must be
/// one Kconfig allows, since the key is written into `.config`, which make
/// reads.
pub fn kconfig_key_problem(key: &str) -> Option<String> {
    if key.is_empty() || key == "CONFIG_" {
        return Some("is empty".into());
    }
    key.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_')).map(describe_char).map(|c| format!("holds {c}"))
}

/// Why `value` cannot go into `.config`: make includes that file, so a line
/// break would add a line and `$` would expand (`$(shell …)`).
pub fn kconfig_value_problem(value: &str) -> Option<String> {
    value.chars().find(|c| c.is_control() || *c == '$' || *c == '`').map(describe_char).map(|c| format!("holds {c}"))
}

/// Why `version` (a branch, tag or commit) cannot be passed to git.
pub fn version_problem(version: &str) -> Option<String> {
    if version.starts_with('-') {
        return Some("starts with `-`, which git would read as an option".into());
    }
    if let Some(c) = version.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Some(format!("holds {}", describe_char(c)));
    }
    if version.contains("..") {
        return Some("holds `..`, which no git ref may".into());
    }
    None
}

/// Why `url` cannot be passed to git.
pub fn url_problem(url: &str) -> Option<String> {
    if url.starts_with('-') {
        return Some("starts with `-`, which git would read as an option".into());
    }
    url.chars().find(|c| c.is_control() || c.is_whitespace()).map(|c| format!("holds {}", describe_char(c)))
}

/// What a local source directory lacks to be a Unikraft core (`Makefile` and
/// `Config.uk`) or a library (`Makefile.uk`).
pub fn local_tree_problem(dir: &Utf8Path, core: bool) -> Option<String> {
    let needed: &[&str] = if core { &["Makefile", "Config.uk"] } else { &["Makefile.uk"] };
    let missing: Vec<&str> = needed.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "`{dir}` is not a Unikraft {} tree: it has no {}",
            if core { "core" } else { "library" },
            missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(" or ")
        ))
    }
}

/// Why a free-text value (a label, an environment variable, a `cmd` word)
/// is refused: NUL cannot be passed to any program.
pub fn text_problem(value: &str) -> Option<String> {
    value.contains('\0').then(|| "holds a NUL character".to_string())
}

fn describe_char(c: char) -> String {
    match c {
        '\0' => "a NUL character".into(),
        '\n' => "a line break".into(),
        '\r' => "a carriage return".into(),
        '\t' => "a tab".into(),
        ' ' => "a space".into(),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("`{c}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert!(spec_support("0.6").is_ok());
        assert!(spec_support("0.7").is_ok());
        assert_eq!(spec_support("0.8"), Err("is newer than this tool supports"));
        assert_eq!(spec_support("1"), Err("is newer than this tool supports"));
        assert_eq!(spec_support("0.4"), Err("is older than any this tool supports"));
    }

    #[test]
    fn names_and_values() {
        assert!(name_problem("lib-posix_time.2").is_none());
        assert!(name_problem("a/b").is_some());
        assert!(name_problem("a..b").is_some());
        assert!(name_problem("$(shell id)").is_some());
        assert!(kconfig_key_problem("CONFIG_X_1").is_none());
        assert!(kconfig_key_problem("CONFIG_$(X)").is_some());
        assert!(kconfig_value_problem("\"a b\"").is_none());
        assert!(kconfig_value_problem("y\nCONFIG_Y=y").is_some());
        assert!(kconfig_value_problem("$(shell id)").is_some());
        assert!(version_problem("--upload-pack=x").is_some());
        assert!(version_problem("RELEASE-0.16.3").is_none());
        assert_eq!(platform("kvm"), Some("qemu"));
        assert_eq!(platform("firecracker"), Some("fc"));
        assert_eq!(platform("bhyve"), None);
    }
}
