//! The resolved run: a scenario applied to the pathways — cohort, institutions, staff capacity,
//! calendar and behaviour — checked once, before any patient lives.

use std::collections::BTreeSet;
use std::sync::Arc;

use carepath_dsl::{Action, Direction, InstitutionKind, catalog};
use carepath_engine::scales::Scales;
use carepath_engine::step::Program;
use serde_json::Value;

use crate::cohort::{self, CohortSpec, Comorbidity, Dist, ObsModel, ScaleModel, Unit};
use crate::model::{PathwayInfo, analyse, dist, kind_index, scale_index};
use crate::scenario::Scenario;

pub const DAY: i64 = 86_400;

/// Built-in default capacity: tasks per day per 1000 patients of an institution, for every role.
pub const DEFAULT_PER_1000: f64 = 60.0;

// ---- the run's setup ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Institution {
    pub id: String,
    pub kind: InstitutionKind,
    pub share: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct ReferralModel {
    pub(crate) accepted: f64,
    pub(crate) rejected: f64,
    pub(crate) delay: Dist,
    pub(crate) arrived: f64,
    pub(crate) arrive_delay: Dist,
}

/// The resolved run: pathways, cohort, behaviour and calendar. Shared read-only by every thread.
pub struct Setup {
    pub programs: Vec<Arc<Program>>,
    pub infos: Vec<PathwayInfo>,
    pub mix: Vec<f64>,
    pub cohort: CohortSpec,
    pub institutions: Vec<Institution>,
    pub roles: Vec<String>,
    pub n: u64,
    pub days: u32,
    pub seed: u64,
    pub tz: String,
    pub start_date: jiff::civil::Date,
    /// Midnight of each day, and of the day after the last.
    pub day_starts: Vec<i64>,
    pub work_start: i64,
    pub work_end: i64,
    pub(crate) arrivals_days: f64,
    pub(crate) obs: Vec<ObsModel>,
    pub(crate) scales: Vec<ScaleModel>,
    pub(crate) response: [f64; 4],
    pub(crate) referral: [ReferralModel; 2],
    /// Tasks per day for each queue (institution × role).
    pub capacity: Vec<u32>,
    pub total_states: usize,
    pub total_transitions: usize,
    pub warnings: Vec<String>,
    /// Keep the records of what the cohort did (`Tally::cohort`), for loading into a store. Off
    /// by default: a run that does not ask pays nothing.
    pub export: bool,
}

fn parse_hhmm(s: &str) -> Result<i64, String> {
    let t = carepath_dsl::LocalTime::parse(s)?;
    Ok(i64::from(t.hour) * 3_600 + i64::from(t.minute) * 60)
}

impl Setup {
    pub fn new(
        programs: Vec<Arc<Program>>,
        sc: &Scenario,
        n: u64,
        days: u32,
        seed: u64,
    ) -> Result<Setup, String> {
        if programs.is_empty() {
            return Err("no pathway to simulate".into());
        }
        if days == 0 {
            return Err("--days must be at least 1".into());
        }
        let mut warnings = Vec::new();
        let roles = roles_of(&programs);
        check_names(sc, &programs)?;

        let mut infos = Vec::new();
        let (mut state_off, mut t_base) = (0, 0);
        for prog in &programs {
            let info = analyse(prog, sc, &roles, state_off, t_base, &mut warnings)?;
            state_off += info.states.len();
            t_base += info.n_transitions;
            infos.push(info);
        }
        let mix: Vec<f64> = if sc.mix.is_empty() {
            vec![1.0; programs.len()]
        } else {
            programs
                .iter()
                .map(|p| sc.mix.get(&p.pathway.id).copied().unwrap_or(0.0))
                .collect()
        };
        if mix.iter().all(|w| *w <= 0.0) {
            return Err("mix: no pathway of this run has a positive share".into());
        }

        let institutions: Vec<Institution> = if sc.institutions.is_empty() {
            vec![
                Institution {
                    id: "lead".into(),
                    kind: InstitutionKind::LeadHospital,
                    share: 0.6,
                },
                Institution {
                    id: "clinic_a".into(),
                    kind: InstitutionKind::CommunityClinic,
                    share: 0.25,
                },
                Institution {
                    id: "clinic_b".into(),
                    kind: InstitutionKind::TownshipHospital,
                    share: 0.15,
                },
            ]
        } else {
            let mut v = Vec::new();
            for (id, spec) in &sc.institutions {
                let kind = match spec.kind.as_deref() {
                    None => InstitutionKind::LeadHospital,
                    Some(k) => InstitutionKind::ALL
                        .iter()
                        .find(|(s, _)| *s == k)
                        .map(|(_, k)| *k)
                        .ok_or_else(|| {
                            format!(
                                "institutions.{id}.kind: `{k}` is not one of lead_hospital, community_clinic, township_hospital, specialist_hospital"
                            )
                        })?,
                };
                v.push(Institution {
                    id: id.clone(),
                    kind,
                    share: spec.share.max(0.0),
                });
            }
            v
        };
        let share_total: f64 = institutions.iter().map(|i| i.share).sum();
        if share_total <= 0.0 {
            return Err("institutions: every share is zero".into());
        }

        // Capacity per (institution, role).
        let mut capacity = Vec::new();
        for inst in &institutions {
            let patients = n as f64 * inst.share / share_total;
            let spec = sc.institutions.get(&inst.id);
            for role in &roles {
                let v = spec
                    .and_then(|s| s.capacity.get(role).or_else(|| s.capacity.get("default")))
                    .or_else(|| sc.staff.capacity.get(role))
                    .or_else(|| sc.staff.capacity.get("default"));
                let per_day = match v {
                    None => (DEFAULT_PER_1000 * patients / 1000.0).ceil().max(1.0),
                    Some(Value::Number(x)) => x.as_f64().unwrap_or(0.0).max(0.0),
                    Some(Value::Object(m)) if m.len() == 1 && m.contains_key("per_1000") => {
                        let per = m["per_1000"].as_f64().unwrap_or(0.0);
                        (per * patients / 1000.0)
                            .ceil()
                            .max(if per > 0.0 { 1.0 } else { 0.0 })
                    }
                    Some(other) => {
                        return Err(format!(
                            "staff capacity of {role}: write a number of tasks a day or {{ per_1000: n }}, found {other}"
                        ));
                    }
                };
                capacity.push(per_day.round() as u32);
            }
        }

        let tz = sc.tz.clone().unwrap_or_else(|| "Asia/Shanghai".into());
        let zone = jiff::tz::TimeZone::get(&tz).map_err(|e| format!("tz: `{tz}`: {e}"))?;
        let start_date: jiff::civil::Date = match &sc.start {
            Some(s) => s
                .parse()
                .map_err(|e| format!("start: `{s}` is not a date like 2026-01-05: {e}"))?,
            None => jiff::civil::date(2026, 1, 5),
        };
        let mut day_starts = Vec::with_capacity(days as usize + 1);
        for d in 0..=i64::from(days) {
            let date = start_date
                .checked_add(jiff::Span::new().days(d))
                .map_err(|e| format!("the run is too long: {e}"))?;
            let z = date
                .to_zoned(zone.clone())
                .map_err(|e| format!("start: {e}"))?;
            day_starts.push(z.timestamp().as_second());
        }
        let (work_start, work_end) = match &sc.staff.hours {
            None => (8 * 3_600, 18 * 3_600),
            Some(h) => {
                let (a, b) = h.split_once('-').ok_or_else(|| {
                    format!("staff.hours: write e.g. \"08:00-18:00\", found `{h}`")
                })?;
                let (a, b) = (parse_hhmm(a.trim())?, parse_hhmm(b.trim())?);
                if b <= a {
                    return Err(format!("staff.hours: `{h}` ends before it starts"));
                }
                (a, b)
            }
        };

        let comorbidities: Vec<Comorbidity> = match &sc.patients.comorbidities {
            None => cohort::default_comorbidities(),
            Some(m) => m
                .iter()
                .map(|(name, c)| Comorbidity {
                    name: name.clone(),
                    prevalence: c.prevalence,
                    charlson: c.charlson,
                    shift: c.shift.clone(),
                })
                .collect(),
        };
        let adherence = sc.patients.adherence.unwrap_or(crate::scenario::MeanSd {
            mean: 0.75,
            sd: 0.15,
        });
        let cohort = CohortSpec {
            institution_shares: institutions.iter().map(|i| i.share).collect(),
            comorbidities,
            adherence_mean: adherence.mean,
            adherence_sd: adherence.sd,
        };

        let mut obs: Vec<ObsModel> = catalog::OBSERVATIONS
            .iter()
            .map(|(k, _)| cohort::observation_default(k))
            .collect();
        for (k, o) in &sc.observations {
            let Some(i) = kind_index(k) else { continue };
            let m = &mut obs[i];
            m.mean = o.mean.unwrap_or(m.mean);
            m.sd = o.sd.unwrap_or(m.sd);
            m.noise = o.noise.unwrap_or(m.noise);
            m.trend_per_month = o.trend_per_month.unwrap_or(m.trend_per_month);
            m.min = o.min.unwrap_or(m.min);
            m.max = o.max.unwrap_or(m.max);
            m.round = o.round.unwrap_or(m.round);
            m.per_day = o.per_day.unwrap_or(m.per_day);
            if let Some(at) = &o.at {
                m.at = parse_hhmm(at).map_err(|e| format!("observations.{k}.at: {e}"))?;
            }
            if o.probability.is_some() {
                m.probability = o.probability;
            }
        }
        let mut scales: Vec<ScaleModel> = catalog::SCALES
            .iter()
            .map(|s| {
                cohort::scale_default(s).ok_or_else(|| format!("scale `{s}` has no definition"))
            })
            .collect::<Result<_, _>>()?;
        let default_scale = sc.scales.get("default");
        for (i, m) in scales.iter_mut().enumerate() {
            for spec in [default_scale, sc.scales.get(catalog::SCALES[i])]
                .into_iter()
                .flatten()
            {
                let what = format!("scales.{}", catalog::SCALES[i]);
                m.answer = spec.answer.unwrap_or(m.answer);
                if let Some(d) = &spec.delay {
                    m.delay = dist(d, Unit::Seconds, &what)?;
                }
                if let Some(s) = spec.score {
                    m.mean = s.mean.unwrap_or(m.mean);
                    m.sd = s.sd.unwrap_or(m.sd);
                    m.min = s.min.unwrap_or(m.min);
                    m.max = s.max.unwrap_or(m.max);
                }
                for (item, p) in &spec.items {
                    let item: usize = item
                        .parse()
                        .map_err(|_| format!("{what}.items: `{item}` is not an item number"))?;
                    m.forced_items.retain(|(i, _)| *i != item);
                    m.forced_items.push((item, *p));
                }
            }
        }
        let mut response = [0.85, 0.65, 0.9, 0.3];
        for (ch, p) in &sc.follow_up_response {
            let i = ["wechat", "sms", "phone", "email"]
                .iter()
                .position(|c| c == ch)
                .ok_or_else(|| {
                    format!(
                        "follow_up_response: `{ch}` is not a channel (wechat, sms, phone, email)"
                    )
                })?;
            response[i] = *p;
        }
        let referral_model = |spec: Option<&crate::scenario::ReferralSpec>,
                              up: bool|
         -> Result<ReferralModel, String> {
            let h = |a: f64, b: f64| Dist::Uniform(a * 3_600.0, b * 3_600.0);
            let mut m = if up {
                ReferralModel {
                    accepted: 0.9,
                    rejected: 0.05,
                    delay: h(1.0, 20.0),
                    arrived: 0.85,
                    arrive_delay: h(24.0, 144.0),
                }
            } else {
                ReferralModel {
                    accepted: 0.85,
                    rejected: 0.1,
                    delay: h(2.0, 60.0),
                    arrived: 1.0,
                    arrive_delay: h(24.0, 72.0),
                }
            };
            if let Some(s) = spec {
                let what = if up { "referrals.up" } else { "referrals.down" };
                m.accepted = s.accepted.unwrap_or(m.accepted);
                m.rejected = s.rejected.unwrap_or(m.rejected);
                m.arrived = s.arrived.unwrap_or(m.arrived);
                if let Some(d) = &s.delay {
                    m.delay = dist(d, Unit::Seconds, what)?;
                }
                if let Some(d) = &s.arrive_delay {
                    m.arrive_delay = dist(d, Unit::Seconds, what)?;
                }
                if m.accepted + m.rejected > 1.0 + 1e-9 {
                    return Err(format!("{what}: accepted + rejected is more than 1"));
                }
            }
            Ok(m)
        };
        let referral = [
            referral_model(sc.referrals.up.as_ref(), true)?,
            referral_model(sc.referrals.down.as_ref(), false)?,
        ];

        Ok(Setup {
            total_states: state_off,
            total_transitions: t_base,
            programs,
            infos,
            mix,
            cohort,
            institutions,
            roles,
            n,
            days,
            seed,
            tz,
            start_date,
            day_starts,
            work_start,
            work_end,
            arrivals_days: sc
                .arrivals_days
                .unwrap_or(f64::from(days) / 2.0)
                .clamp(0.0, f64::from(days)),
            obs,
            scales,
            response,
            referral,
            capacity,
            warnings,
            export: false,
        })
    }

    pub fn horizon(&self) -> i64 {
        self.day_starts[self.days as usize]
    }

    /// The day an instant falls on (clamped to the run).
    pub fn day_of(&self, t: i64) -> usize {
        match self.day_starts.binary_search(&t) {
            Ok(i) => i.min(self.days as usize - 1),
            Err(i) => i.saturating_sub(1).min(self.days as usize - 1),
        }
    }

    pub(crate) fn queue(&self, institution: usize, role: u16) -> usize {
        institution * self.roles.len() + usize::from(role)
    }

    pub(crate) fn flow(
        &self,
        prog: usize,
        dir: Direction,
        institution: usize,
        to: InstitutionKind,
    ) -> usize {
        let d = usize::from(dir == Direction::Down);
        let k = InstitutionKind::ALL
            .iter()
            .position(|(_, x)| *x == to)
            .unwrap_or(0);
        ((prog * 2 + d) * self.institutions.len() + institution) * 4 + k
    }

    pub fn n_flows(&self) -> usize {
        self.programs.len() * 2 * self.institutions.len() * 4
    }

    /// (pathway, direction, institution, to) of a flow index.
    pub fn flow_parts(&self, f: usize) -> (usize, Direction, usize, InstitutionKind) {
        let k = f % 4;
        let rest = f / 4;
        let inst = rest % self.institutions.len();
        let rest = rest / self.institutions.len();
        let dir = if rest % 2 == 1 {
            Direction::Down
        } else {
            Direction::Up
        };
        (rest / 2, dir, inst, InstitutionKind::ALL[k].1)
    }
}

/// The roles with work in the run: the pathways' own, and those the critical items of the scales
/// they push call on.
fn roles_of(programs: &[Arc<Program>]) -> Vec<String> {
    let mut roles: BTreeSet<String> = BTreeSet::new();
    for p in programs {
        roles.extend(p.pathway.roles.iter().cloned());
        for (_, a) in p.pathway.actions() {
            if let Action::Scale(push) = a
                && let Some(def) = Scales::builtin().get(&push.scale)
            {
                roles.extend(def.critical.iter().map(|c| c.role.clone()));
            }
        }
    }
    roles.into_iter().collect()
}

/// Names in the scenario must exist, so a typo is an error rather than a silent default.
fn check_names(sc: &Scenario, programs: &[Arc<Program>]) -> Result<(), String> {
    let known_role = |r: &str| r == "default" || catalog::ROLES.contains(&r);
    for r in sc.staff.capacity.keys() {
        if !known_role(r) {
            return Err(format!("staff.capacity: `{r}` is not a role"));
        }
    }
    for (i, spec) in &sc.institutions {
        for r in spec.capacity.keys() {
            if !known_role(r) {
                return Err(format!("institutions.{i}.capacity: `{r}` is not a role"));
            }
        }
    }
    for k in sc.observations.keys() {
        if kind_index(k).is_none() {
            return Err(format!(
                "observations: `{k}` is not an observation kind ({})",
                catalog::observation_names().join(", ")
            ));
        }
    }
    for s in sc.scales.keys() {
        if s != "default" && scale_index(s).is_none() {
            return Err(format!(
                "scales: `{s}` is not a scale ({})",
                catalog::SCALES.join(", ")
            ));
        }
    }
    for id in sc.mix.keys() {
        if !programs.iter().any(|p| &p.pathway.id == id) {
            return Err(format!("mix: `{id}` is not a pathway of this run"));
        }
    }
    for e in sc.patients.entry.keys() {
        if !programs
            .iter()
            .any(|p| p.pathway.entry_points.iter().any(|x| &x.id == e))
        {
            return Err(format!(
                "patients.entry: no pathway of this run has an entry point `{e}`"
            ));
        }
    }
    let mut task_keys: Vec<(&str, &String)> = sc
        .tasks
        .outcomes
        .keys()
        .map(|k| ("tasks.outcomes", k))
        .collect();
    task_keys.extend(
        sc.tasks
            .ready_after
            .keys()
            .map(|k| ("tasks.ready_after", k)),
    );
    if let Some(Value::Object(m)) = &sc.tasks.missed {
        task_keys.extend(m.keys().map(|k| ("tasks.missed", k)));
    }
    for (what, t) in task_keys {
        let known = t == "default"
            || t == "default_call"
            || programs.iter().any(|p| {
                p.pathway.actions().any(|(_, a)| match a {
                    Action::Task(x) => x.id.as_deref() == Some(t),
                    Action::Alarm(x) => x.task.id.as_deref() == Some(t),
                    _ => false,
                })
            });
        if !known {
            return Err(format!("{what}: no pathway of this run has a task `{t}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_round_trip() {
        let sc = Scenario::default();
        let prog = crate::tests::program(crate::tests::TINY);
        let s = Setup::new(vec![prog], &sc, 10, 3, 1).unwrap();
        for f in 0..s.n_flows() {
            let (p, d, i, k) = s.flow_parts(f);
            assert_eq!(s.flow(p, d, i, k), f);
        }
    }
}
