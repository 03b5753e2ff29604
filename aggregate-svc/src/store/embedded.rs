//! Cells on the embedded engine.
//!
//! Key: `[minute: i64 BE, sign flipped][action][origin][brand][category]`
//! (21 bytes), so a query is one point read per minute and retention deletes
//! one contiguous range at the front. Value: the packed `count << 48 | sum`
//! (8 bytes) while it fits, else the wide `count, sum` (16 bytes).
//!
//! The cells of the minutes around the event clock live in memory
//! ([`Hot`]): a batch adds to them there, with no engine read, and the
//! changed ones are written together with every partition's watermark in one
//! atomic engine batch per flush ([`FlushPolicy`]). After a crash the
//! engine holds the cells and the watermarks of the last flush, consistent
//! with each other, and the worker replays the log from those watermarks.
//!
//! A flush takes the changes out of memory under the lock and writes them
//! after releasing it: a commit of a hundred thousand cells takes long
//! enough (tens to hundreds of milliseconds) that holding the lock through
//! it stalled every query and every batch behind it. Until the commit lands,
//! readers find the changes in flight in [`Changes`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use allezon_core::cells::{CellKey, Totals};
use allezon_core::{Action, Error, Result};
use allezon_storage::{Keyspace, Store, StoreError};
use rustc_hash::FxHashMap;

use super::clock::{self, EventClock};
use super::{AggregateStore, Applied, CellFilter, DeltaBatch, Watermark};

#[derive(Clone)]
pub struct EmbeddedAggregateStore {
    inner: Arc<Inner>,
}

/// When the changed cells reach the engine.
#[derive(Debug, Clone, Copy)]
pub struct FlushPolicy {
    /// At most this long after the first change since the last flush.
    /// Zero writes every batch through before `apply` returns.
    pub every: Duration,
    /// Or once this many log records were applied since the last flush.
    pub max_records: u64,
}

impl FlushPolicy {
    /// Every batch is durable in this store before `apply` returns. For a
    /// store that may restart while its worker lives on (aggregate-svc on
    /// its own), which then trusts the watermarks it was told.
    pub const WRITE_THROUGH: Self = Self {
        every: Duration::ZERO,
        max_records: 0,
    };

    /// Write-back, for a store that lives and dies with its worker and its
    /// log (the all-in-one): a crash loses both the unflushed cells and the
    /// worker's position, and the log, which keeps a million records behind
    /// the worker, replays them. Five seconds are far inside the 60 s
    /// freshness window and turn a hot cell's thousands of writes into one.
    pub const WRITE_BACK: Self = Self {
        every: Duration::from_secs(5),
        max_records: 250_000,
    };
}

struct Inner {
    store: Store,
    cells: Keyspace,
    /// Per partition: the offset after the last applied batch and the
    /// partition's event clock, as of the last flush.
    watermarks: Keyspace,
    /// Everything applied and not flushed yet, and the hot minutes.
    hot: Mutex<Hot>,
    /// Held by the one flush writing at a time, so flushes land in order.
    flushing: Mutex<()>,
    policy: FlushPolicy,
    /// The store's event clock (the highest partition clock), i64::MIN
    /// while there is none; retention counts back from it.
    clock_minute: AtomicI64,
    /// Cells before this minute are gone or going.
    dropped_before: AtomicI64,
}

const KEY_LEN: usize = 21;
type CellBytes = [u8; KEY_LEN];
/// Minutes of cells kept in memory behind the event clock, and ahead of it.
const RECENT_MINUTES: i64 = 3;
const AHEAD_MINUTES: i64 = 5;

#[derive(Clone, Copy)]
struct Cell {
    totals: Totals,
    /// Changed since the last flush.
    dirty: bool,
}

/// What this store knows beyond the engine.
///
/// - Hot minutes: a minute within the window around the event clock is
///   loaded whole from the engine the first time a batch touches it, and
///   from then on every cell of it is here: a cell missing is a zero, and no
///   batch reads the engine for it. Minutes leave when the clock moves past
///   them, after their changes are flushed.
/// - Loose cells: cells of other minutes (late tags, outliers, the stream's
///   start before the clock is known) changed since the last flush; their
///   old values come from the engine.
/// - The partitions' watermarks and clocks as applied.
/// - The changes of the flush being written, if one is.
struct Hot {
    minutes: BTreeMap<i64, FxHashMap<CellBytes, Cell>>,
    /// Hot cells changed since the last flush, each listed once.
    dirty: Vec<(i64, CellBytes)>,
    loose: BTreeMap<i64, FxHashMap<CellBytes, Totals>>,
    marks: BTreeMap<u32, (u64, EventClock)>,
    marks_dirty: BTreeSet<u32>,
    /// The event clock the window is anchored on.
    anchor: Option<i64>,
    /// When the oldest unflushed change was made, and records since.
    unflushed_since: Option<Instant>,
    unflushed_records: u64,
    in_flight: Option<Arc<Changes>>,
}

/// What one flush writes: every changed cell, sorted by key (the engine's
/// order, which keeps its memtable inserts cache-friendly), and the changed
/// watermarks.
struct Changes {
    cells: Vec<(CellBytes, Totals)>,
    marks: Vec<(u32, Vec<u8>)>,
}

impl Changes {
    fn get(&self, key: &CellBytes) -> Option<Totals> {
        self.cells
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| self.cells[i].1)
    }

    /// The cells of `minute` (one contiguous run: keys start with it).
    fn minute(&self, minute: i64) -> &[(CellBytes, Totals)] {
        let prefix = minute_bytes(minute);
        let start = self.cells.partition_point(|(k, _)| k[..8] < prefix[..]);
        let len = self.cells[start..].partition_point(|(k, _)| k[..8] == prefix[..]);
        &self.cells[start..start + len]
    }
}

impl Hot {
    fn new(anchor: Option<i64>) -> Self {
        Self {
            minutes: BTreeMap::new(),
            dirty: Vec::new(),
            loose: BTreeMap::new(),
            marks: BTreeMap::new(),
            marks_dirty: BTreeSet::new(),
            anchor,
            unflushed_since: None,
            unflushed_records: 0,
            in_flight: None,
        }
    }

    /// Whether `minute` belongs in memory under the clock `anchor`.
    fn in_window(anchor: Option<i64>, minute: i64) -> bool {
        anchor.is_some_and(|clock| {
            minute > clock - RECENT_MINUTES && minute <= clock.saturating_add(AHEAD_MINUTES)
        })
    }

    /// The cell's value if known here (a zero included, for hot minutes).
    fn get(&self, minute: i64, key: &CellBytes) -> Option<Totals> {
        if let Some(cells) = self.minutes.get(&minute) {
            return Some(cells.get(key).map(|c| c.totals).unwrap_or_default());
        }
        if let Some(totals) = self.loose.get(&minute).and_then(|cells| cells.get(key)) {
            return Some(*totals);
        }
        self.in_flight.as_ref()?.get(key)
    }

    /// Takes every change out, for a flush; `None` when there is none.
    fn take_changes(&mut self, cutoff: i64) -> Option<Changes> {
        if self.is_clean() {
            return None;
        }
        let mut cells = Vec::with_capacity(self.dirty.len());
        for (minute, key) in std::mem::take(&mut self.dirty) {
            if let Some(cell) = self
                .minutes
                .get_mut(&minute)
                .and_then(|cells| cells.get_mut(&key))
            {
                cell.dirty = false;
                cells.push((key, cell.totals));
            }
        }
        // Loose cells the clock left behind since are not written back: the
        // sweep may have deleted their minute already.
        for (_, loose) in std::mem::take(&mut self.loose).range(cutoff..) {
            cells.extend(loose.iter().map(|(key, totals)| (*key, *totals)));
        }
        cells.sort_unstable_by_key(|(key, _)| *key);
        let marks = std::mem::take(&mut self.marks_dirty)
            .into_iter()
            .filter_map(|partition| {
                let (next, clock) = self.marks.get(&partition)?;
                Some((partition, encode_watermark(*next, clock)))
            })
            .collect();
        self.unflushed_since = None;
        self.unflushed_records = 0;
        Some(Changes { cells, marks })
    }

    /// Puts back the changes of a flush that failed, under any made since.
    fn restore(&mut self, changes: &Changes) {
        for (key, totals) in &changes.cells {
            let minute = minute_of(key);
            match self.minutes.get_mut(&minute) {
                Some(cells) => {
                    let cell = cells.entry(*key).or_insert(Cell {
                        totals: *totals,
                        dirty: false,
                    });
                    if !cell.dirty {
                        cell.dirty = true;
                        self.dirty.push((minute, *key));
                    }
                }
                None => {
                    self.loose
                        .entry(minute)
                        .or_default()
                        .entry(*key)
                        .or_insert(*totals);
                }
            }
        }
        for (partition, _) in &changes.marks {
            self.marks_dirty.insert(*partition);
        }
        self.unflushed_since.get_or_insert_with(Instant::now);
    }

    fn is_clean(&self) -> bool {
        self.dirty.is_empty() && self.loose.is_empty() && self.marks_dirty.is_empty()
    }
}

fn minute_bytes(minute: i64) -> [u8; 8] {
    ((minute as u64) ^ (1 << 63)).to_be_bytes()
}

fn minute_of(key: &CellBytes) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key[..8]);
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
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
    /// Opens the store writing every batch through (see [`FlushPolicy`]).
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Self::open_with(store, FlushPolicy::WRITE_THROUGH)
    }

    pub fn open_with(store: &Store, policy: FlushPolicy) -> Result<Self, StoreError> {
        let cells = store.keyspace("aggregates")?;
        let watermarks = store.keyspace("aggregate_watermarks")?;
        let mut clock = None;
        for guard in watermarks.iter() {
            let value = guard.value()?;
            if let Ok((_, partition_clock)) = decode_watermark(&value) {
                clock = clock.max(partition_clock.minute());
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store: store.clone(),
                cells,
                watermarks,
                hot: Mutex::new(Hot::new(clock)),
                flushing: Mutex::new(()),
                policy,
                clock_minute: AtomicI64::new(clock.unwrap_or(i64::MIN)),
                dropped_before: AtomicI64::new(i64::MIN),
            }),
        })
    }

    fn hot(&self) -> std::sync::MutexGuard<'_, Hot> {
        self.inner
            .hot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The partition's watermark and clock as applied: from memory, else
    /// from the engine.
    fn watermark(&self, hot: &mut Hot, partition: u32) -> Result<(u64, EventClock)> {
        if let Some(mark) = hot.marks.get(&partition) {
            return Ok(mark.clone());
        }
        let mark = match self
            .inner
            .watermarks
            .get(partition.to_be_bytes())
            .map_err(storage_error)?
        {
            Some(value) => decode_watermark(&value)?,
            None => (0, EventClock::default()),
        };
        hot.marks.insert(partition, mark.clone());
        Ok(mark)
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

    /// Writes every change not in the engine yet, and waits until it is
    /// durable. Shutdown calls it; the retention loop too, so that an idle
    /// store does not keep changes in memory for long.
    pub async fn flush(&self) -> Result<()> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.flush_blocking())
            .await
            .map_err(|err| Error::internal(format!("flush task failed: {err}")))??;
        // Even with nothing left to write: a flush that was in flight when
        // this one began may not be synced yet.
        self.inner.store.sync().await.map_err(storage_error)?;
        Ok(())
    }

    /// One engine batch with every changed cell and watermark; `false` when
    /// there was nothing to write. Not synced here: callers wait for it.
    /// Only the taking out holds the lock; the commit runs without it.
    fn flush_blocking(&self) -> Result<bool> {
        let _one = self
            .inner
            .flushing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let changes = {
            let mut hot = self.hot();
            let Some(changes) = hot.take_changes(self.cutoff()) else {
                return Ok(false);
            };
            let changes = Arc::new(changes);
            hot.in_flight = Some(Arc::clone(&changes));
            changes
        };
        let mut write = self.inner.store.database().batch();
        for (key, totals) in &changes.cells {
            write.insert(&self.inner.cells, *key, encode(*totals));
        }
        for (partition, mark) in &changes.marks {
            write.insert(
                &self.inner.watermarks,
                partition.to_be_bytes(),
                mark.clone(),
            );
        }
        let committed = self
            .inner
            .store
            .check_write()
            .and_then(|()| write.commit().map_err(StoreError::from))
            .map_err(storage_error);
        let mut hot = self.hot();
        hot.in_flight = None;
        if committed.is_err() {
            // What failed stays to be written.
            hot.restore(&changes);
        }
        drop(hot);
        committed?;
        tracing::debug!(
            cells = changes.cells.len(),
            elapsed = ?started.elapsed(),
            "aggregate cells flushed"
        );
        Ok(true)
    }

    /// Moves the window with the event clock. Minutes it leaves are dropped
    /// from memory, their unflushed changes kept as loose cells; the clock
    /// only moves forward, so they never come back.
    fn advance(hot: &mut Hot, clock: Option<i64>) {
        if clock <= hot.anchor {
            return;
        }
        if let Some(clock) = clock {
            let keep = clock - RECENT_MINUTES + 1;
            let kept = hot.minutes.split_off(&keep);
            let leaving = std::mem::replace(&mut hot.minutes, kept);
            // Their changes not flushed yet stay, as loose cells, until the
            // next flush: no write on this path.
            if hot.dirty.iter().any(|(minute, _)| *minute < keep) {
                hot.dirty.retain(|(minute, _)| *minute >= keep);
                for (minute, cells) in leaving {
                    let dirty = cells
                        .into_iter()
                        .filter(|(_, cell)| cell.dirty)
                        .map(|(key, cell)| (key, cell.totals));
                    hot.loose.entry(minute).or_default().extend(dirty);
                }
            }
        }
        hot.anchor = clock;
    }

    /// Every cell of `minute` from the engine, with the flush in flight and
    /// this store's unflushed loose changes of it on top: the minute, whole.
    fn load_minute(&self, hot: &Hot, minute: i64) -> Result<FxHashMap<CellBytes, Cell>> {
        let mut cells = FxHashMap::default();
        for guard in self.inner.cells.prefix(minute_bytes(minute)) {
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let key: CellBytes = key
                .as_ref()
                .try_into()
                .map_err(|_| Error::internal("corrupt aggregate key"))?;
            let totals = decode(&value)?;
            cells.insert(
                key,
                Cell {
                    totals,
                    dirty: false,
                },
            );
        }
        if let Some(changes) = &hot.in_flight {
            for (key, totals) in changes.minute(minute) {
                // Clean: the flush writes them (or puts them back dirty).
                cells.insert(
                    *key,
                    Cell {
                        totals: *totals,
                        dirty: false,
                    },
                );
            }
        }
        if let Some(loose) = hot.loose.get(&minute) {
            for (key, totals) in loose {
                cells.insert(
                    *key,
                    Cell {
                        totals: *totals,
                        dirty: true,
                    },
                );
            }
        }
        Ok(cells)
    }

    /// The synchronous part of [`AggregateStore::apply`]. Returns `None`
    /// for a replay, else whether a flush was due (and a sync is owed).
    fn apply_blocking(&self, batch: &DeltaBatch) -> Result<Option<bool>> {
        let applied = self.apply_locked(&mut self.hot(), batch)?;
        if applied == Some(true) {
            // Always a sync after a due flush, even one that found nothing
            // left: the flush that took this batch's changes may not be
            // synced yet.
            self.flush_blocking()?;
        }
        Ok(applied)
    }

    /// Applies `batch` in memory. Returns `None` for a replay, else whether
    /// a flush is due.
    fn apply_locked(&self, hot: &mut Hot, batch: &DeltaBatch) -> Result<Option<bool>> {
        let (stored, mut partition_clock) = self.watermark(hot, batch.partition)?;
        let watermark = super::applies_on(batch, stored);
        if batch.next <= watermark {
            return Ok(None);
        }
        super::check_follows(batch, watermark)?;
        partition_clock.observe_deltas(&batch.deltas);
        let clock = self.clock().max(partition_clock.minute());
        let cutoff = clock::cutoff(clock);

        // First every new value, with nothing changed yet: a batch that
        // fails (an overflow, an engine read) leaves no trace.
        let mut merged: FxHashMap<(i64, CellBytes), Totals> = FxHashMap::default();
        for (key, delta) in &batch.deltas {
            if key.minute < cutoff {
                continue;
            }
            let slot = merged.entry((key.minute, cell_key(key))).or_default();
            *slot = slot
                .checked_add(*delta)
                .map_err(|e| Error::internal(e.to_string()))?;
        }
        let mut loaded: BTreeMap<i64, FxHashMap<CellBytes, Cell>> = BTreeMap::new();
        let mut updates = Vec::with_capacity(merged.len());
        for ((minute, key), delta) in merged {
            let hot_minute = Hot::in_window(clock, minute);
            if hot_minute && !hot.minutes.contains_key(&minute) && !loaded.contains_key(&minute) {
                loaded.insert(minute, self.load_minute(hot, minute)?);
            }
            let old = match loaded.get(&minute) {
                Some(cells) => cells.get(&key).map(|c| c.totals).unwrap_or_default(),
                None => match hot.get(minute, &key) {
                    Some(totals) => totals,
                    None => match self.inner.cells.get(key).map_err(storage_error)? {
                        Some(value) => decode(&value)?,
                        None => Totals::default(),
                    },
                },
            };
            let new = old
                .checked_add(delta)
                .map_err(|e| Error::internal(e.to_string()))?;
            updates.push((minute, key, new));
        }

        // Then the changes, in memory.
        Self::advance(hot, clock);
        if let Some(minute) = clock {
            self.inner.clock_minute.fetch_max(minute, Ordering::AcqRel);
        }
        for (minute, cells) in loaded {
            if hot.loose.remove(&minute).is_some() {
                // The minute's loose changes now live in it, still to flush.
                let dirty = cells
                    .iter()
                    .filter(|(_, c)| c.dirty)
                    .map(|(k, _)| (minute, *k));
                hot.dirty.extend(dirty);
            }
            hot.minutes.insert(minute, cells);
        }
        for (minute, key, totals) in updates {
            match hot.minutes.get_mut(&minute) {
                Some(cells) => {
                    let cell = cells.entry(key).or_insert(Cell {
                        totals,
                        dirty: false,
                    });
                    cell.totals = totals;
                    if !cell.dirty {
                        cell.dirty = true;
                        hot.dirty.push((minute, key));
                    }
                }
                None => {
                    hot.loose.entry(minute).or_default().insert(key, totals);
                }
            }
        }
        hot.marks
            .insert(batch.partition, (batch.next, partition_clock));
        hot.marks_dirty.insert(batch.partition);
        hot.unflushed_records += batch.next - batch.start;
        let since = *hot.unflushed_since.get_or_insert_with(Instant::now);
        let due = since.elapsed() >= self.inner.policy.every
            || hot.unflushed_records >= self.inner.policy.max_records;
        Ok(Some(due))
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
        // A batch adds up to tens of thousands of cells: keep it off the
        // async workers, which also serve the gateway.
        let store = self.clone();
        let applied = tokio::task::spawn_blocking(move || store.apply_blocking(&batch))
            .await
            .map_err(|err| Error::internal(format!("apply task failed: {err}")))??;
        match applied {
            None => Ok(Applied::Replayed),
            Some(wrote) => {
                if wrote {
                    self.inner.store.sync().await.map_err(storage_error)?;
                }
                Ok(Applied::Applied)
            }
        }
    }

    async fn watermarks(&self, partitions: &[u32]) -> Result<Vec<Watermark>> {
        // Under the lock that a flush holds while it takes out and sorts
        // every change (180,000 cells every 5 s at 10,000 tags/s), and an
        // apply while it loads a whole minute from the engine: waiting for
        // it on an async worker would hold up every request queued there
        // (the gateway's freshness watch asks every second).
        let (store, partitions) = (self.clone(), partitions.to_vec());
        tokio::task::spawn_blocking(move || {
            // Batches apply atomically here, so none is ever left pending.
            let mut hot = store.hot();
            partitions
                .iter()
                .map(|p| {
                    store.watermark(&mut hot, *p).map(|(next, _)| Watermark {
                        next,
                        pending_next: 0,
                    })
                })
                .collect()
        })
        .await
        .map_err(|err| Error::internal(format!("watermark task failed: {err}")))?
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
        let keys: Vec<(i64, CellBytes)> = (from_minute.max(cutoff)..to_minute)
            .map(|minute| {
                let key = cell_key(&CellKey {
                    minute,
                    action: filter.action,
                    origin: filter.origin,
                    brand: filter.brand,
                    category: filter.category,
                });
                (minute, key)
            })
            .collect();
        let mut out = vec![Totals::default(); (from_minute..to_minute).count()];
        let skipped = out.len() - keys.len();
        // All of it off the async workers: the lock (see `watermarks`), and
        // point reads, up to one per minute of a day.
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            // What memory knows, under the lock; the engine after, without
            // it (cells not in memory have no unflushed change).
            let known: Vec<Option<Totals>> = {
                let hot = store.hot();
                keys.iter()
                    .map(|(minute, key)| hot.get(*minute, key))
                    .collect()
            };
            let cells = &store.inner.cells;
            for (((_, key), known), slot) in keys.iter().zip(known).zip(&mut out[skipped..]) {
                *slot = match known {
                    Some(totals) => totals,
                    None => match cells.get(key).map_err(storage_error)? {
                        Some(value) => decode(&value)?,
                        None => Totals::default(),
                    },
                };
            }
            Ok(out)
        })
        .await
        .map_err(|err| Error::internal(format!("aggregate read task failed: {err}")))?
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
            rebase_from: None,
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
    async fn a_restarted_log_is_counted_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedAggregateStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        crate::store::scenarios::a_restarted_log_is_counted_from_its_start(store).await;
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

    /// A minute with unflushed changes from before it was hot, loaded in a
    /// batch whose clock move flushes them: its later changes must still be
    /// flushed before it leaves memory.
    #[tokio::test]
    async fn changes_to_a_minute_loaded_across_a_flush_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FlushPolicy {
            every: Duration::from_secs(3_600),
            max_records: u64::MAX,
        };
        let store =
            EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy).unwrap();
        let one = Totals { count: 1, sum: 1 };
        let crowd = |minute| {
            (
                key(minute, 0),
                Totals {
                    count: 30_000,
                    sum: 0,
                },
            )
        };
        let steps = [
            vec![crowd(START)],
            // START + 7 is ahead of the window: loose; START - 2 is hot.
            vec![(key(START + 7, 1), one), (key(START - 2, 1), one)],
            // The clock moves to START + 2: START - 2 leaves (a flush), and
            // START + 7 comes into the window in the same batch.
            vec![crowd(START + 2), (key(START + 7, 1), one)],
            vec![(key(START + 7, 1), one)],
            // The clock moves past START + 7.
            vec![crowd(START + 12)],
        ];
        let clocks = [START, START, START + 2, START + 2, START + 12];
        for (offset, (deltas, clock)) in steps.into_iter().zip(clocks).enumerate() {
            let offset = offset as u64;
            store
                .apply(batch(offset, offset + 1, deltas))
                .await
                .unwrap();
            assert_eq!(store.clock(), Some(clock), "step {offset}");
        }
        let got = store.query(filter(1), START + 7, START + 8).await.unwrap();
        assert_eq!(got[0].count, 3);
    }

    /// Write-back: what reaches the engine is always a flush, the cells
    /// with the watermarks that cover them. A store dropped without a flush
    /// (a crash) reopens at the last flush, and replaying from its
    /// watermark lands exactly.
    #[tokio::test]
    async fn write_back_flushes_cells_with_their_watermarks() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FlushPolicy {
            every: Duration::from_secs(3_600),
            max_records: 10,
        };
        let one = Totals { count: 1, sum: 3 };
        // Minute START is hot once the clock stands; START - 100 is loose.
        let deltas = || vec![(key(START, 1), one), (key(START - 100, 1), one)];
        let count = |store: EmbeddedAggregateStore, minute: i64| async move {
            store.query(filter(1), minute, minute + 1).await.unwrap()[0].count
        };
        {
            let store =
                EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy)
                    .unwrap();
            // A clock first: 10,000 tags' worth in minute START.
            let clock = vec![(
                key(START, 2),
                Totals {
                    count: 10_000,
                    sum: 0,
                },
            )];
            store.apply(batch(0, 1, clock)).await.unwrap();
            for offset in 1..26 {
                store
                    .apply(batch(offset, offset + 1, deltas()))
                    .await
                    .unwrap();
            }
            // Memory answers everything applied.
            assert_eq!(count(store.clone(), START).await, 25);
            assert_eq!(count(store.clone(), START - 100).await, 25);
            let marks = store.watermarks(&[0]).await.unwrap();
            assert_eq!(marks[0].next, 26);
        }
        let store =
            EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy).unwrap();
        let durable = store.watermarks(&[0]).await.unwrap()[0].next;
        assert_eq!(durable, 20, "flushed after 10 and 20 records");
        assert_eq!(count(store.clone(), START).await, durable - 1);
        assert_eq!(count(store.clone(), START - 100).await, durable - 1);
        for offset in durable..26 {
            store
                .apply(batch(offset, offset + 1, deltas()))
                .await
                .unwrap();
        }
        store.flush().await.unwrap();
        assert_eq!(count(store.clone(), START).await, 25);
        drop(store);
        let store =
            EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy).unwrap();
        assert_eq!(store.watermarks(&[0]).await.unwrap()[0].next, 26);
        assert_eq!(count(store.clone(), START).await, 25);
        assert_eq!(count(store, START - 100).await, 25);
    }

    /// A flush that fails loses nothing: memory still answers every change,
    /// and the next flush writes them, under the clock that moved on since
    /// (minute START has left the window by then).
    #[tokio::test]
    async fn a_failed_flush_keeps_its_changes_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let policy = FlushPolicy {
            every: Duration::from_secs(3_600),
            max_records: u64::MAX,
        };
        let one = Totals { count: 1, sum: 3 };
        let count = |store: EmbeddedAggregateStore, minute: i64| async move {
            store.query(filter(1), minute, minute + 1).await.unwrap()[0].count
        };
        let heavy = |minute: i64| {
            vec![(
                key(minute, 2),
                Totals {
                    count: 10_000,
                    sum: 0,
                },
            )]
        };
        {
            let store =
                EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy)
                    .unwrap();
            store.apply(batch(0, 1, heavy(START))).await.unwrap();
            for offset in 1..6 {
                let deltas = vec![(key(START, 1), one), (key(START - 100, 1), one)];
                store
                    .apply(batch(offset, offset + 1, deltas))
                    .await
                    .unwrap();
            }
            store.inner.store.inject_write_errors(1);
            assert!(store.flush().await.is_err());
            assert_eq!(count(store.clone(), START).await, 5);
            assert_eq!(count(store.clone(), START - 100).await, 5);
            // The clock moves 10 minutes on: START leaves memory, its
            // changes still unwritten.
            for offset in 6..9 {
                store
                    .apply(batch(offset, offset + 1, heavy(START + 10)))
                    .await
                    .unwrap();
            }
            assert!(!Hot::in_window(store.clock(), START));
            assert_eq!(count(store.clone(), START).await, 5);
            store.flush().await.unwrap();
            assert_eq!(count(store.clone(), START).await, 5);
        }
        let store =
            EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy).unwrap();
        assert_eq!(store.watermarks(&[0]).await.unwrap()[0].next, 9);
        assert_eq!(count(store.clone(), START).await, 5);
        assert_eq!(count(store.clone(), START - 100).await, 5);
    }

    /// The cache of recent cells must never answer a zero for a cell the
    /// engine holds, whatever order minutes arrive in around the clock.
    #[tokio::test]
    async fn recent_cells_agree_with_the_engine() {
        // Write-back with flushes now and then, landing anywhere.
        let often = FlushPolicy {
            every: Duration::from_secs(3_600),
            max_records: 7,
        };
        for policy in [FlushPolicy::WRITE_THROUGH, FlushPolicy::WRITE_BACK, often] {
            recent_cells_agree_with_the_engine_under(policy).await;
        }
    }

    async fn recent_cells_agree_with_the_engine_under(policy: FlushPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy).unwrap();
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
        let check = |store: EmbeddedAggregateStore,
                     want: BTreeMap<(i64, u32), u64>,
                     stage: &'static str| async move {
            for ((minute, brand), count) in want {
                let got = store
                    .query(filter(brand), minute, minute + 1)
                    .await
                    .unwrap();
                assert_eq!(
                    got[0].count, count,
                    "{policy:?} {stage}: minute {minute} brand {brand}"
                );
            }
        };
        check(store.clone(), want.clone(), "live").await;
        // And from the engine alone, after a flush and a reopen.
        store.flush().await.unwrap();
        drop(store);
        let store =
            EmbeddedAggregateStore::open_with(&Store::open(dir.path()).unwrap(), policy).unwrap();
        check(store, want, "reopened").await;
    }
}
