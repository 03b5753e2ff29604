//! Traces over OTLP, received by a real OTLP/gRPC receiver
//! ([`crate::collector`]): one `/user_tags` request is one connected trace,
//! from the HTTP span through its durable write, and the worker's batch
//! span links to it, with children for the id look-up and the aggregate
//! apply; a `/user_profiles` request has its profile-store span. In the
//! all-in-one (in-process calls) here, and across the five processes in
//! [`crate::multiprocess`].

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::aggregates::{Query, query};
use crate::collector::{Collector, Received, find, hex};
use crate::support::{Server, client, eventually, tag};

/// The caller's own trace: the gateway must continue it.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const CALLER_SPAN: &str = "00f067aa0ba902b7";

pub fn traceparent() -> String {
    format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
}

/// Sends one traced tag and one traced profile query.
pub async fn send_traced(client: &reqwest::Client, base: &str, cookie: &str) {
    let t = tag(cookie, "BUY", 1_000, 3);
    let response = client
        .post(format!("{base}/user_tags"))
        .header("traceparent", traceparent())
        .header("tracestate", "caller=1")
        .json(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let response = client
        .post(format!(
            "{base}/user_profiles/{cookie}?time_range=2022-03-01T00:00:00.000_2022-03-01T00:01:00.000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The HTTP server span of `route`, checked against the conventions.
pub fn http_span<'a>(spans: &'a [Received], route: &str, status: &str) -> Option<&'a Received> {
    let name = format!("POST {route}");
    let span = find(spans, &name, |r| r.kind() == SpanKind::Server)?;
    assert_eq!(span.attr("http.route").as_deref(), Some(route));
    assert_eq!(span.attr("http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        span.attr("http.response.status_code").as_deref(),
        Some(status)
    );
    Some(span)
}

/// The worker's batch span that links to `write` (the span that made the
/// tag durable), with `messaging.*` attributes.
pub fn batch_linked_to<'a>(spans: &'a [Received], write: &Received) -> Option<&'a Received> {
    spans.iter().find(|r| {
        r.kind() == SpanKind::Consumer
            && r.span
                .links
                .iter()
                .any(|l| hex(&l.trace_id) == write.trace_id() && hex(&l.span_id) == write.id())
    })
}

#[tokio::test]
async fn one_tag_is_one_connected_trace_in_the_all_in_one() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = collector.env();
    // The default export interval (5 s): what reaches the receiver before
    // the process exits was flushed by the SIGTERM.
    env.retain(|(k, _)| *k != "OTEL_BSP_SCHEDULE_DELAY");
    env.push(("OTEL_SERVICE_NAME", "allezon-under-test".into()));
    env.push((
        "OTEL_RESOURCE_ATTRIBUTES",
        "deployment.environment=test".into(),
    ));
    let server = Server::start_with_env(dir.path(), &env);
    let client = client();
    send_traced(&client, &server.base, "traced").await;
    // Once the tag is counted, the worker's batch span has ended; then
    // stop: the spans still queued must be exported on the way out.
    let counted = Query {
        action: "BUY",
        from: 0,
        to: 1,
        aggregates: &["COUNT"],
        origin: None,
        brand: None,
        category: None,
    };
    eventually(Duration::from_secs(30), || {
        let (client, server) = (&client, &server);
        async move { query(client, server, &counted).await["rows"][0][2] == "1" }
    })
    .await;
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();

    let spans = collector.spans();
    let tags = http_span(&spans, "/user_tags", "204").expect("the /user_tags span");
    assert_eq!(tags.service, "allezon-under-test");
    assert_eq!(tags.trace_id(), TRACE_ID, "continues the caller's trace");
    assert_eq!(tags.parent(), CALLER_SPAN);
    let write = find(&spans, "group_commit profiles+log", |r| r.is_child_of(tags))
        .expect("the durable write under the request");

    let profiles =
        http_span(&spans, "/user_profiles/{cookie}", "200").expect("the /user_profiles span");
    let call = find(&spans, "allezon.v1.ProfileService/GetProfile", |r| {
        r.is_child_of(profiles)
    })
    .expect("the in-process profile call");
    find(&spans, "query profiles", |r| r.is_child_of(call)).expect("the profile store span");

    let batch = batch_linked_to(&spans, write).expect("a batch span linked to the write");
    assert_eq!(batch.span.name, "process user-tags");
    assert_eq!(batch.attr("messaging.system").as_deref(), Some("embedded"));
    assert_eq!(
        batch.attr("messaging.operation.type").as_deref(),
        Some("process")
    );
    let resolve = find(&spans, "resolve ids", |r| r.is_child_of(batch)).expect("id look-up");
    find(&spans, "allezon.v1.IdService/GetOrCreateIds", |r| {
        r.is_child_of(resolve)
    })
    .expect("the id-svc call under the look-up");
    let apply = find(&spans, "allezon.v1.AggregateService/ApplyDeltas", |r| {
        r.is_child_of(batch)
    })
    .expect("the aggregate apply under the batch");
    find(&spans, "apply aggregates", |r| r.is_child_of(apply)).expect("the cell store span");
}

#[tokio::test]
async fn with_tracing_off_nothing_is_exported() {
    let collector = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = collector.env();
    env.push(("OTEL_SDK_DISABLED", "true".into()));
    let server = Server::start_with_env(dir.path(), &env);
    send_traced(&client(), &server.base, "untraced").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(collector.spans().is_empty());
}
