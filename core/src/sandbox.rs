//! The Rhai sandbox in which guards, computed values and risk formulas run.
//!
//! One engine per process, built from `Engine::new_raw()` with only arithmetic and logic, strict
//! variables and every limit set; expressions are compiled once per pathway version. Fact functions
//! read the patient through a thread-local context that `Sandbox::with_context` installs for the
//! duration of one evaluation batch and always removes; each call they answer is logged so the trace
//! can say which values made a guard hold.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use carepath_dsl::condition::Condition;
use carepath_dsl::{Duration, Expr, Goal, Pathway, RiskModel, VarType, VarValue};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rhai::packages::{ArithmeticPackage, BasicMathPackage, LogicPackage, Package};
use rhai::{AST, Dynamic, Engine, ImmutableString, OptimizationLevel, Scope};

use crate::facts::PatientFacts;

/// Everything a guard may read while one enrolment is being stepped.
pub struct EvalContext {
    pub facts: PatientFacts,
    /// The pathway's care-plan goals, which `goal_met` evaluates from the facts.
    pub goals: Arc<[CompiledGoal]>,
    pub now: Timestamp,
    pub entered_at: Timestamp,
    /// When the enrolment began.
    pub enrolled_at: Timestamp,
    /// Occurrences of the current state's schedules so far, by schedule id.
    pub occurrences: std::collections::BTreeMap<String, u32>,
    pub tz: TimeZone,
}

thread_local! {
    static CONTEXT: RefCell<Option<EvalContext>> = const { RefCell::new(None) };
    static CALLS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

fn with_ctx<T>(f: impl FnOnce(&EvalContext) -> T, missing: T) -> T {
    CONTEXT.with(|c| c.borrow().as_ref().map(f).unwrap_or(missing))
}

fn log(call: String) {
    CALLS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() < 64 {
            c.push(call);
        }
    });
}

fn window(w: &str) -> i64 {
    Duration::parse(w).map(|d| d.nominal_seconds()).unwrap_or(0)
}

fn since(ctx: &EvalContext, at: Option<Timestamp>, unit: f64) -> f64 {
    at.map(|t| (ctx.now.as_second() - t.as_second()) as f64 / unit)
        .unwrap_or(f64::NAN)
}

fn aggregate(kind: &str, w: &str, f: impl Fn(&[f64]) -> f64) -> f64 {
    with_ctx(
        |ctx| {
            let from = Timestamp::from_second(ctx.now.as_second() - window(w))
                .unwrap_or(Timestamp::UNIX_EPOCH);
            let values: Vec<f64> = ctx.facts.observations_in(kind, from, ctx.now).collect();
            f(&values)
        },
        f64::NAN,
    )
}

/// A care-plan goal with its reading condition compiled (share-of-readings goals only).
#[derive(Debug, Clone)]
pub struct CompiledGoal {
    pub spec: Goal,
    pub reading: Option<Condition>,
}

impl CompiledGoal {
    pub fn compile(spec: Goal) -> Result<CompiledGoal, EvalError> {
        let reading = match &spec.measure {
            carepath_dsl::GoalMeasure::ShareOfReadings { reading, .. } => {
                Some(Condition::goal_reading(&reading.0).map_err(|e| EvalError {
                    expr: reading.0.clone(),
                    message: e.to_string(),
                })?)
            }
            carepath_dsl::GoalMeasure::DaysLogged { .. } => None,
        };
        Ok(CompiledGoal { spec, reading })
    }
}

/// Whether a care-plan goal is met now, from the observations in its window.
pub fn goal_holds(goal: &CompiledGoal, c: &EvalContext) -> bool {
    measure_goal(&goal.spec, goal.reading.as_ref(), &c.facts, c.now, &c.tz).met
}

/// One evaluation of a care-plan goal: whether it is met, the measured value (the share of
/// readings in range, or the number of days logged) and how many readings it saw.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalReading {
    pub met: bool,
    pub value: Option<f64>,
    pub readings: usize,
}

/// Evaluates a care-plan goal at `now` from the observations in its window; `reading` is the
/// goal's reading condition compiled (`Condition::goal_reading`). No readings in the window, or a
/// share-of-readings goal without its compiled condition, means the goal is not met and has no value.
pub fn measure_goal(
    goal: &Goal,
    reading: Option<&Condition>,
    facts: &PatientFacts,
    now: Timestamp,
    tz: &TimeZone,
) -> GoalReading {
    use carepath_dsl::GoalMeasure;
    let from_of = |over: &Duration| {
        Timestamp::from_second(now.as_second() - over.nominal_seconds())
            .unwrap_or(Timestamp::UNIX_EPOCH)
    };
    match &goal.measure {
        GoalMeasure::ShareOfReadings { at_least, over, .. } => {
            let values: Vec<f64> = facts
                .observations_in(&goal.observation, from_of(over), now)
                .collect();
            let none = GoalReading {
                met: false,
                value: None,
                readings: values.len(),
            };
            let Some(reading) = reading.filter(|_| !values.is_empty()) else {
                return none;
            };
            let hits = values.iter().filter(|v| reading.holds(&[**v])).count();
            let share = hits as f64 / values.len() as f64;
            GoalReading {
                met: share >= *at_least,
                value: Some(share),
                readings: values.len(),
            }
        }
        GoalMeasure::DaysLogged { days, over } => {
            let from = from_of(over);
            let mut readings = 0;
            let mut dates: Vec<jiff::civil::Date> = facts
                .observations
                .iter()
                .filter(|o| o.kind == goal.observation && o.at > from && o.at <= now)
                .inspect(|_| readings += 1)
                .map(|o| o.at.to_zoned(tz.clone()).date())
                .collect();
            dates.sort();
            dates.dedup();
            GoalReading {
                met: dates.len() as u32 >= *days,
                value: Some(dates.len() as f64),
                readings,
            }
        }
    }
}

/// The first instant after `now` at which [`measure_goal`] could answer differently with no new
/// reading stored: when a stored reading of the goal's observation enters its window (one dated
/// ahead of `now`) or leaves it. A goal's answer depends on the readings in the window
/// `(t - over, t]` and, for days logged, the patient's time zone, and on nothing else, so it holds
/// unchanged until then. `None` when no stored reading will enter or leave the window: only a new
/// reading (or a new time zone) can change the answer.
pub fn goal_next_change(goal: &Goal, facts: &PatientFacts, now: Timestamp) -> Option<Timestamp> {
    use carepath_dsl::GoalMeasure;
    let over = match &goal.measure {
        GoalMeasure::ShareOfReadings { over, .. } | GoalMeasure::DaysLogged { over, .. } => {
            over.nominal_seconds()
        }
    };
    let now = now.as_second();
    facts
        .observations
        .iter()
        .filter(|o| o.kind == goal.observation)
        // A reading is in the window at `t` when `at <= t < at + over`.
        .flat_map(|o| [o.at.as_second(), o.at.as_second().saturating_add(over)])
        .filter(|t| *t > now)
        .min()
        .and_then(|t| Timestamp::from_second(t).ok())
}

/// Adds a risk prediction made during the step, so later guards and `set` values of the same step read it.
pub fn push_risk(r: crate::facts::RiskResult) {
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.facts.risks.push(r);
        }
    });
}

/// The instant an anchor argument names: the enrolment's start, the entry into the current state,
/// or the latest occurrence of an event by now.
fn anchor_at(c: &EvalContext, name: &str) -> Option<Timestamp> {
    match name {
        "enrolment" => Some(c.enrolled_at),
        "state" => Some(c.entered_at),
        event => c.facts.last_event(event, c.now),
    }
}

/// Registers the guard functions documented in the pathway language.
fn register_facts(e: &mut Engine) {
    e.register_fn("age", || -> i64 {
        let v = with_ctx(
            |c| {
                c.facts
                    .birth_date
                    .map(|b| crate::time::age_years(b, c.now, &c.tz))
                    .unwrap_or(0)
            },
            0,
        );
        log(format!("age() = {v}"));
        v
    });
    e.register_fn("sex", || -> ImmutableString {
        let v = with_ctx(|c| c.facts.sex.clone(), String::new());
        log(format!("sex() = {v:?}"));
        v.into()
    });
    // `days_since` and `hours_since` take an anchor word or an event; `days_since_event` an
    // event only (so an event the pathway might name `state` is still reachable).
    e.register_fn("days_since", |ev: &str| -> f64 {
        let v = with_ctx(|c| since(c, anchor_at(c, ev), 86_400.0), f64::NAN);
        log(format!("days_since({ev:?}) = {v:.2}"));
        v
    });
    e.register_fn("hours_since", |ev: &str| -> f64 {
        let v = with_ctx(|c| since(c, anchor_at(c, ev), 3_600.0), f64::NAN);
        log(format!("hours_since({ev:?}) = {v:.2}"));
        v
    });
    e.register_fn("days_since_event", |ev: &str| -> f64 {
        let v = with_ctx(
            |c| since(c, c.facts.last_event(ev, c.now), 86_400.0),
            f64::NAN,
        );
        log(format!("days_since_event({ev:?}) = {v:.2}"));
        v
    });
    e.register_fn("days_since_enrolment", || -> f64 {
        let v = with_ctx(|c| since(c, Some(c.enrolled_at), 86_400.0), f64::NAN);
        log(format!("days_since_enrolment() = {v:.2}"));
        v
    });
    e.register_fn("occurrence", |schedule: &str| -> i64 {
        let v = with_ctx(
            |c| i64::from(c.occurrences.get(schedule).copied().unwrap_or(0)),
            0,
        );
        log(format!("occurrence({schedule:?}) = {v}"));
        v
    });
    e.register_fn("days_in_state", || -> f64 {
        let v = with_ctx(|c| since(c, Some(c.entered_at), 86_400.0), f64::NAN);
        log(format!("days_in_state() = {v:.2}"));
        v
    });
    e.register_fn("hours_in_state", || -> f64 {
        let v = with_ctx(|c| since(c, Some(c.entered_at), 3_600.0), f64::NAN);
        log(format!("hours_in_state() = {v:.2}"));
        v
    });
    e.register_fn("charlson", || -> f64 {
        let v = with_ctx(
            |c| {
                c.facts
                    .charlson(c.now)
                    .map_or(f64::NAN, |ch| f64::from(ch.index))
            },
            f64::NAN,
        );
        log(format!("charlson() = {v}"));
        v
    });
    e.register_fn("diagnosed", |code: &str| -> bool {
        let v = with_ctx(|c| c.facts.diagnosed(code, c.now), false);
        log(format!("diagnosed({code:?}) = {v}"));
        v
    });
    e.register_fn("length_of_stay", || -> f64 {
        let v = with_ctx(
            |c| c.facts.length_of_stay(c.now, &c.tz).unwrap_or(f64::NAN),
            f64::NAN,
        );
        log(format!("length_of_stay() = {v}"));
        v
    });
    e.register_fn("event_count", |ev: &str| -> i64 {
        let v = with_ctx(|c| c.facts.event_count(ev, c.now) as i64, 0);
        log(format!("event_count({ev:?}) = {v}"));
        v
    });
    e.register_fn("latest", |kind: &str| -> f64 {
        let v = with_ctx(
            |c| c.facts.latest_observation(kind, c.now).unwrap_or(f64::NAN),
            f64::NAN,
        );
        log(format!("latest({kind:?}) = {v}"));
        v
    });
    e.register_fn("mean", |kind: &str, w: &str| -> f64 {
        let v = aggregate(kind, w, |v| {
            if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        });
        log(format!("mean({kind:?}, {w:?}) = {v:.2}"));
        v
    });
    e.register_fn("min", |kind: &str, w: &str| -> f64 {
        let v = aggregate(kind, w, |v| {
            v.iter().copied().reduce(f64::min).unwrap_or(f64::NAN)
        });
        log(format!("min({kind:?}, {w:?}) = {v}"));
        v
    });
    e.register_fn("max", |kind: &str, w: &str| -> f64 {
        let v = aggregate(kind, w, |v| {
            v.iter().copied().reduce(f64::max).unwrap_or(f64::NAN)
        });
        log(format!("max({kind:?}, {w:?}) = {v}"));
        v
    });
    e.register_fn("count", |kind: &str, w: &str| -> i64 {
        let v = aggregate(kind, w, |v| v.len() as f64) as i64;
        log(format!("count({kind:?}, {w:?}) = {v}"));
        v
    });
    e.register_fn("score", |scale: &str| -> f64 {
        let v = with_ctx(
            |c| {
                c.facts
                    .latest_scale(scale, c.now)
                    .map(|s| s.score)
                    .unwrap_or(f64::NAN)
            },
            f64::NAN,
        );
        log(format!("score({scale:?}) = {v}"));
        v
    });
    e.register_fn("band", |scale: &str| -> ImmutableString {
        let v = with_ctx(
            |c| {
                c.facts
                    .latest_scale(scale, c.now)
                    .map(|s| s.band.clone())
                    .unwrap_or_default()
            },
            String::new(),
        );
        log(format!("band({scale:?}) = {v:?}"));
        v.into()
    });
    e.register_fn("item", |scale: &str, n: i64| -> i64 {
        let v = with_ctx(
            |c| {
                c.facts
                    .latest_scale(scale, c.now)
                    .and_then(|s| {
                        usize::try_from(n - 1)
                            .ok()
                            .and_then(|i| s.items.get(i).copied())
                    })
                    .unwrap_or(0)
            },
            0,
        );
        log(format!("item({scale:?}, {n}) = {v}"));
        v
    });
    e.register_fn("risk", |model: &str| -> f64 {
        let v = with_ctx(
            |c| {
                c.facts
                    .latest_risk(model, c.now)
                    .map(|r| r.score)
                    .unwrap_or(f64::NAN)
            },
            f64::NAN,
        );
        log(format!("risk({model:?}) = {v}"));
        v
    });
    e.register_fn("risk_band", |model: &str| -> ImmutableString {
        let v = with_ctx(
            |c| {
                c.facts
                    .latest_risk(model, c.now)
                    .map(|r| r.band.clone())
                    .unwrap_or_default()
            },
            String::new(),
        );
        log(format!("risk_band({model:?}) = {v:?}"));
        v.into()
    });
    e.register_fn("open_tasks", || -> i64 {
        let v = with_ctx(|c| c.facts.open_tasks, 0);
        log(format!("open_tasks() = {v}"));
        v
    });
    e.register_fn("overdue_tasks", || -> i64 {
        let v = with_ctx(|c| c.facts.overdue_tasks, 0);
        log(format!("overdue_tasks() = {v}"));
        v
    });
    e.register_fn("outcome", |task: &str| -> ImmutableString {
        let v = with_ctx(
            |c| {
                c.facts
                    .outcomes
                    .iter()
                    .rev()
                    .find(|(t, _)| t == task)
                    .map(|(_, o)| o.clone())
                    .unwrap_or_default()
            },
            String::new(),
        );
        log(format!("outcome({task:?}) = {v:?}"));
        v.into()
    });
    e.register_fn("goal_met", |goal: &str| -> bool {
        let v = with_ctx(
            // As of the instant being stepped, from the facts as of then, like every other guard
            // function: a status stored by a later pass must not decide an earlier instant. Only
            // a goal the pathway version does not hold falls back to its stored status.
            |c| match c.goals.iter().find(|g| g.spec.id == goal) {
                Some(g) => goal_holds(g, c),
                None => c.facts.goals_met.iter().any(|g| g == goal),
            },
            false,
        );
        log(format!("goal_met({goal:?}) = {v}"));
        v
    });
    e.register_fn("is_nan", |x: f64| x.is_nan());
    e.register_fn("to_float", |x: i64| x as f64);
    e.register_fn("to_float", |x: f64| x);
}

/// The sandboxed engine shared by every pathway.
pub fn engine() -> Engine {
    let mut e = Engine::new_raw();
    e.register_global_module(ArithmeticPackage::new().as_shared_module());
    e.register_global_module(LogicPackage::new().as_shared_module());
    e.register_global_module(BasicMathPackage::new().as_shared_module());
    e.set_optimization_level(OptimizationLevel::Simple);
    carepath_dsl::condition::register_real_comparisons(&mut e);
    e.set_strict_variables(true);
    e.set_max_operations(50_000);
    e.set_max_call_levels(8);
    e.set_max_expr_depths(32, 16);
    e.set_max_string_size(4_096);
    e.set_max_array_size(1_024);
    e.set_max_map_size(1_024);
    e.set_max_variables(256);
    e.set_max_functions(0);
    e.disable_symbol("eval");
    e.on_print(|_| {});
    e.on_debug(|_, _, _| {});
    register_facts(&mut e);
    e
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("expression `{expr}` failed: {message}")]
pub struct EvalError {
    pub expr: String,
    pub message: String,
}

/// A pathway version's expressions, compiled once.
pub struct CompiledExprs {
    engine: Arc<Engine>,
    asts: HashMap<String, AST>,
    vars: Vec<(String, VarType)>,
    /// Every care-plan goal of the pathway (top-level ones and those set by actions).
    goals: Arc<[CompiledGoal]>,
}

impl CompiledExprs {
    /// Compiles every expression the pathway holds. The pathway was validated, so a failure here
    /// is reported as an error naming the expression.
    pub fn compile(engine: Arc<Engine>, p: &Pathway) -> Result<Self, EvalError> {
        let vars: Vec<(String, VarType)> =
            p.variables.iter().map(|v| (v.name.clone(), v.ty)).collect();
        let mut scope = Scope::new();
        for (name, _) in &vars {
            scope.push_dynamic(name.clone(), Dynamic::UNIT);
        }
        let mut asts = HashMap::new();
        for expr in expressions(p) {
            if asts.contains_key(&expr.0) {
                continue;
            }
            let ast = engine
                .compile_expression_with_scope(&scope, &expr.0)
                .map_err(|e| EvalError {
                    expr: expr.0.clone(),
                    message: e.to_string(),
                })?;
            asts.insert(expr.0.clone(), ast);
        }
        let goals = p
            .goals
            .iter()
            .chain(p.actions().filter_map(|(_, a)| match a {
                carepath_dsl::Action::Goal(g) => Some(g),
                _ => None,
            }))
            .map(|g| CompiledGoal::compile(g.clone()))
            .collect::<Result<_, _>>()?;
        Ok(CompiledExprs {
            engine,
            asts,
            vars,
            goals,
        })
    }

    /// The pathway's care-plan goals, compiled.
    pub fn goals(&self) -> Arc<[CompiledGoal]> {
        self.goals.clone()
    }

    fn scope(&self, vars: &BTreeMap<String, VarValue>) -> Scope<'static> {
        let mut scope = Scope::new();
        for (name, ty) in &self.vars {
            let v = match vars.get(name) {
                Some(VarValue::Bool(b)) => Dynamic::from_bool(*b),
                Some(VarValue::Integer(i)) => Dynamic::from_int(*i),
                Some(VarValue::Number(f)) => Dynamic::from_float(*f),
                Some(VarValue::Text(s)) => Dynamic::from(s.clone()),
                // A variable the enrolment has no value for reads as its type's empty value.
                None => match ty {
                    VarType::Bool => Dynamic::from_bool(false),
                    VarType::Integer => Dynamic::from_int(0),
                    VarType::Number => Dynamic::from_float(f64::NAN),
                    VarType::Text => Dynamic::from(String::new()),
                },
            };
            scope.push_dynamic(name.clone(), v);
        }
        scope
    }

    /// Evaluates `expr`; returns the value and the fact calls it made.
    pub fn eval(
        &self,
        expr: &Expr,
        vars: &BTreeMap<String, VarValue>,
    ) -> Result<(Dynamic, Vec<String>), EvalError> {
        let err = |message: String| EvalError {
            expr: expr.0.clone(),
            message,
        };
        let ast = self
            .asts
            .get(&expr.0)
            .ok_or_else(|| err("expression was not compiled".into()))?;
        CALLS.with(|c| c.borrow_mut().clear());
        let mut scope = self.scope(vars);
        let value = self
            .engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, ast)
            .map_err(|e| err(e.to_string()))?;
        let calls = CALLS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        Ok((value, calls))
    }

    pub fn eval_bool(
        &self,
        expr: &Expr,
        vars: &BTreeMap<String, VarValue>,
    ) -> Result<(bool, Vec<String>), EvalError> {
        let (v, calls) = self.eval(expr, vars)?;
        match v.as_bool() {
            Ok(b) => Ok((b, calls)),
            Err(t) => Err(EvalError {
                expr: expr.0.clone(),
                message: format!("a guard must be true or false, but gave a {t}"),
            }),
        }
    }

    pub fn eval_number(
        &self,
        expr: &Expr,
        vars: &BTreeMap<String, VarValue>,
    ) -> Result<(f64, Vec<String>), EvalError> {
        let (v, calls) = self.eval(expr, vars)?;
        to_number(&v).map(|n| (n, calls)).ok_or_else(|| EvalError {
            expr: expr.0.clone(),
            message: format!("expected a number, got a {}", v.type_name()),
        })
    }

    /// Evaluates a value for a variable of type `ty`.
    pub fn eval_var(
        &self,
        expr: &Expr,
        ty: VarType,
        vars: &BTreeMap<String, VarValue>,
    ) -> Result<VarValue, EvalError> {
        let (v, _) = self.eval(expr, vars)?;
        let bad = || EvalError {
            expr: expr.0.clone(),
            message: format!(
                "gave a {}, which does not fit a {ty:?} variable",
                v.type_name()
            ),
        };
        Ok(match ty {
            VarType::Bool => VarValue::Bool(v.as_bool().map_err(|_| bad())?),
            VarType::Integer => VarValue::Integer(
                to_number(&v)
                    .filter(|n| n.is_finite())
                    .ok_or_else(bad)?
                    .round() as i64,
            ),
            VarType::Number => VarValue::Number(to_number(&v).ok_or_else(bad)?),
            VarType::Text => VarValue::Text(v.to_string()),
        })
    }
}

fn to_number(v: &Dynamic) -> Option<f64> {
    v.as_float()
        .ok()
        .or_else(|| v.as_int().ok().map(|i| i as f64))
}

/// Moves the context's state-entry time, when the step enters a new state.
pub fn set_entered_at(at: Timestamp) {
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.entered_at = at;
        }
    });
}

/// Tells guards how many occurrences of each schedule of the current state have come.
pub fn set_occurrences(counts: std::collections::BTreeMap<String, u32>) {
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.occurrences = counts;
        }
    });
}

/// Moves the context's clock to the instant being evaluated: guards read the facts as of it.
pub fn set_now(at: Timestamp) {
    CONTEXT.with(|c| {
        if let Some(ctx) = c.borrow_mut().as_mut() {
            ctx.now = at;
        }
    });
}

/// Reads the installed facts (`None` outside a step).
pub fn with_facts<T>(f: impl FnOnce(&PatientFacts) -> T) -> Option<T> {
    CONTEXT.with(|c| c.borrow().as_ref().map(|ctx| f(&ctx.facts)))
}

/// Runs `f` with `ctx` installed for the fact functions; the context is removed afterwards.
pub fn with_context<T>(ctx: EvalContext, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CONTEXT.with(|c| c.borrow_mut().take());
        }
    }
    CONTEXT.with(|c| *c.borrow_mut() = Some(ctx));
    let _reset = Reset;
    f()
}

/// Every expression in a pathway, for compiling once.
pub fn expressions(p: &Pathway) -> Vec<&Expr> {
    use carepath_dsl::Action;
    let mut out = Vec::new();
    for s in &p.states {
        for t in &s.transitions {
            out.extend(t.guard.iter());
        }
    }
    for (_, a) in p.actions() {
        match a {
            Action::Set(assignments) => out.extend(assignments.iter().map(|(_, e)| e)),
            Action::Risk(r) => match &r.model {
                RiskModel::Formula(e) => out.push(e),
                RiskModel::Logistic { terms, .. } => out.extend(terms.iter().map(|t| &t.expr)),
                RiskModel::Lace => {}
            },
            // A goal's reading condition is a reading condition, compiled with the goals.
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pathway_with(guard: &str) -> Pathway {
        let src = format!(
            "pathway: t\nversion: 1\ntitle: t\nowner_role: case_manager\nroles: [case_manager]\nvariables: {{ x: {{ type: number, default: 1 }} }}\nentry_points: [{{ id: e, state: a }}]\nstates:\n  - id: a\n    phase: follow_up\n    transitions: [{{ when: '{guard}', to: b }}]\n  - {{ id: b, phase: closed, terminal: true }}\n"
        );
        carepath_dsl::compile_yaml(
            "t.yaml",
            src.as_bytes(),
            std::path::Path::new("."),
            &carepath_dsl::FsLoader,
        )
        .pathway
        .unwrap()
    }

    fn ctx() -> EvalContext {
        let now: Timestamp = "2026-01-10T00:00:00Z".parse().unwrap();
        let mut facts = PatientFacts::default();
        facts.observations.push(crate::facts::Observation {
            kind: "bp_systolic".into(),
            value: 150.0,
            at: now,
        });
        EvalContext {
            facts,
            goals: Arc::from([]),
            now,
            entered_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            enrolled_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            occurrences: Default::default(),
            tz: TimeZone::UTC,
        }
    }

    #[test]
    fn guards_read_facts_and_log_values() {
        let p = pathway_with("latest(\"bp_systolic\") >= 140 && days_in_state() > 7 && x == 1");
        let c = CompiledExprs::compile(Arc::new(engine()), &p).unwrap();
        let guard = p.states[0].transitions[0].guard.clone().unwrap();
        let vars = BTreeMap::from([("x".to_string(), VarValue::Number(1.0))]);
        let (held, calls) = with_context(ctx(), || c.eval_bool(&guard, &vars)).unwrap();
        assert!(held);
        assert!(
            calls
                .iter()
                .any(|c| c.contains("latest(\"bp_systolic\") = 150")),
            "{calls:?}"
        );
    }

    #[test]
    fn goal_met_reads_the_facts_as_of_the_instant_not_a_stored_status() {
        let src = "pathway: t\nversion: 1\ntitle: t\nowner_role: case_manager\nroles: [case_manager]\nentry_points: [{ id: e, state: a }]\nstates:\n  - id: a\n    phase: follow_up\n    on_enter:\n      - goal: { id: bp, title: t, observation: bp_systolic, reading: \"value < 140\", at_least: 0.8, over: 28d }\n    transitions: [{ when: 'goal_met(\"bp\")', to: b }]\n  - { id: b, phase: closed, terminal: true }\n";
        let p = carepath_dsl::compile_yaml(
            "t.yaml",
            src.as_bytes(),
            std::path::Path::new("."),
            &carepath_dsl::FsLoader,
        )
        .pathway
        .expect("compiles");
        let c = CompiledExprs::compile(Arc::new(engine()), &p).unwrap();
        let guard = p.states[0].transitions[0].guard.clone().unwrap();
        let eval = |context: EvalContext| {
            with_context(context, || c.eval_bool(&guard, &BTreeMap::new()))
                .unwrap()
                .0
        };
        // The only reading, 150, is off target as of now; a status stored by a later pass says
        // the goal is met. The instant's own facts decide.
        let mut context = ctx();
        context.goals = c.goals();
        context.facts.goals_met.push("bp".into());
        assert!(!eval(context));
        // On target as of now: met, whatever was stored.
        let mut context = ctx();
        context.goals = c.goals();
        context.facts.observations[0].value = 120.0;
        assert!(eval(context));
    }

    #[test]
    fn missing_values_compare_false() {
        let p = pathway_with("score(\"epds\") >= 13 || score(\"epds\") < 13");
        let c = CompiledExprs::compile(Arc::new(engine()), &p).unwrap();
        let guard = p.states[0].transitions[0].guard.clone().unwrap();
        let (held, _) = with_context(ctx(), || c.eval_bool(&guard, &BTreeMap::new())).unwrap();
        assert!(!held);
    }

    #[test]
    fn runaway_expressions_are_stopped() {
        let e = engine();
        for src in ["(0..100000000).reduce(|a, b| a + b)", "\"x\" * 100000"] {
            let start = std::time::Instant::now();
            let r = e.eval_expression::<Dynamic>(src);
            assert!(r.is_err(), "{src} should fail");
            assert!(start.elapsed().as_secs() < 2);
        }
    }

    #[test]
    fn time_since_an_anchor_or_an_event() {
        let context = || {
            let mut context = ctx();
            context.enrolled_at = "2025-12-22T00:00:00Z".parse().unwrap();
            context.facts.events.push(crate::facts::FactEvent {
                name: "discharged".into(),
                at: "2026-01-07T12:00:00Z".parse().unwrap(),
            });
            context
        };
        let eval = |context: EvalContext, guard: &str| {
            let p = pathway_with(guard);
            let c = CompiledExprs::compile(Arc::new(engine()), &p).unwrap();
            let guard = p.states[0].transitions[0].guard.clone().unwrap();
            with_context(context, || c.eval_bool(&guard, &BTreeMap::new()))
                .unwrap()
                .0
        };
        // Enrolled 19 days ago, in the state for 9 days, discharged 2.5 days ago.
        for guard in [
            "days_since(\"enrolment\") == 19",
            "days_since_enrolment() == 19",
            "days_since(\"state\") == 9",
            "days_in_state() == 9",
            "hours_since(\"state\") == 216",
            "days_since_event(\"discharged\") == 2.5",
            "days_since(\"discharged\") == 2.5",
        ] {
            assert!(eval(context(), guard), "{guard}");
        }
        // An event that never happened is NaN.
        assert!(eval(context(), "days_since_event(\"died\").is_nan()"));
        assert!(!eval(context(), "days_since_event(\"died\") < 1000.0"));
        // Every comparison with a missing number is false, with zero too (Rhai's own
        // comparisons find `NaN >= 0.0` and `NaN == 0` true), and `!=` as well.
        for guard in [
            "days_since_event(\"died\") >= 0.0",
            "days_since_event(\"died\") >= 0",
            "days_since_event(\"died\") <= 0",
            "days_since_event(\"died\") == 0",
            "0 == days_since_event(\"died\")",
            "days_since_event(\"died\") != 3",
            "latest(\"weight\") - 70 > -1000",
        ] {
            assert!(!eval(context(), guard), "{guard}");
        }
        // Reals are compared exactly, as in reading conditions.
        assert!(eval(context(), "0.1 + 0.2 > 0.3"));
        assert!(eval(context(), "days_since_event(\"discharged\") != 2"));
        assert!(eval(context(), "3 > 2 && 2.5 >= 2 && 2 < 2.5"));
    }

    mod goal_windows {
        use super::super::*;
        use carepath_dsl::{GoalMeasure, Text};
        use proptest::prelude::*;

        const D: i64 = 86_400;

        fn goal(share: bool, over_days: u32) -> CompiledGoal {
            let measure = if share {
                GoalMeasure::ShareOfReadings {
                    reading: Expr("value < 140".into()),
                    at_least: 0.6,
                    over: Duration::days(over_days),
                }
            } else {
                GoalMeasure::DaysLogged {
                    days: 3,
                    over: Duration::days(over_days),
                }
            };
            CompiledGoal::compile(Goal {
                id: "g".into(),
                title: Text {
                    zh: "g".into(),
                    en: "g".into(),
                },
                observation: "bp_systolic".into(),
                measure,
            })
            .expect("a valid goal")
        }

        fn measure(g: &CompiledGoal, facts: &PatientFacts, t: i64, tz: &TimeZone) -> GoalReading {
            let t = Timestamp::from_second(t).unwrap();
            measure_goal(&g.spec, g.reading.as_ref(), facts, t, tz)
        }

        proptest! {
            /// Between an evaluation and the change instant it names, the goal answers the same at
            /// every instant; at the change instant a reading has entered or left its window.
            #[test]
            fn a_goal_answers_the_same_until_its_next_change(
                share in proptest::bool::ANY,
                over_days in 1u32..40,
                readings in proptest::collection::vec(
                    (-60 * D..5 * D, 100.0f64..180.0, proptest::bool::ANY), 0..25),
                probes in proptest::collection::vec(0i64..90 * D, 1..20),
                tz in prop_oneof![Just("UTC"), Just("Asia/Shanghai"), Just("America/New_York")],
            ) {
                let now = 1_780_000_000i64;
                let tz = TimeZone::get(tz).unwrap();
                let g = goal(share, over_days);
                let mut facts = PatientFacts::default();
                for (at, value, other_kind) in &readings {
                    facts.observations.push(crate::facts::Observation {
                        kind: if *other_kind { "weight".into() } else { "bp_systolic".into() },
                        value: *value,
                        at: Timestamp::from_second(now + at).unwrap(),
                    });
                }
                let first = measure(&g, &facts, now, &tz);
                let next = goal_next_change(&g.spec, &facts, Timestamp::from_second(now).unwrap())
                    .map(|t| t.as_second());
                for p in &probes {
                    let t = now + p;
                    if next.is_some_and(|n| t >= n) {
                        continue;
                    }
                    prop_assert_eq!(&measure(&g, &facts, t, &tz), &first, "at now + {}s (next change {:?})", p, next);
                }
                if let Some(n) = next {
                    prop_assert!(n > now);
                    let over = i64::from(over_days) * D;
                    let inside = |t: i64| -> Vec<i64> {
                        facts.observations.iter()
                            .filter(|o| o.kind == "bp_systolic" && o.at.as_second() <= t && t < o.at.as_second() + over)
                            .map(|o| o.at.as_second())
                            .collect()
                    };
                    prop_assert_ne!(inside(n), inside(n - 1), "nothing entered or left the window at {}", n);
                }
            }
        }
    }
}
