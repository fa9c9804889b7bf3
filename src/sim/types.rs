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
    /// Sunshine Conversations apps and their API keys: (app id, key id, secret).
    /// An app exists when at least one key names it.
    pub sunshine_keys: Vec<(String, String, String)>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            zendesk_credentials: vec![(
                "agent@example.com".to_owned(),
                "sim-zendesk-token".to_owned(),
            )],
            salesforce_clients: vec![("sim-client-id".to_owned(), "sim-client-secret".to_owned())],
            sunshine_keys: vec![(
                "sim-app".to_owned(),
                "sim-key".to_owned(),
                "sim-sunshine-secret".to_owned(),
            )],
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
        let sunshine: Vec<(&str, &str)> = self
            .sunshine_keys
            .iter()
            .map(|(app, key, _)| (app.as_str(), key.as_str()))
            .collect();
        f.debug_struct("SimSettings")
            .field("zendesk_agents", &emails)
            .field("salesforce_client_ids", &clients)
            .field("sunshine_app_keys", &sunshine)
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
    /// `via.channel`: "api" for tickets made through the tickets API,
    /// "native_messaging" for messaging tickets made by a Sunshine passControl.
    #[serde(default = "default_via_channel")]
    pub via_channel: String,
    pub custom_fields: serde_json::Value,
    pub comments: Vec<SimComment>,
    /// One per create or update, oldest first.
    #[serde(default)]
    pub audits: Vec<SimAudit>,
    pub created_at: DateTime<Utc>,
}

fn default_via_channel() -> String {
    "api".to_owned()
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
    /// And, when set, contains this (e.g. `/passControl`, whose path starts
    /// with an id the test does not know in advance).
    pub path_contains: Option<String>,
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

/// A Sunshine Conversations user held by the simulator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimSunshineUser {
    pub id: String,
    pub app_id: String,
    pub external_id: Option<String>,
    /// `profile` as sent (givenName, surname, email, ...).
    pub profile: serde_json::Value,
    pub metadata: serde_json::Value,
    pub signed_up_at: DateTime<Utc>,
}

/// A Sunshine Conversations message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimSunshineMessage {
    pub id: String,
    /// "user" | "business"
    pub author_type: String,
    /// The Sunshine user id of a user message.
    pub user_id: Option<String>,
    pub display_name: Option<String>,
    /// `content.text` of a text message.
    pub text: Option<String>,
    /// The whole `content` object as sent.
    pub content: serde_json::Value,
    /// `metadata` as sent (`null` when none).
    pub metadata: serde_json::Value,
    /// `source.type`: "api" for messages posted through the API,
    /// "zd:agentWorkspace" for agent replies.
    pub source_type: String,
    pub received: DateTime<Utc>,
}

/// A Sunshine Conversations conversation and what happened in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimSunshineConversation {
    pub id: String,
    pub app_id: String,
    /// "personal" | "sdkGroup"
    pub kind: String,
    /// Sunshine user id of the (first) participant.
    pub user_id: Option<String>,
    pub metadata: serde_json::Value,
    pub messages: Vec<SimSunshineMessage>,
    /// Activities posted (`typing:start`, `typing:stop`, `conversation:read`) by type.
    pub activities: std::collections::BTreeMap<String, u32>,
    /// Every accepted passControl call, including ones that changed nothing.
    pub pass_control_count: u32,
    /// The `metadata` of each passControl call, in order.
    pub pass_control_metadata: Vec<serde_json::Value>,
    /// True while Agent Workspace (`zd-agentWorkspace`) has control.
    pub agent_workspace_active: bool,
    /// The current (latest) messaging ticket, made by the first passControl.
    pub ticket_id: Option<u64>,
    /// Every messaging ticket this conversation got, oldest first.
    pub ticket_ids: Vec<u64>,
    /// Sunshine ids of the messages copied into the latest ticket's transcript.
    pub transcript_message_ids: Vec<String>,
    /// Whether `first_message_id` was honoured (the transcript starts there);
    /// false when only the last 10 messages went into the ticket.
    pub transcript_from_first_message_id: bool,
    /// Whether the latest ticket got every message of the conversation.
    pub whole_transcript: bool,
    pub created_at: DateTime<Utc>,
}

/// Where (and how) the simulator delivers Zendesk webhooks.
#[derive(Clone, Serialize, Deserialize)]
pub struct WebhookTarget {
    /// The receiving endpoint (e.g. the ingress's `/webhooks/zendesk`).
    pub url: String,
    /// Value of the `fv-organisation-id` header.
    pub org_id: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub bearer_token: String,
    /// When set, requests carry `x-zendesk-webhook-signature` (+ timestamp).
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// Whether the admin set up the optional session-end trigger (guide step 3.2).
    #[serde(default)]
    pub session_end_trigger: bool,
}

impl std::fmt::Debug for WebhookTarget {
    // The token and signing secret are never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("org_id", &self.org_id)
            .field("signed", &self.signing_secret.is_some())
            .field("session_end_trigger", &self.session_end_trigger)
            .finish_non_exhaustive()
    }
}

/// One webhook request the simulator made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimWebhookDelivery {
    /// `zen:event-type:...`, or `fv:conversation_closed` for the trigger body.
    pub event_type: String,
    /// The envelope's `id` (the ticket id for the trigger body, which has none).
    pub event_id: String,
    pub ticket_id: u64,
    /// True for the second copy made by `duplicate_next`.
    pub duplicate: bool,
    /// Status the target answered; 0 when it could not be reached.
    pub status: u16,
    /// The exact body sent.
    pub body: String,
}

/// A seeded Zendesk agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimAgent {
    pub id: u64,
    pub name: String,
    /// Listed by `agent_availabilities` as online for messaging.
    pub online: bool,
}

/// A Zendesk business-hours schedule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SimSchedule {
    pub id: u64,
    pub name: String,
    /// A Rails time-zone name ("UTC", "Copenhagen", "Pacific Time (US & Canada)").
    pub time_zone: String,
    /// (start_time, end_time) in minutes from Sunday 00:00 in `time_zone`.
    pub intervals: Vec<(u32, u32)>,
}

/// Minutes in a week.
const WEEK_MINUTES: u32 = 7 * 24 * 60;

impl SimSchedule {
    /// Open all week.
    pub fn always_open(id: u64) -> Self {
        Self {
            id,
            name: "Always open".to_owned(),
            time_zone: "UTC".to_owned(),
            intervals: vec![(0, WEEK_MINUTES)],
        }
    }

    /// No interval at all.
    pub fn always_closed(id: u64) -> Self {
        Self {
            id,
            name: "Always closed".to_owned(),
            time_zone: "UTC".to_owned(),
            intervals: Vec::new(),
        }
    }
}

/// One entry of a simulated MIAW conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimMiawEntry {
    pub identifier: String,
    /// Sender role: EndUser, Agent, System, Router.
    pub role: String,
    /// entryType: Message, ParticipantChanged, RoutingResult, ...
    pub kind: String,
    /// The text of a Message.
    pub text: Option<String>,
    /// The message id of a Message.
    pub message_id: Option<String>,
    pub transcripted_timestamp: i64,
}

/// A simulated MIAW conversation and its subject's stream counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimMiawConversation {
    pub id: String,
    /// The token subject that created it.
    pub subject: String,
    /// INITIAL | ROUTED | NEEDS_ROUTING | TRANSFER
    pub routing_status: String,
    pub routing_attributes: serde_json::Value,
    pub closed: bool,
    pub session_active: bool,
    pub entries: Vec<SimMiawEntry>,
    /// Customer messages accepted, in order: (message id, text).
    pub customer_messages: Vec<(String, String)>,
    /// Typing entries posted by the client (entryType), in order.
    pub typing: Vec<String>,
    pub streams_open: usize,
    pub max_concurrent_streams: usize,
    pub connects: usize,
    /// The Last-Event-Id of each connect (None: header absent).
    pub connect_last_event_ids: Vec<Option<String>>,
}
