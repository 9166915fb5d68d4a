//! The admin API: task queues, KPIs, pathways, patients and enrolments, scale pushes and their
//! answers, observations, referrals.
//!
//! Handlers (`handlers/`, one file per module) extract, call the engine's store, and map the
//! result; no business rules, no SQL and no audit calls live in them. Every route is in
//! [`ROUTES`], which builds the router, the permission check of the [`Call`] extractor and the
//! OpenAPI document, so none of them can drift. Every read or write of patient data is audited in
//! the store, in the same transaction as a write and before a read is returned.

#![forbid(unsafe_code)]

mod auth;
mod error;
pub mod fhir;
mod handlers;
mod openapi;
mod routes;
mod serve;
mod strict_json;
pub mod web;

use carepath_engine::intake::IntakeRules;
use carepath_engine::store::crypto::ContactKey;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::{Extension, Router};
use carepath_engine::Programs;
use carepath_engine::scales::Scales;
use carepath_engine::store::Pool;
use carepath_engine::store::queries;
use jiff::Timestamp;

pub use auth::{Call, Module, ROLE_MODULES, allowed};
pub use error::ApiError;
pub use openapi::document as openapi_document;
pub use routes::{Doc, Method, ROUTES, Record, Route};
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
    /// The key patients' contact details are encrypted with (none: contact details are refused).
    pub contact_key: Option<Arc<ContactKey>>,
    /// The case-intake rules applied to what hospital systems send.
    pub intake: Arc<IntakeRules>,
    /// How the workstation's sessions behave (cookies, time-outs, lock-out).
    pub web: web::WebConfig,
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
            contact_key: None,
            intake: Arc::default(),
            web: web::WebConfig::default(),
        }
    }

    /// Runs the workstation's sessions with these settings.
    pub fn with_web(mut self, web: web::WebConfig) -> AppState {
        self.web = web;
        self
    }

    /// Encrypts and reads patients' contact details with `key`.
    pub fn with_contact_key(mut self, key: ContactKey) -> AppState {
        self.contact_key = Some(Arc::new(key));
        self
    }

    /// Applies these case-intake rules to encounters hospital systems send.
    pub fn with_intake(mut self, rules: IntakeRules) -> AppState {
        self.intake = Arc::new(rules);
        self
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

    pub(crate) fn programs(&self) -> Programs {
        self.programs.read().map(|p| p.clone()).unwrap_or_default()
    }
}

pub const MAX_BODY: usize = 1024 * 1024;
pub const MAX_PAGE: i64 = 200;

/// Builds the router. Tests call it with `oneshot`; `carepath serve` binds it to a port.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    // Routes of one path share a method router; each operation carries its table entry, which
    // the `Call` extractor reads.
    let mut by_path: BTreeMap<&str, MethodRouter<AppState>> = BTreeMap::new();
    for route in ROUTES.iter().chain(fhir::ROUTES) {
        let operation = route.method_router().layer(Extension(route));
        let merged = match by_path.remove(route.path) {
            Some(other) => other.merge(operation),
            None => operation,
        };
        by_path.insert(route.path, merged);
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .merge(web::routes())
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
        .layer(axum::middleware::from_fn(fhir::as_outcome))
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
    let is_fhir = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/fhir+json"));
    // The workstation's pages answer errors as pages.
    let is_page = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem || is_fhir || is_page {
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

/// [`client_address`] of a request, from its socket peer (when served on a socket) and headers.
pub(crate) fn request_remote(
    extensions: &Extensions,
    headers: &HeaderMap,
    trusted: &[IpAddr],
) -> String {
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    client_address(peer, headers, trusted)
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
