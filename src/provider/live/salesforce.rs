//! Salesforce live chat: Messaging for In-App and Web (Enhanced Chat)
//! through the org's Custom Client deployment ([`super::miaw::MiawClient`]).
//!
//! Hand-over, each step safe to repeat:
//! 1. an access token (stored in the conversation's messaging session),
//! 2. a conversation id we choose (a lowercase UUID v4, journalled before
//!    any call, so a retry reuses it),
//! 3. the event stream opened (by this worker's stream table) *before* the
//!    conversation exists, so no early event is missed,
//! 4. the conversation created with the routing attributes ("already
//!    exists" is success),
//! 5. the AI transcript: in a hidden pre-chat field when the org names one,
//!    else as a few combined messages with ids derived from the conversation
//!    (a repeat is not a second message), well under the 22 messages/minute.
//!
//! The agent's side comes back over the stream (`crate::live_stream`), is
//! handled in the conversation's lane (`pipeline::live::on_salesforce_stream`).
use super::miaw::{Created, MiawClient, MiawToken};
use super::zendesk::split_text;
use super::{Availability, HandoverJournal, HandoverRequest, Link, LiveChatProvider, LiveSession};
use crate::config::{SalesforceConfig, SalesforceLiveConfig};
use crate::contract::{CustomerMessage, FallbackReason, ProviderKind};
use crate::error::{ProcessError, ProviderError, ProviderErrorKind};
use crate::live_stream::session::Sessions;
use crate::store::Store;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use std::time::Duration;
use uuid::Uuid;

/// Characters per transcript message (Salesforce messages take more; short
/// enough for an agent's console).
const TRANSCRIPT_CHUNK: usize = 4_000;
/// At most this many transcript messages (the start of a long transcript
/// is cut; the Case of a fallback carries it whole).
const TRANSCRIPT_MESSAGES: usize = 3;
/// Inbound messages per conversation per minute (the documented limit).
pub const MESSAGES_PER_MINUTE: usize = 22;

/// Namespace of the message ids we derive (UUID v5 of it and a name).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d1a_2b9e_5c3f_4e71_9a0d_8b3c_1f2e_7a45);

pub struct SalesforceLive {
    client: MiawClient,
    live: SalesforceLiveConfig,
    url: String,
    org_id: String,
    sessions: Sessions,
    store: Store,
}

impl SalesforceLive {
    pub fn new(
        client: MiawClient,
        org_id: &str,
        sf: &SalesforceConfig,
        live: SalesforceLiveConfig,
        store: &Store,
    ) -> SalesforceLive {
        SalesforceLive {
            client,
            url: format!("{}/lightning/o/MessagingSession/home", sf.login_base_url()),
            live,
            org_id: org_id.to_string(),
            sessions: Sessions::new(store),
            store: store.clone(),
        }
    }

    pub fn client(&self) -> &MiawClient {
        &self.client
    }

    /// Our id of a message we send: the same logical message, the same id.
    pub fn message_id(conversation: &Uuid, name: &str) -> Uuid {
        Uuid::new_v5(&ID_NAMESPACE, format!("{conversation}/{name}").as_bytes())
    }

    async fn token(&self, conv: &str) -> Result<MiawToken, ProviderError> {
        match self.sessions.token(&self.org_id, conv).await {
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(ProviderError::permanent(
                "salesforce",
                ProviderErrorKind::SessionExpired,
                "no messaging session is stored for this conversation",
            )),
            Err(e) => Err(ProviderError::transient(
                "salesforce",
                ProviderErrorKind::Unavailable,
                format!("messaging session unreadable: {e}"),
            )),
        }
    }

    /// Run `call` with the stored token; on an expired token, renew it
    /// (continuation) once and try again.
    async fn with_token<T, F, Fut>(&self, conv: &str, call: F) -> Result<T, ProviderError>
    where
        F: Fn(MiawToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let token = self.token(conv).await?;
        match call(token.clone()).await {
            Err(e) if e.kind == ProviderErrorKind::SessionExpired => {
                let fresh = self.client.continuation_token(&token).await?;
                if let Err(err) = self.sessions.save_token(&self.org_id, conv, &fresh).await {
                    tracing::warn!(error = %err, "renewed token not stored");
                }
                call(fresh).await
            }
            other => other,
        }
    }

    fn conversation_of(session: &LiveSession) -> Result<Uuid, ProviderError> {
        Uuid::parse_str(&session.conversation_id).map_err(|_| {
            ProviderError::permanent(
                "salesforce",
                ProviderErrorKind::Protocol,
                "the stored messaging conversation id is not a UUID",
            )
        })
    }

    /// Wait for room under the per-conversation message rate: never fail.
    /// A short wait is made here; a longer one is our own budget (the
    /// message waits in the retry queue, not counted as a failure).
    async fn rate_slot(&self, conv: &str, message: &Uuid) -> Result<(), ProviderError> {
        let key = self.sessions.sent_key(&self.org_id, conv);
        let mut c = self.store.connection();
        let now = Utc::now().timestamp_millis();
        let oldest: Result<Vec<(String, i64)>, _> = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now - 60_000)
            .ignore()
            .cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async::<(Vec<(String, i64)>,)>(&mut c)
            .await
            .map(|(v,)| v);
        let sent = oldest.map_err(|e| {
            ProviderError::transient(
                "salesforce",
                ProviderErrorKind::Unavailable,
                format!("message rate unreadable: {e}"),
            )
        })?;
        let mine = message.to_string();
        if sent.len() >= MESSAGES_PER_MINUTE && !sent.iter().any(|(m, _)| *m == mine) {
            let first = sent.len() - MESSAGES_PER_MINUTE;
            let free_at = sent[first].1 + 60_000;
            let wait = Duration::from_millis((free_at - now).max(1) as u64);
            if wait > Duration::from_secs(2) {
                return Err(ProviderError::transient(
                    "salesforce",
                    ProviderErrorKind::BudgetExhausted,
                    "the conversation's message rate (22 a minute) is used up: waiting",
                )
                .with_retry_after(Some(wait)));
            }
            tokio::time::sleep(wait).await;
        }
        let _: Result<(), _> = redis::pipe()
            .zadd(&key, &mine, Utc::now().timestamp_millis())
            .ignore()
            .expire(&key, 120)
            .ignore()
            .query_async(&mut c)
            .await;
        Ok(())
    }

    async fn send(
        &self,
        conv: &str,
        conversation: &Uuid,
        id: &Uuid,
        text: &str,
        routing: &Map<String, Value>,
    ) -> Result<(), ProviderError> {
        self.rate_slot(conv, id).await?;
        self.with_token(conv, |t| async move {
            self.client
                .send_text(&t, conversation, id, text, routing)
                .await
        })
        .await
    }

    async fn routing(&self, conv: &str) -> Map<String, Value> {
        self.sessions
            .routing(&self.org_id, conv)
            .await
            .unwrap_or_default()
    }
}

fn infra(e: crate::error::InfraError) -> ProcessError {
    ProcessError::Infra(e)
}

#[async_trait::async_trait]
impl LiveChatProvider for SalesforceLive {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Salesforce
    }

    async fn availability(&self) -> Result<Availability, ProviderError> {
        let hours = self.client.business_hours().await?;
        Ok(if hours.is_active {
            Availability::Open
        } else {
            Availability::Closed(FallbackReason::OutsideBusinessHours)
        })
    }

    async fn hand_over(
        &self,
        req: HandoverRequest<'_>,
        journal: &dyn HandoverJournal,
    ) -> Result<LiveSession, ProcessError> {
        let e = req.escalation;
        let conv = e.conversation_id.as_str();
        let mut routing = self.live.routing_attributes(e);
        let transcript = crate::provider::transcript::plain(e, None);
        if let Some(field) = &self.live.transcript_field {
            routing.insert(
                field.clone(),
                Value::String(crate::provider::transcript::truncate_chars(
                    &transcript,
                    TRANSCRIPT_CHUNK * TRANSCRIPT_MESSAGES,
                )),
            );
        }
        self.sessions
            .save_request(&self.org_id, conv, e, &routing)
            .await
            .map_err(infra)?;
        // 1. A token (a new anonymous subject: only on the first attempt).
        if self
            .sessions
            .token(&self.org_id, conv)
            .await
            .map_err(infra)?
            .is_none()
        {
            let token = self.client.access_token().await?;
            self.sessions
                .save_token(&self.org_id, conv, &token)
                .await
                .map_err(infra)?;
            if let Some(id) = token.last_event_id.as_deref() {
                self.sessions
                    .advance(&self.org_id, conv, Some(id), None)
                    .await
                    .map_err(infra)?;
            }
        }
        // 2. Our conversation id, recorded before it is used.
        let conversation = match journal.get("conversation").await? {
            Some(id) => Uuid::parse_str(&id).map_err(|_| {
                ProcessError::Infra(crate::error::InfraError::Corrupt(
                    "hand-over journal: conversation id is not a UUID".into(),
                ))
            })?,
            None => {
                let id = Uuid::new_v4();
                journal.put("conversation", &id.to_string()).await?;
                id
            }
        };
        self.sessions
            .save_conversation(&self.org_id, conv, &conversation)
            .await
            .map_err(infra)?;
        journal
            .link(Link::ProviderConversation(&conversation.to_string()))
            .await?;
        // 3. The stream, before the conversation exists.
        if let Some(streams) = req.streams {
            streams.open(&self.org_id, conv).await?;
        }
        // 4. The conversation.
        if journal.get("created").await?.is_none() {
            let created = self
                .with_token(conv, |t| {
                    let routing = &routing;
                    async move {
                        self.client
                            .create_conversation(&t, &conversation, routing)
                            .await
                    }
                })
                .await?;
            if matches!(created, Created::Existed) {
                tracing::info!(
                    "the messaging conversation existed already (an earlier attempt made it)"
                );
            }
            journal.put("created", &Utc::now().to_rfc3339()).await?;
        }
        // 5. The transcript, unless a pre-chat field carried it.
        if self.live.transcript_field.is_none() {
            let mut parts = split_text(&transcript, TRANSCRIPT_CHUNK);
            if parts.len() > TRANSCRIPT_MESSAGES {
                parts.drain(..parts.len() - TRANSCRIPT_MESSAGES);
            }
            for (i, part) in parts.iter().enumerate() {
                let step = format!("transcript:{i}");
                if journal.get(&step).await?.is_some() {
                    continue;
                }
                let id = Self::message_id(&conversation, &step);
                self.send(conv, &conversation, &id, part, &routing).await?;
                journal.put(&step, &id.to_string()).await?;
            }
        }
        Ok(LiveSession {
            user_id: String::new(),
            conversation_id: conversation.to_string(),
            url: self.url.clone(),
        })
    }

    async fn send_customer_message(
        &self,
        session: &LiveSession,
        msg: &CustomerMessage,
    ) -> Result<(), ProviderError> {
        let conversation = Self::conversation_of(session)?;
        let id = Self::message_id(&conversation, &format!("customer:{}", msg.message_id));
        let routing = self.routing(&msg.conversation_id).await;
        self.send(
            &msg.conversation_id,
            &conversation,
            &id,
            &msg.text,
            &routing,
        )
        .await
    }

    async fn has_customer_message(
        &self,
        session: &LiveSession,
        msg: &CustomerMessage,
        since: DateTime<Utc>,
    ) -> Result<bool, ProviderError> {
        let conversation = Self::conversation_of(session)?;
        let id =
            Self::message_id(&conversation, &format!("customer:{}", msg.message_id)).to_string();
        let since = since.timestamp_millis() - 60_000;
        let entries = self
            .with_token(&msg.conversation_id, |t| async move {
                self.client.entries(&t, &conversation, Some(since)).await
            })
            .await?;
        Ok(entries.iter().any(|e| {
            matches!(&e.kind, super::miaw::EntryKind::Message { message_id: Some(m), .. } if *m == id)
        }))
    }

    async fn typing(&self, session: &LiveSession, typing: bool) -> Result<(), ProviderError> {
        let conversation = Self::conversation_of(session)?;
        let conv = self.conv_of_session(session).await;
        self.with_token(&conv, |t| async move {
            self.client.typing(&t, &conversation, typing).await
        })
        .await
    }

    async fn customer_left(&self, session: &LiveSession, text: &str) -> Result<(), ProviderError> {
        let conversation = Self::conversation_of(session)?;
        let conv = self.conv_of_session(session).await;
        let id = Self::message_id(&conversation, "customer-left");
        let routing = self.routing(&conv).await;
        if let Err(e) = self.send(&conv, &conversation, &id, text, &routing).await {
            // The conversation closes either way.
            tracing::info!(error = %e, "the customer-left notice was not delivered");
        }
        self.with_token(&conv, |t| async move {
            self.client.close(&t, &conversation).await
        })
        .await
    }

    async fn agent_name(&self, _agent_id: &str) -> Result<Option<String>, ProviderError> {
        // Salesforce names the agent in each entry (senderDisplayName).
        Ok(None)
    }
}

impl SalesforceLive {
    /// Our conversation id of a provider session (the link index knows it).
    async fn conv_of_session(&self, session: &LiveSession) -> String {
        crate::live_index::LiveIndex::new(&self.store)
            .resolve(
                &self.org_id,
                ProviderKind::Salesforce,
                &[(
                    crate::live_index::IdKind::Conversation,
                    session.conversation_id.as_str(),
                )],
            )
            .await
            .ok()
            .and_then(|mut v| v.pop().flatten())
            .unwrap_or_default()
    }
}
