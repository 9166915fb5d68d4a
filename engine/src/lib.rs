//! carepath's engine: the pure step, the Rhai sandbox, storage, the scheduler.
//!
//! Architecture invariants: `step` reads no clock, draws no randomness and does no I/O; only
//! `store` holds SQL; the scheduler is the only caller that decides *when* to step.

pub mod audit;
pub mod crypto;
pub mod delivery;
pub mod facts;
pub mod indicators;
pub mod observations;
pub mod outcome;
pub mod program;
pub mod risk;
pub mod sandbox;
pub mod scales;
pub mod step;
pub mod svg;
pub mod time;

pub use facts::{PatientFacts, PendingEvent};
pub use program::Programs;
pub use step::{Emitted, Enrolment, Outcome, Produced, Program, Status, StepError, enrol, step};
pub mod pathway_test;
pub mod report;
pub mod scheduler;
pub mod seed;
pub mod store;
