//! The built-in indicators: one table of definitions — name, formula, unit, direction, target and
//! documentation — and one function that computes a value from counts.
//!
//! The store counts rows of a period, the simulator counts what it simulated; both fill the same
//! [`Counts`] and read every value through [`Definition::value`], so a name such as
//! `follow_up_rate` means one formula in `GET /kpis`, the monthly report, a simulation report
//! and a scenario's expectation. How rows are counted (SQL) stays in the store; which counts an
//! indicator divides stays here. What counts as a follow-up done is decided here too
//! ([`is_follow_up_call`], [`reached`]) and documented in `docs/indicators.md`, which a test keeps
//! in step with this table. Pure: no storage, no clock.

use serde::Serialize;

/// A task whose id ends with this is a follow-up call (随访电话): the pathway language's naming
/// rule for calls to the patient (`fu_day7_call`, `postnatal_visit_missed_call`).
pub const FOLLOW_UP_CALL_SUFFIX: &str = "_call";

/// Call outcomes that say the patient was not reached: such a call is not a follow-up done.
/// Every other outcome of a completed call (`reached`, `problem`, `will_visit`, `call_later`,
/// `declined`, an outcome the pathway declares) means staff spoke with the patient or carer.
pub const NOT_REACHED: &[&str] = &["unreachable", "wrong_number", "deceased", "moved_away"];

/// Whether a task (by its id in the pathway) is a follow-up call.
pub fn is_follow_up_call(task_ref: &str) -> bool {
    task_ref.ends_with(FOLLOW_UP_CALL_SUFFIX) && task_ref.len() > FOLLOW_UP_CALL_SUFFIX.len()
}

/// Whether a completed call with this outcome reached the patient (no outcome: it did).
pub fn reached(outcome: Option<&str>) -> bool {
    outcome.is_none_or(|o| !NOT_REACHED.contains(&o))
}

/// One count an indicator divides. Each is a count of one period (`[from, to)`; work falling due
/// counts up to `as_of`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Enrolments with a follow-up call due in the period (not cancelled).
    FollowUpDue,
    /// Of those, enrolments with such a call completed with an outcome that reached the patient.
    FollowedUp,
    /// Staff tasks due in the period (not cancelled).
    TasksDue,
    /// Of those, tasks completed by their due time.
    TasksOnTime,
    /// Of those, tasks not completed by their due time (completed late, or still open).
    TasksOverdue,
    /// Scales pushed in the period (not cancelled).
    ScalesPushed,
    /// Of those, scales the patient answered.
    ScalesAnswered,
    /// Enrolments active at any time in the period.
    EnrolmentsActive,
    /// Enrolments active at the end of the period.
    EnrolmentsActiveAtEnd,
    /// Referrals the institution sent in the period, up and down.
    ReferralsSent,
    /// Of those, upward referrals.
    ReferralsUp,
    /// Upward referrals addressed to the institution in the period.
    UpwardReceived,
    /// Of those, accepted by their accept-by time (24 h by default).
    UpwardAcceptedInTime,
    /// Hospital stays that ended (discharge) in the period.
    Stays,
    /// Their total length, in days (admission to discharge).
    StayDays,
    /// Staff of the institution holding a case-manager role.
    CaseManagers,
}

impl Quantity {
    /// The quantity's name in documentation and in `numerator`/`denominator` fields.
    pub fn name(self) -> &'static str {
        match self {
            Quantity::FollowUpDue => "follow_up_due",
            Quantity::FollowedUp => "followed_up",
            Quantity::TasksDue => "tasks_due",
            Quantity::TasksOnTime => "tasks_on_time",
            Quantity::TasksOverdue => "tasks_overdue",
            Quantity::ScalesPushed => "scales_pushed",
            Quantity::ScalesAnswered => "scales_answered",
            Quantity::EnrolmentsActive => "enrolments_active",
            Quantity::EnrolmentsActiveAtEnd => "enrolments_active_at_end",
            Quantity::ReferralsSent => "referrals_sent",
            Quantity::ReferralsUp => "referrals_up",
            Quantity::UpwardReceived => "upward_received",
            Quantity::UpwardAcceptedInTime => "upward_accepted_in_time",
            Quantity::Stays => "stays",
            Quantity::StayDays => "stay_days",
            Quantity::CaseManagers => "case_managers",
        }
    }
}

/// Every count the built-in indicators divide, for one scope and period. Lengths of stay are kept
/// in seconds so that sums stay exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub follow_up_due: i64,
    pub followed_up: i64,
    pub tasks_due: i64,
    pub tasks_on_time: i64,
    pub tasks_overdue: i64,
    pub scales_pushed: i64,
    pub scales_answered: i64,
    pub enrolments_active: i64,
    pub enrolments_active_at_end: i64,
    pub referrals_sent: i64,
    pub referrals_up: i64,
    pub upward_received: i64,
    pub upward_accepted_in_time: i64,
    pub stays: i64,
    pub stay_seconds: i64,
    pub case_managers: i64,
}

impl Counts {
    /// One quantity as a whole count; `None` for a length (stay days).
    pub fn count(&self, q: Quantity) -> Option<i64> {
        match q {
            Quantity::StayDays => None,
            _ => Some(self.get(q) as i64),
        }
    }

    /// One quantity's count (lengths of stay in days).
    pub fn get(&self, q: Quantity) -> f64 {
        match q {
            Quantity::FollowUpDue => self.follow_up_due as f64,
            Quantity::FollowedUp => self.followed_up as f64,
            Quantity::TasksDue => self.tasks_due as f64,
            Quantity::TasksOnTime => self.tasks_on_time as f64,
            Quantity::TasksOverdue => self.tasks_overdue as f64,
            Quantity::ScalesPushed => self.scales_pushed as f64,
            Quantity::ScalesAnswered => self.scales_answered as f64,
            Quantity::EnrolmentsActive => self.enrolments_active as f64,
            Quantity::EnrolmentsActiveAtEnd => self.enrolments_active_at_end as f64,
            Quantity::ReferralsSent => self.referrals_sent as f64,
            Quantity::ReferralsUp => self.referrals_up as f64,
            Quantity::UpwardReceived => self.upward_received as f64,
            Quantity::UpwardAcceptedInTime => self.upward_accepted_in_time as f64,
            Quantity::Stays => self.stays as f64,
            Quantity::StayDays => self.stay_seconds as f64 / 86_400.0,
            Quantity::CaseManagers => self.case_managers as f64,
        }
    }

    /// Sets one quantity's count; stay days are set as their length in seconds, which is what
    /// is kept.
    pub fn set(&mut self, q: Quantity, n: i64) {
        let field = match q {
            Quantity::FollowUpDue => &mut self.follow_up_due,
            Quantity::FollowedUp => &mut self.followed_up,
            Quantity::TasksDue => &mut self.tasks_due,
            Quantity::TasksOnTime => &mut self.tasks_on_time,
            Quantity::TasksOverdue => &mut self.tasks_overdue,
            Quantity::ScalesPushed => &mut self.scales_pushed,
            Quantity::ScalesAnswered => &mut self.scales_answered,
            Quantity::EnrolmentsActive => &mut self.enrolments_active,
            Quantity::EnrolmentsActiveAtEnd => &mut self.enrolments_active_at_end,
            Quantity::ReferralsSent => &mut self.referrals_sent,
            Quantity::ReferralsUp => &mut self.referrals_up,
            Quantity::UpwardReceived => &mut self.upward_received,
            Quantity::UpwardAcceptedInTime => &mut self.upward_accepted_in_time,
            Quantity::Stays => &mut self.stays,
            Quantity::StayDays => &mut self.stay_seconds,
            Quantity::CaseManagers => &mut self.case_managers,
        };
        *field = n;
    }
}

/// What a value is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A share between 0 and 1, shown as a percentage.
    Ratio,
    /// Days.
    Days,
    /// Enrolments per staff member.
    PerStaff,
}

/// Which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    HigherIsBetter,
    LowerIsBetter,
}

/// One built-in indicator: `numerator ÷ denominator` over a period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Definition {
    pub name: &'static str,
    pub title_zh: &'static str,
    pub title_en: &'static str,
    pub numerator: Quantity,
    pub denominator: Quantity,
    pub unit: Unit,
    pub direction: Direction,
    /// The target the domain's documents set, where they set one.
    pub target: Option<f64>,
    /// What the indicator measures and where its target comes from.
    pub doc: &'static str,
}

impl Definition {
    /// `numerator ÷ denominator`, or `None` when the denominator counted nothing.
    pub fn value(&self, c: &Counts) -> Option<f64> {
        let d = c.get(self.denominator);
        (d > 0.0).then(|| c.get(self.numerator) / d)
    }

    /// The numerator and the denominator for these counts.
    pub fn sides(&self, c: &Counts) -> (f64, f64) {
        (c.get(self.numerator), c.get(self.denominator))
    }

    /// Whether a value meets the target, in the indicator's direction.
    pub fn target_met(&self, value: Option<f64>) -> Option<bool> {
        let (v, t) = value.zip(self.target)?;
        Some(match self.direction {
            Direction::HigherIsBetter => v >= t,
            Direction::LowerIsBetter => v <= t,
        })
    }

    /// `numerator / denominator` with their names, as documentation writes the formula.
    pub fn formula(&self) -> String {
        format!("{} / {}", self.numerator.name(), self.denominator.name())
    }
}

/// `follow_up_rate`.
pub const FOLLOW_UP_RATE: Definition = Definition {
    name: "follow_up_rate",
    title_zh: "随访率",
    title_en: "Follow-up rate",
    numerator: Quantity::FollowedUp,
    denominator: Quantity::FollowUpDue,
    unit: Unit::Ratio,
    direction: Direction::HigherIsBetter,
    target: Some(0.9),
    doc: "Patients actually followed up over patients due a follow-up: enrolments with a follow-up \
          call due in the period, and of those the enrolments with such a call completed with an \
          outcome that reached the patient. A message sent is not a follow-up done. Target 90 % \
          (seed 003, breast-cancer surgery team).",
};

/// `on_time_task_rate`.
pub const ON_TIME_TASK_RATE: Definition = Definition {
    name: "on_time_task_rate",
    title_zh: "任务按时完成率",
    title_en: "Tasks done on time",
    numerator: Quantity::TasksOnTime,
    denominator: Quantity::TasksDue,
    unit: Unit::Ratio,
    direction: Direction::HigherIsBetter,
    target: None,
    doc: "Staff tasks due in the period that were completed by their due time, over the tasks due \
          in the period. A task never done counts against it; a cancelled task does not count.",
};

/// `overdue_rate`.
pub const OVERDUE_RATE: Definition = Definition {
    name: "overdue_rate",
    title_zh: "任务超时率",
    title_en: "Tasks overdue",
    numerator: Quantity::TasksOverdue,
    denominator: Quantity::TasksDue,
    unit: Unit::Ratio,
    direction: Direction::LowerIsBetter,
    target: None,
    doc: "Staff tasks due in the period not completed by their due time (done late or still \
          open), over the tasks due in the period: one minus the on-time rate.",
};

/// `scale_completion`.
pub const SCALE_COMPLETION: Definition = Definition {
    name: "scale_completion",
    title_zh: "量表完成率",
    title_en: "Scales answered",
    numerator: Quantity::ScalesAnswered,
    denominator: Quantity::ScalesPushed,
    unit: Unit::Ratio,
    direction: Direction::HigherIsBetter,
    target: None,
    doc: "Scales pushed in the period (not cancelled) that the patient answered, over the scales \
          pushed in the period.",
};

/// `referral_rate`.
pub const REFERRAL_RATE: Definition = Definition {
    name: "referral_rate",
    title_zh: "双向转诊率",
    title_en: "Referrals per active enrolment",
    numerator: Quantity::ReferralsSent,
    denominator: Quantity::EnrolmentsActive,
    unit: Unit::Ratio,
    direction: Direction::HigherIsBetter,
    target: None,
    doc: "Referrals sent in the period, up and down, per enrolment active in the period.",
};

/// `upward_share`.
pub const UPWARD_SHARE: Definition = Definition {
    name: "upward_share",
    title_zh: "上转占比",
    title_en: "Upward share of referrals",
    numerator: Quantity::ReferralsUp,
    denominator: Quantity::ReferralsSent,
    unit: Unit::Ratio,
    direction: Direction::HigherIsBetter,
    target: Some(0.6),
    doc: "Upward referrals among the referrals sent in the period. Target at least 60 % \
          (seed 004, the alliance's targets).",
};

/// `upward_accepted_in_time_rate`.
pub const UPWARD_ACCEPTED_IN_TIME_RATE: Definition = Definition {
    name: "upward_accepted_in_time_rate",
    title_zh: "上转24小时接收率",
    title_en: "Upward referrals accepted in time",
    numerator: Quantity::UpwardAcceptedInTime,
    denominator: Quantity::UpwardReceived,
    unit: Unit::Ratio,
    direction: Direction::HigherIsBetter,
    target: None,
    doc: "Upward referrals addressed to the institution in the period that it accepted by their \
          accept-by time (24 hours unless the pathway says otherwise, seed 004), over those it \
          received.",
};

/// `average_length_of_stay_days`.
pub const AVERAGE_LENGTH_OF_STAY_DAYS: Definition = Definition {
    name: "average_length_of_stay_days",
    title_zh: "平均住院日",
    title_en: "Average length of stay",
    numerator: Quantity::StayDays,
    denominator: Quantity::Stays,
    unit: Unit::Days,
    direction: Direction::LowerIsBetter,
    target: None,
    doc: "Days from admission to discharge, averaged over the stays that ended in the period \
          (a stay is a `discharged` event and the latest `admitted` event before it). Targets \
          are per disease (5.6 days for breast-cancer surgery, seed 003), so a pathway declares \
          its own.",
};

/// `case_load_per_case_manager`.
pub const CASE_LOAD_PER_CASE_MANAGER: Definition = Definition {
    name: "case_load_per_case_manager",
    title_zh: "个案管理师人均在管",
    title_en: "Case load per case manager",
    numerator: Quantity::EnrolmentsActiveAtEnd,
    denominator: Quantity::CaseManagers,
    unit: Unit::PerStaff,
    direction: Direction::LowerIsBetter,
    target: None,
    doc: "Enrolments active at the end of the period per staff member holding a case-manager \
          role.",
};

/// Every built-in indicator, in the order reports list them.
pub const BUILTIN: &[Definition] = &[
    FOLLOW_UP_RATE,
    ON_TIME_TASK_RATE,
    OVERDUE_RATE,
    SCALE_COMPLETION,
    REFERRAL_RATE,
    UPWARD_SHARE,
    UPWARD_ACCEPTED_IN_TIME_RATE,
    AVERAGE_LENGTH_OF_STAY_DAYS,
    CASE_LOAD_PER_CASE_MANAGER,
];

/// The built-in indicator of that name.
pub fn definition(name: &str) -> Option<&'static Definition> {
    BUILTIN.iter().find(|d| d.name == name)
}

/// `n / d`, or `None` when nothing was counted: how every indicator, built-in or declared by a
/// pathway, combines its numerator and denominator.
pub fn ratio(n: i64, d: i64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// Every built-in indicator's value for one set of counts, by name, in the table's order;
/// serialised as a map from name to value (`null` when nothing was counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Values(Vec<(&'static str, Option<f64>)>);

impl Values {
    pub fn of(c: &Counts) -> Values {
        Values::of_counted(c, |_| true)
    }

    /// The indicators whose numerator and denominator are both `counted` (a simulation counts
    /// some quantities and not others).
    pub fn of_counted(c: &Counts, counted: impl Fn(Quantity) -> bool) -> Values {
        Values(
            BUILTIN
                .iter()
                .filter(|d| counted(d.numerator) && counted(d.denominator))
                .map(|d| (d.name, d.value(c)))
                .collect(),
        )
    }

    /// Whether the indicator of that name is among these values.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| *n == name)
    }

    /// The value of the indicator of that name (`None` also when nothing was counted).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, Option<f64>)> + '_ {
        self.0.iter().copied()
    }
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            m.serialize_entry(name, value)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_up_rate_counts_patients_followed_up_not_messages() {
        let c = Counts {
            follow_up_due: 40,
            followed_up: 36,
            ..Counts::default()
        };
        assert_eq!(FOLLOW_UP_RATE.value(&c), Some(0.9));
        assert_eq!(FOLLOW_UP_RATE.target_met(Some(0.9)), Some(true));
        assert_eq!(FOLLOW_UP_RATE.target_met(Some(0.89)), Some(false));
    }

    #[test]
    fn nothing_counted_has_no_value() {
        for d in BUILTIN {
            assert_eq!(d.value(&Counts::default()), None, "{}", d.name);
        }
    }

    #[test]
    fn on_time_and_overdue_divide_the_tasks_due() {
        let c = Counts {
            tasks_due: 8,
            tasks_on_time: 6,
            tasks_overdue: 2,
            ..Counts::default()
        };
        assert_eq!(ON_TIME_TASK_RATE.value(&c), Some(0.75));
        assert_eq!(OVERDUE_RATE.value(&c), Some(0.25));
        assert_eq!(OVERDUE_RATE.target_met(Some(0.25)), None);
    }

    #[test]
    fn a_quantity_set_is_the_quantity_read() {
        let all = [
            Quantity::FollowUpDue,
            Quantity::FollowedUp,
            Quantity::TasksDue,
            Quantity::TasksOnTime,
            Quantity::TasksOverdue,
            Quantity::ScalesPushed,
            Quantity::ScalesAnswered,
            Quantity::EnrolmentsActive,
            Quantity::EnrolmentsActiveAtEnd,
            Quantity::ReferralsSent,
            Quantity::ReferralsUp,
            Quantity::UpwardReceived,
            Quantity::UpwardAcceptedInTime,
            Quantity::Stays,
            Quantity::CaseManagers,
        ];
        for (i, q) in all.into_iter().enumerate() {
            let mut c = Counts::default();
            c.set(q, i as i64 + 1);
            assert_eq!(c.count(q), Some(i as i64 + 1), "{}", q.name());
            // No other quantity moved.
            assert!(
                all.iter()
                    .filter(|o| **o != q)
                    .all(|o| c.count(*o) == Some(0))
            );
        }
        let mut c = Counts::default();
        c.set(Quantity::StayDays, 36 * 3_600);
        assert_eq!(
            (c.stay_seconds, c.get(Quantity::StayDays)),
            (36 * 3_600, 1.5)
        );
    }

    #[test]
    fn length_of_stay_is_in_days() {
        let c = Counts {
            stays: 2,
            stay_seconds: 11 * 86_400,
            ..Counts::default()
        };
        assert_eq!(AVERAGE_LENGTH_OF_STAY_DAYS.value(&c), Some(5.5));
    }

    #[test]
    fn calls_and_reached_outcomes() {
        assert!(is_follow_up_call("fu_day7_call"));
        assert!(is_follow_up_call("postnatal_visit_missed_call"));
        assert!(!is_follow_up_call("_call"));
        assert!(!is_follow_up_call("call_back"));
        assert!(!is_follow_up_call("care_plan"));
        for o in ["reached", "problem", "declined", "rebooked"] {
            assert!(reached(Some(o)), "{o}");
        }
        assert!(reached(None));
        for o in NOT_REACHED {
            assert!(!reached(Some(o)), "{o}");
        }
    }

    #[test]
    fn values_are_keyed_by_name_in_table_order() {
        let c = Counts {
            scales_pushed: 4,
            scales_answered: 3,
            ..Counts::default()
        };
        let v = Values::of(&c);
        assert_eq!(v.get("scale_completion"), Some(0.75));
        assert_eq!(v.get("follow_up_rate"), None);
        let json = serde_json::to_string(&v).expect("json");
        assert!(
            json.starts_with(r#"{"follow_up_rate":null,"on_time_task_rate":null"#),
            "{json}"
        );
        assert_eq!(definition("upward_share"), Some(&UPWARD_SHARE));
    }

    #[test]
    fn names_are_unique() {
        for (i, d) in BUILTIN.iter().enumerate() {
            assert!(
                BUILTIN[..i].iter().all(|e| e.name != d.name),
                "{} twice",
                d.name
            );
        }
    }

    /// `docs/indicators.md` lists every built-in indicator with its formula and target.
    #[test]
    fn documentation_lists_every_definition() {
        let doc = include_str!("../../docs/indicators.md");
        for d in BUILTIN {
            let line = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` ", d.name)))
                .unwrap_or_else(|| panic!("docs/indicators.md has no row for `{}`", d.name));
            assert!(
                line.contains(&format!("`{}`", d.formula())),
                "docs/indicators.md: `{}` is not `{}`: {line}",
                d.name,
                d.formula()
            );
            let target = d
                .target
                .map(|t| format!("{} %", (t * 100.0).round()))
                .unwrap_or_else(|| "—".into());
            assert!(
                line.contains(&format!("| {target} |")),
                "docs/indicators.md: `{}` target is {target}: {line}",
                d.name
            );
        }
    }
}
