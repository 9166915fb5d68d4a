//! Tasks of the caller's work queue as FHIR Tasks, and their updates: `accepted` or
//! `in-progress` claims a task, `completed` completes it with the outcome in `output`, through
//! the same store action as `POST /tasks/{id}/{action}`.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use carepath_engine::scheduler;
use carepath_engine::store::queries::{self, TaskAction};
use carepath_engine::store::records::{self, RecordFilter, TaskRow};
use serde_json::{Value, json};

use super::json::{Node, clip};
use super::outcome::{Outcome, refused};
use super::write::Written;
use super::{FhirBody, base_url};
use crate::{AppState, Call};

/// carepath's task status → FHIR's.
pub(crate) fn fhir_status(status: &str) -> &'static str {
    match status {
        "open" => "ready",
        "claimed" => "in-progress",
        "done" => "completed",
        "cancelled" => "cancelled",
        _ => "on-hold",
    }
}

/// FHIR's task status → carepath's, for a search.
pub(crate) fn carepath_status(status: &str) -> Option<&'static str> {
    match status {
        "ready" => Some("open"),
        "in-progress" | "accepted" => Some("claimed"),
        "completed" => Some("done"),
        "cancelled" => Some("cancelled"),
        _ => None,
    }
}

const OUTCOME_SYSTEM: &str = "urn:carepath:task-outcome";
pub(crate) const ROLE_SYSTEM: &str = "urn:carepath:role";

pub(crate) fn render(t: &TaskRow) -> Value {
    let priority = match queries::priority_name(t.priority) {
        "urgent" => "urgent",
        "high" => "asap",
        _ => "routine",
    };
    let mut out = json!({
        "resourceType": "Task",
        "id": t.id.to_string(),
        "status": fhir_status(&t.status),
        "intent": "order",
        "priority": priority,
        "description": t.title_en,
        "for": {"reference": format!("Patient/{}", t.patient_id)},
        "basedOn": [{"reference": format!("CarePlan/{}", t.enrolment_id)}],
        "authoredOn": t.created_at.to_string(),
        "restriction": {"period": {"end": t.due_at.to_string()}},
        "performerType": [{"coding": [{"system": ROLE_SYSTEM, "code": t.role}], "text": t.role}],
        "note": [{"text": t.title_zh}],
    });
    if let Some(r) = &t.task_ref {
        out["code"] = json!({"coding": [{"system": "urn:carepath:task", "code": r}]});
    }
    if let Some(a) = &t.assignee {
        out["owner"] =
            json!({"identifier": {"system": "urn:carepath:staff", "value": a}, "display": a});
    }
    if let Some(o) = &t.outcome {
        out["output"] = json!([{
            "type": {"coding": [{"system": OUTCOME_SYSTEM, "code": "outcome"}], "text": "outcome"},
            "valueCodeableConcept": {"coding": [{"system": OUTCOME_SYSTEM, "code": o}]}
        }]);
    }
    if let Some(c) = t.completed_at {
        out["lastModified"] = json!(c.to_string());
    }
    if let Some(r) = &t.cancel_reason {
        out["statusReason"] = json!({"text": r});
    }
    out
}

const ELEMENTS: &[&str] = &[
    "identifier",
    "basedOn",
    "status",
    "statusReason",
    "intent",
    "priority",
    "code",
    "description",
    "for",
    "authoredOn",
    "lastModified",
    "restriction",
    "performerType",
    "owner",
    "note",
    "output",
    "input",
    "businessStatus",
    "focus",
    "executionPeriod",
];

/// The action a Task update asks for, from its status (and the outcome in its output).
fn action(body: &Value, id: i64) -> Result<(&'static str, Option<String>), Outcome> {
    let task = Node::resource(body, "Task", ELEMENTS)?;
    if let Some(given) = task.get("id")
        && given.id()? != id.to_string()
    {
        return Err(Outcome::invalid(
            &given.path,
            format!("Task.id must be {id}, the id in the URL"),
        ));
    }
    let status = task.req("status")?;
    let st = status.code(&[
        "draft",
        "requested",
        "received",
        "accepted",
        "rejected",
        "ready",
        "cancelled",
        "in-progress",
        "on-hold",
        "failed",
        "completed",
        "entered-in-error",
    ])?;
    match st {
        "accepted" | "in-progress" => Ok(("claim", None)),
        "completed" => {
            let outputs = task.list("output")?;
            let mut outcome = None;
            for o in &outputs {
                if let Some(v) = o.get("valueCodeableConcept") {
                    outcome = v.codings()?.first().map(|(_, c, _)| c.to_string());
                } else if let Some(v) = o.get("valueCode").or_else(|| o.get("valueString")) {
                    outcome = Some(v.str()?.to_string());
                }
                if outcome.is_some() {
                    break;
                }
            }
            let outcome = outcome.ok_or_else(|| {
                Outcome::invalid(
                    "Task.output",
                    "completing a Task needs its outcome in output (valueCodeableConcept, valueCode or valueString): one of the outcomes the pathway declares for the task",
                )
            })?;
            Ok(("complete", Some(outcome)))
        }
        other => Err(Outcome::unprocessable(
            &status.path,
            format!(
                "a Task can be updated to accepted, in-progress or completed here, not `{}`",
                clip(other)
            ),
        )),
    }
}

/// Applies a Task update; the task as it now is.
pub(crate) async fn update(
    s: &AppState,
    call: &Call,
    id: &str,
    body: &Value,
) -> Result<Written, Outcome> {
    let id: i64 = id
        .parse()
        .map_err(|_| Outcome::not_found(format!("Task/{} not found", clip(id))))?;
    let (act, outcome) = action(body, id)?;
    let act = match act {
        "claim" => TaskAction::Claim {
            lease_seconds: 30 * 60,
        },
        _ => TaskAction::Complete {
            outcome: outcome.as_deref().unwrap_or_default(),
        },
    };
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
    .map_err(|e| {
        let invalid = matches!(e, carepath_engine::store::StoreError::Invalid(_));
        let o = refused(e);
        if invalid { o.at("Task.output") } else { o }
    })?;
    if completing {
        scheduler::advance(&s.pool, &programs, out.enrolment_id, call.now)
            .await
            .map_err(crate::ApiError::from)?;
    }
    let filter = RecordFilter {
        id: Some(id),
        limit: 1,
        ..RecordFilter::default()
    };
    let rows = records::tasks(
        &s.pool,
        &s.audit,
        &call.caller,
        &filter,
        &[],
        &call.remote,
        call.now,
    )
    .await
    .map_err(Outcome::from)?;
    let t = rows
        .first()
        .ok_or_else(|| Outcome::not_found(format!("Task/{id} not found")))?;
    Ok(Written {
        created: false,
        resource_type: "Task",
        id: id.to_string(),
        resource: render(t),
    })
}

/// `PUT /fhir/Task/{id}`.
pub(crate) async fn put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    call: Call,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, Outcome> {
    let written = update(&s, &call, &id, &body).await?;
    Ok(written.response(&base_url(&headers)))
}
