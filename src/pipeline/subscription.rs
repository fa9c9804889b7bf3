//! This worker's subscriptions to the shard queues, and when to hand one
//! over to its preferred worker (see docs/ARCHITECTURE.md, "Balance").
use super::Context;
use crate::amqp::ChannelKeeper;
use crate::error::InfraError;
use crate::topology::shard_queue;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// This worker's subscription to one shard queue.
pub(super) struct Subscription {
    channel: lapin::Channel,
    pub(super) forwarder: tokio::task::JoinHandle<()>,
    /// Set by the first delivery: only the active consumer of a
    /// single-active-consumer queue receives any.
    pub(super) active: Arc<AtomicBool>,
    /// Tells this subscription's deliveries from those of an earlier,
    /// released one of the same shard (those went back to the queue).
    pub(super) generation: u64,
}

static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Subscribe to `shard` on a channel of its own (so that it can be released
/// alone) and forward its deliveries to the dispatcher.
pub(super) async fn subscribe(
    ctx: &Context,
    conn: &Connection,
    keeper: &ChannelKeeper,
    shard: u16,
    tx: &mpsc::Sender<(u16, u64, Delivery)>,
    lost: &CancellationToken,
) -> Result<Subscription, InfraError> {
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let channel = conn.create_channel().await?;
    keeper.keep(&channel);
    channel
        .basic_qos(ctx.settings.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            ShortString::from(shard_queue(shard)),
            ShortString::from(format!("worker-{}-{shard:02}", ctx.instance_id)),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let active = Arc::new(AtomicBool::new(false));
    let (tx, lost, flag) = (tx.clone(), lost.clone(), active.clone());
    let forwarder = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(next) = consumer.next().await {
            match next {
                Ok(d) => {
                    flag.store(true, Ordering::Release);
                    if tx.send((shard, generation, d)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(shard, error = %e, "shard consumer failed");
                    break;
                }
            }
        }
        // The stream ended without us closing it: the connection is gone.
        lost.cancel();
    });
    Ok(Subscription {
        channel,
        forwarder,
        active,
        generation,
    })
}

impl Subscription {
    /// Give the shard back to the broker: unacked deliveries return to the
    /// queue, ahead of the rest, for the next consumer.
    pub(super) async fn close(self) {
        self.forwarder.abort();
        let _ = self
            .channel
            .close(200, ShortString::from("shard released"))
            .await;
    }
}

/// Shards this worker is active on although another live worker is their
/// preferred owner (and has been live long enough to have subscribed).
pub(super) async fn shards_to_release(
    ctx: &Context,
    subs: &HashMap<u16, Subscription>,
    releasing: &HashMap<u16, Vec<Delivery>>,
    first_seen: &mut HashMap<String, tokio::time::Instant>,
) -> Vec<u16> {
    let Ok(live) = super::membership::live(&ctx.store).await else {
        return Vec::new();
    };
    let now = tokio::time::Instant::now();
    first_seen.retain(|m, _| live.contains(m));
    for m in &live {
        first_seen.entry(m.clone()).or_insert(now);
    }
    let settled = |m: &str| {
        first_seen
            .get(m)
            .is_some_and(|t| now.duration_since(*t) >= ctx.standby_delay * 2)
    };
    if !live.iter().all(|m| settled(m)) {
        // Membership is changing: wait until it is steady.
        return Vec::new();
    }
    let (order, preferred) =
        super::membership::shard_order(&ctx.instance_id, &live, ctx.settings.shards);
    let mine = &order[..preferred];
    subs.iter()
        .filter(|(shard, sub)| {
            !mine.contains(shard)
                && !releasing.contains_key(shard)
                && sub.active.load(Ordering::Acquire)
        })
        .map(|(shard, _)| *shard)
        .collect()
}
