//! `POST /user_tags`: validate, store durably in the profile store and the
//! event log, then answer 204.

use allezon_core::{Error, UserTag};
use allezon_proto::v1 as pb;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use http::StatusCode;
use prost::Message;

use crate::backends::Backends;
use crate::error::{ApiError, body_error};

pub async fn post_user_tag(
    State(backends): State<Backends>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let tag: pb::UserTag = UserTag::from_json(&body.map_err(body_error)?)?.into();
    let event = pb::TagEvent {
        tag: Some(tag.clone()),
        traceparent: String::new(),
    }
    .encode_to_vec();
    // Both writes run at once and each returns only when durable, so a 204
    // means the tag survives a crash of any process, in profiles and in
    // the statistics alike.
    //
    // The writes run in their own task: a client that gives up (they wait
    // 200 ms) must not cancel a write half-way, and cancelled gRPC calls
    // reset HTTP/2 streams, which in numbers make the services' HTTP/2 layer
    // drop the whole connection.
    let mut profiles = backends.profiles.clone();
    let cookie = tag.cookie.clone();
    let log = backends.log.append(&cookie, event);
    let writes = tokio::spawn(async move {
        tokio::join!(
            profiles.append_tag(pb::AppendTagRequest { tag: Some(tag) }),
            log
        )
    });
    let (profile, log) = writes
        .await
        .map_err(|err| Error::internal(format!("tag write task failed: {err}")))?;
    profile?;
    log?;
    Ok(StatusCode::NO_CONTENT)
}
