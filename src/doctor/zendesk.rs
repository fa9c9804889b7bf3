//! Zendesk checks, in the order of the admin's set-up guide: API token, the
//! ticket defaults, the Conversations API key, availability, the webhook and
//! the optional session-end trigger. Only GETs.
use super::{DoctorOptions, Recorder, unreachable};
use crate::config::{Availability, OrgConfig, ZendeskConfig, ZendeskLiveConfig};
use crate::error::ProviderErrorKind;
use crate::provider::http::execute;
use crate::provider::live::sunshine::SunshineClient;
use reqwest::header::HeaderValue;
use serde_json::Value;

const EVENTS: [&str; 3] = [
    "zen:event-type:ticket.status_changed",
    "zen:event-type:ticket.agent_assignment_changed",
    "zen:event-type:messaging_ticket.message_added",
];
const ORG_HEADER: &str = "fv-organisation-id";
const SESSION_END: &str = "fv:conversation_closed";

const AUTH: &str = "API token authentication";
const GROUP: &str = "default group";
const ASSIGNEE: &str = "default assignee";
const KEY: &str = "Conversations API key";
const AVAILABILITY: &str = "availability policy";
const WEBHOOK: &str = "webhook exists";
const WEBHOOK_ACTIVE: &str = "webhook active";
const WEBHOOK_URL: &str = "webhook URL";
const WEBHOOK_EVENTS: &str = "webhook events";
const WEBHOOK_AUTH: &str = "webhook authentication";
const WEBHOOK_HEADER: &str = "webhook fv-organisation-id header";
const TRIGGER: &str = "session-end trigger (optional)";

struct Api<'a> {
    http: &'a reqwest::Client,
    base: String,
    auth: HeaderValue,
}

impl Api<'_> {
    /// GET `path`: the status and the JSON body (Null when not JSON), or
    /// no answer at all.
    async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        self.get_url(&format!("{}{path}", self.base), path).await
    }

    /// GET an absolute URL (a next-page link); `what` names it in errors.
    async fn get_url(&self, url: &str, what: &str) -> Result<(u16, Value), String> {
        let rb = self
            .http
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.auth.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let (resp, _) = execute(self.http, rb, "zendesk", what)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Every item of the list `key` at `path`, following next-page links
    /// (cursor `links.next` or offset `next_page`) up to [`MAX_PAGES`].
    async fn list(&self, path: &str, key: &str) -> Result<Vec<Value>, (Option<u16>, String)> {
        let mut items = Vec::new();
        let mut page = self.get(path).await;
        for _ in 0..MAX_PAGES {
            let v = match page {
                Ok((200, v)) => v,
                Ok((status, _)) => {
                    return Err((Some(status), format!("GET {path} answered HTTP {status}")));
                }
                Err(e) => return Err((None, e)),
            };
            items.extend(v[key].as_array().cloned().unwrap_or_default());
            let more = v["meta"]["has_more"].as_bool() != Some(false);
            let next = v["links"]["next"]
                .as_str()
                .filter(|_| more)
                .or_else(|| v["next_page"].as_str())
                .filter(|n| !n.is_empty());
            match next {
                Some(url) => page = self.get_url(url, path).await,
                None => break,
            }
        }
        Ok(items)
    }
}

/// Pages of webhooks or triggers read at most (100 each).
const MAX_PAGES: usize = 10;

fn is_staff(user: &Value) -> bool {
    matches!(user["role"].as_str(), Some("agent" | "admin"))
}

pub(super) async fn check(
    http: &reqwest::Client,
    org: &OrgConfig,
    z: &ZendeskConfig,
    options: &DoctorOptions,
    r: &mut Recorder<'_>,
) {
    let api = Api {
        http,
        base: z.base_url(),
        auth: crate::provider::zendesk::basic_auth(&z.email, z.api_token.expose()),
    };
    let authed = match api.get("/api/v2/users/me").await {
        Ok((200, v)) if is_staff(&v["user"]) => {
            r.pass(
                AUTH,
                format!(
                    "the token works, its user is an {}",
                    v["user"]["role"].as_str().unwrap_or("agent")
                ),
            );
            true
        }
        Ok((200, v)) => {
            r.warn(
                AUTH,
                format!(
                    "the token works but its user's role is {}",
                    v["user"]["role"].as_str().unwrap_or("unknown")
                ),
                "use the email and API token of an agent or admin (an end user cannot create tickets for others)",
            );
            true
        }
        Ok((401, _)) => {
            r.fail(
                AUTH,
                "Zendesk refused the credentials (HTTP 401)",
                "check `email` (the agent who owns the token) and `api_token` (Admin Center > Apps and integrations > Zendesk API: the token must exist and token access be enabled)",
            );
            false
        }
        Ok((status, _)) => {
            r.fail(
                AUTH,
                format!("GET /api/v2/users/me answered HTTP {status}"),
                "check `subdomain` / `base_url`: they must name your Zendesk account",
            );
            false
        }
        Err(e) => {
            r.fail(
                AUTH,
                e,
                "check `subdomain` / `base_url` and that this host can reach Zendesk",
            );
            false
        }
    };
    if !authed {
        for step in [GROUP, ASSIGNEE, AVAILABILITY, WEBHOOK, TRIGGER] {
            r.skip(step, "needs API token authentication");
        }
        if let Some(live) = z.live_chat().filter(|_| org.live_chat) {
            check_key(http, z, live, r).await;
        }
        return;
    }
    match z.group_id {
        None => r.skip(GROUP, "not configured"),
        Some(id) => match api.get(&format!("/api/v2/groups/{id}")).await {
            Ok((200, _)) => r.pass(GROUP, format!("group {id} exists")),
            Ok((404, _)) => r.fail(
                GROUP,
                format!("group {id} does not exist"),
                "set `group_id` to the id of a group in Admin Center > People > Groups, or remove it",
            ),
            Ok((status, _)) => r.fail(GROUP, format!("HTTP {status}"), "retry; if it persists check the API user's permissions"),
            Err(e) => r.fail(GROUP, e, "retry later"),
        },
    }
    match z.assignee_id {
        None => r.skip(ASSIGNEE, "not configured"),
        Some(id) => match api.get(&format!("/api/v2/users/{id}")).await {
            Ok((200, v)) if is_staff(&v["user"]) => r.pass(ASSIGNEE, format!("user {id} is an agent")),
            Ok((200, _)) => r.fail(
                ASSIGNEE,
                format!("user {id} is not an agent"),
                "set `assignee_id` to an agent's user id (Admin Center > People > Team members), or remove it",
            ),
            Ok((404, _)) => r.fail(
                ASSIGNEE,
                format!("user {id} does not exist"),
                "set `assignee_id` to an agent's user id (Admin Center > People > Team members), or remove it",
            ),
            Ok((status, _)) => r.fail(ASSIGNEE, format!("HTTP {status}"), "retry; if it persists check the API user's permissions"),
            Err(e) => r.fail(ASSIGNEE, e, "retry later"),
        },
    }
    let Some(live) = z.live_chat().filter(|_| org.live_chat) else {
        for step in [KEY, AVAILABILITY, WEBHOOK, TRIGGER] {
            r.skip(
                step,
                "live chat is not configured ([orgs.<org>.zendesk.live])",
            );
        }
        return;
    };
    check_key(http, z, live, r).await;
    check_availability(&api, live, r).await;
    check_webhook(&api, org, options, r).await;
}

async fn check_key(
    http: &reqwest::Client,
    z: &ZendeskConfig,
    live: &ZendeskLiveConfig,
    r: &mut Recorder<'_>,
) {
    let client = SunshineClient::new(
        http.clone(),
        &live.base_url(&z.subdomain),
        &live.app_id,
        &live.key_id,
        live.secret.expose(),
    );
    match client.get_app().await {
        Ok(()) => r.pass(KEY, format!("app {} answers to key {}", live.app_id, live.key_id)),
        Err(e) if e.status == Some(401) || e.status == Some(403) => r.fail(
            KEY,
            "the Conversations API refused the key (HTTP 401)",
            "check `zendesk.live.key_id` and `zendesk.live.secret` (Admin Center > Apps and integrations > APIs > Conversations API: create a new key if the secret is lost)",
        ),
        Err(e) if e.status == Some(404) => r.fail(
            KEY,
            format!("there is no app {} (HTTP 404)", live.app_id),
            "set `zendesk.live.app_id` to the App ID shown next to the Conversations API key",
        ),
        Err(e) if e.kind == ProviderErrorKind::Network => r.fail(
            KEY,
            unreachable(&e),
            "check `zendesk.live.base_url` (default https://<subdomain>.zendesk.com/sc)",
        ),
        Err(e) => r.fail(KEY, e.message, "retry later; if it persists contact Zendesk support"),
    }
}

async fn check_availability(api: &Api<'_>, live: &ZendeskLiveConfig, r: &mut Recorder<'_>) {
    match live.availability {
        Availability::Always => r.pass(AVAILABILITY, "always hand over (nothing to check)"),
        Availability::Schedule(id) => {
            match api.get(&format!("/api/v2/business_hours/schedules/{id}")).await {
                Ok((200, _)) => r.pass(AVAILABILITY, format!("schedule {id} exists")),
                Ok((404, _)) => r.fail(
                    AVAILABILITY,
                    format!("schedule {id} does not exist"),
                    "set `availability = { schedule_id = <id> }` to a schedule of Admin Center > Objects and rules > Schedules",
                ),
                Ok((status, _)) => r.fail(AVAILABILITY, format!("HTTP {status}"), "schedules need a plan with business hours (Professional or higher); else use availability = \"always\""),
                Err(e) => r.fail(AVAILABILITY, e, "retry later"),
            }
        }
        Availability::AgentsOnline => match api.get("/api/v2/agent_availabilities").await {
            Ok((200, _)) => r.pass(AVAILABILITY, "the agent availability API answers"),
            Ok((status, _)) => r.fail(
                AVAILABILITY,
                format!("the agent availability API is not available (HTTP {status})"),
                "turn on omnichannel routing (Admin Center > Objects and rules > Omnichannel routing), or use availability = \"always\" or a schedule",
            ),
            Err(e) => r.fail(AVAILABILITY, e, "retry later"),
        },
    }
}

/// URLs equal up to a trailing slash and the case of scheme and host.
fn same_url(a: &str, b: &str) -> bool {
    let norm = |u: &str| match reqwest::Url::parse(u.trim()) {
        Ok(p) => p.as_str().trim_end_matches('/').to_string(),
        Err(_) => u.trim().trim_end_matches('/').to_string(),
    };
    norm(a) == norm(b)
}

fn header_value<'v>(webhook: &'v Value, name: &str) -> Option<&'v str> {
    webhook["custom_headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn subscribes_to_events(webhook: &Value) -> bool {
    webhook["subscriptions"].as_array().is_some_and(|s| {
        s.iter()
            .any(|e| EVENTS.contains(&e.as_str().unwrap_or_default()))
    })
}

async fn check_webhook(
    api: &Api<'_>,
    org: &OrgConfig,
    options: &DoctorOptions,
    r: &mut Recorder<'_>,
) {
    let org_id = org.org_id.as_str();
    let webhooks = match api.list("/api/v2/webhooks", "webhooks").await {
        Ok(list) => list,
        Err((status, what)) => {
            let fix = match status {
                Some(401 | 403) => {
                    "the API user must be an admin to read webhooks (Admin Center > People > Team members > role)"
                }
                _ => "retry later",
            };
            r.fail(WEBHOOK, what, fix);
            for step in [
                WEBHOOK_ACTIVE,
                WEBHOOK_URL,
                WEBHOOK_EVENTS,
                WEBHOOK_AUTH,
                WEBHOOK_HEADER,
                TRIGGER,
            ] {
                r.skip(step, "needs the webhook list");
            }
            return;
        }
    };
    let ours = |w: &&Value| {
        header_value(w, ORG_HEADER) == Some(org_id)
            || options
                .webhook_url
                .as_deref()
                .is_some_and(|u| same_url(u, w["endpoint"].as_str().unwrap_or_default()))
    };
    // The event webhook: ours and subscribed to an event type; else any
    // webhook subscribed to the events (perhaps with a wrong header).
    let event_hook = webhooks
        .iter()
        .filter(ours)
        .find(|w| subscribes_to_events(w))
        .or_else(|| webhooks.iter().find(|w| subscribes_to_events(w)));
    match event_hook {
        None => {
            r.fail(
                WEBHOOK,
                "no webhook subscribes to the ticket events",
                "create the webhook of guide step 3 (Apps and integrations > Webhooks > Create webhook, Zendesk events: Status changed, Agent assignment changed, Message added)",
            );
            for step in [
                WEBHOOK_ACTIVE,
                WEBHOOK_URL,
                WEBHOOK_EVENTS,
                WEBHOOK_AUTH,
                WEBHOOK_HEADER,
            ] {
                r.skip(step, "no webhook");
            }
        }
        Some(w) => check_event_webhook(w, org_id, options, r),
    }
    check_trigger(api, &webhooks, org_id, r).await;
}

fn check_event_webhook(w: &Value, org_id: &str, options: &DoctorOptions, r: &mut Recorder<'_>) {
    let id = w["id"].as_str().unwrap_or("?");
    r.pass(WEBHOOK, format!("webhook {id}"));
    match w["status"].as_str() {
        Some("active") => r.pass(WEBHOOK_ACTIVE, "active"),
        other => r.fail(
            WEBHOOK_ACTIVE,
            format!("status is {}", other.unwrap_or("unknown")),
            "activate the webhook (Apps and integrations > Webhooks > the webhook > Activate)",
        ),
    }
    let endpoint = w["endpoint"].as_str().unwrap_or_default();
    let shape_ok =
        w["http_method"].as_str() == Some("POST") && w["request_format"].as_str() == Some("json");
    match options.webhook_url.as_deref() {
        _ if !shape_ok => r.fail(
            WEBHOOK_URL,
            format!(
                "request method {} / format {}",
                w["http_method"].as_str().unwrap_or("?"),
                w["request_format"].as_str().unwrap_or("?")
            ),
            "set Request method POST and Request format JSON on the webhook",
        ),
        Some(url) if same_url(url, endpoint) => {
            r.pass(WEBHOOK_URL, format!("targets {endpoint} (POST, JSON)"))
        }
        Some(url) => r.fail(
            WEBHOOK_URL,
            format!("targets {endpoint}, not this deployment's {url}"),
            format!("set the webhook's Endpoint URL to {url}"),
        ),
        None => r.warn(
            WEBHOOK_URL,
            format!("targets {endpoint}; this deployment's URL is unknown"),
            "pass --webhook-url (or ESCALATOR_PUBLIC_WEBHOOK_URL) to check it",
        ),
    }
    let subs: Vec<&str> = w["subscriptions"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = EVENTS
        .iter()
        .copied()
        .filter(|e| !subs.contains(e))
        .collect();
    if missing.is_empty() {
        r.pass(
            WEBHOOK_EVENTS,
            "status changed, agent assignment changed, message added",
        );
    } else {
        r.fail(
            WEBHOOK_EVENTS,
            format!("not subscribed to {}", missing.join(", ")),
            "subscribe the webhook to Status changed, Agent assignment changed and Message added (guide step 4)",
        );
    }
    let auth = &w["authentication"];
    if auth["type"].as_str() == Some("bearer_token")
        && auth["add_position"].as_str() == Some("header")
    {
        r.pass(
            WEBHOOK_AUTH,
            "Bearer token (its value is not readable through the API: make sure it equals zendesk.live.webhook_token)",
        );
    } else {
        r.fail(
            WEBHOOK_AUTH,
            format!("authentication is {}", auth["type"].as_str().unwrap_or("none")),
            "under Authentication select Bearer token and enter the value of zendesk.live.webhook_token",
        );
    }
    match header_value(w, ORG_HEADER) {
        Some(v) if v == org_id => r.pass(WEBHOOK_HEADER, format!("{ORG_HEADER}: {org_id}")),
        Some(_) => r.fail(
            WEBHOOK_HEADER,
            format!("{ORG_HEADER} names another org"),
            format!("set the custom header {ORG_HEADER} to {org_id}"),
        ),
        None => r.fail(
            WEBHOOK_HEADER,
            format!("no {ORG_HEADER} header"),
            format!("add the custom header {ORG_HEADER} with the value {org_id}"),
        ),
    }
}

async fn check_trigger(api: &Api<'_>, webhooks: &[Value], org_id: &str, r: &mut Recorder<'_>) {
    let fix = "optional: to close the conversation on End session, add the trigger of the guide (Objects and rules > Triggers, Notify by > Active webhook, body with \"type\": \"fv:conversation_closed\")";
    let triggers = match api.get("/api/v2/triggers").await {
        Ok((200, v)) => v["triggers"].as_array().cloned().unwrap_or_default(),
        Ok((status, _)) => {
            return r.warn(
                TRIGGER,
                format!("GET /api/v2/triggers answered HTTP {status}"),
                fix,
            );
        }
        Err(e) => return r.warn(TRIGGER, e, fix),
    };
    let our_hooks: Vec<&str> = webhooks
        .iter()
        .filter(|w| header_value(w, ORG_HEADER) == Some(org_id))
        .filter_map(|w| w["id"].as_str())
        .collect();
    let found = triggers
        .iter()
        .filter(|t| t["active"].as_bool() != Some(false))
        .find(|t| {
            t["actions"].as_array().is_some_and(|actions| {
                actions.iter().any(|a| {
                    a["field"].as_str() == Some("notification_webhook")
                        && a["value"][0]
                            .as_str()
                            .is_some_and(|id| our_hooks.contains(&id))
                        && a["value"][1]
                            .as_str()
                            .is_some_and(|b| b.contains(SESSION_END))
                })
            })
        });
    match found {
        Some(t) => r.pass(
            TRIGGER,
            format!("trigger {} notifies this org's webhook", t["id"]),
        ),
        None => r.warn(
            TRIGGER,
            "no active trigger sends fv:conversation_closed to this org's webhook",
            fix,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_match_up_to_a_trailing_slash_and_host_case() {
        assert!(same_url(
            "https://API.example.com/hook/",
            "https://api.example.com/hook"
        ));
        assert!(!same_url(
            "https://api.example.com/hook",
            "https://api.example.com/other"
        ));
    }

    #[test]
    fn the_org_header_is_found_whatever_its_case() {
        let w = json!({"custom_headers": {"FV-Organisation-Id": "acme"}});
        assert_eq!(header_value(&w, ORG_HEADER), Some("acme"));
        assert_eq!(header_value(&json!({}), ORG_HEADER), None);
    }
}
