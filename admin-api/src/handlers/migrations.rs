//! Releasing a pathway version to the patients on it, for informaticists: the dry run of a
//! migration plan, its application, its status and its rollback (`docs/releasing.md`). The plan
//! is validated and run by the same library functions as `carepath migrate-enrolments`.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use carepath_engine::store::release::{self, QuietHours};
use serde::Deserialize;

use super::Body;
use super::catalog::unprocessable;
use crate::{ApiError, AppState, Call};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanBody {
    /// The plan, as YAML text.
    plan: String,
    /// Patient-local quiet hours for the dry run, `START-END` (default `21-8`).
    quiet_hours: Option<String>,
}

fn quiet(s: Option<&str>) -> Result<QuietHours, ApiError> {
    let s = s.unwrap_or("21-8");
    let bad = || {
        ApiError::BadRequest(format!(
            "quiet_hours `{s}` is not START-END hours, e.g. 21-8"
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let hour = |x: &str| x.trim().parse::<i8>().ok().filter(|h| (0..24).contains(h));
    Ok(QuietHours {
        start: hour(a).ok_or_else(bad)?,
        end: hour(b).ok_or_else(bad)?,
    })
}

/// The plan read against the published versions, or the 422 with its located diagnostics.
fn plan_of(
    s: &AppState,
    text: &str,
) -> Result<Result<carepath_dsl::migration::MigrationPlan, Response>, ApiError> {
    if text.len() > 256 * 1024 {
        return Err(ApiError::PayloadTooLarge(
            "a migration plan is at most 256 KiB".into(),
        ));
    }
    let programs = s.programs();
    Ok(
        carepath_dsl::migration::read_plan("plan.yaml", text.as_bytes(), |p, v| {
            programs.get(p, v).map(|x| &x.pathway)
        })
        .map_err(|diags| unprocessable(&diags)),
    )
}

pub(crate) async fn dry_run(
    State(s): State<AppState>,
    call: Call,
    Body(b): Body<PlanBody>,
) -> Result<Response, ApiError> {
    let quiet = quiet(b.quiet_hours.as_deref())?;
    let plan = match plan_of(&s, &b.plan)? {
        Ok(p) => p,
        Err(res) => return Ok(res),
    };
    let report = release::dry_run(&s.pool, &s.programs(), &plan, quiet, call.now).await?;
    Ok(Json(report).into_response())
}

pub(crate) async fn apply(
    State(s): State<AppState>,
    call: Call,
    Body(b): Body<PlanBody>,
) -> Result<Response, ApiError> {
    let plan = match plan_of(&s, &b.plan)? {
        Ok(p) => p,
        Err(res) => return Ok(res),
    };
    let applied = release::apply(
        &s.pool,
        &s.programs(),
        &plan,
        &release::ApplyOptions {
            owner: &call.caller.staff_id,
            batch_size: 500,
            max_batches: None,
            progress: None,
        },
        call.now,
    )
    .await?;
    Ok(Json(applied).into_response())
}

pub(crate) async fn status(
    State(s): State<AppState>,
    Path(id): Path<String>,
    _call: Call,
) -> Result<Json<release::RunStatus>, ApiError> {
    Ok(Json(release::status(&s.pool, &id).await?))
}

pub(crate) async fn rollback(
    State(s): State<AppState>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Json<release::RolledBack>, ApiError> {
    Ok(Json(
        release::rollback(&s.pool, &id, &call.caller.staff_id, call.now).await?,
    ))
}
