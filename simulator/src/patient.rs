//! One patient's life: an agenda of what happens when (enrolment, life events, answers, follow-ups,
//! referral answers, tasks becoming ready), device readings drawn lazily from their own generator,
//! and the pure step applied whenever something reaches the pathway.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use carepath_dsl::{AlarmScope, Channel, Direction, VarType, VarValue, catalog};
use carepath_engine::alarms::{AlarmState, Edge};
use carepath_engine::facts::{FactEvent, Observation, PatientFacts, PendingEvent, RiskResult};
use carepath_engine::outcome::{self, Because, Cause, Fate, Made, OutcomeSink, Scope, Work};
use carepath_engine::scales::Scored;
use carepath_engine::step::{self, Emitted, Enrolment, Outcome, Produced, Status, Taken};
use carepath_engine::store::replay;
use jiff::Timestamp;

use crate::cohort::{self, Draw, ObsModel, Profile, SplitMix};
use crate::model::{Anchor, GoalModel, NO_REF, PathwayInfo, TaskModel, scale_index, seconds_of};
use crate::setup::{DAY, Setup};
use crate::tally::Tally;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
}

const CHANNELS: [Channel; 4] = [
    Channel::Wechat,
    Channel::Sms,
    Channel::Phone,
    Channel::Email,
];

fn channel_index(c: Channel) -> usize {
    CHANNELS.iter().position(|x| *x == c).unwrap_or(1)
}

// ---- patients ----------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    Waiting,
    Active,
    Ended,
}

#[derive(Debug, Clone, Copy)]
enum Item {
    Enrol,
    Life(u16),
    ScaleAnswer {
        scale: u8,
        push: u32,
    },
    /// An unanswered push reaching its expiry, as the scheduler's sweep raises it.
    ScaleExpired {
        scale: u8,
        push: u32,
    },
    FollowUp(u32),
    Referral {
        what: u8,
        flow: u32,
    },
    TaskReady(u32),
}

#[derive(Debug, Clone, Copy)]
struct Agenda {
    at: i64,
    order: u32,
    item: Item,
}

impl PartialEq for Agenda {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Agenda {}
impl PartialOrd for Agenda {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Agenda {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

#[derive(Debug, Clone)]
struct OpenTask {
    no: u32,
    ref_ix: u16,
    role: u16,
    prio: u8,
    keep: bool,
    state_seq: u32,
    created: i64,
    due: i64,
    escalate_after: Option<i64>,
}

#[derive(Debug, Clone)]
struct FollowUpSlot {
    id: u32,
    /// The follow-up's action id, in `PathwayInfo::work_ids` (`NO_REF`: none).
    ref_ix: u16,
    state_seq: u32,
    send_at: i64,
    channels: Vec<Channel>,
}

/// A scale push not yet answered, expired or ended.
#[derive(Debug, Clone)]
struct PushSlot {
    id: u32,
    /// The push's action id, in `PathwayInfo::work_ids` (`NO_REF`: none).
    ref_ix: u16,
    state_seq: u32,
}

#[derive(Debug, Clone)]
struct Armed {
    alarm: u16,
    scope: AlarmScope,
    state_seq: u32,
    /// Where the rule stands, as the core's rule machine keeps it.
    state: AlarmState,
}

/// A queue entry: smaller is more urgent (priority, due, created, patient, task number).
pub(crate) type Key = (u8, i64, i64, u32, u32);

pub(crate) struct Patient {
    idx: u32,
    pub(crate) prog: usize,
    rng: SplitMix,
    profile: Profile,
    enrol_at: i64,
    pub(crate) life: Life,
    dead: bool,
    /// A follow-up call fell due; one reached the patient (each counted once per patient).
    follow_up_due: bool,
    followed_up: bool,
    enrolment: Option<Enrolment>,
    pub(crate) state: usize,
    facts: PatientFacts,
    pending: Vec<PendingEvent>,
    seq: i64,
    agenda: BinaryHeap<Reverse<Agenda>>,
    order: u32,
    wake: i64,
    tasks: Vec<OpenTask>,
    next_task: u32,
    follow_ups: Vec<FollowUpSlot>,
    next_follow_up: u32,
    pushes: Vec<PushSlot>,
    next_push: u32,
    alarms: Vec<Armed>,
    /// Alarms (by index) with an open episode: one open episode per alarm, as in the store.
    open_alarms: Vec<u16>,
    /// Per observation kind: baseline and drift per second (or probability of a 1).
    levels: Vec<(f64, f64)>,
    /// Device readings draw from their own generator, so they can be taken late or looked ahead.
    obs_rng: SplitMix,
    /// The next reading slot of each reading group.
    cursor: Vec<i64>,
    /// When an armed alarm would next fire (or the look-ahead ends).
    alarm_due: i64,
    alarms_changed: bool,
    obs_trim_at: usize,
    goal_trim_at: usize,
    goal_log: Vec<(u8, f32, i64)>,
    pub(crate) inbox: Vec<(i64, u32)>,
    in_hospital_since: Option<i64>,
    ended_at: Option<i64>,
}

/// What a chunk hands back after a tick: new tasks for the queues.
pub(crate) type NewTasks = Vec<(u32, Key)>;

pub(crate) struct Cx<'a> {
    pub(crate) s: &'a Setup,
    pub(crate) tally: &'a mut Tally,
    pub(crate) new_tasks: &'a mut NewTasks,
    /// Tasks done or cancelled, as (patient, task number): they leave the staff queues.
    pub(crate) closed: &'a mut Vec<(u32, u32)>,
    pub(crate) horizon: i64,
    /// Set when replaying one patient: every task, follow-up and scale push it makes, and what
    /// becomes of each.
    pub(crate) journal: Option<&'a mut Journal>,
}

/// What a replayed patient made, by the numbers the patient knows its open work by.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pub(crate) made: Vec<Made>,
    /// Open work by (kind, the number the patient knows it by), to its entry in `made`.
    open: Vec<((Open, u32), usize)>,
}

/// The kinds of open work a patient keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Task,
    FollowUp,
    Push,
}

impl Journal {
    fn made(cx: &mut Cx, a: &Emitted, fate: Fate, open: Option<(Open, u32)>) {
        let Some(j) = cx.journal.as_deref_mut() else {
            return;
        };
        let Some(m) = Made::of(a, fate) else { return };
        if let Some(open) = open {
            j.open.push((open, j.made.len()));
        }
        j.made.push(m);
    }

    fn ended(&mut self, kind: Open, no: u32) {
        if let Some((_, i)) = self.open.iter().find(|(o, _)| *o == (kind, no)) {
            self.made[*i].fate = Fate::EndedLater;
        }
    }
}

/// Replays one patient of a one-pathway run: enrolled through entry point `entry` at `start`,
/// then stepped at each point in time order, before and after the point's event (if any)
/// arrives. Nothing else happens to them: no readings, answers, life events or staff.
pub(crate) fn replay(
    s: &Setup,
    entry: usize,
    start: i64,
    points: &[(i64, Option<String>)],
) -> Result<Vec<Made>, String> {
    let mut p = Patient::new(s, 0);
    p.profile.entry = entry;
    p.enrol_at = start;
    p.agenda.clear();
    let mut tally = Tally::new(s);
    let (mut new_tasks, mut closed, mut journal) = (Vec::new(), Vec::new(), Journal::default());
    let mut cx = Cx {
        s,
        tally: &mut tally,
        new_tasks: &mut new_tasks,
        closed: &mut closed,
        horizon: s.horizon(),
        journal: Some(&mut journal),
    };
    p.enrol(&mut cx, start);
    for (t, event) in points {
        if p.life == Life::Active {
            p.step(&mut cx, *t);
        }
        if let Some(name) = event {
            p.push_event(&s.infos[p.prog], name.clone(), *t);
        }
        if p.life == Life::Active {
            p.step(&mut cx, *t);
        }
    }
    match tally.errors.first() {
        Some((_, e)) => Err(e.clone()),
        None => Ok(journal.made),
    }
}

/// Who a patient of the run is and how their body behaves: drawn once, from the patient's own
/// generator, in this order (the rest of the patient's life draws from the same generator after).
pub(crate) struct Member {
    pub(crate) rng: SplitMix,
    pub(crate) prog: usize,
    pub(crate) profile: Profile,
    pub(crate) enrol_at: i64,
    /// Per observation kind: baseline and drift per second (or probability of a 1).
    pub(crate) levels: Vec<(f64, f64)>,
    pub(crate) birth_date: Option<jiff::civil::Date>,
}

impl Member {
    pub(crate) fn new(s: &Setup, idx: u32) -> Member {
        let mut rng = SplitMix::new(cohort::patient_seed(s.seed, u64::from(idx)));
        let prog = rng.weighted(&s.mix);
        let info = &s.infos[prog];
        let profile = s
            .cohort
            .profile(&mut rng, &info.age, info.female, &info.entry_weights);
        let day = (rng.unit_f() * s.arrivals_days).floor() as usize;
        let day = day.min(s.days as usize - 1);
        let enrol_at = s.day_starts[day]
            + s.work_start
            + (rng.unit_f() * (s.work_end - s.work_start) as f64) as i64;
        let mut levels = vec![(0.0, 0.0); catalog::OBSERVATIONS.len()];
        for group in &info.groups {
            for k in group {
                let m = &s.obs[*k];
                let shift: f64 = profile
                    .comorbidities
                    .iter()
                    .filter_map(|c| s.cohort.comorbidities[usize::from(*c)].shift.get(m.kind))
                    .sum();
                levels[*k] = match m.probability {
                    Some(p) => ((p + 0.1 * rng.normal()).clamp(0.0, 1.0), 0.0),
                    None => (
                        m.mean + info.obs_shift[*k] + shift + m.sd * rng.normal(),
                        m.trend_per_month * rng.uniform(0.5, 1.5) / (30.0 * 86_400.0),
                    ),
                };
            }
        }
        let birth_year = i64::from(s.start_date.year()) - i64::from(profile.age);
        let birth_date = jiff::civil::Date::new(
            birth_year.clamp(1800, 2200) as i16,
            1 + rng.below(12) as i8,
            1 + rng.below(28) as i8,
        )
        .ok();
        Member {
            rng,
            prog,
            profile,
            enrol_at,
            levels,
            birth_date,
        }
    }

    /// The generator of the patient's device readings, apart from the rest of their life.
    pub(crate) fn readings_rng(s: &Setup, idx: u32) -> SplitMix {
        SplitMix::new(cohort::mix64(
            cohort::patient_seed(s.seed, u64::from(idx)) ^ 0x0B5E_7A71_0D5E_ED01,
        ))
    }
}

impl Patient {
    pub(crate) fn new(s: &Setup, idx: u32) -> Patient {
        let Member {
            rng,
            prog,
            profile,
            enrol_at,
            levels,
            birth_date,
        } = Member::new(s, idx);
        let facts = PatientFacts {
            birth_date,
            sex: profile.sex.to_string(),
            ..Default::default()
        };
        let mut p = Patient {
            idx,
            prog,
            rng,
            profile,
            enrol_at,
            life: Life::Waiting,
            dead: false,
            follow_up_due: false,
            followed_up: false,
            enrolment: None,
            state: 0,
            facts,
            pending: Vec::new(),
            seq: 0,
            agenda: BinaryHeap::new(),
            order: 0,
            wake: i64::MAX,
            tasks: Vec::new(),
            next_task: 0,
            follow_ups: Vec::new(),
            next_follow_up: 0,
            pushes: Vec::new(),
            next_push: 0,
            alarms: Vec::new(),
            open_alarms: Vec::new(),
            levels,
            obs_rng: Member::readings_rng(s, idx),
            cursor: Vec::new(),
            alarm_due: i64::MAX,
            alarms_changed: false,
            obs_trim_at: 8,
            goal_trim_at: 16,
            goal_log: Vec::new(),
            inbox: Vec::new(),
            in_hospital_since: None,
            ended_at: None,
        };
        p.schedule(enrol_at, Item::Enrol, i64::MAX);
        p
    }

    fn schedule(&mut self, at: i64, item: Item, horizon: i64) {
        if at > horizon {
            return;
        }
        self.order += 1;
        self.agenda.push(Reverse(Agenda {
            at,
            order: self.order,
            item,
        }));
    }

    /// The next time something other than a device reading happens.
    fn next_other(&self) -> i64 {
        let mut t = self.agenda.peek().map_or(i64::MAX, |Reverse(a)| a.at);
        for (at, _) in &self.inbox {
            t = t.min(*at);
        }
        if self.life == Life::Active {
            t = t.min(self.wake);
        }
        t
    }

    /// The next time the patient must be visited.
    pub(crate) fn next_at(&self) -> i64 {
        let t = self.next_other();
        if self.life == Life::Active {
            t.min(self.alarm_due)
        } else {
            t
        }
    }

    /// Lives up to `to`: everything that happens, in time order, stepping when the pathway must see it.
    pub(crate) fn advance(&mut self, cx: &mut Cx, to: i64) {
        loop {
            let t = self.next_other();
            // Readings up to the next happening first; one that fires an alarm is acted on at once.
            if let Some((at, step)) = self.catch_up(cx, t.min(to)) {
                if step && self.life == Life::Active {
                    self.step(cx, at);
                    if self.life == Life::Active && self.wake <= at {
                        self.wake = at + 60;
                    }
                }
                continue;
            }
            if t > to {
                break;
            }
            let mut need_step = self.life == Life::Active && self.wake <= t;
            while let Some(Reverse(a)) = self.agenda.peek().copied() {
                if a.at != t {
                    break;
                }
                self.agenda.pop();
                need_step |= self.happen(cx, a.item, t);
            }
            while let Some(i) = self.inbox.iter().position(|(at, _)| *at == t) {
                let (_, no) = self.inbox.swap_remove(i);
                need_step |= self.complete(cx, no, t);
            }
            if need_step && self.life == Life::Active {
                self.step(cx, t);
                if self.life == Life::Active && self.wake <= t {
                    self.wake = t + 60;
                }
            }
        }
        if self.alarms_changed || self.alarm_due <= to {
            self.predict_alarm(cx.s, to);
        }
    }

    fn push_event(&mut self, info: &PathwayInfo, name: String, t: i64) -> bool {
        if info.guard_events.contains(&name) {
            self.facts.events.push(FactEvent {
                name: name.clone(),
                at: ts(t),
            });
        }
        let listened = info.listened.contains(&name);
        self.seq += 1;
        self.pending.push(PendingEvent {
            seq: self.seq,
            name,
            at: ts(t),
            set: Default::default(),
        });
        listened
    }

    /// Handles one agenda item at `t`; true when the pathway must be stepped.
    fn happen(&mut self, cx: &mut Cx, item: Item, t: i64) -> bool {
        let s = cx.s;
        let info = &s.infos[self.prog];
        match item {
            Item::Enrol => {
                self.enrol(cx, t);
                false
            }
            Item::Life(ev) => {
                if self.dead || self.life != Life::Active {
                    return false;
                }
                let name = info.events[usize::from(ev)].clone();
                self.export_event(cx, &name, t);
                match name.as_str() {
                    "died" => {
                        self.dead = true;
                        cx.tally.path[self.prog].died += 1;
                    }
                    "admitted" | "readmitted" | "delivered" => {
                        self.in_hospital_since.get_or_insert(t);
                    }
                    "discharged" => {
                        if let Some(since) = self.in_hospital_since.take() {
                            let p = &mut cx.tally.path[self.prog];
                            p.stays += 1;
                            p.stay_seconds += t - since;
                        }
                    }
                    _ => {}
                }
                let step = self.push_event(info, name, t);
                self.fire_rules(cx, Hit::Event(ev), t);
                step
            }
            Item::TaskReady(no) => {
                self.queue_task(cx, no, t);
                false
            }
            Item::ScaleAnswer { scale, push } => {
                if self.dead || !self.settle_push(push) {
                    return false;
                }
                let m = &s.scales[usize::from(scale)];
                let scored = m.answer(&mut self.rng);
                cx.tally.path[self.prog].scales_answered += 1;
                if s.export {
                    let c = &mut cx.tally.cohort;
                    if let Some(push) = c.scale_pushes.iter_mut().rev().find(|x| {
                        x.patient == self.idx && x.scale == m.name && x.answered_at.is_none()
                    }) {
                        push.answered_at = Some(t);
                    }
                }
                if let Some(scored) = scored {
                    self.raise_critical(cx, usize::from(scale), &scored, t);
                    if info.guard_scales.contains(&usize::from(scale)) {
                        self.facts.scales.retain(|x| x.scale != m.name);
                        self.facts.scales.push(scored.into_result(ts(t)));
                    }
                }
                self.push_event(info, format!("scale_answered:{}", m.name), t)
            }
            Item::ScaleExpired { scale, push } => {
                if self.dead || !self.settle_push(push) {
                    return false;
                }
                let name = &s.scales[usize::from(scale)].name;
                self.push_event(info, format!("scale_expired:{name}"), t)
            }
            Item::FollowUp(id) => {
                let Some(i) = self.follow_ups.iter().position(|f| f.id == id) else {
                    return false;
                };
                let f = self.follow_ups.swap_remove(i);
                let p = &mut cx.tally.path[self.prog];
                p.follow_ups_sent += 1;
                if !self.dead {
                    for ch in &f.channels {
                        if self.rng.chance(s.response[channel_index(*ch)]) {
                            p.follow_ups_responded += 1;
                            break;
                        }
                    }
                }
                false
            }
            Item::Referral { what, flow } => {
                if self.dead || self.life != Life::Active {
                    return false;
                }
                let f = &mut cx.tally.flows[flow as usize];
                let name = match what {
                    0 => {
                        f.accepted += 1;
                        "referral_accepted"
                    }
                    1 => {
                        f.rejected += 1;
                        "referral_rejected"
                    }
                    _ => {
                        f.arrived += 1;
                        "referral_arrived"
                    }
                };
                self.push_event(info, name.to_string(), t)
            }
        }
    }

    /// Each critical item answered above its threshold raises an urgent task, kept whatever state
    /// the patient moves to, as the store raises it when the questionnaire is answered.
    fn raise_critical(&mut self, cx: &mut Cx, scale: usize, scored: &Scored, t: i64) {
        let Some(state_seq) = self.enrolment.as_ref().map(|e| e.state_seq) else {
            return;
        };
        let info = &cx.s.infos[self.prog];
        for hit in &scored.critical {
            let Some(c) = info
                .critical
                .iter()
                .find(|c| c.scale == scale && c.item == hit.item)
            else {
                continue;
            };
            let task = c.task.clone();
            self.create_task(cx, &task, t + task.due, true, state_seq, t);
        }
    }

    /// A task that `covers_critical` a scale takes over the open tasks its critical items raised:
    /// they are cancelled.
    fn cover_critical(&mut self, cx: &mut Cx, scale: &str, at: i64) {
        let info = &cx.s.infos[self.prog];
        let Some(ix) = scale_index(scale) else { return };
        let covered: Vec<u16> = info
            .critical
            .iter()
            .filter(|c| c.scale == ix)
            .map(|c| c.task.ref_ix)
            .collect();
        let mut i = 0;
        while i < self.tasks.len() {
            if covered.contains(&self.tasks[i].ref_ix) {
                let task = self.tasks.swap_remove(i);
                self.close_task(cx, &task, None, at);
            } else {
                i += 1;
            }
        }
    }

    fn enrol(&mut self, cx: &mut Cx, t: i64) {
        let s = cx.s;
        let info = &s.infos[self.prog];
        let prog = &s.programs[self.prog];
        let entry = self.profile.entry.min(prog.pathway.entry_points.len() - 1);
        let admitted = info.entry_admitted[entry];
        if admitted {
            self.in_hospital_since = Some(t);
            self.export_event(cx, "admitted", t);
            self.push_event(info, "admitted".into(), t);
        }
        let entry_id = prog.pathway.entry_points[entry].id.clone();
        let entry_state = info.state(&prog.pathway.entry_points[entry].state);
        let out = step::enrol(
            prog,
            i64::from(self.idx) + 1,
            &entry_id,
            &s.tz,
            &self.facts,
            &self.pending,
            ts(t),
        );
        cx.tally.path[self.prog].enrolled += 1;
        cx.tally.path[self.prog].steps += 1;
        self.life = Life::Active;
        cx.tally.visits[info.state_off + entry_state] += 1;
        self.fire_rules(cx, Hit::State(entry_state), t);
        match out {
            Ok(o) => {
                // Variables drawn for the patient (comorbidity index and the like).
                let mut o = o;
                if let Some(base) = info.charlson_default {
                    o.enrolment.vars.insert(
                        "charlson".into(),
                        VarValue::Integer(base + self.profile.charlson),
                    );
                }
                for (name, ty, d) in &info.variables {
                    let x = d.sample(&mut self.rng);
                    let v = match ty {
                        VarType::Integer => VarValue::Integer(x.round() as i64),
                        VarType::Bool => VarValue::Bool(x != 0.0),
                        _ => VarValue::Number(x),
                    };
                    o.enrolment.vars.insert(name.clone(), v);
                }
                self.apply(cx, o, t);
            }
            Err(e) => {
                self.fail(cx, e.to_string(), t);
                return;
            }
        }
        let ev_admitted = info.event_ix("admitted").unwrap_or(0);
        self.fire_rules(cx, Hit::Enrolled(entry), t);
        if admitted {
            self.fire_rules(cx, Hit::Event(ev_admitted), t);
        }
        // Device readings from the first slot after enrolment.
        self.cursor = info
            .groups
            .iter()
            .map(|group| {
                let m = &s.obs[group[0]];
                let interval = reading_interval(m);
                let mut at = s.day_starts[s.day_of(t)] + m.at;
                while at <= t {
                    at += interval;
                }
                if at > cx.horizon { i64::MAX } else { at }
            })
            .collect();
        self.alarms_changed = true;
    }

    fn fire_rules(&mut self, cx: &mut Cx, hit: Hit, t: i64) {
        for (event, at) in life_events(&cx.s.infos[self.prog], hit, &mut self.rng, t) {
            self.schedule(at, Item::Life(event), cx.horizon);
        }
    }

    /// Takes the device readings due up to `to`, in time order, and raises the no-reading alarms
    /// whose silence lasts until a moment up to `to`. Readings are pure data drawn from their own
    /// generator, so they are only taken when the patient is visited anyway — except that a
    /// reading or a silence that opens an alarm episode stops the catch-up: `Some((time, step
    /// needed))`.
    fn catch_up(&mut self, cx: &mut Cx, to: i64) -> Option<(i64, bool)> {
        if self.life != Life::Active || self.dead {
            return None;
        }
        let s = cx.s;
        let info = &s.infos[self.prog];
        loop {
            let reading = next_slot(&self.cursor).filter(|(t, _)| *t <= to);
            // A silence lasting up to a reading is raised before the reading ends it.
            if let Some((due, i)) =
                silence_due(info, self.alarms.iter().map(|a| (a.alarm, &a.state)))
                && due <= to
                && reading.is_none_or(|(t, _)| due <= t)
            {
                let armed = &mut self.alarms[i];
                let rule = info.alarms[usize::from(armed.alarm)].rule.as_ref();
                let edge = rule.and_then(|r| r.check_silence(&mut armed.state, due));
                let alarm = armed.alarm;
                self.alarms_changed = true;
                if let Some(step) = self.on_alarm_edges(cx, &[(alarm, edge)], due) {
                    return Some((due, step));
                }
                continue;
            }
            let (t, g) = reading?;
            let next = t + reading_interval(&s.obs[info.groups[g][0]]);
            self.cursor[g] = if next > cx.horizon { i64::MAX } else { next };
            let mut values = [f64::NAN; 16];
            let taken = draw_reading(
                s,
                info,
                &self.levels,
                self.profile.adherence,
                self.enrol_at,
                &mut self.obs_rng,
                g,
                t,
                &mut values,
            );
            if !taken {
                continue;
            }
            cx.tally.path[self.prog].readings += 1;
            for k in &info.groups[g] {
                self.record(info, *k, values[*k], t);
            }
            let edges = feed_alarms(
                info,
                self.alarms.iter_mut().map(|a| (a.alarm, &mut a.state)),
                &values,
                t,
            );
            if let Some(step) = self.on_alarm_edges(cx, &edges, t) {
                self.alarms_changed = true;
                return Some((t, step));
            }
        }
    }

    /// Acts on the rules' edges as the store does: a raised rule opens an episode (the event
    /// `alarm:<id>` and the rule's task) unless one of that alarm is open; a cleared rule closes
    /// it. `Some(step needed)` when an episode opened.
    fn on_alarm_edges(
        &mut self,
        cx: &mut Cx,
        edges: &[(u16, Option<Edge>)],
        t: i64,
    ) -> Option<bool> {
        let info = &cx.s.infos[self.prog];
        let mut opened = None;
        for (alarm, edge) in edges {
            match edge {
                Some(Edge::Raised) if !self.open_alarms.contains(alarm) => {
                    self.open_alarms.push(*alarm);
                    let model = &info.alarms[usize::from(*alarm)];
                    cx.tally.path[self.prog].alarms += 1;
                    let step = self.push_event(info, format!("alarm:{}", model.id), t);
                    opened = Some(opened.unwrap_or(false) | step);
                    let task = model.task.clone();
                    self.create_task(cx, &task, t + task.due, false, 0, t);
                }
                Some(Edge::Cleared) => self.open_alarms.retain(|a| a != alarm),
                _ => {}
            }
        }
        opened
    }

    /// Looks ahead over the coming readings (with copies of the generator and the alarm states)
    /// for the first reading or silence that would open an alarm episode, so the patient is
    /// visited then and not every day.
    fn predict_alarm(&mut self, s: &Setup, from: i64) {
        self.alarms_changed = false;
        self.alarm_due = i64::MAX;
        let info = &s.infos[self.prog];
        if self.life != Life::Active
            || self.dead
            || !self
                .alarms
                .iter()
                .any(|a| info.alarms[usize::from(a.alarm)].rule.is_some())
        {
            return;
        }
        let limit = from + LOOKAHEAD;
        let mut rng = self.obs_rng.clone();
        let mut cursor = self.cursor.clone();
        let mut state: Vec<(u16, AlarmState)> = self
            .alarms
            .iter()
            .map(|a| (a.alarm, a.state.clone()))
            .collect();
        let mut open = self.open_alarms.clone();
        loop {
            let next = next_slot(&cursor).filter(|(t, _)| *t <= limit);
            // A silence whose alarm is already open opens nothing: no visit needed for it.
            let silent = silence_due(
                info,
                state
                    .iter()
                    .filter(|(a, _)| !open.contains(a))
                    .map(|(a, st)| (*a, st)),
            );
            if let Some((due, _)) = silent
                && due <= limit
                && next.is_none_or(|(t, _)| due <= t)
            {
                self.alarm_due = due;
                return;
            }
            let Some((t, g)) = next else {
                self.alarm_due = if next_slot(&cursor).is_some() {
                    limit
                } else {
                    i64::MAX
                };
                return;
            };
            cursor[g] = t + reading_interval(&s.obs[info.groups[g][0]]);
            let mut values = [f64::NAN; 16];
            if !draw_reading(
                s,
                info,
                &self.levels,
                self.profile.adherence,
                self.enrol_at,
                &mut rng,
                g,
                t,
                &mut values,
            ) {
                continue;
            }
            let edges = feed_alarms(info, state.iter_mut().map(|(a, st)| (*a, st)), &values, t);
            for (alarm, edge) in edges {
                match edge {
                    Some(Edge::Raised) if !open.contains(&alarm) => {
                        self.alarm_due = t;
                        return;
                    }
                    Some(Edge::Cleared) => open.retain(|a| *a != alarm),
                    _ => {}
                }
            }
        }
    }

    fn record(&mut self, info: &PathwayInfo, k: usize, v: f64, t: i64) {
        if info.guard_obs[k].is_some() {
            self.facts.observations.push(Observation {
                kind: catalog::OBSERVATIONS[k].0.to_string(),
                value: v,
                at: ts(t),
            });
            // Old readings are dropped now and then (guards read their own windows anyway); the
            // newest of each kind always stays, for `latest`.
            if self.facts.observations.len() > self.obs_trim_at {
                let kinds: Vec<(&str, i64)> = info
                    .guard_obs
                    .iter()
                    .enumerate()
                    .filter_map(|(k, w)| w.map(|w| (catalog::OBSERVATIONS[k].0, w)))
                    .collect();
                let mut latest = vec![i64::MIN; kinds.len()];
                for o in &self.facts.observations {
                    if let Some(i) = kinds.iter().position(|(n, _)| *n == o.kind) {
                        latest[i] = latest[i].max(o.at.as_second());
                    }
                }
                self.facts.observations.retain(|o| {
                    match kinds.iter().position(|(n, _)| *n == o.kind) {
                        Some(i) => {
                            let at = o.at.as_second();
                            at == latest[i] || at > t - kinds[i].1
                        }
                        None => true,
                    }
                });
                self.obs_trim_at = self.facts.observations.len() + 8;
            }
        }
        if info.goal_obs[k].is_some() {
            self.goal_log.push((k as u8, v as f32, t));
            if self.goal_log.len() > self.goal_trim_at {
                self.goal_log.retain(|(kind, _, at)| {
                    *at > t - info.goal_obs[usize::from(*kind)].unwrap_or(0)
                });
                self.goal_trim_at = self.goal_log.len() + 16;
            }
        }
    }

    fn goal_met(&self, s: &Setup, g: &GoalModel, t: i64) -> bool {
        let since = t - g.over;
        let readings = self
            .goal_log
            .iter()
            .filter(|(k, _, at)| usize::from(*k) == g.kind && *at > since && *at <= t);
        if let Some((cond, at_least)) = &g.share {
            let Some(cond) = cond else { return false };
            let (mut n, mut hit) = (0u32, 0u32);
            for (_, v, _) in readings {
                n += 1;
                if cond.holds(&[f64::from(*v)]) {
                    hit += 1;
                }
            }
            n > 0 && f64::from(hit) / f64::from(n) >= *at_least
        } else {
            let mut days: Vec<usize> = readings.map(|(_, _, at)| s.day_of(*at)).collect();
            days.dedup();
            days.len() as u32 >= g.days.unwrap_or(1)
        }
    }

    fn create_task(
        &mut self,
        cx: &mut Cx,
        m: &TaskModel,
        due: i64,
        keep: bool,
        state_seq: u32,
        t: i64,
    ) {
        let no = self.next_task;
        self.next_task += 1;
        self.tasks.push(OpenTask {
            no,
            ref_ix: m.ref_ix,
            role: m.role,
            prio: m.prio,
            keep,
            state_seq,
            created: t,
            due,
            escalate_after: m.escalate_after,
        });
        let role = usize::from(m.role);
        cx.tally.roles[role].created += 1;
        cx.tally.path[self.prog].tasks_created += 1;
        let day = cx.s.day_of(t);
        cx.tally.created_by_day[day * cx.s.roles.len() + role] += 1;
        // Some tasks are never done; some cannot be done until the patient comes in.
        let info = &cx.s.infos[self.prog];
        let (missed, ready) = match info.task_behaviour.get(usize::from(m.ref_ix)) {
            Some((missed, ready)) => (*missed, ready.as_ref()),
            None => (info.missed_default, None),
        };
        if missed > 0.0 && self.rng.chance(missed) {
            return;
        }
        match ready {
            Some(d) => {
                let at = t + d.sample(&mut self.rng).max(0.0) as i64;
                self.schedule(at, Item::TaskReady(no), cx.horizon);
            }
            None => self.queue_task(cx, no, t),
        }
    }

    /// Puts an open task in its staff queue.
    fn queue_task(&mut self, cx: &mut Cx, no: u32, t: i64) {
        let Some(k) = self.tasks.iter().find(|k| k.no == no) else {
            return;
        };
        let q = cx.s.queue(self.profile.institution, k.role) as u32;
        cx.new_tasks.push((q, (k.prio, k.due, t, self.idx, no)));
    }

    /// Closes a task in the tallies: done (with whether a call reached the patient), cancelled,
    /// or still open when the run ends. As the store counts a period ending at the horizon: a
    /// task is due when its due time is before the horizon and it was not cancelled.
    fn close_task(&mut self, cx: &mut Cx, task: &OpenTask, done: Option<bool>, at: i64) {
        self.close_task_with(cx, task, done, None, at);
    }

    /// [`Patient::close_task`], with the outcome staff recorded when the task was done.
    fn close_task_with(
        &mut self,
        cx: &mut Cx,
        task: &OpenTask,
        done: Option<bool>,
        outcome: Option<&str>,
        at: i64,
    ) {
        cx.closed.push((self.idx, task.no));
        let info = &cx.s.infos[self.prog];
        if cx.s.export {
            let status = match done {
                Some(_) => replay::TaskStatus::Done,
                None if at >= cx.horizon => replay::TaskStatus::Open,
                None => replay::TaskStatus::Cancelled,
            };
            cx.tally.cohort.tasks.push(replay::Task {
                patient: self.idx,
                institution: cx.s.institutions[self.profile.institution].id.clone(),
                task_ref: (task.ref_ix != NO_REF)
                    .then(|| info.task_ids[usize::from(task.ref_ix)].clone()),
                role: cx.s.roles[usize::from(task.role)].clone(),
                created_at: task.created,
                due_at: task.due,
                status,
                closed_at: (status != replay::TaskStatus::Open).then_some(at),
                outcome: outcome.map(str::to_string),
            });
        }
        let call = task.ref_ix != NO_REF && info.follow_up_calls[usize::from(task.ref_ix)];
        let r = &mut cx.tally.roles[usize::from(task.role)];
        let p = &mut cx.tally.path[self.prog];
        let cancelled = done.is_none() && at < cx.horizon;
        if !cancelled && task.due < cx.horizon {
            let on_time = done.is_some() && at <= task.due;
            r.due += 1;
            p.tasks_due += 1;
            if on_time {
                r.on_time += 1;
                p.tasks_on_time += 1;
            } else {
                p.tasks_overdue += 1;
            }
            if call && !self.follow_up_due {
                self.follow_up_due = true;
                p.follow_up_due += 1;
            }
            if call && done == Some(true) && !self.followed_up {
                self.followed_up = true;
                p.followed_up += 1;
            }
        }
        if (done.is_some() || at >= task.due)
            && task.escalate_after.is_some_and(|e| at > task.due + e)
        {
            r.escalated += 1;
        }
        match done {
            Some(_) => {
                r.done += 1;
                p.tasks_done += 1;
                let day = cx.s.day_of(at);
                cx.tally.done_by_day[day * cx.s.roles.len() + usize::from(task.role)] += 1;
            }
            None if at >= cx.horizon => {
                r.open_at_end += 1;
                if task.due <= at {
                    r.overdue_at_end += 1;
                }
            }
            None => {
                r.cancelled += 1;
                p.tasks_cancelled += 1;
            }
        }
    }

    /// Push `push` is answered or expires: false when it had already ended (cancelled).
    fn settle_push(&mut self, push: u32) -> bool {
        let Some(i) = self.pushes.iter().position(|p| p.id == push) else {
            return false;
        };
        self.pushes.swap_remove(i);
        true
    }

    /// Staff completed task `no` at `t`.
    fn complete(&mut self, cx: &mut Cx, no: u32, t: i64) -> bool {
        let Some(i) = self.tasks.iter().position(|k| k.no == no) else {
            return false;
        };
        let task = self.tasks.swap_remove(i);
        let info = &cx.s.infos[self.prog];
        if task.ref_ix == NO_REF {
            self.close_task(cx, &task, Some(false), t);
            return false;
        }
        let (names, weights) = &info.outcomes[usize::from(task.ref_ix)];
        let mut outcome = names[self.rng.weighted(weights)].clone();
        if self.dead && names.iter().any(|n| n == "unreachable") {
            outcome = "unreachable".into();
        }
        let reached = carepath_engine::indicators::reached(Some(&outcome));
        self.close_task_with(cx, &task, Some(reached), Some(&outcome), t);
        if self.life != Life::Active {
            return false;
        }
        let id = &info.task_ids[usize::from(task.ref_ix)];
        if info.outcome_read[usize::from(task.ref_ix)] {
            match self.facts.outcomes.iter_mut().find(|(k, _)| k == id) {
                Some(slot) => slot.1 = outcome,
                None => self.facts.outcomes.push((id.clone(), outcome)),
            }
        }
        self.push_event(info, format!("task_done:{id}"), t)
    }

    fn step(&mut self, cx: &mut Cx, t: i64) {
        let s = cx.s;
        let info = &s.infos[self.prog];
        self.facts.open_tasks = self.tasks.len() as i64;
        self.facts.overdue_tasks = self.tasks.iter().filter(|k| k.due < t).count() as i64;
        if info.uses_goal_met {
            self.facts.goals_met = info
                .goals
                .iter()
                .filter(|g| self.goal_met(s, g, t))
                .map(|g| g.id.clone())
                .collect();
        }
        let Some(e) = &self.enrolment else { return };
        cx.tally.path[self.prog].steps += 1;
        match step::step(&s.programs[self.prog], e, &self.facts, &self.pending, ts(t)) {
            Ok(o) => self.apply(cx, o, t),
            Err(err) => self.fail(cx, err.to_string(), t),
        }
    }

    fn fail(&mut self, cx: &mut Cx, message: String, t: i64) {
        cx.tally.path[self.prog].errors += 1;
        cx.tally.errors.push((self.idx, message));
        // As the store leaves it: an enrolment in error keeps its kept tasks.
        let cause = Cause::EnrolmentEnded {
            keep_open_tasks: true,
        };
        self.end_work(cx, Scope::Every, cause, t);
        self.end(t);
    }

    /// The enrolment ended (its work has been ended by the outcome policy): nothing more happens
    /// to it.
    fn end(&mut self, t: i64) {
        self.life = Life::Ended;
        self.ended_at = Some(t);
        self.alarms_changed = true;
        self.alarm_due = i64::MAX;
        // The end of an enrolment ends its open alarm episodes.
        self.open_alarms.clear();
        self.pending.clear();
        self.facts.observations.clear();
        self.facts.events.clear();
    }

    /// Ends the open work in `scope` that the outcome policy says `cause` ends.
    fn end_work(&mut self, cx: &mut Cx, scope: Scope<'_>, cause: Cause, at: i64) {
        let info = &cx.s.infos[self.prog];
        let named =
            |ids: &'_ [String], ix: u16| (ix != NO_REF).then(|| ids[usize::from(ix)].clone());
        let task_ref = |ix: u16| named(&info.task_ids, ix);
        let work_ref = |ix: u16| named(&info.work_ids, ix);
        let mut i = 0;
        while i < self.tasks.len() {
            let task = &self.tasks[i];
            if scope.holds(task.state_seq, task_ref(task.ref_ix).as_deref())
                && outcome::ends(Work::Task { keep: task.keep }, cause)
            {
                let task = self.tasks.swap_remove(i);
                if let Some(j) = cx.journal.as_deref_mut() {
                    j.ended(Open::Task, task.no);
                }
                self.close_task(cx, &task, None, at);
            } else {
                i += 1;
            }
        }
        let before = self.follow_ups.len();
        let journal = &mut cx.journal;
        self.follow_ups.retain(|f| {
            let ends = scope.holds(f.state_seq, work_ref(f.ref_ix).as_deref())
                && carepath_dsl::policy::ends_at(Work::FollowUp, cause, f.send_at, at);
            if let (true, Some(j)) = (ends, journal.as_deref_mut()) {
                j.ended(Open::FollowUp, f.id);
            }
            !ends
        });
        cx.tally.path[self.prog].follow_ups_cancelled += (before - self.follow_ups.len()) as u64;
        // An ended push is never answered and never expires: its agenda items find it gone.
        self.pushes.retain(|p| {
            let ends = scope.holds(p.state_seq, work_ref(p.ref_ix).as_deref())
                && outcome::ends(Work::ScalePush, cause);
            if let (true, Some(j)) = (ends, journal.as_deref_mut()) {
                j.ended(Open::Push, p.id);
            }
            !ends
        });
        let armed = self.alarms.len();
        self.alarms.retain(|a| {
            !(scope.holds(a.state_seq, None) && outcome::ends(Work::Alarm(a.scope), cause))
        });
        self.alarms_changed |= armed != self.alarms.len();
    }

    /// A task the step made in a state it had already left: stored as cancelled, so counted as
    /// made and cancelled, and never queued.
    fn born_cancelled(&self, cx: &mut Cx, role: u16, at: i64) {
        let role = usize::from(role);
        cx.tally.roles[role].created += 1;
        cx.tally.roles[role].cancelled += 1;
        let p = &mut cx.tally.path[self.prog];
        p.tasks_created += 1;
        p.tasks_cancelled += 1;
        let day = cx.s.day_of(at);
        cx.tally.created_by_day[day * cx.s.roles.len() + role] += 1;
    }

    /// Applies a step's outcome through the engine's outcome policy, then takes on the
    /// enrolment it returns.
    fn apply(&mut self, cx: &mut Cx, o: Outcome, t: i64) {
        outcome::apply(
            &o,
            &mut Applying {
                patient: self,
                cx,
                t,
            },
        );
        let info = &cx.s.infos[self.prog];
        self.state = info.state(&o.enrolment.state);
        let status = o.enrolment.status;
        let last = o.enrolment.last_event_seq;
        self.wake = o.next_wake.map_or(i64::MAX, |w| w.as_second());
        self.enrolment = Some(o.enrolment);
        self.pending.retain(|p| p.seq > last);
        if status != Status::Active {
            cx.tally.path[self.prog].completed += u64::from(status == Status::Completed);
            cx.tally.ended_in[info.state_off + self.state] += 1;
            self.end(t);
        }
    }

    /// One action of a step; `ended` when it was made in a state the step had already left.
    fn action(&mut self, cx: &mut Cx, a: &Emitted, ended: bool, t: i64) {
        let s = cx.s;
        let info = &s.infos[self.prog];
        let at = a.at.as_second().max(t);
        match &a.action {
            Produced::Task {
                task_ref,
                role,
                due_at,
                priority,
                sla,
                keep,
                covers_critical,
                ..
            } => {
                let role = s.roles.iter().position(|r| r == role).unwrap_or(0) as u16;
                if ended {
                    Journal::made(cx, a, Fate::BornEnded, None);
                    self.born_cancelled(cx, role, at);
                    return;
                }
                if let Some(scale) = covers_critical {
                    self.cover_critical(cx, scale, at);
                }
                let m = TaskModel {
                    ref_ix: task_ref
                        .as_ref()
                        .and_then(|r| info.task_ids.iter().position(|x| x == r))
                        .map_or(NO_REF, |i| i as u16),
                    role,
                    due: 0,
                    prio: 3 - *priority as u8,
                    escalate_after: sla.as_ref().and_then(|x| x.escalate_after).map(seconds_of),
                };
                Journal::made(cx, a, Fate::Live, Some((Open::Task, self.next_task)));
                self.create_task(cx, &m, due_at.as_second(), *keep, a.state_seq, at);
            }
            Produced::FollowUp {
                channels, send_at, ..
            } => {
                let send = send_at.as_second().max(at);
                if ended {
                    Journal::made(cx, a, Fate::BornEnded, None);
                    cx.tally.path[self.prog].follow_ups_cancelled += u64::from(send <= cx.horizon);
                } else if send <= cx.horizon {
                    self.next_follow_up += 1;
                    let id = self.next_follow_up;
                    Journal::made(cx, a, Fate::Live, Some((Open::FollowUp, id)));
                    self.follow_ups.push(FollowUpSlot {
                        id,
                        ref_ix: info.work_ref(a.action.work_ref()),
                        state_seq: a.state_seq,
                        send_at: send_at.as_second(),
                        channels: channels.clone(),
                    });
                    self.schedule(send, Item::FollowUp(id), cx.horizon);
                }
            }
            Produced::ScalePush {
                scale,
                due_at,
                expires_at,
                ..
            } => {
                if ended {
                    Journal::made(cx, a, Fate::BornEnded, None);
                    return;
                }
                self.next_push += 1;
                let push = self.next_push;
                Journal::made(cx, a, Fate::Live, Some((Open::Push, push)));
                self.pushes.push(PushSlot {
                    id: push,
                    ref_ix: info.work_ref(a.action.work_ref()),
                    state_seq: a.state_seq,
                });
                let Some(ix) = scale_index(scale) else {
                    return;
                };
                // Counted when pushed, as the store counts pushes created in a period.
                cx.tally.path[self.prog].scales_pushed += 1;
                if s.export {
                    cx.tally.cohort.scale_pushes.push(replay::ScalePush {
                        patient: self.idx,
                        institution: s.institutions[self.profile.institution].id.clone(),
                        scale: scale.to_string(),
                        created_at: at,
                        due_at: due_at.as_second(),
                        answered_at: None,
                    });
                }
                let m = &s.scales[ix];
                let mut answered = false;
                if !self.dead && self.rng.chance(m.answer) {
                    let delay = m.delay.sample(&mut self.rng).max(60.0) as i64;
                    let cutoff = expires_at
                        .map(|e| e.as_second())
                        .unwrap_or(due_at.as_second() + 7 * DAY);
                    if at + delay <= cutoff {
                        answered = true;
                        self.schedule(
                            at + delay,
                            Item::ScaleAnswer {
                                scale: ix as u8,
                                push,
                            },
                            cx.horizon,
                        );
                    }
                }
                if let (false, Some(expires)) = (answered, expires_at) {
                    self.schedule(
                        expires.as_second(),
                        Item::ScaleExpired {
                            scale: ix as u8,
                            push,
                        },
                        cx.horizon,
                    );
                }
            }
            Produced::AlarmArmed { alarm } => {
                if ended {
                    return;
                }
                if let Some(i) = info.alarms.iter().position(|x| x.id == alarm.id) {
                    self.alarms_changed = true;
                    self.alarms.retain(|x| usize::from(x.alarm) != i);
                    self.alarms.push(Armed {
                        alarm: i as u16,
                        scope: alarm.scope,
                        state_seq: a.state_seq,
                        state: AlarmState::armed(alarm, at),
                    });
                }
            }
            Produced::Referral { direction, to, .. } => {
                let p = &mut cx.tally.path[self.prog];
                let (direction, to) = (*direction, *to);
                match direction {
                    Direction::Up => p.referrals_up += 1,
                    Direction::Down => p.referrals_down += 1,
                }
                if s.export {
                    cx.tally.cohort.referrals.push(replay::Referral {
                        patient: self.idx,
                        direction: match direction {
                            Direction::Up => "up",
                            Direction::Down => "down",
                        }
                        .into(),
                        from_institution: s.institutions[self.profile.institution].id.clone(),
                        to_kind: to.as_str().into(),
                        requested_at: at,
                    });
                }
                let flow = s.flow(self.prog, direction, self.profile.institution, to);
                cx.tally.flows[flow].count += 1;
                let m = &s.referral[usize::from(direction == Direction::Down)];
                let r = self.rng.unit_f();
                let delay = m.delay.sample(&mut self.rng).max(60.0) as i64;
                if r < m.accepted {
                    self.schedule(
                        at + delay,
                        Item::Referral {
                            what: 0,
                            flow: flow as u32,
                        },
                        cx.horizon,
                    );
                    if self.rng.chance(m.arrived) {
                        let more = m.arrive_delay.sample(&mut self.rng).max(60.0) as i64;
                        self.schedule(
                            at + delay + more,
                            Item::Referral {
                                what: 2,
                                flow: flow as u32,
                            },
                            cx.horizon,
                        );
                    }
                } else if r < m.accepted + m.rejected {
                    self.schedule(
                        at + delay,
                        Item::Referral {
                            what: 1,
                            flow: flow as u32,
                        },
                        cx.horizon,
                    );
                }
            }
            // What a cancel ends, `outcome::apply` has ended through `end_work`.
            Produced::Risk { .. }
            | Produced::GoalSet { .. }
            | Produced::Note { .. }
            | Produced::Cancel { .. } => {}
        }
    }

    /// At the end of the run: open work, goals for the pathway's indicators.
    pub(crate) fn finish(&mut self, cx: &mut Cx) {
        let h = cx.horizon;
        // Readings nobody needed yet, for the indicators.
        while self.catch_up(cx, h).is_some() {}
        for task in std::mem::take(&mut self.tasks) {
            self.close_task(cx, &task, None, h);
        }
        if self.life == Life::Waiting {
            return;
        }
        if cx.s.export {
            self.export_enrolment(cx);
        }
        let info = &cx.s.infos[self.prog];
        let at = self.ended_at.unwrap_or(h);
        for (i, ind) in info.indicators.iter().enumerate() {
            let Some(g) = ind.goal else { continue };
            cx.tally.path[self.prog].indicator_of[i] += 1;
            if self.goal_met(cx.s, &info.goals[g], at) {
                cx.tally.path[self.prog].indicator_met[i] += 1;
            }
        }
    }
}

impl Patient {
    /// An event of the enrolment, for the exported cohort.
    fn export_event(&self, cx: &mut Cx, name: &str, at: i64) {
        if cx.s.export {
            cx.tally.cohort.events.push(replay::Event {
                patient: self.idx,
                name: name.to_string(),
                at,
            });
        }
    }

    /// The enrolment as it stands at the end of the run, for the exported cohort.
    fn export_enrolment(&self, cx: &mut Cx) {
        let s = cx.s;
        let pathway = &s.programs[self.prog].pathway;
        let entry = &pathway.entry_points[self.profile.entry.min(pathway.entry_points.len() - 1)];
        let status = match (self.ended_at, self.enrolment.as_ref().map(|e| e.status)) {
            (None, _) => Status::Active.as_str(),
            (Some(_), Some(st)) if st != Status::Active => st.as_str(),
            (Some(_), _) => Status::Error.as_str(),
        };
        cx.tally.cohort.enrolments.push(replay::Enrolment {
            patient: self.idx,
            institution: s.institutions[self.profile.institution].id.clone(),
            pathway: pathway.id.clone(),
            version: i64::from(pathway.version),
            entry_point: entry.id.clone(),
            state: self
                .enrolment
                .as_ref()
                .map_or_else(|| entry.state.clone(), |e| e.state.clone()),
            enrolled_at: self.enrol_at,
            ended_at: self.ended_at,
            status: status.to_string(),
        });
    }
}

/// A patient taking a step's outcome: the engine's policy decides what ends, the patient carries
/// it out.
struct Applying<'p, 'c, 's> {
    patient: &'p mut Patient,
    cx: &'c mut Cx<'s>,
    t: i64,
}

impl OutcomeSink for Applying<'_, '_, '_> {
    fn transition(&mut self, taken: &Taken) {
        let info = &self.cx.s.infos[self.patient.prog];
        let from = info.state(&taken.from);
        let to = info.state(&taken.to);
        if let Some(slot) = self.cx.tally.taken.get_mut(info.t_off[from] + taken.index) {
            *slot += 1;
        }
        self.cx.tally.visits[info.state_off + to] += 1;
        self.patient.fire_rules(self.cx, Hit::State(to), self.t);
    }

    fn end_work(&mut self, scope: Scope<'_>, cause: Cause, because: Because<'_>) {
        let at = because.at().as_second();
        self.patient.end_work(self.cx, scope, cause, at);
    }

    fn action(&mut self, action: &Emitted, ended: Option<Because<'_>>) {
        self.patient
            .action(self.cx, action, ended.is_some(), self.t);
    }

    fn risk(&mut self, result: RiskResult) {
        let p = &mut *self.patient;
        if self.cx.s.infos[p.prog].guard_risks.contains(&result.model) {
            p.facts.risks.retain(|r| r.model != result.model);
            p.facts.risks.push(result);
        }
    }
}

/// The life events that `hit` (an enrolment, an event, entering a state) sets off at `t`, by the
/// pathway's rules: (event index, when), drawn from the patient's generator.
pub(crate) fn life_events(
    info: &PathwayInfo,
    hit: Hit,
    rng: &mut SplitMix,
    t: i64,
) -> Vec<(u16, i64)> {
    let mut out = Vec::new();
    for r in &info.rules {
        let matched = match (&r.anchor, hit) {
            (Anchor::Enrolled(None), Hit::Enrolled(_)) => true,
            (Anchor::Enrolled(Some(e)), Hit::Enrolled(x)) => *e == x,
            (Anchor::Hazard(_), Hit::Enrolled(_)) => true,
            (Anchor::Event(e), Hit::Event(x)) => *e == x,
            (Anchor::State, Hit::State(s)) => info.state_listens[s].contains(&r.event),
            _ => false,
        };
        if !matched {
            continue;
        }
        let delay = match r.anchor {
            Anchor::Hazard(rate) => rng.exponential(1.0 / rate),
            _ => {
                if !rng.chance(r.probability) {
                    continue;
                }
                r.delay.sample(rng)
            }
        };
        out.push((r.event, t + delay.max(0.0) as i64));
    }
    out
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Hit {
    Enrolled(usize),
    Event(u16),
    State(usize),
}

/// How far ahead a patient with armed alarms looks for the next alarm.
const LOOKAHEAD: i64 = 28 * DAY;

/// The earliest reading slot: (time, group), the lower group first on a tie.
pub(crate) fn next_slot(cursor: &[i64]) -> Option<(i64, usize)> {
    let mut best: Option<(i64, usize)> = None;
    for (g, t) in cursor.iter().enumerate() {
        if *t != i64::MAX && best.is_none_or(|(b, _)| *t < b) {
            best = Some((*t, g));
        }
    }
    best
}

/// One reading of group `g` at `t`, drawn from `rng` into `values`; false when the patient does
/// not take it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn draw_reading(
    s: &Setup,
    info: &PathwayInfo,
    levels: &[(f64, f64)],
    adherence: f64,
    enrol_at: i64,
    rng: &mut SplitMix,
    g: usize,
    t: i64,
    values: &mut [f64; 16],
) -> bool {
    let group = &info.groups[g];
    let m0 = &s.obs[group[0]];
    if !rng.chance(adherence * m0.per_day.min(1.0)) {
        return false;
    }
    // Values read together are correlated (systolic and diastolic pressure).
    let (shared, own) = rng.normal_pair();
    for (j, k) in group.iter().enumerate() {
        let m = &s.obs[*k];
        let (base, drift) = levels[*k];
        values[*k] = match m.probability {
            Some(_) => f64::from(u8::from(rng.chance(base))),
            None => {
                let z = if j == 0 {
                    shared
                } else {
                    0.6 * shared + 0.8 * own
                };
                let level = base + drift * (t - enrol_at) as f64;
                let v = (level + m.noise * z).clamp(m.min, m.max);
                if m.round { v.round() } else { v }
            }
        };
    }
    true
}

/// Feeds a reading to the armed rules (the core's rule machine, as the store runs it); returns
/// the edges, by alarm.
fn feed_alarms<'a>(
    info: &PathwayInfo,
    alarms: impl Iterator<Item = (u16, &'a mut AlarmState)>,
    values: &[f64; 16],
    t: i64,
) -> Vec<(u16, Option<Edge>)> {
    let read = values
        .iter()
        .enumerate()
        .fold(0u64, |m, (k, v)| if v.is_nan() { m } else { m | (1 << k) });
    let mut edges = Vec::new();
    for (alarm, st) in alarms {
        let model = &info.alarms[usize::from(alarm)];
        let Some(rule) = &model.rule else { continue };
        if model.kinds & read == 0 {
            continue;
        }
        if let Some(edge) = rule.feed(st, values, t) {
            edges.push((alarm, Some(edge)));
        }
    }
    edges
}

/// The earliest moment an armed no-reading rule's silence lasts its `for`, and the rule's index
/// among those given.
fn silence_due<'a>(
    info: &PathwayInfo,
    alarms: impl Iterator<Item = (u16, &'a AlarmState)>,
) -> Option<(i64, usize)> {
    alarms
        .enumerate()
        .filter_map(|(i, (alarm, st))| {
            let rule = info.alarms[usize::from(alarm)].rule.as_ref()?;
            rule.silence_due(st).map(|due| (due, i))
        })
        .min()
}

pub(crate) fn reading_interval(m: &ObsModel) -> i64 {
    if m.per_day > 1.0 {
        (DAY as f64 / m.per_day.round()).max(60.0) as i64
    } else {
        DAY
    }
}
