//! `escalator dlq`: list, show, replay and purge the dead-letter queue
//! (`escalator.dead-letter`) while workers run.
//!
//! Reading never destroys: [`read::Batch`] consumes at most the queue's
//! message count at start, with manual acks on a channel of its own. A
//! message is acked only when it was removed on purpose (purged, or
//! republished and confirmed); every other one is handed back in its order.
//! See `read.rs` for the delivery-count guard (quorum queues count returns).
pub mod read;
pub mod replay;
pub mod select;
pub mod table;

use crate::pipeline::meta::{self, Meta};
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// Why a dlq command failed, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("{0}")]
    Connect(String),
    #[error(
        "the queue {queue} does not exist in this vhost: declare the topology first (`escalator topology` or start a worker)"
    )]
    QueueMissing { queue: String },
    #[error("no dead letter has the id {0} (run `escalator dlq list` to see the ids)")]
    UnknownId(String),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Infra(#[from] crate::error::InfraError),
    #[error("{0}")]
    Refused(String),
}

/// One dead letter as read from the queue (body and properties as stored).
#[derive(Clone)]
pub struct DeadLetter {
    /// Stable id: the message id (with `#N` for one event of a webhook), or a
    /// short hash of the body and the dead-lettering time when there is none.
    pub id: String,
    /// The routing key it was first published under on `escalator.inbound`.
    pub routing_key: String,
    /// The routing key it carries in the dead-letter queue (kept when the
    /// copy is refreshed).
    pub delivery_key: String,
    pub message_id: Option<String>,
    pub org: String,
    pub conversation: String,
    /// `permanent`, `transient`, `invalid`, or `broker` (dead-lettered by RabbitMQ).
    pub error_class: String,
    /// Our reason, or the broker's `x-death` reason (e.g. `delivery_limit`).
    pub reason: String,
    pub attempts: u32,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    /// Times RabbitMQ has delivered this copy before (`x-delivery-count`).
    pub delivery_count: i64,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// Not derived: the body and reasons stay out of Debug output.
impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("routing_key", &self.routing_key)
            .field("error_class", &self.error_class)
            .finish_non_exhaustive()
    }
}

/// The most recent `x-death` entry (the broker puts it first).
fn last_death(h: &FieldTable) -> Option<FieldTable> {
    match h.inner().get("x-death")? {
        AMQPValue::FieldArray(a) => a.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t.clone()),
            _ => None,
        }),
        _ => None,
    }
}

impl DeadLetter {
    pub fn parse(delivery_key: &str, properties: BasicProperties, body: Vec<u8>) -> DeadLetter {
        let m = Meta::read(&properties);
        let empty = FieldTable::default();
        let h = properties.headers().as_ref().unwrap_or(&empty);
        let death = last_death(h);
        let ours = meta::get_str(h, meta::H_ERROR_CLASS);
        let (error_class, reason) = match (&ours, &death) {
            (Some(class), _) => (
                class.clone(),
                meta::get_str(h, meta::H_REASON).unwrap_or_default(),
            ),
            (None, Some(d)) => (
                "broker".to_string(),
                meta::get_str(d, "reason").unwrap_or_else(|| "unknown".into()),
            ),
            (None, None) => ("unknown".to_string(), String::new()),
        };
        let dead_lettered_at = meta::get_int(h, meta::H_DEAD_LETTERED_AT)
            .and_then(DateTime::from_timestamp_millis)
            .or_else(|| {
                // x-death times are AMQP timestamps (seconds).
                death
                    .as_ref()
                    .and_then(|d| meta::get_int(d, "time"))
                    .and_then(|s| DateTime::from_timestamp(s, 0))
            });
        // Ours, else the broker's record of the key it was published under.
        let death_key = death
            .as_ref()
            .and_then(|d| match d.inner().get("routing-keys")? {
                AMQPValue::FieldArray(a) => a.as_slice().iter().find_map(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                }),
                _ => None,
            });
        let routing_key = if !m.routing_key.is_empty() {
            m.routing_key.clone()
        } else {
            death_key.unwrap_or_else(|| delivery_key.to_string())
        };
        let message_id = properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string());
        let id = match (&message_id, m.provider_event) {
            (Some(mid), Some(n)) => format!("{mid}#{n}"),
            (Some(mid), None) => mid.clone(),
            (None, _) => hash_id(&body, dead_lettered_at),
        };
        DeadLetter {
            id,
            routing_key,
            delivery_key: delivery_key.to_string(),
            message_id,
            org: m.org_id,
            conversation: m.conversation_id,
            error_class,
            reason,
            attempts: m.attempts,
            dead_lettered_at,
            delivery_count: meta::get_int(h, "x-delivery-count").unwrap_or(0),
            properties,
            body,
        }
    }

    /// How long ago it was dead-lettered.
    pub fn age(&self, now: DateTime<Utc>) -> Option<chrono::Duration> {
        self.dead_lettered_at.map(|t| now - t)
    }
}

/// `h` followed by 12 hex digits of FNV-1a over the body and the time: stable
/// across listings of the same dead letter.
fn hash_id(body: &[u8], at: Option<DateTime<Utc>>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let stamp = at.map(|t| t.timestamp_millis()).unwrap_or(0).to_be_bytes();
    for b in body.iter().chain(stamp.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("h{:012x}", h & 0xffff_ffff_ffff)
}

/// Connect for a dlq command (the error says what to fix).
pub async fn connect(amqp_url: &str) -> Result<lapin::Connection, DlqError> {
    let mut settings = crate::settings::Settings::defaults();
    settings.amqp_url = amqp_url.to_string();
    crate::amqp::connect_explained(&settings, "escalator-dlq")
        .await
        .map_err(DlqError::Connect)
}
