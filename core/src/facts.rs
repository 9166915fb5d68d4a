//! What the step knows about a patient: loaded by the store (or made by the simulator) and read by
//! guards through the functions listed in `carepath_dsl::catalog::GUARD_FUNCTIONS`.

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PatientFacts {
    pub birth_date: Option<Date>,
    /// `female`, `male` or `unknown`.
    pub sex: String,
    /// Events that happened to the enrolment, oldest first.
    pub events: Vec<FactEvent>,
    /// Observations, oldest first.
    pub observations: Vec<Observation>,
    /// Scale results, oldest first.
    pub scales: Vec<ScaleResult>,
    /// Risk predictions, oldest first.
    pub risks: Vec<RiskResult>,
    pub open_tasks: i64,
    pub overdue_tasks: i64,
    /// Latest outcome per task id.
    pub outcomes: Vec<(String, String)>,
    pub goals_met: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FactEvent {
    pub name: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub kind: String,
    pub value: f64,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleResult {
    pub scale: String,
    pub score: f64,
    pub band: String,
    pub items: Vec<i64>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskResult {
    pub model: String,
    pub score: f64,
    pub band: String,
    pub at: Timestamp,
}

/// An event not yet seen by the enrolment's step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEvent {
    pub seq: i64,
    pub name: String,
    pub at: Timestamp,
}

impl PatientFacts {
    pub fn last_event(&self, name: &str, now: Timestamp) -> Option<Timestamp> {
        self.events
            .iter()
            .rev()
            .filter(|e| e.at <= now)
            .find(|e| e.name == name)
            .map(|e| e.at)
    }

    pub fn event_count(&self, name: &str, now: Timestamp) -> usize {
        self.events
            .iter()
            .filter(|e| e.at <= now && e.name == name)
            .count()
    }

    pub fn observations_in(
        &self,
        kind: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> impl Iterator<Item = f64> + '_ {
        let kind = kind.to_string();
        self.observations
            .iter()
            .filter(move |o| o.kind == kind && o.at > from && o.at <= to)
            .map(|o| o.value)
    }

    pub fn latest_observation(&self, kind: &str, now: Timestamp) -> Option<f64> {
        self.observations
            .iter()
            .rev()
            .find(|o| o.kind == kind && o.at <= now)
            .map(|o| o.value)
    }

    pub fn latest_scale(&self, scale: &str, now: Timestamp) -> Option<&ScaleResult> {
        self.scales
            .iter()
            .rev()
            .find(|s| s.scale == scale && s.at <= now)
    }

    pub fn latest_risk(&self, model: &str, now: Timestamp) -> Option<&RiskResult> {
        self.risks
            .iter()
            .rev()
            .find(|r| r.model == model && r.at <= now)
    }
}
