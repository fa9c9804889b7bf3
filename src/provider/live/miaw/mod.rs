//! Salesforce Messaging for In-App and Web (Enhanced Chat), custom client:
//! the HTTP API of a deployment's SCRT host and its server-sent-event
//! stream. Stateless: tokens are the caller's (kept per conversation in
//! Redis, `crate::live_stream::session`).
//!
//! Error messages name the call and the status only: a provider body may
//! echo message text, so it is never copied.
mod entry;

pub use entry::{ConversationEntry, EntryKind, ParticipantChange, SenderRole, parse_entry};

use crate::config::SalesforceLiveConfig;
use crate::error::{ErrorClass, ProviderError, ProviderErrorKind};
use crate::provider::http;
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use eventsource_stream::Eventsource;
use futures_util::Stream;
use serde_json::{Map, Value, json};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

const PROVIDER: &str = "salesforce";

/// The client of one org's deployment. Cheap to clone.
#[derive(Clone)]
pub struct MiawClient {
    http: reqwest::Client,
    /// Without a total timeout: a stream lives for hours.
    stream_http: reqwest::Client,
    base: String,
    org_id: String,
    org_id_15: String,
    developer_name: String,
    lifetime: Duration,
    app_name: String,
    language: String,
}

/// Whether `create_conversation` made it or found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    New,
    Existed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingStatus {
    Initial,
    Routed,
    NeedsRouting,
    Transfer,
    Other(String),
}

#[derive(Debug, Clone, Copy)]
pub struct BusinessHours {
    pub is_active: bool,
}

/// An access token of one anonymous messaging subject.
#[derive(Clone)]
pub struct MiawToken {
    pub access_token: Secret,
    pub last_event_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
}

impl std::fmt::Debug for MiawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiawToken")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl MiawToken {
    /// JSON for Redis. Deliberately not `Serialize`: it is never logged by accident.
    pub fn to_stored(&self) -> String {
        json!({
            "token": self.access_token.expose(),
            "last_event_id": self.last_event_id,
            "expires_at": self.expires_at.timestamp_millis(),
            "issued_at": self.issued_at.timestamp_millis(),
        })
        .to_string()
    }

    pub fn from_stored(s: &str) -> Option<MiawToken> {
        let v: Value = serde_json::from_str(s).ok()?;
        Some(MiawToken {
            access_token: Secret::new(v["token"].as_str()?),
            last_event_id: v["last_event_id"].as_str().map(str::to_string),
            expires_at: DateTime::from_timestamp_millis(v["expires_at"].as_i64()?)?,
            issued_at: DateTime::from_timestamp_millis(v["issued_at"].as_i64()?)?,
        })
    }

    pub fn expires_within(&self, d: Duration) -> bool {
        let left = self.expires_at - Utc::now();
        left.to_std().map(|left| left <= d).unwrap_or(true)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.access_token.expose())
    }
}

/// What the event stream carries.
pub enum StreamItem {
    Entry {
        event_id: Option<String>,
        conversation_id: String,
        event_type: String,
        entry: ConversationEntry,
    },
    Ping,
    /// `event: error` (e.g. "Jwt is expired": `expired`); the stream ends after it.
    Error {
        expired: bool,
    },
    /// An event with no entry we read, with its id (the cursor moves on).
    Other {
        event_id: Option<String>,
        event_type: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the event stream broke: {0}")]
    Transport(String),
    #[error("the event stream is not valid server-sent events")]
    Protocol,
}

type RawEvents = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    eventsource_stream::Event,
                    eventsource_stream::EventStreamError<reqwest::Error>,
                >,
            > + Send,
    >,
>;

/// A parsed event stream (the SSE framing by `eventsource-stream`).
pub struct MiawStream {
    inner: RawEvents,
}

impl Stream for MiawStream {
    type Item = Result<StreamItem, StreamError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(eventsource_stream::EventStreamError::Transport(e)))) => {
                Poll::Ready(Some(Err(StreamError::Transport(
                    http::transport_error(PROVIDER, &e).message,
                ))))
            }
            Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(StreamError::Protocol))),
            Poll::Ready(Some(Ok(ev))) => Poll::Ready(Some(Ok(item_of(ev)))),
        }
    }
}

fn item_of(ev: eventsource_stream::Event) -> StreamItem {
    let event_id = Some(ev.id).filter(|id| !id.is_empty());
    match ev.event.as_str() {
        "ping" => return StreamItem::Ping,
        "error" => {
            return StreamItem::Error {
                expired: ev.data.to_ascii_lowercase().contains("expired"),
            };
        }
        _ => {}
    }
    let data: Option<Value> = serde_json::from_str(&ev.data).ok();
    let parsed = data.as_ref().and_then(|d| {
        let conversation_id = d["conversationId"].as_str()?.to_string();
        let entry = parse_entry(&d["conversationEntry"])?;
        Some((conversation_id, entry))
    });
    match parsed {
        Some((conversation_id, entry)) => StreamItem::Entry {
            event_id,
            conversation_id,
            event_type: ev.event,
            entry,
        },
        None => StreamItem::Other {
            event_id,
            event_type: ev.event,
        },
    }
}

impl MiawClient {
    pub fn new(http: reqwest::Client, cfg: &SalesforceLiveConfig) -> MiawClient {
        let stream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("escalator/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_else(|_| http.clone());
        MiawClient {
            http,
            stream_http,
            base: cfg.scrt_base_url(),
            org_id: cfg.org_id.clone(),
            org_id_15: cfg.org_id_15().to_string(),
            developer_name: cfg.developer_name.clone(),
            lifetime: Duration::from_secs(u64::from(cfg.token_lifetime_minutes) * 60),
            app_name: cfg.app_name.clone(),
            language: cfg.language.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        op: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let span = tracing::debug_span!("provider_request", provider = PROVIDER, operation = op);
        let (resp, _) = http::execute(&self.http, rb, PROVIDER, op)
            .instrument(span)
            .await?;
        Ok(resp)
    }

    /// The error of a non-2xx answer (no provider text in it).
    fn error(op: &str, resp: &reqwest::Response) -> ProviderError {
        let status = resp.status().as_u16();
        let retry_after = http::retry_after(resp.headers());
        let class = match status {
            401 => (ErrorClass::Transient, ProviderErrorKind::SessionExpired),
            403 => (ErrorClass::Permanent, ProviderErrorKind::Authentication),
            409 => (
                ErrorClass::Permanent,
                ProviderErrorKind::IdempotencyConflict,
            ),
            other => http::classify_status(other),
        };
        let detail = match status {
            401 => "the messaging access token expired or was refused",
            403 => "the messaging token may not act on this conversation",
            400 => {
                "the deployment refused the request: check the Org ID and the Embedded Service developer name from the deployment's code snippet, and the pre-chat field names"
            }
            404 => "not found: check the SCRT URL and the developer name",
            429 => "rate limited",
            _ => "",
        };
        ProviderError::http(PROVIDER, class, op, status, detail, retry_after)
    }

    async fn json_of(op: &str, resp: reqwest::Response) -> Result<Value, ProviderError> {
        resp.json::<Value>().await.map_err(|_| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{op}: the answer is not JSON"),
            )
        })
    }

    fn token_of(&self, v: &Value, op: &str) -> Result<MiawToken, ProviderError> {
        let token = v["accessToken"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ProviderError::permanent(
                    PROVIDER,
                    ProviderErrorKind::Protocol,
                    format!("{op}: no accessToken in the answer"),
                )
            })?;
        let issued_at = Utc::now();
        let exp = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .ok()
            .and_then(|d| d.claims["exp"].as_i64())
            .and_then(|s| DateTime::from_timestamp(s, 0));
        let expires_at = exp.unwrap_or_else(|| {
            issued_at + chrono::Duration::from_std(self.lifetime).unwrap_or_default()
        });
        let last_event_id = match &v["lastEventId"] {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        Ok(MiawToken {
            access_token: Secret::new(token),
            last_event_id,
            expires_at,
            issued_at,
        })
    }

    /// A new unauthenticated token (a new anonymous subject).
    pub async fn access_token(&self) -> Result<MiawToken, ProviderError> {
        let op = "messaging access token";
        let body = json!({
            "orgId": self.org_id,
            "esDeveloperName": self.developer_name,
            "capabilitiesVersion": "1",
            "platform": "Web",
            "context": { "appName": self.app_name, "clientVersion": env!("CARGO_PKG_VERSION") },
        });
        let resp = self
            .send(
                op,
                self.http
                    .post(self.url("/iamessage/api/v2/authorization/unauthenticated/access-token"))
                    .json(&body),
            )
            .await?;
        if !resp.status().is_success() {
            let mut err = Self::error(op, &resp);
            if err.status == Some(401) {
                err.class = ErrorClass::Permanent;
                err.kind = ProviderErrorKind::Authentication;
            }
            return Err(err);
        }
        let v = Self::json_of(op, resp).await?;
        self.token_of(&v, op)
    }

    /// A token for the same subject (renewal before expiry).
    pub async fn continuation_token(&self, t: &MiawToken) -> Result<MiawToken, ProviderError> {
        let op = "messaging continuation token";
        let resp = self
            .send(
                op,
                self.http
                    .get(self.url("/iamessage/api/v2/authorization/continuation-access-token"))
                    .header(reqwest::header::AUTHORIZATION, t.bearer()),
            )
            .await?;
        if !resp.status().is_success() {
            let mut err = Self::error(op, &resp);
            if err.status == Some(401) {
                // An expired or revoked token cannot be continued.
                err.class = ErrorClass::Permanent;
            }
            return Err(err);
        }
        let v = Self::json_of(op, resp).await?;
        let mut token = self.token_of(&v, op)?;
        if token.last_event_id.is_none() {
            token.last_event_id = t.last_event_id.clone();
        }
        Ok(token)
    }

    pub async fn create_conversation(
        &self,
        t: &MiawToken,
        id: &Uuid,
        routing: &Map<String, Value>,
    ) -> Result<Created, ProviderError> {
        let op = "create messaging conversation";
        let body = json!({
            "conversationId": id.to_string(),
            "esDeveloperName": self.developer_name,
            "routingAttributes": routing,
            "language": self.language,
        });
        let resp = self
            .send(
                op,
                self.http
                    .post(self.url("/iamessage/api/v2/conversation"))
                    .header(reqwest::header::AUTHORIZATION, t.bearer())
                    .json(&body),
            )
            .await?;
        match resp.status().as_u16() {
            200..=299 => Ok(Created::New),
            409 => Ok(Created::Existed),
            _ => Err(Self::error(op, &resp)),
        }
    }

    /// Send a text; without a messaging session (417) once more, starting a new one.
    pub async fn send_text(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
        message_id: &Uuid,
        text: &str,
        routing: &Map<String, Value>,
    ) -> Result<(), ProviderError> {
        let op = "send messaging message";
        let url = self.url(&format!(
            "/iamessage/api/v2/conversation/{conversation}/message"
        ));
        let mut body = json!({
            "message": {
                "id": message_id.to_string(),
                "messageType": "StaticContentMessage",
                "staticContent": { "formatType": "Text", "text": text },
            },
            "esDeveloperName": self.developer_name,
            "isNewMessagingSession": false,
        });
        for attempt in 0..2 {
            let resp = self
                .send(
                    op,
                    self.http
                        .post(&url)
                        .header(reqwest::header::AUTHORIZATION, t.bearer())
                        .json(&body),
                )
                .await?;
            match resp.status().as_u16() {
                200..=299 => return Ok(()),
                417 if attempt == 0 => {
                    tracing::info!("no messaging session: sending again in a new one");
                    body["isNewMessagingSession"] = json!(true);
                    body["routingAttributes"] = Value::Object(routing.clone());
                    body["language"] = json!(self.language);
                }
                _ => return Err(Self::error(op, &resp)),
            }
        }
        Err(ProviderError::permanent(
            PROVIDER,
            ProviderErrorKind::Validation,
            format!("{op}: no messaging session even after starting a new one"),
        ))
    }

    pub async fn typing(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
        started: bool,
    ) -> Result<(), ProviderError> {
        let op = "send typing indicator";
        let body = json!({
            "entryType": if started { "TypingStartedIndicator" } else { "TypingStoppedIndicator" },
            "id": Uuid::new_v4().to_string(),
        });
        let resp = self
            .send(
                op,
                self.http
                    .post(self.url(&format!(
                        "/iamessage/api/v2/conversation/{conversation}/entry"
                    )))
                    .header(reqwest::header::AUTHORIZATION, t.bearer())
                    .json(&body),
            )
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::error(op, &resp))
        }
    }

    /// Close the conversation; one that is gone or closed already is fine.
    pub async fn close(&self, t: &MiawToken, conversation: &Uuid) -> Result<(), ProviderError> {
        let op = "close messaging conversation";
        let resp = self
            .send(
                op,
                self.http
                    .delete(self.url(&format!("/iamessage/api/v2/conversation/{conversation}")))
                    .query(&[("esDeveloperName", self.developer_name.as_str())])
                    .header(reqwest::header::AUTHORIZATION, t.bearer()),
            )
            .await?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            _ => Err(Self::error(op, &resp)),
        }
    }

    pub async fn routing_status(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
    ) -> Result<RoutingStatus, ProviderError> {
        let op = "get messaging conversation";
        let resp = self
            .send(
                op,
                self.http
                    .get(self.url(&format!("/iamessage/api/v2/conversation/{conversation}")))
                    .header(reqwest::header::AUTHORIZATION, t.bearer()),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error(op, &resp));
        }
        let v = Self::json_of(op, resp).await?;
        Ok(match v["routingStatus"].as_str().unwrap_or_default() {
            "INITIAL" => RoutingStatus::Initial,
            "ROUTED" => RoutingStatus::Routed,
            "NEEDS_ROUTING" => RoutingStatus::NeedsRouting,
            "TRANSFER" => RoutingStatus::Transfer,
            other => RoutingStatus::Other(other.to_string()),
        })
    }

    /// Every entry transcribed at or after `since_ms`, oldest first.
    pub async fn entries(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
        since_ms: Option<i64>,
    ) -> Result<Vec<ConversationEntry>, ProviderError> {
        const PAGE: usize = 1000;
        let op = "list messaging entries";
        let url = self.url(&format!(
            "/iamessage/api/v2/conversation/{conversation}/entries"
        ));
        let mut out: Vec<ConversationEntry> = Vec::new();
        let mut since = since_ms;
        for _ in 0..20 {
            let mut query = vec![
                ("limit", PAGE.to_string()),
                ("direction", "FromStart".to_string()),
            ];
            if let Some(ms) = since {
                query.push(("startTimestamp", ms.to_string()));
            }
            let resp = self
                .send(
                    op,
                    self.http
                        .get(&url)
                        .query(&query)
                        .header(reqwest::header::AUTHORIZATION, t.bearer()),
                )
                .await?;
            if !resp.status().is_success() {
                return Err(Self::error(op, &resp));
            }
            let v = Self::json_of(op, resp).await?;
            let page: Vec<ConversationEntry> = v["conversationEntries"]
                .as_array()
                .map(|a| a.iter().filter_map(parse_entry).collect())
                .unwrap_or_default();
            let full = page.len() >= PAGE;
            let last = page.last().and_then(|e| e.transcripted_at_ms);
            for e in page {
                if !out.iter().any(|o| o.identifier == e.identifier) {
                    out.push(e);
                }
            }
            match (full, last) {
                (true, Some(ms)) if Some(ms) != since => since = Some(ms),
                _ => break,
            }
        }
        Ok(out)
    }

    pub async fn business_hours(&self) -> Result<BusinessHours, ProviderError> {
        let op = "get business hours";
        let resp = self
            .send(
                op,
                self.http
                    .get(self.url("/embeddedservice/v1/businesshours"))
                    .query(&[
                        ("orgId", self.org_id.as_str()),
                        ("esConfigName", self.developer_name.as_str()),
                    ]),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error(op, &resp));
        }
        let v = Self::json_of(op, resp).await?;
        Ok(BusinessHours {
            // No business hours set up: always open.
            is_active: v["businessHoursInfo"]["isActive"].as_bool().unwrap_or(true),
        })
    }

    /// Open the subject's event stream, resuming after `last_event_id`.
    pub async fn open_stream(
        &self,
        t: &MiawToken,
        last_event_id: Option<&str>,
    ) -> Result<MiawStream, ProviderError> {
        let op = "open messaging event stream";
        let mut rb = self
            .stream_http
            .get(self.url("/eventrouter/v1/sse"))
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::AUTHORIZATION, t.bearer())
            .header("X-Org-Id", self.org_id_15.as_str());
        if let Some(id) = last_event_id {
            rb = rb.header("Last-Event-Id", id);
        }
        let (resp, _) = http::execute(&self.stream_http, rb, PROVIDER, op).await?;
        if !resp.status().is_success() {
            return Err(Self::error(op, &resp));
        }
        Ok(MiawStream {
            inner: Box::pin(resp.bytes_stream().eventsource()),
        })
    }
}
