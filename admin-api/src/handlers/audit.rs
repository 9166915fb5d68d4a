//! Verifying the audit record: its keyed hash chain and the signed checkpoints kept outside the
//! database.

use axum::Json;
use axum::extract::State;
use carepath_engine::store::queries;
use serde::Serialize;

use crate::{ApiError, AppState, Call};

/// Whether the record is intact; `problem` and `broken_id` say where it is not.
#[derive(Serialize)]
pub(crate) struct AuditCheck {
    pub(crate) valid: bool,
    pub(crate) entries: u64,
    pub(crate) legacy_entries: u64,
    pub(crate) checkpoints: u64,
    pub(crate) problem: Option<String>,
    pub(crate) broken_id: Option<i64>,
}

pub(crate) async fn verify(
    State(s): State<AppState>,
    _call: Call,
) -> Result<Json<AuditCheck>, ApiError> {
    Ok(Json(check(&s).await?))
}

/// Verifies the whole record against the checkpoints the server was given: what
/// `GET /audit/verify` answers and the auditor's page shows.
pub(crate) async fn check(s: &AppState) -> Result<AuditCheck, ApiError> {
    let checkpoints = match s.audit_checkpoints.as_deref() {
        Some(path) => match carepath_engine::audit::read_checkpoints(path) {
            Ok(c) => c,
            Err(why) => {
                return Ok(AuditCheck {
                    valid: false,
                    entries: 0,
                    legacy_entries: 0,
                    checkpoints: 0,
                    problem: Some(why),
                    broken_id: None,
                });
            }
        },
        None => Vec::new(),
    };
    let v = queries::verify_audit(&s.pool, &checkpoints).await?;
    Ok(AuditCheck {
        valid: v.intact(),
        entries: v.rows,
        legacy_entries: v.legacy_rows,
        checkpoints: v.checkpoints,
        problem: v.broken.as_ref().map(|b| b.to_string()),
        broken_id: v.broken.as_ref().and_then(|b| b.id),
    })
}
