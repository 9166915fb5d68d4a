//! Scale pushes after the pathway pushed them: answers, reminders and expiry.
//!
//! A push is `pending` until exactly one of three things happens to it: it is answered, it expires,
//! or its enrolment is withdrawn (`cancelled`). Each of those is a conditional
//! `UPDATE … WHERE status = 'pending'` whose row count decides who won, so two answers, or an
//! answer and the expiry sweep, cannot both take effect; a unique index on `scale_answers.push_id`
//! backs it. Everything an answer causes (the stored result, the pathway event, urgent tasks of
//! critical rules, the record and audit entries) commits in the same transaction; the caller then
//! advances the enrolment so a guard on the new score acts at once.
//!
//! Reminders are sent by the sweep, not pre-scheduled at push time, so an answered push never
//! reminds. Each reminder has a dedupe key (push, reminder number); after downtime only the latest
//! due reminder is sent and the earlier ones are recorded as skipped, so a patient never receives a
//! burst of stale reminders.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use super::db::placeholders;
use super::queries::{Caller, visible_patient};
use super::writer::MAX_PARAMS;
use super::{
    Arg, NewEvent, Pool, Result, Row, RowBuffer, StoreError, Tx, add_event, add_events, ts,
};
use crate::args;
use carepath_core::scales::{Scales, Text};

/// The follow-up template of a reminder to answer a scale.
pub const REMINDER_TEMPLATE: &str = "scale_reminder";
/// Channels of a reminder, in order of preference (the patient's preferred channel goes first).
const REMINDER_CHANNELS: [&str; 2] = ["wechat", "sms"];
/// Rows handled per transaction by the sweep.
const SWEEP_BATCH: i64 = 500;

/// One scale push as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PushView {
    pub id: i64,
    pub enrolment_id: i64,
    pub patient_id: String,
    pub scale: String,
    pub status: String,
    pub state_seq: i64,
    pub due_at: String,
    pub expires_at: Option<String>,
    pub reminders: Vec<String>,
    pub reminders_sent: i64,
    pub created_at: String,
    pub answered_at: Option<String>,
    pub score: Option<f64>,
    pub band: Option<String>,
}

/// The pushes of an enrolment visible to the caller, oldest first; audited before they are returned.
pub async fn enrolment_pushes(
    pool: &Pool,
    caller: &Caller,
    enrolment: i64,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<PushView>> {
    let sql = format!(
        "SELECT e.patient_id FROM enrolments e JOIN patients p ON p.id = e.patient_id WHERE e.id = $1 AND {}",
        visible_patient(2)
    );
    let Some(owner) = pool
        .fetch(&sql, args![enrolment, &caller.institution_id])
        .await?
        .into_iter()
        .next()
    else {
        return Err(StoreError::NotFound(format!("enrolment {enrolment}")));
    };
    let rows = pool
        .fetch(
            "SELECT s.id, s.enrolment_id, s.patient_id, s.scale, s.status, s.state_seq, s.due_at, s.expires_at, s.reminders, \
             s.reminders_sent, s.created_at, s.answered_at, a.score, a.band \
             FROM scale_pushes s LEFT JOIN scale_answers a ON a.push_id = s.id WHERE s.enrolment_id = $1 ORDER BY s.id",
            args![enrolment],
        )
        .await?;
    let when = |s: i64| ts(s).to_string();
    let list = rows
        .iter()
        .map(|r| PushView {
            id: r.i64(0),
            enrolment_id: r.i64(1),
            patient_id: r.text(2),
            scale: r.text(3),
            status: r.text(4),
            state_seq: r.i64(5),
            due_at: when(r.i64(6)),
            expires_at: r.opt_i64(7).map(when),
            reminders: reminder_times(&r.text(8)).into_iter().map(when).collect(),
            reminders_sent: r.i64(9),
            created_at: when(r.i64(10)),
            answered_at: r.opt_i64(11).map(when),
            score: r.opt_text(13).map(|_| r.f64(12)),
            band: r.opt_text(13),
        })
        .collect();
    let mut tx = pool.begin().await?;
    caller
        .audit_ok(
            &mut tx,
            "scale_push.list",
            &format!("enrolment/{enrolment}"),
            &[owner.text(0)],
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok(list)
}

/// One stored reminder: its instant and, for a step of a reminder chain, how it reaches the
/// patient (none: a message over the preferred channel with the standard template).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
struct StoredReminder {
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<carepath_dsl::ReminderBy>,
}

/// A push's reminders as stored, in time order, with the first instant: plain instants
/// (`[t1, t2]`) when there is no chain, else `[{ "at": t, "by": … }, …]`.
pub(crate) fn stored_reminders(
    plain: &[Timestamp],
    chain: &[(Timestamp, carepath_dsl::ReminderBy)],
) -> (String, Option<i64>) {
    let all: Vec<StoredReminder> = carepath_core::scales::reminder_steps(plain, chain)
        .into_iter()
        .map(|(t, by)| StoredReminder {
            at: t.as_second(),
            by,
        })
        .collect();
    let first = all.first().map(|r| r.at);
    let text = if chain.is_empty() {
        serde_json::to_string(&all.iter().map(|r| r.at).collect::<Vec<_>>())
    } else {
        serde_json::to_string(&all)
    };
    (text.unwrap_or_default(), first)
}

/// The reminders of a push, in time order (unreadable text reads as none).
fn stored(text: &str) -> Vec<StoredReminder> {
    let mut v: Vec<StoredReminder> = match serde_json::from_str::<Vec<i64>>(text) {
        Ok(times) => times
            .into_iter()
            .map(|at| StoredReminder { at, by: None })
            .collect(),
        Err(_) => serde_json::from_str(text).unwrap_or_default(),
    };
    v.sort_by_key(|r| r.at);
    v
}

/// The reminder instants of a push, in time order (unreadable text reads as none).
fn reminder_times(text: &str) -> Vec<i64> {
    stored(text).into_iter().map(|r| r.at).collect()
}

use carepath_core::scales::plan_reminders;

/// A critical rule that fired, with the urgent task it raised.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CriticalRaised {
    pub item: String,
    pub number: usize,
    pub value: i64,
    pub action: String,
    pub role: String,
    pub text: Text,
    pub task_id: Option<i64>,
}

/// What recording an answer did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Answered {
    pub push_id: i64,
    pub enrolment_id: i64,
    pub patient_id: String,
    pub scale: String,
    pub score: f64,
    pub band: String,
    pub band_text: Text,
    /// Scored value of each item, in item order.
    pub items: Vec<i64>,
    pub critical: Vec<CriticalRaised>,
    pub answered_at: String,
}

/// Records the answers to a push visible to the caller: scores them against the scale definition,
/// stores the result, marks the push answered, adds the event `scale_answered:<scale>`, raises an
/// urgent task for each critical rule that fires, and audits it, all in one transaction.
///
/// Refused: an unknown or invisible push (`NotFound`); a push that is not pending, or past its
/// expiry (`Conflict`); answers that are incomplete, name unknown items or hold values the item
/// does not allow, and an answer time in the future or before the push (`Invalid`).
#[allow(clippy::too_many_arguments)]
pub async fn answer_push(
    pool: &Pool,
    scales: &Scales,
    caller: &Caller,
    push: i64,
    answers: &BTreeMap<String, i64>,
    answered_at: Option<Timestamp>,
    remote: &str,
    now: Timestamp,
) -> Result<Answered> {
    let mut tx = pool.begin().await?;
    let answered = answer_push_tx(
        &mut tx,
        scales,
        caller,
        push,
        answers,
        answered_at,
        remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(answered)
}

/// [`answer_push`] inside the caller's transaction, which commits it with whatever else it holds
/// (a refusal writes nothing; the caller rolls back).
#[allow(clippy::too_many_arguments)]
pub async fn answer_push_tx(
    tx: &mut Tx,
    scales: &Scales,
    caller: &Caller,
    push: i64,
    answers: &BTreeMap<String, i64>,
    answered_at: Option<Timestamp>,
    remote: &str,
    now: Timestamp,
) -> Result<Answered> {
    let sql = format!(
        "SELECT s.enrolment_id, s.patient_id, s.scale, s.status, s.expires_at, s.created_at, e.institution_id, e.state_seq \
         FROM scale_pushes s JOIN enrolments e ON e.id = s.enrolment_id JOIN patients p ON p.id = s.patient_id \
         WHERE s.id = $1 AND {}",
        visible_patient(2)
    );
    let row = tx
        .fetch_one(&sql, args![push, &caller.institution_id])
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("scale push {push}")))?;
    let (enrolment, patient, scale, status) = (row.i64(0), row.text(1), row.text(2), row.text(3));
    let (institution, state_seq) = (row.text(6), row.i64(7));
    if status != "pending" {
        return Err(not_pending(push, &status));
    }
    if let Some(expires) = row.opt_i64(4)
        && expires <= now.as_second()
    {
        return Err(StoreError::Conflict(format!(
            "scale push {push} expired at {}; it can no longer be answered",
            ts(expires)
        )));
    }
    // Stored in whole seconds, like every instant; answer with what was stored.
    let at = ts(answered_at.unwrap_or(now).as_second());
    if at > now {
        return Err(StoreError::Invalid(format!(
            "answered_at {at} is in the future"
        )));
    }
    if at.as_second() < row.i64(5) {
        return Err(StoreError::Invalid(format!(
            "answered_at {at} is before the scale was pushed ({})",
            ts(row.i64(5))
        )));
    }
    let scored = scales
        .score(&scale, answers)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    // The guarded update decides the one winner among concurrent answers (and the expiry sweep).
    let won = tx
        .exec(
            "UPDATE scale_pushes SET status = 'answered', answered_at = $1, next_reminder_at = NULL WHERE id = $2 AND status = 'pending'",
            args![at.as_second(), push],
        )
        .await?;
    if won == 0 {
        let now_status = tx
            .fetch_one("SELECT status FROM scale_pushes WHERE id = $1", args![push])
            .await?
            .map(|r| r.text(0))
            .unwrap_or_default();
        return Err(not_pending(push, &now_status));
    }
    tx.exec(
        "INSERT INTO scale_answers (push_id, patient_id, scale, answers, raw, score, band, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        args![
            push,
            &patient,
            &scale,
            serde_json::to_string(&scored.items).unwrap_or_default(),
            serde_json::to_string(answers).unwrap_or_default(),
            scored.score,
            &scored.band,
            at.as_second()
        ],
    )
    .await?;
    cancel_reminders(tx, enrolment, push).await?;
    let key = format!("scale:{push}:answered");
    add_event(
        tx,
        enrolment,
        &format!("scale_answered:{scale}"),
        at,
        Some(json!({"push": push, "score": scored.score, "band": scored.band}).to_string()),
        Some(key.clone()),
        now,
    )
    .await?;
    let mut critical = Vec::new();
    for hit in &scored.critical {
        let (Some(rule), Some(task)) = (&hit.rule, hit.task(&scale, now)) else {
            continue;
        };
        if !matches!(task, carepath_core::step::Produced::Task { .. }) {
            continue;
        }
        let task_key = format!("scale:{push}:critical:{}", hit.item);
        let task_id = crate::insert_kept_task(
            tx,
            &task_key,
            enrolment,
            &patient,
            &institution,
            state_seq,
            &task,
            now,
        )
        .await?;
        tx.exec(
            "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'scale_critical', $5) ON CONFLICT (dedupe_key) DO NOTHING",
            args![&task_key, &patient, enrolment, now.as_second(), json!({"push": push, "scale": scale, "item": hit.item, "value": hit.value, "action": hit.action, "role": rule.role, "task": task_id}).to_string()],
        )
        .await?;
        critical.push(CriticalRaised {
            item: hit.item.clone(),
            number: hit.number,
            value: hit.value,
            action: hit.action.clone(),
            role: rule.role.clone(),
            text: hit.text.clone(),
            task_id,
        });
    }
    tx.exec(
        "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'scale_answered', $5)",
        args![&key, &patient, enrolment, at.as_second(), json!({"push": push, "scale": scale, "score": scored.score, "band": scored.band, "critical": critical.len(), "by": caller.staff_id}).to_string()],
    )
    .await?;
    caller
        .audit_ok(
            tx,
            "scale_push.answer",
            &format!("scale-push/{push}"),
            std::slice::from_ref(&patient),
            remote,
            now,
        )
        .await?;
    Ok(Answered {
        push_id: push,
        enrolment_id: enrolment,
        patient_id: patient,
        scale,
        score: scored.score,
        band: scored.band,
        band_text: scored.band_text,
        items: scored.items,
        critical,
        answered_at: at.to_string(),
    })
}

fn not_pending(push: i64, status: &str) -> StoreError {
    StoreError::Conflict(format!(
        "scale push {push} is {status}; only a pending push can be answered"
    ))
}

/// Reminders of a push that were created but not sent yet are withdrawn once it is settled.
async fn cancel_reminders(tx: &mut Tx, enrolment: i64, push: i64) -> Result<()> {
    cancel_reminders_of(tx, &[(enrolment, push)]).await
}

/// Cancels the scheduled reminders, and their pending messages, of each `(enrolment, push)`.
pub(crate) async fn cancel_reminders_of(tx: &mut Tx, pushes: &[(i64, i64)]) -> Result<()> {
    for part in pushes.chunks(MAX_PARAMS / 2) {
        let mut a: Vec<Arg> = part.iter().map(|(e, _)| Arg::I(*e)).collect();
        a.extend(part.iter().map(|(_, p)| Arg::T(format!("scale_push:{p}"))));
        // Reminder tasks of a chain still open: the push no longer waits for an answer.
        tx.exec(
            &format!(
                "UPDATE tasks SET status = 'cancelled', cancel_reason = 'scale push no longer pending' \
                 WHERE enrolment_id IN ({}) AND task_ref IN ({}) AND status IN ('open', 'claimed')",
                placeholders(1, part.len()),
                placeholders(part.len() + 1, part.len())
            ),
            a.clone(),
        )
        .await?;
        let follow_ups: Vec<Arg> = tx
            .fetch(
                &format!(
                    "UPDATE follow_ups SET status = 'cancelled' WHERE enrolment_id IN ({}) AND follow_up_ref IN ({}) \
                     AND status = 'scheduled' RETURNING id",
                    placeholders(1, part.len()),
                    placeholders(part.len() + 1, part.len())
                ),
                a,
            )
            .await?
            .iter()
            .map(|r| Arg::I(r.i64(0)))
            .collect();
        for ids in follow_ups.chunks(MAX_PARAMS) {
            tx.exec(
                &format!(
                    "UPDATE outbox SET status = 'cancelled' WHERE follow_up_id IN ({}) AND status = 'pending'",
                    placeholders(1, ids.len())
                ),
                ids.to_vec(),
            )
            .await?;
        }
    }
    Ok(())
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct ScaleSweep {
    /// Reminders created (each a follow-up with its outbox row).
    pub reminders: u64,
    /// Reminders whose time passed while a later one was also due: recorded, not sent.
    pub reminders_skipped: u64,
    /// Pushes marked expired (each with the event `scale_expired:<scale>`).
    pub expired: u64,
}

/// Expires pending pushes past `expires_at`, then creates the reminders that have come due. Running
/// it again at the same `now` creates nothing: every change is a conditional update, and every row
/// it inserts has a dedupe key.
pub async fn scale_push_sweep(pool: &Pool, now: Timestamp) -> Result<ScaleSweep> {
    let mut out = ScaleSweep::default();
    loop {
        let n = expire_batch(pool, now, &mut out).await?;
        if n < SWEEP_BATCH as usize {
            break;
        }
    }
    loop {
        let n = remind_batch(pool, now, &mut out).await?;
        if n < SWEEP_BATCH as usize {
            break;
        }
    }
    Ok(out)
}

/// Expires one batch; returns how many pushes it looked at.
async fn expire_batch(pool: &Pool, now: Timestamp, out: &mut ScaleSweep) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = tx
        .fetch(
            "SELECT id, enrolment_id, patient_id, scale, expires_at FROM scale_pushes \
             WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2",
            args![now.as_second(), SWEEP_BATCH],
        )
        .await?;
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(0);
    }
    // One conditional update claims every push still pending; an answer that won the race keeps
    // its push.
    let ids: Vec<Arg> = rows.iter().map(|r| Arg::I(r.i64(0))).collect();
    let won: HashSet<i64> = tx
        .fetch(
            &format!(
                "UPDATE scale_pushes SET status = 'expired', next_reminder_at = NULL WHERE id IN ({}) AND status = 'pending' RETURNING id",
                placeholders(1, ids.len())
            ),
            ids,
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect();
    let expired: Vec<&Row> = rows.iter().filter(|r| won.contains(&r.i64(0))).collect();
    out.expired += expired.len() as u64;
    let pushes: Vec<(i64, i64)> = expired.iter().map(|r| (r.i64(1), r.i64(0))).collect();
    cancel_reminders_of(&mut tx, &pushes).await?;
    let mut buf = RowBuffer::default();
    let mut events = Vec::with_capacity(expired.len());
    for r in expired {
        let (push, enrolment, patient, scale, expires) =
            (r.i64(0), r.i64(1), r.text(2), r.text(3), r.i64(4));
        let key = format!("scale:{push}:expired");
        buf.record(
            Some(key.clone()),
            &patient,
            enrolment,
            expires,
            "scale_expired",
            json!({"push": push, "scale": scale}).to_string(),
        );
        events.push(NewEvent {
            enrolment,
            name: format!("scale_expired:{scale}"),
            at: ts(expires),
            payload: Some(json!({"push": push}).to_string()),
            source_key: Some(key),
            created_at: now,
        });
    }
    buf.flush(&mut tx).await?;
    add_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(rows.len())
}

/// Creates the due reminders of one batch of pushes; returns how many pushes it looked at.
async fn remind_batch(pool: &Pool, now: Timestamp, out: &mut ScaleSweep) -> Result<usize> {
    let mut tx = pool.begin().await?;
    let rows = tx
        .fetch(
            "SELECT s.id, s.enrolment_id, s.patient_id, s.state_seq, s.scale, s.reminders, s.reminders_sent, \
             e.institution_id, e.pathway_id, p.preferred_channel \
             FROM scale_pushes s JOIN enrolments e ON e.id = s.enrolment_id JOIN patients p ON p.id = s.patient_id \
             WHERE s.status = 'pending' AND s.next_reminder_at IS NOT NULL AND s.next_reminder_at <= $1 \
             ORDER BY s.next_reminder_at, s.id LIMIT $2",
            args![now.as_second(), SWEEP_BATCH],
        )
        .await?;
    for r in &rows {
        let (push, enrolment, patient, state_seq, scale) =
            (r.i64(0), r.i64(1), r.text(2), r.i64(3), r.text(4));
        let times = reminder_times(&r.text(5));
        let sent = r.i64(6).max(0) as usize;
        let plan = plan_reminders(&times, sent, now.as_second());
        let won = tx
            .exec(
                "UPDATE scale_pushes SET reminders_sent = $1, next_reminder_at = $2 WHERE id = $3 AND status = 'pending' AND reminders_sent = $4",
                args![plan.sent as i64, plan.next, push, sent as i64],
            )
            .await?;
        let Some(last) = plan.send.filter(|_| won > 0) else {
            continue;
        };
        let skipped = plan.skipped as u64;
        out.reminders_skipped += skipped;
        let key = format!("scale:{push}:reminder:{}", last + 1);
        let steps = stored(&r.text(5));
        let by = steps.get(last).and_then(|s| s.by.clone());
        let detail = json!({"push": push, "scale": scale, "reminder": last + 1, "of": times.len(), "skipped": skipped});
        let (channels, template) = match by {
            Some(carepath_dsl::ReminderBy::Task { role, title, due }) => {
                let due_at = crate::time::add(ts(times[last]), due, &crate::time::zone("UTC"));
                tx.exec(
                    "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, status, due_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, 'open', $11, $12) ON CONFLICT (dedupe_key) DO NOTHING",
                    args![&key, enrolment, &patient, r.text(7), state_seq, format!("scale_push:{push}"), &role, &title.zh, &title.en, carepath_dsl::Priority::Normal as i64, due_at.as_second(), times[last]],
                )
                .await?;
                tx.exec(
                    "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'scale_reminder', $5) ON CONFLICT (dedupe_key) DO NOTHING",
                    args![&key, &patient, enrolment, now.as_second(), detail.to_string()],
                )
                .await?;
                out.reminders += 1;
                continue;
            }
            Some(carepath_dsl::ReminderBy::Message { channels, template }) => (
                channels
                    .iter()
                    .map(|c| c.as_str().to_string())
                    .collect::<Vec<_>>(),
                template,
            ),
            None => {
                let mut channels: Vec<String> =
                    REMINDER_CHANNELS.iter().map(|c| c.to_string()).collect();
                if let Some(pref) = r.opt_text(9).filter(|c| channels.contains(c)) {
                    channels.retain(|c| *c != pref);
                    channels.insert(0, pref);
                }
                (channels, REMINDER_TEMPLATE.to_string())
            }
        };
        let channels_json = serde_json::to_string(&channels).unwrap_or_default();
        let follow_up = tx
            .fetch_one(
                "INSERT INTO follow_ups (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, follow_up_ref, template, channels, send_at, urgent, status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, 'scheduled', $10) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                args![&key, enrolment, &patient, r.text(7), state_seq, format!("scale_push:{push}"), &template, &channels_json, times[last], now.as_second()],
            )
            .await?;
        let Some(follow_up) = follow_up.map(|f| f.i64(0)) else {
            continue;
        };
        let payload = json!({"template": template, "channels": channels, "urgent": false, "pathway": r.text(8), "scale": scale});
        tx.exec(
            "INSERT INTO outbox (dedupe_key, follow_up_id, patient_id, channel, template, payload, status, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) ON CONFLICT (dedupe_key) DO NOTHING",
            args![&key, follow_up, &patient, &channels[0], &template, payload.to_string(), now.as_second()],
        )
        .await?;
        tx.exec(
            "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'scale_reminder', $5) ON CONFLICT (dedupe_key) DO NOTHING",
            args![&key, &patient, enrolment, now.as_second(), detail.to_string()],
        )
        .await?;
        out.reminders += 1;
    }
    tx.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reminder_times_are_sorted_and_unreadable_text_is_none() {
        assert_eq!(reminder_times("[300, 100, 200]"), vec![100, 200, 300]);
        assert_eq!(reminder_times("not json"), Vec::<i64>::new());
        assert_eq!(reminder_times("[]"), Vec::<i64>::new());
    }
}
