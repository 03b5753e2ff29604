//! The all-in-one Allezon: the gateway and every service in one process, on
//! the embedded backends, sharing one storage engine in one data directory.
//!
//! `cargo run --release` at the repository root starts it on
//! `127.0.0.1:8080`. The gateway and the worker call the services in this
//! process directly, through the same traits that are gRPC clients when the
//! services run apart (`allezon-api`); the gRPC server still runs, for
//! `grpcurl` and outside callers.

mod background;
mod ingest;

pub use ingest::EmbeddedIngest;

use std::net::SocketAddr;
use std::sync::Arc;

use aggregate_svc::store::FlushPolicy;
use aggregate_svc::{AggregateGrpc, EmbeddedAggregateStore};
use allezon_api::{InProcess, Services};
use allezon_core::admin::{self, Readiness};
use allezon_core::config::{AdminArgs, DataDirArgs};
use allezon_core::shutdown::Shutdown;
use allezon_storage::Store;
use clap::Args;
use event_log::EmbeddedLog;
use id_svc::{EmbeddedIdStore, IdGrpc};
use ingest_worker::{Worker, WorkerConfig};
use profile_svc::{EmbeddedProfileStore, ProfileGrpc};
use tokio::task::JoinHandle;
use tonic::service::Routes;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address of the REST API (port 0 picks a free port).
    #[arg(long, env = "ALLEZON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// gRPC listen address of the internal services, for `grpcurl` and
    /// outside callers (port 0 picks a free port).
    #[arg(long, env = "ALLEZON_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    #[command(flatten)]
    pub grpc_tls: allezon_core::tls::ServerTlsArgs,
    /// Refuse tags while the ingest worker is further behind than this
    /// (statistics must count a tag within 60 s; profiles are written with
    /// the tag), or has applied nothing for a quarter of it while tags
    /// wait; 0: never.
    #[arg(long, env = "ALLEZON_MAX_INGEST_LAG_MS", default_value_t = 45_000)]
    pub max_ingest_lag_ms: u64,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A started system: where it listens, and the task that ends with it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// The admin port (`/healthz`, `/readyz`, `/metrics`), unless `off`.
    pub admin_addr: Option<SocketAddr>,
    store: Store,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// The engine every store and the log share; fault tests make its
    /// writes fail with [`Store::inject_write_errors`].
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Waits until the system has shut down and drained.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Returns once the aggregates hold everything the log held at the call.
async fn caught_up<T>(
    aggregates: &EmbeddedAggregateStore,
    log: &EmbeddedLog,
    worker: &JoinHandle<T>,
) -> anyhow::Result<()> {
    use aggregate_svc::AggregateStore;
    let partitions: Vec<u32> = (0..log.partitions()).collect();
    let end: Vec<u64> = partitions.iter().map(|p| log.end_offset(*p)).collect();
    let started = std::time::Instant::now();
    loop {
        let marks = aggregates.watermarks(&partitions).await?;
        if marks.iter().zip(&end).all(|(mark, end)| mark.next >= *end) {
            break;
        }
        anyhow::ensure!(
            !worker.is_finished(),
            "the ingest worker stopped during start-up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if started.elapsed() > std::time::Duration::from_millis(100) {
        tracing::info!(elapsed = ?started.elapsed(), "replayed the log's unflushed tail");
    }
    Ok(())
}

/// Runs the worker; one that stops on an error, not on `worker_shutdown`,
/// turns the process unready, moves `allezon_worker_failures_total` and
/// shuts the whole process down: acknowledging tags whose statistics are
/// frozen would break the freshness promise silently. A supervisor (or the
/// operator) restarts it, and the restart replays the log.
async fn watched_worker(
    worker: Worker<event_log::EmbeddedConsumer>,
    readiness: Readiness,
    worker_shutdown: Shutdown,
    process_shutdown: Shutdown,
) -> Result<(), ingest_worker::WorkerError> {
    let result = ingest_worker::run_watched(worker, worker_shutdown.clone()).await;
    if !worker_shutdown.is_cancelled() {
        readiness.set_condition("ingest-worker", false);
        allezon_core::metrics::metrics().worker.failures.inc();
        match &result {
            Err(err) => tracing::error!(%err, "the ingest worker failed; shutting down"),
            Ok(()) => tracing::error!("the ingest worker stopped; shutting down"),
        }
        process_shutdown.cancel();
    }
    result
}

/// Opens the tags' engine in `dir` and the cells' in `dir/aggregates`, side
/// by side. After a crash each replays its journal into its memtables, on
/// one thread, and nothing is served until both are done: one after the
/// other, on upstream fjall, that took 1.6 s and then 1.8 s after a
/// `kill -9` 30 s into 10,000 tags/s.
fn open_engines(dir: &std::path::Path) -> Result<(Store, Store), allezon_storage::StoreError> {
    std::thread::scope(|scope| {
        let cells = std::thread::Builder::new()
            .name("open-cells".into())
            .spawn_scoped(scope, || Store::open(&dir.join("aggregates")))
            .map_err(|source| allezon_storage::StoreError::Thread {
                name: "open-cells",
                source,
            })?;
        let tags = Store::open(dir);
        let cells = cells
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok((tags?, cells?))
    })
}

/// Opens the stores, binds both listeners, and starts serving. Returns once
/// the system accepts requests; cancel `shutdown` to stop it.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    let readiness = Readiness::default();
    let admin_addr =
        admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    // The port first: one taken fails the start before the stores open.
    let http = allezon_core::net::Reserved::bind(config.http_addr)?;
    let http_addr = http.local_addr()?;
    // One engine for every store and the log: one journal, so one fsync
    // makes a tag durable in the profile store and the log together.
    //
    // The cells have an engine (a journal) of their own: a flush writes a
    // second's worth of changed cells in one batch, and fjall holds its
    // journal's lock through a commit and an fsync, which would stall every
    // tag write behind it. Cells and the worker's watermarks only need to be
    // atomic with each other; the log never shows a record before it is
    // durable, so the cells never count one a crash could take back.
    let (store, cells) = open_engines(&config.data.data_dir)?;
    let profiles = EmbeddedProfileStore::open(&store)?;
    // Write-back: the store, its worker and the log live and die together
    // here, so unflushed cells are replayed from the log after a crash.
    let aggregates = EmbeddedAggregateStore::open_with(&cells, FlushPolicy::WRITE_BACK)?;
    let ids = EmbeddedIdStore::open(&store)?;
    let log = EmbeddedLog::open(&store, 1)?;
    store.watch("storage", &readiness, &shutdown);
    cells.watch("aggregate-storage", &readiness, &shutdown);

    let grpc_listener = allezon_core::net::bind(config.grpc_addr)?;
    let grpc_addr = grpc_listener.local_addr()?;

    // Shutdown runs front to back: the gateway drains, then the worker folds
    // what it holds, then the services stop.
    let services_shutdown = Shutdown::new();
    let worker_shutdown = Shutdown::new();
    let cell_store = aggregates.clone();
    let aggregates = Arc::new(aggregates);
    let routes = Routes::new(profile_svc::service(profiles.clone()))
        .add_service(aggregate_svc::service(Arc::clone(&aggregates)))
        .add_service(id_svc::service(ids.clone()));
    let services = tokio::spawn(allezon_core::grpc::serve(
        grpc_listener,
        routes,
        &[
            profile_svc::SERVICE_NAME,
            aggregate_svc::SERVICE_NAME,
            id_svc::SERVICE_NAME,
        ],
        readiness.clone(),
        services_shutdown.clone(),
        config.grpc_tls.load()?,
    ));
    tokio::spawn(aggregate_svc::run_retention(
        (*aggregates).clone(),
        services_shutdown.clone(),
    ));
    let in_process = Services {
        profiles: Arc::new(InProcess::new(ProfileGrpc::new(profiles.clone()))),
        aggregates: Arc::new(InProcess::new(AggregateGrpc::new(aggregates))),
        ids: Arc::new(InProcess::new(IdGrpc::new(ids))),
    };
    let worker = Worker::new(
        log.consumer(ingest_worker::GROUP)?,
        Arc::clone(&in_process.ids),
        Arc::clone(&in_process.aggregates),
        WorkerConfig::default(),
    );
    let worker = background::spawn(
        "ingest-worker",
        watched_worker(
            worker,
            readiness.clone(),
            worker_shutdown.clone(),
            shutdown.clone(),
        ),
    )?;
    // Cells applied but not flushed when the process last died are replayed
    // from the log now; answers wait for that, so that no query counts a
    // tag acknowledged before the crash as missing.
    caught_up(&cell_store, &log, &worker).await?;
    // Profiles are written with the tag here; only the statistics come
    // from the worker.
    let freshness = gateway::freshness::Freshness::new(std::time::Duration::from_millis(
        config.max_ingest_lag_ms,
    ));
    freshness.spawn_watch(Arc::clone(&in_process.aggregates), shutdown.clone());
    let backends = gateway::Backends {
        services: in_process,
        tags: Arc::new(EmbeddedIngest::start(&log, profiles)?),
        freshness,
    };
    // Listening only now: a client that connected during the replay above
    // would wait in the accept queue for all of it (a third of a second
    // after a kill -9 at 10,000 tags/s, and every request of a client
    // with 256 in flight timed out there). Until now it is refused at
    // once, and can try again.
    let http_listener = http.listen()?;
    let gateway = tokio::spawn(gateway::serve(http_listener, backends, shutdown));
    readiness.set(true);

    let engine = store.clone();
    let task = tokio::spawn(async move {
        let gateway_result = gateway.await;
        worker_shutdown.cancel();
        let worker_result = worker.await;
        // What the worker applied reaches the engine before it closes.
        let flush_result = cell_store.flush().await;
        services_shutdown.cancel();
        let services_result = services.await;
        gateway_result??;
        worker_result??;
        flush_result?;
        services_result??;
        // The engine persists and closes once this handle and the one in
        // `Running` are dropped.
        drop(store);
        drop(cells);
        Ok(())
    });
    Ok(Running {
        http_addr,
        grpc_addr,
        admin_addr,
        store: engine,
        task,
    })
}
