//! id-svc: stable small integer ids for origin, brand and category strings,
//! behind the `allezon.v1.IdService` gRPC API, so aggregate keys stay compact.
//!
//! Run it alone with `cargo run -p id-svc -- --grpc-addr 127.0.0.1:50053
//! --data-dir ./data/ids`, or inside the all-in-one `allezon` binary.

pub mod grpc;
pub mod store;

use allezon_core::admin::{self, Readiness};
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1::id_service_server::IdServiceServer;
use allezon_storage::Store;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use grpc::IdGrpc;
pub use store::{AerospikeIdStore, EmbeddedIdStore, IdStore};

pub const SERVICE_NAME: &str = <IdServiceServer<IdGrpc<EmbeddedIdStore>> as NamedService>::NAME;

pub fn service<S: IdStore>(store: S) -> IdServiceServer<IdGrpc<S>> {
    IdServiceServer::new(IdGrpc::new(store))
        .max_decoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES)
}

/// Flags and environment of the standalone binary.
pub type Config = allezon_core::config::StoreServiceArgs;

/// Runs id-svc alone until `shutdown`: on Aerospike when hosts are
/// configured, else on the embedded store in its data directory (ids are few
/// and small, so one id-svc on a persistent volume serves a cluster too).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    let routes = if config.aerospike.aerospike_hosts.is_some() {
        // Up and unready until the cluster answers (see `Pending`).
        Routes::new(service(allezon_aerospike::Pending::connect(
            &config.aerospike,
            &readiness,
            &shutdown,
            AerospikeIdStore::new,
        )))
    } else {
        let dir = config.service.data.data_dir.join("ids");
        let engine = Store::open(&dir)?;
        engine.watch("storage", &readiness, &shutdown);
        Routes::new(service(EmbeddedIdStore::open(&engine)?))
    };
    // Bound only once the store is ready: an open port means "serving",
    // for scripts and probes that wait on it.
    let listener = allezon_core::net::bind(config.service.grpc.grpc_addr)?;
    tracing::info!(addr = %listener.local_addr()?, "id-svc listening");
    readiness.set(true);
    let tls = config.service.grpc.tls.load()?;
    allezon_core::grpc::serve(listener, routes, &[SERVICE_NAME], readiness, shutdown, tls).await?;
    Ok(())
}
