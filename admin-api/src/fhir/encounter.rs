//! Encounters: admissions, discharges, outpatient and emergency visits, recorded by the one
//! hospital entry point (`engine::hospital::record_encounter`) that HL7 feeds use too — the same
//! events (`admitted`, `discharged`) and case intake, whichever protocol carried the visit. An
//! encounter is known by the visit number its institution gives it (`identifier`), so a resent
//! Encounter updates the one recorded; `cancelled` undoes a recorded admission.

use carepath_engine::hospital;
use carepath_engine::store::clinical::{
    self, DiagnosisIn, DiagnosisView, EncounterClass, EncounterIn, EncounterView, Undo,
};
use carepath_engine::store::{StoreError, Tx};
use jiff::Timestamp;
use serde_json::{Value, json};

use super::condition;
use super::json::{Node, clip};
use super::outcome::Outcome;
use super::write::{Ctx, Verb, Written, if_none_exist};

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PRIORITY: &str = "http://terminology.hl7.org/CodeSystem/v3-ActPriority";
const DIAGNOSIS_ROLE: &str = "http://terminology.hl7.org/CodeSystem/diagnosis-role";
const KIND: &str = "Encounter";
/// How far ahead of the server's clock a time may lie (clock skew), in seconds.
const SKEW: i64 = 300;

const ELEMENTS: &[&str] = &[
    "identifier",
    "status",
    "class",
    "type",
    "serviceType",
    "priority",
    "subject",
    "period",
    "length",
    "reasonCode",
    "diagnosis",
    "hospitalization",
    "location",
    "serviceProvider",
    "contained",
];

/// The FHIR class of a carepath encounter class.
fn class_code(c: EncounterClass) -> (&'static str, &'static str) {
    match c {
        EncounterClass::Inpatient => ("IMP", "inpatient encounter"),
        EncounterClass::Outpatient => ("AMB", "ambulatory"),
        EncounterClass::Emergency => ("EMER", "emergency"),
    }
}

fn class_of(n: &Node<'_>) -> Result<EncounterClass, Outcome> {
    n.object()?;
    if let Some(system) = n.opt_str("system")?
        && system != ACT_CODE
    {
        return Err(Outcome::unprocessable(
            &format!("{}.system", n.path),
            format!(
                "Encounter.class is coded in {ACT_CODE}, not `{}`",
                clip(system)
            ),
        ));
    }
    let code = n.req("code")?;
    match code.str()? {
        "IMP" | "ACUTE" | "NONAC" => Ok(EncounterClass::Inpatient),
        "AMB" => Ok(EncounterClass::Outpatient),
        "EMER" => Ok(EncounterClass::Emergency),
        other => Err(Outcome::unprocessable(
            &code.path,
            format!(
                "carepath records inpatient (IMP, ACUTE, NONAC), outpatient (AMB) and emergency (EMER) encounters, not `{}`",
                clip(other)
            ),
        )),
    }
}

/// Whether the admission was acute: priority EM (emergency), or admitted from the emergency
/// department; a routine or elective priority says it was not.
fn acute_of(e: &Node<'_>) -> Result<Option<bool>, Outcome> {
    let mut acute = None;
    if let Some(p) = e.get("priority") {
        for (system, code, path) in p.codings()? {
            if system.is_some_and(|s| s != PRIORITY) {
                continue;
            }
            match code {
                "EM" | "S" => acute = Some(true),
                "R" | "EL" | "P" => acute = acute.or(Some(false)),
                "A" | "UR" | "CR" | "CS" | "CSP" | "CSR" | "PRN" | "RR" | "T" | "UD" => {}
                other => {
                    return Err(Outcome::unprocessable(
                        &path,
                        format!("`{}` is not a v3 ActPriority code", clip(other)),
                    ));
                }
            }
        }
    }
    if let Some(h) = e.get("hospitalization") {
        h.object()?;
        if let Some(src) = h.get("admitSource") {
            let emergency = src.codings()?.iter().any(|(_, c, _)| *c == "emd");
            if emergency {
                acute = Some(true);
            } else if acute.is_none() {
                acute = Some(false);
            }
        }
    }
    Ok(acute)
}

fn department_of(e: &Node<'_>) -> Result<Option<String>, Outcome> {
    if let Some(s) = e.get("serviceType") {
        s.object()?;
        if let Some(t) = s.opt_str("text")? {
            return Ok(Some(t.to_string()));
        }
        for c in s.list("coding")? {
            if let Some(d) = c.opt_str("display")? {
                return Ok(Some(d.to_string()));
            }
        }
    }
    for l in e.list("location")? {
        let loc = l.req("location")?;
        loc.object()?;
        if let Some(d) = loc.opt_str("display")? {
            return Ok(Some(d.to_string()));
        }
    }
    Ok(None)
}

/// The time of `n` (a dateTime with a zone offset), not after the server's clock.
fn time(n: &Node<'_>, now: Timestamp) -> Result<Timestamp, Outcome> {
    let t = n.instant()?;
    if t.as_second() > now.as_second() + SKEW {
        return Err(Outcome::unprocessable(
            &n.path,
            format!(
                "{} {t} is in the future: an encounter records what happened",
                n.path
            ),
        ));
    }
    Ok(t)
}

/// The diagnoses of an Encounter: `diagnosis[].condition` naming contained Conditions (principal
/// when ranked 1, or — with no ranks — the first admission, discharge or chief-complaint one),
/// then ICD-10 codes among `reasonCode`.
fn diagnoses_of(e: &Node<'_>) -> Result<Vec<DiagnosisIn>, Outcome> {
    let contained = e.list("contained")?;
    let mut out: Vec<DiagnosisIn> = Vec::new();
    let entries = e.list("diagnosis")?;
    let ranked = entries.iter().any(|d| d.get("rank").is_some());
    for d in &entries {
        d.object()?;
        let cond = d.req("condition")?;
        cond.object()?;
        let r = cond.req("reference")?;
        let text = r.str()?;
        let Some(local) = text.strip_prefix('#') else {
            return Err(Outcome::unprocessable(
                &r.path,
                format!(
                    "{} `{}` must name a contained Condition (#id); a Condition recorded on its own names its encounter instead",
                    r.path,
                    clip(text)
                ),
            ));
        };
        let Some((i, c)) = contained
            .iter()
            .enumerate()
            .find(|(_, c)| c.v.get("id").and_then(Value::as_str) == Some(local))
        else {
            return Err(Outcome::unprocessable(
                &r.path,
                format!("no contained resource has the id `{}`", clip(local)),
            ));
        };
        if c.v.get("resourceType").and_then(Value::as_str) != Some("Condition") {
            return Err(Outcome::unprocessable(
                &r.path,
                format!("contained `{}` is not a Condition", clip(local)),
            ));
        }
        let node = Node {
            v: c.v,
            path: format!("Encounter.contained[{i}]"),
        };
        condition::check_verification(&node)?;
        let code = condition::icd10(&node.req("code")?)?;
        let rank = d.get("rank").map(|r| r.integer()).transpose()?;
        if rank.is_some_and(|r| r < 1) {
            return Err(Outcome::invalid(
                &format!("{}.rank", d.path),
                "a rank is a positive integer",
            ));
        }
        let role_principal = match d.get("use") {
            Some(u) => u.codings()?.iter().any(|(s, c, _)| {
                s.is_none_or(|s| s == DIAGNOSIS_ROLE) && matches!(*c, "CC" | "AD" | "DD")
            }),
            None => false,
        };
        let principal = condition::principal(&node)?
            || rank == Some(1)
            || (!ranked && role_principal && !out.iter().any(|x| x.principal));
        out.push(DiagnosisIn { code, principal });
    }
    for r in e.list("reasonCode")? {
        if let Ok(code) = condition::icd10(&r) {
            out.push(DiagnosisIn {
                code,
                principal: false,
            });
        }
    }
    Ok(out)
}

/// An Encounter as read.
struct Read {
    encounter: EncounterIn,
    cancelled: bool,
    identifiers: Vec<(String, String)>,
}

fn read(body: &Value, cx: &Ctx<'_>) -> Result<Read, Outcome> {
    let e = Node::resource(body, "Encounter", ELEMENTS)?;
    let now = cx.call.now;
    let status = e.req("status")?.code(&[
        "planned",
        "arrived",
        "triaged",
        "in-progress",
        "onleave",
        "finished",
        "cancelled",
        "entered-in-error",
        "unknown",
    ])?;
    let mut identifier = None;
    let mut identifiers = Vec::new();
    for i in e.list("identifier")? {
        i.object()?;
        let value = i.req("value")?;
        let v = value.str()?;
        if v.len() > 128 {
            return Err(Outcome::invalid(
                &value.path,
                "an encounter identifier (the visit number) is at most 128 characters",
            ));
        }
        if let Some(s) = i.opt_str("system")? {
            if s.len() > 255 {
                return Err(Outcome::invalid(
                    &i.path,
                    "an identifier system is at most 255 characters",
                ));
            }
            identifiers.push((s.to_string(), v.to_string()));
        }
        identifier.get_or_insert_with(|| v.to_string());
    }
    let Some(identifier) = identifier else {
        let mut o = Outcome::invalid(
            "Encounter.identifier",
            "an Encounter needs an identifier: the visit number the hospital gives it",
        );
        o.code = "required";
        return Err(o);
    };
    let class = class_of(&e.req("class")?)?;
    let patient = cx.reference(&e.req("subject")?, "Patient")?;
    let (mut admitted_at, mut discharged_at) = (None, None);
    if let Some(p) = e.get("period") {
        p.object()?;
        if let Some(s) = p.get("start") {
            admitted_at = Some(time(&s, now)?);
        }
        if let Some(end) = p.get("end") {
            let t = time(&end, now)?;
            if admitted_at.is_some_and(|a| t < a) {
                return Err(Outcome::invalid(
                    &end.path,
                    "Encounter.period.end is before Encounter.period.start",
                ));
            }
            discharged_at = Some(t);
        }
    }
    if class != EncounterClass::Inpatient && admitted_at.is_none() && status != "cancelled" {
        let mut o = Outcome::invalid(
            "Encounter.period.start",
            "an outpatient or emergency visit needs period.start: when it took place",
        );
        o.code = "required";
        return Err(o);
    }
    Ok(Read {
        encounter: EncounterIn {
            identifier,
            patient_id: patient,
            class,
            department: department_of(&e)?,
            acute: acute_of(&e)?,
            admitted_at,
            discharged_at,
            diagnoses: diagnoses_of(&e)?,
        },
        cancelled: matches!(status, "cancelled" | "entered-in-error"),
        identifiers,
    })
}

fn store_refusal(e: StoreError) -> Outcome {
    match e {
        StoreError::NotFound(m) => {
            Outcome::unprocessable("Encounter.subject", format!("{m} not found"))
        }
        StoreError::Invalid(m) if m.contains("another patient") => {
            Outcome::unprocessable("Encounter.identifier", m)
        }
        StoreError::Invalid(m) if m.contains("ICD-10") => {
            Outcome::unprocessable("Encounter.diagnosis", m)
        }
        StoreError::Invalid(m) => Outcome::unprocessable("Encounter", m),
        other => Outcome::from(other),
    }
}

/// `POST Encounter` (conditionally with `If-None-Exist`) and `PUT Encounter/{id}`.
pub(crate) async fn write(
    tx: &mut Tx,
    cx: &mut Ctx<'_>,
    verb: &Verb,
    body: &Value,
) -> Result<Written, Outcome> {
    let call = cx.call;
    let institution = call.caller.institution_id.clone();
    let conditional = match verb {
        Verb::Create { if_none_exist: i } => i.as_deref().map(if_none_exist).transpose()?,
        Verb::Update { .. } => None,
    };
    let r = read(body, cx)?;
    if let Verb::Update { id } = verb {
        let stored = match id.parse::<i64>() {
            Ok(n) => clinical::encounter_by_id(tx, n)
                .await
                .map_err(Outcome::from)?,
            Err(_) => None,
        };
        match stored {
            Some(s) if s.institution_id == institution => {
                if s.identifier != r.encounter.identifier {
                    return Err(Outcome::invalid(
                        "Encounter.identifier",
                        format!("Encounter/{id} is known by another identifier"),
                    ));
                }
            }
            _ => {
                return Err(Outcome::not_found(format!(
                    "Encounter/{} not found",
                    clip(id)
                )));
            }
        }
    }
    if let Some((system, value)) = &conditional {
        let local = clinical::external_id(tx, KIND, &institution, system, value)
            .await
            .map_err(Outcome::from)?;
        let found = match local.and_then(|l| l.parse::<i64>().ok()) {
            Some(n) => clinical::encounter_by_id(tx, n)
                .await
                .map_err(Outcome::from)?,
            None => None,
        };
        if let Some(v) = found.filter(|v| v.institution_id == institution) {
            let resource = render(&v, &diagnoses(tx, &v).await?);
            return Ok(Written {
                created: false,
                resource_type: "Encounter",
                id: v.id.to_string(),
                resource,
            });
        }
    }
    let programs = cx.state.programs();
    let h = super::write::hospital(cx.state, &programs);
    let e = &r.encounter;
    let (id, created) = if r.cancelled {
        let known = clinical::encounter(tx, &institution, &e.identifier)
            .await
            .map_err(Outcome::from)?;
        match known {
            Some(k) if k.patient_id == e.patient_id => {
                if k.status != "cancelled" {
                    hospital::cancel(
                        tx,
                        &h,
                        &call.caller,
                        &e.identifier,
                        Undo::Admission,
                        &call.remote,
                        call.now,
                    )
                    .await
                    .map_err(|err| match err {
                        StoreError::Conflict(m) => Outcome::unprocessable("Encounter.status", m),
                        other => Outcome::from(other),
                    })?;
                    cx.advance.extend(
                        clinical::active_enrolments(tx, &e.patient_id)
                            .await
                            .map_err(Outcome::from)?,
                    );
                }
                (k.id, false)
            }
            _ => {
                return Err(Outcome::unprocessable(
                    "Encounter.status",
                    "a cancelled Encounter cancels a recorded admission, and none is recorded under this identifier for this patient",
                ));
            }
        }
    } else {
        let recorded =
            hospital::record_encounter(tx, &h, &call.caller, e, "fhir", &call.remote, call.now)
                .await
                .map_err(store_refusal)?;
        if recorded.change.events_added > 0 {
            cx.advance.extend(
                clinical::active_enrolments(tx, &e.patient_id)
                    .await
                    .map_err(Outcome::from)?,
            );
        }
        cx.advance.extend(recorded.enrolled.iter().copied());
        (recorded.change.encounter_id, recorded.change.created)
    };
    let mut identifiers = r.identifiers;
    identifiers.extend(conditional);
    for (system, value) in &identifiers {
        clinical::record_external_id(
            tx,
            KIND,
            &institution,
            system,
            value,
            &id.to_string(),
            call.now,
        )
        .await
        .map_err(Outcome::from)?;
    }
    let stored = clinical::encounter_by_id(tx, id)
        .await
        .map_err(Outcome::from)?
        .ok_or_else(|| Outcome::from(StoreError::NotFound("the stored encounter".into())))?;
    let resource = render(&stored, &diagnoses(tx, &stored).await?);
    Ok(Written {
        created,
        resource_type: "Encounter",
        id: id.to_string(),
        resource,
    })
}

/// The diagnoses recorded under an encounter.
pub(crate) async fn diagnoses(
    tx: &mut Tx,
    e: &EncounterView,
) -> Result<Vec<DiagnosisView>, Outcome> {
    Ok(clinical::diagnoses_of(tx, &e.patient_id)
        .await
        .map_err(Outcome::from)?
        .into_iter()
        .filter(|d| d.encounter_id == Some(e.id))
        .collect())
}

/// A stored encounter with its diagnoses (as references to their Conditions, the principal one
/// ranked 1).
pub(crate) fn render(e: &EncounterView, diagnoses: &[DiagnosisView]) -> Value {
    let status = if e.status == "cancelled" {
        "cancelled"
    } else if e.discharged_at.is_some() || e.class != EncounterClass::Inpatient {
        "finished"
    } else if e.admitted_at.is_some() {
        "in-progress"
    } else {
        "planned"
    };
    let (code, display) = class_code(e.class);
    let mut out = json!({
        "resourceType": "Encounter",
        "id": e.id.to_string(),
        "identifier": [{"value": e.identifier}],
        "status": status,
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "subject": {"reference": format!("Patient/{}", e.patient_id)},
        "serviceProvider": {"identifier": {"system": "urn:carepath:institution", "value": e.institution_id}},
    });
    let mut period = serde_json::Map::new();
    if let Some(a) = e.admitted_at {
        period.insert("start".into(), json!(a.to_string()));
    }
    if let Some(d) = e.discharged_at {
        period.insert("end".into(), json!(d.to_string()));
    }
    if !period.is_empty() {
        out["period"] = Value::Object(period);
    }
    if let Some(d) = &e.department {
        out["serviceType"] = json!({"text": d});
    }
    match e.acute {
        Some(true) => {
            out["priority"] =
                json!({"coding": [{"system": PRIORITY, "code": "EM", "display": "emergency"}]})
        }
        Some(false) => {
            out["priority"] =
                json!({"coding": [{"system": PRIORITY, "code": "R", "display": "routine"}]})
        }
        None => {}
    }
    if !diagnoses.is_empty() {
        out["diagnosis"] = json!(
            diagnoses
                .iter()
                .map(|d| {
                    let mut x = json!({"condition": {"reference": format!("Condition/{}", d.id), "display": d.display_code}});
                    if d.principal {
                        x["rank"] = json!(1);
                    }
                    x
                })
                .collect::<Vec<_>>()
        );
    }
    out
}
