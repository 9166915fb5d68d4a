//! The OpenAPI 3 document, built from the route table below: one entry per route with its module,
//! parameters and body schema. `router()` serves exactly these routes.

use serde_json::{Value, json};

/// (method, path, module or "" for public, summary, query parameters, body schema, success answer)
type Route = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<fn() -> Value>,
    fn() -> Success,
);

/// The success status of an operation and its response object (description and content).
type Success = (u16, Value);

fn json_ok(status: u16, description: &str, schema: Value) -> Success {
    (
        status,
        json!({"description": description, "content": {"application/json": {"schema": schema}}}),
    )
}

/// An object with these properties, all of them required.
fn obj(props: Value) -> Value {
    let required: Vec<String> = props
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    json!({"type": "object", "required": required, "properties": props})
}

fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

fn int() -> Value {
    json!({"type": "integer"})
}
fn num() -> Value {
    json!({"type": "number"})
}
fn string() -> Value {
    json!({"type": "string"})
}
fn instant() -> Value {
    json!({"type": "string", "format": "date-time"})
}
fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}
/// A bilingual text.
fn text() -> Value {
    obj(json!({"zh": string(), "en": string()}))
}
/// Counts of the actions a step wrote, by kind.
fn action_counts() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}})
}
/// A ratio: its value (null when the denominator is 0), numerator and denominator.
fn ratio() -> Value {
    obj(json!({"value": nullable(num()), "numerator": int(), "denominator": int()}))
}
fn diagnostic() -> Value {
    obj(
        json!({"severity": {"type": "string", "enum": ["error", "warning"]}, "code": string(), "file": string(),
               "line": int(), "col": int(), "message": string(), "hint": string()}),
    )
}

fn ok_health() -> Success {
    json_ok(
        200,
        "Alive",
        obj(json!({"status": {"type": "string", "enum": ["ok"]}})),
    )
}
fn ok_ready() -> Success {
    json_ok(
        200,
        "The database answers",
        obj(json!({"status": {"type": "string", "enum": ["ready"]}, "backend": string()})),
    )
}
fn ok_metrics() -> Success {
    (
        200,
        json!({"description": "Prometheus text exposition", "content": {"text/plain": {"schema": string()}}}),
    )
}
fn ok_pathways() -> Success {
    let pathway = obj(
        json!({"id": string(), "version": int(), "title": text(), "owner_role": string(),
                             "entry_points": array(string()), "states": int()}),
    );
    json_ok(
        200,
        "Published pathway versions, by id then version",
        obj(json!({"pathways": array(pathway)})),
    )
}
fn ok_published() -> Success {
    json_ok(
        201,
        "Published; with the compiler's warnings",
        obj(json!({"id": string(), "version": int(), "warnings": array(diagnostic())})),
    )
}
fn ok_graph() -> Success {
    (
        200,
        json!({"description": "The state graph: Graphviz dot (default) or Mermaid", "content": {
        "text/vnd.graphviz": {"schema": string()}, "text/plain": {"schema": string()}}}),
    )
}
fn ok_patient_created() -> Success {
    json_ok(201, "Registered", obj(json!({"id": string()})))
}
fn ok_patient() -> Success {
    let enrolment = obj(
        json!({"id": int(), "pathway": string(), "version": int(), "state": string(), "status": string(), "institution_id": string()}),
    );
    json_ok(
        200,
        "The patient and their enrolments",
        obj(
            json!({"id": string(), "institution_id": string(), "birth_date": nullable(string()),
        "sex": string(), "tz": string(), "enrolments": array(enrolment)}),
        ),
    )
}
fn ok_enrolled() -> Success {
    json_ok(
        201,
        "Enrolled; the actions the entry step wrote",
        obj(json!({"id": int(), "actions": action_counts()})),
    )
}
fn ok_timeline() -> Success {
    let entry = json!({"type": "object", "required": ["at", "kind", "detail"], "properties": {"at": instant(), "kind": string(), "detail": {"nullable": true}}});
    json_ok(
        200,
        "The enrolment and every record entry, oldest first",
        obj(
            json!({"enrolment_id": int(), "patient_id": string(), "pathway": string(),
        "version": int(), "state": string(), "status": string(), "next_wake_at": nullable(instant()), "entries": array(entry)}),
        ),
    )
}
fn ok_event() -> Success {
    json_ok(
        200,
        "Recorded; what the enrolment did at once",
        obj(json!({"enrolment_id": int(), "transitions": int(), "actions": action_counts()})),
    )
}
fn ok_withdrawn() -> Success {
    json_ok(
        200,
        "Withdrawn",
        obj(json!({"enrolment_id": int(), "status": {"type": "string", "enum": ["withdrawn"]}})),
    )
}
fn ok_scale_pushes() -> Success {
    let push = obj(
        json!({"id": int(), "enrolment_id": int(), "patient_id": string(), "scale": string(), "status": string(),
        "state_seq": int(), "due_at": instant(), "expires_at": nullable(instant()), "reminders": array(instant()), "reminders_sent": int(),
        "created_at": instant(), "answered_at": nullable(instant()), "score": nullable(num()), "band": nullable(string())}),
    );
    json_ok(
        200,
        "The enrolment's scale pushes, oldest first",
        obj(json!({"enrolment_id": int(), "scale_pushes": array(push)})),
    )
}
fn ok_answered() -> Success {
    let critical = obj(
        json!({"item": string(), "number": int(), "value": int(), "action": string(), "role": string(),
        "text": text(), "task_id": nullable(int())}),
    );
    json_ok(
        201,
        "Scored and banded; the critical rules that fired and what the enrolment did at once",
        obj(json!({
        "push_id": int(), "enrolment_id": int(), "patient_id": string(), "scale": string(), "score": num(), "band": string(),
        "band_text": text(), "items": array(int()), "critical": array(critical), "answered_at": instant(),
        "transitions": int(), "actions": action_counts()})),
    )
}
fn ok_observations() -> Success {
    json_ok(
        200,
        "What became of the batch",
        obj(json!({"accepted": int(), "duplicates": int(),
        "refused": array(obj(json!({"index": int(), "reason": string()}))), "alarm_tasks": array(int()), "alarms_resolved": int()})),
    )
}
fn ok_queue() -> Success {
    let task = obj(
        json!({"id": int(), "enrolment_id": int(), "patient_id": string(), "role": string(), "title": text(),
        "priority": string(), "priority_rank": int(), "status": string(), "due_at": instant(), "due_at_s": int(),
        "assignee": nullable(string()), "task_ref": nullable(string()), "created_at": instant(), "lease_until": nullable(instant())}),
    );
    json_ok(
        200,
        "A page of the board; `next_cursor` continues it (null on the last page)",
        obj(json!({"tasks": array(task), "next_cursor": nullable(string())})),
    )
}
fn ok_task() -> Success {
    json_ok(
        200,
        "Done",
        obj(json!({"task": int(), "enrolment_id": int(),
        "action": {"type": "string", "enum": ["task.claim", "task.complete", "task.reassign", "task.snooze"]}})),
    )
}
fn ok_referrals() -> Success {
    let referral = obj(
        json!({"id": int(), "enrolment_id": int(), "patient_id": string(), "direction": string(), "to_kind": string(),
        "from_institution": string(), "to_institution": nullable(string()), "status": string(), "requested_at": instant(),
        "accept_by": instant(), "reason": {"nullable": true}}),
    );
    json_ok(
        200,
        "Referrals, oldest first (at most 500)",
        obj(json!({"referrals": array(referral)})),
    )
}
fn ok_decision() -> Success {
    json_ok(
        200,
        "Decided",
        obj(json!({"referral": int(), "enrolment_id": int(),
        "status": {"type": "string", "enum": ["accepted", "rejected", "arrived"]}})),
    )
}
fn ok_kpis() -> Success {
    let object = json!({"type": "object"});
    let breakdown = obj(
        json!({"by": {"type": "string", "enum": ["pathway", "role", "staff"]}, "rows": array(object.clone())}),
    );
    let side = obj(json!({"count": int(), "counter": string()}));
    let indicator = obj(
        json!({"pathway": string(), "id": string(), "title": text(), "period": string(),
        "from": int(), "to": int(), "numerator": side.clone(), "denominator": side, "value": nullable(num()),
        "target": nullable(num()), "target_met": nullable(json!({"type": "boolean"})), "problem": nullable(string())}),
    );
    let mut schema = obj(json!({
        "institution": string(), "pathway": nullable(string()), "from": instant(), "to": instant(),
        "follow_up_rate": ratio(), "on_time_task_rate": ratio(), "overdue_tasks": int(), "open_tasks": int(),
        "scale_completion": ratio(),
        "referrals": obj(json!({"total": int(), "up": int(), "down": int(), "rate": nullable(num()), "up_share": nullable(num())})),
        "upward_accepted_within_24h": ratio(), "case_load_per_case_manager": nullable(num()), "case_managers": int(),
        "active_enrolments": int(), "enrolments_in_period": int(), "average_length_of_stay_days": nullable(num()),
        "alarms": int(), "counts": object, "indicators": array(indicator)}));
    schema["properties"]["breakdown"] = breakdown;
    json_ok(
        200,
        "Indicators over the period; `breakdown` only with `by`",
        schema,
    )
}
fn ok_audit() -> Success {
    json_ok(
        200,
        "Whether the record is intact; `problem` and `broken_id` say where it is not",
        json!({"type": "object",
        "required": ["valid", "entries", "checkpoints", "problem", "broken_id"], "properties": {
        "valid": {"type": "boolean"}, "entries": int(), "legacy_entries": int(), "checkpoints": int(),
        "problem": nullable(string()), "broken_id": nullable(int())}}),
    )
}

fn s_publish() -> Value {
    json!({"type": "object", "required": ["source"], "additionalProperties": false,
           "properties": {"format": {"type": "string", "enum": ["yaml", "rhai"]}, "source": {"type": "string", "description": "the pathway's text; the whole body is at most 1 MiB"}}})
}
fn s_patient() -> Value {
    json!({"type": "object", "required": ["id"], "additionalProperties": false, "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "birth_date": {"type": "string", "format": "date", "nullable": true},
        "sex": {"type": "string", "enum": ["female", "male", "unknown"]}, "tz": {"type": "string"},
        "preferred_channel": {"type": "string", "nullable": true, "enum": ["wechat", "sms", "phone", "email", null]}}})
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
        "answers": {"type": "object", "maxProperties": 200, "additionalProperties": {"type": "integer", "format": "int64"},
                    "description": "The raw answer to each item of the scale, by item id (see pathways/scales/)"},
        "answered_at": {"type": "string", "format": "date-time"}}})
}
fn s_readings() -> Value {
    json!({"type": "array", "maxItems": 1000, "items": {"type": "object", "required": ["patient_id", "kind", "value", "at", "reading_id"], "properties": {
        "patient_id": {"type": "string"}, "kind": {"type": "string"}, "value": {"type": "number"}, "unit": {"type": "string", "nullable": true},
        "at": {"type": "string", "format": "date-time"}, "reading_id": {"type": "string"}, "source": {"type": "string"}}}})
}
/// The fields each action reads: `claim` its `lease_minutes` (1–480, default 30), `complete` its
/// `outcome`, `reassign` its `assignee`, `snooze` its `until` (an instant) and `reason`; an action
/// ignores the fields of the others, so they are checked only by the action that reads them.
fn s_task() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "outcome": {"type": "string", "nullable": true, "description": "complete: one of the outcomes the pathway declares for the task (its `outcomes:`), else done, reached, problem, will_visit, call_later, unreachable, wrong_number, declined, deceased, moved_away"},
        "assignee": {"type": "string", "nullable": true, "description": "reassign: the staff member who takes the task"},
        "until": {"type": "string", "nullable": true, "description": "snooze: an instant such as 2026-11-23T08:00:00+08:00"},
        "reason": {"type": "string", "nullable": true, "description": "snooze: why (required, not blank)"},
        "lease_minutes": {"type": "integer", "nullable": true, "description": "claim: how long the claim holds, 1 to 480 minutes (default 30)"}}})
}
fn s_decision() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {"reason": {"type": "string", "nullable": true}}})
}

const ROUTES: &[Route] = &[
    ("get", "/health", "", "Liveness", &[], None, ok_health),
    (
        "get",
        "/ready",
        "",
        "Readiness: the database answers",
        &[],
        None,
        ok_ready,
    ),
    (
        "get",
        "/metrics",
        "",
        "Prometheus metrics: request latency, scheduler lag, due backlog, outbox backlog",
        &[],
        None,
        ok_metrics,
    ),
    (
        "get",
        "/pathways",
        "catalog",
        "Published pathway versions",
        &[],
        None,
        ok_pathways,
    ),
    (
        "post",
        "/pathways",
        "pathways",
        "Upload, validate and publish a pathway version",
        &[],
        Some(s_publish),
        ok_published,
    ),
    (
        "get",
        "/pathways/{id}/{version}/graph",
        "catalog",
        "A pathway's state graph",
        &[("format", "string")],
        None,
        ok_graph,
    ),
    (
        "post",
        "/patients",
        "patients",
        "Register a patient (pseudonymous id) in the caller's institution",
        &[],
        Some(s_patient),
        ok_patient_created,
    ),
    (
        "get",
        "/patients/{id}",
        "patients",
        "A patient and their enrolments",
        &[],
        None,
        ok_patient,
    ),
    (
        "post",
        "/enrolments",
        "patients",
        "Enrol a patient at a pathway's entry point",
        &[],
        Some(s_enrol),
        ok_enrolled,
    ),
    (
        "get",
        "/enrolments/{id}/timeline",
        "patients",
        "Everything that happened in an enrolment, with the trace behind each step",
        &[],
        None,
        ok_timeline,
    ),
    (
        "post",
        "/enrolments/{id}/events",
        "patients",
        "Record an event (e.g. discharged); the enrolment advances at once",
        &[],
        Some(s_event),
        ok_event,
    ),
    (
        "post",
        "/enrolments/{id}/withdraw",
        "patients",
        "Withdraw an enrolment: open work is cancelled",
        &[],
        Some(s_reason),
        ok_withdrawn,
    ),
    (
        "get",
        "/enrolments/{id}/scale-pushes",
        "patients",
        "An enrolment's scale pushes: status, due, expiry, reminders, and the score once answered",
        &[],
        None,
        ok_scale_pushes,
    ),
    (
        "post",
        "/scale-pushes/{id}/answers",
        "patients",
        "Answer a pending scale push: scored and banded; critical items raise an urgent task; the enrolment advances at once",
        &[],
        Some(s_answers),
        ok_answered,
    ),
    (
        "post",
        "/observations",
        "observations",
        "Post readings in a batch; alarm rules are evaluated at once",
        &[],
        Some(s_readings),
        ok_observations,
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
        ok_queue,
    ),
    (
        "post",
        "/tasks/{id}/{action}",
        "queue",
        "claim | complete | reassign | snooze a task",
        &[],
        Some(s_task),
        ok_task,
    ),
    (
        "get",
        "/referrals",
        "referrals",
        "Referrals sent by or addressed to the caller's institution",
        &[("status", "string")],
        None,
        ok_referrals,
    ),
    (
        "post",
        "/referrals/{id}/{decision}",
        "referrals",
        "accept | reject | arrive",
        &[],
        Some(s_decision),
        ok_decision,
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
        ok_kpis,
    ),
    (
        "get",
        "/audit/verify",
        "audit",
        "Verify the audit record's keyed hash chain and its signed checkpoints",
        &[],
        None,
        ok_audit,
    ),
];

/// The shared error body (RFC 9457); a pathway that does not compile adds its `diagnostics`.
fn problem_schema() -> Value {
    json!({"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"}, "diagnostics": array(diagnostic())}})
}

fn problem(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The error statuses an operation can answer, with what each means.
fn errors(method: &str, path: &str, module: &str) -> Vec<(u16, &'static str)> {
    let mut out = vec![
        (
            400,
            "The request is malformed: a parameter, the query or the body",
        ),
        (
            404,
            "No such object visible to the caller, or no such route",
        ),
        (408, "The request took longer than 15 s"),
        (413, "The request body is larger than 1 MiB"),
        (431, "The request's header fields are too large"),
        (500, "The server could not complete the request"),
    ];
    if !module.is_empty() {
        out.push((401, "No valid bearer token"));
        out.push((403, "The caller's role may not use this module"));
    }
    if method == "post" {
        out.push((409, "The object is not in a state that allows this"));
        out.push((
            422,
            "The request is well formed but cannot be carried out (e.g. a pathway with errors)",
        ));
    }
    if path == "/ready" || (method == "post" && path == "/pathways") {
        out.push((
            503,
            "Unavailable: the database does not answer, or too many uploads are compiling",
        ));
    }
    out
}

pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, module, summary, query, body, success) in ROUTES {
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
            let schema = match *name {
                "limit" => json!({"type": "integer", "minimum": 1, "maximum": crate::MAX_PAGE}),
                "by" => json!({"type": "string", "enum": ["pathway", "role", "staff"]}),
                "format" => json!({"type": "string", "enum": ["dot", "mermaid"]}),
                "due_before" | "due_after" => json!({"type": "string", "format": "date-time"}),
                "from" | "to" => json!({"type": "string", "format": "date"}),
                "cursor" => json!({"type": "string", "pattern": "^-?[0-9]+\\.-?[0-9]+\\.-?[0-9]+$",
                                   "description": "the `next_cursor` of the previous page"}),
                "status" if *path == "/queues/tasks" => json!({"type": "string",
                    "enum": ["open", "claimed", "active", "done", "cancelled"]}),
                _ => json!({"type": ty}),
            };
            params.push(json!({"name": name, "in": "query", "required": false, "schema": schema}));
        }
        let mut responses = serde_json::Map::new();
        let (status, answer) = success();
        responses.insert(status.to_string(), answer);
        for (status, description) in errors(method, path, module) {
            responses.insert(status.to_string(), problem(description));
        }
        let mut op = json!({"summary": summary, "parameters": params, "responses": responses});
        if !module.is_empty() {
            op["security"] = json!([{"bearer": []}]);
            op["x-module"] = json!(module);
        }
        if let Some(schema) = body {
            // Task actions and referral decisions may be posted without a body.
            let required = !matches!(*path, "/tasks/{id}/{action}" | "/referrals/{id}/{decision}");
            op["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": schema()}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "carepath admin API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Work queues, KPIs, pathways, enrolments, observations and referrals. Every call is authenticated, scoped to the caller's institution and audited."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {"Problem": problem_schema()}},
        "paths": paths,
    })
}
