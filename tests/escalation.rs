//! The escalation sweep on every backend: an open task escalates to its SLA's supervisor role once,
//! `escalate_after` past its due time (moved by a snooze), never when done first; one sweep takes
//! every task whose instant has come, however many; and a database from before escalation
//! instants were stored gets the ones its writer would have written.

use carepath_engine::Programs;
use carepath_engine::store::queries::{self, Caller, TaskAction};
use carepath_engine::store::{self, Pool};
use jiff::Timestamp;

use crate::support::{self, add_patient, open_store, rows, scalar};

const ESCALATING: &str = r#"pathway: escalating
version: 1
title: { zh: 升级（测试）, en: Escalation (test) }
owner_role: case_manager
roles: [case_manager, doctor, head_nurse]
entry_points:
  - { id: start, state: watch }
states:
  - id: watch
    phase: follow_up
    on_enter:
      - task: { id: review, role: doctor, title: { zh: 复核, en: Review }, due: 1d, sla: { escalate_after: 4h, escalate_to: head_nurse } }
      - task: { id: call, role: case_manager, title: { zh: 电话, en: Call }, due: 1d, sla: { escalate_after: 2d, escalate_to: head_nurse } }
      - task: { id: note, role: case_manager, title: { zh: 记录, en: Note }, due: 1d, sla: { remind_before: 2h } }
    transitions:
      - after: 30d
        to: closed
  - id: closed
    phase: closed
    terminal: true
"#;

const ENROLLED: &str = "2026-11-02T00:00:00Z";
const HOUR: i64 = 3_600;

fn at(hours: i64) -> Timestamp {
    Timestamp::from_second(support::ts(ENROLLED).as_second() + hours * HOUR).expect("instant")
}

async fn enrol(pool: &Pool, programs: &Programs, patient: &str) -> i64 {
    add_patient(pool, patient, at(0)).await;
    store::enrol(pool, programs, patient, "escalating", None, "start", at(0))
        .await
        .expect("enrol")
        .0
}

async fn task(pool: &Pool, enrolment: i64, task_ref: &str) -> i64 {
    scalar(
        pool,
        &format!(
            "SELECT id FROM tasks WHERE enrolment_id = {enrolment} AND task_ref = '{task_ref}'"
        ),
    )
    .await
}

/// `task_ref|role|title_zh` of every escalation task, with the escalated task's ref.
async fn escalations(pool: &Pool) -> Vec<String> {
    rows(
        pool,
        "SELECT o.task_ref, e.role, e.title_zh, CAST(e.due_at AS TEXT) FROM tasks e \
         JOIN tasks o ON e.dedupe_key = 'escalate:task:' || CAST(o.id AS TEXT) \
         WHERE e.task_ref = 'escalation'",
        4,
    )
    .await
}

#[tokio::test]
async fn an_overdue_task_escalates_once_when_its_sla_says() {
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("escalating.yaml", ESCALATING)]);
        let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
        let [late, snoozed, done] = [
            enrol(&pool, &programs, "p-late").await,
            enrol(&pool, &programs, "p-snoozed").await,
            enrol(&pool, &programs, "p-done").await,
        ];
        // Due a day after enrolment; the review escalates 4 hours later, the call 2 days later,
        // the note (an SLA with no one to escalate to) never.
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT task_ref, CAST(escalate_at AS TEXT) FROM tasks WHERE enrolment_id = {late}"),
                2,
            )
            .await,
            [
                format!("call|{}", at(24 + 48).as_second()),
                "note|∅".to_string(),
                format!("review|{}", at(24 + 4).as_second()),
            ],
            "{name}"
        );

        let doctor = Caller {
            staff_id: "lead.doctor".into(),
            institution_id: "lead".into(),
            roles: vec!["doctor".into()],
        };
        let act = |task, action| {
            queries::act_on_task(&pool, &programs, &doctor, task, action, "test", at(20))
        };
        // Snoozed to 48 h: escalates at 52 h. Done at 20 h: never.
        act(
            task(&pool, snoozed, "review").await,
            TaskAction::Snooze {
                until: at(48),
                reason: "patient travelling",
            },
        )
        .await
        .expect("snooze");
        act(
            task(&pool, done, "review").await,
            TaskAction::Complete { outcome: "done" },
        )
        .await
        .expect("complete");

        assert_eq!(
            queries::escalate_overdue(&pool, at(27))
                .await
                .expect("sweep"),
            0,
            "{name}: an hour before the first instant"
        );
        assert_eq!(
            queries::escalate_overdue(&pool, at(28))
                .await
                .expect("sweep"),
            1,
            "{name}"
        );
        let review = task(&pool, late, "review").await;
        assert_eq!(
            escalations(&pool).await,
            [format!(
                "review|head_nurse|超时升级：复核|{}",
                at(28).as_second()
            )],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT escalated_at FROM tasks WHERE id = {review}")
            )
            .await,
            at(28).as_second(),
            "{name}"
        );
        assert_eq!(
            queries::escalate_overdue(&pool, at(29))
                .await
                .expect("sweep"),
            0,
            "{name}: once"
        );
        assert_eq!(
            queries::escalate_overdue(&pool, at(52))
                .await
                .expect("sweep"),
            1,
            "{name}: the snoozed review, 4 h after its new due time"
        );
        // The calls (all three open) at 72 h; the completed review never.
        assert_eq!(
            queries::escalate_overdue(&pool, at(72))
                .await
                .expect("sweep"),
            3,
            "{name}"
        );
        let mut got = escalations(&pool).await;
        got.iter_mut()
            .for_each(|r| *r = r.split('|').take(2).collect::<Vec<_>>().join("|"));
        got.sort();
        assert_eq!(
            got,
            [
                "call|head_nurse",
                "call|head_nurse",
                "call|head_nurse",
                "review|head_nurse",
                "review|head_nurse"
            ],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM tasks WHERE escalated_at IS NOT NULL AND enrolment_id = {done}")
            )
            .await,
            1,
            "{name}: the completed review did not escalate, its call did"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM tasks WHERE escalate_at IS NOT NULL"
            )
            .await,
            0,
            "{name}: every instant that came is dealt with, the completed task's too"
        );
        assert_eq!(
            queries::escalate_overdue(&pool, at(24 * 29))
                .await
                .expect("sweep"),
            0,
            "{name}"
        );
    }
}

#[tokio::test]
async fn one_sweep_escalates_every_task_whose_instant_has_come() {
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("escalating.yaml", ESCALATING)]);
        let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
        let e = enrol(&pool, &programs, "p-many").await;
        // 2,500 more open reviews like the stepped one (more than a sweep's batch), due each a
        // minute later than the one before; 300 of them not yet at their instant.
        pool.exec(
            &format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) \
                 INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, sla, status, due_at, created_at, escalate_at) \
                 SELECT 'copy:' || CAST(n.i AS TEXT), t.enrolment_id, t.patient_id, t.institution_id, t.state_seq, t.task_ref, t.role, t.title_zh, t.title_en, t.priority, t.keep, t.sla, 'open', t.due_at + n.i * 60, t.created_at, t.escalate_at + n.i * 60 \
                 FROM tasks t, n WHERE t.enrolment_id = {e} AND t.task_ref = 'review'"
            ),
            vec![],
        )
        .await
        .expect("copies");
        // The stepped review and copies 1..=2200 are at their instant 28 h + 2,200 min in.
        let now = Timestamp::from_second(at(28).as_second() + 2200 * 60).expect("instant");
        assert_eq!(
            queries::escalate_overdue(&pool, now).await.expect("sweep"),
            2201,
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM tasks WHERE task_ref = 'escalation'"
            )
            .await,
            2201,
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM tasks WHERE task_ref = 'review' AND escalate_at IS NOT NULL AND escalated_at IS NULL"
            )
            .await,
            300,
            "{name}: the copies whose instant has not come wait"
        );
        assert_eq!(
            queries::escalate_overdue(&pool, now).await.expect("sweep"),
            0,
            "{name}"
        );
    }
}

/// The escalation instants migration `0019` computes for existing tasks are those the writer
/// writes: the same database is stepped, stripped back to version 18, and migrated again.
#[tokio::test]
async fn a_database_from_before_escalation_instants_gets_the_writers_instants() {
    for b in support::backends() {
        let name = b.name();
        let dir = support::pathway_dir(&[("escalating.yaml", ESCALATING)]);
        let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
        let [first, second, third] = [
            enrol(&pool, &programs, "p-1").await,
            enrol(&pool, &programs, "p-2").await,
            enrol(&pool, &programs, "p-3").await,
        ];
        // One SLA written out as text (as older rows and the alarm and scale paths hold it)
        // rather than as the hash of a record part.
        let call = task(&pool, second, "call").await;
        pool.exec(
            &format!(
                "UPDATE tasks SET sla = (SELECT p.body FROM record_parts p WHERE p.dedupe_key = tasks.sla) WHERE id = {call}"
            ),
            vec![],
        )
        .await
        .expect("sla as text");
        assert!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM tasks WHERE id = {call} AND sla LIKE '{{%'")
            )
            .await
                == 1,
            "{name}"
        );
        // Escalated and cancelled tasks get none.
        let escalated = task(&pool, third, "review").await;
        pool.exec(
            &format!("UPDATE tasks SET escalated_at = 1 WHERE id = {escalated}"),
            vec![],
        )
        .await
        .expect("escalated");
        let cancelled = task(&pool, first, "call").await;
        pool.exec(
            &format!("UPDATE tasks SET status = 'cancelled' WHERE id = {cancelled}"),
            vec![],
        )
        .await
        .expect("cancelled");
        let instants = "SELECT CAST(id AS TEXT), CAST(escalate_at AS TEXT) FROM tasks";
        let mut want = rows(&pool, instants, 2).await;
        for id in [escalated, cancelled] {
            let line = want
                .iter_mut()
                .find(|l| l.starts_with(&format!("{id}|")))
                .expect("the task");
            *line = format!("{id}|∅");
        }
        want.sort();
        assert_eq!(
            want.iter().filter(|l| !l.ends_with('∅')).count(),
            4,
            "{name}: {want:?}"
        );

        for sql in [
            "DROP INDEX tasks_escalate",
            "ALTER TABLE tasks DROP COLUMN escalate_at",
            "DELETE FROM _carepath_migrations WHERE version = 19",
        ] {
            pool.exec(sql, vec![]).await.expect(sql);
        }
        assert_eq!(
            store::migrate(&pool).await.expect("migrate"),
            [19],
            "{name}"
        );
        let mut got = rows(&pool, instants, 2).await;
        got.sort();
        assert_eq!(got, want, "{name}");
    }
}
