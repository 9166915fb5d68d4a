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
    /// A risk model id: the guard reads its latest result.
    Risk,
    /// A task id: the guard reads the outcome its last completion recorded.
    Task,
    /// A goal id: the guard reads whether the goal is met.
    Goal,
}

/// Guard functions the engine provides: name and argument kinds.
pub const GUARD_FUNCTIONS: &[(&str, &[ArgKind])] = &[
    ("age", &[]),
    ("sex", &[]),
    ("days_since", &[ArgKind::Event]),
    ("hours_since", &[ArgKind::Event]),
    ("days_in_state", &[]),
    ("days_since_enrolment", &[]),
    ("occurrence", &[ArgKind::Any]),
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

/// Built-in events raised by the engine (qualified events such as `task_done:<id>` aside).
pub const BUILTIN_EVENTS: &[&str] = &[
    "admitted",
    "discharged",
    "readmitted",
    "delivered",
    "died",
    "referral_accepted",
    "referral_rejected",
    "referral_arrived",
];
