//! The one entry point for what hospital systems send, whichever protocol carried it (FHIR R4,
//! HL7 v2 ADT): the store records the facts and raises their events, then case intake acts on
//! what changed, all in the caller's transaction, so a message or a transaction Bundle writes all
//! of what it means or nothing.

use carepath_core::program::Programs;
use carepath_store::clinical::{self, Cancelled, EncounterChange, EncounterIn, Undo};
use carepath_store::crypto::ContactKey;
use carepath_store::patients::{self, PatientUpsert};
use carepath_store::queries::Caller;
use carepath_store::{Result, StoreError, Tx};
use jiff::Timestamp;
use serde::Serialize;

use crate::intake::{self, IntakeRules};

/// What a hospital message is applied with: the published pathways, the intake rules and the
/// key contact details are encrypted with.
#[derive(Clone, Copy)]
pub struct Hospital<'a> {
    pub programs: &'a Programs,
    pub intake: &'a IntakeRules,
    pub contact_key: Option<&'a ContactKey>,
}

/// What recording an encounter did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncounterRecorded {
    pub change: EncounterChange,
    /// Enrolments case intake made.
    pub enrolled: Vec<i64>,
    /// Intake candidates put on a case manager's queue.
    pub queued: Vec<i64>,
}

/// Records an encounter (see [`clinical::record_encounter`]) and runs case intake on what it
/// changed.
pub async fn record_encounter(
    tx: &mut Tx,
    h: &Hospital<'_>,
    caller: &Caller,
    e: &EncounterIn,
    source: &str,
    remote: &str,
    now: Timestamp,
) -> Result<EncounterRecorded> {
    let change = clinical::record_encounter(tx, caller, e, source, remote, now).await?;
    let (enrolled, queued) = intake::on_encounter(tx, h, caller, e, &change, remote, now).await?;
    Ok(EncounterRecorded {
        change,
        enrolled,
        queued,
    })
}

/// Undoes an admission (HL7 A11) or a discharge (A13): see [`clinical::cancel`]; the enrolments
/// case intake made from the encounter are withdrawn in the same transaction.
pub async fn cancel(
    tx: &mut Tx,
    h: &Hospital<'_>,
    caller: &Caller,
    identifier: &str,
    what: Undo,
    remote: &str,
    now: Timestamp,
) -> Result<Cancelled> {
    let cancelled = clinical::cancel(tx, caller, identifier, what, remote, now).await?;
    let reason = match what {
        Undo::Admission => "the hospital cancelled the admission this enrolment was made from",
        Undo::Discharge => "the hospital cancelled the discharge this enrolment was made from",
    };
    for enrolment in &cancelled.intake_enrolments {
        match carepath_store::withdraw_tx(
            tx,
            h.programs,
            *enrolment,
            reason,
            Some(&caller.staff_id),
            now,
        )
        .await
        {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(cancelled)
}

/// Creates or updates a patient (see [`patients::upsert`]) with this server's contact key.
pub async fn upsert_patient(
    tx: &mut Tx,
    h: &Hospital<'_>,
    caller: &Caller,
    p: &PatientUpsert,
    remote: &str,
    now: Timestamp,
) -> Result<bool> {
    patients::upsert(tx, caller, h.contact_key, p, remote, now).await
}
