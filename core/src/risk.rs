//! Built-in risk models.

use std::collections::BTreeMap;

use carepath_dsl::VarValue;
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::facts::PatientFacts;

fn num(vars: &BTreeMap<String, VarValue>, name: &str) -> f64 {
    match vars.get(name) {
        Some(VarValue::Number(n)) => *n,
        Some(VarValue::Integer(i)) => *i as f64,
        Some(VarValue::Bool(b)) => f64::from(u8::from(*b)),
        _ => 0.0,
    }
}

/// The LACE index (van Walraven C, Dhalla IA, Bell C, et al. CMAJ 2010;182(6):551–557): Length of
/// stay, Acuity of admission, Charlson comorbidity index, Emergency visits in the previous six
/// months. Score 0–19; ≥ 10 is high risk.
///
/// Each input is read from the hospital's facts when they hold it, and from the enrolment variable
/// of the same meaning otherwise (`los_days`, `acute_admission`, `charlson`, `ed_visits`), so a
/// pathway still scores a patient the hospital has sent nothing about:
/// - **L**: the index admission is the latest inpatient encounter admitted by `now`. Its length of
///   stay is counted as the paper's administrative data count it: the discharge date minus the
///   admission date, in whole calendar days in the patient's zone (a same-day stay is 0 days, "< 1").
///   Before the discharge is known it is counted to `now`.
/// - **A**: the index admission's `acute` flag (an emergency admission).
/// - **C**: the Charlson index of every diagnosis recorded by `now` ([`crate::charlson`]; Quan 2005
///   coding, Charlson 1987 weights).
/// - **E**: emergency visits that began in the six calendar months before the index admission.
pub fn lace(
    vars: &BTreeMap<String, VarValue>,
    facts: &PatientFacts,
    now: Timestamp,
    tz: &TimeZone,
) -> (f64, Vec<(String, f64)>) {
    let index = facts.index_admission(now);
    let los = facts
        .length_of_stay(now, tz)
        .unwrap_or_else(|| num(vars, "los_days"));
    let l = match los {
        d if d < 1.0 => 0.0,
        d if d < 2.0 => 1.0,
        d if d < 3.0 => 2.0,
        d if d < 4.0 => 3.0,
        d if d < 7.0 => 4.0,
        d if d < 14.0 => 5.0,
        _ => 7.0,
    };
    let acute = index
        .and_then(|e| e.acute)
        .unwrap_or_else(|| num(vars, "acute_admission") > 0.0);
    let a = if acute { 3.0 } else { 0.0 };
    let charlson = match facts.charlson(now) {
        Some(c) => f64::from(c.index),
        None => num(vars, "charlson"),
    };
    let c = match charlson {
        x if x >= 4.0 => 5.0,
        x => x.max(0.0).floor(),
    };
    let visits = match index.and_then(|e| e.admitted_at) {
        Some(admitted) => facts.emergency_visits(admitted, 6, tz) as f64,
        None => num(vars, "ed_visits"),
    };
    let e = visits.clamp(0.0, 4.0).floor();
    let parts = vec![
        ("length_of_stay".to_string(), l),
        ("acuity".to_string(), a),
        ("comorbidity".to_string(), c),
        ("emergency_visits".to_string(), e),
    ];
    (l + a + c + e, parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Diagnosis, Encounter, EncounterClass};

    #[test]
    fn lace_matches_the_published_points() {
        let vars = |los: f64, acute: bool, charlson: i64, ed: i64| {
            BTreeMap::from([
                ("los_days".to_string(), VarValue::Number(los)),
                ("acute_admission".to_string(), VarValue::Bool(acute)),
                ("charlson".to_string(), VarValue::Integer(charlson)),
                ("ed_visits".to_string(), VarValue::Integer(ed)),
            ])
        };
        let none = PatientFacts::default();
        let now: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        let score = |v| lace(&v, &none, now, &tz).0;
        assert_eq!(score(vars(0.5, false, 0, 0)), 0.0);
        assert_eq!(score(vars(5.0, true, 2, 1)), 4.0 + 3.0 + 2.0 + 1.0);
        assert_eq!(score(vars(20.0, true, 6, 9)), 7.0 + 3.0 + 5.0 + 4.0);
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn visit(
        class: EncounterClass,
        from: &str,
        to: Option<&str>,
        acute: Option<bool>,
    ) -> Encounter {
        Encounter {
            class,
            admitted_at: Some(at(from)),
            discharged_at: to.map(at),
            acute,
            department: None,
        }
    }

    fn diagnosis(code: &str) -> Diagnosis {
        Diagnosis {
            code: crate::charlson::normalise(code).unwrap(),
            principal: false,
            at: at("2026-02-01T00:00:00Z"),
        }
    }

    #[test]
    fn lace_reads_the_hospital_facts_over_the_variables() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        // Admitted acutely on 1 Feb at 23:00 local, discharged on 6 Feb: 5 days (4 points); four
        // emergency visits in the six months before (4); Charlson 4 (5); acute (3): 16.
        let mut encounters = vec![
            visit(
                EncounterClass::Emergency,
                "2025-09-10T02:00:00Z",
                None,
                None,
            ),
            visit(
                EncounterClass::Emergency,
                "2025-11-03T02:00:00Z",
                None,
                None,
            ),
            visit(
                EncounterClass::Emergency,
                "2025-12-20T02:00:00Z",
                None,
                None,
            ),
            visit(
                EncounterClass::Emergency,
                "2026-01-15T02:00:00Z",
                None,
                None,
            ),
        ];
        // Seven months before: outside the window.
        encounters.insert(
            0,
            visit(
                EncounterClass::Emergency,
                "2025-06-20T02:00:00Z",
                None,
                None,
            ),
        );
        encounters.push(visit(
            EncounterClass::Inpatient,
            "2026-02-01T15:00:00Z",
            Some("2026-02-06T02:00:00Z"),
            Some(true),
        ));
        let facts = PatientFacts {
            encounters,
            diagnoses: ["I63.9", "I50.9", "E11.2"].map(diagnosis).to_vec(),
            ..Default::default()
        };
        // The variables say otherwise; the facts win.
        let vars = BTreeMap::from([
            ("los_days".to_string(), VarValue::Number(0.2)),
            ("charlson".to_string(), VarValue::Integer(1)),
        ]);
        let (score, parts) = lace(&vars, &facts, at("2026-02-06T03:00:00Z"), &tz);
        assert_eq!(
            parts.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [4.0, 3.0, 5.0, 4.0]
        );
        assert_eq!(score, 16.0);
    }

    #[test]
    fn a_same_day_stay_is_under_one_day_and_an_open_stay_counts_to_now() {
        let tz = TimeZone::get("Asia/Shanghai").unwrap();
        let facts = |to: Option<&str>| PatientFacts {
            encounters: vec![visit(
                EncounterClass::Inpatient,
                "2026-02-01T01:00:00Z",
                to,
                Some(false),
            )],
            ..Default::default()
        };
        let l = |f: &PatientFacts, now: &str| lace(&BTreeMap::new(), f, at(now), &tz).1[0].1;
        assert_eq!(
            l(&facts(Some("2026-02-01T10:00:00Z")), "2026-02-02T00:00:00Z"),
            0.0
        );
        // 1 Feb 09:00 to 2 Feb 07:00 local: one calendar day although under 24 hours.
        assert_eq!(
            l(&facts(Some("2026-02-01T23:00:00Z")), "2026-02-03T00:00:00Z"),
            1.0
        );
        assert_eq!(l(&facts(None), "2026-02-04T02:00:00Z"), 3.0);
    }
}
