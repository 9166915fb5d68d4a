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
    let (from, to) = period(now, q.from.as_deref(), q.to.as_deref())?;
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
    published(&programs, q.pathway.as_deref())?;
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

/// The period `[from, to)` of an indicator request: dates (midnights in the hospital's zone), by
/// default the 30 days up to `now`.
pub(crate) fn period(
    now: i64,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(i64, i64), ApiError> {
    let to = to
        .map(|d| date_start("to", d))
        .transpose()?
        .unwrap_or(now + 1);
    let from = from
        .map(|d| date_start("from", d))
        .transpose()?
        .unwrap_or(to - 30 * 86_400);
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    Ok((from, to))
}

/// Refuses a pathway filter naming no published pathway.
pub(crate) fn published(
    programs: &carepath_engine::Programs,
    pathway: Option<&str>,
) -> Result<(), ApiError> {
    match pathway {
        Some(p) if !programs.latest().iter().any(|prog| prog.pathway.id == p) => {
            Err(ApiError::BadRequest(format!("no published pathway `{p}`")))
        }
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RowsQuery {
    from: Option<String>,
    to: Option<String>,
    pathway: Option<String>,
    /// One staff member's share (the tasks assigned to them).
    staff: Option<String>,
}

/// The rows behind a built-in indicator's figure, as `GET /kpis` counts it over the same period.
#[derive(serde::Serialize)]
pub(crate) struct LineList {
    pub(crate) indicator: String,
    pub(crate) institution: String,
    pub(crate) pathway: Option<String>,
    pub(crate) staff: Option<String>,
    pub(crate) from: String,
    pub(crate) to: String,
    /// Counted from the rows as the figure is counted: a whole number, or days for
    /// `average_length_of_stay_days`'s numerator.
    pub(crate) numerator: Value,
    pub(crate) denominator: Value,
    pub(crate) rows: Vec<indicators::LineRow>,
}

/// Which figure a line list is asked for: the indicator, the period's dates, and optionally one
/// pathway and one staff member.
#[derive(Default, Clone, Copy)]
pub(crate) struct Figure<'a> {
    pub(crate) indicator: &'a str,
    pub(crate) from: Option<&'a str>,
    pub(crate) to: Option<&'a str>,
    pub(crate) pathway: Option<&'a str>,
    pub(crate) staff: Option<&'a str>,
}

/// Reads a line list for a caller: what `GET /kpis/{indicator}/rows` and the workstation's
/// drill-down both serve.
pub(crate) async fn line_list(
    s: &AppState,
    call: &Call,
    figure: Figure<'_>,
) -> Result<LineList, ApiError> {
    let Figure {
        indicator,
        from,
        to,
        pathway,
        staff,
    } = figure;
    let now = call.now.as_second();
    let (from, to) = period(now, from, to)?;
    published(&s.programs(), pathway)?;
    let scope = indicators::Scope {
        institution: &call.caller.institution_id,
        pathway,
    };
    let p = indicators::Period {
        from,
        to,
        as_of: now,
    };
    let rows = indicators::read_line_list(
        &s.pool,
        &s.audit,
        &call.caller,
        (&scope, &p, indicator, staff),
        &call.remote,
        call.now,
    )
    .await?
    .ok_or_else(|| {
        ApiError::NotFound(format!(
            "no line list for `{indicator}`{}; there are line lists for {}",
            if staff.is_some() {
                " per staff member"
            } else {
                ""
            },
            if staff.is_some() {
                indicators::STAFF_LINE_LISTS
            } else {
                indicators::LINE_LISTS
            }
            .join(", ")
        ))
    })?;
    let (numerator, denominator) = indicators::line_list_counts(indicator, &rows)
        .zip(carepath_engine::indicators::definition(indicator))
        .map(|(c, d)| {
            (
                indicators::side_json(&c, d.numerator),
                indicators::side_json(&c, d.denominator),
            )
        })
        .ok_or_else(|| ApiError::NotFound(format!("no built-in indicator `{indicator}`")))?;
    Ok(LineList {
        indicator: indicator.to_string(),
        institution: call.caller.institution_id.clone(),
        pathway: pathway.map(str::to_string),
        staff: staff.map(str::to_string),
        from: carepath_engine::store::ts(from).to_string(),
        to: carepath_engine::store::ts(to).to_string(),
        numerator,
        denominator,
        rows,
    })
}

pub(crate) async fn rows(
    State(s): State<AppState>,
    axum::extract::Path(indicator): axum::extract::Path<String>,
    call: Call,
    Params(q): Params<RowsQuery>,
) -> Result<Json<LineList>, ApiError> {
    Ok(Json(
        line_list(
            &s,
            &call,
            Figure {
                indicator: &indicator,
                from: q.from.as_deref(),
                to: q.to.as_deref(),
                pathway: q.pathway.as_deref(),
                staff: q.staff.as_deref(),
            },
        )
        .await?,
    ))
}
