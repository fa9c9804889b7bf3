//! Salesforce checks, in the order of the admin's set-up guide: the client
//! credentials grant on the My Domain host, the API version, Case access of
//! the Run As user, the External ID field, and MIAW (when configured). The
//! token grant is the only POST; it creates nothing.
use super::{Recorder, unreachable};
use crate::config::SalesforceConfig;
use crate::provider::http::{execute, retry_after};
use crate::provider::salesforce::{form_encode, token_error};
use crate::secret::Secret;
use serde_json::Value;

const GRANT: &str = "token grant (client credentials)";
const VERSION: &str = "API version";
const CASE: &str = "Case createable by the Run As user";
const EXTERNAL_ID: &str = "External ID field";
const MIAW: &str = "MIAW deployment";
const HOURS: &str = "MIAW business hours";

async fn grant(
    http: &reqwest::Client,
    s: &SalesforceConfig,
) -> Result<(String, Secret), (String, String)> {
    let mut form = vec![("grant_type", "client_credentials")];
    let mut rb = http
        .post(s.token_url())
        .header(reqwest::header::ACCEPT, "application/json");
    if s.token_auth_basic {
        // Encoded exactly as the worker's token client does (RFC 6749 2.3.1).
        rb = rb.basic_auth(
            form_encode(&s.client_id),
            Some(form_encode(s.client_secret.expose())),
        );
    } else {
        form.push(("client_id", s.client_id.as_str()));
        form.push(("client_secret", s.client_secret.expose()));
    }
    let (resp, _) = execute(http, rb.form(&form), "salesforce", "token grant")
        .await
        .map_err(|e| {
            (
                unreachable(&e),
                "check `my_domain` (your My Domain host, e.g. acme.my.salesforce.com)".to_string(),
            )
        })?;
    let status = resp.status().as_u16();
    let ra = retry_after(resp.headers());
    let body = resp.text().await.unwrap_or_default();
    if !(200..300).contains(&status) {
        // The token endpoint's messages carry the fix after "): ".
        let message = token_error(status, ra, &body).message;
        return Err(match message.split_once("): ") {
            Some((what, fix)) => (format!("{what})"), fix.to_string()),
            None => (message, "retry later".to_string()),
        });
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    match (v["access_token"].as_str(), v["instance_url"].as_str()) {
        (Some(t), Some(i)) if !t.is_empty() => Ok((
            i.trim_end_matches('/').to_string(),
            Secret::new(t.to_string()),
        )),
        _ => Err((
            "the token endpoint answered without access_token / instance_url".to_string(),
            "check `my_domain`: it must be the org's My Domain host".to_string(),
        )),
    }
}

async fn get(
    http: &reqwest::Client,
    url: String,
    token: Option<&Secret>,
) -> Result<(u16, Value), String> {
    let mut rb = http
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(t) = token {
        rb = rb.bearer_auth(t.expose());
    }
    let (resp, _) = execute(http, rb, "salesforce", "doctor read")
        .await
        .map_err(|e| unreachable(&e))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

pub(super) async fn check(http: &reqwest::Client, s: &SalesforceConfig, r: &mut Recorder<'_>) {
    let (instance, token) = match grant(http, s).await {
        Ok(t) => {
            r.pass(GRANT, format!("token granted on {}", s.login_base_url()));
            t
        }
        Err((what, fix)) => {
            r.fail(GRANT, what, fix);
            for step in [VERSION, CASE, EXTERNAL_ID] {
                r.skip(step, "needs a token");
            }
            check_miaw(http, s, r).await;
            return;
        }
    };
    let wanted = s.api_version.trim_start_matches('v').to_string();
    match get(http, format!("{instance}/services/data/"), None).await {
        Ok((200, Value::Array(list))) => {
            let known = list
                .iter()
                .any(|v| v["version"].as_str() == Some(wanted.as_str()));
            let newest = list
                .iter()
                .filter_map(|v| v["version"].as_str())
                .next_back()
                .unwrap_or("?");
            if known {
                r.pass(VERSION, format!("{} is offered", s.api_version));
            } else {
                r.fail(
                    VERSION,
                    format!(
                        "{} is not offered by this org (newest: v{newest})",
                        s.api_version
                    ),
                    format!("set `api_version` to one the org offers, e.g. \"v{newest}\""),
                );
            }
        }
        Ok((status, _)) => r.fail(
            VERSION,
            format!("GET /services/data/ answered HTTP {status}"),
            "check `my_domain`",
        ),
        Err(e) => r.fail(VERSION, e, "retry later"),
    }
    let describe = format!(
        "{instance}/services/data/{}/sobjects/Case/describe",
        s.api_version
    );
    match get(http, describe, Some(&token)).await {
        Ok((200, v)) => {
            if v["createable"].as_bool() == Some(true) {
                r.pass(CASE, "the Run As user may create Cases");
            } else {
                r.fail(
                    CASE,
                    "the Run As user may not create Cases",
                    "give the External Client App's Run As user Create (and Edit) on Case through its profile or a permission set",
                );
            }
            check_external_id(s, &v, r);
        }
        Ok((status, _)) => {
            r.fail(
                CASE,
                format!("Case describe answered HTTP {status}"),
                "the Run As user needs API Enabled and Read/Create on Case (profile or permission set)",
            );
            r.skip(EXTERNAL_ID, "needs the Case describe");
        }
        Err(e) => {
            r.fail(CASE, e, "retry later");
            r.skip(EXTERNAL_ID, "needs the Case describe");
        }
    }
    check_miaw(http, s, r).await;
}

fn check_external_id(s: &SalesforceConfig, describe: &Value, r: &mut Recorder<'_>) {
    let Some(name) = s.external_id_field.as_deref() else {
        return r.skip(EXTERNAL_ID, "not configured");
    };
    let field = describe["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"].as_str() == Some(name)));
    match field {
        Some(f) if f["externalId"].as_bool() == Some(true) => {
            r.pass(EXTERNAL_ID, format!("Case.{name} is an External ID field"))
        }
        Some(_) => r.fail(
            EXTERNAL_ID,
            format!("Case.{name} is not marked External ID"),
            format!("tick External ID (and Unique) on Case.{name} in Setup > Object Manager > Case > Fields"),
        ),
        None => r.fail(
            EXTERNAL_ID,
            format!("Case has no field {name} visible to the Run As user"),
            format!("create the text field {name} (External ID, Unique) on Case and give the Run As user access to it, or remove `external_id_field`"),
        ),
    }
}

/// The Messaging for In-App and Web deployment (Part 2 of the guide): an
/// unauthenticated access token for the org id and developer name of the
/// code snippet (a token is no record: nothing is created), and the
/// deployment's business hours. Independent of the OAuth grant.
async fn check_miaw(http: &reqwest::Client, s: &SalesforceConfig, r: &mut Recorder<'_>) {
    let Some(live) = s.live.as_ref().filter(|l| l.enabled) else {
        r.skip(MIAW, "not configured");
        r.skip(HOURS, "not configured");
        return;
    };
    let client = crate::provider::live::miaw::MiawClient::new(http.clone(), live);
    match client.access_token().await {
        Ok(_) => r.pass(
            MIAW,
            format!(
                "deployment {} answers at {} with an access token",
                live.developer_name,
                live.scrt_base_url()
            ),
        ),
        Err(e) => {
            let fix = match e.status {
                Some(400) => {
                    "set `salesforce.live.org_id` and `salesforce.live.developer_name` to the OrganizationId and DeveloperName of the deployment's code snippet (Setup > Embedded Service Deployments > Install Code Snippet); the deployment must be a Custom Client of an activated Enhanced Chat channel"
                }
                Some(404) | None => {
                    "set `salesforce.live.scrt_url` to the Url of the deployment's code snippet (https://<org>.my.salesforce-scrt.com)"
                }
                Some(_) => {
                    "retry later; if it persists, check that Messaging is enabled and the channel is activated"
                }
            };
            r.fail(MIAW, e.message.clone(), fix);
        }
    }
    match client.business_hours().await {
        Ok(h) if h.is_active => r.pass(HOURS, "open now: live requests go to an agent"),
        Ok(_) => r.warn(
            HOURS,
            "closed now: live requests become Cases until they open",
            "nothing to fix if this is outside your support hours; else check the business hours of the messaging channel's routing",
        ),
        Err(e) => r.fail(
            HOURS,
            e.message.clone(),
            "check `salesforce.live.scrt_url` and `salesforce.live.developer_name`",
        ),
    }
}
