//! One conversation runs in one place at a time, fleet-wide (the
//! per-conversation lease), and a repeat request gets the same answer.
mod common;

use common::*;
use escalator::sandbox::{Client, ZENDESK_ORG};
use escalator::sim::FaultRule;
use std::time::Duration;

const ORG: &str = ZENDESK_ORG;

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The instance id a worker process logged when it started.
fn instance_of(w: &WorkerProcess) -> String {
    let log = plain(&w.log_text());
    let line = log
        .lines()
        .find(|l| l.contains("worker starting"))
        .unwrap_or_else(|| panic!("no `worker starting` line:\n{log}"));
    let (_, rest) = line
        .split_once("instance=")
        .unwrap_or_else(|| panic!("no instance in {line}"));
    rest.split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// `rabbitmqctl` with these arguments; its standard output.
async fn rabbitmqctl(args: Vec<String>) -> String {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .expect("rabbitmqctl is needed for this test")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "rabbitmqctl failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Close only the AMQP connection named `escalator-worker-{instance}`.
async fn close_worker_connection(env: &TestEnv, instance: &str) {
    let name = format!("escalator-worker-{instance}");
    let listing = rabbitmqctl(vec![
        "list_connections".into(),
        "-p".into(),
        env.vhost.clone(),
        "pid".into(),
        "client_properties".into(),
    ])
    .await;
    let pid = listing
        .lines()
        .find(|l| l.contains(&name))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no connection {name} in:\n{listing}"))
        .to_string();
    rabbitmqctl(vec![
        "close_connection".into(),
        pid,
        "test closes one worker's connection".into(),
    ])
    .await;
}

/// The instance id of the worker actively consuming `conv`'s shard.
async fn active_consumer(env: &TestEnv, conv: &str) -> String {
    let queue = escalator::topology::shard_queue(escalator::topology::shard_of(
        ORG,
        conv,
        env.settings.shards,
    ));
    let listing = rabbitmqctl(vec![
        "list_consumers".into(),
        "-q".into(),
        "-p".into(),
        env.vhost.clone(),
        "queue_name".into(),
        "consumer_tag".into(),
        "active".into(),
    ])
    .await;
    let tag = listing
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() == 3 && f[0] == queue && f[2] == "true")
        .map(|f| f[1].to_string())
        .unwrap_or_else(|| panic!("no active consumer of {queue}:\n{listing}"));
    // Consumer tags are `worker-{instance}-{NN}`.
    let tag = tag.strip_prefix("worker-").unwrap_or(&tag);
    tag.rsplit_once('-').map_or(tag, |(i, _)| i).to_string()
}

/// The value of a Redis key of this test, polled until it exists.
async fn until_key(env: &TestEnv, key: &str) -> String {
    let store = env.store().await;
    let mut c = store.connection();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .unwrap();
        if let Some(v) = v {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{key} never set");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_losing_its_session_mid_call_leaves_one_comment_in_order() {
    let env = TestEnv::new("lease").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let a = env.spawn_worker(&sim.base_url(), dir.path(), "a");
    let b = env.spawn_worker(&sim.base_url(), dir.path(), "b");
    until_shards_split(&a, &b).await;
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    const CONV: &str = "conv-lease";
    client
        .publish("escalation.requested", "lease-esc", &escalation(ORG, CONV))
        .await
        .unwrap();
    let ticket = created(&next_event(&mut widget, CONV).await)
        .external_id
        .clone();

    // The comment call is answered after 10 s (within the HTTP timeout).
    sim.inject(FaultRule {
        method: Some("PUT".into()),
        path_prefix: "/api/v2/tickets/".into(),
        latency_ms: Some(10_000),
        times: Some(1),
        ..Default::default()
    });
    client
        .publish(
            "customer.message",
            "lease-m1",
            &customer_message(ORG, CONV, "lease-m1", "first"),
        )
        .await
        .unwrap();
    // The send marker is written right before the call; the runner is
    // the active consumer of the conversation's shard.
    let conv_key = format!("{}:conv:{{{ORG}:{CONV}}}", env.settings.key_prefix);
    until_key(&env, &format!("{conv_key}:sent:message:lease-m1")).await;
    let runner = active_consumer(&env, CONV).await;
    assert!(
        [instance_of(&a), instance_of(&b)].contains(&runner),
        "{runner} is neither worker"
    );
    // While the call is in flight: only the runner's AMQP connection closes,
    // the broker hands its unacked message to the other worker at once.
    close_worker_connection(&env, &runner).await;
    client
        .publish(
            "customer.message",
            "lease-m2",
            &customer_message(ORG, CONV, "lease-m2", "second"),
        )
        .await
        .unwrap();

    // Both messages on the ticket, and the slow call answered.
    let comments = || {
        sim.zendesk_tickets()
            .into_iter()
            .find(|t| t.id.to_string() == ticket)
            .map(|t| {
                t.comments[1..]
                    .iter()
                    .map(|c| c.body.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let slow_answered = || {
        sim.requests()
            .iter()
            .any(|r| r.method == "PUT" && r.faulted)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(slow_answered() && comments().len() >= 2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both comments never arrived: {:?}",
            comments()
        );
        until_sim_or(&sim, Duration::from_secs(1)).await;
    }
    for q in (0..env.settings.shards).map(|s| format!("escalator.work.{s:02}")) {
        env.until_drained(&q).await;
    }
    assert_eq!(
        comments(),
        vec!["first", "second"],
        "exactly one comment for the first message, and the second after it"
    );
    client.close().await;
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    env.cleanup().await;
}

/// Wait for the simulator's next answer, at most `at_most`.
async fn until_sim_or(sim: &escalator::sim::SimHandle, at_most: Duration) {
    let mut rx = sim.subscribe();
    let _ = tokio::time::timeout(at_most, rx.recv()).await;
}

#[tokio::test]
async fn repeat_escalation_requests_answer_with_the_identical_event() {
    let env = TestEnv::new("lease-repeat").await;
    let sb = env.sandbox().await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    const CONV: &str = "conv-repeat";
    for i in 1..=5 {
        sb.publish(
            "escalation.requested",
            &format!("repeat-{i}"),
            &escalation(ORG, CONV),
        )
        .await
        .unwrap();
    }
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(next_event(&mut widget, CONV).await);
    }
    assert_eq!(sb.sim.zendesk_tickets().len(), 1, "one ticket");
    let first = &events[0];
    assert_eq!(first.seq, 1);
    for e in &events[1..] {
        assert_eq!(
            (e.event_id, e.seq, e.occurred_at),
            (first.event_id, first.seq, first.occurred_at),
            "a repeat request is answered with the identical escalation.created"
        );
        assert_eq!(created(e).external_id, created(first).external_id);
    }
    sb.stop().await;
    env.cleanup().await;
}

/// A runner fenced off mid-call (its lease lapsed, another runner took the
/// conversation and let it go again) runs its message again in its place in
/// the lane: the customer message queued behind the escalation still finds
/// the ticket, nothing is made twice, nothing is dead-lettered. (Handing the
/// fenced message back to the broker put it behind that customer message,
/// which then found no escalation: seen after a Redis failover.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_off_runner_runs_its_message_again_before_the_next_one() {
    const CONV: &str = "conv-fenced";
    let env = TestEnv::new("fenced").await;
    let sb = env.sandbox().await;
    // Ticket creation is answered after 1.5 s (within the HTTP timeout).
    sb.sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        latency_ms: Some(1_500),
        times: Some(1),
        ..Default::default()
    });
    sb.publish("escalation.requested", "fenced-esc", &escalation(ORG, CONV))
        .await
        .unwrap();
    sb.publish(
        "customer.message",
        "fenced-m1",
        &customer_message(ORG, CONV, "fenced-m1", "after the hand-over"),
    )
    .await
    .unwrap();
    // The ticket call is in flight: another runner takes the conversation
    // (a new lease generation) and lets it go.
    let conv_key = format!("{}:conv:{{{ORG}:{CONV}}}", env.settings.key_prefix);
    until_key(&env, &format!("{conv_key}:attempt:ticket")).await;
    let store = env.store().await;
    let mut c = store.connection();
    let _: () = redis::pipe()
        .atomic()
        .hincr(&conv_key, "lease_gen", 1)
        .ignore()
        .del(format!("{conv_key}:lease"))
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();

    until_done(&env, ORG, CONV, "fenced-m1").await;
    until_done(&env, ORG, CONV, "fenced-esc").await;
    let tickets = sb.sim.zendesk_tickets();
    assert_eq!(tickets.len(), 1, "one ticket");
    let bodies: Vec<String> = tickets[0]
        .comments
        .iter()
        .filter_map(|c| c.body.clone())
        .filter(|b| b.contains("after the hand-over"))
        .collect();
    assert_eq!(
        bodies.len(),
        1,
        "the customer message reached the ticket once"
    );
    assert_eq!(
        env.queue_depth(escalator::topology::DEAD_LETTER_QUEUE)
            .await,
        0,
        "nothing dead-lettered"
    );
    let creates = sb
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/api/v2/tickets"))
        .count();
    assert_eq!(creates, 1, "the ticket was created once");
    // The fenced run was run again: it looked the ticket up.
    assert!(
        sb.sim
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.contains("external_id=")),
        "the second run looked the ticket up"
    );
    sb.stop().await;
    env.cleanup().await;
}
