//! Patients as the admin API registers and reads them: scoped to the caller's institution and
//! audited (a registration in its own transaction, a read before it is returned).

use jiff::Timestamp;
use serde::Serialize;

use super::queries::{AuditAppender, AuditEntry, Caller, patient_visible, visible_patient};
use super::{
    NewEnrolment, NewPatient, Pool, Result, StoreError, Written, enrol_tx, insert_patient,
};
use crate::args;
use crate::program::Programs;

/// Registers `p` (in the caller's institution, which `p` names); `Conflict` when the id is taken.
pub async fn register(
    pool: &Pool,
    caller: &Caller,
    p: &NewPatient,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    if tx
        .fetch_one("SELECT 1 FROM patients WHERE id = $1", args![&p.id])
        .await?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "patient {} already exists",
            p.id
        )));
    }
    insert_patient(&mut tx, p, now).await?;
    caller
        .audit_ok(
            &mut tx,
            "patient.create",
            &format!("patient/{}", p.id),
            std::slice::from_ref(&p.id),
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A patient and their enrolments, as the API shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PatientView {
    pub id: String,
    pub institution_id: String,
    pub birth_date: Option<String>,
    pub sex: String,
    pub tz: String,
    pub enrolments: Vec<EnrolmentSummary>,
}

/// One enrolment of a patient, in a [`PatientView`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnrolmentSummary {
    pub id: i64,
    pub pathway: String,
    pub version: i64,
    pub state: String,
    pub status: String,
    pub institution_id: String,
}

/// A patient visible to the caller, with their enrolments; `NotFound` (audited as such) when
/// there is none. Audited before it is returned.
pub async fn read(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    id: &str,
    remote: &str,
    now: Timestamp,
) -> Result<PatientView> {
    let sql = format!(
        "SELECT p.id, p.institution_id, p.birth_date, p.sex, p.tz FROM patients p WHERE p.id = $1 AND {}",
        visible_patient(2)
    );
    let rows = pool.fetch(&sql, args![id, &caller.institution_id]).await?;
    let entry = |patients: &[String], outcome: &str| {
        AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            "patient.read",
            &format!("patient/{id}"),
            patients,
            outcome,
            remote,
            now,
        )
    };
    let Some(p) = rows.first() else {
        audit.append(entry(&[], "not_found")).await?;
        return Err(StoreError::NotFound(format!("patient {id}")));
    };
    let enrolments = pool
        .fetch(
            "SELECT id, pathway_id, version, state, status, institution_id FROM enrolments WHERE patient_id = $1 ORDER BY id",
            args![id],
        )
        .await?
        .iter()
        .map(|e| EnrolmentSummary {
            id: e.i64(0),
            pathway: e.text(1),
            version: e.i64(2),
            state: e.text(3),
            status: e.text(4),
            institution_id: e.text(5),
        })
        .collect();
    audit.append(entry(&[id.to_string()], "ok")).await?;
    Ok(PatientView {
        id: p.text(0),
        institution_id: p.text(1),
        birth_date: p.opt_text(2),
        sex: p.text(3),
        tz: p.text(4),
        enrolments,
    })
}

/// Enrols a patient visible to the caller (`NotFound` otherwise) and commits the first step with
/// its audit entry, in one transaction.
pub async fn enrol(
    pool: &Pool,
    programs: &Programs,
    caller: &Caller,
    new: &NewEnrolment,
    remote: &str,
) -> Result<(i64, Written)> {
    if !patient_visible(pool, caller, &new.patient_id).await? {
        return Err(StoreError::NotFound(format!("patient {}", new.patient_id)));
    }
    let mut tx = pool.begin().await?;
    let (id, written) = enrol_tx(
        &mut tx,
        programs,
        &new.patient_id,
        &new.pathway_id,
        new.version,
        &new.entry,
        new.at,
    )
    .await?;
    caller
        .audit_ok(
            &mut tx,
            "enrolment.create",
            &format!("enrolment/{id}"),
            std::slice::from_ref(&new.patient_id),
            remote,
            new.at,
        )
        .await?;
    tx.commit().await?;
    Ok((id, written))
}
