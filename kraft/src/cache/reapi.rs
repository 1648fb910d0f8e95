//! The shared cache over REAPI: standard `ActionResult`s in any REAPI
//! server's action cache (BuildGrid, Buildbarn, BuildBuddy, NativeLink, …).
//!
//! An action's REAPI digest is computed by `exec::remote` from the
//! same inputs as its local key; this module reads and writes the entries.
//!
//! Trust works as in the HTTP cache: outputs are content-addressed (the
//! client checks every blob against its digest), and the entry itself is
//! signed. The signature ([`crate::cache::signing`], Ed25519 with a key id)
//! covers a canonical text of the action digest, the exit code, every output
//! file (path, digest, executable bit) and the stdout/stderr digests, and
//! travels in `execution_metadata.auxiliary_metadata` as an `Any` of type
//! [`SIGNATURE_TYPE`]. An unsigned entry (an engine caches what its workers
//! report), one signed by an untrusted key, or one whose signature does not
//! verify, is ignored: the action is run again (and, by a writer, the
//! entry re-published signed).
//!
//! Only a writer (`--remote-upload` and `KRAFT_CACHE_SIGNING_KEY`) calls
//! `UpdateActionResult`; everyone else only reads.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};
use kraft_reapi::proto::protobuf::Any;
use kraft_reapi::proto::reapi::{ActionResult, Digest, ExecutedActionMetadata, OutputFile};
use kraft_reapi::{Blob, Client};

use crate::cache::signing::CacheKeys as Keys;

/// `type_url` of the signature entry in `auxiliary_metadata`.
pub const SIGNATURE_TYPE: &str = "kraft-xtask/cache-signature/v1";

/// Counters of one build's use of the REAPI cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Verified entries whose outputs were restored.
    pub hits: usize,
    /// Entries found but not trusted (unsigned, unknown key, bad signature).
    pub untrusted: usize,
    /// Entries written (`UpdateActionResult`).
    pub published: usize,
    /// Bytes of outputs, stdout and stderr uploaded with published entries.
    pub bytes_uploaded: u64,
}

/// The REAPI action cache of one engine, with this process's keys.
pub struct ReapiCache {
    client: Client,
    keys: Keys,
    upload: bool,
    counters: Mutex<CacheCounters>,
    /// The first reason an entry was not trusted (reported once).
    first_untrusted: Mutex<Option<String>>,
}

fn digest_text(d: &Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

/// The bytes a signature covers (see the module docs).
pub fn signed_payload(action: &Digest, result: &ActionResult) -> Vec<u8> {
    let mut text = format!(
        "kraft-xtask reapi entry v1\naction {}\nexit {}\n",
        digest_text(action),
        result.exit_code
    );
    let mut files: Vec<&OutputFile> = result.output_files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for f in files {
        let d = f.digest.as_ref().map(digest_text).unwrap_or_default();
        text.push_str(&format!(
            "file {} {d} {}\n",
            f.path,
            u8::from(f.is_executable)
        ));
    }
    for (name, d) in [
        ("stdout", &result.stdout_digest),
        ("stderr", &result.stderr_digest),
    ] {
        text.push_str(&format!(
            "{name} {}\n",
            d.as_ref().map(digest_text).unwrap_or_default()
        ));
    }
    text.into_bytes()
}

impl ReapiCache {
    pub fn new(client: Client, keys: Keys, upload: bool) -> ReapiCache {
        ReapiCache {
            client,
            keys,
            upload,
            counters: Mutex::default(),
            first_untrusted: Mutex::default(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether this process publishes entries (it has `--remote-upload` and a signing key).
    pub fn writes(&self) -> bool {
        self.upload && self.keys.can_sign()
    }

    pub fn counters(&self) -> CacheCounters {
        self.counters.lock().expect("counters").clone()
    }

    /// Why the first ignored entry was not trusted, if one was.
    pub fn first_untrusted(&self) -> Option<String> {
        self.first_untrusted.lock().expect("reason").clone()
    }

    /// The trusted entry for `action`, if there is one. Transport errors are
    /// returned (the caller decides the engine is gone); an untrusted entry is a miss.
    pub fn lookup(&self, action: &Digest) -> kraft_reapi::Result<Option<ActionResult>> {
        let Some(result) = self.client.get_action_result(action)? else {
            return Ok(None);
        };
        match verify_entry(&self.keys, action, &result) {
            Ok(()) => Ok(Some(result)),
            Err(why) => {
                self.counters.lock().expect("counters").untrusted += 1;
                self.first_untrusted
                    .lock()
                    .expect("reason")
                    .get_or_insert(why);
                Ok(None)
            }
        }
    }
}

/// Accept `result` as the entry of `action` only if a trusted key signed it.
pub fn verify_entry(keys: &Keys, action: &Digest, result: &ActionResult) -> Result<(), String> {
    {
        let any = result
            .execution_metadata
            .as_ref()
            .and_then(|m| {
                m.auxiliary_metadata
                    .iter()
                    .find(|a| a.type_url == SIGNATURE_TYPE)
            })
            .ok_or_else(|| format!("the entry for action {} is not signed", digest_text(action)))?;
        let text =
            std::str::from_utf8(&any.value).map_err(|_| "its signature is not text".to_string())?;
        let (key_id, b64) = text
            .split_once(':')
            .ok_or_else(|| "its signature is malformed".to_string())?;
        let why = if !keys.trusted.iter().any(|(id, _)| id == key_id) {
            format!("it is signed by key `{key_id}`, which is not in KRAFT_CACHE_TRUSTED_KEYS")
        } else if keys.verify(key_id, &signed_payload(action, result), b64) {
            return Ok(());
        } else {
            format!("its signature by key `{key_id}` does not verify")
        };
        Err(format!("the entry for action {} is ignored: {why}", digest_text(action)))
    }
}

/// Sign `result` as the entry of `action` (replacing any earlier signature
/// of ours); false when there is no signing key.
pub fn sign_entry(keys: &Keys, action: &Digest, result: &mut ActionResult) -> bool {
    let Some(sig) = keys.sign(&signed_payload(action, result)) else {
        return false;
    };
    let meta = result
        .execution_metadata
        .get_or_insert_with(ExecutedActionMetadata::default);
    meta.auxiliary_metadata
        .retain(|a| a.type_url != SIGNATURE_TYPE);
    let value = format!("{}:{}", sig.0, sig.1);
    meta.auxiliary_metadata.push(Any {
        type_url: SIGNATURE_TYPE.into(),
        value: value.into_bytes(),
    });
    true
}

impl ReapiCache {
    /// Publish `result` for `action`, signed (only for writers; blobs must be
    /// in the CAS already).
    pub fn publish(&self, action: &Digest, mut result: ActionResult) -> kraft_reapi::Result<()> {
        if !self.writes() || !sign_entry(&self.keys, action, &mut result) {
            return Ok(());
        }
        self.client.update_action_result(action, &result)?;
        self.counters.lock().expect("counters").published += 1;
        Ok(())
    }

    /// Upload what a local run produced and publish it: `outputs` are
    /// (path in the result, host file). Returns the bytes uploaded.
    pub fn publish_local_run(
        &self,
        action: &Digest,
        outputs: &[(String, Utf8PathBuf)],
        stdout: &[u8],
        stderr: &[u8],
    ) -> anyhow::Result<u64> {
        if !self.writes() {
            return Ok(0);
        }
        let mut blobs = Vec::new();
        let mut files = Vec::new();
        for (path, host) in outputs {
            let data = fs::read(host).with_context(|| format!("reading output {host}"))?;
            let mode = fs::metadata(host)
                .with_context(|| format!("reading output {host}"))?
                .permissions()
                .mode();
            let blob = Blob::new(data);
            files.push(OutputFile {
                path: path.clone(),
                digest: Some(blob.digest.clone()),
                is_executable: mode & 0o111 != 0,
                contents: Vec::new(),
                node_properties: None,
            });
            blobs.push(blob);
        }
        let out = Blob::new(stdout.to_vec());
        let err = Blob::new(stderr.to_vec());
        let result = ActionResult {
            output_files: files,
            exit_code: 0,
            stdout_digest: Some(out.digest.clone()),
            stderr_digest: Some(err.digest.clone()),
            ..Default::default()
        };
        blobs.push(out);
        blobs.push(err);
        let bytes = self.upload_missing(&blobs)?;
        self.publish(action, result)?;
        self.counters.lock().expect("counters").bytes_uploaded += bytes;
        Ok(bytes)
    }

    /// FindMissingBlobs, then upload those; returns the bytes sent.
    pub fn upload_missing(&self, blobs: &[Blob]) -> kraft_reapi::Result<u64> {
        let digests: Vec<Digest> = blobs.iter().map(|b| b.digest.clone()).collect();
        let missing: std::collections::HashSet<String> = self
            .client
            .find_missing_blobs(&digests)?
            .into_iter()
            .map(|d| d.hash)
            .collect();
        let mut sent = std::collections::HashSet::new();
        let todo: Vec<Blob> = blobs
            .iter()
            .filter(|b| missing.contains(&b.digest.hash) && sent.insert(b.digest.hash.clone()))
            .cloned()
            .collect();
        self.client.upload_blobs(&todo)?;
        Ok(todo.iter().map(|b| b.data.len() as u64).sum())
    }

    /// Download `result`'s outputs to `to_host(path)` (each written to a
    /// temporary file beside it, then renamed), and return stdout and stderr.
    pub fn download(
        &self,
        result: &ActionResult,
        to_host: &dyn Fn(&str) -> Option<Utf8PathBuf>,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut small: Vec<(&OutputFile, Digest)> = Vec::new();
        for file in &result.output_files {
            let digest = file.digest.clone().with_context(|| {
                format!("{}: output {} of the result has no digest", self.client.server(), file.path)
            })?;
            let host = to_host(&file.path).with_context(|| {
                format!("{}: the result names output {}, outside the build", self.client.server(), file.path)
            })?;
            if digest.size_bytes > STREAM_TO_FILE_BYTES {
                // Large outputs (musl's partial links with debug info) go
                // straight to disk: memory stays at one chunk.
                let (tmp, mut out) = temp_beside(&host)?;
                self.client.bytestream_read_to(&digest, &mut out)?;
                drop(out);
                persist(tmp, &host, file_mode(file.is_executable))?;
            } else {
                small.push((file, digest));
            }
        }
        let mut digests: Vec<Digest> = small.iter().map(|(_, d)| d.clone()).collect();
        let stdio = [&result.stdout_digest, &result.stderr_digest]
            .map(|d| d.clone().unwrap_or_else(|| kraft_reapi::digest_of(b"")));
        digests.extend(stdio.iter().cloned());
        let mut datas = self.client.read_blobs(&digests)?;
        let stderr = datas.pop().unwrap_or_default();
        let stdout = datas.pop().unwrap_or_default();
        let stdout = if result.stdout_raw.is_empty() { stdout } else { result.stdout_raw.clone() };
        let stderr = if result.stderr_raw.is_empty() { stderr } else { result.stderr_raw.clone() };
        for ((file, _), data) in small.iter().zip(datas) {
            let host = to_host(&file.path).context("output path")?;
            write_output(&host, &data, file.is_executable)?;
        }
        Ok((stdout, stderr))
    }

    /// Count a hit (after its outputs were restored).
    pub fn note_hit(&self) {
        self.counters.lock().expect("counters").hits += 1;
    }
}

/// Outputs larger than this are streamed to disk rather than read in batches.
const STREAM_TO_FILE_BYTES: i64 = 8 * 1024 * 1024;

fn file_mode(executable: bool) -> u32 {
    if executable { 0o755 } else { 0o644 }
}

/// A temporary file beside `host` (same file system, so the rename is atomic).
fn temp_beside(host: &Utf8Path) -> anyhow::Result<(tempfile::TempPath, fs::File)> {
    let dir = host.parent().context("output path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", host.file_name().unwrap_or("out")))
        .suffix(".remote")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {dir}"))?;
    let (file, path) = tmp.into_parts();
    Ok((path, file))
}

fn persist(tmp: tempfile::TempPath, host: &Utf8Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {host}"))?;
    tmp.persist(host).map_err(|e| e.error).with_context(|| format!("writing {host}"))?;
    Ok(())
}

/// Write one downloaded output atomically.
fn write_output(host: &Utf8Path, data: &[u8], executable: bool) -> anyhow::Result<()> {
    let (tmp, mut file) = temp_beside(host)?;
    std::io::Write::write_all(&mut file, data).with_context(|| format!("writing {host}"))?;
    drop(file);
    persist(tmp, host, file_mode(executable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(seed: [u8; 32]) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes()
    }

    fn result() -> ActionResult {
        ActionResult {
            output_files: vec![OutputFile {
                path: "build/a.o".into(),
                digest: Some(kraft_reapi::digest_of(b"obj")),
                is_executable: false,
                contents: Vec::new(),
                node_properties: None,
            }],
            stdout_digest: Some(kraft_reapi::digest_of(b"")),
            stderr_digest: Some(kraft_reapi::digest_of(b"warning")),
            ..Default::default()
        }
    }

    #[test]
    fn signed_entries_verify_and_tampering_is_caught() {
        let action = kraft_reapi::digest_of(b"action");
        let writer = Keys::none().signing("ci", [1; 32]);
        let reader = Keys::none().trusting("ci", public([1; 32])).unwrap();
        let mut r = result();
        assert!(verify_entry(&reader, &action, &r)
            .unwrap_err()
            .contains("not signed"));
        assert!(sign_entry(&writer, &action, &mut r));
        verify_entry(&reader, &action, &r).unwrap();
        let mut tampered = r.clone();
        tampered.output_files[0].digest = Some(kraft_reapi::digest_of(b"evil"));
        assert!(verify_entry(&reader, &action, &tampered)
            .unwrap_err()
            .contains("does not verify"));
        assert!(verify_entry(&reader, &kraft_reapi::digest_of(b"other"), &r).is_err());
        let rogue = Keys::none().signing("laptop", [2; 32]);
        let mut forged = result();
        assert!(sign_entry(&rogue, &action, &mut forged));
        assert!(verify_entry(&reader, &action, &forged)
            .unwrap_err()
            .contains("not in KRAFT_CACHE_TRUSTED_KEYS"));
    }
}
