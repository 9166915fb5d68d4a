//! Indicator counters: what an indicator's numerator and denominator count.
//!
//! An indicator is the ratio of two counts of one pathway's enrolments over a period. Each count is
//! written as a counter: a kind, and for most kinds the id of what it is about
//! (`goal_met:bp_controlled`, `entered:closed`). The grammar is small on purpose: every kind is one
//! recorded fact the engine can count with one query, and every id can be checked against the
//! pathway when it is written, so a typo shows up in `carepath validate`, not as a zero in a
//! monthly report. The indicator keeps the counter as text; the engine parses it with
//! [`Counter::parse`], the same function the validator uses.

use std::fmt;

/// One counter, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Enrolments active at any time in the period.
    Enrolled,
    /// Enrolments that started in the period.
    Started,
    /// Enrolments that reached a terminal state in the period.
    Completed,
    /// Enrolments whose goal was evaluated as met in the period.
    GoalMet(String),
    /// Enrolments that received the event in the period.
    Event(String),
    /// Enrolments that entered the state in the period (by a transition or at enrolment).
    Entered(String),
    /// Enrolments with the task completed in the period.
    TaskDone(String),
    /// Enrolments with the task completed in the period by its due time.
    TaskOnTime(String),
    /// Enrolments whose patient answered the scale in the period.
    ScaleAnswered(String),
    /// Enrolments with a follow-up due in the period that was sent.
    FollowUpSent,
}

/// What a counter's id must name, for the validator's hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    Nothing,
    Goal,
    Event,
    State,
    Task,
    Scale,
}

/// Every kind: name, what its id names, and a one-line description for documentation and hints.
pub const KINDS: &[(&str, Names, &str)] = &[
    (
        "enrolled",
        Names::Nothing,
        "enrolments active at any time in the period",
    ),
    (
        "started",
        Names::Nothing,
        "enrolments that started in the period",
    ),
    (
        "completed",
        Names::Nothing,
        "enrolments that reached a terminal state in the period",
    ),
    (
        "goal_met",
        Names::Goal,
        "enrolments whose goal was evaluated as met in the period",
    ),
    (
        "event",
        Names::Event,
        "enrolments that received the event in the period",
    ),
    (
        "entered",
        Names::State,
        "enrolments that entered the state in the period",
    ),
    (
        "task_done",
        Names::Task,
        "enrolments whose task was completed in the period",
    ),
    (
        "task_on_time",
        Names::Task,
        "enrolments whose task was completed in the period by its due time",
    ),
    (
        "scale_answered",
        Names::Scale,
        "enrolments whose patient answered the scale in the period",
    ),
    (
        "follow_up_sent",
        Names::Nothing,
        "enrolments with a follow-up due in the period that was sent",
    ),
];

/// Why a counter does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterError {
    UnknownKind(String),
    /// The kind needs an id (`goal_met` alone).
    MissingId(&'static str),
    /// The kind takes no id (`enrolled:x`).
    UnexpectedId(&'static str),
    /// The id is not a valid id or event name.
    BadId(&'static str, String),
}

impl fmt::Display for CounterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CounterError::UnknownKind(k) => write!(f, "unknown counter `{k}`"),
            CounterError::MissingId(k) => write!(f, "counter `{k}` needs an id: `{k}:<id>`"),
            CounterError::UnexpectedId(k) => write!(f, "counter `{k}` takes no id"),
            CounterError::BadId(k, id) => write!(f, "`{id}` is not a valid id for `{k}`"),
        }
    }
}

fn valid_id(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Event names may be qualified themselves (`scale_answered:phq9`, `task_done:day7_call`).
impl Counter {
    pub fn parse(text: &str) -> Result<Counter, CounterError> {
        let text = text.trim();
        let (kind, id) = match text.split_once(':') {
            Some((k, id)) => (k, Some(id)),
            None => (text, None),
        };
        let Some(&(kind, names, _)) = KINDS.iter().find(|(k, _, _)| *k == kind) else {
            return Err(CounterError::UnknownKind(kind.to_string()));
        };
        let id = match (names, id) {
            (Names::Nothing, None) => String::new(),
            (Names::Nothing, Some(_)) => return Err(CounterError::UnexpectedId(kind)),
            (_, None) | (_, Some("")) => return Err(CounterError::MissingId(kind)),
            (Names::Event, Some(id)) if crate::catalog::is_event_name(id) => id.to_string(),
            (Names::Event, Some(id)) => return Err(CounterError::BadId(kind, id.to_string())),
            (_, Some(id)) if valid_id(id) => id.to_string(),
            (_, Some(id)) => return Err(CounterError::BadId(kind, id.to_string())),
        };
        Ok(match kind {
            "enrolled" => Counter::Enrolled,
            "started" => Counter::Started,
            "completed" => Counter::Completed,
            "goal_met" => Counter::GoalMet(id),
            "event" => Counter::Event(id),
            "entered" => Counter::Entered(id),
            "task_done" => Counter::TaskDone(id),
            "task_on_time" => Counter::TaskOnTime(id),
            "scale_answered" => Counter::ScaleAnswered(id),
            _ => Counter::FollowUpSent,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Counter::Enrolled => "enrolled",
            Counter::Started => "started",
            Counter::Completed => "completed",
            Counter::GoalMet(_) => "goal_met",
            Counter::Event(_) => "event",
            Counter::Entered(_) => "entered",
            Counter::TaskDone(_) => "task_done",
            Counter::TaskOnTime(_) => "task_on_time",
            Counter::ScaleAnswered(_) => "scale_answered",
            Counter::FollowUpSent => "follow_up_sent",
        }
    }

    /// The id the counter is about, if its kind takes one.
    pub fn id(&self) -> Option<&str> {
        match self {
            Counter::GoalMet(s)
            | Counter::Event(s)
            | Counter::Entered(s)
            | Counter::TaskDone(s)
            | Counter::TaskOnTime(s)
            | Counter::ScaleAnswered(s) => Some(s),
            _ => None,
        }
    }

    pub fn names(&self) -> Names {
        KINDS
            .iter()
            .find(|(k, _, _)| *k == self.kind())
            .map(|(_, n, _)| *n)
            .unwrap_or(Names::Nothing)
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.id() {
            Some(id) => write!(f, "{}:{id}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

/// The kinds, for hints.
pub fn kind_names() -> Vec<&'static str> {
    KINDS.iter().map(|(k, _, _)| *k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Counter, CounterError>) {
        assert_eq!(Counter::parse(text), expected, "{text}");
    }

    #[test]
    fn parses_every_kind_and_round_trips() {
        for text in [
            "enrolled",
            "started",
            "completed",
            "goal_met:bp_controlled",
            "event:discharged",
            "event:scale_answered:phq9",
            "entered:closed",
            "task_done:day7_call",
            "task_on_time:day7_call",
            "scale_answered:phq9",
            "follow_up_sent",
        ] {
            let c = Counter::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_it_cannot_count() {
        check("enroled", Err(CounterError::UnknownKind("enroled".into())));
        check("goal_met", Err(CounterError::MissingId("goal_met")));
        check("goal_met:", Err(CounterError::MissingId("goal_met")));
        check("enrolled:x", Err(CounterError::UnexpectedId("enrolled")));
        check(
            "entered:Closed",
            Err(CounterError::BadId("entered", "Closed".into())),
        );
        check("event:a b", Err(CounterError::BadId("event", "a b".into())));
        check("", Err(CounterError::UnknownKind(String::new())));
    }
}
