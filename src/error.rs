//! Typed errors shared by providers and the pipeline.
//!
//! Every error says whether retrying can help ([`ErrorClass`]); the pipeline
//! branches on that: transient errors are retried (in process, then via the
//! broker's retry queue), permanent ones are dead-lettered at once.
use std::time::Duration;

/// Whether an error can go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Network trouble, 5xx, 429, lock contention: retry with backoff.
    Transient,
    /// Validation, authentication, configuration, bad input: retrying cannot help.
    Permanent,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// What went wrong at a provider, coarse enough to branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderErrorKind {
    /// Connect, TLS, timeout, connection reset.
    Network,
    /// 429 or a provider-specific rate/limit error.
    RateLimited,
    /// Our own per-org request budget is used up: wait, not a failure.
    BudgetExhausted,
    /// 5xx or a provider "try again" error (e.g. Salesforce UNABLE_TO_LOCK_ROW).
    Unavailable,
    /// Credentials rejected (401/403) or token endpoint refused.
    Authentication,
    /// The access token expired; refresh and retry once.
    SessionExpired,
    /// The provider rejected the request's content (400/422).
    Validation,
    /// The addressed record does not exist (404).
    NotFound,
    /// An idempotency key was reused with a different request body.
    IdempotencyConflict,
    /// The org's configuration cannot work (wrong domain, missing setup).
    Configuration,
    /// An answer we could not understand.
    Protocol,
}

/// Whether a failed request may have taken effect at the provider anyway.
///
/// The pipeline looks an effect up before making it again only when it may
/// have landed, and only once it can no longer land.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Landing {
    /// It did not take effect: a refusal (4xx, 429, 409), a connection that
    /// never opened, a read, our own budget.
    NotLanded,
    /// It may have taken effect, and the provider is done with it: a final
    /// 5xx answer (500, 503).
    MayHaveLanded,
    /// It may still take effect: no final answer came (timeout, broken
    /// connection, a gateway's 502/504 while the backend goes on).
    MayStillLand,
}

/// An error from a provider API call.
///
/// `message` is safe to log and to show: it never contains secrets, message
/// text or customer contact data (nor free text from a provider's error
/// body, which may echo them).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider}: {message}")]
pub struct ProviderError {
    pub provider: &'static str,
    pub class: ErrorClass,
    pub kind: ProviderErrorKind,
    pub status: Option<u16>,
    pub message: String,
    /// The provider asked us to wait this long (Retry-After) or, for limits
    /// without such a header, the configured back-off.
    pub retry_after: Option<Duration>,
    /// Whether the request may have taken effect anyway.
    pub landing: Landing,
    /// Names of the request fields the provider refused (identifiers such as
    /// `requester` or `SuppliedEmail`, never values), for callers that say
    /// which part was wrong.
    pub fields: Vec<String>,
}

impl ProviderError {
    pub fn new(
        provider: &'static str,
        class: ErrorClass,
        kind: ProviderErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self {
            provider,
            class,
            kind,
            status: None,
            message: message.into(),
            retry_after: None,
            landing: Landing::NotLanded,
            fields: Vec::new(),
        }
    }

    /// The refused request fields (names only).
    pub fn with_fields(mut self, fields: Vec<String>) -> Self {
        self.fields = fields;
        self
    }

    pub fn transient(
        provider: &'static str,
        kind: ProviderErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self::new(provider, ErrorClass::Transient, kind, message)
    }

    pub fn permanent(
        provider: &'static str,
        kind: ProviderErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self::new(provider, ErrorClass::Permanent, kind, message)
    }

    /// An error answer of the provider's HTTP API to operation `op`.
    pub fn http(
        provider: &'static str,
        (class, kind): (ErrorClass, ProviderErrorKind),
        op: &str,
        status: u16,
        detail: &str,
        retry_after: Option<Duration>,
    ) -> Self {
        Self::new(
            provider,
            class,
            kind,
            format!("{op}: HTTP {status} {detail}"),
        )
        .with_status(status)
        .with_retry_after(retry_after)
        .with_landing(landing_of_status(status))
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub fn with_landing(mut self, landing: Landing) -> Self {
        self.landing = landing;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// The request may have taken effect: look before making it again.
    pub fn may_have_landed(&self) -> bool {
        self.landing != Landing::NotLanded
    }

    /// The request may still take effect later: wait before looking.
    pub fn may_still_land(&self) -> bool {
        self.landing == Landing::MayStillLand
    }
}

/// What an HTTP error status says about the request's effect: a gateway's
/// 502/504 leaves the backend running; other 5xx are the backend's own
/// final answer; 4xx are refusals.
pub fn landing_of_status(status: u16) -> Landing {
    match status {
        502 | 504 => Landing::MayStillLand,
        500..=599 => Landing::MayHaveLanded,
        _ => Landing::NotLanded,
    }
}

/// Trouble with our own infrastructure (Redis, RabbitMQ) or our own stored
/// state. [`InfraError::recovery`] says what clears it.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("amqp: the broker refused (nacked) a publish to {0}")]
    PublishNacked(String),
    #[error("amqp: no queue is bound for a publish to {0} (is the topology declared?)")]
    Unroutable(String),
    #[error("amqp: the broker did not confirm a publish to {target} within {waited_ms} ms")]
    ConfirmTimeout { target: String, waited_ms: u64 },
    #[error("the connection to RabbitMQ was lost")]
    ConnectionLost,
    #[error("stored state is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "{what} has version {found}, this escalator reads up to version {supported}: upgrade it"
    )]
    NewerRecord {
        what: String,
        found: u32,
        supported: u32,
    },
    /// Another runner took the conversation's lease after this one's expired:
    /// this runner must write nothing more for the message.
    #[error(
        "lease of {org_id}/{conversation_id} (generation {generation}) was taken over by another runner (found {found})"
    )]
    Fenced {
        org_id: String,
        conversation_id: String,
        generation: u64,
        /// What the fencing check found instead (lease holder, generation).
        found: String,
    },
    /// Another runner kept the conversation's lease for longer than we waited.
    #[error(
        "conversation {org_id}/{conversation_id} is still being handled elsewhere after {waited_ms} ms"
    )]
    LeaseBusy {
        org_id: String,
        conversation_id: String,
        waited_ms: u64,
    },
    /// A live conversation's event stream did not connect in time (no AMQP
    /// session yet, or the provider's stream endpoint is unreachable).
    #[error("the conversation's event stream did not connect in time")]
    StreamNotConnected,
}

/// What clears an [`InfraError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// It clears by waiting (Redis down, a full queue, a busy conversation):
    /// retry with a capped backoff.
    Wait,
    /// The AMQP session is broken (closed channel, a confirm that never
    /// comes): tear it down so that the service loop builds a new one.
    RebuildSession,
    /// Run the message again, in its place in the conversation's lane (a
    /// fenced-off runner: the new `begin` waits for whoever holds the
    /// conversation now, then finds the message done, or runs it again with
    /// the effect journal looking up what the first run made). Handing it
    /// back to the broker instead would put it behind the conversation's
    /// later deliveries already in the lane.
    RunAgain,
    /// It can never clear for this message (corrupt or newer-version state,
    /// an unroutable publish): dead-letter it with the reason.
    DeadLetter,
}

impl InfraError {
    pub fn recovery(&self) -> Recovery {
        match self {
            InfraError::Redis(e) if e.kind() == redis::ErrorKind::UnexpectedReturnType => {
                Recovery::DeadLetter
            }
            InfraError::Redis(e) if e.code() == Some("WRONGTYPE") => Recovery::DeadLetter,
            InfraError::Redis(_)
            | InfraError::PublishNacked(_)
            | InfraError::LeaseBusy { .. }
            | InfraError::StreamNotConnected => Recovery::Wait,
            InfraError::Amqp(_)
            | InfraError::ConfirmTimeout { .. }
            | InfraError::ConnectionLost => Recovery::RebuildSession,
            InfraError::Fenced { .. } => Recovery::RunAgain,
            InfraError::Unroutable(_) | InfraError::Corrupt(_) | InfraError::NewerRecord { .. } => {
                Recovery::DeadLetter
            }
        }
    }
}

/// Why handling one inbound message failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Infra(#[from] InfraError),
    /// The message cannot be handled as it is (e.g. a customer message for a
    /// conversation that was never escalated). Permanent.
    #[error("{0}")]
    Rejected(String),
}

impl From<redis::RedisError> for ProcessError {
    fn from(e: redis::RedisError) -> Self {
        ProcessError::Infra(InfraError::Redis(e))
    }
}

impl ProcessError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProcessError::Provider(e) => e.class,
            ProcessError::Infra(_) => ErrorClass::Transient,
            ProcessError::Rejected(_) => ErrorClass::Permanent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infrastructure_errors_say_what_clears_them() {
        let dead = [
            InfraError::Corrupt("record".into()),
            InfraError::NewerRecord {
                what: "record".into(),
                found: 2,
                supported: 1,
            },
            InfraError::Unroutable("escalator.outbound".into()),
        ];
        for e in dead {
            assert_eq!(e.recovery(), Recovery::DeadLetter, "{e}");
        }
        let rebuild = [
            InfraError::ConnectionLost,
            InfraError::ConfirmTimeout {
                target: "escalator.retry".into(),
                waited_ms: 15_000,
            },
            InfraError::Amqp(lapin::Error::from(lapin::ErrorKind::ChannelsLimitReached)),
        ];
        for e in rebuild {
            assert_eq!(e.recovery(), Recovery::RebuildSession, "{e}");
        }
        let fenced = InfraError::Fenced {
            org_id: "acme".into(),
            conversation_id: "c1".into(),
            generation: 3,
            found: "lease generation 4 held by w2".into(),
        };
        assert_eq!(fenced.recovery(), Recovery::RunAgain);
        let wait = [
            InfraError::PublishNacked("escalator.work".into()),
            InfraError::LeaseBusy {
                org_id: "acme".into(),
                conversation_id: "c1".into(),
                waited_ms: 20_000,
            },
            InfraError::Redis(redis::RedisError::from(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))),
        ];
        for e in wait {
            assert_eq!(e.recovery(), Recovery::Wait, "{e}");
        }
    }
}
