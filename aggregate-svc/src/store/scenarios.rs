//! Test scenarios every [`AggregateStore`] must pass, run by each store's
//! tests (the Aerospike one against a real server).

use allezon_core::Action;
use allezon_core::cells::{CellKey, Totals};

use super::{AggregateStore, CellFilter, DeltaBatch, RETENTION_MINUTES};

/// 2022-03-01T00:00, in minutes: where the replay stream starts.
pub const START: i64 = 27_433_440;
const YEAR_9999: i64 = 253_402_300_799_999 / 60_000;
const YEAR_0001: i64 = -62_135_596_800_000 / 60_000;

/// A BUY cell of `brand` (0: any) in `minute`, no origin or category.
pub fn key(minute: i64, brand: u32) -> CellKey {
    CellKey {
        minute,
        action: Action::Buy,
        origin: 0,
        brand,
        category: 0,
    }
}

/// The filter reading [`key`]'s cells.
pub fn brand(brand: u32) -> CellFilter {
    CellFilter {
        action: Action::Buy,
        origin: 0,
        brand,
        category: 0,
    }
}

fn ten(n: u64) -> Totals {
    Totals {
        count: n,
        sum: 10 * n as i64,
    }
}

/// `n` tags in `minute`, as the worker folds them: the unfiltered cell and
/// brand 1's.
fn tags(minute: i64, n: u64) -> Vec<(CellKey, Totals)> {
    vec![(key(minute, 0), ten(n)), (key(minute, 1), ten(n))]
}

fn batch(offset: u64, deltas: Vec<(CellKey, Totals)>) -> DeltaBatch {
    DeltaBatch {
        partition: 0,
        start: offset,
        next: offset + 1,
        deltas,
        rebase_from: None,
    }
}

/// A log that restarted below the watermark: the batch that says so (the
/// watermark its worker found) applies from the new log's start, once; a
/// retry of it is a replay, a stale rebase changes nothing, and the
/// partition goes on from the new offsets.
pub async fn a_restarted_log_is_counted_from_its_start<S: AggregateStore>(store: S) {
    for offset in 0..50 {
        store.apply(batch(offset, tags(START, 1))).await.unwrap();
    }
    assert_eq!(store.watermarks(&[0]).await.unwrap()[0].next, 50);
    // Without the rebase, the new log's first records read as replays.
    assert_eq!(
        store.apply(batch(0, tags(START, 1))).await.unwrap(),
        super::Applied::Replayed
    );
    let rebase = DeltaBatch {
        next: 3,
        rebase_from: Some(50),
        ..batch(0, tags(START, 3))
    };
    assert_eq!(
        store.apply(rebase.clone()).await.unwrap(),
        super::Applied::Applied
    );
    assert_eq!(store.watermarks(&[0]).await.unwrap()[0].next, 3);
    // Its answer lost, the rebase is sent again: nothing changes.
    assert_eq!(store.apply(rebase).await.unwrap(), super::Applied::Replayed);
    // A rebase from a watermark the partition no longer stands at is an
    // ordinary batch.
    let stale = DeltaBatch {
        rebase_from: Some(50),
        ..batch(3, tags(START, 1))
    };
    assert_eq!(store.apply(stale).await.unwrap(), super::Applied::Applied);
    assert_eq!(store.watermarks(&[0]).await.unwrap()[0].next, 4);
    assert_eq!(
        store.query(brand(1), START, START + 1).await.unwrap(),
        [ten(54)]
    );
}

/// Outliers dated 9999 and 0001, alone and in a burst, leave the stream's
/// minutes exact, also after a restart (`open` again); 24 hours of event
/// time later the oldest minute is gone. `sweep` runs whatever physical
/// retention the store has.
pub async fn retention_follows_the_stream_not_its_outliers<S: AggregateStore>(
    open: impl Fn() -> S,
    sweep: impl Fn(&S),
) {
    let stream = [ten(20_000), ten(20_000), ten(20_000)];
    {
        let store = open();
        store.apply(batch(0, tags(START, 20_000))).await.unwrap();
        store
            .apply(batch(1, tags(START + 1, 20_000)))
            .await
            .unwrap();
        store.apply(batch(2, tags(YEAR_9999, 1))).await.unwrap();
        store.apply(batch(3, tags(YEAR_0001, 1))).await.unwrap();
        let mut burst = tags(YEAR_9999, 500);
        burst.extend(tags(YEAR_0001, 500));
        burst.extend(tags(START + 5_000_000, 500));
        store.apply(batch(4, burst)).await.unwrap();
        store
            .apply(batch(5, tags(START + 2, 20_000)))
            .await
            .unwrap();
        sweep(&store);
        assert_eq!(
            store.query(brand(1), START, START + 3).await.unwrap(),
            stream
        );
    }
    let store = open();
    sweep(&store);
    assert_eq!(
        store.query(brand(1), START, START + 3).await.unwrap(),
        stream
    );

    let day_later = START + RETENTION_MINUTES;
    store
        .apply(batch(6, tags(day_later, 20_000)))
        .await
        .unwrap();
    sweep(&store);
    assert_eq!(
        store.query(brand(1), START, START + 3).await.unwrap(),
        [Totals::default(), ten(20_000), ten(20_000)]
    );
    // A late tag for a dropped minute is not counted again.
    store.apply(batch(7, tags(START, 1))).await.unwrap();
    assert_eq!(
        store.query(brand(1), START, START + 1).await.unwrap(),
        [Totals::default()]
    );
    assert_eq!(
        store
            .query(brand(1), day_later, day_later + 1)
            .await
            .unwrap(),
        [ten(20_000)]
    );
}
