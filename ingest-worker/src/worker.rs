//! The worker loop: poll the log, fold each partition's run of records into
//! cells, apply them through aggregate-svc, and only then commit.
//!
//! Exactly once: aggregate-svc keeps, per partition, the offset after the last
//! applied batch, written atomically with the cells. The worker starts each
//! partition there (not at the log's commit, which may lag), so a crash
//! between apply and commit replays nothing; and a batch sent twice (a retry
//! after a lost answer) is recognised and skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use allezon_api::{Aggregates, Ids, Profiles, Services};
use allezon_core::cells::{Fold, FoldInput};
use allezon_core::shutdown::Shutdown;
use allezon_core::trace::Carried;
use allezon_core::{Action, ErrorKind};
use allezon_proto::v1 as pb;
use event_log::{LogConsumer, LogError, Record};
use prost::Message;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use thiserror::Error;
use tracing::Instrument as _;

use crate::ids::IdCache;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Most records folded into one batch.
    pub batch_max: usize,
    /// Longest the worker waits for a first record before checking for
    /// shutdown and rebalances again.
    pub flush_every: Duration,
    /// After a first record arrives, how long to let more accumulate before
    /// folding. Larger batches fold more tags into each cell and cost one
    /// aggregate-svc call and one fsync for all of them; this bounds the delay
    /// a tag sees before it is counted.
    pub linger: Duration,
    /// A worker whose loop has not come round for this long is stuck (an
    /// await that never ends); [`run_watched`] stops it. A round takes a
    /// poll, one batch's calls, or one backoff sleep: seconds at most.
    pub stuck_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            batch_max: 10_000,
            flush_every: Duration::from_millis(250),
            linger: Duration::from_millis(100),
            stuck_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("aggregate-svc: {0}")]
    Aggregates(tonic::Status),
    #[error("profile-svc: {0}")]
    Profiles(tonic::Status),
    #[error("the worker made no progress for {0:?}; stopped so that it is restarted")]
    Stuck(Duration),
    #[error("the worker panicked: {0}")]
    Panicked(String),
    #[error(
        "partition {partition} read nothing for {after:?} while the log holds records \
         {position}..{end}; stopped so that it is restarted"
    )]
    Stalled {
        partition: u32,
        position: u64,
        end: u64,
        after: Duration,
    },
}

impl WorkerError {
    /// An internal error of a service: retried, but not forever.
    fn is_fault(&self) -> bool {
        match self {
            WorkerError::Aggregates(status) | WorkerError::Profiles(status) => {
                allezon_core::Error::from_status(status).kind() == ErrorKind::Internal
            }
            WorkerError::Log(_)
            | WorkerError::Stuck(_)
            | WorkerError::Panicked(_)
            | WorkerError::Stalled { .. } => false,
        }
    }

    /// Failures that go away by themselves: a service restarting, a broker
    /// or network hiccup. The worker retries them with backoff.
    fn is_transient(&self) -> bool {
        match self {
            WorkerError::Aggregates(status) | WorkerError::Profiles(status) => transient(status),
            WorkerError::Log(LogError::Kafka(_)) => true,
            WorkerError::Log(_)
            | WorkerError::Stuck(_)
            | WorkerError::Panicked(_)
            | WorkerError::Stalled { .. } => false,
        }
    }
}

pub struct Worker<C> {
    consumer: C,
    ids: IdCache,
    aggregates: Arc<dyn Aggregates>,
    /// Set when this worker builds the profiles from the log too (the
    /// multi-process mode); see [`Worker::building_profiles`].
    profiles: Option<Arc<dyn Profiles>>,
    config: WorkerConfig,
    /// The consumer generation whose partitions were positioned.
    positioned: Option<u64>,
    /// Per partition, the end of a batch the store started but did not
    /// finish: the next batch must end exactly there.
    cuts: BTreeMap<u32, u64>,
    /// Records polled beyond a cut, or before it was reached, kept for the
    /// next batch.
    held: BTreeMap<u32, Vec<Record>>,
    /// Per positioned partition, the offset the next record must reach.
    /// Anything below it was fetched from a position that is void (before a
    /// seek took effect, or a re-delivery after one): folding it would count
    /// records twice, or cut a batch that does not match the store's.
    expect: BTreeMap<u32, u64>,
    /// Partitions positioned but not yet read from (see `step`).
    fresh: BTreeSet<u32>,
    /// Partitions whose log restarted below their watermark, with that
    /// watermark: their next batch rebases them (see `position`).
    rebases: BTreeMap<u32, u64>,

    /// Per positioned partition, when it last moved on or was caught up:
    /// see [`Worker::check_stalls`].
    progressed: BTreeMap<u32, Instant>,
    heartbeat: Heartbeat,
}

/// When the worker's loop last came round, for the watchdog in
/// [`run_watched`].
#[derive(Clone, Default)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    fn base() -> Instant {
        static BASE: OnceLock<Instant> = OnceLock::new();
        *BASE.get_or_init(Instant::now)
    }

    fn beat(&self) {
        let ms = u64::try_from(Self::base().elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        Self::base()
            .elapsed()
            .saturating_sub(Duration::from_millis(self.0.load(Ordering::Relaxed)))
    }
}

/// Runs `worker` until `shutdown`, and stops it with [`WorkerError::Stuck`]
/// if its loop stops coming round: an await that never ends (a call that
/// hangs without a deadline, an engine that blocks) would otherwise freeze
/// the statistics silently while tags keep being accepted. The caller turns
/// the error into unreadiness, the failures metric, and a restart.
///
/// The worker runs as a task of its own: a call that blocks its thread
/// (a client library's synchronous call that never returns) must not block
/// the watchdog too, as it would if both were one future. Such a task
/// cannot be cancelled; the process must end (see the ingest-worker
/// binary).
pub async fn run_watched<C: LogConsumer + 'static>(
    worker: Worker<C>,
    shutdown: Shutdown,
) -> Result<(), WorkerError> {
    let heartbeat = worker.heartbeat.clone();
    let after = worker.config.stuck_after;
    heartbeat.beat();
    let watchdog = async {
        loop {
            tokio::time::sleep(after / 8).await;
            if heartbeat.age() > after {
                return;
            }
        }
    };
    // Aborted if this future is dropped, as the worker was when it ran
    // inside it.
    let mut task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(worker.run(shutdown)));
    tokio::select! {
        joined = &mut task => joined.unwrap_or_else(|err| {
            // A panic in the worker; the process ends on it like on any
            // other failure.
            Err(WorkerError::Panicked(err.to_string()))
        }),
        // Returning drops `task`, which aborts it (if it can be reached).
        () = watchdog => {
            metrics().stuck.inc();
            tracing::error!(?after, "the ingest worker is stuck");
            Err(WorkerError::Stuck(after))
        }
    }
}

/// Retries of a batch that keeps failing with an internal error of a
/// service (a store fault, a bug), about 15 s with the backoff: a fault
/// that a restart of the service clears is retried, but one that never
/// clears stops the worker, so it is seen (readiness, the failures metric,
/// a restart by its supervisor) instead of freezing a partition forever.
const MAX_FAULT_RETRIES: u32 = 16;

/// First retry delay after a transient failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
// Capped low: a restarted service is back within a second or two, and every
// second the worker waits past that is a second of profiles going stale.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

impl<C: LogConsumer> Worker<C> {
    pub fn new(
        consumer: C,
        ids: Arc<dyn Ids>,
        aggregates: Arc<dyn Aggregates>,
        config: WorkerConfig,
    ) -> Self {
        Self {
            consumer,
            ids: IdCache::new(ids),
            aggregates,
            profiles: None,
            config,
            positioned: None,
            cuts: BTreeMap::new(),
            held: BTreeMap::new(),
            expect: BTreeMap::new(),
            fresh: BTreeSet::new(),
            rebases: BTreeMap::new(),
            progressed: BTreeMap::new(),
            heartbeat: Heartbeat::default(),
        }
    }

    /// Makes this worker write every tag it reads into `profiles` before it
    /// counts it, and count only the tags the profile store saw first at
    /// this log position. Then the log is the only write on the request
    /// path, and a tag is in both views or in neither; a tag sent twice is
    /// stored once and counted once, through crashes and replays too.
    pub fn building_profiles(mut self, profiles: Arc<dyn Profiles>) -> Self {
        self.profiles = Some(profiles);
        self
    }

    /// A worker calling the services over gRPC, building profiles as well
    /// as statistics from the log.
    pub fn remote(consumer: C, services: Services, config: WorkerConfig) -> Self {
        Self::new(consumer, services.ids, services.aggregates, config)
            .building_profiles(services.profiles)
    }

    /// Runs until `shutdown`. Transient failures of the services are retried
    /// with backoff; the batch in hand is finished before stopping.
    pub async fn run(mut self, shutdown: Shutdown) -> Result<(), WorkerError> {
        let mut backoff = FIRST_BACKOFF;
        // Consecutive failures that may not go away by themselves.
        let mut faults = 0;
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            let stepped = self.step(&shutdown).await;
            // Also while the services are down: the lag then grows.
            self.record_lag();
            match stepped {
                Ok(()) => {
                    backoff = FIRST_BACKOFF;
                    faults = 0;
                    self.check_stalls()?;
                }
                Err(err) if err.is_fault() && faults >= MAX_FAULT_RETRIES => {
                    tracing::error!(%err, faults, "the same fault keeps failing the batch; giving up");
                    return Err(err);
                }
                Err(err) if err.is_transient() => {
                    if err.is_fault() {
                        faults += 1;
                    }
                    metrics().retries.inc();
                    tracing::warn!(%err, ?backoff, "aggregate path or log unavailable, retrying");
                    // Re-read the watermarks: the failed call may have landed.
                    self.positioned = None;
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => return Err(err),
            }
        }
        tracing::info!("ingest worker stopped");
        Ok(())
    }

    /// One poll and its batches.
    async fn step(&mut self, shutdown: &Shutdown) -> Result<(), WorkerError> {
        self.position().await?;
        let mut records = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            records = self.consumer.poll(self.config.batch_max, self.config.flush_every) => records?,
        };
        if !records.is_empty() && records.len() < self.config.batch_max {
            // Finishing the batch is part of shutting down, so no select here.
            tokio::time::sleep(self.config.linger).await;
            let room = self.config.batch_max - records.len();
            records.extend(self.consumer.poll(room, Duration::ZERO).await?);
        }
        let mut by_partition = std::mem::take(&mut self.held);
        // One clock read for the poll, not one per record.
        let now = Instant::now();
        // Fresh partitions whose first record skipped ahead in this poll.
        let mut suspect: Vec<u32> = Vec::new();
        // Partitions that delivered a record behind a position they had read
        // on from: a late seek's re-delivery, or a consumer that reset to the
        // start of a log that restarted (see below).
        let mut went_back: Vec<u32> = Vec::new();
        for record in records {
            // Only records that continue where this partition stands; a
            // partition not positioned yet (records fetched across a
            // rebalance) is read again once it is.
            let Some(expect) = self.expect.get_mut(&record.partition) else {
                continue;
            };
            if record.offset < *expect {
                metrics().stale.inc();
                if !self.fresh.contains(&record.partition) && !went_back.contains(&record.partition)
                {
                    went_back.push(record.partition);
                }
                continue;
            }
            if self.fresh.contains(&record.partition) {
                // The first record after a seek must be the one sought. One
                // further on may come from where the fetcher stood before
                // the seek took effect; folding it would skip everything in
                // between for good. It is a real gap only if the log no
                // longer holds the records in between (retention); else seek
                // again.
                if suspect.contains(&record.partition) {
                    metrics().stale.inc();
                    continue;
                }
                if record.offset > *expect {
                    let first = self
                        .consumer
                        .first_offset(record.partition)
                        .await
                        .unwrap_or(0);
                    if first <= *expect {
                        metrics().stale.inc();
                        suspect.push(record.partition);
                        continue;
                    }
                    tracing::warn!(
                        partition = record.partition,
                        expected = *expect,
                        first_retained = first,
                        offset = record.offset,
                        "records before the position were removed from the log; reading on"
                    );
                }
                self.fresh.remove(&record.partition);
            }
            *expect = record.offset + 1;
            self.progressed.insert(record.partition, now);
            by_partition
                .entry(record.partition)
                .or_default()
                .push(record);
        }
        for partition in went_back {
            let position = self.expect.get(&partition).copied().unwrap_or(0);
            if self
                .consumer
                .current_end(partition)
                .await?
                .is_some_and(|end| end < position)
            {
                // The log is now shorter than what this worker read of it:
                // it restarted, and the broker did not make the group
                // rebalance. Positioning again finds it and rebases.
                self.positioned = None;
                return Ok(());
            }
        }
        if !suspect.is_empty() {
            self.positioned = None;
            return Ok(());
        }
        for (partition, mut records) in by_partition {
            if let Some(&cut) = self.cuts.get(&partition) {
                // Re-cut the unfinished batch exactly; the rest waits.
                let beyond = records.partition_point(|r| r.offset < cut);
                let rest = records.split_off(beyond);
                let complete =
                    !rest.is_empty() || records.last().is_some_and(|r| r.offset + 1 >= cut);
                if !complete {
                    self.held.insert(partition, records);
                    continue;
                }
                if !rest.is_empty() {
                    self.held.insert(partition, rest);
                }
            }
            self.apply(partition, &records).await?;
            self.cuts.remove(&partition);
        }
        Ok(())
    }

    /// Stops the worker when a partition has records to read and has read
    /// none of them for `stuck_after`, although every call succeeds: a
    /// consumer that silently stopped fetching (a seek that never lands, a
    /// fetcher left behind by a rebalance) would otherwise freeze the
    /// statistics and the profiles while tags keep being accepted. A
    /// restarted process starts from the watermarks with a new consumer.
    /// Time spent failing is not counted: a failure repositions, and
    /// positioning starts the clock again.
    fn check_stalls(&mut self) -> Result<(), WorkerError> {
        let after = self.config.stuck_after;
        for (&partition, &position) in &self.expect {
            let since = self
                .progressed
                .entry(partition)
                .or_insert_with(Instant::now);
            let end = self.consumer.end_offset(partition).unwrap_or(0);
            if end <= position || self.held.contains_key(&partition) {
                // Caught up (as of the log's last report), or waiting for
                // the rest of a batch it holds.
                *since = Instant::now();
            } else if since.elapsed() > after {
                metrics().stuck.inc();
                tracing::error!(partition, position, end, ?after, "partition stalled");
                return Err(WorkerError::Stalled {
                    partition,
                    position,
                    end,
                    after,
                });
            }
        }
        Ok(())
    }

    /// Per assigned partition, how far the log's end is ahead of the
    /// position this worker reads next.
    fn record_lag(&self) {
        for (&partition, &position) in &self.expect {
            if let Some(end) = self.consumer.end_offset(partition) {
                metrics()
                    .lag
                    .get_or_create(&allezon_core::metrics::PartitionLabels { partition })
                    .set(i64::try_from(end.saturating_sub(position)).unwrap_or(i64::MAX));
            }
        }
    }

    /// After a start or a rebalance, moves every assigned partition to where
    /// aggregate-svc says its applied records end.
    async fn position(&mut self) -> Result<(), WorkerError> {
        let generation = self.consumer.generation();
        if self.positioned == Some(generation) {
            return Ok(());
        }
        let partitions = self.consumer.assignment();
        let marks = self
            .aggregates
            .get_watermarks(pb::GetWatermarksRequest {
                partitions: partitions.clone(),
            })
            .await
            .map_err(WorkerError::Aggregates)?;
        // Records in hand were read from positions that are now void.
        self.held.clear();
        self.cuts.clear();
        self.expect.clear();
        self.fresh.clear();
        self.progressed.clear();
        self.rebases.clear();
        let pending = marks
            .pending_next_offsets
            .iter()
            .copied()
            .chain(std::iter::repeat(0));
        for ((partition, watermark), pending) in
            partitions.into_iter().zip(marks.next_offsets).zip(pending)
        {
            // The store is the truth, not the log's commit: 0 (nothing
            // applied yet) starts the partition from the beginning of what
            // the log retains. Records polled before this point were void.
            let end = if watermark > 0 {
                self.consumer.current_end(partition).await?
            } else {
                None
            };
            if let Some(end) = end.filter(|&end| end < watermark) {
                // The log ends below what was applied from it: it restarted
                // (a broker that forgot it, a topic re-created). Its records
                // are new ones, and would be skipped as applied: read it
                // from its start, and have the first batch rebase the
                // watermark. An unfinished batch belonged to the old log.
                let first = self.consumer.first_offset(partition).await.unwrap_or(0);
                tracing::warn!(
                    partition,
                    watermark,
                    end,
                    first,
                    "the log restarted below the watermark; reading it from its start"
                );
                metrics().log_rebases.inc();
                self.consumer.seek(partition, first)?;
                self.expect.insert(partition, first);
                self.fresh.insert(partition);
                self.rebases.insert(partition, watermark);
                continue;
            }
            tracing::info!(
                partition,
                watermark,
                ?end,
                pending,
                "reading the partition on from its watermark"
            );
            self.consumer.seek(partition, watermark)?;
            self.expect.insert(partition, watermark);
            self.fresh.insert(partition);
            if pending > watermark {
                self.cuts.insert(partition, pending);
            }
        }
        self.positioned = Some(generation);
        Ok(())
    }

    /// Folds one partition's run of records and applies it, then commits,
    /// inside one consumer span linked to the traces that wrote the records.
    async fn apply(&mut self, partition: u32, records: &[Record]) -> Result<(), WorkerError> {
        let span = allezon_core::trace::span::consumer_batch(
            self.consumer.system(),
            self.consumer.topic(),
            partition,
            records.len(),
        );
        allezon_core::trace::record_trace_id(&span);
        let result = self
            .apply_batch(partition, records, &span)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            allezon_core::trace::span::failed(&span);
        }
        result
    }

    async fn apply_batch(
        &mut self,
        partition: u32,
        records: &[Record],
        span: &tracing::Span,
    ) -> Result<(), WorkerError> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return Ok(());
        };
        let (start, next) = (first.offset, last.offset + 1);
        let folding = std::time::Instant::now();
        let mut tags: Vec<pb::UserTag> = Vec::with_capacity(records.len());
        let mut offsets: Vec<u64> = Vec::with_capacity(records.len());
        let mut traces: Vec<Carried> = Vec::new();
        let traced = allezon_core::telemetry::enabled();
        for record in records {
            if let Some((tag, trace)) = decode(record, traced) {
                tags.push(tag);
                offsets.push(record.offset);
                if !trace.traceparent.is_empty() && traces.len() < allezon_core::trace::MAX_LINKS {
                    traces.push(trace);
                }
            }
        }
        allezon_core::trace::link_all(span, &traces);
        if let Some(profiles) = &self.profiles {
            tags = store_profiles(profiles.as_ref(), partition, tags, &offsets).await?;
        }
        // A child span even when the cache answers everything: the trace
        // shows the step, and the call to id-svc under it when one was made.
        self.ids
            .resolve(tags.iter().flat_map(|t| names(t).into_iter()))
            .instrument(allezon_core::trace::span::internal("resolve ids"))
            .await
            .map_err(WorkerError::Aggregates)?;

        let folding = folding.elapsed();
        let fold_started = std::time::Instant::now();
        let mut fold = Fold::default();
        for tag in &tags {
            if let Some(input) = self.fold_input(tag) {
                // Overflow needs 2^63 in one batch; drop the tag loudly
                // rather than wrap.
                if fold.add(input).is_err() {
                    tracing::error!(partition, "aggregate overflow, tag skipped");
                }
            }
        }
        let deltas = fold
            .into_cells()
            .map(|(key, totals)| to_delta(key, totals))
            .collect();
        // Decoding and folding, not the calls to profile-svc and id-svc
        // between them (their own series time those).
        metrics()
            .fold_duration
            .observe((folding + fold_started.elapsed()).as_secs_f64());
        let request = pb::ApplyDeltasRequest {
            partition,
            start_offset: start,
            next_offset: next,
            deltas,
            rebase_from: self.rebases.get(&partition).copied(),
        };
        let applying = std::time::Instant::now();
        let applied = self.aggregates.apply_deltas(request).await;
        metrics()
            .apply_duration
            .observe(applying.elapsed().as_secs_f64());
        match applied {
            Ok(_) => {
                self.rebases.remove(&partition);
                metrics().batches.inc();
                metrics().records.inc_by(records.len() as u64);
                metrics().batch_size.observe(records.len() as f64);
            }
            Err(status)
                if allezon_core::Error::from_status(&status).kind() == ErrorKind::Conflict =>
            {
                // Someone else moved this partition on (a replaced worker, or
                // a rebalance): re-read where it stands and continue there.
                tracing::warn!(partition, %status, "batch does not follow the watermark; repositioning");
                metrics().conflicts.inc();
                self.positioned = None;
                return Ok(());
            }
            Err(status) => return Err(WorkerError::Aggregates(status)),
        }
        self.consumer
            .commit(partition, next)
            .instrument(allezon_core::trace::span::internal("commit"))
            .await?;
        self.record_lag();
        Ok(())
    }

    fn fold_input(&self, tag: &pb::UserTag) -> Option<FoldInput> {
        let info = tag.product_info.as_ref()?;
        Some(FoldInput {
            time_ms: tag.time_ms,
            action: Action::try_from(tag.action).ok()?,
            origin: self.ids.get(pb::Dimension::Origin, &tag.origin)?,
            brand: self.ids.get(pb::Dimension::Brand, &info.brand_id)?,
            category: self.ids.get(pb::Dimension::Category, &info.category_id)?,
            price: info.price,
        })
    }
}

/// Writes the batch's tags into the profile store, and keeps the ones it
/// stored first from these positions: the ones to count.
async fn store_profiles(
    profiles: &dyn Profiles,
    partition: u32,
    tags: Vec<pb::UserTag>,
    offsets: &[u64],
) -> Result<Vec<pb::UserTag>, WorkerError> {
    if tags.is_empty() {
        return Ok(tags);
    }
    let request = pb::AppendTagsRequest {
        tags: tags
            .iter()
            .zip(offsets)
            .map(|(tag, &offset)| pb::LoggedTag {
                tag: Some(tag.clone()),
                partition,
                offset,
            })
            .collect(),
    };
    let first = profiles
        .append_tags(request)
        .await
        .map_err(WorkerError::Profiles)?
        .first;
    if first.len() != tags.len() {
        return Err(WorkerError::Profiles(tonic::Status::internal(
            "profile-svc answered a different number of tags",
        )));
    }
    let before = tags.len();
    let counted: Vec<pb::UserTag> = tags
        .into_iter()
        .zip(first)
        .filter_map(|(tag, first)| first.then_some(tag))
        .collect();
    metrics().duplicates.inc_by((before - counted.len()) as u64);
    Ok(counted)
}

/// The tag of a record, and the trace context that wrote it (taken only
/// when traces are exported).
fn decode(record: &Record, traced: bool) -> Option<(pb::UserTag, Carried)> {
    if record.payload == event_log::NOOP_RECORD {
        return None;
    }
    match pb::TagEvent::decode(record.payload.as_slice()) {
        Ok(pb::TagEvent {
            tag: Some(tag),
            traceparent,
            tracestate,
        }) => {
            let trace = if !traced {
                Carried::default()
            } else if traceparent.is_empty() {
                record.trace.clone()
            } else {
                Carried {
                    traceparent,
                    tracestate,
                }
            };
            Some((tag, trace))
        }
        Ok(_) | Err(_) => {
            // A record the gateway did not write; it cannot be counted, and
            // blocking the partition on it would stop all counting.
            tracing::error!(
                partition = record.partition,
                offset = record.offset,
                "undecodable log record skipped"
            );
            None
        }
    }
}

fn names(tag: &pb::UserTag) -> [(pb::Dimension, &str); 3] {
    let (brand, category) = tag
        .product_info
        .as_ref()
        .map_or(("", ""), |i| (i.brand_id.as_str(), i.category_id.as_str()));
    [
        (pb::Dimension::Origin, tag.origin.as_str()),
        (pb::Dimension::Brand, brand),
        (pb::Dimension::Category, category),
    ]
}

fn to_delta(
    key: allezon_core::cells::CellKey,
    totals: allezon_core::cells::Totals,
) -> pb::CellDelta {
    let key = Some(pb::CellKey {
        action: pb::Action::from(key.action) as i32,
        origin_id: key.origin,
        brand_id: key.brand,
        category_id: key.category,
        minute: key.minute,
    });
    match totals.pack() {
        Some(packed) => pb::CellDelta {
            key,
            packed,
            ..Default::default()
        },
        None => pb::CellDelta {
            key,
            wide: true,
            count: totals.count,
            sum: totals.sum,
            ..Default::default()
        },
    }
}

fn transient(status: &tonic::Status) -> bool {
    matches!(
        allezon_core::Error::from_status(status).kind(),
        ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::Internal
    )
}

fn metrics() -> &'static allezon_core::metrics::Worker {
    &allezon_core::metrics::metrics().worker
}
