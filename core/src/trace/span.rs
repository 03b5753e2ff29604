//! The spans Allezon exports, named and attributed by the OpenTelemetry
//! semantic conventions (HTTP server, RPC, messaging, database). Each is
//! `Span::none()` while traces are off, so a request pays nothing for them.

use tracing::field::Empty;
use tracing::{Span, info_span};

use crate::telemetry::{TARGET, enabled};

/// Work inside a process with no protocol of its own (a group commit, an
/// in-process service call).
pub fn internal(name: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    info_span!(target: TARGET, "internal", otel.name = name, otel.kind = "internal")
}

/// An HTTP request served, named by its route template (`POST
/// /user_profiles/{cookie}`), never the raw path; `route` is `None` for a
/// path no route matched.
pub fn http_server(method: &str, route: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    info_span!(
        target: TARGET,
        "http",
        otel.name = name.as_str(),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        trace_id = Empty,
    )
}

/// `/package.Service/Method` as the RPC conventions split it.
fn rpc_parts(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// A gRPC call, on the `server` or the client side.
pub fn grpc(server: bool, path: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let (service, method) = rpc_parts(path);
    let name = path.trim_start_matches('/');
    info_span!(
        target: TARGET,
        "grpc",
        otel.name = name,
        otel.kind = if server { "server" } else { "client" },
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        trace_id = Empty,
    )
}

/// A call of a service in this process (the all-in-one): the same name as
/// the gRPC call it stands for, so traces have one shape in both modes.
pub fn in_process(path: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let (service, method) = rpc_parts(path);
    info_span!(
        target: TARGET,
        "in_process",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "internal",
        rpc.system = "in_process",
        rpc.service = service,
        rpc.method = method,
    )
}

/// One operation of a store (`profiles`, `aggregates`, `ids`).
pub fn store(store: &str, operation: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("{operation} {store}");
    info_span!(
        target: TARGET,
        "store",
        otel.name = name.as_str(),
        otel.kind = "client",
        otel.status_code = Empty,
        db.operation.name = operation,
        db.collection.name = store,
    )
}

/// A message sent to the event log (`system` is `kafka` or `embedded`).
pub fn producer(system: &str, destination: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("send {destination}");
    info_span!(
        target: TARGET,
        "produce",
        otel.name = name.as_str(),
        otel.kind = "producer",
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = destination,
    )
}

/// A worker's batch of records of one partition, processed together. Its
/// links (see [`super::link_all`]) lead to the traces that wrote them.
pub fn consumer_batch(system: &str, destination: &str, partition: u32, count: usize) -> Span {
    if !enabled() {
        return Span::none();
    }
    let name = format!("process {destination}");
    info_span!(
        target: TARGET,
        "batch",
        otel.name = name.as_str(),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = destination,
        messaging.destination.partition.id = partition,
        messaging.batch.message_count = count,
        trace_id = Empty,
    )
}

/// Marks `span` failed (the exporter's span status).
pub fn failed(span: &Span) {
    span.record("otel.status_code", "ERROR");
}

#[cfg(test)]
mod tests {
    #[test]
    fn rpc_paths_split_into_service_and_method() {
        assert_eq!(
            super::rpc_parts("/allezon.v1.IdService/LookupIds"),
            ("allezon.v1.IdService", "LookupIds")
        );
        assert_eq!(super::rpc_parts("/odd"), ("odd", ""));
    }
}
