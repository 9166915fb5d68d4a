//! Applying an ADT message: the sending facility is the caller, the change and the record of the
//! message commit in one transaction, and every outcome is an acknowledgement — never a panic and
//! never a dropped connection.
//!
//! De-duplication is keyed on (`hl7:<facility>`, MSH-10) and read in the same transaction that
//! applies the change, so a resend is answered with the first acknowledgement and changes
//! nothing. Only accepted messages are recorded: a message refused or failed can be resent once
//! its cause is fixed.

use jiff::Timestamp;

use super::ack::{self, AckCode};
use super::adt::{Adt, PatientClass, Trigger};
use super::{Problem, read};
use crate::hospital::{self, Hospital};
use crate::store::clinical::{self, DiagnosisIn, EncounterClass, EncounterIn, Undo};
use crate::store::crypto::Contact;
use crate::store::patients::{self, PatientUpsert};
use crate::store::queries::Caller;
use crate::store::{Pool, StoreError};

/// The acknowledgement of `raw` (one unframed message) after applying it.
pub async fn handle(
    pool: &Pool,
    hospital: &Hospital<'_>,
    remote: &str,
    raw: &[u8],
    now: Timestamp,
) -> Vec<u8> {
    let adt = match read(raw) {
        Ok(adt) => adt,
        Err(refused) => {
            tracing::info!(
                control_id = %refused.header.control_id,
                trigger = %refused.header.trigger_code,
                outcome = "AR",
                code = refused.problem.code,
                "HL7 message refused"
            );
            return ack::build(
                &refused.header,
                AckCode::Rejected,
                Some(&refused.problem),
                now,
            );
        }
    };
    let (code, problem, response) = match apply(pool, hospital, remote, &adt, now).await {
        Ok(Applied::Done(text)) => (AckCode::Accepted, None, Some(text)),
        Ok(Applied::Repeat(text)) => {
            tracing::info!(
                control_id = %adt.header.control_id,
                trigger = adt.trigger.as_str(),
                outcome = "AA",
                "HL7 message already applied; the first acknowledgement is repeated"
            );
            return adt.header.charset.encode(&text);
        }
        Err((code, problem)) => (code, Some(problem), None),
    };
    tracing::info!(
        control_id = %adt.header.control_id,
        trigger = adt.trigger.as_str(),
        outcome = code.as_str(),
        code = problem.as_ref().map(|p| p.code),
        "HL7 message"
    );
    match response {
        Some(text) => adt.header.charset.encode(&text),
        None => ack::build(&adt.header, code, problem.as_ref(), now),
    }
}

enum Applied {
    /// Applied now; the acknowledgement recorded with it.
    Done(String),
    /// Applied before; the acknowledgement sent then.
    Repeat(String),
}

async fn apply(
    pool: &Pool,
    hospital: &Hospital<'_>,
    remote: &str,
    adt: &Adt,
    now: Timestamp,
) -> Result<Applied, (AckCode, Problem)> {
    let facility = &adt.header.sending_facility;
    let known = crate::store::indicators::institutions(pool, Some(facility))
        .await
        .map_err(|e| failed(&e))?;
    if known.is_empty() {
        return Err((
            AckCode::Rejected,
            Problem::unknown_key(
                "MSH-4",
                format!(
                    "unknown sending facility `{}`: MSH-4 must name a carepath institution",
                    super::message::printable(facility)
                ),
            ),
        ));
    }
    let upsert = patient_upsert(hospital, adt);
    if let Some(p) = &upsert
        && let Err(e) = patients::check_upsert(p, now.to_zoned(jiff::tz::TimeZone::UTC).date())
    {
        return Err((
            AckCode::Rejected,
            Problem::data_type("PID", format!("PID: {e}")),
        ));
    }
    let caller = Caller {
        staff_id: format!("hl7:{}", adt.header.sending_application),
        institution_id: facility.clone(),
        roles: Vec::new(),
    };
    let source = format!("hl7:{facility}");
    let control_id = &adt.header.control_id;
    let mut tx = pool.begin().await.map_err(|e| failed(&e.into()))?;
    if let Some(first) = clinical::message_seen(&mut tx, &source, control_id)
        .await
        .map_err(|e| failed(&e))?
    {
        return Ok(Applied::Repeat(first));
    }
    let response = ack::text(&adt.header, AckCode::Accepted, None, now);
    // The record goes in first: a copy of this message applied concurrently on another
    // connection waits on its key (PostgreSQL) and then reads that copy's acknowledgement
    // instead of its own; a failure below rolls the record back with the change.
    clinical::record_message(&mut tx, &source, control_id, "AA", &response, now)
        .await
        .map_err(|e| failed(&e))?;
    match clinical::message_seen(&mut tx, &source, control_id)
        .await
        .map_err(|e| failed(&e))?
    {
        Some(stored) if stored == response => {}
        Some(first) => return Ok(Applied::Repeat(first)),
        None => {
            return Err(failed(&StoreError::Conflict(
                "the message could not be recorded; resend it".into(),
            )));
        }
    }
    if let Some(upsert) = &upsert {
        // A transfer or discharge creates a patient the feed never admitted here (a feed started
        // mid-stay), but does not change a known one: its PID is who the visit is for.
        let known = patients::exists(&mut tx, &upsert.id)
            .await
            .map_err(|e| failed(&e))?;
        if !(known && matches!(adt.trigger, Trigger::A02 | Trigger::A03)) {
            hospital::upsert_patient(&mut tx, hospital, &caller, upsert, remote, now)
                .await
                .map_err(|e| failed(&e))?;
        }
    }
    change(&mut tx, hospital, &caller, adt, &source, remote, now).await?;
    tx.commit().await.map_err(|e| failed(&e.into()))?;
    Ok(Applied::Done(response))
}

/// What the trigger changes in encounters, in `tx` (after the patient, if the message carries one).
async fn change(
    tx: &mut crate::store::Tx,
    hospital: &Hospital<'_>,
    caller: &Caller,
    adt: &Adt,
    source: &str,
    remote: &str,
    now: Timestamp,
) -> Result<(), (AckCode, Problem)> {
    let Some(visit) = &adt.visit else {
        return Ok(());
    };
    let Some(identifier) = &visit.visit_number else {
        return Ok(());
    };
    match adt.trigger {
        Trigger::A01 | Trigger::A02 | Trigger::A03 | Trigger::A04 => {
            let encounter = EncounterIn {
                identifier: identifier.clone(),
                patient_id: adt.patient.id.clone(),
                class: match visit.class {
                    PatientClass::Inpatient => EncounterClass::Inpatient,
                    PatientClass::Outpatient => EncounterClass::Outpatient,
                    PatientClass::Emergency => EncounterClass::Emergency,
                },
                department: visit.department.clone(),
                acute: visit.acute,
                admitted_at: visit
                    .admitted_at
                    .or((adt.trigger == Trigger::A01).then_some(now)),
                discharged_at: visit
                    .discharged_at
                    .or((adt.trigger == Trigger::A03).then_some(now)),
                diagnoses: adt
                    .diagnoses
                    .iter()
                    .map(|d| DiagnosisIn {
                        code: d.code.clone(),
                        principal: d.principal,
                    })
                    .collect(),
            };
            hospital::record_encounter(tx, hospital, caller, &encounter, source, remote, now)
                .await
                .map_err(|e| failed(&e))?;
        }
        Trigger::A11 => {
            hospital::cancel(
                tx,
                hospital,
                caller,
                identifier,
                Undo::Admission,
                remote,
                now,
            )
            .await
            .map_err(|e| failed(&e))?;
        }
        Trigger::A13 => {
            hospital::cancel(
                tx,
                hospital,
                caller,
                identifier,
                Undo::Discharge,
                remote,
                now,
            )
            .await
            .map_err(|e| failed(&e))?;
        }
        Trigger::A08 => {}
    }
    Ok(())
}

/// The patient as A01, A04 and A08 create or update them, and A02 and A03 create them when
/// unknown; contact details only with a key to seal them.
fn patient_upsert(hospital: &Hospital<'_>, adt: &Adt) -> Option<PatientUpsert> {
    if !matches!(
        adt.trigger,
        Trigger::A01 | Trigger::A02 | Trigger::A03 | Trigger::A04 | Trigger::A08
    ) {
        return None;
    }
    let p = &adt.patient;
    let details = p.name.is_some() || p.phone.is_some() || p.email.is_some();
    let contact = match hospital.contact_key {
        Some(_) if details => Some(Contact {
            phone: p.phone.clone(),
            email: p.email.clone(),
            wechat_openid: None,
            name: p.name.clone(),
            lang: p.lang.clone(),
        }),
        None if details => {
            tracing::warn!(
                control_id = %adt.header.control_id,
                "contact details in PID are ignored: no contact key is configured (CAREPATH_CONTACT_KEY)"
            );
            None
        }
        _ => None,
    };
    Some(PatientUpsert {
        id: p.id.clone(),
        birth_date: p.birth_date.clone(),
        sex: p.sex.map(|s| s.as_str().to_owned()),
        tz: None,
        contact,
        preferred_channel: None,
        lang: p.lang.clone(),
        home_institution: None,
    })
}

/// A store error as an `AE`: the reason for what the sender can fix, a plain one otherwise.
fn failed(e: &StoreError) -> (AckCode, Problem) {
    if let StoreError::Db(db) = e {
        tracing::error!("an HL7 message could not be applied: {db}");
    }
    let problem = match e {
        StoreError::NotFound(_) => Problem::unknown_key("", e.to_string()),
        StoreError::Invalid(_) | StoreError::Conflict(_) | StoreError::Forbidden(_) => {
            Problem::application(e.to_string())
        }
        _ => Problem::application(
            "carepath could not apply the message (a storage error); resend it later".into(),
        ),
    };
    (AckCode::Error, problem)
}
