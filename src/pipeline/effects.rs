//! The effects of each inbound event at the provider, made exactly once:
//! a record in Redis says what exists, an attempt marker says when an earlier
//! try may have reached the provider (then we look before we create).
use super::Context;
use crate::config::OrgConfig;
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
        Mode::Live => match ctx.providers.live(&e.org_id, kind) {
            Some(live) => return super::live::escalate(ctx, e, org, kind, live.as_ref()).await,
            None => Some(FallbackReason::LiveChatOff),
        },
    };
    open_ticket(ctx, e, org, kind, fallback_reason).await
}

/// Create the ticket or case of an escalation (also the fallback of a live
/// request, with its reason) and the record that says so.
pub async fn open_ticket(
    ctx: &Context,
    e: &EscalationRequested,
    org: &OrgConfig,
    kind: ProviderKind,
    fallback_reason: Option<FallbackReason>,
) -> Result<Effect, ProcessError> {
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
        live: None,
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

pub(super) fn created(rec: &ConversationRecord) -> OutboundPayload {
    OutboundPayload::EscalationCreated(EscalationCreated {
        mode: rec.mode,
        external_kind: rec.external.kind,
        external_id: rec.external.id.clone(),
        external_number: rec.external.number.clone(),
        url: rec.external.url.clone(),
        fallback_reason: rec.fallback_reason,
    })
}

/// Where a customer message goes: the ticket (a comment) or the live
/// conversation (a message), each able to say whether an earlier attempt
/// already put it there.
#[async_trait::async_trait]
pub trait MessageSink: Send + Sync {
    fn kind(&self) -> ProviderKind;
    async fn send(&self, msg: &CustomerMessage) -> Result<(), ProviderError>;
    async fn has(
        &self,
        msg: &CustomerMessage,
        since: chrono::DateTime<Utc>,
    ) -> Result<bool, ProviderError>;
}

struct TicketSink<'a> {
    provider: &'a dyn TicketProvider,
    ticket: &'a ExternalRef,
}

#[async_trait::async_trait]
impl MessageSink for TicketSink<'_> {
    fn kind(&self) -> ProviderKind {
        self.provider.kind()
    }
    async fn send(&self, msg: &CustomerMessage) -> Result<(), ProviderError> {
        self.provider.add_customer_message(self.ticket, msg).await
    }
    async fn has(
        &self,
        msg: &CustomerMessage,
        since: chrono::DateTime<Utc>,
    ) -> Result<bool, ProviderError> {
        self.provider
            .has_customer_message(self.ticket, msg, since)
            .await
    }
}

/// `customer.message` for a ticket: add it as a comment, once.
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
    if rec.live.is_some() {
        return super::live::relay_customer_message(ctx, m, rec).await;
    }
    let provider = ctx.providers.ticket(&m.org_id, rec.provider)?;
    let sink = TicketSink {
        provider: provider.as_ref(),
        ticket: &rec.external,
    };
    deliver_once(ctx, &sink, m).await?;
    Ok(Effect::default())
}

/// Put a customer message into `sink` once.
///
/// It is sent without looking first, unless an earlier send (in
/// this process or another) may have reached the provider: after a timeout,
/// a broken connection or a 5xx, never after a refusal (429, 409, 4xx) or a
/// budget wait. A send that may still land is not looked up (nor repeated)
/// until it no longer can: its error waits in the retry queue for the
/// settle time (twice the HTTP timeout).
pub async fn deliver_once(
    ctx: &Context,
    sink: &dyn MessageSink,
    m: &CustomerMessage,
) -> Result<(), ProcessError> {
    let kind = sink.kind();
    let settle = settle_time(Duration::from_millis(ctx.settings.http_timeout_ms));
    let markers = SendMarkers::new(&ctx.store, kind, settle);
    // Longer than the retry policy waits in process: such waits leave the worker.
    let out_of_process = ctx.retry.max_inline_wait + Duration::from_secs(1);
    let what = format!("message:{}", m.message_id);
    let (org, conv) = (m.org_id.as_str(), m.conversation_id.as_str());
    let (markers, what) = (&markers, what.as_str());
    let (result, _) = ctx
        .retry
        .run("add customer message", || async move {
            match markers.before_send(org, conv, what).await? {
                Gate::Fresh => {}
                Gate::Wait(left) => {
                    return Err(ProviderError::transient(
                        kind.as_str(),
                        ProviderErrorKind::Unavailable,
                        format!(
                            "an earlier attempt to add the message may still reach {kind}: looking in {} s",
                            left.as_secs().max(1)
                        ),
                    )
                    .with_retry_after(Some(left)));
                }
                Gate::Earlier(since) => {
                    if sink.has(m, since).await? {
                        tracing::info!("customer message already delivered (earlier attempt)");
                        return Ok(());
                    }
                    markers.sending(org, conv, what).await?;
                }
            }
            match sink.send(m).await {
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
    Ok(result?)
}
