//! The page shell every page shares (landmarks, skip link, navigation for the role, language
//! switch, sign-out), the two languages, error pages, and the static files served from the
//! binary. Pages are written in zh or en as the `cp_lang` cookie says (else the browser's
//! `Accept-Language`, else zh); pathway texts are the pathways' own bilingual [`Text`].

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use carepath_dsl::Text;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::session::{self, Staff};
use crate::ApiError;
use crate::auth::{Module, allowed};
use crate::error::Audited;

const LANG_COOKIE: &str = "cp_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Zh,
    En,
}

impl Lang {
    pub(crate) fn t(self, zh: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    /// A pathway's bilingual text in this language (the other one when this one is empty).
    pub(crate) fn text(self, t: &Text) -> String {
        let (a, b) = match self {
            Lang::Zh => (&t.zh, &t.en),
            Lang::En => (&t.en, &t.zh),
        };
        if a.is_empty() { b.clone() } else { a.clone() }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }

    fn other(self) -> (&'static str, &'static str) {
        match self {
            Lang::Zh => ("en", "English"),
            Lang::En => ("zh", "中文"),
        }
    }
}

pub(crate) fn lang_of(headers: &HeaderMap) -> Lang {
    match session::cookie(headers, LANG_COOKIE) {
        Some("en") => Lang::En,
        Some("zh") => Lang::Zh,
        _ => {
            let accept = headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if accept.trim_start().to_ascii_lowercase().starts_with("en") {
                Lang::En
            } else {
                Lang::Zh
            }
        }
    }
}

/// Percent-encodes a query value.
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An instant as staff read it: local time of the hospital's zone, to the minute.
pub(crate) fn when(seconds: i64) -> String {
    let tz = jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_zoned(tz).strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// An RFC 3339 instant as [`when`] shows it (as given when it does not parse).
pub(crate) fn when_text(s: &str) -> String {
    s.parse::<jiff::Timestamp>()
        .map(|t| when(t.as_second()))
        .unwrap_or_else(|_| s.to_string())
}

/// The pages of the navigation, each shown to the roles whose modules grant it.
const NAV: &[(&str, &str, &str, &str, Module)] = &[
    (
        "/app/board",
        "nav-board",
        "任务看板",
        "Task board",
        Module::Queue,
    ),
    (
        "/app/referrals",
        "nav-referrals",
        "转诊",
        "Referrals",
        Module::Referrals,
    ),
    (
        "/app/indicators",
        "nav-indicators",
        "指标",
        "Indicators",
        Module::Kpis,
    ),
    (
        "/app/pathways",
        "nav-pathways",
        "路径",
        "Pathways",
        Module::Catalog,
    ),
    ("/app/audit", "nav-audit", "审计", "Audit", Module::Audit),
];

/// A whole page: `id` names the page for tests (`data-page`).
pub(crate) fn page(
    lang: Lang,
    staff: Option<&Staff>,
    title: &str,
    id: &str,
    body: Markup,
) -> Response {
    let (other, other_name) = lang.other();
    let back = staff.map_or("/app/login".to_string(), |s| s.path.clone());
    let markup = html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="htmx-config" content=r#"{"includeIndicatorStyles":false,"allowEval":false}"#;
                title { (title) " · carepath" }
                link rel="stylesheet" href="/app/static/app.css";
                script src="/app/static/htmx.min.js" defer {}
            }
            body data-page=(id) {
                a class="skip" href="#main" { (lang.t("跳到正文", "Skip to content")) }
                header class="top" {
                    span class="brand" { "carepath" }
                    @if let Some(s) = staff {
                        nav aria-label=(lang.t("主导航", "Main")) {
                            ul {
                                @for (href, nid, zh, en, module) in NAV {
                                    @if allowed(&s.caller().roles, *module) {
                                        li { a id=(nid) href=(href) aria-current=[s.path.starts_with(href).then_some("page")] { (lang.t(zh, en)) } }
                                    }
                                }
                            }
                        }
                        span class="who" data-testid="who" {
                            (s.name) " · " (s.role()) " · " (s.caller().institution_id)
                        }
                        form method="post" action="/app/logout" class="inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" id="signout" { (lang.t("退出", "Sign out")) }
                        }
                    }
                    a id="lang-switch" lang=(other) href=(format!("/app/lang?to={other}&back={}", url_encode(&back))) { (other_name) }
                }
                main id="main" tabindex="-1" { (body) }
            }
        }
    };
    let mut res = markup.into_string().into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Pages hold patient data: never cached, never framed, scripts only from here.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    res
}

/// An error as a page, with the status the API would answer; a refusal already audited stays
/// marked so the audit layer adds nothing.
pub(crate) fn error_page(lang: Lang, staff: Option<&Staff>, e: ApiError) -> Response {
    let audited = matches!(e, ApiError::Audited(_));
    if let ApiError::Internal(detail) = &e {
        tracing::error!("internal error: {detail}");
    }
    let (status, _, detail) = e.parts();
    let title = match status {
        StatusCode::NOT_FOUND => lang.t("未找到", "Not found"),
        StatusCode::FORBIDDEN => lang.t("无权操作", "Not allowed"),
        StatusCode::CONFLICT => lang.t("冲突", "Conflict"),
        StatusCode::BAD_REQUEST => lang.t("请求有误", "Not accepted"),
        _ => lang.t("出错了", "Something went wrong"),
    };
    let body = html! {
        h1 { (title) }
        p class="error" role="alert" data-testid="error-detail" { (detail) }
        p { a href="/app/" { (lang.t("返回首页", "Back to the start page")) } }
    };
    let mut res = page(lang, staff, title, "error", body);
    *res.status_mut() = status;
    if audited {
        res.extensions_mut().insert(Audited);
    }
    res
}

#[derive(Deserialize)]
pub(crate) struct LangQuery {
    to: Option<String>,
    back: Option<String>,
}

/// Switches the language (a preference cookie, a year) and returns to the page.
pub(crate) async fn switch_lang(
    axum::extract::State(s): axum::extract::State<crate::AppState>,
    Query(q): Query<LangQuery>,
) -> Response {
    let to = match q.to.as_deref() {
        Some("en") => "en",
        _ => "zh",
    };
    let back = match q.back.as_deref() {
        Some("/app/login") => "/app/login".to_string(),
        other => session::local(other),
    };
    let mut c = session::set_cookie(&s.web, LANG_COOKIE, to, Some(365 * 86_400));
    // The language is not a secret: readable by the page, still same-site only.
    if let Ok(v) = c.to_str().map(|v| v.replace("; HttpOnly", "")) {
        c = HeaderValue::from_str(&v).unwrap_or(c);
    }
    session::redirect_with(&back, vec![c])
}

const HTMX: &[u8] = include_bytes!("../../static/htmx.min.js");
const CSS: &[u8] = include_bytes!("../../static/app.css");
const FAVICON: &[u8] = include_bytes!("../../static/favicon.ico");

fn asset(body: &'static [u8], ctype: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Versioned with the binary; a week is long enough and short enough.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=604800, immutable"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    res
}

pub(crate) async fn htmx() -> Response {
    asset(HTMX, "text/javascript; charset=utf-8")
}

pub(crate) async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

pub(crate) async fn favicon() -> Response {
    asset(FAVICON, "image/x-icon")
}

/// The start page: the first page of the navigation the role may open; a role with none of them
/// is told where its work is.
pub(crate) async fn home(staff: Staff) -> Response {
    let roles = &staff.caller().roles;
    if let Some((href, ..)) = NAV.iter().find(|(.., m)| allowed(roles, *m)) {
        return axum::response::Redirect::to(href).into_response();
    }
    let lang = staff.lang;
    let body = html! {
        h1 { (lang.t("已登录", "Signed in")) }
        p data-testid="home-note" {
            (lang.t(
                "您的角色没有工作站页面。",
                "Your role has no workstation page.",
            ))
        }
    };
    page(lang, Some(&staff), lang.t("首页", "Start"), "home", body)
}
