//! The auditor's page: whether the audit record is intact (its keyed chain and the signed
//! checkpoints, as `GET /audit/verify` checks them), and the record of the auditor's institution,
//! newest first, narrowed by staff member, action and patient. Reading the record is itself
//! recorded, with the patient asked about.

use axum::extract::{Query, State};
use axum::response::Response;
use carepath_engine::store::audit_log::{self, Search};
use carepath_engine::store::queries::AuditEntry;
use maud::html;
use serde::Deserialize;

use super::layout::{self, page, url_encode, when};
use super::session::Staff;
use crate::auth::Module;
use crate::handlers::audit::check;
use crate::{ApiError, AppState};

/// Entries shown per page.
const PAGE: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub(crate) struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    patient: String,
    before: Option<i64>,
    /// Verify the whole chain now (it reads every entry, so it is asked for, not done on each view).
    #[serde(default)]
    verify: Option<String>,
}

fn given(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

pub(crate) async fn view(
    State(s): State<AppState>,
    mut staff: Staff,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Response> {
    staff.require(&s, Module::Audit, "audit.search").await?;
    let lang = staff.lang;
    let failed = |staff: &Staff, e: ApiError| layout::error_page(lang, Some(staff), e);
    let (actor, action, patient) = (given(&q.actor), given(&q.action), given(&q.patient));
    let c = &staff.call;
    let verified = match q.verify {
        Some(_) => Some(check(&s).await.map_err(|e| failed(&staff, e))?),
        None => None,
    };
    let rows = audit_log::search(
        &s.pool,
        &Search {
            institution: &c.caller.institution_id,
            actor,
            action,
            patient,
            before: q.before,
            limit: PAGE,
        },
    )
    .await
    .map_err(|e| failed(&staff, e.into()))?;
    // The search is recorded before its result is shown, with the patient it asked about.
    let target = format!(
        "audit_log?actor={}&action={}&patient={}",
        actor.unwrap_or(""),
        action.unwrap_or(""),
        patient.map_or("", |_| "*")
    );
    s.audit
        .append(AuditEntry::new(
            &c.caller.staff_id,
            Some(&c.caller.institution_id),
            "audit.search",
            &target,
            &patient.map(str::to_string).into_iter().collect::<Vec<_>>(),
            "ok",
            &c.remote,
            c.now,
        ))
        .await
        .map_err(|e| failed(&staff, e.into()))?;
    let more = (rows.len() as i64 == PAGE)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let filters = format!(
        "actor={}&action={}&patient={}",
        url_encode(actor.unwrap_or("")),
        url_encode(action.unwrap_or("")),
        url_encode(patient.unwrap_or(""))
    );
    let body = html! {
        h1 { (lang.t("审计记录", "Audit record")) }
        section class="card" aria-labelledby="verify-title" {
            h2 id="verify-title" { (lang.t("完整性核验", "Integrity")) }
            @match &verified {
                None => {
                    p { (lang.t(
                        "核验读取全部记录，逐条检查带密钥的哈希链与库外签名检查点。",
                        "Verification reads every entry and checks the keyed hash chain and the signed checkpoints kept outside the database.",
                    )) }
                    form method="get" action="/app/audit" {
                        input type="hidden" name="actor" value=(actor.unwrap_or(""));
                        input type="hidden" name="action" value=(action.unwrap_or(""));
                        input type="hidden" name="patient" value=(patient.unwrap_or(""));
                        button type="submit" name="verify" value="1" id="verify" { (lang.t("立即核验", "Verify now")) }
                    }
                }
                Some(v) => {
                    p data-testid="verify-result" data-valid=(v.valid) {
                        @if v.valid {
                            strong { (lang.t("完整", "Intact")) }
                        } @else {
                            strong class="overdue" { (lang.t("已被篡改或不完整", "Tampered with or incomplete")) }
                        }
                        " · " (lang.t("条目", "entries")) " " (v.entries)
                        " · " (lang.t("旧格式条目", "legacy entries")) " " (v.legacy_entries)
                        " · " (lang.t("检查点", "checkpoints")) " " (v.checkpoints)
                    }
                    @if let Some(problem) = &v.problem {
                        p class="overdue" data-testid="verify-problem" {
                            (problem)
                            @if let Some(id) = v.broken_id { " (" (lang.t("条目", "entry")) " " (id) ")" }
                        }
                    }
                }
            }
        }
        section class="card" aria-labelledby="search-title" {
            h2 id="search-title" { (lang.t("查询", "Search")) }
            form method="get" action="/app/audit" id="audit-search" {
                p {
                    label for="a-actor" { (lang.t("员工", "Staff member")) }
                    input id="a-actor" name="actor" type="text" value=(actor.unwrap_or(""));
                }
                p {
                    label for="a-action" { (lang.t("操作（以 . 结尾为一类，如 enrolment.）", "Action (ending in . for a family, e.g. enrolment.)")) }
                    input id="a-action" name="action" type="text" value=(action.unwrap_or(""));
                }
                p {
                    label for="a-patient" { (lang.t("患者编号", "Patient id")) }
                    input id="a-patient" name="patient" type="text" value=(patient.unwrap_or(""));
                }
                button type="submit" id="a-submit" { (lang.t("查询", "Search")) }
            }
        }
        section class="card" aria-labelledby="entries-title" {
            h2 id="entries-title" { (lang.t("条目（最新在前）", "Entries, newest first")) }
            @if rows.is_empty() { p class="muted" { (lang.t("没有符合条件的条目。", "No entry matches.")) } }
            @else {
                div class="table-wrap" { table id="audit-entries" {
                    thead { tr {
                        th scope="col" { "#" }
                        th scope="col" { (lang.t("时间", "When")) }
                        th scope="col" { (lang.t("员工", "Staff member")) }
                        th scope="col" { (lang.t("操作", "Action")) }
                        th scope="col" { (lang.t("对象", "Target")) }
                        th scope="col" { (lang.t("患者", "Patients")) }
                        th scope="col" { (lang.t("结果", "Outcome")) }
                        th scope="col" { (lang.t("来源", "From")) }
                    } }
                    tbody {
                        @for r in &rows {
                            tr data-testid="audit-row" data-id=(r.id) data-actor=(r.actor) data-action=(r.action) {
                                td { (r.id) }
                                td { (when(r.at)) }
                                td { (r.actor) }
                                td { (r.action) }
                                td { (r.target) }
                                td { (patients_text(&r.patients)) }
                                td { @if r.outcome == "ok" { (r.outcome) } @else { span class="overdue" { (r.outcome) } } }
                                td { (r.remote.as_deref().unwrap_or("")) }
                            }
                        }
                    }
                } }
                @if let Some(last) = more {
                    p { a href=(format!("/app/audit?{filters}&before={last}")) id="audit-older" { (lang.t("更早的条目", "Older entries")) } }
                }
            }
        }
    };
    Ok(page(
        lang,
        Some(&staff),
        lang.t("审计记录", "Audit record"),
        "audit",
        body,
    ))
}

/// The patients of an entry, stored as a JSON list, as a comma-separated line.
fn patients_text(stored: &str) -> String {
    serde_json::from_str::<Vec<String>>(stored)
        .map(|p| p.join(", "))
        .unwrap_or_else(|_| stored.to_string())
}
