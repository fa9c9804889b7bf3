//! The message contract: inbound events on `escalator.inbound` and outbound
//! agent events on `escalator.outbound`. `schemas/` holds the same contract as
//! JSON Schema; `tests/schemas.rs` checks that the two agree.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Routing keys of the inbound exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InboundKind {
    EscalationRequested,
    CustomerMessage,
    CustomerTyping,
    CustomerEnded,
    WebhookZendesk,
    WebhookSunshine,
    /// Internal: an event of a Salesforce messaging stream, forwarded by the
    /// stream reader straight to the conversation's shard. Not part of the
    /// producers' contract (not in [`InboundKind::ALL`]); the intake router
    /// refuses it on `escalator.inbound`.
    SalesforceStream,
}

impl InboundKind {
    pub const ALL: [InboundKind; 6] = [
        InboundKind::EscalationRequested,
        InboundKind::CustomerMessage,
        InboundKind::CustomerTyping,
        InboundKind::CustomerEnded,
        InboundKind::WebhookZendesk,
        InboundKind::WebhookSunshine,
    ];

    pub fn routing_key(self) -> &'static str {
        match self {
            InboundKind::EscalationRequested => "escalation.requested",
            InboundKind::CustomerMessage => "customer.message",
            InboundKind::CustomerTyping => "customer.typing",
            InboundKind::CustomerEnded => "customer.ended",
            InboundKind::WebhookZendesk => "webhook.zendesk",
            InboundKind::WebhookSunshine => "webhook.sunshine",
            InboundKind::SalesforceStream => "salesforce.stream",
        }
    }

    pub fn from_routing_key(key: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .chain([InboundKind::SalesforceStream])
            .find(|k| k.routing_key() == key)
    }

    /// Made by the escalator itself, never by producers.
    pub fn is_internal(self) -> bool {
        self == InboundKind::SalesforceStream
    }

    /// The schema file in `schemas/` for this event's body.
    pub fn schema_name(self) -> &'static str {
        match self {
            InboundKind::EscalationRequested => "inbound/escalation.requested.json",
            InboundKind::CustomerMessage => "inbound/customer.message.json",
            InboundKind::CustomerTyping => "inbound/customer.typing.json",
            InboundKind::CustomerEnded => "inbound/customer.ended.json",
            InboundKind::WebhookZendesk => "inbound/webhook.zendesk.json",
            InboundKind::WebhookSunshine => "inbound/webhook.sunshine.json",
            // Never validated: the intake router refuses it before.
            InboundKind::SalesforceStream => "internal/salesforce.stream.json",
        }
    }
}

/// A parsed inbound event.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundEvent {
    EscalationRequested(EscalationRequested),
    CustomerMessage(CustomerMessage),
    CustomerTyping(CustomerTyping),
    CustomerEnded(CustomerEnded),
    WebhookZendesk(Webhook),
    WebhookSunshine(Webhook),
    SalesforceStream(SalesforceStreamEvent),
}

impl InboundEvent {
    pub fn parse(kind: InboundKind, body: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(match kind {
            InboundKind::EscalationRequested => {
                Self::EscalationRequested(serde_json::from_slice(body)?)
            }
            InboundKind::CustomerMessage => Self::CustomerMessage(serde_json::from_slice(body)?),
            InboundKind::CustomerTyping => Self::CustomerTyping(serde_json::from_slice(body)?),
            InboundKind::CustomerEnded => Self::CustomerEnded(serde_json::from_slice(body)?),
            InboundKind::WebhookZendesk => Self::WebhookZendesk(serde_json::from_slice(body)?),
            InboundKind::WebhookSunshine => Self::WebhookSunshine(serde_json::from_slice(body)?),
            InboundKind::SalesforceStream => Self::SalesforceStream(serde_json::from_slice(body)?),
        })
    }

    pub fn kind(&self) -> InboundKind {
        match self {
            Self::EscalationRequested(_) => InboundKind::EscalationRequested,
            Self::CustomerMessage(_) => InboundKind::CustomerMessage,
            Self::CustomerTyping(_) => InboundKind::CustomerTyping,
            Self::CustomerEnded(_) => InboundKind::CustomerEnded,
            Self::WebhookZendesk(_) => InboundKind::WebhookZendesk,
            Self::WebhookSunshine(_) => InboundKind::WebhookSunshine,
            Self::SalesforceStream(_) => InboundKind::SalesforceStream,
        }
    }

    pub fn org_id(&self) -> &str {
        match self {
            Self::EscalationRequested(e) => &e.org_id,
            Self::CustomerMessage(e) => &e.org_id,
            Self::CustomerTyping(e) => &e.org_id,
            Self::CustomerEnded(e) => &e.org_id,
            Self::WebhookZendesk(e) | Self::WebhookSunshine(e) => &e.org_id,
            Self::SalesforceStream(e) => &e.org_id,
        }
    }

    /// The conversation the event belongs to; raw webhooks name none until
    /// they are mapped to one.
    pub fn conversation_id(&self) -> Option<&str> {
        match self {
            Self::EscalationRequested(e) => Some(&e.conversation_id),
            Self::CustomerMessage(e) => Some(&e.conversation_id),
            Self::CustomerTyping(e) => Some(&e.conversation_id),
            Self::CustomerEnded(e) => Some(&e.conversation_id),
            Self::WebhookZendesk(_) | Self::WebhookSunshine(_) => None,
            Self::SalesforceStream(e) => Some(&e.conversation_id),
        }
    }
}

/// What the Salesforce stream reader hands to a conversation's lane
/// (`salesforce.stream`, internal).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SalesforceStreamEvent {
    pub org_id: String,
    pub conversation_id: String,
    pub received_at: DateTime<Utc>,
    #[serde(flatten)]
    pub what: StreamWhat,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StreamWhat {
    /// A conversation entry as the stream (or the entries list) gave it.
    Entry {
        event_type: String,
        entry: serde_json::Value,
    },
    /// The messaging session cannot be reached any more (its token could
    /// not be renewed): the conversation falls back to a Case.
    SessionLost { reason: String },
}

impl std::fmt::Debug for SalesforceStreamEvent {
    // No entry content (message text, names): this reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match &self.what {
            StreamWhat::Entry { event_type, .. } => event_type.as_str(),
            StreamWhat::SessionLost { .. } => "session_lost",
        };
        f.debug_struct("SalesforceStreamEvent")
            .field("org_id", &self.org_id)
            .field("conversation_id", &self.conversation_id)
            .field("what", &what)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Ticket,
    Live,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ticket => "ticket",
            Mode::Live => "live",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Zendesk,
    Salesforce,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Zendesk => "zendesk",
            ProviderKind::Salesforce => "salesforce",
        }
    }

    /// The product name, for sentences people read.
    pub fn display_name(self) -> &'static str {
        match self {
            ProviderKind::Zendesk => "Zendesk",
            ProviderKind::Salesforce => "Salesforce",
        }
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Ai,
    Agent,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Customer => "Customer",
            Role::Ai => "AI assistant",
            Role::Agent => "Agent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    pub role: Role,
    pub text: String,
    pub sent_at: DateTime<Utc>,
}

/// Per-event overrides of the org's ticket routing defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<u64>,
    /// Replaces the org's default tags when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}

/// `escalation.requested`: the AI agent hands the conversation to humans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationRequested {
    pub org_id: String,
    pub conversation_id: String,
    pub mode: Mode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    pub customer: Customer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default)]
    pub transcript: Vec<TranscriptEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub context: BTreeMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment: Option<Assignment>,
    pub requested_at: DateTime<Utc>,
}

/// `customer.message`: the customer wrote again after the escalation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerMessage {
    pub org_id: String,
    pub conversation_id: String,
    pub message_id: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
}

/// `customer.typing`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerTyping {
    pub org_id: String,
    pub conversation_id: String,
    /// true = started typing, false = stopped.
    #[serde(default = "default_true")]
    pub typing: bool,
    pub sent_at: DateTime<Utc>,
}

fn default_true() -> bool {
    true
}

/// `customer.ended`: the customer left the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerEnded {
    pub org_id: String,
    pub conversation_id: String,
    pub ended_at: DateTime<Utc>,
}

/// `webhook.zendesk` / `webhook.sunshine`: what the ingress received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub org_id: String,
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The raw body, exactly as delivered.
    pub body: String,
}

// ---------------------------------------------------------------- outbound

/// One event on `escalator.outbound`, routing key `{org_id}.{type}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundEvent {
    pub event_id: uuid::Uuid,
    pub org_id: String,
    pub conversation_id: String,
    /// Per conversation, increasing: the widget orders and dedupes on it.
    pub seq: u64,
    pub occurred_at: DateTime<Utc>,
    pub provider: ProviderKind,
    #[serde(flatten)]
    pub payload: OutboundPayload,
}

impl OutboundEvent {
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.org_id, self.payload.event_type())
    }
}

/// The `type` and `data` of an outbound event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OutboundPayload {
    #[serde(rename = "escalation.created")]
    EscalationCreated(EscalationCreated),
    #[serde(rename = "escalation.failed")]
    EscalationFailed(EscalationFailed),
    #[serde(rename = "escalation.queued")]
    EscalationQueued(EscalationQueued),
    #[serde(rename = "agent.joined")]
    AgentJoined(AgentJoined),
    #[serde(rename = "agent.message")]
    AgentMessage(AgentMessage),
    #[serde(rename = "agent.typing")]
    AgentTyping(AgentTyping),
    #[serde(rename = "agent.left")]
    AgentLeft(AgentLeft),
    #[serde(rename = "conversation.closed")]
    ConversationClosed(ConversationClosed),
}

impl OutboundPayload {
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::EscalationCreated(_) => "escalation.created",
            Self::EscalationFailed(_) => "escalation.failed",
            Self::EscalationQueued(_) => "escalation.queued",
            Self::AgentJoined(_) => "agent.joined",
            Self::AgentMessage(_) => "agent.message",
            Self::AgentTyping(_) => "agent.typing",
            Self::AgentLeft(_) => "agent.left",
            Self::ConversationClosed(_) => "conversation.closed",
        }
    }
}

/// What kind of record the escalation created at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalKind {
    ZendeskTicket,
    SalesforceCase,
    SunshineConversation,
    SalesforceMessaging,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationCreated {
    pub mode: Mode,
    pub external_kind: ExternalKind,
    /// Ticket id, Case id or conversation id at the provider.
    pub external_id: String,
    /// Human-facing number when the provider has one (Salesforce CaseNumber).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_number: Option<String>,
    /// Where an agent opens it.
    pub url: String,
    /// Set when a live request became a ticket or case, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<FallbackReason>,
}

/// Why a live request became a ticket or case (`escalation.created`'s
/// `fallback_reason`). The values are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// The org's business-hours schedule is closed now.
    OutsideBusinessHours,
    /// No agent is online to take the chat.
    NoAgentOnline,
    /// The hand-over failed for good half-way; the ticket carries the transcript.
    HandoverFailed,
    /// Live chat is switched off (or not set up) for the org and provider.
    LiveChatOff,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 4] = [
        FallbackReason::OutsideBusinessHours,
        FallbackReason::NoAgentOnline,
        FallbackReason::HandoverFailed,
        FallbackReason::LiveChatOff,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FallbackReason::OutsideBusinessHours => "outside_business_hours",
            FallbackReason::NoAgentOnline => "no_agent_online",
            FallbackReason::HandoverFailed => "handover_failed",
            FallbackReason::LiveChatOff => "live_chat_off",
        }
    }

    /// A sentence for the agent's copy of the transcript.
    pub fn sentence(self) -> &'static str {
        match self {
            FallbackReason::OutsideBusinessHours => {
                "The customer asked for a live chat outside business hours."
            }
            FallbackReason::NoAgentOnline => {
                "The customer asked for a live chat while no agent was online."
            }
            FallbackReason::HandoverFailed => {
                "The customer asked for a live chat, but the hand-over to an agent failed."
            }
            FallbackReason::LiveChatOff => {
                "The customer asked for a live chat, which is switched off for this organisation."
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EscalationFailed {
    /// A sentence a person can be shown: what could not be done, and why in
    /// plain words. Never a provider's text, never customer data; the
    /// technical detail is in the dead letter and the logs.
    pub reason: String,
    /// Stable machine-readable cause (the widget branches on this, not on `reason`).
    pub code: FailureCode,
    /// `permanent` or `transient` (retries exhausted).
    pub error_class: crate::error::ErrorClass,
    /// The inbound routing key of the event that failed.
    pub failed_event: String,
}

/// Why an inbound event failed for good, in `escalation.failed`. The values
/// are part of the contract (`schemas/outbound/event.json` documents each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The event itself is unusable: it fails its schema, has duplicate keys,
    /// is too large, or cannot be read.
    InvalidRequest,
    /// The provider refused the content (validation, missing record, conflict).
    ProviderRejected,
    /// The provider stayed unreachable or overloaded until retries ran out.
    ProviderUnavailable,
    /// The provider refused the org's credentials.
    ProviderAuthFailed,
    /// The provider answered something the escalator could not understand.
    ProviderError,
    /// The org's escalator or provider setup cannot work (unknown org, wrong domain).
    ConfigurationError,
    /// A follow-up event for a conversation that was never escalated.
    NotEscalated,
    /// An event this version of the escalator does not handle.
    NotSupported,
}

impl FailureCode {
    pub const ALL: [FailureCode; 8] = [
        FailureCode::InvalidRequest,
        FailureCode::ProviderRejected,
        FailureCode::ProviderUnavailable,
        FailureCode::ProviderAuthFailed,
        FailureCode::ProviderError,
        FailureCode::ConfigurationError,
        FailureCode::NotEscalated,
        FailureCode::NotSupported,
    ];
}

/// The sentence for `escalation.failed`'s `reason`: what could not be done
/// (from the failed event's routing key) and why (`cause`, a fixed phrase).
/// Built only from our own words, so it can be shown to anyone.
pub fn failure_sentence(failed_event: &str, provider: ProviderKind, cause: &str) -> String {
    let record = match provider {
        ProviderKind::Zendesk => "ticket",
        ProviderKind::Salesforce => "case",
    };
    let what = match InboundKind::from_routing_key(failed_event) {
        Some(InboundKind::EscalationRequested) => {
            format!("The support {record} could not be created")
        }
        Some(InboundKind::CustomerMessage) => {
            "The message could not be passed on to the support team".to_string()
        }
        Some(InboundKind::CustomerTyping | InboundKind::CustomerEnded) => {
            "The update could not be passed on to the support team".to_string()
        }
        Some(
            InboundKind::WebhookZendesk
            | InboundKind::WebhookSunshine
            | InboundKind::SalesforceStream,
        )
        | None => "An update from the support system could not be processed".to_string(),
    };
    format!("{what}: {cause}")
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EscalationQueued {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
}

/// The provider's ticket behind a live conversation (Zendesk's messaging
/// ticket), sent with the first agent event that knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketRef {
    pub id: String,
    /// Where an agent opens it.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentJoined {
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentMessage {
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTyping {
    pub typing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentLeft {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    Agent,
    Customer,
    System,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationClosed {
    pub closed_by: ClosedBy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<TicketRef>,
}
