//! `cache stats|verify`: look after the store.

use crate::flags::CacheCommand;
use crate::session::Session;

pub fn run(session: &Session, command: &CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Stats => {
            let root = session.store.root();
            for dir in ["trees", "archives", "blobs", "ac", "git"] {
                let (files, bytes) = du(&root.join(dir));
                session.output.status("Store", &format!("{dir:<9} {files:>8} files {:>10.1} MiB", bytes as f64 / (1024.0 * 1024.0)));
            }
            Ok(())
        }
        CacheCommand::Verify => {
            let report = session.store.verify(true)?;
            session.output.status("Verified", &format!("{:?}", report));
            Ok(())
        }
    }
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
