//! From raw commands to a graph: outputs, inputs, dependency edges,
//! barriers, names and units; then steps that rewrite another action's
//! output in place are folded into their producer.

use std::collections::{HashMap, HashSet};

use camino::{Utf8Path, Utf8PathBuf};

use crate::exec::sandbox::Sandbox;
use crate::plan::command::{analyze, is_symlink_command};
use crate::plan::graph::{Action, ActionId, ActionKind, Graph};
use crate::plan::command::Raw;
use crate::plan::mounts::inside_build;
use crate::plan::units::{unit_of, UnitRule};

pub(crate) fn build_graph(raws: Vec<Raw>, sandbox: &Sandbox, rules: &[UnitRule]) -> Graph {
    let build = inside_build();
    let mut actions: Vec<Action> = Vec::new();
    let mut producers: HashMap<Utf8PathBuf, ActionId> = HashMap::new();
    let mut exists_cache: HashMap<Utf8PathBuf, bool> = HashMap::new();
    let mut last_barrier: Option<ActionId> = None;
    let mut since_barrier: Vec<ActionId> = Vec::new();
    let mut script_count = 0;
    let mut seen_compile = false;
    let mut names: HashSet<String> = HashSet::new();

    for raw in raws {
        let id = ActionId(actions.len());
        let an = analyze(&raw.script, &build);
        let mut kind = an.kind.unwrap();
        let mut outputs = an.outputs.clone();
        // The .cmd's target; a relative .cmd name may stand for a deeper
        // file (`provided_syscalls.in.new.cmd` → `libsyscall_shim/...`).
        let mut rewrites_only: Option<Vec<Utf8PathBuf>> = None;
        if let Some(target) = &raw.cmd_target {
            let rel = target.strip_prefix(&build).map(|r| r.as_str().to_string()).unwrap_or_default();
            let deeper = an.outputs.iter().chain(an.paths.iter()).find(|p| {
                !rel.is_empty() && (p.as_path() == target.as_path() || p.as_str().ends_with(&format!("/{rel}")))
            });
            rewrites_only = in_place_rule(target, deeper.is_some(), &an.in_place, &producers);
            if rewrites_only.is_none() {
                let primary = deeper.cloned().unwrap_or_else(|| target.clone());
                outputs.retain(|o| *o != primary);
                outputs.insert(0, primary);
            }
        }
        // Files modified in place by objcopy/scripts: outputs if an earlier
        // action produced them (the image that multiboot.py patches).
        match &rewrites_only {
            Some(rewritten) => outputs.extend(rewritten.iter().cloned()),
            None => {
                for p in &an.in_place {
                    if producers.contains_key(p) && !outputs.contains(p) {
                        outputs.push(p.clone());
                    }
                }
            }
        }
        dedup(&mut outputs);
        // `ln -s` makes a symlink that may dangle on the host (its target is
        // an inside path, or a file a later step writes): it is a side effect,
        // not a content output. The prepared build dir already holds the ones
        // `prepare` made; the action still runs (once) for the others.
        if kind == ActionKind::Script && is_symlink_command(&raw.script) {
            outputs.clear();
        }
        let primary = outputs.first().cloned();
        let is_final_link = primary.as_ref().is_some_and(|p| p.as_str().ends_with(".dbg"));
        let in_build_root = primary.as_ref().is_some_and(|p| p.parent() == Some(build.as_path()));
        if is_final_link && kind != ActionKind::Compile {
            kind = ActionKind::Link;
        } else if kind == ActionKind::Objcopy
            && in_build_root
            && primary.as_ref().is_some_and(|p| {
                let n = p.file_name().unwrap_or("");
                n.ends_with(".o")
            })
        {
            kind = ActionKind::PartialLink;
        }
        let barrier = kind == ActionKind::Script;

        let mut inputs = Vec::new();
        for p in &an.paths {
            if outputs.contains(p) && !an.in_place.contains(p) {
                continue;
            }
            if Some(p) == an.depfile.as_ref() {
                continue;
            }
            let known = producers.contains_key(p)
                || *exists_cache.entry(p.clone()).or_insert_with(|| {
                    sandbox.to_host(p).is_some_and(|h| h.is_file())
                });
            if known {
                inputs.push(p.clone());
            }
        }
        dedup(&mut inputs);

        let mut deps: Vec<ActionId> =
            inputs.iter().filter_map(|i| producers.get(i).copied()).filter(|d| *d != id).collect();
        if barrier {
            // Depend on everything since the previous barrier (its sinks
            // suffice, but the list is short in practice) and on it.
            deps.extend(since_barrier.iter().copied());
            deps.extend(last_barrier);
        } else if let Some(b) = last_barrier {
            // Everything after a barrier depends on it, so a dep newer than
            // the barrier already implies it.
            if !deps.iter().any(|d| *d >= b) {
                deps.push(b);
            }
        }
        deps.sort();
        deps.dedup();
        if barrier {
            deps = sinks(&actions, &deps);
        }

        let rel_name = |p: &Utf8Path| p.strip_prefix(&build).map(|r| r.to_string()).unwrap_or_else(|_| p.to_string());
        let mut name = match (&primary, raw.cmd_target.is_some() || kind != ActionKind::Script) {
            (Some(p), true) => rel_name(p),
            _ => {
                script_count += 1;
                format!("script:{script_count}")
            }
        };
        if !names.insert(name.clone()) {
            name = format!("{name}#{}", id.0);
            names.insert(name.clone());
        }

        let unit = unit_of(kind, primary.as_deref(), an.source.as_deref(), &build, rules, seen_compile);
        if kind == ActionKind::Compile {
            seen_compile = true;
        }
        for o in &outputs {
            producers.insert(o.clone(), id);
        }
        actions.push(Action {
            id,
            name,
            kind,
            unit,
            script: raw.script,
            cwd: build.clone(),
            inputs,
            outputs,
            depfile: an.depfile,
            deps,
        });
        if barrier {
            last_barrier = Some(id);
            since_barrier.clear();
        } else {
            since_barrier.push(id);
        }
    }
    merge_in_place(Graph { actions })
}

/// A `.cmd` rule whose command never names its own target and only rewrites
/// files earlier actions produced writes no target file at all. Unikraft's
/// arm64 image rules are like that: `<image>.bin` runs `objcopy -O binary
/// <image>` and `<image>.img` runs `mklinux.py <image> <dbg>`, both rewriting
/// the image in place (make's build dir holds no `.bin` afterwards). The
/// action's output is then the rewritten file, the target minus its
/// extension when the command names several (`mklinux.py` only reads the
/// `.dbg`), so [`merge_in_place`] folds it into the image's producer as the
/// x86_64 image steps are.
fn in_place_rule(
    target: &Utf8Path,
    target_named: bool,
    in_place: &[Utf8PathBuf],
    producers: &HashMap<Utf8PathBuf, ActionId>,
) -> Option<Vec<Utf8PathBuf>> {
    if target_named {
        return None;
    }
    let rewritten: Vec<Utf8PathBuf> = in_place.iter().filter(|p| producers.contains_key(*p)).cloned().collect();
    if rewritten.is_empty() {
        return None;
    }
    let stem = target.with_extension("");
    if rewritten.contains(&stem) {
        return Some(vec![stem]);
    }
    Some(rewritten)
}

/// Fold steps that rewrite another action's output in place (Unikraft's
/// `objcopy --update-section .uk_bootinfo` and `multiboot.py` on the stripped
/// image) into the action that produced it. Otherwise two actions would own
/// one file: the producer's record would never match the file on disk, and a
/// no-op build would restore and re-patch the image every time. A step is
/// folded only when everything else it waits for was already done before
/// the producer, so the merged action runs at the same point in the order.
pub fn merge_in_place(graph: Graph) -> Graph {
    let mut actions = graph.actions;
    // Map from old id to the id it was folded into (or itself).
    let mut owner: Vec<usize> = (0..actions.len()).collect();
    let mut removed = vec![false; actions.len()];
    let mut producer: HashMap<Utf8PathBuf, usize> = HashMap::new();
    for b in 0..actions.len() {
        let in_place: Vec<Utf8PathBuf> =
            actions[b].outputs.iter().filter(|o| actions[b].inputs.contains(o)).cloned().collect();
        let target = in_place.iter().filter_map(|p| producer.get(p).copied()).map(|a| owner[a]).max();
        if let Some(a) = target {
            let other_deps_done_before = actions[b].deps.iter().map(|d| owner[d.0]).all(|d| d <= a);
            if other_deps_done_before && actions[a].kind != ActionKind::Compile {
                let step = std::mem::take(&mut actions[b].script);
                let merged = format!("{{ {}\n}} && {{ {}\n}}", actions[a].script.trim_end(), step.trim_end());
                actions[a].script = merged;
                let (inputs, outputs) = (actions[b].inputs.clone(), actions[b].outputs.clone());
                for input in inputs {
                    if !actions[a].outputs.contains(&input) && !actions[a].inputs.contains(&input) {
                        actions[a].inputs.push(input);
                    }
                }
                for output in outputs {
                    if !actions[a].outputs.contains(&output) {
                        actions[a].outputs.push(output.clone());
                    }
                    producer.insert(output, a);
                }
                let extra: Vec<ActionId> = actions[b].deps.iter().map(|d| ActionId(owner[d.0])).filter(|d| d.0 != a).collect();
                actions[a].deps.extend(extra);
                owner[b] = a;
                removed[b] = true;
                continue;
            }
        }
        for output in actions[b].outputs.clone() {
            producer.insert(output, b);
        }
    }
    if !removed.iter().any(|r| *r) {
        return Graph { actions };
    }
    // Renumber: ids are indices.
    let mut new_id = vec![0usize; actions.len()];
    let mut next = 0;
    for (old, gone) in removed.iter().enumerate() {
        if !gone {
            new_id[old] = next;
            next += 1;
        }
    }
    let mut out = Vec::with_capacity(next);
    for (old, mut action) in actions.into_iter().enumerate() {
        if removed[old] {
            continue;
        }
        let me = new_id[old];
        action.id = ActionId(me);
        let mut deps: Vec<ActionId> =
            action.deps.iter().map(|d| ActionId(new_id[owner[d.0]])).filter(|d| d.0 != me).collect();
        deps.sort();
        deps.dedup();
        action.deps = deps;
        out.push(action);
    }
    Graph { actions: out }
}

/// Of `ids`, those no other member of `ids` (transitively) depends on.
pub(crate) fn sinks(actions: &[Action], ids: &[ActionId]) -> Vec<ActionId> {
    let set: HashSet<ActionId> = ids.iter().copied().collect();
    let mut covered: HashSet<ActionId> = HashSet::new();
    for id in ids {
        let mut stack: Vec<ActionId> = actions[id.0].deps.clone();
        while let Some(d) = stack.pop() {
            if covered.insert(d) {
                stack.extend(actions[d.0].deps.iter().copied());
            }
        }
    }
    let mut out: Vec<ActionId> = set.into_iter().filter(|i| !covered.contains(i)).collect();
    out.sort();
    out
}

pub(crate) fn dedup(v: &mut Vec<Utf8PathBuf>) {
    let mut seen = HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm64_image_rules_rewrite_the_image() {
        let image = Utf8PathBuf::from("/kraft/build/hw_qemu-arm64");
        let dbg = Utf8PathBuf::from("/kraft/build/hw_qemu-arm64.dbg");
        let producers: HashMap<Utf8PathBuf, ActionId> = [(dbg.clone(), ActionId(0)), (image.clone(), ActionId(1))].into();
        // `<image>.img`: mklinux.py <image> <dbg> rewrites the image, reads the dbg.
        let img = Utf8Path::new("/kraft/build/hw_qemu-arm64.img");
        assert_eq!(in_place_rule(img, false, &[image.clone(), dbg.clone()], &producers), Some(vec![image.clone()]));
        // `<image>.bin`: objcopy -O binary <image>.
        let bin = Utf8Path::new("/kraft/build/hw_qemu-arm64.bin");
        assert_eq!(in_place_rule(bin, false, std::slice::from_ref(&image), &producers), Some(vec![image.clone()]));
        // A rule that names its target, or rewrites nothing earlier, is left alone.
        assert_eq!(in_place_rule(bin, true, std::slice::from_ref(&image), &producers), None);
        assert_eq!(in_place_rule(bin, false, &[Utf8PathBuf::from("/kraft/build/other")], &producers), None);
    }
}
