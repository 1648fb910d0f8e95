//! The scheduler: runs a [`Graph`]'s actions on `-j` workers in dependency
//! order (ready actions in graph order, which is make's), collects counters
//! per unit, and saves the build state whatever happens.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fs;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use camino::{Utf8Path, Utf8PathBuf};

use crate::cache::local::ActionCache;
use crate::exec::action::{Done, Failure, Shared};
use crate::exec::in_store::InStore;
use crate::exec::fingerprint::toolchain::probe_memo;
use crate::exec::fingerprint::{env_hash, DirtyReason, Toolchain, ToolchainSpec};
use crate::exec::state::{ActionRecord, BuildState, LastBuild, LogEntry, Outcome, StatCache};
use crate::exec::{ActionFailed, BuildReport, Event, ExecContext, Runner, UnitReport};
use crate::plan::graph::{ActionId, Graph};
use crate::store::Store;

/// Actions in flight per job when most wait on a team cache.
const IN_FLIGHT_PER_JOB: usize = 4;

/// Identify the toolchain (once per build), through the stat cache. The
/// probe's output is memoized beside the state and, for a fresh output
/// dir, in the store (`probes/<blake3 of the script>.json`); each memo is
/// checked the same way (see `probe_memo`).
fn probe_toolchain(runner: &dyn Runner, spec: &ToolchainSpec, cwd: &Utf8Path, stats: &StatCache, state_memo: &Utf8Path, store: &Store) -> Toolchain {
    let script = Toolchain::probe_script(spec);
    let shared = store.root().join("probes").join(format!("{}.json", blake3::hash(script.as_bytes()).to_hex()));
    let memos = [state_memo, shared.as_path()];
    let found = memos.iter().enumerate().find_map(|(i, memo)| probe_memo::load(memo, spec, &script).map(|text| (i, text)));
    let text = match found {
        Some((at, text)) => {
            for memo in &memos[..at] {
                probe_memo::save(memo, spec, &script, &text);
            }
            text
        }
        None => {
            let (text, ran) = match runner.run(&script, cwd) {
                Ok(out) => (format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)), true),
                Err(e) => (format!("text\tprobe failed: {e}"), false),
            };
            // A probe that could not run is memoized beside the state only.
            let keep = if ran { &memos[..] } else { &memos[..1] };
            for memo in keep {
                probe_memo::save(memo, spec, &script, &text);
            }
            text
        }
    };
    Toolchain::from_probe(spec, &text, &|path| stats.hash(path.as_str(), path).ok().flatten())
}

/// Run `graph`; see the module docs.
///
/// On an action failure the error is an [`ActionFailed`] (downcast it to get
/// the details and the partial report); other errors are I/O problems of the
/// engine itself (state file, store).
pub fn execute(graph: &Graph, ctx: &ExecContext<'_>) -> anyhow::Result<BuildReport> {
    let start = Instant::now();
    let started_ns = crate::exec::state::now_ns();
    let _lock = lock_build_dir(&ctx.state_path)?;
    let mounts = ctx.runner.mounts();
    let hosts = mounts.listing();
    let BuildState { actions: mut records, stats, last_build: _, toolchain: old_toolchain, mounts: old_hosts, in_store: old_in_store } =
        BuildState::load(&ctx.state_path);
    // The stat cache is keyed by inside paths: its stamps are those of the
    // files behind the last build's mounts. Under a mount now backed by
    // another directory (another checkout, another store) they must not be
    // trusted (inodes repeat across file systems): those entries go; the
    // records stay, and contents decide.
    stats.forget_under(&mounts.moved_since(&old_hosts));

    let total = graph.actions.len();
    (ctx.events)(&Event::Planned { total });
    let identity = ctx.runner.identity();
    let mut spec = ctx.toolchain.clone();
    if let Some((_, path)) = identity.env.iter().rev().find(|(k, _)| k == "PATH") {
        spec.path = path.clone();
    }
    let toolchain = match graph.actions.first() {
        Some(first) => {
            let memo = ctx.state_path.with_file_name(format!("{}.toolchain", ctx.state_path.file_name().unwrap_or("state")));
            probe_toolchain(ctx.runner, &spec, &first.cwd, &stats, &memo, ctx.store)
        }
        None => Toolchain::from_components(Default::default()),
    };
    let remote = ctx.remote_tier.clone().or_else(|| ctx.remote.map(|r| Arc::new(r.start())));
    let clock = crate::timings::Clock::default();
    let jobs = ctx.jobs.max(1);
    let local_slots = super::slots::Slots::new(jobs);
    let cache = ActionCache::new(ctx.store).with_remote(remote.clone());
    let in_store = InStore::new(crate::exec::in_store::setting()?);
    seed_in_store(&in_store, &old_in_store, &records, ctx.store, mounts, &stats)?;
    let shared = Shared {
        in_store: &in_store,
        local_slots: &local_slots,
        clock: &clock,
        runner: ctx.runner,
        mounts,
        cache,
        stats: &stats,
        env: env_hash(&toolchain, &identity),
        reapi: ctx.reapi,
        toolchain: toolchain.id,
    };
    if !in_store.enabled() {
        // `KRAFT_MATERIALIZE=all`: what an earlier build left is written now.
        let to_host = |p: &Utf8Path| mounts.to_host(p).unwrap_or_else(|| p.to_owned());
        in_store.write_all(&shared.cache, &to_host, &stats)?;
    }

    // Dependency counts (deduplicated edges).
    let mut waiting: Vec<usize> = vec![0; total];
    let mut dependents: Vec<Vec<ActionId>> = vec![Vec::new(); total];
    for action in &graph.actions {
        let deps: BTreeSet<ActionId> = action.deps.iter().copied().filter(|d| d.0 < total && *d != action.id).collect();
        waiting[action.id.0] = deps.len();
        for d in deps {
            dependents[d.0].push(action.id);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..total).filter(|&i| waiting[i] == 0).map(Reverse).collect();

    let unit_order = graph.units();
    let unit_index: HashMap<&str, usize> = unit_order.iter().enumerate().map(|(i, (u, _))| (u.as_str(), i)).collect();
    let mut report = BuildReport {
        total,
        units: unit_order
            .iter()
            .map(|(u, ids)| UnitReport { unit: u.clone(), total: ids.len(), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    let mut unit_span: Vec<Option<(Instant, Instant)>> = vec![None; report.units.len()];
    let mut log: Vec<LogEntry> = Vec::new();
    let mut failure: Option<ActionFailed> = None;
    let mut done = 0usize;
    // With a team cache, most actions wait on the network (lookups,
    // downloads) rather than the CPU: more are in flight, and `local_slots`
    // still holds local commands to `-j`. Not with an engine: its client
    // takes `-j` as the number of actions in flight itself.
    let in_flight = if remote.as_ref().is_some_and(|r| r.enabled()) && ctx.reapi.is_none() { jobs * IN_FLIGHT_PER_JOB } else { jobs };

    type Job<'r> = (usize, Option<&'r ActionRecord>);
    type JobResult = (usize, Result<Done, Failure>, Option<DirtyReason>, Instant, Duration);

    let records_snapshot = records.clone();
    let (job_tx, job_rx) = mpsc::channel::<Job<'_>>();
    let (res_tx, res_rx) = mpsc::channel::<JobResult>();
    let job_rx = Mutex::new(job_rx);
    std::thread::scope(|scope| {
        for _ in 0..in_flight.min(total.max(1)) {
            let res_tx = res_tx.clone();
            let job_rx = &job_rx;
            let shared = &shared;
            let events = ctx.events;
            scope.spawn(move || loop {
                let job = job_rx.lock().unwrap().recv();
                let Ok((i, old)) = job else { break };
                let action = &graph.actions[i];
                let began = Instant::now();
                let why: std::cell::RefCell<Option<DirtyReason>> = Default::default();
                let announce = |reason: &DirtyReason| {
                    *why.borrow_mut() = Some(reason.clone());
                    events(&Event::Started { action, reason });
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.process(action, old, &announce)
                }))
                .unwrap_or_else(|_| Err(anyhow::anyhow!("internal error: panicked").into()));
                // Waiting for a local slot is not the action's time.
                let waited = super::slots::take_waited();
                let (began, duration) = (began + waited, began.elapsed().saturating_sub(waited));
                if res_tx.send((i, result, why.into_inner(), began, duration)).is_err() {
                    break;
                }
            });
        }
        drop(res_tx);

        let mut running = 0usize;
        loop {
            while failure.is_none() && running < in_flight {
                let Some(Reverse(i)) = ready.pop() else { break };
                let name = &graph.actions[i].name;
                job_tx.send((i, records_snapshot.get(name))).expect("workers alive");
                running += 1;
            }
            if running == 0 {
                break;
            }
            let (i, result, why, began, duration) = res_rx.recv().expect("workers alive");
            running -= 1;
            done += 1;
            let action = &graph.actions[i];
            let u = unit_index[action.unit.as_str()];
            match result {
                Ok(Done::Fresh) => {
                    report.up_to_date += 1;
                    report.units[u].fresh += 1;
                    (ctx.events)(&Event::Finished {
                        action,
                        outcome: None,
                        reason: None,
                        duration,
                        stdout: "",
                        stderr: "",
                        done,
                        total,
                    });
                }
                Ok(Done::Finished { record, outcome, reason, stdout, stderr }) => {
                    let unit = &mut report.units[u];
                    match outcome {
                        Outcome::Ran => {
                            report.run += 1;
                            unit.built += 1;
                        }
                        _ => {
                            report.restored += 1;
                            unit.cached += 1;
                        }
                    }
                    unit.busy += duration;
                    let end = began + duration;
                    let span = unit_span[u].get_or_insert((began, end));
                    span.0 = span.0.min(began);
                    span.1 = span.1.max(end);
                    (ctx.events)(&Event::Finished {
                        action,
                        outcome: Some(outcome),
                        reason: Some(&reason),
                        duration,
                        stdout: &stdout,
                        stderr: &stderr,
                        done,
                        total,
                    });
                    log.push(LogEntry {
                        name: action.name.clone(),
                        unit: action.unit.clone(),
                        outcome,
                        reason,
                        duration_ms: duration.as_millis() as u64,
                    });
                    records.insert(action.name.clone(), *record);
                }
                Err(f) => {
                    // Nothing half-written stays: delete its outputs, forget its record.
                    for out in action.outputs.iter().chain(action.depfile.iter()) {
                        if let Some(host) = mounts.to_host(out) {
                            let _ = fs::remove_file(host);
                        }
                    }
                    records.remove(&action.name);
                    let reason = why.unwrap_or(DirtyReason::NeverBuilt);
                    log.push(LogEntry {
                        name: action.name.clone(),
                        unit: action.unit.clone(),
                        outcome: Outcome::Failed,
                        reason,
                        duration_ms: duration.as_millis() as u64,
                    });
                    let err = ActionFailed {
                        name: action.name.clone(),
                        unit: action.unit.clone(),
                        cwd: action.cwd.clone(),
                        command: action.script.clone(),
                        status: f.status,
                        stdout: f.stdout,
                        stderr: f.stderr,
                        message: f.message,
                        report: BuildReport::default(),
                    };
                    (ctx.events)(&Event::Failed { action, error: &err });
                    if failure.is_none() {
                        failure = Some(err);
                    }
                    continue;
                }
            }
            for &d in &dependents[i] {
                waiting[d.0] -= 1;
                if waiting[d.0] == 0 {
                    ready.push(Reverse(d.0));
                }
            }
        }
        drop(job_tx);
    });

    let flushed = shared.cache.flush();
    for (u, span) in unit_span.iter().enumerate() {
        if let Some((a, b)) = span {
            report.units[u].wall = *b - *a;
        }
    }
    let cycle = failure.is_none() && done < total;
    if let Some(remote) = &remote {
        let stats = remote.finish();
        report.remote_hits = stats.hits;
        report.remote_uploads = stats.uploads;
        report.remote_warnings = stats.warnings;
        ctx.store.count_uploaded(stats.uploaded_bytes);
    }

    // Forget actions no longer in the graph? No: keep them (switching
    // configurations back and forth stays cheap); they cost only state size.
    let to_host = |key: &str| {
        let p = Utf8Path::new(key);
        mounts.file_for(p).unwrap_or_else(|| p.to_owned())
    };
    stats.settle(&to_host);
    report.files_hashed = stats.files_hashed();
    report.watched = stats.used_keys().iter().map(|key| to_host(key)).collect();
    report.duration = start.elapsed();
    report.timings = clock.snapshot();
    // A build that did nothing changes nothing worth writing: the records are
    // the old ones and no file was hashed. Skipping the save keeps a no-op
    // build read-only (and `explain` on the last build that did work).
    let did_nothing = report.run == 0
        && report.restored == 0
        && report.files_hashed == 0
        && failure.is_none()
        && !cycle
        && old_toolchain == toolchain.components
        && old_hosts == hosts;
    if !did_nothing {
        let state = BuildState {
            actions: records,
            stats,
            last_build: LastBuild { started_ns, succeeded: failure.is_none() && !cycle, entries: log },
            toolchain: toolchain.components.clone(),
            mounts: hosts,
            in_store: in_store.left(),
        };
        state.save(&ctx.state_path)?;
    }

    if let Some(mut f) = failure {
        f.report = report;
        return Err(f.into());
    }
    flushed?;
    if cycle {
        anyhow::bail!("dependency cycle: {} of {total} actions could not be scheduled", total - done);
    }
    Ok(report)
}

/// Hands `in_store` the outputs the last build left in the store that are
/// still absent from their path and whose bytes the store still holds (an
/// output that lost either is missing, and its action runs or restores).
/// When outputs may not stay in the store, they are written now.
fn seed_in_store(
    in_store: &InStore,
    left: &std::collections::BTreeSet<Utf8PathBuf>,
    records: &std::collections::BTreeMap<String, ActionRecord>,
    store: &crate::store::Store,
    mounts: &crate::exec::mounts::MountMap,
    stats: &StatCache,
) -> anyhow::Result<()> {
    if left.is_empty() {
        return Ok(());
    }
    let to_host = |p: &Utf8Path| mounts.to_host(p).unwrap_or_else(|| p.to_owned());
    // A path that two records name (an action renamed since) is not
    // trusted: it counts as missing.
    let mut named: std::collections::HashMap<&Utf8PathBuf, Option<&crate::exec::state::OutputRecord>> = Default::default();
    for out in records.values().flat_map(|r| &r.outputs).filter(|o| left.contains(&o.path)) {
        named.entry(&out.path).and_modify(|seen| *seen = None).or_insert(Some(out));
    }
    for out in named.into_values().flatten() {
        let blake3 = out.hash.to_hex().to_string();
        if fs::symlink_metadata(to_host(&out.path)).is_err() && store.has_blob(&blake3) {
            let output = crate::cache::local::CachedOutput { path: out.path.clone(), blake3, size: 0, mode: out.mode, sha256: None, zstd_size: None };
            in_store.seed(output, stats)?;
        }
    }
    Ok(())
}

/// One build at a time per build dir: a second one waits (see
/// [`crate::exec::lock`]).
fn lock_build_dir(state_path: &Utf8Path) -> anyhow::Result<fs::File> {
    let lock_path = Utf8PathBuf::from(format!("{state_path}.lock"));
    let dir = state_path.parent().unwrap_or(Utf8Path::new("."));
    crate::exec::lock::wait_for(&lock_path, dir)
}
