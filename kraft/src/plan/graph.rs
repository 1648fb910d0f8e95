//! The build graph: one [`Action`] per command Unikraft's make would run.
//!
//! Paths in actions are in the sandbox namespace: the build workspace is always
//! mounted at [`SANDBOX_ROOT`], so neither cache keys nor outputs depend on
//! where a user's checkout or store lives.

use std::collections::{BTreeMap, HashMap};

use camino::{Utf8Path, Utf8PathBuf};
use serde::{Deserialize, Serialize};

/// Where the build workspace is mounted inside the sandbox.
pub const SANDBOX_ROOT: &str = "/kraft";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActionId(pub usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    /// Compiles one source file into one object; reads headers listed in its depfile.
    Compile,
    /// `ld -r` of a library's objects (`lib<name>.ld.o`, `lib<name>.o`).
    PartialLink,
    /// The final link of the image's `.dbg`.
    Link,
    /// objcopy/strip/boot-info steps on linked files.
    Objcopy,
    /// Anything else (generated headers, `multiboot.py`, `sed`, `ln`).
    Script,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub id: ActionId,
    /// Stable human name: the primary output relative to the build dir
    /// (`libmusl/src/string/strlen.o`), or `script:<n>` for raw commands.
    pub name: String,
    pub kind: ActionKind,
    /// Cache unit this action belongs to (`libukdebug`, `libmusl/src/string`, `app`).
    pub unit: String,
    /// Bash script run from `cwd` (the `.cmd` file's text or the raw command).
    pub script: String,
    /// Absolute, under SANDBOX_ROOT.
    pub cwd: Utf8PathBuf,
    /// Files read that are known before running: sources and other actions' outputs.
    /// Absolute, under SANDBOX_ROOT.
    pub inputs: Vec<Utf8PathBuf>,
    /// Files written. Absolute, under SANDBOX_ROOT.
    pub outputs: Vec<Utf8PathBuf>,
    /// Make-style depfile the command writes; its prerequisites are discovered inputs.
    pub depfile: Option<Utf8PathBuf>,
    /// Actions producing one of `inputs`, or that must run before (make's order).
    pub deps: Vec<ActionId>,
}

/// The whole plan for one target: actions in an order make would accept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    pub actions: Vec<Action>,
}

impl Graph {
    pub fn get(&self, id: ActionId) -> &Action {
        &self.actions[id.0]
    }

    /// Which action writes each output path.
    pub fn producers(&self) -> HashMap<&Utf8Path, ActionId> {
        let mut map = HashMap::new();
        for action in &self.actions {
            for output in &action.outputs {
                map.insert(output.as_path(), action.id);
            }
        }
        map
    }

    /// Reverse edges: for each action, the actions that depend on it.
    pub fn dependents(&self) -> Vec<Vec<ActionId>> {
        let mut rev = vec![Vec::new(); self.actions.len()];
        for action in &self.actions {
            for dep in &action.deps {
                rev[dep.0].push(action.id);
            }
        }
        rev
    }

    /// Actions grouped by unit, units in first-appearance order.
    pub fn units(&self) -> Vec<(String, Vec<ActionId>)> {
        let mut order: Vec<String> = Vec::new();
        let mut map: BTreeMap<&str, Vec<ActionId>> = BTreeMap::new();
        for action in &self.actions {
            if !map.contains_key(action.unit.as_str()) {
                order.push(action.unit.clone());
            }
            map.entry(action.unit.as_str()).or_default().push(action.id);
        }
        order.into_iter().map(|u| { let ids = map[u.as_str()].clone(); (u, ids) }).collect()
    }
}
