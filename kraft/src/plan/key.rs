//! The plan key: blake3 over everything that can change what `make -n all`
//! prints or the prepared build dir, like cargo's fingerprints. It names a
//! cached plan in the store and is the first half of the no-op snapshot's
//! key. The table of every key and input is in [`crate::exec::fingerprint`].
//!
//! | input                         | why                                                       |
//! |-------------------------------|-----------------------------------------------------------|
//! | `PLAN_FORMAT`                 | parser or cache layout changes                            |
//! | target (plat, arch)           | selects platform/arch libraries and flags                 |
//! | defconfig (kconfig + target + `CONFIG_UK_NAME`) | the configuration                      |
//! | mount layout (lib names, app name, order) | paths in every command, `L=` order            |
//! | component identity            | caller's hash (`component_hashes`: locked tree and recipe blake3) if given, else the content of every `Makefile*`, `*.uk`, `*.mk`, `Config.uk*` below the component (not `.git`) and, for a local path component, its recipe's blake3 (`recipe:<name>` in `component_hashes`) |
//! | origin archives               | destination path and blake3 of the content                |
//! | unit rules                    | stored in the graph                                       |
//! | sandbox backend, environment  | every command sees it (`PATH`, `SOURCE_DATE_EPOCH`, ...); `none` plans embed realpaths, so with `none` the mounts' host paths too |
//! | tools                         | how the commands' `PATH` resolves make's tools and the target's compiler and binutils (every cross prefix Unikraft may pick for the arch): directories missed, link hops, and the program's size, mtime and inode. `make` runs `$(CC) --version` and `gcc_version_ge` tests, so a compiler that appears, moves or changes is a new plan |
//!
//! The **shared plan key** ([`shared_plan_key`]) names the plan in the team
//! cache. It has every field above, but tools by the blake3 of their bytes
//! instead of their stamps (inodes and mtimes differ on every machine). It
//! is computed only when the local plan cache misses, so a no-op never hashes
//! a program.
//!
//! Not in the key: source files that are not build descriptions (adding a
//! `.c` file without touching `Makefile.uk` does not change the plan, except
//! through wildcards in Makefile.uk — give `component_hashes` to be exact).

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::exec::fingerprint::toolchain::{resolve, resolve_as, ProgramId};
use crate::exec::sandbox::Sandbox;
use crate::plan::cache::fingerprint_build_files;
use crate::plan::{PlanInput, PLAN_FORMAT};

/// Programs make and Unikraft's rules run by name, whatever the target.
const HOST_TOOLS: &[&str] =
    &["make", "bash", "sh", "awk", "gawk", "sed", "grep", "find", "python3", "perl", "flex", "bison", "gcc", "cc", "cpp", "ld", "ar", "objcopy"];

/// What Unikraft prefixes to its compiler and binutils.
const PREFIXED: &[&str] = &["gcc", "gcc-ar", "gcc-nm", "ld", "as", "objcopy", "objdump", "readelf", "strip", "ar", "nm", "cpp"];

/// The `CONFIG_CROSS_COMPILE` values Unikraft's `arch/*/Compiler.uk` may
/// choose for `arch` (which one depends on what is installed).
pub fn cross_prefixes(arch: &str) -> &'static [&'static str] {
    match arch {
        "arm64" => &["aarch64-linux-gnu-", "aarch64-elf-"],
        "arm" => &["arm-linux-gnueabihf-"],
        "x86_64" => &["x86_64-linux-gnu-", "x86_64-elf-"],
        _ => &[],
    }
}

/// Every tool name the plan's make may look up for `arch`.
pub fn tool_names(arch: Option<&str>) -> Vec<String> {
    let mut names: Vec<String> = HOST_TOOLS.iter().map(|t| t.to_string()).collect();
    for prefix in arch.map(cross_prefixes).unwrap_or(&[]) {
        names.extend(PREFIXED.iter().map(|t| format!("{prefix}{t}")));
    }
    names
}

/// The commands' `PATH` in `sandbox`.
fn sandbox_path(sandbox: &Sandbox) -> String {
    sandbox.full_env().into_iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v).unwrap_or_default()
}

/// How the sandbox's `PATH` resolves `names`, with stamps (stat only).
pub fn tool_versions(sandbox: &Sandbox, arch: Option<&str>) -> String {
    resolve(&tool_names(arch), &sandbox_path(sandbox), true)
}

/// The sandbox's part of a plan key: backend, environment, and the mounts'
/// host paths when the backend is not hermetic.
pub fn sandbox_identity(sandbox: &Sandbox) -> String {
    let mut out = format!("backend={}\n", sandbox.backend());
    let env: std::collections::BTreeMap<String, String> = sandbox.full_env().into_iter().collect();
    for (k, v) in env {
        out.push_str(&format!("env {k}={v}\n"));
    }
    if sandbox.backend() != "bwrap" {
        out.push_str(&format!("hosts {}\n", sandbox.mount_map().host_digest()));
    }
    out
}

/// The plan key of `input` in `sandbox` (see the module docs).
pub fn plan_key(input: &PlanInput, sandbox: &Sandbox) -> Result<String> {
    key_with_tools(input, sandbox, &tool_versions(sandbox, Some(&input.target.arch)))
}

/// The shared plan key of `input` in `sandbox`: the plan key with tools
/// named by content, the same on every machine with the same programs.
pub fn shared_plan_key(input: &PlanInput, sandbox: &Sandbox) -> Result<String> {
    let tools = resolve_as(&tool_names(Some(&input.target.arch)), &sandbox_path(sandbox), ProgramId::Content);
    Ok(format!("shared-{}", key_with_tools(input, sandbox, &tools)?))
}

fn key_with_tools(input: &PlanInput, sandbox: &Sandbox, tools: &str) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("format", &PLAN_FORMAT.to_le_bytes());
    field("target", format!("{}/{}", input.target.plat, input.target.arch).as_bytes());
    for (k, v) in input.defconfig() {
        field("kconfig", format!("{k}={v}").as_bytes());
    }
    field("make", input.make_command().as_bytes());
    let hashes: HashMap<&str, &str> = input.component_hashes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut components = vec![("unikraft".to_string(), input.core.clone())];
    components.extend(input.libs.iter().map(|(n, d)| (format!("lib:{n}"), d.clone())));
    components.push(("app".to_string(), input.app.clone()));
    for (name, dir) in &components {
        let id = match hashes.get(name.as_str()) {
            Some(hash) => format!("hash:{hash}"),
            None => {
                let files = fingerprint_build_files(dir).with_context(|| format!("reading the build files of {dir}"))?;
                // A local path component: its recipe is not in a locked hash.
                match hashes.get(format!("recipe:{name}").as_str()) {
                    Some(recipe) => format!("files:{files}+recipe:{recipe}"),
                    None => format!("files:{files}"),
                }
            }
        };
        field(&format!("component:{name}"), id.as_bytes());
    }
    for (host, rel) in &input.origins {
        let (hash, _) = crate::util::hash::blake3_file(host).with_context(|| format!("hashing origin archive {host}"))?;
        field("origin", format!("{rel}:{hash}").as_bytes());
    }
    for (k, v) in &input.env {
        field("env", format!("{k}={v}").as_bytes());
    }
    field("units", serde_json::to_string(&input.unit_rules)?.as_bytes());
    field("sandbox", sandbox_identity(sandbox).as_bytes());
    field("tools", tools.as_bytes());
    Ok(h.finalize().to_hex()[..32].to_string())
}
