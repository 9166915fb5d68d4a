//! The patient a case plays, kept the way the store keeps it: the same step, the same outcome
//! policy (`outcome::apply` into [`TestSink`]), and what the store does around the step done here
//! in the same order and with the same core functions: a pass at each instant the case names
//! (goals due, then expired scale pushes, then the step if the enrolment is due), and after each
//! given the work the store would record for it — an answer settles the scale's pending push and
//! raises its critical-item tasks, a reading is judged by the armed alarm rules and the goals, a
//! completion closes the open task, a decision settles the referral — then a pass again, as the
//! API steps the enrolment at once.
//!
//! Everything the case did is kept as [`Played`]: every instant the runner stepped at with what was
//! recorded there, and every task, follow-up, scale push and referral with its key, due time and
//! status. `tests/test_replay.rs` records the same inputs at the same instants into a real store
//! and requires the same rows.

use std::collections::BTreeMap;

use carepath_dsl::condition::ConditionKind;
use carepath_dsl::{AlarmSpec, Goal};
use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use super::Report;
use super::format::{Decision, Given, local};
use crate::alarms::{AlarmRule, AlarmState, Edge};
use crate::facts::{FactEvent, Observation, PatientFacts, PendingEvent, RiskResult};
use crate::observations::{ConditionCache, GroupedReading};
use crate::outcome::{self, Because, Cause, OutcomeSink, Scope};
use crate::scales::Scales;
use crate::step::{self, Emitted, Enrolment, Produced, Program, Status};

/// Rounds of expiry and stepping in one pass, as the scheduler bounds them.
const MAX_SWEEP_ROUNDS: u32 = 64;

/// Everything a case did, in the terms the store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Played {
    pub case: String,
    pub start: Timestamp,
    /// The patient: zone, birth date (1 January of the year `age` years before the start) and sex.
    pub tz: String,
    pub birth_date: Option<Date>,
    pub sex: String,
    /// Every instant the runner stepped at, in order: the enrolment, each pass, each given.
    pub steps: Vec<Stepped>,
    /// Every task, follow-up, scale push and referral, in the order made, as it stands at the end.
    pub work: Vec<Work>,
    /// Why the case cannot be played as written: a malformed instant, an unknown zone, a given
    /// that cannot happen (a task that is not open, a scale with no pending push …).
    pub errors: Vec<String>,
    /// Expectations that did not hold.
    pub failures: Vec<String>,
    /// Inputs no production interface records (case `vars`, `risk` givens).
    pub outside_production: Vec<String>,
}

/// One instant the runner stepped at, and where the patient stood after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stepped {
    pub at: Timestamp,
    pub what: What,
    pub state: String,
    pub status: Status,
}

/// Why the runner stepped.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// The patient was enrolled at the case's entry point.
    Enrolled,
    /// A scheduler pass at an instant the case names.
    Pass,
    /// A given was recorded, then the enrolment was stepped at once.
    Given(Input),
}

/// Something recorded about the patient, as production's interfaces record it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An event from a hospital system or a member of staff (`POST /enrolments/{id}/events`).
    Event { name: String },
    /// One reading from a device, every kind it measured under one reading id
    /// (`POST /observations`); values in each kind's canonical unit.
    Reading {
        id: String,
        values: Vec<(String, f64)>,
    },
    /// Answers to the pending scale push with key `push` (`POST /scale-pushes/{id}/answers`).
    Answer {
        push: String,
        scale: String,
        answers: BTreeMap<String, i64>,
    },
    /// The open task with key `task` completed (`POST /tasks/{id}/complete`).
    TaskDone {
        task: String,
        task_ref: String,
        outcome: String,
    },
    /// A decision on the referral with key `referral` (`POST /referrals/{id}/accept|reject|arrive`).
    Referral {
        referral: String,
        decision: Decision,
    },
    /// The enrolment withdrawn (`POST /enrolments/{id}/withdraw`).
    Withdraw { reason: String },
    /// A risk result from outside the pathway: no production interface records one.
    Risk { model: String, score: f64 },
}

/// A task, follow-up, scale push or referral, as the store would hold it.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    /// The store's dedupe key: `e1:<state entry>:<action>` for the pathway's own actions,
    /// `alarm:<rule's key>:<second>` for an alarm's task, `scale:<push's key>:critical:<item>`
    /// for a critical item's task.
    pub key: String,
    /// `task`, `follow_up`, `scale_push` or `referral`.
    pub kind: &'static str,
    /// The task's id, the follow-up's template, the scale, or the referral's direction.
    pub name: String,
    /// When it is due: a task's due time, a follow-up's send time, a push's due time, a
    /// referral's accept-by time.
    pub due_at: Timestamp,
    pub status: WorkStatus,
    /// Made already cancelled: its state was left within the step that made it (at the instant it
    /// was made, or later in a catch-up), so it never reached a board or the patient.
    pub born_ended: bool,
    pub made_at: Timestamp,
    /// For a task an accepted referral moved to its receiving institution (or that was made
    /// there), the key of that referral; `None` while it stays where the patient was enrolled.
    pub held_by: Option<String>,
}

/// Where a piece of work stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkStatus {
    /// Waiting: a task not done, a follow-up not cancelled, a push not answered, a referral not
    /// decided.
    Open,
    /// A task completed, a push answered.
    Done,
    Cancelled,
    /// A push not answered by its expiry.
    Expired,
    Accepted,
    Rejected,
    Arrived,
}

impl WorkStatus {
    pub const ALL: [(&'static str, WorkStatus); 7] = [
        ("open", WorkStatus::Open),
        ("done", WorkStatus::Done),
        ("cancelled", WorkStatus::Cancelled),
        ("expired", WorkStatus::Expired),
        ("accepted", WorkStatus::Accepted),
        ("rejected", WorkStatus::Rejected),
        ("arrived", WorkStatus::Arrived),
    ];

    pub fn as_str(self) -> &'static str {
        WorkStatus::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map_or("open", |(n, _)| n)
    }

    pub fn parse(s: &str) -> Result<WorkStatus, String> {
        WorkStatus::ALL
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, w)| *w)
            .ok_or_else(|| {
                let names: Vec<&str> = WorkStatus::ALL.iter().map(|(n, _)| *n).collect();
                format!("`{s}` is not a status; use one of {}", names.join(", "))
            })
    }
}

/// One piece of the patient's work: an action of the pathway, or a task the store raises itself.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) made: Emitted,
    pub(super) status: WorkStatus,
    pub(super) born_ended: bool,
    /// An armed alarm rule's state in the core's rule machine (`crate::alarms`), once judged.
    alarm: Option<AlarmState>,
    /// A task's institution: `None` for the one the patient was enrolled at, else the accepted
    /// referral that moved the task's role (or the whole enrolment) away.
    pub(super) held_by: Option<String>,
    /// A push's reminders handled so far (`scale_pushes.reminders_sent`).
    reminders_sent: usize,
}

impl Item {
    pub(super) fn open(&self) -> bool {
        self.status == WorkStatus::Open
    }

    pub(super) fn due_at(&self) -> Timestamp {
        match &self.made.action {
            Produced::Referral { accept_by, .. } => *accept_by,
            other => outcome::due_of(other).unwrap_or(self.made.at),
        }
    }

    /// What the store calls it: the task's id, the template, the scale, the direction.
    pub(super) fn name(&self) -> String {
        match &self.made.action {
            Produced::Task { task_ref, .. } => task_ref.clone().unwrap_or_default(),
            Produced::FollowUp { template, .. } => template.clone(),
            Produced::ScalePush { scale, .. } => scale.clone(),
            Produced::Referral { direction, .. } => direction_name(*direction).to_string(),
            Produced::AlarmArmed { alarm } => alarm.id.clone(),
            Produced::Risk { model, .. } => model.clone(),
            Produced::GoalSet { goal } => goal.id.clone(),
            Produced::Note { .. } => String::new(),
            Produced::Cancel { action } => action.clone(),
        }
    }
}

pub(super) fn direction_name(d: carepath_dsl::Direction) -> &'static str {
    match d {
        carepath_dsl::Direction::Up => "up",
        carepath_dsl::Direction::Down => "down",
    }
}

/// A care-plan goal row: its status as last evaluated, and when it is evaluated next.
struct GoalRow {
    goal: Goal,
    met: Option<bool>,
    next_eval_at: Option<Timestamp>,
}

/// The runner's side of [`outcome::apply`]: what it shows is what the store writes.
struct TestSink<'a> {
    items: &'a mut Vec<Item>,
    risks: &'a mut Vec<RiskResult>,
    owners: &'a Owners,
}

/// Who holds the enrolment's work after accepted referrals (`store::queries::move_ownership`):
/// each named by the key of the referral that moved it; nothing moved, the enrolling institution.
#[derive(Debug, Default)]
pub(super) struct Owners {
    /// A referral that moved the whole enrolment, and with it every role.
    enrolment: Option<String>,
    /// Roles a referral's `moves` handed over.
    roles: BTreeMap<String, String>,
}

impl Owners {
    /// Where a task of `role` made now goes.
    fn of(&self, role: &str) -> Option<String> {
        self.roles.get(role).or(self.enrolment.as_ref()).cloned()
    }

    /// The holder of a task the step made, or `None` for any other work.
    fn of_task(&self, made: &Produced) -> Option<String> {
        match made {
            Produced::Task { role, .. } => self.of(role),
            _ => None,
        }
    }
}

impl OutcomeSink for TestSink<'_> {
    fn transition(&mut self, _: &step::Taken) {}

    fn end_work(&mut self, scope: Scope<'_>, cause: Cause, because: Because<'_>) {
        end_work(self.items, scope, cause, because.at());
    }

    fn action(&mut self, a: &Emitted, ended: Option<Because<'_>>) {
        if let (
            Produced::Task {
                covers_critical: Some(scale),
                ..
            },
            None,
        ) = (&a.action, ended)
        {
            // The pathway's own urgent task stands for the open critical-item tasks of the scale.
            let prefix = format!("critical_{scale}_");
            for it in self.items.iter_mut().filter(|it| {
                it.open()
                    && it.made.key.starts_with("scale:")
                    && matches!(&it.made.action, Produced::Task { task_ref: Some(r), .. } if r.starts_with(&prefix))
            }) {
                it.status = WorkStatus::Cancelled;
            }
        }
        self.items.push(Item {
            made: a.clone(),
            status: if ended.is_some() {
                WorkStatus::Cancelled
            } else {
                WorkStatus::Open
            },
            born_ended: ended.is_some(),
            alarm: None,
            held_by: self.owners.of_task(&a.action),
            reminders_sent: 0,
        });
    }

    fn risk(&mut self, r: RiskResult) {
        self.risks.push(r);
    }
}

/// Ends the open work in `scope` that the policy ends for `cause` at `at`.
fn end_work(items: &mut [Item], scope: Scope<'_>, cause: Cause, at: Timestamp) {
    for it in items.iter_mut().filter(|it| it.open()) {
        let in_scope = scope.holds(it.made.state_seq, it.made.action.work_ref());
        let due = outcome::due_of(&it.made.action).unwrap_or(it.made.at);
        if in_scope && outcome::ends_at(outcome::work_of(&it.made.action), cause, due, at) {
            it.status = WorkStatus::Cancelled;
        }
    }
}

/// Events only the engine raises: a case gives what causes them instead.
const ENGINE_EVENTS: &[(&str, &str)] = &[
    ("task_done:", "give `task_done: { task: …, outcome: … }`"),
    ("scale_answered:", "give `scale: { scale: …, … }`"),
    (
        "scale_expired:",
        "a push expires by itself at its `expires` time",
    ),
    ("alarm:", "give the `observation` that trips the alarm rule"),
    ("referral_accepted", "give `referral: accept`"),
    ("referral_rejected", "give `referral: reject`"),
    ("referral_arrived", "give `referral: arrive`"),
    ("withdrawn", "give `withdraw: <reason>`"),
];

pub(super) struct World<'a> {
    prog: &'a Program,
    pub(super) tz: TimeZone,
    pub(super) start: Timestamp,
    pub(super) facts: PatientFacts,
    pending: Vec<PendingEvent>,
    seq: i64,
    pub(super) enrolment: Enrolment,
    /// When the store would next step the enrolment (`next_wake_at`).
    wake: Option<Timestamp>,
    pub(super) items: Vec<Item>,
    goals: Vec<GoalRow>,
    readings: Vec<GroupedReading>,
    /// Alarms with an open episode: at most one per alarm of the enrolment.
    pub(super) episodes: Vec<String>,
    /// Episodes opened so far, by alarm.
    pub(super) episodes_opened: BTreeMap<String, u32>,
    pub(super) owners: Owners,
    /// The dispatcher's quiet hours, for when a follow-up may first be sent.
    pub(super) quiet: Option<crate::delivery::QuietHours>,
    goal_conditions: ConditionCache,
    pub(super) steps: Vec<Stepped>,
}

impl<'a> World<'a> {
    /// Enrols the patient at `entry` at `start`, as `store::enrol` does.
    pub(super) fn enrol(
        prog: &'a Program,
        entry: &str,
        tz_name: &str,
        facts: PatientFacts,
        start: Timestamp,
        report: &mut Report,
    ) -> Result<World<'a>, String> {
        let out = step::enrol(prog, 1, entry, tz_name, &facts, &[], start)
            .map_err(|e| format!("enrolling at `{entry}` failed: {e}"))?;
        let mut w = World {
            prog,
            tz: crate::time::zone(tz_name),
            start,
            facts,
            pending: Vec::new(),
            seq: 0,
            enrolment: out.enrolment.clone(),
            wake: None,
            items: Vec::new(),
            goals: prog
                .pathway
                .goals
                .iter()
                .map(|g| GoalRow {
                    goal: g.clone(),
                    met: None,
                    next_eval_at: Some(start),
                })
                .collect(),
            readings: Vec::new(),
            episodes: Vec::new(),
            episodes_opened: BTreeMap::new(),
            owners: Owners::default(),
            quiet: Some(crate::delivery::DEFAULT_QUIET_HOURS),
            goal_conditions: ConditionCache::new(ConditionKind::GoalReading),
            steps: Vec::new(),
        };
        w.apply(out, report);
        w.stepped(start, What::Enrolled);
        Ok(w)
    }

    pub(super) fn stepped(&mut self, at: Timestamp, what: What) {
        self.steps.push(Stepped {
            at,
            what,
            state: self.enrolment.state.clone(),
            status: self.enrolment.status,
        });
    }

    /// Carries out one step's outcome, through the one policy, and records coverage.
    fn apply(&mut self, out: step::Outcome, report: &mut Report) {
        for t in &out.transitions {
            report.transitions_taken.insert((t.from.clone(), t.index));
            report.states_visited.insert(t.from.clone());
            report.states_visited.insert(t.to.clone());
        }
        report.states_visited.insert(out.enrolment.state.clone());
        outcome::apply(
            &out,
            &mut TestSink {
                items: &mut self.items,
                risks: &mut self.facts.risks,
                owners: &self.owners,
            },
        );
        for a in &out.actions {
            if let Produced::GoalSet { goal } = &a.action {
                self.goals.push(GoalRow {
                    goal: goal.clone(),
                    met: None,
                    next_eval_at: Some(a.at),
                });
            }
        }
        self.wake = out.next_wake;
        self.enrolment = out.enrolment;
        self.settle_reminders();
    }

    /// A scheduler pass at `t` (`scheduler::run_pass`): goals due, then rounds of scale-push
    /// expiry and a step of the enrolment when it is due, then the goals its steps set.
    pub(super) fn pass(&mut self, t: Timestamp, report: &mut Report) -> Result<(), String> {
        self.goals_due(t);
        for round in 0..MAX_SWEEP_ROUNDS {
            let expired = self.expire(t);
            let reminded = self.remind(t);
            let silent = self.silence(t);
            if round > 0 && expired == 0 && reminded == 0 && silent == 0 {
                break;
            }
            self.step(t, report)?;
        }
        self.goals_due(t);
        Ok(())
    }

    /// Steps the enrolment at `t` if it is active and due, with the work as it stands.
    fn step(&mut self, t: Timestamp, report: &mut Report) -> Result<(), String> {
        if self.enrolment.status != Status::Active || self.wake.is_none_or(|w| w > t) {
            return Ok(());
        }
        let tasks = || {
            self.items
                .iter()
                .filter(|it| it.open() && matches!(it.made.action, Produced::Task { .. }))
        };
        self.facts.open_tasks = tasks().count() as i64;
        self.facts.overdue_tasks = tasks().filter(|it| it.due_at() < t).count() as i64;
        self.facts.goals_met = self
            .goals
            .iter()
            .filter(|g| g.met == Some(true))
            .map(|g| g.goal.id.clone())
            .collect();
        let out = step::step(self.prog, &self.enrolment, &self.facts, &self.pending, t)
            .map_err(|e| format!("step failed: {e}"))?;
        self.apply(out, report);
        Ok(())
    }

    /// An event recorded at `at` wakes the enrolment no later than `at`.
    fn add_event(&mut self, name: String, at: Timestamp) {
        self.seq += 1;
        self.facts.events.push(FactEvent {
            name: name.clone(),
            at,
        });
        self.facts.events.sort_by_key(|e| e.at);
        self.pending.push(PendingEvent {
            seq: self.seq,
            name,
            at,
            set: Default::default(),
        });
        self.wake_at(at);
    }

    fn wake_at(&mut self, at: Timestamp) {
        if self.enrolment.status == Status::Active {
            self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
        }
    }

    /// Pushes not answered by `t` that expire: each raises `scale_expired:<scale>` at its own
    /// expiry. Returns how many expired.
    fn expire(&mut self, t: Timestamp) -> usize {
        let mut due: Vec<(Timestamp, usize)> = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| match &it.made.action {
                Produced::ScalePush {
                    expires_at: Some(x),
                    ..
                } if it.open() && *x <= t => Some((*x, i)),
                _ => None,
            })
            .collect();
        due.sort();
        for (at, i) in &due {
            self.items[*i].status = WorkStatus::Expired;
            let name = format!("scale_expired:{}", self.items[*i].name());
            self.add_event(name, *at);
        }
        self.settle_reminders();
        due.len()
    }

    /// The reminders of pending pushes due by `t` (`store::scales::scale_push_sweep`): of each
    /// push only the latest due one is made (`scales::plan_reminders`). A chain's task step is a
    /// kept task on its role's board, keyed `scale:<push>:reminder:<n>`; messages are not played.
    /// Returns how many reminders were made.
    fn remind(&mut self, t: Timestamp) -> usize {
        let mut made = 0;
        for i in 0..self.items.len() {
            let it = &self.items[i];
            let Produced::ScalePush {
                reminders, chain, ..
            } = &it.made.action
            else {
                continue;
            };
            if !it.open() || it.born_ended {
                continue;
            }
            let steps = crate::scales::reminder_steps(reminders, chain);
            let times: Vec<i64> = steps.iter().map(|(at, _)| at.as_second()).collect();
            let plan = crate::scales::plan_reminders(&times, it.reminders_sent, t.as_second());
            self.items[i].reminders_sent = plan.sent;
            let Some(last) = plan.send else { continue };
            made += 1;
            let (at, Some(carepath_dsl::ReminderBy::Task { role, title, due })) = &steps[last]
            else {
                continue;
            };
            let push = &self.items[i].made;
            let task = Produced::Task {
                task_ref: Some(format!("scale_push:{}", push.key)),
                role: role.clone(),
                title: title.clone(),
                due_at: crate::time::add(*at, *due, &TimeZone::UTC),
                priority: carepath_dsl::Priority::Normal,
                sla: None,
                keep: true,
                covers_critical: None,
            };
            let made_item = Emitted {
                key: format!("scale:{}:reminder:{}", push.key, last + 1),
                state: push.state.clone(),
                state_seq: push.state_seq,
                at: *at,
                action: task,
            };
            let held_by = self.owners.of_task(&made_item.action);
            self.items.push(Item {
                made: made_item,
                status: WorkStatus::Open,
                born_ended: false,
                alarm: None,
                held_by,
                reminders_sent: 0,
            });
        }
        made
    }

    /// The open tasks of a reminder chain whose push no longer waits for an answer (answered,
    /// expired, ended) are cancelled (`store::scales::cancel_reminders_of`).
    fn settle_reminders(&mut self) {
        let ended: Vec<String> = self
            .items
            .iter()
            .filter(|it| matches!(it.made.action, Produced::ScalePush { .. }) && !it.open())
            .map(|it| format!("scale_push:{}", it.made.key))
            .collect();
        for it in self.items.iter_mut().filter(|it| it.open()) {
            if let Produced::Task {
                task_ref: Some(r), ..
            } = &it.made.action
                && ended.contains(r)
            {
                it.status = WorkStatus::Cancelled;
            }
        }
    }

    /// Goals due at `t` are evaluated; an ended enrolment's goals are not evaluated again.
    fn goals_due(&mut self, t: Timestamp) {
        let active = self.enrolment.status == Status::Active;
        for i in 0..self.goals.len() {
            if self.goals[i].next_eval_at.is_some_and(|n| n <= t) {
                if active {
                    self.evaluate_goal(i, t);
                } else {
                    self.goals[i].next_eval_at = None;
                }
            }
        }
    }

    fn evaluate_goal(&mut self, i: usize, t: Timestamp) {
        let goal = &self.goals[i].goal;
        let condition = match &goal.measure {
            carepath_dsl::GoalMeasure::ShareOfReadings { reading, .. } => {
                self.goal_conditions.get(&reading.0).ok()
            }
            carepath_dsl::GoalMeasure::DaysLogged { .. } => None,
        };
        let measured = crate::sandbox::measure_goal(goal, condition, &self.facts, t, &self.tz);
        let next = crate::sandbox::goal_next_change(goal, &self.facts, t);
        self.goals[i].met = Some(measured.met);
        self.goals[i].next_eval_at = next;
    }

    /// Records one given at `t` as production records it; `Err` when it cannot happen.
    pub(super) fn record(&mut self, g: &Given, t: Timestamp) -> Result<Input, String> {
        let keys = [
            g.event.is_some(),
            g.observation.is_some(),
            g.scale.is_some(),
            g.task_done.is_some(),
            g.referral.is_some(),
            g.withdraw.is_some(),
            g.risk.is_some(),
        ];
        if keys.iter().filter(|k| **k).count() != 1 {
            return Err("a given names exactly one of event, observation, scale, task_done, referral, withdraw or risk".into());
        }
        if let Some(name) = &g.event {
            return self.event(name, t);
        }
        if let Some(values) = &g.observation {
            return self.reading(values, t);
        }
        if let Some(s) = &g.scale {
            return self.answer(s, t);
        }
        if let Some(done) = &g.task_done {
            return self.complete(&done.task, &done.outcome, t);
        }
        if let Some(d) = g.referral {
            return self.decide(d, t);
        }
        if let Some(reason) = &g.withdraw {
            return self.withdraw(reason, t);
        }
        let r = g.risk.as_ref().ok_or("no given")?;
        self.facts.risks.push(RiskResult {
            model: r.model.clone(),
            score: r.score,
            band: r.band.clone(),
            at: t,
        });
        self.facts.risks.sort_by_key(|r| r.at);
        Ok(Input::Risk {
            model: r.model.clone(),
            score: r.score,
        })
    }

    fn event(&mut self, name: &str, t: Timestamp) -> Result<Input, String> {
        if let Some((_, instead)) = ENGINE_EVENTS.iter().find(|(prefix, _)| {
            name.starts_with(prefix) && (prefix.ends_with(':') || name == *prefix)
        }) {
            return Err(format!(
                "event `{name}` is raised by the engine, never recorded from outside: {instead}"
            ));
        }
        // The admin API records only events the pathway declares or has built in.
        if let Some(reason) = carepath_dsl::events::refusal(&self.prog.pathway, name) {
            return Err(reason);
        }
        if self.enrolment.status != Status::Active {
            return Err(format!(
                "event `{name}` cannot be recorded: the enrolment is {} (in `{}`), and events are accepted only for active enrolments",
                self.enrolment.status.as_str(),
                self.enrolment.state
            ));
        }
        self.add_event(name.to_string(), t);
        Ok(Input::Event {
            name: name.to_string(),
        })
    }

    /// One device reading: stored, judged by the armed alarm rules (a rule that turns true raises
    /// its task and `alarm:<id>`), and the goals evaluated with it (`store::ingest_readings`).
    fn reading(&mut self, values: &BTreeMap<String, f64>, t: Timestamp) -> Result<Input, String> {
        let mut reading = GroupedReading {
            at: t.as_second(),
            values: Vec::new(),
        };
        let mut canonical = Vec::new();
        for (kind, value) in values {
            let v = crate::observations::normalise(kind, *value, None)
                .map_err(|e| format!("the reading would be refused: {e}"))?;
            canonical.push((kind.clone(), v));
        }
        if canonical.is_empty() {
            return Err("an observation names at least one kind and its value".into());
        }
        for (kind, v) in &canonical {
            reading.set(kind, *v);
            self.facts.observations.push(Observation {
                kind: kind.clone(),
                value: *v,
                at: t,
            });
        }
        self.facts.observations.sort_by_key(|o| o.at);
        self.readings.push(reading.clone());
        let id = format!("r{}", self.readings.len());
        self.wake_at(t);
        if self.enrolment.status == Status::Active {
            self.judge_alarms(&reading, t);
            for i in 0..self.goals.len() {
                self.evaluate_goal(i, t);
            }
        }
        Ok(Input::Reading {
            id,
            values: canonical,
        })
    }

    /// The armed alarm rules, in the order armed, each with its compiled rule and its state in the
    /// rule machine (a rule that cannot run is passed over, as the store passes it over).
    fn armed_rules(&mut self) -> Vec<(usize, AlarmSpec, AlarmRule)> {
        let mut out = Vec::new();
        for (i, it) in self.items.iter_mut().enumerate() {
            let Produced::AlarmArmed { alarm } = &it.made.action else {
                continue;
            };
            let Ok(rule) = AlarmRule::compile(alarm) else {
                continue;
            };
            if it.open() {
                let at = it.made.at.as_second();
                it.alarm.get_or_insert_with(|| AlarmState::armed(alarm, at));
                out.push((i, (**alarm).clone(), rule));
            }
        }
        out
    }

    /// A reading judged by each armed rule (`store::alarms::judge_readings`): a rule raised opens
    /// an episode, a rule cleared closes the alarm's open episode.
    fn judge_alarms(&mut self, reading: &GroupedReading, t: Timestamp) {
        for (i, spec, rule) in self.armed_rules() {
            let Some(state) = self.items[i].alarm.as_mut() else {
                continue;
            };
            match rule.feed(state, &reading.values, reading.at) {
                Some(Edge::Raised) => {
                    let n = state.raised;
                    self.open_episode(i, &spec, n, t);
                }
                Some(Edge::Cleared) => self.episodes.retain(|a| *a != spec.id),
                None => {}
            }
        }
    }

    /// No-reading rules whose silence has lasted their `for` by `t` are raised
    /// (`store::alarms::silence_sweep`). Returns how many episodes opened.
    fn silence(&mut self, t: Timestamp) -> usize {
        if self.enrolment.status != Status::Active {
            return 0;
        }
        let before = self.episodes.len();
        for (i, spec, rule) in self.armed_rules() {
            let Some(state) = self.items[i].alarm.as_mut() else {
                continue;
            };
            if rule.check_silence(state, t.as_second()) == Some(Edge::Raised) {
                let n = state.raised;
                self.open_episode(i, &spec, n, t);
            }
        }
        self.episodes.len() - before
    }

    /// Opens the `n`-th episode of the rule armed by item `i`, with its urgent task and the event
    /// `alarm:<id>`; nothing while the enrolment has an open episode of that alarm.
    fn open_episode(&mut self, i: usize, spec: &AlarmSpec, n: u32, t: Timestamp) {
        if self.episodes.contains(&spec.id) {
            return;
        }
        self.episodes.push(spec.id.clone());
        *self.episodes_opened.entry(spec.id.clone()).or_default() += 1;
        let key = format!("alarm:{}:episode:{n}", self.items[i].made.key);
        self.raise(key, crate::alarms::task(spec, t), t);
        self.add_event(format!("alarm:{}", spec.id), t);
    }

    /// A task the store raises itself (an alarm's, a critical item's), in the current state entry.
    fn raise(&mut self, key: String, task: Produced, t: Timestamp) {
        let held_by = self.owners.of_task(&task);
        self.items.push(Item {
            made: Emitted {
                key,
                state: self.enrolment.state.clone(),
                state_seq: self.enrolment.state_seq,
                at: t,
                action: task,
            },
            status: WorkStatus::Open,
            born_ended: false,
            alarm: None,
            held_by,
            reminders_sent: 0,
        });
    }

    /// Answers the newest pending push of the scale, scored by the scale's definition
    /// (`store::scales::answer_push`).
    fn answer(&mut self, s: &super::format::ScaleGiven, t: Timestamp) -> Result<Input, String> {
        let def = Scales::builtin()
            .get(&s.scale)
            .ok_or_else(|| format!("no scale `{}`", s.scale))?;
        let answers = if !s.answers.is_empty() {
            s.answers.clone()
        } else if !s.items.is_empty() {
            def.answers_from_items(&s.items)?
        } else if let Some(score) = s.score {
            def.answers_for(score)?
        } else {
            return Err(format!(
                "scale `{}`: give its `answers`, its `items` or a `score`",
                s.scale
            ));
        };
        let scored = def.score(&answers).map_err(|e| e.to_string())?;
        if let Some(score) = s.score
            && (score - scored.score).abs() > 1e-9
        {
            return Err(format!(
                "scale `{}`: the answers score {}, not {score}",
                s.scale, scored.score
            ));
        }
        if let Some(band) = &s.band
            && *band != scored.band
        {
            return Err(format!(
                "scale `{}`: a score of {} is in band `{}`, not `{band}`",
                s.scale, scored.score, scored.band
            ));
        }
        let push = self
            .items
            .iter()
            .rposition(|it| it.open() && matches!(&it.made.action, Produced::ScalePush { scale, .. } if *scale == s.scale))
            .ok_or_else(|| {
                format!(
                    "scale `{}` cannot be answered: no push of it is pending; pushes so far: {}",
                    s.scale,
                    self.describe("scale_push")
                )
            })?;
        self.items[push].status = WorkStatus::Done;
        self.settle_reminders();
        let push_key = self.items[push].made.key.clone();
        for hit in &scored.critical {
            if let Some(task) = hit.task(&s.scale, t) {
                self.raise(format!("scale:{push_key}:critical:{}", hit.item), task, t);
            }
        }
        self.facts.scales.push(scored.into_result(t));
        self.facts.scales.sort_by_key(|r| r.at);
        self.add_event(format!("scale_answered:{}", s.scale), t);
        Ok(Input::Answer {
            push: push_key,
            scale: s.scale.clone(),
            answers,
        })
    }

    /// Completes the oldest open task with this id (`store::queries::act_on_task`).
    fn complete(&mut self, task: &str, outcome: &str, t: Timestamp) -> Result<Input, String> {
        let accepted = self.prog.pathway.accepted_outcomes(Some(task));
        if !accepted.contains(&outcome) {
            return Err(format!(
                "task `{task}` cannot be completed with outcome `{outcome}`; it accepts {}",
                accepted.join(", ")
            ));
        }
        let open = self
            .items
            .iter()
            .position(|it| it.open() && matches!(&it.made.action, Produced::Task { task_ref: Some(r), .. } if r == task))
            .ok_or_else(|| {
                format!(
                    "task `{task}` cannot be completed: it is not open; tasks so far: {}",
                    self.describe("task")
                )
            })?;
        self.items[open].status = WorkStatus::Done;
        self.facts
            .outcomes
            .push((task.to_string(), outcome.to_string()));
        self.add_event(format!("task_done:{task}"), t);
        Ok(Input::TaskDone {
            task: self.items[open].made.key.clone(),
            task_ref: task.to_string(),
            outcome: outcome.to_string(),
        })
    }

    /// Decides the oldest referral waiting for it (`store::queries::decide_referral`).
    fn decide(&mut self, d: Decision, t: Timestamp) -> Result<Input, String> {
        let (waiting, then) = match d {
            Decision::Accept => (WorkStatus::Open, WorkStatus::Accepted),
            Decision::Reject => (WorkStatus::Open, WorkStatus::Rejected),
            Decision::Arrive => (WorkStatus::Accepted, WorkStatus::Arrived),
        };
        let i = self
            .items
            .iter()
            .position(|it| {
                it.status == waiting && matches!(it.made.action, Produced::Referral { .. })
            })
            .ok_or_else(|| {
                format!(
                    "no referral can be {}: none is {}; referrals so far: {}",
                    then.as_str(),
                    if waiting == WorkStatus::Open {
                        "awaiting a decision"
                    } else {
                        "accepted"
                    },
                    self.describe("referral")
                )
            })?;
        self.items[i].status = then;
        if d == Decision::Accept
            && let Produced::Referral { moves, .. } = &self.items[i].made.action
        {
            self.hand_over(self.items[i].made.key.clone(), moves.clone());
        }
        self.add_event(d.event().to_string(), t);
        Ok(Input::Referral {
            referral: self.items[i].made.key.clone(),
            decision: d,
        })
    }

    /// An accepted referral hands work over (`store::queries::move_ownership`): the roles it
    /// `moves`, or the whole enrolment when it names none; their open tasks go with them.
    fn hand_over(&mut self, referral: String, moves: Vec<String>) {
        if moves.is_empty() {
            self.owners.enrolment = Some(referral.clone());
            self.owners.roles.clear();
        } else {
            for role in &moves {
                self.owners.roles.insert(role.clone(), referral.clone());
            }
        }
        for it in self.items.iter_mut().filter(|it| it.open()) {
            if let Produced::Task { role, .. } = &it.made.action
                && (moves.is_empty() || moves.contains(role))
            {
                it.held_by = Some(referral.clone());
            }
        }
    }

    /// Withdraws the enrolment as `store::withdraw_tx` does: the event `withdrawn`, which the pass
    /// that follows steps at once (the state may route it to its closing work; either way the
    /// enrolment ends as withdrawn); an enrolment in error is withdrawn where it stands.
    fn withdraw(&mut self, reason: &str, t: Timestamp) -> Result<Input, String> {
        match self.enrolment.status {
            Status::Active => self.add_event(carepath_dsl::catalog::WITHDRAWN.to_string(), t),
            Status::Error => {
                let out = step::withdraw_unrouted(&self.enrolment, &self.pending, t);
                outcome::apply(
                    &out,
                    &mut TestSink {
                        items: &mut self.items,
                        risks: &mut self.facts.risks,
                        owners: &self.owners,
                    },
                );
                self.wake = None;
                self.enrolment = out.enrolment;
            }
            other => {
                return Err(format!(
                    "the enrolment cannot be withdrawn: it is already {}",
                    other.as_str()
                ));
            }
        }
        Ok(Input::Withdraw {
            reason: reason.to_string(),
        })
    }

    /// The work of one kind made so far, for messages: name, due time, status.
    pub(super) fn describe(&self, kind: &str) -> String {
        let list: Vec<String> = self
            .items
            .iter()
            .filter(|it| it.made.action.kind() == kind)
            .map(|it| self.describe_item(it))
            .collect();
        if list.is_empty() {
            "none".into()
        } else {
            list.join("; ")
        }
    }

    pub(super) fn describe_item(&self, it: &Item) -> String {
        let what = match &it.made.action {
            Produced::Task { role, priority, .. } => {
                format!("`{}` ({role}, {})", it.name(), priority.as_str())
            }
            Produced::FollowUp { channels, .. } => format!(
                "`{}` ({})",
                it.name(),
                channels
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Produced::Referral {
                own_community: true,
                ..
            } => format!("`{}` to the patient's own community institution", it.name()),
            Produced::Referral { to, .. } => format!("`{}` to {}", it.name(), to.as_str()),
            _ => format!("`{}`", it.name()),
        };
        let status = if it.born_ended {
            "made already cancelled (its state was left within the step that made it)"
        } else {
            it.status.as_str()
        };
        let sent = match &it.made.action {
            Produced::FollowUp { .. } if self.sent_at(it) != it.due_at() => {
                format!(
                    " (sent {}, after quiet hours)",
                    local(self.sent_at(it), &self.tz)
                )
            }
            _ => String::new(),
        };
        let held = match (&it.made.action, &it.held_by) {
            (Produced::Task { .. }, Some(_)) => ", held by the receiving institution",
            _ => "",
        };
        format!(
            "{what} due {}{sent}, {status}{held}",
            local(it.due_at(), &self.tz)
        )
    }

    /// When the dispatcher may first send a follow-up: its send time, or the end of the quiet
    /// hours it falls in, on the patient's clock (`carepath_engine::delivery`).
    pub(super) fn sent_at(&self, it: &Item) -> Timestamp {
        let at = it.due_at();
        self.quiet
            .and_then(|q| q.next_allowed(at, &self.tz))
            .unwrap_or(at)
    }

    /// The work as the store holds it now.
    pub(super) fn work(&self) -> Vec<Work> {
        self.items
            .iter()
            .filter(|it| {
                matches!(
                    it.made.action,
                    Produced::Task { .. }
                        | Produced::FollowUp { .. }
                        | Produced::ScalePush { .. }
                        | Produced::Referral { .. }
                )
            })
            .map(|it| Work {
                key: it.made.key.clone(),
                kind: it.made.action.kind(),
                name: it.name(),
                due_at: it.due_at(),
                status: it.status,
                born_ended: it.born_ended,
                made_at: it.made.at,
                held_by: it.held_by.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pathway_test::testing::play;

    fn error_of(given: &str) -> String {
        let played = play(given, "  []");
        assert_eq!(played.errors.len(), 1, "{:?}", played.errors);
        let e = played.errors[0].clone();
        assert!(e.starts_with("case `the case`, given at `"), "{e}");
        e
    }

    fn inputs(p: &Played) -> Vec<&Input> {
        p.steps
            .iter()
            .filter_map(|s| match &s.what {
                What::Given(i) => Some(i),
                _ => None,
            })
            .collect()
    }

    fn work<'p>(p: &'p Played, name: &str) -> Vec<&'p Work> {
        p.work.iter().filter(|w| w.name == name).collect()
    }

    #[test]
    fn events_the_engine_raises_are_refused_with_what_to_give_instead() {
        for (event, instead) in [
            ("task_done:call", "task_done: { task"),
            ("scale_answered:phq9", "scale: { scale"),
            ("alarm:bp_crisis", "observation"),
            ("referral_accepted", "referral: accept"),
        ] {
            let e = error_of(&format!("  - {{ at: 1h, event: \"{event}\" }}"));
            assert!(
                e.contains("raised by the engine") && e.contains(instead),
                "{e}"
            );
        }
        let p = play("  - { at: 1h, event: worse }", "  []");
        assert_eq!(
            inputs(&p),
            [&Input::Event {
                name: "worse".into()
            }]
        );
    }

    #[test]
    fn a_given_names_one_thing() {
        let e = error_of("  - { at: 1h, event: worse, withdraw: moved away }");
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn a_task_is_completed_only_while_open_and_by_its_key() {
        let e = error_of("  - { at: 1h, task_done: { task: review } }");
        assert!(
            e.contains("task `review` cannot be completed: it is not open; tasks so far: `call`"),
            "{e}"
        );
        let p = play(
            "  - { at: 1h, task_done: { task: call, outcome: reached } }",
            "  []",
        );
        assert_eq!(
            inputs(&p),
            [&Input::TaskDone {
                task: "e1:1:0".into(),
                task_ref: "call".into(),
                outcome: "reached".into()
            }]
        );
        assert_eq!(p.steps.last().map(|s| s.state.as_str()), Some("review"));
    }

    #[test]
    fn answers_are_scored_by_the_scale_and_settle_the_newest_pending_push() {
        let nine = |v: i64| {
            (1..=9)
                .map(|i| (format!("q{i}"), v))
                .collect::<BTreeMap<_, _>>()
        };
        for given in [
            "{ scale: phq9, answers: { q1: 0, q2: 0, q3: 0, q4: 0, q5: 0, q6: 0, q7: 0, q8: 0, q9: 0 } }",
            "{ scale: phq9, items: [0, 0, 0, 0, 0, 0, 0, 0, 0] }",
            "{ scale: phq9, score: 0, band: minimal }",
        ] {
            let p = play(&format!("  - {{ at: 1d, scale: {given} }}"), "  []");
            assert!(p.errors.is_empty(), "{given}: {:?}", p.errors);
            assert_eq!(
                inputs(&p),
                [&Input::Answer {
                    push: "e1:1:2".into(),
                    scale: "phq9".into(),
                    answers: nine(0)
                }],
                "{given}"
            );
            assert_eq!(work(&p, "phq9")[0].status, WorkStatus::Done);
        }
        for (given, says) in [
            (
                "{ scale: phq9, score: 28 }",
                "cannot score 28; the nearest scores it can give are 27",
            ),
            (
                "{ scale: phq9, score: 4, band: severe }",
                "a score of 4 is in band `minimal`, not `severe`",
            ),
            (
                "{ scale: phq9, items: [1, 0, 0, 0, 0, 0, 0, 0, 0], score: 2 }",
                "the answers score 1, not 2",
            ),
            (
                "{ scale: epds, score: 4 }",
                "no push of it is pending; pushes so far: `phq9` due 2026-03-04T09:00:00+08:00, open",
            ),
            (
                "{ scale: phq9 }",
                "give its `answers`, its `items` or a `score`",
            ),
        ] {
            let e = error_of(&format!("  - {{ at: 1d, scale: {given} }}"));
            assert!(e.contains(says), "{given}: {e}");
        }
        // Expired at 3d: too late to answer.
        let e = error_of("  - { at: 4d, scale: { scale: phq9, score: 3 } }");
        assert!(
            e.contains("`phq9` due 2026-03-04T09:00:00+08:00, expired"),
            "{e}"
        );
    }

    #[test]
    fn a_critical_item_raises_its_urgent_task_at_once() {
        let p = play(
            "  - { at: 1d, scale: { scale: phq9, items: [0, 0, 0, 0, 0, 0, 0, 0, 2] } }",
            "  - { at: 1d, task: { id: critical_phq9_q9, role: doctor, priority: urgent, due: 25h, status: open } }",
        );
        assert!(p.errors.is_empty() && p.failures.is_empty(), "{p:#?}");
        assert_eq!(
            work(&p, "critical_phq9_q9")[0].key,
            "scale:e1:1:2:critical:q9"
        );
    }

    #[test]
    fn a_reading_that_turns_an_alarm_true_raises_one_task_per_episode() {
        let p = play(
            "  - { at: 1d, observation: { bp_systolic: 185 } }\n\
             \x20 - { at: 2d, observation: { bp_systolic: 190 } }\n\
             \x20 - { at: 3d, observation: { bp_systolic: 130 } }\n\
             \x20 - { at: 4d, observation: { bp_systolic: 182 } }",
            "  - { at: 1d, task: { id: alarm_bp_crisis, priority: urgent, due: 1d 09:30, status: open } }",
        );
        assert!(p.errors.is_empty() && p.failures.is_empty(), "{p:#?}");
        let alarms: Vec<&str> = work(&p, "alarm_bp_crisis")
            .iter()
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(
            alarms,
            ["alarm:e1:1:3:episode:1", "alarm:e1:1:3:episode:2"],
            "the 2d reading continues the episode; the 3d one ends it"
        );
        let e = error_of("  - { at: 1d, observation: { bp_systolic: 900 } }");
        assert!(
            e.contains("would be refused") && e.contains("plausible"),
            "{e}"
        );
    }

    #[test]
    fn silence_raises_a_no_reading_alarm_at_the_pass_once_per_silence() {
        let p = play(
            "  - { at: 4d, observation: { weight: 70 } }",
            "  - { at: 71h, no_task: weigh_in_call }\n\
             \x20 - { at: 3d, task: { id: weigh_in_call, due: 4d, status: open } }\n\
             \x20 - { at: 6d, task: { id: weigh_in_call, status: open } }",
        );
        assert!(p.errors.is_empty() && p.failures.is_empty(), "{p:#?}");
        // Silent from enrolment for 3 days; the reading at 4d clears it; silent again from 4d, the
        // pass at 7d raises the second episode.
        let p = play(
            "  - { at: 4d, observation: { weight: 70 } }",
            "  - { at: 7d, state: home }",
        );
        let keys: Vec<&str> = work(&p, "weigh_in_call")
            .iter()
            .map(|w| w.key.as_str())
            .collect();
        assert_eq!(keys, ["alarm:e1:1:4:episode:1", "alarm:e1:1:4:episode:2"]);
    }

    #[test]
    fn referrals_are_decided_in_order_and_an_arrival_needs_an_acceptance() {
        let p = play(
            "  - { at: 1d, event: worse }\n\
             \x20 - { at: 2d, referral: reject }\n\
             \x20 - { at: 2d, event: worse }",
            "  - { at: 2d, state: refer }",
        );
        assert!(p.errors.is_empty() && p.failures.is_empty(), "{p:#?}");
        let statuses: Vec<WorkStatus> = work(&p, "up").iter().map(|w| w.status).collect();
        assert_eq!(statuses, [WorkStatus::Rejected, WorkStatus::Open]);
        let e = error_of("  - { at: 1d, event: worse }\n  - { at: 2d, referral: arrive }");
        assert!(
            e.contains("no referral can be arrived: none is accepted"),
            "{e}"
        );
    }

    #[test]
    fn a_withdrawal_ends_all_open_work_and_nothing_is_recorded_after_it() {
        let p = play(
            "  - { at: 1h, withdraw: moved away }",
            "  - { at: 1h, status: withdrawn }\n\
             \x20 - { at: 1h, task: { id: call, status: cancelled } }\n\
             \x20 - { at: 1h, follow_up: { template: welcome, status: cancelled } }\n\
             \x20 - { at: 1h, scale_push: { scale: phq9, status: cancelled } }",
        );
        assert!(p.errors.is_empty() && p.failures.is_empty(), "{p:#?}");
        let e = error_of("  - { at: 1h, withdraw: moved away }\n  - { at: 2h, event: worse }");
        assert!(e.contains("the enrolment is withdrawn"), "{e}");
        let e = error_of("  - { at: 1h, withdraw: moved away }\n  - { at: 2h, withdraw: again }");
        assert!(e.contains("already withdrawn"), "{e}");
    }

    #[test]
    fn the_runner_steps_at_each_instant_and_after_each_given() {
        let p = play(
            "  - { at: 1h, event: worse }",
            "  - { at: 1h, state: refer }\n  - { at: 2h, state: refer }",
        );
        let whats: Vec<(i64, &What)> = p
            .steps
            .iter()
            .map(|s| ((s.at.as_second() - p.start.as_second()) / 3600, &s.what))
            .collect();
        assert!(matches!(
            whats.as_slice(),
            [
                (0, What::Enrolled),
                (1, What::Pass),
                (1, What::Given(_)),
                (2, What::Pass)
            ]
        ));
    }
}
