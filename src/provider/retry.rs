//! In-process retries of provider calls: exponential backoff with jitter
//! (backon), honouring Retry-After when it is short enough to wait for here.
//! Longer waits and exhausted attempts go back to the pipeline, which retries
//! through the broker's retry queue instead of holding a worker slot.
use crate::error::{ProviderError, ProviderErrorKind};
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts in process (>= 1).
    pub attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Retry-After longer than this is not waited for in process.
    pub max_inline_wait: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        RetryPolicy {
            attempts: s.inline_attempts.max(1),
            min_delay: Duration::from_millis(s.backoff_min_ms),
            max_delay: Duration::from_millis(s.backoff_max_ms.max(s.backoff_min_ms)),
            max_inline_wait: s.max_inline_wait(),
        }
    }

    /// Run `op` until it succeeds, fails permanently, asks for a wait longer
    /// than `max_inline_wait`, or runs out of attempts. Returns the result and
    /// the number of attempts made.
    pub async fn run<T, F, Fut>(&self, what: &str, op: F) -> (Result<T, ProviderError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.attempts.saturating_sub(1) as usize);
        let max_wait = self.max_inline_wait;
        let mut op = op;
        let result = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            op()
        })
        .retry(backoff)
        .when(|e: &ProviderError| {
            e.is_transient()
                && e.kind != ProviderErrorKind::BudgetExhausted
                && e.retry_after.is_none_or(|d| d <= max_wait)
        })
        .adjust(|e: &ProviderError, next: Option<Duration>| {
            // Keep backon's count of attempts; wait at least what the provider asked.
            next.map(|d| {
                e.retry_after
                    .map_or(d, |ra| ra.max(d.min(ra + Duration::from_millis(250))))
            })
        })
        .notify(|e: &ProviderError, wait: Duration| {
            tracing::warn!(
                operation = what,
                error_class = e.class.as_str(),
                status = e.status,
                wait_ms = wait.as_millis() as u64,
                error = %e,
                "provider call failed, retrying"
            );
        })
        .await;
        (result, attempts.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_inline_wait: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let mut n = 0;
        let (r, attempts) = policy()
            .run("t", || {
                n += 1;
                let fail = n < 3;
                async move {
                    if fail {
                        Err(ProviderError::transient(
                            "x",
                            ProviderErrorKind::Unavailable,
                            "503",
                        ))
                    } else {
                        Ok(7)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let (r, attempts) = policy()
            .run("t", || async {
                Err::<(), _>(ProviderError::permanent(
                    "x",
                    ProviderErrorKind::Validation,
                    "422",
                ))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn long_retry_after_is_left_to_the_broker() {
        let (r, attempts) = policy()
            .run("t", || async {
                Err::<(), _>(
                    ProviderError::transient("x", ProviderErrorKind::RateLimited, "429")
                        .with_retry_after(Some(Duration::from_secs(60))),
                )
            })
            .await;
        assert_eq!(r.unwrap_err().retry_after, Some(Duration::from_secs(60)));
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn gives_up_after_the_configured_attempts() {
        let (r, attempts) = policy()
            .run("t", || async {
                Err::<(), _>(ProviderError::transient(
                    "x",
                    ProviderErrorKind::Network,
                    "down",
                ))
            })
            .await;
        assert!(r.unwrap_err().is_transient());
        assert_eq!(attempts, 4);
    }
}
