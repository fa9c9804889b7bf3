//! A RabbitMQ node lost mid-run (issue 10, item 3). Needs a local
//! three-node cluster, so it is not part of `cargo test`: run
//! `bash deploy/rabbitmq/cluster-load.sh`, which starts the cluster on
//! spare ports, runs this test against it and removes the cluster.
//!
//! Two worker processes get the cluster as a list of addresses. While
//! escalations and follow-up messages flow, the node one of the workers is
//! connected to is stopped and later started again; then every
//! conversation must have exactly one ticket and every message exactly one
//! comment, in order. The figures are printed.
mod common;

use common::{TestEnv, customer_message, escalation};
use escalator::sandbox::ZENDESK_ORG as ORG;
use std::collections::HashMap;
use std::time::Duration;

const CONVERSATIONS: usize = 20;
const MESSAGES: usize = 10;

fn ctl(node: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-n", node, "-q"])
        .args(args)
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cluster nodes holding a connection to `vhost` (a pid names its node).
fn nodes_with_connections(any_node: &str, vhost: &str) -> Vec<String> {
    ctl(any_node, &["list_connections", "-s", "pid", "vhost"])
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(vhost))
        .filter_map(|l| {
            let pid = l.split_whitespace().next()?;
            let node = pid.trim_start_matches('<').split('.').next()?;
            Some(node.to_string())
        })
        .collect()
}

fn text(c: usize, i: usize) -> String {
    format!("message {i} of conversation {c}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a local three-node RabbitMQ cluster: bash deploy/rabbitmq/cluster-load.sh"]
async fn a_node_stopped_and_restarted_mid_run_loses_and_duplicates_nothing() {
    let (Ok(url), Ok(nodes), Ok(vhost)) = (
        std::env::var("ESCALATOR_TEST_CLUSTER_URL"),
        std::env::var("ESCALATOR_TEST_CLUSTER_NODES"),
        std::env::var("ESCALATOR_TEST_CLUSTER_VHOST"),
    ) else {
        panic!("run through deploy/rabbitmq/cluster-load.sh (ESCALATOR_TEST_CLUSTER_* unset)");
    };
    let nodes: Vec<&str> = nodes.split(',').collect();
    let mut env = TestEnv::new("rmq-cluster").await;
    env.settings.amqp_url = url.clone();
    let sim = env.sim().await;
    let dir = tempfile::tempdir().unwrap();
    let a = env.spawn_worker(&sim.base_url(), dir.path(), "a");
    let b = env.spawn_worker(&sim.base_url(), dir.path(), "b");
    // The test publishes through the last node, which stays up.
    let publish_url = {
        let nodes = escalator::amqp_addresses::expand(&url);
        nodes[nodes.len() - 1].clone()
    };
    let mut publish_settings = env.settings.clone();
    publish_settings.amqp_url = publish_url;
    let client = escalator::sandbox::Client::connect(&publish_settings)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    // Both workers consuming: each holds a connection named after it.
    let victim = loop {
        // Only the workers connect to the other nodes.
        let on = nodes_with_connections(nodes[0], &vhost);
        if let Some(node) = on
            .into_iter()
            .find(|n| n.as_str() != nodes[nodes.len() - 1])
        {
            break node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no worker connected to a node that may be stopped: {}\nworker a: {}",
            ctl(
                nodes[0],
                &["list_connections", "-s", "pid", "name", "vhost"]
            ),
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let total = CONVERSATIONS * (1 + MESSAGES);
    let mut sent = 0;
    let mut stopped_at = None;
    for c in 0..CONVERSATIONS {
        client
            .publish(
                "escalation.requested",
                &format!("e-{c}"),
                &escalation(ORG, &format!("conv-{c}")),
            )
            .await
            .unwrap();
        sent += 1;
    }
    for i in 0..MESSAGES {
        for c in 0..CONVERSATIONS {
            client
                .publish(
                    "customer.message",
                    &format!("m-{c}-{i}"),
                    &customer_message(
                        ORG,
                        &format!("conv-{c}"),
                        &format!("cm-{c}-{i}"),
                        &text(c, i),
                    ),
                )
                .await
                .unwrap();
            sent += 1;
        }
        if i == MESSAGES / 3 {
            println!("stopping node {victim} after {sent} of {total} messages");
            ctl(&victim, &["stop_app"]);
            stopped_at = Some(tokio::time::Instant::now());
        }
        if i == 2 * MESSAGES / 3 {
            println!("starting node {victim} again after {sent} of {total} messages");
            ctl(&victim, &["start_app"]);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Wait for every effect.
    let ours = |b: &Option<String>| b.as_deref().is_some_and(|b| b.contains("message "));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut rx = sim.subscribe();
    loop {
        let tickets = sim.zendesk_tickets();
        let comments: usize = tickets
            .iter()
            .map(|t| t.comments.iter().filter(|c| ours(&c.body)).count())
            .sum();
        if tickets.len() >= CONVERSATIONS && comments >= CONVERSATIONS * MESSAGES {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
    }
    let recovered = stopped_at.map(|t| t.elapsed());
    let tickets = sim.zendesk_tickets();
    let mut per_conv: HashMap<String, usize> = HashMap::new();
    let (mut lost, mut duplicated, mut out_of_order) = (0, 0, 0);
    for t in &tickets {
        *per_conv
            .entry(t.external_id.clone().unwrap_or_default())
            .or_default() += 1;
        let c: usize = t
            .external_id
            .as_deref()
            .and_then(|id| id.rsplit('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX);
        let bodies: Vec<String> = t
            .comments
            .iter()
            .filter(|x| ours(&x.body))
            .map(|x| x.body.clone().unwrap_or_default())
            .collect();
        let mut seen = Vec::new();
        for body in &bodies {
            if let Some(i) = (0..MESSAGES).find(|i| body.contains(&text(c, *i))) {
                seen.push(i);
            }
        }
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        duplicated += seen.len() - unique.len();
        lost += MESSAGES - unique.len();
        if seen.windows(2).any(|w| w[0] > w[1]) {
            out_of_order += 1;
        }
    }
    let duplicate_tickets: usize = per_conv.values().map(|n| n - 1).sum();
    let missing_tickets = CONVERSATIONS - per_conv.len();
    println!(
        "cluster load: {sent} messages published; node {victim} stopped and restarted mid-run"
    );
    println!(
        "  tickets: {} for {CONVERSATIONS} conversations (missing {missing_tickets}, duplicated {duplicate_tickets})",
        tickets.len()
    );
    println!(
        "  comments: lost {lost}, duplicated {duplicated}, conversations out of order {out_of_order}"
    );
    if let Some(r) = recovered {
        println!(
            "  all effects done {:.1} s after the node was stopped",
            r.as_secs_f64()
        );
    }
    assert_eq!(
        (
            missing_tickets,
            duplicate_tickets,
            lost,
            duplicated,
            out_of_order
        ),
        (0, 0, 0, 0, 0)
    );
    for w in [a, b] {
        let status = w.terminate().await;
        assert!(status.success(), "{status:?}");
    }
    env.cleanup().await;
}
