//! The official Sunshine Conversations OpenAPI spec (`../shared/specs/`) as
//! JSON Schema validators, for tests that check what the escalator sends to
//! Sunshine and what the simulator answers. Absent spec: `spec()` is `None`
//! and the caller skips, having printed why.
#![allow(dead_code)]

use serde_json::{Value, json};
use std::sync::OnceLock;

const REL: &str = "shared/specs/sunshine-conversations-openapi.yaml";

/// The spec as JSON with OpenAPI 3.0 keywords in JSON-Schema terms, or
/// `None` (with a printed reason) when it is not beside the crate.
pub fn spec() -> Option<&'static Value> {
    static SPEC: OnceLock<Option<Value>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        // `../shared` from a checkout beside it; `../../shared` from a worktree;
        // or SUNSHINE_SPEC.
        let found = std::env::var("SUNSHINE_SPEC")
            .ok()
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain([root.join("..").join(REL), root.join("../..").join(REL)])
            .find(|p| p.exists());
        let Some(path) = found else {
            eprintln!(
                "skipping spec validation: {REL} not found beside the crate (set SUNSHINE_SPEC)"
            );
            return None;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let mut v: Value = serde_yaml_ng::from_str(&text).unwrap();
        openapi_to_json_schema(&mut v);
        Some(v)
    })
    .as_ref()
}

/// `nullable: true` adds `null` to `type` (and to an `enum`), or wraps the
/// schema in `anyOf` with null when it has no single type; a
/// `discriminator` with a mapping picks the `oneOf` branch by the
/// discriminating property (instead of "exactly one branch matches", which
/// loose branches would break). `example` is left: validators ignore it.
fn openapi_to_json_schema(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for child in o.values_mut() {
                openapi_to_json_schema(child);
            }
            if let (Some(d), Some(_), None) = (
                o.get("discriminator").cloned(),
                o.get("oneOf"),
                o.get("allOf"),
            ) && let (Some(prop), Some(mapping)) =
                (d["propertyName"].as_str(), d["mapping"].as_object())
            {
                let names: Vec<Value> = mapping.keys().map(|k| json!(k)).collect();
                let mut branches: Vec<Value> = mapping
                    .iter()
                    .map(|(k, r)| json!({"if": {"properties": {prop: {"const": k}}, "required": [prop]}, "then": {"$ref": r}}))
                    .collect();
                branches.push(json!({"required": [prop], "properties": {prop: {"enum": names}}}));
                o.remove("oneOf");
                o.insert("allOf".into(), Value::Array(branches));
            }
            if o.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = o.get("type").cloned() {
                    o.insert("type".into(), json!([t, "null"]));
                    if let Some(Value::Array(e)) = o.get_mut("enum") {
                        e.push(Value::Null);
                    }
                } else {
                    let inner = Value::Object(std::mem::take(o));
                    o.insert("anyOf".into(), json!([{"type": "null"}, inner]));
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(openapi_to_json_schema),
        _ => {}
    }
}

/// The spec's path template and method of a Sunshine request the escalator
/// sends (`path` as requested, under `/sc`), if it is one.
pub fn operation(method: &str, path: &str) -> Option<(&'static str, &'static str)> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match (method, segs.as_slice()) {
        ("POST", ["sc", "v2", "apps", _, "users"]) => ("/v2/apps/{appId}/users", "post"),
        ("POST", ["sc", "v2", "apps", _, "conversations"]) => {
            ("/v2/apps/{appId}/conversations", "post")
        }
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "messages"]) => (
            "/v2/apps/{appId}/conversations/{conversationId}/messages",
            "post",
        ),
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "passControl"]) => (
            "/v2/apps/{appId}/conversations/{conversationId}/passControl",
            "post",
        ),
        ("POST", ["sc", "v2", "apps", _, "conversations", _, "activity"]) => (
            "/v2/apps/{appId}/conversations/{conversationId}/activity",
            "post",
        ),
        _ => return None,
    })
}

/// A validator whose root is the spec document: the operation's request
/// schema is referenced from the root, so its `#/components/...` refs resolve.
pub fn request_validator(path: &str, method: &str) -> jsonschema::Validator {
    let spec = spec().expect("the spec is present");
    let schema =
        spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"].clone();
    assert!(
        schema.is_object(),
        "the spec has no JSON request body for {method} {path}"
    );
    let mut root = spec.clone();
    root["x-escalator-request"] = schema;
    root["$ref"] = json!("#/x-escalator-request");
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .should_validate_formats(true)
        .build(&root)
        .unwrap()
}

/// A validator for `#/components/schemas/<name>`.
pub fn component_validator(name: &str) -> jsonschema::Validator {
    let spec = spec().expect("the spec is present");
    let root = json!({"components": spec["components"].clone(), "$ref": format!("#/components/schemas/{name}")});
    jsonschema::validator_for(&root).unwrap()
}

/// The spec's complaints about `body` as the request of (path, method).
pub fn request_errors(
    validators: &mut std::collections::HashMap<(&'static str, &'static str), jsonschema::Validator>,
    (path, method): (&'static str, &'static str),
    body: &Value,
) -> Vec<String> {
    validators
        .entry((path, method))
        .or_insert_with(|| request_validator(path, method))
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect()
}
