//! OAuth 2.0 client-credentials tokens, shared by every replica through Redis.
//!
//! Keys (prefix `P`, org `O`):
//!
//! | key | content | TTL |
//! |---|---|---|
//! | `P:sf:token:O:F` | JSON `{access_token, instance_url, issued_at}` | 90 min (safety net) |
//! | `P:sf:token:O:F:lock` | random owner id of the replica refreshing the token | 20 s |
//!
//! `F` fingerprints the token URL and client id (first 12 hex digits of SHA-256).
//!
//! Salesforce sends no `expires_in`: a token lives until the org's session
//! timeout. It is used until a REST call answers 401, then invalidated (only
//! if the cache still holds that very token) and fetched again. One refresh
//! runs at a time per org: a per-process mutex keeps the tasks of one replica
//! from stampeding, and a Redis lock (`SET NX PX`, released by a
//! compare-and-delete script) does the same across replicas; the others poll
//! the token key and take the fresh token.
use super::errors::{PROVIDER, token_error};
use crate::config::SalesforceConfig;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::provider::http::{retry_after, transport_error};
use crate::secret::Secret;
use crate::store::RedisConnection;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, Instant};

/// Safety-net lifetime of a cached token (the default session timeout is 2 h).
const TOKEN_TTL: Duration = Duration::from_secs(90 * 60);
/// How long the refresh lock is held at most (a crashed holder frees it then).
const LOCK_TTL: Duration = Duration::from_secs(20);
/// Timeout of one token request; shorter than the lock.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a task waits for another replica's refresh.
const LOCK_WAIT: Duration = Duration::from_secs(25);
/// Poll interval of the token key while another replica refreshes.
const POLL: Duration = Duration::from_millis(50);

const RELEASE_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

const INVALIDATE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, t = pcall(cjson.decode, v)
if (not ok) or type(t) ~= 'table' or t['access_token'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// An access token and the instance it is valid for. `Debug` never shows the token.
#[derive(Clone)]
pub(super) struct AccessToken {
    pub token: Secret,
    /// `https://acme.my.salesforce.com`, no trailing slash.
    pub instance_url: String,
}

impl AccessToken {
    fn same(&self, other: &AccessToken) -> bool {
        self.token.expose() == other.token.expose()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("instance_url", &self.instance_url)
            .finish()
    }
}

/// The cached form (also what the token endpoint answers, minus extras).
#[derive(Serialize, Deserialize)]
struct Stored {
    access_token: String,
    instance_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issued_at: Option<String>,
}

/// Token source of one org.
pub(super) struct TokenSource {
    http: reqwest::Client,
    org_id: String,
    token_url: String,
    client_id: String,
    client_secret: Secret,
    basic: bool,
    conn: RedisConnection,
    key: String,
    lock_key: String,
    local: tokio::sync::Mutex<()>,
}

fn redis_error(what: &str, e: &redis::RedisError) -> ProviderError {
    // Redis errors never carry values of ours (the token) in their text.
    ProviderError::transient(
        PROVIDER,
        ProviderErrorKind::Unavailable,
        format!("token cache: {what}: {e}"),
    )
}

/// RFC 6749 2.3.1: client id and secret are form-encoded before HTTP Basic.
pub(crate) fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl TokenSource {
    pub fn new(
        http: reqwest::Client,
        org_id: &str,
        config: &SalesforceConfig,
        conn: RedisConnection,
        prefix: &str,
    ) -> Self {
        // The key names the login endpoint and client too: after a config
        // change (another My Domain, another app) a cached token of the old
        // org is never used against the new one.
        let fingerprint = {
            use sha2::{Digest, Sha256};
            let digest = Sha256::new()
                .chain_update(config.token_url())
                .chain_update([0u8])
                .chain_update(&config.client_id)
                .finalize();
            hex::encode(&digest[..6])
        };
        let key = format!("{prefix}:sf:token:{org_id}:{fingerprint}");
        TokenSource {
            http,
            org_id: org_id.to_string(),
            token_url: config.token_url(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            basic: config.token_auth_basic,
            conn,
            lock_key: format!("{key}:lock"),
            key,
            local: tokio::sync::Mutex::new(()),
        }
    }

    /// The cached token, or a fresh one.
    pub async fn current(&self) -> Result<AccessToken, ProviderError> {
        match self.cached().await? {
            Some(t) => Ok(t),
            None => self.refresh(None).await,
        }
    }

    /// A token other than `failed` (which Salesforce refused): drops `failed`
    /// from the cache if it is still there, then takes the token another task
    /// or replica fetched meanwhile, or fetches one (one refresh at a time).
    pub async fn refresh(
        &self,
        failed: Option<&AccessToken>,
    ) -> Result<AccessToken, ProviderError> {
        if let Some(f) = failed {
            self.invalidate(f).await?;
        }
        let usable = |t: &AccessToken| failed.is_none_or(|f| !f.same(t));
        let _local = self.local.lock().await;
        if let Some(t) = self.cached().await?.filter(|t| usable(t)) {
            return Ok(t);
        }
        let owner = uuid::Uuid::new_v4().to_string();
        let deadline = Instant::now() + LOCK_WAIT;
        let mut waited = false;
        loop {
            if self.try_lock(&owner).await? {
                // Another replica may have stored a token between our look and the lock.
                let result = match self.cached().await {
                    Ok(Some(t)) if usable(&t) => Ok(t),
                    Ok(_) => self.fetch_and_store().await,
                    Err(e) => Err(e),
                };
                self.unlock(&owner).await;
                return result;
            }
            if !waited {
                tracing::debug!(org_id = %self.org_id, "salesforce token refresh running elsewhere, waiting for it");
                waited = true;
            }
            tokio::time::sleep(POLL).await;
            if let Some(t) = self.cached().await?.filter(|t| usable(t)) {
                return Ok(t);
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::transient(
                    PROVIDER,
                    ProviderErrorKind::Unavailable,
                    "another replica's token refresh did not finish in time",
                ));
            }
        }
    }

    async fn cached(&self) -> Result<Option<AccessToken>, ProviderError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c
            .get(&self.key)
            .await
            .map_err(|e| redis_error("read", &e))?;
        let Some(raw) = raw else { return Ok(None) };
        match serde_json::from_str::<Stored>(&raw) {
            Ok(s) if !s.access_token.is_empty() => Ok(Some(AccessToken {
                token: Secret::new(s.access_token),
                instance_url: s.instance_url,
            })),
            _ => {
                tracing::warn!(org_id = %self.org_id, "cached salesforce token is unreadable, fetching a new one");
                Ok(None)
            }
        }
    }

    async fn invalidate(&self, failed: &AccessToken) -> Result<(), ProviderError> {
        let mut c = self.conn.clone();
        let deleted: i64 = crate::redis_conn::script(INVALIDATE)
            .key(&self.key)
            .arg(failed.token.expose())
            .invoke_async(&mut c)
            .await
            .map_err(|e| redis_error("invalidate", &e))?;
        tracing::debug!(org_id = %self.org_id, invalidated = deleted == 1, "salesforce token refused");
        Ok(())
    }

    async fn try_lock(&self, owner: &str) -> Result<bool, ProviderError> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.lock_key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(|e| redis_error("lock", &e))?;
        Ok(set.is_some())
    }

    async fn unlock(&self, owner: &str) {
        let mut c = self.conn.clone();
        let r: Result<i64, _> = crate::redis_conn::script(RELEASE_LOCK)
            .key(&self.lock_key)
            .arg(owner)
            .invoke_async(&mut c)
            .await;
        if let Err(e) = r {
            // The lock expires by itself.
            tracing::warn!(org_id = %self.org_id, error = %e, "cannot release the salesforce token lock");
        }
    }

    async fn fetch_and_store(&self) -> Result<AccessToken, ProviderError> {
        let stored = self.fetch().await?;
        crate::observability::metrics::token_refresh(&self.org_id);
        let json = serde_json::to_string(&stored).map_err(|e| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("cannot encode the token: {e}"),
            )
        })?;
        let mut c = self.conn.clone();
        let r: Result<(), _> = c.set_ex(&self.key, json, TOKEN_TTL.as_secs()).await;
        if let Err(e) = r {
            // The token is still good for this call; the next one fetches again.
            tracing::warn!(org_id = %self.org_id, error = %e, "cannot cache the salesforce token");
        }
        Ok(AccessToken {
            token: Secret::new(stored.access_token),
            instance_url: stored.instance_url,
        })
    }

    /// One client-credentials grant.
    async fn fetch(&self) -> Result<Stored, ProviderError> {
        let mut form = vec![("grant_type", "client_credentials")];
        let mut rb = self
            .http
            .post(&self.token_url)
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .header(reqwest::header::ACCEPT, "application/json");
        if self.basic {
            rb = rb.basic_auth(
                form_encode(&self.client_id),
                Some(form_encode(self.client_secret.expose())),
            );
        } else {
            form.push(("client_id", self.client_id.as_str()));
            form.push(("client_secret", self.client_secret.expose()));
        }
        let started = Instant::now();
        let sent = rb.form(&form).send().await;
        let answered = sent.as_ref().ok().map(|r| r.status().as_u16());
        crate::observability::metrics::provider_request(PROVIDER, "token", answered, started);
        let resp = sent.map_err(|e| transport_error(PROVIDER, &e))?;
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        let body = resp
            .text()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        if !(200..300).contains(&status) {
            let err = token_error(status, ra, &body);
            tracing::warn!(
                org_id = %self.org_id,
                status,
                error_class = err.class.as_str(),
                error = %err,
                "salesforce token request failed"
            );
            return Err(err);
        }
        let stored: Stored = serde_json::from_str(&body).map_err(|_| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Configuration,
                "the token endpoint answered without an access token and instance_url: check my_domain (e.g. acme.my.salesforce.com)",
            )
        })?;
        let instance_url = stored.instance_url.trim().trim_end_matches('/').to_string();
        if stored.access_token.is_empty() || reqwest::Url::parse(&instance_url).is_err() {
            return Err(ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                "the token endpoint answered an empty access token or an invalid instance_url",
            ));
        }
        tracing::info!(
            org_id = %self.org_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "salesforce access token fetched"
        );
        Ok(Stored {
            instance_url,
            ..stored
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let t = AccessToken {
            token: Secret::new("00Dxx!secret-token"),
            instance_url: "https://acme.my.salesforce.com".into(),
        };
        let d = format!("{t:?}");
        assert!(!d.contains("secret-token"), "{d}");
        assert!(d.contains("acme.my.salesforce.com"));
    }

    #[test]
    fn form_encodes_credentials() {
        assert_eq!(form_encode("abc.DEF_1-~"), "abc.DEF_1-~");
        assert_eq!(form_encode("a b:c/é"), "a+b%3Ac%2F%C3%A9");
    }
}
