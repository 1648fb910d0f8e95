//! The Kraftfile: a Unikraft app description, read the way kraftkit reads it.
//!
//! kraftkit (`unikraft/app/loader.go` and the `TransformFromSchema` functions
//! of `unikraft/{core,lib,target,plat,arch,runtime}`, `unikraft/component`,
//! `kconfig/config.go`, `schema/schema.go`) is the authority for what a
//! Kraftfile means. This module follows it with three rules of its own:
//!
//! * where kraftkit fails (an error, or a panic on a wrong type), loading fails
//!   with a located [`Diagnostic`] saying what is wrong and how to fix it;
//! * where kraftkit silently ignores something, a warning is pushed onto
//!   [`Kraftfile::warnings`];
//! * scalars keep the text they are written with: `version: 0.10` is the
//!   version `"0.10"` (kraftkit's YAML decoder would read the float `0.1`).
//!
//! YAML is read with `yaml-rust2`'s event API into a small tree that keeps each
//! scalar's raw text, whether it was quoted, and its position. Plain scalars
//! are then typed with YAML 1.1 rules, as kraftkit's `gopkg.in/yaml.v2` does
//! (so `y`, `yes`, `on` are booleans and become `y` in a kconfig map).
//!
//! One concept per file: `yaml` (events to a bounded, positioned tree),
//! `scalar` (YAML 1.1 typing), `words` (`cmd` splitting), `sources` (URL,
//! scp address, directory or version), `paths` (lexical normalisation),
//! `schema`, `components`, `targets` (the forms) and `validate` (what a
//! value must look like before it reaches make, git or a path). A hostile
//! Kraftfile is refused here, with its location, before anything runs.
//! `v07` turns spec v0.7's new forms into their v0.6 twins first.


use std::collections::{BTreeMap, HashMap};

use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::{Diagnostic, Location};

mod components;
mod paths;
mod scalar;
mod schema;
mod sources;
mod targets;
mod v07;
mod validate;
mod words;
mod yaml;

pub use validate::{ARCHITECTURES, KNOWN_SPECS, PLATFORMS, PLATFORM_ALIASES};
pub use words::split_words;

/// Names looked for in an app directory, in kraftkit's order of preference.
pub const FILE_NAMES: [&str; 5] = ["kraft.yaml", "kraft.yml", "Kraftfile.yml", "Kraftfile.yaml", "Kraftfile"];

/// The newest Kraftfile specification kraftkit knows.
pub const SPEC_LATEST: &str = "v0.6";


/// Find the Kraftfile in `dir` (first of [`FILE_NAMES`] that exists as a file).
///
/// kraftkit itself refuses a directory holding more than one of these names;
/// this function takes the first, as documented in `FILE_NAMES`.
pub fn find(dir: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
    if !dir.is_dir() {
        return Err(Diagnostic::new(format!("app directory `{dir}` does not exist"))
            .help("pass the directory that holds the app's Kraftfile")
            .into());
    }
    for name in FILE_NAMES {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(Diagnostic::new(format!("no Kraftfile in `{dir}`"))
        .help(format!(
            "create `{dir}/Kraftfile` starting with `spec: v0.6` (accepted names: {})",
            FILE_NAMES.join(", ")
        ))
        .into())
}

/// Read and normalize one Kraftfile. A directory is searched with [`find`].
pub fn load(path: &Utf8Path) -> anyhow::Result<Kraftfile> {
    let path = if path.is_dir() { find(path)? } else { path.to_owned() };
    // Refuse a huge file before reading it (`yaml::parse` checks text too).
    if let Ok(meta) = std::fs::metadata(&path) {
        if meta.len() > yaml::MAX_TEXT_BYTES as u64 {
            return Err(Diagnostic::at(
                Location::new(&path, 1, 1),
                format!("the Kraftfile is {} bytes, more than the {} this tool reads", meta.len(), yaml::MAX_TEXT_BYTES),
            )
            .help("a Kraftfile describes an app in a few lines; move data into files beside it")
            .into());
        }
    }
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Diagnostic::new(format!("cannot read Kraftfile `{path}`: {e}"))
            .help("check that the file exists, is readable and is UTF-8 text")
    })?;
    parse(&path, &text)
}

/// Parse text (path used for locations and resolving relative local sources).
pub fn parse(path: &Utf8Path, text: &str) -> anyhow::Result<Kraftfile> {
    let mut root = yaml::parse(path, text)?;
    // v0.7's new forms become their v0.6 equivalents before anything reads them.
    let v07_notes = v07::normalize(&mut root);
    let dir = paths::absolute_dir(path);
    let mut cx = schema::Cx { path, dir, warnings: Vec::new() };
    let mut kf = cx.kraftfile(&root)?;
    kf.warnings = cx.warnings;
    kf.warnings.extend(v07_notes.into_iter().map(|n| Diagnostic::at(Location::new(path, n.line, n.column), n.message).help(n.help)));
    Ok(kf)
}

/// A normalized Kraftfile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Kraftfile {
    /// The file, as passed to [`load`] or [`parse`].
    pub path: Utf8PathBuf,
    /// `spec` (or `specification`) exactly as written: `"v0.6"`, `"0.5"`.
    pub spec: Option<String>,
    pub name: Option<String>,
    /// `cmd`; a string is split into words as kraftkit's `shellwords.Parse` does.
    pub cmd: Vec<String>,
    /// The `unikraft` core (name `"unikraft"`).
    pub unikraft: Option<Component>,
    /// `runtime`: a string as written; the map form gives `source[:version]`.
    pub runtime: Option<String>,
    pub rootfs: Option<String>,
    pub outdir: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub targets: Vec<Target>,
    /// `libraries`, in file order.
    pub libraries: Vec<Component>,
    pub warnings: Vec<Diagnostic>,
}

/// The Unikraft core or a library.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    pub name: String,
    pub source: Option<Source>,
    /// Exactly as written; also taken from a source URL's `?branch=`, `?tag=`
    /// or `?version=`.
    pub version: Option<String>,
    /// `("CONFIG_X", "y")`, in file order, keys as written.
    pub kconfig: Vec<(String, String)>,
    /// Where it is declared (the key naming it).
    pub location: Location,
}

/// Where a component's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Source {
    /// A git URL (query string removed).
    Git { url: String },
    /// A local directory; `path` is absolute (joined to the Kraftfile's dir and
    /// normalized lexically), `written` as in the file.
    Local { path: Utf8PathBuf, written: String },
}

/// One build target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    /// Normalized as kraftkit does: `kvm` → `qemu`, `firecracker` → `fc`.
    pub platform: String,
    pub architecture: String,
    pub name: Option<String>,
    pub kconfig: Vec<(String, String)>,
    pub location: Location,
}

impl Target {
    /// `"qemu/x86_64"`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.platform, self.architecture)
    }

    /// `"qemu-x86_64"`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.platform, self.architecture)
    }

    /// The options kraftkit sets for this target's architecture and platform
    /// (`ArchitectureConfig.KConfig`, `PlatformConfig.KConfig`, and the
    /// kraftcloud exception of `application.Configure`).
    pub fn implied_kconfig(&self) -> Vec<(String, String)> {
        let y = |k: &str| (k.to_string(), "y".to_string());
        let n = |k: &str| (k.to_string(), "n".to_string());
        let mut out = Vec::new();
        match self.architecture.as_str() {
            "x86_64" => out.push(y("CONFIG_ARCH_X86_64")),
            "arm" => out.push(y("CONFIG_ARCH_ARM_32")),
            "arm64" => out.push(y("CONFIG_ARCH_ARM_64")),
            _ => {}
        }
        match self.platform.as_str() {
            "fc" | "firecracker" | "kraftcloud" => {
                out.push(y("CONFIG_PLAT_KVM"));
                out.push(y("CONFIG_KVM_VMM_FIRECRACKER"));
            }
            "kvm" | "qemu" => {
                out.push(y("CONFIG_PLAT_KVM"));
                out.push(y("CONFIG_KVM_VMM_QEMU"));
            }
            "xen" => out.push(y("CONFIG_PLAT_XEN")),
            "linuxu" => out.push(y("CONFIG_PLAT_LINUXU")),
            _ => {}
        }
        if self.platform == "kraftcloud" {
            out.push(n("CONFIG_KVM_DEBUG_VGA_CONSOLE"));
            out.push(n("CONFIG_KVM_KERNEL_VGA_CONSOLE"));
        }
        out
    }
}

/// The option kraftkit sets to enable a library (`LibraryConfig.KConfig`):
/// `CONFIG_LIB<NAME>`, or `CONFIG_<NAME>` when the name starts with `lib`.
pub fn library_kconfig_symbol(name: &str) -> String {
    let upper = name.to_uppercase();
    if upper.starts_with("LIB") {
        format!("CONFIG_{upper}")
    } else {
        format!("CONFIG_LIB{upper}")
    }
}

impl Kraftfile {
    /// The directory holding the Kraftfile.
    pub fn dir(&self) -> &Utf8Path {
        match self.path.parent() {
            Some(p) if !p.as_str().is_empty() => p,
            _ => Utf8Path::new("."),
        }
    }

    /// All kconfig in effect for a target, merged as kraftkit's
    /// `application.Configure` does (later wins; a key keeps the position of
    /// its first setting):
    ///
    /// 1. the core's `kconfig`;
    /// 2. for each library in file order: its `kconfig`, then
    ///    [`library_kconfig_symbol`]`=y`;
    /// 3. the target's `kconfig`;
    /// 4. [`Target::implied_kconfig`] (kraftkit lets these override the target's).
    ///
    /// kraftkit iterates libraries in Go map order (random); file order is used
    /// here.
    pub fn kconfig_for(&self, target: &Target) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut set = |k: &str, v: &str| match index.get(k) {
            Some(&i) => out[i].1 = v.to_string(),
            None => {
                index.insert(k.to_string(), out.len());
                out.push((k.to_string(), v.to_string()));
            }
        };
        if let Some(core) = &self.unikraft {
            for (k, v) in &core.kconfig {
                set(k, v);
            }
        }
        for lib in &self.libraries {
            for (k, v) in &lib.kconfig {
                set(k, v);
            }
            set(&library_kconfig_symbol(&lib.name), "y");
        }
        for (k, v) in &target.kconfig {
            set(k, v);
        }
        for (k, v) in target.implied_kconfig() {
            set(&k, &v);
        }
        out
    }

    /// The library called `name`, if declared.
    pub fn library(&self, name: &str) -> Option<&Component> {
        self.libraries.iter().find(|l| l.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> anyhow::Result<Kraftfile> {
        parse(Utf8Path::new("/app/Kraftfile"), text)
    }

    fn err(text: &str) -> String {
        p(text).unwrap_err().to_string()
    }

    #[test]
    fn versions_keep_their_text() {
        let kf = p("spec: v0.6\nunikraft:\n  version: 0.10\nlibraries:\n  musl: \"0.10\"\n  lwip: 0.17\n").unwrap();
        assert_eq!(kf.unikraft.unwrap().version.as_deref(), Some("0.10"));
        assert_eq!(kf.libraries[0].version.as_deref(), Some("0.10"));
        assert_eq!(kf.libraries[1].version.as_deref(), Some("0.17"));
        // `0.10` warns (kraftkit reads 0.1); `lwip: 0.17` warns (kraftkit rejects numbers).
        assert_eq!(kf.warnings.len(), 2, "{:?}", kf.warnings);
    }

    #[test]
    fn empty_values_point_at_their_key() {
        let e = err("spec: v0.6\nunikraft:\n  kconfig:\n    CONFIG_X:\n\n");
        assert!(e.starts_with("/app/Kraftfile:4:5: kconfig option `CONFIG_X` has no value"), "{e}");
    }

    #[test]
    fn located_errors() {
        let e = err("spec: v0.6\ntargets:\n  - qemu\n");
        assert!(e.starts_with("/app/Kraftfile:3:5: invalid target `qemu`"), "{e}");
        assert!(e.contains("help: "), "{e}");
        let e = err("spec: v0.6\nname: a\nname: b\n");
        assert!(e.starts_with("/app/Kraftfile:3:1: duplicate key `name` (first set on line 2)"), "{e}");
        let e = err("spec: v0.6\nname: [a\n");
        assert!(e.starts_with("/app/Kraftfile:"), "{e}");
        assert!(e.contains("invalid YAML"), "{e}");
        let e = err("name: a\n");
        assert!(e.starts_with("/app/Kraftfile:1:1: missing `spec`"), "{e}");
    }

    #[test]
    fn platforms_are_normalized() {
        let kf = p("spec: v0.6\ntargets:\n  - kvm/x86_64\n  - plat: firecracker/arm64\n  - {platform: xen, arch: arm}\n").unwrap();
        let ids: Vec<_> = kf.targets.iter().map(Target::id).collect();
        assert_eq!(ids, ["qemu/x86_64", "fc/arm64", "xen/arm"]);
        assert_eq!(kf.targets[0].dir_name(), "qemu-x86_64");
    }

    #[test]
    fn kconfig_merge_order() {
        let kf = p("spec: v0.6\nunikraft:\n  kconfig:\n    CONFIG_A: y\n    CONFIG_B: 1\nlibraries:\n  lwip:\n    kconfig: [CONFIG_B=2, CONFIG_LIBLWIP=n]\n  libposix-time: stable\ntargets:\n  - plat: qemu\n    arch: x86_64\n    kconfig:\n      CONFIG_A: n\n      CONFIG_KVM_VMM_QEMU: n\n").unwrap();
        let all = kf.kconfig_for(&kf.targets[0]);
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            all,
            [
                ("CONFIG_A", "n"),
                ("CONFIG_B", "2"),
                ("CONFIG_LIBLWIP", "y"),
                ("CONFIG_LIBPOSIX-TIME", "y"),
                ("CONFIG_KVM_VMM_QEMU", "y"),
                ("CONFIG_ARCH_X86_64", "y"),
                ("CONFIG_PLAT_KVM", "y"),
            ]
        );
    }
}
