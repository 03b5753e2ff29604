//! The ceiling we measure the gateway against: a bare axum server that
//! parses `POST /user_tags` exactly as the gateway does (same parser, same
//! checks) and answers 204, storing nothing. Whatever rate it reaches under
//! a load tool is what HTTP, JSON and the machine allow; the all-in-one's
//! rate in the same run, divided by this one, is the share we use.
//!
//! `cargo run --release -p gateway --example bare_tags -- 127.0.0.1:18090`

use std::net::SocketAddr;

use allezon_core::UserTag;
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use http::StatusCode;

#[global_allocator]
static ALLOCATOR: allezon_core::Allocator = allezon_core::Allocator;

async fn user_tag(body: Bytes) -> StatusCode {
    match UserTag::from_json(&body) {
        Ok(_) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:18090")
        .parse()
        .map_err(std::io::Error::other)?;
    let app = Router::new().route("/user_tags", post(user_tag));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}
