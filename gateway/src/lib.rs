//! gateway: Allezon's REST front door.
//!
//! Serves the external contract (`POST /user_tags`, `POST
//! /user_profiles/{cookie}`, `POST /aggregates`) and turns it into gRPC calls
//! to the services. It owns everything HTTP: status codes, JSON errors, body
//! limits, request ids. Run it alone with `cargo run -p gateway --
//! --http-addr 127.0.0.1:8080 --profile-svc http://127.0.0.1:50051`.

pub mod backends;
pub mod error;
mod routes;
mod stack;

use std::net::SocketAddr;

use allezon_core::shutdown::Shutdown;
use axum::Router;
use clap::Args;
use tokio::net::TcpListener;

pub use backends::Backends;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address of the REST API.
    #[arg(long, env = "ALLEZON_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// gRPC endpoint of profile-svc.
    #[arg(
        long,
        env = "ALLEZON_PROFILE_SVC",
        default_value = "http://127.0.0.1:50051"
    )]
    pub profile_svc: String,
}

/// The whole HTTP application: routes and middleware.
pub fn app(backends: Backends) -> Router {
    stack::layer(routes::router(backends))
}

/// Serves the REST API on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, app(backends))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Runs the gateway alone until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let backends = Backends::connect_lazy(&config.profile_svc)?;
    let listener = TcpListener::bind(config.http_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    serve(listener, backends, shutdown).await?;
    Ok(())
}
