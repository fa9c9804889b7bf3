//! Connection failures explained with the hint that fits: a broker that is
//! down is not a refused login, and neither is a missing vhost.
//!
//! Both take the URL as configured and print it redacted
//! ([`crate::settings::redact_url`]); the client library's error text is
//! scrubbed of the password too, since some of its messages quote the URL
//! that did not parse (`Invalid URL: 'amqp:guest:PASSWORD@host'`).
use crate::settings::{redact_url, url_secret};

/// Why RabbitMQ could not be used, and what to do about it.
pub fn amqp(url: &str, error: &lapin::Error) -> String {
    let url_redacted = redact_url(url);
    let text = format!("{error} {error:?}");
    let vhost = vhost_of(&url_redacted);
    let hint = if let Some(hint) = tls_hint(&text, "RabbitMQ", "AMQP") {
        hint
    } else if has(
        &text,
        &["ACCESS_REFUSED", "AccessRefused", "PLAIN login refused"],
    ) {
        "RabbitMQ refused the login: check the user name and password in ESCALATOR_AMQP_URL \
         (rabbitmqctl authenticate_user USER PASSWORD), and note that the guest user may only \
         connect from localhost"
            .to_string()
    } else if has(&text, &["vhost", "NOT_ALLOWED", "NotAllowed"]) {
        format!(
            "the vhost \"{vhost}\" does not exist or the user may not open it: create it \
             (rabbitmqctl add_vhost {vhost}; rabbitmqctl set_permissions -p {vhost} USER \".*\" \".*\" \".*\") \
             or fix the path of ESCALATOR_AMQP_URL (%2f is the default vhost \"/\")"
        )
    } else if has(
        &text,
        &[
            "relative URL",
            "invalid port",
            "empty host",
            "invalid IP",
            "invalid domain",
            "invalid international domain",
            "Invalid URI",
            "UriError",
            "Invalid URL",
            "Invalid AMQP scheme",
            "Invalid SASL",
        ],
    ) {
        "ESCALATOR_AMQP_URL is not a valid AMQP URL: use amqp://USER:PASSWORD@HOST:5672/VHOST \
         (percent-encode special characters; %2f is the default vhost)"
            .to_string()
    } else if has(&text, &["refused", "Refused"]) {
        "nothing listens there: start RabbitMQ, e.g.: rabbitmq-server -detached".to_string()
    } else {
        "check that RabbitMQ runs and that host and port are right; to start it locally: \
         rabbitmq-server -detached"
            .to_string()
    };
    let error = scrub(&error.to_string(), url);
    format!("cannot reach RabbitMQ at {url_redacted}: {error}. {hint}")
}

/// Why Redis could not be used, and what to do about it.
pub fn redis(url: &str, error: &redis::RedisError) -> String {
    use redis::ErrorKind;
    let url_redacted = redact_url(url);
    let text = format!("{error} {error:?}");
    let tls = tls_hint(&text, "Redis", "REDIS");
    let hint = if let Some(hint) = &tls {
        hint.as_str()
    } else if matches!(error.kind(), ErrorKind::InvalidClientConfig) {
        "ESCALATOR_REDIS_URL is not a valid Redis URL: use redis://[:PASSWORD@]HOST:6379/[DB] \
         (rediss:// for TLS)"
    } else if matches!(error.kind(), ErrorKind::AuthenticationFailed)
        || has(&text, &["WRONGPASS", "NOAUTH", "invalid password", "AUTH"])
    {
        "Redis refused the login: check the user and password in ESCALATOR_REDIS_URL"
    } else if has(&text, &["refused", "Refused"]) {
        "nothing listens there: start Redis, e.g.: redis-server --daemonize yes"
    } else {
        "check that Redis runs and that host and port are right; to start it locally: \
         redis-server --daemonize yes"
    };
    let error = scrub(&error.to_string(), url);
    format!("cannot reach Redis at {url_redacted}: {error}. {hint}")
}

/// The hint for a failed TLS handshake, if that is what `text` (an error's
/// display and debug text) tells of. `var` is `AMQP` or `REDIS`.
fn tls_hint(text: &str, broker: &str, var: &str) -> Option<String> {
    let ca = format!("ESCALATOR_{var}_CA_FILE");
    if has(text, &["invalid TLS settings"]) {
        Some("fix the TLS setting named above".to_string())
    } else if has(text, &["UnknownIssuer", "unknown issuer", "BadSignature"]) {
        Some(format!(
            "{broker}'s certificate is not signed by the CA in {ca} (or, with {ca} unset, by a CA \
             this system trusts): point {ca} at the CA bundle that issued {broker}'s certificate \
             (PEM)"
        ))
    } else if has(text, &["NotValidForName", "not valid for name"]) {
        Some(format!(
            "{broker}'s certificate does not name the host in ESCALATOR_{var}_URL: connect by a \
             name the certificate lists (its subject alternative names)"
        ))
    } else if has(text, &["Expired", "NotValidYet"]) {
        Some(format!(
            "{broker}'s certificate is expired or not yet valid: renew it, or check this \
             machine's clock"
        ))
    } else if has(
        text,
        &[
            "CertificateRequired",
            "certificate required",
            "HandshakeFailure",
            "BadCertificate",
            "UnknownCA",
        ],
    ) {
        Some(format!(
            "{broker} refused the TLS handshake, most likely for the client certificate: set \
             ESCALATOR_{var}_CLIENT_CERT_FILE and ESCALATOR_{var}_CLIENT_KEY_FILE to a \
             certificate {broker} trusts (and its key)"
        ))
    } else if has(
        text,
        &["InvalidContentType", "CorruptMessage", "corrupt message"],
    ) {
        Some(format!(
            "the server there does not speak TLS: use the {broker} TLS port, or a plain URL \
             (amqp://, redis://) for a plain port"
        ))
    } else {
        None
    }
}

/// `text` without the URL's password (or its whole user part, see [`url_secret`]).
pub fn scrub(text: &str, url: &str) -> String {
    match url_secret(url) {
        Some(secret) if !secret.is_empty() => text.replace(secret, "<redacted>"),
        _ => text.to_string(),
    }
}

fn has(text: &str, needles: &[&str]) -> bool {
    needles.iter().any(|n| text.contains(n))
}

/// The vhost named by an AMQP URL's path (`/` when there is none).
fn vhost_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() || path.eq_ignore_ascii_case("%2f") {
        "/".to_string()
    } else {
        path.replace("%2F", "/").replace("%2f", "/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_the_password_from_library_errors() {
        let url = "amqp:guest:CANARY@h";
        let e = scrub("Invalid URL: 'amqp:guest:CANARY@h'", url);
        assert!(!e.contains("CANARY"), "{e}");
    }

    #[test]
    fn a_wrong_ca_names_the_ca_setting() {
        let hint = tls_hint(
            "IOError(Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) })",
            "RabbitMQ",
            "AMQP",
        )
        .unwrap();
        assert!(hint.contains("ESCALATOR_AMQP_CA_FILE"), "{hint}");
        assert!(tls_hint("Connection refused", "Redis", "REDIS").is_none());
    }

    #[test]
    fn names_the_vhost_of_a_url() {
        assert_eq!(vhost_of("amqp://u:<redacted>@h:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://h:5672"), "/");
        assert_eq!(vhost_of("amqp://h:5672/prod?heartbeat=5"), "prod");
    }
}
