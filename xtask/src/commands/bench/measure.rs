//! Benchmark harness: each scenario against its baseline, alternately, in
//! the same process, `runs` times; medians of wall times, and the per-run
//! ratio ours/baseline with its min and max. Correctness is asserted by the
//! scenarios themselves (tests), never timing.
//!
//! A scenario has an untimed `prepare` and a timed `run` for each side;
//! `prepare` brings the tree/store into the state the scenario describes
//! (fresh copy, empty store, an edited file, ...).
//!
//! Each timed run is also accounted for ([`RunUse`]): the tool's own CPU
//! against its children's (getrusage), its peak RSS, and for our side the
//! phases the build reported ([`Phases`], handed over by the scenario
//! through [`record_phases`]). A build run as a process of its own
//! ([`super::process`]) reports its own CPU and peak RSS
//! ([`record_tool_use`]); one run inside the bench is measured on the
//! bench's process (VmHWM, reset before the run).

use std::cell::RefCell;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

type Step<'a> = Box<dyn FnMut(usize) -> Result<()> + 'a>;

/// One side of a scenario: untimed preparation, timed work.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub runs: usize,
    /// Only scenarios whose name contains this.
    pub filter: Option<String>,
    pub jobs: usize,
}

impl BenchOptions {
    /// Whether scenario `name` is selected: no filter, or one of its
    /// comma-separated parts is in the name (`uk/cold$` only that name).
    pub fn wants(&self, name: &str) -> bool {
        self.filter.as_deref().is_none_or(|f| {
            f.split(',').any(|part| match part.strip_suffix('$') {
                Some(exact) => name == exact,
                None => name.contains(part),
            })
        })
    }
}

pub struct Side<'a> {
    pub prepare: Step<'a>,
    pub run: Step<'a>,
}

impl<'a> Side<'a> {
    pub fn new(prepare: impl FnMut(usize) -> Result<()> + 'a, run: impl FnMut(usize) -> Result<()> + 'a) -> Self {
        Side { prepare: Box::new(prepare), run: Box::new(run) }
    }
}

pub struct Scenario<'a> {
    pub name: String,
    pub description: String,
    pub ours: Side<'a>,
    pub baseline: Side<'a>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    pub runs: usize,
    /// Seconds, in run order.
    pub ours_s: Vec<f64>,
    pub baseline_s: Vec<f64>,
    pub ours_median_s: f64,
    pub baseline_median_s: f64,
    /// Median of the per-run ratios ours/baseline, and their range.
    pub ratio_median: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// What each run of ours used, in run order.
    pub ours_use: Vec<RunUse>,
    pub baseline_use: Vec<RunUse>,
    /// For scenarios with a known floor: notes such as the share of make's
    /// CPU spent on the objects the change reaches.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Where one of our builds spent its time (filled from the build reports).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Planning wall time (0 when the plan came from the cache or the no-op check answered).
    pub plan_s: f64,
    /// Each make run of the plan and its wall time.
    pub make_s: Vec<(String, f64)>,
    /// The executor's wall time.
    pub exec_s: f64,
    /// Busy time per phase, summed over workers.
    pub busy: kraft::timings::Timings,
    /// `busy.spawns` (plus make runs) times the measured cost of one
    /// sandbox start (see `sandbox_start_s` in the JSON's head).
    pub sandbox_start_est_s: f64,
    pub actions_run: usize,
    pub actions_restored: usize,
    /// Store size on disk after the run, and bytes sent to the remote cache.
    pub store_bytes: u64,
    pub uploaded_bytes: u64,
    pub downloaded_bytes: u64,
}

impl Phases {
    /// Add one target's build (a scenario may build several).
    pub fn add_build(&mut self, plan_s: f64, make_s: &[(String, f64)], report: &kraft::exec::BuildReport) {
        self.plan_s += plan_s;
        self.make_s.extend(make_s.iter().cloned());
        self.exec_s += report.duration.as_secs_f64();
        self.busy = self.busy.plus(&report.timings);
        self.actions_run += report.run;
        self.actions_restored += report.restored;
    }
}

/// Resources of one timed run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunUse {
    pub wall_s: f64,
    /// CPU (user + system) of the tool itself (zero for a baseline, which runs in children).
    pub self_cpu_s: f64,
    /// CPU of the commands the run waited for (compilers, make, bwrap).
    pub children_cpu_s: f64,
    /// Peak resident set of the tool during the run: the build's own
    /// process, or the bench's when the build ran inside it.
    pub peak_rss_mb: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<Phases>,
}

thread_local! {
    static PHASES: RefCell<Option<Phases>> = const { RefCell::new(None) };
    static STORE_DIR: RefCell<Option<camino::Utf8PathBuf>> = const { RefCell::new(None) };
    static SPAWN_COST_S: RefCell<f64> = const { RefCell::new(0.0) };
    static TOOL_USE: RefCell<Option<(f64, f64)>> = const { RefCell::new(None) };
}

/// The CPU seconds and peak RSS (MiB) of the build process the run in
/// progress started: they replace the bench's own.
pub fn record_tool_use(cpu_s: f64, peak_rss_mb: f64) {
    TOOL_USE.with(|t| {
        let mut t = t.borrow_mut();
        let (cpu, rss) = t.unwrap_or((0.0, 0.0));
        *t = Some((cpu + cpu_s, rss.max(peak_rss_mb)));
    });
}

/// Bytes our side sent to and fetched from a team cache in the run in
/// progress (after [`record_phases`]).
pub fn record_traffic(uploaded: u64, downloaded: u64) {
    PHASES.with(|p| {
        if let Some(p) = p.borrow_mut().as_mut() {
            p.uploaded_bytes = uploaded;
            p.downloaded_bytes = downloaded;
        }
    });
}

/// The store our side uses: its size is taken after each run (untimed).
pub fn set_store_dir(dir: Option<camino::Utf8PathBuf>) {
    STORE_DIR.with(|d| *d.borrow_mut() = dir);
}

/// What one sandbox start costs (see `account::sandbox_start_seconds`).
pub fn set_spawn_cost(seconds: f64) {
    SPAWN_COST_S.with(|c| *c.borrow_mut() = seconds);
}

/// Hand the phases of the run in progress to [`measure`] (our side calls it
/// after its builds).
pub fn record_phases(phases: Phases) {
    PHASES.with(|p| *p.borrow_mut() = Some(phases));
}

fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Reset the peak-RSS mark (`/proc/self/clear_refs`, Linux ≥ 4.0).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's VmHWM in MiB (0 where /proc is not there).
fn peak_rss_mb() -> f64 {
    kraft::timings::own_usage().1
}

/// Run `f` and say what it used.
fn metered(f: &mut dyn FnMut() -> Result<()>) -> Result<RunUse> {
    reset_peak_rss();
    PHASES.with(|p| p.borrow_mut().take());
    TOOL_USE.with(|t| t.borrow_mut().take());
    let (self0, children0) = (cpu_seconds(libc::RUSAGE_SELF), cpu_seconds(libc::RUSAGE_CHILDREN));
    let start = Instant::now();
    f()?;
    let wall_s = start.elapsed().as_secs_f64();
    let mut phases = PHASES.with(|p| p.borrow_mut().take());
    if let Some(p) = &mut phases {
        let spawns = p.busy.spawns + p.make_s.len();
        p.sandbox_start_est_s = spawns as f64 * SPAWN_COST_S.with(|c| *c.borrow());
        if let Some(dir) = STORE_DIR.with(|d| d.borrow().clone()) {
            p.store_bytes = super::account::tree_bytes(&dir);
        }
    }
    let (mut self_cpu_s, mut children_cpu_s) = (cpu_seconds(libc::RUSAGE_SELF) - self0, cpu_seconds(libc::RUSAGE_CHILDREN) - children0);
    let mut peak = peak_rss_mb();
    if let Some((cpu, rss)) = TOOL_USE.with(|t| t.borrow_mut().take()) {
        // The build was a child: its own CPU moves from the children's to the tool's.
        self_cpu_s += cpu;
        children_cpu_s -= cpu;
        peak = rss;
    }
    Ok(RunUse { wall_s, self_cpu_s, children_cpu_s, peak_rss_mb: peak, phases })
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `scenario` `runs` times, ours then baseline each time.
pub fn measure(scenario: &mut Scenario<'_>, runs: usize, log: &dyn Fn(&str)) -> Result<ScenarioResult> {
    let mut ours = Vec::new();
    let mut baseline = Vec::new();
    let mut ours_use = Vec::new();
    let mut baseline_use = Vec::new();
    for i in 0..runs {
        for (side, times, uses, label) in
            [(&mut scenario.ours, &mut ours, &mut ours_use, "ours"), (&mut scenario.baseline, &mut baseline, &mut baseline_use, "baseline")]
        {
            (side.prepare)(i)?;
            let used = metered(&mut || (side.run)(i))?;
            let t = used.wall_s;
            log(&format!(
                "  {} run {}/{runs} {label}: {t:.2}s (cpu: tool {:.2}s, children {:.2}s; peak rss {:.0} MiB)",
                scenario.name,
                i + 1,
                used.self_cpu_s,
                used.children_cpu_s,
                used.peak_rss_mb
            ));
            times.push(t);
            uses.push(used);
        }
    }
    let ratios: Vec<f64> = ours.iter().zip(&baseline).map(|(o, b)| o / b).collect();
    Ok(ScenarioResult {
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        runs,
        ours_median_s: median(&ours),
        baseline_median_s: median(&baseline),
        ratio_median: median(&ratios),
        ratio_min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratio_max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ours_s: ours,
        baseline_s: baseline,
        ours_use,
        baseline_use,
        extra: Default::default(),
    })
}

/// A table line per result.
pub fn format_table(results: &[ScenarioResult]) -> String {
    let mut out = format!(
        "{:<28} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8}\n",
        "scenario", "runs", "ours", "baseline", "ratio", "min", "max"
    );
    for r in results {
        out.push_str(&format!(
            "{:<28} {:>5} {:>9.2}s {:>9.2}s {:>8.3} {:>8.3} {:>8.3}\n",
            r.name, r.runs, r.ours_median_s, r.baseline_median_s, r.ratio_median, r.ratio_min, r.ratio_max
        ));
    }
    out
}

/// One line per scenario: where the median run of ours spent its time.
pub fn format_phases(results: &[ScenarioResult]) -> String {
    let mut out = String::new();
    for r in results {
        let mut runs: Vec<&RunUse> = r.ours_use.iter().collect();
        runs.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
        let Some(u) = runs.get(runs.len() / 2) else { continue };
        let base_cpu = median(&r.baseline_use.iter().map(|b| b.children_cpu_s).collect::<Vec<_>>());
        let mut line = format!("{:<20} {:>6.2}s", r.name, u.wall_s);
        if let Some(p) = &u.phases {
            let makes: Vec<String> = p.make_s.iter().map(|(what, s)| format!("{what} {s:.1}")).collect();
            let b = &p.busy;
            line.push_str(&format!(
                " | plan {:.1}s [{}] | exec {:.1}s: sandbox~{:.1}s ({} spawns) compile {:.1}s link {:.1}s script {:.1}s keys {:.1}s lookup {:.1}s restore {:.1}s store {:.1}s ac {:.1}s | run {} restored {}",
                p.plan_s,
                makes.join(", "),
                p.exec_s,
                p.sandbox_start_est_s,
                b.spawns,
                b.compile_s,
                b.link_s,
                b.script_s,
                b.keys_s,
                b.lookup_s,
                b.restore_s,
                b.store_write_s,
                b.cache_write_s,
                p.actions_run,
                p.actions_restored
            ));
            if p.store_bytes > 0 {
                line.push_str(&format!(" | store {:.0} MiB", p.store_bytes as f64 / 1048576.0));
            }
            if p.uploaded_bytes + p.downloaded_bytes > 0 {
                line.push_str(&format!(
                    " | up {:.0} MiB down {:.0} MiB",
                    p.uploaded_bytes as f64 / 1048576.0,
                    p.downloaded_bytes as f64 / 1048576.0
                ));
            }
        }
        line.push_str(&format!(
            " | cpu tool {:.1}s children {:.1}s (make {:.1}s) | rss {:.0} MiB",
            u.self_cpu_s, u.children_cpu_s, base_cpu, u.peak_rss_mb
        ));
        for (k, v) in &r.extra {
            line.push_str(&format!(" | {k} {v}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut n = 0u32;
        let mut s = Scenario {
            name: "x".into(),
            description: String::new(),
            ours: Side::new(|_| Ok(()), |_| Ok(())),
            baseline: Side::new(|_| Ok(()), |_| {
                n += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            }),
        };
        let r = measure(&mut s, 3, &|_| {}).unwrap();
        drop(s);
        assert_eq!(n, 3);
        assert_eq!((r.ours_s.len(), r.baseline_s.len()), (3, 3));
        assert!(r.ratio_min <= r.ratio_median && r.ratio_median <= r.ratio_max);
    }
}

impl BenchOptions {
    pub fn from_args(args: &crate::flags::BenchArgs, jobs: usize) -> BenchOptions {
        BenchOptions { runs: args.runs.max(1), filter: args.filter.clone(), jobs }
    }
}
