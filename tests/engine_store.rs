//! Store conformance: the same properties, checked in-process against every backend (a fresh
//! SQLite file, and a fresh PostgreSQL database when `DATABASE_URL` is set).

use std::collections::BTreeMap;

use carepath_engine::scheduler::{self, PassOptions, PassSummary};
use carepath_engine::store::{self, Pool, StoreError};
use carepath_engine::{Programs, Status};
use jiff::Timestamp;

use crate::support::{
    self, Backend, HEART_CHECK, Kind, WOUND_CARE, add_patient, count, open_store, rows, scalar,
    snapshot, ts,
};

/// Monday 09:00 in Shanghai.
const T0: &str = "2026-03-02T01:00:00Z";
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(ts(T0).as_second() + offset).expect("a valid instant")
}

async fn pass(pool: &Pool, programs: &Programs, now: Timestamp) -> PassSummary {
    let s = scheduler::run_pass(pool, programs, now, &PassOptions::default())
        .await
        .expect("pass");
    assert_eq!(s.errors, 0, "{s:?}");
    s
}

/// `[state, state_seq, status, next_wake_at, row_version, version]` of one enrolment.
async fn enrolment(pool: &Pool, id: i64) -> Vec<String> {
    let r = rows(
        pool,
        &format!(
            "SELECT state, CAST(state_seq AS TEXT), status, CAST(next_wake_at AS TEXT), CAST(row_version AS TEXT), CAST(version AS TEXT) FROM enrolments WHERE id = {id}"
        ),
        6,
    )
    .await;
    assert_eq!(r.len(), 1, "enrolment {id}");
    r[0].split('|').map(str::to_string).collect()
}

async fn event(pool: &Pool, enrolment: i64, name: &str, at: Timestamp, now: Timestamp) -> bool {
    let mut tx = pool.begin().await.expect("begin");
    let added = store::add_event(
        &mut tx,
        enrolment,
        name,
        at,
        None,
        Some(format!("test:{enrolment}:{name}:{}", at.as_second())),
        now,
    )
    .await
    .expect("add_event");
    tx.commit().await.expect("commit");
    added
}

/// A fresh store with the test pathways and `patients` patients `p1`, `p2`, ….
async fn fresh(b: &Backend, patients: usize) -> (Pool, Programs, tempfile::TempDir) {
    let dir = support::test_pathways();
    let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
    for i in 1..=patients {
        add_patient(&pool, &format!("p{i}"), at(0)).await;
    }
    (pool, programs, dir)
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    for b in support::backends() {
        let pool = Pool::connect(&b.url).await.expect("connect");
        let first = store::migrate(&pool).await.expect("first migrate");
        assert!(
            !first.is_empty(),
            "{}: a fresh database got no migrations",
            b.name()
        );
        let recorded: Vec<i64> = pool
            .fetch(
                "SELECT version FROM _carepath_migrations ORDER BY version",
                vec![],
            )
            .await
            .expect("versions")
            .iter()
            .map(|r| r.i64(0))
            .collect();
        assert_eq!(recorded, first, "{}", b.name());
        carepath_engine::seed::alliance(&pool)
            .await
            .expect("alliance");
        let second = store::migrate(&pool).await.expect("second migrate");
        assert!(
            second.is_empty(),
            "{}: the second migrate applied {second:?}",
            b.name()
        );
        assert_eq!(
            count(&pool, "_carepath_migrations").await,
            first.len() as i64,
            "{}",
            b.name()
        );
        assert_eq!(
            count(&pool, "institutions").await,
            3,
            "{}: data lost by a second migrate",
            b.name()
        );
        pool.close().await;
    }
}

#[tokio::test]
async fn published_versions_are_immutable() {
    for b in support::backends() {
        let name = b.name();
        let pool = Pool::connect(&b.url).await.expect("connect");
        store::migrate(&pool).await.expect("migrate");
        let dir = support::test_pathways();
        let programs = Programs::load_dir(dir.path()).expect("load");
        assert_eq!(
            store::publish(&pool, &programs, at(0))
                .await
                .expect("publish"),
            2,
            "{name}"
        );
        assert_eq!(
            store::publish(&pool, &programs, at(0))
                .await
                .expect("republish"),
            0,
            "{name}: republishing the same content must be a no-op"
        );

        // The same version with other content, next to a brand-new pathway: refused, and the
        // new pathway is not published either (one transaction).
        let changed = WOUND_CARE.replace("Post-operative wound follow-up", "Changed title");
        let other = HEART_CHECK.replace("pathway: heart_check", "pathway: heart_check_two");
        let dir2 = support::pathway_dir(&[
            ("wound_care.yaml", &changed),
            ("heart_check_two.yaml", &other),
        ]);
        let err = store::publish(
            &pool,
            &Programs::load_dir(dir2.path()).expect("load"),
            at(HOUR),
        )
        .await
        .expect_err("changed content under a published version");
        assert!(
            matches!(err, StoreError::Conflict(_)),
            "{name}: expected Conflict, got {err:?}"
        );
        assert_eq!(
            count(&pool, "pathway_versions").await,
            2,
            "{name}: a refused publish left rows behind"
        );
        let source = rows(
            &pool,
            "SELECT source FROM pathway_versions WHERE pathway_id = 'wound_care' AND version = 1",
            1,
        )
        .await;
        assert_eq!(
            source,
            vec![WOUND_CARE.to_string()],
            "{name}: the published source changed"
        );

        // A new version of the changed pathway is fine.
        let v2 = changed.replace("version: 1", "version: 2");
        let dir3 = support::pathway_dir(&[("wound_care.yaml", &v2)]);
        assert_eq!(
            store::publish(
                &pool,
                &Programs::load_dir(dir3.path()).expect("load"),
                at(HOUR)
            )
            .await
            .expect("publish v2"),
            1,
            "{name}"
        );
        let loaded = store::load_programs(&pool).await.expect("load programs");
        assert!(
            loaded.get("wound_care", 1).is_some() && loaded.get("wound_care", 2).is_some(),
            "{name}"
        );
        pool.close().await;
    }
}

#[tokio::test]
async fn enrol_writes_the_expected_rows() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 1).await;
        let (id, written) = store::enrol(
            &pool,
            &programs,
            "p1",
            "wound_care",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol");
        assert_eq!(
            written.by_kind,
            BTreeMap::from([("follow_up".to_string(), 1), ("task".to_string(), 1)]),
            "{name}"
        );

        // Day 7 at the same time (Shanghai has no DST).
        assert_eq!(
            enrolment(&pool, id).await,
            [
                "at_home",
                "1",
                "active",
                &(at(0).as_second() + 7 * DAY).to_string(),
                "1",
                "1"
            ],
            "{name}"
        );
        let task = rows(
            &pool,
            &format!("SELECT dedupe_key, task_ref, role, status, CAST(due_at AS TEXT), CAST(state_seq AS TEXT), institution_id FROM tasks WHERE enrolment_id = {id}"),
            7,
        )
        .await;
        assert_eq!(
            task,
            vec![format!(
                "e{id}:1:1|day1_call|case_manager|open|{}|1|lead",
                at(DAY).as_second()
            )],
            "{name}"
        );
        // 09:00 local on the third calendar day.
        let send_at = ts("2026-03-05T01:00:00Z").as_second();
        let fu = rows(&pool, &format!("SELECT dedupe_key, template, status, CAST(send_at AS TEXT) FROM follow_ups WHERE enrolment_id = {id}"), 4).await;
        assert_eq!(
            fu,
            vec![format!("e{id}:1:0|wound_check|scheduled|{send_at}")],
            "{name}"
        );
        let outbox = rows(
            &pool,
            "SELECT o.dedupe_key, f.dedupe_key, o.channel, o.status, CAST(o.next_attempt_at AS TEXT), o.patient_id FROM outbox o LEFT JOIN follow_ups f ON f.id = o.follow_up_id",
            6,
        )
        .await;
        assert_eq!(
            outbox,
            vec![format!("e{id}:1:0|e{id}:1:0|wechat|pending|{send_at}|p1")],
            "{name}"
        );
        let record = rows(
            &pool,
            &format!("SELECT dedupe_key, kind FROM record WHERE enrolment_id = {id}"),
            2,
        )
        .await;
        assert_eq!(
            record,
            vec![
                format!("e{id}:1:0:step|step"),
                format!("e{id}:enrolled|enrolled"),
            ],
            "{name}"
        );

        // Refused enrolments write nothing at all.
        let before = snapshot(&pool).await;
        let err = store::enrol(
            &pool,
            &programs,
            "p1",
            "wound_care",
            None,
            "no_such_entry",
            at(0),
        )
        .await
        .expect_err("unknown entry point");
        assert!(matches!(err, StoreError::Invalid(_)), "{name}: {err:?}");
        let err = store::enrol(
            &pool,
            &programs,
            "nobody",
            "wound_care",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect_err("unknown patient");
        assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err:?}");
        let err = store::enrol(
            &pool,
            &programs,
            "p1",
            "no_such_pathway",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect_err("unknown pathway");
        assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err:?}");
        support::assert_same(
            "before",
            &before,
            "after refused enrolments",
            &snapshot(&pool).await,
        );
        pool.close().await;
    }
}

#[tokio::test]
async fn an_event_makes_the_enrolment_due_and_a_pass_moves_it() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 1).await;
        let (id, _) = store::enrol(
            &pool,
            &programs,
            "p1",
            "wound_care",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol");
        assert_eq!(
            pass(&pool, &programs, at(HOUR)).await.stepped,
            0,
            "{name}: nothing is due before the event"
        );

        assert!(
            event(&pool, id, "wound_problem_reported", at(HOUR), at(HOUR)).await,
            "{name}"
        );
        assert_eq!(
            enrolment(&pool, id).await[3],
            at(HOUR).as_second().to_string(),
            "{name}: the event must make the enrolment due at once"
        );
        // Redelivering the same event (same source key) is a no-op.
        let mut tx = pool.begin().await.expect("begin");
        let again = store::add_event(
            &mut tx,
            id,
            "wound_problem_reported",
            at(HOUR),
            None,
            Some(format!(
                "test:{id}:wound_problem_reported:{}",
                at(HOUR).as_second()
            )),
            at(HOUR),
        )
        .await
        .expect("add_event");
        tx.commit().await.expect("commit");
        assert!(!again, "{name}: a redelivered event was stored twice");
        assert_eq!(count(&pool, "events").await, 1, "{name}");

        let s = pass(&pool, &programs, at(2 * HOUR)).await;
        assert_eq!(
            (s.stepped, s.transitions, s.actions, s.cancelled_tasks),
            (1, 1, 1, 1),
            "{name}: {s:?}"
        );
        assert_eq!(
            enrolment(&pool, id).await,
            [
                "nurse_call",
                "2",
                "active",
                &(at(HOUR).as_second() + 3 * DAY).to_string(),
                "2",
                "1"
            ],
            "{name}"
        );
        let tasks = rows(
            &pool,
            &format!("SELECT task_ref, status FROM tasks WHERE enrolment_id = {id}"),
            2,
        )
        .await;
        assert_eq!(
            tasks,
            ["day1_call|cancelled", "wound_call|open"],
            "{name}: leaving a state cancels its open tasks"
        );
        assert_eq!(
            rows(&pool, "SELECT status FROM follow_ups", 1).await,
            ["cancelled"],
            "{name}"
        );
        assert_eq!(
            rows(&pool, "SELECT status FROM outbox", 1).await,
            ["cancelled"],
            "{name}: a left state's message must not be sent"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM record WHERE dedupe_key = 'e{id}:1:t'")
            )
            .await,
            1,
            "{name}"
        );

        let s = pass(&pool, &programs, at(2 * HOUR)).await;
        assert_eq!((s.stepped, s.actions), (0, 0), "{name}: {s:?}");
        pool.close().await;
    }
}

#[tokio::test]
async fn withdraw_cancels_open_work_and_nothing_follows() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 1).await;
        let (id, _) = store::enrol(
            &pool,
            &programs,
            "p1",
            "heart_check",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol");
        event(&pool, id, "worsened", at(HOUR), at(HOUR)).await;
        let s = pass(&pool, &programs, at(2 * HOUR)).await;
        assert_eq!(s.transitions, 1, "{name}: {s:?}");
        assert_eq!(enrolment(&pool, id).await[0], "refer_up", "{name}");
        // Open work before: the kept care-plan task, a pending urgent message, armed alarms.
        assert_eq!(
            rows(&pool, "SELECT task_ref, status FROM tasks", 2).await,
            ["care_plan|open"],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
            )
            .await,
            1,
            "{name}"
        );
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM alarm_rules WHERE active = 1").await,
            1,
            "{name}"
        );

        store::withdraw(&pool, &programs, id, "moved away", at(3 * HOUR))
            .await
            .expect("withdraw");
        let e = enrolment(&pool, id).await;
        assert_eq!((e[2].as_str(), e[3].as_str()), ("withdrawn", "∅"), "{name}");
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM tasks WHERE status IN ('open', 'claimed')"
            )
            .await,
            0,
            "{name}: withdrawal left open tasks: {:?}",
            rows(
                &pool,
                "SELECT task_ref, status, CAST(keep AS TEXT) FROM tasks",
                3
            )
            .await
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
            )
            .await,
            0,
            "{name}: withdrawal left pending messages"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM follow_ups WHERE status = 'scheduled'"
            )
            .await,
            0,
            "{name}"
        );
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM alarm_rules WHERE active = 1").await,
            0,
            "{name}: withdrawal left alarms armed"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!(
                    "SELECT COUNT(*) FROM record WHERE enrolment_id = {id} AND kind = 'withdrawn'"
                )
            )
            .await,
            1,
            "{name}"
        );

        let after = snapshot(&pool).await;
        event(&pool, id, "referral_accepted", at(4 * HOUR), at(4 * HOUR)).await;
        for later in [at(4 * HOUR), at(6 * DAY), at(60 * DAY)] {
            let s = pass(&pool, &programs, later).await;
            assert_eq!(
                (s.stepped, s.actions),
                (0, 0),
                "{name}: a withdrawn enrolment was stepped: {s:?}"
            );
        }
        support::assert_same(
            "after withdrawal",
            &after,
            "after later passes",
            &snapshot(&pool).await,
        );
        let err = store::withdraw(&pool, &programs, id, "again", at(5 * HOUR))
            .await
            .expect_err("withdrawing twice");
        assert!(matches!(err, StoreError::Conflict(_)), "{name}: {err:?}");
        pool.close().await;
    }
}

#[tokio::test]
async fn a_completed_task_becomes_an_event_the_next_pass_consumes() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 1).await;
        let (id, _) = store::enrol(
            &pool,
            &programs,
            "p1",
            "wound_care",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol");
        event(&pool, id, "wound_problem_reported", at(HOUR), at(HOUR)).await;
        pass(&pool, &programs, at(2 * HOUR)).await;
        let task = scalar(&pool, "SELECT id FROM tasks WHERE task_ref = 'wound_call'").await;
        let cancelled = scalar(&pool, "SELECT id FROM tasks WHERE task_ref = 'day1_call'").await;

        store::complete_task(&pool, task, "healed", "nurse-1", at(3 * HOUR))
            .await
            .expect("complete");
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT status, outcome, assignee FROM tasks WHERE id = {task}"),
                3
            )
            .await,
            ["done|healed|nurse-1"],
            "{name}"
        );
        assert_eq!(
            rows(&pool, "SELECT name, source_key FROM events ORDER BY seq", 2).await,
            [
                format!("task_done:wound_call|task:{task}:done"),
                format!(
                    "wound_problem_reported|test:{id}:wound_problem_reported:{}",
                    at(HOUR).as_second()
                )
            ],
            "{name}"
        );
        assert_eq!(
            enrolment(&pool, id).await[3],
            at(3 * HOUR).as_second().to_string(),
            "{name}: the completion must make the enrolment due"
        );
        for t in [task, cancelled] {
            let err = store::complete_task(&pool, t, "again", "nurse-1", at(3 * HOUR))
                .await
                .expect_err("completing a closed task");
            assert!(matches!(err, StoreError::Conflict(_)), "{name}: {err:?}");
        }
        assert_eq!(count(&pool, "events").await, 2, "{name}");

        let s = pass(&pool, &programs, at(3 * HOUR)).await;
        assert_eq!((s.stepped, s.transitions), (1, 1), "{name}: {s:?}");
        let e = enrolment(&pool, id).await;
        assert_eq!(
            (e[0].as_str(), e[2].as_str(), e[3].as_str()),
            ("closed", Status::Completed.as_str(), "∅"),
            "{name}"
        );
        let s = pass(&pool, &programs, at(3 * HOUR)).await;
        assert_eq!(s.stepped, 0, "{name}: {s:?}");
        pool.close().await;
    }
}

/// On PostgreSQL every dedupe key and event source key compares as bytes (`COLLATE "C"`), the
/// locale's order being of no use to a key that is only ever looked up.
#[tokio::test]
async fn dedupe_keys_compare_as_bytes_on_postgres() {
    let Some(b) = support::backend(Kind::Postgres) else {
        return;
    };
    let (pool, _programs, _dir) = fresh(&b, 0).await;
    let keys = rows(
        &pool,
        "SELECT table_name || '.' || column_name || ' ' || COALESCE(collation_name, 'default') \
         FROM information_schema.columns WHERE table_schema = current_schema() \
         AND column_name IN ('dedupe_key', 'source_key') ORDER BY 1",
        1,
    )
    .await;
    assert!(keys.len() >= 13, "{keys:?}");
    for k in &keys {
        assert!(k.ends_with(" C"), "{k}");
    }
    pool.close().await;
}

#[tokio::test]
async fn the_record_is_append_only() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 1).await;
        store::enrol(
            &pool,
            &programs,
            "p1",
            "wound_care",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol");
        let before = rows(
            &pool,
            "SELECT CAST(id AS TEXT), dedupe_key, kind, detail FROM record",
            4,
        )
        .await;
        assert!(before.len() >= 2, "{name}");
        let mut attempts = vec![
            "UPDATE record SET kind = 'tampered' WHERE id = (SELECT MIN(id) FROM record)",
            "UPDATE record SET detail = '{}'",
            "DELETE FROM record WHERE id = (SELECT MAX(id) FROM record)",
            "DELETE FROM record",
        ];
        if b.kind == Kind::Postgres {
            attempts.push("TRUNCATE record");
        }
        for sql in attempts {
            let r = pool.exec(sql, vec![]).await;
            assert!(r.is_err(), "{name}: `{sql}` was accepted ({r:?})");
            // Inside a transaction too.
            let mut tx = pool.begin().await.expect("begin");
            let r = tx.exec(sql, vec![]).await;
            assert!(
                r.is_err(),
                "{name}: `{sql}` was accepted in a transaction ({r:?})"
            );
            drop(tx);
        }
        assert_eq!(
            rows(
                &pool,
                "SELECT CAST(id AS TEXT), dedupe_key, kind, detail FROM record",
                4
            )
            .await,
            before,
            "{name}: the record changed"
        );
        pool.close().await;
    }
}

#[tokio::test]
async fn migrate_enrolments_refuses_an_invalid_state_map_without_moving_anything() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 3).await;
        let v2 = WOUND_CARE
            .replace("version: 1", "version: 2")
            .replace("nurse_call", "nurse_phone");
        let dir2 = support::pathway_dir(&[("wound_care.yaml", &v2)]);
        store::publish(
            &pool,
            &Programs::load_dir(dir2.path()).expect("load v2"),
            at(0),
        )
        .await
        .expect("publish v2");
        let programs_all = store::load_programs(&pool).await.expect("load");
        let (p1, _) = store::enrol(
            &pool,
            &programs,
            "p1",
            "wound_care",
            Some(1),
            "discharge",
            at(0),
        )
        .await
        .expect("enrol p1");
        let (p2, _) = store::enrol(
            &pool,
            &programs,
            "p2",
            "wound_care",
            Some(1),
            "discharge",
            at(0),
        )
        .await
        .expect("enrol p2");
        let (p3, _) = store::enrol(
            &pool,
            &programs,
            "p3",
            "heart_check",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol p3");
        event(&pool, p2, "wound_problem_reported", at(HOUR), at(HOUR)).await;
        pass(&pool, &programs_all, at(2 * HOUR)).await;
        assert_eq!(enrolment(&pool, p2).await[0], "nurse_call", "{name}");

        let before = snapshot(&pool).await;
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        for (why, map) in [
            ("a state of v1 that v2 lacks, unmapped", m(&[])),
            (
                "a target that is not a state of v2",
                m(&[("nurse_call", "nowhere")]),
            ),
            (
                "a source that is not a state of v1",
                m(&[("nurse_call", "nurse_phone"), ("bogus", "closed")]),
            ),
        ] {
            let err = store::migrate_enrolments(
                &pool,
                &programs_all,
                "wound_care",
                1,
                2,
                &map,
                at(2 * HOUR),
            )
            .await
            .expect_err(why);
            assert!(
                matches!(err, StoreError::Invalid(_)),
                "{name}: {why}: {err:?}"
            );
            support::assert_same(
                "before",
                &before,
                &format!("after the refused map ({why})"),
                &snapshot(&pool).await,
            );
        }
        let err = store::migrate_enrolments(
            &pool,
            &programs_all,
            "wound_care",
            1,
            3,
            &m(&[]),
            at(2 * HOUR),
        )
        .await
        .expect_err("no v3");
        assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err:?}");
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM record WHERE kind = 'migrated'").await,
            0,
            "{name}"
        );

        let moved = store::migrate_enrolments(
            &pool,
            &programs_all,
            "wound_care",
            1,
            2,
            &m(&[("nurse_call", "nurse_phone")]),
            at(2 * HOUR),
        )
        .await
        .expect("valid map");
        assert_eq!(moved, 2, "{name}");
        assert_eq!(
            &enrolment(&pool, p1).await[..],
            [
                "at_home",
                "1",
                "active",
                &at(2 * HOUR).as_second().to_string(),
                "2",
                "2"
            ],
            "{name}"
        );
        assert_eq!(
            &enrolment(&pool, p2).await[..],
            [
                "nurse_phone",
                "2",
                "active",
                &at(2 * HOUR).as_second().to_string(),
                "3",
                "2"
            ],
            "{name}"
        );
        assert_eq!(
            enrolment(&pool, p3).await[5],
            "1",
            "{name}: another pathway's enrolment moved"
        );
        assert_eq!(
            scalar(&pool, "SELECT COUNT(*) FROM record WHERE kind = 'migrated'").await,
            2,
            "{name}"
        );
        let s = pass(&pool, &programs_all, at(2 * HOUR)).await;
        assert_eq!(s.stepped, 2, "{name}: {s:?}");
        pool.close().await;
    }
}

/// The fault that creates duplicates: a commit succeeded but the caller saw an error and writes the
/// same step again. The row-version fence refuses the stale retry; and even a retry that got past
/// the fence (fresh row version, same outcome) adds no row, because every row has a dedupe key.
#[tokio::test]
async fn a_retried_commit_writes_nothing_twice() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 1).await;
        let (id, _) = store::enrol(
            &pool,
            &programs,
            "p1",
            "heart_check",
            None,
            "discharge",
            at(0),
        )
        .await
        .expect("enrol");
        event(&pool, id, "worsened", at(HOUR), at(HOUR)).await;
        event(&pool, id, "referral_accepted", at(HOUR + 60), at(HOUR + 60)).await;
        let now = at(2 * HOUR);

        // One step: assess → refer_up → closed, with a referral, a message and notes.
        let mut tx = pool.begin().await.expect("begin");
        let d = store::load_enrolment(&mut tx, id).await.expect("load");
        let mut facts = store::load_facts(&mut tx, std::slice::from_ref(&d), now)
            .await
            .expect("facts");
        let (f, pending) = facts.remove(&id).expect("facts of the enrolment");
        let prog = programs.get("heart_check", 1).expect("program");
        let outcome = carepath_engine::step(prog, &d.enrolment, &f, &pending, now).expect("step");
        assert_eq!(outcome.transitions.len(), 2, "{name}: {outcome:?}");
        assert_eq!(outcome.enrolment.status, Status::Completed, "{name}");
        let mut buf = store::RowBuffer::default();
        let mut w = store::apply_outcome(&mut tx, &mut buf, &d, &outcome, now)
            .await
            .expect("apply")
            .expect("not stale");
        w.add(&buf.flush(&mut tx).await.expect("flush"));
        assert_eq!(w.transitions, 2, "{name}");
        assert!(w.actions() >= 3, "{name}: {w:?}");
        tx.commit().await.expect("commit");
        let committed = snapshot(&pool).await;
        assert_eq!(committed["referrals"].len(), 1, "{name}");

        // The stale retry is fenced.
        let mut tx = pool.begin().await.expect("begin");
        let mut buf = store::RowBuffer::default();
        assert!(
            store::apply_outcome(&mut tx, &mut buf, &d, &outcome, now)
                .await
                .expect("apply")
                .is_none(),
            "{name}: a stale write got past the row-version check"
        );
        let w = buf.flush(&mut tx).await.expect("flush");
        assert_eq!(w.actions(), 0, "{name}: {w:?}");
        tx.commit().await.expect("commit");
        support::assert_same(
            "committed",
            &committed,
            "after a stale retry",
            &snapshot(&pool).await,
        );

        // A retry with a fresh row version (the fence bypassed) still adds nothing.
        let mut tx = pool.begin().await.expect("begin");
        let fresh_row = store::load_enrolment(&mut tx, id).await.expect("load");
        let retry = store::DueEnrolment {
            row_version: fresh_row.row_version,
            ..d.clone()
        };
        let mut buf = store::RowBuffer::default();
        let mut w = store::apply_outcome(&mut tx, &mut buf, &retry, &outcome, now)
            .await
            .expect("apply")
            .expect("fresh row version");
        w.add(&buf.flush(&mut tx).await.expect("flush"));
        tx.commit().await.expect("commit");
        let mut after = snapshot(&pool).await;
        let mut expected = committed.clone();
        // Only the enrolment's row version may move.
        for s in [&mut after, &mut expected] {
            s.remove("enrolments");
        }
        support::assert_same("committed", &expected, "after a bypassed retry", &after);
        assert_eq!(
            w.actions(),
            0,
            "{name}: nothing was inserted, yet the retry reports new actions: {w:?}"
        );
        pool.close().await;
    }
}

#[tokio::test]
async fn enrolling_many_at_once_writes_what_enrolling_one_by_one_writes() {
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let (Some(one), Some(many)) = (support::backend(kind), support::backend(kind)) else {
            continue;
        };
        let name = one.name();
        let (pool_one, programs, _d1) = fresh(&one, 3).await;
        let (pool_many, programs_many, _d2) = fresh(&many, 3).await;
        let requests: Vec<store::NewEnrolment> = [
            ("p1", "wound_care", "discharge", 0),
            ("p2", "wound_care", "discharge", HOUR),
            ("p3", "heart_check", "clinic", 2 * HOUR),
            ("p1", "heart_check", "clinic", 3 * HOUR),
        ]
        .into_iter()
        .map(|(p, pathway, entry, t)| store::NewEnrolment {
            patient_id: p.into(),
            pathway_id: pathway.into(),
            version: None,
            entry: entry.into(),
            at: at(t),
            catch_up_to: None,
        })
        .collect();
        let mut expected = store::Written::default();
        for r in &requests {
            let (_, w) = store::enrol(
                &pool_one,
                &programs,
                &r.patient_id,
                &r.pathway_id,
                None,
                &r.entry,
                r.at,
            )
            .await
            .expect("enrol one");
            expected.add(&w);
        }
        let mut tx = pool_many.begin().await.expect("begin");
        let (ids, written) = store::enrol_many(&mut tx, &programs_many, &requests)
            .await
            .expect("enrol many");
        tx.commit().await.expect("commit");
        assert_eq!(ids.len(), requests.len(), "{name}");
        assert_eq!(written, expected, "{name}");
        assert_eq!(
            snapshot(&pool_many).await,
            snapshot(&pool_one).await,
            "{name}"
        );

        // The same patient twice in one pathway in one call is refused, and nothing is written.
        let before = snapshot(&pool_many).await;
        let twice = vec![requests[0].clone(), requests[0].clone()];
        let mut tx = pool_many.begin().await.expect("begin");
        let err = store::enrol_many(&mut tx, &programs_many, &twice)
            .await
            .expect_err("refused");
        drop(tx);
        assert!(err.to_string().contains("twice"), "{name}: {err}");
        assert_eq!(snapshot(&pool_many).await, before, "{name}");
    }
}

#[tokio::test]
async fn events_added_together_wake_each_enrolment_at_its_earliest_and_a_known_key_adds_nothing() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 2).await;
        let mut ids = Vec::new();
        for p in ["p1", "p2"] {
            let (id, _) = store::enrol(&pool, &programs, p, "wound_care", None, "discharge", at(0))
                .await
                .expect("enrol");
            ids.push(id);
        }
        let ev = |enrolment: i64, name: &str, t: i64, key: &str| store::NewEvent {
            enrolment,
            name: name.into(),
            at: at(t),
            payload: None,
            source_key: Some(key.into()),
            created_at: at(2 * DAY),
        };
        let events = vec![
            ev(ids[0], "wound_problem_reported", DAY + 5 * HOUR, "k1"),
            ev(ids[0], "readmitted", DAY, "k2"),
            // Received before it happened (a planned event): the enrolment wakes on receipt.
            ev(ids[1], "wound_problem_reported", 3 * DAY, "k3"),
        ];
        let mut tx = pool.begin().await.expect("begin");
        assert_eq!(
            store::add_events(&mut tx, &events).await.expect("add"),
            3,
            "{name}"
        );
        tx.commit().await.expect("commit");
        assert_eq!(
            enrolment(&pool, ids[0]).await[3],
            at(DAY).as_second().to_string(),
            "{name}"
        );
        assert_eq!(
            enrolment(&pool, ids[1]).await[3],
            at(2 * DAY).as_second().to_string(),
            "{name}"
        );
        let mut tx = pool.begin().await.expect("begin");
        assert_eq!(
            store::add_events(&mut tx, &events).await.expect("again"),
            0,
            "{name}"
        );
        tx.commit().await.expect("commit");
        assert_eq!(count(&pool, "events").await, 3, "{name}");
    }
}

#[tokio::test]
async fn a_transaction_dropped_without_commit_leaves_nothing_and_the_pool_goes_on() {
    for b in support::backends() {
        let name = b.name();
        let (pool, _programs, _dir) = fresh(&b, 1).await;
        let before = snapshot(&pool).await;
        {
            let mut tx = pool.begin().await.expect("begin");
            tx.exec(
                "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, NULL, $3, 'note', '{}')",
                vec!["dropped".into(), "p1".into(), 1i64.into()],
            )
            .await
            .expect("insert");
            let seen = tx
                .fetch(
                    "SELECT COUNT(*) FROM record WHERE dedupe_key = $1",
                    vec!["dropped".into()],
                )
                .await
                .expect("read inside");
            assert_eq!(
                seen[0].i64(0),
                1,
                "{name}: a transaction reads its own writes"
            );
        }
        let mut tx = pool.begin().await.expect("begin after drop");
        tx.exec("INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, NULL, $3, 'note', '{}')", vec!["kept".into(), "p1".into(), 2i64.into()])
            .await
            .expect("insert");
        tx.rollback().await.expect("rollback");
        assert_eq!(snapshot(&pool).await, before, "{name}");
        // A statement that fails leaves the transaction usable for the caller to roll back.
        let mut tx = pool.begin().await.expect("begin");
        assert!(
            tx.exec("INSERT INTO no_such_table VALUES ($1)", vec![1i64.into()])
                .await
                .is_err(),
            "{name}"
        );
        tx.rollback().await.expect("rollback after an error");
        assert_eq!(snapshot(&pool).await, before, "{name}");
    }
}

/// Committed pages reach the SQLite database file while the pool is open: the main file alone,
/// copied without its WAL, holds them.
#[tokio::test]
async fn the_checkpointer_moves_committed_pages_into_the_database_file() {
    let b = support::sqlite();
    let (pool, _programs, _dir) = fresh(&b, 1).await;
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..2_000i64 {
        tx.exec(
            "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, NULL, $3, 'note', '{}')",
            vec![format!("cp{i}").into(), "p1".into(), i.into()],
        )
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
    let path = b.path.clone().expect("a SQLite file");
    let copy_dir = support::tempdir();
    let mut found = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let copy = copy_dir.path().join("main-only.db");
        let _ = std::fs::remove_file(copy_dir.path().join("main-only.db-wal"));
        std::fs::copy(&path, &copy).expect("copy the main file");
        let other = Pool::connect(&format!("sqlite:{}", copy.display()))
            .await
            .expect("open the copy");
        found = other
            .fetch(
                "SELECT COUNT(*) FROM record WHERE dedupe_key LIKE 'cp%'",
                vec![],
            )
            .await
            .map(|r| r[0].i64(0))
            .unwrap_or(0);
        other.close().await;
        if found == 2_000 {
            break;
        }
    }
    assert_eq!(found, 2_000, "the WAL was not checkpointed within 10 s");
    pool.close().await;
}

/// A pathway whose texts hold what COPY's text format would have to escape: tabs, newlines,
/// carriage returns, backslashes, `\N` (its NULL), quotes, separators and Chinese.
const AWKWARD_TEXT: &str = r#"pathway: awkward_text
version: 1
title: { zh: "难写的文字", en: "Awkward text" }
owner_role: case_manager
roles: [case_manager, doctor]
variables:
  remark: { type: text, default: "tab\there\nnew line \\ backslash \\N \"double\" 'single' 中文" }
entry_points:
  - { id: start, state: first }
states:
  - id: first
    phase: follow_up
    on_enter:
      - task: { id: odd_title, role: case_manager, title: { zh: "标题\t制表\n换行\\反斜杠\\N", en: "Tab\tnew\nline \\ \\N \"q\" 'q' ,;|" }, due: 24h }
      - note: { zh: "备注\t\\N", en: "Note \"quoted\"\r\nCRLF" }
      - follow_up: { channels: [sms], template: odd_msg, after: 1d }
    transitions:
      - after: 1d
        to: second
  - id: second
    phase: follow_up
    on_enter:
      - task: { id: second_call, role: doctor, title: { zh: "第二\t次", en: "Second \\ call" }, due: 2d }
    transitions:
      - after: 30d
        to: done
  - id: done
    phase: closed
    terminal: true
"#;

/// Every column of every row of `table`, as text (`None` for NULL), in the order of its first
/// column.
async fn table_rows(pool: &Pool, table: &str) -> Vec<Vec<Option<String>>> {
    let columns: Vec<String> = pool
        .fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
            vec![store::Arg::T(table.into())],
        )
        .await
        .expect("columns")
        .iter()
        .map(|r| r.text(0))
        .collect();
    assert!(!columns.is_empty(), "{table} has no columns");
    let select: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST({c} AS TEXT)"))
        .collect();
    pool.fetch(
        &format!("SELECT {} FROM {table} ORDER BY 1", select.join(", ")),
        vec![],
    )
    .await
    .expect("rows")
    .iter()
    .map(|r| (0..columns.len()).map(|i| r.opt_text(i)).collect())
    .collect()
}

/// The tables enrolling writes (and the ones it could), compared column by column.
const ENROLMENT_TABLES: &[&str] = &[
    "institutions",
    "patients",
    "enrolments",
    "goals",
    "tasks",
    "follow_ups",
    "outbox",
    "scale_pushes",
    "risk_predictions",
    "alarm_rules",
    "alarm_episodes",
    "referrals",
    "record_parts",
    "record",
    "events",
];

/// Patients whose texts are awkward for COPY, at an institution whose id is too.
fn awkward_patients(n: usize) -> Vec<store::NewPatient> {
    let ids = [
        "P\t1",
        "P\n2",
        "P\\3",
        "\\N",
        "P'\"5",
        "患者六",
        "P,7|;",
        "P\r\n8",
    ];
    (0..n)
        .map(|i| store::NewPatient {
            id: ids
                .get(i)
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("copy-{i:03}")),
            institution_id: if i % 3 == 0 {
                "诊所\t\"一\"\\N".into()
            } else {
                "lead".into()
            },
            birth_date: (i % 4 != 0)
                .then(|| format!("19{:02}-0{}-1{}", 40 + i % 50, 1 + i % 9, i % 10)),
            sex: ["female", "male"][i % 2].into(),
            tz: "Asia/Shanghai".into(),
            contact_enc: (i % 2 == 0).then(|| format!("sealed\t{i}\\N\n")),
            preferred_channel: (i % 5 != 0).then(|| "sms".into()),
            home_institution: (i % 3 == 1).then(|| "clinic_a".into()),
            lang: [None, Some("zh".into()), Some("en".into())][i % 3].clone(),
        })
        .collect()
}

/// Enrols the same `n` patients the same way in two fresh PostgreSQL databases, by COPY in one and
/// by statements in the other, and requires every row of every table to be equal. By COPY, a
/// table with fewer than 256 rows in a call is one statement too: the cohort is sized so that
/// in each of its two batches some tables go each way.
async fn copy_writes_what_statements_write(
    label: &str,
    dir: &std::path::Path,
    pathways: &[(&str, &str)],
    n: usize,
) {
    let (Some(by_copy), Some(by_statements)) = (
        support::backend(Kind::Postgres),
        support::backend(Kind::Postgres),
    ) else {
        return;
    };
    let patients = awkward_patients(n);
    let mut results = Vec::new();
    for (b, transfer) in [
        (&by_copy, store::Transfer::Copy),
        (&by_statements, store::Transfer::Statements),
    ] {
        let (pool, programs) = open_store(&b.url, dir, at(-60 * DAY)).await;
        let mut tx = pool.begin().await.expect("begin");
        store::insert_institution(
            &mut tx,
            "诊所\t\"一\"\\N",
            "社区\n诊所 \\ 'one'",
            "community_clinic",
            Some("lead"),
        )
        .await
        .expect("institution");
        store::insert_patients_by(&mut tx, &patients, at(-60 * DAY), transfer)
            .await
            .expect("patients");
        tx.commit().await.expect("commit");
        let requests: Vec<store::NewEnrolment> = patients
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                pathways
                    .iter()
                    .map(move |(pathway, entry)| store::NewEnrolment {
                        patient_id: p.id.clone(),
                        pathway_id: pathway.to_string(),
                        version: None,
                        entry: entry.to_string(),
                        at: at(-(i as i64 % 20) * DAY - i as i64 * HOUR),
                        // Most catch up from a past start, through transitions and work born ended.
                        catch_up_to: (i % 4 != 0).then(|| at(0)),
                    })
            })
            .collect();
        // Two batches in two transactions: the second meets record parts the first stored.
        let mut ids = Vec::new();
        let mut written = store::Written::default();
        for part in requests.chunks(requests.len() / 2 + 1) {
            let mut tx = pool.begin().await.expect("begin");
            let (i, w) = store::enrol_many_by(&mut tx, &programs, part, transfer)
                .await
                .unwrap_or_else(|e| panic!("{label}: enrol by {transfer:?}: {e}"));
            tx.commit().await.expect("commit");
            ids.extend(i);
            written.add(&w);
        }
        let mut tables = BTreeMap::new();
        for t in ENROLMENT_TABLES {
            tables.insert(*t, table_rows(&pool, t).await);
        }
        results.push((pool, ids, written, tables));
    }
    let (copied, statements) = (&results[0], &results[1]);
    assert_eq!(copied.1, statements.1, "{label}: the same enrolment ids");
    assert_eq!(copied.2, statements.2, "{label}: the same counts written");
    assert!(copied.2.actions() > 0, "{label}: the enrolments made work");
    for t in ENROLMENT_TABLES {
        let (a, b) = (&copied.3[t], &statements.3[t]);
        assert_eq!(a.len(), b.len(), "{label}: rows of {t}");
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x, y, "{label}: a row of {t}");
        }
    }
    for t in ["patients", "enrolments", "tasks", "record"] {
        assert!(!copied.3[t].is_empty(), "{label}: {t} has rows");
    }
    // Two batches: a table with at least 512 rows had 256 in one of them (it went by COPY), one
    // with fewer than 256 had fewer in both (it went as a statement; a batch's record parts are
    // distinct, so it sends at most as many as are stored).
    let sizes: BTreeMap<&str, usize> = ENROLMENT_TABLES
        .iter()
        .map(|t| (*t, copied.3[t].len()))
        .collect();
    assert!(
        sizes["record"] >= 512 && sizes["enrolments"] >= 512,
        "{label}: {sizes:?}"
    );
    assert!(
        (1..256).contains(&sizes["record_parts"]),
        "{label}: {sizes:?}"
    );
    // Every awkward id came back as it was given, `\N` included (not as NULL).
    let mut stored: Vec<String> = copied.3["patients"]
        .iter()
        .map(|r| r[0].clone().expect("an id"))
        .collect();
    let mut given: Vec<String> = patients.iter().map(|p| p.id.clone()).collect();
    stored.sort();
    given.sort();
    assert_eq!(stored, given, "{label}");
    let nulls = copied.3["patients"]
        .iter()
        .filter(|r| r.iter().any(Option::is_none))
        .count();
    assert!(nulls > 0, "{label}: NULLs were copied as NULLs");

    // A COPY the table refuses (a patient already stored) fails its transaction, which leaves
    // nothing, and the connection goes on.
    let pool = &copied.0;
    let before = table_rows(pool, "patients").await;
    // So does a short one, which goes as a statement.
    for more in [300, 10] {
        let mut tx = pool.begin().await.expect("begin");
        let mut again = awkward_patients(n + more);
        again.drain(..n);
        again.push(patients[3].clone());
        let err = store::insert_patients_by(&mut tx, &again, at(0), store::Transfer::Copy)
            .await
            .expect_err("a stored patient is refused");
        assert!(err.to_string().contains("patients_pkey"), "{label}: {err}");
        drop(tx);
        assert_eq!(table_rows(pool, "patients").await, before, "{label}");
    }
    for (pool, ..) in &results {
        pool.close().await;
    }
}

#[tokio::test]
async fn enrolling_by_copy_writes_what_statements_write_awkward_text_included() {
    let dir = support::pathway_dir(&[
        ("wound_care.yaml", WOUND_CARE),
        ("heart_check.yaml", HEART_CHECK),
        ("awkward_text.yaml", AWKWARD_TEXT),
    ]);
    copy_writes_what_statements_write(
        "test pathways",
        dir.path(),
        &[
            ("wound_care", "discharge"),
            ("heart_check", "discharge"),
            ("awkward_text", "start"),
        ],
        300,
    )
    .await;
    if let Some(real) = support::real_pathways() {
        copy_writes_what_statements_write(
            "real pathways",
            &real,
            &[
                ("hypertension", "community"),
                ("diabetes", "lead_hospital"),
                ("stroke", "admission"),
                ("heart_failure", "discharge"),
                ("pregnancy", "mid"),
                ("breast_cancer_surgery", "clinic"),
            ],
            100,
        )
        .await;
    }
}

/// Past facts are read for a batch of any size. Each query binds one parameter per enrolment or
/// patient; a batch of 70,000 (past PostgreSQL's 65,535 parameters a statement and SQLite's
/// 32,766) is read in parts, and an enrolment's facts are the same whichever part it falls in
/// and whoever shares the batch, its patient's other enrolments in other parts included.
#[tokio::test]
async fn facts_are_read_for_a_batch_past_the_parameter_limit() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = fresh(&b, 2).await;
        let mut ids = Vec::new();
        for (patient, pathway, entry) in [
            ("p1", "heart_check", "discharge"),
            ("p1", "wound_care", "discharge"),
            ("p2", "heart_check", "discharge"),
        ] {
            let (id, _) = store::enrol(&pool, &programs, patient, pathway, None, entry, at(0))
                .await
                .expect("enrol");
            ids.push(id);
        }
        for (id, e) in ids
            .iter()
            .zip(["worsened", "wound_problem_reported", "worsened"])
        {
            assert!(
                event(&pool, *id, e, at(HOUR), at(HOUR)).await,
                "{name}: {e}"
            );
        }
        for (i, patient) in ["p1", "p1", "p2"].iter().enumerate() {
            pool.exec(
                "INSERT INTO observations (patient_id, kind, value, at, reading_id, source, created_at) VALUES ($1, 'sbp', $2, $3, $4, 'test', $3)",
                vec![
                    (*patient).into(),
                    (150.0 + i as f64).into(),
                    at(HOUR - i as i64).as_second().into(),
                    format!("r{i}").into(),
                ],
            )
            .await
            .expect("observation");
            pool.exec(
                "INSERT INTO diagnoses (patient_id, encounter_key, code, principal, recorded_at, source) VALUES ($1, 'visit', $2, 1, $3, 'test')",
                vec![
                    (*patient).into(),
                    format!("I1{i}").into(),
                    at(HOUR).as_second().into(),
                ],
            )
            .await
            .expect("diagnosis");
        }
        let now = at(2 * HOUR);
        let mut tx = pool.begin().await.expect("begin");
        let mut real = Vec::new();
        for id in &ids {
            real.push(store::load_enrolment(&mut tx, *id).await.expect("load"));
        }
        let alone = store::load_facts(&mut tx, &real, now)
            .await
            .expect("facts of a small batch");
        // Enrolments with nothing stored, and the real ones among them: the same patient's two
        // at the start and at the end.
        let mut batch: Vec<store::DueEnrolment> = (0..70_000)
            .map(|i| {
                let mut d = real[0].clone();
                d.enrolment.id = 1_000_000 + i;
                d.patient_id = format!("nobody-{i}");
                d
            })
            .collect();
        batch[0] = real[0].clone();
        batch[10_000] = real[2].clone();
        batch[69_999] = real[1].clone();
        let big = store::load_facts(&mut tx, &batch, now)
            .await
            .unwrap_or_else(|e| panic!("{name}: facts of 70,000 enrolments: {e}"));
        assert_eq!(big.len(), 70_000, "{name}");
        for id in &ids {
            let (f, pending) = &alone[id];
            assert!(!f.events.is_empty() && !pending.is_empty(), "{name}: {f:?}");
            assert!(
                !f.observations.is_empty() && !f.diagnoses.is_empty(),
                "{name}: {f:?}"
            );
            assert_eq!(
                serde_json::to_value(&big[id]).expect("json"),
                serde_json::to_value(&alone[id]).expect("json"),
                "{name}: enrolment {id}"
            );
        }
        drop(tx);
        pool.close().await;
    }
}
