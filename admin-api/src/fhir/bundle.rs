//! `POST /fhir` with a Bundle. A `transaction` writes every entry in one database transaction:
//! the first entry that fails answers for the whole Bundle (its index in the expression) and
//! nothing is written. A `batch` writes each entry alone and answers each with its own status.
//! `urn:uuid:` full URLs name the resources of earlier entries; entries are written in an order
//! that puts patients before what refers to them (Patient, Encounter, Condition, then the rest,
//! otherwise as given).

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::json::{Node, clip};
use super::outcome::{Outcome, fhir_json};
use super::write::{self, Ctx, Verb, Written};
use super::{FhirBody, base_url, module_of, task};
use crate::{AppState, Call};

/// The most entries one Bundle may hold.
const MAX_ENTRIES: usize = 200;

struct Entry {
    index: usize,
    full_url: Option<String>,
    resource_type: &'static str,
    verb: Verb,
    resource: Value,
}

/// The resource types carepath serves, as static names.
const TYPES: [&str; 9] = [
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "QuestionnaireResponse",
    "Task",
    "CarePlan",
    "Questionnaire",
    "Bundle",
];

fn rank(resource_type: &str) -> u8 {
    match resource_type {
        "Patient" => 0,
        "Encounter" => 1,
        "Condition" => 2,
        _ => 3,
    }
}

fn entry(e: &Node<'_>, index: usize) -> Result<Entry, Outcome> {
    e.object()?;
    for key in e.object()?.keys() {
        if !matches!(
            key.as_str(),
            "fullUrl" | "resource" | "request" | "link" | "search" | "response"
        ) {
            return Err(Outcome::invalid(
                &format!("{}.{}", e.path, clip(key)),
                format!("a Bundle entry has no element `{}`", clip(key)),
            ));
        }
    }
    let full_url = e.opt_str("fullUrl")?.map(str::to_string);
    let request = e.req("request")?;
    let method = request
        .req("method")?
        .code(&["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])?;
    let url = request.req("url")?;
    let url_text = url.str()?;
    let resource = e.req("resource")?;
    resource.object()?;
    let given_type = resource
        .get("resourceType")
        .ok_or_else(|| {
            Outcome::invalid(
                &format!("{}.resourceType", resource.path),
                "the resource needs a resourceType",
            )
        })?
        .str()?;
    let (url_type, url_id) = match url_text.split_once('/') {
        Some((t, id)) => (t, Some(id)),
        None => (url_text.split('?').next().unwrap_or(url_text), None),
    };
    if url_type != given_type {
        return Err(Outcome::invalid(
            &url.path,
            format!(
                "request.url `{}` does not name the entry's {}",
                clip(url_text),
                clip(given_type)
            ),
        ));
    }
    let resource_type = TYPES
        .iter()
        .copied()
        .find(|t| *t == given_type && module_of(t).is_some())
        .ok_or_else(|| {
            Outcome::not_supported(
                &format!("{}.resourceType", resource.path),
                format!(
                    "carepath does not serve the resource type `{}`",
                    clip(given_type)
                ),
            )
        })?;
    let verb = match (method, url_id) {
        ("POST", None) => Verb::Create {
            if_none_exist: request.opt_str("ifNoneExist")?.map(|s| {
                if s.starts_with("identifier=") {
                    s.to_string()
                } else {
                    format!("identifier={s}")
                }
            }),
        },
        ("PUT", Some(id)) if !id.is_empty() && !id.contains('/') => {
            Verb::Update { id: id.to_string() }
        }
        _ => {
            return Err(Outcome::not_supported(
                &format!("{}.method", request.path),
                format!(
                    "a Bundle entry here is POST {given_type} or PUT {given_type}/{{id}}, not {method} {}",
                    clip(url_text)
                ),
            ));
        }
    };
    Ok(Entry {
        index,
        full_url,
        resource_type,
        verb,
        resource: resource.v.clone(),
    })
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

fn answered(w: &Written, base: &str) -> Value {
    json!({
        "fullUrl": format!("{base}/{}", w.location()),
        "resource": w.resource,
        "response": {"status": status_line(w.status()), "location": w.location()},
    })
}

/// `POST /fhir`.
pub(crate) async fn post(
    State(s): State<AppState>,
    call: Call,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, Outcome> {
    let bundle = Node::resource(
        &body,
        "Bundle",
        &["type", "entry", "identifier", "timestamp"],
    )?;
    let kind = bundle.req("type")?;
    let kind_text = kind.str()?;
    let transaction = match kind_text {
        "transaction" => true,
        "batch" => false,
        other => {
            return Err(Outcome::unprocessable(
                &kind.path,
                format!(
                    "carepath accepts transaction and batch Bundles, not `{}`",
                    clip(other)
                ),
            ));
        }
    };
    let entries = bundle.list("entry")?;
    if entries.len() > MAX_ENTRIES {
        return Err(Outcome::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-costly",
            format!("a Bundle holds at most {MAX_ENTRIES} entries"),
        )
        .at("Bundle.entry"));
    }
    let base = base_url(&headers);
    let mut cx = Ctx {
        state: &s,
        call: &call,
        refs: HashMap::new(),
        advance: Vec::new(),
    };
    if transaction {
        let mut parsed = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let en = entry(e, i).map_err(|o| o.in_entry(i))?;
            if en.resource_type == "Task" {
                return Err(Outcome::not_supported(
                    &format!("Bundle.entry[{i}].request"),
                    "a Task is updated on its own or in a batch: acting on a task is not part of a transaction",
                ));
            }
            if let Some(u) = &en.full_url
                && parsed
                    .iter()
                    .any(|p: &Entry| p.full_url.as_deref() == Some(u))
            {
                return Err(Outcome::invalid(
                    &format!("Bundle.entry[{i}].fullUrl"),
                    "two entries share one fullUrl",
                ));
            }
            parsed.push(en);
        }
        for en in &parsed {
            cx.authorise(
                en.resource_type,
                &format!("Bundle.entry[{}].resource", en.index),
            )
            .await?;
        }
        parsed.sort_by_key(|e| rank(e.resource_type));
        let mut tx = s.pool.begin().await.map_err(crate::ApiError::from)?;
        let mut out: Vec<(usize, Value)> = Vec::new();
        for en in &parsed {
            let w = write::write(&mut tx, &mut cx, en.resource_type, &en.verb, &en.resource)
                .await
                .map_err(|o| o.in_entry(en.index))?;
            if let Some(u) = &en.full_url {
                cx.refs.insert(u.clone(), w.location());
            }
            out.push((en.index, answered(&w, &base)));
        }
        tx.commit().await.map_err(crate::ApiError::from)?;
        write::advance(&cx).await?;
        out.sort_by_key(|(i, _)| *i);
        let body = json!({
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": out.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        });
        return Ok(fhir_json(StatusCode::OK, &body));
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let result = batch_entry(&mut cx, e, i).await;
        out.push(match result {
            Ok(w) => answered(&w, &base),
            Err(o) => {
                let o = o.in_entry(i);
                json!({"response": {"status": status_line(o.status), "outcome": o.resource()}})
            }
        });
    }
    let body = json!({"resourceType": "Bundle", "type": "batch-response", "entry": out});
    Ok(fhir_json(StatusCode::OK, &body))
}

/// One entry of a batch, in its own transaction.
async fn batch_entry(cx: &mut Ctx<'_>, e: &Node<'_>, i: usize) -> Result<Written, Outcome> {
    let en = entry(e, i)?;
    cx.authorise(en.resource_type, &format!("Bundle.entry[{i}].resource"))
        .await?;
    let w = match (&en.verb, en.resource_type) {
        (Verb::Update { id }, "Task") => task::update(cx.state, cx.call, id, &en.resource).await?,
        _ => {
            cx.advance.clear();
            let mut tx = cx.state.pool.begin().await.map_err(crate::ApiError::from)?;
            let w = write::write(&mut tx, cx, en.resource_type, &en.verb, &en.resource).await?;
            tx.commit().await.map_err(crate::ApiError::from)?;
            write::advance(cx).await?;
            w
        }
    };
    if let Some(u) = &en.full_url {
        cx.refs.insert(u.clone(), w.location());
    }
    Ok(w)
}
