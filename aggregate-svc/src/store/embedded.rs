//! Cells on the embedded engine.
//!
//! Key: `[minute: i64 BE, sign flipped][action][origin][brand][category]`
//! (21 bytes), so a query is one point read per minute and retention deletes
//! one contiguous range at the front. Value: the packed `count << 48 | sum`
//! (8 bytes) while it fits, else the wide `count, sum` (16 bytes).
//!
//! A batch's cells and its partition watermark are written in one atomic
//! engine batch: after a crash, either both are there or neither, which is
//! what makes a replayed batch safe to skip.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use allezon_core::cells::{CellKey, Totals};
use allezon_core::{Action, Error, Result};
use allezon_storage::{Keyspace, Store, StoreError};

use super::{AggregateStore, Applied, CellFilter, DeltaBatch, RETENTION_MINUTES, Watermark};

#[derive(Clone)]
pub struct EmbeddedAggregateStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    cells: Keyspace,
    watermarks: Keyspace,
    /// Serialises read-modify-write of cells, one batch at a time, and holds
    /// the recent cells so that most reads of that cycle skip the engine.
    apply: Mutex<RecentCells>,
    /// Newest minute seen; retention counts back from it.
    newest_minute: AtomicI64,
    /// Cells before this minute are gone or going.
    dropped_before: AtomicI64,
}

const KEY_LEN: usize = 21;
/// Minutes of cells kept in memory, counted back from the newest.
const RECENT_MINUTES: i64 = 3;

/// The cells of the newest few minutes, as last written by this process.
///
/// Applying a batch reads every cell it touches; at 60,000 tags a minute most
/// of those cells are new, and a miss still costs a full engine lookup. For
/// minutes after the newest one on disk at start-up, every cell was written
/// by this process, so a miss here is a certain zero.
struct RecentCells {
    minutes: BTreeMap<i64, HashMap<[u8; KEY_LEN], Totals>>,
    /// Minutes above this were all written since start-up.
    complete_after: i64,
}

impl RecentCells {
    /// The cell's value if this cache knows it (zero included).
    fn get(&self, minute: i64, key: &[u8; KEY_LEN]) -> Option<Totals> {
        match self.minutes.get(&minute).and_then(|cells| cells.get(key)) {
            Some(totals) => Some(*totals),
            None if minute > self.complete_after && self.tracks(minute) => Some(Totals::default()),
            None => None,
        }
    }

    /// Whether `minute` is in the window of minutes kept.
    fn tracks(&self, minute: i64) -> bool {
        self.minutes
            .last_key_value()
            .is_none_or(|(newest, _)| minute > newest - RECENT_MINUTES)
    }

    fn put(&mut self, minute: i64, key: [u8; KEY_LEN], totals: Totals) {
        if !self.tracks(minute) {
            return;
        }
        self.minutes.entry(minute).or_default().insert(key, totals);
        while let Some((&oldest, _)) = self.minutes.first_key_value() {
            let newest = self.minutes.last_key_value().map_or(oldest, |(n, _)| *n);
            if oldest > newest - RECENT_MINUTES {
                break;
            }
            self.minutes.remove(&oldest);
        }
    }
}

fn minute_bytes(minute: i64) -> [u8; 8] {
    ((minute as u64) ^ (1 << 63)).to_be_bytes()
}

fn cell_key(key: &CellKey) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    out[..8].copy_from_slice(&minute_bytes(key.minute));
    out[8] = match key.action {
        Action::View => 1,
        Action::Buy => 2,
    };
    out[9..13].copy_from_slice(&key.origin.to_be_bytes());
    out[13..17].copy_from_slice(&key.brand.to_be_bytes());
    out[17..21].copy_from_slice(&key.category.to_be_bytes());
    out
}

fn minute_of(key: &[u8]) -> Option<i64> {
    let bytes: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

fn encode(totals: Totals) -> Vec<u8> {
    match totals.pack() {
        Some(packed) => packed.to_be_bytes().to_vec(),
        None => {
            let mut wide = totals.count.to_be_bytes().to_vec();
            wide.extend_from_slice(&totals.sum.to_be_bytes());
            wide
        }
    }
}

fn decode(value: &[u8]) -> Result<Totals> {
    let word = |b: &[u8]| -> Result<[u8; 8]> {
        b.try_into()
            .map_err(|_| Error::internal("corrupt aggregate cell"))
    };
    match value.len() {
        8 => Ok(Totals::unpack(u64::from_be_bytes(word(value)?))),
        16 => Ok(Totals {
            count: u64::from_be_bytes(word(&value[..8])?),
            sum: i64::from_be_bytes(word(&value[8..])?),
        }),
        _ => Err(Error::internal("corrupt aggregate cell")),
    }
}

impl EmbeddedAggregateStore {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let cells = store.keyspace("aggregates")?;
        let newest_minute = match cells.last_key_value() {
            Some(guard) => minute_of(&guard.key()?).unwrap_or(i64::MIN),
            None => i64::MIN,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                cells,
                watermarks: store.keyspace("aggregate_watermarks")?,
                apply: Mutex::new(RecentCells {
                    minutes: BTreeMap::new(),
                    complete_after: newest_minute,
                }),
                newest_minute: AtomicI64::new(newest_minute),
                dropped_before: AtomicI64::new(i64::MIN),
            }),
        })
    }

    fn watermark(&self, partition: u32) -> Result<u64> {
        let value = self
            .inner
            .watermarks
            .get(partition.to_be_bytes())
            .map_err(storage_error)?;
        Ok(value
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// First minute still kept.
    fn cutoff(&self) -> i64 {
        self.inner
            .newest_minute
            .load(Ordering::Acquire)
            .saturating_sub(RETENTION_MINUTES - 1)
    }

    /// Deletes every cell older than the retention window. Cheap when there is
    /// nothing to do; call it periodically.
    pub fn drop_expired(&self) -> Result<usize> {
        let cutoff = self.cutoff();
        if cutoff <= self.inner.dropped_before.load(Ordering::Acquire) {
            return Ok(0);
        }
        let end = minute_bytes(cutoff);
        let mut removed = 0;
        let mut batch = self.inner.store.database().batch();
        for guard in self.inner.cells.range(..end.as_slice()) {
            batch.remove(&self.inner.cells, guard.key().map_err(storage_error)?);
            removed += 1;
        }
        batch.commit().map_err(storage_error)?;
        self.inner.dropped_before.store(cutoff, Ordering::Release);
        Ok(removed)
    }

    /// The synchronous part of [`AggregateStore::apply`]: read, add and write
    /// every cell, and the watermark, in one engine batch. Returns `false` for
    /// a replay.
    fn apply_blocking(&self, batch: &DeltaBatch) -> Result<bool> {
        let mut recent = self
            .inner
            .apply
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let watermark = self.watermark(batch.partition)?;
        if batch.next <= watermark {
            return Ok(false);
        }
        super::check_follows(batch, watermark)?;
        if let Some(newest) = batch.deltas.iter().map(|(k, _)| k.minute).max() {
            self.inner.newest_minute.fetch_max(newest, Ordering::AcqRel);
        }
        let cutoff = self.cutoff();
        let mut write = self.inner.store.database().batch();
        let mut updates = Vec::with_capacity(batch.deltas.len());
        for (key, delta) in &batch.deltas {
            if key.minute < cutoff {
                continue;
            }
            let minute = key.minute;
            let key = cell_key(key);
            let old = match recent.get(minute, &key) {
                Some(totals) => totals,
                None => match self.inner.cells.get(key).map_err(storage_error)? {
                    Some(value) => decode(&value)?,
                    None => Totals::default(),
                },
            };
            let new = old
                .checked_add(*delta)
                .map_err(|e| Error::internal(e.to_string()))?;
            write.insert(&self.inner.cells, key, encode(new));
            updates.push((minute, key, new));
        }
        write.insert(
            &self.inner.watermarks,
            batch.partition.to_be_bytes(),
            batch.next.to_be_bytes(),
        );
        write.commit().map_err(storage_error)?;
        // Only after the commit: a failed batch must leave no trace.
        for (minute, key, totals) in updates {
            recent.put(minute, key, totals);
        }
        Ok(true)
    }
}

impl AggregateStore for EmbeddedAggregateStore {
    async fn apply(&self, batch: DeltaBatch) -> Result<Applied> {
        // A batch reads and writes up to tens of thousands of cells: keep it
        // off the async workers, which also serve the gateway.
        let store = self.clone();
        let applied = tokio::task::spawn_blocking(move || store.apply_blocking(&batch))
            .await
            .map_err(|err| Error::internal(format!("apply task failed: {err}")))??;
        if !applied {
            return Ok(Applied::Replayed);
        }
        self.inner.store.sync().await.map_err(storage_error)?;
        Ok(Applied::Applied)
    }

    async fn watermarks(&self, partitions: &[u32]) -> Result<Vec<Watermark>> {
        // Batches apply atomically here, so none is ever left pending.
        partitions
            .iter()
            .map(|p| {
                self.watermark(*p).map(|next| Watermark {
                    next,
                    pending_next: 0,
                })
            })
            .collect()
    }

    async fn query(
        &self,
        filter: CellFilter,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<Totals>> {
        (from_minute..to_minute)
            .map(|minute| {
                let key = cell_key(&CellKey {
                    minute,
                    action: filter.action,
                    origin: filter.origin,
                    brand: filter.brand,
                    category: filter.category,
                });
                match self.inner.cells.get(key).map_err(storage_error)? {
                    Some(value) => decode(&value),
                    None => Ok(Totals::default()),
                }
            })
            .collect()
    }
}

fn storage_error(err: impl Into<StoreError>) -> Error {
    let err = err.into();
    tracing::error!(%err, "aggregate store");
    Error::unavailable(format!("aggregate store: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(minute: i64, brand: u32) -> CellKey {
        CellKey {
            minute,
            action: Action::Buy,
            origin: 0,
            brand,
            category: 0,
        }
    }

    fn filter(brand: u32) -> CellFilter {
        CellFilter {
            action: Action::Buy,
            origin: 0,
            brand,
            category: 0,
        }
    }

    fn batch(start: u64, next: u64, deltas: Vec<(CellKey, Totals)>) -> DeltaBatch {
        DeltaBatch {
            partition: 0,
            start,
            next,
            deltas,
        }
    }

    #[tokio::test]
    async fn replays_are_skipped_and_overlaps_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let one = Totals { count: 1, sum: 10 };
        assert_eq!(
            store
                .apply(batch(0, 5, vec![(key(7, 1), one)]))
                .await
                .unwrap(),
            Applied::Applied
        );
        assert_eq!(
            store
                .apply(batch(0, 5, vec![(key(7, 1), one)]))
                .await
                .unwrap(),
            Applied::Replayed
        );
        assert!(
            store
                .apply(batch(3, 9, vec![(key(7, 1), one)]))
                .await
                .is_err()
        );
        assert_eq!(
            store
                .apply(batch(5, 9, vec![(key(7, 1), one)]))
                .await
                .unwrap(),
            Applied::Applied
        );
        let marks = store.watermarks(&[0, 1]).await.unwrap();
        assert_eq!(marks.iter().map(|w| w.next).collect::<Vec<_>>(), [9, 0]);
        let got = store.query(filter(1), 6, 9).await.unwrap();
        assert_eq!(
            got,
            [
                Totals::default(),
                Totals { count: 2, sum: 20 },
                Totals::default()
            ]
        );
    }

    #[tokio::test]
    async fn cells_switch_to_the_wide_form_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
            let big = Totals {
                count: 65_535,
                sum: i64::from(i32::MAX) * 65_535,
            };
            store
                .apply(batch(0, 1, vec![(key(1, 1), big)]))
                .await
                .unwrap();
            store
                .apply(batch(1, 2, vec![(key(1, 1), big)]))
                .await
                .unwrap();
            let negative = Totals { count: 3, sum: -7 };
            store
                .apply(batch(2, 3, vec![(key(1, 2), negative)]))
                .await
                .unwrap();
        }
        let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let got = store.query(filter(1), 1, 2).await.unwrap();
        assert_eq!(
            got,
            [Totals {
                count: 131_070,
                sum: i64::from(i32::MAX) * 131_070
            }]
        );
        assert_eq!(
            store.query(filter(2), 1, 2).await.unwrap(),
            [Totals { count: 3, sum: -7 }]
        );
    }

    #[tokio::test]
    async fn cells_older_than_24_hours_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let one = Totals { count: 1, sum: 1 };
        store
            .apply(batch(0, 1, vec![(key(100, 1), one)]))
            .await
            .unwrap();
        store
            .apply(batch(1, 2, vec![(key(100 + RETENTION_MINUTES, 1), one)]))
            .await
            .unwrap();
        assert_eq!(store.drop_expired().unwrap(), 1);
        assert_eq!(
            store.query(filter(1), 100, 101).await.unwrap(),
            [Totals::default()]
        );
        // A late tag for a dropped minute is not counted again.
        store
            .apply(batch(2, 3, vec![(key(100, 1), one)]))
            .await
            .unwrap();
        assert_eq!(
            store.query(filter(1), 100, 101).await.unwrap(),
            [Totals::default()]
        );
        let kept = store
            .query(filter(1), 100 + RETENTION_MINUTES, 101 + RETENTION_MINUTES)
            .await;
        assert_eq!(kept.unwrap(), [one]);
    }
}
