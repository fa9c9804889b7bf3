//! Pipelined publishing, collecting arrivals, and the figures made of them.
use super::STALL_TIMEOUT;
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// When a message was handed to the broker client.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub at: Instant,
    pub wall: DateTime<Utc>,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            at: Instant::now(),
            wall: Utc::now(),
        }
    }
}

/// Publish messages `0..n` with at most `in_flight` unconfirmed at a time.
/// `publish(i)` must be lazy (an `async` block or fn): the time stamp of
/// message `i` is taken right before it is first polled. Returns the stamps
/// in message order and when the last confirm arrived.
pub async fn publish_all<F, Fut>(
    n: usize,
    in_flight: usize,
    publish: F,
) -> Result<(Vec<Stamp>, Instant), String>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut stamps: Vec<Option<Stamp>> = vec![None; n];
    let mut confirmed = futures_util::stream::iter(0..n)
        .map(|i| {
            let publish = publish(i);
            async move {
                let stamp = Stamp::now();
                publish
                    .await
                    .map(|()| (i, stamp))
                    .map_err(|e| format!("publishing message {i} failed: {e}"))
            }
        })
        .buffer_unordered(in_flight.max(1));
    while let Some((i, stamp)) = confirmed.try_next().await? {
        stamps[i] = Some(stamp);
    }
    let done = Instant::now();
    let stamps = stamps
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| format!("message {i} was never published")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((stamps, done))
}

/// What a source of outbound messages produced.
pub enum Arrival {
    /// A message about this id (conversation id).
    Event(String),
    /// Something else (e.g. an event of another kind): not counted.
    Ignored,
    /// Nothing arrived within the wait.
    TimedOut,
}

/// The consumer side of a stage: outbound messages, one at a time.
pub trait Source: Send + 'static {
    /// The next message, waiting at most `wait`. `Err` ends the stage.
    fn next(&mut self, wait: Duration) -> impl Future<Output = Result<Arrival, String>> + Send;
}

/// Receive until every id of `expected` has arrived once (time-stamped at
/// arrival), or fail when nothing new came for [`STALL_TIMEOUT`] or the
/// `deadline` passed. Returns the source for further use.
/// What a collector hands back: its source, and when each id arrived.
pub type Collected<S> = Result<(S, HashMap<String, Stamp>), String>;

/// Collect the outbound messages of `ids` in a task of its own, with the
/// stage's deadline.
pub fn spawn_collector<S: Source + Send + 'static>(
    source: S,
    ids: &[String],
    what: &str,
) -> tokio::task::JoinHandle<Collected<S>> {
    let expected: HashSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + super::stage_deadline(ids.len());
    let what = what.to_string();
    tokio::spawn(async move { collect(source, expected, deadline, &what).await })
}

pub async fn collect<S: Source>(
    mut source: S,
    expected: HashSet<String>,
    deadline: Instant,
    what: &str,
) -> Collected<S> {
    let mut received: HashMap<String, Stamp> = HashMap::with_capacity(expected.len());
    let mut progress = Instant::now();
    while received.len() < expected.len() {
        let now = Instant::now();
        let stall_at = progress + STALL_TIMEOUT;
        let until = stall_at.min(deadline);
        let arrival = if now >= until {
            Arrival::TimedOut
        } else {
            source.next(until - now).await?
        };
        match arrival {
            Arrival::Event(id) => {
                if expected.contains(&id) && !received.contains_key(&id) {
                    received.insert(id, Stamp::now());
                    progress = Instant::now();
                }
            }
            Arrival::Ignored => {}
            Arrival::TimedOut => {
                let now = Instant::now();
                if now >= stall_at || now >= deadline {
                    let why = if now >= deadline {
                        "the stage's time limit passed".to_string()
                    } else {
                        format!("none arrived for {} s", STALL_TIMEOUT.as_secs())
                    };
                    return Err(format!(
                        "{what}: only {} of {} expected messages arrived: {why} \
                         (is the worker stuck? rerun with RUST_LOG=info to see its logs)",
                        received.len(),
                        expected.len()
                    ));
                }
            }
        }
    }
    Ok((source, received))
}

/// Throughput and latency of one stage.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub count: usize,
    /// First publish to last arrival.
    pub elapsed: Duration,
    /// First publish to last publish confirm.
    pub publish_elapsed: Duration,
    /// Publish to arrival, sorted.
    pub latencies: Vec<Duration>,
}

impl Measurement {
    /// `ids[i]` was published at `sent[i]`; `received` says when each arrived.
    pub fn new(
        ids: &[String],
        sent: &[Stamp],
        last_confirm: Instant,
        received: &HashMap<String, Stamp>,
    ) -> Result<Measurement, String> {
        let first = sent
            .iter()
            .map(|s| s.at)
            .min()
            .ok_or("nothing was published")?;
        let mut last = first;
        let mut latencies = Vec::with_capacity(ids.len());
        for (id, s) in ids.iter().zip(sent) {
            let r = received
                .get(id)
                .ok_or_else(|| format!("no arrival recorded for {id}"))?;
            latencies.push(r.at.saturating_duration_since(s.at));
            last = last.max(r.at);
        }
        latencies.sort_unstable();
        Ok(Measurement {
            count: ids.len(),
            elapsed: last.saturating_duration_since(first),
            publish_elapsed: last_confirm.saturating_duration_since(first),
            latencies,
        })
    }

    /// Messages per second, first publish to last arrival.
    pub fn rate(&self) -> f64 {
        per_second(self.count, self.elapsed)
    }

    pub fn p50(&self) -> Duration {
        percentile(&self.latencies, 50.0)
    }

    pub fn p99(&self) -> Duration {
        percentile(&self.latencies, 99.0)
    }
}

pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        f64::INFINITY
    }
}

/// Nearest-rank percentile of sorted durations (zero when empty).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The end of a measured run: the publishing result and the collector task's.
/// A failed publish stops the collector.
pub async fn join_run<S, R>(
    what: &str,
    published: Result<S, String>,
    collector: tokio::task::JoinHandle<Result<R, String>>,
) -> Result<(S, R), String> {
    let sent = match published {
        Ok(p) => p,
        Err(e) => {
            collector.abort();
            return Err(format!("{what}: {e}"));
        }
    };
    let received = collector
        .await
        .map_err(|e| format!("{what}: the outbound collector task failed: {e}"))??;
    Ok((sent, received))
}

/// Messages ready in `queue` (a passive declare: nothing is created).
pub async fn messages_ready(channel: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(
            lapin::types::ShortString::from(queue),
            passive,
            lapin::types::FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v[..1], 99.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
