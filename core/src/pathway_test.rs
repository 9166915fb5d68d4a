//! Pathway tests for authors: a patient, what happens to them and when, and what the pathway must
//! have produced by when. They run on the real pure step in virtual time, with no database, and
//! record which states and transitions they exercised so a pathway's tests can be held to full
//! coverage.
//!
//! ```yaml
//! tests: wound_care.yaml            # the pathway, relative to this file
//! cases:
//!   - name: a wound problem is called back the same day
//!     entry: discharge
//!     patient: { age: 60, sex: female, tz: Asia/Shanghai }
//!     start: 2026-03-02T08:00:00+08:00
//!     given:
//!       - { at: 1d, event: wound_problem_reported }
//!       - { at: 26h, task_done: { task: wound_call, outcome: reached } }
//!       - { at: 2d, observation: { bp_systolic: 150 } }
//!       - { at: 2d, scale: { scale: epds, score: 14, items: [1, 1, 2, 1, 2, 1, 2, 2, 1, 1] } }
//!     expect:
//!       - { at: 1d, state: nurse_call }
//!       - { at: 1d, task: { id: wound_call, role: ward_nurse } }
//!       - { at: 30h, status: completed }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use carepath_dsl::{Duration, Pathway, VarValue};
use jiff::Timestamp;
use serde::Deserialize;

use crate::facts::{FactEvent, Observation, PatientFacts, PendingEvent, ScaleResult};
use crate::outcome::{self, Because, Cause, OutcomeSink, Scope};
use crate::program::Programs;
use crate::step::{self, Enrolment, Produced, Program};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    pub tests: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub entry: String,
    #[serde(default)]
    pub patient: PatientSpec,
    pub start: Option<String>,
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub given: Vec<Given>,
    #[serde(default)]
    pub expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientSpec {
    #[serde(default = "default_age")]
    pub age: i16,
    #[serde(default = "default_sex")]
    pub sex: String,
    #[serde(default = "default_tz")]
    pub tz: String,
}

fn default_age() -> i16 {
    60
}
fn default_sex() -> String {
    "unknown".into()
}
fn default_tz() -> String {
    "Asia/Shanghai".into()
}

impl Default for PatientSpec {
    fn default() -> Self {
        PatientSpec {
            age: default_age(),
            sex: default_sex(),
            tz: default_tz(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Given {
    pub at: String,
    pub event: Option<String>,
    pub observation: Option<BTreeMap<String, f64>>,
    pub scale: Option<ScaleGiven>,
    pub task_done: Option<TaskDone>,
    pub risk: Option<RiskGiven>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleGiven {
    pub scale: String,
    pub score: f64,
    #[serde(default)]
    pub band: String,
    #[serde(default)]
    pub items: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDone {
    pub task: String,
    #[serde(default = "default_outcome")]
    pub outcome: String,
}

fn default_outcome() -> String {
    "done".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskGiven {
    pub model: String,
    pub score: f64,
    #[serde(default)]
    pub band: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub at: String,
    pub state: Option<String>,
    pub status: Option<String>,
    pub task: Option<TaskExpect>,
    pub no_task: Option<String>,
    pub follow_up: Option<FollowUpExpect>,
    pub scale_push: Option<String>,
    pub referral: Option<String>,
    pub risk: Option<String>,
    pub var: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskExpect {
    pub id: Option<String>,
    pub role: Option<String>,
    pub priority: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FollowUpExpect {
    pub template: String,
    pub channel: Option<String>,
}

/// What the tests of one pathway exercised, and what failed.
#[derive(Debug, Default)]
pub struct Report {
    pub file: String,
    pub pathway: String,
    pub cases: usize,
    pub failures: Vec<String>,
    pub states_visited: BTreeSet<String>,
    pub transitions_taken: BTreeSet<(String, usize)>,
    pub uncovered: Vec<String>,
    pub model: Option<Pathway>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn offset(start: Timestamp, s: &str, tz: &jiff::tz::TimeZone) -> Result<Timestamp, String> {
    let d = Duration::parse(s).map_err(|e| format!("`at: {s}`: {e}"))?;
    Ok(crate::time::add(start, d, tz))
}

#[derive(Debug, Clone)]
struct Item {
    at: Timestamp,
    /// The action's key: enrolment, state-entry sequence, action index.
    key: String,
    state_seq: u32,
    produced: Produced,
    done: bool,
    cancelled: bool,
    /// Stored as cancelled from the start: it never reached a board or a patient.
    born_ended: bool,
}

/// The test runner's side of [`outcome::apply`]: what it shows is what the store writes.
struct TestSink<'a> {
    items: &'a mut Vec<Item>,
    risks: &'a mut Vec<crate::facts::RiskResult>,
}

impl OutcomeSink for TestSink<'_> {
    fn transition(&mut self, _: &step::Taken) {}

    fn end_work(&mut self, scope: Scope, cause: Cause, because: Because<'_>) {
        for it in self.items.iter_mut().filter(|it| !it.done && !it.cancelled) {
            let in_scope = match scope {
                Scope::Entry(seq) => it.state_seq == seq,
                Scope::Every => true,
            };
            let due = outcome::due_of(&it.produced).unwrap_or(it.at);
            if in_scope
                && outcome::ends_at(outcome::work_of(&it.produced), cause, due, because.at())
            {
                it.cancelled = true;
            }
        }
    }

    fn action(&mut self, a: &step::Emitted, ended: Option<Because<'_>>) {
        self.items.push(Item {
            at: a.at,
            key: a.key.clone(),
            state_seq: a.state_seq,
            produced: a.action.clone(),
            done: false,
            cancelled: ended.is_some(),
            born_ended: ended.is_some(),
        });
    }

    fn risk(&mut self, r: crate::facts::RiskResult) {
        self.risks.push(r);
    }
}

/// Runs one case; returns failures (empty when it passes).
fn run_case(prog: &Program, case: &Case, report: &mut Report) -> Vec<String> {
    play(prog, case, report).0
}

/// The tasks, follow-ups and scale pushes one case made, and what became of each, or why the
/// case could not be played. Expectations are checked along the way but not reported here.
pub fn work_of_case(prog: &Program, case: &Case) -> Result<Vec<outcome::Made>, Vec<String>> {
    let (fails, items) = play(prog, case, &mut Report::default());
    if let Some(broken) = fails.iter().find(|f| !f.starts_with("at ")) {
        return Err(vec![broken.clone()]);
    }
    Ok(items
        .iter()
        .filter_map(|it| {
            let fate = match (it.born_ended, it.cancelled) {
                (true, _) => outcome::Fate::BornEnded,
                (false, true) => outcome::Fate::EndedLater,
                (false, false) => outcome::Fate::Live,
            };
            let emitted = step::Emitted {
                key: it.key.clone(),
                state: String::new(),
                state_seq: it.state_seq,
                at: it.at,
                action: it.produced.clone(),
            };
            outcome::Made::of(&emitted, fate)
        })
        .collect())
}

/// Plays one case on the pure step: its failures, and every item it made.
fn play(prog: &Program, case: &Case, report: &mut Report) -> (Vec<String>, Vec<Item>) {
    let mut fails = Vec::new();
    let tz = crate::time::zone(&case.patient.tz);
    let start = match &case.start {
        Some(s) => match s.parse::<Timestamp>() {
            Ok(t) => t,
            Err(e) => {
                let fail = format!("`start: {s}` is not an instant with an offset: {e}");
                return (vec![fail], Vec::new());
            }
        },
        None => "2026-03-02T00:00:00Z"
            .parse()
            .unwrap_or(Timestamp::UNIX_EPOCH),
    };
    let mut points: Vec<(Timestamp, usize, bool)> = Vec::new();
    for (i, g) in case.given.iter().enumerate() {
        match offset(start, &g.at, &tz) {
            Ok(t) => points.push((t, i, false)),
            Err(e) => fails.push(e),
        }
    }
    for (i, x) in case.expect.iter().enumerate() {
        match offset(start, &x.at, &tz) {
            Ok(t) => points.push((t, i, true)),
            Err(e) => fails.push(e),
        }
    }
    if !fails.is_empty() {
        return (fails, Vec::new());
    }
    // Givens before expectations at the same instant.
    points.sort_by_key(|(t, i, is_expect)| (*t, *is_expect, *i));

    let birth_year = i64::from(start.to_zoned(tz.clone()).year()) - i64::from(case.patient.age);
    let mut facts = PatientFacts {
        birth_date: jiff::civil::Date::new(birth_year as i16, 1, 1).ok(),
        sex: case.patient.sex.clone(),
        ..Default::default()
    };
    let mut pending: Vec<PendingEvent> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    let mut seq = 0i64;

    let record = |out: step::Outcome,
                  items: &mut Vec<Item>,
                  report: &mut Report,
                  risks: &mut Vec<crate::facts::RiskResult>|
     -> Enrolment {
        for t in &out.transitions {
            report.transitions_taken.insert((t.from.clone(), t.index));
            report.states_visited.insert(t.from.clone());
            report.states_visited.insert(t.to.clone());
        }
        report.states_visited.insert(out.enrolment.state.clone());
        outcome::apply(&out, &mut TestSink { items, risks });
        out.enrolment
    };

    let mut enrolment =
        match step::enrol(prog, 1, &case.entry, &case.patient.tz, &facts, &[], start) {
            Ok(out) => record(out, &mut items, report, &mut facts.risks),
            Err(e) => {
                let fail = format!("enrolling at `{}` failed: {e}", case.entry);
                return (vec![fail], items);
            }
        };
    for (name, value) in &case.vars {
        let v = match value {
            serde_json::Value::Bool(b) => VarValue::Bool(*b),
            serde_json::Value::Number(n) if n.is_i64() => {
                VarValue::Integer(n.as_i64().unwrap_or(0))
            }
            serde_json::Value::Number(n) => VarValue::Number(n.as_f64().unwrap_or(0.0)),
            other => VarValue::Text(other.as_str().unwrap_or_default().to_string()),
        };
        enrolment.vars.insert(name.clone(), v);
    }

    for (t, i, is_expect) in points {
        // Timers due by now fire before what happens now, as the scheduler would have run them.
        // An enrolment that has ended is never stepped again (the scheduler skips it), so its
        // terminal state's closing work stays as it was made.
        if enrolment.status == step::Status::Active {
            match step::step(prog, &enrolment, &facts, &pending, t) {
                Ok(out) => enrolment = record(out, &mut items, report, &mut facts.risks),
                Err(e) => {
                    fails.push(format!("step failed: {e}"));
                    return (fails, items);
                }
            }
        }
        if !is_expect {
            let g = &case.given[i];
            if let Some(ev) = &g.event {
                // The admin API records only events the pathway declares or has built in.
                if let Some(reason) = carepath_dsl::events::refusal(&prog.pathway, ev) {
                    fails.push(format!("at {}: {reason}", g.at));
                    continue;
                }
                seq += 1;
                facts.events.push(FactEvent {
                    name: ev.clone(),
                    at: t,
                });
                pending.push(PendingEvent {
                    seq,
                    name: ev.clone(),
                    at: t,
                });
            }
            if let Some(obs) = &g.observation {
                for (kind, value) in obs {
                    facts.observations.push(Observation {
                        kind: kind.clone(),
                        value: *value,
                        at: t,
                    });
                }
            }
            if let Some(s) = &g.scale {
                facts.scales.push(ScaleResult {
                    scale: s.scale.clone(),
                    score: s.score,
                    band: s.band.clone(),
                    items: s.items.clone(),
                    at: t,
                });
                seq += 1;
                let name = format!("scale_answered:{}", s.scale);
                facts.events.push(FactEvent {
                    name: name.clone(),
                    at: t,
                });
                pending.push(PendingEvent { seq, name, at: t });
            }
            if let Some(r) = &g.risk {
                facts.risks.push(crate::facts::RiskResult {
                    model: r.model.clone(),
                    score: r.score,
                    band: r.band.clone(),
                    at: t,
                });
            }
            if let Some(done) = &g.task_done {
                let accepted = prog.pathway.accepted_outcomes(Some(&done.task));
                if !accepted.contains(&done.outcome.as_str()) {
                    fails.push(format!(
                        "at {}: task `{}` cannot be completed with outcome `{}`; it accepts {}",
                        g.at,
                        done.task,
                        done.outcome,
                        accepted.join(", ")
                    ));
                    continue;
                }
                let open = items.iter_mut().find(|it| {
                    !it.done && !it.cancelled && matches!(&it.produced, Produced::Task { task_ref: Some(r), .. } if *r == done.task)
                });
                match open {
                    Some(it) => it.done = true,
                    None => {
                        fails.push(format!(
                            "at {}: task `{}` cannot be completed: it is not open",
                            g.at, done.task
                        ));
                        continue;
                    }
                }
                facts
                    .outcomes
                    .push((done.task.clone(), done.outcome.clone()));
                seq += 1;
                let name = format!("task_done:{}", done.task);
                facts.events.push(FactEvent {
                    name: name.clone(),
                    at: t,
                });
                pending.push(PendingEvent { seq, name, at: t });
            }
        }
        facts.open_tasks = items
            .iter()
            .filter(|it| matches!(it.produced, Produced::Task { .. }) && !it.done && !it.cancelled)
            .count() as i64;
        facts.overdue_tasks = items
            .iter()
            .filter(|it| {
                matches!(&it.produced, Produced::Task { due_at, .. } if *due_at < t)
                    && !it.done
                    && !it.cancelled
            })
            .count() as i64;
        if enrolment.status == step::Status::Active {
            match step::step(prog, &enrolment, &facts, &pending, t) {
                Ok(out) => enrolment = record(out, &mut items, report, &mut facts.risks),
                Err(e) => {
                    fails.push(format!("step failed: {e}"));
                    return (fails, items);
                }
            }
        }
        if is_expect && let Some(f) = check(&case.expect[i], &enrolment, &items, t) {
            fails.push(f);
        }
    }
    (fails, items)
}

fn describe(items: &[Item], kind: &str) -> String {
    let list: Vec<String> = items
        .iter()
        .filter(|it| it.produced.kind() == kind)
        .map(|it| match &it.produced {
            Produced::Task { task_ref, role, .. } => {
                format!("{}@{role}", task_ref.as_deref().unwrap_or("-"))
            }
            Produced::FollowUp { template, .. } => template.clone(),
            Produced::ScalePush { scale, .. } => scale.clone(),
            Produced::Referral { direction, to, .. } => format!("{direction:?}→{}", to.as_str()),
            Produced::Risk { model, band, .. } => format!("{model}({band})"),
            other => other.kind().to_string(),
        })
        .zip(items.iter().filter(|it| it.produced.kind() == kind))
        .map(|(d, it)| {
            if it.born_ended {
                format!(
                    "{d} (cancelled as it was made: its state was left at the instant it was made)"
                )
            } else {
                d
            }
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn check(x: &Expect, e: &Enrolment, items: &[Item], t: Timestamp) -> Option<String> {
    let at = &x.at;
    if let Some(state) = &x.state
        && &e.state != state
    {
        return Some(format!(
            "at {at}: expected state `{state}`, but the patient is in `{}`",
            e.state
        ));
    }
    if let Some(status) = &x.status
        && e.status.as_str() != status
    {
        return Some(format!(
            "at {at}: expected status `{status}`, found `{}`",
            e.status.as_str()
        ));
    }
    // What production would have put on a board or sent: work born ended never was (the
    // descriptions in failures still list it, saying why).
    let seen: Vec<Item> = items.iter().filter(|it| it.at <= t).cloned().collect();
    let created: Vec<Item> = seen.iter().filter(|it| !it.born_ended).cloned().collect();
    if let Some(task) = &x.task {
        let found = created.iter().any(|it| match &it.produced {
            Produced::Task {
                task_ref,
                role,
                priority,
                ..
            } => {
                task.id
                    .as_ref()
                    .is_none_or(|id| task_ref.as_ref() == Some(id))
                    && task.role.as_ref().is_none_or(|r| r == role)
                    && task
                        .priority
                        .as_ref()
                        .is_none_or(|p| p == priority.as_str())
            }
            _ => false,
        });
        if !found {
            return Some(format!(
                "at {at}: expected a task {task:?}; tasks created so far: {}",
                describe(&seen, "task")
            ));
        }
    }
    if let Some(id) = &x.no_task
        && created
            .iter()
            .any(|it| matches!(&it.produced, Produced::Task { task_ref: Some(r), .. } if r == id))
    {
        return Some(format!(
            "at {at}: expected no task `{id}`, but one was created"
        ));
    }
    if let Some(f) = &x.follow_up {
        let found = created.iter().any(|it| match &it.produced {
            Produced::FollowUp {
                template, channels, ..
            } => {
                template == &f.template
                    && f.channel
                        .as_ref()
                        .is_none_or(|c| channels.first().map(|x| x.as_str()) == Some(c.as_str()))
            }
            _ => false,
        });
        if !found {
            return Some(format!(
                "at {at}: expected a follow-up `{}`; follow-ups so far: {}",
                f.template,
                describe(&seen, "follow_up")
            ));
        }
    }
    if let Some(scale) = &x.scale_push
        && !created
            .iter()
            .any(|it| matches!(&it.produced, Produced::ScalePush { scale: s, .. } if s == scale))
    {
        return Some(format!(
            "at {at}: expected a push of scale `{scale}`; pushes so far: {}",
            describe(&seen, "scale_push")
        ));
    }
    if let Some(dir) = &x.referral {
        let found = created.iter().any(|it| match &it.produced {
            Produced::Referral { direction, .. } => format!("{direction:?}").to_lowercase() == *dir,
            _ => false,
        });
        if !found {
            return Some(format!(
                "at {at}: expected a `{dir}` referral; referrals so far: {}",
                describe(&seen, "referral")
            ));
        }
    }
    if let Some(model) = &x.risk
        && !created
            .iter()
            .any(|it| matches!(&it.produced, Produced::Risk { model: m, .. } if m == model))
    {
        return Some(format!(
            "at {at}: expected a `{model}` risk prediction; predictions so far: {}",
            describe(&seen, "risk")
        ));
    }
    if let Some(vars) = &x.var {
        for (name, want) in vars {
            let got = e
                .vars
                .get(name)
                .map(|v| serde_json::to_value(v).unwrap_or_default());
            let same = match (&got, want.as_f64()) {
                (Some(g), Some(w)) => g.as_f64().is_some_and(|g| (g - w).abs() < 1e-9),
                (Some(g), None) => g == want,
                _ => false,
            };
            if !same {
                return Some(format!(
                    "at {at}: expected variable `{name}` = {want}, found {}",
                    got.map(|g| g.to_string()).unwrap_or("nothing".into())
                ));
            }
        }
    }
    None
}

/// Reads a test file and the pathway it names.
pub fn load(path: &Path) -> Result<(TestFile, PathBuf), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let root = carepath_dsl::yaml::parse(
        &path.display().to_string(),
        &bytes,
        carepath_dsl::yaml::Budget::default(),
    )
    .map_err(|d| {
        d.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let file: TestFile = serde_json::from_value(carepath_dsl::yaml::to_json(&root))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let pathway = path.parent().unwrap_or(Path::new(".")).join(&file.tests);
    Ok((file, pathway))
}

/// Runs every case of a test file against its pathway.
pub fn run_file(path: &Path) -> Report {
    let mut report = Report {
        file: path.display().to_string(),
        ..Default::default()
    };
    let (file, pathway_path) = match load(path) {
        Ok(x) => x,
        Err(e) => {
            report.failures.push(e);
            return report;
        }
    };
    let compiled = carepath_dsl::compile_file(&pathway_path);
    let pathway = match crate::program::into_pathway(compiled) {
        Ok(p) => p,
        Err(e) => {
            report.failures.push(e.to_string());
            return report;
        }
    };
    report.pathway = pathway.id.clone();
    let mut programs = Programs::default();
    let source =
        crate::program::Source::new(&pathway_path.display().to_string(), String::new(), &pathway);
    let prog = match programs.insert(pathway, source) {
        Ok(p) => p,
        Err(e) => {
            report.failures.push(e.to_string());
            return report;
        }
    };
    for case in &file.cases {
        report.cases += 1;
        for f in run_case(&prog, case, &mut report) {
            report.failures.push(format!("case `{}`: {f}", case.name));
        }
    }
    report.uncovered = uncovered(&prog.pathway, &report);
    report.model = Some(prog.pathway.clone());
    report
}

fn uncovered(p: &Pathway, r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    for s in &p.states {
        if !r.states_visited.contains(&s.id) {
            out.push(format!("state `{}` is never visited", s.id));
        }
        for (i, t) in s.transitions.iter().enumerate() {
            if !r.transitions_taken.contains(&(s.id.clone(), i)) {
                let trig = t.trigger.describe();
                out.push(format!(
                    "transition {} of `{}` → `{}` ({}) is never taken",
                    i + 1,
                    s.id,
                    t.to,
                    if trig.is_empty() { "immediate" } else { &trig }
                ));
            }
        }
    }
    out
}

/// Test files under the given paths (`*.test.yaml`).
pub fn test_files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        } else if p.to_string_lossy().ends_with(".test.yaml") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// What the reports of each pathway leave uncovered, taken together.
pub fn merged_coverage(reports: &[Report]) -> BTreeMap<String, Vec<String>> {
    let mut merged: BTreeMap<String, Report> = BTreeMap::new();
    for r in reports {
        let Some(model) = &r.model else { continue };
        let m = merged.entry(r.pathway.clone()).or_insert_with(|| Report {
            model: Some(model.clone()),
            ..Default::default()
        });
        m.states_visited.extend(r.states_visited.iter().cloned());
        m.transitions_taken
            .extend(r.transitions_taken.iter().cloned());
    }
    merged
        .into_iter()
        .map(|(id, m)| {
            (
                id,
                m.model
                    .as_ref()
                    .map(|p| uncovered(p, &m))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHWAY: &str = r#"pathway: falls
version: 1
title: { zh: 跌倒, en: Falls }
owner_role: case_manager
roles: [case_manager]
events: [fall_reported]
entry_points: [{ id: start, state: home }]
states:
  - id: home
    phase: follow_up
    transitions:
      - { on: fall_reported, to: done }
      - { after: 30d, to: done }
  - { id: done, phase: closed, terminal: true }
"#;

    fn run(given: &str) -> Report {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("falls.yaml"), PATHWAY).expect("write pathway");
        let test = format!(
            "tests: falls.yaml\ncases:\n  - name: a fall\n    entry: start\n    given:\n      - {{ at: 1d, event: {given} }}\n    expect:\n      - {{ at: 2d, state: done }}\n"
        );
        let path = dir.path().join("falls.test.yaml");
        std::fs::write(&path, test).expect("write test");
        run_file(&path)
    }

    #[test]
    fn a_case_gives_only_events_the_pathway_can_receive() {
        let declared = run("fall_reported");
        assert!(declared.failures.is_empty(), "{:?}", declared.failures);
        let typo = run("fall_reportd");
        assert!(
            typo.failures
                .iter()
                .any(|f| f.contains("event `fall_reportd` is neither declared")
                    && f.contains("did you mean `fall_reported`?")),
            "{:?}",
            typo.failures
        );
    }
}
