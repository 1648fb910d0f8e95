//! `explain`: why each action of the last build ran (ninja's `-d explain`,
//! after the fact).
//!
//! Reads the build dir's state and lists, for every action that ran, was
//! restored from the cache, or failed in the last build, its
//! [`DirtyReason`](crate::exec::fingerprint::DirtyReason): the input or header that
//! changed with its old and new hash, a missing output, a changed command or
//! toolchain. Up-to-date actions are not listed.

use std::fmt;

use camino::Utf8Path;

use crate::exec::state::{BuildState, LogEntry, Outcome};

/// Which log entries to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Filter {
    #[default]
    All,
    /// An action by name (`libfoo/bar.o`), or every action whose name
    /// starts with it followed by `/`.
    Action(String),
    /// A unit by name (`libukdebug`), or units under it (`libmusl` matches
    /// `libmusl/src/string`).
    Unit(String),
    /// Either of the above.
    Any(String),
}

fn path_prefix(whole: &str, prefix: &str) -> bool {
    whole == prefix || (whole.starts_with(prefix) && whole[prefix.len()..].starts_with('/'))
}

impl Filter {
    pub fn matches(&self, e: &LogEntry) -> bool {
        match self {
            Filter::All => true,
            Filter::Action(a) => path_prefix(&e.name, a),
            Filter::Unit(u) => path_prefix(&e.unit, u),
            Filter::Any(s) => path_prefix(&e.name, s) || path_prefix(&e.unit, s),
        }
    }
}

/// One explained action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation<'a> {
    pub entry: &'a LogEntry,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.entry;
        let what = match e.outcome {
            Outcome::Ran => "ran",
            Outcome::Restored => "cached",
            Outcome::Failed => "failed",
        };
        write!(f, "{what:<6}  {}  {}: {}", e.unit, e.name, e.reason)
    }
}

/// The last build's entries that match `filter`, in completion order.
pub fn explain<'a>(state: &'a BuildState, filter: &Filter) -> Vec<Explanation<'a>> {
    state.last_build.entries.iter().filter(|e| filter.matches(e)).map(|entry| Explanation { entry }).collect()
}

/// Load the state at `state_path` and render [`explain`] as text, one line
/// per action, ending with a summary line.
pub fn render(state_path: &Utf8Path, filter: &Filter) -> String {
    let state = BuildState::load(state_path);
    let list = explain(&state, filter);
    let mut out = String::new();
    for e in &list {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    if state.last_build.started_ns == 0 {
        out.push_str("no build recorded in this build directory\n");
    } else if list.is_empty() {
        out.push_str("nothing ran in the last build (everything was up to date)\n");
    }
    out
}
