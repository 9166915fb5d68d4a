//! Reads and searches: `GET /fhir/{type}/{id}` and `GET /fhir/{type}?…`, answered with the
//! resource or a `searchset` Bundle. Search parameters are those the CapabilityStatement lists;
//! any other is refused rather than silently ignored, so a client never mistakes an unfiltered
//! answer for a filtered one.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use carepath_engine::store::StoreError;
use carepath_engine::store::clinical;
use carepath_engine::store::patients;
use carepath_engine::store::records::{self, RecordFilter};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::json::clip;
use super::outcome::{Outcome, fhir_json};
use super::write::percent_decode;
use super::{
    base_url, careplan, condition, encounter, observation, patient, questionnaire, support, task,
};
use crate::{AppState, Call, MAX_PAGE};

/// A search as given: the filter, and the FHIR task statuses asked for.
struct Search {
    filter: RecordFilter,
    statuses: Vec<&'static str>,
    url: Option<String>,
    text_id: Option<String>,
    /// `identifier=system|value` (the system may be left out).
    identifier: Option<(Option<String>, String)>,
}

fn bad(diagnostics: String) -> Outcome {
    Outcome::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
}

/// The instants a date parameter's value covers: a day (UTC) or one instant.
fn span(v: &str) -> Result<(i64, i64), Outcome> {
    if let Ok(t) = v.parse::<Timestamp>() {
        return Ok((t.as_second(), t.as_second()));
    }
    let day = (v.len() == 10)
        .then(|| v.parse::<jiff::civil::Date>().ok())
        .flatten()
        .ok_or_else(|| {
            bad(format!(
                "date `{}` is neither a date (YYYY-MM-DD) nor an instant with a zone offset",
                clip(v)
            ))
        })?;
    let start = day
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map_err(|_| bad(format!("date `{}` is out of range", clip(v))))?
        .timestamp()
        .as_second();
    Ok((start, start + 86_399))
}

fn parse(resource: &str, query: Option<&str>) -> Result<Search, Outcome> {
    let known = support(resource).map_or(&[][..], |r| r.search);
    let mut s = Search {
        filter: RecordFilter {
            limit: 50,
            ..RecordFilter::default()
        },
        statuses: Vec::new(),
        url: None,
        text_id: None,
        identifier: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(&v.replace('+', " "))
            .ok_or_else(|| bad(format!("parameter `{}` is not well encoded", clip(k))))?;
        if matches!(k, "_format") {
            if !v.contains("json") {
                return Err(Outcome::new(
                    StatusCode::NOT_ACCEPTABLE,
                    "not-supported",
                    "carepath answers in JSON only",
                ));
            }
            continue;
        }
        if !known.iter().any(|(n, _)| *n == k) {
            let names: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
            return Err(bad(format!(
                "{resource} cannot be searched by `{}`; its search parameters are {}",
                clip(k),
                names.join(", ")
            )));
        }
        if v.is_empty() || v.len() > 256 {
            return Err(bad(format!(
                "parameter `{k}` needs a value of at most 256 characters"
            )));
        }
        match k {
            "_count" => {
                let n: i64 = v
                    .parse()
                    .map_err(|_| bad(format!("_count `{}` is not a number", clip(&v))))?;
                if !(1..=MAX_PAGE).contains(&n) {
                    return Err(bad(format!("_count must be between 1 and {MAX_PAGE}")));
                }
                s.filter.limit = n;
            }
            "patient" | "subject" => {
                let id = v.strip_prefix("Patient/").unwrap_or(&v);
                if id.is_empty()
                    || id.len() > 64
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
                {
                    return Err(bad(format!(
                        "{k} `{}` is not a patient reference such as Patient/p-123",
                        clip(&v)
                    )));
                }
                s.filter.patient = Some(id.to_string());
            }
            "date" => {
                let (prefix, value) = match v.get(..2) {
                    Some(p @ ("ge" | "le" | "gt" | "lt" | "eq")) => (p, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let (start, end) = span(value)?;
                match prefix {
                    "ge" => s.filter.from = Some(start),
                    "gt" => s.filter.from = Some(end + 1),
                    "le" => s.filter.to = Some(end),
                    "lt" => s.filter.to = Some(start - 1),
                    _ => {
                        s.filter.from = Some(start);
                        s.filter.to = Some(end);
                    }
                }
            }
            "_id" if resource == "Questionnaire" || resource == "Patient" => {
                s.text_id = Some(v.clone());
            }
            "identifier" => {
                s.identifier = Some(match v.split_once('|') {
                    Some((system, value)) if !value.is_empty() => (
                        (!system.is_empty()).then(|| system.to_string()),
                        value.to_string(),
                    ),
                    Some(_) => {
                        return Err(bad(format!(
                            "identifier `{}` needs a value: identifier=system|value",
                            clip(&v)
                        )));
                    }
                    None => (None, v.clone()),
                });
            }
            "_id" => {
                s.filter.id = Some(v.parse().map_err(|_| {
                    bad(format!("_id `{}` is not an id of a {resource}", clip(&v)))
                })?);
            }
            "status" => {
                for st in v.split(',') {
                    let mapped = task::carepath_status(st).ok_or_else(|| {
                        bad(format!(
                            "status `{}` is not one of ready, in-progress, completed, cancelled",
                            clip(st)
                        ))
                    })?;
                    s.statuses.push(mapped);
                }
            }
            "url" => s.url = Some(v.clone()),
            _ => return Err(bad(format!("parameter `{}` is not supported", clip(k)))),
        }
    }
    Ok(s)
}

/// The resources a search finds.
async fn find(
    s: &AppState,
    call: &Call,
    resource: &str,
    q: &Search,
) -> Result<Vec<Value>, Outcome> {
    let c = &call.caller;
    Ok(match resource {
        "Observation" => {
            let rows =
                records::readings(&s.pool, &s.audit, c, &q.filter, &call.remote, call.now).await?;
            observation::render_all(&rows)
        }
        "Task" => records::tasks(
            &s.pool,
            &s.audit,
            c,
            &q.filter,
            &q.statuses,
            &call.remote,
            call.now,
        )
        .await?
        .iter()
        .map(task::render)
        .collect(),
        "CarePlan" => records::care_plans(&s.pool, &s.audit, c, &q.filter, &call.remote, call.now)
            .await?
            .iter()
            .map(careplan::render)
            .collect(),
        "Questionnaire" => s
            .scales
            .iter()
            .filter(|d| {
                q.text_id
                    .as_deref()
                    .is_none_or(|id| id == d.scale || id == questionnaire::fhir_id(&d.scale))
            })
            .filter(|d| {
                q.url
                    .as_deref()
                    .is_none_or(|u| u == questionnaire::canonical(&d.scale))
            })
            .take(q.filter.limit as usize)
            .map(questionnaire::render)
            .collect(),
        "Patient" => patients(s, call, q).await?,
        "Encounter" | "Condition" => clinical_facts(s, call, resource, q).await?,
        other => {
            return Err(Outcome::not_found(format!(
                "carepath does not serve {}",
                clip(other)
            )));
        }
    })
}

/// `GET /fhir/{type}?…`: a searchset Bundle.
pub(crate) async fn search(
    State(s): State<AppState>,
    call: Call,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    resource: &'static str,
) -> Result<Response, Outcome> {
    let q = parse(resource, query.as_deref())?;
    let found = find(&s, &call, resource, &q).await?;
    let base = base_url(&headers);
    let entries: Vec<Value> = found
        .into_iter()
        .map(|r| {
            let url = format!("{base}/{resource}/{}", r["id"].as_str().unwrap_or_default());
            json!({"fullUrl": url, "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    let mut self_url = format!("{base}/{resource}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        self_url.push('?');
        self_url.push_str(&q);
    }
    let body = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{"relation": "self", "url": self_url}],
        "entry": entries,
    });
    Ok(fhir_json(StatusCode::OK, &body))
}

/// One resource of `resource` by id, as a search would render it.
pub(crate) async fn read_one(
    s: &AppState,
    call: &Call,
    resource: &str,
    id: &str,
) -> Result<Value, Outcome> {
    let missing = || Outcome::not_found(format!("{resource}/{} not found", clip(id)));
    let mut q = Search {
        filter: RecordFilter {
            limit: 1,
            ..RecordFilter::default()
        },
        statuses: Vec::new(),
        url: None,
        text_id: None,
        identifier: None,
    };
    if resource == "Questionnaire" || resource == "Patient" {
        q.text_id = Some(id.to_string());
    } else {
        q.filter.id = Some(id.parse().map_err(|_| missing())?);
    }
    let found = find(s, call, resource, &q).await?;
    // A blood pressure's diastolic value is read as the panel it belongs to.
    found.into_iter().next().ok_or_else(missing)
}

/// `GET /fhir/{type}/{id}`.
pub(crate) async fn read(
    State(s): State<AppState>,
    call: Call,
    _headers: HeaderMap,
    Path(id): Path<String>,
    resource: &'static str,
) -> Result<Response, Outcome> {
    let r = read_one(&s, &call, resource, &id).await?;
    Ok(fhir_json(StatusCode::OK, &r))
}

/// Patients by id or identifier (one at most: a patient is one person).
async fn patients(s: &AppState, call: &Call, q: &Search) -> Result<Vec<Value>, Outcome> {
    let c = &call.caller;
    let id = match (&q.text_id, &q.identifier) {
        (Some(id), None) => Some(id.clone()),
        (id, Some((system, value))) => {
            let found = match system.as_deref() {
                None | Some(patient::PATIENT_SYSTEM) => Some(value.clone()),
                Some(system) => {
                    let mut tx = s.pool.begin().await.map_err(crate::ApiError::from)?;
                    let local =
                        clinical::external_id(&mut tx, "Patient", &c.institution_id, system, value)
                            .await?;
                    tx.commit().await.map_err(crate::ApiError::from)?;
                    local
                }
            };
            match (found, id) {
                (Some(f), Some(id)) if &f != id => None,
                (f, _) => f,
            }
        }
        (None, None) => {
            return Err(bad(
                "search patients by identifier (system|value) or _id: carepath does not list every patient".into(),
            ));
        }
    };
    let Some(id) = id else {
        return Ok(Vec::new());
    };
    match patients::read(
        &s.pool,
        &s.audit,
        c,
        s.contact_key.as_deref(),
        &id,
        &call.remote,
        call.now,
    )
    .await
    {
        Ok(view) => Ok(vec![patient::render(&view)]),
        Err(StoreError::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// A patient's encounters or diagnoses, when the caller may see the patient; audited.
async fn clinical_facts(
    s: &AppState,
    call: &Call,
    resource: &str,
    q: &Search,
) -> Result<Vec<Value>, Outcome> {
    let c = &call.caller;
    let mut tx = s.pool.begin().await.map_err(crate::ApiError::from)?;
    // The patient the search is about: named, or the one the _id belongs to.
    let (patient, only) = match (q.filter.id, &q.filter.patient) {
        (Some(id), named) => {
            let owner = if resource == "Encounter" {
                clinical::encounter_by_id(&mut tx, id)
                    .await?
                    .map(|e| e.patient_id)
            } else {
                clinical::diagnosis_by_id(&mut tx, id)
                    .await?
                    .map(|d| d.patient_id)
            };
            match owner {
                Some(o) if named.as_ref().is_none_or(|n| *n == o) => (o, Some(id)),
                _ => return Ok(Vec::new()),
            }
        }
        (None, Some(p)) => (p.clone(), None),
        (None, None) => {
            return Err(bad(format!(
                "search {resource} by patient (or _id): carepath lists a patient's {resource}s"
            )));
        }
    };
    if !clinical::visible(&mut tx, c, &patient).await? {
        return Ok(Vec::new());
    }
    let diagnoses = clinical::diagnoses_of(&mut tx, &patient).await?;
    let limit = q.filter.limit.max(0) as usize;
    let found: Vec<Value> = if resource == "Encounter" {
        clinical::encounters_of(&mut tx, &patient)
            .await?
            .iter()
            .filter(|e| only.is_none_or(|id| id == e.id))
            .filter(|e| {
                let start = e.admitted_at.map(|t| t.as_second());
                let end = e.discharged_at.map(|t| t.as_second()).or(start);
                q.filter.from.is_none_or(|f| end.is_some_and(|x| x >= f))
                    && q.filter.to.is_none_or(|t| start.is_some_and(|x| x <= t))
            })
            .take(limit)
            .map(|e| {
                let own: Vec<_> = diagnoses
                    .iter()
                    .filter(|d| d.encounter_id == Some(e.id))
                    .cloned()
                    .collect();
                encounter::render(e, &own)
            })
            .collect()
    } else {
        diagnoses
            .iter()
            .filter(|d| only.is_none_or(|id| id == d.id))
            .take(limit)
            .map(condition::render)
            .collect()
    };
    c.audit_ok(
        &mut tx,
        call.action,
        &format!("patient/{patient}/{}", resource.to_ascii_lowercase()),
        std::slice::from_ref(&patient),
        &call.remote,
        call.now,
    )
    .await?;
    tx.commit().await.map_err(crate::ApiError::from)?;
    Ok(found)
}
