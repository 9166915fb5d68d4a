//! The simulation: a synthetic cohort through the real pure step in virtual time, with staff
//! working their task queues.
//!
//! Time moves in ticks: one from midnight to the start of the working day, one per working hour,
//! one from the end of the working day to midnight. At the start of each working tick every
//! (institution, role) queue completes its share of the day's capacity, most urgent first; then
//! every patient with something to do lives up to the end of the tick — device readings, life
//! events, answers, completed tasks — and is stepped whenever something reaches the pathway.
//! Patients are split into contiguous chunks, one thread each; the queues' order is total (priority,
//! due time, creation, patient, task), so which task is done when never depends on the chunking.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use carepath_dsl::condition::Condition as Cond;
use carepath_dsl::expr;
use carepath_dsl::{
    Action, AlarmScope, Channel, Direction, GoalMeasure, InstitutionKind, Phase, Trigger, VarType,
    VarValue, catalog,
};
use carepath_engine::facts::{
    FactEvent, Observation, PatientFacts, PendingEvent, RiskResult, ScaleResult,
};
use carepath_engine::step::{self, Enrolment, Outcome, Produced, Program, Status};
use jiff::Timestamp;
use serde_json::Value;

use crate::cohort::{
    self, CohortSpec, Comorbidity, Dist, Draw, ObsModel, Profile, ScaleModel, SplitMix, Unit,
};
use crate::scenario::Scenario;

pub const DAY: i64 = 86_400;
const YEAR: f64 = 365.25 * 86_400.0;
const NO_REF: u16 = u16::MAX;

/// Built-in default capacity: tasks per day per 1000 patients of an institution, for every role.
pub const DEFAULT_PER_1000: f64 = 60.0;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn kind_index(kind: &str) -> Option<usize> {
    catalog::OBSERVATIONS.iter().position(|(k, _)| *k == kind)
}

fn scale_index(scale: &str) -> Option<usize> {
    catalog::SCALES.iter().position(|s| *s == scale)
}

const CHANNELS: [Channel; 4] = [
    Channel::Wechat,
    Channel::Sms,
    Channel::Phone,
    Channel::Email,
];

fn channel_index(c: Channel) -> usize {
    CHANNELS.iter().position(|x| *x == c).unwrap_or(1)
}

// ---- what the simulator reads from a pathway ---------------------------------------------------

#[derive(Debug, Clone)]
enum Anchor {
    /// At enrolment, at any entry point or at one.
    Enrolled(Option<usize>),
    /// After another event (by index into `PathwayInfo::events`).
    Event(u16),
    /// On entering a state that listens for the event.
    State,
    /// A constant hazard from enrolment, per second.
    Hazard(f64),
}

#[derive(Debug, Clone)]
struct Rule {
    event: u16,
    anchor: Anchor,
    probability: f64,
    delay: Dist,
}

#[derive(Debug, Clone)]
struct TaskModel {
    ref_ix: u16,
    role: u16,
    due: i64,
    prio: u8,
    escalate_after: Option<i64>,
}

#[derive(Debug, Clone)]
struct AlarmModel {
    id: String,
    cond: Option<Cond>,
    /// Observation kinds the rule reads, as a bit set: other readings do not touch it.
    kinds: u32,
    count: usize,
    within: i64,
    task: TaskModel,
}

#[derive(Debug, Clone)]
pub struct GoalModel {
    pub id: String,
    kind: usize,
    /// Share-of-readings goals: the reading rule and the share.
    share: Option<(Option<Cond>, f64)>,
    /// Days-logged goals: the number of days.
    days: Option<u32>,
    over: i64,
}

#[derive(Debug, Clone)]
pub struct IndicatorModel {
    pub id: String,
    pub title: String,
    pub numerator: String,
    pub denominator: String,
    pub target: Option<f64>,
    /// The goal counted by a `goal_met:<goal>` numerator, if the simulator can compute it.
    pub goal: Option<usize>,
}

/// Everything the simulator derives from one pathway.
pub struct PathwayInfo {
    pub id: String,
    pub states: Vec<String>,
    pub terminal: Vec<bool>,
    state_ix: HashMap<String, u16>,
    /// Index of the pathway's first state in the run's flat list of states.
    pub state_off: usize,
    /// Index of each state's first transition in the run's flat list of transitions.
    pub t_off: Vec<usize>,
    pub n_transitions: usize,
    /// Life events the patients of this pathway can have, by index.
    pub events: Vec<String>,
    /// Every event a transition of the pathway listens for.
    pub listened: BTreeSet<String>,
    guard_events: BTreeSet<String>,
    guard_scales: BTreeSet<usize>,
    /// Risk models and task outcomes that guards read: only these are kept in the facts, which
    /// the step copies every time.
    guard_risks: BTreeSet<String>,
    outcome_read: Vec<bool>,
    /// Per observation kind: how far back guards read it (`Some(0)`: only the latest reading).
    guard_obs: Vec<Option<i64>>,
    goal_obs: Vec<Option<i64>>,
    /// Readings taken together (blood pressure is one reading of two values).
    groups: Vec<Vec<usize>>,
    uses_goal_met: bool,
    pub goals: Vec<GoalModel>,
    pub indicators: Vec<IndicatorModel>,
    alarms: Vec<AlarmModel>,
    pub task_ids: Vec<String>,
    task_calls: Vec<bool>,
    outcomes: Vec<(Vec<String>, Vec<f64>)>,
    /// Per task id: probability staff never do it, and the delay before it can be done.
    task_behaviour: Vec<(f64, Option<Dist>)>,
    missed_default: f64,
    entry_weights: Vec<f64>,
    entry_admitted: Vec<bool>,
    rules: Vec<Rule>,
    state_listens: Vec<Vec<u16>>,
    age: Dist,
    female: f64,
    /// Per observation kind: a shift of the default baseline for this pathway's population.
    obs_shift: Vec<f64>,
    variables: Vec<(String, VarType, Dist)>,
    charlson_default: Option<i64>,
    /// The pathway listens for `discharged`, so a length of stay means something.
    pub tracks_stay: bool,
}

impl PathwayInfo {
    fn state(&self, id: &str) -> usize {
        self.state_ix.get(id).map_or(0, |i| usize::from(*i))
    }

    fn event_ix(&self, name: &str) -> Option<u16> {
        self.events.iter().position(|e| e == name).map(|i| i as u16)
    }
}

fn seconds_of(d: carepath_dsl::Duration) -> i64 {
    d.nominal_seconds()
}

fn dist(v: &Value, unit: Unit, what: &str) -> Result<Dist, String> {
    Dist::from_json(v, unit, what)
}

fn default_rules(event: &str) -> Vec<(Option<&'static str>, f64, Dist)> {
    let d = |a: f64, b: f64| Dist::Uniform(a * 86_400.0, b * 86_400.0);
    match event {
        // Relative to enrolment at an entry point that is not already an admission.
        "admitted" => vec![(Some("enrolled"), 0.93, d(2.0, 21.0))],
        "discharged" => vec![
            (
                Some("admitted"),
                1.0,
                Dist::Normal {
                    mean: 6.0 * 86_400.0,
                    sd: 2.0 * 86_400.0,
                    min: 86_400.0,
                    max: 30.0 * 86_400.0,
                },
            ),
            (
                Some("readmitted"),
                1.0,
                Dist::Normal {
                    mean: 5.0 * 86_400.0,
                    sd: 2.0 * 86_400.0,
                    min: 86_400.0,
                    max: 30.0 * 86_400.0,
                },
            ),
            (Some("delivered"), 1.0, d(1.0, 4.0)),
        ],
        "readmitted" => vec![(Some("discharged"), 0.08, d(3.0, 30.0))],
        "delivered" => vec![(Some("enrolled"), 0.97, d(14.0, 210.0))],
        "died" => vec![(None, 0.03, Dist::Fixed(0.0))],
        _ => vec![(
            Some("state"),
            0.2,
            Dist::Uniform(6.0 * 3_600.0, 5.0 * 86_400.0),
        )],
    }
}

fn is_life_event(name: &str) -> bool {
    !(name.starts_with("task_done:")
        || name.starts_with("scale_answered:")
        || name.starts_with("alarm:")
        || name.starts_with("referral_"))
}

fn default_outcomes(call: bool, found: &BTreeSet<String>) -> (Vec<String>, Vec<f64>) {
    let primary = if call { "reached" } else { "done" };
    let others: Vec<&String> = found.iter().filter(|v| *v != primary).collect();
    let each = 0.05;
    let mut names = vec![primary.to_string()];
    let mut weights = vec![(1.0 - each * others.len() as f64).max(0.4)];
    for o in others {
        names.push(o.clone());
        weights.push(each);
    }
    (names, weights)
}

fn analyse(
    prog: &Program,
    sc: &Scenario,
    roles: &[String],
    state_off: usize,
    t_base: usize,
    warnings: &mut Vec<String>,
) -> Result<PathwayInfo, String> {
    let p = &prog.pathway;
    let exprs: Vec<&str> = carepath_engine::sandbox::expressions(p)
        .into_iter()
        .map(|e| e.0.as_str())
        .collect();
    let mut guard_events = BTreeSet::new();
    let mut guard_scales = BTreeSet::new();
    let mut guard_obs: Vec<Option<i64>> = vec![None; catalog::OBSERVATIONS.len()];
    let mut found_outcomes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut guard_risks = BTreeSet::new();
    let mut guard_outcomes = BTreeSet::new();
    let mut uses_goal_met = false;
    for e in &exprs {
        for f in ["days_since", "hours_since", "event_count"] {
            for args in expr::calls(e, f) {
                if let Some(ev) = args.first() {
                    guard_events.insert(ev.clone());
                }
            }
        }
        for f in ["score", "band", "item"] {
            for args in expr::calls(e, f) {
                if let Some(s) = args.first().and_then(|s| scale_index(s)) {
                    guard_scales.insert(s);
                }
            }
        }
        for f in ["latest", "mean", "min", "max", "count"] {
            for args in expr::calls(e, f) {
                let Some(k) = args.first().and_then(|k| kind_index(k)) else {
                    continue;
                };
                let window = args
                    .get(1)
                    .and_then(|w| cohort::parse_seconds(w).ok())
                    .map_or(0, |s| s as i64);
                let slot = &mut guard_obs[k];
                *slot = Some(slot.unwrap_or(0).max(window));
            }
        }
        uses_goal_met |= e.contains("goal_met(");
        for f in ["risk", "risk_band"] {
            for args in expr::calls(e, f) {
                guard_risks.extend(args.first().cloned());
            }
        }
        for args in expr::calls(e, "outcome") {
            guard_outcomes.extend(args.first().cloned());
        }
        for (task, value) in expr::outcome_values(e) {
            found_outcomes.entry(task).or_default().insert(value);
        }
    }

    // States, transitions and the events they listen for.
    let mut state_ix = HashMap::new();
    let mut t_off = Vec::new();
    let mut n_transitions = 0;
    let mut listened = BTreeSet::new();
    for (i, s) in p.states.iter().enumerate() {
        state_ix.insert(s.id.clone(), i as u16);
        t_off.push(t_base + n_transitions);
        n_transitions += s.transitions.len();
        for t in &s.transitions {
            if let Trigger::Event(name) = &t.trigger {
                listened.insert(name.clone());
            }
        }
    }

    // Tasks, alarms and goals.
    let role_ix = |r: &str| roles.iter().position(|x| x == r).unwrap_or(0) as u16;
    let mut task_ids: Vec<String> = Vec::new();
    let add_task_id = |id: &Option<String>, task_ids: &mut Vec<String>| -> u16 {
        match id {
            Some(id) => match task_ids.iter().position(|t| t == id) {
                Some(i) => i as u16,
                None => {
                    task_ids.push(id.clone());
                    (task_ids.len() - 1) as u16
                }
            },
            None => NO_REF,
        }
    };
    let mut alarms = Vec::new();
    let mut goals_src: Vec<carepath_dsl::Goal> = p.goals.clone();
    for (_, a) in p.actions() {
        match a {
            Action::Task(t) => {
                add_task_id(&t.id, &mut task_ids);
            }
            Action::Alarm(a) => {
                let cond = match Cond::alarm(&a.when.0) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warnings.push(format!(
                            "{}: alarm `{}`: condition `{}` is outside what the simulator evaluates ({e}); it never fires",
                            p.id, a.id, a.when.0
                        ));
                        None
                    }
                };
                let ref_ix = add_task_id(&a.task.id, &mut task_ids);
                let kinds = cond
                    .as_ref()
                    .map_or(0, |c| c.slots().iter().fold(0u32, |m, k| m | (1 << k)));
                alarms.push(AlarmModel {
                    id: a.id.clone(),
                    cond,
                    kinds,
                    count: a.count.max(1) as usize,
                    within: seconds_of(a.within),
                    task: TaskModel {
                        ref_ix,
                        role: role_ix(&a.task.role),
                        due: seconds_of(a.task.due),
                        prio: 3 - a.task.priority as u8,
                        escalate_after: a
                            .task
                            .sla
                            .as_ref()
                            .and_then(|s| s.escalate_after)
                            .map(seconds_of),
                    },
                });
            }
            Action::Goal(g) if !goals_src.iter().any(|x| x.id == g.id) => {
                goals_src.push(g.clone());
            }
            _ => {}
        }
    }
    let mut goal_obs: Vec<Option<i64>> = vec![None; catalog::OBSERVATIONS.len()];
    let mut goals = Vec::new();
    for g in &goals_src {
        let Some(kind) = kind_index(&g.observation) else {
            continue;
        };
        let (share, days, over) = match &g.measure {
            GoalMeasure::ShareOfReadings {
                reading,
                at_least,
                over,
            } => {
                let cond = Cond::goal_reading(&reading.0);
                if let Err(e) = &cond {
                    warnings.push(format!(
                        "{}: goal `{}`: reading rule `{}` is outside what the simulator evaluates ({e}); the goal is never met",
                        p.id, g.id, reading.0
                    ));
                }
                (Some((cond.ok(), *at_least)), None, seconds_of(*over))
            }
            GoalMeasure::DaysLogged { days, over } => (None, Some(*days), seconds_of(*over)),
        };
        let w = &mut goal_obs[kind];
        *w = Some(w.unwrap_or(0).max(over));
        goals.push(GoalModel {
            id: g.id.clone(),
            kind,
            share,
            days,
            over,
        });
    }
    let indicators = p
        .indicators
        .iter()
        .map(|i| IndicatorModel {
            id: i.id.clone(),
            title: i.title.en.clone(),
            numerator: i.numerator.clone(),
            denominator: i.denominator.clone(),
            target: i.target,
            goal: i
                .numerator
                .strip_prefix("goal_met:")
                .and_then(|g| goals.iter().position(|x: &GoalModel| x.id == g)),
        })
        .collect();

    // Device readings: what guards, goals and alarms read, and what the scenario asks for.
    let mut needed: BTreeSet<usize> = BTreeSet::new();
    for (k, w) in guard_obs.iter().enumerate() {
        if w.is_some() || goal_obs[k].is_some() {
            needed.insert(k);
        }
    }
    for a in &alarms {
        needed.extend(a.cond.iter().flat_map(|c| c.slots()));
    }
    for (k, o) in &sc.observations {
        if let Some(i) = kind_index(k) {
            if o.per_day.is_none_or(|d| d > 0.0) {
                needed.insert(i);
            } else {
                needed.remove(&i);
            }
        }
    }
    let (sys, dia) = (
        kind_index("bp_systolic").unwrap_or(0),
        kind_index("bp_diastolic").unwrap_or(1),
    );
    let mut groups = Vec::new();
    if needed.contains(&sys) || needed.contains(&dia) {
        groups.push(vec![sys, dia]);
    }
    for k in &needed {
        if *k != sys && *k != dia {
            groups.push(vec![*k]);
        }
    }

    // Task outcomes and which tasks are calls.
    let calls: Option<&Vec<String>> = sc.tasks.calls.as_ref();
    let task_calls: Vec<bool> = task_ids
        .iter()
        .map(|id| calls.map_or(id.ends_with("_call"), |c| c.contains(id)))
        .collect();
    let mut outcomes = Vec::new();
    for (i, id) in task_ids.iter().enumerate() {
        let over = sc.tasks.outcomes.get(id).or_else(|| {
            sc.tasks.outcomes.get(if task_calls[i] {
                "default_call"
            } else {
                "default"
            })
        });
        outcomes.push(match over {
            Some(m) => (m.keys().cloned().collect(), m.values().copied().collect()),
            None => default_outcomes(
                task_calls[i],
                found_outcomes.get(id).unwrap_or(&BTreeSet::new()),
            ),
        });
    }

    // Tasks staff miss, and tasks that wait for the patient.
    let missed_of = |id: Option<&str>| -> Result<f64, String> {
        match &sc.tasks.missed {
            None => Ok(0.0),
            Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(0.0)),
            Some(Value::Object(m)) => {
                let v = id.and_then(|id| m.get(id)).or_else(|| m.get("default"));
                match v {
                    None => Ok(0.0),
                    Some(x) => x
                        .as_f64()
                        .ok_or_else(|| format!("tasks.missed: {x} is not a probability")),
                }
            }
            Some(other) => Err(format!(
                "tasks.missed: write a probability or {{ <task id>: p, default: p }}, found {other}"
            )),
        }
    };
    let missed_default = missed_of(None)?;
    let outcome_read: Vec<bool> = task_ids
        .iter()
        .map(|id| guard_outcomes.contains(id))
        .collect();
    let mut task_behaviour = Vec::new();
    for id in &task_ids {
        let ready = match sc.tasks.ready_after.get(id) {
            Some(v) => Some(dist(v, Unit::Seconds, &format!("tasks.ready_after.{id}"))?),
            None => None,
        };
        task_behaviour.push((missed_of(Some(id))?, ready));
    }

    // Entry points.
    let entry_weights: Vec<f64> = if p
        .entry_points
        .iter()
        .any(|e| sc.patients.entry.contains_key(&e.id))
    {
        p.entry_points
            .iter()
            .map(|e| sc.patients.entry.get(&e.id).copied().unwrap_or(0.0))
            .collect()
    } else {
        vec![1.0; p.entry_points.len()]
    };
    let entry_admitted: Vec<bool> = p
        .entry_points
        .iter()
        .map(|e| {
            p.state(&e.state).is_some_and(|s| {
                matches!(
                    s.phase,
                    Phase::AdmissionAssessment | Phase::InHospital | Phase::DischargePreparation
                )
            })
        })
        .collect();

    // Life events: those the pathway listens for or its guards read.
    let mut events: Vec<String> = vec!["admitted".into()];
    for e in listened.iter().chain(guard_events.iter()) {
        if is_life_event(e) && !events.contains(e) {
            events.push(e.clone());
        }
    }
    let life: Vec<String> = events
        .iter()
        .filter(|e| listened.contains(*e) || guard_events.contains(*e))
        .cloned()
        .collect();
    let mut rules = Vec::new();
    for ev in &life {
        let own: Vec<&crate::scenario::EventRule> =
            sc.events.iter().filter(|r| &r.event == ev).collect();
        let specs: Vec<(Option<String>, f64, Dist, Option<f64>)> = if own.is_empty() {
            default_rules(ev)
                .into_iter()
                .map(|(a, prob, d)| {
                    if a.is_none() {
                        (None, 1.0, d, Some(prob))
                    } else {
                        (a.map(str::to_string), prob, d, None)
                    }
                })
                .collect()
        } else {
            let mut v = Vec::new();
            for r in own {
                let what = format!("events: {}", r.event);
                let delay = match &r.delay {
                    Some(d) => dist(d, Unit::Seconds, &what)?,
                    None => Dist::Fixed(0.0),
                };
                if r.rate_per_year.is_none() && r.after.is_none() {
                    return Err(format!(
                        "{what}: give `after` (enrolled, enrolled:<entry>, an event or state) or `rate_per_year`"
                    ));
                }
                v.push((
                    r.after.clone(),
                    r.probability.unwrap_or(1.0),
                    delay,
                    r.rate_per_year,
                ));
            }
            v
        };
        let event = events.iter().position(|e| e == ev).unwrap_or(0) as u16;
        for (after, probability, delay, rate) in specs {
            let anchors: Vec<Anchor> = match (rate, after.as_deref()) {
                (Some(r), _) if r > 0.0 => vec![Anchor::Hazard(r / YEAR)],
                (Some(_), _) => continue,
                (None, Some("enrolled")) if ev == "admitted" && own_default(sc, ev) => p
                    .entry_points
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !entry_admitted[*i])
                    .map(|(i, _)| Anchor::Enrolled(Some(i)))
                    .collect(),
                (None, Some("enrolled")) => vec![Anchor::Enrolled(None)],
                (None, Some("state")) => vec![Anchor::State],
                (None, Some(a)) if a.starts_with("enrolled:") => {
                    let entry = &a["enrolled:".len()..];
                    match p.entry_points.iter().position(|e| e.id == entry) {
                        Some(i) => vec![Anchor::Enrolled(Some(i))],
                        None => continue,
                    }
                }
                (None, Some(a)) => {
                    let ix = match events.iter().position(|e| e == a) {
                        Some(i) => i,
                        None => {
                            events.push(a.to_string());
                            events.len() - 1
                        }
                    };
                    vec![Anchor::Event(ix as u16)]
                }
                (None, None) => continue,
            };
            for anchor in anchors {
                rules.push(Rule {
                    event,
                    anchor,
                    probability,
                    delay: delay.clone(),
                });
            }
        }
    }
    let state_listens: Vec<Vec<u16>> = p
        .states
        .iter()
        .map(|s| {
            s.transitions
                .iter()
                .filter_map(|t| match &t.trigger {
                    Trigger::Event(n) => events.iter().position(|e| e == n).map(|i| i as u16),
                    _ => None,
                })
                .collect()
        })
        .collect();

    // Who the patients are.
    let female_only =
        p.id.contains("pregnan") || p.id.contains("breast") || p.id.contains("obstet");
    let age = match &sc.patients.age {
        Some(v) => dist(v, Unit::Plain, "patients.age")?,
        None if p.id.contains("pregnan") || p.id.contains("obstet") => Dist::Normal {
            mean: 30.0,
            sd: 4.5,
            min: 18.0,
            max: 48.0,
        },
        None => Dist::Normal {
            mean: 62.0,
            sd: 13.0,
            min: 18.0,
            max: 95.0,
        },
    };
    let female = sc
        .patients
        .female
        .unwrap_or(if female_only { 1.0 } else { 0.5 });
    // Pregnant women have lower blood pressure than the default chronic-disease population.
    let mut obs_shift = vec![0.0; catalog::OBSERVATIONS.len()];
    if p.id.contains("pregnan") || p.id.contains("obstet") {
        for (kind, shift) in [("bp_systolic", -30.0), ("bp_diastolic", -16.0)] {
            if !sc.observations.contains_key(kind) {
                obs_shift[kind_index(kind).unwrap_or(0)] = shift;
            }
        }
    }
    let mut variables = Vec::new();
    for v in &p.variables {
        if let Some(d) = sc.patients.variables.get(&v.name) {
            let unit = Unit::Plain;
            let d = match v.ty {
                VarType::Number | VarType::Integer | VarType::Bool => {
                    dist(d, unit, &format!("patients.variables.{}", v.name))?
                }
                VarType::Text => {
                    return Err(format!(
                        "patients.variables.{}: text variables are set by entry points, not drawn",
                        v.name
                    ));
                }
            };
            variables.push((v.name.clone(), v.ty, d));
        } else if v.name == "ed_visits" && v.ty != VarType::Text {
            variables.push((v.name.clone(), v.ty, Dist::Poisson(0.3)));
        }
    }
    let charlson_default = p
        .variables
        .iter()
        .find(|v| v.name == "charlson" && !sc.patients.variables.contains_key("charlson"))
        .map(|v| match v.default {
            VarValue::Integer(i) => i,
            VarValue::Number(n) => n as i64,
            _ => 0,
        });

    Ok(PathwayInfo {
        id: p.id.clone(),
        states: p.states.iter().map(|s| s.id.clone()).collect(),
        terminal: p.states.iter().map(|s| s.terminal).collect(),
        state_ix,
        state_off,
        t_off,
        n_transitions,
        events,
        listened: listened.clone(),
        guard_events,
        guard_scales,
        guard_risks,
        outcome_read,
        guard_obs,
        goal_obs,
        groups,
        uses_goal_met,
        goals,
        indicators,
        alarms,
        task_ids,
        task_calls,
        outcomes,
        task_behaviour,
        missed_default,
        entry_weights,
        entry_admitted,
        rules,
        state_listens,
        age,
        female,
        obs_shift,
        variables,
        charlson_default,
        tracks_stay: listened.contains("discharged"),
    })
}

/// Whether `event` takes the built-in rules (the scenario gives none).
fn own_default(sc: &Scenario, event: &str) -> bool {
    !sc.events.iter().any(|r| r.event == event)
}

// ---- the run's setup ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Institution {
    pub id: String,
    pub kind: InstitutionKind,
    pub share: f64,
}

#[derive(Debug, Clone)]
struct ReferralModel {
    accepted: f64,
    rejected: f64,
    delay: Dist,
    arrived: f64,
    arrive_delay: Dist,
}

/// The resolved run: pathways, cohort, behaviour and calendar. Shared read-only by every thread.
pub struct Setup {
    pub programs: Vec<Arc<Program>>,
    pub infos: Vec<PathwayInfo>,
    pub mix: Vec<f64>,
    pub cohort: CohortSpec,
    pub institutions: Vec<Institution>,
    pub roles: Vec<String>,
    pub n: u64,
    pub days: u32,
    pub seed: u64,
    pub tz: String,
    pub start_date: jiff::civil::Date,
    /// Midnight of each day, and of the day after the last.
    pub day_starts: Vec<i64>,
    pub work_start: i64,
    pub work_end: i64,
    arrivals_days: f64,
    obs: Vec<ObsModel>,
    scales: Vec<ScaleModel>,
    response: [f64; 4],
    referral: [ReferralModel; 2],
    reached: Vec<String>,
    /// Tasks per day for each queue (institution × role).
    pub capacity: Vec<u32>,
    pub total_states: usize,
    pub total_transitions: usize,
    pub warnings: Vec<String>,
}

fn parse_hhmm(s: &str) -> Result<i64, String> {
    let t = carepath_dsl::LocalTime::parse(s)?;
    Ok(i64::from(t.hour) * 3_600 + i64::from(t.minute) * 60)
}

impl Setup {
    pub fn new(
        programs: Vec<Arc<Program>>,
        sc: &Scenario,
        n: u64,
        days: u32,
        seed: u64,
    ) -> Result<Setup, String> {
        if programs.is_empty() {
            return Err("no pathway to simulate".into());
        }
        if days == 0 {
            return Err("--days must be at least 1".into());
        }
        let mut warnings = Vec::new();
        let roles: Vec<String> = programs
            .iter()
            .flat_map(|p| p.pathway.roles.iter().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        check_names(sc, &programs)?;

        let mut infos = Vec::new();
        let (mut state_off, mut t_base) = (0, 0);
        for prog in &programs {
            let info = analyse(prog, sc, &roles, state_off, t_base, &mut warnings)?;
            state_off += info.states.len();
            t_base += info.n_transitions;
            infos.push(info);
        }
        let mix: Vec<f64> = if sc.mix.is_empty() {
            vec![1.0; programs.len()]
        } else {
            programs
                .iter()
                .map(|p| sc.mix.get(&p.pathway.id).copied().unwrap_or(0.0))
                .collect()
        };
        if mix.iter().all(|w| *w <= 0.0) {
            return Err("mix: no pathway of this run has a positive share".into());
        }

        let institutions: Vec<Institution> = if sc.institutions.is_empty() {
            vec![
                Institution {
                    id: "lead".into(),
                    kind: InstitutionKind::LeadHospital,
                    share: 0.6,
                },
                Institution {
                    id: "clinic_a".into(),
                    kind: InstitutionKind::CommunityClinic,
                    share: 0.25,
                },
                Institution {
                    id: "clinic_b".into(),
                    kind: InstitutionKind::TownshipHospital,
                    share: 0.15,
                },
            ]
        } else {
            let mut v = Vec::new();
            for (id, spec) in &sc.institutions {
                let kind = match spec.kind.as_deref() {
                    None => InstitutionKind::LeadHospital,
                    Some(k) => InstitutionKind::ALL
                        .iter()
                        .find(|(s, _)| *s == k)
                        .map(|(_, k)| *k)
                        .ok_or_else(|| {
                            format!(
                                "institutions.{id}.kind: `{k}` is not one of lead_hospital, community_clinic, township_hospital, specialist_hospital"
                            )
                        })?,
                };
                v.push(Institution {
                    id: id.clone(),
                    kind,
                    share: spec.share.max(0.0),
                });
            }
            v
        };
        let share_total: f64 = institutions.iter().map(|i| i.share).sum();
        if share_total <= 0.0 {
            return Err("institutions: every share is zero".into());
        }

        // Capacity per (institution, role).
        let mut capacity = Vec::new();
        for inst in &institutions {
            let patients = n as f64 * inst.share / share_total;
            let spec = sc.institutions.get(&inst.id);
            for role in &roles {
                let v = spec
                    .and_then(|s| s.capacity.get(role).or_else(|| s.capacity.get("default")))
                    .or_else(|| sc.staff.capacity.get(role))
                    .or_else(|| sc.staff.capacity.get("default"));
                let per_day = match v {
                    None => (DEFAULT_PER_1000 * patients / 1000.0).ceil().max(1.0),
                    Some(Value::Number(x)) => x.as_f64().unwrap_or(0.0).max(0.0),
                    Some(Value::Object(m)) if m.len() == 1 && m.contains_key("per_1000") => {
                        let per = m["per_1000"].as_f64().unwrap_or(0.0);
                        (per * patients / 1000.0)
                            .ceil()
                            .max(if per > 0.0 { 1.0 } else { 0.0 })
                    }
                    Some(other) => {
                        return Err(format!(
                            "staff capacity of {role}: write a number of tasks a day or {{ per_1000: n }}, found {other}"
                        ));
                    }
                };
                capacity.push(per_day.round() as u32);
            }
        }

        let tz = sc.tz.clone().unwrap_or_else(|| "Asia/Shanghai".into());
        let zone = jiff::tz::TimeZone::get(&tz).map_err(|e| format!("tz: `{tz}`: {e}"))?;
        let start_date: jiff::civil::Date = match &sc.start {
            Some(s) => s
                .parse()
                .map_err(|e| format!("start: `{s}` is not a date like 2026-01-05: {e}"))?,
            None => jiff::civil::date(2026, 1, 5),
        };
        let mut day_starts = Vec::with_capacity(days as usize + 1);
        for d in 0..=i64::from(days) {
            let date = start_date
                .checked_add(jiff::Span::new().days(d))
                .map_err(|e| format!("the run is too long: {e}"))?;
            let z = date
                .to_zoned(zone.clone())
                .map_err(|e| format!("start: {e}"))?;
            day_starts.push(z.timestamp().as_second());
        }
        let (work_start, work_end) = match &sc.staff.hours {
            None => (8 * 3_600, 18 * 3_600),
            Some(h) => {
                let (a, b) = h.split_once('-').ok_or_else(|| {
                    format!("staff.hours: write e.g. \"08:00-18:00\", found `{h}`")
                })?;
                let (a, b) = (parse_hhmm(a.trim())?, parse_hhmm(b.trim())?);
                if b <= a {
                    return Err(format!("staff.hours: `{h}` ends before it starts"));
                }
                (a, b)
            }
        };

        let comorbidities: Vec<Comorbidity> = match &sc.patients.comorbidities {
            None => cohort::default_comorbidities(),
            Some(m) => m
                .iter()
                .map(|(name, c)| Comorbidity {
                    name: name.clone(),
                    prevalence: c.prevalence,
                    charlson: c.charlson,
                    shift: c.shift.clone(),
                })
                .collect(),
        };
        let adherence = sc.patients.adherence.unwrap_or(crate::scenario::MeanSd {
            mean: 0.75,
            sd: 0.15,
        });
        let cohort = CohortSpec {
            institution_shares: institutions.iter().map(|i| i.share).collect(),
            comorbidities,
            adherence_mean: adherence.mean,
            adherence_sd: adherence.sd,
        };

        let mut obs: Vec<ObsModel> = catalog::OBSERVATIONS
            .iter()
            .map(|(k, _)| cohort::observation_default(k))
            .collect();
        for (k, o) in &sc.observations {
            let Some(i) = kind_index(k) else { continue };
            let m = &mut obs[i];
            m.mean = o.mean.unwrap_or(m.mean);
            m.sd = o.sd.unwrap_or(m.sd);
            m.noise = o.noise.unwrap_or(m.noise);
            m.trend_per_month = o.trend_per_month.unwrap_or(m.trend_per_month);
            m.min = o.min.unwrap_or(m.min);
            m.max = o.max.unwrap_or(m.max);
            m.round = o.round.unwrap_or(m.round);
            m.per_day = o.per_day.unwrap_or(m.per_day);
            if let Some(at) = &o.at {
                m.at = parse_hhmm(at).map_err(|e| format!("observations.{k}.at: {e}"))?;
            }
            if o.probability.is_some() {
                m.probability = o.probability;
            }
        }
        let mut scales: Vec<ScaleModel> = catalog::SCALES
            .iter()
            .map(|s| cohort::scale_default(s))
            .collect();
        let default_scale = sc.scales.get("default");
        for (i, m) in scales.iter_mut().enumerate() {
            for spec in [default_scale, sc.scales.get(catalog::SCALES[i])]
                .into_iter()
                .flatten()
            {
                let what = format!("scales.{}", catalog::SCALES[i]);
                m.answer = spec.answer.unwrap_or(m.answer);
                if let Some(d) = &spec.delay {
                    m.delay = dist(d, Unit::Seconds, &what)?;
                }
                if let Some(s) = spec.score {
                    m.mean = s.mean.unwrap_or(m.mean);
                    m.sd = s.sd.unwrap_or(m.sd);
                    m.min = s.min.unwrap_or(m.min);
                    m.max = s.max.unwrap_or(m.max);
                }
                for (item, p) in &spec.items {
                    let item: usize = item
                        .parse()
                        .map_err(|_| format!("{what}.items: `{item}` is not an item number"))?;
                    m.forced_items.retain(|(i, _)| *i != item);
                    m.forced_items.push((item, *p));
                }
            }
        }
        let mut response = [0.85, 0.65, 0.9, 0.3];
        for (ch, p) in &sc.follow_up_response {
            let i = ["wechat", "sms", "phone", "email"]
                .iter()
                .position(|c| c == ch)
                .ok_or_else(|| {
                    format!(
                        "follow_up_response: `{ch}` is not a channel (wechat, sms, phone, email)"
                    )
                })?;
            response[i] = *p;
        }
        let referral_model = |spec: Option<&crate::scenario::ReferralSpec>,
                              up: bool|
         -> Result<ReferralModel, String> {
            let h = |a: f64, b: f64| Dist::Uniform(a * 3_600.0, b * 3_600.0);
            let mut m = if up {
                ReferralModel {
                    accepted: 0.9,
                    rejected: 0.05,
                    delay: h(1.0, 20.0),
                    arrived: 0.85,
                    arrive_delay: h(24.0, 144.0),
                }
            } else {
                ReferralModel {
                    accepted: 0.85,
                    rejected: 0.1,
                    delay: h(2.0, 60.0),
                    arrived: 1.0,
                    arrive_delay: h(24.0, 72.0),
                }
            };
            if let Some(s) = spec {
                let what = if up { "referrals.up" } else { "referrals.down" };
                m.accepted = s.accepted.unwrap_or(m.accepted);
                m.rejected = s.rejected.unwrap_or(m.rejected);
                m.arrived = s.arrived.unwrap_or(m.arrived);
                if let Some(d) = &s.delay {
                    m.delay = dist(d, Unit::Seconds, what)?;
                }
                if let Some(d) = &s.arrive_delay {
                    m.arrive_delay = dist(d, Unit::Seconds, what)?;
                }
                if m.accepted + m.rejected > 1.0 + 1e-9 {
                    return Err(format!("{what}: accepted + rejected is more than 1"));
                }
            }
            Ok(m)
        };
        let referral = [
            referral_model(sc.referrals.up.as_ref(), true)?,
            referral_model(sc.referrals.down.as_ref(), false)?,
        ];
        let reached = sc
            .tasks
            .reached
            .clone()
            .unwrap_or_else(|| vec!["reached".into(), "problem".into(), "done".into()]);

        Ok(Setup {
            total_states: state_off,
            total_transitions: t_base,
            programs,
            infos,
            mix,
            cohort,
            institutions,
            roles,
            n,
            days,
            seed,
            tz,
            start_date,
            day_starts,
            work_start,
            work_end,
            arrivals_days: sc
                .arrivals_days
                .unwrap_or(f64::from(days) / 2.0)
                .clamp(0.0, f64::from(days)),
            obs,
            scales,
            response,
            referral,
            reached,
            capacity,
            warnings,
        })
    }

    pub fn horizon(&self) -> i64 {
        self.day_starts[self.days as usize]
    }

    /// The day an instant falls on (clamped to the run).
    pub fn day_of(&self, t: i64) -> usize {
        match self.day_starts.binary_search(&t) {
            Ok(i) => i.min(self.days as usize - 1),
            Err(i) => i.saturating_sub(1).min(self.days as usize - 1),
        }
    }

    fn queue(&self, institution: usize, role: u16) -> usize {
        institution * self.roles.len() + usize::from(role)
    }

    fn flow(&self, prog: usize, dir: Direction, institution: usize, to: InstitutionKind) -> usize {
        let d = usize::from(dir == Direction::Down);
        let k = InstitutionKind::ALL
            .iter()
            .position(|(_, x)| *x == to)
            .unwrap_or(0);
        ((prog * 2 + d) * self.institutions.len() + institution) * 4 + k
    }

    pub fn n_flows(&self) -> usize {
        self.programs.len() * 2 * self.institutions.len() * 4
    }

    /// (pathway, direction, institution, to) of a flow index.
    pub fn flow_parts(&self, f: usize) -> (usize, Direction, usize, InstitutionKind) {
        let k = f % 4;
        let rest = f / 4;
        let inst = rest % self.institutions.len();
        let rest = rest / self.institutions.len();
        let dir = if rest % 2 == 1 {
            Direction::Down
        } else {
            Direction::Up
        };
        (rest / 2, dir, inst, InstitutionKind::ALL[k].1)
    }
}

/// Names in the scenario must exist, so a typo is an error rather than a silent default.
fn check_names(sc: &Scenario, programs: &[Arc<Program>]) -> Result<(), String> {
    let known_role = |r: &str| r == "default" || catalog::ROLES.contains(&r);
    for r in sc.staff.capacity.keys() {
        if !known_role(r) {
            return Err(format!("staff.capacity: `{r}` is not a role"));
        }
    }
    for (i, spec) in &sc.institutions {
        for r in spec.capacity.keys() {
            if !known_role(r) {
                return Err(format!("institutions.{i}.capacity: `{r}` is not a role"));
            }
        }
    }
    for k in sc.observations.keys() {
        if kind_index(k).is_none() {
            return Err(format!(
                "observations: `{k}` is not an observation kind ({})",
                catalog::observation_names().join(", ")
            ));
        }
    }
    for s in sc.scales.keys() {
        if s != "default" && scale_index(s).is_none() {
            return Err(format!(
                "scales: `{s}` is not a scale ({})",
                catalog::SCALES.join(", ")
            ));
        }
    }
    for id in sc.mix.keys() {
        if !programs.iter().any(|p| &p.pathway.id == id) {
            return Err(format!("mix: `{id}` is not a pathway of this run"));
        }
    }
    for e in sc.patients.entry.keys() {
        if !programs
            .iter()
            .any(|p| p.pathway.entry_points.iter().any(|x| &x.id == e))
        {
            return Err(format!(
                "patients.entry: no pathway of this run has an entry point `{e}`"
            ));
        }
    }
    let mut task_keys: Vec<(&str, &String)> = sc
        .tasks
        .outcomes
        .keys()
        .map(|k| ("tasks.outcomes", k))
        .collect();
    task_keys.extend(
        sc.tasks
            .ready_after
            .keys()
            .map(|k| ("tasks.ready_after", k)),
    );
    if let Some(Value::Object(m)) = &sc.tasks.missed {
        task_keys.extend(m.keys().map(|k| ("tasks.missed", k)));
    }
    for (what, t) in task_keys {
        let known = t == "default"
            || t == "default_call"
            || programs.iter().any(|p| {
                p.pathway.actions().any(|(_, a)| match a {
                    Action::Task(x) => x.id.as_deref() == Some(t),
                    Action::Alarm(x) => x.task.id.as_deref() == Some(t),
                    _ => false,
                })
            });
        if !known {
            return Err(format!("{what}: no pathway of this run has a task `{t}`"));
        }
    }
    Ok(())
}

// ---- tallies -----------------------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
pub struct PathTally {
    pub enrolled: u64,
    pub completed: u64,
    pub errors: u64,
    pub died: u64,
    pub steps: u64,
    pub follow_ups_sent: u64,
    pub follow_ups_responded: u64,
    pub follow_ups_cancelled: u64,
    pub calls_due: u64,
    pub calls_reached: u64,
    pub tasks_created: u64,
    pub tasks_done: u64,
    pub tasks_due: u64,
    pub tasks_on_time: u64,
    pub tasks_cancelled: u64,
    pub scales_pushed: u64,
    pub scales_answered: u64,
    pub referrals_up: u64,
    pub referrals_down: u64,
    pub alarms: u64,
    pub readings: u64,
    pub stays: u64,
    pub stay_seconds: i64,
    pub indicator_met: Vec<u64>,
    pub indicator_of: Vec<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RoleTally {
    pub created: u64,
    pub done: u64,
    pub due: u64,
    pub on_time: u64,
    pub cancelled: u64,
    pub open_at_end: u64,
    pub overdue_at_end: u64,
    pub escalated: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FlowTally {
    pub count: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub arrived: u64,
}

/// Additive counts: each chunk of patients keeps its own, and they are summed at the end, so the
/// totals do not depend on how patients were split between threads.
#[derive(Debug, Clone)]
pub struct Tally {
    pub path: Vec<PathTally>,
    pub roles: Vec<RoleTally>,
    pub visits: Vec<u64>,
    pub ended_in: Vec<u64>,
    pub taken: Vec<u64>,
    /// `[day × roles + role]`
    pub created_by_day: Vec<u32>,
    pub done_by_day: Vec<u32>,
    /// `[day × total states + state]`: active enrolments in each state at the end of the day.
    pub occupancy: Vec<u32>,
    pub flows: Vec<FlowTally>,
    /// (patient index, message), sorted at the end.
    pub errors: Vec<(u32, String)>,
}

impl Tally {
    fn new(s: &Setup) -> Tally {
        let days = s.days as usize;
        Tally {
            path: s
                .infos
                .iter()
                .map(|i| PathTally {
                    indicator_met: vec![0; i.indicators.len()],
                    indicator_of: vec![0; i.indicators.len()],
                    ..Default::default()
                })
                .collect(),
            roles: vec![RoleTally::default(); s.roles.len()],
            visits: vec![0; s.total_states],
            ended_in: vec![0; s.total_states],
            taken: vec![0; s.total_transitions],
            created_by_day: vec![0; days * s.roles.len()],
            done_by_day: vec![0; days * s.roles.len()],
            occupancy: vec![0; days * s.total_states],
            flows: vec![FlowTally::default(); s.n_flows()],
            errors: Vec::new(),
        }
    }

    fn add(&mut self, o: &Tally) {
        for (a, b) in self.path.iter_mut().zip(&o.path) {
            a.enrolled += b.enrolled;
            a.completed += b.completed;
            a.errors += b.errors;
            a.died += b.died;
            a.steps += b.steps;
            a.follow_ups_sent += b.follow_ups_sent;
            a.follow_ups_responded += b.follow_ups_responded;
            a.follow_ups_cancelled += b.follow_ups_cancelled;
            a.calls_due += b.calls_due;
            a.calls_reached += b.calls_reached;
            a.tasks_created += b.tasks_created;
            a.tasks_done += b.tasks_done;
            a.tasks_due += b.tasks_due;
            a.tasks_on_time += b.tasks_on_time;
            a.tasks_cancelled += b.tasks_cancelled;
            a.scales_pushed += b.scales_pushed;
            a.scales_answered += b.scales_answered;
            a.referrals_up += b.referrals_up;
            a.referrals_down += b.referrals_down;
            a.alarms += b.alarms;
            a.readings += b.readings;
            a.stays += b.stays;
            a.stay_seconds += b.stay_seconds;
            for (x, y) in a.indicator_met.iter_mut().zip(&b.indicator_met) {
                *x += y;
            }
            for (x, y) in a.indicator_of.iter_mut().zip(&b.indicator_of) {
                *x += y;
            }
        }
        for (a, b) in self.roles.iter_mut().zip(&o.roles) {
            a.created += b.created;
            a.done += b.done;
            a.due += b.due;
            a.on_time += b.on_time;
            a.cancelled += b.cancelled;
            a.open_at_end += b.open_at_end;
            a.overdue_at_end += b.overdue_at_end;
            a.escalated += b.escalated;
        }
        let sum = |a: &mut Vec<u64>, b: &Vec<u64>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum(&mut self.visits, &o.visits);
        sum(&mut self.ended_in, &o.ended_in);
        sum(&mut self.taken, &o.taken);
        let sum32 = |a: &mut Vec<u32>, b: &Vec<u32>| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum32(&mut self.created_by_day, &o.created_by_day);
        sum32(&mut self.done_by_day, &o.done_by_day);
        sum32(&mut self.occupancy, &o.occupancy);
        for (a, b) in self.flows.iter_mut().zip(&o.flows) {
            a.count += b.count;
            a.accepted += b.accepted;
            a.rejected += b.rejected;
            a.arrived += b.arrived;
        }
        self.errors.extend(o.errors.iter().cloned());
    }
}

// ---- patients ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Waiting,
    Active,
    Ended,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Enrol,
    Life(u16),
    ScaleAnswer {
        scale: u8,
        counted: bool,
    },
    /// An unanswered push reaching its expiry, as the scheduler's sweep raises it.
    ScaleExpired {
        scale: u8,
    },
    FollowUp(u32),
    Referral {
        what: u8,
        flow: u32,
    },
    TaskReady(u32),
}

#[derive(Debug, Clone, Copy)]
struct Agenda {
    at: i64,
    order: u32,
    item: Item,
}

impl PartialEq for Agenda {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Agenda {}
impl PartialOrd for Agenda {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Agenda {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

#[derive(Debug, Clone)]
struct OpenTask {
    no: u32,
    ref_ix: u16,
    role: u16,
    prio: u8,
    keep: bool,
    state_seq: u32,
    due: i64,
    escalate_after: Option<i64>,
}

#[derive(Debug, Clone)]
struct FollowUpSlot {
    id: u32,
    state_seq: u32,
    channels: Vec<Channel>,
}

#[derive(Debug, Clone)]
struct Armed {
    alarm: u16,
    scope: AlarmScope,
    state_seq: u32,
    matches: Vec<i64>,
    on: bool,
}

/// A queue entry: smaller is more urgent (priority, due, created, patient, task number).
pub type Key = (u8, i64, i64, u32, u32);

struct Patient {
    idx: u32,
    prog: usize,
    rng: SplitMix,
    profile: Profile,
    enrol_at: i64,
    life: Life,
    dead: bool,
    enrolment: Option<Enrolment>,
    state: usize,
    facts: PatientFacts,
    pending: Vec<PendingEvent>,
    seq: i64,
    agenda: BinaryHeap<Reverse<Agenda>>,
    order: u32,
    wake: i64,
    tasks: Vec<OpenTask>,
    next_task: u32,
    follow_ups: Vec<FollowUpSlot>,
    next_follow_up: u32,
    alarms: Vec<Armed>,
    /// Per observation kind: baseline and drift per second (or probability of a 1).
    levels: Vec<(f64, f64)>,
    /// Device readings draw from their own generator, so they can be taken late or looked ahead.
    obs_rng: SplitMix,
    /// The next reading slot of each reading group.
    cursor: Vec<i64>,
    /// When an armed alarm would next fire (or the look-ahead ends).
    alarm_due: i64,
    alarms_changed: bool,
    obs_trim_at: usize,
    goal_trim_at: usize,
    goal_log: Vec<(u8, f32, i64)>,
    inbox: Vec<(i64, u32)>,
    in_hospital_since: Option<i64>,
    ended_at: Option<i64>,
}

/// What a chunk hands back after a tick: new tasks for the queues.
type NewTasks = Vec<(u32, Key)>;

struct Cx<'a> {
    s: &'a Setup,
    tally: &'a mut Tally,
    new_tasks: &'a mut NewTasks,
    /// Tasks done or cancelled, as (patient, task number): they leave the staff queues.
    closed: &'a mut Vec<(u32, u32)>,
    horizon: i64,
}

impl Patient {
    fn new(s: &Setup, idx: u32) -> Patient {
        let mut rng = SplitMix::new(cohort::patient_seed(s.seed, u64::from(idx)));
        let prog = rng.weighted(&s.mix);
        let info = &s.infos[prog];
        let profile = s
            .cohort
            .profile(&mut rng, &info.age, info.female, &info.entry_weights);
        let day = (rng.unit_f() * s.arrivals_days).floor() as usize;
        let day = day.min(s.days as usize - 1);
        let enrol_at = s.day_starts[day]
            + s.work_start
            + (rng.unit_f() * (s.work_end - s.work_start) as f64) as i64;
        let mut levels = vec![(0.0, 0.0); catalog::OBSERVATIONS.len()];
        for group in &info.groups {
            for k in group {
                let m = &s.obs[*k];
                let shift: f64 = profile
                    .comorbidities
                    .iter()
                    .filter_map(|c| s.cohort.comorbidities[usize::from(*c)].shift.get(m.kind))
                    .sum();
                levels[*k] = match m.probability {
                    Some(p) => ((p + 0.1 * rng.normal()).clamp(0.0, 1.0), 0.0),
                    None => (
                        m.mean + info.obs_shift[*k] + shift + m.sd * rng.normal(),
                        m.trend_per_month * rng.uniform(0.5, 1.5) / (30.0 * 86_400.0),
                    ),
                };
            }
        }
        let birth_year = i64::from(s.start_date.year()) - i64::from(profile.age);
        let birth_date = jiff::civil::Date::new(
            birth_year.clamp(1800, 2200) as i16,
            1 + rng.below(12) as i8,
            1 + rng.below(28) as i8,
        )
        .ok();
        let facts = PatientFacts {
            birth_date,
            sex: profile.sex.to_string(),
            ..Default::default()
        };
        let mut p = Patient {
            idx,
            prog,
            rng,
            profile,
            enrol_at,
            life: Life::Waiting,
            dead: false,
            enrolment: None,
            state: 0,
            facts,
            pending: Vec::new(),
            seq: 0,
            agenda: BinaryHeap::new(),
            order: 0,
            wake: i64::MAX,
            tasks: Vec::new(),
            next_task: 0,
            follow_ups: Vec::new(),
            next_follow_up: 0,
            alarms: Vec::new(),
            levels,
            obs_rng: SplitMix::new(cohort::mix64(
                cohort::patient_seed(s.seed, u64::from(idx)) ^ 0x0B5E_7A71_0D5E_ED01,
            )),
            cursor: Vec::new(),
            alarm_due: i64::MAX,
            alarms_changed: false,
            obs_trim_at: 8,
            goal_trim_at: 16,
            goal_log: Vec::new(),
            inbox: Vec::new(),
            in_hospital_since: None,
            ended_at: None,
        };
        p.schedule(enrol_at, Item::Enrol, i64::MAX);
        p
    }

    fn schedule(&mut self, at: i64, item: Item, horizon: i64) {
        if at > horizon {
            return;
        }
        self.order += 1;
        self.agenda.push(Reverse(Agenda {
            at,
            order: self.order,
            item,
        }));
    }

    /// The next time something other than a device reading happens.
    fn next_other(&self) -> i64 {
        let mut t = self.agenda.peek().map_or(i64::MAX, |Reverse(a)| a.at);
        for (at, _) in &self.inbox {
            t = t.min(*at);
        }
        if self.life == Life::Active {
            t = t.min(self.wake);
        }
        t
    }

    /// The next time the patient must be visited.
    fn next_at(&self) -> i64 {
        let t = self.next_other();
        if self.life == Life::Active {
            t.min(self.alarm_due)
        } else {
            t
        }
    }

    /// Lives up to `to`: everything that happens, in time order, stepping when the pathway must see it.
    fn advance(&mut self, cx: &mut Cx, to: i64) {
        loop {
            let t = self.next_other();
            // Readings up to the next happening first; one that fires an alarm is acted on at once.
            if let Some((at, step)) = self.catch_up(cx, t.min(to)) {
                if step && self.life == Life::Active {
                    self.step(cx, at);
                    if self.life == Life::Active && self.wake <= at {
                        self.wake = at + 60;
                    }
                }
                continue;
            }
            if t > to {
                break;
            }
            let mut need_step = self.life == Life::Active && self.wake <= t;
            while let Some(Reverse(a)) = self.agenda.peek().copied() {
                if a.at != t {
                    break;
                }
                self.agenda.pop();
                need_step |= self.happen(cx, a.item, t);
            }
            while let Some(i) = self.inbox.iter().position(|(at, _)| *at == t) {
                let (_, no) = self.inbox.swap_remove(i);
                need_step |= self.complete(cx, no, t);
            }
            if need_step && self.life == Life::Active {
                self.step(cx, t);
                if self.life == Life::Active && self.wake <= t {
                    self.wake = t + 60;
                }
            }
        }
        if self.alarms_changed || self.alarm_due <= to {
            self.predict_alarm(cx.s, to);
        }
    }

    fn push_event(&mut self, info: &PathwayInfo, name: String, t: i64) -> bool {
        if info.guard_events.contains(&name) {
            self.facts.events.push(FactEvent {
                name: name.clone(),
                at: ts(t),
            });
        }
        let listened = info.listened.contains(&name);
        self.seq += 1;
        self.pending.push(PendingEvent {
            seq: self.seq,
            name,
            at: ts(t),
        });
        listened
    }

    /// Handles one agenda item at `t`; true when the pathway must be stepped.
    fn happen(&mut self, cx: &mut Cx, item: Item, t: i64) -> bool {
        let s = cx.s;
        let info = &s.infos[self.prog];
        match item {
            Item::Enrol => {
                self.enrol(cx, t);
                false
            }
            Item::Life(ev) => {
                if self.dead || self.life != Life::Active {
                    return false;
                }
                let name = info.events[usize::from(ev)].clone();
                match name.as_str() {
                    "died" => {
                        self.dead = true;
                        cx.tally.path[self.prog].died += 1;
                    }
                    "admitted" | "readmitted" | "delivered" => {
                        self.in_hospital_since.get_or_insert(t);
                    }
                    "discharged" => {
                        if let Some(since) = self.in_hospital_since.take() {
                            let p = &mut cx.tally.path[self.prog];
                            p.stays += 1;
                            p.stay_seconds += t - since;
                        }
                    }
                    _ => {}
                }
                let step = self.push_event(info, name, t);
                self.fire_rules(cx, Hit::Event(ev), t);
                step
            }
            Item::TaskReady(no) => {
                self.queue_task(cx, no, t);
                false
            }
            Item::ScaleAnswer { scale, counted } => {
                if self.dead {
                    return false;
                }
                let m = &s.scales[usize::from(scale)];
                let (score, items) = m.answer(&mut self.rng);
                if counted {
                    cx.tally.path[self.prog].scales_answered += 1;
                }
                if info.guard_scales.contains(&usize::from(scale)) {
                    self.facts.scales.retain(|x| x.scale != m.name);
                    self.facts.scales.push(ScaleResult {
                        scale: m.name.to_string(),
                        score,
                        band: String::new(),
                        items,
                        at: ts(t),
                    });
                }
                self.push_event(info, format!("scale_answered:{}", m.name), t)
            }
            Item::ScaleExpired { scale } => {
                if self.dead {
                    return false;
                }
                let name = &s.scales[usize::from(scale)].name;
                self.push_event(info, format!("scale_expired:{name}"), t)
            }
            Item::FollowUp(id) => {
                let Some(i) = self.follow_ups.iter().position(|f| f.id == id) else {
                    return false;
                };
                let f = self.follow_ups.swap_remove(i);
                let p = &mut cx.tally.path[self.prog];
                p.follow_ups_sent += 1;
                if !self.dead {
                    for ch in &f.channels {
                        if self.rng.chance(s.response[channel_index(*ch)]) {
                            p.follow_ups_responded += 1;
                            break;
                        }
                    }
                }
                false
            }
            Item::Referral { what, flow } => {
                if self.dead || self.life != Life::Active {
                    return false;
                }
                let f = &mut cx.tally.flows[flow as usize];
                let name = match what {
                    0 => {
                        f.accepted += 1;
                        "referral_accepted"
                    }
                    1 => {
                        f.rejected += 1;
                        "referral_rejected"
                    }
                    _ => {
                        f.arrived += 1;
                        "referral_arrived"
                    }
                };
                self.push_event(info, name.to_string(), t)
            }
        }
    }

    fn enrol(&mut self, cx: &mut Cx, t: i64) {
        let s = cx.s;
        let info = &s.infos[self.prog];
        let prog = &s.programs[self.prog];
        let entry = self.profile.entry.min(prog.pathway.entry_points.len() - 1);
        let admitted = info.entry_admitted[entry];
        if admitted {
            self.in_hospital_since = Some(t);
            self.push_event(info, "admitted".into(), t);
        }
        let entry_id = prog.pathway.entry_points[entry].id.clone();
        let entry_state = info.state(&prog.pathway.entry_points[entry].state);
        let out = step::enrol(
            prog,
            i64::from(self.idx) + 1,
            &entry_id,
            &s.tz,
            &self.facts,
            &self.pending,
            ts(t),
        );
        cx.tally.path[self.prog].enrolled += 1;
        cx.tally.path[self.prog].steps += 1;
        self.life = Life::Active;
        cx.tally.visits[info.state_off + entry_state] += 1;
        self.fire_rules(cx, Hit::State(entry_state), t);
        match out {
            Ok(o) => {
                // Variables drawn for the patient (comorbidity index and the like).
                let mut o = o;
                if let Some(base) = info.charlson_default {
                    o.enrolment.vars.insert(
                        "charlson".into(),
                        VarValue::Integer(base + self.profile.charlson),
                    );
                }
                for (name, ty, d) in &info.variables {
                    let x = d.sample(&mut self.rng);
                    let v = match ty {
                        VarType::Integer => VarValue::Integer(x.round() as i64),
                        VarType::Bool => VarValue::Bool(x != 0.0),
                        _ => VarValue::Number(x),
                    };
                    o.enrolment.vars.insert(name.clone(), v);
                }
                self.apply(cx, o, t);
            }
            Err(e) => {
                self.fail(cx, e.to_string(), t);
                return;
            }
        }
        let ev_admitted = info.event_ix("admitted").unwrap_or(0);
        self.fire_rules(cx, Hit::Enrolled(entry), t);
        if admitted {
            self.fire_rules(cx, Hit::Event(ev_admitted), t);
        }
        // Device readings from the first slot after enrolment.
        self.cursor = info
            .groups
            .iter()
            .map(|group| {
                let m = &s.obs[group[0]];
                let interval = reading_interval(m);
                let mut at = s.day_starts[s.day_of(t)] + m.at;
                while at <= t {
                    at += interval;
                }
                if at > cx.horizon { i64::MAX } else { at }
            })
            .collect();
        self.alarms_changed = true;
    }

    fn fire_rules(&mut self, cx: &mut Cx, hit: Hit, t: i64) {
        let info = &cx.s.infos[self.prog];
        for r in &info.rules {
            let matched = match (&r.anchor, hit) {
                (Anchor::Enrolled(None), Hit::Enrolled(_)) => true,
                (Anchor::Enrolled(Some(e)), Hit::Enrolled(x)) => *e == x,
                (Anchor::Hazard(_), Hit::Enrolled(_)) => true,
                (Anchor::Event(e), Hit::Event(x)) => *e == x,
                (Anchor::State, Hit::State(s)) => info.state_listens[s].contains(&r.event),
                _ => false,
            };
            if !matched {
                continue;
            }
            let delay = match r.anchor {
                Anchor::Hazard(rate) => self.rng.exponential(1.0 / rate),
                _ => {
                    if !self.rng.chance(r.probability) {
                        continue;
                    }
                    r.delay.sample(&mut self.rng)
                }
            };
            self.schedule(t + delay.max(0.0) as i64, Item::Life(r.event), cx.horizon);
        }
    }

    /// Takes the device readings due up to `to`, in time order. Readings are pure data drawn from
    /// their own generator, so they are only taken when the patient is visited anyway — except
    /// that a reading which fires an alarm stops the catch-up: `Some((time, step needed))`.
    fn catch_up(&mut self, cx: &mut Cx, to: i64) -> Option<(i64, bool)> {
        if self.life != Life::Active || self.dead {
            return None;
        }
        let s = cx.s;
        let info = &s.infos[self.prog];
        while let Some((t, g)) = next_slot(&self.cursor) {
            if t > to {
                break;
            }
            let next = t + reading_interval(&s.obs[info.groups[g][0]]);
            self.cursor[g] = if next > cx.horizon { i64::MAX } else { next };
            let mut values = [f64::NAN; 16];
            let taken = draw_reading(
                s,
                info,
                &self.levels,
                self.profile.adherence,
                self.enrol_at,
                &mut self.obs_rng,
                g,
                t,
                &mut values,
            );
            if !taken {
                continue;
            }
            cx.tally.path[self.prog].readings += 1;
            for k in &info.groups[g] {
                self.record(info, *k, values[*k], t);
            }
            let fired = update_alarms(
                info,
                self.alarms
                    .iter_mut()
                    .map(|a| (a.alarm, &mut a.matches, &mut a.on)),
                &values,
                t,
            );
            if fired.is_empty() {
                continue;
            }
            self.alarms_changed = true;
            let mut step = false;
            for alarm in fired {
                let model = &info.alarms[usize::from(alarm)];
                cx.tally.path[self.prog].alarms += 1;
                step |= self.push_event(info, format!("alarm:{}", model.id), t);
                let task = model.task.clone();
                self.create_task(cx, &task, t + task.due, false, 0, t);
            }
            return Some((t, step));
        }
        None
    }

    /// Looks ahead over the coming readings (with copies of the generator and the alarm state) for
    /// the first that would fire an alarm, so the patient is visited then and not every day.
    fn predict_alarm(&mut self, s: &Setup, from: i64) {
        self.alarms_changed = false;
        self.alarm_due = i64::MAX;
        let info = &s.infos[self.prog];
        if self.life != Life::Active
            || self.dead
            || !self
                .alarms
                .iter()
                .any(|a| info.alarms[usize::from(a.alarm)].cond.is_some())
        {
            return;
        }
        let limit = from + LOOKAHEAD;
        let mut rng = self.obs_rng.clone();
        let mut cursor = self.cursor.clone();
        let mut state: Vec<(u16, Vec<i64>, bool)> = self
            .alarms
            .iter()
            .map(|a| (a.alarm, a.matches.clone(), a.on))
            .collect();
        while let Some((t, g)) = next_slot(&cursor) {
            if t > limit {
                self.alarm_due = limit;
                return;
            }
            cursor[g] = t + reading_interval(&s.obs[info.groups[g][0]]);
            let mut values = [f64::NAN; 16];
            if !draw_reading(
                s,
                info,
                &self.levels,
                self.profile.adherence,
                self.enrol_at,
                &mut rng,
                g,
                t,
                &mut values,
            ) {
                continue;
            }
            let fired = update_alarms(
                info,
                state.iter_mut().map(|(a, m, on)| (*a, m, on)),
                &values,
                t,
            );
            if !fired.is_empty() {
                self.alarm_due = t;
                return;
            }
        }
    }

    fn record(&mut self, info: &PathwayInfo, k: usize, v: f64, t: i64) {
        if info.guard_obs[k].is_some() {
            self.facts.observations.push(Observation {
                kind: catalog::OBSERVATIONS[k].0.to_string(),
                value: v,
                at: ts(t),
            });
            // Old readings are dropped now and then (guards read their own windows anyway); the
            // newest of each kind always stays, for `latest`.
            if self.facts.observations.len() > self.obs_trim_at {
                let kinds: Vec<(&str, i64)> = info
                    .guard_obs
                    .iter()
                    .enumerate()
                    .filter_map(|(k, w)| w.map(|w| (catalog::OBSERVATIONS[k].0, w)))
                    .collect();
                let mut latest = vec![i64::MIN; kinds.len()];
                for o in &self.facts.observations {
                    if let Some(i) = kinds.iter().position(|(n, _)| *n == o.kind) {
                        latest[i] = latest[i].max(o.at.as_second());
                    }
                }
                self.facts.observations.retain(|o| {
                    match kinds.iter().position(|(n, _)| *n == o.kind) {
                        Some(i) => {
                            let at = o.at.as_second();
                            at == latest[i] || at > t - kinds[i].1
                        }
                        None => true,
                    }
                });
                self.obs_trim_at = self.facts.observations.len() + 8;
            }
        }
        if info.goal_obs[k].is_some() {
            self.goal_log.push((k as u8, v as f32, t));
            if self.goal_log.len() > self.goal_trim_at {
                self.goal_log.retain(|(kind, _, at)| {
                    *at > t - info.goal_obs[usize::from(*kind)].unwrap_or(0)
                });
                self.goal_trim_at = self.goal_log.len() + 16;
            }
        }
    }

    fn goal_met(&self, s: &Setup, g: &GoalModel, t: i64) -> bool {
        let since = t - g.over;
        let readings = self
            .goal_log
            .iter()
            .filter(|(k, _, at)| usize::from(*k) == g.kind && *at > since && *at <= t);
        if let Some((cond, at_least)) = &g.share {
            let Some(cond) = cond else { return false };
            let (mut n, mut hit) = (0u32, 0u32);
            for (_, v, _) in readings {
                n += 1;
                if cond.holds(&[f64::from(*v)]) {
                    hit += 1;
                }
            }
            n > 0 && f64::from(hit) / f64::from(n) >= *at_least
        } else {
            let mut days: Vec<usize> = readings.map(|(_, _, at)| s.day_of(*at)).collect();
            days.dedup();
            days.len() as u32 >= g.days.unwrap_or(1)
        }
    }

    fn create_task(
        &mut self,
        cx: &mut Cx,
        m: &TaskModel,
        due: i64,
        keep: bool,
        state_seq: u32,
        t: i64,
    ) {
        let no = self.next_task;
        self.next_task += 1;
        self.tasks.push(OpenTask {
            no,
            ref_ix: m.ref_ix,
            role: m.role,
            prio: m.prio,
            keep,
            state_seq,
            due,
            escalate_after: m.escalate_after,
        });
        let role = usize::from(m.role);
        cx.tally.roles[role].created += 1;
        cx.tally.path[self.prog].tasks_created += 1;
        let day = cx.s.day_of(t);
        cx.tally.created_by_day[day * cx.s.roles.len() + role] += 1;
        // Some tasks are never done; some cannot be done until the patient comes in.
        let info = &cx.s.infos[self.prog];
        let (missed, ready) = match info.task_behaviour.get(usize::from(m.ref_ix)) {
            Some((missed, ready)) => (*missed, ready.as_ref()),
            None => (info.missed_default, None),
        };
        if missed > 0.0 && self.rng.chance(missed) {
            return;
        }
        match ready {
            Some(d) => {
                let at = t + d.sample(&mut self.rng).max(0.0) as i64;
                self.schedule(at, Item::TaskReady(no), cx.horizon);
            }
            None => self.queue_task(cx, no, t),
        }
    }

    /// Puts an open task in its staff queue.
    fn queue_task(&mut self, cx: &mut Cx, no: u32, t: i64) {
        let Some(k) = self.tasks.iter().find(|k| k.no == no) else {
            return;
        };
        let q = cx.s.queue(self.profile.institution, k.role) as u32;
        cx.new_tasks.push((q, (k.prio, k.due, t, self.idx, no)));
    }

    /// Closes a task in the tallies: done (with whether a call reached the patient), cancelled,
    /// or still open when the run ends.
    fn close_task(&self, cx: &mut Cx, task: &OpenTask, done: Option<bool>, at: i64) {
        cx.closed.push((self.idx, task.no));
        let info = &cx.s.infos[self.prog];
        let call = task.ref_ix != NO_REF && info.task_calls[usize::from(task.ref_ix)];
        let r = &mut cx.tally.roles[usize::from(task.role)];
        let p = &mut cx.tally.path[self.prog];
        let was_due = match done {
            Some(_) => true,
            None => at >= task.due,
        };
        if was_due {
            r.due += 1;
            p.tasks_due += 1;
            if call {
                p.calls_due += 1;
            }
            if task.escalate_after.is_some_and(|e| at > task.due + e) {
                r.escalated += 1;
            }
        }
        match done {
            Some(reached) => {
                r.done += 1;
                p.tasks_done += 1;
                if at <= task.due {
                    r.on_time += 1;
                    p.tasks_on_time += 1;
                }
                if call && reached {
                    p.calls_reached += 1;
                }
                let day = cx.s.day_of(at);
                cx.tally.done_by_day[day * cx.s.roles.len() + usize::from(task.role)] += 1;
            }
            None if at >= cx.horizon => {
                r.open_at_end += 1;
                if task.due <= at {
                    r.overdue_at_end += 1;
                }
            }
            None => {
                r.cancelled += 1;
                p.tasks_cancelled += 1;
            }
        }
    }

    /// Staff completed task `no` at `t`.
    fn complete(&mut self, cx: &mut Cx, no: u32, t: i64) -> bool {
        let Some(i) = self.tasks.iter().position(|k| k.no == no) else {
            return false;
        };
        let task = self.tasks.swap_remove(i);
        let info = &cx.s.infos[self.prog];
        if task.ref_ix == NO_REF {
            self.close_task(cx, &task, Some(false), t);
            return false;
        }
        let (names, weights) = &info.outcomes[usize::from(task.ref_ix)];
        let mut outcome = names[self.rng.weighted(weights)].clone();
        if self.dead && names.iter().any(|n| n == "unreachable") {
            outcome = "unreachable".into();
        }
        let reached = cx.s.reached.contains(&outcome);
        self.close_task(cx, &task, Some(reached), t);
        if self.life != Life::Active {
            return false;
        }
        let id = &info.task_ids[usize::from(task.ref_ix)];
        if info.outcome_read[usize::from(task.ref_ix)] {
            match self.facts.outcomes.iter_mut().find(|(k, _)| k == id) {
                Some(slot) => slot.1 = outcome,
                None => self.facts.outcomes.push((id.clone(), outcome)),
            }
        }
        self.push_event(info, format!("task_done:{id}"), t)
    }

    fn step(&mut self, cx: &mut Cx, t: i64) {
        let s = cx.s;
        let info = &s.infos[self.prog];
        self.facts.open_tasks = self.tasks.len() as i64;
        self.facts.overdue_tasks = self.tasks.iter().filter(|k| k.due < t).count() as i64;
        if info.uses_goal_met {
            self.facts.goals_met = info
                .goals
                .iter()
                .filter(|g| self.goal_met(s, g, t))
                .map(|g| g.id.clone())
                .collect();
        }
        let Some(e) = &self.enrolment else { return };
        cx.tally.path[self.prog].steps += 1;
        match step::step(&s.programs[self.prog], e, &self.facts, &self.pending, ts(t)) {
            Ok(o) => self.apply(cx, o, t),
            Err(err) => self.fail(cx, err.to_string(), t),
        }
    }

    fn fail(&mut self, cx: &mut Cx, message: String, t: i64) {
        cx.tally.path[self.prog].errors += 1;
        cx.tally.errors.push((self.idx, message));
        self.end(cx, t);
    }

    /// The enrolment ended: open work is cancelled (kept tasks stay), nothing more is sent.
    fn end(&mut self, cx: &mut Cx, t: i64) {
        self.life = Life::Ended;
        self.ended_at = Some(t);
        let mut i = 0;
        while i < self.tasks.len() {
            if self.tasks[i].keep {
                i += 1;
            } else {
                let task = self.tasks.swap_remove(i);
                self.close_task(cx, &task, None, t);
            }
        }
        cx.tally.path[self.prog].follow_ups_cancelled += self.follow_ups.len() as u64;
        self.follow_ups.clear();
        self.alarms.clear();
        self.alarms_changed = true;
        self.alarm_due = i64::MAX;
        self.pending.clear();
        self.facts.observations.clear();
        self.facts.events.clear();
    }

    fn cancel_state_work(&mut self, cx: &mut Cx, seq: u32, at: i64) {
        let mut i = 0;
        while i < self.tasks.len() {
            if self.tasks[i].state_seq == seq && !self.tasks[i].keep {
                let task = self.tasks.swap_remove(i);
                self.close_task(cx, &task, None, at);
            } else {
                i += 1;
            }
        }
        let before = self.follow_ups.len();
        self.follow_ups.retain(|f| f.state_seq != seq);
        cx.tally.path[self.prog].follow_ups_cancelled += (before - self.follow_ups.len()) as u64;
        let armed = self.alarms.len();
        self.alarms
            .retain(|a| !(a.scope == AlarmScope::State && a.state_seq == seq));
        self.alarms_changed |= armed != self.alarms.len();
    }

    fn apply(&mut self, cx: &mut Cx, o: Outcome, t: i64) {
        let s = cx.s;
        let info = &s.infos[self.prog];
        for tr in &o.transitions {
            let from = info.state(&tr.from);
            let to = info.state(&tr.to);
            if let Some(slot) = cx.tally.taken.get_mut(info.t_off[from] + tr.index) {
                *slot += 1;
            }
            cx.tally.visits[info.state_off + to] += 1;
            self.cancel_state_work(cx, tr.left_seq, tr.at.as_second());
            self.fire_rules(cx, Hit::State(to), t);
        }
        self.state = info.state(&o.enrolment.state);
        for a in o.actions {
            let at = a.at.as_second().max(t);
            match a.action {
                Produced::Task {
                    task_ref,
                    role,
                    due_at,
                    priority,
                    sla,
                    keep,
                    ..
                } => {
                    let m = TaskModel {
                        ref_ix: task_ref
                            .and_then(|r| info.task_ids.iter().position(|x| *x == r))
                            .map_or(NO_REF, |i| i as u16),
                        role: s.roles.iter().position(|r| *r == role).unwrap_or(0) as u16,
                        due: 0,
                        prio: 3 - priority as u8,
                        escalate_after: sla.and_then(|x| x.escalate_after).map(seconds_of),
                    };
                    self.create_task(cx, &m, due_at.as_second(), keep, a.state_seq, at);
                }
                Produced::FollowUp {
                    channels, send_at, ..
                } => {
                    let send = send_at.as_second().max(at);
                    if send <= cx.horizon {
                        self.next_follow_up += 1;
                        let id = self.next_follow_up;
                        self.follow_ups.push(FollowUpSlot {
                            id,
                            state_seq: a.state_seq,
                            channels,
                        });
                        self.schedule(send, Item::FollowUp(id), cx.horizon);
                    }
                }
                Produced::ScalePush {
                    scale,
                    due_at,
                    expires_at,
                    ..
                } => {
                    let Some(ix) = scale_index(&scale) else {
                        continue;
                    };
                    let counted = due_at.as_second() <= cx.horizon;
                    if counted {
                        cx.tally.path[self.prog].scales_pushed += 1;
                    }
                    let m = &s.scales[ix];
                    let mut answered = false;
                    if !self.dead && self.rng.chance(m.answer) {
                        let delay = m.delay.sample(&mut self.rng).max(60.0) as i64;
                        let cutoff = expires_at
                            .map(|e| e.as_second())
                            .unwrap_or(due_at.as_second() + 7 * DAY);
                        if at + delay <= cutoff {
                            answered = true;
                            self.schedule(
                                at + delay,
                                Item::ScaleAnswer {
                                    scale: ix as u8,
                                    counted,
                                },
                                cx.horizon,
                            );
                        }
                    }
                    if let (false, Some(expires)) = (answered, expires_at) {
                        self.schedule(
                            expires.as_second(),
                            Item::ScaleExpired { scale: ix as u8 },
                            cx.horizon,
                        );
                    }
                }
                Produced::Risk {
                    model, score, band, ..
                } => {
                    if !info.guard_risks.contains(&model) {
                        continue;
                    }
                    self.facts.risks.retain(|r| r.model != model);
                    self.facts.risks.push(RiskResult {
                        model,
                        score,
                        band,
                        at: ts(at),
                    });
                }
                Produced::AlarmArmed { alarm } => {
                    if let Some(i) = info.alarms.iter().position(|x| x.id == alarm.id) {
                        self.alarms_changed = true;
                        self.alarms.retain(|x| usize::from(x.alarm) != i);
                        self.alarms.push(Armed {
                            alarm: i as u16,
                            scope: alarm.scope,
                            state_seq: a.state_seq,
                            matches: Vec::new(),
                            on: false,
                        });
                    }
                }
                Produced::Referral { direction, to, .. } => {
                    let p = &mut cx.tally.path[self.prog];
                    match direction {
                        Direction::Up => p.referrals_up += 1,
                        Direction::Down => p.referrals_down += 1,
                    }
                    let flow = s.flow(self.prog, direction, self.profile.institution, to);
                    cx.tally.flows[flow].count += 1;
                    let m = &s.referral[usize::from(direction == Direction::Down)];
                    let r = self.rng.unit_f();
                    let delay = m.delay.sample(&mut self.rng).max(60.0) as i64;
                    if r < m.accepted {
                        self.schedule(
                            at + delay,
                            Item::Referral {
                                what: 0,
                                flow: flow as u32,
                            },
                            cx.horizon,
                        );
                        if self.rng.chance(m.arrived) {
                            let more = m.arrive_delay.sample(&mut self.rng).max(60.0) as i64;
                            self.schedule(
                                at + delay + more,
                                Item::Referral {
                                    what: 2,
                                    flow: flow as u32,
                                },
                                cx.horizon,
                            );
                        }
                    } else if r < m.accepted + m.rejected {
                        self.schedule(
                            at + delay,
                            Item::Referral {
                                what: 1,
                                flow: flow as u32,
                            },
                            cx.horizon,
                        );
                    }
                }
                Produced::GoalSet { .. } | Produced::Note { .. } => {}
            }
        }
        let status = o.enrolment.status;
        let last = o.enrolment.last_event_seq;
        self.wake = o.next_wake.map_or(i64::MAX, |w| w.as_second());
        self.enrolment = Some(o.enrolment);
        self.pending.retain(|p| p.seq > last);
        if status != Status::Active {
            cx.tally.path[self.prog].completed += u64::from(status == Status::Completed);
            cx.tally.ended_in[info.state_off + self.state] += 1;
            self.end(cx, t);
        }
    }

    /// At the end of the run: open work, goals for the pathway's indicators.
    fn finish(&mut self, cx: &mut Cx) {
        let h = cx.horizon;
        // Readings nobody needed yet, for the indicators.
        while self.catch_up(cx, h).is_some() {}
        for task in std::mem::take(&mut self.tasks) {
            self.close_task(cx, &task, None, h);
        }
        if self.life == Life::Waiting {
            return;
        }
        let info = &cx.s.infos[self.prog];
        let at = self.ended_at.unwrap_or(h);
        for (i, ind) in info.indicators.iter().enumerate() {
            let Some(g) = ind.goal else { continue };
            cx.tally.path[self.prog].indicator_of[i] += 1;
            if self.goal_met(cx.s, &info.goals[g], at) {
                cx.tally.path[self.prog].indicator_met[i] += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Hit {
    Enrolled(usize),
    Event(u16),
    State(usize),
}

/// How far ahead a patient with armed alarms looks for the next alarm.
const LOOKAHEAD: i64 = 28 * DAY;

/// The earliest reading slot: (time, group), the lower group first on a tie.
fn next_slot(cursor: &[i64]) -> Option<(i64, usize)> {
    let mut best: Option<(i64, usize)> = None;
    for (g, t) in cursor.iter().enumerate() {
        if *t != i64::MAX && best.is_none_or(|(b, _)| *t < b) {
            best = Some((*t, g));
        }
    }
    best
}

/// One reading of group `g` at `t`, drawn from `rng` into `values`; false when the patient does
/// not take it.
#[allow(clippy::too_many_arguments)]
fn draw_reading(
    s: &Setup,
    info: &PathwayInfo,
    levels: &[(f64, f64)],
    adherence: f64,
    enrol_at: i64,
    rng: &mut SplitMix,
    g: usize,
    t: i64,
    values: &mut [f64; 16],
) -> bool {
    let group = &info.groups[g];
    let m0 = &s.obs[group[0]];
    if !rng.chance(adherence * m0.per_day.min(1.0)) {
        return false;
    }
    // Values read together are correlated (systolic and diastolic pressure).
    let (shared, own) = rng.normal_pair();
    for (j, k) in group.iter().enumerate() {
        let m = &s.obs[*k];
        let (base, drift) = levels[*k];
        values[*k] = match m.probability {
            Some(_) => f64::from(u8::from(rng.chance(base))),
            None => {
                let z = if j == 0 {
                    shared
                } else {
                    0.6 * shared + 0.8 * own
                };
                let level = base + drift * (t - enrol_at) as f64;
                let v = (level + m.noise * z).clamp(m.min, m.max);
                if m.round { v.round() } else { v }
            }
        };
    }
    true
}

/// Feeds a reading to alarm rules; returns those that turned from false to true.
fn update_alarms<'a>(
    info: &PathwayInfo,
    alarms: impl Iterator<Item = (u16, &'a mut Vec<i64>, &'a mut bool)>,
    values: &[f64; 16],
    t: i64,
) -> Vec<u16> {
    let mut fired = Vec::new();
    let read = values
        .iter()
        .enumerate()
        .fold(0u32, |m, (k, v)| if v.is_nan() { m } else { m | (1 << k) });
    for (alarm, matches, on) in alarms {
        let model = &info.alarms[usize::from(alarm)];
        let Some(cond) = &model.cond else { continue };
        if model.kinds & read == 0 {
            continue;
        }
        if cond.holds(values) {
            matches.push(t);
        }
        let since = t - model.within;
        matches.retain(|x| *x > since);
        let now_on = matches.len() >= model.count;
        if now_on && !*on {
            fired.push(alarm);
        }
        *on = now_on;
    }
    fired
}

fn reading_interval(m: &ObsModel) -> i64 {
    if m.per_day > 1.0 {
        (DAY as f64 / m.per_day.round()).max(60.0) as i64
    } else {
        DAY
    }
}

// ---- the clock ---------------------------------------------------------------------------------

/// Everything the run produced, before it is turned into a report.
pub struct Raw {
    pub tally: Tally,
    /// `[day × queues + queue]`: open tasks at the end of each day, and those of them overdue.
    pub backlog: Vec<u32>,
    pub overdue: Vec<u32>,
}

struct Tick {
    end: i64,
    /// `Some((slot, slots))` for working ticks: staff complete their share of the day.
    staff: Option<(u32, u32)>,
    start: i64,
}

fn ticks(s: &Setup, day: usize) -> Vec<Tick> {
    let d0 = s.day_starts[day];
    let d1 = s.day_starts[day + 1];
    let (w0, w1) = ((d0 + s.work_start).min(d1), (d0 + s.work_end).min(d1));
    let hours = ((w1 - w0) as f64 / 3_600.0).ceil().max(1.0) as u32;
    let mut out = vec![Tick {
        start: d0,
        end: w0,
        staff: None,
    }];
    for h in 0..hours {
        let start = w0 + i64::from(h) * 3_600;
        out.push(Tick {
            start,
            end: (start + 3_600).min(w1),
            staff: Some((h, hours)),
        });
    }
    out.push(Tick {
        start: w1,
        end: d1,
        staff: None,
    });
    out.retain(|t| t.end > t.start || t.staff.is_some());
    out
}

/// Tasks waiting in the staff queues: (patient, task number) → (queue, due time).
type Live = HashMap<(u32, u32), (u32, i64)>;

/// Staff at the start of a working tick: each queue completes its share of the day's capacity,
/// most urgent first. Returns, per chunk of patients, the completions: (patient, time, task).
fn staff(
    s: &Setup,
    queues: &mut [BinaryHeap<Reverse<Key>>],
    live: &mut Live,
    chunk: usize,
    chunks: usize,
    tick: &Tick,
) -> Vec<Vec<(u32, i64, u32)>> {
    let mut out = vec![Vec::new(); chunks];
    let Some((slot, slots)) = tick.staff else {
        return out;
    };
    let len = (tick.end - tick.start).max(1);
    for (q, heap) in queues.iter_mut().enumerate() {
        let per_day = u64::from(s.capacity[q]);
        let cap = (per_day * u64::from(slot + 1) / u64::from(slots)
            - per_day * u64::from(slot) / u64::from(slots)) as i64;
        let mut done = 0i64;
        while done < cap {
            let Some(Reverse(key)) = heap.pop() else {
                break;
            };
            // Done or cancelled since it was queued.
            if live.remove(&(key.3, key.4)).is_none() {
                continue;
            }
            let at = tick.start + (2 * done + 1) * len / (2 * cap);
            out[key.3 as usize / chunk].push((key.3, at, key.4));
            done += 1;
        }
    }
    out
}

/// What the tick loop needs of each patient, kept apart from the patients so scanning 100,000 of
/// them every tick stays in the cache.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the patient must next be visited.
    next: i64,
    /// The patient's state in the run's flat list of states, while the enrolment is active.
    state: u32,
}

const NO_STATE: u32 = u32::MAX;

/// What a chunk hands back after a tick.
#[derive(Default)]
struct TickOut {
    new_tasks: NewTasks,
    closed: Vec<(u32, u32)>,
}

fn live_chunk(
    s: &Setup,
    patients: &mut [Patient],
    clocks: &mut [Clock],
    tally: &mut Tally,
    to: i64,
    day_end: Option<usize>,
) -> TickOut {
    let mut out = TickOut::default();
    let mut cx = Cx {
        s,
        tally,
        new_tasks: &mut out.new_tasks,
        closed: &mut out.closed,
        horizon: s.horizon(),
    };
    for (p, clock) in patients.iter_mut().zip(clocks.iter_mut()) {
        if clock.next <= to {
            p.advance(&mut cx, to);
            clock.next = p.next_at();
            clock.state = if p.life == Life::Active {
                (s.infos[p.prog].state_off + p.state) as u32
            } else {
                NO_STATE
            };
        }
    }
    if let Some(day) = day_end {
        let base = day * s.total_states;
        for c in clocks.iter() {
            if c.state != NO_STATE {
                cx.tally.occupancy[base + c.state as usize] += 1;
            }
        }
    }
    out
}

enum Cmd {
    /// Staff completions for this chunk, then live up to `to`.
    Tick {
        to: i64,
        day_end: Option<usize>,
        done: Vec<(u32, i64, u32)>,
    },
    /// The run is over: close what is open.
    Finish,
}

/// A worker owns one chunk of patients for the whole run (so their memory stays with one thread)
/// and lives them tick by tick as the main thread says.
fn worker(
    s: &Setup,
    base: usize,
    patients: &mut [Patient],
    clocks: &mut [Clock],
    tally: &mut Tally,
    commands: std::sync::mpsc::Receiver<Cmd>,
    results: std::sync::mpsc::Sender<TickOut>,
) {
    while let Ok(cmd) = commands.recv() {
        let out = match cmd {
            Cmd::Tick { to, day_end, done } => {
                for (i, at, no) in done {
                    let l = i as usize - base;
                    patients[l].inbox.push((at, no));
                    clocks[l].next = clocks[l].next.min(at);
                }
                live_chunk(s, patients, clocks, tally, to, day_end)
            }
            Cmd::Finish => {
                let mut out = TickOut::default();
                let mut cx = Cx {
                    s,
                    tally,
                    new_tasks: &mut out.new_tasks,
                    closed: &mut out.closed,
                    horizon: s.horizon(),
                };
                for p in patients.iter_mut() {
                    p.finish(&mut cx);
                }
                let _ = results.send(TickOut::default());
                return;
            }
        };
        if results.send(out).is_err() {
            return;
        }
    }
}

/// Runs the whole cohort; `progress` is told each finished day.
pub fn simulate(s: &Setup, threads: usize, progress: &mut dyn FnMut(u32, u32)) -> Raw {
    let n = s.n as usize;
    let threads = threads.max(1);
    let mut patients: Vec<Patient> = (0..n).map(|i| Patient::new(s, i as u32)).collect();
    let mut clocks: Vec<Clock> = patients
        .iter()
        .map(|p| Clock {
            next: p.next_at(),
            state: NO_STATE,
        })
        .collect();
    let chunk = n.div_ceil(threads).max(1);
    let chunks = n.div_ceil(chunk);
    let mut tallies: Vec<Tally> = (0..chunks.max(1)).map(|_| Tally::new(s)).collect();
    let queues_n = s.institutions.len() * s.roles.len();
    let mut queues: Vec<BinaryHeap<Reverse<Key>>> = vec![BinaryHeap::new(); queues_n];
    let mut live: Live = HashMap::new();
    let days = s.days as usize;
    let mut backlog = vec![0u32; days * queues_n];
    let mut overdue = vec![0u32; days * queues_n];

    std::thread::scope(|scope| {
        let mut commands = Vec::new();
        let mut results = Vec::new();
        for (c, ((ps, cs), t)) in patients
            .chunks_mut(chunk)
            .zip(clocks.chunks_mut(chunk))
            .zip(tallies.iter_mut())
            .enumerate()
        {
            let (cmd_tx, cmd_rx) = std::sync::mpsc::channel();
            let (res_tx, res_rx) = std::sync::mpsc::channel();
            commands.push(cmd_tx);
            results.push(res_rx);
            scope.spawn(move || worker(s, c * chunk, ps, cs, t, cmd_rx, res_tx));
        }
        'run: for day in 0..days {
            let day_ticks = ticks(s, day);
            let last = day_ticks.len() - 1;
            for (k, tick) in day_ticks.iter().enumerate() {
                let done = staff(s, &mut queues, &mut live, chunk, chunks, tick);
                let day_end = (k == last).then_some(day);
                for (c, done) in done.into_iter().enumerate() {
                    let cmd = Cmd::Tick {
                        to: tick.end,
                        day_end,
                        done,
                    };
                    if commands[c].send(cmd).is_err() {
                        break 'run;
                    }
                }
                // Results in chunk order; new tasks before closed ones (a task may be both).
                for rx in &results {
                    let Ok(out) = rx.recv() else { break 'run };
                    for (q, key) in out.new_tasks {
                        live.insert((key.3, key.4), (q, key.1));
                        queues[q as usize].push(Reverse(key));
                    }
                    for k in out.closed {
                        live.remove(&k);
                    }
                }
            }
            // The day's backlog: tasks waiting in each queue, and those past their due time.
            let day_end = s.day_starts[day + 1];
            let mut waiting = vec![0usize; queues_n];
            for (q, due) in live.values() {
                let i = day * queues_n + *q as usize;
                backlog[i] += 1;
                waiting[*q as usize] += 1;
                if *due < day_end {
                    overdue[i] += 1;
                }
            }
            // Entries of tasks done or cancelled meanwhile are dropped now and then.
            for (q, heap) in queues.iter_mut().enumerate() {
                if heap.len() > 2 * waiting[q] + 1_024 {
                    heap.retain(|Reverse(k)| live.contains_key(&(k.3, k.4)));
                }
            }
            progress(day as u32 + 1, s.days);
        }
        for (tx, rx) in commands.iter().zip(&results) {
            if tx.send(Cmd::Finish).is_ok() {
                let _ = rx.recv();
            }
        }
        drop(commands);
    });

    let mut total = Tally::new(s);
    for t in &tallies {
        total.add(t);
    }
    total.errors.sort();
    Raw {
        tally: total,
        backlog,
        overdue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_day_with_hourly_working_ticks() {
        let sc = Scenario::default();
        let prog = crate::tests::program(crate::tests::TINY);
        let s = Setup::new(vec![prog], &sc, 10, 3, 1).unwrap();
        let t = ticks(&s, 1);
        assert_eq!(t.first().unwrap().start, s.day_starts[1]);
        assert_eq!(t.last().unwrap().end, s.day_starts[2]);
        assert_eq!(t.iter().filter(|t| t.staff.is_some()).count(), 10);
        for w in t.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        assert_eq!(s.day_of(s.day_starts[1]), 1);
        assert_eq!(s.day_of(s.day_starts[1] - 1), 0);
        assert_eq!(s.day_of(s.horizon() + 5), 2);
    }

    #[test]
    fn flows_round_trip() {
        let sc = Scenario::default();
        let prog = crate::tests::program(crate::tests::TINY);
        let s = Setup::new(vec![prog], &sc, 10, 3, 1).unwrap();
        for f in 0..s.n_flows() {
            let (p, d, i, k) = s.flow_parts(f);
            assert_eq!(s.flow(p, d, i, k), f);
        }
    }
}
