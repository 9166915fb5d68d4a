//! What a scenario says a run must show: a metric compared with a number, every state visited,
//! every transition taken, a backlog limit. Expectations are read when the scenario is loaded, so a
//! typo fails before a long run rather than after it; the report checks them once the run is over.

use serde_json::Value;

use crate::report::is_simulated_indicator;

/// Metric names an expectation can compare besides the built-in indicators the simulator counts
/// (`report::is_simulated_indicator`), optionally prefixed by a pathway id; `indicator.<id>` and
/// `visits.<state>` name a declared indicator and a state's visits.
pub const METRICS: &[&str] = &[
    "referrals_up",
    "referrals_down",
    "completion_rate",
    "enrolled",
    "deaths",
    "errors",
    "alarms",
    "tasks_created",
    "state_coverage",
    "transition_coverage",
];

pub fn is_metric_name(name: &str) -> bool {
    let metric = |m: &str| METRICS.contains(&m) || is_simulated_indicator(m);
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [m] => metric(m),
        [a, b] => metric(b) || ((*a == "indicator" || *a == "visits") && !b.is_empty()),
        [_, a, b] => (*a == "indicator" || *a == "visits") && !b.is_empty(),
        _ => false,
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
    pub(crate) fn holds(self, got: f64, want: f64) -> bool {
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
                if !is_metric_name(&metric) {
                    return Err(format!(
                        "`{s}`: unknown metric `{metric}`; metrics: the built-in indicators of docs/indicators.md, {}",
                        METRICS.join(", ")
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        assert!(is_metric_name("follow_up_rate"));
        assert!(is_metric_name("stroke.follow_up_rate"));
        assert!(is_metric_name("on_time_task_rate"));
        assert!(!is_metric_name("on_time_rate"));
        assert!(!is_metric_name("case_load_per_case_manager"));
        assert!(is_metric_name("indicator.bp_control_rate"));
        assert!(is_metric_name("stroke.visits.neuro_deterioration"));
        assert!(!is_metric_name("follow_up"));
        assert!(!is_metric_name("a.b.c.d"));
    }
}
