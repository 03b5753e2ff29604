//! Tags written from the event log (`append_logged`), on both stores: each
//! distinct tag is "first" at exactly one log position, however often the
//! log holds it and however often a batch is written again. The worker
//! counts a tag only where it is first, so this is what keeps a tag sent
//! twice from being counted twice.

#![allow(clippy::unwrap_used)] // helpers of the tests fail the test by panicking

use allezon_aerospike::test_cluster;
use allezon_core::query::TimeRange;
use allezon_core::{Action, Device, ProductId, ProductInfo, UserTag};
use allezon_proto::v1 as pb;
use profile_svc::store::{AerospikeProfileStore, EmbeddedProfileStore, Logged, ProfileStore};

fn tag(cookie: &str, time_ms: i64, price: i32) -> pb::UserTag {
    UserTag {
        time_ms,
        cookie: cookie.to_owned(),
        country: "PL".into(),
        device: Device::Pc,
        action: if price % 2 == 0 {
            Action::View
        } else {
            Action::Buy
        },
        origin: "campaign".into(),
        product_info: ProductInfo {
            product_id: ProductId::Number(i64::from(price)),
            brand_id: "brand".into(),
            category_id: "category".into(),
            price,
        },
    }
    .into()
}

fn at(tag: &pb::UserTag, partition: u32, offset: u64) -> Logged {
    Logged {
        tag: tag.clone(),
        origin: pb::TagOrigin {
            log_partition: Some(partition),
            log_offset: Some(offset),
        },
    }
}

async fn stored<S: ProfileStore>(store: &S, cookie: &str) -> usize {
    let all = TimeRange {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };
    let views = store.query(cookie, Action::View, all, 200).await.unwrap();
    let buys = store.query(cookie, Action::Buy, all, 200).await.unwrap();
    views.len() + buys.len()
}

async fn each_tag_is_first_at_one_position<S: ProfileStore>(store: &S, cookie: &str) {
    let tags: Vec<pb::UserTag> = (0..5).map(|i| tag(cookie, 1_000 + i, i as i32)).collect();
    let batch: Vec<Logged> = tags.iter().zip(10..).map(|(t, o)| at(t, 0, o)).collect();
    assert_eq!(store.append_logged(batch.clone()).await.unwrap(), [true; 5]);
    // The same batch again (a worker that crashed before counting it): the
    // tags are still first here, so they are counted, once, in the end.
    assert_eq!(store.append_logged(batch).await.unwrap(), [true; 5]);
    // The same tags further on in the log (a client retry): not first.
    let again = vec![at(&tags[1], 0, 20), at(&tags[3], 0, 21)];
    assert_eq!(store.append_logged(again).await.unwrap(), [false, false]);
    // A new tag twice in one call: first, then a duplicate; and the same
    // again on a replay of that call.
    let twice = tag(cookie, 2_000, 42);
    let call = vec![at(&twice, 0, 30), at(&twice, 0, 31), at(&tags[0], 0, 32)];
    for _ in 0..2 {
        assert_eq!(
            store.append_logged(call.clone()).await.unwrap(),
            [true, false, false]
        );
    }
    // Another partition's copy of a stored tag is not first either.
    assert_eq!(
        store.append_logged(vec![at(&twice, 1, 30)]).await.unwrap(),
        [false]
    );
    // Stored once each, and the origin stays out of the answers.
    assert_eq!(stored(store, cookie).await, 6);
    let all = TimeRange {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    };
    let views = store.query(cookie, Action::View, all, 200).await.unwrap();
    assert!(views.contains(&twice), "{views:?}");
}

#[tokio::test]
async fn embedded_store_counts_each_tag_at_one_position() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        EmbeddedProfileStore::open(&allezon_storage::Store::open(dir.path()).unwrap()).unwrap();
    each_tag_is_first_at_one_position(&store, "logged").await;
}

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn aerospike_store_counts_each_tag_at_one_position() {
    let store = AerospikeProfileStore::new(test_cluster("logged").await);
    // A cookie of its own per run: the server keeps records between runs.
    let cookie = format!(
        "logged-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    each_tag_is_first_at_one_position(&store, &cookie).await;
}
