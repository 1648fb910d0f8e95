//! Keys: what decides whether work must be done again, and under which name
//! its result is shared.
//!
//! There are three keys and one snapshot. For an action, a [`Fingerprint`] is
//! the set of things its outputs depend on, each reduced to a blake3 hash;
//! the **pre-key** hashes what is known before it runs, the **action key**
//! adds the headers its depfile named (the two levels of ccache's manifest /
//! Bazel's discovered inputs: the pre-key names a manifest of header lists
//! in the action cache, each list with the headers' current hashes gives an
//! action key, which names the outputs). The **plan key**
//! ([`crate::plan::key`]) names a cached `make` plan and the prepared build
//! dir. The **no-op snapshot** ([`crate::exec::noop`]) lets a build that
//! changed nothing stop after a few thousand `stat`s.
//!
//! A fourth name, the **REAPI action digest** ([`crate::exec::remote`]),
//! names an action on a remote engine. It is not a column of the table: it is
//! made of the same inputs as the action key, spelled the REAPI way, so the
//! two agree. The script, cwd and declared outputs are the `Command`'s
//! argv and output paths; the sandbox environment is its environment; the
//! content of every input (declared inputs, dependencies' outputs, and
//! every header, since the whole core, library and app trees and the
//! prepared build dir are in the input root) is the input root's Merkle
//! digest; the toolchain id is the `kraft-toolchain` platform property;
//! the backend is always `bwrap` (a `none` build never goes remote). The
//! mount map's host directories are not in it, as in the action key. It is
//! looked up only after the local cache misses, and a remote result is
//! stored locally under the action key.
//!
//! A fifth, the **shared plan key** ([`crate::plan::key::shared_plan_key`]),
//! names a plan in the team cache (`plan::bundle`). It is the plan key's
//! column with one change: tools are named by the blake3 of their bytes, not
//! their stamps, since inodes and mtimes differ on every machine. It is
//! computed only when the local plan cache misses, so no-ops never pay for
//! it, and the fetched plan is stored locally under the plan key.
//!
//! # Every input, and which key holds it
//!
//! (cargo's fingerprint table is the model.) `✓` = the input is hashed into
//! that key; `stamp` = its stat stamp (size, mtime, ctime, inode) is
//! compared, so any change falls through to the exact check; `—` = not in it.
//! Each row has a test in `tests/keys.rs` that changes only that input.
//!
//! | input                                                         | pre-key | action key | plan key | no-op snapshot |
//! |---------------------------------------------------------------|:-------:|:----------:|:--------:|:--------------:|
//! | key format ([`KEY_VERSION`], `PLAN_FORMAT`)                   | ✓       | ✓          | ✓        | ✓ ¹            |
//! | action kind, script, cwd, declared outputs, depfile path      | ✓ ²     | ✓          | —        | ✓ ¹            |
//! | content of each declared input (sources, deps' outputs)       | ✓ ³     | ✓          | —        | stamp          |
//! | content of each header a depfile named under `/kraft`         | —       | ✓          | —        | stamp          |
//! | content of each file outside `/kraft` a depfile names (host headers) | — | ✓ ⁴       | —        | stamp          |
//! | content of each file outside `/kraft` a link command names    | ✓ ⁴     | ✓          | —        | stamp          |
//! | commands' `PATH` (`KRAFT_SANDBOX_PATH`) and `CROSS_COMPILE`    | ✓ ⁵     | ✓          | ✓        | ✓ ¹            |
//! | each link from a tool name to its program, and misses earlier in `PATH` | ✓ ⁵ | ✓   | ✓ (stamps) | ✓ ¹          |
//! | toolchain programs' bytes (driver, cc1, as, ld, libgcc, binutils) and version text | ✓ ⁵ | ✓ | stamp ⁶ | stamp       |
//! | sandbox environment (SOURCE_DATE_EPOCH, PATH, LC_ALL, TZ, HOME, passed vars) | ✓ | ✓ | ✓        | ✓ ¹            |
//! | sandbox backend (`bwrap` / `none`)                            | ✓       | ✓          | ✓        | ✓ ¹            |
//! | mount layout inside (`/kraft/libs/<name>`, app name, `L=` order) | ✓ ²  | ✓          | ✓        | ✓ ¹            |
//! | mount map: host directory behind each mount (app, core, libs, build) | ⁷ | ⁷         | ⁷        | ✓ ⁸            |
//! | sysroot's mount map: host directory of `--source` and the work dir | ⁷   | ⁷          | ⁷        | ✓ ¹⁰           |
//! | target (plat/arch), kconfig, `CONFIG_UK_NAME`                  | ⁹       | ⁹          | ✓        | ✓ ¹            |
//! | component identity (tree + recipe blake3, or build files)     | ⁹       | ⁹          | ✓        | ✓ ¹            |
//! | a local path component's build files (`Makefile*`, `*.uk`) and recipe blake3 | ⁹ | ⁹   | ✓        | ✓ ¹            |
//! | origin archives (destination, content)                        | ⁹       | ⁹          | ✓        | ✓ ¹            |
//! | make command line and vars (`HOSTUTC`, `UK_FULLVERSION`), unit rules | ⁹ | ⁹         | ✓        | ✓ ¹            |
//! | every output of the last build, the installed image and `.dbg` | —      | —          | —        | stamp          |
//!
//! 1. The snapshot's key is the plan key plus the mount map's host digest, so
//!    whatever the plan key holds, the snapshot holds.
//! 2. Paths are inside paths (`/kraft/...`): two checkouts, stores or
//!    workspaces share action keys. With the non-sandboxed backend the host
//!    root in the script is first rewritten to `/kraft`.
//! 3. By content, not by time: a dependency rewritten byte for byte the same
//!    leaves its dependents' keys unchanged (early cutoff).
//! 4. Host headers (`/usr/include`, gcc's own `include/`) for `linuxu` and
//!    any host include, and host libraries on a link line: hashed through
//!    the stat cache, so a no-op reads none of them.
//! 5. One [`Toolchain`] id: the probe (run in the sandbox, remembered
//!    beside the state and in the store's `probes/` while
//!    [`toolchain::resolve`]'s stat-only view and the stamps of the
//!    programs it named are unchanged) reports how
//!    each name resolved (every hop) and which programs the driver runs;
//!    their bytes are hashed through the stat cache.
//! 6. The plan key does not read programs (a no-op must not hash a 30 MB
//!    `cc1`): it stats the resolution of make's tools and the target's
//!    compiler and binutils, cross prefixes included. A touched compiler
//!    re-plans; it does not re-run any action.
//!
//! Files: `depfile` (reading `-MD` depfiles), `dirty_reason` (why an action
//! ran, one enum), `toolchain` (how a program name resolves, every hop, and
//! the programs' identity).
//! 7. Every mount is at a fixed inside path, so under bwrap outputs do not
//!    depend on where the sources live, and two checkouts share cached
//!    objects and plans. With `none` (not hermetic, warned about) scripts
//!    and depfiles are rewritten to inside paths and actions still share
//!    keys across checkouts; only the plan key takes the host paths then,
//!    since make's realpaths end up in the prepared build dir.
//! 8. What trusts the target dir must know whose files it stamped: the
//!    snapshot names host paths, and the build state's stat cache is keyed
//!    by inside paths, so its entries under a mount now backed by another
//!    directory are dropped (and those files hashed again).
//! 9. Reach actions through what they read: the kconfig through the
//!    generated `config.h` and `.config` (declared inputs or depfile
//!    headers), components through their files, archives through the
//!    sources unpacked from them, make's variables through the scripts.
//! 10. `cargo xtask sysroot` goes through the same [`crate::pipeline::OutputDir`]
//!    as `build`, keyed by its plan key and its mount map's host digest: a
//!    `--source` tree copied elsewhere is not a no-op for the work dir (the
//!    snapshot stamped the other tree's files), yet it shares the plan and
//!    every action.
//!
//! Tests (`tests/keys.rs`), row by row: `key_format_version_is_in_every_key`,
//! `command_line`, `declared_input_and_header_under_kraft` (rows 3-4),
//! `host_header_named_by_a_depfile`, `host_file_on_a_link_line`,
//! `toolchain_path_links_and_program_bytes` (rows 7-9),
//! `sandbox_environment_and_backend` (rows 10-11),
//! `kconfig_component_recipe_and_installed_image` (inside layout, kconfig,
//! components, recipes, the installed image),
//! `local_component_build_files_and_recipe_replan`,
//! `mount_map_two_checkouts_share_objects_but_not_snapshots`,
//! `sysroot_mount_map_in_the_noop_key`, and
//! `what_is_in_no_key_runs_nothing`. `tests/exact.rs` runs the whole
//! mutation corpus (`cargo xtask check-exact`) against clean builds.
//!
//! Not in any key, on purpose (tests change each and expect no action to
//! run): timestamps (a `touch` is re-hashed and found equal), the store's
//! path (a new store re-plans into that store; no action runs), the target
//! dir's and the workspace's host paths beyond the mount map, and the
//! caller's environment variables other than `KRAFT_SANDBOX_PATH` and
//! `KRAFT_SANDBOX` (the sandbox clears them), and where an origin archive's
//! bytes come from (`KRAFT_ARCHIVE_DIR`, a mirror, the URL): the lock's
//! sha256 says which bytes; once the store holds them nothing else is read,
//! and other bytes under the same URL fail the fetch naming both hashes
//! (the `origin:` mutations of `check-exact`). How a command is started is
//! not in any key either: a sandbox of its own or a worker's resident one,
//! bash or (for one plain program) a direct exec with bash's `PWD`, `SHLVL`
//! and `_` (`exec::resident`), and `-j` for the plan's `defconfig` and
//! `fetch prepare`. Each gives the command the same files, environment and
//! arguments: `tests/sandbox.rs` compares the answers of both sandboxes, and
//! `two_clean_builds_in_different_places_are_bit_identical` builds one way
//! and the other. Nor whether an origin archive was pinned before `make
//! fetch` ran or while it waited for it (`plan::fetches`): the stand-in
//! copies the same bytes into place either way
//! (`an_archive_chosen_by_kconfig_is_locked_built_and_rebuilt_offline`
//! compares the images), nor when an output's blob reaches the store (at
//! once, or by the background writer for large ones: keys use the hash
//! taken when the action ends), nor whether an output was written into
//! the build dir or left in the store (`exec::in_store`): a left output's
//! hash is the one its blob is named by, read and verified when it is
//! left (or found unchanged since it last was: `store::verified`; a blob
//! written into the build dir is hashed as it is written all the same),
//! and every left output is written before any command runs
//! (`fresh_checkout_with_a_warm_store_runs_nothing`,
//! `a_command_after_a_build_that_left_objects_in_the_store_sees_them_all`).
//! `KRAFT_MATERIALIZE=all` is in the no-op snapshot's key only, so
//! switching to it writes what an earlier build left. The bash stand-in of
//! planning sandboxes (`exec::resident::shell`) is in no key: make prints
//! and leaves the same with it (`the_bash_stand_in_answers_as_bash`).
//! Still not covered: tools other
//! than the toolchain that a `Script` action runs (python, sed) are known to
//! the plan key only by their stamps, and a header newly created earlier in
//! the include path than the one last found is not noticed (as with ccache).

pub mod depfile;
pub mod dirty_reason;
pub mod toolchain;

use std::collections::HashMap;

use camino::Utf8PathBuf;

use crate::plan::graph::Action;

pub use depfile::{normalize, parse_depfile};
pub use dirty_reason::DirtyReason;
pub use toolchain::{Toolchain, ToolchainSpec};

pub type Hash = blake3::Hash;

/// Bump when anything about how keys are computed changes.
pub const KEY_VERSION: &str = "kraft-xtask action key v2";

/// Everything an action's outputs depend on, as hashes. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub script: Hash,
    pub env: Hash,
    /// Known inputs in graph order; `None` = the file did not exist.
    pub inputs: Vec<(Utf8PathBuf, Option<Hash>)>,
    /// Discovered inputs (depfile), sorted by path; `None` = did not exist.
    pub discovered: Vec<(Utf8PathBuf, Option<Hash>)>,
}

pub(crate) fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn put_files(h: &mut blake3::Hasher, files: &[(Utf8PathBuf, Option<Hash>)]) {
    h.update(&(files.len() as u64).to_le_bytes());
    for (path, hash) in files {
        put(h, path.as_str().as_bytes());
        match hash {
            Some(hash) => {
                h.update(&[1]);
                h.update(hash.as_bytes());
            }
            None => {
                h.update(&[0]);
            }
        }
    }
}

/// Hash of an action's command: kind, script, cwd, outputs, depfile.
///
/// `script` is the action's script in inside (`/kraft`) form: the graph's
/// text, passed through the non-sandboxed backend's host → inside rewrite.
pub fn script_hash(action: &Action, script: &str) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
    put(&mut h, b"script");
    put(&mut h, format!("{:?}", action.kind).as_bytes());
    put(&mut h, script.as_bytes());
    put(&mut h, action.cwd.as_str().as_bytes());
    h.update(&(action.outputs.len() as u64).to_le_bytes());
    for o in &action.outputs {
        put(&mut h, o.as_str().as_bytes());
    }
    put(&mut h, action.depfile.as_ref().map_or("", |d| d.as_str()).as_bytes());
    h.finalize()
}

/// What the `env` field covers besides the toolchain: the sandbox backend
/// and the commands' whole environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxIdentity {
    /// `bwrap` or `none`.
    pub backend: String,
    /// The commands' environment (PATH, LC_ALL, TZ, HOME,
    /// SOURCE_DATE_EPOCH, anything the caller passed), sorted by name.
    pub env: Vec<(String, String)>,
}

/// The `env` field: toolchain identity and the sandbox's identity.
pub fn env_hash(toolchain: &Toolchain, sandbox: &SandboxIdentity) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
    put(&mut h, b"env");
    h.update(toolchain.id.as_bytes());
    put(&mut h, sandbox.backend.as_bytes());
    h.update(&(sandbox.env.len() as u64).to_le_bytes());
    for (k, v) in &sandbox.env {
        put(&mut h, k.as_bytes());
        put(&mut h, v.as_bytes());
    }
    h.finalize()
}

impl Fingerprint {
    /// Key of everything known before running (names the manifest).
    pub fn prekey(&self) -> Hash {
        let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
        put(&mut h, b"prekey");
        h.update(self.script.as_bytes());
        h.update(self.env.as_bytes());
        put_files(&mut h, &self.inputs);
        h.finalize()
    }

    /// The action key (names the outputs in the action cache).
    pub fn key(&self) -> Hash {
        key_from(self.prekey(), &self.discovered)
    }

    /// Why an action whose last build had fingerprint `old` must be brought
    /// up to date, or `None` if this fingerprint is the same.
    pub fn compare(&self, old: &Fingerprint) -> Option<DirtyReason> {
        if self.script != old.script {
            return Some(DirtyReason::ScriptChanged);
        }
        if self.env != old.env {
            return Some(DirtyReason::ToolchainChanged);
        }
        if let Some(r) = compare_files(&self.inputs, &old.inputs, false) {
            return Some(r);
        }
        compare_files(&self.discovered, &old.discovered, true)
    }
}

/// The key for a pre-key and a set of discovered inputs (sorted by path).
pub fn key_from(prekey: Hash, discovered: &[(Utf8PathBuf, Option<Hash>)]) -> Hash {
    let mut h = blake3::Hasher::new_derive_key(KEY_VERSION);
    put(&mut h, b"key");
    h.update(prekey.as_bytes());
    put_files(&mut h, discovered);
    h.finalize()
}

fn compare_files(
    new: &[(Utf8PathBuf, Option<Hash>)],
    old: &[(Utf8PathBuf, Option<Hash>)],
    header: bool,
) -> Option<DirtyReason> {
    // The common case (nothing changed) in one linear pass over the bytes;
    // `Path` comparison walks components and is far slower.
    let same = |(a, x): &(Utf8PathBuf, Option<Hash>), (b, y): &(Utf8PathBuf, Option<Hash>)| a.as_str() == b.as_str() && x == y;
    if new.len() == old.len() && new.iter().zip(old).all(|(n, o)| same(n, o)) {
        return None;
    }
    let old_map: HashMap<&str, &Option<Hash>> = old.iter().map(|(p, h)| (p.as_str(), h)).collect();
    let new_map: HashMap<&str, &Option<Hash>> = new.iter().map(|(p, h)| (p.as_str(), h)).collect();
    for (path, hash) in new {
        match old_map.get(path.as_str()) {
            None => return Some(DirtyReason::InputAdded { path: path.clone() }),
            Some(old_hash) if *old_hash != hash => {
                let (old, new) = (hex(old_hash), hex(hash));
                let path = path.clone();
                return Some(if header {
                    DirtyReason::HeaderChanged { path, old, new }
                } else {
                    DirtyReason::InputChanged { path, old, new }
                });
            }
            Some(_) => {}
        }
    }
    for (path, _) in old {
        if !new_map.contains_key(path.as_str()) {
            return Some(DirtyReason::InputRemoved { path: path.clone() });
        }
    }
    if new.iter().map(|(p, _)| p.as_str()).ne(old.iter().map(|(p, _)| p.as_str())) {
        return Some(DirtyReason::InputsReordered);
    }
    None
}

fn hex(h: &Option<Hash>) -> Option<String> {
    h.map(|h| h.to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_reports_first_change() {
        let h = |s: &str| Some(blake3::hash(s.as_bytes()));
        let a = Fingerprint {
            script: blake3::hash(b"s"),
            env: blake3::hash(b"e"),
            inputs: vec![("/kraft/a.c".into(), h("1"))],
            discovered: vec![("/kraft/a.h".into(), h("1"))],
        };
        let mut b = a.clone();
        assert_eq!(b.compare(&a), None);
        b.discovered[0].1 = h("2");
        assert!(matches!(b.compare(&a), Some(DirtyReason::HeaderChanged { .. })));
        assert_ne!(a.key(), b.key());
        assert_eq!(a.prekey(), b.prekey());
    }
}

