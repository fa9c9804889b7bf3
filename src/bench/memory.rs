//! `escalator bench --conversations N`: the worker's memory as distinct
//! conversations go through it. Cheap events (`customer.typing` of
//! conversations without a ticket: accepted, no provider call) for N
//! distinct conversations, published with pipelined confirms; after each
//! checkpoint (2,000, 10,000, N), once they are all handled, the process's
//! resident set size and the worker's live lanes. Memory must follow the work
//! in flight, not the conversations ever seen.
use super::{PUBLISH_IN_FLIGHT, STALL_TIMEOUT, measure, report};
use crate::pipeline::Context;
use crate::sandbox::{Sandbox, ZENDESK_ORG, sandbox_config};
use crate::settings::Settings;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Conversations after which the RSS is read (N is added).
const CHECKPOINTS: [usize; 2] = [2_000, 10_000];

/// RSS and live lanes once `conversations` were handled.
pub struct Checkpoint {
    pub conversations: usize,
    /// Resident set size in bytes (`VmRSS`), when known.
    pub rss: Option<u64>,
    pub live_lanes: usize,
    pub elapsed: Duration,
}

pub struct MemoryReport {
    pub concurrency: usize,
    /// RSS with the worker started and idle.
    pub idle_rss: Option<u64>,
    pub checkpoints: Vec<Checkpoint>,
    pub peak_rss: Option<u64>,
}

pub async fn run(settings: &Settings, conversations: usize) -> Result<MemoryReport, String> {
    let sandbox = Sandbox::start(settings.clone(), sandbox_config).await?;
    let result = measure(&sandbox, settings, conversations).await;
    sandbox.stop().await;
    result
}

async fn measure(
    sandbox: &Sandbox,
    settings: &Settings,
    conversations: usize,
) -> Result<MemoryReport, String> {
    let ctx = sandbox.worker.context().clone();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let idle_rss = report::current_rss();
    let mut targets: Vec<usize> = CHECKPOINTS
        .into_iter()
        .filter(|&c| c < conversations)
        .collect();
    targets.push(conversations);
    let started = Instant::now();
    let mut done = 0;
    let mut checkpoints = Vec::new();
    for target in targets {
        let now = Instant::now();
        let sent_at = chrono::Utc::now();
        // Bodies are made as they are published: the benchmark's own memory
        // stays out of the figures.
        measure::publish_all(target - done, PUBLISH_IN_FLIGHT, |i| {
            let conv = format!("mem-{run}-{:07}", done + i);
            let body = serde_json::json!({
                "org_id": ZENDESK_ORG, "conversation_id": conv, "typing": true, "sent_at": sent_at,
            });
            async move {
                sandbox
                    .publish("customer.typing", &format!("{conv}-typing"), &body)
                    .await
            }
        })
        .await?;
        until_settled(&ctx, target as u64).await?;
        let live_lanes = until_lanes_reaped(&ctx, settings.concurrency).await;
        let point = Checkpoint {
            conversations: target,
            rss: report::current_rss(),
            live_lanes,
            elapsed: started.elapsed(),
        };
        println!(
            "memory: {target:>7} conversations handled ({:.1} s for the last {}): RSS {}, live lanes {live_lanes}",
            now.elapsed().as_secs_f64(),
            target - done,
            report::mib(point.rss),
        );
        checkpoints.push(point);
        done = target;
    }
    Ok(MemoryReport {
        concurrency: settings.concurrency,
        idle_rss,
        checkpoints,
        peak_rss: report::peak_rss(),
    })
}

/// Wait until the worker's lanes finished `count` deliveries.
async fn until_settled(ctx: &Arc<Context>, count: u64) -> Result<(), String> {
    let mut last = (ctx.lanes.settled(), Instant::now());
    while ctx.lanes.settled() < count {
        let settled = ctx.lanes.settled();
        if settled != last.0 {
            last = (settled, Instant::now());
        } else if last.1.elapsed() > STALL_TIMEOUT {
            return Err(format!(
                "memory: stalled at {settled} of {count} handled messages for {} s",
                STALL_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Wait (a few seconds at most) until finished lanes are reaped; the live count.
async fn until_lanes_reaped(ctx: &Arc<Context>, concurrency: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.lanes.live() > concurrency && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.lanes.live()
}

impl MemoryReport {
    pub fn print(&self) {
        println!();
        println!("escalator bench report: memory per conversation seen");
        println!("====================================================");
        println!("  concurrency              {}", self.concurrency);
        println!("  RSS idle                 {}", report::mib(self.idle_rss));
        for c in &self.checkpoints {
            println!(
                "  RSS after {:>7} conv.   {}  (live lanes {}, {:.1} s)",
                c.conversations,
                report::mib(c.rss),
                c.live_lanes,
                c.elapsed.as_secs_f64()
            );
        }
        println!(
            "  peak RSS                 {} (VmHWM)",
            report::mib(self.peak_rss)
        );
        let reaped = self
            .checkpoints
            .iter()
            .all(|c| c.live_lanes <= self.concurrency);
        println!(
            "  finished lanes reaped    {}",
            if reaped { "yes" } else { "NO" }
        );
    }
}
