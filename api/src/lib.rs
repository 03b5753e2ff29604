//! The internal services as their callers see them.
//!
//! The gateway and the ingest worker call profiles, aggregates and ids
//! through the traits here, never through a transport. Each trait has two
//! implementations:
//!
//! - the tonic client, for a service in another process;
//! - [`InProcess`], the service itself, called directly: no TCP, no HTTP/2
//!   and no protobuf encoding between two parts of one process.
//!
//! The messages stay the protobuf types, so both implementations take and
//! return exactly the same values, and a test of one is a test of the
//! other's contract. Errors are `tonic::Status` in both, so callers tell
//! transient from permanent failures the same way.

use std::sync::Arc;

use allezon_core::client::{ClientChannel, channel, retry};
use allezon_core::config::ServiceEndpointArgs;
use allezon_proto::v1 as pb;
use pb::aggregate_service_client::AggregateServiceClient;
use pb::aggregate_service_server::AggregateService;
use pb::id_service_client::IdServiceClient;
use pb::id_service_server::IdService;
use pb::profile_service_client::ProfileServiceClient;
use pb::profile_service_server::ProfileService;
use tonic::{Request, Status};

pub type Result<T> = std::result::Result<T, Status>;

mod watched;
pub use watched::Watched;

/// profile-svc: a cookie's tags.
#[tonic::async_trait]
pub trait Profiles: Send + Sync + 'static {
    /// Stores tags read from the event log durably; a tag already stored is
    /// stored once, and the answer says where each was first stored.
    async fn append_tags(&self, request: pb::AppendTagsRequest) -> Result<pb::AppendTagsResponse>;
    async fn get_profile(&self, request: pb::GetProfileRequest) -> Result<pb::GetProfileResponse>;
}

/// aggregate-svc: the per-minute cells and the workers' watermarks.
#[tonic::async_trait]
pub trait Aggregates: Send + Sync + 'static {
    async fn apply_deltas(
        &self,
        request: pb::ApplyDeltasRequest,
    ) -> Result<pb::ApplyDeltasResponse>;
    async fn query_aggregates(
        &self,
        request: pb::QueryAggregatesRequest,
    ) -> Result<pb::QueryAggregatesResponse>;
    async fn get_watermarks(
        &self,
        request: pb::GetWatermarksRequest,
    ) -> Result<pb::GetWatermarksResponse>;
}

/// id-svc: names of origins, brands and categories to dense ids.
#[tonic::async_trait]
pub trait Ids: Send + Sync + 'static {
    async fn get_or_create_ids(
        &self,
        request: pb::GetOrCreateIdsRequest,
    ) -> Result<pb::IdsResponse>;
    async fn lookup_ids(&self, request: pb::LookupIdsRequest) -> Result<pb::IdsResponse>;
}

/// Runs an in-process call inside a span named like the gRPC method it
/// stands for, so a trace has the same shape in the all-in-one as across
/// processes.
async fn in_process<T>(
    path: &'static str,
    call: impl std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
) -> Result<T> {
    use tracing::Instrument as _;
    let span = allezon_core::trace::span::in_process(path);
    let result = call.instrument(span.clone()).await;
    if result.is_err() {
        allezon_core::trace::span::failed(&span);
    }
    result.map(tonic::Response::into_inner)
}

/// A service called in this process: the tonic service implementation,
/// invoked directly.
pub struct InProcess<S>(pub Arc<S>);

impl<S> InProcess<S> {
    pub fn new(service: S) -> Self {
        Self(Arc::new(service))
    }
}

impl<S> Clone for InProcess<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

#[tonic::async_trait]
impl<S: ProfileService> Profiles for InProcess<S> {
    async fn append_tags(&self, request: pb::AppendTagsRequest) -> Result<pb::AppendTagsResponse> {
        in_process(
            "/allezon.v1.ProfileService/AppendTags",
            self.0.append_tags(Request::new(request)),
        )
        .await
    }
    async fn get_profile(&self, request: pb::GetProfileRequest) -> Result<pb::GetProfileResponse> {
        in_process(
            "/allezon.v1.ProfileService/GetProfile",
            self.0.get_profile(Request::new(request)),
        )
        .await
    }
}

#[tonic::async_trait]
impl<S: AggregateService> Aggregates for InProcess<S> {
    async fn apply_deltas(
        &self,
        request: pb::ApplyDeltasRequest,
    ) -> Result<pb::ApplyDeltasResponse> {
        in_process(
            "/allezon.v1.AggregateService/ApplyDeltas",
            self.0.apply_deltas(Request::new(request)),
        )
        .await
    }
    async fn query_aggregates(
        &self,
        request: pb::QueryAggregatesRequest,
    ) -> Result<pb::QueryAggregatesResponse> {
        in_process(
            "/allezon.v1.AggregateService/QueryAggregates",
            self.0.query_aggregates(Request::new(request)),
        )
        .await
    }
    async fn get_watermarks(
        &self,
        request: pb::GetWatermarksRequest,
    ) -> Result<pb::GetWatermarksResponse> {
        in_process(
            "/allezon.v1.AggregateService/GetWatermarks",
            self.0.get_watermarks(Request::new(request)),
        )
        .await
    }
}

#[tonic::async_trait]
impl<S: IdService> Ids for InProcess<S> {
    async fn get_or_create_ids(
        &self,
        request: pb::GetOrCreateIdsRequest,
    ) -> Result<pb::IdsResponse> {
        in_process(
            "/allezon.v1.IdService/GetOrCreateIds",
            self.0.get_or_create_ids(Request::new(request)),
        )
        .await
    }
    async fn lookup_ids(&self, request: pb::LookupIdsRequest) -> Result<pb::IdsResponse> {
        in_process(
            "/allezon.v1.IdService/LookupIds",
            self.0.lookup_ids(Request::new(request)),
        )
        .await
    }
}

/// The gRPC clients. Every call here is safe to repeat (appends and id
/// creation are idempotent, a batch applied twice is recognised), so each
/// one retries transient failures with backoff.
#[tonic::async_trait]
impl Profiles for ProfileServiceClient<ClientChannel> {
    async fn append_tags(&self, request: pb::AppendTagsRequest) -> Result<pb::AppendTagsResponse> {
        retry(|| {
            let (mut client, request) = (self.clone(), request.clone());
            async move { ProfileServiceClient::append_tags(&mut client, request).await }
        })
        .await
        .map(tonic::Response::into_inner)
    }
    async fn get_profile(&self, request: pb::GetProfileRequest) -> Result<pb::GetProfileResponse> {
        retry(|| {
            let (mut client, request) = (self.clone(), request.clone());
            async move { ProfileServiceClient::get_profile(&mut client, request).await }
        })
        .await
        .map(tonic::Response::into_inner)
    }
}

#[tonic::async_trait]
impl Aggregates for AggregateServiceClient<ClientChannel> {
    async fn apply_deltas(
        &self,
        request: pb::ApplyDeltasRequest,
    ) -> Result<pb::ApplyDeltasResponse> {
        // Not retried here: the worker re-reads the watermarks after a failed
        // apply, because the failed call may have landed.
        Ok(
            AggregateServiceClient::apply_deltas(&mut self.clone(), request)
                .await?
                .into_inner(),
        )
    }
    async fn query_aggregates(
        &self,
        request: pb::QueryAggregatesRequest,
    ) -> Result<pb::QueryAggregatesResponse> {
        retry(|| {
            let (mut client, request) = (self.clone(), request);
            async move { AggregateServiceClient::query_aggregates(&mut client, request).await }
        })
        .await
        .map(tonic::Response::into_inner)
    }
    async fn get_watermarks(
        &self,
        request: pb::GetWatermarksRequest,
    ) -> Result<pb::GetWatermarksResponse> {
        Ok(
            AggregateServiceClient::get_watermarks(&mut self.clone(), request)
                .await?
                .into_inner(),
        )
    }
}

#[tonic::async_trait]
impl Ids for IdServiceClient<ClientChannel> {
    async fn get_or_create_ids(
        &self,
        request: pb::GetOrCreateIdsRequest,
    ) -> Result<pb::IdsResponse> {
        retry(|| {
            let (mut client, request) = (self.clone(), request.clone());
            async move { IdServiceClient::get_or_create_ids(&mut client, request).await }
        })
        .await
        .map(tonic::Response::into_inner)
    }
    async fn lookup_ids(&self, request: pb::LookupIdsRequest) -> Result<pb::IdsResponse> {
        retry(|| {
            let (mut client, request) = (self.clone(), request.clone());
            async move { IdServiceClient::lookup_ids(&mut client, request).await }
        })
        .await
        .map(tonic::Response::into_inner)
    }
}

/// The three services, however they are reached.
#[derive(Clone)]
pub struct Services {
    pub profiles: Arc<dyn Profiles>,
    pub aggregates: Arc<dyn Aggregates>,
    pub ids: Arc<dyn Ids>,
}

impl Services {
    /// As [`Services::connect_lazy`], with each service's health watched
    /// until `shutdown`: calls to a service that is down fail at once (see
    /// [`Watched`]). For the gateway, whose clients wait 200 ms at most.
    /// Each service's state is also a readiness condition of its own
    /// (`profile-svc`, `aggregate-svc`, `id-svc`).
    pub fn connect_watched(
        endpoints: &ServiceEndpointArgs,
        readiness: &allezon_core::admin::Readiness,
        shutdown: &allezon_core::shutdown::Shutdown,
    ) -> anyhow::Result<Self> {
        let plain = Self::connect_lazy(endpoints)?;
        let tls = endpoints.tls.load()?;
        let tls = tls.as_ref();
        Ok(Self {
            profiles: Arc::new(Watched::new(
                plain.profiles,
                &endpoints.profile_svc,
                tls,
                pb::profile_service_server::SERVICE_NAME,
                (readiness, "profile-svc"),
                shutdown.clone(),
            )?),
            aggregates: Arc::new(Watched::new(
                plain.aggregates,
                &endpoints.aggregate_svc,
                tls,
                pb::aggregate_service_server::SERVICE_NAME,
                (readiness, "aggregate-svc"),
                shutdown.clone(),
            )?),
            ids: Arc::new(Watched::new(
                plain.ids,
                &endpoints.id_svc,
                tls,
                pb::id_service_server::SERVICE_NAME,
                (readiness, "id-svc"),
                shutdown.clone(),
            )?),
        })
    }

    /// gRPC clients that connect on first use (and reconnect after
    /// failures), so a caller may start before the services it calls.
    /// Fails at once on TLS files that cannot be read.
    pub fn connect_lazy(endpoints: &ServiceEndpointArgs) -> anyhow::Result<Self> {
        let max = allezon_core::grpc::MAX_MESSAGE_BYTES;
        let tls = endpoints.tls.load()?;
        let channel = |uri: &str| channel(uri, tls.as_ref());
        Ok(Self {
            profiles: Arc::new(
                ProfileServiceClient::new(channel(&endpoints.profile_svc)?)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            ),
            aggregates: Arc::new(
                AggregateServiceClient::new(channel(&endpoints.aggregate_svc)?)
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            ),
            ids: Arc::new(
                IdServiceClient::new(channel(&endpoints.id_svc)?).max_decoding_message_size(max),
            ),
        })
    }
}
