//! Operability (issue 6, items 4, 11 and 14): the shard count is fixed per
//! deployment, secrets and customer data stay out of start-up errors and
//! library logs, and the test harness works without the management plugin.
mod common;

use common::{TestEnv, WAIT, created, escalation, next_event};
use escalator::scratch::VhostAdmin;
use std::time::Duration;

/// Run the binary with `args` and `envs`; (success, stderr) within 60 s.
async fn run_escalator(args: &[&str], envs: &[(String, String)]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"));
    cmd.args(args).envs(envs.iter().cloned()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("escalator did not exit within 60 s")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with(env: &[(String, String)], key: &str, value: &str) -> Vec<(String, String)> {
    let mut env: Vec<_> = env.iter().filter(|(k, _)| k != key).cloned().collect();
    env.push((key.to_string(), value.to_string()));
    env
}

fn config_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("orgs.toml");
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

// ------------------------------------------------------------ shard count (item 4)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_another_shard_count_exits_naming_both_counts_and_the_migration() {
    let env = TestEnv::new("shards").await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &escalator::sandbox::sandbox_config("http://127.0.0.1:1"),
    );
    let vars = env.worker_env(&env.settings);
    assert_eq!(env.settings.shards, 4);
    let (ok, stderr) = run_escalator(&["topology"], &vars).await;
    assert!(ok, "topology with 4 shards: {stderr}");

    // Growing: a worker with 8 shards would create escalator.work.04..07 and
    // send some conversations to two shards.
    let eight = with(&vars, "ESCALATOR_SHARDS", "8");
    let (ok, stderr) = run_escalator(&["worker", "--config", &config], &eight).await;
    assert!(
        !ok,
        "a worker with 8 shards started on a 4-shard deployment"
    );
    for part in [
        "has 4 work shards",
        "ESCALATOR_SHARDS=8",
        "Start it with ESCALATOR_SHARDS=4",
        "To change it:",
        "Changing the shard count",
    ] {
        assert!(stderr.contains(part), "`{part}` missing in: {stderr}");
    }
    // `topology` refuses too, and shrinking as well (it would strand queues).
    for shards in ["8", "2"] {
        let (ok, stderr) =
            run_escalator(&["topology"], &with(&vars, "ESCALATOR_SHARDS", shards)).await;
        assert!(!ok, "topology with {shards} shards on a 4-shard deployment");
        assert!(
            stderr.contains("has 4 work shards")
                && stderr.contains(&format!("ESCALATOR_SHARDS={shards}")),
            "{stderr}"
        );
    }
    assert!(
        env.queue_depth("escalator.work.03").await == 0,
        "the 4-shard topology is intact"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_record_refuses_another_shape_for_the_same_key_prefix() {
    let first = TestEnv::new("record-a").await;
    let second = TestEnv::new("record-b").await;
    let sim = first.sim().await;
    let worker = escalator::pipeline::service::Worker::start(
        first.settings.clone(),
        first.config(&sim.base_url()),
    )
    .await
    .unwrap();
    drop(worker);
    // Another vhost (its broker has no work queues yet), the same key prefix.
    let mut settings = second.settings.clone();
    settings.key_prefix = first.settings.key_prefix.clone();
    settings.shards = 8;
    let err = escalator::pipeline::service::Worker::start(
        settings.clone(),
        first.config(&sim.base_url()),
    )
    .await
    .err()
    .expect("a worker with 8 shards started where the record says 4");
    let text = err.to_string();
    assert!(
        text.contains(&format!("{}:deployment", first.settings.key_prefix))
            && text.contains("has 4 work shards")
            && text.contains("ESCALATOR_SHARDS=8"),
        "{text}"
    );
    settings.shards = 4;
    settings.delivery_limit = 7;
    let text = escalator::pipeline::service::Worker::start(settings, first.config(&sim.base_url()))
        .await
        .err()
        .expect("another delivery limit accepted")
        .to_string();
    assert!(
        text.contains("records 20") && text.contains("ESCALATOR_DELIVERY_LIMIT=7"),
        "{text}"
    );
    sim.shutdown().await;
    first.cleanup().await;
    second.cleanup().await;
}

// ------------------------------------------------------------ secrets (item 11)

#[tokio::test]
async fn urls_that_do_not_parse_are_printed_without_their_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &escalator::sandbox::sandbox_config("http://127.0.0.1:1"),
    );
    let prefix = format!(
        "escalator-test:urls:{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let base = vec![("ESCALATOR_KEY_PREFIX".to_string(), prefix)];
    for (var, url) in [
        (
            "ESCALATOR_AMQP_URL",
            "amqp//guest:CANARY-pw-4711@127.0.0.1:5672/%2f",
        ),
        ("ESCALATOR_AMQP_URL", "amqp:guest:CANARY-pw-4711@127.0.0.1"),
        ("ESCALATOR_AMQP_URL", "guest:CANARY-pw-4711@127.0.0.1:5672"),
        (
            "ESCALATOR_REDIS_URL",
            "redis//:CANARY-pw-4711@127.0.0.1:6379/",
        ),
        ("ESCALATOR_REDIS_URL", "redis:CANARY-pw-4711@127.0.0.1:6379"),
    ] {
        let (ok, stderr) =
            run_escalator(&["worker", "--config", &config], &with(&base, var, url)).await;
        assert!(!ok, "{url}");
        assert!(!stderr.contains("CANARY"), "{var}={url}: {stderr}");
        assert!(stderr.contains("<redacted>"), "{var}={url}: {stderr}");
        if var == "ESCALATOR_AMQP_URL" {
            let (_, stderr) = run_escalator(&["topology"], &with(&base, var, url)).await;
            assert!(!stderr.contains("CANARY"), "topology, {url}: {stderr}");
        }
    }
}

#[tokio::test]
async fn a_config_value_of_the_wrong_type_is_located_but_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        "[orgs.acme]\nprovider = \"zendesk\"\n\n[orgs.acme.zendesk]\nsubdomain = \"acme\"\n\
         email = \"bot@acme.example\"\napi_token = 98765012345678\n",
    );
    let (ok, stderr) = run_escalator(&["worker", "--config", &config], &[]).await;
    assert!(!ok);
    assert!(!stderr.contains("98765012345678"), "{stderr}");
    assert!(!stderr.contains("9876"), "{stderr}");
    for part in [
        "line 7, column 13",
        "org `acme`",
        "`orgs.acme.zendesk.api_token`",
        "found integer, expected a string",
        "Fix: write the value in double quotes",
    ] {
        assert!(stderr.contains(part), "`{part}` missing in: {stderr}");
    }
}

/// `text` as the decimal byte list lapin's trace output prints bodies as.
fn as_byte_list(text: &str) -> String {
    text.bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run a worker process under `rust_log`, push one escalation carrying
/// canaries through it, and return its log.
async fn log_of_one_escalation(env: &TestEnv, rust_log: &str, conv: &str) -> String {
    let sim = env.sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        &escalator::sandbox::sandbox_config(&sim.base_url()),
    );
    let log = dir.path().join("worker.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .args(["worker", "--config", &config])
        .envs(with(&env.worker_env(&env.settings), "RUST_LOG", rust_log))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = escalator::sandbox::Client::connect(&env.settings)
        .await
        .unwrap();
    let org = escalator::sandbox::ZENDESK_ORG;
    let mut widget = client.listen(&format!("{org}.#")).await.unwrap();
    let mut body = escalation(org, conv);
    body["customer"]["email"] = "canary-mail-4711@example.com".into();
    body["transcript"][0]["text"] = "CANARYTRANSCRIPT4711 my card number".into();
    client
        .publish("escalation.requested", &format!("{conv}-e"), &body)
        .await
        .unwrap();
    let event = next_event(&mut widget, conv).await;
    created(&event);
    client.close().await;
    let pid = child.id().unwrap().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    sim.shutdown().await;
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_trace_does_not_log_message_bodies() {
    let env = TestEnv::new("trace").await;
    env.declare_topology().await;
    let log = log_of_one_escalation(&env, "trace", "conv-trace").await;
    assert!(log.len() > 1000, "the worker logged at trace:\n{log}");
    for canary in ["canary-mail-4711@example.com", "CANARYTRANSCRIPT4711"] {
        assert!(!log.contains(canary), "{canary} logged");
        assert!(
            !log.contains(&as_byte_list(canary)),
            "{canary} logged as bytes"
        );
    }
    // Naming the library lifts the cap: the same run then shows the bodies,
    // which is what plain RUST_LOG=trace did before the cap.
    let lifted = log_of_one_escalation(&env, "trace,lapin=trace", "conv-lifted").await;
    assert!(
        lifted.contains(&as_byte_list("CANARYTRANSCRIPT4711"))
            || lifted.contains("CANARYTRANSCRIPT4711"),
        "lapin=trace does not show bodies: the canary check above proves nothing"
    );
    env.cleanup().await;
}

// ------------------------------------------------------------ fresh machine (item 14)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_makes_and_removes_its_vhost_with_rabbitmqctl() {
    let admin = VhostAdmin::rabbitmqctl("amqp://guest:guest@127.0.0.1:5672/%2f");
    let env = TestEnv::new_with("ctl", admin).await;
    let vhosts = || {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["list_vhosts", "--quiet", "--no-table-headers"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
    };
    assert!(vhosts().contains(&env.vhost), "{} not made", env.vhost);
    // Usable: a worker runs an escalation in it.
    let sandbox = env.sandbox().await;
    let org = escalator::sandbox::ZENDESK_ORG;
    let mut widget = sandbox.listen(&format!("{org}.#")).await.unwrap();
    sandbox
        .publish(
            "escalation.requested",
            "ctl-e",
            &escalation(org, "conv-ctl"),
        )
        .await
        .unwrap();
    created(&next_event(&mut widget, "conv-ctl").await);
    sandbox.stop().await;
    let vhost = env.vhost.clone();
    env.cleanup().await;
    assert!(!vhosts().contains(&vhost), "{vhost} left behind");
}

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

/// Publish an escalation for `org` with [`TRACE`] and return the
/// `traceparent` of the first outbound event it causes.
async fn escalate_with_traceparent(env: &TestEnv, org: &str, conv: &str) -> Option<String> {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    // A raw consumer of the outbound exchange, to see the event's headers.
    let conn = escalator::amqp::connect(&env.settings.amqp_url, "test-trace")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        ShortString::from(escalator::topology::OUTBOUND_EXCHANGE),
        ShortString::from(format!("{org}.#")),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut outbound = ch
        .basic_consume(
            q.name().clone(),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = escalator::amqp::Publisher::open(&conn).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("traceparent"),
        AMQPValue::LongString(LongString::from(TRACE.as_bytes().to_vec())),
    );
    let props = escalator::amqp::json_properties()
        .with_message_id(ShortString::from(format!("{conv}-esc")))
        .with_headers(headers);
    let body = serde_json::to_vec(&escalation(org, conv)).unwrap();
    publisher
        .publish(
            escalator::topology::INBOUND_EXCHANGE,
            "escalation.requested",
            &body,
            props,
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(WAIT, outbound.next())
        .await
        .expect("an outbound event")
        .unwrap()
        .unwrap();
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
    let header = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned());
    let _ = conn.close(200, ShortString::from("bye")).await;
    match header {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The `traceparent` the simulator saw on the ticket request.
fn ticket_request_traceparent(sim: &escalator::sim::SimHandle) -> Option<String> {
    sim.requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.starts_with("/api/v2/tickets"))
        .expect("the ticket request")
        .headers
        .into_iter()
        .find(|(n, _)| n == "traceparent")
        .map(|(_, v)| v)
}

/// A producer's W3C `traceparent` reaches the provider request and the
/// outbound event the message caused (issue 9, traces), unchanged when
/// spans are not exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_traceparent_reaches_the_provider_and_the_outbound_event() {
    let env = TestEnv::new("traceparent").await;
    let sb = env.sandbox().await;
    let org = escalator::sandbox::ZENDESK_ORG;
    let outbound = escalate_with_traceparent(&env, org, "conv-trace").await;
    assert_eq!(
        outbound.as_deref(),
        Some(TRACE),
        "outbound event traceparent"
    );
    assert_eq!(
        ticket_request_traceparent(&sb.sim).as_deref(),
        Some(TRACE),
        "provider request traceparent"
    );
    sb.stop().await;
    env.cleanup().await;
}

/// With spans exported (OTLP/HTTP to a collector played by the test), the
/// worker's span handling the message is a child of the producer's span:
/// the provider request and the outbound event carry the same trace id and
/// the worker's span id, and the exported span names the producer's span
/// as its parent. Spans carry org, conversation, provider and mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_on_the_worker_span_continues_the_producers_trace() {
    use axum::body::Bytes;
    let (tx, mut exported) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let env = TestEnv::new("trace-export").await;
    env.declare_topology().await;
    let sim = env.sim().await;
    let dir = tempfile::tempdir().unwrap();
    let config = escalator::sandbox::sandbox_config(&sim.base_url());
    let worker = env.spawn_worker_env(
        &config,
        dir.path(),
        "w",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector_url.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let org = escalator::sandbox::ZENDESK_ORG;
    let outbound = escalate_with_traceparent(&env, org, "conv-exported")
        .await
        .expect("the outbound event carries a traceparent");
    let parts: Vec<&str> = outbound.split('-').collect();
    assert_eq!(parts.len(), 4, "{outbound}");
    assert_eq!(parts[1], TRACE_ID, "same trace");
    assert_ne!(parts[2], PARENT_SPAN, "the worker's own span: {outbound}");
    let at_provider = ticket_request_traceparent(&sim).expect("provider request traceparent");
    assert!(
        at_provider.starts_with(&format!("00-{TRACE_ID}-")) && !at_provider.contains(PARENT_SPAN),
        "{at_provider}"
    );

    // The exported spans (protobuf): one of them is the worker's, with the
    // producer's span as its parent and the conversation's fields.
    let hex = |h: &str| -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    };
    let has = |body: &[u8], needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    let deadline = tokio::time::Instant::now() + WAIT;
    let span = loop {
        let body = tokio::time::timeout_at(deadline, exported.recv())
            .await
            .expect("spans exported to the collector")
            .unwrap();
        if has(&body, &hex(parts[2])) {
            break body;
        }
    };
    assert!(has(&span, &hex(TRACE_ID)), "trace id in the export");
    assert!(
        has(&span, &hex(PARENT_SPAN)),
        "the producer's span as parent"
    );
    for field in [
        "org_id",
        "conversation_id",
        "provider",
        "mode",
        "message_type",
        org,
        "conv-exported",
        "ticket",
        "escalation.requested",
    ] {
        assert!(has(&span, field.as_bytes()), "{field} on the exported span");
    }
    // Never the customer's contact data (the escalation carries an email).
    assert!(!has(&span, b"grace@example.com"), "an email in a span");
    let status = worker.terminate().await;
    assert!(status.success(), "{status:?}");
    env.cleanup().await;
}
