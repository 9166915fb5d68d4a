//! Moving the patients already on a pathway to a new version of it: a dry run that says, for each
//! enrolment a plan selects, where it would go and what its next pass would do under the new
//! version compared with staying, from its real facts through the pure step; then the move
//! itself, in batches, exactly once however often it is interrupted and run again; and its
//! rollback.
//!
//! One run per plan id (`migration_runs`), leased by the process applying it: a second process
//! refuses while the lease is live. Each batch is one transaction: the enrolments (locked on
//! PostgreSQL, and only those still on the old version and not yet moved by this run), their
//! `migration_moves` rows with what they were, their record rows and the audit entry. The open
//! work of a state the new version lacks is ended by the outcome policy's rule for leaving a state,
//! the same statement a pass uses.

use std::collections::BTreeMap;

use carepath_core::outcome::{self, Work};
use carepath_core::step::{self, Enrolment, Outcome};
use carepath_dsl::VarValue;
use carepath_dsl::migration::{MigrationPlan, OpenWork};
use carepath_dsl::policy::Cause;
use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use super::queries::AuditEntry;
use super::{Pool, Result, StoreError, Tx, load_enrolment, load_facts, ts};
use crate::args;
use crate::program::Programs;
use carepath_core::step::Program;

/// What the next pass would do: the transitions it would take and the work it would make.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NextPass {
    pub transitions: Vec<String>,
    /// `kind:ref` of each piece of work, with its store key (`e42:3:1`).
    pub work: Vec<String>,
    /// The step failed (the enrolment would be marked in error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One enrolment in a dry run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    pub enrolment: i64,
    pub institution_id: String,
    pub from_state: String,
    pub to_state: String,
    /// Open work the move would end (`task:call (urgent)`, `follow_up:day3`).
    pub cancels: Vec<String>,
    pub urgent_cancels: usize,
    /// The next pass if the enrolment stays on the old version, and if it moves.
    pub stay: NextPass,
    pub moved: NextPass,
    /// Messages the moved enrolment's next pass would schedule in the patient's quiet hours.
    pub quiet_hour_messages: usize,
    pub differs: bool,
}

/// Counts per state or institution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub enrolments: usize,
    pub differ: usize,
    pub cancels: usize,
    pub urgent_cancels: usize,
    pub quiet_hour_messages: usize,
}

impl Tally {
    fn add(&mut self, p: &Planned) {
        self.enrolments += 1;
        self.differ += usize::from(p.differs);
        self.cancels += p.cancels.len();
        self.urgent_cancels += p.urgent_cancels;
        self.quiet_hour_messages += p.quiet_hour_messages;
    }
}

/// What a plan would do, computed without writing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DryRun {
    pub plan: MigrationPlan,
    pub at: Timestamp,
    pub total: Tally,
    /// By the state enrolments are in now (`from → to`).
    pub by_state: BTreeMap<String, Tally>,
    pub by_institution: BTreeMap<String, Tally>,
    pub enrolments: Vec<Planned>,
}

/// The hours in which no message should be scheduled, local to the patient: `[start, end)`
/// across midnight when `start > end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: i8,
    pub end: i8,
}

impl QuietHours {
    fn contains(&self, at: Timestamp, tz: &str) -> bool {
        let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
        let h = at.to_zoned(zone).hour();
        if self.start <= self.end {
            h >= self.start && h < self.end
        } else {
            h >= self.start || h < self.end
        }
    }
}

fn programs_of<'p>(
    programs: &'p Programs,
    plan: &MigrationPlan,
) -> Result<(&'p Program, &'p Program)> {
    let get = |v: u32| {
        programs
            .get(&plan.pathway, v)
            .map(|p| p.as_ref())
            .ok_or_else(|| {
                StoreError::NotFound(format!("pathway {} v{v} is not published", plan.pathway))
            })
    };
    Ok((get(plan.from)?, get(plan.to)?))
}

/// The enrolments a plan selects: active, on the old version, narrowed by its lists; by id.
pub async fn selected(pool: &Pool, plan: &MigrationPlan) -> Result<Vec<i64>> {
    let rows = pool
        .fetch(
            "SELECT id, state, institution_id FROM enrolments WHERE pathway_id = $1 AND version = $2 AND status = 'active' ORDER BY id",
            args![&plan.pathway, i64::from(plan.from)],
        )
        .await?;
    let s = &plan.enrolments;
    Ok(rows
        .iter()
        .filter(|r| s.states.is_empty() || s.states.contains(&r.text(1)))
        .filter(|r| s.institutions.is_empty() || s.institutions.contains(&r.text(2)))
        .filter(|r| s.ids.is_empty() || s.ids.contains(&r.i64(0)))
        .map(|r| r.i64(0))
        .collect())
}

/// The enrolment as the new version would hold it: the mapped state; each variable the new
/// version declares from the plan, else the old value where it has the declared type, else the
/// declared default. Its entry time, state sequence and the instant it was checked to stay, so
/// its timers and schedules keep counting from when the patient entered the state.
pub fn moved(e: &Enrolment, plan: &MigrationPlan, new: &Program) -> Option<Enrolment> {
    let state = plan.target(&e.state, &new.pathway)?;
    let vars: BTreeMap<String, VarValue> = new
        .pathway
        .variables
        .iter()
        .map(|v| {
            let value = plan
                .variables
                .get(&v.name)
                .cloned()
                .or_else(|| e.vars.get(&v.name).filter(|x| x.type_of() == v.ty).cloned())
                .unwrap_or_else(|| v.default.clone());
            (v.name.clone(), value)
        })
        .collect();
    Some(Enrolment {
        version: plan.to,
        state,
        vars,
        ..e.clone()
    })
}

fn next_pass(result: std::result::Result<Outcome, step::StepError>) -> NextPass {
    match result {
        Ok(o) => NextPass {
            transitions: o
                .transitions
                .iter()
                .map(|t| format!("{} → {} ({})", t.from, t.to, t.because))
                .collect(),
            work: o
                .actions
                .iter()
                .filter(|a| !matches!(a.action.kind(), "note" | "goal"))
                .map(|a| {
                    format!(
                        "{}:{} {}",
                        a.action.kind(),
                        a.action.work_ref().unwrap_or("-"),
                        a.key
                    )
                })
                .collect(),
            error: None,
        },
        Err(e) => NextPass {
            error: Some(e.to_string()),
            ..NextPass::default()
        },
    }
}

/// Whether the move ends the open work of the enrolment's current state: the new version lacks
/// the state and the plan cancels such work.
fn ends_current_work(e: &Enrolment, plan: &MigrationPlan, new: &Program) -> bool {
    plan.open_work == OpenWork::Cancel && new.pathway.state(&e.state).is_none()
}

/// The open work of state entry `seq` that leaving the state ends, as the outcome policy says:
/// `(label, urgent)`.
async fn work_ended(
    tx: &mut Tx,
    enrolment: i64,
    seq: u32,
    at: Timestamp,
) -> Result<Vec<(String, bool)>> {
    let mut out = Vec::new();
    let ends = |w| outcome::ends(w, Cause::StateLeft);
    let rows = tx
        .fetch(
            "SELECT COALESCE(task_ref, '-'), keep, priority FROM tasks WHERE enrolment_id = $1 AND state_seq = $2 AND status IN ('open', 'claimed') ORDER BY id",
            args![enrolment, i64::from(seq)],
        )
        .await?;
    for r in rows {
        if ends(Work::Task {
            keep: r.i64(1) != 0,
        }) {
            let urgent = super::queries::priority_name(r.i64(2)) == "urgent";
            out.push((
                format!(
                    "task:{}{}",
                    r.text(0),
                    if urgent { " (urgent)" } else { "" }
                ),
                urgent,
            ));
        }
    }
    if ends(Work::FollowUp) {
        let outlive = outcome::outlives_once_due(Work::FollowUp, Cause::StateLeft);
        let rows = tx
            .fetch(
                "SELECT COALESCE(follow_up_ref, '-'), send_at, urgent FROM follow_ups WHERE enrolment_id = $1 AND state_seq = $2 AND status = 'scheduled' ORDER BY id",
                args![enrolment, i64::from(seq)],
            )
            .await?;
        for r in rows
            .iter()
            .filter(|r| !outlive || r.i64(1) > at.as_second())
        {
            out.push((format!("follow_up:{}", r.text(0)), r.i64(2) != 0));
        }
    }
    if ends(Work::ScalePush) {
        let rows = tx
            .fetch(
                "SELECT COALESCE(push_ref, scale) FROM scale_pushes WHERE enrolment_id = $1 AND state_seq = $2 AND status = 'pending' ORDER BY id",
                args![enrolment, i64::from(seq)],
            )
            .await?;
        out.extend(
            rows.iter()
                .map(|r| (format!("scale_push:{}", r.text(0)), false)),
        );
    }
    Ok(out)
}

/// Runs `plan` against the database without writing: for each selected enrolment, where it
/// would go, what the move would end, and what its next pass at `now` would do staying and moved.
pub async fn dry_run(
    pool: &Pool,
    programs: &Programs,
    plan: &MigrationPlan,
    quiet: QuietHours,
    now: Timestamp,
) -> Result<DryRun> {
    let (old, new) = programs_of(programs, plan)?;
    let ids = selected(pool, plan).await?;
    let mut report = DryRun {
        plan: plan.clone(),
        at: now,
        total: Tally::default(),
        by_state: BTreeMap::new(),
        by_institution: BTreeMap::new(),
        enrolments: Vec::with_capacity(ids.len()),
    };
    for chunk in ids.chunks(200) {
        let mut tx = pool.begin().await?;
        let mut batch = Vec::with_capacity(chunk.len());
        for id in chunk {
            batch.push(load_enrolment(&mut tx, *id).await?);
        }
        let facts = load_facts(&mut tx, &batch, now).await?;
        for d in &batch {
            let e = &d.enrolment;
            let Some(m) = moved(e, plan, new) else {
                continue;
            };
            let (f, pending) = facts.get(&e.id).cloned().unwrap_or_default();
            let stay = next_pass(step::step(old, e, &f, &pending, now));
            let result = step::step(new, &m, &f, &pending, now);
            let quiet_hour_messages = result.as_ref().map_or(0, |o| {
                o.actions
                    .iter()
                    .filter(|a| matches!(&a.action, step::Produced::FollowUp { send_at, .. } if quiet.contains(*send_at, &e.tz)))
                    .count()
            });
            let moved_pass = next_pass(result);
            let ended = if ends_current_work(e, plan, new) {
                work_ended(&mut tx, e.id, e.state_seq, now).await?
            } else {
                Vec::new()
            };
            let strip = |p: &NextPass| -> Vec<String> {
                p.work
                    .iter()
                    .map(|w| w.split(' ').next().unwrap_or("").to_string())
                    .collect()
            };
            let differs = m.state != e.state
                || !ended.is_empty()
                || stay.transitions != moved_pass.transitions
                || strip(&stay) != strip(&moved_pass)
                || stay.error != moved_pass.error;
            let p = Planned {
                enrolment: e.id,
                institution_id: d.institution_id.clone(),
                from_state: e.state.clone(),
                to_state: m.state.clone(),
                urgent_cancels: ended.iter().filter(|(_, u)| *u).count(),
                cancels: ended.into_iter().map(|(l, _)| l).collect(),
                stay,
                moved: moved_pass,
                quiet_hour_messages,
                differs,
            };
            report.total.add(&p);
            report
                .by_state
                .entry(format!("{} → {}", p.from_state, p.to_state))
                .or_default()
                .add(&p);
            report
                .by_institution
                .entry(p.institution_id.clone())
                .or_default()
                .add(&p);
            report.enrolments.push(p);
        }
        tx.rollback().await?;
    }
    Ok(report)
}

/// What applying a plan did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub run: String,
    pub moved: u64,
    /// Selected enrolments moved by an earlier, interrupted application of the same run.
    pub already_moved: u64,
    /// Selected enrolments that changed since they were selected (ended, or moved otherwise).
    pub skipped: u64,
    pub work_ended: u64,
    pub batches: u64,
    /// Whether every selected enrolment has been dealt with (false when stopped early).
    pub complete: bool,
}

/// How long a run's lease lasts without a batch renewing it.
pub const LEASE_SECONDS: i64 = 60;

/// Takes the run's lease for `owner`, creating the run on first use. `Conflict` when another
/// owner holds a live lease, the run is finished, or its id names another plan.
async fn lease(tx: &mut Tx, plan: &MigrationPlan, owner: &str, now: Timestamp) -> Result<()> {
    let text = serde_json::to_string(plan).unwrap_or_default();
    tx.exec(
        "INSERT INTO migration_runs (id, pathway_id, from_version, to_version, plan, status, started_at) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6) ON CONFLICT (id) DO NOTHING",
        args![&plan.id, &plan.pathway, i64::from(plan.from), i64::from(plan.to), &text, now.as_second()],
    )
    .await?;
    let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
    let row = tx
        .fetch_one(
            &format!(
                "SELECT status, owner, lease_until, plan FROM migration_runs WHERE id = $1{lock}"
            ),
            args![&plan.id],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("migration run {}", plan.id)))?;
    if row.text(3) != text {
        return Err(StoreError::Conflict(format!(
            "migration run `{}` was started with another plan; give this plan another id",
            plan.id
        )));
    }
    match row.text(0).as_str() {
        "running" => {}
        status => {
            return Err(StoreError::Conflict(format!(
                "migration run `{}` is {status}",
                plan.id
            )));
        }
    }
    if let (Some(holder), Some(until)) = (row.opt_text(1), row.opt_i64(2))
        && holder != owner
        && until > now.as_second()
    {
        return Err(StoreError::Conflict(format!(
            "migration run `{}` is being applied by {holder} (lease until {}); a second application refuses",
            plan.id,
            ts(until)
        )));
    }
    tx.exec(
        "UPDATE migration_runs SET owner = $2, lease_until = $3 WHERE id = $1",
        args![&plan.id, owner, now.as_second() + LEASE_SECONDS],
    )
    .await?;
    Ok(())
}

/// Options of an application.
#[derive(Clone)]
pub struct ApplyOptions<'a> {
    /// Who applies it (the lease holder and the audit's actor). The same owner may take over a
    /// run it left unfinished (after a crash) at once; another waits for the lease to run out.
    pub owner: &'a str,
    pub batch_size: usize,
    /// Stop after this many batches, leaving the run to be completed by a later application.
    pub max_batches: Option<u64>,
    /// Told after each committed batch.
    pub progress: Option<&'a (dyn Fn(&Applied) + Sync)>,
}

/// Moves the enrolments `plan` selects, in batches of one transaction each (see the module).
pub async fn apply(
    pool: &Pool,
    programs: &Programs,
    plan: &MigrationPlan,
    options: &ApplyOptions<'_>,
    now: Timestamp,
) -> Result<Applied> {
    let (_, new) = programs_of(programs, plan)?;
    let finished = pool
        .fetch(
            "SELECT r.status, (SELECT COUNT(*) FROM migration_moves m WHERE m.run_id = r.id) FROM migration_runs r WHERE r.id = $1",
            args![&plan.id],
        )
        .await?;
    if let Some(r) = finished.first()
        && r.text(0) == "done"
    {
        // Run again after it finished: nothing to do.
        return Ok(Applied {
            run: plan.id.clone(),
            already_moved: r.i64(1) as u64,
            complete: true,
            ..Applied::default()
        });
    }
    let mut tx = pool.begin().await?;
    lease(&mut tx, plan, options.owner, now).await?;
    tx.commit().await?;
    let ids = selected(pool, plan).await?;
    let mut done = Applied {
        run: plan.id.clone(),
        ..Applied::default()
    };
    let mut moved_before: std::collections::HashSet<i64> = pool
        .fetch(
            "SELECT enrolment_id FROM migration_moves WHERE run_id = $1",
            args![&plan.id],
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect();
    done.already_moved = moved_before.len() as u64;
    let todo: Vec<i64> = ids
        .into_iter()
        .filter(|id| !moved_before.contains(id))
        .collect();
    for chunk in todo.chunks(options.batch_size.max(1)) {
        if options.max_batches.is_some_and(|m| done.batches >= m) {
            return Ok(done);
        }
        let mut tx = pool.begin().await?;
        lease(&mut tx, plan, options.owner, now).await?;
        let mut patients = Vec::new();
        for id in chunk {
            let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
            let fresh = tx
                .fetch_one(
                    &format!("SELECT 1 FROM enrolments WHERE id = $1 AND pathway_id = $2 AND version = $3 AND status = 'active'{lock}"),
                    args![*id, &plan.pathway, i64::from(plan.from)],
                )
                .await?
                .is_some();
            let seen = tx
                .fetch_one(
                    "SELECT 1 FROM migration_moves WHERE run_id = $1 AND enrolment_id = $2",
                    args![&plan.id, *id],
                )
                .await?
                .is_some();
            if !fresh || seen {
                done.skipped += 1;
                continue;
            }
            let d = load_enrolment(&mut tx, *id).await?;
            let e = &d.enrolment;
            let Some(m) = moved(e, plan, new) else {
                done.skipped += 1;
                continue;
            };
            let ended = if ends_current_work(e, plan, new) {
                super::end_state_work(
                    &mut tx,
                    e.id,
                    e.state_seq,
                    &format!("migrated to v{} by {}", plan.to, plan.id),
                    now,
                )
                .await?
            } else {
                0
            };
            tx.exec(
                "UPDATE enrolments SET version = $2, state = $3, vars = $4, next_wake_at = $5, row_version = row_version + 1 WHERE id = $1",
                args![
                    e.id,
                    i64::from(plan.to),
                    &m.state,
                    serde_json::to_string(&m.vars).unwrap_or_default(),
                    now.as_second()
                ],
            )
            .await?;
            tx.exec(
                "INSERT INTO migration_moves (run_id, enrolment_id, from_version, from_state, to_state, vars_before, cancelled, moved_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                args![
                    &plan.id,
                    e.id,
                    i64::from(plan.from),
                    &e.state,
                    &m.state,
                    serde_json::to_string(&e.vars).unwrap_or_default(),
                    ended as i64,
                    now.as_second()
                ],
            )
            .await?;
            tx.exec(
                "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'migrated', $5)",
                args![
                    format!("migrate:{}:{}", plan.id, e.id),
                    &d.patient_id,
                    e.id,
                    now.as_second(),
                    json!({"run": plan.id, "from_version": plan.from, "to_version": plan.to,
                           "from_state": e.state, "to_state": m.state, "work_ended": ended}).to_string()
                ],
            )
            .await?;
            done.moved += 1;
            done.work_ended += ended;
            moved_before.insert(e.id);
            patients.push(d.patient_id.clone());
        }
        super::queries::audit(
            &mut tx,
            &AuditEntry::new(
                options.owner,
                None,
                "enrolment.migrate",
                &format!("migration/{}", plan.id),
                &patients,
                "ok",
                "cli",
                now,
            ),
        )
        .await?;
        tx.commit().await?;
        done.batches += 1;
        if let Some(progress) = options.progress {
            progress(&done);
        }
    }
    pool.exec(
        "UPDATE migration_runs SET status = 'done', finished_at = $2, owner = NULL, lease_until = NULL WHERE id = $1 AND status = 'running'",
        args![&plan.id, now.as_second()],
    )
    .await?;
    done.complete = true;
    Ok(done)
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RolledBack {
    pub run: String,
    pub restored: u64,
    /// Enrolments that moved on (another state, ended) since the run and were left as they are.
    pub left: Vec<i64>,
    /// Work the run ended, which a rollback does not reopen.
    pub work_not_reopened: u64,
}

/// Moves the enrolments of run `run` back to the version, state and variables they had, where
/// they are still where the run put them; one transaction, audited.
pub async fn rollback(pool: &Pool, run: &str, by: &str, now: Timestamp) -> Result<RolledBack> {
    let mut tx = pool.begin().await?;
    let lock = if tx.is_postgres() { " FOR UPDATE" } else { "" };
    let r = tx
        .fetch_one(
            &format!(
                "SELECT status, pathway_id, to_version FROM migration_runs WHERE id = $1{lock}"
            ),
            args![run],
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("migration run {run}")))?;
    if r.text(0) == "rolled_back" {
        return Err(StoreError::Conflict(format!(
            "migration run `{run}` is already rolled back"
        )));
    }
    let (pathway, to) = (r.text(1), r.i64(2));
    let moves = tx
        .fetch(
            "SELECT m.enrolment_id, m.from_version, m.from_state, m.to_state, m.vars_before, m.cancelled, e.version, e.state, e.status, e.patient_id \
             FROM migration_moves m JOIN enrolments e ON e.id = m.enrolment_id WHERE m.run_id = $1 AND m.rolled_back_at IS NULL ORDER BY m.enrolment_id",
            args![run],
        )
        .await?;
    let mut out = RolledBack {
        run: run.to_string(),
        ..RolledBack::default()
    };
    let mut patients = Vec::new();
    for m in &moves {
        out.work_not_reopened += m.i64(5) as u64;
        let still = m.i64(6) == to && m.text(7) == m.text(3) && m.text(8) == "active";
        if !still {
            out.left.push(m.i64(0));
            continue;
        }
        tx.exec(
            "UPDATE enrolments SET version = $2, state = $3, vars = $4, next_wake_at = $5, row_version = row_version + 1 WHERE id = $1",
            args![m.i64(0), m.i64(1), m.text(2), m.text(4), now.as_second()],
        )
        .await?;
        tx.exec(
            "UPDATE migration_moves SET rolled_back_at = $3 WHERE run_id = $1 AND enrolment_id = $2",
            args![run, m.i64(0), now.as_second()],
        )
        .await?;
        tx.exec(
            "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'migration_rolled_back', $5)",
            args![
                format!("rollback:{run}:{}", m.i64(0)),
                m.text(9),
                m.i64(0),
                now.as_second(),
                json!({"run": run, "pathway": pathway, "to_version": m.i64(1), "to_state": m.text(2)}).to_string()
            ],
        )
        .await?;
        out.restored += 1;
        patients.push(m.text(9));
    }
    tx.exec(
        "UPDATE migration_runs SET status = 'rolled_back', finished_at = $2, owner = NULL, lease_until = NULL WHERE id = $1",
        args![run, now.as_second()],
    )
    .await?;
    super::queries::audit(
        &mut tx,
        &AuditEntry::new(
            by,
            None,
            "enrolment.migrate_rollback",
            &format!("migration/{run}"),
            &patients,
            "ok",
            "cli",
            now,
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(out)
}
