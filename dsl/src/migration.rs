//! Migration plans: how the patients enrolled on one version of a pathway move to another.
//!
//! A plan is a YAML document validated against both versions, with located diagnostics like a
//! pathway's, and every problem reported at once:
//!
//! ```yaml
//! migration: stroke-2026-03        # the run's id
//! pathway: stroke
//! from: 1
//! to: 2
//! states: { home_first_week: home_follow_up }   # old state → new state
//! default: home_follow_up          # for any other state version 2 no longer has
//! variables: { visit_interval_days: 91 }         # values for variables version 2 adds
//! open_work: cancel                # or keep: the open work of a state version 2 no longer has
//! enrolments: { states: [home_first_week], institutions: [lead], ids: [12, 13] }
//! ```

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diag::{Code, Diagnostic, Pos};
use crate::model::{Pathway, VarValue};
use crate::yaml::{self, Node, Value};

/// What happens to the open work of an enrolment whose state the new version does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenWork {
    /// Ended as leaving the state would end it (the outcome policy's `StateLeft`).
    Cancel,
    /// Left open.
    Keep,
}

/// Which enrolments a plan moves: every active one on the old version, narrowed by each list given.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Selection {
    pub states: Vec<String>,
    pub institutions: Vec<String>,
    pub ids: Vec<i64>,
}

/// A validated plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MigrationPlan {
    pub id: String,
    pub pathway: String,
    pub from: u32,
    pub to: u32,
    pub states: BTreeMap<String, String>,
    pub default: Option<String>,
    pub variables: BTreeMap<String, VarValue>,
    pub open_work: OpenWork,
    pub enrolments: Selection,
}

impl MigrationPlan {
    /// The state an enrolment in `state` of the old version moves to: the mapped state, else the
    /// same state where the new version has it, else the default.
    pub fn target(&self, state: &str, new: &Pathway) -> Option<String> {
        self.states
            .get(state)
            .cloned()
            .or_else(|| new.state(state).map(|s| s.id.clone()))
            .or_else(|| self.default.clone())
    }
}

const KEYS: &[&str] = &[
    "migration",
    "pathway",
    "from",
    "to",
    "states",
    "default",
    "variables",
    "open_work",
    "enrolments",
];

struct Reader<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn err(&mut self, code: Code, pos: Pos, message: String, hint: &str) {
        self.diags
            .push(Diagnostic::error(code, self.file, pos, message, hint));
    }

    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(t) if !t.is_empty() => Some(t.to_string()),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("`{what}` must be a name, not {}", node.kind_name()),
                    "write a single word",
                );
                None
            }
        }
    }

    fn version(&mut self, node: &Node, what: &str) -> Option<u32> {
        match node.as_str().and_then(|t| t.parse::<u32>().ok()) {
            Some(v) if v >= 1 => Some(v),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("`{what}` must be a version number (1, 2, …)"),
                    "the versions are those `carepath publish` printed",
                );
                None
            }
        }
    }

    fn list(&mut self, node: &Node, what: &str) -> Vec<(Pos, String)> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|n| self.text(n, what).map(|t| (n.pos, t)))
                .collect(),
            _ => {
                self.err(
                    Code::WrongType,
                    node.pos,
                    format!("`{what}` must be a list"),
                    "write [a, b]",
                );
                Vec::new()
            }
        }
    }
}

fn entries(node: &Node) -> &[(Node, Node)] {
    match &node.value {
        Value::Map(e) => e,
        _ => &[],
    }
}

/// Reads and validates a plan; `version(pathway, v)` finds a version of a pathway (files or the
/// published versions). Returns the plan only when there is no error.
pub fn read_plan<'p>(
    file: &str,
    bytes: &[u8],
    version: impl Fn(&str, u32) -> Option<&'p Pathway>,
) -> Result<MigrationPlan, Vec<Diagnostic>> {
    let root = yaml::parse(file, bytes, yaml::Budget::default())?;
    let mut r = Reader {
        file,
        diags: Vec::new(),
    };
    if !matches!(root.value, Value::Map(_)) {
        r.err(
            Code::WrongType,
            root.pos,
            "a migration plan is a mapping".into(),
            "start with `migration: <id>`",
        );
        return Err(r.diags);
    }
    let mut at: BTreeMap<&str, &Node> = BTreeMap::new();
    for (k, v) in entries(&root) {
        let key = k.as_str().unwrap_or("");
        if KEYS.contains(&key) {
            at.insert(KEYS[KEYS.iter().position(|x| *x == key).unwrap_or(0)], v);
        } else {
            r.err(
                Code::UnknownKey,
                k.pos,
                format!("unknown key `{key}` in a migration plan"),
                &format!("the keys are {}", KEYS.join(", ")),
            );
        }
    }
    let need = |r: &mut Reader<'_>, key: &str| -> Option<&Node> {
        let n = at.get(key).copied();
        if n.is_none() {
            r.err(
                Code::MissingKey,
                root.pos,
                format!("a migration plan needs `{key}`"),
                "see docs/releasing.md for a complete plan",
            );
        }
        n
    };
    let id = need(&mut r, "migration").and_then(|n| r.text(n, "migration"));
    if let (Some(id), Some(n)) = (&id, at.get("migration"))
        && (id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
    {
        r.err(
            Code::InvalidValue,
            n.pos,
            format!("the migration id `{id}` must be 1–64 letters, digits, - _ ."),
            "it names the run, e.g. stroke-2026-03",
        );
    }
    let pathway = need(&mut r, "pathway").and_then(|n| r.text(n, "pathway"));
    let from_node = need(&mut r, "from");
    let to_node = need(&mut r, "to");
    let from = from_node.and_then(|n| r.version(n, "from"));
    let to = to_node.and_then(|n| r.version(n, "to"));
    let (old, new) = match (&pathway, from, to) {
        (Some(p), Some(f), Some(t)) => {
            let old = version(p, f);
            let new = version(p, t);
            for (v, n, found) in [(f, from_node, old.is_some()), (t, to_node, new.is_some())] {
                if !found {
                    r.err(
                        Code::InvalidValue,
                        n.map_or(root.pos, |n| n.pos),
                        format!("pathway `{p}` has no version {v}"),
                        "publish it first, or give its file",
                    );
                }
            }
            if f == t {
                r.err(
                    Code::InvalidValue,
                    to_node.map_or(root.pos, |n| n.pos),
                    format!("`from` and `to` are both version {f}"),
                    "a migration moves enrolments to another version",
                );
            }
            (old, new)
        }
        _ => (None, None),
    };
    let mut states = BTreeMap::new();
    if let Some(n) = at.get("states") {
        if !matches!(n.value, Value::Map(_)) {
            r.err(
                Code::WrongType,
                n.pos,
                "`states` maps old states to new ones".into(),
                "write { old_state: new_state }",
            );
        }
        for (k, v) in entries(n) {
            let (Some(a), Some(b)) = (r.text(k, "states"), r.text(v, "states")) else {
                continue;
            };
            if let Some(old) = old
                && old.state(&a).is_none()
            {
                r.err(
                    Code::UnknownState,
                    k.pos,
                    format!("`{a}` is not a state of version {}", old.version),
                    "the keys are states of the `from` version",
                );
            }
            if let Some(new) = new
                && new.state(&b).is_none()
            {
                r.err(
                    Code::UnknownState,
                    v.pos,
                    format!("`{b}` is not a state of version {}", new.version),
                    "the values are states of the `to` version",
                );
            }
            states.insert(a, b);
        }
    }
    let default = at
        .get("default")
        .and_then(|n| r.text(n, "default").map(|t| (n.pos, t)));
    if let (Some((pos, d)), Some(new)) = (&default, new)
        && new.state(d).is_none()
    {
        r.err(
            Code::UnknownState,
            *pos,
            format!(
                "the default `{d}` is not a state of version {}",
                new.version
            ),
            "the default is a state of the `to` version",
        );
    }
    if let (Some(old), Some(new)) = (old, new) {
        for s in old.states.iter().filter(|s| !s.terminal) {
            if !states.contains_key(&s.id) && new.state(&s.id).is_none() && default.is_none() {
                r.err(
                    Code::UnknownState,
                    at.get("states").map_or(root.pos, |n| n.pos),
                    format!(
                        "state `{}` of version {} is not in version {} and is not mapped",
                        s.id, old.version, new.version
                    ),
                    "map it under `states:` or give a `default:`",
                );
            }
        }
    }
    let mut variables = BTreeMap::new();
    if let Some(n) = at.get("variables") {
        for (k, v) in entries(n) {
            let Some(name) = r.text(k, "variables") else {
                continue;
            };
            let Some(new) = new else { continue };
            let json = yaml::to_json(v);
            let mut one = serde_json::Map::new();
            one.insert(name.clone(), json);
            match new.event_vars(&one) {
                Ok(set) => variables.extend(set),
                Err(m) => r.err(
                    if new.variable(&name).is_none() {
                        Code::UnknownVariable
                    } else {
                        Code::WrongType
                    },
                    k.pos,
                    m,
                    "values are for variables the `to` version declares, of their type",
                ),
            }
        }
    }
    let open_work = match at.get("open_work").map(|n| (n.pos, n.as_str())) {
        None | Some((_, Some("cancel"))) => OpenWork::Cancel,
        Some((_, Some("keep"))) => OpenWork::Keep,
        Some((pos, _)) => {
            r.err(
                Code::InvalidValue,
                pos,
                "`open_work` is `cancel` or `keep`".into(),
                "cancel ends the open work of a state the new version no longer has, as leaving it would",
            );
            OpenWork::Cancel
        }
    };
    let mut enrolments = Selection::default();
    if let Some(n) = at.get("enrolments") {
        for (k, v) in entries(n) {
            match k.as_str() {
                Some("states") => {
                    for (pos, s) in r.list(v, "states") {
                        if let Some(old) = old
                            && old.state(&s).is_none()
                        {
                            r.err(
                                Code::UnknownState,
                                pos,
                                format!("`{s}` is not a state of version {}", old.version),
                                "select by states of the `from` version",
                            );
                        }
                        enrolments.states.push(s);
                    }
                }
                Some("institutions") => {
                    enrolments.institutions =
                        r.list(v, "institutions").into_iter().map(|x| x.1).collect()
                }
                Some("ids") => {
                    for (pos, t) in r.list(v, "ids") {
                        match t.parse() {
                            Ok(id) => enrolments.ids.push(id),
                            Err(_) => r.err(
                                Code::WrongType,
                                pos,
                                format!("`{t}` is not an enrolment id"),
                                "ids are whole numbers",
                            ),
                        }
                    }
                }
                other => r.err(
                    Code::UnknownKey,
                    k.pos,
                    format!("unknown key `{}` under `enrolments`", other.unwrap_or("")),
                    "select by states, institutions or ids",
                ),
            }
        }
    }
    if r.diags.iter().any(Diagnostic::is_error) {
        return Err(r.diags);
    }
    match (id, pathway, from, to) {
        (Some(id), Some(pathway), Some(from), Some(to)) => Ok(MigrationPlan {
            id,
            pathway,
            from,
            to,
            states,
            default: default.map(|d| d.1),
            variables,
            open_work,
            enrolments,
        }),
        _ => Err(r.diags),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FsLoader, compile_yaml};

    fn pathway(version: u32, states: &[&str]) -> Pathway {
        let mut src = format!(
            "pathway: p\nversion: {version}\ntitle: {{ zh: 甲, en: P }}\nowner_role: case_manager\nroles: [case_manager]\n\
             variables:\n  level:\n    type: integer\n    default: 0\n\
             entry_points:\n  - {{ id: start, state: {} }}\nstates:\n",
            states[0]
        );
        for (i, s) in states.iter().enumerate() {
            let next = states.get(i + 1).unwrap_or(&"end");
            src.push_str(&format!(
                "  - id: {s}\n    phase: follow_up\n    transitions:\n      - {{ after: 1d, to: {next} }}\n"
            ));
        }
        src.push_str("  - id: end\n    phase: closed\n    terminal: true\n");
        compile_yaml(
            "p.yaml",
            src.as_bytes(),
            std::path::Path::new("."),
            &FsLoader,
        )
        .into_pathway()
        .expect("compiles")
    }

    #[test]
    fn a_plan_is_read_and_every_problem_located() {
        let v1 = pathway(1, &["a", "b", "c"]);
        let v2 = pathway(2, &["a", "b2"]);
        let find = |_: &str, v: u32| match v {
            1 => Some(&v1),
            2 => Some(&v2),
            _ => None,
        };
        let ok = "migration: m1\npathway: p\nfrom: 1\nto: 2\nstates: { b: b2 }\ndefault: a\n\
                  variables: { level: 3 }\nenrolments: { states: [b, c] }\n";
        let plan = read_plan("plan.yaml", ok.as_bytes(), find).expect("valid");
        assert_eq!(plan.target("b", &v2).as_deref(), Some("b2"));
        assert_eq!(plan.target("c", &v2).as_deref(), Some("a"));
        assert_eq!(plan.target("a", &v2).as_deref(), Some("a"));
        assert_eq!(plan.variables["level"], VarValue::Integer(3));

        let bad = "migration: m1\npathway: p\nfrom: 1\nto: 2\nstates: { b: nowhere, zz: a }\n\
                   variables: { level: high, other: 1 }\nopen_work: sometimes\nsurprise: 1\n";
        let diags = read_plan("plan.yaml", bad.as_bytes(), find).expect_err("invalid");
        let got: Vec<String> = diags
            .iter()
            .map(|d| format!("{}:{} {}", d.pos.line, d.code.as_str(), d.message))
            .collect();
        for want in [
            "5:E007 `nowhere` is not a state of version 2",
            "5:E007 `zz` is not a state of version 1",
            "5:E007 state `c` of version 1 is not in version 2 and is not mapped",
            "6:E003 variable `level` is an integer but was given \"high\"",
            "6:E019 `other` is not a variable of pathway p",
            "7:E018 `open_work` is `cancel` or `keep`",
            "8:E002 unknown key `surprise` in a migration plan",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "missing {want}: {got:#?}"
            );
        }
        let none = "migration: m1\npathway: p\nfrom: 1\nto: 7\n";
        let diags = read_plan("plan.yaml", none.as_bytes(), find).expect_err("no v7");
        assert!(diags[0].message.contains("no version 7"), "{diags:?}");
    }
}
