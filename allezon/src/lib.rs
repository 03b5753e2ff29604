//! The all-in-one Allezon: the gateway and every service in one process, on
//! the embedded backends, sharing one storage engine in one data directory.
//!
//! `cargo run --release` at the repository root starts it on
//! `127.0.0.1:8080`. The services still talk gRPC to each other over
//! loopback, exactly as they do when deployed as separate processes.

use std::net::SocketAddr;

use allezon_core::config::{DataDirArgs, endpoint_uri};
use allezon_core::shutdown::Shutdown;
use allezon_storage::Store;
use clap::Args;
use profile_svc::EmbeddedProfileStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::Routes;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address of the REST API (port 0 picks a free port).
    #[arg(long, env = "ALLEZON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// gRPC listen address of the internal services, for `grpcurl` and for
    /// the gateway (port 0 picks a free port).
    #[arg(long, env = "ALLEZON_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// A started system: where it listens, and the task that ends with it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the system has shut down and drained.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await?
    }
}

/// Opens the stores, binds both listeners, and starts serving. Returns once
/// the system accepts requests; cancel `shutdown` to stop it.
pub async fn start(config: Config, shutdown: Shutdown) -> anyhow::Result<Running> {
    let store = Store::open(&config.data.data_dir)?;
    let profiles = EmbeddedProfileStore::open(&store)?;

    let grpc_listener = TcpListener::bind(config.grpc_addr).await?;
    let http_listener = TcpListener::bind(config.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;

    // The services outlive the gateway's drain: requests still in flight
    // there need them to finish.
    let services_shutdown = Shutdown::new();
    let services = tokio::spawn(allezon_core::grpc::serve(
        grpc_listener,
        Routes::new(profile_svc::service(profiles)),
        &[profile_svc::SERVICE_NAME],
        services_shutdown.clone(),
    ));
    let backends = gateway::Backends::connect_lazy(&endpoint_uri(grpc_addr))?;
    let gateway = tokio::spawn(gateway::serve(http_listener, backends, shutdown));

    let task = tokio::spawn(async move {
        let gateway_result = gateway.await;
        services_shutdown.cancel();
        let services_result = services.await;
        gateway_result??;
        services_result??;
        // Dropping the last handle persists and closes the engine.
        drop(store);
        Ok(())
    });
    Ok(Running {
        http_addr,
        grpc_addr,
        task,
    })
}
