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
//! | `P:conv:{T}:parked` | list | message ids waiting in the retry queue, oldest first | 2 h, refreshed by the head |
use crate::contract::{ExternalKind, Mode, ProviderKind};
use crate::error::InfraError;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
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

/// Start handling a message: is it done already? may it run now (parked
/// messages of its conversation)? and the conversation record, in one trip.
/// KEYS: done marker, parked list, conversation hash. ARGV: message id, TTL.
/// Returns {done, admission (0 proceed, 1 head, 2 wait), record or false}.
const BEGIN: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0, false} end
local admission = 0
local head = redis.call('LINDEX', KEYS[2], 0)
if head then
  if head == ARGV[1] then
    admission = 1
  else
    admission = 2
    if not redis.call('LPOS', KEYS[2], ARGV[1]) then
      redis.call('RPUSH', KEYS[2], ARGV[1])
      -- Only the head refreshes the list's lifetime (PARK): if the head is
      -- lost, its followers are released when the list expires.
      if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
    end
  end
end
return {0, admission, redis.call('HGET', KEYS[3], 'record')}
"#;

const PARK: &str = r#"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('LINDEX', KEYS[1], 0) == ARGV[1] and 1 or 0
"#;

/// Record the effect's outcome and give its outbound events their seq, in
/// one trip. KEYS: conversation hash, events hash. ARGV: TTL, now (ms),
/// record JSON or "", then one `{cause}/{type}` per event.
/// An event keeps the seq and time it got the first time.
const COMMIT: &str = r#"
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'record', ARGV[3]) end
local out = {}
for i = 4, #ARGV do
  local v = redis.call('HGET', KEYS[2], ARGV[i])
  if not v then
    v = redis.call('HINCRBY', KEYS[1], 'seq', 1) .. ':' .. ARGV[2]
    redis.call('HSET', KEYS[2], ARGV[i], v)
  end
  out[#out + 1] = v
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if #ARGV >= 4 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return out
"#;

/// Lifetime of a conversation's parked list, refreshed by its head each time
/// it is parked again. Longer than the longest wait between two broker rounds
/// (one hour), so it only runs out when the head itself was lost (e.g. the
/// retry queue was purged): then the messages waiting behind it go ahead.
pub const PARKED_TTL_SECS: i64 = 2 * MAX_BROKER_BACKOFF_SECS as i64;

/// The longest wait between two broker retry rounds.
pub const MAX_BROKER_BACKOFF_SECS: u64 = 3600;

// Compiled once: a Script hashes its source (EVALSHA) when it is made.
static BEGIN_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BEGIN));
static PARK_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PARK));
static COMMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(COMMIT));

/// What [`Store::begin`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Begin {
    /// The message was fully handled before (duplicate or replay).
    pub done: bool,
    pub admission: Admission,
    pub record: Option<ConversationRecord>,
}

impl Store {
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Store, redis::RedisError> {
        let client = redis::Client::open(url)?;
        // One plain connection first, so that a wrong address or password
        // fails at once: the manager retries its first connection too (six
        // times with backoff, about 10 s), which is right for reconnects only.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        drop(
            client
                .get_multiplexed_async_connection_with_config(&probe)
                .await?,
        );
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

    /// Is the message done? May it run? And the conversation record.
    pub async fn begin(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<Begin, InfraError> {
        let mut c = self.conn.clone();
        let (done, admission, record): (i64, i64, Option<String>) = BEGIN_SCRIPT
            .key(self.key(org, conv, &format!(":done:{message_id}")))
            .key(self.key(org, conv, ":parked"))
            .key(self.key(org, conv, ""))
            .arg(message_id)
            .arg(PARKED_TTL_SECS)
            .invoke_async(&mut c)
            .await?;
        let record = record
            .map(|r| {
                serde_json::from_str(&r).map_err(|e| {
                    InfraError::Corrupt(format!("conversation record of {org}/{conv}: {e}"))
                })
            })
            .transpose()?;
        Ok(Begin {
            done: done == 1,
            admission: match admission {
                0 => Admission::Proceed,
                1 => Admission::Head,
                _ => Admission::Wait,
            },
            record,
        })
    }

    /// Save the conversation record (when given) and assign the seq and time
    /// of each outbound event `event_types` caused by inbound `cause`:
    /// assigned once, the same on every retry or replay.
    pub async fn commit(
        &self,
        org: &str,
        conv: &str,
        cause: &str,
        record: Option<&ConversationRecord>,
        event_types: &[&str],
    ) -> Result<Vec<(u64, DateTime<Utc>)>, InfraError> {
        let record = match record {
            Some(r) => serde_json::to_string(r)
                .map_err(|e| InfraError::Corrupt(format!("serialize record: {e}")))?,
            None => String::new(),
        };
        let mut script = COMMIT_SCRIPT.prepare_invoke();
        script
            .key(self.key(org, conv, ""))
            .key(self.key(org, conv, ":events"))
            .arg(self.ttl_secs)
            .arg(Utc::now().timestamp_millis())
            .arg(record);
        for t in event_types {
            script.arg(format!("{cause}/{t}"));
        }
        let mut c = self.conn.clone();
        let values: Vec<String> = script.invoke_async(&mut c).await?;
        values
            .iter()
            .map(|v| {
                let corrupt = || InfraError::Corrupt(format!("outbound seq of {org}/{conv}: {v}"));
                let (seq, ms) = v.split_once(':').ok_or_else(corrupt)?;
                let seq = seq.parse().map_err(|_| corrupt())?;
                let at = ms
                    .parse()
                    .ok()
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or_else(corrupt)?;
                Ok((seq, at))
            })
            .collect()
    }

    /// The message is finished: take it off the parked list and, when `done`,
    /// mark it handled (a dead-lettered message is not done: a replay runs again).
    pub async fn finish(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
        done: bool,
    ) -> Result<(), redis::RedisError> {
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if done {
            pipe.set_ex(
                self.key(org, conv, &format!(":done:{message_id}")),
                Utc::now().timestamp_millis(),
                self.ttl_secs as u64,
            )
            .ignore();
        }
        pipe.lrem(self.key(org, conv, ":parked"), 1, message_id)
            .ignore();
        pipe.query_async::<()>(&mut c).await
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

    /// Add `message_id` to the conversation's parked list (if absent).
    /// Returns whether it is the head of the list.
    pub async fn park(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
    ) -> Result<bool, redis::RedisError> {
        let mut c = self.conn.clone();
        let head: i64 = PARK_SCRIPT
            .key(self.key(org, conv, ":parked"))
            .arg(message_id)
            .arg(PARKED_TTL_SECS)
            .invoke_async(&mut c)
            .await?;
        Ok(head == 1)
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
