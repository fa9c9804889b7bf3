//! The webhook ingress against a real RabbitMQ: who may deliver, what is
//! published (and that nothing is for a refused request), that the answer
//! comes only after the broker has the message, and what happens while the
//! broker is unreachable.
mod common;

use common::{TestEnv, WAIT};
use escalator::config::Config;
use escalator::contract::InboundKind;
use escalator::ingress::auth::{ORG_HEADER, SIGNATURE_HEADER, SIGNATURE_TIMESTAMP_HEADER, sign};
use escalator::ingress::{self, IngressHandle, IngressOptions};
use escalator::schema::Schemas;
use escalator::topology::INBOUND_EXCHANGE;
use escalator::topology::INTAKE_QUEUE;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use serde_json::{Value, json};
use std::time::Duration;

const ACME_TOKEN: &str = "acme-webhook-token-0123456789";
const ACME_SECRET: &str = "acme-signing-secret-xyz";
const GLOBEX_TOKEN: &str = "globex-webhook-token-9876543210";

/// acme checks signatures, globex only the token, plain has no live table.
fn config() -> Config {
    let text = format!(
        r#"
[orgs.acme]
provider = "zendesk"
[orgs.acme.zendesk]
subdomain = "acme"
email = "bot@acme.example"
api_token = "t"
[orgs.acme.zendesk.live]
app_id = "app_acme"
key_id = "app_key_acme"
secret = "s"
webhook_token = "{ACME_TOKEN}"
webhook_signing_secret = "{ACME_SECRET}"

[orgs.globex]
provider = "zendesk"
[orgs.globex.zendesk]
subdomain = "globex"
email = "bot@globex.example"
api_token = "t"
[orgs.globex.zendesk.live]
app_id = "app_globex"
key_id = "app_key_globex"
secret = "s"
webhook_token = "{GLOBEX_TOKEN}"

[orgs.plain]
provider = "zendesk"
[orgs.plain.zendesk]
subdomain = "plain"
email = "bot@plain.example"
api_token = "t"
"#
    );
    Config::parse(&text, "test", &|_| None).unwrap()
}

const STATUS_CHANGED: &str = r#"{"account_id":1,"id":"01HEVENT","type":"zen:event-type:ticket.status_changed","subject":"zen:ticket:42","detail":{"id":"42","requester_id":"7"},"event":{"current":"SOLVED","previous":"OPEN"}}"#;

/// The session-end trigger body exactly as the admins' guide has it.
const TRIGGER_BODY: &str = "{\n\"ticket_id\": \"42\",\n\"type\": \"fv:conversation_closed\",\n}";

type Headers = Vec<(&'static str, String)>;

fn now_ts() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct Fixture {
    env: TestEnv,
    ingress: IngressHandle,
    http: reqwest::Client,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A classic queue of the test's, bound to `escalator.inbound` like the
/// intake queue (whose single active consumer rules out basic.get).
const PROBE_QUEUE: &str = "test.inbound-probe";

async fn bind_probe_queue(env: &TestEnv) {
    let conn = escalator::amqp::connect(&env.settings.amqp_url, "test-probe")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        ShortString::from(PROBE_QUEUE),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(PROBE_QUEUE),
        ShortString::from(INBOUND_EXCHANGE),
        ShortString::from("#"),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, ShortString::from("bye")).await;
}

async fn fixture(name: &str) -> Fixture {
    let env = TestEnv::new(name).await;
    env.declare_topology().await;
    bind_probe_queue(&env).await;
    let ingress = ingress::start(&env.settings, config(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    assert!(ingress.ready(), "the ingress did not connect to RabbitMQ");
    Fixture {
        env,
        ingress,
        http: client(),
    }
}

impl Fixture {
    async fn finish(self) {
        self.ingress.shutdown().await;
        self.env.cleanup().await;
    }

    /// The next message published to escalator.inbound, without waiting for one.
    async fn take(&self) -> Option<lapin::message::BasicGetMessage> {
        let conn = escalator::amqp::connect(&self.env.settings.amqp_url, "test-take")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let got = ch
            .basic_get(
                ShortString::from(PROBE_QUEUE),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        let _ = conn.close(200, ShortString::from("bye")).await;
        got
    }
}

/// POST `body` with `headers`; the status and the JSON answer.
async fn post(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut req = http.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let json = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, json)
}

/// Headers of a valid, signed acme delivery of `body`.
fn acme_headers(body: &str) -> Vec<(&'static str, String)> {
    let ts = now_ts();
    vec![
        ("authorization", format!("Bearer {ACME_TOKEN}")),
        (ORG_HEADER, "acme".into()),
        ("content-type", "application/json".into()),
        ("user-agent", "Zendesk Webhook".into()),
        ("x-zendesk-webhook-id", "01HWEBHOOK".into()),
        ("x-zendesk-webhook-invocation-id", "8350205582".into()),
        (SIGNATURE_HEADER, sign(ACME_SECRET, &ts, body.as_bytes())),
        (SIGNATURE_TIMESTAMP_HEADER, ts),
    ]
}

fn with(
    mut headers: Vec<(&'static str, String)>,
    name: &'static str,
    value: Option<String>,
) -> Vec<(&'static str, String)> {
    headers.retain(|(k, _)| *k != name);
    if let Some(v) = value {
        headers.push((name, v));
    }
    headers
}

#[tokio::test]
async fn refused_deliveries_get_their_status_and_publish_nothing() {
    let f = fixture("ingress-refusals").await;
    let url = f.ingress.webhook_url();
    let good = acme_headers(STATUS_CHANGED);
    let stale_ts = (chrono::Utc::now() - chrono::Duration::minutes(6))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let future_ts = (chrono::Utc::now() + chrono::Duration::minutes(6))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let signed_at = |ts: &str, body: &str| {
        with(
            with(
                good.clone(),
                SIGNATURE_TIMESTAMP_HEADER,
                Some(ts.to_string()),
            ),
            SIGNATURE_HEADER,
            Some(sign(ACME_SECRET, ts, body.as_bytes())),
        )
    };
    let oversized = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300 * 1024));
    let not_json = "ticket 42 was solved";
    let globex = |token: &str| {
        vec![
            ("authorization", format!("Bearer {token}")),
            (ORG_HEADER, "globex".to_string()),
        ]
    };
    let cases: Vec<(&str, Headers, Vec<u8>, u16)> = vec![
        (
            "wrong token",
            with(
                good.clone(),
                "authorization",
                Some("Bearer not-the-token-at-all".into()),
            ),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "another org's token",
            with(
                good.clone(),
                "authorization",
                Some(format!("Bearer {GLOBEX_TOKEN}")),
            ),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "no authorization",
            with(good.clone(), "authorization", None),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "basic instead of bearer",
            with(
                good.clone(),
                "authorization",
                Some(format!("Basic {ACME_TOKEN}")),
            ),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "missing org header",
            with(good.clone(), ORG_HEADER, None),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "unknown org",
            with(good.clone(), ORG_HEADER, Some("initech".into())),
            STATUS_CHANGED.into(),
            403,
        ),
        (
            "org without a live table",
            with(good.clone(), ORG_HEADER, Some("plain".into())),
            STATUS_CHANGED.into(),
            403,
        ),
        (
            "stale signature",
            signed_at(&stale_ts, STATUS_CHANGED),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "signature from the future",
            signed_at(&future_ts, STATUS_CHANGED),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "bad signature (another body)",
            good.clone(),
            br#"{"type":"zen:event-type:ticket.status_changed","detail":{"id":"43"}}"#.to_vec(),
            401,
        ),
        (
            "missing signature",
            with(good.clone(), SIGNATURE_HEADER, None),
            STATUS_CHANGED.into(),
            401,
        ),
        (
            "oversized body",
            signed_at(&now_ts(), &oversized),
            oversized.clone().into_bytes(),
            413,
        ),
        (
            "not JSON",
            signed_at(&now_ts(), not_json),
            not_json.into(),
            400,
        ),
        (
            "not UTF-8",
            globex(GLOBEX_TOKEN),
            vec![b'{', b'"', 0xff, 0xfe, b'"', b'}'],
            400,
        ),
    ];
    for (what, headers, body, want) in cases {
        let (status, answer) = post(&f.http, &url, &headers, body).await;
        assert_eq!(status, want, "{what}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: no error message: {answer}");
        for secret in [
            ACME_TOKEN,
            GLOBEX_TOKEN,
            ACME_SECRET,
            "initech",
            "ticket 42",
        ] {
            assert!(
                !message.contains(secret),
                "{what} echoes {secret}: {message}"
            );
        }
        assert_eq!(
            f.env.queue_depth(INTAKE_QUEUE).await,
            0,
            "{what}: something was published"
        );
    }
    // The queue was empty because nothing was published, not because
    // nothing could be: a valid delivery lands, and it is the only message.
    let (status, _) = post(&f.http, &url, &good, STATUS_CHANGED).await;
    assert_eq!(status, 200);
    let got = f
        .take()
        .await
        .expect("the valid webhook is not on the queue");
    let v: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(v["body"], STATUS_CHANGED);
    assert!(
        f.take().await.is_none(),
        "more than the valid webhook was published"
    );
    f.finish().await;
}

#[tokio::test]
async fn a_valid_webhook_is_on_the_queue_before_the_answer() {
    let f = fixture("ingress-valid").await;
    let headers = acme_headers(STATUS_CHANGED);
    let (status, answer) = post(&f.http, &f.ingress.webhook_url(), &headers, STATUS_CHANGED).await;
    assert_eq!((status, &answer), (200, &json!({"ok": true})));
    // No waiting: the 200 came after the broker's confirm, so it is there.
    let got = f.take().await.expect("answered 200 but not on the queue");
    assert_eq!(got.delivery.routing_key.as_str(), "webhook.zendesk");
    assert_eq!(got.delivery.exchange.as_str(), "escalator.inbound");
    let props = &got.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*props.delivery_mode(), Some(2), "not persistent");
    let message_id = props.message_id().as_ref().map(|s| s.to_string());
    assert!(
        message_id.as_ref().is_some_and(|m| m.len() >= 32),
        "{message_id:?}"
    );

    let v: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    Schemas::load()
        .unwrap()
        .validate_inbound(InboundKind::WebhookZendesk, &v)
        .unwrap();
    assert_eq!(v["org_id"], "acme");
    assert_eq!(v["body"], STATUS_CHANGED, "the body is not the raw body");
    let received =
        chrono::DateTime::parse_from_rfc3339(v["received_at"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now() - received.to_utc()).num_seconds().abs() < 60);
    let kept = v["headers"].as_object().unwrap();
    for (name, value) in &headers {
        match *name {
            "authorization" | SIGNATURE_HEADER => {
                assert!(!kept.contains_key(*name), "{name} was published")
            }
            _ => assert_eq!(kept[*name], value.as_str(), "{name}"),
        }
    }
    let text = String::from_utf8_lossy(&got.delivery.data);
    assert!(!text.contains(ACME_TOKEN) && !text.contains(&headers[6].1));

    // A retry of the same invocation gets the same message id (the worker
    // deduplicates on it); another invocation another one.
    let (status, _) = post(&f.http, &f.ingress.webhook_url(), &headers, STATUS_CHANGED).await;
    assert_eq!(status, 200);
    let again = f.take().await.unwrap();
    assert_eq!(
        again
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        message_id
    );
    let other = with(
        headers.clone(),
        "x-zendesk-webhook-invocation-id",
        Some("8350205583".into()),
    );
    let (status, _) = post(&f.http, &f.ingress.webhook_url(), &other, STATUS_CHANGED).await;
    assert_eq!(status, 200);
    let third = f.take().await.unwrap();
    assert_ne!(
        third
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string()),
        message_id
    );
    f.finish().await;
}

#[tokio::test]
async fn the_session_end_trigger_body_with_its_trailing_comma_is_accepted() {
    let f = fixture("ingress-trigger").await;
    // The path of the admins' guide, an org without a signing secret.
    let url = format!(
        "{}/ai-agent/escalation/webhooks/zendesk/all",
        f.ingress.base_url()
    );
    let headers = vec![
        ("authorization", format!("Bearer {GLOBEX_TOKEN}")),
        (ORG_HEADER, "globex".to_string()),
        ("content-type", "application/json".to_string()),
    ];
    let (status, answer) = post(&f.http, &url, &headers, TRIGGER_BODY).await;
    assert_eq!(status, 200, "{answer}");
    let got = f
        .take()
        .await
        .expect("the trigger body is not on the queue");
    let v: Value = serde_json::from_slice(&got.delivery.data).unwrap();
    assert_eq!(v["org_id"], "globex");
    assert_eq!(
        v["body"], TRIGGER_BODY,
        "published as delivered, trailing comma and all"
    );
    f.finish().await;
}

#[tokio::test]
async fn concurrent_webhooks_are_all_confirmed() {
    let f = fixture("ingress-concurrent").await;
    let url = f.ingress.webhook_url();
    let n = 64;
    let sends = (0..n).map(|i| {
        let body = format!(r#"{{"id":"evt-{i}","type":"zen:event-type:ticket.status_changed"}}"#);
        let mut headers = acme_headers(&body);
        headers = with(
            headers,
            "x-zendesk-webhook-invocation-id",
            Some(format!("inv-{i}")),
        );
        let (http, url) = (f.http.clone(), url.clone());
        async move { post(&http, &url, &headers, body).await.0 }
    });
    let statuses = futures_util::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(f.env.queue_depth(INTAKE_QUEUE).await, n);
    f.finish().await;
}

#[tokio::test]
async fn probes_and_unknown_paths() {
    let f = fixture("ingress-probes").await;
    let base = f.ingress.base_url();
    let get = |path: &str| {
        let http = f.http.clone();
        let url = format!("{base}{path}");
        async move {
            let r = http.get(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_eq!(get("/healthz").await, (200, json!({"ok": true})));
    assert_eq!(get("/readyz").await, (200, json!({"ready": true})));
    let (status, answer) = get("/webhooks/other").await;
    assert_eq!(status, 404);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("/webhooks/zendesk")
    );
    // A GET on the webhook path is not a delivery.
    assert_eq!(get("/webhooks/zendesk").await.0, 405);
    f.finish().await;
}

/// Poll `/readyz` until it answers `want` (the ingress reacts to the
/// broker in the background).
async fn until_ready_is(http: &reqwest::Client, base: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still answers {status}, not {want}, after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unreachable_broker_gets_503_and_readyz_fails() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = escalator::settings::Settings::defaults();
    settings.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let ingress = ingress::start(&settings, config(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let http = client();
    assert!(!ingress.ready());
    let headers = acme_headers(STATUS_CHANGED);
    let (status, answer) = post(&http, &ingress.webhook_url(), &headers, STATUS_CHANGED).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("retry later"));
    let ready = http
        .get(format!("{}/readyz", ingress.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let health = http
        .get(format!("{}/healthz", ingress.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200, "the process is up");
    ingress.shutdown().await;
}

#[tokio::test]
async fn a_lost_broker_gets_503_and_a_reconnect_recovers() {
    let f = fixture("ingress-reconnect").await;
    let base = f.ingress.base_url();
    let url = f.ingress.webhook_url();
    // The broker drops the connection: the ingress reconnects by itself.
    f.env.close_connections().await;
    until_ready_is(&f.http, &base, 200).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = post(&f.http, &url, &acme_headers(STATUS_CHANGED), STATUS_CHANGED).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only 503 while reconnecting");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(f.take().await.is_some());

    // The vhost goes away for good: 503, and /readyz fails.
    f.env.admin.delete_vhost(&f.env.vhost).await.unwrap();
    until_ready_is(&f.http, &base, 503).await;
    let (status, answer) = post(&f.http, &url, &acme_headers(STATUS_CHANGED), STATUS_CHANGED).await;
    assert_eq!(status, 503, "{answer}");
    f.finish().await;
}

#[tokio::test]
async fn without_the_topology_webhooks_get_503_until_it_is_declared() {
    let env = TestEnv::new("ingress-no-topology").await;
    let ingress = ingress::start_with(
        IngressOptions {
            confirm_timeout: Duration::from_secs(2),
            ..IngressOptions::new(&env.settings, ([127, 0, 0, 1], 0).into())
        },
        config(),
    )
    .await
    .unwrap();
    let http = client();
    let url = ingress.webhook_url();
    let (status, answer) = post(&http, &url, &acme_headers(STATUS_CHANGED), STATUS_CHANGED).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(
        answer["error"], "webhooks cannot be queued yet: retry later",
        "a missing topology is told apart from a broker outage"
    );
    // The ingress does not declare it: once the worker (here: the test) has,
    // deliveries go through on a fresh channel.
    env.declare_topology().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = post(&http, &url, &acme_headers(STATUS_CHANGED), STATUS_CHANGED).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(env.queue_depth(INTAKE_QUEUE).await, 1);
    ingress.shutdown().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_ingress_command_serves_logs_safely_and_stops_on_sigterm() {
    let env = TestEnv::new("ingress-process").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("escalator.toml");
    let config_text = format!(
        r#"
[orgs.acme]
provider = "zendesk"
[orgs.acme.zendesk]
subdomain = "acme"
email = "bot@acme.example"
api_token = "t"
[orgs.acme.zendesk.live]
app_id = "app_acme"
key_id = "app_key_acme"
secret = "s"
webhook_token = "${{ACME_WEBHOOK_TOKEN}}"
webhook_signing_secret = "{ACME_SECRET}"
"#
    );
    std::fs::write(&config_path, config_text).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.path().join("ingress.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("ingress")
        .env("ESCALATOR_AMQP_URL", &env.settings.amqp_url)
        .env("ESCALATOR_CONFIG", &config_path)
        .env("ESCALATOR_INGRESS_LISTEN", format!("127.0.0.1:{port}"))
        .env("ACME_WEBHOOK_TOKEN", ACME_TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = client();
    // Up once it answers; ready once connected.
    let deadline = tokio::time::Instant::now() + WAIT;
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ingress did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_ready_is(&http, &base, 200).await;

    // The compose health check's HTTP/1.0 request over bash's /dev/tcp.
    let check = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /readyz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"
    );
    let status = std::process::Command::new("bash")
        .args(["-c", &check])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the compose health check fails against a ready ingress"
    );

    let body = r#"{"type":"zen:event-type:messaging_ticket.message_added","event":{"actor":{"name":"Grace Hopper"},"message":{"body":"my email is grace@example.com"}}}"#;
    let headers = acme_headers(body);
    let (status, answer) = post(
        &http,
        &format!("{base}{}", ingress::GUIDE_WEBHOOK_PATH),
        &headers,
        body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let wrong = with(
        headers.clone(),
        "authorization",
        Some("Bearer guessed-token-000000".into()),
    );
    assert_eq!(
        post(&http, &format!("{base}/webhooks/zendesk"), &wrong, body)
            .await
            .0,
        401
    );
    assert_eq!(env.queue_depth(INTAKE_QUEUE).await, 1);

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("webhook queued"), "{text}");
    assert!(text.contains("org_id") && text.contains("acme"), "{text}");
    assert!(text.contains("wrong_token"), "{text}");
    for secret in [
        ACME_TOKEN,
        ACME_SECRET,
        "guessed-token",
        headers[6].1.as_str(),
        "Grace Hopper",
        "grace@example.com",
    ] {
        assert!(!text.contains(secret), "the log holds {secret}:\n{text}");
    }
    env.cleanup().await;
}
