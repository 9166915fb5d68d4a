//! Storage: the only crate that holds SQL (a tidy test in `tests/` fails on SQL anywhere else).
//!
//! One step's results commit in one transaction with the enrolment's new state, guarded by a
//! `row_version` check; every produced row has a unique dedupe key written with
//! `ON CONFLICT DO NOTHING`. So a crash at any point loses nothing (the transaction is all or
//! nothing) and a rerun duplicates nothing (the keys are derived from the enrolment's state-entry
//! sequence, which the committed state already moved past).

pub mod alarms;
pub mod audit;
pub mod audit_log;
pub mod bulk;
pub mod calendars;
pub mod clinical;
mod copy;
pub mod crypto;
pub mod db;
pub mod goals;
pub mod import;
pub mod indicators;
pub mod intake;
pub mod living;
pub mod outbox;
pub mod patients;
pub mod queries;
pub mod records;
pub mod release;
pub mod replay;
pub mod scales;
pub mod sign_in;
mod sqlite_tx;
pub mod stats;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};

use carepath_dsl::{AlarmScope, VarValue};
use jiff::Timestamp;
use serde_json::json;

pub use db::{Arg, DbError, Pool, Row, Tx};
pub use writer::RowBuffer;

use crate::facts::{
    Diagnosis, Encounter, FactEvent, Observation, PatientFacts, PendingEvent, RiskResult,
    ScaleResult,
};
use crate::program::{Programs, Source};
use carepath_core::outcome::{self, Because, Cause, OutcomeSink, Scope, Work};
use carepath_core::step::{self, Emitted, Enrolment, Outcome, Status, StepError, Taken};
// The core's modules, so that paths in this crate read as they do in the core.
use carepath_core::{facts, observations, program, sandbox, time};

/// One schema version: the same number and name on both databases, each with its own SQL.
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! migration {
    ($version:expr, $file:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            sqlite: include_str!(concat!("../../migrations/sqlite/", $file, ".sql")),
            postgres: include_str!(concat!("../../migrations/postgres/", $file, ".sql")),
        }
    };
}

/// Every schema version, in order (a number with no file was never released).
const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_init", "init"),
    migration!(2, "0002_outbox_follow_up_index", "outbox_follow_up_index"),
    migration!(3, "0003_delivery", "delivery"),
    migration!(4, "0004_task_queue_order", "task_queue_order"),
    migration!(5, "0005_goal_status", "goal_status"),
    migration!(6, "0006_scale_answers", "scale_answers"),
    migration!(7, "0007_due_order", "due_order"),
    migration!(9, "0009_audit_keyed_chain", "audit_keyed_chain"),
    migration!(10, "0010_checked_at", "checked_at"),
    migration!(11, "0011_alarm_episodes", "alarm_episodes"),
    migration!(12, "0012_ownership", "ownership"),
    migration!(13, "0013_institution_calendars", "institution_calendars"),
    migration!(14, "0014_hospital_facts", "hospital_facts"),
    migration!(15, "0015_migration_runs", "migration_runs"),
    migration!(16, "0016_staff_sign_in", "staff_sign_in"),
    migration!(17, "0017_record_parts", "record_parts"),
    migration!(18, "0018_byte_ordered_keys", "byte_ordered_keys"),
    migration!(19, "0019_task_escalation", "task_escalation"),
    migration!(20, "0020_open_task_index", "open_task_index"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// The caller may see the object but their role may not do this to it.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error("the audit record cannot be written: {0}")]
    AuditUnavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Db(DbError::Sql(e))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Applies pending migrations; each in its own transaction, recorded in `_carepath_migrations`.
pub async fn migrate(pool: &Pool) -> Result<Vec<i64>> {
    pool.exec("CREATE TABLE IF NOT EXISTS _carepath_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)", vec![])
        .await?;
    let applied: Vec<i64> = pool
        .fetch("SELECT version FROM _carepath_migrations", vec![])
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect();
    let mut done = Vec::new();
    for m in MIGRATIONS {
        let (version, name) = (&m.version, &m.name);
        let sql = if pool.is_postgres() {
            m.postgres
        } else {
            m.sqlite
        };
        if applied.contains(version) {
            continue;
        }
        let mut tx = pool.begin().await?;
        tx.exec_script(sql).await?;
        tx.exec(
            "INSERT INTO _carepath_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            args![*version, *name, Timestamp::now().as_second()],
        )
        .await?;
        tx.commit().await?;
        done.push(*version);
    }
    Ok(done)
}

/// Publishes a pathway version: immutable, so the same version with other content is refused.
pub async fn publish(pool: &Pool, programs: &Programs, now: Timestamp) -> Result<usize> {
    let mut published = 0;
    let mut tx = pool.begin().await?;
    for ((id, version), src) in &programs.sources {
        let existing = tx
            .fetch_one(
                "SELECT hash FROM pathway_versions WHERE pathway_id = $1 AND version = $2",
                args![id, i64::from(*version)],
            )
            .await?;
        match existing {
            Some(row) if row.text(0) != src.hash => {
                return Err(StoreError::Conflict(format!(
                    "pathway {id} v{version} is already published with different content; give the changed pathway a new version"
                )));
            }
            Some(_) => {}
            None => {
                let title = programs
                    .get(id, *version)
                    .map(|p| p.pathway.title.en.clone())
                    .unwrap_or_default();
                tx.exec(
                    "INSERT INTO pathway_versions (pathway_id, version, format, source, model, hash, title, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    args![id, i64::from(*version), src.format, &src.text, &src.model, &src.hash, title, now.as_second()],
                )
                .await?;
                published += 1;
            }
        }
    }
    tx.commit().await?;
    Ok(published)
}

/// Loads every published version from the database into runnable programs. The stored model is
/// self-contained (fragments resolved at publication), so nothing is read from disk.
pub async fn load_programs(pool: &Pool) -> Result<Programs> {
    let rows = pool.fetch("SELECT pathway_id, version, format, source, model FROM pathway_versions ORDER BY pathway_id, version", vec![]).await?;
    let mut programs = Programs::default();
    for r in rows {
        let pathway: carepath_dsl::Pathway = serde_json::from_str(&r.text(4)).map_err(|e| {
            StoreError::Invalid(format!(
                "stored model of pathway {} v{} cannot be read: {e}",
                r.text(0),
                r.i64(1)
            ))
        })?;
        let file = format!("{}.v{}.{}", r.text(0), r.i64(1), r.text(2));
        let source = Source::new(&file, r.text(3), &pathway);
        programs
            .insert(pathway, source)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    Ok(programs)
}

#[derive(Debug, Clone)]
pub struct NewPatient {
    pub id: String,
    pub institution_id: String,
    pub birth_date: Option<String>,
    pub sex: String,
    pub tz: String,
    pub contact_enc: Option<String>,
    pub preferred_channel: Option<String>,
    /// The community institution the patient belongs to (a community clinic or township hospital
    /// of the alliance), where a referral `to: own_community` goes.
    pub home_institution: Option<String>,
    /// The language messages to the patient are written in (`zh` or `en`), if known.
    pub lang: Option<String>,
}

/// How a batch's rows reach the database: as statements (multi-row `INSERT`s, and on PostgreSQL
/// column arrays), or as PostgreSQL `COPY` streams (`copy.rs`). Both write the same rows; SQLite
/// always takes statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    Statements,
    Copy,
}

impl Transfer {
    /// The fewest patients or enrolments in one call that PostgreSQL is sent by COPY: below it,
    /// the few round trips a COPY adds (creating the staging tables, the stream) cost more than
    /// binding the rows.
    pub const COPY_FROM: usize = 64;

    /// COPY for a PostgreSQL batch of at least [`Transfer::COPY_FROM`] rows, statements
    /// otherwise.
    pub fn for_batch(tx: &Tx, rows: usize) -> Transfer {
        if tx.is_postgres() && rows >= Transfer::COPY_FROM {
            Transfer::Copy
        } else {
            Transfer::Statements
        }
    }
}

pub async fn insert_institution(
    tx: &mut Tx,
    id: &str,
    name: &str,
    kind: &str,
    parent: Option<&str>,
) -> Result<()> {
    tx.exec(
        "INSERT INTO institutions (id, name, kind, parent_id) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        args![id, name, kind, parent.map(str::to_string)],
    )
    .await?;
    Ok(())
}

pub async fn insert_staff(
    tx: &mut Tx,
    id: &str,
    institution: &str,
    name: &str,
    roles: &[&str],
    token_hash: Option<String>,
) -> Result<()> {
    tx.exec(
        "INSERT INTO staff (id, institution_id, display_name, roles, token_hash) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
        args![id, institution, name, roles.join(","), token_hash],
    )
    .await?;
    Ok(())
}

/// Removes a staff member (their token stops working); seeding replaces staff this way.
pub async fn remove_staff(tx: &mut Tx, id: &str) -> Result<()> {
    tx.exec("DELETE FROM staff WHERE id = $1", args![id])
        .await?;
    Ok(())
}

pub async fn insert_patient(tx: &mut Tx, p: &NewPatient, now: Timestamp) -> Result<()> {
    insert_patients(tx, std::slice::from_ref(p), now).await
}

/// Inserts patients in multi-row statements, or by COPY for a large batch on PostgreSQL; every
/// time zone is checked first.
pub async fn insert_patients(tx: &mut Tx, patients: &[NewPatient], now: Timestamp) -> Result<()> {
    let transfer = Transfer::for_batch(tx, patients.len());
    insert_patients_by(tx, patients, now, transfer).await
}

/// [`insert_patients`], sending the rows as `transfer` says.
pub async fn insert_patients_by(
    tx: &mut Tx,
    patients: &[NewPatient],
    now: Timestamp,
    transfer: Transfer,
) -> Result<()> {
    if let Some(p) = patients
        .iter()
        .find(|p| jiff::tz::TimeZone::get(&p.tz).is_err())
    {
        return Err(StoreError::Invalid(format!(
            "`{}` is not an IANA time zone",
            p.tz
        )));
    }
    const COLUMNS: &str = "id, institution_id, birth_date, sex, tz, contact_enc, preferred_channel, created_at, home_institution, lang";
    const PER_ROW: usize = 10;
    let row = |p: &NewPatient| -> Vec<Arg> {
        args![
            &p.id,
            &p.institution_id,
            p.birth_date.clone(),
            &p.sex,
            &p.tz,
            p.contact_enc.clone(),
            p.preferred_channel.clone(),
            now.as_second(),
            p.home_institution.clone(),
            p.lang.clone()
        ]
    };
    if transfer == Transfer::Copy && tx.is_postgres() {
        let rows: Vec<Vec<Arg>> = patients.iter().map(row).collect();
        copy::copy_into(tx, "patients", COLUMNS, &rows).await?;
        return Ok(());
    }
    for part in patients.chunks(writer::MAX_PARAMS / PER_ROW) {
        let a: Vec<Arg> = part.iter().flat_map(row).collect();
        tx.exec(
            &format!(
                "INSERT INTO patients ({COLUMNS}) VALUES {}",
                values_list(part.len(), PER_ROW)
            ),
            a,
        )
        .await?;
    }
    Ok(())
}

/// SQL for the institution a new task of enrolment `$enrolment` for role `$role` goes to: the
/// institution that owns the role for the enrolment (an accepted referral moved it), else
/// `$fallback` (the enrolment's). Every statement that makes a task for a role uses it.
pub(crate) fn task_institution(enrolment: usize, role: usize, fallback: usize) -> String {
    format!(
        "COALESCE((SELECT o.institution_id FROM role_owners o WHERE o.enrolment_id = ${enrolment} AND o.role = ${role}), ${fallback})"
    )
}

/// A task made outside a scheduler step (an alarm episode's, a scale answer's critical item): kept,
/// open, in the institution that owns its role for the enrolment, with its SLA and escalation
/// instant. Returns its id; None when a task with `key` is already stored, or `task` is no task.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_kept_task(
    tx: &mut Tx,
    key: &str,
    enrolment: i64,
    patient: &str,
    institution: &str,
    state_seq: i64,
    task: &carepath_core::step::Produced,
    now: Timestamp,
) -> Result<Option<i64>> {
    let carepath_core::step::Produced::Task {
        task_ref,
        role,
        title,
        due_at,
        priority,
        sla,
        ..
    } = task
    else {
        return Ok(None);
    };
    let escalate_at = sla
        .as_ref()
        .and_then(|s| s.escalates_at(due_at.as_second()));
    Ok(tx
        .fetch_one(
            &format!(
                "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, sla, status, due_at, created_at, escalate_at) \
                 VALUES ($1, $2, $3, {}, $5, $6, $7, $8, $9, $10, 1, $11, 'open', $12, $13, $14) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                task_institution(2, 7, 4)
            ),
            args![
                key,
                enrolment,
                patient,
                institution,
                state_seq,
                task_ref.clone(),
                role,
                &title.zh,
                &title.en,
                *priority as i64,
                sla.as_ref().map(|s| serde_json::to_string(s).unwrap_or_default()),
                due_at.as_second(),
                now.as_second(),
                escalate_at,
            ],
        )
        .await?
        .map(|r| r.i64(0)))
}

/// One due enrolment with what the step needs from its patient.
#[derive(Debug, Clone)]
pub struct DueEnrolment {
    pub enrolment: Enrolment,
    pub patient_id: String,
    pub institution_id: String,
    pub row_version: i64,
    pub birth_date: Option<String>,
    pub sex: String,
    /// The patient's home community institution, where a referral `to: own_community` goes.
    pub home_institution: Option<String>,
}

/// The variables an event's stored payload sets (`{"set": {...}}`, checked when it was accepted).
pub fn event_set(payload: &str) -> BTreeMap<String, VarValue> {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("set").map(|s| vars_from_json(&s.to_string())))
        .unwrap_or_default()
}

/// Reads stored enrolment variables one by one, so one odd value cannot lose the others. JSON has
/// no NaN (a number that is not known yet is stored as `null`), so `null` reads back as NaN.
pub fn vars_from_json(text: &str) -> BTreeMap<String, VarValue> {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).unwrap_or_default();
    map.into_iter()
        .filter_map(|(k, v)| {
            let value = match v {
                serde_json::Value::Null => VarValue::Number(f64::NAN),
                other => serde_json::from_value(other).ok()?,
            };
            Some((k, value))
        })
        .collect()
}

const ENROLMENT_COLUMNS: &str = "e.id, e.patient_id, e.institution_id, e.pathway_id, e.version, e.state, e.state_seq, e.entered_at, e.vars, e.last_event_seq, e.status, e.row_version, p.tz, p.birth_date, p.sex, e.checked_at, e.enrolled_at, p.home_institution";

fn due_from_row(r: &Row) -> DueEnrolment {
    let vars = vars_from_json(&r.text(8));
    let entered_at = ts(r.i64(7));
    DueEnrolment {
        enrolment: Enrolment {
            id: r.i64(0),
            pathway_id: r.text(3),
            version: r.i64(4) as u32,
            state: r.text(5),
            state_seq: r.i64(6) as u32,
            entered_at,
            vars,
            last_event_seq: r.i64(9),
            tz: r.text(12),
            status: Status::parse(&r.text(10)),
            checked_at: r.opt_i64(15).map_or(entered_at, ts),
            enrolled_at: ts(r.i64(16)),
        },
        patient_id: r.text(1),
        institution_id: r.text(2),
        row_version: r.i64(11),
        birth_date: r.opt_text(13),
        sex: r.text(14),
        home_institution: r.opt_text(17),
    }
}

/// Claims up to `limit` due enrolments, in wake order. On PostgreSQL the rows stay locked by this
/// transaction and other workers skip them.
pub async fn claim_due(tx: &mut Tx, now: Timestamp, limit: i64) -> Result<Vec<DueEnrolment>> {
    let lock = if tx.is_postgres() {
        " FOR UPDATE OF e SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {ENROLMENT_COLUMNS} FROM enrolments e JOIN patients p ON p.id = e.patient_id \
         WHERE e.status = 'active' AND e.next_wake_at IS NOT NULL AND e.next_wake_at <= $1 \
         ORDER BY e.next_wake_at, e.id LIMIT $2{lock}"
    );
    let rows = tx.fetch(&sql, args![now.as_second(), limit]).await?;
    let mut due: Vec<DueEnrolment> = rows.iter().map(due_from_row).collect();
    // Writing in key order keeps SQLite's page writes local.
    due.sort_by_key(|d| d.enrolment.id);
    Ok(due)
}

pub async fn load_enrolment(tx: &mut Tx, id: i64) -> Result<DueEnrolment> {
    let lock = if tx.is_postgres() {
        " FOR UPDATE OF e"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {ENROLMENT_COLUMNS} FROM enrolments e JOIN patients p ON p.id = e.patient_id WHERE e.id = $1{lock}"
    );
    let row = tx
        .fetch_one(&sql, args![id])
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("enrolment {id}")))?;
    Ok(due_from_row(&row))
}

/// Loads the facts and pending events of a batch of enrolments in a few queries.
pub async fn load_facts(
    tx: &mut Tx,
    batch: &[DueEnrolment],
    now: Timestamp,
) -> Result<HashMap<i64, (PatientFacts, Vec<PendingEvent>)>> {
    let of: Vec<FactsOf<'_>> = batch
        .iter()
        .map(|d| FactsOf {
            enrolment: d.enrolment.id,
            patient: &d.patient_id,
            birth_date: d.birth_date.as_deref(),
            sex: &d.sex,
        })
        .collect();
    load_facts_of(tx, &of, now, false).await
}

/// Whose facts to load: an enrolment and its patient.
struct FactsOf<'a> {
    enrolment: i64,
    patient: &'a str,
    birth_date: Option<&'a str>,
    sex: &'a str,
}

/// The most enrolments whose facts one round of queries reads: each query binds one parameter
/// per enrolment or patient, and PostgreSQL takes at most 65,535 parameters a statement.
const FACTS_CHUNK: usize = 10_000;

/// Loads the facts of `batch`, [`FACTS_CHUNK`] enrolments at a time. With `made_now` (enrolments
/// made in this transaction, with nothing stored under their ids but their goals, none met yet)
/// only the patients' facts are read: diagnoses, encounters, observations and scale answers.
async fn load_facts_of(
    tx: &mut Tx,
    batch: &[FactsOf<'_>],
    now: Timestamp,
    made_now: bool,
) -> Result<HashMap<i64, (PatientFacts, Vec<PendingEvent>)>> {
    load_facts_chunked(tx, batch, now, made_now, FACTS_CHUNK).await
}

/// [`load_facts_of`], `chunk` enrolments at a time. An enrolment's facts all come from the
/// queries of its chunk, in their order, so the chunk size changes nothing read.
async fn load_facts_chunked(
    tx: &mut Tx,
    batch: &[FactsOf<'_>],
    now: Timestamp,
    made_now: bool,
    chunk: usize,
) -> Result<HashMap<i64, (PatientFacts, Vec<PendingEvent>)>> {
    let mut out = HashMap::with_capacity(batch.len());
    for part in batch.chunks(chunk.max(1)) {
        out.extend(load_facts_chunk(tx, part, now, made_now).await?);
    }
    Ok(out)
}

/// The facts of `batch`, in one query per kind of fact (one parameter per enrolment or patient).
async fn load_facts_chunk(
    tx: &mut Tx,
    batch: &[FactsOf<'_>],
    now: Timestamp,
    made_now: bool,
) -> Result<HashMap<i64, (PatientFacts, Vec<PendingEvent>)>> {
    let mut out: HashMap<i64, (PatientFacts, Vec<PendingEvent>)> = HashMap::new();
    if batch.is_empty() {
        return Ok(out);
    }
    for d in batch {
        let facts = PatientFacts {
            birth_date: d.birth_date.and_then(|b| b.parse().ok()),
            sex: d.sex.to_string(),
            ..Default::default()
        };
        out.insert(d.enrolment, (facts, Vec::new()));
    }
    let ids: Vec<Arg> = batch.iter().map(|d| Arg::I(d.enrolment)).collect();
    let in_ids = db::placeholders(1, ids.len());
    let mut by_patient: HashMap<&str, Vec<i64>> = HashMap::new();
    for d in batch {
        by_patient.entry(d.patient).or_default().push(d.enrolment);
    }
    let patients: Vec<Arg> = by_patient.keys().map(|p| Arg::T(p.to_string())).collect();
    let in_patients = db::placeholders(1, patients.len());

    let rows = if made_now {
        Vec::new()
    } else {
        tx.fetch(&format!("SELECT enrolment_id, seq, name, at, payload FROM events WHERE enrolment_id IN ({in_ids}) AND void_at IS NULL ORDER BY seq"), ids.clone()).await?
    };
    for r in rows {
        if let Some((facts, pending)) = out.get_mut(&r.i64(0)) {
            let (seq, name, at) = (r.i64(1), r.text(2), ts(r.i64(3)));
            facts.events.push(FactEvent {
                name: name.clone(),
                at,
            });
            let set = r.opt_text(4).map(|p| event_set(&p)).unwrap_or_default();
            pending.push(PendingEvent { seq, name, at, set });
        }
    }
    let rows = tx
        .fetch(&format!("SELECT patient_id, code, principal, recorded_at FROM diagnoses WHERE patient_id IN ({in_patients}) ORDER BY recorded_at, id"), patients.clone())
        .await?;
    for r in rows {
        for id in by_patient.get(r.text(0).as_str()).into_iter().flatten() {
            if let Some((facts, _)) = out.get_mut(id) {
                facts.diagnoses.push(Diagnosis {
                    code: r.text(1),
                    principal: r.i64(2) != 0,
                    at: ts(r.i64(3)),
                });
            }
        }
    }
    let rows = tx
        .fetch(&format!("SELECT patient_id, class, admitted_at, discharged_at, acute, department FROM encounters WHERE patient_id IN ({in_patients}) AND status = 'active' ORDER BY admitted_at, id"), patients.clone())
        .await?;
    for r in rows {
        let Some(class) = clinical::EncounterClass::parse(&r.text(1)) else {
            continue;
        };
        for id in by_patient.get(r.text(0).as_str()).into_iter().flatten() {
            if let Some((facts, _)) = out.get_mut(id) {
                facts.encounters.push(Encounter {
                    class,
                    admitted_at: r.opt_i64(2).map(ts),
                    discharged_at: r.opt_i64(3).map(ts),
                    acute: r.opt_i64(4).map(|a| a != 0),
                    department: r.opt_text(5),
                });
            }
        }
    }
    for (_, (facts, pending)) in out.iter_mut() {
        facts.events.sort_by_key(|e| e.at);
        let _ = pending;
    }
    let since = now.as_second() - 400 * 86_400;
    let mut obs_args = patients.clone();
    obs_args.push(Arg::I(since));
    let rows = tx
        .fetch(
            &format!("SELECT patient_id, kind, value, at FROM observations WHERE patient_id IN ({in_patients}) AND at > ${} ORDER BY at", patients.len() + 1),
            obs_args,
        )
        .await?;
    for r in rows {
        for id in by_patient.get(r.text(0).as_str()).into_iter().flatten() {
            if let Some((facts, _)) = out.get_mut(id) {
                facts.observations.push(Observation {
                    kind: r.text(1),
                    value: r.f64(2),
                    at: ts(r.i64(3)),
                });
            }
        }
    }
    let rows = tx
        .fetch(&format!("SELECT patient_id, scale, score, band, answers, at FROM scale_answers WHERE patient_id IN ({in_patients}) ORDER BY at"), patients.clone())
        .await?;
    for r in rows {
        let items: Vec<i64> = serde_json::from_str(&r.text(4)).unwrap_or_default();
        for id in by_patient.get(r.text(0).as_str()).into_iter().flatten() {
            if let Some((facts, _)) = out.get_mut(id) {
                facts.scales.push(ScaleResult {
                    scale: r.text(1),
                    score: r.f64(2),
                    band: r.text(3),
                    items: items.clone(),
                    at: ts(r.i64(5)),
                });
            }
        }
    }
    if !made_now {
        load_work_facts(tx, &ids, now, &mut out).await?;
    }
    Ok(out)
}

/// The facts of enrolments `ids` that their stored work gives: risk results, open and overdue
/// tasks, task outcomes, goals met.
async fn load_work_facts(
    tx: &mut Tx,
    ids: &[Arg],
    now: Timestamp,
    out: &mut HashMap<i64, (PatientFacts, Vec<PendingEvent>)>,
) -> Result<()> {
    let in_ids = db::placeholders(1, ids.len());
    let rows = tx.fetch(&format!("SELECT enrolment_id, model, score, band, at FROM risk_predictions WHERE enrolment_id IN ({in_ids}) ORDER BY at, id"), ids.to_vec()).await?;
    for r in rows {
        if let Some((facts, _)) = out.get_mut(&r.i64(0)) {
            facts.risks.push(RiskResult {
                model: r.text(1),
                score: r.f64(2),
                band: r.text(3),
                at: ts(r.i64(4)),
            });
        }
    }
    let mut task_args = ids.to_vec();
    task_args.push(Arg::I(now.as_second()));
    let rows = tx
        .fetch(
            &format!(
                "SELECT enrolment_id, COUNT(*), COUNT(CASE WHEN due_at < ${} THEN 1 END) FROM tasks \
                 WHERE enrolment_id IN ({in_ids}) AND status IN ('open', 'claimed') GROUP BY enrolment_id",
                ids.len() + 1
            ),
            task_args,
        )
        .await?;
    for r in rows {
        if let Some((facts, _)) = out.get_mut(&r.i64(0)) {
            facts.open_tasks = r.i64(1);
            facts.overdue_tasks = r.i64(2);
        }
    }
    let rows = tx
        .fetch(
            &format!("SELECT enrolment_id, task_ref, outcome FROM tasks WHERE enrolment_id IN ({in_ids}) AND status = 'done' AND task_ref IS NOT NULL ORDER BY completed_at, id"),
            ids.to_vec(),
        )
        .await?;
    for r in rows {
        if let Some((facts, _)) = out.get_mut(&r.i64(0)) {
            facts.outcomes.push((r.text(1), r.text(2)));
        }
    }
    let rows = tx.fetch(&format!("SELECT enrolment_id, goal_id FROM goals WHERE enrolment_id IN ({in_ids}) AND met = 1"), ids.to_vec()).await?;
    for r in rows {
        if let Some((facts, _)) = out.get_mut(&r.i64(0)) {
            facts.goals_met.push(r.text(1));
        }
    }
    Ok(())
}

/// What committing one outcome added, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Written {
    /// The enrolment it was written for.
    #[serde(skip)]
    pub enrolment: i64,
    pub transitions: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub cancelled_tasks: u64,
}

impl Written {
    pub fn add(&mut self, other: &Written) {
        self.transitions += other.transitions;
        self.cancelled_tasks += other.cancelled_tasks;
        for (k, v) in &other.by_kind {
            *self.by_kind.entry(k.clone()).or_default() += v;
        }
    }

    pub fn actions(&self) -> u64 {
        self.by_kind.values().sum()
    }
}

/// Writes one step's outcome into `buf` (flushed by the caller in the same transaction). Returns
/// `None` when the enrolment changed since it was read (the row-version check failed): nothing is
/// written and the caller may retry.
pub async fn apply_outcome(
    tx: &mut Tx,
    buf: &mut RowBuffer,
    d: &DueEnrolment,
    outcome: &Outcome,
    now: Timestamp,
) -> Result<Option<Written>> {
    Ok(apply_outcomes(tx, buf, &[(d, outcome)], now)
        .await?
        .pop()
        .flatten())
}

/// Writes the outcomes of a batch in a few statements: one row-version-guarded update of every
/// enrolment, one cancellation per kind of open work for the enrolments that left a state, and
/// the new rows into `buf`. Returns, per outcome in order, what it wrote, or `None` when that
/// enrolment changed since it was read (nothing of it is written).
pub async fn apply_outcomes(
    tx: &mut Tx,
    buf: &mut RowBuffer,
    batch: &[(&DueEnrolment, &Outcome)],
    now: Timestamp,
) -> Result<Vec<Option<Written>>> {
    let batch: Vec<_> = batch.iter().map(|(d, o)| (*d, *o, now)).collect();
    apply_outcomes_at(tx, buf, &batch).await
}

/// [`apply_outcomes`] with each outcome's own step instant.
pub async fn apply_outcomes_at(
    tx: &mut Tx,
    buf: &mut RowBuffer,
    batch: &[(&DueEnrolment, &Outcome, Timestamp)],
) -> Result<Vec<Option<Written>>> {
    apply_outcomes_with(tx, buf, batch, None).await
}

/// [`apply_outcomes_at`]; work a withdrawal ends is recorded as ended with the withdrawal's
/// `reason` (`withdrawn: <reason>`).
async fn apply_outcomes_with(
    tx: &mut Tx,
    buf: &mut RowBuffer,
    batch: &[(&DueEnrolment, &Outcome, Timestamp)],
    withdrawn: Option<&str>,
) -> Result<Vec<Option<Written>>> {
    let updated = update_enrolments(tx, batch).await?;
    let mut endings: Vec<Ending> = Vec::new();
    let mut out = buffer_outcomes(buf, batch, &updated, withdrawn, &mut endings);
    // Work already stored goes away as the policy says; the new rows are still in `buf`.
    let cancelled = cancel_work_of(tx, &endings).await?;
    for w in out.iter_mut().flatten() {
        w.cancelled_tasks = cancelled.get(&w.enrolment).copied().unwrap_or(0);
    }
    Ok(out)
}

/// Puts what each outcome of `batch` whose enrolment is in `updated` made into `buf`, and the
/// stored work it ends into `endings`; returns, per outcome in order, what it wrote, or `None`
/// for an enrolment not updated.
fn buffer_outcomes(
    buf: &mut RowBuffer,
    batch: &[(&DueEnrolment, &Outcome, Timestamp)],
    updated: &HashSet<i64>,
    withdrawn: Option<&str>,
    endings: &mut Vec<Ending>,
) -> Vec<Option<Written>> {
    let mut out = Vec::with_capacity(batch.len());
    for (d, outcome, now) in batch {
        let e = &outcome.enrolment;
        if !updated.contains(&d.enrolment.id) {
            out.push(None);
            continue;
        }
        let mut sink = StoreSink {
            d,
            withdrawn,
            buf: &mut *buf,
            endings: &mut *endings,
            written: Written {
                enrolment: d.enrolment.id,
                ..Default::default()
            },
        };
        outcome::apply(outcome, &mut sink);
        let written = sink.written;
        // The step is named by the first thing it made (or, making nothing, the first transition
        // it took): keys no other step shares, and the same when a step is written again.
        let first = outcome.actions.first().map(|a| a.key.clone()).or_else(|| {
            outcome
                .transitions
                .first()
                .map(|t| format!("e{}:{}:t", e.id, t.left_seq))
        });
        if let Some(first) = first {
            buf.step(
                d,
                format!("{first}:step"),
                now.as_second(),
                !outcome.transitions.is_empty(),
                &outcome.trace,
            );
        }
        out.push(Some(written));
    }
    out
}

/// Stored work of one enrolment that ends: `seq` is a state entry, or `-1` for every entry;
/// `made_by`, when set, narrows it to the work of the action with that id.
struct Ending {
    enrolment: i64,
    seq: i64,
    made_by: Option<String>,
    cause: Cause,
    reason: String,
    /// The instant the work ends (seconds): work that had come due by then may outlive it.
    at: i64,
}

/// The store's side of [`outcome::apply`]: rows into the buffer, endings into one statement per
/// kind of work for the whole batch.
struct StoreSink<'a> {
    d: &'a DueEnrolment,
    /// The reason of the withdrawal this outcome carries out, if it does.
    withdrawn: Option<&'a str>,
    buf: &'a mut RowBuffer,
    endings: &'a mut Vec<Ending>,
    written: Written,
}

impl OutcomeSink for StoreSink<'_> {
    fn transition(&mut self, t: &Taken) {
        let e = self.d.enrolment.id;
        self.written.transitions += 1;
        self.buf.record(
            Some(format!("e{e}:{}:t", t.left_seq)),
            &self.d.patient_id,
            e,
            t.at.as_second(),
            "transition",
            json!({"from": t.from, "to": t.to, "because": t.because}).to_string(),
        );
    }

    fn end_work(&mut self, scope: Scope<'_>, cause: Cause, because: Because<'_>) {
        self.endings.push(Ending {
            enrolment: self.d.enrolment.id,
            seq: match scope {
                Scope::Entry(seq) => i64::from(seq),
                Scope::Every | Scope::Made(_) => -1,
            },
            made_by: match scope {
                Scope::Made(id) => Some(id.to_string()),
                _ => None,
            },
            cause,
            reason: self.reason(&because),
            at: because.at().as_second(),
        });
    }

    fn action(&mut self, a: &Emitted, ended: Option<Because<'_>>) {
        let reason = ended.map(|b| self.reason(&b));
        self.buf.action(self.d, a, reason.as_deref());
    }
}

impl StoreSink<'_> {
    /// Why work ended, as its row records it.
    fn reason(&self, because: &Because<'_>) -> String {
        match (because, self.withdrawn) {
            (Because::Ended(Status::Withdrawn, _), Some(reason)) => format!("withdrawn: {reason}"),
            _ => because.to_string(),
        }
    }
}

/// `n` rows of `per_row` placeholders numbered from `$first`: `($1, $2), ($3, $4)`.
pub(crate) fn values_list_from(first: usize, n: usize, per_row: usize) -> String {
    let mut sql = String::with_capacity(n * per_row * 6);
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for j in 0..per_row {
            if j > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(first + i * per_row + j).to_string());
        }
        sql.push(')');
    }
    sql
}

fn values_list(n: usize, per_row: usize) -> String {
    values_list_from(1, n, per_row)
}

/// An enrolment's row after `outcome` at `now`, as [`update_enrolments`] writes it: id, the row
/// version read, state, state_seq, entered_at, vars, last_event_seq, status, next_wake_at,
/// ended_at (if it ended now) and checked_at.
fn stepped_enrolment(d: &DueEnrolment, outcome: &Outcome, now: Timestamp) -> [Arg; 11] {
    let e = &outcome.enrolment;
    let ended = (e.status != Status::Active).then_some(now.as_second());
    [
        Arg::I(e.id),
        Arg::I(d.row_version),
        Arg::T(e.state.clone()),
        Arg::I(i64::from(e.state_seq)),
        Arg::I(e.entered_at.as_second()),
        Arg::T(serde_json::to_string(&e.vars).unwrap_or_default()),
        Arg::I(e.last_event_seq),
        Arg::T(e.status.as_str().into()),
        Arg::OptI(outcome.next_wake.map(|t| t.as_second())),
        Arg::OptI(ended),
        Arg::I(e.checked_at.as_second()),
    ]
}

/// Updates every enrolment of the batch whose row version is still the one read; returns the ids
/// updated.
async fn update_enrolments(
    tx: &mut Tx,
    batch: &[(&DueEnrolment, &Outcome, Timestamp)],
) -> Result<HashSet<i64>> {
    const PER_ROW: usize = 11;
    let mut updated = HashSet::new();
    for part in batch.chunks(writer::MAX_PARAMS / PER_ROW) {
        let mut a = Vec::with_capacity(part.len() * PER_ROW);
        for (d, outcome, now) in part {
            a.extend(stepped_enrolment(d, outcome, *now));
        }
        let sql = format!(
            "UPDATE enrolments SET state = v.column3, state_seq = v.column4, entered_at = v.column5, vars = v.column6, \
             last_event_seq = v.column7, status = v.column8, next_wake_at = v.column9, row_version = enrolments.row_version + 1, \
             ended_at = COALESCE(enrolments.ended_at, v.column10), checked_at = v.column11 \
             FROM (VALUES {}) AS v WHERE enrolments.id = v.column1 AND enrolments.row_version = v.column2 RETURNING enrolments.id",
            values_list(part.len(), PER_ROW)
        );
        updated.extend(tx.fetch(&sql, a).await?.iter().map(|r| r.i64(0)));
    }
    Ok(updated)
}

/// The kinds of stored work one statement each can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kinds {
    tasks: (bool, bool),
    follow_ups: bool,
    /// Follow-ups whose send time has passed by the ending outlive it.
    follow_ups_outlive_due: bool,
    scale_pushes: bool,
    alarms: (bool, bool),
}

impl Kinds {
    /// What the policy ends for `cause`.
    fn ended_by(cause: Cause) -> Kinds {
        let ends = |w| outcome::ends(w, cause);
        Kinds {
            tasks: (
                ends(Work::Task { keep: false }),
                ends(Work::Task { keep: true }),
            ),
            follow_ups: ends(Work::FollowUp),
            follow_ups_outlive_due: outcome::outlives_once_due(Work::FollowUp, cause),
            scale_pushes: ends(Work::ScalePush),
            alarms: (
                ends(Work::Alarm(AlarmScope::State)),
                ends(Work::Alarm(AlarmScope::Enrolment)),
            ),
        }
    }
}

/// Ends the open work of state entry `seq` of `enrolment` as leaving the state ends it (the
/// outcome policy's `StateLeft`), with `reason`; returns the tasks cancelled.
pub(crate) async fn end_state_work(
    tx: &mut Tx,
    enrolment: i64,
    seq: u32,
    reason: &str,
    at: Timestamp,
) -> Result<u64> {
    let ending = Ending {
        enrolment,
        seq: i64::from(seq),
        made_by: None,
        cause: Cause::StateLeft,
        reason: reason.to_string(),
        at: at.as_second(),
    };
    Ok(cancel_work_of(tx, std::slice::from_ref(&ending))
        .await?
        .values()
        .sum())
}

/// Ends the stored work of each ending, kind by kind as the policy says for its cause; returns
/// the tasks cancelled per enrolment.
async fn cancel_work_of(tx: &mut Tx, endings: &[Ending]) -> Result<HashMap<i64, u64>> {
    let mut cancelled: HashMap<i64, u64> = HashMap::new();
    let mut causes: Vec<Cause> = Vec::new();
    for x in endings {
        if !causes.contains(&x.cause) {
            causes.push(x.cause);
        }
    }
    for cause in causes {
        let of_cause: Vec<&Ending> = endings.iter().filter(|x| x.cause == cause).collect();
        cancel_kinds(tx, Kinds::ended_by(cause), &of_cause, &mut cancelled).await?;
    }
    Ok(cancelled)
}

/// Ends the stored `kinds` of work of each ending (`seq = -1`: of every state entry; with
/// `made_by`: only the work the action with that id made).
async fn cancel_kinds(
    tx: &mut Tx,
    kinds: Kinds,
    endings: &[&Ending],
    cancelled: &mut HashMap<i64, u64>,
) -> Result<()> {
    for part in endings.chunks(writer::MAX_PARAMS / 5) {
        // The explicit id list keeps each update on its table's `enrolment_id` index (PostgreSQL
        // otherwise hashes the VALUES list against a scan of the whole table).
        let ids: Vec<Arg> = part.iter().map(|x| Arg::I(x.enrolment)).collect();
        let mut with_reason: Vec<Arg> = part
            .iter()
            .flat_map(|x| args![x.enrolment, x.seq, x.reason.as_str(), x.made_by.clone()])
            .collect();
        with_reason.extend(ids.iter().cloned());
        let mut with_at: Vec<Arg> = part
            .iter()
            .flat_map(|x| args![x.enrolment, x.seq, x.at, x.made_by.clone()])
            .collect();
        with_at.extend(ids.iter().cloned());
        let v4 = values_list(part.len(), 4);
        let in4 = db::placeholders(4 * part.len() + 1, part.len());
        // An episode outlives the state whose rule opened it, not the enrolment. Episodes are
        // closed before tasks are cancelled: resolving an episode locks it, then its task.
        if kinds.alarms.1 {
            let ended: Vec<(i64, i64, &str)> = part
                .iter()
                .map(|x| (x.enrolment, x.at, x.reason.as_str()))
                .collect();
            alarms::end_episodes(tx, &ended).await?;
        }
        // Which of a table's rows an ending reaches: its enrolment, its state entry (or every
        // one), and the action that made it (or any).
        let of = |table: &str, made_by: &str| {
            format!(
                "{table}.enrolment_id IN ({in4}) AND {table}.enrolment_id = v.column1 AND (v.column2 < 0 OR {table}.state_seq = v.column2) \
                 AND (v.column4 IS NULL OR {table}.{made_by} = v.column4)"
            )
        };
        let keep = match kinds.tasks {
            (true, true) => Some(""),
            (true, false) => Some(" AND tasks.keep = 0"),
            (false, true) => Some(" AND tasks.keep = 1"),
            (false, false) => None,
        };
        if let Some(keep) = keep {
            for r in tx
                .fetch(
                    &format!(
                        "UPDATE tasks SET status = 'cancelled', cancel_reason = v.column3 FROM (VALUES {v4}) AS v \
                         WHERE {} AND tasks.status IN ('open', 'claimed'){keep} RETURNING tasks.enrolment_id",
                        of("tasks", "task_ref")
                    ),
                    with_reason,
                )
                .await?
            {
                *cancelled.entry(r.i64(0)).or_default() += 1;
            }
        }
        if kinds.follow_ups {
            let due = if kinds.follow_ups_outlive_due {
                " AND follow_ups.send_at > v.column3"
            } else {
                ""
            };
            // The follow-ups first, then their pending messages by id: an explicit list keeps
            // the outbox update on its `follow_up_id` index whatever the planner thinks of the join.
            let follow_ups: Vec<Arg> = tx
                .fetch(
                    &format!(
                        "UPDATE follow_ups SET status = 'cancelled' FROM (VALUES {v4}) AS v \
                         WHERE {} AND follow_ups.status = 'scheduled'{due} RETURNING follow_ups.id",
                        of("follow_ups", "follow_up_ref")
                    ),
                    with_at.clone(),
                )
                .await?
                .iter()
                .map(|r| Arg::I(r.i64(0)))
                .collect();
            for ids in follow_ups.chunks(writer::MAX_PARAMS) {
                tx.exec(
                    &format!(
                        "UPDATE outbox SET status = 'cancelled' WHERE follow_up_id IN ({}) AND status = 'pending'",
                        db::placeholders(1, ids.len())
                    ),
                    ids.to_vec(),
                )
                .await?;
            }
        }
        if kinds.scale_pushes {
            // A push that ends takes the reminder steps it has sent with it, as an answer would.
            let ended: Vec<(i64, i64)> = tx
                .fetch(
                    &format!(
                        "UPDATE scale_pushes SET status = 'cancelled', next_reminder_at = NULL FROM (VALUES {v4}) AS v \
                         WHERE {} AND scale_pushes.status = 'pending' RETURNING scale_pushes.enrolment_id, scale_pushes.id",
                        of("scale_pushes", "push_ref")
                    ),
                    with_at.clone(),
                )
                .await?
                .iter()
                .map(|r| (r.i64(0), r.i64(1)))
                .collect();
            scales::cancel_reminders_of(tx, &ended).await?;
        }
        let scopes = match kinds.alarms {
            (true, true) => Some("'state', 'enrolment'"),
            (true, false) => Some("'state'"),
            (false, true) => Some("'enrolment'"),
            (false, false) => None,
        };
        if let Some(scopes) = scopes {
            tx.exec(
                &format!(
                    "UPDATE alarm_rules SET active = 0 FROM (VALUES {v4}) AS v \
                     WHERE {} AND alarm_rules.scope IN ({scopes}) AND alarm_rules.active = 1",
                    of("alarm_rules", "alarm_id")
                ),
                with_at,
            )
            .await?;
        }
    }
    Ok(())
}

/// Marks an enrolment in error and raises an alarm task for the pathway's owner role.
pub async fn mark_error(
    tx: &mut Tx,
    d: &DueEnrolment,
    err: &StepError,
    owner_role: &str,
    now: Timestamp,
) -> Result<bool> {
    let n = tx
        .exec(
            "UPDATE enrolments SET status = 'error', error = $1, next_wake_at = NULL, row_version = row_version + 1 WHERE id = $2 AND row_version = $3",
            args![err.to_string(), d.enrolment.id, d.row_version],
        )
        .await?;
    if n == 0 {
        return Ok(false);
    }
    let key = format!("e{}:{}:error", d.enrolment.id, d.enrolment.state_seq);
    tx.exec(
        "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, sla, status, due_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pathway_error', $6, $7, $8, $9, 1, NULL, 'open', $10, $10) ON CONFLICT (dedupe_key) DO NOTHING",
        args![
            &key,
            d.enrolment.id,
            &d.patient_id,
            &d.institution_id,
            i64::from(d.enrolment.state_seq),
            owner_role,
            "路径执行错误，请检查",
            format!("Pathway error in state `{}`: check the pathway", d.enrolment.state),
            carepath_dsl::Priority::Urgent as i64,
            now.as_second()
        ],
    )
    .await?;
    tx.exec(
        "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'error', $5) ON CONFLICT (dedupe_key) DO NOTHING",
        args![key, &d.patient_id, d.enrolment.id, now.as_second(), json!({"error": err.to_string(), "guard": err.guard}).to_string()],
    )
    .await?;
    Ok(true)
}

/// Enrols a patient and commits the first step, all in one transaction.
pub async fn enrol(
    pool: &Pool,
    programs: &Programs,
    patient_id: &str,
    pathway_id: &str,
    version: Option<u32>,
    entry: &str,
    now: Timestamp,
) -> Result<(i64, Written)> {
    let mut tx = pool.begin().await?;
    let out = enrol_tx(
        &mut tx, programs, patient_id, pathway_id, version, entry, now,
    )
    .await?;
    tx.commit().await?;
    Ok(out)
}

/// Enrols inside the caller's transaction (batch seeding uses it).
pub async fn enrol_tx(
    tx: &mut Tx,
    programs: &Programs,
    patient_id: &str,
    pathway_id: &str,
    version: Option<u32>,
    entry: &str,
    now: Timestamp,
) -> Result<(i64, Written)> {
    let new = NewEnrolment {
        patient_id: patient_id.to_string(),
        pathway_id: pathway_id.to_string(),
        version,
        entry: entry.to_string(),
        at: now,
        catch_up_to: None,
    };
    let (ids, written) = enrol_many(tx, programs, std::slice::from_ref(&new)).await?;
    let id = ids
        .first()
        .copied()
        .ok_or_else(|| StoreError::Invalid("insert returned no id".into()))?;
    Ok((id, written))
}

/// One enrolment for [`enrol_many`].
#[derive(Debug, Clone)]
pub struct NewEnrolment {
    pub patient_id: String,
    pub pathway_id: String,
    /// The pathway version, or the latest loaded.
    pub version: Option<u32>,
    pub entry: String,
    /// When the enrolment starts.
    pub at: Timestamp,
    /// For an enrolment dated in the past: the instant its first step catches up to, walking
    /// every check instant since `at` with the patient's facts as of each. `None` steps to `at`.
    pub catch_up_to: Option<Timestamp>,
}

/// Enrols patients in a few multi-row statements (by COPY for a large batch on PostgreSQL): the
/// enrolments, their goals, the `enrolled` record and the first step's outcome (entry actions) of
/// each. Returns the new ids in order. A patient may appear once per pathway in one call.
pub async fn enrol_many(
    tx: &mut Tx,
    programs: &Programs,
    new: &[NewEnrolment],
) -> Result<(Vec<i64>, Written)> {
    let transfer = Transfer::for_batch(tx, new.len());
    enrol_many_by(tx, programs, new, transfer).await
}

/// [`enrol_many`], sending the rows as `transfer` says. With statements, each enrolment is
/// inserted, stepped, and updated to its new state as a scheduler pass updates it; by COPY (on
/// PostgreSQL), its id is drawn from the same sequence first and it is copied in its new state,
/// which is the row the statements leave.
pub async fn enrol_many_by(
    tx: &mut Tx,
    programs: &Programs,
    new: &[NewEnrolment],
    transfer: Transfer,
) -> Result<(Vec<i64>, Written)> {
    let copy = transfer == Transfer::Copy && tx.is_postgres();
    let mut progs = Vec::with_capacity(new.len());
    let mut seen = HashSet::new();
    for n in new {
        let prog = match n.version {
            Some(v) => programs.get(&n.pathway_id, v).cloned(),
            None => programs
                .latest()
                .into_iter()
                .find(|p| p.pathway.id == n.pathway_id),
        }
        .ok_or_else(|| StoreError::NotFound(format!("pathway {}", n.pathway_id)))?;
        if prog.pathway.entry_point(&n.entry).is_none() {
            let names: Vec<&str> = prog
                .pathway
                .entry_points
                .iter()
                .map(|e| e.id.as_str())
                .collect();
            return Err(StoreError::Invalid(format!(
                "pathway {} has no entry point `{}`; entry points: {}",
                n.pathway_id,
                n.entry,
                names.join(", ")
            )));
        }
        if !seen.insert((n.patient_id.as_str(), n.pathway_id.as_str())) {
            return Err(StoreError::Invalid(format!(
                "patient {} is enrolled in {} twice in one call",
                n.patient_id, n.pathway_id
            )));
        }
        progs.push(prog);
    }
    // The patients, one query per chunk.
    let mut patients: HashMap<String, Row> = HashMap::new();
    let unique: Vec<&str> = new
        .iter()
        .map(|n| n.patient_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    for part in unique.chunks(writer::MAX_PARAMS) {
        let rows = tx
            .fetch(
                &format!(
                    "SELECT id, institution_id, tz, birth_date, sex, home_institution FROM patients WHERE id IN ({})",
                    db::placeholders(1, part.len())
                ),
                part.iter().map(|p| Arg::T(p.to_string())).collect(),
            )
            .await?;
        for r in rows {
            patients.insert(r.text(0), r);
        }
    }
    for n in new {
        if !patients.contains_key(&n.patient_id) {
            return Err(StoreError::NotFound(format!("patient {}", n.patient_id)));
        }
    }
    let ids = if copy {
        enrolment_ids(tx, new.len()).await?
    } else {
        insert_enrolments(tx, new, &progs, &patients).await?
    };
    let goals: Vec<(i64, &carepath_dsl::Goal, Timestamp)> = ids
        .iter()
        .zip(new.iter().zip(&progs))
        .flat_map(|(id, (n, prog))| prog.pathway.goals.iter().map(move |g| (*id, g, n.at)))
        .collect();
    if !copy {
        goals::create_for_enrolments(tx, &goals, Transfer::Statements).await?;
    }
    // Enrolments dated in the past catch up with the facts recorded since they began.
    let births: Vec<(Option<String>, String)> = new
        .iter()
        .map(|n| {
            let p = &patients[&n.patient_id];
            (p.opt_text(3), p.text(4))
        })
        .collect();
    let catching_up: Vec<FactsOf<'_>> = ids
        .iter()
        .zip(new)
        .zip(&births)
        .filter(|((_, n), _)| n.catch_up_to.is_some_and(|until| until > n.at))
        .map(|((id, n), (birth, sex))| FactsOf {
            enrolment: *id,
            patient: &n.patient_id,
            birth_date: birth.as_deref(),
            sex,
        })
        .collect();
    let latest = new
        .iter()
        .filter_map(|n| n.catch_up_to)
        .max()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let mut past_facts = load_facts_of(tx, &catching_up, latest, true).await?;
    let mut outcomes = Vec::with_capacity(new.len());
    let mut buf = RowBuffer::default();
    let institutions: Vec<String> = patients.values().map(|p| p.text(1)).collect();
    let cals = calendars::for_institutions(tx, institutions.iter().map(String::as_str)).await?;
    for ((id, n), prog) in ids.iter().zip(new).zip(&progs) {
        let patient = &patients[&n.patient_id];
        let (facts, pending) = past_facts.remove(id).unwrap_or_else(|| {
            let facts = PatientFacts {
                birth_date: patient.opt_text(3).and_then(|b| b.parse().ok()),
                sex: patient.text(4),
                ..Default::default()
            };
            (facts, Vec::new())
        });
        let until = n.catch_up_to.unwrap_or(n.at).max(n.at);
        let outcome = time::with_calendar(cals.of(&patient.text(1)), || {
            step::enrol_at(
                prog,
                *id,
                &n.entry,
                &patient.text(2),
                &facts,
                &pending,
                n.at,
                until,
            )
        })?;
        let d = DueEnrolment {
            enrolment: outcome.enrolment.clone(),
            patient_id: n.patient_id.clone(),
            institution_id: patient.text(1),
            row_version: 0,
            birth_date: patient.opt_text(3),
            sex: patient.text(4),
            home_institution: patient.opt_text(5),
        };
        buf.record(
            Some(format!("e{id}:enrolled")),
            &n.patient_id,
            *id,
            n.at.as_second(),
            "enrolled",
            json!({"pathway": n.pathway_id, "version": prog.pathway.version, "entry": n.entry})
                .to_string(),
        );
        outcomes.push((d, outcome));
    }
    let mut written = Written::default();
    let refs: Vec<(&DueEnrolment, &Outcome, Timestamp)> = outcomes
        .iter()
        .zip(new)
        .map(|((d, o), n)| (d, o, n.catch_up_to.unwrap_or(n.at).max(n.at)))
        .collect();
    let applied = if copy {
        // Nothing is stored under the new ids yet, so the stored work a first step ends is none:
        // what it ends of its own work is born ended in `buf`.
        let all: HashSet<i64> = ids.iter().copied().collect();
        let applied = buffer_outcomes(&mut buf, &refs, &all, None, &mut Vec::new());
        copy_enrolments(tx, new, &progs, &patients, &refs).await?;
        goals::create_for_enrolments(tx, &goals, Transfer::Copy).await?;
        applied
    } else {
        apply_outcomes_at(tx, &mut buf, &refs).await?
    };
    for w in applied {
        let w =
            w.ok_or_else(|| StoreError::Conflict("enrolment changed while enrolling".into()))?;
        written.add(&w);
    }
    written.add(&buf.flush_by(tx, transfer).await?);
    Ok((ids, written))
}

/// Inserts the enrolments of `new` in their first state; returns their ids in order.
async fn insert_enrolments(
    tx: &mut Tx,
    new: &[NewEnrolment],
    progs: &[std::sync::Arc<step::Program>],
    patients: &HashMap<String, Row>,
) -> Result<Vec<i64>> {
    // The enrolments, matched back to their requests by (patient, pathway).
    let mut ids: HashMap<(String, String), i64> = HashMap::new();
    const PER_ROW: usize = 6;
    for (part, part_progs) in new
        .chunks(writer::MAX_PARAMS / PER_ROW)
        .zip(progs.chunks(writer::MAX_PARAMS / PER_ROW))
    {
        let a: Vec<Arg> = part
            .iter()
            .zip(part_progs)
            .flat_map(|(n, prog)| {
                args![
                    &n.patient_id,
                    patients[&n.patient_id].text(1),
                    &n.pathway_id,
                    i64::from(prog.pathway.version),
                    &n.entry,
                    n.at.as_second()
                ]
            })
            .collect();
        let rows = tx
            .fetch(
                &format!(
                    "INSERT INTO enrolments (patient_id, institution_id, pathway_id, version, entry_point, state, state_seq, entered_at, vars, status, next_wake_at, enrolled_at) \
                     SELECT v.column1, v.column2, v.column3, v.column4, v.column5, '', 0, v.column6, '{{}}', 'active', NULL, v.column6 FROM (VALUES {}) AS v \
                     RETURNING id, patient_id, pathway_id",
                    values_list(part.len(), PER_ROW)
                ),
                a,
            )
            .await?;
        for r in rows {
            ids.insert((r.text(1), r.text(2)), r.i64(0));
        }
    }
    new.iter()
        .map(|n| {
            ids.get(&(n.patient_id.clone(), n.pathway_id.clone()))
                .copied()
                .ok_or_else(|| StoreError::Invalid("insert returned no id".into()))
        })
        .collect()
}

/// `n` new enrolment ids from the sequence that numbers inserted enrolments, in the order an
/// insert of `n` rows would take them.
async fn enrolment_ids(tx: &mut Tx, n: usize) -> Result<Vec<i64>> {
    let mut ids: Vec<i64> = tx
        .fetch(
            "SELECT nextval(pg_get_serial_sequence('enrolments', 'id')) FROM generate_series(1, $1)",
            args![n as i64],
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Copies the enrolments of `new` (ids drawn by [`enrolment_ids`]) in the state their first
/// step left them: the rows [`insert_enrolments`] and [`update_enrolments`] leave together.
async fn copy_enrolments(
    tx: &mut Tx,
    new: &[NewEnrolment],
    progs: &[std::sync::Arc<step::Program>],
    patients: &HashMap<String, Row>,
    stepped: &[(&DueEnrolment, &Outcome, Timestamp)],
) -> Result<()> {
    let rows: Vec<Vec<Arg>> = new
        .iter()
        .zip(progs)
        .zip(stepped)
        .map(|((n, prog), (d, outcome, now))| {
            let [
                id,
                _read_version,
                state,
                seq,
                entered,
                vars,
                last_event,
                status,
                wake,
                ended,
                checked,
            ] = stepped_enrolment(d, outcome, *now);
            vec![
                id,
                Arg::T(n.patient_id.clone()),
                Arg::T(patients[&n.patient_id].text(1)),
                Arg::T(n.pathway_id.clone()),
                Arg::I(i64::from(prog.pathway.version)),
                Arg::T(n.entry.clone()),
                state,
                seq,
                entered,
                vars,
                last_event,
                status,
                wake,
                Arg::I(d.row_version + 1),
                Arg::I(n.at.as_second()),
                ended,
                checked,
            ]
        })
        .collect();
    copy::copy_into(
        tx,
        "enrolments",
        "id, patient_id, institution_id, pathway_id, version, entry_point, state, state_seq, entered_at, vars, \
         last_event_seq, status, next_wake_at, row_version, enrolled_at, ended_at, checked_at",
        &rows,
    )
    .await?;
    Ok(())
}

/// An event to add with [`add_events`].
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub enrolment: i64,
    pub name: String,
    pub at: Timestamp,
    pub payload: Option<String>,
    /// Where the event came from; an event whose key is already stored is not added again.
    pub source_key: Option<String>,
    /// When it was received; the enrolment wakes at the earlier of this and `at`.
    pub created_at: Timestamp,
}

/// Adds events in a few multi-row statements and wakes each enrolment that got one, as
/// [`add_event`] does for one; returns how many were new.
pub async fn add_events(tx: &mut Tx, events: &[NewEvent]) -> Result<u64> {
    const PER_ROW: usize = 6;
    let mut added = 0;
    let mut wakes: BTreeMap<i64, i64> = BTreeMap::new();
    for part in events.chunks(writer::MAX_PARAMS / PER_ROW) {
        let a: Vec<Arg> = part
            .iter()
            .flat_map(|e| {
                args![
                    e.enrolment,
                    &e.name,
                    e.at.as_second(),
                    e.payload.clone(),
                    e.source_key.clone(),
                    e.created_at.as_second()
                ]
            })
            .collect();
        let sql = format!(
            "INSERT INTO events (enrolment_id, name, at, payload, source_key, created_at) VALUES {} \
             ON CONFLICT (source_key) DO NOTHING RETURNING enrolment_id, at, created_at",
            values_list(part.len(), PER_ROW)
        );
        for r in tx.fetch(&sql, a).await? {
            added += 1;
            let wake = r.i64(1).min(r.i64(2));
            wakes
                .entry(r.i64(0))
                .and_modify(|w| *w = (*w).min(wake))
                .or_insert(wake);
        }
    }
    let wakes: Vec<(i64, i64)> = wakes.into_iter().collect();
    for part in wakes.chunks(writer::MAX_PARAMS / 2) {
        let a: Vec<Arg> = part.iter().flat_map(|(e, w)| args![*e, *w]).collect();
        tx.exec(
            &format!(
                "UPDATE enrolments SET next_wake_at = CASE WHEN enrolments.next_wake_at IS NULL OR enrolments.next_wake_at > v.column2 \
                 THEN v.column2 ELSE enrolments.next_wake_at END FROM (VALUES {}) AS v \
                 WHERE enrolments.id = v.column1 AND enrolments.status = 'active'",
                values_list(part.len(), 2)
            ),
            a,
        )
        .await?;
    }
    Ok(added)
}

/// Records an event for an enrolment and makes it due at once. `source_key` makes a retried
/// delivery of the same event a no-op.
pub async fn add_event(
    tx: &mut Tx,
    enrolment: i64,
    name: &str,
    at: Timestamp,
    payload: Option<String>,
    source_key: Option<String>,
    now: Timestamp,
) -> Result<bool> {
    let event = NewEvent {
        enrolment,
        name: name.to_string(),
        at,
        payload,
        source_key,
        created_at: now,
    };
    Ok(add_events(tx, std::slice::from_ref(&event)).await? > 0)
}

/// Withdraws an enrolment (see [`withdraw_tx`]), in its own transaction.
pub async fn withdraw(
    pool: &Pool,
    programs: &Programs,
    enrolment: i64,
    reason: &str,
    now: Timestamp,
) -> Result<Withdrawal> {
    let mut tx = pool.begin().await?;
    let done = withdraw_tx(&mut tx, programs, enrolment, reason, None, now).await?;
    tx.commit().await?;
    Ok(done)
}

/// What a withdrawal did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Withdrawal {
    pub patient_id: String,
    /// The state the enrolment ended in: the closing state when its pathway routed the
    /// withdrawal (`on: withdrawn`), else the state it was in.
    pub state: String,
    /// Whether the pathway routed the withdrawal to a closing state.
    pub routed: bool,
    pub written: Written,
}

/// Withdraws inside the caller's transaction. Every way of withdrawing goes through here.
///
/// The withdrawal is the built-in event `withdrawn`, recorded (once: its source key is the
/// enrolment's) and stepped at once in this transaction: the enrolment first catches up to `now`,
/// then its current state may route the event (`on: withdrawn`) to a closing state whose actions
/// are its closing work; routed or not, the enrolment ends as withdrawn and its open work ends as
/// the outcome policy says for a withdrawal. An enrolment that cannot be stepped (in error, its
/// pathway failing, or not loaded) is withdrawn where it stands. An enrolment that the catch-up
/// completes before the withdrawal's instant is not withdrawn (`Conflict`; nothing is written).
pub async fn withdraw_tx(
    tx: &mut Tx,
    programs: &Programs,
    enrolment: i64,
    reason: &str,
    by: Option<&str>,
    now: Timestamp,
) -> Result<Withdrawal> {
    let d = load_enrolment(tx, enrolment).await?;
    if d.enrolment.status != Status::Active && d.enrolment.status != Status::Error {
        return Err(StoreError::Conflict(format!(
            "enrolment {enrolment} is already {}",
            d.enrolment.status.as_str()
        )));
    }
    add_event(
        tx,
        enrolment,
        carepath_dsl::catalog::WITHDRAWN,
        now,
        Some(json!({"reason": reason, "by": by}).to_string()),
        Some(format!("withdrawn:{enrolment}")),
        now,
    )
    .await?;
    let mut facts = load_facts(tx, std::slice::from_ref(&d), now).await?;
    let (f, pending) = facts.remove(&d.enrolment.id).unwrap_or_default();
    let cals = calendars::for_institutions(tx, [d.institution_id.as_str()]).await?;
    // A clock behind the instant the enrolment has reached: the withdrawal takes effect there,
    // as any event recorded late does.
    let at = now.max(d.enrolment.checked_at);
    let stepped = match programs.get(&d.enrolment.pathway_id, d.enrolment.version) {
        Some(prog) if d.enrolment.status == Status::Active => {
            Some(time::with_calendar(cals.of(&d.institution_id), || {
                step::step(prog, &d.enrolment, &f, &pending, at)
            }))
        }
        _ => None,
    };
    let unrouted = || step::withdraw_unrouted(&d.enrolment, &pending, at);
    let (outcome, failure) = match stepped {
        Some(Ok(o)) if o.enrolment.status == Status::Withdrawn => (o, None),
        Some(Ok(o)) if o.enrolment.status == Status::Completed => {
            return Err(StoreError::Conflict(format!(
                "enrolment {enrolment} completed in `{}` at {}, before the withdrawal",
                o.enrolment.state,
                o.ended.map_or(now, |e| e.at)
            )));
        }
        Some(Ok(o)) => (
            unrouted(),
            Some(format!(
                "the step left the enrolment {} in `{}`",
                o.enrolment.status.as_str(),
                o.enrolment.state
            )),
        ),
        Some(Err(e)) => (unrouted(), Some(e.to_string())),
        None => (unrouted(), None),
    };
    let routed = outcome.ended.is_some_and(|e| e.closing);
    let mut buf = RowBuffer::default();
    let mut written = apply_outcomes_with(tx, &mut buf, &[(&d, &outcome, now)], Some(reason))
        .await?
        .pop()
        .flatten()
        .ok_or_else(|| StoreError::Conflict(format!("enrolment {enrolment} changed meanwhile")))?;
    written.add(&buf.flush(tx).await?);
    tx.exec(
        "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'withdrawn', $5)",
        args![
            format!("e{enrolment}:withdrawn"),
            &d.patient_id,
            enrolment,
            now.as_second(),
            json!({"reason": reason, "by": by, "state": outcome.enrolment.state, "routed": routed, "step_error": failure}).to_string()
        ],
    )
    .await?;
    Ok(Withdrawal {
        patient_id: d.patient_id,
        state: outcome.enrolment.state,
        routed,
        written,
    })
}

/// Completes a task with an outcome; the outcome becomes the pathway event `task_done:<task id>`.
pub async fn complete_task(
    pool: &Pool,
    task_id: i64,
    outcome: &str,
    actor: &str,
    now: Timestamp,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    let row = tx
        .fetch_one(
            "SELECT enrolment_id, task_ref, status, patient_id FROM tasks WHERE id = $1",
            args![task_id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("task {task_id}")))?;
    let status = row.text(2);
    if status != "open" && status != "claimed" {
        return Err(StoreError::Conflict(format!(
            "task {task_id} is {status}; only open or claimed tasks can be completed"
        )));
    }
    tx.exec(
        "UPDATE tasks SET status = 'done', outcome = $1, completed_at = $2, assignee = COALESCE(assignee, $3) WHERE id = $4",
        args![outcome, now.as_second(), actor, task_id],
    )
    .await?;
    if let Some(task_ref) = row.opt_text(1) {
        add_event(
            &mut tx,
            row.i64(0),
            &format!("task_done:{task_ref}"),
            now,
            Some(json!({"outcome": outcome}).to_string()),
            Some(format!("task:{task_id}:done")),
            now,
        )
        .await?;
    }
    tx.exec(
        "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, 'task_done', $4)",
        args![row.text(3), row.i64(0), now.as_second(), json!({"task": task_id, "outcome": outcome, "by": actor}).to_string()],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Moves active enrolments of a pathway to another version with an explicit state map. The map is
/// checked against both versions before anything moves; the move is recorded per enrolment.
pub async fn migrate_enrolments(
    pool: &Pool,
    programs: &Programs,
    pathway: &str,
    from: u32,
    to: u32,
    state_map: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<u64> {
    let old = programs
        .get(pathway, from)
        .ok_or_else(|| StoreError::NotFound(format!("pathway {pathway} v{from}")))?;
    let new = programs
        .get(pathway, to)
        .ok_or_else(|| StoreError::NotFound(format!("pathway {pathway} v{to}")))?;
    let mut problems = Vec::new();
    for s in &old.pathway.states {
        if s.terminal {
            continue;
        }
        match state_map.get(&s.id) {
            None if new.pathway.state(&s.id).is_none() => problems.push(format!(
                "state `{}` of v{from} is not in v{to} and is not mapped",
                s.id
            )),
            Some(target) if new.pathway.state(target).is_none() => problems.push(format!(
                "`{}` maps to `{target}`, which is not a state of v{to}",
                s.id
            )),
            _ => {}
        }
    }
    for k in state_map.keys() {
        if old.pathway.state(k).is_none() {
            problems.push(format!("`{k}` is not a state of v{from}"));
        }
    }
    if !problems.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the state map is not valid:\n  {}",
            problems.join("\n  ")
        )));
    }
    let mut tx = pool.begin().await?;
    let rows = tx
        .fetch("SELECT id, state, patient_id FROM enrolments WHERE pathway_id = $1 AND version = $2 AND status = 'active'", args![pathway, i64::from(from)])
        .await?;
    let mut moved = 0;
    for r in rows {
        let state = r.text(1);
        let target = state_map.get(&state).cloned().unwrap_or(state.clone());
        tx.exec(
            "UPDATE enrolments SET version = $1, state = $2, next_wake_at = $3, row_version = row_version + 1 WHERE id = $4",
            args![i64::from(to), &target, now.as_second(), r.i64(0)],
        )
        .await?;
        tx.exec(
            "INSERT INTO record (patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, 'migrated', $4)",
            args![r.text(2), r.i64(0), now.as_second(), json!({"from_version": from, "to_version": to, "from_state": state, "to_state": target}).to_string()],
        )
        .await?;
        moved += 1;
    }
    tx.commit().await?;
    Ok(moved)
}

/// What ingesting a batch of readings did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct IngestSummary {
    pub accepted: u64,
    pub duplicates: u64,
    /// (index in the batch, reason)
    pub refused: Vec<(usize, String)>,
    /// Alarm episodes the readings opened, with their urgent tasks, and those they cleared.
    pub alarms: alarms::AlarmChanges,
    /// Enrolments that received an event and should be advanced now.
    pub enrolments_to_advance: Vec<i64>,
    /// Care-plan goals of these patients evaluated with the new readings.
    pub goals: goals::GoalSweep,
}

/// How far ahead of the server's clock a device's reading may be dated.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 300;

/// Stores readings (refusing implausible ones, or dated in the future, dropping duplicates by reading id) and judges
/// the alarm rules of the patients concerned, all in one transaction.
pub async fn ingest_readings(
    pool: &Pool,
    readings: &[crate::observations::Reading],
    visible: &std::collections::HashSet<String>,
    now: Timestamp,
) -> Result<IngestSummary> {
    let mut tx = pool.begin().await?;
    let out = ingest_readings_tx(&mut tx, readings, visible, now).await?;
    tx.commit().await?;
    Ok(out)
}

/// [`ingest_readings`] inside the caller's transaction. Alarm rules judge the readings that were
/// new (a repeated reading id is not judged twice), each reading id's values together.
pub async fn ingest_readings_tx(
    tx: &mut Tx,
    readings: &[crate::observations::Reading],
    visible: &std::collections::HashSet<String>,
    now: Timestamp,
) -> Result<IngestSummary> {
    use crate::observations::{GroupedReading, normalise};
    let mut out = IngestSummary::default();
    // The new readings of each patient, by reading id.
    let mut new: BTreeMap<String, BTreeMap<String, GroupedReading>> = BTreeMap::new();
    for (i, r) in readings.iter().enumerate() {
        if !visible.contains(&r.patient_id) {
            out.refused
                .push((i, format!("patient {} not found", r.patient_id)));
            continue;
        }
        let value = match normalise(&r.kind, r.value, r.unit.as_deref()) {
            Ok(v) => v,
            Err(e) => {
                out.refused.push((i, e));
                continue;
            }
        };
        // A device clock a little ahead is tolerated; a reading from the future is not one.
        if r.at.as_second() > now.as_second() + MAX_CLOCK_SKEW_SECONDS {
            out.refused
                .push((i, format!("the reading is dated {}, in the future", r.at)));
            continue;
        }
        if r.reading_id.trim().is_empty() || r.reading_id.len() > 128 {
            out.refused
                .push((i, "reading_id must be 1 to 128 characters".into()));
            continue;
        }
        let exists = tx
            .fetch_one("SELECT 1 FROM patients WHERE id = $1", args![&r.patient_id])
            .await?;
        if exists.is_none() {
            out.refused
                .push((i, format!("patient {} not found", r.patient_id)));
            continue;
        }
        let n = tx
            .exec(
                "INSERT INTO observations (patient_id, kind, value, at, reading_id, source, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (patient_id, reading_id, kind) DO NOTHING",
                args![&r.patient_id, &r.kind, value, r.at.as_second(), &r.reading_id, &r.source, now.as_second()],
            )
            .await?;
        if n == 0 {
            out.duplicates += 1;
        } else {
            out.accepted += 1;
            let g = new
                .entry(r.patient_id.clone())
                .or_default()
                .entry(r.reading_id.clone())
                .or_default();
            g.at = g.at.max(r.at.as_second());
            g.set(&r.kind, value);
        }
    }
    let mut rules = carepath_core::alarms::RuleCache::default();
    for (patient, by_id) in &new {
        // Guards that read observations react now, not at the next nightly pass.
        let enrolments = tx
            .fetch(
                "SELECT id FROM enrolments WHERE patient_id = $1 AND status = 'active'",
                args![patient],
            )
            .await?;
        for e in enrolments {
            tx.exec("UPDATE enrolments SET next_wake_at = $1 WHERE id = $2 AND (next_wake_at IS NULL OR next_wake_at > $1)", args![now.as_second(), e.i64(0)]).await?;
            if !out.enrolments_to_advance.contains(&e.i64(0)) {
                out.enrolments_to_advance.push(e.i64(0));
            }
        }
        let mut grouped: Vec<GroupedReading> = by_id.values().cloned().collect();
        alarms::judge_readings(tx, &mut rules, patient, &mut grouped, now, &mut out.alarms).await?;
    }
    for e in &out.alarms.enrolments {
        if !out.enrolments_to_advance.contains(e) {
            out.enrolments_to_advance.push(*e);
        }
    }
    // Care-plan goals read the same readings: their status follows at once.
    let patients: Vec<String> = new.into_keys().collect();
    out.goals = goals::evaluate_for_patients(tx, &patients, now).await?;
    Ok(out)
}

#[cfg(test)]
mod vars_tests {
    use super::*;

    #[test]
    fn unknown_numbers_survive_a_round_trip() {
        let vars = BTreeMap::from([
            ("a".to_string(), VarValue::Number(f64::NAN)),
            ("b".to_string(), VarValue::Integer(3)),
            ("c".to_string(), VarValue::Bool(true)),
        ]);
        let back = vars_from_json(&serde_json::to_string(&vars).unwrap());
        assert!(matches!(back["a"], VarValue::Number(n) if n.is_nan()));
        assert_eq!(back["b"], VarValue::Integer(3));
        assert_eq!(back["c"], VarValue::Bool(true));
    }
}
