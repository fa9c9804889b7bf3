//! The worker's small HTTP server for operators: `GET /metrics` (Prometheus
//! text), `GET /healthz` (the process is alive) and `GET /readyz` (it does
//! its job now: a RabbitMQ session is up and consuming, and Redis answers).
//!
//! It has no access to messages or conversations: nothing it answers can
//! carry customer data. Bound by `Worker::serve_health` to
//! `ESCALATOR_METRICS_LISTEN`.
use crate::observability::metrics;
use crate::store::Store;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const METRICS_PATH: &str = "/metrics";
pub const HEALTH_PATH: &str = "/healthz";
pub const READY_PATH: &str = "/readyz";

/// Longest wait for Redis's PING answer before `/readyz` says no (probes
/// time out after 1 s by default in Kubernetes).
const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether the worker's RabbitMQ session is up and consuming; set by the
/// session loop, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
}

impl Readiness {
    pub fn set_consuming(&self, up: bool) {
        self.consuming.store(up, Ordering::Release);
    }
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct Probe {
    store: Store,
    readiness: Arc<Readiness>,
}

/// The router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(store: Store, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route(METRICS_PATH, get(metrics_text))
        .route(HEALTH_PATH, get(healthz))
        .route(READY_PATH, get(readyz))
        .with_state(Probe { store, readiness })
}

/// Serve the router on `listener` until `stop` is cancelled.
pub fn spawn(
    listener: tokio::net::TcpListener,
    store: Store,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let app = router(store, readiness);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the metrics and health server stopped");
        }
    })
}

/// Bind `addr` (an error names `ESCALATOR_METRICS_LISTEN`); the bound address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr} for /metrics and the probes ({}): {e}; choose another address or `off`",
            crate::settings::METRICS_LISTEN_ENV
        )
    })
}

/// `GET /metrics` (shared with the ingress).
pub async fn metrics_text() -> Response {
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], metrics::render()).into_response()
}

async fn healthz() -> Response {
    axum::Json(json!({ "ok": true })).into_response()
}

async fn readyz(State(probe): State<Probe>) -> Response {
    let reason = if !probe.readiness.consuming() {
        Some("not consuming from RabbitMQ (no broker session)")
    } else {
        match tokio::time::timeout(PING_TIMEOUT, probe.store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some("Redis does not answer PING"),
            Err(_) => Some("Redis does not answer PING in time"),
        }
    };
    match reason {
        None => axum::Json(json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}
