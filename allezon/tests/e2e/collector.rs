//! A real OTLP/gRPC trace receiver for the tests: opentelemetry-proto's
//! tonic service, keeping every span it is sent, with the name of the
//! service that sent it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
pub use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

/// A span, and the `service.name` of the process that exported it.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            })
    }

    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn is_child_of(&self, parent: &Received) -> bool {
        self.span.trace_id == parent.span.trace_id
            && self.span.parent_span_id == parent.span.span_id
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

pub struct Collector {
    pub addr: SocketAddr,
    received: Receiver,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Receiver::default();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Collector { addr, received }
    }

    /// The variables that make a process export here, at once and all.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", self.addr),
            ),
            ("OTEL_TRACES_SAMPLER", "always_on".into()),
            // Export every 200 ms rather than every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "200".into()),
        ]
    }

    pub fn spans(&self) -> Vec<Received> {
        self.received.0.lock().unwrap().clone()
    }

    /// Waits until `pick` finds what it needs among the spans received.
    pub async fn wait_for<T>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&[Received]) -> Option<T>,
    ) -> T {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(found) = pick(&self.spans()) {
                return found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "spans not received within {within:?}; got:\n{}",
                self.spans()
                    .iter()
                    .map(|r| format!(
                        "  {} {} {:?} trace={} id={} parent={}",
                        r.service,
                        r.span.name,
                        r.kind(),
                        r.trace_id(),
                        r.id(),
                        r.parent()
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The one span named `name` (from `service`, when given) that satisfies
/// `also`.
pub fn find<'a>(
    spans: &'a [Received],
    name: &str,
    also: impl Fn(&Received) -> bool,
) -> Option<&'a Received> {
    spans.iter().find(|r| r.span.name == name && also(r))
}
