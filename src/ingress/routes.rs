//! The HTTP surface: the webhook endpoints and the probes.
//!
//! A webhook is checked in the order that costs least for a caller who is
//! not allowed: token and org from the headers before any body byte is
//! read, then the body (size, signature, UTF-8, JSON), and it is answered
//! 200 only after the broker confirmed the publish.
use super::answer::Rejection;
use super::auth::{self, Credentials};
use super::publish::{Broker, PublishError};
use super::{GUIDE_WEBHOOK_PATH, HEALTH_PATH, READY_PATH, ROUTING_KEY, WEBHOOK_PATH};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use lapin::types::ShortString;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument;

/// Headers copied into the published message (by lower-case name). Never
/// `authorization` or the signature: the ingress has checked those.
pub const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "x-zendesk-webhook-id",
    "x-zendesk-webhook-invocation-id",
    "x-zendesk-webhook-signature-timestamp",
    "user-agent",
    auth::ORG_HEADER,
];

/// Namespace of the message ids derived from a delivery (UUID v5).
const MESSAGE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5c0e_6b1e_8f0a_4c53_9d1e_77a0_2b4f_9e21);

pub struct AppState {
    pub credentials: Credentials,
    pub broker: Broker,
    pub body_limit: usize,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(webhook))
        .route(GUIDE_WEBHOOK_PATH, post(webhook))
        .route(HEALTH_PATH, get(healthz))
        .route(READY_PATH, get(readyz))
        .route(
            crate::health::METRICS_PATH,
            get(crate::health::metrics_text),
        )
        .fallback(not_found)
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: Zendesk webhooks go to POST {WEBHOOK_PATH}"),
    )
}

/// The process is up (liveness).
async fn healthz() -> Response {
    axum::Json(json!({ "ok": true })).into_response()
}

/// A publish can be attempted now: the broker connection and its confirm
/// channel are up, and the broker does not block publishing.
async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.broker.ready() {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the message broker",
        )
    }
}

/// The sender's `traceparent`, if well-formed.
fn inbound_trace(headers: &HeaderMap) -> Option<crate::trace_context::TraceParent> {
    headers
        .get(crate::trace_context::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::trace_context::TraceParent::parse)
}

async fn webhook(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let span = tracing::info_span!(
        "webhook",
        org_id = tracing::field::Empty,
        claimed_org = tracing::field::Empty
    );
    crate::trace_context::continue_in(&span, inbound_trace(request.headers()).as_ref());
    async move {
        let started = tokio::time::Instant::now();
        let result = accept(&state, request).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let status = result
            .as_ref()
            .map_or_else(|r| r.status().as_u16(), |_| 200);
        crate::observability::metrics::ingress_request(status, started.into_std());
        match result {
            Ok(message_id) => {
                tracing::info!(status = 200, elapsed_ms, %message_id, "webhook queued");
                axum::Json(json!({ "ok": true })).into_response()
            }
            Err(rejection) => {
                let status = rejection.status();
                tracing::warn!(
                    status = status.as_u16(),
                    reason = rejection.reason(),
                    elapsed_ms,
                    "webhook refused"
                );
                error(status, rejection.message())
            }
        }
    }
    .instrument(span)
    .await
}

/// Check and publish one delivery; the message id on success.
async fn accept(state: &AppState, request: Request) -> Result<String, Rejection> {
    let received_at = chrono::Utc::now();
    let (parts, body) = request.into_parts();
    let who = state
        .credentials
        .authenticate(&parts.headers)
        .inspect_err(|rejection| {
            // Which org an unknown-org delivery names helps an admin find a
            // typo; logged only when it is a well-formed org id.
            if *rejection == Rejection::UnknownOrg
                && let Some(claimed) = parts
                    .headers
                    .get(auth::ORG_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|id| crate::config::valid_org_id(id))
            {
                tracing::Span::current().record("claimed_org", claimed);
            }
        })?;
    tracing::Span::current().record("org_id", who.org_id);
    let body = read_body(&parts.headers, body, state.body_limit).await?;
    if let Some(secret) = who.signing_secret {
        auth::verify_signature(secret, &parts.headers, &body, received_at)?;
    }
    let text = std::str::from_utf8(&body).map_err(|_| Rejection::NotUtf8)?;
    crate::webhook::parse_lenient(&body).map_err(|e| Rejection::NotJson(e.to_string()))?;

    let headers = kept_headers(&parts.headers);
    let message_id = message_id(who.org_id, &headers, &body);
    let message = json!({
        "org_id": who.org_id,
        "received_at": received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "headers": headers,
        "body": text,
    });
    let bytes = serde_json::to_vec(&message).map_err(|_| Rejection::UnreadableBody)?;
    let props = crate::amqp::json_properties()
        .with_message_id(ShortString::from(message_id.clone()))
        .with_app_id(ShortString::from("escalator-ingress"))
        .with_timestamp(received_at.timestamp().max(0) as u64);
    // A trace the sender started continues with the message (through this
    // request's span when spans are exported).
    let trace = crate::trace_context::current().or_else(|| inbound_trace(&parts.headers));
    let props = crate::trace_context::with_trace(props, trace.as_ref());
    match state.broker.publish(ROUTING_KEY, &bytes, props).await {
        Ok(()) => Ok(message_id),
        Err(e) => {
            if matches!(e, PublishError::NotConnected) {
                // The keeper logs the outage itself.
                tracing::debug!(error = %e, "publish failed");
            } else {
                tracing::warn!(error = %e, "publish failed");
            }
            Err(match e {
                PublishError::TopologyMissing => Rejection::TopologyMissing,
                _ => Rejection::Unavailable,
            })
        }
    }
}

/// The body, at most `limit` bytes (a declared length over it is refused
/// before reading).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Rejection::TooLarge { limit });
    }
    let capacity = declared.map_or(0, |n| n as usize).min(limit);
    let mut out = Vec::with_capacity(capacity);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| Rejection::UnreadableBody)?;
        if out.len() + chunk.len() > limit {
            return Err(Rejection::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The headers of [`KEPT_HEADERS`] that are present (values that are not
/// visible ASCII are left out).
fn kept_headers(headers: &HeaderMap) -> BTreeMap<&'static str, String> {
    KEPT_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?.to_str().ok()?;
            Some((*name, value.to_string()))
        })
        .collect()
}

/// A delivery's message id. Zendesk retries a delivery under the same
/// invocation id, so org + webhook id + invocation id + body give the same
/// id to a retry of a webhook we may already have queued (the worker
/// deduplicates on it) and different ids to different deliveries. Without
/// an invocation id, a random one.
fn message_id(org_id: &str, headers: &BTreeMap<&'static str, String>, body: &[u8]) -> String {
    match headers.get("x-zendesk-webhook-invocation-id") {
        Some(invocation) => {
            use sha2::Digest;
            let mut name = Vec::with_capacity(128);
            for part in [
                org_id.as_bytes(),
                headers
                    .get("x-zendesk-webhook-id")
                    .map_or(&b""[..], |s| s.as_bytes()),
                invocation.as_bytes(),
                &sha2::Sha256::digest(body)[..],
            ] {
                name.extend_from_slice(part);
                name.push(0);
            }
            uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, &name).to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keeps_processing_headers_and_never_credentials() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer secret"),
            ("x-zendesk-webhook-signature", "c2ln"),
            ("x-zendesk-webhook-id", "01H"),
            ("content-type", "application/json"),
            ("x-api-key", "k"),
            ("cookie", "c"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let kept = kept_headers(&h);
        assert_eq!(
            kept.keys().copied().collect::<Vec<_>>(),
            ["content-type", "x-zendesk-webhook-id"]
        );
    }

    #[test]
    fn a_retry_of_one_invocation_keeps_its_message_id() {
        let mut h = BTreeMap::new();
        h.insert("x-zendesk-webhook-id", "w1".to_string());
        h.insert("x-zendesk-webhook-invocation-id", "i1".to_string());
        let a = message_id("acme", &h, b"{}");
        assert_eq!(a, message_id("acme", &h, b"{}"));
        assert_ne!(a, message_id("acme", &h, b"{\"x\":1}"));
        assert_ne!(a, message_id("globex", &h, b"{}"));
        h.remove("x-zendesk-webhook-invocation-id");
        assert_ne!(message_id("acme", &h, b"{}"), message_id("acme", &h, b"{}"));
    }
}
