//! Logs and traces. Logs: structured `tracing` output on stderr: JSON lines
//! when stderr is not a terminal (a container, a log shipper), human-readable
//! on a terminal or with `--pretty`; `ESCALATOR_LOG_FORMAT=json|text` decides
//! over both ([`LogFormat::choose`]). Level from
//! `RUST_LOG` (default given by the command). Libraries are capped at `info`
//! even when `RUST_LOG` asks for `debug` or `trace` everywhere: at those
//! levels lapin logs every frame, bodies included (emails, transcripts), and
//! the HTTP crates log headers (API tokens). Naming a library in `RUST_LOG`
//! (`RUST_LOG=trace,lapin=trace`) lifts its cap. Traces: when
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

/// Crates whose debug and trace output can hold message bodies, headers or
/// URLs (a directive `x` also covers `x_anything`, e.g. `hyper_util`).
pub const CAPPED_CRATES: &[&str] = &[
    "lapin",
    "amq_protocol",
    "pinky_swear",
    "tcp_stream",
    "async_rs",
    "executor_trait",
    "reactor_trait",
    "redis",
    "hyper",
    "reqwest",
    "h2",
    "http",
    "rustls",
    "tokio_rustls",
    "axum",
    "tower",
    "tower_http",
    "opentelemetry",
    "tracing_opentelemetry",
    "jsonschema",
    "mio",
    "want",
];

/// The level the capped crates get at most.
pub const CAP_LEVEL: &str = "info";

/// `spec` (a `RUST_LOG` value) with the caps added: only when its default
/// level is more verbose than [`CAP_LEVEL`], and not for crates it names.
pub fn capped_directives(spec: &str) -> String {
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let verbose_default = directives.iter().any(|d| {
        matches!(
            d.to_ascii_lowercase().as_str(),
            "debug" | "trace" | "4" | "5"
        )
    });
    let is_level = |d: &str| {
        matches!(
            d.to_ascii_lowercase().as_str(),
            "off"
                | "error"
                | "warn"
                | "info"
                | "debug"
                | "trace"
                | "0"
                | "1"
                | "2"
                | "3"
                | "4"
                | "5"
        )
    };
    if !verbose_default {
        return spec.to_string();
    }
    let targets: Vec<&str> = directives
        .iter()
        .filter(|d| d.contains(['=', '[']) || !is_level(d))
        .filter_map(|d| d.split(['=', '[']).next())
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
        .collect();
    let mut out = directives.join(",");
    for krate in CAPPED_CRATES {
        if targets
            .iter()
            .any(|t| krate.starts_with(t) || t.starts_with(krate))
        {
            continue;
        }
        out.push_str(&format!(",{krate}={CAP_LEVEL}"));
    }
    out
}

fn env_filter(default_level: &str) -> EnvFilter {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default_level.to_string());
    EnvFilter::try_new(capped_directives(&spec)).unwrap_or_else(|e| {
        eprintln!("escalator: RUST_LOG is not a valid filter ({e}): using {default_level}");
        EnvFilter::new(capped_directives(default_level))
    })
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    /// `ESCALATOR_LOG_FORMAT` (`json` or `text`/`pretty`) when set, else
    /// text with `--pretty` or on a terminal, else JSON.
    pub fn choose(env: Option<&str>, pretty_flag: bool, stderr_is_terminal: bool) -> LogFormat {
        match env.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            Some("json") => LogFormat::Json,
            Some("text" | "pretty") => LogFormat::Text,
            _ if pretty_flag || stderr_is_terminal => LogFormat::Text,
            _ => LogFormat::Json,
        }
    }
}

static PRETTY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The command line asked for human-readable logs (`--pretty`).
pub fn prefer_pretty(pretty: bool) {
    PRETTY.store(pretty, std::sync::atomic::Ordering::Relaxed);
}

pub fn init(default_level: &str) -> Telemetry {
    use std::io::IsTerminal;
    let filter = env_filter(default_level);
    let json = LogFormat::choose(
        std::env::var("ESCALATOR_LOG_FORMAT").ok().as_deref(),
        PRETTY.load(std::sync::atomic::Ordering::Relaxed),
        std::io::stderr().is_terminal(),
    ) == LogFormat::Json;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_off_a_terminal_text_on_one_and_the_variable_decides_over_both() {
        assert_eq!(LogFormat::choose(None, false, false), LogFormat::Json);
        assert_eq!(LogFormat::choose(None, false, true), LogFormat::Text);
        assert_eq!(LogFormat::choose(None, true, false), LogFormat::Text);
        assert_eq!(LogFormat::choose(Some("json"), true, true), LogFormat::Json);
        assert_eq!(
            LogFormat::choose(Some("TEXT"), false, false),
            LogFormat::Text
        );
        assert_eq!(
            LogFormat::choose(Some("odd"), false, false),
            LogFormat::Json
        );
    }

    #[test]
    fn caps_libraries_only_when_everything_is_verbose() {
        let trace = capped_directives("trace");
        assert!(trace.starts_with("trace,"), "{trace}");
        assert!(trace.contains(",lapin=info"), "{trace}");
        assert!(trace.contains(",amq_protocol=info"), "{trace}");
        assert!(trace.contains(",hyper=info"), "{trace}");
        assert_eq!(capped_directives("info"), "info");
        assert_eq!(
            capped_directives("warn,escalator=debug"),
            "warn,escalator=debug"
        );
    }

    #[test]
    fn a_crate_named_in_rust_log_keeps_its_level() {
        let d = capped_directives("debug,lapin=trace");
        assert!(
            d.contains("lapin=trace") && !d.contains("lapin=info"),
            "{d}"
        );
        assert!(d.contains(",redis=info"), "{d}");
        // A more specific name covers the crate it belongs to.
        let d = capped_directives("trace,amq_protocol_types=trace");
        assert!(!d.contains("amq_protocol=info"), "{d}");
        assert!(EnvFilter::try_new(d).is_ok());
    }
}
