//! A simulated cohort's work written as stored rows, so that the store's indicators can be
//! computed over what a simulation did: enrolments, the tasks they made (with due, completion
//! and outcome), scale pushes and their answers, hospital events and referrals.
//!
//! The rows are what the scheduler would have written for the same history, reduced to the
//! columns the indicators read; each simulated patient becomes a patient `sim-<n>` with one
//! enrolment. The records are plain data, so the simulator fills them without touching a
//! database.

use jiff::Timestamp;

use super::{NewPatient, Pool, Result};
use crate::args;

/// One simulated enrolment; `patient` is the simulation's patient number, which the other
/// records refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub patient: u32,
    pub institution: String,
    pub pathway: String,
    pub version: i64,
    pub entry_point: String,
    pub state: String,
    pub enrolled_at: i64,
    /// When it completed, was withdrawn or failed; `None` while active.
    pub ended_at: Option<i64>,
    /// `active`, `completed`, `withdrawn` or `error`.
    pub status: String,
}

/// How a task stands at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Open,
    Done,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Open => "open",
            TaskStatus::Done => "done",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

/// One staff task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub patient: u32,
    pub institution: String,
    pub task_ref: Option<String>,
    pub role: String,
    pub created_at: i64,
    pub due_at: i64,
    pub status: TaskStatus,
    /// When it was done or cancelled.
    pub closed_at: Option<i64>,
    pub outcome: Option<String>,
}

/// One scale pushed to the patient, and when it was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePush {
    pub patient: u32,
    pub institution: String,
    pub scale: String,
    pub created_at: i64,
    pub due_at: i64,
    pub answered_at: Option<i64>,
}

/// One event of an enrolment (`admitted`, `discharged`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub patient: u32,
    pub name: String,
    pub at: i64,
}

/// One referral requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    pub patient: u32,
    /// `up` or `down`.
    pub direction: String,
    pub from_institution: String,
    pub to_kind: String,
    pub requested_at: i64,
}

/// Everything a simulated cohort did that the indicators count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cohort {
    pub enrolments: Vec<Enrolment>,
    pub tasks: Vec<Task>,
    pub scale_pushes: Vec<ScalePush>,
    pub events: Vec<Event>,
    pub referrals: Vec<Referral>,
}

impl Cohort {
    /// Appends another part of the cohort.
    pub fn extend(&mut self, o: &Cohort) {
        self.enrolments.extend(o.enrolments.iter().cloned());
        self.tasks.extend(o.tasks.iter().cloned());
        self.scale_pushes.extend(o.scale_pushes.iter().cloned());
        self.events.extend(o.events.iter().cloned());
        self.referrals.extend(o.referrals.iter().cloned());
    }
}

/// Writes a cohort into the store, in one transaction. Needs the institutions and the pathway
/// versions in place. Records of a patient without an enrolment are skipped.
pub async fn write(pool: &Pool, c: &Cohort, tz: &str, now: Timestamp) -> Result<()> {
    let mut tx = pool.begin().await?;
    let patient_id = |n: u32| format!("sim-{n}");
    let patients: Vec<NewPatient> = c
        .enrolments
        .iter()
        .map(|e| NewPatient {
            id: patient_id(e.patient),
            institution_id: e.institution.clone(),
            birth_date: None,
            sex: "unknown".into(),
            tz: tz.into(),
            contact_enc: None,
            preferred_channel: None,
            home_institution: None,
            lang: None,
        })
        .collect();
    super::insert_patients(&mut tx, &patients, now).await?;
    let mut ids = std::collections::HashMap::new();
    for e in &c.enrolments {
        let row = tx
            .fetch_one(
                "INSERT INTO enrolments (patient_id, institution_id, pathway_id, version, entry_point, state, \
                 state_seq, entered_at, vars, status, enrolled_at, ended_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 1, $7, '{}', $8, $7, $9) RETURNING id",
                args![
                    patient_id(e.patient),
                    e.institution.as_str(),
                    e.pathway.as_str(),
                    e.version,
                    e.entry_point.as_str(),
                    e.state.as_str(),
                    e.enrolled_at,
                    e.status.as_str(),
                    e.ended_at,
                ],
            )
            .await?;
        if let Some(r) = row {
            ids.insert(e.patient, r.i64(0));
        }
    }
    for (i, t) in c.tasks.iter().enumerate() {
        let Some(&enrolment) = ids.get(&t.patient) else {
            continue;
        };
        let completed = (t.status == TaskStatus::Done)
            .then_some(t.closed_at)
            .flatten();
        tx.exec(
            "INSERT INTO tasks (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, \
             title_zh, title_en, priority, status, due_at, created_at, outcome, completed_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, '', '', 1, $7, $8, $9, $10, $11)",
            args![
                format!("sim:task:{i}"),
                enrolment,
                patient_id(t.patient),
                t.institution.as_str(),
                t.task_ref.clone(),
                t.role.as_str(),
                t.status.as_str(),
                t.due_at,
                t.created_at,
                t.outcome.clone(),
                completed,
            ],
        )
        .await?;
    }
    for (i, s) in c.scale_pushes.iter().enumerate() {
        let Some(&enrolment) = ids.get(&s.patient) else {
            continue;
        };
        let status = if s.answered_at.is_some() {
            "answered"
        } else {
            "pending"
        };
        tx.exec(
            "INSERT INTO scale_pushes (dedupe_key, enrolment_id, patient_id, institution_id, state_seq, scale, \
             due_at, reminders, status, created_at, answered_at) \
             VALUES ($1, $2, $3, $4, 1, $5, $6, '[]', $7, $8, $9)",
            args![
                format!("sim:scale:{i}"),
                enrolment,
                patient_id(s.patient),
                s.institution.as_str(),
                s.scale.as_str(),
                s.due_at,
                status,
                s.created_at,
                s.answered_at,
            ],
        )
        .await?;
    }
    for ev in &c.events {
        let Some(&enrolment) = ids.get(&ev.patient) else {
            continue;
        };
        tx.exec(
            "INSERT INTO events (enrolment_id, name, at, created_at) VALUES ($1, $2, $3, $3)",
            args![enrolment, ev.name.as_str(), ev.at],
        )
        .await?;
    }
    for (i, r) in c.referrals.iter().enumerate() {
        let Some(&enrolment) = ids.get(&r.patient) else {
            continue;
        };
        tx.exec(
            "INSERT INTO referrals (dedupe_key, enrolment_id, patient_id, direction, to_kind, from_institution, \
             status, requested_at, accept_by) VALUES ($1, $2, $3, $4, $5, $6, 'requested', $7, $8)",
            args![
                format!("sim:referral:{i}"),
                enrolment,
                patient_id(r.patient),
                r.direction.as_str(),
                r.to_kind.as_str(),
                r.from_institution.as_str(),
                r.requested_at,
                r.requested_at + 86_400,
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
