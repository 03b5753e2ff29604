//! Multi-process mode: gateway, profile-svc, aggregate-svc, id-svc and two
//! ingest workers as separate processes, talking only over gRPC and Kafka
//! (tansu on loopback, from `scripts/test.sh`), with the embedded stores.
//! The gateway only appends to the log; the workers build profiles and
//! statistics from it. One worker is killed with SIGKILL mid-run and
//! restarted, some tags are sent twice, and profile-svc is stopped and
//! started again; the answers must still be exact, and the two views agree.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use crate::aggregates::{Query, query};
use crate::observability::sample;
use crate::support::{
    Server, assert_profiles_exact, client, eventually, eventually_equal, post_tag,
    post_tag_until_accepted, tag, wait_ready,
};

const BINARIES: [&str; 5] = [
    "gateway",
    "profile-svc",
    "aggregate-svc",
    "id-svc",
    "ingest-worker",
];

/// The directory holding the five binaries, built on first use: a test
/// binary of this package does not make cargo build other packages' bins.
pub(crate) fn bin_dir() -> &'static Path {
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
        // Cargo gives this test its package's variables (CARGO_MANIFEST_DIR
        // and the like). Passed on, they reach build scripts that watch them
        // (ring's does), and every build here and after it recompiled half
        // the tree: minutes of CI, spent while other tests run.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
                || [
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&name.as_ref())
            {
                build.env_remove(name.as_ref());
            }
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

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn spawn(bin: &str, args: &[String]) -> Child {
    spawn_with_env(bin, args, &[])
}

pub(crate) fn spawn_with_env(bin: &str, args: &[String], env: &[(&str, String)]) -> Child {
    Command::new(bin_dir().join(bin))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env(
            "RUST_LOG",
            // Info: the group's assignments and the services' restarts, shown
            // when a test fails (a passing test's output is not shown).
            std::env::var("ALLEZON_TEST_CHILD_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|err| panic!("start {bin}: {err}"))
}

/// Kills a child on drop, so a failing test leaves no process behind.
pub(crate) struct Proc(pub(crate) Child);

impl Proc {
    pub(crate) fn kill9(&mut self) {
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

pub(crate) fn s(v: impl ToString) -> String {
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

    let service_args = |port: u16, dir: &str| {
        [
            s("--grpc-addr"),
            format!("127.0.0.1:{port}"),
            s("--data-dir"),
            data(dir),
            s("--admin-addr"),
            s("127.0.0.1:0"),
        ]
    };
    let mut services = Vec::new();
    for (bin, port, dir) in [
        ("profile-svc", profile_port, "profiles"),
        ("aggregate-svc", aggregate_port, "aggregates"),
        ("id-svc", id_port, "ids"),
    ] {
        services.push(Proc(spawn(bin, &service_args(port, dir))));
    }
    // Dynamic group membership, not `--kafka-instance-id`: tansu 0.6 never
    // expires a static member that died, so when it led the group, the
    // group's next rebalance never completes. Seen here: the restarted
    // worker and the other one got `JoinGroup` answers naming the dead
    // member as leader, then `SyncGroup` "rebalance in progress", again and
    // again, with no partition assigned for the test's 120 s; the same with
    // the restarted worker under a new instance id. Without instance ids
    // tansu expires the dead member after the session timeout and elects a
    // live leader, as Kafka does for both kinds. (`outage.rs` runs a static
    // member through broker restarts.)
    let worker_args = |admin: u16| {
        vec![
            s("--kafka-brokers"),
            brokers.clone(),
            s("--kafka-topic"),
            topic.clone(),
            s("--kafka-group"),
            format!("workers-{topic}"),
            s("--kafka-create-partitions"),
            s(4),
            s("--profile-svc"),
            endpoint(profile_port),
            s("--aggregate-svc"),
            endpoint(aggregate_port),
            s("--id-svc"),
            endpoint(id_port),
            s("--admin-addr"),
            format!("127.0.0.1:{admin}"),
        ]
    };
    // Port 0 for restarted workers: a port picked free here could be taken
    // before the worker binds it. The first two give theirs, to be watched.
    let worker_a_admin = free_port();
    let mut worker_a = Proc(spawn("ingest-worker", &worker_args(worker_a_admin)));
    let worker_b_admin = free_port();
    let worker_b = Proc(spawn("ingest-worker", &worker_args(worker_b_admin)));

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
            // Exactness through kills is under test here, with tags sent
            // while a worker and profile-svc are down; shedding on the
            // workers' lag has tests of its own (gateway/tests/shedding.rs,
            // scripts/crash-cycles.sh).
            s("--max-ingest-lag-ms"),
            s(0),
        ],
    );
    let server = Server::attach(gateway, format!("http://127.0.0.1:{http_port}"));
    let client = client();
    wait_ready(&client, gateway_admin).await;
    wait_ready(&client, worker_b_admin).await;

    // 240 tags over 6 minutes and 12 cookies; half before the kill.
    let tags: Vec<(i64, Value)> = (0..240i64)
        .map(|n| {
            let ms = (n * 1_511) % 360_000;
            let action = if n % 4 == 0 { "BUY" } else { "VIEW" };
            (ms, tag(&format!("cookie{}", n % 12), action, ms, n))
        })
        .collect();
    // The gateway may refuse tags (503) while the workers catch up, for
    // instance before the group's first assignment: a client retries them.
    for (_, t) in &tags[..120] {
        post_tag_until_accepted(&client, &server, t).await;
    }
    // The kill comes once the group has formed, both workers holding their
    // partitions (`allezon_worker_assigned_partitions`): the test is about a
    // running group losing a member. Without this wait the kill mostly came
    // before the first assignment, and a rebalance of a running group went
    // untested.
    eventually(Duration::from_secs(60), || async {
        let mut held = 0.0;
        for admin in [worker_a_admin, worker_b_admin] {
            let url = format!("http://127.0.0.1:{admin}/metrics");
            let Ok(response) = client.get(url).send().await else {
                return false;
            };
            let metrics = response.text().await.unwrap_or_default();
            held += sample(&metrics, "allezon_worker_assigned_partitions").unwrap_or(0.0);
        }
        held == 4.0
    })
    .await;
    worker_a.kill9();
    for (_, t) in &tags[120..] {
        post_tag_until_accepted(&client, &server, t).await;
    }
    // A client that retried: the same tags again, stored and counted once.
    for (_, t) in &tags[..40] {
        post_tag_until_accepted(&client, &server, t).await;
    }
    // Restarted, the worker joins the group again, which shares the
    // partitions out anew.
    let mut workers = [
        ("a", Proc(spawn("ingest-worker", &worker_args(0)))),
        ("b", worker_b),
    ];

    // profile-svc down: tags are still accepted (the log has them), and
    // counted only once profile-svc is back, in both views at once.
    services[0].kill9();
    let outage: Vec<(i64, Value)> = (0..20)
        .map(|n| {
            let ms = 300_000 + n * 1_000;
            (ms, tag(&format!("outage{}", n % 3), "VIEW", ms, 1_000 + n))
        })
        .collect();
    // Refused ones (the workers stall without profile-svc, so the
    // gateway soon refuses tags) are sent again once it is back.
    let mut refused = Vec::new();
    for (_, t) in &outage {
        match post_tag(&client, &server, t).await.as_u16() {
            204 => {}
            503 => refused.push(t.clone()),
            status => panic!("{status} for {t}"),
        }
    }
    // The gateway says what it misses: unready, naming profile-svc, but
    // ready for a probe that leaves profile-svc out (the chart's, so that
    // it keeps answering tags and 503s instead of leaving the Service).
    let readyz = |query: &'static str| {
        let client = client.clone();
        async move {
            let url = format!("http://127.0.0.1:{gateway_admin}/readyz{query}");
            match client.get(url).send().await {
                Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(_) => None,
            }
        }
    };
    eventually(Duration::from_secs(30), || async {
        matches!(readyz("").await, Some((503, body)) if body.contains("profile-svc"))
    })
    .await;
    // Eventually, not at once: on a loaded machine the broker probe may
    // miss a beat on its own.
    eventually(Duration::from_secs(30), || async {
        readyz("?exclude=profile-svc,aggregate-svc,id-svc").await
            == Some((200, "ready\n".to_owned()))
    })
    .await;
    let status = client
        .post(
            server.url("/user_profiles/outage0?time_range=2022-03-01T00:00:00_2022-03-01T00:10:00"),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        status.is_server_error(),
        "a profile answered without profile-svc: {status}"
    );
    services[0] = Proc(spawn(
        "profile-svc",
        &service_args(profile_port, "profiles"),
    ));
    for t in &refused {
        post_tag_until_accepted(&client, &server, t).await;
    }
    eventually(Duration::from_secs(60), || async {
        matches!(readyz("").await, Some((200, _)))
    })
    .await;
    let tags: Vec<(i64, Value)> = tags.into_iter().chain(outage).collect();

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
    // Generous: a restarted worker and a restarted profile-svc both have to
    // be picked up, on a shared 2-core machine.
    // A worker that stops itself (stuck or stalled: see ingest-worker's
    // watchdog) is restarted here, as its supervisor would, and said so.
    eventually_equal(Duration::from_secs(120), &want, || {
        for (instance, worker) in &mut workers {
            if let Ok(Some(status)) = worker.0.try_wait() {
                eprintln!("worker {instance} ended ({status}); restarting it");
                *worker = Proc(spawn("ingest-worker", &worker_args(0)));
            }
        }
        query(&client, &server, &all)
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

    // Profiles: exact, through the gateway, now that the workers have read
    // every tag (the aggregates above say so).
    let cookies = (0..12)
        .map(|c| format!("cookie{c}"))
        .chain((0..3).map(|c| format!("outage{c}")));
    assert_profiles_exact(&client, &server, cookies, &tags, (0, 360_000)).await;

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
        metrics.contains("allezon_tags_total{result=\"accepted\"} 300"),
        "{metrics}"
    );
    drop(services);
}
