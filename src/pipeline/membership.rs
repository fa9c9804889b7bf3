//! Who is in the fleet, and who consumes which shard. Workers announce
//! themselves in a Redis sorted set (`P:{fleet}:workers`, score = last heartbeat) and
//! record, per shard, that they hold an open subscription to it
//! (`P:{fleet}:shard:NN:subscribers`, same scores). Scores are the Redis server's
//! clock (`TIME` inside the scripts), so a worker whose own clock is off
//! neither looks dead nor stays alive forever.
//!
//! The sorted live set deals the shards out round-robin (the preferred
//! worker of each shard); the subscriber records say whether that worker
//! actually consumes, which is what a hand-over waits for. Correctness never
//! depends on any of this (single active consumer does), only the balance of
//! work does.
use crate::store::Store;
use std::sync::LazyLock;
use std::time::Duration;

/// How often a consuming session refreshes its records.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A record older than this (server clock) is not live.
const LIVE_FOR_MS: u64 = 15_000;

fn workers_key(prefix: &str) -> String {
    format!("{prefix}:{{fleet}}:workers")
}

fn subscribers_key(prefix: &str, shard: u16) -> String {
    format!("{prefix}:{{fleet}}:shard:{shard:02}:subscribers")
}

/// KEYS[1] = workers, KEYS[2..] = subscriber sets of the shards `ARGV[1]`
/// holds subscriptions to. Refreshes them all at the server's time, drops
/// long-dead entries, and returns the live workers.
const HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = tonumber(ARGV[2])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - live * 4)
  redis.call('PEXPIRE', KEYS[i], live * 4)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], now - live, '+inf')
"#;

/// KEYS[1] = workers, KEYS[2..] = subscriber sets of every shard, in order.
/// Returns { live workers, { live subscribers of each shard } }.
const VIEW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - tonumber(ARGV[1])
local subs = {}
for i = 2, #KEYS do
  subs[i - 1] = redis.call('ZRANGEBYSCORE', KEYS[i], since, '+inf')
end
return { redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf'), subs }
"#;

static HEARTBEAT_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| crate::redis_conn::script(HEARTBEAT_LUA));
static VIEW_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(VIEW_LUA));

/// Announce `instance` as a member holding subscriptions to `subscribed`
/// shards; returns the live members (including it).
pub async fn heartbeat(
    store: &Store,
    instance: &str,
    subscribed: &[u16],
) -> Result<Vec<String>, redis::RedisError> {
    let mut c = store.connection();
    let mut inv = HEARTBEAT_SCRIPT.prepare_invoke();
    inv.key(workers_key(store.prefix()));
    for &shard in subscribed {
        inv.key(subscribers_key(store.prefix(), shard));
    }
    inv.arg(instance).arg(LIVE_FOR_MS);
    inv.invoke_async(&mut c).await
}

/// The fleet as Redis sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Live members, sorted.
    pub live: Vec<String>,
    /// Per shard: members with a live subscription record for it.
    pub subscribers: Vec<Vec<String>>,
}

impl View {
    /// Whether `member` holds a live subscription to `shard`.
    pub fn subscribes(&self, member: &str, shard: u16) -> bool {
        self.subscribers
            .get(usize::from(shard))
            .is_some_and(|s| s.iter().any(|m| m == member))
    }
}

/// Live members and live subscription records of every shard.
pub async fn view(store: &Store, shards: u16) -> Result<View, redis::RedisError> {
    let mut c = store.connection();
    let mut inv = VIEW_SCRIPT.prepare_invoke();
    inv.key(workers_key(store.prefix()));
    for shard in 0..shards {
        inv.key(subscribers_key(store.prefix(), shard));
    }
    inv.arg(LIVE_FOR_MS);
    let (mut live, subscribers): (Vec<String>, Vec<Vec<String>>) = inv.invoke_async(&mut c).await?;
    live.sort_unstable();
    Ok(View { live, subscribers })
}

/// Withdraw `instance` from the fleet and from every shard's subscribers.
pub async fn leave(store: &Store, instance: &str, shards: u16) {
    let mut c = store.connection();
    let mut pipe = redis::pipe();
    pipe.zrem(workers_key(store.prefix()), instance).ignore();
    for shard in 0..shards {
        pipe.zrem(subscribers_key(store.prefix(), shard), instance)
            .ignore();
    }
    if let Err(e) = pipe.query_async::<()>(&mut c).await {
        tracing::debug!(error = %e, "leaving the membership failed: the records expire by themselves");
    }
}

/// The members taking part in the deal: the live ones and `instance`, sorted.
fn members<'a>(instance: &'a str, live: &'a [String]) -> Vec<&'a str> {
    let mut members: Vec<&str> = live.iter().map(String::as_str).collect();
    members.push(instance);
    members.sort_unstable();
    members.dedup();
    members
}

/// The member that prefers `shard` (shard % count == rank).
pub fn preferred_owner<'a>(instance: &'a str, live: &'a [String], shard: u16) -> &'a str {
    let members = members(instance, live);
    members[usize::from(shard) % members.len()]
}

/// Shards ordered preferred-first, and how many are preferred: the live
/// instances, sorted, take shards round-robin (shard % count == rank), which
/// splits them evenly when every worker sees the same live set.
pub fn shard_order(instance: &str, live: &[String], shards: u16) -> (Vec<u16>, usize) {
    let members = members(instance, live);
    let rank = members.iter().position(|m| *m == instance).unwrap_or(0);
    let count = members.len().max(1);
    let (mut mine, mut others): (Vec<u16>, Vec<u16>) =
        (0..shards).partition(|&s| usize::from(s) % count == rank);
    let preferred = mine.len();
    mine.append(&mut others);
    (mine, preferred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_workers_split_the_shards() {
        let live = vec!["a".to_string(), "b".to_string()];
        let (a, pa) = shard_order("a", &live, 16);
        let (b, pb) = shard_order("b", &live, 16);
        assert_eq!(pa + pb, 16);
        assert!(pa > 0 && pb > 0);
        assert_eq!(a.len(), 16);
        assert!(a[..pa].iter().all(|s| !b[..pb].contains(s)));
    }

    #[test]
    fn alone_a_worker_prefers_everything() {
        let (_, p) = shard_order("a", &["a".to_string()], 8);
        assert_eq!(p, 8);
    }

    #[test]
    fn the_preferred_owner_agrees_with_the_shard_order() {
        let live = vec!["b".to_string(), "a".to_string(), "c".to_string()];
        for me in ["a", "b", "c"] {
            let (order, preferred) = shard_order(me, &live, 16);
            for &shard in &order[..preferred] {
                assert_eq!(preferred_owner("a", &live, shard), me);
            }
        }
        // A member not yet in the live set still takes part.
        assert_eq!(preferred_owner("z", &[], 3), "z");
    }
}
