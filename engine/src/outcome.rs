//! What a step's outcome does to the work a patient already has: the one rule the store, the
//! scheduler and `carepath test` apply, so that what an author's test shows is what production
//! stores.
//!
//! Leaving a state ends the work it created: open tasks (unless `keep`), scheduled follow-ups with
//! their pending messages, and state-scoped alarm rules. Work created in a state that the same step
//! has already left (a catch-up, an immediate transition) is born ended: it is stored as
//! cancelled, and sends nothing. A scale push is the exception on the later path: once sent, a
//! questionnaire stays answerable until it is answered or expires, whatever state the patient is in;
//! but a push born into a state already left is never sent.

use carepath_dsl::AlarmScope;

use crate::step::Produced;

/// What becomes of a produced action whose state has been left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLeave {
    /// It outlives its state (kept tasks, enrolment alarms, records and facts).
    Stays,
    /// It is cancelled (open work) or disarmed (alarm rules).
    Ends,
}

/// An action created in a state the same step has already left.
pub fn born_into_left_state(action: &Produced) -> OnLeave {
    match action {
        Produced::ScalePush { .. } => OnLeave::Ends,
        other => when_state_left(other),
    }
}

/// An action of a state that a later step leaves.
pub fn when_state_left(action: &Produced) -> OnLeave {
    match action {
        Produced::Task { keep, .. } if !keep => OnLeave::Ends,
        Produced::FollowUp { .. } => OnLeave::Ends,
        Produced::AlarmArmed { alarm } if alarm.scope == AlarmScope::State => OnLeave::Ends,
        Produced::Task { .. }
        | Produced::AlarmArmed { .. }
        | Produced::ScalePush { .. }
        | Produced::Risk { .. }
        | Produced::Referral { .. }
        | Produced::GoalSet { .. }
        | Produced::Note { .. } => OnLeave::Stays,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(when_state_left(&task(false)), OnLeave::Ends);
        assert_eq!(when_state_left(&task(true)), OnLeave::Stays);
        assert_eq!(born_into_left_state(&task(true)), OnLeave::Stays);
        let push = Produced::ScalePush {
            scale: "epds".into(),
            due_at: Timestamp::UNIX_EPOCH,
            expires_at: None,
            reminders: vec![],
        };
        assert_eq!(when_state_left(&push), OnLeave::Stays);
        assert_eq!(born_into_left_state(&push), OnLeave::Ends);
        let note = Produced::Note {
            text: carepath_dsl::Text {
                zh: "记".into(),
                en: "n".into(),
            },
        };
        assert_eq!(born_into_left_state(&note), OnLeave::Stays);
    }
}
