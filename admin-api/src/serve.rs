//! Serving the router over HTTP/1.1. hyper answers requests whose header fields it will not read
//! with a bare 431 (no body); so the connection reads generously (up to [`HYPER_MAX_HEADERS`]
//! fields and [`HYPER_MAX_BUF`] bytes) and the router's [`header_limits`] layer answers 431 as
//! problem+json, with a reason, above the limits the API actually keeps.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;

use crate::error;

/// The most header fields a request may carry.
pub const MAX_HEADERS: usize = 100;
/// The most bytes a request's header fields may take (names, values and separators).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// What the connection itself reads before hyper answers a bare 431.
const HYPER_MAX_HEADERS: usize = 1_000;
const HYPER_MAX_BUF: usize = 1024 * 1024;

/// Answers 431 problem+json when a request has more header fields, or more header bytes, than the
/// API keeps.
pub(crate) async fn header_limits(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let detail = if headers.len() > MAX_HEADERS {
        Some(format!(
            "the request has {} header fields; at most {MAX_HEADERS} are read",
            headers.len()
        ))
    } else if bytes > MAX_HEADER_BYTES {
        Some(format!(
            "the request's header fields take {bytes} bytes; at most {MAX_HEADER_BYTES} are read"
        ))
    } else {
        None
    };
    match detail {
        Some(detail) => error::problem(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request header fields too large",
            &detail,
        ),
        None => next.run(req).await,
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish (for at
/// most 10 s). Each request carries its peer's address (`ConnectInfo<SocketAddr>`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let service = tower::service_fn(
            move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req.map(axum::body::Body::new))
            },
        );
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .max_headers(HYPER_MAX_HEADERS)
            .max_buf_size(HYPER_MAX_BUF)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}
