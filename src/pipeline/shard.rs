//! Work-shard consumers. Each shard queue has a single active consumer
//! across all replicas; inside a worker, messages are processed concurrently
//! across conversations but one at a time, in delivery order, per
//! conversation ("lanes").
use super::Context;
use super::handler::{self, WorkItem};
use super::meta::Meta;
use super::rejection::{self, Rejected};
use super::subscription::{Subscription, shards_to_release, subscribe};
use crate::amqp::{self, ChannelKeeper, Publisher};
use crate::contract::{InboundEvent, InboundKind};
use crate::error::InfraError;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Acker, Connection};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

struct Lane {
    tx: mpsc::UnboundedSender<(u16, Delivery)>,
    pending: Arc<AtomicUsize>,
}

/// Consume the shards on `conn` until `stop` (graceful) or until the
/// connection fails (`lost` is then cancelled).
pub async fn run(
    ctx: Arc<Context>,
    conn: &Connection,
    keeper: &ChannelKeeper,
    publisher: Publisher,
    shard_order: Vec<u16>,
    preferred: usize,
    stop: CancellationToken,
) -> Result<(), InfraError> {
    let lost = CancellationToken::new();
    let (tx, mut rx) =
        mpsc::channel::<(u16, u64, Delivery)>(usize::from(ctx.settings.prefetch).max(1) * 4);
    let shards = ctx.settings.shards;
    let in_flight: Arc<Vec<AtomicUsize>> =
        Arc::new((0..shards).map(|_| AtomicUsize::new(0)).collect());
    let mut subs: HashMap<u16, Subscription> = HashMap::new();

    // Subscribe to the preferred shards now and to the others after a pause,
    // so that replicas starting together split the shards between them
    // (the first subscriber of a single-active-consumer queue is the active one).
    let mut standby: Vec<u16> = shard_order[preferred..].to_vec();
    for &shard in &shard_order[..preferred] {
        subs.insert(
            shard,
            subscribe(&ctx, conn, keeper, shard, &tx, &lost).await?,
        );
    }
    let standby_at = tokio::time::Instant::now() + ctx.standby_delay;
    // Shards being handed to their preferred worker, with the deliveries
    // held back (neither processed nor acked) until the hand-over.
    let mut releasing: HashMap<u16, Vec<Delivery>> = HashMap::new();
    // Live workers and when each was first seen (a newcomer gets its shards
    // once it has had time to subscribe).
    let mut first_seen: HashMap<String, tokio::time::Instant> = HashMap::new();

    let shared = Arc::new(LaneShared {
        ctx: ctx.clone(),
        publisher,
        permits: Semaphore::new(ctx.settings.concurrency.max(1)),
        in_flight: in_flight.clone(),
        stop: stop.clone(),
        lost: lost.clone(),
    });
    let mut lanes: HashMap<(String, String), Lane> = HashMap::new();
    let mut lane_tasks = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let mut rebalance = tokio::time::interval(super::membership::HEARTBEAT);
    let mut drain_check = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (shard, generation, delivery) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = lost.cancelled() => break,
            _ = tokio::time::sleep_until(standby_at), if !standby.is_empty() => {
                for shard in std::mem::take(&mut standby) {
                    subs.insert(shard, subscribe(&ctx, conn, keeper, shard, &tx, &lost).await?);
                }
                continue;
            }
            _ = sweep.tick() => {
                lanes.retain(|_, lane| lane.pending.load(Ordering::Acquire) > 0);
                continue;
            }
            _ = rebalance.tick() => {
                for shard in shards_to_release(&ctx, &subs, &releasing, &mut first_seen).await {
                    tracing::info!(shard, "handing shard over to its preferred worker");
                    releasing.insert(shard, Vec::new());
                }
                continue;
            }
            _ = drain_check.tick(), if !releasing.is_empty() => {
                let drained: Vec<u16> = releasing
                    .keys()
                    .copied()
                    .filter(|s| in_flight[usize::from(*s)].load(Ordering::Acquire) == 0)
                    .collect();
                for shard in drained {
                    // Nothing of the shard is in progress: closing its channel
                    // returns the held deliveries to the queue, in order, and
                    // the broker activates the next (preferred) consumer.
                    if let Some(sub) = subs.remove(&shard) {
                        sub.close().await;
                    }
                    let held = releasing.remove(&shard).unwrap_or_default();
                    tracing::info!(shard, returned = held.len(), "shard handed over; staying subscribed as standby");
                    drop(held);
                    subs.insert(shard, subscribe(&ctx, conn, keeper, shard, &tx, &lost).await?);
                }
                continue;
            }
            d = rx.recv() => match d { Some(d) => d, None => break },
        };
        if subs.get(&shard).map(|s| s.generation) != Some(generation) {
            // From a released subscription: the broker took it back.
            continue;
        }
        if let Some(held) = releasing.get_mut(&shard) {
            held.push(delivery);
            continue;
        }
        let meta = Meta::read(&delivery.properties);
        let key = (meta.org_id.clone(), meta.conversation_id.clone());
        let lane = lanes.entry(key).or_insert_with(|| {
            let (ltx, lrx) = mpsc::unbounded_channel();
            let pending = Arc::new(AtomicUsize::new(0));
            lane_tasks.spawn(run_lane(shared.clone(), lrx, pending.clone()));
            Lane { tx: ltx, pending }
        });
        lane.pending.fetch_add(1, Ordering::AcqRel);
        in_flight[usize::from(shard)].fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError((shard, d))) = lane.tx.send((shard, delivery)) {
            // The lane ended (cannot happen while pending > 0): requeue.
            in_flight[usize::from(shard)].fetch_sub(1, Ordering::AcqRel);
            amqp::requeue(&d.acker).await;
        }
    }
    // Stop taking messages; let in-flight ones finish within the grace period.
    lanes.clear();
    let grace = Duration::from_millis(ctx.settings.shutdown_grace_ms);
    let drained = tokio::time::timeout(grace, async {
        while lane_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "in-flight messages did not finish within the shutdown grace period: they will be redelivered"
        );
        lane_tasks.abort_all();
    }
    // The channels close with the connection (see ChannelKeeper).
    for sub in subs.into_values() {
        sub.forwarder.abort();
    }
    drop(releasing);
    if lost.is_cancelled() && !stop.is_cancelled() {
        return Err(InfraError::ConnectionLost);
    }
    Ok(())
}

/// What every lane of a session shares.
struct LaneShared {
    ctx: Arc<Context>,
    publisher: Publisher,
    /// Bounds messages in progress across all lanes.
    permits: Semaphore,
    /// Per shard: deliveries handed to lanes and not finished yet.
    in_flight: Arc<Vec<AtomicUsize>>,
    stop: CancellationToken,
    lost: CancellationToken,
}

async fn run_lane(
    shared: Arc<LaneShared>,
    mut rx: mpsc::UnboundedReceiver<(u16, Delivery)>,
    pending: Arc<AtomicUsize>,
) {
    let LaneShared {
        ctx,
        publisher,
        permits,
        in_flight,
        stop,
        lost,
    } = &*shared;
    while let Some((shard, d)) = rx.recv().await {
        if stop.is_cancelled() || lost.is_cancelled() {
            // Not started: hand it back to the broker, in order.
            amqp::requeue(&d.acker).await;
        } else if let Ok(_permit) = permits.acquire().await {
            process(ctx, publisher, d, stop, lost).await;
        }
        in_flight[usize::from(shard)].fetch_sub(1, Ordering::AcqRel);
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn process(
    ctx: &Context,
    publisher: &Publisher,
    d: Delivery,
    stop: &CancellationToken,
    lost: &CancellationToken,
) {
    let meta = Meta::read(&d.properties);
    let acker = d.acker.clone();
    let provider = ctx
        .config
        .org(&meta.org_id)
        .map(|o| o.provider.as_str())
        .unwrap_or("unknown");
    let span = tracing::info_span!(
        "message",
        org_id = %meta.org_id,
        conversation_id = %meta.conversation_id,
        provider,
        routing_key = %meta.routing_key,
        message_id = %meta.dedupe_id,
        attempt = meta.attempts + 1,
    );
    async move {
        let parsed = match InboundKind::from_routing_key(&meta.routing_key) {
            _ if meta.org_id.is_empty() || meta.conversation_id.is_empty() => {
                // Only the intake router writes to the work exchange.
                Err("message on a work queue without the escalator's headers".to_string())
            }
            // The intake router could not accept it, but placed it here so
            // that the widget hears of it in the conversation's order.
            _ if meta.rejection.is_some() => Err(meta.rejection.clone().unwrap_or_default()),
            None => Err(format!("unknown routing key `{}`", meta.routing_key)),
            Some(kind) => InboundEvent::parse(kind, &d.data).map_err(|e| {
                format!("{} matches its schema but cannot be read: {:?} error at line {}, column {}", meta.routing_key, e.classify(), e.line(), e.column())
            }),
        };
        let event = match parsed {
            Ok(event) => event,
            Err(reason) => {
                // Kept (unacked) and retried with backoff while our
                // infrastructure fails, e.g. a full dead-letter queue.
                let mut wait = Duration::from_millis(500);
                loop {
                    let rejected = Rejected {
                        meta: &meta,
                        shard_key: d.routing_key.as_str(),
                        body: &d.data,
                        props: &d.properties,
                        reason: reason.clone(),
                    };
                    match rejection::reject(ctx, publisher, rejected).await {
                        Ok(()) => {
                            settle_ack(&acker).await;
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "cannot dead-letter the unusable message: will retry");
                            tokio::select! {
                                _ = stop.cancelled() => { amqp::requeue(&acker).await; return; }
                                _ = lost.cancelled() => return,
                                _ = tokio::time::sleep(wait) => {}
                            }
                            wait = (wait * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            }
        };
        let item = WorkItem {
            meta,
            event,
            body: d.data,
            props: d.properties,
            shard_key: d.routing_key.as_str().to_string(),
        };
        let mut wait = Duration::from_millis(500);
        loop {
            match handler::handle(ctx, publisher, &item).await {
                Ok(fate) => {
                    tracing::info!(fate = ?fate, "message handled");
                    settle_ack(&acker).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "infrastructure error: will retry the message");
                    tokio::select! {
                        _ = stop.cancelled() => { amqp::requeue(&acker).await; return; }
                        _ = lost.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn settle_ack(acker: &Acker) {
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed (connection lost?): the message will be redelivered and deduplicated");
    }
}
