//! Delivery: follow-ups reach the patient.
//!
//! The scheduler writes one `outbox` row per follow-up in the step's transaction. The dispatcher
//! works through them in batches, each in three steps:
//!
//! 1. **Claim** (one committed transaction): due `pending` rows, and `sending` rows whose lease ran
//!    out, are locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's write transaction is
//!    exclusive). A row in the patient's quiet hours, or over the patient's daily cap, is deferred
//!    without counting an attempt (urgent rows are not). Every other row is claimed: `attempts + 1`,
//!    `status = 'sending'`, a lease. The attempt is counted *before* anything is sent, so a message
//!    that kills its dispatcher cannot loop: after `max_attempts` claims it is parked.
//! 2. **Send**, concurrently, outside any transaction. The idempotency key is the outbox row's
//!    dedupe key, the same on every attempt, so a gateway drops the duplicate of a send whose answer
//!    was lost (a time-out, or a dispatcher killed mid-send whose row is reclaimed after its lease).
//! 3. **Record** (one transaction): sent, retried (same channel after exponential back-off with
//!    jitter derived from the key), fallen back (next channel of the follow-up, at once) or parked
//!    (the dead letter, with the last error). Each write is fenced by the claimed attempt count, so
//!    a dispatcher that stalled past its lease writes nothing. The follow-up's status follows.
//!
//! The phone channel is a call task for the case manager (the pathway's owner role), keyed
//! `<outbox key>:phone`, written in the step-3 transaction.
//!
//! Logs carry outbox keys and pseudonymous patient ids only; contact details are decrypted in memory
//! for the send and never logged or stored in errors.

pub mod config;
/// The delivery rules are the core's, shared with `carepath test`.
pub use carepath_core::delivery as policy;
pub mod template;
pub mod transport;

use std::collections::{BTreeMap, HashMap};

use futures_util::StreamExt as _;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

pub use config::{ChannelConfig, ConfigError, DeliveryConfig, Lang};
pub use transport::Failure;

use crate::store::outbox::{self, Attempted, DueMessage, PhoneTask};
use crate::store::{Pool, Result, StoreError};

/// What one dispatch did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct DispatchSummary {
    pub as_of: String,
    pub backend: String,
    pub batches: u64,
    /// Attempts started (each counted when its row was claimed).
    pub claimed: u64,
    /// Of those, rows found stuck in `sending` past their lease and resent.
    pub reclaimed: u64,
    pub sent: u64,
    pub sent_by_channel: BTreeMap<String, u64>,
    /// Failed attempts to be tried again on the same channel after back-off.
    pub retries: u64,
    /// Failed attempts moved on to the follow-up's next channel.
    pub fallbacks: u64,
    pub parked: u64,
    pub deferred_quiet_hours: u64,
    pub deferred_daily_cap: u64,
    /// Rows whose follow-up was cancelled while they were being sent.
    pub cancelled: u64,
    /// Outcomes not written because the row was reclaimed by another dispatcher meanwhile.
    pub fenced: u64,
}

impl std::fmt::Display for DispatchSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "dispatch as of {} on {}: {} attempt(s) in {} batch(es), {} reclaimed after their lease",
            self.as_of, self.backend, self.claimed, self.batches, self.reclaimed
        )?;
        let by: Vec<String> = self
            .sent_by_channel
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        writeln!(f, "sent: {} ({})", self.sent, by.join(", "))?;
        writeln!(
            f,
            "failed attempts: {} to retry, {} fallen back to the next channel; parked: {}",
            self.retries, self.fallbacks, self.parked
        )?;
        write!(
            f,
            "deferred: {} for quiet hours, {} over the daily cap; cancelled: {}; fenced: {}",
            self.deferred_quiet_hours, self.deferred_daily_cap, self.cancelled, self.fenced
        )
    }
}

/// The outbox payload the scheduler writes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub urgent: bool,
    #[serde(default)]
    pub pathway: String,
}

/// A row claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub message: DueMessage,
    pub payload: Payload,
    pub route: Vec<String>,
    pub channel: String,
    /// The row's attempt count including this attempt.
    pub attempts: i64,
    /// Attempts on `channel` including this one.
    pub channel_attempts: i64,
}

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The phone channel: a call task, written when the outcome is recorded.
    PhoneTask,
    Failed(Failure),
}

fn zone(cache: &mut HashMap<String, TimeZone>, name: &str, default: &str) -> TimeZone {
    if let Some(z) = cache.get(name) {
        return z.clone();
    }
    let z = TimeZone::get(name)
        .or_else(|_| TimeZone::get(default))
        .unwrap_or(TimeZone::UTC);
    cache.insert(name.to_string(), z.clone());
    z
}

impl DispatchSummary {
    /// Adds another worker's counts.
    pub fn add(&mut self, o: &DispatchSummary) {
        self.batches += o.batches;
        self.claimed += o.claimed;
        self.reclaimed += o.reclaimed;
        self.sent += o.sent;
        for (c, n) in &o.sent_by_channel {
            *self.sent_by_channel.entry(c.clone()).or_default() += n;
        }
        self.retries += o.retries;
        self.fallbacks += o.fallbacks;
        self.parked += o.parked;
        self.deferred_quiet_hours += o.deferred_quiet_hours;
        self.deferred_daily_cap += o.deferred_daily_cap;
        self.cancelled += o.cancelled;
        self.fenced += o.fenced;
    }
}

/// Delivers everything due at `now` until nothing due is left. `batches_in_flight` workers each
/// claim, send and record batch after batch, so one slow gateway answer holds up one batch, not
/// the whole run; they share `concurrency` sends in flight.
pub async fn dispatch_once(
    pool: &Pool,
    config: &DeliveryConfig,
    now: Timestamp,
) -> Result<DispatchSummary> {
    let workers = config.dispatch.batches_in_flight.max(1);
    let per_worker = (config.dispatch.concurrency / workers).max(1);
    let runs = (0..workers).map(|_| worker(pool, config, now, per_worker));
    let mut summary = DispatchSummary {
        as_of: now.to_string(),
        backend: pool.backend().to_string(),
        ..Default::default()
    };
    let mut first_error = None;
    // Every worker runs to its end (an error in one does not cut another off mid-send).
    for r in futures_util::future::join_all(runs).await {
        match r {
            Ok(s) => summary.add(&s),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

async fn worker(
    pool: &Pool,
    config: &DeliveryConfig,
    now: Timestamp,
    concurrency: usize,
) -> Result<DispatchSummary> {
    let mut summary = DispatchSummary::default();
    loop {
        let t0 = std::time::Instant::now();
        let (changed, claimed) = claim_batch(pool, config, now, &mut summary).await?;
        if changed == 0 {
            break;
        }
        summary.batches += 1;
        let (n, t1) = (claimed.len(), std::time::Instant::now());
        let results = send_with(config, claimed, now, concurrency).await;
        let t2 = std::time::Instant::now();
        record_batch(pool, config, &results, now, &mut summary).await?;
        tracing::debug!(
            claimed = n,
            claim_ms = (t1 - t0).as_millis() as u64,
            send_ms = (t2 - t1).as_millis() as u64,
            record_ms = t2.elapsed().as_millis() as u64,
            "delivery batch"
        );
    }
    Ok(summary)
}

/// Step 1: claims one batch in its own committed transaction. Returns how many rows it changed
/// (claimed, deferred, parked or cancelled; 0 when nothing is due) and the claimed ones.
pub async fn claim_batch(
    pool: &Pool,
    config: &DeliveryConfig,
    now: Timestamp,
    summary: &mut DispatchSummary,
) -> Result<(usize, Vec<Claimed>)> {
    let d = &config.dispatch;
    let now_s = now.as_second();
    let mut tx = pool.begin().await?;
    let due = outbox::due(&mut tx, now_s, d.batch_size).await?;
    if due.is_empty() {
        tx.rollback().await?;
        return Ok((0, Vec::new()));
    }
    // Sends per patient within the last day and a bit, for the daily cap in their own day.
    let mut sends: HashMap<String, Vec<i64>> = HashMap::new();
    if d.daily_cap > 0 {
        let mut patients: Vec<String> = due.iter().map(|m| m.patient_id.clone()).collect();
        patients.sort();
        patients.dedup();
        for (p, at) in outbox::recent_sends(&mut tx, &patients, now_s - 27 * 3600, now_s).await? {
            sends.entry(p).or_default().push(at);
        }
    }
    let mut zones = HashMap::new();
    let mut changed = 0;
    let mut to_claim: Vec<Claimed> = Vec::new();
    for m in due {
        if m.follow_up_status.as_deref() == Some("cancelled") {
            if outbox::cancel(&mut tx, &m).await? {
                changed += 1;
                summary.cancelled += 1;
            }
            continue;
        }
        let payload: Payload = serde_json::from_str(&m.payload).unwrap_or_default();
        if m.attempts >= d.max_attempts {
            // A reclaimed row whose last attempt never reported back (or a configuration whose
            // max_attempts was lowered).
            let error = if m.status == "sending" {
                format!(
                    "{} attempt(s) used; the last one ({}) never reported back (its dispatcher stopped mid-send)",
                    m.attempts, m.channel
                )
            } else {
                format!(
                    "{} attempt(s) used; max_attempts is {}",
                    m.attempts, d.max_attempts
                )
            };
            if outbox::mark_parked(
                &mut tx,
                &m,
                (&m.status, m.attempts),
                &error,
                "parked",
                now_s,
            )
            .await?
            {
                changed += 1;
                summary.parked += 1;
                tracing::warn!(outbox = %m.key, patient = %m.patient_id, "delivery parked: {error}");
            }
            continue;
        }
        let tz = zone(&mut zones, &m.tz, &d.time_zone);
        if !payload.urgent {
            if let Some(next) = d.quiet_hours.and_then(|q| q.next_allowed(now, &tz)) {
                if outbox::defer(&mut tx, &m, next.as_second()).await? {
                    changed += 1;
                    summary.deferred_quiet_hours += 1;
                }
                continue;
            }
            if d.daily_cap > 0 {
                let (day_start, _) = policy::local_day(now, &tz);
                let today = sends.get(&m.patient_id).map_or(0, |v| {
                    v.iter().filter(|t| **t >= day_start.as_second()).count()
                });
                if today as i64 >= d.daily_cap {
                    let next = policy::next_day_start(now, &tz, d.quiet_hours);
                    if outbox::defer(&mut tx, &m, next.as_second()).await? {
                        changed += 1;
                        summary.deferred_daily_cap += 1;
                    }
                    continue;
                }
            }
        }
        let route = policy::route(&payload.channels, m.preferred_channel.as_deref());
        // A row's first attempt starts the route; later ones continue on the channel recorded
        // (a reclaimed row resends on the channel its lost attempt used).
        let (channel, channel_attempts) = if m.attempts == 0 {
            (route[0].clone(), 1)
        } else {
            (m.channel.clone(), m.channel_attempts + 1)
        };
        if d.daily_cap > 0 {
            sends.entry(m.patient_id.clone()).or_default().push(now_s);
        }
        to_claim.push(Claimed {
            attempts: m.attempts + 1,
            message: m,
            payload,
            route,
            channel,
            channel_attempts,
        });
    }
    let claims: Vec<outbox::Claim<'_>> = to_claim
        .iter()
        .map(|c| outbox::Claim {
            message: &c.message,
            channel: &c.channel,
            channel_attempts: c.channel_attempts,
        })
        .collect();
    let ok = outbox::claim_many(&mut tx, &claims, now_s + d.lease).await?;
    let claimed: Vec<Claimed> = to_claim
        .into_iter()
        .filter(|c| ok.contains(&c.message.id))
        .collect();
    for c in &claimed {
        changed += 1;
        summary.claimed += 1;
        if c.message.status == "sending" {
            summary.reclaimed += 1;
            tracing::info!(outbox = %c.message.key, patient = %c.message.patient_id, channel = %c.channel, "reclaimed after its lease ran out; resending with the same idempotency key");
        }
    }
    tx.commit().await?;
    Ok((changed, claimed))
}

/// Step 2: sends every claimed row, `concurrency` at a time. Touches no database.
pub async fn send_batch(
    config: &DeliveryConfig,
    claimed: Vec<Claimed>,
    now: Timestamp,
) -> Vec<(Claimed, Outcome)> {
    send_with(config, claimed, now, config.dispatch.concurrency).await
}

async fn send_with(
    config: &DeliveryConfig,
    claimed: Vec<Claimed>,
    now: Timestamp,
    concurrency: usize,
) -> Vec<(Claimed, Outcome)> {
    futures_util::stream::iter(claimed)
        .map(|c| async move {
            let outcome = attempt(config, &c, now).await;
            (c, outcome)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

fn date_text(at: Timestamp, tz: &TimeZone, lang: Lang) -> String {
    let d = at.to_zoned(tz.clone()).date();
    match lang {
        Lang::Zh => format!("{}年{}月{}日", d.year(), d.month(), d.day()),
        Lang::En => {
            const MONTHS: [&str; 12] = [
                "January",
                "February",
                "March",
                "April",
                "May",
                "June",
                "July",
                "August",
                "September",
                "October",
                "November",
                "December",
            ];
            let m = MONTHS[(d.month() as usize).clamp(1, 12) - 1];
            format!("{} {m} {}", d.day(), d.year())
        }
    }
}

/// Renders the message of `c` for its channel; the error is why it cannot be sent there.
pub fn render(
    config: &DeliveryConfig,
    c: &Claimed,
) -> std::result::Result<transport::Outgoing, Failure> {
    let m = &c.message;
    let ch = c.channel.as_str();
    let transport = config.channels.get(ch);
    let needs_contact = transport.is_some_and(ChannelConfig::needs_contact);
    let contact = match (&m.contact_enc, &config.contact_key) {
        (Some(blob), Some(key)) => match key.decrypt(blob) {
            Ok(c) => Some(c),
            Err(e) if needs_contact => {
                return Err(Failure::Permanent(format!("{ch}: {e}")));
            }
            Err(_) => None,
        },
        _ => None,
    };
    let to = if needs_contact {
        let Some(contact) = &contact else {
            return Err(Failure::Permanent(format!(
                "{ch}: the patient has no contact details"
            )));
        };
        let (address, what) = match ch {
            "sms" => (&contact.phone, "phone number"),
            "wechat" => (&contact.wechat_openid, "WeChat openid"),
            _ => (&contact.email, "e-mail address"),
        };
        match address.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            Some(a) => a.to_string(),
            None => {
                return Err(Failure::Permanent(format!(
                    "{ch}: the patient has no {what}"
                )));
            }
        }
    } else {
        String::new()
    };
    let lang = contact
        .as_ref()
        .and_then(|c| c.lang.as_deref())
        .and_then(Lang::parse)
        .unwrap_or(config.dispatch.language);
    let pathway = if c.payload.pathway.is_empty() {
        m.pathway_id.clone().unwrap_or_default()
    } else {
        c.payload.pathway.clone()
    };
    let Some(t) = config.template(&pathway, &m.template) else {
        return Err(Failure::Permanent(format!(
            "no template `{}` for pathway `{pathway}` in the delivery configuration",
            m.template
        )));
    };
    let tz = TimeZone::get(&m.tz)
        .or_else(|_| TimeZone::get(&config.dispatch.time_zone))
        .unwrap_or(TimeZone::UTC);
    let when = Timestamp::from_second(m.send_at.unwrap_or(m.next_attempt_at))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let vars = template::Vars {
        hospital: config
            .hospitals
            .get(&m.institution_id)
            .map(|h| h.get(lang).to_string())
            .unwrap_or_else(|| m.hospital.clone()),
        name: contact
            .as_ref()
            .and_then(|c| c.name.clone())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| config.no_name.get(lang).to_string()),
        date: date_text(when, &tz, lang),
    };
    let subject = t
        .subject(lang)
        .unwrap_or_else(|| config.subject_default(lang))
        .render(&vars);
    Ok(transport::Outgoing {
        key: m.key.clone(),
        channel: c.channel.clone(),
        to,
        lang,
        subject,
        text: t.body(lang).render(&vars),
    })
}

async fn bounded(
    ch: &str,
    deadline: std::time::Duration,
    send: impl std::future::Future<Output = std::result::Result<(), Failure>>,
) -> std::result::Result<(), Failure> {
    tokio::time::timeout(deadline, send)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Transient(format!(
                "{ch}: no answer within {} ms",
                deadline.as_millis()
            )))
        })
}

/// One attempt of one claimed row on its channel.
pub async fn attempt(config: &DeliveryConfig, c: &Claimed, _now: Timestamp) -> Outcome {
    let ch = c.channel.as_str();
    let Some(transport) = config.channels.get(ch) else {
        return Outcome::Failed(Failure::Permanent(format!(
            "{ch}: the channel is not configured"
        )));
    };
    if let ChannelConfig::Task(_) = transport {
        if c.message.enrolment_id.is_none() || c.message.state_seq.is_none() {
            return Outcome::Failed(Failure::Permanent(
                "phone: no enrolment to attach a call task to".into(),
            ));
        }
        return Outcome::PhoneTask;
    }
    let out = match render(config, c) {
        Ok(o) => o,
        Err(f) => return Outcome::Failed(f),
    };
    // The whole send is bounded too (SMTP time-outs are per command), so a batch always ends
    // within the time the lease was checked against.
    let deadline = transport.deadline() + std::time::Duration::from_secs(1);
    let result = match transport {
        ChannelConfig::Webhook(w) => bounded(ch, deadline, transport::post(w, &out)).await,
        ChannelConfig::Smtp(s) => bounded(ch, deadline, transport::email(s, &out)).await,
        ChannelConfig::Log => {
            tracing::info!(outbox = %out.key, patient = %c.message.patient_id, channel = ch, template = %c.message.template, lang = out.lang.as_str(), chars = out.text.chars().count(), "log channel: message not sent (development)");
            Ok(())
        }
        ChannelConfig::Task(_) => Ok(()),
    };
    match result {
        Ok(()) => Outcome::Sent,
        Err(f) => Outcome::Failed(f),
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Try again on `channel` at `at`; `fallback` when that is a new channel.
    Retry {
        channel: String,
        channel_attempts: i64,
        at: i64,
        fallback: bool,
    },
    /// Dead letter; the follow-up becomes `follow_up` (`parked` or `failed`).
    Park { follow_up: &'static str },
}

/// The retry policy. A permanent failure moves to the next channel at once (or, on the last
/// channel, parks the message with its follow-up `failed`). A transient one is retried on the
/// same channel after back-off, `attempts_per_channel` times, then moves to the next channel; on
/// the last channel it keeps retrying there. After `max_attempts` attempts the message is parked.
pub fn next_step(config: &DeliveryConfig, c: &Claimed, failure: &Failure, now: i64) -> NextStep {
    let d = &config.dispatch;
    let next = policy::next_channel(&c.route, &c.channel);
    let permanent = matches!(failure, Failure::Permanent(_));
    if c.attempts >= d.max_attempts {
        return NextStep::Park {
            follow_up: if permanent && next.is_none() {
                "failed"
            } else {
                "parked"
            },
        };
    }
    let fallback = |n: &str| NextStep::Retry {
        channel: n.to_string(),
        channel_attempts: 0,
        at: now,
        fallback: true,
    };
    let again = || NextStep::Retry {
        channel: c.channel.clone(),
        channel_attempts: c.channel_attempts,
        at: now
            + policy::backoff_seconds(&c.message.key, c.attempts, d.backoff_base, d.backoff_max),
        fallback: false,
    };
    match (permanent, next) {
        (true, Some(n)) => fallback(n),
        (true, None) => NextStep::Park {
            follow_up: "failed",
        },
        (false, _) if c.channel_attempts < d.attempts_per_channel => again(),
        (false, Some(n)) => fallback(n),
        (false, None) => again(),
    }
}

fn phone_task(
    config: &DeliveryConfig,
    c: &Claimed,
    roles: &HashMap<(String, i64), String>,
    now: i64,
) -> PhoneTask {
    let (role, due) = match config.channels.get("phone") {
        Some(ChannelConfig::Task(t)) => (t.role.clone(), t.due),
        _ => (None, 86_400),
    };
    let m = &c.message;
    let role = role
        .or_else(|| {
            let key = (m.pathway_id.clone()?, m.pathway_version?);
            roles.get(&key).cloned()
        })
        .unwrap_or_else(|| "case_manager".to_string());
    let urgent = c.payload.urgent;
    PhoneTask {
        role,
        title_zh: format!("电话通知患者（随访消息：{}）", m.template),
        title_en: format!("Phone the patient (follow-up message: {})", m.template),
        priority: if urgent {
            carepath_dsl::Priority::Urgent as i64
        } else {
            carepath_dsl::Priority::Normal as i64
        },
        due_at: now + if urgent { 3_600.min(due) } else { due },
    }
}

/// Step 3: records every outcome of a batch in one transaction, each fenced by its attempt count.
pub async fn record_batch(
    pool: &Pool,
    config: &DeliveryConfig,
    results: &[(Claimed, Outcome)],
    now: Timestamp,
    summary: &mut DispatchSummary,
) -> Result<()> {
    let now_s = now.as_second();
    let mut roles: Option<HashMap<(String, i64), String>> = None;
    let mut tx = pool.begin().await?;
    let mut sent: Vec<Attempted<'_>> = Vec::new();
    for (c, outcome) in results {
        let m = &c.message;
        let a = Attempted {
            message: m,
            attempts: c.attempts,
            channel: &c.channel,
        };
        let written = match outcome {
            Outcome::Sent => {
                sent.push(a);
                continue;
            }
            Outcome::PhoneTask => {
                if roles.is_none() {
                    roles = Some(outbox::owner_roles(&mut tx).await?);
                }
                let task = phone_task(config, c, roles.as_ref().unwrap_or(&HashMap::new()), now_s);
                let ok = outbox::mark_sent(&mut tx, &a, now_s).await?;
                if ok && !outbox::insert_phone_task(&mut tx, m, &task, now_s).await? {
                    return Err(StoreError::Invalid(format!(
                        "outbox {}: no enrolment for the call task",
                        m.key
                    )));
                }
                ok
            }
            Outcome::Failed(f) => {
                tracing::warn!(outbox = %m.key, patient = %m.patient_id, channel = %c.channel, attempt = c.attempts, "delivery attempt failed: {}", f.message());
                match next_step(config, c, f, now_s) {
                    NextStep::Retry {
                        channel,
                        channel_attempts,
                        at,
                        fallback,
                    } => {
                        let ok = outbox::mark_retry(
                            &mut tx,
                            &a,
                            &channel,
                            channel_attempts,
                            at,
                            f.message(),
                        )
                        .await?;
                        if ok && fallback {
                            summary.fallbacks += 1;
                        } else if ok {
                            summary.retries += 1;
                        }
                        ok
                    }
                    NextStep::Park { follow_up } => {
                        let ok = outbox::mark_parked(
                            &mut tx,
                            m,
                            ("sending", c.attempts),
                            f.message(),
                            follow_up,
                            now_s,
                        )
                        .await?;
                        if ok {
                            summary.parked += 1;
                            tracing::warn!(outbox = %m.key, patient = %m.patient_id, attempts = c.attempts, "delivery parked: {}", f.message());
                        }
                        ok
                    }
                }
            }
        };
        if !written {
            summary.fenced += 1;
            tracing::info!(outbox = %m.key, attempt = c.attempts, "outcome not recorded: the row was reclaimed meanwhile");
        } else if matches!(outcome, Outcome::PhoneTask) {
            summary.sent += 1;
            *summary
                .sent_by_channel
                .entry(c.channel.clone())
                .or_default() += 1;
        }
    }
    let written = outbox::mark_sent_many(&mut tx, &sent, now_s).await?;
    for a in &sent {
        if written.contains(&a.message.id) {
            summary.sent += 1;
            *summary
                .sent_by_channel
                .entry(a.channel.to_string())
                .or_default() += 1;
        } else {
            summary.fenced += 1;
            tracing::info!(outbox = %a.message.key, attempt = a.attempts, "outcome not recorded: the row was reclaimed meanwhile");
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Re-queues parked messages (all, or those with the given outbox keys) with the same idempotency
/// keys; returns how many.
pub async fn retry_parked(pool: &Pool, keys: Option<&[String]>, now: Timestamp) -> Result<u64> {
    outbox::retry_parked(pool, keys, now.as_second()).await
}
