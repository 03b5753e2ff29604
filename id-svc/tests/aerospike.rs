//! The Aerospike id store against a real Aerospike server (runs when
//! `AEROSPIKE_HOSTS` is set, and says so when it is not).

use std::collections::HashMap;

use allezon_aerospike::test_cluster;
use allezon_proto::v1::Dimension;
use id_svc::store::{AerospikeIdStore, IdStore};

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn ids_are_stable_per_dimension_and_unknown_names_are_zero() {
    let cluster = test_cluster("ids").await;
    let store = AerospikeIdStore::new(cluster);
    let names = vec![
        (Dimension::Brand, "a".to_owned()),
        (Dimension::Brand, "b".to_owned()),
        (Dimension::Origin, "a".to_owned()),
        (Dimension::Brand, "a".to_owned()),
    ];
    let ids = store.get_or_create(names.clone()).await.unwrap();
    assert_eq!(ids, [1, 2, 1, 1]);
    assert_eq!(store.lookup(names.clone()).await.unwrap(), ids);
    // A second store on the same sets (another process) sees the same ids.
    assert_eq!(
        store.clone().get_or_create(names).await.unwrap(),
        [1, 2, 1, 1]
    );
    assert_eq!(
        store
            .lookup(vec![(Dimension::Category, "never".to_owned())])
            .await
            .unwrap(),
        [0]
    );
    assert!(
        store
            .get_or_create(vec![(Dimension::Unspecified, "x".to_owned())])
            .await
            .is_err()
    );
}

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn concurrent_first_use_yields_one_id() {
    let cluster = test_cluster("idrace").await;
    let store = AerospikeIdStore::new(cluster);
    let tasks: Vec<_> = (0..16)
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
    let mut seen = HashMap::new();
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
    ids.dedup();
    assert_eq!(ids.len(), 20, "two names share an id: {ids:?}");
}
