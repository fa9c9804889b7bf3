//! `escalator bench`: throughput and latency of the whole pipeline
//! (RabbitMQ -> intake -> shard -> worker -> simulator -> Redis -> outbound),
//! next to a raw-broker baseline measured in the same run, on the same
//! broker, in the same vhost, with the same prefetch and concurrency.
//!
//! The run isolates itself: a fresh RabbitMQ vhost (management API, else
//! `rabbitmqctl`; never the default vhost) and a unique Redis key prefix,
//! both removed at the end, also after an error or Ctrl-C.
mod baseline;
mod cpu;
mod ingress;
mod intake;
mod isolation;
mod live;
mod measure;
mod memory;
mod pipeline;
mod profile;
mod report;
mod scaling;
mod sim_process;

use crate::settings::Settings;
use std::time::Duration;

/// Publishes kept in flight (sent, confirm not yet received) by the producer.
pub const PUBLISH_IN_FLIGHT: usize = 256;
/// Messages pushed through each stage before measuring (connections, pools,
/// scripts and consumers warm; not counted).
pub const WARMUP: usize = 32;
/// A stage fails when no expected event arrived for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a stage of `count` messages may take, warm-up included.
fn stage_deadline(count: usize) -> Duration {
    Duration::from_secs(120)
        + Duration::from_millis(100).saturating_mul(u32::try_from(count).unwrap_or(u32::MAX))
}

/// What to measure.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Throughput and latency: `count` messages per stage.
    Throughput { count: usize },
    /// `streams` live Salesforce chats held by one worker (memory, idle CPU, relay latency).
    Live { streams: usize },
    /// Memory (RSS) after 2k, 10k and `conversations` distinct conversations.
    Memory { conversations: usize },
    /// The webhook ingress: `count` valid webhooks from `clients` concurrent clients.
    Ingress { count: usize, clients: usize },
    /// The intake router alone: `count` escalations routed to the shard queues.
    Intake { count: usize },
    /// `count` escalations through each number of worker processes.
    Workers { count: usize, workers: Vec<usize> },
}

enum Outcome {
    Throughput(Box<report::Report>),
    Memory(memory::MemoryReport),
    Live(live::LiveReport),
    Intake(intake::IntakeReport),
    Workers(scaling::ScalingReport),
}

impl Outcome {
    fn print(&self) {
        match self {
            Outcome::Throughput(r) => r.print(),
            Outcome::Memory(r) => r.print(),
            Outcome::Live(r) => r.print(),
            Outcome::Intake(r) => r.print(),
            Outcome::Workers(r) => r.print(),
        }
    }
}

pub async fn run(settings: Settings, mode: Mode) -> Result<(), String> {
    if let Mode::Ingress { count, clients } = &mode {
        return ingress::run(&settings, *count, *clients).await;
    }
    match &mode {
        Mode::Throughput { count: 0 }
        | Mode::Intake { count: 0 }
        | Mode::Workers { count: 0, .. } => {
            return Err("--count must be at least 1".into());
        }
        Mode::Memory { conversations: 0 } => {
            return Err("--conversations must be at least 1".into());
        }
        Mode::Live { streams: 0 } => return Err("--live must be at least 1".into()),
        _ => {}
    }
    if settings.prefetch == 0 || settings.concurrency == 0 || settings.shards == 0 {
        return Err("--prefetch, --concurrency and --shards must be at least 1".into());
    }
    match &mode {
        Mode::Throughput { count } => println!("escalator bench: {count} messages per stage"),
        Mode::Memory { conversations } => {
            println!("escalator bench: memory after up to {conversations} distinct conversations")
        }
        Mode::Live { streams } => {
            println!("escalator bench: {streams} live Salesforce chats held by one worker")
        }
        Mode::Intake { count } => {
            println!("escalator bench: {count} messages through the intake router alone")
        }
        Mode::Workers { count, workers } => {
            if workers.is_empty() || workers.contains(&0) {
                return Err("--workers takes counts of at least 1, e.g. 1,2,4".into());
            }
            println!("escalator bench: {count} escalations through {workers:?} worker processes")
        }
        Mode::Ingress { .. } => {}
    }
    let scratch = isolation::create(&settings).await?;
    let mut settings = settings;
    settings.amqp_url = scratch.amqp_url.clone();
    settings.key_prefix = scratch.key_prefix.clone();
    println!(
        "  RabbitMQ  {} (vhost {}, made for this run with {})",
        settings.amqp_url_redacted(),
        scratch.vhost,
        scratch.admin.describe()
    );
    println!(
        "  Redis     {} (key prefix {})",
        settings.redis_url_redacted(),
        settings.key_prefix
    );

    let outcome = tokio::select! {
        r = stages(&settings, mode) => r,
        r = tokio::signal::ctrl_c() => Err(match r {
            Ok(()) => "interrupted (Ctrl-C): cleaning up".to_string(),
            Err(e) => format!("cannot listen for Ctrl-C: {e}"),
        }),
    };
    let cleanup = scratch.remove(&settings.redis_url).await;
    match (outcome, cleanup) {
        (Ok(report), Ok(())) => {
            report.print();
            Ok(())
        }
        (Ok(report), Err(cleanup)) => {
            report.print();
            Err(format!(
                "the benchmark ran, but cleaning up failed: {cleanup}"
            ))
        }
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => Err(format!("{e}\n(cleaning up failed too: {cleanup})")),
    }
}

async fn stages(settings: &Settings, mode: Mode) -> Result<Outcome, String> {
    isolation::record_shape(settings).await?;
    let count = match mode {
        Mode::Throughput { count } => count,
        Mode::Ingress { .. } => return Err("the ingress benchmark runs on its own".into()),
        Mode::Workers { count, workers } => {
            return scaling::run(settings, &workers, count)
                .await
                .map(Outcome::Workers);
        }
        Mode::Intake { count } => {
            println!("\nintake: a worker that only routes");
            return intake::run(settings, count).await.map(Outcome::Intake);
        }
        Mode::Live { streams } => {
            println!("\nlive: starting the simulator (own process) and a worker");
            return live::run(settings, streams).await.map(Outcome::Live);
        }
        Mode::Memory { conversations } => {
            println!("\nmemory: starting the simulator and a worker");
            return memory::run(settings, conversations)
                .await
                .map(Outcome::Memory);
        }
    };
    println!("\npipeline: starting the simulator and a worker");
    let pipeline = pipeline::run(settings, count).await?;
    println!("\nbaseline: consume -> publish with confirm -> ack, on quorum queues");
    let baseline = baseline::run(settings, count).await?;
    Ok(Outcome::Throughput(Box::new(report::Report {
        count,
        prefetch: settings.prefetch,
        concurrency: settings.concurrency,
        shards: settings.shards,
        pipeline,
        baseline,
        peak_rss: report::peak_rss(),
    })))
}
