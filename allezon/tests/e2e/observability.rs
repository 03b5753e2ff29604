//! What an operator sees: the admin port of the all-in-one (`/healthz`,
//! `/readyz`, `/metrics` checked by the real `promtool`), and every gRPC
//! service answering the real `grpcurl` (reflection, a call of each method,
//! health), on the all-in-one and on each standalone service binary.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::multiprocess::{Proc, free_port, spawn};
use crate::support::{Server, client, eventually, post_tag, tag, tool};

/// The value of the one sample named exactly `series` (with its labels).
pub(crate) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) async fn scrape(client: &reqwest::Client, admin: &str) -> String {
    let response = client.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

pub(crate) fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}"
    );
}

#[tokio::test]
async fn the_admin_port_reports_health_and_metrics_that_move_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let admin = server
        .admin
        .clone()
        .expect("the admin port is on by default");
    let client = client();
    for path in ["/healthz", "/readyz"] {
        let response = client.get(format!("{admin}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    // The admin routes are not on the public port.
    let public = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);

    let before = scrape(&client, &admin).await;
    promtool_check(&before);
    let tags_204 =
        "allezon_http_requests_total{route=\"/user_tags\",method=\"POST\",status=\"204\"}";
    assert_eq!(sample(&before, tags_204), None);

    for n in 0..40 {
        let t = tag(&format!("m{}", n % 4), "VIEW", n * 100, n);
        assert_eq!(post_tag(&client, &server, &t).await, 204);
    }
    let bad = client
        .post(server.url("/user_tags"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let profile =
        client
            .post(server.url(
                "/user_profiles/m1?time_range=2022-03-01T00:00:00.000_2022-03-01T00:01:00.000",
            ))
            .send()
            .await
            .unwrap();
    assert_eq!(profile.status(), 200);

    // The worker applies in the background: wait for its batches.
    eventually(Duration::from_secs(20), || {
        let client = client.clone();
        let admin = admin.clone();
        async move {
            let m = scrape(&client, &admin).await;
            sample(&m, "allezon_worker_records_total") == Some(40.0)
        }
    })
    .await;
    let after = scrape(&client, &admin).await;
    promtool_check(&after);
    for (series, at_least) in [
        (tags_204, 40.0),
        (
            "allezon_http_requests_total{route=\"/user_tags\",method=\"POST\",status=\"400\"}",
            1.0,
        ),
        (
            "allezon_http_request_duration_seconds_count{route=\"/user_profiles/{cookie}\"}",
            1.0,
        ),
        ("allezon_tags_total{result=\"accepted\"}", 40.0),
        ("allezon_store_fsync_duration_seconds_count", 1.0),
        ("allezon_store_fsync_writers_sum", 40.0),
        (
            "allezon_log_produce_duration_seconds_count{log=\"embedded\"}",
            40.0,
        ),
        (
            "allezon_store_operation_duration_seconds_count{store=\"aggregates\",operation=\"apply\"}",
            1.0,
        ),
        (
            "allezon_store_operation_duration_seconds_count{store=\"profiles\",operation=\"query\"}",
            1.0,
        ),
        ("allezon_worker_batches_total", 1.0),
        ("allezon_worker_batch_size_records_sum", 40.0),
        ("allezon_worker_fold_duration_seconds_count", 1.0),
        ("allezon_worker_apply_duration_seconds_count", 1.0),
        (
            "allezon_worker_id_cache_lookups_total{result=\"miss\"}",
            1.0,
        ),
        ("allezon_aggregate_cells_written_total", 1.0),
        ("process_resident_memory_bytes", 1.0),
        ("process_open_fds", 1.0),
    ] {
        let value = sample(&after, series).unwrap_or_else(|| panic!("{series} missing:\n{after}"));
        assert!(
            value >= at_least,
            "{series} = {value}, expected ≥ {at_least}"
        );
    }
    assert_eq!(
        sample(
            &after,
            "allezon_worker_consumer_lag_records{partition=\"0\"}"
        ),
        Some(0.0)
    );
    assert_eq!(sample(&after, "allezon_http_requests_in_flight"), Some(0.0));
    // The all-in-one's log has one partition, and its one worker holds it.
    assert_eq!(
        sample(&after, "allezon_worker_assigned_partitions"),
        Some(1.0)
    );
}

/// `grpcurl -plaintext FLAGS ADDR VERB…`.
fn grpcurl(addr: &str, flags: &[&str], verb: &[&str]) -> String {
    let out = Command::new(tool("grpcurl"))
        .arg("-plaintext")
        .args(flags)
        .arg(addr)
        .args(verb)
        .output()
        .unwrap();
    let args = [flags, verb].concat();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcurl {args:?} {addr}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn call(addr: &str, method: &str, body: &str) -> Value {
    serde_json::from_str(&grpcurl(addr, &["-d", body], &[method])).unwrap()
}

/// Reflection (list, describe), one call of each method of `services`, and
/// the health of each, as an operator runs them with grpcurl 1.8 (which
/// speaks the v1alpha reflection protocol only).
fn check_services(addr: &str, services: &[&str]) {
    let listed = grpcurl(addr, &[], &["list"]);
    for service in services {
        assert!(listed.contains(service), "{service} not listed: {listed}");
        let described = grpcurl(addr, &[], &["describe", service]);
        assert!(described.contains("rpc "), "{described}");
        let health = call(
            addr,
            "grpc.health.v1.Health/Check",
            &format!(r#"{{"service":"{service}"}}"#),
        );
        assert_eq!(health["status"], "SERVING", "{service}");
    }
    assert_eq!(
        call(addr, "grpc.health.v1.Health/Check", "{}")["status"],
        "SERVING"
    );
    for service in services {
        match *service {
            "allezon.v1.IdService" => {
                let names = r#"{"names":[{"dimension":"DIMENSION_BRAND","name":"grpcurl_brand"}]}"#;
                let created = call(addr, "allezon.v1.IdService/GetOrCreateIds", names);
                let id = created["ids"][0].as_u64().expect("an id");
                let looked_up = call(addr, "allezon.v1.IdService/LookupIds", names);
                assert_eq!(looked_up["ids"][0].as_u64(), Some(id));
            }
            "allezon.v1.ProfileService" => {
                // A partition no log of these servers has, so the tag
                // cannot collide with one a worker stores.
                let tag = r#"{"tags":[{"tag":{"time_ms":"1646092800000","cookie":"grpcurl","country":"PL",
                    "device":"DEVICE_PC","action":"ACTION_BUY","origin":"o",
                    "product_info":{"product_id_number":"7","brand_id":"b","category_id":"c","price":5}},
                    "partition":77,"offset":"3"}]}"#;
                let appended = call(addr, "allezon.v1.ProfileService/AppendTags", tag);
                assert_eq!(appended["first"], serde_json::json!([true]));
                let profile = call(
                    addr,
                    "allezon.v1.ProfileService/GetProfile",
                    r#"{"cookie":"grpcurl","from_ms":"1646092800000","to_ms":"1646092800001","limit":10}"#,
                );
                assert_eq!(profile["buys"][0]["cookie"], "grpcurl", "{profile}");
            }
            "allezon.v1.AggregateService" => {
                let minute = 27_434_880; // 2022-03-01T00:00 in minutes
                let packed = (1u64 << 48) | 5;
                let applied = call(
                    addr,
                    "allezon.v1.AggregateService/ApplyDeltas",
                    &format!(
                        r#"{{"partition":77,"start_offset":"0","next_offset":"1","deltas":[{{"key":{{"action":"ACTION_BUY","minute":"{minute}"}},"packed":"{packed}"}}]}}"#
                    ),
                );
                assert_eq!(applied["applied"], true, "{applied}");
                let marks = call(
                    addr,
                    "allezon.v1.AggregateService/GetWatermarks",
                    r#"{"partitions":[77]}"#,
                );
                assert_eq!(marks["nextOffsets"], serde_json::json!(["1"]), "{marks}");
                let totals = call(
                    addr,
                    "allezon.v1.AggregateService/QueryAggregates",
                    &format!(
                        r#"{{"action":"ACTION_BUY","from_minute":"{minute}","to_minute":"{}"}}"#,
                        minute + 1
                    ),
                );
                assert_eq!(totals["minutes"][0]["count"], "1", "{totals}");
                assert_eq!(totals["minutes"][0]["sum"], "5", "{totals}");
            }
            other => panic!("no calls for {other}"),
        }
    }
}

const SERVICES: [(&str, &str); 3] = [
    ("profile-svc", "allezon.v1.ProfileService"),
    ("aggregate-svc", "allezon.v1.AggregateService"),
    ("id-svc", "allezon.v1.IdService"),
];

#[tokio::test]
async fn grpcurl_lists_describes_calls_and_health_checks_the_all_in_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let addr = server.grpc.clone().expect("the grpc address");
    tokio::task::spawn_blocking(move || check_services(&addr, &SERVICES.map(|(_, s)| s)))
        .await
        .unwrap();
}

#[tokio::test]
async fn grpcurl_lists_describes_calls_and_health_checks_each_service_binary() {
    let dir = tempfile::tempdir().unwrap();
    for (bin, service) in SERVICES {
        let port = free_port();
        let data = dir.path().join(bin);
        let _proc = Proc(spawn(
            bin,
            &[
                "--grpc-addr".into(),
                format!("127.0.0.1:{port}"),
                "--data-dir".into(),
                data.display().to_string(),
                "--admin-addr".into(),
                "127.0.0.1:0".into(),
            ],
        ));
        let addr = format!("127.0.0.1:{port}");
        eventually(Duration::from_secs(30), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
        tokio::task::spawn_blocking(move || check_services(&addr, &[service]))
            .await
            .unwrap();
    }
}

/// A store service started while Aerospike does not answer stays up: its
/// gRPC port answers, the whole server is alive (health `""` SERVING), its
/// service is not ready (NOT_SERVING, `/readyz` 503 naming `aerospike`),
/// and calls fail with UNAVAILABLE, which callers retry; it keeps trying to
/// connect in the background. No Aerospike server is needed to check this.
#[tokio::test]
async fn a_store_service_waits_unready_for_an_unreachable_aerospike() {
    // A port nothing listens on.
    let aerospike = free_port();
    let (port, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Proc(spawn(
        "profile-svc",
        &[
            "--grpc-addr".into(),
            format!("127.0.0.1:{port}"),
            "--admin-addr".into(),
            format!("127.0.0.1:{admin}"),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--aerospike-hosts".into(),
            format!("127.0.0.1:{aerospike}"),
        ],
    ));
    let addr = format!("127.0.0.1:{port}");
    eventually(Duration::from_secs(30), || {
        let addr = addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
    })
    .await;
    let client = client();
    let readyz = client
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(readyz.status(), 503);
    assert!(readyz.text().await.unwrap().contains("aerospike"));
    let checked = tokio::task::spawn_blocking(move || {
        let alive = call(&addr, "grpc.health.v1.Health/Check", "{}");
        let ready = call(
            &addr,
            "grpc.health.v1.Health/Check",
            r#"{"service":"allezon.v1.ProfileService"}"#,
        );
        let out = Command::new(tool("grpcurl"))
            .args([
                "-plaintext",
                "-d",
                r#"{"cookie":"c","from_ms":"0","to_ms":"1","limit":1}"#,
            ])
            .arg(&addr)
            .arg("allezon.v1.ProfileService/GetProfile")
            .output()
            .unwrap();
        (
            alive,
            ready,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    assert_eq!(checked.0["status"], "SERVING");
    assert_eq!(checked.1["status"], "NOT_SERVING");
    assert!(checked.2.contains("Unavailable"), "{}", checked.2);
    // Still up a few seconds later, retrying.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(proc.0.try_wait().unwrap().is_none(), "profile-svc exited");
}
