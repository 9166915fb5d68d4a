//! Observations from devices and staff, and the alarm rules they can trip.
//!
//! A reading is refused when it is implausible (a systolic of 900 is a device fault, not a
//! crisis), deduplicated by the device's reading id, and may arrive out of order: windows are
//! computed from reading times, not arrival times. Alarm rules fire when their condition turns from
//! false to true (one episode, one urgent task) and re-arm when it turns false again.

use std::collections::BTreeMap;

use carepath_dsl::AlarmSpec;
use jiff::Timestamp;
use rhai::{Dynamic, Engine, Scope};
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

/// A past reading: the values of every kind recorded under one reading id.
#[derive(Debug, Clone, Default)]
pub struct GroupedReading {
    pub at: i64,
    pub values: BTreeMap<String, f64>,
}

/// Whether `rule` holds at `now` over the given readings (already restricted to the patient).
pub fn rule_holds(
    engine: &Engine,
    rule: &AlarmSpec,
    readings: &[GroupedReading],
    now: Timestamp,
) -> Result<bool, String> {
    let ast = engine
        .compile_expression_with_scope(&reading_scope(&BTreeMap::new()), &rule.when.0)
        .map_err(|e| format!("alarm `{}`: {e}", rule.id))?;
    let from = now.as_second() - rule.within.nominal_seconds();
    let mut matches = 0u32;
    for r in readings
        .iter()
        .filter(|r| r.at > from && r.at <= now.as_second())
    {
        let mut scope = reading_scope(&r.values);
        let hit = engine
            .eval_ast_with_scope::<Dynamic>(&mut scope, &ast)
            .map_err(|e| format!("alarm `{}`: {e}", rule.id))?;
        if hit.as_bool().unwrap_or(false) {
            matches += 1;
        }
    }
    Ok(matches >= rule.count)
}

fn reading_scope(values: &BTreeMap<String, f64>) -> Scope<'static> {
    let mut scope = Scope::new();
    for (kind, _) in carepath_dsl::catalog::OBSERVATIONS {
        scope.push(
            kind.to_string(),
            values.get(*kind).copied().unwrap_or(f64::NAN),
        );
    }
    scope
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

    #[test]
    fn window_rules_count_matching_readings() {
        let engine = crate::sandbox::engine();
        let rule: AlarmSpec = serde_json::from_value(serde_json::json!({
            "id": "bp_high", "when": "bp_systolic >= 140 || bp_diastolic >= 90", "count": 3,
            "within": {"amount": 7, "unit": "days"}, "scope": "enrolment",
            "task": {"id": null, "role": "case_manager", "title": {"zh": "x", "en": "x"}, "due": {"amount": 2, "unit": "hours"}, "priority": "urgent", "sla": null, "keep": false}
        }))
        .unwrap();
        let now: Timestamp = "2026-05-10T00:00:00Z".parse().unwrap();
        let reading = |days_ago: i64, sys: f64, dia: f64| GroupedReading {
            at: now.as_second() - days_ago * 86_400,
            values: BTreeMap::from([("bp_systolic".into(), sys), ("bp_diastolic".into(), dia)]),
        };
        let two = vec![
            reading(1, 150.0, 80.0),
            reading(2, 130.0, 95.0),
            reading(3, 120.0, 80.0),
        ];
        assert!(!rule_holds(&engine, &rule, &two, now).unwrap());
        let three = vec![
            reading(1, 150.0, 80.0),
            reading(2, 130.0, 95.0),
            reading(6, 141.0, 70.0),
        ];
        assert!(rule_holds(&engine, &rule, &three, now).unwrap());
        let old = vec![
            reading(1, 150.0, 80.0),
            reading(2, 130.0, 95.0),
            reading(8, 141.0, 70.0),
        ];
        assert!(!rule_holds(&engine, &rule, &old, now).unwrap());
    }
}
