//! After a run: every minute of every (action, filter combination) that the
//! stream touched, asked through the public API and compared with the model.
//!
//! Sampled aggregate queries see a few hundred cells of a run; a store that
//! loses one tag in one minute slips through them. This pass asks every
//! combination of origin, brand and category filters (none, one, two or all
//! three) that some acknowledged tag fell into, over every minute of the run,
//! 10 minutes per query. Minutes touched by a tag whose fate is unknown (no
//! answer, or an error) are skipped and reported, like the sampled queries
//! skip them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Semaphore;

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
    /// Minutes (since the stream's start) not compared: a tag in them had an
    /// unknown fate.
    pub skipped_minutes: Vec<u64>,
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

/// Every touched combination with its per-minute `(count, sum)` for the
/// acknowledged tags `0..tags`, sorted by combination then minute.
fn expected(stream: &Stream, tags: u64) -> Vec<(Combo, u64, u64, i64)> {
    let mut cells = Vec::with_capacity(tags as usize * 8);
    for n in 0..tags {
        let t = stream.tag(n);
        let minute = n / TAGS_PER_MINUTE;
        for mask in 0..8u8 {
            let combo = Combo {
                buy: t.buy,
                origin: (mask & 1 != 0).then_some(t.origin),
                brand: (mask & 2 != 0).then_some(t.brand),
                category: (mask & 4 != 0).then_some(t.category),
            };
            cells.push((combo, minute, 1u64, i64::from(t.price)));
        }
    }
    cells.sort_unstable_by_key(|(combo, minute, _, _)| (*combo, *minute));
    let mut merged: Vec<(Combo, u64, u64, i64)> = Vec::new();
    for cell in cells {
        match merged.last_mut() {
            Some(last) if (last.0, last.1) == (cell.0, cell.1) => {
                last.2 += cell.2;
                last.3 += cell.3;
            }
            _ => merged.push(cell),
        }
    }
    merged
}

/// One query: a combination over `[from, to)` minutes and what each minute
/// must hold (`None`: skipped).
struct Ask {
    check: AggregateCheck,
    want: Vec<Option<(u64, i64)>>,
}

fn asks(cells: &[(Combo, u64, u64, i64)], minutes: u64, skipped: &HashSet<u64>) -> (u64, Vec<Ask>) {
    let mut out = Vec::new();
    let mut combinations = 0;
    for group in cells.chunk_by(|a, b| a.0 == b.0) {
        combinations += 1;
        let combo = group[0].0;
        for from in (0..minutes).step_by(MINUTES_PER_QUERY as usize) {
            let to = (from + MINUTES_PER_QUERY).min(minutes);
            let want = (from..to)
                .map(|m| {
                    if skipped.contains(&m) {
                        return None;
                    }
                    let found = group.iter().find(|c| c.1 == m);
                    Some(found.map_or((0, 0), |c| (c.2, c.3)))
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
        let Some((count, sum)) = want else { continue };
        let cols = row.as_array().map(Vec::as_slice).unwrap_or_default();
        let got = match cols {
            [.., c, s] => (c.as_str(), s.as_str()),
            _ => (None, None),
        };
        let (want_count, want_sum) = (count.to_string(), sum.to_string());
        if got != (Some(want_count.as_str()), Some(want_sum.as_str())) {
            return Err(format!(
                "minute {}: count {:?} sum {:?}, expected {want_count} and {want_sum}",
                ask.check.from_minute + i as u64,
                got.0,
                got.1
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
    skipped_minutes: HashSet<u64>,
    max_in_flight: usize,
    settle_by: Instant,
) -> EveryCellReport {
    let started = Instant::now();
    let minutes = tags.div_ceil(TAGS_PER_MINUTE);
    let cells = expected(&stream, tags);
    let (combinations, mut pending) = asks(&cells, minutes, &skipped_minutes);
    drop(cells);
    let mut report = EveryCellReport {
        combinations,
        queries: 0,
        cells: 0,
        wrong: 0,
        errors: 0,
        skipped_minutes: {
            let mut s: Vec<u64> = skipped_minutes.into_iter().collect();
            s.sort_unstable();
            s
        },
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

    #[test]
    fn every_touched_combination_is_asked_once_per_ten_minutes() {
        let stream = Stream::new(3);
        let tags = 2 * TAGS_PER_MINUTE + 10;
        let cells = expected(&stream, tags);
        // Each tag lands in 8 cells; their counts add up.
        assert_eq!(cells.iter().map(|c| c.2).sum::<u64>(), 8 * tags);
        let unfiltered: u64 = cells
            .iter()
            .filter(|c| c.0.origin.is_none() && c.0.brand.is_none() && c.0.category.is_none())
            .map(|c| c.2)
            .sum();
        assert_eq!(unfiltered, tags);
        let (combinations, asks) = asks(&cells, 3, &HashSet::from([1]));
        assert_eq!(asks.len() as u64, combinations);
        for ask in &asks {
            assert_eq!(ask.want.len(), 3);
            assert_eq!(ask.want[1], None, "skipped minute");
        }
    }

    #[test]
    fn a_single_lost_tag_is_caught() {
        let ask = Ask {
            check: AggregateCheck {
                buy: false,
                from_minute: 0,
                to_minute: 2,
                aggregates: vec![true, false],
                origin: None,
                brand: None,
                category: None,
            },
            want: vec![Some((48_030, 2_389_986_013)), None],
        };
        let row = |c: &str, s: &str| serde_json::json!(["t", "VIEW", c, s]);
        let right = serde_json::json!({"rows": [row("48030", "2389986013"), row("1", "1")]});
        assert_eq!(compare(&ask, &right), Ok(1));
        let lost = serde_json::json!({"rows": [row("48026", "2389837107"), row("1", "1")]});
        assert!(compare(&ask, &lost).unwrap_err().contains("minute 0"));
        let short = serde_json::json!({"rows": [row("48030", "2389986013")]});
        assert!(compare(&ask, &short).is_err());
    }
}
