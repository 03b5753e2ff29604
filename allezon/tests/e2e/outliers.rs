//! Event-time outliers: tags dated 9999 and 0001, alone and in a burst, sent
//! in the middle of a stream, must leave every other profile and minute
//! exact, before and after a restart (issue: one tag dated 9999 erased every
//! statistic, for good).

use std::time::Duration;

use serde_json::{Value, json};

use crate::aggregates::{Query, query};
use crate::support::{Server, client, eventually, expected_profile, post_tag, profile, tag};

/// Sends `tags` 20 at a time; every one must be answered 204.
async fn send_all<'a>(
    client: &reqwest::Client,
    server: &Server,
    tags: impl IntoIterator<Item = &'a Value>,
) {
    let tags: Vec<&Value> = tags.into_iter().collect();
    for chunk in tags.chunks(20) {
        let sends = chunk.iter().map(|t| post_tag(client, server, t));
        for status in futures::future::join_all(sends).await {
            assert_eq!(status, 204);
        }
    }
}

fn outlier(time: &str, n: i64) -> Value {
    let mut t = tag("outlier_cookie", "VIEW", 0, n);
    t["time"] = json!(time);
    t["product_info"]["brand_id"] = json!("brand_outlier");
    t
}

/// Every filter combination of both actions over the stream's minutes.
async fn check_statistics(client: &reqwest::Client, server: &Server, tags: &[(i64, Value)]) {
    for action in ["VIEW", "BUY"] {
        for origin in [None, Some("CAMPAIGN_3")] {
            for brand in [None, Some("brand_1")] {
                for category in [None, Some("cat_2")] {
                    let q = Query {
                        action,
                        from: 0,
                        to: 5,
                        aggregates: &["COUNT", "SUM_PRICE"],
                        origin,
                        brand,
                        category,
                    };
                    assert_eq!(
                        query(client, server, &q).await,
                        q.expected(tags),
                        "{}",
                        q.url()
                    );
                }
            }
        }
    }
}

async fn check_profiles(client: &reqwest::Client, server: &Server, tags: &[(i64, Value)]) {
    for c in 0..50 {
        let cookie = format!("c{c}");
        let mine: Vec<(i64, Value)> = tags
            .iter()
            .filter(|(_, t)| t["cookie"] == cookie.as_str())
            .cloned()
            .collect();
        assert_eq!(
            profile(client, server, &cookie, 0, 300_000, None).await,
            expected_profile(&cookie, &mine, 0, 300_000, 200),
            "{cookie}"
        );
    }
}

#[tokio::test]
async fn outliers_mid_stream_leave_every_other_answer_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let tags: Vec<(i64, Value)> = (0..1500i64)
        .map(|n| {
            let kind = if n % 4 == 0 { "BUY" } else { "VIEW" };
            (n * 200, tag(&format!("c{}", n % 50), kind, n * 200, n))
        })
        .collect();
    let (first, second) = tags.split_at(750);
    send_all(&client, &server, first.iter().map(|(_, t)| t)).await;

    // Far in the future of the server's clock: refused, naming `time`.
    for time in ["9999-12-31T23:59:59.999Z", "9999-06-01T00:00:00.000Z"] {
        let response = client
            .post(server.url("/user_tags"))
            .json(&outlier(time, 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{time}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains("time"), "{error}");
    }
    // Years before the stream, and years after it (but not after the
    // server's clock): accepted, alone and in a burst.
    let mut accepted = vec![outlier("0001-01-01T00:00:00.000Z", 2)];
    accepted.extend((0..60).map(|i| outlier(&format!("2025-06-01T00:00:{i:02}.000Z"), i)));
    accepted.extend((0..20).map(|i| outlier(&format!("0001-01-01T00:00:{i:02}.500Z"), i)));
    send_all(&client, &server, &accepted).await;
    send_all(&client, &server, second.iter().map(|(_, t)| t)).await;

    let all_views = Query {
        action: "VIEW",
        from: 0,
        to: 5,
        aggregates: &["COUNT"],
        origin: None,
        brand: None,
        category: None,
    };
    let want = all_views.expected(&tags);
    eventually(Duration::from_secs(60), || {
        let (client, want, server, q) = (&client, &want, &server, &all_views);
        async move { query(client, server, q).await == *want }
    })
    .await;
    check_statistics(&client, &server, &tags).await;
    check_profiles(&client, &server, &tags).await;

    // The accepted outliers are the newest tags there are: their own minute
    // is counted like any other.
    let newest = client
        .post(server.url(
            "/aggregates?time_range=2025-06-01T00:00:00_2025-06-01T00:01:00\
             &action=VIEW&aggregates=COUNT&brand_id=brand_outlier",
        ))
        .send()
        .await
        .unwrap();
    let newest: Value = newest.json().await.unwrap();
    assert_eq!(newest["rows"][0][3], "60", "{newest}");

    // A restart after the outliers changes nothing.
    drop(server);
    let server = Server::start(dir.path());
    check_statistics(&client, &server, &tags).await;
    check_profiles(&client, &server, &tags).await;
}
