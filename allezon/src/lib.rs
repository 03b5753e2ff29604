//! The all-in-one Allezon: the gateway and every service in one process, on
//! the embedded backends, sharing one storage engine in one data directory.
//!
//! `cargo run --release` at the repository root starts it on
//! `127.0.0.1:8080`. The services still talk gRPC to each other over
//! loopback, exactly as they do when deployed as separate processes.

use std::net::SocketAddr;
use std::sync::Arc;

use aggregate_svc::EmbeddedAggregateStore;
use allezon_core::config::{DataDirArgs, endpoint_uri};
use allezon_core::shutdown::Shutdown;
use allezon_storage::Store;
use clap::Args;
use event_log::EmbeddedLog;
use gateway::Endpoints;
use id_svc::EmbeddedIdStore;
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
    // One engine for every store and the log: one journal, so one fsync
    // makes a tag durable in the profile store and the log together.
    let store = Store::open(&config.data.data_dir)?;
    let profiles = EmbeddedProfileStore::open(&store)?;
    let aggregates = EmbeddedAggregateStore::open(&store)?;
    let ids = EmbeddedIdStore::open(&store)?;
    let log = EmbeddedLog::open(&store, 1)?;

    let grpc_listener = TcpListener::bind(config.grpc_addr).await?;
    let http_listener = TcpListener::bind(config.http_addr).await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let endpoints = Endpoints::all_at(&endpoint_uri(grpc_addr));

    // Shutdown runs front to back: the gateway drains, then the worker folds
    // what it holds, then the services stop.
    let services_shutdown = Shutdown::new();
    let worker_shutdown = Shutdown::new();
    let routes = Routes::new(profile_svc::service(profiles))
        .add_service(aggregate_svc::service(Arc::new(aggregates.clone())))
        .add_service(id_svc::service(ids));
    let services = tokio::spawn(allezon_core::grpc::serve(
        grpc_listener,
        routes,
        &[
            profile_svc::SERVICE_NAME,
            aggregate_svc::SERVICE_NAME,
            id_svc::SERVICE_NAME,
        ],
        services_shutdown.clone(),
    ));
    tokio::spawn(aggregate_svc::run_retention(
        aggregates,
        services_shutdown.clone(),
    ));
    let worker =
        tokio::spawn(gateway::embedded_worker(&log, &endpoints)?.run(worker_shutdown.clone()));
    let backends = gateway::Backends::connect_lazy(&endpoints, Arc::new(log))?;
    let gateway = tokio::spawn(gateway::serve(http_listener, backends, shutdown));

    let task = tokio::spawn(async move {
        let gateway_result = gateway.await;
        worker_shutdown.cancel();
        let worker_result = worker.await;
        services_shutdown.cancel();
        let services_result = services.await;
        gateway_result??;
        worker_result??;
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
