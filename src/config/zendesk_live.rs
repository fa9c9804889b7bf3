//! Zendesk live-chat settings of one org (`[orgs.<org>.zendesk.live]`):
//! the Conversations API key (Sunshine Conversations), the webhook
//! credentials the ingress checks, and when an agent can take a chat.
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

/// When a live request may go to an agent (else it becomes a ticket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// Always hand over (Zendesk queues the chat until an agent takes it).
    Always,
    /// Only inside this Zendesk business-hours schedule
    /// (`GET /api/v2/business_hours/schedules/{id}`).
    Schedule(u64),
    /// Only while at least one agent is online for messaging
    /// (`GET /api/v2/agent_availabilities`, omnichannel routing accounts).
    AgentsOnline,
}

impl<'de> Deserialize<'de> for Availability {
    /// `"always"`, `"agents_online"` or `{ schedule_id = 123 }`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Schedule { schedule_id: u64 },
        }
        match Raw::deserialize(d)? {
            Raw::Word(w) if w == "always" => Ok(Availability::Always),
            Raw::Word(w) if w == "agents_online" => Ok(Availability::AgentsOnline),
            Raw::Word(_) => Err(serde::de::Error::custom(
                "availability is \"always\", \"agents_online\" or { schedule_id = <Zendesk schedule id> }",
            )),
            Raw::Schedule { schedule_id } => Ok(Availability::Schedule(schedule_id)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZendeskLiveConfig {
    /// The live-chat switch of this Zendesk org (the org-wide `live_chat`
    /// must be on too). Default: on when the table is present.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Conversations API key: App ID, Key ID and Secret (Admin Center >
    /// Apps and integrations > APIs > Conversations API).
    pub app_id: String,
    pub key_id: String,
    pub secret: Secret,
    /// Overrides `https://{subdomain}.zendesk.com/sc` (the simulator, a proxy).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Bearer token set on the Zendesk webhook (checked by the ingress).
    pub webhook_token: Secret,
    /// The webhook's signing secret, when signatures are to be checked.
    #[serde(default)]
    pub webhook_signing_secret: Option<Secret>,
    /// When an agent can take a chat. Default: always.
    #[serde(default = "default_availability")]
    pub availability: Availability,
    /// Display name of the AI assistant's lines in the agent's transcript.
    #[serde(default = "default_ai_name")]
    pub ai_display_name: String,
    /// Ticket fields set on the messaging ticket (field id -> value),
    /// passed as `dataCapture.ticketField.<id>` at passControl.
    #[serde(default)]
    pub ticket_fields: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

fn default_availability() -> Availability {
    Availability::Always
}

fn default_ai_name() -> String {
    "AI assistant".to_string()
}

impl ZendeskLiveConfig {
    /// The Conversations API base URL without a trailing slash.
    pub fn base_url(&self, subdomain: &str) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{subdomain}.zendesk.com/sc"),
        }
    }

    /// Resolve secrets and list problems as (field, fix); field names are
    /// relative to `zendesk.live`.
    pub(super) fn validate(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let id_like = |s: &str| {
            !s.trim().is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !id_like(&self.app_id) {
            problems.push((
                "app_id",
                "set the App ID of the Conversations API key (Admin Center > Apps and integrations > APIs > Conversation API)".to_string(),
            ));
        }
        if !id_like(&self.key_id) {
            problems.push((
                "key_id",
                "set the Key ID of the Conversations API key (it starts with app_)".to_string(),
            ));
        }
        match self.secret.resolve(env) {
            Ok(s) if s.is_empty() => problems.push((
                "secret",
                "is empty: copy the Secret of the Conversations API key (shown once when the key is created)".to_string(),
            )),
            Ok(s) => self.secret = s,
            Err(fix) => problems.push(("secret", fix)),
        }
        match self.webhook_token.resolve(env) {
            Ok(s) if s.expose().trim().len() < 16 => problems.push((
                "webhook_token",
                "must be at least 16 characters: use the long random Bearer token set on the Zendesk webhook".to_string(),
            )),
            Ok(s) => self.webhook_token = s,
            Err(fix) => problems.push(("webhook_token", fix)),
        }
        if let Some(secret) = &self.webhook_signing_secret {
            match secret.resolve(env) {
                Ok(s) if s.is_empty() => problems.push((
                    "webhook_signing_secret",
                    "is empty: copy the webhook's signing secret (Webhooks > the webhook > Signing secret) or remove the field".to_string(),
                )),
                Ok(s) => self.webhook_signing_secret = Some(s),
                Err(fix) => problems.push(("webhook_signing_secret", fix)),
            }
        }
        if let Some(fix) = self.base_url.as_deref().and_then(super::check_base_url) {
            problems.push(("base_url", fix));
        }
        if let Availability::Schedule(0) = self.availability {
            problems.push((
                "availability",
                "schedule_id must be the id of a Zendesk business-hours schedule (Admin Center > Objects and rules > Schedules)".to_string(),
            ));
        }
        if self.ai_display_name.trim().is_empty() {
            problems.push((
                "ai_display_name",
                "must not be empty: it names the AI assistant's lines in the agent's transcript"
                    .to_string(),
            ));
        }
        if self
            .ticket_fields
            .keys()
            .any(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_digit()))
        {
            problems.push((
                "ticket_fields",
                "keys are Zendesk ticket field ids (digits), e.g. { \"360001234567\" = \"value\" }"
                    .to_string(),
            ));
        }
        problems
    }
}
