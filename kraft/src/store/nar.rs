//! Nix's NAR ("Nix ARchive") serialization of a file system object, and its
//! sha256 in SRI form, equal to what
//! `nix --extra-experimental-features nix-command hash path PATH` prints.
//!
//! The format, as Nix writes it (`src/libutil/archive.cc`):
//!
//! * every string is its length as a little-endian u64, its bytes, then zero
//!   bytes up to a multiple of 8;
//! * the archive is `"nix-archive-1"` followed by the root node;
//! * a node is `"(" "type" T ... ")"` where T is
//!   * `"regular"`: optionally `"executable" ""` (when the owner exec bit,
//!     `S_IXUSR`, is set: Nix ignores the group and other bits), then
//!     `"contents"` and the file's bytes as one string;
//!   * `"symlink"`: `"target"` and the link target;
//!   * `"directory"`: for every entry, sorted bytewise by name,
//!     `"entry" "(" "name" NAME "node" NODE ")"`.
//!
//! Hashing streams the serialization into sha256: no NAR is ever held in
//! memory, whatever the size of the tree.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine as _;
use camino::Utf8Path;
use sha2::{Digest, Sha256};

/// Serialize `path` (a file, a directory or a symlink; symlinks are not
/// followed, not even at the root) as a NAR into `out`.
pub fn write_nar(path: &Utf8Path, out: &mut impl Write) -> anyhow::Result<()> {
    let mut w = NarWriter { out };
    w.string(b"nix-archive-1")?;
    w.node(path.as_std_path())
}

/// sha256 of the NAR serialization of `path`, as `sha256-<base64>` (standard
/// alphabet, padded), the form `nix hash path` prints.
pub fn nar_hash(path: &Utf8Path) -> anyhow::Result<String> {
    let mut hasher = HashingWriter(Sha256::new());
    // Small strings dominate the stream's structure; batch them.
    let mut buffered = io::BufWriter::with_capacity(64 * 1024, &mut hasher);
    write_nar(path, &mut buffered)?;
    buffered.flush()?;
    drop(buffered);
    let digest = hasher.0.finalize();
    Ok(format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(digest)))
}

/// A `Write` that feeds a digest and discards the bytes.
struct HashingWriter<D: Digest>(D);

impl<D: Digest> Write for HashingWriter<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct NarWriter<'a, W: Write> {
    out: &'a mut W,
}

const PAD: [u8; 8] = [0; 8];

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

impl<W: Write> NarWriter<'_, W> {
    fn string(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(bytes)?;
        self.out.write_all(&PAD[..padding(len)])
    }

    fn node(&mut self, path: &Path) -> anyhow::Result<()> {
        let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
        let ft = meta.file_type();
        self.string(b"(")?;
        self.string(b"type")?;
        if ft.is_file() {
            self.string(b"regular")?;
            if meta.permissions().mode() & 0o100 != 0 {
                self.string(b"executable")?;
                self.string(b"")?;
            }
            self.string(b"contents")?;
            self.contents(path, meta.len())?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).with_context(|| format!("reading symlink {}", path.display()))?;
            self.string(b"symlink")?;
            self.string(b"target")?;
            self.string(target.as_os_str().as_bytes())?;
        } else if ft.is_dir() {
            self.string(b"directory")?;
            let mut names = Vec::new();
            for entry in fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
                let entry = entry.with_context(|| format!("listing {}", path.display()))?;
                names.push(entry.file_name());
            }
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                self.string(b"entry")?;
                self.string(b"(")?;
                self.string(b"name")?;
                self.string(name.as_bytes())?;
                self.string(b"node")?;
                self.node(&path.join(&name))?;
                self.string(b")")?;
            }
        } else {
            bail!("{} is not a regular file, directory or symlink; NAR cannot represent it", path.display());
        }
        self.string(b")")?;
        Ok(())
    }

    /// The file's bytes as a NAR string, streamed. The length goes first, so
    /// a file that changes size while being read is an error, not a corrupt
    /// archive.
    fn contents(&mut self, path: &Path, len: u64) -> anyhow::Result<()> {
        let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        self.out.write_all(&len.to_le_bytes())?;
        let copied = io::copy(&mut file.take(len + 1), &mut *self.out).with_context(|| format!("reading {}", path.display()))?;
        if copied != len {
            bail!("{} changed size while being archived ({len} bytes, then {copied})", path.display());
        }
        self.out.write_all(&PAD[..padding(len)])?;
        Ok(())
    }
}
