//! `cache stats|verify|gc|keygen`: look after the store; make shared-cache keys.

use camino::Utf8PathBuf;

use kraft::cache::gc::{collect_garbage, GcOptions};
use kraft::cache::local::ActionCache;
use crate::flags::{CacheCommand, GcArgs};
use kraft::session::Session;

pub fn run(session: &Session, command: &CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Stats => {
            let root = session.store.root();
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            let mut total = 0;
            for dir in ["trees", "archives", "blobs", "ac", "plans", "git"] {
                let (files, bytes) = du(&root.join(dir));
                total += bytes;
                session.output.status("Store", &format!("{dir:<9} {files:>8} files {:>10.1} MiB", mib(bytes)));
            }
            let (compressed, compressed_bytes) = du_matching(&root.join("blobs"), kraft::store::blob::ZSTD_SUFFIX);
            session.output.status("Store", &format!("blobs    {compressed:>8} zstd    {:>10.1} MiB (the rest stored as they are)", mib(compressed_bytes)));
            session.output.status("Store", &format!("total    {:>25.1} MiB in {root}", mib(total)));
            let counters = session.store.counters();
            session.output.status("Uploaded", &format!("{:.1} MiB to the team cache by this store's builds", mib(counters.uploaded_bytes)));
            Ok(())
        }
        CacheCommand::Verify => {
            let report = session.store.verify(true)?;
            session.output.status("Verified", &format!("{:?}", report));
            let ac = ActionCache::new(&session.store).verify(true)?;
            for (path, problem) in &ac.problems {
                session.output.status("Removed", &format!("{path}: {problem}"));
            }
            session.output.status(
                "Verified",
                &format!("action cache: {} entries, {} manifests, {} removed", ac.entries_checked, ac.manifests_checked, ac.problems.len()),
            );
            Ok(())
        }
        CacheCommand::Gc(args) => gc(session, args),
        CacheCommand::Keygen(args) => keygen(args.id.as_deref()),
    }
}

/// `cache keygen`: a new key pair on stdout, each line ready for its variable.
fn keygen(id: Option<&str>) -> anyhow::Result<()> {
    let (private, public) = kraft::cache::signing::generate(id)?;
    println!("# CI only, keep it secret: the value below, or a file holding the value");
    println!("KRAFT_CACHE_SIGNING_KEY={private}");
    println!("# every client (add beside older keys to rotate): KRAFT_CACHE_TRUSTED_KEYS");
    println!("KRAFT_CACHE_TRUSTED_KEYS={public}");
    Ok(())
}

/// `cache gc`: keep the sources of every kraft.lock under the apps directory
/// (and those passed with `--lock`), and action-cache entries used within
/// `--max-age-days`; then, over `--max-size`, evict least recently used entries.
fn gc(session: &Session, args: &GcArgs) -> anyhow::Result<()> {
    let mut locks: Vec<Utf8PathBuf> = args.locks.clone();
    let apps = session.workspace.apps_dir();
    for entry in walkdir::WalkDir::new(&apps).max_depth(4).follow_links(true).into_iter().filter_map(Result::ok) {
        if entry.file_name() == kraft::source::lock::FILE_NAME {
            if let Ok(path) = Utf8PathBuf::from_path_buf(entry.path().to_owned()) {
                locks.push(path);
            }
        }
    }
    let mut options = GcOptions {
        max_age: std::time::Duration::from_secs(args.max_age_days.saturating_mul(24 * 3600)),
        max_size: args.max_size.as_deref().map(parse_size).transpose()?,
        dry_run: args.dry_run,
        ..GcOptions::default()
    };
    for path in &locks {
        let Some(file) = kraft::source::lock::Lock::read(path)? else {
            anyhow::bail!("{path}: no such lock file");
        };
        for c in &file.lock.components {
            options.keep_trees.extend(c.tree_blake3.clone());
            options.keep_archives.extend(c.archives.iter().map(|a| a.sha256.clone()));
        }
    }
    session.output.status("Keeping", &format!("sources of {} lock file(s)", locks.len()));
    let r = collect_garbage(&session.store, &options)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    session.output.status(
        if args.dry_run { "Would remove" } else { "Removed" },
        &format!(
            "{} entries, {} blobs, {} trees, {} archives, {} plans, {} temporary ({:.1} MiB); {:.1} MiB kept",
            r.removed_entries,
            r.removed_blobs,
            r.removed_trees,
            r.removed_archives,
            r.removed_plans,
            r.removed_temp,
            mib(r.freed_bytes),
            mib(r.kept_bytes)
        ),
    );
    if r.over_budget {
        session.output.warning(&kraft::diag::Diagnostic::new(format!(
            "the store is still over --max-size: the locked sources alone take {:.1} MiB",
            mib(r.kept_bytes)
        )));
    }
    Ok(())
}

/// `1048576`, `500MiB`, `2GiB`, `10G`, `512k`: binary units.
pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("--max-size {text:?}: expected a number with an optional unit (MiB, GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => anyhow::bail!("--max-size {text:?}: unknown unit {other:?} (use KiB, MiB, GiB)"),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| anyhow::anyhow!("--max-size {text:?} is too large"))
}

fn du(dir: &camino::Utf8Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for entry in walkdir::WalkDir::new(dir).into_iter().filter_map(Result::ok) {
        if entry.file_type().is_file() {
            files += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (files, bytes)
}

/// Files under `dir` whose name ends with `suffix`, and their bytes.
fn du_matching(dir: &camino::Utf8Path, suffix: &str) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for entry in walkdir::WalkDir::new(dir).into_iter().filter_map(Result::ok) {
        if entry.file_type().is_file() && entry.file_name().to_string_lossy().ends_with(suffix) {
            files += 1;
            bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (files, bytes)
}
