//! The pipeline stage: escalations through the in-process sandbox (worker +
//! Zendesk simulator), from `escalator.inbound` to `escalation.created` on
//! `escalator.outbound`.
use super::cpu::{self, CpuUse};
use super::measure::{self, Arrival, Measurement, Source, Stamp};
use super::profile::{self, Profile, Sampler};
use super::{PUBLISH_IN_FLIGHT, WARMUP};
use crate::contract::OutboundPayload;
use crate::sandbox::{Listener, Sandbox, ZENDESK_ORG, sandbox_config};
use crate::settings::Settings;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

const ROUTING_KEY: &str = "escalation.requested";

/// The figures of the pipeline stage.
pub struct PipelineResult {
    pub measurement: Measurement,
    /// Where the time went (worker records, simulator log, queue polls).
    pub profile: Option<Profile>,
    /// Size of one published event body, in bytes.
    pub body_bytes: usize,
    /// CPU used during the measured run.
    pub cpu: Option<CpuUse>,
}

pub async fn run(settings: &Settings, count: usize) -> Result<PipelineResult, String> {
    let sandbox = Sandbox::start(settings.clone(), sandbox_config).await?;
    let result = measure(&sandbox, settings, count).await;
    sandbox.stop().await;
    result
}

async fn measure(
    sandbox: &Sandbox,
    settings: &Settings,
    count: usize,
) -> Result<PipelineResult, String> {
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let listener = sandbox.listen(&format!("{ZENDESK_ORG}.#")).await?;
    let source = Outbound { listener };

    println!("pipeline: warming up with {WARMUP} escalations");
    let warm: Vec<String> = (0..WARMUP)
        .map(|i| format!("bench-{run}-warm-{i:03}"))
        .collect();
    let (source, _, _, _) = round(sandbox, source, &warm, "pipeline warm-up").await?;
    let requests_before = sandbox.sim.requests().len();

    println!("pipeline: publishing {count} escalations ({PUBLISH_IN_FLIGHT} in flight)");
    let ids: Vec<String> = (0..count).map(|i| format!("bench-{run}-{i:06}")).collect();
    let sampler = Sampler::start(settings).await;
    let sampler_started = sampler.as_ref().map(|s| s.started);
    let (cpu_before, started) = (cpu::Snapshot::take(), Instant::now());
    let result = round(sandbox, source, &ids, "pipeline").await;
    let cpu = cpu_before
        .zip(cpu::Snapshot::take())
        .map(|(a, b)| a.until(&b, started.elapsed()));
    let samples = match sampler {
        Some(s) => s.finish().await,
        None => Vec::new(),
    };
    let (_, sent, last_confirm, received) = result?;
    let measurement = Measurement::new(&ids, &sent, last_confirm, &received)?;
    println!(
        "pipeline: {count} escalation.created events in {:.2} s (publishing took {:.2} s)",
        measurement.elapsed.as_secs_f64(),
        measurement.publish_elapsed.as_secs_f64()
    );
    let requests = sandbox.sim.requests();
    let requests = &requests[requests_before.min(requests.len())..];
    let profile = profile::build(
        settings,
        &ids,
        &sent,
        &received,
        requests,
        samples,
        sampler_started,
    )
    .await;
    let body_bytes = serde_json::to_vec(&escalation(&ids[0]))
        .map(|b| b.len())
        .unwrap_or(0);
    Ok(PipelineResult {
        measurement,
        profile,
        body_bytes,
        cpu,
    })
}

type Round = (Outbound, Vec<Stamp>, Instant, HashMap<String, Stamp>);

/// Publish one escalation per id while collecting their `escalation.created` events.
async fn round(
    sandbox: &Sandbox,
    source: Outbound,
    ids: &[String],
    what: &str,
) -> Result<Round, String> {
    let bodies: Vec<serde_json::Value> = ids.iter().map(|id| escalation(id)).collect();
    let message_ids: Vec<String> = ids.iter().map(|id| format!("{id}-escalation")).collect();
    let collector = measure::spawn_collector(source, ids, what);
    let published = measure::publish_all(ids.len(), PUBLISH_IN_FLIGHT, |i| {
        sandbox.publish(ROUTING_KEY, &message_ids[i], &bodies[i])
    })
    .await;
    let ((sent, last_confirm), (source, received)) =
        measure::join_run(what, published, collector).await?;
    Ok((source, sent, last_confirm, received))
}

/// An `escalation.requested` event like the demo's, for the sandbox Zendesk org.
pub fn escalation(conversation_id: &str) -> serde_json::Value {
    crate::sandbox::sample_escalation(ZENDESK_ORG, conversation_id)
}

/// The sandbox's outbound listener as a [`Source`] of `escalation.created` events.
struct Outbound {
    listener: Listener,
}

impl Source for Outbound {
    async fn next(&mut self, wait: Duration) -> Result<Arrival, String> {
        let started = Instant::now();
        match self.listener.next(wait).await {
            Some(event) => match &event.payload {
                OutboundPayload::EscalationCreated(_) => Ok(Arrival::Event(event.conversation_id)),
                OutboundPayload::EscalationFailed(f) => Err(format!(
                    "the escalation of {} failed: {} (the simulator should accept every ticket)",
                    event.conversation_id, f.reason
                )),
                _ => Ok(Arrival::Ignored),
            },
            // Listener::next says None both on timeout and when the consumer ends.
            None if started.elapsed() + Duration::from_millis(5) >= wait => Ok(Arrival::TimedOut),
            None => Err(
                "the outbound listener stopped (connection lost?) or got an unreadable event"
                    .into(),
            ),
        }
    }
}
