//! Salesforce Messaging for In-App and Web (Enhanced Chat) under
//! `/iamessage/api/v2/...`, `/embeddedservice/v1/businesshours` and the SSE
//! stream `/eventrouter/v1/sse` (`miaw_stream`), per /work/notes/miaw-wire.md.
//! The agent's side and the faults are driven through [`SimHandle`] or
//! `/_sim/salesforce/miaw/...`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::SimHandle;
use super::state::{Req, Shared, SimResponse, State};
use super::types::{SimMiawConversation, SimMiawEntry};
use super::util::{bearer_token, query_param};

pub(crate) const ORG_ID: &str = "00DSIM000000001";
pub(crate) const ES_DEVELOPER_NAME: &str = "Sim_Messaging";
const JWT_KEY: &[u8] = b"escalator-sim-miaw-signing-key";
const DEFAULT_RATE: usize = 22;
const RATE_WINDOW: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_PING: Duration = Duration::from_secs(15);
/// Frames buffered per stream before the stream counts as stuck and is closed.
pub(crate) const STREAM_BUFFER: usize = 1024;

/// What a stream's channel carries.
pub(crate) enum Frame {
    Event(Bytes),
    /// The token was expired by the control API: error event, then close.
    Expired,
}

pub(crate) struct Token {
    pub(crate) subject: String,
    pub(crate) exp_ms: i64,
    pub(crate) revoked: bool,
}

/// One anonymous subject: its event log and its streams.
pub(crate) struct Subject {
    pub(crate) events: Vec<(u64, Bytes)>,
    pub(crate) next_event: u64,
    pub(crate) senders: Vec<mpsc::Sender<Frame>>,
    pub(crate) silenced: Arc<AtomicBool>,
    pub(crate) open: usize,
    pub(crate) max_open: usize,
    pub(crate) connects: usize,
    pub(crate) last_event_ids: Vec<Option<String>>,
}

impl Subject {
    pub(crate) fn new() -> Self {
        Self {
            events: Vec::new(),
            next_event: 1,
            senders: Vec::new(),
            silenced: Arc::new(AtomicBool::new(false)),
            open: 0,
            max_open: 0,
            connects: 0,
            last_event_ids: Vec::new(),
        }
    }
}

pub(crate) struct Conversation {
    id: String,
    subject: String,
    routing_status: String,
    routing_attributes: Value,
    closed: bool,
    session_active: bool,
    entries: Vec<(SimMiawEntry, Value)>,
    message_ids: HashSet<String>,
    customer_messages: Vec<(String, String)>,
    typing: Vec<String>,
    sent: VecDeque<Instant>,
    agent: Option<(String, String)>,
}

pub(crate) struct MiawState {
    pub(crate) tokens: HashMap<String, Token>,
    pub(crate) subjects: HashMap<String, Subject>,
    conversations: Vec<Conversation>,
    pub(crate) token_requests: usize,
    pub(crate) continuation_requests: usize,
    pub(crate) token_lifetime_ms: i64,
    pub(crate) ping_interval: Duration,
    /// None: replay everything after Last-Event-Id; Some(n): at most the last n.
    pub(crate) replay_limit: Option<usize>,
    pub(crate) rate: usize,
    pub(crate) fail_routing: bool,
    pub(crate) business_hours_open: bool,
    next_subject: u64,
    next_agent: u64,
}

impl MiawState {
    pub(crate) fn new() -> Self {
        Self {
            tokens: HashMap::new(),
            subjects: HashMap::new(),
            conversations: Vec::new(),
            token_requests: 0,
            continuation_requests: 0,
            token_lifetime_ms: 3_600_000,
            ping_interval: DEFAULT_PING,
            replay_limit: None,
            rate: DEFAULT_RATE,
            fail_routing: false,
            business_hours_open: true,
            next_subject: 1,
            next_agent: 1,
        }
    }

    fn conv_index(&self, id: &str) -> Option<usize> {
        self.conversations.iter().position(|c| c.id == id)
    }

    /// Appends an entry to a conversation and publishes it on the subject's stream.
    fn emit(
        &mut self,
        idx: usize,
        kind: &str,
        role: &str,
        display: &str,
        sender_subject: &str,
        payload: Value,
    ) -> String {
        let identifier = uuid::Uuid::new_v4().to_string();
        let now = chrono::Utc::now().timestamp_millis();
        let mut payload = payload;
        payload["entryType"] = json!(kind);
        let text = payload["abstractMessage"]["staticContent"]["text"]
            .as_str()
            .map(str::to_owned);
        let message_id = payload["id"].as_str().map(str::to_owned);
        let entry = json!({
            "identifier": identifier,
            "entryType": kind,
            "senderDisplayName": display,
            "sender": {"role": role, "appType": app_type(role), "subject": sender_subject},
            "entryPayload": payload.to_string(),
            "clientTimestamp": now,
            "transcriptedTimestamp": now,
        });
        let conv = &mut self.conversations[idx];
        conv.entries.push((
            SimMiawEntry {
                identifier: identifier.clone(),
                role: role.to_owned(),
                kind: kind.to_owned(),
                text,
                message_id,
                transcripted_timestamp: now,
            },
            entry.clone(),
        ));
        let data = json!({"conversationId": conv.id, "conversationEntry": entry});
        let subject = conv.subject.clone();
        self.publish(&subject, event_name(kind), &data.to_string());
        identifier
    }

    fn publish(&mut self, subject: &str, event: &str, data: &str) {
        let sub = self
            .subjects
            .entry(subject.to_owned())
            .or_insert_with(Subject::new);
        let id = sub.next_event;
        sub.next_event += 1;
        let frame = Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n"));
        sub.events.push((id, frame.clone()));
        if sub.silenced.load(Ordering::Relaxed) {
            return;
        }
        // A full channel (client not reading) or a gone client: the stream is dropped.
        sub.senders
            .retain(|tx| tx.try_send(Frame::Event(frame.clone())).is_ok());
    }

    fn route(&mut self, idx: usize, routing_type: &str) {
        if self.fail_routing {
            self.conversations[idx].routing_status = "NEEDS_ROUTING".to_owned();
            self.emit(
                idx,
                "RoutingResult",
                "Router",
                "Router",
                "router",
                json!({"routingType": routing_type, "failureType": "RoutingError", "failureReason": "No queue available"}),
            );
        } else {
            self.conversations[idx].routing_status = "ROUTED".to_owned();
            self.emit(
                idx,
                "RoutingResult",
                "Router",
                "Router",
                "router",
                json!({"routingType": routing_type, "failureType": "None", "failureReason": ""}),
            );
            self.emit(
                idx,
                "QueuePosition",
                "System",
                "System",
                "system",
                json!({"queuePosition": 1}),
            );
        }
    }

    fn issue(&mut self, subject: &str) -> Result<String, SimResponse> {
        let now = chrono::Utc::now();
        let exp_ms = now.timestamp_millis() + self.token_lifetime_ms;
        let claims = json!({
            "sub": subject,
            "exp": exp_ms.div_euclid(1000),
            "iat": now.timestamp(),
            "orgId": ORG_ID,
            "esDeveloperName": ES_DEVELOPER_NAME,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        let key = jsonwebtoken::EncodingKey::from_secret(JWT_KEY)
            .map_err(|_| SimResponse::json(500, &json!({"message": "token signing failed"})))?;
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
            .map_err(|_| SimResponse::json(500, &json!({"message": "token signing failed"})))?;
        self.tokens.insert(
            token.clone(),
            Token {
                subject: subject.to_owned(),
                exp_ms,
                revoked: false,
            },
        );
        self.subjects
            .entry(subject.to_owned())
            .or_insert_with(Subject::new);
        Ok(token)
    }

    fn last_event_id(&self, subject: &str) -> String {
        self.subjects
            .get(subject)
            .map_or(0, |s| s.next_event - 1)
            .to_string()
    }

    /// The subject of a valid bearer token, or the 401 answer.
    pub(crate) fn authorize(&self, req: &Req) -> Result<(String, i64), SimResponse> {
        let token = bearer_token(&req.headers).unwrap_or_default();
        match self.tokens.get(&token) {
            Some(t) if t.revoked || t.exp_ms <= chrono::Utc::now().timestamp_millis() => {
                Err(unauthorized(true))
            }
            Some(t) => Ok((t.subject.clone(), t.exp_ms)),
            None => Err(unauthorized(false)),
        }
    }

    /// Revokes the tokens of one subject (or all); their streams get the error event.
    pub(crate) fn expire_tokens(&mut self, subject: Option<&str>) {
        for t in self.tokens.values_mut() {
            if subject.is_none_or(|s| s == t.subject) {
                t.revoked = true;
            }
        }
        for (name, sub) in &mut self.subjects {
            if subject.is_none_or(|s| s == name) {
                for tx in sub.senders.drain(..) {
                    let _ = tx.try_send(Frame::Expired);
                }
            }
        }
    }

    pub(crate) fn drop_streams(&mut self, subject: Option<&str>) {
        for (name, sub) in &mut self.subjects {
            if subject.is_none_or(|s| s == name) {
                sub.senders.clear();
            }
        }
    }

    pub(crate) fn streams_open(&self) -> usize {
        self.subjects.values().map(|s| s.open).sum()
    }

    fn subject_of(&self, conversation_id: &str) -> Option<String> {
        self.conv_index(conversation_id)
            .map(|i| self.conversations[i].subject.clone())
    }

    pub(crate) fn snapshot(&self) -> Vec<SimMiawConversation> {
        self.conversations
            .iter()
            .map(|c| {
                let sub = self.subjects.get(&c.subject);
                SimMiawConversation {
                    id: c.id.clone(),
                    subject: c.subject.clone(),
                    routing_status: c.routing_status.clone(),
                    routing_attributes: c.routing_attributes.clone(),
                    closed: c.closed,
                    session_active: c.session_active,
                    entries: c.entries.iter().map(|(e, _)| e.clone()).collect(),
                    customer_messages: c.customer_messages.clone(),
                    typing: c.typing.clone(),
                    streams_open: sub.map_or(0, |s| s.open),
                    max_concurrent_streams: sub.map_or(0, |s| s.max_open),
                    connects: sub.map_or(0, |s| s.connects),
                    connect_last_event_ids: sub
                        .map(|s| s.last_event_ids.clone())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    // ---- agent side ----

    fn agent_joins(&mut self, idx: usize, name: &str) -> String {
        let subject = format!("005SIM{:09}", self.next_agent);
        self.next_agent += 1;
        self.conversations[idx].agent = Some((name.to_owned(), subject.clone()));
        self.conversations[idx].routing_status = "ROUTED".to_owned();
        self.emit(
            idx,
            "ParticipantChanged",
            "System",
            "System",
            "system",
            json!({"entries": [{"operation": "add", "participant": {"role": "Agent", "subject": subject, "appType": "agent"}, "displayName": name}]}),
        );
        self.emit(
            idx,
            "SessionStatusChanged",
            "System",
            "System",
            "system",
            json!({"sessionStatus": "Active", "sessionEndedByRole": ""}),
        )
    }

    fn agent_removed(&mut self, idx: usize, status: &str) {
        let (name, subject) = self.conversations[idx]
            .agent
            .take()
            .unwrap_or_else(|| ("Alex Agent".to_owned(), "005SIM000000000".to_owned()));
        self.conversations[idx].routing_status = status.to_owned();
        self.emit(
            idx,
            "ParticipantChanged",
            "System",
            "System",
            "system",
            json!({"entries": [{"operation": "remove", "participant": {"role": "Agent", "subject": subject, "appType": "agent"}, "displayName": name}]}),
        );
    }

    fn agent(&self, idx: usize) -> (String, String) {
        self.conversations[idx]
            .agent
            .clone()
            .unwrap_or_else(|| ("Alex Agent".to_owned(), "005SIM000000000".to_owned()))
    }

    fn agent_replies(&mut self, idx: usize, text: &str) -> String {
        let (name, subject) = self.agent(idx);
        let id = uuid::Uuid::new_v4().to_string();
        self.emit(
            idx,
            "Message",
            "Agent",
            &name,
            &subject,
            json!({"id": id, "abstractMessage": {"messageType": "StaticContentMessage", "id": id, "staticContent": {"formatType": "Text", "text": text}}}),
        )
    }

    fn agent_typing(&mut self, idx: usize, started: bool) -> String {
        let (name, subject) = self.agent(idx);
        let kind = if started {
            "TypingStartedIndicator"
        } else {
            "TypingStoppedIndicator"
        };
        self.emit(idx, kind, "Agent", &name, &subject, json!({}))
    }

    fn end_session(&mut self, idx: usize) {
        self.conversations[idx].session_active = false;
        self.emit(
            idx,
            "SessionStatusChanged",
            "System",
            "System",
            "system",
            json!({"sessionStatus": "Ended", "sessionEndedByRole": "Agent"}),
        );
        if self.conversations[idx].agent.is_some() {
            self.agent_removed(idx, "NEEDS_ROUTING");
        }
    }

    fn transfer(&mut self, idx: usize, to: Option<&str>) {
        self.agent_removed(idx, "TRANSFER");
        self.emit(
            idx,
            "RoutingResult",
            "Router",
            "Router",
            "router",
            json!({"routingType": "Transfer", "failureType": "None", "failureReason": ""}),
        );
        self.conversations[idx].routing_status = "TRANSFER".to_owned();
        if let Some(name) = to {
            self.agent_joins(idx, name);
        }
    }

    fn queue_position(&mut self, idx: usize, n: u64) {
        self.emit(
            idx,
            "QueuePosition",
            "System",
            "System",
            "system",
            json!({"queuePosition": n}),
        );
    }
}

fn app_type(role: &str) -> &'static str {
    match role {
        "Agent" | "Supervisor" => "agent",
        "EndUser" => "iamessage",
        "Chatbot" => "chatbot",
        _ => "conversation",
    }
}

pub(crate) fn event_name(kind: &str) -> &'static str {
    match kind {
        "Message" => "CONVERSATION_MESSAGE",
        "ParticipantChanged" => "CONVERSATION_PARTICIPANT_CHANGED",
        "RoutingResult" => "CONVERSATION_ROUTING_RESULT",
        "TypingStartedIndicator" => "CONVERSATION_TYPING_STARTED_INDICATOR",
        "TypingStoppedIndicator" => "CONVERSATION_TYPING_STOPPED_INDICATOR",
        "SessionStatusChanged" => "CONVERSATION_SESSION_STATUS_CHANGED",
        "CloseConversation" => "CONVERSATION_CLOSE_CONVERSATION",
        "QueuePosition" => "CONVERSATION_QUEUE_POSITION",
        _ => "CONVERSATION_UNKNOWN",
    }
}

fn msg(status: u16, message: &str) -> SimResponse {
    SimResponse::json(status, &json!({"message": message}))
}

pub(crate) fn unauthorized(expired: bool) -> SimResponse {
    msg(
        401,
        if expired {
            "Jwt is expired"
        } else {
            "Invalid token"
        },
    )
}

pub(crate) fn org_ok(org: &str) -> bool {
    org == ORG_ID || org.strip_suffix("AAA") == Some(ORG_ID)
}

/// Strict lowercase UUID v4.
fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

/// The REST endpoints.
pub(crate) fn handle(st: &mut State, req: &Req) -> SimResponse {
    let m = &mut st.miaw;
    let path = req.path.trim_end_matches('/');
    let method = req.method.as_str();
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if method == "GET" && path == "/embeddedservice/v1/businesshours" {
        let org = query_param(req.query.as_deref(), "orgId").unwrap_or_default();
        let name = query_param(req.query.as_deref(), "esConfigName").unwrap_or_default();
        if !org_ok(&org) || name != ES_DEVELOPER_NAME {
            return msg(404, "Not Found");
        }
        let now = chrono::Utc::now().timestamp_millis();
        let hours = if m.business_hours_open {
            json!([{"startTime": now - 3_600_000, "endTime": now + 3_600_000}])
        } else {
            json!([{"startTime": now + 3_600_000, "endTime": now + 7_200_000}])
        };
        return SimResponse::json(
            200,
            &json!({"businessHoursInfo": {"isActive": m.business_hours_open, "businessHours": hours}}),
        );
    }
    if method == "POST" && path == "/iamessage/api/v2/authorization/unauthenticated/access-token" {
        m.token_requests += 1;
        let org = body["orgId"].as_str().unwrap_or_default();
        let name = body["esDeveloperName"].as_str().unwrap_or_default();
        if !org_ok(org) || name != ES_DEVELOPER_NAME {
            return msg(400, "Invalid orgId or esDeveloperName");
        }
        let subject = format!("v2/iamessage/UNAUTH/NA/uid:{}", uuid::Uuid::new_v4());
        m.next_subject += 1;
        let token = match m.issue(&subject) {
            Ok(t) => t,
            Err(r) => return r,
        };
        return SimResponse::json(
            200,
            &json!({
                "accessToken": token,
                "lastEventId": "0",
                "context": {"deviceId": uuid::Uuid::new_v4().to_string(), "configuration": {"embeddedServiceConfig": {
                    "name": ES_DEVELOPER_NAME,
                    "forms": [{"formType": "PreChat", "formFields": [
                        {"name": "_firstName", "isHidden": false},
                        {"name": "_email", "isHidden": false},
                        {"name": "Escalator_Transcript", "isHidden": true}]}]}}}
            }),
        );
    }
    if method == "GET" && path == "/iamessage/api/v2/authorization/continuation-access-token" {
        m.continuation_requests += 1;
        let (subject, _) = match m.authorize(req) {
            Ok(s) => s,
            Err(r) => return r,
        };
        let token = match m.issue(&subject) {
            Ok(t) => t,
            Err(r) => return r,
        };
        let last = m.last_event_id(&subject);
        return SimResponse::json(200, &json!({"accessToken": token, "lastEventId": last}));
    }
    let Some(rest) = path.strip_prefix("/iamessage/api/v2/conversation") else {
        return msg(404, "Not Found");
    };
    let (subject, _) = match m.authorize(req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        if method != "POST" {
            return msg(405, "Method Not Allowed");
        }
        let id = body["conversationId"].as_str().unwrap_or_default();
        if !is_uuid_v4(id) {
            return msg(400, "Specify the conversationId in UUID format");
        }
        if body["esDeveloperName"].as_str() != Some(ES_DEVELOPER_NAME) {
            return msg(400, "Invalid esDeveloperName");
        }
        if let Some(i) = m.conv_index(id) {
            if m.conversations[i].subject != subject {
                return msg(403, "Forbidden");
            }
            return msg(409, "Conversation already exists");
        }
        m.conversations.push(Conversation {
            id: id.to_owned(),
            subject,
            routing_status: "INITIAL".to_owned(),
            routing_attributes: body["routingAttributes"].clone(),
            closed: false,
            session_active: true,
            entries: Vec::new(),
            message_ids: HashSet::new(),
            customer_messages: Vec::new(),
            typing: Vec::new(),
            sent: VecDeque::new(),
            agent: None,
        });
        let idx = m.conversations.len() - 1;
        m.route(idx, "Initial");
        return SimResponse::json(201, &json!({"conversationId": id}));
    }
    let Some(idx) = m.conv_index(segs[0]) else {
        return msg(404, "Conversation not found");
    };
    if m.conversations[idx].subject != subject {
        return msg(403, "Forbidden");
    }
    match (method, segs.get(1).copied(), segs.len()) {
        ("GET", None, 1) => {
            let c = &m.conversations[idx];
            SimResponse::json(
                200,
                &json!({"conversationId": c.id, "routingStatus": c.routing_status}),
            )
        }
        ("DELETE", None, 1) => {
            if !m.conversations[idx].closed {
                m.conversations[idx].closed = true;
                m.conversations[idx].session_active = false;
                m.emit(
                    idx,
                    "CloseConversation",
                    "EndUser",
                    "Customer",
                    &subject,
                    json!({}),
                );
            }
            SimResponse::empty(204)
        }
        ("POST", Some("message"), 2) => {
            let id = body["message"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let text = body["message"]["staticContent"]["text"]
                .as_str()
                .map(str::to_owned);
            let (Some(text), false) = (text, id.is_empty()) else {
                return msg(400, "Invalid message");
            };
            if m.conversations[idx].message_ids.contains(&id) {
                return SimResponse::json(202, &json!({}));
            }
            let new_session = body["isNewMessagingSession"].as_bool() == Some(true);
            let c = &mut m.conversations[idx];
            if (!c.session_active || c.closed) && !new_session {
                return msg(417, "No active messaging session");
            }
            let now = Instant::now();
            while c
                .sent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= RATE_WINDOW)
            {
                c.sent.pop_front();
            }
            if c.sent.len() >= m.rate {
                let wait = c.sent.front().map_or(RATE_WINDOW, |t| {
                    RATE_WINDOW.saturating_sub(now.duration_since(*t))
                });
                return msg(429, "Too many requests")
                    .with_header("retry-after", (wait.as_secs() + 1).to_string());
            }
            c.sent.push_back(now);
            c.message_ids.insert(id.clone());
            c.customer_messages.push((id.clone(), text.clone()));
            let restart = !c.session_active;
            if restart {
                c.session_active = true;
                c.closed = false;
                if body["routingAttributes"].is_object() {
                    c.routing_attributes = body["routingAttributes"].clone();
                }
            }
            m.emit(
                idx,
                "Message",
                "EndUser",
                "Customer",
                &subject,
                json!({"id": id, "abstractMessage": {"messageType": "StaticContentMessage", "id": id, "staticContent": {"formatType": "Text", "text": text}}}),
            );
            if restart {
                m.route(idx, "Initial");
            }
            SimResponse::json(202, &json!({}))
        }
        ("POST", Some("entry"), 2) => {
            let kind = body["entryType"].as_str().unwrap_or_default();
            if kind != "TypingStartedIndicator" && kind != "TypingStoppedIndicator" {
                return msg(400, "Invalid entryType");
            }
            m.conversations[idx].typing.push(kind.to_owned());
            SimResponse::json(202, &json!({}))
        }
        ("GET", Some("entries"), 2) => {
            let q = req.query.as_deref();
            let limit = query_param(q, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(50)
                .clamp(1, 1000);
            let start = query_param(q, "startTimestamp")
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0);
            let entries: Vec<&Value> = m.conversations[idx]
                .entries
                .iter()
                .filter(|(e, _)| e.transcripted_timestamp >= start)
                .take(limit)
                .map(|(_, v)| v)
                .collect();
            SimResponse::json(200, &json!({"conversationEntries": entries}))
        }
        _ => msg(404, "Not Found"),
    }
}

/// `/_sim/salesforce/miaw/...` control API.
pub(crate) fn control(shared: &Arc<Shared>, req: &Req) -> SimResponse {
    let path = req
        .path
        .trim_end_matches('/')
        .strip_prefix("/_sim/salesforce/miaw")
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let ok = || SimResponse::json(200, &json!({"ok": true}));
    let conv = body["conversation_id"].as_str().unwrap_or_default();
    let mut st = shared.lock();
    let m = &mut st.miaw;
    match (req.method.as_str(), path) {
        ("GET", "/conversations") => return SimResponse::json(200, &m.snapshot()),
        ("GET", "/streams") => {
            return SimResponse::json(200, &json!({"open": m.streams_open()}));
        }
        ("GET", "/counts") => {
            return SimResponse::json(
                200,
                &json!({"token_requests": m.token_requests, "continuation_requests": m.continuation_requests}),
            );
        }
        ("POST", "/drop-streams") => {
            if conv.is_empty() {
                m.drop_streams(None);
            } else {
                match m.subject_of(conv) {
                    Some(s) => m.drop_streams(Some(&s)),
                    None => return not_found(),
                }
            }
            return ok();
        }
        ("POST", "/expire-tokens") => {
            if conv.is_empty() {
                m.expire_tokens(None);
            } else {
                match m.subject_of(conv) {
                    Some(s) => m.expire_tokens(Some(&s)),
                    None => return not_found(),
                }
            }
            return ok();
        }
        ("POST", "/silence") => {
            let silent = body["silent"].as_bool().unwrap_or(true);
            let Some(s) = m.subject_of(conv) else {
                return not_found();
            };
            if let Some(sub) = m.subjects.get(&s) {
                sub.silenced.store(silent, Ordering::Relaxed);
            }
            return ok();
        }
        ("POST", "/replay-limit") => {
            m.replay_limit = body["limit"].as_u64().map(|n| n as usize);
            return ok();
        }
        ("POST", "/token-lifetime") => match body["ms"].as_i64() {
            Some(ms) => {
                m.token_lifetime_ms = ms;
                return ok();
            }
            None => return invalid("expected {\"ms\": N}"),
        },
        ("POST", "/ping-interval") => match body["ms"].as_u64() {
            Some(ms) if ms > 0 => {
                m.ping_interval = Duration::from_millis(ms);
                return ok();
            }
            _ => return invalid("expected {\"ms\": N > 0}"),
        },
        ("POST", "/rate-limit") => match body["per_minute"].as_u64() {
            Some(n) => {
                m.rate = n as usize;
                return ok();
            }
            None => return invalid("expected {\"per_minute\": N}"),
        },
        ("POST", "/fail-routing") => {
            m.fail_routing = body["enabled"].as_bool().unwrap_or(true);
            return ok();
        }
        ("POST", "/business-hours") => {
            m.business_hours_open = body["open"].as_bool().unwrap_or(true);
            return ok();
        }
        ("POST", "/bench/emit") => {
            drop(st);
            return bench_emit(shared, &body);
        }
        _ => {}
    }
    let Some(idx) = m.conv_index(conv) else {
        return if path.starts_with("/agent/") || path == "/queue-position" || path == "/end-session"
        {
            not_found()
        } else {
            SimResponse::json(404, &json!({"error": "unknown control endpoint"}))
        };
    };
    let name = body["name"].as_str();
    match (req.method.as_str(), path) {
        ("POST", "/agent/join") => {
            m.agent_joins(idx, name.unwrap_or("Alex Agent"));
        }
        ("POST", "/agent/reply") => {
            let text = body["text"].as_str().unwrap_or_default();
            let id = m.agent_replies(idx, text);
            return SimResponse::json(200, &json!({"identifier": id}));
        }
        ("POST", "/agent/typing") => {
            m.agent_typing(idx, body["typing"].as_bool().unwrap_or(true));
        }
        ("POST", "/agent/leave") => m.agent_removed(idx, "NEEDS_ROUTING"),
        ("POST", "/agent/transfer") => m.transfer(idx, name),
        ("POST", "/end-session") => m.end_session(idx),
        ("POST", "/queue-position") => {
            m.queue_position(idx, body["position"].as_u64().unwrap_or(1));
        }
        _ => return SimResponse::json(404, &json!({"error": "unknown control endpoint"})),
    }
    ok()
}

fn not_found() -> SimResponse {
    SimResponse::json(404, &json!({"error": "unknown conversation"}))
}

fn invalid(message: &str) -> SimResponse {
    SimResponse::json(400, &json!({"error": message}))
}

/// `{"count", "rate", "conversation_ids"?}`: agent messages with `emit_us=<unix µs>`,
/// round-robin, paced in a background task; answers at once.
fn bench_emit(shared: &Arc<Shared>, body: &Value) -> SimResponse {
    let count = body["count"].as_u64().unwrap_or(0);
    let rate = body["rate"].as_f64().filter(|r| *r > 0.0).unwrap_or(100.0);
    let ids: Vec<String> = match body["conversation_ids"].as_array() {
        Some(list) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        None => shared
            .lock()
            .miaw
            .conversations
            .iter()
            .filter(|c| !c.closed)
            .map(|c| c.id.clone())
            .collect(),
    };
    if ids.is_empty() {
        return invalid("no open conversations");
    }
    let shared = Arc::clone(shared);
    let period = Duration::from_secs_f64(1.0 / rate);
    let conversations = ids.len();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        for n in 0..count {
            tick.tick().await;
            let id = &ids[(n as usize) % ids.len()];
            let emit_us = chrono::Utc::now().timestamp_micros();
            let mut st = shared.lock();
            if let Some(idx) = st.miaw.conv_index(id) {
                st.miaw
                    .agent_replies(idx, &format!("bench {n} emit_us={emit_us}"));
            }
        }
    });
    SimResponse::json(
        202,
        &json!({"count": count, "conversations": conversations}),
    )
}

/// Runs `f` on the conversation's index, or None when unknown.
fn with_conv<T>(
    shared: &Shared,
    id: &str,
    f: impl FnOnce(&mut MiawState, usize) -> T,
) -> Option<T> {
    let mut st = shared.lock();
    let idx = st.miaw.conv_index(id)?;
    Some(f(&mut st.miaw, idx))
}

impl SimHandle {
    /// MIAW conversations in creation order, with entries and stream counters.
    pub fn miaw_conversations(&self) -> Vec<SimMiawConversation> {
        self.shared.lock().miaw.snapshot()
    }

    /// (access-token requests, continuation-token requests).
    pub fn miaw_token_counts(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.miaw.token_requests, st.miaw.continuation_requests)
    }

    /// SSE streams open now, over all subjects.
    pub fn miaw_streams_open(&self) -> usize {
        self.shared.lock().miaw.streams_open()
    }

    /// An agent joins (ParticipantChanged add, SessionStatusChanged Active). False: unknown.
    pub fn miaw_agent_joins(&self, conversation_id: &str, name: &str) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| m.agent_joins(i, name)).is_some()
    }

    /// The agent replies; returns the entry identifier.
    pub fn miaw_agent_replies(&self, conversation_id: &str, text: &str) -> Option<String> {
        with_conv(&self.shared, conversation_id, |m, i| {
            m.agent_replies(i, text)
        })
    }

    pub fn miaw_agent_typing(&self, conversation_id: &str, started: bool) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| {
            m.agent_typing(i, started)
        })
        .is_some()
    }

    /// ParticipantChanged remove; routingStatus NEEDS_ROUTING.
    pub fn miaw_agent_leaves(&self, conversation_id: &str) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| {
            m.agent_removed(i, "NEEDS_ROUTING")
        })
        .is_some()
    }

    /// Remove (TRANSFER), RoutingResult Transfer, then `to` joins (ROUTED) when given.
    pub fn miaw_transfer(&self, conversation_id: &str, to: Option<&str>) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| m.transfer(i, to)).is_some()
    }

    /// SessionStatusChanged Ended by Agent; messages get 417 until a new session.
    pub fn miaw_end_session(&self, conversation_id: &str) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| m.end_session(i)).is_some()
    }

    /// The messaging session ends with no event on the stream (an
    /// inactivity timeout whose end event never reached the client):
    /// messages get 417 until one starts a new session.
    pub fn miaw_lapse_session(&self, conversation_id: &str) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| {
            m.conversations[i].session_active = false;
        })
        .is_some()
    }

    pub fn miaw_queue_position(&self, conversation_id: &str, position: u64) -> bool {
        with_conv(&self.shared, conversation_id, |m, i| {
            m.queue_position(i, position)
        })
        .is_some()
    }

    /// New conversations fail routing (RoutingError, NEEDS_ROUTING).
    pub fn miaw_fail_routing(&self, fail: bool) {
        self.shared.lock().miaw.fail_routing = fail;
    }

    /// Abruptly closes the streams of one conversation's subject, or all.
    pub fn miaw_drop_streams(&self, conversation_id: Option<&str>) {
        let mut st = self.shared.lock();
        match conversation_id {
            Some(c) => {
                if let Some(s) = st.miaw.subject_of(c) {
                    st.miaw.drop_streams(Some(&s));
                }
            }
            None => st.miaw.drop_streams(None),
        }
    }

    /// Expires tokens now (one conversation's subject, or all).
    pub fn miaw_expire_tokens(&self, conversation_id: Option<&str>) {
        let mut st = self.shared.lock();
        match conversation_id {
            Some(c) => {
                if let Some(s) = st.miaw.subject_of(c) {
                    st.miaw.expire_tokens(Some(&s));
                }
            }
            None => st.miaw.expire_tokens(None),
        }
    }

    /// Stops (or resumes) sending anything, pings included, on the subject's streams.
    pub fn miaw_silence(&self, conversation_id: &str, silent: bool) {
        let st = self.shared.lock();
        if let Some(s) = st.miaw.subject_of(conversation_id)
            && let Some(sub) = st.miaw.subjects.get(&s)
        {
            sub.silenced.store(silent, Ordering::Relaxed);
        }
    }

    /// None: replay all; Some(0): no replay; Some(n): at most the last n.
    pub fn miaw_replay_limit(&self, limit: Option<usize>) {
        self.shared.lock().miaw.replay_limit = limit;
    }

    /// Lifetime of tokens issued from now on (default 3,600,000 ms).
    pub fn miaw_token_lifetime_ms(&self, ms: i64) {
        self.shared.lock().miaw.token_lifetime_ms = ms;
    }

    pub fn miaw_ping_interval(&self, every: Duration) {
        self.shared.lock().miaw.ping_interval = every;
    }

    /// Messages accepted per conversation per 60 s (default 22).
    pub fn miaw_rate_limit(&self, per_minute: usize) {
        self.shared.lock().miaw.rate = per_minute;
    }

    pub fn miaw_business_hours(&self, open: bool) {
        self.shared.lock().miaw.business_hours_open = open;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_check_is_strict() {
        assert!(is_uuid_v4("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!is_uuid_v4("0F8FAD5B-D9CB-469F-A165-70867728950E"));
        assert!(!is_uuid_v4("0f8fad5b-d9cb-169f-a165-70867728950e"));
        assert!(!is_uuid_v4("0f8fad5b-d9cb-469f-c165-70867728950e"));
        assert!(!is_uuid_v4("0f8fad5bd9cb469fa16570867728950e"));
    }

    #[test]
    fn org_id_forms() {
        assert!(org_ok("00DSIM000000001"));
        assert!(org_ok("00DSIM000000001AAA"));
        assert!(!org_ok("00DSIM000000002"));
    }
}
