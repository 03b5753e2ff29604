//! Fast failure for a service that is down.
//!
//! A call to a service that does not answer is retried with backoff (about
//! 150 ms in all) before it fails, which is right for a blip but makes every
//! request of an outage wait that long, close to a client's 200 ms. So the
//! gateway watches each service's gRPC health (`Check` for the service's
//! own name, which is its readiness) every half second; after two misses in
//! a row it fails calls to that service at once with UNAVAILABLE (the
//! client gets 503 and `Retry-After` in microseconds), until a check
//! passes again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use allezon_core::admin::Readiness;
use allezon_core::client::{ChannelError, channel};
use allezon_core::shutdown::Shutdown;
use allezon_proto::v1 as pb;
use tonic::Status;
use tonic::transport::ClientTlsConfig;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{Aggregates, Ids, Profiles, Result};

const CHECK_EVERY: Duration = Duration::from_millis(500);
const CHECK_WAIT: Duration = Duration::from_secs(1);
/// Misses in a row that make a service down: one slow answer on a busy
/// machine does not.
const MISSES: u32 = 2;

/// A service's calls, failed at once while its health checks fail.
pub struct Watched<T: ?Sized> {
    name: &'static str,
    up: Arc<AtomicBool>,
    inner: Arc<T>,
}

impl<T: ?Sized> Watched<T> {
    /// Watches `service` (its gRPC name) at `uri` until `shutdown`, and
    /// keeps the readiness condition `condition` to whether it is up.
    pub fn new(
        inner: Arc<T>,
        uri: &str,
        tls: Option<&ClientTlsConfig>,
        service: &'static str,
        (readiness, condition): (&Readiness, &'static str),
        shutdown: Shutdown,
    ) -> std::result::Result<Self, ChannelError> {
        let readiness = readiness.clone();
        let up = Arc::new(AtomicBool::new(true));
        let mut health = HealthClient::new(channel(uri, tls)?);
        let flag = Arc::clone(&up);
        tokio::spawn(async move {
            let mut misses = 0;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(CHECK_EVERY) => {}
                }
                let check = health.check(HealthCheckRequest {
                    service: service.to_owned(),
                });
                let serving = matches!(
                    tokio::time::timeout(CHECK_WAIT, check).await,
                    Ok(Ok(answer)) if answer.get_ref().status() == ServingStatus::Serving
                );
                misses = if serving { 0 } else { misses + 1 };
                let now_up = misses < MISSES;
                if flag.swap(now_up, Ordering::AcqRel) != now_up {
                    readiness.set_condition(condition, now_up);
                    if now_up {
                        tracing::info!(service, "service answers again");
                    } else {
                        tracing::warn!(service, "service is down; failing its calls at once");
                    }
                }
            }
        });
        Ok(Self {
            name: service,
            up,
            inner,
        })
    }

    fn check(&self) -> Result<()> {
        if self.up.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "{} is down (its health checks fail)",
                self.name
            )))
        }
    }
}

#[tonic::async_trait]
impl Profiles for Watched<dyn Profiles> {
    async fn append_tags(&self, request: pb::AppendTagsRequest) -> Result<pb::AppendTagsResponse> {
        self.check()?;
        self.inner.append_tags(request).await
    }
    async fn get_profile(&self, request: pb::GetProfileRequest) -> Result<pb::GetProfileResponse> {
        self.check()?;
        self.inner.get_profile(request).await
    }
}

#[tonic::async_trait]
impl Aggregates for Watched<dyn Aggregates> {
    async fn apply_deltas(
        &self,
        request: pb::ApplyDeltasRequest,
    ) -> Result<pb::ApplyDeltasResponse> {
        self.check()?;
        self.inner.apply_deltas(request).await
    }
    async fn query_aggregates(
        &self,
        request: pb::QueryAggregatesRequest,
    ) -> Result<pb::QueryAggregatesResponse> {
        self.check()?;
        self.inner.query_aggregates(request).await
    }
    async fn get_watermarks(
        &self,
        request: pb::GetWatermarksRequest,
    ) -> Result<pb::GetWatermarksResponse> {
        self.check()?;
        self.inner.get_watermarks(request).await
    }
}

#[tonic::async_trait]
impl Ids for Watched<dyn Ids> {
    async fn get_or_create_ids(
        &self,
        request: pb::GetOrCreateIdsRequest,
    ) -> Result<pb::IdsResponse> {
        self.check()?;
        self.inner.get_or_create_ids(request).await
    }
    async fn lookup_ids(&self, request: pb::LookupIdsRequest) -> Result<pb::IdsResponse> {
        self.check()?;
        self.inner.lookup_ids(request).await
    }
}
