//! The scheduler: steps every due enrolment, in batches, each batch one transaction.
//!
//! "Who is due" is a range scan of the partial index on `next_wake_at`. A batch is claimed, its
//! facts loaded in a few queries, each enrolment stepped by the pure step, and everything written
//! and committed together. On PostgreSQL several workers run passes at once: the claim uses
//! `FOR UPDATE SKIP LOCKED`, and the row-version check on every enrolment update fences out a
//! worker whose view is stale. A failing pathway marks that one enrolment in error; the pass goes on.
//! Each enrolment is stepped in its institution's calendar of working days.
//! Each pass opens with the sweeps — scale pushes (reminders, expiry) and no-reading alarms — so
//! `carepath run` and the sweeps of `carepath serve` both keep pushes moving and notice a device
//! that went quiet even when no reading arrives.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use crate::program::Programs;
use crate::step;
use crate::store::{self, Pool, Result, Written};
use crate::time;

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct PassSummary {
    pub as_of: String,
    pub backend: String,
    pub batches: u64,
    pub stepped: u64,
    pub advanced: u64,
    pub transitions: u64,
    pub actions: u64,
    pub actions_by_kind: BTreeMap<String, u64>,
    pub cancelled_tasks: u64,
    pub errors: u64,
    pub stale: u64,
    /// Care-plan goals evaluated before the steps, and how many changed status.
    pub goals_evaluated: u64,
    pub goals_changed: u64,
    /// Scale reminders created and pushes expired by the sweep that opens the pass.
    pub scale_reminders: u64,
    pub scale_expired: u64,
    /// Alarm episodes opened by the no-reading sweep (a device silent for its rule's `for`).
    pub silence_alarms: u64,
}

#[derive(Debug, Clone)]
pub struct PassOptions {
    pub batch_size: i64,
    /// Stop after this many batches (tests and the simulator of crashes use it).
    pub max_batches: Option<u64>,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            batch_size: 500,
            max_batches: None,
        }
    }
}

/// Sweeps after which the pass stops even if the sweep still finds work (a pathway that pushes a
/// scale expiring at once, again and again, would otherwise never let the pass end).
const MAX_SWEEP_ROUNDS: u32 = 64;

/// Runs one pass over every enrolment due at `now`.
///
/// The pass alternates the sweeps (scale pushes, then no-reading alarms) and the batches until
/// the sweeps find nothing: expiry and alarm events make enrolments due now, and enrolments
/// stepped in catch-up can push scales whose reminders or expiry are already past, so a second
/// pass at the same instant finds nothing to do.
pub async fn run_pass(
    pool: &Pool,
    programs: &Programs,
    now: Timestamp,
    opts: &PassOptions,
) -> Result<PassSummary> {
    let mut summary = PassSummary {
        as_of: now.to_string(),
        backend: pool.backend().to_string(),
        ..Default::default()
    };
    // Goals first, so that `goal_met` in this pass's guards reads today's status.
    let goals = store::goals::evaluate_due(pool, now).await?;
    summary.goals_evaluated = goals.evaluated;
    summary.goals_changed = goals.changed;
    let mut written = Written::default();
    for round in 0..MAX_SWEEP_ROUNDS {
        let sweep = store::scales::scale_push_sweep(pool, now).await?;
        summary.scale_reminders += sweep.reminders;
        summary.scale_expired += sweep.expired;
        let silent = store::alarms::silence_sweep(pool, now).await?;
        summary.silence_alarms += silent.episodes.len() as u64;
        if round > 0
            && sweep == store::scales::ScaleSweep::default()
            && silent == store::alarms::AlarmChanges::default()
        {
            break;
        }
        let cx = Batches {
            pool,
            programs,
            now,
            opts,
        };
        let finished = if pool.is_postgres() && opts.max_batches.is_none() {
            batches_in_flight(cx, &mut summary, &mut written).await?
        } else {
            run_batches(cx, &mut summary, &mut written).await?
        };
        if !finished {
            break;
        }
        if round + 1 == MAX_SWEEP_ROUNDS {
            tracing::warn!(
                "scale pushes kept expiring at once for {MAX_SWEEP_ROUNDS} rounds; the next pass goes on"
            );
        }
    }
    // Goals set by this pass's steps are evaluated now too, so a second pass at the same instant
    // finds nothing to do.
    let goals = store::goals::evaluate_due(pool, now).await?;
    summary.goals_evaluated += goals.evaluated;
    summary.goals_changed += goals.changed;
    summary.transitions = written.transitions;
    summary.actions = written.actions();
    summary.actions_by_kind = written.by_kind;
    summary.cancelled_tasks = written.cancelled_tasks;
    Ok(summary)
}

/// What the batches of one pass share.
#[derive(Clone, Copy)]
struct Batches<'a> {
    pool: &'a Pool,
    programs: &'a Programs,
    now: Timestamp,
    opts: &'a PassOptions,
}

/// Batches a PostgreSQL pass keeps in flight. One batch alternates between this process
/// (stepping, building rows) and the server (reading, writing): each waits while the other works,
/// and on two cores one of them sat idle half the pass. With two, one batch is stepped while the
/// other is written. Each claims its own enrolments (`SKIP LOCKED`), as separate workers do.
const PG_BATCHES_IN_FLIGHT: usize = 2;

/// [`run_batches`], [`PG_BATCHES_IN_FLIGHT`] at a time on one task, their counts added up.
async fn batches_in_flight(
    cx: Batches<'_>,
    summary: &mut PassSummary,
    written: &mut Written,
) -> Result<bool> {
    let loops = (0..PG_BATCHES_IN_FLIGHT).map(|_| async {
        let (mut s, mut w) = (PassSummary::default(), Written::default());
        run_batches(cx, &mut s, &mut w)
            .await
            .map(|finished| (finished, s, w))
    });
    let mut all = true;
    for (finished, s, w) in futures_util::future::try_join_all(loops).await? {
        all &= finished;
        summary.batches += s.batches;
        summary.stepped += s.stepped;
        summary.advanced += s.advanced;
        summary.errors += s.errors;
        summary.stale += s.stale;
        written.add(&w);
    }
    Ok(all)
}

/// Steps due enrolments batch by batch until none is due; `false` when `max_batches` stopped it.
async fn run_batches(
    cx: Batches<'_>,
    summary: &mut PassSummary,
    written: &mut Written,
) -> Result<bool> {
    loop {
        if cx.opts.max_batches.is_some_and(|m| summary.batches >= m) {
            return Ok(false);
        }
        let mut tx = cx.pool.begin().await?;
        let read = read_and_step(&mut tx, cx.programs, cx.now, cx.opts.batch_size).await?;
        if read.batch.is_empty() {
            tx.rollback().await?;
            return Ok(true);
        }
        write_batch(&mut tx, read, cx.now, summary, written).await?;
        tx.commit().await?;
    }
}

/// A batch claimed and stepped: each enrolment with what stepping it gave.
struct Read {
    batch: Vec<store::DueEnrolment>,
    stepped: Vec<Stepped>,
}

enum Stepped {
    Outcome(step::Outcome),
    /// The step failed; the enrolment goes into error, its task on `role`'s board. An enrolment
    /// of a pathway version not loaded counts as an error even when its row had moved on.
    Failed {
        err: step::StepError,
        role: String,
        unloaded: bool,
    },
}

/// Claims a batch in `tx`, loads its facts and calendars and steps it.
async fn read_and_step(
    tx: &mut store::Tx,
    programs: &Programs,
    now: Timestamp,
    size: i64,
) -> Result<Read> {
    let batch = store::claim_due(tx, now, size).await?;
    if batch.is_empty() {
        return Ok(Read {
            batch,
            stepped: Vec::new(),
        });
    }
    let mut facts = store::load_facts(tx, &batch, now).await?;
    let calendars =
        store::calendars::for_institutions(tx, batch.iter().map(|d| d.institution_id.as_str()))
            .await?;
    let stepped = batch
        .iter()
        .map(|d| {
            let Some(prog) = programs.get(&d.enrolment.pathway_id, d.enrolment.version) else {
                let err = step::StepError {
                    pathway: d.enrolment.pathway_id.clone(),
                    version: d.enrolment.version,
                    state: d.enrolment.state.clone(),
                    guard: None,
                    message: "this pathway version is not loaded".into(),
                };
                return Stepped::Failed {
                    err,
                    role: "case_manager".into(),
                    unloaded: true,
                };
            };
            let (f, pending) = facts.remove(&d.enrolment.id).unwrap_or_default();
            let stepped = time::with_calendar(calendars.of(&d.institution_id), || {
                step::step(prog, &d.enrolment, &f, &pending, now)
            });
            match stepped {
                Ok(outcome) => Stepped::Outcome(outcome),
                Err(err) => {
                    tracing::warn!(enrolment = d.enrolment.id, pathway = %err.pathway, version = err.version, state = %err.state, "step failed: {}", err.message);
                    Stepped::Failed {
                        err,
                        role: prog.pathway.owner_role.clone(),
                        unloaded: false,
                    }
                }
            }
        })
        .collect();
    Ok(Read { batch, stepped })
}

/// Writes a batch's outcomes (and marks its failed enrolments in error) in `tx`.
async fn write_batch(
    tx: &mut store::Tx,
    read: Read,
    now: Timestamp,
    summary: &mut PassSummary,
    written: &mut Written,
) -> Result<()> {
    summary.batches += 1;
    let mut buf = store::RowBuffer::default();
    let mut outcomes = Vec::with_capacity(read.batch.len());
    for (d, stepped) in read.batch.iter().zip(read.stepped) {
        summary.stepped += 1;
        match stepped {
            Stepped::Outcome(o) => outcomes.push((d, o)),
            Stepped::Failed {
                err,
                role,
                unloaded,
            } => {
                if store::mark_error(tx, d, &err, &role, now).await? || unloaded {
                    summary.errors += 1;
                }
            }
        }
    }
    let refs: Vec<(&store::DueEnrolment, &step::Outcome)> =
        outcomes.iter().map(|(d, o)| (*d, o)).collect();
    for w in store::apply_outcomes(tx, &mut buf, &refs, now).await? {
        match w {
            Some(w) => {
                if w.transitions > 0 {
                    summary.advanced += 1;
                }
                written.add(&w);
            }
            None => summary.stale += 1,
        }
    }
    written.add(&buf.flush(tx).await?);
    Ok(())
}

/// Steps one enrolment now (after an event), in its own transaction.
pub async fn advance(
    pool: &Pool,
    programs: &Programs,
    enrolment: i64,
    now: Timestamp,
) -> Result<Written> {
    let mut tx = pool.begin().await?;
    let w = advance_in(&mut tx, programs, enrolment, now).await?;
    tx.commit().await?;
    Ok(w)
}

/// [`advance`] inside the caller's transaction (an enrolment case intake just made is stepped
/// through the hospital's events in the transaction that recorded them). An enrolment that is
/// no longer active is left as it is.
pub async fn advance_in(
    tx: &mut store::Tx,
    programs: &Programs,
    enrolment: i64,
    now: Timestamp,
) -> Result<Written> {
    let d = store::load_enrolment(tx, enrolment).await?;
    if d.enrolment.status != step::Status::Active {
        return Ok(Written::default());
    }
    let prog = programs
        .get(&d.enrolment.pathway_id, d.enrolment.version)
        .ok_or_else(|| {
            store::StoreError::NotFound(format!(
                "pathway {} v{}",
                d.enrolment.pathway_id, d.enrolment.version
            ))
        })?;
    let mut facts = store::load_facts(tx, std::slice::from_ref(&d), now).await?;
    let (f, pending) = facts.remove(&d.enrolment.id).unwrap_or_default();
    let calendars = store::calendars::for_institutions(tx, [d.institution_id.as_str()]).await?;
    let mut buf = store::RowBuffer::default();
    let stepped = time::with_calendar(calendars.of(&d.institution_id), || {
        step::step(prog, &d.enrolment, &f, &pending, now)
    });
    let mut w = match stepped {
        Ok(outcome) => store::apply_outcome(tx, &mut buf, &d, &outcome, now)
            .await?
            .unwrap_or_default(),
        Err(err) => {
            store::mark_error(tx, &d, &err, &prog.pathway.owner_role, now).await?;
            Written::default()
        }
    };
    w.add(&buf.flush(tx).await?);
    Ok(w)
}
