//! Catch-up is exact: the same patients, with the same enrolments, events and readings recorded
//! at the same instants, end with the same rows whether the scheduler ran every night, once at
//! the end, or at random instants. Every timer, event, reading and daily re-check takes effect at
//! its own instant, and guards read the facts as of that instant, so when passes happen cannot
//! matter. Runs the real pathways with generated patients, on SQLite and on PostgreSQL when
//! `DATABASE_URL` is set.
//!
//! Compared: enrolments (state, entries, status, variables, entry time, next wake-up), every
//! transition in the record, tasks, follow-ups, scale pushes, referrals and risk predictions with
//! their keys, due times and fates. Not compared, because a declared policy makes them depend on
//! when the engine noticed: scale reminders (after downtime only the latest due reminder is sent,
//! the earlier ones are recorded as skipped), and the tasks of alarm episodes: alarm rules judge a
//! reading against the rules armed when it is recorded, and no-reading rules are raised by the
//! pass's sweep (docs/pathway-language.md, "Time"). Readings are drawn inside every pathway's alarm
//! thresholds and the test checks that no reading-judged alarm fired; no pathway routes on a
//! no-reading alarm's event, so those cannot move a state.

use std::collections::BTreeMap;

use carepath_dsl::{Action, Trigger};
use carepath_engine::Programs;
use carepath_engine::observations::Reading;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::{self, Pool};
use jiff::Timestamp;

use crate::support::{self, Kind, Snapshot, add_patient, rows};

const T0: &str = "2026-03-02T01:00:00Z";
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// SplitMix64: the same cohort for the same seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
    fn real(&mut self, lo: f64, hi: f64) -> f64 {
        let r = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((lo + r * (hi - lo)) * 10.0).round() / 10.0
    }
}

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(support::ts(T0).as_second() + offset).expect("a valid instant")
}

/// Something recorded about a patient at an instant, whatever the scheduler is doing.
#[derive(Debug, Clone)]
enum Input {
    Enrol {
        patient: String,
        pathway: String,
        entry: String,
    },
    Event {
        patient: String,
        pathway: String,
        name: String,
    },
    Readings {
        patient: String,
        values: Vec<(&'static str, f64)>,
    },
}

/// Events a pathway reacts to that a hospital system or a member of staff records: its custom
/// events and the completion of each of its tasks.
fn outside_events(programs: &Programs, pathway: &str) -> Vec<String> {
    let prog = programs
        .latest()
        .into_iter()
        .find(|p| p.pathway.id == pathway)
        .expect("published");
    let mut names = Vec::new();
    for s in &prog.pathway.states {
        for t in &s.transitions {
            if let Trigger::Event(name) = &t.trigger
                && !name.starts_with("alarm:")
                && !name.starts_with("scale_")
                && !name.starts_with("referral")
            {
                names.push(name.clone());
            }
        }
        for a in &s.on_enter {
            if let Action::Task(t) = a
                && let Some(id) = &t.id
            {
                names.push(format!("task_done:{id}"));
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Readings inside every real pathway's alarm thresholds, over the kinds their guards and goals read.
fn readings(g: &mut Gen) -> Vec<(&'static str, f64)> {
    match g.below(4) {
        0 => vec![
            ("bp_systolic", g.real(100.0, 138.0)),
            ("bp_diastolic", g.real(60.0, 88.0)),
        ],
        1 => vec![("glucose_fasting", g.real(4.0, 12.0))],
        2 => vec![("muscle_strength", g.below(6) as f64)],
        _ => vec![("exercise_minutes", g.below(90) as f64)],
    }
}

/// A cohort: one patient per enrolment, each with inputs over `days` days.
fn cohort(g: &mut Gen, programs: &Programs, patients: usize, days: i64) -> Vec<(i64, Input)> {
    let mut pathways: Vec<(String, Vec<String>)> = programs
        .latest()
        .iter()
        .map(|p| {
            (
                p.pathway.id.clone(),
                p.pathway
                    .entry_points
                    .iter()
                    .map(|e| e.id.clone())
                    .collect(),
            )
        })
        .collect();
    pathways.sort();
    let mut inputs = Vec::new();
    for i in 0..patients {
        let patient = format!("c{i}");
        let (pathway, entries) = g.pick(&pathways).clone();
        let start = (g.below(5 * 24 * 60) as i64) * 60;
        inputs.push((
            start,
            Input::Enrol {
                patient: patient.clone(),
                pathway: pathway.clone(),
                entry: g.pick(&entries).clone(),
            },
        ));
        let names = outside_events(programs, &pathway);
        let span = days * DAY - start;
        for _ in 0..g.below(10) {
            let t = start + 1 + g.below(span as u64 - 1) as i64;
            inputs.push((
                t,
                Input::Event {
                    patient: patient.clone(),
                    pathway: pathway.clone(),
                    name: g.pick(&names).clone(),
                },
            ));
        }
        for _ in 0..g.below(30) {
            let t = start + 1 + g.below(span as u64 - 1) as i64;
            inputs.push((
                t,
                Input::Readings {
                    patient: patient.clone(),
                    values: readings(g),
                },
            ));
        }
    }
    inputs.sort_by_key(|(t, _)| *t);
    inputs
}

async fn record(pool: &Pool, programs: &Programs, input: &Input, now: Timestamp, n: usize) {
    match input {
        Input::Enrol {
            patient,
            pathway,
            entry,
        } => {
            add_patient(pool, patient, now).await;
            store::enrol(pool, programs, patient, pathway, None, entry, now)
                .await
                .unwrap_or_else(|e| panic!("enrolling {patient} in {pathway}: {e}"));
        }
        Input::Event {
            patient,
            pathway,
            name,
        } => {
            let id = support::scalar(
                pool,
                &format!(
                    "SELECT id FROM enrolments WHERE patient_id = '{patient}' AND pathway_id = '{pathway}'"
                ),
            )
            .await;
            let mut tx = pool.begin().await.expect("begin");
            store::add_event(&mut tx, id, name, now, None, Some(format!("in:{n}")), now)
                .await
                .expect("add_event");
            tx.commit().await.expect("commit");
        }
        Input::Readings { patient, values } => {
            let readings: Vec<Reading> = values
                .iter()
                .map(|(kind, value)| Reading {
                    patient_id: patient.clone(),
                    kind: (*kind).to_string(),
                    value: *value,
                    unit: None,
                    at: now,
                    reading_id: format!("r{n}"),
                    source: "device".into(),
                })
                .collect();
            let visible = std::iter::once(patient.clone()).collect();
            store::ingest_readings(pool, &readings, &visible, now)
                .await
                .expect("ingest");
        }
    }
}

/// The rows the comparison reads, each table sorted.
async fn rows_of(pool: &Pool) -> Snapshot {
    const TABLES: &[(&str, &str, usize)] = &[
        (
            "enrolments",
            "SELECT patient_id, pathway_id, state, state_seq, status, entered_at, vars, next_wake_at FROM enrolments",
            8,
        ),
        (
            "transitions",
            "SELECT dedupe_key, at, detail FROM record WHERE kind = 'transition'",
            3,
        ),
        (
            "tasks",
            "SELECT dedupe_key, state_seq, role, status, due_at, created_at, cancel_reason FROM tasks WHERE dedupe_key NOT LIKE 'alarm:%'",
            7,
        ),
        (
            "follow_ups",
            "SELECT dedupe_key, template, send_at, status FROM follow_ups WHERE template <> 'scale_reminder'",
            4,
        ),
        (
            "scale_pushes",
            "SELECT dedupe_key, scale, due_at, expires_at, status, created_at FROM scale_pushes",
            6,
        ),
        (
            "referrals",
            "SELECT dedupe_key, direction, to_kind, status, accept_by FROM referrals",
            5,
        ),
        (
            "risk_predictions",
            "SELECT dedupe_key, model, score, band, at FROM risk_predictions",
            5,
        ),
        (
            "alarm_tasks",
            "SELECT e.dedupe_key FROM alarm_episodes e JOIN alarm_rules r ON r.id = e.rule_id JOIN record_parts p ON p.dedupe_key = r.spec WHERE p.body NOT LIKE '%no_reading%'",
            1,
        ),
        (
            "skipped",
            "SELECT dedupe_key FROM record WHERE dedupe_key LIKE '%:skipped'",
            1,
        ),
    ];
    let mut out = Snapshot::new();
    for (name, sql, n) in TABLES {
        let cast: Vec<String> = sql
            .trim_start_matches("SELECT ")
            .split(" FROM ")
            .next()
            .unwrap_or_default()
            .split(", ")
            .map(|c| format!("CAST({c} AS TEXT)"))
            .collect();
        let from = sql.split(" FROM ").nth(1).unwrap_or_default();
        let sql = format!("SELECT {} FROM {from}", cast.join(", "));
        out.insert(*name, rows(pool, &sql, *n).await);
    }
    out
}

/// Records `inputs` as they happen and runs the scheduler at `passes` (then at `end`).
async fn run(
    kind: Kind,
    label: &str,
    inputs: &[(i64, Input)],
    passes: &[i64],
    end: i64,
) -> Snapshot {
    let dir = support::real_pathways().expect("the real pathways");
    let b = support::backend(kind).expect("the backend");
    let (pool, programs) = support::open_store(&b.url, &dir, at(0)).await;
    let mut passes: Vec<i64> = passes.iter().copied().filter(|p| *p < end).collect();
    passes.push(end);
    passes.sort_unstable();
    passes.dedup();
    let mut next = 0;
    for pass in passes {
        while next < inputs.len() && inputs[next].0 <= pass {
            let (t, input) = &inputs[next];
            record(&pool, &programs, input, at(*t), next).await;
            next += 1;
        }
        let s = scheduler::run_pass(&pool, &programs, at(pass), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(s.errors, 0, "{label}: a pass failed: {s:?}");
    }
    let snap = rows_of(&pool).await;
    pool.close().await;
    snap
}

async fn three_ways(kind: Kind, seed: u64, patients: usize, days: i64) {
    let mut g = Gen(seed);
    let dir = support::real_pathways().expect("the real pathways");
    let programs = Programs::load_dir(&dir).expect("the real pathways load");
    let inputs = cohort(&mut g, &programs, patients, days);
    let end = days * DAY + 17 * HOUR;
    // Nightly at 02:00 in Shanghai (18:00 UTC).
    let nightly: Vec<i64> = (0..days).map(|d| d * DAY + 17 * HOUR).collect();
    let mut random: Vec<i64> = (0..(days / 5).max(2))
        .map(|_| g.below((end - 1) as u64) as i64)
        .collect();
    random.sort_unstable();
    let tag = format!("{seed:x}_{days}");
    let a = run(kind, &format!("nightly {tag}"), &inputs, &nightly, end).await;
    let once = run(kind, &format!("once {tag}"), &inputs, &[], end).await;
    let r = run(kind, &format!("random {tag}"), &inputs, &random, end).await;
    assert!(
        a["alarm_tasks"].is_empty(),
        "readings were meant to stay inside every alarm's thresholds: {:?}",
        a["alarm_tasks"]
    );
    let moved = a["transitions"].len();
    assert!(
        moved > patients,
        "the cohort barely moved ({moved} transitions): the test would prove little"
    );
    let label = |s: &str| format!("{s} ({days} days, seed {seed} in CAREPATH_TEST_SEED, {kind:?})");
    let (a1, once) = modulo_missed(&a, &once);
    support::assert_same(&label("nightly"), &a1, &label("once at the end"), &once);
    let (a2, r) = modulo_missed(&a, &r);
    support::assert_same(&label("nightly"), &a2, &label("at random instants"), &r);
}

/// Both snapshots without the work of schedule occurrences that either run recorded as skipped
/// by their declared missed-occurrence policy (the other run, on time, made them); the skip
/// records themselves are kept in `skipped` only for occurrences both runs skipped.
fn modulo_missed(a: &Snapshot, b: &Snapshot) -> (Snapshot, Snapshot) {
    let prefixes: Vec<String> = a["skipped"]
        .iter()
        .chain(&b["skipped"])
        .map(|k| k.trim_end_matches("skipped").to_string())
        .collect();
    let strip = |s: &Snapshot| -> Snapshot {
        s.iter()
            .map(|(table, rows)| {
                let kept = rows
                    .iter()
                    .filter(|r| {
                        *table == "enrolments"
                            || !prefixes.iter().any(|p| r.starts_with(p.as_str()))
                    })
                    .cloned()
                    .collect();
                (*table, kept)
            })
            .collect()
    };
    (strip(a), strip(b))
}

/// SQLite always, PostgreSQL when `DATABASE_URL` is set (loudly skipped otherwise).
fn on_every_backend(f: impl Fn(Kind)) {
    for b in support::backends() {
        f(b.kind);
    }
}

#[test]
fn nightly_once_and_random_passes_end_with_the_same_rows() {
    let seed = support::random_seed();
    on_every_backend(|kind| {
        support::runtime().block_on(async {
            for (i, days) in [20, 60, 120].into_iter().enumerate() {
                three_ways(kind, seed.wrapping_add(i as u64), 24, days).await;
            }
        })
    });
}

#[test]
fn a_year_of_downtime_changes_nothing() {
    let seed = support::random_seed() ^ 0x5eed;
    on_every_backend(|kind| {
        support::runtime().block_on(three_ways(kind, seed, 12, 400));
    });
}

#[test]
fn the_cohort_is_the_same_for_the_same_seed() {
    let dir = support::real_pathways().expect("the real pathways");
    let programs = Programs::load_dir(&dir).expect("load");
    let a = cohort(&mut Gen(7), &programs, 10, 30);
    let b = cohort(&mut Gen(7), &programs, 10, 30);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    let kinds: BTreeMap<&str, usize> = a.iter().fold(BTreeMap::new(), |mut m, (_, i)| {
        *m.entry(match i {
            Input::Enrol { .. } => "enrol",
            Input::Event { .. } => "event",
            Input::Readings { .. } => "readings",
        })
        .or_default() += 1;
        m
    });
    assert_eq!(kinds["enrol"], 10);
}
