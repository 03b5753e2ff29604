//! The event log: every accepted tag, in order per partition, for the ingest
//! workers to fold into aggregates.
//!
//! The traits follow Kafka's model (partitions, offsets, consumer-group
//! commits) so that the embedded log and the Kafka topic are interchangeable.

#[cfg(feature = "embedded")]
mod appender;
#[cfg(feature = "embedded")]
mod embedded;
mod kafka;

use std::future::Future;
use std::time::Duration;

use allezon_core::trace::Carried;
#[cfg(feature = "embedded")]
pub use appender::{Appender, Staged};
#[cfg(feature = "embedded")]
pub use embedded::{EmbeddedConsumer, EmbeddedLog};
pub use kafka::{KafkaConfig, KafkaConsumer, KafkaLog, KafkaProbe, test_brokers};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    #[cfg(feature = "embedded")]
    #[error("event log storage: {0}")]
    Storage(#[from] allezon_storage::StoreError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("partition {0} is not assigned to this consumer")]
    NotAssigned(u32),
    #[error("event log task failed: {0}")]
    Task(String),
    /// A call into the log's client that never returned: the client is
    /// wedged, and only a new one (a restarted process) gets past it.
    #[error("event log client hung: {0}")]
    Hung(String),
}

/// One record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub partition: u32,
    pub offset: u64,
    pub payload: Vec<u8>,
    /// W3C trace context carried beside the payload (Kafka headers); empty
    /// on the embedded log, whose records carry it in the payload.
    pub trace: Carried,
}

/// Where a record was appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// The producing side.
pub trait EventLog: Send + Sync + 'static {
    /// Appends `payload` to the partition that `key` maps to. Returns once the
    /// record is durable. `trace` travels beside the payload where the log
    /// has room for it (Kafka headers).
    fn append(
        &self,
        key: &[u8],
        payload: Vec<u8>,
        trace: &Carried,
    ) -> impl Future<Output = Result<Position, LogError>> + Send;
}

/// The consuming side: one member of a consumer group.
pub trait LogConsumer: Send {
    /// Partitions currently assigned to this consumer. Changes when the group
    /// rebalances; [`Self::generation`] tells that it did.
    fn assignment(&self) -> Vec<u32>;

    /// Bumped on every change of the assignment.
    fn generation(&self) -> u64;

    /// Up to `max` records, in offset order within each partition, waiting at
    /// most `wait` for the first one.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Record>, LogError>> + Send;

    /// Moves the read position of `partition` to `offset`.
    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError>;

    /// The oldest offset of `partition` the log still holds (records before
    /// it were removed by retention). Asks the log: called only when a read
    /// skips ahead of the position sought, or the log restarted.
    fn first_offset(
        &mut self,
        partition: u32,
    ) -> impl Future<Output = Result<u64, LogError>> + Send;

    /// The end of `partition` (the offset the next record appended will
    /// get) as this consumer last learnt it, without blocking; `None` before
    /// it knows. For the consumer lag metric.
    fn end_offset(&self, partition: u32) -> Option<u64>;

    /// The end of `partition` asked of the log now (`None`: not known).
    /// Asked when the worker positions a partition, to find a log that
    /// restarted below the watermark; an error makes the worker position
    /// again later rather than guess.
    fn current_end(
        &mut self,
        partition: u32,
    ) -> impl Future<Output = Result<Option<u64>, LogError>> + Send {
        let end = self.end_offset(partition);
        async move { Ok(end) }
    }

    /// The log's kind, for the `messaging.system` of the worker's spans.
    fn system(&self) -> &'static str {
        "embedded"
    }

    /// The topic (or the embedded log's name), for the worker's spans.
    fn topic(&self) -> &str {
        "user-tags"
    }

    /// Records that everything before `next_offset` in `partition` has been
    /// processed. Call only after the records' effects are durable elsewhere.
    fn commit(
        &mut self,
        partition: u32,
        next_offset: u64,
    ) -> impl Future<Output = Result<(), LogError>> + Send;
}

/// The partition a key maps to: stable, so one cookie's tags stay in order.
/// A record with no payload: written by the gateway to take the produce path
/// through its first use, and skipped by every reader. No tag encodes to it
/// (a tag event always carries its tag).
pub const NOOP_RECORD: &[u8] = &[];

pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    let hash = key.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % partitions.max(1)
}
