//! What hospital systems send, over the store on each backend: patients with contact details
//! (stored encrypted, shown masked, erased on request), encounters and diagnoses (raising
//! `admitted` and `discharged` once however often they are sent, undone by a cancel), events
//! that set pathway variables, and LACE scored from those facts by the real stroke pathway.

use carepath_engine::Programs;
use carepath_engine::crypto::{Contact, ContactKey};
use carepath_engine::hospital::{self, Hospital};
use carepath_engine::intake::IntakeRules;
use carepath_engine::scheduler;
use carepath_engine::store::clinical::{self, DiagnosisIn, EncounterClass, EncounterIn, Undo};
use carepath_engine::store::patients::{self, PatientUpsert};
use carepath_engine::store::queries::{self, Caller};
use carepath_engine::store::{self, Pool, StoreError};
use jiff::{SignedDuration, Timestamp};

use crate::support::{self, rows, scalar};

const DAY: i64 = 86_400;
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn t0() -> Timestamp {
    support::ts("2026-03-02T00:00:00Z")
}

fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

fn caller(institution: &str) -> Caller {
    Caller {
        staff_id: "his".into(),
        institution_id: institution.into(),
        roles: vec!["case_manager".into()],
    }
}

async fn open(b: &support::Backend) -> Option<(Pool, Programs)> {
    let dir = support::real_pathways()?;
    let (pool, programs) = support::open_store(&b.url, &dir, at(-400 * DAY)).await;
    let mut tx = pool.begin().await.unwrap();
    store::insert_institution(
        &mut tx,
        "other_lead",
        "Another alliance",
        "lead_hospital",
        None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    Some((pool, programs))
}

fn visit(id: &str, class: EncounterClass, from: i64, to: Option<i64>) -> EncounterIn {
    EncounterIn {
        identifier: id.into(),
        patient_id: "p1".into(),
        class,
        department: Some("neurology".into()),
        acute: Some(true),
        admitted_at: Some(at(from)),
        discharged_at: to.map(at),
        diagnoses: vec![],
    }
}

fn dx(code: &str, principal: bool) -> DiagnosisIn {
    DiagnosisIn {
        code: code.into(),
        principal,
    }
}

#[tokio::test]
async fn contact_details_are_encrypted_masked_corrected_and_erased() {
    for b in support::backends() {
        let Some((pool, programs)) = open(&b).await else {
            return;
        };
        let key = ContactKey::parse(KEY).unwrap();
        let intake = IntakeRules::default();
        let h = Hospital {
            programs: &programs,
            intake: &intake,
            contact_key: Some(&key),
        };
        let lead = caller("lead");
        let p = PatientUpsert {
            id: "p1".into(),
            birth_date: Some("1950-01-01".into()),
            sex: Some("male".into()),
            contact: Some(Contact {
                phone: Some("+8613800138000".into()),
                email: Some("li.hua@example.org".into()),
                ..Default::default()
            }),
            preferred_channel: Some("sms".into()),
            lang: Some("zh".into()),
            ..Default::default()
        };
        let mut tx = pool.begin().await.unwrap();
        assert!(
            hospital::upsert_patient(&mut tx, &h, &lead, &p, "t", t0())
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        let stored = rows(&pool, "SELECT contact_enc FROM patients WHERE id = 'p1'", 1).await;
        assert!(
            !stored[0].contains("13800138000") && stored[0].starts_with("v1."),
            "{}: stored in clear: {stored:?}",
            b.name()
        );
        let audit = queries::AuditAppender::start(pool.clone());
        let view = patients::read(&pool, &audit, &lead, Some(&key), "p1", "t", t0())
            .await
            .unwrap();
        let masked = view.contact.expect("masked contact");
        assert_eq!(masked.phone.as_deref(), Some("**********8000"));
        assert_eq!(view.lang.as_deref(), Some("zh"));
        let full = patients::contact(&pool, &audit, &lead, Some(&key), "p1", "t", t0())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(full.phone.as_deref(), Some("+8613800138000"));
        assert_eq!(
            full.lang.as_deref(),
            Some("zh"),
            "the dispatcher reads the language"
        );

        // Another alliance can neither see nor change the patient.
        let other = caller("other_lead");
        let mut tx = pool.begin().await.unwrap();
        let err = patients::upsert(&mut tx, &other, Some(&key), &p, "t", t0())
            .await
            .expect_err("another alliance's patient");
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        tx.rollback().await.unwrap();
        assert!(
            patients::contact(&pool, &audit, &other, Some(&key), "p1", "t", t0())
                .await
                .is_err()
        );

        // Correction, then erasure: the clinical record stays.
        let fix = PatientUpsert {
            id: "p1".into(),
            contact: Some(Contact {
                phone: Some("+8613900139000".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut tx = pool.begin().await.unwrap();
        assert!(
            !patients::upsert(&mut tx, &lead, Some(&key), &fix, "t", t0())
                .await
                .unwrap()
        );
        patients::erase_contact(&mut tx, &lead, "p1", "t", at(60))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            rows(
                &pool,
                "SELECT contact_enc, preferred_channel, birth_date, sex FROM patients WHERE id = 'p1'",
                4
            )
            .await,
            ["∅|∅|1950-01-01|male"]
        );
        let view = patients::read(&pool, &audit, &lead, Some(&key), "p1", "t", at(60))
            .await
            .unwrap();
        assert!(view.contact.is_none() && view.contact_erased_at.is_some());
        let actions = rows(
            &pool,
            "SELECT action FROM audit_log WHERE target LIKE 'patient/p1%' GROUP BY action",
            1,
        )
        .await;
        for a in [
            "patient.create",
            "patient.update",
            "patient.erase_contact",
            "patient.contact.read",
            "patient.read",
        ] {
            assert!(
                actions.iter().any(|x| x == a),
                "{}: {a} not audited: {actions:?}",
                b.name()
            );
        }
        let details = rows(&pool, "SELECT target, patients, action FROM audit_log", 3).await;
        assert!(
            details
                .iter()
                .all(|d| !d.contains("138001") && !d.contains("li.hua")),
            "contact details in the audit record"
        );
    }
}

#[tokio::test]
async fn lace_is_scored_from_the_hospital_facts_and_a_resent_message_changes_nothing() {
    for b in support::backends() {
        let Some((pool, programs)) = open(&b).await else {
            return;
        };
        let intake = IntakeRules::default();
        let h = Hospital {
            programs: &programs,
            intake: &intake,
            contact_key: None,
        };
        let lead = caller("lead");
        let mut tx = pool.begin().await.unwrap();
        let p = PatientUpsert {
            id: "p1".into(),
            birth_date: Some("1950-01-01".into()),
            ..Default::default()
        };
        hospital::upsert_patient(&mut tx, &h, &lead, &p, "t", at(-200 * DAY))
            .await
            .unwrap();
        // Four emergency visits in the six months before the admission, one before them.
        for (i, day) in [-200, -150, -100, -60, -20].iter().enumerate() {
            let v = visit(
                &format!("ed{i}"),
                EncounterClass::Emergency,
                day * DAY,
                None,
            );
            hospital::record_encounter(&mut tx, &h, &lead, &v, "test", "t", at(day * DAY))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        let (e, _) = store::enrol(&pool, &programs, "p1", "stroke", None, "admission", t0())
            .await
            .unwrap();
        // Admitted acutely with a stroke, heart failure and diabetes with complications:
        // Charlson 1 + 1 + 2 = 4.
        let mut admission = visit("v1", EncounterClass::Inpatient, 0, None);
        admission.diagnoses = vec![dx("I63.9", true), dx("I50.9", false), dx("E11.2", false)];
        let mut tx = pool.begin().await.unwrap();
        let r = hospital::record_encounter(&mut tx, &h, &lead, &admission, "test", "t", at(60))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(r.change.created && r.change.admitted && r.change.events_added == 1);
        assert_eq!(r.change.diagnoses_added, 3);

        // Discharged five days later; the same message twice adds one event.
        let discharge = visit("v1", EncounterClass::Inpatient, 0, Some(5 * DAY));
        for round in 0..2 {
            let mut tx = pool.begin().await.unwrap();
            let r = hospital::record_encounter(
                &mut tx,
                &h,
                &lead,
                &discharge,
                "test",
                "t",
                at(5 * DAY + 60),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            assert_eq!(r.change.discharged, round == 0, "{}", b.name());
            assert_eq!(r.change.events_added, u64::from(round == 0));
        }
        assert_eq!(
            scalar(
                &pool,
                &format!(
                    "SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'discharged'"
                )
            )
            .await,
            1
        );
        scheduler::advance(&pool, &programs, e, at(5 * DAY + 120))
            .await
            .unwrap();
        assert_eq!(
            rows(
                &pool,
                &format!(
                    "SELECT model, CAST(CAST(ROUND(score) AS INTEGER) AS TEXT), band FROM risk_predictions WHERE enrolment_id = {e}"
                ),
                3
            )
            .await,
            ["readmission|16|high"],
            "{}: LACE from the facts: 5 days (4), acute (3), Charlson 4 (5), four visits (4)",
            b.name()
        );
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM enrolments WHERE id = {e} AND state = 'high_risk_first_week'")
            )
            .await,
            1,
            "{}: the high-risk branch",
            b.name()
        );
    }
}

#[tokio::test]
async fn a_cancelled_discharge_is_voided_before_a_step_reads_it_and_told_after() {
    for b in support::backends() {
        let Some((pool, programs)) = open(&b).await else {
            return;
        };
        let intake = IntakeRules::default();
        let h = Hospital {
            programs: &programs,
            intake: &intake,
            contact_key: None,
        };
        let lead = caller("lead");
        support::add_patient(&pool, "p1", at(-DAY)).await;
        let (e, _) = store::enrol(&pool, &programs, "p1", "stroke", None, "admission", t0())
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        let v = visit("v1", EncounterClass::Inpatient, 0, Some(3 * DAY));
        hospital::record_encounter(&mut tx, &h, &lead, &v, "test", "t", at(3 * DAY))
            .await
            .unwrap();
        // Undone before any step read it: voided, nothing moves.
        let c = hospital::cancel(
            &mut tx,
            &h,
            &lead,
            "v1",
            Undo::Discharge,
            "t",
            at(3 * DAY + 60),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((c.voided_events, c.events_added), (1, 0), "{}", b.name());
        scheduler::advance(&pool, &programs, e, at(3 * DAY + 120))
            .await
            .unwrap();
        let state = rows(
            &pool,
            &format!("SELECT state FROM enrolments WHERE id = {e}"),
            1,
        )
        .await;
        assert_ne!(
            state,
            ["discharge_triage"],
            "{}: a voided discharge moved the pathway",
            b.name()
        );
        // A second cancel has nothing to undo.
        let mut tx = pool.begin().await.unwrap();
        let err = hospital::cancel(
            &mut tx,
            &h,
            &lead,
            "v1",
            Undo::Discharge,
            "t",
            at(3 * DAY + 180),
        )
        .await
        .expect_err("nothing to cancel");
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        tx.rollback().await.unwrap();

        // Discharged again and read by a step, then cancelled: the pathway is told.
        let mut tx = pool.begin().await.unwrap();
        let v = visit("v1", EncounterClass::Inpatient, 0, Some(4 * DAY));
        hospital::record_encounter(&mut tx, &h, &lead, &v, "test", "t", at(4 * DAY))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        scheduler::advance(&pool, &programs, e, at(4 * DAY + 60))
            .await
            .unwrap();
        let mut tx = pool.begin().await.unwrap();
        let c = hospital::cancel(
            &mut tx,
            &h,
            &lead,
            "v1",
            Undo::Discharge,
            "t",
            at(4 * DAY + 120),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((c.voided_events, c.events_added), (0, 1), "{}", b.name());
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e} AND name = 'discharge_cancelled'")
            )
            .await,
            1
        );
        // Another institution cannot cancel what it did not record.
        let mut tx = pool.begin().await.unwrap();
        let err = clinical::cancel(
            &mut tx,
            &caller("other_lead"),
            "v1",
            Undo::Admission,
            "t",
            at(5 * DAY),
        )
        .await
        .expect_err("not its encounter");
        assert!(matches!(err, StoreError::NotFound(_)), "{err}");
        tx.rollback().await.unwrap();
    }
}

#[tokio::test]
async fn an_event_sets_declared_variables_of_their_type_and_refuses_others() {
    for b in support::backends() {
        let Some((pool, programs)) = open(&b).await else {
            return;
        };
        support::add_patient(&pool, "p1", at(-DAY)).await;
        let (e, _) = store::enrol(&pool, &programs, "p1", "stroke", None, "admission", t0())
            .await
            .unwrap();
        let lead = caller("lead");
        let post = |data: serde_json::Value| {
            let pool = pool.clone();
            let programs = programs.clone();
            let lead = lead.clone();
            async move {
                let data = data.as_object().cloned().unwrap();
                queries::event_scoped(
                    &pool,
                    &programs,
                    &lead,
                    &queries::ReportedEvent {
                        enrolment: e,
                        name: "admitted",
                        at: at(60),
                        data: Some(&data),
                    },
                    "t",
                    at(60),
                )
                .await
            }
        };
        for (bad, names) in [
            (serde_json::json!({"charlson": "four"}), "charlson"),
            (serde_json::json!({"charlson": 2.5}), "charlson"),
            (serde_json::json!({"acute_admission": 1}), "acute_admission"),
            (serde_json::json!({"no_such": 1}), "no_such"),
        ] {
            let err = post(bad.clone()).await.expect_err("refused");
            assert!(
                matches!(&err, StoreError::Invalid(m) if m.contains(names)),
                "{}: {bad}: {err}",
                b.name()
            );
        }
        assert_eq!(
            scalar(
                &pool,
                &format!("SELECT COUNT(*) FROM events WHERE enrolment_id = {e}")
            )
            .await,
            0,
            "a refused event writes nothing"
        );
        post(serde_json::json!({"charlson": 3, "ed_visits": 2}))
            .await
            .unwrap();
        scheduler::advance(&pool, &programs, e, at(120))
            .await
            .unwrap();
        let vars = rows(
            &pool,
            &format!("SELECT vars FROM enrolments WHERE id = {e}"),
            1,
        )
        .await;
        let vars: serde_json::Value = serde_json::from_str(&vars[0]).unwrap();
        assert_eq!(vars["charlson"], 3, "{}: {vars}", b.name());
        assert_eq!(vars["ed_visits"], 2);
    }
}
