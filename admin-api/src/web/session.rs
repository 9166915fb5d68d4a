//! Signing in and the session behind every page: passwords (argon2id), the second factor (TOTP,
//! RFC 6238), the lock-out, the session cookie and the CSRF token of every form.
//!
//! A session resolves to the same [`Caller`] a bearer token does (narrowed to the role chosen at
//! sign-in) and becomes the same [`Call`] the JSON handlers take, so a page is authorised by the
//! same permission table and scoped and audited by the same store functions as the API.

use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use carepath_engine::store::queries::{AuditEntry, Caller};
use carepath_engine::store::sign_in::{self, Credentials, Ended, Failure, LockOut};
use hmac::{KeyInit, Mac};
use jiff::Timestamp;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Lang, page};
use crate::auth::{CallerSlot, Module};
use crate::{ApiError, AppState, Call};

/// The session cookie: a random token whose SHA-256 is the session's key.
pub(crate) const SESSION_COOKIE: &str = "cp_session";
/// The sign-in form's own CSRF token (double submit: the cookie and the form field must match),
/// one per browser until it signs in.
const LOGIN_COOKIE: &str = "cp_login";

/// Roles that must give a second factor (MLPS level 3 asks for two for privileged accounts).
pub const TOTP_ROLES: &[&str] = &["admin", "auditor"];

/// How sessions behave.
#[derive(Debug, Clone, Copy)]
pub struct WebConfig {
    /// Mark cookies `Secure`: set when the workstation is served over TLS (directly or behind a
    /// TLS-terminating proxy), so browsers never send the session over plain HTTP.
    pub secure_cookies: bool,
    /// A session unused for this long ends (seconds).
    pub idle_seconds: i64,
    /// A session ends this long after sign-in, however busy (seconds).
    pub lifetime_seconds: i64,
    pub lock_out: LockOut,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            secure_cookies: false,
            idle_seconds: 30 * 60,
            lifetime_seconds: 12 * 3600,
            lock_out: LockOut {
                after: 5,
                seconds: 15 * 60,
            },
        }
    }
}

/// Whether a session may still be used at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    /// Unused for longer than the idle time-out.
    Idle,
    /// Past its absolute lifetime.
    TooOld,
}

pub(crate) fn liveness(cfg: &WebConfig, created: i64, last_seen: i64, now: i64) -> Liveness {
    if now - created >= cfg.lifetime_seconds {
        Liveness::TooOld
    } else if now - last_seen >= cfg.idle_seconds {
        Liveness::Idle
    } else {
        Liveness::Alive
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// `n` random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::Internal(format!("no randomness: {e}")))?;
    Ok(b)
}

fn random_token() -> Result<String, ApiError> {
    Ok(hex::encode(random_bytes::<32>()?))
}

/// Whether `s` has the shape of a [`random_token`].
fn is_token(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An argon2id hash of `password` as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC string `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    use argon2::password_hash::phc::PasswordHash;
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// [`verify_password`] on a thread of the blocking pool: argon2id takes tens of milliseconds of
/// one core by design, which on a runtime thread would hold up every request scheduled on it.
pub(crate) async fn password_matches(password: &str, hash: &str) -> bool {
    let (password, hash) = (password.to_string(), hash.to_string());
    tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false)
}

/// Equal without revealing, by timing, where two secrets first differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding, as authenticator apps read secrets.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for b in bytes {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            out.push(BASE32[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(BASE32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && *c != b' ') {
        let v = BASE32.iter().position(|x| *x == c.to_ascii_uppercase())? as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

/// The RFC 6238 code (HMAC-SHA1, 30 s steps, `digits` digits) of `secret` for time step `step`.
pub fn totp_at(secret: &[u8], step: u64, digits: u32) -> String {
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = (u32::from(h[offset]) & 0x7f) << 24
        | u32::from(h[offset + 1]) << 16
        | u32::from(h[offset + 2]) << 8
        | u32::from(h[offset + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

/// The time step whose 6-digit code of the base32 `secret` is `code`, looking one step either
/// side of `now`; `None` when it matches none.
pub(crate) fn totp_step(secret: &str, code: &str, now: Timestamp) -> Option<i64> {
    let key = unbase32(secret)?;
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now.as_second().max(0) / 30;
    [step - 1, step, step + 1]
        .into_iter()
        .filter(|s| *s >= 0)
        .find(|s| same(totp_at(&key, *s as u64, 6).as_bytes(), code.as_bytes()))
}

#[cfg(test)]
fn totp_ok(secret: &str, code: &str, now: Timestamp) -> bool {
    totp_step(secret, code, now).is_some()
}

/// A fresh TOTP secret (160 bits, base32) and its `otpauth://` URI for an authenticator app.
pub fn new_totp_secret(staff: &str) -> Result<(String, String), String> {
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).map_err(|e| e.to_string())?;
    let secret = base32(&b);
    let label: String = staff
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let uri = format!(
        "otpauth://totp/carepath:{label}?secret={secret}&issuer=carepath&algorithm=SHA1&digits=6&period=30"
    );
    Ok((secret, uri))
}

// ---------------------------------------------------------------------------------------------
// Cookies

pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/app`, Secure when configured.
pub(crate) fn set_cookie(
    cfg: &WebConfig,
    name: &str,
    value: &str,
    max_age: Option<i64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/app; HttpOnly; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if cfg.secure_cookies {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// A redirect that also sets cookies.
pub(crate) fn redirect_with(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut res = Redirect::to(to).into_response();
    for c in cookies {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

/// `next` if it is a page of the workstation, else its home page: never a redirect elsewhere.
pub(crate) fn local(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/app/")
                && !n.starts_with("/app//")
                && !n.contains('\\')
                && !n.contains("://") =>
        {
            n.to_string()
        }
        _ => "/app/".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The signed-in staff member

/// The signed-in staff member of a page request: the [`Call`] the JSON handlers take, the CSRF
/// token their forms carry and the language pages are written in. Extracting it redirects to the
/// sign-in page when there is no live session; a session past its idle time-out or lifetime is
/// ended (audited) first.
pub(crate) struct Staff {
    pub call: Call,
    pub name: String,
    pub csrf: String,
    pub lang: Lang,
    pub path: String,
    token: String,
}

impl Staff {
    pub(crate) fn caller(&self) -> &Caller {
        &self.call.caller
    }

    pub(crate) fn role(&self) -> &str {
        self.call
            .caller
            .roles
            .first()
            .map(String::as_str)
            .unwrap_or("")
    }

    /// Refuses (403, audited as the API does) unless the session's role grants `module`.
    pub(crate) async fn require(
        &mut self,
        s: &AppState,
        module: Module,
        action: &'static str,
    ) -> Result<(), Response> {
        self.call.action = action;
        if crate::auth::allowed(&self.call.caller.roles, module) {
            return Ok(());
        }
        let e = self.call.refuse(s, module).await;
        Err(layout::error_page(self.lang, Some(self), e))
    }

    /// Refuses (403, audited) a form whose CSRF token is not this session's.
    pub(crate) async fn check_csrf(&self, s: &AppState, token: &str) -> Result<(), Response> {
        if same(token.as_bytes(), self.csrf.as_bytes()) {
            return Ok(());
        }
        let c = &self.call.caller;
        let written = s
            .audit
            .append(AuditEntry::new(
                &c.staff_id,
                Some(&c.institution_id),
                "csrf.refused",
                &self.path.chars().take(200).collect::<String>(),
                &[],
                "denied",
                &self.call.remote,
                self.call.now,
            ))
            .await;
        let e = match written {
            Ok(()) => ApiError::Forbidden(
                "the form did not carry this session's token; reload the page and try again".into(),
            )
            .audited(),
            Err(e) => e.into(),
        };
        Err(layout::error_page(self.lang, Some(self), e))
    }
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, Self::Rejection> {
        let lang = layout::lang_of(&parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let htmx = parts.headers.contains_key("hx-request");
        let to_login = |why: &str| {
            let next = if parts.method == axum::http::Method::GET && !htmx {
                format!("&next={}", layout::url_encode(&path))
            } else {
                String::new()
            };
            let to = format!("/app/login?why={why}{next}");
            if htmx {
                // A refresh in the background: htmx loads the sign-in page as a whole page.
                let mut res = StatusCode::NO_CONTENT.into_response();
                if let Ok(v) = HeaderValue::from_str(&to) {
                    res.headers_mut().insert("hx-redirect", v);
                }
                return res;
            }
            Redirect::to(&to).into_response()
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).map(str::to_string) else {
            return Err(to_login("signin"));
        };
        let now = s.now();
        let remote = crate::request_remote(&parts.extensions, &parts.headers, &s.trusted_proxies);
        let session = sign_in::session(&s.pool, &token)
            .await
            .map_err(|e| layout::error_page(lang, None, e.into()))?;
        let Some(session) = session else {
            return Err(to_login("signin"));
        };
        match liveness(
            &s.web,
            session.created_at,
            session.last_seen_at,
            now.as_second(),
        ) {
            Liveness::Alive => {}
            Liveness::Idle | Liveness::TooOld => {
                sign_in::end_session(&s.pool, &token, Ended::Expired, &remote, now)
                    .await
                    .map_err(|e| layout::error_page(lang, None, e.into()))?;
                return Err(to_login("expired"));
            }
        }
        // The board's refresh in the background is not use: a board left open on an unattended
        // screen ends its session like any other page.
        if !htmx {
            sign_in::touch_session(&s.pool, &token, now)
                .await
                .map_err(|e| layout::error_page(lang, None, e.into()))?;
        }
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            slot.set(&session.caller);
        }
        Ok(Staff {
            call: Call {
                caller: session.caller,
                remote,
                now,
                action: "web.read",
            },
            name: session.display_name,
            csrf: session.csrf_token,
            lang,
            path,
            token,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Pages

#[derive(Deserialize, Default)]
pub(crate) struct LoginQuery {
    why: Option<String>,
    next: Option<String>,
}

pub(crate) async fn login_page(
    State(s): State<AppState>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Result<Response, Response> {
    let lang = layout::lang_of(&headers);
    // One sign-in token per browser until it signs in: a second sign-in page (another tab, or a
    // page sent here while this one is being filled in) must not void the form already shown.
    let token = match cookie(&headers, LOGIN_COOKIE).filter(|t| is_token(t)) {
        Some(t) => t.to_string(),
        None => random_token().map_err(|e| layout::error_page(lang, None, e))?,
    };
    let note = match q.why.as_deref() {
        Some("expired") => Some(lang.t(
            "会话已因长时间未操作而结束，请重新登录。",
            "Your session ended after a period without use; please sign in again.",
        )),
        Some("signedout") => Some(lang.t("您已退出。", "You have signed out.")),
        _ => None,
    };
    let mut res = login_form(lang, &token, q.next.as_deref(), note, None, StatusCode::OK);
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&s.web, LOGIN_COOKIE, &token, Some(3600)),
    );
    Ok(res)
}

fn login_form(
    lang: Lang,
    csrf: &str,
    next: Option<&str>,
    note: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let body = html! {
        section class="signin" aria-labelledby="signin-title" {
            h1 id="signin-title" { (lang.t("登录", "Sign in")) }
            @if let Some(n) = note { p class="note" role="status" data-testid="signin-note" { (n) } }
            @if let Some(e) = error { p class="error" role="alert" data-testid="signin-error" { (e) } }
            form method="post" action="/app/login" id="signin-form" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(local(next));
                p {
                    label for="staff" { (lang.t("工号", "Staff id")) }
                    input id="staff" name="staff" type="text" autocomplete="username" required autofocus;
                }
                p {
                    label for="password" { (lang.t("密码", "Password")) }
                    input id="password" name="password" type="password" autocomplete="current-password" required;
                }
                p {
                    label for="role" { (lang.t("角色（可选，多个角色时选择）", "Role (optional; for staff with several)")) }
                    input id="role" name="role" type="text" autocomplete="off";
                }
                p {
                    label for="totp" { (lang.t("动态口令（管理员、审计员必填）", "One-time code (required for admin and auditor)")) }
                    input id="totp" name="totp" type="text" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{6}";
                }
                button type="submit" id="signin-submit" { (lang.t("登录", "Sign in")) }
            }
        }
    };
    let mut res = page(lang, None, lang.t("登录", "Sign in"), "signin", body).into_response();
    *res.status_mut() = status;
    res
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: Option<String>,
    #[serde(default)]
    staff: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    totp: Option<String>,
}

/// Why a sign-in failed, as the page says it: one message for any wrong credential, so the page
/// does not tell which staff ids exist.
fn refusal(lang: Lang, locked: bool) -> &'static str {
    if locked {
        lang.t(
            "多次登录失败，账户已临时锁定，请15分钟后再试。",
            "Too many failed attempts: the account is locked for a while; try again in 15 minutes.",
        )
    } else {
        lang.t(
            "工号、密码、角色或动态口令不正确。",
            "The staff id, password, role or one-time code is not right.",
        )
    }
}

pub(crate) async fn login(
    State(s): State<AppState>,
    parts: axum::http::request::Parts,
    Form(f): Form<LoginForm>,
) -> Result<Response, Response> {
    let headers = &parts.headers;
    let lang = layout::lang_of(headers);
    let now = s.now();
    let remote = crate::request_remote(&parts.extensions, headers, &s.trusted_proxies);
    let fail = |e: ApiError| layout::error_page(lang, None, e);
    // The sign-in form's token must match its cookie (a cross-site post carries neither).
    let expected = cookie(headers, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !same(expected.as_bytes(), f.csrf.as_bytes()) {
        let written = s
            .audit
            .append(AuditEntry::new(
                "unknown",
                None,
                "csrf.refused",
                "/app/login",
                &[],
                "denied",
                &remote,
                now,
            ))
            .await;
        return Err(fail(match written {
            Ok(()) => ApiError::Forbidden(
                "the sign-in form has expired or was not sent from this site; reload it".into(),
            )
            .audited(),
            Err(e) => e.into(),
        }));
    }
    let again = |msg: &str| {
        login_form(
            lang,
            &f.csrf,
            f.next.as_deref(),
            None,
            Some(msg),
            StatusCode::UNAUTHORIZED,
        )
    };
    let staff_id = f.staff.trim();
    let creds = sign_in::credentials(&s.pool, staff_id)
        .await
        .map_err(|e| fail(e.into()))?;
    let record =
        |failure| sign_in::record_failure(&s.pool, staff_id, failure, s.web.lock_out, &remote, now);
    let Some(creds) = creds else {
        record(Failure::UnknownStaff)
            .await
            .map_err(|e| fail(e.into()))?;
        return Ok(again(refusal(lang, false)));
    };
    if creds.locked_until.is_some_and(|t| t > now.as_second()) {
        record(Failure::Locked).await.map_err(|e| fail(e.into()))?;
        return Ok(again(refusal(lang, true)));
    }
    let password_ok = match creds.password_hash.as_deref() {
        Some(hash) => password_matches(&f.password, hash).await,
        None => false,
    };
    let opened = match check(&creds, &f, password_ok, now) {
        Ok((role, totp_step)) => {
            let token = random_token().map_err(fail)?;
            let csrf = random_token().map_err(fail)?;
            let proof = sign_in::Proof {
                staff: &creds,
                role: &role,
                totp_step,
            };
            sign_in::open_session(&s.pool, &proof, &token, &csrf, &remote, now)
                .await
                .map_err(|e| fail(e.into()))?
                .then_some(token)
        }
        Err(()) => None,
    };
    match opened {
        Some(token) => {
            let max_age = s.web.lifetime_seconds;
            Ok(redirect_with(
                &local(f.next.as_deref()),
                vec![
                    set_cookie(&s.web, SESSION_COOKIE, &token, Some(max_age)),
                    set_cookie(&s.web, LOGIN_COOKIE, "", Some(0)),
                ],
            ))
        }
        None => {
            let locked = record(Failure::Wrong).await.map_err(|e| fail(e.into()))?;
            Ok(again(refusal(lang, locked.is_some())))
        }
    }
}

/// The role a sign-in opens a session for, when the password (`password_ok`, verified off the
/// runtime by [`password_matches`]), the role and (for the roles that need one) the one-time code
/// are right, and the code's time step.
fn check(
    creds: &Credentials,
    f: &LoginForm,
    password_ok: bool,
    now: Timestamp,
) -> Result<(String, Option<i64>), ()> {
    if !password_ok {
        return Err(());
    }
    let role = match f.role.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) if creds.roles.iter().any(|h| h == r) => r.to_string(),
        Some(_) => return Err(()),
        None => creds.roles.first().cloned().ok_or(())?,
    };
    // Only people sign in here; a device gateway posts readings with its token.
    if role == "device_gateway" {
        return Err(());
    }
    let step = if TOTP_ROLES.contains(&role.as_str()) {
        let secret = creds.totp_secret.as_deref().ok_or(())?;
        Some(totp_step(secret, f.totp.as_deref().unwrap_or(""), now).ok_or(())?)
    } else {
        None
    };
    Ok((role, step))
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn logout(
    State(s): State<AppState>,
    staff: Staff,
    Form(f): Form<CsrfOnly>,
) -> Result<Response, Response> {
    staff.check_csrf(&s, &f.csrf).await?;
    let call = &staff.call;
    sign_in::end_session(
        &s.pool,
        &staff.token,
        Ended::SignedOut,
        &call.remote,
        call.now,
    )
    .await
    .map_err(|e| layout::error_page(staff.lang, None, e.into()))?;
    Ok(redirect_with(
        "/app/login?why=signedout",
        vec![set_cookie(&s.web, SESSION_COOKIE, "", Some(0))],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1: the 20-byte ASCII key and the eight-digit codes.
    #[test]
    fn totp_matches_the_rfc_6238_vectors() {
        let key = b"12345678901234567890";
        for (t, code) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(totp_at(key, t / 30, 8), code, "at {t}");
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_no_further() {
        let secret = base32(b"12345678901234567890");
        assert_eq!(secret, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let now: Timestamp = "2026-11-23T08:00:15Z".parse().expect("instant");
        let step = (now.as_second() / 30) as u64;
        let key = unbase32(&secret).expect("base32");
        for (d, ok) in [(-2i64, false), (-1, true), (0, true), (1, true), (2, false)] {
            let code = totp_at(&key, (step as i64 + d) as u64, 6);
            assert_eq!(totp_ok(&secret, &code, now), ok, "step {d}");
        }
        assert!(!totp_ok(&secret, "12345", now));
        assert!(!totp_ok(&secret, "abcdef", now));
    }

    #[test]
    fn only_tokens_of_the_servers_shape_are_taken_up() {
        let t = random_token().expect("token");
        assert!(is_token(&t));
        assert!(!is_token(&t.to_uppercase()));
        assert!(!is_token(&t[1..]));
        assert!(!is_token("chosen-by-someone-else"));
    }

    #[test]
    fn base32_round_trips() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(unbase32(&base32(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct hors", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    /// While a password is being verified, other tasks of the runtime go on: on a runtime with a
    /// single thread, a task spawned before the verification has run by the time it returns.
    #[tokio::test(flavor = "current_thread")]
    async fn verifying_a_password_leaves_the_runtime_free() {
        let h = hash_password("correct horse").expect("hash");
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        assert!(password_matches("correct horse", &h).await);
        let during = ticks.load(std::sync::atomic::Ordering::SeqCst);
        ticker.abort();
        assert!(
            during > 0,
            "the runtime stood still while the password was verified"
        );
        assert!(!password_matches("correct hors", &h).await);
        assert!(!password_matches("correct horse", "not a hash").await);
    }

    #[test]
    fn sessions_end_when_idle_or_too_old() {
        let cfg = WebConfig::default();
        let t0 = 1_000_000;
        assert_eq!(liveness(&cfg, t0, t0, t0 + 60), Liveness::Alive);
        assert_eq!(liveness(&cfg, t0, t0, t0 + 30 * 60 - 1), Liveness::Alive);
        assert_eq!(liveness(&cfg, t0, t0, t0 + 30 * 60), Liveness::Idle);
        // Busy all along, but past the lifetime.
        let late = t0 + cfg.lifetime_seconds;
        assert_eq!(liveness(&cfg, t0, late - 10, late), Liveness::TooOld);
    }

    #[test]
    fn redirects_stay_inside_the_workstation() {
        assert_eq!(local(Some("/app/patients/P1")), "/app/patients/P1");
        for bad in [
            "https://evil.example/",
            "//evil.example/app/",
            "/app//evil",
            "/health",
            "/app/\\x",
        ] {
            assert_eq!(local(Some(bad)), "/app/", "{bad}");
        }
        assert_eq!(local(None), "/app/");
    }

    #[test]
    fn cookies_are_strict_and_secure_when_asked() {
        let mut cfg = WebConfig::default();
        let c = set_cookie(&cfg, SESSION_COOKIE, "abc", Some(60));
        let c = c.to_str().expect("ascii");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && !c.contains("Secure"));
        cfg.secure_cookies = true;
        let c = set_cookie(&cfg, SESSION_COOKIE, "abc", None);
        assert!(c.to_str().expect("ascii").ends_with("; Secure"));
    }
}
