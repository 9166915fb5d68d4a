//! Case intake on each backend, through the one entry point the hospital interfaces call
//! (`carepath_engine::hospital::record_encounter`) with the repository's pathways and intake rules:
//! a neurology discharge with a principal stroke diagnosis enrols in the encounter's transaction
//! (gone with it when it rolls back); a resend enrols nothing; palliative care excludes; a review
//! rule queues a candidate that a case manager of the same institution accepts (enrolling) or
//! rejects (with a reason) over the admin API, and that another institution cannot see or decide.

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use carepath_admin_api::AppState;
use carepath_engine::Programs;
use carepath_engine::hospital::{self, Hospital};
use carepath_engine::intake::IntakeRules;
use carepath_engine::store::clinical::{DiagnosisIn, EncounterClass, EncounterIn};
use carepath_engine::store::queries::{Caller, token_hash};
use carepath_engine::store::{self, Pool};
use http_body_util::BodyExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{self, rows, scalar};

fn pathways() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pathways")
}

/// The present, to the second (the API's clock is the real one).
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("now")
}

fn hours_ago(now: Timestamp, h: i64) -> Timestamp {
    now - SignedDuration::from_hours(h)
}

/// The interface's caller at the lead hospital (an HL7 or FHIR client).
fn interface() -> Caller {
    Caller {
        staff_id: "lead.his_interface".into(),
        institution_id: "lead".into(),
        roles: vec!["case_manager".into()],
    }
}

async fn open(b: &support::Backend) -> (Pool, Programs, IntakeRules) {
    let (pool, programs) = support::open_store(&b.url, &pathways(), now()).await;
    let rules = IntakeRules::load_dir(&pathways().join("intake"), &programs)
        .expect("the repository's intake rules load");
    (pool, programs, rules)
}

fn diagnosis(code: &str, principal: bool) -> DiagnosisIn {
    DiagnosisIn {
        code: code.into(),
        principal,
    }
}

/// An inpatient stay admitted three days and discharged an hour before `now`.
fn discharge(id: &str, patient: &str, department: &str, codes: &[(&str, bool)]) -> EncounterIn {
    let now = now();
    EncounterIn {
        identifier: id.into(),
        patient_id: patient.into(),
        class: EncounterClass::Inpatient,
        department: Some(department.into()),
        acute: Some(true),
        admitted_at: Some(hours_ago(now, 72)),
        discharged_at: Some(hours_ago(now, 1)),
        diagnoses: codes.iter().map(|(c, p)| diagnosis(c, *p)).collect(),
    }
}

/// Records an encounter as the interfaces do; commits when `commit`, else rolls back.
async fn record(
    pool: &Pool,
    programs: &Programs,
    rules: &IntakeRules,
    e: &EncounterIn,
    commit: bool,
) -> (Vec<i64>, Vec<i64>) {
    let h = Hospital {
        programs,
        intake: rules,
        contact_key: None,
    };
    let mut tx = pool.begin().await.expect("begin");
    let out = hospital::record_encounter(&mut tx, &h, &interface(), e, "test", "127.0.0.1", now())
        .await
        .expect("record encounter");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    (out.enrolled, out.queued)
}

async fn enrolments_of(pool: &Pool, patient: &str) -> Vec<String> {
    rows(
        pool,
        &format!(
            "SELECT pathway_id, entry_point, status FROM enrolments WHERE patient_id = '{patient}'"
        ),
        3,
    )
    .await
}

async fn candidates_of(pool: &Pool, patient: &str) -> Vec<String> {
    rows(
        pool,
        &format!(
            "SELECT rule, pathway_id, entry, status, COALESCE(decided_by, '-') FROM intake_candidates WHERE patient_id = '{patient}'"
        ),
        5,
    )
    .await
}

#[tokio::test]
async fn a_stroke_discharge_from_neurology_enrols_once_in_the_encounters_transaction() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, rules) = open(&b).await;
        support::add_patient(&pool, "p-stroke", now()).await;
        let e = discharge(
            "ZY-1001",
            "p-stroke",
            "神经内科",
            &[("I63.9", true), ("I10", false)],
        );

        // Rolled back with the encounter: nothing stays.
        let (enrolled, queued) = record(&pool, &programs, &rules, &e, false).await;
        assert_eq!((enrolled.len(), queued.len()), (1, 0), "{name}");
        assert!(enrolments_of(&pool, "p-stroke").await.is_empty(), "{name}");
        assert!(candidates_of(&pool, "p-stroke").await.is_empty(), "{name}");

        let (enrolled, queued) = record(&pool, &programs, &rules, &e, true).await;
        assert_eq!((enrolled.len(), queued.len()), (1, 0), "{name}");
        assert_eq!(
            enrolments_of(&pool, "p-stroke").await,
            vec!["stroke|admission|active"],
            "{name}"
        );
        assert_eq!(
            candidates_of(&pool, "p-stroke").await,
            vec![
                "stroke_neurology_discharge|stroke|admission|accepted|rule:stroke_neurology_discharge"
            ],
            "{name}"
        );
        let enrolment = enrolled[0];
        assert_eq!(
            scalar(
                &pool,
                "SELECT enrolment_id FROM intake_candidates WHERE patient_id = 'p-stroke'"
            )
            .await,
            enrolment,
            "{name}: the candidate names its enrolment"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT enrolled_at FROM enrolments WHERE id = {enrolment}")
            )
            .await,
            e.discharged_at.expect("discharged").as_second(),
            "{name}: dated at the discharge"
        );
        assert!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM tasks WHERE enrolment_id = {enrolment}")
            )
            .await
                > 0,
            "{name}: the entry step ran"
        );
        // Enrolled at its discharge, the pathway hears of it and leaves the admission state.
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT name FROM events WHERE enrolment_id = {enrolment}"),
                1
            )
            .await,
            vec!["discharged"],
            "{name}"
        );
        let state = rows(
            &pool,
            &format!("SELECT state FROM enrolments WHERE id = {enrolment}"),
            1,
        )
        .await;
        assert_ne!(state, vec!["admission_assessment"], "{name}");
        assert_eq!(
            scalar(
                &pool,
                "SELECT COUNT(*) FROM audit_log WHERE action = 'intake.accept' AND target LIKE 'intake/%'"
            )
            .await,
            1,
            "{name}: the automatic decision is audited"
        );

        // A resend changes nothing.
        let (enrolled, queued) = record(&pool, &programs, &rules, &e, true).await;
        assert_eq!((enrolled.len(), queued.len()), (0, 0), "{name}: resend");
        assert_eq!(enrolments_of(&pool, "p-stroke").await.len(), 1, "{name}");
        assert_eq!(candidates_of(&pool, "p-stroke").await.len(), 1, "{name}");

        // A second stay while still enrolled: not enrolled again (and no candidate).
        let again = discharge("ZY-1002", "p-stroke", "Neurology", &[("I63.4", true)]);
        let (enrolled, queued) = record(&pool, &programs, &rules, &again, true).await;
        assert_eq!(
            (enrolled.len(), queued.len()),
            (0, 0),
            "{name}: already enrolled"
        );
        assert_eq!(enrolments_of(&pool, "p-stroke").await.len(), 1, "{name}");
    }
}

#[tokio::test]
async fn exclusions_and_other_diagnoses_enrol_nothing() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, rules) = open(&b).await;
        support::add_patient(&pool, "p-palliative", now()).await;
        support::add_patient(&pool, "p-copd", now()).await;
        let palliative = discharge(
            "ZY-2001",
            "p-palliative",
            "神经内科",
            &[("I63.9", true), ("Z51.5", false)],
        );
        let (enrolled, queued) = record(&pool, &programs, &rules, &palliative, true).await;
        assert_eq!((enrolled.len(), queued.len()), (0, 0), "{name}: palliative");
        let copd = discharge("ZY-2002", "p-copd", "神经内科", &[("J44.1", true)]);
        let (enrolled, queued) = record(&pool, &programs, &rules, &copd, true).await;
        assert_eq!(
            (enrolled.len(), queued.len()),
            (0, 0),
            "{name}: not a stroke"
        );
        for p in ["p-palliative", "p-copd"] {
            assert!(enrolments_of(&pool, p).await.is_empty(), "{name}: {p}");
            assert!(candidates_of(&pool, p).await.is_empty(), "{name}: {p}");
        }
    }
}

/// A token of a staff member of `inst` holding `role`.
async fn token(pool: &Pool, inst: &str, role: &str) -> String {
    let (id, tok) = (
        format!("{inst}.intake_{role}"),
        format!("cp_test_intake_{inst}_{role}"),
    );
    let mut tx = pool.begin().await.expect("begin");
    store::insert_staff(&mut tx, &id, inst, role, &[role], Some(token_hash(&tok)))
        .await
        .expect("staff");
    tx.commit().await.expect("commit");
    tok
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    tok: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {tok}"));
    let body = match body {
        Some(b) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(b.to_string())
        }
        None => Body::empty(),
    };
    let res = app
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

fn listed(v: &Value) -> Vec<i64> {
    v["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["id"].as_i64())
        .collect()
}

#[tokio::test]
async fn review_candidates_are_accepted_or_rejected_by_the_institutions_case_managers() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, rules) = open(&b).await;
        support::add_patient(&pool, "p-review", now()).await;
        support::add_patient(&pool, "p-refused", now()).await;
        // A stroke discharged from cardiology: the review rule, not the automatic one.
        let e = discharge("ZY-3001", "p-review", "Cardiology", &[("I63.9", true)]);
        let (enrolled, queued) = record(&pool, &programs, &rules, &e, true).await;
        assert_eq!((enrolled.len(), queued.len()), (0, 1), "{name}");
        let review = queued[0];
        let (_, queued) = record(&pool, &programs, &rules, &e, true).await;
        assert!(queued.is_empty(), "{name}: a resend queues nothing");
        let other = discharge("ZY-3002", "p-refused", "心内科", &[("I61.0", true)]);
        let (_, queued) = record(&pool, &programs, &rules, &other, true).await;
        let refused = queued[0];
        assert_eq!(
            candidates_of(&pool, "p-review").await,
            vec!["stroke_other_ward_discharge|stroke|admission|pending|-"],
            "{name}"
        );
        assert!(enrolments_of(&pool, "p-review").await.is_empty(), "{name}");

        let app = carepath_admin_api::router(AppState::new(pool.clone(), programs.clone()));
        let mine = token(&pool, "lead", "hospital_case_manager").await;
        let theirs = token(&pool, "clinic_a", "clinic_case_manager").await;
        let nurse = token(&pool, "lead", "ward_nurse").await;

        // The lead's case manager sees both, pending first; the clinic sees neither.
        let (st, v) = call(&app, "GET", "/intake", &mine, None).await;
        assert_eq!(st, StatusCode::OK, "{name}: {v}");
        let ids = listed(&v);
        assert!(
            ids.contains(&review) && ids.contains(&refused),
            "{name}: {v}"
        );
        assert_eq!(v["candidates"][0]["status"], "pending", "{name}");
        let (st, v) = call(&app, "GET", "/intake?status=pending", &theirs, None).await;
        assert_eq!(st, StatusCode::OK, "{name}");
        assert!(
            listed(&v).is_empty(),
            "{name}: another institution's queue: {v}"
        );
        let (st, _) = call(&app, "GET", "/intake", &nurse, None).await;
        assert_eq!(
            st,
            StatusCode::FORBIDDEN,
            "{name}: a ward nurse has no intake module"
        );
        let (st, _) = call(&app, "GET", "/intake?status=maybe", &mine, None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{name}");

        // Another institution can neither accept nor reject.
        let (st, _) = call(
            &app,
            "POST",
            &format!("/intake/{review}/accept"),
            &theirs,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{name}");
        let (st, _) = call(
            &app,
            "POST",
            &format!("/intake/{review}/reject"),
            &theirs,
            Some(json!({"reason": "not ours"})),
        )
        .await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{name}");
        assert!(enrolments_of(&pool, "p-review").await.is_empty(), "{name}");

        // Accepting enrols, dated at the discharge; a second decision is a conflict.
        let (st, v) = call(
            &app,
            "POST",
            &format!("/intake/{review}/accept"),
            &mine,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{name}: {v}");
        assert_eq!(v["status"], "accepted", "{name}");
        let enrolment = v["enrolment_id"].as_i64().expect("enrolment id");
        assert_eq!(
            enrolments_of(&pool, "p-review").await,
            vec!["stroke|admission|active"],
            "{name}"
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT enrolled_at FROM enrolments WHERE id = {enrolment}")
            )
            .await,
            e.discharged_at.expect("discharged").as_second(),
            "{name}"
        );
        assert_eq!(
            candidates_of(&pool, "p-review").await,
            vec![
                "stroke_other_ward_discharge|stroke|admission|accepted|lead.intake_hospital_case_manager"
            ],
            "{name}"
        );
        let (st, _) = call(
            &app,
            "POST",
            &format!("/intake/{review}/accept"),
            &mine,
            None,
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT, "{name}");
        let (st, _) = call(
            &app,
            "POST",
            &format!("/intake/{review}/reject"),
            &mine,
            Some(json!({"reason": "changed my mind"})),
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT, "{name}");

        // Rejecting needs a reason, and enrols nothing.
        for body in [json!({"reason": "   "}), json!({})] {
            let (st, _) = call(
                &app,
                "POST",
                &format!("/intake/{refused}/reject"),
                &mine,
                Some(body.clone()),
            )
            .await;
            assert!(
                st.is_client_error() && st != StatusCode::NOT_FOUND,
                "{name}: {body} → {st}"
            );
        }
        let (st, v) = call(
            &app,
            "POST",
            &format!("/intake/{refused}/reject"),
            &mine,
            Some(json!({"reason": "followed by the haemorrhage clinic"})),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{name}: {v}");
        assert_eq!(v["status"], "rejected", "{name}");
        assert!(enrolments_of(&pool, "p-refused").await.is_empty(), "{name}");
        assert_eq!(
            rows(
                &pool,
                &format!("SELECT status, reason FROM intake_candidates WHERE id = {refused}"),
                2
            )
            .await,
            vec!["rejected|followed by the haemorrhage clinic"],
            "{name}"
        );
        // Every decision, and the refusals, are in the audit record.
        for (action, outcome, at_least) in [
            ("intake.accept", "ok", 1),
            ("intake.accept", "not_found", 1),
            ("intake.accept", "conflict", 1),
            ("intake.reject", "ok", 1),
            ("intake.reject", "invalid", 1),
            ("intake.reject", "not_found", 1),
            ("intake.list", "ok", 2),
        ] {
            let n = scalar(
                &pool,
                &format!(
                    "SELECT COUNT(*) FROM audit_log WHERE action = '{action}' AND outcome = '{outcome}'"
                ),
            )
            .await;
            assert!(n >= at_least, "{name}: {action} {outcome}: {n}");
        }
    }
}

#[tokio::test]
async fn a_registered_pregnancy_is_queued_for_the_whole_pregnancy_package() {
    for b in support::backends() {
        let name = b.name();
        let (pool, programs, rules) = open(&b).await;
        // support's patients are women born in 1950; this one is of child-bearing age.
        support::add_patient(&pool, "p-preg", now()).await;
        pool.exec(
            "UPDATE patients SET birth_date = '1996-04-02' WHERE id = 'p-preg'",
            vec![],
        )
        .await
        .expect("birth date");
        let visit = EncounterIn {
            identifier: "MZ-4001".into(),
            patient_id: "p-preg".into(),
            class: EncounterClass::Outpatient,
            department: Some("产科门诊".into()),
            acute: None,
            admitted_at: Some(hours_ago(now(), 2)),
            discharged_at: None,
            diagnoses: vec![diagnosis("Z34.0", true)],
        };
        let (enrolled, queued) = record(&pool, &programs, &rules, &visit, true).await;
        assert_eq!((enrolled.len(), queued.len()), (0, 1), "{name}");
        assert_eq!(
            candidates_of(&pool, "p-preg").await,
            vec!["pregnancy_registration|pregnancy|whole|pending|-"],
            "{name}"
        );
        // The same visit again registers nothing new.
        let (enrolled, queued) = record(&pool, &programs, &rules, &visit, true).await;
        assert_eq!((enrolled.len(), queued.len()), (0, 0), "{name}: resend");
    }
}
