//! Task boards: a page of the caller's boards, and the actions on a task (claim, complete,
//! reassign, snooze).

use axum::Json;
use axum::extract::{Path, State};
use carepath_engine::scheduler;
use carepath_engine::store::queries::{self, QueueFilter, QueueTask, TaskActed, TaskAction};
use serde::{Deserialize, Serialize};

use super::{Params, instant};
use crate::{ApiError, AppState, Call, MAX_PAGE};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueQuery {
    role: Option<String>,
    status: Option<String>,
    assignee: Option<String>,
    due_before: Option<String>,
    due_after: Option<String>,
    pathway: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

#[derive(Serialize)]
pub(crate) struct QueuePage {
    tasks: Vec<QueueTask>,
    next_cursor: Option<String>,
}

pub(crate) async fn page(
    State(s): State<AppState>,
    call: Call,
    Params(q): Params<QueueQuery>,
) -> Result<Json<QueuePage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(st) = &q.status
        && !matches!(
            st.as_str(),
            "open" | "claimed" | "done" | "cancelled" | "active"
        )
    {
        return Err(ApiError::BadRequest(
            "status must be open, claimed, active, done or cancelled".into(),
        ));
    }
    let after = match &q.cursor {
        Some(cur) => {
            let parts: Vec<i64> = cur.split('.').filter_map(|p| p.parse().ok()).collect();
            if parts.len() != 3 {
                return Err(ApiError::BadRequest(
                    "cursor is not one this API returned".into(),
                ));
            }
            Some((parts[0], parts[1], parts[2]))
        }
        None => None,
    };
    let filter = QueueFilter {
        role: q.role,
        status: q.status,
        assignee: q.assignee,
        due_before: instant("due_before", q.due_before.as_deref())?.map(|t| t.as_second()),
        due_after: instant("due_after", q.due_after.as_deref())?.map(|t| t.as_second()),
        pathway: q.pathway,
        after,
        limit,
    };
    let c = &call.caller;
    let tasks = queries::read_queue(
        &s.pool,
        &s.audit,
        &s.programs(),
        c,
        &filter,
        &call.remote,
        call.now,
    )
    .await?;
    let next_cursor = if tasks.len() as i64 == limit {
        tasks.last().map(QueueTask::cursor)
    } else {
        None
    };
    Ok(Json(QueuePage { tasks, next_cursor }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskBody {
    outcome: Option<String>,
    assignee: Option<String>,
    until: Option<String>,
    reason: Option<String>,
    lease_minutes: Option<i64>,
}

pub(crate) async fn act(
    State(s): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    call: Call,
    body: Option<Json<TaskBody>>,
) -> Result<Json<TaskActed>, ApiError> {
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let act = match action.as_str() {
        "claim" => {
            let minutes = b.lease_minutes.unwrap_or(30);
            if !(1..=480).contains(&minutes) {
                return Err(ApiError::BadRequest(
                    "lease_minutes must be between 1 and 480".into(),
                ));
            }
            TaskAction::Claim {
                lease_seconds: minutes * 60,
            }
        }
        "complete" => TaskAction::Complete {
            outcome: b.outcome.as_deref().ok_or_else(|| {
                ApiError::BadRequest(
                    "`outcome` is required: one of the outcomes the pathway declares for the task"
                        .into(),
                )
            })?,
        },
        "reassign" => TaskAction::Reassign {
            assignee: b
                .assignee
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest("`assignee` is required".into()))?,
        },
        "snooze" => {
            let until = instant("until", b.until.as_deref())?
                .ok_or_else(|| ApiError::BadRequest("`until` is required".into()))?;
            let reason = b
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| ApiError::BadRequest("snoozing needs a `reason`".into()))?;
            TaskAction::Snooze { until, reason }
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no task action `{other}`; use claim, complete, reassign or snooze"
            )));
        }
    };
    Ok(Json(perform(&s, &call, id, act).await?))
}

/// Acts on a task for a caller, and advances its enrolment at once when the task is completed:
/// what `POST /tasks/{id}/{action}` and the workstation's task forms both do.
pub(crate) async fn perform(
    s: &AppState,
    call: &Call,
    id: i64,
    act: TaskAction<'_>,
) -> Result<TaskActed, ApiError> {
    let completing = matches!(act, TaskAction::Complete { .. });
    let programs = s.programs();
    let out = queries::act_on_task(
        &s.pool,
        &programs,
        &call.caller,
        id,
        act,
        &call.remote,
        call.now,
    )
    .await
    .map_err(ApiError::refused_by_store)?;
    if completing {
        scheduler::advance(&s.pool, &programs, out.enrolment_id, call.now).await?;
    }
    Ok(out)
}
