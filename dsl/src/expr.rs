//! Checking guard-language expressions at authoring time.
//!
//! Expressions are compiled with Rhai's own parser (strict variables, no optimisation, depth limits)
//! and their syntax tree is walked to check every function, every variable and every literal scale,
//! observation kind or window they name. Errors are placed inside the pathway file by offsetting
//! Rhai's position within the expression by the expression's own position in the file.

use rhai::{
    AST, ASTNode, Engine, Expr as RExpr, OptimizationLevel, ParseError, ParseErrorType, Position,
    Scope,
};

use crate::catalog::{self, ArgKind};
use crate::condition::{self, ConditionKind};
use crate::diag::{Code, Diagnostic, Pos, suggest};
use crate::model::Duration;

/// Where an expression sits in its source file.
#[derive(Debug, Clone)]
pub struct Site {
    pub file: String,
    pub pos: Pos,
    /// Quoted scalars start one column after their node.
    pub quoted: bool,
    /// Whether the expression's text is written at `pos`, so a position inside it can be placed in
    /// the file. Not so in a Rhai pathway, where `pos` is the builder call that made the part.
    pub exact: bool,
}

impl Site {
    fn locate(&self, p: Position) -> Pos {
        self.place(
            p.line().unwrap_or(1) as u32,
            p.position().unwrap_or(1) as u32,
        )
    }

    /// The place in the file of a 1-based line and column inside the expression.
    fn place(&self, line: u32, col: u32) -> Pos {
        if !self.exact {
            return self.pos;
        }
        let col = col.max(1);
        if line <= 1 {
            Pos {
                line: self.pos.line,
                col: self.pos.col + u32::from(self.quoted) + col - 1,
            }
        } else {
            Pos {
                line: self.pos.line + line - 1,
                col,
            }
        }
    }
}

/// What an expression is for: decides the variables in scope and the checks applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Guard,
    Value,
    /// An alarm condition over one reading: observation kinds are the variables.
    Reading,
    /// A goal's per-reading condition: `value` is the variable.
    GoalReading,
}

impl Purpose {
    /// The reading condition this expression is, if it is one: it must then be in the language
    /// `condition` compiles.
    fn condition(self) -> Option<ConditionKind> {
        match self {
            Purpose::Reading => Some(ConditionKind::Alarm),
            Purpose::GoalReading => Some(ConditionKind::GoalReading),
            Purpose::Guard | Purpose::Value => None,
        }
    }
}

/// The result of checking one expression.
#[derive(Debug, Default, Clone)]
pub struct Checked {
    pub variables: Vec<String>,
    pub constant: bool,
    /// Every `outcome("task") == "value"` (or `!=`) comparison: task, value, and where the value is.
    pub outcome_literals: Vec<OutcomeLiteral>,
    /// Every event named by a literal argument (`days_since("discharged")`), and where: the
    /// validator checks the pathway has it.
    pub event_literals: Vec<(String, Pos)>,
    /// Every schedule named by a literal argument (`occurrence("monthly")`), and where: the
    /// validator checks the pathway has it.
    pub schedule_literals: Vec<(String, Pos)>,
}

/// A name given as a literal argument, and where it is.
type Named = (String, Pos);

/// A task outcome a guard compares against: the validator checks the task accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutcomeLiteral {
    pub task: String,
    pub outcome: String,
    pub pos: Pos,
}

/// `outcome("task") == "value"` in either order, with `==` or `!=`.
pub(crate) fn outcome_literal(name: &str, args: &[RExpr]) -> Option<(String, String, Position)> {
    if !matches!(name, "==" | "!=") || args.len() != 2 {
        return None;
    }
    let call = |e: &RExpr| match e {
        RExpr::FnCall(f, _) if f.name.as_str() == "outcome" && f.args.len() == 1 => {
            match &f.args[0] {
                RExpr::StringConstant(t, _) => Some(t.to_string()),
                _ => None,
            }
        }
        _ => None,
    };
    let lit = |e: &RExpr| match e {
        RExpr::StringConstant(v, p) => Some((v.to_string(), *p)),
        _ => None,
    };
    let (task, (value, pos)) = match (call(&args[0]), lit(&args[1])) {
        (Some(t), Some(v)) => (t, v),
        _ => (call(&args[1])?, lit(&args[0])?),
    };
    Some((task, value, pos))
}

/// An expression's syntax tree, for reading what it calls; `None` when it does not parse. Names
/// are not checked here (the validator does that), so any variable is accepted.
fn syntax_tree(src: &str) -> Option<AST> {
    let mut engine = Engine::new_raw();
    engine.set_optimization_level(OptimizationLevel::None);
    engine.set_max_expr_depths(32, 16);
    engine.set_max_string_size(4_096);
    engine.compile_expression(src).ok()
}

/// The literal arguments of every call to the function `func` in an expression, in order:
/// `calls("mean(\"bp_systolic\", \"7d\") > 140", "mean")` is `[["bp_systolic", "7d"]]`. Text is
/// given as written, numbers as digits, and any other argument as `""`.
pub fn calls(src: &str, func: &str) -> Vec<Vec<String>> {
    let Some(ast) = syntax_tree(src) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(RExpr::FnCall(f, _))) = path.last()
            && !f.is_operator_call()
            && f.name.as_str() == func
        {
            out.push(
                f.args
                    .iter()
                    .map(|a| match a {
                        RExpr::StringConstant(s, _) => s.to_string(),
                        RExpr::IntegerConstant(i, _) => i.to_string(),
                        RExpr::FloatConstant(x, _) => x.to_string(),
                        _ => String::new(),
                    })
                    .collect(),
            );
        }
        true
    });
    out
}

/// Every `outcome("task") == "value"` (or `!=`, either order) in an expression: `(task, value)`.
pub fn outcome_values(src: &str) -> Vec<(String, String)> {
    let Some(ast) = syntax_tree(src) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(RExpr::FnCall(f, _))) = path.last()
            && f.is_operator_call()
            && let Some((task, value, _)) = outcome_literal(f.name.as_str(), &f.args)
        {
            out.push((task, value));
        }
        true
    });
    out
}

pub struct ExprChecker {
    engine: Engine,
}

impl Default for ExprChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl ExprChecker {
    pub fn new() -> Self {
        let mut engine = Engine::new_raw();
        engine.set_strict_variables(true);
        engine.set_optimization_level(OptimizationLevel::None);
        engine.set_max_expr_depths(32, 16);
        engine.set_max_string_size(4_096);
        ExprChecker { engine }
    }

    /// Parses `src` as one expression that may read `names`: how every expression of a pathway,
    /// reading conditions included, is parsed.
    pub fn parse(&self, src: &str, names: &[&str]) -> Result<AST, ParseError> {
        let mut scope = Scope::new();
        for name in names {
            scope.push_dynamic(*name, rhai::Dynamic::UNIT);
        }
        self.engine.compile_expression_with_scope(&scope, src)
    }

    /// Checks `src`; problems are appended to `diags`. Returns what the expression reads.
    pub fn check(
        &self,
        src: &str,
        purpose: Purpose,
        variables: &[String],
        site: &Site,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Checked> {
        let names: Vec<&str> = match purpose.condition() {
            Some(kind) => kind.names(),
            None => variables.iter().map(String::as_str).collect(),
        };
        if src.trim().is_empty() {
            diags.push(Diagnostic::error(
                Code::ExprSyntax,
                &site.file,
                site.pos,
                "expression is empty",
                "write a condition such as `score(\"epds\") >= 13`",
            ));
            return None;
        }
        let ast = match self.parse(src, &names) {
            Ok(ast) => ast,
            Err(err) => {
                let pos = site.locate(err.1);
                let (code, hint) = match err.0.as_ref() {
                    ParseErrorType::VariableUndefined(name) => {
                        let known = &names;
                        let hint = match purpose {
                            Purpose::Reading => format!("in an alarm condition the variables are observation kinds; {}", suggest(name, known)),
                            Purpose::GoalReading => "in a goal's reading condition the reading is `value`".to_string(),
                            _ if known.is_empty() => "declare it under `variables:`, or call a guard function such as `latest(\"bp_systolic\")`".to_string(),
                            _ => format!("declare it under `variables:`; {}", suggest(name, known)),
                        };
                        (Code::UnknownVariable, hint)
                    }
                    _ => (Code::ExprSyntax, "guards are Rhai expressions, e.g. `score(\"epds\") >= 13 && days_in_state() > 2`".to_string()),
                };
                let message = match err.0.as_ref() {
                    ParseErrorType::VariableUndefined(name) => {
                        format!("unknown variable `{name}` in expression")
                    }
                    other => format!("expression does not parse: {other}"),
                };
                diags.push(Diagnostic::error(code, &site.file, pos, message, hint));
                return None;
            }
        };

        if let Some(kind) = purpose.condition() {
            return match condition::lower(&ast, &names, kind.has_windows()) {
                Ok(c) => Some(Checked {
                    variables: c.slots().iter().map(|i| names[*i].to_string()).collect(),
                    constant: c.slots().is_empty(),
                    outcome_literals: Vec::new(),
                    event_literals: Vec::new(),
                    schedule_literals: Vec::new(),
                }),
                Err(e) => {
                    diags.push(Diagnostic::error(
                        Code::UnsupportedCondition,
                        &site.file,
                        site.place(e.line, e.col),
                        format!("{}: {}", kind.describe(), e.message),
                        condition::ALLOWED,
                    ));
                    None
                }
            };
        }

        let mut checked = Checked::default();
        let mut calls = 0usize;
        ast.walk(&mut |path: &[ASTNode]| {
            match path.last() {
                Some(ASTNode::Expr(RExpr::Variable(v, _, _))) => {
                    let name = v.1.to_string();
                    if !checked.variables.contains(&name) {
                        checked.variables.push(name);
                    }
                }
                Some(ASTNode::Expr(RExpr::FnCall(f, _))) if f.is_operator_call() => {
                    if let Some((task, outcome, pos)) = outcome_literal(f.name.as_str(), &f.args) {
                        checked.outcome_literals.push(OutcomeLiteral {
                            task,
                            outcome,
                            pos: site.locate(pos),
                        });
                    }
                }
                Some(ASTNode::Expr(RExpr::FnCall(f, pos))) if !f.is_operator_call() => {
                    calls += 1;
                    let (events, schedules) =
                        self.check_call(f.name.as_str(), &f.args, site.locate(*pos), site, diags);
                    checked.event_literals.extend(events);
                    checked.schedule_literals.extend(schedules);
                }
                Some(ASTNode::Expr(RExpr::MethodCall(f, pos))) => {
                    calls += 1;
                    if !catalog::PURE_FUNCTIONS.contains(&f.name.as_str()) {
                        diags.push(Diagnostic::error(
                            Code::UnknownFunction,
                            &site.file,
                            site.locate(*pos),
                            format!("unknown method `{}`", f.name),
                            format!(
                                "methods available on values: {}",
                                catalog::PURE_FUNCTIONS.join(", ")
                            ),
                        ));
                    }
                }
                _ => {}
            }
            true
        });
        checked.constant = calls == 0 && checked.variables.is_empty();
        Some(checked)
    }

    /// Checks one call's function and literal arguments; returns the events and the schedules it
    /// names, with where.
    fn check_call(
        &self,
        name: &str,
        args: &[RExpr],
        at: Pos,
        site: &Site,
        diags: &mut Vec<Diagnostic>,
    ) -> (Vec<Named>, Vec<Named>) {
        let mut events = Vec::new();
        let mut schedules = Vec::new();
        let kinds = match catalog::guard_function(name, args.len()) {
            Some(kinds) => kinds,
            None if catalog::PURE_FUNCTIONS.contains(&name) => return (events, schedules),
            None => {
                let arities: Vec<usize> = catalog::GUARD_FUNCTIONS
                    .iter()
                    .filter(|(n, _)| *n == name)
                    .map(|(_, a)| a.len())
                    .collect();
                let (message, hint) = if let Some(n) = arities.first() {
                    (
                        format!("`{name}` takes {n} argument(s), not {}", args.len()),
                        "see the guard functions in docs/pathway-language.md".to_string(),
                    )
                } else {
                    (
                        format!("unknown guard function `{name}`"),
                        suggest(name, &catalog::function_names()),
                    )
                };
                diags.push(Diagnostic::error(
                    Code::UnknownFunction,
                    &site.file,
                    at,
                    message,
                    hint,
                ));
                return (events, schedules);
            }
        };
        for (arg, kind) in args.iter().zip(kinds) {
            let RExpr::StringConstant(value, pos) = arg else {
                continue;
            };
            let at = site.locate(*pos);
            match kind {
                ArgKind::Scale if !catalog::SCALES.contains(&value.as_str()) => {
                    diags.push(Diagnostic::error(
                        Code::UnknownScale,
                        &site.file,
                        at,
                        format!("unknown scale `{value}`"),
                        suggest(value, catalog::SCALES),
                    ))
                }
                ArgKind::Observation if !catalog::is_observation(value) => {
                    diags.push(Diagnostic::error(
                        Code::UnknownObservation,
                        &site.file,
                        at,
                        format!("unknown observation kind `{value}`"),
                        suggest(value, &catalog::observation_names()),
                    ))
                }
                ArgKind::Duration => {
                    if let Err(e) = Duration::parse(value) {
                        diags.push(Diagnostic::error(
                            Code::BadDuration,
                            &site.file,
                            at,
                            e,
                            "a window is written like \"7d\" or \"24h\"",
                        ));
                    }
                }
                ArgKind::Anchor if catalog::ANCHOR_WORDS.contains(&value.as_str()) => {}
                ArgKind::Event | ArgKind::Anchor => events.push((value.to_string(), at)),
                ArgKind::Schedule => schedules.push((value.to_string(), at)),
                _ => {}
            }
        }
        (events, schedules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str, vars: &[&str]) -> (Option<Checked>, Vec<Diagnostic>) {
        let checker = ExprChecker::new();
        let mut diags = Vec::new();
        let site = Site {
            file: "p.yaml".into(),
            pos: Pos { line: 10, col: 15 },
            quoted: true,
            exact: true,
        };
        let vars: Vec<String> = vars.iter().map(|s| s.to_string()).collect();
        let out = checker.check(src, Purpose::Guard, &vars, &site, &mut diags);
        (out, diags)
    }

    #[test]
    fn good_guard_reads_its_variables() {
        let (out, diags) = run("score(\"epds\") >= 13 && high_risk", &["high_risk"]);
        assert!(diags.is_empty(), "{diags:?}");
        let out = out.unwrap();
        assert_eq!(out.variables, vec!["high_risk"]);
        assert!(!out.constant);
    }

    #[test]
    fn errors_are_located_inside_the_file() {
        let (_, diags) = run("score(\"epds\") >= ", &[]);
        assert_eq!(diags[0].code, Code::ExprSyntax);
        assert_eq!(diags[0].pos.line, 10);
        let (_, diags) = run("scor(\"epds\") > 1", &[]);
        assert_eq!(diags[0].code, Code::UnknownFunction);
        assert_eq!(diags[0].pos, Pos { line: 10, col: 16 });
        assert!(diags[0].hint.contains("score"), "{}", diags[0].hint);
    }

    #[test]
    fn literal_names_are_checked() {
        let (_, diags) = run("score(\"epdss\") > 1 || mean(\"bp_sys\", \"7x\") > 2", &[]);
        let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            vec![
                Code::UnknownScale,
                Code::UnknownObservation,
                Code::BadDuration
            ]
        );
    }

    #[test]
    fn outcome_comparisons_are_collected_in_either_order() {
        let (out, diags) = run(
            "outcome(\"review\") == \"refer_up\" || \"stable\" != outcome(\"visit\") || outcome(\"x\") == \"\" + \"y\"",
            &[],
        );
        assert!(diags.is_empty(), "{diags:?}");
        let lits: Vec<(String, String)> = out
            .unwrap()
            .outcome_literals
            .into_iter()
            .map(|l| (l.task, l.outcome))
            .collect();
        assert_eq!(
            lits,
            vec![
                ("review".to_string(), "refer_up".to_string()),
                ("visit".to_string(), "stable".to_string())
            ]
        );
    }

    #[test]
    fn calls_and_outcomes_are_read_from_the_syntax_tree() {
        let g = r#"outcome("quarterly_visit") == "uncontrolled" || (count("bp_systolic", "28d") > 0 && !goal_met("bp_controlled"))"#;
        assert_eq!(calls(g, "count"), vec![vec!["bp_systolic", "28d"]]);
        assert_eq!(calls(g, "goal_met"), vec![vec!["bp_controlled"]]);
        assert!(calls("discount(1) > 0", "count").is_empty());
        assert!(calls(r#"x == "count(\"bp_systolic\", \"1d\")""#, "count").is_empty());
        assert_eq!(
            outcome_values(g),
            vec![("quarterly_visit".to_string(), "uncontrolled".to_string())]
        );
        assert_eq!(
            calls(r#"item("epds", 10) > 0"#, "item"),
            vec![vec!["epds", "10"]]
        );
        assert!(calls("count(", "count").is_empty());
    }

    #[test]
    fn unknown_variable_and_constant() {
        let (_, diags) = run("hihg_risk", &["high_risk"]);
        assert_eq!(diags[0].code, Code::UnknownVariable);
        assert!(diags[0].hint.contains("high_risk"));
        let (out, _) = run("1 < 2", &[]);
        assert!(out.unwrap().constant);
    }
}
