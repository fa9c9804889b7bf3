//! A vhost and a Redis key prefix of the benchmark's own (`escalator-bench-<id>`,
//! `escalator-bench:<id>`), made with [`crate::scratch`]: the management API
//! when it answers, else `rabbitmqctl`. There is no fallback to the default
//! vhost "/": without either, the run stops before touching the broker and
//! says how to provide one.
use crate::scratch::{MANAGEMENT_URL, Scratch, VhostAdmin};
use crate::settings::Settings;
use crate::store::Store;
use std::time::Duration;

/// The management API named by `ESCALATOR_MANAGEMENT_URL`, else [`MANAGEMENT_URL`].
fn management_url() -> String {
    std::env::var("ESCALATOR_MANAGEMENT_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| MANAGEMENT_URL.to_string())
}

/// Make the benchmark's scratch vhost and choose its key prefix; the caller
/// removes both with [`Scratch::remove`], also after an error.
pub async fn create(settings: &Settings) -> Result<Scratch, String> {
    let admin = VhostAdmin::detect(&management_url(), &settings.amqp_url).await?;
    Scratch::create(admin, &settings.amqp_url, "bench").await
}

/// Record the run's shard count and delivery limit under its fresh key prefix
/// before its worker starts. The vhost is new, so it has no work queues to
/// compare them with; without the record the worker would probe the broker
/// for them, and lapin logs an ERROR for the missing queue's closed channel
/// in the middle of the bench's output.
pub async fn record_shape(settings: &Settings) -> Result<(), String> {
    let store = Store::connect(
        &settings.redis_url,
        &settings.key_prefix,
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| crate::explain::redis(&settings.redis_url, &e))?;
    crate::deployment::check_record(
        &mut store.connection(),
        &settings.key_prefix,
        settings.shards,
        settings.delivery_limit,
    )
    .await
    .map_err(|e| e.to_string())
}
