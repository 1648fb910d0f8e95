//! The one place that runs git (through duct).
//!
//! Every git source is fetched into a bare cache repository in the store
//! (`<store>/git/<blake3(url)>.git`) and exported at an exact commit, never at
//! a moving branch. Exporting reads the commit's tree object directly
//! (`ls-tree` + `cat-file --batch`) instead of `git archive` or a checkout, so
//! no `.gitattributes` rule (export-ignore, export-subst, eol conversion)
//! changes a byte: the exported tree is exactly the commit's tree, which is
//! what Nix's `fetchGit` hashes too.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use camino::{Utf8Path, Utf8PathBuf};

use crate::diag::Diagnostic;

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
    let out = run(&["-c", "protocol.file.allow=always", "ls-remote", location]).map_err(|err| {
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
            std::fs::create_dir_all(dir)?;
            // Initialise next to it and rename, so a crash never leaves a half repo.
            let staging = tempfile::Builder::new().prefix(".init-").tempdir_in(dir)?;
            let staging_path = Utf8Path::from_path(staging.path()).context("non-UTF-8 temp path")?;
            run(&["init", "--quiet", "--bare", staging_path.as_str()])?;
            std::fs::write(staging_path.join("kraft-url"), url)?;
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
            "-c",
            "protocol.file.allow=always",
            "fetch",
            "--quiet",
            "--force",
            "--prune",
            "--no-write-fetch-head",
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
        run(&self.git_dir_args(&["rev-parse", "--verify", "--quiet", &spec])).ok().filter(|s| s.len() == 40)
    }

    pub fn has_commit(&self, commit: &str) -> bool {
        self.rev_parse(commit).as_deref() == Some(commit)
    }

    /// Committer time, seconds since the epoch.
    pub fn commit_time(&self, commit: &str) -> anyhow::Result<i64> {
        let out = run(&self.git_dir_args(&["show", "-s", "--format=%ct", commit]))?;
        out.trim().parse().with_context(|| format!("commit time of {commit}: {out:?}"))
    }

    /// Write the tree of `commit` into the empty directory `dest`.
    /// Submodules (gitlinks) are left out; Unikraft components have none.
    pub fn export(&self, commit: &str, dest: &Utf8Path) -> anyhow::Result<()> {
        let listing = git(&self.git_dir_args(&["ls-tree", "-r", "-z", "--full-tree", commit]))
            .stdout_capture()
            .stderr_capture()
            .run()
            .with_context(|| format!("listing the tree of {commit} in {}", self.path))?;
        let mut entries = Vec::new();
        for record in listing.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let record = std::str::from_utf8(record).context("non-UTF-8 path in git tree")?;
            let (meta, path) = record.split_once('\t').context("malformed ls-tree line")?;
            let mut fields = meta.split(' ');
            let (mode, kind, oid) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            if kind != "blob" {
                continue; // gitlink
            }
            if path.split('/').any(|c| c == ".." || c == "." || c.is_empty()) || path.starts_with('/') {
                bail!("refusing to export {commit}: hostile path {path:?} in its tree");
            }
            entries.push((mode.to_string(), oid.to_string(), path.to_string()));
        }

        let mut child = Command::new("git")
            .args(["--git-dir", self.path.as_str(), "cat-file", "--batch"])
            .env_remove("GIT_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("running git cat-file")?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let oids: Vec<u8> = entries.iter().flat_map(|(_, oid, _)| format!("{oid}\n").into_bytes()).collect();
        let writer = std::thread::spawn(move || stdin.write_all(&oids));
        let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().expect("piped stdout"));
        let mut header = String::new();
        for (mode, oid, path) in &entries {
            header.clear();
            reader.read_line(&mut header)?;
            let size: usize = header
                .trim_end()
                .rsplit(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("git cat-file: unexpected header {header:?} for {oid}"))?;
            let mut content = vec![0u8; size];
            reader.read_exact(&mut content)?;
            let mut newline = [0u8; 1];
            reader.read_exact(&mut newline)?;
            let target = dest.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match mode.as_str() {
                "120000" => {
                    let link = String::from_utf8(content).context("non-UTF-8 symlink target")?;
                    std::os::unix::fs::symlink(&link, &target)?;
                }
                _ => {
                    std::fs::write(&target, &content)?;
                    if mode == "100755" {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
                    }
                }
            }
        }
        writer.join().expect("writer thread").context("feeding git cat-file")?;
        let status = child.wait()?;
        if !status.success() {
            bail!("git cat-file failed while exporting {commit}");
        }
        Ok(())
    }
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
