//! The admin API: task queues, KPIs, pathways, patients and enrolments, scale pushes and their
//! answers, observations, referrals.
//!
//! Handlers extract, authorise, call the engine's store, and map the result; no business rules
//! live here. Every route is in `ROUTES`, which both builds the router's permission checks and the
//! OpenAPI document, so the two cannot drift. Every read or write of patient data is audited in the
//! store, in the same transaction as a write and before a read is returned.

mod auth;
mod error;
mod openapi;
mod serve;
mod strict_json;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use carepath_engine::scales::Scales;
use carepath_engine::store::indicators;
use carepath_engine::store::queries::{self, QueueFilter, TaskAction};
use carepath_engine::store::{self, NewPatient, Pool};
use carepath_engine::{Programs, observations::Reading, scheduler};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use auth::Auth;
pub use auth::{Module, ROLE_MODULES, allowed};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use serve::{MAX_HEADER_BYTES, MAX_HEADERS, serve};

/// The clock the API reads: injected, so tests and the simulator control time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// Latency histogram buckets in milliseconds: ≤1, ≤5, ≤10, ≤50, ≤100, ≤500, >500.
    pub latency: [AtomicU64; 7],
    pub latency_sum_us: AtomicU64,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub programs: Arc<RwLock<Programs>>,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// The writer of read audits, shared by every request.
    pub audit: queries::AuditAppender,
    /// The scale definitions answers are scored against.
    pub scales: &'static Scales,
    /// How uploaded pathways are compiled: off the async workers, a few at a time, time-limited,
    /// their fragments read only from inside one folder.
    pub uploads: Uploads,
    /// The signed audit checkpoints `GET /audit/verify` checks the record against (none: the
    /// chain alone is checked).
    pub audit_checkpoints: Option<Arc<std::path::PathBuf>>,
    /// Proxies whose `X-Forwarded-For` is believed (see [`Remote`]).
    pub trusted_proxies: Arc<Vec<IpAddr>>,
}

/// The limits of compiling uploaded pathways.
#[derive(Clone)]
pub struct Uploads {
    /// The folder fragments are included from, and the only one; relative to the working folder.
    pub root: std::path::PathBuf,
    /// How long one compilation may run before it is stopped and answered with 422.
    pub limit: Duration,
    /// One permit per compilation that may run at once; when none is free the upload answers 503.
    pub slots: Arc<tokio::sync::Semaphore>,
}

impl Default for Uploads {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Uploads {
            root: "pathways".into(),
            limit: Duration::from_secs(5),
            slots: Arc::new(tokio::sync::Semaphore::new(cores.clamp(1, 4))),
        }
    }
}

impl AppState {
    /// The state of a running API; starts the audit writer, so call it inside a Tokio runtime.
    pub fn new(pool: Pool, programs: Programs) -> AppState {
        AppState {
            audit: queries::AuditAppender::start(pool.clone()),
            pool,
            programs: Arc::new(RwLock::new(programs)),
            clock: Arc::new(Timestamp::now),
            metrics: Arc::default(),
            scales: Scales::builtin(),
            uploads: Uploads::default(),
            audit_checkpoints: None,
            trusted_proxies: Arc::default(),
        }
    }

    /// Verifies the audit record against the checkpoints in `path` too.
    pub fn with_audit_checkpoints(mut self, path: std::path::PathBuf) -> AppState {
        self.audit_checkpoints = Some(Arc::new(path));
        self
    }

    /// Believes `X-Forwarded-For` from these peers (reverse proxies in front of the API).
    pub fn with_trusted_proxies(mut self, proxies: Vec<IpAddr>) -> AppState {
        self.trusted_proxies = Arc::new(proxies);
        self
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn programs(&self) -> Programs {
        self.programs.read().map(|p| p.clone()).unwrap_or_default()
    }
}

pub const MAX_BODY: usize = 1024 * 1024;
pub const MAX_PAGE: i64 = 200;

/// Builds the router. Tests call it with `oneshot`; `carepath serve` binds it to a port.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .route("/pathways", get(list_pathways).post(publish_pathway))
        .route("/pathways/{id}/{version}/graph", get(pathway_graph))
        .route("/patients", post(create_patient))
        .route("/patients/{id}", get(get_patient))
        .route("/enrolments", post(enrol))
        .route("/enrolments/{id}/timeline", get(timeline))
        .route("/enrolments/{id}/events", post(post_event))
        .route("/enrolments/{id}/withdraw", post(withdraw))
        .route("/enrolments/{id}/scale-pushes", get(scale_pushes))
        .route("/scale-pushes/{id}/answers", post(answer_scale_push))
        .route("/observations", post(post_observations))
        .route("/queues/tasks", get(task_queue))
        .route("/tasks/{id}/{action}", post(task_action))
        .route("/referrals", get(list_referrals))
        .route("/referrals/{id}/{decision}", post(decide_referral))
        .route("/kpis", get(kpis))
        .route("/audit/verify", get(verify_audit))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn(
            strict_json::reject_duplicate_keys,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::audit_outcomes,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            count(metrics.clone(), req, next)
        }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(15),
        ))
        // Outermost, so the answers of the layers above (a body over the limit, a timeout) are
        // problem+json too.
        .layer(axum::middleware::from_fn(serve::header_limits))
        .layer(axum::middleware::from_fn(as_problem))
        .with_state(state)
}

/// Renders every error answer as problem+json, including the framework's own rejections (a path
/// segment that is not a number, an optional JSON body that does not parse, a body over the limit,
/// a request that timed out, a method the route does not have), which otherwise answer in plain
/// text or with no body at all.
async fn as_problem(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let text = match axum::body::to_bytes(res.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let detail = if status.is_server_error() || text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is larger than 1 MiB".to_string()
    } else {
        text
    };
    error::problem(
        status,
        status.canonical_reason().unwrap_or("Error"),
        &detail,
    )
}

async fn count(
    metrics: Arc<Metrics>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let us = started.elapsed().as_micros() as u64;
    metrics.requests.fetch_add(1, Ordering::Relaxed);
    metrics.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    let bucket = [1_000, 5_000, 10_000, 50_000, 100_000, 500_000]
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(6);
    metrics.latency[bucket].fetch_add(1, Ordering::Relaxed);
    if res.status().is_client_error() {
        metrics.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if res.status().is_server_error() {
        metrics.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    res
}

/// Where a request came from, as the audit records it: the socket peer's address, unless the peer
/// is a trusted proxy, in which case the rightmost `X-Forwarded-For` entry that is not itself a
/// trusted proxy (entries further left are whatever the client claimed, and are ignored). Without a
/// socket address (a router driven in-process, as tests do) it is `unknown`.
pub struct Remote(pub String);

impl FromRequestParts<AppState> for Remote {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(Remote(client_address(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}

/// See [`Remote`].
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpAddr]) -> String {
    let Some(peer) = peer else {
        return "unknown".into();
    };
    let peer = peer.to_canonical();
    if !trusted.contains(&peer) {
        return peer.to_string();
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    for entry in forwarded.iter().rev() {
        let ip = entry
            .parse::<IpAddr>()
            .ok()
            .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()));
        match ip {
            Some(ip) if trusted.contains(&ip.to_canonical()) => continue,
            Some(ip) => return ip.to_canonical().to_string(),
            // Not an address: the proxy did not write it; record it, marked and cut short.
            None => return format!("unparsed:{}", entry.chars().take(48).collect::<String>()),
        }
    }
    peer.to_string()
}

async fn ready(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    s.pool
        .fetch("SELECT 1", vec![])
        .await
        .map_err(|e| ApiError::Unavailable(format!("database: {e}")))?;
    Ok(Json(
        json!({"status": "ready", "backend": s.pool.backend()}),
    ))
}

async fn metrics_text(State(s): State<AppState>) -> Result<Response, ApiError> {
    let now = s.now().as_second();
    let due = s
        .pool
        .fetch("SELECT COUNT(*), MIN(next_wake_at) FROM enrolments WHERE status = 'active' AND next_wake_at IS NOT NULL AND next_wake_at <= $1", vec![store::Arg::I(now)])
        .await?;
    let (backlog, oldest) = due
        .first()
        .map(|r| (r.i64(0), r.opt_i64(1)))
        .unwrap_or((0, None));
    let outbox = s
        .pool
        .fetch(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1",
            vec![store::Arg::I(now)],
        )
        .await?;
    let outbox = outbox.first().map(|r| r.i64(0)).unwrap_or(0);
    let m = &s.metrics;
    let mut out = String::new();
    out.push_str("# TYPE carepath_http_requests_total counter\n");
    out.push_str(&format!(
        "carepath_http_requests_total {}\n",
        m.requests.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "carepath_http_client_errors_total {}\n",
        m.client_errors.load(Ordering::Relaxed)
    ));
    out.push_str(&format!(
        "carepath_http_server_errors_total {}\n",
        m.server_errors.load(Ordering::Relaxed)
    ));
    out.push_str("# TYPE carepath_http_request_duration_seconds histogram\n");
    let mut cumulative = 0;
    for (i, le) in ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "+Inf"]
        .iter()
        .enumerate()
    {
        cumulative += m.latency[i].load(Ordering::Relaxed);
        out.push_str(&format!(
            "carepath_http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}\n"
        ));
    }
    out.push_str(&format!(
        "carepath_http_request_duration_seconds_sum {}\n",
        m.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6
    ));
    out.push_str(&format!(
        "carepath_http_request_duration_seconds_count {cumulative}\n"
    ));
    out.push_str(&format!("carepath_scheduler_due_backlog {backlog}\n"));
    out.push_str(&format!(
        "carepath_scheduler_lag_seconds {}\n",
        oldest.map(|o| now - o).unwrap_or(0)
    ));
    out.push_str(&format!("carepath_outbox_backlog {outbox}\n"));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn list_pathways(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Catalog, "pathway.list", &remote).await?;
    let programs = s.programs();
    let mut list: Vec<Value> = programs
        .by_key
        .values()
        .map(|p| {
            let pw = &p.pathway;
            json!({"id": pw.id, "version": pw.version, "title": pw.title, "owner_role": pw.owner_role,
                   "entry_points": pw.entry_points.iter().map(|e| &e.id).collect::<Vec<_>>(), "states": pw.states.len()})
        })
        .collect();
    list.sort_by(|a, b| {
        (a["id"].as_str(), a["version"].as_u64()).cmp(&(b["id"].as_str(), b["version"].as_u64()))
    });
    Ok(Json(json!({"pathways": list})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    #[serde(default = "yaml")]
    format: String,
    source: String,
}

fn yaml() -> String {
    "yaml".into()
}

async fn publish_pathway(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    auth::require(&s, &c, Module::Pathways, "pathway.publish", &remote).await?;
    let Json(body) = body?;
    let file = match body.format.as_str() {
        "yaml" => "upload.yaml",
        "rhai" => "upload.rhai",
        other => {
            return Err(ApiError::BadRequest(format!(
                "format must be `yaml` or `rhai`, not `{other}`"
            )));
        }
    };
    let Ok(permit) = s.uploads.slots.clone().try_acquire_owned() else {
        let mut res = ApiError::Unavailable(
            "too many pathway uploads are being compiled right now; try again in a few seconds"
                .into(),
        )
        .into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return Ok(res);
    };
    let limit = s.uploads.limit;
    let root = s.uploads.root.clone();
    // Compiling runs user-supplied scripts and reads fragment files: off the async workers, under
    // a deadline the script itself checks, holding its permit until it has really finished.
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        compile_upload(file, body.source, &root, limit)
    });
    let outcome = match tokio::time::timeout(limit + Duration::from_secs(1), task).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => return Err(ApiError::Internal(format!("pathway compilation: {e}"))),
        Err(_) => Err(Refused::Diagnostics(vec![carepath_dsl::too_long(
            file,
            carepath_dsl::Pos::START,
            limit,
        )])),
    };
    let (one, id, version, diagnostics) = match outcome {
        Ok(done) => done,
        Err(Refused::Diagnostics(diagnostics)) => return Ok(unprocessable(&diagnostics)),
        Err(Refused::Invalid(e)) => return Err(ApiError::BadRequest(e)),
    };
    store::publish(&s.pool, &one, s.now()).await?;
    let fresh = store::load_programs(&s.pool).await?;
    if let Ok(mut p) = s.programs.write() {
        *p = fresh;
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "version": version, "warnings": diagnostics})),
    )
        .into_response())
}

/// A compiled upload: the one program, its id and version, and its warnings.
type Upload = (Programs, String, u32, Vec<carepath_dsl::Diagnostic>);

/// Compiles an uploaded pathway into a program of its own, or returns its diagnostics. Blocking:
/// call it off the async workers. Fragments are read only from inside `root`.
fn compile_upload(
    file: &str,
    source: String,
    root: &std::path::Path,
    limit: Duration,
) -> Result<Upload, Refused> {
    let deadline = std::time::Instant::now() + limit;
    let loader = carepath_dsl::RootedLoader::new(root);
    let compiled = if file.ends_with(".rhai") {
        carepath_dsl::compile_rhai_until(file, source.as_bytes(), root, &loader, deadline)
    } else {
        carepath_dsl::compile_yaml(file, source.as_bytes(), root, &loader)
    };
    let diagnostics = compiled.diagnostics.clone();
    let pathway = carepath_engine::program::into_pathway(compiled)
        .map_err(|_| Refused::Diagnostics(diagnostics.clone()))?;
    let mut one = Programs::default();
    let src = carepath_engine::program::Source::new(file, source, &pathway);
    let (id, version) = (pathway.id.clone(), pathway.version);
    one.insert(pathway, src)
        .map_err(|e| Refused::Invalid(e.to_string()))?;
    Ok((one, id, version, diagnostics))
}

/// Why an upload is not published.
enum Refused {
    /// It has errors (or took too long): 422 with its diagnostics.
    Diagnostics(Vec<carepath_dsl::Diagnostic>),
    /// Its expressions do not compile for the engine: 400.
    Invalid(String),
}

/// The 422 answer of a pathway with errors: the first message as the detail, and every diagnostic
/// located in its file.
fn unprocessable(diagnostics: &[carepath_dsl::Diagnostic]) -> Response {
    let detail = diagnostics
        .iter()
        .find(|d| d.is_error())
        .map(|d| d.message.clone())
        .unwrap_or_else(|| "the pathway does not compile".into());
    let mut res = (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"type": "about:blank", "title": "The pathway has errors", "status": 422, "detail": detail, "diagnostics": diagnostics})),
    )
        .into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    res
}

#[derive(Deserialize)]
struct GraphQuery {
    format: Option<String>,
}

async fn pathway_graph(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path((id, version)): Path<(String, u32)>,
    Query(q): Query<GraphQuery>,
) -> Result<Response, ApiError> {
    auth::require(&s, &c, Module::Catalog, "pathway.graph", &remote).await?;
    let programs = s.programs();
    let prog = programs
        .get(&id, version)
        .ok_or_else(|| ApiError::NotFound(format!("pathway {id} v{version}")))?;
    let (text, ctype) = match q.format.as_deref().unwrap_or("dot") {
        "dot" => (
            carepath_dsl::graph::to_dot(&prog.pathway),
            "text/vnd.graphviz",
        ),
        "mermaid" => (carepath_dsl::graph::to_mermaid(&prog.pathway), "text/plain"),
        other => {
            return Err(ApiError::BadRequest(format!(
                "format must be `dot` or `mermaid`, not `{other}`"
            )));
        }
    };
    Ok(([(header::CONTENT_TYPE, ctype)], text).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientBody {
    id: String,
    birth_date: Option<String>,
    #[serde(default = "unknown")]
    sex: String,
    #[serde(default = "default_tz")]
    tz: String,
    preferred_channel: Option<String>,
}

fn unknown() -> String {
    "unknown".into()
}
fn default_tz() -> String {
    "Asia/Shanghai".into()
}

async fn create_patient(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    body: Result<Json<PatientBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    auth::require(&s, &c, Module::Patients, "patient.create", &remote).await?;
    let Json(b) = body?;
    if b.id.is_empty()
        || b.id.len() > 64
        || !b
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        return Err(ApiError::BadRequest("patient id must be 1–64 characters of letters, digits, - and _ (a pseudonymous id, never a name or ID number)".into()));
    }
    if !matches!(b.sex.as_str(), "female" | "male" | "unknown") {
        return Err(ApiError::BadRequest(
            "sex must be female, male or unknown".into(),
        ));
    }
    let now = s.now();
    if let Some(d) = &b.birth_date {
        let date = d.parse::<jiff::civil::Date>().map_err(|_| {
            ApiError::BadRequest(format!("birth_date `{d}` is not a date (YYYY-MM-DD)"))
        })?;
        let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
        if date < jiff::civil::date(1890, 1, 1) || date > today {
            return Err(ApiError::BadRequest(format!(
                "birth_date `{d}` must lie between 1890-01-01 and today"
            )));
        }
    }
    if let Some(ch) = &b.preferred_channel
        && !matches!(ch.as_str(), "wechat" | "sms" | "phone" | "email")
    {
        return Err(ApiError::BadRequest(format!(
            "preferred_channel `{ch}` must be wechat, sms, phone or email"
        )));
    }
    if jiff::tz::TimeZone::get(&b.tz).is_err() {
        return Err(ApiError::BadRequest(format!(
            "tz `{}` is not an IANA time zone such as Asia/Shanghai",
            b.tz
        )));
    }
    let mut tx = s.pool.begin().await?;
    if tx
        .fetch_one(
            "SELECT 1 FROM patients WHERE id = $1",
            vec![store::Arg::T(b.id.clone())],
        )
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(format!(
            "patient {} already exists",
            b.id
        )));
    }
    let p = NewPatient {
        id: b.id.clone(),
        institution_id: c.institution_id.clone(),
        birth_date: b.birth_date,
        sex: b.sex,
        tz: b.tz,
        contact_enc: None,
        preferred_channel: b.preferred_channel,
    };
    store::insert_patient(&mut tx, &p, now).await?;
    queries::audit(
        &mut tx,
        &c.staff_id,
        Some(&c.institution_id),
        "patient.create",
        &format!("patient/{}", b.id),
        std::slice::from_ref(&b.id),
        "ok",
        &remote,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({"id": b.id}))).into_response())
}

async fn get_patient(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Patients, "patient.read", &remote).await?;
    let sql = format!(
        "SELECT p.id, p.institution_id, p.birth_date, p.sex, p.tz FROM patients p WHERE p.id = $1 AND {}",
        queries::visible_patient(2)
    );
    let rows = s
        .pool
        .fetch(
            &sql,
            vec![
                store::Arg::T(id.clone()),
                store::Arg::T(c.institution_id.clone()),
            ],
        )
        .await?;
    let Some(p) = rows.first() else {
        queries::audit_alone(
            &s.audit,
            &c.staff_id,
            Some(&c.institution_id),
            "patient.read",
            &format!("patient/{id}"),
            &[],
            "not_found",
            &remote,
            s.now(),
        )
        .await?;
        return Err(ApiError::NotFound(format!("patient {id}")));
    };
    let enrolments = s
        .pool
        .fetch("SELECT id, pathway_id, version, state, status, institution_id FROM enrolments WHERE patient_id = $1 ORDER BY id", vec![store::Arg::T(id.clone())])
        .await?;
    let list: Vec<Value> = enrolments
        .iter()
        .map(|e| json!({"id": e.i64(0), "pathway": e.text(1), "version": e.i64(2), "state": e.text(3), "status": e.text(4), "institution_id": e.text(5)}))
        .collect();
    queries::audit_alone(
        &s.audit,
        &c.staff_id,
        Some(&c.institution_id),
        "patient.read",
        &format!("patient/{id}"),
        std::slice::from_ref(&id),
        "ok",
        &remote,
        s.now(),
    )
    .await?;
    Ok(Json(
        json!({"id": p.text(0), "institution_id": p.text(1), "birth_date": p.opt_text(2), "sex": p.text(3), "tz": p.text(4), "enrolments": list}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrolBody {
    patient_id: String,
    pathway: String,
    version: Option<u32>,
    entry: String,
}

async fn enrol(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    body: Result<Json<EnrolBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    auth::require(&s, &c, Module::Patients, "enrolment.create", &remote).await?;
    let Json(b) = body?;
    if !queries::patient_visible(&s.pool, &c, &b.patient_id).await? {
        return Err(ApiError::NotFound(format!("patient {}", b.patient_id)));
    }
    let now = s.now();
    let programs = s.programs();
    let (id, written) = store::enrol(
        &s.pool,
        &programs,
        &b.patient_id,
        &b.pathway,
        b.version,
        &b.entry,
        now,
    )
    .await?;
    queries::audit_alone(
        &s.audit,
        &c.staff_id,
        Some(&c.institution_id),
        "enrolment.create",
        &format!("enrolment/{id}"),
        std::slice::from_ref(&b.patient_id),
        "ok",
        &remote,
        now,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "actions": written.by_kind})),
    )
        .into_response())
}

async fn timeline(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Patients, "enrolment.timeline", &remote).await?;
    Ok(Json(
        queries::timeline(&s.pool, &c, id, &remote, s.now()).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventBody {
    name: String,
    at: Option<String>,
}

async fn post_event(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path(id): Path<i64>,
    body: Result<Json<EventBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Patients, "enrolment.event", &remote).await?;
    let Json(b) = body?;
    if b.name.is_empty()
        || b.name.len() > 96
        || !b.name.chars().all(|ch| {
            ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '_' | ':' | '.' | '-')
        })
    {
        return Err(ApiError::BadRequest(
            "event names are lower case, e.g. `discharged`".into(),
        ));
    }
    let now = s.now();
    let at = match &b.at {
        Some(t) => t.parse::<Timestamp>().map_err(|_| {
            ApiError::BadRequest(format!(
                "`at` {t} is not an instant such as 2026-11-23T08:00:00+08:00"
            ))
        })?,
        None => now,
    };
    if at > now {
        return Err(ApiError::BadRequest(
            "an event cannot happen in the future".into(),
        ));
    }
    queries::event_scoped(&s.pool, &c, id, &b.name, at, &remote, now).await?;
    let programs = s.programs();
    let w = scheduler::advance(&s.pool, &programs, id, now).await?;
    Ok(Json(
        json!({"enrolment_id": id, "transitions": w.transitions, "actions": w.by_kind}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: String,
}

async fn withdraw(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path(id): Path<i64>,
    body: Result<Json<ReasonBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Patients, "enrolment.withdraw", &remote).await?;
    let Json(b) = body?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("a withdrawal needs a reason".into()));
    }
    queries::withdraw_scoped(&s.pool, &c, id, &b.reason, &remote, s.now()).await?;
    Ok(Json(json!({"enrolment_id": id, "status": "withdrawn"})))
}

async fn scale_pushes(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Patients, "scale_push.list", &remote).await?;
    let pushes = store::scales::enrolment_pushes(&s.pool, &c, id, &remote, s.now()).await?;
    Ok(Json(json!({"enrolment_id": id, "scale_pushes": pushes})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerBody {
    answers: BTreeMap<String, i64>,
    answered_at: Option<String>,
}

/// More answers than any scale has items is refused before scoring.
const MAX_ANSWERS: usize = 200;

async fn answer_scale_push(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path(id): Path<i64>,
    body: Result<Json<AnswerBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    auth::require(&s, &c, Module::Patients, "scale_push.answer", &remote).await?;
    let Json(b) = body?;
    if b.answers.len() > MAX_ANSWERS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_ANSWERS} answers per scale"
        )));
    }
    let answered_at = b
        .answered_at
        .as_deref()
        .map(|t| {
            t.parse::<Timestamp>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "`answered_at` {t} is not an instant such as 2026-11-23T08:00:00+08:00"
                ))
            })
        })
        .transpose()?;
    let now = s.now();
    let answered = store::scales::answer_push(
        &s.pool,
        s.scales,
        &c,
        id,
        &b.answers,
        answered_at,
        &remote,
        now,
    )
    .await?;
    // The answer is committed; the enrolment steps now so a guard on the new score acts at once.
    let programs = s.programs();
    let w = scheduler::advance(&s.pool, &programs, answered.enrolment_id, now).await?;
    let mut out = serde_json::to_value(&answered).unwrap_or_else(|_| json!({}));
    out["transitions"] = json!(w.transitions);
    out["actions"] = json!(w.by_kind);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn post_observations(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    body: Result<Json<Vec<Reading>>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Observations, "observations.post", &remote).await?;
    let Json(readings) = body?;
    if readings.len() > 1_000 {
        return Err(ApiError::BadRequest(
            "at most 1,000 readings per request".into(),
        ));
    }
    let now = s.now();
    let mut visible = std::collections::HashSet::new();
    for r in &readings {
        if !visible.contains(&r.patient_id)
            && queries::patient_visible(&s.pool, &c, &r.patient_id).await?
        {
            visible.insert(r.patient_id.clone());
        }
    }
    let summary = store::ingest_readings(&s.pool, &readings, &visible, now).await?;
    let patients: Vec<String> = visible.into_iter().collect();
    queries::audit_alone(
        &s.audit,
        &c.staff_id,
        Some(&c.institution_id),
        "observations.post",
        "observations",
        &patients,
        "ok",
        &remote,
        now,
    )
    .await?;
    let programs = s.programs();
    for e in &summary.enrolments_to_advance {
        scheduler::advance(&s.pool, &programs, *e, now).await?;
    }
    Ok(Json(json!({
        "accepted": summary.accepted, "duplicates": summary.duplicates,
        "refused": summary.refused.iter().map(|(i, why)| json!({"index": i, "reason": why})).collect::<Vec<_>>(),
        "alarm_tasks": summary.alarm_tasks, "alarms_resolved": summary.alarms_resolved,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueQuery {
    role: Option<String>,
    status: Option<String>,
    assignee: Option<String>,
    due_before: Option<String>,
    due_after: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

fn instant(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_ref()
        .map(|t| {
            t.parse::<Timestamp>().map(|t| t.as_second()).map_err(|_| {
                ApiError::BadRequest(format!(
                    "`{name}` must be an instant such as 2026-11-23T08:00:00Z"
                ))
            })
        })
        .transpose()
}

async fn task_queue(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    q: Result<Query<QueueQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<QueuePage>, ApiError> {
    auth::require(&s, &c, Module::Queue, "queue.read", &remote).await?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if let Some(st) = &q.status
        && !matches!(
            st.as_str(),
            "open" | "claimed" | "done" | "cancelled" | "active"
        )
    {
        return Err(ApiError::BadRequest(
            "status must be open, claimed, active, done or cancelled".into(),
        ));
    }
    let after = match &q.cursor {
        Some(cur) => {
            let parts: Vec<i64> = cur.split('.').filter_map(|p| p.parse().ok()).collect();
            if parts.len() != 3 {
                return Err(ApiError::BadRequest(
                    "cursor is not one this API returned".into(),
                ));
            }
            Some((parts[0], parts[1], parts[2]))
        }
        None => None,
    };
    let filter = QueueFilter {
        role: q.role,
        status: q.status,
        assignee: q.assignee,
        due_before: instant("due_before", &q.due_before)?,
        due_after: instant("due_after", &q.due_after)?,
        after,
        limit,
    };
    let tasks = queries::queue(&s.pool, &s.programs(), &c, &filter).await?;
    let next_cursor = if tasks.len() as i64 == limit {
        tasks.last().map(queries::QueueTask::cursor)
    } else {
        None
    };
    let patients: Vec<String> = tasks
        .iter()
        .map(|t| &t.patient_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    queries::audit_alone(
        &s.audit,
        &c.staff_id,
        Some(&c.institution_id),
        "queue.read",
        "queues/tasks",
        &patients,
        "ok",
        &remote,
        s.now(),
    )
    .await?;
    Ok(Json(QueuePage { tasks, next_cursor }))
}

#[derive(serde::Serialize)]
struct QueuePage {
    tasks: Vec<queries::QueueTask>,
    next_cursor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TaskBody {
    outcome: Option<String>,
    assignee: Option<String>,
    until: Option<String>,
    reason: Option<String>,
    lease_minutes: Option<i64>,
}

async fn task_action(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path((id, action)): Path<(i64, String)>,
    body: Option<Json<TaskBody>>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Queue, "task.act", &remote).await?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let now = s.now();
    let act = match action.as_str() {
        "claim" => {
            let minutes = b.lease_minutes.unwrap_or(30);
            if !(1..=480).contains(&minutes) {
                return Err(ApiError::BadRequest(
                    "lease_minutes must be between 1 and 480".into(),
                ));
            }
            TaskAction::Claim {
                lease_seconds: minutes * 60,
            }
        }
        "complete" => TaskAction::Complete {
            outcome: b.outcome.as_deref().ok_or_else(|| {
                ApiError::BadRequest(
                    "`outcome` is required: one of the outcomes the pathway declares for the task"
                        .into(),
                )
            })?,
        },
        "reassign" => TaskAction::Reassign {
            assignee: b
                .assignee
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest("`assignee` is required".into()))?,
        },
        "snooze" => {
            let until = b
                .until
                .as_deref()
                .ok_or_else(|| ApiError::BadRequest("`until` is required".into()))?;
            let until = until
                .parse::<Timestamp>()
                .map_err(|_| ApiError::BadRequest(format!("`until` {until} is not an instant")))?;
            let reason = b
                .reason
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| ApiError::BadRequest("snoozing needs a `reason`".into()))?;
            TaskAction::Snooze { until, reason }
        }
        other => {
            return Err(ApiError::NotFound(format!(
                "no task action `{other}`; use claim, complete, reassign or snooze"
            )));
        }
    };
    let completing = matches!(act, TaskAction::Complete { .. });
    let programs = s.programs();
    let out = queries::act_on_task(&s.pool, &programs, &c, id, act, &remote, now)
        .await
        .map_err(ApiError::refused_by_store)?;
    if completing && let Some(e) = out["enrolment_id"].as_i64() {
        scheduler::advance(&s.pool, &programs, e, now).await?;
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferralQuery {
    status: Option<String>,
}

async fn list_referrals(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    q: Result<Query<ReferralQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Referrals, "referral.list", &remote).await?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let rows = queries::referrals(&s.pool, &c, q.status.as_deref()).await?;
    let patients: Vec<String> = rows
        .iter()
        .filter_map(|r| r["patient_id"].as_str().map(str::to_string))
        .collect();
    queries::audit_alone(
        &s.audit,
        &c.staff_id,
        Some(&c.institution_id),
        "referral.list",
        "referrals",
        &patients,
        "ok",
        &remote,
        s.now(),
    )
    .await?;
    Ok(Json(json!({"referrals": rows})))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
}

async fn decide_referral(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    Path((id, decision)): Path<(i64, String)>,
    body: Option<Json<DecisionBody>>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Referrals, "referral.decide", &remote).await?;
    if !matches!(decision.as_str(), "accept" | "reject" | "arrive") {
        return Err(ApiError::NotFound(format!(
            "no referral action `{decision}`; use accept, reject or arrive"
        )));
    }
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let now = s.now();
    let out = queries::decide_referral(
        &s.pool,
        &c,
        id,
        &decision,
        b.reason.as_deref(),
        &remote,
        now,
    )
    .await
    .map_err(ApiError::refused_by_store)?;
    if let Some(e) = out["enrolment_id"].as_i64() {
        let programs = s.programs();
        scheduler::advance(&s.pool, &programs, e, now).await?;
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KpiQuery {
    from: Option<String>,
    to: Option<String>,
    /// Break the totals down by `pathway`, `role` or `staff`.
    by: Option<String>,
    /// Count one pathway only.
    pathway: Option<String>,
}

fn date_start(name: &str, d: &str) -> Result<i64, ApiError> {
    let date: jiff::civil::Date = d
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be a date such as 2026-11-01")))?;
    Ok(date
        .to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap_or(jiff::tz::TimeZone::UTC))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .timestamp()
        .as_second())
}

async fn kpis(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
    q: Result<Query<KpiQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Kpis, "kpi.read", &remote).await?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let now = s.now().as_second();
    let to =
        q.to.as_deref()
            .map(|d| date_start("to", d))
            .transpose()?
            .unwrap_or(now + 1);
    let from = q
        .from
        .as_deref()
        .map(|d| date_start("from", d))
        .transpose()?
        .unwrap_or(to - 30 * 86_400);
    if from >= to {
        return Err(ApiError::BadRequest("`from` must be before `to`".into()));
    }
    let by =
        q.by.as_deref()
            .map(|b| {
                indicators::By::parse(b).ok_or_else(|| {
                    ApiError::BadRequest(format!("`by` must be pathway, role or staff, not `{b}`"))
                })
            })
            .transpose()?;
    let programs = s.programs();
    let latest = programs.latest();
    if let Some(p) = &q.pathway
        && !latest.iter().any(|prog| &prog.pathway.id == p)
    {
        return Err(ApiError::BadRequest(format!("no published pathway `{p}`")));
    }
    let pathways: Vec<&carepath_dsl::Pathway> = latest.iter().map(|p| &p.pathway).collect();
    let req = indicators::KpiRequest {
        scope: indicators::Scope {
            institution: &c.institution_id,
            pathway: q.pathway.as_deref(),
        },
        period: indicators::Period {
            from,
            to,
            as_of: now,
        },
        by,
    };
    Ok(Json(indicators::kpis(&s.pool, &pathways, &req).await?))
}

async fn verify_audit(
    State(s): State<AppState>,
    Auth(c): Auth,
    Remote(remote): Remote,
) -> Result<Json<Value>, ApiError> {
    auth::require(&s, &c, Module::Audit, "audit.verify", &remote).await?;
    let checkpoints = match s.audit_checkpoints.as_deref() {
        Some(path) => match carepath_engine::audit::read_checkpoints(path) {
            Ok(c) => c,
            Err(why) => {
                return Ok(Json(
                    json!({"valid": false, "entries": 0, "checkpoints": 0, "problem": why, "broken_id": null}),
                ));
            }
        },
        None => Vec::new(),
    };
    let v = queries::verify_audit(&s.pool, &checkpoints).await?;
    Ok(Json(json!({
        "valid": v.intact(),
        "entries": v.rows,
        "legacy_entries": v.legacy_rows,
        "checkpoints": v.checkpoints,
        "problem": v.broken.as_ref().map(|b| b.to_string()),
        "broken_id": v.broken.as_ref().and_then(|b| b.id),
    })))
}

/// The permission table, for documentation and tests: role → modules.
pub fn permission_table() -> BTreeMap<&'static str, Vec<&'static str>> {
    ROLE_MODULES
        .iter()
        .map(|(r, ms)| (*r, ms.iter().map(|m| m.as_str()).collect()))
        .collect()
}

#[cfg(test)]
mod remote_tests {
    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().expect("header"));
        h
    }

    #[test]
    fn the_peer_is_recorded_unless_it_is_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.2".parse().expect("ip");
        let client: IpAddr = "203.0.113.7".parse().expect("ip");
        // No socket address (in-process): unknown, whatever the header says.
        assert_eq!(client_address(None, &xff("1.2.3.4"), &[proxy]), "unknown");
        // An untrusted peer: its own address; the header is ignored.
        assert_eq!(
            client_address(Some(client), &xff("1.2.3.4"), &[proxy]),
            "203.0.113.7"
        );
        // A trusted proxy: the rightmost entry that is not a trusted proxy; the client's own
        // claims further left are ignored.
        assert_eq!(
            client_address(Some(proxy), &xff("6.6.6.6, 198.51.100.9"), &[proxy]),
            "198.51.100.9"
        );
        assert_eq!(
            client_address(
                Some(proxy),
                &xff("6.6.6.6, 198.51.100.9, 10.0.0.2"),
                &[proxy]
            ),
            "198.51.100.9"
        );
        // A trusted proxy that forwarded nothing: the proxy itself.
        assert_eq!(
            client_address(Some(proxy), &HeaderMap::new(), &[proxy]),
            "10.0.0.2"
        );
        // IPv4 peers seen through an IPv6 socket are written as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.2".parse().expect("ip");
        assert_eq!(
            client_address(Some(mapped), &xff("198.51.100.9"), &[proxy]),
            "198.51.100.9"
        );
        // Garbage from a trusted proxy is marked and cut short.
        assert!(
            client_address(Some(proxy), &xff(&"x".repeat(200)), &[proxy]).starts_with("unparsed:")
        );
    }
}
