//! Traces across the five processes (gateway, profile-svc, aggregate-svc,
//! id-svc and an ingest worker, over gRPC and Kafka on tansu), all
//! exporting to one OTLP receiver: the W3C context crosses gRPC metadata and
//! Kafka headers, so one `/user_tags` request and the worker batch that
//! folds it join up, with the services' server spans under the callers'
//! client spans. Every binary's /metrics then passes promtool and shows its
//! part of the work.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::collector::{Collector, Received, find};
use crate::multiprocess::{Proc, free_port, s, spawn_with_env};
use crate::observability::{promtool_check, sample, scrape};
use crate::support::{Server, client, wait_ready};
use crate::tracing::{CALLER_SPAN, TRACE_ID, batch_linked_to, http_span, send_traced};

/// The server span, in `service`, that answers the client span `call`.
fn served<'a>(spans: &'a [Received], service: &str, call: &Received) -> Option<&'a Received> {
    spans.iter().find(|r| {
        r.service == service
            && r.kind() == SpanKind::Server
            && r.span.name == call.span.name
            && r.is_child_of(call)
    })
}

fn client_call<'a>(spans: &'a [Received], name: &str, parent: &Received) -> Option<&'a Received> {
    find(spans, name, |r| {
        r.kind() == SpanKind::Client && r.is_child_of(parent)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_export_one_connected_trace_per_tag() {
    let brokers = event_log::test_brokers()
        .expect("ALLEZON_TEST_KAFKA_BROKERS is not set: run ./scripts/test.sh, which starts tansu");
    let collector = Collector::start().await;
    let env = |service: &str| {
        let mut env = collector.env();
        env.push(("OTEL_SERVICE_NAME", service.to_owned()));
        env
    };
    let dir = tempfile::tempdir().unwrap();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("traced-{}-{nanos}", std::process::id());
    let mut procs = Vec::new();
    let mut endpoints = Vec::new();
    let mut admins = Vec::new();
    for bin in ["profile-svc", "aggregate-svc", "id-svc"] {
        let (port, admin) = (free_port(), free_port());
        endpoints.push(format!("http://127.0.0.1:{port}"));
        admins.push((bin, admin));
        let args = [
            s("--grpc-addr"),
            format!("127.0.0.1:{port}"),
            s("--data-dir"),
            dir.path().join(bin).display().to_string(),
            s("--admin-addr"),
            format!("127.0.0.1:{admin}"),
        ];
        procs.push(Proc(spawn_with_env(bin, &args, &env(bin))));
    }
    let common = [
        s("--kafka-brokers"),
        brokers.clone(),
        s("--kafka-topic"),
        topic.clone(),
        s("--kafka-create-partitions"),
        s(2),
        s("--profile-svc"),
        endpoints[0].clone(),
        s("--aggregate-svc"),
        endpoints[1].clone(),
        s("--id-svc"),
        endpoints[2].clone(),
    ];
    let worker_admin = free_port();
    let mut worker = vec![
        s("--kafka-group"),
        format!("workers-{topic}"),
        s("--admin-addr"),
        format!("127.0.0.1:{worker_admin}"),
    ];
    worker.extend(common.iter().cloned());
    procs.push(Proc(spawn_with_env(
        "ingest-worker",
        &worker,
        &env("ingest-worker"),
    )));
    let (http_port, gateway_admin) = (free_port(), free_port());
    let mut gateway = vec![
        s("--http-addr"),
        format!("127.0.0.1:{http_port}"),
        s("--admin-addr"),
        format!("127.0.0.1:{gateway_admin}"),
    ];
    gateway.extend(common.iter().cloned());
    let server = Server::attach(
        spawn_with_env("gateway", &gateway, &env("gateway")),
        format!("http://127.0.0.1:{http_port}"),
    );
    let client = client();
    for admin in [gateway_admin, worker_admin] {
        wait_ready(&client, admin).await;
    }

    send_traced(&client, &server.base, "traced5").await;

    let (tags, produce) = collector
        .wait_for(Duration::from_secs(30), |spans| {
            let tags = http_span(spans, "/user_tags", "204")?;
            let produce = find(spans, &format!("send {topic}"), |r| r.is_child_of(tags))?;
            Some((tags.clone(), produce.clone()))
        })
        .await;
    assert_eq!(tags.service, "gateway");
    assert_eq!(
        (tags.trace_id().as_str(), tags.parent().as_str()),
        (TRACE_ID, CALLER_SPAN)
    );
    assert_eq!(produce.kind(), SpanKind::Producer);
    assert_eq!(produce.attr("messaging.system").as_deref(), Some("kafka"));

    // The worker's batch links to the produce span (through the Kafka
    // record); under it, each call to a service has that service's server
    // span, and the store span under that.
    collector
        .wait_for(Duration::from_secs(30), |spans| {
            let batch = batch_linked_to(spans, &produce)?;
            assert_eq!(batch.service, "ingest-worker");
            assert_eq!(batch.attr("messaging.system").as_deref(), Some("kafka"));
            assert_eq!(
                batch.attr("messaging.destination.name").as_deref(),
                Some(topic.as_str())
            );
            let append = client_call(spans, "allezon.v1.ProfileService/AppendTags", batch)?;
            let stored = served(spans, "profile-svc", append)?;
            find(spans, "append profiles", |r| r.is_child_of(stored))?;
            let resolve = find(spans, "resolve ids", |r| r.is_child_of(batch))?;
            let ids = client_call(spans, "allezon.v1.IdService/GetOrCreateIds", resolve)?;
            served(spans, "id-svc", ids)?;
            let apply = client_call(spans, "allezon.v1.AggregateService/ApplyDeltas", batch)?;
            let applied = served(spans, "aggregate-svc", apply)?;
            find(spans, "apply aggregates", |r| r.is_child_of(applied)).map(|_| ())
        })
        .await;

    // The profile query: the gateway's client span, profile-svc's server
    // span under it, and the store read under that.
    collector
        .wait_for(Duration::from_secs(30), |spans| {
            let profiles = http_span(spans, "/user_profiles/{cookie}", "200")?;
            let call = client_call(spans, "allezon.v1.ProfileService/GetProfile", profiles)?;
            let served = served(spans, "profile-svc", call)?;
            assert_eq!(served.attr("rpc.system").as_deref(), Some("grpc"));
            find(spans, "query profiles", |r| r.is_child_of(served)).map(|_| ())
        })
        .await;

    // Every binary's /metrics passes promtool, and shows its part of the
    // work.
    admins.push(("ingest-worker", worker_admin));
    admins.push(("gateway", gateway_admin));
    for (bin, admin) in admins {
        let metrics = scrape(&client, &format!("http://127.0.0.1:{admin}")).await;
        promtool_check(&metrics);
        let moved: &[&str] = match bin {
            "gateway" => &[
                "allezon_http_requests_total{route=\"/user_tags\",method=\"POST\",status=\"204\"}",
                "allezon_log_produce_duration_seconds_count{log=\"kafka\"}",
                "allezon_grpc_client_requests_total{method=\"/allezon.v1.ProfileService/GetProfile\",code=\"OK\"}",
            ],
            "ingest-worker" => &[
                "allezon_worker_batches_total",
                "allezon_worker_apply_duration_seconds_count",
                "allezon_grpc_client_requests_total{method=\"/allezon.v1.AggregateService/ApplyDeltas\",code=\"OK\"}",
            ],
            "profile-svc" => &[
                "allezon_grpc_server_requests_total{method=\"/allezon.v1.ProfileService/AppendTags\",code=\"OK\"}",
                "allezon_store_operation_duration_seconds_count{store=\"profiles\",operation=\"append\"}",
                "allezon_store_fsync_duration_seconds_count",
            ],
            "aggregate-svc" => &[
                "allezon_grpc_server_requests_total{method=\"/allezon.v1.AggregateService/ApplyDeltas\",code=\"OK\"}",
                "allezon_aggregate_cells_written_total",
            ],
            _ => &[
                "allezon_grpc_server_requests_total{method=\"/allezon.v1.IdService/GetOrCreateIds\",code=\"OK\"}",
            ],
        };
        for series in moved {
            let value = sample(&metrics, series)
                .unwrap_or_else(|| panic!("{bin}: {series} missing:\n{metrics}"));
            assert!(value >= 1.0, "{bin}: {series} = {value}");
        }
        assert!(sample(&metrics, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    }
    drop(procs);
}
