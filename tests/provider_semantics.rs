//! Provider semantics: which failures lead to a "was it already added?"
//! look-up (only those that may have landed, and only once they can no
//! longer land), an exact look-up by message id in the ticket's audits,
//! Zendesk 409 retried, and no customer data copied from provider error
//! bodies into logs, dead letters or widget events.
mod common;

use common::*;
use escalator::config::Config;
use escalator::contract::{CustomerMessage, ExternalKind, OutboundPayload};
use escalator::error::ProviderErrorKind;
use escalator::provider::salesforce::SalesforceClient;
use escalator::provider::zendesk::{MESSAGE_ID_METADATA, ZendeskClient};
use escalator::provider::{TicketProvider, TicketRequest};
use escalator::sandbox::{Client, SALESFORCE_ORG, ZENDESK_ORG, sandbox_config};
use escalator::sim::{FaultRule, RecordedRequest, SimHandle};
use escalator::store::{ExternalRef, Store};
use serde_json::json;
use std::time::Duration;

const ORG: &str = ZENDESK_ORG;

/// Escalate `conv` and return its Zendesk ticket id.
async fn escalated(sb: &escalator::sandbox::Sandbox, conv: &str) -> u64 {
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish(
        "escalation.requested",
        &format!("{conv}-esc"),
        &escalation(ORG, conv),
    )
    .await
    .unwrap();
    let e = next_event(&mut widget, conv).await;
    created(&e).external_id.parse().unwrap()
}

fn comment_bodies(sim: &SimHandle, ticket: u64) -> Vec<String> {
    sim.zendesk_tickets()
        .into_iter()
        .find(|t| t.id == ticket)
        .map(|t| {
            t.comments[1..]
                .iter()
                .map(|c| c.body.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

fn audit_lookups(sim: &SimHandle) -> Vec<RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/audits"))
        .collect()
}

async fn publish_message(sb: &escalator::sandbox::Sandbox, conv: &str, id: &str, text: &str) {
    sb.publish(
        "customer.message",
        id,
        &customer_message(ORG, conv, id, text),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ok_whose_comment_call_gets_a_429_is_not_lost() {
    let env = TestEnv::new("ok429").await;
    let sb = env.sandbox().await;
    let ticket = escalated(&sb, "conv-ok").await;
    publish_message(&sb, "conv-ok", "ok-1", "ok").await;
    until_sim(&sb.sim, || comment_bodies(&sb.sim, ticket).len() == 1).await;
    // Seconds later the customer says "ok" again; Zendesk answers 429 once.
    sb.sim.inject(FaultRule {
        method: Some("PUT".into()),
        path_prefix: format!("/api/v2/tickets/{ticket}"),
        times: Some(1),
        status: Some(429),
        retry_after: Some(1),
        ..Default::default()
    });
    publish_message(&sb, "conv-ok", "ok-2", "ok").await;
    publish_message(&sb, "conv-ok", "ok-3", "bye").await;
    until_sim(&sb.sim, || comment_bodies(&sb.sim, ticket).len() >= 3).await;
    assert_eq!(
        comment_bodies(&sb.sim, ticket),
        vec!["ok", "ok", "bye"],
        "both \"ok\"s are on the ticket"
    );
    let puts: Vec<u16> = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect();
    assert_eq!(puts, vec![200, 429, 200, 200]);
    assert!(
        audit_lookups(&sb.sim).is_empty(),
        "a 429 is a refusal: nothing to look up"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_answered_after_the_http_timeout_is_added_once() {
    let env = TestEnv::new("slowcomment").await;
    let mut settings = env.settings.clone();
    settings.http_timeout_ms = 5_000;
    let sb = env.sandbox_with(settings, sandbox_config).await;
    let ticket = escalated(&sb, "conv-slow").await;
    // Zendesk takes 10 s to add the comment; we give up after 5 s.
    sb.sim.inject(FaultRule {
        method: Some("PUT".into()),
        path_prefix: format!("/api/v2/tickets/{ticket}"),
        times: Some(1),
        latency_ms: Some(10_000),
        ..Default::default()
    });
    let started = std::time::Instant::now();
    publish_message(&sb, "conv-slow", "slow-1", "is anyone there?").await;
    publish_message(&sb, "conv-slow", "slow-2", "hello?").await;
    // Until the slow request has landed too, and both messages are handled.
    let slow_done = || {
        sb.sim
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.faulted && r.status == 200)
    };
    until_sim(&sb.sim, || {
        slow_done()
            && comment_bodies(&sb.sim, ticket)
                .iter()
                .any(|b| b == "hello?")
    })
    .await;
    assert_eq!(
        comment_bodies(&sb.sim, ticket),
        vec!["is anyone there?", "hello?"],
        "one comment per message, in order"
    );
    let lookups = audit_lookups(&sb.sim);
    assert_eq!(lookups.len(), 1, "one exact look-up: {lookups:?}");
    let slow_landed = sb.sim.zendesk_tickets()[0].comments[1].created_at;
    assert!(
        lookups[0].at >= slow_landed,
        "looked only after the slow request could land"
    );
    println!(
        "slow comment settled after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_conflict_on_a_comment_is_retried() {
    let env = TestEnv::new("conflict").await;
    let sb = env.sandbox().await;
    let ticket = escalated(&sb, "conv-409").await;
    sb.sim.inject(FaultRule {
        method: Some("PUT".into()),
        path_prefix: format!("/api/v2/tickets/{ticket}"),
        times: Some(1),
        status: Some(409),
        ..Default::default()
    });
    publish_message(&sb, "conv-409", "c-1", "still broken").await;
    until_sim(&sb.sim, || !comment_bodies(&sb.sim, ticket).is_empty()).await;
    assert_eq!(comment_bodies(&sb.sim, ticket), vec!["still broken"]);
    assert!(audit_lookups(&sb.sim).is_empty(), "a 409 changed nothing");
    sb.stop().await;
    env.cleanup().await;
}

/// The simulator alone (no broker needed).
async fn sim_only() -> SimHandle {
    escalator::sim::start(([127, 0, 0, 1], 0).into(), Default::default())
        .await
        .unwrap()
}

fn sandbox(sim: &SimHandle) -> Config {
    Config::parse(&sandbox_config(&sim.base_url()), "test", &|_| None).unwrap()
}

fn message(id: &str, text: &str) -> CustomerMessage {
    serde_json::from_value(customer_message(ORG, "conv-long", id, text)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_look_up_is_exact_and_reads_a_long_history_newest_first() {
    let sim = sim_only().await;
    let config = sandbox(&sim);
    let zendesk = config.org(ORG).and_then(|o| o.zendesk()).unwrap().clone();
    let http = escalator::provider::http::client(Duration::from_secs(10)).unwrap();
    let client = ZendeskClient::new(http.clone(), zendesk);
    let created: serde_json::Value = http
        .post(format!("{}/api/v2/tickets", sim.base_url()))
        .basic_auth("agent@example.com/token", Some("sim-zendesk-token"))
        .json(&json!({"ticket": {"subject": "s", "comment": {"body": "transcript"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ExternalRef {
        kind: ExternalKind::ZendeskTicket,
        id: created["ticket"]["id"].to_string(),
        number: None,
        url: String::new(),
        requester_id: None,
    };
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    // 250 customer messages, all saying "ok".
    for i in 0..250 {
        client
            .add_customer_message(&ticket, &message(&format!("m-{i}"), "ok"))
            .await
            .unwrap();
    }
    let audits = &sim.zendesk_tickets()[0].audits;
    assert_eq!(audits.len(), 251);
    assert_eq!(audits[1].custom_metadata[MESSAGE_ID_METADATA], "m-0");
    let pages = |sim: &SimHandle| audit_lookups(sim).len();

    assert!(
        client
            .has_customer_message(&ticket, &message("m-249", "ok"), before)
            .await
            .unwrap()
    );
    assert_eq!(pages(&sim), 1, "the newest message is on the first page");
    assert!(
        client
            .has_customer_message(&ticket, &message("m-0", "ok"), before)
            .await
            .unwrap(),
        "the oldest is found too, three pages back"
    );
    assert_eq!(pages(&sim), 4);
    assert!(
        !client
            .has_customer_message(&ticket, &message("m-other", "ok"), before)
            .await
            .unwrap(),
        "the same text under another message id is another message"
    );
    assert!(
        audit_lookups(&sim)
            .iter()
            .all(|r| r.path.contains("sort_order=desc")),
        "newest first"
    );
    // Nothing older than the first attempt (less a clock margin) is read.
    let n = pages(&sim);
    let later = chrono::Utc::now() + chrono::Duration::minutes(30);
    assert!(
        !client
            .has_customer_message(&ticket, &message("m-0", "ok"), later)
            .await
            .unwrap()
    );
    assert_eq!(pages(&sim) - n, 1, "the scan stops at the first attempt");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_salesforce_comment_refused_on_a_row_lock_is_resent_without_a_look_up() {
    let env = TestEnv::new("sf429").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{SALESFORCE_ORG}.#")).await.unwrap();
    sb.publish(
        "escalation.requested",
        "sf-esc",
        &escalation(SALESFORCE_ORG, "conv-sf"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-sf").await;
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/services/data/v62.0/sobjects/CaseComment".into(),
        times: Some(1),
        status: Some(400),
        body: Some(
            json!([{"message": "unable to obtain exclusive access to this record", "errorCode": "UNABLE_TO_LOCK_ROW"}])
                .to_string(),
        ),
        ..Default::default()
    });
    let before = sb.sim.requests().len();
    sb.publish(
        "customer.message",
        "sf-1",
        &customer_message(SALESFORCE_ORG, "conv-sf", "sf-1", "ok"),
    )
    .await
    .unwrap();
    let comments = || {
        sb.sim
            .salesforce_attachments()
            .into_iter()
            .filter(|r| r.sobject == "CaseComment")
            .count()
    };
    until_sim(&sb.sim, || comments() == 1).await;
    let retried: Vec<u16> = sb.sim.requests()[before..]
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("/sobjects/CaseComment"))
        .map(|r| r.status)
        .collect();
    assert_eq!(retried, vec![400, 201]);
    let looked = sb.sim.requests()[before..]
        .iter()
        .any(|r| r.path.contains("/query") && r.path.contains("CaseComment"));
    assert!(
        !looked,
        "a refused comment is not there: nothing to look up"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_errors_quoting_context_values_are_redacted() {
    let sim = sim_only().await;
    let prefix = format!("escalator-test:sfcontext:{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect("redis://127.0.0.1:6379/", &prefix, Duration::from_secs(600))
        .await
        .unwrap();
    let config = sandbox(&sim);
    let mut org = (*config.org(SALESFORCE_ORG).unwrap().clone()).clone();
    let mut sf = org.salesforce().unwrap().clone();
    sf.context_fields
        .insert("Plan__c".to_string(), "plan".to_string());
    org.salesforce = Some(sf.clone());
    let canary = format!("canary-plan-{}", uuid::Uuid::new_v4().simple());
    let mut e: escalator::contract::EscalationRequested =
        serde_json::from_value(escalation(SALESFORCE_ORG, "conv-ctx")).unwrap();
    e.context.insert("plan".into(), json!(canary));
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/services/data/v62.0/sobjects/Case".into(),
        times: Some(1),
        status: Some(400),
        body: Some(
            json!([{"message": format!("Plan {canary} is not sold any more"), "errorCode": "FIELD_CUSTOM_VALIDATION_EXCEPTION", "fields": ["Plan__c"]}])
                .to_string(),
        ),
        ..Default::default()
    });
    let http = escalator::provider::http::client(Duration::from_secs(10)).unwrap();
    let client = SalesforceClient::new(http, SALESFORCE_ORG, sf, store.clone());
    let err = client
        .create_ticket(TicketRequest {
            org: &org,
            escalation: &e,
            fallback_reason: None,
        })
        .await
        .unwrap_err();
    store.delete_all().await.unwrap();
    sim.shutdown().await;
    assert_eq!(err.kind, ProviderErrorKind::Validation);
    assert!(err.message.contains("Plan__c"), "{}", err.message);
    assert!(!err.message.contains(&canary), "{}", err.message);
    assert!(!format!("{err:?}").contains(&canary));
}

/// Zendesk error bodies that echo the requester's email and the subject: a
/// 422 (permanent) and a text/plain 503 (transient until the last round).
async fn canaries_stay_out(level: &str) {
    let env = TestEnv::new(&format!("canary-{level}")).await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let email = format!("canary-{id}@example.com");
    let subject = format!("Canary subject {id}");
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    let mut dlq = env.dead_letters().await;
    let worker = env.spawn_worker_env(
        &sandbox_config(&sim.base_url()),
        dir.path(),
        "worker",
        &[("RUST_LOG", level)],
    );
    let body = |conv: &str| {
        let mut b = escalation(ORG, conv);
        b["customer"]["email"] = json!(email);
        b["subject"] = json!(subject);
        b
    };
    let mut failures = Vec::new();

    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        status: Some(422),
        body: Some(
            json!({"error": "RecordInvalid",
                "description": format!("Requester: Email {email} is not properly formatted; subject {subject}"),
                "details": {
                    "requester": [{"description": format!("Email {email} is not properly formatted"), "error": "InvalidValue"}],
                    "subject": [{"description": format!("{subject} is too long"), "error": "TooLong"}]}})
            .to_string(),
        ),
        ..Default::default()
    });
    client
        .publish("escalation.requested", "canary-422", &body("conv-422"))
        .await
        .unwrap();
    failures.push(next_event(&mut widget, "conv-422").await);
    let dl_422 = dlq.next().await;

    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        status: Some(503),
        body: Some(format!(
            "Service Unavailable while creating {subject} for {email}"
        )),
        content_type: Some("text/plain; charset=utf-8".into()),
        ..Default::default()
    });
    client
        .publish("escalation.requested", "canary-503", &body("conv-503"))
        .await
        .unwrap();
    failures.push(next_event(&mut widget, "conv-503").await);
    let dl_503 = dlq.next().await;

    for (e, code) in failures.iter().zip(["RecordInvalid", "503"]) {
        let OutboundPayload::EscalationFailed(f) = &e.payload else {
            panic!("expected escalation.failed, got {e:?}")
        };
        let text = serde_json::to_string(e).unwrap();
        assert!(!text.contains(&email) && !text.contains(&subject), "{text}");
        if code == "RecordInvalid" {
            assert!(
                f.reason.contains("requester"),
                "the field is named: {}",
                f.reason
            );
        }
    }
    for (dl, code) in [(dl_422, "RecordInvalid"), (dl_503, "503")] {
        let headers = format!("{:?}", dl.headers);
        assert!(
            !headers.contains(&email) && !headers.contains(&subject),
            "{headers}"
        );
        assert!(dl.headers["x-escalator-reason"].contains(code), "{headers}");
        assert!(!dl.routing_key.contains(&email));
    }
    assert!(worker.terminate().await.success());
    let log = std::fs::read_to_string(dir.path().join("worker.log")).unwrap();
    assert!(log.contains("conv-503"), "the log is there: {log}");
    if level == "debug" {
        assert!(log.contains("DEBUG"), "the worker logged at debug level");
    }
    for canary in [&email, &subject] {
        let hits: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(canary.as_str()))
            .collect();
        assert!(hits.is_empty(), "{canary} in the log: {hits:#?}");
    }
    client.close().await;
    sim.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zendesk_error_bodies_echoing_customer_data_leak_nowhere() {
    canaries_stay_out("info").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zendesk_error_bodies_leak_nowhere_at_debug_level() {
    canaries_stay_out("debug").await;
}

#[tokio::test]
async fn send_markers_gate_the_next_send_until_the_latest_can_no_longer_land() {
    use escalator::contract::ProviderKind;
    use escalator::provider::in_flight::{Gate, SendMarkers};
    let prefix = format!("escalator-test:markers:{}", uuid::Uuid::new_v4().simple());
    let store = Store::connect("redis://127.0.0.1:6379/", &prefix, Duration::from_secs(600))
        .await
        .unwrap();
    let settle = Duration::from_millis(1_500);
    let markers = SendMarkers::new(&store, ProviderKind::Zendesk, settle);
    let (org, conv, what) = ("acme", "conv-1", "message:m-1");
    assert_eq!(
        markers.before_send(org, conv, what).await.unwrap(),
        Gate::Fresh
    );
    // The send timed out: a second runner must wait, not look.
    let Gate::Wait(left) = markers.before_send(org, conv, what).await.unwrap() else {
        panic!("a send that may still land holds the next one back")
    };
    assert!(
        left <= settle && left > Duration::from_millis(500),
        "{left:?}"
    );
    tokio::time::sleep(left + Duration::from_millis(50)).await;
    let Gate::Earlier(first) = markers.before_send(org, conv, what).await.unwrap() else {
        panic!("once it can no longer land, look first")
    };
    assert!(first <= chrono::Utc::now());
    // Looked, not found, sent again: answered 503 (final): look at once next time.
    markers.sending(org, conv, what).await.unwrap();
    assert!(matches!(
        markers.before_send(org, conv, what).await.unwrap(),
        Gate::Wait(_)
    ));
    markers.answered(org, conv, what).await.unwrap();
    assert_eq!(
        markers.before_send(org, conv, what).await.unwrap(),
        Gate::Earlier(first),
        "the first unresolved send still bounds the look-up"
    );
    // Refused (429): nothing landed, the next send goes without a look-up.
    markers.not_landed(org, conv, what).await.unwrap();
    assert_eq!(
        markers.before_send(org, conv, what).await.unwrap(),
        Gate::Fresh
    );
    store.delete_all().await.unwrap();
}
