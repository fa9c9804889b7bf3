//! The Prometheus metrics of the worker and the ingress: their names, their
//! help texts, the process-global recorder, and one small function per
//! measurement so that each instrumented site stays a single line.
//!
//! Labels are low-cardinality on purpose: message types, outcomes, provider
//! names, operation names, status classes, configured org ids. Never a
//! conversation id, a ticket id or any text an org or a customer supplies.
//!
//! The recorder is process-global (the `metrics` facade has one slot): it is
//! installed once, on first use, and every worker or ingress of the process
//! adds to the same series. Tests therefore compare before/after deltas.
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MESSAGES: &str = "escalator_messages_total";
pub const MESSAGE_DURATION: &str = "escalator_message_duration_seconds";
pub const PROVIDER_REQUESTS: &str = "escalator_provider_requests_total";
pub const PROVIDER_REQUEST_DURATION: &str = "escalator_provider_request_duration_seconds";
pub const RETRIES: &str = "escalator_retries_total";
pub const DEAD_LETTERS: &str = "escalator_dead_letters_total";
pub const WEBHOOK_EVENTS: &str = "escalator_webhook_events_total";
pub const LANES: &str = "escalator_lanes";
pub const TOKEN_REFRESHES: &str = "escalator_salesforce_token_refreshes_total";
pub const API_USAGE: &str = "escalator_salesforce_api_usage_ratio";
pub const OUTBOUND_RETURNED: &str = "escalator_outbound_unrouted_total";
pub const INGRESS_REQUESTS: &str = "escalator_ingress_requests_total";
pub const INGRESS_REQUEST_DURATION: &str = "escalator_ingress_request_duration_seconds";
pub const STREAMS_OPEN: &str = "escalator_streams_open";
pub const LIVE_CONVERSATIONS: &str = "escalator_live_conversations";
pub const STREAM_CONNECTS: &str = "escalator_stream_connects_total";
pub const MESSAGING_TOKEN_RENEWALS: &str = "escalator_messaging_token_renewals_total";

/// Histogram buckets (seconds): provider calls and messages take from a few
/// milliseconds to the HTTP timeout (15 s) and, with in-process retries, more.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (keeps memory bounded).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the recorder (once per process) and describe every metric.
/// Called by `Worker::start` and the ingress; cheap after the first call.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                // Another recorder owns the global slot (an embedding
                // program's): render an empty, unregistered one.
                tracing::warn!(error = %e, "a metrics recorder is already installed: /metrics stays empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread: histograms fold at scrape time only");
        }
        handle
    })
}

/// The Prometheus text exposition of every metric of the process.
pub fn render() -> String {
    install().render()
}

fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        STREAMS_OPEN,
        "Salesforce messaging event streams this process holds (one per live conversation it owns)"
    );
    describe_gauge!(
        LIVE_CONVERSATIONS,
        "Live Salesforce chats registered fleet-wide, as this worker's last stream scan saw them"
    );
    describe_counter!(
        STREAM_CONNECTS,
        "Salesforce messaging event stream connections made (first connects and reconnects)"
    );
    describe_counter!(
        MESSAGING_TOKEN_RENEWALS,
        "Salesforce messaging access token renewals, by result (renewed, failed)"
    );
    describe_counter!(
        MESSAGES,
        "Work-queue messages finished, by inbound type and outcome (done, duplicate, parked, dead_lettered, rejected)"
    );
    describe_histogram!(
        MESSAGE_DURATION,
        Unit::Seconds,
        "Time from taking a work-queue message to its outcome, by inbound type"
    );
    describe_counter!(
        PROVIDER_REQUESTS,
        "HTTP requests to Salesforce, Zendesk and Sunshine, by provider, operation and status (2xx..5xx, 429, or error for no answer)"
    );
    describe_histogram!(
        PROVIDER_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of one provider HTTP request until its response headers, by provider and operation"
    );
    describe_counter!(
        RETRIES,
        "Messages sent to the broker's retry queue (one per round), by stage"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Dead letters the broker confirmed, by error class (permanent, transient, invalid) and stage (intake, worker)"
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Zendesk webhook events seen by the intake router: resolved to one of our conversations, or ignored"
    );
    describe_gauge!(
        LANES,
        "Live conversation lanes (one task per conversation with work in progress)"
    );
    describe_counter!(
        TOKEN_REFRESHES,
        "Salesforce access tokens fetched from the token endpoint, by org"
    );
    describe_gauge!(
        API_USAGE,
        "Share of the Salesforce org's daily API limit used, from the last Sforce-Limit-Info header (0..1), by org"
    );
    describe_counter!(
        OUTBOUND_RETURNED,
        "Publishes the broker returned as unroutable (mandatory flag: not even the alternate exchange took them)"
    );
    describe_counter!(
        INGRESS_REQUESTS,
        "Webhook deliveries answered by the ingress, by HTTP status"
    );
    describe_histogram!(
        INGRESS_REQUEST_DURATION,
        Unit::Seconds,
        "Time to answer one webhook delivery (including the broker's confirm)"
    );
}

/// The bounded `type` label of an inbound routing key (`unknown` for
/// anything that is not one of ours).
pub fn message_type(routing_key: &str) -> &'static str {
    crate::contract::InboundKind::from_routing_key(routing_key)
        .map(|k| k.routing_key())
        .unwrap_or("unknown")
}

/// A work-queue message finished with `outcome`, `started` when it was taken.
pub fn message(routing_key: &str, outcome: &'static str, started: Instant) {
    let kind = message_type(routing_key);
    ::metrics::counter!(MESSAGES, "type" => kind, "outcome" => outcome).increment(1);
    ::metrics::histogram!(MESSAGE_DURATION, "type" => kind).record(started.elapsed());
}

/// The status label of a provider request: the code for 429 (rate
/// limits matter on their own), else its class; `error` for no answer.
pub fn status_label(status: Option<u16>) -> &'static str {
    match status {
        None => "error",
        Some(429) => "429",
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
    }
}

/// One provider HTTP request (`status` None: no answer).
pub fn provider_request(provider: &'static str, op: &str, status: Option<u16>, started: Instant) {
    let op = operation(op);
    ::metrics::counter!(PROVIDER_REQUESTS, "provider" => provider, "operation" => op.clone(), "status" => status_label(status)).increment(1);
    ::metrics::histogram!(PROVIDER_REQUEST_DURATION, "provider" => provider, "operation" => op)
        .record(started.elapsed());
}

/// Operation names are fixed phrases in the clients; cut at anything that
/// looks like a value, as a guard against an id slipping in.
fn operation(op: &str) -> String {
    let name: String = op
        .chars()
        .take_while(|c| c.is_ascii_alphabetic() || *c == ' ' || *c == '_' || *c == '-')
        .take(48)
        .collect();
    let name = name.trim();
    if name.is_empty() {
        "other".to_string()
    } else {
        name.to_string()
    }
}

/// One round through the broker's retry queue.
pub fn retry(stage: &'static str) {
    ::metrics::counter!(RETRIES, "stage" => stage).increment(1);
}

/// One dead letter, confirmed by the broker.
pub fn dead_letter(class: &'static str, stage: &'static str) {
    ::metrics::counter!(DEAD_LETTERS, "class" => class, "stage" => stage).increment(1);
}

/// `result`: `resolved` or `ignored`.
pub fn webhook_event(result: &'static str) {
    ::metrics::counter!(WEBHOOK_EVENTS, "result" => result).increment(1);
}

/// A lane started (+1) or ended (-1).
pub fn lanes(delta: f64) {
    ::metrics::gauge!(LANES).increment(delta);
}

pub fn token_refresh(org: &str) {
    ::metrics::counter!(TOKEN_REFRESHES, "org" => org.to_string()).increment(1);
}

/// A Salesforce messaging stream reader started (+1) or ended (-1).
pub fn streams_open(delta: i64) {
    ::metrics::gauge!(STREAMS_OPEN).increment(delta as f64);
}

/// Live Salesforce chats registered fleet-wide (each worker's last scan).
pub fn live_conversations(n: usize) {
    ::metrics::gauge!(LIVE_CONVERSATIONS).set(n as f64);
}

/// A messaging stream (re)connected.
pub fn stream_connect() {
    ::metrics::counter!(STREAM_CONNECTS).increment(1);
}

/// A messaging access token renewal, `result` `renewed` or `failed`.
pub fn messaging_token_renewal(result: &'static str) {
    ::metrics::counter!(MESSAGING_TOKEN_RENEWALS, "result" => result).increment(1);
}

/// `Sforce-Limit-Info: api-usage=USED/MAX`.
pub fn api_usage(org: &str, used: u64, max: u64) {
    if max > 0 {
        ::metrics::gauge!(API_USAGE, "org" => org.to_string()).set(used as f64 / max as f64);
    }
}

pub fn outbound_returned() {
    ::metrics::counter!(OUTBOUND_RETURNED).increment(1);
}

/// One webhook delivery answered with `status`.
pub fn ingress_request(status: u16, started: Instant) {
    ::metrics::counter!(INGRESS_REQUESTS, "status" => status.to_string()).increment(1);
    ::metrics::histogram!(INGRESS_REQUEST_DURATION).record(started.elapsed());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(message_type("escalation.requested"), "escalation.requested");
        assert_eq!(message_type("conv-123.whatever"), "unknown");
        assert_eq!(status_label(Some(201)), "2xx");
        assert_eq!(status_label(Some(429)), "429");
        assert_eq!(status_label(None), "error");
        assert_eq!(operation("create case"), "create case");
        assert_eq!(operation("get ticket 12345"), "get ticket");
        assert_eq!(operation("123"), "other");
    }
}
