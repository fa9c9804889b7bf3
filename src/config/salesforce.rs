//! Salesforce settings of one org.
use crate::secret::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceConfig {
    /// My Domain host (`acme.my.salesforce.com`) or full URL
    /// (`https://acme.my.salesforce.com`, `http://127.0.0.1:8080` for the simulator).
    pub my_domain: String,
    /// Consumer key of the External Client App.
    pub client_id: String,
    /// Consumer secret of the External Client App.
    pub client_secret: Secret,
    /// REST API version, e.g. "v62.0".
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Case.Origin of new Cases (a picklist value, e.g. "Chat" or "Web").
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub record_type_id: Option<String>,
    /// Owner (user or queue id). When set, assignment rules are switched off.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// Assignment rule id for the `Sforce-Auto-Assign` header (default: the org's active rule).
    #[serde(default)]
    pub assignment_rule_id: Option<String>,
    /// Case fields filled from the event's `context`: `{ "Plan__c" = "plan" }`.
    #[serde(default)]
    pub context_fields: BTreeMap<String, String>,
    /// Constant Case fields, e.g. `{ "Type" = "Question" }`.
    #[serde(default)]
    pub extra_fields: BTreeMap<String, toml::Value>,
    /// External ID field (e.g. `Escalator_Conversation_Id__c`) used for idempotent upsert.
    #[serde(default)]
    pub external_id_field: Option<String>,
    /// How long to back off after REQUEST_LIMIT_EXCEEDED, in seconds.
    #[serde(default = "default_limit_backoff")]
    pub limit_backoff_secs: u64,
    /// Send client credentials as HTTP Basic instead of in the form body.
    #[serde(default)]
    pub token_auth_basic: bool,
    /// Live chat (Messaging for In-App and Web): `[orgs.X.salesforce.live]`.
    #[serde(default)]
    pub live: Option<super::SalesforceLiveConfig>,
}

fn default_api_version() -> String {
    "v62.0".to_string()
}

fn default_limit_backoff() -> u64 {
    300
}

impl SalesforceConfig {
    /// `https://{my_domain}` without a trailing slash.
    pub fn login_base_url(&self) -> String {
        let d = self.my_domain.trim().trim_end_matches('/');
        if d.starts_with("http://") || d.starts_with("https://") {
            d.to_string()
        } else {
            format!("https://{d}")
        }
    }

    pub fn token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.login_base_url())
    }

    pub(super) fn validate(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let host = self
            .login_base_url()
            .split("://")
            .nth(1)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if self.my_domain.trim().is_empty() {
            problems.push((
                "my_domain",
                "set your My Domain host, e.g. acme.my.salesforce.com (Setup > My Domain)"
                    .to_string(),
            ));
        } else if host.starts_with("login.salesforce.com")
            || host.starts_with("test.salesforce.com")
        {
            problems.push((
                "my_domain",
                "the client credentials flow only works on your My Domain host (e.g. acme.my.salesforce.com), not login/test.salesforce.com".to_string(),
            ));
        } else if reqwest::Url::parse(&self.login_base_url()).is_err() {
            problems.push((
                "my_domain",
                "is not a host name or URL: use e.g. acme.my.salesforce.com".to_string(),
            ));
        }
        if self.client_id.trim().is_empty() {
            problems.push((
                "client_id",
                "set the consumer key of the External Client App".to_string(),
            ));
        }
        match self.client_secret.resolve(env) {
            Ok(s) if s.is_empty() => problems.push((
                "client_secret",
                "is empty: set the consumer secret of the External Client App".to_string(),
            )),
            Ok(s) => self.client_secret = s,
            Err(fix) => problems.push(("client_secret", fix)),
        }
        let v = self.api_version.trim_start_matches('v');
        let valid_version = v
            .split_once('.')
            .is_some_and(|(major, minor)| major.parse::<u32>().is_ok() && minor == "0");
        if !valid_version {
            problems.push(("api_version", "use the form \"v62.0\"".to_string()));
        } else {
            self.api_version = format!("v{v}");
        }
        if let Some(f) = &self.external_id_field
            && (!f.ends_with("__c") || f.len() <= 3)
        {
            problems.push((
                "external_id_field",
                "must be the API name of a custom External ID field, ending in __c".to_string(),
            ));
        }
        if let Some(live) = self.live.as_mut() {
            problems.extend(live.validate());
        }
        problems
    }
}

/// How creation of a Case is made idempotent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SalesforceIdempotency {
    /// Upsert on this External ID field: the server deduplicates.
    ExternalId(String),
    /// Our own record in Redis plus a lookup before re-creating.
    Guarded,
}

impl SalesforceConfig {
    pub fn idempotency(&self) -> SalesforceIdempotency {
        match &self.external_id_field {
            Some(f) => SalesforceIdempotency::ExternalId(f.clone()),
            None => SalesforceIdempotency::Guarded,
        }
    }
}
