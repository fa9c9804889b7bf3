//! TEMPORARY STUB (lead): replaced by the miawclient branch.
#![allow(dead_code, unused_variables)]
use crate::error::{ProviderError, ProviderErrorKind};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

#[derive(Clone)]
pub struct MiawClient;
pub enum Created {
    New,
    Existed,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingStatus {
    Initial,
    Routed,
    NeedsRouting,
    Transfer,
    Other(String),
}
pub struct BusinessHours {
    pub is_active: bool,
}
#[derive(Clone)]
pub struct MiawToken {
    pub access_token: Secret,
    pub last_event_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub issued_at: DateTime<Utc>,
}
impl MiawToken {
    pub fn to_stored(&self) -> String {
        String::new()
    }
    pub fn from_stored(s: &str) -> Option<MiawToken> {
        None
    }
    pub fn expires_within(&self, d: std::time::Duration) -> bool {
        false
    }
}
pub struct MiawStream;
impl futures_util::Stream for MiawStream {
    type Item = Result<StreamItem, StreamError>;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(None)
    }
}
pub enum StreamItem {
    Entry {
        event_id: Option<String>,
        conversation_id: String,
        event_type: String,
        entry: ConversationEntry,
    },
    Ping,
    Error {
        expired: bool,
    },
    Other {
        event_id: Option<String>,
        event_type: String,
    },
}
#[derive(Debug, thiserror::Error)]
#[error("stream error")]
pub struct StreamError;
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConversationEntry {
    pub identifier: String,
    pub sender_role: SenderRole,
    pub sender_display_name: Option<String>,
    pub sender_subject: Option<String>,
    pub transcripted_at_ms: Option<i64>,
    pub kind: EntryKind,
}
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SenderRole {
    EndUser,
    Agent,
    Chatbot,
    System,
    Router,
    Supervisor,
    Other(String),
}
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ParticipantChange {
    pub added: bool,
    pub role: SenderRole,
    pub display_name: Option<String>,
    pub subject: Option<String>,
}
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum EntryKind {
    Message {
        text: String,
        message_id: Option<String>,
    },
    ParticipantChanged(Vec<ParticipantChange>),
    RoutingResult {
        transfer: bool,
        failed: bool,
    },
    Typing(bool),
    SessionStatus {
        ended: bool,
        active: bool,
        ended_by: Option<SenderRole>,
    },
    CloseConversation,
    QueuePosition(u32),
    Other(String),
}
pub fn parse_entry(v: &Value) -> Option<ConversationEntry> {
    None
}
fn e() -> ProviderError {
    ProviderError::permanent("salesforce", ProviderErrorKind::Configuration, "stub")
}
impl MiawClient {
    pub fn new(http: reqwest::Client, cfg: &crate::config::SalesforceLiveConfig) -> MiawClient {
        MiawClient
    }
    pub async fn access_token(&self) -> Result<MiawToken, ProviderError> {
        Err(e())
    }
    pub async fn continuation_token(&self, t: &MiawToken) -> Result<MiawToken, ProviderError> {
        Err(e())
    }
    pub async fn create_conversation(
        &self,
        t: &MiawToken,
        id: &Uuid,
        routing: &Map<String, Value>,
    ) -> Result<Created, ProviderError> {
        Err(e())
    }
    pub async fn send_text(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
        message_id: &Uuid,
        text: &str,
        routing: &Map<String, Value>,
    ) -> Result<(), ProviderError> {
        Err(e())
    }
    pub async fn typing(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
        started: bool,
    ) -> Result<(), ProviderError> {
        Err(e())
    }
    pub async fn close(&self, t: &MiawToken, conversation: &Uuid) -> Result<(), ProviderError> {
        Err(e())
    }
    pub async fn routing_status(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
    ) -> Result<RoutingStatus, ProviderError> {
        Err(e())
    }
    pub async fn entries(
        &self,
        t: &MiawToken,
        conversation: &Uuid,
        since_ms: Option<i64>,
    ) -> Result<Vec<ConversationEntry>, ProviderError> {
        Err(e())
    }
    pub async fn business_hours(&self) -> Result<BusinessHours, ProviderError> {
        Err(e())
    }
    pub async fn open_stream(
        &self,
        t: &MiawToken,
        last_event_id: Option<&str>,
    ) -> Result<MiawStream, ProviderError> {
        Err(e())
    }
}
