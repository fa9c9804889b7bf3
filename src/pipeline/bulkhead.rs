//! Per-org bulkheads: each org may use at most its share of a worker's
//! concurrency (`ESCALATOR_ORG_CONCURRENCY`), so an org whose provider is
//! slow or down cannot take every slot from the others. A lane takes its
//! org's permit before the worker-wide one.
use crate::config::Config;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub struct OrgPermits {
    per_org: HashMap<String, Arc<Semaphore>>,
    /// Shared by messages naming no configured org (they are dead-lettered
    /// quickly, but must not get a bulkhead each).
    unknown: Arc<Semaphore>,
}

impl OrgPermits {
    /// `share` permits for each configured org.
    pub fn new(config: &Config, share: usize) -> OrgPermits {
        let share = share.max(1);
        OrgPermits {
            per_org: config
                .orgs()
                .map(|o| (o.org_id.clone(), Arc::new(Semaphore::new(share))))
                .collect(),
            unknown: Arc::new(Semaphore::new(share)),
        }
    }

    /// The bulkhead of `org_id`.
    pub fn of(&self, org_id: &str) -> Arc<Semaphore> {
        self.per_org.get(org_id).unwrap_or(&self.unknown).clone()
    }
}
