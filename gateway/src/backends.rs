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
