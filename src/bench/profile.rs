//! Where the pipeline's time goes, without touching the worker:
//!
//! * the worker's own Redis records carry wall-clock times of its steps
//!   (`attempt:ticket` just before the provider call, the outbound event's
//!   `occurred_at` when its seq is assigned, `done:{id}` after the outbound
//!   publish was confirmed; layout in [`crate::store`]), read after the run;
//! * the simulator logs when it answered each ticket create;
//! * a sampler polls the ready-message counts of the intake and shard queues
//!   (passive `queue.declare`, every [`SAMPLE_EVERY`]) during the run.
use super::measure::{Stamp, percentile};
use crate::amqp;
use crate::sandbox::ZENDESK_ORG;
use crate::settings::Settings;
use crate::store::Store;
use crate::topology::{INTAKE_QUEUE, shard_queue};
use chrono::{DateTime, Utc};
use lapin::types::ShortString;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// One poll of the queues: time since the sampler started, ready messages.
#[derive(Debug, Clone, Copy)]
pub struct QueueSample {
    pub at: Duration,
    pub intake_ready: u32,
    pub shards_ready: u32,
}

pub struct Sampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<QueueSample>>,
    pub started: Instant,
}

impl Sampler {
    /// Best effort: `None` when it cannot connect.
    pub async fn start(settings: &Settings) -> Option<Sampler> {
        let conn = amqp::connect(&settings.amqp_url, "escalator-bench-sampler")
            .await
            .ok()?;
        let channel = conn.create_channel().await.ok()?;
        let shards: Vec<String> = (0..settings.shards).map(shard_queue).collect();
        let stop = CancellationToken::new();
        let started = Instant::now();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let probe = channel.clone();
            let ready = |q: String| {
                let channel = probe.clone();
                async move { super::measure::messages_ready(&channel, &q).await }
            };
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            'sampling: loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let at = started.elapsed();
                let Ok(intake_ready) = ready(INTAKE_QUEUE.to_string()).await else {
                    break;
                };
                let mut shards_ready = 0;
                for q in &shards {
                    let Ok(n) = ready(q.clone()).await else {
                        break 'sampling;
                    };
                    shards_ready += n;
                }
                samples.push(QueueSample {
                    at,
                    intake_ready,
                    shards_ready,
                });
            }
            // Close the channel first: dropping an open one while the
            // connection closes races lapin's auto-close (an ERROR log).
            let _ = channel.close(200, ShortString::from("bye")).await;
            let _ = conn.close(200, ShortString::from("bye")).await;
            samples
        });
        Some(Sampler {
            stop,
            task,
            started,
        })
    }

    pub async fn finish(self) -> Vec<QueueSample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// Wall-clock times the worker wrote to Redis for one escalation.
#[derive(Debug, Clone, Copy)]
struct WorkerStamps {
    attempt: DateTime<Utc>,
    seq: DateTime<Utc>,
    done: DateTime<Utc>,
}

/// Read the worker's records of `ids` (message id `{id}-escalation`).
async fn worker_stamps(settings: &Settings, ids: &[String]) -> Result<Vec<WorkerStamps>, String> {
    let store = Store::connect(
        &settings.redis_url,
        &settings.key_prefix,
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| e.to_string())?;
    let key = |conv: &str, suffix: &str| {
        format!(
            "{}:conv:{{{ZENDESK_ORG}:{conv}}}{suffix}",
            settings.key_prefix
        )
    };
    let mut pipe = redis::pipe();
    for id in ids {
        let message_id = format!("{id}-escalation");
        pipe.get(key(id, ":attempt:ticket"))
            .hget(
                key(id, ":events"),
                format!(
                    "{}/escalation.created",
                    crate::pipeline::handler::CONVERSATION_CAUSE
                ),
            )
            .get(key(id, &format!(":done:{message_id}")));
    }
    let mut conn = store.connection();
    let values: Vec<Option<String>> = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let ms = |v: Option<&str>| {
        v.and_then(|s| s.rsplit(':').next())
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
    };
    values
        .chunks(3)
        .zip(ids)
        .map(|(v, id)| {
            let get = |i: usize| ms(v.get(i).and_then(|x| x.as_deref()));
            match (get(0), get(1), get(2)) {
                (Some(attempt), Some(seq), Some(done)) => Ok(WorkerStamps { attempt, seq, done }),
                _ => Err(format!("the worker's records of {id} are incomplete")),
            }
        })
        .collect()
}

/// One stage of the per-escalation split.
pub struct Stage {
    pub label: &'static str,
    pub what: &'static str,
    pub sorted: Vec<Duration>,
}

impl Stage {
    pub fn p(&self, p: f64) -> Duration {
        percentile(&self.sorted, p)
    }
    pub fn mean(&self) -> Duration {
        let n = u32::try_from(self.sorted.len().max(1)).unwrap_or(u32::MAX);
        self.sorted.iter().sum::<Duration>() / n
    }
}

pub struct Profile {
    pub stages: Vec<Stage>,
    /// Escalations between their ticket attempt and done: time-weighted mean and peak.
    pub busy_mean: f64,
    pub busy_peak: usize,
    /// Ticket attempt -> done, mean: the worker's service time after its Redis reads.
    pub service_mean: Duration,
    /// Ticket creates per second, first publish to last create.
    pub ticket_rate: f64,
    pub requests_per_escalation: f64,
    /// Queue polls (empty when the sampler could not run).
    pub samples: Vec<QueueSample>,
    /// When the first message was published, relative to the sampler's start.
    pub publish_offset: Duration,
}

impl Profile {
    pub fn intake_peak(&self) -> u32 {
        self.samples
            .iter()
            .map(|s| s.intake_ready)
            .max()
            .unwrap_or(0)
    }
    pub fn shards_peak(&self) -> u32 {
        self.samples
            .iter()
            .map(|s| s.shards_ready)
            .max()
            .unwrap_or(0)
    }
    /// Time from the first publish to the last poll that saw a backlog in `f`.
    pub fn backlog_until(&self, f: impl Fn(&QueueSample) -> u32) -> Option<Duration> {
        self.samples
            .iter()
            .filter(|s| f(s) > 0)
            .map(|s| s.at.saturating_sub(self.publish_offset))
            .max()
    }
}

/// Put the pieces together; `None` (with the reason printed) when a piece is missing.
pub async fn build(
    settings: &Settings,
    ids: &[String],
    sent: &[Stamp],
    received: &HashMap<String, Stamp>,
    requests: &[crate::sim::RecordedRequest],
    samples: Vec<QueueSample>,
    sampler_started: Option<Instant>,
) -> Option<Profile> {
    let worker = match worker_stamps(settings, ids).await {
        Ok(w) => w,
        Err(e) => {
            println!("note: no stage profile: cannot read the worker's timestamps from Redis: {e}");
            return None;
        }
    };
    // The conversation id is the ticket's external_id.
    let mut created: HashMap<String, DateTime<Utc>> = HashMap::new();
    for r in requests {
        if r.method == "POST"
            && r.path.starts_with("/api/v2/tickets")
            && (200..300).contains(&r.status)
        {
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            if let Some(conv) = body["ticket"]["external_id"].as_str() {
                created.entry(conv.to_string()).or_insert(r.at);
            }
        }
    }
    let span = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).to_std().unwrap_or_default();
    let mut cols: [Vec<Duration>; 6] = Default::default();
    let first_publish = sent.iter().map(|s| s.wall).min()?;
    let mut last_ticket = first_publish;
    let mut edges = Vec::with_capacity(ids.len() * 2);
    for ((id, s), w) in ids.iter().zip(sent).zip(&worker) {
        let Some(&ticket) = created.get(id) else {
            println!("note: no stage profile: the simulator has no ticket create for {id}");
            return None;
        };
        let r = received.get(id)?;
        last_ticket = last_ticket.max(ticket);
        cols[0].push(span(s.wall, w.attempt));
        cols[1].push(span(w.attempt, ticket));
        cols[2].push(span(ticket, w.seq));
        cols[3].push(span(w.seq, w.done));
        cols[4].push(span(w.seq, r.wall));
        cols[5].push(span(w.attempt, w.done));
        edges.push((w.attempt, 1i64));
        edges.push((w.done, -1i64));
    }
    for c in &mut cols {
        c.sort_unstable();
    }
    // Time-weighted number of escalations between attempt and done.
    edges.sort();
    let (mut busy, mut peak, mut area) = (0i64, 0i64, 0f64);
    let mut prev = edges.first().map(|e| e.0);
    for (t, d) in &edges {
        if let Some(p) = prev {
            area += busy as f64 * span(p, *t).as_secs_f64();
        }
        busy += d;
        peak = peak.max(busy);
        prev = Some(*t);
    }
    let window = match (edges.first(), edges.last()) {
        (Some(a), Some(b)) => span(a.0, b.0).as_secs_f64(),
        _ => 0.0,
    };
    let [to_attempt, http, save, publish, delivered, service] = cols;
    let service = Stage {
        label: "",
        what: "",
        sorted: service,
    };
    Some(Profile {
        stages: vec![
            Stage {
                label: "publish -> ticket attempt",
                what: "intake hop, shard hop, wait for a permit, 3 Redis calls",
                sorted: to_attempt,
            },
            Stage {
                label: "ticket attempt -> created",
                what: "HTTP create at the simulator",
                sorted: http,
            },
            Stage {
                label: "ticket created -> event seq",
                what: "save the record, seq script",
                sorted: save,
            },
            Stage {
                label: "event seq -> done",
                what: "outbound publish + confirm, mark done",
                sorted: publish,
            },
            Stage {
                label: "event seq -> received",
                what: "outbound publish, delivery to the listener",
                sorted: delivered,
            },
        ],
        busy_mean: if window > 0.0 { area / window } else { 0.0 },
        busy_peak: usize::try_from(peak).unwrap_or(0),
        service_mean: service.mean(),
        ticket_rate: super::measure::per_second(ids.len(), span(first_publish, last_ticket)),
        requests_per_escalation: requests.len() as f64 / ids.len().max(1) as f64,
        samples,
        publish_offset: match (sampler_started, sent.iter().map(|s| s.at).min()) {
            (Some(s), Some(p)) => p.saturating_duration_since(s),
            _ => Duration::ZERO,
        },
    })
}
