//! Per-minute aggregate cells: their keys, the packed `count << 48 | sum`
//! form, and the fold of tags into all 8 filter combinations.
//!
//! The packed form holds 16 bits of count and 48 bits of non-negative sum. It
//! is the compact common case; anything that does not fit (a negative price,
//! more than 65,535 tags, a sum of 2^48 or more) travels and is stored in the
//! wide form instead, so a cell never wraps.

use crate::Action;

pub const COUNT_BITS: u32 = 16;
pub const SUM_BITS: u32 = 48;
const SUM_MASK: u64 = (1 << SUM_BITS) - 1;

/// Ids of a tag's filter values; 0 never names a value, it means "any".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CellKey {
    pub minute: i64,
    pub action: Action,
    pub origin: u32,
    pub brand: u32,
    pub category: u32,
}

/// COUNT and SUM(price) of one cell, exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub sum: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("aggregate cell overflow")]
pub struct Overflow;

impl Totals {
    pub fn checked_add(self, other: Totals) -> Result<Totals, Overflow> {
        Ok(Totals {
            count: self.count.checked_add(other.count).ok_or(Overflow)?,
            sum: self.sum.checked_add(other.sum).ok_or(Overflow)?,
        })
    }

    /// The packed form, when the totals fit it.
    pub fn pack(self) -> Option<u64> {
        let sum = u64::try_from(self.sum).ok()?;
        (self.count < (1 << COUNT_BITS) && sum <= SUM_MASK).then_some(self.count << SUM_BITS | sum)
    }

    pub fn unpack(packed: u64) -> Totals {
        Totals {
            count: packed >> SUM_BITS,
            sum: (packed & SUM_MASK) as i64,
        }
    }
}

/// The 8 filter combinations a tag counts towards: every subset of
/// (origin, brand, category), absent filters as 0.
pub fn combinations(origin: u32, brand: u32, category: u32) -> [(u32, u32, u32); 8] {
    let mut out = [(0, 0, 0); 8];
    for (mask, slot) in out.iter_mut().enumerate() {
        *slot = (
            if mask & 1 != 0 { origin } else { 0 },
            if mask & 2 != 0 { brand } else { 0 },
            if mask & 4 != 0 { category } else { 0 },
        );
    }
    out
}

/// A fold of tags into cells, ready to send as deltas.
#[derive(Debug, Default)]
pub struct Fold {
    /// FxHash: eight lookups per tag on small keys we make ourselves, where
    /// SipHash's defence against chosen keys buys nothing.
    cells: rustc_hash::FxHashMap<CellKey, Totals>,
}

/// The part of a tag that aggregates look at, with ids resolved.
#[derive(Debug, Clone, Copy)]
pub struct FoldInput {
    pub time_ms: i64,
    pub action: Action,
    pub origin: u32,
    pub brand: u32,
    pub category: u32,
    pub price: i32,
}

impl Fold {
    pub fn add(&mut self, tag: FoldInput) -> Result<(), Overflow> {
        let minute = tag.time_ms.div_euclid(crate::time::MS_PER_MINUTE);
        let one = Totals {
            count: 1,
            sum: i64::from(tag.price),
        };
        for (origin, brand, category) in combinations(tag.origin, tag.brand, tag.category) {
            let key = CellKey {
                minute,
                action: tag.action,
                origin,
                brand,
                category,
            };
            let cell = self.cells.entry(key).or_default();
            *cell = cell.checked_add(one)?;
        }
        Ok(())
    }

    pub fn into_cells(self) -> impl Iterator<Item = (CellKey, Totals)> {
        self.cells.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn packing_refuses_what_does_not_fit() {
        assert_eq!(
            Totals {
                count: 65_535,
                sum: (1 << 48) - 1
            }
            .pack(),
            Some(u64::MAX)
        );
        assert_eq!(
            Totals {
                count: 65_536,
                sum: 0
            }
            .pack(),
            None
        );
        assert_eq!(
            Totals {
                count: 1,
                sum: 1 << 48
            }
            .pack(),
            None
        );
        assert_eq!(Totals { count: 1, sum: -1 }.pack(), None);
    }

    proptest! {
        #[test]
        fn packing_round_trips_when_it_fits(count in any::<u64>(), sum in any::<i64>()) {
            let totals = Totals { count, sum };
            match totals.pack() {
                Some(packed) => prop_assert_eq!(Totals::unpack(packed), totals),
                None => prop_assert!(count >= 1 << 16 || !(0..1 << 48).contains(&sum)),
            }
        }

        /// The fold against a naive model: for every cell, scan all tags.
        #[test]
        fn fold_matches_a_naive_model(
            tags in proptest::collection::vec(
                (0i64..300_000, any::<bool>(), 1u32..4, 1u32..4, 1u32..3, any::<i32>()),
                0..200,
            )
        ) {
            let inputs: Vec<FoldInput> = tags
                .iter()
                .map(|&(time_ms, buy, origin, brand, category, price)| FoldInput {
                    time_ms,
                    action: if buy { Action::Buy } else { Action::View },
                    origin,
                    brand,
                    category,
                    price,
                })
                .collect();
            let mut fold = Fold::default();
            for input in &inputs {
                fold.add(*input).unwrap();
            }
            let cells: std::collections::HashMap<CellKey, Totals> = fold.into_cells().collect();
            for minute in 0..5 {
                for action in Action::ALL {
                    for origin in 0..4 {
                        for brand in 0..4 {
                            for category in 0..3 {
                                let mut want = Totals::default();
                                for t in &inputs {
                                    let matches = t.time_ms / 60_000 == minute
                                        && t.action == action
                                        && (origin == 0 || t.origin == origin)
                                        && (brand == 0 || t.brand == brand)
                                        && (category == 0 || t.category == category);
                                    if matches {
                                        want.count += 1;
                                        want.sum += i64::from(t.price);
                                    }
                                }
                                let key = CellKey { minute, action, origin, brand, category };
                                prop_assert_eq!(cells.get(&key).copied().unwrap_or_default(), want);
                            }
                        }
                    }
                }
            }
        }

        /// Adding packed deltas one by one, switching to wide when needed,
        /// gives the exact totals however large or negative they get.
        #[test]
        fn cells_never_wrap(deltas in proptest::collection::vec((1u64..70_000, any::<i32>()), 1..50)) {
            let mut cell = Totals::default();
            let (mut count, mut sum) = (0u128, 0i128);
            for (n, price) in deltas {
                let delta = Totals { count: n, sum: i64::from(price) * n as i64 };
                let delta = delta.pack().map_or(delta, Totals::unpack);
                cell = cell.checked_add(delta).unwrap();
                count += u128::from(n);
                sum += i128::from(price) * n as i128;
            }
            prop_assert_eq!(u128::from(cell.count), count);
            prop_assert_eq!(i128::from(cell.sum), sum);
        }
    }
}
