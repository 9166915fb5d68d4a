//! Two-way referrals in the alliance: those sent by or addressed to the caller's institution,
//! and their decisions.

use axum::Json;
use axum::extract::{Path, State};
use carepath_engine::scheduler;
use carepath_engine::store::queries::{self, Decided, ReferralView};
use serde::{Deserialize, Serialize};

use super::Params;
use crate::{ApiError, AppState, Call};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReferralQuery {
    status: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ReferralList {
    referrals: Vec<ReferralView>,
}

pub(crate) async fn list(
    State(s): State<AppState>,
    call: Call,
    Params(q): Params<ReferralQuery>,
) -> Result<Json<ReferralList>, ApiError> {
    let c = &call.caller;
    let status = q.status.as_deref();
    let referrals =
        queries::list_referrals(&s.pool, &s.audit, c, status, &call.remote, call.now).await?;
    Ok(Json(ReferralList { referrals }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct DecisionBody {
    reason: Option<String>,
}

pub(crate) async fn decide(
    State(s): State<AppState>,
    Path((id, decision)): Path<(i64, String)>,
    call: Call,
    body: Option<Json<DecisionBody>>,
) -> Result<Json<Decided>, ApiError> {
    if !matches!(decision.as_str(), "accept" | "reject" | "arrive") {
        return Err(ApiError::NotFound(format!(
            "no referral action `{decision}`; use accept, reject or arrive"
        )));
    }
    let b = body.map(|Json(b)| b).unwrap_or_default();
    Ok(Json(
        decide_as(&s, &call, id, &decision, b.reason.as_deref()).await?,
    ))
}

/// Decides a referral for a caller and advances its enrolment at once: what
/// `POST /referrals/{id}/{decision}` and the workstation's referral inbox both do.
pub(crate) async fn decide_as(
    s: &AppState,
    call: &Call,
    id: i64,
    decision: &str,
    reason: Option<&str>,
) -> Result<Decided, ApiError> {
    let now = call.now;
    let c = &call.caller;
    let out = queries::decide_referral(&s.pool, c, id, decision, reason, &call.remote, now)
        .await
        .map_err(ApiError::refused_by_store)?;
    scheduler::advance(&s.pool, &s.programs(), out.enrolment_id, now).await?;
    Ok(out)
}
