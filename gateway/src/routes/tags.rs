//! `POST /user_tags`: validate, store durably, then answer 204.

use allezon_core::UserTag;
use allezon_proto::v1 as pb;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use http::StatusCode;

use crate::backends::Backends;
use crate::error::{ApiError, body_error};

pub async fn post_user_tag(
    State(backends): State<Backends>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let tag = UserTag::from_json(&body.map_err(body_error)?)?;
    // profile-svc answers only once the tag is durable, so a 204 here means
    // the tag survives a crash of any process.
    backends
        .profiles
        .clone()
        .append_tag(pb::AppendTagRequest {
            tag: Some(tag.into()),
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
