//! Logs and traces. Logs: structured `tracing` output on stderr,
//! human-readable by default, JSON with `ESCALATOR_LOG_FORMAT=json`; level from
//! `RUST_LOG` (default given by the command). Traces: when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans (with their `org_id`,
//! `conversation_id`, `provider` fields) are exported over OTLP/HTTP; the
//! standard `OTEL_*` variables configure the exporter.
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter alive; flushes it on drop.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.tracer_provider.take() {
            let _ = p.shutdown();
        }
    }
}

pub fn init(default_level: &str) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("ESCALATOR_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let tracer_provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|_| {
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .build()
            {
                Ok(exporter) => Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(
                            opentelemetry_sdk::Resource::builder()
                                .with_service_name("escalator")
                                .build(),
                        )
                        .build(),
                ),
                Err(e) => {
                    eprintln!("escalator: OTLP trace export disabled: {e}");
                    None
                }
            }
        });
    let otel = tracer_provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("escalator")));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _ = if json {
        registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        registry.with(fmt.compact()).try_init()
    };
    Telemetry { tracer_provider }
}
