//! Zendesk webhook payloads as the seed's webhook receives them: the event
//! envelope of `ticket.status_changed`, `ticket.agent_assignment_changed` and
//! `messaging_ticket.message_added` (official event reference: ids as
//! strings, status upper case, no conversation id on ticket events), and the
//! session-end trigger's custom body exactly as admins paste it.

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};

use super::types::SimTicket;

/// The simulated Zendesk account.
pub(crate) const ACCOUNT_ID: u64 = 10_000_001;
/// `x-zendesk-webhook-id` of the webhook subscribed to the three event types.
pub(crate) const EVENT_WEBHOOK_ID: &str = "01HZSIMEVENTWEBHOOK0000001";
/// `x-zendesk-webhook-id` of the second webhook, the session-end trigger's.
pub(crate) const TRIGGER_WEBHOOK_ID: &str = "01HZSIMTRIGGERWEBHOOK00001";
pub(crate) const STATUS_CHANGED: &str = "zen:event-type:ticket.status_changed";
pub(crate) const ASSIGNMENT_CHANGED: &str = "zen:event-type:ticket.agent_assignment_changed";
pub(crate) const MESSAGE_ADDED: &str = "zen:event-type:messaging_ticket.message_added";
/// `event_type` recorded for the trigger body (it has no envelope).
pub(crate) const SESSION_END: &str = "fv:conversation_closed";

/// One webhook request body, ready to send.
#[derive(Clone, Debug)]
pub(crate) struct Outgoing {
    pub(crate) event_type: String,
    pub(crate) event_id: String,
    pub(crate) ticket_id: u64,
    pub(crate) body: String,
    /// Sent by the trigger's webhook, not the event webhook.
    pub(crate) trigger: bool,
}

/// `event.actor` of `message_added`.
pub(crate) struct Actor {
    pub(crate) id: String,
    pub(crate) name: String,
    /// "agent" | "end_user" | "trigger" | "system"
    pub(crate) kind: &'static str,
}

/// Events caused by one ticket update share a sequence id; `position` is
/// 1-based. Receivers must not rely on it (Zendesk does not guarantee order).
pub(crate) struct Sequence {
    pub(crate) id: String,
    pub(crate) total: usize,
}

impl Sequence {
    pub(crate) fn new(total: usize) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            total,
        }
    }

    fn meta(&self, position: usize) -> Value {
        json!({"sequence": {"id": self.id, "position": position, "total": self.total}})
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn id_string(id: Option<u64>) -> Value {
    id.map_or(Value::Null, |n| json!(n.to_string()))
}

/// Upper-case status as webhook events carry it (`new` -> `NEW`).
pub(crate) fn upper_status(status: &str) -> String {
    status.to_ascii_uppercase()
}

/// `detail` of a ticket event: the ticket fields the official reference lists.
pub(crate) fn ticket_detail(t: &SimTicket, actor_id: Option<u64>) -> Value {
    let updated = t.comments.last().map_or(t.created_at, |c| c.created_at);
    json!({
        "actor_id": id_string(actor_id.or(Some(t.requester_id))),
        "assignee_id": id_string(t.assignee_id),
        "brand_id": "360000000001",
        "created_at": t.created_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "custom_status": "1",
        "description": t.comments.first().and_then(|c| c.body.clone()),
        "external_id": t.external_id,
        "form_id": "360000000002",
        "group_id": id_string(t.group_id),
        "id": t.id.to_string(),
        "is_public": true,
        "organization_id": null,
        "priority": null,
        "requester_id": t.requester_id.to_string(),
        "status": upper_status(&t.status),
        "subject": t.subject,
        "submitter_id": t.requester_id.to_string(),
        "tags": t.tags,
        "type": null,
        "updated_at": updated.to_rfc3339_opts(SecondsFormat::Secs, true),
        "via": {"channel": t.via_channel},
    })
}

fn envelope(event_type: &str, ticket_id: u64, detail: Value, event: Value) -> Outgoing {
    let event_id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "account_id": ACCOUNT_ID,
        "detail": detail,
        "event": event,
        "id": event_id,
        "subject": format!("zen:ticket:{ticket_id}"),
        "time": now(),
        "type": event_type,
        "zendesk_event_version": "2022-11-06",
    });
    Outgoing {
        event_type: event_type.to_owned(),
        event_id,
        ticket_id,
        body: body.to_string(),
        trigger: false,
    }
}

/// `ticket.status_changed` (`previous`/`current` in lower or upper case).
pub(crate) fn status_changed(
    t: &SimTicket,
    actor_id: Option<u64>,
    previous: &str,
    seq: &Sequence,
    position: usize,
) -> Outgoing {
    let event = json!({
        "current": upper_status(&t.status),
        "previous": upper_status(previous),
        "meta": seq.meta(position),
    });
    envelope(STATUS_CHANGED, t.id, ticket_detail(t, actor_id), event)
}

/// `ticket.agent_assignment_changed`: agent ids as strings, `null` for none.
pub(crate) fn assignment_changed(
    t: &SimTicket,
    actor_id: Option<u64>,
    previous: Option<u64>,
    seq: &Sequence,
    position: usize,
) -> Outgoing {
    let event = json!({
        "current": id_string(t.assignee_id),
        "previous": id_string(previous),
        "meta": seq.meta(position),
    });
    envelope(ASSIGNMENT_CHANGED, t.id, ticket_detail(t, actor_id), event)
}

/// `messaging_ticket.message_added`: `detail` is only the ticket id.
pub(crate) fn message_added(
    ticket_id: u64,
    actor: Actor,
    conversation_id: &str,
    message_id: &str,
    text: &str,
) -> Outgoing {
    let event = json!({
        "actor": {"id": actor.id, "name": actor.name, "type": actor.kind},
        "conversation_id": conversation_id,
        "message": {"id": message_id, "body": text},
    });
    envelope(
        MESSAGE_ADDED,
        ticket_id,
        json!({"id": ticket_id.to_string()}),
        event,
    )
}

/// The session-end trigger's body, byte for byte as the admins' guide has
/// it, trailing comma included (not strict JSON).
pub(crate) fn session_end(ticket_id: u64) -> Outgoing {
    Outgoing {
        event_type: SESSION_END.to_owned(),
        event_id: ticket_id.to_string(),
        ticket_id,
        body: format!(
            "{{\n\"ticket_id\": \"{ticket_id}\",\n\"type\": \"fv:conversation_closed\",\n}}"
        ),
        trigger: true,
    }
}
