//! The task board of the signed-in role at its institution: the same page of the queue as
//! `GET /queues/tasks` (urgent first, then by due time), overdue work marked, tasks that reached
//! this board by escalation marked, filters, and a form per action (claim, complete with the
//! pathway's declared outcomes, snooze with a reason, reassign to staff who may hold the task).
//! The rows refresh every 30 s through htmx; every form works without script.

use std::collections::HashMap;

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use carepath_engine::store::alarms::{self, EpisodeFilter, EpisodeView};
use carepath_engine::store::indicators;
use carepath_engine::store::queries::{self, QueueFilter, QueueTask, TaskAction};
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Lang, page, url_encode, when, when_text};
use super::session::{Staff, local};
use crate::auth::Module;
use crate::handlers::queue::perform;
use crate::{ApiError, AppState};

/// Rows a board page shows.
const BOARD_ROWS: i64 = 100;

#[derive(Deserialize, Default, Clone)]
pub(crate) struct BoardQuery {
    status: Option<String>,
    pathway: Option<String>,
    due: Option<String>,
    board: Option<String>,
    done: Option<String>,
}

impl BoardQuery {
    fn query_string(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [
            ("status", &self.status),
            ("pathway", &self.pathway),
            ("due", &self.due),
            ("board", &self.board),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                q.push(format!("{k}={}", url_encode(v)));
            }
        }
        q.join("&")
    }
}

/// What the board shows: its tasks, the outcomes each accepts, who may take each, open alarms.
struct Board {
    tasks: Vec<QueueTask>,
    outcomes: HashMap<i64, Vec<String>>,
    colleagues: Vec<(String, String, Vec<String>)>,
    alarms: Vec<EpisodeView>,
}

async fn load(s: &AppState, staff: &Staff, q: &BoardQuery) -> Result<Board, ApiError> {
    let now = staff.call.now.as_second();
    let day = 86_400;
    let (due_before, due_after) = match q.due.as_deref() {
        Some("overdue") => (Some(now), None),
        Some("today") => (Some(end_of_day(now)), None),
        Some("week") => (Some(now + 7 * day), None),
        Some("later") => (None, Some(now + 7 * day)),
        _ => (None, None),
    };
    let status = match q.status.as_deref() {
        Some(st @ ("open" | "claimed" | "active" | "done")) => st.to_string(),
        _ => "active".to_string(),
    };
    let filter = QueueFilter {
        role: q.board.clone().filter(|b| !b.is_empty()),
        status: Some(status),
        due_before,
        due_after,
        pathway: q.pathway.clone().filter(|p| !p.is_empty()),
        limit: BOARD_ROWS,
        ..Default::default()
    };
    let programs = s.programs();
    let c = &staff.call;
    let tasks = queries::read_queue(
        &s.pool, &s.audit, &programs, &c.caller, &filter, &c.remote, c.now,
    )
    .await?;
    let ids: Vec<i64> = tasks.iter().map(|t| t.enrolment_id).collect();
    let pathways = queries::enrolment_pathways(&s.pool, &ids).await?;
    let outcomes = tasks
        .iter()
        .map(|t| {
            let accepted = pathways
                .get(&t.enrolment_id)
                .and_then(|(p, v)| programs.get(p, u32::try_from(*v).unwrap_or(0)))
                .map(|p| p.pathway.accepted_outcomes(t.task_ref.as_deref()))
                .unwrap_or_else(|| carepath_dsl::catalog::TASK_OUTCOMES.to_vec());
            (t.id, accepted.into_iter().map(str::to_string).collect())
        })
        .collect();
    let colleagues = indicators::staff(&s.pool, &c.caller.institution_id).await?;
    let alarms = alarms::list_episodes(
        &s.pool,
        &s.audit,
        &c.caller,
        &EpisodeFilter {
            status: Some("active".into()),
            limit: 50,
            ..Default::default()
        },
        &c.remote,
        c.now,
    )
    .await?;
    Ok(Board {
        tasks,
        outcomes,
        colleagues,
        alarms,
    })
}

/// The end of the hospital's day that `now` falls in.
fn end_of_day(now: i64) -> i64 {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_second(now)
        .ok()
        .and_then(|t| t.to_zoned(tz).tomorrow().ok())
        .and_then(|d| d.start_of_day().ok())
        .map_or(now + 86_400, |z| z.timestamp().as_second())
}

pub(crate) async fn board(
    State(s): State<AppState>,
    mut staff: Staff,
    Query(q): Query<BoardQuery>,
) -> Result<Response, Response> {
    staff.require(&s, Module::Queue, "queue.read").await?;
    let lang = staff.lang;
    let b = load(&s, &staff, &q)
        .await
        .map_err(|e| layout::error_page(lang, Some(&staff), e))?;
    let programs = s.programs();
    let boards = programs.boards_for(&staff.caller().roles);
    let latest = programs.latest();
    let rows_url = format!("/app/board/rows?{}", q.query_string());
    let body = html! {
        h1 { (lang.t("任务看板", "Task board")) }
        @if let Some(done) = &q.done {
            p class="flash" role="status" data-testid="flash" { (flash(lang, done)) }
        }
        form method="get" action="/app/board" class="filters" id="board-filters" aria-label=(lang.t("筛选", "Filters")) {
            p {
                label for="f-status" { (lang.t("状态", "Status")) }
                select id="f-status" name="status" {
                    @for (v, zh, en) in [("active", "待办（未领取+已领取）", "Open and claimed"), ("open", "未领取", "Open"), ("claimed", "已领取", "Claimed"), ("done", "已完成", "Done")] {
                        option value=(v) selected[q.status.as_deref().unwrap_or("active") == v] { (lang.t(zh, en)) }
                    }
                }
            }
            p {
                label for="f-pathway" { (lang.t("路径", "Pathway")) }
                select id="f-pathway" name="pathway" {
                    option value="" { (lang.t("全部", "All")) }
                    @for p in &latest {
                        option value=(p.pathway.id) selected[q.pathway.as_deref() == Some(p.pathway.id.as_str())] { (lang.text(&p.pathway.title)) }
                    }
                }
            }
            p {
                label for="f-due" { (lang.t("到期", "Due")) }
                select id="f-due" name="due" {
                    @for (v, zh, en) in [("", "任何时间", "Any time"), ("overdue", "已逾期", "Overdue"), ("today", "今天内", "By end of today"), ("week", "7天内", "Within 7 days"), ("later", "7天后", "Later")] {
                        option value=(v) selected[q.due.as_deref().unwrap_or("") == v] { (lang.t(zh, en)) }
                    }
                }
            }
            @if boards.len() > 1 {
                p {
                    label for="f-board" { (lang.t("看板", "Board")) }
                    select id="f-board" name="board" {
                        option value="" { (lang.t("我的全部看板", "All my boards")) }
                        @for r in &boards {
                            option value=(r) selected[q.board.as_deref() == Some(r.as_str())] { (r) }
                        }
                    }
                }
            }
            button type="submit" id="apply-filters" { (lang.t("筛选", "Apply")) }
        }
        (rows(&staff, &b, &rows_url))
        (alarm_list(lang, &staff, &b.alarms))
    };
    Ok(page(
        lang,
        Some(&staff),
        lang.t("任务看板", "Task board"),
        "board",
        body,
    ))
}

/// The rows alone, for htmx's refresh.
pub(crate) async fn board_rows(
    State(s): State<AppState>,
    mut staff: Staff,
    Query(q): Query<BoardQuery>,
) -> Result<Response, Response> {
    staff.require(&s, Module::Queue, "queue.read").await?;
    let b = load(&s, &staff, &q)
        .await
        .map_err(|e| layout::error_page(staff.lang, Some(&staff), e))?;
    let rows_url = format!("/app/board/rows?{}", q.query_string());
    let mut res = rows(&staff, &b, &rows_url).into_string().into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

fn flash(lang: Lang, done: &str) -> &'static str {
    match done {
        "task.claim" => lang.t("已领取任务。", "Task claimed."),
        "task.complete" => lang.t(
            "任务已完成，路径已推进。",
            "Task completed; the pathway has moved on.",
        ),
        "task.snooze" => lang.t("任务已延后。", "Task snoozed."),
        "task.reassign" => lang.t("任务已转派。", "Task reassigned."),
        "alarm.acknowledge" => lang.t("已确认报警。", "Alarm acknowledged."),
        "alarm.resolve" => lang.t("报警已处理。", "Alarm resolved."),
        _ => lang.t("已完成。", "Done."),
    }
}

fn priority_label(lang: Lang, p: &str) -> &'static str {
    match p {
        "urgent" => lang.t("紧急", "Urgent"),
        "high" => lang.t("高", "High"),
        "normal" => lang.t("普通", "Normal"),
        _ => lang.t("低", "Low"),
    }
}

fn rows(staff: &Staff, b: &Board, rows_url: &str) -> Markup {
    let lang = staff.lang;
    let now = staff.call.now.as_second();
    let back = staff.path.clone();
    html! {
        div id="board-rows" class="table-wrap" hx-get=(rows_url) hx-trigger="every 30s" hx-swap="outerHTML" {
            p class="muted" data-testid="board-count" {
                (b.tasks.len()) " " (lang.t("项任务", "tasks"))
                @if b.tasks.len() as i64 == BOARD_ROWS { " " (lang.t("（仅显示前100项）", "(the first 100)")) }
                " · " (lang.t("更新于", "as of")) " " (when(now))
            }
            table id="board-table" {
                caption class="muted" { (lang.t("紧急任务在前，其次按到期时间。", "Urgent first, then by due time.")) }
                thead { tr {
                    th scope="col" { (lang.t("优先级", "Priority")) }
                    th scope="col" { (lang.t("任务", "Task")) }
                    th scope="col" { (lang.t("患者", "Patient")) }
                    th scope="col" { (lang.t("到期", "Due")) }
                    th scope="col" { (lang.t("状态", "Status")) }
                    th scope="col" { (lang.t("操作", "Actions")) }
                } }
                tbody {
                    @for t in &b.tasks {
                        @let overdue = t.due_at_s < now && (t.status == "open" || t.status == "claimed");
                        @let escalated = !staff.caller().roles.contains(&t.role);
                        tr id=(format!("task-{}", t.id)) data-testid="task-row" data-task=(t.id) data-priority=(t.priority) class=[overdue.then_some("is-overdue")] {
                            td { span class=(format!("badge p-{}", t.priority)) { (priority_label(lang, t.priority)) } }
                            td {
                                (lang.text(&t.title))
                                @if escalated { br; span class="escalated" data-testid="escalated" { (lang.t("已升级至本岗位：", "Escalated to you from ")) (t.role) } }
                            }
                            td { a href=(format!("/app/patients/{}", url_encode(&t.patient_id))) data-testid="patient-link" { (t.patient_id) } }
                            td {
                                (when(t.due_at_s))
                                @if overdue { br; span class="overdue" data-testid="overdue" { (lang.t("已逾期", "Overdue")) } }
                            }
                            td {
                                (t.status)
                                @if let Some(a) = &t.assignee { br; span class="muted" { (a) } }
                                @if let Some(l) = &t.lease_until { br; span class="muted" { (lang.t("领取至 ", "held until ")) (when_text(l)) } }
                            }
                            td class="actions" {
                                @if t.status == "open" || t.status == "claimed" {
                                    (task_forms(staff, t, b.outcomes.get(&t.id).map(Vec::as_slice).unwrap_or(&[]), &b.colleagues, &back))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn task_forms(
    staff: &Staff,
    t: &QueueTask,
    outcomes: &[String],
    colleagues: &[(String, String, Vec<String>)],
    back: &str,
) -> Markup {
    let lang = staff.lang;
    let id = t.id;
    let action = |a: &str| format!("/app/tasks/{id}/{a}");
    html! {
        @if t.status == "open" {
            form method="post" action=(action("claim")) id=(format!("claim-{id}")) {
                input type="hidden" name="csrf" value=(staff.csrf);
                input type="hidden" name="back" value=(back);
                button type="submit" data-testid="claim" { (lang.t("领取", "Claim")) }
            }
        }
        form method="post" action=(action("complete")) id=(format!("complete-{id}")) {
            input type="hidden" name="csrf" value=(staff.csrf);
            input type="hidden" name="back" value=(back);
            label for=(format!("outcome-{id}")) { (lang.t("结果", "Outcome")) }
            select id=(format!("outcome-{id}")) name="outcome" required {
                @for o in outcomes { option value=(o) { (o) } }
            }
            button type="submit" data-testid="complete" { (lang.t("完成", "Complete")) }
        }
        details class="more" {
        summary data-testid="more-actions" { (lang.t("延后或转派", "Snooze or reassign")) }
        form method="post" action=(action("snooze")) id=(format!("snooze-{id}")) {
            input type="hidden" name="csrf" value=(staff.csrf);
            input type="hidden" name="back" value=(back);
            label for=(format!("hours-{id}")) { (lang.t("延后（小时）", "Snooze (hours)")) }
            input id=(format!("hours-{id}")) name="hours" type="number" min="1" max="2160" value="24" size="4" required;
            label for=(format!("reason-{id}")) { (lang.t("原因", "Reason")) }
            input id=(format!("reason-{id}")) name="reason" type="text" required size="12";
            button type="submit" class="secondary" data-testid="snooze" { (lang.t("延后", "Snooze")) }
        }
        form method="post" action=(action("reassign")) id=(format!("reassign-{id}")) {
            input type="hidden" name="csrf" value=(staff.csrf);
            input type="hidden" name="back" value=(back);
            label for=(format!("assignee-{id}")) { (lang.t("转派给", "Reassign to")) }
            select id=(format!("assignee-{id}")) name="assignee" required {
                @for (sid, name, roles) in colleagues {
                    @if roles.contains(&t.role) && !roles.iter().any(|r| r == "device_gateway") {
                        option value=(sid) { (name) }
                    }
                }
            }
            button type="submit" class="secondary" data-testid="reassign" { (lang.t("转派", "Reassign")) }
        }
        }
    }
}

fn alarm_list(lang: Lang, staff: &Staff, alarms: &[EpisodeView]) -> Markup {
    html! {
        section class="card" aria-labelledby="alarms-title" id="board-alarms" {
            h2 id="alarms-title" { (lang.t("未关闭的报警", "Open alarms")) }
            @if alarms.is_empty() {
                p class="muted" { (lang.t("没有未关闭的报警。", "No open alarms.")) }
            } @else {
                ul {
                    @for a in alarms {
                        li data-testid="alarm" {
                            (a.alarm) " · " a href=(format!("/app/patients/{}", url_encode(&a.patient_id))) { (a.patient_id) }
                            " · " (when_text(&a.opened_at)) " · " (a.status)
                            @if a.role != staff.role() { " · " span class="escalated" { (lang.t("升级", "escalated")) } }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct TaskForm {
    #[serde(default)]
    csrf: String,
    back: Option<String>,
    outcome: Option<String>,
    assignee: Option<String>,
    hours: Option<i64>,
    reason: Option<String>,
}

/// A task form's post: the same action as `POST /tasks/{id}/{action}`, then back to the page.
pub(crate) async fn act(
    State(s): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    mut staff: Staff,
    Form(f): Form<TaskForm>,
) -> Result<Response, Response> {
    staff.check_csrf(&s, &f.csrf).await?;
    staff.require(&s, Module::Queue, "task.act").await?;
    let lang = staff.lang;
    let bad = |m: &str| ApiError::BadRequest(m.to_string());
    let act = match action.as_str() {
        "claim" => Ok(TaskAction::Claim {
            lease_seconds: 30 * 60,
        }),
        "complete" => f
            .outcome
            .as_deref()
            .filter(|o| !o.is_empty())
            .map(|outcome| TaskAction::Complete { outcome })
            .ok_or_else(|| bad(lang.t("请选择结果。", "Choose an outcome."))),
        "reassign" => f
            .assignee
            .as_deref()
            .filter(|a| !a.is_empty())
            .map(|assignee| TaskAction::Reassign { assignee })
            .ok_or_else(|| bad(lang.t("请选择转派对象。", "Choose whom to reassign to."))),
        "snooze" => match (f.hours, f.reason.as_deref().map(str::trim)) {
            (Some(h), Some(reason)) if (1..=2160).contains(&h) && !reason.is_empty() => {
                let until = staff.call.now + jiff::SignedDuration::from_hours(h);
                Ok(TaskAction::Snooze { until, reason })
            }
            _ => Err(bad(lang.t(
                "延后需要1至2160小时以及原因。",
                "Snoozing needs 1 to 2160 hours and a reason.",
            ))),
        },
        other => Err(ApiError::NotFound(format!("no task action `{other}`"))),
    };
    let done = match act {
        Ok(act) => perform(&s, &staff.call, id, act).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(out) => Ok(back_to(f.back.as_deref(), out.action)),
        Err(e) => Err(layout::error_page(lang, Some(&staff), e)),
    }
}

/// Back to the page a form was on, saying what was done.
pub(crate) fn back_to(back: Option<&str>, done: &str) -> Response {
    let to = local(back);
    let (path, query) = to.split_once('?').unwrap_or((&to, ""));
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("done="))
        .collect();
    let mut q = kept.join("&");
    if !q.is_empty() {
        q.push('&');
    }
    Redirect::to(&format!("{path}?{q}done={done}")).into_response()
}
