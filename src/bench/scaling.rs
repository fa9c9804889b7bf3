//! `escalator bench --workers 1,2,4`: the same load through 1, 2 and 4
//! worker processes (`escalator worker`), the simulator in a process of its
//! own, to see how throughput changes with the fleet's size. Each round
//! has its own Redis key prefix and conversations; the broker vhost is the
//! run's.
use super::measure;
use super::{PUBLISH_IN_FLIGHT, WARMUP};
use crate::contract::OutboundPayload;
use crate::sandbox::{Client, Listener, ZENDESK_ORG, sandbox_config};
use crate::settings::Settings;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

/// After the warm-up, time for the workers to share the shards out.
const SETTLE: Duration = Duration::from_secs(4);

pub struct ScalingReport {
    pub count: usize,
    /// (worker processes, escalations/s).
    pub rounds: Vec<(usize, f64)>,
}

impl ScalingReport {
    pub fn print(&self) {
        println!(
            "\nworker processes ({} escalations each round, simulator in its own process):",
            self.count
        );
        let first = self.rounds.first().map(|r| r.1).unwrap_or(0.0);
        for (n, rate) in &self.rounds {
            println!(
                "  {n} worker(s): {rate:.0} escalations/s ({:.2} x one worker)",
                rate / first.max(1e-9)
            );
        }
    }
}

pub async fn run(
    settings: &Settings,
    workers: &[usize],
    count: usize,
) -> Result<ScalingReport, String> {
    declare_topology(settings).await?;
    let (mut sim, sim_url) = super::sim_process::start().await?;
    println!("  simulator: its own process, {sim_url}");
    let config = std::env::temp_dir().join(format!(
        "escalator-bench-workers-{}.toml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&config, sandbox_config(&sim_url))
        .map_err(|e| format!("cannot write the workers' config: {e}"))?;
    let mut rounds = Vec::new();
    for &n in workers {
        let rate = round(settings, &config, n, count).await;
        match rate {
            Ok(r) => rounds.push((n, r)),
            Err(e) => {
                let _ = sim.kill().await;
                let _ = std::fs::remove_file(&config);
                return Err(e);
            }
        }
    }
    let _ = sim.kill().await;
    let _ = std::fs::remove_file(&config);
    Ok(ScalingReport { count, rounds })
}

/// The exchanges and queues, before anything listens on them.
async fn declare_topology(settings: &Settings) -> Result<(), String> {
    let conn = crate::amqp::connect(&settings.amqp_url, "escalator-bench-topology")
        .await
        .map_err(|e| crate::explain::amqp(&settings.amqp_url, &e))?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let declared = crate::topology::Topology::new(settings.shards, settings.delivery_limit)
        .declare(&channel)
        .await
        .map_err(|e| format!("cannot declare the topology: {e}"));
    let _ = conn
        .close(200, lapin::types::ShortString::from("declared"))
        .await;
    declared
}

async fn round(
    settings: &Settings,
    config: &std::path::Path,
    n: usize,
    count: usize,
) -> Result<f64, String> {
    let prefix = format!("{}:w{n}", settings.key_prefix);
    println!("\n{n} worker(s): starting");
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut children = Vec::new();
    for _ in 0..n {
        let child = tokio::process::Command::new(&exe)
            .arg("worker")
            .env("ESCALATOR_AMQP_URL", &settings.amqp_url)
            .env("ESCALATOR_REDIS_URL", &settings.redis_url)
            .env("ESCALATOR_KEY_PREFIX", &prefix)
            .env("ESCALATOR_SHARDS", settings.shards.to_string())
            .env("ESCALATOR_PREFETCH", settings.prefetch.to_string())
            .env("ESCALATOR_CONCURRENCY", settings.concurrency.to_string())
            .env("ESCALATOR_CONFIG", config)
            .env("ESCALATOR_METRICS_LISTEN", "off")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a worker process: {e}"))?;
        children.push(child);
    }
    let result = measure_round(settings, n, count).await;
    for mut c in children {
        if let Some(pid) = c.id() {
            // SIGTERM: a clean leave (the next round's workers take over).
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
        let _ = c.kill().await;
    }
    result
}

async fn measure_round(settings: &Settings, n: usize, count: usize) -> Result<f64, String> {
    let client = Client::connect(settings).await?;
    let mut listener = client.listen(&format!("{ZENDESK_ORG}.#")).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let warm: Vec<String> = (0..WARMUP)
        .map(|i| format!("w{n}-{run}-warm-{i}"))
        .collect();
    publish(&client, &warm).await?;
    created(&mut listener, &warm).await?;
    tokio::time::sleep(SETTLE).await;
    let ids: Vec<String> = (0..count).map(|i| format!("w{n}-{run}-{i:06}")).collect();
    println!("{n} worker(s): {count} escalations");
    let started = Instant::now();
    publish(&client, &ids).await?;
    created(&mut listener, &ids).await?;
    let elapsed = started.elapsed();
    client.close().await;
    Ok(count as f64 / elapsed.as_secs_f64().max(1e-9))
}

async fn publish(client: &Client, ids: &[String]) -> Result<(), String> {
    let bodies: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| super::pipeline::escalation(id))
        .collect();
    let message_ids: Vec<String> = ids.iter().map(|id| format!("{id}-escalation")).collect();
    measure::publish_all(ids.len(), PUBLISH_IN_FLIGHT, |i| {
        client.publish("escalation.requested", &message_ids[i], &bodies[i])
    })
    .await
    .map(|_| ())
}

/// Wait for one `escalation.created` per id.
async fn created(listener: &mut Listener, ids: &[String]) -> Result<(), String> {
    let mut waiting: HashSet<&str> = ids.iter().map(String::as_str).collect();
    while !waiting.is_empty() {
        let Some(e) = listener.next(super::STALL_TIMEOUT).await else {
            return Err(format!(
                "no escalation.created for {} s ({} of {} missing)",
                super::STALL_TIMEOUT.as_secs(),
                waiting.len(),
                ids.len()
            ));
        };
        if matches!(e.payload, OutboundPayload::EscalationCreated(_)) {
            waiting.remove(e.conversation_id.as_str());
        }
    }
    Ok(())
}
