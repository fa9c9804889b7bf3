//! A scratch space on a shared broker and Redis: a vhost and a key prefix of
//! its own, removed afterwards. `escalator demo` runs in one, and so does
//! every test (tests/common).
//!
//! The vhost is made with the RabbitMQ management API when it answers (fast),
//! else with `rabbitmqctl` when it is on the PATH (the management plugin is
//! off on a fresh RabbitMQ install), else the caller is told how to give it one.
use crate::store::Store;
use serde_json::json;
use std::time::Duration;

/// Where the management API is unless `ESCALATOR_MANAGEMENT_URL` says otherwise.
pub const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";

/// How vhosts are made and removed.
#[derive(Clone)]
pub enum VhostAdmin {
    /// The management plugin's HTTP API, with the AMQP URL's credentials.
    Management {
        base: String,
        http: reqwest::Client,
        user: String,
        password: String,
    },
    /// `rabbitmqctl` (same machine as the broker, or its Erlang cookie).
    Rabbitmqctl { user: String },
}

impl VhostAdmin {
    pub fn management(base: &str, amqp_url: &str) -> Result<VhostAdmin, String> {
        let (user, password) = credentials(amqp_url);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the management API: {e}"))?;
        Ok(VhostAdmin::Management {
            base: base.trim_end_matches('/').to_string(),
            http,
            user,
            password,
        })
    }

    pub fn rabbitmqctl(amqp_url: &str) -> VhostAdmin {
        VhostAdmin::Rabbitmqctl {
            user: credentials(amqp_url).0,
        }
    }

    /// The management API when it answers, else `rabbitmqctl` when it runs,
    /// else an error that says how to provide either.
    pub async fn detect(management_url: &str, amqp_url: &str) -> Result<VhostAdmin, String> {
        let management = VhostAdmin::management(management_url, amqp_url)?;
        let api_error = match management.reachable().await {
            Ok(()) => return Ok(management),
            Err(e) => e,
        };
        let ctl = VhostAdmin::rabbitmqctl(amqp_url);
        match ctl.reachable().await {
            Ok(()) => Ok(ctl),
            Err(ctl_error) => Err(format!(
                "cannot create a scratch vhost: {api_error}, and {ctl_error}. Either enable the \
                 management plugin (rabbitmq-plugins enable rabbitmq_management) or set \
                 ESCALATOR_MANAGEMENT_URL to where it listens, or run this where rabbitmqctl \
                 can reach the broker (on the PATH, with the broker's Erlang cookie)"
            )),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            VhostAdmin::Management { .. } => "management API",
            VhostAdmin::Rabbitmqctl { .. } => "rabbitmqctl",
        }
    }

    async fn reachable(&self) -> Result<(), String> {
        match self {
            VhostAdmin::Management {
                base,
                http,
                user,
                password,
            } => {
                let resp = http
                    .get(format!("{base}/api/overview"))
                    .basic_auth(user, Some(password))
                    .send()
                    .await
                    .map_err(|e| {
                        format!("the RabbitMQ management API at {base} is not reachable ({e})")
                    })?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "the RabbitMQ management API at {base} answered HTTP {}",
                        resp.status()
                    ))
                }
            }
            VhostAdmin::Rabbitmqctl { .. } => rabbitmqctl(&["list_vhosts", "--quiet"]).await,
        }
    }

    /// Create `vhost` and give the user every permission on it.
    pub async fn create_vhost(&self, vhost: &str) -> Result<(), String> {
        match self {
            VhostAdmin::Management {
                base,
                http,
                user,
                password,
            } => {
                let put = |path: String, body: serde_json::Value| {
                    http.put(format!("{base}{path}"))
                        .basic_auth(user, Some(password))
                        .json(&body)
                        .send()
                };
                let created = put(format!("/api/vhosts/{}", encode(vhost)), json!({})).await;
                check(created, &format!("create vhost {vhost}"))?;
                let granted = put(
                    format!("/api/permissions/{}/{}", encode(vhost), encode(user)),
                    json!({"configure": ".*", "write": ".*", "read": ".*"}),
                )
                .await;
                if let Err(e) = check(granted, &format!("grant {user} permissions on {vhost}")) {
                    let _ = self.delete_vhost(vhost).await;
                    return Err(e);
                }
                Ok(())
            }
            VhostAdmin::Rabbitmqctl { user } => {
                rabbitmqctl(&["add_vhost", vhost]).await?;
                let granted =
                    rabbitmqctl(&["set_permissions", "-p", vhost, user, ".*", ".*", ".*"]).await;
                if let Err(e) = granted {
                    let _ = self.delete_vhost(vhost).await;
                    return Err(e);
                }
                Ok(())
            }
        }
    }

    /// Delete `vhost` with everything in it (a missing vhost is not an error).
    pub async fn delete_vhost(&self, vhost: &str) -> Result<(), String> {
        match self {
            VhostAdmin::Management {
                base,
                http,
                user,
                password,
            } => {
                let resp = http
                    .delete(format!("{base}/api/vhosts/{}", encode(vhost)))
                    .basic_auth(user, Some(password))
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
            VhostAdmin::Rabbitmqctl { .. } => match rabbitmqctl(&["delete_vhost", vhost]).await {
                Err(e) if e.contains("does_not_exist") || e.contains("not found") => Ok(()),
                other => other,
            },
        }
    }
}

fn check(resp: Result<reqwest::Response, reqwest::Error>, what: &str) -> Result<(), String> {
    match resp {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("cannot {what}: HTTP {}", r.status())),
        Err(e) => Err(format!("cannot {what}: {e}")),
    }
}

/// Run `rabbitmqctl` with `args`; its stderr (never a secret) on failure.
async fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Err(_) => Err(format!(
            "rabbitmqctl {} did not finish within 60 s",
            args[0]
        )),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("rabbitmqctl is not on the PATH".to_string())
        }
        Ok(Err(e)) => Err(format!("cannot run rabbitmqctl: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            Err(format!(
                "rabbitmqctl {} failed ({}): {first}",
                args[0], out.status
            ))
        }
    }
}

/// A vhost and a Redis key prefix made for one run.
pub struct Scratch {
    pub vhost: String,
    pub key_prefix: String,
    /// The given AMQP URL with its vhost replaced by the scratch vhost.
    pub amqp_url: String,
    pub admin: VhostAdmin,
}

impl Scratch {
    /// Make `escalator-{label}-{id}` (vhost) and choose `escalator-{label}:{id}` (key prefix).
    pub async fn create(admin: VhostAdmin, amqp_url: &str, label: &str) -> Result<Scratch, String> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let vhost = format!("escalator-{label}-{id}");
        let amqp_url = with_vhost(amqp_url, &vhost)?;
        admin.create_vhost(&vhost).await?;
        Ok(Scratch {
            vhost,
            key_prefix: format!("escalator-{label}:{id}"),
            amqp_url,
            admin,
        })
    }

    /// Delete the vhost (queues, exchanges, messages) and every key of the prefix.
    pub async fn remove(&self, redis_url: &str) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Err(e) = self.admin.delete_vhost(&self.vhost).await {
            problems.push(e);
        }
        match Store::connect(redis_url, &self.key_prefix, Duration::from_secs(60)).await {
            Ok(store) => {
                if let Err(e) = store.delete_all().await {
                    problems.push(format!(
                        "cannot delete the Redis keys {}:*: {e}",
                        self.key_prefix
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "cannot reach Redis to delete the keys {}:*: {e}",
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

/// Percent-encode everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
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
pub fn with_vhost(url: &str, vhost: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        format!(
            "the AMQP URL {} has no scheme (amqp://)",
            crate::settings::redact_url(url)
        )
    })?;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or("");
    let mut out = format!("{scheme}://{authority}/{}", encode(vhost));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_vhost_and_keeps_credentials_and_query() {
        assert_eq!(
            with_vhost("amqp://u:p%40ss@h:5672/%2f?heartbeat=5", "escalator-demo-1").unwrap(),
            "amqp://u:p%40ss@h:5672/escalator-demo-1?heartbeat=5"
        );
        assert_eq!(with_vhost("amqp://h:5672", "v").unwrap(), "amqp://h:5672/v");
        assert_eq!(
            credentials("amqp://u:p%40ss@h/"),
            ("u".into(), "p@ss".into())
        );
        assert_eq!(credentials("amqp://h/"), ("guest".into(), "guest".into()));
    }
}
