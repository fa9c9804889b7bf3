//! What the service tells its operators besides logs: Prometheus metrics
//! ([`metrics`]); the worker's probes live in [`crate::health`].
pub mod metrics;
