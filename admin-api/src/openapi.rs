//! The OpenAPI 3 document, built from the route table ([`crate::routes::ROUTES`]): one operation
//! per route with its module, parameters, body schema and a response schema for every status;
//! the schemas each route's entry names are here.

use serde_json::{Value, json};

use crate::routes::ROUTES;

/// The success status of an operation and its response object (description and content).
pub(crate) type Success = (u16, Value);

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

pub(crate) fn ok_health() -> Success {
    json_ok(
        200,
        "Alive",
        obj(json!({"status": {"type": "string", "enum": ["ok"]}})),
    )
}
pub(crate) fn ok_ready() -> Success {
    json_ok(
        200,
        "The database answers",
        obj(json!({"status": {"type": "string", "enum": ["ready"]}, "backend": string()})),
    )
}
pub(crate) fn ok_metrics() -> Success {
    (
        200,
        json!({"description": "Prometheus text exposition", "content": {"text/plain": {"schema": string()}}}),
    )
}
pub(crate) fn ok_pathways() -> Success {
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
pub(crate) fn ok_published() -> Success {
    json_ok(
        201,
        "Published; with the compiler's warnings",
        obj(json!({"id": string(), "version": int(), "warnings": array(diagnostic())})),
    )
}
pub(crate) fn ok_graph() -> Success {
    (
        200,
        json!({"description": "The state graph: Graphviz dot (default) or Mermaid", "content": {
        "text/vnd.graphviz": {"schema": string()}, "text/plain": {"schema": string()}}}),
    )
}
pub(crate) fn ok_patient_created() -> Success {
    json_ok(201, "Registered", obj(json!({"id": string()})))
}
pub(crate) fn ok_patient() -> Success {
    let enrolment = obj(
        json!({"id": int(), "pathway": string(), "version": int(), "state": string(), "status": string(), "institution_id": string()}),
    );
    json_ok(
        200,
        "The patient and their enrolments",
        obj(
            json!({"id": string(), "institution_id": string(), "birth_date": nullable(string()),
        "sex": string(), "tz": string(), "home_institution": nullable(string()), "preferred_channel": nullable(string()),
        "lang": nullable(string()), "contact": {"nullable": true, "type": "object", "description": "masked"}, "contact_erased_at": nullable(instant()),
        "enrolments": array(enrolment)}),
        ),
    )
}
pub(crate) fn ok_enrolled() -> Success {
    json_ok(
        201,
        "Enrolled; the actions the entry step wrote",
        obj(json!({"id": int(), "actions": action_counts()})),
    )
}
pub(crate) fn ok_timeline() -> Success {
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
pub(crate) fn ok_event() -> Success {
    json_ok(
        200,
        "Recorded; what the enrolment did at once",
        obj(json!({"enrolment_id": int(), "transitions": int(), "actions": action_counts()})),
    )
}
pub(crate) fn ok_withdrawn() -> Success {
    json_ok(
        200,
        "Withdrawn",
        obj(
            json!({"enrolment_id": int(), "status": {"type": "string", "enum": ["withdrawn"]},
            "state": string(), "routed": {"type": "boolean"},
            "actions": {"type": "object", "additionalProperties": int()}}),
        ),
    )
}
pub(crate) fn ok_scale_pushes() -> Success {
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
pub(crate) fn ok_answered() -> Success {
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
pub(crate) fn ok_observations() -> Success {
    json_ok(
        200,
        "What became of the batch",
        obj(json!({"accepted": int(), "duplicates": int(),
        "refused": array(obj(json!({"index": int(), "reason": string()}))), "alarm_episodes": array(int()), "alarm_tasks": array(int()), "alarms_cleared": int()})),
    )
}
pub(crate) fn ok_queue() -> Success {
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
pub(crate) fn ok_task() -> Success {
    json_ok(
        200,
        "Done",
        obj(json!({"task": int(), "enrolment_id": int(),
        "action": {"type": "string", "enum": ["task.claim", "task.complete", "task.reassign", "task.snooze"]}})),
    )
}
pub(crate) fn ok_alarms() -> Success {
    let statuses =
        json!({"type": "string", "enum": ["open", "acknowledged", "resolved", "cleared", "ended"]});
    let episode = obj(
        json!({"id": int(), "enrolment_id": int(), "patient_id": string(), "alarm": string(), "role": string(),
        "status": statuses, "opened_at": instant(), "detail": {"nullable": true}, "task_id": nullable(int()),
        "acknowledged_at": nullable(instant()), "acknowledged_by": nullable(string()), "closed_at": nullable(instant()),
        "closed_by": nullable(string()), "close_reason": nullable(string())}),
    );
    json_ok(
        200,
        "A page of alarm episodes, oldest first; `next_cursor` continues it (null on the last page)",
        obj(json!({"alarms": array(episode), "next_cursor": nullable(string())})),
    )
}
pub(crate) fn ok_alarm_act() -> Success {
    json_ok(
        200,
        "Done",
        obj(json!({"episode": int(), "enrolment_id": int(),
        "action": {"type": "string", "enum": ["alarm.acknowledge", "alarm.resolve"]},
        "status": {"type": "string", "enum": ["acknowledged", "resolved"]}})),
    )
}
pub(crate) fn ok_intake() -> Success {
    let statuses =
        json!({"type": "string", "enum": ["pending", "accepted", "rejected", "cancelled"]});
    let candidate = obj(
        json!({"id": int(), "patient_id": string(), "rule": string(), "pathway_id": string(), "entry": string(),
        "status": statuses, "created_at": instant(), "encounter_id": nullable(int()), "encounter": nullable(string()),
        "class": nullable(string()), "department": nullable(string()), "enrolment_id": nullable(int()),
        "decided_by": nullable(string()), "decided_at": nullable(instant()), "reason": nullable(string())}),
    );
    json_ok(
        200,
        "Candidates, pending first, then the newest (at most `limit`)",
        obj(json!({"candidates": array(candidate)})),
    )
}
pub(crate) fn ok_intake_decided() -> Success {
    json_ok(
        200,
        "Decided",
        obj(json!({"candidate": int(),
        "status": {"type": "string", "enum": ["accepted", "rejected"]},
        "enrolment_id": nullable(int())})),
    )
}
pub(crate) fn ok_referrals() -> Success {
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
pub(crate) fn ok_decision() -> Success {
    json_ok(
        200,
        "Decided",
        obj(json!({"referral": int(), "enrolment_id": int(),
        "status": {"type": "string", "enum": ["accepted", "rejected", "arrived"]}})),
    )
}
pub(crate) fn ok_kpi_rows() -> Success {
    let row = obj(
        json!({"kind": {"type": "string", "enum": ["task", "scale_push", "referral", "enrolment", "stay", "staff"]},
        "id": json!({"oneOf": [int(), string()], "description": "the row's id; a staff member's id for `staff`"}),
        "patient_id": nullable(string()), "enrolment_id": nullable(int()), "pathway": nullable(string()),
        "what": nullable(string()), "status": string(), "at": nullable(int()),
        "completed_at": nullable(int()), "outcome": nullable(string()), "length_seconds": nullable(int()),
        "in_numerator": json!({"type": "boolean"}), "in_denominator": json!({"type": "boolean"})}),
    );
    json_ok(
        200,
        "The rows behind the figure, each marked with the sides that count it (`in_numerator`, `in_denominator`); `numerator` and `denominator` counted from them as the figure is (rows, distinct enrolments for follow_up_rate, the stays' lengths in days for average_length_of_stay_days)",
        obj(
            json!({"indicator": string(), "institution": string(), "pathway": nullable(string()), "staff": nullable(string()), "from": instant(), "to": instant(),
            "numerator": num(), "denominator": num(), "rows": array(row)}),
        ),
    )
}
pub(crate) fn ok_kpis() -> Success {
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
pub(crate) fn ok_audit() -> Success {
    json_ok(
        200,
        "Whether the record is intact; `problem` and `broken_id` say where it is not",
        json!({"type": "object",
        "required": ["valid", "entries", "checkpoints", "problem", "broken_id"], "properties": {
        "valid": {"type": "boolean"}, "entries": int(), "legacy_entries": int(), "checkpoints": int(),
        "problem": nullable(string()), "broken_id": nullable(int())}}),
    )
}

pub(crate) fn s_publish() -> Value {
    json!({"type": "object", "required": ["source"], "additionalProperties": false,
           "properties": {"format": {"type": "string", "enum": ["yaml", "rhai"]}, "source": {"type": "string", "description": "the pathway's text; the whole body is at most 1 MiB"}}})
}
pub(crate) fn s_patient() -> Value {
    json!({"type": "object", "required": ["id"], "additionalProperties": false, "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "birth_date": {"type": "string", "format": "date", "nullable": true},
        "sex": {"type": "string", "enum": ["female", "male", "unknown"]}, "tz": {"type": "string"},
        "preferred_channel": {"type": "string", "nullable": true, "enum": ["wechat", "sms", "phone", "email", null]},
        "lang": {"type": "string", "enum": ["zh", "en"]}, "contact": s_contact(),
        "home_institution": {"type": "string", "nullable": true, "description": "a community clinic or township hospital of the caller's alliance"}}})
}
fn s_contact() -> Value {
    json!({"type": "object", "additionalProperties": false, "description": "stored encrypted; every view but GET /patients/{id}/contact shows it masked", "properties": {
        "phone": {"type": "string", "description": "mobile number, 5–15 digits, optional leading +"}, "email": {"type": "string", "format": "email"},
        "wechat_openid": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "name": {"type": "string", "maxLength": 100}, "lang": {"type": "string", "enum": ["zh", "en"]}}})
}
pub(crate) fn s_patient_change() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "birth_date": {"type": "string", "format": "date"}, "sex": {"type": "string", "enum": ["female", "male", "unknown"]}, "tz": {"type": "string"},
        "preferred_channel": {"type": "string", "enum": ["wechat", "sms", "phone", "email"]}, "lang": {"type": "string", "enum": ["zh", "en"]},
        "contact": s_contact(), "home_institution": {"type": "string"}}})
}
pub(crate) fn ok_patient_updated() -> Success {
    json_ok(200, "The patient was changed", obj(json!({"id": string()})))
}
pub(crate) fn ok_contact() -> Success {
    let mut contact = s_contact();
    contact["nullable"] = json!(true);
    json_ok(
        200,
        "The full contact details (null when there are none)",
        obj(json!({ "contact": contact })),
    )
}
pub(crate) fn s_plan() -> Value {
    json!({"type": "object", "required": ["plan"], "additionalProperties": false, "properties": {
        "plan": {"type": "string", "maxLength": 262144, "description": "the migration plan as YAML (docs/releasing.md)"},
        "quiet_hours": {"type": "string", "pattern": "^[0-9]{1,2}-[0-9]{1,2}$"}}})
}
pub(crate) fn ok_dry_run() -> Success {
    json_ok(
        200,
        "Each selected enrolment's move and next pass, staying and moved, with totals per state and institution",
        obj(json!({
        "plan": {"type": "object"}, "at": instant(), "total": {"type": "object"}, "by_state": {"type": "object"},
        "by_institution": {"type": "object"}, "enrolments": {"type": "array", "items": {"type": "object"}}})),
    )
}
pub(crate) fn ok_applied() -> Success {
    json_ok(
        200,
        "What the application moved",
        obj(json!({
        "run": string(), "moved": int(), "already_moved": int(), "skipped": int(), "work_ended": int(), "batches": int(), "complete": {"type": "boolean"}})),
    )
}
pub(crate) fn ok_run() -> Success {
    json_ok(
        200,
        "The run",
        obj(json!({
        "id": string(), "pathway": string(), "from_version": int(), "to_version": int(), "status": string(),
        "owner": nullable(string()), "lease_until": nullable(instant()), "started_at": instant(), "finished_at": nullable(instant()),
        "moved": int(), "rolled_back": int()})),
    )
}
pub(crate) fn ok_rolled_back() -> Success {
    json_ok(
        200,
        "What the rollback restored",
        obj(json!({
        "run": string(), "restored": int(), "left": {"type": "array", "items": int()}, "work_not_reopened": int()})),
    )
}
pub(crate) fn s_enrol() -> Value {
    json!({"type": "object", "required": ["patient_id", "pathway", "entry"], "additionalProperties": false, "properties": {
        "patient_id": {"type": "string"}, "pathway": {"type": "string"}, "version": {"type": "integer", "minimum": 1}, "entry": {"type": "string"},
        "at": {"type": "string", "format": "date-time", "description": "when the enrolment started: at most 30 days before now and not after now (5 minutes of clock skew tolerated); the enrolment catches up from it"}}})
}
pub(crate) fn s_event() -> Value {
    json!({"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9_:.-]{1,96}$"}, "at": {"type": "string", "format": "date-time"},
        "data": {"type": "object", "maxProperties": 64, "description": "pathway variables the event sets, each declared by the pathway and of its type (a mismatch is a 400 naming the variable)",
                 "additionalProperties": {"oneOf": [{"type": "boolean"}, {"type": "number"}, {"type": "string", "maxLength": 1024}]}}}})
}
pub(crate) fn s_reason() -> Value {
    json!({"type": "object", "required": ["reason"], "additionalProperties": false, "properties": {"reason": {"type": "string", "minLength": 1}}})
}
pub(crate) fn s_answers() -> Value {
    json!({"type": "object", "required": ["answers"], "additionalProperties": false, "properties": {
        "answers": {"type": "object", "maxProperties": 200, "additionalProperties": {"type": "integer", "format": "int64"},
                    "description": "The raw answer to each item of the scale, by item id (see pathways/scales/)"},
        "answered_at": {"type": "string", "format": "date-time"}}})
}
pub(crate) fn s_readings() -> Value {
    json!({"type": "array", "maxItems": 1000, "items": {"type": "object", "required": ["patient_id", "kind", "value", "at", "reading_id"], "properties": {
        "patient_id": {"type": "string"}, "kind": {"type": "string"}, "value": {"type": "number"}, "unit": {"type": "string", "nullable": true},
        "at": {"type": "string", "format": "date-time"}, "reading_id": {"type": "string"}, "source": {"type": "string"}}}})
}
/// The fields each action reads: `claim` its `lease_minutes` (1–480, default 30), `complete` its
/// `outcome`, `reassign` its `assignee`, `snooze` its `until` (an instant) and `reason`; an action
/// ignores the fields of the others, so they are checked only by the action that reads them.
pub(crate) fn s_task() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "outcome": {"type": "string", "nullable": true, "description": "complete: one of the outcomes the pathway declares for the task (its `outcomes:`), else done, reached, problem, will_visit, call_later, unreachable, wrong_number, declined, deceased, moved_away"},
        "assignee": {"type": "string", "nullable": true, "description": "reassign: the staff member who takes the task"},
        "until": {"type": "string", "nullable": true, "description": "snooze: an instant such as 2026-11-23T08:00:00+08:00"},
        "reason": {"type": "string", "nullable": true, "description": "snooze: why (required, not blank)"},
        "lease_minutes": {"type": "integer", "nullable": true, "description": "claim: how long the claim holds, 1 to 480 minutes (default 30)"}}})
}
/// `resolve` reads `reason` (required, not blank); `acknowledge` needs no body.
pub(crate) fn s_alarm() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {
        "reason": {"type": "string", "nullable": true, "description": "resolve: why the episode is closed (required, not blank)"}}})
}
pub(crate) fn s_intake_reject() -> Value {
    json!({"type": "object", "additionalProperties": false, "required": ["reason"], "properties": {
        "reason": {"type": "string", "description": "why the patient is not enrolled (required, not blank)"}}})
}
pub(crate) fn s_decision() -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": {"reason": {"type": "string", "nullable": true}}})
}

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
fn errors(method: &str, path: &str, authenticated: bool) -> Vec<(u16, &'static str)> {
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
    if authenticated {
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
    for route in ROUTES {
        let Some(d) = &route.doc else { continue };
        let (method, path) = (route.method.as_str(), route.path);
        let mut params: Vec<Value> = Vec::new();
        for seg in path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            let schema = match name {
                "id" if path.starts_with("/patients") || path.starts_with("/pathways") => {
                    json!({"type": "string"})
                }
                "id" => json!({"type": "integer", "format": "int64"}),
                "version" => json!({"type": "integer", "minimum": 1}),
                "action" if path.starts_with("/alarms") => {
                    json!({"type": "string", "enum": ["acknowledge", "resolve"]})
                }
                "action" => {
                    json!({"type": "string", "enum": ["claim", "complete", "reassign", "snooze"]})
                }
                "decision" => json!({"type": "string", "enum": ["accept", "reject", "arrive"]}),
                _ => json!({"type": "string"}),
            };
            params.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
        }
        for (name, ty) in d.query {
            let schema = match *name {
                "limit" => json!({"type": "integer", "minimum": 1, "maximum": crate::MAX_PAGE}),
                "by" => json!({"type": "string", "enum": ["pathway", "role", "staff"]}),
                "format" => json!({"type": "string", "enum": ["dot", "mermaid"]}),
                "due_before" | "due_after" => json!({"type": "string", "format": "date-time"}),
                "from" | "to" => json!({"type": "string", "format": "date"}),
                "cursor" if path == "/alarms" => json!({"type": "string", "pattern": "^[0-9]+$",
                                   "description": "the `next_cursor` of the previous page"}),
                "cursor" => json!({"type": "string", "pattern": "^-?[0-9]+\\.-?[0-9]+\\.-?[0-9]+$",
                                   "description": "the `next_cursor` of the previous page"}),
                "status" if path == "/queues/tasks" => json!({"type": "string",
                    "enum": ["open", "claimed", "active", "done", "cancelled"]}),
                "status" if path == "/alarms" => json!({"type": "string",
                    "enum": carepath_engine::store::alarms::EPISODE_STATUSES.iter().map(|(s, _)| *s).collect::<Vec<_>>()}),
                _ => json!({"type": ty}),
            };
            params.push(json!({"name": name, "in": "query", "required": false, "schema": schema}));
        }
        let mut responses = serde_json::Map::new();
        let (status, answer) = (d.success)();
        responses.insert(status.to_string(), answer);
        for (status, description) in errors(method, path, route.module.is_some()) {
            responses.insert(status.to_string(), problem(description));
        }
        let mut op = json!({"summary": d.summary, "parameters": params, "responses": responses});
        if let Some(module) = route.module {
            op["security"] = json!([{"bearer": []}]);
            op["x-module"] = json!(module.as_str());
        }
        if let Some(schema) = d.body {
            // Task and alarm actions and referral decisions may be posted without a body.
            let required = !matches!(
                path,
                "/tasks/{id}/{action}" | "/referrals/{id}/{decision}" | "/alarms/{id}/{action}"
            );
            op["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": schema()}}});
        }
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[method] = op;
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
