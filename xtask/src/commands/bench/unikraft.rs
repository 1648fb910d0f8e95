//! The Unikraft scenarios of `cargo xtask bench` (see `commands::bench`):
//! helloworld (main.c of app-helloworld) with lib-musl, Unikraft 0.16.3,
//! qemu/x86_64, built by `commands::build::build_app` with a private store,
//! against Unikraft's own `make -j<jobs>` on checkouts in a temp dir with the
//! `.config` our planner produced and the musl tarball pre-placed (as the
//! planner does, so neither side downloads anything).

use std::process::Command;

use anyhow::{bail, Context, Result};
use camino::Utf8Path;

use std::time::Duration;

use super::account::Floor;
use super::measure::{measure, record_phases, record_traffic, set_store_dir, BenchOptions, Phases, Scenario, ScenarioResult, Side};
use super::buildgrid::BuildGrid;
use super::nginx::{Nginx, Traffic};
use kraft::cache::http::{RemoteCache, RemoteOptions};
use kraft::exec::remote::Settings;
use kraft::session::Options;
use kraft::source::recipe::ComponentKind;
use kraft::session::Session;

const VERSION: &str = "0.16.3";
/// The generated Kconfig header every configuration change rewrites.
const CONFIG_HEADER: &str = "/uk/bits/config.h";
/// The team cache's secret in uk/remote-warm (a private server on loopback).
/// The bench signs and trusts its own throwaway key (seed fixed: the bench
/// measures transfers, not trust).
const REMOTE_SEED: [u8; 32] = [7; 32];

fn sh(script: &str, cwd: &Utf8Path) -> Result<()> {
    let out = Command::new("bash").arg("-c").arg(script).current_dir(cwd).output()?;
    if !out.status.success() {
        bail!(
            "`{script}` in {cwd} failed ({}):\n{}{}",
            out.status,
            kraft::util::text::tail(&String::from_utf8_lossy(&out.stdout), 20),
            kraft::util::text::tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
    }
    Ok(())
}

/// The printk level is a Kconfig choice in Unikraft 0.16: `info` selects
/// `CONFIG_LIBUKDEBUG_PRINTK_INFO`, `err` (the default) `..._PRINTK_ERR`.
fn printk_symbol(level: &str) -> &'static str {
    match level {
        "info" => "CONFIG_LIBUKDEBUG_PRINTK_INFO",
        "warn" => "CONFIG_LIBUKDEBUG_PRINTK_WARN",
        "crit" => "CONFIG_LIBUKDEBUG_PRINTK_CRIT",
        _ => "CONFIG_LIBUKDEBUG_PRINTK_ERR",
    }
}

/// Each flip run goes to a level neither side has built yet (the default is
/// `err`), so every run measures a real configuration change, not a return
/// to a configuration the store already holds.
const FLIP_LEVELS: [&str; 3] = ["info", "warn", "crit"];

fn kraftfile(name: &str, loglevel: &str) -> String {
    format!(
        "spec: v0.6\n\nname: {name}\n\nunikraft:\n  version: {VERSION}\n  kconfig:\n    {}: 'y'\n\nlibraries:\n  musl: {VERSION}\n\ntargets:\n  - qemu/x86_64\n",
        printk_symbol(loglevel)
    )
}

/// The app: helloworld's main.c, Makefile.uk and Config.uk, our Kraftfile.
fn write_app(dir: &Utf8Path, upstream: &Utf8Path, name: &str, loglevel: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("Kraftfile"), kraftfile(name, loglevel))?;
    for f in ["main.c", "Makefile.uk", "Config.uk"] {
        if upstream.join(f).is_file() {
            std::fs::copy(upstream.join(f), dir.join(f))?;
        }
    }
    Ok(())
}

fn mirror_clone(session: &Session, repo: &str, rev: &str, dest: &Utf8Path) -> Result<()> {
    let url = format!("https://github.com/unikraft/{repo}.git");
    let location = session.mirrors.rewrite(&url);
    if dest.exists() {
        super::trash::discard(dest)?;
    }
    sh(&format!("git clone -q {} {dest} && git -C {dest} checkout -q {rev}", location.as_git_arg()), Utf8Path::new("/"))
}

pub fn scenarios(session: &Session, opts: &BenchOptions, root: &Utf8Path, results: &mut Vec<ScenarioResult>, log: &dyn Fn(&str)) -> Result<()> {
    let want = |name: &str| opts.wants(name);
    const NAMES: [&str; 11] = [
        "uk/cold", "uk/no-op", "uk/printk-flip", "uk/edit-main", "uk/warm-fresh", "uk/second-app",
        "uk/config-revert", "uk/cold-j1", "uk/remote-warm", "uk/remote-warm-reapi", "uk/",
    ];
    if !NAMES.iter().any(|n| want(n)) {
        return Ok(()); // the filter selects no Unikraft scenario: skip the checkouts and the first build
    }
    if root.exists() {
        super::trash::discard(root)?;
    }
    std::fs::create_dir_all(root)?;
    let root = root.canonicalize_utf8()?;
    let jobs = opts.jobs;
    // Sources for the baseline and the app's main.c.
    let co = root.join("checkout");
    mirror_clone(session, "unikraft", &format!("RELEASE-{VERSION}"), &co.join("unikraft"))?;
    mirror_clone(session, "lib-musl", &format!("RELEASE-{VERSION}"), &co.join("libs/musl"))?;
    mirror_clone(session, "app-helloworld", "staging", &root.join("app-helloworld"))?;
    let musl_recipe = session.recipes.get("musl", ComponentKind::Library);
    let tarball_spec = musl_recipe.file.archive.first().context("musl recipe names no archive")?.clone();
    let tarball = session.fetcher().archive(&kraft::source::lock::LockedArchive {
        name: tarball_spec.name.clone(),
        url: tarball_spec.url.clone(),
        sha256: tarball_spec.sha256.clone(),
    })?;

    let store_dir = root.join("store");
    let app1 = root.join("apps/helloworld");
    let app2 = root.join("apps/hellotwo");
    write_app(&app1, &root.join("app-helloworld"), "helloworld", "err")?;
    write_app(&app2, &root.join("app-helloworld"), "hellotwo", "err")?;
    // The team cache of uk/remote-warm (started only when that scenario runs).
    let server = if want("uk/remote-warm") { Some(Nginx::start(&root.join("nginx"))?) } else { None };
    let remote = server.as_ref().map(|s| {
        let options = RemoteOptions { upload_wait: Duration::from_secs(900), queue_capacity: 1 << 20, ..RemoteOptions::default() };
        RemoteCache::from_config(Some(&s.url()), kraft::cache::signing::CacheKeys::none().signing("bench", REMOTE_SEED)).expect("a URL").with_options(options)
    });
    // The REAPI team cache of uk/remote-warm-reapi: BuildGrid, filled by the
    // same first build (signed with the bench's key), read by the scenario.
    let engine = if want("uk/remote-warm-reapi") { Some(BuildGrid::start(&session.workspace.root, &root.join("buildgrid"))?) } else { None };
    let engine_settings = |upload: bool| {
        engine.as_ref().map(|e| Settings {
            url: e.url(),
            execute: false,
            upload,
            is_cache_url: true,
            keys: Some(std::sync::Arc::new(kraft::cache::signing::CacheKeys::none().signing("bench", REMOTE_SEED))),
        })
    };
    // What a reader of either team cache trusts: the fill's key.
    let trusted_keys = kraft::cache::signing::CacheKeys::none().signing("bench", REMOTE_SEED).trusted_text();
    let engine_fill = engine_settings(true);
    let engine_read = engine_settings(false);
    let build_with = |app: &Utf8Path, store: &Utf8Path, jobs: usize, remote: Option<&RemoteCache>, reapi: Option<&Settings>| -> Result<kraft::pipeline::target::TargetBuild> {
        // The ordinary scenarios never talk to a team cache, whatever the environment says.
        let global = Options { store: Some(store.to_owned()), jobs: Some(jobs), remote_cache: Some(String::new()), ..Options::default() };
        let mut s = Session::new(session.workspace.clone(), &global)?;
        s.remote = remote.cloned();
        s.reapi = reapi.cloned();
        let (_, mut builds) = kraft::pipeline::target::build_app(&s, app.as_str(), Some("qemu/x86_64"))?;
        let build = builds.pop().context("no target built")?;
        let mut phases = Phases::default();
        phases.add_build(build.plan_seconds, &build.make_seconds, &build.report);
        record_phases(phases);
        Ok(build)
    };
    // As a user runs it: `xtask build` in a process of its own.
    let ours = |app: &Utf8Path| super::process::build(&session.workspace.root, &store_dir, jobs, app);
    let out_of = |name: &str| session.workspace.output_dir(name, "qemu-x86_64");
    // Baseline tree: checkout + app + build dir with our .config and the tarball.
    let base = root.join("base");
    let base_app = |name: &str| base.join("apps").join(name);
    let base_build = base.join("build");
    let config_of = |name: &str| -> Result<String> {
        let p = out_of(name).join("build/.config");
        std::fs::read_to_string(&p).with_context(|| format!("reading our .config at {p}"))
    };
    let prepare_base = |name: &str, app: &Utf8Path| -> Result<()> {
        if base.exists() {
            super::trash::discard(&base)?;
        }
        kraft::util::fs::copy_tree(&co, &base)?;
        kraft::util::fs::copy_tree(app, &base_app(name))?;
        std::fs::create_dir_all(base_build.join("libmusl"))?;
        std::fs::copy(&tarball, base_build.join("libmusl").join(&tarball_spec.name))?;
        std::fs::write(base_build.join(".config"), config_of(name)?)?;
        Ok(())
    };
    let make_j = |name: &str, jobs: usize| -> Result<()> {
        sh(
            &format!(
                "make -C {base}/unikraft A={} L={base}/libs/musl O={b} C={b}/.config -j{jobs} >{base}/make.log 2>&1 </dev/null || {{ tail -n 40 {base}/make.log; exit 1; }}",
                base_app(name),
                b = base_build
            ),
            &base,
        )
    };
    let make = |name: &str| make_j(name, jobs);
    let wipe_ours = |name: &str| -> Result<()> {
        let out = out_of(name);
        if out.exists() {
            super::trash::discard(&out)?;
        }
        Ok(())
    };
    let set_base_level = |level: &str| -> Result<()> {
        let on = printk_symbol(level);
        let all = ["info", "warn", "err", "crit"].map(printk_symbol);
        let cfg = std::fs::read_to_string(base_build.join(".config"))?;
        let cfg: String = cfg
            .lines()
            .map(|l| {
                let symbol = all.iter().find(|s| l.starts_with(&format!("{s}=")) || l == format!("# {s} is not set"));
                match symbol {
                    Some(s) if *s == on => format!("{s}=y\n"),
                    Some(s) => format!("# {s} is not set\n"),
                    None => format!("{l}\n"),
                }
            })
            .collect();
        std::fs::write(base_build.join(".config"), cfg)?;
        Ok(())
    };
    let set_loglevel = |dir: &Utf8Path, name: &str, level: &str| std::fs::write(dir.join("Kraftfile"), kraftfile(name, level));
    let edit_main = |dir: &Utf8Path, i: usize, side: &str| -> Result<()> {
        let path = dir.join("main.c");
        let mut t = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        t.push_str(&format!("\nint kraft_bench_{side}_{i}(void) {{ return {i}; }}\n"));
        std::fs::write(&path, t).with_context(|| format!("writing {path}"))?;
        Ok(())
    };
    // One untimed build of ours first: the baseline needs our .config. It
    // is a cold build, so its state says what each action cost (the floor
    // of a configuration change), and it fills the team cache.
    set_store_dir(None);
    wipe_ours("helloworld")?; // a cold build: every action runs (and reaches the team cache)
    let filled = build_with(&app1, &store_dir, jobs, remote.as_ref(), engine_fill.as_ref())?;
    // The floor from this build, until `uk/cold` gives a plain local cold
    // build (this one may also upload to an engine, which its action times
    // include).
    let floor = std::cell::Cell::new(Floor::of(&filled.state_path, CONFIG_HEADER));
    let first = floor.get();
    let fill_bytes = server.as_ref().map(|s| s.traffic()).unwrap_or_default();
    log(&format!(
        "cold build: {} of {} actions read {CONFIG_HEADER}: {:.0}% of the busy time ({:.1}s of {:.1}s); {:.1} MiB uploaded to the team cache",
        first.reading_actions,
        first.all_actions,
        first.share() * 100.0,
        first.reading_s,
        first.all_s,
        fill_bytes.uploaded as f64 / 1048576.0
    ));
    set_store_dir(Some(store_dir.clone()));
    let floor_extra = |r: &mut ScenarioResult| {
        let floor = floor.get();
        // Floor of a change reaching every object that reads the config
        // header: their compile time over the jobs, against make's time.
        let floor_s = floor.reading_s / jobs as f64;
        r.extra.insert("floor_share_of_compile_time".into(), serde_json::json!((floor.share() * 1000.0).round() / 1000.0));
        r.extra.insert("floor_s".into(), serde_json::json!((floor_s * 100.0).round() / 100.0));
        r.extra.insert("floor_ratio".into(), serde_json::json!(((floor_s / r.baseline_median_s) * 1000.0).round() / 1000.0));
    };

    let remote_store = root.join("store-remote");
    let copy_floor = std::cell::Cell::new(None);
    let traffic_before = std::cell::Cell::new(Traffic::default());
    let mut list: Vec<Scenario<'_>> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    if want("uk/cold") {
        list.push(Scenario {
            name: "uk/cold".into(),
            description: "helloworld+musl, empty store vs make on a fresh checkout".into(),
            ours: Side::new(|_| { if store_dir.exists() { super::trash::discard(&store_dir)?; } wipe_ours("helloworld") }, |_| ours(&app1)),
            baseline: Side::new(|_| prepare_base("helloworld", &app1), |_| make("helloworld")),
        });
    }
    if want("uk/no-op") {
        list.push(Scenario {
            name: "uk/no-op".into(),
            description: "second build".into(),
            ours: Side::new(|_| ours(&app1), |_| ours(&app1)),
            // make settles its own .config on the first run after a fresh
            // checkout; warm it up untimed so every timed run is a no-op.
            baseline: Side::new(
                |i| if i == 0 { prepare_base("helloworld", &app1).and_then(|_| make("helloworld")).and_then(|_| make("helloworld")) } else { Ok(()) },
                |_| make("helloworld"),
            ),
        });
    }
    if want("uk/printk-flip") {
        list.push(Scenario {
            name: "uk/printk-flip".into(),
            description: "printk level flipped (CONFIG_LIBUKDEBUG_PRINTK_INFO <-> _ERR)".into(),
            ours: Side::new(|i| set_loglevel(&app1, "helloworld", FLIP_LEVELS[i % 3]).map_err(Into::into), |_| ours(&app1)),
            baseline: Side::new(|i| set_base_level(FLIP_LEVELS[i % 3]), |_| make("helloworld")),
        });
    }
    if want("uk/edit-main") {
        list.push(Scenario {
            name: "uk/edit-main".into(),
            description: "a function appended to the app's main.c".into(),
            ours: Side::new(|i| edit_main(&app1, i, "ours"), |_| ours(&app1)),
            // make's tree is built untimed (twice: see uk/no-op) when no
            // earlier scenario left one.
            baseline: Side::new(
                |i| {
                    if i == 0 {
                        prepare_base("helloworld", &app1)?;
                        make("helloworld")?;
                        make("helloworld")?;
                    }
                    edit_main(&base_app("helloworld"), i, "base")
                },
                |_| make("helloworld"),
            ),
        });
    }
    if want("uk/warm-fresh") {
        list.push(Scenario {
            name: "uk/warm-fresh".into(),
            description: "fresh output dir, warm store vs make on a fresh checkout".into(),
            ours: Side::new(|_| wipe_ours("helloworld"), |_| ours(&app1)),
            baseline: Side::new(|_| prepare_base("helloworld", &app1), |_| make("helloworld")),
        });
    }
    if want("uk/second-app") {
        list.push(Scenario {
            name: "uk/second-app".into(),
            description: "another app name, same core/musl/kconfig, warm store".into(),
            ours: Side::new(
                |i| {
                    let name = format!("hello{}", ["two", "three", "four", "five", "six"][i % 5]);
                    wipe_ours(&name)?;
                    write_app(&root.join("apps").join(&name), &root.join("app-helloworld"), &name, "err")
                },
                |i| ours(&root.join("apps").join(format!("hello{}", ["two", "three", "four", "five", "six"][i % 5]))),
            ),
            baseline: Side::new(
                |_| {
                    prepare_base("helloworld", &app1)?;
                    kraft::util::fs::copy_tree(&app2, &base_app("hellotwo"))?;
                    let cfg = config_of("helloworld")?.replace("CONFIG_UK_NAME=\"helloworld\"", "CONFIG_UK_NAME=\"hellotwo\"");
                    std::fs::write(base_build.join(".config"), cfg)?;
                    Ok(())
                },
                |_| make("hellotwo"),
            ),
        });
    }
    if want("uk/config-revert") {
        list.push(Scenario {
            name: "uk/config-revert".into(),
            description: "printk level flipped and built, then flipped back: the second build (timed) is all in the store".into(),
            ours: Side::new(
                |i| {
                    // The configuration reverted to, built first: with an
                    // earlier scenario's edit of main.c it is not yet in the
                    // store, and the timed build is to find everything there.
                    set_loglevel(&app1, "helloworld", "err")?;
                    ours(&app1)?;
                    set_loglevel(&app1, "helloworld", FLIP_LEVELS[i % 3])?;
                    ours(&app1)?;
                    set_loglevel(&app1, "helloworld", "err").map_err(Into::into)
                },
                |_| ours(&app1),
            ),
            baseline: Side::new(
                |i| {
                    if i == 0 {
                        prepare_base("helloworld", &app1)?;
                        make("helloworld")?;
                    }
                    set_base_level(FLIP_LEVELS[i % 3])?;
                    make("helloworld")?;
                    set_base_level("err")
                },
                |_| make("helloworld"),
            ),
        });
    }
    if want("uk/cold-j1") {
        list.push(Scenario {
            name: "uk/cold-j1".into(),
            description: "as uk/cold, one job on both sides: the cost per action without scheduling".into(),
            ours: Side::new(
                |_| {
                    if store_dir.exists() {
                        super::trash::discard(&store_dir)?;
                    }
                    wipe_ours("helloworld")
                },
                |_| super::process::build(&session.workspace.root, &store_dir, 1, &app1),
            ),
            baseline: Side::new(|_| prepare_base("helloworld", &app1), |_| make_j("helloworld", 1)),
        });
    }
    if let (true, Some(server), Some(_)) = (want("uk/remote-warm"), server.as_ref(), remote.as_ref()) {
        list.push(Scenario {
            name: "uk/remote-warm".into(),
            description: "empty store and output dir, team cache (nginx on loopback) filled by one build, vs make on a fresh checkout".into(),
            ours: Side::new(
                |_| {
                    // The app as the fill built it: earlier scenarios edit main.c.
                    write_app(&app1, &root.join("app-helloworld"), "helloworld", "err")?;
                    if remote_store.exists() {
                        super::trash::discard(&remote_store)?;
                    }
                    traffic_before.set(server.traffic());
                    set_store_dir(Some(remote_store.clone()));
                    wipe_ours("helloworld")
                },
                |_| {
                    let reader = super::process::Remote { url: &server.url(), trusted_keys: &trusted_keys };
                    let built = super::process::build_with(&session.workspace.root, &remote_store, jobs, &app1, Some(&reader))?;
                    anyhow::ensure!(built.remote_hits > 0, "nothing came from the team cache");
                    let traffic = server.traffic().minus(traffic_before.get());
                    record_traffic(traffic.uploaded, traffic.downloaded);
                    Ok(())
                },
            ),
            baseline: Side::new(|_| prepare_base("helloworld", &app1), |_| make("helloworld")),
        });
    }
    if let (true, Some(settings)) = (want("uk/remote-warm-reapi"), engine_read.as_ref()) {
        list.push(Scenario {
            name: "uk/remote-warm-reapi".into(),
            description: "empty store and output dir, REAPI action cache (BuildGrid on loopback) filled by one build, vs make on a fresh checkout".into(),
            ours: Side::new(
                |_| {
                    // The app as the fill built it: an engine's input root
                    // holds the whole app tree, so main.c edited by an
                    // earlier scenario changes every action's digest.
                    write_app(&app1, &root.join("app-helloworld"), "helloworld", "err")?;
                    if remote_store.exists() {
                        super::trash::discard(&remote_store)?;
                    }
                    set_store_dir(Some(remote_store.clone()));
                    wipe_ours("helloworld")
                },
                |_| {
                    let reader = super::process::Remote { url: &settings.url, trusted_keys: &trusted_keys };
                    super::process::build_with(&session.workspace.root, &remote_store, jobs, &app1, Some(&reader))?;
                    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out_of("helloworld").join("remote.json"))?)?;
                    let hits = report["cache_hits"].as_u64().unwrap_or(0);
                    anyhow::ensure!(hits > 0, "nothing came from the REAPI cache: {report}");
                    record_traffic(report["bytes_uploaded"].as_u64().unwrap_or(0), report["bytes_downloaded"].as_u64().unwrap_or(0));
                    Ok(())
                },
            ),
            baseline: Side::new(|_| prepare_base("helloworld", &app1), |_| make("helloworld")),
        });
    }
    for s in &mut list {
        log(&format!("{}: {}", s.name, s.description));
        // One scenario failing does not lose the others' results: it is
        // reported, and the bench fails at the end (see `bench::run`).
        let mut result = match measure(s, opts.runs, log) {
            Ok(result) => result,
            Err(e) => {
                log(&format!("{}: failed: {e:#}", s.name));
                failed.push(s.name.clone());
                set_store_dir(Some(store_dir.clone()));
                continue;
            }
        };
        if result.name == "uk/cold" {
            floor.set(Floor::of(&filled.state_path, CONFIG_HEADER));
            let f = floor.get();
            log(&format!("floor from uk/cold: {} of {} actions read {CONFIG_HEADER}: {:.1}s of {:.1}s busy", f.reading_actions, f.all_actions, f.reading_s, f.all_s));
        }
        if matches!(result.name.as_str(), "uk/printk-flip" | "uk/second-app" | "uk/config-revert") {
            floor_extra(&mut result);
        }
        if (result.name == "uk/cold" || result.name == "uk/remote-warm") && server.is_some() {
            result.extra.insert("fill_uploaded_mib".into(), serde_json::json!((fill_bytes.uploaded as f64 / 1048576.0).round()));
            result.extra.insert("fill_uploaded_bytes".into(), serde_json::json!(fill_bytes.uploaded));
        }
        if result.name == "uk/warm-fresh" {
            copy_floor.set(Some(copy_seconds(&out_of("helloworld").join("build"), &root.join("copy-floor"))?));
        }
        if let ("uk/warm-fresh" | "uk/remote-warm", Some(seconds)) = (result.name.as_str(), copy_floor.get()) {
            // Creating the finished build dir's files at all, with their bytes.
            result.extra.insert("copy_floor_s".into(), serde_json::json!((seconds * 100.0).round() / 100.0));
        }
        log(super::measure::format_phases(std::slice::from_ref(&result)).trim_end());
        results.push(result);
        set_store_dir(Some(store_dir.clone()));
    }
    anyhow::ensure!(failed.is_empty(), "scenarios failed: {}", failed.join(", "));
    Ok(())
}

/// Seconds to copy `dir` to `scratch` with `cp -a` (the files' bytes
/// already in the page cache). The copy stays until the next bench: deleting
/// thousands of files makes ext4 slower at creating the next ones for a
/// while, which would tax the scenarios after this one.
fn copy_seconds(dir: &Utf8Path, scratch: &Utf8Path) -> Result<f64> {
    if scratch.exists() {
        super::trash::discard(scratch)?;
    }
    let start = std::time::Instant::now();
    sh(&format!("cp -a {dir} {scratch}"), Utf8Path::new("/"))?;
    Ok(start.elapsed().as_secs_f64())
}
