//! Profiles on the embedded engine: one key per tag (see [`super::key`]),
//! made durable by group commit before `append` returns.

use allezon_core::query::TimeRange;
use allezon_core::{Action, Error, Result, UserTag};
use allezon_proto::v1 as pb;
use allezon_storage::{Keyspace, Store, StoreError};
use prost::Message;

use super::key::{self, fnv1a, tag_key, time_of};
use super::{KEEP_PER_ACTION, ProfileStore, Tags};

/// One append in this many also trims its cookie and action back to the
/// newest [`KEEP_PER_ACTION`]. The choice rides on the tag's hash, so it needs
/// no per-cookie state; between trims a few extra tags may sit on disk, which
/// queries never see because they stop at the newest [`KEEP_PER_ACTION`].
const TRIM_EVERY: u64 = 16;

#[derive(Clone)]
pub struct EmbeddedProfileStore {
    store: Store,
    tags: Keyspace,
}

impl EmbeddedProfileStore {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            tags: store.keyspace("profiles")?,
        })
    }

    /// Deletes every tag of `prefix` below the newest [`KEEP_PER_ACTION`].
    ///
    /// Safe under concurrent appends: a tag's rank (how many newer tags
    /// exist) only grows, so once past the limit it stays past it.
    fn trim(&self, prefix: &[u8]) -> Result<(), StoreError> {
        let stale = self
            .tags
            .prefix(prefix)
            .rev()
            .skip(KEEP_PER_ACTION)
            .map(|guard| guard.key())
            .collect::<Result<Vec<_>, _>>()?;
        if stale.is_empty() {
            return Ok(());
        }
        let mut batch = self.store.database().batch();
        for key in stale {
            batch.remove(&self.tags, key);
        }
        // Not synced on purpose: a trim lost in a crash is redone later.
        batch.commit()?;
        Ok(())
    }
}

impl ProfileStore for EmbeddedProfileStore {
    async fn append(&self, tag: UserTag) -> Result<()> {
        let prefix = key::prefix(&tag.cookie, tag.action);
        // The key is built before the tag moves into its encoding; the hash
        // of that encoding fills its last bytes.
        let mut key = tag_key(&tag.cookie, tag.action, tag.time_ms, 0);
        let value = pb::UserTag::from(tag).encode_to_vec();
        let hash = fnv1a(&value);
        let hash_at = key.len() - key::HASH_LEN;
        key[hash_at..].copy_from_slice(&hash.to_be_bytes());

        self.tags.insert(key, value).map_err(storage_error)?;
        if hash.is_multiple_of(TRIM_EVERY) {
            self.trim(&prefix).map_err(storage_error)?;
        }
        self.store.sync().await.map_err(storage_error)
    }

    async fn query(
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
            let tag = pb::UserTag::decode(&*value)
                .map_err(|err| Error::internal(format!("corrupt profile value: {err}")))?;
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
    async fn trimming_reclaims_space() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedProfileStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        for t in 0..2000 {
            store
                .append(tag("c", Action::View, t, t as i32))
                .await
                .unwrap();
        }
        let stored = store.tags.prefix(key::prefix("c", Action::View)).count();
        // One append in TRIM_EVERY trims; the hash makes that pseudo-random,
        // so allow a generous tail above the 200 kept.
        assert!((200..400).contains(&stored), "{stored} tags on disk");
    }
}
