//! Reading conditions: an alarm's `when` over one reading's values and a goal's `reading` over one
//! value, compiled once and evaluated on every reading.
//!
//! They run on every device reading the engine stores and on every reading the simulator draws
//! (tens of millions in a large run), so they are not interpreted by Rhai: the text is parsed by
//! the same Rhai parser as every other expression (`ExprChecker::parse`), and its syntax tree is
//! lowered into a small typed tree over numeric slots. The language is a fixed subset of the guard
//! language (see `ALLOWED`); lowering rejects anything outside it with a located reason, and the
//! validator reports that as `E024`, so a pathway that validates has conditions this evaluator runs.
//!
//! Every number is a real number (`7 / 2` is `3.5`). A missing value is NaN; arithmetic and
//! functions on it give NaN, and every comparison with it is false, `!=` included, so a rule on
//! a kind the reading does not carry does not hold. `is_nan(x)` tests for a missing value.

use rhai::{AST, Expr as RExpr, Position, Stmt};

use crate::catalog;
use crate::expr::ExprChecker;

/// What a reading condition may contain; the validator's hint for `E024`.
pub const ALLOWED: &str = "a reading condition may use the reading's values by name (observation kinds in an alarm, \
`value` in a goal), numbers, `true`, `false`, `+ - * / %`, comparisons `== != < <= > >=`, `&& || !`, parentheses, \
and the functions abs, min, max (of two numbers), floor, ceiling, round, sqrt and is_nan; an alarm may also read \
the lowest or highest value of a kind over a recent window, `min(\"weight\", \"3d\")`, `max(\"weight\", \"3d\")`";

/// Makes Rhai compare real numbers as the language says, in guards as in reading conditions:
/// exactly (Rhai's own float comparisons allow a relative epsilon), and false whenever either
/// side is missing (NaN), `!=` included — Rhai's own find `NaN >= 0.0` true. Rhai resolves
/// operators on its standard types by its built-ins first unless fast operators are off, so this
/// turns them off. The guard sandbox runs with it, and the evaluator's tests take Rhai with it as
/// their reference.
pub fn register_real_comparisons(e: &mut rhai::Engine) {
    e.set_fast_operators(false);
    macro_rules! compare {
        ($($op:literal => $f:expr),*) => {$(
            e.register_fn($op, |x: f64, y: f64| -> bool { $f(x, y) });
            e.register_fn($op, |x: i64, y: f64| -> bool { $f(x as f64, y) });
            e.register_fn($op, |x: f64, y: i64| -> bool { $f(x, y as f64) });
        )*};
    }
    compare!(
        "==" => |x: f64, y: f64| x == y,
        "!=" => |x: f64, y: f64| Cmp::Ne.test(x, y),
        "<" => |x: f64, y: f64| x < y,
        "<=" => |x: f64, y: f64| x <= y,
        ">" => |x: f64, y: f64| x > y,
        ">=" => |x: f64, y: f64| x >= y
    );
}

/// The readings an alarm condition's window functions look back over.
pub trait Window {
    /// The lowest (or, with `highest`, the highest) value of `slot` among the readings of the
    /// last `within` seconds, the one being judged included; NaN when there is none.
    fn extreme(&self, slot: usize, within: i64, highest: bool) -> f64;
}

/// No history: every window function is NaN (a goal's reading, or a condition without windows).
pub struct NoWindow;

impl Window for NoWindow {
    fn extreme(&self, _: usize, _: i64, _: bool) -> f64 {
        f64::NAN
    }
}

/// A window function a condition uses: `min(kind, window)` or `max(kind, window)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUse {
    pub slot: usize,
    /// The window's length in seconds.
    pub within: i64,
    pub highest: bool,
}

/// Which condition it is: decides the names it reads, in slot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionKind {
    /// An alarm's `when`: every observation kind, in `catalog::OBSERVATIONS` order.
    Alarm,
    /// A goal's `reading`: the one value, `value`.
    GoalReading,
}

impl ConditionKind {
    /// Whether the condition may use window functions over recent readings (an alarm's may; a
    /// goal's reads one value).
    pub fn has_windows(self) -> bool {
        self == ConditionKind::Alarm
    }

    /// What the condition is, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ConditionKind::Alarm => "alarm condition",
            ConditionKind::GoalReading => "goal reading condition",
        }
    }

    /// The names the condition may read; a name's slot is its index here.
    pub fn names(self) -> Vec<&'static str> {
        match self {
            ConditionKind::Alarm => catalog::observation_names(),
            ConditionKind::GoalReading => vec!["value"],
        }
    }
}

/// Why a text is not a reading condition, and where in the text (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {col} of the condition)")]
pub struct ConditionError {
    pub message: String,
    pub line: u32,
    pub col: u32,
}

impl ConditionError {
    fn at(pos: Position, message: impl Into<String>) -> ConditionError {
        ConditionError {
            message: message.into(),
            line: pos.line().unwrap_or(1) as u32,
            col: pos.position().unwrap_or(1) as u32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
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

    /// The same comparison with its sides swapped.
    fn flip(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            same => same,
        }
    }

    /// False whenever either side is missing (NaN), `!=` included.
    fn test(self, x: f64, y: f64) -> bool {
        match self {
            Cmp::Eq => x == y,
            Cmp::Ne => x != y && !x.is_nan() && !y.is_nan(),
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Abs,
    Floor,
    Ceiling,
    Round,
    Sqrt,
}

/// A number-valued part of a condition.
#[derive(Debug, Clone, PartialEq)]
enum Num {
    Const(f64),
    Slot(usize),
    Neg(Box<Num>),
    Arith(Arith, Box<Num>, Box<Num>),
    Call(Func, Box<Num>),
    Min(Box<Num>, Box<Num>),
    Max(Box<Num>, Box<Num>),
    /// The lowest or highest value of a kind over a recent window (alarm conditions only).
    Window(WindowUse),
}

/// A true-or-false part of a condition.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Const(bool),
    Not(Box<Test>),
    All(Vec<Test>),
    Any(Vec<Test>),
    Cmp(Cmp, Num, Num),
    IsNan(Num),
}

/// One `slot <cmp> constant` of the fast form.
type Literal = (usize, Cmp, f64);

/// A compiled reading condition over numeric slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    root: Test,
    /// The same condition as an OR of ANDs of `slot <cmp> constant`, when it has that shape (alarm
    /// and goal rules nearly always do): evaluated without walking the tree.
    dnf: Option<Vec<Vec<Literal>>>,
    slots: Vec<usize>,
    windows: Vec<WindowUse>,
}

impl Condition {
    /// Compiles `src` reading `names`, without window functions: a name's slot is its index in
    /// `names`.
    pub fn compile(src: &str, names: &[&str]) -> Result<Condition, ConditionError> {
        Condition::compile_with(src, names, false)
    }

    fn compile_with(src: &str, names: &[&str], windows: bool) -> Result<Condition, ConditionError> {
        let ast = ExprChecker::new().parse(src, names).map_err(|e| {
            ConditionError::at(e.1, format!("the condition does not parse: {}", e.0))
        })?;
        lower(&ast, names, windows)
    }

    /// Compiles a condition of `kind`: an alarm's may use window functions, a goal's may not.
    pub fn of_kind(src: &str, kind: ConditionKind) -> Result<Condition, ConditionError> {
        Condition::compile_with(src, &kind.names(), kind.has_windows())
    }

    /// Compiles an alarm's `when` or `clear` (slots in `catalog::OBSERVATIONS` order).
    pub fn alarm(src: &str) -> Result<Condition, ConditionError> {
        Condition::of_kind(src, ConditionKind::Alarm)
    }

    /// Compiles a goal's `reading` (slot 0 is `value`).
    pub fn goal_reading(src: &str) -> Result<Condition, ConditionError> {
        Condition::of_kind(src, ConditionKind::GoalReading)
    }

    /// Whether the condition holds for these slot values (NaN, or a slot past the end, is missing),
    /// every window function being NaN.
    pub fn holds(&self, values: &[f64]) -> bool {
        self.holds_in(values, &NoWindow)
    }

    /// Whether the condition holds for these slot values, its window functions reading `window`.
    pub fn holds_in(&self, values: &[f64], window: &dyn Window) -> bool {
        match &self.dnf {
            Some(terms) => terms
                .iter()
                .any(|t| t.iter().all(|(i, cmp, c)| cmp.test(slot(values, *i), *c))),
            None => test(&self.root, values, window),
        }
    }

    /// The window functions the condition uses, each once.
    pub fn windows(&self) -> &[WindowUse] {
        &self.windows
    }

    /// `holds` without the fast form, to check the two agree.
    #[cfg(test)]
    pub(crate) fn holds_by_tree(&self, values: &[f64]) -> bool {
        test(&self.root, values, &NoWindow)
    }

    /// The value of a number-valued expression (not a condition), to check the arithmetic alone.
    #[cfg(test)]
    pub(crate) fn number(src: &str, names: &[&str], values: &[f64]) -> Result<f64, ConditionError> {
        let ast = ExprChecker::new()
            .parse(src, names)
            .map_err(|e| ConditionError::at(e.1, e.0.to_string()))?;
        let [Stmt::Expr(e)] = ast.statements() else {
            return Err(ConditionError::at(Position::START, "not one expression"));
        };
        let lowering = Lowering {
            names,
            windows: false,
        };
        Ok(num(&lowering.num(e)?, values, &NoWindow))
    }

    /// The slots the condition reads, each once, in order of first appearance.
    pub fn slots(&self) -> &[usize] {
        &self.slots
    }
}

fn slot(values: &[f64], i: usize) -> f64 {
    values.get(i).copied().unwrap_or(f64::NAN)
}

fn test(t: &Test, v: &[f64], w: &dyn Window) -> bool {
    match t {
        Test::Const(b) => *b,
        Test::Not(a) => !test(a, v, w),
        Test::All(parts) => parts.iter().all(|p| test(p, v, w)),
        Test::Any(parts) => parts.iter().any(|p| test(p, v, w)),
        Test::Cmp(cmp, a, b) => cmp.test(num(a, v, w), num(b, v, w)),
        Test::IsNan(a) => num(a, v, w).is_nan(),
    }
}

fn num(n: &Num, v: &[f64], w: &dyn Window) -> f64 {
    match n {
        Num::Const(x) => *x,
        Num::Slot(i) => slot(v, *i),
        Num::Window(u) => w.extreme(u.slot, u.within, u.highest),
        Num::Neg(a) => -num(a, v, w),
        Num::Arith(op, a, b) => {
            let (x, y) = (num(a, v, w), num(b, v, w));
            match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div => x / y,
                Arith::Rem => x % y,
            }
        }
        Num::Call(f, a) => {
            let x = num(a, v, w);
            match f {
                Func::Abs => x.abs(),
                Func::Floor => x.floor(),
                Func::Ceiling => x.ceil(),
                Func::Round => x.round(),
                Func::Sqrt => x.sqrt(),
            }
        }
        // A missing side makes the result missing; otherwise the first of equals, as Rhai's do.
        Num::Min(a, b) => {
            let (x, y) = (num(a, v, w), num(b, v, w));
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else if x <= y {
                x
            } else {
                y
            }
        }
        Num::Max(a, b) => {
            let (x, y) = (num(a, v, w), num(b, v, w));
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else if x >= y {
                x
            } else {
                y
            }
        }
    }
}

/// Lowers a parsed expression (from `ExprChecker::parse` with the same `names` in scope) into a
/// condition, or says what in it is outside the language; `windows` allows the window functions
/// (alarm conditions).
pub(crate) fn lower(ast: &AST, names: &[&str], windows: bool) -> Result<Condition, ConditionError> {
    let expr = match ast.statements() {
        [Stmt::Expr(e)] => e.as_ref(),
        [] => {
            return Err(ConditionError::at(
                Position::START,
                "the condition is empty",
            ));
        }
        [s, ..] => {
            return Err(ConditionError::at(
                s.position(),
                "a condition is one expression",
            ));
        }
    };
    let root = Lowering { names, windows }.test(expr)?;
    let mut slots = Vec::new();
    let mut uses = Vec::new();
    collect_slots(&root, &mut slots, &mut uses);
    let dnf = dnf(&root);
    Ok(Condition {
        root,
        dnf,
        slots,
        windows: uses,
    })
}

struct Lowering<'a> {
    names: &'a [&'a str],
    windows: bool,
}

/// A lowered part of a condition: a number or a true-or-false test.
enum Part {
    Num(Num),
    Test(Test),
}

impl Lowering<'_> {
    fn test(&self, e: &RExpr) -> Result<Test, ConditionError> {
        match self.part(e)? {
            Part::Test(t) => Ok(t),
            Part::Num(_) => Err(ConditionError::at(
                e.position(),
                "this is a number where a condition is expected; compare it, e.g. `value < 140`",
            )),
        }
    }

    fn num(&self, e: &RExpr) -> Result<Num, ConditionError> {
        match self.part(e)? {
            Part::Num(n) => Ok(n),
            Part::Test(_) => Err(ConditionError::at(
                e.position(),
                "this is a condition where a number is expected",
            )),
        }
    }

    fn tests(&self, parts: &[RExpr]) -> Result<Vec<Test>, ConditionError> {
        parts.iter().map(|p| self.test(p)).collect()
    }

    fn part(&self, e: &RExpr) -> Result<Part, ConditionError> {
        let bad = |message: &str| Err(ConditionError::at(e.position(), message));
        Ok(match e {
            RExpr::BoolConstant(b, _) => Part::Test(Test::Const(*b)),
            RExpr::And(parts, _) => Part::Test(Test::All(self.tests(parts)?)),
            RExpr::Or(parts, _) => Part::Test(Test::Any(self.tests(parts)?)),
            RExpr::IntegerConstant(i, _) => Part::Num(Num::Const(*i as f64)),
            RExpr::FloatConstant(x, _) => Part::Num(Num::Const(**x)),
            RExpr::Variable(v, _, pos) => {
                let name = v.1.as_str();
                match self.names.iter().position(|n| *n == name) {
                    Some(i) => Part::Num(Num::Slot(i)),
                    None => {
                        return Err(ConditionError::at(*pos, format!("unknown name `{name}`")));
                    }
                }
            }
            RExpr::FnCall(f, _) if f.is_operator_call() => {
                self.operator(f.name.as_str(), &f.args, e)?
            }
            RExpr::FnCall(f, pos) => self.call(f.name.as_str(), &f.args, *pos)?,
            RExpr::StringConstant(..) | RExpr::InterpolatedString(..) | RExpr::CharConstant(..) => {
                return bad("text is not allowed in a reading condition");
            }
            RExpr::Dot(call, ..) => match &call.rhs {
                RExpr::MethodCall(f, _) => {
                    return bad(&format!(
                        "method calls are not allowed; write `{}(x)` instead of `x.{}()`",
                        f.name, f.name
                    ));
                }
                _ => return bad("properties are not allowed in a reading condition"),
            },
            _ => return bad("this is not allowed in a reading condition"),
        })
    }

    fn operator(&self, op: &str, args: &[RExpr], e: &RExpr) -> Result<Part, ConditionError> {
        let arith = match op {
            "+" => Some(Arith::Add),
            "-" => Some(Arith::Sub),
            "*" => Some(Arith::Mul),
            "/" => Some(Arith::Div),
            "%" => Some(Arith::Rem),
            _ => None,
        };
        Ok(match (op, arith, args) {
            ("!", _, [a]) => Part::Test(Test::Not(Box::new(self.test(a)?))),
            ("-", _, [a]) => Part::Num(Num::Neg(Box::new(self.num(a)?))),
            ("+", _, [a]) => Part::Num(self.num(a)?),
            (_, Some(arith), [a, b]) => Part::Num(Num::Arith(
                arith,
                Box::new(self.num(a)?),
                Box::new(self.num(b)?),
            )),
            (_, None, [a, b]) if Cmp::of(op).is_some() => Part::Test(Test::Cmp(
                Cmp::of(op).unwrap_or(Cmp::Eq),
                self.num(a)?,
                self.num(b)?,
            )),
            _ => {
                return Err(ConditionError::at(
                    e.position(),
                    format!("the operator `{op}` is not allowed in a reading condition"),
                ));
            }
        })
    }

    fn call(&self, name: &str, args: &[RExpr], pos: Position) -> Result<Part, ConditionError> {
        let err = |message: String| Err(ConditionError::at(pos, message));
        let one = |f: fn(Num) -> Part| match args {
            [a] => Ok(f(self.num(a)?)),
            _ => err(format!("`{name}` takes 1 argument, not {}", args.len())),
        };
        let two = |f: fn(Box<Num>, Box<Num>) -> Num| match args {
            [a, b] if !matches!(a, RExpr::StringConstant(..)) => {
                Ok(Part::Num(f(Box::new(self.num(a)?), Box::new(self.num(b)?))))
            }
            [
                RExpr::StringConstant(kind, kpos),
                RExpr::StringConstant(window, wpos),
            ] if self.windows => {
                let slot = self
                    .names
                    .iter()
                    .position(|n| *n == kind.as_str())
                    .ok_or_else(|| {
                        ConditionError::at(*kpos, format!("`{kind}` is not an observation kind"))
                    })?;
                let within = crate::model::Duration::parse(window)
                    .map_err(|e| ConditionError::at(*wpos, e))?
                    .nominal_seconds();
                if within <= 0 {
                    return Err(ConditionError::at(
                        *wpos,
                        format!("the window `{window}` is empty; write e.g. \"3d\""),
                    ));
                }
                Ok(Part::Num(Num::Window(WindowUse {
                    slot,
                    within,
                    highest: name == "max",
                })))
            }
            [_, _] if self.windows => err(format!(
                "`{name}` takes two numbers, or an observation kind and a window as text: `{name}(\"weight\", \"3d\")`"
            )),
            _ => err(format!(
                "`{name}` here is the {} of two numbers; a reading condition reads one reading, not the patient's history",
                if name == "min" { "smaller" } else { "larger" }
            )),
        };
        match name {
            "abs" => one(|n| Part::Num(Num::Call(Func::Abs, Box::new(n)))),
            "floor" => one(|n| Part::Num(Num::Call(Func::Floor, Box::new(n)))),
            "ceiling" => one(|n| Part::Num(Num::Call(Func::Ceiling, Box::new(n)))),
            "round" => one(|n| Part::Num(Num::Call(Func::Round, Box::new(n)))),
            "sqrt" => one(|n| Part::Num(Num::Call(Func::Sqrt, Box::new(n)))),
            "is_nan" => one(|n| Part::Test(Test::IsNan(n))),
            "min" => two(Num::Min),
            "max" => two(Num::Max),
            _ if catalog::guard_function(name, args.len()).is_some() => err(format!(
                "the guard function `{name}` is not available in a reading condition, which reads one reading, not the patient's history"
            )),
            _ => err(format!(
                "the function `{name}` is not available in a reading condition"
            )),
        }
    }
}

fn collect_slots(t: &Test, out: &mut Vec<usize>, uses: &mut Vec<WindowUse>) {
    fn num_slots(n: &Num, out: &mut Vec<usize>, uses: &mut Vec<WindowUse>) {
        let mut add = |i: usize| {
            if !out.contains(&i) {
                out.push(i);
            }
        };
        match n {
            Num::Const(_) => {}
            Num::Slot(i) => add(*i),
            Num::Window(u) => {
                add(u.slot);
                if !uses.contains(u) {
                    uses.push(*u);
                }
            }
            Num::Neg(a) | Num::Call(_, a) => num_slots(a, out, uses),
            Num::Arith(_, a, b) | Num::Min(a, b) | Num::Max(a, b) => {
                num_slots(a, out, uses);
                num_slots(b, out, uses);
            }
        }
    }
    match t {
        Test::Const(_) => {}
        Test::Not(a) => collect_slots(a, out, uses),
        Test::All(parts) | Test::Any(parts) => {
            parts.iter().for_each(|p| collect_slots(p, out, uses))
        }
        Test::Cmp(_, a, b) => {
            num_slots(a, out, uses);
            num_slots(b, out, uses);
        }
        Test::IsNan(a) => num_slots(a, out, uses),
    }
}

/// The condition as an OR of ANDs of `slot <cmp> constant`, if it has that shape and stays small.
fn dnf(t: &Test) -> Option<Vec<Vec<Literal>>> {
    const MAX_TERMS: usize = 16;
    match t {
        Test::Any(parts) => {
            let mut out = Vec::new();
            for p in parts {
                out.extend(dnf(p)?);
            }
            (out.len() <= MAX_TERMS).then_some(out)
        }
        Test::All(parts) => {
            let mut out: Vec<Vec<Literal>> = vec![Vec::new()];
            for p in parts {
                let terms = dnf(p)?;
                if out.len() * terms.len() > MAX_TERMS {
                    return None;
                }
                out = out
                    .iter()
                    .flat_map(|a| {
                        terms
                            .iter()
                            .map(move |b| a.iter().chain(b).copied().collect())
                    })
                    .collect();
            }
            Some(out)
        }
        Test::Cmp(cmp, Num::Slot(i), Num::Const(c)) => Some(vec![vec![(*i, *cmp, *c)]]),
        Test::Cmp(cmp, Num::Const(c), Num::Slot(i)) => Some(vec![vec![(*i, cmp.flip(), *c)]]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 3] = ["bp_systolic", "bp_diastolic", "value"];

    fn compile(src: &str) -> Condition {
        Condition::compile(src, &NAMES).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    #[test]
    fn alarm_conditions_hold_with_missing_values_false() {
        let c = compile("bp_systolic >= 180 || bp_diastolic >= 110");
        assert!(c.holds(&[185.0, 90.0, f64::NAN]));
        assert!(c.holds(&[f64::NAN, 112.0]));
        assert!(!c.holds(&[150.0, 90.0, f64::NAN]));
        assert!(!c.holds(&[f64::NAN, f64::NAN, f64::NAN]));
        assert!(!c.holds(&[]));
        let g = compile("value >= 4.4 && value <= 7.0");
        assert!(g.holds(&[0.0, 0.0, 5.0]));
        assert!(!g.holds(&[0.0, 0.0, 7.5]));
        let n = compile("!(value < 1) && abs(value - 3) * 2 <= 4 % 3 + 3");
        assert!(n.holds(&[0.0, 0.0, 2.0]));
        // `!(NaN < 1)` holds, but the comparison after it does not.
        assert!(!n.holds(&[0.0, 0.0, f64::NAN]));
        assert!(!compile("value != 3").holds(&[0.0, 0.0, f64::NAN]));
        assert!(compile("is_nan(value) || value > 1").holds(&[]));
        assert!(compile("7 / 2 == 3.5").holds(&[]));
        assert!(
            compile("bp_systolic - bp_diastolic * 2 > 0 || value == 1 && false")
                .holds(&[201.0, 100.0])
        );
    }

    #[test]
    fn the_fast_form_agrees_with_the_tree() {
        let srcs = [
            "bp_systolic >= 180 || bp_diastolic >= 110",
            "value >= 4.4 && value <= 7.0",
            "140 <= bp_systolic && (bp_diastolic > 90 || value != 3)",
            "value == 1 || value < 0.5",
        ];
        let samples = [
            f64::NAN,
            0.0,
            1.0,
            3.0,
            4.4,
            5.0,
            7.0,
            90.0,
            95.0,
            110.0,
            140.0,
            185.0,
        ];
        for src in srcs {
            let c = compile(src);
            assert!(c.dnf.is_some(), "{src}");
            for a in samples {
                for b in samples {
                    for v in samples {
                        let vals = [a, b, v];
                        assert_eq!(c.holds(&vals), c.holds_by_tree(&vals), "{src} {vals:?}");
                    }
                }
            }
        }
        let n = compile("!(value < 1)");
        assert!(n.dnf.is_none());
        assert_eq!(n.slots(), &[2]);
        assert_eq!(compile("value > bp_systolic + value").slots(), &[2, 0]);
    }

    #[test]
    fn what_is_outside_the_language_is_located() {
        let err = |src: &str| Condition::compile(src, &NAMES).unwrap_err();
        let e = err("latest(\"bp_systolic\") > 1");
        assert!(e.message.contains("guard function `latest`"), "{e}");
        assert_eq!((e.line, e.col), (1, 1));
        let e = err("value > 1 && bp_systolic");
        assert!(e.message.contains("a number where a condition"), "{e}");
        assert_eq!(e.col, 14);
        assert_eq!(err("value < \"140\"").col, 9);
        assert!(err("value.abs() < 1").message.contains("method"));
        assert!(
            err("(value > 1) + 1 > 0")
                .message
                .contains("condition where a number")
        );
        assert!(err("value & 1").message.contains("`&`"));
        assert!(err("heart_rate > 1").message.contains("heart_rate"));
        assert!(err("(value > 1").message.contains("does not parse"));
        assert!(err("").message.contains("does not parse") || err("").message.contains("empty"));
        assert!(
            err("min(\"bp_systolic\", \"7d\") < 1")
                .message
                .contains("history")
        );
        assert!(err("abs(1, 2) < 1").message.contains("takes 1 argument"));
    }

    /// A window of readings as a list of (instant, slot, value), read as of `at`.
    struct Readings(Vec<(i64, usize, f64)>, i64);

    impl Window for Readings {
        fn extreme(&self, slot: usize, within: i64, highest: bool) -> f64 {
            let vals = self
                .0
                .iter()
                .filter(|(t, s, _)| *s == slot && *t > self.1 - within && *t <= self.1)
                .map(|(_, _, v)| *v);
            if highest {
                vals.fold(f64::NAN, f64::max)
            } else {
                vals.fold(f64::NAN, f64::min)
            }
        }
    }

    #[test]
    fn window_functions_read_recent_readings_in_alarms_only() {
        let alarm = |src: &str| Condition::alarm(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        let weight = crate::catalog::OBSERVATIONS
            .iter()
            .position(|(k, _)| *k == "weight")
            .expect("weight is an observation kind");
        let gain = alarm("weight - min(\"weight\", \"3d\") >= 2");
        assert_eq!(gain.slots(), &[weight]);
        assert_eq!(
            gain.windows(),
            &[WindowUse {
                slot: weight,
                within: 3 * 86_400,
                highest: false
            }]
        );
        let mut values = vec![f64::NAN; weight + 1];
        values[weight] = 82.1;
        let day = 86_400;
        let history = vec![
            (0, weight, 80.0),
            (day, weight, 80.2),
            (2 * day, weight, 82.1),
        ];
        assert!(gain.holds_in(&values, &Readings(history.clone(), 2 * day)));
        // Three days on, the 80.0 has left the window.
        let later = Readings(history.clone(), 3 * day);
        assert!(!gain.holds_in(&values, &later));
        // No history, or none of the kind: the window is missing and the comparison false.
        assert!(!gain.holds(&values));
        assert!(!gain.holds_in(&values, &Readings(Vec::new(), 2 * day)));
        let fall = alarm("max(\"weight\", \"7d\") - weight > 1.5");
        values[weight] = 78.0;
        assert!(fall.holds_in(&values, &Readings(history, 2 * day)));
        assert!(fall.dnf.is_none());

        let err = |src: &str| Condition::alarm(src).unwrap_err();
        let e = err("weight - min(\"wieght\", \"3d\") >= 2");
        assert!(
            e.message.contains("`wieght` is not an observation kind"),
            "{e}"
        );
        assert_eq!(e.col, 14);
        let e = err("weight - min(\"weight\", \"2 working days\") >= 2");
        assert!(e.message.contains("working days"), "{e}");
        assert_eq!(e.col, 24);
        assert!(
            err("min(\"weight\", 3) > 1")
                .message
                .contains("a window as text")
        );
        assert!(
            Condition::goal_reading("value - min(\"value\", \"3d\") > 1")
                .unwrap_err()
                .message
                .contains("history")
        );
    }
}
