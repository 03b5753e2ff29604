//! Work that may wait runs on a thread of its own, below the requests.
//!
//! The ingest worker folds the log into statistics in bursts: it reads a
//! batch (up to 10,000 tags, lingering 100 ms), decodes and folds it, and
//! applies it to the cells. On the requests' runtime each burst held one of
//! the two workers for milliseconds, and requests queued behind it. On its
//! own thread at background priority (nice 10, as the engine's flushes and
//! compactions) the scheduler runs requests first, and the worker still
//! keeps up: it only loses the CPU when requests want it, and the gateway
//! refuses tags if it ever falls behind the freshness limit.
//!
//! Measured with `allezon-replay --tags 150000 --rate 10000 --profile-every
//! 10 --aggregate-every 0`, three alternating runs each (2026-12-03): the
//! tags' client-side p99 was 29.6, 38.0 and 38.2 ms with the worker on the
//! requests' runtime, and 11.1, 28.3 and 13.0 ms on its own thread.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use tokio::task::JoinHandle;

/// Runs `work` to completion on a new thread named `name`, on a runtime of
/// its own, at background priority. Tasks and blocking calls that `work`
/// starts stay on that runtime, and its blocking threads inherit the
/// priority. The returned handle, on the caller's runtime, ends with
/// `work`, and with its panic if it panics.
pub fn spawn<F>(name: &str, work: F) -> std::io::Result<JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(name)
        .build()?;
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            allezon_storage::priority::lower_this_thread();
            let ended = catch_unwind(AssertUnwindSafe(|| runtime.block_on(work)));
            // Its tasks and what they hold (store handles among them) are
            // dropped before the handle ends, not after the caller moved on.
            drop(runtime);
            let _ = done.send(ended);
        })?;
    Ok(tokio::spawn(async move {
        match ended.await {
            Ok(Ok(output)) => output,
            Ok(Err(panic)) => resume_unwind(panic),
            // The thread ended without a word: it could not have, short of
            // a panic while sending.
            Err(_) => panic!("the thread ended without finishing its work"),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handle_ends_with_the_work_and_with_its_panic() {
        let name = spawn("bgtest", async {
            tokio::task::spawn_blocking(|| std::thread::current().name().map(String::from))
                .await
                .ok()
                .flatten()
        })
        .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(name.await.ok().flatten().as_deref(), Some("bgtest"));

        let panicked = spawn("bgtest", async { panic!("boom") })
            .unwrap_or_else(|err| panic!("{err}"))
            .await
            .expect_err("the work panicked");
        let message = panicked.into_panic();
        assert_eq!(message.downcast_ref::<&str>(), Some(&"boom"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_background_priority() {
        let nice = spawn("bgtest", async {
            rustix::process::getpriority_process(None)
        })
        .unwrap_or_else(|err| panic!("{err}"))
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .unwrap_or_else(|err| panic!("{err}"));
        // Nice 10, or lower still if the tests already run lower.
        assert!(nice >= 10, "nice {nice}");
    }
}
