//! What the gateway calls: the services, through their traits, and the
//! writer that makes an accepted tag durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use allezon_api::Services;
use allezon_core::Error;
use allezon_core::trace::Carried;
use allezon_proto::v1 as pb;
use event_log::{EventLog, Position};
use prost::Message;
use tracing::{Instrument as _, Span};

/// A write's outcome: where the tag went in the log, or `None` when it was
/// not appended (a duplicate of a stored tag).
pub type WriteFuture = Pin<Box<dyn Future<Output = Result<Option<Position>, Error>> + Send>>;

/// Makes an accepted tag durable wherever it must be, before the gateway
/// answers 204. An error means the tag is in neither profiles nor
/// statistics; success means it is, or will be once the workers catch up,
/// in both.
///
/// The writer runs inside the request's span; the trace context it stores
/// with the tag is its own write span's, so the worker's batch links to it.
pub trait TagWriter: Send + Sync + 'static {
    fn write(&self, tag: pb::UserTag) -> WriteFuture;
}

/// The multi-process writer: the tag is appended to the event log (Kafka),
/// and that is the only write on the request path. The ingest workers build
/// the profiles as well as the statistics from the log, idempotently.
///
/// So an error answer means the tag is in neither view (the append failed),
/// a 204 means it is in both once the workers have read it, and a tag whose
/// answer was lost is in both or neither. Writing profile-svc here as well
/// would break the first rule whenever profile-svc fails and Kafka does not,
/// or the other way round.
pub struct LogWrites<L> {
    pub log: L,
    /// The topic, for the producer span's name and attributes.
    pub topic: String,
    /// Whether the brokers answered the last probe (see
    /// [`crate::watch_kafka`]). While they do not, tags are refused at once
    /// with 503, never handed to the producer: a tag handed over may still
    /// land after its client was told it failed, and one refused here
    /// cannot, and the client learns in microseconds rather than after the
    /// producer's timeout.
    pub reachable: Arc<AtomicBool>,
}

impl<L: EventLog + Clone> TagWriter for LogWrites<L> {
    fn write(&self, tag: pb::UserTag) -> WriteFuture {
        if !self.reachable.load(Ordering::Acquire) {
            return Box::pin(std::future::ready(Err(Error::unavailable(
                "event log: the Kafka brokers do not answer",
            ))));
        }
        let log = self.log.clone();
        let span = allezon_core::trace::span::producer("kafka", &self.topic);
        Box::pin(
            async move {
                let key = tag.cookie.clone().into_bytes();
                let trace = Carried::of(&Span::current());
                let event = pb::TagEvent {
                    tag: Some(tag),
                    traceparent: trace.traceparent.clone(),
                    tracestate: trace.tracestate.clone(),
                }
                .encode_to_vec();
                log.append(&key, event, &trace)
                    .await
                    .map(Some)
                    .map_err(|err| {
                        tracing::error!(%err, "event log append failed");
                        Error::unavailable(format!("event log: {err}"))
                    })
            }
            .instrument(span),
        )
    }
}

#[derive(Clone)]
pub struct Backends {
    pub services: Services,
    pub tags: Arc<dyn TagWriter>,
    /// Whether the workers keep up; tags are refused while they do not.
    pub freshness: Arc<crate::freshness::Freshness>,
}

impl Backends {
    /// Opens the pooled connections to every service with cheap, read-only
    /// calls, so the first tags do not pay for TCP and HTTP/2 set-up. Best
    /// effort: a service that is not up yet is connected on first use.
    pub async fn warm_up(&self) {
        use allezon_proto::v1 as pb;
        let calls = (0..allezon_core::client::POOL_SIZE * 2).map(|_| {
            let services = self.services.clone();
            async move {
                let profile = services.profiles.get_profile(pb::GetProfileRequest {
                    cookie: "warm-up".into(),
                    from_ms: 0,
                    to_ms: 0,
                    limit: 0,
                });
                let marks = services
                    .aggregates
                    .get_watermarks(pb::GetWatermarksRequest::default());
                let names = services.ids.lookup_ids(pb::LookupIdsRequest::default());
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
