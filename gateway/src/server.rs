//! The HTTP accept loop: axum's router on hyper, with the limits a public
//! port needs that `axum::serve` does not set.
//!
//! - A request's headers must arrive within [`HEADER_TIMEOUT`] of their
//!   first byte, or the connection is closed (`HeaderDeadline`): slowloris
//!   clients cannot hold connections (and file descriptors) open. Request
//!   bodies have their own timeout in the middleware around the routes
//!   (`stack::Edge`).
//! - An idle keep-alive connection is closed after [`IDLE_TIMEOUT`], longer
//!   than the 90 s that common client pools keep one, so that the client
//!   closes it first.
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

use crate::header_deadline::HeaderDeadline;

/// How long a client may take to send a request's headers, from their
/// first byte. Real clients send a tag's headers in one packet and give up
/// after 200 ms anyway.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a keep-alive connection may wait for its next request.
///
/// A pooled client reuses idle connections, and one the server closes just
/// as the client writes on it fails that request ("error sending request").
/// This was once the header timeout too (hyper starts its header timer as
/// soon as a connection waits for its next request): at 2 s, a 5,000 tags/s
/// replay lost 3 tags that way; at 10 s, a 600,000-tag replay at 10,000/s
/// lost 11 tags and 6 profile queries 10 s into the run, when the
/// connections it had opened at its start and not used since were closed.
/// reqwest, hyper-util and Go keep idle connections for 90 s; a longer
/// limit here lets them close first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The connection limits [`serve_with`] applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header: HEADER_TIMEOUT,
            idle: IDLE_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then drains.
pub async fn serve(listener: TcpListener, app: Router, shutdown: Shutdown) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, Limits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: Shutdown,
    limits: Limits,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's header timer runs from the moment a connection waits for
        // a request, so it is the idle limit; `HeaderDeadline` bounds the
        // headers themselves.
        .header_read_timeout(limits.idle)
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
            .serve_connection_with_upgrades(
                TokioIo::new(HeaderDeadline::new(stream, limits.header)),
                service,
            )
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const REQUEST: &[u8] = b"GET /ping HTTP/1.1\r\nHost: a\r\n\r\n";

    /// A server with short limits, and the address it listens on.
    async fn start(limits: Limits) -> (std::net::SocketAddr, Shutdown) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let app = Router::new().route("/ping", get(|| async { "pong" }));
        tokio::spawn(serve_with(listener, app, shutdown.clone(), limits));
        (addr, shutdown)
    }

    /// Sends one request and reads its whole answer (4 bytes of body).
    async fn ask(stream: &mut TcpStream) -> std::io::Result<String> {
        stream.write_all(REQUEST).await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !answer.ends_with(b"pong") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// Whether the server closed the connection (reads end, or fail).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// A keep-alive connection idle for longer than the header limit still
    /// serves its next request: pooled clients reuse such connections.
    #[tokio::test]
    async fn an_idle_connection_outlives_the_header_limit() {
        let (addr, shutdown) = start(Limits {
            header: Duration::from_millis(200),
            idle: Duration::from_secs(30),
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(ask(&mut stream).await.unwrap().starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(700)).await;
        let again = ask(&mut stream).await.unwrap();
        assert!(again.starts_with("HTTP/1.1 200"), "{again}");
        shutdown.cancel();
    }

    /// Headers that start and do not end within the limit close the
    /// connection, on a fresh connection and after an answered request.
    #[tokio::test]
    async fn slow_headers_are_cut_off_at_the_header_limit() {
        let (addr, shutdown) = start(Limits {
            header: Duration::from_millis(200),
            idle: Duration::from_secs(30),
        })
        .await;
        let mut fresh = TcpStream::connect(addr).await.unwrap();
        fresh.write_all(b"GET /ping HTTP/1.1\r\nHo").await.unwrap();
        let started = std::time::Instant::now();
        assert!(closed(&mut fresh).await);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        let mut reused = TcpStream::connect(addr).await.unwrap();
        ask(&mut reused).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        reused.write_all(b"GET /ping HTTP/1.1\r\n").await.unwrap();
        assert!(closed(&mut reused).await);
        shutdown.cancel();
    }

    /// A connection with no request for longer than the idle limit is
    /// closed.
    #[tokio::test]
    async fn an_idle_connection_is_closed_at_the_idle_limit() {
        let (addr, shutdown) = start(Limits {
            header: Duration::from_secs(30),
            idle: Duration::from_millis(300),
        })
        .await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        ask(&mut stream).await.unwrap();
        assert!(closed(&mut stream).await);
        shutdown.cancel();
    }
}
