//! `cargo xtask sysroot musl [--source DIR] [--out DIR]`: upstream musl
//! (recipe `musl-upstream`) built through the engine and laid out as a
//! static sysroot.
//!
//! The source is `--source DIR` (mounted read-only as is), or the recipe's
//! release tarball: fetched with [`Fetcher::archive`] (KRAFT_ARCHIVE_DIR,
//! mirrors, store, URL; verified by sha256) and unpacked once into a store
//! tree (`<store>/unpacked/<sha256>` remembers which).
//!
//! Layout below the work dir (default `target/kraft/musl/`): `build/` (the
//! make build dir), `state.json` (the executor's state), `sysroot/`
//! (`--out` overrides it).

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::exec::{execute, BuildReport, ExecContext};
use crate::source::fetch::Fetcher;
use crate::plan::graph::ActionKind;
use crate::source::lock::LockedArchive;
use crate::plan::Plan;
use crate::plan::upstream::{self, MakePlanInput};
use crate::source::recipe::{ComponentKind, Recipe, RecipeBook};
use crate::exec::mounts::MountMap;
use crate::exec::sandbox::Sandbox;
use crate::pipeline::OutputDir;
use crate::store::Store;

pub const MUSL_RECIPE: &str = "musl-upstream";

/// Where and how to build.
#[derive(Debug, Clone)]
pub struct SysrootOptions {
    /// A local source tree instead of the recipe's tarball.
    pub source: Option<Utf8PathBuf>,
    /// Holds `build/` and `state.json`.
    pub work: Utf8PathBuf,
    /// The sysroot (replaced).
    pub out: Utf8PathBuf,
    pub jobs: usize,
}

/// What a sysroot build did.
#[derive(Debug, Clone)]
pub struct SysrootBuild {
    pub sysroot: Utf8PathBuf,
    pub source: Utf8PathBuf,
    pub build: Utf8PathBuf,
    pub plan: Plan,
    pub report: BuildReport,
}

impl SysrootBuild {
    /// Compile actions in the graph.
    pub fn compile_actions(&self) -> usize {
        self.plan.graph.actions.iter().filter(|a| a.kind == ActionKind::Compile).count()
    }
}

/// The recipe's first archive, in the store, unpacked into a store tree;
/// returns the tree's single top-level directory (`musl-1.2.3/`).
pub fn unpacked_archive(fetcher: &Fetcher<'_>, recipe: &Recipe) -> anyhow::Result<Utf8PathBuf> {
    let spec = recipe.file.archive.first().with_context(|| format!("recipe {} names no archive", recipe.name()))?;
    let locked = LockedArchive { name: spec.name.clone(), url: spec.url.clone(), sha256: spec.sha256.clone() };
    let store: &Store = fetcher.store;
    let record = store.root().join("unpacked").join(&spec.sha256);
    let top = |tree: &Utf8Path| -> anyhow::Result<Utf8PathBuf> {
        Ok(crate::store::archive::single_top_level_dir(tree)?.unwrap_or_else(|| tree.to_owned()))
    };
    if let Ok(hash) = std::fs::read_to_string(&record) {
        let hash = hash.trim();
        if store.has_tree(hash) {
            return top(&store.tree_path(hash));
        }
    }
    let archive = fetcher.archive(&locked)?;
    let staging = store.staging_dir()?;
    let staged = Utf8Path::from_path(staging.path()).context("non-UTF-8 staging path")?.join("tree");
    std::fs::create_dir(&staged)?;
    crate::store::archive::unpack_tar_gz(&archive, &staged)?;
    let hash = store.insert_tree(&staged, None, archive.as_str())?;
    std::fs::create_dir_all(record.parent().unwrap())?;
    crate::util::fs::write_atomic(&record, hash.as_bytes())?;
    top(&store.tree_path(&hash))
}

/// Plan, execute, install. `fetcher` is only used without `opts.source`.
pub fn build_musl(fetcher: &Fetcher<'_>, recipes: &RecipeBook, opts: &SysrootOptions) -> anyhow::Result<SysrootBuild> {
    let recipe = recipes.get(MUSL_RECIPE, ComponentKind::Library);
    let source = match &opts.source {
        Some(dir) => dir.canonicalize_utf8().with_context(|| format!("--source {dir}"))?,
        None => unpacked_archive(fetcher, &recipe)?,
    };
    let start = std::time::Instant::now();
    let build = opts.work.join("build");
    let input = MakePlanInput::from_recipe(&recipe, &source, &build)?;
    let store = fetcher.store;
    std::fs::create_dir_all(&build).with_context(|| format!("creating {build}"))?;
    let mounts = MountMap::new(input.mounts())?;
    let sandbox = Sandbox::new(mounts.mounts().to_vec(), input.env.clone())?;
    let key = upstream::plan_key(&input, &sandbox)?;
    // The same stages as `build`: one build of the work dir at a time, and
    // nothing done when nothing moved.
    let out = OutputDir::open(&opts.work, &key, &mounts)?;
    if let Some(snapshot) = out.noop() {
        let plan = crate::plan::Plan {
            graph: crate::plan::graph::Graph::default(),
            key,
            cached: true,
            make_runs: 0,
            elapsed: start.elapsed(),
            warnings: Vec::new(),
            make_seconds: Vec::new(),
        };
        let report = BuildReport { total: snapshot.actions, up_to_date: snapshot.actions, duration: start.elapsed(), ..Default::default() };
        return Ok(SysrootBuild { sysroot: opts.out.clone(), source, build, plan, report });
    }
    let plan = out.plan(store, &key, || upstream::plan(&input, Some(&store.root().join("plans"))))?;
    let mut ctx = ExecContext::new(&sandbox, store, out.state_path());
    ctx.jobs = opts.jobs.max(1);
    let report = execute(&plan.graph, &ctx)?;
    upstream::install_musl_sysroot(&source, &build, &opts.out)?;
    let mut watched = report.watched.clone();
    watched.extend(
        walkdir::WalkDir::new(&opts.out)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| camino::Utf8PathBuf::from_path_buf(e.into_path()).ok()),
    );
    out.record(report.total, report.units.len(), watched);
    Ok(SysrootBuild { sysroot: opts.out.clone(), source, build, plan, report })
}
