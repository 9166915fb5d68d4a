//! The OpenAPI 3 document, built from the route table below: one entry per route with its module,
//! parameters and body schema. `router()` serves exactly these routes.

use serde_json::{Value, json};

/// (method, path, module or "" for public, summary, query parameters, body schema)
type Route = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<fn() -> Value>,
);

fn s_publish() -> Value {
    json!({"type": "object", "required": ["source"], "additionalProperties": false,
           "properties": {"format": {"type": "string", "enum": ["yaml", "rhai"]}, "source": {"type": "string", "maxLength": 500000}}})
}
fn s_patient() -> Value {
    json!({"type": "object", "required": ["id"], "additionalProperties": false, "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "birth_date": {"type": "string", "format": "date"},
        "sex": {"type": "string", "enum": ["female", "male", "unknown"]}, "tz": {"type": "string"},
        "preferred_channel": {"type": "string", "enum": ["wechat", "sms", "phone", "email"]}}})
}
fn s_enrol() -> Value {
    json!({"type": "object", "required": ["patient_id", "pathway", "entry"], "additionalProperties": false, "properties": {
        "patient_id": {"type": "string"}, "pathway": {"type": "string"}, "version": {"type": "integer", "minimum": 1}, "entry": {"type": "string"}}})
}
fn s_event() -> Value {
    json!({"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9_:.-]{1,96}$"}, "at": {"type": "string", "format": "date-time"}}})
}
fn s_reason() -> Value {
    json!({"type": "object", "required": ["reason"], "additionalProperties": false, "properties": {"reason": {"type": "string", "minLength": 1}}})
}
fn s_answers() -> Value {
    json!({"type": "object", "required": ["answers"], "additionalProperties": false, "properties": {
        "answers": {"type": "object", "maxProperties": 200, "additionalProperties": {"type": "integer"},
                    "description": "The raw answer to each item of the scale, by item id (see pathways/scales/)"},
        "answered_at": {"type": "string", "format": "date-time"}}})
}
fn s_readings() -> Value {
    json!({"type": "array", "maxItems": 1000, "items": {"type": "object", "required": ["patient_id", "kind", "value", "at", "reading_id"], "properties": {
        "patient_id": {"type": "string"}, "kind": {"type": "string"}, "value": {"type": "number"}, "unit": {"type": "string"},
        "at": {"type": "string", "format": "date-time"}, "reading_id": {"type": "string"}, "source": {"type": "string"}}}})
}
fn s_task() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "outcome": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "maxLength": 64, "description": "one of the outcomes the pathway declares for the task (its `outcomes:`), else done, reached, problem, will_visit, call_later, unreachable, wrong_number, declined, deceased, moved_away"}, "assignee": {"type": "string"}, "until": {"type": "string", "format": "date-time"},
        "reason": {"type": "string"}, "lease_minutes": {"type": "integer", "minimum": 1, "maximum": 480}}})
}
fn s_decision() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {"reason": {"type": "string"}}})
}

const ROUTES: &[Route] = &[
    ("get", "/health", "", "Liveness", &[], None),
    (
        "get",
        "/ready",
        "",
        "Readiness: the database answers",
        &[],
        None,
    ),
    (
        "get",
        "/metrics",
        "",
        "Prometheus metrics: request latency, scheduler lag, due backlog, outbox backlog",
        &[],
        None,
    ),
    (
        "get",
        "/pathways",
        "catalog",
        "Published pathway versions",
        &[],
        None,
    ),
    (
        "post",
        "/pathways",
        "pathways",
        "Upload, validate and publish a pathway version",
        &[],
        Some(s_publish),
    ),
    (
        "get",
        "/pathways/{id}/{version}/graph",
        "catalog",
        "A pathway's state graph",
        &[("format", "string")],
        None,
    ),
    (
        "post",
        "/patients",
        "patients",
        "Register a patient (pseudonymous id) in the caller's institution",
        &[],
        Some(s_patient),
    ),
    (
        "get",
        "/patients/{id}",
        "patients",
        "A patient and their enrolments",
        &[],
        None,
    ),
    (
        "post",
        "/enrolments",
        "patients",
        "Enrol a patient at a pathway's entry point",
        &[],
        Some(s_enrol),
    ),
    (
        "get",
        "/enrolments/{id}/timeline",
        "patients",
        "Everything that happened in an enrolment, with the trace behind each step",
        &[],
        None,
    ),
    (
        "post",
        "/enrolments/{id}/events",
        "patients",
        "Record an event (e.g. discharged); the enrolment advances at once",
        &[],
        Some(s_event),
    ),
    (
        "post",
        "/enrolments/{id}/withdraw",
        "patients",
        "Withdraw an enrolment: open work is cancelled",
        &[],
        Some(s_reason),
    ),
    (
        "get",
        "/enrolments/{id}/scale-pushes",
        "patients",
        "An enrolment's scale pushes: status, due, expiry, reminders, and the score once answered",
        &[],
        None,
    ),
    (
        "post",
        "/scale-pushes/{id}/answers",
        "patients",
        "Answer a pending scale push: scored and banded; critical items raise an urgent task; the enrolment advances at once",
        &[],
        Some(s_answers),
    ),
    (
        "post",
        "/observations",
        "observations",
        "Post readings in a batch; alarm rules are evaluated at once",
        &[],
        Some(s_readings),
    ),
    (
        "get",
        "/queues/tasks",
        "queue",
        "The caller's institution's task board, by priority then due time",
        &[
            ("role", "string"),
            ("status", "string"),
            ("assignee", "string"),
            ("due_before", "string"),
            ("due_after", "string"),
            ("cursor", "string"),
            ("limit", "integer"),
        ],
        None,
    ),
    (
        "post",
        "/tasks/{id}/{action}",
        "queue",
        "claim | complete | reassign | snooze a task",
        &[],
        Some(s_task),
    ),
    (
        "get",
        "/referrals",
        "referrals",
        "Referrals sent by or addressed to the caller's institution",
        &[("status", "string")],
        None,
    ),
    (
        "post",
        "/referrals/{id}/{decision}",
        "referrals",
        "accept | reject | arrive",
        &[],
        Some(s_decision),
    ),
    (
        "get",
        "/kpis",
        "kpis",
        "Indicators for the caller's institution over a period: built-in ones, broken down by pathway, role or staff member, and those the pathways declare",
        &[
            ("from", "string"),
            ("to", "string"),
            ("by", "string"),
            ("pathway", "string"),
        ],
        None,
    ),
    (
        "get",
        "/audit/verify",
        "audit",
        "Verify the audit record's keyed hash chain and its signed checkpoints",
        &[],
        None,
    ),
];

fn problem() -> Value {
    json!({"description": "Problem (RFC 9457)", "content": {"application/problem+json": {"schema": {"type": "object", "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}}}})
}

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, module, summary, query, body) in ROUTES {
        let mut params: Vec<Value> = Vec::new();
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            let schema = match name {
                "id" if path.starts_with("/patients") || path.starts_with("/pathways") => {
                    json!({"type": "string"})
                }
                "id" => json!({"type": "integer", "format": "int64"}),
                "version" => json!({"type": "integer", "minimum": 1}),
                "action" => {
                    json!({"type": "string", "enum": ["claim", "complete", "reassign", "snooze"]})
                }
                "decision" => json!({"type": "string", "enum": ["accept", "reject", "arrive"]}),
                _ => json!({"type": "string"}),
            };
            params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        }
        for (name, ty) in *query {
            let schema = if *name == "limit" {
                json!({"type": "integer", "minimum": 1, "maximum": crate::MAX_PAGE})
            } else if *name == "by" {
                json!({"type": "string", "enum": ["pathway", "role", "staff"]})
            } else {
                json!({"type": ty})
            };
            params.push(json!({"name": name, "in": "query", "required": false, "schema": schema}));
        }
        let mut responses =
            json!({"200": {"description": "OK"}, "400": problem(), "404": problem()});
        if !module.is_empty() {
            responses["401"] = problem();
            responses["403"] = problem();
        }
        if *method == "post" {
            responses["201"] = json!({"description": "Created"});
            responses["409"] = problem();
            responses["413"] = problem();
            responses["422"] = problem();
        }
        let mut op = json!({"summary": summary, "parameters": params, "responses": responses});
        if !module.is_empty() {
            op["security"] = json!([{"bearer": []}]);
            op["x-module"] = json!(module);
        }
        if let Some(schema) = body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema()}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "carepath admin API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Work queues, KPIs, pathways, enrolments, observations and referrals. Every call is authenticated, scoped to the caller's institution and audited."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    })
}
