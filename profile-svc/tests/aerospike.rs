//! The Aerospike profile store against a real Aerospike server (runs when
//! `AEROSPIKE_HOSTS` is set, and says so when it is not), checked answer by
//! answer against the embedded store on the same tags.

#![allow(clippy::unwrap_used)] // helpers of the tests fail the test by panicking

use allezon_aerospike::test_cluster;
use allezon_core::query::TimeRange;
use allezon_core::{Action, Device, ProductId, ProductInfo, UserTag};
use profile_svc::store::{AerospikeProfileStore, EmbeddedProfileStore, ProfileStore};

fn tag(cookie: &str, action: Action, time_ms: i64, price: i32) -> UserTag {
    UserTag {
        time_ms,
        cookie: cookie.to_owned(),
        country: "PL".into(),
        device: Device::Mobile,
        action,
        origin: format!("campaign-{}", price % 3),
        product_info: ProductInfo {
            product_id: ProductId::Text(format!("p{price}")),
            brand_id: "brand".into(),
            category_id: "category".into(),
            price,
        },
    }
}

/// SplitMix64: a deterministic stream without a dependency.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[tokio::test]
#[ignore = "needs an Aerospike server: set AEROSPIKE_HOSTS (scripts/test.sh runs it then)"]
async fn answers_like_the_embedded_store_on_out_of_order_tags() {
    let cluster = test_cluster("prof").await;
    let aerospike = AerospikeProfileStore::new(cluster);
    let dir = tempfile::tempdir().unwrap();
    let embedded =
        EmbeddedProfileStore::open(&allezon_storage::Store::open(dir.path()).unwrap()).unwrap();

    let base = 1_700_000_000_000i64;
    let mut rng = 7u64;
    let cookies = ["hot", "warm", "cold"];
    let mut appended = Vec::new();
    for i in 0..900 {
        let cookie = match next(&mut rng) % 10 {
            0..=7 => cookies[0],
            8 => cookies[1],
            _ => cookies[2],
        };
        let action = if next(&mut rng).is_multiple_of(4) {
            Action::Buy
        } else {
            Action::View
        };
        // Coarse times, out of order, many sharing a millisecond.
        let time = base + (next(&mut rng) % 500) as i64 * 7;
        let t = tag(cookie, action, time, i);
        aerospike.append(t.clone()).await.unwrap();
        embedded.append(t.clone()).await.unwrap();
        appended.push(t);
    }
    // Client retries of identical tags are stored once in both.
    for t in appended.iter().step_by(37) {
        aerospike.append(t.clone()).await.unwrap();
        embedded.append(t.clone()).await.unwrap();
    }

    let mut ranges = vec![TimeRange {
        from_ms: i64::MIN,
        to_ms: i64::MAX,
    }];
    for _ in 0..40 {
        let a = base + (next(&mut rng) % 3600) as i64;
        let b = a + (next(&mut rng) % 1200) as i64;
        ranges.push(TimeRange {
            from_ms: a,
            to_ms: b,
        });
    }
    for cookie in cookies.iter().chain(&["never-seen"]) {
        for action in [Action::View, Action::Buy] {
            for range in &ranges {
                for limit in [1, 5, 200] {
                    let got = aerospike
                        .query(cookie, action, *range, limit)
                        .await
                        .unwrap();
                    let want = embedded.query(cookie, action, *range, limit).await.unwrap();
                    assert!(got.len() <= limit);
                    assert_eq!(got, want, "{cookie} {action:?} {range:?} limit {limit}");
                }
            }
        }
    }
    // The hot cookie has more than 200 views: only the newest 200 remain.
    let all = aerospike
        .query("hot", Action::View, ranges[0], 200)
        .await
        .unwrap();
    assert_eq!(all.len(), 200);
    assert!(
        all.windows(2).all(|w| w[0].time_ms >= w[1].time_ms),
        "not newest first"
    );
}
