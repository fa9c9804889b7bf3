//! A per-org request budget shared by every replica through Redis, so that a
//! provider's plan limit (e.g. Zendesk's requests per minute) holds across
//! the deployment. Generic cell rate algorithm: one Redis key per budget
//! holds the "theoretical arrival time"; the server's clock is used, so
//! replicas need not agree on time.
//!
//! Short waits happen in process; a longer one is returned as
//! [`ProviderErrorKind::BudgetExhausted`], which the pipeline answers by
//! parking the message in the retry queue (not counted as a failure), so a
//! busy org's backlog never holds the worker's concurrency slots that other
//! orgs need.
use crate::error::{ProviderError, ProviderErrorKind};
use crate::store::RedisConnection;
use std::sync::LazyLock;
use std::time::Duration;

/// Waits up to this long are taken in process.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(2);

/// KEYS[1] budget key. ARGV: emission interval (µs), burst tolerance (µs).
/// Returns 0 when a request may go now (and books it), else µs to wait.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return wait end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return 0
"#;

static TAKE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(TAKE));

pub struct RateBudget {
    provider: &'static str,
    conn: RedisConnection,
    key: String,
    interval_us: u64,
    tolerance_us: u64,
}

impl RateBudget {
    /// `per_minute` requests per minute, in bursts of up to a tenth of that.
    pub fn per_minute(
        provider: &'static str,
        conn: RedisConnection,
        key: String,
        per_minute: u32,
    ) -> RateBudget {
        let per_minute = u64::from(per_minute.max(1));
        let interval_us = 60_000_000 / per_minute;
        let burst = (per_minute / 10).max(1);
        RateBudget {
            provider,
            conn,
            key,
            interval_us,
            tolerance_us: interval_us * (burst - 1),
        }
    }

    /// Take one request from the budget, waiting briefly if needed.
    pub async fn take(&self) -> Result<(), ProviderError> {
        loop {
            let mut c = self.conn.clone();
            let wait_us: u64 = TAKE_SCRIPT
                .key(&self.key)
                .arg(self.interval_us)
                .arg(self.tolerance_us)
                .invoke_async(&mut c)
                .await
                .map_err(|e| {
                    ProviderError::transient(
                        self.provider,
                        ProviderErrorKind::Unavailable,
                        format!("request budget unavailable (redis: {e})"),
                    )
                })?;
            if wait_us == 0 {
                return Ok(());
            }
            let wait = Duration::from_micros(wait_us);
            if wait > MAX_INLINE_WAIT {
                return Err(ProviderError::transient(
                    self.provider,
                    ProviderErrorKind::BudgetExhausted,
                    "the org's request budget is used up for now",
                )
                .with_retry_after(Some(wait)));
            }
            tokio::time::sleep(wait).await;
        }
    }
}
