//! Care-plan goals: evaluated from the record on a schedule of their own and at once when a
//! patient's readings arrive; every change of status is kept in `goal_status` and the patient's
//! record.
//!
//! A goal row is due when `next_eval_at` has passed (a range scan of a partial index, as for the
//! scheduler). Evaluating it sets `met`, `value` and `evaluated_at`, and moves `next_eval_at` to
//! the next instant its answer could change with no new reading: when a stored reading enters or
//! leaves its window ([`goal_next_change`]). Until then the answer stands, so a goal is evaluated
//! when its figure can move rather than every day: a patient with no readings costs the nightly
//! pass nothing. `next_eval_at` is empty when only a new reading can change the answer (readings
//! evaluate their patient's goals at once) and when the enrolment has ended.

use std::collections::HashMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::json;

use super::db::{self, Arg, Row, Tx};
use super::writer::MAX_PARAMS;
use super::{Pool, Result, ts, values_list_from};
use crate::args;
use crate::facts::{Observation, PatientFacts};
use crate::observations::ConditionCache;
use crate::sandbox::{goal_next_change, measure_goal};

const BATCH: i64 = 500;

/// What one goal sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct GoalSweep {
    pub evaluated: u64,
    /// Goals whose status changed (or was set for the first time).
    pub changed: u64,
}

impl GoalSweep {
    fn add(&mut self, o: GoalSweep) {
        self.evaluated += o.evaluated;
        self.changed += o.changed;
    }
}

/// The columns [`DueGoal::from_row`] reads from `goals g JOIN enrolments e JOIN patients p`, and
/// the join that reads the goal's spec from its record part.
fn goal_columns() -> (String, String) {
    let (spec, join) = crate::writer::part_column("g", "spec");
    (
        format!("g.id, g.enrolment_id, g.goal_id, {spec}, g.met, e.patient_id, e.status, p.tz"),
        join,
    )
}

/// Evaluates every goal due at `now`, in batches of one transaction each.
pub async fn evaluate_due(pool: &Pool, now: Timestamp) -> Result<GoalSweep> {
    let mut sweep = GoalSweep::default();
    let (columns, spec) = goal_columns();
    loop {
        let mut tx = pool.begin().await?;
        let lock = if tx.is_postgres() {
            " FOR UPDATE OF g SKIP LOCKED"
        } else {
            ""
        };
        let rows = tx
            .fetch(
                &format!(
                    "SELECT {columns} FROM goals g JOIN enrolments e ON e.id = g.enrolment_id \
                     JOIN patients p ON p.id = e.patient_id {spec} \
                     WHERE g.next_eval_at IS NOT NULL AND g.next_eval_at <= $1 ORDER BY g.next_eval_at, g.id LIMIT $2{lock}"
                ),
                args![now.as_second(), BATCH],
            )
            .await?;
        if rows.is_empty() {
            tx.rollback().await?;
            break;
        }
        sweep.add(evaluate_rows(&mut tx, &rows, now).await?);
        tx.commit().await?;
    }
    Ok(sweep)
}

/// Evaluates, inside the caller's transaction, the goals of the active enrolments of these
/// patients (after their readings were stored), whether or not they were due.
pub async fn evaluate_for_patients(
    tx: &mut Tx,
    patients: &[String],
    now: Timestamp,
) -> Result<GoalSweep> {
    let mut sweep = GoalSweep::default();
    let (columns, spec) = goal_columns();
    for part in patients.chunks(BATCH as usize) {
        let a: Vec<Arg> = part.iter().map(|p| Arg::T(p.clone())).collect();
        let rows = tx
            .fetch(
                &format!(
                    "SELECT {columns} FROM goals g JOIN enrolments e ON e.id = g.enrolment_id \
                     JOIN patients p ON p.id = e.patient_id {spec} \
                     WHERE e.patient_id IN ({}) AND e.status = 'active' ORDER BY g.id",
                    db::placeholders(1, a.len())
                ),
                a,
            )
            .await?;
        sweep.add(evaluate_rows(tx, &rows, now).await?);
    }
    Ok(sweep)
}

/// A goal row as read for evaluation.
struct DueGoal {
    id: i64,
    enrolment: i64,
    goal_id: String,
    spec: Option<carepath_dsl::Goal>,
    met: Option<i64>,
    patient: String,
    active: bool,
    tz: String,
}

impl DueGoal {
    fn from_row(r: &Row) -> DueGoal {
        DueGoal {
            id: r.i64(0),
            enrolment: r.i64(1),
            goal_id: r.text(2),
            spec: serde_json::from_str(&r.text(3)).ok(),
            met: r.opt_i64(4),
            patient: r.text(5),
            active: r.text(6) == "active",
            tz: r.text(7),
        }
    }
}

async fn evaluate_rows(tx: &mut Tx, rows: &[Row], now: Timestamp) -> Result<GoalSweep> {
    let mut sweep = GoalSweep::default();
    let goals: Vec<DueGoal> = rows.iter().map(DueGoal::from_row).collect();
    // One read of the observations every goal of the batch needs, over the longest window.
    let longest = goals
        .iter()
        .filter_map(|g| g.spec.as_ref())
        .map(|g| match &g.measure {
            carepath_dsl::GoalMeasure::ShareOfReadings { over, .. }
            | carepath_dsl::GoalMeasure::DaysLogged { over, .. } => over.nominal_seconds(),
        })
        .max()
        .unwrap_or(0);
    let mut patients: Vec<String> = goals.iter().map(|g| g.patient.clone()).collect();
    patients.sort();
    patients.dedup();
    let mut facts: HashMap<String, PatientFacts> = HashMap::new();
    for part in patients.chunks(BATCH as usize) {
        let mut a: Vec<Arg> = part.iter().map(|p| Arg::T(p.clone())).collect();
        let n = a.len();
        // Readings dated a little ahead (a device clock) enter the window later: they are read
        // too, for the instant they do.
        a.push(Arg::I(now.as_second() - longest));
        let obs = tx
            .fetch(
                &format!(
                    "SELECT patient_id, kind, value, at FROM observations WHERE patient_id IN ({}) AND at > ${} ORDER BY at",
                    db::placeholders(1, n),
                    n + 1,
                ),
                a,
            )
            .await?;
        for o in obs {
            facts
                .entry(o.text(0))
                .or_default()
                .observations
                .push(Observation {
                    kind: o.text(1),
                    value: o.f64(2),
                    at: ts(o.i64(3)),
                });
        }
    }
    let empty = PatientFacts::default();
    let mut conditions = ConditionCache::new(carepath_dsl::condition::ConditionKind::GoalReading);
    let (mut ended, mut updates, mut changes) = (Vec::new(), Vec::new(), Vec::new());
    for g in &goals {
        let (Some(goal), true) = (&g.spec, g.active) else {
            // An ended enrolment, or a goal this version cannot read: no further evaluation.
            ended.push(Arg::I(g.id));
            continue;
        };
        let tz = TimeZone::get(&g.tz).unwrap_or(TimeZone::UTC);
        // A reading condition this evaluator cannot run (stored before it was validated) is never met.
        let condition = match &goal.measure {
            carepath_dsl::GoalMeasure::ShareOfReadings { reading, .. } => {
                conditions.get(&reading.0).ok()
            }
            carepath_dsl::GoalMeasure::DaysLogged { .. } => None,
        };
        let patient_facts = facts.get(&g.patient).unwrap_or(&empty);
        let reading = measure_goal(goal, condition, patient_facts, now, &tz);
        let met = i64::from(reading.met);
        let next = goal_next_change(goal, patient_facts, now).map(|t| t.as_second());
        updates.extend(args![g.id, met, reading.value, Arg::OptI(next)]);
        sweep.evaluated += 1;
        if g.met != Some(met) {
            changes.push((g, reading));
        }
    }
    for part in ended.chunks(MAX_PARAMS) {
        tx.exec(
            &format!(
                "UPDATE goals SET next_eval_at = NULL WHERE id IN ({})",
                db::placeholders(1, part.len())
            ),
            part.to_vec(),
        )
        .await?;
    }
    for part in updates.chunks(MAX_PARAMS / 4 * 4) {
        let mut a = args![now.as_second()];
        a.extend(part.iter().cloned());
        tx.exec(
            &format!(
                "UPDATE goals SET met = v.column2, value = v.column3, evaluated_at = $1, next_eval_at = v.column4 \
                 FROM (VALUES {}) AS v WHERE goals.id = v.column1",
                values_list_from(2, part.len() / 4, 4)
            ),
            a,
        )
        .await?;
    }
    for part in changes.chunks(MAX_PARAMS / 8) {
        let mut a = Vec::with_capacity(part.len() * 8);
        let mut rec = Vec::with_capacity(part.len() * 6);
        for (g, reading) in part {
            a.extend(args![
                format!("g{}:{}", g.id, now.as_second()),
                g.id,
                g.enrolment,
                &g.goal_id,
                i64::from(reading.met),
                reading.value,
                reading.readings as i64,
                now.as_second()
            ]);
            rec.extend(args![
                format!("g{}:{}:record", g.id, now.as_second()),
                &g.patient,
                g.enrolment,
                now.as_second(),
                "goal",
                json!({"goal": g.goal_id, "met": reading.met, "value": reading.value, "readings": reading.readings}).to_string()
            ]);
        }
        sweep.changed += tx
            .exec(
                &format!(
                    "INSERT INTO goal_status (dedupe_key, goal_row_id, enrolment_id, goal_id, met, value, readings, at) \
                     VALUES {} ON CONFLICT (dedupe_key) DO NOTHING",
                    values_list_from(1, part.len(), 8)
                ),
                a,
            )
            .await?;
        tx.exec(
            &format!(
                "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES {} ON CONFLICT (dedupe_key) DO NOTHING",
                values_list_from(1, part.len(), 6)
            ),
            rec,
        )
        .await?;
    }
    Ok(sweep)
}

/// Creates the rows of a pathway's top-level goals for a new enrolment, due for evaluation now.
pub async fn create_for_enrolment(
    tx: &mut Tx,
    enrolment: i64,
    goals: &[carepath_dsl::Goal],
    now: Timestamp,
) -> Result<()> {
    let rows: Vec<_> = goals.iter().map(|g| (enrolment, g, now)).collect();
    create_for_enrolments(tx, &rows, crate::Transfer::Statements).await
}

/// Creates goal rows for `(enrolment, goal, enrolled at)` in multi-row statements (or as
/// `transfer` says), each due for evaluation at its enrolment's instant.
pub async fn create_for_enrolments(
    tx: &mut Tx,
    goals: &[(i64, &carepath_dsl::Goal, Timestamp)],
    transfer: crate::Transfer,
) -> Result<()> {
    const COLUMNS: &str = "dedupe_key, enrolment_id, goal_id, spec, created_at, next_eval_at";
    const PER_ROW: usize = 6;
    // Each goal's spec is a record part, as a goal set by a step is: written once however many
    // enrolments share it, and serialised and hashed once per distinct goal (an import names the
    // same few goals for every enrolment).
    let mut parts = std::collections::BTreeMap::new();
    let specs: Vec<String> = {
        let mut hashed: HashMap<*const carepath_dsl::Goal, String> = HashMap::new();
        goals
            .iter()
            .map(|(_, g, _)| {
                hashed
                    .entry(std::ptr::from_ref(*g))
                    .or_insert_with(|| {
                        crate::writer::put_part(
                            serde_json::to_value(g).unwrap_or_default().to_string(),
                            &mut parts,
                        )
                    })
                    .clone()
            })
            .collect()
    };
    crate::writer::insert_parts(tx, parts).await?;
    let row = |((enrolment, g, at), spec): (&(i64, &carepath_dsl::Goal, Timestamp), &String)| -> Vec<crate::Arg> {
        args![
            format!("e{enrolment}:goal:{}", g.id),
            *enrolment,
            &g.id,
            spec,
            at.as_second(),
            at.as_second()
        ]
    };
    if transfer == crate::Transfer::Copy && tx.is_postgres() {
        let rows: Vec<Vec<crate::Arg>> = goals.iter().zip(&specs).map(row).collect();
        crate::copy::insert_staged(
            tx,
            "goals",
            COLUMNS,
            "u.c1, u.c2, u.c3, u.c4, u.c5, u.c6",
            &rows,
            None,
        )
        .await?;
        return Ok(());
    }
    for (part, specs) in goals
        .chunks(MAX_PARAMS / PER_ROW)
        .zip(specs.chunks(MAX_PARAMS / PER_ROW))
    {
        let a: Vec<crate::Arg> = part.iter().zip(specs).flat_map(row).collect();
        tx.exec(
            &format!(
                "INSERT INTO goals ({COLUMNS}) VALUES {} ON CONFLICT (dedupe_key) DO NOTHING",
                crate::values_list_from(1, part.len(), PER_ROW)
            ),
            a,
        )
        .await?;
    }
    Ok(())
}
