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
    fn of(mut tag: pb::UserTag, trace: Carried) -> Self {
        // The tag is encoded once: its bytes give the profile entry's hash
        // and make up the log record.
        let encoded = tag.encode_to_vec();
        let profile = PreparedTag::of_encoded(&mut tag, &encoded);
        let cookie = tag.cookie.into_bytes();
        Self {
            profile,
            cookie,
            record: tag_event(&encoded, trace),
        }
    }
}

/// The encoding of a `TagEvent` holding the tag whose encoding is `tag`:
/// the same bytes as encoding the message whole.
fn tag_event(tag: &[u8], trace: Carried) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let rest = pb::TagEvent {
        tag: None,
        traceparent: trace.traceparent,
        tracestate: trace.tracestate,
    };
    let mut record = Vec::with_capacity(
        1 + encoded_len_varint(tag.len() as u64) + tag.len() + rest.encoded_len(),
    );
    encode_key(1, WireType::LengthDelimited, &mut record);
    encode_varint(tag.len() as u64, &mut record);
    record.extend_from_slice(tag);
    rest.encode_raw(&mut record);
    record
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_built_from_the_tag_bytes_is_the_tag_event_encoded() {
        let tag = pb::UserTag {
            time_ms: 1_646_092_800_123,
            cookie: "cookie-é".into(),
            country: "PL".into(),
            device: 2,
            action: 1,
            origin: "origin".into(),
            product_info: Some(pb::ProductInfo {
                product_id: Some(pb::product_info::ProductId::ProductIdNumber(7)),
                brand_id: "brand".into(),
                category_id: "category".into(),
                price: 12_345,
            }),
        };
        for (traceparent, tracestate) in [
            ("", ""),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                "k=v",
            ),
        ] {
            let expected = pb::TagEvent {
                tag: Some(tag.clone()),
                traceparent: traceparent.into(),
                tracestate: tracestate.into(),
            }
            .encode_to_vec();
            let trace = Carried {
                traceparent: traceparent.into(),
                tracestate: tracestate.into(),
            };
            assert_eq!(tag_event(&tag.encode_to_vec(), trace), expected);
        }
    }
}
