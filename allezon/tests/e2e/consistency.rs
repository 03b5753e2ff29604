//! Profiles and statistics never disagree about a tag: a tag sent twice is
//! stored once and counted once (also across a `kill -9`), and a tag whose
//! write failed is in neither.

use std::time::Duration;

use allezon_core::shutdown::Shutdown;
use serde_json::Value;

use crate::aggregates::{Query, query};
use crate::support::{Server, client, eventually, post_tag, profile, tag};

/// Count and sum of VIEWs in the first minute of 2022-03-01, unfiltered.
async fn first_minute(client: &reqwest::Client, server: &Server) -> (i64, i64) {
    let q = Query {
        action: "VIEW",
        from: 0,
        to: 1,
        aggregates: &["COUNT", "SUM_PRICE"],
        origin: None,
        brand: None,
        category: None,
    };
    let answer = query(client, server, &q).await;
    let row = &answer["rows"][0];
    let number = |v: &Value| v.as_str().unwrap().parse::<i64>().unwrap();
    (number(&row[2]), number(&row[3]))
}

fn views(answer: &Value) -> Vec<Value> {
    answer["views"].as_array().unwrap().clone()
}

/// The tag in both time forms a client may send: `...:05Z` and
/// `...:05.000Z` are the same instant, so the same tag.
fn both_forms(tag: &Value) -> [Value; 2] {
    let mut long = tag.clone();
    let time = tag["time"].as_str().unwrap();
    if time.len() == 20 {
        long["time"] = format!("{}.000Z", &time[..19]).into();
    }
    [tag.clone(), long]
}

#[tokio::test]
async fn a_tag_sent_again_is_stored_and_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let client = client();
    // 30 distinct VIEWs in the first minute, on whole seconds, so each has
    // a short and a long time form.
    let tags: Vec<Value> = (0..30)
        .map(|n| tag(&format!("retry_{}", n % 4), "VIEW", n * 1_000, n))
        .collect();
    let (count, sum) = (30, tags.iter().map(price).sum::<i64>());

    for round in 0..2 {
        // Every tag three times at once (a client that retried while its
        // first try was in flight), then once more in the other form.
        for t in &tags {
            let [short, long] = both_forms(t);
            let sends = (0..3).map(|_| post_tag(&client, &server, &short));
            for status in futures::future::join_all(sends).await {
                assert_eq!(status, 204);
            }
            assert_eq!(post_tag(&client, &server, &long).await, 204);
        }
        eventually(Duration::from_secs(30), || {
            let (client, server) = (&client, &server);
            async move { first_minute(client, server).await.0 >= count }
        })
        .await;
        // Past the statistics' settle time of the worker's batches.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            first_minute(&client, &server).await,
            (count, sum),
            "round {round}"
        );
        for c in 0..4 {
            let cookie = format!("retry_{c}");
            let got = views(&profile(&client, &server, &cookie, 0, 60_000, None).await);
            let want = tags
                .iter()
                .filter(|t| t["cookie"] == cookie.as_str())
                .count();
            assert_eq!(got.len(), want, "{cookie} in round {round}");
        }
        // The second round runs after a kill -9 and a restart.
        server.kill9();
        server = Server::start(dir.path());
    }
}

fn price(tag: &Value) -> i64 {
    tag["product_info"]["price"].as_i64().unwrap()
}

#[tokio::test]
async fn a_tag_whose_write_failed_is_in_neither_view() {
    let dir = tempfile::tempdir().unwrap();
    let config = allezon::Config {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_tls: Default::default(),
        max_ingest_lag_ms: 45_000,
        data: allezon_core::config::DataDirArgs {
            data_dir: dir.path().to_owned(),
        },
        admin: allezon_core::config::AdminArgs {
            admin_addr: "127.0.0.1:0".parse().unwrap(),
        },
    };
    let shutdown = Shutdown::new();
    let running = allezon::start(config, shutdown.clone()).await.unwrap();
    let server = Server::in_process(format!("http://{}", running.http_addr));
    let client = client();

    let failing: Vec<Value> = (0..5)
        .map(|n| tag("faulty", "VIEW", n * 1_000, n))
        .collect();
    running.store().inject_write_errors(failing.len() as u64);
    for t in &failing {
        let status = post_tag(&client, &server, t).await;
        assert!(status.is_server_error(), "{status}");
    }
    let good: Vec<Value> = (5..8)
        .map(|n| tag("faulty", "VIEW", n * 1_000, n))
        .collect();
    for t in &good {
        assert_eq!(post_tag(&client, &server, t).await, 204);
    }
    let want = (good.len() as i64, good.iter().map(price).sum::<i64>());
    eventually(Duration::from_secs(30), || {
        let (client, server) = (&client, &server);
        async move { first_minute(client, server).await.0 >= want.0 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(first_minute(&client, &server).await, want);
    let got = views(&profile(&client, &server, "faulty", 0, 60_000, None).await);
    assert_eq!(got.len(), good.len(), "{got:?}");
    shutdown.cancel();
    running.wait().await.unwrap();
}
