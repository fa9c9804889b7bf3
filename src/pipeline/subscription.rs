//! This worker's subscriptions to the shard queues, and when to hand one
//! over to its preferred worker (see docs/ARCHITECTURE.md, "Balance").
use super::Context;
use super::membership::{View, preferred_owner};
use crate::amqp::ChannelKeeper;
use crate::error::InfraError;
use crate::topology::shard_queue;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// This worker's subscription to one shard queue.
pub(super) struct Subscription {
    channel: lapin::Channel,
    pub(super) forwarder: tokio::task::JoinHandle<()>,
    /// Whether a delivery came through this subscription: only the active
    /// consumer of a single-active-consumer queue receives any.
    pub(super) active: bool,
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
    let (tx, lost) = (tx.clone(), lost.clone());
    let forwarder = tokio::spawn(async move {
        use futures_util::StreamExt;
        while let Some(next) = consumer.next().await {
            match next {
                Ok(d) => {
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
        active: false,
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

/// When to give a shard to its preferred worker: only once that worker
/// proves it is there to take it (a live subscription record for the shard,
/// see [`super::membership`]), and only once per fleet: a shard that comes
/// back after a hand-over (the preferred worker was not the next consumer
/// after all) stays here until the membership changes or that worker
/// subscribes anew. So hand-overs cannot loop, and the few deliveries a
/// hand-over returns to the queue are returned once, not until the broker's
/// delivery limit.
///
/// The broker does not tell a consumer that it is active (BROKER.md), so a
/// worker gives up every shard it does not prefer, active or standby, busy or
/// idle: closing and re-subscribing a standby is cheap, and the broker then
/// activates the earliest waiting consumer, the preferred worker. That is
/// how a worker joining an idle fleet gets its share without traffic.
#[derive(Default)]
pub(super) struct Balance {
    /// Shards given up, with the live set they were given up in.
    yielded: HashMap<u16, Vec<String>>,
}

impl Balance {
    /// Shards to release now (each is then drained, closed and re-subscribed).
    pub(super) async fn shards_to_release(
        &mut self,
        ctx: &Context,
        subs: &HashMap<u16, Subscription>,
        releasing: &HashMap<u16, Vec<Delivery>>,
    ) -> Vec<u16> {
        match super::membership::view(&ctx.store, ctx.settings.shards).await {
            Ok(view) => self.decide(&ctx.instance_id, &view, subs.keys().copied(), releasing),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the membership: no hand-over this round");
                Vec::new()
            }
        }
    }

    fn decide(
        &mut self,
        me: &str,
        view: &View,
        subscribed: impl Iterator<Item = u16>,
        releasing: &HashMap<u16, Vec<Delivery>>,
    ) -> Vec<u16> {
        self.yielded.retain(|&shard, live| {
            *live == view.live && view.subscribes(preferred_owner(me, &view.live, shard), shard)
        });
        let mut release: Vec<u16> = subscribed
            .filter(|shard| !releasing.contains_key(shard) && !self.yielded.contains_key(shard))
            .filter(|&shard| {
                let owner = preferred_owner(me, &view.live, shard);
                owner != me && view.subscribes(owner, shard)
            })
            .collect();
        release.sort_unstable();
        for &shard in &release {
            self.yielded.insert(shard, view.live.clone());
        }
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(live: &[&str], subscribers: &[&[&str]]) -> View {
        View {
            live: live.iter().map(|s| s.to_string()).collect(),
            subscribers: subscribers
                .iter()
                .map(|s| s.iter().map(|m| m.to_string()).collect())
                .collect(),
        }
    }

    #[test]
    fn a_member_that_does_not_subscribe_gets_nothing() {
        let mut b = Balance::default();
        // "b" is live (prefers shards 1 and 3) but holds no subscription.
        let v = view(&["a", "b"], &[&["a"], &["a"], &["a"], &["a"]]);
        assert!(b.decide("a", &v, 0..4, &HashMap::new()).is_empty());
    }

    #[test]
    fn a_shard_is_given_up_once_per_membership() {
        let mut b = Balance::default();
        let v = view(
            &["a", "b"],
            &[&["a", "b"], &["a", "b"], &["a", "b"], &["a", "b"]],
        );
        assert_eq!(b.decide("a", &v, 0..4, &HashMap::new()), vec![1, 3]);
        // Shard 1 came back (b was not the next consumer): not again.
        assert!(b.decide("a", &v, 0..4, &HashMap::new()).is_empty());
        // b subscribes anew (its record went and came back): once more.
        let gone = view(
            &["a", "b"],
            &[&["a", "b"], &["a"], &["a", "b"], &["a", "b"]],
        );
        assert!(b.decide("a", &gone, 0..4, &HashMap::new()).is_empty());
        assert_eq!(b.decide("a", &v, 0..4, &HashMap::new()), vec![1]);
        // The membership changes: the deal is new.
        let all: &[&str] = &["a", "b", "c"];
        let three = view(&["a", "b", "c"], &[all; 4]);
        assert_eq!(b.decide("a", &three, 0..4, &HashMap::new()), vec![1, 2]);
    }
}
