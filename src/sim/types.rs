//! Public data types of the simulator (re-exported from `crate::sim`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Credentials the simulator accepts.
#[derive(Clone)]
pub struct SimSettings {
    /// Accepted Zendesk (agent email, API token) pairs.
    pub zendesk_credentials: Vec<(String, String)>,
    /// Accepted Salesforce (client_id, client_secret) pairs.
    pub salesforce_clients: Vec<(String, String)>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            zendesk_credentials: vec![(
                "agent@example.com".to_owned(),
                "sim-zendesk-token".to_owned(),
            )],
            salesforce_clients: vec![("sim-client-id".to_owned(), "sim-client-secret".to_owned())],
        }
    }
}

impl std::fmt::Debug for SimSettings {
    // Secrets are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let emails: Vec<&str> = self
            .zendesk_credentials
            .iter()
            .map(|(e, _)| e.as_str())
            .collect();
        let clients: Vec<&str> = self
            .salesforce_clients
            .iter()
            .map(|(c, _)| c.as_str())
            .collect();
        f.debug_struct("SimSettings")
            .field("zendesk_agents", &emails)
            .field("salesforce_client_ids", &clients)
            .finish_non_exhaustive()
    }
}

/// One request the simulator answered (control-API calls are not recorded).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Arrival sequence number, starting at 1.
    pub seq: u64,
    pub method: String,
    /// Path plus query string.
    pub path: String,
    /// Lower-case names; `authorization` values are replaced by `<redacted>`.
    pub headers: Vec<(String, String)>,
    /// Request body (lossy UTF-8; `client_secret` form values are redacted).
    pub body: String,
    /// Status answered; 0 when the connection was dropped without a response.
    pub status: u16,
    /// True when a fault rule matched this request.
    pub faulted: bool,
    /// When the answer was produced.
    pub at: DateTime<Utc>,
}

/// A Zendesk ticket held by the simulator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimTicket {
    pub id: u64,
    pub subject: Option<String>,
    pub requester_id: u64,
    pub requester_name: Option<String>,
    pub requester_email: Option<String>,
    pub assignee_id: Option<u64>,
    pub group_id: Option<u64>,
    pub tags: Vec<String>,
    pub external_id: Option<String>,
    pub status: String,
    pub custom_fields: serde_json::Value,
    pub comments: Vec<SimComment>,
    /// One per create or update, oldest first.
    #[serde(default)]
    pub audits: Vec<SimAudit>,
    pub created_at: DateTime<Utc>,
}

/// An audit of a simulated Zendesk ticket (one per create or update).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimAudit {
    pub id: u64,
    pub author_id: u64,
    /// The request's `ticket.metadata`, kept as `metadata.custom` (`{}` when none).
    pub custom_metadata: serde_json::Value,
    /// The comment this audit added, if any.
    pub comment_id: Option<u64>,
    pub created_at: DateTime<Utc>,
}

/// A comment on a simulated Zendesk ticket.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimComment {
    pub id: u64,
    pub author_id: u64,
    pub body: Option<String>,
    pub html_body: Option<String>,
    pub public: bool,
    pub created_at: DateTime<Utc>,
}

/// A Salesforce Case held by the simulator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimCase {
    /// 18-character id, "500...".
    pub id: String,
    /// "00001001", "00001002", ...
    pub case_number: String,
    /// Exactly the body fields sent (plus the External ID field for upserts).
    pub fields: serde_json::Map<String, serde_json::Value>,
    pub created_at: DateTime<Utc>,
}

/// A ContentVersion / FeedItem / CaseComment record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimSfRecord {
    pub id: String,
    /// "ContentVersion" | "FeedItem" | "CaseComment"
    pub sobject: String,
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// A fault-injection rule. Rules are tried in insertion order; the first match wins.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultRule {
    /// HTTP method to match (case-insensitive); None = any.
    pub method: Option<String>,
    /// Matches when the request path (with query) starts with this.
    pub path_prefix: String,
    /// How many matching requests to fault; None = forever.
    pub times: Option<u32>,
    /// Answer with this status; None = behave normally (e.g. only add latency).
    pub status: Option<u16>,
    /// Response body (default: a provider-shaped error for the status).
    pub body: Option<String>,
    /// Default application/json.
    pub content_type: Option<String>,
    /// Adds `Retry-After: N`.
    pub retry_after: Option<u64>,
    /// Delay before answering.
    pub latency_ms: Option<u64>,
    /// Close the TCP connection without any HTTP response.
    pub drop_connection: bool,
    /// Perform the real operation first, then answer with the fault / drop.
    pub after_effect: bool,
}
