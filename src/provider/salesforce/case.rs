//! Mapping of an escalation to a Case body, of customer messages to
//! CaseComments, and SOQL literals.
//!
//! Lengths are counted in UTF-16 code units, as Salesforce does.
use crate::config::SalesforceConfig;
use crate::contract::CustomerMessage;
use crate::provider::TicketRequest;
use crate::provider::transcript;
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub(super) const SUBJECT_MAX: usize = 255;
pub(super) const DESCRIPTION_MAX: usize = 32_000;
pub(super) const SUPPLIED_EMAIL_MAX: usize = 80;
pub(super) const SUPPLIED_NAME_MAX: usize = 80;
pub(super) const COMMENT_MAX: usize = 4_000;
/// A customer message longer than one CaseComment is split into at most this many.
pub(super) const COMMENT_PARTS_MAX: usize = 10;

/// Case fields the escalator fills itself; `extra_fields` and `context_fields`
/// cannot replace them (the crash lookup depends on them).
pub(super) const RESERVED_FIELDS: &[&str] = &["Subject", "Description"];

/// A Case to create. No `Debug`: it holds customer data.
pub(super) struct CaseBody {
    /// The JSON body (without the External ID field when upserting).
    pub fields: Map<String, Value>,
    /// Value of the `Sforce-Auto-Assign` header, if one is sent.
    pub auto_assign: Option<String>,
    /// `[escalator:{conversation_id}]`, the last line of the Description.
    pub marker: String,
    /// The full transcript, attached as a file when the Description cannot hold it.
    pub attachment: Option<TranscriptFile>,
    /// The event context values copied into `context_fields` (customer data:
    /// redacted from error messages).
    pub context_values: Vec<String>,
}

/// The full transcript as a ContentVersion.
pub(super) struct TranscriptFile {
    pub title: String,
    pub path_on_client: String,
    pub text: String,
}

impl TranscriptFile {
    pub fn content_version(&self, case_id: &str) -> Value {
        json!({
            "Title": self.title,
            "PathOnClient": self.path_on_client,
            "VersionData": base64::engine::general_purpose::STANDARD.encode(self.text.as_bytes()),
            "FirstPublishLocationId": case_id,
        })
    }
}

pub(super) fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `s` of at most `max` UTF-16 units, on a char boundary.
pub(super) fn prefix_utf16(s: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &s[..i];
        }
    }
    s
}

/// Cut to `max` UTF-16 units, ending with '…' when cut.
fn cut_utf16(s: &str, max: usize) -> String {
    if utf16_len(s) <= max {
        return s.to_string();
    }
    let mut out = prefix_utf16(s, max.saturating_sub(1)).to_string();
    out.push('…');
    out
}

/// `[escalator:{conversation_id}]`
pub(super) fn marker(conversation_id: &str) -> String {
    format!("[escalator:{conversation_id}]")
}

/// A file name safe on every client: the conversation id with odd characters replaced.
fn file_name(conversation_id: &str) -> String {
    let safe: String = conversation_id
        .chars()
        .take(100)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("transcript-{safe}.txt")
}

/// TOML constants of `extra_fields` as JSON (datetimes as their text).
fn toml_to_json(v: &toml::Value) -> Value {
    match v {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        toml::Value::Datetime(d) => json!(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// An event context value as a Case field value; None for null.
fn context_value(v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Some(v.clone()),
        other => Some(json!(other.to_string())),
    }
}

pub(super) fn is_reserved(field: &str) -> bool {
    RESERVED_FIELDS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(field))
}

/// Set `field`, replacing a key that differs only in case.
fn set(fields: &mut Map<String, Value>, field: &str, value: Value) {
    fields.retain(|k, _| !k.eq_ignore_ascii_case(field));
    fields.insert(field.to_string(), value);
}

/// One line, no control characters (so the stored Subject is exactly what we sent).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl CaseBody {
    /// The Case of an escalation. `upsert_field` (the External ID field) is
    /// kept out of the body: it goes in the URL.
    pub fn build(
        config: &SalesforceConfig,
        req: TicketRequest<'_>,
        upsert_field: Option<&str>,
    ) -> CaseBody {
        let e = req.escalation;
        let mut fields = Map::new();
        let subject = cut_utf16(&one_line(&transcript::subject(e, SUBJECT_MAX)), SUBJECT_MAX);
        fields.insert("Subject".into(), json!(subject));

        let marker = marker(&e.conversation_id);
        let plain = transcript::plain(e, req.fallback_reason);
        let tail = format!("\n\n{marker}");
        let (description, attachment) = if utf16_len(&plain) + utf16_len(&tail) <= DESCRIPTION_MAX {
            (format!("{plain}{tail}"), None)
        } else {
            let path_on_client = file_name(&e.conversation_id);
            let note = format!(
                "\n\n[Transcript cut here: the full transcript is attached to this case as {path_on_client}.]"
            );
            let keep = DESCRIPTION_MAX.saturating_sub(utf16_len(&note) + utf16_len(&tail));
            let description = format!("{}{note}{tail}", prefix_utf16(&plain, keep));
            let file = TranscriptFile {
                title: format!("Chat transcript {}", prefix_utf16(&e.conversation_id, 200)),
                path_on_client,
                text: plain,
            };
            (description, Some(file))
        };
        // Absurdly long conversation ids only: never exceed the field.
        let description = prefix_utf16(&description, DESCRIPTION_MAX).to_string();
        fields.insert("Description".into(), json!(description));

        if let Some(name) = e
            .customer
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            fields.insert(
                "SuppliedName".into(),
                json!(cut_utf16(&one_line(name), SUPPLIED_NAME_MAX)),
            );
        }
        if let Some(email) = e
            .customer
            .email
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            if utf16_len(email) <= SUPPLIED_EMAIL_MAX {
                fields.insert("SuppliedEmail".into(), json!(email));
            } else {
                tracing::debug!(conversation_id = %e.conversation_id, "customer email longer than SuppliedEmail allows: omitted");
            }
        }
        let from_config = [
            ("Origin", &config.origin),
            ("Status", &config.status),
            ("Priority", &config.priority),
            ("RecordTypeId", &config.record_type_id),
            ("OwnerId", &config.owner_id),
        ];
        for (field, value) in from_config {
            if let Some(v) = value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                fields.insert(field.into(), json!(v));
            }
        }
        for (field, value) in &config.extra_fields {
            if !is_reserved(field) {
                set(&mut fields, field, toml_to_json(value));
            }
        }
        let mut context_values = Vec::new();
        for (field, key) in &config.context_fields {
            if is_reserved(field) {
                continue;
            }
            if let Some(v) = e.context.get(key).and_then(context_value) {
                context_values.push(match &v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                set(&mut fields, field, v);
            }
        }
        if let Some(f) = upsert_field {
            fields.retain(|k, _| !k.eq_ignore_ascii_case(f));
        }

        let owner = config
            .owner_id
            .as_deref()
            .is_some_and(|o| !o.trim().is_empty());
        let auto_assign = if owner {
            Some("FALSE".to_string())
        } else {
            config
                .assignment_rule_id
                .as_deref()
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
        };
        CaseBody {
            fields,
            auto_assign,
            marker,
            attachment,
            context_values,
        }
    }

    pub fn subject(&self) -> &str {
        self.fields
            .get("Subject")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    pub fn supplied_email(&self) -> Option<&str> {
        self.fields.get("SuppliedEmail").and_then(Value::as_str)
    }

    /// Customer values that must not show in error messages: the
    /// customer's name and email, the subject, and the context values.
    pub fn sensitive(&self) -> Vec<&str> {
        ["SuppliedName", "SuppliedEmail", "Subject"]
            .iter()
            .filter_map(|f| self.fields.get(*f).and_then(Value::as_str))
            .chain(self.context_values.iter().map(String::as_str))
            .collect()
    }

    /// Whether a Case's Description (as stored) carries this body's marker.
    pub fn is_marked(&self, description: Option<&str>) -> bool {
        description.is_some_and(|d| d.trim_end().ends_with(&self.marker))
    }
}

/// The CaseComment bodies of a customer message: one when it fits, else
/// parts of at most [`COMMENT_MAX`] units each. Every body starts with a
/// header naming the time and a short reference of the message id, so that
/// two messages with the same text never look alike.
pub(super) fn comment_parts(msg: &CustomerMessage) -> Vec<String> {
    let digest = Sha256::digest(msg.message_id.as_bytes());
    let reference = hex::encode(&digest[..5]);
    let header = format!(
        "Customer message, {} (ref {reference})",
        msg.sent_at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let single = format!("{header}\n\n{}", msg.text);
    if utf16_len(&single) <= COMMENT_MAX {
        return vec![single];
    }
    // ", part 10/10" plus the blank line.
    let room = COMMENT_MAX.saturating_sub(utf16_len(&header) + 16).max(1);
    let mut chunks: Vec<&str> = Vec::new();
    let mut rest = msg.text.as_str();
    while !rest.is_empty() {
        let mut chunk = prefix_utf16(rest, room);
        if chunk.is_empty() {
            // A single char wider than `room` (cannot happen with sane sizes).
            chunk = rest.chars().next().map_or(rest, |c| &rest[..c.len_utf8()]);
        }
        chunks.push(chunk);
        rest = &rest[chunk.len()..];
    }
    let truncated = chunks.len() > COMMENT_PARTS_MAX;
    chunks.truncate(COMMENT_PARTS_MAX);
    let n = chunks.len();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut chunk = chunk.to_string();
            if truncated && i + 1 == n {
                let note = "\n[message truncated]";
                chunk = format!(
                    "{}{note}",
                    prefix_utf16(&chunk, room.saturating_sub(utf16_len(note)))
                );
            }
            format!("{header}, part {}/{n}\n\n{chunk}", i + 1)
        })
        .collect()
}

/// Normalise a comment body for comparison (Salesforce may store CRLF).
pub(super) fn same_comment(stored: &str, ours: &str) -> bool {
    stored.replace("\r\n", "\n").trim() == ours.replace("\r\n", "\n").trim()
}

/// A SOQL string literal, quoted and escaped.
pub(super) fn soql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A Salesforce record id: 15 or 18 letters and digits.
pub(super) fn is_record_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// An API name (field or object): letters, digits and underscores.
pub(super) fn is_api_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OrgConfig;
    use crate::contract::{
        Customer, EscalationRequested, Mode, ProviderKind, Role, TranscriptEntry,
    };
    use crate::secret::Secret;
    use chrono::Utc;
    use std::collections::BTreeMap;

    fn config() -> SalesforceConfig {
        SalesforceConfig {
            my_domain: "acme.my.salesforce.com".into(),
            client_id: "id".into(),
            client_secret: Secret::new("secret"),
            api_version: "v62.0".into(),
            origin: Some("Chat".into()),
            status: Some("New".into()),
            priority: None,
            record_type_id: None,
            owner_id: None,
            assignment_rule_id: Some("01Q000000000001".into()),
            context_fields: BTreeMap::from([
                ("Plan__c".to_string(), "plan".to_string()),
                ("Subject".to_string(), "plan".to_string()),
                ("Missing__c".to_string(), "missing".to_string()),
            ]),
            extra_fields: BTreeMap::from([
                ("Type".to_string(), toml::Value::String("Question".into())),
                ("Conv__c".to_string(), toml::Value::String("x".into())),
            ]),
            external_id_field: None,
            limit_backoff_secs: 300,
            token_auth_basic: false,
            live: None,
        }
    }

    fn org(c: SalesforceConfig) -> OrgConfig {
        OrgConfig {
            org_id: "acme".into(),
            provider: ProviderKind::Salesforce,
            live_chat: true,
            zendesk: None,
            salesforce: Some(c),
        }
    }

    fn event(text_len: usize, email: &str) -> EscalationRequested {
        EscalationRequested {
            org_id: "acme".into(),
            conversation_id: "conv-1".into(),
            mode: Mode::Ticket,
            provider: None,
            customer: Customer {
                id: "c1".into(),
                name: Some("Ada".into()),
                email: Some(email.into()),
            },
            subject: Some("Line one\nline two".into()),
            summary: None,
            transcript: vec![TranscriptEntry {
                role: Role::Customer,
                text: "x".repeat(text_len),
                sent_at: Utc::now(),
            }],
            context: BTreeMap::from([("plan".to_string(), json!("gold"))]),
            assignment: None,
            requested_at: Utc::now(),
        }
    }

    #[test]
    fn maps_fields() {
        let c = config();
        let o = org(c.clone());
        let e = event(10, "ada@example.com");
        let req = TicketRequest {
            org: &o,
            escalation: &e,
            fallback_reason: None,
        };
        let b = CaseBody::build(&c, req, Some("conv__c"));
        assert_eq!(b.subject(), "Line one line two");
        assert_eq!(b.fields["Plan__c"], "gold");
        assert_eq!(b.fields["Type"], "Question");
        assert_eq!(b.fields["Origin"], "Chat");
        assert!(!b.fields.contains_key("Missing__c"));
        assert!(
            !b.fields.contains_key("Conv__c"),
            "the upsert field stays in the URL"
        );
        assert_eq!(b.auto_assign.as_deref(), Some("01Q000000000001"));
        assert!(b.is_marked(b.fields["Description"].as_str()));
        assert!(b.attachment.is_none());
        assert_eq!(b.supplied_email(), Some("ada@example.com"));
        assert!(
            b.sensitive().contains(&"gold"),
            "context values are redacted from errors"
        );
    }

    #[test]
    fn long_transcripts_are_cut_and_attached() {
        let c = config();
        let o = org(c.clone());
        let long_email = format!("{}@example.com", "a".repeat(80));
        let e = event(40_000, &long_email);
        let req = TicketRequest {
            org: &o,
            escalation: &e,
            fallback_reason: None,
        };
        let b = CaseBody::build(&c, req, None);
        let d = b.fields["Description"].as_str().unwrap();
        assert!(utf16_len(d) <= DESCRIPTION_MAX);
        assert!(b.is_marked(Some(d)));
        let file = b.attachment.as_ref().unwrap();
        assert!(file.text.contains(&"x".repeat(40_000)));
        assert_eq!(file.path_on_client, "transcript-conv-1.txt");
        assert!(b.supplied_email().is_none());
    }

    #[test]
    fn owner_switches_assignment_off() {
        let mut c = config();
        c.owner_id = Some("005000000000001".into());
        let o = org(c.clone());
        let e = event(1, "a@b.c");
        let b = CaseBody::build(
            &c,
            TicketRequest {
                org: &o,
                escalation: &e,
                fallback_reason: None,
            },
            None,
        );
        assert_eq!(b.auto_assign.as_deref(), Some("FALSE"));
        c.owner_id = None;
        c.assignment_rule_id = None;
        let b = CaseBody::build(
            &c,
            TicketRequest {
                org: &o,
                escalation: &e,
                fallback_reason: None,
            },
            None,
        );
        assert!(b.auto_assign.is_none());
    }

    fn message(text: String, id: &str) -> CustomerMessage {
        CustomerMessage {
            org_id: "acme".into(),
            conversation_id: "conv-1".into(),
            message_id: id.into(),
            text,
            sent_at: Utc::now(),
        }
    }

    #[test]
    fn splits_long_comments() {
        let short = comment_parts(&message("hello".into(), "m1"));
        assert_eq!(short.len(), 1);
        assert!(short[0].ends_with("hello"));
        assert_ne!(
            short,
            comment_parts(&message("hello".into(), "m2")),
            "ids make bodies distinct"
        );
        let parts = comment_parts(&message("é".repeat(9_000), "m1"));
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| utf16_len(p) <= COMMENT_MAX));
        assert!(parts[2].contains("part 3/3"));
        let huge = comment_parts(&message("y".repeat(100_000), "m1"));
        assert_eq!(huge.len(), COMMENT_PARTS_MAX);
        assert!(huge.iter().all(|p| utf16_len(p) <= COMMENT_MAX));
        assert!(huge[COMMENT_PARTS_MAX - 1].contains("[message truncated]"));
    }

    #[test]
    fn cuts_on_utf16_units() {
        assert_eq!(prefix_utf16("a😀b", 2), "a");
        assert_eq!(prefix_utf16("a😀b", 3), "a😀");
        assert_eq!(cut_utf16("abcdef", 4), "abc…");
    }

    #[test]
    fn escapes_soql() {
        assert_eq!(soql_string("a'b\\c\nd"), "'a\\'b\\\\c\\nd'");
        assert!(is_record_id("500000000000001AAA"));
        assert!(!is_record_id("500' OR Id != '"));
        assert!(is_api_name("Conv__c"));
        assert!(!is_api_name("Conv__c = 'x' OR Id"));
    }
}
