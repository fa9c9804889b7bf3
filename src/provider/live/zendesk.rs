//! Zendesk live chat: a Sunshine Conversations conversation handed to Agent
//! Workspace (`passControl` to `zd-agentWorkspace`, which creates the
//! messaging ticket), with availability from the Zendesk Support API.
//!
//! Journal steps of a hand-over (values are provider ids):
//! `user`, `conversation`, `msg:<escalator message id>` per transcript
//! message, `pass_control`; each mutating step is preceded by
//! `attempt:<step>`. A step attempted but not done is looked up (by our ids
//! in Sunshine metadata) before it is made again.
use super::availability::{self, AgentAvailabilities, ScheduleEnvelope};
use super::sunshine::{MAX_PAGES, MESSAGE_ID_KEY, PROVIDER, SunshineClient, TEXT_MAX};
use super::{Availability, HandoverJournal, HandoverRequest, Link, LiveChatProvider, LiveSession};
use crate::config::{Availability as Policy, ZendeskConfig, ZendeskLiveConfig};
use crate::contract::{CustomerMessage, EscalationRequested, FallbackReason, ProviderKind, Role};
use crate::error::{ProcessError, ProviderError, ProviderErrorKind};
use crate::provider::http::{classify_status, execute, retry_after, settled_for, transport_error};
use base64::Engine;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};

/// The Agent Workspace switchboard integration (name and integration type).
pub const AGENT_WORKSPACE: &str = "zd-agentWorkspace";
const AGENT_WORKSPACE_TYPE: &str = "zd:agentWorkspace";
/// Sunshine's limit on passControl metadata (serialised bytes).
pub const METADATA_MAX_BYTES: usize = 4096;
/// Conversation metadata keys that name our conversation.
pub const META_ORG: &str = "escalator_org_id";
pub const META_CONVERSATION: &str = "escalator_conversation_id";
/// Our id of the notice that the customer left.
pub const CUSTOMER_LEFT_ID: &str = "customer-left";
/// Messages older than the first attempt by more than this cannot be ours.
const CLOCK_MARGIN_MINUTES: i64 = 1;
/// The first transcript line when the escalation has no summary and no transcript.
const EMPTY_TRANSCRIPT: &str = "The customer asked to talk to a person.";
/// Subject and summary are cut to this many characters in the header line.
const HEADER_PART_MAX: usize = 1000;

pub struct ZendeskLive {
    org_id: String,
    zendesk: ZendeskConfig,
    live: ZendeskLiveConfig,
    sunshine: SunshineClient,
    http: reqwest::Client,
    support_base: String,
    support_auth: HeaderValue,
}

/// One transcript message to post: our id and the request body.
#[derive(Debug, Clone)]
pub struct PlannedMessage {
    pub id: String,
    pub body: Value,
}

fn support_auth(email: &str, token: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{email}/token:{token}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    value.set_sensitive(true);
    value
}

/// Split `text` into parts of at most `max` characters, on char boundaries,
/// preferring to cut after whitespace. Empty text is one empty part.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.chars().count() > max {
        // Byte offset just past the `max`-th char.
        let hard = rest.char_indices().nth(max).map_or(rest.len(), |(i, _)| i);
        let window = &rest[..hard];
        let cut = window
            .char_indices()
            .filter(|(_, c)| c.is_whitespace())
            .map(|(i, c)| i + c.len_utf8())
            .rfind(|&i| i > 0 && i * 2 >= hard)
            .unwrap_or(hard);
        parts.push(rest[..cut].to_string());
        rest = &rest[cut..];
    }
    parts.push(rest.to_string());
    parts
}

/// Our id of part `n` of a customer message.
pub fn part_id(message_id: &str, n: usize) -> String {
    if n == 0 {
        message_id.to_string()
    } else {
        format!("{message_id}#{n}")
    }
}

/// Whether a step was attempted (its answer may have been lost).
async fn attempted(journal: &dyn HandoverJournal, attempt: &str) -> Result<bool, ProcessError> {
    Ok(journal.get(attempt).await?.as_deref() == Some("1"))
}

/// A call that certainly did not land (a refusal, a connection that never
/// opened) clears its attempt mark, so the retry skips the look-up. Best
/// effort: a mark left behind costs only a look-up.
async fn settle<T>(
    journal: &dyn HandoverJournal,
    attempt: &str,
    result: Result<T, ProviderError>,
) -> Result<T, ProviderError> {
    if let Err(e) = &result
        && !e.may_have_landed()
        && journal.put(attempt, "0").await.is_err()
    {
        tracing::debug!(step = attempt, "could not clear an attempt mark");
    }
    result
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::permanent(PROVIDER, ProviderErrorKind::Configuration, message)
}

/// The customer's name split on the first space (given name, surname).
fn split_name(name: &str) -> (Option<&str>, Option<&str>) {
    let name = name.trim();
    match name.split_once(char::is_whitespace) {
        Some((given, sur)) => (
            Some(given).filter(|s| !s.is_empty()),
            Some(sur.trim()).filter(|s| !s.is_empty()),
        ),
        None => (Some(name).filter(|s| !s.is_empty()), None),
    }
}

#[derive(Deserialize)]
struct SupportUser {
    user: SupportUserBody,
}

#[derive(Deserialize)]
struct SupportUserBody {
    #[serde(default)]
    name: Option<String>,
}

impl ZendeskLive {
    pub fn new(
        http: reqwest::Client,
        org_id: &str,
        zendesk: ZendeskConfig,
        live: ZendeskLiveConfig,
    ) -> ZendeskLive {
        let sunshine = SunshineClient::new(
            http.clone(),
            &live.base_url(&zendesk.subdomain),
            &live.app_id,
            &live.key_id,
            live.secret.expose(),
        );
        ZendeskLive {
            org_id: org_id.to_string(),
            support_base: zendesk.base_url(),
            support_auth: support_auth(&zendesk.email, zendesk.api_token.expose()),
            zendesk,
            live,
            sunshine,
            http,
        }
    }

    /// The Sunshine client (for callers that need a raw call).
    pub fn sunshine(&self) -> &SunshineClient {
        &self.sunshine
    }

    /// `POST /users` body: external id = the customer id, profile from name and email.
    pub fn user_body(e: &EscalationRequested) -> Value {
        let mut profile = Map::new();
        if let Some(name) = e.customer.name.as_deref() {
            let (given, sur) = split_name(name);
            if let Some(g) = given {
                profile.insert(
                    "givenName".into(),
                    json!(crate::provider::transcript::truncate_chars(g, 128)),
                );
            }
            if let Some(s) = sur {
                profile.insert(
                    "surname".into(),
                    json!(crate::provider::transcript::truncate_chars(s, 128)),
                );
            }
        }
        if let Some(email) = e
            .customer
            .email
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty() && m.len() <= 128)
        {
            profile.insert("email".into(), json!(email));
        }
        let mut body = json!({ "externalId": e.customer.id });
        if !profile.is_empty() {
            body["profile"] = Value::Object(profile);
        }
        body
    }

    /// `POST /conversations` body: personal, our ids in the metadata.
    pub fn conversation_body(&self, e: &EscalationRequested, user_id: &str) -> Value {
        json!({
            "type": "personal",
            "participants": [{ "userId": user_id, "subscribeSDKClient": false }],
            "metadata": { META_ORG: self.org_id, META_CONVERSATION: e.conversation_id },
        })
    }

    fn business_message(&self, text: &str, id: &str) -> Value {
        json!({
            "author": { "type": "business", "displayName": self.live.ai_display_name },
            "content": { "type": "text", "text": text },
            "metadata": { MESSAGE_ID_KEY: id },
        })
    }

    fn user_message(user_id: &str, text: &str, id: &str) -> Value {
        json!({
            "author": { "type": "user", "userId": user_id },
            "content": { "type": "text", "text": text },
            "metadata": { MESSAGE_ID_KEY: id },
        })
    }

    /// The transcript as Sunshine messages, in order: a header line
    /// (subject and summary; or a fixed sentence when there is nothing else),
    /// then each entry, split at Sunshine's 4,096 characters.
    pub fn transcript_messages(
        &self,
        e: &EscalationRequested,
        user_id: &str,
    ) -> Vec<PlannedMessage> {
        let mut out = Vec::new();
        let mut header = Vec::new();
        let clip = |s: &str| crate::provider::transcript::truncate_chars(s.trim(), HEADER_PART_MAX);
        if let Some(s) = e.subject.as_deref().filter(|s| !s.trim().is_empty()) {
            header.push(format!("Subject: {}", clip(s)));
        }
        if let Some(s) = e.summary.as_deref().filter(|s| !s.trim().is_empty()) {
            header.push(format!("Summary: {}", clip(s)));
        }
        let entries: Vec<(usize, &crate::contract::TranscriptEntry)> = e
            .transcript
            .iter()
            .enumerate()
            .filter(|(_, t)| !t.text.trim().is_empty())
            .collect();
        if header.is_empty() && entries.is_empty() {
            header.push(EMPTY_TRANSCRIPT.to_string());
        }
        if !header.is_empty() {
            let id = "transcript:header:0".to_string();
            out.push(PlannedMessage {
                body: self.business_message(&header.join("\n"), &id),
                id,
            });
        }
        for (index, entry) in entries {
            for (part, text) in split_text(&entry.text, TEXT_MAX).iter().enumerate() {
                let id = format!("transcript:{index}:{part}");
                let body = match entry.role {
                    Role::Customer => Self::user_message(user_id, text, &id),
                    Role::Ai | Role::Agent => self.business_message(text, &id),
                };
                out.push(PlannedMessage { id, body });
            }
        }
        out
    }

    /// The passControl body: routing and requester as flat string metadata.
    /// Over Sunshine's 4 KB: a permanent Validation error naming the largest part.
    pub fn pass_control_body(
        &self,
        req: HandoverRequest<'_>,
        first_message_id: &str,
    ) -> Result<Value, ProviderError> {
        let e = req.escalation;
        let assignment = e.assignment.clone().unwrap_or_default();
        let mut tags = assignment.tags.unwrap_or_else(|| self.zendesk.tags.clone());
        if !tags.iter().any(|t| t == req.correlation_tag) {
            tags.push(req.correlation_tag.to_string());
        }
        let mut m: Vec<(String, String)> =
            vec![("first_message_id".into(), first_message_id.to_string())];
        let name = e
            .customer
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("Customer {}", e.customer.id));
        m.push(("dataCapture.systemField.requester.name".into(), name));
        if let Some(email) = e
            .customer
            .email
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            m.push((
                "dataCapture.systemField.requester.email".into(),
                email.to_string(),
            ));
        }
        if let Some(g) = assignment.group_id.or(self.zendesk.group_id) {
            m.push(("dataCapture.systemField.group_id".into(), g.to_string()));
        }
        if let Some(a) = assignment.assignee_id.or(self.zendesk.assignee_id) {
            m.push(("dataCapture.systemField.assignee_id".into(), a.to_string()));
        }
        m.push(("dataCapture.systemField.tags".into(), tags.join(",")));
        for (field, value) in &self.live.ticket_fields {
            m.push((format!("dataCapture.ticketField.{field}"), value.clone()));
        }
        let metadata: Map<String, Value> = m.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let size = Value::Object(metadata.clone()).to_string().len();
        if size > METADATA_MAX_BYTES {
            let largest = m
                .iter()
                .max_by_key(|(k, v)| k.len() + v.len())
                .map(|(k, _)| k.as_str())
                .unwrap_or("?");
            return Err(ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Validation,
                format!(
                    "passControl metadata is {size} bytes, over Sunshine's {METADATA_MAX_BYTES}-byte limit; the largest part is `{largest}`: shorten it"
                ),
            ));
        }
        Ok(json!({ "switchboardIntegration": AGENT_WORKSPACE, "metadata": metadata }))
    }

    async fn ensure_user(
        &self,
        e: &EscalationRequested,
        journal: &dyn HandoverJournal,
    ) -> Result<String, ProcessError> {
        if let Some(id) = journal.get("user").await? {
            return Ok(id);
        }
        let id = match self.sunshine.create_user(&Self::user_body(e)).await? {
            Some(id) => id,
            None => self.sunshine.get_user(&e.customer.id).await?,
        };
        journal.put("user", &id).await?;
        Ok(id)
    }

    /// Our conversation among the user's, by its metadata.
    async fn find_conversation(
        &self,
        e: &EscalationRequested,
        user_id: &str,
    ) -> Result<Option<String>, ProviderError> {
        let all = self.sunshine.list_conversations(user_id).await?;
        Ok(all
            .into_iter()
            .find(|c| {
                c.metadata_str(META_CONVERSATION) == Some(e.conversation_id.as_str())
                    && c.metadata_str(META_ORG).is_none_or(|o| o == self.org_id)
            })
            .map(|c| c.id))
    }

    async fn ensure_conversation(
        &self,
        e: &EscalationRequested,
        user_id: &str,
        journal: &dyn HandoverJournal,
    ) -> Result<String, ProcessError> {
        if let Some(id) = journal.get("conversation").await? {
            return Ok(id);
        }
        if attempted(journal, "attempt:conversation").await?
            && let Some(id) = self.find_conversation(e, user_id).await?
        {
            journal.put("conversation", &id).await?;
            return Ok(id);
        }
        journal.put("attempt:conversation", "1").await?;
        let id = self
            .sunshine
            .create_conversation(&self.conversation_body(e, user_id))
            .await;
        let id = match settle(journal, "attempt:conversation", id).await {
            Ok(id) => id,
            Err(err) if Self::may_be_multi_convo_refusal(&err) => {
                // Without multiConvoEnabled a user's second personal
                // conversation is refused: tell it apart from other refusals.
                let existing = self.sunshine.list_conversations(user_id).await?;
                if let Some(ours) = existing
                    .iter()
                    .find(|c| c.metadata_str(META_CONVERSATION) == Some(e.conversation_id.as_str()))
                {
                    ours.id.clone()
                } else if !existing.is_empty() {
                    return Err(config_error(format!(
                        "sunshine create conversation: refused ({}) because the customer already has a conversation: enable multi-conversations (multiConvoEnabled) for the Sunshine app, in Admin Center > Channels > Messaging > Manage settings",
                        err.status.map_or_else(|| "?".to_string(), |s| format!("HTTP {s}"))
                    ))
                    .with_status(err.status.unwrap_or(0))
                    .into());
                } else {
                    return Err(err.into());
                }
            }
            Err(err) => return Err(err.into()),
        };
        journal.put("conversation", &id).await?;
        Ok(id)
    }

    fn may_be_multi_convo_refusal(err: &ProviderError) -> bool {
        matches!(err.status, Some(400 | 403 | 409 | 422))
    }

    /// Our ids -> Sunshine ids of the conversation's messages (every page, bounded).
    async fn posted_messages(
        &self,
        conversation_id: &str,
        not_before: Option<DateTime<Utc>>,
        wanted: &HashSet<String>,
    ) -> Result<HashMap<String, String>, ProviderError> {
        let mut found = HashMap::new();
        let mut before: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .sunshine
                .list_messages(conversation_id, before.as_deref())
                .await?;
            for m in &page.messages {
                if let Some(ours) = m.escalator_id()
                    && (wanted.is_empty() || wanted.contains(ours))
                {
                    found.insert(ours.to_string(), m.id.clone());
                }
            }
            if !wanted.is_empty() && wanted.iter().all(|w| found.contains_key(w)) {
                break;
            }
            let oldest = page.messages.iter().filter_map(|m| m.received).min();
            if let (Some(oldest), Some(limit)) = (oldest, not_before)
                && oldest < limit
            {
                break;
            }
            match page.meta.before_cursor.filter(|_| page.meta.has_more) {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        Ok(found)
    }

    /// Post each transcript message once; the Sunshine id of the first.
    async fn ensure_transcript(
        &self,
        e: &EscalationRequested,
        user_id: &str,
        conversation_id: &str,
        journal: &dyn HandoverJournal,
    ) -> Result<String, ProcessError> {
        let mut first: Option<String> = None;
        let mut posted: Option<HashMap<String, String>> = None;
        for planned in self.transcript_messages(e, user_id) {
            let step = format!("msg:{}", planned.id);
            let attempt = format!("attempt:{step}");
            let mut id = journal.get(&step).await?;
            if id.is_none() && attempted(journal, &attempt).await? {
                if posted.is_none() {
                    posted = Some(
                        self.posted_messages(conversation_id, None, &HashSet::new())
                            .await?,
                    );
                }
                if let Some(found) = posted.as_ref().and_then(|p| p.get(&planned.id)) {
                    journal.put(&step, found).await?;
                    id = Some(found.clone());
                }
            }
            let id = match id {
                Some(id) => id,
                None => {
                    journal.put(&attempt, "1").await?;
                    let posted = self
                        .sunshine
                        .post_message(conversation_id, &planned.body)
                        .await;
                    let id = settle(journal, &attempt, posted).await?;
                    journal.put(&step, &id).await?;
                    id
                }
            };
            first.get_or_insert(id);
        }
        first
            .ok_or_else(|| ProcessError::Rejected("the hand-over has no transcript message".into()))
    }

    fn agent_workspace_active(c: &super::sunshine::Conversation) -> bool {
        c.active_switchboard_integration.as_ref().is_some_and(|s| {
            s.name.as_deref() == Some(AGENT_WORKSPACE)
                || s.integration_type.as_deref() == Some(AGENT_WORKSPACE_TYPE)
        })
    }

    async fn ensure_pass_control(
        &self,
        req: HandoverRequest<'_>,
        conversation_id: &str,
        first_message_id: &str,
        journal: &dyn HandoverJournal,
    ) -> Result<(), ProcessError> {
        if journal.get("pass_control").await?.is_some() {
            return Ok(());
        }
        let body = self.pass_control_body(req, first_message_id)?;
        if attempted(journal, "attempt:pass_control").await? {
            let c = self.sunshine.get_conversation(conversation_id).await?;
            if Self::agent_workspace_active(&c) {
                journal.put("pass_control", "done").await?;
                return Ok(());
            }
        }
        journal.put("attempt:pass_control", "1").await?;
        let passed = self.sunshine.pass_control(conversation_id, &body).await;
        settle(journal, "attempt:pass_control", passed).await?;
        journal.put("pass_control", "done").await?;
        Ok(())
    }

    /// A GET on the Zendesk Support API and its JSON answer.
    async fn support_get<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        op: &str,
    ) -> Result<T, ProviderError> {
        let rb = self
            .http
            .get(format!("{}{path}", self.support_base))
            .query(query)
            .header(reqwest::header::AUTHORIZATION, self.support_auth.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let (resp, method) = execute(&self.http, rb, PROVIDER, op).await?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let ra = retry_after(resp.headers());
            let text = resp.text().await.unwrap_or_default();
            let code = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .filter(|c| {
                    c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
                })
                .unwrap_or_else(|| "(no error code)".to_string());
            return Err(settled_for(
                &method,
                ProviderError::http(PROVIDER, classify_status(status), op, status, &code, ra),
            ));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| settled_for(&method, transport_error(PROVIDER, &e)))?;
        serde_json::from_slice(&bytes).map_err(|_| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{op}: unexpected response shape"),
            )
        })
    }

    async fn schedule_open(&self, schedule_id: u64) -> Result<Availability, ProviderError> {
        let path = format!("/api/v2/business_hours/schedules/{schedule_id}");
        let env: ScheduleEnvelope = match self.support_get(&path, &[], "zendesk get schedule").await
        {
            Err(e) if e.status == Some(404) => {
                return Err(config_error(format!(
                    "zendesk get schedule: business-hours schedule {schedule_id} does not exist: fix availability.schedule_id"
                )));
            }
            other => other?,
        };
        let zone = env.schedule.time_zone.as_str();
        let tz = availability::time_zone(zone).ok_or_else(|| {
            config_error(format!(
                "business-hours schedule {schedule_id} has time zone {zone:?}, which escalator does not know: pick another zone for the schedule"
            ))
        })?;
        Ok(
            if availability::is_open(&env.schedule.intervals, tz, Utc::now()) {
                Availability::Open
            } else {
                Availability::Closed(FallbackReason::OutsideBusinessHours)
            },
        )
    }

    async fn agents_online(&self) -> Result<Availability, ProviderError> {
        let answer: AgentAvailabilities = match self
            .support_get(
                "/api/v2/agent_availabilities",
                &[("filter[channel_status]", "messaging:online")],
                "zendesk agent availabilities",
            )
            .await
        {
            Err(e) if matches!(e.status, Some(403 | 404)) => {
                return Err(config_error(format!(
                    "zendesk agent availabilities: HTTP {} (the account has no omnichannel routing): set availability = \"always\" or a business-hours schedule",
                    e.status.unwrap_or(0)
                )));
            }
            other => other?,
        };
        Ok(if availability::agent_online(&answer) {
            Availability::Open
        } else {
            Availability::Closed(FallbackReason::NoAgentOnline)
        })
    }

    fn session(&self, user_id: String, conversation_id: String) -> LiveSession {
        LiveSession {
            user_id,
            conversation_id,
            url: format!("https://{}.zendesk.com/agent/", self.zendesk.subdomain),
        }
    }
}

#[async_trait::async_trait]
impl LiveChatProvider for ZendeskLive {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Zendesk
    }

    async fn availability(&self) -> Result<Availability, ProviderError> {
        match self.live.availability {
            Policy::Always => Ok(Availability::Open),
            Policy::Schedule(id) => self.schedule_open(id).await,
            Policy::AgentsOnline => self.agents_online().await,
        }
    }

    async fn hand_over(
        &self,
        req: HandoverRequest<'_>,
        journal: &dyn HandoverJournal,
    ) -> Result<LiveSession, ProcessError> {
        let e = req.escalation;
        let user_id = self.ensure_user(e, journal).await?;
        let conversation_id = self.ensure_conversation(e, &user_id, journal).await?;
        journal
            .link(Link::ProviderConversation(&conversation_id))
            .await?;
        let first = self
            .ensure_transcript(e, &user_id, &conversation_id, journal)
            .await?;
        self.ensure_pass_control(req, &conversation_id, &first, journal)
            .await?;
        tracing::info!(conversation_id = %conversation_id, "zendesk live hand-over passed to Agent Workspace");
        Ok(self.session(user_id, conversation_id))
    }

    async fn send_customer_message(
        &self,
        session: &LiveSession,
        msg: &CustomerMessage,
    ) -> Result<(), ProviderError> {
        let parts = split_text(&msg.text, TEXT_MAX);
        // A long message goes out in parts: after a crash half-way, post only the missing ones.
        let already = if parts.len() > 1 {
            let wanted: HashSet<String> = (0..parts.len())
                .map(|n| part_id(&msg.message_id, n))
                .collect();
            let since = msg.sent_at - chrono::Duration::minutes(CLOCK_MARGIN_MINUTES);
            self.posted_messages(&session.conversation_id, Some(since), &wanted)
                .await?
        } else {
            HashMap::new()
        };
        for (n, text) in parts.iter().enumerate() {
            let id = part_id(&msg.message_id, n);
            if already.contains_key(&id) {
                continue;
            }
            self.sunshine
                .post_message(
                    &session.conversation_id,
                    &Self::user_message(&session.user_id, text, &id),
                )
                .await?;
        }
        Ok(())
    }

    async fn has_customer_message(
        &self,
        session: &LiveSession,
        msg: &CustomerMessage,
        since: DateTime<Utc>,
    ) -> Result<bool, ProviderError> {
        let count = split_text(&msg.text, TEXT_MAX).len();
        let wanted: HashSet<String> = (0..count).map(|n| part_id(&msg.message_id, n)).collect();
        let not_before = since - chrono::Duration::minutes(CLOCK_MARGIN_MINUTES);
        let found = self
            .posted_messages(&session.conversation_id, Some(not_before), &wanted)
            .await?;
        Ok(wanted.iter().all(|w| found.contains_key(w)))
    }

    /// Not relayed: the Conversations API accepts only `conversation:read`
    /// activity from a user author ("If the author type is `user`, only
    /// `conversation:read` is supported"), so a customer's `typing:start`
    /// would be refused with a 400 on every keystroke. `customer.typing` is
    /// optional in the contract.
    async fn typing(&self, _session: &LiveSession, _typing: bool) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn customer_left(&self, session: &LiveSession, text: &str) -> Result<(), ProviderError> {
        let text = crate::provider::transcript::truncate_chars(text, TEXT_MAX);
        self.sunshine
            .post_message(
                &session.conversation_id,
                &self.business_message(&text, CUSTOMER_LEFT_ID),
            )
            .await
            .map(drop)
    }

    async fn agent_name(&self, agent_id: &str) -> Result<Option<String>, ProviderError> {
        if agent_id.is_empty() || !agent_id.chars().all(|c| c.is_ascii_digit()) {
            return Ok(None);
        }
        let path = format!("/api/v2/users/{agent_id}");
        match self
            .support_get::<SupportUser>(&path, &[], "zendesk get user")
            .await
        {
            Ok(u) => Ok(u.user.name.filter(|n| !n.trim().is_empty())),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_splits_on_whitespace_within_the_limit() {
        let text = format!("{} {}", "a".repeat(4000), "b".repeat(200));
        let parts = split_text(&text, TEXT_MAX);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], format!("{} ", "a".repeat(4000)));
        assert_eq!(parts.concat(), text);
        let solid = "é".repeat(9000);
        let parts = split_text(&solid, TEXT_MAX);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            vec![4096, 4096, 808]
        );
        assert_eq!(split_text("short", TEXT_MAX), vec!["short"]);
    }

    #[test]
    fn names_split_on_the_first_space() {
        assert_eq!(
            split_name("Ada King Lovelace"),
            (Some("Ada"), Some("King Lovelace"))
        );
        assert_eq!(split_name("Ada"), (Some("Ada"), None));
        assert_eq!(split_name("  "), (None, None));
    }

    #[test]
    fn part_ids() {
        assert_eq!(part_id("m1", 0), "m1");
        assert_eq!(part_id("m1", 2), "m1#2");
    }
}
