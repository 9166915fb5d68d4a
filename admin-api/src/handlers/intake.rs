//! The case manager's intake queue (收案): candidates intake rules found in the caller's
//! institution, and the decisions on one (accept, which enrols; reject, with a reason).

use axum::Json;
use axum::extract::{Path, State};
use carepath_engine::store::intake::{
    self, CANDIDATE_STATUSES, CandidateFilter, CandidateView, Decided,
};
use serde::{Deserialize, Serialize};

use super::{Body, Params};
use crate::{ApiError, AppState, Call, MAX_PAGE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IntakeQuery {
    status: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
pub(crate) struct IntakeList {
    candidates: Vec<CandidateView>,
}

pub(crate) async fn list(
    State(s): State<AppState>,
    call: Call,
    Params(q): Params<IntakeQuery>,
) -> Result<Json<IntakeList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(st) = &q.status
        && !CANDIDATE_STATUSES.contains(&st.as_str())
    {
        return Err(ApiError::BadRequest(format!(
            "status must be one of {}",
            CANDIDATE_STATUSES.join(", ")
        )));
    }
    let filter = CandidateFilter {
        status: q.status,
        limit,
    };
    let candidates = intake::list(
        &s.pool,
        &s.audit,
        &call.caller,
        &filter,
        &call.remote,
        call.now,
    )
    .await?;
    Ok(Json(IntakeList { candidates }))
}

pub(crate) async fn accept(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
) -> Result<Json<Decided>, ApiError> {
    let out = intake::accept(
        &s.pool,
        &s.programs(),
        &call.caller,
        id,
        &call.remote,
        call.now,
    )
    .await
    .map_err(ApiError::refused_by_store)?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectBody {
    reason: String,
}

pub(crate) async fn reject(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
    Body(b): Body<RejectBody>,
) -> Result<Json<Decided>, ApiError> {
    let out = intake::reject(&s.pool, &call.caller, id, &b.reason, &call.remote, call.now)
        .await
        .map_err(ApiError::refused_by_store)?;
    Ok(Json(out))
}
