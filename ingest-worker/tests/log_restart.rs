//! A log that restarts below the watermark: a broker that forgot its topic
//! (a test broker restarted empty, a cluster rebuilt under the same
//! address), or a topic re-created. The new log's offsets start again at 0,
//! below what aggregate-svc recorded as applied; its records are new tags,
//! and must be counted, not skipped as already applied.

#![allow(clippy::unwrap_used)] // helpers of the tests fail the test by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use aggregate_svc::store::{AggregateStore, CellFilter};
use aggregate_svc::{AggregateGrpc, EmbeddedAggregateStore};
use allezon_api::InProcess;
use allezon_core::Action;
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1 as pb;
use allezon_storage::Store;
use event_log::{EmbeddedLog, EventLog};
use id_svc::{EmbeddedIdStore, IdGrpc};
use ingest_worker::{Worker, WorkerConfig};
use prost::Message;

fn tag(n: i64) -> pb::UserTag {
    pb::UserTag {
        time_ms: 1_646_092_800_000 + n,
        cookie: format!("c{n}"),
        country: "PL".into(),
        device: pb::Device::Pc as i32,
        action: pb::Action::View as i32,
        origin: "o".into(),
        product_info: Some(pb::ProductInfo {
            product_id: Some(pb::product_info::ProductId::ProductIdNumber(n)),
            brand_id: "b".into(),
            category_id: "k".into(),
            price: 10,
        }),
    }
}

async fn append(log: &EmbeddedLog, tags: std::ops::Range<i64>) {
    for n in tags {
        let event = pb::TagEvent {
            tag: Some(tag(n)),
            ..Default::default()
        };
        log.append(b"one-partition", event.encode_to_vec(), &Default::default())
            .await
            .unwrap();
    }
}

/// Runs a worker on `log` until aggregate-svc's watermark of partition 0
/// reaches `until`, or fails after 60 s.
async fn count(
    log: &EmbeddedLog,
    ids: &InProcess<IdGrpc<EmbeddedIdStore>>,
    aggregates: &Arc<EmbeddedAggregateStore>,
    until: u64,
) {
    let worker = Worker::new(
        log.consumer("ingest").unwrap(),
        Arc::new(ids.clone()),
        Arc::new(InProcess::new(AggregateGrpc::new(Arc::clone(aggregates)))),
        WorkerConfig {
            linger: Duration::from_millis(1),
            ..WorkerConfig::default()
        },
    );
    let shutdown = Shutdown::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while aggregates.watermarks(&[0]).await.unwrap()[0].next != until {
        assert!(
            Instant::now() < deadline,
            "the worker did not reach {until}"
        );
        assert!(!task.is_finished(), "the worker stopped: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn counted(aggregates: &EmbeddedAggregateStore) -> u64 {
    let filter = CellFilter {
        action: Action::View,
        origin: 0,
        brand: 0,
        category: 0,
    };
    let minute = 1_646_092_800_000 / 60_000;
    aggregates.query(filter, minute, minute + 1).await.unwrap()[0].count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_restarted_below_the_watermark_is_counted_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("stores")).unwrap();
    let aggregates = Arc::new(EmbeddedAggregateStore::open(&store).unwrap());
    let ids = InProcess::new(IdGrpc::new(EmbeddedIdStore::open(&store).unwrap()));

    let old = Store::open(&dir.path().join("old-log")).unwrap();
    let old_log = EmbeddedLog::open(&old, 1).unwrap();
    append(&old_log, 0..50).await;
    count(&old_log, &ids, &aggregates, 50).await;
    assert_eq!(counted(&aggregates).await, 50);

    // The broker forgot everything: a new, empty log, whose offsets start
    // at 0 again, below the watermark of 50.
    let new = Store::open(&dir.path().join("new-log")).unwrap();
    let new_log = EmbeddedLog::open(&new, 1).unwrap();
    append(&new_log, 50..70).await;
    count(&new_log, &ids, &aggregates, 20).await;
    assert_eq!(counted(&aggregates).await, 70);
    let metrics = allezon_core::metrics::render();
    assert!(
        metrics.contains("allezon_worker_log_rebases_total 1"),
        "{metrics}"
    );

    // And on from there, as any log: no second rebase.
    append(&new_log, 70..75).await;
    count(&new_log, &ids, &aggregates, 25).await;
    assert_eq!(counted(&aggregates).await, 75);
    let metrics = allezon_core::metrics::render();
    assert!(
        metrics.contains("allezon_worker_log_rebases_total 1"),
        "{metrics}"
    );
}
