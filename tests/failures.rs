//! Every failure ends somewhere visible: failures of our own infrastructure
//! that cannot clear are dead-lettered with a reason instead of being retried
//! forever holding a slot, a broken publisher rebuilds the session, a parked
//! message's backoff survives a failed retry publish, and a parked head the
//! broker dropped does not stall its followers.
mod common;

use chrono::Utc;
use common::*;
use escalator::amqp;
use escalator::sandbox::ZENDESK_ORG;
use escalator::topology::{OUTBOUND_EXCHANGE, UNROUTED_EXCHANGE, UNROUTED_QUEUE};
use lapin::options::ExchangeDeleteOptions;
use lapin::types::{FieldTable, ShortString};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORG: &str = ZENDESK_ORG;

fn conv_key(env: &TestEnv, conv: &str) -> String {
    format!("{}:conv:{{{ORG}:{conv}}}", env.settings.key_prefix)
}

/// Write `text` as the stored record of `conv`, as a bad disk or a newer
/// escalator would.
async fn store_record(env: &TestEnv, conv: &str, text: &str) {
    let store = env.store().await;
    let mut c = store.connection();
    let _: () = redis::cmd("HSET")
        .arg(conv_key(env, conv))
        .arg("record")
        .arg(text)
        .query_async(&mut c)
        .await
        .unwrap();
}

/// A channel on the test vhost, for changing the topology under the worker.
async fn channel(env: &TestEnv) -> (lapin::Connection, lapin::Channel) {
    let conn = amqp::connect(&env.settings.amqp_url, "test-failures")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    (conn, ch)
}

fn assert_worker_dead_letter(letter: &DeadLetter, id: &str, reason_has: &str) {
    let h = &letter.headers;
    assert_eq!(letter.message_id.as_deref(), Some(id));
    assert_eq!(
        h.get("x-escalator-error-class").map(String::as_str),
        Some("permanent"),
        "{h:?}"
    );
    assert_eq!(
        h.get("x-escalator-stage").map(String::as_str),
        Some("worker"),
        "{h:?}"
    );
    let reason = h.get("x-escalator-reason").cloned().unwrap_or_default();
    assert!(reason.contains(reason_has), "reason: {reason}");
}

#[tokio::test]
async fn a_corrupt_record_is_dead_lettered_not_retried_forever() {
    let env = TestEnv::new("fail-corrupt").await;
    let sb = env.sandbox().await;
    let mut dead = env.dead_letters().await;
    store_record(&env, "conv-corrupt", "{\"org_id\": \"zd-secret-canary").await;
    sb.publish(
        "customer.message",
        "corrupt-1",
        &customer_message(ORG, "conv-corrupt", "corrupt-1", "hello"),
    )
    .await
    .unwrap();
    let letter = dead.next().await;
    assert_worker_dead_letter(&letter, "corrupt-1", "stored state is corrupt");
    let reason = &letter.headers["x-escalator-reason"];
    assert!(
        !reason.contains("zd-secret-canary"),
        "stored text is not quoted: {reason}"
    );
    // The slot is free: another conversation goes through.
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish(
        "escalation.requested",
        "after-corrupt",
        &escalation(ORG, "conv-fine"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-fine").await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_record_of_a_newer_version_is_dead_lettered() {
    let env = TestEnv::new("fail-newer").await;
    let sb = env.sandbox().await;
    let mut dead = env.dead_letters().await;
    let newer = serde_json::json!({
        "version": 7, "org_id": ORG, "conversation_id": "conv-newer",
        "something_new": {"shape": "unknown"}
    });
    store_record(&env, "conv-newer", &newer.to_string()).await;
    sb.publish(
        "customer.message",
        "newer-1",
        &customer_message(ORG, "conv-newer", "newer-1", "hello"),
    )
    .await
    .unwrap();
    let letter = dead.next().await;
    assert_worker_dead_letter(&letter, "newer-1", "has version 7");
    assert!(letter.headers["x-escalator-reason"].contains("upgrade"));
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_unroutable_outbound_event_is_dead_lettered() {
    let env = TestEnv::new("fail-unroutable").await;
    let sb = env.sandbox().await;
    let mut dead = env.dead_letters().await;
    // The worker's session is up (it declares the topology when it starts,
    // which would bind the queue again): one escalation goes through first.
    sb.publish(
        "escalation.requested",
        "unroutable-0",
        &escalation(ORG, "conv-unroutable-0"),
    )
    .await
    .unwrap();
    until_done(&env, ORG, "conv-unroutable-0", "unroutable-0").await;
    // No widget listens and the outbound exchange's alternate exchange has
    // no queue any more: the event cannot be routed.
    let (conn, ch) = channel(&env).await;
    ch.queue_unbind(
        ShortString::from(UNROUTED_QUEUE),
        ShortString::from(UNROUTED_EXCHANGE),
        ShortString::from(""),
        FieldTable::default(),
    )
    .await
    .unwrap();
    sb.publish(
        "escalation.requested",
        "unroutable-1",
        &escalation(ORG, "conv-unroutable"),
    )
    .await
    .unwrap();
    let letter = dead.next().await;
    assert_worker_dead_letter(&letter, "unroutable-1", "no queue is bound");
    assert_eq!(sb.sim.zendesk_tickets().len(), 2);
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_closed_publisher_channel_rebuilds_the_session() {
    let env = TestEnv::new("fail-channel").await;
    let sb = env.sandbox().await;
    // Publishing to a missing exchange makes the broker close the
    // publisher's channel (404); the session must be rebuilt (which declares
    // the exchange again), not retried on the dead channel forever.
    let (conn, ch) = channel(&env).await;
    ch.exchange_delete(
        ShortString::from(OUTBOUND_EXCHANGE),
        ExchangeDeleteOptions::default(),
    )
    .await
    .unwrap();
    let _ = conn.close(200, ShortString::from("bye")).await;
    sb.publish(
        "escalation.requested",
        "channel-1",
        &escalation(ORG, "conv-channel-1"),
    )
    .await
    .unwrap();
    until_done(&env, ORG, "conv-channel-1", "channel-1").await;
    assert_eq!(sb.sim.zendesk_tickets().len(), 1, "one ticket");
    // The new session publishes.
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish(
        "escalation.requested",
        "channel-2",
        &escalation(ORG, "conv-channel-2"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-channel-2").await;
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_retry_publish_never_skips_the_backoff() {
    let env = TestEnv::new("fail-backoff").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // The state a failed retry publish leaves: the message is parked as its
    // conversation's head, due in 3 s, but the broker still holds its
    // original copy (no not-before header), which is delivered again.
    let store = env.store().await;
    let due = Utc::now() + chrono::Duration::seconds(3);
    assert!(
        store
            .park(ORG, "conv-backoff", "backoff-1", Some(due))
            .await
            .unwrap()
    );
    sb.publish(
        "escalation.requested",
        "backoff-1",
        &escalation(ORG, "conv-backoff"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-backoff").await;
    let first_call = sb
        .sim
        .requests()
        .iter()
        .map(|r| r.at)
        .min()
        .expect("a provider call");
    assert!(
        first_call >= due,
        "the provider was called at {first_call}, before the backoff ended at {due}"
    );
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_parked_head_the_broker_dropped_does_not_stall_its_followers() {
    let env = TestEnv::new("fail-lost-head").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    // A head that was due back ten minutes ago and never came (the broker
    // dead-lettered it at its delivery limit): followers must not wait for
    // the parked list to expire (two hours).
    let store = env.store().await;
    let long_ago = Utc::now() - chrono::Duration::minutes(10);
    store
        .park(ORG, "conv-lost-head", "gone", Some(long_ago))
        .await
        .unwrap();
    sb.publish(
        "escalation.requested",
        "follower-1",
        &escalation(ORG, "conv-lost-head"),
    )
    .await
    .unwrap();
    let e = next_event(&mut widget, "conv-lost-head").await;
    assert_eq!(e.seq, 1);
    sb.stop().await;
    env.cleanup().await;
}

/// A TCP proxy to RabbitMQ whose broker-to-client direction can be frozen:
/// the client keeps publishing, but no confirm ever reaches it (as with a
/// quorum queue that lost its quorum). Returns the port, the switch and the
/// proxy task (abort it to cut the connection).
async fn freezable_broker() -> (u16, Arc<AtomicBool>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let switch = frozen.clone();
    let task = tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let Ok(broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
            return;
        };
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut broker_rx, mut broker_tx) = broker.into_split();
        let upstream = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_rx, &mut broker_tx).await;
        });
        let _upstream = AbortOnDrop(upstream);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if frozen.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            match broker_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // Frozen while reading: what the broker said is lost.
                Ok(_) if frozen.load(Ordering::Acquire) => {}
                Ok(n) => {
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    (port, switch, task)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn a_confirm_that_never_comes_ends_the_wait_and_rebuilds_the_session() {
    let env = TestEnv::new("fail-confirm").await;
    env.declare_topology().await;
    let (port, frozen, proxy) = freezable_broker().await;
    let url = env
        .settings
        .amqp_url
        .replace("127.0.0.1:5672", &format!("127.0.0.1:{port}"));
    let conn = amqp::connect(&url, "test-confirm").await.unwrap();
    let publisher = amqp::Publisher::open(&conn)
        .await
        .unwrap()
        .with_confirm_timeout(Duration::from_millis(500));
    frozen.store(true, Ordering::Release);
    let pending = publisher
        .start(
            escalator::topology::DEAD_LETTER_EXCHANGE,
            "customer.message",
            b"{}",
            amqp::json_properties(),
        )
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = pending.wait().await.unwrap_err();
    assert!(
        matches!(err, escalator::error::InfraError::ConfirmTimeout { .. }),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the wait ended at the timeout"
    );
    assert_eq!(
        err.recovery(),
        escalator::error::Recovery::RebuildSession,
        "a stuck confirm tears the session down"
    );
    proxy.abort();
    drop(conn);
    env.cleanup().await;
}
