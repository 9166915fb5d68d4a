//! Pathway tests for authors: a patient, what happens to them and when, and what the pathway must
//! have produced by when. They run on the real pure step in virtual time, with no database, and
//! record which states and transitions they exercised so a pathway's tests can be held to full
//! coverage. The format, key by key, is in `docs/pathway-tests.md`.
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
//!       - { at: 1d 12:30, task_done: { task: wound_call, outcome: resolved } }
//!     expect:
//!       - { at: 1d, state: nurse_call }
//!       - { at: 1d, task: { id: wound_call, role: ward_nurse, due: 1d 12:00, status: open } }
//!       - { at: 1d 12:30, status: completed }
//! ```
//!
//! What the runner shows is what production stores: the patient is kept the way the store keeps
//! it (`world`), each given is recorded as the production interface records it, and
//! `tests/test_replay.rs` replays every case of the repository's pathways through the real store
//! and scheduler and requires the same states and the same rows ([`play_case`]).

mod check;
mod format;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use carepath_dsl::{Pathway, VarValue};
use jiff::Timestamp;

pub use format::{
    Case, Decision, Expect, FollowUpExpect, Given, PatientSpec, PushExpect, PushSpec,
    ReferralExpect, ReferralSpec, RiskGiven, ScaleGiven, TaskDone, TaskExpect, TestFile, instant,
    local,
};
pub use world::{Input, Played, Stepped, What, Work, WorkStatus};

use crate::facts::PatientFacts;
use crate::outcome;
use crate::program::Programs;
use crate::step::Program;

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

/// When a case gives no `start`.
const DEFAULT_START: &str = "2026-03-02T00:00:00Z";

/// Plays one case: every instant stepped, every piece of work made, and what failed.
pub fn play_case(prog: &Program, case: &Case) -> Played {
    play(prog, case, &mut Report::default())
}

/// The tasks, follow-ups and scale pushes one case made, and what became of each, or why the
/// case could not be played. Expectations are checked along the way but not reported here.
pub fn work_of_case(prog: &Program, case: &Case) -> Result<Vec<outcome::Made>, Vec<String>> {
    let played = play_case(prog, case);
    if !played.errors.is_empty() {
        return Err(played.errors);
    }
    Ok(played
        .work
        .iter()
        .filter(|w| w.kind != "referral")
        .map(|w| outcome::Made {
            key: w.key.clone(),
            kind: w.kind,
            due_at: w.due_at,
            fate: match (w.born_ended, w.status) {
                (true, _) => outcome::Fate::BornEnded,
                (false, WorkStatus::Cancelled | WorkStatus::Expired) => outcome::Fate::EndedLater,
                (false, _) => outcome::Fate::Live,
            },
        })
        .collect())
}

/// Plays one case on the pure step, recording coverage into `report`.
fn play(prog: &Program, case: &Case, report: &mut Report) -> Played {
    let mut played = Played {
        case: case.name.clone(),
        start: Timestamp::UNIX_EPOCH,
        tz: case.patient.tz.clone(),
        birth_date: None,
        sex: case.patient.sex.clone(),
        steps: Vec::new(),
        work: Vec::new(),
        errors: Vec::new(),
        failures: Vec::new(),
        outside_production: Vec::new(),
    };
    let name = &case.name;
    let Ok(tz) = jiff::tz::TimeZone::get(&case.patient.tz) else {
        played.errors.push(format!(
            "case `{name}`: `tz: {}` is not an IANA time zone",
            case.patient.tz
        ));
        return played;
    };
    let start_text = case.start.as_deref().unwrap_or(DEFAULT_START);
    played.start = match start_text.parse::<Timestamp>() {
        Ok(t) => t,
        Err(e) => {
            played.errors.push(format!(
                "case `{name}`: `start: {start_text}` is not an instant with an offset: {e}"
            ));
            return played;
        }
    };
    let start = played.start;
    // Each given and expectation at its instant; givens before expectations at the same instant.
    let mut points: Vec<(Timestamp, bool, usize)> = Vec::new();
    for (i, g) in case.given.iter().enumerate() {
        match instant(start, &g.at, &tz) {
            Ok(t) => points.push((t, false, i)),
            Err(e) => played
                .errors
                .push(format!("case `{name}`, a given's `at`: {e}")),
        }
    }
    for (i, x) in case.expect.iter().enumerate() {
        match instant(start, &x.at, &tz) {
            Ok(t) => points.push((t, true, i)),
            Err(e) => played
                .errors
                .push(format!("case `{name}`, an expectation's `at`: {e}")),
        }
    }
    if !played.errors.is_empty() {
        return played;
    }
    points.sort();

    let birth_year = i64::from(start.to_zoned(tz.clone()).year()) - i64::from(case.patient.age);
    played.birth_date = jiff::civil::Date::new(birth_year as i16, 1, 1).ok();
    let facts = PatientFacts {
        birth_date: played.birth_date,
        sex: case.patient.sex.clone(),
        ..Default::default()
    };
    let mut w = match world::World::enrol(prog, &case.entry, &case.patient.tz, facts, start, report)
    {
        Ok(w) => w,
        Err(e) => {
            played.errors.push(format!("case `{name}`: {e}"));
            return played;
        }
    };
    match case
        .quiet_hours
        .as_deref()
        .map(crate::delivery::QuietHours::parse)
    {
        None => {}
        Some(Ok(q)) => w.quiet = q,
        Some(Err(e)) => {
            played
                .errors
                .push(format!("case `{name}`: `quiet_hours`: {e}"));
            return played;
        }
    }
    if !case.vars.is_empty() {
        played
            .outside_production
            .push("`vars` sets enrolment variables, which no production interface does".into());
    }
    for (name, value) in &case.vars {
        let v = match value {
            serde_json::Value::Bool(b) => VarValue::Bool(*b),
            serde_json::Value::Number(n) if n.is_i64() => {
                VarValue::Integer(n.as_i64().unwrap_or(0))
            }
            serde_json::Value::Number(n) => VarValue::Number(n.as_f64().unwrap_or(0.0)),
            other => VarValue::Text(other.as_str().unwrap_or_default().to_string()),
        };
        w.enrolment.vars.insert(name.clone(), v);
    }

    let mut passed_at: Option<Timestamp> = None;
    for (t, is_expect, i) in points {
        // A pass at each instant the case names: timers due by now fire before what happens now.
        if passed_at != Some(t) {
            passed_at = Some(t);
            if let Err(e) = w.pass(t, report) {
                played.errors.push(format!("case `{name}`: {e}"));
                break;
            }
            w.stepped(t, world::What::Pass);
        }
        if is_expect {
            let x = &case.expect[i];
            for f in check::check(x, &w) {
                played
                    .failures
                    .push(format!("case `{name}`, {}: {f}", check::when(&x.at, t, &w)));
            }
            continue;
        }
        let g = &case.given[i];
        match w.record(g, t) {
            Ok(input) => {
                if matches!(input, world::Input::Risk { .. }) {
                    played.outside_production.push(format!(
                        "the risk result given {} is recorded by no production interface",
                        check::when(&g.at, t, &w)
                    ));
                }
                if let Err(e) = w.pass(t, report) {
                    played.errors.push(format!("case `{name}`: {e}"));
                    break;
                }
                w.stepped(t, world::What::Given(input));
            }
            Err(e) => played.errors.push(format!(
                "case `{name}`, given {}: {e}",
                check::when(&g.at, t, &w)
            )),
        }
    }
    played.work = w.work();
    played.steps = std::mem::take(&mut w.steps);
    played
}

/// Runs one case; returns errors and failures (empty when it passes).
fn run_case(prog: &Program, case: &Case, report: &mut Report) -> Vec<String> {
    let played = play(prog, case, report);
    let mut out = played.errors;
    out.extend(played.failures);
    out
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

/// Reads a test file and compiles the pathway it names, as `carepath test` runs it.
pub fn load_program(path: &Path) -> Result<(TestFile, std::sync::Arc<Program>), String> {
    let (file, pathway_path) = load(path)?;
    let compiled = carepath_dsl::compile_file(&pathway_path);
    let pathway = crate::program::into_pathway(compiled).map_err(|e| e.to_string())?;
    let source =
        crate::program::Source::new(&pathway_path.display().to_string(), String::new(), &pathway);
    let prog = Programs::default()
        .insert(pathway, source)
        .map_err(|e| e.to_string())?;
    Ok((file, prog))
}

/// Runs every case of a test file against its pathway.
pub fn run_file(path: &Path) -> Report {
    let mut report = Report {
        file: path.display().to_string(),
        ..Default::default()
    };
    let (file, prog) = match load_program(path) {
        Ok(x) => x,
        Err(e) => {
            report.failures.push(e);
            return report;
        }
    };
    report.pathway = prog.pathway.id.clone();
    for case in &file.cases {
        report.cases += 1;
        let failures = run_case(&prog, case, &mut report);
        report.failures.extend(failures);
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

/// A small pathway and cases written as YAML, for the runner's own tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Home with a call, a message, a questionnaire, a blood-pressure alarm and a no-weight alarm;
    /// the call done leads to a doctor's review, `worse` to an upward referral; day 10 closes.
    pub(crate) const PATHWAY: &str = r#"pathway: t
version: 1
title: { zh: 测试, en: Test }
owner_role: nurse
roles: [nurse, doctor]
events: [worse]
entry_points:
  - { id: start, state: home }
states:
  - id: home
    phase: follow_up
    on_enter:
      - task: { id: call, role: nurse, title: { zh: 电话, en: Call }, due: 4h }
      - follow_up: { channels: [wechat, sms], template: welcome, after: 1d, at: "18:00" }
      - scale: { scale: phq9, due: 2d, expires: 3d }
      - alarm:
          id: bp_crisis
          when: "bp_systolic >= 180"
          scope: enrolment
          task: { role: nurse, title: { zh: 血压危象, en: BP crisis }, due: 30m, priority: urgent }
      - alarm:
          id: scale_silent
          no_reading: { kind: weight, for: 3d }
          task: { id: weigh_in_call, role: nurse, title: { zh: 未称体重, en: No weight }, due: 1d }
    transitions:
      - on: task_done:call
        to: review
      - on: worse
        to: refer
      - after: 10d
        to: closed
  - id: review
    phase: follow_up
    on_enter:
      - task: { id: review, role: doctor, title: { zh: 复核, en: Review }, due: 1d, priority: high }
    transitions:
      - on: task_done:review
        to: closed
  - id: refer
    phase: referral
    on_enter:
      - referral: { direction: up, to: lead_hospital, accept_within: 24h }
    transitions:
      - on: referral_accepted
        to: closed
      - on: referral_rejected
        to: home
  - id: closed
    phase: closed
    terminal: true
"#;

    pub(crate) fn program() -> std::sync::Arc<Program> {
        let compiled = carepath_dsl::compile_yaml(
            "t.yaml",
            PATHWAY.as_bytes(),
            Path::new("."),
            &carepath_dsl::FsLoader,
        );
        let pathway = crate::program::into_pathway(compiled).expect("a valid pathway");
        let source = crate::program::Source::new("t.yaml", PATHWAY.into(), &pathway);
        Programs::default()
            .insert(pathway, source)
            .expect("compiles")
    }

    /// A case starting at 09:00 Beijing time on Monday 2 March 2026, with `given` and `expect`
    /// written as YAML lists.
    pub(crate) fn case(given: &str, expect: &str) -> Case {
        let yaml = format!(
            "name: the case\nentry: start\npatient: {{ tz: Asia/Shanghai }}\nstart: 2026-03-02T09:00:00+08:00\ngiven:\n{given}\nexpect:\n{expect}\n"
        );
        let root = carepath_dsl::yaml::parse("case.yaml", yaml.as_bytes(), Default::default())
            .expect("a case in YAML");
        serde_json::from_value(carepath_dsl::yaml::to_json(&root))
            .unwrap_or_else(|e| panic!("not a case: {e}\n{yaml}"))
    }

    pub(crate) fn play(given: &str, expect: &str) -> Played {
        play_case(&program(), &case(given, expect))
    }
}

/// `docs/pathway-tests.md` stays true: every key of the format is documented, every inline example
/// reads as what its section says, and the complete example passes against its pathway.
#[cfg(test)]
mod doc_tests {
    use super::*;

    const DOC: &str = include_str!("../../../docs/pathway-tests.md");

    /// The keys serde accepts for `T`, from the error an unknown key gives.
    fn keys_of<T: serde::de::DeserializeOwned>() -> Vec<String> {
        let err = serde_json::from_value::<T>(serde_json::json!({ "no_such_key": 1 }))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let listed = err.split("expected").nth(1).unwrap_or_default();
        listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        let root = carepath_dsl::yaml::parse("doc.md", text.as_bytes(), Default::default())
            .map_err(|d| format!("{d:?}"))?;
        serde_json::from_value(carepath_dsl::yaml::to_json(&root)).map_err(|e| e.to_string())
    }

    /// The text of the section headed `## {title}`.
    fn section(title: &str) -> &'static str {
        let start = DOC
            .find(&format!("## {title}\n"))
            .unwrap_or_else(|| panic!("no section {title}"));
        let rest = &DOC[start + 3..];
        &rest[..rest.find("\n## ").unwrap_or(rest.len())]
    }

    #[test]
    fn every_key_is_documented() {
        let mut keys = keys_of::<TestFile>();
        keys.extend(keys_of::<Case>());
        keys.extend(keys_of::<PatientSpec>());
        keys.extend(keys_of::<Given>());
        keys.extend(keys_of::<ScaleGiven>());
        keys.extend(keys_of::<TaskDone>());
        keys.extend(keys_of::<Expect>());
        keys.extend(keys_of::<TaskExpect>());
        keys.extend(keys_of::<FollowUpExpect>());
        keys.extend(keys_of::<PushSpec>());
        keys.extend(keys_of::<ReferralSpec>());
        keys.extend(keys_of::<format::OccurrenceExpect>());
        keys.extend(keys_of::<format::AlarmExpect>());
        assert!(keys.len() > 40, "{keys:?}");
        for k in keys {
            assert!(
                DOC.contains(&format!("`{k}`")),
                "docs/pathway-tests.md does not mention `{k}`"
            );
        }
    }

    #[test]
    fn every_inline_example_reads() {
        let examples = |title: &str| -> Vec<&'static str> {
            section(title)
                .split('`')
                .filter(|s| s.starts_with("{ at:"))
                .collect()
        };
        let (givens, expects) = (examples("Givens"), examples("Expectations"));
        assert!(
            givens.len() >= 7 && expects.len() >= 14,
            "{} givens, {} expectations",
            givens.len(),
            expects.len()
        );
        for g in givens {
            yaml::<Given>(g).unwrap_or_else(|e| panic!("{g}: {e}"));
        }
        for x in expects {
            yaml::<Expect>(x).unwrap_or_else(|e| panic!("{x}: {e}"));
        }
        for s in section("Scale answers")
            .split('`')
            .filter(|s| s.starts_with("scale: {"))
        {
            let given: Given =
                yaml(&format!("{{ at: 1d, {s} }}")).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(given.scale.is_some());
        }
    }

    #[test]
    fn the_complete_example_passes() {
        let text = section("A complete file");
        let body = text
            .split("```yaml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("a YAML block");
        let file: TestFile = yaml(body).unwrap_or_else(|e| panic!("{e}"));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pathways/twins");
        let (_, prog) = load_program(&dir.join("wound_care.test.yaml")).expect("the twin pathway");
        assert_eq!(file.tests, "wound_care.yaml");
        for case in &file.cases {
            let played = play_case(&prog, case);
            assert!(
                played.errors.is_empty() && played.failures.is_empty(),
                "{:?} {:?}",
                played.errors,
                played.failures
            );
        }
    }
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
