//! Bulk onboarding: patients and their enrolments from NDJSON, one patient a line.
//!
//! Every line is checked, alone and against the file and the database (its JSON, the patient's
//! fields by the same rules as the API, the institution, the pathway and entry point, a patient id
//! given twice); the lines that pass are written in batches as they are read, each batch one
//! transaction holding its patients, their enrolments with their first steps, and one audit entry.
//! A line is written whole or not at all: its patient with its enrolments. Run again after a
//! crash, lines whose patient already exists are reported as such and written nothing, so a
//! rerun finishes the import without doubling anything.
//!
//! ```json
//! {"patient": {"id": "P-1", "birth_date": "1950-05-01", "sex": "female", "tz": "Asia/Shanghai",
//!   "preferred_channel": "sms", "lang": "zh", "home_institution": "clinic_a",
//!   "contact": {"phone": "+8613800138000"}},
//!  "institution": "lead",
//!  "enrol": [{"pathway": "hypertension", "entry": "community", "at": "2026-03-01T09:00:00+08:00"}]}
//! ```

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::patients::{PatientUpsert, check_home_of, check_upsert};
use super::queries::AuditEntry;
use super::{NewEnrolment, NewPatient, Pool, Result, enrol_many, insert_patients};
use crate::crypto::{Contact, ContactKey};
use crate::program::Programs;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    patient: PatientLine,
    institution: String,
    #[serde(default)]
    enrol: Vec<EnrolLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientLine {
    id: String,
    birth_date: Option<String>,
    sex: Option<String>,
    tz: Option<String>,
    preferred_channel: Option<String>,
    lang: Option<String>,
    home_institution: Option<String>,
    contact: Option<Contact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolLine {
    pathway: String,
    entry: String,
    version: Option<u32>,
    at: Option<String>,
}

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Imported {
    pub lines: usize,
    pub patients: u64,
    pub enrolments: u64,
    /// Actions the enrolments' first steps wrote.
    pub actions: u64,
    /// Lines whose patient was already there (an earlier, interrupted import of the same file).
    pub already_present: usize,
    pub rejected: Vec<Rejected>,
    pub batches: u64,
    pub seconds: f64,
}

/// A checked line, ready to write.
struct Ready {
    patient: NewPatient,
    enrolments: Vec<NewEnrolment>,
}

/// Imports `text` (NDJSON). `key` encrypts contact details (a line with contact details and no
/// key is rejected); enrolments without `at` start at `now`; one dated in the past catches up to
/// `now`. Audited as `patient.import`, one entry per batch naming its patients, by `actor`.
///
/// Lines are checked as they are read, `batch` good lines at a time, and each such batch is
/// written while the next is checked: on PostgreSQL as many batches are written at once as there
/// are processors (up to 4), each in its own transaction, so that one batch's steps are computed
/// while another's rows are stored; SQLite has one writer.
pub async fn import(
    pool: &Pool,
    programs: &Programs,
    key: Option<&ContactKey>,
    text: &str,
    actor: &str,
    batch: usize,
    now: Timestamp,
) -> Result<Imported> {
    let started = std::time::Instant::now();
    let mut out = Imported::default();
    let institutions: BTreeMap<String, (String, String)> = pool
        .fetch(
            "SELECT id, kind, COALESCE(parent_id, id) FROM institutions",
            vec![],
        )
        .await?
        .iter()
        .map(|r| (r.text(0), (r.text(1), r.text(2))))
        .collect();
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let writers = if pool.is_postgres() {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    let shared = std::sync::Arc::new((pool.clone(), programs.clone(), actor.to_string()));
    let mut writing: tokio::task::JoinSet<Result<BatchWritten>> = tokio::task::JoinSet::new();
    let mut failed: Option<super::StoreError> = None;
    let mut seen: HashSet<String> = HashSet::new();
    let mut ready: Vec<Ready> = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while failed.is_none() && lines.peek().is_some() {
        for (i, raw) in lines.by_ref() {
            let n = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            out.lines += 1;
            let reject = |reason: String| Rejected { line: n, reason };
            match check_line(raw, programs, key, &institutions, today, now) {
                Err(reason) => out.rejected.push(reject(reason)),
                Ok(r) if !seen.insert(r.patient.id.clone()) => out.rejected.push(reject(format!(
                    "patient {} is given on an earlier line",
                    r.patient.id
                ))),
                Ok(r) => ready.push(r),
            }
            if ready.len() >= batch.max(1) {
                break;
            }
        }
        // Patients already in the database: an earlier import of these lines.
        let mut present: HashSet<String> = HashSet::new();
        for chunk in ready.chunks(500) {
            let ids: Vec<super::Arg> = chunk
                .iter()
                .map(|r| super::Arg::T(r.patient.id.clone()))
                .collect();
            let sql = format!(
                "SELECT id FROM patients WHERE id IN ({})",
                super::db::placeholders(1, ids.len())
            );
            present.extend(pool.fetch(&sql, ids).await?.iter().map(|r| r.text(0)));
        }
        out.already_present += present.len();
        ready.retain(|r| !present.contains(&r.patient.id));
        if ready.is_empty() {
            continue;
        }
        while writing.len() >= writers {
            settle(writing.join_next().await, &mut out, &mut failed);
        }
        let chunk = std::mem::take(&mut ready);
        let shared = shared.clone();
        writing.spawn(async move {
            let (pool, programs, actor) = &*shared;
            write_batch(pool, programs, chunk, actor, now).await
        });
    }
    while let Some(done) = writing.join_next().await {
        settle(Some(done), &mut out, &mut failed);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Counts a written batch into `out`, or keeps the first failure.
fn settle(
    done: Option<std::result::Result<Result<BatchWritten>, tokio::task::JoinError>>,
    out: &mut Imported,
    failed: &mut Option<super::StoreError>,
) {
    match done {
        Some(Ok(Ok(w))) => {
            out.patients += w.patients;
            out.enrolments += w.enrolments;
            out.actions += w.actions;
            out.batches += 1;
        }
        Some(Ok(Err(e))) => {
            failed.get_or_insert(e);
        }
        Some(Err(e)) => {
            failed.get_or_insert(super::StoreError::Invalid(format!(
                "a batch of the import stopped: {e}"
            )));
        }
        None => {}
    }
}

/// What one batch wrote.
struct BatchWritten {
    patients: u64,
    enrolments: u64,
    actions: u64,
}

/// Writes one batch in one transaction: its patients, their enrolments with their first steps,
/// and one audit entry naming the patients.
async fn write_batch(
    pool: &Pool,
    programs: &Programs,
    chunk: Vec<Ready>,
    actor: &str,
    now: Timestamp,
) -> Result<BatchWritten> {
    let mut tx = pool.begin().await?;
    let (patients, enrolments): (Vec<NewPatient>, Vec<Vec<NewEnrolment>>) =
        chunk.into_iter().map(|r| (r.patient, r.enrolments)).unzip();
    insert_patients(&mut tx, &patients, now).await?;
    let enrolments: Vec<NewEnrolment> = enrolments.into_iter().flatten().collect();
    let (ids, written) = enrol_many(&mut tx, programs, &enrolments).await?;
    let names: Vec<String> = patients.iter().map(|p| p.id.clone()).collect();
    super::queries::audit(
        &mut tx,
        &AuditEntry::new(
            actor,
            None,
            "patient.import",
            "import",
            &names,
            "ok",
            "cli",
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(BatchWritten {
        patients: patients.len() as u64,
        enrolments: ids.len() as u64,
        actions: written.by_kind.values().sum::<u64>(),
    })
}

fn check_line(
    raw: &str,
    programs: &Programs,
    key: Option<&ContactKey>,
    institutions: &BTreeMap<String, (String, String)>,
    today: jiff::civil::Date,
    now: Timestamp,
) -> std::result::Result<Ready, String> {
    let line: Line = serde_json::from_str(raw).map_err(|e| format!("not a valid line: {e}"))?;
    let p = line.patient;
    let upsert = PatientUpsert {
        id: p.id,
        birth_date: p.birth_date,
        sex: p.sex,
        tz: p.tz,
        contact: p.contact,
        preferred_channel: p.preferred_channel,
        lang: p.lang,
        home_institution: p.home_institution,
    };
    check_upsert(&upsert, today).map_err(|e| e.to_string())?;
    let Some((_, lead)) = institutions.get(&line.institution) else {
        return Err(format!("institution `{}` does not exist", line.institution));
    };
    if let Some(home) = &upsert.home_institution {
        check_home_of(
            institutions
                .get(home)
                .map(|(k, l)| (k.as_str(), l.as_str())),
            home,
            lead,
        )
        .map_err(|e| e.to_string())?;
    }
    let contact_enc = match (&upsert.contact, key) {
        (None, _) => None,
        (Some(_), None) => {
            return Err("contact details given but no contact key (CAREPATH_CONTACT_KEY) to encrypt them with".into());
        }
        (Some(c), Some(k)) => {
            let mut c = c.clone();
            if c.lang.is_none() {
                c.lang = upsert.lang.clone();
            }
            Some(k.encrypt(&c).map_err(|e| e.to_string())?)
        }
    };
    let mut enrolments = Vec::new();
    let mut pathways = HashSet::new();
    for (j, e) in line.enrol.iter().enumerate() {
        let at = match &e.at {
            None => now,
            Some(t) => t
                .parse::<Timestamp>()
                .map_err(|_| format!("enrol[{j}].at `{t}` is not an RFC 3339 time"))?,
        };
        if at > now {
            return Err(format!("enrol[{j}].at {at} is in the future"));
        }
        let prog = match e.version {
            Some(v) => programs.get(&e.pathway, v).cloned(),
            None => programs
                .latest()
                .into_iter()
                .find(|p| p.pathway.id == e.pathway),
        }
        .ok_or_else(|| format!("enrol[{j}]: pathway `{}` is not published", e.pathway))?;
        if prog.pathway.entry_point(&e.entry).is_none() {
            let entries: Vec<&str> = prog
                .pathway
                .entry_points
                .iter()
                .map(|x| x.id.as_str())
                .collect();
            return Err(format!(
                "enrol[{j}]: `{}` is not an entry point of {} (its entry points: {})",
                e.entry,
                e.pathway,
                entries.join(", ")
            ));
        }
        if !pathways.insert(e.pathway.clone()) {
            return Err(format!("enrol[{j}]: {} is given twice", e.pathway));
        }
        enrolments.push(NewEnrolment {
            patient_id: upsert.id.clone(),
            pathway_id: e.pathway.clone(),
            version: Some(prog.pathway.version),
            entry: e.entry.clone(),
            at,
            catch_up_to: (at < now).then_some(now),
        });
    }
    Ok(Ready {
        patient: NewPatient {
            id: upsert.id.clone(),
            institution_id: line.institution,
            birth_date: upsert.birth_date,
            sex: upsert.sex.unwrap_or_else(|| "unknown".into()),
            tz: upsert.tz.unwrap_or_else(|| "Asia/Shanghai".into()),
            contact_enc,
            preferred_channel: upsert.preferred_channel,
            home_institution: upsert.home_institution,
            lang: upsert.lang,
        },
        enrolments,
    })
}
