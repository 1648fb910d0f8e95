//! Who may publish to the shared cache: Ed25519 keys (`ed25519-dalek`).
//!
//! CI holds a private key (`KRAFT_CACHE_SIGNING_KEY`: a file, or the key
//! itself); every client holds the public keys it trusts
//! (`KRAFT_CACHE_TRUSTED_KEYS`: `keyid:base64,keyid:base64`). Each signed
//! entry names its key id, so a new key can be trusted beside the old one,
//! CI switched over, and the old one dropped later: rotation without a flag
//! day. A client that can verify cannot sign: the server and the laptops
//! hold nothing that lets them publish an entry others accept.
//!
//! Text forms (what `cargo xtask cache keygen` prints):
//!
//! * private: `keyid:<base64 of the 32-byte seed>` (the key id may be left
//!   out; it is then derived from the public key);
//! * public: `keyid:<base64 of the 32-byte public key>`.
//!
//! A key id is 1–64 characters of `[A-Za-z0-9._-]`.

use std::io::Read;

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A private key and the id its entries carry.
#[derive(Clone)]
pub struct Signer25519 {
    pub id: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer25519 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer25519").field("id", &self.id).field("key", &"<private>").finish()
    }
}

/// The keys one client holds: at most one to sign with, any number to trust.
#[derive(Debug, Clone, Default)]
pub struct CacheKeys {
    pub signer: Option<Signer25519>,
    pub trusted: Vec<(String, VerifyingKey)>,
}

impl CacheKeys {
    /// No keys: a client that reads and writes nothing.
    pub fn none() -> CacheKeys {
        CacheKeys::default()
    }

    /// Sign with `seed` under `id` (its public key is trusted too).
    pub fn signing(mut self, id: &str, seed: [u8; 32]) -> CacheKeys {
        let key = SigningKey::from_bytes(&seed);
        self.trust_key(id, key.verifying_key());
        self.signer = Some(Signer25519 { id: id.to_string(), key });
        self
    }

    /// Trust the public key `public` under `id`.
    pub fn trusting(mut self, id: &str, public: [u8; 32]) -> Result<CacheKeys, String> {
        let key = VerifyingKey::from_bytes(&public).map_err(|e| format!("key `{id}` is not an Ed25519 public key: {e}"))?;
        self.trust_key(id, key);
        Ok(self)
    }

    fn trust_key(&mut self, id: &str, key: VerifyingKey) {
        if !self.trusted.iter().any(|(i, k)| i == id && *k == key) {
            self.trusted.push((id.to_string(), key));
        }
    }

    /// From the configuration's text forms. Problems are returned beside the
    /// keys that could be read, so the caller can warn and carry on.
    pub fn parse(signing: Option<&str>, trusted: Option<&str>) -> (CacheKeys, Vec<String>) {
        let mut keys = CacheKeys::none();
        let mut problems = Vec::new();
        for item in trusted.unwrap_or("").split([',', '\n']).map(str::trim).filter(|s| !s.is_empty()) {
            let parsed = item
                .split_once(':')
                .ok_or_else(|| format!("`{item}` is not `keyid:base64`"))
                .and_then(|(id, b64)| Ok((check_id(id)?, decode32(b64).map_err(|e| format!("key `{id}`: {e}"))?)))
                .and_then(|(id, public)| keys.clone().trusting(id, public));
            match parsed {
                Ok(k) => keys = k,
                Err(why) => problems.push(format!("KRAFT_CACHE_TRUSTED_KEYS: {why}; that key is ignored")),
            }
        }
        if let Some(value) = signing.map(str::trim).filter(|s| !s.is_empty()) {
            match read_signing_key(value) {
                Ok((id, seed)) => keys = keys.signing(&id, seed),
                Err(why) => problems.push(format!("KRAFT_CACHE_SIGNING_KEY: {why}; not uploading")),
            }
        }
        (keys, problems)
    }

    /// The trusted keys in the form `KRAFT_CACHE_TRUSTED_KEYS` reads
    /// (`keyid:base64,…`): what to give a reader of what this client signs.
    pub fn trusted_text(&self) -> String {
        self.trusted.iter().map(|(id, key)| format!("{id}:{}", B64.encode(key.to_bytes()))).collect::<Vec<_>>().join(",")
    }

    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    pub fn can_verify(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// `(key id, base64 signature)` of `message`.
    pub fn sign(&self, message: &[u8]) -> Option<(String, String)> {
        let signer = self.signer.as_ref()?;
        Some((signer.id.clone(), B64.encode(signer.key.sign(message).to_bytes())))
    }

    /// Whether `signature` over `message` is by the trusted key `id`.
    pub fn verify(&self, id: &str, message: &[u8], signature: &str) -> bool {
        let Ok(bytes) = B64.decode(signature.trim()) else { return false };
        let Ok(signature) = Signature::from_slice(&bytes) else { return false };
        self.trusted.iter().filter(|(i, _)| i == id).any(|(_, key)| key.verify_strict(message, &signature).is_ok())
    }
}

fn check_id(id: &str) -> Result<&str, String> {
    let ok = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(id)
    } else {
        Err(format!("`{id}` is not a key id (1-64 of A-Z a-z 0-9 . _ -)"))
    }
}

fn decode32(b64: &str) -> Result<[u8; 32], String> {
    let bytes = B64.decode(b64.trim()).map_err(|e| format!("not base64 ({e})"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| format!("{} bytes, expected 32", bytes.len()))
}

/// `value` is a file holding the key, or the key itself: `[keyid:]base64`.
fn read_signing_key(value: &str) -> Result<(String, [u8; 32]), String> {
    let path = std::path::Path::new(value);
    let text = if path.is_file() {
        std::fs::read_to_string(path).map_err(|e| format!("reading the key file {value}: {e}"))?
    } else {
        value.to_string()
    };
    let text = text.trim();
    let (id, b64) = match text.split_once(':') {
        Some((id, b64)) => (Some(check_id(id)?.to_string()), b64),
        None => (None, text),
    };
    let seed = decode32(b64).map_err(|e| format!("the private key: {e}"))?;
    let id = id.unwrap_or_else(|| derived_id(&SigningKey::from_bytes(&seed).verifying_key()));
    Ok((id, seed))
}

/// A key id from the public key itself: `k` and 16 hex digits of its blake3.
pub fn derived_id(key: &VerifyingKey) -> String {
    format!("k{}", &blake3::hash(key.as_bytes()).to_hex()[..16])
}

/// A new key pair, as text: (private `id:seed`, public `id:key`).
pub fn generate(id: Option<&str>) -> anyhow::Result<(String, String)> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| anyhow::anyhow!("reading 32 random bytes from /dev/urandom: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key();
    let id = match id {
        Some(id) => check_id(id).map_err(anyhow::Error::msg)?.to_string(),
        None => derived_id(&public),
    };
    Ok((format!("{id}:{}", B64.encode(seed)), format!("{id}:{}", B64.encode(public.as_bytes()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_rotate() {
        let (private, public) = generate(Some("ci-1")).unwrap();
        let (reader, problems) = CacheKeys::parse(None, Some(&public));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!reader.can_sign() && reader.can_verify());
        let (writer, problems) = CacheKeys::parse(Some(&private), None);
        assert!(problems.is_empty(), "{problems:?}");
        let (id, sig) = writer.sign(b"message").unwrap();
        assert_eq!(id, "ci-1");
        assert!(reader.verify(&id, b"message", &sig));
        assert!(!reader.verify(&id, b"messagf", &sig));
        assert!(!reader.verify("ci-2", b"message", &sig));
        // A second key under another id: both verify (rotation).
        let (private2, public2) = generate(Some("ci-2")).unwrap();
        let (both, _) = CacheKeys::parse(None, Some(&format!("{public},{public2}")));
        let (writer2, _) = CacheKeys::parse(Some(&private2), None);
        let (id2, sig2) = writer2.sign(b"m").unwrap();
        assert!(both.verify(&id2, b"m", &sig2) && !reader.verify(&id2, b"m", &sig2));
    }

    #[test]
    fn signing_key_from_a_file() {
        let (private, public) = generate(Some("ci-file")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache.key");
        std::fs::write(&file, format!("{private}\n")).unwrap();
        let (writer, problems) = CacheKeys::parse(Some(file.to_str().unwrap()), None);
        assert!(problems.is_empty(), "{problems:?}");
        let (reader, _) = CacheKeys::parse(None, Some(&public));
        let (id, sig) = writer.sign(b"m").unwrap();
        assert!(reader.verify(&id, b"m", &sig));
    }

    #[test]
    fn bad_keys_are_reported_not_fatal() {
        let (keys, problems) = CacheKeys::parse(Some("not base64!"), Some("nokey,id:AAAA,ok:"));
        assert!(!keys.can_sign() && !keys.can_verify());
        assert_eq!(problems.len(), 4, "{problems:?}");
        let (private, _) = generate(None).unwrap();
        let seed_only = private.split_once(':').unwrap().1;
        let (keys, problems) = CacheKeys::parse(Some(seed_only), None);
        assert!(problems.is_empty() && keys.signer.unwrap().id == private.split_once(':').unwrap().0);
    }
}
