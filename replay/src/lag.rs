//! How late the tool's own timers fire: a client that cannot run on time
//! times out answers that came on time. On a machine it shares with the
//! server, a "no answer within 200 ms" may be the tool's stall as well as
//! the server's; this says which.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How often the watcher asks to wake up.
const TICK: Duration = Duration::from_millis(10);
/// Lateness reported as a stall.
pub const STALL: Duration = Duration::from_millis(50);

/// The tool's stalls over a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stalls {
    /// Wake-ups late by [`STALL`] or more.
    pub over_50ms: u64,
    /// The wake-up that came latest: how late, and when (seconds into the
    /// run).
    pub max_ms: f64,
    pub max_at_s: f64,
}

impl Stalls {
    fn observe(&mut self, late: Duration, at: Duration) {
        if late >= STALL {
            self.over_50ms += 1;
        }
        let ms = late.as_secs_f64() * 1e3;
        if ms > self.max_ms {
            self.max_ms = ms;
            self.max_at_s = at.as_secs_f64();
        }
    }
}

/// Watches until dropped.
pub struct Watch {
    stalls: Arc<Mutex<Stalls>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts watching on the current runtime; `started` is the run's
    /// start, for the times reported.
    pub fn start(started: Instant) -> Self {
        let stalls = Arc::new(Mutex::new(Stalls::default()));
        let seen = Arc::clone(&stalls);
        let task = tokio::spawn(async move {
            loop {
                let due = Instant::now() + TICK;
                tokio::time::sleep_until(due.into()).await;
                let now = Instant::now();
                seen.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .observe(now.saturating_duration_since(due), now - started);
            }
        });
        Self { stalls, task }
    }

    pub fn stalls(&self) -> Stalls {
        self.stalls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_stalls_and_keeps_the_worst() {
        let mut s = Stalls::default();
        s.observe(Duration::from_millis(1), Duration::from_secs(1));
        s.observe(Duration::from_millis(70), Duration::from_secs(2));
        s.observe(Duration::from_millis(250), Duration::from_secs(3));
        s.observe(Duration::from_millis(49), Duration::from_secs(4));
        assert_eq!(s.over_50ms, 2);
        assert_eq!(s.max_ms, 250.0);
        assert_eq!(s.max_at_s, 3.0);
    }

    /// A runtime blocked for 120 ms shows as one stall of about that.
    #[test]
    fn a_blocked_runtime_is_seen() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap_or_else(|err| panic!("{err}"));
        let stalls = runtime.block_on(async {
            let watch = Watch::start(Instant::now());
            tokio::time::sleep(Duration::from_millis(30)).await;
            std::thread::sleep(Duration::from_millis(120));
            tokio::time::sleep(Duration::from_millis(30)).await;
            watch.stalls()
        });
        assert!(stalls.over_50ms >= 1, "{stalls:?}");
        assert!(stalls.max_ms >= 100.0, "{stalls:?}");
    }
}
