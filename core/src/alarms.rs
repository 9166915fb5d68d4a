//! Alarm rules over a patient's stream of readings: debounce, hysteresis and silence.
//!
//! A rule is a small state machine fed one reading at a time, in reading-time order. It is
//! *raised* when its condition has held long enough (debounce: `count` matching readings within a
//! window, or an unbroken run of `consecutive` matching readings lasting `for`), stays raised
//! (latched) whatever the following readings say, and is *cleared* only when its clear condition
//! has held long enough (hysteresis) — or, without `clear:`, at the first reading for which the
//! raising condition no longer holds. A no-reading rule is raised by silence instead: once the
//! latest reading of its kind (or the arming of the rule, if later) is `for` old, and cleared by
//! the next reading of that kind.
//!
//! A condition may read the lowest or highest value of a kind over a recent window
//! (`weight - min("weight", "3d") >= 2`): the rule keeps the readings it has judged since it was
//! armed that can still be a window's extreme — a reading is dropped once it leaves the longest
//! window of its kind, or once a later reading is at least as low (for `min`) and as high (for
//! `max`) — so the window is exact without the patient's history being reread.
//!
//! The store (on every batch of readings, and in the scheduler's sweep for silence) and the
//! simulator (on every simulated reading, and at the instant silence is due) run exactly this code;
//! each keeps an [`AlarmState`] per armed rule and acts on the [`Edge`]s it returns. The state is
//! plain serialisable data, bounded in size (at most `count` instants, and the window readings
//! that can still be an extreme), so the store keeps it in the rule's row and never rereads the
//! patient's history.

use std::collections::HashMap;

use carepath_dsl::condition::{Condition, ConditionError, Window};
use carepath_dsl::{AlarmSpec, catalog};
use serde::{Deserialize, Serialize};

/// A rule changed: raised (an episode opens) or cleared (the open episode closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    Raised,
    Cleared,
}

/// How long a condition must hold: at least `readings` matching readings in a row, spanning at
/// least `span` seconds from the first to the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunNeed {
    readings: u32,
    span: i64,
}

impl RunNeed {
    fn of(consecutive: Option<u32>, held_for: Option<carepath_dsl::Duration>) -> RunNeed {
        RunNeed {
            readings: consecutive.unwrap_or(1).max(1),
            span: held_for.map_or(0, |d| d.nominal_seconds()),
        }
    }

    fn met(self, run: Option<Run>, at: i64) -> bool {
        run.is_some_and(|r| r.readings >= self.readings && at - r.since >= self.span)
    }
}

/// What raises a reading rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Debounce {
    /// At least `count` matching readings in the window `(at - within, at]`.
    Window { count: usize, within: i64 },
    /// An unbroken run of matching readings.
    Run(RunNeed),
}

#[derive(Debug, Clone, PartialEq)]
enum Trigger {
    Readings {
        when: Box<Condition>,
        debounce: Debounce,
        /// `None`: cleared as soon as the raising condition no longer holds.
        clear: Option<Box<(Condition, RunNeed)>>,
    },
    Silence {
        slot: usize,
        after: i64,
    },
}

/// An alarm rule compiled for evaluation: its conditions compiled once by
/// `carepath_dsl::condition`, the evaluator the validator accepts them by.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmRule {
    trigger: Trigger,
    /// Observation kinds (slots) the rule reads, as a bit set: other readings leave it as it is.
    kinds: u64,
    /// The kinds its window functions read: what readings the rule keeps, and for how long.
    kept: Vec<Kept>,
}

/// One kind's readings kept for window functions: for the longest window over it, and for the
/// lowest, the highest or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kept {
    slot: usize,
    within: i64,
    lowest: bool,
    highest: bool,
}

impl Kept {
    fn of(conditions: &[&Condition]) -> Vec<Kept> {
        let mut kept: Vec<Kept> = Vec::new();
        for u in conditions.iter().flat_map(|c| c.windows()) {
            let k = match kept.iter_mut().find(|k| k.slot == u.slot) {
                Some(k) => k,
                None => {
                    kept.push(Kept {
                        slot: u.slot,
                        within: 0,
                        lowest: false,
                        highest: false,
                    });
                    kept.last_mut().expect("just pushed")
                }
            };
            k.within = k.within.max(u.within);
            k.lowest |= !u.highest;
            k.highest |= u.highest;
        }
        kept
    }
}

/// A kept reading's value: its instant, its kind's slot and its value.
pub type Sample = (i64, usize, f64);

/// The kept readings as of the reading being judged at `at`.
struct Recent<'a> {
    samples: &'a [Sample],
    at: i64,
}

impl Window for Recent<'_> {
    fn extreme(&self, slot: usize, within: i64, highest: bool) -> f64 {
        let mut out = f64::NAN;
        for &(t, s, v) in self.samples {
            if s == slot && t > self.at - within && t <= self.at {
                let better = if highest { v > out } else { v < out };
                if out.is_nan() || better {
                    out = v;
                }
            }
        }
        out
    }
}

/// A run of matching readings: when it began and how many readings it has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub since: i64,
    pub readings: u32,
}

impl Run {
    fn extended(run: Option<Run>, at: i64) -> Run {
        match run {
            Some(r) => Run {
                since: r.since,
                readings: r.readings.saturating_add(1),
            },
            None => Run {
                since: at,
                readings: 1,
            },
        }
    }
}

/// Where an armed rule stands. A freshly armed rule's state is [`AlarmState::armed`]; after that
/// only [`AlarmRule::feed`] and [`AlarmRule::check_silence`] change it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmState {
    /// Raised and not cleared since.
    #[serde(default)]
    pub latched: bool,
    /// How many times the rule was raised: numbers its episodes.
    #[serde(default)]
    pub raised: u32,
    /// The latest reading the rule has judged; for a no-reading rule, the latest reading of its
    /// kind, or the arming of the rule if there was none since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<i64>,
    /// A window rule: the instants of its latest matching readings (at most `count`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<i64>,
    /// A run rule: the current run of readings for which the raising condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
    /// While latched: the current run of readings for which the clear condition holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_run: Option<Run>,
    /// The readings a window function may still need, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window: Vec<Sample>,
}

impl AlarmState {
    /// The state of `spec` armed at `at`: a no-reading rule counts its silence from there.
    pub fn armed(spec: &AlarmSpec, at: i64) -> AlarmState {
        AlarmState {
            last_at: spec.no_reading.as_ref().map(|_| at),
            ..AlarmState::default()
        }
    }
}

/// The slot of an observation kind in a reading's values (`catalog::OBSERVATIONS` order).
pub fn slot_of(kind: &str) -> Option<usize> {
    catalog::OBSERVATIONS.iter().position(|(k, _)| *k == kind)
}

fn slot(values: &[f64], i: usize) -> f64 {
    values.get(i).copied().unwrap_or(f64::NAN)
}

impl AlarmRule {
    /// Compiles `spec`; an error says which condition is not a reading condition, or that the
    /// rule has neither `when` nor a known `no_reading` kind (the validator refuses both).
    pub fn compile(spec: &AlarmSpec) -> Result<AlarmRule, ConditionError> {
        let bits = |c: &Condition| c.slots().iter().fold(0u64, |m, s| m | (1 << s));
        if let Some(silent) = &spec.no_reading {
            let slot = slot_of(&silent.kind).ok_or_else(|| ConditionError {
                message: format!("unknown observation kind `{}`", silent.kind),
                line: 1,
                col: 1,
            })?;
            return Ok(AlarmRule {
                trigger: Trigger::Silence {
                    slot,
                    after: silent.after.nominal_seconds(),
                },
                kinds: 1 << slot,
                kept: Vec::new(),
            });
        }
        let Some(when) = &spec.when else {
            return Err(ConditionError {
                message: "the alarm rule has neither `when` nor `no_reading`".into(),
                line: 1,
                col: 1,
            });
        };
        let when = Condition::alarm(&when.0)?;
        let debounce = if spec.consecutive.is_some() || spec.held_for.is_some() {
            Debounce::Run(RunNeed::of(spec.consecutive, spec.held_for))
        } else {
            Debounce::Window {
                count: spec.count.max(1) as usize,
                within: spec.within.nominal_seconds(),
            }
        };
        let clear = match &spec.clear {
            Some(c) => Some(Box::new((
                Condition::alarm(&c.when.0)?,
                RunNeed::of(c.consecutive, c.held_for),
            ))),
            None => None,
        };
        let kinds = bits(&when) | clear.as_ref().map_or(0, |c| bits(&c.0));
        let mut conditions = vec![&when];
        if let Some(c) = &clear {
            conditions.push(&c.0);
        }
        let kept = Kept::of(&conditions);
        Ok(AlarmRule {
            trigger: Trigger::Readings {
                when: Box::new(when),
                debounce,
                clear,
            },
            kinds,
            kept,
        })
    }

    /// Adds a reading's values of the kinds kept for windows, and drops what no window can need
    /// any more: readings older than their kind's longest window, and readings a later one is at
    /// least as low as (when only the lowest is read) or as high as (only the highest), or both.
    fn keep(&self, window: &mut Vec<Sample>, values: &[f64], at: i64) {
        for k in &self.kept {
            let v = slot(values, k.slot);
            if !v.is_nan() {
                window.push((at, k.slot, v));
            }
        }
        if window.is_empty() {
            return;
        }
        let mut later: Vec<(usize, f64, f64)> = Vec::new();
        let mut keep = vec![false; window.len()];
        for (i, &(t, s, v)) in window.iter().enumerate().rev() {
            let Some(k) = self.kept.iter().find(|k| k.slot == s) else {
                continue;
            };
            if t <= at - k.within {
                continue;
            }
            let (lo, hi) = match later.iter_mut().find(|(ls, ..)| *ls == s) {
                Some((_, lo, hi)) => {
                    let seen = (*lo, *hi);
                    *lo = lo.min(v);
                    *hi = hi.max(v);
                    seen
                }
                None => {
                    later.push((s, v, v));
                    (f64::INFINITY, f64::NEG_INFINITY)
                }
            };
            keep[i] = (k.lowest && v < lo) || (k.highest && v > hi);
        }
        let mut i = 0;
        window.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// The observation kinds the rule reads, as a bit set over `catalog::OBSERVATIONS` slots.
    pub fn kinds(&self) -> u64 {
        self.kinds
    }

    /// Whether the rule is a no-reading rule, raised by the scheduler's sweep.
    pub fn is_silence(&self) -> bool {
        matches!(self.trigger, Trigger::Silence { .. })
    }

    /// Whether a reading with these values carries a kind the rule reads.
    pub fn reads(&self, values: &[f64]) -> bool {
        (0..64)
            .filter(|i| self.kinds & (1 << i) != 0)
            .any(|i| !slot(values, i).is_nan())
    }

    /// Judges one reading taken at `at` (values in `catalog::OBSERVATIONS` slots, NaN where not
    /// measured). A reading that carries none of the rule's kinds, or is dated before the latest
    /// reading the rule has judged, changes nothing: rules judge readings in time order, and a
    /// late one is old news by the time it arrives.
    pub fn feed(&self, st: &mut AlarmState, values: &[f64], at: i64) -> Option<Edge> {
        if !self.reads(values) {
            return None;
        }
        match &self.trigger {
            Trigger::Silence { .. } => {
                if st.last_at.is_some_and(|l| at <= l) {
                    return None;
                }
                st.last_at = Some(at);
                if st.latched {
                    st.latched = false;
                    return Some(Edge::Cleared);
                }
                None
            }
            Trigger::Readings {
                when,
                debounce,
                clear,
            } => {
                if st.last_at.is_some_and(|l| at < l) {
                    return None;
                }
                st.last_at = Some(at);
                if !self.kept.is_empty() {
                    self.keep(&mut st.window, values, at);
                }
                let recent = Recent {
                    samples: &st.window,
                    at,
                };
                let matched = when.holds_in(values, &recent);
                let clear_holds = clear.as_ref().map(|c| c.0.holds_in(values, &recent));
                let raising = match *debounce {
                    Debounce::Window { count, within } => {
                        if matched {
                            st.matches.push(at);
                            if st.matches.len() > count {
                                st.matches.drain(..st.matches.len() - count);
                            }
                        }
                        st.matches.retain(|t| *t > at - within);
                        st.matches.len() >= count
                    }
                    Debounce::Run(need) => {
                        st.run = matched.then(|| Run::extended(st.run, at));
                        need.met(st.run, at)
                    }
                };
                if !st.latched {
                    if raising {
                        st.latched = true;
                        st.raised = st.raised.saturating_add(1);
                        st.clear_run = None;
                        return Some(Edge::Raised);
                    }
                    return None;
                }
                let clearing = match clear {
                    None => !raising,
                    Some(c) => {
                        let need = c.1;
                        st.clear_run = clear_holds
                            .unwrap_or(false)
                            .then(|| Run::extended(st.clear_run, at));
                        need.met(st.clear_run, at)
                    }
                };
                if clearing {
                    // The next episode needs readings of its own.
                    st.latched = false;
                    st.matches.clear();
                    st.run = None;
                    st.clear_run = None;
                    return Some(Edge::Cleared);
                }
                None
            }
        }
    }

    /// When a no-reading rule will be raised if no reading of its kind comes first; `None` for a
    /// reading rule, or while raised.
    pub fn silence_due(&self, st: &AlarmState) -> Option<i64> {
        match self.trigger {
            Trigger::Silence { after, .. } if !st.latched => st.last_at.map(|l| l + after),
            _ => None,
        }
    }

    /// Raises a no-reading rule whose silence has lasted its `for` at `now`.
    pub fn check_silence(&self, st: &mut AlarmState, now: i64) -> Option<Edge> {
        let due = self.silence_due(st)?;
        if due > now {
            return None;
        }
        st.latched = true;
        st.raised = st.raised.saturating_add(1);
        Some(Edge::Raised)
    }
}

/// The urgent task an episode of `spec` opened at `at` raises: at least urgent, kept whatever
/// state the patient moves to, due the rule's `task.due` after `at` in elapsed time, and named by
/// the task's id or `alarm_<rule id>` (completing it raises `task_done:<that name>`). The store and
/// `carepath test` both raise exactly this task.
pub fn task(spec: &AlarmSpec, at: jiff::Timestamp) -> crate::step::Produced {
    crate::step::Produced::Task {
        task_ref: Some(
            spec.task
                .id
                .clone()
                .unwrap_or_else(|| format!("alarm_{}", spec.id)),
        ),
        role: spec.task.role.clone(),
        title: spec.task.title.clone(),
        due_at: crate::time::add(at, spec.task.due, &jiff::tz::TimeZone::UTC),
        priority: carepath_dsl::Priority::Urgent.max(spec.task.priority),
        sla: spec.task.sla.clone(),
        keep: true,
        covers_critical: None,
    }
}

/// Alarm rules compiled once per distinct stored text (a rule's spec as JSON), for a batch of
/// evaluations.
#[derive(Default)]
pub struct RuleCache {
    by_spec: HashMap<String, Result<(AlarmSpec, AlarmRule), String>>,
}

impl RuleCache {
    /// The spec stored as `json` and its compiled rule, or why it cannot be run.
    pub fn get(&mut self, json: &str) -> Result<&(AlarmSpec, AlarmRule), &String> {
        self.by_spec
            .entry(json.to_string())
            .or_insert_with(|| {
                let spec: AlarmSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
                let rule = AlarmRule::compile(&spec).map_err(|e| e.to_string())?;
                Ok((spec, rule))
            })
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{prop_assert, prop_assert_eq};
    use serde_json::json;

    const H: i64 = 3_600;
    const D: i64 = 86_400;

    fn spec(extra: serde_json::Value) -> AlarmSpec {
        let mut v = json!({
            "id": "bp_high", "count": 1, "within": {"amount": 1, "unit": "days"}, "scope": "enrolment",
            "task": {"id": null, "role": "case_manager", "title": {"zh": "x", "en": "x"},
                     "due": {"amount": 2, "unit": "hours"}, "priority": "urgent", "sla": null, "keep": false}
        });
        for (k, x) in extra.as_object().expect("an object") {
            v[k] = x.clone();
        }
        serde_json::from_value(v).expect("an alarm spec")
    }

    fn rule(extra: serde_json::Value) -> AlarmRule {
        AlarmRule::compile(&spec(extra)).expect("compiles")
    }

    fn bp(sys: f64, dia: f64) -> Vec<f64> {
        let mut v = vec![f64::NAN; catalog::OBSERVATIONS.len()];
        v[slot_of("bp_systolic").unwrap()] = sys;
        v[slot_of("bp_diastolic").unwrap()] = dia;
        v
    }

    fn weight(kg: f64) -> Vec<f64> {
        let mut v = vec![f64::NAN; catalog::OBSERVATIONS.len()];
        v[slot_of("weight").unwrap()] = kg;
        v
    }

    /// Feeds systolic readings a day apart (diastolic 70) and returns the edges, by reading.
    /// Each a day after the latest reading the rule judged.
    fn edges(r: &AlarmRule, st: &mut AlarmState, systolics: &[f64]) -> Vec<Option<Edge>> {
        let start = st.last_at.map_or(0, |l| l + D);
        systolics
            .iter()
            .enumerate()
            .map(|(i, s)| r.feed(st, &bp(*s, 70.0), start + i as i64 * D))
            .collect()
    }

    use Edge::{Cleared, Raised};

    #[test]
    fn hysteresis_raises_above_one_line_and_clears_only_below_another() {
        let r = rule(json!({"when": "bp_systolic >= 140", "clear": {"when": "bp_systolic < 130"}}));
        let mut st = AlarmState::default();
        // 145 raises; 135 is below the raising line but above the clearing one: still raised;
        // a second 145 is the same episode; 125 clears; 145 raises a second episode.
        assert_eq!(
            edges(
                &r,
                &mut st,
                &[120.0, 145.0, 135.0, 139.0, 145.0, 125.0, 135.0, 145.0]
            ),
            [
                None,
                Some(Raised),
                None,
                None,
                None,
                Some(Cleared),
                None,
                Some(Raised)
            ]
        );
        assert_eq!(st.raised, 2);
        assert!(st.latched);
    }

    #[test]
    fn without_clear_a_rule_clears_when_its_condition_stops_holding() {
        let r = rule(json!({"when": "bp_systolic >= 140"}));
        let mut st = AlarmState::default();
        assert_eq!(
            edges(&r, &mut st, &[145.0, 150.0, 139.0, 141.0]),
            [Some(Raised), None, Some(Cleared), Some(Raised)]
        );
    }

    #[test]
    fn consecutive_readings_debounce_and_a_broken_run_starts_again() {
        let r = rule(json!({"when": "bp_systolic >= 140", "consecutive": 3,
                            "clear": {"when": "bp_systolic < 130", "consecutive": 2}}));
        let mut st = AlarmState::default();
        assert_eq!(
            edges(
                &r,
                &mut st,
                &[
                    145.0, 145.0, 120.0, 145.0, 145.0, 145.0, 125.0, 135.0, 125.0, 125.0
                ]
            ),
            [
                None,
                None,
                None, // the run of two is broken
                None,
                None,
                Some(Raised), // three in a row
                None,         // one reading below 130 is not two in a row
                None,         // 135 breaks the clearing run
                None,
                Some(Cleared)
            ]
        );
        // After clearing, a new episode needs three fresh readings.
        assert_eq!(
            edges(&r, &mut st, &[145.0, 145.0, 145.0]),
            [None, None, Some(Raised)]
        );
    }

    #[test]
    fn held_for_counts_time_from_the_first_reading_of_the_run() {
        let r =
            rule(json!({"when": "bp_systolic >= 140", "held_for": {"amount": 2, "unit": "days"}}));
        let mut st = AlarmState::default();
        // Several readings within two days are not enough; the reading 48 h after the run began is.
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 0), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 6 * H), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 47 * H), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 48 * H), Some(Raised));
        // One reading below the line both clears (no `clear:`) and restarts the clock.
        assert_eq!(r.feed(&mut st, &bp(130.0, 80.0), 49 * H), Some(Cleared));
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 50 * H), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 97 * H), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 98 * H), Some(Raised));
    }

    #[test]
    fn consecutive_and_held_for_together_need_both() {
        let r = rule(json!({"when": "bp_systolic >= 140", "consecutive": 3,
                            "held_for": {"amount": 1, "unit": "days"}}));
        let mut st = AlarmState::default();
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 0), None);
        assert_eq!(
            r.feed(&mut st, &bp(150.0, 80.0), 2 * D),
            None,
            "two readings"
        );
        let mut st2 = AlarmState::default();
        for t in [0, H, 2 * H] {
            assert_eq!(r.feed(&mut st2, &bp(150.0, 80.0), t), None, "within a day");
        }
        assert_eq!(r.feed(&mut st2, &bp(150.0, 80.0), D), Some(Raised));
    }

    #[test]
    fn window_rules_count_matching_readings_as_before() {
        let r = rule(
            json!({"when": "bp_systolic >= 140 || bp_diastolic >= 90", "count": 3,
                            "within": {"amount": 7, "unit": "days"}}),
        );
        let mut st = AlarmState::default();
        // Matches on days 0, 2 and 6 (one not matching between): raised on day 6.
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 0), None);
        assert_eq!(r.feed(&mut st, &bp(120.0, 80.0), D), None);
        assert_eq!(r.feed(&mut st, &bp(130.0, 95.0), 2 * D), None);
        assert_eq!(r.feed(&mut st, &bp(141.0, 70.0), 6 * D), Some(Raised));
        assert!(st.matches.len() <= 3, "the state stays bounded");
        // Day 8: the day-0 match has left the window and 120 does not match: cleared.
        assert_eq!(r.feed(&mut st, &bp(120.0, 70.0), 8 * D), Some(Cleared));
        // Matches older than the window do not count.
        let mut st = AlarmState::default();
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 0), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), D), None);
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 8 * D), None);
    }

    #[test]
    fn readings_of_other_kinds_and_late_readings_change_nothing() {
        let r = rule(json!({"when": "bp_systolic >= 140", "consecutive": 2}));
        let mut st = AlarmState::default();
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 10 * H), None);
        // A weight reading neither breaks nor extends the run.
        let before = st.clone();
        assert_eq!(r.feed(&mut st, &weight(70.0), 11 * H), None);
        assert_eq!(st, before);
        // A reading dated before the latest one judged is not judged.
        assert_eq!(r.feed(&mut st, &bp(120.0, 80.0), 9 * H), None);
        assert_eq!(st, before);
        // Two readings at the same instant (two devices) are both judged.
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 10 * H), Some(Raised));
    }

    #[test]
    fn missing_values_never_match_but_do_not_count_as_a_clear_reading() {
        // The rule reads systolic and diastolic; a reading with only a diastolic value is judged,
        // and `bp_systolic >= 140` is false for it (NaN), which breaks a run.
        let r = rule(
            json!({"when": "bp_systolic >= 140", "clear": {"when": "bp_diastolic < 60 && bp_systolic < 130"},
                            "consecutive": 2}),
        );
        let mut st = AlarmState::default();
        let mut dia_only = vec![f64::NAN; catalog::OBSERVATIONS.len()];
        dia_only[slot_of("bp_diastolic").unwrap()] = 50.0;
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 0), None);
        assert_eq!(r.feed(&mut st, &dia_only, H), None);
        assert_eq!(
            r.feed(&mut st, &bp(150.0, 80.0), 2 * H),
            None,
            "the run was broken"
        );
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), 3 * H), Some(Raised));
        // The clear condition needs both values: the diastolic-only reading does not clear.
        assert_eq!(r.feed(&mut st, &dia_only, 4 * H), None);
        assert_eq!(r.feed(&mut st, &bp(120.0, 55.0), 5 * H), Some(Cleared));
    }

    #[test]
    fn silence_raises_once_and_the_next_reading_clears() {
        let s =
            spec(json!({"no_reading": {"kind": "weight", "for": {"amount": 3, "unit": "days"}}}));
        let r = AlarmRule::compile(&s).expect("compiles");
        assert!(r.is_silence());
        let armed = 100 * D;
        let mut st = AlarmState::armed(&s, armed);
        assert_eq!(r.silence_due(&st), Some(armed + 3 * D));
        // Blood pressure is not a weight reading.
        assert_eq!(r.feed(&mut st, &bp(150.0, 80.0), armed + D), None);
        assert_eq!(r.check_silence(&mut st, armed + 3 * D - 1), None);
        // A weight reading restarts the silence.
        assert_eq!(r.feed(&mut st, &weight(70.0), armed + 2 * D), None);
        assert_eq!(r.silence_due(&st), Some(armed + 5 * D));
        assert_eq!(r.check_silence(&mut st, armed + 4 * D), None);
        assert_eq!(r.check_silence(&mut st, armed + 5 * D), Some(Raised));
        // Raised once: checking again, or later, raises nothing more.
        assert_eq!(r.check_silence(&mut st, armed + 5 * D), None);
        assert_eq!(r.check_silence(&mut st, armed + 9 * D), None);
        assert_eq!(r.silence_due(&st), None);
        // A reading older than the latest one does not end the silence; a newer one does.
        assert_eq!(r.feed(&mut st, &weight(70.0), armed + D), None);
        assert_eq!(r.feed(&mut st, &weight(70.0), armed + 9 * D), Some(Cleared));
        assert_eq!(r.silence_due(&st), Some(armed + 12 * D));
        assert_eq!(st.raised, 1);
    }

    #[test]
    fn a_late_reading_older_than_the_silence_raises_at_once() {
        let s =
            spec(json!({"no_reading": {"kind": "weight", "for": {"amount": 3, "unit": "days"}}}));
        let r = AlarmRule::compile(&s).expect("compiles");
        let mut st = AlarmState::armed(&s, 0);
        // A reading dated day 1 arriving on day 10: the latest weight is still 9 days old.
        assert_eq!(r.feed(&mut st, &weight(70.0), D), None);
        assert_eq!(r.check_silence(&mut st, 10 * D), Some(Raised));
    }

    #[test]
    fn state_round_trips_and_reads_what_older_rows_stored() {
        let r = rule(
            json!({"when": "bp_systolic >= 140", "consecutive": 2, "clear": {"when": "bp_systolic < 120"}}),
        );
        let mut st = AlarmState::default();
        for t in 0..3 {
            r.feed(&mut st, &bp(150.0, 80.0), t * D);
        }
        let text = serde_json::to_string(&st).unwrap();
        let back: AlarmState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, st);
        // A rule stored as firing before states were kept is latched.
        let old: AlarmState = serde_json::from_str(r#"{"latched":true}"#).unwrap();
        assert!(old.latched && old.last_at.is_none());
        assert_eq!(
            serde_json::to_string(&AlarmState::default()).unwrap(),
            r#"{"latched":false,"raised":0}"#
        );
    }

    #[test]
    fn a_spec_without_a_trigger_or_with_a_bad_condition_does_not_compile() {
        assert!(AlarmRule::compile(&spec(json!({}))).is_err());
        assert!(AlarmRule::compile(&spec(json!({"when": "latest(\"bp_systolic\") > 1"}))).is_err());
        assert!(
            AlarmRule::compile(&spec(
                json!({"when": "bp_systolic > 1", "clear": {"when": "bp_systolic"}})
            ))
            .is_err()
        );
        let mut cache = RuleCache::default();
        let text = serde_json::to_string(&spec(json!({"when": "spo2 < 90"}))).unwrap();
        assert!(cache.get(&text).is_ok());
        assert!(cache.get("{").is_err());
    }

    #[test]
    fn a_gain_over_a_window_raises_and_clears_with_hysteresis() {
        let r = rule(json!({
            "when": "weight - min(\"weight\", \"3d\") >= 2",
            "clear": {"when": "weight - min(\"weight\", \"3d\") < 1"}
        }));
        let mut st = AlarmState::default();
        let feed = |st: &mut AlarmState, kg: f64, at: i64| r.feed(st, &weight(kg), at);
        assert_eq!(feed(&mut st, 80.0, 0), None);
        assert_eq!(feed(&mut st, 80.2, D), None);
        // 2.1 kg above the lowest of the last three days.
        assert_eq!(feed(&mut st, 82.1, 2 * D), Some(Raised));
        // 80.0 has left the window (3 days before is outside `(at - 3d, at]`); the gain over the
        // lowest left (80.2) is 1.8: below the raising line, not below the clearing one.
        assert_eq!(feed(&mut st, 82.0, 3 * D), None);
        // 80.2 has left too; the lowest is 82.0 and the gain 0.3: cleared.
        assert_eq!(feed(&mut st, 82.3, 4 * D + H), Some(Cleared));
        assert_eq!(st.raised, 1);
        // Readings of other kinds neither enter the window nor judge the rule.
        assert_eq!(r.feed(&mut st, &bp(150.0, 95.0), 5 * D), None);
        assert!(
            st.window
                .iter()
                .all(|(_, s, _)| *s == slot_of("weight").unwrap())
        );
        // Only readings that can still be the lowest of a window are kept: 80.0 and 80.2 have left
        // it, 82.1 has a later reading lower than it (82.0).
        let w = slot_of("weight").unwrap();
        assert_eq!(st.window, vec![(3 * D, w, 82.0), (4 * D + H, w, 82.3)]);
        let text = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<AlarmState>(&text).unwrap(), st);
    }

    proptest::proptest! {
        /// Whatever the readings, the kept window gives what the whole history gives: the same
        /// edges as a rule judging every reading against every earlier reading of its window.
        #[test]
        fn the_kept_window_is_exact(
            steps in proptest::collection::vec((0i64..(2 * D), 60.0f64..90.0, proptest::bool::ANY), 1..60),
        ) {
            let when = "weight - min(\"weight\", \"3d\") >= 2 || max(\"weight\", \"2d\") - weight > 3";
            let clear = "weight - min(\"weight\", \"1d\") < 0.5 && max(\"weight\", \"2d\") - weight < 1";
            let r = rule(json!({"when": when, "clear": {"when": clear}}));
            let all = Condition::alarm(when).unwrap();
            let all_clear = Condition::alarm(clear).unwrap();
            let mut st = AlarmState::default();
            let mut history: Vec<Sample> = Vec::new();
            let mut latched = false;
            let mut at = 0;
            let w = slot_of("weight").unwrap();
            for (gap, kg, other) in steps {
                at += gap;
                let values = if other { bp(kg + 60.0, 80.0) } else { weight(kg) };
                let edge = r.feed(&mut st, &values, at);
                if other {
                    prop_assert_eq!(edge, None);
                    continue;
                }
                history.push((at, w, kg));
                let full = Recent { samples: &history, at };
                let want = if !latched && all.holds_in(&values, &full) {
                    latched = true;
                    Some(Raised)
                } else if latched && all_clear.holds_in(&values, &full) {
                    latched = false;
                    Some(Cleared)
                } else {
                    None
                };
                prop_assert_eq!(edge, want, "at {}", at);
                prop_assert!(st.window.len() <= history.len());
            }
        }
    }
}
