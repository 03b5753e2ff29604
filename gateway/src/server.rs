//! The HTTP accept loop: axum's router on hyper, with the limits a public
//! port needs that `axum::serve` does not set.
//!
//! - A client has [`HEADER_TIMEOUT`] to send its request headers, or its
//!   connection is closed: slowloris clients cannot hold connections (and
//!   file descriptors) open forever. Request bodies have their own timeout
//!   in the middleware around the routes (`stack::Edge`).
//! - Headers are bounded in size and count (hyper's limits: 64 KiB of
//!   buffer, 100 headers), answered 431 beyond.
//! - Graceful shutdown: the listener stops accepting, in-flight requests
//!   finish, idle keep-alive connections are closed.

use std::time::Duration;

use allezon_core::shutdown::Shutdown;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// How long a client may take to send its request headers. Real clients
/// send a tag's headers in one packet and give up after 200 ms anyway.
///
/// hyper starts this timer as soon as a keep-alive connection waits for
/// its next request, so it is also how long a connection may sit idle.
/// Pooled clients reuse idle connections, and one the server closes just
/// as the client writes on it fails that request: at 2 s, a 5,000 tags/s
/// replay (most of its 64 pooled connections idle at a time) lost 3 tags
/// that way ("error sending request", three at once). Ten seconds close
/// idle connections five times less often and still cut slowloris clients
/// off.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`, then drains.
pub async fn serve(listener: TcpListener, app: Router, shutdown: Shutdown) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_headers(100);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: the listener itself is fine.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are the client's (a reset, a header timeout).
            let _ = connection.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
