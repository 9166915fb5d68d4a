//! Alarm episodes end to end, on every backend: readings posted through the API raise a debounced
//! rule once and its clear condition closes the episode (hysteresis); staff list, acknowledge and
//! resolve episodes through the API, by role and institution, audited; a device gone quiet is
//! noticed by the pass's sweep exactly once, however often or concurrently it runs, and the next
//! reading clears it; the end of an enrolment ends its episodes.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use carepath_admin_api::AppState;
use carepath_engine::Programs;
use carepath_engine::observations::Reading;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::{self, Pool};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, Backend, rows, scalar};

const HOME_ALARMS: &str = r#"pathway: home_alarms
version: 1
title: { zh: 居家报警（测试）, en: Home alarms (test) }
owner_role: case_manager
roles: [case_manager, doctor]
entry_points:
  - { id: home, state: monitoring }
states:
  - id: monitoring
    phase: follow_up
    on_enter:
      - alarm:
          id: bp_high
          when: "bp_systolic >= 140"
          consecutive: 2
          clear: { when: "bp_systolic < 130", consecutive: 2 }
          scope: enrolment
          task:
            id: bp_review
            role: case_manager
            title: { zh: 血压偏高, en: Blood pressure high }
            due: 1d
            sla: { escalate_after: 4h, escalate_to: doctor }
      - alarm:
          id: scale_silent
          no_reading: { kind: weight, for: 3d }
          scope: enrolment
          task: { id: weigh_in_call, role: case_manager, title: { zh: 未称体重, en: No weight }, due: 1d }
    transitions:
      - after: 90d
        to: closed
  - id: closed
    phase: closed
    terminal: true
"#;

const DAY: i64 = 86_400;

fn ago(seconds: i64) -> Timestamp {
    Timestamp::now()
        .checked_sub(SignedDuration::from_secs(seconds))
        .expect("a valid instant")
}

fn plus(t: Timestamp, seconds: i64) -> Timestamp {
    Timestamp::from_second(t.as_second() + seconds).expect("a valid instant")
}

struct World {
    app: Router,
    pool: Pool,
    programs: Programs,
    _dir: tempfile::TempDir,
    n: AtomicU64,
}

/// Staff of every role the tests need, at the lead hospital and at clinic_a: token
/// `tok-<institution>-<role>`.
const ROLES: [&str; 3] = ["case_manager", "doctor", "rehab_therapist"];

async fn world(b: &Backend) -> World {
    let dir = support::pathway_dir(&[("home_alarms.yaml", HOME_ALARMS)]);
    let (pool, programs) = support::open_store(&b.url, dir.path(), ago(30 * DAY)).await;
    let mut tx = pool.begin().await.expect("begin");
    for inst in ["lead", "clinic_a"] {
        for role in ROLES {
            store::insert_staff(
                &mut tx,
                &format!("{inst}.{role}"),
                inst,
                role,
                &[role],
                Some(store::queries::token_hash(&format!("tok-{inst}-{role}"))),
            )
            .await
            .expect("staff");
        }
    }
    tx.commit().await.expect("commit");
    let app = carepath_admin_api::router(AppState::new(pool.clone(), programs.clone()));
    World {
        app,
        pool,
        programs,
        _dir: dir,
        n: AtomicU64::new(0),
    }
}

impl World {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A patient of `inst` enrolled at `at`.
    async fn enrol(&self, patient: &str, inst: &str, at: Timestamp) -> i64 {
        support::add_patient_at(&self.pool, patient, inst, at).await;
        store::enrol(
            &self.pool,
            &self.programs,
            patient,
            "home_alarms",
            None,
            "home",
            at,
        )
        .await
        .expect("enrol")
        .0
    }

    /// Posts one reading of `kind` dated `at` through the API, as the lead's case manager.
    async fn post(&self, patient: &str, kind: &str, value: f64, at: Timestamp) -> Value {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let body = json!([{"patient_id": patient, "kind": kind, "value": value, "at": at.to_string(),
                           "reading_id": format!("r{n}")}]);
        let (status, v) = self
            .call("POST", "/observations", "tok-lead-case_manager", Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["accepted"], json!(1), "{v}");
        v
    }

    async fn episodes(&self, token: &str, query: &str) -> Vec<Value> {
        let (status, v) = self
            .call("GET", &format!("/alarms{query}"), token, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v["alarms"].as_array().cloned().unwrap_or_default()
    }

    async fn count(&self, sql: &str) -> i64 {
        scalar(&self.pool, sql).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_raise_once_clear_below_the_other_line_and_staff_resolve_through_the_api() {
    for b in support::backends() {
        let name = b.name();
        let w = world(&b).await;
        let e = w.enrol("p-bp", "lead", ago(10 * DAY)).await;
        let cm = "tok-lead-case_manager";
        let episodes_of = |status: &'static str| {
            format!(
                "SELECT COUNT(*) FROM alarm_episodes WHERE enrolment_id = {e} AND alarm_id = 'bp_high' AND status = '{status}'"
            )
        };

        // One high reading is not two in a row; the second raises: one episode, one task.
        let v = w.post("p-bp", "bp_systolic", 150.0, ago(600)).await;
        assert_eq!(v["alarm_episodes"], json!([]), "{name}: {v}");
        let v = w.post("p-bp", "bp_systolic", 152.0, ago(590)).await;
        let first = v["alarm_episodes"][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: {v}"));
        assert_eq!(
            v["alarm_tasks"].as_array().map(Vec::len),
            Some(1),
            "{name}: {v}"
        );
        // Hovering between the lines (135) and rising again (150) is the same episode.
        for (i, sys) in [135.0, 150.0, 138.0, 151.0].into_iter().enumerate() {
            let v = w
                .post("p-bp", "bp_systolic", sys, ago(580 - i as i64 * 10))
                .await;
            assert_eq!(v["alarm_episodes"], json!([]), "{name}: {sys}: {v}");
            assert_eq!(v["alarms_cleared"], json!(0), "{name}: {sys}: {v}");
        }
        assert_eq!(
            w.count(&format!(
                "SELECT COUNT(*) FROM alarm_episodes WHERE enrolment_id = {e}"
            ))
            .await,
            1,
            "{name}"
        );
        assert_eq!(
            w.count(&format!(
                "SELECT COUNT(*) FROM tasks WHERE enrolment_id = {e} AND task_ref = 'bp_review'"
            ))
            .await,
            1,
            "{name}: one task for the episode"
        );
        assert_eq!(
            w.count(&format!(
                "SELECT COUNT(*) FROM tasks WHERE enrolment_id = {e} AND task_ref = 'bp_review' AND escalate_at = due_at + 4 * 3600"
            ))
            .await,
            1,
            "{name}: the episode's task escalates 4 h past its due time"
        );
        assert_eq!(
            w.count(&format!(
                "SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'alarm:bp_high'"
            ))
            .await,
            1,
            "{name}"
        );

        // Listed to its role and to the role it escalates to, not to others.
        let listed = w.episodes(cm, "?status=open").await;
        assert_eq!(listed.len(), 1, "{name}: {listed:?}");
        assert_eq!(listed[0]["id"], json!(first));
        assert_eq!(listed[0]["alarm"], json!("bp_high"));
        assert_eq!(
            listed[0]["detail"]["values"]["bp_systolic"],
            json!(152.0),
            "{name}"
        );
        assert_eq!(
            w.episodes("tok-lead-doctor", "").await.len(),
            1,
            "{name}: the escalation role"
        );
        assert!(
            w.episodes("tok-lead-rehab_therapist", "").await.is_empty(),
            "{name}"
        );
        assert!(
            w.episodes("tok-clinic_a-case_manager", "").await.is_empty(),
            "{name}: another institution"
        );
        assert_eq!(
            w.count(
                "SELECT COUNT(*) FROM audit_log WHERE action = 'alarm.list' AND outcome = 'ok'"
            )
            .await,
            4,
            "{name}"
        );

        // Acknowledging: by its roles only, in its institution only, once.
        let ack = format!("/alarms/{first}/acknowledge");
        let (s, _) = w.call("POST", &ack, "tok-lead-rehab_therapist", None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{name}");
        let (s, _) = w
            .call("POST", &ack, "tok-clinic_a-case_manager", None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{name}");
        let (s, v) = w.call("POST", &ack, cm, None).await;
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
        assert_eq!(v["status"], json!("acknowledged"), "{name}: {v}");
        let (s, _) = w.call("POST", &ack, cm, None).await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}");
        assert!(w.episodes(cm, "?status=open").await.is_empty(), "{name}");
        assert_eq!(w.episodes(cm, "?status=active").await.len(), 1, "{name}");
        let (s, _) = w.call("GET", "/alarms?status=everything", cm, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}");

        // One reading below 130 is not two; a reading between the lines breaks the clearing run;
        // two in a row close the episode on its own.
        let v = w.post("p-bp", "bp_systolic", 125.0, ago(500)).await;
        assert_eq!(v["alarms_cleared"], json!(0), "{name}: {v}");
        w.post("p-bp", "bp_systolic", 133.0, ago(490)).await;
        w.post("p-bp", "bp_systolic", 124.0, ago(480)).await;
        let v = w.post("p-bp", "bp_systolic", 122.0, ago(470)).await;
        assert_eq!(v["alarms_cleared"], json!(1), "{name}: {v}");
        assert_eq!(w.count(&episodes_of("cleared")).await, 1, "{name}");
        assert_eq!(w.episodes(cm, "?status=cleared").await.len(), 1, "{name}");
        assert_eq!(
            w.count(&format!("SELECT COUNT(*) FROM tasks WHERE enrolment_id = {e} AND task_ref = 'bp_review' AND status = 'open'")).await,
            1,
            "{name}: clearing leaves the task for staff to finish"
        );

        // A new episode needs two high readings of its own; staff resolve it with a reason.
        w.post("p-bp", "bp_systolic", 155.0, ago(400)).await;
        let v = w.post("p-bp", "bp_systolic", 156.0, ago(390)).await;
        let second = v["alarm_episodes"][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: {v}"));
        let task = v["alarm_tasks"][0].as_i64().expect("a task");
        let resolve = format!("/alarms/{second}/resolve");
        let (s, _) = w.call("POST", &resolve, cm, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: a reason is required");
        let (s, _) = w
            .call("POST", &resolve, cm, Some(json!({"reason": "  "})))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: a blank reason is none");
        let (s, v) = w
            .call(
                "POST",
                &resolve,
                "tok-lead-doctor",
                Some(json!({"reason": "cuff too small; refitted"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{name}: {v}");
        assert_eq!(v["status"], json!("resolved"), "{name}");
        let (s, _) = w
            .call("POST", &resolve, cm, Some(json!({"reason": "again"})))
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{name}");
        let (s, _) = w
            .call("POST", &format!("/alarms/{second}/acknowledge"), cm, None)
            .await;
        assert_eq!(
            s,
            StatusCode::CONFLICT,
            "{name}: a closed episode is not acknowledged"
        );
        let (s, _) = w
            .call("POST", &format!("/alarms/{second}/snooze"), cm, None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{name}");
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT status, cancel_reason FROM tasks WHERE id = {task}"),
                2
            )
            .await,
            ["cancelled|alarm resolved: cuff too small; refitted"],
            "{name}: resolving cancels the unclaimed task"
        );
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT closed_by, close_reason FROM alarm_episodes WHERE id = {second}"),
                2
            )
            .await,
            ["lead.doctor|cuff too small; refitted"],
            "{name}"
        );
        // Still high after it was resolved: the rule stays raised, so no new episode at once.
        for i in 0..3 {
            let v = w
                .post("p-bp", "bp_systolic", 160.0, ago(300 - i * 10))
                .await;
            assert_eq!(v["alarm_episodes"], json!([]), "{name}: {v}");
        }

        // Every step is audited, refusals included, and recorded for the patient.
        let audited = |action: &str, outcome: &str| {
            format!(
                "SELECT COUNT(*) FROM audit_log WHERE action = '{action}' AND outcome = '{outcome}'"
            )
        };
        assert_eq!(
            w.count(&audited("alarm.acknowledge", "ok")).await,
            1,
            "{name}"
        );
        assert_eq!(
            w.count(&audited("alarm.acknowledge", "denied")).await,
            1,
            "{name}"
        );
        assert_eq!(
            w.count(&audited("alarm.acknowledge", "not_found")).await,
            1,
            "{name}"
        );
        assert_eq!(
            w.count(&audited("alarm.acknowledge", "conflict")).await,
            2,
            "{name}"
        );
        assert_eq!(w.count(&audited("alarm.resolve", "ok")).await, 1, "{name}");
        assert_eq!(
            w.count(&audited("alarm.resolve", "conflict")).await,
            1,
            "{name}"
        );
        assert_eq!(
            rows(
                &w.pool,
                // Arming a rule is recorded as kind `alarm` too, under its action's key.
                &format!(
                    "SELECT kind FROM record WHERE enrolment_id = {e} AND kind LIKE 'alarm%' \
                     AND (kind <> 'alarm' OR dedupe_key LIKE 'alarm:%')"
                ),
                1
            )
            .await,
            [
                "alarm",
                "alarm",
                "alarm_acknowledged",
                "alarm_cleared",
                "alarm_resolved"
            ],
            "{name}"
        );
        w.pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_judged_in_reading_order_and_late_readings_are_not_judged() {
    for b in support::backends() {
        let name = b.name();
        let w = world(&b).await;
        let e = w.enrol("p-batch", "lead", ago(10 * DAY)).await;
        let visible: HashSet<String> = ["p-batch".to_string()].into();
        let reading = |id: &str, sys: f64, at: Timestamp| Reading {
            patient_id: "p-batch".into(),
            kind: "bp_systolic".into(),
            value: sys,
            unit: None,
            at,
            reading_id: id.into(),
            source: "device".into(),
        };
        // Sent newest first: judged oldest first, so 150, 151 raise and 120 (older) does not
        // break the run.
        let batch = [
            reading("b3", 151.0, ago(100)),
            reading("b1", 120.0, ago(300)),
            reading("b2", 150.0, ago(200)),
        ];
        let s = store::ingest_readings(&w.pool, &batch, &visible, Timestamp::now())
            .await
            .expect("ingest");
        assert_eq!(s.alarms.episodes.len(), 1, "{name}: {s:?}");
        // Resent, nothing is judged twice.
        let s = store::ingest_readings(&w.pool, &batch, &visible, Timestamp::now())
            .await
            .expect("ingest");
        assert_eq!((s.duplicates, s.alarms.cleared), (3, 0), "{name}");
        // Two low readings dated before the latest judged one arrive late: stored, not judged.
        let late = [
            reading("l1", 110.0, ago(250)),
            reading("l2", 111.0, ago(240)),
        ];
        let s = store::ingest_readings(&w.pool, &late, &visible, Timestamp::now())
            .await
            .expect("ingest");
        assert_eq!((s.accepted, s.alarms.cleared), (2, 0), "{name}: {s:?}");
        assert_eq!(
            w.count(&format!(
                "SELECT COUNT(*) FROM alarm_episodes WHERE enrolment_id = {e} AND closed_at IS NULL"
            ))
            .await,
            1,
            "{name}"
        );
        w.pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_scale_is_noticed_by_the_pass_once_and_the_next_reading_clears_it() {
    for b in support::backends() {
        let name = b.name();
        let w = world(&b).await;
        let t0 = ago(20 * DAY);
        let e = w.enrol("p-quiet", "lead", t0).await;
        let pass = |at: Timestamp| {
            let (pool, programs) = (w.pool.clone(), w.programs.clone());
            async move {
                scheduler::run_pass(&pool, &programs, at, &PassOptions::default())
                    .await
                    .expect("pass")
            }
        };
        let episodes = format!(
            "SELECT COUNT(*) FROM alarm_episodes WHERE enrolment_id = {e} AND alarm_id = 'scale_silent'"
        );
        let tasks = format!(
            "SELECT COUNT(*) FROM tasks WHERE enrolment_id = {e} AND task_ref = 'weigh_in_call'"
        );

        // Two days of silence are not three.
        assert_eq!(pass(plus(t0, 2 * DAY)).await.silence_alarms, 0, "{name}");
        // Three days are, though no reading arrived: of two sweeps at once, one opens the episode.
        let due = plus(t0, 3 * DAY + 3_600);
        let (a, b2) = tokio::join!(
            store::alarms::silence_sweep(&w.pool, due),
            store::alarms::silence_sweep(&w.pool, due)
        );
        let opened = a.expect("sweep").episodes.len() + b2.expect("sweep").episodes.len();
        assert_eq!(opened, 1, "{name}");
        assert_eq!(
            (w.count(&episodes).await, w.count(&tasks).await),
            (1, 1),
            "{name}"
        );
        assert_eq!(
            w.count(&format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'alarm:scale_silent'")).await,
            1,
            "{name}"
        );
        // The pass at that instant, and later ones, open nothing more.
        assert_eq!(pass(due).await.silence_alarms, 0, "{name}");
        assert_eq!(pass(plus(t0, 5 * DAY)).await.silence_alarms, 0, "{name}");
        // Even a rule put back as it stood before it was raised (a lost update) cannot open the
        // same episode again: its key is stored, and one episode of the alarm is open.
        let rule = w
            .count(&format!(
                "SELECT id FROM alarm_rules WHERE enrolment_id = {e} AND alarm_id = 'scale_silent'"
            ))
            .await;
        w.pool
            .exec(
                &format!("UPDATE alarm_rules SET state = NULL, firing = 0, due_at = {} WHERE id = {rule}", plus(t0, 3 * DAY).as_second()),
                vec![],
            )
            .await
            .expect("reset the rule");
        let s = store::alarms::silence_sweep(&w.pool, plus(t0, 6 * DAY))
            .await
            .expect("sweep");
        assert!(s.episodes.is_empty(), "{name}: {s:?}");
        assert_eq!(
            (w.count(&episodes).await, w.count(&tasks).await),
            (1, 1),
            "{name}"
        );
        assert_eq!(
            w.count(&format!("SELECT COUNT(*) FROM alarm_rules WHERE id = {rule} AND firing = 1 AND due_at IS NULL")).await,
            1,
            "{name}: the rule is raised again, with nothing due"
        );

        // A weight reading clears it; three more days of silence from that reading raise a second
        // episode.
        let weighed = ago(3_600);
        let v = w.post("p-quiet", "weight", 71.5, weighed).await;
        assert_eq!(v["alarms_cleared"], json!(1), "{name}: {v}");
        assert_eq!(
            rows(
                &w.pool,
                &format!("SELECT status FROM alarm_episodes WHERE enrolment_id = {e} ORDER BY id"),
                1
            )
            .await,
            ["cleared"],
            "{name}"
        );
        assert_eq!(
            pass(plus(weighed, 3 * DAY - 60)).await.silence_alarms,
            0,
            "{name}"
        );
        assert_eq!(
            pass(plus(weighed, 3 * DAY)).await.silence_alarms,
            1,
            "{name}"
        );
        assert_eq!(w.count(&episodes).await, 2, "{name}");

        // Withdrawing ends the open episode.
        store::withdraw(
            &w.pool,
            &w.programs,
            e,
            "moved away",
            plus(weighed, 4 * DAY),
        )
        .await
        .expect("withdraw");
        assert_eq!(
            rows(&w.pool, &format!("SELECT status, close_reason FROM alarm_episodes WHERE enrolment_id = {e} ORDER BY id"), 2).await,
            ["cleared|cleared", "ended|withdrawn: moved away"],
            "{name}"
        );
        assert_eq!(
            pass(plus(weighed, 30 * DAY)).await.silence_alarms,
            0,
            "{name}"
        );
        w.pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_eight_concurrent_acknowledgements_exactly_one_wins() {
    for b in support::backends() {
        let name = b.name();
        let w = world(&b).await;
        w.enrol("p-race", "lead", ago(10 * DAY)).await;
        w.post("p-race", "bp_systolic", 150.0, ago(200)).await;
        let v = w.post("p-race", "bp_systolic", 150.0, ago(100)).await;
        let episode = v["alarm_episodes"][0]
            .as_i64()
            .unwrap_or_else(|| panic!("{name}: {v}"));
        let uri = format!("/alarms/{episode}/acknowledge");
        let calls: Vec<_> = (0..8)
            .map(|_| w.call("POST", &uri, "tok-lead-case_manager", None))
            .collect();
        let answers = futures_join(calls).await;
        let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        let conflict = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::CONFLICT)
            .count();
        assert_eq!((ok, conflict), (1, 7), "{name}: {answers:?}");
        assert_eq!(
            w.count(&format!("SELECT COUNT(*) FROM audit_log WHERE target = 'alarm/{episode}' AND outcome = 'conflict'")).await,
            7,
            "{name}"
        );
        w.pool.close().await;
    }
}

/// Runs `futures` at once on the current runtime's workers and returns their outputs in order.
async fn futures_join<F, T>(futures: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T>,
{
    let mut out = Vec::with_capacity(futures.len());
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<T>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}
