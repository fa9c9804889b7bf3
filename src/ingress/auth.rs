//! Who may deliver a webhook: the org's Bearer token (with the org named in
//! `fv-organisation-id`, as the admins' guide sets it up), and, when the org
//! has a signing secret, Zendesk's HMAC signature over timestamp + body.
//!
//! Tokens are compared as SHA-256 digests in constant time (`subtle`), so
//! neither a token's content nor its length shows in the answer time; an
//! unknown org is compared against a dummy digest first, so that it takes
//! as long as a wrong token.
use super::answer::Rejection;
use crate::config::Config;
use crate::secret::Secret;
use axum::http::HeaderMap;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The header naming the org (set on the Zendesk webhook by the admin).
pub const ORG_HEADER: &str = "fv-organisation-id";
pub const SIGNATURE_HEADER: &str = "x-zendesk-webhook-signature";
pub const SIGNATURE_TIMESTAMP_HEADER: &str = "x-zendesk-webhook-signature-timestamp";
/// How far a signature timestamp may be from now, either way.
pub const MAX_SIGNATURE_SKEW: Duration = Duration::from_secs(5 * 60);

/// The webhook credentials of every org that has them.
pub struct Credentials {
    orgs: HashMap<String, OrgCredentials>,
    /// Compared against when the org is unknown (same work as a known one).
    dummy: [u8; 32],
}

struct OrgCredentials {
    token: [u8; 32],
    signing_secret: Option<Secret>,
}

/// An authenticated request: whose it is, and what else must be checked.
pub struct Authenticated<'a> {
    pub org_id: &'a str,
    pub signing_secret: Option<&'a Secret>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Credentials {
    /// Orgs whose zendesk table has a `live` table (enabled or not: a
    /// webhook that Zendesk still delivers after live chat was switched off
    /// is queued, and the worker decides); others have no webhook token.
    pub fn from_config(config: &Config) -> Credentials {
        let orgs = config
            .orgs()
            .filter_map(|org| {
                let live = org.zendesk()?.live.as_ref()?;
                Some((
                    org.org_id.clone(),
                    OrgCredentials {
                        token: digest(live.webhook_token.expose().as_bytes()),
                        signing_secret: live.webhook_signing_secret.clone(),
                    },
                ))
            })
            .collect();
        let dummy = digest(uuid::Uuid::new_v4().as_bytes());
        Credentials { orgs, dummy }
    }

    /// How many orgs can deliver webhooks.
    pub fn len(&self) -> usize {
        self.orgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.orgs.is_empty()
    }

    /// Check the Bearer token against the org named in `fv-organisation-id`.
    pub fn authenticate<'a>(&'a self, headers: &HeaderMap) -> Result<Authenticated<'a>, Rejection> {
        let token = bearer(headers).ok_or(Rejection::MissingToken)?;
        let org_id = headers
            .get(ORG_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Rejection::MissingOrg)?;
        let presented = digest(token.as_bytes());
        match self.orgs.get_key_value(org_id) {
            Some((id, org)) => {
                if bool::from(presented.ct_eq(&org.token)) {
                    Ok(Authenticated {
                        org_id: id.as_str(),
                        signing_secret: org.signing_secret.as_ref(),
                    })
                } else {
                    Err(Rejection::WrongToken)
                }
            }
            None => {
                // Same work as a known org's comparison; the result cannot match.
                let _ = std::hint::black_box(presented.ct_eq(&self.dummy));
                Err(Rejection::UnknownOrg)
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Check Zendesk's signature: `x-zendesk-webhook-signature` =
/// base64(HMAC-SHA256(secret, timestamp + raw body)), with the timestamp of
/// `x-zendesk-webhook-signature-timestamp` within [`MAX_SIGNATURE_SKEW`] of
/// `now`. The signature is checked before the time, so that an unsigned
/// caller learns nothing about the window.
pub fn verify_signature(
    secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), Rejection> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (Some(signature), Some(timestamp)) =
        (header(SIGNATURE_HEADER), header(SIGNATURE_TIMESTAMP_HEADER))
    else {
        return Err(Rejection::MissingSignature);
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| Rejection::InvalidSignature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| Rejection::InvalidSignature)?;
    mac.update(timestamp.as_bytes());
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| Rejection::InvalidSignature)?;
    let at = DateTime::parse_from_rfc3339(timestamp)
        .map_err(|_| Rejection::InvalidTimestamp)?
        .with_timezone(&Utc);
    let skew = (now - at).abs().to_std().unwrap_or(Duration::MAX);
    if skew > MAX_SIGNATURE_SKEW {
        return Err(Rejection::StaleSignature);
    }
    Ok(())
}

/// What Zendesk sends for `secret`, `timestamp` and `body` (tests, the benchmark).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const CONFIG: &str = r#"
[orgs.acme]
provider = "zendesk"
[orgs.acme.zendesk]
subdomain = "acme"
email = "bot@acme.example"
api_token = "t"
[orgs.acme.zendesk.live]
app_id = "app1"
key_id = "app_key1"
secret = "s"
webhook_token = "acme-token-0123456789"
webhook_signing_secret = "acme-signing-secret"

[orgs.plain]
provider = "zendesk"
[orgs.plain.zendesk]
subdomain = "plain"
email = "bot@plain.example"
api_token = "t"
"#;

    fn creds() -> Credentials {
        Credentials::from_config(&Config::parse(CONFIG, "test", &|_| None).unwrap())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn only_orgs_with_a_live_table_have_credentials() {
        let c = creds();
        assert_eq!(c.len(), 1);
        let h = headers(&[
            ("authorization", "Bearer acme-token-0123456789"),
            (ORG_HEADER, "plain"),
        ]);
        assert_eq!(c.authenticate(&h).err(), Some(Rejection::UnknownOrg));
    }

    #[test]
    fn token_and_org_are_both_required() {
        let c = creds();
        let ok = headers(&[
            ("authorization", "bearer acme-token-0123456789"),
            (ORG_HEADER, "acme"),
        ]);
        let a = c.authenticate(&ok).unwrap();
        assert_eq!(a.org_id, "acme");
        assert!(a.signing_secret.is_some());
        for (h, want) in [
            (headers(&[(ORG_HEADER, "acme")]), Rejection::MissingToken),
            (
                headers(&[("authorization", "Basic abc"), (ORG_HEADER, "acme")]),
                Rejection::MissingToken,
            ),
            (
                headers(&[("authorization", "Bearer "), (ORG_HEADER, "acme")]),
                Rejection::MissingToken,
            ),
            (
                headers(&[("authorization", "Bearer acme-token-0123456789")]),
                Rejection::MissingOrg,
            ),
            (
                headers(&[
                    ("authorization", "Bearer acme-token-012345678"),
                    (ORG_HEADER, "acme"),
                ]),
                Rejection::WrongToken,
            ),
            (
                headers(&[("authorization", "Bearer x"), (ORG_HEADER, "nobody")]),
                Rejection::UnknownOrg,
            ),
        ] {
            assert_eq!(c.authenticate(&h).err(), Some(want));
        }
    }

    #[test]
    fn signatures_are_checked_over_timestamp_and_body() {
        let secret = Secret::new("acme-signing-secret");
        let now = Utc::now();
        let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let body = br#"{"type":"zen:event-type:ticket.status_changed"}"#;
        let sig = sign("acme-signing-secret", &ts, body);
        let h = |sig: &str, ts: &str| {
            headers(&[(SIGNATURE_HEADER, sig), (SIGNATURE_TIMESTAMP_HEADER, ts)])
        };
        assert_eq!(verify_signature(&secret, &h(&sig, &ts), body, now), Ok(()));
        // Another body, another secret, garbage: invalid.
        assert_eq!(
            verify_signature(&secret, &h(&sig, &ts), b"{}", now),
            Err(Rejection::InvalidSignature)
        );
        let other = sign("other", &ts, body);
        assert_eq!(
            verify_signature(&secret, &h(&other, &ts), body, now),
            Err(Rejection::InvalidSignature)
        );
        assert_eq!(
            verify_signature(&secret, &h("%%%", &ts), body, now),
            Err(Rejection::InvalidSignature)
        );
        assert_eq!(
            verify_signature(&secret, &headers(&[(SIGNATURE_HEADER, &sig)]), body, now),
            Err(Rejection::MissingSignature)
        );
        // Within five minutes either way, not beyond.
        let edge = now + chrono::Duration::seconds(299);
        assert_eq!(verify_signature(&secret, &h(&sig, &ts), body, edge), Ok(()));
        let late = now + chrono::Duration::seconds(301);
        assert_eq!(
            verify_signature(&secret, &h(&sig, &ts), body, late),
            Err(Rejection::StaleSignature)
        );
        let early = now - chrono::Duration::seconds(301);
        assert_eq!(
            verify_signature(&secret, &h(&sig, &ts), body, early),
            Err(Rejection::StaleSignature)
        );
        let bad_ts = "yesterday";
        let sig = sign("acme-signing-secret", bad_ts, body);
        assert_eq!(
            verify_signature(&secret, &h(&sig, bad_ts), body, now),
            Err(Rejection::InvalidTimestamp)
        );
    }
}
