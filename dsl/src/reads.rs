//! What an expression reads, from its syntax tree: every guard function it calls with a literal
//! argument, classified by the argument kinds the catalogue gives each function. Tools that keep
//! only part of a patient's facts (the simulator) learn here which parts a pathway's guards need,
//! from the same parse and the same catalogue the validator uses, rather than by scanning text.

use rhai::{ASTNode, Engine, Expr as RExpr, OptimizationLevel};

use crate::catalog::{self, ArgKind};
use crate::expr::outcome_literal;
use crate::model::Duration;

/// The facts one expression reads. Names are as written; an argument that is not a literal is
/// not listed (the validator has already said what it thinks of it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Events whose time or count it reads (`days_since`, `hours_since`, `event_count`).
    pub events: Vec<String>,
    /// Scales whose latest result it reads (`score`, `band`, `item`).
    pub scales: Vec<String>,
    /// Observation kinds it reads, each with its window (`None`: only the latest reading).
    pub observations: Vec<(String, Option<Duration>)>,
    /// Risk models whose latest result it reads.
    pub risks: Vec<String>,
    /// Tasks whose recorded outcome it reads.
    pub outcomes: Vec<String>,
    /// Goals whose state it reads.
    pub goals: Vec<String>,
    /// Every `outcome("task") == "value"` (or `!=`): the outcomes the expression tells apart.
    pub outcome_values: Vec<(String, String)>,
}

impl Reads {
    fn add(&mut self, function: &str, args: &[RExpr]) {
        let Some(kinds) = catalog::guard_function(function, args.len()) else {
            return;
        };
        // A stay with no hospital encounter recorded is read from these events.
        if function == "length_of_stay" {
            for e in ["admitted", "discharged"] {
                if !self.events.iter().any(|x| x == e) {
                    self.events.push(e.to_string());
                }
            }
        }
        let literal = |e: &RExpr| match e {
            RExpr::StringConstant(s, _) => Some(s.to_string()),
            _ => None,
        };
        let window = args
            .iter()
            .zip(kinds)
            .find(|(_, k)| **k == ArgKind::Duration)
            .and_then(|(a, _)| literal(a))
            .and_then(|w| Duration::parse(&w).ok());
        for (arg, kind) in args.iter().zip(kinds) {
            let Some(name) = literal(arg) else { continue };
            let list = match kind {
                ArgKind::Anchor if catalog::ANCHOR_WORDS.contains(&name.as_str()) => continue,
                ArgKind::Event | ArgKind::Anchor => &mut self.events,
                ArgKind::Scale => &mut self.scales,
                ArgKind::Risk => &mut self.risks,
                ArgKind::Task => &mut self.outcomes,
                ArgKind::Goal => &mut self.goals,
                ArgKind::Observation => {
                    self.observations.push((name, window));
                    continue;
                }
                ArgKind::Any | ArgKind::Duration | ArgKind::Schedule => continue,
            };
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
}

/// What `src` reads; `None` when it does not parse. Variables are not checked here, so any name
/// is accepted.
pub fn reads(src: &str) -> Option<Reads> {
    let mut engine = Engine::new_raw();
    engine.set_optimization_level(OptimizationLevel::None);
    engine.set_max_expr_depths(32, 16);
    engine.set_max_string_size(4_096);
    let ast = engine.compile_expression(src).ok()?;
    let mut out = Reads::default();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(RExpr::FnCall(f, _))) = path.last() {
            if !f.is_operator_call() {
                out.add(f.name.as_str(), &f.args);
            } else if let Some((task, value, _)) = outcome_literal(f.name.as_str(), &f.args) {
                out.outcome_values.push((task, value));
            }
        }
        true
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_reads_what_its_calls_name() {
        let r = reads(
            r#"days_since("discharged") > 7 && band("epds") == "high" && mean("bp_systolic", "7d") > 140
               && latest("spo2") < 92 && risk_band("lace") == "high" && outcome("day7_call") != "reached"
               && goal_met("bp_control") && item("epds", 10) > 0 && min(1, 2) == 1"#,
        )
        .expect("parses");
        assert_eq!(r.events, ["discharged"]);
        assert_eq!(r.scales, ["epds"]);
        assert_eq!(
            r.observations,
            [
                ("bp_systolic".to_string(), Duration::parse("7d").ok()),
                ("spo2".to_string(), None)
            ]
        );
        assert_eq!(r.risks, ["lace"]);
        assert_eq!(r.outcomes, ["day7_call"]);
        assert_eq!(r.goals, ["bp_control"]);
        assert_eq!(
            r.outcome_values,
            [("day7_call".to_string(), "reached".to_string())]
        );
    }

    #[test]
    fn text_that_merely_looks_like_a_call_is_not_read() {
        let r = reads(r#"note == "score(\"phq9\")" || x_latest("spo2") > 1"#);
        assert_eq!(r, Some(Reads::default()));
        assert_eq!(reads("score(("), None);
    }
}
