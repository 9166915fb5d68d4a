//! Observations: LOINC codes and UCUM units mapped to carepath's observation kinds, stored by the
//! reading ingestion every other reading goes through (plausibility, deduplication by reading id,
//! alarm rules and goals judged at once).

use carepath_engine::observations::Reading;
use carepath_engine::store::Tx;
use carepath_engine::store::queries;
use carepath_engine::store::records::{self, ReadingRow};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::json::{Node, clip};
use super::outcome::Outcome;
use super::write::{Ctx, Written};

pub(crate) const LOINC: &str = "http://loinc.org";
pub(crate) const UCUM: &str = "http://unitsofmeasure.org";
/// Kinds with no LOINC code here are named under this system.
const KIND_SYSTEM: &str = "urn:carepath:observation-kind";
/// Blood-pressure panel and its components.
const BP_PANEL: &str = "85354-9";
const SYSTOLIC: &str = "8480-6";
const DIASTOLIC: &str = "8462-4";

/// A LOINC code carepath reads: the kind it is stored as and the UCUM units it accepts, each
/// with the unit carepath's own ingestion reads (which converts) — `None` where the value is
/// converted here.
struct Code {
    loinc: &'static str,
    display: &'static str,
    kind: &'static str,
    units: &'static [(&'static str, Convert)],
}

#[derive(Clone, Copy)]
enum Convert {
    /// Passed on with this carepath unit.
    As(&'static str),
    /// Multiplied into the kind's canonical unit.
    Times(f64),
}

use Convert::{As, Times};

static CODES: &[Code] = &[
    Code {
        loinc: SYSTOLIC,
        display: "Systolic blood pressure",
        kind: "bp_systolic",
        units: &[("mm[Hg]", As("mmHg"))],
    },
    Code {
        loinc: DIASTOLIC,
        display: "Diastolic blood pressure",
        kind: "bp_diastolic",
        units: &[("mm[Hg]", As("mmHg"))],
    },
    Code {
        loinc: "8867-4",
        display: "Heart rate",
        kind: "heart_rate",
        units: &[("/min", As("/min")), ("{beats}/min", As("/min"))],
    },
    Code {
        loinc: "59408-5",
        display: "Oxygen saturation in Arterial blood by Pulse oximetry",
        kind: "spo2",
        units: &[("%", As("%"))],
    },
    Code {
        loinc: "2708-6",
        display: "Oxygen saturation in Arterial blood",
        kind: "spo2",
        units: &[("%", As("%"))],
    },
    Code {
        loinc: "29463-7",
        display: "Body weight",
        kind: "weight",
        units: &[
            ("kg", As("kg")),
            ("g", Times(0.001)),
            ("[lb_av]", Times(0.453_592_37)),
        ],
    },
    Code {
        loinc: "8310-5",
        display: "Body temperature",
        kind: "temperature",
        units: &[("Cel", As("°C")), ("[degF]", As("°F"))],
    },
    Code {
        loinc: "9279-1",
        display: "Respiratory rate",
        kind: "respiratory_rate",
        units: &[("/min", As("/min")), ("{breaths}/min", As("/min"))],
    },
    Code {
        loinc: "2339-0",
        display: "Glucose [Mass/volume] in Blood",
        kind: "glucose_fasting",
        units: &[("mg/dL", As("mg/dL"))],
    },
    Code {
        loinc: "15074-8",
        display: "Glucose [Moles/volume] in Blood",
        kind: "glucose_fasting",
        units: &[("mmol/L", As("mmol/L"))],
    },
    Code {
        loinc: "1558-6",
        display: "Fasting glucose [Mass/volume] in Serum or Plasma",
        kind: "glucose_fasting",
        units: &[("mg/dL", As("mg/dL")), ("mmol/L", As("mmol/L"))],
    },
    Code {
        loinc: "1521-4",
        display: "Glucose [Mass/volume] in Serum or Plasma --2 hours post meal",
        kind: "glucose_postprandial",
        units: &[("mg/dL", As("mg/dL")), ("mmol/L", As("mmol/L"))],
    },
    Code {
        loinc: "4548-4",
        display: "Hemoglobin A1c/Hemoglobin.total in Blood",
        kind: "hba1c",
        units: &[("%", As("%"))],
    },
];

/// How a stored kind is written back: its LOINC code and UCUM unit (the kind's canonical unit).
fn written_as(kind: &str) -> Option<(&'static str, &'static str, &'static str)> {
    let (loinc, unit) = match kind {
        "bp_systolic" => (SYSTOLIC, "mm[Hg]"),
        "bp_diastolic" => (DIASTOLIC, "mm[Hg]"),
        "heart_rate" => ("8867-4", "/min"),
        "spo2" => ("59408-5", "%"),
        "weight" => ("29463-7", "kg"),
        "temperature" => ("8310-5", "Cel"),
        "respiratory_rate" => ("9279-1", "/min"),
        "glucose_fasting" => ("15074-8", "mmol/L"),
        "glucose_postprandial" => ("1521-4", "mmol/L"),
        "hba1c" => ("4548-4", "%"),
        _ => return None,
    };
    let display = CODES
        .iter()
        .find(|c| c.loinc == loinc)
        .map_or("", |c| c.display);
    Some((loinc, display, unit))
}

/// The LOINC codes carepath accepts, for diagnostics and the documentation.
fn accepted_codes() -> String {
    let mut codes: Vec<&str> = CODES.iter().map(|c| c.loinc).collect();
    codes.insert(0, BP_PANEL);
    codes.join(", ")
}

/// The accepted LOINC code among a CodeableConcept's codings.
fn loinc_of<'a>(code: &Node<'a>) -> Result<&'a str, Outcome> {
    let codings = code.codings()?;
    codings
        .iter()
        .find(|(s, c, _)| {
            *s == Some(LOINC) && (*c == BP_PANEL || CODES.iter().any(|k| k.loinc == *c))
        })
        .map(|(_, c, _)| *c)
        .ok_or_else(|| {
            let given: Vec<String> = codings
                .iter()
                .map(|(s, c, _)| format!("{}|{}", clip(s.unwrap_or("")), clip(c)))
                .collect();
            Outcome::unprocessable(
                &code.path,
                format!(
                    "{} names no LOINC code carepath records ({}); accepted: {}",
                    code.path,
                    if given.is_empty() {
                        "none given".to_string()
                    } else {
                        given.join(", ")
                    },
                    accepted_codes()
                ),
            )
        })
}

/// A value of `loinc` from a Quantity: the kind, the value and the unit carepath reads.
fn quantity(q: &Node<'_>, loinc: &str) -> Result<(&'static str, f64, &'static str), Outcome> {
    q.object()?;
    let code = CODES.iter().find(|c| c.loinc == loinc).ok_or_else(|| {
        Outcome::unprocessable(&q.path, format!("LOINC {loinc} is a panel, not a value"))
    })?;
    if q.get("comparator").is_some() {
        return Err(Outcome::not_supported(
            &format!("{}.comparator", q.path),
            "a value with a comparator (<, >) is not a reading carepath can judge",
        ));
    }
    let value = q.req("value")?.number()?;
    if let Some(system) = q.opt_str("system")?
        && system != UCUM
    {
        return Err(Outcome::unprocessable(
            &format!("{}.system", q.path),
            format!("units must be UCUM ({UCUM}), not `{}`", clip(system)),
        ));
    }
    // The UCUM code says what the unit is; `unit` is its human-readable form.
    let (unit, path) = match (q.opt_str("code")?, q.opt_str("unit")?) {
        (Some(c), _) => (c, format!("{}.code", q.path)),
        (None, Some(u)) => (u, format!("{}.unit", q.path)),
        (None, None) => {
            return Err(Outcome::invalid(
                &format!("{}.unit", q.path),
                format!("{} needs a UCUM unit (`code`)", q.path),
            ));
        }
    };
    let accepted = |u: &str| code.units.iter().find(|(x, _)| *x == u).map(|(_, c)| *c);
    // Units written the way carepath's own API writes them are understood too.
    let convert = accepted(unit).or(match unit {
        "mmHg" => accepted("mm[Hg]"),
        "°C" => accepted("Cel"),
        "bpm" | "beats/min" => accepted("/min"),
        _ => None,
    });
    let Some(convert) = convert else {
        let units: Vec<&str> = code.units.iter().map(|(u, _)| *u).collect();
        // Name `unit` even when the code was read: it is what a sender most often gets wrong.
        let at = if path.ends_with(".code") {
            format!("{}.unit", q.path)
        } else {
            path
        };
        return Err(Outcome::unprocessable(
            &at,
            format!(
                "unit `{}` is not accepted for LOINC {loinc} ({}); send {}",
                clip(unit),
                code.display,
                units.join(" or ")
            ),
        ));
    };
    Ok(match convert {
        As(u) => (code.kind, value, u),
        Times(f) => {
            let canonical = carepath_dsl::catalog::OBSERVATIONS
                .iter()
                .find(|(k, _)| *k == code.kind)
                .map_or("", |(_, u)| *u);
            (code.kind, value * f, canonical)
        }
    })
}

const ELEMENTS: &[&str] = &[
    "identifier",
    "basedOn",
    "partOf",
    "status",
    "category",
    "code",
    "subject",
    "encounter",
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "issued",
    "performer",
    "valueQuantity",
    "dataAbsentReason",
    "interpretation",
    "note",
    "bodySite",
    "method",
    "device",
    "referenceRange",
    "component",
];

/// `POST Observation`: stores the reading(s) it holds for a patient the caller may see.
pub(crate) async fn create(
    tx: &mut Tx,
    cx: &mut Ctx<'_>,
    body: &Value,
    if_none_exist: Option<&str>,
) -> Result<Written, Outcome> {
    // The identifier a conditional create names is the reading's identity: a stored reading with
    // it is answered as it is and nothing is added.
    let conditional = if_none_exist.map(super::write::if_none_exist).transpose()?;
    let obs = Node::resource(body, "Observation", ELEMENTS)?;
    let status = obs.req("status")?;
    let st = status.code(&[
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "cancelled",
        "entered-in-error",
        "unknown",
    ])?;
    if !matches!(st, "preliminary" | "final" | "amended" | "corrected") {
        return Err(Outcome::unprocessable(
            &status.path,
            format!("an Observation that is `{st}` holds no reading to record"),
        ));
    }
    if let Some(d) = obs.get("dataAbsentReason") {
        return Err(Outcome::unprocessable(
            &d.path,
            "an Observation with no value holds no reading",
        ));
    }
    let patient = cx.reference(&obs.req("subject")?, "Patient")?;
    let at = match (
        obs.get("effectiveDateTime"),
        obs.get("effectiveInstant"),
        obs.get("effectivePeriod"),
    ) {
        (Some(t), None, None) | (None, Some(t), None) => t.instant()?,
        (None, None, Some(p)) => p.req("start")?.instant()?,
        (None, None, None) => {
            return Err(Outcome::invalid(
                "Observation.effective",
                "Observation.effective[x] is required: when the reading was taken",
            ));
        }
        _ => {
            return Err(Outcome::invalid(
                "Observation.effective",
                "give one effective[x]: effectiveDateTime, effectiveInstant or effectivePeriod",
            ));
        }
    };
    let code = obs.req("code")?;
    let loinc = loinc_of(&code)?;
    // (kind, value, unit, the element the value came from)
    let mut values = Vec::new();
    if loinc == BP_PANEL {
        if let Some(v) = obs.get("valueQuantity") {
            return Err(Outcome::invalid(
                &v.path,
                "a blood-pressure panel carries its values in component (8480-6 systolic, 8462-4 diastolic)",
            ));
        }
        let components = obs.req("component")?.array()?;
        for c in &components {
            let cc = c.req("code")?;
            let l = loinc_of(&cc)?;
            if l != SYSTOLIC && l != DIASTOLIC {
                return Err(Outcome::unprocessable(
                    &cc.path,
                    format!(
                        "a blood-pressure panel's components are {SYSTOLIC} and {DIASTOLIC}, not {l}"
                    ),
                ));
            }
            if values.iter().any(|(k, ..): &(&str, f64, &str, String)| {
                *k == if l == SYSTOLIC {
                    "bp_systolic"
                } else {
                    "bp_diastolic"
                }
            }) {
                return Err(Outcome::invalid(
                    &cc.path,
                    format!("component {l} is given twice"),
                ));
            }
            let q = c.req("valueQuantity")?;
            let (kind, value, unit) = quantity(&q, l)?;
            values.push((kind, value, unit, q.path.clone()));
        }
        for (needed, name) in [("bp_systolic", SYSTOLIC), ("bp_diastolic", DIASTOLIC)] {
            if !values.iter().any(|(k, ..)| *k == needed) {
                return Err(Outcome::invalid(
                    "Observation.component",
                    format!("a blood-pressure panel needs the component {name}"),
                ));
            }
        }
    } else {
        if let Some(c) = obs.get("component") {
            return Err(Outcome::invalid(
                &c.path,
                format!("LOINC {loinc} carries its value in valueQuantity, not component"),
            ));
        }
        let q = obs.req("valueQuantity")?;
        let (kind, value, unit) = quantity(&q, loinc)?;
        values.push((kind, value, unit, q.path.clone()));
    }
    let reading_id = match (conditional, obs.list("identifier")?.first()) {
        (Some((system, value)), _) => {
            let id = format!("{system}|{value}");
            if id.len() > 128 {
                return Err(Outcome::invalid(
                    "If-None-Exist",
                    "an identifier is at most 128 characters",
                ));
            }
            id
        }
        (None, Some(i)) => {
            let system = i.opt_str("system")?.unwrap_or("");
            let value = i.req("value")?.str()?;
            let id = format!("{system}|{value}");
            if id.len() > 128 {
                return Err(Outcome::invalid(
                    &i.path,
                    "an Observation identifier is at most 128 characters",
                ));
            }
            id
        }
        // Without an identifier, the same resource sent twice is one reading.
        (None, None) => {
            let digest = Sha256::digest(serde_json::to_vec(body).unwrap_or_default());
            let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
            format!("fhir:{hex}")
        }
    };
    let readings: Vec<Reading> = values
        .iter()
        .map(|(kind, value, unit, _)| Reading {
            patient_id: patient.clone(),
            kind: kind.to_string(),
            value: *value,
            unit: Some(unit.to_string()),
            at,
            reading_id: reading_id.clone(),
            source: "fhir".into(),
        })
        .collect();
    let c = &cx.call;
    let summary = queries::ingest_visible_tx(tx, &c.caller, &readings, &c.remote, c.now)
        .await
        .map_err(Outcome::from)?;
    if let Some((i, reason)) = summary.refused.first() {
        let at = if reason.contains("not found") {
            "Observation.subject".to_string()
        } else if reason.contains("future") {
            "Observation.effective".to_string()
        } else {
            format!("{}.value", values[*i].3)
        };
        return Err(Outcome::unprocessable(&at, reason.clone()));
    }
    cx.advance
        .extend(summary.enrolments_to_advance.iter().copied());
    let rows = records::reading_rows_tx(tx, &patient, &reading_id)
        .await
        .map_err(Outcome::from)?;
    let kinds: Vec<&str> = values.iter().map(|(k, ..)| *k).collect();
    let rows: Vec<ReadingRow> = rows
        .into_iter()
        .filter(|r| kinds.contains(&r.kind.as_str()))
        .collect();
    let resource = render(&rows).ok_or_else(|| {
        Outcome::from(carepath_engine::store::StoreError::NotFound(
            "the stored reading".into(),
        ))
    })?;
    Ok(Written {
        created: summary.accepted > 0,
        resource_type: "Observation",
        id: resource["id"].as_str().unwrap_or_default().to_string(),
        resource,
    })
}

/// The Observations of stored rows: the values of one reading id together (a blood pressure is
/// one panel, named by its systolic row), newest first.
pub(crate) fn render_all(rows: &[ReadingRow]) -> Vec<Value> {
    let mut groups: Vec<Vec<ReadingRow>> = Vec::new();
    for r in rows {
        let bp = r.kind.starts_with("bp_");
        match groups.iter_mut().find(|g| {
            bp && g[0].kind.starts_with("bp_")
                && g[0].patient_id == r.patient_id
                && g[0].reading_id == r.reading_id
        }) {
            Some(g) => g.push(r.clone()),
            None => groups.push(vec![r.clone()]),
        }
    }
    groups.iter().filter_map(|g| render(g)).collect()
}

fn quantity_json(value: f64, unit: &str) -> Value {
    let rounded = (value * 100.0).round() / 100.0;
    json!({"value": rounded, "unit": unit, "system": UCUM, "code": unit})
}

fn coding(kind: &str) -> (Value, &'static str) {
    match written_as(kind) {
        Some((loinc, display, unit)) => (
            json!({"system": LOINC, "code": loinc, "display": display}),
            unit,
        ),
        None => {
            let unit = carepath_dsl::catalog::OBSERVATIONS
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or("1", |(_, u)| *u);
            (json!({"system": KIND_SYSTEM, "code": kind}), unit)
        }
    }
}

/// One Observation of the rows of one reading (`None` for no rows).
pub(crate) fn render(rows: &[ReadingRow]) -> Option<Value> {
    let first = rows.first()?;
    let sys = rows.iter().find(|r| r.kind == "bp_systolic");
    let dia = rows.iter().find(|r| r.kind == "bp_diastolic");
    let vital = |kind: &str| !matches!(kind, "glucose_fasting" | "glucose_postprandial" | "hba1c");
    let category = if vital(&first.kind) {
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}])
    } else {
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}]}])
    };
    let mut out = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": category,
        "subject": {"reference": format!("Patient/{}", first.patient_id)},
        "effectiveDateTime": first.at.to_string(),
        "identifier": [identifier(&first.reading_id)],
    });
    match (sys, dia) {
        (Some(s), Some(d)) => {
            out["id"] = json!(s.id.to_string());
            out["code"] = json!({"coding": [{"system": LOINC, "code": BP_PANEL, "display": "Blood pressure panel with all children optional"}], "text": "Blood pressure"});
            out["component"] = json!([
                {"code": {"coding": [{"system": LOINC, "code": SYSTOLIC, "display": "Systolic blood pressure"}]}, "valueQuantity": quantity_json(s.value, "mm[Hg]")},
                {"code": {"coding": [{"system": LOINC, "code": DIASTOLIC, "display": "Diastolic blood pressure"}]}, "valueQuantity": quantity_json(d.value, "mm[Hg]")},
            ]);
        }
        _ => {
            let (c, unit) = coding(&first.kind);
            out["id"] = json!(first.id.to_string());
            out["code"] = json!({"coding": [c]});
            out["valueQuantity"] = quantity_json(first.value, unit);
        }
    }
    Some(out)
}

/// The identifier a reading id was made from (`system|value`), or the reading id itself.
fn identifier(reading_id: &str) -> Value {
    match reading_id.split_once('|') {
        Some((system, value)) if !system.is_empty() => json!({"system": system, "value": value}),
        Some((_, value)) => json!({"value": value}),
        None => json!({"system": "urn:carepath:reading", "value": reading_id}),
    }
}
