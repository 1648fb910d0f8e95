//! Typed machine messages for `--message-format json`, as cargo's
//! `machine_message`: one `Serialize` variant per event, tagged with a
//! `reason` field, one JSON object per line on stdout. The JSON of each
//! variant is pinned by a test below: scripts depend on it.

use camino::Utf8PathBuf;
use serde::Serialize;

use crate::diag::Diagnostic;

#[derive(Debug, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Message<'a> {
    /// A cargo-style status line (`Locking`, `Planned`, `Image`, ...).
    Status { verb: &'a str, message: &'a str },
    Warning { diagnostic: &'a Diagnostic, rendered: String },
    Error { rendered: String },
    /// An action that ran in the sandbox (restored and up-to-date actions
    /// are counted in `target-finished`).
    ActionFinished { action: &'a str, unit: &'a str, outcome: &'a str, seconds: f64, done: usize, total: usize },
    TargetFinished(TargetFinished<'a>),
    /// `cpu_seconds` and `peak_rss_mb`: the tool's own process, without the
    /// commands it ran.
    BuildFinished { success: bool, seconds: f64, cpu_seconds: f64, peak_rss_mb: f64 },
    /// `build --check-repro`: one per compared file.
    Repro { file: &'a str, sha256: &'a str, identical: bool },
}

/// What one target's build did.
#[derive(Debug, Serialize)]
pub struct TargetFinished<'a> {
    pub target: &'a str,
    pub image: Option<&'a Utf8PathBuf>,
    pub dbg: Option<&'a Utf8PathBuf>,
    pub plan_cached: bool,
    pub make_runs: usize,
    pub plan_seconds: f64,
    /// Files the no-op check looked at, when it found nothing to do.
    pub noop_check_files: Option<usize>,
    /// Each make run of the plan (its first argument) and its wall time.
    pub make_seconds: &'a [(String, f64)],
    pub exec_seconds: f64,
    /// The executor's busy time per phase, summed over workers.
    pub busy: crate::timings::Timings,
    pub actions: usize,
    pub run: usize,
    pub restored: usize,
    pub up_to_date: usize,
    pub files_hashed: usize,
    pub remote_hits: usize,
    pub remote_uploads: usize,
    pub units: Vec<UnitFinished<'a>>,
    pub seconds: f64,
}

/// One cache unit of a target.
#[derive(Debug, Serialize)]
pub struct UnitFinished<'a> {
    pub unit: &'a str,
    /// `built`, `cached` or `fresh`.
    pub status: &'a str,
    pub actions: usize,
    pub built: usize,
    pub cached: usize,
    pub fresh: usize,
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(message: &Message<'_>) -> String {
        serde_json::to_string(message).unwrap()
    }

    #[test]
    fn each_variant_keeps_its_json() {
        assert_eq!(json(&Message::Status { verb: "Locking", message: "m" }), r#"{"reason":"status","verb":"Locking","message":"m"}"#);
        let d = Diagnostic::new("bad");
        assert_eq!(
            json(&Message::Warning { diagnostic: &d, rendered: "bad".into() }),
            format!(r#"{{"reason":"warning","diagnostic":{},"rendered":"bad"}}"#, serde_json::to_string(&d).unwrap())
        );
        assert_eq!(json(&Message::Error { rendered: "e".into() }), r#"{"reason":"error","rendered":"e"}"#);
        assert_eq!(
            json(&Message::ActionFinished { action: "a.o", unit: "u", outcome: "ran", seconds: 0.5, done: 1, total: 2 }),
            r#"{"reason":"action-finished","action":"a.o","unit":"u","outcome":"ran","seconds":0.5,"done":1,"total":2}"#
        );
        assert_eq!(json(&Message::BuildFinished { success: true, seconds: 1.0, cpu_seconds: 0.5, peak_rss_mb: 40.0 }),
            r#"{"reason":"build-finished","success":true,"seconds":1.0,"cpu_seconds":0.5,"peak_rss_mb":40.0}"#);
        assert_eq!(
            json(&Message::Repro { file: "f", sha256: "00", identical: true }),
            r#"{"reason":"repro","file":"f","sha256":"00","identical":true}"#
        );
        let image = Utf8PathBuf::from("/t/img");
        let target = TargetFinished {
            target: "qemu/x86_64",
            image: Some(&image),
            dbg: None,
            plan_cached: true,
            make_runs: 0,
            plan_seconds: 0.0,
            noop_check_files: Some(3),
            make_seconds: &[],
            exec_seconds: 0.25,
            busy: Default::default(),
            actions: 4,
            run: 1,
            restored: 1,
            up_to_date: 2,
            files_hashed: 5,
            remote_hits: 0,
            remote_uploads: 0,
            units: vec![UnitFinished { unit: "app", status: "built", actions: 4, built: 1, cached: 1, fresh: 2, seconds: 0.5 }],
            seconds: 1.5,
        };
        assert_eq!(
            json(&Message::TargetFinished(target)),
            concat!(
                r#"{"reason":"target-finished","target":"qemu/x86_64","image":"/t/img","dbg":null,"plan_cached":true,"make_runs":0,"#,
                r#""plan_seconds":0.0,"noop_check_files":3,"make_seconds":[],"exec_seconds":0.25,"busy":{"compile_s":0.0,"link_s":0.0,"#,
                r#""script_s":0.0,"keys_s":0.0,"lookup_s":0.0,"restore_s":0.0,"store_write_s":0.0,"cache_write_s":0.0,"spawns":0},"#,
                r#""actions":4,"run":1,"restored":1,"up_to_date":2,"#,
                r#""files_hashed":5,"remote_hits":0,"remote_uploads":0,"units":[{"unit":"app","status":"built","actions":4,"#,
                r#""built":1,"cached":1,"fresh":2,"seconds":0.5}],"seconds":1.5}"#
            )
        );
    }
}
