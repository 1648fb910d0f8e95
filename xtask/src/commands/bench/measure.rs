//! Benchmark harness: each scenario against its baseline, alternately, in
//! the same process, `runs` times; medians of wall times, and the per-run
//! ratio ours/baseline with its min and max. Correctness is asserted by the
//! scenarios themselves (tests), never timing.
//!
//! A scenario has an untimed `prepare` and a timed `run` for each side;
//! `prepare` brings the tree/store into the state the scenario describes
//! (fresh copy, empty store, an edited file, ...).

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
    for i in 0..runs {
        for (side, times, label) in [(&mut scenario.ours, &mut ours, "ours"), (&mut scenario.baseline, &mut baseline, "baseline")] {
            (side.prepare)(i)?;
            let start = Instant::now();
            (side.run)(i)?;
            let t = start.elapsed().as_secs_f64();
            log(&format!("  {} run {}/{runs} {label}: {t:.2}s", scenario.name, i + 1));
            times.push(t);
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
