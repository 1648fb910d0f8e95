//! Why an action was not up to date: the decision and its explanation.

use std::fmt;

use camino::Utf8PathBuf;
use serde::{Deserialize, Serialize};

/// Why an action was not up to date. The value drives the decision (any
/// reason means "bring it up to date": restore from the action cache or run)
/// and the message (`explain`, verbose builds).
///
/// Hashes are hex; `None` means the file did not exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DirtyReason {
    /// No record of this action in this build directory.
    NeverBuilt,
    /// The command (script, cwd, declared outputs, depfile path) changed.
    ScriptChanged,
    /// The toolchain (PATH, cross prefix, links, programs), the sandbox
    /// backend or the commands' environment changed.
    ToolchainChanged,
    /// A known input's content changed.
    InputChanged { path: Utf8PathBuf, old: Option<String>, new: Option<String> },
    /// A header from the last depfile changed (or disappeared).
    HeaderChanged { path: Utf8PathBuf, old: Option<String>, new: Option<String> },
    /// The graph lists a new input.
    InputAdded { path: Utf8PathBuf },
    /// The graph no longer lists an input.
    InputRemoved { path: Utf8PathBuf },
    /// Same inputs, different order (matters to linkers).
    InputsReordered,
    /// An output recorded by the last build is gone.
    OutputMissing { path: Utf8PathBuf },
    /// An output was changed by something other than this action.
    OutputModified { path: Utf8PathBuf, old: String, new: Option<String> },
    /// The state's key does not match its fingerprint (key format changed).
    KeyFormatChanged,
}

fn short(h: &Option<String>) -> &str {
    match h {
        Some(h) => &h[..h.len().min(12)],
        None => "(missing)",
    }
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::NeverBuilt => write!(f, "never built in this build directory"),
            DirtyReason::ScriptChanged => write!(f, "the command changed"),
            DirtyReason::ToolchainChanged => write!(f, "the toolchain (PATH, links, programs) or the sandbox environment changed"),
            DirtyReason::InputChanged { path, old, new } => {
                write!(f, "input {path} changed ({} -> {})", short(old), short(new))
            }
            DirtyReason::HeaderChanged { path, old, new } => {
                write!(f, "header {path} changed ({} -> {})", short(old), short(new))
            }
            DirtyReason::InputAdded { path } => write!(f, "new input {path}"),
            DirtyReason::InputRemoved { path } => write!(f, "input {path} no longer used"),
            DirtyReason::InputsReordered => write!(f, "inputs reordered"),
            DirtyReason::OutputMissing { path } => write!(f, "output {path} is missing"),
            DirtyReason::OutputModified { path, old, new } => {
                write!(f, "output {path} was modified ({} -> {})", short(&Some(old.clone())), short(new))
            }
            DirtyReason::KeyFormatChanged => write!(f, "the key format changed"),
        }
    }
}
