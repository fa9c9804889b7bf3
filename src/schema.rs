//! JSON Schema validation of inbound and outbound messages.
//!
//! The schemas in `schemas/` are the machine-readable contract (see
//! `src/contract.rs` for the Rust side). They are embedded in the binary at
//! build time, so nothing is read from disk at run time, and compiled once by
//! [`Schemas::load`].
//!
//! Validation reasons name the JSON pointer of each problem and the rule it
//! broke, never the offending value: bodies carry message text and customer
//! contact data, which must stay out of logs and dead letters' reasons.
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use jsonschema::error::ValidationErrorKind;
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use crate::contract::InboundKind;

const ESCALATION_REQUESTED: &str = include_str!("../schemas/inbound/escalation.requested.json");
const CUSTOMER_MESSAGE: &str = include_str!("../schemas/inbound/customer.message.json");
const CUSTOMER_TYPING: &str = include_str!("../schemas/inbound/customer.typing.json");
const CUSTOMER_ENDED: &str = include_str!("../schemas/inbound/customer.ended.json");
const WEBHOOK_ZENDESK: &str = include_str!("../schemas/inbound/webhook.zendesk.json");
const WEBHOOK_SUNSHINE: &str = include_str!("../schemas/inbound/webhook.sunshine.json");
const SALESFORCE_STREAM: &str = include_str!("../schemas/internal/salesforce.stream.json");
const OUTBOUND_EVENT: &str = include_str!("../schemas/outbound/event.json");

/// The schema file of outbound events, relative to `schemas/`.
pub const OUTBOUND_SCHEMA_NAME: &str = "outbound/event.json";

/// How many problems a validation reason lists before summarising the rest.
const MAX_REPORTED: usize = 3;

/// `escalation.requested`'s `context`, serialized as JSON, is at most this
/// many bytes (the schema caps its keys and string values; JSON Schema
/// cannot express a total size, so [`Schemas::validate_inbound`] checks it).
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;

/// A duplicate key is named by its JSON pointer, cut to this many characters.
const MAX_KEY_IN_REASON: usize = 64;

/// A schema that cannot be used. Only a broken build can cause this: the
/// schemas are embedded, so [`Schemas::load`] either always or never fails.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema {name} is not valid JSON: {source}")]
    Json {
        name: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("schema {name} does not compile: {reason}")]
    Compile { name: &'static str, reason: String },
}

/// Compiled validators for the inbound and outbound schemas, embedded at
/// build time with `include_str!` (the binary does not read files at run time).
///
/// Cheap to clone and to share between tasks (`Send + Sync`, the compiled
/// validators sit behind an `Arc`).
#[derive(Clone)]
pub struct Schemas {
    inner: Arc<Compiled>,
}

struct Compiled {
    /// In the order of [`InboundKind::ALL`].
    inbound: Vec<Validator>,
    outbound: Validator,
}

impl fmt::Debug for Schemas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schemas")
            .field("inbound", &self.inner.inbound.len())
            .finish_non_exhaustive()
    }
}

impl Schemas {
    /// Compiles every embedded schema (draft 2020-12, formats asserted,
    /// no network or file access for references).
    pub fn load() -> Result<Schemas, SchemaError> {
        let inbound = InboundKind::ALL
            .into_iter()
            .map(|kind| compile(kind.schema_name(), Self::inbound_schema_text(kind)))
            .collect::<Result<Vec<_>, _>>()?;
        let outbound = compile(OUTBOUND_SCHEMA_NAME, OUTBOUND_EVENT)?;
        Ok(Schemas {
            inner: Arc::new(Compiled { inbound, outbound }),
        })
    }

    /// Checks an inbound body against its routing key's schema.
    ///
    /// `Err` is a reason safe to log: the JSON pointer and the rule of the
    /// first few problems, without the offending values.
    pub fn validate_inbound(&self, kind: InboundKind, body: &Value) -> Result<(), String> {
        let index = inbound_index(kind);
        match self.inner.inbound.get(index) {
            Some(validator) => check(validator, body)?,
            // Unreachable: `load` compiles one validator per kind.
            None => return Err(format!("no schema for {}", kind.routing_key())),
        }
        if kind == InboundKind::EscalationRequested
            && let Some(context) = body.get("context")
        {
            let size = serialized_size(context);
            if size > MAX_CONTEXT_BYTES {
                return Err(format!(
                    "/context: is {size} bytes as JSON, more than the {MAX_CONTEXT_BYTES} allowed"
                ));
            }
        }
        Ok(())
    }

    /// Checks an outbound event (envelope and the `data` of its `type`).
    pub fn validate_outbound(&self, event: &Value) -> Result<(), String> {
        check(&self.inner.outbound, event)
    }

    /// The embedded text of the schema for `kind` (`schemas/` + [`InboundKind::schema_name`]).
    pub fn inbound_schema_text(kind: InboundKind) -> &'static str {
        match kind {
            InboundKind::EscalationRequested => ESCALATION_REQUESTED,
            InboundKind::CustomerMessage => CUSTOMER_MESSAGE,
            InboundKind::CustomerTyping => CUSTOMER_TYPING,
            InboundKind::CustomerEnded => CUSTOMER_ENDED,
            InboundKind::WebhookZendesk => WEBHOOK_ZENDESK,
            InboundKind::WebhookSunshine => WEBHOOK_SUNSHINE,
            InboundKind::SalesforceStream => SALESFORCE_STREAM,
        }
    }

    /// The embedded text of `schemas/outbound/event.json`.
    pub fn outbound_schema_text() -> &'static str {
        OUTBOUND_EVENT
    }
}

/// A JSON document parsed by [`parse_document`].
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    /// The JSON pointer of the first object key that appears twice in its
    /// object (`value` holds the last one, as serde_json would), if any.
    pub duplicate_key: Option<String>,
}

impl Document {
    /// Why the document cannot be accepted as it is: it names a key twice,
    /// and the producer's meaning is ambiguous.
    pub fn duplicate_reason(&self) -> Option<String> {
        self.duplicate_key.as_ref().map(|key| {
            format!("{key}: the key appears more than once in its object (duplicate JSON keys are ambiguous)")
        })
    }
}

/// Parse a JSON document once, building its [`Value`] and noting duplicate
/// object keys, which `serde_json` alone would resolve silently (last wins).
pub fn parse_document(body: &[u8]) -> Result<Document, serde_json::Error> {
    let path = RefCell::new(Vec::new());
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde::de::DeserializeSeed::deserialize(
        Walk {
            path: &path,
            duplicate: &duplicate,
        },
        &mut de,
    )?;
    de.end()?;
    Ok(Document {
        value,
        duplicate_key: duplicate.into_inner(),
    })
}

/// Builds a [`Value`] like serde_json's own visitor, tracking where it is.
#[derive(Clone, Copy)]
struct Walk<'a> {
    path: &'a RefCell<Vec<String>>,
    duplicate: &'a RefCell<Option<String>>,
}

impl Walk<'_> {
    fn note_duplicate(&self, key: &str) {
        let mut dup = self.duplicate.borrow_mut();
        if dup.is_none() {
            let mut pointer: String = self
                .path
                .borrow()
                .iter()
                .chain(std::iter::once(&key.to_string()))
                .map(|t| format!("/{}", escape_pointer(t)))
                .collect();
            if pointer.chars().count() > MAX_KEY_IN_REASON {
                pointer = pointer.chars().take(MAX_KEY_IN_REASON).collect::<String>() + "…";
            }
            *dup = Some(pointer);
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Walk<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::de::DeserializeSeed::deserialize(self, d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.borrow_mut().push(items.len().to_string());
            let next = seq.next_element_seed(self);
            self.path.borrow_mut().pop();
            match next? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.note_duplicate(&key);
            }
            self.path.borrow_mut().push(key.clone());
            let value = map.next_value_seed(self);
            self.path.borrow_mut().pop();
            object.insert(key, value?);
        }
        Ok(Value::Object(object))
    }
}

/// Bytes of `value` serialized as compact JSON, without building the text.
fn serialized_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn inbound_index(kind: InboundKind) -> usize {
    match kind {
        InboundKind::EscalationRequested => 0,
        InboundKind::CustomerMessage => 1,
        InboundKind::CustomerTyping => 2,
        InboundKind::CustomerEnded => 3,
        InboundKind::WebhookZendesk => 4,
        InboundKind::WebhookSunshine => 5,
        // Internal: no inbound validator (the intake router refuses it).
        InboundKind::SalesforceStream => usize::MAX,
    }
}

fn compile(name: &'static str, text: &str) -> Result<Validator, SchemaError> {
    let schema: Value =
        serde_json::from_str(text).map_err(|source| SchemaError::Json { name, source })?;
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .should_ignore_unknown_formats(false)
        .offline()
        .build(&schema)
        .map_err(|e| SchemaError::Compile {
            name,
            reason: format!("{}: {e}", pointer_or_root(e.instance_path().as_str())),
        })
}

fn check(validator: &Validator, instance: &Value) -> Result<(), String> {
    // The fast path: most messages are valid.
    if validator.is_valid(instance) {
        return Ok(());
    }
    let mut problems = Vec::with_capacity(MAX_REPORTED + 1);
    let mut total = 0usize;
    for error in validator.iter_errors(instance) {
        total += 1;
        if problems.len() < MAX_REPORTED {
            problems.push(describe(&error));
        }
    }
    if total > MAX_REPORTED {
        problems.push(format!("and {} more problem(s)", total - MAX_REPORTED));
    }
    if problems.is_empty() {
        problems.push("(root): does not match the schema".to_owned());
    }
    Err(problems.join("; "))
}

/// `<JSON pointer>: <rule>`, without the instance's value.
fn describe(error: &ValidationError<'_>) -> String {
    let path = error.instance_path().as_str();
    match error.kind() {
        // Name the missing property's own path: "/conversation_id: is required".
        ValidationErrorKind::Required {
            property: Value::String(name),
        } => format!("{path}/{}: is required but missing", escape_pointer(name)),
        // Property names may be data too (context keys, header names).
        ValidationErrorKind::PropertyNames { error } => format!(
            "{}: a property name is invalid: {}",
            pointer_or_root(path),
            error.masked_with("name")
        ),
        _ => format!("{}: {}", pointer_or_root(path), error.masked_with("value")),
    }
}

fn pointer_or_root(path: &str) -> &str {
    if path.is_empty() { "(root)" } else { path }
}

/// RFC 6901 escaping of one reference token.
fn escape_pointer(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::{Path, PathBuf};

    fn schema_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")
    }

    fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                json_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }

    #[test]
    fn schema_every_file_under_schemas_parses_as_json() {
        let mut files = Vec::new();
        json_files(&schema_dir(), &mut files);
        // 7 schemas, 6 inbound and 8 outbound examples, invalid examples.
        assert!(files.len() >= 21, "found only {files:?}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            if let Err(e) = serde_json::from_str::<Value>(&text) {
                panic!("{}: {e}", file.display());
            }
        }
    }

    #[test]
    fn schema_embedded_texts_are_the_files() {
        for kind in InboundKind::ALL {
            let on_disk = std::fs::read_to_string(schema_dir().join(kind.schema_name())).unwrap();
            assert_eq!(Schemas::inbound_schema_text(kind), on_disk);
        }
        let on_disk = std::fs::read_to_string(schema_dir().join(OUTBOUND_SCHEMA_NAME)).unwrap();
        assert_eq!(Schemas::outbound_schema_text(), on_disk);
    }

    /// Every `properties` entry (at any depth) has a description, and every
    /// schema document has an `$id` matching its path and a title.
    #[test]
    fn schema_documents_are_described() {
        fn walk(node: &Value, at: &str, missing: &mut Vec<String>) {
            match node {
                Value::Object(map) => {
                    if let Some(Value::Object(props)) = map.get("properties") {
                        for (name, prop) in props {
                            let is_described = prop
                                .get("description")
                                .and_then(Value::as_str)
                                .is_some_and(|d| !d.is_empty());
                            // `if`/`then` only select a branch and `$ref` the
                            // described `$defs`.
                            let in_branch = at.contains("/if") || at.contains("/then");
                            if !is_described && !in_branch {
                                missing.push(format!("{at}/properties/{name}"));
                            }
                        }
                    }
                    for (key, value) in map {
                        walk(value, &format!("{at}/{key}"), missing);
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        walk(item, &format!("{at}/{i}"), missing);
                    }
                }
                _ => {}
            }
        }
        let mut docs: Vec<(&str, &str)> = InboundKind::ALL
            .into_iter()
            .map(|k| (k.schema_name(), Schemas::inbound_schema_text(k)))
            .collect();
        docs.push((OUTBOUND_SCHEMA_NAME, Schemas::outbound_schema_text()));
        for (name, text) in docs {
            let doc: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                doc["$id"],
                json!(format!("https://escalator.dev/schemas/{name}")),
                "{name}"
            );
            assert_eq!(
                doc["$schema"],
                json!("https://json-schema.org/draft/2020-12/schema")
            );
            assert!(doc["title"].is_string(), "{name} has no title");
            assert!(doc["description"].is_string(), "{name} has no description");
            let mut missing = Vec::new();
            walk(&doc, "", &mut missing);
            assert!(missing.is_empty(), "{name}: undescribed {missing:?}");
        }
    }

    #[test]
    fn schema_duplicate_keys_are_found_at_any_depth() {
        let doc =
            parse_document(br#"{"a": 1, "b": {"c": [1, {"d": 1, "d": 2}]}, "a": 3}"#).unwrap();
        assert_eq!(
            doc.duplicate_key.as_deref(),
            Some("/b/c/1/d"),
            "the first one, by pointer"
        );
        assert_eq!(
            doc.value,
            json!({"a": 3, "b": {"c": [1, {"d": 2}]}}),
            "last wins, as serde_json"
        );
        let reason = doc.duplicate_reason().unwrap();
        assert!(reason.starts_with("/b/c/1/d: "), "{reason}");
        let clean = parse_document(br#"{"a": [1.5, -2, null, true, "x"], "b": {}}"#).unwrap();
        assert_eq!(clean.duplicate_key, None);
        assert_eq!(
            clean.value,
            serde_json::from_str::<Value>(r#"{"a": [1.5, -2, null, true, "x"], "b": {}}"#).unwrap()
        );
        assert!(parse_document(b"{\"a\": 1} trailing").is_err());
        assert!(parse_document(b"{\"a\": ").is_err());
        let long = format!(r#"{{"{k}": 1, "{k}": 2}}"#, k = "k".repeat(500));
        let doc = parse_document(long.as_bytes()).unwrap();
        assert!(doc.duplicate_key.unwrap().chars().count() <= MAX_KEY_IN_REASON + 1);
    }

    #[test]
    fn schema_context_is_capped_in_total() {
        let schemas = Schemas::load().unwrap();
        let mut body = json!({
            "org_id": "acme", "conversation_id": "c1", "mode": "ticket",
            "customer": {"id": "u1"}, "requested_at": "2026-11-21T10:00:00Z",
            "context": {}
        });
        // Each value within its cap, the sum over the total.
        for i in 0..8 {
            body["context"][format!("k{i}")] = json!("v".repeat(3000));
        }
        let err = schemas
            .validate_inbound(InboundKind::EscalationRequested, &body)
            .unwrap_err();
        assert!(err.starts_with("/context: is "), "{err}");
        assert!(err.contains("16384"), "{err}");
        body["context"] = json!({"plan": "pro"});
        assert_eq!(
            schemas.validate_inbound(InboundKind::EscalationRequested, &body),
            Ok(())
        );
    }

    #[test]
    fn schema_load_compiles_all_and_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + Clone>() {}
        assert_send_sync::<Schemas>();
        let schemas = Schemas::load().unwrap();
        let body = json!({
            "org_id": "acme",
            "conversation_id": "c1",
            "ended_at": "2026-11-21T10:00:00Z"
        });
        assert_eq!(
            schemas.validate_inbound(InboundKind::CustomerEnded, &body),
            Ok(())
        );
    }

    #[test]
    fn schema_reason_names_missing_property_and_escapes() {
        let schemas = Schemas::load().unwrap();
        let err = schemas
            .validate_inbound(InboundKind::CustomerEnded, &json!({"org_id": "acme"}))
            .unwrap_err();
        assert!(err.contains("/conversation_id: is required"), "{err}");
        assert!(err.contains("/ended_at: is required"), "{err}");
        assert_eq!(escape_pointer("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn schema_reason_is_capped() {
        let schemas = Schemas::load().unwrap();
        let err = schemas
            .validate_inbound(InboundKind::CustomerMessage, &json!({}))
            .unwrap_err();
        assert!(err.contains("and 2 more problem(s)"), "{err}");
        let err = schemas
            .validate_inbound(InboundKind::CustomerMessage, &json!("not an object"))
            .unwrap_err();
        assert!(err.starts_with("(root): "), "{err}");
        assert!(!err.contains("not an object"), "{err}");
    }

    #[test]
    fn schema_date_time_and_uuid_formats_are_asserted() {
        let schemas = Schemas::load().unwrap();
        let body = json!({"org_id": "acme", "conversation_id": "c1", "ended_at": "2026-11-21"});
        let err = schemas
            .validate_inbound(InboundKind::CustomerEnded, &body)
            .unwrap_err();
        assert!(err.contains("/ended_at"), "{err}");
        let event = json!({
            "event_id": "not-a-uuid", "type": "agent.typing", "org_id": "acme",
            "conversation_id": "c1", "seq": 1, "occurred_at": "2026-11-21T10:00:00Z",
            "provider": "zendesk", "data": {"typing": true}
        });
        let err = schemas.validate_outbound(&event).unwrap_err();
        assert!(err.contains("/event_id"), "{err}");
    }
}
