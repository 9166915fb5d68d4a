//! Graph export: DOT for Graphviz and Mermaid for Markdown, states coloured by phase and edges
//! labelled with their trigger and guard.

use std::fmt::Write;

use crate::model::{Pathway, Phase, Trigger};

fn edge_label(t: &crate::model::Transition) -> String {
    let mut label = match &t.label {
        Some(l) => l.en.clone(),
        None => t.trigger.describe(),
    };
    if let Some(g) = &t.guard {
        if !label.is_empty() {
            label.push(' ');
        }
        let _ = write!(label, "[{}]", g.0);
    }
    if label.is_empty() && t.trigger == Trigger::Immediate {
        label.push_str("immediately");
    }
    label
}

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', " ")
}

pub fn to_dot(p: &Pathway) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", dot_escape(&p.id));
    let _ = writeln!(
        out,
        "  label=\"{} v{} — {}\";",
        dot_escape(&p.title.zh),
        p.version,
        dot_escape(&p.title.en)
    );
    let _ = writeln!(
        out,
        "  labelloc=t; rankdir=LR; node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];"
    );
    for (i, e) in p.entry_points.iter().enumerate() {
        let _ = writeln!(
            out,
            "  \"__entry{i}\" [shape=circle, style=filled, fillcolor=black, label=\"\", width=0.2];"
        );
        let _ = writeln!(
            out,
            "  \"__entry{i}\" -> \"{}\" [label=\"{}\"];",
            dot_escape(&e.state),
            dot_escape(&e.id)
        );
    }
    for s in &p.states {
        let title = s
            .title
            .as_ref()
            .map(|t| format!("\\n{}", dot_escape(&t.zh)))
            .unwrap_or_default();
        let periph = if s.terminal { ", peripheries=2" } else { "" };
        let _ = writeln!(
            out,
            "  \"{id}\" [label=\"{id}{title}\\n({phase})\", fillcolor=\"{c}\"{periph}];",
            id = dot_escape(&s.id),
            phase = s.phase.as_str(),
            c = s.phase.colour()
        );
    }
    for s in &p.states {
        for t in &s.transitions {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"];",
                dot_escape(&s.id),
                dot_escape(&t.to),
                dot_escape(&edge_label(t))
            );
        }
    }
    out.push_str("}\n");
    out
}

fn mermaid_escape(s: &str) -> String {
    s.replace(':', "#58;")
        .replace('"', "#quot;")
        .replace('\n', " ")
}

pub fn to_mermaid(p: &Pathway) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    for (_, phase) in Phase::ALL {
        let _ = writeln!(out, "  classDef {} fill:{}", phase.as_str(), phase.colour());
    }
    for e in &p.entry_points {
        let _ = writeln!(out, "  [*] --> {} : {}", e.state, mermaid_escape(&e.id));
    }
    for s in &p.states {
        let title = s
            .title
            .as_ref()
            .map(|t| mermaid_escape(&t.zh))
            .unwrap_or_else(|| s.id.clone());
        let _ = writeln!(out, "  state \"{}\" as {}", title, s.id);
        let _ = writeln!(out, "  class {} {}", s.id, s.phase.as_str());
        if s.terminal {
            let _ = writeln!(out, "  {} --> [*]", s.id);
        }
        for t in &s.transitions {
            let _ = writeln!(
                out,
                "  {} --> {} : {}",
                s.id,
                t.to,
                mermaid_escape(&edge_label(t))
            );
        }
    }
    out
}
