//! The intake router alone: how many messages a second the one active
//! consumer of `escalator.intake` routes to the shard queues (parse,
//! validate, place, publish with pipelined confirms, ack in order). It is
//! the ceiling of the whole deployment, however many workers run.
//!
//! `count` escalations (distinct conversations) are published first and
//! wait in the intake queue; then the router starts and the run ends when
//! the shard queues hold all of them (nothing consumes them).
use super::PUBLISH_IN_FLIGHT;
use super::measure;
use crate::config::Config;
use crate::pipeline::service::Worker;
use crate::sandbox::{Client, sandbox_config};
use crate::settings::Settings;
use crate::topology::shard_queue;
use lapin::types::ShortString;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the shard queues are counted while the router drains.
const POLL: Duration = Duration::from_millis(20);

pub struct IntakeReport {
    pub count: usize,
    pub elapsed: Duration,
    pub prefetch: u16,
}

impl IntakeReport {
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn print(&self) {
        println!("\nintake router alone (prefetch {}):", self.prefetch);
        println!(
            "  routed {} messages in {:.2} s: {:.0} messages/s",
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate()
        );
        println!(
            "  the deployment's ceiling: above about {:.0} messages/s the intake queue grows, whatever the number of workers",
            self.rate()
        );
    }
}

pub async fn run(settings: &Settings, count: usize) -> Result<IntakeReport, String> {
    // The provider URLs are never called: the router only routes.
    let config = Config::parse(&sandbox_config("http://127.0.0.1:9"), "sandbox", &|n| {
        std::env::var(n).ok()
    })
    .map_err(|e| e.to_string())?;
    let worker = Worker::start(settings.clone(), config)
        .await
        .map_err(|e| e.to_string())?;
    let client = Client::connect(settings).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let ids: Vec<String> = (0..count).map(|i| format!("intake-{run}-{i:06}")).collect();
    let bodies: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| super::pipeline::escalation(id))
        .collect();
    println!("intake: publishing {count} escalations to wait in the intake queue");
    measure::publish_all(count, PUBLISH_IN_FLIGHT, |i| {
        client.publish("escalation.requested", &ids[i], &bodies[i])
    })
    .await?;

    let conn = crate::amqp::connect(&settings.amqp_url, "escalator-bench-count")
        .await
        .map_err(|e| crate::explain::amqp(&settings.amqp_url, &e))?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    println!("intake: starting the router alone");
    let stop = CancellationToken::new();
    let started = Instant::now();
    let router = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.route_only(stop).await })
    };
    let deadline = started + super::stage_deadline(count);
    let result = loop {
        match routed(&channel, settings.shards).await {
            Ok(n) if n >= count => break Ok(started.elapsed()),
            Ok(_) if Instant::now() > deadline => {
                break Err("the intake router did not route every message in time".to_string());
            }
            Ok(_) => tokio::time::sleep(POLL).await,
            Err(e) => break Err(e),
        }
        if router.is_finished() {
            break Err("the intake router stopped".to_string());
        }
    };
    stop.cancel();
    match router.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("intake router: {e}")),
        Err(e) => return Err(format!("intake router task: {e}")),
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
    Ok(IntakeReport {
        count,
        elapsed: result?,
        prefetch: settings.prefetch,
    })
}

/// Messages waiting in the shard queues.
async fn routed(channel: &lapin::Channel, shards: u16) -> Result<usize, String> {
    let mut total = 0;
    for n in 0..shards {
        total += measure::messages_ready(channel, &shard_queue(n))
            .await
            .map_err(|e| format!("counting shard queue {n}: {e}"))? as usize;
    }
    Ok(total)
}
