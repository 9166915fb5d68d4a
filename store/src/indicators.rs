//! Indicators: the built-in operational ones and those pathways declare, for any period,
//! institution and breakdown.
//!
//! Every number is a count of stored rows over a half-open period `[from, to)`, so a month's
//! numbers do not change when the report is run again later. Work that falls due is counted only
//! up to `as_of` (a follow-up due tomorrow is not yet missed); the caller passes `as_of`, so
//! reports and tests can fix it. Each family of counts is one grouped query whose grouping key is
//! the breakdown (none, pathway, role, staff member), so a total and its breakdown rows are
//! computed by the same SQL and always add up. Rates are derived from the counts, never stored,
//! through the definitions of `carepath_core::indicators` (which counts each built-in indicator divides,
//! which tasks are follow-up calls and which call outcomes reached the patient); this module only
//! counts.
//! Rows belong to an institution by the institution column of their own table (a task moves with
//! an accepted referral; a follow-up stays where it was sent from).

use std::collections::BTreeMap;

use carepath_dsl::counter::Counter;
use carepath_dsl::{Indicator, Pathway, Text};
use serde::Serialize;
use serde_json::{Value, json};

use super::db::Arg;
use super::{Pool, Result, Row};
use carepath_core::indicators::{self as defs, Counts, Values};

/// The roles whose holders carry a case load.
pub const CASE_MANAGER_ROLES: &[&str] = &[
    "case_manager",
    "hospital_case_manager",
    "clinic_case_manager",
];

/// A half-open period and the instant up to which due work counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: i64,
    pub to: i64,
    pub as_of: i64,
}

impl Period {
    /// The end of the part of the period in which work could already have fallen due.
    pub fn due_end(&self) -> i64 {
        self.to.min(self.as_of).max(self.from)
    }
}

/// Whose rows: an institution, optionally one pathway.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub institution: &'a str,
    pub pathway: Option<&'a str>,
}

/// How to break the totals down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Pathway,
    Role,
    Staff,
}

impl By {
    pub fn parse(s: &str) -> Option<By> {
        match s {
            "pathway" => Some(By::Pathway),
            "role" => Some(By::Role),
            "staff" => Some(By::Staff),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            By::Pathway => "pathway",
            By::Role => "role",
            By::Staff => "staff",
        }
    }
}

/// The grouping of one query: its key expression over the aliases `e` (enrolments) and, for task
/// queries, `t` (tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    All,
    Pathway,
    Role,
    Staff,
}

impl Key {
    fn expr(self) -> &'static str {
        match self {
            Key::All => "''",
            Key::Pathway => "e.pathway_id",
            Key::Role => "t.role",
            Key::Staff => "t.assignee",
        }
    }

    fn group_by(self) -> &'static str {
        match self {
            Key::All => "",
            Key::Pathway => " GROUP BY e.pathway_id",
            Key::Role => " GROUP BY t.role",
            Key::Staff => " GROUP BY t.assignee",
        }
    }
}

/// Rows grouped by key; `None` is a NULL key (an unassigned task).
type Grouped<T> = BTreeMap<Option<String>, T>;

pub use carepath_core::indicators::ratio as rate;

/// Appends the pathway condition when the scope names one; returns the SQL fragment.
fn pathway_filter(scope: &Scope<'_>, args: &mut Vec<Arg>) -> String {
    match scope.pathway {
        Some(p) => {
            args.push(Arg::T(p.to_string()));
            format!(" AND e.pathway_id = ${}", args.len())
        }
        None => String::new(),
    }
}

async fn grouped<T: Default>(
    pool: &Pool,
    sql: &str,
    args: Vec<Arg>,
    read: impl Fn(&Row) -> T,
) -> Result<Grouped<T>> {
    let rows = pool.fetch(sql, args).await?;
    Ok(rows.iter().map(|r| (r.opt_text(0), read(r))).collect())
}

// ---------------------------------------------------------------------------------------------
// Counts

/// Staff work in a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TaskCounts {
    /// Tasks created in the period.
    pub created: i64,
    /// Tasks completed in the period.
    pub completed: i64,
    /// Of those, completed by their due time.
    pub completed_on_time: i64,
    /// Tasks due in the period (up to `as_of`), not cancelled.
    pub due: i64,
    /// Of those, completed by their due time.
    pub due_on_time: i64,
    /// Of those, not completed by their due time (completed late, or still open).
    pub overdue: i64,
    /// Distinct enrolments among the tasks completed or due in the period: the case load served.
    pub enrolments: i64,
}

impl TaskCounts {
    /// The task counts the built-in indicators divide.
    pub fn counts(&self) -> Counts {
        Counts {
            tasks_due: self.due,
            tasks_on_time: self.due_on_time,
            tasks_overdue: self.overdue,
            ..Counts::default()
        }
    }

    /// `on_time_task_rate` of these tasks.
    pub fn on_time_rate(&self) -> Option<f64> {
        defs::ON_TIME_TASK_RATE.value(&self.counts())
    }
}

/// The tasks a period's task counts read (`$1` institution, `$2` from, `$3` to): made before its
/// end and created, due or completed in it.
const TASKS_OF_PERIOD: &str = "FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id \
     WHERE t.institution_id = $1 AND t.created_at < $3 \
     AND (t.created_at >= $2 OR t.due_at >= $2 OR t.completed_at >= $2)";
/// Completed in the period.
const TASK_DONE: &str = "t.status = 'done' AND t.completed_at >= $2 AND t.completed_at < $3";
/// Due in the period up to `as_of` (`$4`), not cancelled.
const TASK_DUE: &str = "t.status <> 'cancelled' AND t.due_at >= $2 AND t.due_at < $4";
/// Completed by its due time.
const TASK_ON_TIME: &str = "t.status = 'done' AND t.completed_at <= t.due_at";
/// Not completed by its due time (completed late, or still not done).
const TASK_LATE: &str = "(t.completed_at IS NULL OR t.completed_at > t.due_at)";

async fn task_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<TaskCounts>> {
    let mut args: Vec<Arg> = vec![
        scope.institution.into(),
        p.from.into(),
        p.to.into(),
        p.due_end().into(),
    ];
    let filter = pathway_filter(scope, &mut args);
    let (done, due) = (TASK_DONE, TASK_DUE);
    let sql = format!(
        "SELECT {k}, \
         COUNT(CASE WHEN t.created_at >= $2 AND t.created_at < $3 THEN 1 END), \
         COUNT(CASE WHEN {done} THEN 1 END), \
         COUNT(CASE WHEN {done} AND t.completed_at <= t.due_at THEN 1 END), \
         COUNT(CASE WHEN {due} THEN 1 END), \
         COUNT(CASE WHEN {due} AND {TASK_ON_TIME} THEN 1 END), \
         COUNT(CASE WHEN {due} AND {TASK_LATE} THEN 1 END), \
         COUNT(DISTINCT CASE WHEN ({done}) OR ({due}) THEN t.enrolment_id END) \
         {TASKS_OF_PERIOD}{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    grouped(pool, &sql, args, |r| TaskCounts {
        created: r.i64(1),
        completed: r.i64(2),
        completed_on_time: r.i64(3),
        due: r.i64(4),
        due_on_time: r.i64(5),
        overdue: r.i64(6),
        enrolments: r.i64(7),
    })
    .await
}

/// Enrolments in a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EnrolmentCounts {
    /// Enrolled in the period.
    pub new: i64,
    /// Active at any time in the period.
    pub active: i64,
    /// Still active at the end of the period.
    pub active_at_end: i64,
    /// Ended in the period (completed or withdrawn).
    pub ended: i64,
    pub completed: i64,
    pub withdrawn: i64,
}

/// The enrolments of a period (`$1` institution, `$2` from, `$3` to), as a `FROM … WHERE` clause
/// over `enrolments e`: enrolled before its end and not ended before its start, so active at some
/// time in it.
const ENROLMENTS_OF_PERIOD: &str = "FROM enrolments e WHERE e.institution_id = $1 AND e.enrolled_at < $3 \
     AND (e.ended_at IS NULL OR e.ended_at >= $2)";
/// Of those, still active at the end of the period.
const ENROLMENT_ACTIVE_AT_END: &str = "(e.ended_at IS NULL OR e.ended_at >= $3)";

async fn enrolment_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<EnrolmentCounts>> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.to.into()];
    let filter = pathway_filter(scope, &mut args);
    let ended = "e.ended_at >= $2 AND e.ended_at < $3";
    let sql = format!(
        "SELECT {k}, \
         COUNT(CASE WHEN e.enrolled_at >= $2 THEN 1 END), \
         COUNT(*), \
         COUNT(CASE WHEN {ENROLMENT_ACTIVE_AT_END} THEN 1 END), \
         COUNT(CASE WHEN {ended} THEN 1 END), \
         COUNT(CASE WHEN {ended} AND e.status = 'completed' THEN 1 END), \
         COUNT(CASE WHEN {ended} AND e.status = 'withdrawn' THEN 1 END) \
         {ENROLMENTS_OF_PERIOD}{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    grouped(pool, &sql, args, |r| EnrolmentCounts {
        new: r.i64(1),
        active: r.i64(2),
        active_at_end: r.i64(3),
        ended: r.i64(4),
        completed: r.i64(5),
        withdrawn: r.i64(6),
    })
    .await
}

/// Follow-ups in the period: the enrolments due a follow-up call and those followed up (the
/// `follow_up_rate`), and the follow-up messages due (up to `as_of`, not cancelled) and sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct FollowUpCounts {
    /// Enrolments with a follow-up call due in the period (up to `as_of`), not cancelled.
    pub patients_due: i64,
    /// Of those, enrolments with such a call completed with an outcome that reached the patient.
    pub patients_followed_up: i64,
    /// Follow-up messages due in the period (up to `as_of`), not cancelled.
    pub due: i64,
    /// Of those, messages sent.
    pub sent: i64,
}

/// The follow-up calls due in a period (`$1` institution, `$2` from, `$3` due end), as a `FROM …
/// WHERE` clause over `tasks t` and `enrolments e`, and the condition of a call that reached the
/// patient; pushes their parameters onto `args`. A follow-up call is a task named `…_call`
/// (`defs::is_follow_up_call`); `!` escapes the underscore, which LIKE reads as any character.
fn follow_up_calls(args: &mut Vec<Arg>) -> (String, String) {
    let call = format!("%{}", defs::FOLLOW_UP_CALL_SUFFIX.replace('_', "!_"));
    args.push(call.into());
    let like = args.len();
    let first_outcome = args.len() + 1;
    args.extend(defs::NOT_REACHED.iter().map(|o| Arg::from(*o)));
    let not_reached = super::db::placeholders(first_outcome, defs::NOT_REACHED.len());
    (
        format!(
            "FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id \
             WHERE t.institution_id = $1 AND t.due_at >= $2 AND t.due_at < $3 AND t.status <> 'cancelled' \
             AND t.task_ref LIKE ${like} ESCAPE '!'"
        ),
        format!("t.status = 'done' AND (t.outcome IS NULL OR t.outcome NOT IN ({not_reached}))"),
    )
}

async fn follow_up_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<FollowUpCounts>> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.due_end().into()];
    let filter = pathway_filter(scope, &mut args);
    let sql = format!(
        "SELECT {k}, COUNT(*), COUNT(CASE WHEN f.status = 'sent' THEN 1 END) \
         FROM follow_ups f JOIN enrolments e ON e.id = f.enrolment_id \
         WHERE f.institution_id = $1 AND f.send_at >= $2 AND f.send_at < $3 AND f.status <> 'cancelled'{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    let mut out = grouped(pool, &sql, args.clone(), |r| FollowUpCounts {
        due: r.i64(1),
        sent: r.i64(2),
        ..Default::default()
    })
    .await?;
    let (calls, reached) = follow_up_calls(&mut args);
    let sql = format!(
        "SELECT {k}, COUNT(DISTINCT t.enrolment_id), \
         COUNT(DISTINCT CASE WHEN {reached} THEN t.enrolment_id END) \
         {calls}{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    for (k, (due, done)) in grouped(pool, &sql, args, |r| (r.i64(1), r.i64(2))).await? {
        let c = out.entry(k).or_default();
        c.patients_due = due;
        c.patients_followed_up = done;
    }
    Ok(out)
}

/// Scales pushed in the period, not cancelled, and how many of them were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ScaleCounts {
    pub pushed: i64,
    pub answered: i64,
}

/// Scales pushed in the period (`$1` institution, `$2` from, `$3` to), not cancelled, as a
/// `FROM … WHERE` clause over `scale_pushes s` and `enrolments e`.
const SCALES_PUSHED: &str = "FROM scale_pushes s JOIN enrolments e ON e.id = s.enrolment_id \
     WHERE s.institution_id = $1 AND s.created_at >= $2 AND s.created_at < $3 AND s.status <> 'cancelled'";
const SCALE_ANSWERED: &str = "s.status = 'answered'";

async fn scale_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<ScaleCounts>> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.to.into()];
    let filter = pathway_filter(scope, &mut args);
    let sql = format!(
        "SELECT {k}, COUNT(*), COUNT(CASE WHEN {SCALE_ANSWERED} THEN 1 END) \
         {SCALES_PUSHED}{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    grouped(pool, &sql, args, |r| ScaleCounts {
        pushed: r.i64(1),
        answered: r.i64(2),
    })
    .await
}

/// Referrals requested in the period: those the institution sent, and the upward ones addressed
/// to it (to it by name, or still open to its kind of institution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ReferralCounts {
    pub sent: i64,
    pub sent_up: i64,
    pub sent_down: i64,
    pub upward_received: i64,
    /// Upward referrals received and accepted by their accept-by time (24 h by default).
    pub upward_accepted_in_time: i64,
}

/// Upward referrals requested in the period (`$2`, `$3`) and addressed to the institution `$1`: to
/// it by name, or still open to its kind of institution.
const UPWARD_RECEIVED: &str = "FROM referrals r JOIN enrolments e ON e.id = r.enrolment_id \
     WHERE r.direction = 'up' AND r.requested_at >= $2 AND r.requested_at < $3 \
     AND (r.to_institution = $1 OR (r.to_institution IS NULL AND r.from_institution <> $1 \
          AND r.to_kind = (SELECT i.kind FROM institutions i WHERE i.id = $1)))";

/// Referrals the institution `$1` sent in the period (`$2`, `$3`), up and down, as a `FROM … WHERE`
/// clause over `referrals r` and `enrolments e`.
const REFERRALS_SENT: &str = "FROM referrals r JOIN enrolments e ON e.id = r.enrolment_id \
     WHERE r.from_institution = $1 AND r.requested_at >= $2 AND r.requested_at < $3";
/// An upward referral.
const REFERRAL_UP: &str = "r.direction = 'up'";

/// A referral accepted (and perhaps arrived) by its accept-by time.
const REFERRAL_IN_TIME: &str =
    "r.status IN ('accepted', 'arrived') AND r.decided_at <= r.accept_by";

async fn referral_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<ReferralCounts>> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.to.into()];
    let filter = pathway_filter(scope, &mut args);
    let sql = format!(
        "SELECT {k}, COUNT(*), COUNT(CASE WHEN {REFERRAL_UP} THEN 1 END), COUNT(CASE WHEN r.direction = 'down' THEN 1 END) \
         {REFERRALS_SENT}{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    let mut out = grouped(pool, &sql, args.clone(), |r| ReferralCounts {
        sent: r.i64(1),
        sent_up: r.i64(2),
        sent_down: r.i64(3),
        ..Default::default()
    })
    .await?;
    let sql = format!(
        "SELECT {k}, COUNT(*), COUNT(CASE WHEN {REFERRAL_IN_TIME} THEN 1 END) {UPWARD_RECEIVED}{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    for (k, (received, in_time)) in grouped(pool, &sql, args, |r| (r.i64(1), r.i64(2))).await? {
        let c = out.entry(k).or_default();
        c.upward_received = received;
        c.upward_accepted_in_time = in_time;
    }
    Ok(out)
}

/// Alarm episodes raised in the period: one per alarm rule turning true, recorded under the key
/// `alarm:<rule>:<instant>` (arming a rule is recorded as kind `alarm` too, under the action's key).
async fn alarm_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<i64>> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.to.into()];
    let filter = pathway_filter(scope, &mut args);
    let sql = format!(
        "SELECT {k}, COUNT(*) FROM record r JOIN enrolments e ON e.id = r.enrolment_id \
         WHERE r.kind = 'alarm' AND r.dedupe_key LIKE 'alarm:%' AND e.institution_id = $1 AND r.at >= $2 AND r.at < $3{filter}{g}",
        k = key.expr(),
        g = key.group_by(),
    );
    grouped(pool, &sql, args, |r| r.i64(1)).await
}

/// Hospital stays that ended (`discharged`) in the period, each from the latest `admitted` event
/// of the enrolment before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StayCounts {
    pub stays: i64,
    /// Their total length, exact.
    pub total_seconds: i64,
    /// The same in days.
    pub total_days: f64,
}

/// One hospital stay that ended in a period.
struct Stay {
    /// The grouping key it was read under.
    key: Option<String>,
    /// The `discharged` event's sequence number.
    discharge: i64,
    enrolment_id: i64,
    patient_id: String,
    pathway: String,
    admitted_at: i64,
    discharged_at: i64,
}

impl Stay {
    /// Admission to discharge, in seconds.
    fn length_seconds(&self) -> i64 {
        self.discharged_at - self.admitted_at
    }
}

/// The stays that ended (`discharged`) in the period, each from the latest `admitted` event of the
/// enrolment before it; a discharge with no admission before it is no stay.
async fn stays(pool: &Pool, scope: &Scope<'_>, p: &Period, key: Key) -> Result<Vec<Stay>> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.to.into()];
    let filter = pathway_filter(scope, &mut args);
    let sql = format!(
        "SELECT {k}, d.at, (SELECT MAX(a.at) FROM events a WHERE a.enrolment_id = d.enrolment_id AND a.name = 'admitted' AND a.at <= d.at AND a.void_at IS NULL), \
         d.seq, d.enrolment_id, e.patient_id, e.pathway_id \
         FROM events d JOIN enrolments e ON e.id = d.enrolment_id \
         WHERE d.name = 'discharged' AND d.void_at IS NULL AND e.institution_id = $1 AND d.at >= $2 AND d.at < $3{filter} \
         ORDER BY d.at, d.seq",
        k = key.expr(),
    );
    Ok(pool
        .fetch(&sql, args)
        .await?
        .iter()
        .filter_map(|r| {
            Some(Stay {
                key: r.opt_text(0),
                discharged_at: r.i64(1),
                admitted_at: r.opt_i64(2)?,
                discharge: r.i64(3),
                enrolment_id: r.i64(4),
                patient_id: r.text(5),
                pathway: r.text(6),
            })
        })
        .collect())
}

async fn stay_counts(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<StayCounts>> {
    let mut out: Grouped<StayCounts> = BTreeMap::new();
    for stay in stays(pool, scope, p, key).await? {
        let c = out.entry(stay.key.clone()).or_default();
        c.stays += 1;
        c.total_seconds += stay.length_seconds();
        c.total_days = c.total_seconds as f64 / 86_400.0;
    }
    Ok(out)
}

/// Staff of an institution: (id, display name, roles).
pub async fn staff(pool: &Pool, institution: &str) -> Result<Vec<(String, String, Vec<String>)>> {
    let rows = pool
        .fetch(
            "SELECT id, display_name, roles FROM staff WHERE institution_id = $1 ORDER BY id",
            crate::args![institution],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let roles = r
                .text(2)
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            (r.text(0), r.text(1), roles)
        })
        .collect())
}

fn is_case_manager(roles: &[String]) -> bool {
    roles
        .iter()
        .any(|r| CASE_MANAGER_ROLES.contains(&r.as_str()))
}

// ---------------------------------------------------------------------------------------------
// The built-in indicators

/// Every built-in count for one scope and period (or one pathway's share of them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Builtins {
    pub enrolments: EnrolmentCounts,
    pub tasks: TaskCounts,
    pub follow_ups: FollowUpCounts,
    pub scales: ScaleCounts,
    pub referrals: ReferralCounts,
    pub alarms: i64,
    pub stays: StayCounts,
}

impl Builtins {
    /// The counts the built-in indicators divide; `case_managers` is the institution's (0 for a
    /// share of it, such as one pathway's).
    pub fn counts(&self, case_managers: i64) -> Counts {
        Counts {
            follow_up_due: self.follow_ups.patients_due,
            followed_up: self.follow_ups.patients_followed_up,
            scales_pushed: self.scales.pushed,
            scales_answered: self.scales.answered,
            enrolments_active: self.enrolments.active,
            enrolments_active_at_end: self.enrolments.active_at_end,
            referrals_sent: self.referrals.sent,
            referrals_up: self.referrals.sent_up,
            upward_received: self.referrals.upward_received,
            upward_accepted_in_time: self.referrals.upward_accepted_in_time,
            stays: self.stays.stays,
            stay_seconds: self.stays.total_seconds,
            case_managers,
            ..self.tasks.counts()
        }
    }

    /// Every built-in indicator's value, as the report and the API show them.
    pub fn rates(&self, case_managers: i64) -> Values {
        Values::of(&self.counts(case_managers))
    }
}

/// The built-in counts grouped by `key`: one query per family.
async fn builtins_grouped(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    key: Key,
) -> Result<Grouped<Builtins>> {
    let mut out: Grouped<Builtins> = BTreeMap::new();
    for (k, v) in enrolment_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().enrolments = v;
    }
    for (k, v) in task_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().tasks = v;
    }
    for (k, v) in follow_up_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().follow_ups = v;
    }
    for (k, v) in scale_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().scales = v;
    }
    for (k, v) in referral_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().referrals = v;
    }
    for (k, v) in alarm_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().alarms = v;
    }
    for (k, v) in stay_counts(pool, scope, p, key).await? {
        out.entry(k).or_default().stays = v;
    }
    Ok(out)
}

/// The built-in counts of a scope over a period.
pub async fn builtins(pool: &Pool, scope: &Scope<'_>, p: &Period) -> Result<Builtins> {
    Ok(builtins_grouped(pool, scope, p, Key::All)
        .await?
        .into_values()
        .next()
        .unwrap_or_default())
}

/// The built-in counts per pathway (pathways with anything to count).
pub async fn builtins_by_pathway(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
) -> Result<BTreeMap<String, Builtins>> {
    Ok(builtins_grouped(pool, scope, p, Key::Pathway)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k?, v)))
        .filter(|(_, v)| *v != Builtins::default())
        .collect())
}

/// Task counts per role.
pub async fn tasks_by_role(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
) -> Result<BTreeMap<String, TaskCounts>> {
    Ok(task_counts(pool, scope, p, Key::Role)
        .await?
        .into_iter()
        .filter_map(|(k, v)| Some((k?, v)))
        .filter(|(_, v)| *v != TaskCounts::default())
        .collect())
}

/// One staff member's work, or the unassigned tasks (`staff: None`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StaffRow {
    pub staff: Option<String>,
    pub name: Option<String>,
    pub roles: Vec<String>,
    pub case_manager: bool,
    pub tasks: TaskCounts,
}

/// Task counts per assignee (the staff member who claimed or completed the task): every case
/// manager of the institution, every other assignee with anything to count, and the unassigned
/// tasks. Case managers first.
pub async fn tasks_by_staff(pool: &Pool, scope: &Scope<'_>, p: &Period) -> Result<Vec<StaffRow>> {
    let mut counts = task_counts(pool, scope, p, Key::Staff).await?;
    let mut rows = Vec::new();
    for (id, name, roles) in staff(pool, scope.institution).await? {
        let tasks = counts.remove(&Some(id.clone())).unwrap_or_default();
        if tasks == TaskCounts::default() && !is_case_manager(&roles) {
            continue;
        }
        rows.push(StaffRow {
            case_manager: is_case_manager(&roles),
            staff: Some(id),
            name: Some(name),
            roles,
            tasks,
        });
    }
    for (id, tasks) in counts {
        if tasks != TaskCounts::default() {
            rows.push(StaffRow {
                staff: id,
                name: None,
                roles: Vec::new(),
                case_manager: false,
                tasks,
            });
        }
    }
    rows.sort_by(|a, b| {
        (!a.case_manager, a.staff.is_none(), &a.staff).cmp(&(
            !b.case_manager,
            b.staff.is_none(),
            &b.staff,
        ))
    });
    Ok(rows)
}

/// The staff members of the institution who hold a case-manager role: (id, display name, roles).
pub async fn case_manager_staff(
    pool: &Pool,
    institution: &str,
) -> Result<Vec<(String, String, Vec<String>)>> {
    let mut all = staff(pool, institution).await?;
    all.retain(|(_, _, roles)| is_case_manager(roles));
    Ok(all)
}

/// How many staff members of the institution hold a case-manager role.
pub async fn case_managers(pool: &Pool, institution: &str) -> Result<i64> {
    Ok(case_manager_staff(pool, institution).await?.len() as i64)
}

/// Open work at `now` (a snapshot, not a period): open tasks and those past their due time.
pub async fn open_tasks(pool: &Pool, scope: &Scope<'_>, now: i64) -> Result<(i64, i64)> {
    let mut args: Vec<Arg> = vec![scope.institution.into(), now.into()];
    let filter = pathway_filter(scope, &mut args);
    let sql = format!(
        "SELECT COUNT(*), COUNT(CASE WHEN t.due_at < $2 THEN 1 END) FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id \
         WHERE t.institution_id = $1 AND t.status IN ('open', 'claimed'){filter}"
    );
    Ok(pool
        .fetch(&sql, args)
        .await?
        .first()
        .map(|r| (r.i64(0), r.i64(1)))
        .unwrap_or((0, 0)))
}

/// Tasks created and completed on each day: `bounds` are the day starts plus the end of the last
/// day (so `bounds.len() - 1` days), as instants; the caller cuts days in its time zone.
pub async fn daily_tasks(
    pool: &Pool,
    scope: &Scope<'_>,
    bounds: &[i64],
) -> Result<(Vec<i64>, Vec<i64>)> {
    let days = bounds.len().saturating_sub(1);
    let (mut created, mut completed) = (vec![0; days], vec![0; days]);
    let (Some(&first), Some(&last)) = (bounds.first(), bounds.last()) else {
        return Ok((created, completed));
    };
    let bucket = |at: i64| bounds.partition_point(|b| *b <= at).checked_sub(1);
    for (column, status, into) in [
        ("created_at", "", &mut created),
        ("completed_at", " AND t.status = 'done'", &mut completed),
    ] {
        let mut args: Vec<Arg> = vec![scope.institution.into(), first.into(), last.into()];
        let filter = pathway_filter(scope, &mut args);
        let sql = format!(
            "SELECT t.{column} FROM tasks t JOIN enrolments e ON e.id = t.enrolment_id \
             WHERE t.institution_id = $1 AND t.{column} >= $2 AND t.{column} < $3{status}{filter}"
        );
        for r in pool.fetch(&sql, args).await? {
            if let Some(day) = bucket(r.i64(0))
                && day < days
            {
                into[day] += 1;
            }
        }
    }
    Ok((created, completed))
}

/// Institutions: (id, name, kind), all or one.
pub async fn institutions(
    pool: &Pool,
    only: Option<&str>,
) -> Result<Vec<(String, String, String)>> {
    let rows = pool
        .fetch(
            "SELECT id, name, kind FROM institutions WHERE ($1 = '' OR id = $1) ORDER BY id",
            crate::args![only.unwrap_or("")],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.text(0), r.text(1), r.text(2)))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Pathway-declared indicators

/// Counts the enrolments of `pathway` at an institution that `counter` counts over a period.
///
/// Each counter reads its own table once, filtered by the period, and joins the enrolments by
/// key; a correlated `EXISTS` per enrolment would scan tables that have no index on the
/// enrolment (the record, goals) once for every enrolment.
pub async fn count(
    pool: &Pool,
    institution: &str,
    pathway: &Pathway,
    counter: &Counter,
    p: &Period,
) -> Result<i64> {
    let mut args: Vec<Arg> = vec![
        institution.into(),
        pathway.id.as_str().into(),
        p.from.into(),
        p.to.into(),
        p.due_end().into(),
    ];
    if let Some(id) = counter.id() {
        args.push(id.into());
    }
    let mine = "e.institution_id = $1 AND e.pathway_id = $2";
    let within = |col: &str| format!("{col} >= $3 AND {col} < $4");
    // Distinct enrolments among the rows of `table` (aliased `x`) that meet `cond`.
    let among = |table: &str, cond: String| {
        format!(
            "SELECT COUNT(DISTINCT e.id) FROM {table} x JOIN enrolments e ON e.id = x.enrolment_id WHERE {mine} AND {cond}"
        )
    };
    let sql = match counter {
        Counter::Enrolled => format!(
            "SELECT COUNT(*) FROM enrolments e WHERE {mine} AND e.enrolled_at < $4 AND (e.ended_at IS NULL OR e.ended_at >= $3)"
        ),
        Counter::Started => format!(
            "SELECT COUNT(*) FROM enrolments e WHERE {mine} AND {}",
            within("e.enrolled_at")
        ),
        Counter::Completed => format!(
            "SELECT COUNT(*) FROM enrolments e WHERE {mine} AND e.status = 'completed' AND {}",
            within("e.ended_at")
        ),
        // A goal's status stands from one row of its history to the next (a goal is evaluated
        // again whenever its answer can move): met in the period when a met row starts before
        // the period's end and no later row replaced it by the period's start, the enrolment
        // still active then. Read from the history, a past month counts what held in it.
        Counter::GoalMet(_) => among(
            "goal_status",
            "x.goal_id = $6 AND x.met = 1 AND x.at < $4 AND (e.ended_at IS NULL OR e.ended_at >= $3) \
             AND (x.at >= $3 OR NOT EXISTS (SELECT 1 FROM goal_status n WHERE n.enrolment_id = x.enrolment_id \
             AND n.goal_row_id = x.goal_row_id AND n.at > x.at AND n.at <= $3))"
                .to_string(),
        ),
        Counter::Event(_) => among("events", format!("x.name = $6 AND {}", within("x.at"))),
        Counter::TaskDone(_) => among(
            "tasks",
            format!(
                "x.task_ref = $6 AND x.status = 'done' AND {}",
                within("x.completed_at")
            ),
        ),
        Counter::TaskOnTime(_) => among(
            "tasks",
            format!(
                "x.task_ref = $6 AND x.status = 'done' AND x.completed_at <= x.due_at AND {}",
                within("x.completed_at")
            ),
        ),
        Counter::FollowUpSent => among(
            "follow_ups",
            "x.status = 'sent' AND x.send_at >= $3 AND x.send_at < $5".into(),
        ),
        Counter::ScaleAnswered(_) => format!(
            "SELECT COUNT(DISTINCT e.id) FROM scale_answers a JOIN enrolments e ON e.patient_id = a.patient_id \
             WHERE {mine} AND a.scale = $6 AND {}",
            within("a.at")
        ),
        Counter::Entered(state) => {
            let to = if pool.is_postgres() {
                "(x.detail::json ->> 'to')"
            } else {
                "json_extract(x.detail, '$.to')"
            };
            let mut sql = format!(
                "SELECT COUNT(*) FROM (SELECT DISTINCT x.enrolment_id FROM record x JOIN enrolments e ON e.id = x.enrolment_id \
                 WHERE {mine} AND x.kind = 'transition' AND {to} = $6 AND {}",
                within("x.at")
            );
            // Entering the first state is not a transition: it is the enrolment at an entry
            // point that starts there.
            let entries: Vec<Arg> = pathway
                .entry_points
                .iter()
                .filter(|ep| &ep.state == state)
                .map(|ep| Arg::from(ep.id.as_str()))
                .collect();
            if !entries.is_empty() {
                sql.push_str(&format!(
                    " UNION SELECT e.id FROM enrolments e WHERE {mine} AND {} AND e.entry_point IN ({})",
                    within("e.enrolled_at"),
                    super::db::placeholders(args.len() + 1, entries.len())
                ));
                args.extend(entries);
            }
            sql.push_str(") entered");
            sql
        }
    };
    Ok(pool
        .fetch(&sql, args)
        .await?
        .first()
        .map(|r| r.i64(0))
        .unwrap_or(0))
}

/// One side of an indicator: the counter as written and what it counted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub counter: String,
    pub count: i64,
}

/// A pathway-declared indicator computed for a period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndicatorValue {
    pub pathway: String,
    pub id: String,
    pub title: Text,
    /// The declared period (`week`, `month`, …); `from`/`to` are the instants actually counted.
    pub period: String,
    pub from: i64,
    pub to: i64,
    pub numerator: Side,
    pub denominator: Side,
    pub value: Option<f64>,
    pub target: Option<f64>,
    /// `value >= target`; `None` when there is no target or nothing was counted.
    pub target_met: Option<bool>,
    /// Why the indicator could not be computed (a counter that does not parse).
    pub problem: Option<String>,
}

/// Counts one side; a counter that does not parse (a model stored before counters were checked)
/// counts nothing and says why.
async fn side(
    pool: &Pool,
    institution: &str,
    pathway: &Pathway,
    text: &str,
    p: &Period,
) -> Result<(Side, Option<String>)> {
    let (count, problem) = match Counter::parse(text) {
        Ok(c) => (count(pool, institution, pathway, &c, p).await?, None),
        Err(e) => (0, Some(e.to_string())),
    };
    Ok((
        Side {
            counter: text.to_string(),
            count,
        },
        problem,
    ))
}

/// Computes one declared indicator of `pathway` at an institution over a period.
pub async fn indicator(
    pool: &Pool,
    institution: &str,
    pathway: &Pathway,
    ind: &Indicator,
    p: &Period,
) -> Result<IndicatorValue> {
    let (numerator, p1) = side(pool, institution, pathway, &ind.numerator, p).await?;
    let (denominator, p2) = side(pool, institution, pathway, &ind.denominator, p).await?;
    let problem = p1.or(p2);
    let value = if problem.is_some() {
        None
    } else {
        rate(numerator.count, denominator.count)
    };
    Ok(IndicatorValue {
        pathway: pathway.id.clone(),
        id: ind.id.clone(),
        title: ind.title.clone(),
        period: serde_json::to_value(ind.period)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        from: p.from,
        to: p.to,
        numerator,
        denominator,
        value,
        target: ind.target,
        target_met: value.zip(ind.target).map(|(v, t)| v >= t),
        problem,
    })
}

// ---------------------------------------------------------------------------------------------
// The API's view

/// What `GET /kpis` asks for.
#[derive(Debug, Clone, Copy)]
pub struct KpiRequest<'a> {
    pub scope: Scope<'a>,
    pub period: Period,
    pub by: Option<By>,
}

/// One side of a built-in indicator as the API shows it: a whole count, or days.
pub fn side_json(c: &Counts, q: defs::Quantity) -> Value {
    c.count(q).map_or_else(|| json!(c.get(q)), |n| json!(n))
}

/// A built-in indicator as the API shows it: value, the two counts, target.
fn builtin_json(d: &defs::Definition, c: &Counts) -> Value {
    let value = d.value(c);
    json!({"value": value, "numerator": side_json(c, d.numerator), "denominator": side_json(c, d.denominator),
           "target": d.target, "target_met": d.target_met(value)})
}

fn builtins_json(b: &Builtins) -> Value {
    json!({
        "enrolments": b.enrolments,
        "tasks": b.tasks,
        "follow_ups": b.follow_ups,
        "scales": b.scales,
        "referrals": b.referrals,
        "alarms": b.alarms,
        "stays": b.stays,
        "rates": b.rates(0),
    })
}

/// The indicators of an institution over a period, with an optional breakdown and the declared
/// indicators of the pathways in scope (computed over the same period). The first keys keep the
/// shape the API has always served.
pub async fn kpis(pool: &Pool, pathways: &[&Pathway], req: &KpiRequest<'_>) -> Result<Value> {
    let (scope, p) = (&req.scope, &req.period);
    let b = builtins(pool, scope, p).await?;
    let (open, overdue_now) = open_tasks(pool, scope, p.as_of).await?;
    let managers = case_managers(pool, scope.institution).await?;
    let c = b.counts(managers);
    let builtin: serde_json::Map<String, Value> = defs::BUILTIN
        .iter()
        .map(|d| (d.name.to_string(), builtin_json(d, &c)))
        .collect();
    // The keys before `builtin` are the API's older names for the same values.
    let mut out = json!({
        "institution": scope.institution,
        "pathway": scope.pathway,
        "from": super::ts(p.from).to_string(), "to": super::ts(p.to).to_string(),
        "follow_up_rate": builtin[defs::FOLLOW_UP_RATE.name],
        "on_time_task_rate": builtin[defs::ON_TIME_TASK_RATE.name],
        "overdue_tasks": overdue_now, "open_tasks": open,
        "scale_completion": builtin[defs::SCALE_COMPLETION.name],
        "referrals": {"total": b.referrals.sent, "up": b.referrals.sent_up, "down": b.referrals.sent_down,
                      "rate": defs::REFERRAL_RATE.value(&c), "up_share": defs::UPWARD_SHARE.value(&c)},
        "upward_accepted_within_24h": builtin[defs::UPWARD_ACCEPTED_IN_TIME_RATE.name],
        "case_load_per_case_manager": defs::CASE_LOAD_PER_CASE_MANAGER.value(&c),
        "case_managers": managers,
        "active_enrolments": b.enrolments.active_at_end, "enrolments_in_period": b.enrolments.active,
        "average_length_of_stay_days": defs::AVERAGE_LENGTH_OF_STAY_DAYS.value(&c),
        "alarms": b.alarms,
        "builtin": builtin,
        "counts": builtins_json(&b),
    });
    if let Some(by) = req.by {
        let rows: Vec<Value> = match by {
            By::Pathway => builtins_by_pathway(pool, scope, p)
                .await?
                .iter()
                .map(|(k, v)| json!({"pathway": k, "counts": builtins_json(v)}))
                .collect(),
            By::Role => tasks_by_role(pool, scope, p)
                .await?
                .iter()
                .map(|(k, v)| json!({"role": k, "tasks": v, "on_time_task_rate": v.on_time_rate()}))
                .collect(),
            By::Staff => tasks_by_staff(pool, scope, p)
                .await?
                .iter()
                .map(|s| json!({"staff": s.staff, "name": s.name, "roles": s.roles, "case_manager": s.case_manager,
                                "tasks": s.tasks, "on_time_task_rate": s.tasks.on_time_rate()}))
                .collect(),
        };
        out["breakdown"] = json!({"by": by.as_str(), "rows": rows});
    }
    let mut indicators = Vec::new();
    for pw in pathways {
        if scope.pathway.is_some_and(|id| id != pw.id) {
            continue;
        }
        for ind in &pw.indicators {
            indicators.push(indicator(pool, scope.institution, pw, ind, p).await?);
        }
    }
    out["indicators"] = json!(indicators);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Line lists: the rows behind a figure

/// A line row's id: a row of its table (task, scale push, referral, enrolment, or a stay's
/// `discharged` event), or a staff member's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RowId {
    Row(i64),
    Staff(String),
}

impl std::fmt::Display for RowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RowId::Row(id) => write!(f, "{id}"),
            RowId::Staff(id) => f.write_str(id),
        }
    }
}

/// One row a built-in indicator counts, and on which side of the figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LineRow {
    /// `task`, `scale_push`, `referral`, `enrolment`, `stay` or `staff`.
    pub kind: &'static str,
    pub id: RowId,
    /// The patient, enrolment and pathway of every row but a staff member.
    pub patient_id: Option<String>,
    pub enrolment_id: Option<i64>,
    pub pathway: Option<String>,
    /// The task's id in its pathway, the scale, the institution a referral received came from,
    /// a referral sent's direction and destination, an enrolment's current state, or a staff
    /// member's name.
    pub what: Option<String>,
    /// The row's status; a staff member's roles.
    pub status: String,
    /// Due (a task), pushed (a scale), requested (a referral), enrolled, or admitted (a stay), in
    /// seconds.
    pub at: Option<i64>,
    /// Completed (a task), decided (a referral), ended (an enrolment) or discharged (a stay).
    pub completed_at: Option<i64>,
    pub outcome: Option<String>,
    /// A stay's length, admission to discharge, in seconds: what it adds to a numerator of days.
    pub length_seconds: Option<i64>,
    pub in_numerator: bool,
    pub in_denominator: bool,
}

/// Which side of a figure the rows of one query count on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sides {
    /// The denominator's rows; the query's flag column says whether the numerator counts them too.
    Flagged,
    /// Numerator rows that are not the denominator's (referrals sent over enrolments active).
    Numerator,
    /// Denominator rows that are not the numerator's.
    Denominator,
}

/// One query of a line list, its columns: id, patient, enrolment, pathway, what, status, at,
/// completed at, outcome, numerator flag.
struct Part {
    kind: &'static str,
    sql: String,
    args: Vec<Arg>,
    sides: Sides,
}

async fn read_part(pool: &Pool, part: Part) -> Result<Vec<LineRow>> {
    let rows = pool.fetch(&part.sql, part.args).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let flag = r.i64(9) == 1;
            let (in_numerator, in_denominator) = match part.sides {
                Sides::Flagged => (flag, true),
                Sides::Numerator => (true, false),
                Sides::Denominator => (false, true),
            };
            LineRow {
                kind: part.kind,
                id: RowId::Row(r.i64(0)),
                patient_id: Some(r.text(1)),
                enrolment_id: Some(r.i64(2)),
                pathway: Some(r.text(3)),
                what: r.opt_text(4),
                status: r.text(5),
                at: Some(r.i64(6)),
                completed_at: r.opt_i64(7),
                outcome: r.opt_text(8),
                length_seconds: None,
                in_numerator,
                in_denominator,
            }
        })
        .collect())
}

/// The rows behind a built-in indicator, each marked with the sides of the figure that count it.
/// Each list is read with the very clauses (and, for stays and case managers, the very functions)
/// its counts are computed with, so the list and the figure cannot disagree:
///
/// - `follow_up_rate`: the follow-up calls due; counted per enrolment, an enrolment being in the
///   numerator when any of its calls is.
/// - `on_time_task_rate`, `overdue_rate`: the tasks due; `scale_completion`: the scales pushed;
///   `upward_accepted_in_time_rate`: the upward referrals received; `upward_share`: the referrals
///   sent — the denominator's rows, those the numerator counts marked.
/// - `referral_rate`: the referrals sent (numerator) and the enrolments active in the period
///   (denominator).
/// - `average_length_of_stay_days`: the stays that ended in the period (denominator), each adding
///   its length to the numerator.
/// - `case_load_per_case_manager`: the enrolments active at the end of the period (numerator) and
///   the institution's case managers (denominator).
///
/// With `staff`, one staff member's share of a task figure (the tasks assigned to them). `None`
/// for an indicator with no such list.
pub async fn line_list(
    pool: &Pool,
    scope: &Scope<'_>,
    p: &Period,
    indicator: &str,
    staff: Option<&str>,
) -> Result<Option<Vec<LineRow>>> {
    // One staff member's share: the tasks assigned to them, as the breakdown by staff groups them
    // (`Key::Staff`); nothing else is anyone's.
    let assigned = |args: &mut Vec<Arg>| match staff {
        Some(st) => {
            args.push(st.into());
            format!(" AND {} = ${}", Key::Staff.expr(), args.len())
        }
        None => String::new(),
    };
    // `$1` institution, `$2` from, `$3` to, then the pathway's condition.
    let period = || {
        let mut args: Vec<Arg> = vec![scope.institution.into(), p.from.into(), p.to.into()];
        let filter = pathway_filter(scope, &mut args);
        (args, filter)
    };
    let flag = |cond: &str| format!("CAST(CASE WHEN {cond} THEN 1 ELSE 0 END AS BIGINT)");
    let task_cols = "t.id, t.patient_id, t.enrolment_id, e.pathway_id, t.task_ref, t.status, t.due_at, t.completed_at, t.outcome";
    let enrolment_cols = "e.id, e.patient_id, e.id, e.pathway_id, e.state, e.status, e.enrolled_at, e.ended_at, NULL";
    let sent_cols = "r.id, r.patient_id, r.enrolment_id, e.pathway_id, \
         r.direction || ' → ' || COALESCE(r.to_institution, r.to_kind), r.status, r.requested_at, r.decided_at, NULL";
    let mut parts = Vec::new();
    let mut out = Vec::new();
    match (indicator, staff) {
        ("on_time_task_rate" | "overdue_rate", _) => {
            let mut args: Vec<Arg> = vec![
                scope.institution.into(),
                p.from.into(),
                p.to.into(),
                p.due_end().into(),
            ];
            let mut filter = pathway_filter(scope, &mut args);
            filter.push_str(&assigned(&mut args));
            let num = if indicator == "overdue_rate" {
                TASK_LATE
            } else {
                TASK_ON_TIME
            };
            parts.push(Part {
                kind: "task",
                sql: format!(
                    "SELECT {task_cols}, {} {TASKS_OF_PERIOD} AND {TASK_DUE}{filter} ORDER BY t.due_at, t.id",
                    flag(num)
                ),
                args,
                sides: Sides::Flagged,
            });
        }
        ("follow_up_rate", _) => {
            let mut args: Vec<Arg> =
                vec![scope.institution.into(), p.from.into(), p.due_end().into()];
            let mut filter = pathway_filter(scope, &mut args);
            let (calls, reached) = follow_up_calls(&mut args);
            filter.push_str(&assigned(&mut args));
            parts.push(Part {
                kind: "task",
                sql: format!(
                    "SELECT {task_cols}, {} {calls}{filter} ORDER BY t.enrolment_id, t.due_at, t.id",
                    flag(&reached)
                ),
                args,
                sides: Sides::Flagged,
            });
        }
        ("scale_completion", None) => {
            let (args, filter) = period();
            parts.push(Part {
                kind: "scale_push",
                sql: format!(
                    "SELECT s.id, s.patient_id, s.enrolment_id, e.pathway_id, s.scale, s.status, s.created_at, NULL, NULL, \
                     {} {SCALES_PUSHED}{filter} ORDER BY s.created_at, s.id",
                    flag(SCALE_ANSWERED)
                ),
                args,
                sides: Sides::Flagged,
            });
        }
        ("upward_accepted_in_time_rate", None) => {
            let (args, filter) = period();
            parts.push(Part {
                kind: "referral",
                sql: format!(
                    "SELECT r.id, r.patient_id, r.enrolment_id, e.pathway_id, r.from_institution, r.status, r.requested_at, r.decided_at, NULL, \
                     {} {UPWARD_RECEIVED}{filter} ORDER BY r.requested_at, r.id",
                    flag(REFERRAL_IN_TIME)
                ),
                args,
                sides: Sides::Flagged,
            });
        }
        ("upward_share", None) => {
            let (args, filter) = period();
            parts.push(Part {
                kind: "referral",
                sql: format!(
                    "SELECT {sent_cols}, {} {REFERRALS_SENT}{filter} ORDER BY r.requested_at, r.id",
                    flag(REFERRAL_UP)
                ),
                args,
                sides: Sides::Flagged,
            });
        }
        ("referral_rate", None) => {
            let (args, filter) = period();
            parts.push(Part {
                kind: "referral",
                sql: format!(
                    "SELECT {sent_cols}, CAST(1 AS BIGINT) {REFERRALS_SENT}{filter} ORDER BY r.requested_at, r.id"
                ),
                args,
                sides: Sides::Numerator,
            });
            let (args, filter) = period();
            parts.push(Part {
                kind: "enrolment",
                sql: format!(
                    "SELECT {enrolment_cols}, CAST(0 AS BIGINT) {ENROLMENTS_OF_PERIOD}{filter} ORDER BY e.enrolled_at, e.id"
                ),
                args,
                sides: Sides::Denominator,
            });
        }
        ("case_load_per_case_manager", None) => {
            let (args, filter) = period();
            parts.push(Part {
                kind: "enrolment",
                sql: format!(
                    "SELECT {enrolment_cols}, CAST(1 AS BIGINT) {ENROLMENTS_OF_PERIOD} AND {ENROLMENT_ACTIVE_AT_END}{filter} ORDER BY e.enrolled_at, e.id"
                ),
                args,
                sides: Sides::Numerator,
            });
        }
        ("average_length_of_stay_days", None) => {
            out.extend(
                stays(pool, scope, p, Key::All)
                    .await?
                    .into_iter()
                    .map(|s| LineRow {
                        kind: "stay",
                        id: RowId::Row(s.discharge),
                        length_seconds: Some(s.length_seconds()),
                        patient_id: Some(s.patient_id),
                        enrolment_id: Some(s.enrolment_id),
                        pathway: Some(s.pathway),
                        what: None,
                        status: "discharged".into(),
                        at: Some(s.admitted_at),
                        completed_at: Some(s.discharged_at),
                        outcome: None,
                        in_numerator: true,
                        in_denominator: true,
                    }),
            );
        }
        _ => return Ok(None),
    }
    for part in parts {
        out.extend(read_part(pool, part).await?);
    }
    if indicator == defs::CASE_LOAD_PER_CASE_MANAGER.name {
        out.extend(
            case_manager_staff(pool, scope.institution)
                .await?
                .into_iter()
                .map(|(id, name, roles)| LineRow {
                    kind: "staff",
                    id: RowId::Staff(id),
                    patient_id: None,
                    enrolment_id: None,
                    pathway: None,
                    what: Some(name),
                    status: roles.join(","),
                    at: None,
                    completed_at: None,
                    outcome: None,
                    length_seconds: None,
                    in_numerator: false,
                    in_denominator: true,
                }),
        );
    }
    if indicator == defs::FOLLOW_UP_RATE.name {
        // Counted per enrolment: every call of an enrolment followed up counts with it.
        let reached: std::collections::BTreeSet<Option<i64>> = out
            .iter()
            .filter(|r| r.in_numerator)
            .map(|r| r.enrolment_id)
            .collect();
        for r in &mut out {
            r.in_numerator = reached.contains(&r.enrolment_id);
        }
    }
    Ok(Some(out))
}

/// The indicators [`line_list`] lists: every built-in one.
pub const LINE_LISTS: &[&str] = &[
    "follow_up_rate",
    "on_time_task_rate",
    "overdue_rate",
    "scale_completion",
    "referral_rate",
    "upward_share",
    "upward_accepted_in_time_rate",
    "average_length_of_stay_days",
    "case_load_per_case_manager",
];

/// The indicators whose line list can be one staff member's share (`staff`): the task figures.
pub const STAFF_LINE_LISTS: &[&str] = &["follow_up_rate", "on_time_task_rate", "overdue_rate"];

/// A line list's numerator and denominator, counted as its figure counts them: rows; distinct
/// enrolments for the follow-up quantities (a patient counts once however many calls fell due);
/// the stays' lengths for stay days. `None` for a name that is no built-in indicator.
pub fn line_list_counts(indicator: &str, rows: &[LineRow]) -> Option<Counts> {
    let d = defs::definition(indicator)?;
    let count = |q: defs::Quantity, side: fn(&LineRow) -> bool| -> i64 {
        let rows = rows.iter().filter(|r| side(r));
        match q {
            defs::Quantity::FollowUpDue | defs::Quantity::FollowedUp => {
                rows.filter_map(|r| r.enrolment_id)
                    .collect::<std::collections::BTreeSet<i64>>()
                    .len() as i64
            }
            defs::Quantity::StayDays => rows.filter_map(|r| r.length_seconds).sum(),
            _ => rows.count() as i64,
        }
    };
    let mut c = Counts::default();
    c.set(d.denominator, count(d.denominator, |r| r.in_denominator));
    c.set(d.numerator, count(d.numerator, |r| r.in_numerator));
    Some(c)
}

/// [`line_list`] for a request (optionally one staff member's share): audited with the patients it
/// names before it is returned.
pub async fn read_line_list(
    pool: &Pool,
    audit: &crate::queries::AuditAppender,
    caller: &crate::queries::Caller,
    req: (&Scope<'_>, &Period, &str, Option<&str>),
    remote: &str,
    now: jiff::Timestamp,
) -> Result<Option<Vec<LineRow>>> {
    let (scope, p, indicator, staff) = req;
    let Some(rows) = line_list(pool, scope, p, indicator, staff).await? else {
        return Ok(None);
    };
    let patients: std::collections::BTreeSet<&String> =
        rows.iter().filter_map(|r| r.patient_id.as_ref()).collect();
    let patients: Vec<String> = patients.into_iter().cloned().collect();
    audit
        .append(crate::queries::AuditEntry::new(
            &caller.staff_id,
            Some(&caller.institution_id),
            "kpi.rows",
            &format!("kpis/{indicator}/rows"),
            &patients,
            "ok",
            remote,
            now,
        ))
        .await?;
    Ok(Some(rows))
}
