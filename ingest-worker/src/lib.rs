//! ingest-worker: consumes the event log, folds tags into per-minute cells for
//! all 8 filter combinations, and sends packed increments to aggregate-svc,
//! exactly once (see [`worker`]).
//!
//! With the embedded log it runs inside the process that owns the log (the
//! all-in-one `allezon`, or a standalone gateway). With Kafka it is its own
//! binary, and scales by starting more of it, up to the topic's partitions.

mod ids;
pub mod worker;

pub use worker::{Heartbeat, Worker, WorkerConfig, WorkerError, run_watched};

use allezon_api::Services;
use allezon_core::admin::{self, Readiness};
use allezon_core::config::{AdminArgs, KafkaArgs, ServiceEndpointArgs};
use allezon_core::shutdown::Shutdown;
use clap::Args;
use event_log::{KafkaConfig, KafkaConsumer};

/// Consumer group of the ingest workers on the event log.
pub const GROUP: &str = "ingest-worker";

#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Consumer group; workers in one group share the partitions.
    #[arg(long, env = "ALLEZON_KAFKA_GROUP", default_value = GROUP)]
    pub kafka_group: String,
    /// Static membership id (`group.instance.id`), unique per live worker
    /// and stable across its restarts (a StatefulSet pod name): a restarted
    /// worker takes its partitions back at once. Without it, a killed
    /// worker's partitions move after `--kafka-session-timeout-ms`.
    #[arg(long, env = "ALLEZON_KAFKA_INSTANCE_ID")]
    pub kafka_instance_id: Option<String>,
    /// How long the group waits for a silent worker before its partitions
    /// move to the others. Short, because the workers build the profiles,
    /// which must show within 10 s: 6 s is the brokers' usual minimum
    /// (`group.min.session.timeout.ms`). tansu also holds every JoinGroup
    /// for half of it, so a longer one slows every (re)start: 45 s made a
    /// restarted worker wait 26 s for its partitions, 6 s makes it 6 s.
    #[arg(
        long,
        env = "ALLEZON_KAFKA_SESSION_TIMEOUT_MS",
        default_value_t = 6_000
    )]
    pub kafka_session_timeout_ms: u64,
    #[command(flatten)]
    pub services: ServiceEndpointArgs,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Runs one worker of the group until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let Some(base) = KafkaConfig::from_args(&config.kafka) else {
        anyhow::bail!(
            "--kafka-brokers (ALLEZON_KAFKA_BROKERS) is required: with the embedded log \
             the worker runs inside the process that owns the log"
        );
    };
    let kafka = KafkaConfig {
        session_timeout: std::time::Duration::from_millis(config.kafka_session_timeout_ms),
        instance_id: config.kafka_instance_id.clone(),
        ..base
    };
    let readiness = Readiness::default();
    admin::spawn(config.admin.admin_addr, readiness.clone(), shutdown.clone()).await?;
    if !kafka.ensure_topic_patiently(&shutdown).await? {
        return Ok(());
    }
    let consumer = KafkaConsumer::new(&kafka, &config.kafka_group)?;
    // The brokers' answer is the worker's readiness too (the consumer
    // itself belongs to the worker task).
    let probe = event_log::KafkaProbe::new(&kafka)?;
    readiness.watch(
        "kafka",
        std::time::Duration::from_secs(2),
        shutdown.clone(),
        move || {
            let probe = probe.clone();
            async move { probe.reachable(std::time::Duration::from_secs(2)).await }
        },
    );
    let services = Services::connect_lazy(&config.services)?;
    let worker = Worker::remote(consumer, services, WorkerConfig::default());
    tracing::info!(topic = %kafka.topic, group = %config.kafka_group, "ingest worker started");
    readiness.set(true);
    if let Err(err) = run_watched(worker, shutdown).await {
        // The process ends on it, so that its supervisor restarts it (the
        // restart resumes at the watermarks): statistics never freeze
        // silently behind a worker that stopped.
        readiness.set_condition("ingest-worker", false);
        allezon_core::metrics::metrics().worker.failures.inc();
        return Err(err.into());
    }
    Ok(())
}
