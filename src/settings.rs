//! Process settings: environment variables (or flags) with loopback defaults.
use std::time::Duration;

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";
pub const DEFAULT_SHARDS: u16 = 16;
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// Every setting of the worker (`escalator worker --help`). The other
/// commands take only the groups below that apply to them and start from
/// [`Settings::defaults`].
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// AMQP URL of RabbitMQ (the password is never printed).
    #[arg(
        long,
        env = "ESCALATOR_AMQP_URL",
        hide_env_values = true,
        default_value = DEFAULT_AMQP_URL
    )]
    pub amqp_url: String,
    /// Redis URL (the password is never printed).
    #[arg(long, env = "ESCALATOR_REDIS_URL", hide_env_values = true, default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Prefix of every Redis key this process writes.
    #[arg(long, env = "ESCALATOR_KEY_PREFIX", default_value = "escalator")]
    pub key_prefix: String,
    /// Messages each consumer may hold unacknowledged (AMQP prefetch).
    #[arg(long, env = "ESCALATOR_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Messages processed at the same time by one worker (across conversations).
    #[arg(long, env = "ESCALATOR_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Number of work shards (queues `escalator.work.NN`). Fixed per deployment.
    #[arg(long, env = "ESCALATOR_SHARDS", default_value_t = DEFAULT_SHARDS)]
    pub shards: u16,
    /// Provider attempts made in process before a message goes to the retry queue.
    #[arg(long, env = "ESCALATOR_INLINE_ATTEMPTS", default_value_t = 4)]
    pub inline_attempts: u32,
    /// Longest Retry-After honoured by waiting in process; longer waits use the retry queue.
    #[arg(long, env = "ESCALATOR_MAX_INLINE_WAIT_MS", default_value_t = 2_000)]
    pub max_inline_wait_ms: u64,
    /// Rounds through the broker's retry queue before a transient failure is dead-lettered.
    #[arg(long, env = "ESCALATOR_BROKER_ATTEMPTS", default_value_t = 6)]
    pub broker_attempts: u32,
    /// Base delay of a broker retry round; round n waits base * 2^(n-1).
    #[arg(long, env = "ESCALATOR_RETRY_DELAY_MS", default_value_t = 30_000)]
    pub retry_delay_ms: u64,
    /// First in-process backoff step (grows exponentially, with jitter).
    #[arg(long, env = "ESCALATOR_BACKOFF_MIN_MS", default_value_t = 250)]
    pub backoff_min_ms: u64,
    /// Largest in-process backoff step.
    #[arg(long, env = "ESCALATOR_BACKOFF_MAX_MS", default_value_t = 8_000)]
    pub backoff_max_ms: u64,
    /// Timeout of one provider HTTP request.
    #[arg(long, env = "ESCALATOR_HTTP_TIMEOUT_MS", default_value_t = 15_000)]
    pub http_timeout_ms: u64,
    /// On SIGTERM, how long in-flight messages may take before they are requeued.
    #[arg(long, env = "ESCALATOR_SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
    /// Broker delivery limit of the work queues (poison-message guard).
    #[arg(long, env = "ESCALATOR_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
    /// How long conversation state and dedupe records live in Redis, in days.
    #[arg(long, env = "ESCALATOR_STATE_TTL_DAYS", default_value_t = 90)]
    pub state_ttl_days: u64,
    /// Messages of one org processed at the same time by one worker (its
    /// share of ESCALATOR_CONCURRENCY); default: half of it, at least 1.
    #[arg(long, env = "ESCALATOR_ORG_CONCURRENCY")]
    pub org_concurrency: Option<usize>,
    /// Lifetime of a conversation's lease (one runner at a time, fleet-wide),
    /// renewed every third of it while the runner works. Must exceed the HTTP
    /// timeout, so that a lost runner's last request has ended before another
    /// runner looks. Default: ESCALATOR_HTTP_TIMEOUT_MS + 5000.
    #[arg(long, env = "ESCALATOR_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<u64>,
    /// Longest wait for the broker to confirm a publish; then the AMQP
    /// session is torn down and rebuilt.
    #[arg(long, env = "ESCALATOR_CONFIRM_TIMEOUT_MS", default_value_t = 15_000)]
    pub confirm_timeout_ms: u64,
    /// Address of the worker's `/metrics`, `/healthz` and `/readyz`
    /// (0.0.0.0:9464 in a container; `off` serves none).
    #[arg(long, env = METRICS_LISTEN_ENV, default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: String,
    /// Live Salesforce chats one worker may stream at once (each holds a
    /// connection; the open-file limit is raised to fit, or the worker
    /// refuses to start saying how to raise it).
    #[arg(long, env = "ESCALATOR_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// A Salesforce messaging stream silent this long (not even a ping) is
    /// taken for dead and reconnected.
    #[arg(long, env = "ESCALATOR_STREAM_SILENCE_MS", default_value_t = 90_000)]
    pub stream_silence_ms: u64,
    /// A worker whose stream heartbeat is older than this is taken for dead:
    /// another takes its streams over (within this plus a quarter of it).
    #[arg(long, env = "ESCALATOR_STREAM_OWNER_TTL_MS", default_value_t = 9_000)]
    pub stream_owner_ttl_ms: u64,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// TLS to RabbitMQ (`amqps://` URLs) and Redis (`rediss://` URLs): every
/// command that connects takes the group of each broker it uses. Files are
/// PEM; unset CA: the system's roots. Loaded and checked by [`crate::tls`].
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    #[command(flatten)]
    pub amqp: AmqpTlsArgs,
    #[command(flatten)]
    pub redis: RedisTlsArgs,
}

/// TLS to RabbitMQ (and the tests-only switch, which covers both brokers:
/// every command that uses Redis uses RabbitMQ too).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AmqpTlsArgs {
    /// CA bundle (PEM) that RabbitMQ's certificate must chain to.
    #[arg(long, env = crate::tls::AMQP_CA_FILE_ENV)]
    pub amqp_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented to RabbitMQ; needs the key too.
    #[arg(long, env = crate::tls::AMQP_CLIENT_CERT_FILE_ENV)]
    pub amqp_client_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM, unencrypted) of the RabbitMQ client certificate.
    #[arg(long, env = crate::tls::AMQP_CLIENT_KEY_FILE_ENV)]
    pub amqp_client_key_file: Option<std::path::PathBuf>,
    /// TESTS ONLY: accept any server certificate from RabbitMQ and Redis
    /// (a warning is logged at every start).
    #[arg(long, env = crate::tls::INSECURE_SKIP_VERIFY_ENV)]
    pub tls_insecure_skip_verify: bool,
}

/// TLS to Redis.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RedisTlsArgs {
    /// CA bundle (PEM) that Redis's certificate must chain to.
    #[arg(long, env = crate::tls::REDIS_CA_FILE_ENV)]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented to Redis; needs the key too.
    #[arg(long, env = crate::tls::REDIS_CLIENT_CERT_FILE_ENV)]
    pub redis_client_cert_file: Option<std::path::PathBuf>,
    /// Private key (PEM, unencrypted) of the Redis client certificate.
    #[arg(long, env = crate::tls::REDIS_CLIENT_KEY_FILE_ENV)]
    pub redis_client_key_file: Option<std::path::PathBuf>,
}

impl From<AmqpTlsArgs> for TlsArgs {
    /// The settings of a command that uses RabbitMQ only.
    fn from(amqp: AmqpTlsArgs) -> TlsArgs {
        TlsArgs {
            amqp,
            redis: RedisTlsArgs::default(),
        }
    }
}

impl TlsArgs {
    /// The TLS settings of the environment alone (no flags).
    pub fn from_env() -> Result<Self, String> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            tls: TlsArgs,
        }
        <Wrapper as clap::Parser>::try_parse_from(["escalator"])
            .map(|w| w.tls)
            .map_err(|e| e.to_string())
    }

    /// Problems with the named files (missing, not PEM, a certificate
    /// without its key), each naming its setting.
    pub fn problems(&self) -> Vec<String> {
        match crate::tls::Tls::load(self) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.iter().map(ToString::to_string).collect(),
        }
    }
}

/// Where the worker's metrics and probes listen by default (Prometheus
/// exporters' customary port range).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
pub const METRICS_LISTEN_ENV: &str = "ESCALATOR_METRICS_LISTEN";

/// Where RabbitMQ is: `topology`, `demo`, `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// AMQP URL of RabbitMQ (the password is never printed).
    #[arg(long, env = "ESCALATOR_AMQP_URL",
        hide_env_values = true, default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
}

/// Where Redis is: `demo`, `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (the password is never printed).
    #[arg(long, env = "ESCALATOR_REDIS_URL", hide_env_values = true, default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
}

/// The shape of the work queues, fixed per deployment: `topology`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShapeArgs {
    /// Number of work shards (queues `escalator.work.NN`). Fixed per deployment.
    #[arg(long, env = "ESCALATOR_SHARDS", default_value_t = DEFAULT_SHARDS)]
    pub shards: u16,
    /// Broker delivery limit of the work queues (poison-message guard).
    #[arg(long, env = "ESCALATOR_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub delivery_limit: u32,
}

/// Which dead letters a `dlq` command applies to (all given filters must match).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DlqArgs {
    /// Only dead letters of this org (`x-escalator-org-id`).
    #[arg(long)]
    pub org: Option<String>,
    /// Only dead letters of this conversation.
    #[arg(long)]
    pub conversation: Option<String>,
    /// Only this error class: permanent, transient, invalid, or broker
    /// (dead-lettered by RabbitMQ, e.g. past the delivery limit).
    #[arg(long)]
    pub class: Option<String>,
    /// Only this original routing key (e.g. escalation.requested).
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Only dead letters at least this old (30s, 10m, 2h, 3d).
    #[arg(long)]
    pub older_than: Option<String>,
    /// Only dead letters at most this old (30s, 10m, 2h, 3d).
    #[arg(long)]
    pub newer_than: Option<String>,
}

/// How hard the benchmark pushes: `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Messages each consumer may hold unacknowledged (AMQP prefetch).
    #[arg(long, env = "ESCALATOR_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,
    /// Messages processed at the same time by one worker (across conversations).
    #[arg(long, env = "ESCALATOR_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Number of work shards of the benchmark's own vhost.
    #[arg(long, env = "ESCALATOR_SHARDS", default_value_t = DEFAULT_SHARDS)]
    pub shards: u16,
}

/// Where the webhook ingress listens unless `ESCALATOR_INGRESS_LISTEN` says otherwise.
pub const DEFAULT_INGRESS_LISTEN: &str = "127.0.0.1:8080";
/// Largest webhook body accepted by default (256 KiB): Zendesk's webhook
/// payloads are a few KiB; anything far larger is not a Zendesk delivery.
pub const DEFAULT_INGRESS_BODY_LIMIT: usize = 262_144;
/// Default of `ESCALATOR_INGRESS_CONFIRM_TIMEOUT_MS`: well below the 10-12 s
/// after which Zendesk counts a delivery as failed, so that a broker that
/// does not confirm gets a 503 (and a Zendesk retry) rather than a timeout.
pub const DEFAULT_INGRESS_CONFIRM_TIMEOUT_MS: u64 = 5_000;
/// The variables of [`IngressArgs`] (the deployment manifests name them).
pub const INGRESS_LISTEN_ENV: &str = "ESCALATOR_INGRESS_LISTEN";
pub const INGRESS_BODY_LIMIT_ENV: &str = "ESCALATOR_INGRESS_BODY_LIMIT";
pub const INGRESS_CONFIRM_TIMEOUT_ENV: &str = "ESCALATOR_INGRESS_CONFIRM_TIMEOUT_MS";

/// The webhook HTTP endpoint: `ingress` (with [`AmqpArgs`]).
#[derive(Debug, Clone, clap::Args)]
pub struct IngressArgs {
    /// Address the webhook endpoint listens on (0.0.0.0:8080 in a container).
    #[arg(long, env = INGRESS_LISTEN_ENV, default_value = DEFAULT_INGRESS_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Largest accepted webhook body in bytes; larger ones get 413.
    #[arg(long, env = INGRESS_BODY_LIMIT_ENV, default_value_t = DEFAULT_INGRESS_BODY_LIMIT)]
    pub body_limit: usize,
    /// Longest wait for the broker to confirm a webhook's publish; then the
    /// answer is 503 (Zendesk retries) and the AMQP session is rebuilt.
    #[arg(long, env = INGRESS_CONFIRM_TIMEOUT_ENV, default_value_t = DEFAULT_INGRESS_CONFIRM_TIMEOUT_MS)]
    pub confirm_timeout_ms: u64,
}

impl IngressArgs {
    /// Reject values that cannot work, naming the variable.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.body_limit == 0 {
            problems.push(format!("{INGRESS_BODY_LIMIT_ENV} must be at least 1"));
        }
        if self.confirm_timeout_ms == 0 {
            problems.push(format!("{INGRESS_CONFIRM_TIMEOUT_ENV} must be at least 1"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("invalid settings: {}", problems.join("; ")))
        }
    }
}

/// What `doctor` checks and how it prints.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Check only this org (default: every org of the config).
    #[arg(long)]
    pub org: Option<String>,
    /// Print one JSON object per check (one per line) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The public URL of this deployment's webhook ingress, which the Zendesk
    /// webhook must target (unknown: that check warns).
    #[arg(long, env = "ESCALATOR_PUBLIC_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
}

/// The ingress benchmark: `bench --ingress`.
#[derive(Debug, Clone, clap::Args)]
pub struct IngressBenchArgs {
    /// Instead of the pipeline: measure the webhook ingress (N = --count
    /// valid webhooks, answered only after the broker confirmed them).
    #[arg(long)]
    pub ingress: bool,
    /// Concurrent HTTP clients of the ingress benchmark.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
}

impl Settings {
    /// The built-in defaults, whatever the environment says: the base of the
    /// commands that take only some groups of settings (their flags and
    /// variables are then applied on top, so nothing else leaks in).
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        let command = Wrapper::command().mut_args(|a| a.env(None));
        let matches = command.get_matches_from(["escalator"]);
        match Wrapper::from_arg_matches(&matches) {
            Ok(w) => w.settings,
            // Unreachable: every field has a default (a unit test checks it).
            Err(e) => e.exit(),
        }
    }

    /// Settings from the environment alone (no flags), for tests, the demo and
    /// the benchmark. Fails with clap's message when a variable does not parse.
    pub fn from_env() -> Result<Self, String> {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            settings: Settings,
        }
        <Wrapper as clap::Parser>::try_parse_from(["escalator"])
            .map(|w| w.settings)
            .map_err(|e| e.to_string())
    }

    /// Reject settings that cannot work, naming the variable and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if !(1..=999).contains(&self.shards) {
            problems.push("ESCALATOR_SHARDS must be between 1 and 999");
        }
        if self.prefetch == 0 {
            problems.push("ESCALATOR_PREFETCH must be at least 1");
        }
        if self.concurrency == 0 {
            problems.push("ESCALATOR_CONCURRENCY must be at least 1");
        }
        if self.inline_attempts == 0 {
            problems.push("ESCALATOR_INLINE_ATTEMPTS must be at least 1");
        }
        if self.broker_attempts == 0 {
            problems.push("ESCALATOR_BROKER_ATTEMPTS must be at least 1");
        }
        if self.retry_delay_ms == 0 {
            problems.push("ESCALATOR_RETRY_DELAY_MS must be at least 1");
        }
        if self.delivery_limit == 0 {
            problems.push("ESCALATOR_DELIVERY_LIMIT must be at least 1");
        }
        if self
            .org_concurrency
            .is_some_and(|n| n == 0 || n > self.concurrency)
        {
            problems.push("ESCALATOR_ORG_CONCURRENCY must be between 1 and ESCALATOR_CONCURRENCY");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            problems.push("ESCALATOR_KEY_PREFIX must be non-empty, without braces or spaces");
        }
        let lease_problem = format!(
            "ESCALATOR_LEASE_TTL_MS ({}) must exceed ESCALATOR_HTTP_TIMEOUT_MS ({})",
            self.lease_ttl().as_millis(),
            self.http_timeout_ms
        );
        if self.lease_ttl() <= Duration::from_millis(self.http_timeout_ms) {
            problems.push(&lease_problem);
        }
        if self.confirm_timeout_ms == 0 {
            problems.push("ESCALATOR_CONFIRM_TIMEOUT_MS must be at least 1");
        }
        if self.metrics_listen().is_err() {
            problems.push("ESCALATOR_METRICS_LISTEN must be HOST:PORT (e.g. 0.0.0.0:9464) or off");
        }
        let tls_problems = self.tls.problems();
        problems.extend(tls_problems.iter().map(String::as_str));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("invalid settings: {}", problems.join("; ")))
        }
    }

    /// `ESCALATOR_LEASE_TTL_MS`, or the HTTP timeout + 5 s.
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(
            self.lease_ttl_ms
                .unwrap_or(self.http_timeout_ms.saturating_add(5_000)),
        )
    }

    /// `ESCALATOR_METRICS_LISTEN` parsed: `None` when it is `off` (or empty).
    pub fn metrics_listen(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let v = self.metrics_listen.trim();
        if v.is_empty() || v.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| format!("{METRICS_LISTEN_ENV}: `{v}` is not HOST:PORT"))
    }

    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_millis(self.confirm_timeout_ms)
    }

    /// The stream machinery's tunables.
    pub fn stream_settings(&self) -> crate::live_stream::StreamSettings {
        crate::live_stream::StreamSettings {
            silence: Duration::from_millis(self.stream_silence_ms.max(1_000)),
            owner_ttl: Duration::from_millis(self.stream_owner_ttl_ms.max(1_000)),
            connect_timeout: Duration::from_millis(self.http_timeout_ms.max(1_000)),
            shards: self.shards,
        }
    }

    /// A parked head this long past its due time is taken to be lost (the
    /// broker dead-lettered it, e.g. at its delivery limit) and dropped from
    /// its conversation's parked list, so that its followers run: three
    /// retry delays, at least one minute.
    pub fn overdue_grace(&self) -> Duration {
        (self.retry_delay() * 3).max(Duration::from_secs(60))
    }

    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay_ms)
    }

    pub fn max_inline_wait(&self) -> Duration {
        Duration::from_millis(self.max_inline_wait_ms)
    }

    /// Each org's share of the worker's concurrency.
    pub fn org_concurrency(&self) -> usize {
        self.org_concurrency
            .unwrap_or(self.concurrency / 2)
            .clamp(1, self.concurrency.max(1))
    }

    pub fn state_ttl(&self) -> Duration {
        Duration::from_secs(self.state_ttl_days * 86_400)
    }

    /// The AMQP URL with any password replaced, for logs and messages.
    pub fn amqp_url_redacted(&self) -> String {
        redact_url(&self.amqp_url)
    }

    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

/// `scheme://user:pass@host/...` -> `scheme://user:<redacted>@host/...`.
///
/// Works on text that is not a valid URL too (a missing `:` or `/`, spaces),
/// since that is exactly when the URL ends up in an error message: whatever
/// stands between the user name and the last `@` is masked, and when the user
/// part cannot be told apart, all of it is.
pub fn redact_url(url: &str) -> String {
    match secret_span(url) {
        Some((start, end)) => format!("{}<redacted>{}", &url[..start], &url[end..]),
        None => url.to_string(),
    }
}

/// The part of `url` that [`redact_url`] masks (to scrub it from other text).
pub fn url_secret(url: &str) -> Option<&str> {
    secret_span(url).map(|(start, end)| &url[start..end])
}

/// Byte range of the password (or of the whole user part when it cannot be
/// told apart) in `url`.
fn secret_span(url: &str) -> Option<(usize, usize)> {
    let at = url.rfind('@')?;
    let before = &url[..at];
    match before.rfind("//").map(|i| i + 2) {
        Some(start) => {
            let userinfo = &before[start..];
            match userinfo.find(':') {
                Some(colon) => Some((start + colon + 1, at)),
                // `redis://@host`: nothing to hide.
                None if userinfo.is_empty() => None,
                // A lone user part may be a token (`rediss://token@host`): masked too.
                None => Some((start, at)),
            }
        }
        None => Some((0, at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_settings_that_cannot_work() {
        let mut s = Settings::from_env().unwrap();
        assert!(s.validate().is_ok());
        s.shards = 0;
        s.prefetch = 0;
        s.lease_ttl_ms = Some(s.http_timeout_ms);
        let err = s.validate().unwrap_err();
        assert!(
            err.contains("ESCALATOR_SHARDS")
                && err.contains("ESCALATOR_PREFETCH")
                && err.contains("ESCALATOR_LEASE_TTL_MS"),
            "{err}"
        );
    }

    #[test]
    fn tls_files_are_checked_at_start_naming_the_setting() {
        let mut s = Settings::defaults();
        s.tls.redis.redis_ca_file = Some(std::path::PathBuf::from("/nonexistent/escalator/ca.pem"));
        s.tls.amqp.amqp_client_key_file = Some(std::path::PathBuf::from("/nonexistent/key.pem"));
        let err = s.validate().unwrap_err();
        assert!(
            err.contains("ESCALATOR_REDIS_CA_FILE")
                && err.contains("ESCALATOR_AMQP_CLIENT_KEY_FILE is set but ESCALATOR_AMQP_CLIENT_CERT_FILE is not"),
            "{err}"
        );
    }

    #[test]
    fn each_org_gets_half_the_concurrency_unless_told() {
        let mut s = Settings::from_env().unwrap();
        s.concurrency = 32;
        s.org_concurrency = None;
        assert_eq!(s.org_concurrency(), 16);
        s.concurrency = 1;
        assert_eq!(s.org_concurrency(), 1);
        s.concurrency = 8;
        s.org_concurrency = Some(9);
        let err = s.validate().unwrap_err();
        assert!(err.contains("ESCALATOR_ORG_CONCURRENCY"), "{err}");
        s.org_concurrency = Some(8);
        assert!(s.validate().is_ok());
        assert_eq!(s.org_concurrency(), 8);
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:<redacted>@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:<redacted>@h:1/0");
    }

    #[test]
    fn redacts_passwords_in_urls_that_do_not_parse() {
        for (bad, shown) in [
            (
                "amqp//guest:CANARY@h:5672/%2f",
                "amqp//guest:<redacted>@h:5672/%2f",
            ),
            ("amqp:guest:CANARY@h", "<redacted>@h"),
            ("amqp://guest:CANARY/x@h:1/", "amqp://guest:<redacted>@h:1/"),
            ("redis://:CANARY@@h:1", "redis://:<redacted>@h:1"),
            ("redis://CANARY@h", "redis://<redacted>@h"),
            (" amqp://u:CANARY @h", " amqp://u:<redacted>@h"),
        ] {
            let r = redact_url(bad);
            assert!(!r.contains("CANARY"), "{bad} -> {r}");
            assert_eq!(r, shown);
        }
    }

    #[test]
    fn defaults_ignore_the_environment() {
        // Every field has a default; the environment of the test run does not matter.
        let d = Settings::defaults();
        assert_eq!(d.shards, DEFAULT_SHARDS);
        assert_eq!(d.amqp_url, DEFAULT_AMQP_URL);
        assert!(d.validate().is_ok());
    }
}
