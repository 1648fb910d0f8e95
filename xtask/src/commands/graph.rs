//! `graph`: the planned action graph, as text or Graphviz dot.

use crate::flags::{GraphArgs, GraphFormat};
use kraft::session::Session;

pub fn run(session: &Session, args: &GraphArgs) -> anyhow::Result<()> {
    let (locked, trees) = kraft::source::app::fetch_app(session, &args.app)?;
    for target in kraft::pipeline::target::select_targets(&locked, args.target.as_deref())? {
        let prepared = kraft::pipeline::target::prepare(session, &locked, &trees, target)?;
        std::fs::create_dir_all(&prepared.out_dir)?;
        let plan = kraft::plan::plan_with(&prepared.input, Some(&session.store.root().join("plans")), Some(&prepared.origins.bind(session)))?;
        let graph = &plan.graph;
        match args.format {
            GraphFormat::Text => {
                for action in &graph.actions {
                    let deps: Vec<&str> = action.deps.iter().map(|d| graph.get(*d).name.as_str()).collect();
                    println!("{}\t{:?}\t{}\t<- {}", action.name, action.kind, action.unit, deps.join(" "));
                }
            }
            GraphFormat::Dot => {
                println!("digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, fontsize=10];", target.id());
                for (unit, ids) in graph.units() {
                    println!("  subgraph \"cluster_{unit}\" {{\n    label=\"{unit}\";");
                    for id in ids {
                        println!("    a{} [label=\"{}\"];", id.0, graph.get(id).name);
                    }
                    println!("  }}");
                }
                for action in &graph.actions {
                    for dep in &action.deps {
                        println!("  a{} -> a{};", dep.0, action.id.0);
                    }
                }
                println!("}}");
            }
        }
    }
    Ok(())
}
