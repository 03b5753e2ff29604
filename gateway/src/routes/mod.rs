//! The three endpoints of the contract, and JSON answers for everything else.

mod aggregates;
mod profiles;
mod tags;

use allezon_core::{Error, ErrorKind};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;

use crate::backends::Backends;
use crate::error::ApiError;

/// A tag is a few hundred bytes; anything near this is not a tag.
const TAG_BODY_LIMIT: usize = 64 * 1024;
/// Query bodies are debug copies of the expected answer (never used), and a
/// full profile or a 24-hour aggregate answer runs to hundreds of KB.
const QUERY_BODY_LIMIT: usize = 8 * 1024 * 1024;

pub const USER_TAGS: &str = "/user_tags";
pub const USER_PROFILES: &str = "/user_profiles/{cookie}";
pub const AGGREGATES: &str = "/aggregates";
/// Every route template, for metric labels and span names.
pub const ROUTES: [&str; 3] = [USER_TAGS, USER_PROFILES, AGGREGATES];

pub fn router(backends: Backends) -> Router {
    Router::new()
        .route(
            USER_TAGS,
            post(tags::post_user_tag).layer(DefaultBodyLimit::max(TAG_BODY_LIMIT)),
        )
        .route(
            USER_PROFILES,
            post(profiles::post_user_profile).layer(DefaultBodyLimit::max(QUERY_BODY_LIMIT)),
        )
        .route(
            AGGREGATES,
            post(aggregates::post_aggregates).layer(DefaultBodyLimit::max(QUERY_BODY_LIMIT)),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(backends)
}

async fn not_found() -> ApiError {
    ApiError(Error::new(ErrorKind::NotFound, "no such endpoint"))
}

async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(ErrorKind::MethodNotAllowed, "use POST"))
}
