//! The Case-creation marker in Redis: `P:sf:case:{O:C}` (prefix `P`, org `O`,
//! conversation `C`; the hash tag matches the pipeline's conversation keys).
//!
//! `pending` is written before a Case POST without an External ID field, and
//! `case:{id}` once Salesforce answered with the id. A later attempt resumes
//! with the recorded id (no second Case) or, after `pending`, looks the Case
//! up before creating it again.
use super::errors::PROVIDER;
use crate::error::{ProviderError, ProviderErrorKind};
use crate::store::RedisConnection;
use redis::AsyncCommands;
use std::time::Duration;

/// How long the marker is kept: longer than any in-process or broker retry,
/// and a week of dead-letter replays.
const MARKER_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CaseMarker {
    /// A create was sent; its outcome is unknown.
    Pending,
    /// The Case exists with this id.
    Created(String),
}

pub(super) struct Markers {
    conn: RedisConnection,
    prefix: String,
    org_id: String,
}

fn redis_error(e: &redis::RedisError) -> ProviderError {
    ProviderError::transient(
        PROVIDER,
        ProviderErrorKind::Unavailable,
        format!("case marker: redis: {e}"),
    )
}

impl Markers {
    pub fn new(conn: RedisConnection, prefix: &str, org_id: &str) -> Self {
        Markers {
            conn,
            prefix: prefix.to_string(),
            org_id: org_id.to_string(),
        }
    }

    pub fn key(&self, conversation_id: &str) -> String {
        format!(
            "{}:sf:case:{{{}:{}}}",
            self.prefix, self.org_id, conversation_id
        )
    }

    pub async fn get(&self, conversation_id: &str) -> Result<Option<CaseMarker>, ProviderError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = c
            .get(self.key(conversation_id))
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(raw.map(|r| match r.strip_prefix("case:") {
            Some(id) if !id.is_empty() => CaseMarker::Created(id.to_string()),
            _ => CaseMarker::Pending,
        }))
    }

    /// Record `pending` unless a marker exists; returns whether it was written.
    pub async fn set_pending(&self, conversation_id: &str) -> Result<bool, ProviderError> {
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(conversation_id))
            .arg("pending")
            .arg("NX")
            .arg("EX")
            .arg(MARKER_TTL.as_secs())
            .query_async(&mut c)
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(set.is_some())
    }

    /// Record the Case id. Best effort: on failure the lookup still finds the Case.
    pub async fn set_created(&self, conversation_id: &str, case_id: &str) {
        let mut c = self.conn.clone();
        let r: Result<(), _> = c
            .set_ex(
                self.key(conversation_id),
                format!("case:{case_id}"),
                MARKER_TTL.as_secs(),
            )
            .await;
        if let Err(e) = r {
            tracing::warn!(org_id = %self.org_id, case_id, error = %e, "cannot record the created salesforce case");
        }
    }
}
