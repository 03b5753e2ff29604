//! Aggregate cells in Aerospike.
//!
//! # Layout
//!
//! One record per (hour, action, origin, brand) in set `cells`, origin and
//! brand ids 0 meaning "any". Its bins hold every category filter (0 for
//! "any") of that hour, keyed `category * 64 + minute of the hour`:
//!
//! - `p`: key-ordered map, cell → packed `count << 48 | sum`;
//! - `n`, `s`: the same cells' wide count and sum, for cells that outgrew the
//!   packed form (see below);
//! - `w<partition>`: the offset after the last batch of that log partition
//!   applied to this record (the idempotency watermark).
//!
//! A cell's totals are `unpack(p[k]) + (n[k], s[k])`. One category's minutes
//! are contiguous keys, so a query asks each record for a key range and gets
//! exactly the minutes it wants; a 24-hour query is one batch read of 25
//! records. Folding the category into the map rather than the key keeps the
//! record count near the number of (origin, brand) pairs seen per hour, not
//! the number of (origin, brand, category) triples, which at 60,000 tags per
//! minute is close to one record per tag: see the README for the arithmetic.
//!
//! # Exactly once without multi-record transactions
//!
//! A batch's effect on one record is one `operate`: map increments plus
//! `w<partition> = next`, guarded by a filter expression `w<partition> <
//! next`. A replayed batch is filtered out record by record. That is only
//! sound if a replay has the same boundaries as the original, so before
//! touching any cell the batch is recorded as pending in the partition's
//! record of set `watermarks`; a worker that restarts is told to re-send
//! exactly that batch (`pending_next`), and the pending mark is cleared only
//! after every record took it.
//!
//! # Overflow
//!
//! Server-side integer adds are signed 64-bit. A packed entry is kept below
//! `count < 2^14` and `sum < 2^46`, and only deltas below the same bounds are
//! added packed, so the sum never carries into the count and the value never
//! reaches the sign bit. An add returns the new value; when it crosses the
//! bounds, the entry is moved to the wide bins with relative adds (`p -= v,
//! n += count(v), s += sum(v)`) in one generation-checked `operate`, which
//! concurrent adds cannot corrupt. Larger deltas go to the wide bins
//! directly.

use std::collections::BTreeMap;
use std::time::Duration;

use aerospike::expressions as exp;
use aerospike::operations::{self, MapOrder, maps};
use aerospike::policy::{Expiration, GenerationPolicy, RecordExistsAction};
use aerospike::{
    BatchOperation, BatchPolicy, BatchReadPolicy, Bin, Bins, MapPolicy, MapReturnType,
    MapWriteFlags, ResultCode, Value,
};
use allezon_aerospike::{Cluster, aerospike, to_error};
use allezon_core::cells::{CellKey, SUM_BITS, Totals};
use allezon_core::{Action, Error, ErrorKind, Result};
use futures::{StreamExt, TryStreamExt};

use super::clock::{self, EventClock};
use super::{AggregateStore, Applied, CellFilter, DeltaBatch, Watermark, check_follows};

const PACKED: &str = "p";
const COUNT: &str = "n";
const SUM: &str = "s";
const MINUTES_PER_RECORD: i64 = 60;

/// Cells are queried for 24 hours after their minute. A record is written
/// last during or after its hour, so 24 hours from the last write keeps
/// every minute of it long enough; the margin covers clock skew.
pub const CELL_TTL: Duration = Duration::from_secs(24 * 3600 + 600);

/// Bits that must be clear in a packed entry or delta: the top two of the
/// count and of the sum. With them clear, one add cannot carry from the sum
/// into the count nor reach the sign bit.
const UNSAFE_BITS: u64 = (0b11 << 62) | (0b11 << (SUM_BITS - 2));

/// Records written at once by one batch.
const CONCURRENCY: usize = 32;

fn safe(packed: u64) -> bool {
    packed & UNSAFE_BITS == 0
}

#[derive(Clone)]
pub struct AerospikeAggregateStore {
    cluster: Cluster,
    cells: String,
    marks: String,
}

/// The record a cell lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RecordId {
    hour: i64,
    action: u8,
    origin: u32,
    brand: u32,
}

/// Map keys per category: one per minute of the hour, rounded up to a power
/// of two.
const KEYS_PER_CATEGORY: i64 = 64;

/// A cell's key inside its record's maps.
fn cell_key(category: u32, minute_of_hour: i64) -> i64 {
    i64::from(category) * KEYS_PER_CATEGORY + minute_of_hour
}

impl RecordId {
    /// The record holding `key`, and the cell's key in its maps.
    fn of(key: &CellKey) -> (Self, i64) {
        let id = RecordId {
            hour: key.minute.div_euclid(MINUTES_PER_RECORD),
            action: action_code(key.action),
            origin: key.origin,
            brand: key.brand,
        };
        (
            id,
            cell_key(key.category, key.minute.rem_euclid(MINUTES_PER_RECORD)),
        )
    }

    fn bytes(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(17);
        key.extend_from_slice(&self.hour.to_be_bytes());
        key.push(self.action);
        key.extend_from_slice(&self.origin.to_be_bytes());
        key.extend_from_slice(&self.brand.to_be_bytes());
        key
    }
}

fn action_code(action: Action) -> u8 {
    match action {
        Action::View => 1,
        Action::Buy => 2,
    }
}

fn watermark_bin(partition: u32) -> String {
    format!("w{partition}")
}

/// A partition's record in set `watermarks`.
#[derive(Debug, Clone, Default)]
struct Mark {
    next: u64,
    pending_start: u64,
    pending_next: u64,
    /// The partition's event clock as of `next`.
    clock: EventClock,
    /// 0 when the record does not exist.
    generation: u32,
}

/// Bin of a partition's event clock in its `watermarks` record.
const CLOCK_BIN: &str = "clk";
/// Key, in set `watermarks`, of the store's event clock: the highest
/// partition clock, bin [`STORE_CLOCK_BIN`].
const STORE_CLOCK_KEY: &str = "clock";
const STORE_CLOCK_BIN: &str = "m";

fn int(value: Option<&Value>) -> Result<i64> {
    match value {
        None | Some(Value::Nil) => Ok(0),
        Some(Value::Int(n)) => Ok(*n),
        Some(other) => Err(Error::internal(format!(
            "aerospike: expected an integer, got {other:?}"
        ))),
    }
}

fn offset(value: Option<&Value>) -> Result<u64> {
    u64::try_from(int(value)?).map_err(|_| Error::internal("aerospike: negative offset"))
}

fn to_i64(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::internal("aggregate value out of range"))
}

fn conflict(message: String) -> Error {
    Error::new(ErrorKind::Conflict, message)
}

fn is(err: &aerospike::Error, code: ResultCode) -> bool {
    err.server_result_code() == Some(code)
}

impl AerospikeAggregateStore {
    pub fn new(cluster: Cluster) -> Self {
        Self {
            cells: cluster.set("cells"),
            marks: cluster.set("watermarks"),
            cluster,
        }
    }

    fn cell_record(&self, id: &RecordId) -> Result<aerospike::Key> {
        self.cluster.key(&self.cells, Value::Blob(id.bytes()))
    }

    fn mark_key(&self, partition: u32) -> Result<aerospike::Key> {
        self.cluster.key(&self.marks, i64::from(partition))
    }

    async fn mark(&self, partition: u32) -> Result<Mark> {
        let key = self.mark_key(partition)?;
        match self
            .cluster
            .client()
            .get(&self.cluster.read_policy(), &key, Bins::All)
            .await
        {
            Ok(record) => Ok(Mark {
                next: offset(record.bins.get("next"))?,
                pending_start: offset(record.bins.get("ps"))?,
                pending_next: offset(record.bins.get("pn"))?,
                clock: match record.bins.get(CLOCK_BIN) {
                    Some(Value::Blob(bytes)) => EventClock::decode(bytes)?,
                    _ => EventClock::default(),
                },
                generation: record.generation,
            }),
            Err(err) if is(&err, ResultCode::KeyNotFoundError) => Ok(Mark::default()),
            Err(err) => Err(to_error(err)),
        }
    }

    /// Records `batch` as started on top of `next` (the mark's, or 0 for a
    /// rebase), unless another writer moved the mark.
    async fn mark_pending(&self, batch: &DeltaBatch, mark: &Mark, next: u64) -> Result<()> {
        let key = self.mark_key(batch.partition)?;
        let mut write = self.cluster.write_policy();
        write.expiration = Expiration::Never;
        if mark.generation == 0 {
            write.record_exists_action = RecordExistsAction::CreateOnly;
        } else {
            write.generation_policy = GenerationPolicy::ExpectGenEqual;
            write.generation = mark.generation;
        }
        let bins = [
            Bin::new("next", Value::Int(to_i64(next)?)),
            Bin::new("ps", Value::Int(to_i64(batch.start)?)),
            Bin::new("pn", Value::Int(to_i64(batch.next)?)),
        ];
        match self.cluster.client().put(&write, &key, &bins).await {
            Ok(()) => Ok(()),
            Err(err)
                if is(&err, ResultCode::GenerationError)
                    || is(&err, ResultCode::KeyExistsError) =>
            {
                Err(conflict(format!(
                    "partition {} moved while starting batch [{}, {})",
                    batch.partition, batch.start, batch.next
                )))
            }
            Err(err) => Err(to_error(err)),
        }
    }

    /// Marks `batch` applied, with the partition's clock after it, if it is
    /// still the pending one.
    async fn finish(&self, batch: &DeltaBatch, clock: &EventClock) -> Result<()> {
        let key = self.mark_key(batch.partition)?;
        let mut write = self.cluster.write_policy();
        write.expiration = Expiration::Never;
        write.base_policy.filter_expression = Some(exp::eq(
            exp::int_bin("pn"),
            exp::int_val(to_i64(batch.next)?),
        ));
        let ops = [
            operations::put(&Bin::new("next", Value::Int(to_i64(batch.next)?))),
            operations::put(&Bin::new("ps", Value::Int(0))),
            operations::put(&Bin::new("pn", Value::Int(0))),
            operations::put(&Bin::new(CLOCK_BIN, Value::Blob(clock.encode()))),
        ];
        match self.cluster.client().operate(&write, &key, &ops).await {
            Ok(_) => Ok(()),
            // Another worker re-sending the same batch finished it first.
            Err(err) if is(&err, ResultCode::FilteredOut) => Ok(()),
            Err(err) => Err(to_error(err)),
        }
    }

    fn store_clock_key(&self) -> Result<aerospike::Key> {
        self.cluster.key(&self.marks, STORE_CLOCK_KEY)
    }

    /// The store's event clock: the highest partition clock.
    async fn store_clock(&self) -> Result<Option<i64>> {
        match self
            .cluster
            .client()
            .get(
                &self.cluster.read_policy(),
                &self.store_clock_key()?,
                Bins::from([STORE_CLOCK_BIN]),
            )
            .await
        {
            Ok(record) => Ok(match record.bins.get(STORE_CLOCK_BIN) {
                Some(Value::Int(minute)) => Some(*minute),
                _ => None,
            }),
            Err(err) if is(&err, ResultCode::KeyNotFoundError) => Ok(None),
            Err(err) => Err(to_error(err)),
        }
    }

    /// Raises the store's clock to `minute` unless it is already there: a
    /// write filtered on the old value, so concurrent raises keep the
    /// highest.
    async fn raise_store_clock(&self, minute: i64) -> Result<()> {
        let mut write = self.cluster.write_policy();
        write.expiration = Expiration::Never;
        write.base_policy.filter_expression = Some(exp::or(vec![
            exp::not(exp::bin_exists(STORE_CLOCK_BIN)),
            exp::lt(exp::int_bin(STORE_CLOCK_BIN), exp::int_val(minute)),
        ]));
        let bins = [Bin::new(STORE_CLOCK_BIN, Value::Int(minute))];
        match self
            .cluster
            .client()
            .put(&write, &self.store_clock_key()?, &bins)
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if is(&err, ResultCode::FilteredOut) => Ok(()),
            Err(err) => Err(to_error(err)),
        }
    }

    /// Applies one record's share of a batch; returns nothing to do on a
    /// replay. Afterwards, moves entries that crossed the packed bounds.
    async fn apply_record(
        &self,
        id: RecordId,
        cells: Vec<(i64, Totals)>,
        partition: u32,
        next: u64,
    ) -> Result<()> {
        let key = self.cell_record(&id)?;
        let policy = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::DEFAULT);
        let mut ops = Vec::with_capacity(cells.len() + 1);
        let mut packed_ops = Vec::new();
        for (cell, totals) in &cells {
            match totals.pack().filter(|p| safe(*p)) {
                Some(packed) => {
                    packed_ops.push((ops.len(), *cell));
                    ops.push(maps::increment_value(
                        &policy,
                        PACKED,
                        Value::Int(*cell),
                        Value::Int(to_i64(packed)?),
                    ));
                }
                None => {
                    ops.push(maps::increment_value(
                        &policy,
                        COUNT,
                        Value::Int(*cell),
                        Value::Int(to_i64(totals.count)?),
                    ));
                    ops.push(maps::increment_value(
                        &policy,
                        SUM,
                        Value::Int(*cell),
                        Value::Int(totals.sum),
                    ));
                }
            }
        }
        let bin = watermark_bin(partition);
        let next = to_i64(next)?;
        ops.push(operations::put(&Bin::new(bin.as_str(), Value::Int(next))));
        let mut write = self.cluster.write_policy();
        write.expiration = Expiration::Seconds(CELL_TTL.as_secs() as u32);
        write.base_policy.filter_expression = Some(exp::or(vec![
            exp::not(exp::bin_exists(bin.as_str())),
            exp::lt(exp::int_bin(bin.as_str()), exp::int_val(next)),
        ]));

        let mut oversized = Vec::new();
        match self.cluster.client().operate(&write, &key, &ops).await {
            Ok(record) => {
                let results = record.results.unwrap_or_default();
                for (at, minute) in packed_ops {
                    let value = int(results.get(at))?;
                    if !safe(value as u64) {
                        oversized.push(minute);
                    }
                }
            }
            Err(err) if is(&err, ResultCode::FilteredOut) => {
                // Applied before. A crash may have come between that add and
                // its move to the wide bins: check the entries it touched.
                oversized = packed_ops.into_iter().map(|(_, m)| m).collect();
            }
            Err(err) => return Err(to_error(err)),
        }
        for minute in oversized {
            self.move_to_wide(&key, minute).await?;
        }
        Ok(())
    }

    /// Moves a packed entry past the bounds into the wide bins.
    async fn move_to_wide(&self, key: &aerospike::Key, minute: i64) -> Result<()> {
        let policy = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::DEFAULT);
        loop {
            let read = self
                .cluster
                .client()
                .operate(
                    &self.cluster.read_operate_policy(),
                    key,
                    &[maps::get_by_key(
                        PACKED,
                        Value::Int(minute),
                        MapReturnType::VALUE,
                    )],
                )
                .await
                .map_err(to_error)?;
            let value = int(read.results.as_deref().and_then(<[Value]>::first))?;
            if safe(value as u64) {
                return Ok(());
            }
            let totals = Totals::unpack(value as u64);
            let mut write = self.cluster.write_policy();
            write.generation_policy = GenerationPolicy::ExpectGenEqual;
            write.generation = read.generation;
            let ops = [
                maps::increment_value(&policy, PACKED, Value::Int(minute), Value::Int(-value)),
                maps::increment_value(
                    &policy,
                    COUNT,
                    Value::Int(minute),
                    Value::Int(to_i64(totals.count)?),
                ),
                maps::increment_value(&policy, SUM, Value::Int(minute), Value::Int(totals.sum)),
            ];
            match self.cluster.client().operate(&write, key, &ops).await {
                Ok(_) => return Ok(()),
                // A concurrent add: read again and retry.
                Err(err) if is(&err, ResultCode::GenerationError) => continue,
                Err(err) => return Err(to_error(err)),
            }
        }
    }
}

impl AggregateStore for AerospikeAggregateStore {
    async fn apply(&self, batch: DeltaBatch) -> Result<Applied> {
        let mark = self.mark(batch.partition).await?;
        // A rebase is started with the mark at 0 (see `mark_pending`), so
        // its re-sends find it there like any other unfinished batch.
        let watermark = if mark.pending_next == 0 {
            super::applies_on(&batch, mark.next)
        } else {
            mark.next
        };
        if batch.next <= watermark {
            return Ok(Applied::Replayed);
        }
        if mark.pending_next != 0 {
            if (batch.start, batch.next) != (mark.pending_start, mark.pending_next) {
                return Err(conflict(format!(
                    "partition {} has the unfinished batch [{}, {}); it must be re-sent first",
                    batch.partition, mark.pending_start, mark.pending_next
                )));
            }
        } else {
            check_follows(&batch, watermark)?;
            self.mark_pending(&batch, &mark, watermark).await?;
        }

        // Cells behind the retention cut-off are not written: queries no
        // longer read them. A re-sent batch may skip more than the original
        // did (the clock only moves on), never less.
        let mut clock = mark.clock;
        clock.observe_deltas(&batch.deltas);
        let store_clock = self.store_clock().await?;
        let cutoff = clock::cutoff(store_clock.max(clock.minute()));
        let mut records: BTreeMap<RecordId, Vec<(i64, Totals)>> = BTreeMap::new();
        for (key, totals) in batch.deltas.iter().filter(|(k, _)| k.minute >= cutoff) {
            let (id, minute) = RecordId::of(key);
            records.entry(id).or_default().push((minute, *totals));
        }
        let (partition, next) = (batch.partition, batch.next);
        futures::stream::iter(records)
            .map(|(id, cells)| self.apply_record(id, cells, partition, next))
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await?;
        self.finish(&batch, &clock).await?;
        if let Some(minute) = clock.minute().filter(|m| Some(*m) > store_clock) {
            self.raise_store_clock(minute).await?;
        }
        Ok(Applied::Applied)
    }

    async fn watermarks(&self, partitions: &[u32]) -> Result<Vec<Watermark>> {
        let mut out = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let mark = self.mark(*partition).await?;
            out.push(Watermark {
                next: mark.next,
                pending_next: mark.pending_next,
            });
        }
        Ok(out)
    }

    async fn query(
        &self,
        filter: CellFilter,
        from_minute: i64,
        to_minute: i64,
    ) -> Result<Vec<Totals>> {
        let minutes = usize::try_from(to_minute.saturating_sub(from_minute)).unwrap_or(0);
        let mut totals = vec![Totals::default(); minutes];
        // Minutes behind the retention cut-off answer zero, as in the
        // embedded store; the TTL removes their records later.
        let asked_from = from_minute;
        let from_minute = from_minute.max(clock::cutoff(self.store_clock().await?));
        if from_minute >= to_minute {
            return Ok(totals);
        }
        let first_hour = from_minute.div_euclid(MINUTES_PER_RECORD);
        let last_hour = (to_minute - 1).div_euclid(MINUTES_PER_RECORD);
        let read = BatchReadPolicy::default();
        let mut ops = (first_hour..=last_hour)
            .map(|hour| {
                let id = RecordId {
                    hour,
                    action: action_code(filter.action),
                    origin: filter.origin,
                    brand: filter.brand,
                };
                // This hour's part of the range, as keys of the category.
                let start = hour * MINUTES_PER_RECORD;
                let lo = cell_key(filter.category, from_minute.max(start) - start);
                let hi = cell_key(
                    filter.category,
                    to_minute.min(start + MINUTES_PER_RECORD) - start,
                );
                let range = |bin| {
                    maps::get_by_key_range(
                        bin,
                        Value::Int(lo),
                        Value::Int(hi),
                        MapReturnType::KEY_VALUE,
                    )
                };
                Ok(BatchOperation::read_ops(
                    &read,
                    self.cell_record(&id)?,
                    vec![range(PACKED), range(COUNT), range(SUM)],
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let policy = BatchPolicy {
            base_policy: self.cluster.read_policy().base_policy,
            ..BatchPolicy::default()
        };
        self.cluster
            .client()
            .batch(&policy, &mut ops)
            .await
            .map_err(to_error)?;
        for (hour, op) in (first_hour..=last_hour).zip(&ops) {
            let Some(record) = op.batch_record().record.as_ref() else {
                match op.result_code() {
                    Some(ResultCode::KeyNotFoundError) => continue,
                    code => {
                        return Err(Error::unavailable(format!(
                            "aerospike: batch read of hour {hour} failed: {code:?}"
                        )));
                    }
                }
            };
            let reply = |at: usize, bin: &str| match record.results.as_deref() {
                Some(results) if results.len() == 3 => results.get(at),
                _ => record.bins.get(bin),
            };
            let mut add = |key: &Value, delta: Totals| -> Result<()> {
                let minute =
                    hour * MINUTES_PER_RECORD + int(Some(key))?.rem_euclid(KEYS_PER_CATEGORY);
                if (from_minute..to_minute).contains(&minute) {
                    let slot = &mut totals[(minute - asked_from) as usize];
                    *slot = slot
                        .checked_add(delta)
                        .map_err(|e| Error::internal(e.to_string()))?;
                }
                Ok(())
            };
            for (key, value) in entries(reply(0, PACKED))? {
                add(key, Totals::unpack(int(Some(value))? as u64))?;
            }
            let sums: BTreeMap<i64, i64> = entries(reply(2, SUM))?
                .into_iter()
                .map(|(k, s)| Ok((int(Some(k))?, int(Some(s))?)))
                .collect::<Result<_>>()?;
            for (key, count) in entries(reply(1, COUNT))? {
                let count = u64::try_from(int(Some(count))?)
                    .map_err(|_| Error::internal("aerospike: negative count"))?;
                let sum = sums.get(&int(Some(key))?).copied().unwrap_or(0);
                add(key, Totals { count, sum })?;
            }
        }
        Ok(totals)
    }
}

/// The entries of a map bin, whatever form the client decoded it into.
fn entries(value: Option<&Value>) -> Result<Vec<(&Value, &Value)>> {
    match value {
        None | Some(Value::Nil) => Ok(Vec::new()),
        Some(Value::SortedMap(map)) => Ok(map.iter().collect()),
        Some(Value::OrderedMap(map)) => Ok(map.iter().collect()),
        Some(Value::HashMap(map)) => Ok(map.iter().collect()),
        Some(Value::KeyValueList(list)) => Ok(list.iter().map(|(k, v)| (k, v)).collect()),
        Some(other) => Err(Error::internal(format!(
            "aerospike: expected a map, got {other:?}"
        ))),
    }
}

/// Against a real server: runs when `AEROSPIKE_HOSTS` is set, and says so
/// when it is not.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedAggregateStore;
    use allezon_aerospike::test_cluster;

    const BASE_MINUTE: i64 = 29_000_000;

    fn key(minute: i64, action: Action, origin: u32, brand: u32, category: u32) -> CellKey {
        CellKey {
            minute,
            action,
            origin,
            brand,
            category,
        }
    }

    fn filter(action: Action, origin: u32, brand: u32, category: u32) -> CellFilter {
        CellFilter {
            action,
            origin,
            brand,
            category,
        }
    }

    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[tokio::test]
    #[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
    async fn answers_like_the_embedded_store_with_replays_and_overlaps() {
        let cluster = test_cluster("agg").await;
        let aerospike = AerospikeAggregateStore::new(cluster);
        let dir = tempfile::tempdir().unwrap();
        let embedded =
            EmbeddedAggregateStore::open(&allezon_storage::Store::open(dir.path()).unwrap())
                .unwrap();
        let mut rng = 11u64;
        let mut offsets = [0u64; 3];
        for _ in 0..120 {
            let partition = (next(&mut rng) % 3) as u32;
            let start = offsets[partition as usize];
            let end = start + 1 + next(&mut rng) % 50;
            let deltas = (0..1 + next(&mut rng) % 40)
                .map(|_| {
                    let action = if next(&mut rng).is_multiple_of(3) {
                        Action::Buy
                    } else {
                        Action::View
                    };
                    let minute = BASE_MINUTE + (next(&mut rng) % 150) as i64;
                    let cell = key(
                        minute,
                        action,
                        (next(&mut rng) % 3) as u32,
                        (next(&mut rng) % 4) as u32,
                        (next(&mut rng) % 3) as u32,
                    );
                    // Mostly small totals; now and then one only the wide
                    // form holds (a huge price sum, or a negative one).
                    let totals = match next(&mut rng) % 20 {
                        0 => Totals {
                            count: 3,
                            sum: 1 << 50,
                        },
                        1 => Totals { count: 1, sum: -5 },
                        _ => Totals {
                            count: 1 + next(&mut rng) % 5,
                            sum: (next(&mut rng) % 1000) as i64,
                        },
                    };
                    (cell, totals)
                })
                .collect::<Vec<_>>();
            // As the worker's fold sends them: one delta per cell.
            let mut merged: BTreeMap<CellKey, Totals> = BTreeMap::new();
            for (cell, totals) in deltas {
                let slot = merged.entry(cell).or_default();
                *slot = slot.checked_add(totals).unwrap();
            }
            let deltas = merged.into_iter().collect();
            let batch = DeltaBatch {
                partition,
                start,
                next: end,
                deltas,
                rebase_from: None,
            };
            let a = aerospike.apply(batch.clone()).await.unwrap();
            let e = embedded.apply(batch.clone()).await.unwrap();
            assert_eq!((a, e), (Applied::Applied, Applied::Applied));
            // A lost answer: the same batch again changes nothing.
            assert_eq!(
                aerospike.apply(batch.clone()).await.unwrap(),
                Applied::Replayed
            );
            // A batch overlapping the applied part is refused.
            if start > 0 {
                let overlap = DeltaBatch {
                    start: start - 1,
                    next: end + 5,
                    ..batch.clone()
                };
                let err = aerospike.apply(overlap).await.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Conflict);
            }
            offsets[partition as usize] = end;
        }
        let marks = aerospike.watermarks(&[0, 1, 2, 3]).await.unwrap();
        assert_eq!(
            marks
                .iter()
                .map(|w| (w.next, w.pending_next))
                .collect::<Vec<_>>(),
            [(offsets[0], 0), (offsets[1], 0), (offsets[2], 0), (0, 0)]
        );
        for action in [Action::View, Action::Buy] {
            for (origin, brand, category) in
                (0..3).flat_map(|o| (0..4).flat_map(move |b| (0..3).map(move |c| (o, b, c))))
            {
                {
                    for (from, to) in [(0, 150), (17, 18), (59, 121), (-30, 200)] {
                        let f = filter(action, origin, brand, category);
                        let (from, to) = (BASE_MINUTE + from, BASE_MINUTE + to);
                        assert_eq!(
                            aerospike.query(f, from, to).await.unwrap(),
                            embedded.query(f, from, to).await.unwrap(),
                            "{f:?} [{from}, {to})"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    #[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
    async fn retention_follows_the_stream_not_its_outliers() {
        let cluster = test_cluster("aggclock").await;
        crate::store::scenarios::retention_follows_the_stream_not_its_outliers(
            || AerospikeAggregateStore::new(cluster.clone()),
            // Expiry is the records' TTL; queries mask the cut-off.
            |_| {},
        )
        .await;
    }

    #[tokio::test]
    #[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
    async fn a_restarted_log_is_counted_from_its_start() {
        let cluster = test_cluster("aggrebase").await;
        crate::store::scenarios::a_restarted_log_is_counted_from_its_start(
            AerospikeAggregateStore::new(cluster),
        )
        .await;
    }

    /// One partition's tags, as `(minute, action, origin, brand, category,
    /// price)`, dense like the replay stream: 1,000 a second of event time.
    fn partition_tags(partition: u32, n: u64) -> Vec<(i64, Action, u32, u32, u32, i32)> {
        let mut rng = 1 + u64::from(partition) * 7919;
        (0..n)
            .map(|i| {
                let r = next(&mut rng);
                let action = if r.is_multiple_of(5) {
                    Action::Buy
                } else {
                    Action::View
                };
                // Four partitions share the stream's minutes.
                let minute = BASE_MINUTE + (i * 4 / 60_000) as i64;
                let price = (r >> 20) % 100_000;
                (
                    minute,
                    action,
                    1 + (r >> 8) as u32 % 3,
                    1 + (r >> 12) as u32 % 2,
                    1 + (r >> 16) as u32 % 2,
                    price as i32,
                )
            })
            .collect()
    }

    fn fold(tags: &[(i64, Action, u32, u32, u32, i32)]) -> Vec<(CellKey, Totals)> {
        let mut fold = allezon_core::cells::Fold::default();
        for &(minute, action, origin, brand, category, price) in tags {
            fold.add(allezon_core::cells::FoldInput {
                time_ms: minute * 60_000,
                action,
                origin,
                brand,
                category,
                price,
            })
            .unwrap();
        }
        fold.into_cells().collect()
    }

    /// What the worker does, against the store directly: batches of up to
    /// 10,000 tags, some applies cut off at a random point (a gRPC deadline
    /// or a killed worker: whatever reached the server still lands), then
    /// the watermarks are read again and the partition resumes from there,
    /// re-cutting a pending batch exactly. Four partitions run at once on the
    /// same records, and each minute's unfiltered cells pass the packed
    /// bound within seconds.
    async fn run_partition(store: AerospikeAggregateStore, partition: u32, tags: u64) -> u32 {
        let all = partition_tags(partition, tags);
        let mut rng = 99 + u64::from(partition);
        let mut at = 0u64;
        let mut cuts = 0;
        while at < tags {
            let marks = store.watermarks(&[partition]).await.unwrap()[0];
            at = marks.next;
            if at >= tags {
                break;
            }
            let end = if marks.pending_next != 0 {
                marks.pending_next
            } else {
                (at + 1 + next(&mut rng) % 4_000).min(tags)
            };
            let batch = DeltaBatch {
                partition,
                start: at,
                next: end,
                deltas: fold(&all[at as usize..end as usize]),
                rebase_from: None,
            };
            let cut_after = Duration::from_micros(next(&mut rng) % 8_000);
            if next(&mut rng).is_multiple_of(3) {
                if tokio::time::timeout(cut_after, store.apply(batch))
                    .await
                    .is_err()
                {
                    cuts += 1;
                }
            } else {
                store.apply(batch).await.unwrap();
            }
        }
        cuts
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
    async fn concurrent_partitions_with_cut_off_applies_count_exactly() {
        let cluster = test_cluster("aggstress").await;
        let store = AerospikeAggregateStore::new(cluster);
        const TAGS: u64 = 40_000;
        let tasks: Vec<_> = (0..4)
            .map(|p| tokio::spawn(run_partition(store.clone(), p, TAGS)))
            .collect();
        let mut cuts = 0;
        for task in tasks {
            cuts += task.await.unwrap();
        }
        assert!(cuts > 3, "only {cuts} applies were cut off");
        let mut want: BTreeMap<CellKey, Totals> = BTreeMap::new();
        for p in 0..4 {
            for (key, totals) in fold(&partition_tags(p, TAGS)) {
                let slot = want.entry(key).or_default();
                *slot = slot.checked_add(totals).unwrap();
            }
        }
        let unfiltered = want
            .iter()
            .filter(|(k, _)| (k.origin, k.brand, k.category) == (0, 0, 0))
            .map(|(_, t)| t.count)
            .max()
            .unwrap();
        assert!(
            unfiltered > 1 << 15,
            "the packed bound is passed: {unfiltered}"
        );
        let minutes = (TAGS * 4).div_ceil(60_000) as i64;
        for action in Action::ALL {
            for (origin, brand, category) in
                (0..4).flat_map(|o| (0..3).flat_map(move |b| (0..3).map(move |c| (o, b, c))))
            {
                let f = filter(action, origin, brand, category);
                let got = store
                    .query(f, BASE_MINUTE, BASE_MINUTE + minutes)
                    .await
                    .unwrap();
                let expected: Vec<Totals> = (0..minutes)
                    .map(|m| {
                        want.get(&key(BASE_MINUTE + m, action, origin, brand, category))
                            .copied()
                            .unwrap_or_default()
                    })
                    .collect();
                assert_eq!(got, expected, "{f:?}");
            }
        }
    }

    #[tokio::test]
    #[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
    async fn packed_cells_move_to_the_wide_form_before_they_overflow() {
        let cluster = test_cluster("aggwide").await;
        let store = AerospikeAggregateStore::new(cluster.clone());
        let cell = key(BASE_MINUTE, Action::Buy, 0, 0, 0);
        // 10,000 tags a batch: packed each time, and past 2^14 after two.
        let delta = Totals {
            count: 10_000,
            sum: 10_000 * 1_000_000_000,
        };
        let mut want = Totals::default();
        for i in 0..40u64 {
            let batch = DeltaBatch {
                partition: 0,
                start: i,
                next: i + 1,
                deltas: vec![(cell, delta)],
                rebase_from: None,
            };
            store.apply(batch).await.unwrap();
            want = want.checked_add(delta).unwrap();
        }
        assert_eq!(
            store
                .query(filter(Action::Buy, 0, 0, 0), BASE_MINUTE, BASE_MINUTE + 1)
                .await
                .unwrap(),
            [want]
        );
        // The packed entry stays inside its bounds; the rest is wide.
        let (id, minute) = RecordId::of(&cell);
        let record = cluster
            .client()
            .get(
                &cluster.read_policy(),
                &store.cell_record(&id).unwrap(),
                Bins::All,
            )
            .await
            .unwrap();
        let packed = entries(record.bins.get(PACKED)).unwrap();
        let (_, value) = packed
            .iter()
            .find(|(m, _)| **m == Value::Int(minute))
            .unwrap();
        assert!(safe(int(Some(value)).unwrap() as u64));
        assert!(record.bins.contains_key(COUNT) && record.bins.contains_key(SUM));
        // Cells carry the 24-hour TTL.
        let ttl = record.time_to_live().unwrap();
        assert!(
            ttl <= CELL_TTL && ttl > CELL_TTL - Duration::from_secs(120),
            "{ttl:?}"
        );
    }

    #[tokio::test]
    #[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
    async fn an_unfinished_batch_must_be_resent_exactly_and_counts_once() {
        let cluster = test_cluster("aggcut").await;
        let store = AerospikeAggregateStore::new(cluster);
        let one = Totals { count: 1, sum: 7 };
        let cells: Vec<_> = (0..10)
            .map(|m| (key(BASE_MINUTE + m * 30, Action::View, 1, 1, 2), one))
            .collect();
        let batch = DeltaBatch {
            partition: 5,
            start: 0,
            next: 10,
            deltas: cells.clone(),
            rebase_from: None,
        };

        // A worker dies after marking the batch and applying some records.
        let mark = store.mark(5).await.unwrap();
        store.mark_pending(&batch, &mark, mark.next).await.unwrap();
        let mut records: BTreeMap<RecordId, Vec<(i64, Totals)>> = BTreeMap::new();
        for (cell, totals) in &cells {
            let (id, minute) = RecordId::of(cell);
            records.entry(id).or_default().push((minute, *totals));
        }
        assert!(records.len() > 3);
        for (id, cells) in records.into_iter().take(2) {
            store.apply_record(id, cells, 5, 10).await.unwrap();
        }
        assert_eq!(
            store.watermarks(&[5]).await.unwrap(),
            [Watermark {
                next: 0,
                pending_next: 10
            }]
        );
        // Its successor read further; a batch with other bounds is refused.
        let longer = DeltaBatch {
            next: 12,
            ..batch.clone()
        };
        assert_eq!(
            store.apply(longer).await.unwrap_err().kind(),
            ErrorKind::Conflict
        );
        // The exact batch finishes the rest, and each cell counts once.
        assert_eq!(store.apply(batch.clone()).await.unwrap(), Applied::Applied);
        assert_eq!(
            store.watermarks(&[5]).await.unwrap(),
            [Watermark {
                next: 10,
                pending_next: 0
            }]
        );
        let got = store
            .query(
                filter(Action::View, 1, 1, 2),
                BASE_MINUTE,
                BASE_MINUTE + 300,
            )
            .await
            .unwrap();
        let counted: u64 = got.iter().map(|t| t.count).sum();
        assert_eq!(counted, 10);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, t)| (t.count == 1) == (i % 30 == 0))
        );
    }
}
