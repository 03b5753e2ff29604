//! One writer thread for the embedded log: group commit at the level of
//! the engine batch.
//!
//! Callers hand an item over a bounded queue and wait. The thread takes
//! every item waiting, stages each (the caller's own writes, and the log
//! record it asks for) into **one** engine batch, commits it, persists the
//! journal once, and answers them all. So:
//!
//! - no async worker ever touches the journal: fjall holds the journal's
//!   lock through every fsync, so a commit from an async worker would stall
//!   it, and every request on it, for the length of someone's fsync;
//! - a group of tags costs one journal write and one fsync, however many;
//! - staging runs on one thread, in queue order, so a check in it and the
//!   write it decides are one step (no other append runs in between).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

use allezon_storage::{PersistMode, StoreError, WriteBatch};
use tokio::sync::{mpsc, oneshot};

use crate::embedded::{EmbeddedLog, record_key};
use crate::{LogError, Position, partition_for};

/// Items waiting for the writer; a full queue makes callers wait (and the
/// gateway's own limits shed load before that).
const QUEUE: usize = 8_192;
/// Most items in one engine batch.
const GROUP: usize = 1_024;
/// Groups at least this long are logged at debug level, with where their
/// time went (`RUST_LOG=event_log=debug`): what the tags behind them waited.
const SLOW_GROUP: std::time::Duration = std::time::Duration::from_millis(10);

/// What staging one item asks of the log.
pub enum Staged {
    /// Append this record (`key` picks the partition).
    Append { key: Vec<u8>, payload: Vec<u8> },
    /// Nothing to append (the item's own writes, if any, still commit).
    Skip,
}

type Reply = oneshot::Sender<Result<Option<Position>, Arc<LogError>>>;

/// The writer thread of one log and its queue; dropping it stops the thread
/// once the queue is drained.
pub struct Appender<T> {
    queue: Option<mpsc::Sender<(T, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Appender<T> {
    /// Starts the writer of `log`. `stage` puts an item's own writes into the
    /// batch (it owns the item, so its buffers move into the batch) and says
    /// whether to append a record. The engine shows it every
    /// earlier group's writes; the current group's it must remember itself
    /// (a batch is not readable before it commits): the flag says an item
    /// opens a new group.
    pub fn start<F>(log: &EmbeddedLog, mut stage: F) -> std::io::Result<Self>
    where
        F: FnMut(&mut WriteBatch, T, bool) -> Result<Staged, StoreError> + Send + 'static,
    {
        let (queue, mut items) = mpsc::channel::<(T, Reply)>(QUEUE);
        let log = log.clone();
        let thread = std::thread::Builder::new()
            .name("log-appender".into())
            .spawn(move || {
                let mut group = Vec::with_capacity(GROUP);
                let mut replies = Vec::with_capacity(GROUP);
                while let Some((first, reply)) = items.blocking_recv() {
                    group.push(first);
                    replies.push(reply);
                    while group.len() < GROUP {
                        match items.try_recv() {
                            Ok((item, reply)) => {
                                group.push(item);
                                replies.push(reply);
                            }
                            Err(_) => break,
                        }
                    }
                    write_group(&log, &mut stage, &mut group, &mut replies);
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Writes `item`; returns once durable, with where its record went
    /// (`None` when staging skipped it).
    pub async fn append(&self, item: T) -> Result<Option<Position>, Arc<LogError>> {
        let (reply, answer) = oneshot::channel();
        let gone = || Arc::new(LogError::Task("the log appender stopped".into()));
        let queue = self.queue.as_ref().ok_or_else(gone)?;
        let log = &allezon_core::metrics::metrics().log;
        let labels = allezon_core::metrics::LogLabels { log: "embedded" };
        let started = std::time::Instant::now();
        queue.send((item, reply)).await.map_err(|_| gone())?;
        let written = answer.await.map_err(|_| gone())?;
        log.produce_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        if written.is_err() {
            log.produce_errors.get_or_create(&labels).inc();
        }
        written
    }
}

impl<T> Drop for Appender<T> {
    fn drop(&mut self) {
        // Closing the queue ends the thread after the items queued so far.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One engine batch and one fsync for the whole group; every item gets the
/// same outcome. Leaves both vectors empty.
fn write_group<T, F>(log: &EmbeddedLog, stage: &mut F, group: &mut Vec<T>, replies: &mut Vec<Reply>)
where
    F: FnMut(&mut WriteBatch, T, bool) -> Result<Staged, StoreError>,
{
    let tags = group.len();
    let began = std::time::Instant::now();
    let inner = log.inner();
    let mut batch = inner.store.database().batch();
    let mut positions: Vec<Option<Position>> = Vec::with_capacity(group.len());
    // The partitions' next offsets, locked for the group: appends from
    // elsewhere (`EventLog::append`) wait, so offsets stay in order.
    let mut next: Vec<_> = inner
        .partitions
        .iter()
        .map(|p| p.next.lock().unwrap_or_else(PoisonError::into_inner))
        .collect();
    let start: Vec<u64> = next.iter().map(|n| **n).collect();
    let outcome = (|| {
        for (i, item) in group.drain(..).enumerate() {
            match stage(&mut batch, item, i == 0)? {
                Staged::Append { key, payload } => {
                    let partition = partition_for(&key, inner.partitions.len() as u32);
                    let offset = &mut *next[partition as usize];
                    batch.insert(&inner.records, record_key(partition, *offset), payload);
                    positions.push(Some(Position {
                        partition,
                        offset: *offset,
                    }));
                    *offset += 1;
                }
                Staged::Skip => positions.push(None),
            }
        }
        inner.store.check_write()?;
        batch.commit()?;
        Ok::<(), StoreError>(())
    })();
    if outcome.is_err() {
        // Nothing of the group was written: hand the offsets out again.
        for (slot, start) in next.iter_mut().zip(&start) {
            **slot = *start;
        }
    }
    let ends: Vec<u64> = next.iter().map(|n| **n).collect();
    drop(next);
    let syncing = std::time::Instant::now();
    let outcome = outcome.and_then(|()| {
        let synced = inner
            .store
            .database()
            .persist(PersistMode::SyncData)
            .map_err(StoreError::from);
        if synced.is_err() {
            inner.store.mark_failed();
        }
        let stores = &allezon_core::metrics::metrics().stores;
        stores
            .fsync_duration
            .observe(syncing.elapsed().as_secs_f64());
        stores.fsync_writers.observe(tags as f64);
        synced
    });
    let took = began.elapsed();
    if took >= SLOW_GROUP {
        tracing::debug!(
            tags,
            staged_and_committed = ?syncing.duration_since(began),
            synced = ?syncing.elapsed(),
            ?took,
            "slow log append group"
        );
    }
    match outcome {
        Ok(()) => {
            for (partition, end) in inner.partitions.iter().zip(ends) {
                partition.visible.fetch_max(end, Ordering::AcqRel);
            }
            inner.appended.send_modify(|n| *n = n.wrapping_add(1));
            for (reply, position) in replies.drain(..).zip(positions) {
                let _ = reply.send(Ok(position));
            }
        }
        Err(err) => {
            tracing::error!(%err, "log append group failed");
            let err = Arc::new(LogError::Storage(err));
            for reply in replies.drain(..) {
                let _ = reply.send(Err(Arc::clone(&err)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use allezon_storage::Store;

    use super::*;

    fn start(log: &EmbeddedLog) -> Arc<Appender<u32>> {
        // Odd items are skipped; every item also writes a marker key.
        let marks = log.inner().store.keyspace("marks").unwrap();
        Arc::new(
            Appender::start(log, move |batch, n: u32, _| {
                batch.insert(&marks, n.to_be_bytes(), b"");
                Ok(if n.is_multiple_of(2) {
                    Staged::Append {
                        key: n.to_be_bytes().to_vec(),
                        payload: n.to_be_bytes().to_vec(),
                    }
                } else {
                    Staged::Skip
                })
            })
            .unwrap(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_keep_offsets_dense_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(&Store::open(dir.path()).unwrap(), 2).unwrap();
            let appender = start(&log);
            let tasks: Vec<_> = (0..2_000u32)
                .map(|n| {
                    let appender = Arc::clone(&appender);
                    tokio::spawn(async move { (n, appender.append(n).await.unwrap()) })
                })
                .collect();
            for task in tasks {
                let (n, position) = task.await.unwrap();
                assert_eq!(position.is_some(), n.is_multiple_of(2), "item {n}");
            }
            // An injected write error fails a whole group, and its offsets
            // are handed out again.
            log.inner().store.inject_write_errors(1);
            assert!(appender.append(4_000).await.is_err());
            assert!(appender.append(4_002).await.unwrap().is_some());
        }
        let store = Store::open(dir.path()).unwrap();
        let log = EmbeddedLog::open(&store, 2).unwrap();
        let seen = crate::embedded::read_dense(&log, 500).await;
        assert_eq!(seen.len(), 1_001);
        assert!(!seen.iter().any(|r| r.payload == 4_000u32.to_be_bytes()));
        let marks = store.keyspace("marks").unwrap();
        assert_eq!(marks.len().unwrap(), 2_001);
    }
}
