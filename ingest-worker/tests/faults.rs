//! Faults stay visible: a batch that keeps failing with an internal error
//! of aggregate-svc is retried a bounded number of times, then the worker
//! stops with the error (its process turns unready and ends), while
//! UNAVAILABLE, a service restarting, is retried for as long as it lasts.
//! A worker whose call never returns is stopped by its watchdog.

#![allow(clippy::unwrap_used)] // helpers of the tests fail the test by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use allezon_api::{Aggregates, Ids};
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1 as pb;
use allezon_storage::Store;
use event_log::{EmbeddedLog, EventLog};
use ingest_worker::{Worker, WorkerConfig, WorkerError};
use prost::Message;
use tonic::Status;

struct NamedIds;

#[tonic::async_trait]
impl Ids for NamedIds {
    async fn get_or_create_ids(
        &self,
        request: pb::GetOrCreateIdsRequest,
    ) -> Result<pb::IdsResponse, Status> {
        Ok(pb::IdsResponse {
            ids: (1..=request.names.len() as u32).collect(),
        })
    }
    async fn lookup_ids(&self, request: pb::LookupIdsRequest) -> Result<pb::IdsResponse, Status> {
        Ok(pb::IdsResponse {
            ids: vec![0; request.names.len()],
        })
    }
}

/// Every apply fails with `status`, or never answers when `hang`; counts
/// the attempts.
struct Failing {
    status: fn() -> Status,
    hang: bool,
    applies: AtomicU32,
}

#[tonic::async_trait]
impl Aggregates for Failing {
    async fn apply_deltas(
        &self,
        _: pb::ApplyDeltasRequest,
    ) -> Result<pb::ApplyDeltasResponse, Status> {
        self.applies.fetch_add(1, Ordering::Relaxed);
        if self.hang {
            std::future::pending::<()>().await;
        }
        Err((self.status)())
    }
    async fn query_aggregates(
        &self,
        _: pb::QueryAggregatesRequest,
    ) -> Result<pb::QueryAggregatesResponse, Status> {
        Ok(pb::QueryAggregatesResponse::default())
    }
    async fn get_watermarks(
        &self,
        request: pb::GetWatermarksRequest,
    ) -> Result<pb::GetWatermarksResponse, Status> {
        Ok(pb::GetWatermarksResponse {
            next_offsets: vec![0; request.partitions.len()],
            pending_next_offsets: vec![0; request.partitions.len()],
        })
    }
}

async fn worker_against(
    status: fn() -> Status,
) -> (
    Worker<event_log::EmbeddedConsumer>,
    Arc<Failing>,
    tempfile::TempDir,
) {
    worker_with(status, false, WorkerConfig::default()).await
}

async fn worker_with(
    status: fn() -> Status,
    hang: bool,
    config: WorkerConfig,
) -> (
    Worker<event_log::EmbeddedConsumer>,
    Arc<Failing>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let log = EmbeddedLog::open(&store, 1).unwrap();
    let tag = pb::UserTag {
        time_ms: 1_646_092_800_000,
        cookie: "c".into(),
        country: "PL".into(),
        device: pb::Device::Pc as i32,
        action: pb::Action::View as i32,
        origin: "o".into(),
        product_info: Some(pb::ProductInfo {
            product_id: Some(pb::product_info::ProductId::ProductIdNumber(1)),
            brand_id: "b".into(),
            category_id: "k".into(),
            price: 5,
        }),
    };
    let event = pb::TagEvent {
        tag: Some(tag),
        ..Default::default()
    };
    log.append(b"c", event.encode_to_vec(), &Default::default())
        .await
        .unwrap();
    let failing = Arc::new(Failing {
        status,
        hang,
        applies: AtomicU32::new(0),
    });
    let worker = Worker::new(
        log.consumer("g").unwrap(),
        Arc::new(NamedIds),
        Arc::clone(&failing) as Arc<dyn Aggregates>,
        WorkerConfig {
            linger: Duration::ZERO,
            ..config
        },
    );
    (worker, failing, dir)
}

#[tokio::test]
async fn an_internal_error_that_never_clears_stops_the_worker() {
    let (worker, failing, _dir) = worker_against(|| Status::internal("bad cell")).await;
    let stopped = tokio::time::timeout(Duration::from_secs(120), worker.run(Shutdown::new()))
        .await
        .expect("the worker retried an internal error without end");
    assert!(
        matches!(stopped, Err(WorkerError::Aggregates(_))),
        "{stopped:?}"
    );
    // Retried before giving up: a fault that a restart clears is survived.
    assert!(failing.applies.load(Ordering::Relaxed) > 1);
}

#[tokio::test]
async fn an_unavailable_service_is_waited_for() {
    let (worker, failing, _dir) = worker_against(|| Status::unavailable("restarting")).await;
    let shutdown = Shutdown::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    // Past the attempts an internal error gets (1 + 16 retries), counted in
    // attempts rather than time.
    while failing.applies.load(Ordering::Relaxed) < 18 {
        assert!(!running.is_finished(), "the worker gave up on UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    assert!(running.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_worker_whose_call_never_returns_is_stopped_as_stuck() {
    let config = WorkerConfig {
        stuck_after: Duration::from_secs(2),
        ..WorkerConfig::default()
    };
    let (worker, failing, _dir) = worker_with(|| Status::ok(""), true, config).await;
    let stopped = tokio::time::timeout(
        Duration::from_secs(60),
        ingest_worker::run_watched(worker, Shutdown::new()),
    )
    .await
    .expect("the watchdog never stopped a hung worker");
    assert!(matches!(stopped, Err(WorkerError::Stuck(_))), "{stopped:?}");
    assert_eq!(failing.applies.load(Ordering::Relaxed), 1);
    let metrics = allezon_core::metrics::render();
    assert!(
        metrics.contains("allezon_worker_stuck_total 1"),
        "{metrics}"
    );
}

/// A consumer whose partition has records it never delivers: the log's end
/// is ahead, every poll comes back empty.
struct Silent;

impl event_log::LogConsumer for Silent {
    fn assignment(&self) -> Vec<u32> {
        vec![0]
    }
    fn generation(&self) -> u64 {
        0
    }
    async fn poll(
        &mut self,
        _: usize,
        wait: Duration,
    ) -> Result<Vec<event_log::Record>, event_log::LogError> {
        tokio::time::sleep(wait).await;
        Ok(Vec::new())
    }
    fn seek(&mut self, _: u32, _: u64) -> Result<(), event_log::LogError> {
        Ok(())
    }
    async fn first_offset(&mut self, _: u32) -> Result<u64, event_log::LogError> {
        Ok(0)
    }
    fn end_offset(&self, _: u32) -> Option<u64> {
        Some(10)
    }
    async fn commit(&mut self, _: u32, _: u64) -> Result<(), event_log::LogError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_partition_that_stops_delivering_its_records_stops_the_worker() {
    let aggregates = Arc::new(Failing {
        status: || Status::ok(""),
        hang: false,
        applies: AtomicU32::new(0),
    });
    let worker = Worker::new(
        Silent,
        Arc::new(NamedIds),
        aggregates as Arc<dyn Aggregates>,
        WorkerConfig {
            stuck_after: Duration::from_secs(2),
            ..WorkerConfig::default()
        },
    );
    let stopped = tokio::time::timeout(
        Duration::from_secs(60),
        ingest_worker::run_watched(worker, Shutdown::new()),
    )
    .await
    .expect("a worker whose partition delivers nothing ran on");
    assert!(
        matches!(
            stopped,
            Err(WorkerError::Stalled {
                partition: 0,
                position: 0,
                end: 10,
                ..
            })
        ),
        "{stopped:?}"
    );
}
