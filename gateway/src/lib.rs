//! gateway: Allezon's REST front door.
//!
//! Serves the external contract (`POST /user_tags`, `POST
//! /user_profiles/{cookie}`, `POST /aggregates`) and turns it into gRPC calls
//! to the services. It owns everything HTTP: status codes, JSON errors, body
//! limits, request ids.
//!
//! Run alone: `cargo run -p gateway -- --http-addr 127.0.0.1:8080
//! --profile-svc http://127.0.0.1:50051 --aggregate-svc http://127.0.0.1:50052
//! --id-svc http://127.0.0.1:50053 --data-dir ./data/gateway`. With the
//! embedded event log, which lives in this process's data directory, the
//! ingest worker runs inside the gateway process too.

pub mod backends;
pub mod error;
mod routes;
mod stack;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use allezon_core::admin::{self, Readiness};
use allezon_core::config::{AdminArgs, DataDirArgs, IngestEndpointArgs, KafkaArgs};
use allezon_core::shutdown::Shutdown;
use allezon_storage::Store;
use axum::Router;
use clap::Args;
use event_log::{EmbeddedLog, KafkaLog};
use ingest_worker::{Worker, WorkerConfig};
use tokio::net::TcpListener;

pub use backends::{Backends, Endpoints, TagSink};

/// Consumer group of the ingest workers on the event log.
pub const WORKER_GROUP: &str = ingest_worker::GROUP;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address of the REST API.
    #[arg(long, env = "ALLEZON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// gRPC endpoint of profile-svc.
    #[arg(
        long,
        env = "ALLEZON_PROFILE_SVC",
        default_value = "http://127.0.0.1:50051"
    )]
    pub profile_svc: String,
    #[command(flatten)]
    pub ingest: IngestEndpointArgs,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// The whole HTTP application: routes and middleware.
pub fn app(backends: Backends) -> Router {
    stack::layer(routes::router(backends))
}

/// Serves the REST API on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, app(backends))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// An ingest worker on the embedded log, calling the services at `endpoints`.
pub fn embedded_worker(
    log: &EmbeddedLog,
    endpoints: &Endpoints,
) -> anyhow::Result<Worker<event_log::EmbeddedConsumer>> {
    Ok(Worker::connect(
        log.consumer(WORKER_GROUP)?,
        &endpoints.id_svc,
        &endpoints.aggregate_svc,
        WorkerConfig::default(),
    )?)
}

/// Runs the gateway alone until `shutdown`. With Kafka brokers configured it
/// produces to the topic and the ingest workers run as their own processes;
/// otherwise the embedded log lives in this process's data directory, and so
/// does its worker.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let endpoints = Endpoints {
        profile_svc: config.profile_svc,
        aggregate_svc: config.ingest.aggregate_svc,
        id_svc: config.ingest.id_svc,
    };
    let readiness = Readiness::default();
    admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    let mut worker = None;
    let log: Arc<dyn TagSink> = match ingest_worker::kafka_config(&config.kafka) {
        Some(kafka) => {
            kafka.ensure_topic().await?;
            let log = KafkaLog::new(&kafka)?;
            // Not serving until a tag can go all the way through: the HTTP
            // port opens, and readiness turns true, only after this.
            while let Err(err) = log
                .warm_up(event_log::NOOP_RECORD, Duration::from_secs(10))
                .await
            {
                tracing::warn!(%err, "kafka not usable yet; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Arc::new(log)
        }
        None => {
            let store = Store::open(&config.data.data_dir.join("gateway"))?;
            let log = EmbeddedLog::open(&store, 1)?;
            let worker_shutdown = Shutdown::new();
            let task =
                tokio::spawn(embedded_worker(&log, &endpoints)?.run(worker_shutdown.clone()));
            worker = Some((worker_shutdown, task));
            Arc::new(log)
        }
    };

    let backends = Backends::connect_lazy(&endpoints, log)?;
    backends.warm_up().await;
    let listener = TcpListener::bind(config.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    readiness.set(true);
    serve(listener, backends, shutdown).await?;
    // The worker stops after the gateway has drained, so every tag it
    // accepted is folded before exit or, at worst, on the next start.
    if let Some((worker_shutdown, task)) = worker {
        worker_shutdown.cancel();
        task.await??;
    }
    Ok(())
}
