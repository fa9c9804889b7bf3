//! Zendesk settings of one org.
use crate::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZendeskConfig {
    /// `acme` for https://acme.zendesk.com.
    pub subdomain: String,
    /// The agent whose API token is used (`{email}/token:{api_token}`).
    pub email: String,
    pub api_token: Secret,
    /// Overrides `https://{subdomain}.zendesk.com` (the simulator, a proxy).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Default assignee of new tickets.
    #[serde(default)]
    pub assignee_id: Option<u64>,
    /// Default group of new tickets.
    #[serde(default)]
    pub group_id: Option<u64>,
    /// Default tags of new tickets.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Whether the transcript comment is public (visible to the requester). Default: private.
    #[serde(default)]
    pub comment_public: bool,
    /// Requests per minute this org's API calls may use, across all replicas
    /// (leave head-room below the plan's limit: 200 / 400 / 700 / 2,500).
    /// Unset: no budget (429 answers are still honoured).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Live chat through Sunshine Conversations and Zendesk webhooks.
    #[serde(default)]
    pub live: Option<super::ZendeskLiveConfig>,
}

impl ZendeskConfig {
    /// The API base URL without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}.zendesk.com", self.subdomain),
        }
    }

    /// Where an agent opens a ticket (always the real Zendesk host).
    pub fn agent_ticket_url(&self, ticket_id: impl std::fmt::Display) -> String {
        format!(
            "https://{}.zendesk.com/agent/tickets/{ticket_id}",
            self.subdomain
        )
    }

    /// Resolve secrets and list problems as (field, fix).
    pub(super) fn validate(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let sub = self.subdomain.trim();
        if sub.is_empty()
            || sub.contains('.')
            || !sub.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            problems.push((
                "subdomain",
                "set the Zendesk subdomain only, e.g. \"acme\" for https://acme.zendesk.com"
                    .to_string(),
            ));
        }
        if !self.email.contains('@') {
            problems.push((
                "email",
                "set the email address of the agent that owns the API token".to_string(),
            ));
        }
        match self.api_token.resolve(env) {
            Ok(s) if s.is_empty() => problems.push((
                "api_token",
                "is empty: create a token in Admin Center > Apps and integrations > Zendesk API"
                    .to_string(),
            )),
            Ok(s) => self.api_token = s,
            Err(fix) => problems.push(("api_token", fix)),
        }
        if let Some(fix) = self.base_url.as_deref().and_then(super::check_base_url) {
            problems.push(("base_url", fix));
        }
        if self
            .tags
            .iter()
            .any(|t| t.trim().is_empty() || t.contains(' '))
        {
            problems.push((
                "tags",
                "Zendesk tags cannot be empty or contain spaces: use e.g. \"ai_escalation\""
                    .to_string(),
            ));
        }
        problems
    }

    /// The live-chat settings, when live chat is configured and switched on.
    pub fn live_chat(&self) -> Option<&super::ZendeskLiveConfig> {
        self.live.as_ref().filter(|l| l.enabled)
    }
}
