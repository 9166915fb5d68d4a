//! Property tests: whatever bytes come in, the compilers return (no panic) and every diagnostic is
//! located at line >= 1, column >= 1.
//!
//! 256 cases per property by default; `PROPTEST_CASES` overrides it.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::{Compiled, FsLoader, compile_rhai, compile_yaml};

pub(crate) fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn check(c: &Compiled) -> Result<(), TestCaseError> {
    for d in &c.diagnostics {
        prop_assert!(
            d.pos.line >= 1 && d.pos.col >= 1,
            "diagnostic at {:?}: {}",
            d.pos,
            d
        );
        prop_assert!(!d.file.is_empty(), "diagnostic without a file: {}", d);
    }
    Ok(())
}

fn yaml(src: &[u8]) -> Compiled {
    compile_yaml("prop.yaml", src, Path::new(""), &FsLoader)
}

fn rhai(src: &[u8]) -> Compiled {
    compile_rhai("prop.rhai", src, Path::new(""), &FsLoader)
}

/// Every key the language knows, plus near misses.
const KEYS: &[&str] = &[
    "pathway",
    "version",
    "title",
    "description",
    "disease",
    "owner_role",
    "roles",
    "variables",
    "entry_points",
    "include",
    "states",
    "goals",
    "indicators",
    "id",
    "phase",
    "terminal",
    "on_enter",
    "transitions",
    "to",
    "on",
    "after",
    "at",
    "when",
    "label",
    "task",
    "follow_up",
    "scale",
    "risk",
    "alarm",
    "referral",
    "goal",
    "note",
    "set",
    "role",
    "due",
    "priority",
    "sla",
    "keep",
    "covers_critical",
    "remind_before",
    "escalate_after",
    "escalate_to",
    "channels",
    "template",
    "urgent",
    "reminders",
    "expires",
    "model",
    "intercept",
    "terms",
    "formula",
    "bands",
    "name",
    "expr",
    "coef",
    "count",
    "within",
    "scope",
    "direction",
    "reason",
    "accept_within",
    "observation",
    "reading",
    "at_least",
    "days_logged",
    "over",
    "numerator",
    "denominator",
    "period",
    "target",
    "type",
    "default",
    "state",
    "fragment",
    "prefix",
    "exits",
    "entry",
    "zh",
    "en",
    "low",
    "high",
    "trasitions",
    "stats",
    "",
];

/// Scalars that mean something somewhere, and some that mean trouble.
const SCALARS: &[&str] = &[
    "a",
    "s1",
    "s2",
    "closed",
    "follow_up",
    "1",
    "0",
    "-1",
    "1.5",
    "true",
    "false",
    "~",
    "null",
    "7d",
    "-1d",
    "24h",
    "1.5d",
    "30m",
    "6w",
    "7",
    "99999999999d",
    "\"09:00\"",
    "\"25:61\"",
    "case_manager",
    "ward_nurse",
    "nobody",
    "epds",
    "bp_systolic",
    "wechat",
    "fax",
    "high",
    "lace",
    "logistic",
    "up",
    "lead_hospital",
    "number",
    "bool",
    "'score(\"epds\") >= 13'",
    "'latest(\"bp_sys\") > 1'",
    "'1 < 2'",
    "'((('",
    "'x +'",
    "\"exit:done\"",
    "task_done:x",
    "scale_answered:nope",
    "\"\"",
    "''",
    "'\\u0000'",
    "日本語",
    "\"\\t\\n\"",
    "&anchor x",
    "*anchor",
    "!!str 1",
    "|",
    ">-",
    "? complex",
    "- x",
    "{",
    "[",
    "]",
    "}",
    ",",
    ":",
    "#",
    "%YAML 1.2",
    "---",
    "...",
];

#[derive(Debug, Clone)]
enum Tree {
    Scalar(&'static str),
    Seq(Vec<Tree>),
    Map(Vec<(&'static str, Tree)>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop::sample::select(SCALARS).prop_map(Tree::Scalar);
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Tree::Seq),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(Tree::Map),
        ]
    })
}

/// Renders a tree as YAML: block style with the given indentation step, or flow style.
fn render(t: &Tree, indent: usize, step: usize, flow: bool, out: &mut String) {
    match t {
        Tree::Scalar(s) => out.push_str(s),
        Tree::Seq(items) if flow || items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render(item, indent, step, true, out);
            }
            out.push(']');
        }
        Tree::Map(entries) if flow || entries.is_empty() => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                render(v, indent, step, true, out);
            }
            out.push('}');
        }
        Tree::Seq(items) => {
            for item in items {
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                render(item, indent + 2, step, false, out);
            }
        }
        Tree::Map(entries) => {
            for (k, v) in entries {
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                out.push_str(k);
                out.push(':');
                if !matches!(v, Tree::Seq(_) | Tree::Map(_)) {
                    out.push(' ');
                }
                render(v, indent + step, step, false, out);
            }
        }
    }
}

fn yaml_text() -> impl Strategy<Value = String> {
    (tree(), 1usize..4, any::<bool>(), any::<bool>()).prop_map(|(t, step, flow, header)| {
        let mut out = String::new();
        if header {
            out.push_str("pathway: p\nversion: 1\ntitle: t\nowner_role: admin\nroles: [admin]");
        }
        render(&t, 0, step, flow, &mut out);
        out
    })
}

/// Rhai statements built from the builder API, with arguments from the scalar pool.
fn rhai_text() -> impl Strategy<Value = String> {
    let arg = prop::sample::select(SCALARS).prop_map(|s| format!("{s:?}"));
    let stmt = (0usize..12, arg.clone(), arg.clone(), arg).prop_map(|(k, a, b, c)| match k {
        0 => format!("let s = state({a}, {b});"),
        1 => format!("p.add(state({a}, {b}));"),
        2 => format!("p.entry({a}, {b});"),
        3 => format!("s.transition(on_event({a}, {b}));"),
        4 => format!("s.transition(after({a}, {b}));"),
        5 => format!("s.transition(when({a}, {b}));"),
        6 => format!("s.enter(task({a}, {b}, {c}, {c}, {a}, {b}));"),
        7 => format!("s.enter(follow_up([{a}], {b}, {c}, {a}));"),
        8 => format!("p.variable({a}, {b}, {c});"),
        9 => format!("p.add(s); p.add(terminal({a}));"),
        10 => format!(
            "p.{} = {b};",
            a.trim_matches('"')
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ),
        _ => format!("s.transition(always({a}));"),
    });
    prop::collection::vec(stmt, 0..16).prop_map(|stmts| {
        let mut src = String::from("let p = pathway(\"p\", 1, \"甲\", \"a\");\np.owner_role = \"admin\";\np.roles = [\"admin\"];\nlet s = state(\"s\", \"follow_up\");\n");
        for s in stmts {
            src.push_str(&s);
            src.push('\n');
        }
        src.push_str("p\n");
        src
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn yaml_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&yaml(&bytes))?;
    }

    #[test]
    fn yaml_survives_arbitrary_text(text in "(?s).{0,512}") {
        check(&yaml(text.as_bytes()))?;
    }

    #[test]
    fn yaml_survives_structured_documents(text in yaml_text()) {
        check(&yaml(text.as_bytes()))?;
    }

    #[test]
    fn yaml_survives_mutations_of_a_good_pathway(cuts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/good/wound_care.yaml")).expect("good fixture");
        for (at, b) in cuts {
            let i = at.index(bytes.len());
            match b % 3 {
                0 => bytes[i] = b,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, b),
            }
        }
        check(&yaml(&bytes))?;
    }

    #[test]
    fn rhai_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        check(&rhai(&bytes))?;
    }

    #[test]
    fn rhai_survives_builder_scripts(text in rhai_text()) {
        check(&rhai(text.as_bytes()))?;
    }
}
