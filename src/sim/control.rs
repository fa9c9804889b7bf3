//! The `/_sim/` control API (never recorded, never faulted).

use serde_json::json;

use super::state::{Req, Shared, SimResponse};
use super::types::FaultRule;

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
        ("POST", "/_sim/reset") => {
            shared.reset();
            ok()
        }
        _ => SimResponse::json(404, &json!({"error": "unknown control endpoint"})),
    }
}
