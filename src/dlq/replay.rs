//! Replay (republish to `escalator.inbound`, then remove) and purge.
//!
//! A replayed copy is acked in the dead-letter queue only after the broker
//! confirmed its republish: a crash in between leaves both (the worker's
//! dedupe makes the duplicate harmless), never neither.
use super::read::Batch;
use super::select::Selection;
use super::{DeadLetter, DlqError};
use crate::amqp::Publisher;
use crate::pipeline::meta;
use crate::topology::INBOUND_EXCHANGE;
use chrono::Utc;
use lapin::BasicProperties;
use lapin::types::FieldTable;

/// `props` for a hop (see [`meta::internal_hop`]) without the headers `drop` names.
pub fn without_headers(props: &BasicProperties, drop: impl Fn(&str) -> bool) -> BasicProperties {
    let hop = meta::internal_hop(props);
    match hop.headers().clone() {
        Some(h) => {
            let kept: std::collections::BTreeMap<_, _> = h
                .inner()
                .iter()
                .filter(|(k, _)| !drop(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            hop.with_headers(FieldTable::from(kept))
        }
        None => hop,
    }
}

/// Headers a replay drops: our failure history and routing, and the
/// broker's dead-lettering and delivery history (a fresh start).
pub fn is_failure_header(key: &str) -> bool {
    key.starts_with("x-escalator-")
        || key == "x-death"
        || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
        || key == "x-delivery-count"
}

/// The properties of a replayed copy: the original's (message id, content
/// type, `traceparent` and other headers) without the failure headers.
pub fn replay_properties(d: &DeadLetter) -> BasicProperties {
    without_headers(&d.properties, is_failure_header)
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub dry_run: bool,
    /// Show a progress bar (the caller decides: only on a terminal).
    pub progress: bool,
    /// For drills and tests: behave as a crash would after this many
    /// confirmed republishes, before acking the last one (the connection is
    /// dropped; nothing is handed back explicitly).
    pub crash_after_confirms: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Dead letters read.
    pub read: usize,
    /// Selected.
    pub matched: usize,
    /// Republished and removed (replay) or removed (purge).
    pub done: usize,
    /// Ids of the selected ones, in queue order.
    pub ids: Vec<String>,
}

fn selected(batch: &Batch, sel: &Selection) -> Vec<(usize, String)> {
    let now = Utc::now();
    batch
        .letters()
        .filter(|(_, d)| sel.matches(d, now))
        .map(|(i, d)| (i, d.id.clone()))
        .collect()
}

fn unknown_ids(batch: &Batch, sel: &Selection) -> Option<String> {
    sel.ids
        .iter()
        .find(|id| !batch.letters().any(|(_, d)| d.id == **id))
        .cloned()
}

/// Republish the selected dead letters to `escalator.inbound` under their
/// original routing key, then remove them.
pub async fn replay(
    conn: &lapin::Connection,
    sel: &Selection,
    opts: &ReplayOptions,
) -> Result<Summary, DlqError> {
    let publisher = Publisher::open(conn).await?;
    let mut batch = Batch::read(conn).await?;
    if let Some(id) = unknown_ids(&batch, sel) {
        batch.finish(Some(&publisher)).await?;
        return Err(DlqError::UnknownId(id));
    }
    let chosen = selected(&batch, sel);
    let mut summary = Summary {
        read: batch.letters().count(),
        matched: chosen.len(),
        ids: chosen.iter().map(|(_, id)| id.clone()).collect(),
        ..Summary::default()
    };
    if opts.dry_run {
        batch.finish(Some(&publisher)).await?;
        return Ok(summary);
    }
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(chosen.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("replaying {bar:40} {pos}/{len} {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    // Pipelined in windows: publishes are confirmed in order on one channel.
    for window in chosen.chunks(256) {
        let mut pending = Vec::with_capacity(window.len());
        for (i, _) in window {
            let Some(d) = batch.get(*i) else { continue };
            let p = publisher
                .start(
                    INBOUND_EXCHANGE,
                    &d.routing_key,
                    &d.body,
                    replay_properties(d),
                )
                .await?;
            pending.push((*i, p));
        }
        for (i, p) in pending {
            p.wait().await?;
            if opts.crash_after_confirms == Some(summary.done + 1) {
                tracing::warn!("crash drill: stopping after a confirm, before its ack");
                drop(batch);
                return Err(DlqError::Refused("crash drill".into()));
            }
            batch.ack(i).await?;
            summary.done += 1;
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    batch.finish(Some(&publisher)).await?;
    Ok(summary)
}

/// Remove the selected dead letters (nothing else is touched).
pub async fn purge(conn: &lapin::Connection, sel: &Selection) -> Result<Summary, DlqError> {
    let publisher = Publisher::open(conn).await?;
    let mut batch = Batch::read(conn).await?;
    if let Some(id) = unknown_ids(&batch, sel) {
        batch.finish(Some(&publisher)).await?;
        return Err(DlqError::UnknownId(id));
    }
    let chosen = selected(&batch, sel);
    let mut summary = Summary {
        read: batch.letters().count(),
        matched: chosen.len(),
        ids: chosen.iter().map(|(_, id)| id.clone()).collect(),
        ..Summary::default()
    };
    for (i, _) in &chosen {
        batch.ack(*i).await?;
        summary.done += 1;
    }
    batch.finish(Some(&publisher)).await?;
    Ok(summary)
}

/// Read the selected dead letters and hand every one back.
pub async fn list(conn: &lapin::Connection, sel: &Selection) -> Result<Vec<DeadLetter>, DlqError> {
    let publisher = Publisher::open(conn).await?;
    let batch = Batch::read(conn).await?;
    let now = Utc::now();
    let out: Vec<DeadLetter> = batch
        .letters()
        .filter(|(_, d)| sel.matches(d, now))
        .map(|(_, d)| d.clone())
        .collect();
    batch.finish(Some(&publisher)).await?;
    Ok(out)
}
