//! W3C trace context across the escalator's hops. A producer's
//! `traceparent` AMQP header (https://www.w3.org/TR/trace-context/) stays on
//! the message through the intake, retry and dead-letter hops (their
//! headers are kept), and is handed on while the message is handled: as the
//! `traceparent` header of every provider HTTP request and of every outbound
//! event the message causes.
//!
//! With trace export on (`OTEL_EXPORTER_OTLP_ENDPOINT` set), the span that
//! handles a message (or a webhook at the ingress) becomes a child of the
//! inbound context ([`continue_in`]) and what is handed on names that span:
//! same trace id, the escalator's span id. With export off nothing is
//! recorded and the inbound value is handed on unchanged, so a trace started
//! upstream can still be followed to Zendesk or Salesforce and to the widget.
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

    /// The remote span this value names.
    fn span_context(&self) -> Option<opentelemetry::trace::SpanContext> {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let mut parts = self.0.split('-');
        let _version = parts.next()?;
        let trace = TraceId::from_hex(parts.next()?).ok()?;
        let span = SpanId::from_hex(parts.next()?).ok()?;
        let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
        let cx = SpanContext::new(
            trace,
            span,
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        );
        cx.is_valid().then_some(cx)
    }

    /// The value naming a recorded span (`None` for an invalid context,
    /// e.g. when spans are not exported).
    fn from_span_context(cx: &opentelemetry::trace::SpanContext) -> Option<TraceParent> {
        cx.is_valid().then(|| {
            TraceParent(format!(
                "00-{}-{}-{:02x}",
                cx.trace_id(),
                cx.span_id(),
                cx.trace_flags().to_u8()
            ))
        })
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

/// The context to hand on from here: the current span's when spans are
/// exported, else that of the message being handled by this task, if any.
pub fn current() -> Option<TraceParent> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    TraceParent::from_span_context(cx.span().span_context())
        .or_else(|| CURRENT.try_with(|c| c.clone()).ok().flatten())
}

/// Make `span` (not yet entered) continue `inbound`, when spans are
/// exported; `inbound` is handed on unchanged when they are not.
pub fn continue_in(span: &tracing::Span, inbound: Option<&TraceParent>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(remote) = inbound.and_then(TraceParent::span_context) {
        // Without the OpenTelemetry layer (export off) or for a disabled
        // span this fails, and the inbound value is what `current` gives.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
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
