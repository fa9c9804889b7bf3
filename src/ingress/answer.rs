//! Every way a webhook request can be refused, with the status Zendesk sees,
//! the message it gets (`{"error": "..."}`) and a short reason for the log.
//!
//! Messages never echo what the caller sent (token, header values, body):
//! an error answer can end up in Zendesk's webhook activity log, readable by
//! every admin of the account.
use axum::http::StatusCode;

/// Why a webhook was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `Authorization: Bearer <token>` header (or another scheme).
    MissingToken,
    /// The token is not the org's webhook token.
    WrongToken,
    /// No `fv-organisation-id` header.
    MissingOrg,
    /// The org is not configured, or has no `[orgs.<org>.zendesk.live]` table
    /// (so no webhook credentials).
    UnknownOrg,
    /// The org checks signatures and the request carries none (or no timestamp).
    MissingSignature,
    /// The signature is not base64(HMAC-SHA256(secret, timestamp + body)).
    InvalidSignature,
    /// The signature timestamp is not an ISO-8601 date-time.
    InvalidTimestamp,
    /// The signature timestamp is more than the allowed skew away from now
    /// (a replayed delivery, or a clock far off).
    StaleSignature,
    /// The body is larger than the limit (`ESCALATOR_INGRESS_BODY_LIMIT`).
    TooLarge { limit: usize },
    /// The body could not be read (the client went away mid-body).
    UnreadableBody,
    /// The body is not UTF-8.
    NotUtf8,
    /// The body is not JSON, not even leniently; says where, not what.
    NotJson(String),
    /// No usable broker connection, or the broker did not confirm in time.
    Unavailable,
    /// `escalator.inbound` is missing or nothing is bound to it.
    TopologyMissing,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::MissingToken
            | Rejection::WrongToken
            | Rejection::MissingOrg
            | Rejection::MissingSignature
            | Rejection::InvalidSignature
            | Rejection::InvalidTimestamp
            | Rejection::StaleSignature => StatusCode::UNAUTHORIZED,
            Rejection::UnknownOrg => StatusCode::FORBIDDEN,
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::UnreadableBody | Rejection::NotUtf8 | Rejection::NotJson(_) => {
                StatusCode::BAD_REQUEST
            }
            Rejection::Unavailable | Rejection::TopologyMissing => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable identifier for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::MissingToken => "missing_token",
            Rejection::WrongToken => "wrong_token",
            Rejection::MissingOrg => "missing_org",
            Rejection::UnknownOrg => "unknown_org",
            Rejection::MissingSignature => "missing_signature",
            Rejection::InvalidSignature => "invalid_signature",
            Rejection::InvalidTimestamp => "invalid_signature_timestamp",
            Rejection::StaleSignature => "stale_signature",
            Rejection::TooLarge { .. } => "body_too_large",
            Rejection::UnreadableBody => "unreadable_body",
            Rejection::NotUtf8 => "body_not_utf8",
            Rejection::NotJson(_) => "body_not_json",
            Rejection::Unavailable => "broker_unavailable",
            Rejection::TopologyMissing => "topology_missing",
        }
    }

    /// What the caller is told.
    pub fn message(&self) -> String {
        match self {
            Rejection::MissingToken => {
                "missing or malformed Authorization header: expected `Authorization: Bearer <token>`"
                    .into()
            }
            Rejection::WrongToken => "invalid bearer token".into(),
            Rejection::MissingOrg => "missing fv-organisation-id header".into(),
            Rejection::UnknownOrg => {
                "unknown organisation, or no webhook is configured for it".into()
            }
            Rejection::MissingSignature => "missing x-zendesk-webhook-signature or \
                 x-zendesk-webhook-signature-timestamp header"
                .into(),
            Rejection::InvalidSignature => "invalid webhook signature".into(),
            Rejection::InvalidTimestamp => {
                "x-zendesk-webhook-signature-timestamp is not an ISO-8601 date-time".into()
            }
            Rejection::StaleSignature => {
                "webhook signature timestamp is more than 5 minutes away from now".into()
            }
            Rejection::TooLarge { limit } => format!("body larger than {limit} bytes"),
            Rejection::UnreadableBody => "the body could not be read".into(),
            Rejection::NotUtf8 => "the body is not UTF-8".into(),
            Rejection::NotJson(where_) => where_.clone(),
            Rejection::Unavailable => "the message broker is unavailable: retry later".into(),
            Rejection::TopologyMissing => "webhooks cannot be queued yet: retry later".into(),
        }
    }
}
