//! Who streams which live Salesforce conversation, fleet-wide (Redis).
//!
//! | key | type | value |
//! |---|---|---|
//! | `P:{streams}:live` | hash | `org\tconversation` -> owning worker instance (`""`: nobody yet) |
//! | `P:{streams}:owners` | sorted set | worker instance -> last heartbeat (ms, Redis server time) |
//!
//! Both keys share the hash tag `{streams}`, so the scripts that read both
//! run on a Redis Cluster too. An owner is live while its heartbeat is
//! younger than the owner TTL; a conversation whose owner is not live may be
//! claimed by another worker (compare-and-set in one script).
use crate::error::InfraError;
use crate::store::Store;
use std::sync::LazyLock;

/// One live conversation, as the registry names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub org_id: String,
    pub conversation_id: String,
}

impl StreamKey {
    pub fn new(org_id: &str, conversation_id: &str) -> StreamKey {
        StreamKey {
            org_id: org_id.to_string(),
            conversation_id: conversation_id.to_string(),
        }
    }

    pub fn field(&self) -> String {
        format!("{}\t{}", self.org_id, self.conversation_id)
    }

    pub fn from_field(field: &str) -> Option<StreamKey> {
        let (org, conv) = field.split_once('\t')?;
        Some(StreamKey::new(org, conv))
    }
}

/// What a scan saw.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Live owners (heartbeat within the TTL), sorted.
    pub live: Vec<String>,
    /// Every live conversation and its owner (`""`: nobody).
    pub entries: Vec<(StreamKey, String)>,
}

/// Answer of [`Registry::heartbeat`].
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    /// Whether this worker was still live just before this beat (false: it
    /// lapsed, and others may have taken its conversations).
    pub was_live: bool,
}

#[derive(Clone)]
pub struct Registry {
    store: Store,
    live_key: String,
    owners_key: String,
}

static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::redis_conn::script(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local prev = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 20 * ttl)
if prev and now - tonumber(prev) <= ttl then return 1 end
return 0
"#,
    )
});

static SCAN: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::redis_conn::script(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[1]), '+inf')
return {live, redis.call('HGETALL', KEYS[1])}
"#,
    )
});

/// Take a conversation when nobody live owns it (or it is ours already).
/// With ARGV[4] = 1 it is registered when missing (a new live chat).
/// 1: ours; 0: someone else live has it; -1: not registered (ended).
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::redis_conn::script(
        r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur and ARGV[4] ~= '1' then return -1 end
if cur == ARGV[2] then return 1 end
if cur and cur ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local beat = redis.call('ZSCORE', KEYS[2], cur)
  if beat and now - tonumber(beat) <= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    crate::redis_conn::script(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], '')
  return 1
end
return 0
"#,
    )
});

impl Registry {
    pub fn new(store: &Store) -> Registry {
        Registry {
            store: store.clone(),
            live_key: format!("{}:{{streams}}:live", store.prefix()),
            owners_key: format!("{}:{{streams}}:owners", store.prefix()),
        }
    }

    pub async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> Result<Beat, InfraError> {
        let mut c = self.store.connection();
        let was: i64 = HEARTBEAT
            .key(&self.owners_key)
            .arg(instance)
            .arg(ttl_ms)
            .invoke_async(&mut c)
            .await?;
        Ok(Beat { was_live: was == 1 })
    }

    pub async fn scan(&self, ttl_ms: u64) -> Result<Snapshot, InfraError> {
        let mut c = self.store.connection();
        let (mut live, flat): (Vec<String>, Vec<String>) = SCAN
            .key(&self.live_key)
            .key(&self.owners_key)
            .arg(ttl_ms)
            .invoke_async(&mut c)
            .await?;
        live.sort();
        let entries = flat
            .chunks_exact(2)
            .filter_map(|kv| StreamKey::from_field(&kv[0]).map(|k| (k, kv[1].clone())))
            .collect();
        Ok(Snapshot { live, entries })
    }

    async fn claim_or_register(
        &self,
        key: &StreamKey,
        instance: &str,
        ttl_ms: u64,
        register: bool,
    ) -> Result<i64, InfraError> {
        let mut c = self.store.connection();
        Ok(CLAIM
            .key(&self.live_key)
            .key(&self.owners_key)
            .arg(key.field())
            .arg(instance)
            .arg(ttl_ms)
            .arg(if register { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?)
    }

    /// `Some(true)`: ours now; `Some(false)`: a live worker has it; `None`: ended.
    pub async fn claim(
        &self,
        key: &StreamKey,
        instance: &str,
        ttl_ms: u64,
    ) -> Result<Option<bool>, InfraError> {
        Ok(
            match self.claim_or_register(key, instance, ttl_ms, false).await? {
                1 => Some(true),
                0 => Some(false),
                _ => None,
            },
        )
    }

    /// Register a new live conversation as ours; false when a live worker
    /// already streams it (a resumed hand-over).
    pub async fn register(
        &self,
        key: &StreamKey,
        instance: &str,
        ttl_ms: u64,
    ) -> Result<bool, InfraError> {
        Ok(self.claim_or_register(key, instance, ttl_ms, true).await? == 1)
    }

    /// Give a conversation up (graceful hand-over to another worker).
    pub async fn release(&self, key: &StreamKey, instance: &str) -> Result<(), InfraError> {
        let mut c = self.store.connection();
        let _: i64 = RELEASE
            .key(&self.live_key)
            .arg(key.field())
            .arg(instance)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// The conversation ended: nobody streams it any more.
    pub async fn unregister(&self, key: &StreamKey) -> Result<(), InfraError> {
        let mut c = self.store.connection();
        redis::cmd("HDEL")
            .arg(&self.live_key)
            .arg(key.field())
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// Leave the owner set (shutdown): others may take our conversations now.
    pub async fn leave(&self, instance: &str) -> Result<(), InfraError> {
        let mut c = self.store.connection();
        redis::cmd("ZREM")
            .arg(&self.owners_key)
            .arg(instance)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
    }

    /// How many conversations are registered (the live-conversations gauge).
    pub async fn count(&self) -> Result<u64, InfraError> {
        let mut c = self.store.connection();
        Ok(redis::cmd("HLEN")
            .arg(&self.live_key)
            .query_async(&mut c)
            .await?)
    }
}
