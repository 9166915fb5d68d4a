//! Patients: the pseudonymous id (identifier `urn:carepath:patient`), sex, birth date, language
//! and the contact details (`telecom`, `name`), written by the one hospital entry point
//! (`engine::hospital::upsert_patient`), which encrypts the contact details. Nothing that could
//! reach a patient is ever answered in full: a Patient is read back with its telecom and name
//! masked, as every view of the patient record shows them.

use carepath_engine::crypto::Contact;
use carepath_engine::hospital;
use carepath_engine::store::patients::{self, MaskedContact, PatientUpsert, PatientView};
use carepath_engine::store::{StoreError, Tx, clinical};
use serde_json::{Value, json};

use super::json::{Node, clip};
use super::outcome::Outcome;
use super::write::{Ctx, Verb, Written, if_none_exist};

/// The identifier system of carepath's pseudonymous patient ids.
pub(crate) const PATIENT_SYSTEM: &str = "urn:carepath:patient";
/// Marks a ContactPoint (`system` other) as a WeChat openid.
pub(crate) const WECHAT: &str = "urn:carepath:wechat";
const WECHAT_PREFIX: &str = "urn:carepath:wechat:";
/// The identifier kind external ids of patients are recorded under.
const KIND: &str = "Patient";

const ELEMENTS: &[&str] = &[
    "identifier",
    "active",
    "name",
    "telecom",
    "gender",
    "birthDate",
    "communication",
];

/// A Patient as read: what to store, and the other systems' identifiers naming it.
struct Read {
    upsert: PatientUpsert,
    identifiers: Vec<(String, String)>,
}

fn sex_of(gender: &str) -> &'static str {
    match gender {
        "female" => "female",
        "male" => "male",
        _ => "unknown",
    }
}

/// `zh`, `zh-CN`, `en-GB` … → `zh` or `en`.
fn lang_of(code: &str) -> Option<&'static str> {
    match code
        .split(['-', '_'])
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("zh") => Some("zh"),
        Some("en") => Some("en"),
        _ => None,
    }
}

/// The contact details and preferred channel a Patient's telecom and name give (`None`: neither
/// was sent, and the stored details stay as they are).
fn contact_of(p: &Node<'_>) -> Result<(Option<Contact>, Option<String>), Outcome> {
    let telecom = p.list("telecom")?;
    let name = p.list("name")?;
    if telecom.is_empty() && name.is_empty() {
        return Ok((None, None));
    }
    let mut c = Contact::default();
    // (rank, channel) of the point the patient prefers.
    let mut preferred: Option<(i64, &'static str)> = None;
    for t in &telecom {
        t.object()?;
        let system = t
            .req("system")?
            .code(&["phone", "fax", "email", "pager", "url", "sms", "other"])?;
        let value_node = t.req("value")?;
        let value = value_node.str()?;
        let marked = t
            .list("extension")?
            .iter()
            .any(|e| e.v.get("url").and_then(Value::as_str) == Some(WECHAT));
        let (slot, channel) = match system {
            "phone" | "sms" => {
                if let Some(u) = t.get("use") {
                    let u = u.code(&["home", "work", "temp", "old", "mobile"])?;
                    if u == "old" {
                        continue;
                    }
                }
                (&mut c.phone, if system == "sms" { "sms" } else { "phone" })
            }
            "email" => (&mut c.email, "email"),
            "other" if marked || value.starts_with(WECHAT_PREFIX) => {
                (&mut c.wechat_openid, "wechat")
            }
            other => {
                return Err(Outcome::not_supported(
                    &format!("{}.system", t.path),
                    format!(
                        "carepath reaches patients by phone, SMS, e-mail or WeChat (system `other` with the extension {WECHAT}), not `{other}`"
                    ),
                ));
            }
        };
        let value = value.strip_prefix(WECHAT_PREFIX).unwrap_or(value).trim();
        let mut probe = Contact::default();
        match channel {
            "email" => probe.email = Some(value.to_string()),
            "wechat" => probe.wechat_openid = Some(value.to_string()),
            _ => probe.phone = Some(value.to_string()),
        }
        if let Err(e) = patients::check_contact(&probe) {
            return Err(Outcome::invalid(&value_node.path, store_reason(e)));
        }
        // A mobile number is preferred over another number given with it.
        let mobile = t.v.get("use").and_then(Value::as_str) == Some("mobile");
        if slot.is_none() || mobile {
            *slot = Some(value.to_string());
        }
        if let Some(rank) = t.get("rank") {
            let r = rank.integer()?;
            if r < 1 {
                return Err(Outcome::invalid(&rank.path, "a rank is a positive integer"));
            }
            if preferred.is_none_or(|(best, _)| r < best) {
                preferred = Some((r, channel));
            }
        }
    }
    if let Some(n) = name.first() {
        n.object()?;
        let text = match n.opt_str("text")? {
            Some(t) => t.to_string(),
            None => {
                let given: Vec<&str> = n
                    .list("given")?
                    .iter()
                    .map(|g| g.str())
                    .collect::<Result<_, _>>()?;
                let family = n.opt_str("family")?;
                let mut parts: Vec<&str> = family.into_iter().collect();
                parts.extend(given);
                if parts.is_empty() {
                    return Err(Outcome::invalid(
                        &n.path,
                        format!("{} needs text, family or given", n.path),
                    ));
                }
                parts.join(" ")
            }
        };
        c.name = Some(text);
        if let Err(e) = patients::check_contact(&c) {
            return Err(Outcome::invalid(&n.path, store_reason(e)));
        }
    }
    Ok((Some(c), preferred.map(|(_, ch)| ch.to_string())))
}

fn store_reason(e: StoreError) -> String {
    match e {
        StoreError::Invalid(m) => m,
        other => other.to_string(),
    }
}

/// The element a [`patients::check_upsert`] refusal is about.
fn expression_of(reason: &str) -> &'static str {
    if reason.starts_with("birth_date") {
        "Patient.birthDate"
    } else if reason.starts_with("sex") {
        "Patient.gender"
    } else if reason.starts_with("lang") {
        "Patient.communication"
    } else if reason.starts_with("contact") {
        "Patient.telecom"
    } else {
        "Patient.identifier"
    }
}

fn read(
    body: &Value,
    id_from_url: Option<&str>,
    today: jiff::civil::Date,
) -> Result<Read, Outcome> {
    let p = Node::resource(body, "Patient", ELEMENTS)?;
    let mut id: Option<String> = None;
    let mut identifiers = Vec::new();
    for i in p.list("identifier")? {
        i.object()?;
        let value = i.req("value")?.str()?;
        match i.opt_str("system")? {
            Some(PATIENT_SYSTEM) => {
                if id.as_deref().is_some_and(|known| known != value) {
                    return Err(Outcome::invalid(
                        &i.path,
                        format!("a Patient has one {PATIENT_SYSTEM} identifier"),
                    ));
                }
                id = Some(value.to_string());
            }
            Some(system) => {
                if system.len() > 255 || value.len() > 255 {
                    return Err(Outcome::invalid(
                        &i.path,
                        "an identifier's system and value are at most 255 characters",
                    ));
                }
                identifiers.push((system.to_string(), value.to_string()));
            }
            None => {
                return Err(Outcome::invalid(
                    &format!("{}.system", i.path),
                    format!(
                        "{}.system is required: carepath's own ids are under {PATIENT_SYSTEM}",
                        i.path
                    ),
                ));
            }
        }
    }
    if let Some(url_id) = id_from_url {
        if let Some(given) = p.opt_str("id")?
            && given != url_id
        {
            return Err(Outcome::invalid(
                "Patient.id",
                format!("Patient.id `{}` is not the id in the URL", clip(given)),
            ));
        }
        if id.as_deref().is_some_and(|i| i != url_id) {
            return Err(Outcome::invalid(
                "Patient.identifier",
                format!("the {PATIENT_SYSTEM} identifier is not the id in the URL"),
            ));
        }
        id = Some(url_id.to_string());
    }
    let Some(id) = id else {
        let mut o = Outcome::invalid(
            "Patient.identifier",
            format!(
                "a Patient needs an identifier with system {PATIENT_SYSTEM}: the pseudonymous id carepath knows the patient by (never a name or an ID-card number)"
            ),
        );
        o.code = "required";
        return Err(o);
    };
    if let Some(a) = p.get("active")
        && a.v.as_bool().is_none()
    {
        return Err(Outcome::invalid(
            &a.path,
            "Patient.active must be true or false",
        ));
    }
    let sex = p
        .get("gender")
        .map(|g| g.code(&["male", "female", "other", "unknown"]))
        .transpose()?
        .map(|g| sex_of(g).to_string());
    let birth_date = match p.get("birthDate") {
        Some(b) => {
            let s = b.str()?;
            if s.len() != 10 || s.parse::<jiff::civil::Date>().is_err() {
                return Err(Outcome::invalid(
                    &b.path,
                    format!(
                        "Patient.birthDate `{}` must be a full date (YYYY-MM-DD)",
                        clip(s)
                    ),
                ));
            }
            Some(s.to_string())
        }
        None => None,
    };
    let mut lang = None;
    for c in p.list("communication")? {
        let l = c.req("language")?;
        let codes = l.codings()?;
        let found = codes.iter().find_map(|(_, code, _)| lang_of(code));
        let Some(found) = found else {
            return Err(Outcome::unprocessable(
                &l.path,
                "carepath writes to patients in Chinese (zh) or English (en)",
            ));
        };
        let preferred = c.v.get("preferred").and_then(Value::as_bool) == Some(true);
        if lang.is_none() || preferred {
            lang = Some(found.to_string());
        }
    }
    let (contact, preferred_channel) = contact_of(&p)?;
    let upsert = PatientUpsert {
        id,
        birth_date,
        sex,
        tz: None,
        contact,
        preferred_channel,
        lang,
        home_institution: None,
    };
    patients::check_upsert(&upsert, today).map_err(|e| {
        let reason = store_reason(e);
        Outcome::invalid(expression_of(&reason), reason)
    })?;
    Ok(Read {
        upsert,
        identifiers,
    })
}

/// `POST Patient` (conditionally with `If-None-Exist`) and `PUT Patient/{id}`.
pub(crate) async fn write(
    tx: &mut Tx,
    cx: &mut Ctx<'_>,
    verb: &Verb,
    body: &Value,
) -> Result<Written, Outcome> {
    let c = cx.call;
    let today = c.now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let institution = &c.caller.institution_id;
    let (url_id, conditional) = match verb {
        Verb::Update { id } => (Some(id.as_str()), None),
        Verb::Create { if_none_exist: i } => (None, i.as_deref().map(if_none_exist).transpose()?),
    };
    let r = read(body, url_id, today)?;
    if let Some((system, value)) = &conditional {
        let known = if system == PATIENT_SYSTEM {
            Some(value.clone())
        } else {
            clinical::external_id(tx, KIND, institution, system, value)
                .await
                .map_err(Outcome::from)?
        };
        if let Some(local) = known
            && clinical::visible(tx, &c.caller, &local)
                .await
                .map_err(Outcome::from)?
        {
            return Ok(Written {
                created: false,
                resource_type: "Patient",
                id: local.clone(),
                resource: json!({
                    "resourceType": "Patient",
                    "id": local,
                    "identifier": [{"system": PATIENT_SYSTEM, "value": local}],
                }),
            });
        }
    }
    let visible = clinical::visible(tx, &c.caller, &r.upsert.id)
        .await
        .map_err(Outcome::from)?;
    match verb {
        Verb::Update { .. } if !visible => {
            return Err(Outcome::not_found(format!(
                "Patient/{} not found",
                clip(&r.upsert.id)
            )));
        }
        Verb::Create { .. } if visible => {
            return Err(Outcome::new(
                axum::http::StatusCode::CONFLICT,
                "duplicate",
                format!(
                    "Patient/{} exists: update it with PUT, or create with If-None-Exist",
                    r.upsert.id
                ),
            )
            .at("Patient.identifier"));
        }
        _ => {}
    }
    let programs = cx.state.programs();
    let h = super::write::hospital(cx.state, &programs);
    let created = hospital::upsert_patient(tx, &h, &c.caller, &r.upsert, &c.remote, c.now)
        .await
        .map_err(|e| match e {
            // The id of a patient the caller cannot see: taken, whoever holds it.
            StoreError::NotFound(_) => Outcome::new(
                axum::http::StatusCode::CONFLICT,
                "duplicate",
                "this patient id cannot be used: choose another pseudonymous id",
            )
            .at("Patient.identifier"),
            StoreError::Invalid(m) => Outcome::unprocessable(expression_of(&m), m),
            other => Outcome::from(other),
        })?;
    let mut identifiers = r.identifiers.clone();
    if let Some((system, value)) = conditional
        && system != PATIENT_SYSTEM
        && !identifiers.contains(&(system.clone(), value.clone()))
    {
        identifiers.push((system, value));
    }
    for (system, value) in &identifiers {
        clinical::record_external_id(tx, KIND, institution, system, value, &r.upsert.id, c.now)
            .await
            .map_err(Outcome::from)?;
    }
    let mut resource = render_upsert(&r.upsert);
    if let Some(list) = resource["identifier"].as_array_mut() {
        list.extend(
            r.identifiers
                .iter()
                .map(|(s, v)| json!({"system": s, "value": v})),
        );
    }
    Ok(Written {
        created,
        resource_type: "Patient",
        id: r.upsert.id.clone(),
        resource,
    })
}

fn gender(sex: &str) -> &'static str {
    match sex {
        "female" => "female",
        "male" => "male",
        _ => "unknown",
    }
}

/// The telecom and name of masked contact details.
fn masked(out: &mut Value, m: &MaskedContact, preferred: Option<&str>) {
    let rank = |channel: &str| (preferred == Some(channel)).then_some(1);
    let mut telecom = Vec::new();
    if let Some(p) = &m.phone {
        let mut t = json!({"system": if preferred == Some("sms") { "sms" } else { "phone" }, "value": p, "use": "mobile"});
        if let Some(r) = rank("phone").or(rank("sms")) {
            t["rank"] = json!(r);
        }
        telecom.push(t);
    }
    if let Some(e) = &m.email {
        let mut t = json!({"system": "email", "value": e});
        if let Some(r) = rank("email") {
            t["rank"] = json!(r);
        }
        telecom.push(t);
    }
    if let Some(w) = &m.wechat_openid {
        let mut t = json!({"system": "other", "value": w, "extension": [{"url": WECHAT, "valueBoolean": true}]});
        if let Some(r) = rank("wechat") {
            t["rank"] = json!(r);
        }
        telecom.push(t);
    }
    if !telecom.is_empty() {
        out["telecom"] = json!(telecom);
    }
    if let Some(n) = &m.name {
        out["name"] = json!([{"text": n}]);
    }
}

fn communication(out: &mut Value, lang: Option<&str>) {
    if let Some(l) = lang {
        out["communication"] = json!([{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": l}]}, "preferred": true}]);
    }
}

/// A Patient as written: what was sent, with the contact details masked.
fn render_upsert(p: &PatientUpsert) -> Value {
    let mut out = json!({
        "resourceType": "Patient",
        "id": p.id,
        "identifier": [{"system": PATIENT_SYSTEM, "value": p.id}],
    });
    if let Some(s) = &p.sex {
        out["gender"] = json!(gender(s));
    }
    if let Some(b) = &p.birth_date {
        out["birthDate"] = json!(b);
    }
    if let Some(c) = &p.contact {
        masked(
            &mut out,
            &MaskedContact::of(c),
            p.preferred_channel.as_deref(),
        );
    }
    communication(&mut out, p.lang.as_deref());
    out
}

/// A stored patient, its contact details masked.
pub(crate) fn render(p: &PatientView) -> Value {
    let mut out = json!({
        "resourceType": "Patient",
        "id": p.id,
        "identifier": [{"system": PATIENT_SYSTEM, "value": p.id}],
        "active": true,
        "gender": gender(&p.sex),
        "managingOrganization": {"identifier": {"system": "urn:carepath:institution", "value": p.institution_id}},
    });
    if let Some(b) = &p.birth_date {
        out["birthDate"] = json!(b);
    }
    if let Some(m) = &p.contact {
        masked(&mut out, m, p.preferred_channel.as_deref());
    }
    communication(&mut out, p.lang.as_deref());
    out
}
