//! Which shards a worker subscribes to first. Live workers announce
//! themselves in a Redis sorted set (`P:workers`, score = last heartbeat);
//! the sorted live set deals the shards out round-robin.
//! A worker subscribes to its preferred shards at once and to the others a
//! little later, as a standby; correctness never depends on this (single
//! active consumer does), only the balance of work does.
use crate::store::Store;
use redis::AsyncCommands;
use std::time::Duration;

pub const HEARTBEAT: Duration = Duration::from_secs(5);
const LIVE_FOR_MS: i64 = 15_000;

fn key(store: &Store) -> String {
    format!("{}:workers", store.prefix())
}

/// Announce `instance` and return the live instances (including it).
pub async fn heartbeat(store: &Store, instance: &str) -> Result<Vec<String>, redis::RedisError> {
    let mut c = store.connection();
    let now = chrono::Utc::now().timestamp_millis();
    let k = key(store);
    let _: () = c.zadd(&k, instance, now).await?;
    let _: () = c.zrembyscore(&k, "-inf", now - LIVE_FOR_MS * 4).await?;
    c.zrangebyscore(&k, now - LIVE_FOR_MS, "+inf").await
}

/// The live instances, without announcing this one.
pub async fn live(store: &Store) -> Result<Vec<String>, redis::RedisError> {
    let mut c = store.connection();
    let now = chrono::Utc::now().timestamp_millis();
    c.zrangebyscore(key(store), now - LIVE_FOR_MS, "+inf").await
}

pub async fn leave(store: &Store, instance: &str) {
    let mut c = store.connection();
    let _: Result<(), _> = c.zrem(key(store), instance).await;
}

/// Shards ordered preferred-first, and how many are preferred: the live
/// instances, sorted, take shards round-robin (shard % count == rank), which
/// splits them evenly when every worker sees the same live set.
pub fn shard_order(instance: &str, live: &[String], shards: u16) -> (Vec<u16>, usize) {
    let mut members: Vec<&str> = live.iter().map(String::as_str).collect();
    if !members.contains(&instance) {
        members.push(instance);
    }
    members.sort_unstable();
    members.dedup();
    let rank = members.iter().position(|m| *m == instance).unwrap_or(0);
    let count = members.len().max(1);
    let (mut mine, mut others): (Vec<u16>, Vec<u16>) =
        (0..shards).partition(|&s| usize::from(s) % count == rank);
    let preferred = mine.len();
    mine.append(&mut others);
    (mine, preferred)
}

/// Keep the heartbeat going until dropped (abort the task).
pub fn spawn_heartbeat(store: Store, instance: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = heartbeat(&store, &instance).await {
                tracing::debug!(error = %e, "membership heartbeat failed");
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    })
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
}
