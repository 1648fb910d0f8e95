//! `doctor`: are the host programs a build (and a run) of these targets
//! needs installed? For each missing one, the install command on Debian/
//! Ubuntu, Fedora, Arch, Alpine and openSUSE, and the Nix alternative.
//! `build` runs the same check before planning, so a missing cross compiler
//! is named with its package instead of surfacing as make's exit status 127.
//!
//! The package names are data, in [`table`].

pub mod table;

use std::ffi::OsStr;

use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;
use crate::plan::Target;
use table::{HostProgram, DISTRIBUTIONS};

/// What the programs are needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Planning and building images.
    Build,
    /// Building, then booting (`run`, and `doctor`).
    BuildAndRun,
}

/// The programs building (and, for [`Purpose::BuildAndRun`], booting) these
/// targets needs, in the table's order.
pub fn required(targets: &[Target], purpose: Purpose) -> Vec<&'static HostProgram> {
    let mut names: Vec<String> = vec!["make".into(), "gcc".into(), "flex".into(), "bison".into(), "git".into(), "python3".into()];
    if crate::config::Config::get().sandbox.as_deref() != Some("none") {
        names.push("bwrap".into());
    }
    for target in targets {
        names.push(target.compiler());
        if purpose == Purpose::BuildAndRun && target.plat == "qemu" {
            match target.arch.as_str() {
                "x86_64" => names.push("qemu-system-x86_64".into()),
                "arm64" => names.push("qemu-system-aarch64".into()),
                _ => {}
            }
        }
    }
    table::PROGRAMS.iter().filter(|p| names.iter().any(|n| n == p.program)).collect()
}

/// One program, looked up.
#[derive(Debug, Clone)]
pub struct Found {
    pub program: &'static HostProgram,
    pub path: Option<Utf8PathBuf>,
}

/// Look each program up in the directories build commands search:
/// `KRAFT_SANDBOX_PATH` if set, else `PATH`.
pub fn check(programs: &[&'static HostProgram]) -> Vec<Found> {
    let config = crate::config::Config::get();
    let search = config.sandbox_path.clone().map(Into::into).or_else(|| config.path.clone()).unwrap_or_default();
    programs.iter().map(|program| Found { program, path: find_in_path(program.program, &search) }).collect()
}

/// The first executable `name` in a `PATH`-style list of directories.
pub fn find_in_path(name: &str, search: &OsStr) -> Option<Utf8PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(search)
        .filter_map(|dir| Utf8PathBuf::from_path_buf(dir).ok())
        .map(|dir| dir.join(name))
        .find(|path| std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// How to install `missing` everywhere we know, one line per distribution,
/// then Nix.
pub fn install_help(missing: &[&HostProgram]) -> String {
    let mut out = String::from("install them with your distribution's package manager:");
    for (i, (distribution, command)) in DISTRIBUTIONS.iter().enumerate() {
        let packages: Vec<&str> = missing.iter().filter_map(|p| p.packages[i]).collect();
        let unpackaged: Vec<&str> = missing.iter().filter(|p| p.packages[i].is_none()).map(|p| p.program).collect();
        out.push_str(&format!("\n    {distribution:<14} "));
        if !packages.is_empty() {
            out.push_str(&format!("{command} {}", packages.join(" ")));
        }
        if !unpackaged.is_empty() {
            out.push_str(&format!("{}({} not packaged: use Nix)", if packages.is_empty() { "" } else { "  " }, unpackaged.join(", ")));
        }
    }
    out.push_str("\n    or, with Nix:  `nix develop` in this repository (gcc, make, flex, bison, python3, git, QEMU, bubblewrap)");
    out
}

/// `Err` naming every missing program, what it is for, and how to install
/// it; what `build` reports before planning.
pub fn require(what: &str, programs: &[&'static HostProgram]) -> anyhow::Result<()> {
    let missing: Vec<&HostProgram> = check(programs).into_iter().filter(|f| f.path.is_none()).map(|f| f.program).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|p| format!("`{}` ({})", p.program, p.purpose)).collect();
    Err(Diagnostic::new(format!("{what} needs host programs that are not installed: {}", names.join(", ")))
        .help(format!("{}\n    `cargo xtask doctor` checks again", install_help(&missing)))
        .into())
}

/// What `build` checks before planning: the programs building `targets`
/// of `app` needs.
pub fn require_for_build(app: &str, targets: &[&crate::source::kraftfile::Target]) -> anyhow::Result<()> {
    let targets: Vec<Target> = targets.iter().map(|t| Target::new(&t.platform, &t.architecture)).collect();
    let ids: Vec<String> = targets.iter().map(|t| format!("{}/{}", t.plat, t.arch)).collect();
    require(&format!("building `{app}` for {}", ids.join(", ")), &required(&targets, Purpose::Build))
}

/// The report `cargo xtask doctor` prints: one line per program.
pub fn report(found: &[Found]) -> String {
    let mut out = String::new();
    for f in found {
        match &f.path {
            Some(path) => out.push_str(&format!("  ok       {:<24} {}\n", f.program.program, path)),
            None => out.push_str(&format!("  MISSING  {:<24} {}\n", f.program.program, f.program.purpose)),
        }
    }
    out
}

/// Convenience for a single directory list given as a path (tests).
pub fn find_in(name: &str, dirs: &[&Utf8Path]) -> Option<Utf8PathBuf> {
    let joined = std::env::join_paths(dirs.iter().map(|d| d.as_std_path())).ok()?;
    find_in_path(name, &joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_has_a_package_on_debian_and_a_purpose() {
        for p in table::PROGRAMS {
            assert!(p.packages[0].is_some(), "{} has no Debian package", p.program);
            assert!(!p.purpose.is_empty());
        }
        assert_eq!(table::program("aarch64-linux-gnu-gcc").unwrap().packages[0], Some("gcc-aarch64-linux-gnu"));
        assert_eq!(table::program("qemu-system-aarch64").unwrap().packages[0], Some("qemu-system-arm"));
        assert_eq!(table::program("bwrap").unwrap().packages[2], Some("bubblewrap"));
    }

    #[test]
    fn cross_targets_need_their_compiler() {
        let names = |targets: &[Target], purpose| required(targets, purpose).iter().map(|p| p.program).collect::<Vec<_>>();
        let arm = [Target::new("qemu", "arm64")];
        if std::env::consts::ARCH == "x86_64" {
            assert!(names(&arm, Purpose::Build).contains(&"aarch64-linux-gnu-gcc"));
        }
        assert!(!names(&arm, Purpose::Build).contains(&"qemu-system-aarch64"));
        assert!(names(&arm, Purpose::BuildAndRun).contains(&"qemu-system-aarch64"));
        for base in ["make", "gcc", "flex", "bison", "git", "python3"] {
            assert!(names(&[], Purpose::Build).contains(&base), "{base}");
        }
    }

    #[test]
    fn help_names_every_distribution_and_nix() {
        let help = install_help(&[table::program("flex").unwrap(), table::program("aarch64-linux-gnu-gcc").unwrap()]);
        for (distribution, command) in DISTRIBUTIONS {
            assert!(help.contains(distribution) && help.contains(command), "{help}");
        }
        assert!(help.contains("sudo apt-get install -y flex gcc-aarch64-linux-gnu"), "{help}");
        assert!(help.contains("aarch64-linux-gnu-gcc not packaged"), "{help}");
        assert!(help.contains("nix develop"));
    }
}
