//! Alarm episodes: those of the caller's institution for the caller's roles, and the actions
//! on one (acknowledge, resolve with a reason).

use axum::Json;
use axum::extract::{Path, State};
use carepath_engine::store::alarms::{
    self, EPISODE_STATUSES, EpisodeActed, EpisodeAction, EpisodeFilter, EpisodeView,
};
use serde::{Deserialize, Serialize};

use super::Params;
use crate::{ApiError, AppState, Call, MAX_PAGE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlarmQuery {
    status: Option<String>,
    role: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
pub(crate) struct AlarmList {
    alarms: Vec<EpisodeView>,
    next_cursor: Option<String>,
}

pub(crate) async fn list(
    State(s): State<AppState>,
    call: Call,
    Params(q): Params<AlarmQuery>,
) -> Result<Json<AlarmList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(st) = &q.status
        && !EPISODE_STATUSES.iter().any(|(s, _)| s == st)
    {
        let known: Vec<&str> = EPISODE_STATUSES.iter().map(|(s, _)| *s).collect();
        return Err(ApiError::BadRequest(format!(
            "status must be one of {}",
            known.join(", ")
        )));
    }
    let after = match &q.cursor {
        Some(c) => Some(
            c.parse::<i64>()
                .map_err(|_| ApiError::BadRequest("cursor is not one this API returned".into()))?,
        ),
        None => None,
    };
    let filter = EpisodeFilter {
        status: q.status,
        role: q.role,
        after,
        patient: None,
        limit,
    };
    let episodes = alarms::list_episodes(
        &s.pool,
        &s.audit,
        &call.caller,
        &filter,
        &call.remote,
        call.now,
    )
    .await?;
    let next_cursor = if episodes.len() as i64 == limit {
        episodes.last().map(|e| e.id.to_string())
    } else {
        None
    };
    Ok(Json(AlarmList {
        alarms: episodes,
        next_cursor,
    }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlarmBody {
    reason: Option<String>,
}

pub(crate) async fn act(
    State(s): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    call: Call,
    body: Option<Json<AlarmBody>>,
) -> Result<Json<EpisodeActed>, ApiError> {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let act = match action.as_str() {
        "acknowledge" => EpisodeAction::Acknowledge,
        "resolve" => EpisodeAction::Resolve {
            reason: b
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| ApiError::BadRequest("resolving needs a `reason`".into()))?,
        },
        other => {
            return Err(ApiError::NotFound(format!(
                "no alarm action `{other}`; use acknowledge or resolve"
            )));
        }
    };
    let out = alarms::act_on_episode(&s.pool, &call.caller, id, act, &call.remote, call.now)
        .await
        .map_err(ApiError::refused_by_store)?;
    Ok(Json(out))
}
