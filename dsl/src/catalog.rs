//! What a pathway may name: roles, scales, observation kinds, events and guard functions.
//!
//! The validator checks every name against this catalogue, so a typo in a role or a scale is caught
//! when the pathway is written, not when a patient is affected. The engine implements exactly the
//! guard functions listed here; a unit test in the engine keeps the two in step.

/// Staff roles (seed 000).
pub const ROLES: &[&str] = &[
    "case_manager",
    "ward_nurse",
    "hospital_case_manager",
    "clinic_case_manager",
    "referral_coordinator",
    "doctor",
    "nurse",
    "rehab_therapist",
    "dietitian",
    "pharmacist",
    "midwife",
    "head_nurse",
    "admin",
];

/// Assessment scales shipped in `pathways/scales/`.
pub const SCALES: &[&str] = &[
    "phq9",
    "gad7",
    "epds",
    "barthel",
    "mrs",
    "nrs",
    "who5",
    "cat",
    "qol_breast",
    "satisfaction",
    "mrc_strength",
    "morisky8",
];

/// A scale's critical-item rule as far as a pathway needs it: the urgent task it raises goes to
/// `role` within `due_minutes`.
pub struct CriticalRule {
    pub scale: &'static str,
    pub item: &'static str,
    pub role: &'static str,
    pub due_minutes: u32,
}

/// The critical rules of the shipped scales (`critical:` in `pathways/scales/*.yaml`); a unit test
/// in the engine keeps this table and the scale files in step.
pub const CRITICAL_RULES: &[CriticalRule] = &[
    CriticalRule {
        scale: "epds",
        item: "q10",
        role: "doctor",
        due_minutes: 60,
    },
    CriticalRule {
        scale: "phq9",
        item: "q9",
        role: "doctor",
        due_minutes: 60,
    },
];

/// Observation kinds, with their unit.
pub const OBSERVATIONS: &[(&str, &str)] = &[
    ("bp_systolic", "mmHg"),
    ("bp_diastolic", "mmHg"),
    ("glucose_fasting", "mmol/L"),
    ("glucose_postprandial", "mmol/L"),
    ("heart_rate", "/min"),
    ("spo2", "%"),
    ("weight", "kg"),
    ("body_fat", "%"),
    ("steps", "steps"),
    ("temperature", "°C"),
    ("fetal_heart_rate", "/min"),
    ("exercise_minutes", "min"),
    ("muscle_strength", "MRC 0-5"),
    ("medication_taken", "0/1"),
    ("respiratory_rate", "/min"),
    ("hba1c", "%"),
];

pub fn is_observation(kind: &str) -> bool {
    OBSERVATIONS.iter().any(|(k, _)| *k == kind)
}

pub fn observation_names() -> Vec<&'static str> {
    OBSERVATIONS.iter().map(|(k, _)| *k).collect()
}

/// What a guard-function argument names, so the validator can check string literals passed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    Any,
    Scale,
    Observation,
    Duration,
    /// An event name: the guard reads when (and how often) it happened.
    Event,
    /// An anchor word (`ANCHOR_WORDS`: the enrolment's start, the entry into the current state)
    /// or an event name.
    Anchor,
    /// A schedule of the pathway (the enrolment's, or a state's): the guard reads how many of its
    /// occurrences have come.
    Schedule,
    /// A risk model id: the guard reads its latest result.
    Risk,
    /// A task id: the guard reads the outcome its last completion recorded.
    Task,
    /// A goal id: the guard reads whether the goal is met.
    Goal,
}

/// The anchors `days_since` and `hours_since` take besides event names.
pub const ANCHOR_WORDS: &[&str] = &["enrolment", "state"];

/// Guard functions the engine provides: name and argument kinds.
pub const GUARD_FUNCTIONS: &[(&str, &[ArgKind])] = &[
    ("age", &[]),
    ("sex", &[]),
    ("days_since", &[ArgKind::Anchor]),
    ("hours_since", &[ArgKind::Anchor]),
    ("days_since_event", &[ArgKind::Event]),
    ("days_in_state", &[]),
    ("days_since_enrolment", &[]),
    ("occurrence", &[ArgKind::Schedule]),
    ("hours_in_state", &[]),
    ("event_count", &[ArgKind::Event]),
    ("latest", &[ArgKind::Observation]),
    ("mean", &[ArgKind::Observation, ArgKind::Duration]),
    ("min", &[ArgKind::Observation, ArgKind::Duration]),
    ("max", &[ArgKind::Observation, ArgKind::Duration]),
    ("count", &[ArgKind::Observation, ArgKind::Duration]),
    ("score", &[ArgKind::Scale]),
    ("band", &[ArgKind::Scale]),
    ("item", &[ArgKind::Scale, ArgKind::Any]),
    ("risk", &[ArgKind::Risk]),
    ("risk_band", &[ArgKind::Risk]),
    ("open_tasks", &[]),
    ("overdue_tasks", &[]),
    ("outcome", &[ArgKind::Task]),
    ("goal_met", &[ArgKind::Goal]),
    ("charlson", &[]),
    ("diagnosed", &[ArgKind::Any]),
    ("length_of_stay", &[]),
];

/// Outcomes a task accepts when the pathway declares none: structured call and task results
/// (Simple.org's call results, extended). A task that branches on anything else declares its own
/// `outcomes:`, and then accepts exactly those.
pub const TASK_OUTCOMES: &[&str] = &[
    "done",
    "reached",
    "problem",
    "will_visit",
    "call_later",
    "unreachable",
    "wrong_number",
    "declined",
    "deceased",
    "moved_away",
];

/// Pure Rhai functions a guard may also call (arithmetic and conversions).
pub const PURE_FUNCTIONS: &[&str] = &[
    "abs",
    "floor",
    "ceiling",
    "round",
    "sqrt",
    "exp",
    "ln",
    "log",
    "to_int",
    "to_float",
    "is_nan",
    "contains",
    "len",
    "to_string",
    "min",
    "max",
];

pub fn guard_function(name: &str, arity: usize) -> Option<&'static [ArgKind]> {
    GUARD_FUNCTIONS
        .iter()
        .find(|(n, args)| *n == name && args.len() == arity)
        .map(|(_, a)| *a)
}

pub fn function_names() -> Vec<&'static str> {
    GUARD_FUNCTIONS
        .iter()
        .map(|(n, _)| *n)
        .chain(PURE_FUNCTIONS.iter().copied())
        .collect()
}

/// What the part of a built-in event's name after its `:` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventQualifier {
    /// No qualifier: the event is the plain name (`discharged`).
    None,
    /// A task of the pathway (`task_done:<task>`): a task id, an alarm's task, or a scale's
    /// critical-item task (`critical_<scale>_<item>`).
    Task,
    /// A scale the pathway pushes (`scale_answered:<scale>`).
    Scale,
    /// An alarm rule of the pathway (`alarm:<alarm>`).
    Alarm,
}

impl EventQualifier {
    /// What the qualifier is called in messages and in the documentation's table.
    pub fn noun(self) -> &'static str {
        match self {
            EventQualifier::None => "",
            EventQualifier::Task => "task",
            EventQualifier::Scale => "scale",
            EventQualifier::Alarm => "alarm",
        }
    }
}

/// Who raises a built-in event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventSource {
    /// The hospital's systems (admission, discharge, delivery, death), through
    /// `POST /enrolments/{id}/events`.
    Hospital,
    /// The engine, when something happens to the patient's work: a task completed, a scale
    /// answered or expired, an alarm fired, a referral decided.
    Engine,
}

/// An event every pathway may use without declaring it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinEvent {
    /// The name, or for a qualified event the part before the `:`.
    pub name: &'static str,
    pub qualifier: EventQualifier,
    pub source: EventSource,
    /// When it arrives, for authors (the documentation's table says the same).
    pub meaning: &'static str,
}

impl BuiltinEvent {
    /// The name as authors write it: `discharged`, or `task_done:<task>` for a family.
    pub fn pattern(&self) -> String {
        match self.qualifier {
            EventQualifier::None => self.name.to_string(),
            q => format!("{}:<{}>", self.name, q.noun()),
        }
    }
}

/// The built-in events: the only table of them. The validator checks every event a pathway names
/// against it (and the pathway's own `events:`), the admin API refuses events outside both, the
/// simulator tells the patients' life events from the engine's by it, and a test holds the table in
/// `docs/pathway-language.md` to it. The store raises the engine's events where the work happens
/// (`task_done`, `scale_answered`, `scale_expired`, `alarm`, `referral_*`).
pub const BUILTIN_EVENTS: &[BuiltinEvent] = &[
    BuiltinEvent {
        name: "admitted",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the patient was admitted to hospital",
    },
    BuiltinEvent {
        name: "discharged",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the patient was discharged",
    },
    BuiltinEvent {
        name: "admission_cancelled",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the hospital cancelled an admission a step had already read",
    },
    BuiltinEvent {
        name: "discharge_cancelled",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the hospital cancelled a discharge a step had already read",
    },
    BuiltinEvent {
        name: "readmitted",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the patient was admitted again after a discharge",
    },
    BuiltinEvent {
        name: "delivered",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the patient gave birth",
    },
    BuiltinEvent {
        name: "died",
        qualifier: EventQualifier::None,
        source: EventSource::Hospital,
        meaning: "the patient died",
    },
    BuiltinEvent {
        name: "task_done",
        qualifier: EventQualifier::Task,
        source: EventSource::Engine,
        meaning: "staff completed the task (its outcome is read with `outcome(\"<task>\")`)",
    },
    BuiltinEvent {
        name: "scale_answered",
        qualifier: EventQualifier::Scale,
        source: EventSource::Engine,
        meaning: "the patient answered a push of the scale",
    },
    BuiltinEvent {
        name: "scale_expired",
        qualifier: EventQualifier::Scale,
        source: EventSource::Engine,
        meaning: "a push of the scale expired unanswered",
    },
    BuiltinEvent {
        name: "alarm",
        qualifier: EventQualifier::Alarm,
        source: EventSource::Engine,
        meaning: "the alarm rule fired (its condition turned true)",
    },
    BuiltinEvent {
        name: "referral_accepted",
        qualifier: EventQualifier::None,
        source: EventSource::Engine,
        meaning: "the receiving institution accepted the patient's referral",
    },
    BuiltinEvent {
        name: "referral_rejected",
        qualifier: EventQualifier::None,
        source: EventSource::Engine,
        meaning: "the receiving institution rejected the patient's referral",
    },
    BuiltinEvent {
        name: "referral_arrived",
        qualifier: EventQualifier::None,
        source: EventSource::Engine,
        meaning: "the referred patient arrived at the receiving institution",
    },
    BuiltinEvent {
        name: WITHDRAWN,
        qualifier: EventQualifier::None,
        source: EventSource::Engine,
        meaning: "the enrolment was withdrawn; a state's `on: withdrawn` routes it to closing work, and either way the enrolment ends",
    },
];

/// The event a withdrawal raises (`POST /enrolments/{id}/withdraw`): a transition taking it routes
/// the withdrawal to a closing state; taken or not, it ends the enrolment as withdrawn.
pub const WITHDRAWN: &str = "withdrawn";

/// The built-in event `name` is, with its qualifier (`task_done:day7_call` is `task_done` with
/// `day7_call`); `None` for any other name. A family's name with no qualifier, or a plain event
/// with one, is not built in.
pub fn builtin_event(name: &str) -> Option<(&'static BuiltinEvent, Option<&str>)> {
    let (head, qualifier) = match name.split_once(':') {
        Some((head, q)) => (head, Some(q)),
        None => (name, None),
    };
    let event = BUILTIN_EVENTS.iter().find(|e| e.name == head)?;
    match (event.qualifier, qualifier) {
        (EventQualifier::None, None) => Some((event, None)),
        (EventQualifier::None, Some(_)) | (_, None) | (_, Some("")) => None,
        (_, Some(q)) => Some((event, Some(q))),
    }
}

/// Whether an event named so is the engine's own (a task completed, a scale answered or expired,
/// an alarm, a referral decision) rather than something that happens to the patient.
pub fn is_engine_event(name: &str) -> bool {
    builtin_event(name).is_some_and(|(e, _)| e.source == EventSource::Engine)
}

/// Whether `name` is written as an event name: lower case letters, digits and `_ : . -`.
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 96
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | ':' | '.' | '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_events_are_told_by_name_and_qualifier() {
        assert_eq!(
            builtin_event("discharged").map(|(e, q)| (e.name, q)),
            Some(("discharged", None))
        );
        assert_eq!(
            builtin_event("task_done:day7_call").map(|(e, q)| (e.name, q)),
            Some(("task_done", Some("day7_call")))
        );
        assert_eq!(
            builtin_event("scale_answered:epds").map(|(e, _)| e.qualifier),
            Some(EventQualifier::Scale)
        );
        for not in [
            "task_done",
            "task_done:",
            "discharged:early",
            "wound_problem_reported",
            "alarms:x",
        ] {
            assert!(builtin_event(not).is_none(), "{not}");
        }
        assert!(is_engine_event("referral_accepted"));
        assert!(is_engine_event("scale_expired:who5"));
        assert!(!is_engine_event("readmitted"));
        assert!(!is_engine_event("fall_reported"));
    }

    #[test]
    fn event_names_are_lower_case() {
        assert!(is_event_name("task_done:day7_call"));
        assert!(is_event_name("lab.result-ready"));
        for bad in ["", "Discharged", "a b", "é"] {
            assert!(!is_event_name(bad), "{bad}");
        }
        assert!(!is_event_name(&"a".repeat(97)));
    }
}
