//! `POST /user_profiles/{cookie}?time_range=<from>_<to>[&limit=<n>]`.

use std::sync::Arc;

use allezon_core::query::ProfileQuery;
use allezon_core::tag::MAX_COOKIE_LEN;
use allezon_core::{Error, UserTag};
use allezon_proto::v1 as pb;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;

use crate::backends::Backends;
use crate::error::{ApiError, body_error};

#[derive(Serialize)]
pub struct ProfileBody {
    cookie: String,
    views: Vec<UserTag>,
    buys: Vec<UserTag>,
}

pub async fn post_user_profile(
    State(backends): State<Arc<Backends>>,
    cookie: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    // The body, when present, is the client's expected answer (debug mode).
    // It is read so the connection stays reusable, and never looked at.
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProfileBody>, ApiError> {
    let Path(cookie) = cookie.map_err(|e| Error::invalid("cookie", e.body_text()))?;
    body.map_err(body_error)?;
    if cookie.is_empty() || cookie.len() > MAX_COOKIE_LEN {
        return Err(Error::invalid(
            "cookie",
            format_args!("must be 1 to {MAX_COOKIE_LEN} bytes"),
        )
        .into());
    }
    let query = ProfileQuery::parse(query.as_deref())?;
    let request = pb::GetProfileRequest {
        cookie: cookie.clone(),
        from_ms: query.range.from_ms,
        to_ms: query.range.to_ms,
        limit: query.limit,
    };
    let profile = backends.services.profiles.get_profile(request).await?;
    Ok(Json(ProfileBody {
        cookie,
        views: to_domain(profile.views)?,
        buys: to_domain(profile.buys)?,
    }))
}

fn to_domain(tags: Vec<pb::UserTag>) -> Result<Vec<UserTag>, Error> {
    tags.into_iter()
        .map(|tag| {
            UserTag::try_from(tag)
                .map_err(|err| Error::internal(format!("profile-svc sent a bad tag: {err}")))
        })
        .collect()
}
