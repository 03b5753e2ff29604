//! `POST /user_tags`: validate, store durably in the profile store and the
//! event log, then answer 204.

use allezon_core::UserTag;
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
    let mut profiles = backends.profiles.clone();
    let cookie = tag.cookie.clone();
    let (profile, log) = tokio::join!(
        profiles.append_tag(pb::AppendTagRequest { tag: Some(tag) }),
        backends.log.append(&cookie, event),
    );
    profile?;
    log?;
    Ok(StatusCode::NO_CONTENT)
}
