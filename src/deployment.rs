//! The shape of a deployment: how many work shards it has and the delivery
//! limit of their queues. Both are fixed once the first process declares the
//! topology, since a conversation's shard is `hash % shards`: two counts at
//! once send one conversation to two shards (two owners, order lost), and a
//! smaller count strands the queues above it.
//!
//! Two records, both checked before anything is declared:
//! - the broker's own queues: `escalator.work.00` up to the first missing
//!   `escalator.work.NN` (passive declares) give the count of the vhost;
//! - the Redis hash `P:deployment` (`shards`, `delivery_limit`), written once
//!   (HSETNX) by the first worker of the key prefix and read by every later one.
//!
//! `topology` checks the broker. A worker checks the Redis record, and the
//! broker too while no record exists (the first worker of a key prefix, then
//! it writes the record): a passive declare of a missing queue makes lapin
//! log an ERROR for the closed channel, which a steady-state start should not.
//! A process started with other values refuses to start, naming both values
//! and the migration (deploy/README.md, "Changing the shard count").
use crate::topology::{WORK_EXCHANGE, shard_queue};
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use std::sync::LazyLock;

/// What to do instead of starting with another shape.
const MIGRATION: &str = "To change it: (1) stop the producers; (2) let the running workers \
drain escalator.intake, every escalator.work.NN and escalator.retry to 0 messages (rabbitmqctl list_queues \
name messages); (3) stop every worker; (4) delete the work queues (rabbitmqctl delete_queue \
escalator.work.NN, each) and the Redis key <prefix>:deployment; (5) run `escalator topology` with the new \
ESCALATOR_SHARDS / ESCALATOR_DELIVERY_LIMIT; (6) start the workers with the same values, then the \
producers. See deploy/README.md, \"Changing the shard count\".";

/// Why a process may not run with its settings in this deployment.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// Permanent until the settings or the deployment change.
    #[error(
        "the shard count is fixed per deployment: {recorded_in} has {recorded} work shards, \
         but this process was started with ESCALATOR_SHARDS={wanted}. Start it with \
         ESCALATOR_SHARDS={recorded}. {MIGRATION}"
    )]
    ShardCount {
        recorded: u16,
        wanted: u16,
        recorded_in: String,
    },
    /// Permanent until the settings or the deployment change.
    #[error(
        "the work queues' delivery limit is fixed per deployment: {recorded_in} records \
         {recorded}, but this process was started with ESCALATOR_DELIVERY_LIMIT={wanted}. \
         Start it with ESCALATOR_DELIVERY_LIMIT={recorded}. {MIGRATION}"
    )]
    DeliveryLimit {
        recorded: u32,
        wanted: u32,
        recorded_in: String,
    },
    /// Transient: the broker could not be asked.
    #[error("cannot check the work queues on the broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// Transient: Redis could not be asked.
    #[error("cannot read the deployment record in Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Permanent: someone wrote the key by hand.
    #[error(
        "the Redis key {key} does not hold a deployment record (fields shards, delivery_limit): delete it"
    )]
    Corrupt { key: String },
}

/// The number of work shards the broker has: `escalator.work.00` up to the
/// first missing one (0 on a fresh vhost).
pub async fn broker_shards(conn: &Connection) -> Result<u16, lapin::Error> {
    let channel = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut n: u16 = 0;
    while n < 1000 {
        match channel
            .queue_declare(
                ShortString::from(shard_queue(n)),
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(_) => n += 1,
            // NOT_FOUND closes the channel: that is the answer.
            Err(e) if is_not_found(&e) => break,
            Err(e) => return Err(e),
        }
    }
    // Already closed by the broker when the last probe missed.
    let _ = channel.close(200, ShortString::from("checked")).await;
    Ok(n)
}

fn is_not_found(e: &lapin::Error) -> bool {
    // lapin reports the broker's channel close as a protocol error whose text
    // carries the AMQP reply (404 NOT_FOUND).
    let text = format!("{e:?}");
    text.contains("NOT_FOUND") || text.contains("NotFound")
}

/// Refuse a shard count other than the one the broker's work queues have.
pub async fn check_broker(conn: &Connection, wanted: u16) -> Result<(), DeploymentError> {
    let recorded = broker_shards(conn).await?;
    if recorded == 0 || recorded == wanted {
        return Ok(());
    }
    Err(DeploymentError::ShardCount {
        recorded,
        wanted,
        recorded_in: format!(
            "the broker (queues {} .. {} on exchange {WORK_EXCHANGE})",
            shard_queue(0),
            shard_queue(recorded - 1)
        ),
    })
}

/// Record the shape in Redis if no process has, then return the recorded one.
/// KEYS: deployment hash. ARGV: shards, delivery limit.
const RECORD: &str = r#"
redis.call('HSETNX', KEYS[1], 'shards', ARGV[1])
redis.call('HSETNX', KEYS[1], 'delivery_limit', ARGV[2])
return redis.call('HMGET', KEYS[1], 'shards', 'delivery_limit')
"#;

static RECORD_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(RECORD));

/// The Redis key of the record.
pub fn record_key(prefix: &str) -> String {
    format!("{prefix}:deployment")
}

/// Write the shape once (first process of the key prefix), then refuse
/// another one.
pub async fn check_record(
    conn: &mut crate::store::RedisConnection,
    prefix: &str,
    shards: u16,
    delivery_limit: u32,
) -> Result<(), DeploymentError> {
    let key = record_key(prefix);
    let (recorded_shards, recorded_limit): (Option<String>, Option<String>) = RECORD_SCRIPT
        .key(&key)
        .arg(shards)
        .arg(delivery_limit)
        .invoke_async(conn)
        .await?;
    let corrupt = || DeploymentError::Corrupt { key: key.clone() };
    let recorded_shards: u16 = recorded_shards
        .and_then(|v| v.parse().ok())
        .ok_or_else(corrupt)?;
    let recorded_limit: u32 = recorded_limit
        .and_then(|v| v.parse().ok())
        .ok_or_else(corrupt)?;
    let recorded_in = format!("the Redis key {key}");
    if recorded_shards != shards {
        return Err(DeploymentError::ShardCount {
            recorded: recorded_shards,
            wanted: shards,
            recorded_in,
        });
    }
    if recorded_limit != delivery_limit {
        return Err(DeploymentError::DeliveryLimit {
            recorded: recorded_limit,
            wanted: delivery_limit,
            recorded_in,
        });
    }
    Ok(())
}

/// The worker's check: the Redis record, and the broker's queues when no
/// record exists yet (checked before the record is written, so a refused
/// count is never recorded).
pub async fn check_worker(
    amqp: &Connection,
    redis: &mut crate::store::RedisConnection,
    prefix: &str,
    shards: u16,
    delivery_limit: u32,
) -> Result<(), DeploymentError> {
    let (recorded_shards, recorded_limit): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(record_key(prefix))
        .arg("shards")
        .arg("delivery_limit")
        .query_async(redis)
        .await?;
    if recorded_shards.is_none() && recorded_limit.is_none() {
        check_broker(amqp, shards).await?;
    }
    check_record(redis, prefix, shards, delivery_limit).await
}
