//! A service whose health checks fail is failed at once: its calls do not
//! reach the client (and its retries) until a check passes again.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use allezon_api::{Profiles, Result, Watched};
use allezon_core::admin::Readiness;
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1 as pb;

const SERVICES: &[&str] = &[pb::profile_service_server::SERVICE_NAME];

/// Counts the calls that got through.
struct Counting(AtomicU32);

#[tonic::async_trait]
impl Profiles for Counting {
    async fn append_tags(&self, _: pb::AppendTagsRequest) -> Result<pb::AppendTagsResponse> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(pb::AppendTagsResponse::default())
    }
    async fn get_profile(&self, _: pb::GetProfileRequest) -> Result<pb::GetProfileResponse> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(pb::GetProfileResponse::default())
    }
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn calls_to_a_service_that_is_down_fail_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // nothing listens there yet
    let shutdown = Shutdown::new();
    let inner = Arc::new(Counting(AtomicU32::new(0)));
    let service = pb::profile_service_server::SERVICE_NAME;
    // The caller's readiness, which follows the service's state.
    let caller = Readiness::started();
    let watched = Watched::new(
        Arc::clone(&inner) as Arc<dyn Profiles>,
        &format!("http://{addr}"),
        None,
        service,
        (&caller, "profile-svc"),
        shutdown.clone(),
    )
    .unwrap();
    let call = || watched.get_profile(pb::GetProfileRequest::default());

    // Two failed checks (about a second) and the service is down.
    eventually("marked down", async || call().await.is_err()).await;
    let err = call().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains(service), "{err}");
    assert_eq!(caller.failing(), ["profile-svc"]);
    let through = inner.0.load(Ordering::SeqCst);

    // The service comes up, but not ready: still down.
    let readiness = Readiness::default();
    readiness.set(false);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(allezon_core::grpc::serve(
        listener,
        tonic::service::Routes::default(),
        SERVICES,
        readiness.clone(),
        shutdown.clone(),
        None,
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(call().await.is_err());
    assert_eq!(
        inner.0.load(Ordering::SeqCst),
        through,
        "a call got through"
    );

    // Ready: calls go through again.
    readiness.set(true);
    eventually("up again", async || call().await.is_ok()).await;
    assert!(caller.is_ready());
    shutdown.cancel();
}
