//! Whether guards can hold together: what the validator needs to tell a cycle of transitions with
//! no wait that spins from one whose guards exclude each other.
//!
//! Each guard is parsed by Rhai's parser (as every expression is) and read as a conjunction of
//! comparisons of one fact or variable against a constant (`score("epds") >= 13`,
//! `band("epds") != "high"`, `high_risk`, `!goal_met("bp")`). Anything else a guard says (an `||`,
//! arithmetic, a call with a computed argument) is left out, which only weakens what the guard is
//! read to require: so when the comparisons read from several guards cannot all hold, the guards
//! cannot all hold either, and that is the one conclusion drawn here. It never says that guards
//! *can* hold together; the caller treats "not shown to exclude each other" as "can".
//!
//! Guards on a cycle with no wait are evaluated at one instant: the facts do not change between
//! them, and every state on the cycle was entered at that instant, so the time in the state
//! (`days_in_state()`, `hours_in_state()`, `days_since("state")`) is zero there. What a state's
//! actions change (variables it `set`s, risk results it computes) is the caller's to exclude.

use rhai::{ASTNode, Engine, Expr as RExpr, OptimizationLevel, Stmt};

use crate::catalog;

/// A constant a fact or variable is compared with.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn of(op: &str) -> Option<Cmp> {
        Some(match op {
            "==" => Cmp::Eq,
            "!=" => Cmp::Ne,
            "<" => Cmp::Lt,
            "<=" => Cmp::Le,
            ">" => Cmp::Gt,
            ">=" => Cmp::Ge,
            _ => return None,
        })
    }

    /// The same comparison with its sides swapped (`5 < x` is `x > 5`).
    fn flip(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            same => same,
        }
    }
}

/// One comparison a guard requires: `term cmp value`.
#[derive(Debug, Clone, PartialEq)]
struct Atom {
    term: Term,
    cmp: Cmp,
    value: Value,
}

/// What is compared: a variable, or a guard function called with literal arguments, written
/// canonically (`band("epds")`), so the same fact read in two guards is the same term.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Term {
    Variable(String),
    Call(String),
}

/// What a guard requires, as far as it can be read: every comparison in it that must hold for it
/// to hold, and the variables and risk models it reads (anywhere in it).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Requires {
    atoms: Vec<Atom>,
    pub(crate) variables: Vec<String>,
    pub(crate) risks: Vec<String>,
}

/// Guard functions whose value is the time spent in the current state: zero in a state entered at
/// the instant it is evaluated.
const TIME_IN_STATE: &[&str] = &[
    "days_in_state()",
    "hours_in_state()",
    "days_since(\"state\")",
    "hours_since(\"state\")",
];

/// What `src` requires; nothing when it does not parse (the validator reports that elsewhere).
pub(crate) fn requires(src: &str) -> Requires {
    let mut engine = Engine::new_raw();
    engine.set_optimization_level(OptimizationLevel::None);
    engine.set_max_expr_depths(32, 16);
    engine.set_max_string_size(4_096);
    let Ok(ast) = engine.compile_expression(src) else {
        return Requires::default();
    };
    let mut out = Requires::default();
    if let [Stmt::Expr(e)] = ast.statements() {
        conjuncts(e, &mut out.atoms);
    }
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(RExpr::Variable(v, _, _))) => {
                let name = v.1.to_string();
                if !out.variables.contains(&name) {
                    out.variables.push(name);
                }
            }
            Some(ASTNode::Expr(RExpr::FnCall(f, _)))
                if matches!(f.name.as_str(), "risk" | "risk_band") =>
            {
                if let [RExpr::StringConstant(r, _)] = f.args.as_slice()
                    && !out.risks.iter().any(|x| x == r.as_str())
                {
                    out.risks.push(r.to_string());
                }
            }
            _ => {}
        }
        true
    });
    out
}

/// The comparisons `e` requires, appended to `out`: the parts of an `&&` each, a comparison of a
/// term with a constant, or a term alone (or negated) as a truth value.
fn conjuncts(e: &RExpr, out: &mut Vec<Atom>) {
    match e {
        RExpr::And(parts, _) => {
            for p in parts.iter() {
                conjuncts(p, out);
            }
        }
        RExpr::FnCall(f, _) if f.is_operator_call() => match (f.name.as_str(), f.args.as_slice()) {
            ("!", [a]) => {
                if let Some(term) = term(a) {
                    out.push(Atom {
                        term,
                        cmp: Cmp::Eq,
                        value: Value::Bool(false),
                    });
                }
            }
            (op, [a, b]) => {
                let Some(cmp) = Cmp::of(op) else { return };
                let atom = match (term(a), constant(b), term(b), constant(a)) {
                    (Some(term), Some(value), _, _) => Atom { term, cmp, value },
                    (_, _, Some(term), Some(value)) => Atom {
                        term,
                        cmp: cmp.flip(),
                        value,
                    },
                    _ => return,
                };
                out.push(atom);
            }
            _ => {}
        },
        other => {
            if let Some(term) = term(other) {
                out.push(Atom {
                    term,
                    cmp: Cmp::Eq,
                    value: Value::Bool(true),
                });
            }
        }
    }
}

/// `e` as a term: a variable, or a guard function of the catalogue called with literal arguments.
fn term(e: &RExpr) -> Option<Term> {
    match e {
        RExpr::Variable(v, _, _) => Some(Term::Variable(v.1.to_string())),
        RExpr::FnCall(f, _)
            if !f.is_operator_call()
                && catalog::guard_function(f.name.as_str(), f.args.len()).is_some() =>
        {
            let args: Option<Vec<String>> = f
                .args
                .iter()
                .map(|a| match a {
                    RExpr::StringConstant(s, _) => Some(format!("{:?}", s.as_str())),
                    RExpr::IntegerConstant(i, _) => Some(i.to_string()),
                    _ => None,
                })
                .collect();
            Some(Term::Call(format!("{}({})", f.name, args?.join(", "))))
        }
        _ => None,
    }
}

fn constant(e: &RExpr) -> Option<Value> {
    match e {
        RExpr::IntegerConstant(i, _) => Some(Value::Number(*i as f64)),
        RExpr::FloatConstant(x, _) => Some(Value::Number(**x)),
        RExpr::StringConstant(s, _) => Some(Value::Text(s.to_string())),
        RExpr::BoolConstant(b, _) => Some(Value::Bool(*b)),
        RExpr::FnCall(f, _) if f.is_operator_call() && f.name.as_str() == "-" => {
            match f.args.as_slice() {
                [RExpr::IntegerConstant(i, _)] => Some(Value::Number(-(*i as f64))),
                [RExpr::FloatConstant(x, _)] => Some(Value::Number(-**x)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether the guards cannot all hold at one instant: some term is required to be in ranges (or
/// equal to values) that do not meet. Comparisons of the terms `changing` (what the states between
/// the guards may change) are left out.
pub(crate) fn exclude_each_other(guards: &[&Requires], changing: &[Term]) -> bool {
    let mut atoms: Vec<&Atom> = guards
        .iter()
        .flat_map(|g| g.atoms.iter())
        .filter(|a| !changing.contains(&a.term))
        .collect();
    let zero: Vec<Atom> = TIME_IN_STATE
        .iter()
        .map(|t| Atom {
            term: Term::Call((*t).to_string()),
            cmp: Cmp::Eq,
            value: Value::Number(0.0),
        })
        .collect();
    let reads_time = |a: &&Atom| zero.iter().any(|z| z.term == a.term);
    if atoms.iter().any(reads_time) {
        atoms.extend(zero.iter());
    }
    atoms.sort_by(|a, b| a.term.cmp(&b.term));
    atoms
        .chunk_by(|a, b| a.term == b.term)
        .any(|same| !can_hold(same))
}

/// Whether comparisons of one term can all hold. Only comparisons with constants of one kind are
/// weighed against each other (a number never equals text, but that is not relied upon).
fn can_hold(atoms: &[&Atom]) -> bool {
    numbers_can_hold(atoms) && texts_can_hold(atoms) && bools_can_hold(atoms)
}

fn numbers_can_hold(atoms: &[&Atom]) -> bool {
    // A missing number (NaN) fails every comparison, `!=` included (the sandbox compares as reading
    // conditions do), so whether the comparisons can all hold is whether a real number passes them.
    // The lower and upper bounds, each with whether it is strict, and the values excluded.
    let mut lo: Option<(f64, bool)> = None;
    let mut hi: Option<(f64, bool)> = None;
    let mut not: Vec<f64> = Vec::new();
    let raise = |lo: &mut Option<(f64, bool)>, b: (f64, bool)| {
        if lo.is_none_or(|(x, s)| b.0 > x || (b.0 == x && b.1 && !s)) {
            *lo = Some(b);
        }
    };
    let lower = |hi: &mut Option<(f64, bool)>, b: (f64, bool)| {
        if hi.is_none_or(|(x, s)| b.0 < x || (b.0 == x && b.1 && !s)) {
            *hi = Some(b);
        }
    };
    for a in atoms {
        let Value::Number(v) = a.value else { continue };
        if v.is_nan() {
            continue;
        }
        match a.cmp {
            Cmp::Eq => {
                raise(&mut lo, (v, false));
                lower(&mut hi, (v, false));
            }
            Cmp::Ne => not.push(v),
            Cmp::Lt => lower(&mut hi, (v, true)),
            Cmp::Le => lower(&mut hi, (v, false)),
            Cmp::Gt => raise(&mut lo, (v, true)),
            Cmp::Ge => raise(&mut lo, (v, false)),
        }
    }
    match (lo, hi) {
        (Some((l, ls)), Some((h, hs))) => l < h || (l == h && !ls && !hs && !not.contains(&l)),
        _ => true,
    }
}

fn texts_can_hold(atoms: &[&Atom]) -> bool {
    let mut is: Option<&str> = None;
    let mut not: Vec<&str> = Vec::new();
    for a in atoms {
        let Value::Text(v) = &a.value else { continue };
        match a.cmp {
            Cmp::Eq => match is {
                Some(x) if x != v => return false,
                _ => is = Some(v),
            },
            Cmp::Ne => not.push(v),
            // Text ordering is not weighed.
            _ => {}
        }
    }
    is.is_none_or(|x| !not.contains(&x))
}

fn bools_can_hold(atoms: &[&Atom]) -> bool {
    let mut is: Option<bool> = None;
    for a in atoms {
        let Value::Bool(v) = a.value else { continue };
        let v = match a.cmp {
            Cmp::Eq => v,
            Cmp::Ne => !v,
            _ => continue,
        };
        match is {
            Some(x) if x != v => return false,
            _ => is = Some(v),
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exclusive(guards: &[&str]) -> bool {
        let r: Vec<Requires> = guards.iter().map(|g| requires(g)).collect();
        let refs: Vec<&Requires> = r.iter().collect();
        exclude_each_other(&refs, &[])
    }

    #[test]
    fn ranges_that_do_not_meet_exclude_each_other() {
        assert!(exclusive(&["x > 5", "x <= 5"]));
        assert!(exclusive(&[
            "score(\"epds\") >= 13",
            "score(\"epds\") < 13"
        ]));
        assert!(exclusive(&["5 < x", "x < 5"]));
        assert!(exclusive(&["x == 3", "x != 3"]));
        assert!(exclusive(&["x >= 3 && x < 3.5", "x != 3", "x <= 3"]));
        // A missing value passes no comparison, so it does not make ranges meet.
        assert!(exclusive(&["x >= 3 && x <= 3", "x != 3"]));
        assert!(exclusive(&["x >= 5", "x <= 4"]));
        assert!(exclusive(&["x == 1", "x == 2"]));
        assert!(exclusive(&["x > -1.5 && y", "x < -2"]));
        assert!(!exclusive(&["x >= 5", "x <= 5"]));
        assert!(!exclusive(&["x > 5", "x < 6"]));
        assert!(!exclusive(&["x > 5", "y <= 5"]));
        assert!(!exclusive(&["x != 5", "x != 6"]));
    }

    #[test]
    fn texts_and_truth_values_exclude_each_other() {
        assert!(exclusive(&[
            "band(\"epds\") == \"high\"",
            "band(\"epds\") != \"high\""
        ]));
        assert!(exclusive(&[
            "\"high\" == band(\"epds\")",
            "band(\"epds\") == \"low\""
        ]));
        assert!(!exclusive(&[
            "band(\"epds\") == \"high\"",
            "band(\"phq9\") != \"high\""
        ]));
        assert!(exclusive(&["high_risk", "!high_risk"]));
        assert!(exclusive(&[
            "goal_met(\"bp\")",
            "goal_met(\"bp\") == false"
        ]));
        assert!(exclusive(&["a && high_risk", "high_risk != true"]));
        assert!(!exclusive(&["high_risk", "high_risk == true"]));
    }

    #[test]
    fn what_is_not_understood_is_left_out() {
        // An `||` requires neither side; arithmetic and computed arguments are not terms.
        assert!(!exclusive(&["x > 5 || y", "x <= 5"]));
        assert!(!exclusive(&["x + 1 > 5", "x + 1 <= 5"]));
        assert!(!exclusive(&["score(name) > 5", "score(name) <= 5"]));
        assert!(!exclusive(&["not a guard ((", "x <= 5"]));
        // Kinds are not weighed against each other.
        assert!(!exclusive(&["x == \"a\"", "x > 5"]));
    }

    #[test]
    fn time_in_the_state_is_zero_on_a_cycle() {
        assert!(exclusive(&["days_in_state() >= 1"]));
        assert!(exclusive(&["hours_in_state() > 0", "x"]));
        assert!(!exclusive(&["days_in_state() < 1"]));
        assert!(!exclusive(&["days_since(\"discharged\") >= 1"]));
    }

    #[test]
    fn changing_terms_are_left_out() {
        let a = requires("x > 5");
        let b = requires("x <= 5");
        assert!(!exclude_each_other(
            &[&a, &b],
            &[Term::Variable("x".into())]
        ));
        assert_eq!(
            requires("x > 5 && risk_band(\"lace\") == \"high\"").variables,
            ["x"]
        );
        assert_eq!(requires("risk_band(\"lace\") == \"high\"").risks, ["lace"]);
    }
}
