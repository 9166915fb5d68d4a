//! Scale pushes end to end, against every backend: answer → score → band → the pathway reacts at
//! once; critical items raise an urgent task; one answer per push; reminders once each at their
//! offsets; expiry marks the push and tells the pathway.

use std::collections::BTreeMap;

use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::queries::Caller;
use carepath_engine::store::scales::{self, Answered};
use carepath_engine::store::{self, Pool, StoreError};
use carepath_engine::{Programs, scales::Scales};
use jiff::Timestamp;

use crate::support::{self, Backend, add_patient, count, open_store, rows, scalar, ts};

/// Monday 09:00 in Shanghai.
const T0: &str = "2026-03-02T01:00:00Z";
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(ts(T0).as_second() + offset).expect("a valid instant")
}

/// EPDS two weeks after birth: the answer decides the branch at once; no answer in 7 days is a
/// branch of its own.
const EPDS_CHECK: &str = r#"pathway: epds_check
version: 1
title: { zh: 产后抑郁筛查（测试）, en: Postnatal depression screening (test) }
owner_role: case_manager
roles: [case_manager, doctor]
entry_points:
  - { id: start, state: screen }
states:
  - id: screen
    phase: follow_up
    on_enter:
      - scale: { scale: epds, due: 3d, reminders: [2d, 1d], expires: 7d }
    transitions:
      - on: scale_answered:epds
        when: 'item("epds", 10) > 0'
        to: safety
      - on: scale_answered:epds
        when: 'score("epds") >= 13'
        to: high
      - on: scale_answered:epds
        to: low
      - on: scale_expired:epds
        to: missed
  - id: safety
    phase: follow_up
    on_enter:
      - task: { id: safety_call, role: doctor, title: { zh: 安全评估, en: Safety assessment }, due: 1h, priority: urgent }
    transitions:
      - after: 30d
        to: closed
  - id: high
    phase: follow_up
    transitions:
      - after: 30d
        to: closed
  - id: low
    phase: follow_up
    transitions:
      - after: 30d
        to: closed
  - id: missed
    phase: follow_up
    transitions:
      - after: 30d
        to: closed
  - id: closed
    phase: closed
    terminal: true
"#;

/// [`EPDS_CHECK`] whose safety task stands for the EPDS's own critical-item task.
fn epds_covered() -> String {
    let covered = EPDS_CHECK
        .replace("pathway: epds_check", "pathway: epds_covered")
        .replace(
            "due: 1h, priority: urgent }",
            "due: 1h, priority: urgent, covers_critical: epds }",
        );
    assert!(covered.contains("covers_critical"));
    covered
}

/// Raw EPDS answers (box positions) with `q10` as given and every other item at its
/// lowest-scoring box, or at its highest with `high`.
fn epds(high: bool, q10: i64) -> BTreeMap<String, i64> {
    let mut a = BTreeMap::new();
    for n in 1..=9 {
        // Items 1, 2 and 4 score as printed; the others are reversed (scored 3 - box).
        let straight = matches!(n, 1 | 2 | 4);
        let v = match (straight, high) {
            (true, false) | (false, true) => 0,
            (true, true) | (false, false) => 3,
        };
        a.insert(format!("q{n}"), v);
    }
    a.insert("q10".into(), q10);
    a
}

fn caller(inst: &str) -> Caller {
    Caller {
        staff_id: format!("{inst}.cm"),
        institution_id: inst.into(),
        roles: vec!["case_manager".into()],
    }
}

struct World {
    pool: Pool,
    programs: Programs,
    _dir: tempfile::TempDir,
}

/// [`EPDS_CHECK`] with a reminder chain: an SMS with its own template at the due, a call task
/// for the case manager two days later, a WeChat message a day after that.
fn epds_chain() -> String {
    EPDS_CHECK
        .replace("pathway: epds_check", "pathway: epds_chain")
        .replace(
            "reminders: [2d, 1d], expires: 7d }",
            "expires: 7d, reminders: [{ after: 0m, channels: [sms], template: epds_due }, { after: 2d, task: { role: case_manager, title: { zh: 电话提醒, en: Reminder call }, due: 1d } }, { after: 3d, channels: [wechat], template: epds_last_call }] }",
        )
}

async fn world(b: &Backend) -> World {
    let covered = epds_covered();
    let chain = epds_chain();
    let dir = support::pathway_dir(&[
        ("epds_check.yaml", EPDS_CHECK),
        ("epds_covered.yaml", &covered),
        ("epds_chain.yaml", &chain),
    ]);
    let (pool, programs) = open_store(&b.url, dir.path(), at(0)).await;
    World {
        pool,
        programs,
        _dir: dir,
    }
}

impl World {
    /// Enrols a new patient at T0; returns (enrolment, push).
    async fn enrol(&self, patient: &str) -> (i64, i64) {
        self.enrol_in(patient, "epds_check").await
    }

    async fn enrol_in(&self, patient: &str, pathway: &str) -> (i64, i64) {
        add_patient(&self.pool, patient, at(0)).await;
        let (e, _) = store::enrol(
            &self.pool,
            &self.programs,
            patient,
            pathway,
            None,
            "start",
            at(0),
        )
        .await
        .expect("enrol");
        let push = scalar(
            &self.pool,
            &format!("SELECT id FROM scale_pushes WHERE enrolment_id = {e}"),
        )
        .await;
        assert!(push > 0, "the pathway pushed the EPDS");
        (e, push)
    }

    /// Answers as the API does: record, then advance the enrolment.
    async fn answer(
        &self,
        push: i64,
        answers: &BTreeMap<String, i64>,
        now: Timestamp,
    ) -> Result<Answered, StoreError> {
        let a = self.record_answer(push, answers, now).await?;
        scheduler::advance(&self.pool, &self.programs, a.enrolment_id, now).await?;
        Ok(a)
    }

    /// Records an answer without advancing the enrolment.
    async fn record_answer(
        &self,
        push: i64,
        answers: &BTreeMap<String, i64>,
        now: Timestamp,
    ) -> Result<Answered, StoreError> {
        scales::answer_push(
            &self.pool,
            Scales::builtin(),
            &caller("lead"),
            push,
            answers,
            None,
            "test",
            now,
        )
        .await
    }

    async fn state(&self, enrolment: i64) -> String {
        rows(
            &self.pool,
            &format!("SELECT state FROM enrolments WHERE id = {enrolment}"),
            1,
        )
        .await
        .join("")
    }

    async fn push_status(&self, push: i64) -> String {
        rows(
            &self.pool,
            &format!("SELECT status FROM scale_pushes WHERE id = {push}"),
            1,
        )
        .await
        .join("")
    }
}

#[tokio::test]
async fn scale_answer_is_scored_stored_and_acts_at_once() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (e, push) = w.enrol("p-high").await;
        assert_eq!(w.push_status(push).await, "pending", "{name}");
        let a = w
            .answer(push, &epds(true, 3), at(HOUR))
            .await
            .expect("answer");
        assert_eq!((a.score, a.band.as_str()), (27.0, "probable"), "{name}");
        assert!(a.critical.is_empty(), "{name}: {a:?}");
        // Stored: the scored items for guards, the raw answers, score and band.
        let stored = rows(
            &w.pool,
            &format!("SELECT CAST(score AS TEXT), band, answers, raw, CAST(at AS TEXT) FROM scale_answers WHERE push_id = {push}"),
            5,
        )
        .await;
        assert_eq!(stored.len(), 1, "{name}");
        let cols: Vec<&str> = stored[0].split('|').collect();
        assert_eq!(cols[0].parse::<f64>().ok(), Some(27.0), "{name}");
        assert_eq!(cols[1], "probable", "{name}");
        assert_eq!(cols[2], "[3,3,3,3,3,3,3,3,3,0]", "{name}");
        assert!(cols[3].contains("\"q10\":3"), "{name}: {}", cols[3]);
        assert_eq!(cols[4], at(HOUR).as_second().to_string(), "{name}");
        assert_eq!(w.push_status(push).await, "answered", "{name}");
        // The guard on the score moved the enrolment without waiting for a pass.
        assert_eq!(w.state(e).await, "high", "{name}");
        assert_eq!(
            scalar(&w.pool, &format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'scale_answered:epds'")).await,
            1,
            "{name}"
        );
        assert_eq!(
            scalar(
                &w.pool,
                "SELECT COUNT(*) FROM audit_log WHERE action = 'scale_push.answer'"
            )
            .await,
            1,
            "{name}"
        );

        let (e2, push2) = w.enrol("p-low").await;
        let a = w
            .answer(push2, &epds(false, 3), at(HOUR))
            .await
            .expect("answer");
        assert_eq!((a.score, a.band.as_str()), (0.0, "unlikely"), "{name}");
        assert_eq!(w.state(e2).await, "low", "{name}");
    }
}

#[tokio::test]
async fn scale_critical_item_raises_an_urgent_task_at_once() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (e, push) = w.enrol("p-crit").await;
        // Item 10, second box from the bottom: "hardly ever" (scored 1), with a low total.
        let a = w
            .answer(push, &epds(false, 2), at(HOUR))
            .await
            .expect("answer");
        assert_eq!(a.score, 1.0, "{name}");
        assert_eq!(a.critical.len(), 1, "{name}: {a:?}");
        let hit = &a.critical[0];
        assert_eq!(
            (hit.item.as_str(), hit.value, hit.role.as_str()),
            ("q10", 1, "doctor"),
            "{name}"
        );
        let task = hit.task_id.expect("an urgent task");
        let t = rows(
            &w.pool,
            &format!("SELECT role, CAST(priority AS TEXT), status, task_ref, CAST(keep AS TEXT), CAST(due_at - created_at AS TEXT), sla FROM tasks WHERE id = {task}"),
            7,
        )
        .await;
        let cols: Vec<&str> = t[0].split('|').collect();
        assert_eq!(
            &cols[..6],
            ["doctor", "3", "open", "critical_epds_q10", "1", "3600"],
            "{name}"
        );
        assert!(
            cols[6].contains("head_nurse"),
            "{name}: escalation in the SLA {}",
            cols[6]
        );
        // The pathway reacted too, and its transition did not cancel the critical task.
        assert_eq!(w.state(e).await, "safety", "{name}");
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT status FROM tasks WHERE id = {task}"),
                1
            )
            .await,
            vec!["open"],
            "{name}"
        );
        assert_eq!(
            scalar(&w.pool, &format!("SELECT COUNT(*) FROM record WHERE enrolment_id = {e} AND kind = 'scale_critical'")).await,
            1,
            "{name}"
        );
        // No critical rule fires for "never".
        let (_, push2) = w.enrol("p-never").await;
        let a = w
            .answer(push2, &epds(false, 3), at(HOUR))
            .await
            .expect("answer");
        assert!(a.critical.is_empty(), "{name}");
        assert_eq!(
            scalar(
                &w.pool,
                "SELECT COUNT(*) FROM tasks WHERE task_ref = 'critical_epds_q10'"
            )
            .await,
            1,
            "{name}"
        );
    }
}

#[tokio::test]
async fn scale_critical_task_is_covered_by_the_pathways_own() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (e, push) = w.enrol_in("p-cover", "epds_covered").await;
        let a = w
            .answer(push, &epds(false, 2), at(HOUR))
            .await
            .expect("answer");
        let critical = a.critical[0].task_id.expect("the scale raised its task");
        assert_eq!(w.state(e).await, "safety", "{name}");
        // One open urgent task for the one finding: the pathway's.
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT task_ref, role FROM tasks WHERE enrolment_id = {e} AND status = 'open' AND priority = 3"),
                2
            )
            .await,
            vec!["safety_call|doctor"],
            "{name}"
        );
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT status, cancel_reason FROM tasks WHERE id = {critical}"),
                2
            )
            .await,
            vec!["cancelled|covered by the pathway's task `safety_call`"],
            "{name}"
        );
        let covered = rows(
            &w.pool,
            &format!(
                "SELECT detail FROM record WHERE enrolment_id = {e} AND kind = 'critical_covered'"
            ),
            1,
        )
        .await;
        assert_eq!(covered.len(), 1, "{name}: {covered:?}");
        assert!(
            covered[0].contains(&format!("\"task\":{critical}"))
                && covered[0].contains("safety_call"),
            "{name}: {}",
            covered[0]
        );
        // Advancing again changes nothing.
        scheduler::advance(&w.pool, &w.programs, e, at(2 * HOUR))
            .await
            .expect("advance");
        assert_eq!(
            scalar(&w.pool, &format!("SELECT COUNT(*) FROM record WHERE enrolment_id = {e} AND kind = 'critical_covered'")).await,
            1,
            "{name}"
        );

        // A critical task someone already claimed stays theirs.
        let (e2, push2) = w.enrol_in("p-claimed", "epds_covered").await;
        let a = w
            .record_answer(push2, &epds(false, 2), at(HOUR))
            .await
            .expect("answer");
        let critical = a.critical[0].task_id.expect("the scale raised its task");
        w.pool
            .exec(
                &format!("UPDATE tasks SET status = 'claimed' WHERE id = {critical}"),
                vec![],
            )
            .await
            .expect("claim");
        scheduler::advance(&w.pool, &w.programs, e2, at(HOUR))
            .await
            .expect("advance");
        assert_eq!(w.state(e2).await, "safety", "{name}");
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT status FROM tasks WHERE id = {critical}"),
                1
            )
            .await,
            vec!["claimed"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn scale_push_is_answered_once() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (_, push) = w.enrol("p-once").await;
        w.answer(push, &epds(false, 3), at(HOUR))
            .await
            .expect("first answer");
        let second = w.answer(push, &epds(true, 0), at(2 * HOUR)).await;
        assert!(
            matches!(&second, Err(StoreError::Conflict(m)) if m.contains("is answered")),
            "{name}: {second:?}"
        );
        assert_eq!(count(&w.pool, "scale_answers").await, 1, "{name}");

        // Concurrent answers to one push: exactly one wins.
        let (_, push) = w.enrol("p-race").await;
        let answers = epds(false, 3);
        let race = |n: i64| {
            let answers = answers.clone();
            let pool = w.pool.clone();
            async move {
                scales::answer_push(
                    &pool,
                    Scales::builtin(),
                    &caller("lead"),
                    push,
                    &answers,
                    None,
                    &format!("racer-{n}"),
                    at(HOUR),
                )
                .await
            }
        };
        let results = futures_join(vec![race(1), race(2), race(3), race(4)]).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
            .count();
        assert_eq!((won, conflicts), (1, 3), "{name}: {results:?}");
        assert_eq!(
            scalar(
                &w.pool,
                &format!("SELECT COUNT(*) FROM scale_answers WHERE push_id = {push}")
            )
            .await,
            1,
            "{name}"
        );
    }
}

/// Runs the futures concurrently on the test's runtime and returns their results in order.
async fn futures_join<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

#[tokio::test]
async fn scale_answers_that_do_not_fit_are_refused() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (_, push) = w.enrol("p-bad").await;
        let mut missing = epds(false, 3);
        missing.remove("q4");
        let mut unknown = epds(false, 3);
        unknown.insert("q11".into(), 0);
        let mut out_of_range = epds(false, 3);
        out_of_range.insert("q10".into(), 4);
        for (answers, why) in [
            (missing, "missing q4"),
            (unknown, "no item `q11`"),
            (out_of_range, "`q10` was answered 4"),
        ] {
            let r = w.answer(push, &answers, at(HOUR)).await;
            assert!(
                matches!(&r, Err(StoreError::Invalid(m)) if m.contains(why)),
                "{name}: {why}: {r:?}"
            );
        }
        let r = w.answer(987_654, &epds(false, 3), at(HOUR)).await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{name}: {r:?}");
        // Another institution's push does not exist for the caller.
        let r = scales::answer_push(
            &w.pool,
            Scales::builtin(),
            &caller("clinic_a"),
            push,
            &epds(false, 3),
            None,
            "test",
            at(HOUR),
        )
        .await;
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{name}: {r:?}");
        // Refusals change nothing.
        assert_eq!(w.push_status(push).await, "pending", "{name}");
        assert_eq!(count(&w.pool, "scale_answers").await, 0, "{name}");
    }
}

/// (reminder follow-ups, outbox rows, reminder record entries) of one push.
async fn reminder_rows(pool: &Pool, push: i64) -> (i64, i64, i64) {
    let reference = format!("scale_push:{push}");
    (
        scalar(pool, &format!("SELECT COUNT(*) FROM follow_ups WHERE follow_up_ref = '{reference}'")).await,
        scalar(pool, &format!("SELECT COUNT(*) FROM outbox WHERE follow_up_id IN (SELECT id FROM follow_ups WHERE follow_up_ref = '{reference}')")).await,
        scalar(pool, &format!("SELECT COUNT(*) FROM record WHERE kind = 'scale_reminder' AND dedupe_key LIKE 'scale:{push}:%'")).await,
    )
}

#[tokio::test]
async fn scale_reminders_come_once_each_at_their_offsets() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (_, push) = w.enrol("p-remind").await;
        let s = scales::scale_push_sweep(&w.pool, at(DAY - 60))
            .await
            .expect("sweep");
        assert_eq!(s.reminders, 0, "{name}: nothing before the first offset");
        let s = scales::scale_push_sweep(&w.pool, at(DAY))
            .await
            .expect("sweep");
        assert_eq!((s.reminders, s.expired), (1, 0), "{name}");
        assert_eq!(reminder_rows(&w.pool, push).await, (1, 1, 1), "{name}");
        // Twice at the same time creates nothing new; so does an hour later.
        for t in [DAY, DAY + HOUR] {
            let s = scales::scale_push_sweep(&w.pool, at(t))
                .await
                .expect("sweep");
            assert_eq!(s.reminders, 0, "{name}");
        }
        assert_eq!(reminder_rows(&w.pool, push).await, (1, 1, 1), "{name}");
        let s = scales::scale_push_sweep(&w.pool, at(2 * DAY))
            .await
            .expect("sweep");
        assert_eq!(s.reminders, 1, "{name}");
        assert_eq!(reminder_rows(&w.pool, push).await, (2, 2, 2), "{name}");
        let keys = rows(
            &w.pool,
            &format!("SELECT dedupe_key, template, CAST(send_at AS TEXT) FROM follow_ups WHERE follow_up_ref = 'scale_push:{push}'"),
            3,
        )
        .await;
        assert_eq!(
            keys,
            vec![
                format!(
                    "scale:{push}:reminder:1|scale_reminder|{}",
                    at(DAY).as_second()
                ),
                format!(
                    "scale:{push}:reminder:2|scale_reminder|{}",
                    at(2 * DAY).as_second()
                ),
            ],
            "{name}"
        );
        // The patient prefers WeChat (support::add_patient), so the reminder goes there first.
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT channel FROM outbox WHERE dedupe_key = 'scale:{push}:reminder:1'"),
                1
            )
            .await,
            vec!["wechat"],
            "{name}"
        );
        let s = scales::scale_push_sweep(&w.pool, at(3 * DAY))
            .await
            .expect("sweep");
        assert_eq!(s.reminders, 0, "{name}: every reminder was sent");

        // After downtime, only the latest due reminder is sent; the earlier one is recorded as skipped.
        let (_, late) = w.enrol("p-late").await;
        let s = scales::scale_push_sweep(&w.pool, at(2 * DAY + HOUR))
            .await
            .expect("sweep");
        assert_eq!((s.reminders, s.reminders_skipped), (1, 1), "{name}");
        assert_eq!(reminder_rows(&w.pool, late).await, (1, 1, 1), "{name}");

        // An answered push reminds no more, and a reminder not yet sent is withdrawn.
        let (_, answered) = w.enrol("p-answers").await;
        scales::scale_push_sweep(&w.pool, at(DAY))
            .await
            .expect("sweep");
        w.answer(answered, &epds(false, 3), at(DAY + HOUR))
            .await
            .expect("answer");
        assert_eq!(
            rows(
                &w.pool,
                &format!(
                    "SELECT status FROM outbox WHERE dedupe_key = 'scale:{answered}:reminder:1'"
                ),
                1
            )
            .await,
            vec!["cancelled"],
            "{name}"
        );
        scales::scale_push_sweep(&w.pool, at(2 * DAY))
            .await
            .expect("sweep");
        assert_eq!(reminder_rows(&w.pool, answered).await.0, 1, "{name}");

        // A withdrawn enrolment's push is cancelled: no reminder, no expiry.
        let (gone_e, gone) = w.enrol("p-gone").await;
        store::withdraw(&w.pool, &w.programs, gone_e, "moved away", at(HOUR))
            .await
            .expect("withdraw");
        assert_eq!(w.push_status(gone).await, "cancelled", "{name}");
        scales::scale_push_sweep(&w.pool, at(8 * DAY))
            .await
            .expect("sweep");
        assert_eq!(reminder_rows(&w.pool, gone).await, (0, 0, 0), "{name}");
        assert_eq!(w.push_status(gone).await, "cancelled", "{name}");
    }
}

#[tokio::test]
async fn scale_push_expires_and_the_pathway_hears_of_it() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (e, push) = w.enrol("p-expire").await;
        // The pass that opens with the sweep: reminders at their offsets, then expiry at 7 days.
        let opts = PassOptions::default();
        let s = scheduler::run_pass(&w.pool, &w.programs, at(7 * DAY - 1), &opts)
            .await
            .expect("pass");
        assert_eq!(
            (s.scale_reminders, s.scale_expired),
            (1, 0),
            "{name}: {s:?}"
        );
        assert_eq!(w.state(e).await, "screen", "{name}");
        let s = scheduler::run_pass(&w.pool, &w.programs, at(7 * DAY), &opts)
            .await
            .expect("pass");
        assert_eq!(
            (s.scale_reminders, s.scale_expired),
            (0, 1),
            "{name}: {s:?}"
        );
        assert_eq!(w.push_status(push).await, "expired", "{name}");
        // The event is stored, at the expiry, and the same pass let the pathway react.
        assert_eq!(
            rows(&w.pool, &format!("SELECT name, CAST(at AS TEXT) FROM events WHERE enrolment_id = {e} AND name LIKE 'scale_%'"), 2).await,
            vec![format!("scale_expired:epds|{}", at(7 * DAY).as_second())],
            "{name}"
        );
        assert_eq!(w.state(e).await, "missed", "{name}");
        assert_eq!(
            scalar(&w.pool, &format!("SELECT COUNT(*) FROM record WHERE enrolment_id = {e} AND kind = 'scale_expired'")).await,
            1,
            "{name}"
        );
        // Again at the same time: nothing new.
        let s = scheduler::run_pass(&w.pool, &w.programs, at(7 * DAY), &opts)
            .await
            .expect("pass");
        assert_eq!((s.scale_reminders, s.scale_expired), (0, 0), "{name}");
        assert_eq!(
            scalar(
                &w.pool,
                &format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e}")
            )
            .await,
            1,
            "{name}"
        );
        // An expired push cannot be answered.
        let r = w.answer(push, &epds(false, 3), at(7 * DAY + HOUR)).await;
        assert!(
            matches!(&r, Err(StoreError::Conflict(m)) if m.contains("expired")),
            "{name}: {r:?}"
        );

        // Past its expiry but before a sweep ran, a push is refused as expired too.
        let (_, late) = w.enrol("p-unswept").await;
        let r = w.answer(late, &epds(false, 3), at(7 * DAY + HOUR)).await;
        assert!(
            matches!(&r, Err(StoreError::Conflict(m)) if m.contains("expired at")),
            "{name}: {r:?}"
        );
    }
}

/// A reminder chain: each step at its instant over its own channel and template, or as a task;
/// the moment the push is answered, the steps to come are cancelled and the open task with them.
#[tokio::test]
async fn a_reminder_chain_steps_by_channel_and_task_and_stops_at_the_answer() {
    for b in support::backends() {
        let w = world(&b).await;
        let name = b.name();
        let (_, push) = w.enrol_in("p-chain", "epds_chain").await;
        let due = 3 * DAY;
        let sweep = |t: i64| scales::scale_push_sweep(&w.pool, at(t));
        assert_eq!(sweep(due - 60).await.expect("sweep").reminders, 0, "{name}");
        assert_eq!(sweep(due).await.expect("sweep").reminders, 1, "{name}");
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT f.template, f.channels, o.channel FROM follow_ups f JOIN outbox o ON o.follow_up_id = f.id WHERE f.dedupe_key = 'scale:{push}:reminder:1'"),
                3,
            )
            .await,
            vec!["epds_due|[\"sms\"]|sms".to_string()],
            "{name}: the first step is the named SMS"
        );
        assert_eq!(
            sweep(due + 2 * DAY).await.expect("sweep").reminders,
            1,
            "{name}"
        );
        let task = rows(
            &w.pool,
            &format!("SELECT role, status, CAST(due_at - created_at AS TEXT) FROM tasks WHERE dedupe_key = 'scale:{push}:reminder:2'"),
            3,
        )
        .await;
        assert_eq!(
            task,
            vec![format!("case_manager|open|{DAY}")],
            "{name}: the second step is a call task"
        );
        // Answered: the last step never comes, and the open call task is cancelled.
        w.answer(push, &epds(false, 0), at(due + 2 * DAY + HOUR))
            .await
            .expect("answer");
        assert_eq!(
            sweep(due + 4 * DAY).await.expect("sweep").reminders,
            0,
            "{name}"
        );
        let task = rows(
            &w.pool,
            &format!("SELECT status FROM tasks WHERE dedupe_key = 'scale:{push}:reminder:2'"),
            1,
        )
        .await;
        assert_eq!(task, vec!["cancelled".to_string()], "{name}");
        assert_eq!(
            scalar(
                &w.pool,
                &format!(
                    "SELECT COUNT(*) FROM follow_ups WHERE dedupe_key = 'scale:{push}:reminder:3'"
                )
            )
            .await,
            0,
            "{name}: no step after the answer"
        );
    }
}
