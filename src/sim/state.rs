//! Shared simulator state, the request/response model and request recording.

use std::sync::{Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::broadcast;

use super::faults::ActiveFault;
use super::live::LiveState;
use super::miaw::MiawState;
use super::salesforce::SalesforceState;
use super::sunshine::SunshineState;
use super::types::{RecordedRequest, SimSettings};
use super::zendesk::ZendeskState;

/// An incoming provider request, body fully read.
pub(crate) struct Req {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Req {
    pub(crate) fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        super::util::header(&self.headers, name)
    }
}

/// A response as the simulator builds it (recorded, replayed, converted to axum).
#[derive(Clone, Debug)]
pub(crate) struct SimResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl SimResponse {
    pub(crate) fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), content_type.to_owned())],
            body: body.into(),
        }
    }

    pub(crate) fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        Self::json_typed(status, "application/json; charset=utf-8", value)
    }

    pub(crate) fn json_typed<T: Serialize + ?Sized>(
        status: u16,
        content_type: &str,
        value: &T,
    ) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::raw(status, content_type, body),
            Err(e) => Self::text(500, &format!("serialization failed: {e}")),
        }
    }

    pub(crate) fn text(status: u16, text: &str) -> Self {
        Self::raw(status, "text/plain; charset=utf-8", text.as_bytes())
    }

    pub(crate) fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub(crate) fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.set_header(name, value);
        self
    }

    /// Replaces any existing header of that name.
    pub(crate) fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.into()));
    }
}

impl IntoResponse for SimResponse {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            // Invalid names/values (e.g. from a fault rule) are skipped, never fatal.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.append(n, v);
            }
        }
        response
    }
}

/// Everything the simulator remembers; `reset()` replaces it by `State::new()`.
pub(crate) struct State {
    pub(crate) next_seq: u64,
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) faults: Vec<ActiveFault>,
    pub(crate) zd: ZendeskState,
    pub(crate) sf: SalesforceState,
    pub(crate) sun: SunshineState,
    pub(crate) live: LiveState,
    pub(crate) miaw: MiawState,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            next_seq: 1,
            requests: Vec::new(),
            faults: Vec::new(),
            zd: ZendeskState::new(),
            sf: SalesforceState::new(),
            sun: SunshineState::new(),
            live: LiveState::new(),
            miaw: MiawState::new(),
        }
    }
}

/// State shared by the server and every `SimHandle`.
pub(crate) struct Shared {
    pub(crate) settings: SimSettings,
    pub(crate) base_url: String,
    /// Client of the webhook deliveries.
    pub(crate) http: reqwest::Client,
    /// Held across a whole delivery: webhook requests go out one at a time,
    /// so a spawned delivery and an action's never interleave.
    pub(crate) delivery_lane: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    feed: broadcast::Sender<RecordedRequest>,
}

impl Shared {
    pub(crate) fn new(settings: SimSettings, base_url: String) -> Self {
        let (feed, _) = broadcast::channel(1024);
        // Zendesk gives up on a webhook after about 10-12 s.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(12))
            .build()
            .unwrap_or_default();
        Self {
            settings,
            base_url,
            http,
            delivery_lane: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::new()),
            feed,
        }
    }

    /// Locks the state; a poisoned lock is recovered (the state stays usable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RecordedRequest> {
        self.feed.subscribe()
    }

    pub(crate) fn next_seq(&self) -> u64 {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        seq
    }

    /// Stores (in arrival order) and broadcasts an answered request.
    pub(crate) fn record(&self, seq: u64, req: &Req, status: u16, faulted: bool) {
        let headers = req
            .headers
            .iter()
            .map(|(name, value)| {
                let name = name.as_str().to_ascii_lowercase();
                let value = if name == "authorization" || name == "proxy-authorization" {
                    "<redacted>".to_owned()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name, value)
            })
            .collect();
        let recorded = RecordedRequest {
            seq,
            method: req.method.as_str().to_owned(),
            path: req.path_and_query(),
            headers,
            body: redact_body(&req.path, &req.body),
            status,
            faulted,
            at: chrono::Utc::now(),
        };
        {
            let mut st = self.lock();
            let pos = st.requests.partition_point(|r| r.seq < seq);
            st.requests.insert(pos, recorded.clone());
        }
        // No subscriber is fine.
        let _ = self.feed.send(recorded);
    }
}

/// The body as text; the token endpoint's `client_secret` never leaves the process.
fn redact_body(path: &str, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if !path.starts_with("/services/oauth2/") {
        return text.into_owned();
    }
    text.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == "client_secret" => format!("{k}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}
