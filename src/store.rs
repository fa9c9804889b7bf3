//! Conversation state in Redis.
//!
//! Every key of one conversation shares the hash tag `{org_id:conversation_id}`
//! so that multi-key scripts work on Redis Cluster. Keys (prefix `P`, tag `T`):
//!
//! | key | type | content | TTL |
//! |---|---|---|---|
//! | `P:conv:{T}` | hash | `record` (JSON [`ConversationRecord`]), `seq` (last outbound seq) | state TTL |
//! | `P:conv:{T}:events` | hash | `{message_id}/{type}` -> `seq:occurred_at_ms` of each outbound event | state TTL |
//! | `P:conv:{T}:done:{message_id}` | string | inbound message fully handled (dedupe) | state TTL |
//! | `P:conv:{T}:attempt:{what}` | string | time an effect was first attempted (crash guard) | state TTL |
//! | `P:conv:{T}:parked` | list | message ids waiting in the retry queue, oldest first | state TTL |
use crate::contract::{ExternalKind, Mode, ProviderKind};
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the escalation created at the provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalRef {
    pub kind: ExternalKind,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    pub url: String,
    /// The provider's id of the requester (Zendesk user id), for comments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationStatus {
    /// The escalation exists at the provider.
    Escalated,
    /// The conversation ended.
    Closed,
}

/// The conversation record (`P:conv:{T}` field `record`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub org_id: String,
    pub conversation_id: String,
    pub provider: ProviderKind,
    pub mode: Mode,
    pub status: ConversationStatus,
    pub external: ExternalRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Whether a message may run now, given the conversation's parked messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing of this conversation waits in the retry queue.
    Proceed,
    /// This message is the oldest parked one: it may run (when due).
    Head,
    /// An older message of the conversation is parked: wait behind it.
    Wait,
}

/// Handle to the state store. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
    ttl_secs: i64,
}

const ADMIT: &str = r#"
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then return 0 end
if head == ARGV[1] then return 1 end
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 2
"#;

const PARK: &str = r#"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('LINDEX', KEYS[1], 0) == ARGV[1] and 1 or 0
"#;

const RELEASE: &str = r#"
redis.call('LREM', KEYS[1], 1, ARGV[1])
return redis.call('LLEN', KEYS[1])
"#;

const SEQ: &str = r#"
local v = redis.call('HGET', KEYS[2], ARGV[1])
if v then return v end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
v = seq .. ':' .. ARGV[2]
redis.call('HSET', KEYS[2], ARGV[1], v)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return v
"#;

impl Store {
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Store, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Store {
            conn,
            prefix: prefix.to_string(),
            ttl_secs: ttl.as_secs().max(60) as i64,
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A raw connection for modules that keep their own keys (token cache).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn key(&self, org: &str, conv: &str, suffix: &str) -> String {
        format!("{}:conv:{{{org}:{conv}}}{suffix}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }

    pub async fn conversation(
        &self,
        org: &str,
        conv: &str,
    ) -> Result<Option<ConversationRecord>, crate::error::InfraError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c.hget(self.key(org, conv, ""), "record").await?;
        raw.map(|r| {
            serde_json::from_str(&r).map_err(|e| {
                crate::error::InfraError::Corrupt(format!(
                    "conversation record of {org}/{conv}: {e}"
                ))
            })
        })
        .transpose()
    }

    pub async fn save_conversation(
        &self,
        rec: &ConversationRecord,
    ) -> Result<(), redis::RedisError> {
        let key = self.key(&rec.org_id, &rec.conversation_id, "");
        let json = serde_json::to_string(rec).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Client, "serialize record", e.to_string()))
        })?;
        let mut c = self.conn.clone();
        redis::pipe()
            .atomic()
            .hset(&key, "record", json)
            .ignore()
            .expire(&key, self.ttl_secs)
            .ignore()
            .query_async::<()>(&mut c)
            .await
    }

    /// Has this inbound message been fully handled before?
    pub async fn is_done(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut c = self.conn.clone();
        c.exists(self.key(org, conv, &format!(":done:{message_id}")))
            .await
    }

    pub async fn mark_done(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<(), redis::RedisError> {
        let mut c = self.conn.clone();
        c.set_ex(
            self.key(org, conv, &format!(":done:{message_id}")),
            Utc::now().timestamp_millis(),
            self.ttl_secs as u64,
        )
        .await
    }

    /// Record that an effect is about to be attempted. Returns the time of an
    /// earlier attempt if there was one: the effect may then already exist at
    /// the provider and must be looked up before it is made again.
    pub async fn begin_attempt(
        &self,
        org: &str,
        conv: &str,
        what: &str,
    ) -> Result<Option<DateTime<Utc>>, redis::RedisError> {
        let mut c = self.conn.clone();
        let key = self.key(org, conv, &format!(":attempt:{what}"));
        let now = Utc::now().timestamp_millis();
        // SET NX keeps the first attempt's time; GET returns it.
        let previous: Option<i64> = redis::cmd("SET")
            .arg(&key)
            .arg(now)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(self.ttl_secs)
            .query_async(&mut c)
            .await?;
        Ok(previous.and_then(DateTime::from_timestamp_millis))
    }

    /// May `message_id` run now? Registers it behind parked messages if not.
    pub async fn admit(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<Admission, redis::RedisError> {
        let mut c = self.conn.clone();
        let r: i64 = redis::Script::new(ADMIT)
            .key(self.key(org, conv, ":parked"))
            .arg(message_id)
            .arg(self.ttl_secs)
            .invoke_async(&mut c)
            .await?;
        Ok(match r {
            0 => Admission::Proceed,
            1 => Admission::Head,
            _ => Admission::Wait,
        })
    }

    /// Add `message_id` to the conversation's parked list (if absent).
    /// Returns whether it is the head of the list.
    pub async fn park(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut c = self.conn.clone();
        let head: i64 = redis::Script::new(PARK)
            .key(self.key(org, conv, ":parked"))
            .arg(message_id)
            .arg(self.ttl_secs)
            .invoke_async(&mut c)
            .await?;
        Ok(head == 1)
    }

    /// Remove `message_id` from the parked list; returns how many remain.
    pub async fn release(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<u64, redis::RedisError> {
        let mut c = self.conn.clone();
        redis::Script::new(RELEASE)
            .key(self.key(org, conv, ":parked"))
            .arg(message_id)
            .invoke_async(&mut c)
            .await
    }

    /// The seq and time of the outbound event `event_type` caused by inbound
    /// `message_id`: assigned once, the same on every retry or replay.
    pub async fn outbound_seq(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
        event_type: &str,
    ) -> Result<(u64, DateTime<Utc>), crate::error::InfraError> {
        let mut c = self.conn.clone();
        let now = Utc::now().timestamp_millis();
        let v: String = redis::Script::new(SEQ)
            .key(self.key(org, conv, ""))
            .key(self.key(org, conv, ":events"))
            .arg(format!("{message_id}/{event_type}"))
            .arg(now)
            .arg(self.ttl_secs)
            .invoke_async(&mut c)
            .await?;
        let corrupt =
            || crate::error::InfraError::Corrupt(format!("outbound seq of {org}/{conv}: {v}"));
        let (seq, ms) = v.split_once(':').ok_or_else(corrupt)?;
        let seq = seq.parse().map_err(|_| corrupt())?;
        let at = ms
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(corrupt)?;
        Ok((seq, at))
    }

    /// Delete every key under this store's prefix (tests, `--reset` of the demo).
    pub async fn delete_all(&self) -> Result<u64, redis::RedisError> {
        let mut c = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                deleted += c.del::<_, u64>(keys).await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
