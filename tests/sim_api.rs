//! Integration tests of the provider simulator over real HTTP.

use std::time::Duration;

use escalator::sim::{self, FaultRule, SimHandle, SimSettings};
use serde_json::{Value, json};

const ZD_USER: &str = "agent@example.com/token";
const ZD_TOKEN: &str = "sim-zendesk-token";

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

fn ticket_body(external_id: &str) -> Value {
    json!({"ticket": {
        "subject": "Help needed",
        "comment": {"html_body": "<p>Transcript</p>", "public": false},
        "requester": {"name": "Ada", "email": "ada@example.com"},
        "group_id": 42,
        "tags": ["escalated", "ai"],
        "external_id": external_id,
        "custom_fields": [{"id": 1, "value": "x"}]
    }})
}

async fn create_ticket(
    sim: &SimHandle,
    client: &reqwest::Client,
    body: &Value,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{}/api/v2/tickets", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .json(body);
    if let Some(key) = key {
        req = req.header("Idempotency-Key", key);
    }
    req.send().await.unwrap()
}

async fn sf_token(sim: &SimHandle, client: &reqwest::Client) -> String {
    let resp = client
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client-id"),
            ("client_secret", "sim-client-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

fn sf_url(sim: &SimHandle, rest: &str) -> String {
    format!("{}/services/data/v60.0/{rest}", sim.base_url())
}

async fn sf_send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert!(
        resp.headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("api-usage=") && v.ends_with("/15000"))
    );
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

#[tokio::test]
async fn zendesk_ticket_create_and_idempotency() {
    let (sim, client) = setup().await;
    let body = ticket_body("conv-1");

    let resp = create_ticket(&sim, &client, &body, Some("key-1")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-idempotency-lookup"], "miss");
    assert_eq!(resp.headers()["x-rate-limit"], "700");
    assert_eq!(resp.headers()["x-rate-limit-remaining"], "699");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("{}/api/v2/tickets/1.json", sim.base_url())
    );
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["ticket"]["id"], 1);
    assert_eq!(created["ticket"]["status"], "new");
    assert_eq!(created["ticket"]["requester_id"], 9000);
    assert_eq!(created["ticket"]["submitter_id"], 1000);
    assert_eq!(created["ticket"]["external_id"], "conv-1");
    assert_eq!(created["ticket"]["group_id"], 42);

    // Same key, same body: replayed, no new ticket.
    let resp = create_ticket(&sim, &client, &body, Some("key-1")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-idempotency-lookup"], "hit");
    assert_eq!(resp.headers()["x-rate-limit-remaining"], "698");
    let replayed: Value = resp.json().await.unwrap();
    assert_eq!(replayed["ticket"]["id"], 1);
    assert_eq!(sim.zendesk_tickets().len(), 1);

    // Same key, different body: 400.
    let resp = create_ticket(&sim, &client, &ticket_body("conv-2"), Some("key-1")).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "IdempotentRequestError");

    // Too long a key: 400.
    let long = "k".repeat(256);
    let resp = create_ticket(&sim, &client, &body, Some(&long)).await;
    assert_eq!(resp.status(), 400);

    // After the window: a new ticket with the same key.
    sim.expire_idempotency_keys();
    let resp = create_ticket(&sim, &client, &body, Some("key-1")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-idempotency-lookup"], "miss");
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["ticket"]["id"], 2);
    // The requester is the same end user.
    assert_eq!(again["ticket"]["requester_id"], 9000);

    let tickets = sim.zendesk_tickets();
    assert_eq!(tickets.len(), 2);
    let t = &tickets[0];
    assert_eq!(t.requester_email.as_deref(), Some("ada@example.com"));
    assert_eq!(t.requester_name.as_deref(), Some("Ada"));
    assert_eq!(t.tags, vec!["escalated", "ai"]);
    assert_eq!(t.comments.len(), 1);
    assert_eq!(
        t.comments[0].html_body.as_deref(),
        Some("<p>Transcript</p>")
    );
    assert!(!t.comments[0].public);

    // Lookup by external id and by id.
    let list: Value = client
        .get(format!(
            "{}/api/v2/tickets?external_id=conv-1",
            sim.base_url()
        ))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["count"], 2);
    assert!(list["next_page"].is_null());
    let show = client
        .get(format!("{}/api/v2/tickets/2.json", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(show.status(), 200);
    let missing = client
        .get(format!("{}/api/v2/tickets/99", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let err: Value = missing.json().await.unwrap();
    assert_eq!(err["error"], "RecordNotFound");
    sim.shutdown().await;
}

#[tokio::test]
async fn zendesk_auth_validation_and_malformed_json() {
    let (sim, client) = setup().await;
    let resp = client
        .post(format!("{}/api/v2/tickets", sim.base_url()))
        .basic_auth(ZD_USER, Some("wrong"))
        .json(&ticket_body("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("x-rate-limit-remaining"));
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err, json!({"error": "Couldn't authenticate you"}));

    // No comment body and a bad requester email.
    let bad = json!({"ticket": {"subject": "s", "comment": {"public": true},
        "requester": {"name": "X", "email": "not-an-email"}}});
    let resp = create_ticket(&sim, &client, &bad, None).await;
    assert_eq!(resp.status(), 422);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "RecordInvalid");
    assert_eq!(
        err["details"]["base"][0]["description"],
        "Description: cannot be blank"
    );
    assert!(err["details"]["requester"][0]["description"].is_string());

    // A long subject is truncated, not rejected.
    let long = json!({"ticket": {"subject": "s".repeat(300), "comment": {"body": "hi"}}});
    let resp = create_ticket(&sim, &client, &long, None).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        sim.zendesk_tickets()[0].subject.as_ref().unwrap().len(),
        255
    );

    let resp = client
        .post(format!("{}/api/v2/tickets", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    // Every request was recorded, the Authorization header redacted.
    let recorded = sim.requests();
    assert_eq!(recorded.len(), 4);
    assert!(recorded.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(recorded[0].status, 401);
    let auth = recorded[0]
        .headers
        .iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str());
    assert_eq!(auth, Some("<redacted>"));
}

#[tokio::test]
async fn zendesk_comments() {
    let (sim, client) = setup().await;
    let body = json!({"ticket": {"subject": "s", "comment": {"body": "first", "public": false},
        "requester": {"email": "bob@example.com"}}});
    assert_eq!(
        create_ticket(&sim, &client, &body, None).await.status(),
        201
    );

    let resp = client
        .put(format!("{}/api/v2/tickets/1", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .json(
            &json!({"ticket": {"comment": {"body": "second", "public": true, "author_id": 9000}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["ticket"]["id"], 1);
    assert_eq!(updated["audit"]["events"][0]["body"], "second");

    let resp = client
        .put(format!("{}/api/v2/tickets/1.json", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .json(&json!({"ticket": {"comment": {"html_body": "<b>third</b>"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let missing = client
        .put(format!("{}/api/v2/tickets/77", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .json(&json!({"ticket": {"comment": {"body": "x"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let comments: Value = client
        .get(format!("{}/api/v2/tickets/1/comments", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let list = comments["comments"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["body"], "first");
    assert_eq!(list[0]["author_id"], 1000);
    assert_eq!(list[0]["public"], false);
    assert_eq!(list[1]["body"], "second");
    assert_eq!(list[1]["author_id"], 9000);
    assert_eq!(list[2]["html_body"], "<b>third</b>");
    assert_eq!(list[2]["author_id"], 1000);
    assert!(comments["next_page"].is_null());
    assert_eq!(sim.zendesk_tickets()[0].comments.len(), 3);
}

#[tokio::test]
async fn faults_times_retry_after_and_default_bodies() {
    let (sim, client) = setup().await;
    sim.inject(FaultRule {
        method: Some("post".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(2),
        status: Some(429),
        retry_after: Some(7),
        ..FaultRule::default()
    });
    for _ in 0..2 {
        let resp = create_ticket(&sim, &client, &ticket_body("f"), None).await;
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "7");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"], "TooManyRequests");
    }
    let resp = create_ticket(&sim, &client, &ticket_body("f"), None).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(sim.zendesk_tickets().len(), 1);

    sim.inject(FaultRule {
        path_prefix: "/api/v2/".into(),
        times: Some(1),
        status: Some(503),
        ..FaultRule::default()
    });
    let resp = create_ticket(&sim, &client, &ticket_body("g"), None).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "Service Unavailable");

    // Custom body and content type are returned verbatim.
    sim.inject(FaultRule {
        path_prefix: "/services/oauth2/token".into(),
        times: Some(1),
        status: Some(400),
        body: Some(r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#.into()),
        ..FaultRule::default()
    });
    let resp = client
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#
    );
    assert_eq!(sim.token_requests(), 1);

    // Salesforce-shaped default.
    let token = sf_token(&sim, &client).await;
    sim.inject(FaultRule {
        path_prefix: "/services/data/".into(),
        status: Some(403),
        ..FaultRule::default()
    });
    let (status, body) = sf_send(
        &client,
        reqwest::Method::POST,
        sf_url(&sim, "sobjects/Case/"),
        &token,
        Some(json!({"Subject": "x"})),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED");
    sim.clear_faults();
    let (status, _) = sf_send(
        &client,
        reqwest::Method::POST,
        sf_url(&sim, "sobjects/Case/"),
        &token,
        Some(json!({"Subject": "x"})),
    )
    .await;
    assert_eq!(status, 201);

    let recorded = sim.requests();
    assert_eq!(recorded.iter().filter(|r| r.faulted).count(), 5);
    // The token request body is recorded without the secret.
    assert!(
        recorded
            .iter()
            .all(|r| !r.body.contains("sim-client-secret"))
    );
}

#[tokio::test]
async fn fault_after_effect_and_drop_connection() {
    let (sim, client) = setup().await;
    let mut feed = sim.subscribe();

    // Created, but the connection dies before the answer.
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        drop_connection: true,
        after_effect: true,
        ..FaultRule::default()
    });
    let result = client
        .post(format!("{}/api/v2/tickets", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .header("Idempotency-Key", "k-drop")
        .json(&ticket_body("d"))
        .send()
        .await;
    assert!(
        result.is_err(),
        "expected a transport error, got {result:?}"
    );
    let event = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.status, 0);
    assert!(event.faulted);
    assert_eq!(sim.zendesk_tickets().len(), 1);

    // The retry with the same key is a replay.
    let resp = create_ticket(&sim, &client, &ticket_body("d"), Some("k-drop")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-idempotency-lookup"], "hit");
    assert_eq!(sim.zendesk_tickets().len(), 1);

    // Dropped before the operation: nothing created.
    sim.inject(FaultRule {
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        drop_connection: true,
        ..FaultRule::default()
    });
    let result = create_ticket_result(&sim, &client, &ticket_body("e")).await;
    assert!(result.is_err());
    assert_eq!(sim.zendesk_tickets().len(), 1);

    // after_effect with a status: created, answered 500.
    sim.inject(FaultRule {
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        status: Some(500),
        after_effect: true,
        ..FaultRule::default()
    });
    let resp = create_ticket(&sim, &client, &ticket_body("e"), None).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(sim.zendesk_tickets().len(), 2);

    // Latency only: normal answer, later.
    sim.inject(FaultRule {
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        latency_ms: Some(300),
        ..FaultRule::default()
    });
    let started = std::time::Instant::now();
    let resp = create_ticket(&sim, &client, &ticket_body("l"), None).await;
    assert_eq!(resp.status(), 201);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The server keeps serving after dropped connections.
    assert_eq!(sim.zendesk_tickets().len(), 3);
    sim.shutdown().await;
}

async fn create_ticket_result(
    sim: &SimHandle,
    client: &reqwest::Client,
    body: &Value,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{}/api/v2/tickets", sim.base_url()))
        .basic_auth(ZD_USER, Some(ZD_TOKEN))
        .json(body)
        .send()
        .await
}

#[tokio::test]
async fn salesforce_token_endpoint() {
    let (sim, client) = setup().await;
    let resp = client
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client-id"),
            ("client_secret", "sim-client-secret"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert!(body["access_token"].as_str().unwrap().starts_with("00D"));
    assert!(body["access_token"].as_str().unwrap().contains('!'));
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "api");
    assert_eq!(body["instance_url"], sim.base_url());
    assert!(
        body["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/id/00D", sim.base_url()))
    );
    assert!(body["signature"].is_string());
    assert!(body["issued_at"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(body.get("expires_in").is_none());
    assert!(body.get("refresh_token").is_none());

    // HTTP Basic variant.
    let resp = client
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .basic_auth("sim-client-id", Some("sim-client-secret"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let resp = client
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client-id"),
            ("client_secret", "nope"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(
        err,
        json!({"error": "invalid_client", "error_description": "invalid client credentials"})
    );

    let resp = client
        .post(format!("{}/services/oauth2/token", sim.base_url()))
        .form(&[("grant_type", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert_eq!(err["error"], "unsupported_grant_type");
    assert_eq!(sim.token_requests(), 4);
}

#[tokio::test]
async fn salesforce_session_expiry() {
    let (sim, client) = setup().await;
    let token = sf_token(&sim, &client).await;
    let (status, _) = sf_send(
        &client,
        reqwest::Method::POST,
        sf_url(&sim, "sobjects/Case"),
        &token,
        Some(json!({"Subject": "a", "Origin": "Chat"})),
    )
    .await;
    assert_eq!(status, 201);

    sim.expire_salesforce_tokens();
    let (status, body) = sf_send(
        &client,
        reqwest::Method::POST,
        sf_url(&sim, "sobjects/Case"),
        &token,
        Some(json!({"Subject": "a"})),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        body,
        json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}])
    );
    let fresh = sf_token(&sim, &client).await;
    let (status, _) = sf_send(
        &client,
        reqwest::Method::POST,
        sf_url(&sim, "sobjects/Case"),
        &fresh,
        Some(json!({"Subject": "a"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(sim.salesforce_cases().len(), 2);
    assert_eq!(sim.token_requests(), 2);
}

#[tokio::test]
async fn salesforce_case_create_and_validation() {
    let (sim, client) = setup().await;
    let token = sf_token(&sim, &client).await;
    let post = |body: Value| {
        sf_send(
            &client,
            reqwest::Method::POST,
            sf_url(&sim, "sobjects/Case/"),
            &token,
            Some(body),
        )
    };

    let (status, body) = post(json!({"Subject": "Help", "Origin": "Chat",
        "SuppliedEmail": "ada@example.com", "Conversation_Id__c": "c-1"}))
    .await;
    assert_eq!(status, 201);
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("500"));
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"], json!([]));

    let (status, body) = post(json!({"Subject": "x", "Bogus": 1})).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_FIELD");
    assert_eq!(body[0]["fields"], json!(["Bogus"]));
    assert_eq!(
        body[0]["message"],
        "No such column 'Bogus' on sobject of type Case"
    );

    let (status, body) = post(json!({"Origin": "Carrier pigeon"})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body[0]["errorCode"],
        "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    );
    assert_eq!(body[0]["fields"], json!(["Origin"]));

    for (field, len) in [
        ("Subject", 256),
        ("SuppliedEmail", 81),
        ("Description", 32_001),
    ] {
        let (status, body) = post(json!({ field: "a".repeat(len) })).await;
        assert_eq!(status, 400, "{field}");
        assert_eq!(body[0]["errorCode"], "STRING_TOO_LONG");
        assert_eq!(body[0]["fields"], json!([field]));
    }
    let (status, _) = post(json!({"Description": "a".repeat(32_000)})).await;
    assert_eq!(status, 201);

    // Read back.
    let (status, body) = sf_send(
        &client,
        reqwest::Method::GET,
        sf_url(&sim, &format!("sobjects/Case/{id}")),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["Id"], id.as_str());
    assert_eq!(body["CaseNumber"], "00001001");
    assert_eq!(body["Subject"], "Help");
    let (status, body) = sf_send(
        &client,
        reqwest::Method::GET,
        sf_url(&sim, "sobjects/Case/500000000000999AAA"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body[0]["errorCode"], "NOT_FOUND");

    // Unsupported API version.
    let resp = client
        .get(format!(
            "{}/services/data/v20.0/sobjects/Case/{id}",
            sim.base_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let cases = sim.salesforce_cases();
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].fields.len(), 4);
    assert_eq!(cases[0].fields["Conversation_Id__c"], "c-1");
    assert_eq!(cases[1].case_number, "00001002");
    // Sforce-Auto-Assign is just recorded.
    let resp = client
        .post(sf_url(&sim, "sobjects/Case"))
        .bearer_auth(&token)
        .header("Sforce-Auto-Assign", "FALSE")
        .json(&json!({"Subject": "assign"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let last = sim.requests().pop().unwrap();
    assert!(
        last.headers
            .contains(&("sforce-auto-assign".into(), "FALSE".into()))
    );
}

#[tokio::test]
async fn salesforce_upsert_and_query() {
    let (sim, client) = setup().await;
    let token = sf_token(&sim, &client).await;
    let patch = |path: String, body: Value| {
        sf_send(
            &client,
            reqwest::Method::PATCH,
            sf_url(&sim, &path),
            &token,
            Some(body),
        )
    };

    let (status, body) = patch(
        "sobjects/Case/Conversation_Id__c/conv%201".into(),
        json!({"Subject": "first", "Origin": "Web"}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["created"], true);
    let id = body["id"].as_str().unwrap().to_owned();

    let (status, body) = patch(
        "sobjects/Case/Conversation_Id__c/conv%201".into(),
        json!({"Subject": "second"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["created"], false);
    assert_eq!(body["id"], id.as_str());
    let cases = sim.salesforce_cases();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].fields["Subject"], "second");
    assert_eq!(cases[0].fields["Origin"], "Web");
    assert_eq!(cases[0].fields["Conversation_Id__c"], "conv 1");

    let (status, body) = patch("sobjects/Case/Subject/abc".into(), json!({"Subject": "x"})).await;
    assert_eq!(status, 404);
    assert_eq!(body[0]["errorCode"], "NOT_FOUND");
    assert_eq!(
        body[0]["message"],
        "Provided external ID field does not exist or is not accessible: Subject"
    );

    // A duplicate via plain POST makes the upsert ambiguous.
    let (status, _) = sf_send(
        &client,
        reqwest::Method::POST,
        sf_url(&sim, "sobjects/Case"),
        &token,
        Some(json!({"Subject": "dup", "Conversation_Id__c": "conv 1"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = patch(
        "sobjects/Case/Conversation_Id__c/conv%201".into(),
        json!({"Subject": "third"}),
    )
    .await;
    assert_eq!(status, 300);
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert!(body[0].as_str().unwrap().ends_with(&id));

    // Query by external id.
    let q = "SELECT Id, CaseNumber FROM Case WHERE Conversation_Id__c = 'conv 1'";
    let resp = client
        .get(sf_url(&sim, "query"))
        .query(&[("q", q)])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["totalSize"], 2);
    assert_eq!(body["done"], true);
    assert_eq!(body["records"][0]["attributes"]["type"], "Case");
    assert_eq!(body["records"][0]["Id"], id.as_str());
    assert_eq!(body["records"][0]["CaseNumber"], "00001001");

    let q = "SELECT Id, CaseNumber FROM Case WHERE Conversation_Id__c = 'none'";
    let body: Value = client
        .get(sf_url(&sim, "query/"))
        .query(&[("q", q)])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["totalSize"], 0);

    let resp = client
        .get(sf_url(&sim, "query"))
        .query(&[("q", "SELEKT nonsense")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body[0]["errorCode"], "MALFORMED_QUERY");
}

#[tokio::test]
async fn salesforce_attachments() {
    let (sim, client) = setup().await;
    let token = sf_token(&sim, &client).await;
    let post = |sobject: &str, body: Value| {
        sf_send(
            &client,
            reqwest::Method::POST,
            sf_url(&sim, &format!("sobjects/{sobject}/")),
            &token,
            Some(body),
        )
    };
    let (_, body) = post("Case", json!({"Subject": "s"})).await;
    let case_id = body["id"].as_str().unwrap().to_owned();

    let (status, body) = post(
        "ContentVersion",
        json!({"Title": "t", "PathOnClient": "t.txt", "VersionData": "aGVsbG8=",
            "FirstPublishLocationId": "500000000000999AAA"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_CROSS_REFERENCE_KEY");
    assert_eq!(body[0]["fields"], json!(["FirstPublishLocationId"]));

    let (status, body) = post(
        "ContentVersion",
        json!({"Title": "t", "PathOnClient": "t.txt", "VersionData": "aGVsbG8=",
            "FirstPublishLocationId": case_id}),
    )
    .await;
    assert_eq!(status, 201);
    assert!(body["id"].as_str().unwrap().starts_with("068"));

    let (status, _) = post(
        "FeedItem",
        json!({"ParentId": case_id, "Body": "b".repeat(10_001)}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(
        "FeedItem",
        json!({"ParentId": case_id, "Body": "transcript"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = post(
        "CaseComment",
        json!({"ParentId": "500000000000999AAA", "CommentBody": "c"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["errorCode"], "INVALID_CROSS_REFERENCE_KEY");
    let (status, _) = post(
        "CaseComment",
        json!({"ParentId": case_id, "CommentBody": "c", "IsPublished": false}),
    )
    .await;
    assert_eq!(status, 201);

    let records = sim.salesforce_attachments();
    let kinds: Vec<&str> = records.iter().map(|r| r.sobject.as_str()).collect();
    assert_eq!(kinds, vec!["ContentVersion", "FeedItem", "CaseComment"]);
    assert_eq!(records[1].fields["Body"], "transcript");
}

#[tokio::test]
async fn control_api_over_http() {
    let (sim, client) = setup().await;
    let base = sim.base_url();
    let health: Value = client
        .get(format!("{base}/_sim/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");

    let resp = client
        .post(format!("{base}/_sim/faults"))
        .json(&json!({"path_prefix": "/api/v2/tickets", "status": 503, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let resp = create_ticket(&sim, &client, &ticket_body("c"), None).await;
    assert_eq!(resp.status(), 503);
    let resp = create_ticket(&sim, &client, &ticket_body("c"), None).await;
    assert_eq!(resp.status(), 201);

    let tickets: Value = client
        .get(format!("{base}/_sim/zendesk/tickets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tickets.as_array().unwrap().len(), 1);
    let requests: Vec<sim::RecordedRequest> = client
        .get(format!("{base}/_sim/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].faulted);
    assert_eq!(requests[0].status, 503);

    for path in ["salesforce/cases", "salesforce/records"] {
        let v: Value = client
            .get(format!("{base}/_sim/{path}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v.as_array().unwrap().is_empty());
    }
    for path in [
        "zendesk/expire-idempotency-keys",
        "salesforce/expire-tokens",
        "reset",
    ] {
        let resp = client
            .post(format!("{base}/_sim/{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = client
        .delete(format!("{base}/_sim/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(sim.requests().is_empty());
    assert!(sim.zendesk_tickets().is_empty());

    // After reset the counters start again.
    let resp = create_ticket(&sim, &client, &ticket_body("c"), None).await;
    assert_eq!(resp.headers()["x-rate-limit-remaining"], "699");
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["ticket"]["id"], 1);
    sim.shutdown().await;
}
