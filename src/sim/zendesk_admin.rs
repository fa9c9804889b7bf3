//! Zendesk admin read endpoints the set-up check (`escalator doctor`) reads:
//! the API user (`users/me`), groups, the Webhooks API and triggers. They
//! describe the account as the admin guide sets it up: one webhook
//! subscribed to the three event types (Bearer auth, `fv-organisation-id`)
//! aimed at the configured webhook target, and the session-end trigger.
//! Tests make a check fail with a [`super::FaultRule`] (a status, or a 200
//! with another body).

use serde_json::{Value, json};

use super::state::{Req, SimResponse, State};
use super::webhooks::{
    ASSIGNMENT_CHANGED, EVENT_WEBHOOK_ID, MESSAGE_ADDED, SESSION_END, STATUS_CHANGED,
    TRIGGER_WEBHOOK_ID,
};

/// The API user of the seeded credentials (an admin unless
/// `SimHandle::set_api_user_role`), also `GET /users/1000`.
pub(crate) const API_USER_ID: u64 = 1000;
/// Groups every fresh simulator has.
const GROUPS: &[(u64, &str)] = &[(42, "Support"), (77, "AI escalations")];
/// Where the webhook points when no target is set: the ingress's default address.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080/webhooks/zendesk";
/// The org id in the webhook's header when no target is set: the sandbox org.
const DEFAULT_ORG: &str = "sandbox-zendesk";

/// The answer for an admin path, or `None` when the path is not one of them
/// (the caller has checked authentication).
pub(crate) fn handle(st: &State, req: &Req, segs: &[&str]) -> Option<SimResponse> {
    if req.method != axum::http::Method::GET {
        return None;
    }
    let response = match segs {
        ["users", "me"] => SimResponse::json(200, &json!({"user": api_user(st)})),
        ["users", id] if id.parse::<u64>().ok() == Some(API_USER_ID) => {
            SimResponse::json(200, &json!({"user": api_user(st)}))
        }
        ["groups", id] => match GROUPS
            .iter()
            .find(|(g, _)| id.parse::<u64>().ok() == Some(*g))
        {
            Some((id, name)) => SimResponse::json(
                200,
                &json!({"group": {"id": id, "name": name, "deleted": false}}),
            ),
            None => SimResponse::json(
                404,
                &json!({"error": "RecordNotFound", "description": "Not found"}),
            ),
        },
        ["webhooks"] => SimResponse::json(
            200,
            &json!({"webhooks": webhooks(st), "meta": {"has_more": false}, "links": {}}),
        ),
        ["triggers"] => SimResponse::json(
            200,
            &json!({"triggers": triggers(st), "next_page": null, "count": 1}),
        ),
        _ => return None,
    };
    Some(response)
}

fn api_user(st: &State) -> Value {
    json!({"id": API_USER_ID, "name": "Integration", "role": st.zd.api_user_role, "active": true})
}

fn webhook(id: &str, name: &str, endpoint: &str, org: &str, subscriptions: Value) -> Value {
    json!({
        "id": id,
        "name": name,
        "status": "active",
        "endpoint": endpoint,
        "http_method": "POST",
        "request_format": "json",
        "subscriptions": subscriptions,
        "authentication": {"type": "bearer_token", "add_position": "header"},
        "custom_headers": {"fv-organisation-id": org},
    })
}

/// The event webhook and the trigger's webhook, aimed at the target.
fn webhooks(st: &State) -> Vec<Value> {
    let (endpoint, org) = match &st.live.target {
        Some(t) => (t.url.as_str(), t.org_id.as_str()),
        None => (DEFAULT_ENDPOINT, DEFAULT_ORG),
    };
    vec![
        webhook(
            EVENT_WEBHOOK_ID,
            "Fullview agent replies",
            endpoint,
            org,
            json!([STATUS_CHANGED, ASSIGNMENT_CHANGED, MESSAGE_ADDED]),
        ),
        webhook(
            TRIGGER_WEBHOOK_ID,
            "Fullview session end",
            endpoint,
            org,
            json!(["conditional_ticket_events"]),
        ),
    ]
}

/// The session-end trigger, unless the target says the admin skipped it.
fn triggers(st: &State) -> Vec<Value> {
    if st
        .live
        .target
        .as_ref()
        .is_some_and(|t| !t.session_end_trigger)
    {
        return Vec::new();
    }
    let body =
        format!("{{\n\"ticket_id\": \"{{{{ticket.id}}}}\",\n\"type\": \"{SESSION_END}\"\n}}");
    vec![json!({
        "id": 360_000_001u64,
        "title": "Fullview - On session end",
        "active": true,
        "conditions": {"all": [], "any": [{"field": "messaging_session_state", "operator": "changed_from", "value": "active"}]},
        "actions": [{"field": "notification_webhook", "value": [TRIGGER_WEBHOOK_ID, body]}],
    })]
}
