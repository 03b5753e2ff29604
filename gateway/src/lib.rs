//! gateway: Allezon's REST front door.
//!
//! Serves the external contract (`POST /user_tags`, `POST
//! /user_profiles/{cookie}`, `POST /aggregates`) and turns it into calls of
//! the services, through their traits (`allezon-api`). It owns everything
//! HTTP: status codes, JSON errors, body limits, request ids.
//!
//! Which implementation sits behind each trait is the binary's choice: the
//! all-in-one `allezon` calls the services in its own process and writes
//! tags into its embedded engine; the standalone gateway binary (this
//! crate's [`run`]) calls them over gRPC and appends tags to Kafka, from
//! which the workers build profiles and statistics:
//! `cargo run -p gateway -- --http-addr 127.0.0.1:8080 --kafka-brokers
//! 127.0.0.1:9092 --profile-svc http://127.0.0.1:50051 --aggregate-svc
//! http://127.0.0.1:50052 --id-svc http://127.0.0.1:50053`.

pub mod backends;
pub mod error;
pub mod freshness;
mod header_deadline;
mod http_metrics;
mod routes;
mod server;
mod stack;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use allezon_api::Services;
use allezon_core::admin::{self, Readiness};
use allezon_core::config::{AdminArgs, KafkaArgs, ServiceEndpointArgs};
use allezon_core::shutdown::Shutdown;
use axum::Router;
use clap::Args;
use event_log::{KafkaConfig, KafkaLog};
use freshness::Freshness;
use tokio::net::TcpListener;

pub use backends::{Backends, LogWrites, TagWriter};

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address of the REST API.
    #[arg(long, env = "ALLEZON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    #[command(flatten)]
    pub services: ServiceEndpointArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Refuse tags while the ingest workers are further behind than this
    /// (they build the profiles, which must show within 10 s), or have
    /// applied nothing for a quarter of it while tags wait; 0: never.
    #[arg(long, env = "ALLEZON_MAX_INGEST_LAG_MS", default_value_t = 8_000)]
    pub max_ingest_lag_ms: u64,
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
    server::serve(listener, app(backends), shutdown).await
}

/// How often the gateway asks the brokers whether they answer, and how
/// long it waits for them. Two failed probes in a row make an outage (one
/// slow answer on a saturated machine does not), so one is noticed within
/// about three seconds.
const KAFKA_PROBE_EVERY: Duration = Duration::from_millis(500);
const KAFKA_PROBE_WAIT: Duration = Duration::from_secs(1);
const KAFKA_PROBE_MISSES: u32 = 2;

/// Keeps the `kafka` readiness condition to whether the brokers answer (a
/// gateway that cannot append tags is taken out of its Service's
/// endpoints), and returns the same answer as a flag for the tag writer.
pub fn watch_kafka(readiness: &Readiness, log: &KafkaLog, shutdown: &Shutdown) -> Arc<AtomicBool> {
    use std::sync::atomic::{AtomicU32, Ordering};
    let reachable = Arc::new(AtomicBool::new(true));
    let misses = Arc::new(AtomicU32::new(0));
    let (log, flag) = (log.clone(), Arc::clone(&reachable));
    readiness.watch("kafka", KAFKA_PROBE_EVERY, shutdown.clone(), move || {
        let (log, flag, misses) = (log.clone(), Arc::clone(&flag), Arc::clone(&misses));
        async move {
            let ok = if log.reachable(KAFKA_PROBE_WAIT).await {
                misses.store(0, Ordering::Relaxed);
                true
            } else {
                misses.fetch_add(1, Ordering::Relaxed) + 1 < KAFKA_PROBE_MISSES
            };
            flag.store(ok, Ordering::Release);
            ok
        }
    });
    reachable
}

/// Runs the gateway alone until `shutdown`: tags go to the Kafka topic,
/// where the ingest workers (their own processes) read them into profiles
/// and statistics. The embedded log lives in the all-in-one binary only, beside its
/// worker.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let Some(kafka) = KafkaConfig::from_args(&config.kafka) else {
        anyhow::bail!(
            "--kafka-brokers (ALLEZON_KAFKA_BROKERS) is required: a gateway on its own \
             appends tags to Kafka (the all-in-one `allezon` binary runs on the embedded log)"
        );
    };
    let readiness = Readiness::default();
    admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    if !kafka.ensure_topic_patiently(&shutdown).await? {
        return Ok(());
    }
    let log = KafkaLog::new(&kafka)?;
    // Not serving until a tag can go all the way through: the HTTP port
    // opens, and readiness turns true, only after this.
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
    let services = Services::connect_watched(&config.services, &readiness, &shutdown)?;
    let reachable = watch_kafka(&readiness, &log, &shutdown);
    let tags = Arc::new(LogWrites {
        log,
        topic: config.kafka.kafka_topic.clone(),
        reachable,
    });
    // Workers build the profiles too here: shed before their 10 s window.
    let freshness = Freshness::new(Duration::from_millis(config.max_ingest_lag_ms));
    freshness.spawn_watch(Arc::clone(&services.aggregates), shutdown.clone());
    let backends = Backends {
        services,
        tags,
        freshness,
    };
    backends.warm_up().await;
    let listener = allezon_core::net::bind(config.http_addr)?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    readiness.set(true);
    serve(listener, backends, shutdown).await?;
    Ok(())
}
