//! The embedded storage engine behind every default backend: one fjall
//! database per data directory, with group commit.
//!
//! Writers put their data into keyspaces (memtable and journal buffer, no
//! disk wait), then await [`Store::sync`]. A single syncer thread turns
//! whatever has been written since the last sync into one `fdatasync` of the
//! journal and wakes every writer it covered. Under load, one fsync covers
//! hundreds of writes; idle, a lone write waits for exactly one fsync.

mod disk_metrics;
mod group_commit;
pub mod huge_pages;
pub mod priority;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// An atomic batch of writes across keyspaces (fjall calls it `OwnedWriteBatch`).
pub use fjall::OwnedWriteBatch as WriteBatch;
pub use fjall::{Keyspace, KeyspaceCreateOptions, PersistMode};
use thiserror::Error;

use group_commit::GroupCommit;

/// A keyspace's memtable is sealed and flushed to a table at this size
/// (fjall's default is 64 MiB). Sealing and flushing a 64 MiB memtable of
/// tags stalled requests for 100 to 300 ms, 200 ms timeouts included, once
/// a minute at 10,000 tags/s; 16 MiB ones make four times as many flushes,
/// each a quarter as long (`allezon-replay --seed 42 --tags 450000 --rate
/// 10000`, two runs each: 333 and 276 tags timed out at 64 MiB, 0 and 12
/// at 16).
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// Data blocks are compressed one at a time: larger ones give LZ4 more
/// repeats to find (fjall's default is 4 KiB).
const DATA_BLOCK_BYTES: u32 = 16 * 1024;

/// Most bytes of sealed journals kept before the memtables still holding
/// them are flushed, so the journals can go: fjall's minimum. Small
/// keyspaces (watermarks, commits, ids) fill their memtables slowly and
/// would otherwise hold every journal up to the cap: at 128 MiB the two
/// engines' journals held 226 MB 1.5 million tags into a 10-million-tag
/// replay (`allezon_store_journal_bytes`), at 64 MiB 64 MB at its end
/// (two moments of two runs, not a controlled comparison).
const JOURNALS_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The engine's flush and compaction threads (see [`Store::open`]).
fn engine_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .clamp(2, 4)
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("storage engine: {0}")]
    Engine(#[from] fjall::Error),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("journal sync failed; the store accepts no more writes")]
    SyncFailed,
    #[error("write refused: an injected fault")]
    Injected,
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        source: std::io::Error,
    },
}

/// A handle to one embedded database; clones share it.
#[derive(Clone)]
pub struct Store {
    db: fjall::Database,
    commit: Arc<GroupCommit>,
    /// Writes still to fail on purpose (see [`Store::inject_write_errors`]).
    faults: Arc<AtomicU64>,
    /// Set once a journal fsync failed: the engine poisons itself then, and
    /// no later write can be made durable (see [`Store::is_healthy`]).
    failed: Arc<AtomicBool>,
    /// The keyspaces opened, for the engine's gauges.
    opened: Arc<disk_metrics::Opened>,
}

impl Store {
    /// Opens (or creates) the database in `dir`, replaying its journal.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        // Before the engine's first allocations: see the module.
        huge_pages::disable();
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        // Writes stay in the journal's buffer until the syncer persists them:
        // one write(2) and one fdatasync(2) per group instead of per tag.
        //
        // Journals are kept to 64 MiB (fjall's default is 512): past that,
        // memtables are flushed and old journals deleted, so the journal's
        // share of the disk stays small next to the data.
        let db = fjall::Database::builder(dir)
            .manual_journal_persist(true)
            .max_journaling_size(JOURNALS_MAX_BYTES)
            // One per core up to 4 (fjall's default), but never one: with a
            // single worker,
            // fjall 3.1.13 deadlocks. Every write to a keyspace past its
            // memtable size queues a rotation request (`try_send` into a
            // queue of 1,000); while the worker compacts, writers fill the
            // queue, and the worker's next rotation then blocks on `send`
            // of its flush into that full queue, which only it drains. The
            // memtables and the journal then grow without end (a 10-million
            // tag replay: 2.6 GB resident, a 983 MB journal, gdb showing the
            // worker in `inner_rotate_memtable`'s `send`). More workers cost
            // a busy loop (worker 0 hands compaction messages back to the
            // queue while another compacts) but keep draining it. fjall's
            // own default is one on a one-core machine or container.
            .worker_threads(engine_workers())
            .open()?;
        // Its flush and compaction threads, started by the open.
        priority::lower_threads_named("fjall:");
        let failed = Arc::new(AtomicBool::new(false));
        let commit = Arc::new(GroupCommit::start(db.clone(), Arc::clone(&failed))?);
        Ok(Self {
            db,
            commit,
            faults: Arc::default(),
            failed,
            opened: disk_metrics::Opened::start(dir),
        })
    }

    /// Opens (or creates) a keyspace, the engine's column family. Data
    /// blocks are LZ4-compressed at every level (fjall leaves the first two
    /// uncompressed): tags repeat their field names and values, and cells
    /// their key prefixes, so this halves the disk for little CPU.
    pub fn keyspace(&self, name: &str) -> Result<Keyspace, StoreError> {
        let keyspace = self.db.keyspace(name, || {
            KeyspaceCreateOptions::default()
                .data_block_compression_policy(fjall::config::CompressionPolicy::all(
                    fjall::CompressionType::Lz4,
                ))
                .data_block_size_policy(fjall::config::BlockSizePolicy::all(DATA_BLOCK_BYTES))
                .max_memtable_size(MEMTABLE_BYTES)
        })?;
        self.opened.add(name, &keyspace);
        Ok(keyspace)
    }

    pub fn database(&self) -> &fjall::Database {
        &self.db
    }

    /// Makes the next `count` writes that ask [`Store::check_write`] fail,
    /// as a full or failing disk would. For fault tests: the engine itself
    /// offers no way to make a write fail on purpose.
    pub fn inject_write_errors(&self, count: u64) {
        self.faults.store(count, Ordering::Release);
    }

    /// Whether writes can still be made durable: false for good after a
    /// failed fsync. The readiness of the processes on this engine.
    pub fn is_healthy(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
    }

    /// Keeps the readiness condition `name` to [`Store::is_healthy`].
    pub fn watch(
        &self,
        name: &'static str,
        readiness: &allezon_core::admin::Readiness,
        shutdown: &allezon_core::shutdown::Shutdown,
    ) {
        let failed = Arc::clone(&self.failed);
        readiness.watch(
            name,
            std::time::Duration::from_secs(1),
            shutdown.clone(),
            move || {
                let healthy = !failed.load(Ordering::Acquire);
                async move { healthy }
            },
        );
    }

    /// Records a failed fsync made outside the group commit (the log's
    /// appender persists its own batches).
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }

    /// Fails if a write fault is injected; writers on the request path call
    /// it before they commit. One atomic load when no fault is set.
    pub fn check_write(&self) -> Result<(), StoreError> {
        let take = |n: u64| n.checked_sub(1);
        if self.faults.load(Ordering::Acquire) > 0
            && self
                .faults
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, take)
                .is_ok()
        {
            return Err(StoreError::Injected);
        }
        Ok(())
    }

    /// Returns once everything this task wrote before the call is durable.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.commit.sync().await
    }
}

/// Drops the tables of `keyspace` that lie wholly inside `range`, at once:
/// no tombstones, no journal write, nothing for compactions to merge
/// later. Keys in tables that straddle the range's ends, and in memtables,
/// stay; the caller deletes those if it must.
pub fn drop_tables<K: AsRef<[u8]>>(
    keyspace: &Keyspace,
    range: impl std::ops::RangeBounds<K>,
) -> Result<(), StoreError> {
    use fjall::AbstractTree as _;
    keyspace
        .tree
        .drop_range(range)
        .map_err(|err| StoreError::Engine(fjall::Error::from(err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn synced_writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let ks = store.keyspace("t").unwrap();
            let mut waits = Vec::new();
            for i in 0u32..100 {
                ks.insert(i.to_be_bytes(), b"v").unwrap();
                let store = store.clone();
                waits.push(tokio::spawn(async move { store.sync().await }));
            }
            for wait in waits {
                wait.await.unwrap().unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        let ks = store.keyspace("t").unwrap();
        assert_eq!(ks.len().unwrap(), 100);
    }

    #[tokio::test]
    async fn concurrent_writers_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ks = store.keyspace("t").unwrap();
        let tasks: Vec<_> = (0u32..500)
            .map(|i| {
                let (store, ks) = (store.clone(), ks.clone());
                tokio::spawn(async move {
                    ks.insert(i.to_be_bytes(), b"v").unwrap();
                    store.sync().await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // Every writer waited for a sync; grouping means far fewer syncs ran.
        let syncs = store.commit.syncs();
        assert!((1..500).contains(&syncs), "{syncs} syncs for 500 writers");
    }
}
