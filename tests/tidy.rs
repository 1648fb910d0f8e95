//! Conventions that keep the code base walkable, checked on every test run:
//! every source file opens with a `//!` doc; every library module is listed
//! in the module table of `lib.rs` or of its parent module; no import cycle
//! between library modules that are not ancestor and descendant; no library
//! file over the size limit unless it is named here with a reason.

use std::collections::{BTreeMap, BTreeSet};

use camino::{Utf8Path, Utf8PathBuf};

/// Files allowed past [`MAX_LINES`], with the reason.
const LARGE_FILES: &[(&str, &str)] = &[];

const MAX_LINES: usize = 650;

fn root() -> Utf8PathBuf {
    Utf8Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn rust_files(dir: &Utf8Path) -> Vec<Utf8PathBuf> {
    let mut files: Vec<Utf8PathBuf> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| Utf8PathBuf::from_path_buf(e.into_path()).unwrap())
        .collect();
    files.sort();
    files
}

/// `kraft/src/exec/fingerprint/mod.rs` -> `exec::fingerprint`.
fn module_path(src: &Utf8Path, file: &Utf8Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<&str> = rel.components().map(|c| c.as_str()).collect();
    let last = parts.pop().unwrap().trim_end_matches(".rs");
    if last != "mod" && last != "lib" {
        parts.push(last);
    }
    parts.join("::")
}

#[test]
fn every_file_opens_with_a_doc_comment() {
    let mut missing = Vec::new();
    for dir in ["kraft/src", "xtask/src", "tests"] {
        for file in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            if !text.trim_start().starts_with("//!") {
                missing.push(file.to_string());
            }
        }
    }
    assert!(missing.is_empty(), "files without a `//!` module doc:\n{}", missing.join("\n"));
}

#[test]
fn every_library_module_is_in_a_module_table() {
    let src = root().join("kraft/src");
    let docs: BTreeMap<String, String> = rust_files(&src)
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let doc: String = text.lines().take_while(|l| l.starts_with("//!") || l.is_empty()).collect::<Vec<_>>().join("\n");
            (module_path(&src, f), doc)
        })
        .collect();
    let mut unlisted = Vec::new();
    // A test-only file (`tests.rs`) needs no entry.
    for module in docs.keys().filter(|m| !m.is_empty() && !m.ends_with("::tests")) {
        let (parent, name) = module.rsplit_once("::").unwrap_or(("", module));
        let in_lib = docs[""].contains(&format!("`{module}`"));
        let in_parent = docs.get(parent).is_some_and(|d| {
            [format!("`{name}`"), format!("`{module}`"), format!("`{name}.rs`"), format!("`{name}/`")].iter().any(|n| d.contains(n.as_str()))
        });
        if !in_lib && !in_parent {
            unlisted.push(module.clone());
        }
    }
    assert!(unlisted.is_empty(), "modules missing from lib.rs's table and their parent's doc:\n{}", unlisted.join("\n"));
}

#[test]
fn no_library_file_is_too_large() {
    let src = root().join("kraft/src");
    let mut large = Vec::new();
    for file in rust_files(&src) {
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        let rel = file.strip_prefix(root()).unwrap().to_string();
        if lines > MAX_LINES && !LARGE_FILES.iter().any(|(f, _)| *f == rel) {
            large.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(large.is_empty(), "split these by concept, or name them in LARGE_FILES with a reason:\n{}", large.join("\n"));
}

#[test]
fn library_modules_have_no_import_cycle() {
    let src = root().join("kraft/src");
    let files = rust_files(&src);
    let modules: BTreeSet<String> = files.iter().map(|f| module_path(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_path(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        // Tests inside a module may reach anywhere; comments (doc links)
        // are not imports.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let text: String = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let text = text.as_str();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // The longest prefix that is a module file.
            while !segments.is_empty() && !modules.contains(&segments.join("::")) {
                segments.pop();
            }
            let to = segments.join("::");
            let related = to.is_empty() || from == to || from.starts_with(&format!("{to}::")) || to.starts_with(&format!("{from}::"));
            if !related {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    // Any cycle shows up as a back edge in a depth-first search.
    fn visit(node: &str, edges: &BTreeMap<String, BTreeSet<String>>, state: &mut BTreeMap<String, u8>, stack: &mut Vec<String>, cycles: &mut Vec<String>) {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                0 => visit(next, edges, state, stack, cycles),
                1 => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    cycles.push(format!("{} -> {next}", stack[at..].join(" -> ")));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for module in &modules {
        if state.get(module.as_str()).copied().unwrap_or(0) == 0 {
            visit(module, &edges, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(cycles.is_empty(), "import cycles between library modules:\n{}", cycles.join("\n"));
}
