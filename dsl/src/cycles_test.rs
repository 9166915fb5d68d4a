//! The check of cycles with no wait against an oracle: for random state graphs whose transitions
//! take no wait and carry guards from a small language the validator reads exactly (comparisons
//! of a score, a band and a flag with constants, and their conjunctions), the validator reports a
//! spinning cycle (`E010`) exactly when some patient's facts make every guard on some cycle hold,
//! found by trying every distinct combination of facts; and each report names a cycle that exists,
//! closed by the transition it points at.

use std::path::Path;

use proptest::prelude::*;

use crate::props_test::config;
use crate::{Code, FsLoader, compile_yaml};

/// Whether a guard holds for (score, band is high, flag), given its constant.
type Holds = fn(f64, bool, bool, f64) -> bool;

/// A guard, as written and as evaluated.
#[derive(Debug, Clone)]
struct Guard {
    text: String,
    holds: Holds,
    k: f64,
}

fn guard() -> impl Strategy<Value = Option<Guard>> {
    let atom = (0usize..7, 0u8..4).prop_map(|(kind, k)| {
        let k = f64::from(k);
        let (text, holds): (String, Holds) = match kind {
            0 => (format!("score(\"epds\") > {k}"), |s, _, _, k| s > k),
            1 => (format!("score(\"epds\") <= {k}"), |s, _, _, k| s <= k),
            2 => (format!("{k} == score(\"epds\")"), |s, _, _, k| s == k),
            3 => ("band(\"epds\") == \"high\"".into(), |_, b, _, _| b),
            4 => ("band(\"epds\") != \"high\"".into(), |_, b, _, _| !b),
            5 => ("flag".into(), |_, _, f, _| f),
            _ => ("!flag".into(), |_, _, f, _| !f),
        };
        Guard { text, holds, k }
    });
    prop_oneof![Just(None), atom.prop_map(Some)]
}

/// One transition with no wait: its target and up to two guards joined by `&&`.
type Edge = (usize, Option<Guard>, Option<Guard>);

fn holds(e: &Edge, score: f64, high: bool, flag: bool) -> bool {
    [&e.1, &e.2]
        .into_iter()
        .flatten()
        .all(|g| (g.holds)(score, high, flag, g.k))
}

fn source(states: &[Vec<Edge>]) -> (String, Vec<Vec<u32>>) {
    let mut src = String::from(
        "pathway: p\nversion: 1\ntitle: { zh: 甲, en: A }\nowner_role: case_manager\nroles: [case_manager]\n\
         variables:\n  flag: { type: bool, default: false }\nentry_points:\n  - { id: start, state: s0 }\nstates:\n",
    );
    let mut lines = Vec::new();
    for (i, edges) in states.iter().enumerate() {
        src.push_str(&format!(
            "  - id: s{i}\n    phase: follow_up\n    on_enter:\n      - scale: {{ scale: epds, due: 1d }}\n    transitions:\n      - on: cancel\n        to: done\n"
        ));
        let mut at = Vec::new();
        for e in edges {
            at.push(src.lines().count() as u32 + 1);
            src.push_str(&format!("      - to: s{}\n", e.0));
            let g: Vec<&str> = [&e.1, &e.2]
                .into_iter()
                .flatten()
                .map(|g| g.text.as_str())
                .collect();
            if !g.is_empty() {
                src.push_str(&format!("        when: '{}'\n", g.join(" && ")));
            }
        }
        lines.push(at);
    }
    src.push_str("  - id: done\n    phase: closed\n    terminal: true\nevents: [cancel]\n");
    (src, lines)
}

/// Whether the transitions that hold for these facts join some states in a cycle.
fn spins(states: &[Vec<Edge>], score: f64, high: bool, flag: bool) -> bool {
    let n = states.len();
    // Repeatedly drop states with no transition that holds to a remaining state.
    let mut alive = vec![true; n];
    loop {
        let mut changed = false;
        for i in 0..n {
            if alive[i]
                && !states[i]
                    .iter()
                    .any(|e| alive[e.0] && holds(e, score, high, flag))
            {
                alive[i] = false;
                changed = true;
            }
        }
        if !changed {
            return alive.iter().any(|a| *a);
        }
    }
}

fn graph() -> impl Strategy<Value = Vec<Vec<Edge>>> {
    (2usize..6).prop_flat_map(|n| {
        prop::collection::vec(prop::collection::vec((0..n, guard(), guard()), 0..3), n)
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_cycle_is_reported_exactly_when_its_guards_can_all_hold(states in graph()) {
        let (src, lines) = source(&states);
        let compiled = compile_yaml("cycles.yaml", src.as_bytes(), Path::new(""), &FsLoader);
        let reports: Vec<_> = compiled
            .diagnostics
            .iter()
            .filter(|d| matches!(d.code, Code::ImmediateCycle | Code::GuardedImmediateCycle))
            .collect();
        prop_assert!(reports.iter().all(|d| d.code == Code::ImmediateCycle), "{reports:?}");
        let mut oracle = false;
        for score in (-1..10).map(|h| f64::from(h) / 2.0) {
            for high in [false, true] {
                for flag in [false, true] {
                    oracle |= spins(&states, score, high, flag);
                }
            }
        }
        prop_assert_eq!(!reports.is_empty(), oracle, "{}\n{:?}", src, reports);
        for d in reports {
            // The cycle named, `(s0 → s2 → s0)`, is made of transitions that exist, and the last
            // one is the transition the report points at.
            let path = d.message.split('(').nth(1).and_then(|r| r.split(')').next()).unwrap_or("");
            let ids: Vec<usize> = path
                .split(" → ")
                .filter_map(|s| s.trim_start_matches('s').parse().ok())
                .collect();
            prop_assert!(ids.len() >= 2 && ids.first() == ids.last(), "{}", d.message);
            for w in ids.windows(2) {
                prop_assert!(states[w[0]].iter().any(|e| e.0 == w[1]), "{}", d.message);
            }
            let (from, to) = (ids[ids.len() - 2], ids[ids.len() - 1]);
            let closing: Vec<u32> = states[from]
                .iter()
                .zip(&lines[from])
                .filter(|(e, _)| e.0 == to)
                .map(|(_, l)| *l)
                .collect();
            prop_assert!(closing.contains(&d.pos.line), "{} at {:?}\n{}", d.message, d.pos, src);
        }
    }
}

/// Every state joined to every other by transitions with no wait: far more cycles than the search
/// weighs. The check stays quick and still reports the pathway.
#[test]
fn a_dense_graph_is_checked_within_a_budget() {
    let n = 14;
    let states: Vec<Vec<Edge>> = (0..n)
        .map(|i| {
            (0..n)
                .filter(|j| *j != i)
                .map(|j| {
                    let g = Guard {
                        text: format!("score(\"epds\") > {}", j % 3),
                        holds: |s, _, _, k| s > k,
                        k: 0.0,
                    };
                    (j, Some(g), None)
                })
                .collect()
        })
        .collect();
    let (src, _) = source(&states);
    let started = std::time::Instant::now();
    let compiled = compile_yaml("dense.yaml", src.as_bytes(), Path::new(""), &FsLoader);
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    let cycles = compiled
        .diagnostics
        .iter()
        .filter(|d| d.code == Code::ImmediateCycle)
        .count();
    assert!(cycles > 1, "{:?}", compiled.diagnostics);
    assert!(
        compiled
            .diagnostics
            .iter()
            .any(|d| d.message.contains("too many cycles")),
        "{:?}",
        compiled.diagnostics
    );
}
