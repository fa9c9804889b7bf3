//! End to end on the Salesforce Case path: RabbitMQ -> worker -> simulated
//! Salesforce (OAuth client credentials + REST) -> Redis -> outbound.
mod common;

use common::*;
use escalator::contract::{ExternalKind, OutboundPayload};
use escalator::sandbox::Client;
use escalator::sim::FaultRule;
use serde_json::json;
use std::time::Duration;

const ORG: &str = "acme-sf";
const EXT_FIELD: &str = "Escalator_Conversation_Id__c";

fn sf_config(sim: &str, external_id_field: Option<&str>) -> String {
    let ext = external_id_field
        .map(|f| format!("external_id_field = \"{f}\""))
        .unwrap_or_default();
    format!(
        r#"
[orgs.{ORG}]
provider = "salesforce"
[orgs.{ORG}.salesforce]
my_domain = "{sim}"
client_id = "sim-client-id"
client_secret = "sim-client-secret"
api_version = "v62.0"
origin = "Chat"
status = "New"
priority = "High"
record_type_id = "012000000000001AAA"
owner_id = "005000000000001AAA"
context_fields = {{ Plan__c = "plan" }}
extra_fields = {{ Type = "Question" }}
limit_backoff_secs = 1
{ext}
"#
    )
}

fn cases_of(sim: &escalator::sim::SimHandle, conv: &str) -> usize {
    sim.salesforce_cases()
        .iter()
        .filter(|c| {
            c.fields.get(EXT_FIELD).and_then(|v| v.as_str()) == Some(conv)
                || c.fields
                    .get("Description")
                    .and_then(|v| v.as_str())
                    .is_some_and(|d| d.contains(&format!("[escalator:{conv}]")))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_has_every_mapped_field_and_one_created_event() {
    let env = TestEnv::new("sf-fields").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim| sf_config(sim, None))
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish("escalation.requested", "sf-1", &escalation(ORG, "conv-sf"))
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-sf").await;
    let c = created(&e);
    let cases = sb.sim.salesforce_cases();
    assert_eq!(cases.len(), 1);
    let case = &cases[0];
    assert_eq!(c.external_kind, ExternalKind::SalesforceCase);
    assert_eq!(c.external_id, case.id);
    assert_eq!(
        c.external_number.as_deref(),
        Some(case.case_number.as_str())
    );
    assert_eq!(
        c.url,
        format!("{}/lightning/r/Case/{}/view", sb.sim.base_url(), case.id)
    );
    let f = &case.fields;
    assert_eq!(f["Subject"], "Cannot log in");
    assert_eq!(f["SuppliedName"], "Grace <Hopper>");
    assert_eq!(f["SuppliedEmail"], "grace@example.com");
    assert_eq!(f["Origin"], "Chat");
    assert_eq!(f["Status"], "New");
    assert_eq!(f["Priority"], "High");
    assert_eq!(f["RecordTypeId"], "012000000000001AAA");
    assert_eq!(f["OwnerId"], "005000000000001AAA");
    assert_eq!(f["Plan__c"], "pro", "context field mapped");
    assert_eq!(f["Type"], "Question", "constant extra field");
    let description = f["Description"].as_str().unwrap();
    assert!(
        description.contains("I can't log in <script>alert(1)</script>"),
        "{description}"
    );
    assert!(
        description.contains("AI assistant"),
        "speakers: {description}"
    );
    assert!(
        description.contains("2026-11-21 10:00:05 UTC"),
        "times: {description}"
    );
    assert!(
        widget.next(Duration::from_millis(300)).await.is_none(),
        "exactly one outbound event"
    );
    // Later customer messages land on the case once each, in order (the
    // duplicate of the first is handled before the second, so it would show).
    for (id, text) in [
        ("sf-m1", "any update?"),
        ("sf-m1", "any update?"),
        ("sf-m2", "hello?"),
        ("sf-m3", "still there?"),
    ] {
        sb.publish(
            "customer.message",
            id,
            &customer_message(ORG, "conv-sf", id, text),
        )
        .await
        .unwrap();
    }
    let comments = || -> Vec<_> {
        sb.sim
            .salesforce_attachments()
            .into_iter()
            .filter(|r| r.sobject == "CaseComment")
            .collect()
    };
    until_sim(&sb.sim, || {
        comments().iter().any(|c| {
            c.fields["CommentBody"]
                .as_str()
                .unwrap_or("")
                .contains("still there?")
        })
    })
    .await;
    let comments = comments();
    let bodies: Vec<&str> = comments
        .iter()
        .map(|c| c.fields["CommentBody"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    for (body, text) in bodies.iter().zip(["any update?", "hello?", "still there?"]) {
        assert!(body.contains(text), "{body:?} should carry {text:?}");
    }
    assert!(
        comments
            .iter()
            .all(|c| c.fields["ParentId"] == json!(case.id))
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_escalations_one_token_shared_by_two_worker_processes() {
    let env = TestEnv::new("sf-token").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let config = sf_config(&sim.base_url(), None);
    let a = env.spawn_worker_with(&config, dir.path(), "a");
    let b = env.spawn_worker_with(&config, dir.path(), "b");
    until_shards_split(&a, &b).await;
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    for i in 0..50 {
        let conv = format!("tok-{i:02}");
        client
            .publish("escalation.requested", &conv, &escalation(ORG, &conv))
            .await
            .unwrap();
    }
    let mut created_count = 0;
    while created_count < 50 {
        let e = widget
            .next(WAIT)
            .await
            .expect("50 escalation.created within 30 s");
        assert!(
            matches!(e.payload, OutboundPayload::EscalationCreated(_)),
            "{e:?}"
        );
        created_count += 1;
    }
    assert_eq!(sim.salesforce_cases().len(), 50);
    assert_eq!(
        sim.token_requests(),
        1,
        "one token for 50 escalations and two processes"
    );
    let (log_a, log_b) = (a.log.clone(), b.log.clone());
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    let handled = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("message handled")
            .count()
    };
    assert!(
        handled(&log_a) > 0 && handled(&log_b) > 0,
        "both processes created cases with the shared token"
    );
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiring_mid_run_is_refreshed_once_without_failures_or_duplicates() {
    let env = TestEnv::new("sf-expire").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim| sf_config(sim, None))
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    for round in 0..2 {
        for i in 0..10 {
            let conv = format!("exp-{round}-{i}");
            sb.publish("escalation.requested", &conv, &escalation(ORG, &conv))
                .await
                .unwrap();
        }
        for _ in 0..10 {
            let e = widget.next(WAIT).await.expect("escalation.created");
            assert!(
                matches!(e.payload, OutboundPayload::EscalationCreated(_)),
                "no failure: {e:?}"
            );
        }
        if round == 0 {
            sb.sim.expire_salesforce_tokens();
        }
    }
    assert_eq!(
        sb.sim.token_requests(),
        2,
        "the first token, then exactly one refresh"
    );
    assert_eq!(sb.sim.salesforce_cases().len(), 20, "no duplicate case");
    let unauthorized = sb.sim.requests().iter().filter(|r| r.status == 401).count();
    assert!(unauthorized >= 1, "the expired token was refused");
    sb.stop().await;
    env.cleanup().await;
}

async fn exactly_one_case(external_id_field: Option<&str>, name: &str) {
    let env = TestEnv::new(name).await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let config = sf_config(&sim.base_url(), external_id_field);
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    // The case is created, then the answer takes a minute: the worker is
    // killed meanwhile, before it can record or ack.
    sim.inject(FaultRule {
        path_prefix: "/services/data/v62.0/sobjects/Case".into(),
        times: Some(1),
        latency_ms: Some(60_000),
        after_effect: true,
        ..Default::default()
    });
    let first = env.spawn_worker_with(&config, dir.path(), "first");
    let body = escalation(ORG, "conv-once");
    client
        .publish("escalation.requested", "once-1", &body)
        .await
        .unwrap();
    until_sim(&sim, || sim.salesforce_cases().len() == 1).await;
    first.kill9().await;
    let second = env.spawn_worker_with(&config, dir.path(), "second");
    let e = next_event(&mut widget, "conv-once").await;
    let id = created(&e).external_id.clone();
    // Duplicate publish, and a replay with another message id.
    client
        .publish("escalation.requested", "once-1", &body)
        .await
        .unwrap();
    client
        .publish("escalation.requested", "once-replay", &body)
        .await
        .unwrap();
    let replay = next_event(&mut widget, "conv-once").await;
    assert_eq!(created(&replay).external_id, id);
    assert_eq!(sim.salesforce_cases().len(), 1, "exactly one case");
    assert_eq!(cases_of(&sim, "conv-once"), 1);
    assert!(second.terminate().await.success());
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_duplicate_and_replay_make_one_case_with_external_id() {
    exactly_one_case(Some(EXT_FIELD), "sf-once-ext").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_duplicate_and_replay_make_one_case_without_external_id() {
    exactly_one_case(None, "sf-once-guard").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limit_and_lock_errors_retry_to_one_case() {
    let env = TestEnv::new("sf-limit").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim| sf_config(sim, None))
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let cases = "/services/data/v62.0/sobjects/Case";
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: cases.into(),
        times: Some(1),
        status: Some(403),
        body: Some(
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#
                .into(),
        ),
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        "lim",
        &escalation(ORG, "conv-limit"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-limit").await;
    let posts: Vec<_> = sb
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with(cases))
        .collect();
    assert_eq!(posts.len(), 2);
    assert!(
        posts[1].at - posts[0].at >= chrono::Duration::milliseconds(950),
        "backed off for limit_backoff_secs"
    );
    assert_eq!(
        sb.sim.token_requests(),
        1,
        "a limit error never refreshes the token"
    );

    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: cases.into(),
        times: Some(2),
        status: Some(400),
        body: Some(r#"[{"message":"unable to obtain exclusive access to this record","errorCode":"UNABLE_TO_LOCK_ROW","fields":[]}]"#.into()),
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        "lock",
        &escalation(ORG, "conv-lock"),
    )
    .await
    .unwrap();
    let e = next_event(&mut widget, "conv-lock").await;
    assert!(matches!(e.payload, OutboundPayload::EscalationCreated(_)));
    assert_eq!(
        sb.sim.salesforce_cases().len(),
        2,
        "one case per conversation"
    );
    assert_eq!(cases_of(&sb.sim, "conv-lock"), 1);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors_dead_letter_with_the_fix() {
    let env = TestEnv::new("sf-tokenerr").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim| sf_config(sim, None))
        .await;
    let mut dlq = env.dead_letters().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let cases = [
        (
            r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#,
            "My Domain",
        ),
        (
            r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
            "consumer key and consumer secret",
        ),
        (
            r#"{"error":"invalid_grant","error_description":"no client credentials user enabled"}"#,
            "Run As user",
        ),
        (
            r#"{"error":"unsupported_grant_type","error_description":"grant type not supported"}"#,
            "enable the client credentials flow",
        ),
    ];
    for (i, (body, fix)) in cases.iter().enumerate() {
        sb.sim.clear_faults();
        sb.sim.inject(FaultRule {
            path_prefix: "/services/oauth2/token".into(),
            status: Some(400),
            body: Some(body.to_string()),
            ..Default::default()
        });
        let conv = format!("tokerr-{i}");
        sb.publish("escalation.requested", &conv, &escalation(ORG, &conv))
            .await
            .unwrap();
        let dl = dlq.next().await;
        assert_eq!(dl.message_id.as_deref(), Some(conv.as_str()));
        assert_eq!(dl.headers["x-escalator-error-class"], "permanent");
        assert!(
            dl.headers["x-escalator-reason"].contains(fix),
            "reason should contain {fix:?}: {}",
            dl.headers["x-escalator-reason"]
        );
        assert!(
            !format!("{:?}", dl.headers).contains("sim-client-secret"),
            "no secret in the dead letter"
        );
        let e = next_event(&mut widget, &conv).await;
        assert!(
            matches!(e.payload, OutboundPayload::EscalationFailed(_)),
            "{e:?}"
        );
    }
    assert!(sb.sim.salesforce_cases().is_empty());
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_transcript_is_cut_in_the_description_and_attached_in_full() {
    let env = TestEnv::new("sf-long").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim| sf_config(sim, None))
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let mut body = escalation(ORG, "conv-long");
    let chunk = "x".repeat(990);
    let transcript: Vec<_> = (0..40)
        .map(|i| json!({ "role": if i % 2 == 0 { "customer" } else { "ai" }, "text": format!("{i:03} {chunk}"), "sent_at": "2026-11-21T10:00:00Z" }))
        .collect();
    body["transcript"] = json!(transcript);
    sb.publish("escalation.requested", "long", &body)
        .await
        .unwrap();
    next_event(&mut widget, "conv-long").await;
    let case = &sb.sim.salesforce_cases()[0];
    let description = case.fields["Description"].as_str().unwrap();
    assert!(
        description.chars().count() <= 32_000,
        "cut to 32,000: {}",
        description.chars().count()
    );
    let files: Vec<_> = sb
        .sim
        .salesforce_attachments()
        .into_iter()
        .filter(|r| r.sobject == "ContentVersion")
        .collect();
    assert_eq!(files.len(), 1, "the full transcript attached once");
    assert_eq!(files[0].fields["FirstPublishLocationId"], json!(case.id));
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(files[0].fields["VersionData"].as_str().unwrap())
        .unwrap();
    let text = String::from_utf8(data).unwrap();
    assert!(
        text.chars().count() > 40_000,
        "full transcript: {}",
        text.chars().count()
    );
    assert!(
        text.contains("000 x") && text.contains("039 x"),
        "first and last entries attached"
    );
    sb.stop().await;
    env.cleanup().await;
}
