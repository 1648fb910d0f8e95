//! `cargo xtask bench [--runs N] [--filter S]`: our builds against make, on
//! the same trees, alternately in one process (see [`crate::bench`]).
//! Results: a table on stdout and `target/kraft/bench/bench-<unix time>.json`
//! (and `latest.json`).
//!
//! Upstream musl 1.2.3 (recipe `musl-upstream`), each against
//! `./configure && make -j<jobs> lib/libc.a` on a fresh copy of the same
//! tree (our side also builds the crt objects and empty archives and lays
//! out the sysroot: 19 more actions than make's `lib/libc.a`):
//!
//! | scenario          | ours                                         | baseline                          |
//! |-------------------|----------------------------------------------|-----------------------------------|
//! | `musl/cold`       | empty store, fresh tree, fresh work dir      | fresh tree: configure && make     |
//! | `musl/no-op`      | second build                                 | `make` in the built tree          |
//! | `musl/edit-one`   | a new function appended to src/string/strlen.c | same edit, `make`               |
//! | `musl/warm-fresh` | fresh tree, fresh work dir, warm store       | fresh tree: configure && make     |
//!
//! Real Unikraft helloworld with lib-musl (when `KRAFT_MIRRORS` resolves
//! github.com/unikraft; otherwise skipped with one line), each against
//! Unikraft's `make -j<jobs>` run directly on a checkout in a temp dir with
//! the same `.config`: `uk/cold`, `uk/no-op`, `uk/printk-flip`,
//! `uk/edit-main`, `uk/warm-fresh`, `uk/second-app`.

use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

use crate::bench::{format_table, measure, Scenario, ScenarioResult, Side};
use crate::commands::sysroot::{build_musl, unpacked_archive, SysrootOptions, MUSL_RECIPE};
use crate::fetch::{Fetcher, NetworkMode};
use crate::recipe::ComponentKind;
use crate::session::Session;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub runs: usize,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    pub jobs: usize,
}

fn sh(script: &str, cwd: &Utf8Path) -> Result<()> {
    let out = Command::new("bash").arg("-c").arg(script).current_dir(cwd).output().with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        bail!(
            "`{script}` in {cwd} failed ({}):\n{}{}",
            out.status,
            crate::plan::tail(&String::from_utf8_lossy(&out.stdout), 20),
            crate::plan::tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok(())
}

fn fresh_copy(from: &Utf8Path, to: &Utf8Path) -> Result<()> {
    remove(to)?;
    crate::plan::copy_tree(from, to)?;
    // Store trees are read-only; the baseline builds in-tree.
    sh("chmod -R u+w .", to)
}

fn remove(dir: &Utf8Path) -> Result<()> {
    if dir.exists() {
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(dir).status();
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {dir}"))?;
    }
    Ok(())
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

    let build = |src: &Utf8Path, work: &str| -> Result<crate::exec::BuildReport> {
        let store = Store::open(store_dir.clone())?;
        let mirrors = crate::mirror::Mirrors::default();
        let fetcher = Fetcher::new(&store, &mirrors, NetworkMode { offline: true });
        let o = SysrootOptions { source: Some(src.to_owned()), work: root.join(work), out: root.join(work).join("sysroot"), jobs };
        Ok(build_musl(&fetcher, &session.recipes, &o)?.report)
    };
    let want = |name: &str| opts.filter.as_deref().is_none_or(|f| f.split(',').any(|f| name.contains(f)));

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
        results.push(measure(s, opts.runs, log)?);
    }
    Ok(())
}

/// Whether `KRAFT_MIRRORS` maps Unikraft's repositories somewhere.
pub fn unikraft_mirrored(session: &Session) -> bool {
    std::env::var("KRAFT_MIRRORS").is_ok_and(|m| !m.is_empty())
        && !session.mirrors.rewrite("https://github.com/unikraft/unikraft.git").is_remote()
}

/// `cargo xtask bench`.
pub fn run(session: &Session, opts: &BenchOptions) -> Result<Vec<ScenarioResult>> {
    let out_dir = session.workspace.target_dir.join("kraft").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let log = |m: &str| eprintln!("{m}");
    let mut results = Vec::new();
    let work = out_dir.join("work");
    musl_scenarios(session, opts, &work.join("musl"), &mut results, &log)?;
    if unikraft_mirrored(session) {
        crate::commands::bench_unikraft::scenarios(session, opts, &work.join("unikraft"), &mut results, &log)?;
    } else {
        println!("skipping the Unikraft scenarios: set KRAFT_MIRRORS so that https://github.com/unikraft/ resolves to a local mirror");
    }
    let _ = remove(&work);
    print!("{}", format_table(&results));
    let json = serde_json::json!({
        "runs": opts.runs,
        "jobs": opts.jobs,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "scenarios": results,
    });
    let text = serde_json::to_string_pretty(&json)?;
    let stamp = json["unix_time"].as_u64().unwrap_or(0);
    let file: Utf8PathBuf = out_dir.join(format!("bench-{stamp}.json"));
    std::fs::write(&file, &text)?;
    std::fs::write(out_dir.join("latest.json"), &text)?;
    println!("results: {file}");
    Ok(results)
}
