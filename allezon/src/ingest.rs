//! The all-in-one's tag writer: the profile entry and the log record of a
//! tag in one atomic engine batch, with one fsync per group of tags.
//!
//! Either both are durable or neither, so profiles and statistics never
//! disagree about a tag, whatever fails and whenever the process dies. A
//! tag the profile store already holds (a client retry, or the same tag
//! sent twice) is neither stored again nor logged again, so it is counted
//! once. The writes run on the log's appender thread ([`Appender`]), never
//! on an async worker.

use std::collections::HashSet;
use std::sync::Arc;

use allezon_core::Error;
use allezon_core::trace::Carried;
use allezon_proto::v1 as pb;
use event_log::{Appender, EmbeddedLog, Staged};
use gateway::{TagWriter, backends::WriteFuture};
use profile_svc::EmbeddedProfileStore;
use prost::Message;
use tracing::Instrument as _;

#[derive(Clone)]
pub struct EmbeddedIngest {
    appender: Arc<Appender<pb::TagEvent>>,
}

impl EmbeddedIngest {
    pub fn start(log: &EmbeddedLog, profiles: EmbeddedProfileStore) -> std::io::Result<Self> {
        // Profile keys staged in the current group, not readable yet.
        let mut pending: HashSet<Vec<u8>> = HashSet::new();
        let appender = Appender::start(log, move |batch, event: &pb::TagEvent, new_group| {
            if new_group {
                pending.clear();
            }
            let Some(tag) = &event.tag else {
                return Ok(Staged::Skip);
            };
            if !profiles.stage(batch, tag, &mut pending)? {
                return Ok(Staged::Skip);
            }
            Ok(Staged::Append {
                key: tag.cookie.as_bytes().to_vec(),
                payload: event.encode_to_vec(),
            })
        })?;
        Ok(Self {
            appender: Arc::new(appender),
        })
    }
}

impl TagWriter for EmbeddedIngest {
    fn write(&self, tag: pb::UserTag) -> WriteFuture {
        let appender = Arc::clone(&self.appender);
        // One span for the one durable write: the profile entry and the log
        // record in one engine batch, and the group-commit fsync it waits on.
        let span = allezon_core::trace::span::internal("group_commit profiles+log");
        let trace = Carried::of(&span);
        Box::pin(
            async move {
                let event = pb::TagEvent {
                    tag: Some(tag),
                    traceparent: trace.traceparent,
                    tracestate: trace.tracestate,
                };
                appender.append(event).await.map_err(|err| {
                    tracing::error!(%err, "tag write failed");
                    Error::unavailable(format!("storage: {err}"))
                })
            }
            .instrument(span),
        )
    }
}
