//! Work-shard consumers. Each shard queue has a single active consumer
//! across all replicas; inside a worker, messages are processed concurrently
//! across conversations but one at a time, in delivery order, per
//! conversation ("lanes").
//!
//! A lane lives only while its conversation has something queued: when a
//! lane has finished everything it was sent, it tells the dispatcher, which
//! removes it unless it sent more in the meantime (only the dispatcher sends
//! to lanes, so that check cannot race). Finished lane tasks are reaped as
//! they end, so memory follows the work in flight, not the conversations
//! ever seen.
use super::Context;
use super::bulkhead::OrgPermits;
use super::handler::{self, WorkItem};
use super::membership;
use super::meta::Meta;
use super::rejection::{self, Rejected};
use super::subscription::{Balance, Subscription, subscribe};
use crate::amqp::{self, ChannelKeeper, Publisher};
use crate::contract::{InboundEvent, InboundKind};
use crate::error::{InfraError, Recovery};
use crate::observability::metrics;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Acker, Connection};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often a worker checks whether to hand shards to their preferred workers.
const REBALANCE_CHECK: Duration = Duration::from_secs(1);

/// A conversation: (org_id, conversation_id).
type LaneKey = (String, String);

/// Live lane tasks and deliveries they finished, for tests and the benchmark.
#[derive(Debug, Default)]
pub struct LaneGauge {
    live: AtomicUsize,
    settled: AtomicU64,
}

impl LaneGauge {
    /// Lane tasks alive now (one per conversation with work queued or running).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Deliveries the lanes finished with (handled, or handed back to the broker).
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }
}

/// Counts one live lane task for as long as it exists (also when aborted).
struct LiveLane(Arc<Context>);

impl LiveLane {
    fn enter(ctx: &Arc<Context>) -> LiveLane {
        ctx.lanes.live.fetch_add(1, Ordering::AcqRel);
        metrics::lanes(1.0);
        LiveLane(ctx.clone())
    }
}

impl Drop for LiveLane {
    fn drop(&mut self) {
        self.0.lanes.live.fetch_sub(1, Ordering::AcqRel);
        metrics::lanes(-1.0);
    }
}

/// The dispatcher's end of a lane.
struct Lane {
    tx: mpsc::UnboundedSender<(u16, Delivery)>,
    /// Deliveries sent to the lane so far.
    sent: u64,
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
    announce(&ctx, &subs).await;
    let standby_at = tokio::time::Instant::now() + ctx.standby_delay;
    // Shards being handed to their preferred worker, with the deliveries
    // held back (neither processed nor acked) until the hand-over.
    let mut releasing: HashMap<u16, Vec<Delivery>> = HashMap::new();
    let mut balance = Balance::default();

    let shared = Arc::new(LaneShared {
        ctx: ctx.clone(),
        publisher,
        org_permits: OrgPermits::new(&ctx.config, ctx.settings.org_concurrency()),
        permits: Semaphore::new(ctx.settings.concurrency.max(1)),
        in_flight: in_flight.clone(),
        stop: stop.clone(),
        lost: lost.clone(),
    });
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel::<(LaneKey, u64)>();
    let mut lanes: HashMap<LaneKey, Lane> = HashMap::new();
    let mut lane_tasks = JoinSet::new();
    let mut heartbeat = tokio::time::interval(membership::HEARTBEAT);
    let mut rebalance = tokio::time::interval(REBALANCE_CHECK);
    let mut drain_check = tokio::time::interval(Duration::from_millis(50));
    loop {
        let (shard, generation, delivery) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = lost.cancelled() => break,
            _ = tokio::time::sleep_until(standby_at), if !standby.is_empty() => {
                for shard in std::mem::take(&mut standby) {
                    subs.insert(shard, subscribe(&ctx, conn, keeper, shard, &tx, &lost).await?);
                }
                announce(&ctx, &subs).await;
                continue;
            }
            Some((key, done)) = idle_rx.recv() => {
                // The lane finished all it was sent: end it, unless more
                // went its way since (then it reports again later).
                if lanes.get(&key).is_some_and(|lane| lane.sent == done) {
                    lanes.remove(&key);
                }
                continue;
            }
            Some(ended) = lane_tasks.join_next(), if !lane_tasks.is_empty() => {
                if let Err(e) = ended
                    && !e.is_cancelled()
                {
                    // A bug. The dead lane's deliveries are unacked and would
                    // stay so while the conversation's later ones ran in a new
                    // lane: out of order. A new session gets them all back
                    // from the broker, in order.
                    tracing::error!(error = %e, "a lane task failed: rebuilding the session so that its deliveries come back in order");
                    lost.cancel();
                }
                continue;
            }
            _ = heartbeat.tick() => {
                announce(&ctx, &subs).await;
                continue;
            }
            _ = rebalance.tick() => {
                for shard in balance.shards_to_release(&ctx, &subs, &releasing).await {
                    if subs.get(&shard).is_some_and(|s| s.active) {
                        tracing::info!(shard, "handing shard over to its preferred worker");
                    } else {
                        tracing::debug!(shard, "giving way to the shard's preferred worker");
                    }
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
                    let mut active = false;
                    if let Some(sub) = subs.remove(&shard) {
                        active = sub.active;
                        sub.close().await;
                    }
                    let held = releasing.remove(&shard).unwrap_or_default();
                    if active {
                        tracing::info!(shard, returned = held.len(), "shard handed over; staying subscribed as standby");
                    } else {
                        tracing::info!(shard, "gave way on a shard with no deliveries: re-subscribed as standby");
                    }
                    drop(held);
                    subs.insert(shard, subscribe(&ctx, conn, keeper, shard, &tx, &lost).await?);
                }
                continue;
            }
            d = rx.recv() => match d { Some(d) => d, None => break },
        };
        match subs.get_mut(&shard) {
            Some(sub) if sub.generation == generation => sub.active = true,
            // From a released subscription: the broker took it back.
            _ => continue,
        }
        if let Some(n) = redelivery_count(&delivery) {
            tracing::info!(
                shard,
                delivery_count = n,
                "message redelivered by the broker"
            );
        }
        if let Some(held) = releasing.get_mut(&shard) {
            held.push(delivery);
            continue;
        }
        let meta = Meta::read(&delivery.properties);
        let key = (meta.org_id, meta.conversation_id);
        let lane = lanes.entry(key.clone()).or_insert_with(|| {
            let (ltx, lrx) = mpsc::unbounded_channel();
            let live = LiveLane::enter(&ctx);
            lane_tasks.spawn(run_lane(
                shared.clone(),
                key.clone(),
                lrx,
                idle_tx.clone(),
                live,
            ));
            Lane { tx: ltx, sent: 0 }
        });
        lane.sent += 1;
        in_flight[usize::from(shard)].fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError((shard, d))) = lane.tx.send((shard, delivery)) {
            // The lane task died (a panic; only the dispatcher ends lanes
            // otherwise): requeue, and the next delivery gets a new lane.
            in_flight[usize::from(shard)].fetch_sub(1, Ordering::AcqRel);
            lanes.remove(&key);
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

/// Refresh this worker's membership and subscription records.
async fn announce(ctx: &Context, subs: &HashMap<u16, Subscription>) {
    let mut shards: Vec<u16> = subs.keys().copied().collect();
    shards.sort_unstable();
    if let Err(e) = membership::heartbeat(&ctx.store, &ctx.instance_id, &shards).await {
        tracing::debug!(error = %e, "membership heartbeat failed");
    }
}

/// `x-delivery-count` of a quorum-queue delivery that was returned before.
fn redelivery_count(d: &Delivery) -> Option<i64> {
    use lapin::types::AMQPValue;
    let headers = d.properties.headers().as_ref()?;
    let n = match headers.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        _ => return None,
    };
    (n > 0).then_some(n)
}

/// What every lane of a session shares.
struct LaneShared {
    ctx: Arc<Context>,
    publisher: Publisher,
    /// Each org's share of the worker's concurrency (taken first).
    org_permits: OrgPermits,
    /// Bounds messages in progress across all lanes (taken second).
    permits: Semaphore,
    /// Per shard: deliveries handed to lanes and not finished yet.
    in_flight: Arc<Vec<AtomicUsize>>,
    stop: CancellationToken,
    lost: CancellationToken,
}

/// One conversation's deliveries, one at a time, in order. Ends when the
/// dispatcher drops its sender, which it does once the lane reported that it
/// finished everything it was sent.
async fn run_lane(
    shared: Arc<LaneShared>,
    key: LaneKey,
    mut rx: mpsc::UnboundedReceiver<(u16, Delivery)>,
    idle: mpsc::UnboundedSender<(LaneKey, u64)>,
    _live: LiveLane,
) {
    let LaneShared {
        ctx,
        publisher,
        org_permits,
        permits,
        in_flight,
        stop,
        lost,
    } = &*shared;
    let org = org_permits.of(&key.0);
    let mut done: u64 = 0;
    while let Some((shard, d)) = rx.recv().await {
        if stop.is_cancelled() || lost.is_cancelled() {
            // Not started: hand it back to the broker, in order.
            amqp::requeue(&d.acker).await;
        } else {
            // The org's permit first, then the worker's: a lane waiting for
            // its org's share never holds a slot another org could use.
            let org_permit = org.acquire().await;
            let permit = permits.acquire().await;
            if org_permit.is_ok() && permit.is_ok() {
                process(ctx, publisher, d, stop, lost).await;
            }
        }
        in_flight[usize::from(shard)].fetch_sub(1, Ordering::AcqRel);
        ctx.lanes.settled.fetch_add(1, Ordering::AcqRel);
        done += 1;
        if rx.is_empty() {
            let _ = idle.send((key.clone(), done));
        }
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
    let trace = crate::trace_context::from_amqp(&d.properties);
    let started = std::time::Instant::now();
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
        message_type = %meta.routing_key,
        mode = tracing::field::Empty,
        message_id = %meta.dedupe_id,
        attempt = meta.attempts + 1,
        trace_id = trace.as_ref().map(|t| t.trace_id().to_string()),
    );
    crate::trace_context::continue_in(&span, trace.as_ref());
    let work = async move {
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
                format!(
                    "{} matches its schema but cannot be read: {:?} error at line {}, column {}",
                    meta.routing_key,
                    e.classify(),
                    e.line(),
                    e.column()
                )
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
                            metrics::message(&meta.routing_key, "rejected", started);
                            return;
                        }
                        Err(e) if e.recovery() == Recovery::RebuildSession => {
                            tracing::warn!(error = %e, "cannot dead-letter the unusable message (AMQP session broken): rebuilding the session");
                            lost.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "cannot dead-letter the unusable message: will retry");
                            if !pause(&mut wait, stop, lost, &acker).await {
                                return;
                            }
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
            let err = match handler::handle(ctx, publisher, &item).await {
                Ok(fate) => {
                    tracing::info!(fate = ?fate, "message handled");
                    settle_ack(&acker).await;
                    metrics::message(&item.meta.routing_key, fate.outcome(), started);
                    return;
                }
                Err(err) => err,
            };
            match err.recovery() {
                Recovery::Wait => {
                    tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "infrastructure error: will retry the message");
                    if !pause(&mut wait, stop, lost, &acker).await {
                        return;
                    }
                }
                Recovery::DeadLetter => {
                    match handler::dead_letter_stuck(publisher, &item, &err).await {
                        Ok(()) => {
                            settle_ack(&acker).await;
                            metrics::message(&item.meta.routing_key, "dead_lettered", started);
                        }
                        Err(e) if e.recovery() == Recovery::RebuildSession => {
                            tracing::warn!(error = %e, "cannot dead-letter (AMQP session broken): rebuilding the session");
                            lost.cancel();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot dead-letter: handing the message back to the broker");
                            amqp::requeue(&acker).await;
                        }
                    }
                    return;
                }
                Recovery::RunAgain => {
                    tracing::warn!(error = %err, wait_ms = wait.as_millis() as u64, "fenced off: running the message again under a new lease, in its place");
                    if !pause(&mut wait, stop, lost, &acker).await {
                        return;
                    }
                }
                Recovery::RebuildSession => {
                    // Unacked: the broker redelivers it once the session is gone.
                    tracing::warn!(error = %err, "AMQP session broken: tearing it down to rebuild it");
                    lost.cancel();
                    return;
                }
            }
        }
    };
    crate::trace_context::scope(trace, work.instrument(span)).await
}

/// Wait `wait` before trying a message again after an infrastructure error
/// that clears by waiting (the wait doubles, up to 10 s). False when the
/// session ends first: on shutdown the message is handed back; when the
/// connection is lost the broker redelivers it.
async fn pause(
    wait: &mut Duration,
    stop: &CancellationToken,
    lost: &CancellationToken,
    acker: &Acker,
) -> bool {
    tokio::select! {
        _ = stop.cancelled() => { amqp::requeue(acker).await; return false; }
        _ = lost.cancelled() => return false,
        _ = tokio::time::sleep(*wait) => {}
    }
    *wait = (*wait * 2).min(Duration::from_secs(10));
    true
}

async fn settle_ack(acker: &Acker) {
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "ack failed (connection lost?): the message will be redelivered and deduplicated");
    }
}
