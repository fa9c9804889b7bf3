//! Salesforce OAuth 2.0 client-credentials token endpoint and REST API (Case subset).

use std::collections::HashSet;

use base64::Engine as _;
use chrono::Utc;
use rand::Rng as _;
use serde_json::{Map, Value, json};

use super::state::{Req, Shared, SimResponse};
use super::types::{SimCase, SimSfRecord};
use super::util::{basic_credentials, bearer_token, parse_form, percent_decode, query_param};

/// Daily API allocation reported in `Sforce-Limit-Info`.
pub(crate) const API_LIMIT: u64 = 15_000;
const ORG_ID: &str = "00D000000000001AAA";
const USER_ID: &str = "005000000000001AAA";
const JSON: &str = "application/json;charset=UTF-8";
const KNOWN_CASE_FIELDS: &[&str] = &[
    "Subject",
    "Description",
    "Origin",
    "Status",
    "Priority",
    "SuppliedName",
    "SuppliedEmail",
    "SuppliedCompany",
    "SuppliedPhone",
    "ContactId",
    "AccountId",
    "OwnerId",
    "RecordTypeId",
    "Type",
    "Reason",
    "ParentId",
    "Language",
];
const ORIGINS: &[&str] = &["Web", "Chat", "Phone", "Email"];
/// (field, max length) limits checked on Case create/update.
const CASE_LIMITS: &[(&str, usize)] = &[
    ("Subject", 255),
    ("SuppliedEmail", 80),
    ("Description", 32_000),
];

pub(crate) struct SalesforceState {
    pub(crate) cases: Vec<SimCase>,
    pub(crate) records: Vec<SimSfRecord>,
    tokens: HashSet<String>,
    pub(crate) token_requests: usize,
    api_usage: u64,
    next_case: u64,
    next_record: u64,
    /// What `Case/describe` says of `createable` (the Run As user's access).
    pub(crate) case_createable: bool,
}

impl SalesforceState {
    pub(crate) fn new() -> Self {
        Self {
            cases: Vec::new(),
            records: Vec::new(),
            tokens: HashSet::new(),
            token_requests: 0,
            api_usage: 0,
            next_case: 1,
            next_record: 1,
            case_createable: true,
        }
    }

    pub(crate) fn expire_tokens(&mut self) {
        self.tokens.clear();
    }

    /// Counts one REST call; returns the `Sforce-Limit-Info` value.
    pub(crate) fn usage_tick(&mut self) -> String {
        self.api_usage += 1;
        format!("api-usage={}/{API_LIMIT}", self.api_usage)
    }

    fn find_case(&self, id: &str) -> Option<usize> {
        self.cases
            .iter()
            .position(|c| c.id == id || (id.len() == 15 && c.id.starts_with(id)))
    }

    fn next_id(&mut self, prefix: &str) -> String {
        let n = self.next_record;
        self.next_record += 1;
        sf_id(prefix, n)
    }
}

/// An 18-character Salesforce id: 3-char prefix, 12-digit counter, checksum suffix.
fn sf_id(prefix: &str, n: u64) -> String {
    const MAP: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    let id15 = format!("{prefix}{n:012}");
    let suffix: String = id15
        .as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits = chunk
                .iter()
                .enumerate()
                .filter(|(_, b)| b.is_ascii_uppercase())
                .fold(0usize, |acc, (i, _)| acc | (1 << i));
            char::from(MAP[bits & 31])
        })
        .collect();
    id15 + &suffix
}

/// `[{"message","errorCode","fields"?}]`
fn sf_error(status: u16, code: &str, message: &str, fields: &[&str]) -> SimResponse {
    let mut err = json!({"message": message, "errorCode": code});
    if !fields.is_empty() {
        err["fields"] = json!(fields);
    }
    SimResponse::json_typed(status, JSON, &json!([err]))
}

fn not_found() -> SimResponse {
    sf_error(
        404,
        "NOT_FOUND",
        "The requested resource does not exist",
        &[],
    )
}

fn oauth_error(error: &str, description: &str) -> SimResponse {
    SimResponse::json_typed(
        400,
        JSON,
        &json!({"error": error, "error_description": description}),
    )
}

/// Handles any request under `/services/`.
pub(crate) fn handle(shared: &Shared, sf: &mut SalesforceState, req: &Req) -> SimResponse {
    if is_token_path(&req.path) {
        return token(shared, sf, req);
    }
    match req.path.strip_prefix("/services/data/") {
        Some(rest) => rest_api(sf, req, rest),
        None => not_found(),
    }
}

pub(crate) fn is_token_path(path: &str) -> bool {
    path.trim_end_matches('/') == "/services/oauth2/token"
}

fn token(shared: &Shared, sf: &mut SalesforceState, req: &Req) -> SimResponse {
    if req.method != axum::http::Method::POST {
        return oauth_error("invalid_request", "must use HTTP POST");
    }
    let form = parse_form(&String::from_utf8_lossy(&req.body));
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        return oauth_error("unsupported_grant_type", "grant type not supported");
    }
    let credentials = basic_credentials(&req.headers)
        .map(|(id, secret)| (percent_decode(&id, false), percent_decode(&secret, false)))
        .or_else(|| Some((field("client_id")?, field("client_secret")?)));
    let accepted = credentials.is_some_and(|(id, secret)| {
        shared
            .settings
            .salesforce_clients
            .iter()
            .any(|(i, s)| *i == id && *s == secret)
    });
    if !accepted {
        return oauth_error("invalid_client", "invalid client credentials");
    }
    let random: String = rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(96)
        .map(char::from)
        .collect();
    let access_token = format!("{}!AQ{random}", &ORG_ID[..15]);
    let issued_at = Utc::now().timestamp_millis().to_string();
    let id_url = format!("{}/id/{ORG_ID}/{USER_ID}", shared.base_url);
    let signature = base64::engine::general_purpose::STANDARD.encode(super::util::sha256_hex(
        format!("{id_url}{issued_at}").as_bytes(),
    ));
    sf.tokens.insert(access_token.clone());
    SimResponse::json_typed(
        200,
        JSON,
        &json!({
            "access_token": access_token,
            "signature": signature,
            "scope": "api",
            "instance_url": shared.base_url,
            "id": id_url,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }),
    )
    .with_header(
        "cache-control",
        "no-cache,must-revalidate,max-age=0,no-store,private",
    )
}

fn version_ok(segment: &str) -> bool {
    segment
        .strip_prefix('v')
        .and_then(|v| v.strip_suffix(".0"))
        .and_then(|v| v.parse::<u32>().ok())
        .is_some_and(|v| (50..=70).contains(&v))
}

fn sobject(name: &str) -> Option<&'static str> {
    ["Case", "ContentVersion", "FeedItem", "CaseComment"]
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(name))
}

fn rest_api(sf: &mut SalesforceState, req: &Req, rest: &str) -> SimResponse {
    // `GET /services/data/`: the API versions (Salesforce answers it without a token).
    if rest.trim_matches('/').is_empty() && req.method == axum::http::Method::GET {
        return versions();
    }
    let live = bearer_token(&req.headers).is_some_and(|t| sf.tokens.contains(&t));
    if !live {
        return sf_error(401, "INVALID_SESSION_ID", "Session expired or invalid", &[]);
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some((version, segs)) = segs.split_first() else {
        return not_found();
    };
    if !version_ok(version) {
        return not_found();
    }
    let method = req.method.as_str();
    match segs {
        ["query"] if method == "GET" => query(sf, req, version),
        ["sobjects", obj, tail @ ..] => match (sobject(obj), method, tail) {
            (Some("Case"), "POST", []) => create_case(sf, req),
            (Some("Case"), "GET", ["describe"]) => describe_case(sf.case_createable),
            (Some("Case"), "GET", [id]) => get_case(sf, id, version),
            (Some("Case"), "PATCH", [id]) => update_case(sf, req, id),
            (Some("Case"), "PATCH", [field, value]) => {
                upsert_case(sf, req, field, &percent_decode(value, false), version)
            }
            (Some("Case"), "GET", [field, value]) => {
                get_case_by_external_id(sf, field, &percent_decode(value, false), version)
            }
            (Some(obj), "POST", []) => create_record(sf, req, obj),
            (Some(_), _, _) => sf_error(
                405,
                "METHOD_NOT_ALLOWED",
                &format!("HTTP Method '{method}' not allowed"),
                &[],
            ),
            (None, _, _) => sf_error(
                404,
                "NOT_FOUND",
                &format!(
                    "The requested resource does not exist: sObject type '{obj}' is not supported."
                ),
                &[],
            ),
        },
        _ => not_found(),
    }
}

/// The External ID field the simulated org has on Case (any other name is
/// unknown to `describe`, though upserts accept it).
pub(crate) const EXTERNAL_ID_FIELD: &str = "Escalator_Conversation_Id__c";

/// `GET /services/data/`: versions v50.0..v70.0 (the ones the REST API answers).
fn versions() -> SimResponse {
    let list: Vec<Value> = (50..=70)
        .map(|v| json!({"label": format!("v{v}"), "url": format!("/services/data/v{v}.0"), "version": format!("{v}.0")}))
        .collect();
    SimResponse::json_typed(200, JSON, &json!(list))
}

/// `GET .../sobjects/Case/describe`: createable by the Run As user, with the
/// standard fields the escalator writes and the External ID field.
fn describe_case(createable: bool) -> SimResponse {
    let field = |name: &str, external: bool| json!({"name": name, "createable": true, "updateable": true, "externalId": external});
    let mut fields: Vec<Value> = [
        "Id",
        "Subject",
        "Description",
        "Origin",
        "Status",
        "Priority",
        "SuppliedName",
        "SuppliedEmail",
        "OwnerId",
        "RecordTypeId",
    ]
    .into_iter()
    .map(|n| field(n, false))
    .collect();
    fields.push(field(EXTERNAL_ID_FIELD, true));
    SimResponse::json_typed(
        200,
        JSON,
        &json!({"name": "Case", "createable": createable, "updateable": createable, "queryable": true, "fields": fields}),
    )
}

fn parse_object(req: &Req) -> Result<Map<String, Value>, SimResponse> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(sf_error(
            400,
            "JSON_PARSER_ERROR",
            "Cannot deserialize instance of sObject from a non-object value",
            &[],
        )),
        Err(e) => Err(sf_error(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unexpected character in JSON: {e}"),
            &[],
        )),
    }
}

fn validate_case(fields: &Map<String, Value>) -> Result<(), SimResponse> {
    for name in fields.keys() {
        let known = KNOWN_CASE_FIELDS
            .iter()
            .any(|k| k.eq_ignore_ascii_case(name))
            || name.to_ascii_lowercase().ends_with("__c");
        if !known {
            return Err(sf_error(
                400,
                "INVALID_FIELD",
                &format!("No such column '{name}' on sobject of type Case"),
                &[name],
            ));
        }
    }
    if let Some((name, origin)) = get_ci(fields, "Origin")
        && !origin.is_null()
        && !origin.as_str().is_some_and(|o| ORIGINS.contains(&o))
    {
        return Err(sf_error(
            400,
            "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
            &format!(
                "Case Origin: bad value for restricted picklist field: {}",
                display(origin)
            ),
            &[name],
        ));
    }
    for (field, max) in CASE_LIMITS {
        if let Some((name, Value::String(s))) = get_ci(fields, field)
            && s.chars().count() > *max
        {
            return Err(too_long(name, s, *max));
        }
    }
    Ok(())
}

fn too_long(name: &str, value: &str, max: usize) -> SimResponse {
    let head: String = value.chars().take(20).collect();
    sf_error(
        400,
        "STRING_TOO_LONG",
        &format!("{name}: data value too large: {head}... (max length={max})"),
        &[name],
    )
}

/// A field by case-insensitive name, with the name as sent.
fn get_ci<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<(&'a str, &'a Value)> {
    fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(k, v)| (k.as_str(), v))
}

fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn insert_case(sf: &mut SalesforceState, fields: Map<String, Value>) -> String {
    let n = sf.next_case;
    sf.next_case += 1;
    let id = sf_id("500", n);
    sf.cases.push(SimCase {
        id: id.clone(),
        case_number: format!("{:08}", 1000 + n),
        fields,
        created_at: Utc::now(),
    });
    id
}

fn create_case(sf: &mut SalesforceState, req: &Req) -> SimResponse {
    let fields = match parse_object(req).and_then(|f| validate_case(&f).map(|()| f)) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let id = insert_case(sf, fields);
    SimResponse::json_typed(201, JSON, &json!({"id": id, "success": true, "errors": []}))
}

fn case_json(case: &SimCase, version: &str) -> Value {
    let mut out = Map::new();
    out.insert(
        "attributes".to_owned(),
        json!({"type": "Case", "url": format!("/services/data/{version}/sobjects/Case/{}", case.id)}),
    );
    out.insert("Id".to_owned(), json!(case.id));
    out.insert("CaseNumber".to_owned(), json!(case.case_number));
    out.insert(
        "CreatedDate".to_owned(),
        json!(
            case.created_at
                .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
                .to_string()
        ),
    );
    for (k, v) in &case.fields {
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

fn get_case(sf: &SalesforceState, id: &str, version: &str) -> SimResponse {
    match sf.find_case(id) {
        Some(i) => SimResponse::json_typed(200, JSON, &case_json(&sf.cases[i], version)),
        None => not_found(),
    }
}

fn update_case(sf: &mut SalesforceState, req: &Req, id: &str) -> SimResponse {
    let fields = match parse_object(req).and_then(|f| validate_case(&f).map(|()| f)) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let Some(i) = sf.find_case(id) else {
        return not_found();
    };
    merge(&mut sf.cases[i].fields, fields);
    SimResponse::empty(204)
}

/// Sets `incoming` into `fields`, replacing keys that differ only in case.
fn merge(fields: &mut Map<String, Value>, incoming: Map<String, Value>) {
    for (k, v) in incoming {
        fields.retain(|existing, _| !existing.eq_ignore_ascii_case(&k));
        fields.insert(k, v);
    }
}

fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Indexes of cases whose `field` equals `value` (Id and CaseNumber included).
fn matching_cases(sf: &SalesforceState, field: &str, value: &str) -> Vec<usize> {
    sf.cases
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            if field.eq_ignore_ascii_case("Id") {
                c.id == value || (value.len() == 15 && c.id.starts_with(value))
            } else if field.eq_ignore_ascii_case("CaseNumber") {
                c.case_number == value
            } else {
                get_ci(&c.fields, field)
                    .and_then(|(_, v)| scalar_string(v))
                    .as_deref()
                    == Some(value)
            }
        })
        .map(|(i, _)| i)
        .collect()
}

fn external_id_missing(field: &str) -> SimResponse {
    sf_error(
        404,
        "NOT_FOUND",
        &format!("Provided external ID field does not exist or is not accessible: {field}"),
        &[],
    )
}

fn multiple_choices(sf: &SalesforceState, found: &[usize], version: &str) -> SimResponse {
    let urls: Vec<String> = found
        .iter()
        .map(|i| format!("/services/data/{version}/sobjects/Case/{}", sf.cases[*i].id))
        .collect();
    SimResponse::json_typed(300, JSON, &urls)
}

fn upsert_case(
    sf: &mut SalesforceState,
    req: &Req,
    field: &str,
    value: &str,
    version: &str,
) -> SimResponse {
    if !field.to_ascii_lowercase().ends_with("__c") {
        return external_id_missing(field);
    }
    let mut fields = match parse_object(req).and_then(|f| validate_case(&f).map(|()| f)) {
        Ok(f) => f,
        Err(e) => return e,
    };
    merge(
        &mut fields,
        Map::from_iter([(field.to_owned(), json!(value))]),
    );
    let found = matching_cases(sf, field, value);
    match found.as_slice() {
        [] => {
            let id = insert_case(sf, fields);
            SimResponse::json_typed(
                201,
                JSON,
                &json!({"id": id, "success": true, "errors": [], "created": true}),
            )
        }
        [i] => {
            let case = &mut sf.cases[*i];
            merge(&mut case.fields, fields);
            SimResponse::json_typed(
                200,
                JSON,
                &json!({"id": case.id, "success": true, "errors": [], "created": false}),
            )
        }
        _ => multiple_choices(sf, &found, version),
    }
}

fn get_case_by_external_id(
    sf: &SalesforceState,
    field: &str,
    value: &str,
    version: &str,
) -> SimResponse {
    if !field.to_ascii_lowercase().ends_with("__c") {
        return external_id_missing(field);
    }
    let found = matching_cases(sf, field, value);
    match found.as_slice() {
        [] => not_found(),
        [i] => SimResponse::json_typed(200, JSON, &case_json(&sf.cases[*i], version)),
        _ => multiple_choices(sf, &found, version),
    }
}

fn create_record(sf: &mut SalesforceState, req: &Req, sobject: &'static str) -> SimResponse {
    let fields = match parse_object(req) {
        Ok(f) => f,
        Err(e) => return e,
    };
    let (prefix, parent_field, limit) = match sobject {
        "ContentVersion" => ("068", "FirstPublishLocationId", None),
        "FeedItem" => ("0D5", "ParentId", Some(("Body", 10_000))),
        _ => ("00a", "ParentId", Some(("CommentBody", 4_000))),
    };
    if sobject == "ContentVersion" {
        match get_ci(&fields, "VersionData") {
            None | Some((_, Value::Null)) => {
                return sf_error(
                    400,
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [VersionData]",
                    &["VersionData"],
                );
            }
            Some((name, v)) => {
                let valid = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !valid {
                    return sf_error(
                        400,
                        "JSON_PARSER_ERROR",
                        &format!("Cannot deserialize instance of base64 from {name}"),
                        &[name],
                    );
                }
            }
        }
    }
    match get_ci(&fields, parent_field) {
        Some((name, parent)) => {
            let exists = parent.as_str().is_some_and(|p| sf.find_case(p).is_some());
            if !exists {
                return sf_error(
                    400,
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    &[name],
                );
            }
        }
        None if parent_field == "ParentId" => {
            return sf_error(
                400,
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [ParentId]",
                &["ParentId"],
            );
        }
        None => {}
    }
    if let Some((field, max)) = limit
        && let Some((name, Value::String(s))) = get_ci(&fields, field)
        && s.chars().count() > max
    {
        return too_long(name, s, max);
    }
    let id = sf.next_id(prefix);
    sf.records.push(SimSfRecord {
        id: id.clone(),
        sobject: sobject.to_owned(),
        fields,
    });
    SimResponse::json_typed(201, JSON, &json!({"id": id, "success": true, "errors": []}))
}

/// A parsed `SELECT f1, f2 FROM Case [WHERE Field = 'value' ...] [LIMIT n]`.
#[derive(Debug, PartialEq)]
struct Soql {
    fields: Vec<String>,
    /// "Case", or a record sobject ("ContentVersion", "FeedItem", "CaseComment").
    object: &'static str,
    filter: Option<(String, String)>,
    limit: Option<usize>,
}

fn parse_soql(q: &str) -> Option<Soql> {
    let q = q.trim();
    let lower = q.to_ascii_lowercase();
    let rest = lower.strip_prefix("select ")?;
    let from = rest.find(" from ")?;
    let start = "select ".len();
    let fields: Vec<String> = q[start..start + from]
        .split(',')
        .map(|f| f.trim().to_owned())
        .collect();
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    if !fields.iter().all(|f| ident(f)) {
        return None;
    }
    let after_from = q[start + from + " from ".len()..].trim_start();
    let (object, mut tail) = after_from
        .split_once(char::is_whitespace)
        .unwrap_or((after_from, ""));
    let object = sobject(object)?;
    tail = tail.trim();
    let mut filter = None;
    if tail
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("where "))
    {
        let cond = tail[6..].trim_start();
        let (field, after) = cond.split_once('=')?;
        let field = field.trim();
        if !ident(field) {
            return None;
        }
        let after = after.trim_start().strip_prefix('\'')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '\'' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        filter = Some((field.to_owned(), value));
        tail = after[end?..].trim();
    } else if !tail.is_empty() && !tail.to_ascii_lowercase().starts_with("limit ") {
        return None;
    }
    // Extra conditions are ignored; a LIMIT is honoured.
    let lower_tail = tail.to_ascii_lowercase();
    let limit = lower_tail
        .rfind("limit ")
        .and_then(|i| tail[i + 6..].trim().parse::<usize>().ok());
    Some(Soql {
        fields,
        object,
        filter,
        limit,
    })
}

fn query(sf: &SalesforceState, req: &Req, version: &str) -> SimResponse {
    let q = query_param(req.query.as_deref(), "q").unwrap_or_default();
    let Some(soql) = parse_soql(&q) else {
        return sf_error(
            400,
            "MALFORMED_QUERY",
            &format!("unexpected token in query: {q}"),
            &[],
        );
    };
    if soql.object != "Case" {
        return query_records(sf, &soql, version);
    }
    let indexes: Vec<usize> = match &soql.filter {
        Some((field, value)) => matching_cases(sf, field, value),
        None => (0..sf.cases.len()).collect(),
    };
    let records: Vec<Value> = indexes
        .into_iter()
        .take(soql.limit.unwrap_or(usize::MAX))
        .map(|i| {
            let case = &sf.cases[i];
            let full = case_json(case, version);
            let mut rec = Map::new();
            rec.insert(
                "attributes".to_owned(),
                json!({"type": "Case", "url": format!("/services/data/{version}/sobjects/Case/{}", case.id)}),
            );
            for f in &soql.fields {
                let v = full
                    .as_object()
                    .and_then(|o| get_ci(o, f))
                    .map_or(Value::Null, |(_, v)| v.clone());
                let key = match f.to_ascii_lowercase().as_str() {
                    "id" => "Id".to_owned(),
                    "casenumber" => "CaseNumber".to_owned(),
                    _ => f.clone(),
                };
                rec.insert(key, v);
            }
            Value::Object(rec)
        })
        .collect();
    SimResponse::json_typed(
        200,
        JSON,
        &json!({"totalSize": records.len(), "done": true, "records": records}),
    )
}

/// `SELECT .. FROM ContentVersion|FeedItem|CaseComment [WHERE Field = 'v' ..]`:
/// the records created through the API, in creation order.
fn query_records(sf: &SalesforceState, soql: &Soql, version: &str) -> SimResponse {
    let records: Vec<Value> = sf
        .records
        .iter()
        .filter(|r| r.sobject == soql.object)
        .filter(|r| match &soql.filter {
            Some((field, value)) if field.eq_ignore_ascii_case("Id") => r.id == *value,
            Some((field, value)) => {
                get_ci(&r.fields, field).and_then(|(_, v)| scalar_string(v)).as_deref()
                    == Some(value.as_str())
            }
            None => true,
        })
        .take(soql.limit.unwrap_or(usize::MAX))
        .map(|r| {
            let mut rec = Map::new();
            rec.insert(
                "attributes".to_owned(),
                json!({"type": r.sobject, "url": format!("/services/data/{version}/sobjects/{}/{}", r.sobject, r.id)}),
            );
            for f in &soql.fields {
                if f.eq_ignore_ascii_case("Id") {
                    rec.insert("Id".to_owned(), json!(r.id));
                } else {
                    let (name, v) = get_ci(&r.fields, f).map_or((f.as_str(), Value::Null), |(n, v)| (n, v.clone()));
                    rec.insert(name.to_owned(), v);
                }
            }
            Value::Object(rec)
        })
        .collect();
    SimResponse::json_typed(
        200,
        JSON,
        &json!({"totalSize": records.len(), "done": true, "records": records}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_18_chars_with_checksum() {
        let id = sf_id("500", 1);
        assert_eq!(id, "500000000000001AAA");
        assert_eq!(sf_id("0D5", 7).len(), 18);
        assert!(sf_id("0D5", 7).ends_with("CAA"));
    }

    #[test]
    fn parses_simple_soql() {
        let s = parse_soql(
            "SELECT Id, CaseNumber FROM Case WHERE Conv__c = 'a\\'b' AND IsClosed = false LIMIT 1",
        )
        .unwrap();
        assert_eq!(s.fields, vec!["Id", "CaseNumber"]);
        assert_eq!(s.filter, Some(("Conv__c".into(), "a'b".into())));
        assert_eq!(s.limit, Some(1));
        assert!(parse_soql("SELECT Id FROM Account WHERE X = 'y'").is_none());
        assert!(parse_soql("DELETE FROM Case").is_none());
        assert!(parse_soql("SELECT Id FROM Case WHERE X = y").is_none());
    }
}
