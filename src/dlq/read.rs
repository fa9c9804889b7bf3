//! Reading the dead-letter queue without destroying it.
//!
//! A [`Batch`] consumes, with manual acks on a channel of its own, at most
//! the messages the queue held when it started (later arrivals are not
//! waited for, and redeliveries are never looped on). Each message then ends
//! one of two ways: [`Batch::ack`] (removed on purpose, after any republish
//! was confirmed) or handed back by [`Batch::finish`], which cancels the
//! consumer and requeues the rest one by one in their original order (a
//! quorum queue puts returned messages ahead of the others, in the order
//! they were returned). A crash instead closes the channel: the broker
//! requeues every unacked message, so nothing is lost.
//!
//! Quorum queues count every return as a delivery (`x-delivery-count`). The
//! dead-letter queue has no `x-delivery-limit` (RabbitMQ 3.x: no limit), but
//! RabbitMQ 4.x gives quorum queues a default limit of 20 and the dead-letter
//! queue has no dead-letter exchange of its own, so a message listed 20
//! times there would be dropped. The guard: a message read with
//! `x-delivery-count` at [`REFRESH_AT`] or more is refreshed, i.e. a copy is
//! published to the queue (confirmed) and the worn copy acked. The copy
//! moves to the tail; its id and contents stay the same.
use super::{DeadLetter, DlqError};
use crate::amqp::Publisher;
use crate::topology::{DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use std::time::Duration;

/// Deliveries after which a read message is refreshed (below RabbitMQ 4's
/// default quorum delivery limit of 20).
pub const REFRESH_AT: i64 = 10;

/// How long to wait for the next of the counted messages (another consumer
/// may have taken some meanwhile).
const NEXT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Batch {
    channel: Channel,
    consumer_tag: String,
    /// In queue order; `None` once acked.
    items: Vec<Option<(DeadLetter, lapin::Acker)>>,
}

/// Messages ready in the dead-letter queue (a passive declare).
pub async fn queue_count(conn: &Connection) -> Result<u32, DlqError> {
    let channel = conn.create_channel().await?;
    let q = channel
        .queue_declare(
            ShortString::from(DEAD_LETTER_QUEUE),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(missing_or)?;
    close(&channel).await;
    Ok(q.message_count())
}

fn missing_or(e: lapin::Error) -> DlqError {
    let text = format!("{e} {e:?}");
    if text.contains("NOT_FOUND") || text.contains("NotFound") || text.contains("404") {
        DlqError::QueueMissing {
            queue: DEAD_LETTER_QUEUE.to_string(),
        }
    } else {
        DlqError::Amqp(e)
    }
}

impl Batch {
    /// Take the queue's current messages (up to its count at start).
    pub async fn read(conn: &Connection) -> Result<Batch, DlqError> {
        let count = queue_count(conn).await?;
        let channel = conn.create_channel().await?;
        // Prefetch = the count, so later arrivals stay in the queue.
        let prefetch = u16::try_from(count.max(1)).unwrap_or(0);
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("escalator-dlq-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = channel
            .basic_consume(
                ShortString::from(DEAD_LETTER_QUEUE),
                ShortString::from(tag.as_str()),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(missing_or)?;
        let mut items = Vec::with_capacity(count as usize);
        while items.len() < count as usize {
            match tokio::time::timeout(NEXT_TIMEOUT, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    let dl = DeadLetter::parse(d.routing_key.as_str(), d.properties, d.data);
                    items.push(Some((dl, d.acker)));
                }
                Ok(Some(Err(e))) => return Err(DlqError::Amqp(e)),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Batch {
            channel,
            consumer_tag: tag,
            items,
        })
    }

    /// The messages read, in queue order (acked ones left out).
    pub fn letters(&self) -> impl Iterator<Item = (usize, &DeadLetter)> {
        self.items
            .iter()
            .enumerate()
            .filter_map(|(i, x)| x.as_ref().map(|(d, _)| (i, d)))
    }

    pub fn get(&self, index: usize) -> Option<&DeadLetter> {
        self.items.get(index)?.as_ref().map(|(d, _)| d)
    }

    /// Remove message `index` from the queue for good. Call only after its
    /// republish (if any) was confirmed.
    pub async fn ack(&mut self, index: usize) -> Result<(), DlqError> {
        if let Some(slot) = self.items.get_mut(index)
            && let Some((_, acker)) = slot.take()
        {
            acker.ack(BasicAckOptions::default()).await?;
        }
        Ok(())
    }

    /// Hand every message not acked back in its order (refreshing worn
    /// copies, see the module docs), and close the channel.
    pub async fn finish(mut self, refresher: Option<&Publisher>) -> Result<(), DlqError> {
        // Cancel first: requeued messages must not come straight back to us.
        self.channel
            .basic_cancel(
                ShortString::from(self.consumer_tag.as_str()),
                BasicCancelOptions::default(),
            )
            .await?;
        let mut returned: u32 = 0;
        for i in 0..self.items.len() {
            let worn = self
                .get(i)
                .is_some_and(|d| d.delivery_count + 1 >= REFRESH_AT);
            if worn && let (Some(p), Some(d)) = (refresher, self.get(i)) {
                let props =
                    super::replay::without_headers(&d.properties, |k| k == "x-delivery-count");
                p.publish(DEAD_LETTER_EXCHANGE, &d.delivery_key, &d.body, props)
                    .await?;
                tracing::info!(id = %d.id, "refreshed a dead letter near the delivery limit");
                self.ack(i).await?;
                continue;
            }
            if let Some(Some((_, acker))) = self.items.get_mut(i).map(Option::take) {
                acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                returned += 1;
            }
        }
        self.until_back(returned).await;
        close(&self.channel).await;
        Ok(())
    }

    /// Wait (briefly) until the broker counts the `returned` messages as
    /// ready again: returns are asynchronous, and the next command counts
    /// the queue at its start, so it must not see them still in flight.
    async fn until_back(&self, returned: u32) {
        if returned == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT;
        loop {
            let ready = self
                .channel
                .queue_declare(
                    ShortString::from(DEAD_LETTER_QUEUE),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|q| q.message_count());
            match ready {
                Ok(n) if n >= returned => return,
                Ok(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {
                    tracing::debug!("returned dead letters not counted as ready yet");
                    return;
                }
            }
        }
    }
}

/// Close a channel, not waiting forever for the broker's answer (what it
/// held is already acked or handed back; a close the broker never answers
/// ends with the connection).
async fn close(channel: &Channel) {
    let closing = channel.close(200, ShortString::from("bye"));
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        tracing::debug!("channel close not answered in time; the connection close ends it");
    }
}

/// Longest wait for the broker to answer a channel or connection close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
