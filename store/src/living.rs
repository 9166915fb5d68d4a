//! What the simulated people of a living history (`carepath demo`) notice of the store before they
//! act through the functions the admin API calls: where each enrolment stands, and which
//! questionnaires wait for an answer. Reads only; nothing here writes or is audited (the actions
//! that follow are).

use super::{Pool, Result};
use crate::args;

/// Where an enrolment stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolmentAt {
    pub id: i64,
    pub patient_id: String,
    pub state: String,
    pub state_seq: i64,
    /// When the current state was entered (Unix seconds).
    pub entered_at: i64,
    pub status: String,
}

/// Every enrolment with its state, by id.
pub async fn enrolments(pool: &Pool) -> Result<Vec<EnrolmentAt>> {
    let rows = pool
        .fetch(
            "SELECT id, patient_id, state, state_seq, entered_at, status FROM enrolments ORDER BY id",
            vec![],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| EnrolmentAt {
            id: r.i64(0),
            patient_id: r.text(1),
            state: r.text(2),
            state_seq: r.i64(3),
            entered_at: r.i64(4),
            status: r.text(5),
        })
        .collect())
}

/// A questionnaire pushed to a patient and not yet answered, expired or cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPush {
    pub id: i64,
    pub patient_id: String,
    pub institution_id: String,
    pub scale: String,
    pub created_at: i64,
    pub due_at: i64,
    pub expires_at: Option<i64>,
}

/// The pending pushes created up to `now`, oldest first.
pub async fn pending_pushes(pool: &Pool, now: i64) -> Result<Vec<PendingPush>> {
    let rows = pool
        .fetch(
            "SELECT id, patient_id, institution_id, scale, created_at, due_at, expires_at FROM scale_pushes \
             WHERE status = 'pending' AND created_at <= $1 ORDER BY created_at, id",
            args![now],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PendingPush {
            id: r.i64(0),
            patient_id: r.text(1),
            institution_id: r.text(2),
            scale: r.text(3),
            created_at: r.i64(4),
            due_at: r.i64(5),
            expires_at: r.opt_i64(6),
        })
        .collect())
}
