//! The intake router and the hops it owns: order across a failed forward,
//! what the widget hears about unusable input, bounded input, and what
//! internal hops and dead letters carry (issue 6, items 6-8 and 13).
mod common;

use common::*;
use escalator::amqp::{self, json_properties};
use escalator::contract::{FailureCode, OutboundEvent, OutboundPayload};
use escalator::error::ErrorClass;
use escalator::pipeline::meta::{self, Meta};
use escalator::sandbox::ZENDESK_ORG;
use escalator::sim::FaultRule;
use escalator::topology::{
    DEAD_LETTER_QUEUE, INBOUND_EXCHANGE, INTAKE_QUEUE, WORK_EXCHANGE, shard_key, shard_of,
    shard_queue,
};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection};
use serde_json::{Value, json};

const ORG: &str = ZENDESK_ORG;

// ------------------------------------------------------------ helpers

async fn connect(env: &TestEnv) -> Connection {
    amqp::connect(&env.settings.amqp_url, "test-intake")
        .await
        .unwrap()
}

/// Publish `body` to `exchange` with `props` (mandatory, confirmed).
async fn publish_with(
    conn: &Connection,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let publisher = amqp::Publisher::open(conn).await.unwrap();
    publisher
        .publish(exchange, routing_key, body, props)
        .await
        .unwrap();
}

/// A dead letter with its AMQP properties (the shared harness keeps only headers).
struct Letter {
    routing_key: String,
    body: Vec<u8>,
    props: BasicProperties,
}

impl Letter {
    fn header(&self, key: &str) -> Option<String> {
        self.props
            .headers()
            .as_ref()
            .and_then(|h| meta::get_str(h, key))
    }

    /// The broker's `x-death` entries, most recent first: (reason, queue).
    fn x_death(&self) -> Vec<(String, String)> {
        let Some(AMQPValue::FieldArray(entries)) = self
            .props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-death").cloned())
        else {
            return Vec::new();
        };
        entries
            .as_slice()
            .iter()
            .filter_map(|e| match e {
                AMQPValue::FieldTable(t) => Some((
                    meta::get_str(t, "reason").unwrap_or_default(),
                    meta::get_str(t, "queue").unwrap_or_default(),
                )),
                _ => None,
            })
            .collect()
    }
}

/// Consume the dead-letter queue, keeping properties.
async fn dead_letter_consumer(conn: &Connection) -> lapin::Consumer {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_consume(
        ShortString::from(DEAD_LETTER_QUEUE),
        ShortString::from(""),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap()
}

async fn next_letter(consumer: &mut lapin::Consumer) -> Letter {
    let d = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("no dead letter within 30 s")
        .unwrap()
        .unwrap();
    d.acker.ack(BasicAckOptions::default()).await.unwrap();
    Letter {
        routing_key: d.routing_key.as_str().to_string(),
        body: d.data,
        props: d.properties,
    }
}

fn failed(e: &OutboundEvent) -> &escalator::contract::EscalationFailed {
    match &e.payload {
        OutboundPayload::EscalationFailed(f) => f,
        other => panic!("expected escalation.failed, got {other:?}"),
    }
}

/// Wait until the simulator's only ticket of `conv` has `n` comments.
async fn comments_of(sb: &escalator::sandbox::Sandbox, conv: &str, n: usize) -> Vec<String> {
    let find = || {
        sb.sim
            .zendesk_tickets()
            .into_iter()
            .find(|t| t.external_id.as_deref() == Some(conv))
            .map(|t| t.comments)
            .unwrap_or_default()
    };
    until_sim(&sb.sim, || find().len() >= n).await;
    find()
        .into_iter()
        .map(|c| c.body.or(c.html_body).unwrap_or_default())
        .collect()
}

// ------------------------------------------------------------ item 7

/// A forward that comes back unroutable (its shard queue lost its binding)
/// must not let later messages of the conversation be acked ahead of it:
/// the router requeues it and everything after it, in order, and restarts
/// its session (which declares the binding again). Before the fix the
/// router requeued the one message and went on, looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_forward_requeues_its_followers_and_keeps_the_order() {
    let env = TestEnv::new("fwd-order").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // The session is up (its topology declared) once a first escalation is answered.
    sb.publish("escalation.requested", "m-warm", &escalation(ORG, "warm"))
        .await
        .unwrap();
    next_event(&mut widget, "warm").await;

    let conv = "conv-fwd";
    let shard = shard_of(ORG, conv, env.settings.shards);
    let conn = connect(&env).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_unbind(
        ShortString::from(shard_queue(shard)),
        ShortString::from(WORK_EXCHANGE),
        ShortString::from(shard_key(shard)),
        FieldTable::default(),
    )
    .await
    .unwrap();

    sb.publish("escalation.requested", "m-esc", &escalation(ORG, conv))
        .await
        .unwrap();
    let texts: Vec<String> = (1..=5).map(|i| format!("message number {i}")).collect();
    for (i, text) in texts.iter().enumerate() {
        sb.publish(
            "customer.message",
            &format!("m-{i}"),
            &customer_message(ORG, conv, &format!("cm-{i}"), text),
        )
        .await
        .unwrap();
    }

    let created_event = next_event(&mut widget, conv).await;
    assert!(
        matches!(created_event.payload, OutboundPayload::EscalationCreated(_)),
        "the escalation ran first: {created_event:?}"
    );
    let comments = comments_of(&sb, conv, 1 + texts.len()).await;
    assert_eq!(
        &comments[1..],
        texts.as_slice(),
        "every customer message, once, in publish order"
    );
    env.until_drained(INTAKE_QUEUE).await;
    assert_eq!(env.queue_depth(DEAD_LETTER_QUEUE).await, 0, "nothing lost");
    assert!(
        ch.queue_bind(
            ShortString::from(shard_queue(shard)),
            ShortString::from(WORK_EXCHANGE),
            ShortString::from(shard_key(shard)),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .is_ok()
    );
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

// ------------------------------------------------------------ item 8

/// An `escalation.requested` that fails its schema but names a known org and
/// conversation: the widget hears `escalation.failed` (code, plain sentence)
/// in the conversation's order; the technical reason is in the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_invalid_escalation_of_a_known_conversation_tells_the_widget() {
    let env = TestEnv::new("rej-schema").await;
    let sb = env.sandbox().await;
    let conn = connect(&env).await;
    let mut dlq = dead_letter_consumer(&conn).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let conv = "conv-rej";
    let mut bad = escalation(ORG, conv);
    bad["mode"] = json!("carrier-pigeon");
    sb.publish("escalation.requested", "m-bad", &bad)
        .await
        .unwrap();
    sb.publish("escalation.requested", "m-good", &escalation(ORG, conv))
        .await
        .unwrap();

    let first = next_event(&mut widget, conv).await;
    let f = failed(&first);
    assert_eq!(f.code, FailureCode::InvalidRequest);
    assert_eq!(f.error_class, ErrorClass::Permanent);
    assert_eq!(f.failed_event, "escalation.requested");
    assert_eq!(
        f.reason,
        "The support ticket could not be created: the request was incomplete or malformed, so it could not be handled."
    );
    assert_eq!(first.seq, 1);
    let second = next_event(&mut widget, conv).await;
    created(&second);
    assert_eq!(second.seq, 2, "the conversation's order and seq are kept");

    let dl = next_letter(&mut dlq).await;
    assert_eq!(dl.routing_key, "escalation.requested");
    assert_eq!(serde_json::from_slice::<Value>(&dl.body).unwrap(), bad);
    assert_eq!(
        dl.header("x-escalator-error-class").as_deref(),
        Some("invalid")
    );
    assert_eq!(dl.header("x-escalator-stage").as_deref(), Some("worker"));
    let reason = dl.header("x-escalator-reason").unwrap();
    assert!(reason.contains("/mode"), "{reason}");
    assert!(!reason.contains("carrier-pigeon"), "no values: {reason}");
    assert_eq!(sb.sim.zendesk_tickets().len(), 1, "only the good one");
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

/// A body the worker cannot read (here: not JSON, as if corrupted after the
/// intake router) still tells the widget, and is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_unreadable_at_the_worker_tells_the_widget() {
    let env = TestEnv::new("rej-worker").await;
    let sb = env.sandbox().await;
    let conn = connect(&env).await;
    let mut dlq = dead_letter_consumer(&conn).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let conv = "conv-garbled";
    let meta = Meta {
        routing_key: "customer.message".into(),
        dedupe_id: "m-garbled".into(),
        org_id: ORG.into(),
        conversation_id: conv.into(),
        ..Meta::default()
    };
    let shard = shard_of(ORG, conv, env.settings.shards);
    publish_with(
        &conn,
        WORK_EXCHANGE,
        &shard_key(shard),
        b"{\"org_id\": \x00 garbled",
        meta.write(json_properties()),
    )
    .await;

    let e = next_event(&mut widget, conv).await;
    let f = failed(&e);
    assert_eq!(f.code, FailureCode::InvalidRequest);
    assert_eq!(f.failed_event, "customer.message");
    assert_eq!(
        f.reason,
        "The message could not be passed on to the support team: the request was incomplete or malformed, so it could not be handled."
    );
    let dl = next_letter(&mut dlq).await;
    assert_eq!(dl.routing_key, "customer.message");
    assert_eq!(dl.header("x-escalator-stage").as_deref(), Some("worker"));
    let reason = dl.header("x-escalator-reason").unwrap();
    assert!(reason.contains("cannot be read"), "{reason}");
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

// ------------------------------------------------------------ item 13

/// Duplicate JSON keys are rejected with a reason naming the key. When the
/// duplicate is an id, the message cannot be placed and stays at intake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_are_rejected_naming_the_key() {
    let env = TestEnv::new("dup-keys").await;
    let sb = env.sandbox().await;
    let conn = connect(&env).await;
    let mut dlq = dead_letter_consumer(&conn).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let text = serde_json::to_string(&escalation(ORG, "conv-dupkey")).unwrap();
    // `"mode": "live"` first, then the valid `"mode": "ticket"`: serde_json
    // would silently keep the last one.
    let twice = text.replacen('{', "{\"mode\": \"live\", ", 1);
    sb.publish_raw("escalation.requested", Some("m-dupkey"), twice.as_bytes())
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-dupkey").await;
    assert_eq!(failed(&e).code, FailureCode::InvalidRequest);
    let dl = next_letter(&mut dlq).await;
    let reason = dl.header("x-escalator-reason").unwrap();
    assert!(
        reason.contains("/mode: the key appears more than once"),
        "{reason}"
    );
    assert_eq!(dl.body, twice.as_bytes(), "the original body is kept");

    let ids_twice = text.replacen('{', "{\"conversation_id\": \"other-conv\", ", 1);
    sb.publish_raw(
        "escalation.requested",
        Some("m-dupid"),
        ids_twice.as_bytes(),
    )
    .await
    .unwrap();
    let dl = next_letter(&mut dlq).await;
    assert_eq!(dl.header("x-escalator-stage").as_deref(), Some("intake"));
    let reason = dl.header("x-escalator-reason").unwrap();
    assert!(
        reason.contains("/conversation_id: the key appears more than once"),
        "{reason}"
    );
    assert!(sb.sim.zendesk_tickets().is_empty(), "no ticket for either");
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

/// A 5 MB context is refused at intake (it used to become a 5 MB ticket
/// request); the widget hears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_context_is_refused_and_reported() {
    let env = TestEnv::new("big-context").await;
    let sb = env.sandbox().await;
    let conn = connect(&env).await;
    let mut dlq = dead_letter_consumer(&conn).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let mut body = escalation(ORG, "conv-big");
    body["context"] = json!({ "blob": vec!["x".repeat(4000); 1300] });
    sb.publish("escalation.requested", "m-big", &body)
        .await
        .unwrap();
    let e = next_event(&mut widget, "conv-big").await;
    assert_eq!(failed(&e).code, FailureCode::InvalidRequest);
    let dl = next_letter(&mut dlq).await;
    let reason = dl.header("x-escalator-reason").unwrap();
    assert!(reason.contains("/context: is 52"), "{reason}");
    assert!(
        sb.sim.requests().is_empty(),
        "the provider was never called"
    );
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

// ------------------------------------------------------------ item 6

/// A producer's `expiration` is not copied onto the intake -> shard hop: a
/// customer message published with a 1 s expiration waits 3 s in its busy
/// shard (prefetch 1, the escalation before it is slow) and is still
/// relayed. Before the fix the broker expired it in the work queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_expiration_does_not_follow_the_message_into_its_shard() {
    let env = TestEnv::new("expiry-hop").await;
    let mut settings = env.settings.clone();
    settings.prefetch = 1;
    let sb = env
        .sandbox_with(settings, escalator::sandbox::sandbox_config)
        .await;
    let conn = connect(&env).await;
    // The router runs (so the expiration cannot strike in the intake queue).
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish("escalation.requested", "m-warm", &escalation(ORG, "warm"))
        .await
        .unwrap();
    next_event(&mut widget, "warm").await;
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        latency_ms: Some(3_000),
        ..Default::default()
    });
    let conv = "conv-expiring";
    sb.publish("escalation.requested", "m-esc", &escalation(ORG, conv))
        .await
        .unwrap();
    let body = serde_json::to_vec(&customer_message(ORG, conv, "cm-1", "still here?")).unwrap();
    publish_with(
        &conn,
        INBOUND_EXCHANGE,
        "customer.message",
        &body,
        json_properties()
            .with_message_id(ShortString::from("m-expiring"))
            .with_expiration(ShortString::from("1000")),
    )
    .await;
    let comments = comments_of(&sb, conv, 2).await;
    assert_eq!(comments[1], "still here?");
    assert_eq!(env.queue_depth(DEAD_LETTER_QUEUE).await, 0);
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

/// Our dead letters do not inherit the producer's `expiration` either (they
/// would vanish from the dead-letter queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_does_not_inherit_the_producers_expiration() {
    let env = TestEnv::new("expiry-dlq").await;
    let sb = env.sandbox().await;
    let conn = connect(&env).await;
    let mut dlq = dead_letter_consumer(&conn).await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // A customer message for a conversation that was never escalated.
    let body = serde_json::to_vec(&customer_message(ORG, "conv-never", "cm-1", "hello?")).unwrap();
    publish_with(
        &conn,
        INBOUND_EXCHANGE,
        "customer.message",
        &body,
        json_properties()
            .with_message_id(ShortString::from("m-never"))
            .with_expiration(ShortString::from("60000")),
    )
    .await;
    let e = next_event(&mut widget, "conv-never").await;
    assert_eq!(failed(&e).code, FailureCode::NotEscalated);
    let dl = next_letter(&mut dlq).await;
    assert_eq!(
        dl.header("x-escalator-error-class").as_deref(),
        Some("permanent")
    );
    assert_eq!(
        dl.props.expiration(),
        &None,
        "no expiration on the dead letter"
    );
    assert_eq!(
        dl.props.message_id().as_ref().map(|s| s.as_str()),
        Some("m-never"),
        "other properties kept"
    );
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

/// Messages the broker dead-letters by itself (expired before anyone routed
/// them; returned past the delivery limit) reach the dead-letter queue with
/// their `x-death` history intact and none of our headers, so the
/// dead-letter tooling can tell them apart and show why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_dead_letters_keep_their_x_death_reason() {
    let env = TestEnv::new("x-death").await;
    env.declare_topology().await;
    let conn = connect(&env).await;
    let mut dlq = dead_letter_consumer(&conn).await;
    let body = serde_json::to_vec(&escalation(ORG, "conv-death")).unwrap();

    // Expired in the intake queue: no router ran.
    publish_with(
        &conn,
        INBOUND_EXCHANGE,
        "escalation.requested",
        &body,
        json_properties()
            .with_message_id(ShortString::from("m-expired"))
            .with_expiration(ShortString::from("100")),
    )
    .await;
    let dl = next_letter(&mut dlq).await;
    assert_eq!(dl.routing_key, "escalation.requested");
    assert_eq!(
        dl.x_death().first(),
        Some(&("expired".to_string(), INTAKE_QUEUE.to_string()))
    );
    assert_eq!(dl.header("x-escalator-error-class"), None);
    assert_eq!(dl.body, body);

    // Returned past the delivery limit (a consumer that keeps crashing).
    publish_with(
        &conn,
        INBOUND_EXCHANGE,
        "escalation.requested",
        &body,
        json_properties().with_message_id(ShortString::from("m-poison")),
    )
    .await;
    let ch = conn.create_channel().await.unwrap();
    let mut poisoned = ch
        .basic_consume(
            ShortString::from(INTAKE_QUEUE),
            ShortString::from("crashing-router"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dead = tokio::time::timeout(WAIT, async {
        loop {
            tokio::select! {
                d = poisoned.next() => {
                    let d = d.unwrap().unwrap();
                    d.acker
                        .nack(BasicNackOptions { requeue: true, ..Default::default() })
                        .await
                        .unwrap();
                }
                dl = next_letter(&mut dlq) => return dl,
            }
        }
    })
    .await
    .expect("the broker never dead-lettered the poison message");
    assert_eq!(
        dead.props.message_id().as_ref().map(|s| s.as_str()),
        Some("m-poison")
    );
    assert_eq!(
        dead.x_death().first(),
        Some(&("delivery_limit".to_string(), INTAKE_QUEUE.to_string()))
    );
    assert_eq!(dead.header("x-escalator-reason"), None);
    let _ = conn.close(200, ShortString::from("bye")).await;
    env.cleanup().await;
}

// ------------------------------------------------------------ item 13: a full dead-letter queue

/// Set (or clear, with `None`) an operator policy capping the dead-letter
/// queue's length in the test vhost (the lower of policy and argument wins).
fn cap_dead_letter_queue(env: &TestEnv, max_length: Option<u32>) {
    let args: Vec<String> = match max_length {
        Some(n) => [
            "set_operator_policy",
            "-p",
            &env.vhost,
            "--apply-to",
            "queues",
            "small-dlq",
            "^escalator\\.dead-letter$",
            &format!("{{\"max-length\": {n}}}"),
        ]
        .map(String::from)
        .to_vec(),
        None => ["clear_operator_policy", "-p", &env.vhost, "small-dlq"]
            .map(String::from)
            .to_vec(),
    };
    let status = std::process::Command::new("rabbitmqctl")
        .args(&args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl is needed for this test");
    assert!(status.success(), "rabbitmqctl {args:?}");
}

/// A full dead-letter queue refuses the publish (`reject-publish`): the
/// worker keeps the failing message (never drops it), logs an error that
/// says the dead-letter queue is full, and dead-letters it once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_queue_keeps_the_message_and_says_so() {
    let env = TestEnv::new("dlq-full").await;
    env.declare_topology().await;
    cap_dead_letter_queue(&env, Some(1));
    let sim = env.sim().await;
    let dir = tempfile::tempdir().unwrap();
    let worker = env.spawn_worker(&sim.base_url(), dir.path(), "w");
    let conn = connect(&env).await;
    // Customer messages for conversations never escalated: all are
    // dead-lettered (permanent). A quorum queue refuses once it is over its
    // limit: with a limit of 1 it takes two, then refuses the third.
    let ids: Vec<String> = (1..=3).map(|i| format!("m-{i}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let conv = format!("conv-{id}");
        let body = serde_json::to_vec(&customer_message(ORG, &conv, id, "hello?")).unwrap();
        publish_with(
            &conn,
            INBOUND_EXCHANGE,
            "customer.message",
            &body,
            json_properties().with_message_id(ShortString::from(id.as_str())),
        )
        .await;
        if n < 2 {
            let deadline = tokio::time::Instant::now() + WAIT;
            while env.queue_depth(DEAD_LETTER_QUEUE).await < n as u32 + 1 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} not dead-lettered"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while !worker.log_text().contains("the dead-letter queue is full") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error about the full dead-letter queue:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        worker
            .log_text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("the dead-letter queue is full")),
        "logged at ERROR level"
    );
    assert_eq!(
        env.queue_depth(DEAD_LETTER_QUEUE).await,
        2,
        "the third was refused"
    );

    // Room again: the kept messages arrive; none was dropped.
    let mut dlq = dead_letter_consumer(&conn).await;
    let mut got = Vec::new();
    for _ in 0..ids.len() {
        let dl = next_letter(&mut dlq).await;
        got.push(
            dl.props
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
        );
    }
    got.sort();
    assert_eq!(got, ids, "every message dead-lettered once there was room");
    cap_dead_letter_queue(&env, None);
    let _ = conn.close(200, ShortString::from("bye")).await;
    worker.terminate().await;
    sim.shutdown().await;
    env.cleanup().await;
}

/// A conversation escalated to the org's other provider (a per-event
/// `provider` override) hears its rejections named for that provider: the
/// event's `provider` and the sentence follow the conversation, not the org's
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_names_the_provider_the_conversation_went_to() {
    let env = TestEnv::new("rej-provider").await;
    let sb = env
        .sandbox_with(env.settings.clone(), |sim_url| {
            format!(
                "{}\n[orgs.{ORG}.salesforce]\nmy_domain = \"{sim_url}\"\nclient_id = \"sim-client-id\"\nclient_secret = \"sim-client-secret\"\n",
                escalator::sandbox::sandbox_config(sim_url)
            )
        })
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let conv = "conv-rej-override";
    let mut first = escalation(ORG, conv);
    first["provider"] = json!("salesforce");
    sb.publish("escalation.requested", "m-override", &first)
        .await
        .unwrap();
    let e = next_event(&mut widget, conv).await;
    assert_eq!(
        created(&e).external_kind,
        escalator::contract::ExternalKind::SalesforceCase
    );
    // Then a repeat request that fails its schema.
    let mut bad = escalation(ORG, conv);
    bad["mode"] = json!("carrier-pigeon");
    sb.publish("escalation.requested", "m-override-bad", &bad)
        .await
        .unwrap();
    let e = next_event(&mut widget, conv).await;
    let f = failed(&e);
    assert_eq!(f.code, FailureCode::InvalidRequest);
    assert_eq!(e.provider, escalator::contract::ProviderKind::Salesforce);
    assert!(
        f.reason
            .starts_with("The support case could not be created"),
        "{}",
        f.reason
    );
    sb.stop().await;
    env.cleanup().await;
}
