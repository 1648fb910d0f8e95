//! `cargo xtask worker --engine URL`: a worker for engines that schedule
//! through the Remote Workers API (BuildGrid).
//!
//! It advertises its toolchain identities (the toolchain hash a build's keys
//! use, one per compiler prefix it has) as values of the platform property
//! `kraft-toolchain`, so only actions keyed with an identical toolchain are
//! leased to it. The rest of a key's `env` (the sandbox's environment)
//! travels in the REAPI Command, and the sandbox is always bubblewrap. For each lease it links the input root out
//! of its blob cache (`<cache>/files`, `<cache>/dirs`: every blob is fetched
//! from the CAS once; inputs are read-only hard links, except those the
//! command also declares as outputs, which are copies; a directory holding
//! no output is materialised once per digest and bound read-only), and runs the command in the same bubblewrap sandbox a local
//! build uses, at the same fixed paths: the root at `/kraft`, with the core,
//! libraries and app read-only. The worker library uploads the declared
//! outputs, stdout and stderr and reports the `ActionResult`.

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use kraft_reapi::worker::{run_worker_with, ExecutorError, WorkRequest, WorkResult, WorkerConfig};

use crate::exec::fingerprint::{Toolchain, ToolchainSpec};
use crate::exec::remote::{root_inside, split_instance, TOOLCHAIN_PROPERTY};
use crate::exec::sandbox::{Mount, Sandbox};

/// Top-level directories of an input root that commands must not write.
const READ_ONLY: [&str; 3] = ["unikraft", "libs", "apps"];

/// Cross-compiler prefixes a worker offers besides the native compiler
/// (each only when its `gcc` is found on the sandbox's PATH).
const CROSS_PREFIXES: [&str; 2] = ["aarch64-linux-gnu-", "x86_64-linux-gnu-"];

/// The toolchain identities this machine offers, hex: one per compiler
/// prefix it has, computed exactly as a build computes its own (same probe,
/// same PATH, same hashing), so a lease only matches a worker whose
/// compiler a local build would have keyed the same.
pub fn toolchain_identities(scratch: &Utf8Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(scratch).with_context(|| format!("creating {scratch}"))?;
    let sandbox = Sandbox::new(vec![Mount::rw(scratch, root_inside())], Vec::new())?;
    if sandbox.backend() != "bwrap" {
        anyhow::bail!("a worker needs the bubblewrap sandbox (KRAFT_SANDBOX is `{}`)", sandbox.backend());
    }
    let path = sandbox.full_env().into_iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v).unwrap_or_default();
    let mut identities = Vec::new();
    for prefix in std::iter::once("").chain(CROSS_PREFIXES) {
        let spec = ToolchainSpec { cross_compile: prefix.to_string(), path: path.clone(), ..ToolchainSpec::default() };
        let out = sandbox.run(&Toolchain::probe_script(&spec), &root_inside())?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !text.lines().any(|l| l.starts_with(&format!("prog\t{}\t", spec.cc))) {
            continue;
        }
        let hash = |p: &Utf8Path| crate::util::hash::blake3_file(p).ok().map(|(h, _)| h);
        identities.push(Toolchain::from_probe(&spec, &text, &hash).id.to_hex().to_string());
    }
    if identities.is_empty() {
        anyhow::bail!("no C compiler found on the sandbox's PATH `{path}`");
    }
    Ok(identities)
}

/// Run one leased action in the sandbox.
fn execute(request: &WorkRequest) -> Result<WorkResult, ExecutorError> {
    let root = Utf8Path::from_path(&request.input_root).context("non-UTF-8 worker directory")?;
    let mut mounts = vec![Mount::rw(root, root_inside())];
    let mut shared = Vec::new();
    for (point, tree) in &request.shared_dirs {
        let rel = point.strip_prefix(root).map_err(|_| format!("shared dir {} outside the root", point.display()))?;
        let rel = camino::Utf8Path::from_path(rel).context("non-UTF-8 shared dir")?;
        let tree = Utf8Path::from_path(tree).context("non-UTF-8 worker cache")?;
        shared.push(rel.to_owned());
        mounts.push(Mount::ro(tree, root_inside().join(rel)));
    }
    for dir in READ_ONLY {
        if root.join(dir).is_dir() && !shared.iter().any(|s| s == dir) {
            mounts.push(Mount::ro(root.join(dir), root_inside().join(dir)));
        }
    }
    let env: Vec<(String, String)> = request
        .command
        .environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    let sandbox = Sandbox::new(mounts, env)?;
    let script = shlex::try_join(request.command.arguments.iter().map(String::as_str))
        .map_err(|e| format!("the command's arguments cannot be quoted: {e}"))?;
    let out = sandbox.run(&script, &root_inside())?;
    let exit_code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    Ok(WorkResult {
        exit_code,
        stdout: out.stdout,
        stderr: out.stderr,
        output_files: None,
    })
}

/// Serve `engine` (`grpc://host:port[/instance]`) with `jobs` parallel
/// actions, caching blobs under `cache`. Returns when the engine is gone
/// for good (after the worker library's retries).
pub fn run(engine: &str, jobs: usize, cache: &Utf8Path, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let identities = toolchain_identities(&cache.join("probe"))?;
    let (endpoint, instance) = split_instance(engine);
    let properties: Vec<(String, String)> = identities.iter().map(|id| (TOOLCHAIN_PROPERTY.to_string(), id.clone())).collect();
    let mut config = WorkerConfig::new(&endpoint, &instance, &properties, jobs);
    config.cache_dir = Some(cache.join("blobs").into_std_path_buf());
    config.work_dir = cache.join("leases").into_std_path_buf();
    config.share_dirs = true;
    config.private_dirs = vec!["build".to_string()];
    config.private_dirs_property = Some(super::PRIVATE_DIRS_PROPERTY.to_string());
    let leases: Utf8PathBuf = cache.join("leases");
    let _ = crate::util::fs::remove_tree(&leases);
    say(&format!("serving {engine} with {jobs} jobs, blob cache {cache}; kraft-toolchain values: {}", identities.join(", ")));
    run_worker_with(&config, execute).with_context(|| format!("worker for {engine}"))
}
