//! Case intake (收案): the candidates intake rules found, and the case manager's queue of them.
//!
//! A candidate row is written in the transaction of the hospital fact that raised it, keyed by
//! (rule, patient, encounter), so a resent message finds its row and does nothing twice. An
//! automatic rule's candidate is accepted at once by the rule (`decided_by = rule:<id>`); a
//! review rule's waits, pending, for a case manager of the same institution to accept (which
//! enrols, in the transaction of the decision and its audit entry) or reject with a reason.
//! Candidates of another institution answer 404.

use jiff::Timestamp;
use serde::Serialize;

use super::patients::MAX_BACKDATE_DAYS;
use super::queries::{AuditAppender, AuditEntry, Caller, Refusal};
use super::{NewEnrolment, Pool, Result, StoreError, Tx, enrol_many, ts};
use crate::args;
use crate::program::Programs;

/// A candidate to record for [`record_candidate`].
#[derive(Debug, Clone)]
pub struct NewCandidate<'a> {
    pub institution_id: &'a str,
    pub patient_id: &'a str,
    pub encounter_id: Option<i64>,
    pub rule: &'a str,
    pub pathway_id: &'a str,
    pub entry: &'a str,
    /// The instant of the hospital fact that raised it (an admission, a discharge, a visit):
    /// an accepted candidate's enrolment starts there.
    pub at: Timestamp,
}

/// Records a pending candidate; `None` when (rule, patient, encounter) is already recorded.
pub async fn record_candidate(tx: &mut Tx, c: &NewCandidate<'_>) -> Result<Option<i64>> {
    let row = tx
        .fetch_one(
            "INSERT INTO intake_candidates (institution_id, patient_id, encounter_id, rule, pathway_id, entry, status, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) ON CONFLICT DO NOTHING RETURNING id",
            args![
                c.institution_id,
                c.patient_id,
                c.encounter_id,
                c.rule,
                c.pathway_id,
                c.entry,
                c.at.as_second()
            ],
        )
        .await?;
    Ok(row.map(|r| r.i64(0)))
}

/// The pathways a patient is actively enrolled in.
pub async fn active_pathways(tx: &mut Tx, patient_id: &str) -> Result<Vec<String>> {
    Ok(tx
        .fetch(
            "SELECT DISTINCT pathway_id FROM enrolments WHERE patient_id = $1 AND status = 'active' ORDER BY pathway_id",
            args![patient_id],
        )
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect())
}

/// When an enrolment started (after the store's bounds on dating it).
pub async fn enrolled_at(tx: &mut Tx, enrolment: i64) -> Result<Option<Timestamp>> {
    Ok(tx
        .fetch_one(
            "SELECT enrolled_at FROM enrolments WHERE id = $1",
            args![enrolment],
        )
        .await?
        .map(|r| ts(r.i64(0))))
}

/// What intake rules read of a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// ISO date, if known.
    pub birth_date: Option<String>,
    /// `female`, `male` or `unknown`.
    pub sex: String,
    /// The patient's IANA time zone (ages are counted in it).
    pub tz: String,
}

pub async fn patient_profile(tx: &mut Tx, patient_id: &str) -> Result<Option<Profile>> {
    Ok(tx
        .fetch_one(
            "SELECT birth_date, sex, tz FROM patients WHERE id = $1",
            args![patient_id],
        )
        .await?
        .map(|r| Profile {
            birth_date: r.opt_text(0),
            sex: r.text(1),
            tz: r.text(2),
        }))
}

/// Enrols a candidate's patient at `at` (no earlier than the store lets an enrolment be dated,
/// no later than `now`), catching up to `now`, and marks the candidate accepted by `decided_by`:
/// the enrolment, the decision and its audit entry are in the caller's transaction.
#[allow(clippy::too_many_arguments)]
pub async fn enrol_candidate(
    tx: &mut Tx,
    programs: &Programs,
    caller: &Caller,
    candidate: i64,
    patient_id: &str,
    pathway_id: &str,
    entry: &str,
    at: Timestamp,
    decided_by: &str,
    remote: &str,
    now: Timestamp,
) -> Result<i64> {
    let earliest = ts(now.as_second() - MAX_BACKDATE_DAYS * 86_400);
    let new = NewEnrolment {
        patient_id: patient_id.to_string(),
        pathway_id: pathway_id.to_string(),
        version: None,
        entry: entry.to_string(),
        at: at.clamp(earliest, now),
        catch_up_to: Some(now),
    };
    let (ids, _) = enrol_many(tx, programs, std::slice::from_ref(&new)).await?;
    let enrolment = ids
        .first()
        .copied()
        .ok_or_else(|| StoreError::Invalid("insert returned no id".into()))?;
    let changed = tx
        .exec(
            "UPDATE intake_candidates SET status = 'accepted', enrolment_id = $1, decided_by = $2, decided_at = $3 \
             WHERE id = $4 AND status = 'pending'",
            args![enrolment, decided_by, now.as_second(), candidate],
        )
        .await?;
    if changed != 1 {
        return Err(StoreError::Conflict(format!(
            "intake candidate {candidate} was decided by another action; reload it"
        )));
    }
    let patients = [patient_id.to_string()];
    caller
        .audit_ok(
            tx,
            "enrolment.create",
            &format!("enrolment/{enrolment}"),
            &patients,
            remote,
            now,
        )
        .await?;
    caller
        .audit_ok(
            tx,
            "intake.accept",
            &format!("intake/{candidate}"),
            &patients,
            remote,
            now,
        )
        .await?;
    Ok(enrolment)
}

/// The statuses a candidate can have.
pub const CANDIDATE_STATUSES: &[&str] = &["pending", "accepted", "rejected", "cancelled"];

/// One candidate, as the intake queue shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CandidateView {
    pub id: i64,
    pub patient_id: String,
    pub rule: String,
    pub pathway_id: String,
    pub entry: String,
    pub status: String,
    /// The hospital fact's instant (admission, discharge or visit).
    pub created_at: String,
    pub encounter_id: Option<i64>,
    /// The encounter as the hospital names it, its class and department.
    pub encounter: Option<String>,
    pub class: Option<String>,
    pub department: Option<String>,
    pub enrolment_id: Option<i64>,
    pub decided_by: Option<String>,
    pub decided_at: Option<String>,
    pub reason: Option<String>,
}

const COLUMNS: &str = "c.id, c.patient_id, c.rule, c.pathway_id, c.entry, c.status, c.created_at, c.encounter_id, \
     e.identifier, e.class, e.department, c.enrolment_id, c.decided_by, c.decided_at, c.reason";

fn view(r: &crate::Row) -> CandidateView {
    CandidateView {
        id: r.i64(0),
        patient_id: r.text(1),
        rule: r.text(2),
        pathway_id: r.text(3),
        entry: r.text(4),
        status: r.text(5),
        created_at: ts(r.i64(6)).to_string(),
        encounter_id: r.opt_i64(7),
        encounter: r.opt_text(8),
        class: r.opt_text(9),
        department: r.opt_text(10),
        enrolment_id: r.opt_i64(11),
        decided_by: r.opt_text(12),
        decided_at: r.opt_i64(13).map(|t| ts(t).to_string()),
        reason: r.opt_text(14),
    }
}

/// Which candidates to list.
#[derive(Debug, Clone, Default)]
pub struct CandidateFilter {
    /// One status, or every status (pending first) when `None`.
    pub status: Option<String>,
    pub limit: i64,
}

/// The candidates of the caller's institution, pending first, then the newest; audited with the
/// patients listed before they are returned.
pub async fn list(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    f: &CandidateFilter,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<CandidateView>> {
    let mut a = args![&caller.institution_id, f.limit];
    let mut sql = format!(
        "SELECT {COLUMNS} FROM intake_candidates c LEFT JOIN encounters e ON e.id = c.encounter_id \
         WHERE c.institution_id = $1"
    );
    if let Some(status) = &f.status {
        if !CANDIDATE_STATUSES.contains(&status.as_str()) {
            return Err(StoreError::Invalid(format!(
                "status must be one of {}",
                CANDIDATE_STATUSES.join(", ")
            )));
        }
        a.push(crate::Arg::T(status.clone()));
        sql.push_str(" AND c.status = $3");
    }
    sql.push_str(
        " ORDER BY CASE WHEN c.status = 'pending' THEN 0 ELSE 1 END, c.created_at DESC, c.id DESC LIMIT $2",
    );
    let rows: Vec<CandidateView> = pool.fetch(&sql, a).await?.iter().map(view).collect();
    let mut patients: Vec<String> = rows.iter().map(|r| r.patient_id.clone()).collect();
    patients.sort();
    patients.dedup();
    audit
        .append(AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            "intake.list",
            "intake",
            &patients,
            "ok",
            remote,
            now,
        ))
        .await?;
    Ok(rows)
}

/// What a decision on a candidate did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decided {
    pub candidate: i64,
    /// `accepted` or `rejected`.
    pub status: &'static str,
    /// The enrolment an acceptance made.
    pub enrolment_id: Option<i64>,
}

/// A pending candidate of the caller's institution, read (under a row lock on PostgreSQL) in the
/// decision's transaction; refusals are audited there.
async fn pending(
    tx: &mut Tx,
    caller: &Caller,
    candidate: i64,
) -> Result<std::result::Result<crate::Row, (Vec<String>, &'static str, StoreError)>> {
    let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
    let row = tx
        .fetch_one(
            &format!(
                "SELECT patient_id, pathway_id, entry, status, created_at FROM intake_candidates \
                 WHERE id = $1 AND institution_id = $2{lock}"
            ),
            args![candidate, &caller.institution_id],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err((
            vec![],
            "not_found",
            StoreError::NotFound(format!("intake candidate {candidate}")),
        )));
    };
    let status = row.text(3);
    if status != "pending" {
        return Ok(Err((
            vec![row.text(0)],
            "conflict",
            StoreError::Conflict(format!("intake candidate {candidate} is already {status}")),
        )));
    }
    Ok(Ok(row))
}

/// Accepts a pending candidate: enrols the patient in its pathway at its entry point, dated at
/// the hospital fact that raised it and caught up to now, in one transaction with the decision
/// and its audit entries. A patient already actively enrolled in the pathway is a conflict.
pub async fn accept(
    pool: &Pool,
    programs: &Programs,
    caller: &Caller,
    candidate: i64,
    remote: &str,
    now: Timestamp,
) -> Result<Decided> {
    let target = format!("intake/{candidate}");
    let refused = Refusal {
        caller,
        action: "intake.accept",
        target: &target,
        remote,
        now,
    };
    let mut tx = pool.begin().await?;
    let row = match pending(&mut tx, caller, candidate).await? {
        Ok(row) => row,
        Err((patients, outcome, err)) => return refused.answer(tx, patients, outcome, err).await,
    };
    let (patient, pathway, entry) = (row.text(0), row.text(1), row.text(2));
    if active_pathways(&mut tx, &patient).await?.contains(&pathway) {
        let err = StoreError::Conflict(format!(
            "the patient is already enrolled in {pathway}; reject the candidate instead"
        ));
        return refused.answer(tx, vec![patient], "conflict", err).await;
    }
    let enrolment = match enrol_candidate(
        &mut tx,
        programs,
        caller,
        candidate,
        &patient,
        &pathway,
        &entry,
        ts(row.i64(4)),
        &caller.staff_id,
        remote,
        now,
    )
    .await
    {
        Ok(id) => id,
        Err(err @ (StoreError::NotFound(_) | StoreError::Invalid(_))) => {
            // The pathway or its entry point is no longer published: nothing is written.
            tx.rollback().await?;
            let tx = pool.begin().await?;
            return refused.answer(tx, vec![patient], "invalid", err).await;
        }
        Err(e) => return Err(e),
    };
    tx.commit().await?;
    Ok(Decided {
        candidate,
        status: "accepted",
        enrolment_id: Some(enrolment),
    })
}

/// Rejects a pending candidate with the case manager's reason (required, not blank), audited in
/// the same transaction.
pub async fn reject(
    pool: &Pool,
    caller: &Caller,
    candidate: i64,
    reason: &str,
    remote: &str,
    now: Timestamp,
) -> Result<Decided> {
    let target = format!("intake/{candidate}");
    let refused = Refusal {
        caller,
        action: "intake.reject",
        target: &target,
        remote,
        now,
    };
    let mut tx = pool.begin().await?;
    let row = match pending(&mut tx, caller, candidate).await? {
        Ok(row) => row,
        Err((patients, outcome, err)) => return refused.answer(tx, patients, outcome, err).await,
    };
    let patients = vec![row.text(0)];
    let reason = reason.trim();
    if reason.is_empty() {
        let err = StoreError::Invalid("rejecting a candidate needs a `reason`".into());
        return refused.answer(tx, patients, "invalid", err).await;
    }
    let changed = tx
        .exec(
            "UPDATE intake_candidates SET status = 'rejected', reason = $1, decided_by = $2, decided_at = $3 \
             WHERE id = $4 AND status = 'pending'",
            args![reason, &caller.staff_id, now.as_second(), candidate],
        )
        .await?;
    if changed != 1 {
        let err = StoreError::Conflict(format!(
            "intake candidate {candidate} was decided by another action; reload it"
        ));
        return refused.answer(tx, patients, "conflict", err).await;
    }
    caller
        .audit_ok(&mut tx, "intake.reject", &target, &patients, remote, now)
        .await?;
    tx.commit().await?;
    Ok(Decided {
        candidate,
        status: "rejected",
        enrolment_id: None,
    })
}
