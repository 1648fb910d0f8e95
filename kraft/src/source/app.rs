//! `lock` and `update`: resolve the app's components and write kraft.lock.

use camino::Utf8PathBuf;

use crate::diag::Diagnostic;
use crate::source::kraftfile::{self, Kraftfile};
use crate::source::lock::{self, Lock};
use crate::source::resolve::{self, Update};
use crate::session::Session;
use crate::source::workspace::AppRef;

/// An app with its Kraftfile read and its lock current.
pub struct LockedApp {
    pub app: AppRef,
    pub kraftfile: Kraftfile,
    pub lock: Lock,
    pub lock_path: Utf8PathBuf,
}

/// Read the app, resolve what the lock lacks (or what `update` names), and
/// write the lock if it changed. With `session.locked`, a change is an error.
pub fn lock_app(session: &Session, app: &str, update: Update) -> anyhow::Result<LockedApp> {
    let app = session.workspace.app(app, session.kraftfile.as_deref())?;
    let kraftfile = kraftfile::load(&app.kraftfile)?;
    for warning in &kraftfile.warnings {
        session.output.warning(warning);
    }
    let lock_path = kraftfile.dir().join(lock::FILE_NAME);
    let previous = Lock::read(&lock_path)?;
    if session.locked && update != Update::Nothing {
        return Err(Diagnostic::new("cannot update kraft.lock: --locked/--frozen (or CI=true) forbids changing it")
            .help("run `cargo xtask update` without --locked, outside CI")
            .into());
    }
    if session.locked && previous.is_none() {
        return Err(Diagnostic::new(format!("{lock_path} is missing and --locked was given (CI=true implies --locked)"))
            .help(format!("run `cargo xtask lock {}` and commit kraft.lock", app.name))
            .into());
    }
    let wanted = resolve::wanted(&kraftfile, &session.recipes)?;
    let fetcher = session.fetcher();
    let new = resolve::resolve(&wanted, previous.as_ref().map(|p| &p.lock), &update, &fetcher)?;
    let text = new.render(previous.as_ref().map(|p| &p.document));
    let old_text = previous.as_ref().map(|p| p.text.as_str());
    if old_text != Some(text.as_str()) {
        if session.locked {
            let changes = describe_changes(previous.as_ref().map(|p| &p.lock), &new);
            return Err(Diagnostic::new(format!(
                "{lock_path} needs to be updated but --locked was given (CI=true implies --locked): {}",
                changes.join("; ")
            ))
            .help(format!("run `cargo xtask lock {}` and commit the new kraft.lock", app.name))
            .into());
        }
        for component in &new.components {
            let before = previous.as_ref().and_then(|p| p.lock.get(&component.name));
            if before != Some(component) {
                let pin = match (&component.git_ref, &component.commit) {
                    (Some(r), Some(c)) => format!("{} ({})", short(c), r),
                    _ => component.source.clone(),
                };
                let verb = if before.is_some() { "Updating" } else { "Locking" };
                session.output.status(verb, &format!("{} {} -> {pin}", component.name, component.requested));
            }
        }
        crate::util::fs::write_atomic(&lock_path, text.as_bytes())?;
    }
    Ok(LockedApp { app, kraftfile, lock: new, lock_path })
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// One phrase per component that differs, for the `--locked` error.
fn describe_changes(old: Option<&Lock>, new: &Lock) -> Vec<String> {
    let mut changes = Vec::new();
    for component in &new.components {
        match old.and_then(|o| o.get(&component.name)) {
            None => changes.push(format!("`{}` is not locked", component.name)),
            Some(before) if before != component => {
                let field = if before.requested != component.requested || before.source != component.source {
                    "the Kraftfile asks for a different source or version"
                } else if before.recipe_blake3 != component.recipe_blake3 || before.archives != component.archives {
                    "its recipe changed"
                } else {
                    "its pin changed"
                };
                changes.push(format!("`{}`: {field}", component.name));
            }
            Some(_) => {}
        }
    }
    if let Some(old) = old {
        for component in &old.components {
            if new.get(&component.name).is_none() {
                changes.push(format!("`{}` is no longer in the Kraftfile", component.name));
            }
        }
    }
    if changes.is_empty() {
        changes.push("its formatting differs from what this tool writes".into());
    }
    changes
}

/// `fetch`: the lock, plus every source tree and archive in the store,
/// verified against it. Returns each component's tree.
pub fn fetch_app(session: &Session, app: &str) -> anyhow::Result<(LockedApp, Vec<(String, Utf8PathBuf)>)> {
    let locked = lock_app(session, app, Update::Nothing)?;
    let fetcher = session.fetcher();
    let trees = resolve::materialize(&locked.lock, locked.kraftfile.dir(), &fetcher)?;
    crate::source::origins::fetch_locked(session, &locked.app.name, &locked.lock)?;
    session.output.status("Fetched", &format!("{} components into {}", trees.len(), session.store.root()));
    Ok((locked, trees))
}
