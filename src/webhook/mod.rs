//! Webhook bodies as providers deliver them: parsed strictly as JSON, and
//! leniently (JSON5: trailing commas, comments) when an admin pasted a body
//! such as the session-end trigger's `{"ticket_id": "..", "type": "..",}`.
pub mod zendesk;

/// A body that is not JSON even leniently. Says where, never what (the
/// body may carry customer data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the body is not JSON (not even with trailing commas allowed): {what}")]
pub struct NotJson {
    pub what: String,
}

/// Parse a webhook body: strict JSON, else JSON5 (a superset that allows
/// the trailing commas and comments people paste into trigger bodies).
pub fn parse_lenient(body: &[u8]) -> Result<serde_json::Value, NotJson> {
    let strict = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let text = std::str::from_utf8(body).map_err(|e| NotJson {
        what: format!("not UTF-8 (byte {})", e.valid_up_to()),
    })?;
    json5::from_str::<serde_json::Value>(text).map_err(|_| NotJson {
        what: format!(
            "syntax error at line {}, column {}",
            strict.line(),
            strict.column()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_body_with_its_trailing_comma_is_accepted() {
        let body = b"{\n\"ticket_id\": \"42\",\n\"type\": \"fv:conversation_closed\",\n}";
        let v = parse_lenient(body).unwrap();
        assert_eq!(v["ticket_id"], "42");
        assert_eq!(v["type"], "fv:conversation_closed");
    }

    #[test]
    fn strict_json_keeps_its_numbers_exact() {
        let v = parse_lenient(br#"{"id": 12345678901234567}"#).unwrap();
        assert_eq!(v["id"].as_u64(), Some(12345678901234567));
    }

    #[test]
    fn garbage_is_refused_with_a_position_but_not_the_text() {
        let err = parse_lenient(b"{\"email\": \"a@b.example\" oops").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(!err.to_string().contains("a@b.example"), "{err}");
        assert!(parse_lenient(&[0xff, 0xfe]).is_err());
    }
}
