//! Patients as the admin API registers and reads them: scoped to the caller's institution and
//! audited (a registration in its own transaction, a read before it is returned).

use jiff::Timestamp;
use serde::Serialize;

use super::queries::{AuditAppender, AuditEntry, Caller, patient_visible, visible_patient};
use super::{
    MAX_CLOCK_SKEW_SECONDS, NewEnrolment, NewPatient, Pool, Result, StoreError, Written,
    enrol_many, insert_patient,
};
use crate::args;
use crate::program::Programs;

/// Registers `p` (in the caller's institution, which `p` names); `Conflict` when the id is taken,
/// `Invalid` when its home institution is not a community institution of the caller's alliance.
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
    if let Some(home) = &p.home_institution {
        check_home(&mut tx, &p.institution_id, home).await?;
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

/// The kinds of institution a patient's home community institution may be.
pub const COMMUNITY_KINDS: [&str; 2] = ["community_clinic", "township_hospital"];

/// `home` must be a community clinic or township hospital in the alliance of `institution` (the
/// same lead: the institution itself, or its parent).
async fn check_home(tx: &mut super::Tx, institution: &str, home: &str) -> Result<()> {
    let row = tx
        .fetch_one(
            "SELECT h.kind, COALESCE(h.parent_id, h.id), COALESCE(me.parent_id, me.id) \
             FROM institutions h, institutions me WHERE h.id = $1 AND me.id = $2",
            args![home, institution],
        )
        .await?;
    let Some(row) = row else {
        return Err(StoreError::Invalid(format!(
            "home_institution `{home}` is not an institution"
        )));
    };
    if !COMMUNITY_KINDS.contains(&row.text(0).as_str()) {
        return Err(StoreError::Invalid(format!(
            "home_institution `{home}` is a {}; a patient's home is a community clinic or township hospital",
            row.text(0)
        )));
    }
    if row.text(1) != row.text(2) {
        return Err(StoreError::Invalid(format!(
            "home_institution `{home}` is not in this institution's alliance"
        )));
    }
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
    /// The patient's home community institution, if any.
    pub home_institution: Option<String>,
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
        "SELECT p.id, p.institution_id, p.birth_date, p.sex, p.tz, p.home_institution FROM patients p WHERE p.id = $1 AND {}",
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
        home_institution: p.opt_text(5),
        enrolments,
    })
}

/// How far in the past an enrolment may be dated (`POST /enrolments` with `at`).
pub const MAX_BACKDATE_DAYS: i64 = 30;

/// Enrols a patient visible to the caller (`NotFound` otherwise) and commits the first step with
/// its audit entry, in one transaction. `new.at` may lie up to [`MAX_BACKDATE_DAYS`] before
/// `now` (the enrolment then catches up from it to `now`, every check instant in order) and no
/// more than the tolerated clock skew after it (taken as `now`); outside that, `Invalid`.
pub async fn enrol(
    pool: &Pool,
    programs: &Programs,
    caller: &Caller,
    new: &NewEnrolment,
    remote: &str,
    now: Timestamp,
) -> Result<(i64, Written)> {
    let earliest = now.as_second() - MAX_BACKDATE_DAYS * 86_400;
    if new.at.as_second() > now.as_second() + MAX_CLOCK_SKEW_SECONDS {
        return Err(StoreError::Invalid(format!(
            "`at` {} is in the future (now is {now}); an enrolment starts now or in the past",
            new.at
        )));
    }
    if new.at.as_second() < earliest {
        return Err(StoreError::Invalid(format!(
            "`at` {} is more than {MAX_BACKDATE_DAYS} days before now ({now}); enrol from {} at the earliest",
            new.at,
            super::ts(earliest)
        )));
    }
    if !patient_visible(pool, caller, &new.patient_id).await? {
        return Err(StoreError::NotFound(format!("patient {}", new.patient_id)));
    }
    let new = NewEnrolment {
        at: new.at.min(now),
        catch_up_to: Some(now),
        ..new.clone()
    };
    let mut tx = pool.begin().await?;
    let (ids, written) = enrol_many(&mut tx, programs, std::slice::from_ref(&new)).await?;
    let id = ids
        .first()
        .copied()
        .ok_or_else(|| StoreError::Invalid("insert returned no id".into()))?;
    caller
        .audit_ok(
            &mut tx,
            "enrolment.create",
            &format!("enrolment/{id}"),
            std::slice::from_ref(&new.patient_id),
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok((id, written))
}
