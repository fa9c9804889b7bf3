//! The JSON Schemas in `schemas/` and the Rust types in `src/contract.rs`
//! describe the same contract: examples validate and round-trip, invalid
//! examples fail with a useful reason, and every Rust payload validates.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use escalator::contract::{
    AgentJoined, AgentLeft, AgentMessage, AgentTyping, Assignment, ClosedBy, ConversationClosed,
    Customer, CustomerEnded, CustomerMessage, CustomerTyping, EscalationCreated, EscalationFailed,
    EscalationQueued, EscalationRequested, ExternalKind, FailureCode, InboundEvent, InboundKind,
    Mode, OutboundEvent, OutboundPayload, ProviderKind, Role, TicketRef, TranscriptEntry, Webhook,
};
use escalator::error::ErrorClass;
use escalator::schema::Schemas;
use serde_json::{Value, json};

fn examples(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas/examples")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_str().unwrap().to_owned()
}

fn read(path: &Path) -> (Vec<u8>, Value) {
    let bytes = std::fs::read(path).unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
    (bytes, value)
}

fn inbound_to_value(event: &InboundEvent) -> Value {
    match event {
        InboundEvent::EscalationRequested(e) => serde_json::to_value(e),
        InboundEvent::CustomerMessage(e) => serde_json::to_value(e),
        InboundEvent::CustomerTyping(e) => serde_json::to_value(e),
        InboundEvent::CustomerEnded(e) => serde_json::to_value(e),
        InboundEvent::WebhookZendesk(e) | InboundEvent::WebhookSunshine(e) => {
            serde_json::to_value(e)
        }
        InboundEvent::SalesforceStream(e) => serde_json::to_value(e),
    }
    .unwrap()
}

const OUTBOUND_TYPES: [&str; 8] = [
    "escalation.created",
    "escalation.failed",
    "escalation.queued",
    "agent.joined",
    "agent.message",
    "agent.typing",
    "agent.left",
    "conversation.closed",
];

// (a)
#[test]
fn inbound_examples_validate_and_round_trip() {
    let schemas = Schemas::load().unwrap();
    let files = examples("inbound");
    let mut seen = Vec::new();
    for path in &files {
        let name = stem(path);
        let kind = InboundKind::from_routing_key(&name)
            .unwrap_or_else(|| panic!("{}: not named after a routing key", path.display()));
        let (bytes, value) = read(path);
        if let Err(reason) = schemas.validate_inbound(kind, &value) {
            panic!("{name}: {reason}");
        }
        let event = InboundEvent::parse(kind, &bytes)
            .unwrap_or_else(|e| panic!("{name}: does not parse: {e}"));
        assert_eq!(event.kind(), kind);
        assert_eq!(
            inbound_to_value(&event),
            value,
            "{name}: round trip differs"
        );
        seen.push(kind);
    }
    for kind in InboundKind::ALL {
        assert!(
            seen.contains(&kind),
            "no example for {}",
            kind.routing_key()
        );
    }
}

// (b)
#[test]
fn outbound_examples_validate_and_round_trip() {
    let schemas = Schemas::load().unwrap();
    let mut seen = Vec::new();
    for path in examples("outbound") {
        let name = stem(&path);
        let (bytes, value) = read(&path);
        if let Err(reason) = schemas.validate_outbound(&value) {
            panic!("{name}: {reason}");
        }
        let event: OutboundEvent = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{name}: does not parse: {e}"));
        assert_eq!(
            event.payload.event_type(),
            name,
            "file named after its type"
        );
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            value,
            "{name}: round trip differs"
        );
        seen.push(name);
    }
    for t in OUTBOUND_TYPES {
        assert!(seen.iter().any(|s| s == t), "no example for {t}");
    }
}

/// Invalid example -> a path its reason must name.
const INVALID: [(&str, &str); 9] = [
    (
        "missing-conversation-id.customer.message",
        "/conversation_id",
    ),
    ("bad-mode.escalation.requested", "/mode"),
    ("bad-org-id.customer.typing", "/org_id"),
    ("unknown-role.escalation.requested", "/transcript/1/role"),
    ("bad-sent-at.customer.message", "/sent_at"),
    ("bad-closed-by.outbound", "/data/closed_by"),
    ("seq-zero.outbound", "/seq"),
    ("too-many-context-keys.escalation.requested", "/context"),
    ("unknown-code.outbound", "/data/code"),
];

// (c)
#[test]
fn invalid_examples_fail_naming_the_path() {
    let schemas = Schemas::load().unwrap();
    let files = examples("invalid");
    assert_eq!(
        files.len(),
        INVALID.len(),
        "list every invalid example in INVALID"
    );
    for path in files {
        let name = stem(&path);
        let (_, value) = read(&path);
        let (_, expected_path) = INVALID
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name}: not listed in INVALID"));
        let result = match name.split_once('.').map(|(_, target)| target) {
            Some("outbound") => schemas.validate_outbound(&value),
            Some(key) => {
                let kind = InboundKind::from_routing_key(key)
                    .unwrap_or_else(|| panic!("{name}: unknown routing key {key}"));
                schemas.validate_inbound(kind, &value)
            }
            None => panic!("{name}: expected <name>.<routing key>.json"),
        };
        let reason = match result {
            Ok(()) => panic!("{name}: validated but must not"),
            Err(reason) => reason,
        };
        assert!(
            reason.starts_with(&format!("{expected_path}: ")),
            "{name}: reason {reason:?} should start with {expected_path}"
        );
        assert_eq!(
            reason.matches("; ").count(),
            0,
            "{name}: one defect only, got {reason:?}"
        );
    }
}

#[test]
fn invalid_example_reasons_read_well() {
    let schemas = Schemas::load().unwrap();
    let body = json!({
        "org_id": "acme", "conversation_id": "c1", "mode": "ticket",
        "customer": {"id": "u1"},
        "transcript": [{"role": "bot", "text": "hi", "sent_at": "2026-11-21T10:00:00Z"}],
        "requested_at": "2026-11-21T10:00:00Z"
    });
    let reason = schemas
        .validate_inbound(InboundKind::EscalationRequested, &body)
        .unwrap_err();
    assert_eq!(
        reason,
        r#"/transcript/0/role: value is not one of "customer", "ai" or "agent""#
    );
}

fn at(secs: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_795_255_200 + secs, 0).unwrap()
}

fn outbound(seq: u64, payload: OutboundPayload) -> OutboundEvent {
    OutboundEvent {
        event_id: uuid::Uuid::new_v4(),
        org_id: "acme-shop".into(),
        conversation_id: "conv:42".into(),
        seq,
        occurred_at: at(seq as i64),
        provider: ProviderKind::Salesforce,
        payload,
    }
}

// (d)
#[test]
fn every_rust_outbound_payload_validates() {
    let schemas = Schemas::load().unwrap();
    let payloads = vec![
        // All optional fields set, then none.
        OutboundPayload::EscalationCreated(EscalationCreated {
            mode: Mode::Ticket,
            external_kind: ExternalKind::SalesforceCase,
            external_id: "500Hn00001XyZabIAF".into(),
            external_number: Some("00001042".into()),
            url: "https://globex.my.salesforce.com/lightning/r/Case/500Hn00001XyZabIAF/view".into(),
            fallback_reason: Some(escalator::contract::FallbackReason::NoAgentOnline),
        }),
        OutboundPayload::EscalationCreated(EscalationCreated {
            mode: Mode::Live,
            external_kind: ExternalKind::SunshineConversation,
            external_id: "c3d4e5f6a7b8c9d0e1f2a3b4".into(),
            external_number: None,
            url: "http://127.0.0.1:8099/agent/tickets/12".into(),
            fallback_reason: None,
        }),
        OutboundPayload::EscalationCreated(EscalationCreated {
            mode: Mode::Live,
            external_kind: ExternalKind::SalesforceMessaging,
            external_id: "0Mw5g000000XyzA".into(),
            external_number: None,
            url: "https://globex.my.salesforce.com/0Mw5g000000XyzA".into(),
            fallback_reason: None,
        }),
        OutboundPayload::EscalationCreated(EscalationCreated {
            mode: Mode::Ticket,
            external_kind: ExternalKind::ZendeskTicket,
            external_id: "4711".into(),
            external_number: None,
            url: "https://acme.zendesk.com/agent/tickets/4711".into(),
            fallback_reason: None,
        }),
        OutboundPayload::EscalationFailed(EscalationFailed {
            reason: "could not create the case".into(),
            code: FailureCode::ProviderRejected,
            error_class: ErrorClass::Permanent,
            failed_event: InboundKind::EscalationRequested.routing_key().into(),
        }),
        OutboundPayload::EscalationFailed(EscalationFailed {
            reason: "the provider is unavailable".into(),
            code: FailureCode::ProviderUnavailable,
            error_class: ErrorClass::Transient,
            failed_event: InboundKind::CustomerMessage.routing_key().into(),
        }),
        OutboundPayload::EscalationQueued(EscalationQueued { position: Some(0) }),
        OutboundPayload::EscalationQueued(EscalationQueued {
            position: Some(u32::MAX),
        }),
        OutboundPayload::EscalationQueued(EscalationQueued::default()),
        OutboundPayload::AgentJoined(AgentJoined {
            display_name: "Jonas W.".into(),
            ticket: Some(TicketRef {
                id: "123".into(),
                url: "https://acme.zendesk.com/agent/tickets/123".into(),
            }),
        }),
        OutboundPayload::AgentMessage(AgentMessage {
            text: "Hello".into(),
            display_name: Some("Jonas W.".into()),
            ticket: None,
        }),
        OutboundPayload::AgentMessage(AgentMessage {
            text: String::new(),
            display_name: None,
            ticket: None,
        }),
        OutboundPayload::AgentTyping(AgentTyping { typing: false }),
        OutboundPayload::AgentLeft(AgentLeft {
            display_name: Some("Jonas W.".into()),
            ticket: None,
        }),
        OutboundPayload::AgentLeft(AgentLeft {
            display_name: None,
            ticket: None,
        }),
        OutboundPayload::ConversationClosed(ConversationClosed {
            closed_by: ClosedBy::Agent,
            ticket: None,
        }),
        OutboundPayload::ConversationClosed(ConversationClosed {
            closed_by: ClosedBy::Customer,
            ticket: None,
        }),
        OutboundPayload::ConversationClosed(ConversationClosed {
            closed_by: ClosedBy::System,
            ticket: None,
        }),
    ];
    let mut types = Vec::new();
    for (i, payload) in payloads.into_iter().enumerate() {
        let event = outbound(i as u64 + 1, payload);
        let value = serde_json::to_value(&event).unwrap();
        if let Err(reason) = schemas.validate_outbound(&value) {
            panic!("{}: {reason}\n{value:#}", event.payload.event_type());
        }
        let back: OutboundEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, event);
        types.push(event.payload.event_type());
    }
    for t in OUTBOUND_TYPES {
        assert!(types.contains(&t), "no Rust payload for {t}");
    }
    // Every failed_event and every code the Rust side can name is allowed,
    // and the schema documents each code.
    let schema: Value = serde_json::from_str(Schemas::outbound_schema_text()).unwrap();
    let code_doc = schema["$defs"]["escalation_failed"]["properties"]["code"]["description"]
        .as_str()
        .unwrap();
    for kind in InboundKind::ALL {
        for code in FailureCode::ALL {
            let event = outbound(
                1,
                OutboundPayload::EscalationFailed(EscalationFailed {
                    reason: "x".into(),
                    code,
                    error_class: ErrorClass::Permanent,
                    failed_event: kind.routing_key().into(),
                }),
            );
            let value = serde_json::to_value(&event).unwrap();
            assert_eq!(
                schemas.validate_outbound(&value),
                Ok(()),
                "{kind:?} {code:?}"
            );
            let name = value["data"]["code"].as_str().unwrap().to_string();
            assert!(
                code_doc.contains(&format!("'{name}': ")),
                "{name} is not described"
            );
        }
    }
    let mut no_code = serde_json::to_value(outbound(
        1,
        OutboundPayload::EscalationFailed(EscalationFailed {
            reason: "x".into(),
            code: FailureCode::InvalidRequest,
            error_class: ErrorClass::Permanent,
            failed_event: "customer.message".into(),
        }),
    ))
    .unwrap();
    no_code["data"].as_object_mut().unwrap().remove("code");
    let reason = schemas.validate_outbound(&no_code).unwrap_err();
    assert!(reason.contains("/data/code: is required"), "{reason}");
}

/// `context` is bounded: keys, key length, string values, and total size.
#[test]
fn inbound_context_is_bounded() {
    let schemas = Schemas::load().unwrap();
    let with_context = |context: Value| {
        json!({
            "org_id": "acme", "conversation_id": "c1", "mode": "ticket",
            "customer": {"id": "u1"}, "requested_at": "2026-11-21T10:00:00Z",
            "context": context
        })
    };
    let check = |context: Value| {
        schemas.validate_inbound(InboundKind::EscalationRequested, &with_context(context))
    };
    let keys = |n: usize, value: Value| {
        Value::Object((0..n).map(|i| (format!("k{i}"), value.clone())).collect())
    };
    assert_eq!(check(keys(50, json!("v"))), Ok(()), "50 keys are fine");
    let err = check(keys(51, json!("v"))).unwrap_err();
    assert!(err.starts_with("/context: "), "{err}");
    let err = check(json!({ "k".repeat(129): 1 })).unwrap_err();
    assert!(
        err.contains("/context: a property name is invalid"),
        "{err}"
    );
    assert!(!err.contains("kkkk"), "the key itself is data: {err}");
    assert_eq!(check(json!({"page": "p".repeat(4096)})), Ok(()));
    let err = check(json!({"page": format!("SECRET{}", "p".repeat(4096))})).unwrap_err();
    assert!(err.starts_with("/context/page: "), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
    // Values within their caps, nested or not, but 5 MB in all (the issue's case).
    let err = check(json!({"blob": vec!["x".repeat(4000); 1300]})).unwrap_err();
    assert!(err.starts_with("/context: is 52"), "{err}");
    assert!(err.contains("more than the 16384 allowed"), "{err}");
    assert_eq!(
        check(json!({"nested": {"a": [1, 2, 3]}, "plan": "pro"})),
        Ok(())
    );
}

/// The same check for inbound: Rust-built events, with and without their
/// optional fields, validate against their schema.
#[test]
fn every_rust_inbound_event_validates() {
    let schemas = Schemas::load().unwrap();
    let full = EscalationRequested {
        org_id: "acme".into(),
        conversation_id: "c-1".into(),
        mode: Mode::Live,
        provider: Some(ProviderKind::Salesforce),
        customer: Customer {
            id: "u1".into(),
            name: Some("Ann".into()),
            email: Some("not an address".into()),
        },
        subject: Some("Help".into()),
        summary: Some("Needs help".into()),
        transcript: vec![
            TranscriptEntry {
                role: Role::Customer,
                text: "hi".into(),
                sent_at: at(0),
            },
            TranscriptEntry {
                role: Role::Ai,
                text: String::new(),
                sent_at: at(1),
            },
            TranscriptEntry {
                role: Role::Agent,
                text: "hello".into(),
                sent_at: at(2),
            },
        ],
        context: BTreeMap::from([
            ("plan".to_owned(), json!("pro")),
            ("seats".to_owned(), json!(12)),
            ("flags".to_owned(), json!({"beta": true, "list": [1, null]})),
        ]),
        assignment: Some(Assignment {
            assignee_id: Some(1),
            group_id: Some(9_007_199_254_740_991),
            tags: Some(vec!["vip".into(), "lang:es".into()]),
        }),
        requested_at: at(3),
    };
    let minimal = EscalationRequested {
        provider: None,
        customer: Customer {
            id: "u1".into(),
            name: None,
            email: None,
        },
        subject: None,
        summary: None,
        transcript: Vec::new(),
        context: BTreeMap::new(),
        assignment: Some(Assignment::default()),
        ..full.clone()
    };
    let no_assignment = EscalationRequested {
        assignment: None,
        ..minimal.clone()
    };
    let webhook = Webhook {
        org_id: "acme".into(),
        received_at: at(4),
        headers: BTreeMap::from([("content-type".to_owned(), "application/json".to_owned())]),
        body: "{not json".into(),
    };
    let events = vec![
        InboundEvent::EscalationRequested(full),
        InboundEvent::EscalationRequested(minimal),
        InboundEvent::EscalationRequested(no_assignment),
        InboundEvent::CustomerMessage(CustomerMessage {
            org_id: "acme".into(),
            conversation_id: "c-1".into(),
            message_id: "m1".into(),
            text: "x".repeat(65536),
            sent_at: at(5),
        }),
        InboundEvent::CustomerTyping(CustomerTyping {
            org_id: "acme".into(),
            conversation_id: "c-1".into(),
            typing: false,
            sent_at: at(6),
        }),
        InboundEvent::CustomerEnded(CustomerEnded {
            org_id: "acme".into(),
            conversation_id: "c-1".into(),
            ended_at: at(7),
        }),
        InboundEvent::WebhookZendesk(webhook.clone()),
        InboundEvent::WebhookSunshine(Webhook {
            headers: BTreeMap::new(),
            ..webhook
        }),
    ];
    for event in events {
        let value = inbound_to_value(&event);
        if let Err(reason) = schemas.validate_inbound(event.kind(), &value) {
            panic!("{:?}: {reason}\n{value:#}", event.kind());
        }
        let bytes = serde_json::to_vec(&value).unwrap();
        assert_eq!(InboundEvent::parse(event.kind(), &bytes).unwrap(), event);
    }
}

/// Optional inbound fields may be null (serde reads null as None).
#[test]
fn inbound_optional_fields_may_be_null() {
    let schemas = Schemas::load().unwrap();
    let body = json!({
        "org_id": "acme", "conversation_id": "c1", "mode": "ticket", "provider": null,
        "customer": {"id": "u1", "name": null, "email": null},
        "subject": null, "summary": null,
        "assignment": {"assignee_id": null, "group_id": null, "tags": null},
        "requested_at": "2026-11-21T10:00:00+01:00",
        "future_field": {"anything": 1}
    });
    assert_eq!(
        schemas.validate_inbound(InboundKind::EscalationRequested, &body),
        Ok(())
    );
    let bytes = serde_json::to_vec(&body).unwrap();
    InboundEvent::parse(InboundKind::EscalationRequested, &bytes).unwrap();
}

// (e)
#[test]
fn reasons_never_contain_customer_text() {
    let schemas = Schemas::load().unwrap();
    let secret = "SECRET-CUSTOMER-TEXT 4242 maria@example.com";
    let long = format!("{secret} {}", "y".repeat(65536));
    let message = |text: Value| {
        json!({
            "org_id": "acme", "conversation_id": "c1", "message_id": "m1",
            "text": text, "sent_at": "2026-11-21T10:00:00Z"
        })
    };
    let cases = [
        (InboundKind::CustomerMessage, message(json!(long)), "/text"),
        (
            InboundKind::CustomerMessage,
            message(json!({"quoted": secret})),
            "/text",
        ),
        (
            InboundKind::CustomerMessage,
            message(json!([secret])),
            "/text",
        ),
        (
            InboundKind::EscalationRequested,
            json!({
                "org_id": "acme", "conversation_id": "c1", "mode": "ticket",
                "customer": {"id": "u1", "name": 7, "email": format!("{secret}{}", "z".repeat(300))},
                "transcript": [{"role": "customer", "text": format!("{secret}{}", "t".repeat(40000)), "sent_at": "2026-11-21T10:00:00Z"}],
                "requested_at": "2026-11-21T10:00:00Z"
            }),
            "/customer/email",
        ),
        (
            InboundKind::WebhookZendesk,
            json!({"org_id": "acme", "received_at": secret, "headers": {"x-a": 1}, "body": {"text": secret}}),
            "/body",
        ),
    ];
    for (kind, body, path) in cases {
        let reason = schemas.validate_inbound(kind, &body).unwrap_err();
        assert!(reason.contains(path), "{reason}");
        assert!(!reason.contains("SECRET"), "leaks data: {reason}");
        assert!(!reason.contains("4242"), "leaks data: {reason}");
        assert!(reason.len() < 600, "reason too long: {reason}");
    }
    // The same for an outbound event built from agent text.
    let event = json!({
        "event_id": "2f1c5a0e-8d4b-4c63-9a57-0b3e6f2d1c84", "type": "agent.message",
        "org_id": "acme", "conversation_id": "c1", "seq": 1,
        "occurred_at": "2026-11-21T10:00:00Z", "provider": "zendesk",
        "data": {"text": [secret]}
    });
    let reason = schemas.validate_outbound(&event).unwrap_err();
    assert!(reason.contains("/data/text"), "{reason}");
    assert!(!reason.contains("SECRET"), "leaks data: {reason}");
}

#[test]
fn outbound_data_must_match_its_type() {
    let schemas = Schemas::load().unwrap();
    // agent.message data under an agent.typing type.
    let event = json!({
        "event_id": "2f1c5a0e-8d4b-4c63-9a57-0b3e6f2d1c84", "type": "agent.typing",
        "org_id": "acme", "conversation_id": "c1", "seq": 1,
        "occurred_at": "2026-11-21T10:00:00Z", "provider": "zendesk",
        "data": {"text": "hello"}
    });
    let reason = schemas.validate_outbound(&event).unwrap_err();
    assert!(reason.contains("/data/typing: is required"), "{reason}");
    let mut unknown = event.clone();
    unknown["type"] = json!("agent.waved");
    unknown["data"] = json!({});
    let reason = schemas.validate_outbound(&unknown).unwrap_err();
    assert!(reason.starts_with("/type: "), "{reason}");
}
