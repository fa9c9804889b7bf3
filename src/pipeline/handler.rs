//! Handling of one work item: dedupe, per-conversation order across retries,
//! the effect, then outbound events, and the item's fate (done, parked in the
//! retry queue, or dead-lettered).
use super::dead_letter::{self, Verdict};
use super::effects;
use super::meta::Meta;
use super::{Context, lease, live, outbound};
use crate::amqp::Publisher;
use crate::contract::{
    EscalationFailed, FailureCode, InboundEvent, InboundKind, OutboundPayload, ProviderKind,
    failure_sentence,
};
use crate::error::{ErrorClass, InfraError, ProcessError, ProviderErrorKind};
use crate::store::{Admission, Begin, Claim, Lease};
use crate::topology::RETRY_EXCHANGE;
use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::ShortString;
use std::time::Duration;

/// One message from a work queue, parsed.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub meta: Meta,
    pub event: InboundEvent,
    pub body: Vec<u8>,
    pub props: BasicProperties,
    /// The routing key it came with on `escalator.work` (its shard).
    pub shard_key: String,
}

/// What became of an item (all of them end with an ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    Done,
    Duplicate,
    Parked,
    DeadLettered,
}

impl Fate {
    /// The `outcome` label of `escalator_messages_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            Fate::Done => "done",
            Fate::Duplicate => "duplicate",
            Fate::Parked => "parked",
            Fate::DeadLettered => "dead_lettered",
        }
    }
}

/// Handle one item. `Err` means our infrastructure failed: nothing was
/// decided, the caller must not ack and decides by [`InfraError::recovery`].
///
/// The conversation's lease is taken by `begin` when the item may run: one
/// runner per conversation, fleet-wide. A runner that finds it held waits
/// (at most one lease TTL) for its release or expiry. The lease is renewed
/// while the item runs and released by `finish` (or at once when the item is
/// parked or fails on our side); a runner dropped mid-call leaves it to
/// expire, so that its last request has timed out before anyone else looks.
pub async fn handle(
    ctx: &Context,
    publisher: &Publisher,
    item: &WorkItem,
) -> Result<Fate, InfraError> {
    let m = &item.meta;
    let claim = claim(ctx);
    let begin = begin_when_free(ctx, m, &claim).await?;
    if begin.dropped_heads > 0 {
        tracing::warn!(
            dropped = begin.dropped_heads,
            "parked messages long past their due time (dead-lettered by the broker?) no longer hold up this conversation"
        );
    }
    if begin.done {
        tracing::info!("duplicate message, already handled");
        return Ok(Fate::Duplicate);
    }
    let lease = match (begin.admission, begin.lease.clone()) {
        (Admission::Proceed | Admission::Head, Some(lease)) => lease,
        _ => {
            tracing::info!(
                "an earlier message of this conversation waits for a retry: queuing behind it"
            );
            retry_later(ctx, publisher, item, m.clone()).await?;
            return Ok(Fate::Parked);
        }
    };
    let result = lease::hold(
        &ctx.store,
        &lease,
        claim.ttl,
        run(ctx, publisher, item, &begin, &lease),
    )
    .await;
    match &result {
        // `finish` released it; a fenced-off runner has nothing to release.
        Ok(Fate::Done | Fate::DeadLettered) | Err(InfraError::Fenced { .. }) => {}
        // Parked, or failed on our side with no request in flight: let the
        // next runner in now rather than at expiry.
        _ => {
            if let Err(e) = ctx.store.release(&lease).await {
                tracing::debug!(error = %e, "could not release the conversation lease: it expires");
            }
        }
    }
    result
}

/// This worker's terms for a conversation's lease.
pub(super) fn claim(ctx: &Context) -> Claim {
    Claim {
        owner: ctx.instance_id.clone(),
        ttl: ctx.settings.lease_ttl(),
        overdue_grace: ctx.settings.overdue_grace(),
    }
}

/// `Store::begin`, again while another runner holds the conversation's
/// lease (polling, at most one lease TTL; then `LeaseBusy`, a wait).
async fn begin_when_free(ctx: &Context, m: &Meta, claim: &Claim) -> Result<Begin, InfraError> {
    let (org, conv) = (m.org_id.as_str(), m.conversation_id.as_str());
    let mut wait = lease::Wait::new(claim.ttl);
    let started = tokio::time::Instant::now();
    loop {
        let begin = ctx.store.begin(org, conv, &m.dedupe_id, claim).await?;
        if begin.admission != Admission::Busy {
            if started.elapsed() > Duration::from_millis(100) {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "waited for another runner's lease on this conversation"
                );
            }
            return Ok(begin);
        }
        if !wait.pause(begin.busy_for).await {
            return Err(InfraError::LeaseBusy {
                org_id: org.to_string(),
                conversation_id: conv.to_string(),
                waited_ms: started.elapsed().as_millis() as u64,
            });
        }
    }
}

/// The item, holding its conversation's lease.
async fn run(
    ctx: &Context,
    publisher: &Publisher,
    item: &WorkItem,
    begin: &Begin,
    lease: &Lease,
) -> Result<Fate, InfraError> {
    let m = &item.meta;
    let org = m.org_id.as_str();
    // Back before its backoff is over (the broker's copy says so, or the
    // parked list kept a later due time from a round whose retry publish
    // failed): another round.
    let due = m.not_before.max(begin.due);
    if due.is_some_and(|t| t > Utc::now()) {
        let mut next = m.clone();
        next.not_before = due;
        return park_as_head(ctx, publisher, item, next).await;
    }

    // The provider the conversation went to, else the one this event asks for.
    let provider = begin
        .record
        .as_ref()
        .map(|r| r.provider)
        .or_else(|| effects::provider_of(ctx, org, requested_provider(&item.event)));
    let mode = match (&item.event, begin.record.as_ref()) {
        (_, Some(r)) => Some(r.mode),
        (InboundEvent::EscalationRequested(e), None) => Some(e.mode),
        _ => None,
    };
    if let Some(mode) = mode {
        tracing::Span::current().record("mode", mode.as_str());
    }
    let result = match &item.event {
        InboundEvent::EscalationRequested(e) => {
            effects::escalate(ctx, e, begin.record.as_ref()).await
        }
        InboundEvent::CustomerMessage(msg) => {
            effects::relay_customer_message(ctx, msg, begin.record.as_ref()).await
        }
        InboundEvent::CustomerTyping(t) => match begin.record.as_ref() {
            Some(rec) if rec.live.is_some() => live::typing(ctx, t, rec).await,
            // A ticket has no typing indicator: accepted, no effect.
            _ => Ok(effects::Effect::default()),
        },
        InboundEvent::CustomerEnded(ended) => match begin.record.as_ref() {
            Some(rec) if rec.live.is_some() => live::customer_ended(ctx, ended, rec).await,
            // A ticket stays open for the agent: accepted, no effect.
            _ => Ok(effects::Effect::default()),
        },
        InboundEvent::WebhookZendesk(w) => {
            live::on_zendesk_webhook(ctx, w, m.provider_event, begin.record.as_ref()).await
        }
        InboundEvent::SalesforceStream(ev) => {
            live::on_salesforce_stream(ctx, ev, begin.record.as_ref()).await
        }
        InboundEvent::WebhookSunshine(_) => Err(ProcessError::Rejected(
            "Sunshine webhooks are not handled by this version (the Zendesk webhook carries the agent's replies)".into(),
        )),
    };
    let provider = provider.unwrap_or(ProviderKind::Zendesk);

    match result {
        Ok(effect) => {
            conclude(ctx, publisher, lease, m, provider, effect, true).await?;
            Ok(Fate::Done)
        }
        Err(ProcessError::Infra(e)) => Err(e),
        Err(ProcessError::Provider(p)) if p.kind == ProviderErrorKind::BudgetExhausted => {
            // Not a failure: the org's shared request budget is spent. Wait in
            // the retry queue (freeing this worker for other orgs).
            let wait = p.retry_after.unwrap_or_else(|| ctx.settings.retry_delay());
            let mut next = m.clone();
            next.not_before = Some(Utc::now() + wait);
            tracing::info!(
                wait_ms = wait.as_millis() as u64,
                "request budget used up: waiting in the retry queue"
            );
            park_as_head(ctx, publisher, item, next).await
        }
        Err(err) => {
            let class = err.class();
            let reason = err.to_string();
            let mut next = m.clone();
            next.failed(&reason, Utc::now());
            if class == ErrorClass::Transient && next.attempts < ctx.settings.broker_attempts {
                let wait = broker_backoff(ctx, next.attempts, retry_after(&err));
                next.not_before = Some(Utc::now() + wait);
                tracing::warn!(attempts = next.attempts, wait_ms = wait.as_millis() as u64, error = %reason, "transient failure: retrying later via the retry queue");
                return park_as_head(ctx, publisher, item, next).await;
            }
            let verdict = Verdict {
                error_class: class.as_str(),
                reason: if class == ErrorClass::Transient {
                    format!("gave up after {} attempts: {reason}", m.attempts + 1)
                } else {
                    reason.clone()
                },
                stage: "worker",
            };
            dead_letter::start(
                publisher,
                &m.routing_key,
                &item.body,
                item.props.clone(),
                m,
                &verdict,
            )
            .await?
            .wait()
            .await?;
            let (code, reason) = widget_failure(&err, &m.routing_key, provider);
            let failed = OutboundPayload::EscalationFailed(EscalationFailed {
                reason,
                code,
                error_class: class,
                failed_event: m.routing_key.clone(),
            });
            let effect = effects::Effect {
                record: None,
                events: vec![failed],
            };
            // Not marked done: a replay from the dead-letter queue runs again.
            conclude(ctx, publisher, lease, m, provider, effect, false).await?;
            Ok(Fate::DeadLettered)
        }
    }
}

/// Dead-letter an item that failed on our side in a way that cannot clear
/// (corrupt or newer-version state, an unroutable publish): class
/// `permanent`, stage `worker`, the error as the reason. Returns once the
/// broker confirmed (the caller then acks).
pub async fn dead_letter_stuck(
    publisher: &Publisher,
    item: &WorkItem,
    err: &InfraError,
) -> Result<(), InfraError> {
    let verdict = Verdict {
        error_class: ErrorClass::Permanent.as_str(),
        reason: format!("cannot be processed: {err}"),
        stage: "worker",
    };
    dead_letter::start(
        publisher,
        &item.meta.routing_key,
        &item.body,
        item.props.clone(),
        &item.meta,
        &verdict,
    )
    .await?
    .wait()
    .await
}

fn requested_provider(e: &InboundEvent) -> Option<ProviderKind> {
    match e {
        InboundEvent::EscalationRequested(e) => e.provider,
        _ => None,
    }
}

fn retry_after(err: &ProcessError) -> Option<Duration> {
    match err {
        ProcessError::Provider(p) => p.retry_after,
        _ => None,
    }
}

/// Wait before broker round `n` (1-based): base * 2^(n-1), at least what the
/// provider asked for, at most an hour, with ±20 % jitter.
fn broker_backoff(ctx: &Context, n: u32, asked: Option<Duration>) -> Duration {
    let base = ctx.settings.retry_delay();
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    let wait = exp.mul_f64(jitter).max(asked.unwrap_or_default());
    wait.min(Duration::from_secs(crate::store::MAX_BROKER_BACKOFF_SECS))
}

/// The widget's view of a failure: a stable code and a sentence a person can
/// be shown. Only our own fixed phrases: a provider's error text can echo
/// customer data, so it stays in the dead letter and the logs.
fn widget_failure(
    err: &ProcessError,
    failed_event: &str,
    provider: ProviderKind,
) -> (FailureCode, String) {
    let name = provider.display_name();
    let (code, cause) = match err {
        ProcessError::Provider(p) if p.is_transient() => (
            FailureCode::ProviderUnavailable,
            format!("{name} could not be reached for too long. Please try again later."),
        ),
        ProcessError::Provider(p) => match p.kind {
            ProviderErrorKind::Network
            | ProviderErrorKind::RateLimited
            | ProviderErrorKind::BudgetExhausted
            | ProviderErrorKind::Unavailable => (
                FailureCode::ProviderUnavailable,
                format!("{name} could not be reached for too long. Please try again later."),
            ),
            ProviderErrorKind::Authentication | ProviderErrorKind::SessionExpired => (
                FailureCode::ProviderAuthFailed,
                format!("{name} did not accept the escalator's credentials; an administrator needs to check them."),
            ),
            ProviderErrorKind::Configuration => (
                FailureCode::ConfigurationError,
                format!("the connection to {name} is not set up correctly; an administrator needs to check it."),
            ),
            ProviderErrorKind::Protocol => (
                FailureCode::ProviderError,
                format!("{name} gave an answer the escalator could not understand."),
            ),
            ProviderErrorKind::Validation
            | ProviderErrorKind::NotFound
            | ProviderErrorKind::IdempotencyConflict => {
                (FailureCode::ProviderRejected, rejected_cause(p, name))
            }
        },
        // Infrastructure errors are retried, never reported; kept for completeness.
        ProcessError::Infra(_) => (
            FailureCode::ProviderUnavailable,
            "the service is having trouble right now. Please try again later.".to_string(),
        ),
        ProcessError::Rejected(_) => match InboundKind::from_routing_key(failed_event) {
            Some(InboundKind::EscalationRequested) => (
                FailureCode::ConfigurationError,
                "this organisation is not set up for escalations; an administrator needs to check it.".to_string(),
            ),
            Some(InboundKind::WebhookZendesk | InboundKind::SalesforceStream) => (
                FailureCode::ProviderError,
                "the update could not be read, or live chat is no longer set up for it.".to_string(),
            ),
            Some(InboundKind::WebhookSunshine) => (
                FailureCode::NotSupported,
                "this kind of update is not supported yet.".to_string(),
            ),
            _ => (
                FailureCode::NotEscalated,
                "the conversation has not been handed over to the support team.".to_string(),
            ),
        },
    };
    (code, failure_sentence(failed_event, provider, &cause))
}

/// Why the provider refused, in fixed words: the field it named, when it is
/// one a person recognises (the provider's text itself is never copied).
fn rejected_cause(p: &crate::error::ProviderError, name: &str) -> String {
    // The refused fields' names (Zendesk `requester`, Salesforce
    // `SuppliedEmail`...), never the provider's message text.
    let names = p.fields.join(" ").to_ascii_lowercase();
    let detail = names.as_str();
    if detail.contains("email") {
        "the requester's email address is invalid.".to_string()
    } else if detail.contains("requester") || detail.contains("name") {
        "the requester's email address or name is invalid.".to_string()
    } else if detail.contains("subject") {
        "the subject was not accepted.".to_string()
    } else {
        format!("{name} did not accept it.")
    }
}

/// The cause an outbound event is keyed by (its seq in `Store::commit`, its
/// id in `outbound::publish`). `escalation.created` belongs to the
/// conversation, not to the message that asked: a repeat request answers
/// with the identical event (same id, seq and time).
fn event_cause<'a>(message_id: &'a str, event: &OutboundPayload) -> &'a str {
    match event {
        // A live chat that fell back to a Case half-way: a second
        // `escalation.created` of the conversation, with a seq of its own.
        OutboundPayload::EscalationCreated(c)
            if c.mode == crate::contract::Mode::Ticket
                && message_id.starts_with(super::live::STREAM_DEDUPE_PREFIX) =>
        {
            FALLBACK_CAUSE
        }
        OutboundPayload::EscalationCreated(_) => CONVERSATION_CAUSE,
        _ => message_id,
    }
}

/// Cause of the `escalation.created` of a Case made after a live chat started.
pub const FALLBACK_CAUSE: &str = "#fallback";

/// Cause of the events that belong to the conversation (see [`event_cause`]).
pub const CONVERSATION_CAUSE: &str = "#conversation";

/// The end of a message, in the order that makes retries safe: save the
/// record and fix the events' seqs, publish the events (confirmed), then mark
/// the message done (or not, for a dead letter), take it off the parked list
/// and release the lease. Commit and finish are refused (nothing written)
/// when the lease was taken over.
async fn conclude(
    ctx: &Context,
    publisher: &Publisher,
    lease: &Lease,
    m: &Meta,
    provider: ProviderKind,
    effect: effects::Effect,
    done: bool,
) -> Result<(), InfraError> {
    let (org, conv, id) = (
        m.org_id.as_str(),
        m.conversation_id.as_str(),
        m.dedupe_id.as_str(),
    );
    let causes: Vec<&str> = effect.events.iter().map(|p| event_cause(id, p)).collect();
    let keys: Vec<String> = effect
        .events
        .iter()
        .zip(&causes)
        .map(|(p, cause)| format!("{cause}/{}", p.event_type()))
        .collect();
    let seqs = ctx
        .store
        .commit(lease, effect.record.as_ref(), &keys)
        .await?;
    for ((payload, seq), cause) in effect.events.into_iter().zip(seqs).zip(causes) {
        outbound::publish(
            publisher,
            org,
            conv,
            provider,
            cause,
            std::iter::once((payload, seq)),
        )
        .await?;
    }
    ctx.store.finish(lease, id, done).await?;
    Ok(())
}

/// Park the item at the head of its conversation's parked list (later
/// messages of the conversation wait behind it) and send it to the retry queue.
async fn park_as_head(
    ctx: &Context,
    publisher: &Publisher,
    item: &WorkItem,
    meta: Meta,
) -> Result<Fate, InfraError> {
    ctx.store
        .park(
            &meta.org_id,
            &meta.conversation_id,
            &meta.dedupe_id,
            meta.not_before,
        )
        .await?;
    retry_later(ctx, publisher, item, meta).await?;
    Ok(Fate::Parked)
}

/// Send the item to the retry queue (it comes back to its shard after the
/// retry delay) and return when the broker confirmed.
async fn retry_later(
    ctx: &Context,
    publisher: &Publisher,
    item: &WorkItem,
    meta: Meta,
) -> Result<(), InfraError> {
    // Back on its shard when due, and at the latest after one retry delay
    // (the retry queue is FIFO, so a message may wait for the one before it,
    // but never longer than the retry delay).
    let due_in = meta
        .not_before
        .map(|t| (t - Utc::now()).num_milliseconds().max(1) as u128)
        .unwrap_or(u128::MAX);
    let delay = due_in.min(ctx.settings.retry_delay().as_millis()).max(1);
    let props = meta
        .write(item.props.clone())
        .with_expiration(ShortString::from(delay.to_string()));
    publisher
        .publish(RETRY_EXCHANGE, &item.shard_key, &item.body, props)
        .await?;
    crate::observability::metrics::retry("worker");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProviderError;

    fn refused(message: &str, fields: &[&str]) -> ProcessError {
        ProcessError::Provider(
            ProviderError::permanent("salesforce", ProviderErrorKind::Validation, message)
                .with_fields(fields.iter().map(|f| f.to_string()).collect()),
        )
    }

    #[test]
    fn the_widget_sentence_names_the_refused_field_not_the_providers_words() {
        let (code, email) = widget_failure(
            &refused(
                "create case: HTTP 400 INVALID_EMAIL_ADDRESS",
                &["SuppliedEmail"],
            ),
            "escalation.requested",
            ProviderKind::Salesforce,
        );
        assert_eq!(code, FailureCode::ProviderRejected);
        assert!(email.contains("email address is invalid"), "{email}");
        let (_, subject) = widget_failure(
            &refused("add comment: HTTP 422 RecordInvalid", &["subject"]),
            "escalation.requested",
            ProviderKind::Zendesk,
        );
        assert!(subject.contains("subject was not accepted"), "{subject}");
        // Words in the provider's message decide nothing: only field names do.
        let (_, plain) = widget_failure(
            &refused("HTTP 422 the email was odd", &[]),
            "escalation.requested",
            ProviderKind::Zendesk,
        );
        assert!(!plain.contains("email"), "{plain}");
    }
}
