//! SHA-256 digests and `Blob`s, the unit of storage in the CAS.
//!
//! REAPI identifies every blob by `(lowercase hex sha256, size in bytes)`.
//! This module computes such digests, validates digests received from a
//! server, and formats the ByteStream resource names that refer to them.

use bazel_remote_apis::build::bazel::remote::execution::v2::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Computes the REAPI digest (SHA-256) of `data`.
pub fn digest_of(data: &[u8]) -> Digest {
    Digest {
        hash: hex(&Sha256::digest(data)),
        size_bytes: data.len() as i64,
    }
}

/// Digest of a protobuf message's canonical (prost) encoding, plus the bytes.
pub fn digest_message<M: prost::Message>(msg: &M) -> (Digest, Vec<u8>) {
    let bytes = msg.encode_to_vec();
    (digest_of(&bytes), bytes)
}

/// Formats a digest as `hash/size`, the form used in resource names and logs.
pub fn digest_string(d: &Digest) -> String {
    format!("{}/{}", d.hash, d.size_bytes)
}

/// Checks that a digest is well formed: 64 lowercase hex chars, size >= 0.
pub fn validate_digest(d: &Digest) -> Result<(), String> {
    if d.size_bytes < 0 {
        return Err(format!("negative size in digest {}", digest_string(d)));
    }
    if d.hash.len() != 64
        || !d
            .hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "malformed sha256 hash in digest {}",
            digest_string(d)
        ));
    }
    Ok(())
}

/// Verifies that `data` matches `expected`; the error names the mismatch.
pub fn verify(expected: &Digest, data: &[u8]) -> Result<(), String> {
    if data.len() as i64 != expected.size_bytes {
        return Err(format!(
            "blob {} has {} bytes, expected {}",
            expected.hash,
            data.len(),
            expected.size_bytes
        ));
    }
    let got = hex(&Sha256::digest(data));
    if got != expected.hash {
        return Err(format!(
            "blob content hashes to {got}, expected {}",
            expected.hash
        ));
    }
    Ok(())
}

/// Streaming SHA-256 hasher producing a [`Digest`].
#[derive(Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    /// New empty hasher.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds more bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }
    /// Finishes and returns the digest.
    pub fn finish(self) -> Digest {
        Digest {
            hash: hex(&self.inner.finalize()),
            size_bytes: self.len as i64,
        }
    }
}

/// A blob and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Digest of `data`.
    pub digest: Digest,
    /// Content.
    pub data: Vec<u8>,
}

impl Blob {
    /// Wraps `data`, computing its digest.
    pub fn new(data: impl Into<Vec<u8>>) -> Self {
        let data = data.into();
        Self {
            digest: digest_of(&data),
            data,
        }
    }

    /// Encodes a protobuf message into a blob.
    pub fn from_message<M: prost::Message>(msg: &M) -> Self {
        let (digest, data) = digest_message(msg);
        Self { digest, data }
    }
}

/// Decodes a protobuf message, mapping failures to a descriptive string.
pub fn decode<M: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<M, String> {
    M::decode(bytes).map_err(|e| format!("cannot decode {what}: {e}"))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// `{instance}/blobs/{hash}/{size}` (instance omitted when empty).
pub(crate) fn read_resource_name(instance: &str, d: &Digest) -> String {
    prefix(instance) + &format!("blobs/{}/{}", d.hash, d.size_bytes)
}

/// `{instance}/uploads/{uuid}/blobs/{hash}/{size}`.
pub(crate) fn write_resource_name(instance: &str, uuid: &str, d: &Digest) -> String {
    prefix(instance) + &format!("uploads/{uuid}/blobs/{}/{}", d.hash, d.size_bytes)
}

fn prefix(instance: &str) -> String {
    if instance.is_empty() {
        String::new()
    } else {
        format!("{}/", instance.trim_end_matches('/'))
    }
}

/// A random version-4 style UUID string, without extra dependencies.
pub(crate) fn random_uuid() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut words = [0u64; 2];
    for w in &mut words {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        *w = h.finish();
    }
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&words[0].to_le_bytes());
    b[8..].copy_from_slice(&words[1].to_le_bytes());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Maps a digest validation failure to an [`Error::BadResponse`].
pub(crate) fn bad(server: &str, op: &str, reason: impl Into<String>) -> Error {
    Error::BadResponse {
        server: server.to_string(),
        op: op.to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digest() {
        let d = digest_of(b"");
        assert_eq!(
            d.hash,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.size_bytes, 0);
        assert!(validate_digest(&d).is_ok());
        assert!(verify(&d, b"x").is_err());
    }

    #[test]
    fn resource_names() {
        let d = digest_of(b"hi");
        assert_eq!(read_resource_name("", &d), format!("blobs/{}/2", d.hash));
        assert_eq!(
            read_resource_name("main", &d),
            format!("main/blobs/{}/2", d.hash)
        );
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_ne!(u, random_uuid());
        assert!(write_resource_name("a/b", &u, &d).starts_with("a/b/uploads/"));
    }

    #[test]
    fn hasher_matches() {
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), digest_of(b"hello"));
    }
}
