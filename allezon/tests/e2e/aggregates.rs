//! Use case 3: per-minute aggregates through the event log, the worker and
//! aggregate-svc, checked against a naive model.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Server, client, eventually, post_tag, tag};

/// Query-string minute: `2022-03-01T00:MM:00`.
pub fn minute(m: i64) -> String {
    format!("2022-03-01T{:02}:{:02}:00", m / 60, m % 60)
}

#[derive(Clone, Copy)]
pub struct Query<'a> {
    pub action: &'a str,
    pub from: i64,
    pub to: i64,
    pub aggregates: &'a [&'a str],
    pub origin: Option<&'a str>,
    pub brand: Option<&'a str>,
    pub category: Option<&'a str>,
}

impl Query<'_> {
    pub fn url(&self) -> String {
        let mut url = format!(
            "/aggregates?time_range={}_{}&action={}",
            minute(self.from),
            minute(self.to),
            self.action
        );
        for a in self.aggregates {
            url.push_str(&format!("&aggregates={a}"));
        }
        for (key, value) in [
            ("origin", self.origin),
            ("brand_id", self.brand),
            ("category_id", self.category),
        ] {
            if let Some(v) = value {
                url.push_str(&format!("&{key}={v}"));
            }
        }
        url
    }

    /// The SQL of the contract, evaluated over `tags` by brute force.
    pub fn expected(&self, tags: &[(i64, Value)]) -> Value {
        let mut columns = vec!["1m_bucket", "action"];
        let filters: Vec<(&str, &str, Vec<&str>)> = [
            ("origin", self.origin, vec!["origin"]),
            ("brand_id", self.brand, vec!["product_info", "brand_id"]),
            (
                "category_id",
                self.category,
                vec!["product_info", "category_id"],
            ),
        ]
        .into_iter()
        .filter_map(|(name, value, path)| value.map(|v| (name, v, path)))
        .collect();
        columns.extend(filters.iter().map(|f| f.0));
        columns.extend(
            self.aggregates
                .iter()
                .map(|a| if *a == "COUNT" { "count" } else { "sum_price" }),
        );
        let rows: Vec<Value> = (self.from..self.to)
            .map(|m| {
                let (mut count, mut sum) = (0i64, 0i64);
                for (ms, t) in tags {
                    let field = |path: &Vec<&str>| {
                        path.iter()
                            .fold(t, |v, k| &v[*k])
                            .as_str()
                            .unwrap()
                            .to_owned()
                    };
                    if ms / 60_000 == m
                        && t["action"] == self.action
                        && filters.iter().all(|(_, v, path)| field(path) == *v)
                    {
                        count += 1;
                        sum += t["product_info"]["price"].as_i64().unwrap();
                    }
                }
                let mut row = vec![json!(minute(m)), json!(self.action)];
                row.extend(filters.iter().map(|f| json!(f.1)));
                row.extend(self.aggregates.iter().map(|a| {
                    json!(if *a == "COUNT" {
                        count.to_string()
                    } else {
                        sum.to_string()
                    })
                }));
                Value::Array(row)
            })
            .collect();
        json!({ "columns": columns, "rows": rows })
    }
}

pub async fn query(client: &reqwest::Client, server: &Server, q: &Query<'_>) -> Value {
    let response = client.post(server.url(&q.url())).send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", q.url());
    response.json().await.unwrap()
}

#[tokio::test]
async fn aggregates_match_the_model_for_every_filter_combination() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    // 1,500 tags over minutes 0..5, one every 200 ms, sent 20 at a time.
    let tags: Vec<(i64, Value)> = (0..1500i64)
        .map(|n| {
            (
                n * 200,
                tag(
                    &format!("c{}", n % 50),
                    if n % 4 == 0 { "BUY" } else { "VIEW" },
                    n * 200,
                    n,
                ),
            )
        })
        .collect();
    for chunk in tags.chunks(20) {
        let sends = chunk.iter().map(|(_, t)| post_tag(&client, &server, t));
        for status in futures::future::join_all(sends).await {
            assert_eq!(status, 204);
        }
    }

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
        let (client, want) = (&client, &want);
        let server = &server;
        let all_views = &all_views;
        async move { query(client, server, all_views).await == *want }
    })
    .await;

    let mut checked = 0;
    for action in ["VIEW", "BUY"] {
        for origin in [None, Some("CAMPAIGN_3")] {
            for brand in [None, Some("brand_1")] {
                for category in [None, Some("cat_2")] {
                    for (from, to, aggregates) in [
                        (0, 5, &["COUNT", "SUM_PRICE"][..]),
                        (2, 3, &["SUM_PRICE"][..]),
                        (4, 14, &["SUM_PRICE", "COUNT"][..]),
                    ] {
                        let q = Query {
                            action,
                            from,
                            to,
                            aggregates,
                            origin,
                            brand,
                            category,
                        };
                        assert_eq!(
                            query(&client, &server, &q).await,
                            q.expected(&tags),
                            "{}",
                            q.url()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 48);

    // A filter value never seen gives zero rows, not an error; a range past
    // ten minutes works too.
    let unknown = Query {
        action: "BUY",
        from: 0,
        to: 90,
        aggregates: &["COUNT"],
        origin: None,
        brand: Some("no_such_brand"),
        category: None,
    };
    assert_eq!(
        query(&client, &server, &unknown).await,
        unknown.expected(&tags)
    );

    // The answers survive a restart on the same data directory.
    drop(server);
    let server = Server::start(dir.path());
    let q = Query {
        action: "VIEW",
        from: 0,
        to: 5,
        aggregates: &["COUNT", "SUM_PRICE"],
        origin: Some("CAMPAIGN_3"),
        brand: None,
        category: None,
    };
    assert_eq!(query(&client, &server, &q).await, q.expected(&tags));
}

#[tokio::test]
async fn bad_aggregate_queries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let range = "time_range=2022-03-01T00:00:00_2022-03-01T00:02:00";
    for (path, field) in [
        (format!("/aggregates?{range}&aggregates=COUNT"), "action"),
        (format!("/aggregates?{range}&action=CLICK&aggregates=COUNT"), "action"),
        (format!("/aggregates?{range}&action=BUY"), "aggregates"),
        (format!("/aggregates?{range}&action=BUY&aggregates=MAX"), "aggregates"),
        ("/aggregates?time_range=2022-03-01T00:00:30_2022-03-01T00:02:00&action=BUY&aggregates=COUNT".to_owned(), "time_range"),
        ("/aggregates?time_range=2022-03-01T00:00:00_2022-03-03T00:00:00&action=BUY&aggregates=COUNT".to_owned(), "time_range"),
        ("/aggregates?action=BUY&aggregates=COUNT".to_owned(), "time_range"),
    ] {
        let response = client.post(server.url(&path)).send().await.unwrap();
        let status = response.status();
        let error: Value = response.json().await.unwrap();
        assert!(status.is_client_error(), "{status} for {path}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{message:?} does not name {field} ({path})");
    }
}
