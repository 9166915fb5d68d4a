//! FHIR R4 (4.0.1) at `/fhir`: the resources hospital systems exchange with a follow-up service —
//! Patient, Encounter, Condition, Observation, Questionnaire and QuestionnaireResponse, Task,
//! CarePlan — and transaction and batch Bundles.
//!
//! The interface is a translation, not a second store: every resource is read field by field
//! ([`json::Node`], which knows each element's FHIRPath) into the values the rest of the API
//! uses, and written by the same store and engine functions, inside one transaction per
//! resource (or per transaction Bundle), so a Bundle is all or nothing. Its routes are served
//! like every other route: the [`crate::Call`] extractor checks the token and the module
//! [`ROUTES`] names, the store audits what is read and written, the audit layer records refusals.
//! Errors are OperationOutcomes ([`outcome::Outcome`]) with the element at fault.

mod bundle;
mod careplan;
mod condition;
mod encounter;
mod json;
mod observation;
mod outcome;
mod patient;
mod questionnaire;
mod search;
mod task;
mod write;

use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use serde_json::{Value, json};

use crate::auth::Module;
use crate::routes::{Method, Record, Route};
use crate::{AppState, Call, MAX_BODY};
pub(crate) use outcome::Outcome;
use outcome::{FHIR_JSON, code_for, fhir_json};

/// The FHIR version served.
pub const FHIR_VERSION: &str = "4.0.1";

/// What each resource type supports: its interactions and search parameters (name, type), which
/// the CapabilityStatement lists and searches are checked against.
pub(crate) struct ResourceSupport {
    pub(crate) resource: &'static str,
    pub(crate) interactions: &'static [&'static str],
    pub(crate) search: &'static [(&'static str, &'static str)],
}

const PAGING: (&str, &str) = ("_count", "number");

pub(crate) static RESOURCES: &[ResourceSupport] = &[
    ResourceSupport {
        resource: "Patient",
        interactions: &["create", "read", "update", "search-type"],
        search: &[("identifier", "token"), ("_id", "token"), PAGING],
    },
    ResourceSupport {
        resource: "Encounter",
        interactions: &["create", "read", "update", "search-type"],
        search: &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("date", "date"),
            ("_id", "token"),
            PAGING,
        ],
    },
    ResourceSupport {
        resource: "Condition",
        interactions: &["create", "read", "search-type"],
        search: &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("_id", "token"),
            PAGING,
        ],
    },
    ResourceSupport {
        resource: "Observation",
        interactions: &["create", "read", "search-type"],
        search: &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("date", "date"),
            ("_id", "token"),
            PAGING,
        ],
    },
    ResourceSupport {
        resource: "Questionnaire",
        interactions: &["read", "search-type"],
        search: &[("_id", "token"), ("url", "uri"), PAGING],
    },
    ResourceSupport {
        resource: "QuestionnaireResponse",
        interactions: &["create"],
        search: &[],
    },
    ResourceSupport {
        resource: "Task",
        interactions: &["read", "update", "search-type"],
        search: &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("status", "token"),
            ("_id", "token"),
            PAGING,
        ],
    },
    ResourceSupport {
        resource: "CarePlan",
        interactions: &["read", "search-type"],
        search: &[
            ("patient", "reference"),
            ("subject", "reference"),
            ("date", "date"),
            ("_id", "token"),
            PAGING,
        ],
    },
];

pub(crate) fn support(resource: &str) -> Option<&'static ResourceSupport> {
    RESOURCES.iter().find(|r| r.resource == resource)
}

macro_rules! fhir_route {
    ($method:expr, $path:literal, $module:expr, $action:literal, $record:expr, $handler:expr) => {
        Route {
            method: $method,
            path: $path,
            module: $module,
            action: $action,
            record: $record,
            handler: $handler,
            doc: None,
        }
    };
}

use Method::{Get, Post, Put};
use Module::{Catalog, Observations, Patients, Queue};

/// The FHIR routes. They are not in the OpenAPI document (the CapabilityStatement describes
/// them); `module: None` here still needs a valid token — the Bundle's entries are each checked
/// against their own resource's module, and the CapabilityStatement touches no data.
pub static ROUTES: &[Route] = &[
    fhir_route!(
        Post,
        "/fhir/Patient",
        Some(Patients),
        "fhir.patient.create",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, b: FhirBody| create(s, c, h, b, "Patient")
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Patient",
        Some(Patients),
        "fhir.patient.search",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s, c, h, q, "Patient"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Patient/{id}",
        Some(Patients),
        "fhir.patient.read",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s, c, h, p, "Patient"
            )
        )
    ),
    fhir_route!(
        Put,
        "/fhir/Patient/{id}",
        Some(Patients),
        "fhir.patient.update",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>, b: FhirBody| update(
                s, c, h, p, b, "Patient"
            )
        )
    ),
    fhir_route!(
        Post,
        "/fhir/Encounter",
        Some(Patients),
        "fhir.encounter.create",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, b: FhirBody| create(
                s,
                c,
                h,
                b,
                "Encounter"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Encounter",
        Some(Patients),
        "fhir.encounter.search",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s,
                c,
                h,
                q,
                "Encounter"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Encounter/{id}",
        Some(Patients),
        "fhir.encounter.read",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s,
                c,
                h,
                p,
                "Encounter"
            )
        )
    ),
    fhir_route!(
        Put,
        "/fhir/Encounter/{id}",
        Some(Patients),
        "fhir.encounter.update",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>, b: FhirBody| update(
                s,
                c,
                h,
                p,
                b,
                "Encounter"
            )
        )
    ),
    fhir_route!(
        Post,
        "/fhir/Condition",
        Some(Patients),
        "fhir.condition.create",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, b: FhirBody| create(
                s,
                c,
                h,
                b,
                "Condition"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Condition",
        Some(Patients),
        "fhir.condition.search",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s,
                c,
                h,
                q,
                "Condition"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Condition/{id}",
        Some(Patients),
        "fhir.condition.read",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s,
                c,
                h,
                p,
                "Condition"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/metadata",
        None,
        "fhir.metadata",
        Record::Layer,
        |m| on(m, metadata)
    ),
    fhir_route!(Post, "/fhir", None, "fhir.bundle", Record::Store, |m| on(
        m,
        bundle::post
    )),
    fhir_route!(Post, "/fhir/", None, "fhir.bundle", Record::Store, |m| on(
        m,
        bundle::post
    )),
    fhir_route!(
        Post,
        "/fhir/Observation",
        Some(Observations),
        "fhir.observation.create",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, b: FhirBody| create(
                s,
                c,
                h,
                b,
                "Observation"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Observation",
        Some(Observations),
        "fhir.observation.search",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s,
                c,
                h,
                q,
                "Observation"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Observation/{id}",
        Some(Observations),
        "fhir.observation.read",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s,
                c,
                h,
                p,
                "Observation"
            )
        )
    ),
    fhir_route!(
        Post,
        "/fhir/QuestionnaireResponse",
        Some(Patients),
        "fhir.questionnaireresponse.create",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, b: FhirBody| create(
                s,
                c,
                h,
                b,
                "QuestionnaireResponse"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Questionnaire",
        Some(Catalog),
        "fhir.questionnaire.search",
        Record::Layer,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s,
                c,
                h,
                q,
                "Questionnaire"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Questionnaire/{id}",
        Some(Catalog),
        "fhir.questionnaire.read",
        Record::Layer,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s,
                c,
                h,
                p,
                "Questionnaire"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Task",
        Some(Queue),
        "fhir.task.search",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s, c, h, q, "Task"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/Task/{id}",
        Some(Queue),
        "fhir.task.read",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s, c, h, p, "Task"
            )
        )
    ),
    fhir_route!(
        Put,
        "/fhir/Task/{id}",
        Some(Queue),
        "fhir.task.update",
        Record::Store,
        |m| on(m, task::put)
    ),
    fhir_route!(
        Get,
        "/fhir/CarePlan",
        Some(Patients),
        "fhir.careplan.search",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, q: RawQuery| search::search(
                s, c, h, q, "CarePlan"
            )
        )
    ),
    fhir_route!(
        Get,
        "/fhir/CarePlan/{id}",
        Some(Patients),
        "fhir.careplan.read",
        Record::Store,
        |m| on(
            m,
            |s: State<AppState>, c: Call, h: HeaderMap, p: Path<String>| search::read(
                s, c, h, p, "CarePlan"
            )
        )
    ),
];

/// The module a caller's roles must grant to write or read `resource`.
pub(crate) fn module_of(resource: &str) -> Option<Module> {
    match resource {
        "Patient" | "Encounter" | "Condition" | "CarePlan" | "QuestionnaireResponse" => {
            Some(Patients)
        }
        "Observation" => Some(Observations),
        "Task" => Some(Queue),
        "Questionnaire" => Some(Catalog),
        _ => None,
    }
}

/// A FHIR JSON body: `application/fhir+json` (or `application/json`), at most [`MAX_BODY`]
/// bytes, one JSON object. Being the last extractor, it is read once the caller is authorised.
pub(crate) struct FhirBody(pub(crate) Value);

impl<S: Send + Sync> FromRequest<S> for FhirBody {
    type Rejection = Outcome;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        match ct.as_deref() {
            Some(FHIR_JSON | "application/json" | "application/json+fhir") => {}
            other => {
                return Err(Outcome::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "not-supported",
                    format!(
                        "send the resource as `Content-Type: {FHIR_JSON}`{}",
                        other
                            .map(|o| format!(" (got `{}`)", json::clip(o)))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| {
                Outcome::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-costly",
                    "the request body is larger than 1 MiB",
                )
            })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Outcome::new(
                StatusCode::BAD_REQUEST,
                "structure",
                format!("the body is not JSON: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(Outcome::new(
                StatusCode::BAD_REQUEST,
                "structure",
                "the body must be a JSON object: a FHIR resource",
            ));
        }
        Ok(FhirBody(v))
    }
}

/// The base URL resources are named under, from the request's `Host` (characters of a host name
/// only; anything else is replaced by `localhost`).
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    format!("http://{host}/fhir")
}

/// `POST /fhir/{type}`: one resource, in its own transaction.
async fn create(
    State(s): State<AppState>,
    call: Call,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
    resource: &'static str,
) -> Result<Response, Outcome> {
    let if_none_exist = headers
        .get("if-none-exist")
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| Outcome::invalid("If-None-Exist", "If-None-Exist is not text"))
        })
        .transpose()?;
    let verb = write::Verb::Create { if_none_exist };
    let written = write::one(&s, &call, &base_url(&headers), resource, &verb, &body).await?;
    Ok(written.response(&base_url(&headers)))
}

/// `PUT /fhir/{type}/{id}`: one resource, in its own transaction.
async fn update(
    State(s): State<AppState>,
    call: Call,
    headers: HeaderMap,
    Path(id): Path<String>,
    FhirBody(body): FhirBody,
    resource: &'static str,
) -> Result<Response, Outcome> {
    let verb = write::Verb::Update { id };
    let written = write::one(&s, &call, &base_url(&headers), resource, &verb, &body).await?;
    Ok(written.response(&base_url(&headers)))
}

/// `GET /fhir/metadata`: the CapabilityStatement.
async fn metadata(State(_): State<AppState>, call: Call, headers: HeaderMap) -> Response {
    let resources: Vec<Value> = RESOURCES
        .iter()
        .map(|r| {
            json!({
                "type": r.resource,
                "interaction": r.interactions.iter().map(|i| json!({"code": i})).collect::<Vec<_>>(),
                "searchParam": r.search.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
                "conditionalCreate": r.interactions.contains(&"create"),
            })
        })
        .collect();
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": call.now.strftime("%Y-%m-%d").to_string(),
        "kind": "instance",
        "software": {"name": "carepath", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "carepath clinical pathway engine", "url": base_url(&headers)},
        "fhirVersion": FHIR_VERSION,
        "format": ["json", FHIR_JSON],
        "rest": [{
            "mode": "server",
            "security": {"description": "Bearer tokens; each resource needs the module of the caller's roles that the admin API's permission table names (Patient, Encounter, Condition, CarePlan, QuestionnaireResponse: patients; Observation: observations; Task: queue; Questionnaire: catalog)."},
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    });
    fhir_json(StatusCode::OK, &body)
}

/// Answers every error under `/fhir` — including the API's own (401 without a token, 403, 404 for
/// an unknown resource type, 405, 413, 408) — as an OperationOutcome.
pub(crate) async fn as_outcome(req: Request, next: axum::middleware::Next) -> Response {
    let fhir = {
        let p = req.uri().path();
        p == "/fhir" || p.starts_with("/fhir/")
    };
    let res = next.run(req).await;
    let status = res.status();
    if !fhir || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let is_fhir = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(FHIR_JSON.as_bytes()));
    if is_fhir {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = serde_json::from_slice::<Value>(&text)
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let detail = if status == StatusCode::NOT_FOUND && detail == "no such route" {
        "no such FHIR interaction: carepath serves the resource types and interactions its CapabilityStatement (GET /fhir/metadata) lists".to_string()
    } else {
        detail
    };
    let mut out = Outcome::new(status, code_for(status), detail).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
