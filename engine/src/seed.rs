//! Synthetic patients for demos, tests and benchmarks: deterministic for a given seed.
//!
//! Each patient is enrolled in one of the loaded pathways at an entry point, some weeks or months
//! before `as_of`, and given a plausible history of events walked along the pathway's own event
//! transitions, so the next scheduler pass finds them at varied stages.

use carepath_dsl::Trigger;
use jiff::Timestamp;

use crate::program::Programs;
use crate::store::{self, NewPatient, Pool, Result, Written};

/// A small, fast, seedable generator (SplitMix64); good enough for synthetic cohorts.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub const LEAD: &str = "lead";
pub const CLINICS: [&str; 2] = ["clinic_a", "clinic_b"];

/// The demo alliance: a lead hospital and two primary-care clinics.
pub async fn alliance(pool: &Pool) -> Result<()> {
    let mut tx = pool.begin().await?;
    store::insert_institution(
        &mut tx,
        LEAD,
        "市第一人民医院 City First People's Hospital",
        "lead_hospital",
        None,
    )
    .await?;
    store::insert_institution(
        &mut tx,
        CLINICS[0],
        "东城社区卫生服务中心 Dongcheng Community Health Centre",
        "community_clinic",
        Some(LEAD),
    )
    .await?;
    store::insert_institution(
        &mut tx,
        CLINICS[1],
        "西山镇卫生院 Xishan Township Hospital",
        "township_hospital",
        Some(LEAD),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The demo alliance's institutions with their kinds and the share of the patients each
/// treats (as [`seed`] spreads them).
pub fn shares() -> Vec<(String, String, f64)> {
    vec![
        (LEAD.into(), "lead_hospital".into(), 0.7),
        (CLINICS[0].into(), "community_clinic".into(), 0.2),
        (CLINICS[1].into(), "township_hospital".into(), 0.1),
    ]
}

/// The demo alliance's staff capacity: (institution, role, tasks the board completes a day per
/// thousand patients of the institution); `default` is every role not named. Each board is sized
/// a little below the work that reaches it by the end of the demo's history (`carepath demo`'s
/// 300 patients over 120 days), so that every busy board ends with open work, some of it overdue,
/// and none is flooded: the lead hospital's patients make less case-manager work each than a
/// clinic's, which also takes the patients referred down to it.
pub fn capacity() -> Vec<(String, String, f64)> {
    [
        (LEAD, "default", 4.0),
        (LEAD, "case_manager", 14.0),
        (LEAD, "clinic_case_manager", 14.0),
        (LEAD, "ward_nurse", 9.0),
        (LEAD, "referral_coordinator", 9.0),
        (LEAD, "doctor", 9.0),
        (CLINICS[0], "default", 15.0),
        (CLINICS[0], "case_manager", 30.0),
        (CLINICS[0], "clinic_case_manager", 30.0),
        (CLINICS[1], "default", 30.0),
    ]
    .into_iter()
    .map(|(i, r, c)| (i.to_string(), r.to_string(), c))
    .collect()
}

/// A synthetic patient's home community institution: a clinic's patients belong to it; of the
/// lead hospital's, two in three belong to one of the clinics and the rest to none (so that
/// referrals to `own_community` meet both cases).
pub fn home_of(institution: &str, index: u64) -> Option<String> {
    if institution != LEAD {
        return Some(institution.to_string());
    }
    (!index.is_multiple_of(3)).then(|| CLINICS[(index % 2) as usize].to_string())
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SeedSummary {
    pub patients: u64,
    pub enrolments: u64,
    pub events: u64,
    pub actions: u64,
    /// How the patients and their enrolments were sent to the database (as the first batch, the
    /// largest, was).
    pub transfer: Option<store::Transfer>,
}

/// Creates `n` patients enrolled across the latest version of every loaded pathway.
pub async fn seed(
    pool: &Pool,
    programs: &Programs,
    n: u64,
    seed: u64,
    as_of: Timestamp,
) -> Result<SeedSummary> {
    alliance(pool).await?;
    let progs = programs.latest();
    if progs.is_empty() {
        return Err(store::StoreError::Invalid(
            "no pathways are loaded; publish pathways first".into(),
        ));
    }
    let existing = store::stats::patient_count(pool).await? as u64;
    let mut summary = SeedSummary::default();
    let mut written = Written::default();
    let chunk = 1_000u64;
    let mut i = 0u64;
    while i < n {
        let mut patients = Vec::new();
        let mut enrolments = Vec::new();
        let mut histories: Vec<Vec<(String, i64)>> = Vec::new();
        for k in i..(i + chunk).min(n) {
            let index = existing + k;
            let mut rng = SplitMix::new(seed.wrapping_mul(1_000_003).wrapping_add(index));
            let prog = &progs[rng.below(progs.len() as u64) as usize];
            let p = &prog.pathway;
            let female_only = p.id.contains("pregnan") || p.id.contains("breast");
            let sex = if female_only || rng.unit() < 0.5 {
                "female"
            } else {
                "male"
            };
            let age = if p.id.contains("pregnan") {
                22 + rng.below(19)
            } else {
                40 + rng.below(46)
            };
            let birth_year = as_of.to_zoned(jiff::tz::TimeZone::UTC).year() as u64 - age;
            let birth = format!(
                "{birth_year:04}-{:02}-{:02}",
                1 + rng.below(12),
                1 + rng.below(28)
            );
            let institution = match rng.below(10) {
                0..=6 => LEAD,
                7 | 8 => CLINICS[0],
                _ => CLINICS[1],
            };
            let patient_id = format!(
                "P{:016x}",
                SplitMix::new(seed ^ 0xA5A5).next_u64() ^ index.wrapping_mul(0x9E37_79B9)
            );
            patients.push(NewPatient {
                id: patient_id.clone(),
                institution_id: institution.to_string(),
                birth_date: Some(birth),
                sex: sex.to_string(),
                tz: "Asia/Shanghai".to_string(),
                contact_enc: None,
                preferred_channel: Some(
                    ["wechat", "sms", "phone"][rng.below(3) as usize].to_string(),
                ),
                home_institution: home_of(institution, index),
                lang: None,
            });
            summary.patients += 1;
            let entry = &p.entry_points[rng.below(p.entry_points.len() as u64) as usize];
            let enrolled_at = Timestamp::from_second(
                as_of.as_second() - 86_400 * (1 + rng.below(180) as i64) - rng.below(86_400) as i64,
            )
            .unwrap_or(as_of);
            enrolments.push(store::NewEnrolment {
                patient_id: patient_id.clone(),
                pathway_id: p.id.clone(),
                version: Some(p.version),
                entry: entry.id.clone(),
                at: enrolled_at,
                catch_up_to: None,
            });
            summary.enrolments += 1;
            let mut history = Vec::new();
            // A plausible history: follow the pathway's event transitions from the entry state.
            let mut state = entry.state.clone();
            let mut t = enrolled_at.as_second();
            for _ in 0..rng.below(5) {
                let Some(s) = p.state(&state) else { break };
                let events: Vec<(&str, &str)> = s
                    .transitions
                    .iter()
                    .filter_map(|tr| match &tr.trigger {
                        Trigger::Event(e) if !e.starts_with("task_done:") => {
                            Some((e.as_str(), tr.to.as_str()))
                        }
                        _ => None,
                    })
                    .collect();
                if events.is_empty() {
                    break;
                }
                let (event, to) = events[rng.below(events.len() as u64) as usize];
                t += 3_600 * (6 + rng.below(24 * 10) as i64);
                if t >= as_of.as_second() {
                    break;
                }
                history.push((event.to_string(), t));
                summary.events += 1;
                state = to.to_string();
            }
            histories.push(history);
        }
        let mut tx = pool.begin().await?;
        summary
            .transfer
            .get_or_insert(store::Transfer::for_batch(&tx, patients.len()));
        store::insert_patients(&mut tx, &patients, as_of).await?;
        let (ids, w) = store::enrol_many(&mut tx, programs, &enrolments).await?;
        written.add(&w);
        let events: Vec<store::NewEvent> = ids
            .iter()
            .zip(histories)
            .flat_map(|(id, history)| {
                history.into_iter().map(move |(name, t)| store::NewEvent {
                    enrolment: *id,
                    name,
                    at: store::ts(t),
                    payload: None,
                    source_key: None,
                    created_at: store::ts(t),
                })
            })
            .collect();
        store::add_events(&mut tx, &events).await?;
        tx.commit().await?;
        i += chunk;
    }
    // Like any bulk load: PostgreSQL plans from table statistics, and until they are gathered
    // (by autovacuum, if it runs) the pass's per-batch reads of tasks and goals for a list of
    // enrolments are planned as scans of the whole table.
    store::stats::analyze(pool).await?;
    summary.actions = written.actions();
    Ok(summary)
}

/// Staff of every role at each institution of the demo alliance, with fresh tokens (only their
/// hashes are stored). Returns (staff id, institution, role, token).
pub async fn demo_staff(pool: &Pool) -> Result<Vec<(String, String, String, String)>> {
    let mut bytes = [0u8; 16 * 64];
    // 16 bytes of randomness per token; 64 tokens are more than the roles below.
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| {
            store::StoreError::Invalid(format!("cannot read randomness for tokens: {e}"))
        })?;
    let mut chunks = bytes.chunks(16);
    let mut out = Vec::new();
    let mut tx = pool.begin().await?;
    // Every role the real pathways give tasks to has staff at every institution, so that no
    // board is left without anyone allowed to work it.
    let lead_roles = [
        "case_manager",
        "hospital_case_manager",
        "clinic_case_manager",
        "ward_nurse",
        "nurse",
        "doctor",
        "midwife",
        "head_nurse",
        "rehab_therapist",
        "dietitian",
        "pharmacist",
        "referral_coordinator",
        "admin",
        "informaticist",
        "auditor",
        "device_gateway",
    ];
    let clinic_roles = [
        "clinic_case_manager",
        "case_manager",
        "hospital_case_manager",
        "doctor",
        "nurse",
        "ward_nurse",
        "midwife",
        "head_nurse",
        "rehab_therapist",
        "dietitian",
        "pharmacist",
        "referral_coordinator",
        "device_gateway",
    ];
    for (inst, roles) in [
        (LEAD, &lead_roles[..]),
        (CLINICS[0], &clinic_roles[..]),
        (CLINICS[1], &clinic_roles[..]),
    ] {
        for role in roles {
            let token = format!("cp_{}", hex::encode(chunks.next().unwrap_or(&[0u8; 16])));
            let id = format!("{inst}.{role}");
            store::remove_staff(&mut tx, &id).await?;
            store::insert_staff(
                &mut tx,
                &id,
                inst,
                &format!("{role} ({inst})"),
                &[role],
                Some(store::queries::token_hash(&token)),
            )
            .await?;
            out.push((id, inst.to_string(), role.to_string(), token));
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// Every task the latest version of each pathway creates, with the state that creates it and the
/// pathway's first entry point: the templates of a bulk queue.
pub fn task_templates(programs: &Programs) -> Vec<store::bulk::TaskTemplate> {
    let mut out = Vec::new();
    for prog in programs.latest() {
        let p = &prog.pathway;
        let Some(entry) = p.entry_points.first() else {
            continue;
        };
        for state in &p.states {
            for action in &state.on_enter {
                if let carepath_dsl::Action::Task(t) = action {
                    out.push(store::bulk::TaskTemplate {
                        pathway_id: p.id.clone(),
                        version: i64::from(p.version),
                        entry_point: entry.id.clone(),
                        state: state.id.clone(),
                        task_ref: t.id.clone(),
                        role: t.role.clone(),
                        title_zh: t.title.zh.clone(),
                        title_en: t.title.en.clone(),
                        priority: t.priority as i64,
                    });
                }
            }
        }
    }
    out
}

/// The demo alliance with `open` open tasks (and a quarter as many claimed or done) across the
/// loaded pathways, written in bulk: the dataset of `carepath bench-api`.
pub async fn task_queue(
    pool: &Pool,
    programs: &Programs,
    open: u64,
    as_of: Timestamp,
    progress: impl FnMut(u64),
) -> Result<store::bulk::BulkSummary> {
    alliance(pool).await?;
    store::bulk::synthetic_queue(pool, &task_templates(programs), open, as_of, progress).await
}
