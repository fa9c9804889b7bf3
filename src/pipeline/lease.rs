//! One runner per conversation, fleet-wide: the conversation's lease in Redis
//! (taken by `Store::begin`, checked by `Store::commit` and `Store::finish`,
//! released by `finish`) is kept alive here while its runner works.
//!
//! The renewal runs inside the runner's own future ([`hold`]), not in a task
//! of its own: when the runner is dropped (its session aborted), renewal
//! stops with it and the lease runs out after its TTL, by which time a
//! request the runner still had in flight has timed out.
use crate::store::{Lease, Store};
use std::future::Future;
use std::time::Duration;

/// Run `work` while renewing `lease` every third of `ttl`.
pub async fn hold<F: Future>(store: &Store, lease: &Lease, ttl: Duration, work: F) -> F::Output {
    tokio::select! {
        biased;
        out = work => out,
        never = renew_forever(store, lease, ttl) => match never {},
    }
}

/// Renews until dropped. A lease found taken over is not fought for: the
/// runner's commit will be refused (fenced) and it writes nothing.
async fn renew_forever(store: &Store, lease: &Lease, ttl: Duration) -> std::convert::Infallible {
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut lost = false;
    loop {
        tokio::time::sleep(every).await;
        if lost {
            continue;
        }
        match store.renew(lease, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                lost = true;
                tracing::warn!(
                    generation = lease.generation,
                    "conversation lease lost (expired or taken over): this runner will commit nothing"
                );
            }
            // Redis away: try again next round (the lease may still be valid).
            Err(e) => tracing::warn!(error = %e, "could not renew the conversation lease"),
        }
    }
}

/// How long a runner waits, polling, for another runner's lease.
pub struct Wait {
    deadline: tokio::time::Instant,
    step: Duration,
}

impl Wait {
    /// Wait at most one lease TTL: the other runner's lease ends by then
    /// unless that runner is alive and renewing it.
    pub fn new(ttl: Duration) -> Wait {
        Wait {
            deadline: tokio::time::Instant::now() + ttl,
            step: Duration::from_millis(50),
        }
    }

    /// Sleep before the next look (short, growing to 1 s, never past the
    /// other lease's end or the deadline). False when the deadline passed.
    pub async fn pause(&mut self, lease_left: Option<Duration>) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        let mut sleep = self.step.min(self.deadline - now);
        if let Some(left) = lease_left {
            sleep = sleep.min(left.max(Duration::from_millis(5)));
        }
        tokio::time::sleep(sleep).await;
        self.step = (self.step * 2).min(Duration::from_secs(1));
        true
    }
}
