//! A vhost and a Redis key prefix of the benchmark's own.
use crate::settings::Settings;
use crate::store::Store;
use serde_json::json;
use std::time::Duration;

/// The RabbitMQ management API (vhosts and permissions), unless
/// `ESCALATOR_MANAGEMENT_URL` names another.
pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

fn management_url() -> String {
    std::env::var("ESCALATOR_MANAGEMENT_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .map_or_else(
            || MANAGEMENT_URL.to_string(),
            |u| u.trim_end_matches('/').to_string(),
        )
}

pub struct Isolation {
    /// The vhost made for this run; `None` when the default vhost is used.
    vhost: Option<String>,
    /// Why the default vhost is used, when it is.
    fallback: Option<String>,
    pub amqp_url: String,
    pub key_prefix: String,
    management: Option<Management>,
}

struct Management {
    base: String,
    http: reqwest::Client,
    user: String,
    password: String,
}

impl Isolation {
    /// Create the vhost (or fall back to "/" with a printed note) and choose the key prefix.
    pub async fn create(settings: &Settings) -> Result<Isolation, String> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let key_prefix = format!("escalator-bench:{id}");
        let vhost = format!("escalator-bench-{id}");
        let (user, password) = credentials(&settings.amqp_url);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the management API: {e}"))?;
        let management = Management {
            base: management_url(),
            http,
            user,
            password,
        };
        match management.create_vhost(&vhost).await {
            Ok(()) => Ok(Isolation {
                amqp_url: with_vhost(&settings.amqp_url, &vhost)?,
                vhost: Some(vhost),
                fallback: None,
                key_prefix,
                management: Some(management),
            }),
            Err(why) => {
                println!("note: {why}");
                println!(
                    "note: falling back to the default vhost \"/\"; the escalator topology is declared there and \
                     stays, and a worker already consuming \"/\" would take part of this run's messages"
                );
                Ok(Isolation {
                    amqp_url: with_vhost(&settings.amqp_url, "/")?,
                    vhost: None,
                    fallback: Some(why),
                    key_prefix,
                    management: None,
                })
            }
        }
    }

    pub fn vhost_note(&self) -> String {
        match (&self.vhost, &self.fallback) {
            (Some(v), _) => format!("vhost {v}, made for this run"),
            (None, Some(_)) => "default vhost \"/\": the management API was not usable".into(),
            (None, None) => "default vhost \"/\"".into(),
        }
    }

    /// Delete the vhost (with everything in it) and the Redis keys of the prefix.
    pub async fn remove(&self, settings: &Settings) -> Result<(), String> {
        let mut problems = Vec::new();
        if let (Some(vhost), Some(m)) = (&self.vhost, &self.management)
            && let Err(e) = m.delete_vhost(vhost).await
        {
            problems.push(e);
        }
        match Store::connect(
            &settings.redis_url,
            &self.key_prefix,
            Duration::from_secs(60),
        )
        .await
        {
            Ok(store) => {
                if let Err(e) = store.delete_all().await {
                    problems.push(format!(
                        "cannot delete the Redis keys {}:*: {e}",
                        self.key_prefix
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "cannot reach Redis at {} to delete the keys {}:*: {e}",
                settings.redis_url_redacted(),
                self.key_prefix
            )),
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Management {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn create_vhost(&self, vhost: &str) -> Result<(), String> {
        let path = format!("/api/vhosts/{}", encode(vhost));
        let resp = self
            .http
            .put(self.url(&path))
            .basic_auth(&self.user, Some(&self.password))
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "the RabbitMQ management API at {} is not reachable ({e})",
                    self.base
                )
            })?;
        if !resp.status().is_success() {
            return Err(format!(
                "the RabbitMQ management API at {} refused to create vhost {vhost}: HTTP {}",
                self.base,
                resp.status()
            ));
        }
        let path = format!("/api/permissions/{}/{}", encode(vhost), encode(&self.user));
        let granted = self
            .http
            .put(self.url(&path))
            .basic_auth(&self.user, Some(&self.password))
            .json(&json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .send()
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HTTP {}", r.status()))
                }
            });
        if let Err(e) = granted {
            let _ = self.delete_vhost(vhost).await;
            return Err(format!(
                "cannot grant {} permissions on vhost {vhost}: {e}",
                self.user
            ));
        }
        Ok(())
    }

    async fn delete_vhost(&self, vhost: &str) -> Result<(), String> {
        let path = format!("/api/vhosts/{}", encode(vhost));
        let resp = self
            .http
            .delete(self.url(&path))
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| format!("cannot delete vhost {vhost}: {e}"))?;
        if resp.status().is_success() || resp.status() == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(format!(
                "cannot delete vhost {vhost}: HTTP {}",
                resp.status()
            ))
        }
    }
}

/// Percent-encode everything but unreserved characters (RFC 3986).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The user and password of an AMQP URL (guest/guest when it names none).
fn credentials(url: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (decode(user), decode(password))
        }
        None => ("guest".into(), "guest".into()),
    }
}

/// `url` with its vhost (path) replaced by `vhost`; the query is kept.
fn with_vhost(url: &str, vhost: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!(
            "the AMQP URL {} has no scheme",
            crate::settings::redact_url(url)
        )
    })?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    Ok(format!("{scheme}://{authority}/{}{query}", encode(vhost)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_vhost_of_an_amqp_url() {
        assert_eq!(
            with_vhost("amqp://guest:guest@127.0.0.1:5672/%2f", "escalator-bench-1").as_deref(),
            Ok("amqp://guest:guest@127.0.0.1:5672/escalator-bench-1")
        );
        assert_eq!(
            with_vhost("amqp://h:5672?heartbeat=10", "/").as_deref(),
            Ok("amqp://h:5672/%2F?heartbeat=10")
        );
        assert!(with_vhost("nonsense", "v").is_err());
    }

    #[test]
    fn reads_credentials() {
        assert_eq!(
            credentials("amqp://u%40x:p%3Aw@h/%2f"),
            ("u@x".into(), "p:w".into())
        );
        assert_eq!(
            credentials("amqp://h:5672/%2f"),
            ("guest".into(), "guest".into())
        );
    }
}
