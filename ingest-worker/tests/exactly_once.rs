//! The worker is killed again and again in the middle of its batches; after
//! each restart it must neither lose nor double-count a tag.

#![allow(clippy::unwrap_used)] // helpers of the tests fail the test by panicking

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aggregate_svc::store::{AggregateStore, CellFilter};
use aggregate_svc::{AerospikeAggregateStore, EmbeddedAggregateStore};
use allezon_core::Action;
use allezon_core::cells::Totals;
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1 as pb;
use allezon_storage::Store;
use event_log::{EmbeddedLog, EventLog, LogConsumer, LogError, Record};
use id_svc::{EmbeddedIdStore, IdStore};
use ingest_worker::{Worker, WorkerConfig};
use prost::Message;
use tokio::net::TcpListener;
use tonic::service::Routes;

const TAGS: i64 = 6_000;

fn tag(n: i64) -> pb::UserTag {
    pb::UserTag {
        time_ms: 1_646_092_800_000 + n * 17,
        cookie: format!("c{}", n % 97),
        country: "PL".into(),
        device: pb::Device::Pc as i32,
        action: if n % 3 == 0 {
            pb::Action::Buy
        } else {
            pb::Action::View
        } as i32,
        origin: format!("o{}", n % 5),
        product_info: Some(pb::ProductInfo {
            product_id: Some(pb::product_info::ProductId::ProductIdNumber(n)),
            brand_id: format!("b{}", n % 4),
            category_id: format!("k{}", n % 3),
            // Negative prices and large ones, to exercise the wide form.
            price: ((n * 7919) % 2_000_001 - 1_000_000) as i32 * 1000,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_mid_batch_neither_loses_nor_double_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let aggregates = EmbeddedAggregateStore::open(&store).unwrap();
    kill_and_compare(&store, aggregates).await;
}

/// The same with cells in Aerospike, where a batch is not one atomic write:
/// kills land between the records of a batch, and the restarted worker must
/// re-cut the unfinished batch exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn killing_the_worker_mid_batch_on_aerospike_cells() {
    let cluster = allezon_aerospike::test_cluster("kill").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    kill_and_compare(&store, AerospikeAggregateStore::new(cluster)).await;
}

/// A consumer whose seeks land one poll late, and which hands out a few
/// records from the old position in that poll, as librdkafka did when a
/// seek was refused until the partition's fetcher started. Every other seek,
/// the old position is just ahead of the one sought (a fetcher that had read
/// on). The worker must neither fold those records nor let them shape a
/// batch.
struct LateSeeks<C> {
    inner: C,
    due: Vec<(u32, u64)>,
    seeks: BTreeMap<u32, u64>,
}

impl<C: LogConsumer> LogConsumer for LateSeeks<C> {
    fn assignment(&self) -> Vec<u32> {
        self.inner.assignment()
    }

    fn generation(&self) -> u64 {
        self.inner.generation()
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let mut records = self.inner.poll(max, wait).await?;
        if !self.due.is_empty() {
            let mut kept: BTreeMap<u32, usize> = BTreeMap::new();
            records.retain(|r| {
                let n = kept.entry(r.partition).or_default();
                *n += 1;
                *n <= 3
            });
            for (partition, offset) in self.due.drain(..) {
                self.inner.seek(partition, offset)?;
            }
        }
        Ok(records)
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError> {
        let seeks = self.seeks.entry(partition).or_default();
        *seeks += 1;
        if seeks.is_multiple_of(2) {
            self.inner.seek(partition, offset + 5)?;
        }
        self.due.push((partition, offset));
        Ok(())
    }

    fn end_offset(&self, partition: u32) -> Option<u64> {
        self.inner.end_offset(partition)
    }

    async fn first_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        self.inner.first_offset(partition).await
    }

    async fn commit(&mut self, partition: u32, next_offset: u64) -> Result<(), LogError> {
        self.inner.commit(partition, next_offset).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeks_that_land_late_neither_lose_nor_double_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let aggregates = EmbeddedAggregateStore::open(&store).unwrap();
    kill_and_compare_with(&store, aggregates, true).await;
}

/// With Aerospike cells, a killed worker leaves its batch pending; records
/// from before a late seek, held for the re-cut, once doubled a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn seeks_that_land_late_on_aerospike_cells() {
    let cluster = allezon_aerospike::test_cluster("lateseek").await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    kill_and_compare_with(&store, AerospikeAggregateStore::new(cluster), true).await;
}

/// The multi-process mode: the worker builds the profiles too, from a log
/// in which one tag in seven appears twice (a client that retried). Each
/// tag must end up stored once and counted once, through the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_tags_are_stored_and_counted_once_through_kills() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let aggregates = EmbeddedAggregateStore::open(&store).unwrap();
    run_and_compare(
        &store,
        aggregates,
        Mode {
            late_seeks: false,
            profiles: true,
        },
    )
    .await;
}

#[derive(Clone, Copy)]
struct Mode {
    late_seeks: bool,
    /// The worker writes profiles (and the log holds retried tags).
    profiles: bool,
}

async fn kill_and_compare<S: AggregateStore + Clone>(store: &Store, aggregates: S) {
    kill_and_compare_with(store, aggregates, false).await;
}

async fn kill_and_compare_with<S: AggregateStore + Clone>(
    store: &Store,
    aggregates: S,
    late_seeks: bool,
) {
    let mode = Mode {
        late_seeks,
        profiles: false,
    };
    run_and_compare(store, aggregates, mode).await;
}

/// The tags the log holds, in order: every tag, and with `retries` a second
/// copy of one tag in seven, 50 tags after the first.
fn logged_tags(retries: bool) -> Vec<pb::UserTag> {
    let mut out = Vec::new();
    for n in 0..TAGS {
        out.push(tag(n));
        if retries && n >= 50 && (n - 50) % 7 == 0 {
            out.push(tag(n - 50));
        }
    }
    out
}

async fn run_and_compare<S: AggregateStore + Clone>(store: &Store, aggregates: S, mode: Mode) {
    let Mode {
        late_seeks,
        profiles,
    } = mode;
    let log = EmbeddedLog::open(store, 2).unwrap();
    let ids = EmbeddedIdStore::open(store).unwrap();
    let profile_store = profile_svc::EmbeddedProfileStore::open(store).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let services = Shutdown::new();
    let routes = Routes::new(aggregate_svc::service(Arc::new(aggregates.clone())))
        .add_service(id_svc::service(ids.clone()))
        .add_service(profile_svc::service(profile_store.clone()));
    tokio::spawn(allezon_core::grpc::serve(
        listener,
        routes,
        &[],
        allezon_core::admin::Readiness::started(),
        services.clone(),
        None,
    ));
    let channel = allezon_core::client::channel(&format!("http://{addr}"), None).unwrap();

    for t in logged_tags(profiles) {
        let event = pb::TagEvent {
            tag: Some(t.clone()),
            ..Default::default()
        };
        log.append(
            t.cookie.as_bytes(),
            event.encode_to_vec(),
            &Default::default(),
        )
        .await
        .unwrap();
    }

    // Small batches, so that kills land between apply and commit often.
    let config = WorkerConfig {
        batch_max: 97,
        flush_every: Duration::from_millis(5),
        linger: Duration::from_millis(1),
        ..WorkerConfig::default()
    };
    let mut kills = 0;
    loop {
        // Over gRPC, as in the multi-process mode: a kill may also land
        // between a call's send and its answer.
        let ids_client: Arc<dyn allezon_api::Ids> =
            Arc::new(pb::id_service_client::IdServiceClient::new(channel.clone()));
        let aggregates_client: Arc<dyn allezon_api::Aggregates> = Arc::new(
            pb::aggregate_service_client::AggregateServiceClient::new(channel.clone()),
        );
        let profiles_client: Arc<dyn allezon_api::Profiles> = Arc::new(
            pb::profile_service_client::ProfileServiceClient::new(channel.clone()),
        );
        let build = |worker: Worker<_>| {
            if profiles {
                worker.building_profiles(profiles_client.clone())
            } else {
                worker
            }
        };
        let consumer = log.consumer("ingest").unwrap();
        let shutdown = Shutdown::new();
        let task = if late_seeks {
            let consumer = LateSeeks {
                inner: consumer,
                due: Vec::new(),
                seeks: BTreeMap::new(),
            };
            let worker = Worker::new(
                consumer,
                ids_client.clone(),
                aggregates_client.clone(),
                config.clone(),
            );
            tokio::spawn(worker.run(shutdown.clone()))
        } else {
            let worker = build(Worker::new(
                consumer,
                ids_client.clone(),
                aggregates_client.clone(),
                config.clone(),
            ));
            tokio::spawn(worker.run(shutdown.clone()))
        };
        // A pseudo-random lifetime of 1 to 40 ms, then a hard abort: the task
        // is dropped at whatever await it is in, like a killed process.
        tokio::time::sleep(Duration::from_millis(1 + (kills * 7919) % 40)).await;
        task.abort();
        let _ = task.await;
        kills += 1;
        let done = aggregates.watermarks(&[0, 1]).await.unwrap();
        if done
            .iter()
            .map(|w| w.next)
            .eq([log.end_offset(0), log.end_offset(1)])
        {
            break;
        }
        assert!(kills < 2_000, "the worker makes no progress");
    }
    assert!(
        kills > 3,
        "the test should kill the worker several times, killed {kills}"
    );

    // Compare every filter combination, minute by minute, with a naive model.
    let names = |dim: pb::Dimension, values: Vec<String>| {
        let ids = ids.clone();
        async move {
            let named: Vec<_> = values.iter().map(|v| (dim, v.clone())).collect();
            ids.lookup(named).await.unwrap()
        }
    };
    // Each filter: every known value with its id, and "absent" (id 0).
    let choices = |prefix: &'static str, n: usize, dim: pb::Dimension| {
        let values: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let names = names(dim, values.clone());
        async move {
            let ids = names.await;
            let mut out: Vec<(Option<String>, u32)> =
                values.into_iter().map(Some).zip(ids).collect();
            out.push((None, 0));
            out
        }
    };
    let origins = choices("o", 5, pb::Dimension::Origin).await;
    let brands = choices("b", 4, pb::Dimension::Brand).await;
    let categories = choices("k", 3, pb::Dimension::Category).await;
    let first_minute = 1_646_092_800_000 / 60_000;
    let minutes = (TAGS * 17) / 60_000 + 1;
    for action in Action::ALL {
        for (origin, origin_id) in &origins {
            for (brand, brand_id) in &brands {
                for (category, category_id) in &categories {
                    let filter = CellFilter {
                        action,
                        origin: *origin_id,
                        brand: *brand_id,
                        category: *category_id,
                    };
                    let got = aggregates
                        .query(filter, first_minute, first_minute + minutes)
                        .await
                        .unwrap();
                    let mut want = vec![Totals::default(); minutes as usize];
                    for n in 0..TAGS {
                        let t = tag(n);
                        let info = t.product_info.as_ref().unwrap();
                        let matches = Action::try_from(t.action).unwrap() == action
                            && origin.as_ref().is_none_or(|o| t.origin == *o)
                            && brand.as_ref().is_none_or(|b| info.brand_id == *b)
                            && category.as_ref().is_none_or(|c| info.category_id == *c);
                        if matches {
                            let m = (t.time_ms / 60_000 - first_minute) as usize;
                            want[m].count += 1;
                            want[m].sum += i64::from(info.price);
                        }
                    }
                    assert_eq!(got, want, "{filter:?}");
                }
            }
        }
    }
    if profiles {
        // Every tag stored once, in its cookie's profile.
        let all = allezon_core::query::TimeRange {
            from_ms: i64::MIN,
            to_ms: i64::MAX,
        };
        for cookie in 0..97 {
            let cookie = format!("c{cookie}");
            for action in Action::ALL {
                let mut want: Vec<pb::UserTag> = (0..TAGS)
                    .map(tag)
                    .filter(|t| t.cookie == cookie && Action::try_from(t.action).unwrap() == action)
                    .collect();
                want.sort_by_key(|t| std::cmp::Reverse(t.time_ms));
                let got =
                    profile_svc::ProfileStore::query(&profile_store, &cookie, action, all, 200)
                        .await
                        .unwrap();
                assert_eq!(got, want, "{cookie} {action:?}");
            }
        }
    }
    services.cancel();
}
