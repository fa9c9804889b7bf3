//! Zendesk Support tickets (API-token auth).
//!
//! Each customer message's comment carries our message id in the ticket
//! update's audit metadata (`ticket.metadata`, kept by Zendesk as
//! `audit.metadata.custom`), so "was this message already added?" is an
//! exact look-up in the ticket's audits, newest first.
use super::budget::RateBudget;
use super::http::{classify_status, execute, retry_after, settled_for, transport_error};
use super::transcript;
use super::{TicketProvider, TicketRequest};
use crate::config::ZendeskConfig;
use crate::contract::{CustomerMessage, ExternalKind, ProviderKind};
use crate::error::{ErrorClass, ProviderError, ProviderErrorKind};
use crate::store::ExternalRef;
use base64::Engine;
use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::{Value, json};

const PROVIDER: &str = "zendesk";
/// Zendesk keeps subjects up to this length (longer ones are cut anyway).
const SUBJECT_MAX: usize = 255;
/// The audit metadata key that holds our message id.
pub const MESSAGE_ID_METADATA: &str = "escalator_message_id";
/// Audits older than the first attempt by more than this (clock difference
/// between us and Zendesk) cannot be ours: the newest-first scan stops there.
const AUDIT_CLOCK_MARGIN_MINUTES: i64 = 10;
/// Audits per page (Zendesk's maximum).
const AUDITS_PER_PAGE: &str = "100";
/// Pages read at most (10,000 audits newer than the first attempt).
const MAX_AUDIT_PAGES: usize = 100;

pub struct ZendeskClient {
    http: reqwest::Client,
    config: ZendeskConfig,
    base: String,
    /// `Basic ...`, marked sensitive (never printed by `Debug`, not indexed by HTTP/2).
    auth: HeaderValue,
    budget: Option<RateBudget>,
}

#[derive(Deserialize)]
struct TicketEnvelope {
    ticket: Ticket,
}

#[derive(Deserialize)]
struct Ticket {
    id: u64,
    #[serde(default)]
    requester_id: Option<u64>,
}

#[derive(Deserialize)]
struct TicketList {
    #[serde(default)]
    tickets: Vec<Ticket>,
}

#[derive(Deserialize)]
struct AuditPage {
    #[serde(default)]
    audits: Vec<Audit>,
    #[serde(default)]
    next_page: Option<String>,
}

#[derive(Deserialize)]
struct Audit {
    #[serde(default)]
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    metadata: Value,
}

impl Audit {
    fn message_id(&self) -> Option<&str> {
        self.metadata["custom"][MESSAGE_ID_METADATA].as_str()
    }
}

/// The `Authorization` value of API-token auth, marked sensitive (also
/// used by `escalator doctor`).
pub fn basic_auth(email: &str, token: &str) -> HeaderValue {
    let raw = format!("{email}/token:{token}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    // Base64 is always a valid header value; the fallback only satisfies the type.
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

impl ZendeskClient {
    pub fn new(http: reqwest::Client, config: ZendeskConfig) -> Self {
        let auth = basic_auth(&config.email, config.api_token.expose());
        let base = config.base_url();
        ZendeskClient {
            http,
            config,
            base,
            auth,
            budget: None,
        }
    }

    /// Spend every request from this org's shared request budget.
    pub fn with_budget(mut self, budget: Option<RateBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The idempotency key of a conversation's ticket: one ticket per conversation.
    pub fn idempotency_key(org_id: &str, conversation_id: &str) -> String {
        transcript::truncate_chars(&format!("escalator:{org_id}:{conversation_id}"), 255)
    }

    /// The JSON body of the ticket create call. Deterministic for a given
    /// event, so a retried create with the same Idempotency-Key matches.
    pub fn ticket_body(&self, req: TicketRequest<'_>) -> Value {
        let e = req.escalation;
        let assignment = e.assignment.clone().unwrap_or_default();
        let tags = assignment.tags.unwrap_or_else(|| self.config.tags.clone());
        let mut requester = serde_json::Map::new();
        let name = e
            .customer
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("Customer {}", e.customer.id));
        requester.insert("name".into(), json!(name));
        if let Some(email) = e.customer.email.as_deref().filter(|m| !m.trim().is_empty()) {
            requester.insert("email".into(), json!(email));
        }
        let mut ticket = json!({
            "subject": transcript::subject(e, SUBJECT_MAX),
            "comment": {
                "html_body": transcript::html(e, req.fallback_reason),
                "public": self.config.comment_public,
            },
            "requester": requester,
            "external_id": e.conversation_id,
            "tags": tags,
        });
        if let Some(id) = assignment.assignee_id.or(self.config.assignee_id) {
            ticket["assignee_id"] = json!(id);
        }
        if let Some(id) = assignment.group_id.or(self.config.group_id) {
            ticket["group_id"] = json!(id);
        }
        json!({ "ticket": ticket })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn external_ref(&self, t: &Ticket) -> ExternalRef {
        ExternalRef {
            kind: ExternalKind::ZendeskTicket,
            id: t.id.to_string(),
            number: None,
            url: self.config.agent_ticket_url(t.id),
            requester_id: t.requester_id.map(|r| r.to_string()),
        }
    }

    /// Send one request (after taking it from the org's budget). A failed
    /// read is marked as having changed nothing.
    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        op: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        if let Some(budget) = &self.budget {
            budget.take().await?;
        }
        let rb = rb
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let (resp, method) = execute(&self.http, rb, PROVIDER, op).await?;
        if let Some(remaining) = resp
            .headers()
            .get("x-rate-limit-remaining")
            .and_then(|v| v.to_str().ok())
        {
            tracing::debug!(
                operation = op,
                rate_limit_remaining = remaining,
                "zendesk rate limit"
            );
        }
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(settled_for(&method, error_from_response(resp, op).await))
    }

    /// A GET and its JSON answer: whatever fails, nothing changed.
    async fn read<T: for<'de> Deserialize<'de>>(
        &self,
        rb: reqwest::RequestBuilder,
        op: &str,
    ) -> Result<T, ProviderError> {
        let resp = self.send(rb, op).await?;
        Self::json(resp, op)
            .await
            .map_err(|e| settled_for(&reqwest::Method::GET, e))
    }

    async fn json<T: for<'de> Deserialize<'de>>(
        resp: reqwest::Response,
        op: &str,
    ) -> Result<T, ProviderError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{op}: unexpected response shape: {e}"),
            )
        })
    }

    fn ticket_id(ticket: &ExternalRef) -> Result<u64, ProviderError> {
        ticket.id.parse().map_err(|_| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("ticket id {:?} is not numeric", ticket.id),
            )
        })
    }

    fn requester_id(ticket: &ExternalRef) -> Option<u64> {
        ticket.requester_id.as_deref().and_then(|r| r.parse().ok())
    }
}

#[async_trait::async_trait]
impl TicketProvider for ZendeskClient {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Zendesk
    }

    async fn create_ticket(&self, req: TicketRequest<'_>) -> Result<ExternalRef, ProviderError> {
        let key = Self::idempotency_key(&req.org.org_id, &req.escalation.conversation_id);
        let body = self.ticket_body(req);
        let rb = self
            .http
            .post(self.url("/api/v2/tickets"))
            .header("Idempotency-Key", key)
            .json(&body);
        let resp = self.send(rb, "create ticket").await?;
        let lookup = resp
            .headers()
            .get("x-idempotency-lookup")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let env: TicketEnvelope = Self::json(resp, "create ticket").await?;
        tracing::info!(
            ticket_id = env.ticket.id,
            idempotency_lookup = lookup.as_deref(),
            "zendesk ticket created"
        );
        Ok(self.external_ref(&env.ticket))
    }

    async fn find_ticket(
        &self,
        req: TicketRequest<'_>,
    ) -> Result<Option<ExternalRef>, ProviderError> {
        let rb = self
            .http
            .get(self.url("/api/v2/tickets"))
            .query(&[("external_id", req.escalation.conversation_id.as_str())]);
        let list: TicketList = self.read(rb, "find ticket").await?;
        // external_id is not unique at Zendesk: the oldest ticket is the one we made first.
        Ok(list
            .tickets
            .iter()
            .min_by_key(|t| t.id)
            .map(|t| self.external_ref(t)))
    }

    async fn add_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
    ) -> Result<(), ProviderError> {
        let id = Self::ticket_id(ticket)?;
        let mut comment = json!({ "body": msg.text, "public": true });
        if let Some(author) = Self::requester_id(ticket) {
            comment["author_id"] = json!(author);
        }
        let metadata = json!({ MESSAGE_ID_METADATA: msg.message_id });
        let rb = self
            .http
            .put(self.url(&format!("/api/v2/tickets/{id}")))
            .json(&json!({ "ticket": { "comment": comment, "metadata": metadata } }));
        self.send(rb, "add comment").await?;
        Ok(())
    }

    async fn has_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, ProviderError> {
        // Exact: the audit of our update carries the message id. Newest first,
        // so the scan ends at the first attempt however long the history is.
        let not_before = since - chrono::Duration::minutes(AUDIT_CLOCK_MARGIN_MINUTES);
        let id = Self::ticket_id(ticket)?;
        let mut rb = self
            .http
            .get(self.url(&format!("/api/v2/tickets/{id}/audits")))
            .query(&[("sort_order", "desc"), ("per_page", AUDITS_PER_PAGE)]);
        for _ in 0..MAX_AUDIT_PAGES {
            let page: AuditPage = self.read(rb, "list audits").await?;
            if page
                .audits
                .iter()
                .any(|a| a.message_id() == Some(msg.message_id.as_str()))
            {
                return Ok(true);
            }
            if reached_older_than(&page.audits, not_before) {
                return Ok(false);
            }
            // Our credentials go only to the configured host (a proxy, the
            // simulator): the next page's path and query, on our base URL.
            match page.next_page.as_deref().and_then(path_and_query) {
                Some(next) => rb = self.http.get(self.url(&next)),
                None => return Ok(false),
            }
        }
        tracing::warn!(
            ticket_id = id,
            pages = MAX_AUDIT_PAGES,
            "zendesk ticket has more audits since the first attempt than are read: assuming the comment is not there"
        );
        Ok(false)
    }
}

/// `/path?query` of a pagination link.
fn path_and_query(link: &str) -> Option<String> {
    let url = reqwest::Url::parse(link).ok()?;
    Some(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    })
}

/// Whether a page read newest first has gone past `not_before`. A page in
/// oldest-first order (a provider that ignored `sort_order`) never ends the
/// scan early: the rest of the history is read.
fn reached_older_than(audits: &[Audit], not_before: chrono::DateTime<chrono::Utc>) -> bool {
    let times: Vec<_> = audits.iter().filter_map(|a| a.created_at).collect();
    match (times.first(), times.last()) {
        (Some(newest), Some(oldest)) => newest >= oldest && *oldest < not_before,
        _ => false,
    }
}

/// Turn a non-2xx answer into a typed error. Zendesk's error bodies vary:
/// `{"error":"..","description":".."}`, `{"error":{"title","message"}}`,
/// 422 `details` per field, or plain text: all are parsed leniently.
///
/// Only error codes and field names are kept: descriptions and plain-text
/// bodies are free text that may echo the requester's email or the subject.
async fn error_from_response(resp: reqwest::Response, op: &str) -> ProviderError {
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    let (mut class, mut kind) = classify_status(status);
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let code = parsed.as_ref().and_then(error_code);
    let fields = parsed.as_ref().map(invalid_fields).unwrap_or_default();
    let mut detail = code
        .clone()
        .unwrap_or_else(|| "(no error code)".to_string());
    if !fields.is_empty() {
        detail.push_str(&format!("; invalid fields: {}", fields.join(", ")));
    }
    if code.as_deref() == Some("IdempotentRequestError") {
        kind = ProviderErrorKind::IdempotencyConflict;
        class = ErrorClass::Permanent;
    }
    match status {
        401 => detail.push_str(" (check the agent email and API token of this org)"),
        403 => detail.push_str(" (the API token's agent lacks permission)"),
        409 => {
            // Another update of the ticket won the race: ours was not applied.
            class = ErrorClass::Transient;
            kind = ProviderErrorKind::Unavailable;
            detail.push_str(" (the ticket was updated at the same time: retrying)");
        }
        _ => {}
    }
    let names = parsed.as_ref().map(invalid_field_names).unwrap_or_default();
    ProviderError::http(PROVIDER, (class, kind), op, status, &detail, ra).with_fields(names)
}

/// `s` if it looks like an identifier (an error code or a field name), not prose.
fn code_like(s: &str) -> Option<String> {
    let s = s.trim();
    let ok = (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    ok.then(|| s.to_string())
}

/// The error code: `error` as a string, or `error.title`.
fn error_code(v: &Value) -> Option<String> {
    match &v["error"] {
        Value::String(s) => code_like(s),
        Value::Object(o) => o.get("title").and_then(Value::as_str).and_then(code_like),
        _ => None,
    }
}

/// `field (Code, ..)` for each field of a 422's `details`.
/// The names of the fields in a 422's `details` (identifier-like ones only).
fn invalid_field_names(v: &Value) -> Vec<String> {
    v["details"]
        .as_object()
        .map(|d| d.keys().filter_map(|f| code_like(f)).collect())
        .unwrap_or_default()
}

fn invalid_fields(v: &Value) -> Vec<String> {
    let Some(details) = v["details"].as_object() else {
        return Vec::new();
    };
    details
        .iter()
        .filter_map(|(field, errs)| {
            let field = code_like(field)?;
            let codes: Vec<String> = errs
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e["error"].as_str().and_then(code_like))
                        .collect()
                })
                .unwrap_or_default();
            Some(if codes.is_empty() {
                field
            } else {
                format!("{field} ({})", codes.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorization_value_is_sensitive() {
        let v = basic_auth("agent@example.com", "t0ken");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("Basic"), "{v:?}");
    }

    #[test]
    fn error_text_is_dropped_codes_and_fields_kept() {
        let body = json!({"error": "RecordInvalid", "description": "Requester: Email canary@x.io is not properly formatted",
            "details": {"requester": [{"description": "Email canary@x.io is not properly formatted", "error": "InvalidValue"}],
                        "a field with spaces": [{"error": "X"}]}});
        assert_eq!(error_code(&body).as_deref(), Some("RecordInvalid"));
        assert_eq!(invalid_fields(&body), vec!["requester (InvalidValue)"]);
        assert_eq!(
            error_code(&json!({"error": "Couldn't authenticate you"})),
            None
        );
        assert_eq!(
            error_code(
                &json!({"error": {"title": "Forbidden", "message": "You have no access to canary"}})
            )
            .as_deref(),
            Some("Forbidden")
        );
        assert_eq!(code_like("ada@example.com"), None);
    }

    #[test]
    fn pagination_links_keep_only_path_and_query() {
        assert_eq!(
            path_and_query(
                "https://acme.zendesk.com/api/v2/tickets/1/audits.json?page=2&sort_order=desc"
            )
            .as_deref(),
            Some("/api/v2/tickets/1/audits.json?page=2&sort_order=desc")
        );
        assert_eq!(path_and_query(""), None);
    }

    #[test]
    fn the_newest_first_scan_stops_at_the_first_attempt() {
        let at = |s: &str| Audit {
            created_at: Some(s.parse().unwrap()),
            metadata: Value::Null,
        };
        let cutoff: chrono::DateTime<chrono::Utc> = "2026-01-01T10:00:00Z".parse().unwrap();
        let desc = [at("2026-01-01T11:00:00Z"), at("2026-01-01T09:00:00Z")];
        assert!(reached_older_than(&desc, cutoff));
        let asc = [at("2026-01-01T09:00:00Z"), at("2026-01-01T11:00:00Z")];
        assert!(
            !reached_older_than(&asc, cutoff),
            "oldest-first pages are read to the end"
        );
        let newer = [at("2026-01-01T12:00:00Z"), at("2026-01-01T11:00:00Z")];
        assert!(!reached_older_than(&newer, cutoff));
        assert!(!reached_older_than(&[], cutoff));
    }
}
