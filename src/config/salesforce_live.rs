//! Live chat settings of a Salesforce org (`[orgs.X.salesforce.live]`):
//! the Custom Client deployment of Messaging for In-App and Web, as its code
//! snippet gives it (OrganizationId, DeveloperName, Url), and how the
//! routing (pre-chat) fields are filled.
use crate::contract::EscalationRequested;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceLiveConfig {
    /// Live chat on (default, when the table exists) or off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// OrganizationId of the snippet: 15 or 18 letters and digits (00D...).
    pub org_id: String,
    /// DeveloperName of the snippet (the Embedded Service deployment's API name).
    pub developer_name: String,
    /// Url of the snippet (the SCRT base URL, https://{org}.my.salesforce-scrt.com).
    pub scrt_url: String,
    /// Routing attribute (pre-chat field) -> `customer.name`, `customer.email`
    /// or `context.<key>`.
    #[serde(default)]
    pub prechat: BTreeMap<String, String>,
    /// A hidden pre-chat field that gets the AI transcript; without it the
    /// transcript goes to the agent as (at most three) messages.
    #[serde(default)]
    pub transcript_field: Option<String>,
    /// "Authorization Token Expiration Time for Unverified Users" of the
    /// channel (default 60; the set-up guide raises it to 4320); used when a
    /// token does not say when it expires.
    #[serde(default = "default_lifetime")]
    pub token_lifetime_minutes: u32,
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default = "default_app_name")]
    pub app_name: String,
}

fn yes() -> bool {
    true
}
fn default_lifetime() -> u32 {
    60
}
fn default_language() -> String {
    "en_US".to_string()
}
fn default_app_name() -> String {
    "escalator".to_string()
}

impl SalesforceLiveConfig {
    /// The org id in its 15-character form (`X-Org-Id`).
    pub fn org_id_15(&self) -> &str {
        self.org_id.get(..15).unwrap_or(&self.org_id)
    }

    /// The SCRT base URL without a trailing slash.
    pub fn scrt_base_url(&self) -> String {
        self.scrt_url.trim().trim_end_matches('/').to_string()
    }

    /// The routing attributes of an escalation (absent values are left out).
    pub fn routing_attributes(&self, e: &EscalationRequested) -> Map<String, Value> {
        let mut out = Map::new();
        for (field, source) in &self.prechat {
            let value = match source.as_str() {
                "customer.name" => e.customer.name.clone().map(Value::String),
                "customer.email" => e.customer.email.clone().map(Value::String),
                "customer.id" => Some(Value::String(e.customer.id.clone())),
                s => s
                    .strip_prefix("context.")
                    .and_then(|k| e.context.get(k))
                    .map(|v| match v {
                        Value::String(_) => v.clone(),
                        other => Value::String(other.to_string()),
                    }),
            };
            if let Some(v) = value {
                out.insert(field.clone(), v);
            }
        }
        out
    }

    /// Problems, as (field, fix); never a value.
    pub(super) fn validate(&mut self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let id = self.org_id.trim().to_string();
        if !(id.len() == 15 || id.len() == 18) || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            problems.push((
                "live.org_id",
                "must be the 15- or 18-character OrganizationId from the deployment's code snippet"
                    .to_string(),
            ));
        }
        self.org_id = id;
        if self.developer_name.trim().is_empty() {
            problems.push((
                "live.developer_name",
                "set the DeveloperName from the deployment's code snippet".to_string(),
            ));
        }
        match reqwest::Url::parse(self.scrt_url.trim()) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u)
                if u.scheme() == "http"
                    && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) => {}
            _ => problems.push((
                "live.scrt_url",
                "must be the https Url from the deployment's code snippet (https://<org>.my.salesforce-scrt.com)".to_string(),
            )),
        }
        for source in self.prechat.values() {
            let ok = matches!(
                source.as_str(),
                "customer.name" | "customer.email" | "customer.id"
            ) || source
                .strip_prefix("context.")
                .is_some_and(|k| !k.is_empty());
            if !ok {
                problems.push((
                    "live.prechat",
                    "each value must be customer.name, customer.email, customer.id or context.<key>".to_string(),
                ));
                break;
            }
        }
        if self.token_lifetime_minutes == 0 || self.token_lifetime_minutes > 4320 {
            problems.push((
                "live.token_lifetime_minutes",
                "must be 1 to 4320 (the channel's token expiration time)".to_string(),
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> SalesforceLiveConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_snippet_values_are_checked_and_errors_name_the_field_not_the_value() {
        let mut ok = cfg(r#"org_id = "00D5g000004SIMxEAG"
developer_name = "Fullview_Messaging"
scrt_url = "https://acme.my.salesforce-scrt.com/"
prechat = { _email = "customer.email", Plan = "context.plan" }"#);
        assert!(ok.validate().is_empty());
        assert_eq!(ok.org_id_15(), "00D5g000004SIMx");
        assert_eq!(ok.scrt_base_url(), "https://acme.my.salesforce-scrt.com");
        assert!(ok.enabled);
        let mut bad = cfg(r#"org_id = "00D-secretvalue"
developer_name = ""
scrt_url = "http://acme.example.com"
prechat = { _email = "customer.phone" }
token_lifetime_minutes = 9999"#);
        let problems = bad.validate();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "live.org_id",
                "live.developer_name",
                "live.scrt_url",
                "live.prechat",
                "live.token_lifetime_minutes"
            ]
        );
        assert!(problems.iter().all(|(_, m)| !m.contains("secretvalue")));
    }
}
