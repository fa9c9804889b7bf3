//! The raw-broker baseline: what RabbitMQ alone does with the worker's
//! consumption pattern. A consumer with the same prefetch and the same
//! concurrency model (a task per delivery, at most `concurrency` at work)
//! takes each message from a quorum queue, publishes one message with a
//! publisher confirm to another quorum queue, and then acks. No HTTP, no Redis.
use super::cpu::{self, CpuUse};
use super::measure::{self, Arrival, Measurement, Source};
use super::pipeline::escalation;
use super::{PUBLISH_IN_FLIGHT, WARMUP};
use crate::amqp::{self, Publisher, json_properties};
use crate::settings::Settings;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, Consumer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const IN_QUEUE: &str = "bench.baseline.in";
pub const OUT_QUEUE: &str = "bench.baseline.out";

/// The first failure of the baseline consumer, for the error message.
type Failure = Arc<Mutex<Option<String>>>;

/// The figures of the baseline stage.
pub struct BaselineResult {
    pub measurement: Measurement,
    /// CPU used during the measured run.
    pub cpu: Option<CpuUse>,
}

pub async fn run(settings: &Settings, count: usize) -> Result<BaselineResult, String> {
    let client = amqp::connect_explained(settings, "escalator-bench-baseline-client").await?;
    let channel = client
        .create_channel()
        .await
        .map_err(|e| format!("baseline: cannot open a channel: {e}"))?;
    let result = match declare(&channel).await {
        Ok(()) => measure_on(settings, &client, count).await,
        Err(e) => Err(e),
    };
    let deleted = delete(&channel).await;
    let _ = client.close(200, ShortString::from("bye")).await;
    let measured = result?;
    deleted?;
    Ok(measured)
}

async fn declare(channel: &Channel) -> Result<(), String> {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    for q in [IN_QUEUE, OUT_QUEUE] {
        channel
            .queue_declare(
                ShortString::from(q),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args.clone(),
            )
            .await
            .map_err(|e| format!("baseline: cannot declare the quorum queue {q}: {e}"))?;
        // Left over by an interrupted run on a shared vhost: start empty.
        channel
            .queue_purge(ShortString::from(q), QueuePurgeOptions::default())
            .await
            .map_err(|e| format!("baseline: cannot purge {q}: {e}"))?;
    }
    Ok(())
}

async fn delete(channel: &Channel) -> Result<(), String> {
    let mut problems = Vec::new();
    for q in [IN_QUEUE, OUT_QUEUE] {
        if let Err(e) = channel
            .queue_delete(ShortString::from(q), QueueDeleteOptions::default())
            .await
        {
            problems.push(format!("cannot delete the baseline queue {q}: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

async fn measure_on(
    settings: &Settings,
    client: &Connection,
    count: usize,
) -> Result<BaselineResult, String> {
    let worker_conn = amqp::connect_explained(settings, "escalator-bench-baseline-worker").await?;
    let stop = CancellationToken::new();
    let failure: Failure = Arc::default();
    let result = async {
        let worker = start_worker(&worker_conn, settings, stop.clone(), failure.clone()).await?;
        let measured = rounds(client, count, failure.clone()).await;
        stop.cancel();
        let _ = worker.await;
        measured
    }
    .await;
    stop.cancel();
    let _ = worker_conn.close(200, ShortString::from("bye")).await;
    result
}

async fn rounds(
    client: &Connection,
    count: usize,
    failure: Failure,
) -> Result<BaselineResult, String> {
    let publisher = Publisher::open(client)
        .await
        .map_err(|e| format!("baseline: cannot open a publisher: {e}"))?;
    let source = OutQueue::open(client, failure).await?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    println!("baseline: warming up with {WARMUP} messages");
    let warm: Vec<String> = (0..WARMUP)
        .map(|i| format!("bench-{run}-warm-{i:03}"))
        .collect();
    let (source, _, _, _) = round(&publisher, source, &warm, "baseline warm-up").await?;

    println!("baseline: publishing {count} messages ({PUBLISH_IN_FLIGHT} in flight)");
    let ids: Vec<String> = (0..count).map(|i| format!("bench-{run}-{i:06}")).collect();
    let (cpu_before, started) = (cpu::Snapshot::take(), Instant::now());
    let (source, sent, last_confirm, received) =
        round(&publisher, source, &ids, "baseline").await?;
    source.close().await;
    let _ = publisher
        .channel()
        .close(200, ShortString::from("bye"))
        .await;
    let cpu = cpu_before
        .zip(cpu::Snapshot::take())
        .map(|(a, b)| a.until(&b, started.elapsed()));
    let m = Measurement::new(&ids, &sent, last_confirm, &received)?;
    println!(
        "baseline: {count} messages through in {:.2} s (publishing took {:.2} s)",
        m.elapsed.as_secs_f64(),
        m.publish_elapsed.as_secs_f64()
    );
    Ok(BaselineResult {
        measurement: m,
        cpu,
    })
}

type Round = (
    OutQueue,
    Vec<measure::Stamp>,
    Instant,
    std::collections::HashMap<String, measure::Stamp>,
);

async fn round(
    publisher: &Publisher,
    source: OutQueue,
    ids: &[String],
    what: &str,
) -> Result<Round, String> {
    let bodies: Vec<serde_json::Value> = ids.iter().map(|id| escalation(id)).collect();
    let collector = measure::spawn_collector(source, ids, what);
    let published = measure::publish_all(ids.len(), PUBLISH_IN_FLIGHT, |i| {
        let (id, body) = (&ids[i], &bodies[i]);
        async move {
            // Serialized per publish, as the sandbox does for the pipeline.
            let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
            let props = json_properties().with_message_id(ShortString::from(id.as_str()));
            publisher
                .publish("", IN_QUEUE, &bytes, props)
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    let ((sent, last_confirm), (source, received)) =
        measure::join_run(what, published, collector).await?;
    Ok((source, sent, last_confirm, received))
}

/// Subscribe to the inbound queue and serve it in a task until `stop`.
async fn start_worker(
    conn: &Connection,
    settings: &Settings,
    stop: CancellationToken,
    failure: Failure,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| format!("baseline worker: cannot open a channel: {e}"))?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| format!("baseline worker: cannot set the prefetch: {e}"))?;
    let consumer = channel
        .basic_consume(
            ShortString::from(IN_QUEUE),
            ShortString::from("bench-baseline-worker"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("baseline worker: cannot consume {IN_QUEUE}: {e}"))?;
    let publisher = Publisher::open(conn)
        .await
        .map_err(|e| format!("baseline worker: cannot open a publisher: {e}"))?;
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    Ok(tokio::spawn(serve(
        channel, consumer, publisher, permits, stop, failure,
    )))
}

async fn serve(
    channel: Channel,
    mut consumer: Consumer,
    publisher: Publisher,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    failure: Failure,
) {
    let mut tasks = JoinSet::new();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                tasks.spawn(forward(
                    delivery,
                    publisher.clone(),
                    permits.clone(),
                    failure.clone(),
                ));
            }
            Some(Err(e)) => {
                fail(&failure, format!("the baseline consumer failed: {e}"));
                break;
            }
            None => break,
        }
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    // Close every channel before the connection goes: dropping an open one
    // while the connection closes races lapin's auto-close (an ERROR log).
    let _ = publisher
        .channel()
        .close(200, ShortString::from("bye"))
        .await;
    let _ = channel.close(200, ShortString::from("bye")).await;
    drop(consumer);
}

/// Consume, publish with confirm, ack: the per-message work of the baseline.
async fn forward(d: Delivery, publisher: Publisher, permits: Arc<Semaphore>, failure: Failure) {
    let Ok(_permit) = permits.acquire().await else {
        return;
    };
    let mut props = json_properties();
    if let Some(id) = d.properties.message_id() {
        props = props.with_message_id(id.clone());
    }
    match publisher.publish("", OUT_QUEUE, &d.data, props).await {
        Ok(()) => {
            if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
                fail(&failure, format!("the baseline worker cannot ack: {e}"));
            }
        }
        Err(e) => {
            fail(
                &failure,
                format!("the baseline worker's publish to {OUT_QUEUE} failed: {e}"),
            );
            amqp::requeue(&d.acker).await;
        }
    }
}

fn fail(failure: &Failure, message: String) {
    tracing::error!("{message}");
    if let Ok(mut slot) = failure.lock()
        && slot.is_none()
    {
        *slot = Some(message);
    }
}

/// The consumer of `bench.baseline.out`, acking each message as the
/// sandbox's outbound listener does.
struct OutQueue {
    channel: Channel,
    consumer: Consumer,
    failure: Failure,
}

impl OutQueue {
    async fn open(conn: &Connection, failure: Failure) -> Result<OutQueue, String> {
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| format!("baseline: cannot open a channel: {e}"))?;
        let consumer = channel
            .basic_consume(
                ShortString::from(OUT_QUEUE),
                ShortString::from("bench-baseline-listener"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("baseline: cannot consume {OUT_QUEUE}: {e}"))?;
        Ok(OutQueue {
            channel,
            consumer,
            failure,
        })
    }

    async fn close(self) {
        let _ = self.channel.close(200, ShortString::from("bye")).await;
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

impl Source for OutQueue {
    async fn next(&mut self, wait: Duration) -> Result<Arrival, String> {
        let next = match tokio::time::timeout(wait, self.consumer.next()).await {
            Err(_) => return self.failure().map_or(Ok(Arrival::TimedOut), Err),
            Ok(next) => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(format!("baseline: the {OUT_QUEUE} consumer failed: {e}")),
            None => {
                return Err(format!(
                    "baseline: the {OUT_QUEUE} consumer ended (connection lost?)"
                ));
            }
        };
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| format!("baseline: cannot ack on {OUT_QUEUE}: {e}"))?;
        // Read the body as the pipeline's listener reads its events.
        let body: serde_json::Value = serde_json::from_slice(&delivery.data)
            .map_err(|e| format!("baseline: unreadable message on {OUT_QUEUE}: {e}"))?;
        Ok(body["conversation_id"]
            .as_str()
            .map_or(Arrival::Ignored, |c| Arrival::Event(c.to_string())))
    }
}
