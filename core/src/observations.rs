//! Observations from devices and staff: plausibility, units, and a reading's values as reading
//! conditions read them.
//!
//! A reading is refused when it is implausible (a systolic of 900 is a device fault, not a
//! crisis) and deduplicated by the device's reading id. The alarm rules readings trip are
//! `crate::alarms`; goal conditions are compiled by `carepath_dsl::condition`, the evaluator the
//! validator checks them against and the simulator runs, once per distinct text
//! (`ConditionCache`), not per reading.

use std::collections::HashMap;

use carepath_dsl::condition::{Condition, ConditionError, ConditionKind};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Plausible range and unit of each observation kind.
pub const RANGES: &[(&str, f64, f64)] = &[
    ("bp_systolic", 50.0, 260.0),
    ("bp_diastolic", 30.0, 160.0),
    ("glucose_fasting", 1.0, 35.0),
    ("glucose_postprandial", 1.0, 35.0),
    ("heart_rate", 25.0, 250.0),
    ("spo2", 50.0, 100.0),
    ("weight", 1.0, 350.0),
    ("body_fat", 2.0, 75.0),
    ("steps", 0.0, 100_000.0),
    ("temperature", 30.0, 44.0),
    ("fetal_heart_rate", 60.0, 240.0),
    ("exercise_minutes", 0.0, 1_440.0),
    ("muscle_strength", 0.0, 5.0),
    ("medication_taken", 0.0, 1.0),
    ("respiratory_rate", 4.0, 80.0),
    ("hba1c", 3.0, 20.0),
];

/// mg/dL per mmol/L for glucose.
const GLUCOSE_MGDL_PER_MMOL: f64 = 18.016;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub patient_id: String,
    pub kind: String,
    pub value: f64,
    #[serde(default)]
    pub unit: Option<String>,
    pub at: Timestamp,
    pub reading_id: String,
    #[serde(default = "default_source")]
    pub source: String,
}

fn default_source() -> String {
    "device".into()
}

/// Normalises units and checks plausibility; returns the value in the kind's canonical unit.
pub fn normalise(kind: &str, value: f64, unit: Option<&str>) -> Result<f64, String> {
    let Some((_, lo, hi)) = RANGES.iter().find(|(k, _, _)| *k == kind) else {
        let known: Vec<&str> = RANGES.iter().map(|(k, _, _)| *k).collect();
        return Err(format!(
            "unknown observation kind `{kind}`; known kinds: {}",
            known.join(", ")
        ));
    };
    if !value.is_finite() {
        return Err(format!("{kind}: value must be a finite number"));
    }
    let v = match (kind, unit) {
        ("glucose_fasting" | "glucose_postprandial", Some("mg/dL" | "mg/dl")) => {
            value / GLUCOSE_MGDL_PER_MMOL
        }
        ("glucose_fasting" | "glucose_postprandial", Some("mmol/L" | "mmol/l") | None) => value,
        ("temperature", Some("°F" | "F")) => (value - 32.0) * 5.0 / 9.0,
        (_, None) => value,
        (_, Some(u)) if canonical_unit(kind) == Some(u) => value,
        (_, Some(u)) => {
            return Err(format!(
                "{kind}: unit `{u}` is not accepted; send {}",
                canonical_unit(kind).unwrap_or("the canonical unit")
            ));
        }
    };
    if v < *lo || v > *hi {
        return Err(format!(
            "{kind}: {value}{} is outside the plausible range {lo}–{hi}; refused as a likely device or entry error",
            unit.map(|u| format!(" {u}")).unwrap_or_default()
        ));
    }
    Ok(v)
}

fn canonical_unit(kind: &str) -> Option<&'static str> {
    carepath_dsl::catalog::OBSERVATIONS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, u)| *u)
}

/// A past reading: the values of every kind recorded under one reading id, in the slots of an
/// alarm condition (`catalog::OBSERVATIONS` order; a kind not recorded is NaN).
#[derive(Debug, Clone, Default)]
pub struct GroupedReading {
    pub at: i64,
    pub values: Vec<f64>,
}

impl GroupedReading {
    /// Records `kind`'s value; a kind outside the catalogue is ignored.
    pub fn set(&mut self, kind: &str, value: f64) {
        let Some(i) = carepath_dsl::catalog::OBSERVATIONS
            .iter()
            .position(|(k, _)| *k == kind)
        else {
            return;
        };
        if self.values.len() <= i {
            self.values.resize(i + 1, f64::NAN);
        }
        self.values[i] = value;
    }
}

/// Reading conditions of one kind compiled once per distinct text, for a batch of evaluations.
pub struct ConditionCache {
    kind: ConditionKind,
    by_text: HashMap<String, Result<Condition, ConditionError>>,
}

impl ConditionCache {
    pub fn new(kind: ConditionKind) -> ConditionCache {
        ConditionCache {
            kind,
            by_text: HashMap::new(),
        }
    }

    /// The compiled form of `text`, or why it is not a reading condition.
    pub fn get(&mut self, text: &str) -> Result<&Condition, &ConditionError> {
        let kind = self.kind;
        self.by_text
            .entry(text.to_string())
            .or_insert_with(|| Condition::of_kind(text, kind))
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_values_are_refused_and_units_converted() {
        assert!(
            normalise("bp_systolic", 900.0, None)
                .unwrap_err()
                .contains("plausible")
        );
        assert!((normalise("glucose_fasting", 126.0, Some("mg/dL")).unwrap() - 6.99).abs() < 0.01);
        assert!(normalise("glucose_fasting", 126.0, Some("mmol/L")).is_err());
        assert!(normalise("heart_rate", 72.0, Some("kg")).is_err());
        assert!(
            normalise("bp_sys", 120.0, None)
                .unwrap_err()
                .contains("unknown")
        );
    }
}
