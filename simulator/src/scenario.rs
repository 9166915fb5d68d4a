//! Scenario files (`*.scenario.yaml`): who the cohort is, how patients and staff behave, and what
//! the run must show. Every key is optional; what is left out takes the defaults described in
//! `docs/simulator.md`.
//!
//! ```yaml
//! scenario: stroke
//! pathways: [stroke.yaml]          # relative to this file; `--pathway` replaces them
//! cohort: 2000
//! days: 365
//! seed: 7
//! patients:
//!   age: { normal: [68, 11], min: 35, max: 95 }
//!   female: 0.42
//! staff:
//!   capacity: { case_manager: 40, default: { per_1000: 60 } }
//! events:
//!   - { event: discharged, after: admitted, delay: { normal: [9d, 3d], min: 3d } }
//! expect:
//!   - follow_up_rate >= 0.85
//!   - every_state_visited: true
//!   - max_backlog: { role: case_manager, at_most: 50 }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::expect::Expectation;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub scenario: Option<String>,
    pub description: Option<String>,
    /// Pathway files, relative to the scenario file.
    #[serde(default)]
    pub pathways: Vec<String>,
    /// Share of the cohort per pathway id (equal when left out).
    #[serde(default)]
    pub mix: BTreeMap<String, f64>,
    pub cohort: Option<u64>,
    pub days: Option<u32>,
    pub seed: Option<u64>,
    /// The local date of day 0, e.g. `2026-01-05`.
    pub start: Option<String>,
    pub tz: Option<String>,
    /// Enrolments are spread evenly over this many first days (default: half the run).
    pub arrivals_days: Option<f64>,
    #[serde(default)]
    pub patients: PatientsSpec,
    #[serde(default)]
    pub institutions: BTreeMap<String, InstitutionSpec>,
    #[serde(default)]
    pub staff: StaffSpec,
    #[serde(default)]
    pub observations: BTreeMap<String, ObservationSpec>,
    #[serde(default)]
    pub scales: BTreeMap<String, ScaleSpec>,
    /// Probability that the patient responds to a follow-up on each channel.
    #[serde(default)]
    pub follow_up_response: BTreeMap<String, f64>,
    #[serde(default)]
    pub tasks: TasksSpec,
    #[serde(default)]
    pub referrals: ReferralsSpec,
    #[serde(default)]
    pub events: Vec<EventRule>,
    #[serde(default)]
    pub expect: Vec<Value>,
    /// The folder of the scenario file.
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientsSpec {
    pub age: Option<Value>,
    pub female: Option<f64>,
    /// Weights per entry point id.
    #[serde(default)]
    pub entry: BTreeMap<String, f64>,
    /// Share of scheduled device readings a patient takes: `{ mean: 0.7, sd: 0.15 }`.
    pub adherence: Option<MeanSd>,
    /// Replaces the default comorbidity list when given.
    pub comorbidities: Option<BTreeMap<String, ComorbiditySpec>>,
    /// Enrolment variables drawn per patient (set just after enrolment).
    #[serde(default)]
    pub variables: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeanSd {
    pub mean: f64,
    #[serde(default)]
    pub sd: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComorbiditySpec {
    pub prevalence: f64,
    #[serde(default)]
    pub charlson: i64,
    #[serde(default)]
    pub shift: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstitutionSpec {
    /// lead_hospital, community_clinic, township_hospital or specialist_hospital.
    pub kind: Option<String>,
    pub share: f64,
    /// Capacities at this institution, overriding `staff.capacity`.
    #[serde(default)]
    pub capacity: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffSpec {
    /// Working hours, local: `"08:00-18:00"`.
    pub hours: Option<String>,
    /// Tasks a role completes per day at each institution: a number, or `{ per_1000: n }` per
    /// thousand patients of the institution. `default` applies to roles not listed.
    #[serde(default)]
    pub capacity: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationSpec {
    /// Population mean of a patient's baseline.
    pub mean: Option<f64>,
    /// Spread of baselines between patients.
    pub sd: Option<f64>,
    /// Spread of one reading around the patient's current level.
    pub noise: Option<f64>,
    /// Drift of the level per 30 days (e.g. treatment lowering blood pressure).
    pub trend_per_month: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub round: Option<bool>,
    /// Scheduled readings per day (fractions mean "on some days").
    pub per_day: Option<f64>,
    /// Local time of the first reading of the day.
    pub at: Option<String>,
    /// A 0/1 observation: the probability of a 1 (e.g. medication taken).
    pub probability: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleSpec {
    /// Probability that a push is answered.
    pub answer: Option<f64>,
    /// Delay from the push to the answer (answers after expiry are lost).
    pub delay: Option<Value>,
    pub score: Option<ScoreSpec>,
    /// Items answered positively with this probability, independent of the total: `{ "10": 0.03 }`.
    #[serde(default)]
    pub items: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    pub mean: Option<f64>,
    pub sd: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSpec {
    /// Task ids that are follow-up calls (default: ids ending in `_call`).
    pub calls: Option<Vec<String>>,
    /// Outcome weights per task id; `default_call` and `default` apply to the rest.
    #[serde(default)]
    pub outcomes: BTreeMap<String, BTreeMap<String, f64>>,
    /// Probability that staff never do a task: one number for every task, or per task id with
    /// `default` for the rest. Missed tasks stay open until the pathway moves on.
    pub missed: Option<Value>,
    /// Tasks that cannot be done until some time after they are created (the patient has to come
    /// in first): a delay per task id.
    #[serde(default)]
    pub ready_after: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralsSpec {
    pub up: Option<ReferralSpec>,
    pub down: Option<ReferralSpec>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferralSpec {
    pub accepted: Option<f64>,
    pub rejected: Option<f64>,
    /// From the referral to the receiving side's answer.
    pub delay: Option<Value>,
    /// Probability that an accepted patient arrives at the receiving institution.
    pub arrived: Option<f64>,
    pub arrive_delay: Option<Value>,
}

/// A life event: `event` happens `delay` after `after` (`enrolled`, `enrolled:<entry point>`,
/// another event, or `state` — entering a state that listens for it) with `probability`;
/// or at a constant `rate_per_year` from enrolment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    pub event: String,
    pub after: Option<String>,
    pub probability: Option<f64>,
    pub delay: Option<Value>,
    pub rate_per_year: Option<f64>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut s = Scenario::parse(&path.display().to_string(), &bytes)?;
        s.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(s)
    }

    pub fn parse(file: &str, bytes: &[u8]) -> Result<Scenario, String> {
        let root = carepath_dsl::yaml::parse(file, bytes, carepath_dsl::yaml::Budget::default())
            .map_err(|d| {
                d.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        let json = carepath_dsl::yaml::to_json(&root);
        let s: Scenario = serde_json::from_value(json).map_err(|e| format!("{file}: {e}"))?;
        // Expectations are checked now, so a typo fails before a long run rather than after it.
        for e in &s.expect {
            Expectation::parse(e).map_err(|m| format!("{file}: expect: {m}"))?;
        }
        Ok(s)
    }

    pub fn expectations(&self) -> Vec<Expectation> {
        self.expect
            .iter()
            .filter_map(|e| Expectation::parse(e).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::Cmp;

    #[test]
    fn reads_a_scenario_with_expectations() {
        let src = br#"
scenario: t
cohort: 50
days: 30
staff:
  hours: "08:00-17:00"
  capacity: { case_manager: 10, default: { per_1000: 50 } }
scales:
  epds: { answer: 0.9, items: { "10": 0.05 } }
events:
  - { event: discharged, after: admitted, delay: { normal: [6d, 2d], min: 1d } }
expect:
  - follow_up_rate >= 0.9
  - on_time_task_rate >= 85%
  - stroke.average_length_of_stay_days <= 7
  - every_state_visited: true
  - every_transition_taken: { except: [rehabilitation#1] }
  - max_backlog: { role: case_manager, at_most: 50 }
"#;
        let s = Scenario::parse("t.scenario.yaml", src).unwrap();
        assert_eq!(s.cohort, Some(50));
        let e = s.expectations();
        assert_eq!(e.len(), 6);
        assert_eq!(
            e[1],
            Expectation::Metric {
                text: "on_time_task_rate >= 85%".into(),
                metric: "on_time_task_rate".into(),
                cmp: Cmp::Ge,
                value: 0.85
            }
        );
        assert_eq!(
            e[4],
            Expectation::EveryTransitionTaken {
                except: vec!["rehabilitation#1".into()]
            }
        );
        assert_eq!(
            e[5],
            Expectation::MaxBacklog {
                role: "case_manager".into(),
                institution: None,
                at_most: 50
            }
        );
    }

    #[test]
    fn typos_are_reported_before_the_run() {
        let err = Scenario::parse("t.yaml", b"cohrt: 5\n").unwrap_err();
        assert!(err.contains("cohrt"), "{err}");
        let err = Scenario::parse("t.yaml", b"expect: [follow_up_rat >= 0.9]\n").unwrap_err();
        assert!(err.contains("unknown metric `follow_up_rat`"), "{err}");
        let err =
            Scenario::parse("t.yaml", b"expect: [{ max_backlog: { role: x } }]\n").unwrap_err();
        assert!(err.contains("at_most"), "{err}");
        let err = Scenario::parse("t.yaml", b"expect: [follow_up_rate >= high]\n").unwrap_err();
        assert!(err.contains("not a number"), "{err}");
    }
}
