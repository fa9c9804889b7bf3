//! The effects of each inbound event at the provider, made exactly once:
//! a record in Redis says what exists, an attempt marker says when an earlier
//! try may have reached the provider (then we look before we create).
use super::Context;
use crate::contract::{
    CustomerMessage, EscalationCreated, EscalationRequested, FallbackReason, Mode, OutboundPayload,
    ProviderKind,
};
use crate::error::{ProcessError, ProviderError, ProviderErrorKind};
use crate::provider::in_flight::{Gate, SendMarkers, settle_time};
use crate::provider::{TicketProvider, TicketRequest};
use crate::store::{ConversationRecord, ConversationStatus, ExternalRef};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The provider an event's conversation uses: the event's override, else the org's.
pub fn provider_of(
    ctx: &Context,
    org_id: &str,
    requested: Option<ProviderKind>,
) -> Option<ProviderKind> {
    requested.or_else(|| ctx.config.org(org_id).map(|o| o.provider))
}

/// What an event changed: a new conversation record to save (if any) and
/// the outbound events to publish.
#[derive(Debug, Default)]
pub struct Effect {
    pub record: Option<ConversationRecord>,
    pub events: Vec<OutboundPayload>,
}

/// `escalation.requested`: one ticket or case per conversation.
pub async fn escalate(
    ctx: &Context,
    e: &EscalationRequested,
    existing: Option<&ConversationRecord>,
) -> Result<Effect, ProcessError> {
    let org = ctx
        .config
        .org(&e.org_id)
        .ok_or_else(|| ProcessError::Rejected(format!("unknown org {}", e.org_id)))?;
    if let Some(rec) = existing {
        // Already escalated (redelivery, duplicate, replay): same answer, no new effect.
        return Ok(Effect {
            record: None,
            events: vec![created(rec)],
        });
    }
    let kind = e.provider.unwrap_or(org.provider);
    let fallback_reason = match e.mode {
        Mode::Ticket => None,
        Mode::Live => Some(FallbackReason::LiveChatOff),
    };
    let provider = ctx.providers.ticket(&e.org_id, kind)?;
    let req = TicketRequest {
        org,
        escalation: e,
        fallback_reason,
    };
    let earlier = ctx
        .store
        .begin_attempt(&e.org_id, &e.conversation_id, "ticket")
        .await?;
    let external = create_once(ctx, provider.as_ref(), req, earlier.is_some()).await?;
    let now = Utc::now();
    let rec = ConversationRecord {
        org_id: e.org_id.clone(),
        conversation_id: e.conversation_id.clone(),
        provider: kind,
        mode: Mode::Ticket,
        status: ConversationStatus::Escalated,
        external,
        fallback_reason,
        created_at: now,
        updated_at: now,
    };
    let events = vec![created(&rec)];
    Ok(Effect {
        record: Some(rec),
        events,
    })
}

/// Create the ticket, looking for one first whenever an earlier try (in an
/// earlier process, or an earlier attempt of this one that failed in a way
/// that may have landed) may have made it.
async fn create_once(
    ctx: &Context,
    provider: &dyn TicketProvider,
    req: TicketRequest<'_>,
    attempted_before: bool,
) -> Result<ExternalRef, ProcessError> {
    let tried = Arc::new(AtomicBool::new(attempted_before));
    let (result, _) = ctx
        .retry
        .run("create ticket", || {
            let tried = tried.clone();
            async move {
                if tried.load(Ordering::Relaxed)
                    && let Some(found) = provider.find_ticket(req).await?
                {
                    tracing::info!(external_id = %found.id, "adopting ticket created by an earlier attempt");
                    return Ok(found);
                }
                match provider.create_ticket(req).await {
                    // The key was used with another body (e.g. the event changed
                    // between two requests): the ticket exists; find it.
                    Err(err) if err.kind == ProviderErrorKind::IdempotencyConflict => {
                        provider.find_ticket(req).await?.ok_or(err)
                    }
                    // A timeout, a broken connection, a 5xx: look before the
                    // next try. Never after a refusal (429, 4xx) or a budget wait.
                    Err(err) if err.may_have_landed() => {
                        tried.store(true, Ordering::Relaxed);
                        Err(err)
                    }
                    other => other,
                }
            }
        })
        .await;
    Ok(result?)
}

fn created(rec: &ConversationRecord) -> OutboundPayload {
    OutboundPayload::EscalationCreated(EscalationCreated {
        mode: rec.mode,
        external_kind: rec.external.kind,
        external_id: rec.external.id.clone(),
        external_number: rec.external.number.clone(),
        url: rec.external.url.clone(),
        fallback_reason: rec.fallback_reason,
    })
}

/// `customer.message`: add it to the ticket once.
///
/// The comment is sent without looking first, unless an earlier send (in
/// this process or another) may have reached the provider: after a timeout,
/// a broken connection or a 5xx, never after a refusal (429, 409, 4xx) or a
/// budget wait. A send that may still land is not looked up (nor repeated)
/// until it no longer can: its error waits in the retry queue for the
/// settle time (twice the HTTP timeout).
pub async fn relay_customer_message(
    ctx: &Context,
    m: &CustomerMessage,
    existing: Option<&ConversationRecord>,
) -> Result<Effect, ProcessError> {
    let Some(rec) = existing else {
        return Err(ProcessError::Rejected(format!(
            "conversation {} has no escalation: customer.message must follow a successful escalation.requested",
            m.conversation_id
        )));
    };
    let provider = ctx.providers.ticket(&m.org_id, rec.provider)?;
    let settle = settle_time(Duration::from_millis(ctx.settings.http_timeout_ms));
    let markers = SendMarkers::new(&ctx.store, rec.provider, settle);
    // Longer than the retry policy waits in process: such waits leave the worker.
    let out_of_process = ctx.retry.max_inline_wait + Duration::from_secs(1);
    let what = format!("message:{}", m.message_id);
    let (org, conv) = (m.org_id.as_str(), m.conversation_id.as_str());
    let ticket = &rec.external;
    let provider = provider.as_ref();
    let (markers, what) = (&markers, what.as_str());
    let (result, _) = ctx
        .retry
        .run("add customer message", || async move {
            match markers.before_send(org, conv, what).await? {
                Gate::Fresh => {}
                Gate::Wait(left) => {
                    return Err(ProviderError::transient(
                        provider.kind().as_str(),
                        ProviderErrorKind::Unavailable,
                        format!(
                            "an earlier attempt to add the message may still reach {}: looking in {} s",
                            provider.kind(),
                            left.as_secs().max(1)
                        ),
                    )
                    .with_retry_after(Some(left)));
                }
                Gate::Earlier(since) => {
                    if provider.has_customer_message(ticket, m, since).await? {
                        tracing::info!("customer message already on the ticket (earlier attempt)");
                        return Ok(());
                    }
                    markers.sending(org, conv, what).await?;
                }
            }
            match provider.add_customer_message(ticket, m).await {
                Ok(()) => Ok(()),
                Err(e) if e.may_still_land() => {
                    let wait = e
                        .retry_after
                        .unwrap_or_default()
                        .max(markers.settle())
                        .max(out_of_process);
                    Err(e.with_retry_after(Some(wait)))
                }
                Err(e) if e.may_have_landed() => {
                    markers.answered(org, conv, what).await?;
                    Err(e)
                }
                Err(e) => {
                    markers.not_landed(org, conv, what).await?;
                    Err(e)
                }
            }
        })
        .await;
    result?;
    Ok(Effect::default())
}
