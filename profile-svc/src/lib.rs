//! profile-svc: per-cookie profiles behind the `allezon.v1.ProfileService`
//! gRPC API.
//!
//! Keeps the newest 200 VIEWs and the newest 200 BUYs of each cookie. Run it
//! alone with `cargo run -p profile-svc -- --grpc-addr 127.0.0.1:50051
//! --data-dir ./data/profiles`, or inside the all-in-one `allezon` binary.

pub mod grpc;
pub mod store;

use std::path::PathBuf;

use allezon_core::admin::{self, Readiness};
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1::profile_service_server::ProfileServiceServer;
use allezon_storage::Store;
use tonic::server::NamedService;
use tonic::service::Routes;

pub use grpc::ProfileGrpc;
pub use store::{AerospikeProfileStore, EmbeddedProfileStore, PreparedTag, ProfileStore};

/// The gRPC service name, as health checks and reflection list it.
pub const SERVICE_NAME: &str =
    <ProfileServiceServer<ProfileGrpc<EmbeddedProfileStore>> as NamedService>::NAME;

/// The tonic service for `store`, ready to add to a server.
pub fn service<S: ProfileStore>(store: S) -> ProfileServiceServer<ProfileGrpc<S>> {
    ProfileServiceServer::new(ProfileGrpc::new(store))
        .max_decoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES)
}

/// Flags and environment of the standalone binary.
pub type Config = allezon_core::config::StoreServiceArgs;

/// Runs profile-svc alone until `shutdown`: on Aerospike when hosts are
/// configured, else on the embedded store in its data directory.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    let routes = if config.aerospike.aerospike_hosts.is_some() {
        // Up and unready until the cluster answers (see `Pending`).
        Routes::new(service(allezon_aerospike::Pending::connect(
            &config.aerospike,
            &readiness,
            &shutdown,
            AerospikeProfileStore::new,
        )))
    } else {
        let dir = profiles_dir(&config.service.data.data_dir);
        let engine = Store::open(&dir)?;
        engine.watch("storage", &readiness, &shutdown);
        Routes::new(service(EmbeddedProfileStore::open(&engine)?))
    };
    // Bound only once the store is ready: an open port means "serving",
    // for scripts and probes that wait on it.
    let listener = allezon_core::net::bind(config.service.grpc.grpc_addr)?;
    tracing::info!(addr = %listener.local_addr()?, "profile-svc listening");
    readiness.set(true);
    let tls = config.service.grpc.tls.load()?;
    allezon_core::grpc::serve(listener, routes, &[SERVICE_NAME], readiness, shutdown, tls).await?;
    Ok(())
}

/// Where a standalone profile-svc keeps its store inside the data directory.
pub fn profiles_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("profiles")
}
