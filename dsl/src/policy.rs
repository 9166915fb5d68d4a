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
            Action::Set(_) | Action::Cancel(_) => return None,
        })
    }
}

/// Why work may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A later step left the state that created it.
    StateLeft,
    /// It was created in a state left at the instant it was created.
    BornIntoLeftState,
    /// The enrolment reached a terminal state; `keep_open_tasks` is what that state declares.
    EnrolmentEnded { keep_open_tasks: bool },
    /// The enrolment was withdrawn; `keep_open_tasks` when the pathway routed the withdrawal
    /// (`on: withdrawn`) into a terminal state that declares it.
    Withdrawn { keep_open_tasks: bool },
    /// A `cancel` action named the action that made it.
    Cancelled,
}

/// The policy: whether `work` ends for `cause`.
///
/// - Leaving a state ends its open tasks (unless `keep`), scheduled follow-ups and state alarms;
///   a scale push, once sent, stays answerable, but one born into a state already left was
///   never sent.
/// - The end of an enrolment also ends its enrolment alarms and its kept tasks, unless the
///   terminal state keeps open tasks (`keep_open_tasks: true`).
/// - A withdrawal ends everything still open, pending scale pushes included, but kept tasks
///   when it was routed into a terminal state that keeps open tasks.
/// - A `cancel` action ends the tasks (kept or not), follow-ups and scale pushes the named action
///   made.
/// - Records never end.
///
/// The work of the enrolment's own schedules belongs to no state entry (the core's
/// `outcome::ENROLMENT_SEQ`), so no state's leaving reaches it, as none reaches an enrolment alarm.
pub fn ends(work: Work, cause: Cause) -> bool {
    use Cause::*;
    match (work, cause) {
        (Work::Record, _) => false,
        (
            Work::Task { keep },
            EnrolmentEnded { keep_open_tasks } | Withdrawn { keep_open_tasks },
        ) => !(keep && keep_open_tasks),
        (Work::Task { .. }, Cancelled) => true,
        (Work::Task { keep }, StateLeft | BornIntoLeftState) => !keep,
        (Work::FollowUp, _) => true,
        (Work::ScalePush, BornIntoLeftState | Withdrawn { .. } | Cancelled) => true,
        (Work::ScalePush, StateLeft | EnrolmentEnded { .. }) => false,
        // No action that `cancel` can name makes an alarm rule.
        (Work::Alarm(_), Cancelled) => false,
        (Work::Alarm(AlarmScope::State), _) => true,
        (Work::Alarm(AlarmScope::Enrolment), EnrolmentEnded { .. } | Withdrawn { .. }) => true,
        (Work::Alarm(AlarmScope::Enrolment), StateLeft | BornIntoLeftState) => false,
    }
}

/// Whether `work` that has come due by the instant it would end outlives the ending: a follow-up
/// whose send time has passed is delivered, whichever pass notices the ending; work born into a
/// state left at the instant it was made never existed and ends whatever its due, and a
/// withdrawal lets nothing further reach the patient.
pub fn outlives_once_due(work: Work, cause: Cause) -> bool {
    work == Work::FollowUp && !matches!(cause, Cause::BornIntoLeftState | Cause::Withdrawn { .. })
}

/// The policy at an instant: whether `work` due at `due` (seconds) ends for `cause` at `at`.
/// Being a function of instants only, it gives the same answer whether the ending is seen by the
/// pass that made the work or by a later one.
pub fn ends_at(work: Work, cause: Cause, due: i64, at: i64) -> bool {
    ends(work, cause) && !(outlives_once_due(work, cause) && due <= at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDED: Cause = Cause::EnrolmentEnded {
        keep_open_tasks: false,
    };
    const ENDED_KEEPING: Cause = Cause::EnrolmentEnded {
        keep_open_tasks: true,
    };
    const WITHDRAWN: Cause = Cause::Withdrawn {
        keep_open_tasks: false,
    };

    #[test]
    fn a_terminal_state_cancels_kept_tasks_unless_it_keeps_them() {
        let kept = Work::Task { keep: true };
        assert!(!ends(kept, Cause::StateLeft));
        assert!(ends(kept, ENDED));
        assert!(!ends(kept, ENDED_KEEPING));
        assert!(ends(Work::Task { keep: false }, ENDED_KEEPING));
    }

    #[test]
    fn a_withdrawal_ends_everything_open_and_lets_nothing_due_through() {
        for work in [
            Work::Task { keep: true },
            Work::FollowUp,
            Work::ScalePush,
            Work::Alarm(AlarmScope::State),
            Work::Alarm(AlarmScope::Enrolment),
        ] {
            assert!(ends(work, WITHDRAWN), "{work:?}");
            assert!(ends_at(work, WITHDRAWN, 10, 20), "{work:?} already due");
        }
        let routed = Cause::Withdrawn {
            keep_open_tasks: true,
        };
        assert!(!ends(Work::Task { keep: true }, routed));
        assert!(ends(Work::ScalePush, routed));
        assert!(!ends(Work::Record, WITHDRAWN));
    }

    #[test]
    fn a_cancel_ends_what_its_action_made_but_a_due_follow_up_goes_out() {
        assert!(ends(Work::Task { keep: true }, Cause::Cancelled));
        assert!(ends(Work::ScalePush, Cause::Cancelled));
        assert!(ends_at(Work::FollowUp, Cause::Cancelled, 30, 20));
        assert!(!ends_at(Work::FollowUp, Cause::Cancelled, 20, 20));
        assert!(!ends(Work::Alarm(AlarmScope::State), Cause::Cancelled));
    }
}
