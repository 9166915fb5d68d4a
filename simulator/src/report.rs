//! What a run shows: indicators, workload, occupancy, coverage and referral flows, as JSON, CSV,
//! SVG and a plain-text summary. Everything here is computed from whole-number counts, so the
//! output is byte-identical for the same seed however many threads ran.

use std::fmt::Write as _;
use std::path::Path;

use carepath_engine::indicators::{self as defs, Counts, Quantity, Values};
use serde::Serialize;

use crate::expect::{Cmp, Expectation};
use crate::run::Raw;
use crate::setup::Setup;
use crate::tally::PathTally;

/// The counts a simulation keeps: every quantity but those of referrals received and staff on
/// the books, which the simulator does not model.
pub fn simulated(q: Quantity) -> bool {
    !matches!(
        q,
        Quantity::UpwardReceived | Quantity::UpwardAcceptedInTime | Quantity::CaseManagers
    )
}

/// A built-in indicator the simulator computes, by name.
pub fn is_simulated_indicator(name: &str) -> bool {
    defs::definition(name).is_some_and(|d| simulated(d.numerator) && simulated(d.denominator))
}

fn r4(x: Option<f64>) -> Option<f64> {
    x.map(|x| (x * 10_000.0).round() / 10_000.0)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Indicators {
    /// The built-in indicators the simulator counts, by name, with the formulas of
    /// `carepath_engine::indicators` (the ones `GET /kpis` and the monthly report use).
    pub values: Values,
    /// What they divide; the counts of referrals received and of staff stay zero.
    pub counts: Counts,
    /// Follow-up messages sent, those the patient responded to, and those cancelled before
    /// sending. A message is not a follow-up done, so none of these is in `follow_up_rate`.
    pub follow_ups_sent: u64,
    pub follow_ups_responded: u64,
    pub follow_ups_cancelled: u64,
    pub tasks_created: u64,
    pub tasks_done: u64,
    pub tasks_cancelled: u64,
    pub referrals_up: u64,
    pub referrals_down: u64,
    pub alarms: u64,
    pub device_readings: u64,
    pub steps: u64,
}

impl Indicators {
    /// From each pathway's tallies, whether it tracks hospital stays, and its enrolments active
    /// at the end.
    fn from_tallies<'a>(ts: impl Iterator<Item = (&'a PathTally, bool, u64)>) -> Indicators {
        let mut i = Indicators::default();
        let c = &mut i.counts;
        let n = |x: u64| x as i64;
        for (t, stays, active_at_end) in ts {
            c.follow_up_due += n(t.follow_up_due);
            c.followed_up += n(t.followed_up);
            c.tasks_due += n(t.tasks_due);
            c.tasks_on_time += n(t.tasks_on_time);
            c.tasks_overdue += n(t.tasks_overdue);
            c.scales_pushed += n(t.scales_pushed);
            c.scales_answered += n(t.scales_answered);
            c.enrolments_active += n(t.enrolled);
            c.enrolments_active_at_end += n(active_at_end);
            c.referrals_sent += n(t.referrals_up + t.referrals_down);
            c.referrals_up += n(t.referrals_up);
            if stays {
                c.stays += n(t.stays);
                c.stay_seconds += t.stay_seconds;
            }
            i.follow_ups_sent += t.follow_ups_sent;
            i.follow_ups_responded += t.follow_ups_responded;
            i.follow_ups_cancelled += t.follow_ups_cancelled;
            i.tasks_created += t.tasks_created;
            i.tasks_done += t.tasks_done;
            i.tasks_cancelled += t.tasks_cancelled;
            i.referrals_up += t.referrals_up;
            i.referrals_down += t.referrals_down;
            i.alarms += t.alarms;
            i.device_readings += t.readings;
            i.steps += t.steps;
        }
        i.values = Values::of_counted(&i.counts, simulated);
        i
    }

    /// A built-in indicator's value by name.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.values.get(name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeclaredIndicator {
    pub id: String,
    pub title: String,
    pub numerator: String,
    pub denominator: String,
    pub value: Option<f64>,
    pub met: u64,
    pub of: u64,
    pub target: Option<f64>,
    pub on_target: Option<bool>,
    /// Why the simulator could not compute it, if it could not.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateCoverage {
    pub state: String,
    pub visits: u64,
    pub ended_here: u64,
    pub terminal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionCoverage {
    /// `<state>#<n>`: the n-th transition of the state, as written (1-based).
    pub id: String,
    pub from: String,
    pub to: String,
    pub trigger: String,
    pub taken: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub states_visited: usize,
    pub states: usize,
    pub transitions_taken: usize,
    pub transitions: usize,
    pub never_visited: Vec<String>,
    pub never_taken: Vec<String>,
    /// Never-visited states first, then by visits.
    pub state_counts: Vec<StateCoverage>,
    /// Never-taken transitions first, then by count.
    pub transition_counts: Vec<TransitionCoverage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathwayReport {
    pub id: String,
    pub version: u32,
    pub enrolled: u64,
    pub completed: u64,
    pub active_at_end: u64,
    pub died: u64,
    pub errors: u64,
    pub indicators: Indicators,
    pub declared_indicators: Vec<DeclaredIndicator>,
    pub coverage: Coverage,
    /// Active enrolments per state at the end of each day: `counts[day][state]`.
    pub occupancy_states: Vec<String>,
    pub occupancy: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleReport {
    pub role: String,
    pub capacity_per_day: u64,
    pub created: u64,
    pub done: u64,
    pub due: u64,
    pub on_time: u64,
    pub on_time_task_rate: Option<f64>,
    pub cancelled: u64,
    pub escalated: u64,
    pub open_at_end: u64,
    pub overdue_at_end: u64,
    pub peak_backlog: u64,
    pub peak_backlog_day: usize,
    pub peak_overdue: u64,
    pub peak_overdue_day: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub institution: String,
    pub role: String,
    pub capacity_per_day: u32,
    pub peak_backlog: u64,
    pub peak_backlog_day: usize,
    pub peak_overdue: u64,
    pub peak_overdue_day: usize,
}

/// Daily workload per role: `created[day][role]` and so on.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub roles: Vec<String>,
    pub created: Vec<Vec<u32>>,
    pub done: Vec<Vec<u32>>,
    pub backlog: Vec<Vec<u32>>,
    pub overdue: Vec<Vec<u32>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub pathway: String,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub referrals: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub arrived: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub expectation: String,
    pub passed: bool,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Option<String>,
    pub seed: u64,
    pub cohort: u64,
    pub days: u32,
    pub start: String,
    pub tz: String,
    pub working_hours: String,
    pub totals: Indicators,
    pub pathways: Vec<PathwayReport>,
    pub roles: Vec<RoleReport>,
    pub queues: Vec<QueueReport>,
    pub workload: Workload,
    pub referral_flows: Vec<Flow>,
    pub errors: u64,
    pub first_errors: Vec<String>,
    pub warnings: Vec<String>,
    pub expectations: Vec<Checked>,
    #[serde(skip)]
    dates: Vec<String>,
    #[serde(skip)]
    peaks: Vec<(String, String, Vec<u32>, Vec<u32>)>,
}

fn hhmm(s: i64) -> String {
    format!("{:02}:{:02}", s / 3_600, (s % 3_600) / 60)
}

impl Report {
    pub fn build(s: &Setup, raw: &Raw, scenario: Option<String>) -> Report {
        let t = &raw.tally;
        let days = s.days as usize;
        let dates: Vec<String> = (0..days)
            .map(|d| {
                s.start_date
                    .checked_add(jiff::Span::new().days(d as i64))
                    .map(|x| x.to_string())
                    .unwrap_or_default()
            })
            .collect();
        let mut pathways = Vec::new();
        for (pi, info) in s.infos.iter().enumerate() {
            let pt = &t.path[pi];
            let prog = &s.programs[pi];
            // Coverage, never-reached branches first.
            let mut state_counts: Vec<StateCoverage> = info
                .states
                .iter()
                .enumerate()
                .map(|(i, id)| StateCoverage {
                    state: id.clone(),
                    visits: t.visits[info.state_off + i],
                    ended_here: t.ended_in[info.state_off + i],
                    terminal: info.terminal[i],
                })
                .collect();
            let never_visited: Vec<String> = state_counts
                .iter()
                .filter(|c| c.visits == 0)
                .map(|c| c.state.clone())
                .collect();
            state_counts.sort_by_key(|c| (c.visits > 0, c.visits));
            let mut transition_counts = Vec::new();
            for (si, st) in prog.pathway.states.iter().enumerate() {
                for (ti, tr) in st.transitions.iter().enumerate() {
                    let trig = tr.trigger.describe();
                    let trigger = match (&tr.guard, trig.is_empty()) {
                        (Some(g), true) => format!("when {}", g.0),
                        (Some(g), false) => format!("{trig} when {}", g.0),
                        (None, true) => "immediately".into(),
                        (None, false) => trig,
                    };
                    transition_counts.push(TransitionCoverage {
                        id: format!("{}#{}", st.id, ti + 1),
                        from: st.id.clone(),
                        to: tr.to.clone(),
                        trigger,
                        taken: t.taken[info.t_off[si] + ti],
                    });
                }
            }
            let never_taken: Vec<String> = transition_counts
                .iter()
                .filter(|c| c.taken == 0)
                .map(|c| c.id.clone())
                .collect();
            transition_counts.sort_by_key(|c| (c.taken > 0, c.taken));
            let n_states = info.states.len();
            let occupancy: Vec<Vec<u32>> = (0..days)
                .map(|d| {
                    let base = d * s.total_states + info.state_off;
                    t.occupancy[base..base + n_states].to_vec()
                })
                .collect();
            let active_at_end = occupancy
                .last()
                .map_or(0, |o| o.iter().map(|x| u64::from(*x)).sum());
            let declared_indicators = info
                .indicators
                .iter()
                .enumerate()
                .map(|(i, ind)| {
                    let (met, of) = (pt.indicator_met[i], pt.indicator_of[i]);
                    let value = r4(defs::ratio(met as i64, of as i64));
                    let note = match ind.goal {
                        None => Some(format!(
                            "numerator `{}` is not computed by the simulator",
                            ind.numerator
                        )),
                        Some(_)
                            if carepath_dsl::counter::Counter::parse(&ind.denominator)
                                != Ok(carepath_dsl::counter::Counter::Enrolled) =>
                        {
                            Some(format!(
                                "denominator `{}` is read as enrolled",
                                ind.denominator
                            ))
                        }
                        Some(_) => None,
                    };
                    DeclaredIndicator {
                        id: ind.id.clone(),
                        title: ind.title.clone(),
                        numerator: ind.numerator.clone(),
                        denominator: ind.denominator.clone(),
                        value,
                        met,
                        of,
                        target: ind.target,
                        on_target: value.zip(ind.target).map(|(v, t)| v >= t),
                        note,
                    }
                })
                .collect();
            pathways.push(PathwayReport {
                id: info.id.clone(),
                version: prog.pathway.version,
                enrolled: pt.enrolled,
                completed: pt.completed,
                active_at_end,
                died: pt.died,
                errors: pt.errors,
                indicators: Indicators::from_tallies(std::iter::once((
                    pt,
                    info.tracks_stay,
                    active_at_end,
                ))),
                declared_indicators,
                coverage: Coverage {
                    states_visited: n_states - never_visited.len(),
                    states: n_states,
                    transitions_taken: info.n_transitions - never_taken.len(),
                    transitions: info.n_transitions,
                    never_visited,
                    never_taken,
                    state_counts,
                    transition_counts,
                },
                occupancy_states: info.states.clone(),
                occupancy,
            });
        }
        let totals = Indicators::from_tallies(
            t.path
                .iter()
                .zip(&s.infos)
                .zip(&pathways)
                .map(|((p, i), r)| (p, i.tracks_stay, r.active_at_end)),
        );

        // Workload per role (summed over institutions) and per queue.
        let nr = s.roles.len();
        let nq = s.institutions.len() * nr;
        let per_role = |v: &[u32], d: usize| -> Vec<u32> {
            (0..nr)
                .map(|r| {
                    (0..s.institutions.len())
                        .map(|i| v[d * nq + i * nr + r])
                        .sum()
                })
                .collect()
        };
        let workload = Workload {
            roles: s.roles.clone(),
            created: (0..days)
                .map(|d| t.created_by_day[d * nr..(d + 1) * nr].to_vec())
                .collect(),
            done: (0..days)
                .map(|d| t.done_by_day[d * nr..(d + 1) * nr].to_vec())
                .collect(),
            backlog: (0..days).map(|d| per_role(&raw.backlog, d)).collect(),
            overdue: (0..days).map(|d| per_role(&raw.overdue, d)).collect(),
        };
        let peak = |series: &mut dyn Iterator<Item = u32>| -> (u64, usize) {
            let mut best = (0u64, 0usize);
            for (d, x) in series.enumerate() {
                if u64::from(x) > best.0 {
                    best = (u64::from(x), d);
                }
            }
            best
        };
        let roles = s
            .roles
            .iter()
            .enumerate()
            .map(|(r, role)| {
                let rt = &t.roles[r];
                let (pb, pbd) = peak(&mut workload.backlog.iter().map(|d| d[r]));
                let (po, pod) = peak(&mut workload.overdue.iter().map(|d| d[r]));
                RoleReport {
                    role: role.clone(),
                    capacity_per_day: (0..s.institutions.len())
                        .map(|i| u64::from(s.capacity[i * nr + r]))
                        .sum(),
                    created: rt.created,
                    done: rt.done,
                    due: rt.due,
                    on_time: rt.on_time,
                    on_time_task_rate: defs::ON_TIME_TASK_RATE.value(&Counts {
                        tasks_due: rt.due as i64,
                        tasks_on_time: rt.on_time as i64,
                        ..Counts::default()
                    }),
                    cancelled: rt.cancelled,
                    escalated: rt.escalated,
                    open_at_end: rt.open_at_end,
                    overdue_at_end: rt.overdue_at_end,
                    peak_backlog: pb,
                    peak_backlog_day: pbd,
                    peak_overdue: po,
                    peak_overdue_day: pod,
                }
            })
            .collect();
        let mut queues = Vec::new();
        let mut peaks = Vec::new();
        for (i, inst) in s.institutions.iter().enumerate() {
            for (r, role) in s.roles.iter().enumerate() {
                let q = i * nr + r;
                let b: Vec<u32> = (0..days).map(|d| raw.backlog[d * nq + q]).collect();
                let o: Vec<u32> = (0..days).map(|d| raw.overdue[d * nq + q]).collect();
                let (pb, pbd) = peak(&mut b.iter().copied());
                let (po, pod) = peak(&mut o.iter().copied());
                queues.push(QueueReport {
                    institution: inst.id.clone(),
                    role: role.clone(),
                    capacity_per_day: s.capacity[q],
                    peak_backlog: pb,
                    peak_backlog_day: pbd,
                    peak_overdue: po,
                    peak_overdue_day: pod,
                });
                peaks.push((inst.id.clone(), role.clone(), b, o));
            }
        }
        let referral_flows = t
            .flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.count > 0)
            .map(|(i, f)| {
                let (p, dir, inst, to) = s.flow_parts(i);
                Flow {
                    pathway: s.infos[p].id.clone(),
                    direction: format!("{dir:?}").to_lowercase(),
                    from: s.institutions[inst].id.clone(),
                    to: to.as_str().to_string(),
                    referrals: f.count,
                    accepted: f.accepted,
                    rejected: f.rejected,
                    arrived: f.arrived,
                }
            })
            .collect();
        Report {
            scenario,
            seed: s.seed,
            cohort: s.n,
            days: s.days,
            start: s.start_date.to_string(),
            tz: s.tz.clone(),
            working_hours: format!("{}-{}", hhmm(s.work_start), hhmm(s.work_end)),
            totals,
            pathways,
            roles,
            queues,
            workload,
            referral_flows,
            errors: t.errors.len() as u64,
            first_errors: t
                .errors
                .iter()
                .take(20)
                .map(|(p, m)| format!("patient {p}: {m}"))
                .collect(),
            warnings: s.warnings.clone(),
            expectations: Vec::new(),
            dates,
            peaks,
        }
    }

    pub fn date_of(&self, day: usize) -> &str {
        self.dates.get(day).map_or("", String::as_str)
    }

    /// States never visited, as (pathway, state).
    pub fn never_visited(&self) -> Vec<(String, String)> {
        self.pathways
            .iter()
            .flat_map(|p| {
                p.coverage
                    .never_visited
                    .iter()
                    .map(move |s| (p.id.clone(), s.clone()))
            })
            .collect()
    }

    /// Transitions never taken, as (pathway, `state#n`, what it is).
    pub fn never_taken(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for p in &self.pathways {
            for id in &p.coverage.never_taken {
                let what = p
                    .coverage
                    .transition_counts
                    .iter()
                    .find(|t| &t.id == id)
                    .map(|t| format!("→ {}, {}", t.to, t.trigger))
                    .unwrap_or_default();
                out.push((p.id.clone(), id.clone(), what));
            }
        }
        out
    }

    /// The peak of a role's backlog (or overdue tasks), over institutions or at one: (peak, day).
    pub fn peak(
        &self,
        role: &str,
        institution: Option<&str>,
        overdue: bool,
    ) -> Option<(u64, usize)> {
        let rows: Vec<&(String, String, Vec<u32>, Vec<u32>)> = self
            .peaks
            .iter()
            .filter(|(i, r, _, _)| r == role && institution.is_none_or(|x| x == i))
            .collect();
        if rows.is_empty() {
            return None;
        }
        let days = self.days as usize;
        let mut best = (0u64, 0usize);
        for d in 0..days {
            let x: u64 = rows
                .iter()
                .map(|(_, _, b, o)| u64::from(if overdue { o[d] } else { b[d] }))
                .sum();
            if x > best.0 {
                best = (x, d);
            }
        }
        Some(best)
    }

    /// A metric by name, for expectations; `None` when the name means nothing in this run.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let parts: Vec<&str> = name.split('.').collect();
        let (pathways, rest): (Vec<&PathwayReport>, &[&str]) = match parts.as_slice() {
            [p, rest @ ..] if self.pathways.iter().any(|x| x.id == *p) && !rest.is_empty() => {
                (self.pathways.iter().filter(|x| x.id == *p).collect(), rest)
            }
            _ => (self.pathways.iter().collect(), parts.as_slice()),
        };
        let whole_run = pathways.len() == self.pathways.len();
        let ind = if whole_run {
            self.totals.clone()
        } else {
            pathways[0].indicators.clone()
        };
        let sum =
            |f: &dyn Fn(&PathwayReport) -> u64| pathways.iter().map(|p| f(p)).sum::<u64>() as f64;
        let nan = |x: Option<f64>| x.unwrap_or(f64::NAN);
        Some(match rest {
            [name] if ind.values.has(name) => nan(ind.value(name)),
            ["referrals_up"] => ind.referrals_up as f64,
            ["referrals_down"] => ind.referrals_down as f64,
            ["alarms"] => ind.alarms as f64,
            ["tasks_created"] => ind.tasks_created as f64,
            ["enrolled"] => sum(&|p| p.enrolled),
            ["deaths"] => sum(&|p| p.died),
            ["errors"] => sum(&|p| p.errors),
            ["completion_rate"] => {
                let e = sum(&|p| p.enrolled);
                if e > 0.0 {
                    sum(&|p| p.completed) / e
                } else {
                    f64::NAN
                }
            }
            ["state_coverage"] => {
                sum(&|p| p.coverage.states_visited as u64) / sum(&|p| p.coverage.states as u64)
            }
            ["transition_coverage"] => {
                sum(&|p| p.coverage.transitions_taken as u64)
                    / sum(&|p| p.coverage.transitions as u64)
            }
            ["indicator", id] => {
                let d = pathways
                    .iter()
                    .flat_map(|p| p.declared_indicators.iter())
                    .find(|d| d.id == *id)?;
                nan(d.value)
            }
            ["visits", state] => {
                let mut found = false;
                let mut n = 0;
                for p in &pathways {
                    if let Some(c) = p.coverage.state_counts.iter().find(|c| c.state == *state) {
                        found = true;
                        n += c.visits;
                    }
                }
                if !found {
                    return None;
                }
                n as f64
            }
            _ => return None,
        })
    }

    /// The plain-text summary printed by `carepath simulate`.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{:.1}%", x * 100.0));
        let _ = writeln!(
            o,
            "simulated {} patient(s) over {} day(s) from {} ({}), seed {}{}",
            self.cohort,
            self.days,
            self.start,
            self.tz,
            self.seed,
            self.scenario
                .as_ref()
                .map(|s| format!(", scenario {s}"))
                .unwrap_or_default()
        );
        for p in &self.pathways {
            let i = &p.indicators;
            let _ = writeln!(
                o,
                "\n{} v{}: {} enrolled, {} completed, {} active at the end, {} died, {} error(s)",
                p.id, p.version, p.enrolled, p.completed, p.active_at_end, p.died, p.errors
            );
            let c = &i.counts;
            let _ = writeln!(
                o,
                "  follow-up rate {} ({} of {} patients due a call followed up; {} of {} messages answered)",
                pct(i.value(defs::FOLLOW_UP_RATE.name)),
                c.followed_up,
                c.follow_up_due,
                i.follow_ups_responded,
                i.follow_ups_sent
            );
            let _ = writeln!(
                o,
                "  on-time tasks {} ({} of {} due)   scale completion {} ({} of {})",
                pct(i.value(defs::ON_TIME_TASK_RATE.name)),
                c.tasks_on_time,
                c.tasks_due,
                pct(i.value(defs::SCALE_COMPLETION.name)),
                c.scales_answered,
                c.scales_pushed
            );
            let los = i
                .value(defs::AVERAGE_LENGTH_OF_STAY_DAYS.name)
                .map(|d| format!("   average length of stay {d:.2} d ({} stays)", c.stays))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  referrals up {} down {}   alarms {}{los}",
                i.referrals_up, i.referrals_down, i.alarms
            );
            for d in &p.declared_indicators {
                let _ = writeln!(
                    o,
                    "  indicator {}: {}{}",
                    d.id,
                    pct(d.value),
                    d.target
                        .map(|t| format!(" (target {})", pct(Some(t))))
                        .unwrap_or_default()
                );
            }
            let c = &p.coverage;
            let _ = writeln!(
                o,
                "  coverage: {}/{} states visited, {}/{} transitions taken",
                c.states_visited, c.states, c.transitions_taken, c.transitions
            );
            for s in &c.never_visited {
                let _ = writeln!(o, "    never visited: {s}");
            }
            for t in c.transition_counts.iter().filter(|t| t.taken == 0) {
                let _ = writeln!(o, "    never taken:   {} → {} ({})", t.id, t.to, t.trigger);
            }
        }
        let _ = writeln!(o, "\nstaff (working hours {}):", self.working_hours);
        let _ = writeln!(
            o,
            "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
            "role", "cap/day", "created", "done", "on time", "peak blg", "peak ovd"
        );
        for r in &self.roles {
            let _ = writeln!(
                o,
                "  {:<22} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
                r.role,
                r.capacity_per_day,
                r.created,
                r.done,
                pct(r.on_time_task_rate),
                r.peak_backlog,
                r.peak_overdue
            );
        }
        if !self.referral_flows.is_empty() {
            let _ = writeln!(o, "\nreferral flows:");
            for f in &self.referral_flows {
                let _ = writeln!(
                    o,
                    "  {:<22} {:<4} {:<10} → {:<18} {:>6} ({} accepted, {} rejected, {} arrived)",
                    f.pathway,
                    f.direction,
                    f.from,
                    f.to,
                    f.referrals,
                    f.accepted,
                    f.rejected,
                    f.arrived
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
        for e in &self.first_errors {
            let _ = writeln!(o, "error: {e}");
        }
        if !self.expectations.is_empty() {
            let _ = writeln!(o, "\nexpectations:");
            for e in &self.expectations {
                match &e.message {
                    None => {
                        let _ = writeln!(o, "  ok    {}", e.expectation);
                    }
                    Some(m) => {
                        let _ = writeln!(o, "  FAIL  {m}");
                    }
                }
            }
        }
        o
    }

    /// Writes summary.json, the CSV files and the SVG charts into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<String>, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut written = Vec::new();
        let mut put = |name: &str, body: String| -> Result<(), String> {
            let path = dir.join(name);
            std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
            written.push(path.display().to_string());
            Ok(())
        };
        put("summary.json", self.json())?;
        put("indicators.csv", self.indicators_csv())?;
        put("workload.csv", self.workload_csv())?;
        put("occupancy.csv", self.occupancy_csv())?;
        put("coverage.csv", self.coverage_csv())?;
        put("referrals.csv", self.referrals_csv())?;
        put("workload.svg", self.workload_svg())?;
        for p in &self.pathways {
            put(&format!("occupancy_{}.svg", p.id), self.occupancy_svg(p))?;
        }
        Ok(written)
    }

    pub fn json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
        s.push('\n');
        s
    }

    fn indicators_csv(&self) -> String {
        let mut o = String::from("pathway,indicator,value,numerator,denominator,target\n");
        let f = |x: Option<f64>| x.map(fmt_num).unwrap_or_default();
        let mut rows = |who: &str, i: &Indicators| {
            for (name, value) in i.values.iter() {
                let Some(d) = defs::definition(name) else {
                    continue;
                };
                let (num, den) = d.sides(&i.counts);
                let _ = writeln!(
                    o,
                    "{who},{name},{},{},{},{}",
                    f(value),
                    fmt_num(num),
                    fmt_num(den),
                    f(d.target)
                );
            }
            let _ = writeln!(o, "{who},referrals_up,{},,,", i.referrals_up);
            let _ = writeln!(o, "{who},referrals_down,{},,,", i.referrals_down);
        };
        rows("all", &self.totals);
        for p in &self.pathways {
            rows(&p.id, &p.indicators);
        }
        for p in &self.pathways {
            for d in &p.declared_indicators {
                let _ = writeln!(
                    o,
                    "{},{},{},{},{},{}",
                    p.id,
                    csv(&d.id),
                    f(d.value),
                    d.met,
                    d.of,
                    f(d.target)
                );
            }
        }
        o
    }

    fn workload_csv(&self) -> String {
        let mut o = String::from("day,date,role,created,done,backlog,overdue\n");
        let w = &self.workload;
        for d in 0..w.created.len() {
            for (r, role) in w.roles.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{d},{},{role},{},{},{},{}",
                    self.date_of(d),
                    w.created[d][r],
                    w.done[d][r],
                    w.backlog[d][r],
                    w.overdue[d][r]
                );
            }
        }
        o
    }

    fn occupancy_csv(&self) -> String {
        let mut o = String::from("day,date,pathway,state,active\n");
        for p in &self.pathways {
            for (d, row) in p.occupancy.iter().enumerate() {
                for (s, n) in row.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "{d},{},{},{},{n}",
                        self.date_of(d),
                        p.id,
                        p.occupancy_states[s]
                    );
                }
            }
        }
        o
    }

    fn coverage_csv(&self) -> String {
        let mut o = String::from("pathway,kind,id,from,to,trigger,count\n");
        for p in &self.pathways {
            for s in &p.coverage.state_counts {
                let _ = writeln!(o, "{},state,{},,,,{}", p.id, s.state, s.visits);
            }
            for t in &p.coverage.transition_counts {
                let _ = writeln!(
                    o,
                    "{},transition,{},{},{},{},{}",
                    p.id,
                    t.id,
                    t.from,
                    t.to,
                    csv(&t.trigger),
                    t.taken
                );
            }
        }
        o
    }

    fn referrals_csv(&self) -> String {
        let mut o = String::from("pathway,direction,from,to,referrals,accepted,rejected,arrived\n");
        for f in &self.referral_flows {
            let _ = writeln!(
                o,
                "{},{},{},{},{},{},{},{}",
                f.pathway,
                f.direction,
                f.from,
                f.to,
                f.referrals,
                f.accepted,
                f.rejected,
                f.arrived
            );
        }
        o
    }

    fn workload_svg(&self) -> String {
        use crate::svg::Series;
        let w = &self.workload;
        let series = |v: &Vec<Vec<u32>>| -> Vec<Series> {
            w.roles
                .iter()
                .enumerate()
                .map(|(r, role)| Series {
                    name: role.clone(),
                    colour: r,
                    values: v.iter().map(|d| f64::from(d[r])).collect(),
                })
                .filter(|s| s.values.iter().any(|x| *x > 0.0))
                .collect()
        };
        let mut out = crate::svg::Doc::new(960, 1020);
        out.chart(
            0,
            "Backlog: open tasks at the end of each day",
            "day",
            "tasks",
            &series(&w.backlog),
        );
        out.chart(
            340,
            "Overdue: open tasks past their due time",
            "day",
            "tasks",
            &series(&w.overdue),
        );
        out.chart(
            680,
            "Tasks created per day",
            "day",
            "tasks",
            &series(&w.created),
        );
        out.finish()
    }

    fn occupancy_svg(&self, p: &PathwayReport) -> String {
        use crate::svg::Series;
        let mut series: Vec<Series> = p
            .occupancy_states
            .iter()
            .enumerate()
            .map(|(s, id)| Series {
                name: id.clone(),
                colour: 0,
                values: p.occupancy.iter().map(|d| f64::from(d[s])).collect(),
            })
            .filter(|s| s.values.iter().any(|x| *x > 0.0))
            .collect();
        // The busiest states get their own line; the rest are summed.
        let peak = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        series.sort_by(|a, b| {
            peak(&b.values)
                .total_cmp(&peak(&a.values))
                .then(a.name.cmp(&b.name))
        });
        if series.len() > 12 {
            let rest = series.split_off(11);
            let days = p.occupancy.len();
            series.push(Series {
                name: format!("{} other states", rest.len()),
                colour: 0,
                values: (0..days)
                    .map(|d| rest.iter().map(|s| s.values[d]).sum())
                    .collect(),
            });
        }
        for (i, s) in series.iter_mut().enumerate() {
            s.colour = i;
        }
        let mut out = crate::svg::Doc::new(960, 340);
        out.chart(
            0,
            &format!("{}: patients in each state at the end of each day", p.id),
            "day",
            "patients",
            &series,
        );
        out.finish()
    }
}

impl Report {
    /// Checks an expectation against the report; `Err` says what failed and by how much.
    pub fn check(&self, e: &Expectation) -> Result<(), String> {
        let r = self;
        let name = e.describe();
        match e {
            Expectation::Metric {
                metric, cmp, value, ..
            } => {
                let got = r
                    .metric(metric)
                    .ok_or_else(|| format!("`{name}`: the run has no value for `{metric}`"))?;
                if got.is_nan() {
                    return Err(format!(
                        "`{name}`: `{metric}` could not be computed (nothing was due)"
                    ));
                }
                if cmp.holds(got, *value) {
                    return Ok(());
                }
                let by = (got - value).abs();
                let how = match cmp {
                    Cmp::Ge | Cmp::Gt => format!("{} short", fmt_num(by)),
                    Cmp::Le | Cmp::Lt => format!("{} over", fmt_num(by)),
                    Cmp::Eq => format!("off by {}", fmt_num(by)),
                };
                Err(format!("`{name}`: {metric} = {}, {how}", fmt_num(got)))
            }
            Expectation::EveryStateVisited { except } => {
                let missing: Vec<String> = r
                    .never_visited()
                    .into_iter()
                    .filter(|(p, s)| !except.iter().any(|e| e == s || *e == format!("{p}.{s}")))
                    .map(|(p, s)| format!("{p}.{s}"))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}`: {} state(s) never visited: {}",
                        missing.len(),
                        missing.join(", ")
                    ))
                }
            }
            Expectation::EveryTransitionTaken { except } => {
                let missing: Vec<String> = r
                    .never_taken()
                    .into_iter()
                    .filter(|(p, id, _)| {
                        !except.iter().any(|e| e == id || *e == format!("{p}.{id}"))
                    })
                    .map(|(p, id, what)| format!("{p}.{id} ({what})"))
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}`: {} transition(s) never taken: {}",
                        missing.len(),
                        missing.join(", ")
                    ))
                }
            }
            Expectation::MaxBacklog {
                role,
                institution,
                at_most,
            }
            | Expectation::MaxOverdue {
                role,
                institution,
                at_most,
            } => {
                let overdue = matches!(e, Expectation::MaxOverdue { .. });
                let what = if overdue { "overdue tasks" } else { "backlog" };
                let (peak, day) =
                    r.peak(role, institution.as_deref(), overdue)
                        .ok_or_else(|| {
                            format!(
                                "`{name}`: no {role} work{} in this run",
                                institution
                                    .as_ref()
                                    .map(|i| format!(" at {i}"))
                                    .unwrap_or_default()
                            )
                        })?;
                if peak <= *at_most {
                    Ok(())
                } else {
                    Err(format!(
                        "`{name}`: the {role} {what} peaked at {peak} on day {day} ({}), {} over the limit",
                        r.date_of(day),
                        peak - at_most
                    ))
                }
            }
        }
    }
}

pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        let s = format!("{x:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_short() {
        assert_eq!(fmt_num(0.8431234), "0.8431");
        assert_eq!(fmt_num(50.0), "50");
        assert_eq!(fmt_num(0.5), "0.5");
    }

    #[test]
    fn csv_quotes_when_needed() {
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a \"b\", c"), "\"a \"\"b\"\", c\"");
    }
}
