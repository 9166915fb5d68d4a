//! Patients as the admin API registers and reads them: scoped to the caller's institution and
//! audited (a registration in its own transaction, a read before it is returned).

use jiff::Timestamp;
use serde::Serialize;

use super::queries::{AuditAppender, AuditEntry, Caller, patient_visible, visible_patient};
use super::{
    MAX_CLOCK_SKEW_SECONDS, NewEnrolment, NewPatient, Pool, Result, StoreError, Written,
    enrol_many, insert_patient,
};
use crate::args;
use crate::crypto::{Contact, ContactKey};
use crate::program::Programs;

/// Registers a new patient in the caller's institution (`Conflict` when the id is taken;
/// `Invalid` when a field is wrong, or the home institution is not a community institution of the
/// caller's alliance), in its own transaction with its audit entry.
pub async fn create(
    pool: &Pool,
    caller: &Caller,
    key: Option<&ContactKey>,
    p: &PatientUpsert,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    if tx
        .fetch_one("SELECT 1 FROM patients WHERE id = $1", args![&p.id])
        .await?
        .is_some()
    {
        return Err(StoreError::Conflict(format!(
            "patient {} already exists",
            p.id
        )));
    }
    upsert(&mut tx, caller, key, p, remote, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Changes a patient visible to the caller (`NotFound` otherwise, and for an unknown id), in its
/// own transaction with its audit entry.
pub async fn update(
    pool: &Pool,
    caller: &Caller,
    key: Option<&ContactKey>,
    p: &PatientUpsert,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    let mut tx = pool.begin().await?;
    if tx
        .fetch_one("SELECT 1 FROM patients WHERE id = $1", args![&p.id])
        .await?
        .is_none()
    {
        return Err(StoreError::NotFound(format!("patient {}", p.id)));
    }
    upsert(&mut tx, caller, key, p, remote, now).await?;
    tx.commit().await?;
    Ok(())
}

/// The kinds of institution a patient's home community institution may be.
pub const COMMUNITY_KINDS: [&str; 2] = ["community_clinic", "township_hospital"];

/// `home` must be a community clinic or township hospital in the alliance of `institution` (the
/// same lead: the institution itself, or its parent).
async fn check_home(tx: &mut super::Tx, institution: &str, home: &str) -> Result<()> {
    let row = tx
        .fetch_one(
            "SELECT h.kind, COALESCE(h.parent_id, h.id), COALESCE(me.parent_id, me.id) \
             FROM institutions h, institutions me WHERE h.id = $1 AND me.id = $2",
            args![home, institution],
        )
        .await?;
    let found = row.map(|r| (r.text(0), r.text(1), r.text(2)));
    match &found {
        Some((kind, lead, mine)) => check_home_of(Some((kind, lead)), home, mine),
        None => check_home_of(None, home, ""),
    }
}

/// The rule for a home institution: `found` is its kind and the lead institution of its
/// alliance (`None`: there is no such institution); `my_lead` the registering institution's lead.
pub(crate) fn check_home_of(found: Option<(&str, &str)>, home: &str, my_lead: &str) -> Result<()> {
    let Some((kind, lead)) = found else {
        return Err(StoreError::Invalid(format!(
            "home_institution `{home}` is not an institution"
        )));
    };
    if !COMMUNITY_KINDS.contains(&kind) {
        return Err(StoreError::Invalid(format!(
            "home_institution `{home}` is a {kind}; a patient's home is a community clinic or township hospital"
        )));
    }
    if lead != my_lead {
        return Err(StoreError::Invalid(format!(
            "home_institution `{home}` is not in this institution's alliance"
        )));
    }
    Ok(())
}

/// A patient and their enrolments, as the API shows them.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PatientView {
    pub id: String,
    pub institution_id: String,
    pub birth_date: Option<String>,
    pub sex: String,
    pub tz: String,
    /// The patient's home community institution, if any.
    pub home_institution: Option<String>,
    pub preferred_channel: Option<String>,
    /// `zh` or `en`: the language messages are written in.
    pub lang: Option<String>,
    /// The contact details, masked (the full details only through [`contact`]).
    pub contact: Option<MaskedContact>,
    /// When the contact details were erased at the patient's request.
    pub contact_erased_at: Option<Timestamp>,
    pub enrolments: Vec<EnrolmentSummary>,
}

/// Contact details as every view shows them: enough to recognise, never enough to use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct MaskedContact {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat_openid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `+8613800138000` → `*********8000`: the last four characters.
fn mask_tail(v: &str) -> String {
    let chars: Vec<char> = v.chars().collect();
    let keep = if chars.len() > 6 { 4 } else { 0 };
    let hidden = chars.len() - keep;
    let tail: String = chars[hidden..].iter().collect();
    format!("{}{tail}", "*".repeat(hidden))
}

/// `li.hua@example.org` → `l***@example.org`; `oABC123` → `o***`; `李华` → `李*`.
fn mask_head(v: &str) -> String {
    let (local, domain) = v.split_once('@').map_or((v, None), |(l, d)| (l, Some(d)));
    let first: String = local.chars().take(1).collect();
    match domain {
        Some(d) => format!("{first}***@{d}"),
        None if v.chars().count() <= 2 => format!("{first}*"),
        None => format!("{first}***"),
    }
}

impl MaskedContact {
    pub fn of(c: &Contact) -> MaskedContact {
        MaskedContact {
            phone: c.phone.as_deref().map(mask_tail),
            email: c.email.as_deref().map(mask_head),
            wechat_openid: c.wechat_openid.as_deref().map(mask_head),
            name: c.name.as_deref().map(mask_head),
        }
    }
}

/// One enrolment of a patient, in a [`PatientView`].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnrolmentSummary {
    pub id: i64,
    pub pathway: String,
    pub version: i64,
    pub state: String,
    pub status: String,
    pub institution_id: String,
}

/// A patient visible to the caller, with their enrolments; `NotFound` (audited as such) when
/// there is none. Audited before it is returned.
pub async fn read(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    key: Option<&ContactKey>,
    id: &str,
    remote: &str,
    now: Timestamp,
) -> Result<PatientView> {
    let read = Read {
        caller,
        action: "patient.read",
        target: format!("patient/{id}"),
        remote,
        now,
    };
    let p = &visible_row(
        pool,
        audit,
        &read,
        "p.id, p.institution_id, p.birth_date, p.sex, p.tz, p.home_institution, p.preferred_channel, p.lang, p.contact_enc, p.contact_erased_at",
        id,
    )
    .await?;
    let enrolments = pool
        .fetch(
            "SELECT id, pathway_id, version, state, status, institution_id FROM enrolments WHERE patient_id = $1 ORDER BY id",
            args![id],
        )
        .await?
        .iter()
        .map(|e| EnrolmentSummary {
            id: e.i64(0),
            pathway: e.text(1),
            version: e.i64(2),
            state: e.text(3),
            status: e.text(4),
            institution_id: e.text(5),
        })
        .collect();
    audit.append(read.entry(&[id.to_string()], "ok")).await?;
    Ok(PatientView {
        id: p.text(0),
        institution_id: p.text(1),
        birth_date: p.opt_text(2),
        sex: p.text(3),
        tz: p.text(4),
        home_institution: p.opt_text(5),
        preferred_channel: p.opt_text(6),
        lang: p.opt_text(7),
        contact: match (p.opt_text(8), key) {
            (Some(enc), Some(key)) => key.decrypt(&enc).ok().map(|c| MaskedContact::of(&c)),
            _ => None,
        },
        contact_erased_at: p.opt_i64(9).map(super::ts),
        enrolments,
    })
}

/// How far in the past an enrolment may be dated (`POST /enrolments` with `at`).
pub const MAX_BACKDATE_DAYS: i64 = 30;

/// Enrols a patient visible to the caller (`NotFound` otherwise) and commits the first step with
/// its audit entry, in one transaction. `new.at` may lie up to [`MAX_BACKDATE_DAYS`] before
/// `now` (the enrolment then catches up from it to `now`, every check instant in order) and no
/// more than the tolerated clock skew after it (taken as `now`); outside that, `Invalid`.
pub async fn enrol(
    pool: &Pool,
    programs: &Programs,
    caller: &Caller,
    new: &NewEnrolment,
    remote: &str,
    now: Timestamp,
) -> Result<(i64, Written)> {
    let earliest = now.as_second() - MAX_BACKDATE_DAYS * 86_400;
    if new.at.as_second() > now.as_second() + MAX_CLOCK_SKEW_SECONDS {
        return Err(StoreError::Invalid(format!(
            "`at` {} is in the future (now is {now}); an enrolment starts now or in the past",
            new.at
        )));
    }
    if new.at.as_second() < earliest {
        return Err(StoreError::Invalid(format!(
            "`at` {} is more than {MAX_BACKDATE_DAYS} days before now ({now}); enrol from {} at the earliest",
            new.at,
            super::ts(earliest)
        )));
    }
    if !patient_visible(pool, caller, &new.patient_id).await? {
        return Err(StoreError::NotFound(format!("patient {}", new.patient_id)));
    }
    let new = NewEnrolment {
        at: new.at.min(now),
        catch_up_to: Some(now),
        ..new.clone()
    };
    let mut tx = pool.begin().await?;
    let (ids, written) = enrol_many(&mut tx, programs, std::slice::from_ref(&new)).await?;
    let id = ids
        .first()
        .copied()
        .ok_or_else(|| StoreError::Invalid("insert returned no id".into()))?;
    caller
        .audit_ok(
            &mut tx,
            "enrolment.create",
            &format!("enrolment/{id}"),
            std::slice::from_ref(&new.patient_id),
            remote,
            now,
        )
        .await?;
    tx.commit().await?;
    Ok((id, written))
}

/// A patient as a hospital system sends it: created when unknown, updated when known. `None`
/// leaves a stored value as it is.
#[derive(Debug, Clone, Default)]
pub struct PatientUpsert {
    pub id: String,
    pub birth_date: Option<String>,
    /// `female`, `male` or `unknown`.
    pub sex: Option<String>,
    pub tz: Option<String>,
    /// Replaces the stored contact details when given (the whole record: a field left out is
    /// removed).
    pub contact: Option<Contact>,
    pub preferred_channel: Option<String>,
    pub lang: Option<String>,
    pub home_institution: Option<String>,
}

/// Whether a patient with this id exists (at any institution).
pub async fn exists(tx: &mut super::Tx, id: &str) -> Result<bool> {
    Ok(tx
        .fetch_one("SELECT 1 FROM patients WHERE id = $1", args![id])
        .await?
        .is_some())
}

/// The preferred channels a patient may have.
pub const CHANNELS: [&str; 4] = ["wechat", "sms", "phone", "email"];

/// Checks what a [`PatientUpsert`] says, naming the first field that is wrong.
pub fn check_upsert(p: &PatientUpsert, today: jiff::civil::Date) -> Result<()> {
    let bad = |m: String| Err(StoreError::Invalid(m));
    if p.id.is_empty()
        || p.id.len() > 64
        || !p
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return bad("patient id must be 1–64 characters of letters, digits, - and _ (a pseudonymous id, never a name or ID number)".into());
    }
    if let Some(sex) = &p.sex
        && !matches!(sex.as_str(), "female" | "male" | "unknown")
    {
        return bad(format!("sex `{sex}` must be female, male or unknown"));
    }
    if let Some(d) = &p.birth_date {
        match d.parse::<jiff::civil::Date>() {
            Ok(date) if date >= jiff::civil::date(1890, 1, 1) && date <= today => {}
            Ok(_) => {
                return bad(format!(
                    "birth_date `{d}` must lie between 1890-01-01 and today"
                ));
            }
            Err(_) => return bad(format!("birth_date `{d}` is not a date (YYYY-MM-DD)")),
        }
    }
    if let Some(tz) = &p.tz
        && jiff::tz::TimeZone::get(tz).is_err()
    {
        return bad(format!(
            "tz `{tz}` is not an IANA time zone such as Asia/Shanghai"
        ));
    }
    if let Some(ch) = &p.preferred_channel
        && !CHANNELS.contains(&ch.as_str())
    {
        return bad(format!(
            "preferred_channel `{ch}` must be wechat, sms, phone or email"
        ));
    }
    if let Some(lang) = &p.lang
        && !matches!(lang.as_str(), "zh" | "en")
    {
        return bad(format!("lang `{lang}` must be zh or en"));
    }
    if let Some(c) = &p.contact {
        check_contact(c)?;
    }
    Ok(())
}

/// Contact details that could be used: a phone number of digits (an optional leading +, spaces and
/// dashes allowed), an e-mail address with one @, a WeChat openid of letters, digits, - and _.
pub fn check_contact(c: &Contact) -> Result<()> {
    let bad = |m: &str| Err(StoreError::Invalid(m.to_string()));
    if let Some(phone) = &c.phone {
        let digits = phone.chars().filter(char::is_ascii_digit).count();
        let ok = phone
            .chars()
            .enumerate()
            .all(|(i, ch)| ch.is_ascii_digit() || ch == ' ' || ch == '-' || (ch == '+' && i == 0));
        if !ok || !(5..=15).contains(&digits) {
            return bad(
                "contact.phone must be a phone number: 5–15 digits, an optional leading +, spaces or dashes",
            );
        }
    }
    if let Some(email) = &c.email {
        let parts: Vec<&str> = email.split('@').collect();
        if email.len() > 254
            || parts.len() != 2
            || parts[0].is_empty()
            || !parts[1].contains('.')
            || email
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return bad("contact.email must be an e-mail address such as name@example.org");
        }
    }
    if let Some(w) = &c.wechat_openid
        && (w.is_empty()
            || w.len() > 64
            || !w
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
    {
        return bad("contact.wechat_openid must be 1–64 letters, digits, - or _");
    }
    if c.name.as_ref().is_some_and(|n| n.chars().count() > 100) {
        return bad("contact.name is longer than 100 characters");
    }
    if let Some(lang) = &c.lang
        && !matches!(lang.as_str(), "zh" | "en")
    {
        return bad("contact.lang must be zh or en");
    }
    Ok(())
}

fn seal(key: Option<&ContactKey>, contact: &Contact, lang: Option<&str>) -> Result<String> {
    let key = key.ok_or_else(|| {
        StoreError::Invalid(
            "contact details cannot be stored: this server has no contact key (CAREPATH_CONTACT_KEY)".into(),
        )
    })?;
    let mut c = contact.clone();
    if c.lang.is_none() {
        c.lang = lang.map(str::to_string);
    }
    key.encrypt(&c)
        .map_err(|e| StoreError::Invalid(format!("contact details cannot be encrypted: {e}")))
}

/// Creates the patient in the caller's institution when unknown, or updates a patient visible to
/// the caller with what `p` gives (`NotFound` when the id belongs to a patient the caller cannot
/// see). Contact details are encrypted with `key` (without one, giving them is `Invalid`).
/// Returns whether the patient was created. Audited as `patient.create` or `patient.update`;
/// the audit names what changed, never a value.
pub async fn upsert(
    tx: &mut super::Tx,
    caller: &Caller,
    key: Option<&ContactKey>,
    p: &PatientUpsert,
    remote: &str,
    now: Timestamp,
) -> Result<bool> {
    check_upsert(p, now.to_zoned(jiff::tz::TimeZone::UTC).date())?;
    let exists = tx
        .fetch_one("SELECT lang FROM patients WHERE id = $1", args![&p.id])
        .await?;
    let contact_enc = match &p.contact {
        Some(c) => {
            let lang = p
                .lang
                .clone()
                .or_else(|| exists.as_ref().and_then(|r| r.opt_text(0)));
            Some(seal(key, c, lang.as_deref())?)
        }
        None => None,
    };
    if let Some(home) = &p.home_institution {
        check_home(tx, &caller.institution_id, home).await?;
    }
    let created = exists.is_none();
    if created {
        insert_patient(
            tx,
            &NewPatient {
                id: p.id.clone(),
                institution_id: caller.institution_id.clone(),
                birth_date: p.birth_date.clone(),
                sex: p.sex.clone().unwrap_or_else(|| "unknown".into()),
                tz: p.tz.clone().unwrap_or_else(|| "Asia/Shanghai".into()),
                contact_enc: contact_enc.clone(),
                preferred_channel: p.preferred_channel.clone(),
                home_institution: p.home_institution.clone(),
                lang: p.lang.clone(),
            },
            now,
        )
        .await?;
    } else {
        if !super::clinical::visible(tx, caller, &p.id).await? {
            return Err(StoreError::NotFound(format!("patient {}", p.id)));
        }
        tx.exec(
            "UPDATE patients SET birth_date = COALESCE($2, birth_date), sex = COALESCE($3, sex), tz = COALESCE($4, tz), \
             contact_enc = COALESCE($5, contact_enc), preferred_channel = COALESCE($6, preferred_channel), \
             lang = COALESCE($7, lang), home_institution = COALESCE($8, home_institution), \
             contact_erased_at = CASE WHEN $5 IS NULL THEN contact_erased_at ELSE NULL END WHERE id = $1",
            args![
                &p.id,
                p.birth_date.clone(),
                p.sex.clone(),
                p.tz.clone(),
                contact_enc,
                p.preferred_channel.clone(),
                p.lang.clone(),
                p.home_institution.clone()
            ],
        )
        .await?;
        // A days-logged goal counts days in the patient's time zone: a new zone can change its
        // answer with no reading arriving, so the patient's goals are evaluated again at once.
        if p.tz.is_some() {
            super::goals::evaluate_for_patients(tx, std::slice::from_ref(&p.id), now).await?;
        }
    }
    caller
        .audit_ok(
            tx,
            if created {
                "patient.create"
            } else {
                "patient.update"
            },
            &format!("patient/{}", p.id),
            std::slice::from_ref(&p.id),
            remote,
            now,
        )
        .await?;
    Ok(created)
}

/// Erases a patient's contact details at their request (PIPL art. 47): the encrypted record is
/// destroyed and the preferred channel cleared; the pseudonymous clinical record stays. Messages
/// waiting to be sent can no longer reach the patient and fall back as for a patient without
/// contact details. `NotFound` for a patient the caller cannot see. Audited as
/// `patient.erase_contact`.
pub async fn erase_contact(
    tx: &mut super::Tx,
    caller: &Caller,
    id: &str,
    remote: &str,
    now: Timestamp,
) -> Result<()> {
    if !super::clinical::visible(tx, caller, id).await? {
        return Err(StoreError::NotFound(format!("patient {id}")));
    }
    tx.exec(
        "UPDATE patients SET contact_enc = NULL, preferred_channel = NULL, contact_erased_at = $2 WHERE id = $1",
        args![id, now.as_second()],
    )
    .await?;
    caller
        .audit_ok(
            tx,
            "patient.erase_contact",
            &format!("patient/{id}"),
            &[id.to_string()],
            remote,
            now,
        )
        .await?;
    Ok(())
}

/// The full contact details of a patient visible to the caller, for staff who must reach the
/// patient themselves (`None` when there are none). `NotFound` otherwise. Audited as
/// `patient.contact.read` before it is returned.
pub async fn contact(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    key: Option<&ContactKey>,
    id: &str,
    remote: &str,
    now: Timestamp,
) -> Result<Option<Contact>> {
    let read = Read {
        caller,
        action: "patient.contact.read",
        target: format!("patient/{id}/contact"),
        remote,
        now,
    };
    let row = &visible_row(pool, audit, &read, "p.contact_enc", id).await?;
    let contact = match (row.opt_text(0), key) {
        (None, _) => None,
        (Some(enc), Some(key)) => Some(key.decrypt(&enc).map_err(|e| {
            StoreError::Invalid(format!("the contact details cannot be read: {e}"))
        })?),
        (Some(_), None) => {
            return Err(StoreError::Invalid(
                "this server has no contact key (CAREPATH_CONTACT_KEY) to read contact details with".into(),
            ));
        }
    };
    audit.append(read.entry(&[id.to_string()], "ok")).await?;
    Ok(contact)
}

/// A read of patient data by a caller, as the audit records it.
struct Read<'a> {
    caller: &'a Caller,
    action: &'a str,
    target: String,
    remote: &'a str,
    now: Timestamp,
}

impl Read<'_> {
    fn entry(&self, patients: &[String], outcome: &str) -> AuditEntry {
        AuditEntry::new(
            &self.caller.staff_id,
            Some(&self.caller.institution_id),
            self.action,
            &self.target,
            patients,
            outcome,
            self.remote,
            self.now,
        )
    }
}

/// `columns` of patient `id` when the caller may see them; otherwise the refusal is audited and
/// the answer is `NotFound`. The caller audits the read itself once it knows what it returns.
async fn visible_row(
    pool: &Pool,
    audit: &AuditAppender,
    read: &Read<'_>,
    columns: &str,
    id: &str,
) -> Result<crate::db::Row> {
    let sql = format!(
        "SELECT {columns} FROM patients p WHERE p.id = $1 AND {}",
        visible_patient(2)
    );
    let rows = pool
        .fetch(&sql, args![id, &read.caller.institution_id])
        .await?;
    match rows.into_iter().next() {
        Some(row) => Ok(row),
        None => {
            audit.append(read.entry(&[], "not_found")).await?;
            Err(StoreError::NotFound(format!("patient {id}")))
        }
    }
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    #[test]
    fn masks_leave_too_little_to_use() {
        let m = MaskedContact::of(&Contact {
            phone: Some("+8613800138000".into()),
            email: Some("li.hua@example.org".into()),
            wechat_openid: Some("oABC123".into()),
            name: Some("李华".into()),
            lang: None,
        });
        assert_eq!(m.phone.as_deref(), Some("**********8000"));
        assert_eq!(m.email.as_deref(), Some("l***@example.org"));
        assert_eq!(m.wechat_openid.as_deref(), Some("o***"));
        assert_eq!(m.name.as_deref(), Some("李*"));
    }

    #[test]
    fn contact_details_are_checked() {
        let phone = |p: &str| {
            check_contact(&Contact {
                phone: Some(p.into()),
                ..Default::default()
            })
        };
        assert!(phone("+86 138-0013-8000").is_ok());
        assert!(phone("138001380001234567").is_err());
        assert!(phone("call me").is_err());
        assert!(phone("1+3800138000").is_err());
        let email = |e: &str| {
            check_contact(&Contact {
                email: Some(e.into()),
                ..Default::default()
            })
        };
        assert!(email("a@b.cn").is_ok());
        assert!(email("a@@b.cn").is_err());
        assert!(email("a b@c.cn").is_err());
    }
}

/// The rest of a patient's course, as the workstation's patient view shows it beside the
/// enrolments, timelines and scale pushes the API already serves: readings (the last 180 days),
/// scale results, care-plan goals and their history, messages sent (no contact details: the
/// outbox's channel, template and delivery status), and the reading conditions of the alarm rules
/// in force (to draw their thresholds).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Course {
    /// (kind, value, instant in seconds), by kind then time.
    pub readings: Vec<(String, f64, i64)>,
    /// (scale, score, band, instant).
    pub scales: Vec<(String, f64, String, i64)>,
    pub goals: Vec<GoalView>,
    /// Evaluations of the goals, newest first: (enrolment, goal, met, value, instant).
    pub goal_history: Vec<(i64, String, bool, Option<f64>, i64)>,
    pub messages: Vec<MessageView>,
    /// (enrolment, alarm id, the rule's `when` condition as written).
    pub alarm_rules: Vec<(i64, String, Option<String>)>,
}

/// A care-plan goal of an enrolment and its latest evaluation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GoalView {
    pub enrolment_id: i64,
    pub goal: String,
    pub title: carepath_dsl::Text,
    pub met: Option<bool>,
    pub evaluated_at: Option<i64>,
}

/// A message to the patient as the outbox keeps it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageView {
    pub channel: String,
    pub template: String,
    pub status: String,
    pub attempts: i64,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    pub last_error: Option<String>,
}

/// How far back [`course`] reads readings.
pub const COURSE_READINGS_DAYS: i64 = 180;

/// [`Course`] of a patient visible to the caller (`NotFound`, audited, otherwise); audited as
/// `patient.course` before it is returned.
pub async fn course(
    pool: &Pool,
    audit: &AuditAppender,
    caller: &Caller,
    id: &str,
    remote: &str,
    now: Timestamp,
) -> Result<Course> {
    let read = Read {
        caller,
        action: "patient.course",
        target: format!("patient/{id}"),
        remote,
        now,
    };
    visible_row(pool, audit, &read, "p.id", id).await?;
    let since = now.as_second() - COURSE_READINGS_DAYS * 86_400;
    let readings = pool
        .fetch(
            "SELECT kind, value, at FROM observations WHERE patient_id = $1 AND at >= $2 ORDER BY kind, at LIMIT 5000",
            args![id, since],
        )
        .await?
        .iter()
        .map(|r| (r.text(0), r.f64(1), r.i64(2)))
        .collect();
    let scales = pool
        .fetch(
            "SELECT scale, score, band, at FROM scale_answers WHERE patient_id = $1 ORDER BY at DESC LIMIT 200",
            args![id],
        )
        .await?
        .iter()
        .map(|r| (r.text(0), r.f64(1), r.text(2), r.i64(3)))
        .collect();
    let (goal_spec, goal_spec_part) = crate::writer::part_column("g", "spec");
    let goals = pool
        .fetch(
            &format!(
                "SELECT g.enrolment_id, g.goal_id, {goal_spec}, g.met, g.evaluated_at FROM goals g JOIN enrolments e ON e.id = g.enrolment_id {goal_spec_part} \
                 WHERE e.patient_id = $1 ORDER BY g.enrolment_id, g.goal_id"
            ),
            args![id],
        )
        .await?
        .iter()
        .map(|r| GoalView {
            enrolment_id: r.i64(0),
            goal: r.text(1),
            title: serde_json::from_str::<carepath_dsl::Goal>(&r.text(2))
                .map(|g| g.title)
                .unwrap_or_else(|_| carepath_dsl::Text::both(&r.text(1))),
            met: r.opt_i64(3).map(|m| m != 0),
            evaluated_at: r.opt_i64(4),
        })
        .collect();
    let goal_history = pool
        .fetch(
            "SELECT s.enrolment_id, s.goal_id, s.met, s.value, s.at FROM goal_status s JOIN enrolments e ON e.id = s.enrolment_id \
             WHERE e.patient_id = $1 ORDER BY s.at DESC, s.id DESC LIMIT 200",
            args![id],
        )
        .await?
        .iter()
        .map(|r| {
            let v = r.f64(3);
            (r.i64(0), r.text(1), r.i64(2) != 0, (!v.is_nan()).then_some(v), r.i64(4))
        })
        .collect();
    let messages = pool
        .fetch(
            "SELECT channel, template, status, attempts, created_at, sent_at, last_error FROM outbox WHERE patient_id = $1 ORDER BY created_at DESC, id DESC LIMIT 100",
            args![id],
        )
        .await?
        .iter()
        .map(|r| MessageView {
            channel: r.text(0),
            template: r.text(1),
            status: r.text(2),
            attempts: r.i64(3),
            created_at: r.i64(4),
            sent_at: r.opt_i64(5),
            last_error: r.opt_text(6),
        })
        .collect();
    let (spec, spec_part) = crate::writer::part_column("a", "spec");
    let alarm_rules = pool
        .fetch(
            &format!(
                "SELECT a.enrolment_id, a.alarm_id, {spec} FROM alarm_rules a JOIN enrolments e ON e.id = a.enrolment_id {spec_part} \
                 WHERE e.patient_id = $1 AND a.active = 1 ORDER BY a.enrolment_id, a.alarm_id"
            ),
            args![id],
        )
        .await?
        .iter()
        .map(|r| {
            let when = serde_json::from_str::<carepath_dsl::AlarmSpec>(&r.text(2))
                .ok()
                .and_then(|s| s.when.map(|w| w.0));
            (r.i64(0), r.text(1), when)
        })
        .collect();
    audit.append(read.entry(&[id.to_string()], "ok")).await?;
    Ok(Course {
        readings,
        scales,
        goals,
        goal_history,
        messages,
        alarm_rules,
    })
}
