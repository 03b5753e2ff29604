//! id-svc: stable small integer ids for origin, brand and category strings,
//! behind the `allezon.v1.IdService` gRPC API, so aggregate keys stay compact.
//!
//! Run it alone with `cargo run -p id-svc -- --grpc-addr 127.0.0.1:50053
//! --data-dir ./data/ids`, or inside the all-in-one `allezon` binary.

pub mod grpc;
pub mod store;

use allezon_core::shutdown::Shutdown;
use allezon_proto::v1::id_service_server::IdServiceServer;
use allezon_storage::Store;
use tokio::net::TcpListener;
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
pub type Config = allezon_core::config::ServiceArgs;

/// Runs id-svc alone until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.grpc.grpc_addr).await?;
    let store = EmbeddedIdStore::open(&Store::open(&config.data.data_dir.join("ids"))?)?;
    tracing::info!(addr = %listener.local_addr()?, "id-svc listening");
    allezon_core::grpc::serve(
        listener,
        Routes::new(service(store)),
        &[SERVICE_NAME],
        shutdown,
    )
    .await?;
    Ok(())
}
