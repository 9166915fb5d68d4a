//! Buffered, multi-row inserts of what steps produced.
//!
//! A scheduler batch writes thousands of rows; one statement per row costs a round trip each (a
//! thread hop on SQLite, a network round trip on PostgreSQL). The buffer collects rows per table
//! and flushes them as multi-row `INSERT … ON CONFLICT (dedupe_key) DO NOTHING`, inside the batch's
//! transaction, in an order that respects references (follow-ups before their outbox rows).

use std::collections::BTreeMap;

use carepath_dsl::{AlarmScope, Channel, Direction};
use serde_json::json;

use super::db::Arg;
use super::{DueEnrolment, Result, Transfer, Tx, Written};
use crate::step::{Emitted, Produced};

struct Table {
    name: &'static str,
    columns: &'static str,
    /// One row's VALUES tuple; each `?` becomes the next `$n`.
    values: &'static str,
    /// The action kind counted for inserted rows, if any.
    kind: Option<&'static str>,
}

const TABLES: &[Table] = &[
    Table {
        name: "tasks",
        columns: "dedupe_key, enrolment_id, patient_id, institution_id, state_seq, task_ref, role, title_zh, title_en, priority, keep, sla, status, due_at, created_at, cancel_reason, escalate_at",
        // A task goes to the institution that owns its role for the enrolment (a referral moved
        // it, see `queries::decide_referral`), else to the enrolment's.
        values: "(?, ?, ?, COALESCE((SELECT o.institution_id FROM role_owners o WHERE o.enrolment_id = ? AND o.role = ?), ?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        kind: Some("task"),
    },
    Table {
        name: "follow_ups",
        columns: "dedupe_key, enrolment_id, patient_id, institution_id, state_seq, follow_up_ref, template, channels, send_at, urgent, status, created_at",
        values: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        kind: Some("follow_up"),
    },
    Table {
        name: "outbox",
        columns: "dedupe_key, follow_up_id, patient_id, channel, template, payload, status, next_attempt_at, created_at",
        values: "(?, (SELECT id FROM follow_ups WHERE dedupe_key = ?), ?, ?, ?, ?, 'pending', ?, ?)",
        kind: None,
    },
    Table {
        name: "scale_pushes",
        columns: "dedupe_key, enrolment_id, patient_id, institution_id, state_seq, scale, due_at, expires_at, reminders, next_reminder_at, status, created_at, push_ref",
        values: "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        kind: Some("scale_push"),
    },
    Table {
        name: "risk_predictions",
        columns: "dedupe_key, enrolment_id, patient_id, model, score, band, contributions, at",
        values: "(?, ?, ?, ?, ?, ?, ?, ?)",
        kind: Some("risk"),
    },
    Table {
        name: "alarm_rules",
        columns: "dedupe_key, enrolment_id, state_seq, alarm_id, spec, scope, active, created_at, due_at",
        values: "(?, ?, ?, ?, ?, ?, ?, ?, ?)",
        kind: Some("alarm"),
    },
    Table {
        name: "referrals",
        columns: "dedupe_key, enrolment_id, patient_id, direction, to_kind, from_institution, to_institution, reason, status, requested_at, accept_by, moves",
        // Addressed to one institution, the referral is of that institution's kind.
        values: "(?, ?, ?, ?, COALESCE((SELECT i.kind FROM institutions i WHERE i.id = ?), ?), ?, ?, ?, ?, ?, ?, ?)",
        kind: Some("referral"),
    },
    Table {
        name: "goals",
        columns: "dedupe_key, enrolment_id, goal_id, spec, created_at, next_eval_at",
        values: "(?, ?, ?, ?, ?, ?)",
        kind: Some("goal"),
    },
    Table {
        name: "record_parts",
        columns: "dedupe_key, body",
        values: "(?, ?)",
        kind: None,
    },
    Table {
        name: "record",
        columns: "dedupe_key, patient_id, enrolment_id, at, kind, detail",
        values: "(?, ?, ?, ?, ?, ?)",
        kind: None,
    },
];

/// Notes are written only to the record; they are counted from it.
const NOTE_KIND: &str = "note";

/// The record kind of a step's one row: what it made and its trace.
pub(crate) const STEP_KIND: &str = "step";

/// The shortest text of a made action's field kept as a record part rather than in the row.
const PART_MIN_BYTES: usize = 48;

/// The detail of a made action as its step's row stores it: each field that is an object or a
/// list of at least [`PART_MIN_BYTES`] (a task's bilingual title, an alarm rule's or a goal's
/// spec) is replaced by `{"$part": <hash>}` and put in `parts` under that hash (the first 128 bits
/// of the SHA-256 of its text, in hex). Steps repeat the same few hundred such parts millions of
/// times; the record keeps each once ([`fill_parts`] puts them back).
fn part_out(detail: serde_json::Value, parts: &mut BTreeMap<String, String>) -> serde_json::Value {
    let serde_json::Value::Object(fields) = detail else {
        return detail;
    };
    let fields = fields
        .into_iter()
        .map(|(k, v)| {
            if !(v.is_object() || v.is_array()) {
                return (k, v);
            }
            let text = v.to_string();
            if text.len() < PART_MIN_BYTES {
                return (k, v);
            }
            (k, json!({ PART_REF: put_part(text, parts) }))
        })
        .collect();
    serde_json::Value::Object(fields)
}

/// Puts `text` in `parts` under its hash (the first 128 bits of its SHA-256, in hex) and returns
/// the hash.
pub(crate) fn put_part(text: String, parts: &mut BTreeMap<String, String>) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hash: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    parts.entry(hash.clone()).or_insert(text);
    hash
}

/// A column that holds a record part's hash in place of its text (an armed alarm rule's spec):
/// the SQL expression of the text, and the join that reads it, for a row of `alias`. A row
/// written before the column held parts holds the text itself, which the expression reads as is.
pub(crate) fn part_column(alias: &str, column: &str) -> (String, String) {
    let part = format!("{alias}_{column}_part");
    (
        format!("COALESCE({part}.body, {alias}.{column})"),
        format!("LEFT JOIN record_parts {part} ON {part}.dedupe_key = {alias}.{column}"),
    )
}

/// The key under which a stored detail names a record part.
const PART_REF: &str = "$part";

/// The record parts a stored detail names (its top-level fields' `{"$part": <hash>}`).
pub(crate) fn part_refs(detail: &serde_json::Value) -> impl Iterator<Item = &str> {
    detail
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|v| v.get(PART_REF).and_then(|h| h.as_str()))
}

/// Puts the record parts back into a stored detail: each `{"$part": <hash>}` field becomes the
/// part's value. A part missing from `parts` is left as the reference.
pub(crate) fn fill_parts(
    detail: &mut serde_json::Value,
    parts: &std::collections::HashMap<String, serde_json::Value>,
) {
    let Some(fields) = detail.as_object_mut() else {
        return;
    };
    for v in fields.values_mut() {
        let part = v
            .get(PART_REF)
            .and_then(|h| h.as_str())
            .and_then(|h| parts.get(h));
        if let Some(part) = part {
            *v = part.clone();
        }
    }
}

/// The timeline entries one stored step row stands for, in order: each action it made, at its
/// instant (the step's unless stored), then its trace (kind `trace`, at the step's instant). An
/// action comes as stored (`made` true): its kind and its empty fields are [`restore_made`]'s to
/// put back once its parts are filled in.
pub(crate) fn expand_step(
    at: i64,
    detail: &serde_json::Value,
) -> Vec<(i64, String, serde_json::Value, bool)> {
    let mut out: Vec<(i64, String, serde_json::Value, bool)> = detail["made"]
        .as_array()
        .map(|made| {
            made.iter()
                .map(|m| {
                    (
                        m["at"].as_i64().unwrap_or(at),
                        m["kind"].as_str().unwrap_or_default().to_string(),
                        m["detail"].clone(),
                        true,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(trace) = detail.get("trace") {
        out.push((at, "trace".into(), trace.clone(), false));
    }
    out
}

/// A made action's detail as it was made, from its stored form (its parts filled in): read back
/// as the action and written out again, which restores the fields stored empty by leaving them
/// out. Returns the action's kind, or `None` (the detail left as stored) for a detail that is not
/// an action.
pub(crate) fn restore_made(detail: &mut serde_json::Value) -> Option<&'static str> {
    let action: Produced = serde_json::from_value(detail.clone()).ok()?;
    *detail = serde_json::to_value(&action).ok()?;
    Some(action.kind())
}

/// The stored form of a made action: its detail without empty (null) fields, its large fields
/// as record parts. The step's row leaves out its kind and, when it is the step's, its instant
/// ([`RowBuffer::step`]); [`restore_made`] puts all of it back.
fn stored_made(action: &Produced, parts: &mut BTreeMap<String, String>) -> serde_json::Value {
    let mut detail = serde_json::to_value(action).unwrap_or_default();
    if let Some(fields) = detail.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
    }
    part_out(detail, parts)
}

/// The prefix of a step row's detail stored packed against [`STEP_DICTIONARY_V1`]: the rest is
/// the base64 (standard alphabet, padded) of a zstd frame. JSON never starts with it, so a row
/// written unpacked reads as it always did.
const PACKED_V1: &str = "z1:";

/// What every step row repeats: field names, action kinds, roles, channels and the phrases of
/// the trace. zstd reads it as a raw-content dictionary, so a row of a few hundred bytes packs
/// as though it were the tail of a long text of its kind. Rows packed with it must stay
/// readable: this text never changes; a better dictionary is version 2, under its own prefix.
const STEP_DICTIONARY_V1: &str = concat!(
    r#"{"made":[{"detail":{"alarm":{"$part":""},"kind":"alarm_armed"},"key":"e"#,
    r#"{"detail":{"kind":"goal_set","goal":{"$part":""}},"key":"e"#,
    r#"{"detail":{"kind":"risk","model":"","score":0.,"band":"high","contributions":"#,
    r#"{"detail":{"kind":"referral","direction":"up","to":"","own_community":false,"reason":"","accept_by":"2026-"#,
    r#"{"detail":{"kind":"cancel","what":"","reason":""},"key":"e"#,
    r#"{"detail":{"kind":"note","text":{"$part":""}},"key":"e"#,
    r#"{"detail":{"channels":["phone"],"kind":"follow_up","send_at":"2026-","template":"","urgent":true},"key":"e"#,
    r#"{"detail":{"channels":["wechat","sms"],"kind":"follow_up","send_at":"2026-","template":"","urgent":false},"key":"e"#,
    r#"{"detail":{"due_at":"2026-","expires_at":"2026-","kind":"scale_push","reminders":["2026-"],"scale":""},"key":"e"#,
    r#"{"detail":{"due_at":"2026-","keep":false,"kind":"task","priority":"urgent","role":"doctor","sla":{"$part":""},"task_ref":"","title":{"$part":""}},"key":"e"#,
    r#"{"detail":{"due_at":"2026-","keep":true,"kind":"task","priority":"high","role":"ward_nurse","task_ref":"","title":{"$part":""}},"key":"e"#,
    r#"{"at":17,"detail":{"due_at":"2026-","keep":false,"kind":"task","priority":"normal","role":"case_manager","task_ref":"","title":{"$part":""}},"key":"e"#,
    r#"{"at":17,"detail":{"due_at":"2026-","keep":true,"kind":"task","priority":"normal","role":"hospital_case_manager","task_ref":"","title":{"$part":""}},"key":"e"#,
    r#":00:00Z","#,
    r#"}],"trace":["condition: guard ` held ()","cancel the open work of `","set  = ","risk ` = ","#,
    r#"event `scale_expired:` does not move `","event `discharged` sets ","#,
    r#"2026-: occurrence 1 of schedule `","2026-: enrolment completed in `","2026-: enrolment withdrawn in `","#,
    r#"2026-: enrolled at entry point `","2026-: `` → `` (on discharged)","2026-: `` → `` (on admitted)","#,
    r#"2026-: `` → `` (when ","2026-: `` → `` (after 48h)","2026-: `` → `` (after 7d)"]}"#,
);

thread_local! {
    static STEP_PACKER: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static STEP_UNPACKER: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A step row's detail as stored: packed against [`STEP_DICTIONARY_V1`] ([`unpack_detail`]
/// reads it back). Steps repeat the same fields and phrases, so a row shrinks to less than half
/// (2.2 times smaller over the real pathways' step rows, base64 included); a detail that would
/// not shrink is stored as it is.
pub(crate) fn pack_step(detail: String) -> String {
    use base64::Engine as _;
    let packed = STEP_PACKER.with(|p| {
        let mut p = p.borrow_mut();
        if p.is_none() {
            *p = zstd::bulk::Compressor::with_dictionary(3, STEP_DICTIONARY_V1.as_bytes()).ok();
        }
        p.as_mut()?.compress(detail.as_bytes()).ok()
    });
    match packed {
        Some(z) if PACKED_V1.len() + z.len().div_ceil(3) * 4 < detail.len() => {
            let mut out = String::with_capacity(PACKED_V1.len() + z.len().div_ceil(3) * 4);
            out.push_str(PACKED_V1);
            base64::engine::general_purpose::STANDARD.encode_string(&z, &mut out);
            out
        }
        _ => detail,
    }
}

/// A record row's detail as written: a packed step row unpacked ([`pack_step`]), any other
/// text as it is. `None` for a packed detail that does not unpack (damaged).
pub(crate) fn unpack_detail(stored: &str) -> Option<std::borrow::Cow<'_, str>> {
    use base64::Engine as _;
    let Some(packed) = stored.strip_prefix(PACKED_V1) else {
        return Some(std::borrow::Cow::Borrowed(stored));
    };
    let z = base64::engine::general_purpose::STANDARD
        .decode(packed)
        .ok()?;
    // The frame says its content's size (a step row is far below the bound).
    let size = zstd::zstd_safe::get_frame_content_size(&z).ok()??;
    let size = usize::try_from(size).ok().filter(|s| *s <= 16 << 20)?;
    let text = STEP_UNPACKER.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = zstd::bulk::Decompressor::with_dictionary(STEP_DICTIONARY_V1.as_bytes()).ok();
        }
        d.as_mut()?.decompress(&z, size).ok()
    })?;
    String::from_utf8(text).ok().map(std::borrow::Cow::Owned)
}

#[derive(Default)]
pub struct RowBuffer {
    rows: BTreeMap<&'static str, Vec<Vec<Arg>>>,
    notes: Vec<String>,
    covers: Vec<Cover>,
    /// What the step being buffered made, for its one record row ([`RowBuffer::step`]).
    made: Vec<serde_json::Value>,
    /// The record parts the buffered step rows name, by hash ([`part_out`]).
    parts: BTreeMap<String, String>,
}

/// A new task that takes over the open critical-item tasks of a scale (`covers_critical`).
struct Cover {
    key: String,
    enrolment: i64,
    patient: String,
    scale: String,
    task_ref: String,
    at: i64,
}

fn channels_json(c: &[Channel]) -> String {
    serde_json::to_string(&c.iter().map(|c| c.as_str()).collect::<Vec<_>>()).unwrap_or_default()
}

impl RowBuffer {
    fn push(&mut self, table: &'static str, row: Vec<Arg>) {
        self.rows.entry(table).or_default().push(row);
    }

    pub fn record(
        &mut self,
        key: Option<String>,
        patient: &str,
        enrolment: i64,
        at: i64,
        kind: &str,
        detail: String,
    ) {
        self.push(
            "record",
            vec![
                Arg::OptT(key),
                Arg::T(patient.into()),
                Arg::I(enrolment),
                Arg::I(at),
                Arg::T(kind.into()),
                Arg::T(detail),
            ],
        );
    }

    /// Buffers one produced action and its record entry. `stale` is the reason when the policy
    /// (`outcome::apply`) says it is born ended.
    pub fn action(&mut self, d: &DueEnrolment, a: &Emitted, stale: Option<&str>) {
        let e = d.enrolment.id;
        let seq = i64::from(a.state_seq);
        let at = a.at.as_second();
        let key = || Arg::T(a.key.clone());
        let patient = || Arg::T(d.patient_id.clone());
        let inst = || Arg::T(d.institution_id.clone());
        match &a.action {
            Produced::Task {
                task_ref,
                role,
                title,
                due_at,
                priority,
                sla,
                keep,
                covers_critical,
            } => {
                let cancelled = stale;
                if let (Some(scale), None) = (covers_critical, cancelled) {
                    self.covers.push(Cover {
                        key: a.key.clone(),
                        enrolment: e,
                        patient: d.patient_id.clone(),
                        scale: scale.clone(),
                        task_ref: task_ref.clone().unwrap_or_else(|| a.key.clone()),
                        at,
                    });
                }
                let escalate_at = sla
                    .as_ref()
                    .filter(|_| cancelled.is_none())
                    .and_then(|s| s.escalates_at(due_at.as_second()));
                // The SLA is the record part its step's row names too.
                let sla = sla.as_ref().map(|s| {
                    put_part(
                        serde_json::to_value(s).unwrap_or_default().to_string(),
                        &mut self.parts,
                    )
                });
                self.push(
                    "tasks",
                    vec![
                        key(),
                        Arg::I(e),
                        patient(),
                        Arg::I(e),
                        Arg::T(role.clone()),
                        inst(),
                        Arg::I(seq),
                        Arg::OptT(task_ref.clone()),
                        Arg::T(role.clone()),
                        Arg::T(title.zh.clone()),
                        Arg::T(title.en.clone()),
                        Arg::I(*priority as i64),
                        Arg::I(i64::from(*keep)),
                        Arg::OptT(sla),
                        Arg::T(
                            if cancelled.is_some() {
                                "cancelled"
                            } else {
                                "open"
                            }
                            .into(),
                        ),
                        Arg::I(due_at.as_second()),
                        Arg::I(at),
                        Arg::OptT(cancelled.map(str::to_string)),
                        Arg::OptI(escalate_at),
                    ],
                );
            }
            Produced::FollowUp {
                follow_up_ref,
                channels,
                template,
                send_at,
                urgent,
            } => {
                self.push(
                    "follow_ups",
                    vec![
                        key(),
                        Arg::I(e),
                        patient(),
                        inst(),
                        Arg::I(seq),
                        Arg::OptT(follow_up_ref.clone()),
                        Arg::T(template.clone()),
                        Arg::T(channels_json(channels)),
                        Arg::I(send_at.as_second()),
                        Arg::I(i64::from(*urgent)),
                        Arg::T(
                            if stale.is_some() {
                                "cancelled"
                            } else {
                                "scheduled"
                            }
                            .into(),
                        ),
                        Arg::I(at),
                    ],
                );
                if stale.is_none() {
                    let payload = json!({"template": template, "channels": channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(), "urgent": urgent, "pathway": d.enrolment.pathway_id});
                    self.push(
                        "outbox",
                        vec![
                            key(),
                            key(),
                            patient(),
                            Arg::T(channels.first().map(|c| c.as_str()).unwrap_or("sms").into()),
                            Arg::T(template.clone()),
                            Arg::T(payload.to_string()),
                            Arg::I(send_at.as_second()),
                            Arg::I(at),
                        ],
                    );
                }
            }
            Produced::ScalePush {
                scale,
                due_at,
                expires_at,
                reminders,
                chain,
                push_ref,
            } => {
                // Stored in time order: the sweep sends them in that order (see `store::scales`).
                let (stored, first) = crate::scales::stored_reminders(reminders, chain);
                self.push(
                    "scale_pushes",
                    vec![
                        key(),
                        Arg::I(e),
                        patient(),
                        inst(),
                        Arg::I(seq),
                        Arg::T(scale.clone()),
                        Arg::I(due_at.as_second()),
                        Arg::OptI(expires_at.map(|t| t.as_second())),
                        Arg::T(stored),
                        Arg::OptI(first.filter(|_| stale.is_none())),
                        Arg::T(
                            if stale.is_some() {
                                "cancelled"
                            } else {
                                "pending"
                            }
                            .into(),
                        ),
                        Arg::I(at),
                        Arg::OptT(push_ref.clone()),
                    ],
                );
            }
            Produced::Risk {
                model,
                score,
                band,
                contributions,
            } => self.push(
                "risk_predictions",
                vec![
                    key(),
                    Arg::I(e),
                    patient(),
                    Arg::T(model.clone()),
                    Arg::F(*score),
                    Arg::T(band.clone()),
                    Arg::T(serde_json::to_string(contributions).unwrap_or_default()),
                    Arg::I(at),
                ],
            ),
            Produced::AlarmArmed { alarm } => {
                let scope = match alarm.scope {
                    AlarmScope::State => "state",
                    AlarmScope::Enrolment => "enrolment",
                };
                let active = stale.is_none();
                // A no-reading rule counts its silence from its arming.
                let due = alarm
                    .no_reading
                    .as_ref()
                    .filter(|_| active)
                    .map(|n| at + n.after.nominal_seconds());
                // The rule's spec is the record part its step's row names too.
                let spec = put_part(
                    serde_json::to_value(alarm).unwrap_or_default().to_string(),
                    &mut self.parts,
                );
                self.push(
                    "alarm_rules",
                    vec![
                        key(),
                        Arg::I(e),
                        Arg::I(seq),
                        Arg::T(alarm.id.clone()),
                        Arg::T(spec),
                        Arg::T(scope.into()),
                        Arg::I(i64::from(active)),
                        Arg::I(at),
                        Arg::OptI(due),
                    ],
                );
            }
            Produced::Referral {
                direction,
                to,
                own_community,
                reason,
                accept_by,
                moves,
            } => {
                let home = d.home_institution.clone().filter(|_| *own_community);
                if *own_community && home.is_none() {
                    // Routed as to any community clinic of the alliance, and said so.
                    self.record(
                        Some(format!("{}:no_home", a.key)),
                        &d.patient_id,
                        e,
                        at,
                        "error",
                        json!({
                            "error": format!(
                                "patient {} has no home community institution; the referral is open to every {} of the alliance",
                                d.patient_id,
                                to.as_str()
                            ),
                            "action": a.key,
                        })
                        .to_string(),
                    );
                }
                self.push(
                    "referrals",
                    vec![
                        key(),
                        Arg::I(e),
                        patient(),
                        Arg::T(
                            match direction {
                                Direction::Up => "up",
                                Direction::Down => "down",
                            }
                            .into(),
                        ),
                        Arg::OptT(home.clone()),
                        Arg::T(to.as_str().into()),
                        inst(),
                        Arg::OptT(home),
                        Arg::OptT(
                            reason
                                .as_ref()
                                .map(|t| serde_json::to_string(t).unwrap_or_default()),
                        ),
                        Arg::T("requested".into()),
                        Arg::I(at),
                        Arg::I(accept_by.as_second()),
                        Arg::OptT(
                            (!moves.is_empty())
                                .then(|| serde_json::to_string(moves).unwrap_or_default()),
                        ),
                    ],
                );
            }
            Produced::GoalSet { goal } => {
                // The goal's spec is the record part its step's row names too.
                let spec = put_part(
                    serde_json::to_value(goal).unwrap_or_default().to_string(),
                    &mut self.parts,
                );
                self.push(
                    "goals",
                    vec![
                        key(),
                        Arg::I(e),
                        Arg::T(goal.id.clone()),
                        Arg::T(spec),
                        Arg::I(at),
                        Arg::I(at),
                    ],
                );
            }
            Produced::Note { .. } => self.notes.push(a.key.clone()),
            // What a cancel ends is the policy's (`outcome::apply`); it is recorded here.
            Produced::Cancel { .. } => {}
        }
        match &a.action {
            // A note lives only in the record, under its own key; its text is a record part.
            Produced::Note { .. } => {
                let detail = part_out(
                    serde_json::to_value(&a.action).unwrap_or_default(),
                    &mut self.parts,
                );
                self.record(
                    Some(a.key.clone()),
                    &d.patient_id,
                    e,
                    at,
                    a.action.kind(),
                    detail.to_string(),
                )
            }
            // The rest is recorded in its step's one row, compactly (`stored_made`).
            action => {
                let detail = stored_made(action, &mut self.parts);
                self.made
                    .push(json!({ "key": a.key, "at": at, "detail": detail }));
            }
        }
    }

    /// Buffers the one record row of a step of enrolment `d` at `at`: what it made (each action
    /// as it was made, with its key and instant) and the trace behind it. `key` names the step
    /// (unique per committed step); nothing is written for a step that made nothing and took no
    /// transition. The timeline reads it back as one entry per action and one for the trace
    /// ([`expand_step`]).
    pub fn step(&mut self, d: &DueEnrolment, key: String, at: i64, moved: bool, trace: &[String]) {
        let mut made = std::mem::take(&mut self.made);
        if made.is_empty() && (!moved || trace.is_empty()) {
            return;
        }
        // Most actions are made at their step's instant: the row's own `at` says it for them.
        for m in &mut made {
            if let Some(fields) = m.as_object_mut().filter(|f| f["at"] == at) {
                fields.remove("at");
            }
        }
        let mut detail = serde_json::Map::new();
        if !made.is_empty() {
            detail.insert("made".into(), serde_json::Value::Array(made));
        }
        if !trace.is_empty() {
            detail.insert("trace".into(), json!(trace));
        }
        self.record(
            Some(key),
            &d.patient_id,
            d.enrolment.id,
            at,
            STEP_KIND,
            pack_step(serde_json::Value::Object(detail).to_string()),
        );
    }

    /// Writes every buffered row; returns how many of each kind were new.
    pub async fn flush(&mut self, tx: &mut Tx) -> Result<Written> {
        self.flush_by(tx, Transfer::Statements).await
    }

    /// [`RowBuffer::flush`], sending the rows as `transfer` says.
    pub async fn flush_by(&mut self, tx: &mut Tx, transfer: Transfer) -> Result<Written> {
        let mut w = Written::default();
        for (hash, body) in std::mem::take(&mut self.parts) {
            self.push("record_parts", vec![Arg::T(hash), Arg::T(body)]);
        }
        // A note lives only in the record, so it counts when its record row is new: a replayed
        // step then reports no note, just as it reports no task.
        let notes: std::collections::HashSet<String> = self.notes.drain(..).collect();
        for table in TABLES {
            let Some(rows) = self.rows.remove(table.name) else {
                continue;
            };
            let returning = table.name == "record" && !notes.is_empty();
            let (inserted, keys) = insert_rows(tx, table, &rows, returning, transfer).await?;
            if let Some(kind) = table.kind {
                *w.by_kind.entry(kind.to_string()).or_default() += inserted;
            }
            let new_notes = keys.iter().filter(|k| notes.contains(*k)).count() as u64;
            if new_notes > 0 {
                *w.by_kind.entry(NOTE_KIND.to_string()).or_default() += new_notes;
            }
        }
        for c in std::mem::take(&mut self.covers) {
            cover_critical(tx, &c).await?;
        }
        Ok(w)
    }
}

/// Cancels the patient's open tasks raised by `c.scale`'s critical rules (task ref
/// `critical_<scale>_<item>`, see `store::scales`) now that the pathway's own urgent task stands
/// for them, and records each. A claimed one is left alone: someone is already acting on it.
async fn cover_critical(tx: &mut Tx, c: &Cover) -> Result<()> {
    // `_` is a LIKE wildcard, and scale ids contain it.
    let pattern = format!("critical_{}_%", c.scale).replace('_', "\\_");
    let reason = format!("covered by the pathway's task `{}`", c.task_ref);
    let covered = tx
        .fetch(
            "UPDATE tasks SET status = 'cancelled', cancel_reason = $1 \
             WHERE enrolment_id = $2 AND status = 'open' AND task_ref LIKE $3 ESCAPE '\\' AND dedupe_key LIKE 'scale:%' \
             RETURNING id, task_ref",
            vec![Arg::T(reason), Arg::I(c.enrolment), Arg::T(pattern)],
        )
        .await?;
    for r in covered {
        let (id, critical) = (r.i64(0), r.text(1));
        tx.exec(
            "INSERT INTO record (dedupe_key, patient_id, enrolment_id, at, kind, detail) VALUES ($1, $2, $3, $4, 'critical_covered', $5) ON CONFLICT (dedupe_key) DO NOTHING",
            vec![
                Arg::T(format!("{}:covers:{id}", c.key)),
                Arg::T(c.patient.clone()),
                Arg::I(c.enrolment),
                Arg::I(c.at),
                Arg::T(json!({"task": id, "critical": critical, "scale": c.scale, "by": c.task_ref}).to_string()),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Parameters per generated multi-row statement.
pub(crate) const MAX_PARAMS: usize = 3_000;

/// Rows per PostgreSQL column-array insert.
const PG_ROWS: usize = 5_000;

/// `template` with its `n`-th `?` (from 1) replaced by `placeholder(n)`.
fn fill(template: &str, placeholder: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut n = 0;
    for c in template.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&placeholder(n));
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes record parts (hash → text, as [`put_part`] keeps them) outside a [`RowBuffer`]; a part
/// already stored is left as it is.
pub(crate) async fn insert_parts(tx: &mut Tx, parts: BTreeMap<String, String>) -> Result<()> {
    let rows: Vec<Vec<Arg>> = parts
        .into_iter()
        .map(|(hash, body)| vec![Arg::T(hash), Arg::T(body)])
        .collect();
    let table = TABLES
        .iter()
        .find(|t| t.name == "record_parts")
        .expect("record_parts is a buffered table");
    insert_rows(tx, table, &rows, false, Transfer::Statements).await?;
    Ok(())
}

/// Inserts `rows` into `table`; returns how many were new and, with `returning`, their dedupe
/// keys (every table's first column). SQLite steps one prepared single-row statement per row on
/// the transaction's own connection; PostgreSQL takes each column as one array parameter
/// ([`insert_unnest`]), or with [`Transfer::Copy`] reads the rows from a COPY stream through a
/// staging table (`copy::insert_staged`, which takes a short table as one statement as well).
async fn insert_rows(
    tx: &mut Tx,
    table: &Table,
    rows: &[Vec<Arg>],
    returning: bool,
    transfer: Transfer,
) -> Result<(u64, Vec<String>)> {
    let (mut total, mut keys) = (0, Vec::new());
    if !tx.is_postgres() {
        let values = fill(table.values, |n| format!("${n}"));
        let sql = format!(
            "INSERT INTO {} ({}) VALUES {values} ON CONFLICT (dedupe_key) DO NOTHING",
            table.name, table.columns
        );
        for (row, changed) in rows.iter().zip(tx.exec_each(&sql, rows).await?) {
            total += changed;
            if returning
                && changed > 0
                && let Some(Arg::T(k) | Arg::OptT(Some(k))) = row.first()
            {
                keys.push(k.clone());
            }
        }
        return Ok((total, keys));
    }
    let row = table.values.trim();
    let select = fill(&row[1..row.len() - 1], |n| format!("u.c{n}"));
    let returning = returning.then_some("dedupe_key");
    let (inserted, new) = if transfer == Transfer::Copy {
        crate::copy::insert_staged(tx, table.name, table.columns, &select, rows, returning).await?
    } else {
        insert_unnest(
            tx,
            table.name,
            table.columns,
            &select,
            rows,
            true,
            returning,
        )
        .await?
    };
    Ok((inserted, new.iter().map(|r| r.text(0)).collect()))
}

/// Inserts `rows` into PostgreSQL's `table` as column arrays: `INSERT INTO table (columns)
/// SELECT select FROM UNNEST($1::…[], …) AS u(c1, …)`, `select` being an expression list over a
/// row's values `u.c1 … u.cN`, one statement per [`PG_ROWS`] rows, in the order of `rows`. With
/// `skip_stored`, a row whose dedupe key is already stored is left out
/// (`ON CONFLICT (dedupe_key) DO NOTHING`); else it fails the statement. Returns how many were
/// inserted and, with `returning`, those columns of each inserted row.
pub(crate) async fn insert_unnest(
    tx: &mut Tx,
    table: &str,
    columns: &str,
    select: &str,
    rows: &[Vec<Arg>],
    skip_stored: bool,
    returning: Option<&str>,
) -> std::result::Result<(u64, Vec<super::Row>), super::DbError> {
    let (mut total, mut out) = (0, Vec::new());
    for part in rows.chunks(PG_ROWS) {
        let values = super::db::Column::from_rows(part);
        let arrays: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}", i + 1, c.pg_array_type()))
            .collect();
        let names: Vec<String> = (1..=values.len()).map(|i| format!("c{i}")).collect();
        let mut sql = format!(
            "INSERT INTO {table} ({columns}) SELECT {select} FROM UNNEST({}) AS u({})",
            arrays.join(", "),
            names.join(", ")
        );
        if skip_stored {
            sql.push_str(" ON CONFLICT (dedupe_key) DO NOTHING");
        }
        if let Some(r) = returning {
            sql.push_str(" RETURNING ");
            sql.push_str(r);
        }
        let (inserted, new) = tx.exec_columns(&sql, values, returning.is_some()).await?;
        total += inserted;
        out.extend(new);
    }
    Ok((total, out))
}

#[cfg(test)]
mod tests {
    use super::{
        PACKED_V1, TABLES, fill, fill_parts, pack_step, part_out, part_refs, restore_made,
        stored_made, unpack_detail,
    };
    use crate::step::Produced;
    use serde_json::json;

    #[test]
    fn a_made_action_stored_compactly_comes_back_as_it_was_made() {
        let title = json!({"zh": "出院后48小时内电话随访（用药、症状、体重计使用）", "en": "Call within 48 h of discharge"});
        let actions = [
            json!({"kind": "task", "task_ref": "call_48h", "role": "case_manager", "title": title,
                   "due_at": "2026-03-04T09:00:00Z", "priority": "urgent", "sla": null, "keep": false}),
            json!({"kind": "task", "task_ref": null, "role": "nurse", "title": {"zh": "x", "en": "x"},
                   "due_at": "2026-03-04T09:00:00Z", "priority": "normal", "sla": null, "keep": true}),
            json!({"kind": "follow_up", "follow_up_ref": null, "channels": ["wechat", "sms"],
                   "template": "bp_reminder", "send_at": "2026-03-05T01:00:00Z", "urgent": false}),
            json!({"kind": "note", "text": title}),
        ];
        for made in actions {
            let action: Produced = serde_json::from_value(made).expect("an action");
            let as_made = serde_json::to_value(&action).unwrap();
            let mut parts = std::collections::BTreeMap::new();
            let stored = stored_made(&action, &mut parts);
            assert!(
                stored.as_object().unwrap().values().all(|v| !v.is_null()),
                "{stored}"
            );
            assert!(stored.to_string().len() <= as_made.to_string().len());
            let by_hash = parts
                .iter()
                .map(|(h, b)| (h.clone(), serde_json::from_str(b).unwrap()))
                .collect();
            let mut back = stored;
            fill_parts(&mut back, &by_hash);
            assert_eq!(restore_made(&mut back), Some(action.kind()));
            assert_eq!(back, as_made);
        }
        // What is not an action is left as it is.
        let mut trace = json!(["2026-02-04T06:33:23Z: enrolled at entry point `whole`"]);
        assert_eq!(restore_made(&mut trace), None);
        assert_eq!(
            trace[0],
            "2026-02-04T06:33:23Z: enrolled at entry point `whole`"
        );
    }

    #[test]
    fn a_packed_step_row_unpacks_to_what_was_written() {
        let row = json!({
            "made": [{"detail": {"due_at": "2026-02-06T06:33:23Z", "keep": true, "kind": "task",
                       "priority": "high", "role": "case_manager", "task_ref": "pregnancy_record",
                       "title": {"$part": "0473975a81327d5d5fd0bd9378bd237a"}}, "key": "e1:1:0"},
                     {"at": 1769226537, "detail": {"channels": ["wechat", "sms"], "kind": "follow_up",
                       "send_at": "2026-01-28T20:48:57Z", "template": "breast_preop_instructions",
                       "urgent": false}, "key": "e3:3:1"}],
            "trace": ["2026-02-04T06:33:23Z: enrolled at entry point `whole`",
                      "2026-01-24T03:48:57Z: `admission_assessment` → `pre_op` (after 48h)",
                      "计划`x`第1次未执行"]
        })
        .to_string();
        let packed = pack_step(row.clone());
        assert!(packed.starts_with(PACKED_V1), "{packed}");
        assert!(
            packed.len() * 3 < row.len() * 2,
            "{} of {} bytes",
            packed.len(),
            row.len()
        );
        assert_eq!(unpack_detail(&packed).as_deref(), Some(row.as_str()));
        // Text that does not shrink, and anything written unpacked, reads as it is.
        assert_eq!(pack_step("{}".into()), "{}");
        assert_eq!(
            unpack_detail(r#"{"made":[]}"#).as_deref(),
            Some(r#"{"made":[]}"#)
        );
        // A damaged packed row is refused, not read as something else.
        assert_eq!(unpack_detail("z1:AAAA"), None);
        assert_eq!(unpack_detail("z1:not base64!"), None);
    }

    #[test]
    fn large_fields_become_parts_and_come_back() {
        let title = json!({"zh": "出院后48小时内电话随访（用药、症状、体重计使用）", "en": "Call within 48 h of discharge"});
        let detail = json!({"kind": "task", "role": "case_manager", "title": title, "sla": null,
                            "channels": ["sms"], "due_at": "2026-03-04T09:00:00Z"});
        let mut parts = std::collections::BTreeMap::new();
        let stored = part_out(detail.clone(), &mut parts);
        // The title is a part; small lists and scalars stay in the row.
        assert_eq!(parts.len(), 1);
        let hash = parts.keys().next().unwrap().clone();
        assert_eq!(hash.len(), 32);
        assert_eq!(stored["title"], json!({"$part": hash}));
        assert_eq!(stored["channels"], json!(["sms"]));
        assert_eq!(part_refs(&stored).collect::<Vec<_>>(), [hash.as_str()]);
        assert!(stored.to_string().len() < detail.to_string().len());
        // The same text gives the same part: a second step adds nothing.
        let again = part_out(detail.clone(), &mut parts);
        assert_eq!(again, stored);
        assert_eq!(parts.len(), 1);
        let by_hash = parts
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_str(b).unwrap()))
            .collect();
        let mut back = stored.clone();
        fill_parts(&mut back, &by_hash);
        assert_eq!(back, detail);
        // A part not found is left as its reference, never dropped.
        let mut missing = stored;
        fill_parts(&mut missing, &Default::default());
        assert_eq!(missing["title"]["$part"], json!(hash));
    }

    #[test]
    fn templates_fill_each_placeholder_in_order() {
        assert_eq!(fill("(?, ?, 'x')", |n| format!("${n}")), "($1, $2, 'x')");
        let outbox = TABLES.iter().find(|t| t.name == "outbox").expect("outbox");
        let row = outbox.values.trim();
        assert_eq!(
            fill(&row[1..row.len() - 1], |n| format!("u.c{n}")),
            "u.c1, (SELECT id FROM follow_ups WHERE dedupe_key = u.c2), u.c3, u.c4, u.c5, u.c6, 'pending', u.c7, u.c8"
        );
        for t in TABLES {
            let v = t.values.trim();
            assert!(v.starts_with('(') && v.ends_with(')'), "{}", t.name);
        }
    }
}
