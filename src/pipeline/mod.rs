//! The worker pipeline, from `main` down:
//!
//! 1. [`service::Worker::run`] keeps a RabbitMQ session alive (connect,
//!    declare the topology, consume; reconnect on failure; drain on SIGTERM).
//! 2. [`intake`] routes each inbound message, in publish order, to the work
//!    shard of its conversation, or dead-letters it when it is unusable.
//! 3. [`shard`] consumes the shards, one lane per conversation;
//!    [`subscription`] holds the shard subscriptions and hands shards over
//!    to their preferred worker.
//! 4. [`handler`] decides each message's fate; [`effects`] makes the provider
//!    calls exactly once; [`outbound`] tells the widget; [`dead_letter`] keeps
//!    what failed, with why; [`rejection`] does both for unusable messages.
pub mod bulkhead;
pub mod dead_letter;
pub mod effects;
pub mod handler;
pub mod intake;
pub mod lease;
pub mod live;
pub mod membership;
pub mod meta;
pub mod outbound;
pub mod rejection;
pub mod resolve;
pub mod service;
pub mod shard;
pub mod subscription;

use crate::config::Config;
use crate::provider::Providers;
use crate::provider::retry::RetryPolicy;
use crate::schema::Schemas;
use crate::settings::Settings;
use crate::store::Store;
use std::time::Duration;

/// Everything a worker shares between its tasks.
pub struct Context {
    pub settings: Settings,
    pub config: Config,
    pub schemas: Schemas,
    pub store: Store,
    pub providers: Providers,
    pub retry: RetryPolicy,
    /// Unique per process: consumer tags, membership.
    pub instance_id: String,
    /// Pause before subscribing to non-preferred shards.
    pub standby_delay: Duration,
    /// Live lane tasks of the current session (see [`shard::LaneGauge`]).
    pub lanes: shard::LaneGauge,
    /// Webhook events the intake router resolved or ignored.
    pub webhooks: resolve::WebhookCounters,
    /// The Salesforce messaging streams this worker holds.
    pub streams: crate::live_stream::Streams,
}
