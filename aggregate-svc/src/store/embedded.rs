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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use allezon_core::cells::{CellKey, Totals};
use allezon_core::{Action, Error, Result};
use allezon_storage::{Keyspace, Store, StoreError};

use super::clock::{self, EventClock};
use super::{AggregateStore, Applied, CellFilter, DeltaBatch, Watermark};

#[derive(Clone)]
pub struct EmbeddedAggregateStore {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    cells: Keyspace,
    /// Per partition: the offset after the last applied batch and the
    /// partition's event clock, written in the batch that moved them.
    watermarks: Keyspace,
    /// Serialises read-modify-write of cells, one batch at a time, and holds
    /// the recent cells so that most reads of that cycle skip the engine.
    apply: Mutex<RecentCells>,
    /// The store's event clock (the highest partition clock), i64::MIN
    /// while there is none; retention counts back from it.
    clock_minute: AtomicI64,
    /// Cells before this minute are gone or going.
    dropped_before: AtomicI64,
}

const KEY_LEN: usize = 21;
/// Minutes of cells kept in memory behind the event clock, and ahead of it.
const RECENT_MINUTES: i64 = 3;
const AHEAD_MINUTES: i64 = 5;
/// Minutes remembered one by one as not cacheable; past that, every minute
/// from the lowest far one on is treated so.
const MAX_TAINTED: usize = 4_096;

/// The cells of the minutes around the event clock, as last written by this
/// process.
///
/// Applying a batch reads every cell it touches; at 60,000 tags a minute most
/// of those cells are new, and a miss still costs a full engine lookup. A
/// minute is cached only if this process saw every write to it, so a miss in
/// a cached minute is a certain zero. The window follows the event clock, not
/// the newest minute, so outliers neither enter it nor push it away.
struct RecentCells {
    /// Minutes whose every cell written since start-up is here.
    minutes: BTreeMap<i64, HashMap<[u8; KEY_LEN], Totals>>,
    /// Minutes at or before this may hold cells from before start-up.
    complete_after: i64,
    /// Minutes written while they could not be cached (ahead of the window,
    /// or before the clock was known): part of their cells is on disk only.
    tainted: BTreeSet<i64>,
    /// Every minute from here on counts as tainted.
    tainted_from: i64,
    /// The event clock the window is anchored on.
    anchor: Option<i64>,
}

impl RecentCells {
    fn new(complete_after: i64, anchor: Option<i64>) -> Self {
        Self {
            minutes: BTreeMap::new(),
            complete_after,
            tainted: BTreeSet::new(),
            tainted_from: i64::MAX,
            anchor,
        }
    }

    /// The cell's value if this cache knows it (zero included).
    fn get(&self, minute: i64, key: &[u8; KEY_LEN]) -> Option<Totals> {
        let cells = self.minutes.get(&minute)?;
        Some(cells.get(key).copied().unwrap_or_default())
    }

    fn is_tainted(&self, minute: i64) -> bool {
        minute >= self.tainted_from || self.tainted.contains(&minute)
    }

    /// Whether a minute not cached yet may start being cached now.
    fn admits(&self, minute: i64) -> bool {
        self.anchor
            .is_some_and(|clock| minute > clock - RECENT_MINUTES && minute <= clock + AHEAD_MINUTES)
            && minute > self.complete_after
            && !self.is_tainted(minute)
    }

    fn taint(&mut self, minute: i64) {
        self.tainted.insert(minute);
        if self.tainted.len() > MAX_TAINTED {
            // Keep the minutes near the window one by one; the far ones
            // (outliers, most likely) collapse into one bound.
            let far = self.anchor.map_or(i64::MIN, |clock| clock + AHEAD_MINUTES);
            let collapsed = self.tainted.split_off(&far.saturating_add(1));
            if let Some(first) = collapsed.first() {
                self.tainted_from = self.tainted_from.min(*first);
            }
        }
    }

    /// Moves the window with the event clock; minutes behind it are dropped
    /// and never come back (the clock only moves forward).
    fn advance(&mut self, clock: Option<i64>) {
        if clock <= self.anchor {
            return;
        }
        self.anchor = clock;
        if let Some(clock) = clock {
            let keep = clock - RECENT_MINUTES + 1;
            self.minutes = self.minutes.split_off(&keep);
            self.tainted = self.tainted.split_off(&keep);
        }
    }

    fn put(&mut self, minute: i64, key: [u8; KEY_LEN], totals: Totals) {
        if let Some(cells) = self.minutes.get_mut(&minute) {
            cells.insert(key, totals);
        } else if self.admits(minute) {
            self.minutes.entry(minute).or_default().insert(key, totals);
        } else if self
            .anchor
            .is_none_or(|clock| minute > clock - RECENT_MINUTES)
        {
            self.taint(minute);
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
        let watermarks = store.keyspace("aggregate_watermarks")?;
        let mut clock = None;
        for guard in watermarks.iter() {
            let value = guard.value()?;
            if let Ok((_, partition_clock)) = decode_watermark(&value) {
                clock = clock.max(partition_clock.minute());
            }
        }
        // Minutes with cells on disk are not cacheable: the newest of them
        // near the clock bounds the cacheable ones, and those beyond the
        // window (outliers) are listed one by one.
        let ahead = clock.map_or(i64::MAX, |c| c.saturating_add(AHEAD_MINUTES));
        let newest_near = cells
            .range(..minute_bytes(ahead.saturating_add(1)).as_slice())
            .next_back()
            .and_then(|guard| guard.key().ok())
            .and_then(|key| minute_of(&key))
            .unwrap_or(i64::MIN);
        let mut recent = RecentCells::new(newest_near, clock);
        if ahead < i64::MAX {
            let mut from = minute_bytes(ahead + 1).to_vec();
            while let Some(minute) = cells
                .range(from.as_slice()..)
                .next()
                .and_then(|guard| guard.key().ok())
                .and_then(|key| minute_of(&key))
            {
                recent.taint(minute);
                if minute == i64::MAX {
                    break;
                }
                from = minute_bytes(minute + 1).to_vec();
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                cells,
                watermarks,
                apply: Mutex::new(recent),
                clock_minute: AtomicI64::new(clock.unwrap_or(i64::MIN)),
                dropped_before: AtomicI64::new(i64::MIN),
            }),
        })
    }

    fn watermark(&self, partition: u32) -> Result<(u64, EventClock)> {
        match self
            .inner
            .watermarks
            .get(partition.to_be_bytes())
            .map_err(storage_error)?
        {
            Some(value) => decode_watermark(&value),
            None => Ok((0, EventClock::default())),
        }
    }

    /// The store's event clock, if the stream has shown enough of itself.
    fn clock(&self) -> Option<i64> {
        let minute = self.inner.clock_minute.load(Ordering::Acquire);
        (minute != i64::MIN).then_some(minute)
    }

    /// First minute still kept.
    fn cutoff(&self) -> i64 {
        clock::cutoff(self.clock())
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
    /// every cell, and the watermark with the partition's clock, in one
    /// engine batch. Returns `false` for a replay.
    fn apply_blocking(&self, batch: &DeltaBatch) -> Result<bool> {
        let mut recent = self
            .inner
            .apply
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (watermark, mut partition_clock) = self.watermark(batch.partition)?;
        if batch.next <= watermark {
            return Ok(false);
        }
        super::check_follows(batch, watermark)?;
        partition_clock.observe_deltas(&batch.deltas);
        let clock = self.clock().max(partition_clock.minute());
        let cutoff = clock::cutoff(clock);
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
            encode_watermark(batch.next, &partition_clock),
        );
        write.commit().map_err(storage_error)?;
        // Only after the commit: a failed batch must leave no trace.
        if let Some(minute) = clock {
            self.inner.clock_minute.fetch_max(minute, Ordering::AcqRel);
        }
        recent.advance(clock);
        for (minute, key, totals) in updates {
            recent.put(minute, key, totals);
        }
        Ok(true)
    }
}

/// A partition's watermark value: the next offset, then its event clock.
/// Values of 8 bytes come from before the clock existed.
fn encode_watermark(next: u64, clock: &EventClock) -> Vec<u8> {
    let mut out = next.to_be_bytes().to_vec();
    out.extend_from_slice(&clock.encode());
    out
}

fn decode_watermark(value: &[u8]) -> Result<(u64, EventClock)> {
    let next: [u8; 8] = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::internal("corrupt aggregate watermark"))?;
    let clock = match &value[8..] {
        [] => EventClock::default(),
        rest => EventClock::decode(rest)?,
    };
    Ok((u64::from_be_bytes(next), clock))
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
                self.watermark(*p).map(|(next, _)| Watermark {
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
        // Minutes behind the retention cut-off answer zero whether or not the
        // sweep has reached them yet, so answers do not depend on its timing.
        let cutoff = self.cutoff();
        (from_minute..to_minute)
            .map(|minute| {
                if minute < cutoff {
                    return Ok(Totals::default());
                }
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

    use crate::store::scenarios::{brand as filter, key};

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
    async fn retention_follows_the_stream_not_its_outliers() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::scenarios::retention_follows_the_stream_not_its_outliers(
            || EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap(),
            |store| {
                store.drop_expired().unwrap();
            },
        )
        .await;
    }

    #[tokio::test]
    async fn watermarks_written_before_the_clock_existed_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        store
            .inner
            .watermarks
            .insert(3u32.to_be_bytes(), 42u64.to_be_bytes())
            .unwrap();
        assert_eq!(
            store.watermarks(&[3]).await.unwrap(),
            [Watermark {
                next: 42,
                pending_next: 0
            }]
        );
    }

    const START: i64 = crate::store::scenarios::START;

    /// The cache of recent cells must never answer a zero for a cell the
    /// engine holds, whatever order minutes arrive in around the clock.
    #[tokio::test]
    async fn recent_cells_agree_with_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let mut want: BTreeMap<(i64, u32), u64> = BTreeMap::new();
        let mut rng = 7u64;
        for offset in 0..400u64 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly around a front that moves a minute every 20 batches,
            // now and then far ahead or behind it; a few brands per minute,
            // so a minute's cells are not all written by every batch.
            let front = START + (offset / 20) as i64;
            let minute = match (rng >> 33) % 10 {
                0 => front + 3 + ((rng >> 40) % 12) as i64,
                1 => front - ((rng >> 40) % 8) as i64,
                _ => front,
            };
            let brand = 1 + ((rng >> 45) % 4) as u32;
            let n = 1 + (rng >> 50) % 3_000;
            let totals = Totals {
                count: n,
                sum: n as i64,
            };
            let deltas = vec![(key(minute, 0), totals), (key(minute, brand), totals)];
            store
                .apply(batch(offset, offset + 1, deltas))
                .await
                .unwrap();
            *want.entry((minute, brand)).or_default() += n;
        }
        for ((minute, brand), count) in want {
            let got = store
                .query(filter(brand), minute, minute + 1)
                .await
                .unwrap();
            assert_eq!(got[0].count, count, "minute {minute} brand {brand}");
        }
    }
}
