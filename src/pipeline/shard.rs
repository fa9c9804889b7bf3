//! Work-shard consumers. Each shard queue has a single active consumer
//! across all replicas; inside a worker, messages are processed concurrently
//! across conversations but one at a time, in delivery order, per
//! conversation ("lanes").
use super::Context;
use super::dead_letter::{self, Verdict};
use super::handler::{self, WorkItem};
use super::meta::Meta;
use crate::amqp::{ChannelKeeper, Publisher};
use crate::contract::{InboundEvent, InboundKind};
use crate::error::InfraError;
use crate::topology::shard_queue;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
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
    tx: mpsc::UnboundedSender<Delivery>,
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
    let (tx, mut rx) = mpsc::channel::<Delivery>(usize::from(ctx.settings.prefetch).max(1) * 4);
    let mut consumers = JoinSet::new();

    // Subscribe to the preferred shards now and to the others after a pause,
    // so that replicas starting together split the shards between them
    // (the first subscriber of a single-active-consumer queue is the active one).
    for (i, shard) in shard_order.into_iter().enumerate() {
        if i == preferred {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(ctx.standby_delay) => {}
            }
        }
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
        let tx = tx.clone();
        let lost = lost.clone();
        let stop = stop.clone();
        consumers.spawn(async move {
            use futures_util::StreamExt;
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = consumer.next() => next,
                };
                match next {
                    Some(Ok(d)) => {
                        if tx.send(d).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(shard, error = %e, "shard consumer failed");
                        lost.cancel();
                        break;
                    }
                    None => {
                        lost.cancel();
                        break;
                    }
                }
            }
        });
    }
    drop(tx);

    let permits = Arc::new(Semaphore::new(ctx.settings.concurrency.max(1)));
    let mut lanes: HashMap<(String, String), Lane> = HashMap::new();
    let mut lane_tasks = JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break,
            _ = lost.cancelled() => break,
            _ = sweep.tick() => {
                lanes.retain(|_, lane| lane.pending.load(Ordering::Acquire) > 0);
                continue;
            }
            d = rx.recv() => match d { Some(d) => d, None => break },
        };
        let meta = Meta::read(&delivery.properties);
        let key = (meta.org_id.clone(), meta.conversation_id.clone());
        let lane = lanes.entry(key).or_insert_with(|| {
            let (ltx, lrx) = mpsc::unbounded_channel();
            let pending = Arc::new(AtomicUsize::new(0));
            lane_tasks.spawn(run_lane(
                ctx.clone(),
                publisher.clone(),
                permits.clone(),
                lrx,
                pending.clone(),
                stop.clone(),
                lost.clone(),
            ));
            Lane { tx: ltx, pending }
        });
        lane.pending.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::error::SendError(d)) = lane.tx.send(delivery) {
            // The lane ended (cannot happen while pending > 0): requeue.
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
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
    consumers.join_all().await;
    if lost.is_cancelled() && !stop.is_cancelled() {
        return Err(InfraError::ConnectionLost);
    }
    Ok(())
}

async fn run_lane(
    ctx: Arc<Context>,
    publisher: Publisher,
    permits: Arc<Semaphore>,
    mut rx: mpsc::UnboundedReceiver<Delivery>,
    pending: Arc<AtomicUsize>,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    while let Some(d) = rx.recv().await {
        if stop.is_cancelled() || lost.is_cancelled() {
            // Not started: hand it back to the broker, in order.
            let _ = d
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await;
        } else if let Ok(_permit) = permits.acquire().await {
            process(&ctx, &publisher, d, &stop, &lost).await;
        }
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
            None => Err(format!("unknown routing key `{}`", meta.routing_key)),
            Some(kind) => InboundEvent::parse(kind, &d.data).map_err(|e| {
                format!("{} matches its schema but cannot be read: {:?} error at line {}, column {}", meta.routing_key, e.classify(), e.line(), e.column())
            }),
        };
        let event = match parsed {
            Ok(event) => event,
            Err(reason) => {
            let verdict = Verdict {
                error_class: "invalid",
                reason,
                stage: "worker",
            };
            let rk = if meta.routing_key.is_empty() { d.routing_key.as_str().to_string() } else { meta.routing_key.clone() };
            let published = match dead_letter::start(publisher, &rk, &d.data, d.properties.clone(), &meta, &verdict).await {
                Ok(pending) => pending.wait().await,
                Err(e) => Err(e),
            };
            match published {
                Ok(()) => settle_ack(&acker).await,
                Err(_) => settle_requeue(&acker).await,
            }
            return;
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
                        _ = stop.cancelled() => { settle_requeue(&acker).await; return; }
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

async fn settle_requeue(acker: &Acker) {
    if let Err(e) = acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
    {
        tracing::warn!(error = %e, "requeue failed (connection lost?): the broker will redeliver");
    }
}
