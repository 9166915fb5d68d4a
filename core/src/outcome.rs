//! What a step's outcome does to the work a patient already has: the one policy the store, the
//! simulator and `carepath test` apply, so that what an author's test shows, what a simulation
//! counts and what production stores cannot drift apart.
//!
//! The policy is a table ([`ends`], kept in the model crate so the validator reads it too) and a driver ([`apply`]) that walks an outcome and pushes each
//! decision into an [`OutcomeSink`]: the store's row buffer, the simulator's patient and the test
//! runner each implement the sink in their own medium, and none of them decides a rule itself.
//!
//! - Leaving a state ends the work it created: open tasks (unless `keep`), scheduled follow-ups
//!   with their pending messages, and state-scoped alarm rules. A scale push outlives its state:
//!   once sent, a questionnaire stays answerable until it is answered or expires. A follow-up
//!   whose send time had come by the instant its state was left outlives the leaving.
//! - Work created in a state left at the instant it was created (an immediate transition) is born
//!   ended: stored as cancelled, never sent — scale pushes included, since a push that was never
//!   sent cannot have been seen. Work created in a state left at a later instant of the same step
//!   (a catch-up) ends exactly as a later step would have ended it: every rule is a function of
//!   instants, never of which pass sees them.
//! - An enrolment that ends (its pathway reached a terminal state) ends the open work of every
//!   earlier state, its enrolment-scoped alarms, and its kept tasks unless the terminal state
//!   keeps open tasks; the terminal state's own actions are its closing work and are created
//!   live.
//! - A withdrawal (the `withdrawn` event) ends everything still open, pending scale pushes and
//!   follow-ups already due included; routed by `on: withdrawn` into a terminal state, that
//!   state's actions are its closing work and its `keep_open_tasks` is honoured.
//! - A `cancel` action ends the open tasks, follow-ups (not yet due) and scale pushes that the
//!   action it names made in earlier state entries of the enrolment.
//! - Every ending applies alike to work stored by earlier steps and to work made earlier in the
//!   same step (a catch-up), so the outcome is the same whichever passes saw it.
//! - A risk result joins the patient's facts; guards read the latest one as of their instant.

use std::fmt;

use jiff::Timestamp;

use crate::facts::RiskResult;
use crate::step::{Emitted, Outcome, Produced, Status, Taken};

pub use crate::step::Ended;

pub use carepath_dsl::policy::{Cause, Work, ends, outlives_once_due};

/// The state-entry sequence of the work of the enrolment's own schedules: no state entry has it
/// (entries count from 1), so leaving a state never ends that work, as it never ends an
/// enrolment alarm; the end of the enrolment, a withdrawal and a `cancel` end it like any other.
pub const ENROLMENT_SEQ: u32 = 0;

/// The kind of work a produced action is.
pub fn work_of(action: &Produced) -> Work {
    match action {
        Produced::Task { keep, .. } => Work::Task { keep: *keep },
        Produced::FollowUp { .. } => Work::FollowUp,
        Produced::ScalePush { .. } => Work::ScalePush,
        Produced::AlarmArmed { alarm } => Work::Alarm(alarm.scope),
        Produced::Risk { .. }
        | Produced::Referral { .. }
        | Produced::GoalSet { .. }
        | Produced::Note { .. }
        | Produced::Cancel { .. } => Work::Record,
    }
}

/// Whose stored work an ending concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The work of one state entry (its state-entry sequence).
    Entry(u32),
    /// The work of every state entry of the enrolment.
    Every,
    /// The work made by the action with this id, in every state entry of the enrolment.
    Made(&'a str),
}

impl Scope<'_> {
    /// Whether work made in state entry `seq` by the action `work_ref` is within the scope.
    pub fn holds(&self, seq: u32, work_ref: Option<&str>) -> bool {
        match self {
            Scope::Entry(s) => *s == seq,
            Scope::Every => true,
            Scope::Made(id) => work_ref == Some(*id),
        }
    }
}

/// What made work end, for the record and the cancellation reason.
#[derive(Debug, Clone, Copy)]
pub enum Because<'a> {
    Left(&'a Taken),
    /// The enrolment ended with this status at this instant.
    Ended(Status, Timestamp),
    /// A `cancel` action of state `state`, entered at `at`, named `action`.
    Cancelled {
        action: &'a str,
        state: &'a str,
        at: Timestamp,
    },
}

impl Because<'_> {
    /// The instant the work ends.
    pub fn at(&self) -> Timestamp {
        match self {
            Because::Left(t) => t.at,
            Because::Ended(_, at) | Because::Cancelled { at, .. } => *at,
        }
    }
}

/// The policy at an instant: whether `work` due at `due` ends for `cause` at `at` (see
/// [`carepath_dsl::policy::ends_at`]). Every sink tests its stored work with this.
pub fn ends_at(work: Work, cause: Cause, due: Timestamp, at: Timestamp) -> bool {
    carepath_dsl::policy::ends_at(work, cause, due.as_second(), at.as_second())
}

/// When a piece of produced work is due (a follow-up: when it is to be sent).
pub fn due_of(action: &Produced) -> Option<Timestamp> {
    match action {
        Produced::Task { due_at, .. } | Produced::ScalePush { due_at, .. } => Some(*due_at),
        Produced::FollowUp { send_at, .. } => Some(*send_at),
        _ => None,
    }
}

impl fmt::Display for Because<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Because::Left(t) => write!(f, "left `{}` for `{}` ({})", t.from, t.to, t.because),
            Because::Ended(status, _) => write!(f, "enrolment {}", status.as_str()),
            Because::Cancelled { action, state, .. } => {
                write!(f, "cancelled by `cancel: {action}` in `{state}`")
            }
        }
    }
}

/// Where an outcome is applied. The policy decides; the sink only carries out.
pub trait OutcomeSink {
    /// A transition was taken, in order.
    fn transition(&mut self, taken: &Taken);
    /// Work stored by earlier steps, within `scope`, ends now when [`ends_at`] holds for its
    /// kind and due time; the sink tests each piece it holds against the policy.
    fn end_work(&mut self, scope: Scope<'_>, cause: Cause, because: Because<'_>);
    /// A produced action, created live (`ended == None`) or born ended (`Some`: why).
    fn action(&mut self, action: &Emitted, ended: Option<Because<'_>>);
    /// A risk result joins the patient's facts (guards read the latest as of their instant).
    fn risk(&mut self, _result: RiskResult) {}
}

/// What became of one piece of a patient's work (a task, a follow-up or a scale push), as a sink
/// carried the policy out: so the store, the simulator and `carepath test` can be compared item
/// by item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The action's key (`e{enrolment}:{state-entry sequence}:{action index}`).
    pub key: String,
    /// `task`, `follow_up` or `scale_push`.
    pub kind: &'static str,
    /// When it is due (a follow-up: when it is to be sent).
    pub due_at: jiff::Timestamp,
    pub fate: Fate,
}

/// How work ended, if it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    /// Created live and still open.
    Live,
    /// Created already cancelled: its state was left within the step that made it.
    BornEnded,
    /// Created live and ended by a later step.
    EndedLater,
}

impl Made {
    /// The record of an emitted task, follow-up or scale push; `None` for other actions.
    pub fn of(a: &Emitted, fate: Fate) -> Option<Made> {
        let due_at = due_of(&a.action)?;
        Some(Made {
            key: a.key.clone(),
            kind: a.action.kind(),
            due_at,
            fate,
        })
    }
}

/// Applies one outcome to `sink`: first the transitions (the state the step began in ends its
/// stored work), then the end of the enrolment (earlier work of every state ends), then what
/// `cancel` actions name, then the actions in order, each born ended when an ending of this same
/// step reaches it (see [`ending_within`]).
pub fn apply(outcome: &Outcome, sink: &mut impl OutcomeSink) {
    for (i, t) in outcome.transitions.iter().enumerate() {
        // Only the state the step began in can hold work from earlier steps; states entered
        // within this step hold only this step's actions, which are born ended below.
        if i == 0 {
            sink.end_work(Scope::Entry(t.left_seq), Cause::StateLeft, Because::Left(t));
        }
        sink.transition(t);
    }
    if let Some(end) = &outcome.ended {
        sink.end_work(
            Scope::Every,
            end.cause,
            Because::Ended(outcome.enrolment.status, end.at),
        );
    }
    for c in &outcome.actions {
        if let Produced::Cancel { action } = &c.action {
            sink.end_work(
                Scope::Made(action),
                Cause::Cancelled,
                Because::Cancelled {
                    action,
                    state: &c.state,
                    at: c.at,
                },
            );
        }
    }
    for a in &outcome.actions {
        sink.action(a, ending_within(outcome, a));
        if let Produced::Risk {
            model, score, band, ..
        } = &a.action
        {
            sink.risk(RiskResult {
                model: model.clone(),
                score: *score,
                band: band.clone(),
                at: a.at,
            });
        }
    }
}

/// How work `a`, made by this step, ends within the same step, if it does: its state left (at the
/// instant it was made, it never existed; later, in a catch-up, as if a later step had seen it
/// left), a `cancel` of a later state entry naming its action, or the end of the enrolment (unless
/// it is the closing work of the state the enrolment ended in). The earliest ending wins.
pub fn ending_within<'o>(outcome: &'o Outcome, a: &Emitted) -> Option<Because<'o>> {
    let work = work_of(&a.action);
    let due = due_of(&a.action).unwrap_or(a.at);
    let mut endings: Vec<(Because<'o>, Cause)> = Vec::new();
    if let Some(t) = outcome
        .transitions
        .iter()
        .find(|t| t.left_seq == a.state_seq)
    {
        let cause = if t.at == a.at {
            Cause::BornIntoLeftState
        } else {
            Cause::StateLeft
        };
        endings.push((Because::Left(t), cause));
    }
    if let Some(made_by) = a.action.work_ref() {
        for c in outcome.actions.iter().filter(|c| c.state_seq > a.state_seq) {
            if let Produced::Cancel { action } = &c.action
                && action == made_by
            {
                let because = Because::Cancelled {
                    action,
                    state: &c.state,
                    at: c.at,
                };
                endings.push((because, Cause::Cancelled));
            }
        }
    }
    if let Some(end) = &outcome.ended
        && !(end.closing && a.state_seq == outcome.enrolment.state_seq)
    {
        endings.push((Because::Ended(outcome.enrolment.status, end.at), end.cause));
    }
    endings
        .into_iter()
        .filter(|(because, cause)| ends_at(work, *cause, due, because.at()))
        .min_by_key(|(because, _)| because.at())
        .map(|(because, _)| because)
}

#[cfg(test)]
mod tests {
    use super::*;
    use carepath_dsl::AlarmScope;
    use jiff::Timestamp;

    fn task(keep: bool) -> Produced {
        Produced::Task {
            task_ref: None,
            role: "nurse".into(),
            title: carepath_dsl::Text {
                zh: "甲".into(),
                en: "a".into(),
            },
            due_at: Timestamp::UNIX_EPOCH,
            priority: carepath_dsl::Priority::Normal,
            sla: None,
            keep,
            covers_critical: None,
        }
    }

    const ENDED: Cause = Cause::EnrolmentEnded {
        keep_open_tasks: false,
    };
    const WITHDRAWN: Cause = Cause::Withdrawn {
        keep_open_tasks: false,
    };

    #[test]
    fn leaving_ends_open_work_and_a_kept_task_stays() {
        use Cause::*;
        for cause in [StateLeft, BornIntoLeftState, ENDED] {
            assert!(ends(work_of(&task(false)), cause));
            assert!(ends(Work::FollowUp, cause));
            assert!(ends(Work::Alarm(AlarmScope::State), cause));
            assert!(!ends(Work::Record, cause));
        }
        assert!(!ends(work_of(&task(true)), StateLeft));
        assert!(!ends(work_of(&task(true)), BornIntoLeftState));
        assert!(ends(work_of(&task(true)), ENDED));
        assert!(!ends(Work::ScalePush, StateLeft));
        assert!(ends(Work::ScalePush, BornIntoLeftState));
        assert!(!ends(Work::ScalePush, ENDED));
        assert!(!ends(Work::Alarm(AlarmScope::Enrolment), StateLeft));
        assert!(ends(Work::Alarm(AlarmScope::Enrolment), ENDED));
    }

    #[test]
    fn a_withdrawal_ends_every_piece_of_open_work_whatever_its_due() {
        let (due, at) = (Timestamp::UNIX_EPOCH, Timestamp::MAX);
        for work in [
            work_of(&task(false)),
            work_of(&task(true)),
            Work::FollowUp,
            Work::ScalePush,
            Work::Alarm(AlarmScope::State),
            Work::Alarm(AlarmScope::Enrolment),
        ] {
            assert!(ends_at(work, WITHDRAWN, due, at), "{work:?}");
        }
        assert!(!ends(Work::Record, WITHDRAWN));
        // An enrolment that ends lets a follow-up already due go out; a withdrawal does not.
        assert!(!ends_at(Work::FollowUp, ENDED, due, at));
    }

    /// Records what the policy pushes, in order.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl OutcomeSink for Log {
        fn transition(&mut self, t: &Taken) {
            self.0.push(format!("transition {}->{}", t.from, t.to));
        }
        fn end_work(&mut self, scope: Scope<'_>, cause: Cause, because: Because<'_>) {
            self.0.push(format!("end {scope:?} {cause:?} {because}"));
        }
        fn action(&mut self, a: &Emitted, ended: Option<Because<'_>>) {
            self.0
                .push(format!("{} {} {}", a.key, a.action.kind(), ended.is_some()));
        }
        fn risk(&mut self, r: RiskResult) {
            self.0.push(format!("risk {}", r.model));
        }
    }

    fn taken(from: &str, to: &str, left_seq: u32) -> Taken {
        Taken {
            from: from.into(),
            to: to.into(),
            at: Timestamp::UNIX_EPOCH,
            because: "after 1d".into(),
            index: 0,
            left_seq,
        }
    }

    fn emitted(seq: u32, i: usize, action: Produced) -> Emitted {
        Emitted {
            key: format!("e1:{seq}:{i}"),
            state: String::new(),
            state_seq: seq,
            at: Timestamp::UNIX_EPOCH,
            action,
        }
    }

    fn enrolment(state: &str, state_seq: u32, status: Status) -> crate::step::Enrolment {
        crate::step::Enrolment {
            id: 1,
            pathway_id: "p".into(),
            version: 1,
            state: state.into(),
            state_seq,
            entered_at: Timestamp::UNIX_EPOCH,
            vars: Default::default(),
            last_event_seq: 0,
            status,
            tz: "UTC".into(),
            enrolled_at: Timestamp::UNIX_EPOCH,
            checked_at: Timestamp::UNIX_EPOCH,
        }
    }

    fn push(push_ref: Option<&str>) -> Produced {
        Produced::ScalePush {
            scale: "epds".into(),
            due_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            reminders: vec![],
            chain: vec![],
            push_ref: push_ref.map(str::to_string),
        }
    }

    fn hours(h: i64) -> Timestamp {
        Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_hours(h)
    }

    #[test]
    fn a_catch_up_ends_the_old_state_once_and_bears_passed_work_ended() {
        let risk = Produced::Risk {
            model: "lace".into(),
            score: 9.0,
            band: "moderate".into(),
            contributions: Default::default(),
        };
        for keep_open_tasks in [false, true] {
            let outcome = Outcome {
                enrolment: enrolment("c", 3, Status::Completed),
                transitions: vec![taken("a", "b", 1), taken("b", "c", 2)],
                actions: vec![
                    emitted(2, 0, push(None)),
                    emitted(2, 1, task(true)),
                    emitted(2, 2, risk.clone()),
                    emitted(3, 0, push(None)),
                    emitted(3, 1, task(false)),
                ],
                next_wake: None,
                trace: vec![],
                ended: Some(Ended {
                    cause: Cause::EnrolmentEnded { keep_open_tasks },
                    at: Timestamp::UNIX_EPOCH,
                    closing: true,
                }),
            };
            let mut log = Log::default();
            apply(&outcome, &mut log);
            // The kept task of a state the enrolment passed through ends with the enrolment
            // unless the terminal state keeps open tasks; the terminal state's own work is live.
            let kept = format!("e1:2:1 task {}", !keep_open_tasks);
            assert_eq!(
                log.0,
                [
                    "end Entry(1) StateLeft left `a` for `b` (after 1d)",
                    "transition a->b",
                    "transition b->c",
                    &format!(
                        "end Every EnrolmentEnded {{ keep_open_tasks: {keep_open_tasks} }} enrolment completed"
                    ),
                    "e1:2:0 scale_push true",
                    &kept,
                    "e1:2:2 risk false",
                    "risk lace",
                    "e1:3:0 scale_push false",
                    "e1:3:1 task false",
                ]
            );
        }
    }

    #[test]
    fn a_cancel_ends_what_its_action_made_in_the_same_step_and_before() {
        let mut kept_call = task(true);
        if let Produced::Task { task_ref, .. } = &mut kept_call {
            *task_ref = Some("call".into());
        }
        let early = Produced::FollowUp {
            follow_up_ref: Some("early".into()),
            channels: vec![carepath_dsl::Channel::Sms],
            template: "t".into(),
            send_at: hours(2),
            urgent: false,
        };
        let at = |mut e: Emitted, t: Timestamp| {
            e.at = t;
            e
        };
        let cancel = |id: &str| Produced::Cancel { action: id.into() };
        let mut left = taken("b", "c", 2);
        left.at = hours(5);
        let outcome = Outcome {
            enrolment: enrolment("c", 3, Status::Active),
            transitions: vec![left],
            actions: vec![
                at(emitted(2, 0, kept_call), hours(1)),
                at(emitted(2, 1, push(Some("quiz"))), hours(1)),
                at(emitted(2, 2, early), hours(1)),
                at(emitted(3, 0, cancel("call")), hours(5)),
                at(emitted(3, 1, cancel("quiz")), hours(5)),
                at(emitted(3, 2, cancel("early")), hours(5)),
            ],
            next_wake: None,
            trace: vec![],
            ended: None,
        };
        let mut log = Log::default();
        apply(&outcome, &mut log);
        assert_eq!(
            log.0,
            [
                "end Entry(2) StateLeft left `b` for `c` (after 1d)",
                "transition b->c",
                "end Made(\"call\") Cancelled cancelled by `cancel: call` in ``",
                "end Made(\"quiz\") Cancelled cancelled by `cancel: quiz` in ``",
                "end Made(\"early\") Cancelled cancelled by `cancel: early` in ``",
                // Kept, the task outlives its state but not the cancel; the push likewise; the
                // follow-up came due before the cancel, so it goes out.
                "e1:2:0 task true",
                "e1:2:1 scale_push true",
                "e1:2:2 follow_up false",
                "e1:3:0 cancel false",
                "e1:3:1 cancel false",
                "e1:3:2 cancel false",
            ]
        );
    }

    #[test]
    fn a_withdrawal_in_a_catch_up_ends_the_work_of_the_state_it_found() {
        let mut left = taken("a", "b", 1);
        left.at = hours(1);
        let outcome = Outcome {
            enrolment: enrolment("b", 2, Status::Withdrawn),
            transitions: vec![left],
            actions: vec![emitted(2, 0, task(true)), emitted(2, 1, push(None))],
            next_wake: None,
            trace: vec![],
            ended: Some(Ended {
                cause: Cause::Withdrawn {
                    keep_open_tasks: false,
                },
                at: hours(3),
                closing: false,
            }),
        };
        let mut log = Log::default();
        apply(&outcome, &mut log);
        assert_eq!(
            log.0,
            [
                "end Entry(1) StateLeft left `a` for `b` (after 1d)",
                "transition a->b",
                "end Every Withdrawn { keep_open_tasks: false } enrolment withdrawn",
                "e1:2:0 task true",
                "e1:2:1 scale_push true",
            ]
        );
    }
}
