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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

impl Cmp {
    fn holds(self, got: f64, want: f64) -> bool {
        match self {
            Cmp::Ge => got >= want,
            Cmp::Gt => got > want,
            Cmp::Le => got <= want,
            Cmp::Lt => got < want,
            Cmp::Eq => (got - want).abs() < 1e-9,
        }
    }
}

/// What a scenario says the run must show.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// `follow_up_rate >= 0.9`; the metric may be prefixed by a pathway id (`stroke.follow_up_rate`).
    Metric {
        text: String,
        metric: String,
        cmp: Cmp,
        value: f64,
    },
    EveryStateVisited {
        except: Vec<String>,
    },
    EveryTransitionTaken {
        except: Vec<String>,
    },
    MaxBacklog {
        role: String,
        institution: Option<String>,
        at_most: u64,
    },
    MaxOverdue {
        role: String,
        institution: Option<String>,
        at_most: u64,
    },
}

fn except_list(v: &Value, key: &str) -> Result<Option<Vec<String>>, String> {
    match v {
        Value::Bool(true) => Ok(Some(Vec::new())),
        Value::Bool(false) => Ok(None),
        Value::Object(m) => {
            let mut out = Vec::new();
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("except", Value::Array(items)) => {
                        for i in items {
                            out.push(
                                i.as_str()
                                    .ok_or_else(|| format!("`{key}.except` lists names"))?
                                    .to_string(),
                            );
                        }
                    }
                    _ => return Err(format!("`{key}` takes true or {{ except: [...] }}")),
                }
            }
            Ok(Some(out))
        }
        _ => Err(format!("`{key}` takes true or {{ except: [...] }}")),
    }
}

impl Expectation {
    pub fn parse(v: &Value) -> Result<Expectation, String> {
        match v {
            Value::String(s) => {
                let ops = [
                    (">=", Cmp::Ge),
                    ("<=", Cmp::Le),
                    ("==", Cmp::Eq),
                    (">", Cmp::Gt),
                    ("<", Cmp::Lt),
                ];
                let (at, op, cmp) = ops
                    .iter()
                    .filter_map(|(o, c)| s.find(o).map(|i| (i, *o, *c)))
                    .min_by_key(|(i, o, _)| (*i, std::cmp::Reverse(o.len())))
                    .ok_or_else(|| {
                        format!("`{s}`: write a metric, a comparison and a number, e.g. `follow_up_rate >= 0.9`")
                    })?;
                let metric = s[..at].trim().to_string();
                let value_text = s[at + op.len()..].trim();
                let value = value_text
                    .trim_end_matches('%')
                    .parse::<f64>()
                    .map_err(|_| format!("`{s}`: `{value_text}` is not a number"))?;
                let value = if value_text.ends_with('%') {
                    value / 100.0
                } else {
                    value
                };
                if metric.is_empty() {
                    return Err(format!("`{s}`: the metric is missing"));
                }
                if !crate::report::is_metric_name(&metric) {
                    return Err(format!(
                        "`{s}`: unknown metric `{metric}`; metrics: {}",
                        crate::report::METRICS.join(", ")
                    ));
                }
                Ok(Expectation::Metric {
                    text: s.clone(),
                    metric,
                    cmp,
                    value,
                })
            }
            Value::Object(m) if m.len() == 1 => {
                let (key, x) = m.iter().next().expect("one entry");
                let limit = |x: &Value| -> Result<(String, Option<String>, u64), String> {
                    let Value::Object(f) = x else {
                        return Err(format!("`{key}` takes {{ role: ..., at_most: n }}"));
                    };
                    for k in f.keys() {
                        if !["role", "institution", "at_most"].contains(&k.as_str()) {
                            return Err(format!("`{key}`: unknown key `{k}`"));
                        }
                    }
                    let role = f
                        .get("role")
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("`{key}` needs a `role`"))?;
                    let at_most = f
                        .get("at_most")
                        .and_then(Value::as_u64)
                        .ok_or_else(|| format!("`{key}` needs `at_most`, a whole number"))?;
                    let institution = f
                        .get("institution")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    Ok((role.to_string(), institution, at_most))
                };
                match key.as_str() {
                    "every_state_visited" => Ok(Expectation::EveryStateVisited {
                        except: except_list(x, key)?
                            .ok_or("`every_state_visited: false` expects nothing; leave it out")?,
                    }),
                    "every_transition_taken" => Ok(Expectation::EveryTransitionTaken {
                        except: except_list(x, key)?.ok_or(
                            "`every_transition_taken: false` expects nothing; leave it out",
                        )?,
                    }),
                    "max_backlog" => {
                        let (role, institution, at_most) = limit(x)?;
                        Ok(Expectation::MaxBacklog {
                            role,
                            institution,
                            at_most,
                        })
                    }
                    "max_overdue" => {
                        let (role, institution, at_most) = limit(x)?;
                        Ok(Expectation::MaxOverdue {
                            role,
                            institution,
                            at_most,
                        })
                    }
                    other => Err(format!(
                        "unknown expectation `{other}`; use a metric comparison, every_state_visited, every_transition_taken, max_backlog or max_overdue"
                    )),
                }
            }
            other => Err(format!("cannot read the expectation {other}")),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Expectation::Metric { text, .. } => text.clone(),
            Expectation::EveryStateVisited { except } if except.is_empty() => {
                "every_state_visited".into()
            }
            Expectation::EveryStateVisited { except } => {
                format!("every_state_visited except {}", except.join(", "))
            }
            Expectation::EveryTransitionTaken { except } if except.is_empty() => {
                "every_transition_taken".into()
            }
            Expectation::EveryTransitionTaken { except } => {
                format!("every_transition_taken except {}", except.join(", "))
            }
            Expectation::MaxBacklog {
                role,
                institution,
                at_most,
            } => format!(
                "max_backlog of {role}{} at most {at_most}",
                institution
                    .as_ref()
                    .map(|i| format!(" at {i}"))
                    .unwrap_or_default()
            ),
            Expectation::MaxOverdue {
                role,
                institution,
                at_most,
            } => format!(
                "max_overdue of {role}{} at most {at_most}",
                institution
                    .as_ref()
                    .map(|i| format!(" at {i}"))
                    .unwrap_or_default()
            ),
        }
    }

    /// Checks the expectation against a report; `Err` says what failed and by how much.
    pub fn check(&self, r: &crate::report::Report) -> Result<(), String> {
        let name = self.describe();
        match self {
            Expectation::Metric {
                metric, cmp, value, ..
            } => {
                let got = r
                    .metric(metric)
                    .ok_or_else(|| format!("`{name}`: the run has no value for `{metric}`"))?;
                if got.is_nan() {
                    return Err(format!(
                        "`{name}`: `{metric}` could not be computed (nothing was due)"
                    ));
                }
                if cmp.holds(got, *value) {
                    return Ok(());
                }
                let by = (got - value).abs();
                let how = match cmp {
                    Cmp::Ge | Cmp::Gt => format!("{} short", fmt_num(by)),
                    Cmp::Le | Cmp::Lt => format!("{} over", fmt_num(by)),
                    Cmp::Eq => format!("off by {}", fmt_num(by)),
                };
                Err(format!("`{name}`: {metric} = {}, {how}", fmt_num(got)))
            }
            Expectation::EveryStateVisited { except } => {
                let missing: Vec<String> = r
                    .never_visited()
                    .into_iter()
                    .filter(|(p, s)| !except.iter().any(|e| e == s || *e == format!("{p}.{s}")))
                    .map(|(p, s)| format!("{p}.{s}"))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}`: {} state(s) never visited: {}",
                        missing.len(),
                        missing.join(", ")
                    ))
                }
            }
            Expectation::EveryTransitionTaken { except } => {
                let missing: Vec<String> = r
                    .never_taken()
                    .into_iter()
                    .filter(|(p, id, _)| {
                        !except.iter().any(|e| e == id || *e == format!("{p}.{id}"))
                    })
                    .map(|(p, id, what)| format!("{p}.{id} ({what})"))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}`: {} transition(s) never taken: {}",
                        missing.len(),
                        missing.join(", ")
                    ))
                }
            }
            Expectation::MaxBacklog {
                role,
                institution,
                at_most,
            }
            | Expectation::MaxOverdue {
                role,
                institution,
                at_most,
            } => {
                let overdue = matches!(self, Expectation::MaxOverdue { .. });
                let what = if overdue { "overdue tasks" } else { "backlog" };
                let (peak, day) =
                    r.peak(role, institution.as_deref(), overdue)
                        .ok_or_else(|| {
                            format!(
                                "`{name}`: no {role} work{} in this run",
                                institution
                                    .as_ref()
                                    .map(|i| format!(" at {i}"))
                                    .unwrap_or_default()
                            )
                        })?;
                if peak <= *at_most {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}`: the {role} {what} peaked at {peak} on day {day} ({}), {} over the limit",
                        r.date_of(day),
                        peak - at_most
                    ))
                }
            }
        }
    }
}

pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn numbers_print_short() {
        assert_eq!(fmt_num(0.8431234), "0.8431");
        assert_eq!(fmt_num(50.0), "50");
        assert_eq!(fmt_num(0.5), "0.5");
    }
}
