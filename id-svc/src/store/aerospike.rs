//! Ids in Aerospike. A name is a record `[dimension][name]` in set `ids`
//! with bin `id`; each dimension's counter is a record in `id_counters`.
//!
//! First use of a name: take the next number from the counter (an atomic
//! add-and-read), then create the name's record with a create-only write.
//! When two callers race, one create fails with "key exists" and that caller
//! reads back the winner's id, so a name never gets two ids. The loser's
//! number is skipped; ids stay small and unique, not dense.

use aerospike::policy::{Expiration, RecordExistsAction};
use aerospike::{Bin, Bins, ResultCode, Value, operations};
use allezon_aerospike::{Cluster, aerospike, to_error};
use allezon_core::{Error, Result};
use allezon_proto::v1::Dimension;

use super::{IdStore, Name, check};

const ID_BIN: &str = "id";
const COUNTER_BIN: &str = "n";

#[derive(Clone)]
pub struct AerospikeIdStore {
    cluster: Cluster,
    ids: String,
    counters: String,
}

impl AerospikeIdStore {
    pub fn new(cluster: Cluster) -> Self {
        Self {
            ids: cluster.set("ids"),
            counters: cluster.set("id_counters"),
            cluster,
        }
    }

    fn name_key(&self, dimension: Dimension, name: &str) -> Result<aerospike::Key> {
        let mut key = Vec::with_capacity(name.len() + 1);
        key.push(dimension as u8);
        key.extend_from_slice(name.as_bytes());
        self.cluster.key(&self.ids, Value::Blob(key))
    }

    async fn get(&self, key: &aerospike::Key) -> Result<Option<u32>> {
        match self
            .cluster
            .client()
            .get(&self.cluster.read_policy(), key, Bins::from([ID_BIN]))
            .await
        {
            Ok(record) => id_of(record.bins.get(ID_BIN)).map(Some),
            Err(err) if err.server_result_code() == Some(ResultCode::KeyNotFoundError) => Ok(None),
            Err(err) => Err(to_error(err)),
        }
    }

    async fn create(&self, dimension: Dimension, key: &aerospike::Key) -> Result<u32> {
        let counter = self.cluster.key(&self.counters, dimension as i64)?;
        let mut write = self.cluster.write_policy();
        write.expiration = Expiration::Never;
        let next = self
            .cluster
            .client()
            .operate(
                &write,
                &counter,
                &[
                    operations::add(&Bin::new(COUNTER_BIN, Value::Int(1))),
                    operations::get_bin(COUNTER_BIN),
                ],
            )
            .await
            .map_err(to_error)?;
        let id = match next.results.as_deref() {
            Some([_, value]) => id_of(Some(value))?,
            _ => return Err(Error::internal("aerospike: unexpected counter reply")),
        };
        let mut create = write.clone();
        create.record_exists_action = RecordExistsAction::CreateOnly;
        match self
            .cluster
            .client()
            .put(&create, key, &[Bin::new(ID_BIN, Value::Int(i64::from(id)))])
            .await
        {
            Ok(()) => Ok(id),
            Err(err) if err.server_result_code() == Some(ResultCode::KeyExistsError) => self
                .get(key)
                .await?
                .ok_or_else(|| Error::internal("aerospike: id record vanished after create race")),
            Err(err) => Err(to_error(err)),
        }
    }
}

fn id_of(value: Option<&Value>) -> Result<u32> {
    match value {
        Some(Value::Int(id)) => {
            u32::try_from(*id).map_err(|_| Error::internal("aerospike: id out of range"))
        }
        other => Err(Error::internal(format!("aerospike: corrupt id {other:?}"))),
    }
}

impl IdStore for AerospikeIdStore {
    async fn get_or_create(&self, names: Vec<Name>) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(names.len());
        for (dimension, name) in &names {
            check(*dimension)?;
            let key = self.name_key(*dimension, name)?;
            let id = match self.get(&key).await? {
                Some(id) => id,
                None => self.create(*dimension, &key).await?,
            };
            ids.push(id);
        }
        Ok(ids)
    }

    async fn lookup(&self, names: Vec<Name>) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(names.len());
        for (dimension, name) in &names {
            check(*dimension)?;
            ids.push(
                self.get(&self.name_key(*dimension, name)?)
                    .await?
                    .unwrap_or(0),
            );
        }
        Ok(ids)
    }
}
