//! The messaging session of one live Salesforce conversation, in Redis
//! (`P:conv:{T}:miaw`, hash): what the lane's provider calls and the stream
//! reader share. Not the conversation record: the reader writes only its
//! cursor and renewed tokens here, never the record.
//!
//! | field | value |
//! |---|---|
//! | `token` | the access token ([`MiawToken::to_stored`]); renewed by the stream owner |
//! | `conversation` | the MIAW conversation id (lowercase UUID v4, chosen by us) |
//! | `last_event_id` | the stream cursor (`Last-Event-Id` of the next connect) |
//! | `last_entry_ms` | transcriptedTimestamp of the last entry forwarded (backfill start) |
//! | `escalation` | the `escalation.requested` (JSON): a later fallback Case needs it |
//! | `routing` | the routing attributes (JSON): a new messaging session needs them |
use crate::contract::EscalationRequested;
use crate::error::InfraError;
use crate::provider::live::miaw::MiawToken;
use crate::store::Store;
use redis::AsyncCommands;
use serde_json::{Map, Value};
use uuid::Uuid;

/// Access to the sessions of live Salesforce conversations.
#[derive(Clone)]
pub struct Sessions {
    store: Store,
}

/// What the stream reader needs to (re)connect.
pub struct Cursor {
    pub token: Option<MiawToken>,
    pub conversation: Option<Uuid>,
    pub last_event_id: Option<String>,
    pub last_entry_ms: Option<i64>,
}

impl Sessions {
    pub fn new(store: &Store) -> Sessions {
        Sessions {
            store: store.clone(),
        }
    }

    fn key(&self, org: &str, conv: &str) -> String {
        self.store.key(org, conv, ":miaw")
    }

    /// Key of the send times of the last minute (the per-conversation message rate).
    pub(crate) fn sent_key(&self, org: &str, conv: &str) -> String {
        self.store.key(org, conv, ":miaw:sent")
    }

    async fn set(
        &self,
        org: &str,
        conv: &str,
        fields: &[(&str, String)],
    ) -> Result<(), InfraError> {
        let mut c = self.store.connection();
        let key = self.key(org, conv);
        let ttl = self.store.state_ttl_secs();
        redis::pipe()
            .hset_multiple(&key, fields)
            .ignore()
            .expire(&key, ttl)
            .ignore()
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    async fn get(&self, org: &str, conv: &str, field: &str) -> Result<Option<String>, InfraError> {
        let mut c = self.store.connection();
        Ok(c.hget(self.key(org, conv), field).await?)
    }

    pub async fn token(&self, org: &str, conv: &str) -> Result<Option<MiawToken>, InfraError> {
        Ok(self
            .get(org, conv, "token")
            .await?
            .and_then(|s| MiawToken::from_stored(&s)))
    }

    pub async fn save_token(
        &self,
        org: &str,
        conv: &str,
        token: &MiawToken,
    ) -> Result<(), InfraError> {
        self.set(org, conv, &[("token", token.to_stored())]).await
    }

    pub async fn conversation(&self, org: &str, conv: &str) -> Result<Option<Uuid>, InfraError> {
        Ok(self
            .get(org, conv, "conversation")
            .await?
            .and_then(|s| Uuid::parse_str(&s).ok()))
    }

    pub async fn save_conversation(
        &self,
        org: &str,
        conv: &str,
        id: &Uuid,
    ) -> Result<(), InfraError> {
        self.set(org, conv, &[("conversation", id.to_string())])
            .await
    }

    pub async fn save_request(
        &self,
        org: &str,
        conv: &str,
        e: &EscalationRequested,
        routing: &Map<String, Value>,
    ) -> Result<(), InfraError> {
        let escalation = serde_json::to_string(e)
            .map_err(|err| InfraError::Corrupt(format!("escalation request: {err}")))?;
        let routing = Value::Object(routing.clone()).to_string();
        self.set(
            org,
            conv,
            &[("escalation", escalation), ("routing", routing)],
        )
        .await
    }

    pub async fn escalation(
        &self,
        org: &str,
        conv: &str,
    ) -> Result<Option<EscalationRequested>, InfraError> {
        Ok(self
            .get(org, conv, "escalation")
            .await?
            .and_then(|s| serde_json::from_str(&s).ok()))
    }

    pub async fn routing(&self, org: &str, conv: &str) -> Result<Map<String, Value>, InfraError> {
        Ok(self
            .get(org, conv, "routing")
            .await?
            .and_then(|s| serde_json::from_str::<Map<String, Value>>(&s).ok())
            .unwrap_or_default())
    }

    pub async fn cursor(&self, org: &str, conv: &str) -> Result<Cursor, InfraError> {
        let mut c = self.store.connection();
        let (token, conversation, last_event_id, last_entry_ms): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<i64>,
        ) = redis::cmd("HMGET")
            .arg(self.key(org, conv))
            .arg(&["token", "conversation", "last_event_id", "last_entry_ms"])
            .query_async(&mut c)
            .await?;
        Ok(Cursor {
            token: token.and_then(|s| MiawToken::from_stored(&s)),
            conversation: conversation.and_then(|s| Uuid::parse_str(&s).ok()),
            last_event_id,
            last_entry_ms,
        })
    }

    /// Move the cursor on (after the broker confirmed what came before it).
    pub async fn advance(
        &self,
        org: &str,
        conv: &str,
        event_id: Option<&str>,
        entry_ms: Option<i64>,
    ) -> Result<(), InfraError> {
        let mut fields = Vec::with_capacity(2);
        if let Some(id) = event_id {
            fields.push(("last_event_id", id.to_string()));
        }
        if let Some(ms) = entry_ms {
            fields.push(("last_entry_ms", ms.to_string()));
        }
        if fields.is_empty() {
            return Ok(());
        }
        self.set(org, conv, &fields).await
    }
}
