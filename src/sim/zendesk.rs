//! Zendesk Support tickets API (the subset the escalator uses).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::state::{Req, Shared, SimResponse};
use super::types::{SimAgent, SimAudit, SimComment, SimSchedule, SimTicket};
use super::util::{basic_credentials, query_param, sha256_hex};

/// The authenticated agent's user id (submitter, default comment author).
pub(crate) const AGENT_USER_ID: u64 = 1000;
/// Value of `X-Rate-Limit`.
pub(crate) const RATE_LIMIT: u32 = 700;
const MAX_IDEMPOTENCY_KEY: usize = 255;
const MAX_SUBJECT: usize = 255;
/// Largest `per_page` of offset pagination.
const MAX_PER_PAGE: usize = 100;
/// Largest `ticket.metadata` kept (Zendesk: 1 KB of custom metadata per audit).
const MAX_METADATA_BYTES: usize = 1024;

#[derive(Clone, Debug)]
struct User {
    name: Option<String>,
    email: Option<String>,
}

#[derive(Clone, Debug)]
struct IdempotencyEntry {
    body_hash: String,
    response: SimResponse,
}

pub(crate) struct ZendeskState {
    users: HashMap<u64, User>,
    user_by_email: HashMap<String, u64>,
    pub(crate) tickets: BTreeMap<u64, SimTicket>,
    idempotency: HashMap<String, IdempotencyEntry>,
    next_ticket_id: u64,
    next_user_id: u64,
    next_comment_id: u64,
    next_audit_id: u64,
    rate_remaining: u32,
    /// Seeded agents (`GET /api/v2/users/{id}`, `agent_availabilities`).
    pub(crate) agents: BTreeMap<u64, SimAgent>,
    /// Business-hours schedules by id.
    pub(crate) schedules: BTreeMap<u64, SimSchedule>,
    /// False: `agent_availabilities` answers 404 (no omnichannel routing).
    pub(crate) availability_api: bool,
    /// The role of the API user (`users/me`): "admin" by default.
    pub(crate) api_user_role: String,
}

/// The agents every fresh simulator knows.
pub(crate) const SEEDED_AGENTS: &[(u64, &str)] = &[(9001, "Alex Agent"), (9002, "Sam Support")];

/// A messaging ticket as a Sunshine passControl makes it.
pub(crate) struct MessagingTicket {
    pub(crate) subject: String,
    pub(crate) requester_name: Option<String>,
    pub(crate) requester_email: Option<String>,
    pub(crate) group_id: Option<u64>,
    pub(crate) assignee_id: Option<u64>,
    pub(crate) tags: Vec<String>,
    pub(crate) custom_fields: Value,
    /// Transcript lines: (written by the end user, text).
    pub(crate) transcript: Vec<(bool, String)>,
}

impl ZendeskState {
    pub(crate) fn new() -> Self {
        Self {
            users: HashMap::new(),
            user_by_email: HashMap::new(),
            tickets: BTreeMap::new(),
            idempotency: HashMap::new(),
            next_ticket_id: 1,
            next_user_id: 9000,
            next_comment_id: 100_001,
            next_audit_id: 500_001,
            rate_remaining: RATE_LIMIT,
            agents: SEEDED_AGENTS
                .iter()
                .map(|(id, name)| {
                    let agent = SimAgent {
                        id: *id,
                        name: (*name).to_owned(),
                        online: false,
                    };
                    (*id, agent)
                })
                .collect(),
            schedules: [(1, SimSchedule::always_open(1))].into_iter().collect(),
            availability_api: true,
            api_user_role: "admin".to_owned(),
        }
    }

    /// Creates a ticket via `native_messaging` (status `new`); returns its id.
    pub(crate) fn create_messaging_ticket(&mut self, t: MessagingTicket) -> u64 {
        let requester_id = self.find_or_create_user(t.requester_name, t.requester_email);
        let user = self.users.get(&requester_id).cloned();
        let now = Utc::now();
        let id = self.next_ticket_id;
        self.next_ticket_id += 1;
        let mut comments = Vec::new();
        for (from_user, text) in t.transcript {
            comments.push(SimComment {
                id: self.next_comment_id,
                author_id: if from_user {
                    requester_id
                } else {
                    AGENT_USER_ID
                },
                body: Some(text),
                html_body: None,
                public: true,
                created_at: now,
            });
            self.next_comment_id += 1;
        }
        let audit_id = self.next_audit_id;
        self.next_audit_id += 1;
        let ticket = SimTicket {
            id,
            subject: Some(t.subject),
            requester_id,
            requester_name: user.as_ref().and_then(|u| u.name.clone()),
            requester_email: user.as_ref().and_then(|u| u.email.clone()),
            assignee_id: t.assignee_id,
            group_id: t.group_id,
            tags: t.tags,
            external_id: None,
            status: "new".to_owned(),
            via_channel: "native_messaging".to_owned(),
            custom_fields: t.custom_fields,
            audits: vec![SimAudit {
                id: audit_id,
                author_id: requester_id,
                custom_metadata: json!({}),
                comment_id: comments.first().map(|c| c.id),
                created_at: now,
            }],
            comments,
            created_at: now,
        };
        self.tickets.insert(id, ticket);
        id
    }

    /// A ticket made outside the escalator (an email, the agent's own), no tags.
    pub(crate) fn create_unrelated_ticket(&mut self) -> u64 {
        let requester_id = self.find_or_create_user(None, None);
        let now = Utc::now();
        let id = self.next_ticket_id;
        self.next_ticket_id += 1;
        let comment_id = self.next_comment_id;
        self.next_comment_id += 1;
        let ticket = SimTicket {
            id,
            subject: Some("Printer on fire".to_owned()),
            requester_id,
            requester_name: None,
            requester_email: None,
            assignee_id: None,
            group_id: None,
            tags: Vec::new(),
            external_id: None,
            status: "new".to_owned(),
            via_channel: "email".to_owned(),
            custom_fields: json!([]),
            audits: Vec::new(),
            comments: vec![SimComment {
                id: comment_id,
                author_id: requester_id,
                body: Some("It is on fire.".to_owned()),
                html_body: None,
                public: true,
                created_at: now,
            }],
            created_at: now,
        };
        self.tickets.insert(id, ticket);
        id
    }

    /// Appends a public comment (an agent's messaging reply) to a ticket.
    pub(crate) fn add_comment(&mut self, ticket_id: u64, author_id: u64, body: &str) {
        let id = self.next_comment_id;
        self.next_comment_id += 1;
        if let Some(t) = self.tickets.get_mut(&ticket_id) {
            t.comments.push(SimComment {
                id,
                author_id,
                body: Some(body.to_owned()),
                html_body: None,
                public: true,
                created_at: Utc::now(),
            });
        }
    }

    pub(crate) fn expire_idempotency_keys(&mut self) {
        self.idempotency.clear();
    }

    /// Counts one request against the rate limit; returns what is left.
    pub(crate) fn rate_tick(&mut self) -> u32 {
        self.rate_remaining = self.rate_remaining.saturating_sub(1);
        self.rate_remaining
    }

    fn find_or_create_user(&mut self, name: Option<String>, email: Option<String>) -> u64 {
        if let Some(email) = &email
            && let Some(id) = self.user_by_email.get(&email.to_lowercase())
        {
            return *id;
        }
        // Agents' ids are seeded: requesters never get one of them.
        while self.agents.contains_key(&self.next_user_id) {
            self.next_user_id += 1;
        }
        let id = self.next_user_id;
        self.next_user_id += 1;
        if let Some(email) = &email {
            self.user_by_email.insert(email.to_lowercase(), id);
        }
        self.users.insert(id, User { name, email });
        id
    }
}

/// Handles any request under `/api/v2/`.
pub(crate) fn handle(shared: &Shared, zd: &mut ZendeskState, req: &Req) -> SimResponse {
    if !authenticated(shared, req) {
        return SimResponse::json(401, &json!({"error": "Couldn't authenticate you"}));
    }
    let rest = req.path.strip_prefix("/api/v2").unwrap_or_default();
    let mut segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(last) = segs.last_mut() {
        *last = last.strip_suffix(".json").unwrap_or(last);
    }
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["tickets"]) => list_tickets(shared, zd, req),
        ("POST", ["tickets"]) => create_with_idempotency(shared, zd, req),
        ("GET", ["tickets", id]) => match ticket_id(zd, id) {
            Some(id) => show_ticket(shared, zd, id),
            None => not_found(),
        },
        ("PUT", ["tickets", id]) => match ticket_id(zd, id) {
            Some(id) => update_ticket(shared, zd, id, req),
            None => not_found(),
        },
        ("GET", ["tickets", id, "comments"]) => match ticket_id(zd, id) {
            Some(id) => list_comments(zd, id),
            None => not_found(),
        },
        ("GET", ["tickets", id, "audits"]) => match ticket_id(zd, id) {
            Some(id) => list_audits(shared, zd, id, req),
            None => not_found(),
        },
        ("GET", ["users", id]) => show_user(zd, id),
        ("GET", ["business_hours", "schedules", id]) => show_schedule(zd, id),
        ("GET", ["agent_availabilities"]) if zd.availability_api => agent_availabilities(zd, req),
        _ => SimResponse::json(
            404,
            &json!({"error": "InvalidEndpoint", "description": "Not found"}),
        ),
    }
}

/// `GET /api/v2/users/{id}`: seeded agents (role agent) and requesters (end-user).
fn show_user(zd: &ZendeskState, raw: &str) -> SimResponse {
    let Ok(id) = raw.parse::<u64>() else {
        return not_found();
    };
    if let Some(agent) = zd.agents.get(&id) {
        return SimResponse::json(
            200,
            &json!({"user": {"id": id, "name": agent.name, "role": "agent", "active": true}}),
        );
    }
    match zd.users.get(&id) {
        Some(u) => SimResponse::json(
            200,
            &json!({"user": {"id": id, "name": u.name, "email": u.email, "role": "end-user", "active": true}}),
        ),
        None => not_found(),
    }
}

/// `GET /api/v2/business_hours/schedules/{id}`.
fn show_schedule(zd: &ZendeskState, raw: &str) -> SimResponse {
    let Some(s) = raw.parse::<u64>().ok().and_then(|id| zd.schedules.get(&id)) else {
        return not_found();
    };
    let intervals: Vec<Value> = s
        .intervals
        .iter()
        .map(|(start, end)| json!({"start_time": start, "end_time": end}))
        .collect();
    SimResponse::json(
        200,
        &json!({"schedule": {
            "id": s.id,
            "name": s.name,
            "time_zone": s.time_zone,
            "intervals": intervals,
            "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z",
        }}),
    )
}

/// `GET /api/v2/agent_availabilities` (JSON:API shape); with
/// `filter[channel_status]=messaging:online` only agents online for messaging.
fn agent_availabilities(zd: &ZendeskState, req: &Req) -> SimResponse {
    let filter = query_param(req.query.as_deref(), "filter[channel_status]");
    let only_online = filter.as_deref() == Some("messaging:online");
    let agents: Vec<&SimAgent> = zd
        .agents
        .values()
        .filter(|a| !only_online || a.online)
        .collect();
    let status = |a: &SimAgent| if a.online { "online" } else { "offline" };
    let data: Vec<Value> = agents
        .iter()
        .map(|a| {
            json!({
                "id": a.id.to_string(),
                "type": "agent_availabilities",
                "attributes": {
                    "agent_id": a.id,
                    "agent_status": {"id": if a.online { 1 } else { 3 }, "name": status(a)},
                },
                "relationships": {"channels": {"data": [
                    {"id": format!("{}_messaging", a.id), "type": "channels"}
                ]}},
            })
        })
        .collect();
    let included: Vec<Value> = agents
        .iter()
        .map(|a| {
            json!({
                "id": format!("{}_messaging", a.id),
                "type": "channels",
                "attributes": {"name": "messaging", "status": status(a)},
            })
        })
        .collect();
    SimResponse::json(
        200,
        &json!({"data": data, "included": included, "meta": {"has_more": false}}),
    )
}

pub(crate) fn authenticated(shared: &Shared, req: &Req) -> bool {
    let Some((user, token)) = basic_credentials(&req.headers) else {
        return false;
    };
    let Some(email) = user.strip_suffix("/token") else {
        return false;
    };
    shared
        .settings
        .zendesk_credentials
        .iter()
        .any(|(e, t)| e.eq_ignore_ascii_case(email) && *t == token)
}

fn ticket_id(zd: &ZendeskState, raw: &str) -> Option<u64> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| zd.tickets.contains_key(id))
}

fn not_found() -> SimResponse {
    SimResponse::json(
        404,
        &json!({"error": "RecordNotFound", "description": "Not found"}),
    )
}

fn malformed_json() -> SimResponse {
    SimResponse::text(400, "Bad Request: the request body is not valid JSON")
}

fn parameter_missing() -> SimResponse {
    SimResponse::json(
        400,
        &json!({"error": "ParameterMissing", "description": "Parameter ticket is required"}),
    )
}

fn record_invalid(details: Map<String, Value>) -> SimResponse {
    SimResponse::json(
        422,
        &json!({"error": "RecordInvalid", "description": "Record validation errors", "details": details}),
    )
}

fn idempotency_error(description: &str) -> SimResponse {
    SimResponse::json(
        400,
        &json!({"error": "IdempotentRequestError", "description": description}),
    )
}

fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn non_empty_str<'a>(obj: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    obj?.get(key)?.as_str().filter(|s| !s.trim().is_empty())
}

fn create_with_idempotency(shared: &Shared, zd: &mut ZendeskState, req: &Req) -> SimResponse {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return malformed_json();
    };
    let Some(key) = req.header("idempotency-key").filter(|k| !k.is_empty()) else {
        return create_ticket(shared, zd, &body);
    };
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return idempotency_error("Idempotency-Key must be at most 255 characters");
    }
    // Hash the parsed body so that formatting differences do not count.
    let body_hash = sha256_hex(body.to_string().as_bytes());
    if let Some(entry) = zd.idempotency.get(key) {
        if entry.body_hash == body_hash {
            return entry
                .response
                .clone()
                .with_header("x-idempotency-lookup", "hit");
        }
        return idempotency_error(
            "The Idempotency-Key was already used with a different request body",
        );
    }
    let response = create_ticket(shared, zd, &body);
    if response.status == 201 {
        zd.idempotency.insert(
            key.to_owned(),
            IdempotencyEntry {
                body_hash,
                response: response.clone(),
            },
        );
    }
    response.with_header("x-idempotency-lookup", "miss")
}

fn create_ticket(shared: &Shared, zd: &mut ZendeskState, body: &Value) -> SimResponse {
    let Some(t) = body.get("ticket").and_then(Value::as_object) else {
        return parameter_missing();
    };
    let comment = t.get("comment").and_then(Value::as_object);
    let comment_body = non_empty_str(comment, "body").map(str::to_owned);
    let comment_html = non_empty_str(comment, "html_body").map(str::to_owned);
    let requester = t.get("requester").and_then(Value::as_object);
    let requester_email = non_empty_str(requester, "email").map(str::to_owned);

    let mut details = Map::new();
    if comment_body.is_none() && comment_html.is_none() {
        details.insert(
            "base".to_owned(),
            json!([{"description": "Description: cannot be blank", "error": "BlankValue"}]),
        );
    }
    if let Some(invalid) = metadata_invalid(t) {
        details.insert("metadata".to_owned(), invalid);
    }
    if let Some(email) = &requester_email
        && !email.contains('@')
    {
        details.insert(
            "requester".to_owned(),
            json!([{"description": format!("Requester: Email {email} is not properly formatted"), "error": "InvalidValue"}]),
        );
    }
    if !details.is_empty() {
        return record_invalid(details);
    }

    let requester_id = match requester {
        Some(r) => {
            let name = non_empty_str(Some(r), "name").map(str::to_owned);
            zd.find_or_create_user(name, requester_email)
        }
        None => t
            .get("requester_id")
            .and_then(Value::as_u64)
            .unwrap_or(AGENT_USER_ID),
    };
    let user = zd.users.get(&requester_id).cloned();
    let now = Utc::now();
    let id = zd.next_ticket_id;
    zd.next_ticket_id += 1;
    let comment_id = zd.next_comment_id;
    zd.next_comment_id += 1;
    let audit_id = zd.next_audit_id;
    zd.next_audit_id += 1;
    let author_id = comment
        .and_then(|c| c.get("author_id"))
        .and_then(Value::as_u64)
        .unwrap_or(AGENT_USER_ID);
    let ticket = SimTicket {
        id,
        subject: t
            .get("subject")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(MAX_SUBJECT).collect()),
        requester_id,
        requester_name: user.as_ref().and_then(|u| u.name.clone()),
        requester_email: user.as_ref().and_then(|u| u.email.clone()),
        assignee_id: t.get("assignee_id").and_then(Value::as_u64),
        group_id: t.get("group_id").and_then(Value::as_u64),
        tags: string_list(t.get("tags")),
        external_id: t.get("external_id").and_then(scalar_string),
        status: t
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or("new")
            .to_owned(),
        via_channel: "api".to_owned(),
        custom_fields: t.get("custom_fields").cloned().unwrap_or_else(|| json!([])),
        audits: vec![SimAudit {
            id: audit_id,
            author_id,
            custom_metadata: custom_metadata(t),
            comment_id: Some(comment_id),
            created_at: now,
        }],
        comments: vec![SimComment {
            id: comment_id,
            author_id,
            body: comment_body,
            html_body: comment_html,
            public: comment
                .and_then(|c| c.get("public"))
                .and_then(Value::as_bool)
                .unwrap_or(true),
            created_at: now,
        }],
        created_at: now,
    };
    let body = json!({"ticket": ticket_json(&ticket, &shared.base_url)});
    zd.tickets.insert(id, ticket);
    SimResponse::json(201, &body).with_header(
        "location",
        format!("{}/api/v2/tickets/{id}.json", shared.base_url),
    )
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(scalar_string).collect())
        .unwrap_or_default()
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn list_tickets(shared: &Shared, zd: &ZendeskState, req: &Req) -> SimResponse {
    let external_id = query_param(req.query.as_deref(), "external_id");
    let tickets: Vec<Value> = zd
        .tickets
        .values()
        .filter(|t| {
            external_id
                .as_deref()
                .is_none_or(|x| t.external_id.as_deref() == Some(x))
        })
        .map(|t| ticket_json(t, &shared.base_url))
        .collect();
    let count = tickets.len();
    SimResponse::json(
        200,
        &json!({"tickets": tickets, "count": count, "next_page": null, "previous_page": null}),
    )
}

fn show_ticket(shared: &Shared, zd: &ZendeskState, id: u64) -> SimResponse {
    match zd.tickets.get(&id) {
        Some(t) => SimResponse::json(200, &json!({"ticket": ticket_json(t, &shared.base_url)})),
        None => not_found(),
    }
}

fn update_ticket(shared: &Shared, zd: &mut ZendeskState, id: u64, req: &Req) -> SimResponse {
    let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
        return malformed_json();
    };
    let Some(t) = body.get("ticket").and_then(Value::as_object) else {
        return parameter_missing();
    };
    let comment = t.get("comment").and_then(Value::as_object);
    let comment_body = non_empty_str(comment, "body").map(str::to_owned);
    let comment_html = non_empty_str(comment, "html_body").map(str::to_owned);
    let mut details = Map::new();
    if comment.is_some() && comment_body.is_none() && comment_html.is_none() {
        details.insert(
            "base".to_owned(),
            json!([{"description": "Comment: cannot be blank", "error": "BlankValue"}]),
        );
    }
    if let Some(invalid) = metadata_invalid(t) {
        details.insert("metadata".to_owned(), invalid);
    }
    if !details.is_empty() {
        return record_invalid(details);
    }
    let now = Utc::now();
    let new_comment = comment.map(|c| SimComment {
        id: 0,
        author_id: c
            .get("author_id")
            .and_then(Value::as_u64)
            .unwrap_or(AGENT_USER_ID),
        body: comment_body,
        html_body: comment_html,
        public: c.get("public").and_then(Value::as_bool).unwrap_or(true),
        created_at: now,
    });
    let new_comment = new_comment.map(|mut c| {
        c.id = zd.next_comment_id;
        zd.next_comment_id += 1;
        c
    });
    let audit_id = zd.next_audit_id;
    zd.next_audit_id += 1;
    let Some(ticket) = zd.tickets.get_mut(&id) else {
        return not_found();
    };
    if let Some(status) = t.get("status").and_then(Value::as_str) {
        ticket.status = status.to_owned();
    }
    if let Some(assignee) = t.get("assignee_id").and_then(Value::as_u64) {
        ticket.assignee_id = Some(assignee);
    }
    if let Some(group) = t.get("group_id").and_then(Value::as_u64) {
        ticket.group_id = Some(group);
    }
    if t.get("tags").is_some() {
        ticket.tags = string_list(t.get("tags"));
    }
    let mut author_id = AGENT_USER_ID;
    let mut comment_id = None;
    if let Some(c) = new_comment {
        author_id = c.author_id;
        comment_id = Some(c.id);
        ticket.comments.push(c);
    }
    let sim_audit = SimAudit {
        id: audit_id,
        author_id,
        custom_metadata: custom_metadata(t),
        comment_id,
        created_at: now,
    };
    let audit = audit_json(ticket, &sim_audit);
    ticket.audits.push(sim_audit);
    SimResponse::json(
        200,
        &json!({"ticket": ticket_json(ticket, &shared.base_url), "audit": audit}),
    )
}

fn list_comments(zd: &ZendeskState, id: u64) -> SimResponse {
    let Some(ticket) = zd.tickets.get(&id) else {
        return not_found();
    };
    let comments: Vec<Value> = ticket.comments.iter().map(comment_json).collect();
    let count = comments.len();
    SimResponse::json(
        200,
        &json!({"comments": comments, "next_page": null, "previous_page": null, "count": count}),
    )
}

/// `ticket.metadata`, kept as the audit's `metadata.custom`.
fn custom_metadata(t: &Map<String, Value>) -> Value {
    t.get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}))
}

/// A 422 detail when `ticket.metadata` is not an object or is over 1 KB.
fn metadata_invalid(t: &Map<String, Value>) -> Option<Value> {
    let m = t.get("metadata")?;
    let too_big = m.to_string().len() > MAX_METADATA_BYTES;
    (!m.is_object() || too_big).then(|| {
        json!([{"description": "Metadata: must be an object of at most 1 KB", "error": "InvalidValue"}])
    })
}

fn audit_json(t: &SimTicket, a: &SimAudit) -> Value {
    let events: Vec<Value> = a
        .comment_id
        .and_then(|id| t.comments.iter().find(|c| c.id == id))
        .map(comment_json)
        .into_iter()
        .collect();
    json!({
        "id": a.id,
        "ticket_id": t.id,
        "created_at": timestamp(&a.created_at),
        "author_id": a.author_id,
        "metadata": {
            "system": {"client": "escalator-sim", "ip_address": "127.0.0.1"},
            "custom": a.custom_metadata,
        },
        "via": {"channel": "api", "source": {"from": {}, "to": {}, "rel": null}},
        "events": events,
    })
}

/// `GET /api/v2/tickets/{id}/audits`: offset pagination (`page`, `per_page`
/// up to 100) and `sort_order` (`asc`, the default, or `desc`).
fn list_audits(shared: &Shared, zd: &ZendeskState, id: u64, req: &Req) -> SimResponse {
    let Some(ticket) = zd.tickets.get(&id) else {
        return not_found();
    };
    let q = req.query.as_deref();
    let page = query_param(q, "page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1);
    let per_page = query_param(q, "per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(MAX_PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let desc = query_param(q, "sort_order").is_some_and(|s| s.eq_ignore_ascii_case("desc"));
    let mut ordered: Vec<&SimAudit> = ticket.audits.iter().collect();
    if desc {
        ordered.reverse();
    }
    let count = ordered.len();
    let audits: Vec<Value> = ordered
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|a| audit_json(ticket, a))
        .collect();
    let link = |p: usize| {
        json!(format!(
            "{}/api/v2/tickets/{id}/audits.json?page={p}&per_page={per_page}&sort_order={}",
            shared.base_url,
            if desc { "desc" } else { "asc" }
        ))
    };
    let next = if page.saturating_mul(per_page) < count {
        link(page + 1)
    } else {
        Value::Null
    };
    let previous = if page > 1 {
        link(page - 1)
    } else {
        Value::Null
    };
    SimResponse::json(
        200,
        &json!({"audits": audits, "next_page": next, "previous_page": previous, "count": count}),
    )
}

fn ticket_json(t: &SimTicket, base_url: &str) -> Value {
    let first = t.comments.first();
    let updated = t.comments.last().map_or(t.created_at, |c| c.created_at);
    json!({
        "id": t.id,
        "url": format!("{base_url}/api/v2/tickets/{}.json", t.id),
        "external_id": t.external_id,
        "type": null,
        "subject": t.subject,
        "raw_subject": t.subject,
        "description": first.map(plain_body),
        "priority": null,
        "status": t.status,
        "requester_id": t.requester_id,
        "submitter_id": AGENT_USER_ID,
        "assignee_id": t.assignee_id,
        "organization_id": null,
        "group_id": t.group_id,
        "collaborator_ids": [],
        "follower_ids": [],
        "is_public": first.is_none_or(|c| c.public),
        "tags": t.tags,
        "custom_fields": t.custom_fields,
        "via": {"channel": t.via_channel, "source": {"from": {}, "to": {}, "rel": null}},
        "created_at": timestamp(&t.created_at),
        "updated_at": timestamp(&updated),
    })
}

fn comment_json(c: &SimComment) -> Value {
    let plain = plain_body(c);
    let html = c.html_body.clone().unwrap_or_else(|| {
        format!(
            "<div class=\"zd-comment\" dir=\"auto\"><p dir=\"auto\">{}</p></div>",
            escape_html(&plain)
        )
    });
    json!({
        "id": c.id,
        "type": "Comment",
        "author_id": c.author_id,
        "body": plain,
        "html_body": html,
        "plain_body": plain,
        "public": c.public,
        "attachments": [],
        "created_at": timestamp(&c.created_at),
    })
}

/// The plain text of a comment (tags stripped from an HTML-only comment).
fn plain_body(c: &SimComment) -> String {
    if let Some(body) = &c.body {
        return body.clone();
    }
    let html = c.html_body.as_deref().unwrap_or_default();
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_owned()
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
