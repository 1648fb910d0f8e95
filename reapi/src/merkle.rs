//! Merkle trees of `Directory` protos for action input roots and output
//! directories.
//!
//! Given a flat list of files (relative path, content digest, executable bit),
//! symlinks and empty directories, [`MerkleTree::build`] produces the REAPI
//! canonical directory tree: every `Directory` lists its files, directories
//! and symlinks sorted by name (byte-wise, which equals code-point order for
//! UTF-8) with no duplicates, as the spec requires, so that identical inputs
//! always hash to the same root digest.

use std::collections::{BTreeMap, HashSet};

use bazel_remote_apis::build::bazel::remote::execution::v2::{
    Digest, Directory, DirectoryNode, FileNode, SymlinkNode, Tree,
};

use crate::digest::{digest_message, Blob};
use crate::error::{Error, Result};

/// A regular file to place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Relative path using `/` separators, e.g. `src/main.c`.
    pub path: String,
    /// Digest of the file content (the content itself is uploaded separately).
    pub digest: Digest,
    /// Whether the file is executable.
    pub is_executable: bool,
}

/// A symbolic link to place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSymlink {
    /// Relative path of the link itself.
    pub path: String,
    /// Link target, stored verbatim (normally relative).
    pub target: String,
}

/// One encoded `Directory` of a tree.
#[derive(Debug, Clone, PartialEq)]
pub struct DirectoryBlob {
    /// Digest of `encoded`.
    pub digest: Digest,
    /// The decoded message.
    pub directory: Directory,
    /// Canonical encoding, the bytes to upload.
    pub encoded: Vec<u8>,
}

/// Result of [`MerkleTree::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct MerkleTree {
    /// Digest of the root `Directory`.
    pub root_digest: Digest,
    /// Every distinct `Directory` of the tree (root first, then in depth-first
    /// order), deduplicated by digest.
    pub directories: Vec<DirectoryBlob>,
}

#[derive(Default)]
struct Node {
    files: BTreeMap<String, (Digest, bool)>,
    symlinks: BTreeMap<String, String>,
    dirs: BTreeMap<String, Node>,
    /// Directories whose digest is known (their blobs live elsewhere).
    grafts: BTreeMap<String, Digest>,
}

/// Splits and validates a relative path: non-empty, no leading `/`, no `.`,
/// `..` or empty components. Trailing `/` is rejected too.
pub fn split_relative_path(path: &str) -> Result<Vec<&str>> {
    if path.is_empty() {
        return Err(Error::InvalidArgument("empty path".into()));
    }
    if path.starts_with('/') {
        return Err(Error::InvalidArgument(format!("path {path:?} is absolute")));
    }
    let parts: Vec<&str> = path.split('/').collect();
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." || p.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "path {path:?} has an invalid component {p:?}"
            )));
        }
    }
    Ok(parts)
}

impl Node {
    fn dir_mut(&mut self, parts: &[&str], full: &str) -> Result<&mut Node> {
        let mut node = self;
        for p in parts {
            if node.files.contains_key(*p)
                || node.symlinks.contains_key(*p)
                || node.grafts.contains_key(*p)
            {
                return Err(Error::InvalidArgument(format!(
                    "{full:?}: {p:?} is both a file/symlink and a directory"
                )));
            }
            node = node.dirs.entry((*p).to_string()).or_default();
        }
        Ok(node)
    }

    fn check_free(&self, name: &str, full: &str) -> Result<()> {
        if self.files.contains_key(name)
            || self.symlinks.contains_key(name)
            || self.dirs.contains_key(name)
            || self.grafts.contains_key(name)
        {
            return Err(Error::InvalidArgument(format!("duplicate path {full:?}")));
        }
        Ok(())
    }

    /// Encodes this node bottom-up, appending child blobs to `out`.
    fn encode(&self, out: &mut Vec<DirectoryBlob>, seen: &mut HashSet<String>) -> Digest {
        let mut dir = Directory::default();
        for (name, node) in &self.dirs {
            let digest = node.encode(out, seen);
            dir.directories.push(DirectoryNode {
                name: name.clone(),
                digest: Some(digest),
            });
        }
        for (name, digest) in &self.grafts {
            dir.directories.push(DirectoryNode {
                name: name.clone(),
                digest: Some(digest.clone()),
            });
        }
        dir.directories.sort_by(|a, b| a.name.cmp(&b.name));
        for (name, (digest, exec)) in &self.files {
            dir.files.push(FileNode {
                name: name.clone(),
                digest: Some(digest.clone()),
                is_executable: *exec,
                node_properties: None,
            });
        }
        for (name, target) in &self.symlinks {
            dir.symlinks.push(SymlinkNode {
                name: name.clone(),
                target: target.clone(),
                node_properties: None,
            });
        }
        let (digest, encoded) = digest_message(&dir);
        if seen.insert(digest.hash.clone()) {
            out.push(DirectoryBlob {
                digest: digest.clone(),
                directory: dir,
                encoded,
            });
        }
        digest
    }
}

impl MerkleTree {
    /// Builds the canonical tree from files, symlinks and (possibly empty)
    /// extra directories. Fails on invalid or duplicate paths.
    pub fn build(
        files: &[InputFile],
        symlinks: &[InputSymlink],
        empty_dirs: &[String],
    ) -> Result<Self> {
        Self::build_grafted(files, symlinks, empty_dirs, &[])
    }

    /// Like [`MerkleTree::build`], plus whole directories given by digest
    /// (`(path, digest)`): trees built earlier, shared by many roots. Their
    /// blobs are not part of the result; upload them with their own tree.
    pub fn build_grafted(
        files: &[InputFile],
        symlinks: &[InputSymlink],
        empty_dirs: &[String],
        grafts: &[(String, Digest)],
    ) -> Result<Self> {
        let mut root = Node::default();
        for (path, digest) in grafts {
            let parts = split_relative_path(path)?;
            let (name, parents) = parts.split_last().expect("split returns >= 1 part");
            let dir = root.dir_mut(parents, path)?;
            dir.check_free(name, path)?;
            dir.grafts.insert((*name).to_string(), digest.clone());
        }
        for f in files {
            let parts = split_relative_path(&f.path)?;
            let (name, parents) = parts.split_last().expect("split returns >= 1 part");
            let dir = root.dir_mut(parents, &f.path)?;
            dir.check_free(name, &f.path)?;
            dir.files
                .insert((*name).to_string(), (f.digest.clone(), f.is_executable));
        }
        for s in symlinks {
            let parts = split_relative_path(&s.path)?;
            if s.target.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "symlink {:?} has an empty target",
                    s.path
                )));
            }
            let (name, parents) = parts.split_last().expect("split returns >= 1 part");
            let dir = root.dir_mut(parents, &s.path)?;
            dir.check_free(name, &s.path)?;
            dir.symlinks.insert((*name).to_string(), s.target.clone());
        }
        for d in empty_dirs {
            let parts = split_relative_path(d.trim_end_matches('/'))?;
            root.dir_mut(&parts, d)?;
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let root_digest = root.encode(&mut out, &mut seen);
        // `encode` is post-order: the root is last. Put it first.
        out.reverse();
        Ok(MerkleTree {
            root_digest,
            directories: out,
        })
    }

    /// The root `Directory` message.
    pub fn root(&self) -> &Directory {
        &self.directories[0].directory
    }

    /// All directory blobs, ready for upload.
    pub fn blobs(&self) -> Vec<Blob> {
        self.directories
            .iter()
            .map(|d| Blob {
                digest: d.digest.clone(),
                data: d.encoded.clone(),
            })
            .collect()
    }

    /// Digests of all directories (root included).
    pub fn digests(&self) -> Vec<Digest> {
        self.directories.iter().map(|d| d.digest.clone()).collect()
    }

    /// The tree as a `Tree` message (used for `OutputDirectory`).
    pub fn to_tree(&self) -> Tree {
        Tree {
            root: Some(self.root().clone()),
            children: self.directories[1..]
                .iter()
                .map(|d| d.directory.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::digest_of;

    fn f(path: &str, data: &[u8], x: bool) -> InputFile {
        InputFile {
            path: path.into(),
            digest: digest_of(data),
            is_executable: x,
        }
    }

    #[test]
    fn order_independent_and_sorted() {
        let a = [
            f("b/z.c", b"z", false),
            f("a.txt", b"a", false),
            f("b/y.c", b"y", true),
        ];
        let mut b = a.clone();
        b.reverse();
        let ta = MerkleTree::build(&a, &[], &[]).unwrap();
        let tb = MerkleTree::build(&b, &[], &[]).unwrap();
        assert_eq!(ta.root_digest, tb.root_digest);
        assert_eq!(ta.directories.len(), 2);
        let root = ta.root();
        assert_eq!(root.files[0].name, "a.txt");
        assert_eq!(root.directories[0].name, "b");
        let sub = &ta.directories[1].directory;
        let names: Vec<_> = sub.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["y.c", "z.c"]);
        assert!(sub.files[0].is_executable);
    }

    #[test]
    fn identical_subdirs_dedup() {
        let t =
            MerkleTree::build(&[f("x/a", b"1", false), f("y/a", b"1", false)], &[], &[]).unwrap();
        assert_eq!(t.directories.len(), 2);
        assert_eq!(t.root().directories.len(), 2);
    }

    #[test]
    fn empty_tree_and_dirs() {
        let t = MerkleTree::build(&[], &[], &[]).unwrap();
        assert_eq!(t.root_digest, digest_of(b""));
        let t = MerkleTree::build(&[], &[], &["out/obj".into()]).unwrap();
        assert_eq!(t.directories.len(), 3);
    }

    #[test]
    fn rejects_bad_paths() {
        for p in ["", "/abs", "a/../b", "a//b", "./a", "a/"] {
            assert!(
                MerkleTree::build(&[f(p, b"", false)], &[], &[]).is_err(),
                "{p}"
            );
        }
        assert!(MerkleTree::build(&[f("a", b"", false), f("a", b"", false)], &[], &[]).is_err());
        assert!(MerkleTree::build(&[f("a", b"", false), f("a/b", b"", false)], &[], &[]).is_err());
        let s = InputSymlink {
            path: "a".into(),
            target: "b".into(),
        };
        assert!(MerkleTree::build(&[f("a", b"", false)], &[s], &[]).is_err());
    }

    #[test]
    fn grafted_subtree_gives_the_same_root() {
        let whole = MerkleTree::build(
            &[
                f("src/a.c", b"a", false),
                f("src/x/b.h", b"b", false),
                f("z", b"z", false),
            ],
            &[],
            &[],
        )
        .unwrap();
        let sub =
            MerkleTree::build(&[f("a.c", b"a", false), f("x/b.h", b"b", false)], &[], &[]).unwrap();
        let grafted = MerkleTree::build_grafted(
            &[f("z", b"z", false)],
            &[],
            &[],
            &[("src".into(), sub.root_digest.clone())],
        )
        .unwrap();
        assert_eq!(whole.root_digest, grafted.root_digest);
        assert!(MerkleTree::build_grafted(
            &[f("src", b"", false)],
            &[],
            &[],
            &[("src".into(), sub.root_digest)]
        )
        .is_err());
    }

    #[test]
    fn symlinks_included() {
        let s = InputSymlink {
            path: "lib/libc.so".into(),
            target: "libc.so.6".into(),
        };
        let t = MerkleTree::build(&[], &[s], &[]).unwrap();
        assert_eq!(t.directories[1].directory.symlinks[0].target, "libc.so.6");
        let tree = t.to_tree();
        assert_eq!(tree.children.len(), 1);
    }
}
