//! A living history: the simulator's patients and staff acting, day by day in virtual time,
//! through the production store and scheduler. `carepath demo` builds its months of history with
//! it, so that boards, patient records and indicators show work done on time and late.
//!
//! Who the patients are, when they arrive, the life events their pathways wait for, their device
//! readings, whether and when they answer a questionnaire and what they answer, how many tasks each
//! board's staff complete in a working hour and with which outcome, and how referrals are answered:
//! all of it is the simulator's models (`Setup`, `patient::Member`, `patient::life_events`,
//! `patient::draw_reading`, `ScaleModel`, the referral and task models), each drawn from a
//! generator seeded by the seed and the thing it decides about.
//!
//! Everything that happens is written by what production runs, with the virtual instant as "now":
//! registration and enrolment (`store::patients`), hospital events (`queries::event_scoped`),
//! readings (`queries::ingest_visible`, which judges alarm rules), answers
//! (`store::scales::answer_push`), task completions with an outcome the pathway accepts
//! (`queries::act_on_task`), alarm acknowledgement and resolution (`store::alarms::act_on_episode`),
//! referral decisions (`queries::decide_referral`), the scheduler's pass (`scheduler::run_pass`),
//! the overdue escalation sweep, and delivery of due messages through the log channel
//! (`delivery::dispatch_once`). Every action is audited as the demo staff member who took it
//! (`<institution>.<role>`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use carepath_dsl::catalog;
use carepath_engine::delivery::{self, DeliveryConfig};
use carepath_engine::program::Programs;
use carepath_engine::scheduler;
use carepath_engine::store::alarms::{EpisodeAction, EpisodeFilter};
use carepath_engine::store::queries::{self, Caller, QueueFilter, ReportedEvent, TaskAction};
use carepath_engine::store::{self, NewEnrolment, Pool, StoreError};
use jiff::Timestamp;

use crate::cohort::{self, Draw, SplitMix};
use crate::model::scale_index;
use crate::patient::{Hit, Member, draw_reading, life_events, next_slot, reading_interval};
use crate::run::ticks;
use crate::scenario::{InstitutionSpec, Scenario, StaffSpec};
use crate::setup::{DAY, Setup};

/// The address the history's calls are audited from.
const REMOTE: &str = "127.0.0.1";

/// What to live through.
#[derive(Debug, Clone)]
pub struct Options {
    pub patients: u64,
    pub days: u32,
    pub seed: u64,
    /// The local date the history ends on, at its midnight (today, for a demo).
    pub end: jiff::civil::Date,
    pub tz: String,
    /// (institution id, kind, share of the patients): the alliance the store already holds.
    pub institutions: Vec<(String, String, f64)>,
    /// Staff capacity, per board: (institution, role, tasks its staff complete a day per thousand
    /// patients of the institution, at least one). The role `default` stands for the
    /// institution's roles not named; a board named nowhere has the simulator's default. Boards
    /// differ in the work they get (a clinic's case manager takes the patients referred down to
    /// it), so each is sized to its own: a little below the work that reaches it keeps a board
    /// holding open tasks with a minority overdue; well above it, a board is always empty.
    pub capacity: Vec<(String, String, f64)>,
}

/// `carepath demo`'s cohort and days of history, unless told otherwise.
pub const DEMO_PATIENTS: u64 = 300;
pub const DEMO_DAYS: u32 = 120;

impl Options {
    /// `carepath demo`'s history: `patients` over `days` up to the midnight of `end`, in the demo
    /// alliance (`seed::shares`) with its staff capacity (`seed::capacity`), seed 1.
    pub fn demo(patients: u64, days: u32, end: jiff::civil::Date) -> Options {
        Options {
            patients,
            days,
            seed: 1,
            end,
            tz: "Asia/Shanghai".into(),
            institutions: carepath_engine::seed::shares(),
            capacity: carepath_engine::seed::capacity(),
        }
    }
}

/// What the history did, counted as it was written.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub patients: u64,
    pub passes: u64,
    pub steps: u64,
    pub events: u64,
    pub readings: u64,
    pub answers: u64,
    pub tasks_done: u64,
    pub escalations: u64,
    pub referrals_accepted: u64,
    pub referrals_rejected: u64,
    pub referrals_arrived: u64,
    pub alarms_acknowledged: u64,
    pub alarms_resolved: u64,
    pub messages_sent: u64,
    /// Actions the store refused (a task or push that changed under the history's feet): each is
    /// audited as production audits a refusal, and the history goes on.
    pub refused: u64,
}

/// The demo staff member of `institution` holding `role`.
pub fn staff(institution: &str, role: &str) -> Caller {
    Caller {
        staff_id: format!("{institution}.{role}"),
        institution_id: institution.to_string(),
        roles: vec![role.to_string()],
    }
}

/// The delivery configuration of the history: messages go through the log channel (counted sent,
/// their text never logged), phone follow-ups become call tasks, as `config/delivery.example.toml`
/// has them.
pub const DELIVERY: &str = r#"
[dispatch]
quiet_hours = "21:00-08:00"
daily_cap = 3
language = "zh"
time_zone = "Asia/Shanghai"

[channels.wechat]
transport = "log"
[channels.sms]
transport = "log"
[channels.email]
transport = "log"
[channels.phone]
transport = "task"
due = "1d"

[templates."*"."*"]
zh = "{name}您好，{hospital}有一条随访消息给您，请查看随访小程序或致电随访中心。"
en = "Hello {name}, {hospital} has a follow-up message for you. Please open the follow-up app or call the follow-up centre."
"#;

/// One patient of the history.
struct Person {
    idx: u32,
    id: String,
    institution: String,
    member: Member,
    readings_rng: SplitMix,
    enrolment: Option<i64>,
    state_seq: i64,
    active: bool,
    /// Life events to come: (when, order, event index).
    agenda: BinaryHeap<Reverse<(i64, u32, u16)>>,
    order: u32,
    /// The next reading slot of each of the pathway's reading groups.
    cursor: Vec<i64>,
}

/// What a task's staff will do with it, drawn when they first see it.
struct TaskPlan {
    rng: SplitMix,
    missed: bool,
    ready_at: i64,
}

/// Something a patient or a receiving institution does at an instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Happening {
    Enrol(u32),
    Life(u32, u16),
    Answer(i64),
    Decide(i64, bool),
    Arrive(i64),
}

struct ReferralPlan {
    /// (when, accept) of the answer, if any comes.
    decision: Option<(i64, bool)>,
    arrive: Option<i64>,
    /// The institution that answers.
    by: String,
    done: u8,
}

struct World<'a> {
    s: &'a Setup,
    pool: &'a Pool,
    programs: &'a Programs,
    delivery: DeliveryConfig,
    people: Vec<Person>,
    by_patient: HashMap<String, usize>,
    by_enrolment: HashMap<i64, usize>,
    tasks: HashMap<i64, TaskPlan>,
    /// Pushes seen: the answers the patient will give, if they answer.
    pushes: HashMap<i64, Option<BTreeMap<String, i64>>>,
    referrals: BTreeMap<i64, ReferralPlan>,
    happenings: BinaryHeap<Reverse<(i64, u64, Happening)>>,
    order: u64,
    summary: Summary,
}

/// A generator for one decision about one thing, seeded by the run's seed and the thing's key.
fn rng_for(seed: u64, key: &str) -> SplitMix {
    let mut h = cohort::mix64(seed ^ 0x6C69_7669_6E67_0001);
    for b in key.bytes() {
        h = cohort::mix64(h ^ u64::from(b));
    }
    SplitMix::new(h)
}

fn ts(t: i64) -> Timestamp {
    Timestamp::from_second(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Refusals the history lives with: the thing changed (cancelled, answered, expired, decided)
/// between the look and the act.
fn refused(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Conflict(_) | StoreError::NotFound(_) | StoreError::Invalid(_)
    )
}

/// The simulator's run for the history: the demo's alliance, its patients and days.
fn setup(programs: &Programs, o: &Options) -> Result<Setup, String> {
    let start = o
        .end
        .checked_sub(jiff::Span::new().days(i64::from(o.days)))
        .map_err(err)?;
    let scenario = Scenario {
        cohort: Some(o.patients),
        days: Some(o.days),
        seed: Some(o.seed),
        start: Some(start.to_string()),
        tz: Some(o.tz.clone()),
        // Patients keep arriving until the last day.
        arrivals_days: Some(f64::from(o.days)),
        institutions: o
            .institutions
            .iter()
            .map(|(id, kind, share)| {
                (
                    id.clone(),
                    InstitutionSpec {
                        kind: Some(kind.clone()),
                        share: *share,
                        capacity: o
                            .capacity
                            .iter()
                            .filter(|(inst, _, _)| inst == id)
                            .map(|(_, role, per_1000)| {
                                (role.clone(), serde_json::json!({ "per_1000": per_1000 }))
                            })
                            .collect(),
                    },
                )
            })
            .collect(),
        staff: StaffSpec::default(),
        ..Scenario::default()
    };
    Setup::new(programs.latest(), &scenario, o.patients, o.days, o.seed)
}

/// Lives `o.days` days up to the midnight of `o.end` through the store `pool` holds, whose
/// alliance must be `o.institutions` and whose pathways are `programs`. `home_of` gives a
/// patient's home community institution (institution, patient index).
pub async fn live(
    pool: &Pool,
    programs: &Programs,
    o: &Options,
    home_of: impl Fn(&str, u64) -> Option<String>,
) -> Result<Summary, String> {
    let s = setup(programs, o)?;
    let delivery =
        DeliveryConfig::parse(DELIVERY, "the history's delivery", &|_| None).map_err(err)?;
    let mut w = World {
        s: &s,
        pool,
        programs,
        delivery,
        people: Vec::new(),
        by_patient: HashMap::new(),
        by_enrolment: HashMap::new(),
        tasks: HashMap::new(),
        pushes: HashMap::new(),
        referrals: BTreeMap::new(),
        happenings: BinaryHeap::new(),
        order: 0,
        summary: Summary::default(),
    };
    for idx in 0..s.n as u32 {
        let member = Member::new(&s, idx);
        let institution = s.institutions[member.profile.institution].id.clone();
        let id = format!("P{:016x}", cohort::patient_seed(s.seed, u64::from(idx)));
        w.at(member.enrol_at, Happening::Enrol(idx));
        w.by_patient.insert(id.clone(), w.people.len());
        w.people.push(Person {
            idx,
            id,
            institution,
            readings_rng: Member::readings_rng(&s, idx),
            member,
            enrolment: None,
            state_seq: -1,
            active: false,
            agenda: BinaryHeap::new(),
            order: 0,
            cursor: Vec::new(),
        });
    }
    w.summary.patients = s.n;
    for day in 0..s.days as usize {
        // The nightly escalation sweep, as `serve` runs it with its full pass.
        let night = s.day_starts[day] + 2 * 3_600;
        w.summary.escalations += queries::escalate_overdue(pool, ts(night))
            .await
            .map_err(err)?;
        for tick in ticks(&s, day) {
            if let Some((slot, slots)) = tick.staff {
                w.work(tick.start, tick.end, slot, slots).await?;
            }
            w.look(tick.end).await?;
            w.happen(tick.end, &home_of).await?;
            w.read_devices(tick.end).await?;
            let pass = scheduler::run_pass(pool, programs, ts(tick.end), &Default::default())
                .await
                .map_err(err)?;
            w.summary.passes += 1;
            w.summary.steps += pass.stepped;
            let sent = delivery::dispatch_once(pool, &w.delivery, ts(tick.end))
                .await
                .map_err(err)?;
            w.summary.messages_sent += sent.sent;
            w.states().await?;
        }
    }
    Ok(w.summary)
}

impl World<'_> {
    fn at(&mut self, t: i64, h: Happening) {
        self.order += 1;
        self.happenings.push(Reverse((t, self.order, h)));
    }

    fn person(&self, patient: &str) -> Option<&Person> {
        self.by_patient.get(patient).map(|i| &self.people[*i])
    }

    /// Staff of every board complete their share of the day's capacity in this working hour,
    /// most urgent first, as the simulator's staff do; alarms are acknowledged when first seen.
    async fn work(&mut self, start: i64, end: i64, slot: u32, slots: u32) -> Result<(), String> {
        let s = self.s;
        for (i, inst) in s.institutions.iter().enumerate() {
            for (r, role) in s.roles.iter().enumerate() {
                let per_day = u64::from(s.capacity[s.queue(i, r as u16)]);
                let cap = crate::run::share(per_day, slot, slots) as i64;
                let caller = staff(&inst.id, role);
                let episodes = self.acknowledge(&caller, role, start).await?;
                if cap == 0 {
                    continue;
                }
                let filter = QueueFilter {
                    role: Some(role.clone()),
                    status: Some("open".into()),
                    assignee: None,
                    due_before: None,
                    due_after: None,
                    after: None,
                    pathway: None,
                    limit: 200,
                };
                let page = match queries::queue(self.pool, self.programs, &caller, &filter).await {
                    Ok(p) => p,
                    Err(StoreError::Forbidden(_)) => continue,
                    Err(e) => return Err(err(e)),
                };
                let len = (end - start).max(1);
                let mut done = 0i64;
                for task in page {
                    if done >= cap {
                        break;
                    }
                    let at = start + (2 * done + 1) * len / (2 * cap);
                    let Some(outcome) = self.plan_task(&task, at) else {
                        continue;
                    };
                    let episode = episodes.get(&task.id).copied();
                    let acted = queries::act_on_task(
                        self.pool,
                        self.programs,
                        &caller,
                        task.id,
                        TaskAction::Complete { outcome: &outcome },
                        REMOTE,
                        ts(at),
                    )
                    .await;
                    match acted {
                        Ok(_) => {
                            done += 1;
                            self.summary.tasks_done += 1;
                        }
                        Err(e) if refused(&e) => self.summary.refused += 1,
                        Err(e) => return Err(err(e)),
                    }
                    if let Some(episode) = episode {
                        let reason = format!("reviewed: {outcome}");
                        let resolve = EpisodeAction::Resolve { reason: &reason };
                        match store::alarms::act_on_episode(
                            self.pool,
                            &caller,
                            episode,
                            resolve,
                            REMOTE,
                            ts(at),
                        )
                        .await
                        {
                            Ok(_) => self.summary.alarms_resolved += 1,
                            Err(e) if refused(&e) => self.summary.refused += 1,
                            Err(e) => return Err(err(e)),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The board's staff look at their alarm list at the start of the hour: what is open they
    /// acknowledge. Returns the active episodes by their task.
    async fn acknowledge(
        &mut self,
        caller: &Caller,
        role: &str,
        at: i64,
    ) -> Result<HashMap<i64, i64>, String> {
        let filter = EpisodeFilter {
            status: Some("active".into()),
            role: Some(role.to_string()),
            after: None,
            patient: None,
            limit: 500,
        };
        let list = store::alarms::episodes(self.pool, caller, &filter)
            .await
            .map_err(err)?;
        let mut by_task = HashMap::new();
        for e in list {
            if e.status == "open" {
                match store::alarms::act_on_episode(
                    self.pool,
                    caller,
                    e.id,
                    EpisodeAction::Acknowledge,
                    REMOTE,
                    ts(at),
                )
                .await
                {
                    Ok(_) => self.summary.alarms_acknowledged += 1,
                    Err(e) if refused(&e) => self.summary.refused += 1,
                    Err(e) => return Err(err(e)),
                }
            }
            if let Some(task) = e.task_id {
                by_task.insert(task, e.id);
            }
        }
        Ok(by_task)
    }

    /// Whether staff do `task` at `at`, and with which outcome: never for a task they miss,
    /// not before it can be done; the outcome drawn by the simulator's task model, among those
    /// the pathway accepts.
    fn plan_task(&mut self, task: &queries::QueueTask, at: i64) -> Option<String> {
        let s = self.s;
        let person = self.by_enrolment.get(&task.enrolment_id).copied()?;
        let info = &s.infos[self.people[person].member.prog];
        let ix = task
            .task_ref
            .as_deref()
            .and_then(|r| info.task_ids.iter().position(|x| x == r));
        let created = task
            .created_at
            .parse::<Timestamp>()
            .map_or(at, |t| t.as_second());
        let plan = self.tasks.entry(task.id).or_insert_with(|| {
            let key = format!(
                "task:{}:{}:{created}",
                task.patient_id,
                task.task_ref.as_deref().unwrap_or("")
            );
            let mut rng = rng_for(s.seed, &key);
            let (missed, ready) = match ix.and_then(|i| info.task_behaviour.get(i)) {
                Some((missed, ready)) => (*missed, ready.as_ref()),
                None => (info.missed_default, None),
            };
            let missed = missed > 0.0 && rng.chance(missed);
            let ready_at = created + ready.map_or(0, |d| d.sample(&mut rng).max(0.0) as i64);
            TaskPlan {
                rng,
                missed,
                ready_at,
            }
        });
        if plan.missed || plan.ready_at > at {
            return None;
        }
        let prog = &s.programs[self.people[person].member.prog];
        let accepted = prog.pathway.accepted_outcomes(task.task_ref.as_deref());
        let drawn = ix.map(|i| {
            let (names, weights) = &info.outcomes[i];
            names[plan.rng.weighted(weights)].clone()
        });
        Some(match drawn {
            Some(o) if accepted.contains(&o.as_str()) => o,
            _ => accepted
                .first()
                .map_or_else(|| "done".to_string(), |o| o.to_string()),
        })
    }

    /// What waits on patients and receiving institutions: questionnaires pushed, referrals
    /// requested. Each is decided once, when first seen, and happens at its time.
    async fn look(&mut self, now: i64) -> Result<(), String> {
        let s = self.s;
        for push in store::living::pending_pushes(self.pool, now)
            .await
            .map_err(err)?
        {
            if self.pushes.contains_key(&push.id) {
                continue;
            }
            let Some(m) = scale_index(&push.scale).map(|i| &s.scales[i]) else {
                self.pushes.insert(push.id, None);
                continue;
            };
            let mut rng = rng_for(
                s.seed,
                &format!(
                    "push:{}:{}:{}",
                    push.patient_id, push.scale, push.created_at
                ),
            );
            let mut plan = None;
            if rng.chance(m.answer) {
                let delay = m.delay.sample(&mut rng).max(60.0) as i64;
                let cutoff = push.expires_at.unwrap_or(push.due_at + 7 * DAY);
                let t = push.created_at + delay;
                if t <= cutoff {
                    plan = Some(m.answers(&mut rng));
                    self.at(t, Happening::Answer(push.id));
                }
            }
            self.pushes.insert(push.id, plan);
        }
        let mut seen: BTreeMap<i64, (queries::ReferralView, String)> = BTreeMap::new();
        for inst in &s.institutions {
            let caller = staff(&inst.id, "referral_coordinator");
            for r in queries::referrals(self.pool, &caller, Some("requested"))
                .await
                .map_err(err)?
            {
                if r.from_institution != inst.id
                    && r.to_institution.as_deref().is_none_or(|t| t == inst.id)
                {
                    seen.entry(r.id).or_insert((r, inst.id.clone()));
                }
            }
        }
        for (id, (r, by)) in seen {
            if self.referrals.contains_key(&id) {
                continue;
            }
            let requested = r
                .requested_at
                .parse::<Timestamp>()
                .map_or(now, |t| t.as_second());
            let mut rng = rng_for(
                s.seed,
                &format!("referral:{}:{}:{requested}", r.patient_id, r.direction),
            );
            let m = &s.referral[usize::from(r.direction == "down")];
            let x = rng.unit_f();
            let delay = m.delay.sample(&mut rng).max(60.0) as i64;
            let mut plan = ReferralPlan {
                decision: None,
                arrive: None,
                by,
                done: 0,
            };
            if x < m.accepted {
                plan.decision = Some((requested + delay, true));
                if rng.chance(m.arrived) {
                    let more = m.arrive_delay.sample(&mut rng).max(60.0) as i64;
                    plan.arrive = Some(requested + delay + more);
                }
            } else if x < m.accepted + m.rejected {
                plan.decision = Some((requested + delay, false));
            }
            if let Some((t, accept)) = plan.decision {
                self.at(t.max(now), Happening::Decide(id, accept));
            }
            self.referrals.insert(id, plan);
        }
        Ok(())
    }

    /// Everything that happens up to `to`, in time order.
    async fn happen(
        &mut self,
        to: i64,
        home_of: &impl Fn(&str, u64) -> Option<String>,
    ) -> Result<(), String> {
        loop {
            // Life events come due on the patients' own agendas.
            for p in 0..self.people.len() {
                while let Some(Reverse((t, _, ev))) = self.people[p].agenda.peek().copied() {
                    if t > to {
                        break;
                    }
                    self.people[p].agenda.pop();
                    let idx = self.people[p].idx;
                    self.at(t, Happening::Life(idx, ev));
                }
            }
            let Some(Reverse((t, _, h))) = self.happenings.peek().cloned() else {
                return Ok(());
            };
            if t > to {
                return Ok(());
            }
            self.happenings.pop();
            self.one(t, h, home_of).await?;
        }
    }

    async fn one(
        &mut self,
        t: i64,
        h: Happening,
        home_of: &impl Fn(&str, u64) -> Option<String>,
    ) -> Result<(), String> {
        let s = self.s;
        match h {
            Happening::Enrol(idx) => self.enrol(idx as usize, t, home_of).await,
            Happening::Life(idx, ev) => {
                let p = idx as usize;
                let (Some(enrolment), true) = (self.people[p].enrolment, self.people[p].active)
                else {
                    return Ok(());
                };
                let info = &s.infos[self.people[p].member.prog];
                let name = info.events[usize::from(ev)].clone();
                let caller = staff(&self.people[p].institution, "case_manager");
                let event = ReportedEvent {
                    enrolment,
                    name: &name,
                    at: ts(t),
                    data: None,
                };
                match queries::event_scoped(
                    self.pool,
                    self.programs,
                    &caller,
                    &event,
                    REMOTE,
                    ts(t),
                )
                .await
                {
                    Ok(_) => self.summary.events += 1,
                    Err(e) if refused(&e) => self.summary.refused += 1,
                    Err(e) => return Err(err(e)),
                }
                self.fire(p, Hit::Event(ev), t);
                Ok(())
            }
            Happening::Answer(push) => {
                let Some(Some(answers)) = self.pushes.get(&push) else {
                    return Ok(());
                };
                let answers = answers.clone();
                let Some(patient) = store::living::pending_pushes(self.pool, t)
                    .await
                    .map_err(err)?
                    .into_iter()
                    .find(|x| x.id == push)
                else {
                    // Answered, expired or cancelled meanwhile.
                    return Ok(());
                };
                let Some(person) = self.person(&patient.patient_id) else {
                    return Ok(());
                };
                let caller = staff(&person.institution, "case_manager");
                match store::scales::answer_push(
                    self.pool,
                    carepath_engine::scales::Scales::builtin(),
                    &caller,
                    push,
                    &answers,
                    Some(ts(t)),
                    REMOTE,
                    ts(t),
                )
                .await
                {
                    Ok(_) => self.summary.answers += 1,
                    Err(e) if refused(&e) => self.summary.refused += 1,
                    Err(e) => return Err(err(e)),
                }
                Ok(())
            }
            Happening::Decide(id, accept) => {
                let Some(plan) = self.referrals.get(&id) else {
                    return Ok(());
                };
                let caller = staff(&plan.by, "referral_coordinator");
                let (decision, reason) = if accept {
                    ("accept", None)
                } else {
                    ("reject", Some("no capacity for this patient now"))
                };
                match queries::decide_referral(
                    self.pool,
                    &caller,
                    id,
                    decision,
                    reason,
                    REMOTE,
                    ts(t),
                )
                .await
                {
                    Ok(_) => {
                        if accept {
                            self.summary.referrals_accepted += 1;
                        } else {
                            self.summary.referrals_rejected += 1;
                        }
                        let plan = self.referrals.get_mut(&id).expect("planned");
                        plan.done = 1;
                        if let (true, Some(at)) = (accept, plan.arrive) {
                            self.at(at, Happening::Arrive(id));
                        }
                    }
                    Err(e) if refused(&e) => self.summary.refused += 1,
                    Err(e) => return Err(err(e)),
                }
                Ok(())
            }
            Happening::Arrive(id) => {
                let Some(plan) = self.referrals.get(&id) else {
                    return Ok(());
                };
                let caller = staff(&plan.by, "referral_coordinator");
                match queries::decide_referral(
                    self.pool,
                    &caller,
                    id,
                    "arrive",
                    None,
                    REMOTE,
                    ts(t),
                )
                .await
                {
                    Ok(_) => {
                        self.summary.referrals_arrived += 1;
                        if let Some(plan) = self.referrals.get_mut(&id) {
                            plan.done = 2;
                        }
                    }
                    Err(e) if refused(&e) => self.summary.refused += 1,
                    Err(e) => return Err(err(e)),
                }
                Ok(())
            }
        }
    }

    /// Registers and enrols a patient at their arrival, as a case manager of their institution
    /// does through the API; an admission entry point is admitted at once.
    async fn enrol(
        &mut self,
        p: usize,
        t: i64,
        home_of: &impl Fn(&str, u64) -> Option<String>,
    ) -> Result<(), String> {
        let s = self.s;
        let (prog_ix, entry_ix) = {
            let m = &self.people[p].member;
            (m.prog, m.profile.entry)
        };
        let prog = &s.programs[prog_ix];
        let info = &s.infos[prog_ix];
        let entry_ix = entry_ix.min(prog.pathway.entry_points.len() - 1);
        let entry = &prog.pathway.entry_points[entry_ix];
        let person = &self.people[p];
        let caller = staff(&person.institution, "case_manager");
        let upsert = store::patients::PatientUpsert {
            id: person.id.clone(),
            birth_date: person.member.birth_date.map(|d| d.to_string()),
            sex: Some(person.member.profile.sex.to_string()),
            tz: Some(s.tz.clone()),
            home_institution: home_of(&person.institution, u64::from(person.idx)),
            ..Default::default()
        };
        store::patients::create(self.pool, &caller, None, &upsert, REMOTE, ts(t))
            .await
            .map_err(err)?;
        let new = NewEnrolment {
            patient_id: person.id.clone(),
            pathway_id: prog.pathway.id.clone(),
            version: Some(prog.pathway.version),
            entry: entry.id.clone(),
            at: ts(t),
            catch_up_to: None,
        };
        let (enrolment, _) =
            store::patients::enrol(self.pool, self.programs, &caller, &new, REMOTE, ts(t))
                .await
                .map_err(err)?;
        self.by_enrolment.insert(enrolment, p);
        let person = &mut self.people[p];
        person.enrolment = Some(enrolment);
        person.active = true;
        // Device readings from the first slot after enrolment.
        person.cursor = info
            .groups
            .iter()
            .map(|group| {
                let m = &s.obs[group[0]];
                let interval = reading_interval(m);
                let mut at = s.day_starts[s.day_of(t)] + m.at;
                while at <= t {
                    at += interval;
                }
                at
            })
            .collect();
        let entry_state = info.state(&entry.state);
        self.fire(p, Hit::State(entry_state), t);
        self.fire(p, Hit::Enrolled(entry_ix), t);
        if info.entry_admitted[entry_ix] {
            let event = ReportedEvent {
                enrolment,
                name: "admitted",
                at: ts(t),
                data: None,
            };
            match queries::event_scoped(self.pool, self.programs, &caller, &event, REMOTE, ts(t))
                .await
            {
                Ok(_) => self.summary.events += 1,
                Err(e) if refused(&e) => self.summary.refused += 1,
                Err(e) => return Err(err(e)),
            }
            if let Some(ev) = info.event_ix("admitted") {
                self.fire(p, Hit::Event(ev), t);
            }
        }
        Ok(())
    }

    /// The life events `hit` sets off, on the patient's agenda.
    fn fire(&mut self, p: usize, hit: Hit, t: i64) {
        let s = self.s;
        let person = &mut self.people[p];
        let info = &s.infos[person.member.prog];
        for (ev, at) in life_events(info, hit, &mut person.member.rng, t) {
            person.order += 1;
            person.agenda.push(Reverse((at, person.order, ev)));
        }
    }

    /// Device readings taken up to `to`, sent by each institution's device gateway in one batch.
    async fn read_devices(&mut self, to: i64) -> Result<(), String> {
        let s = self.s;
        let mut batches: BTreeMap<String, Vec<carepath_engine::observations::Reading>> =
            BTreeMap::new();
        for person in self.people.iter_mut().filter(|p| p.active) {
            let info = &s.infos[person.member.prog];
            while let Some((t, g)) = next_slot(&person.cursor).filter(|(t, _)| *t <= to) {
                person.cursor[g] = t + reading_interval(&s.obs[info.groups[g][0]]);
                let mut values = [f64::NAN; 16];
                if !draw_reading(
                    s,
                    info,
                    &person.member.levels,
                    person.member.profile.adherence,
                    person.member.enrol_at,
                    &mut person.readings_rng,
                    g,
                    t,
                    &mut values,
                ) {
                    continue;
                }
                let batch = batches.entry(person.institution.clone()).or_default();
                for k in &info.groups[g] {
                    batch.push(carepath_engine::observations::Reading {
                        patient_id: person.id.clone(),
                        kind: catalog::OBSERVATIONS[*k].0.to_string(),
                        value: values[*k],
                        unit: None,
                        at: ts(t),
                        reading_id: format!("{}:{g}:{t}", person.id),
                        source: "device".into(),
                    });
                }
                self.summary.readings += 1;
            }
        }
        for (inst, readings) in batches {
            let caller = staff(&inst, "device_gateway");
            queries::ingest_visible(self.pool, &caller, &readings, REMOTE, ts(to))
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    /// Where each enrolment stands after the pass: entering a state sets off the life events that
    /// wait on it; an ended enrolment lives no more.
    async fn states(&mut self) -> Result<(), String> {
        let s = self.s;
        for e in store::living::enrolments(self.pool).await.map_err(err)? {
            let Some(p) = self.by_enrolment.get(&e.id).copied() else {
                continue;
            };
            let person = &mut self.people[p];
            person.active = e.status == "active";
            if e.state_seq != person.state_seq {
                let first = person.state_seq < 0;
                person.state_seq = e.state_seq;
                if !first && person.active {
                    let state = s.infos[person.member.prog].state(&e.state);
                    self.fire(p, Hit::State(state), e.entered_at);
                }
            }
        }
        Ok(())
    }
}
