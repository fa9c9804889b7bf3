//! The Redis connection: one server, a Redis Cluster, or a Sentinel group,
//! chosen by the scheme of `ESCALATOR_REDIS_URL`:
//!
//! | form | topology |
//! |---|---|
//! | `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]` (`rediss://` for TLS) | one server |
//! | `redis+cluster://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]` (`rediss+cluster://`) | a Cluster: any of its nodes, the rest is discovered |
//! | `redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]` (`rediss+sentinel://`) | the master named MASTER of a Sentinel group: the addresses are the sentinels', the credentials the master's |
//!
//! The cluster logic (slot map, MOVED/ASK, failover) is the redis crate's
//! own (`cluster_async`). For Sentinel, the crate finds the master; this
//! module only asks it again after a connection error or a READONLY reply
//! (the master moved), and the failed command is retried by its caller
//! like any other Redis error.
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The source of every script made with [`script`], by SHA-1: a Cluster
/// node that became master in a failover has an empty script cache, and
/// the cluster client loads scripts on the masters it knew before, so an
/// `EVALSHA` that finds no script is sent again as `EVAL` with its source.
static SCRIPTS: std::sync::LazyLock<std::sync::RwLock<std::collections::HashMap<String, Vec<u8>>>> =
    std::sync::LazyLock::new(Default::default);

/// A Lua script, registered so that a Cluster connection can resend it
/// whole (see [`SCRIPTS`]). Every script of the escalator is made here.
pub fn script(source: &str) -> redis::Script {
    let script = redis::Script::new(source);
    if let Ok(mut map) = SCRIPTS.write() {
        map.insert(script.get_hash().to_string(), source.as_bytes().to_vec());
    }
    script
}

/// `EVALSHA sha ...` as `EVAL source ...`, when `cmd` is one of ours.
fn as_eval(cmd: &Cmd) -> Option<Cmd> {
    let mut args = cmd.args_iter();
    let name = match args.next()? {
        redis::Arg::Simple(n) => n,
        _ => return None,
    };
    if !name.eq_ignore_ascii_case(b"EVALSHA") {
        return None;
    }
    let sha = match args.next()? {
        redis::Arg::Simple(s) => std::str::from_utf8(s).ok()?.to_ascii_lowercase(),
        _ => return None,
    };
    let source = SCRIPTS.read().ok()?.get(&sha)?.clone();
    let mut eval = redis::cmd("EVAL");
    eval.arg(source);
    for a in args {
        if let redis::Arg::Simple(a) = a {
            eval.arg(a);
        }
    }
    Some(eval)
}

/// How long connecting and each reply may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the state lives, as the URL says.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// A `redis://` or `rediss://` URL, as given.
    Single(String),
    /// One `redis[s]://[auth@]host:port` URL per seed node.
    Cluster(Vec<String>),
    Sentinel {
        /// One `redis[s]://host:port` URL per sentinel.
        sentinels: Vec<String>,
        master: String,
        /// `redis[s]://[auth@]any/DB`: the master's credentials and database.
        data: String,
    },
}

/// Never the password.
impl std::fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTopology::Single(_) => f.write_str("Single"),
            RedisTopology::Cluster(n) => write!(f, "Cluster({} seed nodes)", n.len()),
            RedisTopology::Sentinel {
                sentinels, master, ..
            } => write!(
                f,
                "Sentinel({} sentinels, master {master})",
                sentinels.len()
            ),
        }
    }
}

/// What is wrong with a URL; never its text (it may hold a password).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadRedisUrl(&'static str);

impl RedisTopology {
    pub fn parse(url: &str) -> Result<RedisTopology, BadRedisUrl> {
        let url = url.trim();
        let (scheme, rest) = url.split_once("://").ok_or(BadRedisUrl(
            "the URL has no scheme (redis://, rediss://, redis+cluster://, redis+sentinel://)",
        ))?;
        let (tls, kind) = match scheme.to_ascii_lowercase().as_str() {
            "redis" | "rediss" | "unix" | "redis+unix" => {
                return Ok(RedisTopology::Single(url.to_string()));
            }
            "redis+cluster" => (false, "cluster"),
            "rediss+cluster" => (true, "cluster"),
            "redis+sentinel" => (false, "sentinel"),
            "rediss+sentinel" => (true, "sentinel"),
            _ => {
                return Err(BadRedisUrl(
                    "unknown scheme: use redis://, rediss://, redis+cluster:// or redis+sentinel:// (rediss+... for TLS)",
                ));
            }
        };
        let base = if tls { "rediss" } else { "redis" };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        // The credentials end at the last '@' (a password may contain '@'
        // only percent-encoded, but be lenient).
        let (auth, hosts) = match authority.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, authority),
        };
        let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
        if hosts.iter().any(|h| h.is_empty()) {
            return Err(BadRedisUrl(
                "a host of the list is empty: HOST:PORT,HOST:PORT,...",
            ));
        }
        let with_auth = |host: &str| match auth {
            Some(a) => format!("{base}://{a}@{host}"),
            None => format!("{base}://{host}"),
        };
        if kind == "cluster" {
            if !path.trim_matches('/').is_empty() {
                return Err(BadRedisUrl(
                    "a Redis Cluster has only database 0: drop the path after the hosts",
                ));
            }
            return Ok(RedisTopology::Cluster(
                hosts.into_iter().map(with_auth).collect(),
            ));
        }
        let mut segments = path.split('/').filter(|s| !s.is_empty());
        let master = segments
            .next()
            .ok_or(BadRedisUrl(
                "name the master after the sentinels: redis+sentinel://HOST:PORT,.../MASTER",
            ))?
            .to_string();
        let db = match segments.next() {
            Some(db) => db
                .parse::<u32>()
                .map_err(|_| BadRedisUrl("the database after the master name must be a number"))?,
            None => 0,
        };
        Ok(RedisTopology::Sentinel {
            sentinels: hosts.iter().map(|h| format!("{base}://{h}")).collect(),
            master,
            data: format!("{}/{db}", with_auth("localhost")),
        })
    }
}

/// A clonable Redis connection of any topology that reconnects by itself.
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConnection),
}

impl RedisConnection {
    /// Connect, with `tls` for `rediss` URLs; a wrong address or password
    /// fails at once.
    pub async fn open(url: &str, tls: &crate::tls::BrokerTls) -> RedisResult<RedisConnection> {
        let topology = RedisTopology::parse(url).map_err(|e| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "invalid URL",
                e.0.to_string(),
            ))
        })?;
        match topology {
            RedisTopology::Single(url) => {
                let client = client(&url, tls)?;
                // One plain connection first, so that a wrong address or
                // password fails at once: the manager retries its first
                // connection too (six times with backoff, about 10 s),
                // which is right for reconnects only.
                drop(
                    client
                        .get_multiplexed_async_connection_with_config(&probe_config())
                        .await?,
                );
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT));
                Ok(RedisConnection::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTopology::Cluster(nodes) => {
                let mut builder = redis::cluster::ClusterClient::builder(nodes)
                    .connection_timeout(TIMEOUT)
                    .response_timeout(TIMEOUT);
                if !tls.is_default() {
                    builder = builder
                        .danger_accept_invalid_hostnames(tls.insecure_skip_verify)
                        .certs(certificates(tls));
                }
                let client = builder.build()?;
                Ok(RedisConnection::Cluster(
                    client.get_async_connection().await?,
                ))
            }
            RedisTopology::Sentinel {
                sentinels,
                master,
                data,
            } => Ok(RedisConnection::Sentinel(
                SentinelConnection::open(sentinels, &master, &data, tls).await?,
            )),
        }
    }
}

/// A client for `url`: for `rediss://`, verifying the server against the CA
/// bundle (else the system's roots), presenting the client certificate, or
/// (tests only) verifying nothing.
fn client(url: &str, tls: &crate::tls::BrokerTls) -> Result<redis::Client, redis::RedisError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let redis::ConnectionAddr::TcpTls {
        host,
        port,
        insecure,
        ..
    } = info.addr().clone()
    else {
        return redis::Client::open(info);
    };
    if tls.is_default() {
        return redis::Client::open(info);
    }
    let info = info.set_addr(redis::ConnectionAddr::TcpTls {
        host,
        port,
        // `rediss://host/#insecure` in the URL, or the tests-only setting.
        insecure: insecure || tls.insecure_skip_verify,
        tls_params: None,
    });
    redis::Client::build_with_tls(info, certificates(tls))
}

/// The CA bundle and client certificate of `tls`, for the redis crate.
fn certificates(tls: &crate::tls::BrokerTls) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: tls.client.as_ref().map(|id| redis::ClientTlsConfig {
            client_cert: id.cert_pem.clone(),
            client_key: id.key_pem.clone(),
        }),
        root_cert: tls.ca_pem.clone(),
    }
}

fn probe_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => Box::pin(async move {
                match c.req_packed_command(cmd).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        match as_eval(cmd) {
                            Some(eval) => c.req_packed_command(&eval).await,
                            None => Err(e),
                        }
                    }
                    other => other,
                }
            }),
            RedisConnection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Sentinel(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
            RedisConnection::Sentinel(c) => c.get_db(),
        }
    }
}

/// The master of a Sentinel group, found again when it moves.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: std::sync::RwLock<MultiplexedConnection>,
    /// Bumped on every new master connection, so that many commands failing
    /// at once ask the sentinels once.
    generation: AtomicU64,
    db: i64,
}

impl SentinelConnection {
    async fn open(
        sentinels: Vec<String>,
        master: &str,
        data: &str,
        tls: &crate::tls::BrokerTls,
    ) -> RedisResult<Self> {
        let info = data.into_connection_info()?;
        let settings = info.redis_settings();
        let secure = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        let addrs = sentinels
            .iter()
            .map(|u| u.as_str().into_connection_info().map(|i| i.addr().clone()))
            .collect::<RedisResult<Vec<_>>>()?;
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
            .set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if secure {
            let mode = if tls.insecure_skip_verify {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            };
            builder = builder
                .set_client_to_redis_tls_mode(mode)
                .set_client_to_sentinel_tls_mode(mode);
            if !tls.is_default() {
                builder = builder
                    .set_client_to_redis_certificates(certificates(tls))
                    .set_client_to_sentinel_certificates(certificates(tls));
            }
        }
        let mut sentinel = builder.build()?;
        let conn = master_connection(&mut sentinel).await?;
        Ok(SentinelConnection {
            shared: Arc::new(SentinelShared {
                sentinel: tokio::sync::Mutex::new(sentinel),
                current: std::sync::RwLock::new(conn),
                generation: AtomicU64::new(0),
                db: info.redis_settings().db(),
            }),
        })
    }

    fn current(&self) -> (MultiplexedConnection, u64) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        let conn = match self.shared.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        (conn, generation)
    }

    /// After `e` on the connection of `generation`: ask the sentinels for
    /// the master again (once for all commands that failed together).
    async fn recover(&self, e: &RedisError, generation: u64) {
        let moved = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if !moved {
            return;
        }
        let mut sentinel = self.shared.sentinel.lock().await;
        if self.shared.generation.load(Ordering::Acquire) != generation {
            return; // another command reconnected already
        }
        match master_connection(&mut sentinel).await {
            Ok(conn) => {
                match self.shared.current.write() {
                    Ok(mut c) => *c = conn,
                    Err(poisoned) => *poisoned.into_inner() = conn,
                }
                self.shared.generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!("connected to the Redis master the sentinels name");
            }
            Err(e) => {
                tracing::warn!(error_kind = ?e.kind(), "the sentinels name no reachable Redis master yet");
            }
        }
    }
}

async fn master_connection(sentinel: &mut SentinelClient) -> RedisResult<MultiplexedConnection> {
    let client = sentinel.async_get_client().await?;
    client
        .get_multiplexed_async_connection_with_config(&probe_config())
        .await
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (mut conn, generation) = self.current();
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.recover(e, generation).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (mut conn, generation) = self.current();
            let result = conn.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &result {
                self.recover(e, generation).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_pass_through_unchanged() {
        for url in ["redis://127.0.0.1:6379/2", "rediss://:pw@host:6380/"] {
            assert_eq!(
                RedisTopology::parse(url),
                Ok(RedisTopology::Single(url.into()))
            );
        }
    }

    #[test]
    fn a_cluster_url_lists_its_seed_nodes_with_the_credentials() {
        assert_eq!(
            RedisTopology::parse("redis+cluster://:s3cret@a:7000,b:7001, c:7002/"),
            Ok(RedisTopology::Cluster(vec![
                "redis://:s3cret@a:7000".into(),
                "redis://:s3cret@b:7001".into(),
                "redis://:s3cret@c:7002".into(),
            ]))
        );
        assert_eq!(
            RedisTopology::parse("rediss+cluster://a:7000"),
            Ok(RedisTopology::Cluster(vec!["rediss://a:7000".into()]))
        );
        assert!(RedisTopology::parse("redis+cluster://a:7000/3").is_err());
        assert!(RedisTopology::parse("redis+cluster://a:7000,,b:1").is_err());
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_its_database() {
        assert_eq!(
            RedisTopology::parse("redis+sentinel://u:pw@s1:26379,s2:26380/mymaster/4"),
            Ok(RedisTopology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26380".into()],
                master: "mymaster".into(),
                data: "redis://u:pw@localhost/4".into(),
            })
        );
        assert!(RedisTopology::parse("redis+sentinel://s1:26379").is_err());
        assert!(RedisTopology::parse("redis+sentinel://s1:26379/m/x").is_err());
    }

    #[test]
    fn an_evalsha_of_a_registered_script_becomes_an_eval_with_its_source() {
        let s = script("return KEYS[1] .. ARGV[1]");
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(s.get_hash()).arg(1).arg("k").arg("v");
        let eval = as_eval(&cmd).expect("registered");
        let args: Vec<Vec<u8>> = eval
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(a) => Some(a.to_vec()),
                _ => None,
            })
            .collect();
        assert_eq!(
            args,
            [
                b"EVAL".to_vec(),
                b"return KEYS[1] .. ARGV[1]".to_vec(),
                b"1".to_vec(),
                b"k".to_vec(),
                b"v".to_vec()
            ]
        );
        let mut other = redis::cmd("EVALSHA");
        other.arg("0000").arg(0);
        assert!(as_eval(&other).is_none());
        assert!(as_eval(redis::cmd("GET").arg("k")).is_none());
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let e = RedisTopology::parse("memcached://:hunter2@x").unwrap_err();
        assert!(!e.to_string().contains("hunter2"));
        let t = RedisTopology::parse("redis+cluster://:hunter2@a:1").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        let t = RedisTopology::parse("redis+sentinel://:hunter2@a:1/m").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
