//! Confirmed publishing for the ingress: one long-lived connection and one
//! confirm channel, kept up by a background task that reconnects with
//! backoff, never per request.
//!
//! Requests publish concurrently on the shared channel and each awaits only
//! its own confirm (the broker confirms in order, lapin matches them up), so
//! one slow confirm does not hold the others back. A request that finds no
//! usable session, or whose publish fails, answers 503 at once; a failure
//! that leaves the channel unusable (closed, confirms stuck) tells the
//! background task to rebuild the session.
use crate::amqp::{self, Publisher};
use crate::error::InfraError;
use crate::topology::INBOUND_EXCHANGE;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// First wait after a failed connect; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the keeper looks at the session even when nobody reported a
/// failure (a connection the broker closed, a blocked connection).
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// The longest a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a publish did not go through (every case is answered 503).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no usable connection to RabbitMQ")]
    NotConnected,
    /// The exchange is missing or no queue is bound to it.
    #[error(
        "{INBOUND_EXCHANGE} is missing or has no queue bound: run the worker or `escalator topology` (the ingress does not declare the topology)"
    )]
    TopologyMissing,
    #[error(transparent)]
    Infra(#[from] InfraError),
    #[error("the broker did not confirm within {0} ms")]
    Timeout(u64),
}

struct Session {
    generation: u64,
    conn: Arc<Connection>,
    publisher: Publisher,
    broken: AtomicBool,
}

impl Session {
    /// Whether the session is still worth keeping (else it is rebuilt).
    fn alive(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
            && self.conn.status().connected()
            && self.publisher.channel().status().connected()
    }

    /// Whether a publish can go through now: alive, and not blocked by a
    /// broker resource alarm (publishes would hang until it clears).
    fn usable(&self) -> bool {
        self.alive() && !self.conn.status().blocked()
    }
}

struct Inner {
    url: String,
    confirm_timeout: Duration,
    current: RwLock<Option<Arc<Session>>>,
    wake: Notify,
    generation: AtomicU64,
    /// Whether the missing-topology hint was logged since the last success.
    topology_hint_logged: AtomicBool,
}

/// The ingress's handle on RabbitMQ (cheap to clone).
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl Broker {
    /// Make the first connection attempt (so that a reachable broker is
    /// usable when this returns), then keep the session up in the background
    /// until `stop`. An unreachable broker is logged, not fatal: the
    /// endpoint answers 503 and `/readyz` fails until it is reachable.
    pub async fn start(
        url: String,
        confirm_timeout: Duration,
        stop: CancellationToken,
    ) -> (Broker, tokio::task::JoinHandle<()>) {
        let broker = Broker {
            inner: Arc::new(Inner {
                url,
                confirm_timeout,
                current: RwLock::new(None),
                wake: Notify::new(),
                generation: AtomicU64::new(0),
                topology_hint_logged: AtomicBool::new(false),
            }),
        };
        let first = broker.open(None).await;
        let keeper = broker.clone();
        let task = tokio::spawn(async move { keeper.keep(first, stop).await });
        (broker, task)
    }

    /// Whether a publish can be attempted now (`/readyz`).
    pub fn ready(&self) -> bool {
        self.session().is_some_and(|s| s.usable())
    }

    fn session(&self) -> Option<Arc<Session>> {
        self.inner.current.read().ok().and_then(|g| g.clone())
    }

    /// Publish to `escalator.inbound` (mandatory, confirmed) and wait for
    /// the broker's confirm, at most the confirm timeout.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let session = self
            .session()
            .filter(|s| s.usable())
            .ok_or(PublishError::NotConnected)?;
        let timeout = self.inner.confirm_timeout;
        let attempt = async {
            session
                .publisher
                .start(INBOUND_EXCHANGE, routing_key, body, props)
                .await?
                .wait()
                .await
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r.map_err(classify),
            Err(_) => Err(PublishError::Timeout(timeout.as_millis() as u64)),
        };
        match &result {
            Ok(()) => self
                .inner
                .topology_hint_logged
                .store(false, Ordering::Relaxed),
            Err(PublishError::TopologyMissing) => {
                if !self
                    .inner
                    .topology_hint_logged
                    .swap(true, Ordering::Relaxed)
                {
                    tracing::error!(
                        exchange = INBOUND_EXCHANGE,
                        "webhooks cannot be queued: {INBOUND_EXCHANGE} is missing or has no queue bound. \
                         Run the worker (it declares the topology) or `escalator topology`"
                    );
                }
                // A publish to a missing exchange closes the channel.
                if !session.publisher.channel().status().connected() {
                    self.invalidate(&session);
                }
            }
            // Nacked: the broker refused this message (e.g. a full queue);
            // the channel is fine.
            Err(PublishError::Infra(InfraError::PublishNacked(_))) => {}
            // A closed channel, a lost connection, confirms that do not come:
            // the next session starts clean.
            Err(_) => self.invalidate(&session),
        }
        result
    }

    fn invalidate(&self, session: &Session) {
        if !session.broken.swap(true, Ordering::Relaxed) {
            self.inner.wake.notify_one();
        }
    }

    /// Connect (or, when `conn` is still up, only open a new confirm
    /// channel on it) and install the session.
    async fn open(&self, conn: Option<Arc<Connection>>) -> Result<Arc<Session>, String> {
        let url = &self.inner.url;
        let attempt = async {
            let conn = match conn.filter(|c| c.status().connected()) {
                Some(c) => c,
                None => Arc::new(
                    amqp::connect(url, "escalator-ingress")
                        .await
                        .map_err(|e| crate::explain::amqp(url, &e))?,
                ),
            };
            let publisher = Publisher::open(&conn)
                .await
                .map_err(|e| format!("cannot open a confirm channel: {e}"))?
                .with_confirm_timeout(self.inner.confirm_timeout);
            Ok::<_, String>((conn, publisher))
        };
        let (conn, publisher) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| {
                format!(
                    "cannot reach RabbitMQ at {} within {} s",
                    crate::settings::redact_url(url),
                    CONNECT_TIMEOUT.as_secs()
                )
            })??;
        let session = Arc::new(Session {
            generation: self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1,
            conn,
            publisher,
            broken: AtomicBool::new(false),
        });
        if let Ok(mut current) = self.inner.current.write() {
            *current = Some(session.clone());
        }
        tracing::info!(
            session = session.generation,
            "connected to RabbitMQ: publishing webhooks to {INBOUND_EXCHANGE}"
        );
        Ok(session)
    }

    /// The keeper: watch the session, rebuild it when it breaks, back off
    /// while the broker is unreachable; close it on `stop`.
    async fn keep(&self, first: Result<Arc<Session>, String>, stop: CancellationToken) {
        let mut backoff = MIN_BACKOFF;
        let mut state = first;
        loop {
            match state {
                Ok(session) => {
                    backoff = MIN_BACKOFF;
                    while session.alive() {
                        tokio::select! {
                            _ = stop.cancelled() => {
                                self.clear(session.generation);
                                let _ = session.conn.close(200, ShortString::from("bye")).await;
                                return;
                            }
                            _ = self.inner.wake.notified() => {}
                            _ = tokio::time::sleep(WATCH_EVERY) => {}
                        }
                    }
                    self.clear(session.generation);
                    tracing::warn!(
                        session = session.generation,
                        connection_up = session.conn.status().connected(),
                        "RabbitMQ session unusable: webhooks get 503 until it is rebuilt"
                    );
                    let conn = session.conn.clone();
                    let channel = session.publisher.channel();
                    if conn.status().connected() && channel.status().connected() {
                        // Confirms stuck on it: a new channel starts clean.
                        let _ = channel.close(200, ShortString::from("rebuilding")).await;
                    }
                    drop(session);
                    state = self.open(Some(conn)).await;
                }
                Err(e) => {
                    tracing::warn!(
                        retry_in_ms = backoff.as_millis() as u64,
                        "RabbitMQ unavailable: {e}"
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    state = self.open(None).await;
                }
            }
        }
    }

    fn clear(&self, generation: u64) {
        if let Ok(mut current) = self.inner.current.write()
            && current.as_ref().is_some_and(|s| s.generation == generation)
        {
            *current = None;
        }
    }
}

/// A missing exchange (404 NOT_FOUND on the channel) and an unroutable
/// message (no queue bound) both mean the topology is not declared.
fn classify(e: InfraError) -> PublishError {
    match &e {
        InfraError::Unroutable(_) => PublishError::TopologyMissing,
        InfraError::Amqp(err) if is_not_found(err) => PublishError::TopologyMissing,
        _ => PublishError::Infra(e),
    }
}

fn is_not_found(err: &lapin::Error) -> bool {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
        }
        _ => false,
    }
}
