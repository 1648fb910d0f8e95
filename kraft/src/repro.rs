//! `build --check-repro`: two clean builds of the same lock, into separate
//! stores and target directories, must give byte-identical images and `.dbg`
//! files. Nothing is shared between the two: no store (so no cached plan and
//! no cached action), no build dir, no remote cache. On a difference it names
//! the first differing file and ELF section.

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use crate::diag::Diagnostic;
use crate::util::fs::remove_tree;
use crate::util::hash::hex;
use crate::session::Session;

pub fn check(session: &Session, app: &str, target: Option<&str>) -> anyhow::Result<()> {
    let scratch = session.workspace.target_dir.join("kraft").join("repro");
    let mut runs: Vec<Vec<(String, Utf8PathBuf)>> = Vec::new();
    for run in ["a", "b"] {
        let dir = scratch.join(run);
        if dir.exists() {
            remove_tree(&dir)?;
        }
        let mut global = session.options.clone();
        global.store = Some(dir.join("store"));
        global.remote_cache = Some(String::new()); // off: nothing shared
        let mut workspace = session.workspace.clone();
        workspace.target_dir = dir.join("target");
        let variant = Session::new(workspace, &global)?;
        session.output.status("Repro", &format!("clean build {run} in {dir}"));
        let (_, builds) = crate::pipeline::target::build_app(&variant, app, target)?;
        let mut files = Vec::new();
        for build in builds {
            for file in [build.image, build.dbg].into_iter().flatten() {
                files.push((format!("{}/{}", build.target, file.file_name().unwrap_or("?")), file));
            }
        }
        runs.push(files);
    }
    let (a, b) = (&runs[0], &runs[1]);
    if a.is_empty() {
        return Err(Diagnostic::new("the build produced no image to compare").help("check `cargo xtask graph` for a final link").into());
    }
    for ((name, file_a), (_, file_b)) in a.iter().zip(b) {
        let (bytes_a, bytes_b) = (read(file_a)?, read(file_b)?);
        let (sum_a, sum_b) = (hex(&Sha256::digest(&bytes_a)), hex(&Sha256::digest(&bytes_b)));
        if sum_a != sum_b {
            let section = first_differing_section(&bytes_a, &bytes_b);
            return Err(Diagnostic::new(format!(
                "not reproducible: {name} differs ({sum_a} vs {sum_b}); first difference {section}\n  {file_a}\n  {file_b}"
            ))
            .help("compare the two with `diffoscope`; common causes are dates, absolute paths and host names reaching the image")
            .into());
        }
        session.output.status("Identical", &format!("{name} sha256 {sum_a}"));
        session.output.message(&crate::output::Message::Repro { file: name, sha256: &sum_a, identical: true });
    }
    Ok(())
}

fn read(path: &Utf8Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {path}"))
}

/// Where two files first differ: an ELF section name when both parse as ELF.
pub fn first_differing_section(a: &[u8], b: &[u8]) -> String {
    use object::{Object, ObjectSection};
    let offset = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let (Ok(elf_a), Ok(elf_b)) = (object::File::parse(a), object::File::parse(b)) else {
        return format!("at byte {offset}");
    };
    for section in elf_a.sections() {
        let name = section.name().unwrap_or("?");
        let other = elf_b.section_by_name(name);
        let same = match (&other, section.data()) {
            (Some(other), Ok(data)) => other.data().map(|d| d == data).unwrap_or(false),
            _ => false,
        };
        if !same {
            return format!("in section {name} (first differing byte of the file: {offset})");
        }
    }
    format!("at byte {offset} (outside every section: headers or layout)")
}
