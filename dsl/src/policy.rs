//! The outcome policy's table: which work a patient has ends, and why. It is written once, here in
//! the model crate, because two layers read it: the validator, to warn where a pathway's work can
//! never reach anyone, and the core's `outcome::apply`, which the store, the simulator and
//! `carepath test` carry out.

use crate::model::{Action, AlarmScope};

/// Work a pathway creates, by what decides whether it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Task {
        keep: bool,
    },
    FollowUp,
    ScalePush,
    Alarm(AlarmScope),
    /// Risk predictions, referrals, goals and notes: facts and records, never cancelled.
    Record,
}

impl Work {
    /// The work an action of the model creates (`None` for assignments, which create none).
    pub fn of_action(action: &Action) -> Option<Work> {
        Some(match action {
            Action::Task(t) => Work::Task { keep: t.keep },
            Action::FollowUp(_) => Work::FollowUp,
            Action::Scale(_) => Work::ScalePush,
            Action::Alarm(a) => Work::Alarm(a.scope),
            Action::Risk(_) | Action::Referral(_) | Action::Goal(_) | Action::Note(_) => {
                Work::Record
            }
            Action::Set(_) => return None,
        })
    }
}

/// Why work may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A later step left the state that created it.
    StateLeft,
    /// It was created in a state left at the instant it was created.
    BornIntoLeftState,
    /// The enrolment ended.
    EnrolmentEnded,
    /// The enrolment was withdrawn: nothing further reaches the patient or a board.
    Withdrawn,
}

/// The policy: whether `work` ends for `cause`.
///
/// Leaving a state ends its open tasks (unless `keep`), scheduled follow-ups and state alarms; a
/// scale push, once sent, stays answerable, but one born into a state already left was never
/// sent; enrolment alarms end with the enrolment; a withdrawal ends every piece of open work,
/// kept tasks and sent pushes included; records never end.
pub fn ends(work: Work, cause: Cause) -> bool {
    match work {
        Work::Task { keep } => !keep || cause == Cause::Withdrawn,
        Work::FollowUp | Work::Alarm(AlarmScope::State) => true,
        Work::ScalePush => matches!(cause, Cause::BornIntoLeftState | Cause::Withdrawn),
        Work::Alarm(AlarmScope::Enrolment) => {
            matches!(cause, Cause::EnrolmentEnded | Cause::Withdrawn)
        }
        Work::Record => false,
    }
}

/// Whether `work` that has come due by the instant it would end outlives the ending: a follow-up
/// whose send time has passed is delivered, whichever pass notices the ending; work born into a
/// state left at the instant it was made never existed and ends whatever its due, and nothing
/// not yet sent reaches a withdrawn patient.
pub fn outlives_once_due(work: Work, cause: Cause) -> bool {
    work == Work::FollowUp && !matches!(cause, Cause::BornIntoLeftState | Cause::Withdrawn)
}

/// The policy at an instant: whether `work` due at `due` (seconds) ends for `cause` at `at`.
/// Being a function of instants only, it gives the same answer whether the ending is seen by the
/// pass that made the work or by a later one.
pub fn ends_at(work: Work, cause: Cause, due: i64, at: i64) -> bool {
    ends(work, cause) && !(outlives_once_due(work, cause) && due <= at)
}
