//! Every FHIR answer that is not a success is an OperationOutcome: one issue with its severity,
//! its code from the FHIR `issue-type` value set, a diagnostic in words and the FHIRPath
//! `expression` of the element at fault, so a sending system can point at the field.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carepath_engine::store::StoreError;
use serde_json::{Value, json};

use crate::ApiError;
use crate::error::Audited;

pub(crate) const FHIR_JSON: &str = "application/fhir+json";

#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) status: StatusCode,
    /// The issue type: invalid, structure, required, value, not-found, forbidden, conflict, duplicate,
    /// processing, not-supported, too-costly, security, login, exception.
    pub(crate) code: &'static str,
    pub(crate) diagnostics: String,
    pub(crate) expression: Option<String>,
    /// The refusal is in the audit record already.
    pub(crate) audited: bool,
}

impl Outcome {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        diagnostics: impl Into<String>,
    ) -> Outcome {
        Outcome {
            status,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
            audited: false,
        }
    }

    /// Structurally wrong input (a wrong type, a missing element, a malformed value): 400.
    pub(crate) fn invalid(expression: &str, diagnostics: impl Into<String>) -> Outcome {
        Outcome::new(StatusCode::BAD_REQUEST, "invalid", diagnostics).at(expression)
    }

    /// Well-formed input carepath cannot act on (an unknown code or unit, a reference to nothing
    /// the caller may see, a business rule): 422.
    pub(crate) fn unprocessable(expression: &str, diagnostics: impl Into<String>) -> Outcome {
        Outcome::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", diagnostics).at(expression)
    }

    pub(crate) fn not_supported(expression: &str, diagnostics: impl Into<String>) -> Outcome {
        Outcome::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not-supported",
            diagnostics,
        )
        .at(expression)
    }

    pub(crate) fn not_found(diagnostics: impl Into<String>) -> Outcome {
        Outcome::new(StatusCode::NOT_FOUND, "not-found", diagnostics)
    }

    /// Names the element at fault.
    pub(crate) fn at(mut self, expression: &str) -> Outcome {
        self.expression = Some(expression.to_string());
        self
    }

    /// Names the element, unless a more precise one is named already.
    pub(crate) fn or_at(self, expression: &str) -> Outcome {
        if self.expression.is_some() {
            self
        } else {
            self.at(expression)
        }
    }

    /// The same issue located inside entry `index` of a Bundle: `Observation.code` becomes
    /// `Bundle.entry[3].resource.code`.
    pub(crate) fn in_entry(mut self, index: usize) -> Outcome {
        let base = format!("Bundle.entry[{index}]");
        self.expression = Some(match self.expression.take() {
            Some(e) if e.starts_with("Bundle.entry[") => e,
            Some(e) if e.starts_with("Bundle.") => format!("{base}{}", &e["Bundle".len()..]),
            Some(e) => match e.split_once('.') {
                Some((_, rest)) => format!("{base}.resource.{rest}"),
                None => format!("{base}.resource"),
            },
            None => base,
        });
        self.diagnostics = format!("entry {index}: {}", self.diagnostics);
        self
    }

    pub(crate) fn resource(&self) -> Value {
        let mut issue = json!({
            "severity": if self.status.is_server_error() { "fatal" } else { "error" },
            "code": self.code,
            "diagnostics": self.diagnostics,
        });
        if let Some(e) = &self.expression {
            issue["expression"] = json!([e]);
        }
        json!({"resourceType": "OperationOutcome", "issue": [issue]})
    }
}

/// The issue type of an error answered with `status`.
pub(crate) fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "login",
        403 => "forbidden",
        404 | 410 => "not-found",
        405 | 415 => "not-supported",
        409 | 412 => "conflict",
        413 => "too-costly",
        408 => "timeout",
        422 => "processing",
        400..=499 => "invalid",
        _ => "exception",
    }
}

impl From<ApiError> for Outcome {
    fn from(e: ApiError) -> Outcome {
        if let ApiError::Internal(detail) = &e {
            tracing::error!("internal error: {detail}");
        }
        let (status, _, detail) = e.parts();
        let mut o = Outcome::new(status, code_for(status), detail);
        o.audited = matches!(e, ApiError::Audited(_));
        o
    }
}

impl From<StoreError> for Outcome {
    fn from(e: StoreError) -> Outcome {
        let diagnostics = match &e {
            StoreError::NotFound(m) => format!("{m} not found"),
            StoreError::Db(_) | StoreError::AuditUnavailable(_) => {
                "the server could not complete the request".to_string()
            }
            other => other.to_string(),
        };
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) | StoreError::Step(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Forbidden(_) => StatusCode::FORBIDDEN,
            StoreError::Db(carepath_engine::store::DbError::Invalid(_)) => StatusCode::BAD_REQUEST,
            StoreError::Db(_) | StoreError::AuditUnavailable(_) => {
                tracing::error!("internal error: {e}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Outcome::new(status, code_for(status), diagnostics)
    }
}

/// A store error from an operation that audited its own refusal.
pub(crate) fn refused(e: StoreError) -> Outcome {
    let internal = matches!(e, StoreError::Db(_) | StoreError::AuditUnavailable(_));
    let mut o = Outcome::from(e);
    o.audited = !internal;
    o
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let mut res = fhir_json(self.status, &self.resource());
        if self.audited {
            res.extensions_mut().insert(Audited);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// A FHIR JSON answer.
pub(crate) fn fhir_json(status: StatusCode, body: &Value) -> Response {
    let mut res = (status, axum::Json(body)).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    res
}
