//! Indicators of the caller's institution over a period: the built-in ones (indicator, target,
//! value, trend over the periods before) with a bar chart against their targets, the same per
//! pathway and per staff member, and the pathways' declared indicators. Every built-in figure
//! links to its line list: the tasks, scale pushes, referrals, enrolments, stays or case managers
//! its numerator and denominator count, read with the very clauses the figure is counted with
//! (`store::indicators::line_list`), the same list `GET /kpis/{indicator}/rows` serves.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use carepath_engine::indicators::{self as defs, Counts, Quantity, Unit};
use carepath_engine::store::indicators::{self, LINE_LISTS, Period, Scope};
use carepath_engine::svg;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::layout::{self, Lang, page, url_encode, when};
use super::session::Staff;
use crate::auth::Module;
use crate::handlers::kpis::{Figure, line_list, period, published};
use crate::{ApiError, AppState};

/// Periods of the trend: this one and the ones before it, of the same length.
const TREND_PERIODS: i64 = 6;

#[derive(Deserialize, Default)]
pub(crate) struct PeriodQuery {
    from: Option<String>,
    to: Option<String>,
    pathway: Option<String>,
    staff: Option<String>,
}

impl PeriodQuery {
    fn pathway(&self) -> Option<&str> {
        self.pathway.as_deref().filter(|p| !p.is_empty())
    }

    /// A drill-down over this period, for `pathway`.
    fn link(&self, name: &str, pathway: Option<&str>) -> String {
        self.link_for(name, pathway, None)
    }

    /// A drill-down over this period, for `pathway` and `staff`.
    fn link_for(&self, name: &str, pathway: Option<&str>, staff: Option<&str>) -> String {
        let mut q = Vec::new();
        if let Some(f) = self.from.as_deref().filter(|v| !v.is_empty()) {
            q.push(format!("from={}", url_encode(f)));
        }
        if let Some(t) = self.to.as_deref().filter(|v| !v.is_empty()) {
            q.push(format!("to={}", url_encode(t)));
        }
        if let Some(p) = pathway {
            q.push(format!("pathway={}", url_encode(p)));
        }
        if let Some(st) = staff {
            q.push(format!("staff={}", url_encode(st)));
        }
        format!("/app/indicators/{name}/patients?{}", q.join("&"))
    }
}

fn value_text(unit: Unit, v: Option<f64>) -> String {
    match (unit, v) {
        (_, None) => "—".into(),
        (Unit::Ratio, Some(v)) => svg::percent(v),
        (_, Some(v)) => format!("{v:.2}"),
    }
}

/// One side of a figure: a whole count, or days to one decimal.
fn side_text(c: &Counts, q: Quantity) -> String {
    c.count(q)
        .map_or_else(|| format!("{:.1}", c.get(q)), |n| n.to_string())
}

fn title(lang: Lang, d: &defs::Definition) -> &'static str {
    match lang {
        Lang::Zh => d.title_zh,
        Lang::En => d.title_en,
    }
}

async fn counts(s: &AppState, scope: &Scope<'_>, p: &Period) -> Result<Counts, ApiError> {
    let b = indicators::builtins(&s.pool, scope, p).await?;
    let managers = indicators::case_managers(&s.pool, scope.institution).await?;
    Ok(b.counts(managers))
}

async fn build(s: &AppState, staff: &Staff, q: &PeriodQuery) -> Result<Markup, ApiError> {
    let lang = staff.lang;
    let c = &staff.call;
    let now = c.now.as_second();
    let (from, to) = period(now, q.from.as_deref(), q.to.as_deref())?;
    let programs = s.programs();
    published(&programs, q.pathway())?;
    let scope = Scope {
        institution: &c.caller.institution_id,
        pathway: q.pathway(),
    };
    let p = Period {
        from,
        to,
        as_of: now,
    };
    let current = counts(s, &scope, &p).await?;
    let len = to - from;
    let mut trend: Vec<Counts> = Vec::new();
    for i in (1..TREND_PERIODS).rev() {
        let before = Period {
            from: from - i * len,
            to: to - i * len,
            as_of: now,
        };
        trend.push(counts(s, &scope, &before).await?);
    }
    trend.push(current);
    let bars: Vec<svg::Bar> = defs::BUILTIN
        .iter()
        .filter(|d| d.unit == Unit::Ratio)
        .map(|d| svg::Bar {
            label: title(lang, d).to_string(),
            value: d.value(&current),
            target: d.target,
        })
        .collect();
    let mut chart = svg::Doc::new(760, svg::bars_height(bars.len()));
    chart.bars(
        0,
        lang.t("比率与目标", "Rates against their targets"),
        &bars,
    );
    let by_pathway = indicators::builtins_by_pathway(&s.pool, &scope, &p).await?;
    let managers = indicators::case_managers(&s.pool, scope.institution).await?;
    let by_staff = indicators::tasks_by_staff(&s.pool, &scope, &p).await?;
    let mut declared = Vec::new();
    for prog in programs.latest() {
        if scope.pathway.is_some_and(|id| id != prog.pathway.id) {
            continue;
        }
        for ind in &prog.pathway.indicators {
            declared.push((
                lang.text(&prog.pathway.title),
                indicators::indicator(&s.pool, scope.institution, &prog.pathway, ind, &p).await?,
            ));
        }
    }
    let latest = programs.latest();
    Ok(html! {
        h1 { (lang.t("指标", "Indicators")) " · " (c.caller.institution_id) }
        form method="get" action="/app/indicators" class="filters" id="indicator-filters" {
            p { label for="i-from" { (lang.t("起始日期", "From")) } input id="i-from" name="from" type="date" value=[q.from.as_deref()]; }
            p { label for="i-to" { (lang.t("截止日期（不含）", "To (not included)")) } input id="i-to" name="to" type="date" value=[q.to.as_deref()]; }
            p {
                label for="i-pathway" { (lang.t("路径", "Pathway")) }
                select id="i-pathway" name="pathway" {
                    option value="" { (lang.t("全部", "All")) }
                    @for prog in &latest {
                        option value=(prog.pathway.id) selected[q.pathway() == Some(prog.pathway.id.as_str())] { (lang.text(&prog.pathway.title)) }
                    }
                }
            }
            button type="submit" { (lang.t("查看", "Show")) }
        }
        p class="muted" { (when(from)) " – " (when(to)) "; " (lang.t("趋势为此前各同长度周期", "the trend is the periods of the same length before it")) }
        section class="card" aria-labelledby="builtin-title" {
            h2 id="builtin-title" { (lang.t("内置指标", "Built-in indicators")) }
            div class="table-wrap" { table id="indicator-table" {
                thead { tr {
                    th scope="col" { (lang.t("指标", "Indicator")) }
                    th scope="col" { (lang.t("目标", "Target")) }
                    th scope="col" { (lang.t("数值", "Value")) }
                    th scope="col" { (lang.t("分子 / 分母", "Numerator / denominator")) }
                    th scope="col" { (lang.t("趋势", "Trend")) }
                } }
                tbody {
                    @for d in defs::BUILTIN {
                        @let v = d.value(&current);
                        tr data-testid="indicator-row" data-indicator=(d.name) {
                            th scope="row" { (title(lang, d)) br; span class="muted" { (d.name) } }
                            td { (value_text(d.unit, d.target)) }
                            td data-testid="indicator-value" {
                                @if LINE_LISTS.contains(&d.name) {
                                    a href=(q.link(d.name, q.pathway())) data-testid="drill-down" { (value_text(d.unit, v)) }
                                } @else { (value_text(d.unit, v)) }
                                @match d.target_met(v) { Some(true) => " ✓", Some(false) => span class="overdue" { " ✗" }, None => "" }
                            }
                            td data-testid="indicator-sides" { (side_text(&current, d.numerator)) " / " (side_text(&current, d.denominator)) }
                            td { @for (i, t) in trend.iter().enumerate() { @if i > 0 { " → " } (value_text(d.unit, d.value(t))) } }
                        }
                    }
                }
            } }
            figure class="chart" { (PreEscaped(chart.finish())) }
        }
        section class="card" aria-labelledby="pathway-title" {
            h2 id="pathway-title" { (lang.t("按路径", "By pathway")) }
            div class="table-wrap" { table id="by-pathway" {
                thead { tr {
                    th scope="col" { (lang.t("路径", "Pathway")) }
                    @for d in defs::BUILTIN.iter().filter(|d| LINE_LISTS.contains(&d.name)) { th scope="col" { (title(lang, d)) } }
                } }
                tbody {
                    @for (pathway, b) in &by_pathway {
                        // A pathway's case load is over the institution's case managers, as
                        // `GET /kpis?pathway=` and the pathway's line list count it.
                        @let cp = b.counts(managers);
                        tr data-testid="pathway-row" {
                            th scope="row" { (pathway) }
                            @for d in defs::BUILTIN.iter().filter(|d| LINE_LISTS.contains(&d.name)) {
                                td { a href=(q.link(d.name, Some(pathway))) { (value_text(d.unit, d.value(&cp))) } }
                            }
                        }
                    }
                }
            } }
        }
        section class="card" aria-labelledby="staff-title" {
            h2 id="staff-title" { (lang.t("按员工", "By staff member")) }
            div class="table-wrap" { table id="by-staff" {
                thead { tr {
                    th scope="col" { (lang.t("员工", "Staff member")) }
                    th scope="col" { (lang.t("到期任务", "Tasks due")) }
                    th scope="col" { (lang.t("按时完成", "On time")) }
                    th scope="col" { (lang.t("逾期", "Overdue")) }
                    th scope="col" { (lang.t("按时率", "On-time rate")) }
                } }
                tbody {
                    @for r in &by_staff {
                        tr {
                            th scope="row" { (r.name.clone().or(r.staff.clone()).unwrap_or_else(|| lang.t("未分配", "Unassigned").to_string())) }
                            td { (r.tasks.due) } td { (r.tasks.due_on_time) } td { (r.tasks.overdue) }
                            td {
                                @match &r.staff {
                                    Some(st) => a href=(q.link_for("on_time_task_rate", q.pathway(), Some(st))) data-testid="staff-drill-down" { (value_text(Unit::Ratio, r.tasks.on_time_rate())) },
                                    None => (value_text(Unit::Ratio, r.tasks.on_time_rate())),
                                }
                            }
                        }
                    }
                }
            } }
        }
        section class="card" aria-labelledby="declared-title" {
            h2 id="declared-title" { (lang.t("路径声明的指标", "Indicators the pathways declare")) }
            div class="table-wrap" { table id="declared" {
                thead { tr {
                    th scope="col" { (lang.t("路径", "Pathway")) }
                    th scope="col" { (lang.t("指标", "Indicator")) }
                    th scope="col" { (lang.t("目标", "Target")) }
                    th scope="col" { (lang.t("数值", "Value")) }
                    th scope="col" { (lang.t("分子 / 分母", "Numerator / denominator")) }
                } }
                tbody {
                    @for (pw, v) in &declared {
                        tr {
                            td { (pw) } th scope="row" { (lang.text(&v.title)) }
                            td { (value_text(Unit::Ratio, v.target)) }
                            td { (value_text(Unit::Ratio, v.value)) }
                            td { (v.numerator.count) " / " (v.denominator.count) }
                        }
                    }
                }
            } }
        }
    })
}

pub(crate) async fn table(
    State(s): State<AppState>,
    mut staff: Staff,
    Query(q): Query<PeriodQuery>,
) -> Result<Response, Response> {
    staff.require(&s, Module::Kpis, "kpi.read").await?;
    let lang = staff.lang;
    match build(&s, &staff, &q).await {
        Ok(body) => Ok(page(
            lang,
            Some(&staff),
            lang.t("指标", "Indicators"),
            "indicators",
            body,
        )),
        Err(e) => Err(layout::error_page(lang, Some(&staff), e)),
    }
}

/// The line list behind one figure.
pub(crate) async fn drill_down(
    State(s): State<AppState>,
    Path(name): Path<String>,
    mut staff: Staff,
    Query(q): Query<PeriodQuery>,
) -> Result<Response, Response> {
    staff.require(&s, Module::Kpis, "kpi.rows").await?;
    let lang = staff.lang;
    let figure = Figure {
        indicator: &name,
        from: q.from.as_deref(),
        to: q.to.as_deref(),
        pathway: q.pathway(),
        staff: q.staff.as_deref().filter(|s| !s.is_empty()),
    };
    let list = line_list(&s, &staff.call, figure)
        .await
        .map_err(|e| layout::error_page(lang, Some(&staff), e))?;
    let d = defs::definition(&name);
    let side = |v: &serde_json::Value| match v.as_i64() {
        Some(n) => n.to_string(),
        None => format!("{:.1}", v.as_f64().unwrap_or(0.0)),
    };
    let stays = d.is_some_and(|d| d.numerator == Quantity::StayDays);
    let staff_rows = d.is_some_and(|d| d.denominator == Quantity::CaseManagers);
    let yes_no = |b: bool| {
        if b {
            lang.t("是", "yes")
        } else {
            lang.t("否", "no")
        }
    };
    let body = html! {
        h1 { (d.map(|d| title(lang, d)).unwrap_or(&name)) }
        p data-testid="drill-sides" {
            (lang.t("分子", "Numerator")) " " @if let Some(d) = d { span class="muted" { (d.numerator.name()) } " " }
            strong data-testid="drill-numerator" { (side(&list.numerator)) }
            " / " (lang.t("分母", "denominator")) " " @if let Some(d) = d { span class="muted" { (d.denominator.name()) } " " }
            strong data-testid="drill-denominator" { (side(&list.denominator)) }
            " · " (list.institution)
            @if let Some(p) = &list.pathway { " · " (p) }
            @if let Some(st) = &list.staff { " · " (st) }
            " · " (layout::when_text(&list.from)) " – " (layout::when_text(&list.to))
        }
        p class="muted" {
            @if stays {
                (lang.t("每次住院计入分母，其天数计入分子。", "Every stay counts in the denominator, and its days in the numerator."))
            } @else {
                (lang.t("每行标明是否计入分子与分母。", "Each row is marked with the sides of the figure that count it."))
            }
        }
        @if list.rows.is_empty() { p class="muted" data-testid="drill-empty" { (lang.t("此期间没有计入的行。", "Nothing was counted in this period.")) } }
        div class="table-wrap" { table id="drill-rows" {
            thead { tr {
                th scope="col" { (lang.t("计入分子", "In numerator")) }
                th scope="col" { (lang.t("计入分母", "In denominator")) }
                th scope="col" { @if staff_rows { (lang.t("患者 / 员工", "Patient / staff member")) } @else { (lang.t("患者", "Patient")) } }
                th scope="col" { (lang.t("入组", "Enrolment")) }
                th scope="col" { (lang.t("路径", "Pathway")) }
                th scope="col" { (lang.t("项目", "Item")) }
                th scope="col" { (lang.t("状态", "Status")) }
                th scope="col" { (lang.t("开始（到期、推送、申请、入组、入院）", "From (due, pushed, requested, enrolled, admitted)")) }
                th scope="col" { (lang.t("结束（完成、决定、结案、出院）", "To (completed, decided, ended, discharged)")) }
                @if stays { th scope="col" { (lang.t("住院天数", "Days")) } }
            } }
            tbody {
                @for r in &list.rows {
                    tr data-testid="drill-row" data-kind=(r.kind) data-id=(r.id) data-patient=[r.patient_id.as_deref()] data-enrolment=[r.enrolment_id]
                        data-numerator=(r.in_numerator) data-denominator=(r.in_denominator) data-seconds=[r.length_seconds] {
                        td { (yes_no(r.in_numerator)) }
                        td { (yes_no(r.in_denominator)) }
                        td {
                            @match &r.patient_id {
                                Some(p) => a href=(format!("/app/patients/{}", url_encode(p))) { (p) },
                                None => { (r.id) " · " (lang.t("员工", "staff member")) },
                            }
                        }
                        td { @if let Some(e) = r.enrolment_id { (e) } }
                        td { @if let Some(p) = &r.pathway { (p) } }
                        td { (r.what.as_deref().unwrap_or("")) }
                        td { (r.status) @if let Some(o) = &r.outcome { " · " (o) } }
                        td { @if let Some(at) = r.at { (when(at)) } }
                        td { @if let Some(c) = r.completed_at { (when(c)) } }
                        @if stays { td { @if let Some(sec) = r.length_seconds { (format!("{:.1}", sec as f64 / 86_400.0)) } } }
                    }
                }
            }
        } }
        p { a href="/app/indicators" { (lang.t("返回指标", "Back to the indicators")) } }
    };
    Ok(page(
        lang,
        Some(&staff),
        lang.t("指标明细", "Indicator rows"),
        "drill-down",
        body,
    ))
}
