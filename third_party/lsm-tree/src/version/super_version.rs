// Copyright (c) 2024-present, fjall-rs
// This source code is licensed under both the Apache 2.0 and MIT License
// (found in the LICENSE-* files in the repository)

use crate::{
    memtable::Memtable,
    tree::sealed::SealedMemtables,
    version::{persist_version, Version},
    SeqNo, SequenceNumberCounter,
};
use std::{
    collections::VecDeque,
    ops::{Deref, DerefMut},
    path::Path,
    sync::{
        mpsc::{sync_channel, SyncSender, TrySendError},
        Arc, LockResult, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
    time::{Duration, Instant},
};

/// A super version is a point-in-time snapshot of memtables and a [`Version`] (list of disk files)
#[derive(Clone)]
pub struct SuperVersion {
    /// Active memtable that is being written to
    #[doc(hidden)]
    pub active_memtable: Arc<Memtable>,

    /// Frozen memtables that are being flushed
    pub(crate) sealed_memtables: Arc<SealedMemtables>,

    /// Current tree version
    pub(crate) version: Version,

    pub(crate) seqno: SeqNo,
}

/// The history of super versions, oldest first, and the ones
/// [`SuperVersions::maintenance`] took out of it since the lock was taken.
pub struct SuperVersions(VecDeque<SuperVersion>, Vec<SuperVersion>);

impl SuperVersions {
    pub fn new(version: Version) -> Self {
        Self::with_history(
            vec![SuperVersion {
                active_memtable: Arc::new(Memtable::new(0)),
                sealed_memtables: Arc::default(),
                version,
                seqno: 0,
            }]
            .into(),
        )
    }

    fn with_history(history: VecDeque<SuperVersion>) -> Self {
        Self(history, Vec::new())
    }

    pub fn memtable_size_sum(&self) -> u64 {
        let mut set = crate::HashMap::default();

        for super_version in &self.0 {
            set.entry(super_version.active_memtable.id)
                .and_modify(|bytes| *bytes += super_version.active_memtable.size())
                .or_insert_with(|| super_version.active_memtable.size());

            for sealed in super_version.sealed_memtables.iter() {
                set.entry(sealed.id)
                    .and_modify(|bytes| *bytes += sealed.size())
                    .or_insert_with(|| sealed.size());
            }
        }

        set.into_values().sum()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn free_list_len(&self) -> usize {
        self.len().saturating_sub(1)
    }

    pub fn maintenance(&mut self, folder: &Path, gc_watermark: SeqNo) -> crate::Result<()> {
        if gc_watermark == 0 {
            return Ok(());
        }

        if self.free_list_len() < 1 {
            return Ok(());
        }

        log::trace!("Running manifest GC with watermark={gc_watermark}");

        if let Some(hi_idx) = self.0.iter().rposition(|x| x.seqno < gc_watermark) {
            for _ in 0..hi_idx {
                let Some(head) = self.0.front() else {
                    break;
                };

                log::trace!(
                    "Removing version #{} (seqno={})",
                    head.version.id(),
                    head.seqno,
                );

                let path = folder.join(format!("v{}", head.version.id()));
                if path.try_exists()? {
                    crate::file::retry_transient_io(|| std::fs::remove_file(&path))?;
                }

                // Dropped by `VersionHistoryWriteGuard` after the lock.
                self.1.extend(self.0.pop_front());
            }
        }

        log::trace!("Manifest GC done, version length now {}", self.0.len());

        Ok(())
    }

    /// Modifies the level manifest atomically.
    ///
    /// The function accepts a transition function that receives the current version
    /// and returns a new version.
    ///
    /// The function takes care of persisting the version changes on disk.
    pub(crate) fn upgrade_version<F: FnOnce(&SuperVersion) -> crate::Result<SuperVersion>>(
        &mut self,
        tree_path: &Path,
        f: F,
        seqno: &SequenceNumberCounter,
        visible_seqno: &SequenceNumberCounter,
    ) -> crate::Result<()> {
        self.upgrade_version_with_seqno(tree_path, f, seqno.next(), visible_seqno)
    }

    /// Like `upgrade_version`, but takes an already-allocated sequence number.
    ///
    /// This is useful when the seqno must be coordinated with other operations
    /// (e.g., bulk ingestion where tables are recovered with the same seqno).
    pub(crate) fn upgrade_version_with_seqno<
        F: FnOnce(&SuperVersion) -> crate::Result<SuperVersion>,
    >(
        &mut self,
        tree_path: &Path,
        f: F,
        seqno: SeqNo,
        visible_seqno: &SequenceNumberCounter,
    ) -> crate::Result<()> {
        let mut next_version = f(&self.latest_version())?;
        next_version.seqno = seqno;
        log::trace!("Next version seqno={}", next_version.seqno);

        persist_version(tree_path, &next_version.version)?;
        self.append_version(next_version);

        visible_seqno.fetch_max(seqno + 1);

        Ok(())
    }

    pub fn append_version(&mut self, version: SuperVersion) {
        self.0.push_back(version);
    }

    pub fn replace_latest_version(&mut self, version: SuperVersion) {
        if self.0.pop_back().is_some() {
            self.0.push_back(version);
        }
    }

    pub fn latest_version(&self) -> SuperVersion {
        #[expect(clippy::expect_used, reason = "SuperVersion is expected to exist")]
        self.0
            .iter()
            .last()
            .cloned()
            .expect("should always have a SuperVersion")
    }

    pub fn get_version_for_snapshot(&self, seqno: SeqNo) -> SuperVersion {
        if seqno == 0 {
            #[expect(clippy::expect_used, reason = "SuperVersion is expected to exist")]
            return self
                .0
                .front()
                .cloned()
                .expect("should always find a SuperVersion");
        }

        let version = self
            .0
            .iter()
            .rev()
            .find(|version| version.seqno < seqno)
            .cloned();

        if version.is_none() {
            log::error!("Failed to find a SuperVersion for snapshot with seqno={seqno}");
            log::error!("SuperVersions:");

            for version in self.0.iter().rev() {
                log::error!("-> {}, seqno={}", version.version.id(), version.seqno);
            }
        }

        #[expect(clippy::expect_used, reason = "SuperVersion is expected to exist")]
        version.expect("should always find a SuperVersion")
    }
}

/// The lock around a tree's [`SuperVersions`] (Allezon's patch: see
/// third_party/README.md in Allezon's repository).
///
/// Every read and every write of the tree takes this lock, so its write
/// guard keeps slow work out of it:
///
/// - Dropping a super version that GC retired can free the last reference
///   to a sealed memtable (every node of its skiplist) or to a table marked
///   as deleted (unlinking its file): tens of milliseconds on a busy disk.
///   The guard hands those versions, once it has released the lock, to a
///   thread that only frees them ([`free_elsewhere`]): callers may hold
///   other locks around this one (fjall holds its journal's through a
///   memtable rotation, and every commit waits for that).
/// - Persisting a new version takes several fsyncs.
///   [`VersionHistoryWriteGuard::upgrade_version_releasing_lock`] does them
///   with the lock released.
pub struct VersionHistoryLock(RwLock<SuperVersions>);

impl VersionHistoryLock {
    pub fn new(history: SuperVersions) -> Self {
        Self(RwLock::new(history))
    }

    pub fn read(&self) -> LockResult<RwLockReadGuard<'_, SuperVersions>> {
        self.0.read()
    }

    pub fn write(&self) -> LockResult<VersionHistoryWriteGuard<'_>> {
        let wrap = |guard| VersionHistoryWriteGuard {
            lock: &self.0,
            guard: Some(guard),
            taken: Instant::now(),
        };
        match self.0.write() {
            Ok(guard) => Ok(wrap(guard)),
            Err(poisoned) => Err(PoisonError::new(wrap(poisoned.into_inner()))),
        }
    }
}

/// Write access to a tree's [`SuperVersions`]; see [`VersionHistoryLock`].
pub struct VersionHistoryWriteGuard<'a> {
    lock: &'a RwLock<SuperVersions>,
    /// `None` only while the lock is released inside a method of this guard.
    guard: Option<RwLockWriteGuard<'a, SuperVersions>>,
    /// When the lock was last taken, for the debug log of long holds.
    taken: Instant,
}

/// Holds, persists and frees at least this long are logged at debug level,
/// so that the stalls this guard removes can be watched for
/// (`RUST_LOG=lsm_tree=debug`).
const SLOW: Duration = Duration::from_millis(3);

impl VersionHistoryWriteGuard<'_> {
    /// Runs `f` with the lock released, and takes it again.
    ///
    /// For work that needs no version, such as finishing a compaction's
    /// new tables (their last blocks, index and filter written and fsynced,
    /// then each table reopened): up to 70 ms under the lock before. The
    /// caller must hold the tree's compaction state lock, as for
    /// [`Self::upgrade_version_releasing_lock`], so the table list is the
    /// same when `f` returns.
    pub fn unlocked<R>(&mut self, f: impl FnOnce() -> R) -> R {
        self.release();
        let result = f();
        #[expect(clippy::expect_used, reason = "lock is expected to not be poisoned")]
        let guard = self.lock.write().expect("lock is poisoned");
        self.guard = Some(guard);
        self.taken = Instant::now();
        result
    }

    /// Like [`SuperVersions::upgrade_version`], but the new version is
    /// persisted (its file written and fsynced, then `current` rewritten)
    /// with the lock released.
    ///
    /// The caller must hold the tree's compaction state lock. Every change
    /// to the tree's [`Version`] holds it too (flushes, compactions,
    /// ingestion, and `clear`, which keeps the fully locked upgrade). So
    /// while the lock is released, only memtable rotations and version GC
    /// can change the history. GC only removes old versions. A rotation
    /// replaces the active memtable and adds a sealed one; both are carried
    /// into the new version when it is installed. The sealed memtables that
    /// `f` removed (flushed) stay removed. Should the [`Version`] have
    /// changed anyway, nothing is installed and this returns
    /// [`crate::Error::Unrecoverable`].
    pub fn upgrade_version_releasing_lock<
        F: FnOnce(&SuperVersion) -> crate::Result<SuperVersion>,
    >(
        &mut self,
        tree_path: &Path,
        f: F,
        seqno: &SequenceNumberCounter,
        visible_seqno: &SequenceNumberCounter,
    ) -> crate::Result<()> {
        let before = self.latest_version();
        let mut next_version = f(&before)?;

        self.unlocked(|| {
            let persisting = Instant::now();
            let persisted = persist_version(tree_path, &next_version.version);
            if persisting.elapsed() >= SLOW {
                log::debug!(
                    "version {} persisted, unlocked, in {:?}",
                    next_version.version.id(),
                    persisting.elapsed()
                );
            }
            persisted
        })?;

        let latest = self.latest_version();
        if latest.version.id() != before.version.id() {
            // Someone changed the table list without the compaction-state
            // lock: the version just persisted was built on a stale one.
            // Installing it could lose tables, so nothing is installed.
            log::error!(
                "version {} changed to {} while version {} was persisted",
                before.version.id(),
                latest.version.id(),
                next_version.version.id(),
            );
            return Err(crate::Error::Unrecoverable);
        }
        let mut sealed = latest.sealed_memtables;
        for flushed in before
            .sealed_memtables
            .iter()
            .filter(|memtable| !next_version.sealed_memtables.contains(&memtable.id))
        {
            sealed = Arc::new(sealed.remove(flushed.id));
        }
        next_version.sealed_memtables = sealed;
        next_version.active_memtable = latest.active_memtable;
        next_version.seqno = seqno.next();
        log::trace!("Next version seqno={}", next_version.seqno);

        let installed = next_version.seqno;
        self.append_version(next_version);
        visible_seqno.fetch_max(installed + 1);

        Ok(())
    }
}

impl Deref for VersionHistoryWriteGuard<'_> {
    type Target = SuperVersions;

    fn deref(&self) -> &SuperVersions {
        #[expect(
            clippy::expect_used,
            reason = "only released inside this guard's methods"
        )]
        self.guard.as_ref().expect("guard is held")
    }
}

impl DerefMut for VersionHistoryWriteGuard<'_> {
    fn deref_mut(&mut self) -> &mut SuperVersions {
        #[expect(
            clippy::expect_used,
            reason = "only released inside this guard's methods"
        )]
        self.guard.as_mut().expect("guard is held")
    }
}

impl VersionHistoryWriteGuard<'_> {
    /// Releases the lock (logging a long hold); the retired versions stay
    /// in the history for whoever frees them next.
    fn release(&mut self) {
        drop(self.guard.take());
        let held = self.taken.elapsed();
        if held >= SLOW {
            log::debug!("version history lock held {held:?}");
        }
    }
}

impl Drop for VersionHistoryWriteGuard<'_> {
    fn drop(&mut self) {
        let retired = self
            .guard
            .as_mut()
            .map(|history| std::mem::take(&mut history.1));
        self.release();
        if let Some(retired) = retired.filter(|retired| !retired.is_empty()) {
            free_elsewhere(retired);
        }
    }
}

/// Puts the calling thread at nice 10, where Allezon runs fjall's workers,
/// which freed these versions before: a free is background work, and on a
/// small machine it should not take the CPU from requests.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn setpriority(which: i32, who: u32, prio: i32) -> i32;
        }
        const PRIO_PROCESS: i32 = 0;
        // SAFETY: a plain system call wrapper taking integers; on Linux,
        // `who = 0` with PRIO_PROCESS names the calling thread.
        #[allow(unsafe_code)]
        let result = unsafe { setpriority(PRIO_PROCESS, 0, 10) };
        if result != 0 {
            log::debug!(
                "cannot lower the freeing thread's priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Retired versions waiting for the freeing thread; past this, the caller
/// frees them itself (it never waits for the thread).
const FREE_QUEUE: usize = 64;

/// Drops `retired` on a thread of its own (started on first use), so that
/// no caller, whatever locks it holds, waits for the frees. Frees them here
/// if the thread cannot start or its queue is full.
fn free_elsewhere(retired: Vec<SuperVersion>) {
    static FREER: OnceLock<Option<SyncSender<Vec<SuperVersion>>>> = OnceLock::new();
    let freer = FREER.get_or_init(|| {
        let (queue, versions) = sync_channel::<Vec<SuperVersion>>(FREE_QUEUE);
        std::thread::Builder::new()
            .name("lsm-tree:free".into())
            .spawn(move || {
                lower_this_threads_priority();
                for retired in versions {
                    free(retired, "off every lock");
                }
            })
            .inspect_err(|e| log::warn!("no thread to free retired versions: {e}"))
            .ok()
            .map(|_| queue)
    });
    let retired = match freer {
        Some(queue) => match queue.try_send(retired) {
            Ok(()) => return,
            Err(TrySendError::Full(retired) | TrySendError::Disconnected(retired)) => retired,
        },
        None => retired,
    };
    free(retired, "by the caller");
}

/// Drops `retired`, logging a slow free with `where_` it happened.
fn free(retired: Vec<SuperVersion>, where_: &str) {
    let freeing = Instant::now();
    let count = retired.len();
    drop(retired);
    if freeing.elapsed() >= SLOW {
        log::debug!(
            "{count} retired versions freed {where_} in {:?}",
            freeing.elapsed()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_log::test;

    #[test]
    fn super_version_gc_above_watermark() -> crate::Result<()> {
        let mut history = SuperVersions::with_history(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
            ]
            .into(),
        );

        history.maintenance(Path::new("."), 0)?;

        assert_eq!(history.free_list_len(), 2);

        Ok(())
    }

    /// Allezon's patch: an upgrade persists its version with the lock
    /// released. Memtable rotations that happen meanwhile (here, on another
    /// thread, as fast as they can) must all survive in the installed
    /// version, and the sealed memtables the upgrade removed (flushed) must
    /// stay removed.
    #[test]
    fn upgrade_releasing_lock_keeps_concurrent_rotations() -> crate::Result<()> {
        let dir = tempfile::tempdir()?;
        let lock = Arc::new(VersionHistoryLock::new(SuperVersions::new(Version::new(
            0,
            crate::TreeType::Standard,
        ))));
        let seqno = SequenceNumberCounter::default();
        let visible_seqno = SequenceNumberCounter::default();
        let rotations = 200;

        let rotator = {
            let lock = Arc::clone(&lock);
            std::thread::spawn(move || {
                for id in 1..=rotations {
                    let mut guard = lock.write().expect("lock is poisoned");
                    let latest = guard.latest_version();
                    let mut copy = latest.clone();
                    copy.active_memtable = Arc::new(Memtable::new(id));
                    copy.sealed_memtables =
                        Arc::new(latest.sealed_memtables.add(latest.active_memtable));
                    guard.replace_latest_version(copy);
                    drop(guard);
                    std::thread::yield_now();
                }
            })
        };

        // The flushes: each removes the oldest sealed memtable, if any.
        let mut flushed = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let mut guard = lock.write().expect("lock is poisoned");
            guard.upgrade_version_releasing_lock(
                dir.path(),
                |current| {
                    let mut copy = current.clone();
                    if let Some(oldest) = current.sealed_memtables.iter().next() {
                        flushed.insert(oldest.id);
                        copy.sealed_memtables =
                            Arc::new(current.sealed_memtables.remove(oldest.id));
                    }
                    copy.version =
                        Version::new(current.version.id() + 1, crate::TreeType::Standard);
                    Ok(copy)
                },
                &seqno,
                &visible_seqno,
            )?;
        }
        rotator.join().expect("rotator panicked");

        let latest = lock.read().expect("lock is poisoned").latest_version();
        assert_eq!(latest.version.id(), 20);
        assert_eq!(latest.active_memtable.id, rotations);
        let sealed: Vec<_> = latest.sealed_memtables.iter().map(|m| m.id).collect();
        let expected: Vec<_> = (0..rotations).filter(|id| !flushed.contains(id)).collect();
        assert_eq!(sealed, expected);
        assert!(dir.path().join("v20").try_exists()?);
        assert_eq!(visible_seqno.get(), seqno.get());

        Ok(())
    }

    /// Allezon's patch: the versions GC retires are freed after the write
    /// guard goes, on the freeing thread, not inside `maintenance`.
    #[test]
    fn super_version_gc_frees_retired_versions_after_the_lock() -> crate::Result<()> {
        let old_memtable = Arc::new(Memtable::new(0));
        let lock = VersionHistoryLock::new(SuperVersions::with_history(
            vec![
                SuperVersion {
                    active_memtable: Arc::clone(&old_memtable),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(1)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
            ]
            .into(),
        ));

        let mut guard = lock.write().expect("lock is poisoned");
        guard.maintenance(Path::new("."), 3)?;
        assert_eq!(guard.len(), 1);
        assert_eq!(
            Arc::strong_count(&old_memtable),
            2,
            "still held by the retired version while the lock is held"
        );
        drop(guard);
        // Freed by the freeing thread, soon.
        let waited = Instant::now();
        while Arc::strong_count(&old_memtable) > 1 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the retired version was never freed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lock.read().expect("lock is poisoned").len(), 1);

        Ok(())
    }

    /// Allezon's patch: `unlocked` lets readers in while it runs, and holds
    /// the lock again afterwards.
    #[test]
    fn unlocked_releases_the_lock_for_its_closure_only() {
        let lock = VersionHistoryLock::new(SuperVersions::new(Version::new(
            0,
            crate::TreeType::Standard,
        )));
        let mut guard = lock.write().expect("lock is poisoned");
        assert!(lock.0.try_read().is_err(), "held before");
        let read = guard.unlocked(|| lock.0.try_read().map(|history| history.len()).ok());
        assert_eq!(read, Some(1), "readable inside");
        assert!(lock.0.try_read().is_err(), "held again after");
        drop(guard);
        assert!(lock.0.try_read().is_ok());
    }

    #[test]
    fn super_version_gc_below_watermark_simple() -> crate::Result<()> {
        let mut history = SuperVersions::with_history(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
            ]
            .into(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 1);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_simple_2() -> crate::Result<()> {
        let mut history = SuperVersions::with_history(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 1,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 8,
                },
            ]
            .into(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 2);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_keep() -> crate::Result<()> {
        let mut history = SuperVersions::with_history(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 8,
                },
            ]
            .into(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 2);

        Ok(())
    }

    #[test]
    fn super_version_gc_below_watermark_shadowed() -> crate::Result<()> {
        let mut history = SuperVersions::with_history(
            vec![
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 0,
                },
                SuperVersion {
                    active_memtable: Arc::new(Memtable::new(0)),
                    sealed_memtables: Arc::default(),
                    version: Version::new(0, crate::TreeType::Standard),
                    seqno: 2,
                },
            ]
            .into(),
        );

        history.maintenance(Path::new("."), 3)?;

        assert_eq!(history.len(), 1);

        Ok(())
    }
}
