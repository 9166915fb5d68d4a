//! The reading-condition evaluator against a reference, and the validator against the evaluator.
//!
//! The reference is Rhai evaluating the same text, with the language's rules for comparisons and
//! missing values registered where Rhai's built-ins differ: a reading condition compares reals
//! exactly and every comparison with NaN is false, while Rhai compares floats within a relative
//! machine epsilon (and so finds `NaN >= 0.0` true); `min`/`max` of NaN is NaN.
//! Generated conditions stay where Rhai computes what the language means: a division, modulo or
//! rounding function always has a real-valued operand, since Rhai divides two integer literals as
//! integers while in a reading condition every number is real.
//!
//! 256 cases per property by default; `PROPTEST_CASES` overrides it.

use std::path::Path;

use proptest::prelude::*;
use rhai::packages::{ArithmeticPackage, BasicMathPackage, LogicPackage, Package};
use rhai::{Dynamic, Engine, Scope};

use crate::condition::{Condition, ConditionKind};
use crate::props_test::config;
use crate::{Code, FsLoader, compile_yaml};

/// The names the generated conditions read (alarm slots 0, 1 and 4).
const NAMES: [&str; 3] = ["bp_systolic", "bp_diastolic", "heart_rate"];

fn reference() -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(ArithmeticPackage::new().as_shared_module());
    e.register_global_module(LogicPackage::new().as_shared_module());
    e.register_global_module(BasicMathPackage::new().as_shared_module());
    crate::condition::register_real_comparisons(&mut e);
    fn nan_or(x: f64, y: f64, pick: bool) -> f64 {
        if x.is_nan() || y.is_nan() {
            f64::NAN
        } else if pick {
            x
        } else {
            y
        }
    }
    e.register_fn("min", |x: f64, y: f64| nan_or(x, y, x <= y));
    e.register_fn("min", |x: i64, y: f64| nan_or(x as f64, y, (x as f64) <= y));
    e.register_fn("min", |x: f64, y: i64| nan_or(x, y as f64, x <= y as f64));
    e.register_fn("max", |x: f64, y: f64| nan_or(x, y, x >= y));
    e.register_fn("max", |x: i64, y: f64| nan_or(x as f64, y, (x as f64) >= y));
    e.register_fn("max", |x: f64, y: i64| nan_or(x, y as f64, x >= y as f64));
    e
}

fn reference_holds(engine: &Engine, src: &str, values: &[f64]) -> Result<bool, String> {
    let mut scope = Scope::new();
    for (name, v) in NAMES.iter().zip(values) {
        scope.push(*name, *v);
    }
    engine
        .eval_expression_with_scope::<Dynamic>(&mut scope, src)
        .map_err(|e| e.to_string())?
        .as_bool()
        .map_err(|t| format!("gave a {t}"))
}

/// The alarm slots of `NAMES`, to lay the generated values out as a reading.
fn reading(values: &[f64]) -> Vec<f64> {
    let names = ConditionKind::Alarm.names();
    let mut out = vec![f64::NAN; names.len()];
    for (name, v) in NAMES.iter().zip(values) {
        if let Some(i) = names.iter().position(|n| n == name) {
            out[i] = *v;
        }
    }
    out
}

/// A generated number: its text, and whether Rhai sees it as an integer.
#[derive(Debug, Clone)]
struct Num {
    text: String,
    int: bool,
}

impl Num {
    /// The same number as Rhai sees a real.
    fn real(self) -> Num {
        if self.int {
            Num {
                text: format!("({} * 1.0)", self.text),
                int: false,
            }
        } else {
            self
        }
    }
}

const LITERALS: &[&str] = &[
    "0", "1", "2", "3", "90", "110", "140", "180", "4.4", "7.0", "0.5", "139.5",
];

fn number() -> impl Strategy<Value = Num> {
    let leaf = prop_oneof![
        3 => prop::sample::select(&NAMES[..]).prop_map(|n| Num { text: n.to_string(), int: false }),
        2 => prop::sample::select(LITERALS).prop_map(|l| Num { text: l.to_string(), int: !l.contains('.') }),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|a| Num {
                text: format!("-({})", a.text),
                int: a.int
            }),
            (
                inner.clone(),
                prop::sample::select(&["+", "-", "*", "/", "%"][..]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| {
                    let b = if a.int { b.real() } else { b };
                    Num {
                        text: format!("({}) {op} ({})", a.text, b.text),
                        int: false,
                    }
                }),
            (
                prop::sample::select(&["abs", "floor", "ceiling", "round", "sqrt"][..]),
                inner.clone()
            )
                .prop_map(|(f, a)| Num {
                    text: format!("{f}({})", a.real().text),
                    int: false
                }),
            (
                prop::sample::select(&["min", "max"][..]),
                inner.clone(),
                inner
            )
                .prop_map(|(f, a, b)| Num {
                    text: format!("{f}({}, {})", a.text, b.real().text),
                    int: false
                }),
        ]
    })
}

fn condition() -> impl Strategy<Value = String> {
    let cmp = (
        number(),
        prop::sample::select(&["==", "!=", "<", "<=", ">", ">="][..]),
        number(),
    )
        .prop_map(|(a, op, b)| format!("{} {op} {}", a.text, b.text));
    let leaf = prop_oneof![
        8 => cmp,
        1 => prop::sample::select(&["true", "false"][..]).prop_map(String::from),
        1 => number().prop_map(|a| format!("is_nan({})", a.real().text)),
    ];
    leaf.prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|a| format!("!({a})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
            (inner.clone(), inner).prop_map(|(a, b)| format!("({a}) || ({b})")),
        ]
    })
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => Just(f64::NAN),
        3 => prop::sample::select(&[0.0, 1.0, 3.0, 4.4, 7.0, 90.0, 110.0, 139.5, 140.0, 180.0][..]),
        3 => (-50.0f64..250.0).prop_map(|x| (x * 4.0).round() / 4.0),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_evaluator_agrees_with_rhai(
        src in condition(),
        values in prop::collection::vec(value(), NAMES.len()),
    ) {
        let engine = reference();
        let want = reference_holds(&engine, &src, &values)
            .map_err(|e| TestCaseError::fail(format!("the reference failed on `{src}`: {e}")))?;
        let compiled = Condition::alarm(&src)
            .map_err(|e| TestCaseError::fail(format!("`{src}` does not compile: {e}")))?;
        let slots = reading(&values);
        prop_assert_eq!(compiled.holds(&slots), want, "`{}` with {:?}", src, values);
        prop_assert_eq!(compiled.holds_by_tree(&slots), want, "`{}` with {:?} (tree)", src, values);
    }

    #[test]
    fn arithmetic_agrees_with_rhai(
        n in number(),
        values in prop::collection::vec(value(), NAMES.len()),
    ) {
        let engine = reference();
        let mut scope = Scope::new();
        for (name, v) in NAMES.iter().zip(&values) {
            scope.push(*name, *v);
        }
        let want = engine
            .eval_expression_with_scope::<Dynamic>(&mut scope, &n.text)
            .map_err(|e| TestCaseError::fail(format!("the reference failed on `{}`: {e}", n.text)))?;
        let want = want
            .as_float()
            .or_else(|_| want.as_int().map(|i| i as f64))
            .map_err(|t| TestCaseError::fail(format!("`{}` gave a {t}", n.text)))?;
        let got = Condition::number(&n.text, &NAMES, &values)
            .map_err(|e| TestCaseError::fail(format!("`{}` does not compile: {e}", n.text)))?;
        prop_assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "`{}` with {:?}: {} but Rhai gives {}",
            n.text,
            values,
            got,
            want
        );
    }

    /// Whatever the text, an alarm or goal condition validates exactly when the evaluator compiles it.
    #[test]
    fn the_validator_accepts_exactly_what_the_evaluator_runs(parts in prop::collection::vec(piece(), 1..7)) {
        let src = parts.concat();
        for (kind, text) in [
            (ConditionKind::Alarm, src.clone()),
            (ConditionKind::GoalReading, src.replace("bp_systolic", "value")),
        ] {
            let compiled = pathway_with(kind, &text);
            let runs = Condition::of_kind(&text, kind).is_ok();
            prop_assert_eq!(
                compiled.is_ok(),
                runs,
                "`{}` as {}: {:?}",
                text,
                kind.describe(),
                compiled.diagnostics
            );
        }
    }
}

/// Fragments of conditions, inside and outside the language.
fn piece() -> impl Strategy<Value = String> {
    prop::sample::select(
        &[
            "bp_systolic",
            " >= 140",
            " < 90.5",
            " != 3",
            " && ",
            " || ",
            "!",
            "(",
            ")",
            "abs(bp_systolic)",
            "min(1, 2)",
            // a window: inside an alarm's language, outside a goal's
            "max(\"bp_systolic\", \"3d\")",
            " + 1",
            " / 2",
            "true",
            // outside the language
            "latest(\"bp_systolic\")",
            "mean(\"bp_systolic\", \"7d\")",
            "min(\"bp_systolic\", \"3wd\")",
            "\"140\"",
            ".abs()",
            " & ",
            " | ",
            " ** 2",
            "sin(1)",
            "to_float(1)",
            "[1]",
            " ?? 1",
            "score(\"epds\")",
            "x",
        ][..],
    )
    .prop_map(String::from)
}

fn pathway_with(kind: ConditionKind, condition: &str) -> crate::Compiled {
    let quoted = format!("'{}'", condition.replace('\'', "''"));
    let action = match kind {
        ConditionKind::Alarm => format!(
            "- alarm: {{ id: rule, when: {quoted}, task: {{ role: case_manager, title: {{ zh: 甲, en: A }}, due: 2h }} }}"
        ),
        ConditionKind::GoalReading => format!(
            "- goal: {{ id: target, title: {{ zh: 甲, en: A }}, observation: bp_systolic, reading: {quoted}, at_least: 0.8, over: 28d }}"
        ),
    };
    let src = format!(
        "pathway: p\nversion: 1\ntitle: {{ zh: 甲, en: A }}\nowner_role: case_manager\nroles: [case_manager]\n\
         entry_points:\n  - {{ id: start, state: a }}\nstates:\n  - id: a\n    phase: follow_up\n    on_enter:\n      {action}\n\
         \x20   transitions:\n      - {{ after: 7d, to: done }}\n  - {{ id: done, phase: closed, terminal: true }}\n"
    );
    compile_yaml("p.yaml", src.as_bytes(), Path::new(""), &FsLoader)
}

#[test]
fn the_reference_follows_the_documented_missing_value_rules() {
    let engine = reference();
    let nan = [f64::NAN, 1.0, 1.0];
    assert_eq!(
        reference_holds(&engine, "bp_systolic != 1", &nan),
        Ok(false)
    );
    assert_eq!(
        reference_holds(&engine, "1.0 != bp_systolic", &nan),
        Ok(false)
    );
    assert_eq!(
        reference_holds(&engine, "is_nan(max(bp_systolic, 1.0))", &nan),
        Ok(true)
    );
    assert_eq!(
        reference_holds(&engine, "is_nan(min(2, bp_systolic))", &nan),
        Ok(true)
    );
    assert_eq!(
        reference_holds(&engine, "bp_diastolic != 2", &nan),
        Ok(true)
    );
    assert_eq!(
        reference_holds(&engine, "bp_systolic >= 0.0", &nan),
        Ok(false)
    );
    assert_eq!(reference_holds(&engine, "0.1 + 0.2 > 0.3", &nan), Ok(true));
}

#[test]
fn a_condition_the_evaluator_cannot_run_is_a_validation_error() {
    for (kind, text) in [
        (ConditionKind::Alarm, "latest(\"bp_systolic\") >= 140"),
        (ConditionKind::Alarm, "bp_systolic"),
        (
            ConditionKind::Alarm,
            "bp_systolic >= 140 & bp_diastolic >= 90",
        ),
        (
            ConditionKind::Alarm,
            "weight - min(\"weight\", \"3 working days\") >= 2",
        ),
        (
            ConditionKind::Alarm,
            "weight - min(\"wieght\", \"3d\") >= 2",
        ),
        (
            ConditionKind::GoalReading,
            "value - min(\"value\", \"3d\") >= 2",
        ),
        (ConditionKind::GoalReading, "value.abs() < 140"),
        (ConditionKind::GoalReading, "to_float(value) < 140"),
        (ConditionKind::GoalReading, "value < \"140\""),
    ] {
        assert!(Condition::of_kind(text, kind).is_err(), "{text}");
        let compiled = pathway_with(kind, text);
        let codes: Vec<Code> = compiled.diagnostics.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            vec![Code::UnsupportedCondition],
            "{text}: {:?}",
            compiled.diagnostics
        );
        let d = &compiled.diagnostics[0];
        assert!(d.hint.contains("abs, min, max"), "{}", d.hint);
        assert_eq!(d.pos.line, 12, "{d}");
    }
}
