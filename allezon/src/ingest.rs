//! The all-in-one's tag writer: the profile entry and the log record of a
//! tag in one atomic engine batch, with one group-commit wait.
//!
//! Either both are durable or neither, so profiles and statistics never
//! disagree about a tag, whatever fails and whenever the process dies. A
//! tag the profile store already holds (a client retry, or the same tag
//! sent twice) is neither stored again nor logged again, so it is counted
//! once.

use allezon_core::Error;
use allezon_proto::v1 as pb;
use event_log::EmbeddedLog;
use gateway::{TagWriter, backends::WriteFuture};
use profile_svc::EmbeddedProfileStore;
use prost::Message;

#[derive(Clone)]
pub struct EmbeddedIngest {
    pub log: EmbeddedLog,
    pub profiles: EmbeddedProfileStore,
}

impl TagWriter for EmbeddedIngest {
    fn write(&self, tag: pb::UserTag, traceparent: Option<String>) -> WriteFuture {
        let this = self.clone();
        Box::pin(async move {
            let key = tag.cookie.clone().into_bytes();
            let event = pb::TagEvent {
                tag: Some(tag),
                traceparent: traceparent.unwrap_or_default(),
            };
            let payload = event.encode_to_vec();
            let tag = event.tag.as_ref();
            this.log
                .append_with(&key, payload, |batch, _| match tag {
                    Some(tag) => this.profiles.stage(batch, tag),
                    None => Ok(false),
                })
                .await
                .map(|_| ())
                .map_err(|err| {
                    tracing::error!(%err, "tag write failed");
                    Error::unavailable(format!("storage: {err}"))
                })
        })
    }
}
