//! Reads and writes behind the admin API: scoped by institution, audited, paginated by key.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Pool, Result, StoreError, Tx, add_event};
use crate::args;
use crate::db::{Arg, placeholders};

/// Who is calling: resolved from a token.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub staff_id: String,
    pub institution_id: String,
    pub roles: Vec<String>,
}

impl Caller {
    /// Appends the audit entry of this caller's successful `action` on `target` (see [`audit`]).
    pub async fn audit_ok(
        &self,
        tx: &mut Tx,
        action: &str,
        target: &str,
        patients: &[String],
        remote: &str,
        now: Timestamp,
    ) -> Result<()> {
        audit(
            tx,
            &AuditEntry::new(
                &self.staff_id,
                Some(&self.institution_id),
                action,
                target,
                patients,
                "ok",
                remote,
                now,
            ),
        )
        .await
    }
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
/// clinics it leads, and patients referred to it: a referral it accepted; one merely addressed to
/// it, such as a referral to the patient's home institution, shows nothing yet).
pub fn visible_patient(n: usize) -> String {
    format!(
        "(p.institution_id = ${n} OR EXISTS (SELECT 1 FROM institutions i WHERE i.id = p.institution_id AND i.parent_id = ${n}) \
         OR EXISTS (SELECT 1 FROM referrals r WHERE r.patient_id = p.id AND r.to_institution = ${n} AND r.status IN ('accepted', 'arrived')))"
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

/// [`patient_visible`] inside a transaction.
pub async fn patient_visible_tx(tx: &mut Tx, caller: &Caller, patient: &str) -> Result<bool> {
    let sql = format!(
        "SELECT 1 FROM patients p WHERE p.id = $1 AND {}",
        visible_patient(2)
    );
    Ok(tx
        .fetch_one(&sql, args![patient, &caller.institution_id])
        .await?
        .is_some())
}

/// One entry of the audit record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub institution: Option<String>,
    pub action: String,
    pub target: String,
    pub patients: Vec<String>,
    pub outcome: String,
    pub remote: String,
    pub at: Timestamp,
}

impl AuditEntry {
    // The audit row's fields are all required; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        actor: &str,
        institution: Option<&str>,
        action: &str,
        target: &str,
        patients: &[String],
        outcome: &str,
        remote: &str,
        at: Timestamp,
    ) -> AuditEntry {
        AuditEntry {
            actor: actor.to_string(),
            institution: institution.map(str::to_string),
            action: action.to_string(),
            target: target.to_string(),
            patients: patients.to_vec(),
            outcome: outcome.to_string(),
            remote: remote.to_string(),
            at,
        }
    }
}

/// Appends one audit entry, chained to the previous one by hash. Runs inside the caller's
/// transaction, so a write and its audit entry commit together.
pub async fn audit(tx: &mut Tx, entry: &AuditEntry) -> Result<()> {
    append_audit(tx, std::slice::from_ref(entry)).await
}

/// Rows per INSERT when appending several entries (11 parameters each).
const AUDIT_ROWS_PER_INSERT: usize = 100;

/// Appends entries in their order, each chained to the one before by its keyed hash (see
/// [`crate::audit`]), inside `tx`, under the process's audit key. Every appender reads the last
/// hash under a lock held to the end of its transaction (the advisory lock on PostgreSQL, the write
/// lock of `BEGIN IMMEDIATE` on SQLite), so the chain stays linear. The rows of one multi-row
/// INSERT take ascending ids in VALUES order, which is the chain's order.
pub async fn append_audit(tx: &mut Tx, entries: &[AuditEntry]) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let key = crate::audit::key();
    if tx.is_postgres() {
        tx.exec("SELECT pg_advisory_xact_lock(7361)", vec![])
            .await?;
    }
    let mut prev = tx
        .fetch_one(
            "SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1",
            vec![],
        )
        .await?
        .map(|r| r.text(0))
        .unwrap_or_else(|| crate::audit::GENESIS.into());
    for chunk in entries.chunks(AUDIT_ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO audit_log (at, actor, institution_id, action, target, patients, outcome, remote, prev_hash, hash, scheme) VALUES ",
        );
        let mut a = Vec::with_capacity(chunk.len() * 11);
        for (i, e) in chunk.iter().enumerate() {
            let patients = serde_json::to_string(&e.patients).unwrap_or_default();
            let hash = crate::audit::keyed_hash(
                &key,
                &prev,
                e.at.as_second(),
                &e.actor,
                e.institution.as_deref(),
                &e.action,
                &e.target,
                &patients,
                &e.outcome,
                Some(&e.remote),
            );
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("({})", placeholders(a.len() + 1, 11)));
            a.extend(args![
                e.at.as_second(),
                &e.actor,
                e.institution.clone(),
                &e.action,
                &e.target,
                patients,
                &e.outcome,
                &e.remote,
                prev,
                &hash,
                crate::audit::SCHEME_KEYED
            ]);
            prev = hash;
        }
        tx.exec(&sql, a).await?;
    }
    Ok(())
}

type AuditReply = tokio::sync::oneshot::Sender<std::result::Result<(), String>>;

/// Entries one audit transaction takes at most.
const AUDIT_BATCH: usize = 256;

/// The audit record of reads (and of refusals), appended by one writer task.
///
/// Many requests auditing at once would otherwise each run a transaction that serialises on the
/// chain's lock: on SQLite they wait in the busy handler's sleeps, on PostgreSQL each holds the
/// lock through its own commit flush. The writer takes everything waiting, appends it in one
/// transaction, and answers each request only after that commit, so a read is still answered only
/// once its audit entry is durable, and a read that cannot be audited is not answered.
#[derive(Clone, Debug)]
pub struct AuditAppender {
    queue: tokio::sync::mpsc::Sender<(AuditEntry, AuditReply)>,
}

impl AuditAppender {
    /// Starts the writer on the current Tokio runtime; it stops when the last handle is dropped.
    pub fn start(pool: Pool) -> AuditAppender {
        let (queue, waiting) = tokio::sync::mpsc::channel(4 * AUDIT_BATCH);
        tokio::spawn(write_audit_batches(pool, waiting));
        AuditAppender { queue }
    }

    /// Appends `entry`; returns once the transaction holding it has committed.
    pub async fn append(&self, entry: AuditEntry) -> Result<()> {
        let (reply, committed) = tokio::sync::oneshot::channel();
        let stopped = || StoreError::AuditUnavailable("the audit writer has stopped".into());
        self.queue
            .send((entry, reply))
            .await
            .map_err(|_| stopped())?;
        committed
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::AuditUnavailable)
    }
}

async fn write_audit_batches(
    pool: Pool,
    mut waiting: tokio::sync::mpsc::Receiver<(AuditEntry, AuditReply)>,
) {
    let mut batch = Vec::with_capacity(AUDIT_BATCH);
    while waiting.recv_many(&mut batch, AUDIT_BATCH).await > 0 {
        let (entries, replies): (Vec<AuditEntry>, Vec<AuditReply>) = batch.drain(..).unzip();
        let written = async {
            let mut tx = pool.begin().await?;
            append_audit(&mut tx, &entries).await?;
            tx.commit().await?;
            Ok::<(), StoreError>(())
        }
        .await
        .map_err(|e| e.to_string());
        if let Err(e) = &written {
            tracing::error!(entries = entries.len(), "audit append failed: {e}");
        }
        for reply in replies {
            let _ = reply.send(written.clone());
        }
    }
}

/// Checks the audit record against the process's key and `checkpoints` (see
/// [`crate::audit::verify`]).
pub async fn verify_audit(
    pool: &Pool,
    checkpoints: &[crate::audit::Checkpoint],
) -> Result<crate::audit::Verification> {
    crate::audit::verify(pool, &crate::audit::key(), checkpoints).await
}

/// A page of the caller's institution's task queue.
#[derive(Debug, Clone, Default)]
pub struct QueueFilter {
    pub role: Option<String>,
    pub status: Option<String>,
    pub assignee: Option<String>,
    pub due_before: Option<i64>,
    pub due_after: Option<i64>,
    /// Only tasks of enrolments in this pathway.
    pub pathway: Option<String>,
    /// Keyset cursor: (priority, due_at, id) of the last row of the previous page.
    pub after: Option<(i64, i64, i64)>,
    pub limit: i64,
}

/// Task priorities as stored: the DSL's four levels, low (0) to urgent (3); escalations are urgent.
const PRIORITIES: [i64; 4] = [3, 2, 1, 0];

/// A page of the queue in queue order (priority DESC, due_at, id).
///
/// Each part is one range scan of `tasks_queue`, keyed (institution, role, status, priority DESC,
/// due_at, id), which stops after `limit` keys: one part per board and status (`active` is open
/// and claimed), and, with a cursor or a due window,
/// one per priority level, so that neither a deep page nor a window far into a level is found by
/// walking past the rows before it. The parts yield keys only; the first `limit` keys of all parts
/// are then joined to their rows.
///
/// A caller reads only the boards of [`Programs::boards_for`] their roles: asking for another
/// role's board is `Forbidden`; without a role, the page merges the caller's boards.
///
/// [`Programs::boards_for`]: crate::program::Programs::boards_for
pub async fn queue(
    pool: &Pool,
    programs: &crate::program::Programs,
    caller: &Caller,
    f: &QueueFilter,
) -> Result<Vec<QueueTask>> {
    let boards = programs.boards_for(&caller.roles);
    let roles: Vec<String> = match &f.role {
        Some(r) if boards.contains(r) => vec![r.clone()],
        Some(r) => {
            return Err(StoreError::Forbidden(format!(
                "the {r} board is not open to your role(s) {}",
                caller.roles.join(", ")
            )));
        }
        None => boards.into_iter().collect(),
    };
    let mut a: Vec<Arg> = vec![Arg::T(caller.institution_id.clone()), Arg::I(f.limit)];
    let param = |v: Arg, a: &mut Vec<Arg>| {
        a.push(v);
        format!("${}", a.len())
    };
    let statuses: Vec<&str> = match f.status.as_deref().unwrap_or("open") {
        "active" => vec!["open", "claimed"],
        s => vec![s],
    };
    let mut common = String::new();
    if let Some(s) = &f.assignee {
        common.push_str(&format!(
            " AND assignee = {}",
            param(Arg::T(s.clone()), &mut a)
        ));
    }
    if let Some(d) = f.due_before {
        common.push_str(&format!(" AND due_at < {}", param(Arg::I(d), &mut a)));
    }
    if let Some(d) = f.due_after {
        common.push_str(&format!(" AND due_at >= {}", param(Arg::I(d), &mut a)));
    }
    if let Some(p) = &f.pathway {
        common.push_str(&format!(
            " AND enrolment_id IN (SELECT id FROM enrolments WHERE pathway_id = {})",
            param(Arg::T(p.clone()), &mut a)
        ));
    }
    let cursor = f.after.map(|(p, due, id)| {
        (
            p,
            format!(
                " AND (due_at, id) > ({}, {})",
                param(Arg::I(due), &mut a),
                param(Arg::I(id), &mut a)
            ),
        )
    });
    // (extra condition, order within the part) for each part of one status.
    let levels: Vec<(String, &str)> =
        if cursor.is_none() && f.due_before.is_none() && f.due_after.is_none() {
            vec![(String::new(), "priority DESC, due_at, id")]
        } else {
            PRIORITIES
                .iter()
                .filter(|q| cursor.as_ref().is_none_or(|(p, _)| *q <= p))
                .map(|q| {
                    let after = match &cursor {
                        Some((p, c)) if p == q => c.as_str(),
                        _ => "",
                    };
                    (format!(" AND priority = {q}{after}"), "due_at, id")
                })
                .collect()
        };
    if levels.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    let roles: Vec<String> = roles
        .into_iter()
        .map(|r| param(Arg::T(r), &mut a))
        .collect();
    for role in &roles {
        for status in &statuses {
            let status = param(Arg::T(status.to_string()), &mut a);
            for (extra, order) in &levels {
                parts.push(format!(
                    "SELECT * FROM (SELECT priority, due_at, id FROM tasks WHERE institution_id = $1 AND role = {role} AND status = {status}{common}{extra} ORDER BY {order} LIMIT $2) AS p{}",
                    parts.len()
                ));
            }
        }
    }
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT t.id, t.enrolment_id, t.patient_id, t.role, t.title_zh, t.title_en, t.priority, t.status, t.due_at, t.assignee, t.task_ref, t.created_at, t.lease_until \
         FROM ({} ORDER BY priority DESC, due_at, id LIMIT $2) AS k JOIN tasks t ON t.id = k.id ORDER BY k.priority DESC, k.due_at, k.id",
        parts.join(" UNION ALL ")
    );
    let rows = pool.fetch(&sql, a).await?;
    Ok(rows
        .iter()
        .map(|r| QueueTask {
            id: r.i64(0),
            enrolment_id: r.i64(1),
            patient_id: r.text(2),
            role: r.text(3),
            title: carepath_dsl::Text {
                zh: r.text(4),
                en: r.text(5),
            },
            priority: priority_name(r.i64(6)),
            priority_rank: r.i64(6),
            status: r.text(7),
            due_at: super::ts(r.i64(8)).to_string(),
            due_at_s: r.i64(8),
            assignee: r.opt_text(9),
            task_ref: r.opt_text(10),
            created_at: super::ts(r.i64(11)).to_string(),
            lease_until: r.opt_i64(12).map(|t| super::ts(t).to_string()),
        })
        .collect())
}

/// [`queue`] for a request: the page is audited (with the patients it shows) before it is returned.
pub async fn read_queue(
    pool: &Pool,
    audit: &AuditAppender,
    programs: &crate::program::Programs,
    caller: &Caller,
    f: &QueueFilter,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<QueueTask>> {
    let tasks = queue(pool, programs, caller, f).await?;
    let patients: std::collections::BTreeSet<&String> =
        tasks.iter().map(|t| &t.patient_id).collect();
    let patients: Vec<String> = patients.into_iter().cloned().collect();
    audit
        .append(AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            "queue.read",
            "queues/tasks",
            &patients,
            "ok",
            remote,
            now,
        ))
        .await?;
    Ok(tasks)
}

/// A task as a queue lists it. Serialised straight to the response: the hottest read of the API
/// builds no intermediate JSON tree.
#[derive(Debug, Clone, Serialize)]
pub struct QueueTask {
    pub id: i64,
    pub enrolment_id: i64,
    pub patient_id: String,
    pub role: String,
    pub title: carepath_dsl::Text,
    pub priority: &'static str,
    pub priority_rank: i64,
    pub status: String,
    pub due_at: String,
    pub due_at_s: i64,
    pub assignee: Option<String>,
    pub task_ref: Option<String>,
    pub created_at: String,
    pub lease_until: Option<String>,
}

impl QueueTask {
    /// The keyset cursor that continues after this task (`QueueFilter::after`).
    pub fn cursor(&self) -> String {
        format!("{}.{}.{}", self.priority_rank, self.due_at_s, self.id)
    }
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
/// A task of the caller's institution as an action needs it.
struct OwnTask {
    status: String,
    patient: String,
    assignee: Option<String>,
    lease_until: Option<i64>,
    enrolment: i64,
    role: String,
    escalate_to: Option<String>,
    task_ref: Option<String>,
    pathway: String,
    version: i64,
}

impl OwnTask {
    /// The roles whose staff may act on the task: its own, and the role its SLA escalates to.
    fn actor_roles(&self) -> Vec<&str> {
        let mut roles = vec![self.role.as_str()];
        roles.extend(self.escalate_to.as_deref());
        roles
    }

    /// Claimed by someone else under a lease that has not run out.
    fn held_by_other(&self, caller: &Caller, now: Timestamp) -> bool {
        self.status == "claimed"
            && self.assignee.as_deref() != Some(&caller.staff_id)
            && self.lease_until.is_some_and(|l| l > now.as_second())
    }
}

/// Reads a task of the caller's institution for an action; on PostgreSQL the row stays locked
/// until the transaction ends, so concurrent actions on one task take turns and each sees what
/// the one before it did.
async fn own_task(tx: &mut Tx, caller: &Caller, task: i64) -> Result<Option<OwnTask>> {
    let lock = if tx.is_postgres() {
        " FOR UPDATE OF t"
    } else {
        ""
    };
    let (sla, sla_part) = crate::writer::part_column("t", "sla");
    let sql = format!(
        "SELECT t.status, t.patient_id, t.assignee, t.lease_until, t.enrolment_id, t.role, {sla}, t.task_ref, e.pathway_id, e.version \
         FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id {sla_part} WHERE t.id = $1 AND t.institution_id = $2{lock}"
    );
    Ok(tx
        .fetch_one(&sql, args![task, &caller.institution_id])
        .await?
        .map(|r| OwnTask {
            status: r.text(0),
            patient: r.text(1),
            assignee: r.opt_text(2),
            lease_until: r.opt_i64(3),
            enrolment: r.i64(4),
            role: r.text(5),
            escalate_to: r
                .opt_text(6)
                .and_then(|s| serde_json::from_str::<carepath_dsl::Sla>(&s).ok())
                .and_then(|s| s.escalate_to),
            task_ref: r.opt_text(7),
            pathway: r.text(8),
            version: r.i64(9),
        }))
}

pub enum TaskAction<'a> {
    Claim { lease_seconds: i64 },
    Complete { outcome: &'a str },
    Reassign { assignee: &'a str },
    Snooze { until: Timestamp, reason: &'a str },
}

impl TaskAction<'_> {
    fn name(&self) -> &'static str {
        match self {
            TaskAction::Claim { .. } => "task.claim",
            TaskAction::Complete { .. } => "task.complete",
            TaskAction::Reassign { .. } => "task.reassign",
            TaskAction::Snooze { .. } => "task.snooze",
        }
    }
}

/// A refused action: audited with its outcome (`denied`, `not_found`, `conflict`, `invalid`) in
/// the transaction that found the reason, which then commits.
pub(crate) struct Refusal<'a> {
    pub(crate) caller: &'a Caller,
    pub(crate) action: &'a str,
    pub(crate) target: &'a str,
    pub(crate) remote: &'a str,
    pub(crate) now: Timestamp,
}

impl Refusal<'_> {
    pub(crate) async fn answer<T>(
        &self,
        mut tx: Tx,
        patients: Vec<String>,
        outcome: &str,
        err: StoreError,
    ) -> Result<T> {
        audit(
            &mut tx,
            &AuditEntry::new(
                &self.caller.staff_id,
                Some(&self.caller.institution_id),
                self.action,
                self.target,
                &patients,
                outcome,
                self.remote,
                self.now,
            ),
        )
        .await?;
        tx.commit().await?;
        Err(err)
    }
}

/// SQL condition on `tasks`: still open, and not claimed by anyone but `$me` under a lease that
/// runs past `$now`. Every state change of a task is an update under this condition (or
/// `ACTIVE`), so of two concurrent actions exactly one changes the row.
fn free_for(me: usize, now: usize) -> String {
    format!(
        "status IN ('open', 'claimed') AND NOT (status = 'claimed' AND COALESCE(assignee, '') <> ${me} AND COALESCE(lease_until, 0) > ${now})"
    )
}

const ACTIVE: &str = "status IN ('open', 'claimed')";

/// The furthest a task can be snoozed: a task put off longer should be cancelled or reassigned.
pub const MAX_SNOOZE_SECONDS: i64 = 90 * 86_400;

/// Acts on a task of the caller's institution, audited in the same transaction (refusals too).
///
/// The caller must hold the task's role or the role its SLA escalates to; a completion's outcome
/// must be one the pathway declares for the task. Exactly one of several concurrent actions on a
/// task wins; the others get `Conflict`.
pub async fn act_on_task(
    pool: &Pool,
    programs: &crate::program::Programs,
    caller: &Caller,
    task: i64,
    action: TaskAction<'_>,
    remote: &str,
    now: Timestamp,
) -> Result<TaskActed> {
    let name = action.name();
    let target = format!("task/{task}");
    let mut tx = pool.begin().await?;
    let refused = Refusal {
        caller,
        action: name,
        target: &target,
        remote,
        now,
    };
    let Some(t) = own_task(&mut tx, caller, task).await? else {
        return refused
            .answer(
                tx,
                vec![],
                "not_found",
                StoreError::NotFound(format!("task {task}")),
            )
            .await;
    };
    let patients = vec![t.patient.clone()];
    let roles = t.actor_roles();
    if !caller.roles.iter().any(|r| roles.contains(&r.as_str())) {
        let err = StoreError::Forbidden(format!(
            "task {task} is for {}; your role(s) {} may not act on it",
            roles.join(" or "),
            caller.roles.join(", ")
        ));
        return refused.answer(tx, patients, "denied", err).await;
    }
    if t.status != "open" && t.status != "claimed" {
        let err = StoreError::Conflict(format!("task {task} is {}", t.status));
        return refused.answer(tx, patients, "conflict", err).await;
    }
    if matches!(
        action,
        TaskAction::Claim { .. } | TaskAction::Complete { .. }
    ) && t.held_by_other(caller, now)
    {
        let err = StoreError::Conflict(format!(
            "task {task} is claimed by someone else until its lease expires"
        ));
        return refused.answer(tx, patients, "conflict", err).await;
    }
    let lost = || {
        StoreError::Conflict(format!(
            "task {task} was changed by another action; reload it"
        ))
    };
    match action {
        TaskAction::Claim { lease_seconds } => {
            let sql = format!(
                "UPDATE tasks SET status = 'claimed', assignee = $1, lease_until = $2 WHERE id = $3 AND {}",
                free_for(1, 4)
            );
            let n = tx
                .exec(
                    &sql,
                    args![
                        &caller.staff_id,
                        now.as_second() + lease_seconds,
                        task,
                        now.as_second()
                    ],
                )
                .await?;
            if n != 1 {
                return refused.answer(tx, patients, "conflict", lost()).await;
            }
        }
        TaskAction::Complete { outcome } => {
            let accepted = programs
                .get(&t.pathway, u32::try_from(t.version).unwrap_or(0))
                .map(|p| p.pathway.accepted_outcomes(t.task_ref.as_deref()))
                .unwrap_or_else(|| carepath_dsl::catalog::TASK_OUTCOMES.to_vec());
            if !accepted.contains(&outcome) {
                let err = StoreError::Invalid(format!(
                    "outcome `{outcome}` is not one task {task} accepts: {}",
                    accepted.join(", ")
                ));
                return refused.answer(tx, patients, "invalid", err).await;
            }
            let sql = format!(
                "UPDATE tasks SET status = 'done', outcome = $1, completed_at = $2, assignee = $3 WHERE id = $4 AND {}",
                free_for(3, 2)
            );
            let n = tx
                .exec(
                    &sql,
                    args![outcome, now.as_second(), &caller.staff_id, task],
                )
                .await?;
            if n != 1 {
                return refused.answer(tx, patients, "conflict", lost()).await;
            }
            if let Some(task_ref) = &t.task_ref {
                add_event(
                    &mut tx,
                    t.enrolment,
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
                args![&t.patient, t.enrolment, now.as_second(), json!({"task": task, "outcome": outcome, "by": caller.staff_id}).to_string()],
            )
            .await?;
        }
        TaskAction::Reassign { assignee } => {
            let row = tx
                .fetch_one(
                    "SELECT roles FROM staff WHERE id = $1 AND institution_id = $2",
                    args![assignee, &caller.institution_id],
                )
                .await?;
            let Some(row) = row else {
                let err = StoreError::Invalid(format!(
                    "staff member {assignee} is not in your institution"
                ));
                return refused.answer(tx, patients, "invalid", err).await;
            };
            let held = row.text(0);
            let held: Vec<&str> = held.split(',').collect();
            if held.contains(&"device_gateway") || !held.iter().any(|r| roles.contains(r)) {
                let err = StoreError::Invalid(format!(
                    "staff member {assignee} does not hold the role {} that task {task} is for",
                    roles.join(" or ")
                ));
                return refused.answer(tx, patients, "invalid", err).await;
            }
            let sql = format!(
                "UPDATE tasks SET assignee = $1, status = 'claimed', lease_until = NULL WHERE id = $2 AND {ACTIVE}"
            );
            if tx.exec(&sql, args![assignee, task]).await? != 1 {
                return refused.answer(tx, patients, "conflict", lost()).await;
            }
        }
        TaskAction::Snooze { until, reason } => {
            if until <= now || until.as_second() > now.as_second() + MAX_SNOOZE_SECONDS {
                let err = StoreError::Invalid(format!(
                    "`until` must be in the future and at most {} days ahead",
                    MAX_SNOOZE_SECONDS / 86_400
                ));
                return refused.answer(tx, patients, "invalid", err).await;
            }
            // The escalation instant moves with the due time (none once escalated).
            let sql = format!(
                "UPDATE tasks SET due_at = $1, escalate_at = escalate_at + ($1 - due_at) WHERE id = $2 AND {ACTIVE}"
            );
            if tx.exec(&sql, args![until.as_second(), task]).await? != 1 {
                return refused.answer(tx, patients, "conflict", lost()).await;
            }
            tx.exec(
                "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, 'task_snoozed', $4)",
                args![&t.patient, t.enrolment, now.as_second(), json!({"task": task, "until": until.to_string(), "reason": reason, "by": caller.staff_id}).to_string()],
            )
            .await?;
        }
    }
    caller
        .audit_ok(&mut tx, name, &target, &patients, remote, now)
        .await?;
    tx.commit().await?;
    Ok(TaskActed {
        task,
        action: name,
        enrolment_id: t.enrolment,
    })
}

/// What an action on a task did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskActed {
    pub task: i64,
    /// `task.claim`, `task.complete`, `task.reassign` or `task.snooze`.
    pub action: &'static str,
    pub enrolment_id: i64,
}

/// An enrolment whose patient the caller's institution may see.
struct VisibleEnrolment {
    patient_id: String,
    pathway_id: String,
    version: i64,
    state: String,
    status: String,
    next_wake_at: Option<i64>,
    enrolled_at: i64,
}

/// Looks up an enrolment for a caller: `NotFound` when it does not exist, is not visible to the
/// caller's institution, or (with `active_only`) has ended — the three are not told apart.
async fn visible_enrolment(
    pool: &Pool,
    caller: &Caller,
    enrolment: i64,
    active_only: bool,
) -> Result<VisibleEnrolment> {
    let sql = format!(
        "SELECT e.patient_id, e.pathway_id, e.version, e.state, e.status, e.next_wake_at, e.enrolled_at FROM enrolments e JOIN patients p ON p.id = e.patient_id \
         WHERE e.id = $1 AND {}{}",
        visible_patient(2),
        if active_only {
            " AND e.status = 'active'"
        } else {
            ""
        }
    );
    let row = pool
        .fetch(&sql, args![enrolment, &caller.institution_id])
        .await?
        .into_iter()
        .next();
    match row {
        Some(r) => Ok(VisibleEnrolment {
            patient_id: r.text(0),
            pathway_id: r.text(1),
            version: r.i64(2),
            state: r.text(3),
            status: r.text(4),
            next_wake_at: r.opt_i64(5),
            enrolled_at: r.i64(6),
        }),
        None if active_only => Err(StoreError::NotFound(format!(
            "active enrolment {enrolment}"
        ))),
        None => Err(StoreError::NotFound(format!("enrolment {enrolment}"))),
    }
}

/// The timeline of an enrolment: every record entry, with the trace behind each step.
pub async fn timeline(
    pool: &Pool,
    caller: &Caller,
    enrolment: i64,
    remote: &str,
    now: Timestamp,
) -> Result<Timeline> {
    let e = visible_enrolment(pool, caller, enrolment, false).await?;
    let rows = pool
        .fetch(
            "SELECT at, kind, detail FROM record WHERE enrolment_id = $1 ORDER BY at, id",
            args![enrolment],
        )
        .await?;
    // Each entry, and whether it is an action a step row holds in its stored form.
    let mut entries: Vec<(i64, TimelineEntry, bool)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let (at, kind) = (r.i64(0), r.text(1));
        let stored = r.text(2);
        let detail = super::writer::unpack_detail(&stored)
            .and_then(|d| serde_json::from_str::<Value>(&d).ok())
            .unwrap_or(Value::Null);
        let expanded = if kind == super::writer::STEP_KIND {
            super::writer::expand_step(at, &detail)
        } else {
            vec![(at, kind, detail, false)]
        };
        for (at, kind, detail, made) in expanded {
            let entry = TimelineEntry {
                at: super::ts(at).to_string(),
                kind,
                detail,
            };
            entries.push((at, entry, made));
        }
    }
    // Large fields of made actions are stored once as record parts; put them back.
    let mut hashes: Vec<String> = entries
        .iter()
        .flat_map(|(_, e, _)| super::writer::part_refs(&e.detail))
        .map(str::to_string)
        .collect();
    hashes.sort();
    hashes.dedup();
    let mut parts = std::collections::HashMap::new();
    for chunk in hashes.chunks(500) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT dedupe_key, body FROM record_parts WHERE dedupe_key IN ({})",
            marks.join(", ")
        );
        let args = chunk.iter().map(|h| Arg::T(h.clone())).collect();
        for r in pool.fetch(&sql, args).await? {
            let body = serde_json::from_str::<Value>(&r.text(1)).unwrap_or(Value::Null);
            parts.insert(r.text(0), body);
        }
    }
    for (_, e, made) in &mut entries {
        super::writer::fill_parts(&mut e.detail, &parts);
        if *made && let Some(kind) = super::writer::restore_made(&mut e.detail) {
            e.kind = kind.to_string();
        }
    }
    // Actions made in a catch-up carry their own instants, earlier than their step's row.
    entries.sort_by_key(|(at, _, _)| *at);
    let entries: Vec<TimelineEntry> = entries.into_iter().map(|(_, e, _)| e).collect();
    // Audit before returning the data: a read that cannot be audited is not served.
    let mut tx = pool.begin().await?;
    caller
        .audit_ok(
            &mut tx,
            "enrolment.timeline",
            &format!("enrolment/{enrolment}"),
            std::slice::from_ref(&e.patient_id),
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok(Timeline {
        enrolment_id: enrolment,
        patient_id: e.patient_id,
        pathway: e.pathway_id,
        version: e.version,
        state: e.state,
        status: e.status,
        next_wake_at: e.next_wake_at.map(|t| super::ts(t).to_string()),
        entries,
    })
}

/// An enrolment and every record entry, oldest first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timeline {
    pub enrolment_id: i64,
    pub patient_id: String,
    pub pathway: String,
    pub version: i64,
    pub state: String,
    pub status: String,
    pub next_wake_at: Option<String>,
    pub entries: Vec<TimelineEntry>,
}

/// One record entry of a [`Timeline`]; `detail` is what was recorded, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelineEntry {
    pub at: String,
    pub kind: String,
    pub detail: Value,
}

/// SQL condition on referral `r`: institution `$n` may decide it. A referral named to an
/// institution goes to that one alone; an open one goes to the institutions of the requested kind
/// in the sender's alliance (institutions share an alliance when they have the same lead: the
/// institution itself, or its parent), and to the patient's home institution when it is of that
/// kind. Never to the sender, never across alliances.
fn referral_addressed(n: usize) -> String {
    format!(
        "(r.from_institution <> ${n} AND (r.to_institution = ${n} OR (r.to_institution IS NULL AND EXISTS ( \
           SELECT 1 FROM institutions me JOIN institutions src ON src.id = r.from_institution \
           WHERE me.id = ${n} AND me.kind = r.to_kind AND (COALESCE(me.parent_id, me.id) = COALESCE(src.parent_id, src.id) \
             OR EXISTS (SELECT 1 FROM patients pt WHERE pt.id = r.patient_id AND pt.institution_id = me.id))))))"
    )
}

/// Referral decisions. Accepting moves work to the receiving institution (see [`move_ownership`]);
/// before acceptance nothing moves.
pub async fn decide_referral(
    pool: &Pool,
    caller: &Caller,
    referral: i64,
    decision: &str,
    reason: Option<&str>,
    remote: &str,
    now: Timestamp,
) -> Result<Decided> {
    let action = format!("referral.{decision}");
    let target = format!("referral/{referral}");
    let refused = Refusal {
        caller,
        action: &action,
        target: &target,
        remote,
        now,
    };
    let mut tx = pool.begin().await?;
    let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT r.status, r.enrolment_id, r.patient_id, r.to_institution, r.moves FROM referrals r WHERE r.id = $1 AND {}{lock}",
        referral_addressed(2)
    );
    let row = tx
        .fetch_one(&sql, args![referral, &caller.institution_id])
        .await?;
    // Only an addressed institution may decide; only the receiving one may confirm arrival.
    let row = row.filter(|r| {
        decision != "arrive" || r.opt_text(3).as_deref() == Some(&caller.institution_id)
    });
    let Some(row) = row else {
        return refused
            .answer(
                tx,
                vec![],
                "not_found",
                StoreError::NotFound(format!("referral {referral}")),
            )
            .await;
    };
    let (status, enrolment, patient) = (row.text(0), row.i64(1), row.text(2));
    let moves: Vec<String> = row
        .opt_text(4)
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default();
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
    let patients = vec![patient.clone()];
    if status != expected {
        let err = StoreError::Conflict(format!(
            "referral {referral} is {status}; `{decision}` needs it {expected}"
        ));
        return refused.answer(tx, patients, "conflict", err).await;
    }
    if decision == "reject" && reason.is_none_or(|r| r.trim().is_empty()) {
        let err = StoreError::Invalid("a rejection needs a reason".into());
        return refused.answer(tx, patients, "invalid", err).await;
    }
    match decision {
        "accept" => {
            let n = tx
                .exec(
                    "UPDATE referrals SET status = 'accepted', to_institution = $1, decided_at = $2 WHERE id = $3 AND status = 'requested'",
                    args![&caller.institution_id, now.as_second(), referral],
                )
                .await?;
            if n != 1 {
                let err =
                    StoreError::Conflict(format!("referral {referral} was decided meanwhile"));
                return refused.answer(tx, patients, "conflict", err).await;
            }
            let handover = Handover {
                caller,
                referral,
                enrolment,
                patient: &patient,
                moves: &moves,
                remote,
                now,
            };
            move_ownership(&mut tx, &handover).await?;
        }
        "reject" => {
            let n = tx
                .exec(
                    "UPDATE referrals SET status = 'rejected', decided_at = $1, decision_reason = $2 WHERE id = $3 AND status = 'requested'",
                    args![now.as_second(), reason.map(str::to_string), referral],
                )
                .await?;
            if n != 1 {
                let err =
                    StoreError::Conflict(format!("referral {referral} was decided meanwhile"));
                return refused.answer(tx, patients, "conflict", err).await;
            }
        }
        _ => {
            let n = tx
                .exec(
                    "UPDATE referrals SET status = 'arrived', arrived_at = $1 WHERE id = $2 AND status = 'accepted'",
                    args![now.as_second(), referral],
                )
                .await?;
            if n != 1 {
                let err = StoreError::Conflict(format!("referral {referral} changed meanwhile"));
                return refused.answer(tx, patients, "conflict", err).await;
            }
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
    caller
        .audit_ok(&mut tx, &action, &target, &patients, remote, now)
        .await?;
    tx.commit().await?;
    Ok(Decided {
        referral,
        status: new_status,
        enrolment_id: enrolment,
    })
}

/// An accepted referral's handover of work to the caller's institution.
struct Handover<'a> {
    caller: &'a Caller,
    referral: i64,
    enrolment: i64,
    patient: &'a str,
    /// The roles the referral moves; none: the whole enrolment moves.
    moves: &'a [String],
    remote: &'a str,
    now: Timestamp,
}

/// Moves work to the receiving institution as an accepted referral says.
///
/// - A referral that names no roles moves the whole enrolment: the enrolment (the institution
///   that answers for it, counts it and sees its board) and every open task, and the enrolment's
///   later tasks follow it; roles an earlier referral moved go with it.
/// - A referral with `moves: [role, …]` moves those roles only: the receiving institution owns
///   each of them for this enrolment (`role_owners`), their open tasks move there, and the tasks
///   the enrolment makes for them later are created there. The enrolment, its other roles'
///   tasks, its follow-ups and scale pushes stay where they are.
///
/// A claimed task that moves is released (open, with no assignee): whoever claimed it at the
/// sending institution can no longer act on it. Each moved task is audited (`task.move`, by the
/// staff member who accepted) and the handover is recorded in the patient's record.
async fn move_ownership(tx: &mut Tx, h: &Handover<'_>) -> Result<()> {
    let to = &h.caller.institution_id;
    let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
    let (roles, mut a) = if h.moves.is_empty() {
        tx.exec(
            "UPDATE enrolments SET institution_id = $1 WHERE id = $2",
            args![to, h.enrolment],
        )
        .await?;
        tx.exec(
            "DELETE FROM role_owners WHERE enrolment_id = $1",
            args![h.enrolment],
        )
        .await?;
        (String::new(), args![h.enrolment, to])
    } else {
        for role in h.moves {
            tx.exec(
                "INSERT INTO role_owners (enrolment_id, role, institution_id, referral_id, moved_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (enrolment_id, role) DO UPDATE SET institution_id = excluded.institution_id, referral_id = excluded.referral_id, moved_at = excluded.moved_at",
                args![h.enrolment, role, to, h.referral, h.now.as_second()],
            )
            .await?;
        }
        (
            format!(" AND role IN ({})", placeholders(3, h.moves.len())),
            args![h.enrolment, to],
        )
    };
    a.extend(h.moves.iter().map(|r| Arg::T(r.clone())));
    let open = tx
        .fetch(
            &format!(
                "SELECT id, role, institution_id, status, assignee FROM tasks \
                 WHERE enrolment_id = $1 AND status IN ('open', 'claimed') AND institution_id <> $2{roles} ORDER BY id{lock}"
            ),
            a,
        )
        .await?;
    // Open alarm episodes go where their role's work goes.
    let mut episodes = args![to, h.enrolment];
    episodes.extend(h.moves.iter().map(|r| Arg::T(r.clone())));
    tx.exec(
        &format!(
            "UPDATE alarm_episodes SET institution_id = $1 WHERE enrolment_id = $2 AND closed_at IS NULL{roles}"
        ),
        episodes,
    )
    .await?;
    let mut entries = Vec::new();
    let mut moved = Vec::new();
    for t in open {
        let n = tx
            .exec(
                "UPDATE tasks SET institution_id = $1, status = 'open', assignee = NULL, lease_until = NULL \
                 WHERE id = $2 AND status IN ('open', 'claimed')",
                args![to, t.i64(0)],
            )
            .await?;
        if n != 1 {
            continue;
        }
        entries.push(AuditEntry::new(
            &h.caller.staff_id,
            Some(to),
            "task.move",
            &format!("task/{}", t.i64(0)),
            &[h.patient.to_string()],
            "ok",
            h.remote,
            h.now,
        ));
        moved.push(json!({
            "task": t.i64(0),
            "role": t.text(1),
            "from": t.text(2),
            "released_from": (t.text(3) == "claimed").then(|| t.opt_text(4)).flatten(),
        }));
    }
    append_audit(tx, &entries).await?;
    tx.exec(
        "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'ownership_moved', $5) ON CONFLICT (dedupe_key) DO NOTHING",
        args![
            format!("referral:{}:moved", h.referral),
            h.patient,
            h.enrolment,
            h.now.as_second(),
            json!({
                "referral": h.referral,
                "to": to,
                "roles": if h.moves.is_empty() { json!("all") } else { json!(h.moves) },
                "enrolment_moved": h.moves.is_empty(),
                "tasks": moved,
                "by": h.caller.staff_id,
            })
            .to_string()
        ],
    )
    .await?;
    Ok(())
}

/// What a referral decision did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Decided {
    pub referral: i64,
    /// `accepted`, `rejected` or `arrived`.
    pub status: &'static str,
    pub enrolment_id: i64,
}

/// Referrals sent by the caller's institution, received by it, or open and addressed to it
/// (see [`referral_addressed`]); nothing of another alliance.
pub async fn referrals(
    pool: &Pool,
    caller: &Caller,
    status: Option<&str>,
) -> Result<Vec<ReferralView>> {
    let sql = format!(
        "SELECT r.id, r.enrolment_id, r.patient_id, r.direction, r.to_kind, r.from_institution, r.to_institution, r.status, r.requested_at, r.accept_by, r.reason \
         FROM referrals r WHERE (r.from_institution = $1 OR r.to_institution = $1 OR (r.status = 'requested' AND {})) \
         AND ($2 = '' OR r.status = $2) ORDER BY r.requested_at, r.id LIMIT 500",
        referral_addressed(1)
    );
    let rows = pool
        .fetch(&sql, args![&caller.institution_id, status.unwrap_or("")])
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReferralView {
            id: r.i64(0),
            enrolment_id: r.i64(1),
            patient_id: r.text(2),
            direction: r.text(3),
            to_kind: r.text(4),
            from_institution: r.text(5),
            to_institution: r.opt_text(6),
            status: r.text(7),
            requested_at: super::ts(r.i64(8)).to_string(),
            accept_by: super::ts(r.i64(9)).to_string(),
            reason: r
                .opt_text(10)
                .and_then(|s| serde_json::from_str::<Value>(&s).ok()),
        })
        .collect())
}

/// A referral as the API lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReferralView {
    pub id: i64,
    pub enrolment_id: i64,
    pub patient_id: String,
    pub direction: String,
    pub to_kind: String,
    pub from_institution: String,
    pub to_institution: Option<String>,
    pub status: String,
    pub requested_at: String,
    pub accept_by: String,
    /// Why it was requested, as the pathway recorded it.
    pub reason: Option<Value>,
}

/// [`referrals`] for a request: audited (with the patients listed) before they are returned.
pub async fn list_referrals(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    status: Option<&str>,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<ReferralView>> {
    let rows = referrals(pool, caller, status).await?;
    let patients: Vec<String> = rows.iter().map(|r| r.patient_id.clone()).collect();
    audit
        .append(AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            "referral.list",
            "referrals",
            &patients,
            "ok",
            remote,
            now,
        ))
        .await?;
    Ok(rows)
}

/// Stores readings for the patients visible to the caller (the others' are refused, not
/// revealed) and audits the batch with those patients in the same transaction.
pub async fn ingest_visible(
    pool: &Pool,
    caller: &Caller,
    readings: &[crate::observations::Reading],
    remote: &str,
    now: Timestamp,
) -> Result<super::IngestSummary> {
    let mut tx = pool.begin().await?;
    let summary = ingest_visible_tx(&mut tx, caller, readings, remote, now).await?;
    tx.commit().await?;
    Ok(summary)
}

/// [`ingest_visible`] inside the caller's transaction.
pub async fn ingest_visible_tx(
    tx: &mut Tx,
    caller: &Caller,
    readings: &[crate::observations::Reading],
    remote: &str,
    now: Timestamp,
) -> Result<super::IngestSummary> {
    let mut visible = std::collections::HashSet::new();
    for r in readings {
        if !visible.contains(&r.patient_id) && patient_visible_tx(tx, caller, &r.patient_id).await?
        {
            visible.insert(r.patient_id.clone());
        }
    }
    let summary = super::ingest_readings_tx(tx, readings, &visible, now).await?;
    let mut patients: Vec<String> = visible.into_iter().collect();
    patients.sort();
    caller
        .audit_ok(
            tx,
            "observations.post",
            "observations",
            &patients,
            remote,
            now,
        )
        .await?;
    Ok(summary)
}

/// Tasks one escalation transaction takes on.
const ESCALATION_BATCH: i64 = 1_000;

/// Escalates overdue tasks whose SLA names a supervisor role, and upward referrals not accepted in
/// time; each once (dedupe keys), as tasks for the supervisor or the referral coordinator.
///
/// A task's escalation instant (`escalate_at`, its due time plus the SLA's `escalate_after`) is
/// set when it is written; the sweep reads only the tasks whose instant has come, from their
/// partial index, a batch a transaction until none is left. A task done or cancelled before its
/// instant is let go (its instant cleared) without escalating.
pub async fn escalate_overdue(pool: &Pool, now: Timestamp) -> Result<u64> {
    let (sla, sla_part) = crate::writer::part_column("t", "sla");
    let mut n = 0;
    loop {
        let mut tx = pool.begin().await?;
        let rows = tx
            .fetch(
                &format!(
                    "SELECT t.id, t.enrolment_id, t.patient_id, t.institution_id, t.state_seq, {sla}, t.status, t.escalated_at, t.title_zh, t.title_en FROM tasks t {sla_part} \
                     WHERE t.escalate_at IS NOT NULL AND t.escalate_at <= $1 ORDER BY t.escalate_at, t.id LIMIT $2"
                ),
                args![now.as_second(), ESCALATION_BATCH],
            )
            .await?;
        let taken = rows.len() as i64;
        let ids: Vec<Arg> = rows.iter().map(|r| Arg::I(r.i64(0))).collect();
        if !ids.is_empty() {
            tx.exec(
                &format!(
                    "UPDATE tasks SET escalate_at = NULL WHERE id IN ({})",
                    placeholders(1, ids.len())
                ),
                ids,
            )
            .await?;
        }
        // (escalated task, escalation row) for each open task whose SLA names a role.
        let mut due: Vec<(Arg, Vec<Arg>)> = Vec::new();
        for r in rows {
            let open = matches!(r.text(6).as_str(), "open" | "claimed") && r.opt_i64(7).is_none();
            let role = serde_json::from_str::<carepath_dsl::Sla>(&r.text(5))
                .ok()
                .and_then(|s| s.escalate_to);
            let (true, Some(role)) = (open, role) else {
                continue;
            };
            due.push((
                Arg::I(r.i64(0)),
                // Urgent (3), kept, open and due at once.
                args![
                    format!("escalate:task:{}", r.i64(0)),
                    r.i64(1),
                    r.text(2),
                    r.text(3),
                    r.i64(4),
                    "escalation",
                    role,
                    format!("超时升级：{}", r.text(8)),
                    format!("Overdue, escalated: {}", r.text(9)),
                    3_i64,
                    1_i64,
                    "open",
                    now.as_second(),
                    now.as_second()
                ],
            ));
        }
        const PER_ROW: usize = 14;
        for part in due.chunks(crate::writer::MAX_PARAMS / PER_ROW) {
            let (ids, values): (Vec<Arg>, Vec<Vec<Arg>>) = part.iter().cloned().unzip();
            let mut a = vec![Arg::I(now.as_second())];
            let marks = placeholders(2, ids.len());
            a.extend(ids);
            tx.exec(
                &format!("UPDATE tasks SET escalated_at = $1 WHERE id IN ({marks})"),
                a,
            )
            .await?;
            n += tx
                .exec(
                    &format!(
                        "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, status, due_at, created_at) \
                         VALUES {} ON CONFLICT (dedupe_key) DO NOTHING",
                        crate::values_list_from(1, part.len(), PER_ROW)
                    ),
                    values.into_iter().flatten().collect(),
                )
                .await?;
        }
        tx.commit().await?;
        if taken < ESCALATION_BATCH {
            break;
        }
    }
    let mut tx = pool.begin().await?;
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

/// Withdraws an enrolment visible to the caller (see [`super::withdraw_tx`]), audited.
pub async fn withdraw_scoped(
    pool: &Pool,
    programs: &crate::program::Programs,
    caller: &Caller,
    enrolment: i64,
    reason: &str,
    remote: &str,
    now: Timestamp,
) -> Result<super::Withdrawal> {
    let e = visible_enrolment(pool, caller, enrolment, false).await?;
    let mut tx = pool.begin().await?;
    let done = super::withdraw_tx(
        &mut tx,
        programs,
        enrolment,
        reason,
        Some(&caller.staff_id),
        now,
    )
    .await?;
    caller
        .audit_ok(
            &mut tx,
            "enrolment.withdraw",
            &format!("enrolment/{enrolment}"),
            &[e.patient_id],
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok(done)
}

/// An event reported for an enrolment (by the hospital's systems, a device or an app).
#[derive(Debug, Clone, Copy)]
pub struct ReportedEvent<'a> {
    pub enrolment: i64,
    pub name: &'a str,
    pub at: Timestamp,
    /// Enrolment variables the event sets: each must be declared by the pathway, with a value of
    /// its type.
    pub data: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Records an event for an enrolment visible to the caller, audited. An event the enrolment's
/// pathway version neither declares nor has built in is refused (`Invalid`, with the reason),
/// since no transition or guard of the pathway could ever wait for it.
pub async fn event_scoped(
    pool: &Pool,
    programs: &crate::program::Programs,
    caller: &Caller,
    event: &ReportedEvent<'_>,
    remote: &str,
    now: Timestamp,
) -> Result<bool> {
    let ReportedEvent {
        enrolment,
        name,
        at,
        data,
    } = *event;
    if name == carepath_dsl::catalog::WITHDRAWN {
        return Err(StoreError::Invalid(format!(
            "`{name}` is raised by withdrawing the enrolment (POST /enrolments/{enrolment}/withdraw, with a reason)"
        )));
    }
    let e = visible_enrolment(pool, caller, enrolment, true).await?;
    let version = u32::try_from(e.version).unwrap_or(0);
    let refusal = match programs.get(&e.pathway_id, version) {
        Some(program) => carepath_dsl::events::refusal(&program.pathway, name),
        None if carepath_dsl::catalog::builtin_event(name).is_some() => None,
        None => Some(format!(
            "event `{name}` is not a built-in event, and pathway `{}` v{version} is not loaded to say whether it declares it",
            e.pathway_id
        )),
    };
    if let Some(reason) = refusal {
        return Err(StoreError::Invalid(reason));
    }
    let payload = match data.filter(|d| !d.is_empty()) {
        None => None,
        Some(data) => {
            let Some(program) = programs.get(&e.pathway_id, version) else {
                return Err(StoreError::Invalid(format!(
                    "pathway `{}` v{version} is not loaded to check the variables the event sets",
                    e.pathway_id
                )));
            };
            let set = program
                .pathway
                .event_vars(data)
                .map_err(|m| StoreError::Invalid(format!("data: {m}")))?;
            Some(serde_json::json!({ "set": set }).to_string())
        }
    };
    if at.as_second() < e.enrolled_at {
        return Err(StoreError::Invalid(format!(
            "the event is dated {at}, before the enrolment began ({})",
            super::ts(e.enrolled_at)
        )));
    }
    let mut tx = pool.begin().await?;
    let added = add_event(&mut tx, enrolment, name, at, payload, None, now).await?;
    caller
        .audit_ok(
            &mut tx,
            "enrolment.event",
            &format!("enrolment/{enrolment}"),
            &[e.patient_id],
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok(added)
}

/// The pathway and version of each of these enrolments (a board needs them to offer a task's
/// declared outcomes); ids that do not exist are left out. Names no patient.
pub async fn enrolment_pathways(
    pool: &Pool,
    enrolments: &[i64],
) -> Result<std::collections::HashMap<i64, (String, i64)>> {
    let mut out = std::collections::HashMap::new();
    for part in enrolments.chunks(500) {
        let sql = format!(
            "SELECT id, pathway_id, version FROM enrolments WHERE id IN ({})",
            placeholders(1, part.len())
        );
        let a: Vec<Arg> = part.iter().map(|i| Arg::I(*i)).collect();
        for r in pool.fetch(&sql, a).await? {
            out.insert(r.i64(0), (r.text(1), r.i64(2)));
        }
    }
    Ok(out)
}
