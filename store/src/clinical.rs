//! What the hospital knows about a patient, as its systems send it: encounters (admissions,
//! discharges, outpatient and emergency visits) and ICD-10 diagnoses, with the bookkeeping that
//! makes a resend harmless (HL7 message control ids, FHIR identifiers).
//!
//! Every function takes the caller's transaction, so an HL7 message or a FHIR transaction Bundle
//! writes all of what it says or nothing, with its audit entries. An encounter is keyed by the
//! identifier its institution gives it: a second message about the same visit updates the row,
//! and the events it raises (`admitted`, `discharged`) carry a source key made from the row and
//! the time, so they are added once however often the message comes.

use jiff::Timestamp;
use serde::Serialize;

use super::queries::{Caller, visible_patient};
use super::{NewEvent, Result, StoreError, Tx, add_events, ts};
use crate::args;
pub use carepath_core::facts::EncounterClass;

/// A diagnosis as a hospital system sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosisIn {
    /// ICD-10, in any usual spelling (`I63.9`, `i639`).
    pub code: String,
    pub principal: bool,
}

/// An encounter as a hospital system sends it; absent times are left as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct EncounterIn {
    /// The visit number the institution gives it (HL7 PV1-19, FHIR `Encounter.identifier`).
    pub identifier: String,
    pub patient_id: String,
    pub class: EncounterClass,
    pub department: Option<String>,
    /// An emergency (unplanned) admission.
    pub acute: Option<bool>,
    pub admitted_at: Option<Timestamp>,
    pub discharged_at: Option<Timestamp>,
    pub diagnoses: Vec<DiagnosisIn>,
}

/// What recording an encounter changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncounterChange {
    pub encounter_id: i64,
    /// The encounter was new.
    pub created: bool,
    /// Its admission was recorded now (it was not before).
    pub admitted: bool,
    /// Its discharge was recorded now.
    pub discharged: bool,
    /// A new outpatient or emergency visit was registered.
    pub registered: bool,
    /// Events added to the patient's active enrolments.
    pub events_added: u64,
    /// Diagnoses not recorded before.
    pub diagnoses_added: u64,
}

/// An encounter as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncounterView {
    pub id: i64,
    pub institution_id: String,
    pub identifier: String,
    pub patient_id: String,
    pub class: EncounterClass,
    pub department: Option<String>,
    pub acute: Option<bool>,
    pub admitted_at: Option<Timestamp>,
    pub discharged_at: Option<Timestamp>,
    /// `active` or `cancelled` (an admission cancelled by the hospital).
    pub status: String,
}

/// A diagnosis as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiagnosisView {
    pub id: i64,
    pub patient_id: String,
    /// Normalised ICD-10 (`I639`).
    pub code: String,
    /// The code as ICD-10 prints it (`I63.9`).
    pub display_code: String,
    pub principal: bool,
    pub encounter_id: Option<i64>,
    pub recorded_at: Timestamp,
    pub source: String,
}

/// The code with its dot, as ICD-10 prints it: `I639` → `I63.9`.
pub fn dotted(code: &str) -> String {
    if code.len() > 3 {
        format!("{}.{}", &code[..3], &code[3..])
    } else {
        code.to_string()
    }
}

fn normalised(d: &DiagnosisIn) -> Result<String> {
    carepath_core::charlson::normalise(&d.code).ok_or_else(|| {
        StoreError::Invalid(format!(
            "`{}` is not an ICD-10 code (a letter, two digits, then an optional subdivision, e.g. I63.9)",
            d.code
        ))
    })
}

/// Whether `patient` is visible to the caller, inside the caller's transaction.
pub async fn visible(tx: &mut Tx, caller: &Caller, patient: &str) -> Result<bool> {
    let sql = format!(
        "SELECT 1 FROM patients p WHERE p.id = $1 AND {}",
        visible_patient(2)
    );
    Ok(tx
        .fetch_one(&sql, args![patient, &caller.institution_id])
        .await?
        .is_some())
}

async fn require_visible(tx: &mut Tx, caller: &Caller, patient: &str) -> Result<()> {
    if visible(tx, caller, patient).await? {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!("patient {patient}")))
    }
}

fn check_encounter(e: &EncounterIn) -> Result<()> {
    if e.identifier.trim().is_empty() || e.identifier.len() > 128 {
        return Err(StoreError::Invalid(
            "an encounter needs an identifier (the visit number) of 1–128 characters".into(),
        ));
    }
    if let (Some(a), Some(d)) = (e.admitted_at, e.discharged_at)
        && d < a
    {
        return Err(StoreError::Invalid(format!(
            "the discharge ({d}) is before the admission ({a})"
        )));
    }
    if e.department.as_ref().is_some_and(|d| d.len() > 200) {
        return Err(StoreError::Invalid(
            "department is longer than 200 characters".into(),
        ));
    }
    Ok(())
}

/// Records an encounter of a patient visible to the caller (`NotFound` otherwise), keyed by the
/// caller's institution and the encounter's identifier: a new one is inserted, a known one updated
/// with what the message adds (a time already recorded is replaced only by another time, never by
/// nothing). A newly recorded admission or discharge adds the built-in event of that name, at the
/// encounter's time, to each of the patient's active enrolments; the diagnoses are stored under
/// the encounter. Audited as `encounter.record`.
pub async fn record_encounter(
    tx: &mut Tx,
    caller: &Caller,
    e: &EncounterIn,
    source: &str,
    remote: &str,
    now: Timestamp,
) -> Result<EncounterChange> {
    check_encounter(e)?;
    require_visible(tx, caller, &e.patient_id).await?;
    let codes = e
        .diagnoses
        .iter()
        .map(|d| normalised(d).map(|c| (c, d.principal)))
        .collect::<Result<Vec<_>>>()?;
    let known = tx
        .fetch_one(
            "SELECT id, patient_id, admitted_at, discharged_at, status FROM encounters WHERE institution_id = $1 AND identifier = $2",
            args![&caller.institution_id, &e.identifier],
        )
        .await?;
    let acute = e.acute.map(i64::from);
    let (id, created, was_admitted, was_discharged) = match known {
        Some(r) => {
            if r.text(1) != e.patient_id {
                return Err(StoreError::Invalid(format!(
                    "encounter {} belongs to another patient",
                    e.identifier
                )));
            }
            let id = r.i64(0);
            tx.exec(
                "UPDATE encounters SET class = $2, department = COALESCE($3, department), acute = COALESCE($4, acute), \
                 admitted_at = COALESCE($5, admitted_at), discharged_at = COALESCE($6, discharged_at), status = 'active', updated_at = $7 WHERE id = $1",
                args![
                    id,
                    e.class.as_str(),
                    e.department.clone(),
                    acute,
                    e.admitted_at.map(|t| t.as_second()),
                    e.discharged_at.map(|t| t.as_second()),
                    now.as_second()
                ],
            )
            .await?;
            let active = r.text(4) == "active";
            (
                id,
                false,
                active && r.opt_i64(2).is_some(),
                active && r.opt_i64(3).is_some(),
            )
        }
        None => {
            let row = tx
                .fetch_one(
                    "INSERT INTO encounters (institution_id, identifier, patient_id, class, department, acute, admitted_at, discharged_at, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING id",
                    args![
                        &caller.institution_id,
                        &e.identifier,
                        &e.patient_id,
                        e.class.as_str(),
                        e.department.clone(),
                        acute,
                        e.admitted_at.map(|t| t.as_second()),
                        e.discharged_at.map(|t| t.as_second()),
                        now.as_second()
                    ],
                )
                .await?
                .ok_or_else(|| StoreError::Invalid("insert returned no id".into()))?;
            (row.i64(0), true, false, false)
        }
    };
    let admitted = e.admitted_at.is_some() && !was_admitted && e.class == EncounterClass::Inpatient;
    let discharged =
        e.discharged_at.is_some() && !was_discharged && e.class == EncounterClass::Inpatient;
    let mut raised = Vec::new();
    if admitted && let Some(at) = e.admitted_at {
        raised.push(("admitted", at));
    }
    if discharged && let Some(at) = e.discharged_at {
        raised.push(("discharged", at));
    }
    let events_added = raise(tx, &e.patient_id, id, &raised, now).await?;
    let diagnoses_added = store_diagnoses(tx, &e.patient_id, Some(id), &codes, source, now).await?;
    caller
        .audit_ok(
            tx,
            "encounter.record",
            &format!("encounter/{id}"),
            std::slice::from_ref(&e.patient_id),
            remote,
            now,
        )
        .await?;
    Ok(EncounterChange {
        encounter_id: id,
        created,
        admitted,
        discharged,
        registered: created && e.class != EncounterClass::Inpatient,
        events_added,
        diagnoses_added,
    })
}

/// Adds `events` (name, instant) of encounter `encounter` to every active enrolment of `patient`.
async fn raise(
    tx: &mut Tx,
    patient: &str,
    encounter: i64,
    events: &[(&str, Timestamp)],
    now: Timestamp,
) -> Result<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    let enrolments: Vec<i64> = tx
        .fetch(
            "SELECT id FROM enrolments WHERE patient_id = $1 AND status = 'active' ORDER BY id",
            args![patient],
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect();
    let new: Vec<NewEvent> = enrolments
        .iter()
        .flat_map(|en| {
            events.iter().map(move |(name, at)| NewEvent {
                enrolment: *en,
                name: (*name).to_string(),
                at: *at,
                payload: None,
                source_key: Some(format!(
                    "encounter:{encounter}:{name}:{}:{en}",
                    at.as_second()
                )),
                created_at: now,
            })
        })
        .collect();
    add_events(tx, &new).await
}

async fn store_diagnoses(
    tx: &mut Tx,
    patient: &str,
    encounter: Option<i64>,
    codes: &[(String, bool)],
    source: &str,
    now: Timestamp,
) -> Result<u64> {
    let key = encounter.map(|e| e.to_string()).unwrap_or_default();
    let mut added = 0;
    for (code, principal) in codes {
        added += tx
            .exec(
                "INSERT INTO diagnoses (patient_id, encounter_key, encounter_id, code, principal, recorded_at, source) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (patient_id, encounter_key, code) DO NOTHING",
                args![
                    patient,
                    &key,
                    encounter,
                    code,
                    i64::from(*principal),
                    now.as_second(),
                    source
                ],
            )
            .await?;
    }
    Ok(added)
}

/// Records diagnoses of a patient visible to the caller, under one of the caller's encounters
/// when `encounter` names one (`NotFound` when it does not exist). Returns how many were new.
/// Audited as `diagnosis.record`.
#[allow(clippy::too_many_arguments)]
pub async fn add_diagnoses(
    tx: &mut Tx,
    caller: &Caller,
    patient: &str,
    encounter: Option<&str>,
    diagnoses: &[DiagnosisIn],
    source: &str,
    remote: &str,
    now: Timestamp,
) -> Result<u64> {
    require_visible(tx, caller, patient).await?;
    let codes = diagnoses
        .iter()
        .map(|d| normalised(d).map(|c| (c, d.principal)))
        .collect::<Result<Vec<_>>>()?;
    let encounter_id = match encounter {
        Some(identifier) => Some(
            tx.fetch_one(
                "SELECT id FROM encounters WHERE institution_id = $1 AND identifier = $2 AND patient_id = $3",
                args![&caller.institution_id, identifier, patient],
            )
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("encounter {identifier} of patient {patient}"))
            })?
            .i64(0),
        ),
        None => None,
    };
    let added = store_diagnoses(tx, patient, encounter_id, &codes, source, now).await?;
    caller
        .audit_ok(
            tx,
            "diagnosis.record",
            &format!("patient/{patient}/diagnoses"),
            &[patient.to_string()],
            remote,
            now,
        )
        .await?;
    Ok(added)
}

/// What cancelling an admission or a discharge undid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cancelled {
    pub encounter_id: i64,
    /// Events voided before any step read them.
    pub voided_events: u64,
    /// Events added to say so (`admission_cancelled`, `discharge_cancelled`) where a step had
    /// already read the event.
    pub events_added: u64,
    /// Enrolments case intake made from this encounter, still active: the caller withdraws them.
    pub intake_enrolments: Vec<i64>,
}

/// Which record a hospital's cancel message undoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// HL7 A11: the admission did not happen; the encounter is cancelled.
    Admission,
    /// HL7 A13: the patient was not discharged; the discharge time is cleared.
    Discharge,
}

impl Undo {
    fn event(self) -> &'static str {
        match self {
            Undo::Admission => "admitted",
            Undo::Discharge => "discharged",
        }
    }
}

/// Undoes an admission or a discharge of one of the caller's encounters (`NotFound` when there is
/// none; `Conflict` when there is nothing to undo). The event it raised is voided where no step
/// has read it yet; where one has, the pathway is told with `admission_cancelled` or
/// `discharge_cancelled`, which it may route. Enrolments made from the encounter by case intake
/// are returned for the caller to withdraw. Audited as `encounter.cancel_admission` or
/// `encounter.cancel_discharge`.
pub async fn cancel(
    tx: &mut Tx,
    caller: &Caller,
    identifier: &str,
    what: Undo,
    remote: &str,
    now: Timestamp,
) -> Result<Cancelled> {
    let row = tx
        .fetch_one(
            "SELECT id, patient_id, admitted_at, discharged_at, status FROM encounters WHERE institution_id = $1 AND identifier = $2",
            args![&caller.institution_id, identifier],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("encounter {identifier}")))?;
    let (id, patient) = (row.i64(0), row.text(1));
    let recorded = match what {
        Undo::Admission => row.text(4) == "active" && row.opt_i64(2).is_some(),
        Undo::Discharge => row.text(4) == "active" && row.opt_i64(3).is_some(),
    };
    if !recorded {
        return Err(StoreError::Conflict(format!(
            "encounter {identifier} has no {} to cancel",
            match what {
                Undo::Admission => "admission",
                Undo::Discharge => "discharge",
            }
        )));
    }
    match what {
        Undo::Admission => {
            tx.exec(
                "UPDATE encounters SET status = 'cancelled', updated_at = $2 WHERE id = $1",
                args![id, now.as_second()],
            )
            .await?
        }
        Undo::Discharge => {
            tx.exec(
                "UPDATE encounters SET discharged_at = NULL, updated_at = $2 WHERE id = $1",
                args![id, now.as_second()],
            )
            .await?
        }
    };
    let prefix = format!("encounter:{id}:{}:", what.event());
    let pattern = format!("{prefix}%");
    let voided = tx
        .exec(
            "UPDATE events SET void_at = $2 WHERE source_key LIKE $1 AND void_at IS NULL \
             AND seq > (SELECT last_event_seq FROM enrolments WHERE enrolments.id = events.enrolment_id)",
            args![&pattern, now.as_second()],
        )
        .await?;
    let read: Vec<(i64, i64)> = tx
        .fetch(
            "SELECT e.enrolment_id, e.at FROM events e JOIN enrolments n ON n.id = e.enrolment_id \
             WHERE e.source_key LIKE $1 AND e.void_at IS NULL AND n.status = 'active'",
            args![&pattern],
        )
        .await?
        .iter()
        .map(|r| (r.i64(0), r.i64(1)))
        .collect();
    let name = match what {
        Undo::Admission => "admission_cancelled",
        Undo::Discharge => "discharge_cancelled",
    };
    let told: Vec<NewEvent> = read
        .iter()
        .map(|(en, at)| NewEvent {
            enrolment: *en,
            name: name.to_string(),
            at: now,
            payload: None,
            source_key: Some(format!("encounter:{id}:{name}:{at}:{en}")),
            created_at: now,
        })
        .collect();
    let events_added = add_events(tx, &told).await?;
    let intake_enrolments = tx
        .fetch(
            "SELECT c.enrolment_id FROM intake_candidates c JOIN enrolments n ON n.id = c.enrolment_id \
             WHERE c.encounter_id = $1 AND c.status = 'accepted' AND n.status = 'active' ORDER BY c.enrolment_id",
            args![id],
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect();
    tx.exec(
        "UPDATE intake_candidates SET status = 'cancelled', reason = $2, decided_at = $3 WHERE encounter_id = $1 AND status = 'pending'",
        args![id, format!("{name} by the hospital"), now.as_second()],
    )
    .await?;
    let action = match what {
        Undo::Admission => "encounter.cancel_admission",
        Undo::Discharge => "encounter.cancel_discharge",
    };
    caller
        .audit_ok(
            tx,
            action,
            &format!("encounter/{id}"),
            std::slice::from_ref(&patient),
            remote,
            now,
        )
        .await?;
    Ok(Cancelled {
        encounter_id: id,
        voided_events: voided,
        events_added,
        intake_enrolments,
    })
}

fn encounter_view(r: &crate::db::Row) -> EncounterView {
    EncounterView {
        id: r.i64(0),
        institution_id: r.text(1),
        identifier: r.text(2),
        patient_id: r.text(3),
        class: EncounterClass::parse(&r.text(4)).unwrap_or(EncounterClass::Outpatient),
        department: r.opt_text(5),
        acute: r.opt_i64(6).map(|a| a != 0),
        admitted_at: r.opt_i64(7).map(ts),
        discharged_at: r.opt_i64(8).map(ts),
        status: r.text(9),
    }
}

const ENCOUNTER_COLUMNS: &str = "id, institution_id, identifier, patient_id, class, department, acute, admitted_at, discharged_at, status";

/// A patient's encounters, oldest admission first (reads are audited by the caller's layer).
pub async fn encounters_of(tx: &mut Tx, patient: &str) -> Result<Vec<EncounterView>> {
    Ok(tx
        .fetch(
            &format!(
                "SELECT {ENCOUNTER_COLUMNS} FROM encounters WHERE patient_id = $1 ORDER BY admitted_at, id"
            ),
            args![patient],
        )
        .await?
        .iter()
        .map(encounter_view)
        .collect())
}

/// One of the caller institution's encounters by its identifier.
pub async fn encounter(
    tx: &mut Tx,
    institution: &str,
    identifier: &str,
) -> Result<Option<EncounterView>> {
    Ok(tx
        .fetch_one(
            &format!(
                "SELECT {ENCOUNTER_COLUMNS} FROM encounters WHERE institution_id = $1 AND identifier = $2"
            ),
            args![institution, identifier],
        )
        .await?
        .as_ref()
        .map(encounter_view))
}

/// A patient's diagnoses, in the order recorded.
pub async fn diagnoses_of(tx: &mut Tx, patient: &str) -> Result<Vec<DiagnosisView>> {
    Ok(tx
        .fetch(
            "SELECT id, patient_id, code, principal, encounter_id, recorded_at, source FROM diagnoses WHERE patient_id = $1 ORDER BY id",
            args![patient],
        )
        .await?
        .iter()
        .map(|r| DiagnosisView {
            id: r.i64(0),
            patient_id: r.text(1),
            display_code: dotted(&r.text(2)),
            code: r.text(2),
            principal: r.i64(3) != 0,
            encounter_id: r.opt_i64(4),
            recorded_at: ts(r.i64(5)),
            source: r.text(6),
        })
        .collect())
}

/// The response sent for message `control_id` from `source`, if it was processed before.
pub async fn message_seen(tx: &mut Tx, source: &str, control_id: &str) -> Result<Option<String>> {
    Ok(tx
        .fetch_one(
            "SELECT response FROM interface_messages WHERE source = $1 AND control_id = $2",
            args![source, control_id],
        )
        .await?
        .map(|r| r.text(0)))
}

/// Records that message `control_id` from `source` was processed with `outcome` and answered with
/// `response`; in the transaction of what it changed, so the two commit together.
pub async fn record_message(
    tx: &mut Tx,
    source: &str,
    control_id: &str,
    outcome: &str,
    response: &str,
    now: Timestamp,
) -> Result<()> {
    tx.exec(
        "INSERT INTO interface_messages (source, control_id, received_at, outcome, response) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (source, control_id) DO NOTHING",
        args![source, control_id, now.as_second(), outcome, response],
    )
    .await?;
    Ok(())
}

/// The local id of the `kind` resource another system of `institution` named `system|value`.
pub async fn external_id(
    tx: &mut Tx,
    kind: &str,
    institution: &str,
    system: &str,
    value: &str,
) -> Result<Option<String>> {
    Ok(tx
        .fetch_one(
            "SELECT local_id FROM external_ids WHERE kind = $1 AND institution_id = $2 AND system = $3 AND value = $4",
            args![kind, institution, system, value],
        )
        .await?
        .map(|r| r.text(0)))
}

/// Records that `system|value` of `institution` names the `kind` resource `local_id`; a second
/// record of the same identifier keeps the first.
#[allow(clippy::too_many_arguments)]
pub async fn record_external_id(
    tx: &mut Tx,
    kind: &str,
    institution: &str,
    system: &str,
    value: &str,
    local_id: &str,
    now: Timestamp,
) -> Result<()> {
    tx.exec(
        "INSERT INTO external_ids (kind, institution_id, system, value, local_id, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (kind, institution_id, system, value) DO NOTHING",
        args![kind, institution, system, value, local_id, now.as_second()],
    )
    .await?;
    Ok(())
}
