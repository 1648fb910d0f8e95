//! `build`: Kraftfile → lock → verified sources → plan → graph execution →
//! `target/kraft/<app>/<plat>-<arch>/<name>_<plat>-<arch>` (and `.dbg`).
//!
//! Per target, the host side of the sandbox is laid out as
//!
//! | host                                             | sandbox                  |
//! |--------------------------------------------------|--------------------------|
//! | `<store>/trees/<blake3>` (core, read-only)        | `/kraft/unikraft`        |
//! | `<store>/trees/<blake3>` or a local dir (libs)    | `/kraft/libs/<name>`     |
//! | the app directory (read-only)                     | `/kraft/apps/<name>`     |
//! | `target/kraft/<app>/<plat>-<arch>/build`          | `/kraft/build`           |
//!
//! The engine's state (what ran, the stat cache, why) lives beside the build
//! dir in `state.json`, so it survives a re-plan that resets the build dir.

use std::time::Instant;
use std::sync::Arc;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::source::app::{fetch_app, LockedApp};
use crate::diag::Diagnostic;
use crate::pipeline::OutputDir;
use crate::output::message::{Message, TargetFinished, UnitFinished};
use crate::exec::{self, BuildReport, Event, ExecContext};
use crate::plan::graph::{ActionKind, Graph};
use crate::source::kraftfile::Target;
use crate::plan::{self, PlanInput, UnitRule};
use crate::source::recipe::ComponentKind;
use crate::exec::mounts::MountMap;
use crate::exec::sandbox::Sandbox;
use crate::session::Session;
use crate::exec::state::Outcome;

/// What one target's build produced.
#[derive(Debug)]
pub struct TargetBuild {
    pub target: String,
    pub out_dir: Utf8PathBuf,
    pub build_dir: Utf8PathBuf,
    pub state_path: Utf8PathBuf,
    pub image: Option<Utf8PathBuf>,
    pub dbg: Option<Utf8PathBuf>,
    pub plan_cached: bool,
    pub make_runs: usize,
    /// Wall time of planning (loading the cached plan on a no-op).
    pub plan_seconds: f64,
    /// Each make run of the plan (its first argument) and its wall time.
    pub make_seconds: Vec<(String, f64)>,
    /// Set when the no-op check found nothing changed: how many files it stated.
    pub noop_check: Option<usize>,
    pub report: BuildReport,
    pub graph: Graph,
    pub wall: std::time::Duration,
}

/// Everything needed to plan one target, without running make.
pub struct Prepared {
    pub input: PlanInput,
    /// The lock that pins the archives make downloads.
    pub origins: crate::source::origins::AppOrigins,
    pub out_dir: Utf8PathBuf,
    pub target: Target,
    pub image_name: String,
}

/// The targets of an app that `filter` (`qemu/x86_64`) selects.
pub fn select_targets<'a>(locked: &'a LockedApp, filter: Option<&str>) -> anyhow::Result<Vec<&'a Target>> {
    let targets: Vec<&Target> = locked.kraftfile.targets.iter().filter(|t| filter.is_none_or(|f| t.id() == f)).collect();
    if targets.is_empty() {
        let known: Vec<String> = locked.kraftfile.targets.iter().map(|t| t.id()).collect();
        return Err(Diagnostic::new(match filter {
            Some(f) => format!("{}: no target `{f}`", locked.kraftfile.path),
            None => format!("{}: no targets", locked.kraftfile.path),
        })
        .help(if known.is_empty() { "add `targets: [qemu/x86_64]` to the Kraftfile".to_string() } else { format!("targets: {}", known.join(", ")) })
        .into());
    }
    Ok(targets)
}

/// Lay out the plan input of one target from the lock and the store.
pub fn prepare(session: &Session, locked: &LockedApp, trees: &[(String, Utf8PathBuf)], target: &Target) -> anyhow::Result<Prepared> {
    let kraftfile = &locked.kraftfile;
    let app_name = kraftfile.name.clone().unwrap_or_else(|| locked.app.name.clone());
    let tree = |name: &str| trees.iter().find(|(n, _)| n == name).map(|(_, p)| p.clone());
    let core = tree("unikraft").context("the lock has no unikraft component")?;
    let mut libs = Vec::new();
    let mut origins = Vec::new();
    let mut unit_rules = Vec::new();
    let mut component_hashes = Vec::new();
    for component in &locked.lock.components {
        let kind = if component.kind == "core" { ComponentKind::Core } else { ComponentKind::Library };
        let recipe = if kind == ComponentKind::Core { session.recipes.core() } else { session.recipes.get(&component.name, kind) };
        if let Some(blake3) = &component.tree_blake3 {
            let id = if kind == ComponentKind::Core { "unikraft".to_string() } else { format!("lib:{}", component.name) };
            component_hashes.push((id, format!("{blake3}+recipe:{}", component.recipe_blake3)));
        }
        component_hashes.push((format!("recipe:{}", if kind == ComponentKind::Core { "unikraft".to_string() } else { format!("lib:{}", component.name) }), component.recipe_blake3.clone()));
        if kind == ComponentKind::Library {
            libs.push((component.name.clone(), tree(&component.name).context("component tree missing")?));
        }
        // Archives a recipe places up front; the others are learned from make.
        for archive in &component.archives {
            if let Some(dest) = recipe.placed_archives().find(|a| a.name == archive.name).and_then(|a| a.dest.as_ref()) {
                origins.push((session.store.archive_path(&archive.sha256, &archive.name), Utf8PathBuf::from(dest)));
            }
        }
        for split in &recipe.file.units.split {
            unit_rules.push(UnitRule { lib: split.library.clone(), split_by_dir_prefix: Some(format!("{}/origin/*", split.library)) });
        }
    }
    let out_dir = session.workspace.output_dir(&locked.app.name, &target.dir_name());
    // The build date is the lock's, never the clock's.
    let env = vec![("SOURCE_DATE_EPOCH".to_string(), locked.lock.source_date_epoch().unwrap_or(0).to_string())];
    // What Unikraft would take from the clock and from git, from the lock.
    let epoch = locked.lock.source_date_epoch().unwrap_or(0);
    let mut make_vars = vec![("HOSTUTC".to_string(), iso8601_utc(epoch))];
    let core_lock = locked.lock.get("unikraft");
    if let Some(version) = read_core_version(&core) {
        let sha = core_lock.and_then(|c| c.commit.as_deref()).map(|c| format!("~{}", &c[..7])).unwrap_or_default();
        make_vars.push(("UK_FULLVERSION".to_string(), format!("{version}{sha}")));
    }
    let input = PlanInput {
        core,
        libs,
        app: locked.app.dir.clone(),
        app_name: app_name.clone(),
        build: out_dir.join("build"),
        target: plan::Target::new(&target.platform, &target.architecture),
        kconfig: kraftfile.kconfig_for(target),
        origins,
        env,
        unit_rules,
        component_hashes,
        make_vars,
        jobs: session.jobs,
    };
    let image_name = format!("{app_name}_{}", target.dir_name());
    let origins = crate::source::origins::AppOrigins { app: locked.app.name.clone(), lock_path: locked.lock_path.clone() };
    Ok(Prepared { input, origins, out_dir, target: target.clone(), image_name })
}

/// `UK_VERSION.UK_SUBVERSION[.UK_EXTRAVERSION]` from the core's `version.mk`.
fn read_core_version(core: &Utf8Path) -> Option<String> {
    let text = std::fs::read_to_string(core.join("version.mk")).ok()?;
    let get = |name: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name).then(|| value.trim().to_string()).filter(|v| !v.is_empty())
        })
    };
    let mut version = format!("{}.{}", get("UK_VERSION")?, get("UK_SUBVERSION")?);
    if let Some(extra) = get("UK_EXTRAVERSION") {
        version = format!("{version}.{extra}");
    }
    Some(version)
}

/// `date -Iseconds -u` of a Unix time, without a date library.
pub fn iso8601_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Plan and run one target.
pub fn build_target(session: &Session, prepared: &Prepared) -> anyhow::Result<TargetBuild> {
    let start = Instant::now();
    let id = prepared.target.id();
    std::fs::create_dir_all(&prepared.input.build).with_context(|| format!("creating directory {}", prepared.input.build))?;
    // The mount map, built once: the sandbox, the executor and the snapshot
    // all use this one.
    let mounts = MountMap::new(prepared.input.mounts())?;
    // Whether bubblewrap works is checked only past the no-op check: a
    // no-op runs nothing.
    let sandbox = Sandbox::chosen(mounts.mounts().to_vec(), prepared.input.env.clone())?;
    let key = plan::plan_key(&prepared.input, &sandbox)?;
    // One build of a target at a time; nothing changed since the last
    // successful build? Then no plan is loaded and no action looked at.
    let out = OutputDir::open(&prepared.out_dir, &key, &mounts)?;
    if let Some(snapshot) = out.noop() {
        let installed = |name: &str| Some(prepared.out_dir.join(name)).filter(|p| p.is_file());
        let report = BuildReport { total: snapshot.actions, up_to_date: snapshot.actions, duration: start.elapsed(), ..Default::default() };
        return Ok(TargetBuild {
            target: id,
            out_dir: prepared.out_dir.clone(),
            build_dir: prepared.input.build.clone(),
            state_path: prepared.out_dir.join("state.json"),
            image: installed(&prepared.image_name),
            dbg: installed(&format!("{}.dbg", prepared.image_name)),
            plan_cached: true,
            make_runs: 0,
            plan_seconds: 0.0,
            make_seconds: Vec::new(),
            noop_check: Some(snapshot.files.len()),
            report,
            graph: Graph::default(),
            wall: start.elapsed(),
        });
    }
    sandbox.ensure_usable()?;
    // The team cache may hold this very plan (same plan key): then make does
    // not run here at all. One tier serves the plan and the actions.
    let plans = session.store.root().join("plans");
    let tier = session.remote.as_ref().map(|r| Arc::new(r.start()));
    let mut fetched_plan = None;
    let plan = out.plan(&session.store, &key, || {
        if let Some(tier) = &tier {
            match plan::bundle::fetch(tier, &plans, &key, &prepared.input, &sandbox) {
                Ok(size) => fetched_plan = size,
                Err(e) => session.output.warning(&Diagnostic::new(format!("{id}: {e:#}")).help("planning locally instead")),
            }
        }
        plan::plan_with(&prepared.input, Some(&plans), Some(&prepared.origins.bind(session)))
            .with_context(|| format!("planning {id} in {}", prepared.input.build))
    })?;
    if let Some(size) = fetched_plan.filter(|_| plan.cached) {
        session.output.status("Fetched", &format!("{id}: the plan from the team cache ({:.1} MiB; make not run)", size as f64 / 1048576.0));
    }
    if let (Some(tier), false) = (&tier, plan.cached) {
        if let Err(e) = plan::bundle::publish(tier, &plans, &key, &prepared.input, &sandbox) {
            session.output.warning(&Diagnostic::new(format!("{id}: not sharing the plan: {e:#}")));
        }
    }
    for warning in &plan.warnings {
        session.output.warning(&Diagnostic::new(format!("{id}: {warning}")).help("check the symbol's name and its dependencies in Config.uk"));
    }
    if !plan.cached {
        session.output.status("Planned", &format!("{id}: {} actions ({} make runs, {:.1}s)", plan.graph.actions.len(), plan.make_runs, plan.elapsed.as_secs_f64()));
    }
    let state_path = out.state_path();
    let output = &session.output;
    let bar = output.progress(plan.graph.actions.len());
    let progress = |event: &Event<'_>| match event {
        Event::Finished { action, outcome: Some(Outcome::Ran), duration, stderr, done, total, .. } => {
            output.message(&Message::ActionFinished {
                action: &action.name,
                unit: &action.unit,
                outcome: "ran",
                seconds: duration.as_secs_f64(),
                done: *done,
                total: *total,
            });
            bar.advance(*done, &action.name);
            if !stderr.trim().is_empty() && !output.is_json() {
                bar.println(&format!("warning: output of {}:\n{}", action.name, stderr.trim_end()));
            }
        }
        Event::Finished { action, done, .. } => bar.advance(*done, &action.name),
        _ => {}
    };
    let mut ctx = ExecContext::new(&sandbox, &session.store, state_path.clone());
    ctx.jobs = session.jobs;
    ctx.events = &progress;
    ctx.remote = session.remote.as_ref();
    ctx.remote_tier = tier.clone();
    ctx.toolchain.cross_compile = cross_compile_of(&plan.graph);
    let reapi = session.reapi.as_ref().and_then(|r| exec::remote::for_build(r, output, &plan.graph, &sandbox));
    ctx.reapi = reapi.as_ref();
    let result = exec::execute(&plan.graph, &ctx);
    let remote_report = exec::remote::finish(output, reapi.as_ref(), &prepared.out_dir);
    bar.finish();
    let mut report = result?;
    // Outputs that came from the REAPI action cache are remote hits too.
    report.remote_hits += remote_report.map_or(0, |r| r.cache_hits);

    let build_dir = prepared.input.build.clone();
    let image = install(&build_dir, &prepared.out_dir, &prepared.image_name)?;
    let dbg = install(&build_dir, &prepared.out_dir, &format!("{}.dbg", prepared.image_name))?;
    if image.is_none() && !plan.graph.actions.iter().any(|a| a.kind == ActionKind::Link) {
        session.output.warning(&Diagnostic::new(format!("{id}: the plan has no final link; no image was produced")));
    }
    let mut watched = report.watched.clone();
    watched.extend(image.iter().cloned());
    watched.extend(dbg.iter().cloned());
    out.record(report.total, report.units.len(), watched);
    Ok(TargetBuild {
        target: id,
        out_dir: prepared.out_dir.clone(),
        build_dir,
        state_path,
        noop_check: None,
        image,
        dbg,
        plan_cached: plan.cached,
        make_runs: plan.make_runs,
        plan_seconds: plan.elapsed.as_secs_f64(),
        make_seconds: plan.make_seconds.clone(),
        report,
        graph: plan.graph,
        wall: start.elapsed(),
    })
}

/// The `CROSS_COMPILE` prefix make chose, read from the first compile's
/// command (`aarch64-linux-gnu-gcc -c ...` → `aarch64-linux-gnu-`): the
/// executor identifies that toolchain.
fn cross_compile_of(graph: &Graph) -> String {
    let first = graph.actions.iter().find(|a| a.kind == ActionKind::Compile);
    let words = first.and_then(|a| crate::util::shell::split(&a.script)).unwrap_or_default();
    words
        .iter()
        .filter(|w| !w.starts_with('-'))
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .find_map(|w| w.strip_suffix("gcc").filter(|p| p.is_empty() || p.ends_with('-')))
        .unwrap_or_default()
        .to_string()
}

/// Copy a build output next to the build dir, atomically; skip if identical.
fn install(build_dir: &Utf8Path, out_dir: &Utf8Path, name: &str) -> anyhow::Result<Option<Utf8PathBuf>> {
    let from = build_dir.join(name);
    if !from.is_file() {
        return Ok(None);
    }
    let to = out_dir.join(name);
    let same = match (std::fs::metadata(&from), std::fs::metadata(&to)) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            let read = |p: &Utf8Path| std::fs::read(p).with_context(|| format!("reading {p}"));
            a.len() == b.len() && a.mtime() <= b.mtime() && read(&from)? == read(&to)?
        }
        _ => false,
    };
    if !same {
        let tmp = out_dir.join(format!(".{name}.tmp"));
        std::fs::copy(&from, &tmp).with_context(|| format!("copying {from} to {tmp}"))?;
        std::fs::rename(&tmp, &to).with_context(|| format!("renaming {tmp} to {to}"))?;
    }
    Ok(Some(to))
}

/// `cargo xtask build <app>`.
pub fn build_app(session: &Session, app: &str, target: Option<&str>) -> anyhow::Result<(LockedApp, Vec<TargetBuild>)> {
    let start = Instant::now();
    let (locked, trees) = fetch_app(session, app)?;
    let mut builds = Vec::new();
    let selected = select_targets(&locked, target)?;
    crate::doctor::require_for_build(&locked.app.name, &selected)?;
    for target in selected {
        let prepared = prepare(session, &locked, &trees, target)?;
        let build = build_target(session, &prepared)?;
        report(session, &build);
        builds.push(build);
    }
    if session.output.is_json() {
        let (cpu_seconds, peak_rss_mb) = crate::timings::own_usage();
        session.output.message(&Message::BuildFinished { success: true, seconds: start.elapsed().as_secs_f64(), cpu_seconds, peak_rss_mb });
    }
    Ok((locked, builds))
}

fn report(session: &Session, build: &TargetBuild) {
    let r = &build.report;
    if session.output.is_json() {
        let units = r
            .units
            .iter()
            .map(|u| UnitFinished {
                unit: &u.unit,
                status: u.status(),
                actions: u.total,
                built: u.built,
                cached: u.cached,
                fresh: u.fresh,
                seconds: u.wall.as_secs_f64(),
            })
            .collect();
        session.output.message(&Message::TargetFinished(TargetFinished {
            target: &build.target,
            image: build.image.as_ref(),
            dbg: build.dbg.as_ref(),
            plan_cached: build.plan_cached,
            make_runs: build.make_runs,
            plan_seconds: build.plan_seconds,
            noop_check_files: build.noop_check,
            make_seconds: &build.make_seconds,
            exec_seconds: r.duration.as_secs_f64(),
            busy: r.timings,
            actions: r.total,
            run: r.run,
            restored: r.restored,
            up_to_date: r.up_to_date,
            files_hashed: r.files_hashed,
            remote_hits: r.remote_hits,
            remote_uploads: r.remote_uploads,
            units,
            seconds: build.wall.as_secs_f64(),
        }));
        return;
    }
    if let Some(files) = build.noop_check {
        session.output.status(
            "Finished",
            &format!("{} in {:.3}s: nothing changed ({} files checked); {} actions up to date", build.target, build.wall.as_secs_f64(), files, r.total),
        );
        if let Some(image) = &build.image {
            session.output.status("Image", image.as_str());
        }
        return;
    }
    // One line per unit that did something; fresh units are summed up.
    let mut fresh_units = 0;
    for unit in &r.units {
        if unit.status() == "fresh" {
            fresh_units += 1;
        } else {
            eprintln!("{:>12} {}", "", unit);
        }
    }
    session.output.status(
        "Finished",
        &format!(
            "{} in {:.2}s: {} actions: {} run, {} from cache ({} remote), {} up to date ({} fresh units); plan {}",
            build.target,
            build.wall.as_secs_f64(),
            r.total,
            r.run,
            r.restored,
            r.remote_hits,
            r.up_to_date,
            fresh_units,
            if build.plan_cached { "cached (make not run)".to_string() } else { format!("made ({} make runs)", build.make_runs) }
        ),
    );
    if let Some(image) = &build.image {
        session.output.status("Image", image.as_str());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso8601_matches_date() {
        assert_eq!(super::iso8601_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(super::iso8601_utc(1728894760), "2024-10-14T08:32:40+00:00");
        assert_eq!(super::iso8601_utc(951782400), "2000-02-29T00:00:00+00:00");
    }
}
