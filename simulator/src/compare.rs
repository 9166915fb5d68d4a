//! Two versions of a pathway side by side: the same synthetic cohort, scenario and seed through
//! each, and the indicators and workload of the two runs compared (`carepath simulate --compare
//! v1 v2`). Both runs are ordinary simulations; this module only reads their reports.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use std::sync::Arc;

use carepath_dsl::Action;
use carepath_engine::Program;

use crate::svg::{Bar, Doc, bars_height};
use crate::{Options, Report, Scenario, load_pathways, run_programs};

/// One measure in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub measure: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// `b - a` where both are known.
    pub change: Option<f64>,
}

/// The comparison of two runs.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub seed: u64,
    pub cohort: u64,
    pub days: u32,
    /// Built-in indicators (rates) and what they count, over the whole cohort.
    pub indicators: Vec<Row>,
    /// Work made and done, per role and in all.
    pub workload: Vec<Row>,
    /// Expectations of the scenario that failed, per run.
    pub failures: (Vec<String>, Vec<String>),
    /// What of the scenario one version could not use.
    pub notes: Vec<String>,
}

fn row(measure: String, a: Option<f64>, b: Option<f64>) -> Row {
    Row {
        change: a.zip(b).map(|(a, b)| b - a),
        measure,
        a,
        b,
    }
}

/// The numeric leaves of a JSON value, by dotted path.
fn leaves(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => out.push((prefix.to_string(), n.as_f64().unwrap_or(f64::NAN))),
        Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&p, v, out);
            }
        }
        Value::Array(items) => {
            // Indicator values are written as [name, value] pairs.
            for it in items {
                if let [Value::String(name), value] =
                    it.as_array().map(Vec::as_slice).unwrap_or(&[])
                {
                    leaves(&format!("{prefix}.{name}"), value, out);
                }
            }
        }
        _ => {}
    }
}

fn measures(r: &Report) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    leaves(
        "",
        &serde_json::to_value(&r.totals).unwrap_or(Value::Null),
        &mut out,
    );
    out
}

fn workload(r: &Report) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for role in &r.roles {
        for (what, v) in [
            ("created", role.created),
            ("done", role.done),
            ("cancelled", role.cancelled),
            ("overdue_at_end", role.overdue_at_end),
            ("peak_backlog", role.peak_backlog),
        ] {
            out.push((format!("{}.{what}", role.role), v as f64));
        }
    }
    out
}

fn pair(a: Vec<(String, f64)>, b: Vec<(String, f64)>) -> Vec<Row> {
    let mut names: Vec<String> = a.iter().chain(b.iter()).map(|(n, _)| n.clone()).collect();
    names.sort();
    names.dedup();
    let get = |v: &[(String, f64)], n: &str| v.iter().find(|(m, _)| m == n).map(|(_, x)| *x);
    names
        .into_iter()
        .map(|n| row(n.clone(), get(&a, &n), get(&b, &n)))
        .collect()
}

/// The scenario for one version: staff behaviour for tasks the version does not have is left out
/// (a scenario written for version 1 names tasks version 2 may have removed), and said so.
fn scenario_for(sc: &Scenario, programs: &[Arc<Program>], notes: &mut Vec<String>) -> Scenario {
    let has = |t: &str| {
        t == "default"
            || t == "default_call"
            || programs.iter().any(|p| {
                p.pathway.actions().any(|(_, a)| match a {
                    Action::Task(x) => x.id.as_deref() == Some(t),
                    Action::Alarm(x) => x.task.id.as_deref() == Some(t),
                    _ => false,
                })
            })
    };
    let mut sc = sc.clone();
    let label = programs
        .first()
        .map(|p| format!("{} v{}", p.pathway.id, p.pathway.version))
        .unwrap_or_default();
    let mut dropped = Vec::new();
    sc.tasks
        .outcomes
        .retain(|k, _| has(k) || !dropped_push(&mut dropped, k));
    sc.tasks
        .ready_after
        .retain(|k, _| has(k) || !dropped_push(&mut dropped, k));
    if let Some(serde_json::Value::Object(m)) = &mut sc.tasks.missed {
        m.retain(|k, _| has(k) || !dropped_push(&mut dropped, k));
    }
    dropped.sort();
    dropped.dedup();
    if !dropped.is_empty() {
        notes.push(format!(
            "{label} has no task {}: the scenario's behaviour for it is not used there",
            dropped.join(", ")
        ));
    }
    sc
}

fn dropped_push(dropped: &mut Vec<String>, k: &str) -> bool {
    dropped.push(k.to_string());
    true
}

/// Runs the scenario of `opts` once with pathway `a` and once with `b`, with the same cohort,
/// days and seed, and compares them.
pub fn compare(a: &Path, b: &Path, opts: &Options) -> Result<Comparison, String> {
    let scenario = match &opts.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::default(),
    };
    let mut notes = Vec::new();
    let mut run = |p: &Path| {
        let programs = load_pathways(&[p.to_path_buf()])?;
        let sc = scenario_for(&scenario, &programs, &mut notes);
        run_programs(
            programs,
            &sc,
            &Options {
                out: None,
                ..opts.clone()
            },
        )
    };
    let (ra, rb) = (run(a)?, run(b)?);
    let label = |p: &Path, r: &Report| {
        let v = r
            .pathways
            .first()
            .map(|p| format!("{} v{}", p.id, p.version))
            .unwrap_or_default();
        format!("{v} ({})", p.display())
    };
    let c = Comparison {
        a: label(a, &ra.report),
        b: label(b, &rb.report),
        seed: ra.report.seed,
        cohort: ra.report.cohort,
        days: ra.report.days,
        indicators: pair(measures(&ra.report), measures(&rb.report)),
        workload: pair(workload(&ra.report), workload(&rb.report)),
        failures: (ra.failures, rb.failures),
        notes,
    };
    if let Some(dir) = &opts.out {
        write(&c, dir)?;
    }
    Ok(c)
}

impl Comparison {
    /// The comparison as a table.
    pub fn text(&self) -> String {
        let mut s = format!(
            "a: {}\nb: {}\ncohort {} for {} days, seed {}\n\n{:<44} {:>12} {:>12} {:>12}\n",
            self.a, self.b, self.cohort, self.days, self.seed, "indicator", "a", "b", "b − a"
        );
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        let num = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
        for r in self.indicators.iter().chain(self.workload.iter()) {
            if r.a == r.b && r.measure.contains('.') && !r.measure.starts_with("values") {
                continue;
            }
            s.push_str(&format!(
                "{:<44} {:>12} {:>12} {:>12}\n",
                r.measure,
                num(r.a),
                num(r.b),
                num(r.change)
            ));
        }
        s
    }
}

fn write(c: &Comparison, dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = dir.join("compare.json");
    std::fs::write(&json, serde_json::to_string_pretty(c).unwrap_or_default())
        .map_err(|e| format!("{}: {e}", json.display()))?;
    let rates: Vec<Bar> = c
        .indicators
        .iter()
        .filter(|r| r.measure.starts_with("values."))
        .flat_map(|r| {
            let name = r.measure.trim_start_matches("values.");
            [
                Bar {
                    label: format!("{name} — a"),
                    value: r.a,
                    target: None,
                },
                Bar {
                    label: format!("{name} — b"),
                    value: r.b,
                    target: None,
                },
            ]
        })
        .collect();
    let mut doc = Doc::new(1000, bars_height(rates.len()) + 20);
    doc.bars(0, &format!("{} vs {}", c.a, c.b), &rates);
    let svg = dir.join("compare.svg");
    std::fs::write(&svg, doc.finish()).map_err(|e| format!("{}: {e}", svg.display()))?;
    Ok(vec![json, svg])
}
