//! Readings posted in batches by devices and staff; alarm rules are evaluated at once.

use axum::Json;
use axum::extract::State;
use carepath_engine::observations::Reading;
use carepath_engine::scheduler;
use carepath_engine::store::queries;
use serde::Serialize;

use super::Body;
use crate::{ApiError, AppState, Call};

/// At most this many readings per request.
const MAX_READINGS: usize = 1_000;

/// A reading of the batch that was refused, by its index in the batch.
#[derive(Serialize)]
pub(crate) struct RefusedReading {
    index: usize,
    reason: String,
}

/// What became of a batch.
#[derive(Serialize)]
pub(crate) struct Ingested {
    accepted: u64,
    duplicates: u64,
    refused: Vec<RefusedReading>,
    /// Alarm episodes the batch opened, and their urgent tasks.
    alarm_episodes: Vec<i64>,
    alarm_tasks: Vec<i64>,
    /// Open alarm episodes the batch cleared.
    alarms_cleared: u64,
}

pub(crate) async fn post(
    State(s): State<AppState>,
    call: Call,
    Body(readings): Body<Vec<Reading>>,
) -> Result<Json<Ingested>, ApiError> {
    if readings.len() > MAX_READINGS {
        return Err(ApiError::BadRequest(
            "at most 1,000 readings per request".into(),
        ));
    }
    let now = call.now;
    let summary =
        queries::ingest_visible(&s.pool, &call.caller, &readings, &call.remote, now).await?;
    let programs = s.programs();
    for e in &summary.enrolments_to_advance {
        scheduler::advance(&s.pool, &programs, *e, now).await?;
    }
    Ok(Json(Ingested {
        accepted: summary.accepted,
        duplicates: summary.duplicates,
        refused: summary
            .refused
            .into_iter()
            .map(|(index, reason)| RefusedReading { index, reason })
            .collect(),
        alarm_episodes: summary.alarms.episodes,
        alarm_tasks: summary.alarms.tasks,
        alarms_cleared: summary.alarms.cleared,
    }))
}
