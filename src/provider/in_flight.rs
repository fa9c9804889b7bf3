//! Send markers: whether an earlier try of an effect (a customer message's
//! comment) may have reached the provider, and whether it may still be on
//! its way there.
//!
//! `P:conv:{O:C}:sent:{what}` (prefix `P`, org `O`, conversation `C`; the
//! hash tag matches the pipeline's conversation keys) holds
//! `first_ms:last_ms`: when the first send whose outcome is unknown began,
//! and when the latest one began (0 once its answer came). Times are the
//! Redis server's clock, so workers need not agree on time. The marker is
//! written before a send, removed when the send was refused (nothing
//! landed), and kept after a failure that may have landed, so that the next
//! try, in this process or another, looks before it sends again, and looks
//! only once the latest send can no longer land.
use crate::contract::ProviderKind;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::store::RedisConnection;
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::sync::LazyLock;
use std::time::Duration;

/// Markers live this long: longer than every retry round, and a week of
/// dead-letter replays.
const MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long after a request began it may still land: twice the HTTP timeout
/// (we stopped waiting after one; the provider is given as long again).
pub fn settle_time(http_timeout: Duration) -> Duration {
    http_timeout.saturating_mul(2)
}

/// KEYS[1] marker. ARGV: settle (ms), TTL (ms).
/// Returns {0, wait_ms} while the latest send may still land; {1, -1} when
/// there was no marker (one is written: this send may go); {2, first_ms}
/// when an earlier send may have landed (nothing written: look first).
const BEFORE_SEND: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], string.format('%d:%d', now, now), 'PX', ARGV[2])
  return {1, -1}
end
local f, l = string.match(v, '^(%d+):(%d+)$')
f = tonumber(f) or 0
l = tonumber(l) or 0
local settle = tonumber(ARGV[1])
if l > 0 and l + settle > now then
  return {0, l + settle - now}
end
return {2, f}
"#;

/// KEYS[1] marker. ARGV: TTL (ms), mode ("send" | "answered").
/// Keeps the first time; the latest becomes now ("send") or 0 ("answered").
const UPDATE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('GET', KEYS[1])
local f = now
if v then
  f = tonumber(string.match(v, '^(%d+):')) or 0
end
local l = now
if ARGV[2] == 'answered' then l = 0 end
redis.call('SET', KEYS[1], string.format('%d:%d', f, l), 'PX', ARGV[1])
return 1
"#;

static BEFORE_SEND_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| crate::redis_conn::script(BEFORE_SEND));
static UPDATE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| crate::redis_conn::script(UPDATE));

/// What the marker says before a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Nothing was sent before: send (the marker is written).
    Fresh,
    /// An earlier send, begun no earlier than this, may have landed: look
    /// first, then [`SendMarkers::sending`] before sending again.
    Earlier(DateTime<Utc>),
    /// The latest send may still land: wait this long, then look.
    Wait(Duration),
}

/// The send markers of one provider.
pub struct SendMarkers {
    conn: RedisConnection,
    prefix: String,
    provider: &'static str,
    settle: Duration,
}

impl SendMarkers {
    pub fn new(store: &Store, provider: ProviderKind, settle: Duration) -> SendMarkers {
        SendMarkers {
            conn: store.connection(),
            prefix: store.prefix().to_string(),
            provider: provider.as_str(),
            settle,
        }
    }

    /// How long after a send began it may still land.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    fn key(&self, org: &str, conv: &str, what: &str) -> String {
        format!("{}:conv:{{{org}:{conv}}}:sent:{what}", self.prefix)
    }

    fn redis_error(&self, e: &redis::RedisError) -> ProviderError {
        ProviderError::transient(
            self.provider,
            ProviderErrorKind::Unavailable,
            format!("send marker: redis: {e}"),
        )
    }

    /// Check (and, when nothing was sent before, write) the marker.
    pub async fn before_send(
        &self,
        org: &str,
        conv: &str,
        what: &str,
    ) -> Result<Gate, ProviderError> {
        let mut c = self.conn.clone();
        let (state, value): (i64, i64) = BEFORE_SEND_SCRIPT
            .key(self.key(org, conv, what))
            .arg(self.settle.as_millis() as u64)
            .arg(MARKER_TTL.as_millis() as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.redis_error(&e))?;
        Ok(match state {
            0 => Gate::Wait(Duration::from_millis(value.max(0) as u64)),
            1 => Gate::Fresh,
            _ => Gate::Earlier(DateTime::from_timestamp_millis(value).unwrap_or_default()),
        })
    }

    /// A send begins now (after a look-up found nothing).
    pub async fn sending(&self, org: &str, conv: &str, what: &str) -> Result<(), ProviderError> {
        self.update(org, conv, what, "send").await
    }

    /// The latest send got a final answer that leaves its effect unknown
    /// (a 5xx): it can no longer land, but may have.
    pub async fn answered(&self, org: &str, conv: &str, what: &str) -> Result<(), ProviderError> {
        self.update(org, conv, what, "answered").await
    }

    /// The latest send was refused: nothing of it (nor of earlier sends, which
    /// were looked up) is at the provider.
    pub async fn not_landed(&self, org: &str, conv: &str, what: &str) -> Result<(), ProviderError> {
        let mut c = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(org, conv, what))
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| self.redis_error(&e))
    }

    async fn update(
        &self,
        org: &str,
        conv: &str,
        what: &str,
        mode: &str,
    ) -> Result<(), ProviderError> {
        let mut c = self.conn.clone();
        UPDATE_SCRIPT
            .key(self.key(org, conv, what))
            .arg(MARKER_TTL.as_millis() as u64)
            .arg(mode)
            .invoke_async::<()>(&mut c)
            .await
            .map_err(|e| self.redis_error(&e))
    }
}
