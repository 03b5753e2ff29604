//! The event log on a Kafka topic (rdkafka, vendored librdkafka).
//!
//! Producer: idempotent, `acks=all`, keyed by cookie, so one cookie's tags
//! keep their order in one partition and a retried send is not duplicated by
//! the broker. `append` returns only once the broker confirmed the write.
//!
//! Consumer: a member of a consumer group with auto-commit off. Offsets are
//! committed by the worker after its batch is applied, but the worker starts
//! every newly assigned partition at the aggregate store's own watermark, so
//! a commit that lags (or is lost in a rebalance) replays nothing.

use std::collections::BTreeMap;

use allezon_core::shutdown::Shutdown;
use allezon_core::trace::{self, Carried};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use crate::{EventLog, LogConsumer, LogError, Position, Record};

/// How to reach the topic, and what it should look like when created.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    pub topic: String,
    /// Partitions of the topic when this process creates it. Workers scale
    /// up to this number.
    pub partitions: u32,
    /// Replication factor when this process creates the topic.
    pub replication: u16,
    /// How long a produce may take before the tag is refused. The gateway's
    /// clients wait 200 ms, but a refused tag must be a real failure, not a
    /// slow broker, so this is generous.
    pub produce_timeout: Duration,
    /// How long the producer waits to batch concurrent tags into one
    /// produce request: that much on a 204, far fewer requests (and stored
    /// batches) for the brokers.
    pub linger: Duration,
    /// How long the group waits for a silent member before giving its
    /// partitions to others.
    pub session_timeout: Duration,
    /// Static group membership (`group.instance.id`): a worker restarted
    /// with the same id takes its partitions back at once instead of
    /// waiting out the dead member's session. Must be unique per live
    /// worker, e.g. a StatefulSet pod name.
    pub instance_id: Option<String>,
    /// librdkafka properties set on every client: TLS, SASL and anything
    /// else a cluster asks for. The settings exactly-once depends on
    /// (idempotence, `acks`, manual commits) are set after them and win.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Settings for `topic` on `brokers`; the topic is not created.
    /// The settings shared by the gateway and the workers, from their flags;
    /// `None` without brokers. `partitions` is 0 unless the topic should be
    /// created.
    pub fn from_args(args: &allezon_core::config::KafkaArgs) -> Option<Self> {
        Some(Self {
            partitions: args.kafka_create_partitions.unwrap_or(0),
            replication: args.kafka_replication,
            linger: Duration::from_millis(args.kafka_linger_ms),
            properties: args.properties(),
            ..Self::new(args.kafka_brokers.clone()?, args.kafka_topic.clone())
        })
    }

    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: topic.into(),
            partitions: 0,
            replication: 1,
            produce_timeout: Duration::from_secs(10),
            linger: Duration::from_millis(20),
            session_timeout: Duration::from_secs(6),
            instance_id: None,
            properties: Vec::new(),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            // Loopback and cluster-internal brokers only: IPv4 first avoids a
            // dead `localhost` → ::1 attempt on hosts without IPv6.
            .set("broker.address.family", "v4")
            // A topic is created on purpose, with the configured partitions
            // (see `ensure_topic`), never by a metadata request with the
            // broker's defaults: a broker that forgot the topic would
            // otherwise bring it back with a partition count nobody chose.
            .set("allow.auto.create.topics", "false");
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }

    /// Creates the topic unless it exists, when `partitions` asks for it (0:
    /// leave topics to the operator). Brokers that auto-create topics would
    /// pick their own partition count, so this is explicit.
    pub async fn ensure_topic(&self) -> Result<(), LogError> {
        if self.partitions == 0 {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.client().create()?;
        let topic = NewTopic::new(
            &self.topic,
            i32::try_from(self.partitions).unwrap_or(i32::MAX),
            TopicReplication::Fixed(i32::from(self.replication)),
        );
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics([&topic], &options).await? {
            match result {
                Ok(_) => {
                    tracing::info!(topic = %self.topic, partitions = self.partitions, "created topic")
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(%topic, %code, "creating topic failed");
                    return Err(LogError::Kafka(KafkaError::AdminOp(code)));
                }
            }
        }
        Ok(())
    }

    /// [`ensure_topic`](Self::ensure_topic) until it succeeds, with backoff:
    /// a process started before its brokers answer stays up (and unready,
    /// its caller has not set readiness yet) instead of exiting, and goes on
    /// by itself once they do. Returns `Ok(false)` if `shutdown` came first.
    /// Errors no retry can fix (bad settings, no permission) are returned.
    pub async fn ensure_topic_patiently(&self, shutdown: &Shutdown) -> Result<bool, LogError> {
        let mut backoff = Duration::from_millis(500);
        loop {
            match self.ensure_topic().await {
                Ok(()) => return Ok(true),
                Err(err) if !retryable(&err) => return Err(err),
                Err(err) => {
                    tracing::warn!(%err, ?backoff, topic = %self.topic, "brokers not usable yet; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Whether a failure to create the topic may clear by itself (brokers
/// starting, unreachable, electing), as opposed to settings that are wrong.
fn retryable(err: &LogError) -> bool {
    match err {
        LogError::Kafka(KafkaError::ClientCreation(_)) => false,
        LogError::Kafka(KafkaError::AdminOp(code)) => !matches!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::PolicyViolation
        ),
        _ => true,
    }
}

/// The producing side, shared by all requests of a gateway.
///
/// The idempotent producer keeps a producer id and sequence numbers that
/// the brokers must remember. A broker that lost them (a test broker
/// restarted empty, or a cluster rebuilt under the same address) makes
/// librdkafka raise a fatal error, after which that producer refuses every
/// send for good. So the producer is replaceable: the first caller that sees
/// it fatally failed builds a new one, with a new id.
#[derive(Clone)]
pub struct KafkaLog {
    shared: Arc<Shared>,
    topic: Arc<str>,
    timeout: Duration,
}

struct Shared {
    config: KafkaConfig,
    producer: RwLock<FutureProducer>,
    /// The last probe found the brokers unreachable, or a send timed out:
    /// the producer in use may be stuck (see [`KafkaLog::reachable`]).
    suspect: AtomicBool,
}

impl KafkaLog {
    pub fn new(config: &KafkaConfig) -> Result<Self, LogError> {
        Ok(Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                producer: RwLock::new(Self::producer_for(config)?),
                suspect: AtomicBool::new(false),
            }),
            topic: config.topic.as_str().into(),
            timeout: config.produce_timeout,
        })
    }

    fn producer_for(config: &KafkaConfig) -> Result<FutureProducer, LogError> {
        Ok(config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.produce_timeout.as_millis().to_string(),
            )
            .create()?)
    }

    /// The producer in use (a cheap handle).
    fn producer(&self) -> FutureProducer {
        self.shared
            .producer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces `used` if it failed fatally and nobody replaced it yet.
    /// Returns whether the producer in use is now a working one.
    fn replace_if_fatal(&self, used: &FutureProducer) -> bool {
        match used.client().fatal_error() {
            Some((code, reason)) => self.replace(used, &format!("fatal error {code}: {reason}")),
            None => true,
        }
    }

    /// Puts a new producer in place of `used`, unless another caller did so
    /// already. Returns whether the producer in use is now a new one.
    fn replace(&self, used: &FutureProducer, why: &str) -> bool {
        let mut current = self
            .shared
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if current.client().native_ptr() != used.client().native_ptr() {
            return true; // another caller got here first
        }
        match Self::producer_for(&self.shared.config) {
            Ok(fresh) => {
                tracing::warn!(why, "Kafka producer replaced by a new one");
                allezon_core::metrics::metrics().log.producer_rebuilds.inc();
                // Sends in flight keep the old producer alive until they end.
                *current = fresh;
                true
            }
            Err(err) => {
                tracing::error!(%err, why, "Kafka producer cannot be rebuilt");
                false
            }
        }
    }

    /// Whether the brokers answer and every partition of the topic has a
    /// leader: the readiness probe of the processes on Kafka. Asks the
    /// brokers for the topic's metadata, off the async workers.
    ///
    /// Also repairs what a broker that lost its state leaves behind. Such a
    /// broker does not know the idempotent producer's id: librdkafka then
    /// either fails the producer for good or (as against tansu) lets every
    /// send time out. So a producer failed for good is replaced at once, and
    /// one that lived through an outage, or whose sends timed out, is
    /// replaced as soon as the brokers answer again. A missing topic is
    /// created again when this process is configured to create it.
    pub async fn reachable(&self, within: Duration) -> bool {
        let producer = self.producer();
        if !self.replace_if_fatal(&producer) {
            return false;
        }
        let (producer, topic) = (self.producer(), Arc::clone(&self.topic));
        let used = producer.clone();
        let ready =
            tokio::task::spawn_blocking(move || topic_state(producer.client(), &topic, within))
                .await
                .unwrap_or(TopicState::Unreachable);
        if matches!(ready, TopicState::Unreachable) {
            self.shared.suspect.store(true, Ordering::Release);
        }
        match ready {
            TopicState::Ready => {
                if self.shared.suspect.swap(false, Ordering::AcqRel) {
                    return self.replace(
                        &used,
                        "the brokers answer again after an outage or a timed-out send",
                    );
                }
                true
            }
            TopicState::Missing if self.shared.config.partitions > 0 => {
                tracing::warn!(topic = %self.topic, "the topic is gone; creating it again");
                // The brokers forgot it, and with it this producer's state:
                // its sends would only time out (10 s, while clients wait
                // 200 ms). They fail now instead, before the topic exists
                // again, so none of them lands in the new one after its
                // client was answered 503; the producer is replaced at the
                // next probe.
                self.shared.suspect.store(true, Ordering::Release);
                used.purge(PurgeConfig::default().queue().inflight());
                if let Err(err) = self.shared.config.ensure_topic().await {
                    tracing::warn!(%err, "re-creating the topic failed");
                }
                false
            }
            TopicState::Missing => {
                self.shared.suspect.store(true, Ordering::Release);
                false
            }
            TopicState::Unready | TopicState::Unreachable => false,
        }
    }

    /// Takes the whole produce path through its first use before the
    /// gateway serves: waits until every partition of the topic has a leader
    /// (a topic created a moment ago may not), then produces `noop` (a
    /// record the workers skip) to each partition and waits for the broker's
    /// acknowledgements. After that the producer has its idempotent id and a
    /// connection to every leader, and the first tags pay for none of it.
    pub async fn warm_up(&self, noop: &[u8], within: Duration) -> Result<(), LogError> {
        let deadline = tokio::time::Instant::now() + within;
        let partitions = loop {
            let (producer, topic) = (self.producer(), Arc::clone(&self.topic));
            let leaders = tokio::task::spawn_blocking(move || {
                let metadata = producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(5))?;
                let topic = metadata.topics().first().filter(|t| t.error().is_none());
                Ok::<_, KafkaError>(topic.map(|t| {
                    let ready = t
                        .partitions()
                        .iter()
                        .all(|p| p.error().is_none() && p.leader() >= 0);
                    (ready, t.partitions().len())
                }))
            })
            .await
            .map_err(|_| LogError::Kafka(KafkaError::Canceled))?;
            match leaders {
                Ok(Some((true, n))) if n > 0 => break n,
                Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(_) => {
                    return Err(LogError::Kafka(KafkaError::MetadataFetch(
                        RDKafkaErrorCode::UnknownTopicOrPartition,
                    )));
                }
                Err(err) => return Err(LogError::Kafka(err)),
            }
        };
        let producer = self.producer();
        let sends = (0..partitions).map(|partition| {
            let record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(i32::try_from(partition).unwrap_or(i32::MAX))
                .payload(noop);
            producer.send(record, self.timeout)
        });
        for delivery in futures::future::join_all(sends).await {
            delivery.map_err(|(err, _)| LogError::Kafka(err))?;
        }
        Ok(())
    }
}

/// What a metadata request says of the topic.
enum TopicState {
    /// Every partition has a leader.
    Ready,
    /// The brokers answer, and do not know the topic.
    Missing,
    /// The topic exists, but some partition has no leader (yet).
    Unready,
    /// The brokers did not answer in time.
    Unreachable,
}

/// What the brokers say of `topic` within `within`. Blocks: call off the
/// async workers.
fn topic_state<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    within: Duration,
) -> TopicState {
    let Ok(metadata) = client.fetch_metadata(Some(topic), within) else {
        return TopicState::Unreachable;
    };
    let Some(topic) = metadata.topics().first() else {
        return TopicState::Missing;
    };
    match topic.error() {
        Some(code) if RDKafkaErrorCode::from(code) == RDKafkaErrorCode::UnknownTopicOrPartition => {
            TopicState::Missing
        }
        Some(_) => TopicState::Unready,
        None if topic.partitions().is_empty() => TopicState::Missing,
        None if topic
            .partitions()
            .iter()
            .all(|p| p.error().is_none() && p.leader() >= 0) =>
        {
            TopicState::Ready
        }
        None => TopicState::Unready,
    }
}

/// The readiness probe of a process that reads the topic but does not
/// write it (a worker, whose consumer belongs to its task): a plain client
/// with no producer state, asked [`KafkaProbe::reachable`].
#[derive(Clone)]
pub struct KafkaProbe {
    client: Arc<BaseProducer>,
    topic: Arc<str>,
}

impl KafkaProbe {
    pub fn new(config: &KafkaConfig) -> Result<Self, LogError> {
        Ok(Self {
            client: Arc::new(config.client().create()?),
            topic: config.topic.as_str().into(),
        })
    }

    /// As [`KafkaLog::reachable`].
    pub async fn reachable(&self, within: Duration) -> bool {
        let (client, topic) = (Arc::clone(&self.client), Arc::clone(&self.topic));
        tokio::task::spawn_blocking(move || {
            matches!(
                topic_state(client.client(), &topic, within),
                TopicState::Ready
            )
        })
        .await
        .unwrap_or(false)
    }
}

impl EventLog for KafkaLog {
    async fn append(
        &self,
        key: &[u8],
        payload: Vec<u8>,
        trace: &Carried,
    ) -> Result<Position, LogError> {
        let mut record = FutureRecord::to(&self.topic).key(key).payload(&payload);
        if !trace.traceparent.is_empty() {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: trace::TRACEPARENT,
                value: Some(&trace.traceparent),
            });
            if !trace.tracestate.is_empty() {
                headers = headers.insert(Header {
                    key: trace::TRACESTATE,
                    value: Some(&trace.tracestate),
                });
            }
            record = record.headers(headers);
        }
        let log = &allezon_core::metrics::metrics().log;
        let labels = allezon_core::metrics::LogLabels { log: "kafka" };
        let started = std::time::Instant::now();
        let producer = self.producer();
        let delivery = producer.send(record, self.timeout).await;
        log.produce_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let delivery = delivery.map_err(|(err, _)| {
            log.produce_errors.get_or_create(&labels).inc();
            // This tag failed either way; the next ones get a working
            // producer, now or after the next probe.
            if matches!(
                err,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
            ) {
                self.shared.suspect.store(true, Ordering::Release);
            }
            self.replace_if_fatal(&producer);
            LogError::Kafka(err)
        })?;
        Ok(Position {
            partition: u32::try_from(delivery.partition).unwrap_or_default(),
            offset: u64::try_from(delivery.offset).unwrap_or_default(),
        })
    }
}

/// Assignment as seen by rebalance callbacks, read by the worker between
/// polls. Kept as plain numbers: holding a `TopicPartitionList` from the
/// consumer would keep it from closing.
#[derive(Default)]
struct Assignment {
    partitions: Mutex<Vec<u32>>,
    generation: AtomicU64,
}

struct GroupContext {
    assignment: Arc<Assignment>,
    /// Per partition, the log's end (high watermark) from librdkafka's last
    /// statistics report: the consumer lag without a request of our own.
    ends: Arc<Mutex<BTreeMap<u32, u64>>>,
}

/// How often librdkafka reports its statistics (the log's ends among them).
const STATISTICS_EVERY_MS: &str = "5000";

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut ends = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        for topic in statistics.topics.values() {
            for (partition, stats) in &topic.partitions {
                // librdkafka's internal partition (-1) and unknown ends (-1)
                // are left out.
                if let (Ok(partition), Ok(end)) =
                    (u32::try_from(*partition), u64::try_from(stats.hi_offset))
                {
                    ends.insert(partition, end);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut partitions = self
            .assignment
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match rebalance {
            Rebalance::Assign(list) => {
                *partitions = list
                    .elements()
                    .iter()
                    .filter_map(|e| u32::try_from(e.partition()).ok())
                    .collect();
                partitions.sort_unstable();
            }
            Rebalance::Revoke(_) => partitions.clear(),
            Rebalance::Error(err) => {
                tracing::error!(%err, "rebalance failed");
                partitions.clear();
            }
        }
        tracing::info!(partitions = ?*partitions, "partition assignment changed");
        allezon_core::metrics::metrics()
            .worker
            .assigned_partitions
            .set(i64::try_from(partitions.len()).unwrap_or(i64::MAX));
        self.assignment.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// How long a watermark query may take before the worker is told it failed
/// (and retries).
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(2);

/// A watermark query still running after this long is taken as hung for
/// good: seen with a broker that restarted empty, where librdkafka's query
/// loops while the partition's leader is unknown, past its timeout
/// (librdkafka #4878, rust-rdkafka #762), and did not return in minutes.
const WATERMARKS_HUNG_AFTER: Duration = Duration::from_secs(30);

/// A watermark query on its blocking thread: the partition's (low, high).
type WatermarksQuery = JoinHandle<Result<(i64, i64), KafkaError>>;

/// One member of a consumer group on the topic.
pub struct KafkaConsumer {
    /// Shared with the blocking thread of a watermark query.
    consumer: Arc<StreamConsumer<GroupContext>>,
    /// A watermark query that outlived its timeout, with when it was asked:
    /// waited for again before another is started, so a hung librdkafka
    /// call holds one blocking thread, not one per retry.
    hung_query: Option<(Instant, WatermarksQuery)>,
    topic: String,
    assignment: Arc<Assignment>,
    ends: Arc<Mutex<BTreeMap<u32, u64>>>,
    /// Seeks librdkafka refused so far (a partition whose fetcher has not
    /// started yet answers "erroneous state"); retried before every poll, and
    /// records of such a partition are dropped until its seek lands.
    pending_seeks: BTreeMap<u32, u64>,
    /// Generation the pending seeks belong to.
    seeks_generation: u64,
}

impl KafkaConsumer {
    pub fn new(config: &KafkaConfig, group: &str) -> Result<Self, LogError> {
        let assignment = Arc::new(Assignment::default());
        let ends = Arc::default();
        let mut client = config.client();
        if let Some(id) = &config.instance_id {
            client.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<GroupContext> = client
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            // The worker decides where each partition starts; the log's
            // position is only a fallback for partitions never applied.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // The worker lingers 100 ms to fold bigger batches anyway; letting
            // the broker hold a fetch as long spares it a request per record.
            .set("fetch.wait.max.ms", "100")
            .set("fetch.min.bytes", "65536")
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            // Three heartbeats per session, as the protocol advises.
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout.as_millis() / 3)
                    .max(100)
                    .to_string(),
            )
            .set("statistics.interval.ms", STATISTICS_EVERY_MS)
            .create_with_context(GroupContext {
                assignment: Arc::clone(&assignment),
                ends: Arc::clone(&ends),
            })?;
        consumer.subscribe(&[config.topic.as_str()])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            hung_query: None,
            topic: config.topic.clone(),
            assignment,
            ends,
            pending_seeks: BTreeMap::new(),
            seeks_generation: 0,
        })
    }

    /// The partition's first and end offsets, asked of its leader. The
    /// query is a blocking librdkafka call that may not return at all (see
    /// [`WATERMARKS_HUNG_AFTER`]): it runs on a blocking thread, so the
    /// worker's task, and the watchdog beside it, keep running. A query
    /// that times out is a transient error; one hung for good is
    /// [`LogError::Hung`], which stops the worker so that a new process,
    /// with a new client, takes over.
    async fn watermarks(&mut self, partition: u32) -> Result<(i64, i64), LogError> {
        let p = i32::try_from(partition).map_err(|_| LogError::NotAssigned(partition))?;
        let timed_out = || {
            LogError::Kafka(KafkaError::MetadataFetch(
                RDKafkaErrorCode::OperationTimedOut,
            ))
        };
        if let Some((asked, mut query)) = self.hung_query.take() {
            // Its answer is for an earlier question; only its end matters.
            if tokio::time::timeout(WATERMARKS_TIMEOUT, &mut query)
                .await
                .is_err()
            {
                let waited = asked.elapsed();
                self.hung_query = Some((asked, query));
                if waited > WATERMARKS_HUNG_AFTER {
                    return Err(LogError::Hung(format!(
                        "a watermark query of topic {} has not returned for {waited:?}",
                        self.topic
                    )));
                }
                return Err(timed_out());
            }
        }
        let (consumer, topic) = (Arc::clone(&self.consumer), self.topic.clone());
        let asked = Instant::now();
        let mut query = tokio::task::spawn_blocking(move || {
            consumer.fetch_watermarks(&topic, p, WATERMARKS_TIMEOUT)
        });
        // librdkafka checks its request timeouts once a second.
        match tokio::time::timeout(WATERMARKS_TIMEOUT + Duration::from_secs(1), &mut query).await {
            Ok(Ok(answer)) => Ok(answer?),
            Ok(Err(join)) => Err(LogError::Task(join.to_string())),
            Err(_elapsed) => {
                tracing::warn!(partition, "a watermark query did not return in time");
                self.hung_query = Some((asked, query));
                Err(timed_out())
            }
        }
    }

    fn apply_seeks(&mut self) {
        let generation = self.generation();
        if generation != self.seeks_generation {
            // A rebalance since: the worker positions the new assignment.
            self.pending_seeks.clear();
            self.seeks_generation = generation;
        }
        let (consumer, topic) = (&self.consumer, self.topic.as_str());
        self.pending_seeks.retain(|&partition, &mut offset| {
            let at = Offset::Offset(i64::try_from(offset).unwrap_or(i64::MAX));
            let p = i32::try_from(partition).unwrap_or_default();
            match consumer.seek(topic, p, at, Duration::from_secs(1)) {
                Ok(()) => false,
                Err(err) => {
                    tracing::debug!(%err, partition, offset, "seek not possible yet");
                    true
                }
            }
        });
    }

    fn to_record(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<Record> {
        let header = |key: &str| {
            message
                .headers()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == key)
                        .and_then(|h| h.value)
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        };
        Some(Record {
            partition: u32::try_from(message.partition()).ok()?,
            offset: u64::try_from(message.offset()).ok()?,
            payload: message.payload().unwrap_or_default().to_vec(),
            trace: Carried {
                traceparent: header(trace::TRACEPARENT),
                tracestate: header(trace::TRACESTATE),
            },
        })
    }
}

impl LogConsumer for KafkaConsumer {
    fn assignment(&self) -> Vec<u32> {
        self.assignment
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn generation(&self) -> u64 {
        self.assignment.generation.load(Ordering::Acquire)
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        self.apply_seeks();
        let generation = self.generation();
        // Wait for the first record; rebalances are served inside `recv`.
        let first = match tokio::time::timeout(wait, self.consumer.recv()).await {
            Err(_elapsed) => return Ok(out),
            Ok(message) => message?,
        };
        out.extend(Self::to_record(&first));
        drop(first);
        // Then take what is already fetched, without waiting.
        while out.len() < max && self.generation() == generation {
            match self.consumer.recv().now_or_never() {
                Some(message) => out.extend(Self::to_record(&message?)),
                None => break,
            }
        }
        if self.generation() != generation {
            // Records fetched across a rebalance may belong to partitions
            // this member no longer owns; the worker repositions first.
            let owned = self.assignment();
            out.retain(|r| owned.contains(&r.partition));
        }
        // Records of a partition whose seek was still pending when they were
        // fetched come from the old position, even if the seek lands now.
        let unpositioned: Vec<u32> = self.pending_seeks.keys().copied().collect();
        self.apply_seeks();
        out.retain(|r| !unpositioned.contains(&r.partition));
        Ok(out)
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError> {
        if !self.assignment().contains(&partition) {
            return Err(LogError::NotAssigned(partition));
        }
        self.pending_seeks.insert(partition, offset);
        self.apply_seeks();
        Ok(())
    }

    async fn first_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        let (low, _high) = self.watermarks(partition).await?;
        Ok(u64::try_from(low).unwrap_or(0))
    }

    async fn current_end(&mut self, partition: u32) -> Result<Option<u64>, LogError> {
        let (_low, high) = self.watermarks(partition).await?;
        Ok(u64::try_from(high).ok())
    }

    fn system(&self) -> &'static str {
        "kafka"
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn end_offset(&self, partition: u32) -> Option<u64> {
        self.ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&partition)
            .copied()
    }

    async fn commit(&mut self, partition: u32, next_offset: u64) -> Result<(), LogError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &self.topic,
            i32::try_from(partition).map_err(|_| LogError::NotAssigned(partition))?,
            Offset::Offset(i64::try_from(next_offset).unwrap_or(i64::MAX)),
        )?;
        // Async: the aggregate store's watermark is the truth, this commit
        // only shortens the replay of a partition after a crash and feeds
        // lag monitoring. A failed commit is logged by librdkafka.
        self.consumer.commit(&list, CommitMode::Async)?;
        Ok(())
    }
}

/// For tests: the broker named by `ALLEZON_TEST_KAFKA_BROKERS` (which
/// `scripts/test.sh` starts and exports), or `None`, said loudly, when this
/// run has none. Under CI a missing broker is a failure, not a skip.
pub fn test_brokers() -> Option<String> {
    match std::env::var("ALLEZON_TEST_KAFKA_BROKERS") {
        Ok(brokers) if !brokers.is_empty() => Some(brokers),
        _ if std::env::var_os("CI").is_some() => {
            panic!("ALLEZON_TEST_KAFKA_BROKERS must be set under CI (scripts/test.sh does it)")
        }
        _ => {
            eprintln!("SKIPPED: ALLEZON_TEST_KAFKA_BROKERS is not set; run scripts/test.sh");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Properties reach librdkafka: one it does not know stops the client
    /// at creation, naming it, instead of being dropped silently.
    #[test]
    fn properties_pass_through_to_librdkafka() {
        let mut config = KafkaConfig::new("127.0.0.1:9", "t");
        config.properties = vec![("sasl.mechanism".into(), "PLAIN".into())];
        assert!(KafkaLog::new(&config).is_ok());
        config.properties = vec![("no.such.property".into(), "1".into())];
        let err = KafkaLog::new(&config)
            .err()
            .expect("an unknown property is refused");
        assert!(err.to_string().contains("no.such.property"), "{err}");
        config.properties = vec![("security.protocol".into(), "NOT_A_PROTOCOL".into())];
        assert!(KafkaConsumer::new(&config, "g").is_err());
    }
}
