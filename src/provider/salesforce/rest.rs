//! Authenticated REST calls: bearer token, one refresh-and-retry on 401,
//! `Sforce-Limit-Info` logging, error mapping, SOQL queries.
use super::errors::{PROVIDER, api_usage, rest_error};
use super::token::{AccessToken, TokenSource};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::provider::http::{execute, retry_after, settled_for, transport_error};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Warn when the org has used this share of its daily API allocation.
const USAGE_WARN_PERCENT: u64 = 90;

/// Where requests go: the instance of the current token.
pub(super) struct Base<'a> {
    pub instance_url: &'a str,
    version: &'a str,
}

impl Base<'_> {
    /// `{instance_url}/services/data/{version}{path}`
    pub fn data(&self, path: &str) -> String {
        format!(
            "{}/services/data/{}{}",
            self.instance_url, self.version, path
        )
    }
}

/// A 2xx or 3xx answer, read in full.
pub(super) struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json<T: DeserializeOwned>(&self, op: &str) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ProviderError::permanent(
                PROVIDER,
                ProviderErrorKind::Protocol,
                format!("{op}: unexpected response shape: {e}"),
            )
            .with_status(self.status)
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryPage<T> {
    #[serde(default = "Vec::new")]
    records: Vec<T>,
    #[serde(default = "yes")]
    done: bool,
    #[serde(default)]
    next_records_url: Option<String>,
}

fn yes() -> bool {
    true
}

/// Percent-encode one URL path segment.
pub(super) fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(super) struct Rest {
    http: reqwest::Client,
    org_id: String,
    version: String,
    limit_backoff: Duration,
    pub tokens: TokenSource,
}

impl Rest {
    pub fn new(
        http: reqwest::Client,
        org_id: &str,
        version: &str,
        limit_backoff: Duration,
        tokens: TokenSource,
    ) -> Self {
        Rest {
            http,
            org_id: org_id.to_string(),
            version: version.to_string(),
            limit_backoff,
            tokens,
        }
    }

    /// The instance URL of the current token.
    pub async fn instance_url(&self) -> Result<String, ProviderError> {
        Ok(self.tokens.current().await?.instance_url)
    }

    /// Send the request `build` makes (called again after a token refresh).
    /// 2xx and 3xx answers are returned; the rest become typed errors whose
    /// messages never contain `redact` values.
    pub async fn call<F>(
        &self,
        op: &'static str,
        redact: &[&str],
        build: F,
    ) -> Result<Reply, ProviderError>
    where
        F: Fn(&reqwest::Client, &Base<'_>) -> reqwest::RequestBuilder,
    {
        let token = self.tokens.current().await?;
        let (mut resp, method) = self.attempt(op, &build, &token).await?;
        if resp.status().as_u16() == 401 {
            tracing::info!(
                org_id = %self.org_id,
                operation = op,
                "salesforce session expired or invalid: refreshing the token and retrying once"
            );
            let fresh = self.tokens.refresh(Some(&token)).await?;
            resp = self.attempt(op, &build, &fresh).await?.0;
        }
        let status = resp.status().as_u16();
        let ra = retry_after(resp.headers());
        let body = resp
            .bytes()
            .await
            .map_err(|e| settled_for(&method, transport_error(PROVIDER, &e)))?
            .to_vec();
        if (200..400).contains(&status) {
            return Ok(Reply { status, body });
        }
        let err = rest_error(
            op,
            status,
            ra,
            &String::from_utf8_lossy(&body),
            redact,
            self.limit_backoff,
        );
        tracing::warn!(
            org_id = %self.org_id,
            operation = op,
            status,
            error_class = err.class.as_str(),
            error_kind = ?err.kind,
            error = %err,
            "salesforce call failed"
        );
        Err(settled_for(&method, err))
    }

    async fn attempt<F>(
        &self,
        op: &'static str,
        build: &F,
        token: &AccessToken,
    ) -> Result<(reqwest::Response, reqwest::Method), ProviderError>
    where
        F: Fn(&reqwest::Client, &Base<'_>) -> reqwest::RequestBuilder,
    {
        let base = Base {
            instance_url: &token.instance_url,
            version: &self.version,
        };
        let rb = build(&self.http, &base)
            .bearer_auth(token.token.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        let (resp, method) = execute(&self.http, rb, PROVIDER, op).await?;
        let usage = resp
            .headers()
            .get("sforce-limit-info")
            .and_then(|v| v.to_str().ok())
            .and_then(api_usage);
        if let Some((used, max)) = usage {
            crate::observability::metrics::api_usage(&self.org_id, used, max);
        }
        let status = resp.status().as_u16();
        tracing::debug!(
            org_id = %self.org_id,
            operation = op,
            status,
            api_usage_used = usage.map(|u| u.0),
            api_usage_max = usage.map(|u| u.1),
            "salesforce api call"
        );
        if let Some((used, max)) = usage
            && max > 0
            && used.saturating_mul(100) >= max.saturating_mul(USAGE_WARN_PERCENT)
        {
            tracing::warn!(
                org_id = %self.org_id,
                api_usage_used = used,
                api_usage_max = max,
                "salesforce org is close to its daily API limit"
            );
        }
        Ok((resp, method))
    }

    /// Run a SOQL query, following `nextRecordsUrl` for at most `max_pages` pages.
    pub async fn query<T: DeserializeOwned>(
        &self,
        op: &'static str,
        soql: &str,
        max_pages: usize,
        redact: &[&str],
    ) -> Result<Vec<T>, ProviderError> {
        let reply = self
            .call(op, redact, |http, base| {
                http.get(base.data("/query")).query(&[("q", soql)])
            })
            .await?;
        let mut page: QueryPage<T> = reply.json(op)?;
        let mut records = std::mem::take(&mut page.records);
        let mut pages = 1;
        while !page.done && pages < max_pages {
            let Some(next) = page.next_records_url.take().filter(|n| n.starts_with('/')) else {
                break;
            };
            let reply = self
                .call(op, redact, |http, base| {
                    http.get(format!("{}{next}", base.instance_url))
                })
                .await?;
            page = reply.json(op)?;
            records.append(&mut page.records);
            pages += 1;
        }
        if !page.done {
            tracing::warn!(org_id = %self.org_id, operation = op, pages, "salesforce query has more pages than read");
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_path_segments() {
        assert_eq!(path_segment("conv-1_2.3~"), "conv-1_2.3~");
        assert_eq!(path_segment("a/b c?"), "a%2Fb%20c%3F");
    }

    #[test]
    fn reads_query_pages() {
        let p: QueryPage<serde_json::Value> = serde_json::from_str(
            r#"{"totalSize":1,"done":false,"nextRecordsUrl":"/x","records":[{"Id":"1"}]}"#,
        )
        .unwrap();
        assert!(!p.done);
        assert_eq!(p.next_records_url.as_deref(), Some("/x"));
        assert_eq!(p.records.len(), 1);
    }
}
