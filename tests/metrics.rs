//! Metrics and probes (issue 9, item 3): the worker's `/metrics` parses as
//! Prometheus text and counts what it did, `/healthz` and `/readyz` tell an
//! orchestrator what it needs, and the ingress's `/metrics` counts webhooks.
//!
//! The recorder is process-global, so the tests of this file add to the same
//! series: each compares a value before and after its own action.
mod common;

use common::{PrivateRedis, TestEnv, WAIT, created, escalation, next_event};
use escalator::ingress::auth::ORG_HEADER;
use escalator::sandbox::{SALESFORCE_ORG, SANDBOX_WEBHOOK_TOKEN, Sandbox, ZENDESK_ORG};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// Scrape `base`/metrics and parse it as the Prometheus text format.
async fn scrape(base: &str) -> prometheus_parse::Scrape {
    let resp = http().get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
}

/// Sum of the samples of `name` whose labels include all of `labels`
/// (0 when none: a counter appears on its first increment).
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// Scrape until `name{labels}` exceeds `before` (the counter is bumped just
/// after the ack, which may come after the outbound event a test waits for).
async fn until_above(
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
    before: f64,
) -> prometheus_parse::Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = scrape(base).await;
        if value(&s, name, labels) > before {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} still at {before} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `base`/`path`: status and JSON answer.
async fn get(base: &str, path: &str) -> (u16, Value) {
    let r = http().get(format!("{base}{path}")).send().await.unwrap();
    (
        r.status().as_u16(),
        r.json::<Value>().await.unwrap_or(Value::Null),
    )
}

/// Poll `/readyz` until it answers `want` (readiness follows the broker
/// session and Redis, both changing in the background).
async fn until_ready_is(base: &str, want: u16) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, answer) = get(base, "/readyz").await;
        if status == want {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still answers {status} ({answer}), not {want}, after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn serve(sandbox: &Sandbox, stop: &CancellationToken) -> String {
    let addr: SocketAddr = sandbox
        .worker
        .serve_health(stop.clone())
        .await
        .unwrap()
        .expect("ESCALATOR_METRICS_LISTEN is set");
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_count_a_processed_escalation_and_its_provider_request() {
    let env = TestEnv::new("metrics-worker").await;
    let sandbox = env.sandbox().await;
    let stop = CancellationToken::new();
    let base = serve(&sandbox, &stop).await;
    assert_eq!(
        get(&base, "/healthz").await,
        (200, serde_json::json!({"ok": true}))
    );
    until_ready_is(&base, 200).await;

    let done = [("type", "escalation.requested"), ("outcome", "done")];
    let zendesk_ok = [("provider", "zendesk"), ("status", "2xx")];
    let before = scrape(&base).await;
    let messages_before = value(&before, "escalator_messages_total", &done);
    let requests_before = value(&before, "escalator_provider_requests_total", &zendesk_ok);

    let mut listener = sandbox.listen(&format!("{ZENDESK_ORG}.#")).await.unwrap();
    sandbox
        .publish(
            "escalation.requested",
            "m-metrics-1",
            &escalation(ZENDESK_ORG, "conv-metrics-1"),
        )
        .await
        .unwrap();
    created(&next_event(&mut listener, "conv-metrics-1").await);

    let after = until_above(&base, "escalator_messages_total", &done, messages_before).await;
    assert!(
        value(&after, "escalator_provider_requests_total", &zendesk_ok) > requests_before,
        "the ticket's Zendesk request was not counted"
    );
    // The duration histogram has the message too, and every metric has help text.
    let durations = after
        .samples
        .iter()
        .find(|s| {
            s.metric == "escalator_message_duration_seconds"
                && s.labels.get("type") == Some("escalation.requested")
        })
        .expect("no escalator_message_duration_seconds{type=\"escalation.requested\"}");
    assert!(
        matches!(durations.value, prometheus_parse::Value::Histogram(_)),
        "{:?}",
        durations.value
    );
    for name in [
        "escalator_messages_total",
        "escalator_provider_requests_total",
        "escalator_lanes",
    ] {
        let help = after
            .docs
            .get(name.trim_end_matches("_total"))
            .or_else(|| after.docs.get(name));
        assert!(
            help.is_some_and(|h| !h.is_empty()),
            "{name} has no HELP: {:?}",
            after.docs.keys()
        );
    }
    // No conversation id ever becomes a label value.
    assert!(
        !after
            .samples
            .iter()
            .any(|s| s.labels.values().any(|v| v.contains("conv-metrics"))),
        "a conversation id is a label value"
    );

    stop.cancel();
    sandbox.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_the_session_and_fails_when_redis_goes_away() {
    let env = TestEnv::new("metrics-ready").await;
    let mut redis = PrivateRedis::start();
    let mut settings = env.settings.clone();
    settings.redis_url = redis.url();
    let sim = env.sim().await;
    let worker = std::sync::Arc::new(
        escalator::pipeline::service::Worker::start(settings, env.config(&sim.base_url()))
            .await
            .unwrap(),
    );
    let stop = CancellationToken::new();
    let addr = worker.serve_health(stop.clone()).await.unwrap().unwrap();
    let base = format!("http://{addr}");

    // Started, not consuming yet: alive, not ready, and it says why.
    assert_eq!(get(&base, "/healthz").await.0, 200);
    let (status, answer) = get(&base, "/readyz").await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("RabbitMQ"),
        "{answer}"
    );

    let task = {
        let worker = worker.clone();
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    until_ready_is(&base, 200).await;

    redis.kill();
    let answer = until_ready_is(&base, 503).await;
    assert!(
        answer["reason"].as_str().unwrap().contains("Redis"),
        "{answer}"
    );
    // Still alive: a restart would not bring Redis back.
    assert_eq!(get(&base, "/healthz").await.0, 200);

    stop.cancel();
    let _ = tokio::time::timeout(WAIT, task).await;
    sim.shutdown().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_metrics_count_a_webhook_and_the_worker_counts_its_event() {
    let env = TestEnv::new("metrics-ingress").await;
    let sandbox = env
        .sandbox()
        .await
        .with_ingress(Sandbox::zendesk_webhook)
        .await
        .unwrap();
    let ingress = sandbox.ingress.as_ref().unwrap();
    let base = ingress.base_url();
    let ok = [("status", "200")];
    let ignored = [("result", "ignored")];
    let before = scrape(&base).await;

    // A ticket event of the account that is none of ours.
    let body = r#"{"account_id":1,"id":"01HMETRICS","type":"zen:event-type:ticket.status_changed","subject":"zen:ticket:999001","detail":{"id":"999001","requester_id":"7"},"event":{"current":"SOLVED","previous":"OPEN"}}"#;
    let resp = http()
        .post(ingress.webhook_url())
        .header("authorization", format!("Bearer {SANDBOX_WEBHOOK_TOKEN}"))
        .header(ORG_HEADER, ZENDESK_ORG)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let after = scrape(&base).await;
    assert!(
        value(&after, "escalator_ingress_requests_total", &ok)
            > value(&before, "escalator_ingress_requests_total", &ok),
        "the accepted webhook was not counted"
    );
    assert!(after.samples.iter().any(|s| {
        s.metric
            .starts_with("escalator_ingress_request_duration_seconds")
    }));
    // The worker's intake router saw its event and dropped it (same process,
    // same registry); the test-facing counter agrees.
    let ignored_before = value(&before, "escalator_webhook_events_total", &ignored);
    until_above(
        &base,
        "escalator_webhook_events_total",
        &ignored,
        ignored_before,
    )
    .await;
    assert!(sandbox.worker.context().webhooks.ignored() >= 1);

    // A refused delivery (no token) is counted with its status.
    let refused = [("status", "401")];
    let refused_before = value(&after, "escalator_ingress_requests_total", &refused);
    let resp = http()
        .post(ingress.webhook_url())
        .header(ORG_HEADER, ZENDESK_ORG)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let after = scrape(&base).await;
    assert!(value(&after, "escalator_ingress_requests_total", &refused) > refused_before);

    sandbox.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_token_refreshes_and_api_usage_are_reported_per_org() {
    let env = TestEnv::new("metrics-salesforce").await;
    let sandbox = env.sandbox().await;
    let stop = CancellationToken::new();
    let base = serve(&sandbox, &stop).await;
    let org = [("org", SALESFORCE_ORG)];
    let before = scrape(&base).await;
    let refreshes_before = value(&before, "escalator_salesforce_token_refreshes_total", &org);

    let mut listener = sandbox
        .listen(&format!("{SALESFORCE_ORG}.#"))
        .await
        .unwrap();
    sandbox
        .publish(
            "escalation.requested",
            "m-metrics-sf",
            &escalation(SALESFORCE_ORG, "conv-metrics-sf"),
        )
        .await
        .unwrap();
    created(&next_event(&mut listener, "conv-metrics-sf").await);

    // This test's key prefix has no cached token: the case needed a fetch.
    let after = until_above(
        &base,
        "escalator_salesforce_token_refreshes_total",
        &org,
        refreshes_before,
    )
    .await;
    let usage = value(&after, "escalator_salesforce_api_usage_ratio", &org);
    assert!(usage > 0.0 && usage <= 1.0, "api usage ratio {usage}");
    assert!(
        value(
            &after,
            "escalator_provider_requests_total",
            &[("provider", "salesforce"), ("operation", "token")]
        ) >= 1.0
    );

    stop.cancel();
    sandbox.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_message_counts_as_a_dead_letter_of_the_intake() {
    let env = TestEnv::new("metrics-dead-letter").await;
    let sandbox = env.sandbox().await;
    let stop = CancellationToken::new();
    let base = serve(&sandbox, &stop).await;
    let labels = [("class", "invalid"), ("stage", "intake")];
    let before = value(
        &scrape(&base).await,
        "escalator_dead_letters_total",
        &labels,
    );
    let mut dead = env.dead_letters().await;

    sandbox
        .publish_raw("escalation.requested", Some("m-metrics-bad"), b"not json")
        .await
        .unwrap();
    dead.next().await;
    until_above(&base, "escalator_dead_letters_total", &labels, before).await;

    stop.cancel();
    sandbox.stop().await;
    env.cleanup().await;
}

#[test]
fn metrics_listen_is_validated() {
    let mut s = escalator::settings::Settings::defaults();
    assert_eq!(
        s.metrics_listen().unwrap(),
        Some("127.0.0.1:9464".parse().unwrap())
    );
    s.metrics_listen = "off".into();
    assert_eq!(s.metrics_listen().unwrap(), None);
    s.metrics_listen = "localhost".into();
    let err = s.validate().unwrap_err();
    assert!(err.contains("ESCALATOR_METRICS_LISTEN"), "{err}");
}
