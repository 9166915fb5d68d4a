//! Indicators for the caller's institution over a period.

use axum::Json;
use axum::extract::State;
use carepath_engine::store::indicators;
use serde::Deserialize;
use serde_json::Value;

use super::Params;
use crate::{ApiError, AppState, Call};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KpiQuery {
    from: Option<String>,
    to: Option<String>,
    /// Break the totals down by `pathway`, `role` or `staff`.
    by: Option<String>,
    /// Count one pathway only.
    pathway: Option<String>,
}

fn date_start(name: &str, d: &str) -> Result<i64, ApiError> {
    let date: jiff::civil::Date = d
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be a date such as 2026-11-01")))?;
    Ok(date
        .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .timestamp()
        .as_second())
}

pub(crate) async fn read(
    State(s): State<AppState>,
    call: Call,
    Params(q): Params<KpiQuery>,
) -> Result<Json<Value>, ApiError> {
    let now = call.now.as_second();
    let to =
        q.to.as_deref()
            .map(|d| date_start("to", d))
            .transpose()?
            .unwrap_or(now + 1);
    let from = q
        .from
        .as_deref()
        .map(|d| date_start("from", d))
        .transpose()?
        .unwrap_or(to - 30 * 86_400);
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    let by =
        q.by.as_deref()
            .map(|b| {
                indicators::By::parse(b).ok_or_else(|| {
                    ApiError::BadRequest(format!("`by` must be pathway, role or staff, not `{b}`"))
                })
            })
            .transpose()?;
    let programs = s.programs();
    let latest = programs.latest();
    if let Some(p) = &q.pathway
        && !latest.iter().any(|prog| &prog.pathway.id == p)
    {
        return Err(ApiError::BadRequest(format!("no published pathway `{p}`")));
    }
    let pathways: Vec<&carepath_dsl::Pathway> = latest.iter().map(|p| &p.pathway).collect();
    let req = indicators::KpiRequest {
        scope: indicators::Scope {
            institution: &call.caller.institution_id,
            pathway: q.pathway.as_deref(),
        },
        period: indicators::Period {
            from,
            to,
            as_of: now,
        },
        by,
    };
    Ok(Json(indicators::kpis(&s.pool, &pathways, &req).await?))
}
