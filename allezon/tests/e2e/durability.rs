//! Acknowledged means durable: `kill -9` mid-run loses no tag that got a 204,
//! in the profiles and in the aggregates, and counts none twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::{Server, client, post_tag, profile, tag};

const COOKIES: i64 = 40;
const SENDERS: i64 = 16;

#[tokio::test]
async fn kill_9_loses_no_acknowledged_tag() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let acked_count = Arc::new(AtomicUsize::new(0));

    // Senders write until the server dies under them; each records the tags
    // it got a 204 for.
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (client, base, acked_count) =
                (client.clone(), server.base.clone(), acked_count.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                // Bounded: at most 150 tags per sender (2,400 in all), which
                // keeps every cookie below the 200-per-action trim.
                for i in 0..150i64 {
                    let n = i * SENDERS + s;
                    let t = tag(&format!("cookie_{}", n % COOKIES), "VIEW", n, n);
                    let sent = client
                        .post(format!("{base}/user_tags"))
                        .json(&t)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 204 => {
                            acked.push(n);
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                acked
            })
        })
        .collect();

    crate::support::eventually(std::time::Duration::from_secs(60), || {
        let acked_count = acked_count.clone();
        async move { acked_count.load(Ordering::Relaxed) >= 800 }
    })
    .await;
    server.kill9();

    let mut acked = Vec::new();
    for sender in senders {
        acked.extend(sender.await.unwrap());
    }
    assert!(acked.len() >= 800);

    let server = Server::start(dir.path());
    assert_eq!(
        post_tag(&client, &server, &tag("after", "BUY", 1, 1)).await,
        204
    );
    // Every tag in the profiles, acknowledged or caught in flight by the
    // kill: the statistics must count exactly these.
    let mut in_profiles = (0i64, 0i64);
    for c in 0..COOKIES {
        let cookie = format!("cookie_{c}");
        let got = profile(&client, &server, &cookie, 0, 1_000_000, Some(200)).await;
        let stored: Vec<i64> = got["views"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["product_info"]["price"].as_i64().unwrap())
            .collect();
        for n in acked.iter().filter(|n| *n % COOKIES == c) {
            let price = (n * 7919 % 100_000) - 50_000;
            assert!(
                stored.contains(&price),
                "acknowledged tag {n} of {cookie} lost"
            );
        }
        in_profiles.0 += stored.len() as i64;
        in_profiles.1 += stored.iter().sum::<i64>();
    }
    // All of them sit in the first minute (tag `n` is at `n` ms).
    let counted = || async {
        let url = server.url(
            "/aggregates?time_range=2022-03-01T00:00:00_2022-03-01T00:01:00\
             &action=VIEW&aggregates=COUNT&aggregates=SUM_PRICE",
        );
        let answer: serde_json::Value =
            client.post(url).send().await.unwrap().json().await.unwrap();
        let cell = |i: usize| {
            answer["rows"][0][i]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        };
        (cell(2), cell(3))
    };
    crate::support::eventually(std::time::Duration::from_secs(30), || async {
        counted().await.0 >= in_profiles.0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        counted().await,
        in_profiles,
        "the statistics disagree with the profiles after kill -9"
    );
    assert!(in_profiles.0 >= acked.len() as i64);
}
