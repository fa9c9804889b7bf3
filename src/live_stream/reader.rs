//! One stream reader per live conversation this worker owns.
//!
//! Loop: load the cursor; renew the token when it is close to expiry;
//! connect with `Last-Event-Id`; backfill the entries since the last one
//! forwarded (the server's replay may be short or empty); then forward live
//! entries until the stream drops, goes silent, the token needs renewing, or
//! the reader is stopped. Every forward is confirmed by the broker before the
//! cursor moves, so a reader that dies loses nothing: the next one starts at
//! the cursor, and the lane's dedupe drops what was forwarded twice.
use super::StreamSettings;
use super::registry::StreamKey;
use super::session::{Cursor, Sessions};
use crate::amqp::{Publisher, json_properties};
use crate::contract::{InboundKind, SalesforceStreamEvent, StreamWhat};
use crate::error::{InfraError, ProviderErrorKind};
use crate::pipeline::meta::Meta;
use crate::provider::live::miaw::{
    ConversationEntry, MiawClient, MiawToken, SenderRole, StreamItem,
};
use crate::topology::{WORK_EXCHANGE, shard_key, shard_of};
use chrono::Utc;
use futures_util::StreamExt;
use lapin::types::ShortString;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What a reader needs.
pub struct Reader {
    pub key: StreamKey,
    pub client: MiawClient,
    pub sessions: Sessions,
    pub publisher: Publisher,
    pub settings: StreamSettings,
}

/// Why a reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Told to stop (hand-over, shutdown, the conversation ended).
    Stopped,
    /// The messaging session cannot be reached any more; the lane was told.
    Lost,
}

/// A running reader, owned by the worker's stream table.
pub struct Handle {
    stop: CancellationToken,
    connected: watch::Receiver<bool>,
    task: JoinHandle<End>,
}

impl Handle {
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
    pub fn stop(self) {
        self.stop.cancel();
    }
    pub fn ended_lost(&self) -> bool {
        // Only asked of finished tasks; a finished JoinHandle cannot be
        // polled without await here, so the stop flag tells the two apart.
        self.task.is_finished() && !self.stop.is_cancelled()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // A reader nobody holds any more must not go on streaming.
        self.stop.cancel();
    }
}

pub fn spawn(reader: Reader) -> Handle {
    let stop = CancellationToken::new();
    let (tx, rx) = watch::channel(false);
    let span = tracing::info_span!(
        "stream",
        org_id = %reader.key.org_id,
        conversation_id = %reader.key.conversation_id,
        provider = "salesforce",
        mode = "live",
    );
    let task = tokio::spawn(run(reader, stop.clone(), tx).instrument(span));
    crate::observability::metrics::streams_open(1);
    Handle {
        stop,
        connected: rx,
        task,
    }
}

/// Salesforce's sample client: 1 s × 1.5^n, capped at 30 s.
fn backoff(attempt: u32) -> Duration {
    let secs = 1.5f64.powi(attempt.min(12) as i32);
    let jitter = 0.8 + rand::random::<f64>() * 0.4;
    Duration::from_secs_f64((secs * jitter).min(30.0))
}

/// Renew when less than this is left: a fifth of the lifetime, at least
/// 30 s, at most half of it.
fn renew_margin(t: &MiawToken) -> Duration {
    let life = (t.expires_at - t.issued_at)
        .to_std()
        .unwrap_or(Duration::from_secs(3600));
    (life / 5).max(Duration::from_secs(30)).min(life / 2)
}

async fn run(reader: Reader, stop: CancellationToken, connected: watch::Sender<bool>) -> End {
    let end = tokio::select! {
        end = read(&reader, &connected) => end,
        () = stop.cancelled() => End::Stopped,
    };
    crate::observability::metrics::streams_open(-1);
    tracing::debug!(end = ?end, "stream reader ended");
    end
}

enum Step {
    /// Connect again (dropped, silent, renewed token), after this pause.
    Reconnect(Duration),
    Lost(String),
}

async fn read(r: &Reader, connected: &watch::Sender<bool>) -> End {
    let mut failures = 0u32;
    let mut recent = Recent::default();
    loop {
        let step = match Box::pin(session(r, connected, &mut recent, &mut failures)).await {
            Ok(step) => step,
            Err(e) => {
                tracing::warn!(error = %e, "stream reader: infrastructure error; reconnecting");
                Step::Reconnect(backoff(failures))
            }
        };
        match step {
            Step::Reconnect(pause) => {
                failures = failures.saturating_add(1);
                connected.send_replace(false);
                tokio::time::sleep(pause).await;
            }
            Step::Lost(reason) => {
                tracing::warn!(reason = %reason, "the messaging session is lost: the conversation falls back to a Case");
                let lost = StreamWhat::SessionLost { reason };
                let id = format!("{}lost", super::DEDUPE_PREFIX);
                loop {
                    match forward(r, lost.clone(), &id).await {
                        Ok(()) => return End::Lost,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot hand the lost session to the lane yet");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                    }
                }
            }
        }
    }
}

/// One connection's life.
async fn session(
    r: &Reader,
    connected: &watch::Sender<bool>,
    recent: &mut Recent,
    failures: &mut u32,
) -> Result<Step, InfraError> {
    let (org, conv) = (r.key.org_id.as_str(), r.key.conversation_id.as_str());
    let Cursor {
        token,
        conversation,
        last_event_id,
        mut last_entry_ms,
    } = Box::pin(r.sessions.cursor(org, conv)).await?;
    let Some(mut token) = token else {
        return Ok(Step::Lost(
            "no access token is stored for the conversation".into(),
        ));
    };
    if token.expires_within(renew_margin(&token)) {
        match Box::pin(renew(r, &token)).await? {
            Ok(t) => token = t,
            Err(step) => return Ok(step),
        }
    }
    let mut stream = match Box::pin(r.client.open_stream(&token, last_event_id.as_deref())).await {
        Ok(s) => s,
        Err(e) if e.kind == ProviderErrorKind::SessionExpired => {
            return Ok(match Box::pin(renew(r, &token)).await? {
                Ok(_) => Step::Reconnect(Duration::ZERO),
                Err(step) => step,
            });
        }
        Err(e) if e.is_transient() => {
            tracing::info!(error = %e, "stream connect failed: retrying");
            return Ok(Step::Reconnect(
                backoff(*failures).max(e.retry_after.unwrap_or_default()),
            ));
        }
        Err(e) => return Ok(Step::Lost(format!("the event stream refused us: {e}"))),
    };
    connected.send_replace(true);
    crate::observability::metrics::stream_connect();
    // Backfill: whatever happened while no stream was open (also when the
    // server replays nothing), oldest first, before the live events.
    if let Some(conversation) = conversation {
        match Box::pin(r.client.entries(&token, &conversation, last_entry_ms)).await {
            Ok(entries) => {
                for entry in entries {
                    let at = entry.transcripted_at_ms;
                    if Box::pin(relay(r, recent, "backfill", entry)).await? {
                        last_entry_ms = last_entry_ms.max(at);
                        r.sessions.advance(org, conv, None, last_entry_ms).await?;
                    }
                }
            }
            Err(e) => tracing::info!(error = %e, "backfill failed: relying on the stream's replay"),
        }
    }
    *failures = 0;
    let renew_at = tokio::time::Instant::now()
        + (token.expires_at
            - Utc::now()
            - chrono::Duration::from_std(renew_margin(&token)).unwrap_or_default())
        .to_std()
        .unwrap_or(Duration::ZERO);
    loop {
        let next = tokio::select! {
            () = tokio::time::sleep_until(renew_at) => {
                return Ok(match Box::pin(renew(r, &token)).await? {
                    // Reconnect with the new token before the old one ends the stream.
                    Ok(_) => Step::Reconnect(Duration::ZERO),
                    Err(step) => step,
                });
            }
            next = tokio::time::timeout(r.settings.silence, stream.next()) => next,
        };
        let item = match next {
            Err(_) => {
                tracing::info!(
                    silent_ms = r.settings.silence.as_millis() as u64,
                    "the stream went silent: reconnecting"
                );
                return Ok(Step::Reconnect(Duration::ZERO));
            }
            Ok(None) => {
                tracing::info!("the stream ended: reconnecting");
                return Ok(Step::Reconnect(backoff(0)));
            }
            Ok(Some(Err(e))) => {
                tracing::info!(error = %e, "the stream broke: reconnecting");
                return Ok(Step::Reconnect(backoff(0)));
            }
            Ok(Some(Ok(item))) => item,
        };
        match item {
            StreamItem::Ping => {}
            StreamItem::Error { expired } => {
                tracing::info!(expired, "the stream reported an error: reconnecting");
                if expired {
                    return Ok(match Box::pin(renew(r, &token)).await? {
                        Ok(_) => Step::Reconnect(Duration::ZERO),
                        Err(step) => step,
                    });
                }
                return Ok(Step::Reconnect(backoff(0)));
            }
            StreamItem::Other {
                event_id,
                event_type,
            } => {
                tracing::debug!(event_type = %event_type, "stream event of a type not handled: ignored");
                r.sessions
                    .advance(org, conv, event_id.as_deref(), None)
                    .await?;
            }
            StreamItem::Entry {
                event_id,
                conversation_id,
                entry,
                ..
            } => {
                let ours = conversation
                    .is_some_and(|c| c.to_string() == conversation_id.to_ascii_lowercase());
                let at = entry.transcripted_at_ms;
                let forwarded = ours && Box::pin(relay(r, recent, "stream", entry)).await?;
                if forwarded {
                    last_entry_ms = last_entry_ms.max(at);
                }
                r.sessions
                    .advance(
                        org,
                        conv,
                        event_id.as_deref(),
                        forwarded.then_some(last_entry_ms).flatten(),
                    )
                    .await?;
            }
        }
    }
}

/// Renew the token through the continuation endpoint and store it. `Err`:
/// what to do instead (retry later, or the session is lost).
async fn renew(r: &Reader, token: &MiawToken) -> Result<Result<MiawToken, Step>, InfraError> {
    let (org, conv) = (r.key.org_id.as_str(), r.key.conversation_id.as_str());
    // The lane may have renewed it already.
    if let Some(stored) = r.sessions.token(org, conv).await?
        && stored.expires_at > token.expires_at
        && !stored.expires_within(renew_margin(&stored))
    {
        return Ok(Ok(stored));
    }
    match r.client.continuation_token(token).await {
        Ok(t) => {
            r.sessions.save_token(org, conv, &t).await?;
            crate::observability::metrics::messaging_token_renewal("renewed");
            tracing::info!("access token renewed");
            Ok(Ok(t))
        }
        Err(e) if e.is_transient() && token.expires_at > Utc::now() => {
            tracing::info!(error = %e, "token renewal failed: retrying");
            Ok(Err(Step::Reconnect(
                backoff(1).max(e.retry_after.unwrap_or_default()),
            )))
        }
        Err(e) => {
            crate::observability::metrics::messaging_token_renewal("failed");
            Ok(Err(Step::Lost(format!(
                "the access token could not be renewed: {e}"
            ))))
        }
    }
}

/// Forward one entry to the conversation's lane unless it is our own echo
/// or was just forwarded. Whether it was forwarded.
async fn relay(
    r: &Reader,
    recent: &mut Recent,
    source: &'static str,
    entry: ConversationEntry,
) -> Result<bool, InfraError> {
    if entry.sender_role == SenderRole::EndUser || recent.contains(&entry.identifier) {
        return Ok(false);
    }
    let id = format!("{}entry:{}", super::DEDUPE_PREFIX, entry.identifier);
    let identifier = entry.identifier.clone();
    let event_type = entry_type(&entry);
    let value = serde_json::to_value(&entry)
        .map_err(|e| InfraError::Corrupt(format!("conversation entry: {e}")))?;
    forward(
        r,
        StreamWhat::Entry {
            event_type: event_type.to_string(),
            entry: value,
        },
        &id,
    )
    .await?;
    tracing::debug!(
        source,
        event_type,
        "stream entry forwarded to the conversation's lane"
    );
    recent.insert(identifier);
    Ok(true)
}

fn entry_type(e: &ConversationEntry) -> &'static str {
    use crate::provider::live::miaw::EntryKind as K;
    match &e.kind {
        K::Message { .. } => "Message",
        K::ParticipantChanged(_) => "ParticipantChanged",
        K::RoutingResult { .. } => "RoutingResult",
        K::Typing(true) => "TypingStartedIndicator",
        K::Typing(false) => "TypingStoppedIndicator",
        K::SessionStatus { .. } => "SessionStatusChanged",
        K::CloseConversation => "CloseConversation",
        K::QueuePosition(_) => "QueuePosition",
        K::Other(_) => "Other",
    }
}

/// Publish to the conversation's shard, confirmed.
async fn forward(r: &Reader, what: StreamWhat, dedupe_id: &str) -> Result<(), InfraError> {
    let (org, conv) = (r.key.org_id.as_str(), r.key.conversation_id.as_str());
    let event = SalesforceStreamEvent {
        org_id: org.to_string(),
        conversation_id: conv.to_string(),
        received_at: Utc::now(),
        what,
    };
    let body = serde_json::to_vec(&event)
        .map_err(|e| InfraError::Corrupt(format!("stream event: {e}")))?;
    let dedupe_id = if dedupe_id.ends_with("lost") {
        format!("{dedupe_id}:{conv}")
    } else {
        dedupe_id.to_string()
    };
    let meta = Meta {
        routing_key: InboundKind::SalesforceStream.routing_key().to_string(),
        dedupe_id: dedupe_id.clone(),
        org_id: org.to_string(),
        conversation_id: conv.to_string(),
        ..Meta::default()
    };
    let props = meta.write(json_properties().with_message_id(ShortString::from(dedupe_id)));
    let props = crate::trace_context::onto_amqp(props);
    let shard = shard_of(org, conv, r.settings.shards);
    r.publisher
        .publish(WORK_EXCHANGE, &shard_key(shard), &body, props)
        .await
}

/// The identifiers forwarded last (a reconnect's replay and backfill
/// overlap); small, and empty while a stream is idle.
#[derive(Default)]
struct Recent(VecDeque<String>);

impl Recent {
    const MAX: usize = 64;
    fn contains(&self, id: &str) -> bool {
        self.0.iter().any(|x| x == id)
    }
    fn insert(&mut self, id: String) {
        if self.0.len() == Self::MAX {
            self.0.pop_front();
        }
        self.0.push_back(id);
    }
}
