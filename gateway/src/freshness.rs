//! Shedding tags when the workers fall behind.
//!
//! A 204 promises that the tag shows in profiles within 10 s and in the
//! statistics within 60 s (in the all-in-one profiles are written with the
//! tag; statistics still go through the worker). When the workers cannot
//! keep that promise, accepting more tags only makes every later answer
//! wrong; refusing them with 503 and `Retry-After` tells the clients to back
//! off while the workers catch up.
//!
//! How far behind the workers are is measured in time, per partition: the
//! writer notes the end of each partition as it appends, a sampler keeps
//! when each end was reached, and the aggregate store's watermark (where
//! the workers stand) is looked up in those samples. The oldest record not
//! applied yet was appended no later than the first sample past the
//! watermark, so that sample's age bounds the lag from above (by at most a
//! sampling period).
//!
//! Refusing only once the lag passes the limit is too late when the workers
//! have stopped altogether (restarting, or waiting for their partitions):
//! every tag accepted in the meantime misses its window whatever comes
//! next. So tags are also refused as soon as the workers have applied
//! nothing for a quarter of the limit while tags wait for them (2 s where
//! the workers build profiles; in the all-in-one, whose profiles are
//! written with the tag, 11 s is early enough for the statistics and
//! spares a loaded machine's hiccups).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use allezon_api::Aggregates;
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1 as pb;
use event_log::Position;

/// Partitions followed; a topic with more is not measured past this.
const MAX_PARTITIONS: usize = 1024;
/// How often the partitions' ends are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// How often the workers' watermarks are read.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// What the gateway sheds on, from the writer's point of view.
pub struct Freshness {
    /// Per partition, one past the highest offset appended (0: none).
    ends: Box<[AtomicU64]>,
    shedding: AtomicBool,
    /// Shed above this lag; accept again below half of it.
    limit: Duration,
    /// Shed when tags wait and no watermark has moved for this long: the
    /// workers have stopped (running workers apply a batch every few
    /// hundred milliseconds).
    stall: Duration,
    lag_seconds: AtomicU64,
}

impl Freshness {
    /// Sheds past `limit` (zero: never; the lag is still measured).
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            ends: (0..MAX_PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            shedding: AtomicBool::new(false),
            limit,
            stall: limit / 4,
            lag_seconds: AtomicU64::new(0),
        })
    }

    /// Notes a durable append (one relaxed atomic per tag).
    pub fn appended(&self, position: Position) {
        if let Some(end) = usize::try_from(position.partition)
            .ok()
            .and_then(|p| self.ends.get(p))
        {
            end.fetch_max(position.offset + 1, Ordering::Relaxed);
        }
    }

    /// Whether tags are refused now because the workers are behind.
    pub fn shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// The last measured lag, whole seconds.
    pub fn lag_seconds(&self) -> u64 {
        self.lag_seconds.load(Ordering::Relaxed)
    }

    /// Samples and checks until `shutdown`.
    pub fn spawn_watch(self: &Arc<Self>, aggregates: Arc<dyn Aggregates>, shutdown: Shutdown) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut lag = Lag::default();
            let mut sample = tokio::time::interval(SAMPLE_EVERY);
            let mut last_check = Instant::now();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = sample.tick() => {}
                }
                let now = Instant::now();
                lag.sample(&me.ends, now);
                if now.duration_since(last_check) < CHECK_EVERY {
                    continue;
                }
                last_check = now;
                let partitions = lag.partitions();
                if partitions.is_empty() {
                    continue;
                }
                // A store that does not answer leaves the last watermarks in
                // place: they only grow, so the lag computed from them still
                // bounds the real one, and grows while the store is down.
                if let Ok(marks) = aggregates
                    .get_watermarks(pb::GetWatermarksRequest {
                        partitions: partitions.clone(),
                    })
                    .await
                {
                    let rebased = lag.watermarks(&partitions, &marks.next_offsets, Instant::now());
                    for (partition, mark) in rebased {
                        // The log restarted: its ends start again too.
                        if let Some(end) = me.ends.get(partition as usize) {
                            end.store(mark, Ordering::Relaxed);
                        }
                    }
                }
                let now = Instant::now();
                let behind = lag.behind(now);
                if behind.is_zero() {
                    lag.progress = now;
                }
                let stalled = behind > me.stall && now.duration_since(lag.progress) > me.stall;
                me.update(behind, stalled);
            }
        });
    }

    fn update(&self, behind: Duration, stalled: bool) {
        self.lag_seconds.store(behind.as_secs(), Ordering::Relaxed);
        allezon_core::metrics::metrics()
            .http
            .ingest_lag
            .set(behind.as_secs_f64());
        if self.limit.is_zero() {
            return;
        }
        let was = self.shedding();
        let now = if was {
            stalled || behind > self.limit / 2
        } else {
            stalled || behind > self.limit
        };
        if now != was {
            if now {
                tracing::warn!(?behind, stalled, limit = ?self.limit, "the workers are behind; refusing tags until they catch up");
            } else {
                tracing::info!(?behind, "the workers caught up; accepting tags again");
            }
            self.shedding.store(now, Ordering::Relaxed);
        }
    }
}

/// The sampler's memory: per partition, when its end passed each sampled
/// offset, and where the workers stand.
struct Lag {
    /// Per partition (by index), (end, when first seen), oldest first.
    samples: Vec<VecDeque<(u64, Instant)>>,
    watermarks: Vec<u64>,
    /// When a watermark last moved, or nothing waited.
    progress: Instant,
}

impl Default for Lag {
    fn default() -> Self {
        Self {
            samples: Vec::new(),
            watermarks: Vec::new(),
            progress: Instant::now(),
        }
    }
}

/// Samples kept per partition: a few minutes, far past any limit.
const MAX_SAMPLES: usize = 1200;

impl Lag {
    fn sample(&mut self, ends: &[AtomicU64], now: Instant) {
        for (partition, end) in ends.iter().enumerate() {
            let end = end.load(Ordering::Relaxed);
            if end == 0 {
                continue;
            }
            if self.samples.len() <= partition {
                self.samples.resize_with(partition + 1, VecDeque::new);
                self.watermarks.resize(partition + 1, 0);
            }
            let samples = &mut self.samples[partition];
            if samples.back().is_none_or(|&(last, _)| end > last) {
                samples.push_back((end, now));
            }
            // Samples the workers passed tell nothing more; one is kept.
            let watermark = self.watermarks[partition];
            while samples.len() > 1 && samples[1].0 <= watermark {
                samples.pop_front();
            }
            if samples.len() > MAX_SAMPLES {
                samples.pop_front();
            }
        }
    }

    fn partitions(&self) -> Vec<u32> {
        (0..self.samples.len())
            .filter(|&p| !self.samples[p].is_empty())
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    }

    /// Takes the watermarks read at `now`. Returns the partitions whose
    /// watermark went back, with it: their log restarted below it and the
    /// workers count it again from its start (a rebase), so what was
    /// sampled of the old log means nothing.
    fn watermarks(&mut self, partitions: &[u32], marks: &[u64], now: Instant) -> Vec<(u32, u64)> {
        let mut rebased = Vec::new();
        for (&partition, &mark) in partitions.iter().zip(marks) {
            if let Some(slot) = self.watermarks.get_mut(partition as usize) {
                if mark < *slot {
                    rebased.push((partition, mark));
                    if let Some(samples) = self.samples.get_mut(partition as usize) {
                        samples.clear();
                    }
                } else if mark > *slot {
                    self.progress = now;
                }
                *slot = mark;
            }
        }
        rebased
    }

    /// The largest lag over the partitions: the age of the first sample
    /// whose end is past the watermark (records up to it are not applied).
    fn behind(&self, now: Instant) -> Duration {
        self.samples
            .iter()
            .zip(&self.watermarks)
            .filter_map(|(samples, &watermark)| {
                samples
                    .iter()
                    .find(|&&(end, _)| end > watermark)
                    .map(|&(_, when)| now.duration_since(when))
            })
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(values: &[u64]) -> Vec<AtomicU64> {
        values.iter().map(|&v| AtomicU64::new(v)).collect()
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unapplied_end() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut lag = Lag::default();
        lag.sample(&ends(&[10, 0, 5]), at(0));
        lag.sample(&ends(&[20, 0, 5]), at(1));
        lag.sample(&ends(&[30, 0, 5]), at(2));
        assert_eq!(lag.partitions(), vec![0, 2]);
        // Nothing applied: the first ends are 3 s old.
        assert_eq!(lag.behind(at(3)), Duration::from_secs(3));
        // Partition 0 applied up to 20, partition 2 all: only 30 is left,
        // reached at 2 s.
        lag.watermarks(&[0, 2], &[20, 5], at(3));
        assert_eq!(lag.behind(at(3)), Duration::from_secs(1));
        // Everything applied: no lag, whatever the time.
        lag.watermarks(&[0, 2], &[30, 5], at(3));
        assert_eq!(lag.behind(at(100)), Duration::ZERO);
        // A watermark that goes back is a log that restarted: what was
        // sampled of the old one is dropped, and it is no progress.
        assert_eq!(lag.watermarks(&[0], &[10], at(4)), vec![(0, 10)]);
        assert_eq!(
            lag.progress,
            at(3),
            "a watermark that went back is no progress"
        );
        assert_eq!(lag.behind(at(100)), Duration::ZERO);
        lag.sample(&ends(&[15, 0, 5]), at(5));
        assert_eq!(lag.behind(at(6)), Duration::from_secs(1));
    }

    #[test]
    fn samples_the_workers_passed_are_dropped() {
        let start = Instant::now();
        let mut lag = Lag::default();
        for s in 0..100u64 {
            lag.sample(&ends(&[s + 1]), start + Duration::from_secs(s));
        }
        lag.watermarks(&[0], &[90], start);
        lag.sample(&ends(&[100]), start + Duration::from_secs(100));
        assert!(lag.samples[0].len() <= 11, "{}", lag.samples[0].len());
        assert_eq!(
            lag.behind(start + Duration::from_secs(100)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn sheds_above_the_limit_and_accepts_again_below_half() {
        let freshness = Freshness::new(Duration::from_secs(10));
        freshness.update(Duration::from_secs(9), false);
        assert!(!freshness.shedding());
        freshness.update(Duration::from_secs(11), false);
        assert!(freshness.shedding());
        freshness.update(Duration::from_secs(6), false);
        assert!(freshness.shedding());
        freshness.update(Duration::from_secs(4), false);
        assert!(!freshness.shedding());
        // Stopped workers: refused well before the limit, until they move.
        freshness.update(Duration::from_secs(3), true);
        assert!(freshness.shedding());
        freshness.update(Duration::from_secs(3), false);
        assert!(!freshness.shedding());
    }
}
