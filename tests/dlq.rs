//! `escalator dlq`: list, show, replay and purge the dead-letter queue on a
//! real RabbitMQ, with a worker running (the sandbox).
mod common;

use common::*;
use escalator::contract::OutboundPayload;
use escalator::dlq::replay::{self, ReplayOptions};
use escalator::dlq::select::{Selection, parse_duration};
use escalator::dlq::{DeadLetter, table};
use escalator::sandbox::{Sandbox, ZENDESK_ORG};
use escalator::sim::FaultRule;
use escalator::topology::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE};
use lapin::BasicProperties;
use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use std::time::Duration;

const ORG: &str = ZENDESK_ORG;

/// Wait until the dead-letter queue holds `n` ready messages.
async fn until_dead(env: &TestEnv, n: u32) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let depth = env.queue_depth(DEAD_LETTER_QUEUE).await;
        if depth == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead-letter queue holds {depth}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An escalation Zendesk refuses for good (422 once): a `permanent` dead letter.
async fn permanent(env: &TestEnv, sb: &Sandbox, conv: &str, expect: u32) {
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        status: Some(422),
        ..Default::default()
    });
    sb.publish(
        "escalation.requested",
        &format!("m-{conv}"),
        &escalation(ORG, conv),
    )
    .await
    .unwrap();
    until_dead(env, expect).await;
}

/// A message the broker itself dead-letters (it expires in a queue whose
/// dead-letter exchange is ours): class `broker`, `x-death` reason `expired`.
async fn broker_dead_letter(env: &TestEnv, conv: &str, expect: u32) {
    let conn = escalator::amqp::connect(&env.settings.amqp_url, "test-expire")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "test.src".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()),
    );
    ch.queue_declare(
        "test.expire".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        "test.expire".into(),
        "test.src".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut h = FieldTable::default();
    for (k, v) in [
        ("x-escalator-org-id", ORG),
        ("x-escalator-conversation-id", conv),
    ] {
        h.insert(ShortString::from(k), AMQPValue::LongString(v.into()));
    }
    let body = serde_json::to_vec(&escalation(ORG, conv)).unwrap();
    ch.basic_publish(
        "test.src".into(),
        "escalation.requested".into(),
        BasicPublishOptions::default(),
        &body,
        escalator::amqp::json_properties()
            .with_message_id(ShortString::from(format!("m-{conv}")))
            .with_headers(h),
    )
    .await
    .unwrap();
    until_dead(env, expect).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Mixed dead letters, in this queue order: three permanent provider
/// failures (conv-a, conv-b, conv-c), one invalid message (m-bad), one broker
/// dead letter (conv-broker).
async fn mixed(env: &TestEnv, sb: &Sandbox) -> Vec<String> {
    permanent(env, sb, "conv-a", 1).await;
    permanent(env, sb, "conv-b", 2).await;
    permanent(env, sb, "conv-c", 3).await;
    sb.publish_raw("escalation.requested", Some("m-bad"), b"{not json")
        .await
        .unwrap();
    until_dead(env, 4).await;
    broker_dead_letter(env, "conv-broker", 5).await;
    ["m-conv-a", "m-conv-b", "m-conv-c", "m-bad", "m-conv-broker"]
        .map(String::from)
        .to_vec()
}

async fn list(env: &TestEnv, sel: &Selection) -> Vec<DeadLetter> {
    let conn = escalator::dlq::connect(&env.settings.amqp_url)
        .await
        .unwrap();
    let out = replay::list(&conn, sel).await.unwrap();
    let _ = conn.close(200, "bye".into()).await;
    out
}

fn ids(letters: &[DeadLetter]) -> Vec<String> {
    letters.iter().map(|d| d.id.clone()).collect()
}

/// Run `escalator dlq ARGS` as an operator would; a command that hangs fails the test.
async fn cli(env: &TestEnv, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
        .arg("dlq")
        .args(args)
        .env("ESCALATOR_AMQP_URL", &env.settings.amqp_url)
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| panic!("escalator dlq {args:?} did not finish within 30 s"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly_and_listing_changes_nothing() {
    let env = TestEnv::new("dlq-list").await;
    let sb = env.sandbox().await;
    let order = mixed(&env, &sb).await;

    // Listing many times keeps every dead letter, in its order (returns
    // count as deliveries on a quorum queue: none may be dropped).
    for _ in 0..12 {
        assert_eq!(ids(&list(&env, &Selection::default()).await), order);
    }
    assert_eq!(env.queue_depth(DEAD_LETTER_QUEUE).await, 5);

    let all = list(&env, &Selection::default()).await;
    // Worn copies were refreshed before a delivery limit could drop them.
    assert!(
        all.iter()
            .all(|d| d.delivery_count < escalator::dlq::read::REFRESH_AT),
        "{:?}",
        all.iter().map(|d| d.delivery_count).collect::<Vec<_>>()
    );
    let classes: Vec<_> = all.iter().map(|d| d.error_class.as_str()).collect();
    assert_eq!(
        classes,
        ["permanent", "permanent", "permanent", "invalid", "broker"]
    );
    assert_eq!(all[4].reason, "expired", "the broker's x-death reason");
    let keys: Vec<_> = all.iter().map(|d| d.routing_key.as_str()).collect();
    assert!(
        keys.iter().all(|k| *k == "escalation.requested"),
        "{keys:?}"
    );

    let by = |f: fn(&mut Selection)| {
        let mut s = Selection::default();
        f(&mut s);
        s
    };
    let cases: Vec<(Selection, Vec<&str>)> = vec![
        (
            by(|s| s.class = Some("permanent".into())),
            vec!["m-conv-a", "m-conv-b", "m-conv-c"],
        ),
        (
            by(|s| s.conversation = Some("conv-b".into())),
            vec!["m-conv-b"],
        ),
        (by(|s| s.class = Some("invalid".into())), vec!["m-bad"]),
        (
            by(|s| s.class = Some("broker".into())),
            vec!["m-conv-broker"],
        ),
        (
            by(|s| {
                s.org = Some(ORG.into());
                s.newer_than = Some(parse_duration("1h").unwrap());
            }),
            vec!["m-conv-a", "m-conv-b", "m-conv-c", "m-conv-broker"],
        ),
        (
            by(|s| s.older_than = Some(parse_duration("1h").unwrap())),
            vec![],
        ),
        (
            by(|s| s.routing_key = Some("customer.message".into())),
            vec![],
        ),
        (by(|s| s.ids = vec!["m-conv-c".into()]), vec!["m-conv-c"]),
    ];
    for (sel, want) in cases {
        assert_eq!(ids(&list(&env, &sel).await), want, "{sel:?}");
    }

    // The CLI's table and JSON say the same.
    let out = cli(&env, &["list", "--class", "permanent", "--json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[1]["conversation"], "conv-b");
    let out = cli(&env, &["list"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("ID"), "{text}");
    assert!(
        text.contains("expired") && text.contains("conv-broker"),
        "{text}"
    );
    assert_eq!(ids(&list(&env, &Selection::default()).await), order);

    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_redacts_secrets_and_unknown_ids_are_named() {
    let env = TestEnv::new("dlq-show").await;
    let sb = env.sandbox().await;
    permanent(&env, &sb, "conv-s", 1).await;
    // A dead letter carrying secrets in a header and in the body.
    let conn = escalator::amqp::connect(&env.settings.amqp_url, "test")
        .await
        .unwrap();
    let publisher = escalator::amqp::Publisher::open(&conn).await.unwrap();
    let mut h = FieldTable::default();
    h.insert(
        "authorization".into(),
        AMQPValue::LongString(LongString::from("Bearer hdr-s3cret")),
    );
    h.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from("00-abc-def-01")),
    );
    h.insert(
        "x-escalator-error-class".into(),
        AMQPValue::LongString("invalid".into()),
    );
    let body =
        br#"{"org_id":"x","api_key":"body-s3cret","nested":{"password":"pw-s3cret"},"text":"hi"}"#;
    publisher
        .publish(
            DEAD_LETTER_EXCHANGE,
            "webhook.zendesk",
            body,
            BasicProperties::default()
                .with_message_id("m-secret".into())
                .with_headers(h),
        )
        .await
        .unwrap();
    until_dead(&env, 2).await;

    let out = cli(&env, &["show", "m-secret"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("s3cret"), "a secret was shown: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["headers"]["authorization"], "[redacted]");
    assert_eq!(v["headers"]["traceparent"], "00-abc-def-01");
    assert_eq!(v["body"]["nested"]["password"], "[redacted]");
    assert_eq!(v["body"]["text"], "hi");
    assert_eq!(v["properties"]["message_id"], "m-secret");

    // The provider failure shows its reason and history.
    let s = list(&env, &Selection::default()).await;
    let shown = table::show(&s[0], chrono::Utc::now());
    assert_eq!(shown["headers"]["x-escalator-error-class"], "permanent");
    assert_eq!(shown["summary"]["conversation"], "conv-s");

    let out = cli(&env, &["show", "nope"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no dead letter has the id nope"));
    assert_eq!(env.queue_depth(DEAD_LETTER_QUEUE).await, 2);
    let _ = conn.close(200, "bye".into()).await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_processes_once_and_an_applied_replay_creates_nothing() {
    let env = TestEnv::new("dlq-replay").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    let order = mixed(&env, &sb).await;
    for conv in ["conv-a", "conv-b", "conv-c"] {
        let e = next_event(&mut widget, conv).await;
        assert!(
            matches!(e.payload, OutboundPayload::EscalationFailed(_)),
            "{e:?}"
        );
    }
    assert!(sb.sim.zendesk_tickets().is_empty());

    // Dry run changes nothing.
    let out = cli(&env, &["replay", "--conversation", "conv-b", "--dry-run"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("would replay m-conv-b"));
    assert_eq!(ids(&list(&env, &Selection::default()).await), order);

    // Replay without a selection refuses.
    let out = cli(&env, &["replay"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));

    let out = cli(&env, &["replay", "--conversation", "conv-b"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 1 of 5"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let e = next_event(&mut widget, "conv-b").await;
    let created = common::created(&e);
    let tickets = sb.sim.zendesk_tickets();
    assert_eq!(tickets.len(), 1);
    assert_eq!(created.external_id, tickets[0].id.to_string());
    // The others stay, in their order.
    let rest: Vec<_> = order.iter().filter(|i| *i != "m-conv-b").cloned().collect();
    assert_eq!(ids(&list(&env, &Selection::default()).await), rest);

    // A copy of the applied message dead-lettered again (say, a duplicate
    // after a crash) replays to nothing.
    let conn = escalator::amqp::connect(&env.settings.amqp_url, "test")
        .await
        .unwrap();
    let publisher = escalator::amqp::Publisher::open(&conn).await.unwrap();
    let mut h = FieldTable::default();
    h.insert(
        "x-escalator-error-class".into(),
        AMQPValue::LongString("transient".into()),
    );
    publisher
        .publish(
            DEAD_LETTER_EXCHANGE,
            "escalation.requested",
            &serde_json::to_vec(&escalation(ORG, "conv-b")).unwrap(),
            escalator::amqp::json_properties()
                .with_message_id("m-conv-b".into())
                .with_headers(h),
        )
        .await
        .unwrap();
    until_dead(&env, 5).await;
    let out = cli(&env, &["replay", "m-conv-b"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A later message of the conversation is handled after the replayed one.
    sb.publish(
        "customer.message",
        "m-after",
        &customer_message(ORG, "conv-b", "cm-after", "still there?"),
    )
    .await
    .unwrap();
    until_sim(&sb.sim, || {
        sb.sim
            .zendesk_tickets()
            .first()
            .is_some_and(|t| t.comments.len() >= 2)
    })
    .await;
    assert_eq!(sb.sim.zendesk_tickets().len(), 1, "no second ticket");
    assert_eq!(ids(&list(&env, &Selection::default()).await), rest);
    let _ = conn.close(200, "bye".into()).await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_needs_yes_and_removes_only_the_matched() {
    let env = TestEnv::new("dlq-purge").await;
    let sb = env.sandbox().await;
    let order = mixed(&env, &sb).await;
    let out = cli(&env, &["purge", "--class", "permanent"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(ids(&list(&env, &Selection::default()).await), order);

    let out = cli(
        &env,
        &[
            "purge",
            "--class",
            "permanent",
            "--conversation",
            "conv-b",
            "--yes",
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("purged m-conv-b") && text.contains("purged 1 of 5"),
        "{text}"
    );
    let rest: Vec<_> = order.iter().filter(|i| *i != "m-conv-b").cloned().collect();
    assert_eq!(ids(&list(&env, &Selection::default()).await), rest);

    let out = cli(&env, &["purge", "m-nope", "--yes"]).await;
    assert!(!out.status.success());
    assert_eq!(ids(&list(&env, &Selection::default()).await), rest);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_confirm_and_ack_loses_nothing() {
    let env = TestEnv::new("dlq-crash").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    permanent(&env, &sb, "conv-x", 1).await;
    permanent(&env, &sb, "conv-y", 2).await;
    for conv in ["conv-x", "conv-y"] {
        next_event(&mut widget, conv).await;
    }
    // The replay "crashes" right after the first republish was confirmed.
    let conn = escalator::dlq::connect(&env.settings.amqp_url)
        .await
        .unwrap();
    let opts = ReplayOptions {
        crash_after_confirms: Some(1),
        ..Default::default()
    };
    let sel = Selection {
        org: Some(ORG.into()),
        ..Default::default()
    };
    assert!(replay::replay(&conn, &sel, &opts).await.is_err());
    // The process is gone, and its connection with it: closing it acks
    // nothing, so the broker requeues what the replay held.
    let _ = conn.close(200, "bye".into()).await;
    // What was republished is processed (both: the republishes are
    // pipelined, only the first confirm was awaited)...
    until_sim(&sb.sim, || !sb.sim.zendesk_tickets().is_empty()).await;
    // ...and both dead letters are still there, in order.
    until_dead(&env, 2).await;
    assert_eq!(
        ids(&list(&env, &Selection::default()).await),
        ["m-conv-x", "m-conv-y"]
    );
    // Replaying again completes the job without a second ticket.
    let conn = escalator::dlq::connect(&env.settings.amqp_url)
        .await
        .unwrap();
    let s = replay::replay(&conn, &sel, &ReplayOptions::default())
        .await
        .unwrap();
    assert_eq!((s.matched, s.done), (2, 2));
    let _ = conn.close(200, "bye".into()).await;
    until_sim(&sb.sim, || sb.sim.zendesk_tickets().len() >= 2).await;
    // Later messages of both conversations are handled after the replays.
    for conv in ["conv-x", "conv-y"] {
        sb.publish(
            "customer.message",
            &format!("m-after-{conv}"),
            &customer_message(ORG, conv, &format!("cm-{conv}"), "hello again"),
        )
        .await
        .unwrap();
    }
    until_sim(&sb.sim, || {
        let t = sb.sim.zendesk_tickets();
        t.len() >= 2 && t.iter().all(|t| t.comments.len() >= 2)
    })
    .await;
    assert_eq!(
        sb.sim.zendesk_tickets().len(),
        2,
        "one ticket per conversation"
    );
    assert_eq!(env.queue_depth(DEAD_LETTER_QUEUE).await, 0);
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_says_to_declare_the_topology() {
    let env = TestEnv::new("dlq-missing").await;
    let out = cli(&env, &["list"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("escalator topology"),
        "{stderr}"
    );
    env.cleanup().await;
}
