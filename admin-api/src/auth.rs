//! Authentication (bearer tokens stored as SHA-256 hashes, bound to a staff member with roles and
//! an institution) and module permissions per role. Data scoping by institution happens in the
//! store's queries; a denied attempt is audited.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use carepath_engine::store::queries::{self, Caller};

use crate::{ApiError, AppState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// Task boards: read, claim, complete, reassign, snooze.
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
        }
    }
}

use Module::*;

/// The permission table (seed 000: per-role module permissions). Whoever administers the system
/// cannot read patient data or the audit; the auditor reads only the audit.
pub const ROLE_MODULES: &[(&str, &[Module])] = &[
    (
        "case_manager",
        &[Queue, Patients, Observations, Referrals, Kpis],
    ),
    (
        "hospital_case_manager",
        &[Queue, Patients, Observations, Referrals, Kpis],
    ),
    (
        "clinic_case_manager",
        &[Queue, Patients, Observations, Referrals, Kpis],
    ),
    ("ward_nurse", &[Queue, Patients, Observations]),
    ("nurse", &[Queue, Patients, Observations]),
    ("midwife", &[Queue, Patients, Observations]),
    ("doctor", &[Queue, Patients, Observations, Referrals]),
    ("rehab_therapist", &[Queue, Patients]),
    ("dietitian", &[Queue, Patients]),
    ("pharmacist", &[Queue, Patients]),
    ("head_nurse", &[Queue, Patients, Kpis]),
    ("referral_coordinator", &[Queue, Referrals, Kpis]),
    ("admin", &[Kpis]),
    ("informaticist", &[Pathways]),
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

/// The authenticated caller.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let Some(token) = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256)
        else {
            return Err(ApiError::Unauthorized(
                "send `Authorization: Bearer <token>`".into(),
            ));
        };
        match queries::caller_for_token(&state.pool, token).await? {
            Some(c) => Ok(Auth(c)),
            None => Err(ApiError::Unauthorized("the token is not valid".into())),
        }
    }
}

/// Refuses (403, audited) a caller whose roles do not grant `module`.
pub async fn require(
    state: &AppState,
    c: &Caller,
    module: Module,
    action: &str,
    remote: &str,
) -> Result<(), ApiError> {
    if allowed(&c.roles, module) {
        return Ok(());
    }
    queries::audit_alone(
        &state.audit,
        &c.staff_id,
        Some(&c.institution_id),
        action,
        module.as_str(),
        &[],
        "denied",
        remote,
        state.now(),
    )
    .await?;
    Err(ApiError::Forbidden(format!(
        "your role(s) {} do not grant the {} module",
        c.roles.join(", "),
        module.as_str()
    )))
}
