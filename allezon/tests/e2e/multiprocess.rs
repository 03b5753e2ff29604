//! Multi-process mode: gateway, profile-svc, aggregate-svc, id-svc and two
//! ingest workers as separate processes, talking only over gRPC and Kafka
//! (tansu on loopback, from `scripts/test.sh`), with the embedded stores.
//! One worker is killed with SIGKILL mid-run and restarted; the answers must
//! still be exact.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::aggregates::{Query, query};
use crate::support::{Server, client, eventually, expected_profile, post_tag, profile, tag};

const BINARIES: [&str; 5] = [
    "gateway",
    "profile-svc",
    "aggregate-svc",
    "id-svc",
    "ingest-worker",
];

/// The directory holding the five binaries, built on first use: a test
/// binary of this package does not make cargo build other packages' bins.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        // target/<profile>/deps/e2e-hash → target/<profile>
        let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--bins"]);
        for bin in BINARIES {
            build.args(["-p", bin]);
        }
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let target = dir.parent().unwrap();
        let status = build
            .env("CARGO_TARGET_DIR", target)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the service binaries failed");
        dir
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(bin: &str, args: &[String]) -> Child {
    Command::new(bin_dir().join(bin))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("ALLEZON_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("start {bin}: {err}"))
}

/// Kills a child on drop, so a failing test leaves no process behind.
struct Proc(Child);

impl Proc {
    fn kill9(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_over_kafka_answer_exactly_through_a_worker_kill() {
    let Some(brokers) = event_log::test_brokers() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = |name: &str| s(dir.path().join(name).display());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let topic = format!("user-tags-{}-{nanos}", std::process::id());
    let (profile_port, aggregate_port, id_port) = (free_port(), free_port(), free_port());
    let endpoint = |port: u16| format!("http://127.0.0.1:{port}");

    let mut services = Vec::new();
    for (bin, port, dir) in [
        ("profile-svc", profile_port, "profiles"),
        ("aggregate-svc", aggregate_port, "aggregates"),
        ("id-svc", id_port, "ids"),
    ] {
        let args = [
            s("--grpc-addr"),
            format!("127.0.0.1:{port}"),
            s("--data-dir"),
            data(dir),
        ];
        services.push(Proc(spawn(bin, &args)));
    }
    let worker_args = |instance: &str, admin: u16| {
        vec![
            s("--kafka-instance-id"),
            s(instance),
            s("--kafka-brokers"),
            brokers.clone(),
            s("--kafka-topic"),
            topic.clone(),
            s("--kafka-group"),
            format!("workers-{topic}"),
            s("--kafka-create-partitions"),
            s(4),
            s("--aggregate-svc"),
            endpoint(aggregate_port),
            s("--id-svc"),
            endpoint(id_port),
            s("--admin-addr"),
            format!("127.0.0.1:{admin}"),
        ]
    };
    let mut worker_a = Proc(spawn("ingest-worker", &worker_args("a", free_port())));
    let worker_b_admin = free_port();
    let _worker_b = Proc(spawn("ingest-worker", &worker_args("b", worker_b_admin)));

    let (http_port, gateway_admin) = (free_port(), free_port());
    let gateway = spawn(
        "gateway",
        &[
            s("--http-addr"),
            format!("127.0.0.1:{http_port}"),
            s("--admin-addr"),
            format!("127.0.0.1:{gateway_admin}"),
            s("--kafka-brokers"),
            brokers.clone(),
            s("--kafka-topic"),
            topic.clone(),
            s("--kafka-create-partitions"),
            s(4),
            s("--profile-svc"),
            endpoint(profile_port),
            s("--aggregate-svc"),
            endpoint(aggregate_port),
            s("--id-svc"),
            endpoint(id_port),
            s("--data-dir"),
            data("gateway"),
        ],
    );
    let server = Server::attach(gateway, format!("http://127.0.0.1:{http_port}"));
    let client = client();
    let ready = |port: u16| {
        let client = client.clone();
        async move {
            let url = format!("http://127.0.0.1:{port}/readyz");
            matches!(client.get(url).send().await, Ok(r) if r.status() == 200)
        }
    };
    eventually(Duration::from_secs(60), || ready(gateway_admin)).await;
    eventually(Duration::from_secs(60), || ready(worker_b_admin)).await;

    // 240 tags over 6 minutes and 12 cookies; half before the kill.
    let tags: Vec<(i64, Value)> = (0..240i64)
        .map(|n| {
            let ms = (n * 1_511) % 360_000;
            let action = if n % 4 == 0 { "BUY" } else { "VIEW" };
            (ms, tag(&format!("cookie{}", n % 12), action, ms, n))
        })
        .collect();
    for (_, t) in &tags[..120] {
        assert_eq!(post_tag(&client, &server, t).await, 204, "{t}");
    }
    worker_a.kill9();
    for (_, t) in &tags[120..] {
        assert_eq!(post_tag(&client, &server, t).await, 204, "{t}");
    }
    // Restarted with its identity, the worker takes its partitions back.
    let _worker_a = Proc(spawn("ingest-worker", &worker_args("a", free_port())));

    // Profiles: exact, through the gateway.
    for c in 0..12 {
        let cookie = format!("cookie{c}");
        let of_cookie: Vec<(i64, Value)> = tags
            .iter()
            .filter(|(_, t)| t["cookie"] == cookie.as_str())
            .cloned()
            .collect();
        let got = profile(&client, &server, &cookie, 0, 360_000, None).await;
        assert_eq!(got, expected_profile(&cookie, &of_cookie, 0, 360_000, 200));
    }

    // Aggregates: once every tag is folded, exact for several filters.
    let all = Query {
        action: "VIEW",
        from: 0,
        to: 6,
        aggregates: &["COUNT", "SUM_PRICE"],
        origin: None,
        brand: None,
        category: None,
    };
    let want = all.expected(&tags);
    eventually(Duration::from_secs(60), || {
        let (client, server, want) = (&client, &server, &want);
        async move { query(client, server, &all).await == *want }
    })
    .await;
    for q in [
        Query {
            action: "BUY",
            ..all
        },
        Query {
            origin: Some("CAMPAIGN_3"),
            ..all
        },
        Query {
            brand: Some("brand_2"),
            category: Some("cat_1"),
            ..all
        },
        Query {
            action: "BUY",
            aggregates: &["SUM_PRICE"],
            origin: Some("CAMPAIGN_0"),
            brand: Some("brand_0"),
            category: Some("cat_0"),
            ..all
        },
    ] {
        assert_eq!(
            query(&client, &server, &q).await,
            q.expected(&tags),
            "{}",
            q.url()
        );
    }

    // The admin port exports what the gateway and the workers did.
    let metrics = client
        .get(format!("http://127.0.0.1:{gateway_admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("allezon_tags_total{result=\"accepted\"} 240"),
        "{metrics}"
    );
    drop(services);
}
