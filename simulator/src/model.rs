//! What the simulator needs to know about a pathway: its states and transitions, the life events
//! its patients can have, its tasks, alarms, goals and indicators, and which facts its guards read.
//!
//! The analysis runs once per pathway before the run; patients then read the result by index, so
//! nothing in the hot loop looks a name up in a map.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use carepath_dsl::{
    Action, GoalMeasure, Pathway, Phase, Priority, Trigger, VarType, VarValue, catalog,
};
use carepath_engine::alarms::AlarmRule;
use carepath_engine::scales::Scales;
use carepath_engine::step::Program;
use serde_json::Value;

use crate::cohort::{Dist, Unit};
use crate::scenario::Scenario;
use carepath_dsl::condition::Condition as Cond;

const YEAR: f64 = 365.25 * 86_400.0;
/// A task with no id: nothing reads its outcome.
pub(crate) const NO_REF: u16 = u16::MAX;

pub(crate) fn kind_index(kind: &str) -> Option<usize> {
    catalog::OBSERVATIONS.iter().position(|(k, _)| *k == kind)
}

pub(crate) fn scale_index(scale: &str) -> Option<usize> {
    catalog::SCALES.iter().position(|s| *s == scale)
}

// ---- what the simulator reads from a pathway ---------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) enum Anchor {
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
pub(crate) struct Rule {
    pub(crate) event: u16,
    pub(crate) anchor: Anchor,
    pub(crate) probability: f64,
    pub(crate) delay: Dist,
}

#[derive(Debug, Clone)]
pub(crate) struct TaskModel {
    pub(crate) ref_ix: u16,
    pub(crate) role: u16,
    pub(crate) due: i64,
    pub(crate) prio: u8,
    pub(crate) escalate_after: Option<i64>,
}

/// A critical item of a scale the pathway pushes: answered above its threshold, it raises an urgent
/// task, as the store does when a questionnaire is answered.
#[derive(Debug, Clone)]
pub(crate) struct CriticalModel {
    pub(crate) scale: usize,
    pub(crate) item: String,
    pub(crate) task: TaskModel,
}

/// An alarm rule: the core's rule machine (`carepath_core::alarms`), which the store runs too.
#[derive(Debug, Clone)]
pub(crate) struct AlarmModel {
    pub(crate) id: String,
    /// `None` when the rule does not compile (the validator refuses such a pathway).
    pub(crate) rule: Option<AlarmRule>,
    /// Observation kinds the rule reads, as a bit set: other readings do not touch it.
    pub(crate) kinds: u64,
    pub(crate) task: TaskModel,
}

#[derive(Debug, Clone)]
pub struct GoalModel {
    pub id: String,
    pub(crate) kind: usize,
    /// Share-of-readings goals: the reading rule and the share.
    pub(crate) share: Option<(Option<Cond>, f64)>,
    /// Days-logged goals: the number of days.
    pub(crate) days: Option<u32>,
    pub(crate) over: i64,
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
    pub(crate) state_ix: HashMap<String, u16>,
    /// Index of the pathway's first state in the run's flat list of states.
    pub state_off: usize,
    /// Index of each state's first transition in the run's flat list of transitions.
    pub t_off: Vec<usize>,
    pub n_transitions: usize,
    /// Life events the patients of this pathway can have, by index.
    pub events: Vec<String>,
    /// Every event a transition of the pathway listens for.
    pub listened: BTreeSet<String>,
    pub(crate) guard_events: BTreeSet<String>,
    pub(crate) guard_scales: BTreeSet<usize>,
    /// Risk models and task outcomes that guards read: only these are kept in the facts, which
    /// the step copies every time.
    pub(crate) guard_risks: BTreeSet<String>,
    pub(crate) outcome_read: Vec<bool>,
    /// Per observation kind: how far back guards read it (`Some(0)`: only the latest reading).
    pub(crate) guard_obs: Vec<Option<i64>>,
    pub(crate) goal_obs: Vec<Option<i64>>,
    /// Readings taken together (blood pressure is one reading of two values).
    pub(crate) groups: Vec<Vec<usize>>,
    pub(crate) uses_goal_met: bool,
    pub goals: Vec<GoalModel>,
    pub indicators: Vec<IndicatorModel>,
    pub(crate) alarms: Vec<AlarmModel>,
    /// The urgent tasks the critical items of the scales it pushes raise.
    pub(crate) critical: Vec<CriticalModel>,
    pub task_ids: Vec<String>,
    /// The ids of the pathway's follow-up and scale push actions, which a `cancel` may name.
    pub(crate) work_ids: Vec<String>,
    /// Per task id: a follow-up call as the indicators count it
    /// (`carepath_engine::indicators::is_follow_up_call`).
    pub(crate) follow_up_calls: Vec<bool>,
    pub(crate) outcomes: Vec<(Vec<String>, Vec<f64>)>,
    /// Per task id: probability staff never do it, and the delay before it can be done.
    pub(crate) task_behaviour: Vec<(f64, Option<Dist>)>,
    pub(crate) missed_default: f64,
    pub(crate) entry_weights: Vec<f64>,
    pub(crate) entry_admitted: Vec<bool>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) state_listens: Vec<Vec<u16>>,
    pub(crate) age: Dist,
    pub(crate) female: f64,
    /// Per observation kind: a shift of the default baseline for this pathway's population.
    pub(crate) obs_shift: Vec<f64>,
    pub(crate) variables: Vec<(String, VarType, Dist)>,
    pub(crate) charlson_default: Option<i64>,
    /// The pathway listens for `discharged`, so a length of stay means something.
    pub tracks_stay: bool,
}

impl PathwayInfo {
    /// The index in `work_ids` of a follow-up's or scale push's action id (`NO_REF`: none).
    pub(crate) fn work_ref(&self, id: Option<&str>) -> u16 {
        id.and_then(|id| self.work_ids.iter().position(|w| w == id))
            .map_or(NO_REF, |i| i as u16)
    }

    pub(crate) fn state(&self, id: &str) -> usize {
        self.state_ix.get(id).map_or(0, |i| usize::from(*i))
    }

    pub(crate) fn event_ix(&self, name: &str) -> Option<u16> {
        self.events.iter().position(|e| e == name).map(|i| i as u16)
    }
}

pub(crate) fn seconds_of(d: carepath_dsl::Duration) -> i64 {
    d.nominal_seconds()
}

pub(crate) fn dist(v: &Value, unit: Unit, what: &str) -> Result<Dist, String> {
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

/// Whether the patients make the event happen (admission, discharge, the pathway's own events),
/// rather than the engine as their work goes on: the catalogue's table tells them apart.
fn is_life_event(name: &str) -> bool {
    !carepath_dsl::catalog::is_engine_event(name)
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

/// Analyses one pathway of the run. `state_off` and `t_base` place its states and transitions in
/// the run's flat lists; problems the run can live with are added to `warnings`.
pub(crate) fn analyse(
    prog: &Program,
    sc: &Scenario,
    roles: &[String],
    state_off: usize,
    t_base: usize,
    warnings: &mut Vec<String>,
) -> Result<PathwayInfo, String> {
    let p = &prog.pathway;
    let reads = GuardReads::of(p);
    let layout = Layout::of(p, t_base);
    let (mut task_ids, alarms) = tasks_and_alarms(p, roles, warnings);
    let critical = critical_items(p, roles, &mut task_ids);
    let (goals, goal_obs) = goals(p, warnings);
    let indicators = indicators(p, &goals);
    let groups = reading_groups(sc, &reads.observations, &goal_obs, &alarms);
    let tasks = TaskBehaviour::of(sc, &task_ids, &reads)?;
    let (entry_weights, entry_admitted) = entries(p, sc);
    let life = LifeEvents::of(p, sc, &layout.listened, &reads.events, &entry_admitted)?;
    let population = Population::of(p, sc)?;
    Ok(PathwayInfo {
        id: p.id.clone(),
        states: p.states.iter().map(|s| s.id.clone()).collect(),
        terminal: p.states.iter().map(|s| s.terminal).collect(),
        state_ix: layout.state_ix,
        state_off,
        t_off: layout.t_off,
        n_transitions: layout.n_transitions,
        events: life.events,
        tracks_stay: layout.listened.contains("discharged"),
        listened: layout.listened,
        guard_events: reads.events,
        guard_scales: reads.scales,
        guard_risks: reads.risks,
        outcome_read: task_ids
            .iter()
            .map(|id| reads.outcomes.contains(id))
            .collect(),
        guard_obs: reads.observations,
        goal_obs,
        groups,
        uses_goal_met: reads.goals,
        goals,
        indicators,
        alarms,
        follow_up_calls: task_ids
            .iter()
            .map(|id| carepath_engine::indicators::is_follow_up_call(id))
            .collect(),
        critical,
        task_ids,
        work_ids: p
            .actions()
            .filter(|(_, a)| matches!(a, Action::FollowUp(_) | Action::Scale(_)))
            .filter_map(|(_, a)| a.work_id().map(str::to_string))
            .collect(),
        outcomes: tasks.outcomes,
        task_behaviour: tasks.behaviour,
        missed_default: tasks.missed_default,
        entry_weights,
        entry_admitted,
        rules: life.rules,
        state_listens: life.state_listens,
        age: population.age,
        female: population.female,
        obs_shift: population.obs_shift,
        variables: population.variables,
        charlson_default: population.charlson_default,
    })
}

/// What a pathway's guards and computed values read, from their syntax trees: only these facts
/// are kept for its patients.
struct GuardReads {
    events: BTreeSet<String>,
    scales: BTreeSet<usize>,
    /// Per observation kind: how far back it is read (`Some(0)`: only the latest reading).
    observations: Vec<Option<i64>>,
    risks: BTreeSet<String>,
    /// Tasks whose outcome is read.
    outcomes: BTreeSet<String>,
    /// Per task: the outcomes guards tell apart.
    outcome_values: BTreeMap<String, BTreeSet<String>>,
    /// Some guard reads whether a goal is met.
    goals: bool,
}

impl GuardReads {
    fn of(p: &Pathway) -> GuardReads {
        let mut out = GuardReads {
            events: BTreeSet::new(),
            scales: BTreeSet::new(),
            observations: vec![None; catalog::OBSERVATIONS.len()],
            risks: BTreeSet::new(),
            outcomes: BTreeSet::new(),
            outcome_values: BTreeMap::new(),
            goals: false,
        };
        for e in carepath_engine::sandbox::expressions(p) {
            let Some(r) = carepath_dsl::reads::reads(&e.0) else {
                continue;
            };
            out.events.extend(r.events);
            out.scales
                .extend(r.scales.iter().filter_map(|s| scale_index(s)));
            for (kind, window) in &r.observations {
                if let Some(k) = kind_index(kind) {
                    let w = window.map_or(0, seconds_of);
                    let slot = &mut out.observations[k];
                    *slot = Some(slot.unwrap_or(0).max(w));
                }
            }
            out.risks.extend(r.risks);
            out.outcomes.extend(r.outcomes);
            out.goals |= !r.goals.is_empty();
            for (task, value) in r.outcome_values {
                out.outcome_values.entry(task).or_default().insert(value);
            }
        }
        // The step reads the instants of the events its times count from, as guards read theirs.
        out.events
            .extend(p.timed_events().into_iter().map(str::to_string));
        out
    }
}

/// States, transitions and the events they listen for.
struct Layout {
    state_ix: HashMap<String, u16>,
    t_off: Vec<usize>,
    n_transitions: usize,
    listened: BTreeSet<String>,
}

impl Layout {
    fn of(p: &Pathway, t_base: usize) -> Layout {
        let mut out = Layout {
            state_ix: HashMap::new(),
            t_off: Vec::new(),
            n_transitions: 0,
            listened: BTreeSet::new(),
        };
        for (i, s) in p.states.iter().enumerate() {
            out.state_ix.insert(s.id.clone(), i as u16);
            out.t_off.push(t_base + out.n_transitions);
            out.n_transitions += s.transitions.len();
            for t in &s.transitions {
                if let Trigger::Event(name) = &t.trigger {
                    out.listened.insert(name.clone());
                }
            }
        }
        out
    }
}

/// The index of task id `id`, added when new; tasks without an id are `NO_REF`.
fn task_ref(id: &Option<String>, task_ids: &mut Vec<String>) -> u16 {
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
}

/// The pathway's task ids (in order of appearance) and its alarm rules.
fn tasks_and_alarms(
    p: &Pathway,
    roles: &[String],
    warnings: &mut Vec<String>,
) -> (Vec<String>, Vec<AlarmModel>) {
    let role_ix = |r: &str| roles.iter().position(|x| x == r).unwrap_or(0) as u16;
    let mut task_ids: Vec<String> = Vec::new();
    let mut alarms = Vec::new();
    for (_, a) in p.actions() {
        match a {
            Action::Task(t) => {
                task_ref(&t.id, &mut task_ids);
            }
            Action::Alarm(a) => {
                let rule = match AlarmRule::compile(a) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        warnings.push(format!(
                            "{}: alarm `{}` cannot run ({e}); it never fires",
                            p.id, a.id
                        ));
                        None
                    }
                };
                let ref_ix = task_ref(&a.task.id, &mut task_ids);
                let kinds = rule.as_ref().map_or(0, AlarmRule::kinds);
                alarms.push(AlarmModel {
                    id: a.id.clone(),
                    rule,
                    kinds,
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
            _ => {}
        }
    }
    (task_ids, alarms)
}

/// The critical items of every scale the pathway pushes; their tasks' ids
/// (`critical_<scale>_<item>`, as the store names them) join `task_ids`.
fn critical_items(p: &Pathway, roles: &[String], task_ids: &mut Vec<String>) -> Vec<CriticalModel> {
    let mut pushed: BTreeSet<&str> = BTreeSet::new();
    for (_, a) in p.actions() {
        if let Action::Scale(push) = a {
            pushed.insert(&push.scale);
        }
    }
    let mut out = Vec::new();
    for name in pushed {
        let (Some(scale), Some(def)) = (scale_index(name), Scales::builtin().get(name)) else {
            continue;
        };
        for rule in &def.critical {
            let id = format!("critical_{name}_{}", rule.item);
            out.push(CriticalModel {
                scale,
                item: rule.item.clone(),
                task: TaskModel {
                    ref_ix: task_ref(&Some(id), task_ids),
                    role: roles.iter().position(|x| *x == rule.role).unwrap_or(0) as u16,
                    due: seconds_of(rule.due()),
                    prio: 3 - Priority::Urgent as u8,
                    escalate_after: rule.sla().and_then(|s| s.escalate_after).map(seconds_of),
                },
            });
        }
    }
    out
}

/// The pathway's goals (declared at its top and set by actions), and per observation kind how
/// far back they read it.
fn goals(p: &Pathway, warnings: &mut Vec<String>) -> (Vec<GoalModel>, Vec<Option<i64>>) {
    let mut goals_src: Vec<&carepath_dsl::Goal> = p.goals.iter().collect();
    for (_, a) in p.actions() {
        if let Action::Goal(g) = a
            && !goals_src.iter().any(|x| x.id == g.id)
        {
            goals_src.push(g);
        }
    }
    let mut goal_obs: Vec<Option<i64>> = vec![None; catalog::OBSERVATIONS.len()];
    let mut goals = Vec::new();
    for g in goals_src {
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
    (goals, goal_obs)
}

fn indicators(p: &Pathway, goals: &[GoalModel]) -> Vec<IndicatorModel> {
    p.indicators
        .iter()
        .map(|i| IndicatorModel {
            id: i.id.clone(),
            title: i.title.en.clone(),
            numerator: i.numerator.clone(),
            denominator: i.denominator.clone(),
            target: i.target,
            // The validator has parsed every counter with the same grammar; one that does not
            // parse here counts nothing.
            goal: match carepath_dsl::counter::Counter::parse(&i.numerator) {
                Ok(carepath_dsl::counter::Counter::GoalMet(g)) => {
                    goals.iter().position(|x| x.id == g)
                }
                _ => None,
            },
        })
        .collect()
}

/// Device readings taken, grouped as they are taken together (blood pressure is one reading of
/// two values): what guards, goals and alarms read, and what the scenario asks for.
fn reading_groups(
    sc: &Scenario,
    guard_obs: &[Option<i64>],
    goal_obs: &[Option<i64>],
    alarms: &[AlarmModel],
) -> Vec<Vec<usize>> {
    let mut needed: BTreeSet<usize> = BTreeSet::new();
    for (k, w) in guard_obs.iter().enumerate() {
        if w.is_some() || goal_obs[k].is_some() {
            needed.insert(k);
        }
    }
    for a in alarms {
        needed.extend((0..catalog::OBSERVATIONS.len()).filter(|k| a.kinds & (1 << k) != 0));
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
    groups
}

/// How staff and patients handle each task: the outcomes staff record (call outcomes for the
/// tasks the scenario treats as calls), tasks staff miss and tasks that wait for the patient.
struct TaskBehaviour {
    outcomes: Vec<(Vec<String>, Vec<f64>)>,
    behaviour: Vec<(f64, Option<Dist>)>,
    missed_default: f64,
}

impl TaskBehaviour {
    fn of(sc: &Scenario, task_ids: &[String], reads: &GuardReads) -> Result<TaskBehaviour, String> {
        let calls_given: Option<&Vec<String>> = sc.tasks.calls.as_ref();
        let calls: Vec<bool> = task_ids
            .iter()
            .map(|id| calls_given.map_or(id.ends_with("_call"), |c| c.contains(id)))
            .collect();
        let mut outcomes = Vec::new();
        for (i, id) in task_ids.iter().enumerate() {
            let over = sc.tasks.outcomes.get(id).or_else(|| {
                sc.tasks
                    .outcomes
                    .get(if calls[i] { "default_call" } else { "default" })
            });
            outcomes.push(match over {
                Some(m) => (m.keys().cloned().collect(), m.values().copied().collect()),
                None => default_outcomes(
                    calls[i],
                    reads.outcome_values.get(id).unwrap_or(&BTreeSet::new()),
                ),
            });
        }
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
        let mut behaviour = Vec::new();
        for id in task_ids {
            let ready = match sc.tasks.ready_after.get(id) {
                Some(v) => Some(dist(v, Unit::Seconds, &format!("tasks.ready_after.{id}"))?),
                None => None,
            };
            behaviour.push((missed_of(Some(id))?, ready));
        }
        Ok(TaskBehaviour {
            outcomes,
            behaviour,
            missed_default: missed_of(None)?,
        })
    }
}

/// Weights of the entry points, and which of them admit the patient to hospital.
fn entries(p: &Pathway, sc: &Scenario) -> (Vec<f64>, Vec<bool>) {
    let weights: Vec<f64> = if p
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
    let admitted: Vec<bool> = p
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
    (weights, admitted)
}

/// Life events the patients can have (those the pathway listens for or its guards read), the
/// rules that make them happen, and per state the events it listens for.
struct LifeEvents {
    events: Vec<String>,
    rules: Vec<Rule>,
    state_listens: Vec<Vec<u16>>,
}

impl LifeEvents {
    fn of(
        p: &Pathway,
        sc: &Scenario,
        listened: &BTreeSet<String>,
        guard_events: &BTreeSet<String>,
        entry_admitted: &[bool],
    ) -> Result<LifeEvents, String> {
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
            let event = events.iter().position(|e| e == ev).unwrap_or(0) as u16;
            for (after, probability, delay, rate) in rule_specs(sc, ev)? {
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
        Ok(LifeEvents {
            events,
            rules,
            state_listens,
        })
    }
}

/// The rules for life event `ev`: the scenario's, or the built-in ones — each as (after,
/// probability, delay, rate per year).
#[allow(clippy::type_complexity)]
fn rule_specs(
    sc: &Scenario,
    ev: &str,
) -> Result<Vec<(Option<String>, f64, Dist, Option<f64>)>, String> {
    let own: Vec<&crate::scenario::EventRule> =
        sc.events.iter().filter(|r| r.event == ev).collect();
    if own.is_empty() {
        return Ok(default_rules(ev)
            .into_iter()
            .map(|(a, prob, d)| {
                if a.is_none() {
                    (None, 1.0, d, Some(prob))
                } else {
                    (a.map(str::to_string), prob, d, None)
                }
            })
            .collect());
    }
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
    Ok(v)
}

/// Who the pathway's patients are: age, sex, reading baselines and drawn variables.
struct Population {
    age: Dist,
    female: f64,
    obs_shift: Vec<f64>,
    variables: Vec<(String, VarType, Dist)>,
    charlson_default: Option<i64>,
}

impl Population {
    fn of(p: &Pathway, sc: &Scenario) -> Result<Population, String> {
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
                let d = match v.ty {
                    VarType::Number | VarType::Integer | VarType::Bool => {
                        dist(d, Unit::Plain, &format!("patients.variables.{}", v.name))?
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
        Ok(Population {
            age,
            female,
            obs_shift,
            variables,
            charlson_default,
        })
    }
}

/// Whether `event` takes the built-in rules (the scenario gives none).
fn own_default(sc: &Scenario, event: &str) -> bool {
    !sc.events.iter().any(|r| r.event == event)
}
