//! After a run: every minute of every (action, filter combination) that the
//! stream touched, asked through the public API and compared with the model.
//!
//! Sampled aggregate queries see a few hundred cells of a run; a store that
//! loses one tag in one minute slips through them. This pass asks every
//! combination of origin, brand and category filters (none, one, two or all
//! three) that some acknowledged tag fell into, over every minute of the run,
//! 10 minutes per query.
//!
//! Tags that were not acknowledged are judged by what their answer said
//! (see [`Fates`]): a refused tag must be in no cell, and a tag whose
//! answer never came may be in its cells or not. So each minute must hold
//! between the acknowledged tags' totals and those plus the unknown tags'
//! (exactly the acknowledged ones when none is unknown): an acknowledged
//! tag that was lost, or a refused one that was counted, shows. The sum's
//! bounds add the unknown tags' negative prices below and their positive
//! ones above.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::driver::Fates;
use crate::model::AggregateCheck;
use crate::stream::{Stream, TAGS_PER_MINUTE};

/// Minutes per query: the contract's longest plain range.
const MINUTES_PER_QUERY: u64 = 10;
/// Problems kept for the report.
const KEEP_PROBLEMS: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct EveryCellReport {
    /// (action, filter combination) pairs asked about.
    pub combinations: u64,
    pub queries: u64,
    /// Minute cells compared.
    pub cells: u64,
    /// Cells whose count or sum differed after the freshness window.
    pub wrong: u64,
    /// Queries that failed or timed out.
    pub errors: u64,
    pub first_problems: Vec<String>,
    pub elapsed_s: f64,
}

impl EveryCellReport {
    pub fn passed(&self) -> bool {
        self.wrong == 0 && self.errors == 0
    }
}

/// One filter combination of one action: `None` is an absent filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Combo {
    buy: bool,
    origin: Option<u16>,
    brand: Option<u16>,
    category: Option<u8>,
}

/// Totals a minute must lie between: the acknowledged tags' and, above
/// that, those of the tags whose fate is unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bounds {
    count: u64,
    sum: i64,
    unknown_count: u64,
    /// The unknown tags' negative prices, summed (at most 0).
    unknown_below: i64,
    /// Their positive prices, summed (at least 0).
    unknown_above: i64,
}

impl Bounds {
    fn holds(&self, count: u64, sum: i64) -> bool {
        (self.count..=self.count + self.unknown_count).contains(&count)
            && (self.sum + self.unknown_below..=self.sum + self.unknown_above).contains(&sum)
    }

    fn add(&mut self, other: &Bounds) {
        self.count += other.count;
        self.sum += other.sum;
        self.unknown_count += other.unknown_count;
        self.unknown_below += other.unknown_below;
        self.unknown_above += other.unknown_above;
    }
}

/// Every touched combination with its per-minute bounds for the tags
/// `0..tags` (refused ones left out), sorted by combination then minute.
fn expected(stream: &Stream, tags: u64, fates: &Fates) -> Vec<(Combo, u64, Bounds)> {
    let mut cells = Vec::with_capacity(tags as usize * 8);
    for n in 0..tags {
        if fates.refused.contains(&n) {
            continue;
        }
        let unknown = fates.unknown.contains(&n);
        let t = stream.tag(n);
        let minute = n / TAGS_PER_MINUTE;
        for mask in 0..8u8 {
            let combo = Combo {
                buy: t.buy,
                origin: (mask & 1 != 0).then_some(t.origin),
                brand: (mask & 2 != 0).then_some(t.brand),
                category: (mask & 4 != 0).then_some(t.category),
            };
            let price = i64::from(t.price);
            let bounds = if unknown {
                Bounds {
                    unknown_count: 1,
                    unknown_below: price.min(0),
                    unknown_above: price.max(0),
                    ..Bounds::default()
                }
            } else {
                Bounds {
                    count: 1,
                    sum: price,
                    ..Bounds::default()
                }
            };
            cells.push((combo, minute, bounds));
        }
    }
    cells.sort_unstable_by_key(|(combo, minute, _)| (*combo, *minute));
    let mut merged: Vec<(Combo, u64, Bounds)> = Vec::new();
    for cell in cells {
        match merged.last_mut() {
            Some(last) if (last.0, last.1) == (cell.0, cell.1) => last.2.add(&cell.2),
            _ => merged.push(cell),
        }
    }
    merged
}

/// One query: a combination over `[from, to)` minutes and what each minute
/// must hold.
struct Ask {
    check: AggregateCheck,
    want: Vec<Bounds>,
}

fn asks(cells: &[(Combo, u64, Bounds)], minutes: u64) -> (u64, Vec<Ask>) {
    let mut out = Vec::new();
    let mut combinations = 0;
    for group in cells.chunk_by(|a, b| a.0 == b.0) {
        combinations += 1;
        let combo = group[0].0;
        for from in (0..minutes).step_by(MINUTES_PER_QUERY as usize) {
            let to = (from + MINUTES_PER_QUERY).min(minutes);
            let want = (from..to)
                .map(|m| {
                    let found = group.iter().find(|c| c.1 == m);
                    found.map_or(Bounds::default(), |c| c.2)
                })
                .collect();
            out.push(Ask {
                check: AggregateCheck {
                    buy: combo.buy,
                    from_minute: from,
                    to_minute: to,
                    aggregates: vec![true, false],
                    origin: combo.origin,
                    brand: combo.brand,
                    category: combo.category,
                },
                want,
            });
        }
    }
    (combinations, out)
}

/// Compares one answer; `Err` names the first differing minute.
fn compare(ask: &Ask, answer: &Value) -> Result<u64, String> {
    let rows = answer["rows"]
        .as_array()
        .ok_or_else(|| format!("no rows in {answer}"))?;
    if rows.len() != ask.want.len() {
        return Err(format!("{} rows, expected {}", rows.len(), ask.want.len()));
    }
    let mut compared = 0;
    for (i, (row, want)) in rows.iter().zip(&ask.want).enumerate() {
        let cols = row.as_array().map(Vec::as_slice).unwrap_or_default();
        let got = match cols {
            [.., c, s] => (c.as_str(), s.as_str()),
            _ => (None, None),
        };
        let parsed = (
            got.0.and_then(|c| c.parse::<u64>().ok()),
            got.1.and_then(|s| s.parse::<i64>().ok()),
        );
        if !matches!(parsed, (Some(c), Some(s)) if want.holds(c, s)) {
            return Err(format!(
                "minute {}: count {:?} sum {:?}, expected {} and {}{}",
                ask.check.from_minute + i as u64,
                got.0,
                got.1,
                want.count,
                want.sum,
                if want.unknown_count > 0 {
                    format!(
                        " (with the unanswered tags: count up to {}, sum {} to {})",
                        want.count + want.unknown_count,
                        want.sum + want.unknown_below,
                        want.sum + want.unknown_above
                    )
                } else {
                    String::new()
                }
            ));
        }
        compared += 1;
    }
    Ok(compared)
}

/// Asks every touched cell of the acknowledged prefix `0..tags` of `stream`;
/// cells that differ are asked again until `settle_by` (the freshness window
/// after the last acknowledgement), and count as wrong only then.
pub async fn verify(
    client: &reqwest::Client,
    target: &str,
    stream: Stream,
    tags: u64,
    fates: &Fates,
    max_in_flight: usize,
    settle_by: Instant,
) -> EveryCellReport {
    let started = Instant::now();
    let minutes = tags.div_ceil(TAGS_PER_MINUTE);
    let cells = expected(&stream, tags, fates);
    let (combinations, mut pending) = asks(&cells, minutes);
    drop(cells);
    let mut report = EveryCellReport {
        combinations,
        queries: 0,
        cells: 0,
        wrong: 0,
        errors: 0,
        first_problems: Vec::new(),
        elapsed_s: 0.0,
    };
    let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
    loop {
        let last_try = Instant::now() >= settle_by;
        let mut tasks = tokio::task::JoinSet::new();
        for ask in pending.drain(..) {
            let permit = Arc::clone(&permits).acquire_owned().await;
            let (client, url) = (
                client.clone(),
                format!("{target}/aggregates?{}", ask.check.query_string()),
            );
            tasks.spawn(async move {
                let _permit = permit;
                let answer = async {
                    let response = client
                        .post(&url)
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = response.status();
                    let body: Value = response.json().await.map_err(|e| e.to_string())?;
                    if !status.is_success() {
                        return Err(format!("status {status}: {body}"));
                    }
                    Ok(body)
                }
                .await;
                (ask, url, answer)
            });
        }
        while let Some(done) = tasks.join_next().await {
            let Ok((ask, url, answer)) = done else {
                report.errors += 1;
                continue;
            };
            report.queries += 1;
            let problem = match answer {
                Ok(body) => match compare(&ask, &body) {
                    Ok(compared) => {
                        report.cells += compared;
                        continue;
                    }
                    // Maybe not counted yet: asked again below.
                    Err(_) if !last_try => {
                        pending.push(ask);
                        continue;
                    }
                    Err(diff) => {
                        report.wrong += 1;
                        diff
                    }
                },
                Err(err) => {
                    report.errors += 1;
                    err
                }
            };
            if report.first_problems.len() < KEEP_PROBLEMS {
                report.first_problems.push(format!("{url}: {problem}"));
            }
        }
        if pending.is_empty() {
            break;
        }
        // Give the stragglers time, then the final try.
        let wait = settle_by.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_touched_combination_is_asked_once_per_ten_minutes() {
        let stream = Stream::new(3);
        let tags = 2 * TAGS_PER_MINUTE + 10;
        let fates = Fates {
            refused: HashSet::from([5]),
            unknown: HashSet::from([6, 7]),
        };
        let cells = expected(&stream, tags, &fates);
        // Each tag lands in 8 cells; their counts add up, the refused one
        // nowhere and the unknown ones as maybes.
        assert_eq!(cells.iter().map(|c| c.2.count).sum::<u64>(), 8 * (tags - 3));
        assert_eq!(cells.iter().map(|c| c.2.unknown_count).sum::<u64>(), 8 * 2);
        let unfiltered: u64 = cells
            .iter()
            .filter(|c| c.0.origin.is_none() && c.0.brand.is_none() && c.0.category.is_none())
            .map(|c| c.2.count)
            .sum();
        assert_eq!(unfiltered, tags - 3);
        let (combinations, asks) = asks(&cells, 3);
        assert_eq!(asks.len() as u64, combinations);
        for ask in &asks {
            assert_eq!(ask.want.len(), 3);
        }
    }

    #[test]
    fn a_single_lost_tag_is_caught() {
        let ask = Ask {
            check: AggregateCheck {
                buy: false,
                from_minute: 0,
                to_minute: 1,
                aggregates: vec![true, false],
                origin: None,
                brand: None,
                category: None,
            },
            want: vec![Bounds {
                count: 48_030,
                sum: 2_389_986_013,
                ..Bounds::default()
            }],
        };
        let row = |c: &str, s: &str| serde_json::json!(["t", "VIEW", c, s]);
        let right = serde_json::json!({"rows": [row("48030", "2389986013")]});
        assert_eq!(compare(&ask, &right), Ok(1));
        let lost = serde_json::json!({"rows": [row("48026", "2389837107")]});
        assert!(compare(&ask, &lost).unwrap_err().contains("minute 0"));
        let long = serde_json::json!({"rows": [row("48030", "2389986013"), row("0", "0")]});
        assert!(compare(&ask, &long).is_err());
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;

    #[test]
    fn unanswered_tags_may_be_counted_acknowledged_ones_must_be() {
        // Two unknown tags, priced 30 and -5.
        let want = Bounds {
            count: 10,
            sum: 100,
            unknown_count: 2,
            unknown_below: -5,
            unknown_above: 30,
        };
        assert!(want.holds(10, 100));
        assert!(want.holds(12, 125));
        assert!(want.holds(11, 130));
        assert!(want.holds(11, 95));
        // One acknowledged tag lost, or one too many counted.
        assert!(!want.holds(9, 90));
        assert!(!want.holds(13, 140));
        assert!(!want.holds(11, 94));
    }
}
