//! The live path in a conversation's lane: hand-over (or its fallback to a
//! ticket), the customer's messages, typing and leaving, and the agent's
//! side as provider events report it. Provider calls go through
//! [`LiveChatProvider`]; what the conversation is in, and what the widget
//! hears, is decided by [`LiveState::apply`].
use super::Context;
use super::effects::{self, Effect, MessageSink};
use crate::config::OrgConfig;
use crate::contract::{
    ClosedBy, CustomerEnded, CustomerMessage, CustomerTyping, EscalationQueued,
    EscalationRequested, ExternalKind, FallbackReason, Mode, OutboundPayload, ProviderKind,
    SalesforceStreamEvent, StreamWhat, TicketRef, Webhook,
};
use crate::error::{ProcessError, ProviderError};
use crate::live_index::{IdKind, LiveIndex, correlation_tag};
use crate::live_state::{AgentRef, AgentSignal, LiveState};
use crate::provider::live::miaw::{ConversationEntry, EntryKind, RoutingStatus, SenderRole};
use crate::provider::live::{
    Availability, HandoverJournal, HandoverRequest, LiveChatProvider, LiveSession,
};
use crate::store::{ConversationRecord, ConversationStatus, ExternalRef};
use crate::webhook::zendesk::{Actor, EventKind, ZendeskEvent};
use chrono::Utc;

/// Journal step written before the first provider call of a hand-over: a
/// hand-over that started is resumed, never replaced by a fallback ticket.
const STARTED: &str = "#started";

/// The name the widget shows for an agent whose name is unknown.
const GENERIC_AGENT_NAME: &str = "Support agent";

/// What the agent is told when the customer leaves.
const CUSTOMER_LEFT_NOTICE: &str = "The customer has left the conversation.";

/// `escalation.requested` with mode `live` for an org and provider with
/// live chat: hand over, or fall back to a ticket when no agent can take it.
pub async fn escalate(
    ctx: &Context,
    e: &EscalationRequested,
    org: &OrgConfig,
    kind: ProviderKind,
    provider: &dyn LiveChatProvider,
) -> Result<Effect, ProcessError> {
    let (org_id, conv) = (e.org_id.as_str(), e.conversation_id.as_str());
    let index = LiveIndex::new(&ctx.store);
    let journal = index.journal(org_id, kind, conv);
    if journal.get(STARTED).await?.is_none() {
        let (availability, _) = ctx
            .retry
            .run("check agent availability", || provider.availability())
            .await;
        match availability {
            Ok(Availability::Open) => {}
            Ok(Availability::Closed(reason)) => {
                tracing::info!(
                    fallback_reason = reason.as_str(),
                    "no agent can take the chat: creating a ticket"
                );
                return effects::open_ticket(ctx, e, org, kind, Some(reason)).await;
            }
            Err(err) if err.is_transient() => return Err(err.into()),
            Err(err) => {
                tracing::warn!(error = %err, "agent availability cannot be checked: creating a ticket instead");
                return effects::open_ticket(
                    ctx,
                    e,
                    org,
                    kind,
                    Some(FallbackReason::HandoverFailed),
                )
                .await;
            }
        }
        journal.put(STARTED, &Utc::now().to_rfc3339()).await?;
    }
    let tag = correlation_tag(org_id, conv);
    // Ticket events name only the ticket (and its tags): this maps the tag back.
    index.link(org_id, kind, IdKind::Tag, &tag, conv).await?;
    let req = HandoverRequest {
        org,
        escalation: e,
        correlation_tag: &tag,
        streams: Some(&ctx.streams),
    };
    let session = match provider.hand_over(req, &journal).await {
        Ok(session) => session,
        Err(ProcessError::Provider(err)) if !err.is_transient() => {
            tracing::warn!(error = %err, "the hand-over failed for good: creating a ticket with the transcript instead");
            return effects::open_ticket(ctx, e, org, kind, Some(FallbackReason::HandoverFailed))
                .await;
        }
        Err(other) => return Err(other),
    };
    tracing::info!(provider_conversation = %session.conversation_id, "handed over: waiting for an agent");
    let now = Utc::now();
    let rec = ConversationRecord {
        org_id: e.org_id.clone(),
        conversation_id: e.conversation_id.clone(),
        provider: kind,
        mode: Mode::Live,
        status: ConversationStatus::Escalated,
        external: ExternalRef {
            kind: match kind {
                ProviderKind::Zendesk => ExternalKind::SunshineConversation,
                ProviderKind::Salesforce => ExternalKind::SalesforceMessaging,
            },
            id: session.conversation_id.clone(),
            number: None,
            url: session.url.clone(),
            requester_id: Some(session.user_id.clone()),
        },
        fallback_reason: None,
        created_at: now,
        updated_at: now,
        live: Some(LiveState::new(session, tag)),
    };
    let events = vec![
        effects::created(&rec),
        OutboundPayload::EscalationQueued(EscalationQueued { position: None }),
    ];
    Ok(Effect {
        record: Some(rec),
        events,
    })
}

/// The live conversation of a record, and its provider; `None` when the
/// record is not (or no longer) live.
fn live_of<'a>(
    ctx: &Context,
    rec: &'a ConversationRecord,
) -> Result<(&'a LiveState, std::sync::Arc<dyn LiveChatProvider>), ProcessError> {
    let live = rec
        .live
        .as_ref()
        .ok_or_else(|| ProcessError::Rejected("the conversation is not a live chat".into()))?;
    let provider = ctx.providers.live(&rec.org_id, rec.provider).ok_or_else(|| {
        ProcessError::Rejected(format!(
            "live chat is no longer set up for org {} and {}: the conversation cannot be relayed",
            rec.org_id, rec.provider
        ))
    })?;
    Ok((live, provider))
}

struct LiveSink<'a> {
    provider: &'a dyn LiveChatProvider,
    session: &'a LiveSession,
}

#[async_trait::async_trait]
impl MessageSink for LiveSink<'_> {
    fn kind(&self) -> ProviderKind {
        self.provider.kind()
    }
    async fn send(&self, msg: &CustomerMessage) -> Result<(), ProviderError> {
        self.provider.send_customer_message(self.session, msg).await
    }
    async fn has(
        &self,
        msg: &CustomerMessage,
        since: chrono::DateTime<Utc>,
    ) -> Result<bool, ProviderError> {
        self.provider
            .has_customer_message(self.session, msg, since)
            .await
    }
}

/// `customer.message` in a live chat: into the provider's conversation, once.
pub async fn relay_customer_message(
    ctx: &Context,
    m: &CustomerMessage,
    rec: &ConversationRecord,
) -> Result<Effect, ProcessError> {
    let (live, provider) = live_of(ctx, rec)?;
    if live.is_ended() {
        tracing::info!("the live chat has ended: the customer's message is not relayed");
        return Ok(Effect::default());
    }
    let sink = LiveSink {
        provider: provider.as_ref(),
        session: &live.session,
    };
    effects::deliver_once(ctx, &sink, m).await?;
    Ok(Effect::default())
}

/// `customer.typing`: best effort (a lost indicator is not worth a retry).
pub async fn typing(
    ctx: &Context,
    t: &CustomerTyping,
    rec: &ConversationRecord,
) -> Result<Effect, ProcessError> {
    let (live, provider) = live_of(ctx, rec)?;
    if !live.is_ended()
        && let Err(err) = provider.typing(&live.session, t.typing).await
    {
        tracing::debug!(error = %err, "typing indicator not delivered");
    }
    Ok(Effect::default())
}

/// `customer.ended`: tell the agent, close the conversation, relay nothing more.
pub async fn customer_ended(
    ctx: &Context,
    _ended: &CustomerEnded,
    rec: &ConversationRecord,
) -> Result<Effect, ProcessError> {
    let (live, provider) = live_of(ctx, rec)?;
    if live.is_ended() {
        return Ok(Effect::default());
    }
    let (result, _) = ctx
        .retry
        .run("tell the agent the customer left", || {
            provider.customer_left(&live.session, CUSTOMER_LEFT_NOTICE)
        })
        .await;
    result?;
    stop_stream(ctx, rec).await?;
    Ok(apply(
        rec,
        live.clone(),
        AgentSignal::Closed(ClosedBy::Customer),
    ))
}

/// Dedupe ids of what the Salesforce stream reader forwards start with this.
pub const STREAM_DEDUPE_PREFIX: &str = crate::live_stream::DEDUPE_PREFIX;

/// A live Salesforce conversation ended or fell back: nobody streams it any more.
async fn stop_stream(ctx: &Context, rec: &ConversationRecord) -> Result<(), ProcessError> {
    if rec.provider == ProviderKind::Salesforce {
        ctx.streams.close(&rec.org_id, &rec.conversation_id).await?;
    }
    Ok(())
}

/// An event of a Salesforce messaging stream (the reader forwarded it to
/// this conversation's lane).
pub async fn on_salesforce_stream(
    ctx: &Context,
    ev: &SalesforceStreamEvent,
    existing: Option<&ConversationRecord>,
) -> Result<Effect, ProcessError> {
    let Some(rec) = existing.filter(|r| r.live.is_some() && r.provider == ProviderKind::Salesforce)
    else {
        tracing::debug!(
            "stream event for a conversation that is not a live Salesforce chat: ignored"
        );
        return Ok(Effect::default());
    };
    let (live, provider) = live_of(ctx, rec)?;
    if live.is_ended() {
        tracing::debug!("the live chat has ended: stream event ignored");
        return Ok(Effect::default());
    }
    let entry = match &ev.what {
        StreamWhat::SessionLost { .. } => {
            return fall_back_to_case(ctx, rec, live, FallbackReason::HandoverFailed).await;
        }
        StreamWhat::Entry { entry, .. } => {
            serde_json::from_value::<ConversationEntry>(entry.clone())
                .map_err(|e| ProcessError::Rejected(format!("unreadable stream entry: {e}")))?
        }
    };
    let at = entry
        .transcripted_at_ms
        .and_then(chrono::DateTime::from_timestamp_millis);
    let agent_side = matches!(entry.sender_role, SenderRole::Agent | SenderRole::Chatbot);
    let mut signals = Vec::new();
    match &entry.kind {
        EntryKind::Message { text, .. } if agent_side => signals.push(AgentSignal::Message {
            text: text.clone(),
            display_name: entry.sender_display_name.clone(),
        }),
        EntryKind::ParticipantChanged(changes) => {
            for change in changes.iter().filter(|c| c.role == SenderRole::Agent) {
                let id = change
                    .subject
                    .clone()
                    .or_else(|| change.display_name.clone())
                    .unwrap_or_else(|| GENERIC_AGENT_NAME.to_string());
                if change.added {
                    signals.push(AgentSignal::Assigned {
                        agent: AgentRef {
                            id,
                            display_name: change
                                .display_name
                                .clone()
                                .unwrap_or_else(|| GENERIC_AGENT_NAME.to_string()),
                        },
                        at,
                    });
                    continue;
                }
                // An agent left: a transfer, or nobody has the chat any more?
                match routing_status(ctx, rec, provider.as_ref()).await? {
                    RoutingStatus::Transfer => {
                        tracing::info!("the agent is transferring the chat: it stays live");
                    }
                    RoutingStatus::NeedsRouting => {
                        tracing::info!(
                            "the agent left and nobody else has the chat: creating a Case"
                        );
                        return fall_back_to_case(ctx, rec, live, FallbackReason::NoAgentOnline)
                            .await;
                    }
                    _ => signals.push(AgentSignal::Unassigned {
                        at,
                        previous: Some(id),
                    }),
                }
            }
        }
        EntryKind::RoutingResult { failed: true, .. } if live.agent.is_none() => {
            tracing::info!("routing to an agent failed: creating a Case");
            return fall_back_to_case(ctx, rec, live, FallbackReason::NoAgentOnline).await;
        }
        EntryKind::Typing(typing) if agent_side => signals.push(AgentSignal::Typing(*typing)),
        EntryKind::SessionStatus {
            ended: true,
            ended_by,
            ..
        } => signals.push(AgentSignal::Closed(match ended_by {
            Some(SenderRole::EndUser) => ClosedBy::Customer,
            Some(SenderRole::Agent | SenderRole::Supervisor) => ClosedBy::Agent,
            _ => ClosedBy::System,
        })),
        EntryKind::CloseConversation => signals.push(AgentSignal::Closed(ClosedBy::System)),
        EntryKind::QueuePosition(n) => signals.push(AgentSignal::QueuePosition(*n)),
        other => tracing::debug!(kind = entry_kind_name(other), "stream entry with no effect"),
    }
    let mut live = live.clone();
    let mut events = Vec::new();
    for signal in signals {
        events.extend(live.apply(signal));
    }
    if live.is_ended() {
        stop_stream(ctx, rec).await?;
    }
    Ok(finish(rec, live, events))
}

fn entry_kind_name(k: &EntryKind) -> &'static str {
    match k {
        EntryKind::Message { .. } => "message",
        EntryKind::ParticipantChanged(_) => "participant_changed",
        EntryKind::RoutingResult { .. } => "routing_result",
        EntryKind::Typing(_) => "typing",
        EntryKind::SessionStatus { .. } => "session_status",
        EntryKind::CloseConversation => "close_conversation",
        EntryKind::QueuePosition(_) => "queue_position",
        EntryKind::Other(_) => "other",
    }
}

async fn routing_status(
    ctx: &Context,
    rec: &ConversationRecord,
    _provider: &dyn LiveChatProvider,
) -> Result<RoutingStatus, ProcessError> {
    let client = ctx.providers.miaw(&rec.org_id).ok_or_else(|| {
        ProcessError::Rejected("Salesforce live chat is no longer set up for the org".into())
    })?;
    let sessions = ctx.streams.sessions();
    let token = sessions
        .token(&rec.org_id, &rec.conversation_id)
        .await?
        .ok_or_else(|| ProcessError::Rejected("no messaging session is stored".into()))?;
    let conversation = uuid::Uuid::parse_str(&rec.external.id).map_err(|_| {
        ProcessError::Rejected("the messaging conversation id is not a UUID".into())
    })?;
    let (status, _) = ctx
        .retry
        .run("ask the conversation's routing status", || {
            client.routing_status(&token, &conversation)
        })
        .await;
    Ok(status?)
}

/// No agent will take the chat any more (routing failed, the last agent
/// left with nobody to take over, the session was lost): a Case with the
/// whole conversation, the messaging conversation closed, the stream stopped.
async fn fall_back_to_case(
    ctx: &Context,
    rec: &ConversationRecord,
    live: &LiveState,
    reason: FallbackReason,
) -> Result<Effect, ProcessError> {
    let org = ctx
        .config
        .org(&rec.org_id)
        .ok_or_else(|| ProcessError::Rejected(format!("unknown org {}", rec.org_id)))?;
    let sessions = ctx.streams.sessions();
    let Some(mut escalation) = sessions
        .escalation(&rec.org_id, &rec.conversation_id)
        .await?
    else {
        return Err(ProcessError::Rejected(
            "the escalation behind this live chat is no longer stored: no Case can be made".into(),
        ));
    };
    let client = ctx.providers.miaw(&rec.org_id);
    let token = sessions.token(&rec.org_id, &rec.conversation_id).await?;
    let conversation = uuid::Uuid::parse_str(&live.session.conversation_id).ok();
    if let (Some(client), Some(token), Some(conversation)) = (&client, &token, conversation) {
        // The live part of the conversation goes into the Case too (best effort).
        match client.entries(token, &conversation, None).await {
            Ok(entries) => append_live_transcript(&mut escalation, &conversation, &entries),
            Err(e) => {
                tracing::info!(error = %e, "the live part of the chat could not be read for the Case")
            }
        }
        if let Err(e) = client.close(token, &conversation).await {
            tracing::info!(error = %e, "the messaging conversation could not be closed");
        }
    }
    stop_stream(ctx, rec).await?;
    effects::open_ticket(
        ctx,
        &escalation,
        org,
        ProviderKind::Salesforce,
        Some(reason),
    )
    .await
}

/// The customer's and the agents' messages of the live chat, after the AI
/// transcript (our own transcript copies are left out).
fn append_live_transcript(
    e: &mut EscalationRequested,
    conversation: &uuid::Uuid,
    entries: &[ConversationEntry],
) {
    use crate::contract::{Role, TranscriptEntry};
    let ours: Vec<String> = (0..8)
        .map(|i| {
            crate::provider::live::salesforce::SalesforceLive::message_id(
                conversation,
                &format!("transcript:{i}"),
            )
            .to_string()
        })
        .collect();
    for entry in entries {
        let EntryKind::Message { text, message_id } = &entry.kind else {
            continue;
        };
        if message_id.as_ref().is_some_and(|m| ours.contains(m)) {
            continue;
        }
        let role = match entry.sender_role {
            SenderRole::EndUser => Role::Customer,
            SenderRole::Agent | SenderRole::Supervisor => Role::Agent,
            SenderRole::Chatbot => Role::Ai,
            _ => continue,
        };
        let sent_at = entry
            .transcripted_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        e.transcript.push(TranscriptEntry {
            role,
            text: text.clone(),
            sent_at,
        });
    }
}

/// The record with `live` after `signal`, and the events it caused.
fn apply(rec: &ConversationRecord, mut live: LiveState, signal: AgentSignal) -> Effect {
    let events = live.apply(signal);
    finish(rec, live, events)
}

fn finish(rec: &ConversationRecord, live: LiveState, events: Vec<OutboundPayload>) -> Effect {
    if rec.live.as_ref() == Some(&live) {
        return Effect {
            record: None,
            events,
        };
    }
    let mut next = rec.clone();
    if live.is_ended() {
        next.status = ConversationStatus::Closed;
    }
    next.live = Some(live);
    next.updated_at = Utc::now();
    Effect {
        record: Some(next),
        events,
    }
}

/// One event of a `webhook.zendesk` body (the intake resolved it to this
/// conversation and says which event it is).
pub async fn on_zendesk_webhook(
    ctx: &Context,
    webhook: &Webhook,
    event_index: Option<u32>,
    existing: Option<&ConversationRecord>,
) -> Result<Effect, ProcessError> {
    let Some(rec) = existing.filter(|r| r.live.is_some()) else {
        tracing::debug!("webhook event for a conversation that is not a live chat: ignored");
        return Ok(Effect::default());
    };
    let body = crate::webhook::parse_lenient(webhook.body.as_bytes())
        .map_err(|e| ProcessError::Rejected(e.to_string()))?;
    let events = crate::webhook::zendesk::events(&body);
    let Some(event) = event_index.and_then(|i| events.get(i as usize)) else {
        return Err(ProcessError::Rejected(
            "the webhook has no event at the position the intake named".into(),
        ));
    };
    let (live, provider) = live_of(ctx, rec)?;
    let mut live = live.clone();
    if live.is_ended() {
        tracing::debug!(
            event = event.kind.name(),
            "the live chat has ended: agent event ignored"
        );
        return Ok(Effect::default());
    }
    if let Some(ticket) = event.ticket_id.as_deref() {
        let url = ctx
            .config
            .org(&rec.org_id)
            .and_then(|o| o.zendesk())
            .map(|z| z.agent_ticket_url(ticket))
            .unwrap_or_default();
        if live.learn_ticket(TicketRef {
            id: ticket.to_string(),
            url,
        }) {
            LiveIndex::new(&ctx.store)
                .link(
                    &rec.org_id,
                    rec.provider,
                    IdKind::Ticket,
                    ticket,
                    &rec.conversation_id,
                )
                .await?;
        }
    }
    let signal = signal_of(ctx, rec, provider.as_ref(), event).await?;
    let events = match signal {
        Some(signal) => live.apply(signal),
        None => Vec::new(),
    };
    Ok(finish(rec, live, events))
}

/// What a Zendesk event means for the conversation, if anything.
async fn signal_of(
    ctx: &Context,
    rec: &ConversationRecord,
    provider: &dyn LiveChatProvider,
    event: &ZendeskEvent,
) -> Result<Option<AgentSignal>, ProcessError> {
    Ok(match &event.kind {
        EventKind::MessageAdded {
            actor: Actor::Agent,
            actor_name,
            body,
            ..
        } => Some(AgentSignal::Message {
            text: body.clone(),
            display_name: actor_name.clone(),
        }),
        // The customer's own messages (our relays), system and trigger lines.
        EventKind::MessageAdded { .. } => None,
        EventKind::AssignmentChanged {
            current: Some(id), ..
        } => Some(AgentSignal::Assigned {
            agent: AgentRef {
                id: id.clone(),
                display_name: agent_name(ctx, rec, provider, id).await?,
            },
            at: event.time,
        }),
        EventKind::AssignmentChanged {
            current: None,
            previous,
        } => Some(AgentSignal::Unassigned {
            at: event.time,
            previous: previous.clone(),
        }),
        EventKind::StatusChanged { current } if current == "SOLVED" || current == "CLOSED" => {
            Some(AgentSignal::Closed(ClosedBy::Agent))
        }
        EventKind::SessionEnded => Some(AgentSignal::Closed(ClosedBy::Agent)),
        EventKind::StatusChanged { .. } | EventKind::Other { .. } => None,
    })
}

/// An agent's display name: cached, else asked once of the provider.
async fn agent_name(
    ctx: &Context,
    rec: &ConversationRecord,
    provider: &dyn LiveChatProvider,
    id: &str,
) -> Result<String, ProcessError> {
    let index = LiveIndex::new(&ctx.store);
    if let Some(name) = index
        .cached_agent_name(&rec.org_id, rec.provider, id)
        .await?
    {
        return Ok(name);
    }
    let (found, _) = ctx
        .retry
        .run("look up the agent's name", || provider.agent_name(id))
        .await;
    let found = match found {
        Ok(found) => found,
        Err(err) if err.is_transient() => return Err(err.into()),
        // The agent joined either way: a name we cannot look up is not
        // worth losing the event.
        Err(err) => {
            tracing::warn!(error = %err, "cannot look up the agent's name: using a generic one");
            None
        }
    };
    match found {
        Some(name) => {
            index
                .cache_agent_name(&rec.org_id, rec.provider, id, &name)
                .await?;
            Ok(name)
        }
        None => Ok(GENERIC_AGENT_NAME.to_string()),
    }
}
