//! Who owns a patient's work, and when it ends, over the store on each backend: a referral to the
//! patient's home community institution moves the roles it names on acceptance and not before
//! (open tasks move, later ones are made there, each move audited); a patient without a home is
//! referred by the default routing with an error record; a withdrawal is the event `withdrawn`,
//! routed by the state to its closing work or ending the enrolment where it stands, once, all or
//! nothing; an enrolment dated in the past catches up exactly as nightly passes would have.

use carepath_engine::Programs;
use carepath_engine::observations::Reading;
use carepath_engine::scheduler::{self, PassOptions};
use carepath_engine::store::queries::{self, Caller, TaskAction};
use carepath_engine::store::{self, NewEnrolment, NewPatient, Pool, StoreError};
use jiff::{SignedDuration, Timestamp};

use crate::support::{self, rows, scalar};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// Discharge from the ward with a referral to the patient's community institution that moves
/// the community case manager's work; a withdrawal on the ward is routed to closing work, one in
/// the community is not.
const HANDOVER: &str = r#"pathway: handover
version: 1
title: { zh: 出院交接, en: Discharge handover }
owner_role: hospital_case_manager
roles: [hospital_case_manager, clinic_case_manager, doctor]
entry_points:
  - { id: discharge, state: ward }
states:
  - id: ward
    phase: discharge_preparation
    on_enter:
      - task: { id: discharge_call, role: clinic_case_manager, title: { zh: 出院电话, en: Discharge call }, due: 2d, keep: true }
      - task: { id: med_review, role: doctor, title: { zh: 用药复核, en: Medication review }, due: 1d, keep: true }
      - follow_up: { id: day3_message, channels: [sms], template: day3_check, after: 3d, at: "09:00" }
      - scale: { id: mood_screen, scale: phq9, due: 7d }
      - referral: { direction: down, to: own_community, moves: [clinic_case_manager], accept_within: 48h }
    transitions:
      - on: referral_accepted
        to: community
      - on: withdrawn
        to: closing
  - id: community
    phase: follow_up
    on_enter:
      - cancel: day3_message
      - cancel: mood_screen
      - task: { id: home_visit, role: clinic_case_manager, title: { zh: 家访, en: Home visit }, due: 7d }
      - task: { id: gp_letter, role: doctor, title: { zh: 出院小结, en: Letter to the GP }, due: 3d }
    transitions:
      - on: task_done:home_visit
        to: done
      - after: 30d
        to: done
  - id: closing
    phase: closed
    terminal: true
    keep_open_tasks: true
    on_enter:
      - task: { id: return_device, role: clinic_case_manager, title: { zh: 回收血压计, en: Collect the loaned monitor }, due: 3d }
  - id: done
    phase: closed
    terminal: true
"#;

/// A state waiting on readings, then timers: what a back-dated enrolment must catch up on.
const WATCH: &str = r#"pathway: watch
version: 1
title: { zh: 观察, en: Watch }
owner_role: case_manager
roles: [case_manager]
entry_points:
  - { id: start, state: watching }
states:
  - id: watching
    phase: follow_up
    on_enter:
      - task: { id: first_call, role: case_manager, title: { zh: 首次电话, en: First call }, due: 2d }
      - follow_up: { channels: [sms], template: weekly, after: 7d, at: "09:00" }
    transitions:
      - when: 'latest("bp_systolic") >= 160'
        to: high
      - after: 14d
        to: routine
  - id: high
    phase: follow_up
    on_enter:
      - task: { id: review, role: case_manager, title: { zh: 复查, en: Review }, due: 1d, priority: high }
    transitions:
      - after: 10d
        to: routine
  - id: routine
    phase: follow_up
    on_enter:
      - task: { id: monthly_call, role: case_manager, title: { zh: 月度电话, en: Monthly call }, due: 30d }
    transitions:
      - after: 60d
        to: closed
  - id: closed
    phase: closed
    terminal: true
"#;

fn t0() -> Timestamp {
    support::ts("2026-03-02T00:00:00Z")
}

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

async fn open(b: &support::Backend) -> (Pool, Programs, tempfile::TempDir) {
    let dir = support::pathway_dir(&[("handover.yaml", HANDOVER), ("watch.yaml", WATCH)]);
    let (pool, programs) = support::open_store(&b.url, dir.path(), t0()).await;
    (pool, programs, dir)
}

/// A patient of the lead hospital, belonging to `home`.
async fn patient(pool: &Pool, id: &str, home: Option<&str>) {
    let mut tx = pool.begin().await.expect("begin");
    let p = NewPatient {
        id: id.into(),
        institution_id: "lead".into(),
        birth_date: Some("1948-02-01".into()),
        sex: "male".into(),
        tz: "Asia/Shanghai".into(),
        contact_enc: None,
        preferred_channel: None,
        home_institution: home.map(str::to_string),
        lang: None,
    };
    store::insert_patient(&mut tx, &p, t0())
        .await
        .expect("patient");
    tx.commit().await.expect("commit");
}

async fn enrol(pool: &Pool, programs: &Programs, patient: &str) -> i64 {
    store::enrol(pool, programs, patient, "handover", None, "discharge", t0())
        .await
        .expect("enrol")
        .0
}

fn caller(id: &str, institution: &str, role: &str) -> Caller {
    Caller {
        staff_id: id.into(),
        institution_id: institution.into(),
        roles: vec![role.into()],
    }
}

/// `task_ref|institution_id|status` of an enrolment's tasks.
async fn tasks(pool: &Pool, enrolment: i64) -> Vec<String> {
    rows(
        pool,
        &format!(
            "SELECT task_ref, institution_id, status FROM tasks WHERE enrolment_id = {enrolment}"
        ),
        3,
    )
    .await
}

#[tokio::test]
async fn a_referral_home_moves_the_roles_it_names_on_acceptance_and_not_before() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        patient(&pool, "p-home", Some("clinic_a")).await;
        let e = enrol(&pool, &programs, "p-home").await;
        // Addressed to the home institution alone, of its kind, with the roles it moves.
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT direction, to_kind, to_institution, status, moves FROM referrals WHERE enrolment_id = {e}"),
                5
            )
            .await,
            ["down|community_clinic|clinic_a|requested|[\"clinic_case_manager\"]"],
            "{name}"
        );
        let clinic = caller("clinic_a.ccm", "clinic_a", "clinic_case_manager");
        let referral = scalar(
            &pool,
            &format!("SELECT id FROM referrals WHERE enrolment_id = {e}"),
        )
        .await;
        // Before acceptance nothing moves, and the clinic sees nothing of the patient.
        let lead_ccm = caller("lead.ccm", "lead", "clinic_case_manager");
        let call = scalar(
            &pool,
            &format!(
                "SELECT id FROM tasks WHERE enrolment_id = {e} AND task_ref = 'discharge_call'"
            ),
        )
        .await;
        queries::act_on_task(
            &pool,
            &programs,
            &lead_ccm,
            call,
            TaskAction::Claim {
                lease_seconds: 4 * HOUR,
            },
            "test",
            at(HOUR),
        )
        .await
        .expect("claim");
        scheduler::advance(&pool, &programs, e, at(2 * HOUR))
            .await
            .expect("advance");
        assert_eq!(
            tasks(&pool, e).await,
            ["discharge_call|lead|claimed", "med_review|lead|open"],
            "{name}"
        );
        assert!(
            !queries::patient_visible(&pool, &clinic, "p-home")
                .await
                .expect("visible"),
            "{name}: a referral merely addressed to the clinic showed it the patient"
        );
        assert_eq!(scalar(&pool, "SELECT COUNT(*) FROM role_owners").await, 0);

        let decided = queries::decide_referral(
            &pool,
            &clinic,
            referral,
            "accept",
            None,
            "test",
            at(3 * HOUR),
        )
        .await
        .expect("accept");
        assert_eq!(decided.status, "accepted", "{name}");
        // The named role's open task moved, released from its claimant; the doctor's stayed, and
        // so did the enrolment.
        assert_eq!(
            tasks(&pool, e).await,
            ["discharge_call|clinic_a|open", "med_review|lead|open"],
            "{name}"
        );
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT assignee, institution_id FROM tasks WHERE id = {call}"),
                2
            )
            .await,
            ["∅|clinic_a"],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!(
                    "SELECT COUNT(*) FROM enrolments WHERE id = {e} AND institution_id = 'lead'"
                )
            )
            .await,
            1,
            "{name}: the enrolment moved"
        );
        assert!(
            queries::patient_visible(&pool, &clinic, "p-home")
                .await
                .expect("visible"),
            "{name}"
        );
        // Each move audited, by the staff member who accepted; the handover recorded.
        assert_eq!(
            rows(
                &pool,
                "SELECT actor, institution_id, action, target FROM audit_log WHERE action = 'task.move'",
                4
            )
            .await,
            [format!("clinic_a.ccm|clinic_a|task.move|task/{call}")],
            "{name}"
        );
        let moved = rows(
            &pool,
            &format!(
                "SELECT detail FROM record WHERE enrolment_id = {e} AND kind = 'ownership_moved'"
            ),
            1,
        )
        .await;
        assert_eq!(moved.len(), 1, "{name}");
        let detail: serde_json::Value = serde_json::from_str(&moved[0]).expect("json");
        assert_eq!(detail["roles"], serde_json::json!(["clinic_case_manager"]));
        assert_eq!(detail["tasks"][0]["released_from"], "lead.ccm", "{detail}");
        assert_eq!(
            rows(
                &pool,
                "SELECT CAST(enrolment_id AS TEXT), role, institution_id FROM role_owners",
                3
            )
            .await,
            [format!("{e}|clinic_case_manager|clinic_a")],
            "{name}"
        );

        // The acceptance moves the patient on: later tasks of the moved role are made at the
        // clinic, the others at the enrolment's institution; the cancels end the message and
        // the questionnaire.
        scheduler::advance(&pool, &programs, e, at(4 * HOUR))
            .await
            .expect("advance");
        assert_eq!(
            tasks(&pool, e).await,
            [
                "discharge_call|clinic_a|open",
                "gp_letter|lead|open",
                "home_visit|clinic_a|open",
                "med_review|lead|open"
            ],
            "{name}"
        );
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT follow_up_ref, status FROM follow_ups WHERE enrolment_id = {e}"),
                2
            )
            .await,
            ["day3_message|cancelled"],
            "{name}"
        );
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT push_ref, status FROM scale_pushes WHERE enrolment_id = {e}"),
                2
            )
            .await,
            ["mood_screen|cancelled"],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
            )
            .await,
            0,
            "{name}"
        );
        // The terminal state `done` keeps no open tasks: the kept ones end with the enrolment.
        scheduler::run_pass(&pool, &programs, at(31 * DAY), &PassOptions::default())
            .await
            .expect("pass");
        assert_eq!(
            tasks(&pool, e).await,
            [
                "discharge_call|clinic_a|cancelled",
                "gp_letter|lead|cancelled",
                "home_visit|clinic_a|cancelled",
                "med_review|lead|cancelled"
            ],
            "{name}"
        );
        pool.close().await;
    }
}

#[tokio::test]
async fn a_patient_without_a_home_is_referred_by_the_default_routing_and_told_so() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        patient(&pool, "p-nohome", None).await;
        let e = enrol(&pool, &programs, "p-nohome").await;
        assert_eq!(
            rows(
                &pool,
                &format!(
                    "SELECT to_kind, to_institution, status FROM referrals WHERE enrolment_id = {e}"
                ),
                3
            )
            .await,
            ["community_clinic|∅|requested"],
            "{name}"
        );
        let errors = rows(
            &pool,
            &format!("SELECT detail FROM record WHERE enrolment_id = {e} AND kind = 'error'"),
            1,
        )
        .await;
        assert_eq!(errors.len(), 1, "{name}");
        assert!(
            errors[0].contains("has no home community institution")
                && errors[0].contains("open to every community_clinic"),
            "{name}: {}",
            errors[0]
        );
        // Open to the alliance's community clinic, which may accept it; the township hospital is
        // of another kind.
        let clinic = caller("clinic_a.ccm", "clinic_a", "clinic_case_manager");
        let township = caller("clinic_b.ccm", "clinic_b", "clinic_case_manager");
        assert_eq!(
            queries::referrals(&pool, &township, Some("requested"))
                .await
                .expect("list")
                .len(),
            0,
            "{name}"
        );
        let listed = queries::referrals(&pool, &clinic, Some("requested"))
            .await
            .expect("list");
        assert_eq!(listed.len(), 1, "{name}");
        queries::decide_referral(&pool, &clinic, listed[0].id, "accept", None, "t", at(HOUR))
            .await
            .expect("accept");
        assert_eq!(
            tasks(&pool, e).await,
            ["discharge_call|clinic_a|open", "med_review|lead|open"],
            "{name}"
        );
        pool.close().await;
    }
}

/// `status|state` of an enrolment.
async fn enrolment(pool: &Pool, e: i64) -> String {
    rows(
        pool,
        &format!("SELECT status, state FROM enrolments WHERE id = {e}"),
        2,
    )
    .await
    .join("")
}

async fn withdrawn_events(pool: &Pool, e: i64) -> i64 {
    scalar(
        pool,
        &format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'withdrawn'"),
    )
    .await
}

#[tokio::test]
async fn a_withdrawal_is_routed_to_closing_work_or_ends_the_enrolment_where_it_stands() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        for p in ["p-ward", "p-community", "p-error"] {
            patient(&pool, p, Some("clinic_a")).await;
        }
        // On the ward the pathway routes the withdrawal: its closing work is made, and its
        // terminal state keeps the open kept tasks; the message and the questionnaire end.
        let ward = enrol(&pool, &programs, "p-ward").await;
        let done = store::withdraw(&pool, &programs, ward, "moved away", at(HOUR))
            .await
            .expect("withdraw");
        assert!(done.routed && done.state == "closing", "{name}: {done:?}");
        assert_eq!(enrolment(&pool, ward).await, "withdrawn|closing", "{name}");
        assert_eq!(
            tasks(&pool, ward).await,
            [
                "discharge_call|lead|open",
                "med_review|lead|open",
                "return_device|lead|open"
            ],
            "{name}"
        );
        for (table, status) in [("follow_ups", "cancelled"), ("scale_pushes", "cancelled")] {
            assert_eq!(
                rows(
                    &pool,
                    &format!("SELECT status FROM {table} WHERE enrolment_id = {ward}"),
                    1
                )
                .await,
                [status],
                "{name} {table}"
            );
        }
        // In the community it is not routed: everything still open ends, kept tasks too.
        let community = enrol(&pool, &programs, "p-community").await;
        let referral = scalar(
            &pool,
            &format!("SELECT id FROM referrals WHERE enrolment_id = {community}"),
        )
        .await;
        let clinic = caller("clinic_a.ccm", "clinic_a", "clinic_case_manager");
        queries::decide_referral(&pool, &clinic, referral, "accept", None, "t", at(HOUR))
            .await
            .expect("accept");
        // Not stepped since: the withdrawal first catches up with the acceptance.
        let done = store::withdraw(&pool, &programs, community, "declined", at(2 * HOUR))
            .await
            .expect("withdraw");
        assert!(
            !done.routed && done.state == "community",
            "{name}: {done:?}"
        );
        assert_eq!(
            enrolment(&pool, community).await,
            "withdrawn|community",
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM tasks WHERE enrolment_id = {community} AND status <> 'cancelled'")
            )
            .await,
            0,
            "{name}: {:?}",
            tasks(&pool, community).await
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM tasks WHERE enrolment_id = {community} AND task_ref = 'home_visit'")
            )
            .await,
            1,
            "{name}: the catch-up entered `community` before the withdrawal"
        );
        // What the withdrawal ended says why.
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT cancel_reason FROM tasks WHERE enrolment_id = {community} AND task_ref = 'discharge_call'")
                , 1
            )
            .await,
            ["withdrawn: declined"],
            "{name}"
        );
        // Once: a second withdrawal is refused and raises nothing.
        for e in [ward, community] {
            let err = store::withdraw(&pool, &programs, e, "again", at(3 * HOUR))
                .await
                .expect_err("withdrawn twice");
            assert!(matches!(err, StoreError::Conflict(_)), "{name}: {err:?}");
            assert_eq!(withdrawn_events(&pool, e).await, 1, "{name}");
            assert_eq!(
                scalar(
                    &pool,
                    &format!("SELECT COUNT(*) FROM record WHERE enrolment_id = {e} AND kind = 'withdrawn'")
                )
                .await,
                1,
                "{name}"
            );
        }
        // An enrolment in error is withdrawn where it stands.
        let errored = enrol(&pool, &programs, "p-error").await;
        pool.exec(
            &format!(
                "UPDATE enrolments SET status = 'error', next_wake_at = NULL WHERE id = {errored}"
            ),
            vec![],
        )
        .await
        .expect("error");
        let done = store::withdraw(&pool, &programs, errored, "pathway fault", at(HOUR))
            .await
            .expect("withdraw");
        assert!(!done.routed, "{name}");
        assert_eq!(enrolment(&pool, errored).await, "withdrawn|ward", "{name}");
        assert_eq!(
            scalar(
                &pool,
                &format!(
                    "SELECT COUNT(*) FROM tasks WHERE enrolment_id = {errored} AND status = 'open'"
                )
            )
            .await,
            0,
            "{name}"
        );
        // The event cannot be posted in its place.
        let lead = caller("lead.hcm", "lead", "hospital_case_manager");
        let event = queries::ReportedEvent {
            enrolment: ward,
            name: "withdrawn",
            at: at(HOUR),
            data: None,
        };
        let err = queries::event_scoped(&pool, &programs, &lead, &event, "t", at(HOUR))
            .await
            .expect_err("withdrawn is not posted");
        assert!(matches!(err, StoreError::Invalid(_)), "{name}: {err:?}");
        pool.close().await;
    }
}

#[tokio::test]
async fn a_withdrawal_is_all_or_nothing_and_exactly_once_under_concurrency() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        patient(&pool, "p-once", Some("clinic_a")).await;
        let e = enrol(&pool, &programs, "p-once").await;
        let before = support::snapshot(&pool).await;
        // A withdrawal whose transaction never commits (a crash) leaves nothing behind.
        {
            let mut tx = pool.begin().await.expect("begin");
            store::withdraw_tx(&mut tx, &programs, e, "crash", None, at(HOUR))
                .await
                .expect("withdraw");
            tx.rollback().await.expect("rollback");
        }
        support::assert_same(
            "before",
            &before,
            "after a rolled back withdrawal",
            &support::snapshot(&pool).await,
        );
        // Of concurrent withdrawals, exactly one wins.
        let mut handles = Vec::new();
        for i in 0..6 {
            let (pool, programs) = (pool.clone(), programs.clone());
            handles.push(tokio::spawn(async move {
                store::withdraw(&pool, &programs, e, &format!("try {i}"), at(HOUR)).await
            }));
        }
        let mut won = 0;
        for h in handles {
            match h.await.expect("join") {
                Ok(_) => won += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(other) => panic!("{name}: {other:?}"),
            }
        }
        assert_eq!(won, 1, "{name}");
        assert_eq!(withdrawn_events(&pool, e).await, 1, "{name}");
        assert_eq!(enrolment(&pool, e).await, "withdrawn|closing", "{name}");
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM tasks WHERE enrolment_id = {e} AND task_ref = 'return_device'")
            )
            .await,
            1,
            "{name}"
        );
        // One the catch-up completes first is not withdrawn, and nothing is written.
        patient(&pool, "p-late", Some("clinic_a")).await;
        let late = enrol(&pool, &programs, "p-late").await;
        let referral = scalar(
            &pool,
            &format!("SELECT id FROM referrals WHERE enrolment_id = {late}"),
        )
        .await;
        let clinic = caller("clinic_a.ccm", "clinic_a", "clinic_case_manager");
        queries::decide_referral(&pool, &clinic, referral, "accept", None, "t", at(HOUR))
            .await
            .expect("accept");
        let before = support::snapshot(&pool).await;
        let err = store::withdraw(&pool, &programs, late, "too late", at(40 * DAY))
            .await
            .expect_err("completed before");
        assert!(
            matches!(&err, StoreError::Conflict(m) if m.contains("completed in `done`")),
            "{name}: {err:?}"
        );
        support::assert_same(
            "before",
            &before,
            "after a refused withdrawal",
            &support::snapshot(&pool).await,
        );
        pool.close().await;
    }
}

/// `state_seq|task_ref|due_at|status|created_at` of the tasks of the enrolment of `patient`.
async fn work_of(pool: &Pool, patient: &str) -> Vec<String> {
    let mut out = rows(
        pool,
        &format!(
            "SELECT CAST(state_seq AS TEXT), task_ref, CAST(due_at AS TEXT), status, CAST(created_at AS TEXT) FROM tasks WHERE patient_id = '{patient}'"
        ),
        5,
    )
    .await;
    out.extend(
        rows(
            pool,
            &format!("SELECT CAST(state_seq AS TEXT), template, CAST(send_at AS TEXT), status, CAST(created_at AS TEXT) FROM follow_ups WHERE patient_id = '{patient}'"),
            5,
        )
        .await,
    );
    out.extend(
        rows(
            pool,
            &format!("SELECT state, CAST(state_seq AS TEXT), CAST(entered_at AS TEXT), status, CAST(next_wake_at AS TEXT) FROM enrolments WHERE patient_id = '{patient}'"),
            5,
        )
        .await,
    );
    out
}

#[tokio::test]
async fn an_enrolment_dated_in_the_past_ends_where_nightly_passes_would_have() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        let reading = |patient: &str| Reading {
            patient_id: patient.into(),
            kind: "bp_systolic".into(),
            value: 172.0,
            unit: None,
            at: at(3 * DAY + 5 * HOUR),
            reading_id: format!("{patient}-r1"),
            source: "test".into(),
        };
        let now = at(20 * DAY);
        // Enrolled on the day, stepped by nightly passes, the reading recorded when taken.
        patient(&pool, "p-nightly", None).await;
        store::enrol(&pool, &programs, "p-nightly", "watch", None, "start", t0())
            .await
            .expect("enrol");
        for d in 1..=20 {
            if d == 4 {
                let visible = ["p-nightly".to_string()].into_iter().collect();
                store::ingest_readings(
                    &pool,
                    &[reading("p-nightly")],
                    &visible,
                    at(3 * DAY + 5 * HOUR),
                )
                .await
                .expect("reading");
            }
            scheduler::run_pass(&pool, &programs, at(d * DAY), &PassOptions::default())
                .await
                .expect("pass");
        }
        // Enrolled twenty days late, dated back to the same start.
        patient(&pool, "p-late", None).await;
        let visible = ["p-late".to_string()].into_iter().collect();
        store::ingest_readings(
            &pool,
            &[reading("p-late")],
            &visible,
            at(3 * DAY + 5 * HOUR),
        )
        .await
        .expect("reading");
        let new = NewEnrolment {
            patient_id: "p-late".into(),
            pathway_id: "watch".into(),
            version: None,
            entry: "start".into(),
            at: t0(),
            catch_up_to: Some(now),
        };
        let mut tx = pool.begin().await.expect("begin");
        store::enrol_many(&mut tx, &programs, &[new])
            .await
            .expect("enrol");
        tx.commit().await.expect("commit");
        let (nightly, late) = (
            work_of(&pool, "p-nightly").await,
            work_of(&pool, "p-late").await,
        );
        assert_eq!(late, nightly, "{name}");
        // The reading moved both at its own instant, and both have since moved on by timer.
        assert!(
            late.iter().any(|r| r.starts_with("2|review|")),
            "{name}: {late:?}"
        );
        assert!(
            late.iter().any(|r| r.starts_with("routine|3|")),
            "{name}: {late:?}"
        );
        pool.close().await;
    }
}

/// One call to the router: the status and the body as JSON (or text).
async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let body = if method == "GET" {
        axum::body::Body::empty()
    } else {
        req = req.header(header::CONTENT_TYPE, "application/json");
        axum::body::Body::from(body.to_string())
    };
    let res = app
        .clone()
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("infallible");
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, json)
}

#[tokio::test]
async fn the_api_takes_a_home_institution_a_bounded_past_start_and_routes_a_withdrawal() {
    use serde_json::json;
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, _dir) = open(&b).await;
        let staff = carepath_engine::seed::demo_staff(&pool)
            .await
            .expect("staff");
        let token = &staff
            .iter()
            .find(|s| s.1 == "lead" && s.2 == "hospital_case_manager")
            .expect("a case manager")
            .3;
        let app = carepath_admin_api::router(carepath_admin_api::AppState::new(
            pool.clone(),
            programs.clone(),
        ));
        // A home institution is a community institution of the caller's alliance.
        let (status, _) = call(
            &app,
            "POST",
            "/patients",
            token,
            json!({"id": "api-1", "home_institution": "clinic_a"}),
        )
        .await;
        assert_eq!(status, 201, "{name}");
        let (_, read) = call(&app, "GET", "/patients/api-1", token, json!(null)).await;
        assert_eq!(read["home_institution"], "clinic_a", "{name}: {read}");
        for (home, why) in [
            ("lead", "is a lead_hospital"),
            ("nowhere", "is not an institution"),
        ] {
            let (status, body) = call(
                &app,
                "POST",
                "/patients",
                token,
                json!({"id": "api-2", "home_institution": home}),
            )
            .await;
            assert_eq!(status, 400, "{name}: {body}");
            assert!(body.to_string().contains(why), "{name}: {body}");
        }
        // A start in the past within 30 days, or a little ahead by clock skew; nothing else.
        let now = Timestamp::now();
        let ago = |days: i64| now - SignedDuration::from_hours(24 * days);
        for (start, why) in [
            (ago(31), "more than 30 days before now"),
            (now + SignedDuration::from_hours(1), "in the future"),
        ] {
            let (status, body) = call(
                &app,
                "POST",
                "/enrolments",
                token,
                json!({"patient_id": "api-1", "pathway": "watch", "entry": "start", "at": start.to_string()}),
            )
            .await;
            assert_eq!(status, 400, "{name}: {body}");
            assert!(body.to_string().contains(why), "{name}: {body}");
        }
        let start = ago(10);
        let (status, body) = call(
            &app,
            "POST",
            "/enrolments",
            token,
            json!({"patient_id": "api-1", "pathway": "watch", "entry": "start", "at": start.to_string()}),
        )
        .await;
        assert_eq!(status, 201, "{name}: {body}");
        let watch = body["id"].as_i64().expect("id");
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT CAST(e.enrolled_at AS TEXT), CAST(t.created_at AS TEXT), CAST(t.due_at AS TEXT) FROM enrolments e JOIN tasks t ON t.enrolment_id = e.id WHERE e.id = {watch}"),
                3
            )
            .await,
            [format!(
                "{s}|{s}|{}",
                start.as_second() + 2 * DAY,
                s = start.as_second()
            )],
            "{name}"
        );
        // The withdrawal is not an event one posts; withdrawn, the pathway routes it.
        let (status, body) = call(
            &app,
            "POST",
            &format!("/enrolments/{watch}/events"),
            token,
            json!({"name": "withdrawn"}),
        )
        .await;
        assert_eq!(status, 400, "{name}: {body}");
        let (status, body) = call(
            &app,
            "POST",
            "/enrolments",
            token,
            json!({"patient_id": "api-1", "pathway": "handover", "entry": "discharge"}),
        )
        .await;
        assert_eq!(status, 201, "{name}: {body}");
        let handover = body["id"].as_i64().expect("id");
        let (status, body) = call(
            &app,
            "POST",
            &format!("/enrolments/{handover}/withdraw"),
            token,
            json!({"reason": "moved to another city"}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(
            body,
            json!({"enrolment_id": handover, "status": "withdrawn", "state": "closing", "routed": true, "actions": {"task": 1}}),
            "{name}"
        );
        pool.close().await;
    }
}
