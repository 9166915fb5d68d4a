//! Authentication (bearer tokens stored as SHA-256 hashes, bound to a staff member with roles and
//! an institution) and module permissions per role, checked once for every route by the [`Call`]
//! extractor with the module the route table names. Data scoping by institution happens in the
//! store's queries; a denied attempt is audited.

use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use carepath_engine::store::queries::{self, Caller};
use jiff::Timestamp;

use crate::error::Audited;
use crate::routes::{Record, Route};
use crate::{ApiError, AppState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// Task boards: read, claim, complete, reassign, snooze; alarm episodes: list, acknowledge,
    /// resolve.
    Queue,
    /// Patients and enrolments: create, read, timeline, events, withdraw, scale pushes and answers.
    Patients,
    /// Posting device and staff readings.
    Observations,
    /// Two-way referrals in the alliance.
    Referrals,
    /// Indicators.
    Kpis,
    /// Publishing pathway versions.
    Pathways,
    /// Verifying the audit record.
    Audit,
    /// Reading published pathways and their graphs.
    Catalog,
    /// Patients' full contact details (everyone else sees them masked).
    Contacts,
    /// The case-intake queue: candidates intake rules found, accepted (enrolled) or rejected.
    Intake,
}

impl Module {
    pub fn as_str(self) -> &'static str {
        match self {
            Module::Queue => "queue",
            Module::Patients => "patients",
            Module::Observations => "observations",
            Module::Referrals => "referrals",
            Module::Kpis => "kpis",
            Module::Pathways => "pathways",
            Module::Audit => "audit",
            Module::Catalog => "catalog",
            Module::Contacts => "contacts",
            Module::Intake => "intake",
        }
    }
}

use Module::*;

/// The permission table (seed 000: per-role module permissions). Whoever administers the system
/// cannot read patient data or the audit; the auditor reads only the audit.
pub const ROLE_MODULES: &[(&str, &[Module])] = &[
    (
        "case_manager",
        &[
            Queue,
            Patients,
            Contacts,
            Observations,
            Referrals,
            Kpis,
            Catalog,
            Intake,
        ],
    ),
    (
        "hospital_case_manager",
        &[
            Queue,
            Patients,
            Contacts,
            Observations,
            Referrals,
            Kpis,
            Catalog,
            Intake,
        ],
    ),
    (
        "clinic_case_manager",
        &[
            Queue,
            Patients,
            Contacts,
            Observations,
            Referrals,
            Kpis,
            Catalog,
            Intake,
        ],
    ),
    (
        "ward_nurse",
        &[Queue, Patients, Contacts, Observations, Catalog],
    ),
    ("nurse", &[Queue, Patients, Contacts, Observations, Catalog]),
    (
        "midwife",
        &[Queue, Patients, Contacts, Observations, Catalog],
    ),
    (
        "doctor",
        &[Queue, Patients, Observations, Referrals, Catalog],
    ),
    ("rehab_therapist", &[Queue, Patients, Catalog]),
    ("dietitian", &[Queue, Patients, Catalog]),
    ("pharmacist", &[Queue, Patients, Catalog]),
    ("head_nurse", &[Queue, Patients, Kpis, Catalog]),
    ("referral_coordinator", &[Queue, Referrals, Kpis, Catalog]),
    ("admin", &[Kpis, Catalog]),
    ("informaticist", &[Pathways, Catalog]),
    // The auditor reads only the audit; a device gateway only posts readings.
    ("auditor", &[Audit]),
    ("device_gateway", &[Observations]),
];

pub fn allowed(roles: &[String], module: Module) -> bool {
    roles.iter().any(|r| {
        ROLE_MODULES
            .iter()
            .any(|(role, ms)| role == r && ms.contains(&module))
    })
}

/// Where the [`Call`] extractor leaves the caller for [`audit_outcomes`], which reads it once the
/// handler has answered.
#[derive(Clone, Default)]
pub(crate) struct CallerSlot(Arc<Mutex<Option<Caller>>>);

impl CallerSlot {
    pub(crate) fn set(&self, c: &Caller) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(c.clone());
        }
    }

    fn take(&self) -> Option<Caller> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// The audit record's word for how a request ended: a redirect (a workstation form answered with
/// the page to show next, a page sending its reader elsewhere) ended as asked.
fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=399 => "ok",
        403 => "denied",
        404 => "not_found",
        409 => "conflict",
        400..=499 => "invalid",
        _ => "error",
    }
}

/// Audits what the handlers do not: every authenticated request that was refused or failed
/// (unless its refusal is already in the record) and every access to configuration, allowed or
/// not. Unauthenticated requests (401) name no one and are counted in the metrics only.
pub(crate) async fn audit_outcomes(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let slot = CallerSlot::default();
    req.extensions_mut().insert(slot.clone());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let remote = crate::request_remote(req.extensions(), req.headers(), &state.trusted_proxies);
    let token = bearer(req.headers()).map(str::to_string);
    let res = next.run(req).await;
    let status = res.status();
    if res.extensions().get::<Audited>().is_some() {
        return res;
    }
    // A request refused before its handler ran (a body repeating a key, a body too large) still
    // names its caller when it carries a valid token.
    let caller = match (slot.take(), token) {
        (Some(c), _) => Some(c),
        (None, Some(t)) if status.is_client_error() && status != StatusCode::UNAUTHORIZED => {
            queries::caller_for_token(&state.pool, &t)
                .await
                .ok()
                .flatten()
        }
        _ => None,
    };
    let Some(c) = caller else {
        return res;
    };
    // Served requests of routes whose store does not audit them are recorded here.
    let configuration = route
        .as_deref()
        .and_then(|r| crate::routes::find(&method, r))
        .is_some_and(|r| r.record == Record::Layer);
    // A redirect is a request served: the page it sends its reader to is another request.
    if (status.is_success() || status.is_redirection()) && !configuration {
        return res;
    }
    let action = format!("{method} {}", route.as_deref().unwrap_or("(no route)"));
    let written = state
        .audit
        .append(queries::AuditEntry::new(
            &c.staff_id,
            Some(&c.institution_id),
            &action,
            &path.chars().take(200).collect::<String>(),
            &[],
            outcome(status),
            &remote,
            state.now(),
        ))
        .await;
    match written {
        Ok(()) => res,
        // What cannot be audited is not served.
        Err(e) if status.is_success() => ApiError::from(e).into_response(),
        Err(e) => {
            tracing::error!("a refusal could not be audited: {e}");
            res
        }
    }
}

/// An authenticated request its caller's roles allow: who calls, from where (see
/// [`crate::client_address`]), the time the API reads for it, and the action a refusal is audited
/// under. Extracting it answers 401 without a valid token and 403 (audited) when the caller's roles
/// do not grant the module the route table names for the route.
pub struct Call {
    pub caller: Caller,
    pub remote: String,
    pub now: Timestamp,
    pub action: &'static str,
}

impl FromRequestParts<AppState> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(route) = parts.extensions.get::<&'static Route>().copied() else {
            return Err(ApiError::Internal(
                "a handler that needs a caller is served outside the route table".into(),
            ));
        };
        let Some(token) = bearer(&parts.headers) else {
            return Err(ApiError::Unauthorized(
                "send `Authorization: Bearer <token>`".into(),
            ));
        };
        let Some(caller) = queries::caller_for_token(&state.pool, token).await? else {
            return Err(ApiError::Unauthorized("the token is not valid".into()));
        };
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            slot.set(&caller);
        }
        let call = Call {
            remote: crate::request_remote(
                &parts.extensions,
                &parts.headers,
                &state.trusted_proxies,
            ),
            now: state.now(),
            action: route.action,
            caller,
        };
        match route.module {
            Some(module) if !allowed(&call.caller.roles, module) => {
                Err(call.refuse(state, module).await)
            }
            _ => Ok(call),
        }
    }
}

impl Call {
    /// Audits the refusal of a caller whose roles do not grant `module`, and says why.
    pub(crate) async fn refuse(&self, state: &AppState, module: Module) -> ApiError {
        let c = &self.caller;
        let written = state
            .audit
            .append(queries::AuditEntry::new(
                &c.staff_id,
                Some(&c.institution_id),
                self.action,
                module.as_str(),
                &[],
                "denied",
                &self.remote,
                self.now,
            ))
            .await;
        if let Err(e) = written {
            return e.into();
        }
        ApiError::Forbidden(format!(
            "your role(s) {} do not grant the {} module",
            c.roles.join(", "),
            module.as_str()
        ))
        .audited()
    }
}

/// The bearer token of `Authorization`, if it has one of a plausible length. The scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| {
            h.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
}
