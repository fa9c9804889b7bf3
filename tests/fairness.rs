//! Long runs and noisy neighbours: memory follows the work in flight, one
//! org cannot starve another, and shard hand-overs neither loop nor wait for
//! traffic.
mod common;

use common::*;
use escalator::sandbox::{Client, SALESFORCE_ORG, ZENDESK_ORG};
use escalator::sim::FaultRule;
use futures_util::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

fn typing(org: &str, conv: &str) -> serde_json::Value {
    json!({ "org_id": org, "conversation_id": conv, "typing": true, "sent_at": "2026-11-21T10:00:00Z" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_of_finished_conversations_are_reaped() {
    const CONVERSATIONS: usize = 30_000;
    let env = TestEnv::new("lanes").await;
    let mut settings = env.settings.clone();
    settings.prefetch = 64;
    let sandbox = env
        .sandbox_with(settings.clone(), escalator::sandbox::sandbox_config)
        .await;
    let gauge = sandbox.worker.context().clone();
    let in_flight_bound = usize::from(settings.prefetch) * usize::from(settings.shards);

    // Sample the live lanes while the conversations go through.
    let sampler = {
        let gauge = gauge.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(gauge.lanes.live());
                if gauge.lanes.settled() >= CONVERSATIONS as u64 {
                    return peak;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let client = &sandbox.client;
    let failures = futures_util::stream::iter(0..CONVERSATIONS)
        .map(|i| async move {
            let conv = format!("conv-{i:05}");
            client
                .publish(
                    "customer.typing",
                    &format!("{conv}-t"),
                    &typing(ZENDESK_ORG, &conv),
                )
                .await
        })
        .buffer_unordered(256)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    assert_eq!(failures, 0, "every publish confirmed");

    let peak = tokio::time::timeout(Duration::from_secs(180), sampler)
        .await
        .expect("all 30,000 conversations handled within 3 minutes")
        .unwrap();
    // Finished lanes go away as they finish: at most one sweep later, no more
    // than the worker's concurrency are left.
    let deadline = Instant::now() + Duration::from_secs(6);
    while gauge.lanes.live() > settings.concurrency {
        assert!(
            Instant::now() < deadline,
            "{} lane tasks still alive after all {CONVERSATIONS} conversations were handled",
            gauge.lanes.live()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While they go through, lanes follow the deliveries in flight (plus
    // lanes that finished and are about to be reaped), not the 30,000.
    assert!(
        peak <= 2 * in_flight_bound,
        "live lanes peaked at {peak}, far more than the deliveries that can be in flight ({in_flight_bound})"
    );
    sandbox.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_org_does_not_starve_another() {
    let env = TestEnv::new("bulkhead").await;
    // Concurrency 16, so each org may use 8; a prefetch that lets all of A's
    // messages and B's reach the worker (production: 64 per shard, 16 shards).
    let mut settings = env.settings.clone();
    settings.prefetch = 64;
    let sandbox = env
        .sandbox_with(settings, escalator::sandbox::sandbox_config)
        .await;
    let mut widget_b = sandbox
        .listen(&format!("{SALESFORCE_ORG}.#"))
        .await
        .unwrap();
    // Org A's Zendesk answers every ticket call after 20 s.
    sandbox.sim.inject(FaultRule {
        path_prefix: "/api/v2/tickets".into(),
        latency_ms: Some(20_000),
        ..Default::default()
    });
    for i in 0..64 {
        let conv = format!("slow-{i:02}");
        sandbox
            .publish(
                "escalation.requested",
                &conv,
                &escalation(ZENDESK_ORG, &conv),
            )
            .await
            .unwrap();
    }
    // All of org A's escalations have reached the worker (one lane each) and
    // taken what slots they may.
    let ctx = sandbox.worker.context().clone();
    let deadline = Instant::now() + WAIT;
    while ctx.lanes.live() < 64 {
        assert!(
            Instant::now() < deadline,
            "{} of org A's 64 lanes started",
            ctx.lanes.live()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    sandbox
        .publish(
            "escalation.requested",
            "fast-1",
            &escalation(SALESFORCE_ORG, "fast-1"),
        )
        .await
        .unwrap();
    let e = widget_b
        .next(Duration::from_secs(5))
        .await
        .expect("org B's escalation.created within 5 s while org A's provider hangs");
    assert_eq!(e.conversation_id, "fast-1");
    created(&e);
    assert!(started.elapsed() < Duration::from_secs(5));
    sandbox.sim.clear_faults();
    sandbox.stop().await;
    env.cleanup().await;
}

/// Keep `member` fresh in the fleet's membership, as a worker that
/// announces itself but never consumes would.
fn keep_member_fresh(env: &TestEnv, member: &str) -> tokio::task::JoinHandle<()> {
    let key = format!("{}:{{fleet}}:workers", env.settings.key_prefix);
    let url = env.settings.redis_url.clone();
    let member = member.to_string();
    tokio::spawn(async move {
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        loop {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
            let now_ms = secs * 1000 + micros / 1000;
            // With a TTL like the workers' own heartbeat, so that nothing is
            // left behind should the test die before it aborts this task.
            let _: () = redis::pipe()
                .cmd("ZADD")
                .arg(&key)
                .arg(now_ms)
                .arg(&member)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(60_000)
                .ignore()
                .query_async(&mut c)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_consumes_gets_no_hand_over() {
    let env = TestEnv::new("ghost").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let client = Client::connect(&env.settings).await.unwrap();
    let mut widget = client.listen(&format!("{ZENDESK_ORG}.#")).await.unwrap();
    // A member that is live in Redis (and prefers half the shards) but has
    // no consumer anywhere.
    let ghost = keep_member_fresh(&env, "ghost-member");
    let worker = env.spawn_worker(&sim.base_url(), dir.path(), "only");
    // Traffic on every shard for 12 s: long enough for the old rule (hand
    // over once membership was steady for 4 s) to hand shards to the ghost,
    // get them back and hand them over again.
    let convs: Vec<String> = (0..80).map(|i| format!("conv-{i:02}")).collect();
    for conv in &convs {
        client
            .publish("escalation.requested", conv, &escalation(ZENDESK_ORG, conv))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < convs.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = widget.next(left).await.unwrap_or_else(|| {
            panic!(
                "{} of {} escalations processed:\n{}",
                seen.len(),
                convs.len(),
                worker.log_text()
            )
        });
        created(&e);
        seen.insert(e.conversation_id);
    }
    let log = worker.log_text();
    for line in [
        "handing shard over",
        "shard handed over",
        "message redelivered by the broker",
    ] {
        assert!(
            !log.contains(line),
            "the worker handed shards to a member that does not consume (`{line}`), returning messages to the queue (x-delivery-count grows):\n{log}"
        );
    }
    ghost.abort();
    assert!(worker.terminate().await.success());
    client.close().await;
    env.cleanup().await;
}

/// Active consumer tags of the work queues: instance -> shards it is active on.
async fn active_shards(env: &TestEnv) -> BTreeMap<String, BTreeSet<String>> {
    let vhost = env.vhost.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_consumers",
                "-p",
                &vhost,
                "--no-table-headers",
                "queue_name",
                "consumer_tag",
                "active",
            ])
            .output()
            .expect("rabbitmqctl runs")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut active: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if let [queue, tag, "true"] = cols[..]
            && let Some((instance, _shard)) =
                tag.strip_prefix("worker-").and_then(|t| t.rsplit_once('-'))
        {
            active
                .entry(instance.to_string())
                .or_default()
                .insert(queue.to_string());
        }
    }
    active
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_an_idle_fleet_gets_its_share_without_traffic() {
    let env = TestEnv::new("idle").await;
    env.declare_topology().await;
    let dir = tempfile::tempdir().unwrap();
    let sim = env.sim().await;
    let shards = usize::from(env.settings.shards);
    let a = env.spawn_worker(&sim.base_url(), dir.path(), "a");
    // A, alone, is the active consumer of every shard.
    let deadline = Instant::now() + WAIT;
    loop {
        let active = active_shards(&env).await;
        if active.len() == 1 && active.values().all(|s| s.len() == shards) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never consumed: {active:?}\n{}",
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // B joins; no message is published at all.
    let b = env.spawn_worker(&sim.base_url(), dir.path(), "b");
    let started = Instant::now();
    loop {
        let active = active_shards(&env).await;
        if active.len() == 2 && active.values().all(|s| s.len() == shards / 2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "B is not the active consumer of its share within 10 s of starting: {active:?}\n--- a\n{}\n--- b\n{}",
            a.log_text(),
            b.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    env.cleanup().await;
}
