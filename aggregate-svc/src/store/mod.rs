//! Where cells live: the [`AggregateStore`] trait and its embedded
//! implementation.

mod aerospike;
pub mod clock;
mod embedded;
#[cfg(test)]
pub(crate) mod scenarios;

use std::future::Future;

use allezon_core::Result;
use allezon_core::cells::{CellKey, Totals};

pub use aerospike::{AerospikeAggregateStore, CELL_TTL};
pub use embedded::{EmbeddedAggregateStore, FlushPolicy};

/// Minutes kept behind the event clock (see [`clock`]), its own included.
pub const RETENTION_MINUTES: i64 = 24 * 60;

/// Increments folded from one contiguous run of one log partition.
#[derive(Debug, Clone)]
pub struct DeltaBatch {
    pub partition: u32,
    /// Offset of the first record folded.
    pub start: u64,
    /// One past the last record folded.
    pub next: u64,
    pub deltas: Vec<(CellKey, Totals)>,
    /// The watermark the worker found above the log's end: the log behind
    /// the partition restarted (see [`applies_on`]).
    pub rebase_from: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The batch had been applied before; nothing changed.
    Replayed,
}

/// Where a partition stands in a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    /// The offset after the last applied record (0: none).
    pub next: u64,
    /// The end of a batch that was started but not finished (0: none). The
    /// next batch of the partition must be exactly `[next, pending_next)`.
    pub pending_next: u64,
}

/// Which cells a query reads: the action and the filter ids, 0 for absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellFilter {
    pub action: allezon_core::Action,
    pub origin: u32,
    pub brand: u32,
    pub category: u32,
}

/// A store on a cluster still connecting: UNAVAILABLE until it answers.
impl<S: AggregateStore> AggregateStore for allezon_aerospike::Pending<S> {
    async fn apply(&self, batch: DeltaBatch) -> Result<Applied> {
        self.get()?.apply(batch).await
    }

    async fn watermarks(&self, partitions: &[u32]) -> Result<Vec<Watermark>> {
        self.get()?.watermarks(partitions).await
    }

    async fn query(
        &self,
        filter: CellFilter,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<Totals>> {
        self.get()?.query(filter, from_minute, to_minute).await
    }
}

pub trait AggregateStore: Send + Sync + 'static {
    /// Applies `batch` exactly once: a batch ending at or below the
    /// partition's watermark is a replay and changes nothing; one that
    /// overlaps it in part is refused (the caller re-reads the watermark).
    fn apply(&self, batch: DeltaBatch) -> impl Future<Output = Result<Applied>> + Send;

    /// Per partition, where it stands.
    fn watermarks(&self, partitions: &[u32])
    -> impl Future<Output = Result<Vec<Watermark>>> + Send;

    /// Totals of each minute in `[from_minute, to_minute)`, zeros included.
    fn query(
        &self,
        filter: CellFilter,
        from_minute: i64,
        to_minute: i64,
    ) -> impl Future<Output = Result<Vec<Totals>>> + Send;
}

/// The watermark `batch` applies on, given the stored one: 0 when the batch
/// rebases the partition and it still stands where its worker found it
/// above the log's end (a broker that forgot its log, a topic re-created),
/// so the new log's records count from its start; else the stored one. A
/// rebase that already landed leaves the partition elsewhere, and a retry of
/// it is then an ordinary replay.
pub(crate) fn applies_on(batch: &DeltaBatch, stored: u64) -> u64 {
    match batch.rebase_from {
        Some(from) if from == stored && stored != 0 => {
            tracing::warn!(
                partition = batch.partition,
                watermark = stored,
                "the log restarted below the watermark; counting its records from its start"
            );
            0
        }
        _ => stored,
    }
}

/// Whether `batch` may be applied on top of `watermark`: it must not overlap
/// what was applied. It may start beyond it: a Kafka partition's offsets can
/// have gaps (control records), and the worker reads on from the watermark,
/// so whatever lies between does not exist.
pub(crate) fn check_follows(batch: &DeltaBatch, watermark: u64) -> Result<()> {
    if batch.start < watermark {
        return Err(allezon_core::Error::new(
            allezon_core::ErrorKind::Conflict,
            format!(
                "batch [{}, {}) of partition {} overlaps its watermark {watermark}",
                batch.start, batch.next, batch.partition
            ),
        ));
    }
    if batch.start > watermark && watermark != 0 {
        tracing::debug!(
            partition = batch.partition,
            watermark,
            start = batch.start,
            "batch starts beyond the watermark (offset gap)"
        );
    }
    Ok(())
}
