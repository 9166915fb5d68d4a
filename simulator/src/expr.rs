//! A small evaluator for reading conditions: alarm `when` rules and goal `reading` rules.
//!
//! These run on every simulated device reading (tens of millions in a large run), so they are
//! compiled once into a tiny tree over numeric slots instead of going through the Rhai sandbox.
//! It covers the part of the guard language such conditions use: numbers, names, arithmetic,
//! comparisons, `&&`, `||`, `!`, parentheses and a few maths functions. Missing values are NaN,
//! so any comparison with them is false, as in the engine. A condition outside this subset is
//! reported by the caller and never holds.

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Num(f64),
    Bool(bool),
    Slot(usize),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(Op, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Abs,
    Min,
    Max,
    Floor,
    Ceil,
    Round,
    Sqrt,
    IsNan,
    ToFloat,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum V {
    N(f64),
    B(bool),
}

impl V {
    fn num(self) -> f64 {
        match self {
            V::N(x) => x,
            V::B(b) => f64::from(u8::from(b)),
        }
    }
    fn truth(self) -> bool {
        match self {
            V::B(b) => b,
            V::N(x) => x != 0.0 && !x.is_nan(),
        }
    }
}

/// A compiled condition over numeric slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    root: Node,
    /// The same condition as an OR of ANDs of `slot <op> constant`, when it has that shape (alarm
    /// and goal rules nearly always do): evaluated without walking the tree.
    dnf: Option<Vec<Vec<(usize, Op, f64)>>>,
}

fn flip(op: Op) -> Op {
    match op {
        Op::Lt => Op::Gt,
        Op::Le => Op::Ge,
        Op::Gt => Op::Lt,
        Op::Ge => Op::Le,
        other => other,
    }
}

fn dnf(n: &Node) -> Option<Vec<Vec<(usize, Op, f64)>>> {
    match n {
        Node::Bin(Op::Or, a, b) => {
            let mut x = dnf(a)?;
            x.extend(dnf(b)?);
            Some(x)
        }
        Node::Bin(Op::And, a, b) => {
            let (x, y) = (dnf(a)?, dnf(b)?);
            if x.len() * y.len() > 16 {
                return None;
            }
            let mut out = Vec::new();
            for p in &x {
                for q in &y {
                    out.push(p.iter().chain(q.iter()).copied().collect());
                }
            }
            Some(out)
        }
        Node::Bin(op @ (Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge), a, b) => {
            match (a.as_ref(), b.as_ref()) {
                (Node::Slot(i), Node::Num(c)) => Some(vec![vec![(*i, *op, *c)]]),
                (Node::Num(c), Node::Slot(i)) => Some(vec![vec![(*i, flip(*op), *c)]]),
                _ => None,
            }
        }
        _ => None,
    }
}

fn literal(x: f64, op: Op, c: f64) -> bool {
    match op {
        Op::Eq => x == c,
        Op::Ne => x != c && !x.is_nan(),
        Op::Lt => x < c,
        Op::Le => x <= c,
        Op::Gt => x > c,
        Op::Ge => x >= c,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    const OPS: [&str; 17] = [
        "||", "&&", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "(", ")", ",",
    ];
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            let text: String = src[start..i].chars().filter(|c| *c != '_').collect();
            let n = text
                .parse::<f64>()
                .map_err(|_| format!("`{text}` is not a number"))?;
            out.push(Tok::Num(n));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
            continue;
        }
        let Some(op) = OPS.iter().find(|op| src[i..].starts_with(**op)) else {
            return Err(format!("unexpected `{}`", &src[i..=i]));
        };
        i += op.len();
        out.push(match *op {
            "(" => Tok::LParen,
            ")" => Tok::RParen,
            "," => Tok::Comma,
            other => Tok::Op(other),
        });
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    slot: &'a dyn Fn(&str) -> Option<usize>,
    depth: usize,
}

impl Parser<'_> {
    fn peek_op(&self) -> Option<&'static str> {
        match self.toks.get(self.pos) {
            Some(Tok::Op(o)) => Some(o),
            _ => None,
        }
    }

    fn binary(
        &mut self,
        ops: &[(&str, Op)],
        next: fn(&mut Self) -> Result<Node, String>,
    ) -> Result<Node, String> {
        let mut left = next(self)?;
        while let Some(op) = self
            .peek_op()
            .and_then(|o| ops.iter().find(|(s, _)| *s == o).map(|(_, op)| *op))
        {
            self.pos += 1;
            let right = next(self)?;
            left = Node::Bin(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Node, String> {
        self.depth += 1;
        if self.depth > 32 {
            return Err("expression nested too deeply".into());
        }
        let r = self.binary(&[("||", Op::Or)], Self::and);
        self.depth -= 1;
        r
    }
    fn and(&mut self) -> Result<Node, String> {
        self.binary(&[("&&", Op::And)], Self::cmp)
    }
    fn cmp(&mut self) -> Result<Node, String> {
        self.binary(
            &[
                ("==", Op::Eq),
                ("!=", Op::Ne),
                ("<", Op::Lt),
                ("<=", Op::Le),
                (">", Op::Gt),
                (">=", Op::Ge),
            ],
            Self::sum,
        )
    }
    fn sum(&mut self) -> Result<Node, String> {
        self.binary(&[("+", Op::Add), ("-", Op::Sub)], Self::term)
    }
    fn term(&mut self) -> Result<Node, String> {
        self.binary(
            &[("*", Op::Mul), ("/", Op::Div), ("%", Op::Rem)],
            Self::unary,
        )
    }
    fn unary(&mut self) -> Result<Node, String> {
        match self.peek_op() {
            Some("!") => {
                self.pos += 1;
                Ok(Node::Not(Box::new(self.unary()?)))
            }
            Some("-") => {
                self.pos += 1;
                Ok(Node::Neg(Box::new(self.unary()?)))
            }
            Some("+") => {
                self.pos += 1;
                self.unary()
            }
            _ => self.primary(),
        }
    }
    fn primary(&mut self) -> Result<Node, String> {
        let tok = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match tok {
            Some(Tok::Num(n)) => Ok(Node::Num(n)),
            Some(Tok::LParen) => {
                let e = self.or()?;
                match self.toks.get(self.pos) {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => Err("missing `)`".into()),
                }
            }
            Some(Tok::Ident(name)) => {
                if name == "true" || name == "false" {
                    return Ok(Node::Bool(name == "true"));
                }
                if self.toks.get(self.pos) == Some(&Tok::LParen) {
                    self.pos += 1;
                    let func = match name.as_str() {
                        "abs" => Func::Abs,
                        "min" => Func::Min,
                        "max" => Func::Max,
                        "floor" => Func::Floor,
                        "ceiling" | "ceil" => Func::Ceil,
                        "round" => Func::Round,
                        "sqrt" => Func::Sqrt,
                        "is_nan" => Func::IsNan,
                        "to_float" => Func::ToFloat,
                        other => return Err(format!("function `{other}` is not supported here")),
                    };
                    let mut args = Vec::new();
                    if self.toks.get(self.pos) == Some(&Tok::RParen) {
                        self.pos += 1;
                    } else {
                        loop {
                            args.push(self.or()?);
                            match self.toks.get(self.pos) {
                                Some(Tok::Comma) => self.pos += 1,
                                Some(Tok::RParen) => {
                                    self.pos += 1;
                                    break;
                                }
                                _ => return Err("missing `)` after arguments".into()),
                            }
                        }
                    }
                    let want = if matches!(func, Func::Min | Func::Max) {
                        2
                    } else {
                        1
                    };
                    if args.len() != want {
                        return Err(format!("`{name}` takes {want} argument(s)"));
                    }
                    return Ok(Node::Call(func, args));
                }
                (self.slot)(&name)
                    .map(Node::Slot)
                    .ok_or_else(|| format!("unknown name `{name}`"))
            }
            Some(t) => Err(format!("unexpected {t:?}")),
            None => Err("the expression ends too early".into()),
        }
    }
}

impl Cond {
    /// Compiles `src`; `slot` maps each name to the index of its value.
    pub fn compile(src: &str, slot: &dyn Fn(&str) -> Option<usize>) -> Result<Cond, String> {
        let toks = lex(src)?;
        let mut p = Parser {
            toks,
            pos: 0,
            slot,
            depth: 0,
        };
        let root = p.or()?;
        if p.pos != p.toks.len() {
            return Err(format!(
                "unexpected {:?} after the expression",
                p.toks[p.pos]
            ));
        }
        let dnf = dnf(&root);
        Ok(Cond { root, dnf })
    }

    /// Whether the condition holds for these slot values.
    pub fn holds(&self, values: &[f64]) -> bool {
        match &self.dnf {
            Some(terms) => terms.iter().any(|t| {
                t.iter()
                    .all(|(i, op, c)| literal(values.get(*i).copied().unwrap_or(f64::NAN), *op, *c))
            }),
            None => eval(&self.root, values).truth(),
        }
    }

    /// The slots the condition reads.
    pub fn slots(&self) -> Vec<usize> {
        fn walk(n: &Node, out: &mut Vec<usize>) {
            match n {
                Node::Slot(i) => {
                    if !out.contains(i) {
                        out.push(*i);
                    }
                }
                Node::Not(a) | Node::Neg(a) => walk(a, out),
                Node::Bin(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Node::Call(_, args) => args.iter().for_each(|a| walk(a, out)),
                Node::Num(_) | Node::Bool(_) => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// The condition's value as a number (NaN when a value is missing).
    pub fn value(&self, values: &[f64]) -> f64 {
        eval(&self.root, values).num()
    }
}

fn eval(n: &Node, v: &[f64]) -> V {
    match n {
        Node::Num(x) => V::N(*x),
        Node::Bool(b) => V::B(*b),
        Node::Slot(i) => V::N(v.get(*i).copied().unwrap_or(f64::NAN)),
        Node::Not(a) => V::B(!eval(a, v).truth()),
        Node::Neg(a) => V::N(-eval(a, v).num()),
        Node::Bin(Op::Or, a, b) => V::B(eval(a, v).truth() || eval(b, v).truth()),
        Node::Bin(Op::And, a, b) => V::B(eval(a, v).truth() && eval(b, v).truth()),
        Node::Bin(op, a, b) => {
            let (x, y) = (eval(a, v), eval(b, v));
            if let (V::B(p), V::B(q), Op::Eq | Op::Ne) = (x, y, op) {
                return V::B((p == q) == (*op == Op::Eq));
            }
            let (x, y) = (x.num(), y.num());
            match op {
                Op::Eq => V::B(x == y),
                Op::Ne => V::B(x != y && !x.is_nan() && !y.is_nan()),
                Op::Lt => V::B(x < y),
                Op::Le => V::B(x <= y),
                Op::Gt => V::B(x > y),
                Op::Ge => V::B(x >= y),
                Op::Add => V::N(x + y),
                Op::Sub => V::N(x - y),
                Op::Mul => V::N(x * y),
                Op::Div => V::N(x / y),
                Op::Rem => V::N(x % y),
                Op::Or | Op::And => unreachable!("handled above"),
            }
        }
        Node::Call(f, args) => {
            let a = eval(&args[0], v).num();
            V::N(match f {
                Func::Abs => a.abs(),
                Func::Min => a.min(eval(&args[1], v).num()),
                Func::Max => a.max(eval(&args[1], v).num()),
                Func::Floor => a.floor(),
                Func::Ceil => a.ceil(),
                Func::Round => a.round(),
                Func::Sqrt => a.sqrt(),
                Func::ToFloat => a,
                Func::IsNan => return V::B(a.is_nan()),
            })
        }
    }
}

/// The names an expression mentions (identifiers not followed by `(`), in order of appearance.
pub fn names(src: &str) -> Vec<String> {
    let Ok(toks) = lex(src) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if let Tok::Ident(name) = t
            && toks.get(i + 1) != Some(&Tok::LParen)
            && name != "true"
            && name != "false"
            && !out.contains(name)
        {
            out.push(name.clone());
        }
    }
    out
}

/// The string-literal arguments of every call to `func` in a guard-language expression, e.g.
/// `calls("mean(\"bp_systolic\", \"7d\")", "mean")` → `[["bp_systolic", "7d"]]`.
pub fn calls(src: &str, func: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = src.as_bytes();
    let mut from = 0;
    while let Some(found) = src[from..].find(func) {
        let start = from + found;
        from = start + func.len();
        let before_ok = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let rest = src[from..].trim_start();
        if !before_ok || !rest.starts_with('(') {
            continue;
        }
        let mut args = Vec::new();
        let mut s = &rest[1..];
        loop {
            s = s.trim_start();
            if let Some(q) = s.strip_prefix('"').or_else(|| s.strip_prefix('\'')) {
                let quote = s.as_bytes()[0] as char;
                let Some(end) = q.find(quote) else { break };
                args.push(q[..end].to_string());
                s = q[end + 1..].trim_start();
            } else {
                let end = s.find([',', ')']).unwrap_or(s.len());
                args.push(s[..end].trim().to_string());
                s = &s[end..];
            }
            match s.chars().next() {
                Some(',') => s = &s[1..],
                _ => break,
            }
        }
        out.push(args);
    }
    out
}

/// The values a guard compares `outcome("<task>")` with: `[(task, value)]`.
pub fn outcome_values(src: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = src[from..].find("outcome(") {
        let start = from + found + "outcome(".len();
        from = start;
        let rest = &src[start..];
        let Some(task) = rest
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .map(|(t, _)| t.to_string())
        else {
            continue;
        };
        let Some(close) = rest.find(')') else {
            continue;
        };
        let after = rest[close + 1..].trim_start();
        let Some(cmp) = after
            .strip_prefix("==")
            .or_else(|| after.strip_prefix("!="))
        else {
            continue;
        };
        if let Some(value) = cmp
            .trim_start()
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .map(|(v, _)| v.to_string())
        {
            out.push((task, value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(name: &str) -> Option<usize> {
        ["bp_systolic", "bp_diastolic", "value"]
            .iter()
            .position(|n| *n == name)
    }

    #[test]
    fn evaluates_alarm_conditions_with_missing_values_false() {
        let c = Cond::compile("bp_systolic >= 180 || bp_diastolic >= 110", &slots).unwrap();
        assert!(c.holds(&[185.0, 90.0, f64::NAN]));
        assert!(c.holds(&[f64::NAN, 112.0, f64::NAN]));
        assert!(!c.holds(&[150.0, 90.0, f64::NAN]));
        assert!(!c.holds(&[f64::NAN, f64::NAN, f64::NAN]));
        let g = Cond::compile("value >= 4.4 && value <= 7.0", &slots).unwrap();
        assert!(g.holds(&[0.0, 0.0, 5.0]));
        assert!(!g.holds(&[0.0, 0.0, 7.5]));
        let n = Cond::compile("!(value < 1) && abs(value - 3) * 2 <= 4 % 3 + 3", &slots).unwrap();
        assert!(n.holds(&[0.0, 0.0, 2.0]));
        assert!(!n.holds(&[0.0, 0.0, f64::NAN]));
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
            let c = Cond::compile(src, &slots).unwrap();
            assert!(c.dnf.is_some(), "{src}");
            for a in samples {
                for b in samples {
                    for v in samples {
                        let vals = [a, b, v];
                        assert_eq!(
                            c.holds(&vals),
                            eval(&c.root, &vals).truth(),
                            "{src} {vals:?}"
                        );
                    }
                }
            }
        }
        let n = Cond::compile("!(value < 1)", &slots).unwrap();
        assert!(n.dnf.is_none());
        assert_eq!(n.slots(), vec![2]);
    }

    #[test]
    fn unsupported_conditions_are_errors() {
        assert!(Cond::compile("latest(\"bp_systolic\") > 1", &slots).is_err());
        assert!(Cond::compile("heart_rate > 1", &slots).is_err());
        assert!(Cond::compile("(value > 1", &slots).is_err());
        assert!(Cond::compile("value > ", &slots).is_err());
    }

    #[test]
    fn finds_calls_names_and_outcomes() {
        let g = r#"outcome("quarterly_visit") == "uncontrolled" || (count("bp_systolic", "28d") > 0 && !goal_met("bp_controlled"))"#;
        assert_eq!(
            calls(g, "count"),
            vec![vec!["bp_systolic".to_string(), "28d".to_string()]]
        );
        assert_eq!(
            calls(g, "goal_met"),
            vec![vec!["bp_controlled".to_string()]]
        );
        assert!(calls("discount(1)", "count").is_empty());
        assert_eq!(
            outcome_values(g),
            vec![("quarterly_visit".to_string(), "uncontrolled".to_string())]
        );
        assert_eq!(
            calls(r#"item("epds", 10) > 0"#, "item"),
            vec![vec!["epds".to_string(), "10".to_string()]]
        );
        assert_eq!(
            names("bp_systolic >= 140 || abs(bp_diastolic) >= 90"),
            vec!["bp_systolic", "bp_diastolic"]
        );
    }
}
