//! The monthly operations report (seed 000 §11.7): what a month of the record says, per
//! institution, as JSON for machines and as one self-contained HTML page for people.
//!
//! The report is built from the store's indicator queries only, so the API, the report and any
//! later tooling count the same way. Month boundaries are midnights in the hospital's time zone.
//! A pathway's declared indicator is counted over its declared period ending with the month (a
//! quarterly indicator over the three months to the month's end), and says which instants it
//! covered. The HTML carries its own styles and inline SVG charts and no script, so it opens
//! offline and can be mailed as one file; every text is escaped. Nothing in it names a patient:
//! rows are counted, never listed.

use std::fmt::Write as _;

use carepath_dsl::{Period as DeclaredPeriod, Text};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Serialize;

use crate::indicators::{self as defs, Counts, Definition, Unit, Values};
use crate::program::Programs;
use crate::store::indicators::{
    self, Builtins, IndicatorValue, Period, Scope, StaffRow, TaskCounts,
};
use crate::store::{Pool, Result, StoreError};
use crate::svg::{self, Bar, Doc, Series, escape, percent};

/// What to report on.
#[derive(Debug, Clone)]
pub struct Options {
    /// The first day of the month.
    pub month: Date,
    pub tz: TimeZone,
    /// One institution, or all of them.
    pub institution: Option<String>,
    /// Work due after this instant is not yet counted as missed (now, for the current month).
    pub as_of: Timestamp,
}

/// Parses `YYYY-MM` into the first day of that month.
pub fn parse_month(s: &str) -> std::result::Result<Date, String> {
    let bad = || format!("`{s}` is not a month; write it as YYYY-MM, e.g. 2026-10");
    let (y, m) = s.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m): (i16, i8) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Date::new(y, m, 1).map_err(|_| bad())
}

#[derive(Debug, Clone, Serialize)]
pub struct MonthlyReport {
    /// `YYYY-MM`.
    pub month: String,
    pub tz: String,
    /// The month as instants: `[from, to)`, and the same in Unix seconds.
    pub from: String,
    pub to: String,
    pub from_s: i64,
    pub to_s: i64,
    /// Due work counts up to here.
    pub as_of: String,
    pub institutions: Vec<InstitutionReport>,
    /// A signed checkpoint of the audit record taken when the report was written (count, last
    /// row id, head hash, when, signature), so each report carries a copy of it away from the
    /// database; `carepath report` fills it in.
    pub audit_checkpoint: Option<crate::audit::Checkpoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstitutionReport {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// Pathways with an enrolment active in the month here.
    pub pathways_live: usize,
    pub case_managers: i64,
    /// Enrolments active at the end of the month per case manager.
    pub case_load_per_case_manager: Option<f64>,
    pub counts: Builtins,
    /// Every built-in indicator by name (`crate::indicators`).
    pub rates: Values,
    pub by_pathway: Vec<PathwayRow>,
    pub by_role: Vec<RoleRow>,
    pub by_staff: Vec<StaffReportRow>,
    pub indicators: Vec<IndicatorValue>,
    pub daily: Daily,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathwayRow {
    pub pathway: String,
    pub title: Option<Text>,
    pub counts: Builtins,
    pub rates: Values,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleRow {
    pub role: String,
    pub tasks: TaskCounts,
    pub on_time_task_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaffReportRow {
    #[serde(flatten)]
    pub row: StaffRow,
    pub on_time_task_rate: Option<f64>,
}

/// Tasks created and completed on each day of the month.
#[derive(Debug, Clone, Serialize)]
pub struct Daily {
    pub dates: Vec<String>,
    pub tasks_created: Vec<i64>,
    pub tasks_completed: Vec<i64>,
}

fn start(d: Date, tz: &TimeZone) -> Result<i64> {
    d.to_zoned(tz.clone())
        .map(|z| z.timestamp().as_second())
        .map_err(|e| StoreError::Invalid(format!("{d} in {}: {e}", tz_name(tz))))
}

fn tz_name(tz: &TimeZone) -> String {
    tz.iana_name().unwrap_or("UTC").to_string()
}

fn shift(d: Date, months: i32) -> Result<Date> {
    d.checked_add(months.months())
        .map_err(|e| StoreError::Invalid(format!("{d} {months:+} months: {e}")))
}

/// The instants an indicator with a declared period covers in the report of the month that starts
/// on `month`: that period's length, ending with the month.
fn declared_window(
    period: DeclaredPeriod,
    month: Date,
    tz: &TimeZone,
    as_of: i64,
) -> Result<Period> {
    let next = shift(month, 1)?;
    let first = match period {
        DeclaredPeriod::Week => next
            .checked_sub(7.days())
            .map_err(|e| StoreError::Invalid(e.to_string()))?,
        DeclaredPeriod::Month => month,
        DeclaredPeriod::Quarter => shift(month, -2)?,
        DeclaredPeriod::Year => shift(month, -11)?,
    };
    Ok(Period {
        from: start(first, tz)?,
        to: start(next, tz)?,
        as_of,
    })
}

/// Builds the report for a month from the store.
pub async fn monthly(pool: &Pool, programs: &Programs, opts: &Options) -> Result<MonthlyReport> {
    let tz = &opts.tz;
    let next = shift(opts.month, 1)?;
    let period = Period {
        from: start(opts.month, tz)?,
        to: start(next, tz)?,
        as_of: opts.as_of.as_second(),
    };
    let mut bounds = Vec::new();
    let mut dates = Vec::new();
    // Days that have begun by `as_of`: the current month's chart stops today.
    let mut d = opts.month;
    while d < next && start(d, tz)? < period.as_of.max(period.from + 1) {
        bounds.push(start(d, tz)?);
        dates.push(d.to_string());
        d = d
            .tomorrow()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
    }
    bounds.push(start(d, tz)?);
    let latest = programs.latest();
    let institutions = indicators::institutions(pool, opts.institution.as_deref()).await?;
    if let Some(id) = &opts.institution
        && institutions.is_empty()
    {
        return Err(StoreError::NotFound(format!("institution {id}")));
    }
    let mut out = Vec::new();
    for (id, name, kind) in institutions {
        let scope = Scope {
            institution: &id,
            pathway: None,
        };
        let counts = indicators::builtins(pool, &scope, &period).await?;
        let by_pathway: Vec<PathwayRow> = indicators::builtins_by_pathway(pool, &scope, &period)
            .await?
            .into_iter()
            .map(|(pathway, counts)| PathwayRow {
                title: latest
                    .iter()
                    .find(|p| p.pathway.id == pathway)
                    .map(|p| p.pathway.title.clone()),
                pathway,
                rates: counts.rates(0),
                counts,
            })
            .collect();
        let by_role = indicators::tasks_by_role(pool, &scope, &period)
            .await?
            .into_iter()
            .map(|(role, tasks)| RoleRow {
                role,
                on_time_task_rate: tasks.on_time_rate(),
                tasks,
            })
            .collect();
        let by_staff = indicators::tasks_by_staff(pool, &scope, &period)
            .await?
            .into_iter()
            .map(|row| StaffReportRow {
                on_time_task_rate: row.tasks.on_time_rate(),
                row,
            })
            .collect();
        let mut declared = Vec::new();
        for prog in &latest {
            for ind in &prog.pathway.indicators {
                let window = declared_window(ind.period, opts.month, tz, period.as_of)?;
                declared.push(indicators::indicator(pool, &id, &prog.pathway, ind, &window).await?);
            }
        }
        let (tasks_created, tasks_completed) =
            indicators::daily_tasks(pool, &scope, &bounds).await?;
        let case_managers = indicators::case_managers(pool, &id).await?;
        out.push(InstitutionReport {
            pathways_live: by_pathway
                .iter()
                .filter(|p| p.counts.enrolments.active > 0)
                .count(),
            case_load_per_case_manager: defs::CASE_LOAD_PER_CASE_MANAGER
                .value(&counts.counts(case_managers)),
            case_managers,
            rates: counts.rates(case_managers),
            counts,
            by_pathway,
            by_role,
            by_staff,
            indicators: declared,
            daily: Daily {
                dates: dates.clone(),
                tasks_created,
                tasks_completed,
            },
            id,
            name,
            kind,
        });
    }
    Ok(MonthlyReport {
        month: format!("{:04}-{:02}", opts.month.year(), opts.month.month()),
        tz: tz_name(tz),
        from: crate::store::ts(period.from).to_string(),
        to: crate::store::ts(period.to).to_string(),
        from_s: period.from,
        to_s: period.to,
        as_of: opts.as_of.to_string(),
        institutions: out,
        audit_checkpoint: None,
    })
}

// ---------------------------------------------------------------------------------------------
// HTML

/// `[from, to)` as the local dates it covers: `2026-10-01 – 2026-10-31`.
fn local_days(from: i64, to: i64, tz: &TimeZone) -> String {
    let day = |s: i64| crate::store::ts(s).to_zoned(tz.clone()).date().to_string();
    format!("{} – {}", day(from), day(to - 1))
}

fn opt_rate(v: Option<f64>) -> String {
    v.map(percent).unwrap_or_else(|| "—".into())
}

fn opt_num(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "—".into())
}

/// `n / d (rate)`.
fn frac(n: i64, d: i64) -> String {
    format!("{n} / {d} ({})", opt_rate(indicators::rate(n, d)))
}

/// A built-in indicator as `numerator / denominator (value)`, in its unit.
fn builtin_cell(d: &Definition, c: &Counts) -> String {
    let (n, den) = d.sides(c);
    let value = d.value(c);
    match d.unit {
        Unit::Ratio => format!("{n} / {den} ({})", opt_rate(value)),
        Unit::Days | Unit::PerStaff => format!("{} ({n:.1} / {den})", opt_num(value, 2)),
    }
}

/// `中文 English`.
fn builtin_label(d: &Definition) -> String {
    format!("{} {}", d.title_en, d.title_zh)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#222}\
h1{font-size:24px}h2{font-size:20px;border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:40px}\
h3{font-size:16px;margin-top:24px}table{border-collapse:collapse;margin:8px 0;font-size:13px}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f2f5f9}\
td:first-child,th:first-child{text-align:left}.met{color:#2ca02c;font-weight:bold}\
.missed{color:#d62728;font-weight:bold}.note{color:#666;font-size:12px}";

/// Renders the report as one HTML page.
pub fn html(r: &MonthlyReport) -> String {
    let mut h = String::new();
    let title = format!("月度运营报告 Monthly operations report {}", r.month);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"zh-CN\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        escape(&title),
        escape(&title)
    );
    let tz = TimeZone::get(&r.tz).unwrap_or(TimeZone::UTC);
    let _ = writeln!(
        h,
        "<p>{} ({}); work falling due counted up to {}. Counts only: no patient is named.</p>",
        escape(&local_days(r.from_s, r.to_s, &tz)),
        escape(&r.tz),
        escape(&r.as_of)
    );
    if r.institutions.is_empty() {
        h.push_str("<p>No institutions in this database.</p>\n");
    }
    for inst in &r.institutions {
        institution_html(&mut h, inst, &tz);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn row(h: &mut String, cells: &[String]) {
    h.push_str("<tr>");
    for c in cells {
        let _ = write!(h, "<td>{}</td>", escape(c));
    }
    h.push_str("</tr>\n");
}

fn header(h: &mut String, cells: &[&str]) {
    h.push_str("<table>\n<tr>");
    for c in cells {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr>\n");
}

fn institution_html(h: &mut String, inst: &InstitutionReport, tz: &TimeZone) {
    let c = &inst.counts;
    let r = &inst.rates;
    let _ = writeln!(
        h,
        "<h2>{} <span class=\"note\">{} · {}</span></h2>",
        escape(&inst.name),
        escape(&inst.id),
        escape(&inst.kind)
    );
    h.push_str("<h3>Summary 概况</h3>\n");
    header(h, &["indicator", "value"]);
    let lines: Vec<(&str, String)> = vec![
        ("Pathways live 上线病种", inst.pathways_live.to_string()),
        ("Enrolments new 新收案", c.enrolments.new.to_string()),
        (
            "Enrolments active in the month 在管",
            c.enrolments.active.to_string(),
        ),
        (
            "Enrolments ended (completed / withdrawn) 结案",
            format!(
                "{} ({} / {})",
                c.enrolments.ended, c.enrolments.completed, c.enrolments.withdrawn
            ),
        ),
        (
            "Enrolments active at month end",
            c.enrolments.active_at_end.to_string(),
        ),
        (
            "Follow-up messages sent / due 随访消息",
            frac(c.follow_ups.sent, c.follow_ups.due),
        ),
        ("Tasks created", c.tasks.created.to_string()),
        (
            "Tasks completed (on time) 完成",
            format!("{} ({})", c.tasks.completed, c.tasks.completed_on_time),
        ),
        (
            "Referrals sent (up / down) 转诊",
            format!(
                "{} ({} / {})",
                c.referrals.sent, c.referrals.sent_up, c.referrals.sent_down
            ),
        ),
        ("Alarms raised 预警", c.alarms.to_string()),
    ];
    for (k, v) in lines {
        row(h, &[k.to_string(), v]);
    }
    let counts = c.counts(inst.case_managers);
    for d in defs::BUILTIN {
        row(h, &[builtin_label(d), builtin_cell(d, &counts)]);
    }
    h.push_str("</table>\n");

    // Rates against targets, built-in and declared.
    let mut bars: Vec<Bar> = defs::BUILTIN
        .iter()
        .filter(|d| d.unit == Unit::Ratio)
        .map(|d| Bar {
            label: builtin_label(d),
            value: r.get(d.name),
            target: d.target,
        })
        .collect();
    for i in &inst.indicators {
        bars.push(Bar {
            label: format!("{} {} ({})", i.title.zh, i.title.en, i.pathway),
            value: i.value,
            target: i.target,
        });
    }
    let mut doc = Doc::new(960, svg::bars_height(bars.len()));
    doc.bars(0, "Indicators against targets 指标与目标", &bars);
    h.push_str(&doc.finish());

    h.push_str("<h3>Pathway indicators 病种成效指标</h3>\n");
    if inst.indicators.is_empty() {
        h.push_str("<p class=\"note\">No pathway declares indicators.</p>\n");
    } else {
        header(
            h,
            &[
                "pathway",
                "indicator",
                "period",
                "numerator",
                "denominator",
                "value",
                "target",
                "met",
            ],
        );
        for i in &inst.indicators {
            let met = match i.target_met {
                Some(true) => "<td class=\"met\">yes</td>",
                Some(false) => "<td class=\"missed\">no</td>",
                None => "<td>—</td>",
            };
            h.push_str("<tr>");
            for cell in [
                i.pathway.clone(),
                format!("{} {}", i.title.zh, i.title.en),
                format!("{}: {}", i.period, local_days(i.from, i.to, tz)),
                format!("{} = {}", i.numerator.counter, i.numerator.count),
                format!("{} = {}", i.denominator.counter, i.denominator.count),
                i.problem.clone().unwrap_or_else(|| opt_rate(i.value)),
                opt_rate(i.target),
            ] {
                let _ = write!(h, "<td>{}</td>", escape(&cell));
            }
            h.push_str(met);
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }

    h.push_str("<h3>Per pathway 分病种</h3>\n");
    header(
        h,
        &[
            "pathway",
            "new",
            "active",
            "ended",
            "follow-up messages sent / due",
            "followed up / due a follow-up 随访率",
            "tasks on time / due",
            "overdue / due",
            "scales answered / pushed",
            "referrals up / down",
            "alarms",
            "avg stay (days)",
        ],
    );
    for p in &inst.by_pathway {
        let c = &p.counts;
        let counts = c.counts(0);
        let name = match &p.title {
            Some(t) => format!("{} {}", p.pathway, t.zh),
            None => p.pathway.clone(),
        };
        row(
            h,
            &[
                name,
                c.enrolments.new.to_string(),
                c.enrolments.active.to_string(),
                c.enrolments.ended.to_string(),
                frac(c.follow_ups.sent, c.follow_ups.due),
                builtin_cell(&defs::FOLLOW_UP_RATE, &counts),
                builtin_cell(&defs::ON_TIME_TASK_RATE, &counts),
                builtin_cell(&defs::OVERDUE_RATE, &counts),
                builtin_cell(&defs::SCALE_COMPLETION, &counts),
                format!("{} / {}", c.referrals.sent_up, c.referrals.sent_down),
                c.alarms.to_string(),
                opt_num(p.rates.get(defs::AVERAGE_LENGTH_OF_STAY_DAYS.name), 2),
            ],
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h3>Per role 分角色</h3>\n");
    header(
        h,
        &[
            "role",
            "created",
            "completed",
            "due on time",
            "on-time rate",
            "due",
            "overdue",
        ],
    );
    for r in &inst.by_role {
        let t = &r.tasks;
        row(
            h,
            &[
                r.role.clone(),
                t.created.to_string(),
                t.completed.to_string(),
                t.due_on_time.to_string(),
                opt_rate(r.on_time_task_rate),
                t.due.to_string(),
                t.overdue.to_string(),
            ],
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h3>Per staff member, case managers first 个案管理师及工作人员</h3>\n");
    header(
        h,
        &[
            "staff",
            "roles",
            "completed",
            "due on time",
            "on-time rate",
            "due",
            "overdue",
            "case load (enrolments served)",
        ],
    );
    for s in &inst.by_staff {
        let t = &s.row.tasks;
        let who = match (&s.row.staff, &s.row.name) {
            (Some(id), Some(name)) => format!("{name} ({id})"),
            (Some(id), None) => id.clone(),
            (None, _) => "(unassigned)".into(),
        };
        row(
            h,
            &[
                who,
                s.row.roles.join(", "),
                t.completed.to_string(),
                t.due_on_time.to_string(),
                opt_rate(s.on_time_task_rate),
                t.due.to_string(),
                t.overdue.to_string(),
                t.enrolments.to_string(),
            ],
        );
    }
    h.push_str("</table>\n");

    h.push_str("<h3>Tasks per day 每日任务</h3>\n");
    let series = [
        Series {
            name: "created 新建".into(),
            colour: 0,
            values: inst.daily.tasks_created.iter().map(|v| *v as f64).collect(),
        },
        Series {
            name: "completed 完成".into(),
            colour: 2,
            values: inst
                .daily
                .tasks_completed
                .iter()
                .map(|v| *v as f64)
                .collect(),
        },
    ];
    let mut doc = Doc::new(960, 320);
    doc.chart_from(
        0,
        "Tasks created and completed per day",
        "day of month",
        "tasks",
        &series,
        1.0,
    );
    h.push_str(&doc.finish());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_strictly() {
        assert_eq!(parse_month("2026-10"), Ok(Date::constant(2026, 10, 1)));
        for bad in ["2026-13", "2026-1", "26-10", "2026/10", "", "2026-10-01"] {
            assert!(parse_month(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn declared_periods_end_with_the_month() {
        let tz = TimeZone::get("Asia/Shanghai").expect("zone");
        let oct = Date::constant(2026, 10, 1);
        let at = |d: Date| start(d, &tz).expect("start");
        let w = |p| declared_window(p, oct, &tz, 0).expect("window");
        let end = at(Date::constant(2026, 11, 1));
        assert_eq!(end, 1_793_491_200 - 8 * 3600);
        assert_eq!(w(DeclaredPeriod::Month).from, at(oct));
        assert_eq!(
            w(DeclaredPeriod::Quarter).from,
            at(Date::constant(2026, 8, 1))
        );
        assert_eq!(
            w(DeclaredPeriod::Year).from,
            at(Date::constant(2025, 11, 1))
        );
        assert_eq!(
            w(DeclaredPeriod::Week).from,
            at(Date::constant(2026, 10, 25))
        );
        assert!(
            [DeclaredPeriod::Week, DeclaredPeriod::Year]
                .iter()
                .all(|p| w(*p).to == end)
        );
    }
}
