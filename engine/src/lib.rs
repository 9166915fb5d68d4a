//! carepath's runtime: the scheduler (who is due, passes, catch-up), delivery of follow-ups over
//! SMS, WeChat, e-mail and phone, synthetic seeding and the monthly operations report.
//!
//! The clinical rules are in `carepath_core` and all SQL in `carepath_store`; both are re-exported
//! here under their old paths (`carepath_engine::step`, `carepath_engine::store`) for callers
//! that use the runtime. Architecture invariant: this crate runs no SQL of its own (it does not
//! depend on sqlx); the scheduler is the only caller that decides *when* to step.

#![forbid(unsafe_code)]

pub use carepath_core::{
    Emitted, Enrolment, Outcome, PatientFacts, PendingEvent, Produced, Program, Programs, Status,
    StepError, enrol,
};
pub use carepath_core::{
    alarms, calendar, facts, indicators, observations, outcome, pathway_test, program, risk,
    sandbox, scales, step, svg, time,
};
pub use carepath_store as store;
pub use carepath_store::{audit, crypto};

pub mod delivery;
pub mod hl7;
pub mod hospital;
pub mod intake;
pub mod report;
pub mod scheduler;
pub mod seed;
