//! The plan cache: `<cache>/<key>/plan.json` beside the prepared build dir,
//! the build dir's marker, and the identities that go into the plan key.

use anyhow::{Context, Result};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};

use crate::plan::fetches::PlacedOrigin;
use crate::plan::graph::Graph;
use crate::plan::PLAN_FORMAT;


/// `<build>/.kraft-plan`: the plan key the build dir was prepared for.
const MARKER: &str = ".kraft-plan";

pub(crate) fn read_marker(build: &Utf8Path) -> Option<String> {
    std::fs::read_to_string(build.join(MARKER)).ok().map(|s| s.trim().to_string())
}

pub(crate) fn write_marker(build: &Utf8Path, key: &str) -> Result<()> {
    std::fs::write(build.join(MARKER), key).with_context(|| format!("writing {}", build.join(MARKER)))
}

pub(crate) fn is_build_file(name: &str) -> bool {
    name.starts_with("Makefile") || name.ends_with(".uk") || name.ends_with(".mk") || name.starts_with("Config.uk")
}

/// blake3 over (relative path, content) of the build description files.
pub fn fingerprint_build_files(dir: &Utf8Path) -> Result<String> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name().into_iter().filter_entry(|e| e.file_name() != ".git") {
        let entry = entry?;
        if entry.file_type().is_file() && is_build_file(&entry.file_name().to_string_lossy()) {
            files.push(entry.into_path());
        }
    }
    let mut h = blake3::Hasher::new();
    for f in files {
        let rel = f.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&f)?;
        h.update(rel.as_bytes());
        h.update(&[0]);
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(&data);
    }
    Ok(h.finalize().to_hex().to_string())
}

#[derive(Serialize, Deserialize)]
pub(crate) struct CachedPlan {
    format: u32,
    warnings: Vec<String>,
    graph: Graph,
    /// The origin archives planning placed (checked against the lock on a hit).
    #[serde(default)]
    origins: Vec<PlacedOrigin>,
}

/// Cache entry layout: `<cache>/<key>/plan.json` and `<cache>/<key>/prepared/`.
pub(crate) fn load_cached(entry: &Utf8Path) -> Result<Option<(Graph, Vec<String>)>> {
    let file = entry.join("plan.json");
    let Ok(text) = std::fs::read_to_string(&file) else { return Ok(None) };
    match serde_json::from_str::<CachedPlan>(&text) {
        Ok(c) if c.format == PLAN_FORMAT && entry.join("prepared").is_dir() => Ok(Some((c.graph, c.warnings))),
        _ => Ok(None),
    }
}

/// The origin archives a cached plan placed (none for an unreadable entry).
pub(crate) fn load_cached_origins(entry: &Utf8Path) -> Vec<PlacedOrigin> {
    std::fs::read_to_string(entry.join("plan.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<CachedPlan>(&text).ok())
        .map(|c| c.origins)
        .unwrap_or_default()
}

pub(crate) fn store_cached(entry: &Utf8Path, graph: &Graph, warnings: &[String], build: &Utf8Path) -> Result<()> {
    store_cached_with(entry, graph, warnings, build, &[])
}

pub(crate) fn store_cached_with(entry: &Utf8Path, graph: &Graph, warnings: &[String], build: &Utf8Path, origins: &[PlacedOrigin]) -> Result<()> {
    let parent = entry.parent().unwrap();
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".plan-").tempdir_in(parent)?;
    let tmp_path = Utf8Path::from_path(tmp.path()).unwrap();
    crate::util::fs::copy_tree(build, tmp_path.join("prepared"))?;
    let cached = CachedPlan { format: PLAN_FORMAT, warnings: warnings.to_vec(), graph: graph.clone(), origins: origins.to_vec() };
    std::fs::write(tmp_path.join("plan.json"), serde_json::to_vec(&cached)?)?;
    let tmp_path = tmp.keep();
    if entry.exists() {
        std::fs::remove_dir_all(entry)?;
    }
    if let Err(e) = std::fs::rename(&tmp_path, entry) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        if !entry.join("plan.json").exists() {
            return Err(e).context("storing plan in cache");
        }
    }
    Ok(())
}

pub(crate) fn clear_dir(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
