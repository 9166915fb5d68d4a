//! Patients and their enrolments: registering and reading patients, enrolling, the timeline,
//! events, withdrawal, scale pushes and their answers.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use carepath_engine::scheduler;
use carepath_engine::store::NewEnrolment;
use carepath_engine::store::crypto::Contact;
use carepath_engine::store::patients::{self, PatientUpsert, PatientView};
use carepath_engine::store::queries::{self, Timeline};
use carepath_engine::store::scales::{self, Answered, PushView};
use serde::{Deserialize, Serialize};

use super::{Body, instant};
use crate::{ApiError, AppState, Call};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatientBody {
    id: String,
    birth_date: Option<String>,
    #[serde(default = "unknown")]
    sex: String,
    #[serde(default = "default_tz")]
    tz: String,
    preferred_channel: Option<String>,
    /// `zh` or `en`.
    lang: Option<String>,
    /// Mobile number, e-mail, WeChat openid: stored encrypted, shown masked.
    contact: Option<Contact>,
    /// A community clinic or township hospital of the caller's alliance.
    home_institution: Option<String>,
}

fn unknown() -> String {
    "unknown".into()
}
fn default_tz() -> String {
    "Asia/Shanghai".into()
}

#[derive(Serialize)]
pub(crate) struct Registered {
    id: String,
}

pub(crate) async fn create(
    State(s): State<AppState>,
    call: Call,
    Body(b): Body<PatientBody>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let p = PatientUpsert {
        id: b.id,
        birth_date: b.birth_date,
        sex: Some(b.sex),
        tz: Some(b.tz),
        contact: b.contact,
        preferred_channel: b.preferred_channel,
        lang: b.lang,
        home_institution: b.home_institution,
    };
    patients::create(
        &s.pool,
        &call.caller,
        s.contact_key.as_deref(),
        &p,
        &call.remote,
        call.now,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Registered { id: p.id })))
}

/// What `PUT /patients/{id}` may change; a field left out keeps its value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatientChange {
    birth_date: Option<String>,
    sex: Option<String>,
    tz: Option<String>,
    preferred_channel: Option<String>,
    lang: Option<String>,
    /// Replaces the contact details as a whole.
    contact: Option<Contact>,
    home_institution: Option<String>,
}

pub(crate) async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    call: Call,
    Body(b): Body<PatientChange>,
) -> Result<Json<Registered>, ApiError> {
    let p = PatientUpsert {
        id,
        birth_date: b.birth_date,
        sex: b.sex,
        tz: b.tz,
        contact: b.contact,
        preferred_channel: b.preferred_channel,
        lang: b.lang,
        home_institution: b.home_institution,
    };
    patients::update(
        &s.pool,
        &call.caller,
        s.contact_key.as_deref(),
        &p,
        &call.remote,
        call.now,
    )
    .await?;
    Ok(Json(Registered { id: p.id }))
}

pub(crate) async fn erase_contact(
    State(s): State<AppState>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Json<Registered>, ApiError> {
    let mut tx = s
        .pool
        .begin()
        .await
        .map_err(carepath_engine::store::StoreError::from)?;
    patients::erase_contact(&mut tx, &call.caller, &id, &call.remote, call.now).await?;
    tx.commit()
        .await
        .map_err(carepath_engine::store::StoreError::from)?;
    Ok(Json(Registered { id }))
}

pub(crate) async fn contact(
    State(s): State<AppState>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Json<ContactView>, ApiError> {
    let c = patients::contact(
        &s.pool,
        &s.audit,
        &call.caller,
        s.contact_key.as_deref(),
        &id,
        &call.remote,
        call.now,
    )
    .await?;
    Ok(Json(ContactView { contact: c }))
}

#[derive(Serialize)]
pub(crate) struct ContactView {
    contact: Option<Contact>,
}

pub(crate) async fn read(
    State(s): State<AppState>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Json<PatientView>, ApiError> {
    let patient = patients::read(
        &s.pool,
        &s.audit,
        &call.caller,
        s.contact_key.as_deref(),
        &id,
        &call.remote,
        call.now,
    )
    .await?;
    Ok(Json(patient))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolBody {
    patient_id: String,
    pathway: String,
    version: Option<u32>,
    entry: String,
    /// When the enrolment started, if before now (bounded by the store).
    at: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct Enrolled {
    id: i64,
    /// The actions the entry step wrote, by kind.
    actions: BTreeMap<String, u64>,
}

pub(crate) async fn enrol(
    State(s): State<AppState>,
    call: Call,
    Body(b): Body<EnrolBody>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    let new = NewEnrolment {
        patient_id: b.patient_id,
        pathway_id: b.pathway,
        version: b.version,
        entry: b.entry,
        at: instant("at", b.at.as_deref())?.unwrap_or(call.now),
        catch_up_to: Some(call.now),
    };
    let (id, written) = patients::enrol(
        &s.pool,
        &s.programs(),
        &call.caller,
        &new,
        &call.remote,
        call.now,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            id,
            actions: written.by_kind,
        }),
    ))
}

pub(crate) async fn timeline(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
) -> Result<Json<Timeline>, ApiError> {
    let t = queries::timeline(&s.pool, &call.caller, id, &call.remote, call.now).await?;
    Ok(Json(t))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventBody {
    name: String,
    at: Option<String>,
    /// Pathway variables the event sets, by name.
    data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What an enrolment did at once after an event or an answer.
#[derive(Serialize)]
pub(crate) struct Advanced {
    enrolment_id: i64,
    transitions: u64,
    actions: BTreeMap<String, u64>,
}

pub(crate) async fn event(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
    Body(b): Body<EventBody>,
) -> Result<Json<Advanced>, ApiError> {
    if !carepath_dsl::catalog::is_event_name(&b.name) {
        return Err(ApiError::BadRequest(
            "event names are lower case, e.g. `discharged`".into(),
        ));
    }
    let now = call.now;
    let at = instant("at", b.at.as_deref())?.unwrap_or(now);
    if at > now {
        return Err(ApiError::BadRequest(
            "an event cannot happen in the future".into(),
        ));
    }
    let c = &call.caller;
    let event = queries::ReportedEvent {
        enrolment: id,
        name: &b.name,
        at,
        data: b.data.as_ref(),
    };
    let programs = s.programs();
    queries::event_scoped(&s.pool, &programs, c, &event, &call.remote, now).await?;
    let w = scheduler::advance(&s.pool, &programs, id, now).await?;
    Ok(Json(Advanced {
        enrolment_id: id,
        transitions: w.transitions,
        actions: w.by_kind,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReasonBody {
    reason: String,
}

#[derive(Serialize)]
pub(crate) struct Withdrawn {
    enrolment_id: i64,
    status: &'static str,
    /// The state the enrolment ended in.
    state: String,
    /// Whether its pathway routed the withdrawal (`on: withdrawn`) to a closing state.
    routed: bool,
    /// The closing work the routed withdrawal made, by kind.
    actions: BTreeMap<String, u64>,
}

pub(crate) async fn withdraw(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
    Body(b): Body<ReasonBody>,
) -> Result<Json<Withdrawn>, ApiError> {
    if b.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("a withdrawal needs a reason".into()));
    }
    let c = &call.caller;
    let done = queries::withdraw_scoped(
        &s.pool,
        &s.programs(),
        c,
        id,
        &b.reason,
        &call.remote,
        call.now,
    )
    .await?;
    Ok(Json(Withdrawn {
        enrolment_id: id,
        status: "withdrawn",
        state: done.state,
        routed: done.routed,
        actions: done.written.by_kind,
    }))
}

#[derive(Serialize)]
pub(crate) struct Pushes {
    enrolment_id: i64,
    scale_pushes: Vec<PushView>,
}

pub(crate) async fn scale_pushes(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
) -> Result<Json<Pushes>, ApiError> {
    let pushes =
        scales::enrolment_pushes(&s.pool, &call.caller, id, &call.remote, call.now).await?;
    Ok(Json(Pushes {
        enrolment_id: id,
        scale_pushes: pushes,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnswerBody {
    answers: BTreeMap<String, i64>,
    answered_at: Option<String>,
}

/// More answers than any scale has items is refused before scoring.
const MAX_ANSWERS: usize = 200;

/// A scored answer and what the enrolment did at once.
#[derive(Serialize)]
pub(crate) struct AnswerOutcome {
    #[serde(flatten)]
    answered: Answered,
    transitions: u64,
    actions: BTreeMap<String, u64>,
}

pub(crate) async fn answer(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    call: Call,
    Body(b): Body<AnswerBody>,
) -> Result<(StatusCode, Json<AnswerOutcome>), ApiError> {
    if b.answers.len() > MAX_ANSWERS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ANSWERS} answers per scale"
        )));
    }
    let answered_at = instant("answered_at", b.answered_at.as_deref())?;
    let answered = scales::answer_push(
        &s.pool,
        s.scales,
        &call.caller,
        id,
        &b.answers,
        answered_at,
        &call.remote,
        call.now,
    )
    .await?;
    // The answer is committed; the enrolment steps now so a guard on the new score acts at once.
    let w = scheduler::advance(&s.pool, &s.programs(), answered.enrolment_id, call.now).await?;
    Ok((
        StatusCode::CREATED,
        Json(AnswerOutcome {
            answered,
            transitions: w.transitions,
            actions: w.by_kind,
        }),
    ))
}
