//! The intake router: takes every inbound message in publish order (one
//! active consumer), rejects what cannot be handled, and forwards the rest to
//! the work shard of its conversation.
use super::Context;
use super::dead_letter::{self, DeadLetterConfirm, Verdict};
use super::meta::{self, Meta};
use crate::amqp::{ChannelKeeper, PendingConfirm, Publisher};
use crate::contract::InboundKind;
use crate::error::InfraError;
use crate::schema;
use crate::topology::{INTAKE_QUEUE, WORK_EXCHANGE, shard_key, shard_of};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, Connection};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where an inbound message goes.
#[derive(Debug)]
pub enum Route {
    /// To this work shard, with these headers.
    Shard { shard: u16, meta: Meta },
    /// Straight to the dead-letter queue.
    Reject(Verdict),
    /// A provider webhook of a known org: each of its events goes to the
    /// shard of the conversation it belongs to, once resolved (see [`super::resolve`]).
    Webhook { org_id: String, kind: InboundKind },
}

/// Decide the route of one inbound message. Pure: no I/O.
///
/// A message that cannot be accepted but names a known org and a usable
/// conversation id still goes to its conversation's shard, marked with the
/// reason ([`Meta::rejection`]): the worker dead-letters it there and tells
/// the widget, in the conversation's order. Anything else unusable is
/// dead-lettered here.
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
    if kind.is_internal() {
        return reject(format!(
            "`{routing_key}` is made by the escalator itself: producers cannot publish it on the inbound exchange"
        ));
    }
    let doc = match schema::parse_document(body) {
        Ok(doc) => doc,
        Err(e) => return reject(format!("body is not JSON ({})", e.classify_name())),
    };
    let value = &doc.value;
    let problem = match doc.duplicate_reason() {
        Some(reason) => Some(format!("{routing_key} is ambiguous: {reason}")),
        None => ctx
            .schemas
            .validate_inbound(kind, value)
            .err()
            .map(|reason| format!("{routing_key} does not match its schema: {reason}")),
    };
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    let Some(org_id) = field("org_id").map(str::to_string) else {
        return reject(problem.unwrap_or_else(|| format!("{routing_key} has no org_id")));
    };
    if ctx.config.org(&org_id).is_none() {
        return reject(problem.unwrap_or_else(|| {
            format!("unknown org `{org_id}`: it is not in this escalator's config")
        }));
    }
    if kind == InboundKind::WebhookZendesk && problem.is_none() {
        return Route::Webhook { org_id, kind };
    }
    let conversation_id = field("conversation_id").filter(|c| is_conversation_id(c));
    // A duplicated id is ambiguous: the message cannot be placed.
    let ids_ambiguous = matches!(
        doc.duplicate_key.as_deref(),
        Some("/org_id" | "/conversation_id")
    );
    let conversation_id = match (conversation_id, &problem) {
        (Some(c), Some(_)) if !ids_ambiguous => c.to_string(),
        (Some(c), None) => c.to_string(),
        (_, Some(reason)) => return reject(reason.clone()),
        (None, None) => {
            return reject(format!(
                "{routing_key} is not handled by this version of the escalator"
            ));
        }
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
            rejection: problem,
            ..Meta::default()
        },
    }
}

/// The inbound schemas' conversation id rule (`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`):
/// it becomes part of Redis keys, so a message without such an id cannot be placed.
fn is_conversation_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
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

/// A forward or dead letter whose confirm is awaited by the acker task.
enum Pending {
    Forward(PendingConfirm),
    DeadLetter(DeadLetterConfirm),
    /// A webhook's events forwarded to their shards (none: all ignored).
    Forwards(Vec<PendingConfirm>),
}

impl Pending {
    async fn wait(self) -> Result<(), InfraError> {
        match self {
            Pending::Forward(p) => p.wait().await,
            Pending::DeadLetter(p) => p.wait().await,
            Pending::Forwards(all) => {
                for p in all {
                    p.wait().await?;
                }
                Ok(())
            }
        }
    }
}

/// Run the intake router on `conn` until `stop` is cancelled or the
/// connection fails.
///
/// Order: a forward the broker nacks or returns (unroutable) ends the
/// session with an error, and no later delivery is acked after it: the
/// consumer's channel is closed, which gives that delivery and every later
/// one back to the queue at once, in delivery order, before any other
/// consumer is served. The next session declares the topology again and
/// routes them afresh.
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
    let (tx, rx) =
        tokio::sync::mpsc::channel::<(Pending, Acker)>(usize::from(ctx.settings.prefetch).max(1));
    let failed = CancellationToken::new();
    let acker_task = tokio::spawn(settle_in_order(rx, failed.clone()));
    let result = loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = failed.cancelled() => break Ok(()),
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
    let failure = acker_task.await.ok().flatten();
    if failure.is_some() {
        // Every ack before the failure is sent; nothing after it was acked.
        // Closing the channel returns the rest in order, atomically (a nack
        // per delivery would let the broker hand the first one straight back
        // to this still-active consumer, behind later ones).
        let _ = channel
            .close(
                200,
                ShortString::from("forward failed: requeueing in order"),
            )
            .await;
    }
    match (result, failure) {
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
        (Ok(()), None) => Ok(()),
    }
}

/// Await the confirms in order and ack the originals. At the first failure,
/// stop: ack what was confirmed before it, leave it and everything after it
/// unacked (the caller closes the channel), tell the router (`failed`), and
/// return the failure.
async fn settle_in_order(
    mut rx: tokio::sync::mpsc::Receiver<(Pending, Acker)>,
    failed: CancellationToken,
) -> Option<InfraError> {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = rx.try_recv() {
            batch.push(next);
        }
        // Deliveries are settled in order, so one ack with `multiple` covers
        // every confirmed message up to it.
        let mut confirmed: Option<Acker> = None;
        for (pending, acker) in batch {
            match pending.wait().await {
                Ok(()) => confirmed = Some(acker),
                Err(e) => {
                    tracing::warn!(error = %e, "forwarding not confirmed: returning it and every later inbound message to the queue, in order, and restarting the session");
                    settle(confirmed.take(), true).await;
                    failed.cancel();
                    return Some(e);
                }
            }
        }
        settle(confirmed, true).await;
    }
    None
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
) -> Result<Pending, InfraError> {
    let routing_key = d.routing_key.as_str();
    let message_id = d.properties.message_id().as_ref().map(|s| s.as_str());
    match route(ctx, routing_key, &d.data, message_id) {
        Route::Shard { shard, meta } => {
            let provider = ctx
                .config
                .org(&meta.org_id)
                .map(|o| o.provider.as_str())
                .unwrap_or("unknown");
            // Spans are attached to the futures, never entered across an
            // await (a guard held over an await leaks the span into whatever
            // else the thread polls, and closes it on another thread).
            let span = tracing::info_span!("route", org_id = %meta.org_id, conversation_id = %meta.conversation_id, provider, routing_key, shard);
            to_shard(publisher, d, shard, &meta).instrument(span).await
        }
        Route::Webhook { org_id, kind } => {
            let span =
                tracing::info_span!("route", org_id = %org_id, provider = "zendesk", routing_key);
            webhook_to_shards(ctx, publisher, d, &org_id, kind)
                .instrument(span)
                .await
        }
        Route::Reject(verdict) => dead_letter::start(
            publisher,
            routing_key,
            &d.data,
            d.properties.clone(),
            &Meta::default(),
            &verdict,
        )
        .await
        .map(Pending::DeadLetter),
    }
}

/// Forward an inbound message to its conversation's work shard.
async fn to_shard(
    publisher: &Publisher,
    d: &Delivery,
    shard: u16,
    meta: &Meta,
) -> Result<Pending, InfraError> {
    match &meta.rejection {
        Some(reason) => {
            tracing::info!(reason = %reason, "rejected: forwarding to its shard, to be dead-lettered there and reported to the widget")
        }
        None => tracing::debug!("forwarding to work shard"),
    }
    // A producer's expiration stays off internal hops: it would make the
    // shard's copy expire unprocessed.
    let props = meta.write(meta::internal_hop(&d.properties));
    publisher
        .start(WORK_EXCHANGE, &shard_key(shard), &d.data, props)
        .await
        .map(Pending::Forward)
}

/// Forward each event of a Zendesk webhook body to its conversation's shard.
async fn webhook_to_shards(
    ctx: &Context,
    publisher: &Publisher,
    d: &Delivery,
    org_id: &str,
    kind: InboundKind,
) -> Result<Pending, InfraError> {
    let resolved = super::resolve::zendesk(ctx, org_id, &d.data).await?;
    let mut pending = Vec::with_capacity(resolved.len());
    for r in resolved {
        tracing::debug!(conversation_id = %r.conversation_id, "forwarding webhook event to its conversation's shard");
        let meta = Meta {
            routing_key: kind.routing_key().to_string(),
            dedupe_id: r.dedupe_id,
            org_id: org_id.to_string(),
            conversation_id: r.conversation_id,
            provider_event: Some(r.index),
            ..Meta::default()
        };
        let shard = shard_of(&meta.org_id, &meta.conversation_id, ctx.settings.shards);
        let props = meta.write(meta::internal_hop(&d.properties));
        pending.push(
            publisher
                .start(WORK_EXCHANGE, &shard_key(shard), &d.data, props)
                .await?,
        );
    }
    Ok(Pending::Forwards(pending))
}
