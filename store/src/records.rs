//! A patient's record as hospital systems exchange it (the admin API's FHIR interface): readings,
//! tasks, care plans and the pending scale push an answer settles. Reads are scoped to the
//! caller's institution like every other read and audited before they are returned; what a
//! resource writes goes through the same store functions as the rest of the API, inside the
//! caller's transaction, so that several resources commit or fail together.

use jiff::Timestamp;
use serde::Serialize;

use super::queries::{AuditAppender, AuditEntry, Caller, visible_patient};
use super::{Pool, Result, Row, StoreError, Tx, ts};
use crate::args;
use crate::db::Arg;

/// Which rows a read returns: one by id, or those of a patient, in a period, at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub id: Option<i64>,
    pub patient: Option<String>,
    /// Inclusive bounds, in seconds.
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub limit: i64,
}

impl RecordFilter {
    /// The conditions and arguments of this filter on a table aliased `alias` whose instant column
    /// is `at`, numbered after `args`.
    fn conditions(&self, alias: &str, at: &str, args: &mut Vec<Arg>) -> String {
        let mut sql = String::new();
        if let Some(id) = self.id {
            args.push(Arg::I(id));
            sql.push_str(&format!(" AND {alias}.id = ${}", args.len()));
        }
        if let Some(p) = &self.patient {
            args.push(Arg::T(p.clone()));
            sql.push_str(&format!(" AND {alias}.patient_id = ${}", args.len()));
        }
        if let Some(from) = self.from {
            args.push(Arg::I(from));
            sql.push_str(&format!(" AND {alias}.{at} >= ${}", args.len()));
        }
        if let Some(to) = self.to {
            args.push(Arg::I(to));
            sql.push_str(&format!(" AND {alias}.{at} <= ${}", args.len()));
        }
        sql
    }

    fn target(&self, kind: &str) -> String {
        match (self.id, &self.patient) {
            (Some(id), _) => format!("{kind}/{id}"),
            (None, Some(p)) => format!("{kind}?patient={p}"),
            (None, None) => kind.to_string(),
        }
    }
}

/// Audits a read of `patients`; with `not_found` (an id asked for that found nothing), audits that
/// and answers `NotFound` with it.
#[allow(clippy::too_many_arguments)]
async fn audit_read(
    audit: &AuditAppender,
    caller: &Caller,
    action: &str,
    target: &str,
    mut patients: Vec<String>,
    not_found: Option<String>,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    patients.sort();
    patients.dedup();
    let outcome = if not_found.is_some() {
        "not_found"
    } else {
        "ok"
    };
    audit
        .append(AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            action,
            target,
            &patients,
            outcome,
            remote,
            now,
        ))
        .await?;
    match not_found {
        Some(what) => Err(StoreError::NotFound(what)),
        None => Ok(()),
    }
}

/// One stored reading.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReadingRow {
    pub id: i64,
    pub patient_id: String,
    pub kind: String,
    /// In the kind's canonical unit.
    pub value: f64,
    pub at: Timestamp,
    pub reading_id: String,
    pub source: String,
}

fn reading(r: &Row) -> ReadingRow {
    ReadingRow {
        id: r.i64(0),
        patient_id: r.text(1),
        kind: r.text(2),
        value: r.f64(3),
        at: ts(r.i64(4)),
        reading_id: r.text(5),
        source: r.text(6),
    }
}

/// Readings of patients visible to the caller, newest first, with every other value recorded
/// under the same reading id (a blood pressure's systolic and diastolic) for those found; audited.
/// With an id that finds nothing: `NotFound`, audited as such.
pub async fn readings(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    f: &RecordFilter,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<ReadingRow>> {
    const COLS: &str = "o.id, o.patient_id, o.kind, o.value, o.at, o.reading_id, o.source";
    let mut a = args![&caller.institution_id];
    let cond = f.conditions("o", "at", &mut a);
    a.push(Arg::I(f.limit));
    let sql = format!(
        "SELECT {COLS} FROM observations o JOIN patients p ON p.id = o.patient_id WHERE {}{cond} \
         ORDER BY o.at DESC, o.id DESC LIMIT ${}",
        visible_patient(1),
        a.len()
    );
    let mut rows: Vec<ReadingRow> = pool.fetch(&sql, a).await?.iter().map(reading).collect();
    let mut siblings = Vec::new();
    for r in &rows {
        let more = pool
            .fetch(
                &format!(
                    "SELECT {COLS} FROM observations o WHERE o.patient_id = $1 AND o.reading_id = $2 AND o.id <> $3"
                ),
                args![&r.patient_id, &r.reading_id, r.id],
            )
            .await?;
        siblings.extend(more.iter().map(reading));
    }
    for s in siblings {
        if !rows.iter().any(|r| r.id == s.id) {
            rows.push(s);
        }
    }
    let patients = rows.iter().map(|r| r.patient_id.clone()).collect();
    let missing = (f.id.is_some() && rows.is_empty())
        .then(|| format!("observation {}", f.id.unwrap_or_default()));
    audit_read(
        audit,
        caller,
        "fhir.observation.read",
        &f.target("observation"),
        patients,
        missing,
        remote,
        now,
    )
    .await?;
    Ok(rows)
}

/// One task as a work list shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TaskRow {
    pub id: i64,
    pub enrolment_id: i64,
    pub patient_id: String,
    pub task_ref: Option<String>,
    pub role: String,
    pub title_zh: String,
    pub title_en: String,
    pub priority: i64,
    /// open, claimed, done or cancelled.
    pub status: String,
    pub due_at: Timestamp,
    pub created_at: Timestamp,
    pub assignee: Option<String>,
    pub outcome: Option<String>,
    pub completed_at: Option<Timestamp>,
    pub cancel_reason: Option<String>,
}

const TASK_COLS: &str = "t.id, t.enrolment_id, t.patient_id, t.task_ref, t.role, t.title_zh, t.title_en, t.priority, t.status, \
     t.due_at, t.created_at, t.assignee, t.outcome, t.completed_at, t.cancel_reason";

fn task(r: &Row) -> TaskRow {
    TaskRow {
        id: r.i64(0),
        enrolment_id: r.i64(1),
        patient_id: r.text(2),
        task_ref: r.opt_text(3),
        role: r.text(4),
        title_zh: r.text(5),
        title_en: r.text(6),
        priority: r.i64(7),
        status: r.text(8),
        due_at: ts(r.i64(9)),
        created_at: ts(r.i64(10)),
        assignee: r.opt_text(11),
        outcome: r.opt_text(12),
        completed_at: r.opt_i64(13).map(ts),
        cancel_reason: r.opt_text(14),
    }
}

/// Tasks of the caller's queue (the caller's institution, a role the caller holds), by due time;
/// `statuses` empty means any. Audited; an id that finds nothing is `NotFound`, audited as such.
#[allow(clippy::too_many_arguments)]
pub async fn tasks(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    f: &RecordFilter,
    statuses: &[&str],
    remote: &str,
    now: Timestamp,
) -> Result<Vec<TaskRow>> {
    let mut a = args![&caller.institution_id];
    let mut sql = format!("SELECT {TASK_COLS} FROM tasks t WHERE t.institution_id = $1");
    let roles: Vec<String> = caller
        .roles
        .iter()
        .map(|r| {
            a.push(Arg::T(r.clone()));
            format!("${}", a.len())
        })
        .collect();
    sql.push_str(&format!(" AND t.role IN ({})", roles.join(", ")));
    if !statuses.is_empty() {
        let marks: Vec<String> = statuses
            .iter()
            .map(|s| {
                a.push(Arg::T(s.to_string()));
                format!("${}", a.len())
            })
            .collect();
        sql.push_str(&format!(" AND t.status IN ({})", marks.join(", ")));
    }
    sql.push_str(&f.conditions("t", "due_at", &mut a));
    a.push(Arg::I(f.limit));
    sql.push_str(&format!(" ORDER BY t.due_at, t.id LIMIT ${}", a.len()));
    let rows: Vec<TaskRow> = pool.fetch(&sql, a).await?.iter().map(task).collect();
    let missing =
        (f.id.is_some() && rows.is_empty()).then(|| format!("task {}", f.id.unwrap_or_default()));
    audit_read(
        audit,
        caller,
        "fhir.task.read",
        &f.target("task"),
        rows.iter().map(|t| t.patient_id.clone()).collect(),
        missing,
        remote,
        now,
    )
    .await?;
    Ok(rows)
}

/// A care-plan goal of an enrolment and whether it is met.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GoalRow {
    pub goal_id: String,
    pub spec: String,
    pub met: Option<bool>,
    pub value: Option<f64>,
    pub evaluated_at: Option<Timestamp>,
}

/// A scale push still waiting for its answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PendingPush {
    pub id: i64,
    pub scale: String,
    pub due_at: Timestamp,
    pub expires_at: Option<Timestamp>,
}

/// A follow-up message scheduled and not yet sent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduledFollowUp {
    pub id: i64,
    pub follow_up_ref: Option<String>,
    pub template: String,
    pub send_at: Timestamp,
}

/// An enrolment with its goals and the work still ahead of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CarePlanRow {
    pub enrolment_id: i64,
    pub patient_id: String,
    pub institution_id: String,
    pub pathway: String,
    pub version: i64,
    pub state: String,
    /// active, completed, withdrawn or error.
    pub status: String,
    pub enrolled_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub goals: Vec<GoalRow>,
    pub open_tasks: Vec<TaskRow>,
    pub pending_pushes: Vec<PendingPush>,
    pub follow_ups: Vec<ScheduledFollowUp>,
}

/// Enrolments of patients visible to the caller, newest first, each with its goals, open tasks,
/// pending scale pushes and scheduled follow-ups; audited. An id that finds nothing is
/// `NotFound`, audited as such.
pub async fn care_plans(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    f: &RecordFilter,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<CarePlanRow>> {
    let mut a = args![&caller.institution_id];
    let cond = f.conditions("e", "enrolled_at", &mut a);
    a.push(Arg::I(f.limit));
    let sql = format!(
        "SELECT e.id, e.patient_id, e.institution_id, e.pathway_id, e.version, e.state, e.status, e.enrolled_at, e.ended_at \
         FROM enrolments e JOIN patients p ON p.id = e.patient_id WHERE {}{cond} ORDER BY e.enrolled_at DESC, e.id DESC LIMIT ${}",
        visible_patient(1),
        a.len()
    );
    let mut plans = Vec::new();
    for r in pool.fetch(&sql, a).await? {
        let id = r.i64(0);
        let (spec, spec_part) = crate::writer::part_column("g", "spec");
        let goals = pool
            .fetch(
                &format!(
                    "SELECT g.goal_id, {spec}, g.met, g.value, g.evaluated_at FROM goals g {spec_part} WHERE g.enrolment_id = $1 ORDER BY g.id"
                ),
                args![id],
            )
            .await?
            .iter()
            .map(|g| GoalRow {
                goal_id: g.text(0),
                spec: g.text(1),
                met: g.opt_i64(2).map(|m| m != 0),
                value: Some(g.f64(3)).filter(|v| !v.is_nan()),
                evaluated_at: g.opt_i64(4).map(ts),
            })
            .collect();
        let open_tasks = pool
            .fetch(
                &format!(
                    "SELECT {TASK_COLS} FROM tasks t WHERE t.enrolment_id = $1 AND t.status IN ('open', 'claimed') ORDER BY t.due_at, t.id"
                ),
                args![id],
            )
            .await?
            .iter()
            .map(task)
            .collect();
        let pending_pushes = pool
            .fetch(
                "SELECT id, scale, due_at, expires_at FROM scale_pushes WHERE enrolment_id = $1 AND status = 'pending' ORDER BY due_at, id",
                args![id],
            )
            .await?
            .iter()
            .map(|s| PendingPush {
                id: s.i64(0),
                scale: s.text(1),
                due_at: ts(s.i64(2)),
                expires_at: s.opt_i64(3).map(ts),
            })
            .collect();
        let follow_ups = pool
            .fetch(
                "SELECT id, follow_up_ref, template, send_at FROM follow_ups WHERE enrolment_id = $1 AND status = 'scheduled' ORDER BY send_at, id",
                args![id],
            )
            .await?
            .iter()
            .map(|u| ScheduledFollowUp {
                id: u.i64(0),
                follow_up_ref: u.opt_text(1),
                template: u.text(2),
                send_at: ts(u.i64(3)),
            })
            .collect();
        plans.push(CarePlanRow {
            enrolment_id: id,
            patient_id: r.text(1),
            institution_id: r.text(2),
            pathway: r.text(3),
            version: r.i64(4),
            state: r.text(5),
            status: r.text(6),
            enrolled_at: ts(r.i64(7)),
            ended_at: r.opt_i64(8).map(ts),
            goals,
            open_tasks,
            pending_pushes,
            follow_ups,
        });
    }
    let missing = (f.id.is_some() && plans.is_empty())
        .then(|| format!("care plan {}", f.id.unwrap_or_default()));
    audit_read(
        audit,
        caller,
        "fhir.careplan.read",
        &f.target("careplan"),
        plans.iter().map(|p| p.patient_id.clone()).collect(),
        missing,
        remote,
        now,
    )
    .await?;
    Ok(plans)
}

/// The pending, unexpired push of `scale` to a patient visible to the caller that an answer
/// settles: the oldest, or the one of `enrolment` when given.
pub async fn pending_push(
    tx: &mut Tx,
    caller: &Caller,
    patient: &str,
    scale: &str,
    enrolment: Option<i64>,
    now: Timestamp,
) -> Result<Option<i64>> {
    let mut a = args![&caller.institution_id, patient, scale, now.as_second()];
    let mut sql = format!(
        "SELECT s.id FROM scale_pushes s JOIN patients p ON p.id = s.patient_id \
         WHERE {} AND s.patient_id = $2 AND s.scale = $3 AND s.status = 'pending' \
         AND (s.expires_at IS NULL OR s.expires_at > $4)",
        visible_patient(1)
    );
    if let Some(e) = enrolment {
        a.push(Arg::I(e));
        sql.push_str(&format!(" AND s.enrolment_id = ${}", a.len()));
    }
    sql.push_str(" ORDER BY s.due_at, s.id LIMIT 1");
    Ok(tx.fetch_one(&sql, a).await?.map(|r| r.i64(0)))
}

/// The values stored under one reading id of a patient, inside the caller's transaction (what a
/// write just stored, or had stored before).
pub async fn reading_rows_tx(
    tx: &mut Tx,
    patient: &str,
    reading_id: &str,
) -> Result<Vec<ReadingRow>> {
    Ok(tx
        .fetch(
            "SELECT o.id, o.patient_id, o.kind, o.value, o.at, o.reading_id, o.source FROM observations o \
             WHERE o.patient_id = $1 AND o.reading_id = $2 ORDER BY o.id",
            args![patient, reading_id],
        )
        .await?
        .iter()
        .map(reading)
        .collect())
}
