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
use profile_svc::{EmbeddedProfileStore, PreparedTag};
use prost::Message;
use tracing::Instrument as _;

#[derive(Clone)]
pub struct EmbeddedIngest {
    appender: Arc<Appender<Prepared>>,
}

/// A tag as the appender thread takes it: encoded by the request's async
/// worker, so the one thread every tag goes through only checks and stages
/// it, and the parsed tag is freed by the thread that allocated it.
struct Prepared {
    profile: PreparedTag,
    /// The log record's partition key: the cookie.
    cookie: Vec<u8>,
    /// The log record: the tag and its trace context.
    record: Vec<u8>,
}

impl Prepared {
    fn of(tag: pb::UserTag, trace: Carried) -> Self {
        let profile = PreparedTag::of(&tag);
        let cookie = tag.cookie.as_bytes().to_vec();
        let record = pb::TagEvent {
            tag: Some(tag),
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        }
        .encode_to_vec();
        Self {
            profile,
            cookie,
            record,
        }
    }
}

impl EmbeddedIngest {
    pub fn start(log: &EmbeddedLog, profiles: EmbeddedProfileStore) -> std::io::Result<Self> {
        // Profile keys staged in the current group, not readable yet.
        let mut pending: HashSet<Vec<u8>> = HashSet::new();
        let appender = Appender::start(log, move |batch, tag: Prepared, new_group| {
            if new_group {
                pending.clear();
            }
            if !profiles.stage_prepared(batch, tag.profile, &mut pending)? {
                return Ok(Staged::Skip);
            }
            Ok(Staged::Append {
                key: tag.cookie,
                payload: tag.record,
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
                appender
                    .append(Prepared::of(tag, trace))
                    .await
                    .map_err(|err| {
                        tracing::error!(%err, "tag write failed");
                        Error::unavailable(format!("storage: {err}"))
                    })
            }
            .instrument(span),
        )
    }
}
