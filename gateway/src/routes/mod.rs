//! The three endpoints of the contract, and JSON answers for everything else.

mod aggregates;
mod profiles;
mod tags;

use allezon_core::{Error, ErrorKind};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};

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
pub const OPENAPI: &str = "/openapi.json";
/// The OpenAPI 3.1 description of the endpoints, committed beside the code
/// and checked against the server by schemathesis (`scripts/test.sh`).
pub const OPENAPI_DOCUMENT: &str = include_str!("../../api/openapi.json");
/// Every route template, for metric labels and span names.
pub const ROUTES: [&str; 4] = [USER_TAGS, USER_PROFILES, AGGREGATES, OPENAPI];

pub fn router(backends: Backends) -> Router {
    // Every request clones the state: one reference count, not one per
    // backend.
    let backends = std::sync::Arc::new(backends);
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
        .route(OPENAPI, get(openapi))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(backends)
}

async fn openapi() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_DOCUMENT,
    )
}

async fn not_found() -> ApiError {
    ApiError(Error::new(ErrorKind::NotFound, "no such endpoint"))
}

async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed (the API takes POST, /openapi.json GET)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document describes exactly the routes the router serves.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_DOCUMENT).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
        let mut served = ROUTES.to_vec();
        listed.sort_unstable();
        served.sort_unstable();
        assert_eq!(listed, served);
        for route in [USER_TAGS, USER_PROFILES, AGGREGATES] {
            assert!(paths[route]["post"].is_object(), "{route}");
        }
    }
}
