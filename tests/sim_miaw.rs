//! The MIAW (Salesforce Enhanced Chat) simulator over real HTTP: REST endpoints,
//! SSE framing, replay, pings, token expiry, agent actions and the control API.

use std::time::Duration;

use escalator::sim::{self, FaultRule, SimHandle, SimSettings};
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

const ORG: &str = "00DSIM000000001";
const DEV: &str = "Sim_Messaging";
const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (SimHandle, reqwest::Client) {
    let handle = sim::start("127.0.0.1:0".parse().unwrap(), SimSettings::default())
        .await
        .unwrap();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    (handle, client)
}

async fn token(sim: &SimHandle, c: &reqwest::Client) -> Value {
    let r = c
        .post(format!(
            "{}/iamessage/api/v2/authorization/unauthenticated/access-token",
            sim.base_url()
        ))
        .json(
            &json!({"orgId": ORG, "esDeveloperName": DEV, "capabilitiesVersion": "1",
            "platform": "Web", "context": {"appName": "escalator", "clientVersion": "0.1.0"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn conv_url(sim: &SimHandle, id: &str) -> String {
    format!("{}/iamessage/api/v2/conversation/{id}", sim.base_url())
}

async fn create(sim: &SimHandle, c: &reqwest::Client, tok: &str, id: &str) -> u16 {
    c.post(format!("{}/iamessage/api/v2/conversation", sim.base_url()))
        .bearer_auth(tok)
        .json(&json!({"conversationId": id, "esDeveloperName": DEV,
            "routingAttributes": {"Escalator_Transcript": "t"}, "language": "en_US"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn send(
    sim: &SimHandle,
    c: &reqwest::Client,
    tok: &str,
    conv: &str,
    id: &str,
    new_session: bool,
) -> reqwest::Response {
    c.post(format!("{}/message", conv_url(sim, conv)))
        .bearer_auth(tok)
        .json(
            &json!({"message": {"id": id, "messageType": "StaticContentMessage",
            "staticContent": {"formatType": "Text", "text": format!("hello {id}")}},
            "esDeveloperName": DEV, "isNewMessagingSession": new_session}),
        )
        .send()
        .await
        .unwrap()
}

async fn sse(
    sim: &SimHandle,
    c: &reqwest::Client,
    tok: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut r = c
        .get(format!("{}/eventrouter/v1/sse", sim.base_url()))
        .header("Accept", "text/event-stream")
        .header("X-Org-Id", ORG)
        .bearer_auth(tok);
    if let Some(l) = last {
        r = r.header("Last-Event-Id", l);
    }
    r.send().await.unwrap()
}

fn events(
    resp: reqwest::Response,
) -> impl Stream<Item = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>> + Unpin
{
    Box::pin(
        futures_util::stream::unfold(resp, |mut r| async move {
            r.chunk().await.transpose().map(|c| (c, r))
        })
        .eventsource(),
    )
}

async fn next(
    s: &mut (
             impl Stream<Item = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>>
             + Unpin
         ),
) -> Option<Event> {
    tokio::time::timeout(WAIT, s.next())
        .await
        .expect("no SSE event in time")
        .map(|e| e.unwrap())
}

/// Next non-ping event.
async fn next_real(
    s: &mut (
             impl Stream<Item = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>>
             + Unpin
         ),
) -> Event {
    loop {
        let e = next(s).await.expect("stream ended");
        if e.event != "ping" {
            return e;
        }
    }
}

fn entry_of(e: &Event) -> (Value, Value) {
    let data: Value = serde_json::from_str(&e.data).unwrap();
    let entry = data["conversationEntry"].clone();
    let payload: Value = serde_json::from_str(entry["entryPayload"].as_str().unwrap()).unwrap();
    (entry, payload)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test]
async fn token_conversation_and_rest_answers() {
    let (sim, c) = setup().await;
    let t = token(&sim, &c).await;
    let tok = t["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(t["lastEventId"], "0");
    assert_eq!(
        t["context"]["configuration"]["embeddedServiceConfig"]["name"],
        DEV
    );
    let claims: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&tok)
        .unwrap()
        .claims;
    assert!(claims["exp"].as_i64().unwrap() > chrono::Utc::now().timestamp() + 3000);
    assert_eq!(claims["orgId"], ORG);

    // Bad deployment.
    let r = c
        .post(format!(
            "{}/iamessage/api/v2/authorization/unauthenticated/access-token",
            sim.base_url()
        ))
        .json(&json!({"orgId": "00Dnope", "esDeveloperName": DEV}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["message"], "Invalid orgId or esDeveloperName");

    // Continuation.
    let r = c
        .get(format!(
            "{}/iamessage/api/v2/authorization/continuation-access-token",
            sim.base_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cont: Value = r.json().await.unwrap();
    let tok2 = cont["accessToken"].as_str().unwrap().to_owned();
    let claims2: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(&tok2)
        .unwrap()
        .claims;
    assert_eq!(claims2["sub"], claims["sub"]);

    // Conversation create: format, 201, 409, 401, 403.
    assert_eq!(create(&sim, &c, &tok, "ABC").await, 400);
    assert_eq!(create(&sim, &c, &tok, &new_id().to_uppercase()).await, 400);
    let id = new_id();
    assert_eq!(create(&sim, &c, "nope", &id).await, 401);
    assert_eq!(create(&sim, &c, &tok, &id).await, 201);
    assert_eq!(create(&sim, &c, &tok2, &id).await, 409);
    let other = token(&sim, &c).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(create(&sim, &c, &other, &id).await, 403);

    // State.
    let st: Value = c
        .get(conv_url(&sim, &id))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["routingStatus"], "ROUTED");
    let r = c
        .get(conv_url(&sim, &new_id()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Messages: idempotent id.
    let mid = new_id();
    assert_eq!(send(&sim, &c, &tok, &id, &mid, false).await.status(), 202);
    assert_eq!(send(&sim, &c, &tok, &id, &mid, false).await.status(), 202);
    // Typing.
    let r = c
        .post(format!("{}/entry", conv_url(&sim, &id)))
        .bearer_auth(&tok)
        .json(&json!({"entryType": "TypingStartedIndicator", "id": new_id()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // Entries.
    let list: Value = c
        .get(format!(
            "{}/entries?limit=2&direction=FromStart&startTimestamp=0",
            conv_url(&sim, &id)
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = list["conversationEntries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["entryType"], "RoutingResult");
    let all: Value = c
        .get(format!("{}/entries", conv_url(&sim, &id)))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all = all["conversationEntries"].as_array().unwrap();
    assert_eq!(
        all.len(),
        3,
        "routing, queue position, one message: {all:?}"
    );
    let future = chrono::Utc::now().timestamp_millis() + 60_000;
    let none: Value = c
        .get(format!(
            "{}/entries?startTimestamp={future}",
            conv_url(&sim, &id)
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["conversationEntries"].as_array().unwrap().len(), 0);

    let snap = &sim.miaw_conversations()[0];
    assert_eq!(snap.customer_messages.len(), 1);
    assert_eq!(snap.customer_messages[0].0, mid);
    assert_eq!(snap.typing, vec!["TypingStartedIndicator".to_owned()]);
    assert_eq!(snap.routing_attributes["Escalator_Transcript"], "t");

    // Close: 204 twice; then 417.
    for _ in 0..2 {
        let r = c
            .delete(format!("{}?esDeveloperName={DEV}", conv_url(&sim, &id)))
            .bearer_auth(&tok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    assert!(sim.miaw_conversations()[0].closed);
    let last = sim.miaw_conversations()[0]
        .entries
        .last()
        .unwrap()
        .kind
        .clone();
    assert_eq!(last, "CloseConversation");

    // Business hours.
    let bh = format!(
        "{}/embeddedservice/v1/businesshours?orgId={ORG}&esConfigName={DEV}",
        sim.base_url()
    );
    let v: Value = c.get(&bh).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["businessHoursInfo"]["isActive"], true);
    sim.miaw_business_hours(false);
    let v: Value = c.get(&bh).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["businessHoursInfo"]["isActive"], false);
    let r = c
        .get(format!(
            "{}/embeddedservice/v1/businesshours?orgId={ORG}&esConfigName=x",
            sim.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(sim.miaw_token_counts(), (3, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn session_end_417_and_rate_limit_429() {
    let (sim, c) = setup().await;
    let tok = token(&sim, &c).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = new_id();
    assert_eq!(create(&sim, &c, &tok, &id).await, 201);
    assert!(sim.miaw_agent_joins(&id, "Alex Agent"));
    assert!(sim.miaw_end_session(&id));
    let r = send(&sim, &c, &tok, &id, &new_id(), false).await;
    assert_eq!(r.status(), 417);
    let r = send(&sim, &c, &tok, &id, &new_id(), true).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        send(&sim, &c, &tok, &id, &new_id(), false).await.status(),
        202
    );

    sim.miaw_rate_limit(3);
    let r = send(&sim, &c, &tok, &id, &new_id(), false).await;
    assert_eq!(r.status(), 202);
    let r = send(&sim, &c, &tok, &id, &new_id(), false).await;
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after));
    sim.shutdown().await;
}

#[tokio::test]
async fn sse_framing_replay_pings_and_expiry() {
    let (sim, c) = setup().await;
    sim.miaw_ping_interval(Duration::from_millis(200));
    let tok = token(&sim, &c).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();

    // Errors before the stream.
    assert_eq!(sse(&sim, &c, "bad", None).await.status(), 401);
    let r = c
        .get(format!("{}/eventrouter/v1/sse", sim.base_url()))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let resp = sse(&sim, &c, &tok, None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut s = events(resp);
    let id = new_id();
    assert_eq!(create(&sim, &c, &tok, &id).await, 201);
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "CONVERSATION_ROUTING_RESULT");
    assert_eq!(e.id, "1");
    let (entry, payload) = entry_of(&e);
    assert_eq!(entry["entryType"], "RoutingResult");
    assert_eq!(payload["routingType"], "Initial");
    assert_eq!(payload["failureType"], "None");
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "CONVERSATION_QUEUE_POSITION");
    assert_eq!(e.id, "2");

    // Our own message echoes as EndUser.
    let mid = new_id();
    assert_eq!(send(&sim, &c, &tok, &id, &mid, false).await.status(), 202);
    let e = next_real(&mut s).await;
    let (entry, payload) = entry_of(&e);
    assert_eq!(e.event, "CONVERSATION_MESSAGE");
    assert_eq!(entry["sender"]["role"], "EndUser");
    assert_eq!(payload["abstractMessage"]["id"], mid.as_str());

    // Agent side.
    assert!(sim.miaw_agent_joins(&id, "Alex Agent"));
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "CONVERSATION_PARTICIPANT_CHANGED");
    assert_eq!(entry_of(&e).1["entries"][0]["operation"], "add");
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "CONVERSATION_SESSION_STATUS_CHANGED");
    assert_eq!(entry_of(&e).1["sessionStatus"], "Active");
    let ident = sim.miaw_agent_replies(&id, "Hi, Alex here").unwrap();
    let e = next_real(&mut s).await;
    let (entry, payload) = entry_of(&e);
    assert_eq!(entry["identifier"], ident.as_str());
    assert_eq!(entry["sender"]["role"], "Agent");
    assert_eq!(
        payload["abstractMessage"]["staticContent"]["text"],
        "Hi, Alex here"
    );
    assert_eq!(e.id, "6");

    // A ping (no id field of its own: the parser keeps the last id).
    loop {
        let e = next(&mut s).await.unwrap();
        if e.event == "ping" {
            assert_eq!(e.data, "0");
            break;
        }
    }
    drop(s);

    // Replay after 3 (4, 5, 6), then with a limit of 1, then none.
    let mut s = events(sse(&sim, &c, &tok, Some("3")).await);
    for want in ["4", "5", "6"] {
        assert_eq!(next_real(&mut s).await.id, want);
    }
    drop(s);
    sim.miaw_replay_limit(Some(1));
    let mut s = events(sse(&sim, &c, &tok, Some("3")).await);
    assert_eq!(next_real(&mut s).await.id, "6");
    sim.miaw_agent_typing(&id, true);
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "CONVERSATION_TYPING_STARTED_INDICATOR");
    assert_eq!(e.id, "7");
    drop(s);
    sim.miaw_replay_limit(Some(0));
    let mut s = events(sse(&sim, &c, &tok, Some("3")).await);
    sim.miaw_queue_position(&id, 3);
    let e = next_real(&mut s).await;
    assert_eq!(e.id, "8");
    assert_eq!(entry_of(&e).1["queuePosition"], 3);

    // Expire now: error event, then the stream ends; continuation 401.
    sim.miaw_expire_tokens(Some(&id));
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "error");
    assert_eq!(e.data, "Jwt is expired");
    assert!(next(&mut s).await.is_none());
    let r = c
        .get(format!(
            "{}/iamessage/api/v2/authorization/continuation-access-token",
            sim.base_url()
        ))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["message"], "Jwt is expired");

    let snap = &sim.miaw_conversations()[0];
    assert_eq!(snap.connects, 4);
    assert_eq!(snap.max_concurrent_streams, 1);
    assert_eq!(
        snap.connect_last_event_ids,
        vec![
            None,
            Some("3".to_owned()),
            Some("3".to_owned()),
            Some("3".to_owned())
        ]
    );
    common_until(|| sim.miaw_streams_open() == 0).await;
    sim.shutdown().await;
}

async fn common_until(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn token_lifetime_ends_the_stream() {
    let (sim, c) = setup().await;
    sim.miaw_token_lifetime_ms(1500);
    let tok = token(&sim, &c).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut s = events(sse(&sim, &c, &tok, None).await);
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "error");
    assert_eq!(e.data, "Jwt is expired");
    assert!(next(&mut s).await.is_none());
    assert_eq!(sse(&sim, &c, &tok, None).await.status(), 401);
    sim.shutdown().await;
}

#[tokio::test]
async fn routing_failure_transfer_and_silence() {
    let (sim, c) = setup().await;
    let tok = token(&sim, &c).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    sim.miaw_fail_routing(true);
    let failed = new_id();
    assert_eq!(create(&sim, &c, &tok, &failed).await, 201);
    sim.miaw_fail_routing(false);
    let conv = &sim.miaw_conversations()[0];
    assert_eq!(conv.routing_status, "NEEDS_ROUTING");
    assert_eq!(conv.entries[0].kind, "RoutingResult");

    let mut s = events(sse(&sim, &c, &tok, Some("0")).await);
    let (_, p) = entry_of(&next_real(&mut s).await);
    assert_eq!(p["failureType"], "RoutingError");

    let id = new_id();
    assert_eq!(create(&sim, &c, &tok, &id).await, 201);
    next_real(&mut s).await;
    next_real(&mut s).await;
    sim.miaw_agent_joins(&id, "Alex Agent");
    next_real(&mut s).await;
    next_real(&mut s).await;
    assert!(sim.miaw_transfer(&id, Some("Sam Support")));
    let e = next_real(&mut s).await;
    let (_, p) = entry_of(&e);
    assert_eq!(p["entries"][0]["operation"], "remove");
    assert_eq!(p["entries"][0]["displayName"], "Alex Agent");
    let (_, p) = entry_of(&next_real(&mut s).await);
    assert_eq!(p["routingType"], "Transfer");
    let (_, p) = entry_of(&next_real(&mut s).await);
    assert_eq!(p["entries"][0]["operation"], "add");
    assert_eq!(p["entries"][0]["displayName"], "Sam Support");
    let (_, p) = entry_of(&next_real(&mut s).await);
    assert_eq!(p["sessionStatus"], "Active");
    let st: Value = c
        .get(conv_url(&sim, &id))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["routingStatus"], "ROUTED");
    sim.miaw_transfer(&id, None);
    let st: Value = c
        .get(conv_url(&sim, &id))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["routingStatus"], "TRANSFER");
    next_real(&mut s).await;
    next_real(&mut s).await;

    // Silence: nothing arrives, but the event is kept for replay.
    sim.miaw_silence(&id, true);
    sim.miaw_agent_replies(&id, "unheard");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), s.next())
            .await
            .is_err()
    );
    sim.miaw_silence(&id, false);
    let last = sim.miaw_conversations()[1].entries.len();
    assert!(last > 0);
    // Dropping the streams ends this one.
    sim.miaw_drop_streams(Some(&id));
    assert!(next(&mut s).await.is_none());
    let mut s = events(sse(&sim, &c, &tok, Some("11")).await);
    let (_, p) = entry_of(&next_real(&mut s).await);
    assert_eq!(p["abstractMessage"]["staticContent"]["text"], "unheard");

    // FaultRule on the connect: 503, recorded.
    sim.inject(FaultRule {
        path_prefix: "/eventrouter/".into(),
        path_contains: Some("/sse".into()),
        status: Some(503),
        times: Some(1),
        ..FaultRule::default()
    });
    assert_eq!(sse(&sim, &c, &tok, None).await.status(), 503);
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.path.starts_with("/eventrouter/v1/sse") && r.status == 503 && r.faulted)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn control_api_over_http() {
    let (sim, c) = setup().await;
    let tok = token(&sim, &c).await["accessToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = new_id();
    assert_eq!(create(&sim, &c, &tok, &id).await, 201);
    let mut s = events(sse(&sim, &c, &tok, None).await);
    let ctl = |p: &str| format!("{}/_sim/salesforce/miaw{p}", sim.base_url());
    let post = |p: &str, body: Value| c.post(ctl(p)).json(&body).send();

    assert_eq!(
        post(
            "/agent/join",
            json!({"conversation_id": id, "name": "Alex"})
        )
        .await
        .unwrap()
        .status(),
        200
    );
    let r: Value = post(
        "/agent/reply",
        json!({"conversation_id": id, "text": "hey"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(r["identifier"].is_string());
    next_real(&mut s).await;
    next_real(&mut s).await;
    let e = next_real(&mut s).await;
    assert_eq!(entry_of(&e).0["identifier"], r["identifier"]);
    for (p, body) in [
        (
            "/agent/typing",
            json!({"conversation_id": id, "typing": false}),
        ),
        ("/agent/leave", json!({"conversation_id": id})),
        (
            "/agent/transfer",
            json!({"conversation_id": id, "name": "Sam"}),
        ),
        (
            "/queue-position",
            json!({"conversation_id": id, "position": 2}),
        ),
        ("/end-session", json!({"conversation_id": id})),
        ("/replay-limit", json!({"limit": null})),
        ("/token-lifetime", json!({"ms": 3_600_000})),
        ("/ping-interval", json!({"ms": 15_000})),
        ("/rate-limit", json!({"per_minute": 22})),
        ("/fail-routing", json!({"enabled": false})),
        ("/business-hours", json!({"open": true})),
        ("/silence", json!({"conversation_id": id, "silent": false})),
    ] {
        assert_eq!(post(p, body).await.unwrap().status(), 200, "{p}");
    }
    assert_eq!(
        post("/agent/join", json!({"conversation_id": "nope"}))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        post("/token-lifetime", json!({})).await.unwrap().status(),
        400
    );
    let e = next_real(&mut s).await;
    assert_eq!(e.event, "CONVERSATION_TYPING_STOPPED_INDICATOR");

    let v: Value = c
        .get(ctl("/streams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["open"], 1);
    let v: Value = c
        .get(ctl("/conversations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["session_active"], false);

    // Bench emit: agent messages carrying emit_us.
    let r = post("/bench/emit", json!({"count": 3, "rate": 100}))
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut got = 0;
    while got < 3 {
        let e = next_real(&mut s).await;
        if e.event == "CONVERSATION_MESSAGE" {
            let (_, p) = entry_of(&e);
            assert!(
                p["abstractMessage"]["staticContent"]["text"]
                    .as_str()
                    .unwrap()
                    .contains("emit_us=")
            );
            got += 1;
        }
    }
    assert_eq!(
        post("/expire-tokens", json!({})).await.unwrap().status(),
        200
    );
    assert_eq!(next_real(&mut s).await.event, "error");
    assert_eq!(
        post("/drop-streams", json!({})).await.unwrap().status(),
        200
    );
    let v: Value = c
        .get(ctl("/counts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["token_requests"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn many_streams_and_gone_clients_are_cleaned_up() {
    let (sim, c) = setup().await;
    sim.miaw_ping_interval(Duration::from_millis(100));
    let mut streams = Vec::new();
    for _ in 0..200 {
        let tok = token(&sim, &c).await["accessToken"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = sse(&sim, &c, &tok, None).await;
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    assert_eq!(sim.miaw_streams_open(), 200);
    drop(streams);
    common_until(|| sim.miaw_streams_open() == 0).await;
    sim.shutdown().await;
}
