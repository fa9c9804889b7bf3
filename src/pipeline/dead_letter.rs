//! Dead letters: the original body, properties and routing key, plus why.
use super::meta::{self, Meta};
use crate::amqp::{PendingConfirm, Publisher};
use crate::error::InfraError;
use crate::topology::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_MAX_LENGTH, DEAD_LETTER_QUEUE};
use chrono::Utc;
use lapin::BasicProperties;

/// Why a message is dead-lettered.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// `permanent` (provider said no), `transient` (retries exhausted) or
    /// `invalid` (the message itself is unusable).
    pub error_class: &'static str,
    /// Human reason; never contains secrets or customer text.
    pub reason: String,
    /// Where it was decided: `intake` or `worker`.
    pub stage: &'static str,
}

/// A dead letter the broker has not confirmed yet.
pub struct DeadLetterConfirm {
    confirm: PendingConfirm,
    /// The verdict's class and stage, counted once the broker confirmed.
    labels: (&'static str, &'static str),
}

impl DeadLetterConfirm {
    /// Wait for the broker. A nack means the dead-letter queue refused it:
    /// it is full (`x-overflow=reject-publish`). The caller keeps the original
    /// (not acked), so nothing is dropped; this says so loudly every time.
    pub async fn wait(self) -> Result<(), InfraError> {
        let result = self.confirm.wait().await;
        if result.is_ok() {
            crate::observability::metrics::dead_letter(self.labels.0, self.labels.1);
        }
        if let Err(InfraError::PublishNacked(_)) = &result {
            tracing::error!(
                queue = DEAD_LETTER_QUEUE,
                max_length = DEAD_LETTER_MAX_LENGTH,
                "the dead-letter queue is full and refused a dead letter: the message stays in its queue and is retried; drain or replay {DEAD_LETTER_QUEUE} to resume"
            );
        }
        result
    }
}

/// Start publishing a dead letter (the caller awaits the confirm, then acks
/// the original). `routing_key` is the message's original inbound routing key.
///
/// The copy keeps the original's properties and headers (a broker's `x-death`
/// history included) except a producer's `expiration`, which would make the
/// dead letter vanish from the queue.
pub async fn start(
    publisher: &Publisher,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
    meta: &Meta,
    verdict: &Verdict,
) -> Result<DeadLetterConfirm, InfraError> {
    let now = Utc::now();
    let mut m = meta.clone();
    m.routing_key = routing_key.to_string();
    // The last round counts as a failure too.
    m.failed(&verdict.reason, now);
    let props = m.write(meta::internal_hop(&props));
    let mut h = props.headers().clone().unwrap_or_default();
    meta::set_str(&mut h, meta::H_ERROR_CLASS, verdict.error_class);
    meta::set_str(&mut h, meta::H_REASON, &verdict.reason);
    meta::set_str(&mut h, meta::H_STAGE, verdict.stage);
    meta::set_int(&mut h, meta::H_DEAD_LETTERED_AT, now.timestamp_millis());
    let props = props.with_headers(h);
    tracing::warn!(
        routing_key,
        error_class = verdict.error_class,
        stage = verdict.stage,
        attempts = m.attempts,
        reason = %verdict.reason,
        "dead-lettering message"
    );
    publisher
        .start(DEAD_LETTER_EXCHANGE, routing_key, body, props)
        .await
        .map(|confirm| DeadLetterConfirm {
            confirm,
            labels: (verdict.error_class, verdict.stage),
        })
}
