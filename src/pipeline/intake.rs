//! The intake router: takes every inbound message in publish order (one
//! active consumer), rejects what cannot be handled, and forwards the rest to
//! the work shard of its conversation.
use super::Context;
use super::dead_letter::{self, Verdict};
use super::meta::Meta;
use crate::amqp::{self, ChannelKeeper, PendingConfirm, Publisher};
use crate::contract::InboundKind;
use crate::error::InfraError;
use crate::topology::{INTAKE_QUEUE, WORK_EXCHANGE, shard_key, shard_of};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Connection};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Where an inbound message goes.
#[derive(Debug)]
pub enum Route {
    /// To this work shard, with these headers.
    Shard { shard: u16, meta: Meta },
    /// Straight to the dead-letter queue.
    Reject(Verdict),
}

/// Decide the route of one inbound message. Pure: no I/O.
pub fn route(
    ctx: &Context,
    routing_key: &str,
    body: &[u8],
    amqp_message_id: Option<&str>,
) -> Route {
    let reject = |reason: String| {
        Route::Reject(Verdict {
            error_class: "invalid",
            reason,
            stage: "intake",
        })
    };
    let Some(kind) = InboundKind::from_routing_key(routing_key) else {
        return reject(format!(
            "unknown routing key `{routing_key}`: expected one of {}",
            InboundKind::ALL.map(|k| k.routing_key()).join(", ")
        ));
    };
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return reject(format!("body is not JSON ({})", e.classify_name())),
    };
    if let Err(reason) = ctx.schemas.validate_inbound(kind, &value) {
        return reject(format!("{routing_key} does not match its schema: {reason}"));
    }
    // The schema guarantees these fields' types; the typed event is parsed
    // once, by the worker.
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    let Some(org_id) = field("org_id").map(str::to_string) else {
        return reject(format!("{routing_key} has no org_id"));
    };
    if ctx.config.org(&org_id).is_none() {
        return reject(format!(
            "unknown org `{org_id}`: it is not in this escalator's config"
        ));
    }
    let Some(conversation_id) = field("conversation_id").map(str::to_string) else {
        return reject(format!(
            "{routing_key} is not handled by this version of the escalator"
        ));
    };
    let dedupe_id = match (amqp_message_id, kind, field("message_id")) {
        (Some(id), _, _) if !id.is_empty() => id.to_string(),
        (_, InboundKind::CustomerMessage, Some(m)) => format!("customer-message:{m}"),
        _ => format!(
            "sha256:{}",
            hex::encode(
                Sha256::new()
                    .chain_update(routing_key)
                    .chain_update(body)
                    .finalize()
            )
        ),
    };
    let shard = shard_of(&org_id, &conversation_id, ctx.settings.shards);
    Route::Shard {
        shard,
        meta: Meta {
            routing_key: routing_key.to_string(),
            dedupe_id,
            org_id,
            conversation_id,
            ..Meta::default()
        },
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// Run the intake router on `conn` until `stop` is cancelled or the
/// connection fails.
pub async fn run(
    ctx: &Context,
    conn: &Connection,
    keeper: &ChannelKeeper,
    stop: CancellationToken,
) -> Result<(), InfraError> {
    let channel = conn.create_channel().await?;
    keeper.keep(&channel);
    channel
        .basic_qos(ctx.settings.prefetch, BasicQosOptions::default())
        .await?;
    let publisher = Publisher::open(conn).await?;
    keeper.keep(publisher.channel());
    let mut consumer = channel
        .basic_consume(
            ShortString::from(INTAKE_QUEUE),
            ShortString::from(format!("intake-{}", ctx.instance_id)),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Confirms arrive in publish order: a separate task awaits them and acks
    // the originals in the same order, so routing is pipelined.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(PendingConfirm, Acker)>(
        usize::from(ctx.settings.prefetch).max(1),
    );
    let acker_task = tokio::spawn(async move {
        // Deliveries are settled in order, so one ack with `multiple` covers
        // every confirmed message up to it.
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(next) = rx.try_recv() {
                batch.push(next);
            }
            let mut confirmed: Option<Acker> = None;
            for (pending, acker) in batch {
                match pending.wait().await {
                    Ok(()) => confirmed = Some(acker),
                    Err(e) => {
                        tracing::warn!(error = %e, "forwarding not confirmed: requeueing the inbound message");
                        settle(confirmed.take(), true).await;
                        amqp::requeue(&acker).await;
                    }
                }
            }
            settle(confirmed, true).await;
        }
    });
    let result = loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            next = consumer.next() => next,
        };
        let delivery: Delivery = match delivery {
            Some(Ok(d)) => d,
            Some(Err(e)) => break Err(InfraError::Amqp(e)),
            None => break Ok(()),
        };
        match forward(ctx, &publisher, &delivery).await {
            Ok(pending) => {
                if tx.send((pending, delivery.acker)).await.is_err() {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let _ = acker_task.await;
    result
}

/// Ack `acker` (and, with `multiple`, every earlier delivery of its channel).
async fn settle(acker: Option<Acker>, multiple: bool) {
    if let Some(acker) = acker
        && let Err(e) = acker.ack(BasicAckOptions { multiple }).await
    {
        tracing::warn!(error = %e, "cannot ack inbound messages (connection lost?): they will be redelivered and deduplicated");
    }
}

async fn forward(
    ctx: &Context,
    publisher: &Publisher,
    d: &Delivery,
) -> Result<PendingConfirm, InfraError> {
    let routing_key = d.routing_key.as_str();
    let message_id = d.properties.message_id().as_ref().map(|s| s.as_str());
    match route(ctx, routing_key, &d.data, message_id) {
        Route::Shard { shard, meta } => {
            let provider = ctx
                .config
                .org(&meta.org_id)
                .map(|o| o.provider.as_str())
                .unwrap_or("unknown");
            let span = tracing::info_span!("route", org_id = %meta.org_id, conversation_id = %meta.conversation_id, provider, routing_key, shard);
            let _g = span.enter();
            tracing::debug!("forwarding to work shard");
            let props = meta.write(d.properties.clone());
            publisher
                .start(WORK_EXCHANGE, &shard_key(shard), &d.data, props)
                .await
        }
        Route::Reject(verdict) => {
            dead_letter::start(
                publisher,
                routing_key,
                &d.data,
                d.properties.clone(),
                &Meta::default(),
                &verdict,
            )
            .await
        }
    }
}
