//! The live-chat seam: a real-time conversation with a human agent, beside
//! the ticket path ([`super::TicketProvider`]). Zendesk implements it with
//! Sunshine Conversations (`zendesk`); Salesforce will with Messaging for
//! In-App and Web.
//!
//! A hand-over is a sequence of provider calls (user, conversation,
//! transcript, routing). Each is made at most once per conversation even
//! across crashes: the provider writes what each step produced to a
//! [`HandoverJournal`] (Redis, per conversation) before the next step, and
//! marks a step as attempted before its call, so that a resumed hand-over
//! looks up (instead of repeating) a step whose answer was lost.
pub mod availability;
pub mod miaw;
pub mod salesforce;
pub mod sunshine;
pub mod zendesk;

use crate::config::OrgConfig;
use crate::contract::{CustomerMessage, EscalationRequested, FallbackReason, ProviderKind};
use crate::error::{InfraError, ProcessError, ProviderError};
use chrono::{DateTime, Utc};

/// Whether an agent can take a chat now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Open,
    /// No: the request becomes a ticket, for this reason.
    Closed(FallbackReason),
}

/// What a hand-over needs.
#[derive(Clone, Copy)]
pub struct HandoverRequest<'a> {
    pub org: &'a OrgConfig,
    pub escalation: &'a EscalationRequested,
    /// A ticket tag that names this conversation (ticket events carry no
    /// conversation id; the tag comes back in their `detail.tags`).
    pub correlation_tag: &'a str,
    /// Opens the conversation's event stream (providers whose agent events
    /// come over a stream: Salesforce).
    pub streams: Option<&'a dyn StreamOpener>,
}

impl std::fmt::Debug for HandoverRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoverRequest")
            .field("org", &self.org.org_id)
            .field("conversation_id", &self.escalation.conversation_id)
            .field("streams", &self.streams.is_some())
            .finish_non_exhaustive()
    }
}

/// Opens a live conversation's event stream on this worker and waits until
/// it is connected.
#[async_trait::async_trait]
pub trait StreamOpener: Send + Sync {
    async fn open(&self, org_id: &str, conversation_id: &str) -> Result<(), InfraError>;
}

/// The live conversation at the provider, as the record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveSession {
    /// The provider's user for the customer (Sunshine user id).
    pub user_id: String,
    /// The provider's conversation (Sunshine conversation id).
    pub conversation_id: String,
    /// Where an agent can find it until a ticket id is known.
    pub url: String,
}

/// A fact learnt during a hand-over that maps provider events back to our
/// conversation; written to Redis as soon as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link<'a> {
    /// The provider's conversation id (Zendesk `event.conversation_id`).
    ProviderConversation(&'a str),
    /// A ticket id (Zendesk ticket events' `subject` / `detail.id`).
    Ticket(&'a str),
}

/// Per-conversation progress of a hand-over, kept in Redis
/// (`P:conv:{T}:handover`). Keys are the provider's step names.
#[async_trait::async_trait]
pub trait HandoverJournal: Send + Sync {
    /// What step `step` produced, if it completed.
    async fn get(&self, step: &str) -> Result<Option<String>, InfraError>;
    /// Record what step `step` produced (a fact: writing it twice is harmless).
    async fn put(&self, step: &str, value: &str) -> Result<(), InfraError>;
    /// Map a provider id to this conversation (see [`Link`]).
    async fn link(&self, link: Link<'_>) -> Result<(), InfraError>;
}

/// The live path of one provider for one org.
#[async_trait::async_trait]
pub trait LiveChatProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Whether an agent can take a chat now (the org's availability policy).
    async fn availability(&self) -> Result<Availability, ProviderError>;

    /// Start the hand-over, or resume one an earlier attempt left half-way.
    /// Idempotent: every step is journalled; no second user, conversation,
    /// transcript copy or routing request, whatever crashed where.
    async fn hand_over(
        &self,
        req: HandoverRequest<'_>,
        journal: &dyn HandoverJournal,
    ) -> Result<LiveSession, ProcessError>;

    /// Post a later customer message into the conversation (our message id
    /// in its metadata, so [`Self::has_customer_message`] can find it).
    async fn send_customer_message(
        &self,
        session: &LiveSession,
        msg: &CustomerMessage,
    ) -> Result<(), ProviderError>;

    /// Whether an earlier (crashed) attempt already posted this message.
    /// `since` is when the first attempt began.
    async fn has_customer_message(
        &self,
        session: &LiveSession,
        msg: &CustomerMessage,
        since: DateTime<Utc>,
    ) -> Result<bool, ProviderError>;

    /// The customer started (`true`) or stopped typing.
    async fn typing(&self, session: &LiveSession, typing: bool) -> Result<(), ProviderError>;

    /// The customer left: tell the agent with a short notice (`text`, our words).
    async fn customer_left(&self, session: &LiveSession, text: &str) -> Result<(), ProviderError>;

    /// An agent's display name from the provider's user id (Zendesk Users
    /// API); `None` when the provider does not know the id.
    async fn agent_name(&self, agent_id: &str) -> Result<Option<String>, ProviderError>;
}
