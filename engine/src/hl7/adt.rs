//! The ADT messages carepath reads, as typed values: who sent it (MSH), when it happened (EVN),
//! the patient (PID), the visit (PV1) and its diagnoses (DG1).
//!
//! Extraction checks everything the store will need before anything is written, so a message is
//! either wholly usable or refused with the segment and field at fault.

use jiff::Timestamp;

use super::Problem;
use super::message::{Charset, Message, Seg, Value, printable};
use super::time;

/// The ADT trigger events carepath acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Admit an inpatient.
    A01,
    /// Transfer to another location.
    A02,
    /// Discharge.
    A03,
    /// Register an outpatient (or emergency) visit.
    A04,
    /// Update patient information.
    A08,
    /// Cancel an admission.
    A11,
    /// Cancel a discharge.
    A13,
}

impl Trigger {
    pub fn parse(code: &str) -> Option<Trigger> {
        Some(match code {
            "A01" => Trigger::A01,
            "A02" => Trigger::A02,
            "A03" => Trigger::A03,
            "A04" => Trigger::A04,
            "A08" => Trigger::A08,
            "A11" => Trigger::A11,
            "A13" => Trigger::A13,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::A01 => "A01",
            Trigger::A02 => "A02",
            Trigger::A03 => "A03",
            Trigger::A04 => "A04",
            Trigger::A08 => "A08",
            Trigger::A11 => "A11",
            Trigger::A13 => "A13",
        }
    }

    /// Whether the message is about one visit, which PV1-19 must then name.
    pub fn needs_visit_number(self) -> bool {
        matches!(
            self,
            Trigger::A01 | Trigger::A02 | Trigger::A03 | Trigger::A11 | Trigger::A13
        )
    }
}

/// What MSH says about the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// MSH-3, first component.
    pub sending_application: String,
    /// MSH-4, first component.
    pub sending_facility: String,
    /// MSH-5, first component.
    pub receiving_application: String,
    /// MSH-6, first component.
    pub receiving_facility: String,
    /// MSH-9 component 2 as written (`A01`, …).
    pub trigger_code: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-11 (`P`, `T` or `D`).
    pub processing_id: String,
    /// MSH-12.
    pub version: String,
    pub charset: Charset,
    /// MSH-18 as written.
    pub charset_name: String,
}

impl Header {
    /// What MSH says, read without judging it (for an acknowledgement of any message).
    pub fn lenient(msg: &Message) -> Header {
        let msh = msg.segment("MSH");
        let get = |n: usize| {
            msh.and_then(|s| s.value(n).component(1).text().ok())
                .unwrap_or_default()
        };
        Header {
            sending_application: get(3),
            sending_facility: get(4),
            receiving_application: get(5),
            receiving_facility: get(6),
            trigger_code: msh
                .and_then(|s| s.value(9).component(2).text().ok())
                .unwrap_or_default(),
            control_id: get(10),
            processing_id: get(11),
            version: msh
                .and_then(|s| s.value(12).component(1).text().ok())
                .unwrap_or_default(),
            charset: msg.charset,
            charset_name: msg.charset_name.clone(),
        }
    }
}

/// HL7 administrative sex, as carepath records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    Male,
    Female,
    Unknown,
}

impl Sex {
    pub fn as_str(self) -> &'static str {
        match self {
            Sex::Male => "male",
            Sex::Female => "female",
            Sex::Unknown => "unknown",
        }
    }
}

/// The patient, from PID.
#[derive(Clone, PartialEq, Eq)]
pub struct Patient {
    /// PID-3, the first identifier: carepath's patient id.
    pub id: String,
    /// PID-7, `YYYY-MM-DD`.
    pub birth_date: Option<String>,
    /// PID-8; `None` when empty (a known patient keeps what is recorded).
    pub sex: Option<Sex>,
    /// PID-5, the first name given (family name then given name for Chinese names).
    pub name: Option<String>,
    /// PID-13 (home), else PID-14 (business): the first telephone number.
    pub phone: Option<String>,
    /// PID-13: the address of a repetition with use code `NET` or equipment type `Internet`.
    pub email: Option<String>,
    /// PID-15: `zh` or `en` when the primary language is one of those.
    pub lang: Option<String>,
}

impl std::fmt::Debug for Patient {
    // Contact details stay out of debug output (and so out of logs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patient")
            .field("id", &self.id)
            .field("birth_date", &self.birth_date)
            .field("sex", &self.sex)
            .field("name", &self.name.as_ref().map(|_| "…"))
            .field("phone", &self.phone.as_ref().map(|_| "…"))
            .field("email", &self.email.as_ref().map(|_| "…"))
            .field("lang", &self.lang)
            .finish()
    }
}

/// PV1-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientClass {
    Inpatient,
    Outpatient,
    Emergency,
}

/// The visit, from PV1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    /// PV1-2; when absent, inpatient for A01–A03 and outpatient for A04.
    pub class: PatientClass,
    /// PV1-3, the point of care.
    pub department: Option<String>,
    /// PV1-4: emergency, urgent or accident → `true`; routine or elective → `false`.
    pub acute: Option<bool>,
    /// PV1-19, the encounter's identifier.
    pub visit_number: Option<String>,
    /// PV1-44; for A01 and A04 the event time when absent.
    pub admitted_at: Option<Timestamp>,
    /// PV1-45; for A03 the event time when absent.
    pub discharged_at: Option<Timestamp>,
}

/// One DG1 segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// DG1-3 component 1, an ICD-10 code as given.
    pub code: String,
    /// DG1-6 (`A` admitting, `W` working, `F` final), as given.
    pub kind: Option<String>,
    /// DG1-15 is `1`, or no DG1 gives a priority and this is the first.
    pub principal: bool,
}

/// An ADT message carepath can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adt {
    pub header: Header,
    pub trigger: Trigger,
    /// EVN-6 (when the event occurred), else EVN-2 (when it was recorded).
    pub event_time: Option<Timestamp>,
    pub patient: Patient,
    pub visit: Option<Visit>,
    pub diagnoses: Vec<Diagnosis>,
}

/// Whether `id` is a carepath patient id: 1–64 letters, digits, `-` and `_`.
pub fn valid_patient_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn text(v: Value<'_>, at: &str, what: &str) -> Result<Option<String>, Problem> {
    v.opt_text()
        .map_err(|why| Problem::data_type(at, format!("{at} ({what}): {why}")))
}

fn required(v: Value<'_>, at: &str, what: &str, why: &str) -> Result<String, Problem> {
    text(v, at, what)?
        .ok_or_else(|| Problem::required(at, format!("{at} ({what}) is required{why}")))
}

fn when(v: Value<'_>, at: &str, what: &str) -> Result<Option<Timestamp>, Problem> {
    text(v, at, what)?
        .map(|t| {
            time::timestamp(&t)
                .map_err(|why| Problem::data_type(at, format!("{at} ({what}): {why}")))
        })
        .transpose()
}

/// The typed ADT message in `msg`, or the first reason it cannot be used.
pub fn read(msg: &Message) -> Result<Adt, Problem> {
    let msh = msg
        .segment("MSH")
        .ok_or_else(|| Problem::sequence("MSH", "the message has no MSH segment".into()))?;
    let header = header(msh, msg)?;
    let Some(trigger) = Trigger::parse(&header.trigger_code) else {
        return Err(Problem::unsupported_event(format!(
            "MSH-9 trigger event `{}` is not one carepath reads (A01, A02, A03, A04, A08, A11, A13)",
            printable(&header.trigger_code)
        )));
    };
    let event_time = match msg.segment("EVN") {
        Some(evn) => match when(evn.value(6), "EVN-6", "event occurred")? {
            Some(t) => Some(t),
            None => when(evn.value(2), "EVN-2", "recorded date/time")?,
        },
        None => None,
    };
    let pid = msg.segment("PID").ok_or_else(|| {
        Problem::sequence(
            "PID",
            format!("the PID segment is required for {}", trigger.as_str()),
        )
    })?;
    let patient = patient(pid, trigger)?;
    let visit = match msg.segment("PV1") {
        Some(pv1) => Some(visit(pv1, trigger, event_time)?),
        None if trigger == Trigger::A08 => None,
        None => {
            return Err(Problem::sequence(
                "PV1",
                format!("the PV1 segment is required for {}", trigger.as_str()),
            ));
        }
    };
    let diagnoses = diagnoses(msg)?;
    Ok(Adt {
        header,
        trigger,
        event_time,
        patient,
        visit,
        diagnoses,
    })
}

fn header(msh: Seg<'_>, msg: &Message) -> Result<Header, Problem> {
    let facility = required(msh.value(4).component(1), "MSH-4", "sending facility", "")?;
    let kind = required(msh.value(9).component(1), "MSH-9", "message type", "")?;
    if kind != "ADT" {
        return Err(Problem::unsupported_type(format!(
            "MSH-9 message type `{}` is not ADT",
            printable(&kind)
        )));
    }
    let trigger_code = required(msh.value(9).component(2), "MSH-9.2", "trigger event", "")?;
    let control_id = required(msh.value(10), "MSH-10", "message control id", "")?;
    if control_id.chars().count() > 199 || control_id.chars().any(char::is_control) {
        return Err(Problem::data_type(
            "MSH-10",
            "MSH-10 (message control id) must be at most 199 printable characters".into(),
        ));
    }
    let processing_id = required(msh.value(11).component(1), "MSH-11", "processing id", "")?;
    if !matches!(processing_id.as_str(), "P" | "T" | "D") {
        return Err(Problem::unsupported_processing(format!(
            "MSH-11 processing id `{}` is not P, T or D",
            printable(&processing_id)
        )));
    }
    let version = required(msh.value(12).component(1), "MSH-12", "version id", "")?;
    if !["2.3", "2.3.1", "2.4", "2.5", "2.5.1"].contains(&version.as_str()) {
        return Err(Problem::unsupported_version(format!(
            "MSH-12 version `{}` is not one carepath reads (2.3, 2.3.1, 2.4, 2.5, 2.5.1)",
            printable(&version)
        )));
    }
    let opt = |n: usize, what: &str| -> Result<String, Problem> {
        Ok(text(msh.value(n).component(1), &format!("MSH-{n}"), what)?.unwrap_or_default())
    };
    Ok(Header {
        sending_application: opt(3, "sending application")?,
        sending_facility: facility,
        receiving_application: opt(5, "receiving application")?,
        receiving_facility: opt(6, "receiving facility")?,
        trigger_code,
        control_id,
        processing_id,
        version,
        charset: msg.charset,
        charset_name: msg.charset_name.clone(),
    })
}

fn patient(pid: Seg<'_>, trigger: Trigger) -> Result<Patient, Problem> {
    let id = required(
        pid.value(3).component(1),
        "PID-3",
        "patient identifier list",
        &format!(" for {}", trigger.as_str()),
    )?;
    if !valid_patient_id(&id) {
        return Err(Problem::data_type(
            "PID-3",
            "PID-3 (patient identifier list): the first identifier must be a carepath patient id, 1–64 letters, digits, - and _".into(),
        ));
    }
    let birth_date = text(pid.value(7), "PID-7", "date of birth")?
        .map(|t| {
            time::date(&t)
                .map(|d| d.to_string())
                .map_err(|why| Problem::data_type("PID-7", format!("PID-7 (date of birth): {why}")))
        })
        .transpose()?;
    let sex = match text(pid.value(8), "PID-8", "administrative sex")?.as_deref() {
        None => None,
        Some("U" | "O" | "A" | "N") => Some(Sex::Unknown),
        Some("M") => Some(Sex::Male),
        Some("F") => Some(Sex::Female),
        Some(other) => {
            return Err(Problem::table(
                "PID-8",
                format!(
                    "PID-8 (administrative sex) `{}` is not M, F or U",
                    printable(other)
                ),
            ));
        }
    };
    let name = name(pid.value(5))?;
    let mut phone = None;
    let mut email = None;
    for (n, field) in [(13, "PID-13"), (14, "PID-14")] {
        for rep in pid.repetitions(n) {
            let use_code = text(rep.component(2), field, "telecommunication use code")?;
            let equipment = text(rep.component(3), field, "telecommunication equipment type")?;
            let is_email = use_code.as_deref() == Some("NET")
                || equipment
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case("internet"));
            if is_email {
                if n == 13 && email.is_none() {
                    email = text(rep.component(4), field, "e-mail address")?;
                }
            } else if phone.is_none() {
                phone = telephone(rep, field)?;
            }
        }
    }
    if let Some(e) = &email {
        let ok = e.len() <= 254
            && e.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace)
            });
        if !ok {
            return Err(Problem::data_type(
                "PID-13",
                "PID-13 (home phone): the e-mail address (component 4) is not an address".into(),
            ));
        }
    }
    let lang =
        text(pid.value(15).component(1), "PID-15", "primary language")?.and_then(|l| {
            match l.to_ascii_lowercase().as_str() {
                "zh" | "zho" | "chi" | "zh-cn" => Some("zh".to_owned()),
                "en" | "eng" | "en-us" | "en-gb" => Some("en".to_owned()),
                _ => None,
            }
        });
    Ok(Patient {
        id,
        birth_date,
        sex,
        name,
        phone,
        email,
        lang,
    })
}

/// PID-5's first repetition: family name then given name, joined with nothing for Chinese text
/// and with a space (given name first) otherwise.
fn name(v: Value<'_>) -> Result<Option<String>, Problem> {
    let family = text(v.component(1).subcomponent(1), "PID-5", "patient name")?;
    let given = text(v.component(2), "PID-5", "patient name")?;
    Ok(match (family, given) {
        (Some(f), Some(g)) if f.is_ascii() && g.is_ascii() => Some(format!("{g} {f}")),
        (Some(f), Some(g)) => Some(format!("{f}{g}")),
        (Some(n), None) | (None, Some(n)) => Some(n),
        (None, None) => None,
    })
}

/// An XTN repetition's telephone number: component 1 when written, else `+country area local`.
fn telephone(rep: Value<'_>, field: &str) -> Result<Option<String>, Problem> {
    let number = match text(rep.component(1), field, "telephone number")? {
        Some(n) => Some(n),
        None => {
            let parts = [5, 6, 7]
                .into_iter()
                .map(|c| text(rep.component(c), field, "telephone number"))
                .collect::<Result<Vec<_>, _>>()?;
            match parts.as_slice() {
                [country, area, Some(local)] => Some(format!(
                    "{}{}{local}",
                    country
                        .as_deref()
                        .map(|c| format!("+{c}"))
                        .unwrap_or_default(),
                    area.as_deref().unwrap_or_default()
                )),
                _ => None,
            }
        }
    };
    if let Some(n) = &number {
        let ok = n.len() <= 32
            && n.chars().filter(char::is_ascii_digit).count() >= 3
            && n.chars().all(|c| {
                c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')' | '.' | 'X' | 'x')
            });
        if !ok {
            return Err(Problem::data_type(
                field,
                format!("{field} (telephone number) is not a telephone number"),
            ));
        }
    }
    Ok(number)
}

fn visit(pv1: Seg<'_>, trigger: Trigger, event_time: Option<Timestamp>) -> Result<Visit, Problem> {
    let class = match text(pv1.value(2).component(1), "PV1-2", "patient class")?.as_deref() {
        Some("I") => PatientClass::Inpatient,
        Some("O") => PatientClass::Outpatient,
        Some("E") => PatientClass::Emergency,
        None if trigger == Trigger::A04 => PatientClass::Outpatient,
        None => PatientClass::Inpatient,
        Some(other) => {
            return Err(Problem::table(
                "PV1-2",
                format!(
                    "PV1-2 (patient class) `{}` is not I, O or E",
                    printable(other)
                ),
            ));
        }
    };
    let department = text(
        pv1.value(3).component(1),
        "PV1-3",
        "assigned patient location",
    )?;
    if department.as_ref().is_some_and(|d| d.len() > 200) {
        return Err(Problem::data_type(
            "PV1-3",
            "PV1-3 (assigned patient location): the point of care is longer than 200 bytes".into(),
        ));
    }
    let acute = match text(pv1.value(4).component(1), "PV1-4", "admission type")?.as_deref() {
        Some("E" | "U" | "A") => Some(true),
        Some("R" | "C") => Some(false),
        _ => None,
    };
    let why = format!(" for {}", trigger.as_str());
    let visit_number = if trigger.needs_visit_number() {
        Some(required(
            pv1.value(19).component(1),
            "PV1-19",
            "visit number",
            &why,
        )?)
    } else {
        text(pv1.value(19).component(1), "PV1-19", "visit number")?
    };
    if let Some(v) = &visit_number
        && (v.chars().count() > 128 || v.chars().any(char::is_control))
    {
        return Err(Problem::data_type(
            "PV1-19",
            "PV1-19 (visit number) must be at most 128 printable characters".into(),
        ));
    }
    let mut admitted_at = when(pv1.value(44), "PV1-44", "admit date/time")?;
    let mut discharged_at = when(pv1.value(45), "PV1-45", "discharge date/time")?;
    match trigger {
        Trigger::A01 | Trigger::A04 if admitted_at.is_none() => admitted_at = event_time,
        Trigger::A03 if discharged_at.is_none() => discharged_at = event_time,
        _ => {}
    }
    if let (Some(a), Some(d)) = (admitted_at, discharged_at)
        && d < a
    {
        return Err(Problem::data_type(
            "PV1-45",
            "PV1-45 (discharge date/time) is before PV1-44 (admit date/time)".into(),
        ));
    }
    Ok(Visit {
        class,
        department,
        acute,
        visit_number,
        admitted_at,
        discharged_at,
    })
}

fn diagnoses(msg: &Message) -> Result<Vec<Diagnosis>, Problem> {
    let mut out = Vec::new();
    let mut any_priority = false;
    for (i, dg1) in msg.segments_named("DG1").enumerate() {
        let at = |f: usize| format!("DG1-{f}");
        let code = required(
            dg1.value(3).component(1),
            "DG1-3",
            "diagnosis code",
            &format!(" (DG1 segment {})", i + 1),
        )?;
        if carepath_core::charlson::normalise(&code).is_none() {
            return Err(Problem::data_type(
                "DG1-3",
                format!(
                    "DG1-3 (diagnosis code) `{}` is not an ICD-10 code",
                    printable(&code)
                ),
            ));
        }
        if let Some(system) = text(dg1.value(3).component(3), &at(3), "coding system")? {
            let s = system.to_ascii_uppercase().replace(['-', ' '], "");
            if !(s.starts_with("I10") || s.starts_with("ICD10")) {
                return Err(Problem::table(
                    "DG1-3",
                    format!("DG1-3 coding system `{}` is not ICD-10", printable(&system)),
                ));
            }
        }
        let kind = text(dg1.value(6).component(1), &at(6), "diagnosis type")?;
        let priority = text(dg1.value(15).component(1), &at(15), "diagnosis priority")?;
        let principal = priority.as_deref() == Some("1");
        any_priority |= principal;
        out.push(Diagnosis {
            code,
            kind,
            principal,
        });
    }
    if !any_priority && let Some(first) = out.first_mut() {
        first.principal = true;
    }
    Ok(out)
}
