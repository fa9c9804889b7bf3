//! Which shards a worker subscribes to first. Live workers announce
//! themselves in a Redis sorted set (`P:workers`, score = last heartbeat);
//! rendezvous hashing over the live set names each shard's preferred worker.
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

pub async fn leave(store: &Store, instance: &str) {
    let mut c = store.connection();
    let _: Result<(), _> = c.zrem(key(store), instance).await;
}

/// Shards ordered preferred-first, and how many are preferred.
pub fn shard_order(instance: &str, live: &[String], shards: u16) -> (Vec<u16>, usize) {
    let weight = |member: &str, shard: u16| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in member.bytes().chain(shard.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    let (mut mine, mut others): (Vec<u16>, Vec<u16>) = (0..shards).partition(|&s| {
        live.iter()
            .max_by_key(|m| weight(m, s))
            .is_none_or(|best| best == instance)
    });
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
