//! Ids in the embedded engine.

use std::sync::{Arc, Mutex, PoisonError};

use allezon_core::{Error, Result};
use allezon_proto::v1::Dimension;
use allezon_storage::{Keyspace, Store, StoreError};

use super::{IdStore, Name, check};

/// Ids in a keyspace: `[dimension][name] -> id`, and `[0][dimension] -> last
/// id handed out`. Creation happens under one lock, so two first uses of a
/// name in one process cannot both create it; the engine's directory lock
/// keeps other processes out.
#[derive(Clone)]
pub struct EmbeddedIdStore {
    store: Store,
    ids: Keyspace,
    create: Arc<Mutex<()>>,
}

impl EmbeddedIdStore {
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Ok(Self {
            store: store.clone(),
            ids: store.keyspace("ids")?,
            create: Arc::new(Mutex::new(())),
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<u32>> {
        let value = self.ids.get(key).map_err(storage_error)?;
        value
            .map(|v| {
                <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::internal("corrupt id value"))
            })
            .transpose()
    }
}

fn name_key(dimension: Dimension, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 1);
    key.push(dimension as u8);
    key.extend_from_slice(name.as_bytes());
    key
}

fn counter_key(dimension: Dimension) -> [u8; 2] {
    [0, dimension as u8]
}

impl IdStore for EmbeddedIdStore {
    async fn get_or_create(&self, names: Vec<Name>) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(names.len());
        let mut created = false;
        {
            let _guard = self.create.lock().unwrap_or_else(PoisonError::into_inner);
            for (dimension, name) in &names {
                check(*dimension)?;
                let key = name_key(*dimension, name);
                if let Some(id) = self.get(&key)? {
                    ids.push(id);
                    continue;
                }
                let counter = counter_key(*dimension);
                let id = self
                    .get(&counter)?
                    .unwrap_or(0)
                    .checked_add(1)
                    .ok_or_else(|| Error::internal("id space exhausted"))?;
                let mut batch = self.store.database().batch();
                batch.insert(&self.ids, key, id.to_be_bytes());
                batch.insert(&self.ids, counter, id.to_be_bytes());
                batch.commit().map_err(storage_error)?;
                ids.push(id);
                created = true;
            }
        }
        if created {
            self.store.sync().await.map_err(storage_error)?;
        }
        Ok(ids)
    }

    async fn lookup(&self, names: Vec<Name>) -> Result<Vec<u32>> {
        names
            .iter()
            .map(|(dimension, name)| {
                check(*dimension)?;
                Ok(self.get(&name_key(*dimension, name))?.unwrap_or(0))
            })
            .collect()
    }
}

fn storage_error(err: impl Into<StoreError>) -> Error {
    let err = err.into();
    tracing::error!(%err, "id store");
    Error::unavailable(format!("id store: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ids_are_stable_per_dimension_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec![
            (Dimension::Brand, "a".to_owned()),
            (Dimension::Brand, "b".to_owned()),
            (Dimension::Origin, "a".to_owned()),
            (Dimension::Brand, "a".to_owned()),
        ];
        {
            let store = EmbeddedIdStore::open(&Store::open(dir.path()).unwrap()).unwrap();
            assert_eq!(
                store.get_or_create(names.clone()).await.unwrap(),
                [1, 2, 1, 1]
            );
        }
        let store = EmbeddedIdStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        assert_eq!(store.lookup(names.clone()).await.unwrap(), [1, 2, 1, 1]);
        let more = vec![
            (Dimension::Brand, "c".to_owned()),
            (Dimension::Category, "x".to_owned()),
        ];
        assert_eq!(store.lookup(more.clone()).await.unwrap(), [0, 0]);
        assert_eq!(store.get_or_create(more).await.unwrap(), [3, 1]);
    }

    #[tokio::test]
    async fn concurrent_first_use_yields_one_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedIdStore::open(&Store::open(dir.path()).unwrap()).unwrap();
        let tasks: Vec<_> = (0..32)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Every task asks for the same 20 names in its own order.
                    let names = (0..20)
                        .map(|n| (Dimension::Category, format!("cat_{}", (n + i) % 20)))
                        .collect();
                    let ids = store.get_or_create(names).await.unwrap();
                    (0..20).map(|n| ((n + i) % 20, ids[n])).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = std::collections::HashMap::new();
        for task in tasks {
            for (name, id) in task.await.unwrap() {
                assert_eq!(
                    *seen.entry(name).or_insert(id),
                    id,
                    "name {name} got two ids"
                );
            }
        }
        let mut ids: Vec<u32> = seen.values().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=20).collect::<Vec<_>>());
    }
}
