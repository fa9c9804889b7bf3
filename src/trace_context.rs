//! W3C trace context across the escalator's hops. A producer's
//! `traceparent` AMQP header (https://www.w3.org/TR/trace-context/) stays on
//! the message through the intake, retry and dead-letter hops (their
//! headers are kept), and is handed on while the message is handled: as the
//! `traceparent` header of every provider HTTP request and of every outbound
//! event the message causes. The escalator forwards it unchanged (it does
//! not add span ids of its own yet), so a trace started upstream can be
//! followed to Zendesk or Salesforce and to the widget.
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// The header's name, in AMQP and HTTP alike.
pub const TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static CURRENT: Option<TraceParent>;
}

/// A well-formed `traceparent` value (version 00 layout, ids not all zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// Parse a header value; anything malformed is dropped (the spec says
    /// to restart the trace rather than forward a broken one).
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim().to_ascii_lowercase();
        let parts: Vec<&str> = v.split('-').collect();
        let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
        let nonzero = |s: &str| s.chars().any(|c| c != '0');
        match parts.as_slice() {
            [version, trace, span, flags, ..]
                if hex(version, 2)
                    && *version != "ff"
                    && hex(trace, 32)
                    && nonzero(trace)
                    && hex(span, 16)
                    && nonzero(span)
                    && hex(flags, 2)
                    && (*version != "00" || parts.len() == 4) =>
            {
                Some(TraceParent(v))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trace id, for log fields.
    pub fn trace_id(&self) -> &str {
        self.0.split('-').nth(1).unwrap_or_default()
    }
}

/// The `traceparent` header of an AMQP message, if well-formed.
pub fn from_amqp(props: &BasicProperties) -> Option<TraceParent> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(TRACEPARENT)? {
        AMQPValue::LongString(s) => TraceParent::parse(&String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => TraceParent::parse(s.as_str()),
        _ => None,
    }
}

/// Run `fut` with `trace` as the context of the message being handled.
pub async fn scope<F: std::future::Future>(trace: Option<TraceParent>, fut: F) -> F::Output {
    CURRENT.scope(trace, fut).await
}

/// The context of the message being handled by this task, if any.
pub fn current() -> Option<TraceParent> {
    CURRENT.try_with(|c| c.clone()).ok().flatten()
}

/// `props` carrying the current context (unchanged when there is none).
pub fn onto_amqp(props: BasicProperties) -> BasicProperties {
    with_trace(props, current().as_ref())
}

/// `props` carrying `trace` (unchanged when `None`).
pub fn with_trace(props: BasicProperties, trace: Option<&TraceParent>) -> BasicProperties {
    let Some(trace) = trace else {
        return props;
    };
    let mut headers: FieldTable = props.headers().clone().unwrap_or_default();
    headers.insert(
        ShortString::from(TRACEPARENT),
        AMQPValue::LongString(LongString::from(trace.as_str().as_bytes().to_vec())),
    );
    props.with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn well_formed_values_parse_and_broken_ones_are_dropped() {
        let t = TraceParent::parse(GOOD).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceParent::parse(&GOOD.to_uppercase()).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_context_is_set_only_inside_its_scope() {
        assert!(current().is_none());
        let t = TraceParent::parse(GOOD);
        let inside = scope(t.clone(), async { current() }).await;
        assert_eq!(inside, t);
        let props = scope(t, async { onto_amqp(BasicProperties::default()) }).await;
        assert_eq!(from_amqp(&props).unwrap().as_str(), GOOD);
        assert!(from_amqp(&onto_amqp(BasicProperties::default())).is_none());
    }
}
