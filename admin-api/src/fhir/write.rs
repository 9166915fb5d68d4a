//! Writing resources: each create or update is read into the values the rest of the API uses and
//! handed to the same store and engine functions, inside a transaction the caller owns — one per
//! resource, or one for a whole transaction Bundle. Enrolments a write woke are stepped once the
//! transaction has committed, as the rest of the API does.

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use carepath_engine::hospital::Hospital;
use carepath_engine::store::Tx;
use carepath_engine::{Programs, scheduler};
use serde_json::Value;

use super::json::{Node, clip};
use super::outcome::{Outcome, fhir_json};
use super::{condition, encounter, module_of, observation, patient, questionnaire};
use crate::{AppState, Call, allowed};

pub(crate) enum Verb {
    Create { if_none_exist: Option<String> },
    Update { id: String },
}

/// What a write did: the resource as stored, and whether it was made now.
pub(crate) struct Written {
    pub(crate) created: bool,
    pub(crate) resource_type: &'static str,
    pub(crate) id: String,
    pub(crate) resource: Value,
}

impl Written {
    pub(crate) fn status(&self) -> StatusCode {
        if self.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    }

    pub(crate) fn location(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }

    pub(crate) fn response(&self, base: &str) -> Response {
        let mut res = fhir_json(self.status(), &self.resource);
        if let Ok(v) = HeaderValue::from_str(&format!("{base}/{}", self.location())) {
            res.headers_mut().insert(header::LOCATION, v);
        }
        res
    }
}

/// What the writes of one transaction share: the caller, references to resources made earlier
/// in the same Bundle (`urn:uuid:…` → `Type/id`), and the enrolments to step after the commit.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) call: &'a Call,
    pub(crate) refs: HashMap<String, String>,
    pub(crate) advance: Vec<i64>,
}

impl Ctx<'_> {
    /// The id of the `expected` resource a Reference names: `Type/id`, or the `urn:uuid:` full URL
    /// of an earlier entry of the Bundle.
    pub(crate) fn reference(&self, node: &Node<'_>, expected: &str) -> Result<String, Outcome> {
        node.object()?;
        let r = node.req("reference")?;
        let text = r.str()?;
        let resolved = if text.starts_with("urn:uuid:") || text.starts_with("urn:oid:") {
            self.refs.get(text).cloned().ok_or_else(|| {
                Outcome::unprocessable(
                    &r.path,
                    format!(
                        "{} `{}` names no entry of this Bundle written before it",
                        r.path,
                        clip(text)
                    ),
                )
            })?
        } else {
            text.to_string()
        };
        let (ty, id) = resolved.split_once('/').ok_or_else(|| {
            Outcome::invalid(
                &r.path,
                format!(
                    "{} `{}` is not a reference such as {expected}/123",
                    r.path,
                    clip(text)
                ),
            )
        })?;
        if ty != expected {
            return Err(Outcome::unprocessable(
                &r.path,
                format!("{} must refer to a {expected}, not `{}`", r.path, clip(ty)),
            ));
        }
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !ok {
            return Err(Outcome::invalid(
                &r.path,
                format!("{} `{}` does not end in a resource id", r.path, clip(text)),
            ));
        }
        Ok(id.to_string())
    }

    /// Checks that the caller's roles grant the module `resource` needs (a Bundle's entries are
    /// checked one by one); a refusal is audited.
    pub(crate) async fn authorise(&self, resource: &str, expression: &str) -> Result<(), Outcome> {
        let Some(module) = module_of(resource) else {
            return Err(Outcome::not_supported(
                expression,
                format!(
                    "carepath does not serve the resource type `{}`",
                    clip(resource)
                ),
            ));
        };
        if allowed(&self.call.caller.roles, module) {
            return Ok(());
        }
        let err = self.call.refuse(self.state, module).await;
        Err(Outcome::from(err).at(expression))
    }
}

/// What hospital facts are recorded with: the published pathways, the intake rules, the
/// contact key.
pub(crate) fn hospital<'a>(state: &'a AppState, programs: &'a Programs) -> Hospital<'a> {
    Hospital {
        programs,
        intake: &state.intake,
        contact_key: state.contact_key.as_deref(),
    }
}

/// Writes one resource in its own transaction, then steps the enrolments it woke.
pub(crate) async fn one(
    state: &AppState,
    call: &Call,
    _base: &str,
    resource_type: &'static str,
    verb: &Verb,
    body: &Value,
) -> Result<Written, Outcome> {
    let mut cx = Ctx {
        state,
        call,
        refs: HashMap::new(),
        advance: Vec::new(),
    };
    let mut tx = state.pool.begin().await.map_err(crate::ApiError::from)?;
    let written = write(&mut tx, &mut cx, resource_type, verb, body).await?;
    tx.commit().await.map_err(crate::ApiError::from)?;
    advance(&cx).await?;
    Ok(written)
}

/// Steps the enrolments the writes woke, now that they are committed.
pub(crate) async fn advance(cx: &Ctx<'_>) -> Result<(), Outcome> {
    let programs = cx.state.programs();
    for e in &cx.advance {
        scheduler::advance(&cx.state.pool, &programs, *e, cx.call.now)
            .await
            .map_err(crate::ApiError::from)?;
    }
    Ok(())
}

/// Writes one resource inside `tx`.
pub(crate) async fn write(
    tx: &mut Tx,
    cx: &mut Ctx<'_>,
    resource_type: &str,
    verb: &Verb,
    body: &Value,
) -> Result<Written, Outcome> {
    match (resource_type, verb) {
        ("Observation", Verb::Create { if_none_exist }) => {
            observation::create(tx, cx, body, if_none_exist.as_deref()).await
        }
        ("QuestionnaireResponse", Verb::Create { .. }) => questionnaire::answer(tx, cx, body).await,
        ("Patient", verb) => patient::write(tx, cx, verb, body).await,
        ("Encounter", verb) => encounter::write(tx, cx, verb, body).await,
        ("Condition", verb) => condition::create(tx, cx, verb, body).await,
        (ty, Verb::Update { .. }) if module_of(ty).is_some() => Err(Outcome::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("{ty} cannot be updated with PUT here"),
        )),
        (ty, Verb::Create { .. }) if module_of(ty).is_some() => Err(Outcome::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            format!("{ty} cannot be created"),
        )),
        (ty, _) => Err(Outcome::not_supported(
            "Bundle.entry.request.url",
            format!("carepath does not serve the resource type `{}`", clip(ty)),
        )),
    }
}

/// The `identifier=system|value` of an `If-None-Exist` header.
pub(crate) fn if_none_exist(header: &str) -> Result<(String, String), Outcome> {
    let bad = || {
        Outcome::invalid(
            "If-None-Exist",
            format!(
                "If-None-Exist `{}` must be identifier=system|value",
                clip(header)
            ),
        )
    };
    let rest = header.strip_prefix("identifier=").ok_or_else(bad)?;
    let rest = percent_decode(rest).ok_or_else(bad)?;
    let (system, value) = rest.split_once('|').ok_or_else(bad)?;
    if system.is_empty() || value.is_empty() || system.len() > 255 || value.len() > 255 {
        return Err(bad());
    }
    Ok((system.to_string(), value.to_string()))
}

/// Decodes `%XX` escapes (a search parameter's value); `None` when they are malformed.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}
