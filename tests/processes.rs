//! Failure and scale behaviour with real processes: a worker killed mid-call,
//! two workers sharing the load in order, a broker connection cut, SIGTERM,
//! and a Redis restart.
mod common;

use common::*;
use escalator::sandbox::{Client, ZENDESK_ORG};
use escalator::sim::FaultRule;
use std::time::Duration;

const ORG: &str = ZENDESK_ORG;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_between_api_call_and_ack_still_one_ticket() {
    let env = TestEnv::new("kill").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    // Zendesk creates the ticket, then the answer takes a minute: the worker
    // is killed while it waits, before it can record or ack anything.
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        latency_ms: Some(60_000),
        after_effect: true,
        ..Default::default()
    });
    let first = env.spawn_worker(&sim.base_url(), dir.path(), "first");
    client
        .publish("escalation.requested", "k-1", &escalation(ORG, "conv-kill"))
        .await
        .unwrap();
    until_sim(&sim, || sim.zendesk_tickets().len() == 1).await;
    first.kill9().await;

    let second = env.spawn_worker(&sim.base_url(), dir.path(), "second");
    let e = next_event(&mut widget, "conv-kill").await;
    assert_eq!(
        created(&e).external_id,
        sim.zendesk_tickets()[0].id.to_string()
    );
    assert_eq!(sim.zendesk_tickets().len(), 1, "exactly one ticket");
    let posts = sim.requests().iter().filter(|r| r.method == "POST").count();
    assert!(
        posts <= 1,
        "the second worker found the ticket instead of creating it ({posts} POSTs recorded)"
    );
    let status = second.terminate().await;
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_keep_each_conversations_order() {
    let env = TestEnv::new("order").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let a = env.spawn_worker(&sim.base_url(), dir.path(), "a");
    let b = env.spawn_worker(&sim.base_url(), dir.path(), "b");
    until_shards_split(&a, &b).await;
    let client = Client::connect(&env.settings).await.unwrap();
    const CONVS: usize = 20;
    const EVENTS: usize = 10;
    // Interleaved, as real traffic is: event i of every conversation, then i+1.
    for i in 0..EVENTS {
        for c in 0..CONVS {
            let conv = format!("conv-{c:02}");
            if i == 0 {
                client
                    .publish(
                        "escalation.requested",
                        &format!("{conv}-esc"),
                        &escalation(ORG, &conv),
                    )
                    .await
                    .unwrap();
            } else {
                let id = format!("{conv}-m{i}");
                client
                    .publish(
                        "customer.message",
                        &id,
                        &customer_message(ORG, &conv, &id, &format!("{conv} message {i}")),
                    )
                    .await
                    .unwrap();
            }
        }
    }
    until_sim(&sim, || {
        let t = sim.zendesk_tickets();
        t.len() == CONVS && t.iter().all(|t| t.comments.len() >= EVENTS)
    })
    .await;
    for t in sim.zendesk_tickets() {
        let conv = t.external_id.clone().unwrap();
        let got: Vec<String> = t.comments[1..]
            .iter()
            .map(|c| c.body.clone().unwrap_or_default())
            .collect();
        let want: Vec<String> = (1..EVENTS).map(|i| format!("{conv} message {i}")).collect();
        assert_eq!(got, want, "order of {conv}");
    }
    let handled = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("message handled")
            .count()
    };
    let (log_a, log_b) = (a.log.clone(), b.log.clone());
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    let (ha, hb) = (handled(&log_a), handled(&log_b));
    println!("messages handled: worker a {ha}, worker b {hb}");
    assert!(
        ha > 0 && hb > 0,
        "both workers took a share of the shards (a {ha}, b {hb})"
    );
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connections_closed_mid_run_everything_processed_once() {
    let env = TestEnv::new("cut").await;
    let mut settings = env.settings.clone();
    settings.concurrency = 4;
    let sb = env
        .sandbox_with(settings, escalator::sandbox::sandbox_config)
        .await;
    // Slow Zendesk down so that the cuts land mid-run (about 7 s of work).
    sb.sim.inject(FaultRule {
        path_prefix: "/api/v2/".into(),
        latency_ms: Some(300),
        ..Default::default()
    });
    const CONVS: usize = 30;
    for c in 0..CONVS {
        let conv = format!("cut-{c:02}");
        sb.publish(
            "escalation.requested",
            &format!("{conv}-esc"),
            &escalation(ORG, &conv),
        )
        .await
        .unwrap();
        for i in 1..=2 {
            let id = format!("{conv}-m{i}");
            sb.publish(
                "customer.message",
                &id,
                &customer_message(ORG, &conv, &id, &format!("message {i}")),
            )
            .await
            .unwrap();
        }
    }
    until_sim(&sb.sim, || sb.sim.zendesk_tickets().len() >= 5).await;
    env.close_connections().await;
    assert!(
        sb.sim.zendesk_tickets().len() < CONVS,
        "the cut came mid-run"
    );
    until_sim(&sb.sim, || sb.sim.zendesk_tickets().len() >= 15).await;
    env.close_connections().await;
    until_sim(&sb.sim, || {
        let t = sb.sim.zendesk_tickets();
        t.len() >= CONVS && t.iter().all(|t| t.comments.len() >= 3)
    })
    .await;
    // Nothing left behind in the queues (redelivered duplicates are consumed and skipped).
    for q in [
        "escalator.intake",
        "escalator.work.00",
        "escalator.work.01",
        "escalator.work.02",
        "escalator.work.03",
    ] {
        env.until_drained(q).await;
    }
    let tickets = sb.sim.zendesk_tickets();
    assert_eq!(tickets.len(), CONVS, "one ticket per conversation");
    for t in &tickets {
        let bodies: Vec<_> = t.comments[1..]
            .iter()
            .map(|c| c.body.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            bodies,
            vec!["message 1", "message 2"],
            "each message once, in order"
        );
    }
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let env = TestEnv::new("term").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    sim.inject(FaultRule {
        method: Some("POST".into()),
        path_prefix: "/api/v2/tickets".into(),
        times: Some(1),
        latency_ms: Some(1_500),
        after_effect: true,
        ..Default::default()
    });
    let w = env.spawn_worker(&sim.base_url(), dir.path(), "w");
    client
        .publish("escalation.requested", "t-1", &escalation(ORG, "conv-term"))
        .await
        .unwrap();
    until_sim(&sim, || sim.zendesk_tickets().len() == 1).await;
    // The call is in flight (its answer is 1.5 s away): stop the worker now.
    let log = w.log.clone();
    let status = w.terminate().await;
    assert!(status.success(), "exit status {status:?}");
    let e = next_event(&mut widget, "conv-term").await;
    assert_eq!(
        created(&e).external_id,
        sim.zendesk_tickets()[0].id.to_string(),
        "finished before exiting"
    );
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("worker stopped"), "{text}");
    assert!(!text.contains("sim-zendesk-token"), "no secret in the logs");
    assert!(
        !text.contains("grace@example.com"),
        "no customer contact data in the logs"
    );
    client.close().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_is_survived_without_loss_or_duplicates() {
    let env = TestEnv::new("redis").await;
    let mut redis = PrivateRedis::start();
    let mut settings = env.settings.clone();
    settings.redis_url = redis.url();
    let sb = env
        .sandbox_with(settings, escalator::sandbox::sandbox_config)
        .await;
    let mut widget = sb.listen(&format!("{ORG}.#")).await.unwrap();
    sb.publish(
        "escalation.requested",
        "r-esc",
        &escalation(ORG, "conv-redis"),
    )
    .await
    .unwrap();
    next_event(&mut widget, "conv-redis").await;

    redis.kill();
    sb.publish(
        "customer.message",
        "r-m1",
        &customer_message(ORG, "conv-redis", "r-m1", "while redis was down"),
    )
    .await
    .unwrap();
    sb.publish(
        "escalation.requested",
        "r-esc2",
        &escalation(ORG, "conv-redis-2"),
    )
    .await
    .unwrap();
    // Let the worker hit the outage before Redis comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart();

    let e = next_event(&mut widget, "conv-redis-2").await;
    assert!(matches!(
        e.payload,
        escalator::contract::OutboundPayload::EscalationCreated(_)
    ));
    until_sim(&sb.sim, || {
        sb.sim
            .zendesk_tickets()
            .iter()
            .any(|t| t.external_id.as_deref() == Some("conv-redis") && t.comments.len() == 2)
    })
    .await;
    let tickets = sb.sim.zendesk_tickets();
    assert_eq!(tickets.len(), 2);
    let t = tickets
        .iter()
        .find(|t| t.external_id.as_deref() == Some("conv-redis"))
        .unwrap();
    assert_eq!(t.comments[1].body.as_deref(), Some("while redis was down"));
    sb.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_joins_later_takes_over_its_share_in_order() {
    let env = TestEnv::new("rebalance").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ORG}.#")).await.unwrap();
    let a = env.spawn_worker(&sim.base_url(), dir.path(), "a");
    // A works alone, active on every shard.
    for c in 0..8 {
        let conv = format!("early-{c}");
        client
            .publish("escalation.requested", &conv, &escalation(ORG, &conv))
            .await
            .unwrap();
    }
    for _ in 0..8 {
        widget.next(WAIT).await.expect("escalation.created");
    }
    // B joins while traffic keeps coming: A hands B's share over mid-stream
    // (it logs each hand-over), with messages in flight and held back.
    sim.inject(FaultRule {
        path_prefix: "/api/v2/".into(),
        latency_ms: Some(30),
        ..Default::default()
    });
    let b = env.spawn_worker(&sim.base_url(), dir.path(), "b");
    const CONVS: usize = 16;
    // Rounds of one event per conversation, paced, until A has handed shards
    // over, then four more: the traffic spans the hand-over.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rounds_after = None;
    let mut i = 0;
    while rounds_after != Some(0) {
        for c in 0..CONVS {
            let conv = format!("late-{c:02}");
            if i == 0 {
                client
                    .publish(
                        "escalation.requested",
                        &format!("{conv}-esc"),
                        &escalation(ORG, &conv),
                    )
                    .await
                    .unwrap();
            } else {
                let id = format!("{conv}-m{i}");
                client
                    .publish(
                        "customer.message",
                        &id,
                        &customer_message(ORG, &conv, &id, &format!("{conv} message {i}")),
                    )
                    .await
                    .unwrap();
            }
        }
        i += 1;
        rounds_after = match rounds_after {
            None if a.log_text().contains("shard handed over") => Some(4),
            None => None,
            Some(n) => Some(n - 1),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "no hand-over within 30 s:\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let events = i;
    until_sim(&sim, || {
        let t: Vec<_> = sim
            .zendesk_tickets()
            .into_iter()
            .filter(|t| {
                t.external_id
                    .as_deref()
                    .is_some_and(|e| e.starts_with("late-"))
            })
            .collect();
        t.len() == CONVS && t.iter().all(|t| t.comments.len() >= events)
    })
    .await;
    for t in sim.zendesk_tickets().into_iter().filter(|t| {
        t.external_id
            .as_deref()
            .is_some_and(|e| e.starts_with("late-"))
    }) {
        let conv = t.external_id.clone().unwrap();
        let got: Vec<String> = t.comments[1..]
            .iter()
            .map(|c| c.body.clone().unwrap_or_default())
            .collect();
        let want: Vec<String> = (1..events).map(|i| format!("{conv} message {i}")).collect();
        assert_eq!(got, want, "order of {conv}");
    }
    assert!(
        a.log_text().contains("shard handed over"),
        "A handed shards over:\n{}",
        a.log_text()
    );
    let log_b = b.log.clone();
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    let handled_b = std::fs::read_to_string(log_b)
        .unwrap_or_default()
        .matches("message handled")
        .count();
    assert!(handled_b > 0, "the newcomer took work");
    client.close().await;
    env.cleanup().await;
}
