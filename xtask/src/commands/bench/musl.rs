//! The upstream musl 1.2.3 scenarios of `cargo xtask bench`.

use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use super::measure::{measure, record_phases, set_store_dir, BenchOptions, Phases, Scenario, ScenarioResult, Side};
use kraft::pipeline::sysroot::{build_musl, unpacked_archive, SysrootOptions, MUSL_RECIPE};
use kraft::source::fetch::{Fetcher, NetworkMode};
use kraft::source::recipe::ComponentKind;
use kraft::session::Session;
use kraft::store::Store;


fn sh(script: &str, cwd: &Utf8Path) -> Result<()> {
    let out = Command::new("bash").arg("-c").arg(script).current_dir(cwd).output().with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "`{script}` in {cwd} failed ({}):\n{}{}",
            out.status,
            kraft::util::text::tail(&String::from_utf8_lossy(&out.stdout), 20),
            kraft::util::text::tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok(())
}

fn fresh_copy(from: &Utf8Path, to: &Utf8Path) -> Result<()> {
    remove(to)?;
    kraft::util::fs::copy_tree(from, to)?;
    // Store trees are read-only; the baseline builds in-tree.
    sh("chmod -R u+w .", to)
}

/// Out of the way, into the bench's trash (see [`super::trash`]).
pub(super) fn remove(dir: &Utf8Path) -> Result<()> {
    super::trash::discard(dir)
}

fn edit_strlen(tree: &Utf8Path, run: usize, side: &str) -> Result<()> {
    let f = tree.join("src/string/strlen.c");
    let mut text = std::fs::read_to_string(&f)?;
    text.push_str(&format!("\nint kraft_bench_{side}_{run}(void) {{ return {run}; }}\n"));
    std::fs::write(&f, text)?;
    Ok(())
}

/// The musl scenarios. `root` is a scratch dir (replaced).
pub fn musl_scenarios(session: &Session, opts: &BenchOptions, root: &Utf8Path, results: &mut Vec<ScenarioResult>, log: &dyn Fn(&str)) -> Result<()> {
    remove(root)?;
    std::fs::create_dir_all(root)?;
    // The pristine tree: the recipe's tarball, through the user's store.
    let recipe = session.recipes.get(MUSL_RECIPE, ComponentKind::Library);
    let pristine = unpacked_archive(&session.fetcher(), &recipe)?;
    let store_dir = root.join("store");
    let jobs = opts.jobs;
    let make = format!("make -j{jobs} lib/libc.a >/dev/null");
    let configure_make = format!("./configure >/dev/null && {make}");
    let ours_src = root.join("ours-src");
    let base_src = root.join("base-src");

    let build_j = |src: &Utf8Path, work: &str, jobs: usize| -> Result<kraft::exec::BuildReport> {
        let store = Store::open(store_dir.clone())?;
        let mirrors = kraft::source::mirror::Mirrors::default();
        let fetcher = Fetcher::new(&store, &mirrors, NetworkMode { offline: true });
        let o = SysrootOptions { source: Some(src.to_owned()), work: root.join(work), out: root.join(work).join("sysroot"), jobs };
        let built = build_musl(&fetcher, &session.recipes, &o)?;
        let mut phases = Phases::default();
        let plan_s = if built.plan.cached { 0.0 } else { built.plan.elapsed.as_secs_f64() };
        phases.add_build(plan_s, &built.plan.make_seconds, &built.report);
        record_phases(phases);
        Ok(built.report)
    };
    let build = |src: &Utf8Path, work: &str| build_j(src, work, jobs);
    set_store_dir(Some(store_dir.clone()));
    let want = |name: &str| opts.wants(name);

    let mut scenarios: Vec<Scenario<'_>> = Vec::new();
    if want("musl/cold") {
        scenarios.push(Scenario {
            name: "musl/cold".into(),
            description: "empty store and work dir, fresh tree vs fresh tree: configure && make lib/libc.a".into(),
            ours: Side::new(
                |_| {
                    remove(&store_dir)?;
                    remove(&root.join("work"))?;
                    fresh_copy(&pristine, &ours_src)
                },
                |_| {
                    let r = build(&ours_src, "work")?;
                    anyhow::ensure!(r.run == r.total, "cold build restored something: {r:?}");
                    Ok(())
                },
            ),
            baseline: Side::new(|_| fresh_copy(&pristine, &base_src), |_| sh(&configure_make, &base_src)),
        });
    }
    if want("musl/cold-j1") {
        scenarios.push(Scenario {
            name: "musl/cold-j1".into(),
            description: "as musl/cold, one job on both sides: the cost per action without scheduling".into(),
            ours: Side::new(
                |_| {
                    remove(&store_dir)?;
                    remove(&root.join("work"))?;
                    fresh_copy(&pristine, &ours_src)
                },
                |_| {
                    let r = build_j(&ours_src, "work", 1)?;
                    anyhow::ensure!(r.run == r.total, "cold build restored something: {r:?}");
                    Ok(())
                },
            ),
            baseline: Side::new(|_| fresh_copy(&pristine, &base_src), |_| sh("./configure >/dev/null && make -j1 lib/libc.a >/dev/null", &base_src)),
        });
    }
    if want("musl/no-op") {
        scenarios.push(Scenario {
            name: "musl/no-op".into(),
            description: "second build, nothing changed".into(),
            ours: Side::new(
                |_| {
                    if !root.join("work/state.json").exists() {
                        fresh_copy(&pristine, &ours_src)?;
                        build(&ours_src, "work")?;
                    }
                    Ok(())
                },
                |_| {
                    let r = build(&ours_src, "work")?;
                    anyhow::ensure!(r.run == 0 && r.restored == 0, "no-op build did work: {r:?}");
                    Ok(())
                },
            ),
            baseline: Side::new(
                |_| {
                    if !base_src.join("lib/libc.a").exists() {
                        fresh_copy(&pristine, &base_src)?;
                        sh(&configure_make, &base_src)?;
                    }
                    Ok(())
                },
                |_| sh(&make, &base_src),
            ),
        });
    }
    if want("musl/edit-one") {
        scenarios.push(Scenario {
            name: "musl/edit-one".into(),
            description: "a function appended to src/string/strlen.c".into(),
            ours: Side::new(|i| edit_strlen(&ours_src, i, "ours"), |_| {
                let r = build(&ours_src, "work")?;
                let compiles = r.unit("src/string").map(|u| u.built).unwrap_or(0);
                anyhow::ensure!(compiles == 1, "edit rebuilt {compiles} objects in src/string: {r:?}");
                Ok(())
            }),
            baseline: Side::new(|i| edit_strlen(&base_src, i, "base"), |_| sh(&make, &base_src)),
        });
    }
    if want("musl/warm-fresh") {
        scenarios.push(Scenario {
            name: "musl/warm-fresh".into(),
            description: "fresh tree and work dir, warm store vs fresh tree: configure && make".into(),
            ours: Side::new(
                |_| {
                    if !store_dir.exists() {
                        fresh_copy(&pristine, &ours_src)?;
                        build(&ours_src, "work")?;
                    }
                    remove(&root.join("work2"))?;
                    fresh_copy(&pristine, &root.join("ours-src2"))
                },
                |_| {
                    let r = build(&root.join("ours-src2"), "work2")?;
                    anyhow::ensure!(r.run == 0, "warm store, fresh dir ran {} actions", r.run);
                    Ok(())
                },
            ),
            baseline: Side::new(|_| fresh_copy(&pristine, &base_src), |_| sh(&configure_make, &base_src)),
        });
    }
    for s in &mut scenarios {
        log(&format!("{}: {}", s.name, s.description));
        let mut result = measure(s, opts.runs, log)?;
        if result.name == "musl/warm-fresh" {
            // What any build keyed by content must do on a tree it has not
            // seen: read and hash every file of it (in the page cache).
            let seconds = hash_tree_seconds(&root.join("ours-src2"))?;
            result.extra.insert("tree_hash_floor_s".into(), serde_json::json!((seconds * 1000.0).round() / 1000.0));
        }
        results.push(result);
    }
    Ok(())
}

/// Seconds to read and blake3 every file under `tree` (as the tool hashes
/// an input), the best of three.
fn hash_tree_seconds(tree: &Utf8Path) -> Result<f64> {
    let files: Vec<std::path::PathBuf> =
        walkdir::WalkDir::new(tree).into_iter().filter_map(|e| e.ok()).filter(|e| e.file_type().is_file()).map(|e| e.into_path()).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let began = std::time::Instant::now();
        for file in &files {
            std::hint::black_box(kraft::util::hash::blake3_file(file).with_context(|| format!("hashing {}", file.display()))?);
        }
        best = best.min(began.elapsed().as_secs_f64());
    }
    Ok(best)
}

