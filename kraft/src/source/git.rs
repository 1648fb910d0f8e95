//! The one place that runs git (through duct).
//!
//! Every git source is fetched into a bare cache repository in the store
//! (`<store>/git/<blake3(url)>.git`) and exported at an exact commit, never at
//! a moving branch. Exporting reads the commit's tree object directly
//! (`ls-tree` + `cat-file --batch`) instead of `git archive` or a checkout, so
//! no `.gitattributes` rule (export-ignore, export-subst, eol conversion)
//! changes a byte: the exported tree is exactly the commit's tree, which is
//! what Nix's `fetchGit` hashes too.
//!
//! Upstreams are not trusted: every call that takes a URL or a ref passes
//! `-c transfer.fsckObjects=true` (malformed objects are refused on fetch)
//! and `--end-of-options` (a URL or ref starting with `-` cannot become an
//! option), and an export writes only inside its destination: paths with
//! `..`, absolute paths, `.git` components and duplicates are refused,
//! nothing is written through a symlink, and a symlink may not point out of
//! the tree (the checks of `util::tree_path`, shared with archives).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;
use crate::util::tree_path;

/// Options for every call that reads from an upstream: refuse malformed
/// objects instead of storing them.
const FSCK: [&str; 2] = ["-c", "transfer.fsckObjects=true"];

/// A `git` command with an environment that cannot be redirected by the
/// caller's (`GIT_DIR` and friends) and never prompts for credentials.
fn git(args: &[&str]) -> duct::Expression {
    let mut expr = duct::cmd("git", args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("LC_ALL", "C");
    for var in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE"] {
        expr = expr.env_remove(var);
    }
    expr
}

/// Run git, returning trimmed stdout; on failure an error with git's stderr.
fn run(args: &[&str]) -> anyhow::Result<String> {
    let output = git(args).stdout_capture().stderr_capture().unchecked().run().context("running git (is it installed?)")?;
    if !output.status.success() {
        bail!("`git {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim_end().to_string())
}

/// `git ls-remote`: every ref of a repository, peeled tags as `refs/tags/X^{}`.
pub fn ls_remote(location: &str) -> anyhow::Result<Vec<(String, String)>> {
    let out = run(&[FSCK[0], FSCK[1], "-c", "protocol.file.allow=always", "ls-remote", "--end-of-options", location]).map_err(|err| {
        Diagnostic::new(format!("cannot list the refs of {location}: {err:#}"))
            .help("check the URL, or serve it from a mirror with KRAFT_MIRRORS='UPSTREAM_PREFIX=REPLACEMENT'")
    })?;
    Ok(parse_ref_lines(&out))
}

fn parse_ref_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (oid, name) = line.split_once(char::is_whitespace)?;
            Some((name.trim().to_string(), oid.to_string()))
        })
        .collect()
}

/// A bare repository in the store that caches one upstream.
#[derive(Debug, Clone)]
pub struct CacheRepo {
    pub path: Utf8PathBuf,
}

impl CacheRepo {
    /// The cache repository for `url` below `dir`, created if missing.
    pub fn open(dir: &Utf8Path, url: &str) -> anyhow::Result<CacheRepo> {
        let key = blake3::hash(url.as_bytes()).to_hex();
        let path = dir.join(format!("{}.git", &key[..32]));
        if !path.join("HEAD").is_file() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the git cache directory {dir}"))?;
            // Initialise next to it and rename, so a crash never leaves a half repo.
            let staging = tempfile::Builder::new()
                .prefix(".init-")
                .tempdir_in(dir)
                .with_context(|| format!("creating a staging directory in {dir}"))?;
            let staging_path = Utf8Path::from_path(staging.path()).context("non-UTF-8 temp path")?;
            run(&["init", "--quiet", "--bare", staging_path.as_str()])?;
            std::fs::write(staging_path.join("kraft-url"), url).with_context(|| format!("writing {staging_path}/kraft-url"))?;
            match std::fs::rename(staging.keep(), &path) {
                Ok(()) => {}
                Err(_) if path.join("HEAD").is_file() => {} // another process won
                Err(err) => return Err(err).with_context(|| format!("creating {path}")),
            }
        }
        Ok(CacheRepo { path })
    }

    fn git_dir_args<'a>(&'a self, rest: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["--git-dir", self.path.as_str()];
        args.extend_from_slice(rest);
        args
    }

    /// Fetch every branch and tag from `location` (a URL or local path).
    pub fn fetch(&self, location: &str) -> anyhow::Result<()> {
        let args = self.git_dir_args(&[
            FSCK[0],
            FSCK[1],
            "-c",
            "protocol.file.allow=always",
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--no-write-fetch-head",
            "--end-of-options",
            location,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ]);
        run(&args).map(drop).map_err(|err| {
            Diagnostic::new(format!("cannot fetch {location}: {err:#}"))
                .help("check the URL and your network, or serve it from a mirror with KRAFT_MIRRORS")
                .into()
        })
    }

    /// The refs this cache holds (as `ls-remote` would list them).
    pub fn refs(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = run(&self.git_dir_args(&["for-each-ref", "--format=%(objectname) %(refname)%0a%(*objectname) %(refname)^{}"]))?;
        Ok(parse_ref_lines(&out).into_iter().filter(|(_, oid)| !oid.is_empty() && !oid.starts_with(' ')).collect())
    }

    /// The commit a revision names, if this repository has it.
    pub fn rev_parse(&self, rev: &str) -> Option<String> {
        let spec = format!("{rev}^{{commit}}");
        run(&self.git_dir_args(&["rev-parse", "--verify", "--quiet", "--end-of-options", &spec])).ok().filter(|s| s.len() == 40)
    }

    pub fn has_commit(&self, commit: &str) -> bool {
        self.rev_parse(commit).as_deref() == Some(commit)
    }

    /// Committer time, seconds since the epoch.
    pub fn commit_time(&self, commit: &str) -> anyhow::Result<i64> {
        let out = run(&self.git_dir_args(&["show", "-s", "--format=%ct", "--end-of-options", commit]))?;
        out.trim().parse().with_context(|| format!("commit time of {commit}: {out:?}"))
    }

    /// Write the tree of `commit` into the empty directory `dest`.
    /// Submodules (gitlinks) are left out; Unikraft components have none.
    /// Every entry is checked before it is written (see the module docs).
    pub fn export(&self, commit: &str, dest: &Utf8Path) -> anyhow::Result<()> {
        let listing = git(&self.git_dir_args(&["ls-tree", "-r", "-z", "--full-tree", "--end-of-options", commit]))
            .stdout_capture()
            .stderr_capture()
            .unchecked()
            .run()
            .with_context(|| format!("running git ls-tree on {commit} in {}", self.path))?;
        if !listing.status.success() {
            bail!("listing the tree of {commit} in {}: {}", self.path, String::from_utf8_lossy(&listing.stderr).trim());
        }
        let entries = tree_entries(&listing.stdout, commit)?;

        let mut child = Command::new("git")
            .args(["--git-dir", self.path.as_str(), "cat-file", "--batch"])
            .env_remove("GIT_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running git cat-file")?;
        let mut stdin = child.stdin.take().context("git cat-file: no stdin")?;
        let oids: Vec<u8> = entries.iter().flat_map(|e| format!("{}\n", e.oid).into_bytes()).collect();
        let writer = std::thread::spawn(move || stdin.write_all(&oids));
        let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().context("git cat-file: no stdout")?);
        let mut header = String::new();
        let result = (|| -> anyhow::Result<()> {
            for entry in &entries {
                header.clear();
                reader.read_line(&mut header).context("reading git cat-file output")?;
                let size: usize = header
                    .trim_end()
                    .rsplit(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("git cat-file: unexpected header {header:?} for {}", entry.oid))?;
                let mut content = vec![0u8; size];
                reader.read_exact(&mut content).context("reading git cat-file output")?;
                let mut newline = [0u8; 1];
                reader.read_exact(&mut newline).context("reading git cat-file output")?;
                write_entry(dest, entry, content, commit)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = child.kill();
        }
        let fed = writer.join();
        let status = child.wait().context("waiting for git cat-file")?;
        result?;
        match fed {
            Ok(r) => r.context("feeding git cat-file")?,
            Err(_) => bail!("feeding git cat-file: the writer thread panicked"),
        }
        if !status.success() {
            bail!("git cat-file failed while exporting {commit}");
        }
        Ok(())
    }
}

/// One blob of a tree listing, checked.
struct TreeEntry {
    mode: String,
    oid: String,
    path: String,
}

fn refuse(commit: &str, path: &str, why: impl std::fmt::Display) -> anyhow::Error {
    Diagnostic::new(format!("refusing to export commit {commit}: its tree entry `{}` {why}", path.escape_debug()))
        .help("the repository is malformed or hostile; check where it came from (URL, mirror, commit) before trusting it")
        .into()
}

/// Parse `ls-tree -r -z` output, refusing paths that could write outside the
/// destination and duplicates (which a crafted tree object can hold).
fn tree_entries(listing: &[u8], commit: &str) -> anyhow::Result<Vec<TreeEntry>> {
    let mut entries = Vec::new();
    let mut seen = HashSet::new();
    for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = std::str::from_utf8(record).with_context(|| format!("exporting {commit}: a non-UTF-8 path in its tree"))?;
        let (meta, path) = record.split_once('\t').with_context(|| format!("exporting {commit}: malformed ls-tree line {record:?}"))?;
        let mut fields = meta.split(' ');
        let (mode, kind, oid) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        if kind != "blob" {
            continue; // gitlink
        }
        if path.split('/').any(|c| c == "." || c.is_empty()) {
            return Err(refuse(commit, path, "has an empty or `.` component"));
        }
        let components = tree_path::normal_components(path.as_bytes()).map_err(|why| refuse(commit, path, why))?;
        if components.iter().any(|c| tree_path::is_git_dir(c)) {
            return Err(refuse(commit, path, tree_path::PathProblem::GitDir));
        }
        if !seen.insert(path.to_string()) {
            return Err(refuse(commit, path, "appears twice"));
        }
        // Regular files (old repositories also hold 100664 and the like, which
        // git reads as 100644) and symlinks; anything else is not a blob mode.
        if !(mode.starts_with("100") || mode == "120000") {
            return Err(refuse(commit, path, format_args!("has the unsupported mode {mode}")));
        }
        entries.push(TreeEntry { mode: mode.to_string(), oid: oid.to_string(), path: path.to_string() });
    }
    Ok(entries)
}

/// Write one checked entry below `dest`: never through a symlink written
/// earlier, never over something that exists (`create_new` does not follow
/// a symlink at the last component), symlinks only to targets inside.
fn write_entry(dest: &Utf8Path, entry: &TreeEntry, content: Vec<u8>, commit: &str) -> anyhow::Result<()> {
    let components: Vec<&OsStr> = entry.path.split('/').map(OsStr::new).collect();
    let target = tree_path::no_symlink_on_path(dest.as_std_path(), &components, true).map_err(|why| refuse(commit, &entry.path, why))?;
    if std::fs::symlink_metadata(&target).is_ok() {
        return Err(refuse(commit, &entry.path, "would replace something written earlier"));
    }
    let write_err = |op: &str| format!("exporting {commit}: {op} {}", target.display());
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).with_context(|| write_err("creating the parent of"))?;
    }
    match entry.mode.as_str() {
        "120000" => {
            tree_path::check_symlink_target(&content, components.len() - 1).map_err(|why| {
                refuse(commit, &entry.path, format_args!("is a symlink to `{}`, which {why}", String::from_utf8_lossy(&content)))
            })?;
            std::os::unix::fs::symlink(<OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&content), &target)
                .with_context(|| write_err("creating the symlink"))?;
        }
        mode => {
            let perm = if mode == "100755" { 0o755 } else { 0o644 };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(perm)
                .open(&target)
                .with_context(|| write_err("creating"))?;
            file.write_all(&content).with_context(|| write_err("writing"))?;
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(perm)).with_context(|| write_err("setting the mode of"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_lines() {
        let refs = parse_ref_lines("abc\trefs/heads/stable\ndef\trefs/tags/v1^{}\n");
        assert_eq!(refs[1], ("refs/tags/v1^{}".to_string(), "def".to_string()));
    }
}
