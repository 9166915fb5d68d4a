//! What changed between two versions of a pathway: states, transitions, actions, schedules,
//! variables, events, entry points, goals and indicators added, removed and changed, each with
//! where it is written in both sources.
//!
//! Items are matched by what names them (a state, action, schedule, goal by its id; a variable or
//! event by its name; a transition by its trigger and target), and compared on their compiled
//! model, so a change of layout or comments is no change while a changed guard, due time or
//! channel list is. Positions come from the source tree (YAML and Rhai pathways build the same
//! positioned tree); items a fragment brought in have none in the including file.

use serde::Serialize;
use serde_json::Value as Json;

use crate::Pos;
use crate::model::{Action, Pathway, State};
use crate::yaml::{Node, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// `pathway`, `state`, `transition`, `action`, `schedule`, `variable`, `event`,
    /// `entry_point`, `goal` or `indicator`.
    pub what: &'static str,
    /// What names it: `home_first_week`, `home_first_week: on discharged`,
    /// `home_first_week/task:first_call`.
    pub id: String,
    /// The fields that differ, for a change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// Where it is written in the first source, and in the second.
    pub before: Option<Pos>,
    pub after: Option<Pos>,
}

/// A source with its positioned tree, when it has one.
pub struct Side<'a> {
    pub pathway: &'a Pathway,
    pub tree: Option<&'a Node>,
}

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The item of section `node` named `id`: a key of a mapping, or the list item whose `id` (or
/// single key's `id`, as actions are written) is `id`.
fn item<'n>(node: &'n Node, id: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(id))
            .map(|(k, _)| k),
        Value::Seq(items) => items.iter().find(|it| {
            get(it, "id").and_then(Node::as_str) == Some(id)
                || matches!(&it.value, Value::Map(e) if e.len() == 1
                    && get(&e[0].1, "id").and_then(Node::as_str) == Some(id))
        }),
        _ => None,
    }
}

fn nth(node: &Node, i: usize) -> Option<&Node> {
    match &node.value {
        Value::Seq(items) => items.get(i),
        _ => None,
    }
}

fn state_node<'n>(tree: Option<&'n Node>, id: &str) -> Option<&'n Node> {
    tree.and_then(|t| get(t, "states"))
        .and_then(|s| item(s, id))
}

fn json<T: Serialize>(v: &T) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// The top-level fields of two JSON objects that differ (`.` for values that are not objects).
fn differing(a: &Json, b: &Json, skip: &[&str]) -> Vec<String> {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .filter(|k| !skip.contains(&k.as_str()) && x.get(*k) != y.get(*k))
                .cloned()
                .collect()
        }
        _ if a != b => vec![".".into()],
        _ => Vec::new(),
    }
}

/// A named item on one side: its key, model as JSON and position.
struct Named {
    key: String,
    model: Json,
    pos: Option<Pos>,
}

/// Matches `before` and `after` by key and reports what was added, removed and changed.
fn compare(
    out: &mut Vec<Change>,
    what: &'static str,
    before: Vec<Named>,
    after: Vec<Named>,
    skip: &[&str],
) {
    for b in &before {
        match after.iter().find(|a| a.key == b.key) {
            None => out.push(Change {
                kind: ChangeKind::Removed,
                what,
                id: b.key.clone(),
                fields: vec![],
                before: b.pos,
                after: None,
            }),
            Some(a) => {
                let fields = differing(&b.model, &a.model, skip);
                if !fields.is_empty() {
                    out.push(Change {
                        kind: ChangeKind::Changed,
                        what,
                        id: b.key.clone(),
                        fields,
                        before: b.pos,
                        after: a.pos,
                    });
                }
            }
        }
    }
    for a in after
        .iter()
        .filter(|a| !before.iter().any(|b| b.key == a.key))
    {
        out.push(Change {
            kind: ChangeKind::Added,
            what,
            id: a.key.clone(),
            fields: vec![],
            before: None,
            after: a.pos,
        });
    }
}

fn action_key(a: &Action, i: usize) -> String {
    let id = match a {
        Action::Task(t) => t.id.clone(),
        Action::FollowUp(f) => f.id.clone(),
        Action::Scale(s) => Some(s.id.clone().unwrap_or_else(|| s.scale.clone())),
        Action::Risk(r) => Some(r.id.clone()),
        Action::Alarm(a) => Some(a.id.clone()),
        Action::Goal(g) => Some(g.id.clone()),
        Action::Cancel(id) => Some(id.clone()),
        Action::Referral(_) | Action::Note(_) | Action::Set(_) => None,
    };
    match id {
        Some(id) => format!("{}:{id}", a.kind()),
        None => format!("{}#{}", a.kind(), i + 1),
    }
}

fn transitions(s: &State, tree: Option<&Node>) -> Vec<Named> {
    let node = state_node(tree, &s.id).and_then(|n| get(n, "transitions"));
    let mut seen: Vec<String> = Vec::new();
    s.transitions
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let trigger = match (t.trigger.describe(), &t.guard) {
                (d, _) if !d.is_empty() => d,
                (_, Some(g)) => format!("when {}", g.0),
                (_, None) => "immediately".into(),
            };
            // Keyed by the trigger: a transition sent elsewhere is one changed in `to`.
            let base = format!("{}: {trigger}", s.id);
            let n = seen.iter().filter(|k| **k == base).count();
            seen.push(base.clone());
            Named {
                key: if n == 0 {
                    base
                } else {
                    format!("{base} #{}", n + 1)
                },
                model: json(t),
                pos: node.and_then(|n| nth(n, i)).map(|n| n.pos),
            }
        })
        .collect()
}

fn actions(s: &State, tree: Option<&Node>) -> Vec<Named> {
    let node = state_node(tree, &s.id).and_then(|n| get(n, "on_enter"));
    s.on_enter
        .iter()
        .enumerate()
        .map(|(i, a)| Named {
            key: format!("{}/{}", s.id, action_key(a, i)),
            // The action's own fields, not its kind's wrapper.
            model: match json(a) {
                Json::Object(m) if m.len() == 1 => {
                    m.into_iter().next().map(|(_, v)| v).unwrap_or_default()
                }
                other => other,
            },
            pos: node.and_then(|n| nth(n, i)).map(|n| n.pos),
        })
        .collect()
}

fn schedules(s: &State, tree: Option<&Node>) -> Vec<Named> {
    let node = state_node(tree, &s.id).and_then(|n| get(n, "schedules"));
    s.schedules
        .iter()
        .map(|sc| Named {
            key: format!("{}/{}", s.id, sc.id),
            model: json(sc),
            pos: node.and_then(|n| item(n, &sc.id)).map(|n| n.pos),
        })
        .collect()
}

fn section<T: Serialize>(
    tree: Option<&Node>,
    key: &str,
    items: &[T],
    name: impl Fn(&T) -> String,
) -> Vec<Named> {
    let node = tree.and_then(|t| get(t, key));
    items
        .iter()
        .map(|it| {
            let id = name(it);
            Named {
                pos: node.and_then(|n| item(n, &id)).map(|n| n.pos),
                key: id,
                model: json(it),
            }
        })
        .collect()
}

/// Every difference from `a` to `b`, states first, in a stable order.
pub fn diff(a: &Side<'_>, b: &Side<'_>) -> Vec<Change> {
    let (pa, pb) = (a.pathway, b.pathway);
    let mut out = Vec::new();
    let head = |p: &Pathway| {
        serde_json::json!({"title": p.title, "description": p.description, "disease": p.disease,
            "owner_role": p.owner_role, "roles": p.roles})
    };
    let fields = differing(&head(pa), &head(pb), &[]);
    if !fields.is_empty() {
        out.push(Change {
            kind: ChangeKind::Changed,
            what: "pathway",
            id: pb.id.clone(),
            fields,
            before: a.tree.map(|t| t.pos),
            after: b.tree.map(|t| t.pos),
        });
    }
    compare(
        &mut out,
        "state",
        section(a.tree, "states", &pa.states, |s| s.id.clone()),
        section(b.tree, "states", &pb.states, |s| s.id.clone()),
        &["transitions", "on_enter", "schedules"],
    );
    let both: Vec<(&State, &State)> = pa
        .states
        .iter()
        .filter_map(|s| pb.state(&s.id).map(|t| (s, t)))
        .collect();
    for (s, t) in &both {
        compare(
            &mut out,
            "transition",
            transitions(s, a.tree),
            transitions(t, b.tree),
            &[],
        );
    }
    for (s, t) in &both {
        compare(
            &mut out,
            "action",
            actions(s, a.tree),
            actions(t, b.tree),
            &[],
        );
    }
    for (s, t) in &both {
        compare(
            &mut out,
            "schedule",
            schedules(s, a.tree),
            schedules(t, b.tree),
            &[],
        );
    }
    compare(
        &mut out,
        "variable",
        section(a.tree, "variables", &pa.variables, |v| v.name.clone()),
        section(b.tree, "variables", &pb.variables, |v| v.name.clone()),
        &[],
    );
    compare(
        &mut out,
        "event",
        section(a.tree, "events", &pa.events, |e| e.name.clone()),
        section(b.tree, "events", &pb.events, |e| e.name.clone()),
        &[],
    );
    compare(
        &mut out,
        "entry_point",
        section(a.tree, "entry_points", &pa.entry_points, |e| e.id.clone()),
        section(b.tree, "entry_points", &pb.entry_points, |e| e.id.clone()),
        &[],
    );
    compare(
        &mut out,
        "schedule",
        section(a.tree, "schedules", &pa.schedules, |sc| sc.id.clone()),
        section(b.tree, "schedules", &pb.schedules, |sc| sc.id.clone()),
        &[],
    );
    compare(
        &mut out,
        "goal",
        section(a.tree, "goals", &pa.goals, |g| g.id.clone()),
        section(b.tree, "goals", &pb.goals, |g| g.id.clone()),
        &[],
    );
    compare(
        &mut out,
        "indicator",
        section(a.tree, "indicators", &pa.indicators, |i| i.id.clone()),
        section(b.tree, "indicators", &pb.indicators, |i| i.id.clone()),
        &[],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FsLoader, compile_yaml, yaml};

    const V1: &str = r#"pathway: p
version: 1
title: { zh: 甲, en: P }
owner_role: case_manager
roles: [case_manager]
variables:
  level:
    type: number
    default: 0
entry_points:
  - { id: start, state: a }
states:
  - id: a
    phase: follow_up
    on_enter:
      - task: { id: call, role: case_manager, title: { zh: 电话, en: Call }, due: 2d }
      - set: { level: 'level + 1' }
    transitions:
      - { after: 7d, to: b }
      - { when: 'level > 3', to: old }
  - id: b
    phase: closed
    terminal: true
  - id: old
    phase: closed
    terminal: true
"#;

    fn side(src: &str) -> (Pathway, Node) {
        let tree = yaml::parse("p.yaml", src.as_bytes(), yaml::Budget::default()).unwrap();
        let c = compile_yaml(
            "p.yaml",
            src.as_bytes(),
            std::path::Path::new("."),
            &FsLoader,
        );
        (c.into_pathway().expect("compiles"), tree)
    }

    #[test]
    fn changes_are_found_by_name_with_their_positions() {
        let v2 = V1
            .replace("version: 1", "version: 2")
            .replace("due: 2d", "due: 1d")
            .replace("after: 7d", "after: 14d")
            .replace("id: old", "id: new")
            .replace("to: old", "to: new")
            .replace(
                "    default: 0\n",
                "    default: 0\n  flag:\n    type: bool\n    default: false\n",
            );
        let (a, ta) = side(V1);
        let (b, tb) = side(&v2);
        let changes = diff(
            &Side {
                pathway: &a,
                tree: Some(&ta),
            },
            &Side {
                pathway: &b,
                tree: Some(&tb),
            },
        );
        let summary: Vec<String> = changes
            .iter()
            .map(|c| format!("{:?} {} {} {:?}", c.kind, c.what, c.id, c.fields))
            .collect();
        assert_eq!(
            summary,
            [
                "Removed state old []",
                "Added state new []",
                "Removed transition a: after 7d []",
                "Changed transition a: when level > 3 [\"to\"]",
                "Added transition a: after 14d []",
                "Changed action a/task:call [\"due\"]",
                "Added variable flag []",
            ],
            "{changes:#?}"
        );
        let call = changes.iter().find(|c| c.id == "a/task:call").unwrap();
        assert_eq!(call.before.map(|p| p.line), Some(16));
        assert_eq!(call.after.map(|p| p.line), Some(19));
        let old = changes.iter().find(|c| c.id == "old").unwrap();
        assert_eq!(old.before.map(|p| p.line), Some(24));
    }

    #[test]
    fn the_same_pathway_laid_out_otherwise_has_no_changes() {
        let (a, ta) = side(V1);
        let (b, tb) = side(
            &V1.replace("# nothing", "")
                .replace("roles: [case_manager]", "roles:\n  - case_manager"),
        );
        assert!(
            diff(
                &Side {
                    pathway: &a,
                    tree: Some(&ta)
                },
                &Side {
                    pathway: &b,
                    tree: Some(&tb)
                }
            )
            .is_empty()
        );
    }
}
