//! The toolchain's identity: which programs the commands' `PATH` finds for
//! each name, through which links, and what those programs are.
//!
//! Two views of one resolution:
//!
//! * [`resolve`] walks `PATH` on the host with `lstat`/`readlink` only (no
//!   process spawned): for every name, the directories tried before the
//!   hit, each symlink hop, and the program at the end. Its text without
//!   stamps is part of the action key's toolchain id; with stamps (size,
//!   mtime, inode) it is part of the plan key and decides whether the
//!   remembered probe may be reused. The sandbox mounts `/usr`, `/bin`,
//!   `/lib*` and `/nix/store` at their host paths, so the host sees what
//!   the commands see.
//! * the probe ([`Toolchain::probe_script`]) runs in the sandbox and asks
//!   the compiler driver for the programs it runs (`cc1`, `as`, `ld`,
//!   `collect2`, libgcc) and for its version text; every program's bytes are
//!   hashed through the stat cache.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;

use camino::{Utf8Path, Utf8PathBuf};

use crate::exec::fingerprint::{put, Hash, KEY_VERSION};

/// Which toolchain to identify. `cross_compile` is Unikraft's `CROSS_COMPILE`
/// prefix (`aarch64-linux-gnu-`, or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolchainSpec {
    pub cross_compile: String,
    /// The compiler driver (without prefix): `gcc`.
    pub cc: String,
    /// Programs the driver runs, resolved with `-print-prog-name=`.
    pub driver_programs: Vec<String>,
    /// Other tools Unikraft's rules call directly (with prefix).
    pub tools: Vec<String>,
    /// The commands' `PATH` (`KRAFT_SANDBOX_PATH` or `/usr/bin:/bin`); set
    /// by the executor from the runner's environment.
    pub path: String,
}

impl Default for ToolchainSpec {
    fn default() -> Self {
        ToolchainSpec {
            cross_compile: String::new(),
            cc: "gcc".into(),
            driver_programs: ["cc1", "cc1plus", "collect2", "lto-wrapper", "as", "ld"].map(String::from).to_vec(),
            tools: ["ld", "as", "objcopy", "ar", "nm", "strip", "gcc-ar", "gcc-nm", "readelf", "objdump"].map(String::from).to_vec(),
            path: "/usr/bin:/bin".into(),
        }
    }
}

impl ToolchainSpec {
    /// Every name the commands look up in `PATH`: the driver and the tools,
    /// with the cross prefix.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![format!("{}{}", self.cross_compile, self.cc)];
        names.extend(self.tools.iter().map(|t| format!("{}{t}", self.cross_compile)));
        names
    }
}

/// `size mtime_ns inode` of a file (following links), or `absent`.
fn stamp_of(path: &Utf8Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!("{} {} {}", m.size(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino()),
        Err(_) => "absent".into(),
    }
}

/// How `PATH` resolves `names`, one line per fact: the `PATH` itself, each
/// directory tried and missed, each link hop (`link <from> -> <to>`), and the
/// program found (or `missing`). With `stamps`, the program's size, mtime
/// and inode follow it. Pure stat/readlink: cheap enough for every no-op.
pub fn resolve(names: &[String], path: &str, stamps: bool) -> String {
    resolve_as(names, path, if stamps { ProgramId::Stamp } else { ProgramId::Path })
}

/// How [`resolve_as`] names the program it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramId {
    /// Its path only.
    Path,
    /// Its path, size, mtime and inode: this machine only, a stat each.
    Stamp,
    /// Its path and the blake3 of its bytes: the same on every machine that
    /// installed the same program (what a key shared by a team needs).
    Content,
}

/// [`resolve`], naming each program found as `id` says.
pub fn resolve_as(names: &[String], path: &str, id: ProgramId) -> String {
    let mut out = format!("PATH={path}\n");
    for name in names {
        let mut found = None;
        for dir in path.split(':').filter(|d| !d.is_empty()) {
            let candidate = Utf8Path::new(dir).join(name);
            match std::fs::metadata(&candidate) {
                Ok(m) if m.is_file() => {
                    found = Some(candidate);
                    break;
                }
                _ => writeln!(out, "{name}: not in {dir}").unwrap(),
            }
        }
        let Some(mut program) = found else {
            writeln!(out, "{name}: missing").unwrap();
            continue;
        };
        // Every hop: a wrapper or an `update-alternatives` switch changes
        // the chain even when the final program is the same file.
        for _ in 0..40 {
            let Ok(target) = std::fs::read_link(&program) else { break };
            let Ok(target) = Utf8PathBuf::from_path_buf(target) else { break };
            writeln!(out, "{name}: link {program} -> {target}").unwrap();
            program = match program.parent() {
                Some(dir) if target.is_relative() => dir.join(&target),
                _ => target,
            };
        }
        match id {
            ProgramId::Path => writeln!(out, "{name}: {program}").unwrap(),
            ProgramId::Stamp => writeln!(out, "{name}: {program} {}", stamp_of(&program)).unwrap(),
            ProgramId::Content => {
                let hash = crate::util::hash::blake3_file(program.as_std_path()).map(|(h, _)| h.to_hex().to_string());
                writeln!(out, "{name}: {program} {}", hash.as_deref().unwrap_or("unreadable")).unwrap()
            }
        }
    }
    out
}

/// The identity of the toolchain for one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toolchain {
    /// Component name (`gcc`, `cc1`, `version`, `resolution`, ...) → hash.
    pub components: BTreeMap<String, Hash>,
    pub id: Hash,
}

impl Toolchain {
    pub fn from_components(components: BTreeMap<String, Hash>) -> Toolchain {
        let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
        put(&mut h, b"toolchain");
        for (k, v) in &components {
            put(&mut h, k.as_bytes());
            h.update(v.as_bytes());
        }
        Toolchain { components, id: h.finalize() }
    }

    /// The bash script that reports the toolchain, run in the sandbox.
    /// Output: `prog<TAB>name<TAB>path` lines (programs to hash),
    /// `via<TAB>...` lines (how each name resolved: path, link hops) and
    /// `text<TAB>...` lines (version text).
    pub fn probe_script(spec: &ToolchainSpec) -> String {
        let cc = format!("{}{}", spec.cross_compile, spec.cc);
        let q = |s: &str| crate::util::shell::quote(s);
        // The PATH and prefix are part of the script, so a remembered probe
        // output is never reused under another PATH.
        let mut s = format!("# PATH={}\n# CROSS_COMPILE={}\nexport LC_ALL=C\n", spec.path, spec.cross_compile);
        s.push_str(concat!(
            "r() { p=$(command -v \"$2\" 2>/dev/null) || return 0; printf 'via\\t%s\\t%s\\n' \"$1\" \"$p\"; ",
            "n=0; while [ -L \"$p\" ] && [ $n -lt 40 ]; do t=$(readlink \"$p\"); printf 'via\\t%s\\t%s -> %s\\n' \"$1\" \"$p\" \"$t\"; ",
            "case $t in /*) p=$t;; *) p=$(dirname \"$p\")/$t;; esac; n=$((n+1)); done; ",
            "p=$(readlink -f \"$p\") && printf 'prog\\t%s\\t%s\\n' \"$1\" \"$p\"; true; }\n"
        ));
        s.push_str(&format!("r {} {}\n", q(&spec.cc), q(&cc)));
        for p in &spec.driver_programs {
            // Prints an absolute path, or the bare name when it is not found
            // next to the driver (then PATH decides, as it does for gcc).
            s.push_str(&format!("r {} \"$({} -print-prog-name={} 2>/dev/null)\"\n", q(&format!("{}:{p}", spec.cc)), q(&cc), q(p)));
        }
        s.push_str(&format!("x=$({} -print-libgcc-file-name 2>/dev/null); [ -f \"$x\" ] && printf 'prog\\tlibgcc\\t%s\\n' \"$(readlink -f \"$x\")\"\n", q(&cc)));
        for t in &spec.tools {
            s.push_str(&format!("r {} {}\n", q(t), q(&format!("{}{t}", spec.cross_compile))));
        }
        s.push_str(&format!(
            "{{ {cc} -dumpfullversion; {cc} -dumpmachine; {cc} -v; }} 2>&1 | sed 's/^/text\\t/'\ntrue\n",
            cc = q(&cc)
        ));
        s
    }

    /// Build the identity from the probe script's output. `hash` gives a
    /// program's content hash by absolute path (the stat cache), `None` when
    /// it is not visible on the host.
    pub fn from_probe(spec: &ToolchainSpec, output: &str, hash: &dyn Fn(&Utf8Path) -> Option<Hash>) -> Toolchain {
        let mut components = BTreeMap::new();
        let mut text = blake3::Hasher::new();
        let mut via = blake3::Hasher::new();
        put(&mut via, format!("PATH={}\nCROSS_COMPILE={}", spec.path, spec.cross_compile).as_bytes());
        for line in output.lines() {
            let mut parts = line.splitn(3, '\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("prog"), Some(name), Some(path)) => {
                    let path = Utf8Path::new(path);
                    let hash = hash(path).unwrap_or_else(|| blake3::hash(format!("unhashable:{path}").as_bytes()));
                    components.insert(name.to_owned(), hash);
                }
                (Some("via"), Some(name), Some(step)) => put(&mut via, format!("{name}\t{step}").as_bytes()),
                (Some("text"), rest, more) => {
                    text.update(rest.unwrap_or("").as_bytes());
                    text.update(more.unwrap_or("").as_bytes());
                    text.update(b"\n");
                }
                _ => {}
            }
        }
        components.insert("version".into(), text.finalize());
        components.insert("resolution".into(), via.finalize());
        Toolchain::from_components(components)
    }
}

/// The toolchain probe spawns a sandbox and a dozen processes (~100 ms); a
/// no-op build must not pay that, nor a fresh output dir over a warm store
/// (a third of musl's warm-fresh build: 0.38–0.44 s before, 0.25–0.27 s
/// after, by hand). Its output is kept beside the state, and in the store
/// under the script's blake3 (the scheduler's `probe_toolchain`), with
/// the stamp of every program it named and the stat-only [`resolve`] of the
/// spec's names (directories tried, link hops, stamps), and reused while
/// the probe script (which names the PATH and prefix) is the same and none
/// of that moved. The programs' contents are still hashed into the key
/// (through the stat cache), so a reused probe can never hide a changed
/// compiler.
pub(crate) mod probe_memo {
    use camino::Utf8Path;

    use super::{resolve, stamp_of, ToolchainSpec};

    fn stamps(spec: &ToolchainSpec, text: &str) -> Vec<String> {
        let mut out: Vec<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix("prog\t"))
            .filter_map(|rest| rest.split_once('\t').map(|(_, path)| path))
            .map(|path| format!("{path} {}", stamp_of(Utf8Path::new(path))))
            .collect();
        out.push(resolve(&spec.names(), &spec.path, true));
        out
    }

    pub fn load(memo: &Utf8Path, spec: &ToolchainSpec, script: &str) -> Option<String> {
        let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(memo).ok()?).ok()?;
        if saved["script"].as_str()? != script {
            return None;
        }
        let text = saved["output"].as_str()?.to_string();
        let now = stamps(spec, &text);
        let then: Vec<String> = saved["stamps"].as_array()?.iter().filter_map(|s| s.as_str().map(String::from)).collect();
        (now == then).then_some(text)
    }

    pub fn save(memo: &Utf8Path, spec: &ToolchainSpec, script: &str, text: &str) {
        let value = serde_json::json!({"script": script, "output": text, "stamps": stamps(spec, text)});
        let _ = crate::util::fs::write_atomic(memo, value.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_names_every_hop_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let root = Utf8Path::from_path(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::fs::write(root.join("b/real-cc"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("real-cc", root.join("b/cc")).unwrap();
        let path = format!("{root}/a:{root}/b");
        let before = resolve(&["cc".into()], &path, false);
        assert!(before.contains(&format!("cc: not in {root}/a")), "{before}");
        assert!(before.contains(&format!("link {root}/b/cc -> real-cc")), "{before}");
        std::fs::write(root.join("a/cc"), "#!/bin/sh\n").unwrap();
        assert_ne!(resolve(&["cc".into()], &path, false), before, "a wrapper earlier in PATH");
    }
}
