//! Messages the worker cannot handle as they are (rejected by the intake
//! router for their schema, or unreadable at the worker): dead-lettered with
//! the technical reason, and, when the conversation is known, reported to the
//! widget as `escalation.failed` (code `invalid_request`) with a plain sentence.
use super::dead_letter::{self, Verdict};
use super::handler::claim;
use super::lease;
use super::meta::Meta;
use super::{Context, outbound};
use crate::amqp::Publisher;
use crate::contract::{
    EscalationFailed, FailureCode, InboundKind, OutboundPayload, failure_sentence,
};
use crate::error::{ErrorClass, InfraError};
use crate::store::{ConversationRecord, Lease};
use lapin::BasicProperties;

/// What the widget is told, whatever the technical reason was.
const CAUSE: &str = "the request was incomplete or malformed, so it could not be handled.";

/// One message to reject, as it came from its work queue.
pub struct Rejected<'a> {
    pub meta: &'a Meta,
    /// The routing key it came with (its shard), used when the message has
    /// no inbound routing key of its own.
    pub shard_key: &'a str,
    pub body: &'a [u8],
    pub props: &'a BasicProperties,
    /// Why: safe to log (no values from the body).
    pub reason: String,
}

/// Tell the widget (when the conversation can be placed), then dead-letter.
/// `Ok` means the caller may ack. The message is not marked done: a replay
/// from the dead-letter queue runs again. A redelivery republishes the same
/// event (the store keeps its seq per message and type).
pub async fn reject(
    ctx: &Context,
    publisher: &Publisher,
    r: Rejected<'_>,
) -> Result<(), InfraError> {
    let m = r.meta;
    let routing_key = if m.routing_key.is_empty() {
        r.shard_key
    } else {
        m.routing_key.as_str()
    };
    let org = ctx.config.org(&m.org_id);
    if let (Some(org), Some(_), false) = (
        org,
        InboundKind::from_routing_key(routing_key),
        m.conversation_id.is_empty(),
    ) {
        let (lease, record) = acquire(ctx, m).await?;
        // The provider the conversation went to (a per-event override), else the org's.
        let provider = record.map_or(org.provider, |r| r.provider);
        let failed = OutboundPayload::EscalationFailed(EscalationFailed {
            reason: failure_sentence(routing_key, provider, CAUSE),
            code: FailureCode::InvalidRequest,
            error_class: ErrorClass::Permanent,
            failed_event: routing_key.to_string(),
        });
        let key = format!("{}/{}", m.dedupe_id, failed.event_type());
        let published = async {
            let seqs = ctx.store.commit(&lease, None, &[key]).await?;
            outbound::publish(
                publisher,
                &m.org_id,
                &m.conversation_id,
                provider,
                &m.dedupe_id,
                std::iter::once(failed).zip(seqs),
            )
            .await
        };
        let published = lease::hold(&ctx.store, &lease, claim(ctx).ttl, published).await;
        // Not marked done (a replay runs again); the lease is released.
        let finished = ctx.store.finish(&lease, &m.dedupe_id, false).await;
        published?;
        finished?;
    }
    let verdict = Verdict {
        error_class: "invalid",
        reason: r.reason,
        stage: "worker",
    };
    dead_letter::start(publisher, routing_key, r.body, r.props.clone(), m, &verdict)
        .await?
        .wait()
        .await
}

/// The conversation's lease, waiting (at most one lease TTL) for another
/// runner to finish: the event's seq is fenced like any other.
async fn acquire(
    ctx: &Context,
    m: &Meta,
) -> Result<(Lease, Option<ConversationRecord>), InfraError> {
    let claim = claim(ctx);
    let mut wait = lease::Wait::new(claim.ttl);
    let started = tokio::time::Instant::now();
    loop {
        match ctx
            .store
            .acquire_lease(&m.org_id, &m.conversation_id, &claim)
            .await?
        {
            Ok(acquired) => return Ok(acquired),
            Err(left) => {
                if !wait.pause(Some(left)).await {
                    return Err(InfraError::LeaseBusy {
                        org_id: m.org_id.clone(),
                        conversation_id: m.conversation_id.clone(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    });
                }
            }
        }
    }
}
