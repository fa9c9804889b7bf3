//! Conversation entries, as the stream and the entries list give them
//! (`entryPayload` is JSON inside a JSON string: parsed twice).
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversationEntry {
    pub identifier: String,
    pub sender_role: SenderRole,
    pub sender_display_name: Option<String>,
    pub sender_subject: Option<String>,
    pub transcripted_at_ms: Option<i64>,
    pub kind: EntryKind,
}

impl std::fmt::Debug for ConversationEntry {
    // No text and no names: this reaches logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationEntry")
            .field("identifier", &self.identifier)
            .field("sender_role", &self.sender_role)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SenderRole {
    EndUser,
    Agent,
    Chatbot,
    System,
    Router,
    Supervisor,
    Other(String),
}

impl SenderRole {
    fn parse(s: &str) -> SenderRole {
        match s {
            "EndUser" => SenderRole::EndUser,
            "Agent" => SenderRole::Agent,
            "Chatbot" => SenderRole::Chatbot,
            "System" => SenderRole::System,
            "Router" => SenderRole::Router,
            "Supervisor" => SenderRole::Supervisor,
            other => SenderRole::Other(other.to_string()),
        }
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantChange {
    pub added: bool,
    pub role: SenderRole,
    pub display_name: Option<String>,
    pub subject: Option<String>,
}

impl std::fmt::Debug for ParticipantChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParticipantChange")
            .field("added", &self.added)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub enum EntryKind {
    Message {
        text: String,
        message_id: Option<String>,
    },
    ParticipantChanged(Vec<ParticipantChange>),
    /// `routingType` Transfer; `failureType` other than None.
    RoutingResult {
        transfer: bool,
        failed: bool,
    },
    Typing(bool),
    SessionStatus {
        ended: bool,
        active: bool,
        ended_by: Option<SenderRole>,
    },
    CloseConversation,
    QueuePosition(u32),
    Other(String),
}

impl std::fmt::Debug for EntryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntryKind::Message { .. } => f.write_str("Message"),
            EntryKind::ParticipantChanged(c) => {
                f.debug_tuple("ParticipantChanged").field(c).finish()
            }
            EntryKind::RoutingResult { transfer, failed } => f
                .debug_struct("RoutingResult")
                .field("transfer", transfer)
                .field("failed", failed)
                .finish(),
            EntryKind::Typing(t) => f.debug_tuple("Typing").field(t).finish(),
            EntryKind::SessionStatus { ended, active, .. } => f
                .debug_struct("SessionStatus")
                .field("ended", ended)
                .field("active", active)
                .finish_non_exhaustive(),
            EntryKind::CloseConversation => f.write_str("CloseConversation"),
            EntryKind::QueuePosition(n) => f.debug_tuple("QueuePosition").field(n).finish(),
            EntryKind::Other(t) => f.debug_tuple("Other").field(t).finish(),
        }
    }
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// One entry (`conversationEntry` of a stream event, or an item of the
/// entries list); `None` when it has no identifier.
pub fn parse_entry(v: &Value) -> Option<ConversationEntry> {
    let identifier = str_of(&v["identifier"])?;
    let payload = match &v["entryPayload"] {
        Value::String(s) => serde_json::from_str::<Value>(s).unwrap_or(Value::Null),
        other => other.clone(),
    };
    let entry_type = str_of(&v["entryType"])
        .or_else(|| str_of(&payload["entryType"]))
        .unwrap_or_default();
    let kind = match entry_type.as_str() {
        "Message" => {
            let m = &payload["abstractMessage"];
            EntryKind::Message {
                text: m["staticContent"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                message_id: str_of(&m["id"]).or_else(|| str_of(&payload["id"])),
            }
        }
        "ParticipantChanged" => EntryKind::ParticipantChanged(
            payload["entries"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| ParticipantChange {
                            added: c["operation"].as_str() == Some("add"),
                            role: SenderRole::parse(
                                c["participant"]["role"].as_str().unwrap_or_default(),
                            ),
                            display_name: str_of(&c["displayName"]),
                            subject: str_of(&c["participant"]["subject"]),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        ),
        "RoutingResult" => EntryKind::RoutingResult {
            transfer: payload["routingType"].as_str() == Some("Transfer"),
            failed: !matches!(
                payload["failureType"].as_str(),
                None | Some("None") | Some("")
            ),
        },
        "TypingStartedIndicator" => EntryKind::Typing(true),
        "TypingStoppedIndicator" => EntryKind::Typing(false),
        "SessionStatusChanged" => {
            let status = payload["sessionStatus"].as_str().unwrap_or_default();
            EntryKind::SessionStatus {
                ended: status == "Ended",
                active: status == "Active",
                ended_by: payload["sessionEndedByRole"]
                    .as_str()
                    .map(SenderRole::parse),
            }
        }
        "CloseConversation" => EntryKind::CloseConversation,
        "QueuePosition" => match payload["queuePosition"].as_u64() {
            Some(n) => EntryKind::QueuePosition(u32::try_from(n).unwrap_or(u32::MAX)),
            None => EntryKind::Other(entry_type.clone()),
        },
        _ => EntryKind::Other(entry_type.clone()),
    };
    Some(ConversationEntry {
        identifier,
        sender_role: SenderRole::parse(v["sender"]["role"].as_str().unwrap_or_default()),
        sender_display_name: str_of(&v["senderDisplayName"]),
        sender_subject: str_of(&v["sender"]["subject"]),
        transcripted_at_ms: v["transcriptedTimestamp"].as_i64(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(entry_type: &str, payload: Value, role: &str) -> Value {
        json!({
            "identifier": "e-1", "entryType": entry_type, "senderDisplayName": "Alex Agent",
            "sender": {"role": role, "subject": "005X"},
            "entryPayload": payload.to_string(), "transcriptedTimestamp": 1764662400123i64,
        })
    }

    #[test]
    fn the_payload_inside_a_string_is_parsed_and_debug_shows_no_text() {
        let e = parse_entry(&entry(
            "Message",
            json!({"entryType":"Message","abstractMessage":{"id":"m-1","staticContent":{"formatType":"Text","text":"secret words"}}}),
            "Agent",
        ))
        .unwrap();
        assert_eq!(e.sender_role, SenderRole::Agent);
        assert_eq!(
            e.kind,
            EntryKind::Message {
                text: "secret words".into(),
                message_id: Some("m-1".into())
            }
        );
        let shown = format!("{e:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("Alex"),
            "{shown}"
        );
    }

    #[test]
    fn participants_routing_session_and_queue_entries_are_read() {
        let p = parse_entry(&entry(
            "ParticipantChanged",
            json!({"entries":[{"operation":"remove","participant":{"role":"Agent","subject":"005X"},"displayName":"Alex"}]}),
            "System",
        ))
        .unwrap();
        let EntryKind::ParticipantChanged(c) = p.kind else {
            panic!("{p:?}")
        };
        assert!(!c[0].added && c[0].role == SenderRole::Agent);
        let r = parse_entry(&entry(
            "RoutingResult",
            json!({"routingType":"Initial","failureType":"RoutingError"}),
            "Router",
        ))
        .unwrap();
        assert_eq!(
            r.kind,
            EntryKind::RoutingResult {
                transfer: false,
                failed: true
            }
        );
        let ok = parse_entry(&entry(
            "RoutingResult",
            json!({"routingType":"Transfer","failureType":"None"}),
            "Router",
        ))
        .unwrap();
        assert_eq!(
            ok.kind,
            EntryKind::RoutingResult {
                transfer: true,
                failed: false
            }
        );
        let s = parse_entry(&entry(
            "SessionStatusChanged",
            json!({"sessionStatus":"Ended","sessionEndedByRole":"Agent"}),
            "System",
        ))
        .unwrap();
        assert_eq!(
            s.kind,
            EntryKind::SessionStatus {
                ended: true,
                active: false,
                ended_by: Some(SenderRole::Agent)
            }
        );
        let q = parse_entry(&entry(
            "QueuePosition",
            json!({"queuePosition":3}),
            "System",
        ))
        .unwrap();
        assert_eq!(q.kind, EntryKind::QueuePosition(3));
        let other = parse_entry(&entry("StreamingToken", json!({}), "Chatbot")).unwrap();
        assert_eq!(other.kind, EntryKind::Other("StreamingToken".into()));
        assert!(
            parse_entry(&json!({"entryType":"Message"})).is_none(),
            "no identifier"
        );
    }
}
