//! Bundles in the team cache: a few files (a cached plan's `plan.json.zst` and
//! `prepared.tar.zst`) as CAS blobs behind one signed `ac/` entry, whose key
//! is derived from the bundle's kind and name so it can never equal an
//! action key. See the protocol in the parent module.

use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

use super::{BlobUpload, RemoteTier, Upload};

impl RemoteTier {
    /// The files of the bundle published as `kind`/`name`
    /// ([`RemoteTier::put_bundle`]), in the order of `files` (which must be
    /// exactly the bundle's), each verified: a trusted signature over the
    /// entry, every blob against its SHA-256 and size.
    pub fn get_bundle(&self, kind: &str, name: &str, files: &[&str]) -> Option<Vec<Vec<u8>>> {
        let payload = self.get_ac(&bundle_key(kind, name))?;
        let doc = serde_json::from_slice::<BundleDoc>(&payload).ok().filter(|d| d.kind == kind && d.name == name)?;
        if doc.files.len() != files.len() || doc.files.iter().zip(files).any(|(f, want)| f.file != *want) {
            return None;
        }
        doc.files.iter().map(|f| self.get_blob(&f.sha256, Some(f.size))).collect()
    }

    /// Publish `paths` as the bundle `kind`/`name` (a cached plan, by its
    /// plan key): each file goes to the CAS, then a signed `ac/` entry under
    /// a key derived from both names lists them by file name. Queued like
    /// any upload; the files must stay until the build ends.
    pub fn put_bundle(&self, kind: &str, name: &str, paths: Vec<Utf8PathBuf>) {
        let mut files = Vec::with_capacity(paths.len());
        for path in &paths {
            let (Some(file), Ok(meta)) = (path.file_name(), std::fs::metadata(path)) else { return };
            files.push(BundleFile { file: file.to_owned(), sha256: String::new(), size: meta.len() });
        }
        let (kind, name) = (kind.to_owned(), name.to_owned());
        self.upload(Upload {
            key: bundle_key(&kind, &name),
            blobs: paths.into_iter().map(|path| BlobUpload { path, sha256: None }).collect(),
            payload: Box::new(move |hashes: &[String]| {
                for (file, sha256) in files.iter_mut().zip(hashes) {
                    file.sha256 = sha256.clone();
                }
                serde_json::to_vec(&BundleDoc { kind, name, files }).ok()
            }),
            only_if_missing: false,
        });
    }

}

/// The payload of a bundle's `ac/` entry: what it is, and its files as CAS blobs.
#[derive(Serialize, Deserialize)]
struct BundleDoc {
    kind: String,
    name: String,
    files: Vec<BundleFile>,
}

#[derive(Serialize, Deserialize)]
struct BundleFile {
    file: String,
    sha256: String,
    size: u64,
}

/// The `ac/` key of a bundle: a domain-separated hash of its kind and name,
/// so it can never equal an action key.
fn bundle_key(kind: &str, name: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"kraft-xtask bundle v1\0");
    h.update(kind.as_bytes());
    h.update(&[0]);
    h.update(name.as_bytes());
    h.finalize().to_hex().to_string()
}

