//! Handling of one work item: dedupe, per-conversation order across retries,
//! the effect, then outbound events, and the item's fate (done, parked in the
//! retry queue, or dead-lettered).
use super::dead_letter::{self, Verdict};
use super::effects;
use super::meta::Meta;
use super::{Context, outbound};
use crate::amqp::Publisher;
use crate::contract::{
    EscalationFailed, FailureCode, InboundEvent, InboundKind, OutboundPayload, ProviderKind,
    failure_sentence,
};
use crate::error::{ErrorClass, InfraError, ProcessError, ProviderErrorKind};
use crate::store::Admission;
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

/// Handle one item. `Err` means our infrastructure failed: nothing was
/// decided, the caller must not ack and should try again later.
pub async fn handle(
    ctx: &Context,
    publisher: &Publisher,
    item: &WorkItem,
) -> Result<Fate, InfraError> {
    let m = &item.meta;
    let (org, conv, id) = (
        m.org_id.as_str(),
        m.conversation_id.as_str(),
        m.dedupe_id.as_str(),
    );
    let begin = ctx.store.begin(org, conv, id).await?;
    if begin.done {
        tracing::info!("duplicate message, already handled");
        return Ok(Fate::Duplicate);
    }
    match begin.admission {
        Admission::Proceed | Admission::Head if m.not_before.is_some_and(|t| t > Utc::now()) => {
            // Back from the retry queue before its backoff is over: another round.
            return park_as_head(ctx, publisher, item, m.clone()).await;
        }
        Admission::Proceed | Admission::Head => {}
        Admission::Wait => {
            tracing::info!(
                "an earlier message of this conversation waits for a retry: queuing behind it"
            );
            retry_later(ctx, publisher, item, m.clone()).await?;
            return Ok(Fate::Parked);
        }
    }

    // The provider the conversation went to, else the one this event asks for.
    let provider = begin
        .record
        .as_ref()
        .map(|r| r.provider)
        .or_else(|| effects::provider_of(ctx, org, requested_provider(&item.event)));
    let result = match &item.event {
        InboundEvent::EscalationRequested(e) => {
            effects::escalate(ctx, e, begin.record.as_ref()).await
        }
        InboundEvent::CustomerMessage(msg) => {
            effects::relay_customer_message(ctx, msg, begin.record.as_ref()).await
        }
        // A ticket has no typing indicator and nothing to close: accepted, no effect.
        InboundEvent::CustomerTyping(_) | InboundEvent::CustomerEnded(_) => {
            Ok(effects::Effect::default())
        }
        InboundEvent::WebhookZendesk(_) | InboundEvent::WebhookSunshine(_) => Err(
            ProcessError::Rejected("webhooks are not handled by this version".into()),
        ),
    };
    let provider = provider.unwrap_or(ProviderKind::Zendesk);

    match result {
        Ok(effect) => {
            conclude(ctx, publisher, m, provider, effect, true).await?;
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
            conclude(ctx, publisher, m, provider, effect, false).await?;
            Ok(Fate::DeadLettered)
        }
    }
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
            Some(InboundKind::WebhookZendesk | InboundKind::WebhookSunshine) => (
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
    let detail = p.message.to_ascii_lowercase();
    if detail.contains("email") {
        "the requester's email address is invalid.".to_string()
    } else if detail.contains("subject") {
        "the subject was not accepted.".to_string()
    } else if detail.contains("requester") {
        "the requester's email address or name is invalid.".to_string()
    } else {
        format!("{name} did not accept it.")
    }
}

/// The end of a message, in the order that makes retries safe: save the
/// record and fix the events' seqs, publish the events (confirmed), then mark
/// the message done (or not, for a dead letter) and take it off the parked list.
async fn conclude(
    ctx: &Context,
    publisher: &Publisher,
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
    let types: Vec<&str> = effect.events.iter().map(|p| p.event_type()).collect();
    let seqs = ctx
        .store
        .commit(org, conv, id, effect.record.as_ref(), &types)
        .await?;
    outbound::publish(
        publisher,
        org,
        conv,
        provider,
        id,
        effect.events.into_iter().zip(seqs),
    )
    .await?;
    ctx.store.finish(org, conv, id, done).await?;
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
        .park(&meta.org_id, &meta.conversation_id, &meta.dedupe_id)
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
        .await
}
