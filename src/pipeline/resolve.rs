//! Webhooks name the provider's ids, not our conversations: the intake
//! router maps each event of a webhook body to the conversation it belongs
//! to (through the indexes in [`LiveIndex`]) so that it is handled in that
//! conversation's lane, in order with the customer's events. Events of
//! tickets that are not ours (Zendesk sends every ticket of the account)
//! are counted and dropped here, cheaply: one Redis round trip per body, no
//! provider call, no dead letter, a debug line at most.
use super::Context;
use crate::contract::{ProviderKind, Webhook};
use crate::error::InfraError;
use crate::live_index::{IdKind, LiveIndex};
use crate::observability::metrics;
use crate::webhook::zendesk::{EventKind, events};
use std::sync::atomic::{AtomicU64, Ordering};

/// Webhook events seen by this process's intake router.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    /// Mapped to one of our conversations and forwarded to its shard.
    pub resolved: AtomicU64,
    /// Not ours (or unreadable): acknowledged and dropped.
    pub ignored: AtomicU64,
}

impl WebhookCounters {
    pub fn resolved(&self) -> u64 {
        self.resolved.load(Ordering::Relaxed)
    }
    pub fn ignored(&self) -> u64 {
        self.ignored.load(Ordering::Relaxed)
    }
}

/// One event of a webhook body that belongs to one of our conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Its position in the body.
    pub index: u32,
    /// Its dedupe id (Zendesk's event id).
    pub dedupe_id: String,
    pub conversation_id: String,
}

/// Map the events of a `webhook.zendesk` message to our conversations.
pub async fn zendesk(
    ctx: &Context,
    org_id: &str,
    message: &[u8],
) -> Result<Vec<Resolved>, InfraError> {
    let counters = &ctx.webhooks;
    let body = match serde_json::from_slice::<Webhook>(message)
        .ok()
        .and_then(|w| crate::webhook::parse_lenient(w.body.as_bytes()).ok())
    {
        Some(body) => body,
        None => {
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            metrics::webhook_event("ignored");
            tracing::debug!("webhook body is not JSON: ignored");
            return Ok(Vec::new());
        }
    };
    let evs = events(&body);
    // Candidate ids per event, most specific first: the Sunshine
    // conversation (message events), our tag on the ticket, the ticket.
    let mut lookups: Vec<(usize, IdKind, &str)> = Vec::new();
    for (i, ev) in evs.iter().enumerate() {
        if let EventKind::MessageAdded {
            conversation_id: Some(c),
            ..
        } = &ev.kind
        {
            lookups.push((i, IdKind::Conversation, c));
        }
        for tag in ev.tags.iter().filter(|t| t.starts_with("esc_")) {
            lookups.push((i, IdKind::Tag, tag));
        }
        if let Some(t) = &ev.ticket_id {
            lookups.push((i, IdKind::Ticket, t));
        }
    }
    let ids: Vec<(IdKind, &str)> = lookups.iter().map(|(_, k, id)| (*k, *id)).collect();
    let found = LiveIndex::new(&ctx.store)
        .resolve(org_id, ProviderKind::Zendesk, &ids)
        .await?;
    let mut out = Vec::new();
    for (i, ev) in evs.iter().enumerate() {
        let conversation = lookups
            .iter()
            .zip(&found)
            .find(|((at, _, _), hit)| *at == i && hit.is_some())
            .and_then(|(_, hit)| hit.clone());
        match conversation {
            Some(conversation_id) => {
                counters.resolved.fetch_add(1, Ordering::Relaxed);
                metrics::webhook_event("resolved");
                out.push(Resolved {
                    index: i as u32,
                    dedupe_id: format!("zendesk-event:{}", ev.id),
                    conversation_id,
                });
            }
            None => {
                counters.ignored.fetch_add(1, Ordering::Relaxed);
                metrics::webhook_event("ignored");
                tracing::debug!(
                    event = ev.kind.name(),
                    "webhook event of a ticket that is not ours: ignored"
                );
            }
        }
    }
    if evs.is_empty() {
        counters.ignored.fetch_add(1, Ordering::Relaxed);
        metrics::webhook_event("ignored");
        tracing::debug!("webhook body carries no event this version knows: ignored");
    }
    Ok(out)
}
