//! Sunshine Conversations (Conversations API v2) under `/sc/v2/apps/{appId}/`:
//! users, personal conversations, messages, activities and passControl to
//! Agent Workspace, which makes a messaging ticket in the Zendesk state.
//!
//! Shapes follow the official OpenAPI spec
//! (`sunshine-conversations-openapi.yaml`); errors are
//! `{"errors":[{"code","title"}]}` and never echo request data.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::state::{Req, Shared, SimResponse, State};
use super::types::{SimSunshineConversation, SimSunshineMessage, SimSunshineUser};
use super::util::{basic_credentials, percent_decode, query_param};
use super::webhooks;
use super::zendesk::MessagingTicket;

/// Longest text of one message (characters).
pub(crate) const MAX_TEXT_CHARS: usize = 4096;
/// Messages a conversation may hold before posting answers 423.
pub(crate) const MESSAGE_LIMIT: usize = 30_000;
/// Largest metadata object (serialized bytes).
const MAX_METADATA_BYTES: usize = 4096;
/// Fixed page size of `GET .../messages`.
const MESSAGE_PAGE: usize = 100;
/// Messages copied into a ticket when passControl names no `first_message_id`.
const DEFAULT_TRANSCRIPT: usize = 10;

/// The Agent Workspace switchboard integration (who has control after passControl).
pub(crate) const AGENT_WORKSPACE: SwitchboardIntegration = SwitchboardIntegration {
    id: "5ef21b86e933b7355c11c604",
    name: "zd-agentWorkspace",
    integration_id: "5ef21b86e933b7355c11c605",
    integration_type: "zd:agentWorkspace",
};
/// The default responder (in control of a fresh conversation).
pub(crate) const ANSWER_BOT: SwitchboardIntegration = SwitchboardIntegration {
    id: "5ef21b86e933b7355c11c606",
    name: "zd-answerBot",
    integration_id: "5ef21b86e933b7355c11c607",
    integration_type: "zd:answerBot",
};

/// A switchboard integration as `activeSwitchboardIntegration` shows it.
pub(crate) struct SwitchboardIntegration {
    pub(crate) id: &'static str,
    pub(crate) name: &'static str,
    pub(crate) integration_id: &'static str,
    pub(crate) integration_type: &'static str,
}

impl SwitchboardIntegration {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "integrationId": self.integration_id,
            "integrationType": self.integration_type,
        })
    }

    fn answers_to(&self, reference: &str) -> bool {
        reference == self.id || reference == self.name || reference == self.integration_type
    }
}

/// Users and conversations of every app, plus the per-app switches.
pub(crate) struct SunshineState {
    pub(crate) users: Vec<SimSunshineUser>,
    pub(crate) conversations: Vec<SimSunshineConversation>,
    /// `settings.multiConvoEnabled` per app id (absent = on).
    pub(crate) multi_convo: HashMap<String, bool>,
    /// Messages per conversation before 423 (30,000; lowered by tests).
    pub(crate) message_limit: usize,
    /// The spec allows users only `conversation:read`; true accepts user typing too.
    pub(crate) user_typing_allowed: bool,
    next_id: u64,
}

impl SunshineState {
    pub(crate) fn new() -> Self {
        Self {
            users: Vec::new(),
            conversations: Vec::new(),
            multi_convo: HashMap::new(),
            message_limit: MESSAGE_LIMIT,
            user_typing_allowed: false,
            next_id: 1,
        }
    }

    /// A 24-hex-digit id like Sunshine's; increasing, so ids order like creation.
    fn new_id(&mut self) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("5f{n:022x}")
    }

    pub(crate) fn conversation_mut(&mut self, id: &str) -> Option<&mut SimSunshineConversation> {
        self.conversations.iter_mut().find(|c| c.id == id)
    }

    /// Appends an Agent Workspace (business) message; returns its id.
    pub(crate) fn add_agent_message(
        &mut self,
        conversation_id: &str,
        agent_id: u64,
        agent_name: &str,
        text: &str,
    ) -> Option<String> {
        let id = self.new_id();
        let conv = self.conversation_mut(conversation_id)?;
        conv.messages.push(SimSunshineMessage {
            id: id.clone(),
            author_type: "business".to_owned(),
            user_id: None,
            display_name: Some(agent_name.to_owned()),
            text: Some(text.to_owned()),
            content: json!({"type": "text", "text": text}),
            metadata: json!({"__zendesk_msg.agent.id": agent_id.to_string()}),
            source_type: AGENT_WORKSPACE.integration_type.to_owned(),
            received: Utc::now(),
        });
        Some(id)
    }

    fn multi_convo(&self, app: &str) -> bool {
        self.multi_convo.get(app).copied().unwrap_or(true)
    }

    fn user(&self, app: &str, id_or_external: &str) -> Option<&SimSunshineUser> {
        let in_app = || self.users.iter().filter(|u| u.app_id == app);
        in_app()
            .find(|u| u.id == id_or_external)
            .or_else(|| in_app().find(|u| u.external_id.as_deref() == Some(id_or_external)))
    }
}

/// Handles any request under `/sc/`.
pub(crate) fn handle(shared: &Shared, st: &mut State, req: &Req) -> SimResponse {
    let rest = req.path.strip_prefix("/sc/v2/apps/").unwrap_or_default();
    let segs: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let Some(app) = segs.first().cloned() else {
        return error(404, "not_found", "Resource not found");
    };
    if let Err(denied) = authorize(shared, req, &app) {
        return denied;
    }
    let segs: Vec<&str> = segs.iter().skip(1).map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", []) => SimResponse::json(
            200,
            &json!({"app": {"id": app, "displayName": "Simulated app", "settings": {"multiConvoEnabled": st.sun.multi_convo(&app)}}}),
        ),
        ("POST", ["users"]) => create_user(&mut st.sun, &app, req),
        ("GET", ["users", id]) => match st.sun.user(&app, id) {
            Some(u) => SimResponse::json(200, &json!({"user": user_json(u)})),
            None => user_not_found(),
        },
        ("POST", ["conversations"]) => create_conversation(&mut st.sun, &app, req),
        ("GET", ["conversations"]) => list_conversations(&st.sun, &app, req),
        ("GET", ["conversations", id]) => match find_conversation(&st.sun, &app, id) {
            Some(c) => SimResponse::json(
                200,
                &json!({"conversation": conversation_json(c, is_default(&st.sun, c))}),
            ),
            None => conversation_not_found(),
        },
        ("POST", ["conversations", id, "messages"]) => post_message(st, &app, id, req),
        ("GET", ["conversations", id, "messages"]) => list_messages(shared, &st.sun, &app, id, req),
        ("POST", ["conversations", id, "activity"]) => post_activity(&mut st.sun, &app, id, req),
        ("POST", ["conversations", id, "passControl"]) => pass_control(st, &app, id, req),
        _ => error(404, "not_found", "Resource not found"),
    }
}

fn error(status: u16, code: &str, title: &str) -> SimResponse {
    SimResponse::json(status, &json!({"errors": [{"code": code, "title": title}]}))
}

fn bad_request(title: &str) -> SimResponse {
    error(400, "bad_request", title)
}

fn user_not_found() -> SimResponse {
    error(404, "user_not_found", "User not found")
}

fn conversation_not_found() -> SimResponse {
    error(404, "conversation_not_found", "Conversation not found")
}

/// HTTP Basic `key_id:secret` of a key of this app: 401 for no or a wrong key
/// (or another app's key), 404 for an app no key names.
fn authorize(shared: &Shared, req: &Req, app: &str) -> Result<(), SimResponse> {
    let unauthorized = || error(401, "unauthorized", "Authorization Required");
    let (key_id, secret) = basic_credentials(&req.headers).ok_or_else(unauthorized)?;
    let keys = &shared.settings.sunshine_keys;
    let key = keys
        .iter()
        .find(|(_, k, s)| *k == key_id && *s == secret)
        .ok_or_else(unauthorized)?;
    if !keys.iter().any(|(a, _, _)| a == app) {
        return Err(error(404, "app_not_found", "App not found"));
    }
    if key.0 != app {
        return Err(unauthorized());
    }
    Ok(())
}

fn parse_body(req: &Req) -> Result<Map<String, Value>, SimResponse> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad_request("Request body must be a JSON object")),
    }
}

/// Metadata must be a flat object (strings, numbers, booleans) of at most 4 KB.
fn metadata(body: &Map<String, Value>) -> Result<Value, SimResponse> {
    match body.get("metadata") {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Object(m)) => {
            let flat = m
                .values()
                .all(|v| v.is_string() || v.is_number() || v.is_boolean());
            if !flat {
                return Err(bad_request(
                    "metadata must be a flat object of strings, numbers and booleans",
                ));
            }
            if Value::Object(m.clone()).to_string().len() > MAX_METADATA_BYTES {
                return Err(bad_request("metadata is limited to 4KB"));
            }
            Ok(Value::Object(m.clone()))
        }
        Some(_) => Err(bad_request("metadata must be an object")),
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn user_json(u: &SimSunshineUser) -> Value {
    json!({
        "id": u.id,
        "externalId": u.external_id,
        "signedUpAt": ts(&u.signed_up_at),
        "toBeRetained": false,
        "profile": u.profile,
        "metadata": u.metadata,
        "identities": [],
    })
}

fn create_user(sun: &mut SunshineState, app: &str, req: &Req) -> SimResponse {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let external_id = match body.get("externalId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 1024 => Some(s.clone()),
        Some(_) => return bad_request("externalId must be a string of 1 to 1024 characters"),
    };
    let profile = match body.get("profile") {
        None | Some(Value::Null) => json!({}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return bad_request("profile must be an object"),
    };
    let meta = match metadata(&body) {
        Ok(Value::Null) => json!({}),
        Ok(m) => m,
        Err(e) => return e,
    };
    if let Some(x) = &external_id
        && sun
            .user(app, x)
            .is_some_and(|u| u.external_id.as_ref() == Some(x))
    {
        return error(409, "conflict", "User already exists");
    }
    let user = SimSunshineUser {
        id: sun.new_id(),
        app_id: app.to_owned(),
        external_id,
        profile,
        metadata: meta,
        signed_up_at: Utc::now(),
    };
    let answer = json!({"user": user_json(&user)});
    sun.users.push(user);
    SimResponse::json(201, &answer)
}

fn find_conversation<'a>(
    sun: &'a SunshineState,
    app: &str,
    id: &str,
) -> Option<&'a SimSunshineConversation> {
    sun.conversations
        .iter()
        .find(|c| c.id == id && c.app_id == app)
}

/// True for the user's first personal conversation (its default one).
fn is_default(sun: &SunshineState, c: &SimSunshineConversation) -> bool {
    c.kind == "personal"
        && sun
            .conversations
            .iter()
            .find(|x| x.app_id == c.app_id && x.kind == "personal" && x.user_id == c.user_id)
            .is_none_or(|first| first.id == c.id)
}

fn conversation_json(c: &SimSunshineConversation, is_default: bool) -> Value {
    let active = if c.agent_workspace_active {
        AGENT_WORKSPACE.json()
    } else {
        ANSWER_BOT.json()
    };
    let last = c.messages.last().map_or(c.created_at, |m| m.received);
    json!({
        "id": c.id,
        "type": c.kind,
        "metadata": c.metadata,
        "activeSwitchboardIntegration": active,
        "isDefault": is_default,
        "businessLastRead": null,
        "lastUpdatedAt": ts(&last),
        "createdAt": ts(&c.created_at),
    })
}

fn create_conversation(sun: &mut SunshineState, app: &str, req: &Req) -> SimResponse {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let kind = match body.get("type").and_then(Value::as_str) {
        Some(k @ ("personal" | "sdkGroup")) => k.to_owned(),
        _ => return bad_request("type must be personal or sdkGroup"),
    };
    let meta = match metadata(&body) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let participants = body
        .get("participants")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if kind == "personal" && participants.len() != 1 {
        return bad_request("A personal conversation needs exactly one participant");
    }
    let mut user_id = None;
    for p in &participants {
        let by_id = p.get("userId").and_then(Value::as_str);
        let by_external = p.get("userExternalId").and_then(Value::as_str);
        let reference = match (by_id, by_external) {
            (Some(r), None) | (None, Some(r)) => r,
            _ => return bad_request("A participant needs one of userId or userExternalId"),
        };
        let found = match (by_id, by_external) {
            (Some(id), _) => sun.users.iter().find(|u| u.app_id == app && u.id == id),
            _ => sun
                .users
                .iter()
                .find(|u| u.app_id == app && u.external_id.as_deref() == Some(reference)),
        };
        match found {
            Some(u) => {
                user_id.get_or_insert_with(|| u.id.clone());
            }
            None => return user_not_found(),
        }
    }
    if kind == "personal"
        && !sun.multi_convo(app)
        && sun
            .conversations
            .iter()
            .any(|c| c.app_id == app && c.kind == "personal" && c.user_id == user_id)
    {
        // What the API answers without `settings.multiConvoEnabled` (as the SDKs report it).
        return bad_request(
            "A user can only be part of one personal conversation unless multiConvoEnabled is set for the app",
        );
    }
    let conv = SimSunshineConversation {
        id: sun.new_id(),
        app_id: app.to_owned(),
        kind,
        user_id,
        metadata: meta,
        messages: Vec::new(),
        activities: BTreeMap::new(),
        pass_control_count: 0,
        pass_control_metadata: Vec::new(),
        agent_workspace_active: false,
        ticket_id: None,
        ticket_ids: Vec::new(),
        transcript_message_ids: Vec::new(),
        transcript_from_first_message_id: false,
        whole_transcript: false,
        created_at: Utc::now(),
    };
    let default = is_default(sun, &conv);
    let answer = conversation_json(&conv, default);
    sun.conversations.push(conv);
    SimResponse::json(201, &json!({"conversation": answer}))
}

fn list_conversations(sun: &SunshineState, app: &str, req: &Req) -> SimResponse {
    let q = req.query.as_deref();
    let user = if let Some(id) = query_param(q, "filter[userId]") {
        sun.users.iter().find(|u| u.app_id == app && u.id == id)
    } else if let Some(x) = query_param(q, "filter[userExternalId]") {
        sun.users
            .iter()
            .find(|u| u.app_id == app && u.external_id.as_deref() == Some(x.as_str()))
    } else {
        return bad_request("filter[userId] or filter[userExternalId] is required");
    };
    let Some(user) = user else {
        return user_not_found();
    };
    let conversations: Vec<Value> = sun
        .conversations
        .iter()
        .filter(|c| c.app_id == app && c.user_id.as_deref() == Some(user.id.as_str()))
        .map(|c| conversation_json(c, is_default(sun, c)))
        .collect();
    SimResponse::json(
        200,
        &json!({"conversations": conversations, "meta": {"hasMore": false}, "links": {}}),
    )
}

fn message_json(m: &SimSunshineMessage) -> Value {
    let mut author = json!({"type": m.author_type});
    if let Some(u) = &m.user_id {
        author["userId"] = json!(u);
    }
    if let Some(d) = &m.display_name {
        author["displayName"] = json!(d);
    }
    let mut source = json!({"type": m.source_type});
    if m.source_type == AGENT_WORKSPACE.integration_type {
        source["integrationId"] = json!(AGENT_WORKSPACE.integration_id);
    }
    let mut v = json!({
        "id": m.id,
        "received": ts(&m.received),
        "author": author,
        "content": m.content,
        "source": source,
    });
    if !m.metadata.is_null() {
        v["metadata"] = m.metadata.clone();
    }
    v
}

fn post_message(st: &mut State, app: &str, conv_id: &str, req: &Req) -> SimResponse {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let meta = match metadata(&body) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let Some(conv) = find_conversation(&st.sun, app, conv_id) else {
        return conversation_not_found();
    };
    let Some(author) = body.get("author").and_then(Value::as_object) else {
        return bad_request("author is required");
    };
    let author_type = match author.get("type").and_then(Value::as_str) {
        Some(t @ ("user" | "business")) => t.to_owned(),
        _ => return bad_request("author.type must be user or business"),
    };
    let mut user_id = None;
    if author_type == "user" {
        let by_id = author.get("userId").and_then(Value::as_str);
        let by_external = author.get("userExternalId").and_then(Value::as_str);
        let user = match (by_id, by_external) {
            (Some(id), None) => st.sun.users.iter().find(|u| u.app_id == app && u.id == id),
            (None, Some(x)) => st
                .sun
                .users
                .iter()
                .find(|u| u.app_id == app && u.external_id.as_deref() == Some(x)),
            _ => return bad_request("A user author needs one of userId or userExternalId"),
        };
        match user {
            Some(u) if conv.user_id.as_deref() == Some(u.id.as_str()) => {
                user_id = Some(u.id.clone());
            }
            Some(_) => return bad_request("The author is not a participant of the conversation"),
            None => return user_not_found(),
        }
    }
    let Some(content) = body.get("content").and_then(Value::as_object) else {
        return bad_request("content is required");
    };
    let text = match content.get("type").and_then(Value::as_str) {
        Some("text") => match content.get("text").and_then(Value::as_str) {
            Some(t) if t.trim().is_empty() => return bad_request("content.text is required"),
            Some(t) if t.chars().count() > MAX_TEXT_CHARS => {
                return bad_request("content.text must be at most 4096 characters");
            }
            Some(t) => Some(t.to_owned()),
            None => return bad_request("content.text is required"),
        },
        Some(_) => None,
        None => return bad_request("content.type is required"),
    };
    if conv.messages.len() >= st.sun.message_limit {
        return error(
            423,
            "locked",
            "Message limit of 30000 per conversation reached.",
        );
    }
    let display_name = author
        .get("displayName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let message = SimSunshineMessage {
        id: st.sun.new_id(),
        author_type,
        user_id,
        display_name,
        text,
        content: Value::Object(content.clone()),
        metadata: meta,
        source_type: "api".to_owned(),
        received: Utc::now(),
    };
    let answer = json!({"messages": [message_json(&message)]});
    let echo = (message.author_type == "user").then(|| (message.id.clone(), message.text.clone()));
    let Some(conv) = st.sun.conversation_mut(conv_id) else {
        return conversation_not_found();
    };
    conv.messages.push(message);
    // Real Zendesk reports end-user messages of a messaging ticket as
    // `message_added` too (actor end_user); the worker must not echo them.
    if let (Some((message_id, text)), true, Some(ticket_id)) =
        (echo, conv.agent_workspace_active, conv.ticket_id)
    {
        let requester = st.zd.tickets.get(&ticket_id).map(|t| {
            (
                t.requester_id.to_string(),
                t.requester_name
                    .clone()
                    .unwrap_or_else(|| "Customer".to_owned()),
            )
        });
        if let Some((id, name)) = requester {
            let event = webhooks::message_added(
                ticket_id,
                webhooks::Actor {
                    id,
                    name,
                    kind: "end_user",
                },
                conv_id,
                &message_id,
                text.as_deref().unwrap_or_default(),
            );
            st.live.outbox.push(event);
        }
    }
    SimResponse::json(201, &answer)
}

/// Backwards cursor pagination, newest page first, 100 per page.
fn list_messages(
    shared: &Shared,
    sun: &SunshineState,
    app: &str,
    conv_id: &str,
    req: &Req,
) -> SimResponse {
    let Some(conv) = find_conversation(sun, app, conv_id) else {
        return conversation_not_found();
    };
    let q = req.query.as_deref();
    let before = query_param(q, "page[before]");
    let after = query_param(q, "page[after]");
    let msgs = &conv.messages;
    let position = |id: &str| msgs.iter().position(|m| m.id == id);
    let (start, end) = match (before, after) {
        (Some(_), Some(_)) => return bad_request("Invalid page query parameters"),
        (Some(b), None) => match position(&b) {
            Some(i) => (i.saturating_sub(MESSAGE_PAGE), i),
            None => return bad_request("Invalid page query parameters"),
        },
        (None, Some(a)) => match position(&a) {
            Some(i) => (i + 1, (i + 1 + MESSAGE_PAGE).min(msgs.len())),
            None => return bad_request("Invalid page query parameters"),
        },
        (None, None) => (msgs.len().saturating_sub(MESSAGE_PAGE), msgs.len()),
    };
    let page = &msgs[start..end];
    let backwards = query_param(q, "page[after]").is_none();
    let has_more = if backwards {
        start > 0
    } else {
        end < msgs.len()
    };
    let base = format!(
        "{}/sc/v2/apps/{app}/conversations/{conv_id}/messages",
        shared.base_url
    );
    let mut meta = json!({"hasMore": has_more});
    let mut links = json!({});
    if let (Some(first), true) = (page.first(), start > 0) {
        meta["beforeCursor"] = json!(first.id);
        links["prev"] = json!(format!("{base}?page[before]={}", first.id));
    }
    if let (Some(last), true) = (page.last(), end < msgs.len()) {
        meta["afterCursor"] = json!(last.id);
        links["next"] = json!(format!("{base}?page[after]={}", last.id));
    }
    let messages: Vec<Value> = page.iter().map(message_json).collect();
    SimResponse::json(
        200,
        &json!({"messages": messages, "meta": meta, "links": links}),
    )
}

fn post_activity(sun: &mut SunshineState, app: &str, conv_id: &str, req: &Req) -> SimResponse {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    if find_conversation(sun, app, conv_id).is_none() {
        return conversation_not_found();
    }
    let author_type = body
        .get("author")
        .and_then(|a| a.get("type"))
        .and_then(Value::as_str);
    let Some(author_type @ ("user" | "business")) = author_type else {
        return bad_request("author.type must be user or business");
    };
    let kind = match body.get("type").and_then(Value::as_str) {
        Some(k @ ("typing:start" | "typing:stop" | "conversation:read")) => k.to_owned(),
        _ => return bad_request("type must be typing:start, typing:stop or conversation:read"),
    };
    // The spec: "If the author type is `user`, only `conversation:read` is supported."
    if author_type == "user" && kind != "conversation:read" && !sun.user_typing_allowed {
        return bad_request("If the author type is user, only conversation:read is supported");
    }
    if let Some(conv) = sun.conversation_mut(conv_id) {
        *conv.activities.entry(kind).or_insert(0) += 1;
    }
    SimResponse::json(200, &json!({}))
}

fn metadata_str(meta: &Value, key: &str) -> Option<String> {
    match meta.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn pass_control(st: &mut State, app: &str, conv_id: &str, req: &Req) -> SimResponse {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(e) => return e,
    };
    let meta = match metadata(&body) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let Some(conv) = find_conversation(&st.sun, app, conv_id) else {
        return conversation_not_found();
    };
    let Some(target) = body.get("switchboardIntegration").and_then(Value::as_str) else {
        return bad_request("switchboardIntegration is required");
    };
    let to_agent_workspace = target == "next" || AGENT_WORKSPACE.answers_to(target);
    if !to_agent_workspace && !ANSWER_BOT.answers_to(target) {
        return error(
            404,
            "switchboard_integration_not_found",
            "SwitchboardIntegration not found",
        );
    }
    let already_active = conv.agent_workspace_active;
    let user = conv
        .user_id
        .as_deref()
        .and_then(|u| st.sun.users.iter().find(|x| x.id == u))
        .cloned();
    let ticket = (to_agent_workspace && !already_active).then(|| {
        let msgs = &conv.messages;
        let first = metadata_str(&meta, "first_message_id")
            .and_then(|id| msgs.iter().position(|m| m.id == id));
        let from = first.unwrap_or_else(|| msgs.len().saturating_sub(DEFAULT_TRANSCRIPT));
        let copied = &msgs[from..];
        let profile = user.as_ref().map(|u| &u.profile);
        let profile_name = profile.and_then(|p| {
            let parts: Vec<&str> = ["givenName", "surname"]
                .iter()
                .filter_map(|k| p.get(*k).and_then(Value::as_str))
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
        let name = metadata_str(&meta, "dataCapture.systemField.requester.name").or(profile_name);
        let email = metadata_str(&meta, "dataCapture.systemField.requester.email").or_else(|| {
            profile
                .and_then(|p| p.get("email"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let id_field = |key: &str| metadata_str(&meta, key).and_then(|v| v.parse::<u64>().ok());
        let tags = metadata_str(&meta, "dataCapture.systemField.tags")
            .map(|t| {
                t.split([',', ' '])
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let custom_fields: Vec<Value> = meta
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| {
                        let id = k.strip_prefix("dataCapture.ticketField.")?;
                        let id = id.parse::<u64>().map_or_else(|_| json!(id), |n| json!(n));
                        Some(json!({"id": id, "value": v}))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let subject = format!(
            "Conversation with {}",
            name.clone().unwrap_or_else(|| "Web User".to_owned())
        );
        let transcript: Vec<(bool, String)> = copied
            .iter()
            .map(|m| {
                let text = m
                    .text
                    .clone()
                    .unwrap_or_else(|| format!("[{}]", m.content["type"].as_str().unwrap_or("?")));
                (m.author_type == "user", text)
            })
            .collect();
        let spec = MessagingTicket {
            subject,
            requester_name: name,
            requester_email: email,
            group_id: id_field("dataCapture.systemField.group_id"),
            assignee_id: id_field("dataCapture.systemField.assignee_id"),
            tags,
            custom_fields: Value::Array(custom_fields),
            transcript,
        };
        let ids: Vec<String> = copied.iter().map(|m| m.id.clone()).collect();
        (spec, ids, first.is_some(), from == 0)
    });
    let ticket_id = ticket.map(|(spec, ids, honoured, whole)| {
        (st.zd.create_messaging_ticket(spec), ids, honoured, whole)
    });
    let Some(conv) = st.sun.conversation_mut(conv_id) else {
        return conversation_not_found();
    };
    conv.pass_control_count += 1;
    conv.pass_control_metadata.push(meta);
    conv.agent_workspace_active = to_agent_workspace;
    if let Some((id, ids, honoured, whole)) = ticket_id {
        conv.ticket_id = Some(id);
        conv.ticket_ids.push(id);
        conv.transcript_message_ids = ids;
        conv.transcript_from_first_message_id = honoured;
        conv.whole_transcript = whole;
    }
    SimResponse::json(200, &json!({}))
}
