//! The `/_sim/` control API (never recorded, never faulted).

use serde_json::{Value, json};

use super::state::{Req, Shared, SimResponse};
use super::types::{FaultRule, SimSchedule, WebhookTarget};

pub(crate) fn handle(shared: &Shared, req: &Req) -> SimResponse {
    let path = req.path.trim_end_matches('/');
    let ok = || SimResponse::json(200, &json!({"ok": true}));
    match (req.method.as_str(), path) {
        ("GET", "/_sim/health") => SimResponse::json(
            200,
            &json!({
                "status": "ok",
                "base_url": shared.base_url,
                "token_requests": shared.token_requests(),
            }),
        ),
        ("GET", "/_sim/requests") => SimResponse::json(200, &shared.requests()),
        ("GET", "/_sim/zendesk/tickets") => SimResponse::json(200, &shared.zendesk_tickets()),
        ("GET", "/_sim/salesforce/cases") => SimResponse::json(200, &shared.salesforce_cases()),
        ("GET", "/_sim/salesforce/records") => {
            SimResponse::json(200, &shared.salesforce_attachments())
        }
        ("GET", "/_sim/faults") => SimResponse::json(200, &shared.faults()),
        ("POST", "/_sim/faults") => match serde_json::from_slice::<FaultRule>(&req.body) {
            Ok(rule) => {
                shared.inject(rule);
                SimResponse::json(201, &json!({"ok": true}))
            }
            Err(e) => SimResponse::json(400, &json!({"error": format!("invalid fault rule: {e}")})),
        },
        ("DELETE", "/_sim/faults") => {
            shared.clear_faults();
            ok()
        }
        ("POST", "/_sim/zendesk/expire-idempotency-keys") => {
            shared.lock().zd.expire_idempotency_keys();
            ok()
        }
        ("POST", "/_sim/salesforce/expire-tokens") => {
            shared.lock().sf.expire_tokens();
            ok()
        }
        ("POST", "/_sim/zendesk/webhook") => {
            match serde_json::from_slice::<WebhookTarget>(&req.body) {
                Ok(target) => {
                    shared.lock().live.target = Some(target);
                    ok()
                }
                Err(e) => invalid(&format!("invalid webhook target: {e}")),
            }
        }
        ("DELETE", "/_sim/zendesk/webhook") => {
            shared.lock().live.target = None;
            ok()
        }
        ("GET", "/_sim/zendesk/webhook/deliveries") => {
            SimResponse::json(200, &shared.lock().live.deliveries)
        }
        ("GET", "/_sim/zendesk/agents") => {
            let agents: Vec<_> = shared.lock().zd.agents.values().cloned().collect();
            SimResponse::json(200, &agents)
        }
        ("POST", "/_sim/zendesk/agents") => {
            // {"id": 9001, "online": true}
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(v) => match (v["id"].as_u64(), v["online"].as_bool()) {
                    (Some(id), Some(online)) => {
                        let mut st = shared.lock();
                        let agent = st.zd.agents.entry(id).or_insert_with(|| super::SimAgent {
                            id,
                            name: format!("Agent {id}"),
                            online: false,
                        });
                        agent.online = online;
                        ok()
                    }
                    _ => invalid("expected {\"id\": <agent id>, \"online\": true|false}"),
                },
                Err(e) => invalid(&format!("invalid body: {e}")),
            }
        }
        ("POST", "/_sim/zendesk/agent-availability-api") => match flag(req, "enabled") {
            Some(enabled) => {
                shared.lock().zd.availability_api = enabled;
                ok()
            }
            None => invalid("expected {\"enabled\": true|false}"),
        },
        ("POST", "/_sim/salesforce/case-createable") => match flag(req, "createable") {
            Some(createable) => {
                shared.lock().sf.case_createable = createable;
                ok()
            }
            None => invalid("expected {\"createable\": true|false}"),
        },
        ("POST", "/_sim/zendesk/api-user-role") => {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(v) => match v["role"].as_str() {
                    Some(role) => {
                        shared.lock().zd.api_user_role = role.to_owned();
                        ok()
                    }
                    None => invalid("expected {\"role\": \"admin\"|\"agent\"|\"end-user\"}"),
                },
                Err(e) => invalid(&format!("invalid body: {e}")),
            }
        }
        ("POST", "/_sim/zendesk/schedules") => {
            match serde_json::from_slice::<SimSchedule>(&req.body) {
                Ok(s) => {
                    shared.lock().zd.schedules.insert(s.id, s);
                    ok()
                }
                Err(e) => invalid(&format!("invalid schedule: {e}")),
            }
        }
        ("GET", "/_sim/sunshine/users") => SimResponse::json(200, &shared.lock().sun.users),
        ("GET", "/_sim/sunshine/conversations") => {
            SimResponse::json(200, &shared.lock().sun.conversations)
        }
        ("POST", "/_sim/sunshine/multi-convo") => {
            // {"app_id": "sim-app", "enabled": false}
            let app = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v["app_id"].as_str().map(str::to_owned));
            match (app, flag(req, "enabled")) {
                (Some(app), Some(enabled)) => {
                    shared.lock().sun.multi_convo.insert(app, enabled);
                    ok()
                }
                _ => invalid("expected {\"app_id\": \"...\", \"enabled\": true|false}"),
            }
        }
        ("POST", "/_sim/reset") => {
            shared.reset();
            ok()
        }
        _ => SimResponse::json(404, &json!({"error": "unknown control endpoint"})),
    }
}

fn invalid(message: &str) -> SimResponse {
    SimResponse::json(400, &json!({"error": message}))
}

/// A boolean field of a JSON body.
fn flag(req: &Req, name: &str) -> Option<bool> {
    serde_json::from_slice::<Value>(&req.body)
        .ok()?
        .get(name)?
        .as_bool()
}
