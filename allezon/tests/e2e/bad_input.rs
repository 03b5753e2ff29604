//! Bad input gets a 4xx with a JSON error naming the field, and stores
//! nothing.

use serde_json::{Value, json};

use crate::support::{Server, client, profile, tag};

fn with(mut base: Value, path: &[&str], value: Value) -> String {
    let mut slot = &mut base;
    for key in &path[..path.len() - 1] {
        slot = &mut slot[*key];
    }
    slot[path[path.len() - 1]] = value;
    base.to_string()
}

fn without(mut base: Value, path: &[&str]) -> String {
    let mut slot = &mut base;
    for key in &path[..path.len() - 1] {
        slot = &mut slot[*key];
    }
    slot.as_object_mut().unwrap().remove(path[path.len() - 1]);
    base.to_string()
}

#[tokio::test]
async fn bad_tags_are_refused_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let good = tag("victim", "VIEW", 1000, 2);

    let cases: Vec<(String, &str)> = vec![
        (with(good.clone(), &["device"], json!("FRIDGE")), "device"),
        (with(good.clone(), &["action"], json!("CLICK")), "action"),
        (
            with(
                good.clone(),
                &["product_info", "price"],
                json!(2_147_483_648i64),
            ),
            "price",
        ),
        (
            with(
                good.clone(),
                &["product_info", "price"],
                json!(-2_147_483_649i64),
            ),
            "price",
        ),
        (
            with(good.clone(), &["product_info", "price"], json!("12")),
            "price",
        ),
        (
            with(good.clone(), &["time"], json!("2022-03-01 00:00:01")),
            "time",
        ),
        (
            with(good.clone(), &["time"], json!("2022-02-30T00:00:01.000Z")),
            "time",
        ),
        (
            with(good.clone(), &["product_info", "product_id"], json!(1.5)),
            "product_id",
        ),
        (with(good.clone(), &["cookie"], json!("")), "cookie"),
        (
            with(good.clone(), &["cookie"], json!("x".repeat(300))),
            "cookie",
        ),
        (without(good.clone(), &["country"]), "country"),
        (
            without(good.clone(), &["product_info", "category_id"]),
            "category_id",
        ),
        ("{\"time\":".to_owned(), "body"),
        ("[]".to_owned(), "body"),
        ("x".repeat(100_000), "body"),
    ];
    for (body, field) in cases {
        let response = client
            .post(server.url("/user_tags"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let error: Value = response.json().await.unwrap();
        assert!(status.is_client_error(), "{status} for {body:.80}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{message:?} does not name {field} ({body:.80})"
        );
    }
    let stored = profile(&client, &server, "victim", 0, 10_000, None).await;
    assert_eq!(stored, json!({"cookie": "victim", "views": [], "buys": []}));
}

#[tokio::test]
async fn bad_queries_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let client = client();
    let range = "time_range=2022-03-01T00:00:00.000_2022-03-01T00:00:01.000";
    for (path, field) in [
        ("/user_profiles/c".to_owned(), "time_range"),
        (
            "/user_profiles/c?time_range=2022-03-01T00:00:00.000".to_owned(),
            "time_range",
        ),
        (
            "/user_profiles/c?time_range=2022-03-01T00:00:02.000_2022-03-01T00:00:01.000"
                .to_owned(),
            "time_range",
        ),
        (
            "/user_profiles/c?time_range=yesterday_today".to_owned(),
            "time_range",
        ),
        (format!("/user_profiles/c?{range}&limit=-1"), "limit"),
        (format!("/user_profiles/c?{range}&limit=many"), "limit"),
        (
            format!("/user_profiles/{}?{range}", "x".repeat(300)),
            "cookie",
        ),
    ] {
        let response = client.post(server.url(&path)).send().await.unwrap();
        let status = response.status();
        let error: Value = response.json().await.unwrap();
        assert!(status.is_client_error(), "{status} for {path}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(field),
            "{message:?} does not name {field} ({path})"
        );
    }
    for (method, path, status) in [
        (reqwest::Method::GET, "/user_tags", 405),
        (reqwest::Method::POST, "/elsewhere", 404),
    ] {
        let response = client
            .request(method, server.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].is_string());
    }
}

/// Slow clients cannot hold the server: a connection that never finishes
/// its headers is closed, and a body that trickles in gets a 4xx naming the
/// body; then the server still answers. The bounds here are generous (the
/// limits are 10 s for headers, 2 s for a body): they check that the server
/// lets go, not how fast.
#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let addr = server.base.trim_start_matches("http://").to_owned();

    // Slowloris: a request line and one header, then nothing.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /user_tags HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "a connection with unfinished headers was kept open"
    );

    // A body announced at 300 bytes, of which 10 arrive.
    let mut trickle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    trickle
        .write_all(
            b"POST /user_tags HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 300\r\n\r\n{\"time\":\"",
        )
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(Duration::from_secs(15), trickle.read(&mut answer))
        .await
        .expect("a trickling body was waited for without end")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(answer.contains("body"), "{answer}");

    let client = client();
    let t = tag("after-slow", "VIEW", 1_000, 1);
    assert_eq!(crate::support::post_tag(&client, &server, &t).await, 204);
}
