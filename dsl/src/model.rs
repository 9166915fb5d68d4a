//! The validated pathway model that both front-ends build and the engine runs.
//!
//! The model holds no source positions, so a YAML pathway and its Rhai twin compare equal; positions
//! live only in diagnostics. Expressions are kept as source text: the engine compiles them once per
//! pathway version into its sandbox.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Text {
    pub zh: String,
    pub en: String,
}

impl Text {
    pub fn both(s: &str) -> Text {
        Text {
            zh: s.to_string(),
            en: s.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pathway {
    pub id: String,
    pub version: u32,
    pub title: Text,
    pub description: Option<String>,
    pub disease: Option<String>,
    pub owner_role: String,
    pub roles: Vec<String>,
    pub variables: Vec<Variable>,
    /// The pathway's own events (anything but the built-in ones), as declared under `events:`.
    /// Versions published before events were declared have none, so an absent list reads as
    /// empty, and an empty one is left out of the model (and its hash).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventDecl>,
    pub entry_points: Vec<EntryPoint>,
    pub states: Vec<State>,
    /// Repeating occurrences while the enrolment is active, in whatever state it is. Left out of
    /// the serialised model when there are none, so a pathway without them keeps its hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
    pub goals: Vec<Goal>,
    pub indicators: Vec<Indicator>,
}

impl Pathway {
    pub fn state(&self, id: &str) -> Option<&State> {
        self.states.iter().find(|s| s.id == id)
    }

    pub fn state_index(&self, id: &str) -> Option<usize> {
        self.states.iter().position(|s| s.id == id)
    }

    pub fn entry_point(&self, id: &str) -> Option<&EntryPoint> {
        self.entry_points.iter().find(|e| e.id == id)
    }

    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables.iter().find(|v| v.name == name)
    }

    /// The values an event sets, read from JSON and checked against the declared variables: each
    /// name must be declared and each value of its type (an integer is a number too; a number is
    /// an integer only when whole). The error names the variable and what was wrong.
    pub fn event_vars(
        &self,
        data: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<std::collections::BTreeMap<String, VarValue>, String> {
        let mut out = std::collections::BTreeMap::new();
        for (name, value) in data {
            let Some(var) = self.variable(name) else {
                let declared: Vec<&str> = self.variables.iter().map(|v| v.name.as_str()).collect();
                return Err(format!(
                    "`{name}` is not a variable of pathway {} (declared: {})",
                    self.id,
                    if declared.is_empty() {
                        "none".to_string()
                    } else {
                        declared.join(", ")
                    }
                ));
            };
            let typed = match (var.ty, value) {
                (VarType::Bool, serde_json::Value::Bool(b)) => Some(VarValue::Bool(*b)),
                (VarType::Text, serde_json::Value::String(t)) if t.len() <= 1024 => {
                    Some(VarValue::Text(t.clone()))
                }
                (VarType::Integer, serde_json::Value::Number(n)) => n
                    .as_i64()
                    .or_else(|| {
                        n.as_f64()
                            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                            .map(|f| f as i64)
                    })
                    .map(VarValue::Integer),
                (VarType::Number, serde_json::Value::Number(n)) => {
                    n.as_f64().filter(|f| f.is_finite()).map(VarValue::Number)
                }
                _ => None,
            };
            let Some(typed) = typed else {
                return Err(format!(
                    "variable `{name}` is {} but was given {value}",
                    match var.ty {
                        VarType::Bool => "a bool (true or false)",
                        VarType::Integer => "an integer",
                        VarType::Number => "a number",
                        VarType::Text => "text (a string of at most 1024 bytes)",
                    }
                ));
            };
            out.insert(name.clone(), typed);
        }
        Ok(out)
    }

    /// Every action of every state (on entry and in its schedules), with the state it belongs to,
    /// then the actions of the enrolment's own schedules (with no state).
    pub fn actions(&self) -> impl Iterator<Item = (Option<&State>, &Action)> {
        self.states
            .iter()
            .flat_map(|s| s.actions().map(move |a| (Some(s), a)))
            .chain(
                self.schedules
                    .iter()
                    .flat_map(|sc| sc.actions.iter().map(|a| (None, a))),
            )
    }

    /// The id of every schedule: the enrolment's own, then the states', each once.
    pub fn schedule_ids(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.schedules.iter().map(|sc| sc.id.as_str()).collect();
        for s in &self.states {
            for sc in &s.schedules {
                if !out.contains(&sc.id.as_str()) {
                    out.push(&sc.id);
                }
            }
        }
        out
    }

    /// Every event whose instant a time of the pathway counts from (`from: <event>` of a
    /// transition, a task's due, a follow-up, a schedule's first occurrence or its `until`) or a
    /// schedule stops at (`until: { event: … }`), each once: besides what guards read, the events
    /// the step reads the time of.
    pub fn timed_events(&self) -> Vec<&str> {
        let mut anchors: Vec<&Anchor> = Vec::new();
        let mut stops: Vec<&str> = Vec::new();
        let schedules = self
            .schedules
            .iter()
            .chain(self.states.iter().flat_map(|s| s.schedules.iter()));
        for sc in schedules {
            anchors.push(&sc.first.from);
            match &sc.until {
                Some(Until::At(spec)) => anchors.push(&spec.from),
                Some(Until::Event(name)) => stops.push(name),
                None => {}
            }
        }
        for t in self.states.iter().flat_map(|s| s.transitions.iter()) {
            if let Trigger::Anchored(spec) = &t.trigger {
                anchors.push(&spec.from);
            }
        }
        for t in self.task_specs() {
            if let Some(spec) = &t.due_at {
                anchors.push(&spec.from);
            }
        }
        for (_, a) in self.actions() {
            if let Action::FollowUp(f) = a {
                anchors.push(&f.from);
            }
        }
        let named = anchors
            .into_iter()
            .filter_map(|a| match a {
                Anchor::Event(name) => Some(name.as_str()),
                _ => None,
            })
            .chain(stops);
        let mut out: Vec<&str> = Vec::new();
        for name in named {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Every task the pathway can create: its own tasks and its alarms' tasks.
    pub fn task_specs(&self) -> impl Iterator<Item = &TaskSpec> {
        self.actions().filter_map(|(_, a)| match a {
            Action::Task(t) => Some(t),
            Action::Alarm(a) => Some(&a.task),
            _ => None,
        })
    }

    /// The tasks of [`Pathway::task_specs`] that have an id, by id.
    pub fn tasks(&self) -> impl Iterator<Item = (&str, &TaskSpec)> {
        self.task_specs()
            .filter_map(|t| t.id.as_deref().map(|id| (id, t)))
    }

    /// The `task_ref` of every task the pathway can make, as the store records it and as
    /// `task_done:<task>` names it: task ids, alarm tasks (by their id, else `alarm_<alarm>`), and
    /// the critical-item tasks (`critical_<scale>_<item>`) of the scales it pushes.
    pub fn task_refs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, a) in self.actions() {
            let r = match a {
                Action::Task(t) => t.id.clone(),
                Action::Alarm(al) => Some(
                    al.task
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("alarm_{}", al.id)),
                ),
                _ => None,
            };
            if let Some(r) = r
                && !out.contains(&r)
            {
                out.push(r);
            }
        }
        for scale in self.scales_pushed() {
            for rule in crate::catalog::CRITICAL_RULES
                .iter()
                .filter(|r| r.scale == scale)
            {
                out.push(format!("critical_{scale}_{}", rule.item));
            }
        }
        out
    }

    /// The scales the pathway pushes, each once, in the order first pushed.
    pub fn scales_pushed(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (_, a) in self.actions() {
            if let Action::Scale(s) = a
                && !out.contains(&s.scale.as_str())
            {
                out.push(&s.scale);
            }
        }
        out
    }

    /// The ids of the pathway's alarm rules.
    pub fn alarm_ids(&self) -> impl Iterator<Item = &str> {
        self.actions().filter_map(|(_, a)| match a {
            Action::Alarm(al) => Some(al.id.as_str()),
            _ => None,
        })
    }

    /// The outcomes completing the task with this id accepts; tasks the pathway does not name
    /// (escalations, scale critical-item tasks) accept the default set.
    pub fn accepted_outcomes(&self, task_ref: Option<&str>) -> Vec<&str> {
        match task_ref.and_then(|r| self.tasks().find(|(id, _)| *id == r)) {
            Some((_, t)) => t.accepted_outcomes(),
            None => crate::catalog::TASK_OUTCOMES.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarType {
    Number,
    Integer,
    Bool,
    Text,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum VarValue {
    Bool(bool),
    Integer(i64),
    Number(f64),
    Text(String),
}

impl VarValue {
    pub fn type_of(&self) -> VarType {
        match self {
            VarValue::Bool(_) => VarType::Bool,
            VarValue::Integer(_) => VarType::Integer,
            VarValue::Number(_) => VarType::Number,
            VarValue::Text(_) => VarType::Text,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    pub name: String,
    pub ty: VarType,
    pub default: VarValue,
    pub description: Option<String>,
}

/// An event of the pathway's own, declared under `events:`: something outside the engine (a
/// device, an app, a ward system) tells the enrolment through `POST /enrolments/{id}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDecl {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryPoint {
    pub id: String,
    pub state: String,
    pub title: Option<Text>,
    pub set: Vec<(String, VarValue)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    PreAdmission,
    AdmissionAssessment,
    InHospital,
    DischargePreparation,
    Referral,
    FollowUp,
    Closed,
}

impl Phase {
    pub const ALL: [(&'static str, Phase); 7] = [
        ("pre_admission", Phase::PreAdmission),
        ("admission_assessment", Phase::AdmissionAssessment),
        ("in_hospital", Phase::InHospital),
        ("discharge_preparation", Phase::DischargePreparation),
        ("referral", Phase::Referral),
        ("follow_up", Phase::FollowUp),
        ("closed", Phase::Closed),
    ];

    pub fn as_str(self) -> &'static str {
        Phase::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(s, _)| *s)
            .unwrap_or("closed")
    }

    /// Colour used for graphs, one per phase of the course of care.
    pub fn colour(self) -> &'static str {
        match self {
            Phase::PreAdmission => "#e3f2fd",
            Phase::AdmissionAssessment => "#fff3e0",
            Phase::InHospital => "#fce4ec",
            Phase::DischargePreparation => "#f3e5f5",
            Phase::Referral => "#e0f7fa",
            Phase::FollowUp => "#e8f5e9",
            Phase::Closed => "#eeeeee",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub phase: Phase,
    pub title: Option<Text>,
    pub terminal: bool,
    /// On a terminal state: the enrolment's kept tasks (`keep: true`) stay open when it ends here
    /// instead of being cancelled.
    #[serde(default, skip_serializing_if = "is_false")]
    pub keep_open_tasks: bool,
    pub on_enter: Vec<Action>,
    pub transitions: Vec<Transition>,
    /// Repeating occurrences while the state holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<Schedule>,
}

impl State {
    /// The state's actions: on entry, then each schedule's.
    pub fn actions(&self) -> impl Iterator<Item = &Action> {
        self.on_enter
            .iter()
            .chain(self.schedules.iter().flat_map(|s| s.actions.iter()))
    }
}

/// What a time is counted from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// The entry into the state that makes the work (the default).
    #[default]
    State,
    /// The start of the enrolment.
    Enrolment,
    /// An event of the enrolment (see each use for which occurrence).
    Event(String),
}

impl Anchor {
    pub fn describe(&self) -> String {
        match self {
            Anchor::State => "entering the state".into(),
            Anchor::Enrolment => "enrolment".into(),
            Anchor::Event(e) => format!("`{e}`"),
        }
    }
}

/// A point in time: `after` from an anchor, optionally at a local time of day on the day reached
/// ("day 2 at 18:00 after discharge" is `{ after: 2d, at: "18:00", from: discharged }`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeSpec {
    pub after: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<LocalTime>,
    #[serde(default)]
    pub from: Anchor,
}

/// What a schedule does with occurrences whose instant passed while the engine was not running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Every missed occurrence is made, late, with its own due times.
    #[default]
    All,
    /// Only the latest missed occurrence is made; the earlier ones are recorded as skipped.
    Latest,
    /// No missed occurrence is made; each is recorded as skipped.
    Skip,
}

impl Missed {
    pub const ALL: [(&'static str, Missed); 3] = [
        ("all", Missed::All),
        ("latest", Missed::Latest),
        ("skip", Missed::Skip),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Missed::All => "all",
            Missed::Latest => "latest",
            Missed::Skip => "skip",
        }
    }
}

/// When a schedule's occurrences stop (besides leaving the state and `count`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Until {
    /// No occurrence after this time.
    At(TimeSpec),
    /// No occurrence at or after the first time this event happens in the state.
    Event(String),
}

/// A repeating occurrence attached to a state, or to the whole enrolment (`Pathway::schedules`):
/// first at `first`, then every `every`, until `until` or `count`, and never once its scope (the
/// state, or the enrolment) is left. Each occurrence makes `actions`, their
/// times counted from the occurrence and their keys carrying its number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub first: TimeSpec,
    pub every: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Until>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(default)]
    pub missed: Missed,
    /// How late an occurrence may be made before it counts as missed.
    pub grace: Duration,
    /// An occurrence that falls on a day off moves to the same time on the next working day.
    #[serde(default)]
    pub working_days: bool,
    pub actions: Vec<Action>,
}

impl Schedule {
    /// The default lateness an occurrence tolerates before it counts as missed: one nightly pass.
    pub const GRACE: Duration = Duration {
        amount: 24,
        unit: DurationUnit::Hours,
    };
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Task(TaskSpec),
    FollowUp(FollowUpSpec),
    Scale(ScalePushSpec),
    Risk(RiskSpec),
    Alarm(AlarmSpec),
    Referral(ReferralSpec),
    Goal(Goal),
    Note(Text),
    Set(Vec<(String, Expr)>),
    /// Cancels the open work (task, follow-up, scale push) made earlier in the enrolment by the
    /// action with this id.
    Cancel(String),
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Task(_) => "task",
            Action::FollowUp(_) => "follow_up",
            Action::Scale(_) => "scale",
            Action::Risk(_) => "risk",
            Action::Alarm(_) => "alarm",
            Action::Referral(_) => "referral",
            Action::Goal(_) => "goal",
            Action::Note(_) => "note",
            Action::Set(_) => "set",
            Action::Cancel(_) => "cancel",
        }
    }

    /// The id of a task, follow-up or scale push action: the work a `cancel` action can name.
    pub fn work_id(&self) -> Option<&str> {
        match self {
            Action::Task(t) => t.id.as_deref(),
            Action::FollowUp(f) => f.id.as_deref(),
            Action::Scale(s) => s.id.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

impl Priority {
    pub const ALL: [(&'static str, Priority); 4] = [
        ("low", Priority::Low),
        ("normal", Priority::Normal),
        ("high", Priority::High),
        ("urgent", Priority::Urgent),
    ];

    pub fn as_str(self) -> &'static str {
        Priority::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(s, _)| *s)
            .unwrap_or("normal")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: Option<String>,
    pub role: String,
    pub title: Text,
    pub due: Duration,
    /// A due time counted from an anchor other than the state's entry, or at a time of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<TimeSpec>,
    pub priority: Priority,
    pub sla: Option<Sla>,
    /// Keep the task open when the patient leaves the state.
    pub keep: bool,
    /// A scale whose critical-item task this task takes over: creating it cancels the patient's
    /// open urgent task raised by that scale's critical rule, so one finding pages one person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covers_critical: Option<String>,
    /// The outcomes staff may record when completing the task; empty means the default set
    /// ([`crate::catalog::TASK_OUTCOMES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<String>,
}

impl TaskSpec {
    /// The outcomes completing this task accepts: the declared ones, else the default set.
    pub fn accepted_outcomes(&self) -> Vec<&str> {
        if self.outcomes.is_empty() {
            crate::catalog::TASK_OUTCOMES.to_vec()
        } else {
            self.outcomes.iter().map(String::as_str).collect()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sla {
    pub remind_before: Option<Duration>,
    pub escalate_after: Option<Duration>,
    pub escalate_to: Option<String>,
}

impl Sla {
    /// The instant (seconds) a task due at `due_at` escalates: `escalate_after` past its due
    /// time, counted in nominal seconds. None when the SLA names no role or no delay to escalate.
    pub fn escalates_at(&self, due_at: i64) -> Option<i64> {
        self.escalate_to.as_ref()?;
        Some(due_at + self.escalate_after?.nominal_seconds())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Wechat,
    Sms,
    Phone,
    Email,
}

impl Channel {
    pub const ALL: [(&'static str, Channel); 4] = [
        ("wechat", Channel::Wechat),
        ("sms", Channel::Sms),
        ("phone", Channel::Phone),
        ("email", Channel::Email),
    ];

    pub fn as_str(self) -> &'static str {
        Channel::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map(|(s, _)| *s)
            .unwrap_or("sms")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowUpSpec {
    pub id: Option<String>,
    pub channels: Vec<Channel>,
    pub template: String,
    pub after: Duration,
    pub at: Option<LocalTime>,
    /// What `after` is counted from.
    #[serde(default, skip_serializing_if = "is_state_anchor")]
    pub from: Anchor,
    pub urgent: bool,
}

fn is_state_anchor(a: &Anchor) -> bool {
    *a == Anchor::State
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalePushSpec {
    /// Names the push for `cancel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub scale: String,
    pub due: Duration,
    /// Reminders counted from the push, each a message over the patient's preferred channel.
    pub reminders: Vec<Duration>,
    pub expires: Option<Duration>,
    /// A reminder chain counted from the push's due time: each step a message over named
    /// channels with a named template, or a task for a role. The steps still to come are
    /// cancelled the moment the push is answered (or expires, or its enrolment ends).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ReminderStep>,
    /// The message that brings the push to the patient when it is made, over named channels
    /// with a named template; without it the patient finds the push in the app or portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<Invite>,
}

/// A message sent with a scale push (`channels:` and `template:` on the push).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invite {
    pub channels: Vec<Channel>,
    pub template: String,
}

/// One step of a scale push's reminder chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReminderStep {
    /// After the push's due time (`0m`: at the due).
    pub after: Duration,
    pub by: ReminderBy,
}

/// How a reminder step reaches the patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReminderBy {
    Message {
        channels: Vec<Channel>,
        template: String,
    },
    Task {
        role: String,
        title: Text,
        due: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskSpec {
    pub id: String,
    pub model: RiskModel,
    /// Band names with their lower bounds, ascending.
    pub bands: Vec<(String, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskModel {
    /// The LACE readmission index (length of stay, acuity, comorbidity, emergency visits).
    Lace,
    Logistic {
        intercept: f64,
        terms: Vec<RiskTerm>,
    },
    Formula(Expr),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskTerm {
    pub name: String,
    pub expr: Expr,
    pub coef: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmScope {
    State,
    Enrolment,
}

/// An alarm rule. It is raised either by readings (`when`, debounced by `count` within `within`,
/// or by an unbroken run of `consecutive` readings held for `held_for`) and cleared by `clear`
/// (or, without it, by the raising condition no longer holding); or by silence (`no_reading`),
/// and cleared by the next reading of that kind. Fields added after the first release are left
/// out of the serialised model when unset, so a pathway that does not use them keeps its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmSpec {
    pub id: String,
    /// The reading condition that raises the alarm; `None` for a no-reading alarm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Expr>,
    pub count: u32,
    pub within: Duration,
    /// Raised only by this many matching readings in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
    /// Raised only once matching readings have run unbroken for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_for: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<AlarmClear>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_reading: Option<NoReading>,
    pub scope: AlarmScope,
    pub task: TaskSpec,
}

/// What clears a raised alarm (hysteresis): a reading condition of its own, debounced like the
/// raising one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmClear {
    pub when: Expr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_for: Option<Duration>,
}

/// A no-reading alarm: raised once the latest reading of `kind` (or the arming of the rule, if
/// later) is `after` old.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoReading {
    pub kind: String,
    #[serde(rename = "for")]
    pub after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstitutionKind {
    LeadHospital,
    CommunityClinic,
    TownshipHospital,
    SpecialistHospital,
}

impl InstitutionKind {
    pub const ALL: [(&'static str, InstitutionKind); 4] = [
        ("lead_hospital", InstitutionKind::LeadHospital),
        ("community_clinic", InstitutionKind::CommunityClinic),
        ("township_hospital", InstitutionKind::TownshipHospital),
        ("specialist_hospital", InstitutionKind::SpecialistHospital),
    ];

    pub fn as_str(self) -> &'static str {
        InstitutionKind::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(s, _)| *s)
            .unwrap_or("lead_hospital")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferralSpec {
    pub direction: Direction,
    /// The kind of institution addressed; with `own_community`, the kind addressed when the
    /// patient has no home community institution.
    pub to: InstitutionKind,
    /// Addressed to the patient's home community institution (`to: own_community`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub own_community: bool,
    pub reason: Option<Text>,
    pub accept_within: Duration,
    /// Roles whose open and future tasks of the enrolment move to the receiving institution when
    /// the referral is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Goal {
    pub id: String,
    pub title: Text,
    pub observation: String,
    pub measure: GoalMeasure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalMeasure {
    ShareOfReadings {
        reading: Expr,
        at_least: f64,
        over: Duration,
    },
    DaysLogged {
        days: u32,
        over: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Week,
    Month,
    Quarter,
    Year,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Indicator {
    pub id: String,
    pub title: Text,
    pub numerator: String,
    pub denominator: String,
    pub period: Period,
    pub target: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub to: String,
    pub trigger: Trigger,
    pub guard: Option<Expr>,
    pub label: Option<Text>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// No trigger: taken as soon as the guard (if any) holds.
    Immediate,
    Event(String),
    After {
        after: Duration,
        at: Option<LocalTime>,
    },
    At(LocalTime),
    /// At a time counted from an anchor other than the state's entry ("day 365 after
    /// enrolment"); if that time has passed when the state is entered, at once.
    Anchored(TimeSpec),
}

impl Trigger {
    /// A short human label, used on graph edges and in traces.
    pub fn describe(&self) -> String {
        match self {
            Trigger::Immediate => String::new(),
            Trigger::Event(e) => format!("on {e}"),
            Trigger::After { after, at: None } => format!("after {after}"),
            Trigger::After { after, at: Some(t) } => format!("after {after} at {t}"),
            Trigger::At(t) => format!("at {t}"),
            Trigger::Anchored(spec) => match spec.at {
                Some(t) => format!("{} after {} at {t}", spec.after, spec.from.describe()),
                None => format!("{} after {}", spec.after, spec.from.describe()),
            },
        }
    }
}

/// A guard-language (Rhai) expression, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Expr(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurationUnit {
    Minutes,
    Hours,
    Days,
    Weeks,
    /// Working days of the institution's calendar (the national one with its own closures).
    WorkingDays,
}

/// A duration as people write it. Days and weeks are calendar days in the patient's time zone,
/// working days are counted in a calendar of working days, so the unit is kept rather than
/// flattened to seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Duration {
    pub amount: u32,
    pub unit: DurationUnit,
}

impl Duration {
    pub const ZERO: Duration = Duration {
        amount: 0,
        unit: DurationUnit::Minutes,
    };

    pub fn minutes(amount: u32) -> Duration {
        Duration {
            amount,
            unit: DurationUnit::Minutes,
        }
    }

    pub fn hours(amount: u32) -> Duration {
        Duration {
            amount,
            unit: DurationUnit::Hours,
        }
    }

    pub fn days(amount: u32) -> Duration {
        Duration {
            amount,
            unit: DurationUnit::Days,
        }
    }

    pub fn working_days(amount: u32) -> Duration {
        Duration {
            amount,
            unit: DurationUnit::WorkingDays,
        }
    }

    /// Whole calendar days, if the duration is written in days or weeks.
    pub fn calendar_days(&self) -> Option<u32> {
        match self.unit {
            DurationUnit::Days => Some(self.amount),
            DurationUnit::Weeks => Some(self.amount * 7),
            _ => None,
        }
    }

    /// The number of working days, if the duration is written in working days.
    pub fn in_working_days(&self) -> Option<u32> {
        (self.unit == DurationUnit::WorkingDays).then_some(self.amount)
    }

    /// The nominal length in seconds (a day, working or not, counted as 24 hours).
    pub fn nominal_seconds(&self) -> i64 {
        let unit = match self.unit {
            DurationUnit::Minutes => 60,
            DurationUnit::Hours => 3_600,
            DurationUnit::Days | DurationUnit::WorkingDays => 86_400,
            DurationUnit::Weeks => 604_800,
        };
        i64::from(self.amount) * unit
    }

    /// Reads a duration where working days have no meaning (windows, SLAs, expiries…): `30m`,
    /// `24h`, `7d`, `6w`. Working days are refused with a message saying where they belong.
    pub fn parse(s: &str) -> Result<Duration, String> {
        let d = Duration::parse_deadline(s)?;
        if d.unit == DurationUnit::WorkingDays {
            return Err(format!(
                "`{}` counts working days, which only a task's `due`, a follow-up's `after` and a transition's `after` can use",
                s.trim()
            ));
        }
        Ok(d)
    }

    /// Reads a duration that may also be written in working days: `2 working days`, `1 working
    /// day` or `2wd`, besides everything [`Duration::parse`] reads.
    pub fn parse_deadline(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        if s.starts_with('-') {
            return Err(format!(
                "`{s}` is negative; durations count forward from an event"
            ));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "`{s}` has no number; write e.g. `30m`, `24h`, `7d`, `6w`"
            ));
        }
        let unit = match unit.trim() {
            "m" | "min" => DurationUnit::Minutes,
            "h" => DurationUnit::Hours,
            "d" => DurationUnit::Days,
            "w" => DurationUnit::Weeks,
            "wd" | "working day" | "working days" => DurationUnit::WorkingDays,
            "" => {
                return Err(format!(
                    "`{s}` has no unit; write e.g. `{num}d` for days or `{num}h` for hours"
                ));
            }
            other if other.starts_with('.') => {
                let unit = other.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
                if matches!(unit.trim(), "wd" | "working day" | "working days") {
                    return Err(format!(
                        "`{s}` is fractional; working days are counted whole, e.g. `2 working days`"
                    ));
                }
                return Err(format!(
                    "`{s}` is fractional; use a smaller unit, e.g. `36h` instead of `1.5d`"
                ));
            }
            other if other.starts_with("work") || (other.starts_with('w') && other.len() > 1) => {
                return Err(format!(
                    "`{other}` is not a duration unit; working days are written `{num} working days` or `{num}wd`"
                ));
            }
            other => {
                return Err(format!(
                    "`{other}` is not a duration unit; use m, h, d or w"
                ));
            }
        };
        let amount: u32 = num.parse().map_err(|_| format!("`{s}` is too large"))?;
        if amount == 0 && unit == DurationUnit::WorkingDays {
            return Err(format!(
                "`{s}` waits for no working day; write `0m` for no wait, or at least `1 working day`"
            ));
        }
        if amount > 3_660 && unit != DurationUnit::Minutes && unit != DurationUnit::Hours {
            return Err(format!("`{s}` is longer than ten years"));
        }
        Ok(Duration { amount, unit })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = match self.unit {
            DurationUnit::Minutes => "m",
            DurationUnit::Hours => "h",
            DurationUnit::Days => "d",
            DurationUnit::Weeks => "w",
            DurationUnit::WorkingDays if self.amount == 1 => " working day",
            DurationUnit::WorkingDays => " working days",
        };
        write!(f, "{}{u}", self.amount)
    }
}

/// A local time of day, in the patient's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalTime {
    pub hour: u8,
    pub minute: u8,
}

impl LocalTime {
    pub fn parse(s: &str) -> Result<LocalTime, String> {
        let bad = || format!("`{s}` is not a time of day; write it as \"HH:MM\", e.g. \"09:00\"");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(LocalTime { hour, minute })
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_events_are_the_events_times_count_from_or_schedules_stop_at() {
        let src = "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
            events: [app_started, app_stopped, fall_reported]\n\
            entry_points:\n  - { id: start, state: ward }\n\
            schedules:\n  - { id: weekly, first: { after: 1d, from: app_started }, every: 7d, until: { event: app_stopped }, actions: [{ note: { zh: 周, en: Week } }] }\n\
            states:\n\
            \x20 - id: ward\n    phase: in_hospital\n    on_enter:\n\
            \x20     - task: { id: call, role: nurse, title: 电话, due: { after: 2d, from: discharged } }\n\
            \x20     - follow_up: { channels: [sms], template: t, after: 35d, from: delivered }\n\
            \x20   transitions:\n\
            \x20     - { on: fall_reported, to: done }\n\
            \x20     - { after: 42d, from: delivered, to: done }\n\
            \x20     - { after: 365d, from: enrolment, to: done }\n\
            \x20 - id: done\n    phase: closed\n    terminal: true\n";
        let c = crate::compile_yaml(
            "t.yaml",
            src.as_bytes(),
            std::path::Path::new(""),
            &crate::lower::FsLoader,
        );
        let p = c.pathway.expect("compiles");
        assert!(c.diagnostics.is_empty(), "{:?}", c.diagnostics);
        // Not `fall_reported`: a transition waits for it, it times nothing.
        assert_eq!(
            p.timed_events(),
            ["app_started", "delivered", "discharged", "app_stopped"]
        );
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(Duration::parse("30m").unwrap(), Duration::minutes(30));
        assert_eq!(Duration::parse("24h").unwrap(), Duration::hours(24));
        assert_eq!(Duration::parse("6w").unwrap().calendar_days(), Some(42));
        for bad in ["-1d", "7", "1.5d", "d", "3y", "99999999999d"] {
            assert!(Duration::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn working_days_read_where_deadlines_are_written() {
        for (text, n) in [
            ("2 working days", 2),
            ("1 working day", 1),
            ("2wd", 2),
            (" 10  working days ", 10),
        ] {
            let d = Duration::parse_deadline(text).unwrap();
            assert_eq!(d, Duration::working_days(n), "{text}");
            assert_eq!(d.in_working_days(), Some(n));
            assert_eq!(d.calendar_days(), None);
            assert_eq!(Duration::parse_deadline(&d.to_string()).unwrap(), d);
        }
        assert_eq!(Duration::working_days(1).to_string(), "1 working day");
        assert_eq!(Duration::working_days(3).to_string(), "3 working days");
        assert_eq!(
            Duration::parse_deadline("7d").unwrap(),
            Duration::parse("7d").unwrap()
        );
        let refused = Duration::parse("2 working days").unwrap_err();
        assert!(refused.contains("only a task's `due`"), "{refused}");
        for (bad, says) in [
            ("0 working days", "`0m`"),
            ("1.5 working days", "counted whole"),
            ("1.5d", "`36h` instead of `1.5d`"),
            ("2 workdays", "`2 working days` or `2wd`"),
            ("2 Working Days", "not a duration unit"),
            ("working days", "no number"),
            ("-2 working days", "negative"),
        ] {
            let e = Duration::parse_deadline(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn times_of_day() {
        assert_eq!(
            LocalTime::parse("09:00").unwrap(),
            LocalTime { hour: 9, minute: 0 }
        );
        assert_eq!(LocalTime::parse("9:05").unwrap().to_string(), "09:05");
        for bad in ["24:00", "09:60", "0900", "9:0", ""] {
            assert!(LocalTime::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
