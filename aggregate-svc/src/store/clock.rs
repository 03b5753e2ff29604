//! The event-time clock that retention counts back from.
//!
//! Retention may drop data older than 24 hours before an accepted tag
//! (SPEC.md). Counting back from the newest event time ever seen lets one tag
//! dated 9999 erase every statistic, so the clock follows the bulk of the
//! stream instead: it reaches a minute only once [`EVIDENCE`] tags' worth of
//! the recent stream lies at or after it. Older observations fade with every
//! tag that arrives (by a factor e per [`MEMORY`] tags), so outliers cannot
//! pile up either: to move the clock they must make up about a tenth of the
//! recent stream, in one partition (a partition's tags share cookies' hashes,
//! so a burst on one cookie lands in one partition).
//!
//! The clock never goes back: it is the highest estimate so far. It only
//! ever lags the stream's true front, which keeps data longer than the
//! contract requires, never shorter. At 60,000 tags a minute it trails the
//! newest tag by about 10 seconds; a shop with 100 tags a minute keeps about
//! 100 minutes more than 24 hours.
//!
//! Each partition has its own clock, stored with its watermark, so a replayed
//! batch moves it exactly once. The store's clock is the highest partition
//! clock.

use std::collections::BTreeMap;

use allezon_core::cells::{CellKey, Totals};
use allezon_core::{Error, Result};

use super::RETENTION_MINUTES;

/// Tags' worth of (faded) weight that must lie at or after a minute before
/// the clock reaches it.
pub const EVIDENCE: f64 = 10_000.0;
/// Tags over which earlier observations fade by a factor e.
pub const MEMORY: f64 = 100_000.0;
/// Minutes tracked at most. Beyond it the two nearest are merged into the
/// lower one, which can only hold the clock back, never push it forward.
const MAX_MINUTES: usize = 64;
/// Weights below this are forgotten.
const NEGLIGIBLE: f64 = 1e-3;
const VERSION: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventClock {
    /// Minute → faded tag weight, only for minutes at or after `minute`.
    weights: BTreeMap<i64, f64>,
    /// The clock: the highest minute the evidence reached so far.
    minute: Option<i64>,
}

impl EventClock {
    /// The robust newest minute of the stream, once there is enough of it.
    pub fn minute(&self) -> Option<i64> {
        self.minute
    }

    /// Takes in one batch of tags, as `(minute, tags)` pairs.
    pub fn observe(&mut self, tags: impl IntoIterator<Item = (i64, u64)>) {
        let tags: Vec<(i64, u64)> = tags.into_iter().filter(|(_, n)| *n > 0).collect();
        let total: u64 = tags.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return;
        }
        let fade = (-(total as f64) / MEMORY).exp();
        self.weights.values_mut().for_each(|w| *w *= fade);
        for (minute, n) in tags {
            if self.minute.is_some_and(|clock| minute < clock) {
                continue;
            }
            *self.weights.entry(minute).or_default() += n as f64;
        }
        while self.weights.len() > MAX_MINUTES {
            self.merge_nearest();
        }
        if let Some(estimate) = self.estimate() {
            self.minute = Some(self.minute.map_or(estimate, |m| m.max(estimate)));
        }
        let clock = self.minute.unwrap_or(i64::MIN);
        self.weights.retain(|m, w| *m >= clock && *w >= NEGLIGIBLE);
    }

    /// The tags of a batch as aggregate-svc sees them: the unfiltered cells
    /// (origin, brand and category all "any") count every tag once.
    pub fn observe_deltas(&mut self, deltas: &[(CellKey, Totals)]) {
        let mut per_minute: BTreeMap<i64, u64> = BTreeMap::new();
        for (key, totals) in deltas {
            if (key.origin, key.brand, key.category) == (0, 0, 0) {
                *per_minute.entry(key.minute).or_default() += totals.count;
            }
        }
        self.observe(per_minute);
    }

    /// The highest minute with at least [`EVIDENCE`] weight at or after it.
    fn estimate(&self) -> Option<i64> {
        let mut behind = 0.0;
        for (minute, weight) in self.weights.iter().rev() {
            behind += weight;
            if behind >= EVIDENCE {
                return Some(*minute);
            }
        }
        None
    }

    /// Moves the weight of the higher of the two closest minutes onto the
    /// lower one: weight only moves back in time, so the estimate can only
    /// drop.
    fn merge_nearest(&mut self) {
        let minutes: Vec<i64> = self.weights.keys().copied().collect();
        let Some((lo, hi)) = minutes
            .windows(2)
            .min_by_key(|pair| pair[1].abs_diff(pair[0]))
            .map(|pair| (pair[0], pair[1]))
        else {
            return;
        };
        if let Some(weight) = self.weights.remove(&hi) {
            *self.weights.entry(lo).or_default() += weight;
        }
    }

    /// The first minute retention keeps: 24 hours back from the clock.
    pub fn cutoff(&self) -> i64 {
        cutoff(self.minute)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + 16 * self.weights.len());
        out.push(VERSION);
        out.extend_from_slice(&self.minute.unwrap_or(i64::MIN).to_be_bytes());
        out.push(self.weights.len() as u8);
        for (minute, weight) in &self.weights {
            out.extend_from_slice(&minute.to_be_bytes());
            out.extend_from_slice(&weight.to_bits().to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = || Error::internal("corrupt event clock");
        let word = |at: usize| -> Result<[u8; 8]> {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(corrupt)
        };
        if bytes.first() != Some(&VERSION) {
            return Err(corrupt());
        }
        let minute = i64::from_be_bytes(word(1)?);
        let count = usize::from(*bytes.get(9).ok_or_else(corrupt)?);
        let mut weights = BTreeMap::new();
        for i in 0..count {
            let at = 10 + 16 * i;
            let weight = f64::from_bits(u64::from_be_bytes(word(at + 8)?));
            weights.insert(i64::from_be_bytes(word(at)?), weight);
        }
        Ok(Self {
            weights,
            minute: (minute != i64::MIN).then_some(minute),
        })
    }
}

/// The first minute kept when the clock stands at `minute`: the clock's
/// minute and the 1,439 before it, what a 24-hour query ending there reads.
pub fn cutoff(minute: Option<i64>) -> i64 {
    minute.map_or(i64::MIN, |m| m.saturating_sub(RETENTION_MINUTES - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const START: i64 = 27_433_440; // 2022-03-01T00:00 in minutes
    const YEAR_9999: i64 = 253_402_300_799_999 / 60_000;
    const YEAR_0001: i64 = -62_135_596_800_000 / 60_000;

    /// `minutes` minutes of the replay stream's density: 1,000 tags a second,
    /// observed in batches of `batch` tags.
    fn stream(clock: &mut EventClock, from: i64, minutes: i64, batch: u64) {
        for minute in from..from + minutes {
            for _ in 0..60_000 / batch {
                clock.observe([(minute, batch)]);
            }
        }
    }

    #[test]
    fn follows_the_stream_a_few_seconds_behind() {
        let mut clock = EventClock::default();
        clock.observe([(START, 9_000)]);
        assert_eq!(clock.minute(), None, "not enough evidence yet");
        clock.observe([(START, 1_500)]);
        assert_eq!(clock.minute(), Some(START));
        stream(&mut clock, START, 90, 1_000);
        assert_eq!(clock.minute(), Some(START + 89));
        assert_eq!(clock.cutoff(), START + 89 - 1_439);
    }

    #[test]
    fn outliers_alone_or_in_bursts_do_not_move_it() {
        let mut clock = EventClock::default();
        stream(&mut clock, START, 10, 500);
        let before = clock.minute();
        for burst in [1, 3, 100, 2_000] {
            clock.observe([(YEAR_9999, burst), (YEAR_0001, burst)]);
            clock.observe([(START + 10_000_000, burst)]);
            assert_eq!(clock.minute(), before, "burst of {burst}");
        }
        // The stream goes on, and the clock with it.
        stream(&mut clock, START + 10, 5, 500);
        assert_eq!(clock.minute(), Some(START + 14));
    }

    #[test]
    fn a_trickle_of_outliers_fades_instead_of_piling_up() {
        let mut clock = EventClock::default();
        // Five hours of stream with one outlier in every 50 tags (2 %).
        for minute in START..START + 300 {
            for _ in 0..60 {
                clock.observe([(minute, 980), (YEAR_9999, 20)]);
            }
        }
        assert_eq!(clock.minute(), Some(START + 299));
    }

    #[test]
    fn many_distinct_outlier_minutes_stay_bounded() {
        let mut clock = EventClock::default();
        stream(&mut clock, START, 2, 1_000);
        for i in 0..5_000 {
            clock.observe([(START + 1_000_000 + i * 7, 1)]);
        }
        assert!(clock.weights.len() <= MAX_MINUTES);
        assert_eq!(clock.minute(), Some(START + 1));
    }

    #[test]
    fn round_trips_through_bytes() {
        let mut clock = EventClock::default();
        assert_eq!(EventClock::decode(&clock.encode()).unwrap(), clock);
        stream(&mut clock, START, 3, 700);
        clock.observe([(YEAR_9999, 3)]);
        assert_eq!(EventClock::decode(&clock.encode()).unwrap(), clock);
        assert!(EventClock::decode(&[]).is_err());
        assert!(EventClock::decode(&clock.encode()[..20]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a minority of outliers does, the clock never passes the
        /// newest honest minute, and never goes back.
        #[test]
        fn never_runs_ahead_of_the_honest_stream(
            batches in proptest::collection::vec(
                (0i64..120, 1u64..2_000, proptest::option::of(any::<i64>())),
                1..200,
            )
        ) {
            let mut clock = EventClock::default();
            let mut newest_honest = i64::MIN;
            let mut last = None;
            for (minute, tags, outlier) in batches {
                let mut batch = vec![(START + minute, tags)];
                newest_honest = newest_honest.max(START + minute);
                // Outliers anywhere in time, one in twenty tags.
                if let Some(outlier) = outlier {
                    batch.push((outlier, tags / 20));
                }
                clock.observe(batch);
                if let Some(m) = clock.minute() {
                    prop_assert!(m <= newest_honest, "{m} > {newest_honest}");
                }
                prop_assert!(clock.minute() >= last);
                last = clock.minute();
            }
        }
    }
}
