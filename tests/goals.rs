//! Care-plan goals: evaluated from the record by the pass and at once when readings arrive, with
//! every change of status kept as history — on every backend.

use std::collections::HashSet;

use carepath_engine::observations::Reading;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::{self, Pool};
use jiff::Timestamp;

use crate::support::{self, add_patient, open_store, rows, scalar, ts};

const T0: &str = "2026-03-02T01:00:00Z";
const DAY: i64 = 86_400;

const BP_GOAL: &str = r#"pathway: bp_goal
version: 1
title: { zh: 血压目标（测试）, en: Blood-pressure goal (test) }
owner_role: case_manager
roles: [case_manager]
entry_points:
  - { id: clinic, state: monitor }
states:
  - id: monitor
    phase: follow_up
    on_enter:
      - task: { id: review, role: case_manager, title: { zh: 复核, en: Review }, due: 7d }
    transitions:
      - after: 90d
        to: closed
  - id: closed
    phase: closed
    terminal: true
goals:
  - id: bp_controlled
    title: { zh: 血压达标, en: Blood pressure on target }
    observation: bp_systolic
    reading: "value < 140"
    at_least: 0.8
    over: 28d
"#;

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(ts(T0).as_second() + offset).expect("a valid instant")
}

async fn post(pool: &Pool, values: &[(i64, f64)], now: Timestamp) -> store::IngestSummary {
    let readings: Vec<Reading> = values
        .iter()
        .map(|(t, v)| Reading {
            patient_id: "p1".into(),
            kind: "bp_systolic".into(),
            value: *v,
            unit: None,
            at: at(*t),
            reading_id: format!("r{t}"),
            source: "device".into(),
        })
        .collect();
    let visible: HashSet<String> = ["p1".to_string()].into();
    store::ingest_readings(pool, &readings, &visible, now)
        .await
        .expect("ingest")
}

/// The goal status history of a store with one enrolment: [`history_of`] without whose it is.
async fn history(pool: &Pool) -> Vec<String> {
    history_of(pool)
        .await
        .into_iter()
        .map(|r| {
            r.split_once('|')
                .map_or(r.clone(), |(_, rest)| rest.to_string())
        })
        .collect()
}

#[tokio::test]
async fn goals_are_evaluated_from_readings_with_their_history() {
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("bp_goal.yaml", BP_GOAL)]);
        let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
        add_patient(&pool, "p1", at(0)).await;
        let (id, _) = store::enrol(&pool, &programs, "p1", "bp_goal", None, "clinic", at(0))
            .await
            .expect("enrol");
        assert_eq!(
            rows(
                &pool,
                "SELECT goal_id, CAST(next_eval_at AS TEXT) FROM goals",
                2
            )
            .await,
            [format!("bp_controlled|{}", at(0).as_second())],
            "{name}: a top-level goal gets its row at enrolment, due at once"
        );

        // The first pass evaluates it: no readings yet, so not met; the first status is history.
        let s = scheduler::run_pass(&pool, &programs, at(DAY), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(
            (s.goals_evaluated, s.goals_changed),
            (1, 1),
            "{name}: {s:?}"
        );
        assert_eq!(
            history(&pool).await,
            [format!("bp_controlled|0|0|{}", at(DAY).as_second())],
            "{name}"
        );

        // Three of four readings in range: 0.75 < 0.8, still not met, so no new history row.
        let r = post(
            &pool,
            &[
                (DAY + 1, 130.0),
                (DAY + 2, 150.0),
                (DAY + 3, 128.0),
                (DAY + 4, 135.0),
            ],
            at(DAY + 10),
        )
        .await;
        assert_eq!(
            (r.accepted, r.goals.evaluated, r.goals.changed),
            (4, 1, 0),
            "{name}"
        );
        assert_eq!(history(&pool).await.len(), 1, "{name}");
        let value = scalar(
            &pool,
            "SELECT CAST(ROUND(value * 100) AS BIGINT) FROM goals",
        )
        .await;
        assert_eq!(value, 75, "{name}: the measured share is kept");

        // A fifth reading in range makes 4/5 = 0.8: met at once, without waiting for a pass.
        let r = post(&pool, &[(DAY + 20, 132.0)], at(DAY + 30)).await;
        assert_eq!((r.goals.evaluated, r.goals.changed), (1, 1), "{name}");
        let met = format!("bp_controlled|1|5|{}", at(DAY + 30).as_second());
        assert!(history(&pool).await.contains(&met), "{name}");
        assert_eq!(history(&pool).await.len(), 2, "{name}");
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM record WHERE kind = 'goal'").await,
            2,
            "{name}: each change is in the patient's record"
        );
        // Reposting the same readings changes nothing.
        let r = post(&pool, &[(DAY + 20, 132.0)], at(DAY + 40)).await;
        assert_eq!((r.duplicates, r.goals.changed), (1, 0), "{name}");

        // Nothing enters or leaves its window for four weeks: the passes until then leave it
        // alone (its answer cannot have changed), and so does a second pass at one instant.
        for day in [3, 10, 29] {
            let s = scheduler::run_pass(&pool, &programs, at(day * DAY), &PassOptions::default())
                .await
                .expect("pass");
            assert_eq!(s.goals_evaluated, 0, "{name}: day {day}: {s:?}");
        }
        // The first two readings leave the window: evaluated again (128, 135, 132: still met).
        let s = scheduler::run_pass(&pool, &programs, at(29 * DAY + 2), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(
            (s.goals_evaluated, s.goals_changed),
            (1, 0),
            "{name}: {s:?}"
        );
        let s = scheduler::run_pass(&pool, &programs, at(29 * DAY + 2), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(s.goals_evaluated, 0, "{name}: {s:?}");

        // Later the readings have all left the window: not met, and that is history too.
        let s = scheduler::run_pass(&pool, &programs, at(40 * DAY), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(
            (s.goals_evaluated, s.goals_changed),
            (1, 1),
            "{name}: {s:?}"
        );
        let lapsed = format!("bp_controlled|0|0|{}", at(40 * DAY).as_second());
        assert!(history(&pool).await.contains(&lapsed), "{name}");
        assert_eq!(history(&pool).await.len(), 3, "{name}");
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM goals WHERE next_eval_at IS NOT NULL"
            )
            .await,
            0,
            "{name}: with no reading in or ahead of its window only a reading can change it"
        );

        // A reading makes it met again (and due when that reading leaves the window); a
        // withdrawn enrolment's goals stop being evaluated, even when one was due.
        let r = post(&pool, &[(40 * DAY + 10, 131.0)], at(40 * DAY + 20)).await;
        assert_eq!((r.goals.evaluated, r.goals.changed), (1, 1), "{name}");
        assert_eq!(
            scalar(&pool, "SELECT next_eval_at FROM goals").await,
            at(68 * DAY + 10).as_second(),
            "{name}: due when the reading leaves the window"
        );
        store::withdraw(&pool, &programs, id, "moved away", at(41 * DAY))
            .await
            .expect("withdraw");
        let s = scheduler::run_pass(&pool, &programs, at(70 * DAY), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(s.goals_evaluated, 0, "{name}: {s:?}");
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM goals WHERE next_eval_at IS NOT NULL"
            )
            .await,
            0,
            "{name}"
        );
        // The history is append-only.
        assert!(
            pool.exec("DELETE FROM goal_status", vec![]).await.is_err(),
            "{name}: goal history must not be deletable"
        );
        pool.close().await;
    }
}

const TWO_GOALS: &str = r#"pathway: two_goals
version: 1
title: { zh: 两个目标（测试）, en: Two goals (test) }
owner_role: case_manager
roles: [case_manager]
entry_points:
  - { id: clinic, state: monitor }
states:
  - id: monitor
    phase: follow_up
    transitions:
      - after: 200d
        to: closed
  - id: closed
    phase: closed
    terminal: true
goals:
  - id: bp_controlled
    title: { zh: 血压达标, en: Blood pressure on target }
    observation: bp_systolic
    reading: "value < 140"
    at_least: 0.75
    over: 10d
  - id: measured_often
    title: { zh: 规律测量, en: Measured on 3 days a week }
    observation: bp_systolic
    days_logged: 3
    over: 7d
"#;

/// The status history, with whose goal each row is.
async fn history_of(pool: &Pool) -> Vec<String> {
    rows(
        pool,
        "SELECT CAST(enrolment_id AS TEXT), goal_id, CAST(met AS TEXT), CAST(readings AS TEXT), CAST(at AS TEXT) FROM goal_status ORDER BY enrolment_id, goal_id, at",
        5,
    )
    .await
}

/// A goal is evaluated only when a reading arrives or one enters or leaves its window. The same
/// readings and passes through a store that evaluates every goal at every pass (each made due
/// before the pass) record the same history of status, row for row: nothing is missed by not
/// looking in between, and nothing is seen late.
#[tokio::test]
async fn a_goal_evaluated_when_it_can_change_records_what_evaluating_it_every_pass_records() {
    use carepath_engine::seed::SplitMix;
    for (lazy, every) in support::backends().into_iter().zip(support::backends()) {
        let name = lazy.name();
        let dir = support::pathway_dir(&[("two_goals.yaml", TWO_GOALS)]);
        let (a, programs) = open_store(&lazy.url, dir.path(), at(0)).await;
        let (b, _) = open_store(&every.url, dir.path(), at(0)).await;
        let patients = ["p1", "p2", "p3"];
        for pool in [&a, &b] {
            for p in patients {
                add_patient(pool, p, at(0)).await;
                store::enrol(pool, &programs, p, "two_goals", None, "clinic", at(0))
                    .await
                    .expect("enrol");
            }
        }
        let mut rng = SplitMix::new(7);
        let (mut now, mut lazy_evaluated, mut every_evaluated, mut passes) = (0i64, 0, 0, 0);
        let mut reading = 0;
        while now < 80 * DAY {
            now += 3_600 + rng.below(12 * 3_600) as i64;
            if rng.below(4) != 0 {
                // A pass; the reference store first makes every goal of an active enrolment due.
                b.exec(
                    "UPDATE goals SET next_eval_at = $1 WHERE enrolment_id IN (SELECT id FROM enrolments WHERE status = 'active')",
                    vec![at(now).as_second().into()],
                )
                .await
                .expect("make every goal due");
                let sa = scheduler::run_pass(&a, &programs, at(now), &PassOptions::default())
                    .await
                    .expect("pass");
                let sb = scheduler::run_pass(&b, &programs, at(now), &PassOptions::default())
                    .await
                    .expect("pass");
                lazy_evaluated += sa.goals_evaluated;
                every_evaluated += sb.goals_evaluated;
                passes += 1;
            } else {
                // A patient's device sends one to three readings, some taken hours before they
                // arrive and some a minute ahead of the server's clock (the third patient has no
                // device).
                let patient = patients[rng.below(2) as usize];
                let readings: Vec<Reading> = (0..1 + rng.below(3))
                    .map(|_| {
                        reading += 1;
                        let taken = now - rng.below(36 * 3_600) as i64 + 60;
                        Reading {
                            patient_id: patient.into(),
                            kind: "bp_systolic".into(),
                            value: 120.0 + rng.below(40) as f64,
                            unit: None,
                            at: at(taken),
                            reading_id: format!("r{reading}"),
                            source: "device".into(),
                        }
                    })
                    .collect();
                let visible: HashSet<String> = patients.iter().map(|p| p.to_string()).collect();
                for pool in [&a, &b] {
                    store::ingest_readings(pool, &readings, &visible, at(now))
                        .await
                        .expect("ingest");
                }
            }
        }
        let (ha, hb) = (history_of(&a).await, history_of(&b).await);
        assert!(
            ha.len() > 10,
            "{name}: the run changes goals' status often: {ha:?}"
        );
        assert_eq!(ha, hb, "{name}: the same history either way");
        assert!(
            lazy_evaluated < every_evaluated,
            "{name}: {lazy_evaluated} evaluations by passes against {every_evaluated} in {passes} passes"
        );
        a.close().await;
        b.close().await;
    }
}

/// A days-logged goal counts days in the patient's time zone: three readings on three Shanghai
/// days fall on two UTC days, so moving the patient to UTC changes the answer at once, with no
/// reading arriving and nothing entering or leaving the window.
#[tokio::test]
async fn a_new_time_zone_evaluates_a_days_logged_goal_again() {
    use carepath_engine::store::patients::{self, PatientUpsert};
    use carepath_engine::store::queries::Caller;
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("two_goals.yaml", TWO_GOALS)]);
        let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
        add_patient(&pool, "p1", at(0)).await;
        store::enrol(&pool, &programs, "p1", "two_goals", None, "clinic", at(0))
            .await
            .expect("enrol");
        // 2026-03-03 15:00Z, 17:00Z and 2026-03-04 17:00Z: the 3rd, 4th and 5th in Shanghai.
        let readings: Vec<Reading> = [38, 40, 64]
            .iter()
            .map(|h| Reading {
                patient_id: "p1".into(),
                kind: "bp_systolic".into(),
                value: 150.0,
                unit: None,
                at: at(h * 3_600),
                reading_id: format!("r{h}"),
                source: "device".into(),
            })
            .collect();
        let visible: HashSet<String> = ["p1".to_string()].into();
        store::ingest_readings(&pool, &readings, &visible, at(65 * 3_600))
            .await
            .expect("ingest");
        let met = |pool: Pool| async move {
            scalar(
                &pool,
                "SELECT met FROM goals WHERE goal_id = 'measured_often'",
            )
            .await
        };
        assert_eq!(met(pool.clone()).await, 1, "{name}: three Shanghai days");

        let caller = Caller {
            staff_id: "his".into(),
            institution_id: "lead".into(),
            roles: vec!["case_manager".into()],
        };
        let p = PatientUpsert {
            id: "p1".into(),
            tz: Some("UTC".into()),
            ..Default::default()
        };
        let mut tx = pool.begin().await.expect("begin");
        patients::upsert(&mut tx, &caller, None, &p, "t", at(66 * 3_600))
            .await
            .expect("upsert");
        tx.commit().await.expect("commit");
        assert_eq!(met(pool.clone()).await, 0, "{name}: two UTC days");
        assert!(
            history_of(&pool).await.iter().any(|h| h.ends_with(&format!(
                "|measured_often|0|3|{}",
                at(66 * 3_600).as_second()
            ))),
            "{name}: the change is history: {:?}",
            history_of(&pool).await
        );
        pool.close().await;
    }
}
