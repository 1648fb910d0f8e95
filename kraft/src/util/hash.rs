//! Hex and file digests: the one home of both.

use std::fs;
use std::io;

use anyhow::{Context, Result};
use camino::Utf8Path;
use std::path::Path;
use sha2::{Digest, Sha256};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Whether `s` is a 256-bit digest in lowercase hex (64 digits).
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// blake3 of a file's contents, and its size.
/// Takes any path: store trees may hold names that are not UTF-8.
pub fn blake3_file(path: impl AsRef<Path>) -> Result<(blake3::Hash, u64)> {
    let path = path.as_ref();
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let size = io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok((hasher.finalize(), size))
}

/// sha256 of a file's contents, lowercase hex.
pub fn sha256_file(path: &Utf8Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).with_context(|| format!("reading {path}"))?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_and_check() {
        assert_eq!(super::hex(&[0, 0xab, 0xff]), "00abff");
        assert!(super::is_hex64(&"a".repeat(64)));
        assert!(!super::is_hex64(&"A".repeat(64)));
    }
}
