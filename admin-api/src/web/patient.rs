//! A patient's whole course on one page: enrolments and their current states, each enrolment's
//! timeline with the trace behind each step ("why is this here"), readings as charts with the
//! alarm thresholds in force, scale results with their bands, open alarm episodes with
//! acknowledge and resolve, referrals, care-plan goals and their history, and the messages sent
//! with their delivery status. Every part is read through the store function the API reads it
//! with, scoped and audited there; a patient the caller may not see is a 404, as in the API.

use std::collections::BTreeMap;

use axum::extract::{Form, Path, State};
use axum::response::Response;
use carepath_engine::store::alarms::{self, EpisodeAction, EpisodeFilter};
use carepath_engine::store::patients::{self, Course};
use carepath_engine::store::queries::{self, Timeline};
use carepath_engine::store::scales::{self, PushView};
use carepath_engine::svg;
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;

use super::board::back_to;
use super::layout::{self, Lang, when, when_text};
use super::session::Staff;
use crate::auth::{Module, allowed};
use crate::{ApiError, AppState};

pub(crate) async fn page_handler(
    s: &AppState,
    staff: &Staff,
    id: &str,
) -> Result<Markup, ApiError> {
    let c = &staff.call;
    let key = s.contact_key.as_deref();
    let patient = patients::read(&s.pool, &s.audit, &c.caller, key, id, &c.remote, c.now).await?;
    let course = patients::course(&s.pool, &s.audit, &c.caller, id, &c.remote, c.now).await?;
    let mut timelines = Vec::new();
    for e in &patient.enrolments {
        let t = queries::timeline(&s.pool, &c.caller, e.id, &c.remote, c.now).await?;
        let pushes = scales::enrolment_pushes(&s.pool, &c.caller, e.id, &c.remote, c.now).await?;
        timelines.push((t, pushes));
    }
    let roles = &c.caller.roles;
    let episodes = if allowed(roles, Module::Queue) {
        let f = EpisodeFilter {
            status: Some("active".into()),
            patient: Some(id.to_string()),
            limit: 100,
            ..Default::default()
        };
        Some(alarms::list_episodes(&s.pool, &s.audit, &c.caller, &f, &c.remote, c.now).await?)
    } else {
        None
    };
    let referrals = if allowed(roles, Module::Referrals) {
        Some(
            queries::referrals(&s.pool, &c.caller, None)
                .await?
                .into_iter()
                .filter(|r| r.patient_id == id)
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    let lang = staff.lang;
    let programs = s.programs();
    Ok(html! {
        h1 { (lang.t("患者", "Patient")) " " span data-testid="patient-id" { (patient.id) } }
        section class="card" aria-labelledby="who-title" {
            h2 id="who-title" { (lang.t("基本信息", "About")) }
            p {
                (lang.t("机构", "Institution")) ": " (patient.institution_id)
                @if let Some(h) = &patient.home_institution { " · " (lang.t("社区", "Home clinic")) ": " (h) }
                " · " (lang.t("性别", "Sex")) ": " (patient.sex)
                @if let Some(b) = &patient.birth_date { " · " (lang.t("出生", "Born")) ": " (b) }
            }
            @if let Some(contact) = &patient.contact {
                p data-testid="contact-masked" {
                    (lang.t("联系方式（已脱敏）", "Contact (masked)")) ": "
                    @if let Some(p) = &contact.phone { (p) " " }
                    @if let Some(e) = &contact.email { (e) " " }
                    @if let Some(w) = &contact.wechat_openid { "WeChat " (w) }
                }
            }
        }
        section class="card" aria-labelledby="enrol-title" {
            h2 id="enrol-title" { (lang.t("入组与当前状态", "Enrolments and current states")) }
            table id="enrolments" {
                thead { tr {
                    th scope="col" { "#" }
                    th scope="col" { (lang.t("路径", "Pathway")) }
                    th scope="col" { (lang.t("当前状态", "Current state")) }
                    th scope="col" { (lang.t("入组状态", "Status")) }
                    th scope="col" { (lang.t("机构", "Institution")) }
                } }
                tbody {
                    @for e in &patient.enrolments {
                        @let prog = programs.get(&e.pathway, u32::try_from(e.version).unwrap_or(0));
                        tr data-testid="enrolment" data-enrolment=(e.id) {
                            td { a href=(format!("#enrolment-{}", e.id)) { (e.id) } }
                            td { (prog.map(|p| lang.text(&p.pathway.title)).unwrap_or_else(|| e.pathway.clone())) " v" (e.version) }
                            td data-testid="enrolment-state" {
                                (state_title(lang, prog.map(|p| &p.pathway), &e.state))
                            }
                            td { (e.status) }
                            td { (e.institution_id) }
                        }
                    }
                }
            }
        }
        @if let Some(episodes) = &episodes {
            section class="card" aria-labelledby="alarms-title" id="patient-alarms" {
                h2 id="alarms-title" { (lang.t("未关闭的报警", "Open alarms")) }
                @if episodes.is_empty() { p class="muted" { (lang.t("没有未关闭的报警。", "No open alarms.")) } }
                @for a in episodes {
                    div class="actions" data-testid="alarm-episode" id=(format!("alarm-{}", a.id)) {
                        p { strong { (a.alarm) } " · " (a.status) " · " (lang.t("发生于", "opened")) " " (when_text(&a.opened_at)) }
                        p class="trace" { (compact(&a.detail)) }
                        @if a.status == "open" {
                            form method="post" action=(format!("/app/alarms/{}/acknowledge", a.id)) {
                                input type="hidden" name="csrf" value=(staff.csrf);
                                input type="hidden" name="back" value=(staff.path);
                                button type="submit" data-testid="acknowledge" { (lang.t("确认", "Acknowledge")) }
                            }
                        }
                        form method="post" action=(format!("/app/alarms/{}/resolve", a.id)) {
                            input type="hidden" name="csrf" value=(staff.csrf);
                            input type="hidden" name="back" value=(staff.path);
                            label for=(format!("resolve-reason-{}", a.id)) { (lang.t("处理说明", "Reason")) }
                            input id=(format!("resolve-reason-{}", a.id)) name="reason" type="text" required;
                            button type="submit" data-testid="resolve" { (lang.t("处理完毕", "Resolve")) }
                        }
                    }
                }
            }
        }
        (readings(lang, &course))
        (scale_results(lang, &course, &timelines))
        (goals(lang, &course))
        @if let Some(referrals) = &referrals {
            section class="card" aria-labelledby="ref-title" {
                h2 id="ref-title" { (lang.t("转诊", "Referrals")) }
                @if referrals.is_empty() { p class="muted" { (lang.t("没有转诊。", "No referrals.")) } }
                ul {
                    @for r in referrals {
                        li data-testid="patient-referral" {
                            (r.direction) " · " (r.from_institution) " → " (r.to_institution.as_deref().unwrap_or(&r.to_kind))
                            " · " (r.status) " · " (when_text(&r.requested_at))
                        }
                    }
                }
            }
        }
        (messages(lang, &course))
        @for (t, _) in &timelines { (timeline(lang, t)) }
    })
}

fn state_title(lang: Lang, pathway: Option<&carepath_dsl::Pathway>, state: &str) -> String {
    pathway
        .and_then(|p| p.states.iter().find(|s| s.id == state))
        .and_then(|s| s.title.as_ref())
        .map(|t| format!("{} ({state})", lang.text(t)))
        .unwrap_or_else(|| state.to_string())
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The threshold a condition compares `kind` with (`bp_systolic >= 180 || …` → 180 for
/// `bp_systolic`): for drawing only; the alarm machine judges readings by the compiled rule.
fn thresholds(kind: &str, condition: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut rest = condition;
    while let Some(i) = rest.find(kind) {
        let after = &rest[i + kind.len()..];
        let boundary_before = rest[..i]
            .chars()
            .last()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        let t = after.trim_start();
        let op = ["<=", ">=", "<", ">"]
            .into_iter()
            .find(|op| t.starts_with(op));
        if let (true, Some(op)) = (boundary_before, op) {
            let num: String = t[op.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if let Ok(v) = num.parse::<f64>() {
                out.push((op.to_string(), v));
            }
        }
        rest = after;
    }
    out
}

fn readings(lang: Lang, course: &Course) -> Markup {
    let mut by_kind: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for (k, v, at) in &course.readings {
        by_kind.entry(k.as_str()).or_default().push((*at, *v));
    }
    html! {
        section class="card" aria-labelledby="readings-title" {
            h2 id="readings-title" { (lang.t("监测读数（近180天）", "Readings (last 180 days)")) }
            @if by_kind.is_empty() { p class="muted" { (lang.t("没有读数。", "No readings.")) } }
            div class="grid" {
                @for (kind, points) in &by_kind {
                    @let lines: Vec<svg::Threshold> = course.alarm_rules.iter()
                        .filter_map(|(_, alarm, when)| when.as_deref().map(|w| (alarm, w)))
                        .flat_map(|(alarm, w)| thresholds(kind, w).into_iter().map(move |(op, v)| svg::Threshold { label: format!("{alarm} {op}"), value: v }))
                        .collect();
                    @let first = points.first().map(|p| when(p.0)).unwrap_or_default();
                    @let last = points.last().map(|p| when(p.0)).unwrap_or_default();
                    figure class="chart" data-testid="reading-chart" data-kind=(kind) {
                        (PreEscaped(svg::readings(kind, points, &lines, (&first, &last))))
                        figcaption class="muted" {
                            (points.len()) " " (lang.t("次读数", "readings"))
                            @if let Some(p) = points.last() { " · " (lang.t("最近", "latest")) " " (p.1) " (" (when(p.0)) ")" }
                        }
                    }
                }
            }
        }
    }
}

fn scale_results(lang: Lang, course: &Course, timelines: &[(Timeline, Vec<PushView>)]) -> Markup {
    let pending: Vec<&PushView> = timelines
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|p| p.status == "pending")
        .collect();
    html! {
        section class="card" aria-labelledby="scales-title" {
            h2 id="scales-title" { (lang.t("量表结果", "Scale results")) }
            @if course.scales.is_empty() { p class="muted" { (lang.t("没有量表结果。", "No scale results.")) } }
            @else {
                table id="scale-results" {
                    thead { tr { th scope="col" { (lang.t("量表", "Scale")) } th scope="col" { (lang.t("得分", "Score")) } th scope="col" { (lang.t("分级", "Band")) } th scope="col" { (lang.t("时间", "When")) } } }
                    tbody {
                        @for (scale, score, band, at) in &course.scales {
                            tr data-testid="scale-result" { td { (scale) } td { (score) } td { strong { (band) } } td { (when(*at)) } }
                        }
                    }
                }
            }
            @if !pending.is_empty() {
                p { (lang.t("待回答的量表：", "Scales awaiting an answer: ")) @for p in &pending { (p.scale) " (" (when_text(&p.due_at)) ") " } }
            }
        }
    }
}

fn goals(lang: Lang, course: &Course) -> Markup {
    html! {
        section class="card" aria-labelledby="goals-title" {
            h2 id="goals-title" { (lang.t("照护计划目标", "Care-plan goals")) }
            @if course.goals.is_empty() { p class="muted" { (lang.t("没有目标。", "No goals.")) } }
            ul {
                @for g in &course.goals {
                    li data-testid="goal" {
                        (lang.text(&g.title)) " · "
                        @match g.met {
                            Some(true) => strong { (lang.t("已达标", "met")) },
                            Some(false) => strong class="overdue" { (lang.t("未达标", "not met")) },
                            None => span class="muted" { (lang.t("尚未评估", "not yet evaluated")) },
                        }
                        @if let Some(at) = g.evaluated_at { " · " (when(at)) }
                    }
                }
            }
            @if !course.goal_history.is_empty() {
                details {
                    summary { (lang.t("评估历史", "History of evaluations")) }
                    ul {
                        @for (_, goal, met, value, at) in &course.goal_history {
                            li { (when(*at)) " · " (goal) " · " (if *met { lang.t("达标", "met") } else { lang.t("未达标", "not met") })
                                @if let Some(v) = value { " · " (format!("{v:.2}")) } }
                        }
                    }
                }
            }
        }
    }
}

fn messages(lang: Lang, course: &Course) -> Markup {
    html! {
        section class="card" aria-labelledby="msg-title" {
            h2 id="msg-title" { (lang.t("已发送消息", "Messages sent")) }
            @if course.messages.is_empty() { p class="muted" { (lang.t("没有消息。", "No messages.")) } }
            @else {
                table id="messages" {
                    thead { tr { th scope="col" { (lang.t("渠道", "Channel")) } th scope="col" { (lang.t("模板", "Template")) } th scope="col" { (lang.t("投递状态", "Delivery")) } th scope="col" { (lang.t("时间", "When")) } } }
                    tbody {
                        @for m in &course.messages {
                            tr data-testid="message" {
                                td { (m.channel) } td { (m.template) }
                                td { (m.status) @if m.attempts > 1 { " (" (m.attempts) ")" } @if let Some(e) = &m.last_error { br; span class="muted" { (e) } } }
                                td { (when(m.sent_at.unwrap_or(m.created_at))) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn timeline(lang: Lang, t: &Timeline) -> Markup {
    html! {
        section class="card" aria-labelledby=(format!("tl-{}", t.enrolment_id)) id=(format!("enrolment-{}", t.enrolment_id)) {
            h2 id=(format!("tl-{}", t.enrolment_id)) {
                (lang.t("时间线", "Timeline")) " · " (t.pathway) " v" (t.version) " · " (t.state) " (" (t.status) ")"
            }
            @if let Some(n) = &t.next_wake_at { p class="muted" { (lang.t("下次检查", "Next check")) " " (when_text(n)) } }
            ol class="timeline" reversed {
                @for e in t.entries.iter().rev().take(200) {
                    li data-testid="timeline-entry" data-kind=(e.kind) {
                        (when_text(&e.at)) " · " strong { (e.kind) } " "
                        @match e.kind.as_str() {
                            "transition" => {
                                (compact(&e.detail["from"])) " → " (compact(&e.detail["to"]))
                                @if !e.detail["because"].is_null() { " · " span class="muted" { (compact(&e.detail["because"])) } }
                            }
                            "trace" => details {
                                summary { (lang.t("为什么会有这些任务（推理过程）", "Why this is here (the step's trace)")) }
                                pre class="trace" data-testid="trace" {
                                    @if let Value::Array(items) = &e.detail { @for i in items { (compact(i)) "\n" } } @else { (compact(&e.detail)) }
                                }
                            },
                            _ => span class="trace" { (compact(&e.detail)) },
                        }
                    }
                }
            }
        }
    }
}

pub(crate) async fn view(
    State(s): State<AppState>,
    Path(id): Path<String>,
    mut staff: Staff,
) -> Result<Response, Response> {
    staff.require(&s, Module::Patients, "patient.read").await?;
    let lang = staff.lang;
    match page_handler(&s, &staff, &id).await {
        Ok(body) => Ok(super::layout::page(
            lang,
            Some(&staff),
            lang.t("患者", "Patient"),
            "patient",
            body,
        )),
        Err(e) => Err(layout::error_page(lang, Some(&staff), e)),
    }
}

#[derive(Deserialize)]
pub(crate) struct AlarmForm {
    #[serde(default)]
    csrf: String,
    back: Option<String>,
    reason: Option<String>,
}

/// An alarm form's post: the same action as `POST /alarms/{id}/{action}`.
pub(crate) async fn alarm_act(
    State(s): State<AppState>,
    Path((id, action)): Path<(i64, String)>,
    mut staff: Staff,
    Form(f): Form<AlarmForm>,
) -> Result<Response, Response> {
    staff.check_csrf(&s, &f.csrf).await?;
    staff.require(&s, Module::Queue, "alarm.act").await?;
    let lang = staff.lang;
    let act = match action.as_str() {
        "acknowledge" => Ok(EpisodeAction::Acknowledge),
        "resolve" => f
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(|reason| EpisodeAction::Resolve { reason })
            .ok_or_else(|| {
                ApiError::BadRequest(lang.t("处理需要说明。", "Resolving needs a reason.").into())
            }),
        other => Err(ApiError::NotFound(format!("no alarm action `{other}`"))),
    };
    let c = &staff.call;
    let done = match act {
        Ok(act) => alarms::act_on_episode(&s.pool, &c.caller, id, act, &c.remote, c.now)
            .await
            .map_err(ApiError::refused_by_store),
        Err(e) => Err(e),
    };
    match done {
        Ok(_) => Ok(back_to(f.back.as_deref(), &format!("alarm.{action}"))),
        Err(e) => Err(layout::error_page(lang, Some(&staff), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::thresholds;

    #[test]
    fn thresholds_are_read_for_the_kind_named() {
        let c = "bp_systolic >= 180 || bp_diastolic >= 110";
        assert_eq!(
            thresholds("bp_systolic", c),
            vec![(">=".to_string(), 180.0)]
        );
        assert_eq!(
            thresholds("bp_diastolic", c),
            vec![(">=".to_string(), 110.0)]
        );
        assert_eq!(thresholds("systolic", c), vec![]);
        assert_eq!(thresholds("weight", c), vec![]);
    }
}
