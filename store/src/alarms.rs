//! Alarm episodes: rules judged as readings arrive and as silence lasts, and the episodes staff
//! acknowledge and resolve.
//!
//! The rule itself is the core's (`carepath_core::alarms`): this module keeps each armed rule's
//! state in its row (`alarm_rules.state`), feeds it the readings of a batch in time order in the
//! batch's transaction, and acts on the edges it returns. A raised rule opens an episode — one row,
//! one urgent task, one `alarm` record entry and the event `alarm:<id>` — and a cleared rule closes
//! the enrolment's open episode of that alarm. The episode's unique key (rule and episode number)
//! makes a rerun insert nothing, and a partial unique index allows one open episode per alarm of an
//! enrolment, so a re-armed rule, a retried batch or a second sweep cannot open another.
//!
//! No-reading rules are raised by [`silence_sweep`], which the scheduler runs at the start of every
//! pass: a range scan of `alarm_rules.due_at` (when the silence will have lasted), each rule raised
//! by an update conditioned on the `due_at` it was read with, in the transaction that opens its
//! episode.

use std::collections::BTreeMap;

use carepath_core::alarms::{AlarmRule, AlarmState, Edge, RuleCache};
use carepath_core::observations::GroupedReading;
use carepath_dsl::{AlarmSpec, catalog};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};

use crate::queries::{AuditAppender, AuditEntry, Caller, Refusal};
use crate::{Pool, Result, StoreError, Tx, add_event, args, ts};

/// What judging readings or silence did to alarms.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmChanges {
    /// Episodes opened.
    pub episodes: Vec<i64>,
    /// Their urgent tasks.
    pub tasks: Vec<i64>,
    /// Open episodes closed because their clear condition held (or, for a no-reading alarm, a
    /// reading arrived).
    pub cleared: u64,
    /// Enrolments that received an `alarm:` event.
    pub enrolments: Vec<i64>,
}

/// An armed rule as its row and its enrolment give it.
struct ArmedRule {
    id: i64,
    enrolment: i64,
    patient: String,
    institution: String,
    state_seq: i64,
    spec: String,
    state: Option<String>,
    created_at: i64,
}

impl ArmedRule {
    /// The columns [`ArmedRule::from_row`] reads from `alarm_rules a JOIN enrolments e`, and the
    /// join that reads the rule's spec from its record part.
    fn columns() -> (String, String) {
        let (spec, join) = crate::writer::part_column("a", "spec");
        (
            format!(
                "a.id, a.enrolment_id, e.patient_id, e.institution_id, e.state_seq, {spec}, a.state, a.created_at"
            ),
            join,
        )
    }

    fn from_row(r: &crate::Row) -> ArmedRule {
        ArmedRule {
            id: r.i64(0),
            enrolment: r.i64(1),
            patient: r.text(2),
            institution: r.text(3),
            state_seq: r.i64(4),
            spec: r.text(5),
            state: r.opt_text(6),
            created_at: r.i64(7),
        }
    }

    /// The stored state, or the state of a rule just armed.
    fn state(&self, spec: &AlarmSpec) -> AlarmState {
        self.state
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_else(|| AlarmState::armed(spec, self.created_at))
    }
}

/// Judges the patient's new readings (grouped by reading id, any order) against every rule armed
/// for the patient's active enrolments, inside the caller's transaction.
pub(crate) async fn judge_readings(
    tx: &mut Tx,
    rules: &mut RuleCache,
    patient: &str,
    readings: &mut [GroupedReading],
    now: Timestamp,
    out: &mut AlarmChanges,
) -> Result<()> {
    // Concurrent batches for one patient take turns on the rules' states (the caller has already
    // updated the patient's enrolments: enrolment rows, then rules, as a step takes them).
    let lock = if tx.is_postgres() {
        " FOR UPDATE OF a"
    } else {
        ""
    };
    let (columns, spec) = ArmedRule::columns();
    let rows = tx
        .fetch(
            &format!(
                "SELECT {columns} FROM alarm_rules a JOIN enrolments e ON e.id = a.enrolment_id {spec} \
                 WHERE e.patient_id = $1 AND e.status = 'active' AND a.active = 1 ORDER BY a.id{lock}"
            ),
            args![patient],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    readings.sort_by_key(|r| r.at);
    for row in rows {
        let armed = ArmedRule::from_row(&row);
        let (spec, rule) = match rules.get(&armed.spec) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(
                    enrolment = armed.enrolment,
                    rule = armed.id,
                    "alarm rule cannot run: {e}"
                );
                continue;
            }
        };
        let mut state = armed.state(spec);
        let before = state.clone();
        for r in readings.iter() {
            match rule.feed(&mut state, &r.values, r.at) {
                Some(Edge::Raised) => {
                    let detail = json!({"alarm": spec.id, "rule": spec.when.as_ref().map(|w| &w.0),
                                        "reading_at": ts(r.at).to_string(), "values": values_read(rule, &r.values)});
                    open_episode(tx, &armed, spec, state.raised, detail, now, out).await?;
                }
                Some(Edge::Cleared) => {
                    let why = json!({"alarm": spec.id, "reading_at": ts(r.at).to_string(),
                                     "values": values_read(rule, &r.values)});
                    clear_episode(tx, &armed, spec, why, now, out).await?;
                }
                None => {}
            }
        }
        if state != before {
            save_state(tx, armed.id, rule, &state).await?;
        }
    }
    Ok(())
}

/// The values of the kinds `rule` reads, by kind, for the record.
fn values_read(rule: &AlarmRule, values: &[f64]) -> BTreeMap<&'static str, f64> {
    catalog::OBSERVATIONS
        .iter()
        .enumerate()
        .filter(|(i, _)| rule.kinds() & (1 << i) != 0)
        .filter_map(|(i, (k, _))| values.get(i).filter(|v| !v.is_nan()).map(|v| (*k, *v)))
        .collect()
}

async fn save_state(tx: &mut Tx, rule_id: i64, rule: &AlarmRule, st: &AlarmState) -> Result<()> {
    tx.exec(
        "UPDATE alarm_rules SET state = $1, firing = $2, due_at = $3 WHERE id = $4",
        args![
            serde_json::to_string(st).unwrap_or_default(),
            i64::from(st.latched),
            rule.silence_due(st),
            rule_id
        ],
    )
    .await?;
    Ok(())
}

/// Opens the rule's `n`-th episode with its task, record entry and event; nothing when the
/// enrolment already has an open episode of this alarm, or this episode is already stored.
async fn open_episode(
    tx: &mut Tx,
    armed: &ArmedRule,
    spec: &AlarmSpec,
    n: u32,
    detail: Value,
    now: Timestamp,
    out: &mut AlarmChanges,
) -> Result<()> {
    let key = format!("alarm:{}:episode:{n}", armed.id);
    let escalate_to = spec.task.sla.as_ref().and_then(|s| s.escalate_to.clone());
    let Some(episode) = tx
        .fetch_one(
            &format!(
                "INSERT INTO alarm_episodes (dedupe_key, rule_id, enrolment_id, patient_id, institution_id, alarm_id, role, escalate_to, status, opened_at, detail) \
                 VALUES ($1, $2, $3, $4, {}, $6, $7, $8, 'open', $9, $10) ON CONFLICT DO NOTHING RETURNING id",
                crate::task_institution(3, 7, 5)
            ),
            args![
                &key,
                armed.id,
                armed.enrolment,
                &armed.patient,
                &armed.institution,
                &spec.id,
                &spec.task.role,
                escalate_to,
                now.as_second(),
                detail.to_string()
            ],
        )
        .await?
        .map(|r| r.i64(0))
    else {
        return Ok(());
    };
    out.episodes.push(episode);
    let task = carepath_core::alarms::task(spec, now);
    if !matches!(task, carepath_core::step::Produced::Task { .. }) {
        return Ok(());
    }
    let task = crate::insert_kept_task(
        tx,
        &key,
        armed.enrolment,
        &armed.patient,
        &armed.institution,
        armed.state_seq,
        &task,
        now,
    )
    .await?;
    if let Some(t) = task {
        tx.exec(
            "UPDATE alarm_episodes SET task_id = $1 WHERE id = $2",
            args![t, episode],
        )
        .await?;
        out.tasks.push(t);
    }
    let mut record = detail;
    record["episode"] = json!(episode);
    tx.exec(
        "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'alarm', $5) ON CONFLICT (dedupe_key) DO NOTHING",
        args![&key, &armed.patient, armed.enrolment, now.as_second(), record.to_string()],
    )
    .await?;
    add_event(
        tx,
        armed.enrolment,
        &format!("alarm:{}", spec.id),
        now,
        None,
        Some(key),
        now,
    )
    .await?;
    if !out.enrolments.contains(&armed.enrolment) {
        out.enrolments.push(armed.enrolment);
    }
    Ok(())
}

/// Closes the enrolment's open episode of the rule's alarm as cleared (it may have been opened by
/// an earlier arming of the same alarm); the episode's task stays for staff to finish.
async fn clear_episode(
    tx: &mut Tx,
    armed: &ArmedRule,
    spec: &AlarmSpec,
    why: Value,
    now: Timestamp,
    out: &mut AlarmChanges,
) -> Result<()> {
    let closed = tx
        .fetch(
            "UPDATE alarm_episodes SET status = 'cleared', closed_at = $1, close_reason = 'cleared' \
             WHERE enrolment_id = $2 AND alarm_id = $3 AND closed_at IS NULL RETURNING id",
            args![now.as_second(), armed.enrolment, &spec.id],
        )
        .await?;
    for r in closed {
        out.cleared += 1;
        let mut detail = why.clone();
        detail["episode"] = json!(r.i64(0));
        tx.exec(
            "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, 'alarm_cleared', $4)",
            args![&armed.patient, armed.enrolment, now.as_second(), detail.to_string()],
        )
        .await?;
    }
    Ok(())
}

/// Rules a sweep transaction takes at most.
const SWEEP_BATCH: i64 = 500;

/// Raises every no-reading rule whose silence has lasted its `for` at `now`: each once, whatever
/// crashes or reruns (the raise is an update conditioned on the `due_at` it read, in the
/// transaction that opens the episode; a raised rule has no `due_at` until a reading clears it).
pub async fn silence_sweep(pool: &Pool, now: Timestamp) -> Result<AlarmChanges> {
    let mut out = AlarmChanges::default();
    let mut rules = RuleCache::default();
    loop {
        let mut tx = pool.begin().await?;
        // The enrolment is locked with the rule (an ingest or a step holding either is skipped):
        // a sweep never waits on a lock, so it cannot deadlock with them.
        let lock = if tx.is_postgres() {
            " FOR UPDATE OF e, a SKIP LOCKED"
        } else {
            ""
        };
        let (columns, spec) = ArmedRule::columns();
        let rows = tx
            .fetch(
                &format!(
                    "SELECT {columns}, a.due_at FROM alarm_rules a JOIN enrolments e ON e.id = a.enrolment_id {spec} \
                     WHERE a.active = 1 AND a.due_at IS NOT NULL AND a.due_at <= $1 AND e.status = 'active' \
                     ORDER BY a.due_at, a.id LIMIT $2{lock}"
                ),
                args![now.as_second(), SWEEP_BATCH],
            )
            .await?;
        let n = rows.len();
        for row in rows {
            let armed = ArmedRule::from_row(&row);
            let read_due = row.i64(8);
            let (spec, rule) = match rules.get(&armed.spec) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(
                        enrolment = armed.enrolment,
                        rule = armed.id,
                        "alarm rule cannot run: {e}"
                    );
                    tx.exec(
                        "UPDATE alarm_rules SET due_at = NULL WHERE id = $1",
                        args![armed.id],
                    )
                    .await?;
                    continue;
                }
            };
            let mut state = armed.state(spec);
            let edge = rule.check_silence(&mut state, now.as_second());
            let won = tx
                .exec(
                    "UPDATE alarm_rules SET state = $1, firing = $2, due_at = $3 WHERE id = $4 AND due_at = $5",
                    args![
                        serde_json::to_string(&state).unwrap_or_default(),
                        i64::from(state.latched),
                        rule.silence_due(&state),
                        armed.id,
                        read_due
                    ],
                )
                .await?;
            if won == 1 && edge == Some(Edge::Raised) {
                let silent = spec.no_reading.as_ref().map(|s| s.kind.as_str());
                let detail = json!({"alarm": spec.id, "no_reading": silent,
                                    "since": state.last_at.map(|t| ts(t).to_string())});
                open_episode(&mut tx, &armed, spec, state.raised, detail, now, &mut out).await?;
            }
        }
        tx.commit().await?;
        if n < SWEEP_BATCH as usize {
            return Ok(out);
        }
    }
}

/// Closes the open episodes of enrolments that ended: `(enrolment, when, why)`.
pub(crate) async fn end_episodes(tx: &mut Tx, ended: &[(i64, i64, &str)]) -> Result<()> {
    for (enrolment, at, why) in ended {
        tx.exec(
            "UPDATE alarm_episodes SET status = 'ended', closed_at = $1, close_reason = $2 WHERE enrolment_id = $3 AND closed_at IS NULL",
            args![*at, *why, *enrolment],
        )
        .await?;
    }
    Ok(())
}

// ---- the API ------------------------------------------------------------------------------

/// Which episodes a list shows.
#[derive(Debug, Clone, Default)]
pub struct EpisodeFilter {
    /// `open` (not yet acknowledged), `acknowledged`, `active` (either; the default), `resolved`,
    /// `cleared`, `ended` or `closed` (any of the last three).
    pub status: Option<String>,
    /// Only episodes for this role.
    pub role: Option<String>,
    /// Only episodes with a larger id (the `next_cursor` of the previous page).
    pub after: Option<i64>,
    /// Only episodes of this patient.
    pub patient: Option<String>,
    pub limit: i64,
}

/// The statuses a list may ask for, and the stored statuses each means.
pub const EPISODE_STATUSES: &[(&str, &[&str])] = &[
    ("open", &["open"]),
    ("acknowledged", &["acknowledged"]),
    ("active", &["open", "acknowledged"]),
    ("resolved", &["resolved"]),
    ("cleared", &["cleared"]),
    ("ended", &["ended"]),
    ("closed", &["resolved", "cleared", "ended"]),
];

/// An alarm episode as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EpisodeView {
    pub id: i64,
    pub enrolment_id: i64,
    pub patient_id: String,
    pub alarm: String,
    pub role: String,
    pub status: String,
    pub opened_at: String,
    /// What raised it: the reading's time and values, or the kind that went silent and since when.
    pub detail: Value,
    pub task_id: Option<i64>,
    pub acknowledged_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub closed_at: Option<String>,
    pub closed_by: Option<String>,
    pub close_reason: Option<String>,
}

const EPISODE_COLUMNS: &str = "id, enrolment_id, patient_id, alarm_id, role, status, opened_at, detail, task_id, \
     acknowledged_at, acknowledged_by, closed_at, closed_by, close_reason";

fn episode_view(r: &crate::Row) -> EpisodeView {
    let at = |i: usize| r.opt_i64(i).map(|t| ts(t).to_string());
    EpisodeView {
        id: r.i64(0),
        enrolment_id: r.i64(1),
        patient_id: r.text(2),
        alarm: r.text(3),
        role: r.text(4),
        status: r.text(5),
        opened_at: ts(r.i64(6)).to_string(),
        detail: serde_json::from_str(&r.text(7)).unwrap_or(Value::Null),
        task_id: r.opt_i64(8),
        acknowledged_at: at(9),
        acknowledged_by: r.opt_text(10),
        closed_at: at(11),
        closed_by: r.opt_text(12),
        close_reason: r.opt_text(13),
    }
}

/// Episodes of the caller's institution for the caller's roles (an episode is for its task's
/// role and the role that task escalates to), oldest first.
pub async fn episodes(pool: &Pool, caller: &Caller, f: &EpisodeFilter) -> Result<Vec<EpisodeView>> {
    let wanted = f.status.as_deref().unwrap_or("active");
    let Some((_, statuses)) = EPISODE_STATUSES.iter().find(|(s, _)| *s == wanted) else {
        return Err(StoreError::Invalid(format!("unknown status `{wanted}`")));
    };
    if caller.roles.is_empty() {
        return Ok(Vec::new());
    }
    let mut a: Vec<crate::Arg> = args![&caller.institution_id, f.limit, f.after.unwrap_or(0)];
    let list = |values: Vec<String>, a: &mut Vec<crate::Arg>| {
        let first = a.len() + 1;
        let n = values.len();
        a.extend(values.into_iter().map(crate::Arg::T));
        crate::db::placeholders(first, n)
    };
    let statuses = list(statuses.iter().map(|s| s.to_string()).collect(), &mut a);
    let roles = list(caller.roles.clone(), &mut a);
    let mut sql = format!(
        "SELECT {EPISODE_COLUMNS} FROM alarm_episodes WHERE institution_id = $1 AND status IN ({statuses}) \
         AND (role IN ({roles}) OR escalate_to IN ({roles})) AND id > $3"
    );
    if let Some(role) = &f.role {
        a.push(crate::Arg::T(role.clone()));
        sql.push_str(&format!(" AND role = ${}", a.len()));
    }
    if let Some(patient) = &f.patient {
        a.push(crate::Arg::T(patient.clone()));
        sql.push_str(&format!(" AND patient_id = ${}", a.len()));
    }
    sql.push_str(" ORDER BY id LIMIT $2");
    Ok(pool
        .fetch(&sql, a)
        .await?
        .iter()
        .map(episode_view)
        .collect())
}

/// [`episodes`] for a request: audited (with the patients listed) before they are returned.
pub async fn list_episodes(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    f: &EpisodeFilter,
    remote: &str,
    now: Timestamp,
) -> Result<Vec<EpisodeView>> {
    let rows = episodes(pool, caller, f).await?;
    let patients: std::collections::BTreeSet<&String> =
        rows.iter().map(|r| &r.patient_id).collect();
    let patients: Vec<String> = patients.into_iter().cloned().collect();
    audit
        .append(AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            "alarm.list",
            "alarms",
            &patients,
            "ok",
            remote,
            now,
        ))
        .await?;
    Ok(rows)
}

/// What staff do to an episode.
pub enum EpisodeAction<'a> {
    /// "I am on it": the episode stays open, and no second one opens meanwhile.
    Acknowledge,
    /// Closed by staff, with why; an unclaimed task of the episode is cancelled with it.
    Resolve { reason: &'a str },
}

impl EpisodeAction<'_> {
    fn name(&self) -> &'static str {
        match self {
            EpisodeAction::Acknowledge => "alarm.acknowledge",
            EpisodeAction::Resolve { .. } => "alarm.resolve",
        }
    }
}

/// What an action on an episode did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EpisodeActed {
    pub episode: i64,
    /// `alarm.acknowledge` or `alarm.resolve`.
    pub action: &'static str,
    /// The episode's status now: `acknowledged` or `resolved`.
    pub status: &'static str,
    pub enrolment_id: i64,
}

/// Acknowledges or resolves an episode of the caller's institution, audited in the same
/// transaction (refusals too). The caller must hold the episode's role or the role its task
/// escalates to; of concurrent actions exactly one wins (each is an update conditioned on the
/// status it was read in), the others get `Conflict`.
pub async fn act_on_episode(
    pool: &Pool,
    caller: &Caller,
    episode: i64,
    action: EpisodeAction<'_>,
    remote: &str,
    now: Timestamp,
) -> Result<EpisodeActed> {
    let name = action.name();
    let target = format!("alarm/{episode}");
    let refused = Refusal {
        caller,
        action: name,
        target: &target,
        remote,
        now,
    };
    let mut tx = pool.begin().await?;
    let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
    let row = tx
        .fetch_one(
            &format!(
                "SELECT status, patient_id, enrolment_id, role, escalate_to, task_id, alarm_id FROM alarm_episodes \
                 WHERE id = $1 AND institution_id = $2{lock}"
            ),
            args![episode, &caller.institution_id],
        )
        .await?;
    let Some(row) = row else {
        let err = StoreError::NotFound(format!("alarm episode {episode}"));
        return refused.answer(tx, vec![], "not_found", err).await;
    };
    let (status, patient, enrolment) = (row.text(0), row.text(1), row.i64(2));
    let patients = vec![patient.clone()];
    let mut roles = vec![row.text(3)];
    roles.extend(row.opt_text(4));
    if !caller.roles.iter().any(|r| roles.contains(r)) {
        let err = StoreError::Forbidden(format!(
            "alarm episode {episode} is for {}; your role(s) {} may not act on it",
            roles.join(" or "),
            caller.roles.join(", ")
        ));
        return refused.answer(tx, patients, "denied", err).await;
    }
    let (from, to): (&[&str], &'static str) = match action {
        EpisodeAction::Acknowledge => (&["open"], "acknowledged"),
        EpisodeAction::Resolve { .. } => (&["open", "acknowledged"], "resolved"),
    };
    if !from.contains(&status.as_str()) {
        let err = StoreError::Conflict(format!("alarm episode {episode} is {status}"));
        return refused.answer(tx, patients, "conflict", err).await;
    }
    let changed = match &action {
        EpisodeAction::Acknowledge => {
            tx.exec(
                "UPDATE alarm_episodes SET status = 'acknowledged', acknowledged_at = $1, acknowledged_by = $2 WHERE id = $3 AND status = 'open'",
                args![now.as_second(), &caller.staff_id, episode],
            )
            .await?
        }
        EpisodeAction::Resolve { reason } => {
            tx.exec(
                "UPDATE alarm_episodes SET status = 'resolved', closed_at = $1, closed_by = $2, close_reason = $3 \
                 WHERE id = $4 AND status IN ('open', 'acknowledged')",
                args![now.as_second(), &caller.staff_id, *reason, episode],
            )
            .await?
        }
    };
    if changed != 1 {
        let err = StoreError::Conflict(format!(
            "alarm episode {episode} was changed by another action; reload it"
        ));
        return refused.answer(tx, patients, "conflict", err).await;
    }
    let (kind, detail) = match &action {
        EpisodeAction::Acknowledge => (
            "alarm_acknowledged",
            json!({"episode": episode, "alarm": row.text(6), "by": caller.staff_id}),
        ),
        EpisodeAction::Resolve { reason } => {
            if let Some(task) = row.opt_i64(5) {
                tx.exec(
                    "UPDATE tasks SET status = 'cancelled', cancel_reason = $1 WHERE id = $2 AND status = 'open'",
                    args![format!("alarm resolved: {reason}"), task],
                )
                .await?;
            }
            (
                "alarm_resolved",
                json!({"episode": episode, "alarm": row.text(6), "by": caller.staff_id, "reason": reason}),
            )
        }
    };
    tx.exec(
        "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, $5)",
        args![&patient, enrolment, now.as_second(), kind, detail.to_string()],
    )
    .await?;
    caller
        .audit_ok(&mut tx, name, &target, &patients, remote, now)
        .await?;
    tx.commit().await?;
    Ok(EpisodeActed {
        episode,
        action: name,
        status: to,
        enrolment_id: enrolment,
    })
}
