//! Parsing `make -n all`: printed lines become raw commands (the text of
//! the `.cmd` file a line runs, or the line itself), noise dropped.

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::exec::sandbox::Sandbox;
use crate::plan::command::{analyze, normalize, Raw};
use crate::plan::edges::build_graph;
use crate::plan::graph::Graph;
use crate::plan::mounts::inside_build;
use crate::plan::units::UnitRule;


/// Turns `make -n all` output (already in inside paths) into a graph.
/// `sandbox` maps inside paths to host paths to read `.cmd` files and test
/// which input files exist.
pub fn parse_make_n(printed: &str, sandbox: &Sandbox, rules: &[UnitRule]) -> Result<Graph> {
    let build = inside_build();
    let mut raws = Vec::new();
    for line in logical_lines(printed) {
        let Some(cmd) = strip_noise(&line) else { continue };
        if let Some(cmd_file) = runs_cmd_file(&cmd) {
            let path = normalize(&build, &cmd_file);
            let host = sandbox.to_host(&path).with_context(|| format!("{path} is outside the sandbox mounts"))?;
            let text = std::fs::read_to_string(&host).with_context(|| format!("reading {host} (printed by make -n)"))?;
            let text = sandbox.rewrite_to_inside(text.trim_end_matches('\n'));
            let target = Utf8PathBuf::from(path.as_str().strip_suffix(".cmd").unwrap());
            raws.push(Raw { script: text, cmd_target: Some(target) });
        } else {
            raws.push(Raw { script: cmd, cmd_target: None });
        }
    }
    Ok(build_graph(fold_in_place(raws), sandbox, rules))
}

/// Folds a printed command that only *modifies* a file the command just
/// before it wrote (`ranlib lib/libc.a` after `ar rc lib/libc.a ...`,
/// `sed ... >> x.h` after `cp x.h.in x.h`) into that command's action: the
/// executor clears an action's outputs before running it, so the two must be
/// one action. Commands run from `.cmd` files are never folded.
pub(crate) fn fold_in_place(raws: Vec<Raw>) -> Vec<Raw> {
    let build = inside_build();
    let mut out: Vec<Raw> = Vec::new();
    let mut prev_outputs: Vec<Utf8PathBuf> = Vec::new();
    for raw in raws {
        let an = analyze(&raw.script, &build);
        let foldable = raw.cmd_target.is_none()
            && !an.modifies.is_empty()
            && an.modifies.iter().all(|m| prev_outputs.contains(m))
            && an.outputs.iter().all(|o| an.modifies.contains(o));
        match out.last_mut() {
            Some(prev) if foldable && prev.cmd_target.is_none() => {
                prev.script.push_str(" && ");
                prev.script.push_str(&raw.script);
            }
            _ => {
                prev_outputs = an.outputs.clone();
                out.push(raw);
            }
        }
    }
    out
}

/// Joins backslash-continued lines.
pub(crate) fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if let Some(stripped) = line.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
        } else {
            cur.push_str(line);
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Returns the command a printed line runs, or None for noise.
pub(crate) fn strip_noise(line: &str) -> Option<String> {
    let mut cmd = line.trim();
    // Unikraft's quiet label: `printf '  %-7s %s\n' 'CC' 'lib: x.o' && <cmd>`.
    if cmd.starts_with("printf '  %-7s %s\\n'") {
        cmd = cmd.split_once(" && ").map(|(_, rest)| rest.trim())?;
    }
    if cmd.is_empty() || cmd == ":" || cmd == "true" || cmd.starts_with('#') {
        return None;
    }
    let first = cmd.split_whitespace().next()?;
    let base = first.rsplit('/').next().unwrap_or(first);
    if first.starts_with("make:") || first.starts_with("make[") {
        return None; // make's own messages
    }
    match base {
        // Recursive make (it ran, also under -n), and housekeeping that the
        // executor does itself (output directories, depfile post-processing).
        "make" | "gmake" | "mkdir" | "rm" | "echo" | "fixdep" | "fixdep.sh" => None,
        _ => Some(cmd.to_string()),
    }
}

/// `/bin/bash x.cmd`, `bash x.cmd`, `sh 'x.cmd'` → `x.cmd` (split as a POSIX
/// shell would, through `util::shell`).
pub(crate) fn runs_cmd_file(cmd: &str) -> Option<String> {
    let words = crate::util::shell::split(cmd)?;
    let [shell, file] = words.as_slice() else { return None };
    let shell = shell.rsplit('/').next().unwrap_or(shell);
    (matches!(shell, "bash" | "sh" | "dash") && file.ends_with(".cmd")).then(|| file.clone())
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_and_cmd_files() {
        assert_eq!(strip_noise("printf '  %-7s %s\\n' 'CC' 'lib: a.o' &&  /bin/bash /kraft/build/a.o.cmd").as_deref(), Some("/bin/bash /kraft/build/a.o.cmd"));
        assert_eq!(strip_noise("/kraft/build/kconfig/fixdep a b 'c' > d && rm -f e"), None);
        assert_eq!(strip_noise("make: Entering directory '/kraft/unikraft'"), None);
        assert_eq!(strip_noise("make --no-print-directory -C /kraft/build all"), None);
        assert_eq!(strip_noise(":"), None);
        assert_eq!(runs_cmd_file("/bin/bash provided.in.cmd").as_deref(), Some("provided.in.cmd"));
        assert_eq!(normalize("/kraft/build".into(), "a/../b//c.o"), "/kraft/build/b/c.o");
    }
}
