//! The per-worker loop that decides which streams this worker holds.
//!
//! Every tick (a quarter of the owner TTL): heartbeat; read the registry;
//! for each live conversation, the preferred live worker (rendezvous hash)
//! streams it. This worker:
//! - claims a conversation nobody live owns when it is the preferred one,
//!   or when it stayed orphaned for three ticks (the preferred one is not
//!   claiming),
//! - gives up one it owns when another live worker is preferred (stop the
//!   reader, then release: the new owner resumes from the stored cursor),
//! - stops readers of conversations that ended or that another owns.
//!
//! A worker that lapsed (its heartbeat was older than the TTL, or it could
//! not beat for two thirds of it) stops all its streams at once, before
//! another worker may claim them: at no time do two workers stream one
//! conversation.
use super::Streams;
use super::assign::preferred;
use super::registry::StreamKey;
use crate::amqp::Publisher;
use std::collections::{HashMap, HashSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Run until `stop`; then stop every reader and hand its conversations back.
pub async fn run(streams: Streams, publisher: Publisher, stop: CancellationToken) {
    streams.set_publisher(Some(publisher));
    let s = streams.shared.clone();
    let ttl_ms = s.settings.owner_ttl.as_millis() as u64;
    let mut last_beat = Instant::now();
    let mut orphaned: HashMap<StreamKey, u32> = HashMap::new();
    let mut ticker = tokio::time::interval(s.settings.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match s.registry.heartbeat(&s.instance, ttl_ms).await {
            Ok(beat) => {
                if !beat.was_live && streams.open_count() > 0 {
                    tracing::warn!(
                        "this worker's stream heartbeat lapsed: stopping its streams (others may have taken them)"
                    );
                    streams.stop_all();
                }
                last_beat = Instant::now();
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream heartbeat failed");
                if last_beat.elapsed() > s.settings.self_fence() && streams.open_count() > 0 {
                    tracing::warn!(
                        "no stream heartbeat for too long: stopping this worker's streams before others take them"
                    );
                    streams.stop_all();
                }
                continue;
            }
        }
        if let Err(e) = tick(&streams, &mut orphaned).await {
            tracing::warn!(error = %e, "stream scan failed");
        }
    }
    streams.set_publisher(None);
    let mine = streams.stop_all();
    for key in &mine {
        if let Err(e) = s.registry.release(key, &s.instance).await {
            tracing::debug!(error = %e, "could not release a stream: it is taken over after the owner TTL");
        }
    }
    if let Err(e) = s.registry.leave(&s.instance).await {
        tracing::debug!(error = %e, "could not leave the stream owners");
    }
    if !mine.is_empty() {
        tracing::info!(streams = mine.len(), "handed this worker's streams back");
    }
}

async fn tick(
    streams: &Streams,
    orphaned: &mut HashMap<StreamKey, u32>,
) -> Result<(), crate::error::InfraError> {
    let s = &streams.shared;
    let ttl_ms = s.settings.owner_ttl.as_millis() as u64;
    let snap = s.registry.scan(ttl_ms).await?;
    crate::observability::metrics::live_conversations(snap.entries.len());
    let live: HashSet<&str> = snap.live.iter().map(String::as_str).collect();
    let me = s.instance.as_str();
    let mut registered = HashSet::with_capacity(snap.entries.len());
    for (key, owner) in &snap.entries {
        registered.insert(key.clone());
        let field = key.field();
        let want = preferred(&snap.live, &field);
        let running = streams.is_running(key);
        if owner == me {
            if want.is_some_and(|w| w != me && live.contains(w)) {
                // Another worker should hold it (it joined): hand it over.
                streams.stop(key);
                s.registry.release(key, me).await?;
                tracing::debug!(conversation_id = %key.conversation_id, "stream handed over to the preferred worker");
            } else if !running && !streams.recently_lost(key) {
                start(streams, key);
            }
            orphaned.remove(key);
            continue;
        }
        if !owner.is_empty() && live.contains(owner.as_str()) {
            // Someone else live has it.
            if running {
                streams.stop(key);
            }
            orphaned.remove(key);
            continue;
        }
        let waited = orphaned.entry(key.clone()).or_insert(0);
        *waited += 1;
        if want == Some(me) || *waited > 3 {
            if s.registry.claim(key, me, ttl_ms).await? == Some(true) {
                if !owner.is_empty() {
                    tracing::info!(conversation_id = %key.conversation_id, "took over the stream of a conversation whose owner is gone");
                }
                start(streams, key);
            }
            orphaned.remove(key);
        }
    }
    orphaned.retain(|k, _| registered.contains(k));
    for key in streams.running_keys() {
        if !registered.contains(&key) {
            // The conversation ended (or fell back to a Case).
            streams.stop(&key);
        }
    }
    streams.reap();
    Ok(())
}

fn start(streams: &Streams, key: &StreamKey) {
    if let Err(e) = streams.start(key) {
        tracing::warn!(error = %e, conversation_id = %key.conversation_id, "cannot start a stream reader");
    }
}
