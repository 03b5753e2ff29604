//! Group commit: many writers, one fsync.
//!
//! Each writer takes a ticket *after* its write reached the journal buffer.
//! The syncer reads the highest ticket handed out, persists the journal, and
//! publishes that ticket as synced. Every ticket at or below it belongs to a
//! write that was in the buffer before the persist began, so it is durable.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use fjall::{Database, PersistMode};
use tokio::sync::watch;

use crate::StoreError;

#[derive(Debug, Clone, Copy, Default)]
struct Synced {
    ticket: u64,
    failed: bool,
}

struct Shared {
    issued: AtomicU64,
    syncs: AtomicU64,
    /// `true` when a writer waits for a sync (or when stopping).
    wake: Mutex<Wake>,
    cond: Condvar,
    synced: watch::Sender<Synced>,
    /// Shared with the store: set for good once an fsync failed.
    failed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Wake {
    pending: bool,
    stop: bool,
}

pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts the syncer thread; a process that cannot start it must not
    /// run, since every durable write would wait for it forever.
    pub(crate) fn start(db: Database, failed: Arc<AtomicBool>) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            issued: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            wake: Mutex::new(Wake::default()),
            cond: Condvar::new(),
            synced: watch::Sender::new(Synced::default()),
            failed,
        });
        let worker = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run_syncer(&worker, &db))
            .map_err(|source| StoreError::Thread {
                name: "group-commit",
                source,
            })?;
        Ok(Self {
            shared,
            syncer: Some(syncer),
        })
    }

    pub(crate) async fn sync(&self) -> Result<(), StoreError> {
        use tracing::Instrument as _;
        self.wait()
            .instrument(allezon_core::trace::span::internal("group_commit wait"))
            .await
    }

    async fn wait(&self) -> Result<(), StoreError> {
        let ticket = self.shared.issued.fetch_add(1, Ordering::AcqRel) + 1;
        let mut synced = self.shared.synced.subscribe();
        {
            let mut wake = self
                .shared
                .wake
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            wake.pending = true;
        }
        self.shared.cond.notify_one();
        let state = synced
            .wait_for(|s| s.ticket >= ticket || s.failed)
            .await
            .map_err(|_| StoreError::SyncFailed)?;
        if state.ticket >= ticket {
            Ok(())
        } else {
            Err(StoreError::SyncFailed)
        }
    }

    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared
            .wake
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.cond.notify_one();
        if let Some(syncer) = self.syncer.take() {
            // Joining releases the syncer's database handle, so the directory
            // can be reopened as soon as the store is dropped.
            let _ = syncer.join();
        }
    }
}

fn run_syncer(shared: &Shared, db: &Database) {
    loop {
        {
            let mut wake = shared.wake.lock().unwrap_or_else(PoisonError::into_inner);
            while !wake.pending && !wake.stop {
                wake = shared
                    .cond
                    .wait(wake)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if wake.stop && !wake.pending {
                return;
            }
            wake.pending = false;
        }
        let target = shared.issued.load(Ordering::Acquire);
        let syncing = std::time::Instant::now();
        let persisted = db.persist(PersistMode::SyncData);
        let stores = &allezon_core::metrics::metrics().stores;
        stores
            .fsync_duration
            .observe(syncing.elapsed().as_secs_f64());
        let covered = target.saturating_sub(shared.synced.borrow().ticket);
        stores.fsync_writers.observe(covered as f64);
        match persisted {
            Ok(()) => {
                shared.syncs.fetch_add(1, Ordering::Relaxed);
                shared
                    .synced
                    .send_modify(|s| s.ticket = s.ticket.max(target));
            }
            Err(err) => {
                // fjall poisons itself after a failed fsync: nothing written
                // since can be trusted, so every waiter, now and later, fails.
                tracing::error!(%err, "journal fsync failed");
                shared.failed.store(true, Ordering::Release);
                shared.synced.send_modify(|s| s.failed = true);
                return;
            }
        }
    }
}
