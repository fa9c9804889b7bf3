//! Salesforce error answers and their classification.
//!
//! REST errors are a JSON array `[{"message","errorCode","fields"}]`; the
//! token endpoint answers `{"error","error_description"}`. Both are parsed
//! leniently (single objects, HTML from a proxy, empty bodies all work).
//! Messages are safe to log: Salesforce messages that echo field values (which
//! may be customer data) are replaced, and known customer values are redacted.
use crate::error::{ErrorClass, ProviderError, ProviderErrorKind};
use crate::provider::http::{classify_status, clip};
use serde_json::Value;
use std::time::Duration;

pub(super) const PROVIDER: &str = "salesforce";

/// Longest Salesforce message kept in an error.
const MESSAGE_MAX: usize = 300;

/// Error codes that go away by themselves.
const TRANSIENT_CODES: &[&str] = &[
    "UNABLE_TO_LOCK_ROW",
    "SERVER_UNAVAILABLE",
    "QUERY_TIMEOUT",
    "REQUEST_RUNNING_TOO_LONG",
    "CONCURRENT_REQUEST_LIMIT_EXCEEDED",
];

/// Error codes whose message quotes the rejected value: the message is
/// replaced by a fixed text (the value may be customer data).
const VALUE_ECHOING_CODES: &[(&str, &str)] = &[
    ("STRING_TOO_LONG", "value too long for the field"),
    ("INVALID_EMAIL_ADDRESS", "invalid email address"),
    ("MALFORMED_QUERY", "malformed SOQL query"),
    ("INVALID_QUERY_FILTER_OPERATOR", "invalid SOQL filter"),
    ("JSON_PARSER_ERROR", "the request body could not be parsed"),
];

/// One entry of a REST error array.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ApiError {
    pub code: String,
    pub message: String,
    pub fields: Vec<String>,
}

/// Parse a REST error body: an array of errors, a single error object, or
/// anything else (no entries).
pub(super) fn parse_errors(body: &str) -> Vec<ApiError> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let one = |e: &Value| -> Option<ApiError> {
        let o = e.as_object()?;
        let code = o
            .get("errorCode")
            .or_else(|| o.get("error"))
            .and_then(Value::as_str)?
            .to_string();
        let message = o
            .get("message")
            .or_else(|| o.get("error_description"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let fields = o
            .get("fields")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Some(ApiError {
            code,
            message,
            fields,
        })
    };
    match &v {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        Value::Object(_) => one(&v).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Whether any entry carries `code`.
pub(super) fn has_code(errors: &[ApiError], code: &str) -> bool {
    errors.iter().any(|e| e.code == code)
}

/// Replace every occurrence of the given values (customer name, email...) by
/// `<redacted>`. Values shorter than 3 characters are left alone.
fn redact(text: &str, values: &[&str]) -> String {
    let mut out = text.to_string();
    for v in values
        .iter()
        .map(|v| v.trim())
        .filter(|v| v.chars().count() >= 3)
    {
        out = out.replace(v, "<redacted>");
    }
    out
}

/// A human-readable, log-safe summary of the error entries.
pub(super) fn describe(errors: &[ApiError], secrets: &[&str]) -> String {
    errors
        .iter()
        .map(|e| {
            let message = VALUE_ECHOING_CODES
                .iter()
                .find(|(c, _)| *c == e.code)
                .map(|(_, fixed)| fixed.to_string())
                .unwrap_or_else(|| clip(&redact(e.message.trim(), secrets), MESSAGE_MAX));
            let mut d = e.code.clone();
            if !message.is_empty() {
                d.push_str(&format!(": {message}"));
            }
            if !e.fields.is_empty() {
                d.push_str(&format!(" (fields: {})", e.fields.join(", ")));
            }
            d
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Turn a non-2xx REST answer into a typed error.
///
/// `redact_values` are customer values of the request that must not appear
/// in the message; `limit_backoff` is the wait after REQUEST_LIMIT_EXCEEDED
/// (Salesforce sends no Retry-After).
pub(super) fn rest_error(
    op: &str,
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    redact_values: &[&str],
    limit_backoff: Duration,
) -> ProviderError {
    let errors = parse_errors(body);
    let (mut class, mut kind) = classify_status(status);
    let mut retry = retry_after;
    let mut detail = if errors.is_empty() {
        let text = body.trim();
        if text.starts_with('<') {
            "(HTML answer, not from the Salesforce REST API)".to_string()
        } else {
            clip(&redact(text, redact_values), 120)
        }
    } else {
        describe(&errors, redact_values)
    };
    if has_code(&errors, "REQUEST_LIMIT_EXCEEDED") {
        class = ErrorClass::Transient;
        kind = ProviderErrorKind::RateLimited;
        retry = Some(retry.map_or(limit_backoff, |r| r.max(limit_backoff)));
        detail.push_str(" (org API limit reached: backing off)");
    } else if errors
        .iter()
        .any(|e| TRANSIENT_CODES.contains(&e.code.as_str()))
    {
        class = ErrorClass::Transient;
        kind = if has_code(&errors, "CONCURRENT_REQUEST_LIMIT_EXCEEDED") {
            ProviderErrorKind::RateLimited
        } else {
            ProviderErrorKind::Unavailable
        };
    } else if status == 401 {
        detail.push_str(
            " (the access token was refused even after a refresh: check that the External Client App's Run As user is active and has the API Enabled permission)",
        );
    } else if status == 403 {
        detail.push_str(
            " (the Run As user of the External Client App lacks a permission: API Enabled, and create/edit on Case)",
        );
    }
    let fields = errors
        .iter()
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    ProviderError::http(PROVIDER, (class, kind), op, status, &detail, retry).with_fields(fields)
}

/// Turn a failed answer of the OAuth token endpoint into a typed error whose
/// message tells the admin what to fix.
pub fn token_error(status: u16, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    let error = field("error");
    let description = field("error_description");
    let desc_lower = description.to_ascii_lowercase();
    let what = if error.is_empty() {
        format!("HTTP {status}")
    } else if description.is_empty() {
        format!("HTTP {status} {error}")
    } else {
        format!("HTTP {status} {error}: {}", clip(&description, 200))
    };
    let transient = |kind: ProviderErrorKind| {
        ProviderError::transient(PROVIDER, kind, format!("token request failed ({what})"))
            .with_status(status)
            .with_retry_after(retry_after)
    };
    let permanent = |kind: ProviderErrorKind, fix: &str| {
        ProviderError::permanent(
            PROVIDER,
            kind,
            format!("token request refused ({what}): {fix}"),
        )
        .with_status(status)
    };
    if status == 429 || error == "rate_limit_exceeded" {
        return transient(ProviderErrorKind::RateLimited);
    }
    if status == 408
        || status >= 500
        || error == "server_error"
        || error == "temporarily_unavailable"
    {
        return transient(ProviderErrorKind::Unavailable);
    }
    match error.as_str() {
        "invalid_grant" if desc_lower.contains("not supported on this domain") => permanent(
            ProviderErrorKind::Configuration,
            "use your My Domain host (e.g. acme.my.salesforce.com) as my_domain, not login.salesforce.com or test.salesforce.com",
        ),
        "invalid_grant" if desc_lower.contains("no client credentials user enabled") => permanent(
            ProviderErrorKind::Configuration,
            "set a Run As user in the External Client App's client credentials flow policy (OAuth Policies > Enable Client Credentials Flow > Run As)",
        ),
        "invalid_client" | "invalid_client_id" => permanent(
            ProviderErrorKind::Authentication,
            "check the consumer key and consumer secret (client_id, client_secret) of the External Client App",
        ),
        _ if desc_lower.contains("invalid client credentials") => permanent(
            ProviderErrorKind::Authentication,
            "check the consumer key and consumer secret (client_id, client_secret) of the External Client App",
        ),
        "unsupported_grant_type" => permanent(
            ProviderErrorKind::Configuration,
            "enable the client credentials flow in the External Client App (OAuth Settings > Flow Enablement > Enable Client Credentials Flow)",
        ),
        "" if status == 404 => permanent(
            ProviderErrorKind::Configuration,
            "there is no OAuth token endpoint at this host: check my_domain (e.g. acme.my.salesforce.com)",
        ),
        "" => permanent(
            ProviderErrorKind::Configuration,
            "the token endpoint did not answer like Salesforce: check my_domain (e.g. acme.my.salesforce.com)",
        ),
        _ => permanent(
            ProviderErrorKind::Authentication,
            "check the External Client App's OAuth settings and policies",
        ),
    }
}

/// `Sforce-Limit-Info: api-usage=25/15000[, per-app-api-usage=..]` -> (used, max).
pub(super) fn api_usage(header: &str) -> Option<(u64, u64)> {
    header.split(',').find_map(|part| {
        let (name, value) = part.trim().split_once('=')?;
        if name.trim() != "api-usage" {
            return None;
        }
        let (used, max) = value.trim().split_once('/')?;
        Some((used.trim().parse().ok()?, max.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Duration = Duration::from_secs(300);

    #[test]
    fn parses_error_arrays_leniently() {
        let e = parse_errors(
            r#"[{"message":"m","errorCode":"INVALID_FIELD","fields":["A","B"]},{"errorCode":"X"}]"#,
        );
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].fields, vec!["A", "B"]);
        assert_eq!(e[1].code, "X");
        assert_eq!(
            parse_errors(r#"{"message":"m","errorCode":"C"}"#)[0].code,
            "C"
        );
        assert!(parse_errors("<html>").is_empty());
        assert!(parse_errors("").is_empty());
        assert!(parse_errors("[1, null]").is_empty());
    }

    #[test]
    fn request_limit_is_transient_with_backoff() {
        let e = rest_error(
            "create case",
            403,
            None,
            r#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#,
            &[],
            BACKOFF,
        );
        assert!(e.is_transient());
        assert_eq!(e.kind, ProviderErrorKind::RateLimited);
        assert_eq!(e.retry_after, Some(BACKOFF));
    }

    #[test]
    fn lock_and_server_errors_are_transient() {
        let lock = r#"[{"message":"unable to obtain exclusive access to this record","errorCode":"UNABLE_TO_LOCK_ROW"}]"#;
        assert!(rest_error("x", 400, None, lock, &[], BACKOFF).is_transient());
        assert!(rest_error("x", 503, None, "", &[], BACKOFF).is_transient());
        assert!(rest_error("x", 500, None, "[]", &[], BACKOFF).is_transient());
    }

    #[test]
    fn validation_errors_are_permanent_and_name_fields() {
        let body = r#"[{"message":"No such column 'Foo__c' on sobject of type Case","errorCode":"INVALID_FIELD","fields":["Foo__c"]}]"#;
        let e = rest_error("create case", 400, None, body, &[], BACKOFF);
        assert!(!e.is_transient());
        assert_eq!(e.kind, ProviderErrorKind::Validation);
        assert!(e.message.contains("INVALID_FIELD"), "{}", e.message);
        assert!(e.message.contains("fields: Foo__c"), "{}", e.message);
    }

    #[test]
    fn messages_echoing_values_are_replaced_and_values_redacted() {
        let body = r#"[{"message":"Subject: data value too large: my secret problem...","errorCode":"STRING_TOO_LONG","fields":["Subject"]}]"#;
        let e = rest_error("create case", 400, None, body, &[], BACKOFF);
        assert!(!e.message.contains("secret problem"), "{}", e.message);
        assert!(e.message.contains("Subject"));
        let body = r#"[{"message":"bad: ada@example.com","errorCode":"FIELD_CUSTOM_VALIDATION_EXCEPTION"}]"#;
        let e = rest_error(
            "create case",
            400,
            None,
            body,
            &["ada@example.com"],
            BACKOFF,
        );
        assert!(!e.message.contains("ada@example.com"), "{}", e.message);
    }

    #[test]
    fn token_errors_tell_the_fix() {
        let e = token_error(
            400,
            None,
            r#"{"error":"invalid_grant","error_description":"request not supported on this domain"}"#,
        );
        assert!(!e.is_transient());
        assert_eq!(e.kind, ProviderErrorKind::Configuration);
        assert!(e.message.contains("My Domain"), "{}", e.message);
        let e = token_error(
            400,
            None,
            r#"{"error":"invalid_client","error_description":"invalid client credentials"}"#,
        );
        assert_eq!(e.kind, ProviderErrorKind::Authentication);
        assert!(e.message.contains("consumer key and consumer secret"));
        let e = token_error(
            400,
            None,
            r#"{"error":"invalid_grant","error_description":"no client credentials user enabled"}"#,
        );
        assert!(e.message.contains("Run As user"));
        let e = token_error(
            400,
            None,
            r#"{"error":"unsupported_grant_type","error_description":"grant type not supported"}"#,
        );
        assert!(e.message.contains("enable the client credentials flow"));
        let e = token_error(
            400,
            None,
            r#"{"error":"inactive_user","error_description":"user is inactive"}"#,
        );
        assert!(
            e.message.contains("inactive_user: user is inactive"),
            "{}",
            e.message
        );
        assert!(token_error(503, None, "").is_transient());
        assert!(token_error(403, None, r#"{"error":"rate_limit_exceeded"}"#).is_transient());
    }

    #[test]
    fn parses_limit_info() {
        assert_eq!(api_usage("api-usage=25/15000"), Some((25, 15000)));
        assert_eq!(
            api_usage("api-usage=18/5000, per-app-api-usage=17/250(appName=x)"),
            Some((18, 5000))
        );
        assert_eq!(api_usage("per-app-api-usage=17/250"), None);
        assert_eq!(api_usage("garbage"), None);
    }
}
