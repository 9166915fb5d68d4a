//! Reads and writes behind the admin API: scoped by institution, audited, paginated by key.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Pool, Result, StoreError, Tx, add_event};
use crate::args;
use crate::store::db::Arg;

/// Who is calling: resolved from a token.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub staff_id: String,
    pub institution_id: String,
    pub roles: Vec<String>,
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub async fn caller_for_token(pool: &Pool, token: &str) -> Result<Option<Caller>> {
    let rows = pool
        .fetch(
            "SELECT id, institution_id, roles FROM staff WHERE token_hash = $1",
            args![token_hash(token)],
        )
        .await?;
    Ok(rows.first().map(|r| Caller {
        staff_id: r.text(0),
        institution_id: r.text(1),
        roles: r.text(2).split(',').map(str::to_string).collect(),
    }))
}

/// SQL condition: patient `p` is visible to institution `$n` (its own patients, patients of the
/// clinics it leads, and patients referred to it).
pub fn visible_patient(n: usize) -> String {
    format!(
        "(p.institution_id = ${n} OR EXISTS (SELECT 1 FROM institutions i WHERE i.id = p.institution_id AND i.parent_id = ${n}) \
         OR EXISTS (SELECT 1 FROM referrals r WHERE r.patient_id = p.id AND r.to_institution = ${n}))"
    )
}

pub async fn patient_visible(pool: &Pool, caller: &Caller, patient: &str) -> Result<bool> {
    let sql = format!(
        "SELECT 1 FROM patients p WHERE p.id = $1 AND {}",
        visible_patient(2)
    );
    Ok(!pool
        .fetch(&sql, args![patient, &caller.institution_id])
        .await?
        .is_empty())
}

/// Appends one audit entry, chained to the previous one by hash. Runs inside the caller's
/// transaction, so a write and its audit entry commit together.
// The audit row's fields are all required; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub async fn audit(
    tx: &mut Tx,
    caller: &str,
    institution: Option<&str>,
    action: &str,
    target: &str,
    patients: &[String],
    outcome: &str,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    if tx.is_postgres() {
        // One appender at a time keeps the chain linear; the lock ends with the transaction.
        tx.exec("SELECT pg_advisory_xact_lock(7361)", vec![])
            .await?;
    }
    let prev = tx
        .fetch_one(
            "SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1",
            vec![],
        )
        .await?
        .map(|r| r.text(0))
        .unwrap_or_else(|| "genesis".into());
    let patients_json = serde_json::to_string(patients).unwrap_or_default();
    let hash = chain_hash(
        &prev,
        now.as_second(),
        caller,
        institution.unwrap_or(""),
        action,
        target,
        &patients_json,
        outcome,
    );
    tx.exec(
        "INSERT INTO audit_log (at, actor, institution_id, action, target, patients, outcome, remote, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        args![now.as_second(), caller, institution.map(str::to_string), action, target, patients_json, outcome, remote, prev, hash],
    )
    .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn chain_hash(
    prev: &str,
    at: i64,
    actor: &str,
    inst: &str,
    action: &str,
    target: &str,
    patients: &str,
    outcome: &str,
) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &at.to_string(),
        actor,
        inst,
        action,
        target,
        patients,
        outcome,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Checks the audit chain end to end; returns the number of entries, or the first broken one.
pub async fn verify_audit(pool: &Pool) -> Result<std::result::Result<u64, String>> {
    let rows = pool.fetch("SELECT id, at, actor, institution_id, action, target, patients, outcome, prev_hash, hash FROM audit_log ORDER BY id", vec![]).await?;
    let mut prev = "genesis".to_string();
    for r in &rows {
        if r.text(8) != prev {
            return Ok(Err(format!(
                "entry {} does not follow the entry before it",
                r.i64(0)
            )));
        }
        let h = chain_hash(
            &prev,
            r.i64(1),
            &r.text(2),
            &r.text(3),
            &r.text(4),
            &r.text(5),
            &r.text(6),
            &r.text(7),
        );
        if h != r.text(9) {
            return Ok(Err(format!(
                "entry {} was altered (hash mismatch)",
                r.i64(0)
            )));
        }
        prev = h;
    }
    Ok(Ok(rows.len() as u64))
}

/// A page of the caller's institution's task queue.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub role: Option<String>,
    pub status: Option<String>,
    pub assignee: Option<String>,
    pub due_before: Option<i64>,
    pub due_after: Option<i64>,
    /// Keyset cursor: (priority, due_at, id) of the last row of the previous page.
    pub after: Option<(i64, i64, i64)>,
    pub limit: i64,
}

pub async fn queue(pool: &Pool, caller: &Caller, f: &QueueFilter) -> Result<Vec<Value>> {
    let mut sql = String::from(
        "SELECT t.id, t.enrolment_id, t.patient_id, t.role, t.title_zh, t.title_en, t.priority, t.status, t.due_at, t.assignee, t.task_ref, t.created_at, t.lease_until \
         FROM tasks t WHERE t.institution_id = $1",
    );
    let mut a: Vec<Arg> = vec![Arg::T(caller.institution_id.clone())];
    let push = |cond: &str, v: Arg, a: &mut Vec<Arg>, sql: &mut String| {
        a.push(v);
        sql.push_str(&cond.replace('?', &format!("${}", a.len())));
    };
    let status = f.status.clone().unwrap_or_else(|| "open".into());
    if status == "active" {
        sql.push_str(" AND t.status IN ('open', 'claimed')");
    } else {
        push(" AND t.status = ?", Arg::T(status), &mut a, &mut sql);
    }
    if let Some(r) = &f.role {
        push(" AND t.role = ?", Arg::T(r.clone()), &mut a, &mut sql);
    }
    if let Some(s) = &f.assignee {
        push(" AND t.assignee = ?", Arg::T(s.clone()), &mut a, &mut sql);
    }
    if let Some(d) = f.due_before {
        push(" AND t.due_at < ?", Arg::I(d), &mut a, &mut sql);
    }
    if let Some(d) = f.due_after {
        push(" AND t.due_at >= ?", Arg::I(d), &mut a, &mut sql);
    }
    if let Some((p, due, id)) = f.after {
        a.push(Arg::I(p));
        let np = a.len();
        a.push(Arg::I(due));
        let nd = a.len();
        a.push(Arg::I(id));
        let ni = a.len();
        sql.push_str(&format!(" AND (t.priority < ${np} OR (t.priority = ${np} AND (t.due_at > ${nd} OR (t.due_at = ${nd} AND t.id > ${ni}))))"));
    }
    a.push(Arg::I(f.limit));
    sql.push_str(&format!(
        " ORDER BY t.priority DESC, t.due_at, t.id LIMIT ${}",
        a.len()
    ));
    let rows = pool.fetch(&sql, a).await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({
                "id": r.i64(0), "enrolment_id": r.i64(1), "patient_id": r.text(2), "role": r.text(3),
                "title": {"zh": r.text(4), "en": r.text(5)}, "priority": priority_name(r.i64(6)), "priority_rank": r.i64(6),
                "status": r.text(7), "due_at": super::ts(r.i64(8)).to_string(), "due_at_s": r.i64(8), "assignee": r.opt_text(9),
                "task_ref": r.opt_text(10), "created_at": super::ts(r.i64(11)).to_string(),
                "lease_until": r.opt_i64(12).map(|t| super::ts(t).to_string()),
            })
        })
        .collect())
}

pub fn priority_name(p: i64) -> &'static str {
    match p {
        0 => "low",
        1 => "normal",
        2 => "high",
        _ => "urgent",
    }
}

/// Loads a task of the caller's institution for an action on it; `None` if it is not theirs.
async fn own_task(
    tx: &mut Tx,
    caller: &Caller,
    task: i64,
) -> Result<Option<(String, String, Option<String>, Option<i64>, i64)>> {
    Ok(tx
        .fetch_one(
            "SELECT status, patient_id, assignee, lease_until, enrolment_id FROM tasks WHERE id = $1 AND institution_id = $2",
            args![task, &caller.institution_id],
        )
        .await?
        .map(|r| (r.text(0), r.text(1), r.opt_text(2), r.opt_i64(3), r.i64(4))))
}

pub enum TaskAction<'a> {
    Claim { lease_seconds: i64 },
    Complete { outcome: &'a str },
    Reassign { assignee: &'a str },
    Snooze { until: Timestamp, reason: &'a str },
}

/// Acts on a task of the caller's institution, audited in the same transaction.
pub async fn act_on_task(
    pool: &Pool,
    caller: &Caller,
    task: i64,
    action: TaskAction<'_>,
    remote: &str,
    now: Timestamp,
) -> Result<Value> {
    let mut tx = pool.begin().await?;
    let Some((status, patient, assignee, lease, enrolment)) =
        own_task(&mut tx, caller, task).await?
    else {
        tx.rollback().await?;
        return Err(StoreError::NotFound(format!("task {task}")));
    };
    let lease_held_by_other = status == "claimed"
        && assignee.as_deref() != Some(&caller.staff_id)
        && lease.is_some_and(|l| l > now.as_second());
    let name = match &action {
        TaskAction::Claim { .. } => "task.claim",
        TaskAction::Complete { .. } => "task.complete",
        TaskAction::Reassign { .. } => "task.reassign",
        TaskAction::Snooze { .. } => "task.snooze",
    };
    if status != "open" && status != "claimed" {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!("task {task} is {status}")));
    }
    match action {
        TaskAction::Claim { lease_seconds } => {
            if lease_held_by_other {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "task {task} is claimed by someone else until its lease expires"
                )));
            }
            tx.exec(
                "UPDATE tasks SET status = 'claimed', assignee = $1, lease_until = $2 WHERE id = $3",
                args![&caller.staff_id, now.as_second() + lease_seconds, task],
            )
            .await?;
        }
        TaskAction::Complete { outcome } => {
            if lease_held_by_other {
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "task {task} is claimed by someone else"
                )));
            }
            tx.exec(
                "UPDATE tasks SET status = 'done', outcome = $1, completed_at = $2, assignee = $3 WHERE id = $4",
                args![outcome, now.as_second(), &caller.staff_id, task],
            )
            .await?;
            let task_ref = tx
                .fetch_one("SELECT task_ref FROM tasks WHERE id = $1", args![task])
                .await?
                .and_then(|r| r.opt_text(0));
            if let Some(task_ref) = task_ref {
                add_event(
                    &mut tx,
                    enrolment,
                    &format!("task_done:{task_ref}"),
                    now,
                    Some(json!({"outcome": outcome}).to_string()),
                    Some(format!("task:{task}:done")),
                    now,
                )
                .await?;
            }
            tx.exec(
                "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, 'task_done', $4)",
                args![&patient, enrolment, now.as_second(), json!({"task": task, "outcome": outcome, "by": caller.staff_id}).to_string()],
            )
            .await?;
        }
        TaskAction::Reassign { assignee } => {
            let ok = tx
                .fetch_one(
                    "SELECT 1 FROM staff WHERE id = $1 AND institution_id = $2",
                    args![assignee, &caller.institution_id],
                )
                .await?;
            if ok.is_none() {
                tx.rollback().await?;
                return Err(StoreError::Invalid(format!(
                    "staff member {assignee} is not in your institution"
                )));
            }
            tx.exec("UPDATE tasks SET assignee = $1, status = 'claimed', lease_until = NULL WHERE id = $2", args![assignee, task]).await?;
        }
        TaskAction::Snooze { until, reason } => {
            if until <= now {
                tx.rollback().await?;
                return Err(StoreError::Invalid("`until` must be in the future".into()));
            }
            tx.exec(
                "UPDATE tasks SET due_at = $1 WHERE id = $2",
                args![until.as_second(), task],
            )
            .await?;
            tx.exec(
                "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, 'task_snoozed', $4)",
                args![&patient, enrolment, now.as_second(), json!({"task": task, "until": until.to_string(), "reason": reason, "by": caller.staff_id}).to_string()],
            )
            .await?;
        }
    }
    audit(
        &mut tx,
        &caller.staff_id,
        Some(&caller.institution_id),
        name,
        &format!("task/{task}"),
        std::slice::from_ref(&patient),
        "ok",
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(json!({"task": task, "action": name, "enrolment_id": enrolment}))
}

/// The timeline of an enrolment: every record entry, with the trace behind each step.
pub async fn timeline(
    pool: &Pool,
    caller: &Caller,
    enrolment: i64,
    remote: &str,
    now: Timestamp,
) -> Result<Value> {
    let sql = format!(
        "SELECT e.patient_id, e.pathway_id, e.version, e.state, e.status, e.next_wake_at FROM enrolments e JOIN patients p ON p.id = e.patient_id WHERE e.id = $1 AND {}",
        visible_patient(2)
    );
    let Some(e) = pool
        .fetch(&sql, args![enrolment, &caller.institution_id])
        .await?
        .into_iter()
        .next()
    else {
        return Err(StoreError::NotFound(format!("enrolment {enrolment}")));
    };
    let rows = pool
        .fetch(
            "SELECT at, kind, detail FROM record WHERE enrolment_id = $1 ORDER BY at, id",
            args![enrolment],
        )
        .await?;
    let entries: Vec<Value> = rows
        .iter()
        .map(|r| json!({"at": super::ts(r.i64(0)).to_string(), "kind": r.text(1), "detail": serde_json::from_str::<Value>(&r.text(2)).unwrap_or(Value::Null)}))
        .collect();
    // Audit before returning the data: a read that cannot be audited is not served.
    let mut tx = pool.begin().await?;
    audit(
        &mut tx,
        &caller.staff_id,
        Some(&caller.institution_id),
        "enrolment.timeline",
        &format!("enrolment/{enrolment}"),
        &[e.text(0)],
        "ok",
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(json!({
        "enrolment_id": enrolment, "patient_id": e.text(0), "pathway": e.text(1), "version": e.i64(2), "state": e.text(3),
        "status": e.text(4), "next_wake_at": e.opt_i64(5).map(|t| super::ts(t).to_string()), "entries": entries,
    }))
}

/// Referral decisions. Accepting moves the enrolment, and its open tasks, to the receiving institution.
pub async fn decide_referral(
    pool: &Pool,
    caller: &Caller,
    referral: i64,
    decision: &str,
    reason: Option<&str>,
    remote: &str,
    now: Timestamp,
) -> Result<Value> {
    let mut tx = pool.begin().await?;
    let row = tx
        .fetch_one(
            "SELECT r.status, r.enrolment_id, r.patient_id, r.to_kind, r.from_institution, r.to_institution, i.kind FROM referrals r, institutions i WHERE r.id = $1 AND i.id = $2",
            args![referral, &caller.institution_id],
        )
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        return Err(StoreError::NotFound(format!("referral {referral}")));
    };
    let (status, enrolment, patient, to_kind, from, to_inst, my_kind) = (
        row.text(0),
        row.i64(1),
        row.text(2),
        row.text(3),
        row.text(4),
        row.opt_text(5),
        row.text(6),
    );
    // Only an institution of the requested kind may decide; only the receiving one may confirm arrival.
    let addressed = to_kind == my_kind && from != caller.institution_id;
    if !addressed || (decision == "arrive" && to_inst.as_deref() != Some(&caller.institution_id)) {
        tx.rollback().await?;
        return Err(StoreError::NotFound(format!("referral {referral}")));
    }
    let (expected, new_status, event) = match decision {
        "accept" => ("requested", "accepted", "referral_accepted"),
        "reject" => ("requested", "rejected", "referral_rejected"),
        "arrive" => ("accepted", "arrived", "referral_arrived"),
        _ => {
            return Err(StoreError::Invalid(format!(
                "unknown decision `{decision}`"
            )));
        }
    };
    if status != expected {
        tx.rollback().await?;
        return Err(StoreError::Conflict(format!(
            "referral {referral} is {status}; `{decision}` needs it {expected}"
        )));
    }
    if decision == "reject" && reason.is_none_or(|r| r.trim().is_empty()) {
        tx.rollback().await?;
        return Err(StoreError::Invalid("a rejection needs a reason".into()));
    }
    match decision {
        "accept" => {
            tx.exec(
                "UPDATE referrals SET status = 'accepted', to_institution = $1, decided_at = $2 WHERE id = $3",
                args![&caller.institution_id, now.as_second(), referral],
            )
            .await?;
            tx.exec(
                "UPDATE enrolments SET institution_id = $1 WHERE id = $2",
                args![&caller.institution_id, enrolment],
            )
            .await?;
            tx.exec("UPDATE tasks SET institution_id = $1 WHERE enrolment_id = $2 AND status IN ('open', 'claimed')", args![&caller.institution_id, enrolment]).await?;
        }
        "reject" => {
            tx.exec(
                "UPDATE referrals SET status = 'rejected', decided_at = $1, decision_reason = $2 WHERE id = $3",
                args![now.as_second(), reason.map(str::to_string), referral],
            )
            .await?;
        }
        _ => {
            tx.exec(
                "UPDATE referrals SET status = 'arrived', arrived_at = $1 WHERE id = $2",
                args![now.as_second(), referral],
            )
            .await?;
        }
    }
    add_event(
        &mut tx,
        enrolment,
        event,
        now,
        reason.map(|r| json!({"reason": r}).to_string()),
        Some(format!("referral:{referral}:{decision}")),
        now,
    )
    .await?;
    tx.exec(
        "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, $5)",
        args![&patient, enrolment, now.as_second(), event, json!({"referral": referral, "by": caller.staff_id, "reason": reason}).to_string()],
    )
    .await?;
    audit(
        &mut tx,
        &caller.staff_id,
        Some(&caller.institution_id),
        &format!("referral.{decision}"),
        &format!("referral/{referral}"),
        &[patient],
        "ok",
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(json!({"referral": referral, "status": new_status, "enrolment_id": enrolment}))
}

/// Referrals addressed to the caller's institution kind, or sent by it.
pub async fn referrals(pool: &Pool, caller: &Caller, status: Option<&str>) -> Result<Vec<Value>> {
    let rows = pool
        .fetch(
            "SELECT r.id, r.enrolment_id, r.patient_id, r.direction, r.to_kind, r.from_institution, r.to_institution, r.status, r.requested_at, r.accept_by, r.reason \
             FROM referrals r, institutions i WHERE i.id = $1 AND (r.from_institution = $1 OR r.to_institution = $1 OR (r.to_kind = i.kind AND r.status = 'requested')) \
             AND ($2 = '' OR r.status = $2) ORDER BY r.requested_at, r.id LIMIT 500",
            args![&caller.institution_id, status.unwrap_or("")],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            json!({"id": r.i64(0), "enrolment_id": r.i64(1), "patient_id": r.text(2), "direction": r.text(3), "to_kind": r.text(4),
                   "from_institution": r.text(5), "to_institution": r.opt_text(6), "status": r.text(7),
                   "requested_at": super::ts(r.i64(8)).to_string(), "accept_by": super::ts(r.i64(9)).to_string(),
                   "reason": r.opt_text(10).and_then(|s| serde_json::from_str::<Value>(&s).ok())})
        })
        .collect())
}

/// Escalates overdue tasks whose SLA names a supervisor role, and upward referrals not accepted in
/// time; each once (dedupe keys), as tasks for the supervisor or the referral coordinator.
pub async fn escalate_overdue(pool: &Pool, now: Timestamp) -> Result<u64> {
    let mut tx = pool.begin().await?;
    let rows = tx
        .fetch(
            "SELECT id, enrolment_id, patient_id, institution_id, state_seq, sla, due_at, title_zh, title_en FROM tasks \
             WHERE status IN ('open', 'claimed') AND escalated_at IS NULL AND sla IS NOT NULL AND due_at < $1 ORDER BY id LIMIT 5000",
            args![now.as_second()],
        )
        .await?;
    let mut n = 0;
    for r in rows {
        let Ok(sla) = serde_json::from_str::<carepath_dsl::Sla>(&r.text(5)) else {
            continue;
        };
        let (Some(after), Some(role)) = (sla.escalate_after, sla.escalate_to) else {
            continue;
        };
        if r.i64(6) + after.nominal_seconds() > now.as_second() {
            continue;
        }
        tx.exec(
            "UPDATE tasks SET escalated_at = $1 WHERE id = $2",
            args![now.as_second(), r.i64(0)],
        )
        .await?;
        n += tx
            .exec(
                "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, status, due_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'escalation', $6, $7, $8, 3, 1, 'open', $9, $9) ON CONFLICT (dedupe_key) DO NOTHING",
                args![
                    format!("escalate:task:{}", r.i64(0)),
                    r.i64(1),
                    r.text(2),
                    r.text(3),
                    r.i64(4),
                    role,
                    format!("超时升级：{}", r.text(7)),
                    format!("Overdue, escalated: {}", r.text(8)),
                    now.as_second()
                ],
            )
            .await?;
    }
    let refs = tx
        .fetch(
            "SELECT r.id, r.enrolment_id, r.patient_id, r.from_institution, e.state_seq FROM referrals r JOIN enrolments e ON e.id = r.enrolment_id \
             WHERE r.status = 'requested' AND r.accept_by < $1",
            args![now.as_second()],
        )
        .await?;
    for r in refs {
        n += tx
            .exec(
                "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, status, due_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'referral_escalation', 'referral_coordinator', '转诊超时未接收', 'Referral not accepted in time', 3, 1, 'open', $6, $6) ON CONFLICT (dedupe_key) DO NOTHING",
                args![format!("escalate:referral:{}", r.i64(0)), r.i64(1), r.text(2), r.text(3), r.i64(4), now.as_second()],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// Withdraws an enrolment visible to the caller, audited.
pub async fn withdraw_scoped(
    pool: &Pool,
    caller: &Caller,
    enrolment: i64,
    reason: &str,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    let sql = format!(
        "SELECT e.patient_id FROM enrolments e JOIN patients p ON p.id = e.patient_id WHERE e.id = $1 AND {}",
        visible_patient(2)
    );
    let Some(row) = pool
        .fetch(&sql, args![enrolment, &caller.institution_id])
        .await?
        .into_iter()
        .next()
    else {
        return Err(StoreError::NotFound(format!("enrolment {enrolment}")));
    };
    let mut tx = pool.begin().await?;
    super::withdraw_tx(&mut tx, enrolment, reason, Some(&caller.staff_id), now).await?;
    audit(
        &mut tx,
        &caller.staff_id,
        Some(&caller.institution_id),
        "enrolment.withdraw",
        &format!("enrolment/{enrolment}"),
        &[row.text(0)],
        "ok",
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Records an event for an enrolment visible to the caller, audited.
pub async fn event_scoped(
    pool: &Pool,
    caller: &Caller,
    enrolment: i64,
    name: &str,
    at: Timestamp,
    remote: &str,
    now: Timestamp,
) -> Result<bool> {
    let sql = format!(
        "SELECT e.patient_id FROM enrolments e JOIN patients p ON p.id = e.patient_id WHERE e.id = $1 AND e.status = 'active' AND {}",
        visible_patient(2)
    );
    let Some(row) = pool
        .fetch(&sql, args![enrolment, &caller.institution_id])
        .await?
        .into_iter()
        .next()
    else {
        return Err(StoreError::NotFound(format!(
            "active enrolment {enrolment}"
        )));
    };
    let mut tx = pool.begin().await?;
    let added = add_event(&mut tx, enrolment, name, at, None, None, now).await?;
    audit(
        &mut tx,
        &caller.staff_id,
        Some(&caller.institution_id),
        "enrolment.event",
        &format!("enrolment/{enrolment}"),
        &[row.text(0)],
        "ok",
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(added)
}

/// Writes an audit entry on its own (denied attempts, reads without a transaction).
#[allow(clippy::too_many_arguments)]
pub async fn audit_alone(
    pool: &Pool,
    actor: &str,
    institution: Option<&str>,
    action: &str,
    target: &str,
    patients: &[String],
    outcome: &str,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    audit(
        &mut tx,
        actor,
        institution,
        action,
        target,
        patients,
        outcome,
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
