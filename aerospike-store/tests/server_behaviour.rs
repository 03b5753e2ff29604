//! What the stores rely on from a real Aerospike server, pinned down one
//! behaviour at a time (runs when `AEROSPIKE_HOSTS` is set, and says so when
//! it is not): map ordering of blob keys, one reply per operation when
//! several touch one bin, create-only errors, filtered-out writes, TTLs, and
//! trimming by index range.

use std::time::Duration;

use aerospike::operations::{self, MapOrder, maps};
use aerospike::policy::{Expiration, RecordExistsAction};
use aerospike::{Bin, Bins, MapPolicy, MapReturnType, MapWriteFlags, ResultCode, Value};
use allezon_aerospike::{aerospike, test_cluster};

fn ordered() -> MapPolicy {
    MapPolicy::new(MapOrder::KeyOrdered, MapWriteFlags::DEFAULT)
}

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn blob_map_keys_order_bytewise_and_trimming_keeps_the_last_n() {
    let cluster = test_cluster("behave").await;
    let set = cluster.set("maps");
    let key = cluster.key(&set, "ordering").unwrap();
    let write = cluster.write_policy();
    // Inserted out of order; 0x80.. sorts after 0x7f.. only bytewise.
    for first in [0x90u8, 0x01, 0x7f, 0x80, 0x10] {
        let entry = Value::Blob(vec![first, 0, 0, 0]);
        let put = maps::put(&ordered(), "m", entry, Value::Int(i64::from(first)));
        // Keep the last 3 by index after every put.
        let trim = maps::remove_by_index_range_from("m", -3, MapReturnType::NONE.inverted());
        let record = cluster
            .client()
            .operate(&write, &key, &[put, trim])
            .await
            .unwrap();
        // One reply per operation, in order, though both touch bin `m`.
        assert_eq!(record.results.as_ref().map(Vec::len), Some(2));
    }
    let record = cluster
        .client()
        .get(&cluster.read_policy(), &key, Bins::All)
        .await
        .unwrap();
    let Some(Value::SortedMap(map)) = record.bins.get("m") else {
        panic!("expected a key-ordered map, got {:?}", record.bins.get("m"));
    };
    let firsts: Vec<i64> = map
        .values()
        .map(|v| match v {
            Value::Int(n) => *n,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(firsts, [0x7f, 0x80, 0x90]);

    // Trimming a map smaller than the bound removes nothing.
    let small = cluster.key(&set, "small").unwrap();
    let put = maps::put(&ordered(), "m", Value::Int(1), Value::Int(1));
    let trim = maps::remove_by_index_range_from("m", -200, MapReturnType::COUNT.inverted());
    let record = cluster
        .client()
        .operate(&write, &small, &[put, trim])
        .await
        .unwrap();
    assert_eq!(record.results.unwrap()[1], Value::Int(0));
}

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn increments_answer_the_new_value_and_filters_refuse_replays() {
    let cluster = test_cluster("behave").await;
    let key = cluster.key(&cluster.set("counters"), "cell").unwrap();
    let apply = |next: i64| {
        let cluster = cluster.clone();
        let key = key.clone();
        async move {
            let mut write = cluster.write_policy();
            write.expiration = Expiration::Seconds(3600);
            write.base_policy.filter_expression = Some(aerospike::expressions::or(vec![
                aerospike::expressions::not(aerospike::expressions::bin_exists("w")),
                aerospike::expressions::lt(
                    aerospike::expressions::int_bin("w"),
                    aerospike::expressions::int_val(next),
                ),
            ]));
            let ops = [
                maps::increment_value(&ordered(), "p", Value::Int(7), Value::Int(5)),
                maps::increment_value(&ordered(), "p", Value::Int(7), Value::Int(2)),
                operations::put(&Bin::new("w", Value::Int(next))),
            ];
            cluster.client().operate(&write, &key, &ops).await
        }
    };
    let record = apply(10).await.unwrap();
    // Two increments of one map key in one operate: each answers its result,
    // positionally, and the bin's entry gathers both as a MultiResult.
    assert_eq!(
        record.bins.get("p"),
        Some(&Value::MultiResult(vec![Value::Int(5), Value::Int(7)]))
    );
    assert_eq!(record.results.unwrap()[..2], [Value::Int(5), Value::Int(7)]);
    // The same batch again is filtered out and changes nothing.
    let err = apply(10).await.unwrap_err();
    assert_eq!(err.server_result_code(), Some(ResultCode::FilteredOut));
    let record = apply(11).await.unwrap();
    assert_eq!(record.results.unwrap()[1], Value::Int(14));
    // The TTL of the last write holds.
    let record = cluster
        .client()
        .get(&cluster.read_policy(), &key, Bins::All)
        .await
        .unwrap();
    let ttl = record.time_to_live().unwrap();
    assert!(
        ttl <= Duration::from_secs(3600) && ttl > Duration::from_secs(3500),
        "{ttl:?}"
    );
}

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn create_only_writes_fail_on_an_existing_record() {
    let cluster = test_cluster("behave").await;
    let key = cluster.key(&cluster.set("ids"), "name").unwrap();
    let mut create = cluster.write_policy();
    create.record_exists_action = RecordExistsAction::CreateOnly;
    let bin = |id| [Bin::new("id", Value::Int(id))];
    cluster.client().put(&create, &key, &bin(1)).await.unwrap();
    let err = cluster
        .client()
        .put(&create, &key, &bin(2))
        .await
        .unwrap_err();
    assert_eq!(err.server_result_code(), Some(ResultCode::KeyExistsError));
    let record = cluster
        .client()
        .get(&cluster.read_policy(), &key, Bins::All)
        .await
        .unwrap();
    assert_eq!(record.bins.get("id"), Some(&Value::Int(1)));
}
