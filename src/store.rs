//! Conversation state in Redis.
//!
//! Every key of one conversation shares the hash tag `{org_id:conversation_id}`
//! so that multi-key scripts work on Redis Cluster. Keys (prefix `P`, tag `T`):
//!
//! | key | type | content | TTL |
//! |---|---|---|---|
//! | `P:conv:{T}` | hash | `record` (JSON [`ConversationRecord`] + `version`), `seq` (last outbound seq), `lease_gen` | state TTL |
//! | `P:conv:{T}:events` | hash | `{message_id}/{type}` -> `seq:occurred_at_ms` of each outbound event | state TTL |
//! | `P:conv:{T}:done:{message_id}` | string | inbound message fully handled (dedupe) | state TTL |
//! | `P:conv:{T}:attempt:{what}` | string | time an effect was first attempted (crash guard) | state TTL |
//! | `P:conv:{T}:parked` | list | message ids waiting in the retry queue, oldest first | 2 h, refreshed by the head |
//! | `P:conv:{T}:parked:due` | hash | parked message id -> time it is due back (ms) | as the parked list |
//! | `P:conv:{T}:lease` | string | `generation:owner` of the runner handling the conversation | lease TTL, renewed |
//!
//! The conversation hash also holds `lease_gen`, the last lease generation
//! (the fencing token checked by COMMIT and FINISH).
use crate::contract::{ExternalKind, FallbackReason, Mode, ProviderKind};
use crate::error::InfraError;
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
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
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "fallback_reason_or_legacy"
    )]
    pub fallback_reason: Option<FallbackReason>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A live conversation's state (absent for tickets, incl. fallbacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<crate::live_state::LiveState>,
}

impl ConversationRecord {
    /// The record version that can read this record: 1 for tickets (so a
    /// worker of the previous release, mid rolling deploy, still serves
    /// ticket conversations), 2 for live ones.
    pub fn version(&self) -> u32 {
        if self.live.is_some() { 2 } else { 1 }
    }
}

/// A record's `fallback_reason`: a code, or (records written before the
/// codes existed) the sentence of the only fallback there was then.
fn fallback_reason_or_legacy<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<FallbackReason>, D::Error> {
    let raw = Option::<String>::deserialize(d)?;
    Ok(raw.map(|s| {
        FallbackReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .unwrap_or(FallbackReason::LiveChatOff)
    }))
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
    /// Another runner holds the conversation's lease: wait for it to end.
    Busy,
}

/// The Redis connection every module uses (a clonable handle that
/// reconnects by itself): one server, a Cluster or a Sentinel group.
pub use crate::redis_conn::RedisConnection;

/// Handle to the state store. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub struct Store {
    conn: RedisConnection,
    prefix: String,
    ttl_secs: i64,
}

/// Start handling a message, in one trip: is it done already? is the
/// conversation's lease held by another runner? may it run now (parked
/// messages of its conversation; a head overdue by more than the grace is
/// dropped so that its followers run)? If it may run, take the lease: a new
/// generation (the fencing token) and `gen:owner` in the lease key with the
/// lease TTL. And the conversation record.
/// KEYS: done marker, parked list, conversation hash, lease, parked due times.
/// ARGV: message id, parked TTL (s), owner, lease TTL (ms), now (ms),
/// overdue grace (ms), state TTL (s).
/// Returns {done, admission (0 proceed, 1 head, 2 wait, 3 busy), record or
/// false, lease generation (0: none taken), head due (ms, 0: none), heads
/// dropped, lease PTTL when busy}.
const BEGIN: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0, false, 0, 0, 0, 0} end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return {0, 3, false, 0, 0, 0, redis.call('PTTL', KEYS[4])}
end
local now = tonumber(ARGV[5])
local dropped = 0
local head = redis.call('LINDEX', KEYS[2], 0)
while head and head ~= ARGV[1] do
  -- A head long past its due time is not coming back (the broker
  -- dead-lettered it, or the retry queue lost it): let its followers run.
  local due = tonumber(redis.call('HGET', KEYS[5], head))
  if not due or now <= due + tonumber(ARGV[6]) then break end
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[5], head)
  dropped = dropped + 1
  head = redis.call('LINDEX', KEYS[2], 0)
end
local admission = 0
local due = 0
if head then
  if head == ARGV[1] then
    admission = 1
    due = tonumber(redis.call('HGET', KEYS[5], head)) or 0
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
local gen = 0
if admission ~= 2 then
  gen = redis.call('HINCRBY', KEYS[3], 'lease_gen', 1)
  if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ARGV[7]) end
  redis.call('SET', KEYS[4], gen .. ':' .. ARGV[3], 'PX', ARGV[4])
end
return {0, admission, redis.call('HGET', KEYS[3], 'record'), gen, due, dropped, 0}
"#;

/// KEYS: parked list, parked due times. ARGV: message id, parked TTL (s),
/// due time (ms, 0: none). Returns 1 when the message is the head.
const PARK: &str = r#"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '0' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return redis.call('LINDEX', KEYS[1], 0) == ARGV[1] and 1 or 0
"#;

/// The fencing check shared by COMMIT and FINISH (lease key `L`, conversation
/// hash `C`, lease value `V`, generation `G`): the runner still holds the
/// lease, or its lease expired and nobody took the conversation since (the
/// generation did not move). Otherwise the script returns `{"fenced", lease
/// found, generation found}` ([`Store::check_fence`] reads it).
macro_rules! fenced_off {
    ($l:literal, $c:literal, $v:literal, $g:literal) => {
        concat!(
            "local cur = redis.call('GET', ",
            $l,
            ")\n",
            "if cur ~= ",
            $v,
            " and (cur or redis.call('HGET', ",
            $c,
            ", 'lease_gen') ~= ",
            $g,
            ") then\n",
            "  return {'fenced', cur or '', redis.call('HGET', ",
            $c,
            ", 'lease_gen') or ''}\nend\n"
        )
    };
}

/// Record the effect's outcome and give its outbound events their seq, in
/// one trip, if the runner is not fenced off. KEYS: conversation hash,
/// events hash, lease. ARGV: TTL, now (ms), record JSON or "", lease value,
/// lease generation, then one event key per event.
/// An event keeps the seq and time it got the first time.
/// Returns {"fenced", lease found, generation found} or {"ok", "seq:ms"...}.
const COMMIT: &str = concat!(
    fenced_off!("KEYS[3]", "KEYS[1]", "ARGV[4]", "ARGV[5]"),
    r#"if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'record', ARGV[3]) end
local out = {'ok'}
for i = 6, #ARGV do
  local v = redis.call('HGET', KEYS[2], ARGV[i])
  if not v then
    v = redis.call('HINCRBY', KEYS[1], 'seq', 1) .. ':' .. ARGV[2]
    redis.call('HSET', KEYS[2], ARGV[i], v)
  end
  out[#out + 1] = v
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
if #ARGV >= 6 then redis.call('EXPIRE', KEYS[2], ARGV[1]) end
return out
"#
);

/// The message is finished, if the runner is not fenced off: mark it done
/// (when asked), take it off the parked list and release the lease.
/// KEYS: done marker, parked list, lease, conversation hash, parked due times.
/// ARGV: message id, done (1/0), TTL (s), lease value, lease generation,
/// now (ms). Returns {"ok"}, or {"fenced", lease found, generation found}.
const FINISH: &str = concat!(
    fenced_off!("KEYS[3]", "KEYS[4]", "ARGV[4]", "ARGV[5]"),
    r#"if ARGV[2] == '1' then redis.call('SET', KEYS[1], ARGV[6], 'EX', ARGV[3]) end
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
if cur then redis.call('DEL', KEYS[3]) end
return {'ok'}
"#
);

/// Take a conversation's lease alone (no message bookkeeping), for work that
/// is not an ordinary message run (rejections). KEYS: lease, conversation
/// hash. ARGV: owner, TTL (ms), state TTL (s). Returns {generation, 0,
/// record or false} or, when held by another runner, {0, its PTTL, false}.
const ACQUIRE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1]), false} end
local gen = redis.call('HINCRBY', KEYS[2], 'lease_gen', 1)
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
redis.call('SET', KEYS[1], gen .. ':' .. ARGV[1], 'PX', ARGV[2])
return {gen, 0, redis.call('HGET', KEYS[2], 'record')}
"#;

/// KEYS: lease. ARGV: lease value, TTL (ms). Extends the lease if still held.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// KEYS: lease. ARGV: lease value. Releases the lease if still held.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Lifetime of a conversation's parked list, refreshed by its head each time
/// it is parked again. Longer than the longest wait between two broker rounds
/// (one hour), so it only runs out when the head itself was lost (e.g. the
/// retry queue was purged): then the messages waiting behind it go ahead.
pub const PARKED_TTL_SECS: i64 = 2 * MAX_BROKER_BACKOFF_SECS as i64;

/// The longest wait between two broker retry rounds.
pub const MAX_BROKER_BACKOFF_SECS: u64 = 3600;

/// Version of the stored conversation record. A record of a newer version
/// (written by a newer escalator) is not read: [`InfraError::NewerRecord`].
pub const RECORD_VERSION: u32 = 2;

// Compiled once: a Script hashes its source (EVALSHA) when it is made.
static BEGIN_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(BEGIN));
static PARK_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(PARK));
static COMMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(COMMIT));
static FINISH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(FINISH));
static RENEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(RENEW));
static RELEASE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| crate::redis_conn::script(RELEASE));
static ACQUIRE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| crate::redis_conn::script(ACQUIRE));

/// Who asks for a conversation's lease, and on what terms.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The runner: instance id (unique per process).
    pub owner: String,
    /// The lease lives this long unless renewed.
    pub ttl: Duration,
    /// A parked head this far past its due time is dropped from the list.
    pub overdue_grace: Duration,
}

/// A conversation's lease, held by one runner. `generation` is the fencing
/// token: it grows with every acquisition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub org_id: String,
    pub conversation_id: String,
    pub generation: u64,
    /// The stored value, `generation:owner`, unique per acquisition.
    value: String,
}

#[derive(Serialize)]
struct VersionedRecord<'a> {
    version: u32,
    #[serde(flatten)]
    record: &'a ConversationRecord,
}

#[derive(Deserialize)]
struct RecordVersion {
    #[serde(default = "first_version")]
    version: u32,
}

fn first_version() -> u32 {
    1
}

/// Read a stored record: its version first (a record without one is version 1).
fn read_record(org: &str, conv: &str, text: &str) -> Result<ConversationRecord, InfraError> {
    let corrupt = |e: serde_json::Error| {
        // Position and category only: the serde message may quote stored values.
        InfraError::Corrupt(format!(
            "conversation record of {org}/{conv}: {:?} error at line {}, column {}",
            e.classify(),
            e.line(),
            e.column()
        ))
    };
    let v: RecordVersion = serde_json::from_str(text).map_err(corrupt)?;
    if v.version > RECORD_VERSION {
        return Err(InfraError::NewerRecord {
            what: format!("conversation record of {org}/{conv}"),
            found: v.version,
            supported: RECORD_VERSION,
        });
    }
    serde_json::from_str(text).map_err(corrupt)
}

/// What [`Store::begin`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Begin {
    /// The message was fully handled before (duplicate or replay).
    pub done: bool,
    pub admission: Admission,
    pub record: Option<ConversationRecord>,
    /// The lease, taken when the message may run (`Proceed` or `Head`).
    pub lease: Option<Lease>,
    /// When the head is due back (the time it was parked with), if known.
    pub due: Option<DateTime<Utc>>,
    /// Parked heads dropped because they were overdue by more than the grace.
    pub dropped_heads: u32,
    /// `Busy`: how long the other runner's lease still lives.
    pub busy_for: Option<Duration>,
}

impl Store {
    /// Connect, with the process's TLS material for `rediss://` URLs
    /// ([`crate::tls::process`]).
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<Store, redis::RedisError> {
        let tls = crate::tls::process().map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid TLS settings",
                e,
            ))
        })?;
        Store::connect_with(url, prefix, ttl, &tls.redis).await
    }

    /// Connect with this TLS material (the one code path of every
    /// connection; a plain `redis://` URL ignores it).
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        ttl: Duration,
        tls: &crate::tls::BrokerTls,
    ) -> Result<Store, redis::RedisError> {
        let conn = RedisConnection::open(url, tls).await?;
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
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// How long conversation state lives.
    pub(crate) fn state_ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    pub(crate) fn key(&self, org: &str, conv: &str, suffix: &str) -> String {
        format!("{}:conv:{{{org}:{conv}}}{suffix}", self.prefix)
    }

    pub async fn ping(&self) -> Result<(), redis::RedisError> {
        let mut c = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .map(|_| ())
    }

    /// Is the message done? Is the conversation busy elsewhere? May it run
    /// (then its lease is taken)? And the conversation record.
    pub async fn begin(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
        claim: &Claim,
    ) -> Result<Begin, InfraError> {
        let mut c = self.conn.clone();
        type Reply = (i64, i64, Option<String>, u64, i64, u32, i64);
        let (done, admission, record, generation, due, dropped_heads, busy_ms): Reply =
            BEGIN_SCRIPT
                .key(self.key(org, conv, &format!(":done:{message_id}")))
                .key(self.key(org, conv, ":parked"))
                .key(self.key(org, conv, ""))
                .key(self.key(org, conv, ":lease"))
                .key(self.key(org, conv, ":parked:due"))
                .arg(message_id)
                .arg(PARKED_TTL_SECS)
                .arg(&claim.owner)
                .arg(claim.ttl.as_millis().max(1) as u64)
                .arg(Utc::now().timestamp_millis())
                .arg(claim.overdue_grace.as_millis() as u64)
                .arg(self.ttl_secs)
                .invoke_async(&mut c)
                .await?;
        let record = record.map(|r| read_record(org, conv, &r)).transpose()?;
        let admission = match admission {
            0 => Admission::Proceed,
            1 => Admission::Head,
            2 => Admission::Wait,
            _ => Admission::Busy,
        };
        Ok(Begin {
            done: done == 1,
            admission,
            record,
            lease: (generation > 0).then(|| Lease {
                org_id: org.to_string(),
                conversation_id: conv.to_string(),
                generation,
                value: format!("{generation}:{}", claim.owner),
            }),
            due: (due > 0)
                .then(|| DateTime::from_timestamp_millis(due))
                .flatten(),
            dropped_heads,
            busy_for: (admission == Admission::Busy)
                .then(|| Duration::from_millis(busy_ms.max(0) as u64)),
        })
    }

    /// Take the conversation's lease without running a message: `Ok` with
    /// the lease and the conversation record (if any), or `Err(time left)` of
    /// the runner holding it.
    pub async fn acquire_lease(
        &self,
        org: &str,
        conv: &str,
        claim: &Claim,
    ) -> Result<Result<(Lease, Option<ConversationRecord>), Duration>, InfraError> {
        let mut c = self.conn.clone();
        let (generation, busy_ms, record): (u64, i64, Option<String>) = ACQUIRE_SCRIPT
            .key(self.key(org, conv, ":lease"))
            .key(self.key(org, conv, ""))
            .arg(&claim.owner)
            .arg(claim.ttl.as_millis().max(1) as u64)
            .arg(self.ttl_secs)
            .invoke_async(&mut c)
            .await?;
        if generation == 0 {
            return Ok(Err(Duration::from_millis(busy_ms.max(0) as u64)));
        }
        let record = record.map(|r| read_record(org, conv, &r)).transpose()?;
        let lease = Lease {
            org_id: org.to_string(),
            conversation_id: conv.to_string(),
            generation,
            value: format!("{generation}:{}", claim.owner),
        };
        Ok(Ok((lease, record)))
    }

    /// Extend the lease by `ttl`. False when it is no longer held (expired,
    /// or taken by another runner).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, redis::RedisError> {
        let mut c = self.conn.clone();
        let renewed: i64 = RENEW_SCRIPT
            .key(self.lease_key(lease))
            .arg(&lease.value)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(renewed == 1)
    }

    /// Give the lease up early (the message was parked, or the attempt failed
    /// with nothing in flight at the provider). A no-op if no longer held.
    pub async fn release(&self, lease: &Lease) -> Result<(), redis::RedisError> {
        let mut c = self.conn.clone();
        RELEASE_SCRIPT
            .key(self.lease_key(lease))
            .arg(&lease.value)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
    }

    fn lease_key(&self, lease: &Lease) -> String {
        self.key(&lease.org_id, &lease.conversation_id, ":lease")
    }

    /// The first word of a COMMIT or FINISH reply: `ok`, or `fenced` (then
    /// the error names what the check found: lease holder, generation).
    fn check_fence(lease: &Lease, reply: &[String], what: &str) -> Result<(), InfraError> {
        match reply.first().map(String::as_str) {
            Some("ok") => Ok(()),
            Some("fenced") => {
                let held = reply.get(1).map(String::as_str).unwrap_or_default();
                let generation = reply.get(2).map(String::as_str).unwrap_or_default();
                let found = match (held.split_once(':'), generation) {
                    (Some((g, owner)), _) => format!("lease generation {g} held by {owner}"),
                    (None, "") => "no lease and no conversation state".to_string(),
                    (None, g) => format!("no lease, generation {g}"),
                };
                Err(InfraError::Fenced {
                    org_id: lease.org_id.clone(),
                    conversation_id: lease.conversation_id.clone(),
                    generation: lease.generation,
                    found,
                })
            }
            _ => Err(InfraError::Corrupt(format!(
                "unexpected {what} reply for {}/{}",
                lease.org_id, lease.conversation_id
            ))),
        }
    }

    /// Save the conversation record (when given) and assign the seq and time
    /// of each outbound event, named by its key (`{cause}/{type}`): assigned
    /// once, the same on every retry or replay. Refused with
    /// [`InfraError::Fenced`] (nothing written) when another runner took the
    /// conversation's lease since `lease` was acquired.
    pub async fn commit(
        &self,
        lease: &Lease,
        record: Option<&ConversationRecord>,
        event_keys: &[String],
    ) -> Result<Vec<(u64, DateTime<Utc>)>, InfraError> {
        let (org, conv) = (lease.org_id.as_str(), lease.conversation_id.as_str());
        let record = match record {
            Some(r) => serde_json::to_string(&VersionedRecord {
                version: r.version(),
                record: r,
            })
            .map_err(|e| InfraError::Corrupt(format!("serialize record: {:?}", e.classify())))?,
            None => String::new(),
        };
        let mut script = COMMIT_SCRIPT.prepare_invoke();
        script
            .key(self.key(org, conv, ""))
            .key(self.key(org, conv, ":events"))
            .key(self.lease_key(lease))
            .arg(self.ttl_secs)
            .arg(Utc::now().timestamp_millis())
            .arg(record)
            .arg(&lease.value)
            .arg(lease.generation);
        for k in event_keys {
            script.arg(k);
        }
        let mut c = self.conn.clone();
        let values: Vec<String> = script.invoke_async(&mut c).await?;
        Self::check_fence(lease, &values, "commit")?;
        values[1..]
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

    /// The message is finished: take it off the parked list, release the
    /// lease and, when `done`, mark it handled (a dead-lettered message is
    /// not done: a replay runs again). Refused with [`InfraError::Fenced`]
    /// (nothing written) when another runner took the conversation since.
    pub async fn finish(
        &self,
        lease: &Lease,
        message_id: &str,
        done: bool,
    ) -> Result<(), InfraError> {
        let (org, conv) = (lease.org_id.as_str(), lease.conversation_id.as_str());
        let mut c = self.conn.clone();
        let reply: Vec<String> = FINISH_SCRIPT
            .key(self.key(org, conv, &format!(":done:{message_id}")))
            .key(self.key(org, conv, ":parked"))
            .key(self.lease_key(lease))
            .key(self.key(org, conv, ""))
            .key(self.key(org, conv, ":parked:due"))
            .arg(message_id)
            .arg(if done { 1 } else { 0 })
            .arg(self.ttl_secs)
            .arg(&lease.value)
            .arg(lease.generation)
            .arg(Utc::now().timestamp_millis())
            .invoke_async(&mut c)
            .await?;
        Self::check_fence(lease, &reply, "finish")
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

    /// Add `message_id` to the conversation's parked list (if absent), with
    /// the time it is due back (kept with the list: a retry of a failed park
    /// never runs before it, and a head long overdue is dropped).
    /// Returns whether it is the head of the list.
    pub async fn park(
        &self,
        org: &str,
        conv: &str,
        message_id: &str,
        due: Option<DateTime<Utc>>,
    ) -> Result<bool, redis::RedisError> {
        let mut c = self.conn.clone();
        let head: i64 = PARK_SCRIPT
            .key(self.key(org, conv, ":parked"))
            .key(self.key(org, conv, ":parked:due"))
            .arg(message_id)
            .arg(PARKED_TTL_SECS)
            .arg(due.map_or(0, |t| t.timestamp_millis().max(1)))
            .invoke_async(&mut c)
            .await?;
        Ok(head == 1)
    }

    /// Delete every key under this store's prefix (tests, `--reset` of the demo).
    pub async fn delete_all(&self) -> Result<u64, redis::RedisError> {
        let mut c = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        if let RedisConnection::Cluster(cluster) = &mut c {
            // SCAN walks one node: ask every master, delete key by key
            // (the keys are in many slots).
            use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
            let keys: Vec<String> = redis::from_redis_value(
                cluster
                    .route_command(
                        redis::cmd("KEYS").arg(&pattern).clone(),
                        RoutingInfo::MultiNode((
                            MultipleNodeRoutingInfo::AllMasters,
                            Some(ResponsePolicy::CombineArrays),
                        )),
                    )
                    .await?,
            )?;
            let mut deleted = 0;
            for key in keys {
                deleted += c.del::<_, u64>(key).await?;
            }
            return Ok(deleted);
        }
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
