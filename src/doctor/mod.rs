//! `escalator doctor`: walks each org's admin set-up guide against the org's
//! real endpoints (or the simulator through `base_url` overrides) and says,
//! check by check, what passes and what the admin must fix.
//!
//! It only reads: GETs, plus the Salesforce token grant (which creates
//! nothing). Secrets are never printed; provider error text is reduced to
//! status codes and error codes, never echoed free text.
mod salesforce;
mod zendesk;

use crate::config::{Config, OrgConfig};
use serde::Serialize;
use std::time::Duration;

/// Timeout of one provider request made by the doctor.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    /// A required step is not done or wrong: the org does not work.
    Fail,
    /// Optional, or cannot be verified from here: worth a look.
    Warn,
    /// Not applicable (not configured) or blocked by an earlier failure.
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
            Status::Skip => "SKIP",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub org: String,
    pub provider: &'static str,
    /// The guide's step, e.g. "API token authentication".
    pub step: String,
    pub status: Status,
    /// What was found (never a secret, message text or contact data).
    pub detail: String,
    /// What the admin does about it (failures and warnings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// All checks of a run, in order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// 0 when every required check passed, 1 when one failed.
    pub fn exit_code(&self) -> u8 {
        if self.ok() { 0 } else { 1 }
    }

    /// One line per check: `STATUS  org  step: detail -- fix: ...`, then a
    /// summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<4}  {}  {}: {}",
                c.status.as_str(),
                c.org,
                c.step,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!(" -- fix: {fix}"));
            }
            out.push('\n');
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warn)
            .count();
        out.push_str(&format!(
            "{} checks: {failed} failed, {warned} warnings\n",
            self.checks.len()
        ));
        out
    }

    /// One JSON object per line, one per check.
    pub fn to_json_lines(&self) -> String {
        self.checks
            .iter()
            .filter_map(|c| serde_json::to_string(c).ok())
            .map(|l| l + "\n")
            .collect()
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct DoctorOptions {
    /// Only this org (default: every org of the config).
    pub org: Option<String>,
    /// The public URL of this deployment's webhook ingress (the Zendesk
    /// webhook must target it); unknown: that check warns.
    pub webhook_url: Option<String>,
}

/// A usage problem: the org asked for is not in the config, or no HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("org `{0}` is not in the configuration")]
    UnknownOrg(String),
    #[error("{0}")]
    Client(String),
}

/// Collects the checks of one org.
pub(crate) struct Recorder<'a> {
    org: &'a str,
    provider: &'static str,
    checks: &'a mut Vec<Check>,
}

impl Recorder<'_> {
    fn push(&mut self, step: &str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            org: self.org.to_string(),
            provider: self.provider,
            step: step.to_string(),
            status,
            detail,
            fix,
        });
    }

    pub(crate) fn pass(&mut self, step: &str, detail: impl Into<String>) {
        self.push(step, Status::Pass, detail.into(), None);
    }

    pub(crate) fn fail(&mut self, step: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(step, Status::Fail, detail.into(), Some(fix.into()));
    }

    pub(crate) fn warn(&mut self, step: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(step, Status::Warn, detail.into(), Some(fix.into()));
    }

    pub(crate) fn skip(&mut self, step: &str, reason: impl Into<String>) {
        self.push(step, Status::Skip, reason.into(), None);
    }
}

/// Run every check of the selected orgs.
pub async fn run(config: &Config, options: &DoctorOptions) -> Result<Report, DoctorError> {
    let orgs: Vec<&OrgConfig> = match &options.org {
        Some(id) => vec![
            config
                .org(id)
                .ok_or_else(|| DoctorError::UnknownOrg(id.clone()))?,
        ],
        None => config.orgs().map(|o| o.as_ref()).collect(),
    };
    let http = crate::provider::http::client(REQUEST_TIMEOUT).map_err(DoctorError::Client)?;
    let mut report = Report::default();
    for org in orgs {
        if let Some(z) = org.zendesk() {
            let mut r = Recorder {
                org: &org.org_id,
                provider: "zendesk",
                checks: &mut report.checks,
            };
            zendesk::check(&http, org, z, options, &mut r).await;
        }
        if let Some(s) = org.salesforce() {
            let mut r = Recorder {
                org: &org.org_id,
                provider: "salesforce",
                checks: &mut report.checks,
            };
            salesforce::check(&http, s, &mut r).await;
        }
    }
    Ok(report)
}

/// A transport failure in the admin's words (host and path only, no query).
pub(crate) fn unreachable(e: &crate::error::ProviderError) -> String {
    format!("no answer ({})", e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: Status, fix: Option<&str>) -> Check {
        Check {
            org: "acme".into(),
            provider: "zendesk",
            step: "default group".into(),
            status,
            detail: "group 7 does not exist".into(),
            fix: fix.map(str::to_string),
        }
    }

    #[test]
    fn only_a_failure_fails_the_run_and_its_fix_is_on_its_line() {
        let mut report = Report {
            checks: vec![check(Status::Pass, None), check(Status::Warn, Some("look"))],
        };
        assert_eq!(report.exit_code(), 0);
        report
            .checks
            .push(check(Status::Fail, Some("set `group_id`")));
        assert_eq!(report.exit_code(), 1);
        let text = report.to_text();
        let fail = text.lines().find(|l| l.starts_with("FAIL")).unwrap();
        assert!(
            fail.contains("acme") && fail.contains("fix: set `group_id`"),
            "{fail}"
        );
        assert!(text.ends_with("3 checks: 1 failed, 1 warnings\n"), "{text}");
        let json: Vec<serde_json::Value> = report
            .to_json_lines()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(json[2]["status"], "FAIL");
        assert!(json[0].get("fix").is_none());
    }
}
