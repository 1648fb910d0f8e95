//! Bringing one action up to date: fingerprint it, compare with its last
//! record, look it up in the action cache, or run it and store its outputs.

use std::collections::BTreeSet;
use std::fs;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use crate::cache::local::{ActionCache, CachedOutput, Entry};
use crate::exec::fingerprint::{self, key_from, DirtyReason, Fingerprint, Hash};
use crate::exec::mounts::MountMap;
use crate::exec::state::{ActionRecord, Outcome, OutputRecord, StatCache};
use crate::exec::Runner;
use crate::plan::graph::{Action, ActionKind, SANDBOX_ROOT};
use crate::timings::Phase;

/// Read-only context shared by workers.
pub(crate) struct Shared<'a> {
    pub runner: &'a dyn Runner,
    /// The runner's mount map (looked up once, used for every file).
    pub mounts: &'a MountMap,
    pub cache: ActionCache,
    pub stats: &'a StatCache,
    pub env: Hash,
    /// Busy time per phase (see [`crate::timings`]).
    pub clock: &'a crate::timings::Clock,
    /// The REAPI engine, tried after a local cache miss.
    pub reapi: Option<&'a crate::exec::remote::Remote>,
    /// The toolchain's identity alone (the remote platform property; the
    /// sandbox's part of `env` travels in the REAPI Command itself).
    pub toolchain: Hash,
    /// At most `-j` local commands at once (more actions may be in flight
    /// when they mostly wait on a team cache or an engine).
    pub local_slots: &'a super::slots::Slots,
    /// Outputs restored from the cache but left in the store.
    pub in_store: &'a super::in_store::InStore,
}

pub(crate) enum Done {
    Fresh,
    Finished { record: Box<ActionRecord>, outcome: Outcome, reason: DirtyReason, stdout: String, stderr: String },
}

pub(crate) struct Failure {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub message: Option<String>,
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure { status: None, stdout: String::new(), stderr: String::new(), message: Some(format!("{e:#}")) }
    }
}

impl Shared<'_> {
    /// Host path of an inside path (outputs, depfiles: always in a mount).
    fn host(&self, inside: &Utf8Path) -> anyhow::Result<Utf8PathBuf> {
        self.mounts.to_host(inside).with_context(|| format!("{inside} is not in any sandbox mount"))
    }

    /// Content hash of a file an action names: under `/kraft` through the
    /// mount map, elsewhere (host headers and libraries) at its own path.
    fn hash(&self, path: &Utf8Path) -> anyhow::Result<Option<Hash>> {
        if let Some(seen) = self.stats.seen(path.as_str()) {
            return Ok(seen);
        }
        let host = self.mounts.file_for(path).with_context(|| format!("{path} is not in any sandbox mount"))?;
        self.stats.hash(path.as_str(), &host).with_context(|| format!("hashing {host} (for {path})"))
    }

    /// Text the commands printed or wrote, with host paths mapped back to
    /// inside paths (only the non-hermetic backend sees host paths).
    fn inside_text(&self, text: &str) -> String {
        if self.runner.hermetic() {
            text.to_string()
        } else {
            self.mounts.rewrite_to_inside(text)
        }
    }

    /// Files outside `/kraft` that a link command names (host libraries such
    /// as libgcc on a `linuxu` link line): inputs like the declared ones.
    fn host_inputs(&self, action: &Action, script: &str) -> Vec<Utf8PathBuf> {
        if !matches!(action.kind, ActionKind::Link | ActionKind::PartialLink) {
            return Vec::new();
        }
        let words = crate::util::shell::split(script).unwrap_or_default();
        let mut found = Vec::new();
        for word in words {
            let path = Utf8Path::new(word.strip_prefix("-Wl,").unwrap_or(&word));
            if path.is_absolute()
                && !path.starts_with(SANDBOX_ROOT)
                && !found.iter().any(|f: &Utf8PathBuf| f == path)
                && path.is_file()
            {
                found.push(path.to_owned());
            }
        }
        found
    }

    fn hash_all(&self, paths: &[Utf8PathBuf]) -> anyhow::Result<Vec<(Utf8PathBuf, Option<Hash>)>> {
        paths.iter().map(|p| Ok((p.clone(), self.hash(p)?))).collect()
    }

    /// Bring one action up to date. `old` is its record from the last build.
    pub fn process(
        &self,
        action: &Action,
        old: Option<&ActionRecord>,
        started: &dyn Fn(&DirtyReason),
    ) -> Result<Done, Failure> {
        let script = self.inside_text(&action.script);
        let mut inputs = action.inputs.clone();
        inputs.extend(self.host_inputs(action, &script));
        let mut fp = Fingerprint {
            script: fingerprint::script_hash(action, &script),
            env: self.env,
            inputs: self.clock.time(Phase::Keys, || self.hash_all(&inputs))?,
            discovered: Vec::new(),
        };
        let reason = match old {
            None => DirtyReason::NeverBuilt,
            Some(rec) => {
                if action.depfile.is_some() {
                    let paths: Vec<Utf8PathBuf> = rec.fingerprint.discovered.iter().map(|(p, _)| p.clone()).collect();
                    fp.discovered = self.hash_all(&paths)?;
                }
                if let Some(reason) = fp.compare(&rec.fingerprint) {
                    reason
                } else if rec.key != fp.key() {
                    DirtyReason::KeyFormatChanged
                } else if let Some(reason) = self.check_outputs(rec)? {
                    reason
                } else {
                    return Ok(Done::Fresh);
                }
            }
        };

        // Action cache: candidate header sets, the last build's first.
        let prekey = fp.prekey();
        let mut candidates: Vec<Vec<(Utf8PathBuf, Option<Hash>)>> = Vec::new();
        if action.depfile.is_some() {
            if old.is_some() {
                candidates.push(fp.discovered.clone());
            }
            for paths in self.cache.manifest(&prekey) {
                if candidates.iter().any(|c| c.iter().map(|(p, _)| p).eq(paths.iter())) {
                    continue;
                }
                candidates.push(self.hash_all(&paths)?);
            }
            // A depfile naming no header under the sandbox root (a source
            // including nothing) leaves no manifest entry: try the empty set.
            if !candidates.iter().any(|c| c.is_empty()) {
                candidates.push(Vec::new());
            }
        } else {
            candidates.push(Vec::new());
        }
        for discovered in candidates {
            let key = key_from(prekey, &discovered);
            let Some(entry) = self.clock.time(Phase::Lookup, || self.cache.get(&key)) else { continue };
            if !entry.discovered.iter().eq(discovered.iter().map(|(p, _)| p))
                || !entry.outputs.iter().map(|o| &o.path).eq(action.outputs.iter())
            {
                continue;
            }
            let to_host = |p: &Utf8Path| self.mounts.to_host(p).unwrap_or_else(|| p.to_owned());
            let mut outputs = Vec::new();
            let left = self.in_store.may_leave(action.kind, &entry.outputs, &to_host)
                && self.clock.time(Phase::Restore, || -> anyhow::Result<bool> {
                    Ok(self.cache.holds_outputs(&entry)? && self.in_store.leave(&entry.outputs, self.stats)?)
                })?;
            if left {
                for out in &entry.outputs {
                    let hash = Hash::from_hex(&out.blake3).context("a cache entry with a malformed blob hash")?;
                    outputs.push(OutputRecord { path: out.path.clone(), hash, mode: out.mode });
                }
            } else {
                let Some(restored) = self.clock.time(Phase::Restore, || self.cache.restore(&entry, &to_host))? else { continue };
                for r in restored {
                    self.stats.record(r.path.as_str(), &r.host, r.stamp, r.hash, r.hashed_at_ns);
                    outputs.push(OutputRecord { path: r.path, hash: r.hash, mode: r.mode });
                }
            }
            fp.discovered = discovered;
            let record = Box::new(ActionRecord { key: fp.key(), fingerprint: fp, outputs });
            return Ok(Done::Finished {
                record,
                outcome: Outcome::Restored,
                reason,
                stdout: entry.stdout,
                stderr: entry.stderr,
            });
        }

        // Run, in the build dir a build that restored everything would
        // show the command.
        let to_host = |p: &Utf8Path| self.mounts.to_host(p).unwrap_or_else(|| p.to_owned());
        self.clock.time(Phase::Restore, || self.in_store.write_all(&self.cache, &to_host, self.stats))?;
        started(&reason);
        // Outputs that are also inputs are updated in place (objcopy
        // --update-section, multiboot.py on the image): keep them.
        let mut to_clear: Vec<&Utf8PathBuf> = action.outputs.iter().filter(|o| !action.inputs.contains(o)).collect();
        to_clear.extend(action.depfile.iter());
        for out in to_clear {
            let host = self.host(out)?;
            if let Some(dir) = host.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
            }
            match fs::remove_file(&host) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(anyhow::Error::new(e).context(format!("removing stale {host}")).into()),
            }
        }
        let waited_before = super::slots::waited();
        let local = || {
            let _slot = self.local_slots.take();
            let starts = super::sandbox::starts_on_this_thread();
            let output = self.runner.run(&action.script, &action.cwd);
            self.clock.note_spawns(super::sandbox::starts_on_this_thread() - starts);
            output
        };
        let began = std::time::Instant::now();
        let (output, remote_hit) = match self.reapi {
            Some(reapi) => reapi.run(action, &self.toolchain, &local)?,
            None => (local()?, false),
        };
        // A REAPI cache hit is a lookup (with its download), not a command.
        self.clock.add(if remote_hit { Phase::Lookup } else { Phase::of(action.kind) }, began.elapsed().saturating_sub(super::slots::waited() - waited_before));
        let stdout = self.inside_text(&String::from_utf8_lossy(&output.stdout));
        let stderr = self.inside_text(&String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(Failure { status: output.status.code(), stdout, stderr, message: None });
        }
        let fail = |message: String| Failure {
            status: Some(0),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            message: Some(message),
        };
        for out in &action.outputs {
            let host = self.host(out)?;
            if !host.is_file() {
                return Err(fail(format!("it did not write its declared output {out}")));
            }
        }
        if let Some(depfile) = &action.depfile {
            let host = self.host(depfile)?;
            let text = match fs::read(&host) {
                Ok(bytes) => self.inside_text(&String::from_utf8_lossy(&bytes)),
                Err(e) => return Err(fail(format!("cannot read its depfile {depfile}: {e}"))),
            };
            let paths = self.discovered_inputs(action, &text);
            fp.discovered = self.hash_all(&paths)?;
        }
        let mut outputs = Vec::new();
        let mut cached = Vec::new();
        let mut pending = Vec::new();
        for out in &action.outputs {
            let host = self.host(out)?;
            let hashed_at = crate::exec::state::now_ns();
            // With an engine, its inputs are read from the store: no deferring.
            let (c, stamp, blob) = self.clock.time(Phase::StoreWrite, || self.cache.store_output_or_defer(out, &host, self.reapi.is_none()))?;
            pending.extend(blob);
            let hash = Hash::from_hex(&c.blake3).context("store returned a malformed blob hash")?;
            self.stats.note_hashed();
            self.stats.record(out.as_str(), &host, stamp, hash, hashed_at);
            outputs.push(OutputRecord { path: out.clone(), hash, mode: c.mode });
            cached.push(c);
        }
        let key = fp.key();
        self.clock.time(Phase::CacheWrite, || self.write_cache(&key, &prekey, &fp, cached, pending, &stdout, &stderr))?;
        let record = Box::new(ActionRecord { key, fingerprint: fp, outputs });
        let outcome = if remote_hit { Outcome::Restored } else { Outcome::Ran };
        Ok(Done::Finished { record, outcome, reason, stdout, stderr })
    }

    fn write_cache(
        &self,
        key: &Hash,
        prekey: &Hash,
        fp: &Fingerprint,
        outputs: Vec<CachedOutput>,
        pending: Vec<crate::cache::local::PendingBlob>,
        stdout: &str,
        stderr: &str,
    ) -> anyhow::Result<()> {
        let discovered: Vec<Utf8PathBuf> = fp.discovered.iter().map(|(p, _)| p.clone()).collect();
        let entry = Entry { outputs, discovered: discovered.clone(), stdout: stdout.into(), stderr: stderr.into() };
        self.cache.put_after_blobs(key, &entry, pending)?;
        if !discovered.is_empty() {
            self.cache.add_to_manifest(prekey, &discovered)?;
        }
        Ok(())
    }

    /// Depfile prerequisites that count as discovered inputs: not already
    /// known inputs or own outputs; sorted. Files outside `/kraft` (host
    /// headers) count too: a `linuxu` build or a host include reads them.
    fn discovered_inputs(&self, action: &Action, depfile: &str) -> Vec<Utf8PathBuf> {
        let known: BTreeSet<&Utf8Path> =
            action.inputs.iter().chain(action.outputs.iter()).map(|p| p.as_path()).collect();
        let mut set = BTreeSet::new();
        for dep in fingerprint::parse_depfile(depfile) {
            let path = Utf8Path::new(&dep);
            let abs = if path.is_absolute() { path.to_owned() } else { action.cwd.join(path) };
            let abs = fingerprint::normalize(&abs);
            if known.contains(abs.as_path()) || (!abs.starts_with(SANDBOX_ROOT) && !abs.is_file()) {
                continue;
            }
            set.insert(abs);
        }
        set.into_iter().collect()
    }

    fn check_outputs(&self, rec: &ActionRecord) -> anyhow::Result<Option<DirtyReason>> {
        for out in &rec.outputs {
            match self.hash(&out.path)? {
                None => return Ok(Some(DirtyReason::OutputMissing { path: out.path.clone() })),
                Some(h) if h != out.hash => {
                    return Ok(Some(DirtyReason::OutputModified {
                        path: out.path.clone(),
                        old: out.hash.to_hex().to_string(),
                        new: Some(h.to_hex().to_string()),
                    }))
                }
                Some(_) => {}
            }
        }
        Ok(None)
    }
}

