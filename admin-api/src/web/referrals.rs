//! The referral inbox: referrals addressed to the caller's institution awaiting a decision, with
//! the acceptance clock (each must be accepted by its `accept_by`, 24 h by default), accept and
//! reject-with-reason; then the referrals sent and decided. Listed and decided through the store
//! functions `GET /referrals` and `POST /referrals/{id}/{decision}` use.

use axum::extract::{Form, Path, State};
use axum::response::Response;
use carepath_engine::store::queries;
use maud::html;
use serde::Deserialize;

use super::board::back_to;
use super::layout::{self, Lang, page, url_encode, when_text};
use super::session::Staff;
use crate::auth::Module;
use crate::handlers::referrals::decide_as;
use crate::{ApiError, AppState};

/// The acceptance clock in hours and minutes: "5 h 20 min left", "40 min left" or, once past
/// `accept_by`, "overdue by 3 h 5 min"; whether it is past.
fn clock(lang: Lang, accept_by: &str, now: i64) -> (String, bool) {
    let Ok(t) = accept_by.parse::<jiff::Timestamp>() else {
        return (accept_by.to_string(), false);
    };
    let left = t.as_second() - now;
    let (h, m) = (left.abs() / 3600, left.abs() % 3600 / 60);
    let span = match (lang, h) {
        (Lang::Zh, 0) => format!("{m} 分"),
        (Lang::Zh, _) => format!("{h} 小时 {m} 分"),
        (Lang::En, 0) => format!("{m} min"),
        (Lang::En, _) => format!("{h} h {m} min"),
    };
    if left >= 0 {
        (
            match lang {
                Lang::Zh => format!("剩余 {span}"),
                Lang::En => format!("{span} left"),
            },
            false,
        )
    } else {
        (
            match lang {
                Lang::Zh => format!("已超时 {span}"),
                Lang::En => format!("overdue by {span}"),
            },
            true,
        )
    }
}

pub(crate) async fn inbox(
    State(s): State<AppState>,
    mut staff: Staff,
) -> Result<Response, Response> {
    staff
        .require(&s, Module::Referrals, "referral.list")
        .await?;
    let lang = staff.lang;
    let c = &staff.call;
    let all = queries::list_referrals(&s.pool, &s.audit, &c.caller, None, &c.remote, c.now)
        .await
        .map_err(|e| layout::error_page(lang, Some(&staff), e.into()))?;
    let me = &c.caller.institution_id;
    let now = c.now.as_second();
    let (waiting, others): (Vec<_>, Vec<_>) = all
        .iter()
        .partition(|r| r.status == "requested" && &r.from_institution != me);
    let body = html! {
        h1 { (lang.t("转诊收件箱", "Referral inbox")) }
        section class="card" aria-labelledby="waiting-title" {
            h2 id="waiting-title" { (lang.t("待接收", "Awaiting your decision")) " (" (waiting.len()) ")" }
            @if waiting.is_empty() { p class="muted" { (lang.t("没有待接收的转诊。", "Nothing awaits a decision.")) } }
            @else {
                div class="table-wrap" { table id="referral-inbox" {
                    thead { tr {
                        th scope="col" { (lang.t("患者", "Patient")) }
                        th scope="col" { (lang.t("方向", "Direction")) }
                        th scope="col" { (lang.t("来自", "From")) }
                        th scope="col" { (lang.t("申请时间", "Requested")) }
                        th scope="col" { (lang.t("24小时接收时限", "24 h acceptance clock")) }
                        th scope="col" { (lang.t("操作", "Decision")) }
                    } }
                    tbody {
                        @for r in &waiting {
                            @let (left, late) = clock(lang, &r.accept_by, now);
                            tr data-testid="referral-row" data-referral=(r.id) id=(format!("referral-{}", r.id)) {
                                td { (r.patient_id) }
                                td { (r.direction) " → " (r.to_kind) }
                                td { (r.from_institution) }
                                td { (when_text(&r.requested_at)) }
                                td data-testid="accept-clock" class=[late.then_some("overdue")] { (left) br; span class="muted" { (when_text(&r.accept_by)) } }
                                td class="actions" {
                                    form method="post" action=(format!("/app/referrals/{}/accept", r.id)) {
                                        input type="hidden" name="csrf" value=(staff.csrf);
                                        button type="submit" data-testid="accept" { (lang.t("接收", "Accept")) }
                                    }
                                    form method="post" action=(format!("/app/referrals/{}/reject", r.id)) {
                                        input type="hidden" name="csrf" value=(staff.csrf);
                                        label for=(format!("reject-reason-{}", r.id)) { (lang.t("拒绝原因", "Reason")) }
                                        input id=(format!("reject-reason-{}", r.id)) name="reason" type="text" required;
                                        button type="submit" class="secondary" data-testid="reject" { (lang.t("拒绝", "Reject")) }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section class="card" aria-labelledby="others-title" {
            h2 id="others-title" { (lang.t("其他转诊", "Other referrals")) }
            ul {
                @for r in &others {
                    li data-testid="referral-other" {
                        a href=(format!("/app/patients/{}", url_encode(&r.patient_id))) { (r.patient_id) }
                        " · " (r.direction) " · " (r.from_institution) " → " (r.to_institution.as_deref().unwrap_or(&r.to_kind))
                        " · " (r.status) " · " (when_text(&r.requested_at))
                    }
                }
            }
        }
    };
    Ok(page(
        lang,
        Some(&staff),
        lang.t("转诊", "Referrals"),
        "referrals",
        body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct DecisionForm {
    #[serde(default)]
    csrf: String,
    reason: Option<String>,
}

pub(crate) async fn decide(
    State(s): State<AppState>,
    Path((id, decision)): Path<(i64, String)>,
    mut staff: Staff,
    Form(f): Form<DecisionForm>,
) -> Result<Response, Response> {
    staff.check_csrf(&s, &f.csrf).await?;
    staff
        .require(&s, Module::Referrals, "referral.decide")
        .await?;
    let lang = staff.lang;
    let reason = f.reason.as_deref().map(str::trim).filter(|r| !r.is_empty());
    let done = match (decision.as_str(), reason) {
        ("reject", None) => Err(ApiError::BadRequest(
            lang.t("拒绝需要原因。", "A rejection needs a reason.")
                .into(),
        )),
        ("accept" | "reject", _) => decide_as(&s, &staff.call, id, &decision, reason).await,
        (other, _) => Err(ApiError::NotFound(format!("no referral action `{other}`"))),
    };
    match done {
        Ok(_) => Ok(back_to(
            Some("/app/referrals"),
            &format!("referral.{decision}"),
        )),
        Err(e) => Err(layout::error_page(lang, Some(&staff), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acceptance_clock_shows_hours_and_minutes_either_side_of_the_deadline() {
        let by = "2026-11-24T08:00:00Z";
        let t: i64 = by.parse::<jiff::Timestamp>().expect("instant").as_second();
        for (now, en, zh, late) in [
            (
                t - (5 * 3600 + 20 * 60 + 59),
                "5 h 20 min left",
                "剩余 5 小时 20 分",
                false,
            ),
            (t - 24 * 3600, "24 h 0 min left", "剩余 24 小时 0 分", false),
            (t - 40 * 60, "40 min left", "剩余 40 分", false),
            (t, "0 min left", "剩余 0 分", false),
            (
                t + 3 * 3600 + 5 * 60,
                "overdue by 3 h 5 min",
                "已超时 3 小时 5 分",
                true,
            ),
            (t + 90, "overdue by 1 min", "已超时 1 分", true),
        ] {
            assert_eq!(clock(Lang::En, by, now), (en.to_string(), late), "{en}");
            assert_eq!(clock(Lang::Zh, by, now), (zh.to_string(), late), "{zh}");
        }
    }
}
