//! `escalator bench --live N`: N live Salesforce chats held by one worker
//! (this process) against the simulator running in a process of its own.
//!
//! Prints: the worker's RSS per idle stream, its CPU while N streams sit
//! idle (the simulator pings each every 15 s), and the relay latency of
//! agent messages at 500 a second (simulator emit -> the widget's queue,
//! read off the `emit_us` stamp the simulator puts in each text).
use super::report::current_rss;
use crate::config::Config;
use crate::pipeline::service::Worker;
use crate::sandbox::{Client, SALESFORCE_ORG, sample_escalation, sandbox_config};
use crate::settings::Settings;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Agent messages a second during the relay measurement.
const RELAY_RATE: u64 = 500;
/// How long the relay measurement emits.
const RELAY_SECS: u64 = 10;
/// How long the idle CPU is measured.
const IDLE_SECS: u64 = 20;

pub struct LiveReport {
    pub streams: usize,
    pub open_time: Duration,
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    pub idle_cpu_percent: Option<f64>,
    pub relayed: usize,
    pub relay_p50: Option<Duration>,
    pub relay_p99: Option<Duration>,
    pub relay_max: Option<Duration>,
}

impl LiveReport {
    pub fn print(&self) {
        println!(
            "\nlive: {} Salesforce live chats held by one worker",
            self.streams
        );
        println!(
            "  opened (hand-over + stream) in {:.1} s",
            self.open_time.as_secs_f64()
        );
        if let (Some(a), Some(b)) = (self.rss_before, self.rss_after) {
            let per = b.saturating_sub(a) as f64 / self.streams.max(1) as f64;
            println!(
                "  worker RSS {:.1} MiB -> {:.1} MiB: {:.1} KiB per idle stream (target < 20 KiB; plain HTTP to the simulator: TLS to Salesforce adds roughly 30-40 KiB per connection for rustls buffers and session state)",
                a as f64 / 1048576.0,
                b as f64 / 1048576.0,
                per / 1024.0
            );
        }
        if let Some(cpu) = self.idle_cpu_percent {
            println!(
                "  idle CPU with every stream open: {cpu:.2} % of one core over {IDLE_SECS} s (target < 2 %)"
            );
        }
        match (self.relay_p50, self.relay_p99, self.relay_max) {
            (Some(p50), Some(p99), Some(max)) => println!(
                "  agent message relay (simulator emit -> widget queue) at {RELAY_RATE}/s: {} relayed, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 < 50 ms)",
                self.relayed,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3
            ),
            _ => println!("  agent message relay: nothing relayed"),
        }
        println!(
            "  takeover after SIGKILL: measured by tests/live_salesforce.rs (a_sigkilled_stream_owner_...), about owner TTL + a quarter of it"
        );
    }
}

fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ")".
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub async fn run(settings: &Settings, streams: usize) -> Result<LiveReport, String> {
    // The simulator inherits the raised limit (it holds the other ends).
    let _ = rlimit::increase_nofile_limit(streams as u64 * 2 + 4096);
    let (mut sim, sim_url) = super::sim_process::start().await?;
    let http = reqwest::Client::new();
    println!("  simulator: its own process, {sim_url}");
    let result = measure(settings, streams, &sim_url, &http).await;
    let _ = sim.kill().await;
    result
}

async fn measure(
    settings: &Settings,
    streams: usize,
    sim_url: &str,
    http: &reqwest::Client,
) -> Result<LiveReport, String> {
    let config =
        Config::parse(&sandbox_config(sim_url), "bench", &|_| None).map_err(|e| e.to_string())?;
    let mut settings = settings.clone();
    settings.max_streams = streams.max(1);
    settings.metrics_listen = "off".into();
    let worker = Arc::new(
        Worker::start(settings.clone(), config)
            .await
            .map_err(|e| e.to_string())?,
    );
    let stop = CancellationToken::new();
    let task = {
        let (worker, stop) = (worker.clone(), stop.clone());
        tokio::spawn(async move { worker.run(stop).await })
    };
    let client = Client::connect(&settings).await?;
    let ctx = worker.context().clone();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let rss_before = current_rss();
    let started = Instant::now();
    super::measure::publish_all(streams, super::PUBLISH_IN_FLIGHT, |i| {
        let conv = format!("live-{run}-{i:06}");
        let mut body = sample_escalation(SALESFORCE_ORG, &conv);
        body["mode"] = json!("live");
        let client = &client;
        async move {
            client
                .publish("escalation.requested", &format!("{conv}-esc"), &body)
                .await
        }
    })
    .await?;
    let mut last = (0, Instant::now());
    while ctx.streams.open_count() < streams {
        let open = ctx.streams.open_count();
        if open != last.0 {
            last = (open, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            return Err(format!("stuck at {open} of {streams} streams for 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let open_time = started.elapsed();
    // Let the hand-overs' queued work drain before reading memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = current_rss();

    let hz = 100.0; // USER_HZ on Linux
    let t0 = cpu_ticks();
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let idle_cpu_percent = match (t0, cpu_ticks()) {
        (Some(a), Some(b)) => Some((b - a) as f64 / hz / w0.elapsed().as_secs_f64() * 100.0),
        _ => None,
    };

    let mut widget = client
        .listen(&format!("{SALESFORCE_ORG}.agent.message"))
        .await?;
    let count = RELAY_RATE * RELAY_SECS;
    http.post(format!("{sim_url}/_sim/salesforce/miaw/bench/emit"))
        .json(&json!({ "count": count, "rate": RELAY_RATE }))
        .send()
        .await
        .map_err(|e| format!("the simulator refused the emit: {e}"))?;
    let mut latencies = Vec::with_capacity(count as usize);
    let deadline = Instant::now() + Duration::from_secs(RELAY_SECS + 60);
    while (latencies.len() as u64) < count && Instant::now() < deadline {
        let Some(e) = widget.next(Duration::from_secs(10)).await else {
            break;
        };
        let received = chrono::Utc::now().timestamp_micros();
        if let crate::contract::OutboundPayload::AgentMessage(m) = &e.payload
            && let Some(us) = m
                .text
                .split("emit_us=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse::<i64>().ok())
        {
            latencies.push(Duration::from_micros((received - us).max(0) as u64));
        }
    }
    latencies.sort();
    let pick = |q: f64| {
        (!latencies.is_empty()).then(|| latencies[((latencies.len() - 1) as f64 * q) as usize])
    };
    let report = LiveReport {
        streams,
        open_time,
        rss_before,
        rss_after,
        idle_cpu_percent,
        relayed: latencies.len(),
        relay_p50: pick(0.5),
        relay_p99: pick(0.99),
        relay_max: latencies.last().copied(),
    };
    drop(widget);
    stop.cancel();
    let _ = task.await;
    client.close().await;
    Ok(report)
}
