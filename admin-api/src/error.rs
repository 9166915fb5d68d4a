//! One error type for every handler, rendered as RFC 9457 problem+json with a reason. Internal
//! errors are logged once here and answered with a plain 500 that leaks nothing.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use carepath_engine::store::{DbError, StoreError};
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    Unprocessable(String),
    PayloadTooLarge(String),
    Unavailable(String),
    Internal(String),
    /// An error whose refusal is already in the audit record (written by the store in the
    /// transaction that found it, or by the permission check): the audit layer adds nothing.
    Audited(Box<ApiError>),
}

/// Marks a response whose outcome is already audited.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Audited;

impl ApiError {
    /// This error as already audited.
    pub fn audited(self) -> ApiError {
        match self {
            ApiError::Audited(_) => self,
            other => ApiError::Audited(Box::new(other)),
        }
    }

    /// A store error from an operation that audits its own refusals (not found, conflict,
    /// invalid, forbidden); failures of the database itself are not refusals.
    pub fn refused_by_store(e: StoreError) -> ApiError {
        match e {
            StoreError::Db(_) | StoreError::AuditUnavailable(_) => e.into(),
            other => ApiError::from(other).audited(),
        }
    }

    pub(crate) fn parts(&self) -> (StatusCode, &'static str, &str) {
        match self {
            ApiError::Audited(inner) => inner.parts(),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Bad request", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "Unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "Forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "Conflict", m),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, "Unprocessable", m),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large", m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error",
                "the server could not complete the request",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Audited(inner) = self {
            let mut res = inner.into_response();
            res.extensions_mut().insert(Audited);
            return res;
        }
        if let ApiError::Internal(detail) = &self {
            tracing::error!("internal error: {detail}");
        }
        let (status, title, detail) = self.parts();
        problem(status, title, detail)
    }
}

/// An RFC 9457 problem+json response.
pub(crate) fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    {
        let body = json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail});
        let mut res = (status, Json(body)).into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(format!("{m} not found")),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            StoreError::Forbidden(m) => ApiError::Forbidden(m),
            StoreError::Step(e) => ApiError::Unprocessable(e.to_string()),
            StoreError::Db(DbError::Invalid(m)) => ApiError::BadRequest(m),
            StoreError::Db(e) => ApiError::Internal(e.to_string()),
            StoreError::AuditUnavailable(e) => ApiError::Internal(e),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is larger than 1 MiB".into())
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::BadRequest(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}
