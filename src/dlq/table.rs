//! Output of `dlq list` and `dlq show`, with secrets redacted.
use super::DeadLetter;
use chrono::{DateTime, Utc};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

/// Header and body keys whose values are never printed.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase().replace('-', "_");
    [
        "authorization",
        "token",
        "secret",
        "password",
        "passwd",
        "api_key",
        "apikey",
        "cookie",
        "signature",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

const REDACTED: &str = "[redacted]";

fn age_text(age: Option<chrono::Duration>) -> String {
    let Some(a) = age else { return "?".into() };
    let s = a.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut c: String = s.chars().take(n.saturating_sub(1)).collect();
        c.push('…');
        c
    }
}

/// The `list` table.
pub fn render(letters: &[&DeadLetter], now: DateTime<Utc>) -> String {
    let head = [
        "ID",
        "AGE",
        "ROUTING KEY",
        "ORG",
        "CONVERSATION",
        "CLASS",
        "ATTEMPTS",
        "REASON",
    ];
    let rows: Vec<[String; 8]> = letters
        .iter()
        .map(|d| {
            [
                d.id.clone(),
                age_text(d.age(now)),
                d.routing_key.clone(),
                d.org.clone(),
                d.conversation.clone(),
                d.error_class.clone(),
                d.attempts.to_string(),
                clip(&d.reason, 70),
            ]
        })
        .collect();
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// One dead letter as JSON, for `list --json` (no body).
pub fn summary_json(d: &DeadLetter, now: DateTime<Utc>) -> Value {
    json!({
        "id": d.id,
        "message_id": d.message_id,
        "routing_key": d.routing_key,
        "org": d.org,
        "conversation": d.conversation,
        "error_class": d.error_class,
        "reason": d.reason,
        "attempts": d.attempts,
        "dead_lettered_at": d.dead_lettered_at.map(|t| t.to_rfc3339()),
        "age_seconds": d.age(now).map(|a| a.num_seconds()),
    })
}

fn amqp_json(key: &str, v: &AMQPValue) -> Value {
    if is_secret_key(key) {
        return json!(REDACTED);
    }
    match v {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(|x| amqp_json("", x)).collect())
        }
        AMQPValue::Timestamp(t) => json!(t),
        other => match crate::pipeline::meta::get_int(
            &{
                let mut t = FieldTable::default();
                t.insert("v".into(), other.clone());
                t
            },
            "v",
        ) {
            Some(i) => json!(i),
            None => json!(format!("{other:?}")),
        },
    }
}

fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), amqp_json(k.as_str(), v)))
            .collect(),
    )
}

/// Replace the values of secret-looking keys, at any depth.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if is_secret_key(k) {
                    *x = json!(REDACTED);
                } else {
                    redact(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `show`: properties, headers (with `x-death`) and the body, redacted.
pub fn show(d: &DeadLetter, now: DateTime<Utc>) -> Value {
    let p = &d.properties;
    let s = |x: &Option<lapin::types::ShortString>| x.as_ref().map(|v| v.as_str().to_string());
    let headers = p.headers().as_ref().map(table_json).unwrap_or(json!({}));
    let mut body = match crate::webhook::parse_lenient(&d.body) {
        Ok(v) => v,
        Err(_) => json!(String::from_utf8_lossy(&d.body)),
    };
    redact(&mut body);
    json!({
        "summary": summary_json(d, now),
        "properties": {
            "message_id": s(p.message_id()),
            "content_type": s(p.content_type()),
            "content_encoding": s(p.content_encoding()),
            "correlation_id": s(p.correlation_id()),
            "delivery_mode": p.delivery_mode(),
            "timestamp": p.timestamp(),
            "type": s(p.kind()),
            "app_id": s(p.app_id()),
        },
        "headers": headers,
        "body": body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secret_keys_at_any_depth() {
        let mut v = json!({"a": {"api_key": "k", "Authorization": "Bearer x"},
            "list": [{"password": "p"}], "text": "hello"});
        redact(&mut v);
        assert_eq!(v["a"]["api_key"], REDACTED);
        assert_eq!(v["a"]["Authorization"], REDACTED);
        assert_eq!(v["list"][0]["password"], REDACTED);
        assert_eq!(v["text"], "hello");
    }
}
