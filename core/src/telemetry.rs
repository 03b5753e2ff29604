//! Logging and tracing set-up shared by every binary.
//!
//! - Log lines go to stderr. `RUST_LOG` picks the level (default `info`);
//!   `ALLEZON_LOG_FORMAT=json` writes one JSON object per line instead of
//!   text, for log shippers. A line written inside a traced request carries
//!   the request span's `trace_id` in both forms.
//! - Traces go over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is
//!   not `true`. The SDK reads the other standard variables itself:
//!   `OTEL_SERVICE_NAME` (default: the binary's name),
//!   `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//!   `OTEL_TRACES_SAMPLER_ARG`. W3C `traceparent` and `tracestate` are the
//!   propagation format.
//!
//! Tracing off costs a request one relaxed load: every span of ours is
//! created only when [`enabled`] says so (see [`crate::trace`]).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// The target of every span Allezon exports: the trace exporter takes these
/// spans (and warnings and errors, as span events), not the libraries'.
pub const TARGET: &str = "allezon";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: false unless an OTLP endpoint is configured.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The installed pipeline; [`Telemetry::shutdown`] flushes the spans still
/// queued, so the last ones before a SIGTERM reach the collector.
#[must_use = "call shutdown() at the end of main, or the last spans are lost"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter. Runs the blocking
    /// flush off the async workers.
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        ENABLED.store(false, Ordering::Relaxed);
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("trace export shutdown failed: {err}"),
            Err(err) => eprintln!("trace export shutdown failed: {err}"),
        }
    }
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the standard variables ask for trace export.
pub fn configured() -> bool {
    !env_is("OTEL_SDK_DISABLED", "true")
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber, and the trace exporter when configured.
/// Must run inside the Tokio runtime (the exporter is a tonic client). A
/// second call (tests start several servers) installs nothing.
pub fn init(service: &'static str) -> Telemetry {
    let json = env_is("ALLEZON_LOG_FORMAT", "json");
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_filter(filter())
            .boxed()
    };

    let provider = if configured() {
        match exporter(service) {
            Ok(provider) => Some(provider),
            Err(err) => {
                eprintln!("traces are not exported: {err}");
                None
            }
        }
    } else {
        None
    };
    let traces = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(filter_fn(|meta| {
                meta.target() == TARGET || (meta.is_event() && *meta.level() <= LevelFilter::WARN)
            }))
    });
    let installed = Registry::default()
        .with(logs)
        .with(traces)
        .try_init()
        .is_ok();
    if !installed {
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Telemetry { provider: None };
    }
    ENABLED.store(provider.is_some(), Ordering::Relaxed);
    tracing::info!(
        service,
        version = env!("CARGO_PKG_VERSION"),
        traces = provider.is_some(),
        "starting"
    );
    Telemetry { provider }
}

fn exporter(
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the
    // resource's detectors; the binary's name stands in for the first.
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service);
    }
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}
