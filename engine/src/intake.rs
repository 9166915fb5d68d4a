//! Case intake (收案): rules that enrol a patient, or put them on a case manager's intake queue,
//! from what the hospital records (a discharge, an admission, a registration).

use carepath_store::Tx;
use carepath_store::clinical::{EncounterChange, EncounterIn};
use carepath_store::queries::Caller;
use jiff::Timestamp;

use crate::hospital::Hospital;

/// The intake rules in force.
#[derive(Debug, Clone, Default)]
pub struct IntakeRules {}

/// Enrolments made and candidates queued by the rules for what an encounter changed.
pub async fn on_encounter(
    _tx: &mut Tx,
    _hospital: &Hospital<'_>,
    _caller: &Caller,
    _encounter: &EncounterIn,
    _change: &EncounterChange,
    _now: Timestamp,
) -> carepath_store::Result<(Vec<i64>, Vec<i64>)> {
    Ok((Vec::new(), Vec::new()))
}
