//! The simulator's live Zendesk: Sunshine Conversations v2 over real HTTP,
//! passControl making a messaging ticket, and the agent's side delivered as
//! Zendesk webhooks to a tiny in-test receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "common/openapi.rs"]
mod openapi;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use escalator::sim::{
    self, FaultRule, SimHandle, SimLiveError, SimSchedule, SimSettings, WebhookTarget,
};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

const APP: &str = "sim-app";
const KEY_ID: &str = "sim-key";
const KEY_SECRET: &str = "sim-sunshine-secret";
const ZD_USER: &str = "agent@example.com/token";
const ZD_TOKEN: &str = "sim-zendesk-token";
const BEARER: &str = "receiver-bearer-token-0123456789";
const SIGNING_SECRET: &str = "receiver-signing-secret";
const ORG: &str = "org-live";
/// Upper bound for an asynchronous delivery to arrive (not a sleep: we wait on a channel).
const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (SimHandle, reqwest::Client) {
    let handle = sim::start("127.0.0.1:0".parse().unwrap(), SimSettings::default())
        .await
        .unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    (handle, client)
}

/// One webhook request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

#[derive(Clone)]
struct ReceiverState {
    status: Arc<Mutex<u16>>,
    seen: Arc<Mutex<Vec<Received>>>,
    feed: mpsc::UnboundedSender<Received>,
}

/// A webhook endpoint that records every request and answers `status`.
struct Receiver {
    url: String,
    state: ReceiverState,
    feed: mpsc::UnboundedReceiver<Received>,
}

impl Receiver {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = ReceiverState {
            status: Arc::new(Mutex::new(200)),
            seen: Arc::new(Mutex::new(Vec::new())),
            feed: tx,
        };
        async fn take(
            State(state): State<ReceiverState>,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let received = Received {
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            state.seen.lock().unwrap().push(received.clone());
            let _ = state.feed.send(received);
            StatusCode::from_u16(*state.status.lock().unwrap()).unwrap()
        }
        let app = Router::new().fallback(take).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}/webhooks/zendesk"),
            state,
            feed: rx,
        }
    }

    fn target(&self, signed: bool, trigger: bool) -> WebhookTarget {
        WebhookTarget {
            url: self.url.clone(),
            org_id: ORG.to_owned(),
            bearer_token: BEARER.to_owned(),
            signing_secret: signed.then(|| SIGNING_SECRET.to_owned()),
            session_end_trigger: trigger,
        }
    }

    fn answer(&self, status: u16) {
        *self.state.status.lock().unwrap() = status;
    }

    /// Takes everything received so far (and drains the feed to match).
    fn take(&mut self) -> Vec<Received> {
        while self.feed.try_recv().is_ok() {}
        std::mem::take(&mut *self.state.seen.lock().unwrap())
    }

    /// Waits for the next request (deliveries spawned by the simulator).
    async fn next(&mut self) -> Received {
        let received = tokio::time::timeout(WAIT, self.feed.recv())
            .await
            .expect("a webhook delivery in time")
            .expect("receiver open");
        let mut seen = self.state.seen.lock().unwrap();
        if let Some(pos) = seen.iter().position(|r| r.body == received.body) {
            seen.remove(pos);
        }
        received
    }
}

fn sc(sim: &SimHandle, rest: &str) -> String {
    format!("{}/sc/v2/apps/{APP}/{rest}", sim.base_url())
}

async fn sc_send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client
        .request(method, url)
        .basic_auth(KEY_ID, Some(KEY_SECRET));
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value)
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    sc_send(client, reqwest::Method::POST, url, Some(body)).await
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    sc_send(client, reqwest::Method::GET, url, None).await
}

async fn zd_get(sim: &SimHandle, client: &reqwest::Client, rest: &str) -> (u16, Value) {
    let resp = client
        .get(format!("{}/api/v2/{rest}", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn create_user(sim: &SimHandle, client: &reqwest::Client, external_id: &str) -> String {
    let (status, body) = post(
        client,
        sc(sim, "users"),
        json!({"externalId": external_id, "profile": {"givenName": "Ada", "surname": "Lovelace", "email": "ada@example.com"}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["user"]["id"].as_str().unwrap().to_owned()
}

async fn create_conversation(sim: &SimHandle, client: &reqwest::Client, user_id: &str) -> String {
    let (status, body) = post(
        client,
        sc(sim, "conversations"),
        json!({"type": "personal", "participants": [{"userId": user_id, "subscribeSDKClient": false}],
               "metadata": {"escalator_org_id": ORG, "escalator_conversation_id": "conv-1"}}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["conversation"]["id"].as_str().unwrap().to_owned()
}

async fn post_text(
    sim: &SimHandle,
    client: &reqwest::Client,
    conv: &str,
    author: Value,
    text: &str,
) -> (u16, Value) {
    post(
        client,
        sc(sim, &format!("conversations/{conv}/messages")),
        json!({"author": author, "content": {"type": "text", "text": text},
               "metadata": {"escalator_message_id": text.chars().take(32).collect::<String>()}}),
    )
    .await
}

/// User, conversation, `lines` user messages, passControl with metadata; returns (conversation, message ids).
async fn hand_over(
    sim: &SimHandle,
    client: &reqwest::Client,
    external_id: &str,
    lines: usize,
) -> (String, Vec<String>) {
    let user = create_user(sim, client, external_id).await;
    let conv = create_conversation(sim, client, &user).await;
    let mut ids = Vec::new();
    for i in 0..lines {
        let (status, body) = post_text(
            sim,
            client,
            &conv,
            json!({"type": "user", "userId": user}),
            &format!("line {i}"),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["messages"][0]["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = post(
        client,
        sc(sim, &format!("conversations/{conv}/passControl")),
        json!({"switchboardIntegration": "zd-agentWorkspace", "metadata": {
            "first_message_id": ids[0],
            "dataCapture.systemField.requester.name": "Ada Lovelace",
            "dataCapture.systemField.requester.email": "ada@example.com",
            "dataCapture.systemField.group_id": "42",
            "dataCapture.systemField.tags": "fullview_ai,esc_abc123",
            "dataCapture.ticketField.360001": "gold",
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    (conv, ids)
}

fn verify_signature(r: &Received) {
    let timestamp = r
        .header("x-zendesk-webhook-signature-timestamp")
        .expect("signature timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
        "ISO-8601 timestamp: {timestamp}"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(r.body.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        r.header("x-zendesk-webhook-signature"),
        Some(expected.as_str())
    );
}

fn assert_auth_headers(r: &Received) {
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
    assert_eq!(r.header("fv-organisation-id"), Some(ORG));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-zendesk-webhook-id").is_some());
    assert!(r.header("x-zendesk-webhook-invocation-id").is_some());
}

#[tokio::test]
async fn users_conflict_keys_and_apps() {
    let (sim, client) = setup().await;
    let id = create_user(&sim, &client, "customer/1").await;

    let (status, body) = post(
        &client,
        sc(&sim, "users"),
        json!({"externalId": "customer/1"}),
    )
    .await;
    assert_eq!(status, 409);
    assert_eq!(
        body,
        json!({"errors": [{"code": "conflict", "title": "User already exists"}]})
    );
    // Looked up by external id (URL-encoded) and by id.
    let (status, body) = get(&client, sc(&sim, "users/customer%2F1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["id"], id.as_str());
    assert_eq!(body["user"]["profile"]["givenName"], "Ada");
    let (status, _) = get(&client, sc(&sim, &format!("users/{id}"))).await;
    assert_eq!(status, 200);
    let (status, body) = get(&client, sc(&sim, "users/nobody")).await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], "user_not_found");

    // A wrong secret: 401; an app no key names: 404.
    let resp = client
        .post(sc(&sim, "users"))
        .basic_auth(KEY_ID, Some("wrong"))
        .json(&json!({"externalId": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "unauthorized");
    let (status, body) = get(
        &client,
        format!("{}/sc/v2/apps/other-app/users/x", sim.base_url()),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["errors"][0]["code"], "app_not_found");
    assert_eq!(sim.sunshine_users().len(), 1);
}

#[tokio::test]
async fn conversations_messages_limits_and_pagination() {
    let (sim, client) = setup().await;
    let user = create_user(&sim, &client, "c-1").await;
    let conv = create_conversation(&sim, &client, &user).await;

    let (status, body) = get(&client, sc(&sim, &format!("conversations/{conv}"))).await;
    assert_eq!(status, 200);
    let c = &body["conversation"];
    assert_eq!(c["metadata"]["escalator_conversation_id"], "conv-1");
    assert_eq!(c["type"], "personal");
    assert_eq!(c["isDefault"], true);
    assert_eq!(c["activeSwitchboardIntegration"]["name"], "zd-answerBot");

    // A lost answer (the fault rule acts after the real effect): the
    // conversation exists although the client saw 503, and the lookup finds it.
    sim.inject(FaultRule {
        method: Some("POST".to_owned()),
        path_prefix: format!("/sc/v2/apps/{APP}/conversations"),
        times: Some(1),
        status: Some(503),
        after_effect: true,
        ..FaultRule::default()
    });
    let (status, body) = post(
        &client,
        sc(&sim, "conversations"),
        json!({"type": "personal", "participants": [{"userId": user}], "metadata": {"escalator_conversation_id": "lost"}}),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["errors"][0]["code"], "service_unavailable");
    let (_, body) = get(
        &client,
        sc(&sim, &format!("conversations?filter[userId]={user}")),
    )
    .await;
    let lost = body["conversations"][1]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        body["conversations"][1]["metadata"]["escalator_conversation_id"],
        "lost"
    );
    let recorded = sim.requests();
    let last = recorded.last().unwrap();
    assert!((last.status, last.faulted) == (200, false) && last.path.contains("filter"));
    assert!(recorded.iter().all(|r| {
        r.headers
            .iter()
            .all(|(n, v)| n != "authorization" || v == "<redacted>")
    }));

    // Multi-conversations on (default): a second personal conversation is fine.
    let second = create_conversation(&sim, &client, &user).await;
    let (status, body) = get(
        &client,
        sc(&sim, &format!("conversations?filter[userId]={user}")),
    )
    .await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![conv.as_str(), lost.as_str(), second.as_str()]);
    assert_eq!(body["conversations"][2]["isDefault"], false);
    // Off: refused, and nothing is made.
    sim.set_multi_convo(APP, false);
    let (status, body) = post(
        &client,
        sc(&sim, "conversations"),
        json!({"type": "personal", "participants": [{"userExternalId": "c-1"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["code"], "bad_request");
    assert!(
        body["errors"][0]["title"]
            .as_str()
            .unwrap()
            .contains("multiConvoEnabled")
    );
    assert_eq!(sim.sunshine_conversations().len(), 3);

    // Text limits: 4,096 characters pass, 4,097 do not.
    let author = json!({"type": "user", "userId": user});
    let (status, body) = post_text(&sim, &client, &conv, author.clone(), &"é".repeat(4096)).await;
    assert_eq!(status, 201, "{body}");
    let m = &body["messages"][0];
    assert_eq!(m["author"]["type"], "user");
    assert_eq!(m["author"]["userId"], user.as_str());
    assert_eq!(m["source"]["type"], "api");
    assert!(m["received"].is_string());
    let (status, body) = post_text(&sim, &client, &conv, author.clone(), &"a".repeat(4097)).await;
    assert_eq!(status, 400);
    assert_eq!(body["errors"][0]["code"], "bad_request");

    // 249 more messages (250 in all), listed backwards 100 at a time.
    for i in 1..250 {
        let (status, _) = post_text(&sim, &client, &conv, author.clone(), &format!("m{i}")).await;
        assert_eq!(status, 201);
    }
    let all: Vec<String> = sim.sunshine_conversations()[0]
        .messages
        .iter()
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(all.len(), 250);
    let page_ids = |body: &Value| -> Vec<String> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let url = sc(&sim, &format!("conversations/{conv}/messages"));
    let (status, newest) = get(&client, url.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&newest), all[150..].to_vec());
    assert_eq!(newest["meta"]["hasMore"], true);
    assert_eq!(newest["meta"]["beforeCursor"], all[150].as_str());
    assert!(
        newest["links"]["prev"]
            .as_str()
            .unwrap()
            .contains("page[before]=")
    );
    let (_, middle) = get(&client, format!("{url}?page[before]={}", all[150])).await;
    assert_eq!(page_ids(&middle), all[50..150].to_vec());
    assert_eq!(middle["meta"]["hasMore"], true);
    let (_, oldest) = get(&client, format!("{url}?page[before]={}", all[50])).await;
    assert_eq!(page_ids(&oldest), all[..50].to_vec());
    assert_eq!(oldest["meta"]["hasMore"], false);
    assert!(oldest["meta"].get("beforeCursor").is_none());
    let (status, _) = get(
        &client,
        format!("{url}?page[before]={}&page[after]={}", all[1], all[0]),
    )
    .await;
    assert_eq!(status, 400);

    // Past the limit: 423.
    sim.set_sunshine_message_limit(250);
    let (status, body) = post_text(&sim, &client, &conv, author, "one too many").await;
    assert_eq!(status, 423);
    assert_eq!(body["errors"][0]["code"], "locked");

    // Activities: business typing counted; user typing refused as the spec says.
    let activity = sc(&sim, &format!("conversations/{conv}/activity"));
    let (status, _) = post(
        &client,
        activity.clone(),
        json!({"author": {"type": "business"}, "type": "typing:start"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &client,
        activity.clone(),
        json!({"author": {"type": "user", "userId": user}, "type": "typing:start"}),
    )
    .await;
    assert_eq!(status, 400);
    sim.allow_user_typing(true);
    let (status, _) = post(
        &client,
        activity,
        json!({"author": {"type": "user", "userId": user}, "type": "typing:stop"}),
    )
    .await;
    assert_eq!(status, 200);
    let c = &sim.sunshine_conversations()[0];
    assert_eq!(c.activities.get("typing:start"), Some(&1));
    assert_eq!(c.activities.get("typing:stop"), Some(&1));
}

#[tokio::test]
async fn pass_control_makes_one_messaging_ticket() {
    let (sim, client) = setup().await;
    let user = create_user(&sim, &client, "c-2").await;
    let conv = create_conversation(&sim, &client, &user).await;
    let mut ids = Vec::new();
    for i in 0..15 {
        let author = if i % 2 == 0 {
            json!({"type": "user", "userId": user})
        } else {
            json!({"type": "business", "displayName": "AI assistant"})
        };
        let (_, body) = post_text(&sim, &client, &conv, author, &format!("line {i}")).await;
        ids.push(body["messages"][0]["id"].as_str().unwrap().to_owned());
    }
    let pass = sc(&sim, &format!("conversations/{conv}/passControl"));
    let metadata = json!({
        "first_message_id": ids[2],
        "dataCapture.systemField.requester.name": "Ada Lovelace",
        "dataCapture.systemField.requester.email": "ada@example.com",
        "dataCapture.systemField.group_id": "42",
        "dataCapture.systemField.assignee_id": "9002",
        "dataCapture.systemField.tags": "fullview_ai,esc_abc123",
        "dataCapture.ticketField.360001": "gold",
    });
    let (status, body) = post(
        &client,
        pass.clone(),
        json!({"switchboardIntegration": "zd-agentWorkspace", "metadata": metadata}),
    )
    .await;
    assert_eq!((status, body), (200, json!({})));

    let tickets = sim.messaging_tickets();
    assert_eq!(tickets.len(), 1);
    let c = &sim.sunshine_conversations()[0];
    assert_eq!(c.ticket_id, Some(tickets[0].id));
    assert!(c.transcript_from_first_message_id);
    assert!(!c.whole_transcript);
    assert_eq!(c.transcript_message_ids, ids[2..].to_vec());
    assert_eq!(tickets[0].comments.len(), 13);

    let (status, body) = zd_get(&sim, &client, &format!("tickets/{}", tickets[0].id)).await;
    assert_eq!(status, 200);
    let t = &body["ticket"];
    assert_eq!(t["via"]["channel"], "native_messaging");
    assert_eq!(t["status"], "new");
    assert_eq!(t["group_id"], 42);
    assert_eq!(t["assignee_id"], 9002);
    assert_eq!(t["tags"], json!(["fullview_ai", "esc_abc123"]));
    assert_eq!(t["custom_fields"], json!([{"id": 360001, "value": "gold"}]));
    assert_eq!(tickets[0].requester_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(
        tickets[0].requester_email.as_deref(),
        Some("ada@example.com")
    );

    let (_, body) = get(&client, sc(&sim, &format!("conversations/{conv}"))).await;
    assert_eq!(
        body["conversation"]["activeSwitchboardIntegration"],
        json!({"id": "5ef21b86e933b7355c11c604", "name": "zd-agentWorkspace",
               "integrationId": "5ef21b86e933b7355c11c605", "integrationType": "zd:agentWorkspace"})
    );

    // Again while Agent Workspace has control: counted, no second ticket.
    let (status, _) = post(
        &client,
        pass,
        json!({"switchboardIntegration": "zd-agentWorkspace", "metadata": metadata}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(sim.sunshine_conversations()[0].pass_control_count, 2);
    assert_eq!(sim.messaging_tickets().len(), 1);

    // Without first_message_id: only the last 10 messages.
    let other = create_conversation(&sim, &client, &user).await;
    let mut other_ids = Vec::new();
    for i in 0..12 {
        let (_, body) = post_text(
            &sim,
            &client,
            &other,
            json!({"type": "user", "userId": user}),
            &format!("o{i}"),
        )
        .await;
        other_ids.push(body["messages"][0]["id"].as_str().unwrap().to_owned());
    }
    let (status, _) = post(
        &client,
        sc(&sim, &format!("conversations/{other}/passControl")),
        json!({"switchboardIntegration": "zd:agentWorkspace"}),
    )
    .await;
    assert_eq!(status, 200);
    let c = sim
        .sunshine_conversations()
        .into_iter()
        .find(|c| c.id == other)
        .unwrap();
    assert!(!c.transcript_from_first_message_id);
    assert_eq!(c.transcript_message_ids, other_ids[2..].to_vec());
    assert_eq!(sim.messaging_tickets().len(), 2);
    // Unknown switchboard integration: 404, nothing recorded.
    let (status, body) = post(
        &client,
        sc(&sim, &format!("conversations/{other}/passControl")),
        json!({"switchboardIntegration": "somebody-else"}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        body["errors"][0]["code"],
        "switchboard_integration_not_found"
    );
}

#[tokio::test]
async fn agent_side_is_delivered_as_signed_zendesk_webhooks() {
    let (sim, client) = setup().await;
    let mut receiver = Receiver::start().await;
    sim.set_zendesk_webhook(receiver.target(true, true));
    let (conv, _) = hand_over(&sim, &client, "c-3", 3).await;
    let ticket = sim.messaging_tickets()[0].clone();
    let ticket_id = ticket.id.to_string();

    // Join: NEW -> OPEN, then the assignment.
    assert_eq!(sim.agent_joins(&conv, 9001).await, Ok(vec![200, 200]));
    let got = receiver.take();
    assert_eq!(got.len(), 2);
    for r in &got {
        assert_auth_headers(r);
        verify_signature(r);
    }
    let status = got[0].json();
    assert_eq!(status["type"], "zen:event-type:ticket.status_changed");
    assert_eq!(status["subject"], format!("zen:ticket:{ticket_id}"));
    assert_eq!(status["zendesk_event_version"], "2022-11-06");
    assert!(status["account_id"].is_u64());
    assert!(status["time"].is_string());
    assert_eq!(status["event"]["previous"], "NEW");
    assert_eq!(status["event"]["current"], "OPEN");
    assert_eq!(status["detail"]["id"], ticket_id.as_str());
    assert_eq!(status["detail"]["status"], "OPEN");
    assert_eq!(status["detail"]["group_id"], "42");
    assert_eq!(status["detail"]["assignee_id"], "9001");
    assert_eq!(
        status["detail"]["tags"],
        json!(["fullview_ai", "esc_abc123"])
    );
    assert_eq!(status["detail"]["via"]["channel"], "native_messaging");
    assert!(status["detail"].get("conversation_id").is_none());
    let assign = got[1].json();
    assert_eq!(
        assign["type"],
        "zen:event-type:ticket.agent_assignment_changed"
    );
    assert_eq!(assign["event"]["current"], "9001");
    assert_eq!(assign["event"]["previous"], Value::Null);
    assert!(assign["event"]["meta"]["sequence"].is_object());
    assert_ne!(status["id"], assign["id"]);
    // The agent's name is looked up in the Support API.
    let (code, body) = zd_get(&sim, &client, "users/9001").await;
    assert_eq!(code, 200);
    assert_eq!(body["user"]["name"], "Alex Agent");
    assert_eq!(body["user"]["role"], "agent");
    let (code, body) = zd_get(&sim, &client, "users/123456").await;
    assert_eq!(code, 404);
    assert_eq!(body["error"], "RecordNotFound");

    // Reply: a business message from Agent Workspace plus message_added.
    assert_eq!(
        sim.agent_replies(&conv, "Hi, Alex here").await,
        Ok(vec![200])
    );
    let got = receiver.take();
    let added = got[0].json();
    assert_eq!(
        added["type"],
        "zen:event-type:messaging_ticket.message_added"
    );
    assert_eq!(added["detail"], json!({"id": ticket_id}));
    assert_eq!(
        added["event"]["actor"],
        json!({"id": "9001", "name": "Alex Agent", "type": "agent"})
    );
    assert_eq!(added["event"]["conversation_id"], conv.as_str());
    assert_eq!(added["event"]["message"]["body"], "Hi, Alex here");
    let c = &sim.sunshine_conversations()[0];
    let last = c.messages.last().unwrap();
    assert_eq!(added["event"]["message"]["id"], last.id.as_str());
    assert_eq!(last.author_type, "business");
    assert_eq!(last.display_name.as_deref(), Some("Alex Agent"));
    assert_eq!(last.source_type, "zd:agentWorkspace");
    let (_, page) = get(&client, sc(&sim, &format!("conversations/{conv}/messages"))).await;
    let listed = page["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(listed["source"]["type"], "zd:agentWorkspace");
    assert_eq!(listed["metadata"]["__zendesk_msg.agent.id"], "9001");

    // Leave: the assignment goes to null.
    assert_eq!(sim.agent_leaves(&conv).await, Ok(vec![200]));
    let left = receiver.take()[0].json();
    assert_eq!(
        left["type"],
        "zen:event-type:ticket.agent_assignment_changed"
    );
    assert_eq!(left["event"]["current"], Value::Null);
    assert_eq!(left["event"]["previous"], "9001");

    // Solve: OPEN -> SOLVED.
    assert_eq!(sim.solve_ticket(&conv).await, Ok(vec![200]));
    let solved = receiver.take()[0].json();
    assert_eq!(solved["event"]["current"], "SOLVED");
    assert_eq!(solved["event"]["previous"], "OPEN");

    // End session: the trigger body exactly as the admins' guide has it.
    assert_eq!(sim.end_session(&conv).await, Ok(vec![200]));
    let ended = receiver.take().remove(0);
    assert_auth_headers(&ended);
    verify_signature(&ended);
    assert_eq!(
        ended.body,
        format!("{{\n\"ticket_id\": \"{ticket_id}\",\n\"type\": \"fv:conversation_closed\",\n}}")
    );
    assert!(serde_json::from_str::<Value>(&ended.body).is_err());
    let lenient = escalator::webhook::parse_lenient(ended.body.as_bytes()).unwrap();
    assert_eq!(lenient["type"], "fv:conversation_closed");
    assert_ne!(
        ended.header("x-zendesk-webhook-id"),
        got[0].header("x-zendesk-webhook-id"),
        "the trigger is a webhook of its own"
    );

    let types: Vec<String> = sim
        .webhook_deliveries()
        .into_iter()
        .map(|d| {
            assert_eq!(d.status, 200);
            d.event_type
        })
        .collect();
    assert_eq!(
        types,
        [
            "zen:event-type:ticket.status_changed",
            "zen:event-type:ticket.agent_assignment_changed",
            "zen:event-type:messaging_ticket.message_added",
            "zen:event-type:ticket.agent_assignment_changed",
            "zen:event-type:ticket.status_changed",
            "fv:conversation_closed",
        ]
    );
}

#[tokio::test]
async fn duplicates_and_reordering_on_command() {
    let (sim, client) = setup().await;
    let mut receiver = Receiver::start().await;
    sim.set_zendesk_webhook(receiver.target(false, false));
    let (conv, _) = hand_over(&sim, &client, "c-4", 1).await;

    // The next event twice: the same event id, delivered back to back.
    sim.duplicate_next(1);
    assert_eq!(sim.agent_joins(&conv, 9002).await, Ok(vec![200, 200, 200]));
    let got = receiver.take();
    let ids: Vec<Value> = got.iter().map(|r| r.json()["id"].clone()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
    assert!(got[0].header("x-zendesk-webhook-signature").is_none());
    let deliveries = sim.webhook_deliveries();
    assert_eq!(
        deliveries.iter().map(|d| d.duplicate).collect::<Vec<_>>(),
        [false, true, false]
    );

    // Held, then released newest first.
    sim.hold_deliveries();
    assert_eq!(sim.agent_replies(&conv, "first").await, Ok(vec![]));
    assert_eq!(sim.agent_replies(&conv, "second").await, Ok(vec![]));
    assert!(receiver.take().is_empty());
    assert_eq!(sim.release_held(true).await, Ok(vec![200, 200]));
    let bodies: Vec<Value> = receiver
        .take()
        .iter()
        .map(|r| r.json()["event"]["message"]["body"].clone())
        .collect();
    assert_eq!(bodies, [json!("second"), json!("first")]);
    // Holding stopped: the next one goes straight out.
    assert_eq!(sim.agent_replies(&conv, "third").await, Ok(vec![200]));
    assert_eq!(receiver.take().len(), 1);

    // The receiver's answer is what gets recorded.
    receiver.answer(503);
    assert_eq!(sim.unrelated_ticket_event().await, Ok(vec![503]));
    let unrelated = receiver.take()[0].json();
    assert_eq!(unrelated["type"], "zen:event-type:ticket.status_changed");
    assert_eq!(unrelated["detail"]["tags"], json!([]));
    assert_ne!(unrelated["detail"]["via"]["channel"], "native_messaging");
    assert_eq!(sim.webhook_deliveries().last().unwrap().status, 503);

    // The HTTP mirror of the actions (for `escalator sim`).
    receiver.answer(200);
    let resp = client
        .post(format!(
            "{}/_sim/zendesk/live/agent-replies",
            sim.base_url()
        ))
        .json(&json!({"conversation_id": conv, "text": "over http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"statuses": [200]}));
    assert_eq!(
        receiver.take()[0].json()["event"]["message"]["body"],
        "over http"
    );
}

#[tokio::test]
async fn end_user_messages_are_reported_after_pass_control() {
    let (sim, client) = setup().await;
    let mut receiver = Receiver::start().await;
    sim.set_zendesk_webhook(receiver.target(true, false));
    let user = create_user(&sim, &client, "c-5").await;
    let conv = create_conversation(&sim, &client, &user).await;
    let author = json!({"type": "user", "userId": user});
    let (status, _) = post_text(&sim, &client, &conv, author.clone(), "before").await;
    assert_eq!(status, 201);
    let (status, _) = post(
        &client,
        sc(&sim, &format!("conversations/{conv}/passControl")),
        json!({"switchboardIntegration": "zd-agentWorkspace"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = post_text(&sim, &client, &conv, author.clone(), "after").await;
    assert_eq!(status, 201);
    let message_id = body["messages"][0]["id"].as_str().unwrap().to_owned();

    let echo = receiver.next().await;
    assert_auth_headers(&echo);
    verify_signature(&echo);
    let echo = echo.json();
    assert_eq!(
        echo["type"],
        "zen:event-type:messaging_ticket.message_added"
    );
    assert_eq!(echo["event"]["actor"]["type"], "end_user");
    assert_eq!(echo["event"]["message"]["id"], message_id.as_str());
    assert_eq!(echo["event"]["message"]["body"], "after");
    assert_eq!(echo["event"]["conversation_id"], conv.as_str());
    // Only "after" is reported ("before" preceded the hand-over): checked
    // below, as the delivery log counts it once the receiver has answered.

    // Once solved, Agent Workspace has released control: no more echoes.
    assert_eq!(sim.solve_ticket(&conv).await, Ok(vec![200]));
    let solved = receiver.next().await.json();
    assert_eq!(solved["event"]["current"], "SOLVED");
    let (status, _) = post_text(&sim, &client, &conv, author, "later").await;
    assert_eq!(status, 201);
    // A marker event after it: were an echo of "later" spawned, it would be sent first.
    assert_eq!(sim.unrelated_ticket_event().await, Ok(vec![200]));
    let next = receiver.next().await.json();
    assert_eq!(next["type"], "zen:event-type:ticket.status_changed");
    let types: Vec<String> = sim
        .webhook_deliveries()
        .into_iter()
        .map(|d| d.event_type)
        .collect();
    assert_eq!(
        types,
        [
            "zen:event-type:messaging_ticket.message_added",
            "zen:event-type:ticket.status_changed",
            "zen:event-type:ticket.status_changed",
        ]
    );
}

#[tokio::test]
async fn schedules_availability_and_action_errors() {
    let (sim, client) = setup().await;
    let (status, body) = zd_get(&sim, &client, "business_hours/schedules/1").await;
    assert_eq!(status, 200);
    assert_eq!(
        body["schedule"]["intervals"],
        json!([{"start_time": 0, "end_time": 10080}])
    );
    sim.set_schedule(SimSchedule {
        id: 7,
        name: "Copenhagen office".to_owned(),
        time_zone: "Copenhagen".to_owned(),
        intervals: vec![(1980, 2460), (3420, 3900)],
    });
    let (_, body) = zd_get(&sim, &client, "business_hours/schedules/7").await;
    assert_eq!(body["schedule"]["time_zone"], "Copenhagen");
    assert_eq!(body["schedule"]["intervals"][1]["start_time"], 3420);
    sim.set_schedule(SimSchedule::always_closed(1));
    let (_, body) = zd_get(&sim, &client, "business_hours/schedules/1").await;
    assert_eq!(body["schedule"]["intervals"], json!([]));
    let (status, _) = zd_get(&sim, &client, "business_hours/schedules/99").await;
    assert_eq!(status, 404);

    let online = "agent_availabilities?filter[channel_status]=messaging:online";
    let (status, body) = zd_get(&sim, &client, online).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"data": [], "included": [], "meta": {"has_more": false}})
    );
    sim.set_agent_online(9002, true);
    let (_, body) = zd_get(&sim, &client, online).await;
    assert_eq!(
        body,
        json!({"data":[{"id":"9002","type":"agent_availabilities","attributes":{"agent_id":9002,"agent_status":{"id":1,"name":"online"}},"relationships":{"channels":{"data":[{"id":"9002_messaging","type":"channels"}]}}}],"included":[{"id":"9002_messaging","type":"channels","attributes":{"name":"messaging","status":"online"}}],"meta":{"has_more":false}})
    );
    sim.set_agent_availability_api(false);
    let (status, _) = zd_get(&sim, &client, online).await;
    assert_eq!(status, 404);
    assert_eq!(
        sim.zendesk_agents()
            .iter()
            .map(|a| a.id)
            .collect::<Vec<_>>(),
        [9001, 9002]
    );

    // Actions on what does not exist say why.
    assert_eq!(
        sim.agent_joins("nope", 9001).await,
        Err(SimLiveError::UnknownConversation("nope".to_owned()))
    );
    let user = create_user(&sim, &client, "c-6").await;
    let conv = create_conversation(&sim, &client, &user).await;
    assert_eq!(
        sim.agent_replies(&conv, "x").await,
        Err(SimLiveError::NoTicket(conv.clone()))
    );
    let (status, _) = post(
        &client,
        sc(&sim, &format!("conversations/{conv}/passControl")),
        json!({"switchboardIntegration": "zd-agentWorkspace"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        sim.agent_joins(&conv, 9001).await,
        Err(SimLiveError::NoWebhookTarget)
    );

    // reset() forgets the live state too.
    sim.reset();
    assert!(sim.sunshine_users().is_empty());
    assert!(sim.sunshine_conversations().is_empty());
    assert!(sim.webhook_deliveries().is_empty());
    assert!(sim.zendesk_agents().iter().all(|a| !a.online));
}

/// Validates `instance` against `#/components/schemas/<name>` of the spec.
fn assert_matches_spec(name: &str, instance: &Value) {
    let errors: Vec<String> = openapi::component_validator(name)
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{name}: {errors:?}\n{instance}");
}

#[tokio::test]
async fn sunshine_answers_match_the_official_spec() {
    if openapi::spec().is_none() {
        return;
    }
    // The check itself can fail: a wrong type is caught through the $refs.
    let validator = openapi::component_validator("messageListResponse");
    assert!(!validator.is_valid(&json!({"messages": [{"id": 5}]})));
    assert!(!validator.is_valid(&json!({"messages": [{"author": {"type": "robot"}}]})));
    assert!(validator.is_valid(&json!({"messages": [{"id": "5", "metadata": null}]})));
    let (sim, client) = setup().await;
    let (status, user) = post(
        &client,
        sc(&sim, "users"),
        json!({"externalId": "spec-1", "profile": {"givenName": "Ada", "email": "ada@example.com"}}),
    )
    .await;
    assert_eq!(status, 201);
    assert_matches_spec("userResponse", &user);
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();
    let (_, bare) = post(&client, sc(&sim, "users"), json!({})).await;
    assert_matches_spec("userResponse", &bare);
    let (_, fetched) = get(&client, sc(&sim, "users/spec-1")).await;
    assert_matches_spec("userResponse", &fetched);
    let (_, conflict) = post(&client, sc(&sim, "users"), json!({"externalId": "spec-1"})).await;
    assert_matches_spec("errorResponse", &conflict);

    let conv = create_conversation(&sim, &client, &user_id).await;
    let (_, one) = get(&client, sc(&sim, &format!("conversations/{conv}"))).await;
    assert_matches_spec("conversationResponse", &one);
    let (_, listed) = get(
        &client,
        sc(&sim, &format!("conversations?filter[userId]={user_id}")),
    )
    .await;
    assert_matches_spec("conversationListResponse", &listed);

    let (_, posted) = post_text(
        &sim,
        &client,
        &conv,
        json!({"type": "user", "userId": user_id}),
        "hello",
    )
    .await;
    assert_matches_spec("messagePostResponse", &posted);
    let (_, business) = post(
        &client,
        sc(&sim, &format!("conversations/{conv}/messages")),
        json!({"author": {"type": "business", "displayName": "AI assistant"}, "content": {"type": "text", "text": "hi"}}),
    )
    .await;
    assert_matches_spec("messagePostResponse", &business);
    let (status, _) = post(
        &client,
        sc(&sim, &format!("conversations/{conv}/passControl")),
        json!({"switchboardIntegration": "zd-agentWorkspace"}),
    )
    .await;
    assert_eq!(status, 200);
    sim.set_zendesk_webhook(Receiver::start().await.target(false, false));
    sim.agent_replies(&conv, "agent here").await.unwrap();
    for _ in 0..120 {
        let (status, _) = post_text(
            &sim,
            &client,
            &conv,
            json!({"type": "user", "userId": user_id}),
            "more",
        )
        .await;
        assert_eq!(status, 201);
    }
    let (_, page) = get(&client, sc(&sim, &format!("conversations/{conv}/messages"))).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 100);
    assert_matches_spec("messageListResponse", &page);
    let (_, after_pass) = get(&client, sc(&sim, &format!("conversations/{conv}"))).await;
    assert_matches_spec("conversationResponse", &after_pass);
}
