//! Per-org configuration, loaded from a TOML file at start-up.
//!
//! ```toml
//! [orgs.acme]
//! provider = "zendesk"
//!
//! [orgs.acme.zendesk]
//! subdomain = "acme"
//! email = "integration@acme.example"
//! api_token = "${ACME_ZENDESK_TOKEN}"
//! ```
//!
//! Every problem is reported at start-up, naming the org, the field and the fix.
mod salesforce;
mod salesforce_live;
mod toml_error;
mod zendesk;
mod zendesk_live;

pub use salesforce::{SalesforceConfig, SalesforceIdempotency};
pub use salesforce_live::SalesforceLiveConfig;
pub use toml_error::TomlProblem;
pub use zendesk::ZendeskConfig;
pub use zendesk_live::{Availability, ZendeskLiveConfig};

use crate::contract::ProviderKind;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub org: String,
    pub field: String,
    pub fix: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "org `{}`, field `{}`: {}",
            self.org, self.field, self.fix
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Located (line, column, org, table path) and explained, without the value.
    #[error("config file {path} is not valid for escalator: {problem}")]
    Parse {
        path: String,
        problem: Box<toml_error::TomlProblem>,
    },
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

/// All orgs this deployment serves, keyed by `org_id`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    orgs: BTreeMap<String, Arc<OrgConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    orgs: BTreeMap<String, OrgConfig>,
}

/// One org's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    #[serde(skip)]
    pub org_id: String,
    /// The provider used when an event names none.
    pub provider: ProviderKind,
    /// The live-chat switch: when off, `live` requests become tickets/cases
    /// (with `fallback_reason`).
    #[serde(default = "default_true")]
    pub live_chat: bool,
    pub zendesk: Option<ZendeskConfig>,
    pub salesforce: Option<SalesforceConfig>,
}

fn default_true() -> bool {
    true
}

impl OrgConfig {
    pub fn zendesk(&self) -> Option<&ZendeskConfig> {
        self.zendesk.as_ref()
    }

    pub fn salesforce(&self) -> Option<&SalesforceConfig> {
        self.salesforce.as_ref()
    }
}

impl Config {
    /// Load and validate a config file; `${VAR}` secrets come from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })
    }

    /// Parse and validate config text. `env` resolves `${VAR}` references.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            // toml's and serde's messages quote the value: it may be a secret.
            problem: Box::new(toml_error::describe(text, &e)),
        })?;
        let mut problems = Vec::new();
        if raw.orgs.is_empty() {
            problems.push(ConfigProblem {
                org: "*".into(),
                field: "orgs".into(),
                fix: "no org is configured: add an [orgs.<org_id>] table".into(),
            });
        }
        let mut orgs = BTreeMap::new();
        for (org_id, mut org) in raw.orgs {
            org.org_id = org_id.clone();
            let mut p = |field: &str, fix: String| {
                problems.push(ConfigProblem {
                    org: org_id.clone(),
                    field: field.to_string(),
                    fix,
                })
            };
            if !valid_org_id(&org_id) {
                p(
                    "orgs.<org_id>",
                    "org ids are lower-case letters, digits, '-' and '_' (max 63), starting with a letter or digit".into(),
                );
            }
            match (org.provider, &org.zendesk, &org.salesforce) {
                (ProviderKind::Zendesk, None, _) => p(
                    "zendesk",
                    "provider is \"zendesk\" but there is no [orgs.<org>.zendesk] table: add subdomain, email and api_token".into(),
                ),
                (ProviderKind::Salesforce, _, None) => p(
                    "salesforce",
                    "provider is \"salesforce\" but there is no [orgs.<org>.salesforce] table: add my_domain, client_id and client_secret".into(),
                ),
                _ => {}
            }
            if let Some(z) = org.zendesk.as_mut() {
                for (field, fix) in z.validate(env) {
                    p(&format!("zendesk.{field}"), fix);
                }
                if let Some(live) = z.live.as_mut() {
                    for (field, fix) in live.validate(env) {
                        p(&format!("zendesk.live.{field}"), fix);
                    }
                }
            }
            if let Some(s) = org.salesforce.as_mut() {
                for (field, fix) in s.validate(env) {
                    p(&format!("salesforce.{field}"), fix);
                }
            }
            orgs.insert(org_id, Arc::new(org));
        }
        if problems.is_empty() {
            Ok(Config { orgs })
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub fn org(&self, org_id: &str) -> Option<&Arc<OrgConfig>> {
        self.orgs.get(org_id)
    }

    pub fn orgs(&self) -> impl Iterator<Item = &Arc<OrgConfig>> {
        self.orgs.values()
    }
}

pub fn valid_org_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && !b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Validate an optional `base_url` override: absolute http(s) URL.
pub(crate) fn check_base_url(url: &str) -> Option<String> {
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > "https://".len()
        && reqwest::Url::parse(url).is_ok();
    (!ok).then(|| {
        "must be an absolute http(s) URL such as https://acme.zendesk.com (no trailing path needed)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "ZD_TOKEN" => Some("tok-123".into()),
            "SF_SECRET" => Some("sf-secret".into()),
            _ => None,
        }
    }

    const GOOD: &str = r#"
[orgs.acme]
provider = "zendesk"
[orgs.acme.zendesk]
subdomain = "acme"
email = "bot@acme.example"
api_token = "${ZD_TOKEN}"
group_id = 42
tags = ["escalated", "ai"]
"#;

    #[test]
    fn loads_a_valid_zendesk_org_and_resolves_secrets() {
        let cfg = Config::parse(GOOD, "test", &env).unwrap();
        let org = cfg.org("acme").unwrap();
        let z = org.zendesk().unwrap();
        assert_eq!(z.api_token.expose(), "tok-123");
        assert_eq!(z.base_url(), "https://acme.zendesk.com");
        assert_eq!(z.group_id, Some(42));
        assert!(
            !format!("{org:?}").contains("tok-123"),
            "Debug leaks the token"
        );
    }

    #[test]
    fn names_org_field_and_fix() {
        let text = GOOD
            .replace("${ZD_TOKEN}", "${NOPE}")
            .replace("\"acme\"\nemail", "\"\"\nemail");
        let err = Config::parse(&text, "test", &env).unwrap_err().to_string();
        assert!(
            err.contains(
                "org `acme`, field `zendesk.api_token`: environment variable NOPE is not set"
            ),
            "{err}"
        );
        assert!(err.contains("field `zendesk.subdomain`"), "{err}");
    }

    #[test]
    fn missing_provider_table_is_reported() {
        let err = Config::parse("[orgs.x]\nprovider = \"salesforce\"\n", "t", &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("org `x`, field `salesforce`"), "{err}");
    }

    #[test]
    fn shipped_example_configs_load() {
        let any = |_: &str| Some("a-value-from-the-environment".to_string());
        for (name, text) in [
            (
                "escalator.example.toml",
                include_str!("../../deploy/config/escalator.example.toml"),
            ),
            (
                "escalator.sim.toml",
                include_str!("../../deploy/config/escalator.sim.toml"),
            ),
        ] {
            let cfg = Config::parse(text, name, &any).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(cfg.orgs().count() >= 2, "{name}");
        }
    }

    const LIVE_BASE: &str = "[orgs.acme]\nprovider = \"zendesk\"\n[orgs.acme.zendesk]\nsubdomain = \"acme\"\nemail = \"a@acme.example\"\napi_token = \"t\"\n[orgs.acme.zendesk.live]\n";

    #[test]
    fn live_chat_settings_load_with_their_defaults() {
        let text = format!(
            "{LIVE_BASE}app_id = \"app1\"\nkey_id = \"app_key1\"\nsecret = \"${{SC_SECRET}}\"\nwebhook_token = \"0123456789abcdef0123\"\navailability = {{ schedule_id = 42 }}\n"
        );
        let env = |n: &str| (n == "SC_SECRET").then(|| "sunshine-secret".to_string());
        let cfg = Config::parse(&text, "t", &env).unwrap();
        let z = cfg.org("acme").unwrap().zendesk().unwrap();
        let live = z.live_chat().unwrap();
        assert_eq!(live.secret.expose(), "sunshine-secret");
        assert_eq!(live.availability, Availability::Schedule(42));
        assert_eq!(live.base_url(&z.subdomain), "https://acme.zendesk.com/sc");
        assert_eq!(live.ai_display_name, "AI assistant");
        assert!(live.webhook_signing_secret.is_none());
    }

    #[test]
    fn invalid_live_chat_settings_name_org_field_and_fix_without_values() {
        let text = format!(
            "{LIVE_BASE}app_id = \"\"\nkey_id = \"k\"\nsecret = \"${{MISSING}}\"\nwebhook_token = \"short-s3cr3t\"\nticket_fields = {{ \"abc\" = \"v\" }}\n"
        );
        let err = Config::parse(&text, "t", &|_| None)
            .unwrap_err()
            .to_string();
        for field in [
            "zendesk.live.app_id",
            "zendesk.live.secret",
            "zendesk.live.webhook_token",
            "zendesk.live.ticket_fields",
        ] {
            assert!(
                err.contains(&format!("org `acme`, field `{field}`")),
                "{field}: {err}"
            );
        }
        assert!(err.contains("MISSING is not set"), "{err}");
        assert!(!err.contains("short-s3cr3t"), "{err}");
        // An availability policy that does not exist is refused at parse time.
        let text = format!(
            "{LIVE_BASE}app_id = \"a\"\nkey_id = \"k\"\nsecret = \"s\"\nwebhook_token = \"0123456789abcdef\"\navailability = \"sometimes\"\n"
        );
        let err = Config::parse(&text, "t", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("availability"), "{err}");
    }

    #[test]
    fn parse_errors_do_not_echo_secrets() {
        let text = "[orgs.acme]\nprovider = \"zendesk\"\n[orgs.acme.zendesk]\napi_token = \"s3cr3t\" junk\n";
        let err = Config::parse(text, "t", &env).unwrap_err().to_string();
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
