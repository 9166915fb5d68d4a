//! carepath's simulator: synthetic cohorts through pathways in virtual time, for QA.
//!
//! A cohort (ages, sexes, entry points, comorbidities, device readings with trends, answering,
//! adherence, life events) runs through the real pure step — the same `carepath_engine::step` the
//! scheduler calls — with staff working their task queues at a daily capacity. Nothing sleeps or
//! reads the clock. The run reports indicators, workload, occupancy, coverage of every state and
//! transition, and referral flows, and checks a scenario's expectations.
//!
//! Determinism: each patient draws from a generator seeded with `hash(seed, patient index)`; staff
//! queues are ordered totally; every count is a whole number summed per chunk. The output is
//! byte-identical for the same seed and inputs, whatever the number of threads.

#![forbid(unsafe_code)]

pub mod cohort;
pub mod compare;
pub mod expect;
pub mod living;
pub mod model;
mod patient;
pub mod report;
pub mod run;
pub mod scenario;
pub mod setup;
pub mod tally;
pub use carepath_engine::svg;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use carepath_dsl::DocKind;
use carepath_engine::Program;
use carepath_engine::program::{Programs, Source};

pub use expect::Expectation;
pub use report::Report;
pub use scenario::Scenario;

/// What `carepath simulate` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pathway files or folders; when empty, the scenario's `pathways`.
    pub pathways: Vec<PathBuf>,
    pub scenario: Option<PathBuf>,
    pub cohort: Option<u64>,
    pub days: Option<u32>,
    pub seed: Option<u64>,
    pub out: Option<PathBuf>,
    /// Worker threads (the output does not depend on it); 0 means one per core.
    pub threads: usize,
    /// Print a percentage on stderr as days go by.
    pub progress: bool,
}

/// A finished run.
pub struct Simulation {
    pub report: Report,
    /// Expectations that failed, each saying by how much.
    pub failures: Vec<String>,
    /// Files written under `--out`.
    pub written: Vec<String>,
}

/// Compiles pathway files (and the pathways in folders); fragments and tests are skipped.
pub fn load_pathways(paths: &[PathBuf]) -> Result<Vec<Arc<Program>>, String> {
    let mut files = Vec::new();
    for p in paths {
        if !p.exists() {
            return Err(format!("{} does not exist", p.display()));
        }
        if p.is_dir() {
            files.extend(
                carepath_dsl::pathway_files(std::slice::from_ref(p))
                    .map_err(|e| format!("{}: {e}", p.display()))?
                    .into_iter()
                    .filter(|f| !f.components().any(|c| c.as_os_str() == "twins")),
            );
        } else {
            files.push(p.clone());
        }
    }
    let mut programs = Programs::default();
    let mut out: Vec<Arc<Program>> = Vec::new();
    for file in files {
        let compiled = carepath_dsl::compile_file(&file);
        if compiled.kind != DocKind::Pathway {
            continue;
        }
        let pathway =
            carepath_engine::program::into_pathway(compiled).map_err(|e| e.to_string())?;
        if let Some(other) = out.iter().find(|p| p.pathway.id == pathway.id) {
            return Err(format!(
                "{}: pathway `{}` is given twice (v{} and v{})",
                file.display(),
                pathway.id,
                other.pathway.version,
                pathway.version
            ));
        }
        let source = Source::new(&file.display().to_string(), String::new(), &pathway);
        out.push(
            programs
                .insert(pathway, source)
                .map_err(|e| e.to_string())?,
        );
    }
    if out.is_empty() {
        return Err("no pathway found in the given files".into());
    }
    Ok(out)
}

/// Runs a simulation as `carepath simulate` does, and writes its outputs when `out` is set.
pub fn simulate(opts: &Options) -> Result<Simulation, String> {
    let scenario = match &opts.scenario {
        Some(p) => Scenario::load(p)?,
        None => Scenario::default(),
    };
    let paths: Vec<PathBuf> = if opts.pathways.is_empty() {
        scenario
            .pathways
            .iter()
            .map(|p| scenario.dir.join(p))
            .collect()
    } else {
        opts.pathways.clone()
    };
    if paths.is_empty() {
        return Err("give --pathway FILE (or list `pathways` in the scenario)".into());
    }
    let programs = load_pathways(&paths)?;
    run_programs(programs, &scenario, opts)
}

/// Runs already compiled pathways under a scenario.
pub fn run_programs(
    programs: Vec<Arc<Program>>,
    scenario: &Scenario,
    opts: &Options,
) -> Result<Simulation, String> {
    let n = opts.cohort.or(scenario.cohort).unwrap_or(1_000);
    let days = opts.days.or(scenario.days).unwrap_or(365);
    let seed = opts.seed.or(scenario.seed).unwrap_or(1);
    if n > u64::from(u32::MAX) {
        return Err("--cohort is too large".into());
    }
    let setup = setup::Setup::new(programs, scenario, n, days, seed)?;
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let mut last = u32::MAX;
    let mut progress = |day: u32, days: u32| {
        if !opts.progress {
            return;
        }
        // On a terminal the percentage is rewritten in place; in a log, one line per 10 %.
        let terminal = std::io::stderr().is_terminal();
        let pct = day * 100 / days.max(1);
        let step = if terminal { 1 } else { 10 };
        if pct / step != last {
            last = pct / step;
            let mut e = std::io::stderr();
            if terminal {
                let _ = write!(e, "\rsimulating: {pct:>3}% (day {day}/{days})");
                if day == days {
                    let _ = writeln!(e);
                }
            } else {
                let _ = writeln!(e, "simulating: {pct:>3}% (day {day}/{days})");
            }
            let _ = e.flush();
        }
    };
    let raw = run::simulate(&setup, threads, &mut progress);
    let mut report = Report::build(&setup, &raw, scenario.scenario.clone());
    let mut failures = Vec::new();
    for e in scenario.expectations() {
        let result = report.check(&e);
        if let Err(m) = &result {
            failures.push(m.clone());
        }
        report.expectations.push(report::Checked {
            expectation: e.describe(),
            passed: result.is_ok(),
            message: result.err(),
        });
    }
    let written = match &opts.out {
        Some(dir) => report.write(dir)?,
        None => Vec::new(),
    };
    Ok(Simulation {
        report,
        failures,
        written,
    })
}

/// Replays one patient through `program` as the simulator lives it, with fixed inputs: enrolled
/// through `entry` at `start`, then stepped at each point (before and after the point's event
/// arrives, when it has one), and nothing else happening to them. Returns every task, follow-up
/// and scale push the patient made (the patient lives in `tz`) and what became of each — what the outcome policy, carried
/// out by the simulator's patient, decided — so it can be compared with the store and
/// `carepath test`.
pub fn replay(
    program: Arc<Program>,
    entry: &str,
    tz: &str,
    start: jiff::Timestamp,
    points: &[(jiff::Timestamp, Option<String>)],
) -> Result<Vec<carepath_engine::outcome::Made>, String> {
    let entry_ix = program
        .pathway
        .entry_points
        .iter()
        .position(|e| e.id == entry)
        .ok_or_else(|| {
            format!(
                "pathway `{}` has no entry point `{entry}`",
                program.pathway.id
            )
        })?;
    let last = points.iter().map(|(t, _)| *t).max().unwrap_or(start);
    // A run from the day before `start` long enough that nothing made falls past its end.
    let days = u32::try_from((last.as_second() - start.as_second()) / setup::DAY + 400)
        .map_err(|_| "the points end before they start".to_string())?;
    let zone = jiff::tz::TimeZone::get(tz).map_err(|e| format!("tz: `{tz}`: {e}"))?;
    let first = start.to_zoned(zone).date().yesterday();
    let scenario = Scenario {
        start: Some(first.map_err(|e| e.to_string())?.to_string()),
        tz: Some(tz.into()),
        ..Scenario::default()
    };
    let setup = setup::Setup::new(vec![program], &scenario, 1, days, 1)?;
    let at = |t: jiff::Timestamp| t.as_second();
    let points: Vec<(i64, Option<String>)> =
        points.iter().map(|(t, e)| (at(*t), e.clone())).collect();
    patient::replay(&setup, entry_ix, at(start), &points)
}

/// The peak resident set of this process so far (VmHWM), in MiB; NaN where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The folder of the repository's pathways, for tests and the benchmark.
pub fn repo_pathways() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pathways")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small pathway using tasks with outcomes, follow-ups, a scale, an alarm, a referral and
    /// life events.
    pub(crate) const TINY: &str = r#"
pathway: tiny
version: 1
title: { zh: 小, en: Tiny }
owner_role: case_manager
roles: [case_manager, ward_nurse]
entry_points:
  - { id: admission, state: ward }
states:
  - id: ward
    phase: in_hospital
    on_enter:
      - task: { id: assess, role: ward_nurse, title: Assess, due: 24h }
      - alarm:
          id: bp_high
          when: "bp_systolic >= 170"
          scope: enrolment
          task: { id: bp_call, role: case_manager, title: BP call, due: 2h, priority: urgent }
    transitions:
      - on: discharged
        to: home
  - id: home
    phase: follow_up
    on_enter:
      - follow_up: { channels: [wechat, sms], template: hello, after: 1d, at: "09:00" }
      - scale: { scale: epds, due: 3d, expires: 7d }
      - task: { id: day7_call, role: case_manager, title: Call, due: 8d }
    transitions:
      - on: task_done:day7_call
        when: 'outcome("day7_call") == "unreachable"'
        to: lost
      - on: task_done:day7_call
        to: referral
      - on: alarm:bp_high
        to: review
      - after: 20d
        to: closed
  - id: review
    phase: follow_up
    on_enter:
      - task: { id: bp_review, role: case_manager, title: Review, due: 1d, priority: high }
    transitions:
      - on: task_done:bp_review
        to: home
  - id: referral
    phase: referral
    on_enter:
      - referral: { direction: down, to: community_clinic, accept_within: 72h }
    transitions:
      - on: referral_accepted
        to: closed
      - after: 5d
        to: closed
  - id: lost
    phase: follow_up
    transitions:
      - after: 1d
        to: closed
  - { id: closed, phase: closed, terminal: true }
"#;

    pub(crate) fn program(src: &str) -> Arc<Program> {
        let compiled = carepath_dsl::compile_yaml(
            "tiny.yaml",
            src.as_bytes(),
            Path::new("."),
            &carepath_dsl::FsLoader,
        );
        let pathway = carepath_engine::program::into_pathway(compiled).expect("valid pathway");
        let source = Source::new("tiny.yaml", String::new(), &pathway);
        Programs::default()
            .insert(pathway, source)
            .expect("compiles")
    }

    fn run(threads: usize, seed: u64) -> Simulation {
        let opts = Options {
            cohort: Some(300),
            days: Some(60),
            seed: Some(seed),
            threads,
            ..Default::default()
        };
        let sc = Scenario::parse(
            "t.scenario.yaml",
            br#"
staff: { capacity: { default: 12 } }
observations: { bp_systolic: { mean: 150, sd: 15 } }
expect:
  - every_state_visited: true
  - follow_up_rate >= 0.2
"#,
        )
        .unwrap();
        run_programs(vec![program(TINY)], &sc, &opts).unwrap()
    }

    #[test]
    fn same_seed_same_json_whatever_the_threads() {
        let one = run(1, 42);
        let two = run(2, 42);
        let three = run(3, 42);
        assert_eq!(one.report.json(), two.report.json());
        assert_eq!(one.report.json(), three.report.json());
        let other = run(2, 43);
        assert_ne!(one.report.json(), other.report.json());
    }

    #[test]
    fn a_small_run_exercises_the_pathway() {
        let sim = run(2, 7);
        assert!(
            sim.failures.is_empty(),
            "{:?}\n{}",
            sim.failures,
            sim.report.text()
        );
        let p = &sim.report.pathways[0];
        assert_eq!(p.enrolled, 300);
        assert_eq!(p.errors, 0);
        assert!(p.completed > 200, "{}", sim.report.text());
        let i = &p.indicators;
        assert!(i.follow_ups_sent > 0 && i.counts.follow_up_due > 0 && i.counts.scales_pushed > 0);
        assert!(i.referrals_down > 0 && i.alarms > 0);
        assert!(i.value("average_length_of_stay_days").is_some());
        assert!(!sim.report.referral_flows.is_empty());
        // Every task created is accounted for: done, cancelled or still open.
        for r in &sim.report.roles {
            assert_eq!(
                r.created,
                r.done + r.cancelled + r.open_at_end,
                "{}",
                r.role
            );
        }
        assert!(sim.report.text().contains("coverage: 6/6 states visited"));
    }

    /// One monitoring state: a blood-pressure rule (`{clear}` is its clear line, or nothing) and a
    /// scale that must send a weight every three days.
    fn monitoring(clear: &str) -> String {
        format!(
            r#"
pathway: monitoring
version: 1
title: {{ zh: 监测, en: Monitoring }}
owner_role: case_manager
roles: [case_manager]
entry_points:
  - {{ id: home, state: home }}
states:
  - id: home
    phase: follow_up
    on_enter:
      - alarm:
          id: bp_high
          when: "bp_systolic >= 140"
          count: 2
          within: 3d
          {clear}
          scope: enrolment
          task: {{ id: bp_review, role: case_manager, title: BP review, due: 1d }}
      - alarm:
          id: scale_silent
          no_reading: {{ kind: weight, for: 3d }}
          scope: enrolment
          task: {{ id: weigh_in_call, role: case_manager, title: Weigh-in call, due: 1d }}
    transitions:
      - after: 60d
        to: closed
  - {{ id: closed, phase: closed, terminal: true }}
"#
        )
    }

    /// Alarm episodes and tasks of the monitoring pathway over a cohort whose pressure hovers
    /// around 140, taking each reading with probability `adherence`.
    fn monitored(clear: &str, adherence: f64) -> (u64, u64) {
        let opts = Options {
            cohort: Some(200),
            days: Some(60),
            seed: Some(11),
            threads: 2,
            ..Default::default()
        };
        let sc = Scenario::parse(
            "m.scenario.yaml",
            format!(
                "staff: {{ capacity: {{ default: 40 }} }}\npatients: {{ adherence: {{ mean: {adherence}, sd: 0.0 }} }}\n\
                 observations: {{ bp_systolic: {{ mean: 140, sd: 4, noise: 8 }}, weight: {{ mean: 70, sd: 5 }} }}\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let sim = run_programs(vec![program(&monitoring(clear))], &sc, &opts).unwrap();
        assert_eq!(sim.report.pathways[0].errors, 0, "{}", sim.report.text());
        let tasks: u64 = sim.report.roles.iter().map(|r| r.created).sum();
        (sim.report.pathways[0].indicators.alarms, tasks)
    }

    #[test]
    fn a_clear_line_below_the_raising_one_stops_the_flapping() {
        let (flapping, tasks) = monitored("", 1.0);
        assert_eq!(flapping, tasks, "one task per episode");
        let (held, _) = monitored(
            r#"clear: { when: "bp_systolic < 128", consecutive: 2 }"#,
            1.0,
        );
        println!("bp_high episodes: {flapping} without `clear`, {held} with it");
        assert!(held > 0, "the rule still raises");
        assert!(
            held * 2 < flapping,
            "with hysteresis {held} episodes, without {flapping}"
        );
    }

    #[test]
    fn a_silent_scale_raises_its_alarm_and_a_faithful_one_never_does() {
        // Every reading taken: the scale is never silent, so only blood-pressure episodes.
        let clear = r#"clear: { when: "bp_systolic < 100" }"#;
        let (faithful, _) = monitored(clear, 1.0);
        let (patchy, tasks) = monitored(clear, 0.3);
        println!("episodes: {faithful} with every reading taken, {patchy} with one in three");
        assert_eq!(patchy, tasks, "one task per episode");
        // With a reading one day in three, three silent days in a row are common; the pressure
        // rule, which never clears, raises at most once per patient either way.
        assert!(faithful <= 200, "{faithful}");
        assert!(
            patchy > faithful + 100,
            "patchy {patchy}, faithful {faithful}"
        );
    }

    #[test]
    fn outputs_are_written() {
        let dir = std::env::temp_dir().join(format!("carepath-sim-out-{}", std::process::id()));
        let opts = Options {
            cohort: Some(40),
            days: Some(20),
            out: Some(dir.clone()),
            threads: 1,
            ..Default::default()
        };
        let sim = run_programs(vec![program(TINY)], &Scenario::default(), &opts).unwrap();
        for f in [
            "summary.json",
            "indicators.csv",
            "workload.csv",
            "occupancy.csv",
            "coverage.csv",
            "referrals.csv",
            "workload.svg",
            "occupancy_tiny.svg",
        ] {
            assert!(dir.join(f).exists(), "{f} missing: {:?}", sim.written);
        }
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(json["cohort"], 40);
        let coverage = std::fs::read_to_string(dir.join("coverage.csv")).unwrap();
        assert!(coverage.lines().count() > 6);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_starved_role_shows_backlog_and_fails_its_limit() {
        let sc = Scenario::parse(
            "t.yaml",
            br#"
staff: { capacity: { case_manager: 1, default: 50 } }
institutions: { lead: { share: 1 } }
expect:
  - max_backlog: { role: case_manager, at_most: 5 }
  - on_time_task_rate >= 0.99
"#,
        )
        .unwrap();
        let opts = Options {
            cohort: Some(200),
            days: Some(30),
            threads: 2,
            ..Default::default()
        };
        let sim = run_programs(vec![program(TINY)], &sc, &opts).unwrap();
        assert_eq!(sim.failures.len(), 2, "{:?}", sim.failures);
        assert!(
            sim.failures[0].contains("the case_manager backlog peaked at")
                && sim.failures[0].contains("over the limit"),
            "{}",
            sim.failures[0]
        );
        assert!(sim.failures[1].contains("short"), "{}", sim.failures[1]);
    }

    /// A pathway that branches on the EPDS band, and a cohort whose answers fall in every band,
    /// some with thoughts of self-harm.
    const BANDS: &str = r#"
pathway: bands
version: 1
title: { zh: 分, en: Bands }
owner_role: case_manager
roles: [case_manager]
entry_points:
  - { id: home, state: screen }
states:
  - id: screen
    phase: follow_up
    on_enter:
      - scale: { scale: epds, due: 1d, expires: 7d }
    transitions:
      - on: scale_answered:epds
        when: 'band("epds") == "probable"'
        to: probable
      - on: scale_answered:epds
        to: settled
      - after: 10d
        to: settled
  - id: probable
    phase: follow_up
    transitions:
      - after: 1d
        to: settled
  - { id: settled, phase: closed, terminal: true }
"#;

    #[test]
    fn simulated_answers_have_their_band_and_critical_items_raise_the_urgent_task() {
        let sc = Scenario::parse(
            "t.yaml",
            br#"
scales: { epds: { answer: 1.0, score: { mean: 12, sd: 6 }, items: { "10": 0.2 } } }
staff: { capacity: { default: 50 } }
"#,
        )
        .unwrap();
        let opts = Options {
            cohort: Some(200),
            days: Some(30),
            threads: 1,
            ..Default::default()
        };
        let sim = run_programs(vec![program(BANDS)], &sc, &opts).unwrap();
        assert!(
            sim.report.never_visited().is_empty(),
            "{}",
            sim.report.text()
        );
        // EPDS item 10 answered above 0 raises an urgent task for the doctor, as the store does.
        let doctor = sim.report.roles.iter().find(|r| r.role == "doctor");
        let created = doctor.map_or(0, |r| r.created);
        assert!((20..=70).contains(&created), "{}", sim.report.text());
    }

    /// `screen` makes a task, a message and a questionnaire, then is left at once by patients
    /// entering through `skip` (the same pathway `tests/outcome_rule.rs` runs through the store).
    const PASS_THROUGH: &str = r#"
pathway: pass_through
version: 1
title: { zh: 直接通过, en: Pass-through }
owner_role: case_manager
roles: [case_manager]
variables:
  skip_screen: { type: bool, default: false }
entry_points:
  - { id: start, state: screen }
  - { id: skip, state: screen, set: { skip_screen: true } }
states:
  - id: screen
    phase: follow_up
    on_enter:
      - scale: { scale: phq9, due: 2d }
      - follow_up: { channels: [sms], template: screen_reminder, after: 1d, at: "09:00" }
      - task: { id: screen_call, role: case_manager, title: { zh: 电话, en: Call }, due: 1d }
    transitions:
      - when: 'skip_screen'
        to: wait
      - after: 14d
        to: wait
  - id: wait
    phase: follow_up
    transitions:
      - after: 30d
        to: done
  - { id: done, phase: closed, terminal: true }
"#;

    fn pass_through(entry: &str) -> report::Indicators {
        let sc = Scenario::parse(
            "t.yaml",
            format!("patients: {{ entry: {{ {entry}: 1 }} }}\nstaff: {{ capacity: {{ default: 100 }} }}\n").as_bytes(),
        )
        .unwrap();
        let opts = Options {
            cohort: Some(50),
            days: Some(60),
            threads: 1,
            ..Default::default()
        };
        let sim = run_programs(vec![program(PASS_THROUGH)], &sc, &opts).unwrap();
        sim.report.pathways[0].indicators.clone()
    }

    #[test]
    fn work_born_into_a_state_already_left_is_cancelled_as_the_store_cancels_it() {
        let skipped = pass_through("skip");
        assert_eq!(skipped.tasks_created, 50);
        assert_eq!(skipped.tasks_cancelled, 50);
        assert_eq!(skipped.tasks_done, 0);
        assert_eq!(skipped.follow_ups_sent, 0);
        assert_eq!(skipped.follow_ups_cancelled, 50);
        assert_eq!(skipped.counts.scales_pushed, 0);
        let kept = pass_through("start");
        // Screening calls, and the urgent tasks of PHQ-9 answers with thoughts of self-harm.
        assert!((50..=55).contains(&kept.tasks_created), "{kept:?}");
        assert_eq!(kept.tasks_cancelled, 0);
        assert_eq!(kept.follow_ups_sent, 50);
        assert_eq!(kept.counts.scales_pushed, 50);
    }
}
