//! Use cases 1 and 2: tags in, profiles out, against a reference model.

use serde_json::json;

use crate::support::{Server, client, expected_profile, post_tag, profile, tag};

#[tokio::test]
async fn profiles_match_the_model_with_out_of_order_tags() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();

    // Two cookies; 260 views and 30 buys for the first, sent in a scrambled
    // time order so that the server must sort, not append.
    let mut sent = Vec::new();
    for i in 0..290i64 {
        let ms = (i * 7919) % 290 * 10;
        let action = if i % 10 == 3 { "BUY" } else { "VIEW" };
        let t = tag("cookie_a", action, ms, i);
        assert_eq!(post_tag(&client, &server, &t).await, 204);
        sent.push((ms, t));
    }
    let other = tag("cookie_b", "VIEW", 5, 1);
    assert_eq!(post_tag(&client, &server, &other).await, 204);

    for (from, to, limit) in [
        (0, 3000, None),
        (0, 3000, Some(5)),
        (0, 3000, Some(1000)),
        (100, 1234, None),
        (1230, 1231, None),
        (1230, 1240, None),
        (0, 10, Some(0)),
        (2000, 2000, None),
    ] {
        let got = profile(&client, &server, "cookie_a", from, to, limit).await;
        let want = expected_profile("cookie_a", &sent, from, to, limit.unwrap_or(200));
        assert_eq!(got, want, "range {from}..{to} limit {limit:?}");
    }
    let b = profile(&client, &server, "cookie_b", 0, 10, None).await;
    assert_eq!(b, expected_profile("cookie_b", &[(5, other)], 0, 10, 200));
    let none = profile(&client, &server, "nobody", 0, 10, None).await;
    assert_eq!(none, json!({"cookie": "nobody", "views": [], "buys": []}));
}

#[tokio::test]
async fn debug_bodies_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let t = tag("c", "BUY", 1000, 2);
    assert_eq!(post_tag(&client, &server, &t).await, 204);
    let wrong = json!({"cookie": "c", "views": [t], "buys": []});
    let url =
        server.url("/user_profiles/c?time_range=2022-03-01T00:00:00.000_2022-03-01T00:00:02.000");
    let got: serde_json::Value = client
        .post(url)
        .json(&wrong)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, expected_profile("c", &[(1000, t)], 0, 2000, 200));
}

#[tokio::test]
async fn the_answer_reproduces_the_tag_field_for_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let body = r#"{"time":"2022-03-22T12:15:00.000Z","cookie":"c8d2f1a0b3e4d5c6f7a8","country":"PL","device":"PC","action":"VIEW","origin":"CAMPAIGN_417","product_info":{"product_id":"prod_123456","brand_id":"brand_12","category_id":"cat_5","price":12345}}"#;
    let status = client
        .post(server.url("/user_tags"))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let text = client
        .post(server.url("/user_profiles/c8d2f1a0b3e4d5c6f7a8?time_range=2022-03-22T12:15:00.000_2022-03-22T12:15:00.001"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        format!(r#"{{"cookie":"c8d2f1a0b3e4d5c6f7a8","views":[{body}],"buys":[]}}"#)
    );
}
