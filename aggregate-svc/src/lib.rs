//! aggregate-svc: per-minute COUNT and SUM(price) cells for all 8 filter
//! combinations, behind the `allezon.v1.AggregateService` gRPC API.
//!
//! Ingest workers send it packed increments; the gateway reads one cell per
//! minute of a query. Run it alone with `cargo run -p aggregate-svc --
//! --grpc-addr 127.0.0.1:50052 --data-dir ./data/aggregates`, or inside the
//! all-in-one `allezon` binary.

pub mod grpc;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use allezon_core::admin::{self, Readiness};
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1::aggregate_service_server::AggregateServiceServer;
use allezon_storage::Store;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use grpc::AggregateGrpc;
pub use store::{AerospikeAggregateStore, AggregateStore, EmbeddedAggregateStore, Watermark};

pub const SERVICE_NAME: &str =
    <AggregateServiceServer<AggregateGrpc<EmbeddedAggregateStore>> as NamedService>::NAME;

/// How often expired cells are looked for.
const RETENTION_EVERY: Duration = Duration::from_secs(30);

pub fn service<S: AggregateStore>(store: Arc<S>) -> AggregateServiceServer<AggregateGrpc<S>> {
    AggregateServiceServer::new(AggregateGrpc::new(store))
        .max_decoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES)
}

/// Drops cells older than 24 hours of event time, and flushes changes a
/// write-back store still holds (an idle one too), until `shutdown`.
pub async fn run_retention(store: EmbeddedAggregateStore, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(err) = store.flush().await {
            tracing::warn!(%err, "flushing aggregate cells failed");
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.drop_expired()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => {
                allezon_core::metrics::metrics()
                    .aggregates
                    .cells_dropped
                    .inc_by(removed as u64);
                tracing::info!(removed, "dropped expired aggregate cells");
            }
            Ok(Err(err)) => tracing::warn!(%err, "dropping expired cells failed"),
            Err(err) => tracing::warn!(%err, "retention task failed"),
        }
    }
}

/// Flags and environment of the standalone binary.
pub type Config = allezon_core::config::StoreServiceArgs;

/// Runs aggregate-svc alone until `shutdown`: on Aerospike when hosts are
/// configured, else on the embedded store in its data directory.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    let routes = if config.aerospike.aerospike_hosts.is_some() {
        // Up and unready until the cluster answers (see `Pending`).
        let store = allezon_aerospike::Pending::connect(
            &config.aerospike,
            &readiness,
            &shutdown,
            AerospikeAggregateStore::new,
        );
        // Expiry is the cells' TTL: nothing to sweep.
        Routes::new(service(Arc::new(store)))
    } else {
        let dir = config.service.data.data_dir.join("aggregates");
        let engine = Store::open(&dir)?;
        engine.watch("storage", &readiness, &shutdown);
        let store = EmbeddedAggregateStore::open(&engine)?;
        tokio::spawn(run_retention(store.clone(), shutdown.clone()));
        Routes::new(service(Arc::new(store)))
    };
    // Bound only once the store is ready: an open port means "serving",
    // for scripts and probes that wait on it.
    let listener = allezon_core::net::bind(config.service.grpc.grpc_addr)?;
    tracing::info!(addr = %listener.local_addr()?, "aggregate-svc listening");
    readiness.set(true);
    let tls = config.service.grpc.tls.load()?;
    allezon_core::grpc::serve(listener, routes, &[SERVICE_NAME], readiness, shutdown, tls).await?;
    Ok(())
}
