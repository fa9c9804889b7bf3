//! Local simulator of the provider HTTP APIs (Zendesk, Salesforce), with a control API.
//!
//! One in-process axum server answers like the Zendesk Support tickets API
//! (`/api/v2/...`), the Salesforce OAuth token endpoint and REST API
//! (`/services/...`), records every provider request, and applies
//! [`FaultRule`]s. `/_sim/...` is the control API (JSON; not recorded, not faulted).
//!
//! Live chat (Zendesk messaging): Sunshine Conversations v2 under
//! `/sc/v2/apps/{appId}/...` (`sunshine`), whose passControl makes a
//! messaging ticket in the Zendesk state; the agent's side (join, reply,
//! leave, end session, solve) is driven through [`SimHandle`] or
//! `/_sim/zendesk/live/...` and reported to a configured receiver as real
//! Zendesk webhook deliveries (`live`, `webhooks`).
//!
//! Salesforce Enhanced Chat (MIAW): `/iamessage/api/v2/...`, business hours
//! and the SSE stream `/eventrouter/v1/sse` (`miaw`, `miaw_stream`); the
//! agent's side through [`SimHandle`] `miaw_*` or `/_sim/salesforce/miaw/...`.
//!
//! Set-up reads (`escalator doctor`): Zendesk `users/me`, groups, the
//! Webhooks API and triggers describe the account as the admin guide sets
//! it up, aimed at the webhook target (`zendesk_admin`); Salesforce answers
//! `GET /services/data/` and `Case/describe`; Sunshine `GET /v2/apps/{id}`.

mod control;
mod faults;
mod live;
mod miaw;
mod miaw_stream;
mod net;
mod salesforce;
mod state;
mod sunshine;
mod types;
mod util;
mod webhooks;
mod zendesk;
mod zendesk_admin;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use live::{SimLiveError, webhook_signature};
pub use types::{
    FaultRule, RecordedRequest, SimAgent, SimAudit, SimCase, SimComment, SimMiawConversation,
    SimMiawEntry, SimSchedule, SimSettings, SimSfRecord, SimSunshineConversation,
    SimSunshineMessage, SimSunshineUser, SimTicket, SimWebhookDelivery, WebhookTarget,
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
/// `webhook`: where Zendesk webhooks go from the start.
pub async fn run(
    bind: SocketAddr,
    settings: SimSettings,
    webhook: Option<WebhookTarget>,
) -> std::io::Result<()> {
    let handle = start(bind, settings).await?;
    if let Some(target) = webhook {
        handle.set_zendesk_webhook(target);
    }
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

    /// Forgets everything (records, tickets, cases, tokens, faults, counters,
    /// Sunshine users and conversations, the webhook target and deliveries).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Where Zendesk webhooks go from now on (replaces any earlier target).
    pub fn set_zendesk_webhook(&self, target: WebhookTarget) {
        self.shared.lock().live.target = Some(target);
    }

    /// Seeded Zendesk agents (9001 "Alex Agent", 9002 "Sam Support", ...).
    pub fn zendesk_agents(&self) -> Vec<SimAgent> {
        self.shared.lock().zd.agents.values().cloned().collect()
    }

    /// Marks an agent online (or offline) for messaging in `agent_availabilities`;
    /// an unknown id becomes a new agent named "Agent <id>".
    pub fn set_agent_online(&self, agent_id: u64, online: bool) {
        let mut st = self.shared.lock();
        let agent = st.zd.agents.entry(agent_id).or_insert_with(|| SimAgent {
            id: agent_id,
            name: format!("Agent {agent_id}"),
            online: false,
        });
        agent.online = online;
    }

    /// False: `GET /api/v2/agent_availabilities` answers 404, like an account
    /// without omnichannel routing. Default true.
    pub fn set_agent_availability_api(&self, available: bool) {
        self.shared.lock().zd.availability_api = available;
    }

    /// The role of the Zendesk API user (`users/me`, user 1000): "admin"
    /// by default; "end-user" makes the doctor's token check warn and, as
    /// the default assignee, fail.
    pub fn set_api_user_role(&self, role: &str) {
        self.shared.lock().zd.api_user_role = role.to_owned();
    }

    /// What Salesforce's `Case/describe` says of `createable` (the Run As
    /// user's Create permission on Case). Default true.
    pub fn set_case_createable(&self, createable: bool) {
        self.shared.lock().sf.case_createable = createable;
    }

    /// Adds or replaces a business-hours schedule (schedule 1 is always open
    /// until replaced).
    pub fn set_schedule(&self, schedule: SimSchedule) {
        self.shared
            .lock()
            .zd
            .schedules
            .insert(schedule.id, schedule);
    }

    /// The app setting `multiConvoEnabled` (default on): off refuses a user's
    /// second personal conversation.
    pub fn set_multi_convo(&self, app_id: &str, enabled: bool) {
        self.shared
            .lock()
            .sun
            .multi_convo
            .insert(app_id.to_owned(), enabled);
    }

    /// Lowers the per-conversation message limit (30,000) so a test can reach 423.
    pub fn set_sunshine_message_limit(&self, limit: usize) {
        self.shared.lock().sun.message_limit = limit;
    }

    /// Accepts `typing:start`/`typing:stop` from a user author (the spec
    /// allows users only `conversation:read`; default false: 400).
    pub fn allow_user_typing(&self, allowed: bool) {
        self.shared.lock().sun.user_typing_allowed = allowed;
    }

    /// Sunshine users in creation order.
    pub fn sunshine_users(&self) -> Vec<SimSunshineUser> {
        self.shared.lock().sun.users.clone()
    }

    /// Sunshine conversations in creation order, with their messages,
    /// activities, passControl calls and messaging ticket.
    pub fn sunshine_conversations(&self) -> Vec<SimSunshineConversation> {
        self.shared.lock().sun.conversations.clone()
    }

    /// Zendesk tickets made by a passControl (`via.channel` native_messaging).
    pub fn messaging_tickets(&self) -> Vec<SimTicket> {
        self.zendesk_tickets()
            .into_iter()
            .filter(|t| t.via_channel == "native_messaging")
            .collect()
    }

    /// Every webhook request made so far, in sending order.
    pub fn webhook_deliveries(&self) -> Vec<SimWebhookDelivery> {
        self.shared.lock().live.deliveries.clone()
    }

    /// The agent takes the conversation's ticket (NEW -> OPEN, assigned):
    /// `status_changed` then `agent_assignment_changed`. Returns the statuses
    /// the target answered (none while deliveries are held).
    pub async fn agent_joins(
        &self,
        conversation_id: &str,
        agent_id: u64,
    ) -> Result<Vec<u16>, SimLiveError> {
        live::agent_joins(&self.shared, conversation_id, agent_id).await
    }

    /// The assigned agent (else the first seeded one) replies: a business
    /// message from Agent Workspace and `message_added` (actor agent).
    pub async fn agent_replies(
        &self,
        conversation_id: &str,
        text: &str,
    ) -> Result<Vec<u16>, SimLiveError> {
        live::agent_replies(&self.shared, conversation_id, text).await
    }

    /// The agent unassigns: `agent_assignment_changed` with `current: null`.
    pub async fn agent_leaves(&self, conversation_id: &str) -> Result<Vec<u16>, SimLiveError> {
        live::agent_leaves(&self.shared, conversation_id).await
    }

    /// "End session": the session-end trigger body (only when the target
    /// has `session_end_trigger`); Agent Workspace releases control.
    pub async fn end_session(&self, conversation_id: &str) -> Result<Vec<u16>, SimLiveError> {
        live::end_session(&self.shared, conversation_id).await
    }

    /// The agent solves the ticket: `status_changed` to SOLVED.
    pub async fn solve_ticket(&self, conversation_id: &str) -> Result<Vec<u16>, SimLiveError> {
        live::solve_ticket(&self.shared, conversation_id).await
    }

    /// A status change of a ticket the escalator did not make.
    pub async fn unrelated_ticket_event(&self) -> Result<Vec<u16>, SimLiveError> {
        live::unrelated_ticket_event(&self.shared).await
    }

    /// Delivers each of the next `n` events twice (same event id).
    pub fn duplicate_next(&self, n: u32) {
        self.shared.lock().live.duplicate_next = n;
    }

    /// Queues events instead of sending them, until `release_held`.
    pub fn hold_deliveries(&self) {
        self.shared.lock().live.holding = true;
    }

    /// Sends the held events (newest first with `reverse_order`) and stops holding.
    pub async fn release_held(&self, reverse_order: bool) -> Result<Vec<u16>, SimLiveError> {
        live::release_held(&self.shared, reverse_order).await
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(self) {
        self.server.stop.cancel();
        // Open MIAW streams end now instead of holding the graceful shutdown.
        self.shared.lock().miaw.drop_streams(None);
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
    if parts.method == axum::http::Method::GET && miaw_stream::is_sse(parts.uri.path()) {
        let req = Req {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body: axum::body::Bytes::new(),
        };
        let (response, dropped) = miaw_stream::connect(shared, req).await;
        if dropped {
            conn.kill.trip();
        }
        return response;
    }
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
    if req.path.starts_with("/_sim/zendesk/live/") {
        return live::control(&shared, &req).await.into_response();
    }
    if req.path.starts_with("/_sim/salesforce/miaw/") {
        return miaw::control(&shared, &req).into_response();
    }
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
            live::flush_outbox(&shared);
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
        let rest = req.path.strip_prefix("/api/v2").unwrap_or_default();
        let segs: Vec<&str> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| s.strip_suffix(".json").unwrap_or(s))
            .collect();
        let admin = zendesk::authenticated(shared, req)
            .then(|| zendesk_admin::handle(&st, req, &segs))
            .flatten();
        match admin {
            Some(response) => response,
            None => zendesk::handle(shared, &mut st.zd, req),
        }
    } else if req.path.starts_with("/services/") {
        salesforce::handle(shared, &mut st.sf, req)
    } else if req.path.starts_with("/iamessage/") || req.path.starts_with("/embeddedservice/") {
        miaw::handle(&mut st, req)
    } else if req.path.starts_with("/sc/") {
        sunshine::handle(shared, &mut st, req)
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
