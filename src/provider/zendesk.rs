//! Zendesk Support tickets (API-token auth).
use super::budget::RateBudget;
use super::http::{classify_status, clip, retry_after, transport_error};
use super::transcript;
use super::{TicketProvider, TicketRequest};
use crate::config::ZendeskConfig;
use crate::contract::{CustomerMessage, ExternalKind, ProviderKind};
use crate::error::{ErrorClass, ProviderError, ProviderErrorKind};
use crate::store::ExternalRef;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

const PROVIDER: &str = "zendesk";
/// Zendesk keeps subjects up to this length (longer ones are cut anyway).
const SUBJECT_MAX: usize = 255;
/// Clock difference tolerated between us and Zendesk when matching comments.
const COMMENT_CLOCK_SKEW_SECS: i64 = 10;
/// Pages of comments read when checking for a comment after a crash.
const MAX_COMMENT_PAGES: usize = 10;

pub struct ZendeskClient {
    http: reqwest::Client,
    config: ZendeskConfig,
    base: String,
    auth: String,
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
struct CommentPage {
    #[serde(default)]
    comments: Vec<Comment>,
    #[serde(default)]
    next_page: Option<String>,
}

#[derive(Deserialize)]
struct Comment {
    #[serde(default)]
    author_id: Option<u64>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    created_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ZendeskClient {
    pub fn new(http: reqwest::Client, config: ZendeskConfig) -> Self {
        let raw = format!("{}/token:{}", config.email, config.api_token.expose());
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        );
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

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
        op: &str,
    ) -> Result<reqwest::Response, ProviderError> {
        if let Some(budget) = &self.budget {
            budget.take().await?;
        }
        let resp = rb
            .header(reqwest::header::AUTHORIZATION, &self.auth)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
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
        Err(error_from_response(resp, op).await)
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
        let resp = self.send(rb, "find ticket").await?;
        let list: TicketList = Self::json(resp, "find ticket").await?;
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
        let rb = self
            .http
            .put(self.url(&format!("/api/v2/tickets/{id}")))
            .json(&json!({ "ticket": { "comment": comment } }));
        self.send(rb, "add comment").await?;
        Ok(())
    }

    async fn has_customer_message(
        &self,
        ticket: &ExternalRef,
        msg: &CustomerMessage,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, ProviderError> {
        // Comments cannot carry our message id: match author and exact text,
        // created no earlier than our first attempt (less clock skew).
        let not_before = since - chrono::Duration::seconds(COMMENT_CLOCK_SKEW_SECS);
        let id = Self::ticket_id(ticket)?;
        let author = Self::requester_id(ticket);
        let wanted = msg.text.trim();
        let mut url = self.url(&format!("/api/v2/tickets/{id}/comments"));
        for _ in 0..MAX_COMMENT_PAGES {
            let resp = self.send(self.http.get(&url), "list comments").await?;
            let page: CommentPage = Self::json(resp, "list comments").await?;
            if page.comments.iter().any(|c| {
                (author.is_none() || c.author_id == author)
                    && c.body.as_deref().map(str::trim) == Some(wanted)
                    && c.created_at.is_none_or(|at| at >= not_before)
            }) {
                return Ok(true);
            }
            match page.next_page {
                Some(next) if !next.is_empty() => url = next,
                _ => return Ok(false),
            }
        }
        Ok(false)
    }
}

/// Turn a non-2xx answer into a typed error. Zendesk's error bodies vary:
/// `{"error":"..","description":".."}`, `{"error":{"title","message"}}`,
/// 422 `details` per field, or plain text: all are parsed leniently.
/// Field *values* never go into the message (they may be customer data).
async fn error_from_response(resp: reqwest::Response, op: &str) -> ProviderError {
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let text = resp.text().await.unwrap_or_default();
    let (mut class, mut kind) = classify_status(status);
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let code = parsed.as_ref().and_then(|v| match &v["error"] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("title").and_then(Value::as_str).map(str::to_string),
        _ => None,
    });
    let mut detail = match (&code, parsed.as_ref()) {
        (Some(c), Some(v)) => {
            let mut d = c.clone();
            if let Some(desc) = v["description"]
                .as_str()
                .or_else(|| v["error"]["message"].as_str())
            {
                d.push_str(&format!(": {}", clip(desc, 200)));
            }
            if let Some(details) = v["details"].as_object() {
                let fields: Vec<String> = details
                    .iter()
                    .map(|(field, errs)| {
                        let codes: Vec<&str> = errs
                            .as_array()
                            .map(|a| a.iter().filter_map(|e| e["error"].as_str()).collect())
                            .unwrap_or_default();
                        if codes.is_empty() {
                            field.clone()
                        } else {
                            format!("{field} ({})", codes.join(", "))
                        }
                    })
                    .collect();
                if !fields.is_empty() {
                    d.push_str(&format!("; invalid fields: {}", fields.join(", ")));
                }
            }
            d
        }
        _ => clip(text.trim(), 120),
    };
    if code.as_deref() == Some("IdempotentRequestError") {
        kind = ProviderErrorKind::IdempotencyConflict;
        class = ErrorClass::Permanent;
    }
    if status == 401 {
        detail = format!("{detail} (check the agent email and API token of this org)");
    } else if status == 403 {
        detail = format!("{detail} (the API token's agent lacks permission)");
    }
    ProviderError::http(PROVIDER, (class, kind), op, status, &detail, ra)
}
