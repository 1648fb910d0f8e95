//! The goals of issue 12, checked against a run: one line per goal, met or
//! not, and for one not met, the phase that holds it and its floor.
//!
//! | scenario          | measure                  | goal     | floor when not met |
//! |-------------------|--------------------------|----------|--------------------|
//! | `musl/cold`       | ratio                    | ≤ 1.0    | plan + action work over the jobs |
//! | `musl/warm-fresh` | ratio                    | ≤ 0.013 (the "keep") | reading and hashing every file of the fresh tree, timed in the run |
//! | `uk/cold`         | ratio                    | ≤ 0.85   | plan + action work over the jobs: what is left while make plans serially |
//! | `uk/cold`         | the tool's peak RSS      | ≤ 150 MB | — |
//! | `uk/cold`         | store size after it      | ≤ 200 MB | — |
//! | `uk/cold`         | bytes its fill uploaded  | ≤ 200 MB | — |
//! | `uk/no-op`        | seconds, whole process   | ≤ 0.020  | — |
//! | `uk/printk-flip`  | ratio                    | ≤ 0.72   | the objects that read the config header, over the jobs |
//! | `uk/second-app`   | ratio                    | ≤ 0.72   | as printk-flip |
//! | `uk/edit-main`    | ratio                    | ≤ 0.30   | the final link chain (serial) |
//! | `uk/warm-fresh`   | ratio                    | ≤ 0.03   | copying the finished build dir (`cp -a`), timed in the run |
//! | `uk/config-revert`| ratio                    | ≤ 0.1    | — (its `floor_s` is printk-flip's, a rebuild's) |
//! | `uk/remote-warm`  | ratio                    | ≤ 0.1    | as warm-fresh |
//!
//! MB here is 10^6 bytes, as in the issue. A floor is a ratio against the
//! same run's baseline.

use serde::Serialize;

use super::measure::{Phases, RunUse, ScenarioResult};

#[derive(Debug, Clone, Copy)]
enum Measure {
    Ratio,
    Seconds,
    PeakRssMb,
    StoreMb,
    UploadMb,
}

struct Goal {
    scenario: &'static str,
    measure: Measure,
    at_most: f64,
}

const GOALS: &[Goal] = &[
    Goal { scenario: "musl/cold", measure: Measure::Ratio, at_most: 1.0 },
    Goal { scenario: "musl/warm-fresh", measure: Measure::Ratio, at_most: 0.013 },
    Goal { scenario: "uk/cold", measure: Measure::Ratio, at_most: 0.85 },
    Goal { scenario: "uk/cold", measure: Measure::PeakRssMb, at_most: 150.0 },
    Goal { scenario: "uk/cold", measure: Measure::StoreMb, at_most: 200.0 },
    Goal { scenario: "uk/cold", measure: Measure::UploadMb, at_most: 200.0 },
    Goal { scenario: "uk/no-op", measure: Measure::Seconds, at_most: 0.020 },
    Goal { scenario: "uk/printk-flip", measure: Measure::Ratio, at_most: 0.72 },
    Goal { scenario: "uk/second-app", measure: Measure::Ratio, at_most: 0.72 },
    Goal { scenario: "uk/edit-main", measure: Measure::Ratio, at_most: 0.30 },
    Goal { scenario: "uk/warm-fresh", measure: Measure::Ratio, at_most: 0.03 },
    Goal { scenario: "uk/config-revert", measure: Measure::Ratio, at_most: 0.1 },
    Goal { scenario: "uk/remote-warm", measure: Measure::Ratio, at_most: 0.1 },
];

/// One goal against one run.
#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub scenario: String,
    pub measure: String,
    pub value: f64,
    pub at_most: f64,
    pub met: bool,
    /// For a goal not met: the phase of our median run that takes the most
    /// wall time, and its seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<String>,
    /// For a ratio not met: the least ratio reachable with that phase as it
    /// is (see the module docs), where one is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
}

/// Every goal whose scenario ran.
pub fn check(results: &[ScenarioResult], jobs: usize) -> Vec<Checked> {
    let jobs = jobs.max(1) as f64;
    let mut out = Vec::new();
    for goal in GOALS {
        let Some(r) = results.iter().find(|r| r.name == goal.scenario) else { continue };
        let Some(run) = median_run(r) else { continue };
        let phases = run.phases.clone().unwrap_or_default();
        let extra = |key: &str| r.extra.get(key).and_then(|v| v.as_f64());
        let value = match goal.measure {
            Measure::Ratio => r.ratio_median,
            Measure::Seconds => r.ours_median_s,
            Measure::PeakRssMb => run.peak_rss_mb * 1048576.0 / 1e6,
            Measure::StoreMb => phases.store_bytes as f64 / 1e6,
            Measure::UploadMb => match extra("fill_uploaded_bytes") {
                Some(bytes) => bytes / 1e6,
                None => continue,
            },
        };
        let met = value <= goal.at_most;
        let (mut held_by, mut floor) = (None, None);
        if !met && matches!(goal.measure, Measure::Ratio | Measure::Seconds) {
            held_by = holding_phase(&phases, jobs, run.wall_s);
            if let Measure::Ratio = goal.measure {
                let floor_s = match goal.scenario {
                    "uk/printk-flip" | "uk/second-app" => extra("floor_s"),
                    "uk/warm-fresh" | "uk/remote-warm" => extra("copy_floor_s"),
                    "musl/warm-fresh" => extra("tree_hash_floor_s"),
                    "uk/edit-main" => Some(phases.busy.link_s),
                    "uk/cold" | "musl/cold" => Some(phases.plan_s + (phases.busy.compile_s + phases.busy.link_s + phases.busy.script_s) / jobs),
                    _ => None,
                };
                floor = floor_s.map(|s| s / r.baseline_median_s);
            }
        }
        out.push(Checked {
            scenario: goal.scenario.to_string(),
            measure: format!("{:?}", goal.measure),
            value,
            at_most: goal.at_most,
            met,
            held_by,
            floor,
        });
    }
    out
}

/// The run of ours with the median wall time.
fn median_run(r: &ScenarioResult) -> Option<&RunUse> {
    let mut runs: Vec<&RunUse> = r.ours_use.iter().collect();
    runs.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    runs.get(runs.len() / 2).copied()
}

/// The phase with the most wall time: planning as timed, the executor's
/// phases as busy time over the jobs, and what the run's wall time
/// (`wall_s`) has beyond them all (starting, loading the state and the
/// plan, checking stamps, saving).
fn holding_phase(p: &Phases, jobs: f64, wall_s: f64) -> Option<String> {
    let b = &p.busy;
    let makes: Vec<String> = p.make_s.iter().map(|(what, s)| format!("{what} {s:.1}")).collect();
    let plan = if makes.is_empty() { "plan".to_string() } else { format!("plan [{}]", makes.join(", ")) };
    let mut candidates = vec![
        (plan, p.plan_s),
        ("compile".to_string(), b.compile_s / jobs),
        ("link".to_string(), b.link_s / jobs),
        ("restore".to_string(), b.restore_s / jobs),
        ("lookup".to_string(), b.lookup_s / jobs),
        ("store writes".to_string(), b.store_write_s / jobs),
        ("scripts".to_string(), b.script_s / jobs),
        ("keys".to_string(), b.keys_s / jobs),
    ];
    let accounted: f64 = candidates.iter().map(|c| c.1).sum();
    candidates.push(("outside the phases (start, state, stamps)".to_string(), (wall_s - accounted).max(0.0)));
    let (name, seconds) = candidates.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    (seconds > 0.0).then(|| format!("{name}: {seconds:.2}s"))
}

/// One line per goal.
pub fn format(checked: &[Checked]) -> String {
    let mut out = String::from("goals (issue 12):\n");
    for c in checked {
        let mut line = format!(
            "  {:<18} {:<10} {:>9.3} (goal <= {}) {}",
            c.scenario,
            c.measure,
            c.value,
            c.at_most,
            if c.met { "met" } else { "NOT MET" }
        );
        if let Some(held) = &c.held_by {
            line.push_str(&format!(" | held by {held}"));
        }
        if let Some(floor) = c.floor {
            line.push_str(&format!(" | floor {floor:.3}"));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
