//! The case manager's workstation over HTTP (in-process, on each backend): signing in (failure,
//! lock-out, the second factor of admin and auditor), CSRF refusals, the idle time-out, a task
//! claimed and completed through the board's forms advancing the enrolment seen on the patient
//! page, a referral accepted in the inbox, another institution's nurse getting 404 for a patient,
//! indicator drill-down rows equal to the API's figure, and a broken pathway's diagnostics
//! located by line and column as the API locates them.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use carepath_engine::store::queries::token_hash;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

use crate::support::{self, STAFF_PASSWORD, Workstation, on_each_workstation, scalar};

/// A browser: its cookies.
#[derive(Default, Clone)]
struct Browser {
    cookies: Vec<(String, String)>,
}

struct Answer {
    status: StatusCode,
    location: Option<String>,
    /// Where htmx is told to load a whole page instead.
    hx_redirect: Option<String>,
    body: String,
}

impl Browser {
    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, w: &Workstation, req: Request<Body>) -> Answer {
        let res = w.app.clone().oneshot(req).await.expect("answer");
        for c in res.headers().get_all(header::SET_COOKIE) {
            let c = c.to_str().expect("ascii cookie");
            let (kv, _) = c.split_once(';').unwrap_or((c, ""));
            let (k, v) = kv.split_once('=').expect("name=value");
            self.cookies.retain(|(n, _)| n != k);
            if !v.is_empty() && !c.contains("Max-Age=0") {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
        let status = res.status();
        let header_text = |name| {
            res.headers()
                .get(name)
                .map(|l: &header::HeaderValue| l.to_str().expect("ascii").to_string())
        };
        let location = header_text(header::LOCATION.as_str());
        let hx_redirect = header_text("hx-redirect");
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            location,
            hx_redirect,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, w: &Workstation, uri: &str) -> Answer {
        let req = Request::get(uri)
            .header(header::COOKIE, self.cookie_header())
            .body(Body::empty())
            .expect("request");
        self.send(w, req).await
    }

    /// A background refresh, as htmx sends it.
    async fn refresh(&mut self, w: &Workstation, uri: &str) -> Answer {
        let req = Request::get(uri)
            .header(header::COOKIE, self.cookie_header())
            .header("hx-request", "true")
            .body(Body::empty())
            .expect("request");
        self.send(w, req).await
    }

    async fn post(&mut self, w: &Workstation, uri: &str, form: &[(&str, &str)]) -> Answer {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = Request::post(uri)
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .expect("request");
        self.send(w, req).await
    }

    async fn sign_in(
        &mut self,
        w: &Workstation,
        staff: &str,
        password: &str,
        totp: &str,
    ) -> Answer {
        let page = self.get(w, "/app/login").await;
        assert_eq!(page.status, StatusCode::OK);
        let csrf = csrf_of(&page.body);
        self.post(
            w,
            "/app/login",
            &[
                ("csrf", &csrf),
                ("staff", staff),
                ("password", password),
                ("totp", totp),
            ],
        )
        .await
    }

    /// Signs in, asserting it works, and returns the session's CSRF token.
    async fn signed_in(w: &Workstation, staff: &str) -> (Browser, String) {
        let mut b = Browser::default();
        let a = b.sign_in(w, staff, STAFF_PASSWORD, "").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{staff}: {}", a.body);
        let board = b.get(w, "/app/pathways").await;
        assert_eq!(board.status, StatusCode::OK, "{}", board.body);
        let csrf = csrf_of(&board.body);
        (b, csrf)
    }
}

fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token");
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("closing quote")].to_string()
}

/// Every `data-NAME="…"` value in `html` on elements with `data-testid="TESTID"`.
fn attrs(html: &str, testid: &str, name: &str) -> Vec<String> {
    html.split(&format!(r#"data-testid="{testid}""#))
        .skip(1)
        .filter_map(|part| {
            let tag_end = part.find('>').unwrap_or(part.len());
            let tag = &part[..tag_end];
            let key = format!(r#"data-{name}=""#);
            let at = tag.find(&key)?;
            let v = &tag[at + key.len()..];
            Some(v[..v.find('"')?].to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_fails_locks_out_and_asks_admins_for_a_second_factor() {
    on_each_workstation(|w| async move {
        let mut b = Browser::default();
        // Unknown staff and a wrong password get the same refusal; both are audited.
        let a = b.sign_in(&w, "nobody", STAFF_PASSWORD, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert!(a.body.contains(r#"data-testid="signin-error""#));
        assert_eq!(w.audited("signin.unknown_staff", "denied").await, 1);
        let a = b.sign_in(&w, "lead.cm", "wrong password", "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(w.audited("signin.failed", "denied").await, 1);
        // The right password opens a session: HttpOnly, SameSite=Strict cookie; the board opens.
        let a = b.sign_in(&w, "lead.cm", STAFF_PASSWORD, "").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert_eq!(a.location.as_deref(), Some("/app/"));
        assert!(b.cookies.iter().any(|(k, _)| k == "cp_session"));
        let home = b.get(&w, "/app/").await;
        assert_eq!(
            home.location.as_deref(),
            Some("/app/board"),
            "a case manager starts on the board"
        );
        assert_eq!(w.audited("signin.ok", "ok").await, 1);
        let board = b.get(&w, "/app/board").await;
        assert_eq!(board.status, StatusCode::OK, "{}", board.body);
        assert!(board.body.contains(r#"data-page="board""#));
        assert!(board.body.contains(r#"<html lang="#));
        // Only the hash of the session's token is stored.
        let token = b
            .cookies
            .iter()
            .find(|(k, _)| k == "cp_session")
            .map(|(_, v)| v.clone())
            .expect("session cookie");
        let stored = scalar(
            &w.pool,
            &format!(
                "SELECT COUNT(*) FROM staff_sessions WHERE token_hash = '{}'",
                token_hash(&token)
            ),
        )
        .await;
        assert_eq!(stored, 1);
        assert_eq!(
            scalar(
                &w.pool,
                &format!("SELECT COUNT(*) FROM staff_sessions WHERE token_hash = '{token}'")
            )
            .await,
            0
        );

        // Five failures in a row lock the account for 15 minutes, even against the right password.
        let mut fresh = Browser::default();
        for i in 1..=5 {
            let a = fresh.sign_in(&w, "clinic_a.cm", "nope", "").await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "attempt {i}");
        }
        assert_eq!(w.audited("signin.locked", "denied").await, 1);
        let a = fresh.sign_in(&w, "clinic_a.cm", STAFF_PASSWORD, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "locked out");
        assert_eq!(w.audited("signin.locked_out", "denied").await, 1);
        w.advance(14 * 60);
        let a = fresh.sign_in(&w, "clinic_a.cm", STAFF_PASSWORD, "").await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "still locked after 14 minutes"
        );
        w.advance(60);
        let a = fresh.sign_in(&w, "clinic_a.cm", STAFF_PASSWORD, "").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "unlocked after 15 minutes");

        // An admin needs the one-time code as well as the password.
        let mut admin = Browser::default();
        let a = admin.sign_in(&w, "lead.admin", STAFF_PASSWORD, "").await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "no code");
        let key = b"12345678901234567890";
        let step = (w.now().as_second() / 30) as u64;
        let stale = carepath_admin_api::web::totp_at(key, step - 3, 6);
        let a = admin
            .sign_in(&w, "lead.admin", STAFF_PASSWORD, &stale)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "a stale code");
        let code = carepath_admin_api::web::totp_at(key, step, 6);
        let a = admin.sign_in(&w, "lead.admin", STAFF_PASSWORD, &code).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        // The same code, replayed by someone who saw it, is refused.
        let mut replay = Browser::default();
        let a = replay
            .sign_in(&w, "lead.admin", STAFF_PASSWORD, &code)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "a replayed code");
        // The admin starts on the indicators; the role grants no task board: the board is refused
        // (403, audited).
        assert_eq!(
            admin.get(&w, "/app/").await.location.as_deref(),
            Some("/app/indicators")
        );
        let before = w.audited("queue.read", "denied").await;
        let board = admin.get(&w, "/app/board").await;
        assert_eq!(board.status, StatusCode::FORBIDDEN);
        assert_eq!(w.audited("queue.read", "denied").await, before + 1);

        // A sign-in form posted without its own token (a cross-site post) is refused.
        let mut cross = Browser::default();
        let a = cross
            .post(
                &w,
                "/app/login",
                &[
                    ("csrf", "forged"),
                    ("staff", "lead.cm"),
                    ("password", STAFF_PASSWORD),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert!(w.audited("csrf.refused", "denied").await >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_need_the_session_token_and_idle_sessions_end() {
    on_each_workstation(|w| async move {
        let enrolment = w.enrolled("P-CSRF", "lead", 0).await;
        let task = scalar(
            &w.pool,
            &format!(
                "SELECT id FROM tasks WHERE enrolment_id = {enrolment} AND task_ref = 'weekly_call'"
            ),
        )
        .await;
        let (mut b, csrf) = Browser::signed_in(&w, "lead.cm").await;
        // A cross-site post carries no token (and the browser no cookie, being SameSite=Strict;
        // even with it, the token is missing): refused, audited, nothing changed.
        let before = w.audited("csrf.refused", "denied").await;
        let a = b.post(&w, &format!("/app/tasks/{task}/claim"), &[]).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        let a = b
            .post(
                &w,
                &format!("/app/tasks/{task}/claim"),
                &[("csrf", "not-the-token")],
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(w.audited("csrf.refused", "denied").await, before + 2);
        let status = |w: &Workstation| {
            let pool = w.pool.clone();
            async move {
                scalar(
                    &pool,
                    &format!("SELECT COUNT(*) FROM tasks WHERE id = {task} AND status = 'open'"),
                )
                .await
            }
        };
        assert_eq!(status(&w).await, 1, "the task is still open");
        // With the token it is claimed.
        let a = b
            .post(
                &w,
                &format!("/app/tasks/{task}/claim"),
                &[("csrf", &csrf), ("back", "/app/board")],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(status(&w).await, 0, "claimed");

        // Used 29 minutes later, the session lives; unused for 30 minutes after that, it ends.
        w.advance(29 * 60);
        assert_eq!(b.get(&w, "/app/board").await.status, StatusCode::OK);
        w.advance(30 * 60);
        let a = b.get(&w, "/app/board").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert!(
            a.location
                .as_deref()
                .is_some_and(|l| l.starts_with("/app/login?why=expired")),
            "{:?}",
            a.location
        );
        assert_eq!(w.audited("session.expired", "ok").await, 1);
        assert_eq!(
            scalar(
                &w.pool,
                "SELECT COUNT(*) FROM staff_sessions WHERE staff_id = 'lead.cm'"
            )
            .await,
            0
        );

        // Signing out ends the session at once.
        let (mut b, csrf) = Browser::signed_in(&w, "lead.cm").await;
        let a = b.post(&w, "/app/logout", &[("csrf", &csrf)]).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert_eq!(w.audited("signout", "ok").await, 1);
        let a = b.get(&w, "/app/board").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "signed out");

        // The board's refresh every 30 s is not use: a board left open ends its session too.
        let (mut b, _) = Browser::signed_in(&w, "lead.cm").await;
        let expired = w.audited("session.expired", "ok").await;
        w.advance(20 * 60);
        let a = b.refresh(&w, "/app/board/rows").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        w.advance(10 * 60);
        let a = b.refresh(&w, "/app/board/rows").await;
        assert_eq!(
            a.status,
            StatusCode::NO_CONTENT,
            "idle for 30 minutes, refreshed all along"
        );
        assert!(
            a.hx_redirect
                .as_deref()
                .is_some_and(|l| l.starts_with("/app/login?why=expired")),
            "{:?}",
            a.hx_redirect
        );
        assert_eq!(w.audited("session.expired", "ok").await, expired + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_page_shown_again_leaves_the_one_being_filled_in_valid() {
    on_each_workstation(|w| async move {
        // A second tab on the sign-in page, or another page sent there while the first is being
        // filled in: both forms carry the browser's one sign-in token.
        let mut b = Browser::default();
        let first = csrf_of(&b.get(&w, "/app/login").await.body);
        let second = csrf_of(
            &b.get(&w, "/app/login?why=signin&next=/app/board")
                .await
                .body,
        );
        assert_eq!(first, second);
        let a = b
            .post(
                &w,
                "/app/login",
                &[
                    ("csrf", &first),
                    ("staff", "lead.cm"),
                    ("password", STAFF_PASSWORD),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        // Signing in spends it: the next sign-in page has another.
        let next = csrf_of(&b.get(&w, "/app/login").await.body);
        assert_ne!(next, first);
        // A cookie that is not one of the server's tokens is not taken up.
        let mut odd = Browser {
            cookies: vec![("cp_login".into(), "chosen-by-someone-else".into())],
        };
        let page = odd.get(&w, "/app/login").await;
        assert_ne!(csrf_of(&page.body), "chosen-by-someone-else");
        assert_eq!(csrf_of(&page.body).len(), 64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_completed_on_the_board_advances_the_enrolment_on_the_patient_page() {
    on_each_workstation(|w| async move {
        let enrolment = w.enrolled("P-BOARD", "clinic_a", 0).await;
        let (mut b, csrf) = Browser::signed_in(&w, "clinic_a.cm").await;
        let board = b.get(&w, "/app/board").await;
        assert_eq!(board.status, StatusCode::OK);
        let task = scalar(
            &w.pool,
            &format!(
                "SELECT id FROM tasks WHERE enrolment_id = {enrolment} AND task_ref = 'weekly_call'"
            ),
        )
        .await;
        assert!(
            attrs(&board.body, "task-row", "task").contains(&task.to_string()),
            "the task is on the board"
        );
        // The pathway's declared outcomes are the form's choices.
        assert!(
            board.body.contains(r#"<option value="unwell">"#),
            "declared outcomes offered"
        );
        // The htmx refresh answers the rows alone.
        let rows = b.get(&w, "/app/board/rows").await;
        assert_eq!(rows.status, StatusCode::OK);
        assert!(
            rows.body.starts_with(r#"<div id="board-rows""#),
            "{}",
            &rows.body[..80.min(rows.body.len())]
        );

        let patient = b.get(&w, "/app/patients/P-BOARD").await;
        assert_eq!(patient.status, StatusCode::OK, "{}", patient.body);
        assert!(
            patient
                .body
                .contains(r#"data-testid="enrolment-state">monitor<"#),
            "in monitor before"
        );

        // Claim, then complete with an outcome the pathway does not declare (refused, audited
        // by the store), then with `unwell`: the enrolment moves to refer_up at once.
        let a = b
            .post(
                &w,
                &format!("/app/tasks/{task}/claim"),
                &[("csrf", &csrf), ("back", "/app/board")],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert_eq!(a.location.as_deref(), Some("/app/board?done=task.claim"));
        let a = b
            .post(
                &w,
                &format!("/app/tasks/{task}/complete"),
                &[("csrf", &csrf), ("outcome", "fine")],
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert!(a.body.contains("fine"), "{}", a.body);
        assert_eq!(w.audited("task.complete", "invalid").await, 1);
        let a = b
            .post(
                &w,
                &format!("/app/tasks/{task}/complete"),
                &[
                    ("csrf", &csrf),
                    ("outcome", "unwell"),
                    ("back", "/app/board?status=active"),
                ],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        assert_eq!(
            a.location.as_deref(),
            Some("/app/board?status=active&done=task.complete")
        );
        let patient = b.get(&w, "/app/patients/P-BOARD").await;
        assert!(
            patient
                .body
                .contains(r#"data-testid="enrolment-state">refer_up<"#),
            "advanced: {}",
            patient.body
        );
        assert!(
            patient.body.contains(r#"data-kind="trace""#),
            "the trace behind the step is shown"
        );

        // A nurse of another institution cannot open the patient: 404, as in the API, audited.
        let (mut nurse, _) = Browser::signed_in(&w, "clinic_b.nurse").await;
        let before = w.audited("patient.read", "not_found").await;
        let a = nurse.get(&w, "/app/patients/P-BOARD").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert_eq!(w.audited("patient.read", "not_found").await, before + 1);
        let mut api = Request::get("/patients/P-BOARD")
            .header(header::AUTHORIZATION, "Bearer tok-clinic_b.nurse")
            .body(Body::empty())
            .expect("request");
        api.headers_mut();
        let res = w.app.clone().oneshot(api).await.expect("answer");
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "the API agrees");

        // The referral the unwell call raised waits in the lead hospital's inbox, with its clock.
        let (mut lead, lead_csrf) = Browser::signed_in(&w, "lead.cm").await;
        let inbox = lead.get(&w, "/app/referrals").await;
        assert_eq!(inbox.status, StatusCode::OK, "{}", inbox.body);
        let ids = attrs(&inbox.body, "referral-row", "referral");
        assert_eq!(ids.len(), 1, "{}", inbox.body);
        assert!(inbox.body.contains("24 h") || inbox.body.contains("小时"));
        let a = lead
            .post(
                &w,
                &format!("/app/referrals/{}/reject", ids[0]),
                &[("csrf", &lead_csrf)],
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "a rejection needs a reason"
        );
        let a = lead
            .post(
                &w,
                &format!("/app/referrals/{}/accept", ids[0]),
                &[("csrf", &lead_csrf)],
            )
            .await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        let patient = lead.get(&w, "/app/patients/P-BOARD").await;
        assert_eq!(patient.status, StatusCode::OK);
        assert!(
            patient
                .body
                .contains(r#"data-testid="enrolment-state">closed<"#),
            "{}",
            patient.body
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_down_lists_exactly_what_the_figure_counts() {
    on_each_workstation(|w| async move {
        // Weekly calls fallen due over the last weeks; two of them done, one late.
        for (i, days) in [20, 16, 12, 10, 9, 3].iter().enumerate() {
            w.enrolled(&format!("P-KPI-{i}"), "lead", *days).await;
        }
        let (mut b, csrf) = Browser::signed_in(&w, "lead.cm").await;
        // Open weekly calls by due time (rows come sorted as text; the instants have ten digits).
        let open: Vec<i64> = support::rows(
            &w.pool,
            "SELECT CAST(due_at AS TEXT), CAST(id AS TEXT) FROM tasks WHERE task_ref = 'weekly_call' AND status = 'open'",
            2,
        )
        .await
        .iter()
        .map(|s| s.split('|').nth(1).expect("id").parse().expect("id"))
        .collect();
        assert!(open.len() >= 3, "{open:?}");
        // The call overdue longest, done late; the one due last, done before it is due.
        let last = open[open.len() - 1];
        for (task, outcome) in [(open[0], "done"), (last, "unwell")] {
            let a = b
                .post(
                    &w,
                    &format!("/app/tasks/{task}/complete"),
                    &[("csrf", &csrf), ("outcome", outcome)],
                )
                .await;
            assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        }
        // A hospital stay of two and a half days, ended a day ago.
        let now = w.now();
        let stay = w.enrolled("P-KPI-STAY", "lead", 5).await;
        let lead_cm = carepath_engine::store::queries::Caller {
            staff_id: "lead.cm".into(),
            institution_id: "lead".into(),
            roles: vec!["case_manager".into()],
        };
        for (name, hours_ago) in [("admitted", 84), ("discharged", 24)] {
            let event = carepath_engine::store::queries::ReportedEvent {
                enrolment: stay,
                name,
                at: now - jiff::SignedDuration::from_hours(hours_ago),
                data: None,
            };
            carepath_engine::store::queries::event_scoped(
                &w.pool, &w.programs, &lead_cm, &event, "test", now,
            )
            .await
            .expect("a hospital event");
        }
        w.advance(60);
        let today = w
            .now()
            .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").expect("tz"))
            .date();
        let from = today.checked_sub(jiff::Span::new().days(30)).expect("date");
        let to = today.tomorrow().expect("date");
        let kpis = w
            .api("lead.cm", &format!("/kpis?from={from}&to={to}"))
            .await;
        let mut counted = Vec::new();
        for name in carepath_engine::store::indicators::LINE_LISTS {
            let figure = &kpis["builtin"][name];
            let page = b
                .get(
                    &w,
                    &format!("/app/indicators/{name}/patients?from={from}&to={to}"),
                )
                .await;
            assert_eq!(page.status, StatusCode::OK, "{name}: {}", page.body);
            let (num, den) = page_sides(name, &page.body);
            assert_eq!(num, figure["numerator"], "{name} numerator: {figure}");
            assert_eq!(den, figure["denominator"], "{name} denominator: {figure}");
            // The JSON line list agrees with the page, row for row.
            let list = w
                .api("lead.cm", &format!("/kpis/{name}/rows?from={from}&to={to}"))
                .await;
            assert_eq!(list["numerator"], num, "{name}");
            assert_eq!(list["denominator"], den, "{name}");
            let ids: Vec<String> = list["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| r["id"].to_string().trim_matches('"').to_string())
                .collect();
            assert_eq!(ids, attrs(&page.body, "drill-row", "id"), "{name}");
            if den.as_f64() > Some(0.0) {
                counted.push(*name);
            }
        }
        for name in [
            "follow_up_rate",
            "on_time_task_rate",
            "overdue_rate",
            "referral_rate",
            "average_length_of_stay_days",
            "case_load_per_case_manager",
        ] {
            assert!(counted.contains(&name), "the fixture counts nothing for {name}");
        }
        assert_eq!(
            kpis["builtin"]["average_length_of_stay_days"]["numerator"],
            serde_json::json!(2.5),
            "the stay's days"
        );
        // The indicators page links each figure to its line list.
        let table = b
            .get(&w, &format!("/app/indicators?from={from}&to={to}"))
            .await;
        assert_eq!(table.status, StatusCode::OK, "{}", table.body);
        assert!(table.body.contains(&format!(
            "/app/indicators/follow_up_rate/patients?from={from}&amp;to={to}"
        )));
        assert!(table.body.contains(&format!(
            "/app/indicators/on_time_task_rate/patients?from={from}&amp;to={to}&amp;staff=lead.cm"
        )));
        // One staff member's share: the line list of the tasks assigned to them equals the
        // breakdown by staff.
        let by_staff = w
            .api("lead.cm", &format!("/kpis?from={from}&to={to}&by=staff"))
            .await;
        let mine = by_staff["breakdown"]["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["staff"] == "lead.cm")
            .expect("lead.cm's row")
            .clone();
        assert!(mine["tasks"]["due"].as_i64() > Some(0), "{mine}");
        let list = w
            .api(
                "lead.cm",
                &format!("/kpis/on_time_task_rate/rows?from={from}&to={to}&staff=lead.cm"),
            )
            .await;
        assert_eq!(list["denominator"], mine["tasks"]["due"], "{list}");
        assert_eq!(list["numerator"], mine["tasks"]["due_on_time"], "{list}");
        let page = b
            .get(
                &w,
                &format!(
                    "/app/indicators/on_time_task_rate/patients?from={from}&to={to}&staff=lead.cm"
                ),
            )
            .await;
        assert_eq!(
            attrs(&page.body, "drill-row", "id").len() as i64,
            mine["tasks"]["due"].as_i64().expect("due")
        );
    })
    .await;
}

/// A drill-down page's numerator and denominator, counted from its rows' marks as the figure is
/// counted: distinct enrolments for the follow-up rate, the stays' seconds in days for the length
/// of stay, rows otherwise.
fn page_sides(name: &str, body: &str) -> (serde_json::Value, serde_json::Value) {
    let num = attrs(body, "drill-row", "numerator");
    let den = attrs(body, "drill-row", "denominator");
    let enrolments = attrs(body, "drill-row", "enrolment");
    let marked = |side: &[String]| side.iter().map(|v| v == "true").collect::<Vec<bool>>();
    let (num, den) = (marked(&num), marked(&den));
    assert_eq!(
        num.len(),
        den.len(),
        "{name}: every row is marked on both sides"
    );
    let count = |side: &[bool]| -> i64 {
        if name == "follow_up_rate" {
            let distinct: std::collections::BTreeSet<&String> = enrolments
                .iter()
                .zip(side)
                .filter(|(_, m)| **m)
                .map(|(e, _)| e)
                .collect();
            distinct.len() as i64
        } else {
            side.iter().filter(|m| **m).count() as i64
        }
    };
    let numerator = if name == "average_length_of_stay_days" {
        let seconds: i64 = attrs(body, "drill-row", "seconds")
            .iter()
            .map(|s| s.parse::<i64>().expect("seconds"))
            .sum();
        serde_json::json!(seconds as f64 / 86_400.0)
    } else {
        serde_json::json!(count(&num))
    };
    (numerator, serde_json::json!(count(&den)))
}

/// A multipart body with one file field and plain fields.
fn multipart(fields: &[(&str, &str)], file: (&str, &str)) -> (String, String) {
    let boundary = "----carepathboundary7MA4YWxkTrZu0gW";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: application/yaml\r\n\r\n{}\r\n--{boundary}--\r\n",
        file.0, file.1
    ));
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pathway_upload_shows_its_diagnostics_where_the_api_does() {
    on_each_workstation(|w| async move {
        let (mut b, csrf) = Browser::signed_in(&w, "lead.informaticist").await;
        let list = b.get(&w, "/app/pathways").await;
        assert!(list.body.contains(r#"data-pathway="wound_care""#));
        let graph = b.get(&w, "/app/pathways/wound_care/1").await;
        assert_eq!(graph.status, StatusCode::OK);
        assert!(graph.body.contains("<svg") && graph.body.contains(r#"data-state="nurse_call""#));
        // A transition to a state that does not exist, on line 17.
        let broken = support::WOUND_CARE.replace("        to: nurse_call", "        to: nurse_cal");
        let (ctype, body) = multipart(
            &[("csrf", &csrf), ("format", "yaml")],
            ("wound_care.yaml", &broken),
        );
        let req = Request::post("/app/pathways/validate")
            .header(header::COOKIE, b.cookie_header())
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .expect("request");
        let a = b.send(&w, req).await;
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);
        let lines = attrs(&a.body, "diagnostic", "line");
        let cols = attrs(&a.body, "diagnostic", "col");
        assert!(!lines.is_empty(), "{}", a.body);
        assert!(a.body.contains("wound_care.yaml"), "the file is named");
        // The API locates the same problems at the same places.
        let req = Request::post("/pathways")
            .header(header::AUTHORIZATION, "Bearer tok-lead.informaticist")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                serde_json::json!({"source": broken}).to_string(),
            ))
            .expect("request");
        let res = w.app.clone().oneshot(req).await.expect("answer");
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let v: Value =
            serde_json::from_slice(&res.into_body().collect().await.expect("body").to_bytes())
                .expect("json");
        let api: Vec<(String, String)> = v["diagnostics"]
            .as_array()
            .expect("diagnostics")
            .iter()
            .map(|d| (d["line"].to_string(), d["col"].to_string()))
            .collect();
        let page: Vec<(String, String)> = lines.into_iter().zip(cols).collect();
        assert_eq!(page, api);
        assert!(page.iter().any(|(l, _)| l == "17"), "{page:?}");
        // Without the token the form is refused.
        let (ctype, body) = multipart(&[("format", "yaml")], ("wound_care.yaml", &broken));
        let req = Request::post("/app/pathways/validate")
            .header(header::COOKIE, b.cookie_header())
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .expect("request");
        assert_eq!(b.send(&w, req).await.status, StatusCode::FORBIDDEN);
        // A clean file, published when asked: the new version is listed.
        let v2 = support::WOUND_CARE.replace("version: 1", "version: 2");
        let (ctype, body) = multipart(
            &[("csrf", &csrf), ("format", "yaml"), ("publish", "1")],
            ("wound_care.yaml", &v2),
        );
        let req = Request::post("/app/pathways/validate")
            .header(header::COOKIE, b.cookie_header())
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .expect("request");
        let a = b.send(&w, req).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let list = b.get(&w, "/app/pathways").await;
        assert!(list.body.contains("/app/pathways/wound_care/2"));
        assert_eq!(w.audited("pathway.publish", "ok").await, 1);
        // A case manager may read pathways but not validate uploads.
        let (mut cm, cm_csrf) = Browser::signed_in(&w, "lead.cm").await;
        let (ctype, body) = multipart(
            &[("csrf", &cm_csrf), ("format", "yaml")],
            ("wound_care.yaml", &v2),
        );
        let req = Request::post("/app/pathways/validate")
            .header(header::COOKIE, cm.cookie_header())
            .header(header::CONTENT_TYPE, ctype)
            .body(Body::from(body))
            .expect("request");
        assert_eq!(cm.send(&w, req).await.status, StatusCode::FORBIDDEN);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_switch_language_and_serve_their_assets() {
    on_each_workstation(|w| async move {
        let mut b = Browser::default();
        let login = b.get(&w, "/app/login").await;
        assert!(login.body.contains(r#"<html lang="zh-CN""#));
        let a = b.get(&w, "/app/lang?to=en&back=/app/login").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        let login = b.get(&w, "/app/login").await;
        assert!(login.body.contains(r#"<html lang="en""#) && login.body.contains("Sign in"));
        // No redirect leaves the workstation.
        let a = b
            .get(&w, "/app/lang?to=en&back=https://evil.example/")
            .await;
        assert_eq!(a.location.as_deref(), Some("/app/"));
        let js = b.get(&w, "/app/static/htmx.min.js").await;
        assert_eq!(js.status, StatusCode::OK);
        assert!(js.body.starts_with("/*! htmx.org"));
        let css = b.get(&w, "/app/static/app.css").await;
        assert!(css.body.contains(":focus-visible"));
        // The icon browsers ask the origin for on their own.
        let icon = b.get(&w, "/favicon.ico").await;
        assert_eq!(icon.status, StatusCode::OK);
        assert!(icon.body.as_bytes().starts_with(&[0, 0, 1, 0]), "an icon");
        // Not signed in: every page leads to the sign-in form.
        let a = b.get(&w, "/app/patients/P-1").await;
        assert_eq!(a.status, StatusCode::SEE_OTHER);
        assert!(
            a.location
                .as_deref()
                .is_some_and(|l| l.starts_with("/app/login"))
        );
        let _ = w.now();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditor_searches_the_institutions_record_and_verifies_it() {
    on_each_workstation(|w| async move {
        let enrolment = w.enrolled("P-AUD-1", "lead", 0).await;
        w.enrolled("P-AUD-2", "lead", 0).await;
        let elsewhere = w.enrolled("P-AUD-3", "clinic_a", 0).await;
        // Staff read records: the lead's case manager one patient's, a clinic's another's.
        w.api("lead.cm", &format!("/enrolments/{enrolment}/timeline"))
            .await;
        w.api("clinic_a.cm", &format!("/enrolments/{elsewhere}/timeline"))
            .await;

        // The auditor signs in with the second factor and lands on the audit page.
        let mut b = Browser::default();
        let step = (w.now().as_second() / 30) as u64;
        let code = carepath_admin_api::web::totp_at(b"12345678901234567890", step, 6);
        let a = b.sign_in(&w, "lead.auditor", STAFF_PASSWORD, &code).await;
        assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
        let home = b.get(&w, "/app/").await;
        assert_eq!(home.location.as_deref(), Some("/app/audit"));

        // Who touched P-AUD-1: exactly the lead's entries naming the patient, newest first.
        let want: Vec<String> = support::rows(
            &w.pool,
            "SELECT CAST(id AS TEXT) FROM audit_log WHERE institution_id = 'lead' \
             AND patients LIKE '%\"P-AUD-1\"%'",
            1,
        )
        .await;
        let page = b.get(&w, "/app/audit?patient=P-AUD-1").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let ids = attrs(&page.body, "audit-row", "id");
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, want, "the rows the filter selects");
        let numbers: Vec<i64> = ids.iter().map(|i| i.parse().expect("an id")).collect();
        assert!(
            numbers.windows(2).all(|p| p[0] > p[1]),
            "newest first: {numbers:?}"
        );
        let pairs: Vec<(String, String)> = attrs(&page.body, "audit-row", "actor")
            .into_iter()
            .zip(attrs(&page.body, "audit-row", "action"))
            .collect();
        assert!(
            pairs.contains(&("lead.cm".into(), "enrolment.timeline".into())),
            "{pairs:?}"
        );
        // The search is in the record, with the patient it asked about.
        let searched = scalar(
            &w.pool,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'audit.search' \
             AND actor = 'lead.auditor' AND patients LIKE '%\"P-AUD-1\"%'",
        )
        .await;
        assert_eq!(searched, 1);

        // By staff member and by a family of actions; never another institution's entries.
        let page = b
            .get(&w, "/app/audit?actor=lead.cm&action=enrolment.")
            .await;
        let actions = attrs(&page.body, "audit-row", "action");
        assert!(!actions.is_empty());
        assert!(
            actions.iter().all(|a| a.starts_with("enrolment.")),
            "{actions:?}"
        );
        assert!(
            attrs(&page.body, "audit-row", "actor")
                .iter()
                .all(|a| a == "lead.cm")
        );
        let all = b.get(&w, "/app/audit").await;
        let actors = attrs(&all.body, "audit-row", "actor");
        assert!(!actors.is_empty());
        assert!(
            !actors.iter().any(|a| a.starts_with("clinic_a.")),
            "{actors:?}"
        );

        // Verification on request, as GET /audit/verify does it.
        let page = b.get(&w, "/app/audit?verify=1").await;
        assert_eq!(attrs(&page.body, "verify-result", "valid"), ["true"]);

        // A case manager has no audit page.
        let (mut cm, _) = Browser::signed_in(&w, "lead.cm").await;
        let a = cm.get(&w, "/app/audit").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);

        // Redirects (the start page, a sign-in) are requests served, not failures: nothing above
        // failed, so the record holds no `error`.
        let errors = scalar(
            &w.pool,
            "SELECT COUNT(*) FROM audit_log WHERE outcome = 'error'",
        )
        .await;
        assert_eq!(errors, 0);
    })
    .await;
}
