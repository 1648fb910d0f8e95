//! Cache units: how actions group for reports and cache statistics (one per
//! Unikraft library, split further by source directory where a recipe says).

use std::collections::BTreeMap;

use camino::Utf8Path;
use serde::{Deserialize, Serialize};

use crate::plan::graph::{ActionKind, Graph};

/// How actions are grouped into cache units. By default an action's unit is
/// the library directory its primary output lives in (`<build>/libfoo/x.o`
/// → `libfoo`, `<build>/libfoo.ld.o` → `libfoo`); the final link, image and
/// raw steps are in `image` (or `prepare` before the first compile).
/// A rule with `split_by_dir_prefix` splits a library further by its
/// compile's *source* directory below that prefix (relative to the build
/// dir; a `*` component matches anything and is dropped):
/// `{ lib = "libmusl", split_by_dir_prefix = "libmusl/origin/*" }` puts
/// `.../origin/musl-1.2.3/src/string/strlen.c` in `libmusl/src/string`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnitRule {
    pub lib: String,
    #[serde(default)]
    pub split_by_dir_prefix: Option<String>,
}

pub fn default_unit_rules() -> Vec<UnitRule> {
    vec![UnitRule { lib: "libmusl".into(), split_by_dir_prefix: Some("libmusl/origin/*".into()) }]
}


pub(crate) fn unit_of(
    kind: ActionKind,
    primary: Option<&Utf8Path>,
    source: Option<&Utf8Path>,
    build: &Utf8Path,
    rules: &[UnitRule],
    seen_compile: bool,
) -> String {
    let fallback = if seen_compile { "image" } else { "prepare" };
    let Some(rel) = primary.and_then(|p| p.strip_prefix(build).ok()) else { return fallback.into() };
    if kind == ActionKind::Link {
        return "image".into();
    }
    let comps: Vec<&str> = rel.components().map(|c| c.as_str()).collect();
    // make may name the build dir itself (an empty relative path).
    if comps.is_empty() {
        return fallback.into();
    }
    let lib = if comps.len() > 1 {
        comps[0].to_string()
    } else if let Some(stem) = comps[0].strip_suffix(".ld.o").or_else(|| comps[0].strip_suffix(".o")) {
        stem.to_string()
    } else {
        return fallback.into();
    };
    if kind == ActionKind::Compile {
        for rule in rules.iter().filter(|r| r.lib == lib) {
            let (Some(prefix), Some(src)) = (&rule.split_by_dir_prefix, source) else { continue };
            let Ok(src_rel) = src.strip_prefix(build) else { continue };
            let src_comps: Vec<&str> = src_rel.components().map(|c| c.as_str()).collect();
            let pre: Vec<&str> = prefix.split('/').filter(|c| !c.is_empty()).collect();
            if src_comps.len() <= pre.len() + 1 {
                continue;
            }
            let matches = pre.iter().zip(&src_comps).all(|(p, s)| *p == "*" || p == s);
            if matches {
                let dir = &src_comps[pre.len()..src_comps.len() - 1];
                if dir.is_empty() {
                    return lib;
                }
                return format!("{lib}/{}", dir.join("/"));
            }
        }
    }
    lib
}

/// Summary counts for reports: (total, per kind, per unit).
pub fn summary(graph: &Graph) -> (usize, BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut kinds = BTreeMap::new();
    let mut units = BTreeMap::new();
    for a in &graph.actions {
        *kinds.entry(format!("{:?}", a.kind)).or_insert(0) += 1;
        *units.entry(a.unit.clone()).or_insert(0) += 1;
    }
    (graph.actions.len(), kinds, units)
}
