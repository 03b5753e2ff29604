//! W3C trace context across our boundaries: HTTP and gRPC headers, Kafka
//! headers and the embedded log's records, and the span links of a worker's
//! batch. Every function here is a no-op unless traces are exported
//! ([`crate::telemetry::enabled`]).

pub mod span;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::telemetry::enabled;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Makes `span` continue the trace of the caller that sent `headers`
/// (`traceparent`, `tracestate`), when there is one.
pub fn continue_from(span: &Span, headers: &http::HeaderMap) {
    if !enabled() || !headers.contains_key(TRACEPARENT) {
        return;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
}

/// Writes `span`'s context into `headers`, for the callee to continue.
pub fn inject(span: &Span, headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Records the trace id on `span`'s `trace_id` field, so that every log
/// line written inside it carries the id.
pub fn record_trace_id(span: &Span) {
    if !enabled() {
        return;
    }
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// A trace context as it travels with a tag through the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    pub traceparent: String,
    pub tracestate: String,
}

impl Carried {
    /// The context of `span`, to be carried.
    pub fn of(span: &Span) -> Self {
        if !enabled() {
            return Self::default();
        }
        let mut headers = http::HeaderMap::new();
        inject(span, &mut headers);
        let get = |key| {
            headers
                .get(key)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            traceparent: get(TRACEPARENT),
            tracestate: get(TRACESTATE),
        }
    }

    /// The span this context names, for a link; `None` when it is empty or
    /// malformed.
    pub fn span_context(&self) -> Option<SpanContext> {
        if !enabled() || self.traceparent.is_empty() {
            return None;
        }
        let mut headers = http::HeaderMap::new();
        let mut injector = HeaderInjector(&mut headers);
        injector.set(TRACEPARENT, self.traceparent.clone());
        if !self.tracestate.is_empty() {
            injector.set(TRACESTATE, self.tracestate.clone());
        }
        let context = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(&headers))
        });
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    }
}

/// Links a span keeps: the SDK's default limit, which drops any beyond it;
/// a batch of 10,000 tags parses no more contexts than will be kept.
pub const MAX_LINKS: usize = 128;

/// Links `span` to the first [`MAX_LINKS`] of `contexts` (the messaging
/// convention for a batch consumer: one batch span, linked to the traces of
/// the messages in it).
pub fn link_all<'a>(span: &Span, contexts: impl IntoIterator<Item = &'a Carried>) {
    if !enabled() {
        return;
    }
    for carried in contexts.into_iter().take(MAX_LINKS) {
        if let Some(context) = carried.span_context() {
            span.add_link(context);
        }
    }
}
