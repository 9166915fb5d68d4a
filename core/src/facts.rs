//! What the step knows about a patient: loaded by the store (or made by the simulator) and read by
//! guards through the functions listed in `carepath_dsl::catalog::GUARD_FUNCTIONS`.

use std::collections::BTreeMap;

use carepath_dsl::VarValue;
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
    /// ICD-10 diagnoses recorded for the patient (normalised codes), oldest first.
    #[serde(default)]
    pub diagnoses: Vec<Diagnosis>,
    /// Hospital encounters, oldest admission first.
    #[serde(default)]
    pub encounters: Vec<Encounter>,
}

/// A diagnosis as the hospital recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Normalised ICD-10 (`I639`; see [`crate::charlson::normalise`]).
    pub code: String,
    pub principal: bool,
    pub at: Timestamp,
}

/// The kinds of hospital encounter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncounterClass {
    Inpatient,
    Outpatient,
    Emergency,
}

impl EncounterClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EncounterClass::Inpatient => "inpatient",
            EncounterClass::Outpatient => "outpatient",
            EncounterClass::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inpatient" => Some(EncounterClass::Inpatient),
            "outpatient" => Some(EncounterClass::Outpatient),
            "emergency" => Some(EncounterClass::Emergency),
            _ => None,
        }
    }
}

/// A hospital visit: an admission (inpatient), an outpatient visit or an emergency visit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encounter {
    pub class: EncounterClass,
    pub admitted_at: Option<Timestamp>,
    pub discharged_at: Option<Timestamp>,
    /// An emergency (unplanned) admission; unknown when the hospital did not say.
    pub acute: Option<bool>,
    pub department: Option<String>,
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
    /// Enrolment variables the event sets when the step reads it (checked against the pathway's
    /// declared types when the event was accepted).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, VarValue>,
}

impl PatientFacts {
    /// The Charlson index of the diagnoses recorded by `now`; `None` when none are recorded.
    pub fn charlson(&self, now: Timestamp) -> Option<crate::charlson::Charlson> {
        let codes: Vec<&str> = self
            .diagnoses
            .iter()
            .filter(|d| d.at <= now)
            .map(|d| d.code.as_str())
            .collect();
        (!codes.is_empty()).then(|| crate::charlson::charlson(codes))
    }

    /// The latest inpatient encounter admitted by `now` (its discharge may lie later or be unknown).
    pub fn index_admission(&self, now: Timestamp) -> Option<&Encounter> {
        self.encounters
            .iter()
            .filter(|e| e.class == EncounterClass::Inpatient)
            .filter(|e| e.admitted_at.is_some_and(|a| a <= now))
            .max_by_key(|e| e.admitted_at)
    }

    /// The index admission's length of stay in whole calendar days in `tz` (discharge date minus
    /// admission date: a same-day stay is 0), counted to `now` while the patient is in hospital.
    /// The admission is the latest inpatient encounter the hospital recorded, or else the latest
    /// `admitted` event with the `discharged` event after it; `None` without either.
    pub fn length_of_stay(&self, now: Timestamp, tz: &jiff::tz::TimeZone) -> Option<f64> {
        let (admitted, discharged) = match self.index_admission(now) {
            Some(index) => (index.admitted_at?, index.discharged_at),
            None => {
                let admitted = self.last_event("admitted", now)?;
                let discharged = self
                    .last_event("discharged", now)
                    .filter(|d| *d >= admitted);
                (admitted, discharged)
            }
        };
        let end = discharged.filter(|d| *d <= now).unwrap_or(now);
        let days = end
            .to_zoned(tz.clone())
            .date()
            .since(admitted.to_zoned(tz.clone()).date())
            .map(|span| f64::from(span.get_days()))
            .unwrap_or(0.0);
        Some(days.max(0.0))
    }

    /// Whether a diagnosis recorded by `now` falls under the ICD-10 code `prefix` (`I63` covers
    /// `I63.9`; `E11.2` covers `E11.21`).
    pub fn diagnosed(&self, prefix: &str, now: Timestamp) -> bool {
        let Some(prefix) = crate::charlson::normalise(prefix) else {
            return false;
        };
        self.diagnoses
            .iter()
            .any(|d| d.at <= now && d.code.starts_with(&prefix))
    }

    /// Emergency visits that began in the `months` calendar months before `before` (in `tz`).
    pub fn emergency_visits(
        &self,
        before: Timestamp,
        months: i32,
        tz: &jiff::tz::TimeZone,
    ) -> usize {
        let since = before
            .to_zoned(tz.clone())
            .checked_sub(jiff::Span::new().months(months))
            .map(|z| z.timestamp())
            .unwrap_or(before);
        self.encounters
            .iter()
            .filter(|e| e.class == EncounterClass::Emergency)
            .filter(|e| e.admitted_at.is_some_and(|a| a >= since && a < before))
            .count()
    }

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

#[cfg(test)]
mod stay_tests {
    use super::*;

    #[test]
    fn a_stay_is_read_from_the_admitted_and_discharged_events_without_encounters() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap();
        let mut f = PatientFacts::default();
        f.events.push(FactEvent {
            name: "admitted".into(),
            at: at("2026-03-01T02:00:00Z"),
        });
        assert_eq!(f.length_of_stay(at("2026-03-04T02:00:00Z"), &tz), Some(3.0));
        f.events.push(FactEvent {
            name: "discharged".into(),
            at: at("2026-03-06T02:00:00Z"),
        });
        assert_eq!(f.length_of_stay(at("2026-03-06T02:00:00Z"), &tz), Some(5.0));
        assert_eq!(f.length_of_stay(at("2026-02-01T02:00:00Z"), &tz), None);
    }
}
