//! The Zendesk live-chat client (`ZendeskLive`) against an in-test server
//! that answers like Sunshine Conversations and the Zendesk Support API and
//! records every request: the hand-over's calls and bodies, resumption after
//! answers lost at each step (no second user, conversation, transcript copy
//! or passControl), the refusals an admin must fix, availability, later
//! messages, and that every request body the client sent validates against
//! the official Sunshine OpenAPI spec.
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use escalator::config::{OrgConfig, ZendeskConfig, ZendeskLiveConfig};
use escalator::contract::{CustomerMessage, EscalationRequested, FallbackReason};
use escalator::error::{InfraError, ProviderErrorKind};
use escalator::provider::live::zendesk::ZendeskLive;
use escalator::provider::live::{
    Availability, HandoverJournal, HandoverRequest, Link, LiveChatProvider, LiveSession,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[path = "common/openapi.rs"]
mod openapi;
use openapi::{operation, request_errors, request_validator, spec};

const SECRET: &str = "sunshine-secret-canary";
const API_TOKEN: &str = "zd-token-canary";
const EMAIL: &str = "ada.canary@example.com";
const NAME: &str = "Ada Canary Lovelace";
const CORRELATION: &str = "esc_corr_c1";

// ---------------------------------------------------------------- the server

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Do the call, then answer 500.
    Lost500,
    /// Do the call, then break the connection in the middle of the answer.
    Drop,
    /// Refuse before doing anything, with this status.
    Refuse(u16),
}

#[derive(Clone, Debug)]
struct Rec {
    method: String,
    path: String,
    query: String,
    body: Value,
    authorised: bool,
}

#[derive(Clone)]
struct Msg {
    id: String,
    received: String,
    author: Value,
    content: Value,
    metadata: Value,
}

struct Conv {
    id: String,
    user_id: String,
    metadata: Value,
    agent_workspace: bool,
}

#[derive(Default)]
struct World {
    requests: Vec<Rec>,
    users: Vec<(String, String)>,
    conversations: Vec<Conv>,
    messages: HashMap<String, Vec<Msg>>,
    pass_controls: Vec<Value>,
    activities: Vec<Value>,
    multi_convo: bool,
    /// (op, occurrence 1-based) -> fault.
    faults: HashMap<(&'static str, usize), Fault>,
    seen: HashMap<&'static str, usize>,
    schedule: Value,
    agents: Value,
    agents_status: u16,
    next_id: u64,
    /// Messages posted now are dated this many seconds in the past.
    backdate_secs: i64,
}

type Shared = Arc<Mutex<World>>;

struct Server {
    url: String,
    world: Shared,
}

impl Server {
    async fn start() -> Server {
        let world = Arc::new(Mutex::new(World {
            multi_convo: true,
            agents_status: 200,
            schedule: json!({"schedule": {"id": 42, "name": "Office", "time_zone": "UTC", "intervals": []}}),
            agents: json!({"data": [], "included": [], "meta": {"has_more": false}}),
            ..World::default()
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(world.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Server { url, world }
    }

    fn w(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn fault(&self, op: &'static str, nth: usize, fault: Fault) {
        self.w().faults.insert((op, nth), fault);
    }

    fn requests(&self) -> Vec<Rec> {
        self.w().requests.clone()
    }

    /// `METHOD /path` of every request, app prefix dropped.
    fn calls(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path.replace("/sc/v2/apps/app1", "")))
            .collect()
    }

    fn messages(&self, conv: &str) -> Vec<Msg> {
        self.w().messages.get(conv).cloned().unwrap_or_default()
    }
}

fn err(status: u16, code: &str, title: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"errors": [{"code": code, "title": title}]})),
    )
        .into_response()
}

fn ok(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// A 2xx head whose body breaks off: the call was done, the answer lost.
fn dropped() -> Response {
    let stream = futures_util::stream::iter(vec![Err::<Bytes, std::io::Error>(
        std::io::Error::other("dropped"),
    )]);
    Response::builder()
        .status(201)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn authorised(headers: &HeaderMap, path: &str) -> bool {
    use base64::Engine;
    let expected = if path.starts_with("/sc/") {
        format!("app_key1:{SECRET}")
    } else {
        format!("agent@acme.test/token:{API_TOKEN}")
    };
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(expected)
    );
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let k = k.replace("%5B", "[").replace("%5D", "]");
        (k == name).then(|| v.replace("%3A", ":"))
    })
}

fn conv_json(c: &Conv) -> Value {
    let active = if c.agent_workspace {
        json!({"id": "sw1", "name": "zd-agentWorkspace", "integrationId": "i1", "integrationType": "zd:agentWorkspace"})
    } else {
        json!({"id": "sw0", "name": "bot", "integrationId": "i0", "integrationType": "custom"})
    };
    json!({"id": c.id, "type": "personal", "metadata": c.metadata, "activeSwitchboardIntegration": active})
}

async fn handle(
    State(world): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut w = world.lock().unwrap();
    let auth = authorised(&headers, &path);
    w.requests.push(Rec {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
        authorised: auth,
    });
    if !auth {
        return err(401, "unauthorized", &format!("Bad key for {EMAIL}"));
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let op: &'static str = match (method.as_str(), segs.as_slice()) {
        ("POST", ["sc", "v2", "apps", _, "users"]) => "create_user",
        ("POST", ["sc", "v2", "apps", _, "conversations"]) => "create_conversation",
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "messages"]) => "post_message",
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "passControl"]) => "pass_control",
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "activity"]) => "activity",
        _ => "read",
    };
    let n = {
        let c = w.seen.entry(op).or_insert(0);
        *c += 1;
        *c
    };
    let fault = w.faults.get(&(op, n)).copied();
    if let Some(Fault::Refuse(status)) = fault {
        return err(status, "too_many_requests", &format!("Slow down {EMAIL}"));
    }
    w.next_id += 1;
    let fresh = format!("{:024x}", w.next_id);
    let resp = match (method.as_str(), segs.as_slice()) {
        ("POST", ["sc", "v2", "apps", _, "users"]) => {
            let ext = body["externalId"].as_str().unwrap_or("").to_string();
            if w.users.iter().any(|(e, _)| *e == ext) {
                return err(409, "conflict", "User already exists");
            }
            w.users.push((ext.clone(), fresh.clone()));
            ok(201, json!({"user": {"id": fresh, "externalId": ext}}))
        }
        ("GET", ["sc", "v2", "apps", _, "users", id]) => {
            let id = id.replace("%40", "@");
            match w.users.iter().find(|(e, i)| *e == id || *i == id) {
                Some((e, i)) => ok(200, json!({"user": {"id": i, "externalId": e}})),
                None => err(404, "user_not_found", "User not found"),
            }
        }
        ("POST", ["sc", "v2", "apps", _, "conversations"]) => {
            let user = body["participants"][0]["userId"]
                .as_str()
                .unwrap_or("")
                .to_string();
            if !w.multi_convo && w.conversations.iter().any(|c| c.user_id == user) {
                return err(
                    400,
                    "bad_request",
                    "Cannot create more than one personal conversation for user",
                );
            }
            let c = Conv {
                id: fresh,
                user_id: user,
                metadata: body["metadata"].clone(),
                agent_workspace: false,
            };
            let r = ok(201, json!({"conversation": conv_json(&c)}));
            w.conversations.push(c);
            r
        }
        ("GET", ["sc", "v2", "apps", _, "conversations"]) => {
            let user = query_param(&query, "filter[userId]").unwrap_or_default();
            let list: Vec<Value> = w
                .conversations
                .iter()
                .filter(|c| c.user_id == user)
                .map(conv_json)
                .collect();
            ok(
                200,
                json!({"conversations": list, "meta": {"hasMore": false}, "links": {}}),
            )
        }
        ("GET", ["sc", "v2", "apps", _, "conversations", id]) => {
            match w.conversations.iter().find(|c| c.id == *id) {
                Some(c) => ok(200, json!({"conversation": conv_json(c)})),
                None => err(404, "conversation_not_found", "Conversation not found"),
            }
        }
        ("POST", ["sc", "v2", "apps", _, "conversations", id, "messages"]) => {
            if body["content"]["text"]
                .as_str()
                .is_some_and(|t| t.chars().count() > 4096)
            {
                return err(400, "bad_request", "text too long");
            }
            let m = Msg {
                id: fresh,
                received: (chrono::Utc::now() - chrono::Duration::seconds(w.backdate_secs))
                    .to_rfc3339(),
                author: body["author"].clone(),
                content: body["content"].clone(),
                metadata: body["metadata"].clone(),
            };
            let out = json!({"messages": [{"id": m.id, "received": m.received, "author": m.author, "content": m.content, "metadata": m.metadata}]});
            w.messages.entry(id.to_string()).or_default().push(m);
            ok(201, out)
        }
        ("GET", ["sc", "v2", "apps", _, "conversations", id, "messages"]) => {
            let all = w.messages.get(*id).cloned().unwrap_or_default();
            let end = match query_param(&query, "page[before]") {
                Some(b) => all.iter().position(|m| m.id == b).unwrap_or(0),
                None => all.len(),
            };
            let start = end.saturating_sub(100);
            let page: Vec<Value> = all[start..end]
                .iter()
                .map(|m| json!({"id": m.id, "received": m.received, "author": m.author, "content": m.content, "metadata": m.metadata}))
                .collect();
            let mut meta = json!({"hasMore": start > 0});
            if start > 0 {
                meta["beforeCursor"] = json!(all[start].id);
            }
            ok(200, json!({"messages": page, "meta": meta, "links": {}}))
        }
        ("POST", ["sc", "v2", "apps", _, "conversations", id, "passControl"]) => {
            w.pass_controls.push(body.clone());
            if let Some(c) = w.conversations.iter_mut().find(|c| c.id == *id) {
                c.agent_workspace = true;
            }
            ok(200, json!({}))
        }
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "activity"]) => {
            w.activities.push(body.clone());
            ok(200, json!({}))
        }
        ("GET", ["api", "v2", "business_hours", "schedules", _]) => ok(200, w.schedule.clone()),
        ("GET", ["api", "v2", "agent_availabilities"]) => {
            if w.agents_status != 200 {
                return (
                    StatusCode::from_u16(w.agents_status).unwrap(),
                    axum::Json(json!({"error": "InvalidEndpoint"})),
                )
                    .into_response();
            }
            ok(200, w.agents.clone())
        }
        ("GET", ["api", "v2", "users", "9001"]) => ok(
            200,
            json!({"user": {"id": 9001, "name": "Alex Agent", "role": "agent"}}),
        ),
        ("GET", ["api", "v2", "users", _]) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "RecordNotFound"})),
        )
            .into_response(),
        _ => err(404, "not_found", "no such route"),
    };
    match fault {
        Some(Fault::Lost500) => err(500, "internal_error", "oops"),
        Some(Fault::Drop) => dropped(),
        _ => resp,
    }
}

// --------------------------------------------------------------- the journal

#[derive(Default)]
struct MemJournal {
    steps: Mutex<HashMap<String, String>>,
    links: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl HandoverJournal for MemJournal {
    async fn get(&self, step: &str) -> Result<Option<String>, InfraError> {
        Ok(self.steps.lock().unwrap().get(step).cloned())
    }
    async fn put(&self, step: &str, value: &str) -> Result<(), InfraError> {
        self.steps
            .lock()
            .unwrap()
            .insert(step.to_string(), value.to_string());
        Ok(())
    }
    async fn link(&self, link: Link<'_>) -> Result<(), InfraError> {
        if let Link::ProviderConversation(id) = link {
            self.links.lock().unwrap().push(id.to_string());
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ fixtures

fn configs(url: &str, live_extra: Value) -> (ZendeskConfig, ZendeskLiveConfig) {
    let mut live = json!({
        "app_id": "app1", "key_id": "app_key1", "secret": SECRET,
        "base_url": format!("{url}/sc"), "webhook_token": "a-webhook-token-of-length",
        "ai_display_name": "Fullview AI", "ticket_fields": {"360001": "gold"},
    });
    for (k, v) in live_extra.as_object().unwrap() {
        live[k] = v.clone();
    }
    let zendesk = json!({
        "subdomain": "acme", "email": "agent@acme.test", "api_token": API_TOKEN,
        "base_url": url, "group_id": 77, "assignee_id": 88, "tags": ["ai", "vip"],
    });
    (
        serde_json::from_value(zendesk).unwrap(),
        serde_json::from_value(live).unwrap(),
    )
}

fn client(server: &Server, live_extra: Value) -> (ZendeskLive, OrgConfig) {
    let (zendesk, live) = configs(&server.url, live_extra);
    let http = reqwest::Client::new();
    let provider = ZendeskLive::new(http, "acme", zendesk.clone(), live.clone());
    let mut org: OrgConfig = serde_json::from_value(json!({"provider": "zendesk"})).unwrap();
    org.org_id = "acme".into();
    let mut z = zendesk;
    z.live = Some(live);
    org.zendesk = Some(z);
    (provider, org)
}

fn escalation(transcript: Value) -> EscalationRequested {
    serde_json::from_value(json!({
        "org_id": "acme", "conversation_id": "c1", "mode": "live",
        "customer": {"id": "cust-1", "name": NAME, "email": EMAIL},
        "subject": "Refund for order 7", "summary": "Wants a refund.",
        "transcript": transcript,
        "requested_at": "2026-01-05T10:00:00Z",
    }))
    .unwrap()
}

fn standard_transcript() -> Value {
    let long = format!("{} {}", "word ".repeat(900), "x".repeat(1000));
    json!([
        {"role": "customer", "text": "I want my money back", "sent_at": "2026-01-05T09:58:00Z"},
        {"role": "ai", "text": long, "sent_at": "2026-01-05T09:59:00Z"},
        {"role": "customer", "text": "A person, please", "sent_at": "2026-01-05T09:59:30Z"},
    ])
}

async fn hand_over(
    p: &ZendeskLive,
    org: &OrgConfig,
    e: &EscalationRequested,
    j: &MemJournal,
) -> Result<LiveSession, escalator::error::ProcessError> {
    p.hand_over(
        HandoverRequest {
            org,
            escalation: e,
            correlation_tag: CORRELATION,
            streams: None,
        },
        j,
    )
    .await
}

// ------------------------------------------------------------ spec checking

/// Every Sunshine request body sent validates against its operation's schema.
fn assert_bodies_match_the_spec(server: &Server) {
    if spec().is_none() {
        return;
    }
    let mut validators = HashMap::new();
    let mut checked = 0;
    for r in server.requests() {
        if r.method == "GET" {
            continue;
        }
        let op = operation(&r.method, &r.path)
            .unwrap_or_else(|| panic!("unexpected call {} {}", r.method, r.path));
        let errors = request_errors(&mut validators, op, &r.body);
        assert!(
            errors.is_empty(),
            "{} {} body {} violates the spec: {errors:?}",
            op.1,
            op.0,
            r.body
        );
        checked += 1;
    }
    assert!(checked > 0, "no request body was checked");
}

#[test]
fn the_spec_validator_rejects_wrong_bodies() {
    if spec().is_none() {
        return;
    }
    let msg = request_validator(
        "/v2/apps/{appId}/conversations/{conversationId}/messages",
        "post",
    );
    assert!(msg.is_valid(&json!({"author": {"type": "user", "userId": "u"}, "content": {"type": "text", "text": "hi"}})));
    assert!(
        !msg.is_valid(
            &json!({"author": {"type": "bot"}, "content": {"type": "text", "text": "hi"}})
        ),
        "author type"
    );
    assert!(!msg.is_valid(&json!({"author": {"type": "user"}, "content": {"type": "text", "text": "x".repeat(4097)}})), "text length");
    assert!(
        !msg.is_valid(&json!({"content": {"type": "text", "text": "hi"}})),
        "author required"
    );
    let pc = request_validator(
        "/v2/apps/{appId}/conversations/{conversationId}/passControl",
        "post",
    );
    assert!(
        !pc.is_valid(&json!({"metadata": {}})),
        "switchboardIntegration required"
    );
    let user = request_validator("/v2/apps/{appId}/users", "post");
    assert!(
        !user.is_valid(&json!({"externalId": "", "profile": {}})),
        "externalId minLength"
    );
    assert!(
        !user.is_valid(&json!({"externalId": "x", "profile": {"email": "not an email"}})),
        "email format"
    );
    assert!(
        user.is_valid(&json!({"externalId": "x", "profile": {"givenName": null}})),
        "nullable"
    );
}

// --------------------------------------------------------------------- tests

#[tokio::test]
async fn a_hand_over_makes_the_calls_in_order_with_routing_metadata() {
    let server = Server::start().await;
    let (p, org) = client(&server, json!({}));
    let e = escalation(standard_transcript());
    let j = MemJournal::default();
    let session = hand_over(&p, &org, &e, &j).await.unwrap();

    let conv = &session.conversation_id;
    let msgs = format!("POST /conversations/{conv}/messages");
    assert_eq!(
        server.calls(),
        vec![
            "POST /users".to_string(),
            "POST /conversations".to_string(),
            msgs.clone(),
            msgs.clone(),
            msgs.clone(),
            msgs.clone(),
            msgs.clone(),
            format!("POST /conversations/{conv}/passControl"),
        ]
    );
    assert!(
        server.requests().iter().all(|r| r.authorised),
        "every call carries the right key"
    );
    let reqs = server.requests();
    assert_eq!(
        reqs[0].body,
        json!({"externalId": "cust-1", "profile": {"givenName": "Ada", "surname": "Canary Lovelace", "email": EMAIL}})
    );
    let user_id = server.w().users[0].1.clone();
    assert_eq!(session.user_id, user_id);
    assert_eq!(session.url, "https://acme.zendesk.com/agent/");
    assert_eq!(
        reqs[1].body,
        json!({"type": "personal", "participants": [{"userId": user_id, "subscribeSDKClient": false}],
               "metadata": {"escalator_org_id": "acme", "escalator_conversation_id": "c1"}})
    );
    assert_eq!(
        *j.links.lock().unwrap().first().unwrap(),
        *conv,
        "the conversation is linked"
    );

    // Header, customer line, AI line in two parts, customer line.
    let posted = server.messages(conv);
    let ids: Vec<&str> = posted
        .iter()
        .map(|m| m.metadata["escalator_message_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "transcript:header:0",
            "transcript:0:0",
            "transcript:1:0",
            "transcript:1:1",
            "transcript:2:0"
        ]
    );
    assert_eq!(
        posted[0].content["text"],
        "Subject: Refund for order 7\nSummary: Wants a refund."
    );
    assert_eq!(posted[1].author, json!({"type": "user", "userId": user_id}));
    assert_eq!(
        posted[2].author,
        json!({"type": "business", "displayName": "Fullview AI"})
    );
    let ai_text = e.transcript[1].text.clone();
    let part1 = posted[2].content["text"].as_str().unwrap();
    let part2 = posted[3].content["text"].as_str().unwrap();
    assert!(part1.chars().count() <= 4096 && part2.chars().count() <= 4096);
    assert!(part1.ends_with(' '), "the split prefers whitespace");
    assert_eq!(
        format!("{part1}{part2}"),
        ai_text,
        "nothing is lost in the split"
    );

    let pc = server.w().pass_controls[0].clone();
    assert_eq!(pc["switchboardIntegration"], "zd-agentWorkspace");
    let md = pc["metadata"].as_object().unwrap();
    assert_eq!(
        md["first_message_id"],
        json!(posted[0].id),
        "the ticket starts at the first transcript message"
    );
    assert_eq!(md["dataCapture.systemField.requester.name"], NAME);
    assert_eq!(md["dataCapture.systemField.requester.email"], EMAIL);
    assert_eq!(md["dataCapture.systemField.group_id"], "77");
    assert_eq!(md["dataCapture.systemField.assignee_id"], "88");
    assert_eq!(
        md["dataCapture.systemField.tags"],
        format!("ai,vip,{CORRELATION}")
    );
    assert_eq!(md["dataCapture.ticketField.360001"], "gold");
    assert!(
        md.values().all(Value::is_string),
        "metadata is flat strings"
    );
    assert!(serde_json::to_string(md).unwrap().len() < 4096);

    // Done: a second call changes nothing.
    let again = hand_over(&p, &org, &e, &j).await.unwrap();
    assert_eq!(again, session);
    assert_eq!(
        server.calls().len(),
        8,
        "a finished hand-over makes no more calls"
    );
    assert_bodies_match_the_spec(&server);
}

#[tokio::test]
async fn the_assignment_override_routes_and_tags() {
    let server = Server::start().await;
    let (p, org) = client(&server, json!({"ticket_fields": {}}));
    let mut e = escalation(json!([]));
    e.subject = None;
    e.summary = None;
    e.customer.name = None;
    e.customer.email = None;
    e.assignment =
        Some(serde_json::from_value(json!({"group_id": 5, "tags": ["vip_live"]})).unwrap());
    let session = hand_over(&p, &org, &e, &MemJournal::default())
        .await
        .unwrap();
    let posted = server.messages(&session.conversation_id);
    assert_eq!(posted.len(), 1, "an empty transcript still posts one line");
    assert_eq!(
        posted[0].content["text"],
        "The customer asked to talk to a person."
    );
    assert_eq!(
        server.requests()[0].body,
        json!({"externalId": "cust-1"}),
        "absent profile fields are omitted"
    );
    let md = server.w().pass_controls[0]["metadata"].clone();
    assert_eq!(md["first_message_id"], json!(posted[0].id));
    assert_eq!(md["dataCapture.systemField.group_id"], "5");
    assert_eq!(
        md["dataCapture.systemField.assignee_id"], "88",
        "the org default stays"
    );
    assert_eq!(
        md["dataCapture.systemField.tags"],
        format!("vip_live,{CORRELATION}")
    );
    assert_eq!(
        md["dataCapture.systemField.requester.name"],
        "Customer cust-1"
    );
    assert!(md.get("dataCapture.systemField.requester.email").is_none());
    assert_bodies_match_the_spec(&server);
}

/// Each mutating step loses its answer once (done at the server, answer
/// 500 or a broken connection): the next attempt resumes without repeats.
#[tokio::test]
async fn a_hand_over_resumes_after_a_lost_answer_at_every_step() {
    let steps: [(&'static str, usize); 6] = [
        ("create_user", 1),
        ("create_conversation", 1),
        ("post_message", 1),
        ("post_message", 3),
        ("post_message", 5),
        ("pass_control", 1),
    ];
    for fault in [Fault::Lost500, Fault::Drop] {
        for (op, nth) in steps {
            let what = format!("{op} #{nth} {fault:?}");
            let server = Server::start().await;
            let (p, org) = client(&server, json!({}));
            let e = escalation(standard_transcript());
            let j = MemJournal::default();
            server.fault(op, nth, fault);
            let first = hand_over(&p, &org, &e, &j).await.expect_err(&what);
            let escalator::error::ProcessError::Provider(pe) = &first else {
                panic!("{what}: {first}")
            };
            assert!(pe.is_transient() && pe.may_have_landed(), "{what}: {pe:?}");
            let session = hand_over(&p, &org, &e, &j)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));

            let w = server.w();
            assert_eq!(w.users.len(), 1, "{what}: one user");
            assert_eq!(w.conversations.len(), 1, "{what}: one conversation");
            assert_eq!(w.conversations[0].id, session.conversation_id, "{what}");
            assert_eq!(w.pass_controls.len(), 1, "{what}: one passControl");
            let ids: Vec<String> = w.messages[&session.conversation_id]
                .iter()
                .map(|m| {
                    m.metadata["escalator_message_id"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(
                ids,
                [
                    "transcript:header:0",
                    "transcript:0:0",
                    "transcript:1:0",
                    "transcript:1:1",
                    "transcript:2:0"
                ],
                "{what}: one copy of each transcript message, in order"
            );
            let first_id = w.messages[&session.conversation_id][0].id.clone();
            assert_eq!(
                w.pass_controls[0]["metadata"]["first_message_id"],
                json!(first_id),
                "{what}"
            );
            drop(w);
            assert_bodies_match_the_spec(&server);
        }
    }
}

#[tokio::test]
async fn a_refused_step_is_retried_without_a_look_up() {
    let server = Server::start().await;
    let (p, org) = client(&server, json!({}));
    let e = escalation(standard_transcript());
    let j = MemJournal::default();
    server.fault("post_message", 2, Fault::Refuse(429));
    let err = hand_over(&p, &org, &e, &j).await.unwrap_err();
    let escalator::error::ProcessError::Provider(pe) = &err else {
        panic!("{err}")
    };
    assert!(pe.is_transient() && !pe.may_have_landed(), "{pe:?}");
    assert_eq!(pe.kind, ProviderErrorKind::RateLimited);
    hand_over(&p, &org, &e, &j).await.unwrap();
    let conv = server.w().conversations[0].id.clone();
    assert_eq!(server.messages(&conv).len(), 5);
    assert!(
        !server.calls().iter().any(|c| c.starts_with("GET")),
        "a refused call is repeated without a look-up: {:?}",
        server.calls()
    );
}

#[tokio::test]
async fn an_existing_user_is_fetched_by_external_id() {
    let server = Server::start().await;
    server
        .w()
        .users
        .push(("cust-1".into(), "existing-user-id".into()));
    let (p, org) = client(&server, json!({}));
    let session = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap();
    assert_eq!(session.user_id, "existing-user-id");
    let calls = server.calls();
    assert_eq!(
        &calls[..3],
        ["POST /users", "GET /users/cust-1", "POST /conversations"]
    );
    assert_eq!(server.w().users.len(), 1);
    assert_eq!(server.w().conversations[0].user_id, "existing-user-id");
}

#[tokio::test]
async fn a_second_conversation_without_multi_conversations_says_what_to_enable() {
    let server = Server::start().await;
    server.w().multi_convo = false;
    server.w().users.push(("cust-1".into(), "u1".into()));
    server.w().conversations.push(Conv {
        id: "older".into(),
        user_id: "u1".into(),
        metadata: json!({}),
        agent_workspace: false,
    });
    let (p, org) = client(&server, json!({}));
    let err = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap_err();
    let escalator::error::ProcessError::Provider(pe) = &err else {
        panic!("{err}")
    };
    assert_eq!(pe.kind, ProviderErrorKind::Configuration, "{pe}");
    assert!(!pe.is_transient());
    assert!(
        pe.message.contains("multi-conversations") && pe.message.contains("multiConvoEnabled"),
        "{pe}"
    );
    assert_eq!(server.w().pass_controls.len(), 0);
}

#[tokio::test]
async fn passcontrol_metadata_over_4_kb_is_refused_naming_the_part() {
    let server = Server::start().await;
    let (p, org) = client(
        &server,
        json!({"ticket_fields": {"360009": "v".repeat(5000)}}),
    );
    let err = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap_err();
    let escalator::error::ProcessError::Provider(pe) = &err else {
        panic!("{err}")
    };
    assert_eq!(pe.kind, ProviderErrorKind::Validation);
    assert!(!pe.is_transient());
    assert!(
        pe.message.contains("dataCapture.ticketField.360009"),
        "{pe}"
    );
    assert!(!pe.message.contains("vvvv"), "never the value: {pe}");
    assert_eq!(server.w().pass_controls.len(), 0);
}

#[tokio::test]
async fn availability_follows_the_policy() {
    let server = Server::start().await;
    let (always, _) = client(&server, json!({}));
    assert_eq!(always.availability().await.unwrap(), Availability::Open);
    assert!(server.requests().is_empty(), "always needs no call");

    let (sched, _) = client(&server, json!({"availability": {"schedule_id": 42}}));
    // The whole week, in a Rails zone name.
    server.w().schedule = json!({"schedule": {"id": 42, "name": "All week", "time_zone": "Pacific Time (US & Canada)",
        "intervals": [{"start_time": 0, "end_time": 10080}]}});
    assert_eq!(sched.availability().await.unwrap(), Availability::Open);
    server.w().schedule = json!({"schedule": {"id": 42, "name": "Never", "time_zone": "Copenhagen", "intervals": []}});
    assert_eq!(
        sched.availability().await.unwrap(),
        Availability::Closed(FallbackReason::OutsideBusinessHours)
    );
    server.w().schedule = json!({"schedule": {"id": 42, "name": "Odd", "time_zone": "Atlantis Standard", "intervals": []}});
    let e = sched.availability().await.unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Configuration);
    assert!(!e.is_transient());
    assert!(
        e.message.contains("Atlantis Standard") && e.message.contains("42"),
        "{e}"
    );
    assert!(
        server
            .calls()
            .contains(&"GET /api/v2/business_hours/schedules/42".to_string())
    );

    let (agents, _) = client(&server, json!({"availability": "agents_online"}));
    assert_eq!(
        agents.availability().await.unwrap(),
        Availability::Closed(FallbackReason::NoAgentOnline)
    );
    server.w().agents = json!({"data":[{"id":"7","type":"agent_availabilities","attributes":{"agent_id":7,"agent_status":{"id":1,"name":"online"}},"relationships":{"channels":{"data":[{"id":"7_messaging","type":"channels"}]}}}],"included":[{"id":"7_messaging","type":"channels","attributes":{"name":"messaging","status":"online"}}],"meta":{"has_more":false}});
    assert_eq!(agents.availability().await.unwrap(), Availability::Open);
    let last = server.requests().last().unwrap().clone();
    assert_eq!(last.path, "/api/v2/agent_availabilities");
    assert_eq!(
        query_param(&last.query, "filter[channel_status]").as_deref(),
        Some("messaging:online")
    );
    assert!(last.authorised, "the Support API uses the org's API token");
    server.w().agents_status = 404;
    let e = agents.availability().await.unwrap_err();
    assert_eq!(e.kind, ProviderErrorKind::Configuration);
    assert!(e.message.contains("availability = \"always\""), "{e}");
}

fn customer_message(id: &str, text: &str) -> CustomerMessage {
    CustomerMessage {
        org_id: "acme".into(),
        conversation_id: "c1".into(),
        message_id: id.into(),
        text: text.into(),
        sent_at: chrono::Utc::now() - chrono::Duration::seconds(5),
    }
}

#[tokio::test]
async fn later_messages_typing_and_leaving() {
    let server = Server::start().await;
    let (p, org) = client(&server, json!({}));
    let session = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap();
    let since = chrono::Utc::now() - chrono::Duration::seconds(10);

    let short = customer_message("m1", "still there?");
    assert!(
        !p.has_customer_message(&session, &short, since)
            .await
            .unwrap()
    );
    p.send_customer_message(&session, &short).await.unwrap();
    assert!(
        p.has_customer_message(&session, &short, since)
            .await
            .unwrap()
    );

    // A long message goes in parts; a crash after the first part resends only the rest.
    let long = customer_message("m2", &"z".repeat(5000));
    server.fault("post_message", 4, Fault::Refuse(503));
    assert!(p.send_customer_message(&session, &long).await.is_err());
    assert!(
        !p.has_customer_message(&session, &long, since)
            .await
            .unwrap(),
        "only part of it landed"
    );
    p.send_customer_message(&session, &long).await.unwrap();
    assert!(
        p.has_customer_message(&session, &long, since)
            .await
            .unwrap()
    );
    let posted = server.messages(&session.conversation_id);
    let ids: Vec<&str> = posted
        .iter()
        .map(|m| m.metadata["escalator_message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["transcript:header:0", "m1", "m2", "m2#1"]);
    assert_eq!(
        posted[1].author,
        json!({"type": "user", "userId": session.user_id})
    );
    assert_eq!(
        posted[2].content["text"].as_str().unwrap().chars().count(),
        4096
    );

    // The API refuses typing activity from a user author: nothing is sent.
    p.typing(&session, true).await.unwrap();
    p.typing(&session, false).await.unwrap();
    assert!(server.w().activities.is_empty());
    p.customer_left(&session, "The customer left the chat.")
        .await
        .unwrap();
    let left = server.messages(&session.conversation_id).pop().unwrap();
    assert_eq!(
        left.author,
        json!({"type": "business", "displayName": "Fullview AI"})
    );
    assert_eq!(
        left.metadata,
        json!({"escalator_message_id": "customer-left"})
    );
    assert_eq!(left.content["text"], "The customer left the chat.");

    assert_eq!(
        p.agent_name("9001").await.unwrap().as_deref(),
        Some("Alex Agent")
    );
    assert_eq!(p.agent_name("9999").await.unwrap(), None);
    assert_bodies_match_the_spec(&server);
}

#[tokio::test]
async fn has_customer_message_pages_back_to_the_first_attempt() {
    let server = Server::start().await;
    let (p, org) = client(&server, json!({}));
    let session = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap();
    let since = chrono::Utc::now() - chrono::Duration::seconds(10);
    let target = customer_message("early", "first");
    p.send_customer_message(&session, &target).await.unwrap();
    for i in 0..230 {
        p.send_customer_message(&session, &customer_message(&format!("n{i}"), "more"))
            .await
            .unwrap();
    }
    let before = server.requests().len();
    assert!(
        p.has_customer_message(&session, &target, since)
            .await
            .unwrap()
    );
    let pages: Vec<Rec> = server.requests()[before..].to_vec();
    assert_eq!(pages.len(), 3, "three pages of 100");
    assert!(query_param(&pages[1].query, "page[before]").is_some());
    assert!(
        !p.has_customer_message(&session, &customer_message("never", "x"), since)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn errors_carry_codes_never_secrets_or_customer_data() {
    let server = Server::start().await;
    let (zendesk, mut live) = configs(&server.url, json!({}));
    live.secret = escalator::secret::Secret::new("wrong-secret-canary");
    let p = ZendeskLive::new(
        reqwest::Client::new(),
        "acme",
        zendesk.clone(),
        live.clone(),
    );
    let (_, org) = client(&server, json!({}));
    let err = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    let escalator::error::ProcessError::Provider(pe) = &err else {
        panic!("{err}")
    };
    assert_eq!(pe.kind, ProviderErrorKind::Authentication);
    assert!(
        pe.message.contains("unauthorized"),
        "the code is kept: {pe}"
    );
    for canary in [
        "canary", EMAIL, NAME, "Lovelace", SECRET, API_TOKEN, "Bad key",
    ] {
        assert!(!text.contains(canary), "{canary} leaked: {text}");
    }

    // A rate limit: transient, with the code, without the title.
    let (p, org) = client(&server, json!({}));
    server.fault("create_user", 1, Fault::Refuse(429));
    let err = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("too_many_requests"), "{text}");
    assert!(
        !text.contains("canary") && !text.contains("Slow down"),
        "{text}"
    );
    // The configuration and the provider never print their secrets.
    let debug = format!("{zendesk:?} {live:?}");
    assert!(!debug.contains(SECRET) && !debug.contains(API_TOKEN));
}

#[tokio::test]
async fn the_message_scan_stops_before_the_first_attempt() {
    let server = Server::start().await;
    let (p, org) = client(&server, json!({}));
    // An hour-old conversation: its first 101 messages predate the attempt.
    server.w().backdate_secs = 3600;
    let session = hand_over(&p, &org, &escalation(json!([])), &MemJournal::default())
        .await
        .unwrap();
    let old = customer_message("old", "from before");
    p.send_customer_message(&session, &old).await.unwrap();
    for i in 0..100 {
        let m = customer_message(&format!("o{i}"), "older");
        p.send_customer_message(&session, &m).await.unwrap();
    }
    server.w().backdate_secs = 0;
    for i in 0..150 {
        let m = customer_message(&format!("n{i}"), "newer");
        p.send_customer_message(&session, &m).await.unwrap();
    }
    let since = chrono::Utc::now() - chrono::Duration::seconds(30);
    let before = server.requests().len();
    assert!(
        !p.has_customer_message(&session, &old, since).await.unwrap(),
        "a message from before the first attempt is not looked for"
    );
    assert_eq!(
        server.requests().len() - before,
        2,
        "the newest page, then the page that reaches past the first attempt"
    );
}
