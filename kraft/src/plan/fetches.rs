//! Origin archives, learned from make instead of written in recipes.
//!
//! Unikraft's `fetch`, `fetch2`, `fetchas` and `fetchas2` macros
//! (`support/build/Makefile.rules`) download with
//! `$(WGET) … -O <dest> <url>`, and `WGET` is an ordinary make variable. So
//! `make fetch prepare` runs with `WGET` set to a small script of ours, in
//! the sandbox (no network). The script serves each URL the lock already
//! pins from files staged beside it, and records every call: destination,
//! URL, served or missing. `fetch2`'s second URL (tried when the first
//! fails) is recorded as a fallback of the same destination.
//!
//! A URL the lock does not pin yet is asked for while make waits: the
//! script leaves a request in `requests/` and waits for its answer in
//! `answers/`. The planner, polling beside make ([`answer_requests`]), has
//! an [`OriginProvider`] get it (from the store, `KRAFT_ARCHIVE_DIR`, a
//! mirror or the network) and pin it in `kraft.lock` on first use, stages
//! it, and answers with the staged file; or answers "missing" (refused
//! under `--locked`, or not found), and the script fails as `wget` would.
//! A served archive is copied into place the same way whether the lock
//! pinned it before make ran or while it ran, so the prepared tree is the
//! same, and a new app's first build runs `make fetch prepare` once.
//! So the configuration actually being built decides which archives are
//! needed, and make never downloads anything.

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

use crate::plan::command::normalize;

/// The directory below the build dir that holds the stand-in `wget`, the
/// staged archives and the record; removed before the build dir is cached.
pub const FETCH_DIR: &str = ".kraft-fetch";

/// One download the build would make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginFetch {
    /// Destination, relative to the build dir (`liblwip/UNIKRAFT-2_1_x.zip`).
    pub dest: Utf8PathBuf,
    /// The URLs make tried, in order.
    pub urls: Vec<String>,
}

impl OriginFetch {
    /// The archive's file name (how `KRAFT_ARCHIVE_DIR` finds it).
    pub fn file_name(&self) -> &str {
        self.dest.file_name().unwrap_or(self.dest.as_str())
    }

    /// The Unikraft library whose build dir it lands in (`liblwip`).
    pub fn library(&self) -> &str {
        self.dest.components().next().map(|c| c.as_str()).unwrap_or("")
    }
}

/// An archive make got from the stand-in: where, from which URL, with which
/// content. Kept with a cached plan so a cache hit can check the lock still
/// pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrigin {
    pub dest: Utf8PathBuf,
    pub url: String,
    pub sha256: String,
}

/// An archive the lock pins, ready to be served to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedOrigin {
    pub url: String,
    pub sha256: String,
    /// The host file (in the store).
    pub file: Utf8PathBuf,
}

/// Who gets archives for the planner (the lock and the store, in a build).
pub trait OriginProvider {
    /// Every archive the lock pins, in the store, to serve by URL.
    fn staged(&self) -> Result<Vec<StagedOrigin>>;
    /// Get and pin an archive make asked for that was not staged (or refuse,
    /// under `--locked`); what to serve for it.
    fn provide(&self, fetch: &OriginFetch) -> Result<StagedOrigin>;
    /// Whether a cached plan's archive is still what the lock pins.
    fn still_pinned(&self, placed: &PlacedOrigin) -> bool;
}

/// The stand-in for `wget`: `-O FILE`/`-OFILE`/`--output-document[=]FILE`
/// and the first URL; serves a staged file or fails (make then runs the
/// next URL of `fetch2`, or stops that library's fetch).
const WGET_SCRIPT: &str = r#"#!/bin/sh
# kraft-xtask's stand-in for wget while make fetches (see plan/fetches.rs).
dir=$(dirname "$0")
dest=
url=
while [ $# -gt 0 ]; do
    case "$1" in
        -O|--output-document) shift; dest=$1 ;;
        --output-document=*) dest=${1#--output-document=} ;;
        -O*) dest=${1#-O} ;;
        -*) ;;
        *://*) [ -n "$url" ] || url=$1 ;;
    esac
    shift
done
staged=$(awk -F '	' -v u="$url" '$1 == u { print $2; exit }' "$dir/staged")
if [ -z "$staged" ] && [ -d "$dir/requests" ]; then
    # Ask the planner outside the sandbox; it answers with a staged file's
    # name, or with nothing.
    printf '%s	%s
' "$dest" "$url" > "$dir/requests/.$$" && mv "$dir/requests/.$$" "$dir/requests/$$"
    while [ ! -e "$dir/answers/$$" ]; do sleep 0.02; done
    staged=$(cat "$dir/answers/$$")
    rm -f "$dir/answers/$$"
fi
if [ -n "$staged" ] && cp "$dir/files/$staged" "$dest"; then
    printf '%s	%s	served
' "$dest" "$url" >> "$dir/log"
    exit 0
fi
printf '%s	%s	missing
' "$dest" "$url" >> "$dir/log"
echo "kraft-xtask: $url is not in kraft.lock and could not be got for it (the planner says why)" >&2
exit 1
"#;

/// Writes the stand-in and the staged archives into `<build>/.kraft-fetch`;
/// returns the `WGET=` value for make (an inside path).
pub fn stage(build_host: &Utf8Path, build_inside: &Utf8Path, staged: &[StagedOrigin]) -> Result<String> {
    let dir = build_host.join(FETCH_DIR);
    for sub in ["files", "requests", "answers"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {dir}/{sub}"))?;
    }
    let script = dir.join("wget");
    std::fs::write(&script, WGET_SCRIPT).with_context(|| format!("writing {script}"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("making {script} executable"))?;
    let mut table = String::new();
    for (i, origin) in staged.iter().enumerate() {
        stage_file(&dir, i, origin)?;
        table.push_str(&format!("{}	{i}
", origin.url));
    }
    std::fs::write(dir.join("staged"), table).with_context(|| format!("writing {dir}/staged"))?;
    std::fs::write(dir.join("log"), "").with_context(|| format!("writing {dir}/log"))?;
    Ok(build_inside.join(FETCH_DIR).join("wget").to_string())
}

/// Links (or copies) `origin` to `files/<index>`, where the stand-in serves it from.
fn stage_file(dir: &Utf8Path, index: usize, origin: &StagedOrigin) -> Result<()> {
    let file = dir.join("files").join(index.to_string());
    // A hard link costs nothing; another filesystem gets a copy.
    if std::fs::hard_link(&origin.file, &file).is_err() {
        std::fs::copy(&origin.file, &file).with_context(|| format!("staging {} at {file}", origin.file))?;
    }
    Ok(())
}

/// Answers every request the stand-in has left since the last call: each
/// asked-for archive is got through `provider` and staged (appended to
/// `staged`, which [`collect`] then reads the pins from), or answered
/// missing. A refusal or failure is kept in `failures` with its
/// destination, for the caller to report if make never got that file.
pub fn answer_requests(
    build_host: &Utf8Path,
    build_inside: &Utf8Path,
    staged: &mut Vec<StagedOrigin>,
    provider: &dyn OriginProvider,
    failures: &mut Vec<(Utf8PathBuf, anyhow::Error)>,
) -> Result<()> {
    let dir = build_host.join(FETCH_DIR);
    let requests = dir.join("requests");
    let mut pending: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(&requests).with_context(|| format!("reading {requests}"))? {
        let name = entry.with_context(|| format!("reading {requests}"))?.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            pending.push(name);
        }
    }
    pending.sort();
    for id in pending {
        let path = requests.join(&id);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        std::fs::remove_file(&path).with_context(|| format!("removing {path}"))?;
        let (dest, url) = text.trim_end_matches('\n').split_once('\t').unwrap_or(("", ""));
        let dest = normalize(build_inside, dest);
        let answer = match dest.strip_prefix(build_inside) {
            // `collect` rejects a destination outside the build dir from the log.
            Err(_) => String::new(),
            Ok(rel) => {
                let fetch = OriginFetch { dest: rel.to_owned(), urls: vec![url.to_string()] };
                match provider.provide(&fetch) {
                    Ok(origin) => {
                        let index = staged.len();
                        stage_file(&dir, index, &origin)?;
                        staged.push(origin);
                        index.to_string()
                    }
                    Err(e) => {
                        failures.push((fetch.dest, e));
                        String::new()
                    }
                }
            }
        };
        let tmp = dir.join("answers").join(format!(".{id}"));
        std::fs::write(&tmp, answer).with_context(|| format!("writing {tmp}"))?;
        std::fs::rename(&tmp, dir.join("answers").join(&id)).with_context(|| format!("answering request {id} in {dir}"))?;
    }
    Ok(())
}

/// What the stand-in recorded: the archives it served (with their pins) and
/// the downloads it could not serve. Removes `<build>/.kraft-fetch`.
pub fn collect(build_host: &Utf8Path, build_inside: &Utf8Path, staged: &[StagedOrigin]) -> Result<(Vec<PlacedOrigin>, Vec<OriginFetch>)> {
    let dir = build_host.join(FETCH_DIR);
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    crate::util::fs::remove_tree(&dir)?;
    parse_log(&log, build_inside, staged)
}

fn parse_log(log: &str, build: &Utf8Path, staged: &[StagedOrigin]) -> Result<(Vec<PlacedOrigin>, Vec<OriginFetch>)> {
    let mut placed: Vec<PlacedOrigin> = Vec::new();
    let mut missing: Vec<OriginFetch> = Vec::new();
    for line in log.lines() {
        let mut fields = line.split('\t');
        let (Some(dest), Some(url), Some(outcome)) = (fields.next(), fields.next(), fields.next()) else { continue };
        let dest = normalize(build, dest);
        let Ok(rel) = dest.strip_prefix(build) else {
            anyhow::bail!("make would download {url} to {dest}, outside the build dir {build}");
        };
        let rel = rel.to_owned();
        if outcome == "served" {
            let sha256 = staged.iter().find(|s| s.url == url).map(|s| s.sha256.clone()).unwrap_or_default();
            placed.retain(|p| p.dest != rel);
            missing.retain(|m| m.dest != rel);
            placed.push(PlacedOrigin { dest: rel, url: url.to_string(), sha256 });
            continue;
        }
        if placed.iter().any(|p| p.dest == rel) {
            continue;
        }
        match missing.iter_mut().find(|f| f.dest == rel) {
            Some(existing) if !existing.urls.iter().any(|u| u == url) => existing.urls.push(url.to_string()),
            Some(_) => {}
            None => missing.push(OriginFetch { dest: rel, urls: vec![url.to_string()] }),
        }
    }
    // Under `make -j` the libraries' downloads finish in any order.
    placed.sort_by(|a, b| a.dest.cmp(&b.dest));
    missing.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok((placed, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_record() {
        let staged = vec![StagedOrigin { url: "https://a.example/x.tgz".into(), sha256: "ab".repeat(32), file: "/s/x".into() }];
        let log = "\
/kraft/build/liblwip/UNIKRAFT-2_1_x.zip\thttps://github.com/unikraft/fork-lwip/archive/refs/heads/UNIKRAFT-2_1_x.zip\tmissing
/kraft/build/libx/y.tgz\thttps://b.example/y.tgz\tmissing
/kraft/build/libx/y.tgz\thttps://c.example/y.tgz\tmissing
/kraft/build/libx/x.tgz\thttps://a.example/x.tgz\tserved
";
        let (placed, missing) = parse_log(log, Utf8Path::new("/kraft/build"), &staged).unwrap();
        assert_eq!(placed, vec![PlacedOrigin { dest: "libx/x.tgz".into(), url: "https://a.example/x.tgz".into(), sha256: "ab".repeat(32) }]);
        assert_eq!(missing.len(), 2);
        assert_eq!(missing[0].dest, "liblwip/UNIKRAFT-2_1_x.zip");
        assert_eq!(missing[0].library(), "liblwip");
        assert_eq!(missing[0].file_name(), "UNIKRAFT-2_1_x.zip");
        assert_eq!(missing[1].urls, vec!["https://b.example/y.tgz", "https://c.example/y.tgz"]);
        assert!(parse_log("/etc/x\thttps://a/x\tmissing\n", Utf8Path::new("/kraft/build"), &[]).is_err());
    }
}
