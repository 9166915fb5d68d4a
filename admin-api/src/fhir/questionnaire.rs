//! Scales as Questionnaires (one per definition in `pathways/scales/`, items with their answer
//! options or numeric range), and QuestionnaireResponses as answers to a pending scale push:
//! scored, banded and settled by the same store function as `POST /scale-pushes/{id}/answers`.

use std::collections::BTreeMap;

use carepath_engine::scales::ScaleDef;
use carepath_engine::store::Tx;
use carepath_engine::store::{records, scales};
use serde_json::{Value, json};

use super::json::{Node, clip};
use super::outcome::Outcome;
use super::write::{Ctx, Written};

/// A scale's id as a FHIR id, which has no `_`.
pub(crate) fn fhir_id(scale: &str) -> String {
    scale.replace('_', "-")
}

/// The scale definition a Questionnaire id or scale id names.
pub(crate) fn scale_def<'a>(
    scales: &'a carepath_engine::scales::Scales,
    id: &str,
) -> Option<&'a ScaleDef> {
    scales
        .get(id)
        .or_else(|| scales.iter().find(|d| fhir_id(&d.scale) == id))
}

/// The canonical URL of a scale's Questionnaire.
pub(crate) fn canonical(scale: &str) -> String {
    format!("urn:carepath:questionnaire:{scale}")
}

fn option_system(scale: &str) -> String {
    format!("urn:carepath:scale:{scale}")
}

pub(crate) fn render(def: &ScaleDef) -> Value {
    let items: Vec<Value> = def
        .items
        .iter()
        .map(|item| {
            let mut q = json!({
                "linkId": item.id,
                "text": item.text.en,
                "required": true,
                "_text": {"extension": [{
                    "url": "http://hl7.org/fhir/StructureDefinition/translation",
                    "extension": [{"url": "lang", "valueCode": "zh"}, {"url": "content", "valueString": item.text.zh}]
                }]},
            });
            if item.options.is_empty() {
                q["type"] = json!("integer");
                let mut ext = Vec::new();
                if let Some(min) = item.min {
                    ext.push(json!({"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": min}));
                }
                if let Some(max) = item.max {
                    ext.push(json!({"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": max}));
                }
                if !ext.is_empty() {
                    q["extension"] = json!(ext);
                }
            } else {
                q["type"] = json!("choice");
                q["answerOption"] = json!(item
                    .options
                    .iter()
                    .map(|o| json!({"valueCoding": {"system": option_system(&def.scale), "code": o.value.to_string(), "display": o.text.en}}))
                    .collect::<Vec<_>>());
            }
            q
        })
        .collect();
    let mut out = json!({
        "resourceType": "Questionnaire",
        "id": fhir_id(&def.scale),
        "url": canonical(&def.scale),
        "name": def.scale.to_uppercase().replace(['-', ' '], "_"),
        "title": def.title.en,
        "status": "active",
        "subjectType": ["Patient"],
        "item": items,
    });
    if let Some(s) = &def.source {
        out["description"] = json!(s);
    }
    if let Some(l) = &def.licence {
        out["copyright"] = json!(l);
    }
    out
}

/// The scale a `questionnaire` canonical names: the canonical URL, `Questionnaire/{id}` (also at
/// the end of an absolute URL), with an optional `|version`.
fn scale_of(q: &str) -> Option<&str> {
    let q = q.split('|').next().unwrap_or(q);
    q.strip_prefix("urn:carepath:questionnaire:")
        .or_else(|| q.rsplit_once("Questionnaire/").map(|(_, id)| id))
        .filter(|s| !s.is_empty() && !s.contains('/'))
}

const ELEMENTS: &[&str] = &[
    "identifier",
    "basedOn",
    "partOf",
    "questionnaire",
    "status",
    "subject",
    "encounter",
    "authored",
    "author",
    "source",
    "item",
];

/// `POST QuestionnaireResponse`: answers the patient's pending push of the scale.
pub(crate) async fn answer(
    tx: &mut Tx,
    cx: &mut Ctx<'_>,
    body: &Value,
) -> Result<Written, Outcome> {
    let qr = Node::resource(body, "QuestionnaireResponse", ELEMENTS)?;
    let status = qr.req("status")?;
    let st = status.code(&[
        "in-progress",
        "completed",
        "amended",
        "entered-in-error",
        "stopped",
    ])?;
    if st != "completed" {
        return Err(Outcome::unprocessable(
            &status.path,
            format!(
                "only a completed QuestionnaireResponse answers a scale, not one that is `{st}`"
            ),
        ));
    }
    let qn = qr.req("questionnaire")?;
    let text = qn.str()?;
    let scales = cx.state.scales;
    let def = scale_of(text)
        .and_then(|s| scale_def(scales, s))
        .ok_or_else(|| {
            Outcome::unprocessable(
                &qn.path,
                format!(
                    "`{}` is no scale's Questionnaire (GET /fhir/Questionnaire lists them)",
                    clip(text)
                ),
            )
        })?;
    let patient = cx.reference(&qr.req("subject")?, "Patient")?;
    let mut enrolment = None;
    for b in qr.list("basedOn")? {
        let id = cx.reference(&b, "CarePlan")?;
        enrolment = Some(id.parse::<i64>().map_err(|_| {
            Outcome::unprocessable(
                &b.path,
                format!("CarePlan/{} is not a care plan", clip(&id)),
            )
        })?);
    }
    let answered_at = qr.get("authored").map(|a| a.instant()).transpose()?;
    let mut answers = BTreeMap::new();
    for item in qr.list("item")? {
        let link = item.req("linkId")?;
        let id = link.str()?;
        if def.items.iter().all(|i| i.id != id) {
            return Err(Outcome::unprocessable(
                &link.path,
                format!("{} has no item `{}`", def.scale, clip(id)),
            ));
        }
        let given = item.req("answer")?.array()?;
        let [a] = given.as_slice() else {
            return Err(Outcome::invalid(
                &format!("{}.answer", item.path),
                format!("item `{id}` takes exactly one answer"),
            ));
        };
        let value = if let Some(c) = a.get("valueCoding") {
            let code = c.req("code")?;
            code.str()?.parse::<i64>().map_err(|_| {
                Outcome::unprocessable(
                    &code.path,
                    format!(
                        "`{}` is not one of the item's answer codes",
                        clip(code.str().unwrap_or(""))
                    ),
                )
            })?
        } else if let Some(i) = a.get("valueInteger") {
            i.integer()?
        } else {
            return Err(Outcome::invalid(
                &a.path,
                "an answer is a valueCoding (a choice item) or a valueInteger (a numeric item)",
            ));
        };
        if answers.insert(id.to_string(), value).is_some() {
            return Err(Outcome::invalid(
                &link.path,
                format!("item `{id}` is answered twice"),
            ));
        }
    }
    let c = &cx.call;
    let push = records::pending_push(tx, &c.caller, &patient, &def.scale, enrolment, c.now)
        .await
        .map_err(Outcome::from)?
        .ok_or_else(|| {
            Outcome::unprocessable(
                "QuestionnaireResponse.questionnaire",
                format!(
                    "patient {patient} has no pending push of {} to answer",
                    def.scale
                ),
            )
        })?;
    let answered = scales::answer_push_tx(
        tx,
        scales,
        &c.caller,
        push,
        &answers,
        answered_at,
        &c.remote,
        c.now,
    )
    .await
    .map_err(|e| Outcome::from(e).or_at("QuestionnaireResponse.item"))?;
    cx.advance.push(answered.enrolment_id);
    let mut resource = body.clone();
    resource["id"] = json!(push.to_string());
    resource["questionnaire"] = json!(canonical(&def.scale));
    resource["authored"] = json!(answered.answered_at);
    resource["basedOn"] = json!([{"reference": format!("CarePlan/{}", answered.enrolment_id)}]);
    resource["subject"] = json!({"reference": format!("Patient/{patient}")});
    resource["extension"] = json!([
        {"url": "urn:carepath:scale-score", "valueDecimal": answered.score},
        {"url": "urn:carepath:scale-band", "valueCode": answered.band},
    ]);
    Ok(Written {
        created: true,
        resource_type: "QuestionnaireResponse",
        id: push.to_string(),
        resource,
    })
}
