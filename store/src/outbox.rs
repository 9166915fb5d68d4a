//! The delivery queue's SQL: claiming due outbox rows, and recording what became of each attempt.
//!
//! Every write that follows a send is fenced by the attempt count the row was claimed with
//! (`WHERE status = 'sending' AND attempts = $n`): a dispatcher that stalled past its lease, whose
//! row another dispatcher has since reclaimed (which counts another attempt), writes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;

use super::db::{self, Arg};
use super::{Pool, Result, Row, Tx};
use crate::args;

/// One outbox row that is due, with what delivering it needs from its follow-up and patient.
#[derive(Debug, Clone)]
pub struct DueMessage {
    pub id: i64,
    pub key: String,
    /// The pseudonymous patient id (the only patient identifier that may be logged).
    pub patient_id: String,
    pub channel: String,
    pub template: String,
    pub payload: String,
    /// `pending`, or `sending` for a row whose lease ran out (its dispatcher died mid-send).
    pub status: String,
    pub attempts: i64,
    pub channel_attempts: i64,
    pub next_attempt_at: i64,
    pub follow_up_id: Option<i64>,
    pub follow_up_status: Option<String>,
    pub enrolment_id: Option<i64>,
    pub state_seq: Option<i64>,
    pub send_at: Option<i64>,
    /// The enrolment's institution (the patient's when there is no follow-up).
    pub institution_id: String,
    pub pathway_id: Option<String>,
    pub pathway_version: Option<i64>,
    pub tz: String,
    pub contact_enc: Option<String>,
    pub preferred_channel: Option<String>,
    pub hospital: String,
}

const DUE_COLUMNS: &str = "o.id, o.dedupe_key, o.patient_id, o.channel, o.template, o.payload, o.status, \
     o.attempts, o.channel_attempts, o.next_attempt_at, f.id, f.status, f.enrolment_id, f.state_seq, \
     f.send_at, COALESCE(f.institution_id, p.institution_id), e.pathway_id, e.version, p.tz, \
     p.contact_enc, p.preferred_channel, i.name";

const DUE_FROM: &str = "FROM outbox o JOIN patients p ON p.id = o.patient_id \
     LEFT JOIN institutions i ON i.id = p.institution_id \
     LEFT JOIN follow_ups f ON f.id = o.follow_up_id \
     LEFT JOIN enrolments e ON e.id = f.enrolment_id";

fn due_from_row(r: &Row) -> DueMessage {
    DueMessage {
        id: r.i64(0),
        key: r.text(1),
        patient_id: r.text(2),
        channel: r.text(3),
        template: r.text(4),
        payload: r.text(5),
        status: r.text(6),
        attempts: r.i64(7),
        channel_attempts: r.i64(8),
        next_attempt_at: r.i64(9),
        follow_up_id: r.opt_i64(10),
        follow_up_status: r.opt_text(11),
        enrolment_id: r.opt_i64(12),
        state_seq: r.opt_i64(13),
        send_at: r.opt_i64(14),
        institution_id: r.text(15),
        pathway_id: r.opt_text(16),
        pathway_version: r.opt_i64(17),
        tz: r.text(18),
        contact_enc: r.opt_text(19),
        preferred_channel: r.opt_text(20),
        hospital: r.text(21),
    }
}

/// Up to `limit` rows to work on at `now`: pending rows that are due, in due order, then rows stuck
/// in `sending` past their lease. On PostgreSQL they stay locked by this transaction and other
/// dispatchers skip them.
pub async fn due(tx: &mut Tx, now: i64, limit: i64) -> Result<Vec<DueMessage>> {
    let mut out = picked(
        tx,
        "status = 'pending' AND next_attempt_at <= $1",
        "next_attempt_at",
        now,
        limit,
    )
    .await?;
    let room = limit - out.len() as i64;
    if room > 0 {
        out.extend(
            picked(
                tx,
                "status = 'sending' AND lease_until <= $1",
                "lease_until",
                now,
                room,
            )
            .await?,
        );
    }
    Ok(out)
}

/// Picks (and on PostgreSQL locks) up to `limit` rows from the outbox alone, in index order, then
/// reads what they need from the other tables: a plan that stays a short index scan whatever the
/// planner's statistics say about a large backlog.
async fn picked(
    tx: &mut Tx,
    cond: &str,
    order: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<DueMessage>> {
    let lock = if tx.is_postgres() {
        " FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "WITH picked AS (SELECT id FROM outbox WHERE {cond} ORDER BY {order}, id LIMIT $2{lock}) \
         SELECT {DUE_COLUMNS} {DUE_FROM} WHERE o.id IN (SELECT id FROM picked) ORDER BY o.{order}, o.id"
    );
    Ok(tx
        .fetch(&sql, args![now, limit])
        .await?
        .iter()
        .map(due_from_row)
        .collect())
}

/// When each of `patients` was last sent something since `since`, counting rows another dispatcher
/// is sending right now (their lease still runs) as sent at `now`.
pub async fn recent_sends(
    tx: &mut Tx,
    patients: &[String],
    since: i64,
    now: i64,
) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for chunk in patients.chunks(100) {
        let list = db::placeholders(3, chunk.len());
        let mut a: Vec<Arg> = args![since, now];
        a.extend(chunk.iter().map(|p| Arg::T(p.clone())));
        let rows = tx
            .fetch(
                &format!(
                    "SELECT patient_id, COALESCE(sent_at, $2) FROM outbox WHERE patient_id IN ({list}) \
                     AND ((status = 'sent' AND sent_at >= $1) OR (status = 'sending' AND lease_until > $2))"
                ),
                a,
            )
            .await?;
        out.extend(rows.iter().map(|r| (r.text(0), r.i64(1))));
    }
    Ok(out)
}

/// Puts a due row back to wait until `until` without counting an attempt (quiet hours, daily cap).
pub async fn defer(tx: &mut Tx, m: &DueMessage, until: i64) -> Result<bool> {
    Ok(tx
        .exec(
            "UPDATE outbox SET status = 'pending', next_attempt_at = $1, lease_until = NULL \
             WHERE id = $2 AND status = $3 AND attempts = $4",
            args![until, m.id, &m.status, m.attempts],
        )
        .await?
        > 0)
}

/// `($first, …), (…), …`: `rows` tuples of `width` placeholders.
fn tuples(first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", db::placeholders(first + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One claim decided in a batch: the row, its channel for this attempt and the attempts on it.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    pub message: &'a DueMessage,
    pub channel: &'a str,
    pub channel_attempts: i64,
}

/// Claims rows for one attempt each: the attempt is counted now, before anything is sent.
/// Returns the ids claimed.
pub async fn claim_many(
    tx: &mut Tx,
    claims: &[Claim<'_>],
    lease_until: i64,
) -> Result<HashSet<i64>> {
    let mut done = HashSet::new();
    // Five values a row; statements stay short (sqlx looks SQLite parameters up by name).
    for part in claims.chunks(24) {
        let mut a: Vec<Arg> = args![lease_until];
        for c in part {
            a.extend(args![
                c.message.id,
                c.channel,
                c.channel_attempts,
                &c.message.status,
                c.message.attempts
            ]);
        }
        let rows = tx
            .fetch(
                &format!(
                    "UPDATE outbox AS o SET status = 'sending', attempts = o.attempts + 1, channel = v.column2, \
                     channel_attempts = v.column3, lease_until = $1 FROM (VALUES {}) AS v \
                     WHERE o.id = v.column1 AND o.status = v.column4 AND o.attempts = v.column5 RETURNING id",
                    tuples(2, part.len(), 5)
                ),
                a,
            )
            .await?;
        done.extend(rows.iter().map(|r| r.i64(0)));
    }
    Ok(done)
}

/// [`mark_sent`] for many rows in few statements; returns the ids written (the others were fenced).
pub async fn mark_sent_many(tx: &mut Tx, sent: &[Attempted<'_>], now: i64) -> Result<HashSet<i64>> {
    let mut done = HashSet::new();
    for part in sent.chunks(40) {
        let mut a: Vec<Arg> = args![now];
        for s in part {
            a.extend(args![s.message.id, s.channel, s.attempts]);
        }
        let rows = tx
            .fetch(
                &format!(
                    "UPDATE outbox AS o SET status = 'sent', sent_at = $1, channel = v.column2, lease_until = NULL \
                     FROM (VALUES {}) AS v WHERE o.id = v.column1 AND o.status = 'sending' AND o.attempts = v.column3 \
                     RETURNING id",
                    tuples(2, part.len(), 3)
                ),
                a,
            )
            .await?;
        let ids: HashSet<i64> = rows.iter().map(|r| r.i64(0)).collect();
        let written: Vec<&Attempted<'_>> = part
            .iter()
            .filter(|s| ids.contains(&s.message.id))
            .collect();
        let follow_ups: Vec<Arg> = written
            .iter()
            .filter_map(|s| s.message.follow_up_id.map(Arg::I))
            .collect();
        if !follow_ups.is_empty() {
            tx.exec(
                &format!(
                    "UPDATE follow_ups SET status = 'sent' WHERE id IN ({}) AND status IN ('scheduled', 'failed', 'parked')",
                    db::placeholders(1, follow_ups.len())
                ),
                follow_ups,
            )
            .await?;
        }
        if !written.is_empty() {
            let mut a: Vec<Arg> = args![now];
            for s in &written {
                let m = s.message;
                a.extend(args![
                    format!("{}:delivered", m.key),
                    &m.patient_id,
                    m.enrolment_id,
                    json!({"channel": s.channel, "attempts": s.attempts, "template": m.template})
                        .to_string()
                ]);
            }
            let values: Vec<String> = (0..written.len())
                .map(|i| {
                    let b = 2 + i * 4;
                    format!(
                        "(${b}, ${}, ${}, $1, 'delivered', ${})",
                        b + 1,
                        b + 2,
                        b + 3
                    )
                })
                .collect();
            tx.exec(
                &format!(
                    "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES {} \
                     ON CONFLICT (dedupe_key) DO NOTHING",
                    values.join(", ")
                ),
                a,
            )
            .await?;
        }
        done.extend(ids);
    }
    Ok(done)
}

/// Cancels a row whose follow-up was cancelled after the row was claimed once (a pending row of a
/// cancelled follow-up is cancelled with it by the store).
pub async fn cancel(tx: &mut Tx, m: &DueMessage) -> Result<bool> {
    Ok(tx
        .exec(
            "UPDATE outbox SET status = 'cancelled', lease_until = NULL WHERE id = $1 AND status = $2 AND attempts = $3",
            args![m.id, &m.status, m.attempts],
        )
        .await?
        > 0)
}

/// What one claimed attempt was, to fence the write that records its outcome.
#[derive(Debug, Clone)]
pub struct Attempted<'a> {
    pub message: &'a DueMessage,
    /// The attempt count after the claim.
    pub attempts: i64,
    pub channel: &'a str,
}

/// Records a delivery: the row is sent, its follow-up is sent, and the patient's record says so.
pub async fn mark_sent(tx: &mut Tx, a: &Attempted<'_>, now: i64) -> Result<bool> {
    let m = a.message;
    let n = tx
        .exec(
            "UPDATE outbox SET status = 'sent', sent_at = $1, channel = $2, lease_until = NULL \
             WHERE id = $3 AND status = 'sending' AND attempts = $4",
            args![now, a.channel, m.id, a.attempts],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    follow_up_status(tx, m, "sent").await?;
    record(
        tx,
        m,
        format!("{}:delivered", m.key),
        now,
        "delivered",
        json!({"channel": a.channel, "attempts": a.attempts, "template": m.template}),
    )
    .await?;
    Ok(true)
}

/// Records a failed attempt that will be retried at `next_at` on `channel`.
pub async fn mark_retry(
    tx: &mut Tx,
    a: &Attempted<'_>,
    channel: &str,
    channel_attempts: i64,
    next_at: i64,
    error: &str,
) -> Result<bool> {
    Ok(tx
        .exec(
            "UPDATE outbox SET status = 'pending', channel = $1, channel_attempts = $2, next_attempt_at = $3, \
             last_error = $4, lease_until = NULL WHERE id = $5 AND status = 'sending' AND attempts = $6",
            args![channel, channel_attempts, next_at, error, a.message.id, a.attempts],
        )
        .await?
        > 0)
}

/// Dead-letters a row: `parked` with its last error; its follow-up becomes `follow_up_status`
/// (`parked` when attempts ran out, `failed` when no channel can ever deliver it).
/// `expected` fences the write: the status and attempt count the row is known to have.
pub async fn mark_parked(
    tx: &mut Tx,
    m: &DueMessage,
    expected: (&str, i64),
    error: &str,
    follow_up: &str,
    now: i64,
) -> Result<bool> {
    let n = tx
        .exec(
            "UPDATE outbox SET status = 'parked', last_error = $1, lease_until = NULL \
             WHERE id = $2 AND status = $3 AND attempts = $4",
            args![error, m.id, expected.0, expected.1],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    follow_up_status(tx, m, follow_up).await?;
    record(
        tx,
        m,
        format!("{}:parked:{}:{now}", m.key, expected.1),
        now,
        "delivery_parked",
        json!({"attempts": expected.1, "error": error, "template": m.template, "follow_up": follow_up}),
    )
    .await?;
    Ok(true)
}

async fn follow_up_status(tx: &mut Tx, m: &DueMessage, status: &str) -> Result<()> {
    if let Some(f) = m.follow_up_id {
        // A follow-up cancelled meanwhile (its state was left) stays cancelled.
        tx.exec(
            "UPDATE follow_ups SET status = $1 WHERE id = $2 AND status IN ('scheduled', 'failed', 'parked')",
            args![status, f],
        )
        .await?;
    }
    Ok(())
}

async fn record(
    tx: &mut Tx,
    m: &DueMessage,
    key: String,
    at: i64,
    kind: &str,
    detail: serde_json::Value,
) -> Result<()> {
    tx.exec(
        "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (dedupe_key) DO NOTHING",
        args![key, &m.patient_id, m.enrolment_id, at, kind, detail.to_string()],
    )
    .await?;
    Ok(())
}

/// A call task for staff, standing in for a message on the phone channel.
#[derive(Debug, Clone)]
pub struct PhoneTask {
    pub role: String,
    pub title_zh: String,
    pub title_en: String,
    pub priority: i64,
    pub due_at: i64,
}

/// Opens the phone channel's call task, keyed `<outbox key>:phone` so it exists once whatever
/// retries happen. Returns false when the row has no enrolment to attach a task to.
pub async fn insert_phone_task(
    tx: &mut Tx,
    m: &DueMessage,
    t: &PhoneTask,
    now: i64,
) -> Result<bool> {
    let (Some(enrolment), Some(seq)) = (m.enrolment_id, m.state_seq) else {
        return Ok(false);
    };
    tx.exec(
        &format!(
            "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, \
             title_zh, title_en, priority, keep, sla, status, due_at, created_at) \
             VALUES ($1, $2, $3, {}, $5, NULL, $6, $7, $8, $9, 0, NULL, 'open', $10, $11) ON CONFLICT (dedupe_key) DO NOTHING",
            crate::task_institution(2, 6, 4)
        ),
        args![
            format!("{}:phone", m.key),
            enrolment,
            &m.patient_id,
            &m.institution_id,
            seq,
            &t.role,
            &t.title_zh,
            &t.title_en,
            t.priority,
            t.due_at,
            now
        ],
    )
    .await?;
    Ok(true)
}

/// The owner role (the case manager) of every published pathway version.
pub async fn owner_roles(tx: &mut Tx) -> Result<HashMap<(String, i64), String>> {
    let rows = tx
        .fetch(
            "SELECT pathway_id, version, model FROM pathway_versions",
            vec![],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let role = serde_json::from_str::<serde_json::Value>(&r.text(2))
            .ok()
            .and_then(|v| {
                v.get("owner_role")
                    .and_then(|x| x.as_str())
                    .map(str::to_string)
            });
        if let Some(role) = role {
            out.insert((r.text(0), r.i64(1)), role);
        }
    }
    Ok(out)
}

/// Puts parked rows (all, or those with the given keys) back in the queue: pending now, attempts
/// and channel route from the start, the same idempotency key. Their follow-ups are scheduled again.
pub async fn retry_parked(pool: &Pool, keys: Option<&[String]>, now: i64) -> Result<u64> {
    let (list, keys): (Option<String>, Vec<Arg>) = match keys {
        Some([]) => return Ok(0),
        Some(keys) => (
            Some(db::placeholders(2, keys.len())),
            keys.iter().map(|k| Arg::T(k.clone())).collect(),
        ),
        None => (None, Vec::new()),
    };
    let cond = list
        .map(|l| format!(" AND dedupe_key IN ({l})"))
        .unwrap_or_default();
    let mut tx = pool.begin().await?;
    // The follow-up statement numbers its keys from $2 too: $1 is a constant there.
    let mut fa = vec![Arg::T("parked".into())];
    fa.extend(keys.iter().cloned());
    tx.exec(
        &format!(
            "UPDATE follow_ups SET status = 'scheduled' WHERE status IN ('parked', 'failed') AND id IN \
             (SELECT follow_up_id FROM outbox WHERE status = $1{cond})"
        ),
        fa,
    )
    .await?;
    let mut oa = vec![Arg::I(now)];
    oa.extend(keys);
    let n = tx
        .exec(
            &format!(
                "UPDATE outbox SET status = 'pending', attempts = 0, channel_attempts = 0, next_attempt_at = $1, \
                 lease_until = NULL WHERE status = 'parked'{cond}"
            ),
            oa,
        )
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// How many outbox rows are in each status.
pub async fn status_counts(pool: &Pool) -> Result<BTreeMap<String, i64>> {
    Ok(pool
        .fetch(
            "SELECT status, COUNT(*) FROM outbox GROUP BY status",
            vec![],
        )
        .await?
        .iter()
        .map(|r| (r.text(0), r.i64(1)))
        .collect())
}
