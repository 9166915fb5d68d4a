//! Conditions: ICD-10 diagnoses of a patient, under one of the caller's encounters when the
//! Condition names it, stored by `store::clinical::add_diagnoses` — the facts the Charlson index,
//! LACE and `diagnosed()` guards read. Only ICD-10 is understood: another code system is refused
//! rather than stored as something no rule can read.

use carepath_engine::store::clinical::{self, DiagnosisIn, DiagnosisView};
use carepath_engine::store::{StoreError, Tx};
use serde_json::{Value, json};

use super::json::{Node, clip};
use super::outcome::Outcome;
use super::write::{Ctx, Verb, Written, if_none_exist};

/// The ICD-10 code systems accepted (WHO, US clinical modification, its OID).
pub(crate) const ICD10_SYSTEMS: [&str; 3] = [
    "http://hl7.org/fhir/sid/icd-10",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "urn:oid:2.16.840.1.113883.6.3",
];
/// Marks a Condition as the encounter's principal diagnosis (`valueBoolean`).
pub(crate) const PRINCIPAL: &str = "urn:carepath:principal-diagnosis";
const KIND: &str = "Condition";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";

const ELEMENTS: &[&str] = &[
    "identifier",
    "clinicalStatus",
    "verificationStatus",
    "category",
    "severity",
    "code",
    "bodySite",
    "subject",
    "encounter",
    "onsetDateTime",
    "onsetPeriod",
    "onsetString",
    "recordedDate",
    "recorder",
    "asserter",
    "note",
];

/// The ICD-10 code of a CodeableConcept: a coding of an ICD-10 system (whose code must be one),
/// or a coding without a system whose code reads as ICD-10.
pub(crate) fn icd10(code: &Node<'_>) -> Result<String, Outcome> {
    let codings = code.codings()?;
    for (system, c, path) in &codings {
        match system {
            Some(s) if ICD10_SYSTEMS.contains(s) => {
                return clinical::normalise_icd10(c)
                    .map(|_| c.to_string())
                    .ok_or_else(|| {
                        Outcome::unprocessable(
                            path,
                            format!(
                                "`{}` is not an ICD-10 code (a letter, two digits, then an optional subdivision, e.g. I63.9)",
                                clip(c)
                            ),
                        )
                    });
            }
            None if clinical::normalise_icd10(c).is_some() => return Ok(c.to_string()),
            _ => {}
        }
    }
    let given: Vec<String> = codings
        .iter()
        .map(|(s, c, _)| format!("{}|{}", clip(s.unwrap_or("")), clip(c)))
        .collect();
    Err(Outcome::unprocessable(
        &code.path,
        format!(
            "{} names no ICD-10 code ({}); carepath records diagnoses coded in {}",
            code.path,
            if given.is_empty() {
                "none given".to_string()
            } else {
                given.join(", ")
            },
            ICD10_SYSTEMS.join(", ")
        ),
    ))
}

/// Whether the Condition marks itself as the principal diagnosis.
pub(crate) fn principal(c: &Node<'_>) -> Result<bool, Outcome> {
    for e in c.list("extension")? {
        e.object()?;
        if e.opt_str("url")? == Some(PRINCIPAL) {
            let v = e.req("valueBoolean")?;
            return v.v.as_bool().ok_or_else(|| {
                Outcome::invalid(&v.path, format!("{} must be true or false", v.path))
            });
        }
    }
    Ok(false)
}

/// A refuted or mistaken Condition is no diagnosis to record.
pub(crate) fn check_verification(c: &Node<'_>) -> Result<(), Outcome> {
    if let Some(v) = c.get("verificationStatus") {
        for (_, code, path) in v.codings()? {
            if matches!(code, "refuted" | "entered-in-error") {
                return Err(Outcome::unprocessable(
                    &path,
                    format!("a Condition that is `{code}` is no diagnosis to record"),
                ));
            }
        }
    }
    Ok(())
}

/// `POST Condition` (conditionally with `If-None-Exist`).
pub(crate) async fn create(
    tx: &mut Tx,
    cx: &mut Ctx<'_>,
    verb: &Verb,
    body: &Value,
) -> Result<Written, Outcome> {
    let Verb::Create { if_none_exist: ine } = verb else {
        return Err(Outcome::new(
            axum::http::StatusCode::METHOD_NOT_ALLOWED,
            "not-supported",
            "a Condition is recorded with POST; a diagnosis is not changed once recorded",
        ));
    };
    let conditional = ine.as_deref().map(if_none_exist).transpose()?;
    let c = Node::resource(body, "Condition", ELEMENTS)?;
    check_verification(&c)?;
    let patient = cx.reference(&c.req("subject")?, "Patient")?;
    let code = icd10(&c.req("code")?)?;
    let principal = principal(&c)?;
    let call = cx.call;
    let institution = &call.caller.institution_id;
    if let Some((system, value)) = &conditional
        && let Some(local) = clinical::external_id(tx, KIND, institution, system, value)
            .await
            .map_err(Outcome::from)?
        && let Ok(id) = local.parse::<i64>()
        && let Some(d) = clinical::diagnosis_by_id(tx, id)
            .await
            .map_err(Outcome::from)?
        && clinical::visible(tx, &call.caller, &d.patient_id)
            .await
            .map_err(Outcome::from)?
    {
        return Ok(Written {
            created: false,
            resource_type: "Condition",
            id: d.id.to_string(),
            resource: render(&d),
        });
    }
    // The encounter: one of the caller's, by its id (or an earlier entry of the Bundle) or by
    // its identifier.
    let encounter = match c.get("encounter") {
        None => None,
        Some(e) => {
            e.object()?;
            if e.get("reference").is_some() {
                let id = cx.reference(&e, "Encounter")?;
                let found = match id.parse::<i64>() {
                    Ok(n) => clinical::encounter_by_id(tx, n)
                        .await
                        .map_err(Outcome::from)?,
                    Err(_) => None,
                };
                match found {
                    Some(v) if &v.institution_id == institution && v.patient_id == patient => {
                        Some(v.identifier)
                    }
                    _ => {
                        return Err(Outcome::unprocessable(
                            "Condition.encounter",
                            format!(
                                "Encounter/{} is no encounter of this patient recorded here",
                                clip(&id)
                            ),
                        ));
                    }
                }
            } else {
                let i = e.req("identifier")?;
                Some(i.req("value")?.str()?.to_string())
            }
        }
    };
    let dx = DiagnosisIn {
        code: code.clone(),
        principal,
    };
    let added = clinical::add_diagnoses(
        tx,
        &call.caller,
        &patient,
        encounter.as_deref(),
        std::slice::from_ref(&dx),
        "fhir",
        &call.remote,
        call.now,
    )
    .await
    .map_err(|e| match e {
        StoreError::NotFound(m) if m.starts_with("encounter") => {
            Outcome::unprocessable("Condition.encounter", format!("{m} not found"))
        }
        StoreError::NotFound(m) => {
            Outcome::unprocessable("Condition.subject", format!("{m} not found"))
        }
        StoreError::Invalid(m) => Outcome::unprocessable("Condition.code", m),
        other => Outcome::from(other),
    })?;
    let normalised = clinical::normalise_icd10(&code).unwrap_or_default();
    let encounter_id = match &encounter {
        Some(identifier) => clinical::encounter(tx, institution, identifier)
            .await
            .map_err(Outcome::from)?
            .map(|e| e.id),
        None => None,
    };
    let stored = clinical::diagnoses_of(tx, &patient)
        .await
        .map_err(Outcome::from)?
        .into_iter()
        .find(|d| d.code == normalised && d.encounter_id == encounter_id)
        .ok_or_else(|| Outcome::from(StoreError::NotFound("the stored diagnosis".into())))?;
    let mut identifiers: Vec<(String, String)> = Vec::new();
    for i in c.list("identifier")? {
        i.object()?;
        if let (Some(s), Some(v)) = (i.opt_str("system")?, i.opt_str("value")?) {
            identifiers.push((s.to_string(), v.to_string()));
        }
    }
    identifiers.extend(conditional);
    for (system, value) in &identifiers {
        if system.len() > 255 || value.len() > 255 {
            return Err(Outcome::invalid(
                "Condition.identifier",
                "an identifier's system and value are at most 255 characters",
            ));
        }
        clinical::record_external_id(
            tx,
            KIND,
            institution,
            system,
            value,
            &stored.id.to_string(),
            call.now,
        )
        .await
        .map_err(Outcome::from)?;
    }
    Ok(Written {
        created: added > 0,
        resource_type: "Condition",
        id: stored.id.to_string(),
        resource: render(&stored),
    })
}

/// A stored diagnosis.
pub(crate) fn render(d: &DiagnosisView) -> Value {
    let category = if d.encounter_id.is_some() {
        "encounter-diagnosis"
    } else {
        "problem-list-item"
    };
    let mut out = json!({
        "resourceType": "Condition",
        "id": d.id.to_string(),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": ICD10_SYSTEMS[0], "code": d.display_code}]},
        "subject": {"reference": format!("Patient/{}", d.patient_id)},
        "recordedDate": d.recorded_at.to_string(),
        "extension": [{"url": PRINCIPAL, "valueBoolean": d.principal}],
    });
    if let Some(e) = d.encounter_id {
        out["encounter"] = json!({"reference": format!("Encounter/{e}")});
    }
    out
}
