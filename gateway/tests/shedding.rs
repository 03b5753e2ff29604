//! Load shedding is one limit for the whole server: once every slot is
//! held (here by tags whose durable write never finishes), a request to any
//! route is refused at once with 503 and `Retry-After`, not queued. And
//! tags are refused while the workers are further behind than the
//! freshness windows allow.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use allezon_api::{Aggregates, Ids, Profiles, Result, Services};
use allezon_proto::v1 as pb;
use axum::body::Body;
use gateway::backends::WriteFuture;
use gateway::{Backends, TagWriter};
use http::Request;
use tower::ServiceExt;

/// The gateway's limit of requests in flight.
const SLOTS: usize = 1024;

/// A durable write that never completes: each tag holds its slot. Counts
/// the writes begun, each by a request holding a slot.
struct Stuck(Arc<AtomicUsize>);

impl TagWriter for Stuck {
    fn write(&self, _: pb::UserTag) -> WriteFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending())
    }
}

/// Profile and id services that answer at once with empty results.
struct Empty;

#[tonic::async_trait]
impl Profiles for Empty {
    async fn append_tags(&self, _: pb::AppendTagsRequest) -> Result<pb::AppendTagsResponse> {
        Ok(pb::AppendTagsResponse::default())
    }
    async fn get_profile(&self, _: pb::GetProfileRequest) -> Result<pb::GetProfileResponse> {
        Ok(pb::GetProfileResponse::default())
    }
}

#[tonic::async_trait]
impl Ids for Empty {
    async fn get_or_create_ids(&self, _: pb::GetOrCreateIdsRequest) -> Result<pb::IdsResponse> {
        Ok(pb::IdsResponse::default())
    }
    async fn lookup_ids(&self, request: pb::LookupIdsRequest) -> Result<pb::IdsResponse> {
        Ok(pb::IdsResponse {
            ids: vec![0; request.names.len()],
        })
    }
}

const TAG: &str = r#"{"time":"2022-03-01T00:00:00.649Z","cookie":"c1","country":"PL","device":"PC",
  "action":"VIEW","origin":"CAMPAIGN_1","product_info":{"product_id":1,"brand_id":"b",
  "category_id":"k","price":100}}"#;

fn profile_query() -> Request<Body> {
    Request::post("/user_profiles/c1?time_range=2022-03-01T00:00:00.000_2022-03-01T00:01:00.000")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_sheds_every_route() {
    let writing = Arc::new(AtomicUsize::new(0));
    let app = gateway::app(Backends {
        services: Services {
            profiles: Arc::new(Empty),
            aggregates: Arc::new(Workers::default()),
            ids: Arc::new(Empty),
        },
        tags: Arc::new(Stuck(Arc::clone(&writing))),
        freshness: gateway::freshness::Freshness::new(Duration::from_secs(45)),
    });
    // Free slots answer.
    let answered = app.clone().oneshot(profile_query()).await.unwrap();
    assert_eq!(answered.status(), 200);

    let held: Vec<_> = (0..SLOTS)
        .map(|_| {
            let request = Request::post("/user_tags").body(Body::from(TAG)).unwrap();
            tokio::spawn(app.clone().oneshot(request))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while writing.load(Ordering::SeqCst) < SLOTS {
        assert!(
            std::time::Instant::now() < deadline,
            "the tags never all began"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every slot is held: the next tag is shed at once.
    let request = Request::post("/user_tags").body(Body::from(TAG)).unwrap();
    let shed = app.clone().oneshot(request).await.unwrap();
    assert_eq!(shed.status(), 503);
    // Another route is out of slots too: one limit for the whole server.
    let shed = app.clone().oneshot(profile_query()).await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    for task in held {
        task.abort();
    }
}

/// A log that takes every tag at the next offset of partition 0.
struct Appends(AtomicU64);

impl TagWriter for Appends {
    fn write(&self, _: pb::UserTag) -> WriteFuture {
        let offset = self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Ok(Some(event_log::Position {
            partition: 0,
            offset,
        }))))
    }
}

/// Workers whose watermark the test moves (the aggregates service of both
/// tests: 0, nothing applied, unless moved).
#[derive(Default)]
struct Workers(Arc<AtomicU64>);

#[tonic::async_trait]
impl Aggregates for Workers {
    async fn apply_deltas(&self, _: pb::ApplyDeltasRequest) -> Result<pb::ApplyDeltasResponse> {
        Ok(pb::ApplyDeltasResponse::default())
    }
    async fn query_aggregates(
        &self,
        _: pb::QueryAggregatesRequest,
    ) -> Result<pb::QueryAggregatesResponse> {
        Ok(pb::QueryAggregatesResponse::default())
    }
    async fn get_watermarks(
        &self,
        request: pb::GetWatermarksRequest,
    ) -> Result<pb::GetWatermarksResponse> {
        Ok(pb::GetWatermarksResponse {
            next_offsets: vec![self.0.load(Ordering::SeqCst); request.partitions.len()],
            ..Default::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_refused_while_the_workers_lag_and_accepted_once_they_catch_up() {
    let watermark = Arc::new(AtomicU64::new(0));
    let aggregates: Arc<dyn Aggregates> = Arc::new(Workers(Arc::clone(&watermark)));
    let freshness = gateway::freshness::Freshness::new(Duration::from_secs(1));
    let shutdown = allezon_core::shutdown::Shutdown::new();
    freshness.spawn_watch(Arc::clone(&aggregates), shutdown.clone());
    let log = Arc::new(Appends(AtomicU64::new(0)));
    let app = gateway::app(Backends {
        services: Services {
            profiles: Arc::new(Empty),
            aggregates,
            ids: Arc::new(Empty),
        },
        tags: Arc::clone(&log) as Arc<dyn TagWriter>,
        freshness,
    });
    let post = |app: axum::Router| async move {
        let request = Request::post("/user_tags").body(Body::from(TAG)).unwrap();
        app.oneshot(request).await.unwrap()
    };
    assert_eq!(post(app.clone()).await.status(), 204);
    // The workers apply nothing: within a few seconds tags are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let response = post(app.clone()).await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 204);
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = axum::body::to_bytes(refused.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(body["error"].is_string(), "{body}");
    // Told apart from other refusals in the metrics, with the lag itself.
    let metrics = allezon_core::metrics::render();
    assert!(
        metrics.contains(r#"allezon_tags_total{result="lagging"}"#),
        "{metrics}"
    );
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("allezon_ingest_lag_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    // Refused once it passed a quarter of the limit with nothing applied.
    assert!(lag >= 0.25, "{lag}");
    let appended = log.0.load(Ordering::SeqCst);
    // Refused tags were not written.
    assert_eq!(post(app.clone()).await.status(), 503);
    assert_eq!(log.0.load(Ordering::SeqCst), appended);
    // The workers catch up: tags are accepted again.
    watermark.store(appended, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while post(app.clone()).await.status() != 204 {
        assert!(std::time::Instant::now() < deadline, "never accepted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
}
