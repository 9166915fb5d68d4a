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
//!   earlier state and its enrolment-scoped alarms too; the terminal state's own actions are its
//!   closing work and are created live.
//! - A risk result joins the patient's facts; guards read the latest one as of their instant.

use std::fmt;

use jiff::Timestamp;

use crate::facts::RiskResult;
use crate::step::{Emitted, Outcome, Produced, Status, Taken};

pub use carepath_dsl::policy::{Cause, Work, ends, outlives_once_due};

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
        | Produced::Note { .. } => Work::Record,
    }
}

/// Whose stored work an ending concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The work of one state entry (its state-entry sequence).
    Entry(u32),
    /// The work of every state entry of the enrolment.
    Every,
}

/// What made work end, for the record and the cancellation reason.
#[derive(Debug, Clone, Copy)]
pub enum Because<'a> {
    Left(&'a Taken),
    /// The enrolment ended with this status at this instant.
    Ended(Status, Timestamp),
}

impl Because<'_> {
    /// The instant the work ends.
    pub fn at(&self) -> Timestamp {
        match self {
            Because::Left(t) => t.at,
            Because::Ended(_, at) => *at,
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
        }
    }
}

/// Where an outcome is applied. The policy decides; the sink only carries out.
pub trait OutcomeSink {
    /// A transition was taken, in order.
    fn transition(&mut self, taken: &Taken);
    /// Work stored by earlier steps, within `scope`, ends now when [`ends`]`(kind, cause)` holds
    /// for its kind; the sink tests each kind it holds against the policy.
    fn end_work(&mut self, scope: Scope, cause: Cause, because: Because<'_>);
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
/// stored work), then the end of the enrolment (earlier work of every state ends), then the
/// actions in order (born ended when their state was left within this step).
pub fn apply(outcome: &Outcome, sink: &mut impl OutcomeSink) {
    for (i, t) in outcome.transitions.iter().enumerate() {
        // Only the state the step began in can hold work from earlier steps; states entered
        // within this step hold only this step's actions, which are born ended below.
        if i == 0 {
            sink.end_work(Scope::Entry(t.left_seq), Cause::StateLeft, Because::Left(t));
        }
        sink.transition(t);
    }
    let status = outcome.enrolment.status;
    if status != Status::Active {
        let at = outcome
            .transitions
            .last()
            .map_or(outcome.enrolment.checked_at, |t| t.at);
        sink.end_work(
            Scope::Every,
            Cause::EnrolmentEnded,
            Because::Ended(status, at),
        );
    }
    for a in &outcome.actions {
        let left = outcome
            .transitions
            .iter()
            .find(|t| t.left_seq == a.state_seq);
        // Left at the instant it was made, it never existed; left later (in this same step, a
        // catch-up), it ends exactly as if a later step had seen the state left.
        let ended = left
            .filter(|t| {
                let cause = if t.at == a.at {
                    Cause::BornIntoLeftState
                } else {
                    Cause::StateLeft
                };
                ends_at(
                    work_of(&a.action),
                    cause,
                    due_of(&a.action).unwrap_or(a.at),
                    t.at,
                )
            })
            .map(Because::Left);
        sink.action(a, ended);
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

    #[test]
    fn leaving_ends_open_work_and_a_kept_task_stays() {
        use Cause::*;
        for cause in [StateLeft, BornIntoLeftState, EnrolmentEnded] {
            assert!(ends(work_of(&task(false)), cause));
            assert!(!ends(work_of(&task(true)), cause));
            assert!(ends(Work::FollowUp, cause));
            assert!(ends(Work::Alarm(AlarmScope::State), cause));
            assert!(!ends(Work::Record, cause));
        }
        assert!(!ends(Work::ScalePush, StateLeft));
        assert!(ends(Work::ScalePush, BornIntoLeftState));
        assert!(!ends(Work::ScalePush, EnrolmentEnded));
        assert!(!ends(Work::Alarm(AlarmScope::Enrolment), StateLeft));
        assert!(ends(Work::Alarm(AlarmScope::Enrolment), EnrolmentEnded));
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
            assert!(ends_at(work, Cause::Withdrawn, due, at), "{work:?}");
        }
        assert!(!ends(Work::Record, Cause::Withdrawn));
        // An enrolment that ends lets a follow-up already due go out; a withdrawal does not.
        assert!(!ends_at(Work::FollowUp, Cause::EnrolmentEnded, due, at));
    }

    /// Records what the policy pushes, in order.
    #[derive(Default)]
    struct Log(Vec<String>);

    impl OutcomeSink for Log {
        fn transition(&mut self, t: &Taken) {
            self.0.push(format!("transition {}->{}", t.from, t.to));
        }
        fn end_work(&mut self, scope: Scope, cause: Cause, because: Because<'_>) {
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

    #[test]
    fn a_catch_up_ends_the_old_state_once_and_bears_passed_work_ended() {
        let push = Produced::ScalePush {
            scale: "epds".into(),
            due_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            reminders: vec![],
            chain: vec![],
        };
        let risk = Produced::Risk {
            model: "lace".into(),
            score: 9.0,
            band: "moderate".into(),
            contributions: Default::default(),
        };
        let outcome = Outcome {
            enrolment: crate::step::Enrolment {
                id: 1,
                pathway_id: "p".into(),
                version: 1,
                state: "c".into(),
                state_seq: 3,
                entered_at: Timestamp::UNIX_EPOCH,
                vars: Default::default(),
                last_event_seq: 0,
                status: Status::Completed,
                tz: "UTC".into(),
                enrolled_at: Timestamp::UNIX_EPOCH,
                checked_at: Timestamp::UNIX_EPOCH,
            },
            transitions: vec![taken("a", "b", 1), taken("b", "c", 2)],
            actions: vec![
                emitted(2, 0, push.clone()),
                emitted(2, 1, task(true)),
                emitted(2, 2, risk),
                emitted(3, 0, push),
                emitted(3, 1, task(false)),
            ],
            next_wake: None,
            trace: vec![],
        };
        let mut log = Log::default();
        apply(&outcome, &mut log);
        assert_eq!(
            log.0,
            [
                "end Entry(1) StateLeft left `a` for `b` (after 1d)",
                "transition a->b",
                "transition b->c",
                "end Every EnrolmentEnded enrolment completed",
                "e1:2:0 scale_push true",
                "e1:2:1 task false",
                "e1:2:2 risk false",
                "risk lace",
                "e1:3:0 scale_push false",
                "e1:3:1 task false",
            ]
        );
    }
}
