//! Fault rules: matching, counting and the provider-shaped default error bodies.

use serde_json::json;

use super::state::{SimResponse, State};
use super::types::FaultRule;
use super::util::reason;

/// A rule plus how many more requests it may still fault.
#[derive(Clone, Debug)]
pub(crate) struct ActiveFault {
    pub(crate) rule: FaultRule,
    remaining: Option<u32>,
}

impl ActiveFault {
    pub(crate) fn new(rule: FaultRule) -> Self {
        let remaining = rule.times;
        Self { rule, remaining }
    }

    fn matches(&self, method: &str, path_and_query: &str) -> bool {
        self.remaining != Some(0)
            && self
                .rule
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && path_and_query.starts_with(&self.rule.path_prefix)
            && self
                .rule
                .path_contains
                .as_deref()
                .is_none_or(|part| path_and_query.contains(part))
    }
}

impl State {
    /// The first matching rule (counted as used), if any; exhausted rules are dropped.
    pub(crate) fn take_fault(&mut self, method: &str, path_and_query: &str) -> Option<FaultRule> {
        let active = self
            .faults
            .iter_mut()
            .find(|f| f.matches(method, path_and_query))?;
        if let Some(left) = active.remaining.as_mut() {
            *left = left.saturating_sub(1);
        }
        let rule = active.rule.clone();
        self.faults.retain(|f| f.remaining != Some(0));
        Some(rule)
    }
}

/// True when the rule replaces the real answer (a status or a dropped connection).
pub(crate) fn disrupts(rule: &FaultRule) -> bool {
    rule.status.is_some() || rule.drop_connection
}

/// The response a disrupting rule answers with. For a dropped connection nothing
/// is ever sent; the placeholder only exists so the code path stays uniform.
pub(crate) fn response(rule: &FaultRule, path: &str) -> SimResponse {
    let status = match rule.status {
        Some(s) => s,
        None => return SimResponse::empty(502),
    };
    let (default_type, default_body) = default_body(status, path);
    match &rule.body {
        Some(body) => SimResponse::raw(
            status,
            rule.content_type.as_deref().unwrap_or("application/json"),
            body.as_bytes(),
        ),
        None => SimResponse::raw(
            status,
            rule.content_type.as_deref().unwrap_or(default_type),
            default_body.into_bytes(),
        ),
    }
}

/// Default error (content type, body) for a status, shaped like the provider's.
fn default_body(status: u16, path: &str) -> (&'static str, String) {
    const JSON: &str = "application/json; charset=utf-8";
    const SF_JSON: &str = "application/json;charset=UTF-8";
    if path.starts_with("/services/oauth2/") {
        let (error, description) = match status {
            400 => ("invalid_grant", "authentication failure"),
            401 => ("invalid_client", "invalid client credentials"),
            429 | 403 => ("rate_limit_exceeded", "rate limit exceeded"),
            _ => ("server_error", reason(status)),
        };
        let body = json!({"error": error, "error_description": description});
        return (SF_JSON, body.to_string());
    }
    if path.starts_with("/services/") {
        let (code, message) = match status {
            400 => ("BAD_REQUEST", "Bad Request"),
            401 => ("INVALID_SESSION_ID", "Session expired or invalid"),
            403 | 429 => ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
            404 => ("NOT_FOUND", "The requested resource does not exist"),
            409 => (
                "UNABLE_TO_LOCK_ROW",
                "unable to obtain exclusive access to this record",
            ),
            502..=504 => ("SERVER_UNAVAILABLE", "Service Unavailable"),
            _ => (
                "UNKNOWN_EXCEPTION",
                "An unexpected error occurred. Please include this ErrorId if you contact support: 0-0 (0)",
            ),
        };
        let body = json!([{"message": message, "errorCode": code}]);
        return (SF_JSON, body.to_string());
    }
    if path.starts_with("/sc/") {
        // Sunshine Conversations: `{"errors":[{"code","title"}]}`.
        let (code, title) = match status {
            400 => ("bad_request", "Bad request"),
            401 => ("unauthorized", "Authorization Required"),
            403 => ("forbidden", "Forbidden"),
            404 => ("not_found", "Resource not found"),
            409 => ("conflict", "Conflict"),
            423 => ("locked", "Message limit of 30000 per conversation reached."),
            429 => ("too_many_requests", "Too many requests"),
            502..=504 => ("service_unavailable", "Service unavailable"),
            _ => ("internal_server_error", "Internal server error"),
        };
        let body = json!({"errors": [{"code": code, "title": title}]});
        return (JSON, body.to_string());
    }
    // Zendesk (and anything else).
    let body = match status {
        503 => {
            return (
                "text/plain; charset=utf-8",
                "Service Unavailable".to_owned(),
            );
        }
        401 => json!({"error": "Couldn't authenticate you"}),
        404 => json!({"error": "RecordNotFound", "description": "Not found"}),
        409 => {
            json!({"error": "DatabaseConflict", "description": "The resource was modified concurrently"})
        }
        422 => {
            json!({"error": "RecordInvalid", "description": "Record validation errors", "details": {}})
        }
        429 => json!({"error": "TooManyRequests"}),
        500 => json!({"error": "InternalServerError"}),
        s => json!({"error": reason(s)}),
    };
    (JSON, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, times: Option<u32>) -> FaultRule {
        FaultRule {
            path_prefix: prefix.to_owned(),
            times,
            status: Some(503),
            ..FaultRule::default()
        }
    }

    #[test]
    fn first_match_wins_and_times_are_counted() {
        let mut st = State::new();
        st.faults
            .push(ActiveFault::new(rule("/api/v2/tickets", Some(1))));
        st.faults.push(ActiveFault::new(FaultRule {
            status: Some(429),
            ..rule("/api", None)
        }));
        let first = st.take_fault("POST", "/api/v2/tickets");
        assert_eq!(first.and_then(|r| r.status), Some(503));
        let second = st.take_fault("POST", "/api/v2/tickets");
        assert_eq!(second.and_then(|r| r.status), Some(429));
        assert!(st.take_fault("GET", "/services/x").is_none());
    }

    #[test]
    fn default_bodies_are_provider_shaped() {
        let r = response(&rule("/", None), "/api/v2/tickets");
        assert_eq!(r.body, b"Service Unavailable");
        let r = response(&rule("/", None), "/services/data/v60.0/sobjects/Case");
        assert!(String::from_utf8_lossy(&r.body).contains("SERVER_UNAVAILABLE"));
        let r = response(&rule("/", None), "/sc/v2/apps/a/conversations");
        assert!(String::from_utf8_lossy(&r.body).contains("service_unavailable"));
    }
}
