//! Profiles on the embedded engine: one key per tag (see [`super::key`]),
//! made durable by group commit before `append` returns.

use allezon_core::query::TimeRange;
use allezon_core::{Action, Error, Result, UserTag};
use allezon_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use allezon_storage::{Keyspace, Store, StoreError, WriteBatch};
use prost::Message;

use super::key::{self, fnv1a, tag_key, time_of};
use super::{KEEP_PER_ACTION, Logged, ProfileStore, Tags};

/// One append in this many also trims its cookie and action back to the
/// newest [`KEEP_PER_ACTION`]. The choice rides on the tag's hash, so it needs
/// no per-cookie state; between trims a few extra tags may sit on disk, which
/// queries never see because they stop at the newest [`KEEP_PER_ACTION`].
const TRIM_EVERY: u64 = 16;

#[derive(Clone)]
pub struct EmbeddedProfileStore {
    store: Store,
    tags: Keyspace,
    trims: Arc<Trimmer>,
    /// Orders [`ProfileStore::append_logged`] calls: each checks what is
    /// stored, then writes, and two at once could both find a tag new.
    logged: Arc<Mutex<()>>,
}

/// Trims run on their own thread: a trim scans a cookie's keys and deletes
/// the stale ones, which is engine work that must not hold an async worker
/// or the caller's lock. The queue is bounded; a trim that does not fit is
/// dropped, and a later append of the same cookie asks again.
struct Trimmer {
    queue: Option<SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

/// Profile queries at least this slow are logged at debug level.
const SLOW_QUERY: Duration = Duration::from_millis(30);

/// Cookies waiting for a trim.
const TRIM_QUEUE: usize = 4_096;

/// How long the trimmer lets requests gather after the first one. At
/// 35,000 tags/s about 45 come in that time, far below [`TRIM_QUEUE`]; the
/// tags they trim sit on disk 20 ms longer, unseen by queries.
const TRIM_GATHER: Duration = Duration::from_millis(20);

impl Trimmer {
    fn start(store: Store, tags: Keyspace) -> std::io::Result<Self> {
        let (queue, prefixes) = sync_channel::<Vec<u8>>(TRIM_QUEUE);
        let thread = std::thread::Builder::new()
            .name("profile-trim".into())
            .spawn(move || {
                allezon_storage::priority::lower_this_thread();
                let mut kept_from = KeptFrom::default();
                // Wait for one request, then let more gather: a send that
                // finds this thread asleep in `recv` wakes it, a futex call
                // on the appender's thread and a context switch on this one,
                // once per trim (a 20th of the appender's time and half of
                // this thread's at saturation). A cookie asked for twice in
                // one round is trimmed once.
                while let Ok(first) = prefixes.recv() {
                    std::thread::sleep(TRIM_GATHER);
                    let round: HashSet<Vec<u8>> =
                        std::iter::once(first).chain(prefixes.try_iter()).collect();
                    for prefix in round {
                        if let Err(err) = trim(&store, &tags, &prefix, &mut kept_from) {
                            tracing::warn!(%err, "profile trim failed; a later append redoes it");
                        }
                    }
                }
            })?;
        Ok(Self {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    fn request(&self, prefix: Vec<u8>) {
        if let Some(queue) = &self.queue {
            let _ = queue.try_send(prefix);
        }
    }
}

impl Drop for Trimmer {
    fn drop(&mut self) {
        // Closing the queue ends the thread; joining it releases its engine
        // handle, so the directory can be reopened as soon as the store is
        // dropped.
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Per cookie and action, the oldest key the last trim kept. Below it lie
/// only the tombstones of what trims deleted, which the engine keeps until
/// a compaction reaches the last level: a scan from the prefix's start
/// walks all of them, so a cookie with many tags costs more at every trim.
/// Starting here bounds a scan by the live tags. A tag that arrives late,
/// older than this key, is past the
/// newest [`KEEP_PER_ACTION`] anyway (queries never reach it); it waits for
/// a scan from the start, after a restart or once the map was cleared.
#[derive(Default)]
struct KeptFrom(HashMap<Vec<u8>, Vec<u8>>);

/// Cookies remembered at most; then the map starts again, empty.
const KEPT_FROM_MAX: usize = 100_000;

/// Deletes every tag of `prefix` below the newest [`KEEP_PER_ACTION`].
///
/// Safe under concurrent appends: a tag's rank (how many newer tags exist)
/// only grows, so once past the limit it stays past it.
fn trim(
    store: &Store,
    tags: &Keyspace,
    prefix: &[u8],
    kept_from: &mut KeptFrom,
) -> Result<(), StoreError> {
    let start = kept_from
        .0
        .get(prefix)
        .cloned()
        .unwrap_or_else(|| prefix.to_vec());
    let live = tags
        .range(start..key::prefix_end(prefix))
        .map(|guard| guard.key())
        .collect::<Result<Vec<_>, _>>()?;
    let Some(stale) = live.len().checked_sub(KEEP_PER_ACTION).filter(|n| *n > 0) else {
        return Ok(());
    };
    let mut batch = store.database().batch();
    for key in &live[..stale] {
        batch.remove(tags, key.clone());
    }
    // Not synced on purpose: a trim lost in a crash is redone later.
    batch.commit()?;
    if kept_from.0.len() >= KEPT_FROM_MAX {
        kept_from.0.clear();
    }
    kept_from.0.insert(prefix.to_vec(), live[stale].to_vec());
    Ok(())
}

/// A tag's key and value (its encoding), and the hash that both carry.
struct Entry {
    key: Vec<u8>,
    value: Vec<u8>,
    action: Action,
    hash: u64,
}

impl Entry {
    fn of(tag: &pb::UserTag) -> Self {
        Self::of_encoded(&mut tag.clone(), &tag.encode_to_vec())
    }

    /// The entry of `tag`, whose encoding is `encoded`. `tag` is changed
    /// while its value is encoded, and given back as it was.
    fn of_encoded(tag: &mut pb::UserTag, encoded: &[u8]) -> Self {
        let action = Action::try_from(tag.action).unwrap_or(Action::View);
        // The hash covers the whole tag, so a retried tag finds its key
        // whichever form of the value an earlier version stored.
        let hash = fnv1a(encoded);
        // The key holds the cookie, action and time, so the value leaves
        // them out (`restore_from_key` puts them back): the cookie and time
        // are the least compressible third of a tag, and profiles are most
        // of the disk (a 2-million-tag replay: 61 bytes per tag before).
        let cookie = std::mem::take(&mut tag.cookie);
        let (time_ms, action_code) = (tag.time_ms, tag.action);
        tag.time_ms = 0;
        tag.action = 0;
        let value = tag.encode_to_vec();
        (tag.cookie, tag.time_ms, tag.action) = (cookie, time_ms, action_code);
        Self {
            key: tag_key(&tag.cookie, action, tag.time_ms, hash),
            value,
            action,
            hash,
        }
    }

    /// The trim this entry's append asks for, if any (one in
    /// [`TRIM_EVERY`]), as the cookie and action's key prefix.
    fn trim_prefix(&self, cookie: &str) -> Option<Vec<u8>> {
        self.hash
            .is_multiple_of(TRIM_EVERY)
            .then(|| key::prefix(cookie, self.action))
    }
}

/// A tag made ready for [`EmbeddedProfileStore::stage_prepared`]: its key,
/// value and trim request, computed by the caller's thread.
///
/// The all-in-one builds it on the request's async worker, so the log
/// appender's one thread, which every tag goes through, only checks and
/// stages; and the tag's fields are allocated and freed by one thread
/// (memory one thread frees for another comes back cold to the allocator).
pub struct PreparedTag {
    key: Vec<u8>,
    value: Vec<u8>,
    trim: Option<Vec<u8>>,
}

impl PreparedTag {
    pub fn of(tag: &pb::UserTag) -> Self {
        Self::of_entry(Entry::of(tag), &tag.cookie)
    }

    /// [`Self::of`] for a caller that has encoded `tag` already (`encoded`),
    /// without copying it. `tag` is given back as it was.
    pub fn of_encoded(tag: &mut pb::UserTag, encoded: &[u8]) -> Self {
        Self::of_entry(Entry::of_encoded(tag, encoded), &tag.cookie)
    }

    fn of_entry(entry: Entry, cookie: &str) -> Self {
        Self {
            trim: entry.trim_prefix(cookie),
            key: entry.key,
            value: entry.value,
        }
    }
}

/// Puts back what [`Entry::of`] leaves out of a value. Values stored with
/// those fields (before it left them out) get the same ones again.
fn restore_from_key(tag: &mut pb::UserTag, cookie: &str, action: Action, time_ms: i64) {
    cookie.clone_into(&mut tag.cookie);
    tag.action = pb::Action::from(action).into();
    tag.time_ms = time_ms;
}

impl EmbeddedProfileStore {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        let tags = store.keyspace("profiles")?;
        let trims =
            Trimmer::start(store.clone(), tags.clone()).map_err(|source| StoreError::Thread {
                name: "profile-trim",
                source,
            })?;
        Ok(Self {
            store: store.clone(),
            tags,
            trims: Arc::new(trims),
            logged: Arc::default(),
        })
    }

    fn insert(&self, batch: &mut WriteBatch, tag: &pb::UserTag, entry: Entry) {
        self.insert_prepared(batch, PreparedTag::of_entry(entry, &tag.cookie));
    }

    fn insert_prepared(&self, batch: &mut WriteBatch, tag: PreparedTag) {
        batch.insert(&self.tags, tag.key, tag.value);
        if let Some(prefix) = tag.trim {
            self.trims.request(prefix);
        }
    }

    /// The blocking half of [`ProfileStore::append_logged`]: checks and
    /// writes one batch, without waiting for its sync.
    fn stage_logged(&self, tags: Vec<Logged>) -> Result<Vec<bool>, StoreError> {
        let _serial = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = self.store.database().batch();
        // A batch's own writes are not readable before it commits.
        let mut staged: HashMap<Vec<u8>, pb::TagOrigin> = HashMap::new();
        let mut first = Vec::with_capacity(tags.len());
        for Logged { tag, origin } in tags {
            let mut entry = Entry::of(&tag);
            let stored = match staged.get(&entry.key) {
                Some(origin) => Some(*origin),
                None => self
                    .tags
                    .get(&entry.key)?
                    .map(|value| pb::TagOrigin::decode(&*value).unwrap_or_default()),
            };
            match stored {
                Some(stored) => first.push(stored == origin),
                None => {
                    // After the tag's own encoding: see `TagOrigin`.
                    entry.value.extend_from_slice(&origin.encode_to_vec());
                    staged.insert(entry.key.clone(), origin);
                    self.insert(&mut batch, &tag, entry);
                    first.push(true);
                }
            }
        }
        self.store.check_write()?;
        batch.commit()?;
        Ok(first)
    }

    /// Puts `tag` into `batch`, unless the store holds it already or
    /// `pending` (the keys staged into this batch so far) does: then nothing
    /// is staged and the answer is `false`. The caller commits the batch and
    /// waits for its sync. Two stagings of one tag must not run at once (the
    /// caller orders them), or both may answer `true`.
    pub fn stage(
        &self,
        batch: &mut WriteBatch,
        tag: &pb::UserTag,
        pending: &mut HashSet<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.stage_prepared(batch, PreparedTag::of(tag), pending)
    }

    /// [`Self::stage`] for a tag prepared beforehand.
    pub fn stage_prepared(
        &self,
        batch: &mut WriteBatch,
        tag: PreparedTag,
        pending: &mut HashSet<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        if pending.contains(&tag.key) || self.tags.contains_key(&tag.key)? {
            return Ok(false);
        }
        pending.insert(tag.key.clone());
        self.insert_prepared(batch, tag);
        Ok(true)
    }
}

impl ProfileStore for EmbeddedProfileStore {
    async fn append(&self, tag: UserTag) -> Result<()> {
        let tag = pb::UserTag::from(tag);
        let this = self.clone();
        // A commit waits for any fsync in progress (the journal's lock):
        // off the async workers.
        tokio::task::spawn_blocking(move || {
            let mut batch = this.store.database().batch();
            // A duplicate stages nothing, and still waits for the sync
            // below: the first copy may not be durable yet.
            this.stage(&mut batch, &tag, &mut HashSet::new())?;
            this.store.check_write()?;
            batch.commit().map_err(StoreError::from)
        })
        .await
        .map_err(|err| Error::internal(format!("profile write task failed: {err}")))?
        .map_err(storage_error)?;
        self.store.sync().await.map_err(storage_error)
    }

    async fn append_logged(&self, tags: Vec<Logged>) -> Result<Vec<bool>> {
        let this = self.clone();
        let first = tokio::task::spawn_blocking(move || this.stage_logged(tags))
            .await
            .map_err(|err| Error::internal(format!("profile write task failed: {err}")))?
            .map_err(storage_error)?;
        self.store.sync().await.map_err(storage_error)?;
        Ok(first)
    }

    async fn query(
        &self,
        cookie: &str,
        action: Action,
        range: TimeRange,
        limit: usize,
    ) -> Result<Tags> {
        // A scan of up to 200 entries, past the tombstones of trimmed ones,
        // and their decoding: blocking work, which on an async worker would
        // hold up every request queued behind it there.
        let (this, cookie) = (self.clone(), cookie.to_owned());
        let asked = Instant::now();
        tokio::task::spawn_blocking(move || {
            let started = asked.elapsed();
            let tags = this.query_blocking(&cookie, action, range, limit);
            // The engine's read path waits on fjall's locks under load; a
            // slow query's line says whether it waited for a thread or in
            // the scan (`RUST_LOG=profile_svc=debug`).
            let took = asked.elapsed();
            if took >= SLOW_QUERY {
                tracing::debug!(?started, ?took, cookie, "slow profile query");
            }
            tags
        })
        .await
        .map_err(|err| Error::internal(format!("profile read task failed: {err}")))?
    }
}

impl EmbeddedProfileStore {
    fn query_blocking(
        &self,
        cookie: &str,
        action: Action,
        range: TimeRange,
        limit: usize,
    ) -> Result<Tags> {
        let mut tags = Vec::new();
        if limit == 0 || range.from_ms >= range.to_ms {
            return Ok(tags);
        }
        let prefix = key::prefix(cookie, action);
        for guard in self.tags.prefix(&prefix).rev().take(KEEP_PER_ACTION) {
            let (key, value) = guard.into_inner().map_err(storage_error)?;
            let time = time_of(&key).ok_or_else(|| Error::internal("corrupt profile key"))?;
            if time >= range.to_ms {
                continue;
            }
            if time < range.from_ms {
                break;
            }
            let mut tag = pb::UserTag::decode(&*value)
                .map_err(|err| Error::internal(format!("corrupt profile value: {err}")))?;
            restore_from_key(&mut tag, cookie, action, time);
            tags.push(tag);
            if tags.len() == limit {
                break;
            }
        }
        Ok(tags)
    }
}

fn storage_error(err: impl Into<StoreError>) -> Error {
    let err = err.into();
    tracing::error!(%err, "profile store");
    Error::unavailable(format!("profile store: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use allezon_core::{Device, ProductId, ProductInfo};

    fn tag(cookie: &str, action: Action, time_ms: i64, price: i32) -> UserTag {
        UserTag {
            time_ms,
            cookie: cookie.to_owned(),
            country: "PL".into(),
            device: Device::Pc,
            action,
            origin: "o".into(),
            product_info: ProductInfo {
                product_id: ProductId::Number(i64::from(price)),
                brand_id: "b".into(),
                category_id: "c".into(),
                price,
            },
        }
    }

    fn all() -> TimeRange {
        TimeRange {
            from_ms: i64::MIN,
            to_ms: i64::MAX,
        }
    }

    #[tokio::test]
    async fn keeps_the_newest_200_per_action_whatever_the_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProfileStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        // 300 views arriving in a scrambled order, and 3 buys.
        for i in 0..300i64 {
            let t = (i * 7919) % 300;
            store
                .append(tag("c", Action::View, t, t as i32))
                .await
                .unwrap();
        }
        for t in [5, 1, 3] {
            store.append(tag("c", Action::Buy, t, 0)).await.unwrap();
        }
        let views = store.query("c", Action::View, all(), 1000).await.unwrap();
        let times: Vec<i64> = views.iter().map(|t| t.time_ms).collect();
        assert_eq!(times, (100..300).rev().collect::<Vec<_>>());
        let buys = store.query("c", Action::Buy, all(), 1000).await.unwrap();
        assert_eq!(
            buys.iter().map(|t| t.time_ms).collect::<Vec<_>>(),
            [5, 3, 1]
        );

        // A range reaching below the kept 200 still sees only the kept ones.
        let range = TimeRange {
            from_ms: 50,
            to_ms: 103,
        };
        let old = store.query("c", Action::View, range, 1000).await.unwrap();
        assert_eq!(
            old.iter().map(|t| t.time_ms).collect::<Vec<_>>(),
            [102, 101, 100]
        );
        // The limit keeps the newest within the range.
        let range = TimeRange {
            from_ms: 150,
            to_ms: 160,
        };
        let some = store.query("c", Action::View, range, 3).await.unwrap();
        assert_eq!(
            some.iter().map(|t| t.time_ms).collect::<Vec<_>>(),
            [159, 158, 157]
        );
        assert!(
            store
                .query("other", Action::View, all(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_retried_append_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProfileStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let t = tag("c", Action::Buy, 42, 7);
        store.append(t.clone()).await.unwrap();
        store.append(t).await.unwrap();
        // A different tag in the same millisecond is kept beside it.
        store.append(tag("c", Action::Buy, 42, 8)).await.unwrap();
        assert_eq!(
            store
                .query("c", Action::Buy, all(), 10)
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn values_leave_out_what_the_key_holds_and_older_values_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProfileStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let cookie = "cookie-that-stays-in-the-key";
        let new = tag(cookie, Action::Buy, 1_646_092_800_123, 7);
        store.append(new.clone()).await.unwrap();
        let (_, value) = store
            .tags
            .prefix(key::prefix(cookie, Action::Buy))
            .next()
            .unwrap()
            .into_inner()
            .unwrap();
        assert!(!value.windows(cookie.len()).any(|w| w == cookie.as_bytes()));
        let slim = pb::UserTag::decode(&*value).unwrap();
        assert_eq!(
            (slim.time_ms, slim.action, slim.cookie.as_str()),
            (0, 0, "")
        );

        // A value in the earlier, whole form, under the key its tag has.
        let old = pb::UserTag::from(tag(cookie, Action::Buy, 1_646_092_800_000, 8));
        let whole = old.encode_to_vec();
        let old_key = tag_key(cookie, Action::Buy, old.time_ms, fnv1a(&whole));
        store.tags.insert(old_key, whole).unwrap();

        let buys = store.query(cookie, Action::Buy, all(), 10).await.unwrap();
        assert_eq!(buys, vec![pb::UserTag::from(new), old.clone()]);
        // Retrying the older tag finds it: one copy still.
        store.append(UserTag::try_from(old).unwrap()).await.unwrap();
        assert_eq!(
            store
                .query(cookie, Action::Buy, all(), 10)
                .await
                .unwrap()
                .len(),
            2
        );
    }

    #[tokio::test]
    async fn a_trim_starts_where_the_last_one_kept_and_a_fresh_one_sweeps_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProfileStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let write = |times: std::ops::Range<i64>| {
            let mut batch = store.store.database().batch();
            for t in times {
                let tag = pb::UserTag::from(tag("c", Action::View, t, t as i32));
                let entry = Entry::of(&tag);
                batch.insert(&store.tags, entry.key, entry.value);
            }
            batch.commit().unwrap();
        };
        let prefix = key::prefix("c", Action::View);
        let times = || -> Vec<i64> {
            store
                .tags
                .prefix(&prefix)
                .map(|g| time_of(&g.key().unwrap()).unwrap())
                .collect()
        };
        let mut kept_from = KeptFrom::default();

        write(0..300);
        trim(&store.store, &store.tags, &prefix, &mut kept_from).unwrap();
        assert_eq!(times(), (100..300).collect::<Vec<_>>());

        // 50 newer, and one late tag older than everything kept.
        write(300..350);
        write(5..6);
        trim(&store.store, &store.tags, &prefix, &mut kept_from).unwrap();
        let mut expected = vec![5];
        expected.extend(150..350);
        assert_eq!(times(), expected);
        let newest = store.query("c", Action::View, all(), 1000).await.unwrap();
        assert_eq!(newest.len(), KEEP_PER_ACTION);
        assert_eq!(newest.last().unwrap().time_ms, 150);

        // After a restart the map is empty: the scan starts at the prefix.
        trim(&store.store, &store.tags, &prefix, &mut KeptFrom::default()).unwrap();
        assert_eq!(times(), (150..350).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn trimming_reclaims_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProfileStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        for t in 0..2000 {
            store
                .append(tag("c", Action::View, t, t as i32))
                .await
                .unwrap();
        }
        // One append in TRIM_EVERY asks for a trim; the hash makes that
        // pseudo-random, so allow a generous tail above the 200 kept. Trims
        // run on their own thread: give it time.
        let stored = || store.tags.prefix(key::prefix("c", Action::View)).count();
        for _ in 0..500 {
            if stored() < 400 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!((200..400).contains(&stored()), "{} tags on disk", stored());
    }
}
