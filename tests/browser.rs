//! The case manager's workstation in a real browser: headless Debian Chromium driven through
//! chromedriver (`fantoccini`), against a workstation served on a port of 127.0.0.1 on each
//! backend. It plays what tests/web.rs plays over HTTP — an urgent call claimed and completed with
//! a structured outcome on the board and the enrolment's step seen on the patient view, a referral
//! accepted in the inbox, a wrong password, the sign-in page open in two tabs, another
//! institution's nurse getting 404, forms posted from other sites refused, a broken pathway's
//! diagnostics located by line and column, indicator line lists equal to the API's — and the
//! demo's pages, in both languages, as a clinic's case manager and an informaticist see them.
//!
//! Every page visited is checked the same way: a screenshot under `target/browser-artifacts/`,
//! a browser console with no error (an error page's own status aside, which is required), and
//! axe-core (vendored in `tests/vendor/`) finding no problem of impact serious or critical. A test
//! waits for what a page shows (`wait().for_element`, and for the page it acted on to be gone),
//! never for a length of time. With `CAREPATH_DOC_SCREENSHOTS=1` the demo's pages are also
//! written to `docs/img/`. Without chromedriver the tests are skipped with a loud message.

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fantoccini::elements::Element;
use fantoccini::wd::{Capabilities, TimeoutConfiguration, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{self, Served, Workstation, backends, loud, scalar};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// axe-core 4.14.1 (`npm pack axe-core`), MPL-2.0; its licences are beside it.
const AXE: &str = include_str!("vendor/axe.min.js");
/// The pages the documentation shows (`docs/img/NAME.png`).
const DOC_PAGES: &[&str] = &["board", "patient", "referrals", "indicators", "pathways"];
/// How long a page may take to show what a test waits for: a loaded machine is slow, not broken.
const PATIENCE: Duration = Duration::from_secs(90);

/// Whether the browser tests can run; when they cannot, says so loudly.
fn browser_available() -> bool {
    let missing: Vec<&str> = [CHROMEDRIVER, CHROMIUM]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    loud(&format!(
        "SKIPPED: the workstation's browser tests need Chromium and chromedriver ({} missing; `apt-get install -y chromium chromium-driver`)",
        missing.join(", ")
    ));
    false
}

/// Where screenshots and axe reports go.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser-artifacts");
    std::fs::create_dir_all(&dir).expect("cannot create target/browser-artifacts");
    dir
}

/// Reads a line of a child's output from `lines` that `find` recognises, within [`PATIENCE`]
/// (`what` names the wait in the panic).
fn await_line<T>(
    lines: &mpsc::Receiver<String>,
    what: &str,
    limit: Duration,
    find: impl Fn(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    let mut said = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => match find(&line) {
                Some(found) => return found,
                None => said.push(line),
            },
            Err(e) => panic!("{what}: {e}; it said:\n{}", said.join("\n")),
        }
    }
}

/// The lines a child writes to its standard output, read on a thread of their own (so the pipe
/// never fills).
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().expect("piped output");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Kills a child and every process of its group (a chromedriver and the browsers it started).
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}

/// chromedriver on a port it chose, in a process group of its own with the browsers it starts;
/// the group is killed when this is dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let mut child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("cannot start chromedriver");
        let lines = lines_of(&mut child);
        let mut driver = Driver {
            child,
            url: String::new(),
        };
        // "ChromeDriver was started successfully on port 41235."
        let port: u16 = await_line(&lines, "chromedriver did not start", PATIENCE, |l| {
            l.strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|p| p.trim_end_matches('.').parse().ok())
        });
        driver.url = format!("http://127.0.0.1:{port}/");
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// chromedriver's log of the browser's console (`goog:loggingPrefs`); each read returns what was
/// logged since the last one.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Runs axe on the page and answers its violations, trimmed to what a report needs.
const AXE_RUN: &str = r#"
const done = arguments[arguments.length - 1];
axe.run(document, { resultTypes: ['violations'] })
  .then(r => done(JSON.stringify(r.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => ({ target: n.target, html: n.html, summary: n.failureSummary })),
  })))))
  .catch(e => done('axe failed: ' + e));
"#;

/// A browser session on a served workstation, checking every page it is asked to.
struct Browser {
    client: Client,
    base: String,
    /// Names this session's artifacts: the test and the backend.
    label: String,
    pages: usize,
    /// `docs/img/` when the pages are wanted for the documentation.
    docs: Option<PathBuf>,
}

impl Browser {
    /// A headless Chromium at 1366×768, in English, logging its console.
    async fn open(driver: &Driver, base: &str, label: &str) -> Browser {
        let caps: Capabilities = serde_json::from_value(json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--window-size=1366,768",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--lang=en-US",
                ],
                "prefs": { "intl.accept_languages": "en-US,en" },
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        }))
        .expect("capabilities");
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .expect("a Chromium session");
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(PATIENCE),
                Some(PATIENCE),
                Some(Duration::ZERO),
            ))
            .await
            .expect("timeouts");
        for stale in std::fs::read_dir(artifacts()).expect("artifacts").flatten() {
            if stale
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{label}-"))
            {
                let _ = std::fs::remove_file(stale.path());
            }
        }
        Browser {
            client,
            base: base.trim_end_matches('/').to_string(),
            label: label.to_string(),
            pages: 0,
            docs: None,
        }
    }

    async fn goto(&self, path: &str) {
        let url = format!("{}{path}", self.base);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    async fn url(&self) -> String {
        self.client.current_url().await.expect("url").to_string()
    }

    /// The element `css` finds, waiting for it to show.
    async fn wait(&self, css: &str) -> Element {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => return e,
                // Not there yet, or the page is still loading (Chromium may then answer with
                // another error than "no such element").
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!(
                    "`{css}` never showed on {} ({e}); the page says:\n{}",
                    self.url().await,
                    self.text("body").await
                ),
            }
        }
    }

    /// The first element `css` finds on the page as it is.
    async fn find(&self, css: &str) -> Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!("no `{css}` on {}: {e}", self.url().await),
        }
    }

    async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client
            .find_all(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}`: {e}"))
    }

    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The `attr` of every element `css` finds, in page order.
    async fn attrs(&self, css: &str, attr: &str) -> Vec<String> {
        let mut out = Vec::new();
        for e in self.find_all(css).await {
            out.push(e.attr(attr).await.expect("attribute").unwrap_or_default());
        }
        out
    }

    /// Clicks `target` (a link or a form's button), waits for the page it was on to be gone and
    /// for the next one to show `css`.
    async fn click_to(&self, target: &str, css: &str) -> Element {
        let before = self.find("html").await;
        self.find(target)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("cannot click `{target}`: {e}"));
        let deadline = Instant::now() + PATIENCE;
        loop {
            match before.tag_name().await {
                // The old page is gone. While the new one is loading, Chromium may answer about
                // the old element with another error than "stale" (a node or an execution
                // context it no longer has): that too says the page changed; waiting for `css`
                // then says whether the right page came.
                Err(_) => break,
                Ok(_) if Instant::now() > deadline => {
                    panic!(
                        "clicking `{target}` left {} in place for {PATIENCE:?}",
                        self.url().await
                    )
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        self.wait(css).await
    }

    /// Signs in at the sign-in page and waits for the signed-in page (or says why not).
    async fn sign_in(&mut self, staff: &str, password: &str) {
        self.sign_in_page().await;
        if self.pages == 0 {
            self.check("signin", None).await;
        }
        let said = self.submit_sign_in(staff, password).await;
        assert_eq!(
            said.0.as_deref(),
            Some("who"),
            "{staff} could not sign in at {}: {}",
            self.url().await,
            said.1
        );
    }

    /// Opens the sign-in page.
    async fn sign_in_page(&self) {
        self.goto("/app/login").await;
        self.wait("#signin-form").await;
    }

    /// Fills in and sends the sign-in form shown; answers what the next page shows first: the
    /// signed-in staff member (`who`), a refusal (`signin-error`) or an error page
    /// (`error-detail`), with its text.
    async fn submit_sign_in(&self, staff: &str, password: &str) -> (Option<String>, String) {
        for (field, value) in [("#staff", staff), ("#password", password)] {
            let input = self.find(field).await;
            input.clear().await.expect("clearing");
            input.send_keys(value).await.expect("typing");
        }
        let next = self
            .click_to(
                "#signin-submit",
                "[data-testid=who], [data-testid=signin-error], [data-testid=error-detail]",
            )
            .await;
        (
            next.attr("data-testid").await.expect("attribute"),
            next.text().await.unwrap_or_default(),
        )
    }

    /// What chromedriver logged of the console since the last read.
    async fn console(&self) -> Vec<Value> {
        match self.client.issue_cmd(BrowserLog).await {
            Ok(Value::Array(entries)) => entries,
            Ok(other) => panic!("the browser's log is not a list: {other}"),
            Err(e) => panic!("cannot read the browser's log: {e}"),
        }
    }

    /// Checks the page shown as `name`: a screenshot, a console without errors (when `status`
    /// is given, the page must have answered it, and that is the one error allowed), and no
    /// serious or critical axe violation.
    async fn check(&mut self, name: &str, status: Option<u16>) {
        self.pages += 1;
        let url = self.url().await;
        let png = self.client.screenshot().await.expect("a screenshot");
        let file = format!("{}-{:02}-{name}", self.label, self.pages);
        std::fs::write(artifacts().join(format!("{file}.png")), &png)
            .expect("cannot write a screenshot");
        if let Some(docs) = self.docs.as_ref().filter(|_| DOC_PAGES.contains(&name)) {
            let path = docs.join(format!("{name}.png"));
            std::fs::write(&path, &png).expect("cannot write a documentation screenshot");
            assert!(
                png.len() <= 200 * 1024,
                "{} is {} KiB; keep the documentation's screenshots under 200 KiB",
                path.display(),
                png.len() / 1024
            );
        }
        let mut answered = false;
        let mut errors = Vec::new();
        for entry in self.console().await {
            if entry["level"] != "SEVERE" {
                continue;
            }
            let message = entry["message"].as_str().unwrap_or("").to_string();
            let own_status = status.is_some_and(|s| {
                entry["source"] == "network"
                    && message.starts_with(&url)
                    && message.contains(&format!("status of {s} "))
            });
            if own_status {
                answered = true;
            } else {
                errors.push(message);
            }
        }
        assert!(
            errors.is_empty(),
            "{name} ({url}): the browser's console has errors:\n{}",
            errors.join("\n")
        );
        if let Some(s) = status {
            assert!(answered, "{name} ({url}): the page did not answer {s}");
        }
        self.axe(name, &url, &file).await;
    }

    /// Runs axe-core on the page; fails on any violation of impact serious or critical.
    async fn axe(&self, name: &str, url: &str, file: &str) {
        let loaded = self
            .client
            .execute("return typeof window.axe === 'object';", vec![])
            .await
            .expect("a script runs");
        if loaded != Value::Bool(true) {
            self.client
                .execute(AXE, vec![])
                .await
                .expect("axe-core loads into the page");
        }
        let out = self
            .client
            .execute_async(AXE_RUN, vec![])
            .await
            .expect("axe-core runs");
        let text = out.as_str().unwrap_or_default();
        let violations: Vec<Value> = serde_json::from_str(text)
            .unwrap_or_else(|_| panic!("{name} ({url}): axe-core answered {out}"));
        if violations.is_empty() {
            return;
        }
        std::fs::write(
            artifacts().join(format!("{file}.axe.json")),
            serde_json::to_string_pretty(&violations).expect("json"),
        )
        .expect("cannot write the axe report");
        let serious: Vec<String> = violations
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| {
                let nodes: Vec<String> = v["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .take(5)
                    .map(|n| format!("    {} {}", n["target"], n["html"]))
                    .collect();
                format!(
                    "  {} ({}): {}\n{}",
                    v["id"].as_str().unwrap_or(""),
                    v["impact"].as_str().unwrap_or(""),
                    v["help"].as_str().unwrap_or(""),
                    nodes.join("\n")
                )
            })
            .collect();
        assert!(
            serious.is_empty(),
            "{name} ({url}): axe-core finds {} serious or critical problem(s):\n{}",
            serious.len(),
            serious.join("\n")
        );
    }

    /// Ends the session, checking that nothing reached the console after the last page.
    async fn close(self) {
        let late: Vec<Value> = self
            .console()
            .await
            .into_iter()
            .filter(|e| e["level"] == "SEVERE")
            .collect();
        let _ = self.client.close().await;
        assert!(
            late.is_empty(),
            "console errors after the last page: {late:?}"
        );
    }
}

/// A page of another site: it posts a form to `action` as soon as it loads, as a forged request
/// would. Served until dropped.
async fn forger(action: String) -> Served {
    let page = format!(
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Prize draw</title><link rel="icon" href="data:,"></head>
<body><form method="post" action="{action}"><input type="hidden" name="back" value="/app/board"></form>
<script>document.forms[0].submit();</script></body></html>"#
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    Served::spawn(listener, app)
}

/// The id of the task `task_ref` of `enrolment`.
async fn task_of(w: &Workstation, enrolment: i64, task_ref: &str) -> i64 {
    scalar(
        &w.pool,
        &format!(
            "SELECT id FROM tasks WHERE enrolment_id = {enrolment} AND task_ref = '{task_ref}'"
        ),
    )
    .await
}

async fn task_status(w: &Workstation, task: i64) -> String {
    support::rows(
        &w.pool,
        &format!("SELECT status FROM tasks WHERE id = {task}"),
        1,
    )
    .await
    .join("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_call_completed_on_the_board_moves_the_patient_on() {
    if !browser_available() {
        return;
    }
    for backend in backends() {
        let w = Workstation::new(backend).await;
        let weekly = w.enrolled("P-BOARD", "clinic_a", 0).await;
        let fall = w
            .enrol("P-BOARD", "clinic_a", "fall_check", "reported", 0)
            .await;
        let urgent = task_of(&w, fall, "fall_call").await;
        let call = task_of(&w, weekly, "weekly_call").await;
        let served = w.serve().await;
        let driver = Driver::start();
        let mut b =
            Browser::open(&driver, &served.url(""), &format!("board-{}", w.backend())).await;

        // The case manager starts on the board: the urgent call first, then the weekly one.
        b.sign_in("clinic_a.cm", support::STAFF_PASSWORD).await;
        b.wait("body[data-page=board]").await;
        b.check("board", None).await;
        let order = b.attrs("tr[data-testid=task-row]", "data-task").await;
        assert_eq!(
            order,
            [urgent.to_string(), call.to_string()],
            "urgent first"
        );
        assert_eq!(
            b.attrs("tr[data-testid=task-row]", "data-priority").await[0],
            "urgent"
        );

        // Claimed, then completed with one of the outcomes the pathway declares.
        b.click_to(&format!("#claim-{urgent} button"), "[data-testid=flash]")
            .await;
        b.check("board-claimed", None).await;
        assert!(
            b.text(&format!("#task-{urgent}")).await.contains("claimed"),
            "{}",
            b.text(&format!("#task-{urgent}")).await
        );
        assert_eq!(task_status(&w, urgent).await, "claimed");
        let outcomes = b.attrs(&format!("#outcome-{urgent} option"), "value").await;
        assert_eq!(outcomes, ["safe_at_home", "needs_visit"]);
        b.find(&format!("#outcome-{urgent}"))
            .await
            .select_by_value("needs_visit")
            .await
            .expect("an outcome");
        b.click_to(&format!("#complete-{urgent} button"), "[data-testid=flash]")
            .await;
        b.check("board-completed", None).await;
        assert!(
            b.find_all(&format!("#task-{urgent}")).await.is_empty(),
            "a done task leaves the board"
        );
        assert_eq!(task_status(&w, urgent).await, "done");

        // The patient view shows the enrolment in its next state, and the step's trace.
        b.click_to(
            &format!("#task-{call} a[data-testid=patient-link]"),
            "body[data-page=patient]",
        )
        .await;
        let state = b
            .text(&format!(
                "tr[data-enrolment='{fall}'] [data-testid=enrolment-state]"
            ))
            .await;
        assert!(state.contains("home_visit"), "{state}");
        let step = b
            .text(&format!("#enrolment-{fall} li[data-kind=transition]"))
            .await;
        assert!(step.contains("triage → home_visit"), "{step}");
        b.find(&format!("#enrolment-{fall} li[data-kind=trace] summary"))
            .await
            .click()
            .await
            .expect("open the trace");
        let trace = b
            .text(&format!("#enrolment-{fall} li[data-kind=trace] pre"))
            .await;
        assert!(!trace.trim().is_empty(), "the step's trace is shown");
        b.check("patient", None).await;

        // The weekly call finds the patient unwell: a referral to the lead hospital.
        b.goto("/app/board").await;
        b.wait(&format!("#outcome-{call}")).await;
        b.find(&format!("#outcome-{call}"))
            .await
            .select_by_value("unwell")
            .await
            .expect("an outcome");
        b.click_to(&format!("#complete-{call} button"), "[data-testid=flash]")
            .await;

        // The lead hospital accepts it from the inbox, with its acceptance clock.
        b.sign_in("lead.cm", support::STAFF_PASSWORD).await;
        b.goto("/app/referrals").await;
        b.wait("body[data-page=referrals]").await;
        b.check("referrals", None).await;
        let waiting = b
            .attrs("tr[data-testid=referral-row]", "data-referral")
            .await;
        assert_eq!(waiting.len(), 1, "{}", b.text("main").await);
        assert!(
            b.text("[data-testid=accept-clock]").await.contains("left"),
            "the clock runs"
        );
        b.click_to(
            &format!("#referral-{} button[data-testid=accept]", waiting[0]),
            "body[data-page=referrals]",
        )
        .await;
        b.check("referrals-decided", None).await;
        assert!(b.find_all("tr[data-testid=referral-row]").await.is_empty());
        b.goto("/app/patients/P-BOARD").await;
        b.wait("body[data-page=patient]").await;
        let state = b
            .text(&format!(
                "tr[data-enrolment='{weekly}'] [data-testid=enrolment-state]"
            ))
            .await;
        assert_eq!(state, "closed");
        b.check("patient-referred", None).await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_institution_gets_404_and_forms_from_other_sites_are_refused() {
    if !browser_available() {
        return;
    }
    for backend in backends() {
        let w = Workstation::new(backend).await;
        let enrolment = w.enrolled("P-OTHER", "clinic_a", 0).await;
        let task = task_of(&w, enrolment, "weekly_call").await;
        let served = w.serve().await;
        let driver = Driver::start();
        let mut b = Browser::open(
            &driver,
            &served.url(""),
            &format!("refusals-{}", w.backend()),
        )
        .await;

        // A wrong password: refused on the sign-in page.
        b.sign_in_page().await;
        let refused = b.submit_sign_in("clinic_b.nurse", "not her password").await;
        assert_eq!(refused.0.as_deref(), Some("signin-error"), "{}", refused.1);
        b.check("signin-refused", Some(401)).await;
        // The sign-in page opened again in a second tab leaves the form in the first valid.
        b.sign_in_page().await;
        let first = b.client.window().await.expect("a window");
        let second = b.client.new_window(true).await.expect("a tab").handle;
        b.client.switch_to_window(second).await.expect("the tab");
        b.sign_in_page().await;
        b.client.close_window().await.expect("closing the tab");
        b.client
            .switch_to_window(first)
            .await
            .expect("the first tab");
        let said = b
            .submit_sign_in("clinic_b.nurse", support::STAFF_PASSWORD)
            .await;
        assert_eq!(said.0.as_deref(), Some("who"), "{}", said.1);

        // A nurse of another clinic: the patient does not exist for her, audited; the API agrees.
        b.goto("/app/patients/P-OTHER").await;
        b.wait("body[data-page=error]").await;
        b.check("patient-of-another-clinic", Some(404)).await;
        assert_eq!(w.audited("patient.read", "not_found").await, 1);
        let (status, _) = w
            .call(
                Request::get("/patients/P-OTHER")
                    .header(header::AUTHORIZATION, "Bearer tok-clinic_b.nurse")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the API agrees");

        // The patient's case manager, signed in, opens pages of other sites that post the
        // board's claim form.
        b.sign_in("clinic_a.cm", support::STAFF_PASSWORD).await;
        let action = served.url(&format!("/app/tasks/{task}/claim"));
        let forger = forger(action).await;
        // From another site (localhost is not 127.0.0.1): the SameSite=Strict session cookie
        // stays home, so the post reaches no session and leads to the sign-in page.
        b.client
            .goto(&format!("http://localhost:{}/", forger.addr.port()))
            .await
            .expect("the other site");
        b.wait("body[data-page=signin]").await;
        b.check("forged-cross-site", None).await;
        assert_eq!(task_status(&w, task).await, "open", "nothing claimed");
        // From another origin of the same site (another port): the cookie goes along, but the
        // form lacks the session's token: 403, audited, nothing done.
        let refused = w.audited("csrf.refused", "denied").await;
        b.client
            .goto(&forger.url("/"))
            .await
            .expect("the other origin");
        b.wait("body[data-page=error]").await;
        b.check("forged-same-site", Some(403)).await;
        assert!(
            b.text("[data-testid=error-detail]").await.contains("token"),
            "{}",
            b.text("main").await
        );
        assert_eq!(w.audited("csrf.refused", "denied").await, refused + 1);
        assert_eq!(task_status(&w, task).await, "open", "nothing claimed");
        // The board's own form, with the token, claims it.
        b.goto("/app/board").await;
        b.wait(&format!("#claim-{task}")).await;
        b.click_to(&format!("#claim-{task} button"), "[data-testid=flash]")
            .await;
        b.check("board-claimed", None).await;
        assert_eq!(task_status(&w, task).await, "claimed");
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_pathway_upload_shows_its_diagnostics_with_line_and_column() {
    if !browser_available() {
        return;
    }
    for backend in backends() {
        let w = Workstation::new(backend).await;
        let served = w.serve().await;
        let driver = Driver::start();
        let mut b =
            Browser::open(&driver, &served.url(""), &format!("upload-{}", w.backend())).await;
        b.sign_in("lead.informaticist", support::STAFF_PASSWORD)
            .await;
        b.wait("body[data-page=pathways]").await;
        b.check("pathways", None).await;
        b.click_to("a[href='/app/pathways/wound_care/1']", "#pathway-graph svg")
            .await;
        assert_eq!(
            b.find_all("#pathway-graph g[data-state]").await.len(),
            3,
            "every state drawn"
        );
        b.check("pathway-graph", None).await;

        // A transition to a state that does not exist, on line 17, uploaded as a file.
        b.goto("/app/pathways").await;
        b.wait("#upload-form").await;
        let broken = support::WOUND_CARE.replace("        to: nurse_call", "        to: nurse_cal");
        let dir = support::pathway_dir(&[("wound_care.yaml", &broken)]);
        let file = dir.path().join("wound_care.yaml");
        b.find("#u-file")
            .await
            .send_keys(&file.display().to_string())
            .await
            .expect("a file chosen");
        b.click_to("#u-submit", "body[data-page=validation]").await;
        b.check("validation", Some(422)).await;
        assert_eq!(
            b.find("[data-testid=validation-result]")
                .await
                .attr("data-ok")
                .await
                .expect("attribute")
                .as_deref(),
            Some("false")
        );
        let page: Vec<(String, String)> = b
            .attrs("tr[data-testid=diagnostic]", "data-line")
            .await
            .into_iter()
            .zip(b.attrs("tr[data-testid=diagnostic]", "data-col").await)
            .collect();
        assert!(page.iter().any(|(l, _)| l == "17"), "{page:?}");
        assert!(b.text("#diagnostics").await.contains("wound_care.yaml"));
        // The API locates the same problems at the same places.
        let (status, body) = w
            .call(
                Request::post("/pathways")
                    .header(header::AUTHORIZATION, "Bearer tok-lead.informaticist")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(json!({"source": broken}).to_string()))
                    .expect("request"),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let v: Value = serde_json::from_str(&body).expect("json");
        let api: Vec<(String, String)> = v["diagnostics"]
            .as_array()
            .expect("diagnostics")
            .iter()
            .map(|d| (d["line"].to_string(), d["col"].to_string()))
            .collect();
        assert_eq!(page, api);
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicator_line_lists_hold_exactly_what_the_figures_count() {
    if !browser_available() {
        return;
    }
    for backend in backends() {
        let w = Workstation::new(backend).await;
        // Weekly calls fallen due over the last weeks.
        for (i, days) in [20, 16, 12, 10, 9, 3].iter().enumerate() {
            w.enrolled(&format!("P-KPI-{i}"), "lead", *days).await;
        }
        let open: Vec<i64> = support::rows(
            &w.pool,
            "SELECT CAST(due_at AS TEXT), CAST(id AS TEXT) FROM tasks WHERE task_ref = 'weekly_call' AND status = 'open' ORDER BY due_at, id",
            2,
        )
        .await
        .iter()
        .map(|s| s.split('|').nth(1).expect("id").parse().expect("id"))
        .collect();
        assert!(open.len() >= 3, "{open:?}");
        let served = w.serve().await;
        let driver = Driver::start();
        let mut b = Browser::open(
            &driver,
            &served.url(""),
            &format!("indicators-{}", w.backend()),
        )
        .await;
        b.sign_in("lead.cm", support::STAFF_PASSWORD).await;
        // On the board: the call overdue longest done late, the one due last done before it
        // is due.
        let last = open[open.len() - 1];
        for (task, outcome) in [(open[0], "done"), (last, "unwell")] {
            b.goto("/app/board").await;
            b.wait(&format!("#outcome-{task}")).await;
            b.find(&format!("#outcome-{task}"))
                .await
                .select_by_value(outcome)
                .await
                .expect("an outcome");
            b.click_to(&format!("#complete-{task} button"), "[data-testid=flash]")
                .await;
            assert_eq!(task_status(&w, task).await, "done");
        }
        w.advance(60);
        let today = w
            .now()
            .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").expect("tz"))
            .date();
        let from = today.checked_sub(jiff::Span::new().days(30)).expect("date");
        let to = today.tomorrow().expect("date");
        let period = format!("from={from}&to={to}");
        let kpis = w.api("lead.cm", &format!("/kpis?{period}")).await;
        let mut counted = 0;
        for (i, name) in carepath_engine::store::indicators::LINE_LISTS
            .iter()
            .enumerate()
        {
            b.goto(&format!("/app/indicators?{period}")).await;
            b.wait("body[data-page=indicators]").await;
            if i == 0 {
                b.check("indicators", None).await;
            }
            b.click_to(
                &format!("tr[data-indicator={name}] a[data-testid=drill-down]"),
                "body[data-page=drill-down]",
            )
            .await;
            b.check(&format!("rows-{name}"), None).await;
            // The rows listed are the API's line list, row for row, and their sides are the
            // figure's.
            let list = w
                .api("lead.cm", &format!("/kpis/{name}/rows?{period}"))
                .await;
            let ids: Vec<String> = list["rows"]
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| r["id"].to_string().trim_matches('"').to_string())
                .collect();
            assert_eq!(
                b.attrs("tr[data-testid=drill-row]", "data-id").await,
                ids,
                "{name}"
            );
            let figure = &kpis["builtin"][name];
            for (side, testid) in [
                ("numerator", "drill-numerator"),
                ("denominator", "drill-denominator"),
            ] {
                // A whole count as it is, days to one decimal.
                let shown = figure[side].as_i64().map_or_else(
                    || format!("{:.1}", figure[side].as_f64().unwrap_or(0.0)),
                    |n| n.to_string(),
                );
                assert_eq!(
                    b.text(&format!("[data-testid={testid}]")).await,
                    shown,
                    "{name} {side}: {figure}"
                );
                assert_eq!(list[side], figure[side], "{name} {side}");
            }
            if figure["denominator"].as_i64() > Some(0) {
                counted += 1;
            }
        }
        assert!(
            counted >= 5,
            "the fixture counts something for most figures"
        );
        // One staff member's on-time rate lists the tasks assigned to them.
        b.goto(&format!("/app/indicators?{period}")).await;
        b.wait("body[data-page=indicators]").await;
        b.click_to(
            "a[data-testid=staff-drill-down][href*='staff=lead.cm']",
            "body[data-page=drill-down]",
        )
        .await;
        b.check("rows-lead.cm", None).await;
        let list = w
            .api(
                "lead.cm",
                &format!("/kpis/on_time_task_rate/rows?{period}&staff=lead.cm"),
            )
            .await;
        let ids: Vec<String> = list["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| r["id"].to_string())
            .collect();
        assert!(!ids.is_empty());
        assert_eq!(b.attrs("tr[data-testid=drill-row]", "data-id").await, ids);
        b.close().await;
    }
}

/// `carepath demo` serving on a port it chose; killed when dropped.
struct Demo {
    child: Child,
    url: String,
    db: String,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// The demo with `args` (its cohort and history).
    fn start(args: &[&str]) -> Demo {
        let dir = support::tempdir();
        let db = format!("sqlite:{}", dir.path().join("demo.db").display());
        let pathways = Path::new(env!("CARGO_MANIFEST_DIR")).join("pathways");
        let mut child = support::carepath()
            .arg("demo")
            .args(args)
            .args(["--db", &db])
            .arg("--pathways")
            .arg(&pathways)
            .args(["--addr", "127.0.0.1:0", "--mllp", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("cannot run carepath demo");
        let lines = lines_of(&mut child);
        let mut demo = Demo {
            child,
            url: String::new(),
            db,
            _dir: dir,
        };
        // "serving the admin API on http://127.0.0.1:41235 (…"
        demo.url = await_line(
            &lines,
            "carepath demo did not serve",
            Duration::from_secs(1800),
            |l| {
                l.strip_prefix("serving the admin API on ")
                    .and_then(|r| r.split_whitespace().next())
                    .map(str::to_string)
            },
        );
        demo
    }

    /// The first column of the first row `sql` reads from the demo's database.
    async fn first(&self, sql: &str) -> String {
        let pool = carepath_engine::store::Pool::connect(&self.db)
            .await
            .expect("the demo's database");
        let rows = pool.fetch(sql, vec![]).await.expect(sql);
        pool.close().await;
        rows.first().map(|r| r.text(0)).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        kill_group(&mut self.child);
    }
}

/// The demo as a clinic's case manager and the lead hospital's informaticist see it. With
/// `CAREPATH_DOC_SCREENSHOTS=1` it is the README's demo (300 patients, 120 days of history) and
/// its pages are the documentation's pictures (`docs/img/`; install a CJK font, such as
/// `fonts-noto-cjk`, first); otherwise a smaller history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_in_a_browser() {
    if !browser_available() {
        return;
    }
    let for_docs = std::env::var("CAREPATH_DOC_SCREENSHOTS").as_deref() == Ok("1");
    let demo = Demo::start(if for_docs {
        &[]
    } else {
        &["--patients", "80", "--history-days", "35"]
    });
    // The clinic's patient with an open alarm, else with the most readings.
    let patient = demo
        .first(
            "SELECT p.id FROM patients p JOIN enrolments e ON e.patient_id = p.id AND e.status = 'active' \
             LEFT JOIN observations o ON o.patient_id = p.id \
             WHERE p.institution_id = 'clinic_a' \
             GROUP BY p.id \
             ORDER BY (SELECT COUNT(*) FROM alarm_episodes a WHERE a.patient_id = p.id AND a.closed_at IS NULL) DESC, \
                      COUNT(o.id) DESC, p.id",
        )
        .await;
    assert!(!patient.is_empty(), "the clinic has patients");
    let driver = Driver::start();
    let mut b = Browser::open(&driver, &demo.url, "demo").await;
    if for_docs {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&docs).expect("cannot create docs/img");
        b.docs = Some(docs);
    }
    b.sign_in("clinic_a.case_manager", "carepath-demo").await;
    b.wait("body[data-page=board]").await;
    b.check("board", None).await;
    b.goto(&format!("/app/patients/{patient}")).await;
    b.wait("body[data-page=patient] tr[data-testid=enrolment]")
        .await;
    // From the enrolments down: their states, open alarms and the charts of readings.
    b.client
        .execute(
            "document.querySelector('[aria-labelledby=enrol-title]').scrollIntoView();",
            vec![],
        )
        .await
        .expect("scrolled");
    b.check("patient", None).await;
    b.goto("/app/referrals").await;
    b.wait("body[data-page=referrals]").await;
    b.check("referrals", None).await;
    b.goto("/app/indicators").await;
    b.wait("body[data-page=indicators] tr[data-testid=indicator-row]")
        .await;
    b.check("indicators", None).await;
    b.click_to(
        "tr[data-indicator=follow_up_rate] a[data-testid=drill-down]",
        "body[data-page=drill-down]",
    )
    .await;
    b.check("indicator-rows", None).await;
    // The same pages in Chinese.
    b.goto("/app/board").await;
    b.wait("body[data-page=board]").await;
    b.click_to("#lang-switch", "html[lang=zh-CN] body[data-page=board]")
        .await;
    b.check("board-zh", None).await;
    b.goto(&format!("/app/patients/{patient}")).await;
    b.wait("html[lang=zh-CN] body[data-page=patient]").await;
    b.check("patient-zh", None).await;
    b.click_to("#lang-switch", "html[lang=en] body[data-page=patient]")
        .await;
    b.sign_in("lead.informaticist", "carepath-demo").await;
    b.wait("body[data-page=pathways] tr[data-testid=pathway-row]")
        .await;
    b.check("pathways", None).await;
    b.click_to("tr[data-pathway=heart_failure] a", "#pathway-graph svg")
        .await;
    b.check("pathway-graph", None).await;
    b.close().await;
}
