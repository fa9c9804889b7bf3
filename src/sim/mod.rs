//! Local simulator of the provider HTTP APIs (Zendesk, Salesforce), with a control API.
//!
//! One in-process axum server answers like the Zendesk Support tickets API
//! (`/api/v2/...`), the Salesforce OAuth token endpoint and REST API
//! (`/services/...`), records every provider request, and applies
//! [`FaultRule`]s. `/_sim/...` is the control API (JSON; not recorded, not faulted).

mod control;
mod faults;
mod net;
mod salesforce;
mod state;
mod types;
mod util;
mod zendesk;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use types::{
    FaultRule, RecordedRequest, SimAudit, SimCase, SimComment, SimSettings, SimSfRecord, SimTicket,
};

use faults::ActiveFault;
use net::{ConnInfo, SimListener};
use state::{Req, Shared, SimResponse};

/// Largest request body accepted (ContentVersion payloads are base64).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long `shutdown` waits for in-flight requests before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Handle to a running simulator. Cheap to clone.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
    server: Arc<Server>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

struct Server {
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// Binds `bind` (use `127.0.0.1:0` in tests) and serves in a background task.
pub async fn start(bind: SocketAddr, settings: SimSettings) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let base_url = format!("http://{host}:{}", addr.port());
    let shared = Arc::new(Shared::new(settings, base_url));
    let app = Router::new()
        .fallback(entry)
        .with_state(Arc::clone(&shared))
        .into_make_service_with_connect_info::<ConnInfo>();
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(SimListener::new(listener), app)
            .with_graceful_shutdown(signal)
            .await
        {
            tracing::warn!(error = %e, "sim: server stopped with an error");
        }
    });
    Ok(SimHandle {
        shared,
        server: Arc::new(Server {
            stop,
            task: Mutex::new(Some(task)),
        }),
    })
}

/// Serves until ctrl-c / SIGTERM (used by `escalator sim`).
pub async fn run(bind: SocketAddr, settings: SimSettings) -> std::io::Result<()> {
    let handle = start(bind, settings).await?;
    tracing::info!(base_url = %handle.base_url(), "provider simulator listening");
    shutdown_signal().await;
    tracing::info!("provider simulator shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "sim: cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "sim: cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

impl SimHandle {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Every provider request in arrival order (faulted ones included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Live feed of answered provider requests.
    pub fn subscribe(&self) -> broadcast::Receiver<RecordedRequest> {
        self.shared.subscribe()
    }

    /// Zendesk tickets ordered by id.
    pub fn zendesk_tickets(&self) -> Vec<SimTicket> {
        self.shared.zendesk_tickets()
    }

    /// Salesforce Cases in creation order.
    pub fn salesforce_cases(&self) -> Vec<SimCase> {
        self.shared.salesforce_cases()
    }

    /// ContentVersion / FeedItem / CaseComment records in creation order.
    pub fn salesforce_attachments(&self) -> Vec<SimSfRecord> {
        self.shared.salesforce_attachments()
    }

    /// Salesforce token-endpoint calls so far (failed and faulted ones included).
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests()
    }

    /// Adds a fault rule (tried after the ones already present).
    pub fn inject(&self, rule: FaultRule) {
        self.shared.inject(rule);
    }

    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Forgets all Zendesk Idempotency-Keys (the ~2 h window has passed).
    pub fn expire_idempotency_keys(&self) {
        self.shared.lock().zd.expire_idempotency_keys();
    }

    /// Invalidates every Salesforce token issued so far.
    pub fn expire_salesforce_tokens(&self) {
        self.shared.lock().sf.expire_tokens();
    }

    /// Forgets everything (records, tickets, cases, tokens, faults, counters).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        self.server.stop.cancel();
        let task = self
            .server
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Shared {
    fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    fn zendesk_tickets(&self) -> Vec<SimTicket> {
        self.lock().zd.tickets.values().cloned().collect()
    }

    fn salesforce_cases(&self) -> Vec<SimCase> {
        self.lock().sf.cases.clone()
    }

    fn salesforce_attachments(&self) -> Vec<SimSfRecord> {
        self.lock().sf.records.clone()
    }

    fn token_requests(&self) -> usize {
        self.lock().sf.token_requests
    }

    fn faults(&self) -> Vec<FaultRule> {
        self.lock().faults.iter().map(|f| f.rule.clone()).collect()
    }

    fn inject(&self, rule: FaultRule) {
        self.lock().faults.push(ActiveFault::new(rule));
    }

    fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    fn reset(&self) {
        *self.lock() = state::State::new();
    }
}

/// Every request lands here; `/_sim/` goes to the control API, the rest to `process`.
async fn entry(
    AxumState(shared): AxumState<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return SimResponse::text(413, "Request body too large").into_response(),
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    if req.path == "/_sim" || req.path.starts_with("/_sim/") {
        return control::handle(&shared, &req).into_response();
    }
    // A task of its own: the request is handled and recorded even if the client
    // goes away mid-way (e.g. times out during injected latency).
    match tokio::spawn(process(shared, req)).await {
        Ok((response, dropped)) => {
            if dropped {
                conn.kill.trip();
            }
            response.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "sim: request handler failed");
            SimResponse::text(500, "simulator error").into_response()
        }
    }
}

/// Applies faults around the provider behaviour; returns (response, drop connection).
async fn process(shared: Arc<Shared>, req: Req) -> (SimResponse, bool) {
    let seq = shared.next_seq();
    let rule = shared
        .lock()
        .take_fault(req.method.as_str(), &req.path_and_query());
    let after_effect = rule.as_ref().is_some_and(|r| r.after_effect);
    let latency = rule
        .as_ref()
        .and_then(|r| r.latency_ms)
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
    let disrupting = rule.as_ref().filter(|r| faults::disrupts(r));

    if let Some(delay) = latency
        && !after_effect
    {
        tokio::time::sleep(delay).await;
    }
    let mut response = match disrupting {
        Some(r) if !after_effect => faults::response(r, &req.path),
        _ => {
            let real = dispatch(&shared, &req);
            match disrupting {
                Some(r) => faults::response(r, &req.path),
                None => real,
            }
        }
    };
    if let Some(delay) = latency
        && after_effect
    {
        tokio::time::sleep(delay).await;
    }
    if let Some(secs) = rule.as_ref().and_then(|r| r.retry_after) {
        response.set_header("retry-after", secs.to_string());
    }
    add_provider_headers(&shared, &req, &mut response);
    let dropped = rule.as_ref().is_some_and(|r| r.drop_connection);
    let status = if dropped { 0 } else { response.status };
    shared.record(seq, &req, status, rule.is_some());
    (response, dropped)
}

/// The real provider behaviour.
fn dispatch(shared: &Shared, req: &Req) -> SimResponse {
    let mut st = shared.lock();
    if req.path == "/api/v2" || req.path.starts_with("/api/v2/") {
        zendesk::handle(shared, &mut st.zd, req)
    } else if req.path.starts_with("/services/") {
        salesforce::handle(shared, &mut st.sf, req)
    } else {
        SimResponse::text(404, "Not Found")
    }
}

/// Counters and headers every provider response carries (faulted ones too).
fn add_provider_headers(shared: &Shared, req: &Req, response: &mut SimResponse) {
    let mut st = shared.lock();
    if req.path == "/api/v2" || req.path.starts_with("/api/v2/") {
        let remaining = st.zd.rate_tick();
        response.set_header("x-rate-limit", zendesk::RATE_LIMIT.to_string());
        response.set_header("x-rate-limit-remaining", remaining.to_string());
    } else if salesforce::is_token_path(&req.path) {
        st.sf.token_requests += 1;
    } else if req.path.starts_with("/services/data/") {
        let usage = st.sf.usage_tick();
        response.set_header("sforce-limit-info", usage);
    }
}
