//! The Kafka event log against a real Kafka-protocol broker (tansu on
//! loopback, started by `scripts/test.sh`, which exports
//! `ALLEZON_TEST_KAFKA_BROKERS`).

#![allow(clippy::unwrap_used)] // helpers of the tests fail the test by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use allezon_core::trace::Carried;
use event_log::{EventLog, KafkaConfig, KafkaConsumer, KafkaLog, LogConsumer, Record};

fn config(brokers: String, topic: &str, partitions: u32) -> KafkaConfig {
    KafkaConfig {
        partitions,
        ..KafkaConfig::new(brokers, topic)
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// Polls until `want` records arrived or `deadline` passes.
async fn drain(consumer: &mut KafkaConsumer, want: usize, deadline: Duration) -> Vec<Record> {
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < want && start.elapsed() < deadline {
        out.extend(
            consumer
                .poll(1000, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn produced_records_come_back_in_key_order_with_their_trace_context() {
    let Some(brokers) = event_log::test_brokers() else {
        return;
    };
    let config = config(brokers, &unique("log"), 3);
    config.ensure_topic().await.unwrap();
    // Creating it again is not an error.
    config.ensure_topic().await.unwrap();
    let log = KafkaLog::new(&config).unwrap();

    let mut positions = BTreeMap::<String, Vec<(u32, u64)>>::new();
    for i in 0..60u32 {
        let key = format!("cookie-{}", i % 7);
        let position = log
            .append(
                key.as_bytes(),
                i.to_be_bytes().to_vec(),
                &Carried {
                    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    tracestate: "vendor=x".into(),
                },
            )
            .await
            .unwrap();
        positions
            .entry(key)
            .or_default()
            .push((position.partition, position.offset));
    }
    // One key, one partition, increasing offsets: the order of a cookie's tags.
    for (key, at) in &positions {
        assert!(
            at.iter().all(|(p, _)| *p == at[0].0),
            "{key} spread over partitions"
        );
        assert!(at.windows(2).all(|w| w[0].1 < w[1].1), "{key} out of order");
    }

    let mut consumer = KafkaConsumer::new(&config, &unique("group")).unwrap();
    let records = drain(&mut consumer, 60, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 60);
    assert_eq!(consumer.assignment(), vec![0, 1, 2]);
    let payloads: BTreeSet<u32> = records
        .iter()
        .map(|r| u32::from_be_bytes(r.payload.as_slice().try_into().unwrap()))
        .collect();
    assert_eq!(payloads, (0..60).collect());
    assert!(records.iter().all(|r| r.trace
        == Carried {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: "vendor=x".into(),
        }));
}

#[tokio::test]
async fn commits_and_seeks_position_the_group() {
    let Some(brokers) = event_log::test_brokers() else {
        return;
    };
    let config = config(brokers, &unique("commit"), 1);
    config.ensure_topic().await.unwrap();
    let log = KafkaLog::new(&config).unwrap();
    for i in 0..20u8 {
        log.append(b"k", vec![i], &Carried::default())
            .await
            .unwrap();
    }
    let group = unique("group");
    {
        let mut consumer = KafkaConsumer::new(&config, &group).unwrap();
        let records = drain(&mut consumer, 20, Duration::from_secs(30)).await;
        assert_eq!(records.len(), 20);
        let first = records[0].offset;
        consumer.commit(0, first + 12).await.unwrap();
        // Seeking back re-reads from there.
        consumer.seek(0, first + 5).unwrap();
        let again = drain(&mut consumer, 15, Duration::from_secs(30)).await;
        assert_eq!(again.first().map(|r| r.payload[0]), Some(5));
        assert_eq!(again.len(), 15);
        // Let the asynchronous commit land before leaving the group.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A new member of the group starts at the commit.
    let mut consumer = KafkaConsumer::new(&config, &group).unwrap();
    let rest = drain(&mut consumer, 8, Duration::from_secs(30)).await;
    assert_eq!(
        rest.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
        (12..20).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn two_members_of_a_group_split_the_partitions() {
    let Some(brokers) = event_log::test_brokers() else {
        return;
    };
    let config = config(brokers, &unique("split"), 4);
    config.ensure_topic().await.unwrap();
    let group = unique("group");
    let mut a = KafkaConsumer::new(&config, &group).unwrap();
    let mut b = KafkaConsumer::new(&config, &group).unwrap();
    let log = KafkaLog::new(&config).unwrap();
    let start = Instant::now();
    // Keep both polling (rebalances happen inside polls) until the group has
    // settled on a split of all four partitions.
    loop {
        log.append(unique("k").as_bytes(), vec![1], &Carried::default())
            .await
            .unwrap();
        a.poll(100, Duration::from_millis(100)).await.unwrap();
        b.poll(100, Duration::from_millis(100)).await.unwrap();
        let (pa, pb) = (a.assignment(), b.assignment());
        let union: BTreeSet<u32> = pa.iter().chain(&pb).copied().collect();
        if !pa.is_empty() && !pb.is_empty() && union.len() == 4 && pa.len() + pb.len() == 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "group never split the partitions: {pa:?} / {pb:?}"
        );
    }
    assert!(a.generation() > 0 && b.generation() > 0);
}
