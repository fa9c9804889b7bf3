//! The effects of each inbound event at the provider, made exactly once:
//! a record in Redis says what exists, an attempt marker says when an earlier
//! try may have reached the provider (then we look before we create).
use super::Context;
use crate::contract::{
    CustomerMessage, EscalationCreated, EscalationRequested, Mode, OutboundPayload, ProviderKind,
};
use crate::error::{ProcessError, ProviderError, ProviderErrorKind};
use crate::provider::{TicketProvider, TicketRequest};
use crate::store::{ConversationRecord, ConversationStatus, ExternalRef};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        Mode::Live if !org.live_chat => Some("live chat is switched off for this org".to_string()),
        Mode::Live => Some("live chat is not available for this provider yet".to_string()),
    };
    let provider = ctx.providers.ticket(&e.org_id, kind)?;
    let req = TicketRequest {
        org,
        escalation: e,
        fallback_reason: fallback_reason.as_deref(),
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
/// earlier process, or an earlier attempt of this one) may have made it.
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
                tried.store(true, Ordering::Relaxed);
                match provider.create_ticket(req).await {
                    // The key was used with another body (e.g. the event changed
                    // between two requests): the ticket exists; find it.
                    Err(err) if err.kind == ProviderErrorKind::IdempotencyConflict => {
                        provider.find_ticket(req).await?.ok_or(err)
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
        fallback_reason: rec.fallback_reason.clone(),
    })
}

/// `customer.message`: add it to the ticket once.
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
    let earlier = ctx
        .store
        .begin_attempt(
            &m.org_id,
            &m.conversation_id,
            &format!("message:{}", m.message_id),
        )
        .await?;
    let tried = Arc::new(AtomicBool::new(earlier.is_some()));
    let since = earlier.unwrap_or_else(Utc::now);
    let ticket = &rec.external;
    let provider = provider.as_ref();
    let (result, _) = ctx
        .retry
        .run("add customer message", || {
            let tried = tried.clone();
            async move {
                if tried.load(Ordering::Relaxed)
                    && provider.has_customer_message(ticket, m, since).await?
                {
                    tracing::info!("customer message already on the ticket (earlier attempt)");
                    return Ok::<(), ProviderError>(());
                }
                tried.store(true, Ordering::Relaxed);
                provider.add_customer_message(ticket, m).await
            }
        })
        .await;
    result?;
    Ok(Effect::default())
}
