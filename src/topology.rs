//! The AMQP topology, described once as data. `declare` applies it to a
//! broker (idempotently); `definitions_json` prints it in the format of
//! RabbitMQ's definitions import.
//!
//! ```text
//! producers -> escalator.inbound (topic) --#--> escalator.intake (quorum, single active consumer)
//!   intake router -> escalator.work (direct) --NN--> escalator.work.NN (quorum, SAC) -> workers
//!   workers: retry later -> escalator.retry (fanout) -> escalator.retry (quorum, per-message TTL)
//!                              --expired, dead-lettered--> escalator.work (same NN key)
//!   failures -> escalator.dead-letter (fanout) -> escalator.dead-letter (quorum)
//!   agent events -> escalator.outbound (topic, alternate exchange escalator.outbound.unrouted)
//! ```
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};
use serde_json::{Value, json};

pub const INBOUND_EXCHANGE: &str = "escalator.inbound";
pub const INTAKE_QUEUE: &str = "escalator.intake";
pub const WORK_EXCHANGE: &str = "escalator.work";
pub const RETRY_EXCHANGE: &str = "escalator.retry";
pub const RETRY_QUEUE: &str = "escalator.retry";
pub const OUTBOUND_EXCHANGE: &str = "escalator.outbound";
pub const UNROUTED_EXCHANGE: &str = "escalator.outbound.unrouted";
pub const UNROUTED_QUEUE: &str = "escalator.outbound.unrouted";
pub const DEAD_LETTER_EXCHANGE: &str = "escalator.dead-letter";
pub const DEAD_LETTER_QUEUE: &str = "escalator.dead-letter";
/// Unrouted outbound events kept at most (oldest dropped first).
pub const UNROUTED_MAX_LENGTH: i64 = 100_000;
/// Dead letters kept at most. A full dead-letter queue refuses new ones
/// (`reject-publish`): the failing message stays in its own queue, nothing is
/// dropped, and the worker logs an error until the queue is drained.
pub const DEAD_LETTER_MAX_LENGTH: i64 = 100_000;
/// Total body bytes of dead letters kept at most (same overflow behaviour).
pub const DEAD_LETTER_MAX_BYTES: i64 = 1 << 30;

/// The routing key of shard `n` on `escalator.work`.
pub fn shard_key(n: u16) -> String {
    format!("{n:02}")
}

pub fn shard_queue(n: u16) -> String {
    format!("{WORK_EXCHANGE}.{}", shard_key(n))
}

/// The shard that owns a conversation: stable for a given shard count.
pub fn shard_of(org_id: &str, conversation_id: &str, shards: u16) -> u16 {
    // FNV-1a: stable across processes, releases and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in org_id.bytes().chain([0u8]).chain(conversation_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u16
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    Topic,
    Direct,
    Fanout,
}

impl ExchangeType {
    fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
        }
    }
    fn kind(self) -> ExchangeKind {
        match self {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        }
    }
}

/// An argument value in a declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Str(&'static str),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone)]
pub struct ExchangeDef {
    pub name: String,
    pub kind: ExchangeType,
    pub args: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone)]
pub struct QueueDef {
    pub name: String,
    pub args: Vec<(&'static str, Arg)>,
}

#[derive(Debug, Clone)]
pub struct BindingDef {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// Everything the escalator declares.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchanges: Vec<ExchangeDef>,
    pub queues: Vec<QueueDef>,
    pub bindings: Vec<BindingDef>,
}

impl Topology {
    pub fn new(shards: u16, delivery_limit: u32) -> Topology {
        let limit = i64::from(delivery_limit);
        // A consumed queue: quorum, one active consumer (keeps order), a
        // delivery limit against poison messages, and broker dead-lettering
        // that is at-least-once (needs overflow=reject-publish; RabbitMQ >= 3.10).
        let consumed = |name: String| QueueDef {
            name,
            args: vec![
                ("x-queue-type", Arg::Str("quorum")),
                ("x-single-active-consumer", Arg::Bool(true)),
                ("x-delivery-limit", Arg::Int(limit)),
                ("x-dead-letter-exchange", Arg::Str(DEAD_LETTER_EXCHANGE)),
                ("x-dead-letter-strategy", Arg::Str("at-least-once")),
                ("x-overflow", Arg::Str("reject-publish")),
            ],
        };
        let ex = |name: &str, kind| ExchangeDef {
            name: name.to_string(),
            kind,
            args: vec![],
        };
        let bind = |exchange: &str, queue: &str, key: &str| BindingDef {
            exchange: exchange.to_string(),
            queue: queue.to_string(),
            routing_key: key.to_string(),
        };

        let mut exchanges = vec![
            ex(INBOUND_EXCHANGE, ExchangeType::Topic),
            ex(WORK_EXCHANGE, ExchangeType::Direct),
            ex(RETRY_EXCHANGE, ExchangeType::Fanout),
            ex(UNROUTED_EXCHANGE, ExchangeType::Fanout),
            ex(DEAD_LETTER_EXCHANGE, ExchangeType::Fanout),
        ];
        exchanges.push(ExchangeDef {
            name: OUTBOUND_EXCHANGE.to_string(),
            kind: ExchangeType::Topic,
            args: vec![("alternate-exchange", Arg::Str(UNROUTED_EXCHANGE))],
        });

        let mut queues = vec![consumed(INTAKE_QUEUE.to_string())];
        let mut bindings = vec![bind(INBOUND_EXCHANGE, INTAKE_QUEUE, "#")];
        for n in 0..shards {
            queues.push(consumed(shard_queue(n)));
            bindings.push(bind(WORK_EXCHANGE, &shard_queue(n), &shard_key(n)));
        }
        queues.push(QueueDef {
            name: RETRY_QUEUE.to_string(),
            args: vec![
                ("x-queue-type", Arg::Str("quorum")),
                // Expired messages go back to the work exchange with their shard key.
                ("x-dead-letter-exchange", Arg::Str(WORK_EXCHANGE)),
                ("x-dead-letter-strategy", Arg::Str("at-least-once")),
                ("x-overflow", Arg::Str("reject-publish")),
            ],
        });
        bindings.push(bind(RETRY_EXCHANGE, RETRY_QUEUE, ""));
        queues.push(QueueDef {
            name: DEAD_LETTER_QUEUE.to_string(),
            args: vec![
                ("x-queue-type", Arg::Str("quorum")),
                ("x-max-length", Arg::Int(DEAD_LETTER_MAX_LENGTH)),
                ("x-max-length-bytes", Arg::Int(DEAD_LETTER_MAX_BYTES)),
                // Never drop a dead letter: refuse the publish (our own dead
                // letters stay in their queue; broker dead-lettering, being
                // at-least-once, keeps them in the source queue).
                ("x-overflow", Arg::Str("reject-publish")),
            ],
        });
        bindings.push(bind(DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, ""));
        queues.push(QueueDef {
            name: UNROUTED_QUEUE.to_string(),
            args: vec![
                ("x-queue-type", Arg::Str("quorum")),
                ("x-max-length", Arg::Int(UNROUTED_MAX_LENGTH)),
                ("x-overflow", Arg::Str("drop-head")),
            ],
        });
        bindings.push(bind(UNROUTED_EXCHANGE, UNROUTED_QUEUE, ""));
        Topology {
            exchanges,
            queues,
            bindings,
        }
    }

    /// Declare everything on `channel`. Idempotent; a queue that exists with
    /// other arguments makes the broker close the channel with
    /// PRECONDITION_FAILED, which is reported as it is.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for e in &self.exchanges {
            channel
                .exchange_declare(
                    ShortString::from(e.name.as_str()),
                    e.kind.kind(),
                    durable,
                    field_table(&e.args),
                )
                .await?;
        }
        let qopts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        for q in &self.queues {
            channel
                .queue_declare(
                    ShortString::from(q.name.as_str()),
                    qopts,
                    field_table(&q.args),
                )
                .await?;
        }
        for b in &self.bindings {
            channel
                .queue_bind(
                    ShortString::from(b.queue.as_str()),
                    ShortString::from(b.exchange.as_str()),
                    ShortString::from(b.routing_key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// RabbitMQ definitions JSON (`rabbitmqctl import_definitions`, or the
    /// management UI's import) for `vhost`.
    pub fn definitions_json(&self, vhost: &str) -> Value {
        let args = |a: &[(&str, Arg)]| {
            Value::Object(
                a.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Arg::Str(s) => json!(s),
                            Arg::Int(i) => json!(i),
                            Arg::Bool(b) => json!(b),
                        };
                        (k.to_string(), v)
                    })
                    .collect(),
            )
        };
        json!({
            "exchanges": self.exchanges.iter().map(|e| json!({
                "name": e.name, "vhost": vhost, "type": e.kind.as_str(),
                "durable": true, "auto_delete": false, "internal": false,
                "arguments": args(&e.args),
            })).collect::<Vec<_>>(),
            "queues": self.queues.iter().map(|q| json!({
                "name": q.name, "vhost": vhost, "durable": true, "auto_delete": false,
                "arguments": args(&q.args),
            })).collect::<Vec<_>>(),
            "bindings": self.bindings.iter().map(|b| json!({
                "source": b.exchange, "vhost": vhost, "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {},
            })).collect::<Vec<_>>(),
        })
    }
}

fn field_table(args: &[(&str, Arg)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in args {
        let v = match v {
            Arg::Str(s) => AMQPValue::LongString(LongString::from(*s)),
            Arg::Int(i) => AMQPValue::LongLongInt(*i),
            Arg::Bool(b) => AMQPValue::Boolean(*b),
        };
        t.insert(ShortString::from(*k), v);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_assignment_is_stable_and_spread() {
        assert_eq!(shard_of("acme", "c-1", 16), shard_of("acme", "c-1", 16));
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            seen.insert(shard_of("acme", &format!("conv-{i}"), 16));
        }
        assert_eq!(seen.len(), 16, "200 conversations should reach every shard");
    }

    #[test]
    fn definitions_name_every_queue_with_quorum_type() {
        let t = Topology::new(4, 20);
        let d = t.definitions_json("/");
        let queues = d["queues"].as_array().unwrap();
        assert_eq!(queues.len(), 4 + 4);
        assert!(
            queues
                .iter()
                .all(|q| q["arguments"]["x-queue-type"] == "quorum")
        );
        let work = queues
            .iter()
            .find(|q| q["name"] == "escalator.work.03")
            .unwrap();
        assert_eq!(work["arguments"]["x-delivery-limit"], 20);
        assert_eq!(work["arguments"]["x-dead-letter-strategy"], "at-least-once");
        let out = d["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == OUTBOUND_EXCHANGE)
            .unwrap();
        assert_eq!(out["arguments"]["alternate-exchange"], UNROUTED_EXCHANGE);
        let dlq = queues
            .iter()
            .find(|q| q["name"] == DEAD_LETTER_QUEUE)
            .unwrap();
        assert_eq!(dlq["arguments"]["x-max-length"], DEAD_LETTER_MAX_LENGTH);
        assert_eq!(dlq["arguments"]["x-overflow"], "reject-publish");
    }
}
