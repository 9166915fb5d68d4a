//! The pure step: one enrolment, its facts and `now` in; the new state, what it produced and why out.
//!
//! Architecture invariant: nothing here reads a clock, draws randomness or does I/O. The scheduler,
//! the API's "advance now", pathway tests and the simulator all call `step`, so a pathway behaves
//! the same everywhere. Every emitted action carries a dedupe key derived from (enrolment, state
//! entry sequence, action index): stepping the same input twice produces the same keys, and the
//! store's unique constraints turn the repeat into a no-op.

use std::collections::BTreeMap;

use carepath_dsl::policy::Cause;
use carepath_dsl::{
    Action, AlarmSpec, Anchor, Channel, Direction, Goal, InstitutionKind, Missed, Pathway,
    Priority, RiskModel, Schedule, Sla, Text, TimeSpec, Trigger, Until, VarValue,
};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::facts::{PatientFacts, PendingEvent};
use crate::sandbox::{CompiledExprs, EvalContext, with_context};
use crate::time;

/// A faulty pathway cannot spin: at most this many transitions are taken at one instant. A
/// catch-up of any length is not bounded: it takes what each instant takes, in order.
pub const MAX_TRANSITIONS_PER_INSTANT: usize = 64;

/// What evaluating a state at one instant did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Did {
    Moved,
    Consumed,
    Nothing,
}

/// Whose schedule it is: the current state's, or the whole enrolment's (`Pathway::schedules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    State,
    Enrolment,
}

/// How often a state whose transitions depend on conditions is re-checked, counted from its entry.
const RECHECK_SECONDS: i64 = 86_400;

/// A pathway version ready to run.
pub struct Program {
    pub pathway: Pathway,
    pub exprs: CompiledExprs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Completed,
    Withdrawn,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Completed => "completed",
            Status::Withdrawn => "withdrawn",
            Status::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "completed" => Status::Completed,
            "withdrawn" => Status::Withdrawn,
            "error" => Status::Error,
            _ => Status::Active,
        }
    }
}

/// The live state of one enrolment: small on purpose (history is append-only elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enrolment {
    pub id: i64,
    pub pathway_id: String,
    pub version: u32,
    pub state: String,
    /// How many times a state has been entered; part of every dedupe key.
    pub state_seq: u32,
    pub entered_at: Timestamp,
    pub vars: BTreeMap<String, VarValue>,
    pub last_event_seq: i64,
    pub tz: String,
    pub status: Status,
    /// When the enrolment began (the `enrolment` anchor).
    #[serde(default)]
    pub enrolled_at: Timestamp,
    /// Every check instant up to this one has been evaluated; the next step resumes after it.
    #[serde(default)]
    pub checked_at: Timestamp,
}

/// What one action of a state produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Emitted {
    /// `e<enrolment>:<state_seq>:<action index>`; unique in the store.
    pub key: String,
    pub state: String,
    pub state_seq: u32,
    pub at: Timestamp,
    pub action: Produced,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Produced {
    Task {
        task_ref: Option<String>,
        role: String,
        title: Text,
        due_at: Timestamp,
        priority: Priority,
        sla: Option<Sla>,
        keep: bool,
        /// The scale whose critical-item task this task takes over.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        covers_critical: Option<String>,
    },
    FollowUp {
        follow_up_ref: Option<String>,
        channels: Vec<Channel>,
        template: String,
        send_at: Timestamp,
        urgent: bool,
    },
    ScalePush {
        scale: String,
        due_at: Timestamp,
        expires_at: Option<Timestamp>,
        reminders: Vec<Timestamp>,
        /// The reminder chain: each step's instant and how it reaches the patient.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chain: Vec<(Timestamp, carepath_dsl::ReminderBy)>,
        /// The push's action id, which a `cancel` names.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        push_ref: Option<String>,
    },
    Risk {
        model: String,
        score: f64,
        band: String,
        contributions: Vec<(String, f64)>,
    },
    AlarmArmed {
        /// Boxed: a rule with its task is several times larger than any other action.
        alarm: Box<AlarmSpec>,
    },
    Referral {
        direction: Direction,
        /// The kind addressed (with `own_community`: when the patient has no home institution).
        to: InstitutionKind,
        /// Addressed to the patient's home community institution.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        own_community: bool,
        reason: Option<Text>,
        accept_by: Timestamp,
        /// Roles whose tasks move to the receiving institution on acceptance.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        moves: Vec<String>,
    },
    GoalSet {
        goal: Goal,
    },
    Note {
        text: Text,
    },
    /// A `cancel` action: the open work made earlier in the enrolment by the action `action`
    /// ends (see `outcome::apply`).
    Cancel {
        action: String,
    },
}

impl Produced {
    pub fn kind(&self) -> &'static str {
        match self {
            Produced::Task { .. } => "task",
            Produced::FollowUp { .. } => "follow_up",
            Produced::ScalePush { .. } => "scale_push",
            Produced::Risk { .. } => "risk",
            Produced::AlarmArmed { .. } => "alarm",
            Produced::Referral { .. } => "referral",
            Produced::GoalSet { .. } => "goal",
            Produced::Note { .. } => "note",
            Produced::Cancel { .. } => "cancel",
        }
    }

    /// The id of the action that made this work, which a `cancel` action names.
    pub fn work_ref(&self) -> Option<&str> {
        match self {
            Produced::Task { task_ref, .. } => task_ref.as_deref(),
            Produced::FollowUp { follow_up_ref, .. } => follow_up_ref.as_deref(),
            Produced::ScalePush { push_ref, .. } => push_ref.as_deref(),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taken {
    pub from: String,
    pub to: String,
    pub at: Timestamp,
    pub because: String,
    /// Which transition of the state it was, in written order.
    pub index: usize,
    /// The state-entry sequence left; its open tasks are cancelled unless kept.
    pub left_seq: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub enrolment: Enrolment,
    pub transitions: Vec<Taken>,
    pub actions: Vec<Emitted>,
    pub next_wake: Option<Timestamp>,
    pub trace: Vec<String>,
    /// How and when the enrolment ended in this step, if it did.
    #[serde(default)]
    pub ended: Option<Ended>,
}

/// The end of an enrolment: why (the outcome policy's cause), when, and whether the actions of
/// the state it ended in are its closing work (made live) rather than work it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub cause: Cause,
    pub at: Timestamp,
    /// The last state was entered as the enrolment ended (a terminal state, or the state a
    /// withdrawal was routed to): its actions are the closing work.
    pub closing: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("pathway {pathway} v{version}, state `{state}`: {message}")]
pub struct StepError {
    pub pathway: String,
    pub version: u32,
    pub state: String,
    pub guard: Option<String>,
    pub message: String,
}

struct Run<'a> {
    prog: &'a Program,
    e: Enrolment,
    tz: TimeZone,
    now: Timestamp,
    out: Vec<Emitted>,
    taken: Vec<Taken>,
    trace: Vec<String>,
    /// Occurrences of the current state's schedules up to this instant have been handled.
    occurrences_done: Timestamp,
    /// Occurrences of the enrolment's own schedules up to this instant have been handled.
    enrolment_done: Timestamp,
    /// Missed occurrences held back by `missed: latest`: (owner, schedule index, number, instant).
    deferred: Vec<(Owner, usize, u32, Timestamp)>,
    ended: Option<Ended>,
}

impl<'a> Run<'a> {
    fn fail(&self, guard: Option<&str>, message: String) -> StepError {
        StepError {
            pathway: self.prog.pathway.id.clone(),
            version: self.prog.pathway.version,
            state: self.e.state.clone(),
            guard: guard.map(str::to_string),
            message,
        }
    }

    fn guard_holds(
        &mut self,
        guard: Option<&carepath_dsl::Expr>,
        why: &str,
    ) -> Result<bool, StepError> {
        let Some(g) = guard else { return Ok(true) };
        let (held, calls) = self
            .prog
            .exprs
            .eval_bool(g, &self.e.vars)
            .map_err(|err| self.fail(Some(&g.0), err.message))?;
        if held {
            self.trace.push(format!(
                "{why}: guard `{}` held ({})",
                g.0,
                calls.join(", ")
            ));
        }
        Ok(held)
    }

    /// Enters state `idx` at `at`, producing its on-enter actions.
    fn enter(&mut self, idx: usize, at: Timestamp) -> Result<(), StepError> {
        let p = &self.prog.pathway;
        let state = &p.states[idx];
        self.e.state = state.id.clone();
        self.e.state_seq += 1;
        self.e.entered_at = at;
        // Occurrences of the new state's schedules from this instant on are still to be made.
        self.occurrences_done = Timestamp::from_second(at.as_second() - 1).unwrap_or(at);
        crate::sandbox::set_entered_at(at);
        time::check_state(state, at, &self.tz).map_err(|e| self.fail(None, e.to_string()))?;
        let seq = self.e.state_seq;
        for (i, action) in state.on_enter.iter().enumerate() {
            let key = format!("e{}:{}:{}", self.e.id, seq, i);
            if let Some(produced) = self.make(action, at)? {
                self.emit(
                    action,
                    Emitted {
                        key,
                        state: state.id.clone(),
                        state_seq: seq,
                        at,
                        action: produced,
                    },
                );
            }
        }
        if state.terminal {
            self.e.status = Status::Completed;
            self.ended = Some(Ended {
                cause: Cause::EnrolmentEnded {
                    keep_open_tasks: state.keep_open_tasks,
                },
                at,
                closing: true,
            });
            self.trace
                .push(format!("enrolment completed in `{}`", state.id));
        }
        Ok(())
    }

    /// The `withdrawn` event ends the enrolment at `at`, after the transition that took it (if
    /// one did) entered the state of its closing work.
    fn withdraw(&mut self, routed: bool, at: Timestamp) {
        let keep_open_tasks = routed
            && self
                .prog
                .pathway
                .state(&self.e.state)
                .is_some_and(|s| s.terminal && s.keep_open_tasks);
        self.e.status = Status::Withdrawn;
        self.ended = Some(Ended {
            cause: Cause::Withdrawn { keep_open_tasks },
            at,
            closing: routed,
        });
        self.trace
            .push(format!("enrolment withdrawn in `{}`", self.e.state));
    }

    /// Adds what `action` made to the outcome. A scale push sent as a message brings its
    /// message with it: a follow-up at the push's instant, keyed `<push key>:invite` and named
    /// by the push's id, so whatever ends or cancels the push's work ends an unsent message too.
    fn emit(&mut self, action: &Action, made: Emitted) {
        let invite = match action {
            Action::Scale(s) => s.invite.as_ref().map(|i| (i, s.id.clone())),
            _ => None,
        };
        let message = invite.map(|(i, id)| Emitted {
            key: format!("{}:invite", made.key),
            state: made.state.clone(),
            state_seq: made.state_seq,
            at: made.at,
            action: Produced::FollowUp {
                follow_up_ref: id,
                channels: i.channels.clone(),
                template: i.template.clone(),
                send_at: made.at,
                urgent: false,
            },
        });
        self.out.push(made);
        self.out.extend(message);
    }

    /// What one action makes at `at` (`None` for an assignment, which is applied at once).
    fn make(&mut self, action: &Action, at: Timestamp) -> Result<Option<Produced>, StepError> {
        let p = &self.prog.pathway;
        let produced = match action {
            Action::Task(t) => Produced::Task {
                task_ref: t.id.clone(),
                role: t.role.clone(),
                title: t.title.clone(),
                due_at: match &t.due_at {
                    Some(spec) => self.time_of(spec, at, at),
                    None => time::add(at, t.due, &self.tz),
                },
                priority: t.priority,
                sla: t.sla.clone(),
                keep: t.keep,
                covers_critical: t.covers_critical.clone(),
            },
            Action::FollowUp(f) => Produced::FollowUp {
                follow_up_ref: f.id.clone(),
                channels: f.channels.clone(),
                template: f.template.clone(),
                send_at: self.time_of(
                    &carepath_dsl::TimeSpec {
                        after: f.after,
                        at: f.at,
                        from: f.from.clone(),
                    },
                    at,
                    at,
                ),
                urgent: f.urgent,
            },
            Action::Scale(s) => {
                let due_at = time::add(at, s.due, &self.tz);
                Produced::ScalePush {
                    scale: s.scale.clone(),
                    due_at,
                    expires_at: s.expires.map(|d| time::add(at, d, &self.tz)),
                    reminders: s
                        .reminders
                        .iter()
                        .map(|d| time::add(at, *d, &self.tz))
                        .collect(),
                    chain: s
                        .chain
                        .iter()
                        .map(|step| (time::add(due_at, step.after, &self.tz), step.by.clone()))
                        .collect(),
                    push_ref: s.id.clone(),
                }
            }
            Action::Risk(r) => {
                let (score, contributions) = self.risk_score(&r.model, at)?;
                let band = r
                    .bands
                    .iter()
                    .rev()
                    .find(|(_, lower)| score >= *lower)
                    .map(|(b, _)| b.clone())
                    .unwrap_or_default();
                self.trace
                    .push(format!("risk `{}` = {score:.3} ({band})", r.id));
                // Later guards and `set` values of this same step read the new prediction.
                crate::sandbox::push_risk(crate::facts::RiskResult {
                    model: r.id.clone(),
                    score,
                    band: band.clone(),
                    at,
                });
                Produced::Risk {
                    model: r.id.clone(),
                    score,
                    band,
                    contributions,
                }
            }
            Action::Alarm(a) => Produced::AlarmArmed {
                alarm: Box::new(a.clone()),
            },
            Action::Referral(r) => Produced::Referral {
                direction: r.direction,
                to: r.to,
                own_community: r.own_community,
                reason: r.reason.clone(),
                accept_by: time::add(at, r.accept_within, &self.tz),
                moves: r.moves.clone(),
            },
            Action::Goal(g) => Produced::GoalSet { goal: g.clone() },
            Action::Note(t) => Produced::Note { text: t.clone() },
            Action::Cancel(id) => {
                self.trace.push(format!("cancel the open work of `{id}`"));
                Produced::Cancel { action: id.clone() }
            }
            Action::Set(assignments) => {
                for (name, expr) in assignments {
                    let ty = p
                        .variable(name)
                        .map(|v| v.ty)
                        .unwrap_or(carepath_dsl::VarType::Number);
                    let value = self
                        .prog
                        .exprs
                        .eval_var(expr, ty, &self.e.vars)
                        .map_err(|err| self.fail(Some(&expr.0), err.message))?;
                    self.trace.push(format!("set {name} = {value:?}"));
                    self.e.vars.insert(name.clone(), value);
                }
                return Ok(None);
            }
        };
        Ok(Some(produced))
    }

    /// The instant an anchor stands for at instant `t`, for work made at `made`: the state's
    /// entry, the enrolment's start, or the latest occurrence of the event at or before `t`
    /// (`None` while it has not happened).
    fn anchor_at(&self, anchor: &Anchor, t: Timestamp) -> Option<Timestamp> {
        match anchor {
            Anchor::State => Some(self.e.entered_at),
            Anchor::Enrolment => Some(self.e.enrolled_at),
            Anchor::Event(name) => crate::sandbox::with_facts(|f| f.last_event(name, t)).flatten(),
        }
    }

    /// The instant an event anchor stands for in a scope that began at `since` (a state's entry
    /// for its transitions and schedules, the enrolment's start for the enrolment's schedules),
    /// with the events recorded by `t`: the event's latest occurrence by `since` — the instant the
    /// scope's on-enter work counts from, so "day 42 after the birth" is one instant for a
    /// postnatal state's messages and for its transition — or, if it had not happened by then,
    /// the first time it happens after (`None` until it has). Fixed once it exists, so a later
    /// occurrence of the event moves nothing.
    fn event_anchor(&self, name: &str, since: Timestamp, t: Timestamp) -> Option<Timestamp> {
        crate::sandbox::with_facts(|f| {
            f.last_event(name, since).or_else(|| {
                f.events
                    .iter()
                    .find(|e| e.name == name && e.at > since && e.at <= t)
                    .map(|e| e.at)
            })
        })
        .flatten()
    }

    /// When a time written from an anchor falls, for work made at `made`. The default anchor is
    /// the instant the work is made: the state's entry for its on-enter work, the occurrence for a
    /// schedule's. An event that has not happened yet counts from `fallback` (the instant the
    /// work is made), as the trace says.
    fn time_of(&mut self, spec: &TimeSpec, made: Timestamp, fallback: Timestamp) -> Timestamp {
        let anchored = match spec.from {
            Anchor::State => Some(made),
            _ => self.anchor_at(&spec.from, made),
        };
        let base = match anchored {
            Some(b) => b,
            None => {
                self.trace.push(format!(
                    "{} has not happened by {made}: counted from {fallback}",
                    spec.from.describe()
                ));
                fallback
            }
        };
        time::schedule(base, spec.after, spec.at, &self.tz)
    }

    /// When the scope of `owner`'s schedules began: the state's entry, or the enrolment's start.
    fn scope_start(&self, owner: Owner) -> Timestamp {
        match owner {
            Owner::State => self.e.entered_at,
            Owner::Enrolment => self.e.enrolled_at,
        }
    }

    /// The schedules of `owner`: the current state's, or the enrolment's.
    fn schedules_of(&self, owner: Owner) -> &'a [Schedule] {
        let p = &self.prog.pathway;
        match owner {
            Owner::State => p
                .state(&self.e.state)
                .map(|s| s.schedules.as_slice())
                .unwrap_or_default(),
            Owner::Enrolment => &p.schedules,
        }
    }

    /// The instant of occurrence `n` (1-based) of `sc` as seen at instant `t`, if it exists:
    /// within `count` and `until`. It may fall before its scope began (a state entered after a
    /// schedule counted from the enrolment has started): [`Self::occurrence_after`] passes over
    /// those.
    fn occurrence_at(
        &self,
        sc: &Schedule,
        owner: Owner,
        n: u32,
        t: Timestamp,
    ) -> Option<Timestamp> {
        if n == 0 || sc.count.is_some_and(|c| n > c) {
            return None;
        }
        let since = self.scope_start(owner);
        let base = match &sc.first.from {
            Anchor::Event(name) => self.event_anchor(name, since, t)?,
            other => self.anchor_at(other, t)?,
        };
        let first = time::schedule(base, sc.first.after, sc.first.at, &self.tz);
        let every = carepath_dsl::Duration {
            amount: sc.every.amount.checked_mul(n - 1)?,
            unit: sc.every.unit,
        };
        let mut at = time::add(first, every, &self.tz);
        if sc.working_days {
            at = time::on_working_day(at, &self.tz);
        }
        match &sc.until {
            Some(Until::At(spec)) => {
                let end = self.anchor_at(&spec.from, t)?;
                (at <= time::schedule(end, spec.after, spec.at, &self.tz)).then_some(at)
            }
            Some(Until::Event(name)) => {
                let stopped = crate::sandbox::with_facts(|f| {
                    f.events
                        .iter()
                        .any(|e| e.name == *name && e.at >= since && e.at <= at.min(t))
                })
                .unwrap_or(false);
                (!stopped).then_some(at)
            }
            None => Some(at),
        }
    }

    /// The first occurrence of `sc` strictly after `after`, and not before its scope began (the
    /// state's entry, or the enrolment's start), as seen at `t`: its number and instant.
    fn occurrence_after(
        &self,
        sc: &Schedule,
        owner: Owner,
        after: Timestamp,
        t: Timestamp,
    ) -> Option<(u32, Timestamp)> {
        let before_scope =
            Timestamp::from_second(self.scope_start(owner).as_second() - 1).unwrap_or(after);
        let after = after.max(before_scope);
        let first = self.occurrence_at(sc, owner, 1, t)?;
        if first > after {
            return Some((1, first));
        }
        // Jump near it by the nominal period, then walk.
        let period = sc.every.nominal_seconds().max(1);
        let guess = ((after.as_second() - first.as_second()) / period).max(0) as u32;
        let mut n = guess.saturating_sub(1).max(1);
        loop {
            let at = self.occurrence_at(sc, owner, n, t)?;
            if at > after {
                return Some((n, at));
            }
            n = n.checked_add(1)?;
        }
    }

    /// How many occurrences of the schedule have come by `t` in its scope (the current state
    /// entry, or the enrolment).
    fn occurrences_by(&self, sc: &Schedule, owner: Owner, t: Timestamp) -> u32 {
        let before = Timestamp::from_second(self.scope_start(owner).as_second() - 1).unwrap_or(t);
        let mut count = 0;
        let mut cursor = before;
        while let Some((n, at)) = self.occurrence_after(sc, owner, cursor, t) {
            if at > t {
                break;
            }
            count = n;
            cursor = at;
        }
        count
    }

    /// Makes the occurrences of the current state's schedules and of the enrolment's own that
    /// have come by `t`, applying each schedule's missed-occurrence policy; whether anything was
    /// made or recorded.
    fn occur(&mut self, t: Timestamp) -> Result<bool, StepError> {
        let mut any = false;
        for owner in [Owner::State, Owner::Enrolment] {
            let done = match owner {
                Owner::State => self.occurrences_done,
                Owner::Enrolment => self.enrolment_done,
            };
            for (k, sc) in self.schedules_of(owner).iter().enumerate() {
                let mut cursor = done;
                while let Some((n, at)) = self.occurrence_after(sc, owner, cursor, t) {
                    if at > t {
                        break;
                    }
                    cursor = at;
                    any = true;
                    let missed = self.now.as_second() - at.as_second() > sc.grace.nominal_seconds();
                    match (missed, sc.missed) {
                        (false, _) | (true, Missed::All) => {
                            self.flush_deferred(owner, k)?;
                            self.occurrence(owner, k, n, at)?;
                        }
                        (true, Missed::Skip) => self.skipped(owner, k, n, at, "missed: skip"),
                        (true, Missed::Latest) => {
                            if let Some(i) =
                                self.deferred.iter().position(|d| (d.0, d.1) == (owner, k))
                            {
                                let (_, _, pn, pat) = self.deferred.remove(i);
                                self.skipped(
                                    owner,
                                    k,
                                    pn,
                                    pat,
                                    "missed: latest, a later one was missed too",
                                );
                            }
                            self.deferred.push((owner, k, n, at));
                        }
                    }
                }
            }
        }
        self.occurrences_done = self.occurrences_done.max(t);
        self.enrolment_done = self.enrolment_done.max(t);
        self.publish_occurrences(t);
        Ok(any)
    }

    /// Makes the occurrence held back for schedule `k` of `owner`.
    fn flush_deferred(&mut self, owner: Owner, k: usize) -> Result<(), StepError> {
        while let Some(i) = self.deferred.iter().position(|d| (d.0, d.1) == (owner, k)) {
            let (owner, k, n, at) = self.deferred.remove(i);
            self.occurrence(owner, k, n, at)?;
        }
        Ok(())
    }

    /// Makes every occurrence held back, of `owner`'s schedules or (`None`) of all.
    fn flush_all_deferred(&mut self, owner: Option<Owner>) -> Result<(), StepError> {
        while let Some(i) = self
            .deferred
            .iter()
            .position(|d| owner.is_none_or(|o| d.0 == o))
        {
            let (owner, k, n, at) = self.deferred.remove(i);
            self.occurrence(owner, k, n, at)?;
        }
        Ok(())
    }

    /// The state-entry sequence an occurrence's work belongs to: the current entry for a state's
    /// schedule; none ([`crate::outcome::ENROLMENT_SEQ`]) for the enrolment's, so that leaving a
    /// state never ends it.
    fn seq_of(&self, owner: Owner) -> u32 {
        match owner {
            Owner::State => self.e.state_seq,
            Owner::Enrolment => crate::outcome::ENROLMENT_SEQ,
        }
    }

    /// Makes occurrence `n` of schedule `k` of `owner`, at `at`.
    fn occurrence(
        &mut self,
        owner: Owner,
        k: usize,
        n: u32,
        at: Timestamp,
    ) -> Result<(), StepError> {
        let Some(sc) = self.schedules_of(owner).get(k) else {
            return Ok(());
        };
        let seq = self.seq_of(owner);
        self.trace
            .push(format!("{at}: occurrence {n} of schedule `{}`", sc.id));
        for (i, action) in sc.actions.iter().enumerate() {
            if let Some(produced) = self.make(action, at)? {
                self.emit(
                    action,
                    Emitted {
                        key: format!("e{}:{}:{}#{n}:{i}", self.e.id, seq, sc.id),
                        state: self.e.state.clone(),
                        state_seq: seq,
                        at,
                        action: produced,
                    },
                );
            }
        }
        Ok(())
    }

    /// Records that occurrence `n` of schedule `k` of `owner` was not made, and why, in the
    /// patient's record.
    fn skipped(&mut self, owner: Owner, k: usize, n: u32, at: Timestamp, why: &str) {
        let Some(id) = self.schedules_of(owner).get(k).map(|sc| sc.id.clone()) else {
            return;
        };
        let seq = self.seq_of(owner);
        self.trace.push(format!(
            "{at}: occurrence {n} of schedule `{id}` skipped ({why})"
        ));
        self.out.push(Emitted {
            key: format!("e{}:{}:{id}#{n}:skipped", self.e.id, seq),
            state: self.e.state.clone(),
            state_seq: seq,
            at,
            action: Produced::Note {
                text: carepath_dsl::Text {
                    zh: format!("计划`{id}`第{n}次（{at}）未执行：停机期间错过（{why}）"),
                    en: format!(
                        "occurrence {n} of schedule `{id}` due {at} not made: missed while the engine was not running ({why})"
                    ),
                },
            },
        });
    }

    /// Tells guards how many occurrences of each schedule of the current state and of the
    /// enrolment have come by `t`.
    fn publish_occurrences(&self, t: Timestamp) {
        let counts = [Owner::Enrolment, Owner::State]
            .into_iter()
            .flat_map(|owner| {
                self.schedules_of(owner)
                    .iter()
                    .map(move |sc| (sc.id.clone(), self.occurrences_by(sc, owner, t)))
            })
            .collect();
        crate::sandbox::set_occurrences(counts);
    }

    fn risk_score(
        &mut self,
        model: &RiskModel,
        at: Timestamp,
    ) -> Result<(f64, Vec<(String, f64)>), StepError> {
        match model {
            RiskModel::Lace => {
                let (now, tz) = (at, self.tz.clone());
                Ok(
                    crate::sandbox::with_facts(|f| crate::risk::lace(&self.e.vars, f, now, &tz))
                        .unwrap_or_else(|| {
                            crate::risk::lace(&self.e.vars, &PatientFacts::default(), now, &tz)
                        }),
                )
            }
            RiskModel::Logistic { intercept, terms } => {
                let mut z = *intercept;
                let mut contributions = Vec::new();
                for t in terms {
                    let (x, _) = self
                        .prog
                        .exprs
                        .eval_number(&t.expr, &self.e.vars)
                        .map_err(|err| self.fail(Some(&t.expr.0), err.message))?;
                    let c = if x.is_nan() { 0.0 } else { t.coef * x };
                    contributions.push((t.name.clone(), c));
                    z += c;
                }
                Ok((1.0 / (1.0 + (-z).exp()), contributions))
            }
            RiskModel::Formula(e) => {
                let (x, _) = self
                    .prog
                    .exprs
                    .eval_number(e, &self.e.vars)
                    .map_err(|err| self.fail(Some(&e.0), err.message))?;
                Ok((x, vec![("formula".into(), x)]))
            }
        }
    }

    fn take(
        &mut self,
        index: usize,
        to: &str,
        at: Timestamp,
        because: String,
    ) -> Result<(), StepError> {
        let idx = self
            .prog
            .pathway
            .state_index(to)
            .ok_or_else(|| self.fail(None, format!("transition to unknown state `{to}`")))?;
        // A missed occurrence held back as the latest is made before its state is left.
        self.flush_all_deferred(Some(Owner::State))?;
        self.trace
            .push(format!("{}: `{}` → `{to}` ({because})", at, self.e.state));
        self.taken.push(Taken {
            from: self.e.state.clone(),
            to: to.to_string(),
            at,
            because,
            index,
            left_seq: self.e.state_seq,
        });
        self.enter(idx, at)
    }

    /// When the timed transition `t` of the current state fires.
    fn fire_time(&self, trigger: &Trigger) -> Option<Timestamp> {
        match trigger {
            Trigger::After { after, at } => {
                Some(time::schedule(self.e.entered_at, *after, *at, &self.tz))
            }
            Trigger::At(t) => Some(time::next_local_time(self.e.entered_at, *t, &self.tz)),
            Trigger::Anchored(spec) => {
                let base = match &spec.from {
                    Anchor::Event(name) => {
                        self.event_anchor(name, self.e.entered_at, Timestamp::MAX)?
                    }
                    other => self.anchor_at(other, self.e.entered_at)?,
                };
                Some(time::schedule(base, spec.after, spec.at, &self.tz).max(self.e.entered_at))
            }
            _ => None,
        }
    }

    /// Whether the current state has a transition that waits on a condition at `t`: a guarded
    /// immediate transition, or a guarded timer whose time has come. Such a state is evaluated
    /// again at every fact's instant and every [`RECHECK_SECONDS`] after its entry.
    fn polls(&self, state: &carepath_dsl::State, t: Timestamp) -> bool {
        state.transitions.iter().any(|tr| match &tr.trigger {
            Trigger::Immediate => tr.guard.is_some(),
            trigger => tr.guard.is_some() && self.fire_time(trigger).is_some_and(|at| at <= t),
        })
    }

    /// The first check instant of the current state after `t`: the next timer, the next pending
    /// event, and, while the state waits on a condition, the next recorded fact and the next daily
    /// re-check counted from the state's entry. A function of the pathway and the patient's
    /// history only, never of when passes run: this is what makes a catch-up exact.
    fn next_instant(
        &self,
        state: &carepath_dsl::State,
        t: Timestamp,
        events: &[PendingEvent],
    ) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |c: Timestamp| {
            if c > t && next.is_none_or(|n| c < n) {
                next = Some(c);
            }
        };
        for tr in &state.transitions {
            if let Some(at) = self.fire_time(&tr.trigger) {
                consider(at);
            }
        }
        if let Some(ev) = events.iter().filter(|ev| ev.at > t).map(|ev| ev.at).min() {
            consider(ev);
        }
        for owner in [Owner::State, Owner::Enrolment] {
            for sc in self.schedules_of(owner) {
                if let Some((_, at)) = self.occurrence_after(sc, owner, t, t) {
                    consider(at);
                }
            }
        }
        // A timer not yet due starts polling at its fire time, which is already a candidate.
        if self.polls(state, t) {
            let entered = self.e.entered_at.as_second();
            let k = (t.as_second() - entered).div_euclid(RECHECK_SECONDS) + 1;
            if let Ok(c) = Timestamp::from_second(entered + k * RECHECK_SECONDS) {
                consider(c);
            }
            if let Some(c) = self.facts_after(t) {
                consider(c);
            }
        }
        next
    }

    /// The instant of the first recorded fact (reading, answer, event) after `t`.
    fn facts_after(&self, t: Timestamp) -> Option<Timestamp> {
        crate::sandbox::with_facts(|f| {
            let obs = f.observations.partition_point(|o| o.at <= t);
            let sc = f.scales.partition_point(|s| s.at <= t);
            let ev = f.events.partition_point(|e| e.at <= t);
            [
                f.observations.get(obs).map(|o| o.at),
                f.scales.get(sc).map(|s| s.at),
                f.events.get(ev).map(|e| e.at),
            ]
            .into_iter()
            .flatten()
            .min()
        })
        .flatten()
    }

    /// Walks the check instants from `start` up to `now`, in order. At each instant, with the
    /// facts as of that instant: the immediate and conditional transitions in written order, then
    /// the timers that have come due (earliest first), then the events of that instant (in the
    /// order recorded). Each transition enters the next state at the same instant, which is then
    /// evaluated in turn; at most [`MAX_TRANSITIONS_PER_INSTANT`] transitions are taken at one instant.
    ///
    /// The walk begins at `start` inclusive: a step resumes at the instant the previous one
    /// reached, which it evaluates again. With facts recorded as they happen nothing has changed
    /// as of that instant and it takes nothing; a reading or event recorded late (its instant at
    /// or before the one reached) takes effect there, at once, instead of waiting for the next
    /// check instant.
    fn advance(&mut self, pending: &[PendingEvent], start: Timestamp) -> Result<(), StepError> {
        let mut events: Vec<PendingEvent> = pending
            .iter()
            .filter(|ev| ev.seq > self.e.last_event_seq)
            .cloned()
            .collect();
        events.sort_by_key(|ev| ev.seq);
        let mut t = start;
        let mut at_instant = 0usize;
        while t <= self.now && self.e.status == Status::Active {
            crate::sandbox::set_now(t);
            let idx = self
                .prog
                .pathway
                .state_index(&self.e.state)
                .ok_or_else(|| self.fail(None, "enrolment is in an unknown state".into()))?;
            let state = &self.prog.pathway.states[idx];
            let did = self.at_instant(state, t, &mut events)?;
            if did == Did::Moved {
                at_instant += 1;
                if at_instant > MAX_TRANSITIONS_PER_INSTANT {
                    return Err(self.fail(
                        None,
                        format!(
                            "more than {MAX_TRANSITIONS_PER_INSTANT} transitions at {t}; the pathway loops without waiting"
                        ),
                    ));
                }
            }
            if did != Did::Nothing {
                continue;
            }
            match self.next_instant(state, t, &events) {
                Some(n) => {
                    t = n;
                    at_instant = 0;
                }
                None => break,
            }
        }
        self.flush_all_deferred(None)?;
        // Events that arrived for a closed enrolment are consumed too.
        for ev in events.iter().filter(|ev| ev.at <= self.now) {
            self.e.last_event_seq = self.e.last_event_seq.max(ev.seq);
        }
        self.e.checked_at = self.e.checked_at.max(self.now);
        crate::sandbox::set_now(self.now);
        Ok(())
    }

    /// Evaluates the current state at instant `t`: whether it took a transition or consumed an
    /// event (either way the state is evaluated again at `t`) or has nothing more to do at `t`.
    fn at_instant(
        &mut self,
        state: &carepath_dsl::State,
        t: Timestamp,
        events: &mut Vec<PendingEvent>,
    ) -> Result<Did, StepError> {
        // 1. Immediate and conditional transitions, in written order.
        for (i, tr) in state.transitions.iter().enumerate() {
            if tr.trigger == Trigger::Immediate
                && self.guard_holds(tr.guard.as_ref(), "condition")?
            {
                let because = tr
                    .guard
                    .as_ref()
                    .map(|g| format!("when {}", g.0))
                    .unwrap_or_else(|| "immediately".into());
                self.take(i, &tr.to, t, because)?;
                return Ok(Did::Moved);
            }
        }
        // 2. Timers that have come due, earliest first; a guarded one waits for its guard.
        let mut timed: Vec<(Timestamp, usize)> = state
            .transitions
            .iter()
            .enumerate()
            .filter_map(|(i, tr)| {
                self.fire_time(&tr.trigger)
                    .filter(|at| *at <= t)
                    .map(|at| (at, i))
            })
            .collect();
        timed.sort();
        for (_, i) in timed {
            let tr = &state.transitions[i];
            if self.guard_holds(tr.guard.as_ref(), &tr.trigger.describe())? {
                self.take(i, &tr.to, t, tr.trigger.describe())?;
                return Ok(Did::Moved);
            }
        }
        // 3. The first event recorded at or before `t`.
        let Some(pos) = events.iter().position(|ev| ev.at <= t) else {
            // 4. The state holds at `t`: its schedules' occurrences that have come.
            return Ok(if self.occur(t)? {
                Did::Consumed
            } else {
                Did::Nothing
            });
        };
        let ev = events.remove(pos);
        self.e.last_event_seq = self.e.last_event_seq.max(ev.seq);
        for (name, value) in &ev.set {
            self.trace
                .push(format!("event `{}` sets {name} = {value:?}", ev.name));
            self.e.vars.insert(name.clone(), value.clone());
        }
        let withdrawal = ev.name == carepath_dsl::catalog::WITHDRAWN;
        for (i, tr) in state.transitions.iter().enumerate() {
            if matches!(&tr.trigger, Trigger::Event(name) if *name == ev.name)
                && self.guard_holds(tr.guard.as_ref(), &format!("on {}", ev.name))?
            {
                self.take(i, &tr.to, t, format!("on {}", ev.name))?;
                if withdrawal {
                    self.withdraw(true, t);
                }
                return Ok(Did::Moved);
            }
        }
        if withdrawal {
            self.withdraw(false, t);
            return Ok(Did::Consumed);
        }
        self.trace.push(format!(
            "event `{}` does not move `{}`",
            ev.name, self.e.state
        ));
        Ok(Did::Consumed)
    }

    /// What the run did, and when the enrolment next needs a step.
    fn into_outcome(self, pending: &[PendingEvent]) -> Outcome {
        let next_wake = self.next_wake(pending);
        Outcome {
            enrolment: self.e,
            transitions: self.taken,
            actions: self.out,
            next_wake,
            trace: self.trace,
            ended: self.ended,
        }
    }

    /// The next check instant after `now`.
    fn next_wake(&self, pending: &[PendingEvent]) -> Option<Timestamp> {
        if self.e.status != Status::Active {
            return None;
        }
        let state = self.prog.pathway.state(&self.e.state)?;
        let waiting: Vec<PendingEvent> = pending
            .iter()
            .filter(|ev| ev.seq > self.e.last_event_seq)
            .cloned()
            .collect();
        self.next_instant(state, self.now, &waiting)
    }
}

fn zone_of(e: &Enrolment) -> TimeZone {
    time::zone(&e.tz)
}

/// Advances `enrolment` to `now`: processes due timers and pending events in time order, follows
/// transitions until the enrolment waits, and returns what happened.
pub fn step(
    prog: &Program,
    enrolment: &Enrolment,
    facts: &PatientFacts,
    pending: &[PendingEvent],
    now: Timestamp,
) -> Result<Outcome, StepError> {
    let tz = zone_of(enrolment);
    let ctx = EvalContext {
        facts: facts.clone(),
        goals: prog.exprs.goals(),
        now,
        entered_at: enrolment.entered_at,
        enrolled_at: enrolment.enrolled_at,
        occurrences: Default::default(),
        tz: tz.clone(),
    };
    with_context(ctx, || {
        let mut run = Run {
            prog,
            e: enrolment.clone(),
            tz,
            now,
            out: Vec::new(),
            taken: Vec::new(),
            trace: Vec::new(),
            occurrences_done: enrolment.checked_at,
            enrolment_done: enrolment.checked_at,
            deferred: Vec::new(),
            ended: None,
        };
        if run.e.status == Status::Active {
            let resume = run.e.checked_at.max(run.e.entered_at);
            run.advance(pending, resume)?;
        }
        Ok(run.into_outcome(pending))
    })
}

/// Withdraws an enrolment that cannot be stepped (it is in error, or its step fails) at `at`:
/// nothing is routed, and every piece of its open work ends as the outcome policy says for a
/// withdrawal. An enrolment that can be stepped is withdrawn by stepping it with the `withdrawn`
/// event instead, so its pathway may route it.
pub fn withdraw_unrouted(
    enrolment: &Enrolment,
    pending: &[PendingEvent],
    at: Timestamp,
) -> Outcome {
    let mut e = enrolment.clone();
    e.status = Status::Withdrawn;
    for ev in pending.iter().filter(|ev| ev.at <= at) {
        e.last_event_seq = e.last_event_seq.max(ev.seq);
    }
    e.checked_at = e.checked_at.max(at);
    Outcome {
        trace: vec![format!("{at}: enrolment withdrawn in `{}`", e.state)],
        enrolment: e,
        transitions: Vec::new(),
        actions: Vec::new(),
        next_wake: None,
        ended: Some(Ended {
            cause: Cause::Withdrawn {
                keep_open_tasks: false,
            },
            at,
            closing: false,
        }),
    }
}

/// Enrols a patient at an entry point at `now`, then steps as far as the pathway goes.
pub fn enrol(
    prog: &Program,
    enrolment_id: i64,
    entry: &str,
    tz: &str,
    facts: &PatientFacts,
    pending: &[PendingEvent],
    now: Timestamp,
) -> Result<Outcome, StepError> {
    enrol_at(prog, enrolment_id, entry, tz, facts, pending, now, now)
}

/// Enrols a patient at an entry point at `at` (at or before `now`), then walks every check
/// instant from `at` up to `now`, exactly as the passes since `at` would have.
// The enrolment's inputs, and the two instants it needs, are all required.
#[allow(clippy::too_many_arguments)]
pub fn enrol_at(
    prog: &Program,
    enrolment_id: i64,
    entry: &str,
    tz: &str,
    facts: &PatientFacts,
    pending: &[PendingEvent],
    at: Timestamp,
    now: Timestamp,
) -> Result<Outcome, StepError> {
    let at = at.min(now);
    let p = &prog.pathway;
    let entry_point = p.entry_point(entry).ok_or_else(|| StepError {
        pathway: p.id.clone(),
        version: p.version,
        state: String::new(),
        guard: None,
        message: format!(
            "no entry point `{entry}`; entry points: {}",
            p.entry_points
                .iter()
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })?;
    let mut vars: BTreeMap<String, VarValue> = p
        .variables
        .iter()
        .map(|v| (v.name.clone(), v.default.clone()))
        .collect();
    for (k, v) in &entry_point.set {
        vars.insert(k.clone(), v.clone());
    }
    let mut e = Enrolment {
        id: enrolment_id,
        pathway_id: p.id.clone(),
        version: p.version,
        state: entry_point.state.clone(),
        state_seq: 0,
        entered_at: at,
        vars,
        last_event_seq: 0,
        tz: tz.to_string(),
        status: Status::Active,
        enrolled_at: at,
        checked_at: at,
    };
    let tzz = zone_of(&e);
    let ctx = EvalContext {
        facts: facts.clone(),
        goals: prog.exprs.goals(),
        now: at,
        entered_at: at,
        enrolled_at: at,
        occurrences: Default::default(),
        tz: tzz.clone(),
    };
    with_context(ctx, || {
        let idx = p.state_index(&entry_point.state).unwrap_or(0);
        e.state = p.states[idx].id.clone();
        let mut run = Run {
            prog,
            e,
            tz: tzz,
            now,
            out: Vec::new(),
            taken: Vec::new(),
            trace: vec![format!("{at}: enrolled at entry point `{entry}`")],
            occurrences_done: at,
            enrolment_done: Timestamp::from_second(at.as_second() - 1).unwrap_or(at),
            deferred: Vec::new(),
            ended: None,
        };
        run.enter(idx, at)?;
        run.advance(pending, at)?;
        Ok(run.into_outcome(pending))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::Observation;
    use std::path::Path;

    /// Compiles a test pathway written in YAML.
    pub(super) fn program(yaml: &str) -> Program {
        let compiled = carepath_dsl::compile_yaml(
            "t.yaml",
            yaml.as_bytes(),
            Path::new("."),
            &carepath_dsl::FsLoader,
        );
        let pathway = crate::program::into_pathway(compiled).expect("valid");
        let exprs = crate::sandbox::CompiledExprs::compile(
            std::sync::Arc::new(crate::sandbox::engine()),
            &pathway,
        )
        .expect("compiles");
        Program { pathway, exprs }
    }

    pub(super) fn ts(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    pub(super) fn days(t: Timestamp, d: i64) -> Timestamp {
        Timestamp::from_second(t.as_second() + d * 86_400).expect("instant")
    }

    const HEAD: &str =
        "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n";

    /// A daily loop through two states for a year: 730 transitions in one catch-up, never more
    /// than two at one instant.
    #[test]
    fn a_year_of_catch_up_is_not_bounded_but_each_instant_is() {
        let prog = program(&format!(
            "{HEAD}entry_points:\n  - {{ id: start, state: a }}\nstates:\n\
             \x20 - id: a\n    phase: follow_up\n    transitions:\n      - {{ after: 12h, to: b }}\n\
             \x20 - id: b\n    phase: follow_up\n    transitions:\n      - {{ after: 12h, to: a }}\n      - {{ on: died, to: end }}\n\
             \x20 - id: end\n    phase: closed\n    terminal: true\n"
        ));
        let t0 = ts("2026-03-02T01:00:00Z");
        let facts = PatientFacts::default();
        let out = enrol(&prog, 1, "start", "UTC", &facts, &[], t0).expect("enrols");
        let year = step(&prog, &out.enrolment, &facts, &[], days(t0, 365)).expect("catches up");
        assert_eq!(year.transitions.len(), 730);
        assert_eq!(year.enrolment.checked_at, days(t0, 365));
        assert_eq!(
            year.next_wake,
            Some(days(t0, 365) + jiff::SignedDuration::from_hours(12))
        );
    }

    /// The guard is evaluated at each reading's instant with the readings as of then: a high
    /// reading on day 3 that a normal one replaced on day 5 still moves the patient on day 3, when
    /// the only pass runs on day 10.
    #[test]
    fn a_condition_is_taken_at_the_instant_it_held() {
        let prog = program(&format!(
            "{HEAD}entry_points:\n  - {{ id: start, state: watch }}\nstates:\n\
             \x20 - id: watch\n    phase: follow_up\n    transitions:\n      - {{ when: 'latest(\"bp_systolic\") >= 160', to: high }}\n\
             \x20 - id: high\n    phase: follow_up\n    on_enter:\n      - task: {{ role: nurse, title: {{ zh: 复查, en: Review }}, due: 1d }}\n    transitions:\n      - {{ on: died, to: end }}\n\
             \x20 - id: end\n    phase: closed\n    terminal: true\n"
        ));
        let t0 = ts("2026-03-02T01:00:00Z");
        let reading = |d: i64, v: f64| Observation {
            kind: "bp_systolic".into(),
            value: v,
            at: days(t0, d) + jiff::SignedDuration::from_hours(3),
        };
        let facts = PatientFacts {
            observations: vec![reading(1, 130.0), reading(3, 172.0), reading(5, 128.0)],
            ..Default::default()
        };
        let out =
            enrol(&prog, 1, "start", "UTC", &PatientFacts::default(), &[], t0).expect("enrols");
        let late = step(&prog, &out.enrolment, &facts, &[], days(t0, 10)).expect("steps");
        assert_eq!(late.enrolment.state, "high");
        assert_eq!(late.transitions[0].at, reading(3, 0.0).at);
        let Produced::Task { due_at, .. } = &late.actions[0].action else {
            panic!("a task")
        };
        assert_eq!(*due_at, days(reading(3, 0.0).at, 1));
        // Stepped every night instead, the same transition at the same instant.
        let mut e = out.enrolment;
        let mut taken = Vec::new();
        for d in 1..=10 {
            let o = step(&prog, &e, &facts, &[], days(t0, d)).expect("steps");
            taken.extend(o.transitions);
            e = o.enrolment;
        }
        assert_eq!(taken, late.transitions);
    }

    /// A reading recorded after the engine already reached its instant takes effect at once, at
    /// the instant reached, not at the next daily re-check.
    #[test]
    fn a_late_reading_takes_effect_at_the_instant_reached() {
        let prog = program(&format!(
            "{HEAD}entry_points:\n  - {{ id: start, state: watch }}\nstates:\n\
             \x20 - id: watch\n    phase: follow_up\n    transitions:\n      - {{ when: 'latest(\"bp_systolic\") >= 160', to: high }}\n\
             \x20 - id: high\n    phase: closed\n    terminal: true\n"
        ));
        let t0 = ts("2026-03-02T01:00:00Z");
        let out =
            enrol(&prog, 1, "start", "UTC", &PatientFacts::default(), &[], t0).expect("enrols");
        let reached = days(t0, 2);
        let e = step(
            &prog,
            &out.enrolment,
            &PatientFacts::default(),
            &[],
            reached,
        )
        .expect("steps")
        .enrolment;
        let facts = PatientFacts {
            observations: vec![Observation {
                kind: "bp_systolic".into(),
                value: 181.0,
                at: days(t0, 1),
            }],
            ..Default::default()
        };
        let o = step(&prog, &e, &facts, &[], reached).expect("steps");
        assert_eq!(o.enrolment.state, "high");
        assert_eq!(o.transitions[0].at, reached);
    }

    fn event(seq: i64, name: &str, at: Timestamp) -> PendingEvent {
        PendingEvent {
            seq,
            name: name.into(),
            at,
            set: Default::default(),
        }
    }

    const WITHDRAWABLE: &str = "entry_points:\n  - { id: start, state: a }\nstates:\n\
         \x20 - id: a\n    phase: follow_up\n    transitions:\n      - { after: 2d, to: b }\n\
         \x20 - id: b\n    phase: follow_up\n    on_enter:\n      - task: { id: visit, role: nurse, title: Visit, due: 5d, keep: true }\n    transitions:\n      - { on: withdrawn, when: 'false || latest(\"weight\") > 0', to: closing }\n      - { after: 30d, to: done }\n\
         \x20 - id: closing\n    phase: closed\n    terminal: true\n    keep_open_tasks: true\n    on_enter:\n      - task: { id: collect, role: nurse, title: Collect, due: 1d }\n\
         \x20 - id: done\n    phase: closed\n    terminal: true\n";

    /// A withdrawal the state routes enters the closing state, whose work is made live, and
    /// ends the enrolment as withdrawn; one it does not route ends it where it stands. Either way
    /// the step first catches up to the withdrawal's instant.
    #[test]
    fn a_withdrawal_is_routed_by_the_state_or_ends_the_enrolment_where_it_stands() {
        let prog = program(&format!("{HEAD}{WITHDRAWABLE}"));
        let t0 = ts("2026-03-02T01:00:00Z");
        let out =
            enrol(&prog, 1, "start", "UTC", &PatientFacts::default(), &[], t0).expect("enrols");
        let withdrawn = [event(1, "withdrawn", days(t0, 3))];
        let weighed = PatientFacts {
            observations: vec![Observation {
                kind: "weight".into(),
                value: 70.0,
                at: t0,
            }],
            ..Default::default()
        };
        // Routed: a → b at day 2 (the catch-up), then b → closing at day 3.
        let o = step(&prog, &out.enrolment, &weighed, &withdrawn, days(t0, 4)).expect("steps");
        assert_eq!(o.enrolment.status, Status::Withdrawn);
        assert_eq!(o.enrolment.state, "closing");
        assert_eq!(o.transitions.len(), 2);
        assert_eq!(
            o.ended,
            Some(Ended {
                cause: Cause::Withdrawn {
                    keep_open_tasks: true
                },
                at: days(t0, 3),
                closing: true,
            })
        );
        let made: Vec<&str> = o.actions.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(made, ["e1:2:0", "e1:3:0"]);
        assert_eq!(o.next_wake, None);
        // Not routed (the guard fails): the enrolment ends in `b`, nothing is closing work.
        let o = step(
            &prog,
            &out.enrolment,
            &PatientFacts::default(),
            &withdrawn,
            days(t0, 4),
        )
        .expect("steps");
        assert_eq!(
            (o.enrolment.status, o.enrolment.state.as_str()),
            (Status::Withdrawn, "b")
        );
        assert_eq!(
            o.ended,
            Some(Ended {
                cause: Cause::Withdrawn {
                    keep_open_tasks: false
                },
                at: days(t0, 3),
                closing: false,
            })
        );
        assert_eq!(o.enrolment.last_event_seq, 1);
        // What cannot be stepped is withdrawn where it stands, its events consumed.
        let u = withdraw_unrouted(&out.enrolment, &withdrawn, days(t0, 4));
        assert_eq!(
            (u.enrolment.status, u.enrolment.last_event_seq),
            (Status::Withdrawn, 1)
        );
        assert!(u.transitions.is_empty() && u.actions.is_empty() && u.next_wake.is_none());
    }

    /// Enrolled with a past start, the step walks every check instant since: the same
    /// transitions, at the same instants, as enrolling then and stepping every night.
    #[test]
    fn an_enrolment_dated_in_the_past_catches_up_exactly() {
        let prog = program(&format!("{HEAD}{WITHDRAWABLE}"));
        let t0 = ts("2026-03-02T01:00:00Z");
        let now = days(t0, 40);
        let facts = PatientFacts::default();
        let late = enrol_at(&prog, 1, "start", "UTC", &facts, &[], t0, now).expect("enrols");
        let mut nightly = enrol(&prog, 1, "start", "UTC", &facts, &[], t0).expect("enrols");
        let mut taken = nightly.transitions.clone();
        let mut actions = nightly.actions.clone();
        for d in 1..=40 {
            nightly = step(&prog, &nightly.enrolment, &facts, &[], days(t0, d)).expect("steps");
            taken.extend(nightly.transitions.clone());
            actions.extend(nightly.actions.clone());
        }
        assert_eq!(late.transitions, taken);
        assert_eq!(late.actions, actions);
        assert_eq!(late.enrolment.state, "done");
        assert_eq!(late.enrolment.entered_at, days(t0, 32));
        assert_eq!(late.ended.map(|e| e.at), Some(days(t0, 32)));
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::tests::{days, program, ts};
    use super::*;
    use crate::facts::FactEvent;

    /// A follow-up plan: a questionnaire on day 7 after enrolment at 09:00 and every 30 days,
    /// 12 times; a call on day 2 after discharge at 18:00; the state ends on day 400.
    fn plan(missed: &str) -> Program {
        program(&format!(
            "pathway: t\nversion: 1\ntitle: {{ zh: 测, en: T }}\nowner_role: nurse\nroles: [nurse]\n\
             entry_points:\n  - {{ id: start, state: home }}\nstates:\n\
             \x20 - id: home\n    phase: follow_up\n\
             \x20   on_enter:\n      - task: {{ id: day2_call, role: nurse, title: {{ zh: 电话, en: Call }}, due: {{ after: 2d, at: \"18:00\", from: discharged }} }}\n\
             \x20   schedules:\n      - id: monthly\n        first: {{ after: 7d, at: \"09:00\", from: enrolment }}\n        every: 30d\n        count: 12\n        missed: {missed}\n\
             \x20       actions:\n          - scale: {{ scale: phq9, due: 3d }}\n          - task: {{ id: review, role: nurse, title: {{ zh: 复核, en: Review }}, due: 5d }}\n\
             \x20   transitions:\n      - {{ after: 400d, to: end }}\n      - {{ when: 'occurrence(\"monthly\") >= 12', to: done }}\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n\
             \x20 - id: end\n    phase: closed\n    terminal: true\n"
        ))
    }

    fn run(
        prog: &Program,
        facts: &PatientFacts,
        passes: &[Timestamp],
    ) -> (Vec<Emitted>, Vec<Taken>) {
        let t0 = ts("2026-03-02T01:00:00Z");
        let out = enrol(prog, 1, "start", "Asia/Shanghai", facts, &[], t0).expect("enrols");
        let mut actions = out.actions;
        let mut taken = out.transitions;
        let mut e = out.enrolment;
        for p in passes {
            let o = step(prog, &e, facts, &[], *p).expect("steps");
            actions.extend(o.actions);
            taken.extend(o.transitions);
            e = o.enrolment;
        }
        (actions, taken)
    }

    #[test]
    fn occurrences_come_on_their_days_with_numbered_keys_and_stop_at_the_count() {
        let prog = plan("all");
        let t0 = ts("2026-03-02T01:00:00Z");
        let facts = PatientFacts {
            events: vec![FactEvent {
                name: "discharged".into(),
                at: t0,
            }],
            ..Default::default()
        };
        let nightly: Vec<Timestamp> = (1..=400).map(|d| days(t0, d)).collect();
        let (actions, taken) = run(&prog, &facts, &nightly);
        let pushes: Vec<&Emitted> = actions
            .iter()
            .filter(|a| matches!(a.action, Produced::ScalePush { .. }))
            .collect();
        assert_eq!(pushes.len(), 12);
        // Day 7 after enrolment at 09:00 in Shanghai (01:00 UTC is 09:00 local), then every 30 days.
        assert_eq!(pushes[0].at, ts("2026-03-09T01:00:00Z"));
        assert_eq!(pushes[1].at, ts("2026-04-08T01:00:00Z"));
        assert_eq!(pushes[0].key, "e1:1:monthly#1:0");
        assert_eq!(pushes[11].key, "e1:1:monthly#12:0");
        // The twelfth occurrence ends the plan at its own instant.
        assert_eq!(
            taken.last().map(|t| (t.to.as_str(), t.at)),
            Some(("done", pushes[11].at))
        );
        // The day-2 call is due at 18:00 local two days after discharge.
        let call = actions
            .iter()
            .find_map(|a| match &a.action {
                Produced::Task {
                    task_ref: Some(r),
                    due_at,
                    ..
                } if r == "day2_call" => Some(*due_at),
                _ => None,
            })
            .expect("the call");
        assert_eq!(call, ts("2026-03-04T10:00:00Z"));
        // One catch-up pass after 400 days makes exactly the same.
        let (once, once_taken) = run(&prog, &facts, &[days(t0, 400)]);
        assert_eq!(once, actions);
        assert_eq!(once_taken, taken);
    }

    #[test]
    fn missed_occurrences_follow_the_policy_and_are_recorded() {
        let t0 = ts("2026-03-02T01:00:00Z");
        let facts = PatientFacts::default();
        // Down from day 1 to day 100: occurrences on days 7, 37, 67 and 97 are missed.
        let passes = [days(t0, 1), days(t0, 100)];
        let kinds = |prog: &Program| {
            let (actions, _) = run(prog, &facts, &passes);
            actions
                .iter()
                .map(|a| a.key.clone())
                .filter(|k| k.contains('#'))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(&plan("all")),
            [1, 2, 3, 4]
                .iter()
                .flat_map(|n| [format!("e1:1:monthly#{n}:0"), format!("e1:1:monthly#{n}:1")])
                .collect::<Vec<_>>()
        );
        assert_eq!(
            kinds(&plan("latest")),
            vec![
                "e1:1:monthly#1:skipped",
                "e1:1:monthly#2:skipped",
                "e1:1:monthly#3:skipped",
                "e1:1:monthly#4:0",
                "e1:1:monthly#4:1"
            ]
        );
        assert_eq!(
            kinds(&plan("skip")),
            vec![
                "e1:1:monthly#1:skipped",
                "e1:1:monthly#2:skipped",
                "e1:1:monthly#3:skipped",
                "e1:1:monthly#4:skipped"
            ]
        );
        // Within the grace (a pass the next night), nothing counts as missed.
        let nightly: Vec<Timestamp> = (1..=100).map(|d| days(t0, d)).collect();
        let (actions, _) = run(&plan("skip"), &facts, &nightly);
        assert!(!actions.iter().any(|a| a.key.ends_with(":skipped")));
    }

    /// An occurrence that falls on a day off moves to the next working day at the same time:
    /// Saturdays move to Monday; the National Day holiday (1–7 October 2026) to the 8th.
    #[test]
    fn working_day_schedules_skip_weekends_and_holidays() {
        let prog = program(
            "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
             entry_points:\n  - { id: start, state: home }\nstates:\n\
             \x20 - id: home\n    phase: follow_up\n\
             \x20   schedules:\n      - id: weekly_call\n        first: { after: 5d, at: \"09:00\" }\n        every: 7d\n        working_days: true\n\
             \x20       actions:\n          - task: { role: nurse, title: { zh: 电话, en: Call }, due: 4h }\n\
             \x20   transitions:\n      - { after: 230d, to: end }\n\
             \x20 - id: end\n    phase: closed\n    terminal: true\n",
        );
        let t0 = ts("2026-03-02T01:00:00Z"); // Monday 09:00 in Shanghai
        let (actions, _) = run(&prog, &PatientFacts::default(), &[days(t0, 230)]);
        let at: Vec<Timestamp> = actions.iter().map(|a| a.at).collect();
        assert_eq!(
            at[0],
            ts("2026-03-09T01:00:00Z"),
            "Saturday the 7th moves to Monday the 9th"
        );
        assert_eq!(at[1], ts("2026-03-16T01:00:00Z"));
        // Saturday 3 October 2026 (National Day) moves to Thursday the 8th, the first working day.
        assert!(at.contains(&ts("2026-10-08T01:00:00Z")), "{at:?}");
        for a in &at {
            let date = a
                .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap())
                .date();
            assert!(
                crate::calendar::Calendar::national()
                    .unwrap()
                    .is_working_day(date)
                    .unwrap(),
                "{date} is a working day"
            );
        }
    }

    /// A pathway whose schedule belongs to the whole enrolment: it runs in `first` and then in
    /// `second`, and the enrolment ends after its fourth occurrence.
    fn enrolment_plan(missed: &str) -> Program {
        program(&format!(
            "pathway: t\nversion: 1\ntitle: {{ zh: 测, en: T }}\nowner_role: nurse\nroles: [nurse]\n\
             entry_points:\n  - {{ id: start, state: first }}\n\
             schedules:\n  - id: monthly\n    first: {{ after: 7d, at: \"09:00\" }}\n    every: 30d\n    missed: {missed}\n\
             \x20   actions:\n      - task: {{ id: review, role: nurse, title: {{ zh: 复核, en: Review }}, due: 5d }}\n      - follow_up: {{ channels: [sms], template: review_notice, at: \"18:00\" }}\n\
             states:\n\
             \x20 - id: first\n    phase: follow_up\n    transitions:\n      - {{ after: 40d, to: second }}\n\
             \x20 - id: second\n    phase: follow_up\n    transitions:\n      - {{ after: 400d, to: done }}\n      - {{ when: 'occurrence(\"monthly\") >= 4', to: done }}\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n"
        ))
    }

    #[test]
    fn an_enrolment_schedule_runs_in_every_state_until_the_enrolment_ends() {
        let prog = enrolment_plan("all");
        let t0 = ts("2026-03-02T01:00:00Z");
        let facts = PatientFacts::default();
        let nightly: Vec<Timestamp> = (1..=200).map(|d| days(t0, d)).collect();
        let (actions, taken) = run(&prog, &facts, &nightly);
        let made: Vec<(&str, &str, Timestamp)> = actions
            .iter()
            .filter(|a| matches!(a.action, Produced::Task { .. }))
            .map(|a| (a.key.as_str(), a.state.as_str(), a.at))
            .collect();
        // Days 7, 37 (in `first`), 67 and 97 (in `second`), at 09:00 local; the keys carry the
        // occurrence's number and no state entry.
        assert_eq!(
            made,
            [
                ("e1:0:monthly#1:0", "first", ts("2026-03-09T01:00:00Z")),
                ("e1:0:monthly#2:0", "first", ts("2026-04-08T01:00:00Z")),
                ("e1:0:monthly#3:0", "second", ts("2026-05-08T01:00:00Z")),
                ("e1:0:monthly#4:0", "second", ts("2026-06-07T01:00:00Z")),
            ]
        );
        // An occurrence's times count from it: the notice of the third goes at 18:00 that day,
        // not at 18:00 on the day `second` was entered.
        let notice = actions
            .iter()
            .find_map(|a| match &a.action {
                Produced::FollowUp { send_at, .. } if a.key == "e1:0:monthly#3:1" => Some(*send_at),
                _ => None,
            })
            .expect("the third notice");
        assert_eq!(notice, ts("2026-05-08T10:00:00Z"));
        // Guards read its count: the fourth occurrence ends the enrolment at its instant, and
        // none comes after.
        assert_eq!(
            taken
                .iter()
                .map(|t| (t.to.as_str(), t.at))
                .collect::<Vec<_>>(),
            [("second", days(t0, 40)), ("done", made[3].2)]
        );
        // One catch-up pass makes exactly the same.
        let once = run(&prog, &facts, &[days(t0, 200)]);
        assert_eq!(once, (actions.clone(), taken.clone()));
        // Leaving `first` (day 40) does not end the review of day 37 (due day 42); the end of the
        // enrolment does.
        let out = enrol(&prog, 1, "start", "Asia/Shanghai", &facts, &[], t0).expect("enrols");
        let out = step(&prog, &out.enrolment, &facts, &[], days(t0, 200)).expect("steps");
        let second = out
            .actions
            .iter()
            .find(|a| a.key == "e1:0:monthly#2:0")
            .expect("the second review");
        assert!(
            matches!(
                crate::outcome::ending_within(&out, second),
                Some(crate::outcome::Because::Ended(Status::Completed, at)) if at == made[3].2
            ),
            "{:?}",
            crate::outcome::ending_within(&out, second)
        );
    }

    #[test]
    fn missed_occurrences_of_an_enrolment_schedule_follow_its_policy() {
        let t0 = ts("2026-03-02T01:00:00Z");
        let facts = PatientFacts::default();
        // Down from day 1 to day 80: the occurrences of days 7, 37 and 67 are missed.
        let keys = |missed: &str| {
            let (actions, _) = run(
                &enrolment_plan(missed),
                &facts,
                &[days(t0, 1), days(t0, 80)],
            );
            // The reviews and the records of skipped occurrences (not the notices).
            actions
                .into_iter()
                .map(|a| a.key)
                .filter(|k| !k.ends_with(":1"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys("all"),
            ["e1:0:monthly#1:0", "e1:0:monthly#2:0", "e1:0:monthly#3:0"]
        );
        assert_eq!(
            keys("latest"),
            [
                "e1:0:monthly#1:skipped",
                "e1:0:monthly#2:skipped",
                "e1:0:monthly#3:0"
            ]
        );
        assert_eq!(
            keys("skip"),
            [
                "e1:0:monthly#1:skipped",
                "e1:0:monthly#2:skipped",
                "e1:0:monthly#3:skipped"
            ]
        );
    }

    /// A state's schedule counted from the enrolment keeps its calendar when the state is entered
    /// late or entered again: occurrences before the entry are not made, the later ones are, with
    /// their numbers from the first.
    #[test]
    fn a_schedule_from_the_enrolment_keeps_its_calendar_across_entries() {
        let prog = program(
            "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
             events: [crisis, settled]\n\
             entry_points:\n  - { id: start, state: intake }\nstates:\n\
             \x20 - id: intake\n    phase: follow_up\n\
             \x20   transitions:\n      - { after: 45d, to: care }\n\
             \x20 - id: care\n    phase: follow_up\n\
             \x20   schedules:\n      - id: review\n        first: { after: 30d, from: enrolment }\n        every: 30d\n\
             \x20       actions:\n          - task: { id: review, role: nurse, title: { zh: 复核, en: Review }, due: 5d }\n\
             \x20   transitions:\n      - { on: crisis, to: crisis }\n      - { after: 400d, to: done }\n\
             \x20 - id: crisis\n    phase: follow_up\n\
             \x20   transitions:\n      - { on: settled, to: care }\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n",
        );
        let t0 = ts("2026-03-02T01:00:00Z");
        // Care from day 45; a crisis from day 70 to day 100.
        let facts = PatientFacts {
            events: vec![
                event_at("crisis", days(t0, 70)),
                event_at("settled", days(t0, 100)),
            ],
            ..Default::default()
        };
        let nightly: Vec<Timestamp> = (1..=130).map(|d| days(t0, d)).collect();
        let made: Vec<(String, Timestamp)> = run_events(&prog, &facts, &nightly)
            .into_iter()
            .map(|a| (a.key, a.at))
            .collect();
        // Day 30 came before care began, day 90 in the crisis: neither is made.
        assert_eq!(
            made,
            [
                ("e1:2:review#2:0".to_string(), days(t0, 60)),
                ("e1:4:review#4:0".to_string(), days(t0, 120)),
            ]
        );
        assert_eq!(run_events(&prog, &facts, &[days(t0, 130)]).len(), 2);
    }

    /// A state schedule that starts at an event and stops at another: a weekly check while the
    /// home app is in use.
    fn event_plan() -> Program {
        program(
            "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
             events: [app_started, app_stopped]\n\
             entry_points:\n  - { id: start, state: home }\nstates:\n\
             \x20 - id: home\n    phase: follow_up\n\
             \x20   schedules:\n      - id: weekly\n        first: { after: 0d, from: app_started }\n        every: 7d\n        until: { event: app_stopped }\n\
             \x20       actions:\n          - task: { id: app_check, role: nurse, title: { zh: 核查, en: Check }, due: 1d }\n\
             \x20   transitions:\n      - { after: 400d, to: done }\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n",
        )
    }

    fn event_at(name: &str, at: Timestamp) -> FactEvent {
        FactEvent {
            name: name.into(),
            at,
        }
    }

    /// Runs passes as the store does: each recorded event is also the enrolment's to consume,
    /// as it arrives.
    fn run_events(prog: &Program, facts: &PatientFacts, passes: &[Timestamp]) -> Vec<Emitted> {
        let pending: Vec<PendingEvent> = facts
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| PendingEvent {
                seq: i as i64 + 1,
                name: e.name.clone(),
                at: e.at,
                set: Default::default(),
            })
            .collect();
        let t0 = ts("2026-03-02T01:00:00Z");
        let out = enrol(prog, 1, "start", "Asia/Shanghai", facts, &pending, t0).expect("enrols");
        let mut actions = out.actions;
        let mut e = out.enrolment;
        for p in passes {
            let o = step(prog, &e, facts, &pending, *p).expect("steps");
            actions.extend(o.actions);
            e = o.enrolment;
        }
        actions
    }

    #[test]
    fn a_schedule_from_an_event_waits_for_it_and_then_counts_from_it() {
        let prog = event_plan();
        let t0 = ts("2026-03-02T01:00:00Z");
        // Nothing has happened by day 9: no occurrence, and none is due.
        let none = run_events(
            &prog,
            &PatientFacts::default(),
            &(1..=9).map(|d| days(t0, d)).collect::<Vec<_>>(),
        );
        assert!(none.is_empty(), "{none:?}");
        // The app starts on day 9 at 15:00: occurrences at that instant and every 7 days after.
        let started = days(t0, 9) + jiff::SignedDuration::from_hours(6);
        let facts = PatientFacts {
            events: vec![event_at("app_started", started)],
            ..Default::default()
        };
        let nightly: Vec<Timestamp> = (1..=30).map(|d| days(t0, d)).collect();
        let made = run_events(&prog, &facts, &nightly);
        let at: Vec<(String, Timestamp)> = made.iter().map(|a| (a.key.clone(), a.at)).collect();
        assert_eq!(
            at,
            [
                ("e1:1:weekly#1:0".to_string(), started),
                ("e1:1:weekly#2:0".to_string(), days(started, 7)),
                ("e1:1:weekly#3:0".to_string(), days(started, 14)),
            ]
        );
        // One pass after 30 days makes the same.
        assert_eq!(run_events(&prog, &facts, &[days(t0, 30)]), made);
    }

    #[test]
    fn a_schedule_stops_at_its_until_event() {
        let prog = event_plan();
        let t0 = ts("2026-03-02T01:00:00Z");
        let started = days(t0, 1);
        // Stopped on day 16 at 13:00: the occurrences of days 1 and 8 and 15 are made; the one of
        // day 22 is not, nor any later.
        let stopped = days(t0, 16) + jiff::SignedDuration::from_hours(12);
        let facts = PatientFacts {
            events: vec![
                event_at("app_started", started),
                event_at("app_stopped", stopped),
            ],
            ..Default::default()
        };
        let nightly: Vec<Timestamp> = (1..=60).map(|d| days(t0, d)).collect();
        let made = run_events(&prog, &facts, &nightly);
        let keys: Vec<&str> = made.iter().map(|a| a.key.as_str()).collect();
        assert_eq!(
            keys,
            ["e1:1:weekly#1:0", "e1:1:weekly#2:0", "e1:1:weekly#3:0"]
        );
        assert_eq!(made[2].at, days(t0, 15));
        assert_eq!(run_events(&prog, &facts, &[days(t0, 60)]), made);
        // An occurrence at the very instant of the event is not made.
        let facts = PatientFacts {
            events: vec![
                event_at("app_started", started),
                event_at("app_stopped", days(t0, 15)),
            ],
            ..Default::default()
        };
        let made = run_events(&prog, &facts, &nightly);
        assert_eq!(made.len(), 2, "{made:?}");
    }

    /// A postnatal course: the ward is entered at the birth, home at the discharge three days
    /// later; home's message and its transition both count from the birth.
    fn birth_plan() -> Program {
        program(
            "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
             entry_points:\n  - { id: start, state: pregnant }\nstates:\n\
             \x20 - id: pregnant\n    phase: follow_up\n\
             \x20   transitions:\n      - { on: delivered, to: ward }\n\
             \x20 - id: ward\n    phase: in_hospital\n\
             \x20   transitions:\n      - { on: discharged, to: home }\n\
             \x20 - id: home\n    phase: follow_up\n\
             \x20   on_enter:\n      - follow_up: { channels: [sms], template: notice, after: 35d, at: \"09:00\", from: delivered }\n\
             \x20   transitions:\n      - { after: 42d, at: \"08:00\", from: delivered, to: visit }\n\
             \x20 - id: visit\n    phase: follow_up\n\
             \x20   transitions:\n      - { after: 14d, to: done }\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n",
        )
    }

    #[test]
    fn an_event_that_came_before_the_state_anchors_its_transitions_as_its_work() {
        let prog = birth_plan();
        let t0 = ts("2026-03-02T01:00:00Z");
        let born = days(t0, 10);
        let facts = PatientFacts {
            events: vec![
                event_at("delivered", born),
                event_at("discharged", days(t0, 13)),
            ],
            ..Default::default()
        };
        let nightly: Vec<Timestamp> = (1..=70).map(|d| days(t0, d)).collect();
        let made = run_events(&prog, &facts, &nightly);
        // 2026-03-12 09:00 Beijing is the birth; day 35 after it at 09:00 is 16 April, day 42 at
        // 08:00 is 23 April.
        let notice = made
            .iter()
            .find(|a| matches!(&a.action, Produced::FollowUp { .. }))
            .expect("the notice");
        let Produced::FollowUp { send_at, .. } = &notice.action else {
            unreachable!()
        };
        assert_eq!(*send_at, ts("2026-04-16T01:00:00Z"));
        let mut e = enrol(&prog, 1, "start", "Asia/Shanghai", &facts, &[], t0)
            .expect("enrols")
            .enrolment;
        let pending: Vec<PendingEvent> = facts
            .events
            .iter()
            .enumerate()
            .map(|(i, ev)| PendingEvent {
                seq: i as i64 + 1,
                name: ev.name.clone(),
                at: ev.at,
                set: Default::default(),
            })
            .collect();
        let mut visited = Vec::new();
        for p in &nightly {
            let o = step(&prog, &e, &facts, &pending, *p).expect("steps");
            visited.extend(o.transitions.iter().map(|t| (t.to.clone(), t.at)));
            e = o.enrolment;
        }
        assert_eq!(
            visited,
            [
                ("ward".to_string(), born),
                ("home".to_string(), days(t0, 13)),
                ("visit".to_string(), ts("2026-04-23T00:00:00Z")),
                ("done".to_string(), ts("2026-05-07T00:00:00Z")),
            ]
        );
        // A later birth (twins recorded apart, a correction) moves nothing already anchored.
        let mut facts2 = facts.clone();
        facts2.events.push(event_at("delivered", days(t0, 20)));
        assert_eq!(run_events(&prog, &facts2, &nightly), made);
    }

    /// A birth recorded late (a birth elsewhere, dated when it happened) is taken at the instant
    /// reached, and the times counted from it that have passed fire there at once.
    #[test]
    fn a_birth_recorded_late_counts_from_its_own_date() {
        let prog = program(
            "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
             entry_points:\n  - { id: start, state: pregnant }\nstates:\n\
             \x20 - id: pregnant\n    phase: follow_up\n\
             \x20   transitions:\n      - { on: delivered, to: ward }\n      - { after: 400d, to: done }\n\
             \x20 - id: ward\n    phase: in_hospital\n\
             \x20   transitions:\n      - { after: 7d, from: delivered, to: home }\n\
             \x20 - id: home\n    phase: follow_up\n\
             \x20   transitions:\n      - { after: 14d, at: \"09:00\", from: delivered, to: screen }\n\
             \x20 - id: screen\n    phase: follow_up\n\
             \x20   transitions:\n      - { after: 28d, at: \"08:00\", from: delivered, to: done }\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n",
        );
        let t0 = ts("2026-03-02T01:00:00Z");
        let e = enrol(
            &prog,
            1,
            "start",
            "Asia/Shanghai",
            &PatientFacts::default(),
            &[],
            t0,
        )
        .expect("enrols")
        .enrolment;
        // Checked nightly to day 20, when the birth of day 3 is recorded.
        let e = step(&prog, &e, &PatientFacts::default(), &[], days(t0, 20))
            .expect("steps")
            .enrolment;
        let born = days(t0, 3);
        let facts = PatientFacts {
            events: vec![event_at("delivered", born)],
            ..Default::default()
        };
        let pending = [PendingEvent {
            seq: 1,
            name: "delivered".into(),
            at: born,
            set: Default::default(),
        }];
        let recorded = days(t0, 20) + jiff::SignedDuration::from_hours(2);
        let o = step(&prog, &e, &facts, &pending, recorded).expect("steps");
        let taken: Vec<(String, Timestamp)> =
            o.transitions.iter().map(|t| (t.to.clone(), t.at)).collect();
        assert_eq!(
            taken,
            [
                ("ward".to_string(), days(t0, 20)),
                ("home".to_string(), days(t0, 20)),
                ("screen".to_string(), days(t0, 20)),
            ]
        );
        // Day 28 after the birth's date at 08:00 is 2 April 08:00 Beijing time.
        let o = step(&prog, &o.enrolment, &facts, &pending, days(t0, 40)).expect("steps");
        assert_eq!(o.transitions[0].at, ts("2026-04-02T00:00:00Z"));
    }

    #[test]
    fn an_event_still_to_come_is_waited_for() {
        // The state is entered before the event: its time counts from the first occurrence after.
        let prog = program(
            "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
             entry_points:\n  - { id: start, state: ward }\nstates:\n\
             \x20 - id: ward\n    phase: in_hospital\n\
             \x20   transitions:\n      - { after: 2d, from: discharged, to: done }\n\
             \x20 - id: done\n    phase: closed\n    terminal: true\n",
        );
        let t0 = ts("2026-03-02T01:00:00Z");
        let facts = PatientFacts {
            events: vec![event_at("discharged", days(t0, 5))],
            ..Default::default()
        };
        let e = enrol(&prog, 1, "start", "Asia/Shanghai", &facts, &[], t0)
            .expect("enrols")
            .enrolment;
        let o = step(&prog, &e, &facts, &[], days(t0, 30)).expect("steps");
        let taken: Vec<(String, Timestamp)> =
            o.transitions.iter().map(|t| (t.to.clone(), t.at)).collect();
        assert_eq!(taken, [("done".to_string(), days(t0, 7))]);
    }
}

#[cfg(test)]
mod invite_tests {
    use super::tests::{program, ts};
    use super::*;

    const PATHWAY: &str = "pathway: t\nversion: 1\ntitle: { zh: 测, en: T }\nowner_role: nurse\nroles: [nurse]\n\
        entry_points:\n  - { id: start, state: home }\nstates:\n\
        \x20 - id: home\n    phase: follow_up\n    on_enter:\n\
        \x20     - scale: { id: mood, scale: phq9, due: 3d, channels: [wechat, sms], template: phq9_invitation }\n\
        \x20     - scale: { scale: gad7, due: 3d }\n\
        \x20   transitions:\n      - { after: 30d, to: end }\n\
        \x20 - id: end\n    phase: closed\n    terminal: true\n";

    /// A push that names its channels and template is sent as a message at the instant it is
    /// made, named by the push's id; a push without them sends nothing.
    #[test]
    fn a_push_with_channels_and_a_template_is_sent_as_it_is_made() {
        let prog = program(PATHWAY);
        let t0 = ts("2026-03-02T01:00:00Z");
        let out =
            enrol(&prog, 7, "start", "UTC", &PatientFacts::default(), &[], t0).expect("enrols");
        let kinds: Vec<(&str, &str)> = out
            .actions
            .iter()
            .map(|a| (a.action.kind(), a.key.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("scale_push", "e7:1:0"),
                ("follow_up", "e7:1:0:invite"),
                ("scale_push", "e7:1:1"),
            ]
        );
        let Produced::FollowUp {
            follow_up_ref,
            channels,
            template,
            send_at,
            urgent,
        } = &out.actions[1].action
        else {
            panic!("a message");
        };
        assert_eq!(follow_up_ref.as_deref(), Some("mood"));
        assert_eq!(channels, &[Channel::Wechat, Channel::Sms]);
        assert_eq!(template, "phq9_invitation");
        assert_eq!((*send_at, *urgent), (t0, false));
    }
}
