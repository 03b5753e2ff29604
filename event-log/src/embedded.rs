//! The embedded log: records in a keyspace of the data directory's storage
//! engine, keyed `[partition: u32 BE][offset: u64 BE]`.
//!
//! Appends take the partition's next offset and insert under one lock, so
//! offsets reach the engine in order; consumers read only up to the highest
//! *synced* offset, so a worker never folds a record that a crash could
//! still take back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use allezon_storage::{Keyspace, Store, StoreError};
use tokio::sync::watch;

use crate::{EventLog, LogConsumer, LogError, Position, Record, partition_for};

/// Records kept behind the committed offset, for inspection and for a
/// worker that restarts from an older aggregate watermark.
const RETAIN_BEHIND_COMMIT: u64 = 1_000_000;
/// Deleting in large steps keeps truncation off the commit path's hot loop.
const TRUNCATE_STEP: u64 = 100_000;
/// Most records deleted one by one in one engine batch: a batch holds the
/// journal's lock through every insert, and tag writes wait for it.
const DELETE_BATCH: usize = 4_096;

pub(crate) struct Partition {
    /// Next offset to hand out; the lock also orders inserts.
    pub(crate) next: Mutex<u64>,
    /// One past the highest offset known durable.
    pub(crate) visible: AtomicU64,
    /// Everything below this has been deleted.
    truncated: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) records: Keyspace,
    commits: Keyspace,
    pub(crate) partitions: Vec<Partition>,
    /// Bumped after every durable append, to wake waiting consumers.
    pub(crate) appended: watch::Sender<u64>,
}

#[derive(Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

pub(crate) fn record_key(partition: u32, offset: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn offset_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(4..12)?.try_into().ok()?))
}

impl EmbeddedLog {
    /// Opens the log with `partitions` partitions. The count must stay the same
    /// across restarts of one data directory.
    pub fn open(store: &Store, partitions: u32) -> Result<Self, LogError> {
        let records = store.keyspace("event_log")?;
        let commits = store.keyspace("event_log_commits")?;
        let partitions = (0..partitions.max(1))
            .map(|p| {
                let last = records
                    .prefix(p.to_be_bytes())
                    .next_back()
                    .map(|guard| guard.key())
                    .transpose()
                    .map_err(StoreError::from)?;
                let next = last.as_deref().and_then(offset_of).map_or(0, |o| o + 1);
                let first = records
                    .prefix(p.to_be_bytes())
                    .next()
                    .map(|guard| guard.key())
                    .transpose()
                    .map_err(StoreError::from)?;
                let truncated = first.as_deref().and_then(offset_of).unwrap_or(next);
                Ok(Partition {
                    next: Mutex::new(next),
                    visible: AtomicU64::new(next),
                    truncated: AtomicU64::new(truncated),
                })
            })
            .collect::<Result<Vec<_>, LogError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                records,
                commits,
                partitions,
                appended: watch::Sender::new(0),
            }),
        })
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub fn partitions(&self) -> u32 {
        self.inner.partitions.len() as u32
    }

    /// A consumer of `group` that owns every partition (the embedded log has
    /// one process, so one consumer), positioned at the group's commits.
    pub fn consumer(&self, group: &str) -> Result<EmbeddedConsumer, LogError> {
        let positions = (0..self.partitions())
            .map(|p| self.committed(group, p))
            .collect::<Result<Vec<_>, _>>()?;
        // The one consumer of the embedded log holds every partition.
        allezon_core::metrics::metrics()
            .worker
            .assigned_partitions
            .set(i64::from(self.partitions()));
        Ok(EmbeddedConsumer {
            log: self.clone(),
            group: group.to_owned(),
            positions,
            appended: self.inner.appended.subscribe(),
        })
    }

    /// The group's committed offset of `partition`, 0 when none.
    pub fn committed(&self, group: &str, partition: u32) -> Result<u64, LogError> {
        let value = self
            .inner
            .commits
            .get(commit_key(group, partition))
            .map_err(StoreError::from)?;
        Ok(value
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// One past the last durable offset of `partition`.
    pub fn end_offset(&self, partition: u32) -> u64 {
        self.inner
            .partitions
            .get(partition as usize)
            .map_or(0, |p| p.visible.load(Ordering::Acquire))
    }

    /// Deletes the records more than [`RETAIN_BEHIND_COMMIT`] behind
    /// `committed`, in steps of [`TRUNCATE_STEP`]. Blocking engine work.
    fn truncate(&self, partition: u32, committed: u64) -> Result<(), LogError> {
        self.truncate_with(partition, committed, RETAIN_BEHIND_COMMIT, TRUNCATE_STEP)
            .map(drop)
    }

    /// [`Self::truncate`] with its bounds given; returns how many records
    /// were deleted one by one (not with a whole table).
    fn truncate_with(
        &self,
        partition: u32,
        committed: u64,
        retain: u64,
        step: u64,
    ) -> Result<usize, LogError> {
        let Some(state) = self.inner.partitions.get(partition as usize) else {
            return Ok(0);
        };
        let keep_from = committed.saturating_sub(retain);
        let truncated = state.truncated.load(Ordering::Acquire);
        if keep_from < truncated + step {
            return Ok(0);
        }
        let range = record_key(partition, truncated)..record_key(partition, keep_from);
        // Whole tables first, dropped at once: deleting a hundred thousand
        // records one tombstone each wrote them all again (journal,
        // memtable, compactions), in one batch that held the journal's
        // lock, and so every tag write, for its whole length.
        allezon_storage::drop_tables(&self.inner.records, range.clone())?;
        // Then what is left (records in tables across the range's ends, or
        // still in a memtable), a few thousand per batch, so that no tag
        // write waits long behind one.
        let mut batch = self.inner.store.database().batch();
        let mut left = 0_usize;
        for guard in self.inner.records.range(range) {
            batch.remove(&self.inner.records, guard.key().map_err(StoreError::from)?);
            left += 1;
            if left.is_multiple_of(DELETE_BATCH) {
                let full = std::mem::replace(&mut batch, self.inner.store.database().batch());
                full.commit().map_err(StoreError::from)?;
            }
        }
        batch.commit().map_err(StoreError::from)?;
        tracing::debug!(
            partition,
            from = truncated,
            to = keep_from,
            deleted_one_by_one = left,
            "log truncated"
        );
        state.truncated.store(keep_from, Ordering::Release);
        Ok(left)
    }
}

fn commit_key(group: &str, partition: u32) -> Vec<u8> {
    let mut key = group.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

impl EventLog for EmbeddedLog {
    async fn append(
        &self,
        key: &[u8],
        payload: Vec<u8>,
        _trace: &allezon_core::trace::Carried,
    ) -> Result<Position, LogError> {
        // The payload (a `TagEvent`) carries the trace context itself. Tags
        // of the all-in-one go through the `Appender` instead, which groups
        // them; this path is for single records (tests, tools).
        let partition = partition_for(key, self.partitions());
        let state = &self.inner.partitions[partition as usize];
        let offset = {
            let mut next = state.next.lock().unwrap_or_else(PoisonError::into_inner);
            let offset = *next;
            self.inner.store.check_write()?;
            self.inner
                .records
                .insert(record_key(partition, offset), payload)
                .map_err(StoreError::from)?;
            *next += 1;
            offset
        };
        self.inner.store.sync().await?;
        // Every offset below ours was inserted before ours, so the sync that
        // covered ours covered them too.
        state.visible.fetch_max(offset + 1, Ordering::AcqRel);
        self.inner.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Position { partition, offset })
    }
}

pub struct EmbeddedConsumer {
    log: EmbeddedLog,
    group: String,
    positions: Vec<u64>,
    appended: watch::Receiver<u64>,
}

impl EmbeddedConsumer {
    /// Up to `max` records from the positions on. A range read of thousands
    /// of records is blocking engine work (disk reads once the records
    /// have left the memtable): on a blocking thread, never on an async
    /// worker, where it would hold up the requests queued behind it.
    async fn read(&mut self, max: usize) -> Result<Vec<Record>, LogError> {
        let log = &self.log;
        let behind =
            |(partition, position): (usize, &u64)| *position < log.end_offset(partition as u32);
        if !self.positions.iter().enumerate().any(behind) {
            return Ok(Vec::new());
        }
        let (log, mut positions) = (self.log.clone(), self.positions.clone());
        let (records, positions) = tokio::task::spawn_blocking(move || {
            read_blocking(&log, &mut positions, max).map(|records| (records, positions))
        })
        .await
        .map_err(|err| LogError::Task(err.to_string()))??;
        self.positions = positions;
        Ok(records)
    }
}

fn read_blocking(
    log: &EmbeddedLog,
    positions: &mut [u64],
    max: usize,
) -> Result<Vec<Record>, LogError> {
    let mut out = Vec::new();
    for (partition, position) in positions.iter_mut().enumerate() {
        let partition = partition as u32;
        let end = log.end_offset(partition);
        if *position >= end {
            continue;
        }
        let range = record_key(partition, *position)..record_key(partition, end);
        for guard in log.inner.records.range(range) {
            if out.len() >= max {
                return Ok(out);
            }
            let (key, value) = guard.into_inner().map_err(StoreError::from)?;
            let offset = offset_of(&key).unwrap_or(*position);
            out.push(Record {
                partition,
                offset,
                payload: value.to_vec(),
                trace: allezon_core::trace::Carried::default(),
            });
            *position = offset + 1;
        }
    }
    Ok(out)
}

impl LogConsumer for EmbeddedConsumer {
    fn assignment(&self) -> Vec<u32> {
        (0..self.log.partitions()).collect()
    }

    fn generation(&self) -> u64 {
        0
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, LogError> {
        self.appended.mark_unchanged();
        let records = self.read(max).await?;
        if !records.is_empty() {
            return Ok(records);
        }
        // Nothing yet: sleep until an append lands or `wait` runs out.
        let _ = tokio::time::timeout(wait, self.appended.changed()).await;
        self.read(max).await
    }

    fn seek(&mut self, partition: u32, offset: u64) -> Result<(), LogError> {
        let slot = self
            .positions
            .get_mut(partition as usize)
            .ok_or(LogError::NotAssigned(partition))?;
        *slot = offset;
        Ok(())
    }

    // One small range read, asked rarely (see the trait): not worth a
    // blocking thread.
    async fn first_offset(&mut self, partition: u32) -> Result<u64, LogError> {
        let range = record_key(partition, 0)..record_key(partition, u64::MAX);
        match self.log.inner.records.range(range).next() {
            Some(guard) => {
                let key = guard.key().map_err(StoreError::from)?;
                Ok(offset_of(&key).unwrap_or(0))
            }
            None => Ok(self.log.end_offset(partition)),
        }
    }

    fn end_offset(&self, partition: u32) -> Option<u64> {
        (partition < self.log.partitions()).then(|| self.log.end_offset(partition))
    }

    async fn commit(&mut self, partition: u32, next_offset: u64) -> Result<(), LogError> {
        if partition as usize >= self.positions.len() {
            return Err(LogError::NotAssigned(partition));
        }
        // Not synced: the aggregate store's watermark, not this commit, is
        // what a restarting worker trusts; this one drives truncation and lag.
        // Engine writes wait for any fsync in progress (the journal's lock),
        // and truncation deletes a hundred thousand records: both on a
        // blocking thread, never on an async worker.
        let (log, key) = (self.log.clone(), commit_key(&self.group, partition));
        tokio::task::spawn_blocking(move || {
            log.inner
                .commits
                .insert(key, next_offset.to_be_bytes())
                .map_err(StoreError::from)?;
            log.truncate(partition, next_offset)
        })
        .await
        .map_err(|err| LogError::Task(err.to_string()))?
    }
}

/// Every record of `log` from the start, read `batch` at a time, checked
/// to have dense offsets from 0 in each partition.
#[cfg(test)]
pub(crate) async fn read_dense(log: &EmbeddedLog, batch: usize) -> Vec<Record> {
    let mut consumer = log.consumer("read-dense").unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    loop {
        let records = consumer
            .poll(batch, Duration::from_millis(20))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if records.is_empty() {
            break;
        }
        seen.extend(records);
    }
    for p in 0..log.partitions() {
        let offsets: Vec<u64> = seen
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncation drops whole tables and deletes the rest one by one, and
    /// leaves exactly the records from the kept offset on.
    #[tokio::test]
    async fn truncation_keeps_exactly_the_records_from_the_kept_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let log = EmbeddedLog::open(&store, 1).unwrap();
        let records = &log.inner.records;
        // Three tables of 10,000 records (fewer than start a compaction,
        // which would merge them) and 5,000 more in the memtable.
        for table in 0..4u64 {
            let mut batch = store.database().batch();
            let count = if table == 3 { 5_000 } else { 10_000 };
            for offset in table * 10_000..table * 10_000 + count {
                batch.insert(records, record_key(0, offset), offset.to_be_bytes());
            }
            batch.commit().unwrap();
            if table < 3 {
                records.rotate_memtable_and_wait().unwrap();
            }
        }
        assert_eq!(records.table_count(), 3);

        // Keep 15,000 behind 35,000: everything from 20,000 on, which
        // splits no table; then from 25,000 on, which splits the third.
        let left = log.truncate_with(0, 35_000, 15_000, 1_000).unwrap();
        assert_eq!(left, 0, "two whole tables should have been dropped");
        let left = log.truncate_with(0, 35_000, 10_000, 1_000).unwrap();
        assert_eq!(left, 5_000);
        let kept: Vec<u64> = records
            .iter()
            .map(|guard| offset_of(&guard.key().unwrap()).unwrap())
            .collect();
        assert_eq!(kept, (25_000..35_000).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn records_come_back_in_order_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(&Store::open(dir.path()).unwrap(), 3).unwrap();
            for i in 0..100u32 {
                log.append(
                    &i.to_be_bytes(),
                    i.to_be_bytes().to_vec(),
                    &Default::default(),
                )
                .await
                .unwrap();
            }
        }
        let log = EmbeddedLog::open(&Store::open(dir.path()).unwrap(), 3).unwrap();
        let seen = read_dense(&log, 7).await;
        assert_eq!(seen.len(), 100);
        // Appends continue after the last offset, per partition.
        let pos = log
            .append(b"x", b"y".to_vec(), &Default::default())
            .await
            .unwrap();
        let before = seen.iter().filter(|r| r.partition == pos.partition).count() as u64;
        assert_eq!(pos.offset, before);
    }

    #[tokio::test]
    async fn commits_and_seeks_position_the_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(&Store::open(dir.path()).unwrap(), 1).unwrap();
        for i in 0..10u8 {
            log.append(b"k", vec![i], &Default::default())
                .await
                .unwrap();
        }
        let mut consumer = log.consumer("g").unwrap();
        consumer.commit(0, 4).await.unwrap();
        let mut again = log.consumer("g").unwrap();
        let batch = again.poll(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(batch.first().map(|r| r.offset), Some(4));
        again.seek(0, 8).unwrap();
        let batch = again.poll(100, Duration::from_millis(10)).await.unwrap();
        assert_eq!(
            batch.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
            [8, 9]
        );
        // A waiting poll wakes on an append.
        let waiter = tokio::spawn(async move { again.poll(10, Duration::from_secs(30)).await });
        log.append(b"k", vec![10], &Default::default())
            .await
            .unwrap();
        let batch = waiter.await.unwrap().unwrap();
        assert_eq!(batch.len(), 1);
    }
}
