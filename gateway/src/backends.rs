//! What the gateway calls: the gRPC services, and the event log it appends
//! every accepted tag to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use allezon_core::Error;
use allezon_core::client::channel;
use allezon_proto::v1::aggregate_service_client::AggregateServiceClient;
use allezon_proto::v1::id_service_client::IdServiceClient;
use allezon_proto::v1::profile_service_client::ProfileServiceClient;
use event_log::EventLog;
use tonic::transport::Channel;

pub type SinkFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// The event log as the gateway sees it: append, durably, or fail.
pub trait TagSink: Send + Sync + 'static {
    fn append(&self, cookie: &str, event: Vec<u8>, traceparent: Option<String>) -> SinkFuture;
}

impl<L: EventLog + Clone> TagSink for L {
    fn append(&self, cookie: &str, event: Vec<u8>, traceparent: Option<String>) -> SinkFuture {
        let (log, key) = (self.clone(), cookie.as_bytes().to_vec());
        Box::pin(async move {
            log.append(&key, event, traceparent.as_deref())
                .await
                .map(|_| ())
                .map_err(|err| {
                    tracing::error!(%err, "event log append failed");
                    Error::unavailable(format!("event log: {err}"))
                })
        })
    }
}

/// gRPC endpoints of the services, as `http://host:port`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub profile_svc: String,
    pub aggregate_svc: String,
    pub id_svc: String,
}

impl Endpoints {
    /// Every service behind one address, as in the all-in-one binary.
    pub fn all_at(uri: &str) -> Self {
        Self {
            profile_svc: uri.to_owned(),
            aggregate_svc: uri.to_owned(),
            id_svc: uri.to_owned(),
        }
    }
}

#[derive(Clone)]
pub struct Backends {
    pub profiles: ProfileServiceClient<Channel>,
    pub aggregates: AggregateServiceClient<Channel>,
    pub ids: IdServiceClient<Channel>,
    pub log: Arc<dyn TagSink>,
}

impl Backends {
    /// Clients that connect on first use (and reconnect after failures), so the
    /// gateway may start before the services it calls.
    pub fn connect_lazy(
        endpoints: &Endpoints,
        log: Arc<dyn TagSink>,
    ) -> Result<Self, tonic::transport::Error> {
        let max = allezon_core::grpc::MAX_MESSAGE_BYTES;
        Ok(Self {
            profiles: ProfileServiceClient::new(channel(&endpoints.profile_svc)?)
                .max_decoding_message_size(max),
            aggregates: AggregateServiceClient::new(channel(&endpoints.aggregate_svc)?)
                .max_decoding_message_size(max),
            ids: IdServiceClient::new(channel(&endpoints.id_svc)?).max_decoding_message_size(max),
            log,
        })
    }
}

impl Backends {
    /// Opens the pooled connections to every service with cheap, read-only
    /// calls, so the first tags do not pay for TCP and HTTP/2 set-up. Best
    /// effort: a service that is not up yet is connected on first use.
    pub async fn warm_up(&self) {
        use allezon_proto::v1 as pb;
        let calls = (0..allezon_core::client::POOL_SIZE * 2).map(|_| {
            let (mut profiles, mut aggregates, mut ids) = (
                self.profiles.clone(),
                self.aggregates.clone(),
                self.ids.clone(),
            );
            async move {
                let profile = profiles.get_profile(pb::GetProfileRequest {
                    cookie: "warm-up".into(),
                    from_ms: 0,
                    to_ms: 0,
                    limit: 0,
                });
                let marks = aggregates.get_watermarks(pb::GetWatermarksRequest::default());
                let names = ids.lookup_ids(pb::LookupIdsRequest::default());
                let (a, b, c) = tokio::join!(profile, marks, names);
                a.err().or(b.err()).or(c.err())
            }
        });
        if let Some(Some(status)) = futures::future::join_all(calls)
            .await
            .into_iter()
            .find(Option::is_some)
        {
            tracing::warn!(%status, "a service is not reachable yet");
        }
    }
}
