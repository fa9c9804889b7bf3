//! Zendesk webhook payloads, typed: the three ticket events the admins'
//! webhook subscribes to, and the session-end trigger body.
//!
//! A body is one event envelope (`{"id","type","subject","detail","event",..}`),
//! a JSON array of them, or the trigger's `{"ticket_id","type":"fv:conversation_closed"}`.
//! Ids may arrive as numbers or strings. Anything else is an [`EventKind::Other`]
//! (acknowledged, counted, ignored): Zendesk adds event types over time.
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Type of the session-end trigger body in the admins' set-up guide.
pub const SESSION_END_TYPE: &str = "fv:conversation_closed";

const MESSAGE_ADDED: &str = "zen:event-type:messaging_ticket.message_added";
const ASSIGNMENT_CHANGED: &str = "zen:event-type:ticket.agent_assignment_changed";
const STATUS_CHANGED: &str = "zen:event-type:ticket.status_changed";

/// One event of a webhook body.
#[derive(Clone, PartialEq)]
pub struct ZendeskEvent {
    /// Zendesk's event id (the dedupe key), or one derived from the trigger body.
    pub id: String,
    /// When it happened at Zendesk (`time`), if given.
    pub time: Option<DateTime<Utc>>,
    /// The ticket it is about.
    pub ticket_id: Option<String>,
    /// The ticket's tags (ticket events carry them in `detail.tags`).
    pub tags: Vec<String>,
    pub kind: EventKind,
}

/// Who wrote a messaging-ticket message (`event.actor.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Agent,
    EndUser,
    System,
    Trigger,
    Other,
}

#[derive(Clone, PartialEq)]
pub enum EventKind {
    MessageAdded {
        /// The Sunshine conversation (`event.conversation_id`).
        conversation_id: Option<String>,
        actor: Actor,
        actor_id: Option<String>,
        actor_name: Option<String>,
        message_id: Option<String>,
        body: String,
    },
    AssignmentChanged {
        /// The assigned agent's user id; `None` when unassigned.
        current: Option<String>,
        /// The agent assigned before, when Zendesk says.
        previous: Option<String>,
    },
    StatusChanged {
        /// Upper case (`SOLVED`, `CLOSED`, ...).
        current: String,
    },
    /// The admins' session-end trigger.
    SessionEnded,
    /// Any other event type (kept by name only).
    Other { event_type: String },
}

impl EventKind {
    /// The event type's short name, for logs and counters.
    pub fn name(&self) -> &str {
        match self {
            EventKind::MessageAdded { .. } => "messaging_ticket.message_added",
            EventKind::AssignmentChanged { .. } => "ticket.agent_assignment_changed",
            EventKind::StatusChanged { .. } => "ticket.status_changed",
            EventKind::SessionEnded => SESSION_END_TYPE,
            EventKind::Other { .. } => "other",
        }
    }
}

// Message text and names stay out of Debug output (it reaches logs).
impl std::fmt::Debug for ZendeskEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZendeskEvent")
            .field("id", &self.id)
            .field("type", &self.kind.name())
            .field("ticket_id", &self.ticket_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The events of a parsed webhook body, in body order.
pub fn events(body: &Value) -> Vec<ZendeskEvent> {
    match body {
        Value::Array(items) => items.iter().filter_map(event).collect(),
        Value::Object(o) => match o.get("events").and_then(Value::as_array) {
            Some(items) => items.iter().filter_map(event).collect(),
            None => event(body).into_iter().collect(),
        },
        _ => Vec::new(),
    }
}

/// An id that may be a string or a number.
fn id_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn str_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_string)
}

fn field<'a>(obj: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    obj.and_then(|x| x.get(key))
}

fn event(v: &Value) -> Option<ZendeskEvent> {
    let o = v.as_object()?;
    let event_type = o.get("type").and_then(Value::as_str).unwrap_or_default();
    if event_type == SESSION_END_TYPE {
        let ticket_id = id_of(o.get("ticket_id"))?;
        return Some(ZendeskEvent {
            id: format!("session-end:{ticket_id}"),
            time: None,
            ticket_id: Some(ticket_id),
            tags: Vec::new(),
            kind: EventKind::SessionEnded,
        });
    }
    let id = id_of(o.get("id"))?;
    let detail = o.get("detail");
    let ev = o.get("event");
    let ticket_id = id_of(field(detail, "id")).or_else(|| {
        o.get("subject")
            .and_then(Value::as_str)
            .and_then(|s| s.strip_prefix("zen:ticket:"))
            .map(str::to_string)
    });
    let tags = field(detail, "tags")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let kind = match event_type {
        MESSAGE_ADDED => {
            let actor = field(ev, "actor");
            EventKind::MessageAdded {
                conversation_id: id_of(field(ev, "conversation_id")),
                actor: match field(actor, "type").and_then(Value::as_str) {
                    Some("agent") => Actor::Agent,
                    Some("end_user") => Actor::EndUser,
                    Some("system") => Actor::System,
                    Some("trigger") => Actor::Trigger,
                    _ => Actor::Other,
                },
                actor_id: id_of(field(actor, "id")),
                actor_name: str_of(field(actor, "name")),
                message_id: id_of(field(field(ev, "message"), "id")),
                body: str_of(field(field(ev, "message"), "body")).unwrap_or_default(),
            }
        }
        ASSIGNMENT_CHANGED => EventKind::AssignmentChanged {
            current: id_of(field(ev, "current")),
            previous: id_of(field(ev, "previous")),
        },
        STATUS_CHANGED => EventKind::StatusChanged {
            current: str_of(field(ev, "current"))
                .unwrap_or_default()
                .to_ascii_uppercase(),
        },
        other => EventKind::Other {
            event_type: other.to_string(),
        },
    };
    Some(ZendeskEvent {
        id,
        time: str_of(o.get("time"))
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc)),
        ticket_id,
        tags,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_message_added_event_names_the_sunshine_conversation_and_the_actor() {
        let body = json!({
            "account_id": 1, "id": "ev-1", "type": MESSAGE_ADDED,
            "subject": "zen:ticket:77", "time": "2026-12-02T10:00:00Z",
            "detail": {"id": "77"},
            "event": {"actor": {"id": 9001, "name": "Alex", "type": "agent"},
                      "conversation_id": "sc-1", "message": {"id": "m1", "body": "Hello"}}
        });
        let evs = events(&body);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].ticket_id.as_deref(), Some("77"));
        match &evs[0].kind {
            EventKind::MessageAdded {
                conversation_id,
                actor,
                actor_id,
                body,
                ..
            } => {
                assert_eq!(conversation_id.as_deref(), Some("sc-1"));
                assert_eq!(*actor, Actor::Agent);
                assert_eq!(actor_id.as_deref(), Some("9001"));
                assert_eq!(body, "Hello");
            }
            other => panic!("{other:?}"),
        }
        // Debug output carries neither the text nor the agent's name.
        let debug = format!("{:?}", evs[0]);
        assert!(
            !debug.contains("Hello") && !debug.contains("Alex"),
            "{debug}"
        );
    }

    #[test]
    fn ticket_events_carry_ids_as_strings_or_numbers_and_the_tags() {
        let body = json!([
            {"id": "a", "type": ASSIGNMENT_CHANGED, "subject": "zen:ticket:5",
             "detail": {"id": 5, "tags": ["x", "esc_1"]}, "event": {"current": null, "previous": "9"}},
            {"id": "b", "type": STATUS_CHANGED, "detail": {"id": "5"},
             "event": {"current": "solved", "previous": "OPEN"}},
            {"id": "c", "type": "zen:event-type:ticket.priority_changed", "detail": {"id": "5"}}
        ]);
        let evs = events(&body);
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[0].tags, vec!["x", "esc_1"]);
        assert_eq!(
            evs[0].kind,
            EventKind::AssignmentChanged {
                current: None,
                previous: Some("9".into())
            }
        );
        assert_eq!(
            evs[1].kind,
            EventKind::StatusChanged {
                current: "SOLVED".into()
            }
        );
        assert!(matches!(evs[2].kind, EventKind::Other { .. }));
    }

    #[test]
    fn the_session_end_trigger_body_is_an_event_of_its_ticket() {
        let v = crate::webhook::parse_lenient(
            b"{\n\"ticket_id\": \"42\",\n\"type\": \"fv:conversation_closed\",\n}",
        )
        .unwrap();
        let evs = events(&v);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].kind, EventKind::SessionEnded);
        assert_eq!(evs[0].ticket_id.as_deref(), Some("42"));
    }

    #[test]
    fn bodies_without_events_yield_none() {
        assert!(events(&json!({"hello": 1})).is_empty());
        assert!(events(&json!("text")).is_empty());
    }
}
