//! HTTP plumbing shared by provider clients: one client, and the mapping of
//! transport errors and status codes to [`ProviderError`]s.
use crate::error::{ErrorClass, Landing, ProviderError, ProviderErrorKind};
use crate::observability::metrics;
use std::time::Duration;

pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5).min(timeout))
        .user_agent(concat!("escalator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// A transport-level failure (no HTTP answer). Always transient. The message
/// names the host and path only: URLs never carry secrets here, and query
/// strings may carry customer data, so they are dropped.
///
/// A connection that never opened cannot have delivered the request; after a
/// timeout or a broken connection the request may still land (see
/// [`Landing`]); [`settled_for`] corrects that for reads.
pub fn transport_error(provider: &'static str, err: &reqwest::Error) -> ProviderError {
    let (what, landing) = if err.is_connect() {
        ("connection failed", Landing::NotLanded)
    } else if err.is_timeout() {
        ("timed out", Landing::MayStillLand)
    } else {
        ("connection broke", Landing::MayStillLand)
    };
    let target = err
        .url()
        .map(|u| format!(" ({} {})", u.host_str().unwrap_or("?"), u.path()))
        .unwrap_or_default();
    ProviderError::transient(
        provider,
        ProviderErrorKind::Network,
        format!("request {what}{target}"),
    )
    .with_landing(landing)
}

/// A failed read (GET, HEAD, OPTIONS) changed nothing, whatever the failure.
pub fn settled_for(method: &reqwest::Method, err: ProviderError) -> ProviderError {
    if method.is_safe() {
        err.with_landing(Landing::NotLanded)
    } else {
        err
    }
}

/// Build and send one request, returning the response and its method. A
/// request that cannot be built is a permanent protocol error; a transport
/// failure is transient (and, for a safe method, certainly not landed).
pub async fn execute(
    http: &reqwest::Client,
    rb: reqwest::RequestBuilder,
    provider: &'static str,
    op: &str,
) -> Result<(reqwest::Response, reqwest::Method), ProviderError> {
    // The trace of the message being handled continues at the provider.
    let rb = match crate::trace_context::current() {
        Some(trace) => rb.header(crate::trace_context::TRACEPARENT, trace.as_str()),
        None => rb,
    };
    let req = rb.build().map_err(|_| {
        ProviderError::permanent(
            provider,
            ProviderErrorKind::Protocol,
            format!("{op}: the request could not be built"),
        )
    })?;
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let sent = http.execute(req).await;
    metrics::provider_request(
        provider,
        op,
        sent.as_ref().ok().map(|r| r.status().as_u16()),
        started,
    );
    let resp = sent.map_err(|e| settled_for(&method, transport_error(provider, &e)))?;
    Ok((resp, method))
}

/// `Retry-After` in seconds (the HTTP-date form is rare at these APIs and
/// treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)))
}

/// Default class and kind for an HTTP status.
pub fn classify_status(status: u16) -> (ErrorClass, ProviderErrorKind) {
    match status {
        429 => (ErrorClass::Transient, ProviderErrorKind::RateLimited),
        408 | 500..=599 => (ErrorClass::Transient, ProviderErrorKind::Unavailable),
        401 | 403 => (ErrorClass::Permanent, ProviderErrorKind::Authentication),
        404 => (ErrorClass::Permanent, ProviderErrorKind::NotFound),
        _ => (ErrorClass::Permanent, ProviderErrorKind::Validation),
    }
}

/// Cut a provider's error text to a loggable size.
pub fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}
