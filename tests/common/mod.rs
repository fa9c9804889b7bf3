//! Shared test harness: every test gets its own RabbitMQ vhost and Redis key
//! prefix, so tests run in parallel and leave nothing behind.
#![allow(dead_code)]

pub mod openapi;

use escalator::amqp;
use escalator::config::Config;
use escalator::contract::{OutboundEvent, OutboundPayload};
use escalator::sandbox::{Listener, Sandbox};
use escalator::scratch::VhostAdmin;
use escalator::settings::Settings;
use escalator::sim::{self, SimHandle, SimSettings};
use escalator::store::Store;
use escalator::topology::DEAD_LETTER_QUEUE;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::{FieldTable, ShortString};
use serde_json::{Value, json};
use std::time::Duration;

/// The RabbitMQ management API, used to make the tests' vhosts when it answers.
pub const MGMT: &str = escalator::scratch::MANAGEMENT_URL;
pub const WAIT: Duration = Duration::from_secs(30);
/// Set to `rabbitmqctl` to make every vhost with rabbitmqctl even when the
/// management API answers (the path of a fresh RabbitMQ install).
pub const VHOST_ADMIN_ENV: &str = "ESCALATOR_TEST_VHOST_ADMIN";

pub struct TestEnv {
    pub name: String,
    pub vhost: String,
    pub settings: Settings,
    /// How this test's vhost was made (and is removed).
    pub admin: VhostAdmin,
    cleaned: bool,
}

fn mgmt_vhost_path(vhost: &str) -> String {
    vhost.replace('/', "%2F")
}

/// Whether the management API answered the first test that asked (the
/// answer is the same for every test of the run).
static USE_MANAGEMENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

const GUEST_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn vhost_admin() -> VhostAdmin {
    if std::env::var(VHOST_ADMIN_ENV).is_ok_and(|v| v == "rabbitmqctl") {
        return VhostAdmin::rabbitmqctl(GUEST_URL);
    }
    let use_management = match USE_MANAGEMENT.get() {
        Some(m) => *m,
        None => {
            let detected = VhostAdmin::detect(MGMT, GUEST_URL)
                .await
                .unwrap_or_else(|e| panic!("tests need RabbitMQ: {e}"));
            *USE_MANAGEMENT.get_or_init(|| matches!(detected, VhostAdmin::Management { .. }))
        }
    };
    if use_management {
        VhostAdmin::management(MGMT, GUEST_URL).unwrap()
    } else {
        VhostAdmin::rabbitmqctl(GUEST_URL)
    }
}

impl TestEnv {
    /// A fresh vhost and key prefix, with settings tuned for fast tests
    /// (short backoffs and retry delay, 4 shards). The vhost is made with the
    /// management API when it answers, else with rabbitmqctl.
    pub async fn new(name: &str) -> TestEnv {
        let admin = vhost_admin().await;
        Self::new_with(name, admin).await
    }

    /// [`TestEnv::new`], with the vhost made (and removed) by `admin`.
    pub async fn new_with(name: &str, admin: VhostAdmin) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let vhost = format!("escalator-test-{name}-{id}");
        admin
            .create_vhost(&vhost)
            .await
            .unwrap_or_else(|e| panic!("cannot create the test vhost {vhost}: {e}"));
        let mut settings = Settings::from_env().unwrap();
        settings.amqp_url = format!(
            "amqp://guest:guest@127.0.0.1:5672/{}",
            mgmt_vhost_path(&vhost)
        );
        settings.key_prefix = format!("escalator-test:{name}:{id}");
        settings.shards = 4;
        settings.prefetch = 16;
        settings.concurrency = 16;
        settings.inline_attempts = 4;
        settings.backoff_min_ms = 20;
        settings.backoff_max_ms = 100;
        settings.max_inline_wait_ms = 5_000;
        settings.retry_delay_ms = 300;
        settings.broker_attempts = 3;
        settings.shutdown_grace_ms = 5_000;
        // Any free port: several workers of a test run listen at once.
        settings.metrics_listen = "127.0.0.1:0".to_string();
        TestEnv {
            name: name.to_string(),
            vhost,
            settings,
            admin,
            cleaned: false,
        }
    }

    /// Start the simulator and an in-process worker with the sandbox orgs.
    pub async fn sandbox(&self) -> Sandbox {
        Sandbox::start(self.settings.clone(), escalator::sandbox::sandbox_config)
            .await
            .unwrap()
    }

    pub async fn sandbox_with(
        &self,
        settings: Settings,
        config: impl FnOnce(&str) -> String,
    ) -> Sandbox {
        Sandbox::start(settings, config).await.unwrap()
    }

    pub async fn sim(&self) -> SimHandle {
        sim::start(([127, 0, 0, 1], 0).into(), SimSettings::default())
            .await
            .unwrap()
    }

    pub async fn store(&self) -> Store {
        Store::connect(
            &self.settings.redis_url,
            &self.settings.key_prefix,
            Duration::from_secs(3600),
        )
        .await
        .unwrap()
    }

    pub fn config(&self, sim_url: &str) -> Config {
        Config::parse(
            &escalator::sandbox::sandbox_config(sim_url),
            "test",
            &|_| None,
        )
        .unwrap()
    }

    /// Close every client connection of this test's vhost, as an operator's
    /// `rabbitmqctl close_all_connections` would (but for this vhost only).
    pub async fn close_connections(&self) {
        let vhost = self.vhost.clone();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new("rabbitmqctl")
                .args([
                    "close_all_connections",
                    "--vhost",
                    &vhost,
                    "--limit",
                    "1000",
                    "test closes connections",
                ])
                .stdout(std::process::Stdio::null())
                .status()
        })
        .await
        .unwrap()
        .expect("rabbitmqctl is needed for this test");
        assert!(status.success(), "rabbitmqctl close_all_connections failed");
    }

    /// Messages ready in a queue of this vhost (exact: a passive declare).
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = amqp::connect(&self.settings.amqp_url, "test-depth")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                ShortString::from(queue),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, ShortString::from("bye")).await;
        q.message_count()
    }

    /// Wait until `queue` has no ready messages.
    pub async fn until_drained(&self, queue: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.queue_depth(queue).await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} not drained within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Consume the dead-letter queue.
    pub async fn dead_letters(&self) -> DeadLetters {
        let conn = amqp::connect(&self.settings.amqp_url, "test-dlq")
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                ShortString::from(DEAD_LETTER_QUEUE),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        DeadLetters {
            _conn: conn,
            consumer,
        }
    }

    /// Delete the vhost and every Redis key of the test.
    pub async fn cleanup(mut self) {
        self.cleaned = true;
        remove_test_state(&self.admin, &self.vhost, &self.settings).await;
    }
}

/// A test that panicked before `cleanup` still leaves nothing behind.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let (vhost, settings) = (self.vhost.clone(), self.settings.clone());
        let admin = match &self.admin {
            // A fresh client: the test's runtime may be gone.
            VhostAdmin::Management { .. } => VhostAdmin::management(MGMT, GUEST_URL).ok(),
            other => Some(other.clone()),
        };
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            if let Some(admin) = admin {
                rt.block_on(remove_test_state(&admin, &vhost, &settings));
            }
        })
        .join();
    }
}

async fn remove_test_state(admin: &VhostAdmin, vhost: &str, settings: &Settings) {
    if let Ok(store) = Store::connect(
        &settings.redis_url,
        &settings.key_prefix,
        Duration::from_secs(60),
    )
    .await
    {
        let _ = store.delete_all().await;
    }
    let _ = admin.delete_vhost(vhost).await;
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct DeadLetters {
    _conn: lapin::Connection,
    consumer: lapin::Consumer,
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub headers: std::collections::BTreeMap<String, String>,
}

impl DeadLetters {
    pub async fn next(&mut self) -> DeadLetter {
        let d = tokio::time::timeout(WAIT, self.consumer.next())
            .await
            .expect("no dead letter within 30 s")
            .unwrap()
            .unwrap();
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        let mut headers = std::collections::BTreeMap::new();
        if let Some(h) = d.properties.headers() {
            for (k, v) in h.inner() {
                let v = match v {
                    lapin::types::AMQPValue::LongString(s) => {
                        String::from_utf8_lossy(s.as_bytes()).into_owned()
                    }
                    other => format!("{other:?}"),
                };
                headers.insert(k.as_str().to_string(), v);
            }
        }
        DeadLetter {
            routing_key: d.routing_key.as_str().to_string(),
            body: d.data.clone(),
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string()),
            headers,
        }
    }
}

/// The next event of `conversation` (others are skipped).
pub async fn next_event(listener: &mut Listener, conversation: &str) -> OutboundEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = listener
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no outbound event for {conversation} within 30 s"));
        if e.conversation_id == conversation {
            return e;
        }
    }
}

/// Wait for one event of each of `conversations`, in any order.
pub async fn next_events(listener: &mut Listener, conversations: &[&str]) -> Vec<OutboundEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got: Vec<OutboundEvent> = Vec::new();
    while conversations
        .iter()
        .any(|c| !got.iter().any(|e| e.conversation_id == *c))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = listener
            .next(left)
            .await
            .unwrap_or_else(|| panic!("missing events for {conversations:?} after 30 s"));
        if conversations.contains(&e.conversation_id.as_str())
            && !got.iter().any(|g| g.conversation_id == e.conversation_id)
        {
            got.push(e);
        }
    }
    got
}

pub fn created(e: &OutboundEvent) -> &escalator::contract::EscalationCreated {
    match &e.payload {
        OutboundPayload::EscalationCreated(c) => c,
        other => panic!("expected escalation.created, got {other:?}"),
    }
}

pub fn escalation(org: &str, conv: &str) -> Value {
    json!({
        "org_id": org,
        "conversation_id": conv,
        "mode": "ticket",
        "customer": { "id": "cust-1", "name": "Grace <Hopper>", "email": "grace@example.com" },
        "subject": "Cannot log in",
        "summary": "Customer is locked out after a password reset.",
        "transcript": [
            { "role": "customer", "text": "I can't log in <script>alert(1)</script>", "sent_at": "2026-11-21T10:00:00Z" },
            { "role": "ai", "text": "Let me connect you with a person.", "sent_at": "2026-11-21T10:00:05Z" }
        ],
        "context": { "plan": "pro" },
        "requested_at": "2026-11-21T10:00:06Z"
    })
}

pub fn customer_message(org: &str, conv: &str, id: &str, text: &str) -> Value {
    json!({
        "org_id": org, "conversation_id": conv, "message_id": id,
        "text": text, "sent_at": "2026-11-21T10:01:00Z"
    })
}

/// Wait until the worker has handled inbound message `dedupe_id` of `conv`
/// (its dedupe marker is written after its outbound events are confirmed).
pub async fn until_done(env: &TestEnv, org: &str, conv: &str, dedupe_id: &str) {
    let store = env.store().await;
    let mut c = store.connection();
    let key = format!(
        "{}:conv:{{{org}:{conv}}}:done:{dedupe_id}",
        env.settings.key_prefix
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        if exists {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{dedupe_id} of {conv} not handled within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `check` holds, re-checking whenever the simulator answers a request.
pub async fn until_sim<F: FnMut() -> bool>(sim: &SimHandle, mut check: F) {
    let mut rx = sim.subscribe();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left.min(Duration::from_millis(200)), rx.recv()).await {
            Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {}
            _ => panic!("condition not reached within 30 s"),
        }
    }
}

// ------------------------------------------------------------ processes

/// A worker running as its own OS process (`escalator worker`).
pub struct WorkerProcess {
    pub child: tokio::process::Child,
    pub log: std::path::PathBuf,
}

impl TestEnv {
    /// Declare the topology (so publishes are routed before any worker runs).
    pub async fn declare_topology(&self) {
        let conn = amqp::connect(&self.settings.amqp_url, "test-topology")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        escalator::topology::Topology::new(self.settings.shards, self.settings.delivery_limit)
            .declare(&ch)
            .await
            .unwrap();
        let _ = conn.close(200, ShortString::from("bye")).await;
    }

    /// Env vars that give a worker process this test's settings.
    pub fn worker_env(&self, settings: &Settings) -> Vec<(String, String)> {
        let s = settings;
        [
            ("ESCALATOR_AMQP_URL", s.amqp_url.clone()),
            ("ESCALATOR_REDIS_URL", s.redis_url.clone()),
            ("ESCALATOR_KEY_PREFIX", s.key_prefix.clone()),
            ("ESCALATOR_SHARDS", s.shards.to_string()),
            ("ESCALATOR_PREFETCH", s.prefetch.to_string()),
            ("ESCALATOR_CONCURRENCY", s.concurrency.to_string()),
            ("ESCALATOR_INLINE_ATTEMPTS", s.inline_attempts.to_string()),
            ("ESCALATOR_BACKOFF_MIN_MS", s.backoff_min_ms.to_string()),
            ("ESCALATOR_BACKOFF_MAX_MS", s.backoff_max_ms.to_string()),
            (
                "ESCALATOR_MAX_INLINE_WAIT_MS",
                s.max_inline_wait_ms.to_string(),
            ),
            ("ESCALATOR_RETRY_DELAY_MS", s.retry_delay_ms.to_string()),
            ("ESCALATOR_BROKER_ATTEMPTS", s.broker_attempts.to_string()),
            (
                "ESCALATOR_SHUTDOWN_GRACE_MS",
                s.shutdown_grace_ms.to_string(),
            ),
            ("ESCALATOR_METRICS_LISTEN", s.metrics_listen.clone()),
            ("RUST_LOG", "info".to_string()),
            // The tests read the worker's log as text (off a terminal the
            // default is JSON lines).
            ("ESCALATOR_LOG_FORMAT", "text".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Start `escalator worker` with the sandbox orgs pointing at `sim_url`.
    pub fn spawn_worker(&self, sim_url: &str, dir: &std::path::Path, name: &str) -> WorkerProcess {
        self.spawn_worker_with(&escalator::sandbox::sandbox_config(sim_url), dir, name)
    }

    /// Start `escalator worker` with this org config text.
    pub fn spawn_worker_with(
        &self,
        config_text: &str,
        dir: &std::path::Path,
        name: &str,
    ) -> WorkerProcess {
        self.spawn_worker_env(config_text, dir, name, &[])
    }

    /// Start `escalator worker` with this org config text and these
    /// environment variables on top of the test's settings (e.g. `RUST_LOG`).
    pub fn spawn_worker_env(
        &self,
        config_text: &str,
        dir: &std::path::Path,
        name: &str,
        overrides: &[(&str, &str)],
    ) -> WorkerProcess {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_escalator"))
            .arg("worker")
            .arg("--config")
            .arg(&config)
            .envs(self.worker_env(&self.settings))
            .envs(overrides.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        WorkerProcess { child, log }
    }
}

/// Wait until two freshly started workers share the shards: both consuming,
/// and neither active on the other's share (if one started alone, wait for
/// its hand-over).
pub async fn until_shards_split(a: &WorkerProcess, b: &WorkerProcess) {
    let deadline = tokio::time::Instant::now() + WAIT;
    // Some(true): started with a share of the (4) shards; Some(false): with all of them.
    let started_with_share = |log: &str| {
        log.lines()
            .find(|l| l.contains("connected to RabbitMQ, consuming"))
            .map(|l| !l.contains("preferred_shards=[0, 1, 2, 3]"))
    };
    loop {
        let (la, lb) = (a.log_text(), b.log_text());
        let (sa, sb) = (started_with_share(&la), started_with_share(&lb));
        let both_shared = sa == Some(true) && sb == Some(true);
        let handed_over = la.contains("shard handed over") || lb.contains("shard handed over");
        if sa.is_some() && sb.is_some() && (both_shared || handed_over) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers did not split the shards:\n{la}\n{lb}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl WorkerProcess {
    pub fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// SIGKILL: no chance to ack or clean up.
    pub async fn kill9(mut self) {
        self.signal("KILL");
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("worker did not exit within 30 s after SIGTERM")
            .unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A private redis-server (AOF on, fsync always) on a free port, for tests
/// that restart Redis without disturbing others.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = PrivateRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready when it answers PING.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"PING\r\n");
                let mut buf = [0u8; 7];
                if s.read(&mut buf)
                    .is_ok_and(|n| n > 0 && buf.starts_with(b"+PONG"))
                {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "private redis did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
