//! Build outputs in the store, named by the blake3 of their bytes.
//!
//! ```text
//! blobs/<aa>/<blake3>        the bytes as they are (small or incompressible outputs)
//! blobs/<aa>/<blake3>.zst    one zstd frame of the bytes
//! ```
//!
//! The name is always the hash of the *uncompressed* bytes, so keys,
//! entries and `explain` never see the encoding. An output of at least
//! [`COMPRESS_MIN`] bytes is stored compressed unless zstd saves less than
//! an eighth of it; Unikraft's objects carry debug info, which zstd shrinks
//! 5–20x. Both forms are read-only (0444) and appear by one rename.
//!
//! Restoring ([`Store::restore_blob`]) writes the bytes to a fresh file
//! beside the destination, hashing what it writes, and only a matching hash
//! counts: a corrupt blob is removed and reported as missing. Raw blobs are
//! copied with `copy_file_range` (a reflink on file systems that share
//! extents: btrfs, XFS), never hard-linked: a hard link would share the
//! inode, and one `chmod` or in-place write in the build dir would change
//! the store.
//!
//! [`compress`] and [`decompress`] are what the remote cache uses too: its
//! CAS holds a compressed blob exactly as the store does (see
//! `cache::local`).

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use camino::{Utf8Path, Utf8PathBuf};

use super::entry::copy_hashing;
use super::Store;
use crate::util::hash::is_hex64;

/// Outputs smaller than this are stored as they are: compressing them saves
/// little disk (a block is 4 KiB) and restoring them stays a plain copy.
pub const COMPRESS_MIN: u64 = 64 * 1024;
/// zstd level: 3 is zstd's default, ~0.6 s for a 372 MB object with -g3.
pub const ZSTD_LEVEL: i32 = 3;
/// From this size on, zstd also matches far back (long-distance matching
/// with a 16 MiB window): the musl partial links (372 MB with `-g3`) repeat
/// their debug info at long distances and shrink from 19.5 MB to 7.1 MB, at
/// about the same speed, in ~30 MB of memory. Decoders accept a 16 MiB window
/// by default (their limit is 128 MiB).
pub const LONG_MIN: u64 = 8 << 20;
/// log2 of the long-distance window.
pub const LONG_WINDOW_LOG: u32 = 24;

/// Suffix of compressed blobs.
pub const ZSTD_SUFFIX: &str = ".zst";

/// How a blob's bytes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobEncoding {
    Raw,
    Zstd,
}

/// A blob as it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobFile {
    pub path: Utf8PathBuf,
    pub encoding: BlobEncoding,
    /// Bytes on disk (compressed size for [`BlobEncoding::Zstd`]).
    pub stored_size: u64,
}

/// zstd-compress `bytes` (one frame, at [`ZSTD_LEVEL`]).
pub fn compress(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = encoder(Vec::with_capacity(bytes.len() / 4), bytes.len() as u64)?;
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// The encoder of one blob of `size` bytes: [`ZSTD_LEVEL`], and
/// long-distance matching from [`LONG_MIN`] on.
pub fn encoder<W: Write>(out: W, size: u64) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    if size >= LONG_MIN {
        encoder.long_distance_matching(true)?;
        encoder.window_log(LONG_WINDOW_LOG)?;
    }
    Ok(encoder)
}

/// Decompress one zstd frame, refusing more than `max` bytes of output
/// (a hostile or corrupt frame cannot exhaust memory).
pub fn decompress(frame: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(frame)?.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("decompresses to more than {max} bytes")));
    }
    Ok(out)
}

/// blake3 and size of what one zstd frame decodes to, refusing more than
/// `max` bytes; streaming, so a large output is never held in memory.
pub fn frame_blake3(frame: &[u8], max: u64) -> io::Result<(blake3::Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut decoder = zstd::stream::read::Decoder::new(frame)?.take(max.saturating_add(1));
    let size = io::copy(&mut decoder, &mut hasher)?;
    if size > max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("decompresses to more than {max} bytes")));
    }
    Ok((hasher.finalize(), size))
}

/// blake3 of what a stored blob holds, read from `file` (streaming: blobs
/// can be large; a compressed one is decoded on the way).
pub(super) fn hash_stored(file: fs::File, encoding: BlobEncoding) -> io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    match encoding {
        BlobEncoding::Raw => hasher.update_reader(file)?,
        BlobEncoding::Zstd => io::copy(&mut zstd::stream::read::Decoder::new(file)?, &mut hasher).map(|_| &mut hasher)?,
    };
    Ok(hasher.finalize())
}

/// Whether compressing `raw` bytes into `compressed` is worth keeping.
fn worth_it(raw: u64, compressed: u64) -> bool {
    compressed.saturating_mul(8) <= raw.saturating_mul(7)
}

impl Store {
    /// Where the raw form of a blob lives (whether or not it exists).
    pub fn blob_path(&self, blake3_hex: &str) -> Utf8PathBuf {
        let prefix = blake3_hex.get(..2).unwrap_or("__");
        self.root.join("blobs").join(prefix).join(blake3_hex)
    }

    /// Where the compressed form of a blob lives (whether or not it exists).
    pub fn blob_zstd_path(&self, blake3_hex: &str) -> Utf8PathBuf {
        let mut path = self.blob_path(blake3_hex).into_string();
        path.push_str(ZSTD_SUFFIX);
        path.into()
    }

    /// The blob on disk, in whichever form it is stored.
    pub fn blob_file(&self, blake3_hex: &str) -> Option<BlobFile> {
        if !is_hex64(blake3_hex) {
            return None;
        }
        for (path, encoding) in
            [(self.blob_path(blake3_hex), BlobEncoding::Raw), (self.blob_zstd_path(blake3_hex), BlobEncoding::Zstd)]
        {
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    return Some(BlobFile { path, encoding, stored_size: meta.len() });
                }
            }
        }
        None
    }

    pub fn has_blob(&self, blake3_hex: &str) -> bool {
        self.blob_file(blake3_hex).is_some()
    }

    /// Store a file as a blob (compressed when worth it); returns its blake3
    /// hex. The file is read twice at most (hash, then copy or compress),
    /// and not copied at all when the store already has its content. The
    /// second read is hashed again, so a file changing underneath cannot
    /// put wrong bytes under a name.
    pub fn insert_blob_file(&self, file: &Utf8Path) -> anyhow::Result<String> {
        let (hash, size) = crate::util::hash::blake3_file(file.as_std_path()).with_context(|| format!("hashing {file}"))?;
        let hash = hash.to_hex().to_string();
        self.insert_blob_file_hashed(file, &hash, size)?;
        Ok(hash)
    }

    /// [`Store::insert_blob_file`] for a file already hashed (`hash`, `size`
    /// bytes): read once, hashed again while copied, refused if it changed.
    pub fn insert_blob_file_hashed(&self, file: &Utf8Path, hash: &str, size: u64) -> anyhow::Result<()> {
        if self.has_blob(hash) {
            return Ok(());
        }
        let mut source = fs::File::open(file).with_context(|| format!("opening {file}"))?;
        let mut staged = self.blob_tempfile()?;
        let mut hasher = blake3::Hasher::new();
        let encoding = if size >= COMPRESS_MIN {
            let mut encoder = encoder(staged.as_file_mut(), size)?;
            copy_hashing(&mut source, &mut encoder, |b| {
                hasher.update(b);
            })
            .with_context(|| format!("compressing {file} into the store"))?;
            encoder.finish().with_context(|| format!("compressing {file} into the store"))?;
            let compressed = staged.as_file().metadata()?.len();
            if worth_it(size, compressed) {
                BlobEncoding::Zstd
            } else {
                // Incompressible: keep it raw (a copy restores faster than a decode).
                staged = self.blob_tempfile()?;
                hasher = blake3::Hasher::new();
                let mut source = fs::File::open(file).with_context(|| format!("opening {file}"))?;
                copy_hashing(&mut source, staged.as_file_mut(), |b| {
                    hasher.update(b);
                })
                .with_context(|| format!("copying {file} into the store"))?;
                BlobEncoding::Raw
            }
        } else {
            copy_hashing(&mut source, staged.as_file_mut(), |b| {
                hasher.update(b);
            })
            .with_context(|| format!("copying {file} into the store"))?;
            BlobEncoding::Raw
        };
        let again = hasher.finalize().to_hex().to_string();
        anyhow::ensure!(again == hash, "output {file} changed while it was being stored");
        self.publish_blob(staged, hash, encoding)
    }

    /// Store bytes as a blob (compressed when worth it); returns their blake3 hex.
    pub fn insert_blob_bytes(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.has_blob(&hash) {
            return Ok(hash);
        }
        if bytes.len() as u64 >= COMPRESS_MIN {
            let frame = compress(bytes).context("compressing a blob")?;
            if worth_it(bytes.len() as u64, frame.len() as u64) {
                self.insert_blob_encoded(&hash, BlobEncoding::Zstd, &frame)?;
                return Ok(hash);
            }
        }
        self.insert_blob_encoded(&hash, BlobEncoding::Raw, bytes)?;
        Ok(hash)
    }

    /// Store a blob already in its on-disk form (a compressed CAS entry
    /// fetched from the team cache). The caller has checked that `stored`
    /// decodes to bytes whose blake3 is `hash`.
    pub fn insert_blob_encoded(&self, hash: &str, encoding: BlobEncoding, stored: &[u8]) -> anyhow::Result<()> {
        anyhow::ensure!(is_hex64(hash), "blob name `{hash}` is not a blake3 hash");
        if self.has_blob(hash) {
            return Ok(());
        }
        let mut staged = self.blob_tempfile()?;
        staged.write_all(stored).context("writing a blob into the store")?;
        self.publish_blob(staged, hash, encoding)
    }

    fn blob_tempfile(&self) -> anyhow::Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .with_context(|| format!("creating a temporary file in {}", self.tmp_dir()))
    }

    /// Rename a complete temp file into place. Same name means same content,
    /// so replacing a concurrent writer's identical file is harmless and no
    /// lock is needed.
    fn publish_blob(&self, staged: tempfile::NamedTempFile, hash: &str, encoding: BlobEncoding) -> anyhow::Result<()> {
        // No fsync: a build writes a blob per object, and an fsync each costs
        // more than many compiles. A blob cut short by a crash cannot be used
        // wrongly: every restore rehashes it and treats a mismatch as a miss
        // (and `cache verify` removes it).
        staged.as_file().set_permissions(fs::Permissions::from_mode(0o444))?;
        let dest = match encoding {
            BlobEncoding::Raw => self.blob_path(hash),
            BlobEncoding::Zstd => self.blob_zstd_path(hash),
        };
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        staged.persist(&dest).map_err(|e| e.error).with_context(|| format!("moving blob to {dest}"))?;
        Ok(())
    }

    /// Write the bytes of blob `hash` into `dest` (an open, empty file),
    /// hashing them on the way. Returns their hash, or `None` when the
    /// blob is missing or does not match its name (a corrupt blob is then
    /// removed, so the next insert rewrites it). `dest_path` names `dest`
    /// for messages and the raw copy.
    pub fn restore_blob(&self, hash: &str, dest: &mut fs::File, dest_path: &Utf8Path) -> anyhow::Result<Option<blake3::Hash>> {
        let Some(blob) = self.blob_file(hash) else { return Ok(None) };
        let actual = match blob.encoding {
            BlobEncoding::Raw => {
                // fs::copy uses copy_file_range, which reflinks where the file system can.
                match fs::copy(&blob.path, dest_path) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("copying {} to {dest_path}", blob.path)),
                }
                Some(crate::util::hash::blake3_file(dest_path.as_std_path())?.0)
            }
            BlobEncoding::Zstd => {
                let file = match fs::File::open(&blob.path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e).with_context(|| format!("opening {}", blob.path)),
                };
                let mut hasher = blake3::Hasher::new();
                let mut out = io::BufWriter::with_capacity(1 << 20, &mut *dest);
                let copied = zstd::stream::read::Decoder::new(file)
                    .and_then(|mut decoder| {
                        copy_hashing(&mut decoder, &mut out, |b| {
                            hasher.update(b);
                        })
                    })
                    .and_then(|_| out.flush());
                match copied {
                    Ok(()) => Some(hasher.finalize()),
                    // A frame that does not decode is corruption, like a wrong hash.
                    Err(e) if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof) => None,
                    Err(e) => return Err(e).with_context(|| format!("decompressing {} to {dest_path}", blob.path)),
                }
            }
        };
        match actual {
            Some(actual) if actual.to_hex().as_str() == hash => Ok(Some(actual)),
            _ => {
                let _ = fs::remove_file(&blob.path);
                Ok(None)
            }
        }
    }

    /// Whether blob `hash` is in the store and its bytes hash to its name,
    /// read without being written anywhere (or found unchanged since it
    /// last was: see [`super::verified`]). A corrupt blob is removed, as
    /// [`Store::restore_blob`] removes it.
    pub fn verify_blob(&self, hash: &str) -> anyhow::Result<bool> {
        let Some(blob) = self.blob_file(hash) else { return Ok(false) };
        let file = match fs::File::open(&blob.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", blob.path)),
        };
        // The identity of what is read, taken before reading it: a change
        // while it is read changes the ctime after this.
        let meta = file.metadata().with_context(|| format!("reading the metadata of {}", blob.path))?;
        if self.verified.trusts(hash, &meta) {
            return Ok(true);
        }
        let good = match hash_stored(file, blob.encoding) {
            Ok(hashed) => hashed.to_hex().as_str() == hash,
            // A frame that does not decode is corruption, like a wrong hash.
            Err(e) if matches!(e.kind(), io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof) => false,
            Err(e) => return Err(e).with_context(|| format!("reading {}", blob.path)),
        };
        if good {
            self.verified.record(hash, &meta);
        } else {
            let _ = fs::remove_file(&blob.path);
        }
        Ok(good)
    }

    /// The uncompressed bytes of a blob, verified against its name (`None`
    /// when missing or corrupt).
    pub fn read_blob(&self, hash: &str) -> Option<Vec<u8>> {
        let blob = self.blob_file(hash)?;
        let stored = fs::read(&blob.path).ok()?;
        let bytes = match blob.encoding {
            BlobEncoding::Raw => stored,
            BlobEncoding::Zstd => decompress(&stored, 1 << 40).ok()?,
        };
        (blake3::hash(&bytes).to_hex().as_str() == hash).then_some(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_are_bounded() {
        let bytes = vec![7u8; 100_000];
        let frame = compress(&bytes).unwrap();
        assert!(frame.len() < 1000);
        assert_eq!(decompress(&frame, 100_000).unwrap(), bytes);
        assert!(decompress(&frame, 99_999).is_err());
        assert!(decompress(b"not a frame", 10).is_err());
        assert!(worth_it(800, 700) && !worth_it(800, 701));
    }

    #[test]
    fn large_blobs_match_beyond_the_default_window() {
        // 4 MiB of noise, twice: the repeat is farther back than level 3's
        // own window, so only long-distance matching finds it.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut bytes = noise.clone();
        bytes.extend_from_slice(&noise);
        bytes.resize(LONG_MIN as usize + 1, 0);
        let frame = compress(&bytes).unwrap();
        assert!(frame.len() < (5 << 20), "{} bytes: the repeat was not found", frame.len());
        assert_eq!(decompress(&frame, bytes.len() as u64).unwrap(), bytes, "the default decoder reads it");
    }
}
