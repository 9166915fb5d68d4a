//! carepath's pure clinical core: the step, the outcome policy, what a guard can read, calendar
//! time in the patient's zone, working days, risk models, observation rules and scale scoring.
//!
//! Architecture invariants: this crate depends on no database driver, no async runtime and no
//! network client (the crate graph holds it); `step` reads no clock, draws no randomness and does
//! no I/O. Every clinical rule the store, the simulator and `carepath test` share lives here once.

#![forbid(unsafe_code)]

pub mod alarms;
pub mod calendar;
pub mod charlson;
pub mod delivery;
pub mod facts;
pub mod indicators;
pub mod observations;
pub mod outcome;
pub mod pathway_test;
pub mod program;
pub mod risk;
pub mod sandbox;
pub mod scales;
pub mod step;
pub mod svg;
pub mod time;
#[cfg(test)]
mod working_days_test;

pub use facts::{PatientFacts, PendingEvent};
pub use program::Programs;
pub use step::{Emitted, Enrolment, Outcome, Produced, Program, Status, StepError, enrol, step};
