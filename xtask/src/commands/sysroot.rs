//! `sysroot musl`: upstream musl as a sysroot, through the same engine.

use camino::Utf8Path;
use kraft::pipeline::sysroot::{build_musl, SysrootOptions};
use kraft::session::Session;

pub fn run(session: &Session, component: &str, source: Option<&Utf8Path>, out: Option<&Utf8Path>) -> anyhow::Result<()> {
    if component != "musl" {
        anyhow::bail!("unknown sysroot component `{component}` (known: musl)");
    }
    let work = session.workspace.target_dir.join("kraft").join("musl");
    let opts = SysrootOptions {
        source: source.map(Utf8Path::to_owned),
        out: out.map(Utf8Path::to_owned).unwrap_or_else(|| work.join("sysroot")),
        work,
        jobs: session.jobs,
    };
    let fetcher = session.fetcher();
    let built = build_musl(&fetcher, &session.recipes, &opts)?;
    let r = &built.report;
    println!(
        "musl sysroot at {}: {} actions ({} compiles), {} run, {} restored, {} up to date, plan {} in {:.2}s, build {:.2}s",
        built.sysroot,
        r.total,
        built.compile_actions(),
        r.run,
        r.restored,
        r.up_to_date,
        if built.plan.cached { "cached" } else { "made" },
        built.plan.elapsed.as_secs_f64(),
        r.duration.as_secs_f64()
    );
    Ok(())
}
