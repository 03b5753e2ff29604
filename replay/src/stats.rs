//! Counting outcomes and latencies per endpoint, and the JSON report.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Tags,
    Profiles,
    Aggregates,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [Endpoint::Tags, Endpoint::Profiles, Endpoint::Aggregates];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Tags => "user_tags",
            Endpoint::Profiles => "user_profiles",
            Endpoint::Aggregates => "aggregates",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Correct,
    Wrong,
    TimedOut,
    Error,
}

/// What one endpoint saw.
#[derive(Debug, Default, Clone)]
pub struct EndpointStats {
    pub correct: u64,
    pub wrong: u64,
    pub timed_out: u64,
    pub errors: u64,
    /// (seconds since the start, latency in microseconds) of every answer.
    pub samples: Vec<(f64, u64)>,
    /// The first few wrong answers, timeouts and errors, for the report.
    pub first_problems: Vec<String>,
}

const PROBLEMS_KEPT: u64 = 3;

impl EndpointStats {
    /// The three endpoints' stats (tags, profiles, aggregates), their
    /// latency samples allocated for the whole run: a vector that doubles
    /// copies every sample so far under the driver's lock.
    pub fn sized_for(tags: u64, profile_every: u64) -> [Self; 3] {
        let room = |n: u64| Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let profiles = tags.checked_div(profile_every).unwrap_or(0);
        [
            Self {
                samples: room(tags),
                ..Self::default()
            },
            Self {
                samples: room(profiles),
                ..Self::default()
            },
            Self::default(),
        ]
    }

    pub fn record(
        &mut self,
        outcome: Outcome,
        at: Duration,
        latency: Duration,
        problem: Option<String>,
    ) {
        match outcome {
            Outcome::Correct => self.correct += 1,
            Outcome::Wrong => self.wrong += 1,
            Outcome::TimedOut => self.timed_out += 1,
            Outcome::Error => self.errors += 1,
        }
        if outcome != Outcome::TimedOut {
            self.samples
                .push((at.as_secs_f64(), latency.as_micros() as u64));
        }
        // The first few of each kind, so that a flood of timeouts does not
        // hide the one wrong answer or error.
        let seen = match outcome {
            Outcome::Correct => 0,
            Outcome::Wrong => self.wrong,
            Outcome::TimedOut => self.timed_out,
            Outcome::Error => self.errors,
        };
        if let Some(problem) = problem
            && seen <= PROBLEMS_KEPT
        {
            self.first_problems.push(problem);
        }
    }

    pub fn total(&self) -> u64 {
        self.correct + self.wrong + self.timed_out + self.errors
    }

    /// Seconds from the start of the run to this endpoint's last answer.
    fn span(&self, elapsed: Duration) -> f64 {
        let last = self.samples.iter().map(|s| s.0).fold(0.0, f64::max);
        if last > 0.0 {
            last
        } else {
            elapsed.as_secs_f64()
        }
    }

    pub fn failed(&self) -> bool {
        self.wrong + self.timed_out + self.errors > 0
    }

    pub fn summary(&self, endpoint: Endpoint, elapsed: Duration) -> EndpointReport {
        let mut latencies: Vec<u64> = self.samples.iter().map(|s| s.1).collect();
        latencies.sort_unstable();
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i] as f64 / 1000.0
        };
        EndpointReport {
            endpoint: endpoint.name(),
            requests: self.total(),
            correct: self.correct,
            wrong: self.wrong,
            timed_out: self.timed_out,
            errors: self.errors,
            // Over the endpoint's own active span: the run's tail (waiting
            // out freshness for the last queries) would dilute the tag rate.
            rate_per_s: self.total() as f64 / self.span(elapsed).max(1e-9),
            latency_ms: Percentiles {
                p50: pct(0.50),
                p90: pct(0.90),
                p99: pct(0.99),
                p999: pct(0.999),
                max: pct(1.0),
            },
            first_problems: self.first_problems.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub endpoint: &'static str,
    pub requests: u64,
    pub correct: u64,
    pub wrong: u64,
    pub timed_out: u64,
    pub errors: u64,
    pub rate_per_s: f64,
    pub latency_ms: Percentiles,
    pub first_problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub seed: u64,
    pub tags: u64,
    pub target_rate: Option<f64>,
    /// Tags per second over the sending phase.
    pub achieved_rate: f64,
    /// Sent below the asked rate (by more than the tolerance).
    pub too_slow: bool,
    /// Tags sent in each second of the run.
    pub sent_per_second: Vec<u64>,
    pub elapsed_s: f64,
    pub passed: bool,
    pub endpoints: Vec<EndpointReport>,
    /// The pass over every touched cell, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub every_cell: Option<crate::every_cell::EveryCellReport>,
    /// How late the tool's own timers fired while it sent: a stall of the
    /// tool times out answers that came on time.
    pub tool_stalls: crate::lag::Stalls,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_outcomes() {
        let mut s = EndpointStats::default();
        for ms in 1..=100u64 {
            s.record(
                Outcome::Correct,
                Duration::ZERO,
                Duration::from_millis(ms),
                None,
            );
        }
        s.record(
            Outcome::Wrong,
            Duration::ZERO,
            Duration::from_millis(1),
            Some("x".into()),
        );
        s.record(
            Outcome::TimedOut,
            Duration::ZERO,
            Duration::from_secs(1),
            None,
        );
        let r = s.summary(Endpoint::Tags, Duration::from_secs(1));
        assert_eq!(
            (r.requests, r.correct, r.wrong, r.timed_out),
            (102, 100, 1, 1)
        );
        assert_eq!(r.latency_ms.p50, 50.0);
        assert_eq!(r.latency_ms.p99, 99.0);
        assert_eq!(r.first_problems, ["x"]);
        assert!(s.failed());
    }
}
