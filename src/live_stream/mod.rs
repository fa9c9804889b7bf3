//! Server-sent-event streams of live Salesforce conversations (Messaging for
//! In-App and Web): one owner per stream across the fleet, resumed from the
//! stored cursor when the owner changes.
//!
//! - [`registry`]: which worker streams which conversation (Redis, with
//!   heartbeats; a dead owner's conversations are claimed by others).
//! - [`assign`]: which live worker should (rendezvous hashing), so
//!   conversations spread over replicas and move little when one joins.
//! - [`supervisor`]: per worker, every tick: heartbeat, claim what this
//!   worker should stream, give up what another should, stop what ended.
//! - [`reader`]: one task per stream: connect with `Last-Event-Id`,
//!   backfill from the entries list, forward each agent-side entry to the
//!   conversation's shard (it is handled in the conversation's lane like any
//!   other message), renew the token before it expires, reconnect a dropped
//!   or silent stream with backoff. It never writes the conversation record.
//! - [`session`]: the per-conversation token and cursor in Redis.
pub mod assign;
pub mod reader;
pub mod registry;
pub mod session;
pub mod supervisor;

use crate::amqp::Publisher;
use crate::error::InfraError;
use crate::provider::Providers;
use crate::store::Store;
use registry::{Registry, StreamKey};
use session::Sessions;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Dedupe ids of the messages the stream reader forwards start with this.
pub const DEDUPE_PREFIX: &str = "miaw:";

/// Tunables of the stream machinery (process settings).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// A stream silent this long (not even a ping) is dead: reconnect.
    pub silence: Duration,
    /// An owner whose heartbeat is older than this is dead: its streams are
    /// taken over. Heartbeats and scans run every quarter of it.
    pub owner_ttl: Duration,
    /// Longest wait for a new stream to connect during a hand-over.
    pub connect_timeout: Duration,
    pub shards: u16,
}

impl StreamSettings {
    pub fn tick(&self) -> Duration {
        self.owner_ttl / 4
    }
    /// A worker that could not renew its heartbeat for this long stops its
    /// streams itself, before anyone may take them over.
    pub fn self_fence(&self) -> Duration {
        self.owner_ttl * 2 / 3
    }
}

/// Handle to this worker's streams. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    shared: Arc<Shared>,
}

struct Shared {
    instance: String,
    settings: StreamSettings,
    registry: Registry,
    sessions: Sessions,
    providers: Providers,
    /// The current AMQP session's publisher (none between sessions).
    publisher: Mutex<Option<Publisher>>,
    readers: Mutex<HashMap<StreamKey, reader::Handle>>,
}

impl Streams {
    pub fn new(
        instance: &str,
        settings: StreamSettings,
        store: &Store,
        providers: Providers,
    ) -> Streams {
        Streams {
            shared: Arc::new(Shared {
                instance: instance.to_string(),
                registry: Registry::new(store),
                sessions: Sessions::new(store),
                settings,
                providers,
                publisher: Mutex::new(None),
                readers: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn sessions(&self) -> &Sessions {
        &self.shared.sessions
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Streams this process holds open now.
    pub fn open_count(&self) -> usize {
        self.shared
            .readers
            .lock()
            .map(|r| r.values().filter(|h| h.is_running()).count())
            .unwrap_or(0)
    }

    /// Register a new live conversation as this worker's, start its stream
    /// and wait until it is connected (the hand-over opens the stream before
    /// it creates the conversation, so that no early event is missed).
    pub async fn open(&self, org: &str, conv: &str) -> Result<(), InfraError> {
        let key = StreamKey::new(org, conv);
        let s = &self.shared;
        let ttl = s.settings.owner_ttl.as_millis() as u64;
        s.registry.heartbeat(&s.instance, ttl).await?;
        if !s.registry.register(&key, &s.instance, ttl).await? {
            tracing::info!("another worker already streams this conversation");
            return Ok(());
        }
        let mut connected = self.start(&key)?;
        let wait = tokio::time::timeout(s.settings.connect_timeout, async {
            while !*connected.borrow_and_update() {
                if connected.changed().await.is_err() {
                    return false;
                }
            }
            true
        })
        .await;
        match wait {
            Ok(true) => Ok(()),
            _ => Err(InfraError::StreamNotConnected),
        }
    }

    /// The conversation ended or fell back to a Case: stop its stream everywhere.
    pub async fn close(&self, org: &str, conv: &str) -> Result<(), InfraError> {
        let key = StreamKey::new(org, conv);
        self.shared.registry.unregister(&key).await?;
        self.stop(&key);
        Ok(())
    }

    /// Start (or find) the reader of `key`; its "connected" flag.
    fn start(&self, key: &StreamKey) -> Result<watch::Receiver<bool>, InfraError> {
        let s = &self.shared;
        let publisher = s
            .publisher
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .ok_or(InfraError::StreamNotConnected)?;
        let mut readers = s
            .readers
            .lock()
            .map_err(|_| InfraError::StreamNotConnected)?;
        if let Some(h) = readers.get(key).filter(|h| h.is_running()) {
            return Ok(h.connected());
        }
        let Some(client) = s.providers.miaw(&key.org_id) else {
            return Err(InfraError::Corrupt(format!(
                "org {} has no Salesforce live chat set up: its stream cannot be opened",
                key.org_id
            )));
        };
        let handle = reader::spawn(reader::Reader {
            key: key.clone(),
            client,
            sessions: s.sessions.clone(),
            publisher,
            settings: s.settings.clone(),
        });
        let connected = handle.connected();
        readers.insert(key.clone(), handle);
        Ok(connected)
    }

    fn stop(&self, key: &StreamKey) {
        if let Ok(mut readers) = self.shared.readers.lock()
            && let Some(h) = readers.remove(key)
        {
            h.stop();
        }
    }

    fn is_running(&self, key: &StreamKey) -> bool {
        self.shared
            .readers
            .lock()
            .map(|r| r.get(key).is_some_and(|h| h.is_running()))
            .unwrap_or(false)
    }

    fn running_keys(&self) -> Vec<StreamKey> {
        self.shared
            .readers
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// A reader that ended because its session was lost is not restarted
    /// while the lane falls back (it unregisters the conversation).
    fn recently_lost(&self, key: &StreamKey) -> bool {
        self.shared
            .readers
            .lock()
            .map(|r| r.get(key).is_some_and(|h| h.ended_lost()))
            .unwrap_or(false)
    }

    /// Forget finished readers, except lost ones (kept as a marker until
    /// their conversation is unregistered).
    fn reap(&self) {
        if let Ok(mut r) = self.shared.readers.lock() {
            r.retain(|_, h| h.is_running() || h.ended_lost());
        }
    }

    fn set_publisher(&self, publisher: Option<Publisher>) {
        if let Ok(mut p) = self.shared.publisher.lock() {
            *p = publisher;
        }
    }

    /// Stop every reader of this process (shutdown, a lapsed heartbeat).
    fn stop_all(&self) -> Vec<StreamKey> {
        let drained: Vec<(StreamKey, reader::Handle)> = match self.shared.readers.lock() {
            Ok(mut r) => r.drain().collect(),
            Err(_) => Vec::new(),
        };
        drained
            .into_iter()
            .map(|(k, h)| {
                h.stop();
                k
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl crate::provider::live::StreamOpener for Streams {
    async fn open(&self, org: &str, conv: &str) -> Result<(), InfraError> {
        Streams::open(self, org, conv).await
    }
}
