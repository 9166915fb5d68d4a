//! The handlers, one file per module of the permission table. Each takes a [`Call`] (the caller,
//! already authorised for the route's module), its path, query and body, calls the store and
//! answers with a typed row; none holds SQL or writes to the audit, which the store does.
//!
//! [`Call`]: crate::Call

pub(crate) mod alarms;
pub(crate) mod audit;
pub(crate) mod catalog;
pub(crate) mod intake;
pub(crate) mod kpis;
pub(crate) mod migrations;
pub(crate) mod observations;
pub(crate) mod patients;
pub(crate) mod queue;
pub(crate) mod referrals;
pub(crate) mod service;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use jiff::Timestamp;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON body; a body that does not parse is a 400 (413 when too large) as problem+json. Being
/// the last extractor, it is read after the caller is authorised.
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Body(v))
    }
}

/// Query parameters; unknown or malformed ones are a 400 as problem+json. Placed after the
/// [`crate::Call`], so they are read once the caller is authorised.
pub(crate) struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(v) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        Ok(Params(v))
    }
}

/// An optional instant parameter or field named `name`.
pub(crate) fn instant(name: &str, v: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    v.map(|t| {
        t.parse::<Timestamp>().map_err(|_| {
            ApiError::BadRequest(format!(
                "`{name}` {t} is not an instant such as 2026-11-23T08:00:00+08:00"
            ))
        })
    })
    .transpose()
}
