//! A broker outage under the gateway: a tansu broker of the test's own is
//! killed with SIGKILL. Within seconds the gateway reports itself unready
//! and answers tags with 503 and `Retry-After` at once, without handing
//! them to the producer (a tag handed over might still land after its
//! client was told it failed). When the broker comes back empty, having
//! forgotten the topic and the producer's idempotent state, the gateway
//! recovers by itself.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::aggregates::{Query, query};
use crate::multiprocess::{Proc, free_port, s, spawn};
use crate::support::{
    Server, assert_profiles_exact, client, eventually, eventually_equal, post_tag_until_accepted,
    tag, tool, wait_ready,
};

/// The readiness the chart probes: the gateway's own, leaving out the
/// services behind it, which the first two tests do not run (nothing
/// listens on their ports; a tag needs only the log).
const READYZ: &str = "/readyz?exclude=profile-svc,aggregate-svc,id-svc";

fn tansu(port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    Command::new(tool("tansu"))
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu")
}

/// A broker of the test's own on `port`, once it accepts connections.
async fn listening_broker(port: u16) -> Proc {
    let broker = Proc(tansu(port));
    eventually(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    broker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_gets_fast_503s_and_an_empty_restarted_broker_is_used_again() {
    let kafka = free_port();
    let mut broker = listening_broker(kafka).await;
    let (http, admin) = (free_port(), free_port());
    // The services are not needed for tags (the log is the only write);
    // nothing listens on their ports.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let gateway = spawn(
        "gateway",
        &[
            s("--http-addr"),
            format!("127.0.0.1:{http}"),
            s("--admin-addr"),
            format!("127.0.0.1:{admin}"),
            s("--kafka-brokers"),
            format!("127.0.0.1:{kafka}"),
            s("--kafka-topic"),
            s("outage"),
            s("--kafka-create-partitions"),
            s(1),
            s("--kafka-linger-ms"),
            s(1),
            s("--profile-svc"),
            nowhere.clone(),
            s("--aggregate-svc"),
            nowhere.clone(),
            s("--id-svc"),
            nowhere,
            // No workers run here: the broker path alone is under test, so
            // the gateway must not refuse tags for the workers' lag.
            s("--max-ingest-lag-ms"),
            s(0),
        ],
    );
    let server = Server::attach(gateway, format!("http://127.0.0.1:{http}"));
    let client = client();
    let readyz = |client: reqwest::Client| async move {
        let response = client
            .get(format!("http://127.0.0.1:{admin}{READYZ}"))
            .send()
            .await;
        match response {
            Ok(r) => Some((r.status().as_u16(), r.text().await.unwrap_or_default())),
            Err(_) => None,
        }
    };
    eventually(Duration::from_secs(60), || {
        let client = client.clone();
        async move { matches!(readyz(client).await, Some((200, _))) }
    })
    .await;
    let t = tag("before-outage", "VIEW", 1_000, 1);
    assert_eq!(crate::support::post_tag(&client, &server, &t).await, 204);

    broker.kill9();
    eventually(Duration::from_secs(30), || {
        let client = client.clone();
        async move { matches!(readyz(client).await, Some((503, body)) if body.contains("kafka")) }
    })
    .await;
    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        let t = tag("during-outage", "VIEW", 2_000 + n, n);
        let started = Instant::now();
        let response = client
            .post(server.url("/user_tags"))
            .json(&t)
            .send()
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "1");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    // Reported, not asserted: timing depends on the machine.
    eprintln!("during the outage the slowest of 20 tags was answered 503 in {slowest:?}");

    // The broker comes back on the same port, empty: it forgot the topic
    // and the producer's idempotent id. The gateway creates the topic again
    // (it was told to create it) and replaces its producer, by itself.
    let _broker = Proc(tansu(kafka));
    let restarted = Instant::now();
    let mut n = 0;
    eventually(Duration::from_secs(60), || {
        n += 1;
        let (client, server) = (client.clone(), &server);
        async move {
            let t = tag("after-outage", "VIEW", 3_000 + n, n);
            let response = client.post(server.url("/user_tags")).json(&t).send().await;
            matches!(response, Ok(r) if r.status() == 204)
        }
    })
    .await;
    eprintln!(
        "tags were accepted again {:?} after the broker restarted",
        restarted.elapsed()
    );
    assert!(matches!(readyz(client.clone()).await, Some((200, _))));
    for n in 0..20 {
        let t = tag("recovered", "VIEW", 4_000 + n, n);
        assert_eq!(crate::support::post_tag(&client, &server, &t).await, 204);
    }
    let metrics = client
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rebuilds = metrics
        .lines()
        .find_map(|l| l.strip_prefix("allezon_log_producer_rebuilds_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(rebuilds.is_some_and(|n| n >= 1), "{rebuilds:?}");
}

/// A gateway and a worker started before their broker listens (a cluster
/// coming up in any order) stay up and unready, retrying, and start work by
/// themselves once the broker answers; before, both exited at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_and_a_worker_started_before_the_broker_wait_for_it() {
    let kafka = free_port();
    let brokers = format!("127.0.0.1:{kafka}");
    let (http, gateway_admin, worker_admin) = (free_port(), free_port(), free_port());
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let common = |admin: u16| {
        vec![
            s("--admin-addr"),
            format!("127.0.0.1:{admin}"),
            s("--kafka-brokers"),
            brokers.clone(),
            s("--kafka-topic"),
            s("late"),
            s("--kafka-create-partitions"),
            s(1),
            s("--profile-svc"),
            nowhere.clone(),
            s("--aggregate-svc"),
            nowhere.clone(),
            s("--id-svc"),
            nowhere.clone(),
        ]
    };
    let mut gateway_args = common(gateway_admin);
    gateway_args.extend([
        s("--http-addr"),
        format!("127.0.0.1:{http}"),
        s("--max-ingest-lag-ms"),
        s(0),
    ]);
    let gateway = spawn("gateway", &gateway_args);
    let server = Server::attach(gateway, format!("http://127.0.0.1:{http}"));
    let mut worker = Proc(spawn("ingest-worker", &common(worker_admin)));
    let client = client();
    let readyz = |admin: u16| {
        let client = client.clone();
        async move {
            match client
                .get(format!("http://127.0.0.1:{admin}{READYZ}"))
                .send()
                .await
            {
                Ok(r) => Some(r.status().as_u16()),
                Err(_) => None,
            }
        }
    };
    for admin in [gateway_admin, worker_admin] {
        eventually(Duration::from_secs(30), || async move {
            readyz(admin).await.is_some()
        })
        .await;
    }
    // Several retries' worth of waiting: both still up, and unready.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker exited");
    assert_eq!(readyz(gateway_admin).await, Some(503));
    assert_eq!(readyz(worker_admin).await, Some(503));

    let _broker = Proc(tansu(kafka));
    let started = Instant::now();
    for admin in [gateway_admin, worker_admin] {
        eventually(Duration::from_secs(60), || async move {
            readyz(admin).await == Some(200)
        })
        .await;
    }
    eprintln!(
        "both ready {:?} after the broker started",
        started.elapsed()
    );
    let t = tag("late-broker", "VIEW", 1_000, 1);
    assert_eq!(crate::support::post_tag(&client, &server, &t).await, 204);
    assert!(worker.0.try_wait().unwrap().is_none(), "the worker exited");
}

/// The harsh case end to end: the broker is killed under the five processes
/// and comes back empty (tansu keeps nothing), so the topic is created
/// again and its offsets start over below the watermarks the aggregate
/// store holds. Tags accepted after that are new ones, and must be counted
/// and shown in profiles like any other: the worker finds the log shorter
/// than its watermark and counts it from its start (`rebase_from`).
///
/// librdkafka 2.12.1 (the vendored client) can crash the worker here with
/// SIGSEGV in `rd_kafka_metadata_update_op`, on leader-discovery tags of a
/// Fetch answer that carry no topic name; its supervisor restarts it. The
/// test restarts it the same way, and says when it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_sent_to_a_broker_that_restarted_empty_are_counted() {
    let kafka = free_port();
    let mut broker = listening_broker(kafka).await;
    let brokers = format!("127.0.0.1:{kafka}");
    let dir = tempfile::tempdir().unwrap();
    let (profile_port, aggregate_port, id_port) = (free_port(), free_port(), free_port());
    let endpoint = |port: u16| format!("http://127.0.0.1:{port}");
    let mut services = Vec::new();
    for (bin, port, data) in [
        ("profile-svc", profile_port, "profiles"),
        ("aggregate-svc", aggregate_port, "aggregates"),
        ("id-svc", id_port, "ids"),
    ] {
        services.push(Proc(spawn(
            bin,
            &[
                s("--grpc-addr"),
                format!("127.0.0.1:{port}"),
                s("--data-dir"),
                s(dir.path().join(data).display()),
                s("--admin-addr"),
                s("127.0.0.1:0"),
            ],
        )));
    }
    let kafka_args = vec![
        s("--kafka-brokers"),
        brokers.clone(),
        s("--kafka-topic"),
        s("forgotten"),
        s("--kafka-create-partitions"),
        s(2),
        s("--profile-svc"),
        endpoint(profile_port),
        s("--aggregate-svc"),
        endpoint(aggregate_port),
        s("--id-svc"),
        endpoint(id_port),
    ];
    let worker_args = || {
        let mut args = kafka_args.clone();
        args.extend([
            s("--kafka-instance-id"),
            s("only"),
            s("--admin-addr"),
            s("127.0.0.1:0"),
        ]);
        args
    };
    let mut worker = Proc(spawn("ingest-worker", &worker_args()));
    let (http, admin) = (free_port(), free_port());
    let mut gateway_args = kafka_args.clone();
    gateway_args.extend([
        s("--http-addr"),
        format!("127.0.0.1:{http}"),
        s("--admin-addr"),
        format!("127.0.0.1:{admin}"),
        s("--kafka-linger-ms"),
        s(1),
    ]);
    let server = Server::attach(
        spawn("gateway", &gateway_args),
        format!("http://127.0.0.1:{http}"),
    );
    let client = client();
    wait_ready(&client, admin).await;

    let before: Vec<(i64, Value)> = (0..40i64)
        .map(|n| {
            let ms = n * 3_001;
            (ms, tag(&format!("cookie{}", n % 4), "VIEW", ms, n))
        })
        .collect();
    for (_, t) in &before {
        post_tag_until_accepted(&client, &server, t).await;
    }
    let all = Query {
        action: "VIEW",
        from: 0,
        to: 4,
        aggregates: &["COUNT", "SUM_PRICE"],
        origin: None,
        brand: None,
        category: None,
    };
    // Counted before the broker goes: an in-memory broker loses what no
    // worker has read yet, which no client of it could prevent.
    eventually_equal(Duration::from_secs(60), &all.expected(&before), || {
        query(&client, &server, &all)
    })
    .await;

    broker.kill9();
    let _broker = Proc(tansu(kafka));
    // A client that gives up after 2 s and sends again, as the clients of
    // the systems we replace do.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let after: Vec<(i64, Value)> = (0..20i64)
        .map(|n| {
            let ms = 120_000 + n * 3_001;
            (ms, tag(&format!("cookie{}", n % 4), "VIEW", ms, 100 + n))
        })
        .collect();
    let restarted = Instant::now();
    for (_, t) in &after {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match impatient
                .post(server.url("/user_tags"))
                .json(t)
                .send()
                .await
            {
                Ok(r) if r.status() == 204 => break,
                Ok(r) => assert_eq!(r.status(), 503, "{t}"),
                Err(err) => assert!(err.is_timeout(), "{err}"),
            }
            assert!(Instant::now() < deadline, "refused for 120 s: {t}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "20 tags accepted in {:?} after the broker restarted",
        restarted.elapsed()
    );

    let tags: Vec<(i64, Value)> = before.into_iter().chain(after).collect();
    eventually_equal(Duration::from_secs(120), &all.expected(&tags), || {
        if let Ok(Some(status)) = worker.0.try_wait() {
            eprintln!("the worker ended ({status}); restarting it, as its supervisor would");
            worker = Proc(spawn("ingest-worker", &worker_args()));
        }
        query(&client, &server, &all)
    })
    .await;
    eprintln!(
        "every tag counted {:?} after the broker restarted",
        restarted.elapsed()
    );
    let cookies = (0..4).map(|c| format!("cookie{c}"));
    assert_profiles_exact(&client, &server, cookies, &tags, (0, 240_000)).await;
    drop(services);
}
