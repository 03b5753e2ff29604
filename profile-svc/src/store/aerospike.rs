//! Profiles in Aerospike: one record per cookie, one key-ordered map bin per
//! action (`v` for views, `b` for buys).
//!
//! Map key: 16 bytes, `[time: u64 BE, sign flipped][hash of the tag: u64
//! BE]`. Blobs of equal length order bytewise on the server, so the map is
//! in event-time order whatever the arrival order, and a retried append of
//! the same tag overwrites itself. Value: the protobuf-encoded tag.
//!
//! An append is one `operate`: put the tag, then remove everything but the
//! newest 200 by index, atomically on the record. A query asks the server
//! for at most `limit` entries just below the range's end (a key-relative
//! index range), so it never ships more than the answer.

use std::collections::HashMap;

use aerospike::operations::{MapOrder, maps};
use aerospike::{MapPolicy, MapReturnType, MapWriteFlags, Value};
use allezon_aerospike::{Cluster, aerospike, to_error};
use allezon_core::query::TimeRange;
use allezon_core::{Action, Error, Result, UserTag};
use allezon_proto::v1 as pb;
use futures::StreamExt;
use prost::Message;

use super::key::{encode_time, fnv1a};
use super::{KEEP_PER_ACTION, Logged, ProfileStore, Tags};

const SET: &str = "profiles";

#[derive(Clone)]
pub struct AerospikeProfileStore {
    cluster: Cluster,
    set: String,
}

impl AerospikeProfileStore {
    pub fn new(cluster: Cluster) -> Self {
        let set = cluster.set(SET);
        Self { cluster, set }
    }
}

fn bin(action: Action) -> &'static str {
    match action {
        Action::View => "v",
        Action::Buy => "b",
    }
}

fn map_key(time_ms: i64, hash: u64) -> Value {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&encode_time(time_ms));
    key.extend_from_slice(&hash.to_be_bytes());
    Value::Blob(key)
}

fn time_of(key: &Value) -> Option<i64> {
    let Value::Blob(bytes) = key else { return None };
    let time: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(time) ^ (1 << 63)) as i64)
}

const KEEP: i64 = KEEP_PER_ACTION as i64;
/// Cookies written at once by one `append_logged`.
const APPEND_CONCURRENCY: usize = 64;

impl AerospikeProfileStore {
    /// One logged tag: created only if absent, then read back, then the
    /// trim, in one atomic `operate`. The value read back carries the origin
    /// of whichever copy was stored first.
    async fn append_one(&self, logged: &Logged) -> Result<bool> {
        let tag = &logged.tag;
        let key = self.cluster.key(&self.set, tag.cookie.as_str())?;
        let action = Action::try_from(tag.action)?;
        let mut value = tag.encode_to_vec();
        let entry = map_key(tag.time_ms, fnv1a(&value));
        // After the tag's own encoding: see `TagOrigin`.
        value.extend_from_slice(&logged.origin.encode_to_vec());
        let policy = MapPolicy::new(
            MapOrder::KeyOrdered,
            MapWriteFlags::CREATE_ONLY | MapWriteFlags::NO_FAIL,
        );
        let ops = [
            maps::put(&policy, bin(action), entry.clone(), Value::Blob(value)),
            maps::get_by_key(bin(action), entry, MapReturnType::VALUE),
            maps::remove_by_index_range_from(bin(action), -KEEP, MapReturnType::NONE.inverted()),
        ];
        let mut write = self.cluster.write_policy();
        write.expiration = aerospike::policy::Expiration::NamespaceDefault;
        // Every operation answers, so the read is found by its place.
        write.respond_per_each_op = true;
        let record = self
            .cluster
            .client()
            .operate(&write, &key, &ops)
            .await
            .map_err(to_error)?;
        match record.results.as_deref() {
            Some([_, Value::Blob(stored), ..]) => {
                let stored = pb::TagOrigin::decode(stored.as_slice()).unwrap_or_default();
                Ok(stored == logged.origin)
            }
            other => Err(Error::internal(format!(
                "aerospike: unexpected profile append reply {other:?}"
            ))),
        }
    }
}

impl ProfileStore for AerospikeProfileStore {
    async fn append_logged(&self, tags: Vec<Logged>) -> Result<Vec<bool>> {
        // A cookie's tags in log order, one after another, so a duplicate in
        // the same call finds its first copy; cookies side by side.
        let mut by_cookie: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, logged) in tags.iter().enumerate() {
            by_cookie
                .entry(logged.tag.cookie.as_str())
                .or_default()
                .push(i);
        }
        let runs = by_cookie.into_values().map(|indices| async {
            let mut out = Vec::with_capacity(indices.len());
            for i in indices {
                out.push((i, self.append_one(&tags[i]).await?));
            }
            Ok::<_, Error>(out)
        });
        let mut first = vec![false; tags.len()];
        let mut runs = futures::stream::iter(runs).buffer_unordered(APPEND_CONCURRENCY);
        while let Some(run) = runs.next().await {
            for (i, is_first) in run? {
                first[i] = is_first;
            }
        }
        Ok(first)
    }

    async fn append(&self, tag: UserTag) -> Result<()> {
        let key = self.cluster.key(&self.set, tag.cookie.as_str())?;
        let (action, time_ms) = (tag.action, tag.time_ms);
        let value = pb::UserTag::from(tag).encode_to_vec();
        let entry = map_key(time_ms, fnv1a(&value));
        let policy = MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::DEFAULT);
        let ops = [
            maps::put(&policy, bin(action), entry, Value::Blob(value)),
            // Everything but the last 200 by index: the newest 200 stay.
            maps::remove_by_index_range_from(bin(action), -KEEP, MapReturnType::NONE.inverted()),
        ];
        let mut write = self.cluster.write_policy();
        // Profiles live as long as the namespace keeps records.
        write.expiration = aerospike::policy::Expiration::NamespaceDefault;
        self.cluster
            .client()
            .operate(&write, &key, &ops)
            .await
            .map_err(to_error)?;
        Ok(())
    }

    async fn query(
        &self,
        cookie: &str,
        action: Action,
        range: TimeRange,
        limit: usize,
    ) -> Result<Tags> {
        if limit == 0 || range.from_ms >= range.to_ms {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit.min(KEEP_PER_ACTION)).unwrap_or(KEEP);
        let key = self.cluster.key(&self.set, cookie)?;
        // The `limit` entries just below the first key at or after `to`.
        let ops = [maps::get_by_key_relative_index_range_count(
            bin(action),
            map_key(range.to_ms, 0),
            -limit,
            limit,
            MapReturnType::KEY_VALUE,
        )];
        let record = match self
            .cluster
            .client()
            .operate(&self.cluster.read_operate_policy(), &key, &ops)
            .await
        {
            Ok(record) => record,
            Err(err)
                if err.server_result_code() == Some(aerospike::ResultCode::KeyNotFoundError) =>
            {
                return Ok(Vec::new());
            }
            Err(err) => return Err(to_error(err)),
        };
        let entries = match record.results.as_deref() {
            Some([value]) => pairs(value)?,
            _ => return Err(Error::internal("aerospike: unexpected profile reply shape")),
        };
        let mut tags = Vec::with_capacity(entries.len());
        // Newest first: the server answers in key order, oldest first.
        for (entry, value) in entries.into_iter().rev() {
            let time = time_of(entry).ok_or_else(|| Error::internal("corrupt profile map key"))?;
            if time < range.from_ms {
                break;
            }
            let Value::Blob(bytes) = value else {
                return Err(Error::internal("corrupt profile map value"));
            };
            tags.push(
                pb::UserTag::decode(bytes.as_slice())
                    .map_err(|err| Error::internal(format!("corrupt profile value: {err}")))?,
            );
        }
        Ok(tags)
    }
}

/// The key-value pairs of a map read, in the order the server sent them.
fn pairs(value: &Value) -> Result<Vec<(&Value, &Value)>> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::KeyValueList(list) => Ok(list.iter().map(|(k, v)| (k, v)).collect()),
        Value::OrderedMap(map) => Ok(map.iter().collect()),
        Value::SortedMap(map) => Ok(map.iter().collect()),
        Value::List(items) => Ok(items
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect()),
        other => Err(Error::internal(format!(
            "aerospike: unexpected map reply {other:?}"
        ))),
    }
}
