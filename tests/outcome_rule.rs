//! One rule for what leaving a state ends, seen from both sides: what `carepath test` reports and
//! what the store writes for the same pathway must agree. Work created in a state that the same
//! step leaves is stored as cancelled; a test expecting it fails and says why.

use std::process::Output;

use carepath_engine::outcome::{self, Cause};
use carepath_engine::step::Produced;
use carepath_engine::store;

use crate::support::{self, rows};

/// `screen` pushes a scale, schedules a message and opens a task, then leaves at once when
/// `skip_screen` is set: all three are born ended. `wait` keeps them.
const PASS_THROUGH: &str = r#"pathway: pass_through
version: 1
title: { zh: 直接通过（测试）, en: Pass-through (test) }
owner_role: case_manager
roles: [case_manager]
events: [leave_now]
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
      - on: leave_now
        to: wait
      - after: 14d
        to: wait
  - id: wait
    phase: follow_up
    transitions:
      - after: 30d
        to: done
  - id: done
    phase: closed
    terminal: true
"#;

fn test_file(entry: &str) -> String {
    format!(
        r#"tests: pass_through.yaml
cases:
  - name: entered through {entry}
    entry: {entry}
    start: 2026-03-02T08:00:00+08:00
    expect:
      - {{ at: 1h, scale_push: phq9 }}
      - {{ at: 1h, follow_up: {{ template: screen_reminder }} }}
      - {{ at: 1h, task: {{ id: screen_call }} }}
"#
    )
}

fn carepath_test(dir: &std::path::Path, entry: &str) -> Output {
    let file = dir.join(format!("{entry}.test.yaml"));
    std::fs::write(&file, test_file(entry)).expect("write test");
    support::carepath()
        .arg("test")
        .arg(&file)
        .output()
        .expect("run carepath test")
}

#[tokio::test]
async fn carepath_test_and_the_store_agree_on_work_born_into_a_left_state() {
    let dir = support::pathway_dir(&[("pass_through.yaml", PASS_THROUGH)]);
    // `carepath test`: the waiting entry has its work; the skipping one has none to show.
    // (One case leaves transitions uncovered, which alone would fail the run: read the cases.)
    let kept = carepath_test(dir.path(), "start");
    let out = String::from_utf8_lossy(&kept.stdout);
    assert!(out.contains("1 case(s): 0 failed"), "{out}");
    let skipped = carepath_test(dir.path(), "skip");
    let out = String::from_utf8_lossy(&skipped.stdout);
    assert!(out.contains("1 case(s): 1 failed"), "{out}");
    assert!(out.contains("made already cancelled"), "{out}");

    // The store, for the same pathway and entries.
    for b in support::backends() {
        let now = support::ts("2026-03-02T00:00:00Z");
        let (pool, programs) = support::open_store(&b.url, dir.path(), now).await;
        for (patient, entry) in [("p-start", "start"), ("p-skip", "skip")] {
            support::add_patient(&pool, patient, now).await;
            store::enrol(&pool, &programs, patient, "pass_through", None, entry, now)
                .await
                .expect("enrol");
        }
        let statuses = |table: &'static str, patient: &'static str| {
            let pool = pool.clone();
            async move {
                rows(
                    &pool,
                    &format!("SELECT status FROM {table} WHERE patient_id = '{patient}'"),
                    1,
                )
                .await
            }
        };
        for (table, live) in [
            ("tasks", "open"),
            ("follow_ups", "scheduled"),
            ("scale_pushes", "pending"),
        ] {
            assert_eq!(
                statuses(table, "p-start").await,
                vec![live.to_string()],
                "{} {table}",
                b.name()
            );
            assert_eq!(
                statuses(table, "p-skip").await,
                vec!["cancelled".to_string()],
                "{} {table}",
                b.name()
            );
        }
        // Nothing of the skipped entry waits to be sent.
        assert_eq!(
            support::scalar(
                &pool,
                "SELECT COUNT(*) FROM outbox o JOIN follow_ups f ON f.dedupe_key = o.dedupe_key WHERE f.patient_id = 'p-skip'"
            )
            .await,
            0,
            "{}",
            b.name()
        );
        // Leaving later ends what the rule says it ends, and nothing else.
        let enrolment = support::scalar(
            &pool,
            "SELECT id FROM enrolments WHERE patient_id = 'p-start'",
        )
        .await;
        let later = support::ts("2026-03-02T06:00:00Z");
        let mut tx = pool.begin().await.expect("begin");
        store::add_events(
            &mut tx,
            &[store::NewEvent {
                enrolment,
                name: "leave_now".into(),
                at: later,
                payload: None,
                source_key: None,
                created_at: later,
            }],
        )
        .await
        .expect("event");
        tx.commit().await.expect("commit");
        carepath_engine::scheduler::advance(&pool, &programs, enrolment, later)
            .await
            .expect("advance");
        for (table, produced) in [
            ("tasks", "task"),
            ("follow_ups", "follow_up"),
            ("scale_pushes", "scale_push"),
        ] {
            let want = match ends_on_leaving(produced) {
                true => "cancelled",
                false if table == "scale_pushes" => "pending",
                false => "open",
            };
            assert_eq!(
                statuses(table, "p-start").await,
                vec![want.to_string()],
                "{} {table}",
                b.name()
            );
        }
        pool.close().await;
    }
}

/// The rule's word on a kind of action as this pathway makes it (the task is not kept).
fn ends_on_leaving(kind: &str) -> bool {
    let t = jiff::Timestamp::UNIX_EPOCH;
    let text = || carepath_dsl::Text {
        zh: "甲".into(),
        en: "a".into(),
    };
    let produced = match kind {
        "task" => Produced::Task {
            task_ref: None,
            role: "case_manager".into(),
            title: text(),
            due_at: t,
            priority: carepath_dsl::Priority::Normal,
            sla: None,
            keep: false,
            covers_critical: None,
        },
        "follow_up" => Produced::FollowUp {
            follow_up_ref: None,
            channels: vec![carepath_dsl::Channel::Sms],
            template: "screen_reminder".into(),
            send_at: t,
            urgent: false,
        },
        _ => Produced::ScalePush {
            scale: "phq9".into(),
            due_at: t,
            expires_at: None,
            reminders: vec![],
            chain: vec![],
            push_ref: None,
        },
    };
    outcome::ends(outcome::work_of(&produced), Cause::StateLeft)
}

/// `screen` sends a questionnaire, schedules a message and opens a kept task; `settled` cancels
/// all three by their action ids; a withdrawal on `screen` is routed to `closing`, which keeps
/// open tasks.
const CANCEL_AND_WITHDRAW: &str = r#"pathway: cancel_withdraw
version: 1
title: { zh: 取消与退出（测试）, en: Cancel and withdraw (test) }
owner_role: case_manager
roles: [case_manager]
events: [settled]
entry_points:
  - { id: start, state: screen }
states:
  - id: screen
    phase: follow_up
    on_enter:
      - scale: { id: mood, scale: phq9, due: 2d }
      - follow_up: { id: remind, channels: [sms], template: screen_reminder, after: 1d, at: "09:00" }
      - task: { id: screen_call, role: case_manager, title: { zh: 电话, en: Call }, due: 3d, keep: true }
    transitions:
      - on: settled
        to: settled
      - on: withdrawn
        to: closing
  - id: settled
    phase: follow_up
    on_enter:
      - cancel: mood
      - cancel: remind
      - cancel: screen_call
    transitions:
      - after: 30d
        to: done
  - id: closing
    phase: closed
    terminal: true
    keep_open_tasks: true
    on_enter:
      - note: { zh: 已退出, en: Withdrawn }
  - id: done
    phase: closed
    terminal: true
"#;

const CANCEL_AND_WITHDRAW_TESTS: &str = r#"tests: cancel_withdraw.yaml
cases:
  - name: settling cancels the screening work
    entry: start
    start: 2026-03-02T08:00:00+08:00
    given:
      - { at: 2h, event: settled }
    expect:
      - { at: 3h, state: settled, status: active }
  - name: a withdrawal while screening is routed to closing
    entry: start
    start: 2026-03-02T08:00:00+08:00
    given:
      - { at: 2h, withdraw: moved away }
    expect:
      - { at: 3h, state: closing, status: withdrawn }
"#;

#[tokio::test]
async fn carepath_test_and_the_store_agree_on_cancels_and_withdrawals() {
    let dir = support::pathway_dir(&[("cancel_withdraw.yaml", CANCEL_AND_WITHDRAW)]);
    let file = dir.path().join("cancel_withdraw.test.yaml");
    std::fs::write(&file, CANCEL_AND_WITHDRAW_TESTS).expect("write test");
    let run = support::carepath()
        .args(["test", "--no-coverage"])
        .arg(&file)
        .output()
        .expect("run carepath test");
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && out.contains("2 case(s): 0 failed"),
        "{out}"
    );

    let kept_task = outcome::Work::Task { keep: true };
    for b in support::backends() {
        let now = support::ts("2026-03-02T00:00:00Z");
        let later = support::ts("2026-03-02T02:00:00Z");
        let (pool, programs) = support::open_store(&b.url, dir.path(), now).await;
        let mut enrolments = Vec::new();
        for patient in ["p-settle", "p-withdraw"] {
            support::add_patient(&pool, patient, now).await;
            let (e, _) = store::enrol(
                &pool,
                &programs,
                patient,
                "cancel_withdraw",
                None,
                "start",
                now,
            )
            .await
            .expect("enrol");
            enrolments.push(e);
        }
        let mut tx = pool.begin().await.expect("begin");
        store::add_events(
            &mut tx,
            &[store::NewEvent {
                enrolment: enrolments[0],
                name: "settled".into(),
                at: later,
                payload: None,
                source_key: None,
                created_at: later,
            }],
        )
        .await
        .expect("event");
        tx.commit().await.expect("commit");
        carepath_engine::scheduler::advance(&pool, &programs, enrolments[0], later)
            .await
            .expect("advance");
        store::withdraw(&pool, &programs, enrolments[1], "moved away", later)
            .await
            .expect("withdraw");
        let routed = Cause::Withdrawn {
            keep_open_tasks: true,
        };
        for (patient, cause) in [("p-settle", Cause::Cancelled), ("p-withdraw", routed)] {
            for (table, work, live) in [
                ("tasks", kept_task, "open"),
                ("follow_ups", outcome::Work::FollowUp, "scheduled"),
                ("scale_pushes", outcome::Work::ScalePush, "pending"),
            ] {
                let want = if outcome::ends(work, cause) {
                    "cancelled"
                } else {
                    live
                };
                assert_eq!(
                    rows(
                        &pool,
                        &format!("SELECT status FROM {table} WHERE patient_id = '{patient}'"),
                        1
                    )
                    .await,
                    vec![want.to_string()],
                    "{} {patient} {table}",
                    b.name()
                );
            }
        }
        // Cancelled, the kept task went; withdrawn into a state keeping open tasks, it stayed.
        assert!(outcome::ends(kept_task, Cause::Cancelled));
        assert!(!outcome::ends(kept_task, routed));
        assert_eq!(
            rows(&pool, "SELECT state, status FROM enrolments ORDER BY id", 2).await,
            ["closing|withdrawn", "settled|active"],
            "{}",
            b.name()
        );
        pool.close().await;
    }
}
