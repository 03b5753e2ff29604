//! Every Prometheus series Allezon exports, on one registry per process.
//!
//! The families are created and registered together the first time
//! [`metrics`] is called, so `/metrics` lists each of them from the first
//! scrape, at zero, before any traffic; dashboards and alerts then never see
//! a series appear out of nowhere. Each part of the system records through
//! typed methods here rather than naming series itself.
//!
//! Names follow the Prometheus conventions: base units (`_seconds`,
//! `_bytes`), `_total` on counters (added by the encoder), and labels of low
//! cardinality only (a route template, a method, a status code, a
//! partition), never a cookie or a raw URI.

mod process;

use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Latency buckets, in seconds: from 250 µs (an in-memory answer) to 10 s
/// (a client long gone); the contract's 200 ms sits between two buckets.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
    10.0,
];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Counts of things (writers per fsync, records per batch): 1 to 65,536.
fn sizes() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 4.0, 9,
    ))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: EncodeLabelSet + Clone + Eq + std::hash::Hash>(
    make: fn() -> Histogram,
) -> Histograms<L> {
    Family::new_with_constructor(make)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

/// The REST API, recorded by the gateway's middleware around the routes.
#[derive(Debug)]
pub struct Http {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Histograms<RouteLabels>,
    pub in_flight: Gauge,
    pub shed: Counter,
    /// How far behind the ingest workers are, as the gateway measures it
    /// (see `gateway::freshness`).
    pub ingest_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `/package.Service/Method`: a fixed set, from our own protos.
    pub method: String,
    pub code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// One side (server or client) of our gRPC calls.
#[derive(Debug)]
pub struct Grpc {
    pub requests: Family<GrpcLabels, Counter>,
    pub duration: Histograms<MethodLabels>,
}

impl Grpc {
    pub fn record(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        self.requests
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: code_name(code),
            })
            .inc();
        self.duration
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// The canonical upper-case names, as grpc-go and Envoy label them.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StoreLabels {
    /// `profiles`, `aggregates` or `ids`.
    pub store: &'static str,
    pub operation: &'static str,
}

/// The profile, aggregate and id stores, embedded or on Aerospike, and the
/// embedded engine's group commit under them.
#[derive(Debug)]
pub struct Stores {
    pub duration: Histograms<StoreLabels>,
    pub errors: Family<StoreLabels, Counter>,
    pub fsync_duration: Histogram,
    pub fsync_writers: Histogram,
    /// Bytes of a keyspace's tables on disk (journals not included).
    pub disk: Family<KeyspaceLabels, Gauge>,
    /// Tables in a keyspace's first level: a pile of them means compaction
    /// is behind, and the engine slows writes once they form 20 runs.
    pub l0_tables: Family<KeyspaceLabels, Gauge>,
    /// Bytes of an engine's journals on disk.
    pub journal: Family<EngineLabels, Gauge>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KeyspaceLabels {
    /// A keyspace of the embedded engine: `profiles`, `event_log`, ...
    pub keyspace: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EngineLabels {
    /// The engine's data directory, as given.
    pub engine: String,
}

impl Stores {
    /// Runs one store operation, recording how long it took and whether it
    /// failed.
    pub async fn time<T, E>(
        &self,
        store: &'static str,
        operation: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        use tracing::Instrument as _;
        let span = crate::trace::span::store(store, operation);
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        if result.is_err() {
            crate::trace::span::failed(&span);
        }
        let labels = StoreLabels { store, operation };
        self.duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            self.errors.get_or_create(&labels).inc();
        }
        result
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LogLabels {
    /// `kafka` or `embedded`.
    pub log: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The event log's write side.
#[derive(Debug)]
pub struct Log {
    pub produce_duration: Histograms<LogLabels>,
    pub produce_errors: Family<LogLabels, Counter>,
    /// Producers replaced after a fatal error (the idempotent producer's
    /// state lost, e.g. a broker that forgot it).
    pub producer_rebuilds: Counter,
}

/// The ingest worker.
#[derive(Debug)]
pub struct Worker {
    pub lag: Family<PartitionLabels, Gauge>,
    /// Log partitions this worker's consumer holds now.
    pub assigned_partitions: Gauge,
    pub batch_size: Histogram,
    pub fold_duration: Histogram,
    pub apply_duration: Histogram,
    pub batches: Counter,
    pub records: Counter,
    pub conflicts: Counter,
    pub retries: Counter,
    pub duplicates: Counter,
    pub stale: Counter,
    pub id_cache: Family<ResultLabels, Counter>,
    /// Worker tasks that ended other than by shutdown.
    pub failures: Counter,
    /// Workers stopped because their loop stopped coming round.
    pub stuck: Counter,
    /// Partitions found restarted below their watermark, and counted again
    /// from the new log's start.
    pub log_rebases: Counter,
}

/// The aggregate cells.
#[derive(Debug)]
pub struct Aggregates {
    pub cells_written: Counter,
    pub cells_dropped: Counter,
}

/// Every family of this process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Tags answered by the gateway: `accepted` (204) or `failed` (5xx).
    pub tags: Family<ResultLabels, Counter>,
    pub http: Http,
    pub grpc_server: Grpc,
    pub grpc_client: Grpc,
    pub stores: Stores,
    pub log: Log,
    pub worker: Worker,
    pub aggregates: Aggregates,
}

/// The process's metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The `Content-Type` of [`render`]'s answer.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Everything registered, in the Prometheus text format 0.0.4: what every
/// Prometheus scrapes, and what `promtool check metrics` reads.
pub fn render() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &metrics().registry);
    out
}

impl Metrics {
    fn new() -> Self {
        // The process series keep their standard unprefixed names.
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector));
        let root = registry.sub_registry_with_prefix("allezon");

        let tags = Family::default();
        root.register(
            "tags",
            "Tags answered by the gateway, by result: accepted (204) or failed (5xx)",
            tags.clone(),
        );

        let http = Http {
            requests: Family::default(),
            duration: histograms(latency),
            in_flight: Gauge::default(),
            shed: Counter::default(),
            ingest_lag: Gauge::default(),
        };
        {
            let r = root.sub_registry_with_prefix("http");
            r.register(
                "requests",
                "HTTP requests answered, by route template, method and status",
                http.requests.clone(),
            );
            r.register_with_unit(
                "request_duration",
                "Time to answer an HTTP request, by route template",
                Unit::Seconds,
                http.duration.clone(),
            );
            r.register(
                "requests_in_flight",
                "HTTP requests being served now",
                http.in_flight.clone(),
            );
            r.register(
                "requests_shed",
                "HTTP requests refused at once with 503 because too many were in flight",
                http.shed.clone(),
            );
        }
        root.register_with_unit(
            "ingest_lag",
            "Age of the oldest tag the ingest workers have not applied yet, as the gateway measures it",
            Unit::Seconds,
            http.ingest_lag.clone(),
        );

        let grpc = |side: &str, root: &mut Registry| {
            let grpc = Grpc {
                requests: Family::default(),
                duration: histograms(latency),
            };
            let r = root.sub_registry_with_prefix(format!("grpc_{side}"));
            r.register(
                "requests",
                format!("gRPC calls ({side} side), by method and status code"),
                grpc.requests.clone(),
            );
            r.register_with_unit(
                "request_duration",
                format!("Time of a gRPC call ({side} side), by method"),
                Unit::Seconds,
                grpc.duration.clone(),
            );
            grpc
        };
        let grpc_server = grpc("server", root);
        let grpc_client = grpc("client", root);

        let stores = Stores {
            duration: histograms(latency),
            errors: Family::default(),
            fsync_duration: latency(),
            fsync_writers: sizes(),
            disk: Family::default(),
            l0_tables: Family::default(),
            journal: Family::default(),
        };
        {
            let r = root.sub_registry_with_prefix("store");
            r.register_with_unit(
                "operation_duration",
                "Time of a store operation, by store and operation",
                Unit::Seconds,
                stores.duration.clone(),
            );
            r.register(
                "errors",
                "Store operations that failed, by store and operation",
                stores.errors.clone(),
            );
            r.register_with_unit(
                "fsync_duration",
                "Time of one group-commit fsync of the embedded engine's journal",
                Unit::Seconds,
                stores.fsync_duration.clone(),
            );
            r.register(
                "fsync_writers",
                "Writers made durable by one group-commit fsync",
                stores.fsync_writers.clone(),
            );
            r.register_with_unit(
                "disk",
                "Bytes of an embedded keyspace's tables on disk, journals not included",
                Unit::Bytes,
                stores.disk.clone(),
            );
            r.register(
                "l0_tables",
                "Tables in an embedded keyspace's first level; the engine slows writes once they form 20 runs",
                stores.l0_tables.clone(),
            );
            r.register_with_unit(
                "journal",
                "Bytes allocated on disk to an embedded engine's journals",
                Unit::Bytes,
                stores.journal.clone(),
            );
        }

        let log = Log {
            produce_duration: histograms(latency),
            produce_errors: Family::default(),
            producer_rebuilds: Counter::default(),
        };
        {
            let r = root.sub_registry_with_prefix("log");
            r.register_with_unit(
                "produce_duration",
                "Time to append a tag to the event log until it is durable, by log",
                Unit::Seconds,
                log.produce_duration.clone(),
            );
            r.register(
                "produce_errors",
                "Appends to the event log that failed, by log",
                log.produce_errors.clone(),
            );
            r.register(
                "producer_rebuilds",
                "Kafka producers replaced after a fatal error",
                log.producer_rebuilds.clone(),
            );
        }

        let worker = Worker {
            lag: Family::default(),
            assigned_partitions: Gauge::default(),
            batch_size: sizes(),
            fold_duration: latency(),
            apply_duration: latency(),
            batches: Counter::default(),
            records: Counter::default(),
            conflicts: Counter::default(),
            retries: Counter::default(),
            duplicates: Counter::default(),
            stale: Counter::default(),
            id_cache: Family::default(),
            failures: Counter::default(),
            stuck: Counter::default(),
            log_rebases: Counter::default(),
        };
        {
            let r = root.sub_registry_with_prefix("worker");
            r.register(
                "consumer_lag_records",
                "Records of a log partition not yet applied: the log's end minus the worker's position",
                worker.lag.clone(),
            );
            r.register(
                "assigned_partitions",
                "Log partitions this worker holds now (its consumer group's last assignment); 0 between a revocation and the next assignment",
                worker.assigned_partitions.clone(),
            );
            r.register(
                "batch_size_records",
                "Log records in one applied batch",
                worker.batch_size.clone(),
            );
            r.register_with_unit(
                "fold_duration",
                "Time to fold one batch into cell deltas",
                Unit::Seconds,
                worker.fold_duration.clone(),
            );
            r.register_with_unit(
                "apply_duration",
                "Time to apply one batch's deltas at aggregate-svc (and its tags at profile-svc)",
                Unit::Seconds,
                worker.apply_duration.clone(),
            );
            r.register(
                "batches",
                "Batches applied to aggregate-svc (replays included) and committed",
                worker.batches.clone(),
            );
            r.register(
                "records",
                "Log records folded in applied batches",
                worker.records.clone(),
            );
            r.register(
                "conflicts",
                "Batches refused because the partition moved on (rebalance or restart)",
                worker.conflicts.clone(),
            );
            r.register(
                "retries",
                "Batch applications retried after a transient error",
                worker.retries.clone(),
            );
            r.register(
                "duplicate_tags",
                "Tags read from the log but not counted: the same tag was stored earlier in the log",
                worker.duplicates.clone(),
            );
            r.register(
                "stale_records",
                "Records dropped because they came before the partition's position (fetched before a seek, or delivered again after one)",
                worker.stale.clone(),
            );
            r.register(
                "id_cache_lookups",
                "Origin, brand and category names looked up in the worker's id cache, by result: hit or miss",
                worker.id_cache.clone(),
            );
            r.register(
                "failures",
                "Worker tasks that stopped on an error instead of a shutdown",
                worker.failures.clone(),
            );
            r.register(
                "stuck",
                "Workers stopped because their loop made no progress for too long",
                worker.stuck.clone(),
            );
            r.register(
                "log_rebases",
                "Partitions whose log restarted below the applied watermark (a broker that forgot it, a topic re-created), counted again from the new start",
                worker.log_rebases.clone(),
            );
        }

        let aggregates = Aggregates {
            cells_written: Counter::default(),
            cells_dropped: Counter::default(),
        };
        {
            let r = root.sub_registry_with_prefix("aggregate");
            r.register(
                "cells_written",
                "Cell increments applied to the aggregate store (one per minute, action and filter combination a batch touched)",
                aggregates.cells_written.clone(),
            );
            r.register(
                "cells_dropped",
                "Aggregate cells deleted by the 24-hour retention sweep of the embedded store (Aerospike expires cells by TTL)",
                aggregates.cells_dropped.clone(),
            );
        }

        // Label sets known up front are listed at zero from the start.
        for result in ["accepted", "failed"] {
            let _ = tags.get_or_create(&ResultLabels { result });
        }
        for result in ["hit", "miss"] {
            let _ = worker.id_cache.get_or_create(&ResultLabels { result });
        }
        Self {
            registry,
            tags,
            http,
            grpc_server,
            grpc_client,
            stores,
            log,
            worker,
            aggregates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_listed_before_any_traffic_and_move_when_recorded() {
        let before = render();
        // Families without labels, or with label sets known up front; the
        // others appear with their first series.
        for family in [
            "allezon_tags_total",
            "allezon_http_requests_in_flight",
            "allezon_store_fsync_writers",
            "allezon_worker_batch_size_records",
            "allezon_worker_id_cache_lookups_total",
            "allezon_aggregate_cells_written_total",
            "process_resident_memory_bytes",
        ] {
            assert!(
                before.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{before}"
            );
        }
        metrics()
            .grpc_client
            .record("/t.S/M", tonic::Code::Unavailable, Duration::from_millis(3));
        let after = render();
        assert!(
            after.contains(
                "allezon_grpc_client_requests_total{method=\"/t.S/M\",code=\"UNAVAILABLE\"} 1"
            ),
            "{after}"
        );
    }
}
