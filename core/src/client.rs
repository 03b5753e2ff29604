//! How our services call each other over gRPC: lazily connecting channels
//! with deadlines and keep-alives, a small pool of them per service, and
//! retries with backoff for calls that are safe to repeat.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{Error, ErrorKind};

/// Per-call deadline. Clients give up after 200 ms on tags and profiles, so
/// a call that takes longer has already failed for them; the margin absorbs
/// a slow fsync without turning it into an error. Aggregate queries read at
/// most 1,440 cells and stay far inside it too.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections per service. HTTP/2 multiplexes calls on one connection, but
/// one connection is one TCP stream processed by one task on each side;
/// a few spread the load over the server's cores and survive one reset.
pub const POOL_SIZE: usize = 4;

/// What our clients call through: the channel, observed (metrics).
pub type ClientChannel = crate::grpc_observe::Observe<Channel>;

/// A channel over [`POOL_SIZE`] connections to `uri`, connecting on first use
/// and reconnecting after failures, so callers may start before the service.
/// An `https://` endpoint is reached over TLS with `tls`.
pub fn channel(uri: &str, tls: Option<&ClientTlsConfig>) -> Result<ClientChannel, ChannelError> {
    let mut endpoint = Endpoint::from_shared(uri.to_owned())?;
    if uri.starts_with("https://") {
        // Without a CA tonic would fail every call with an opaque
        // connection error; say at start what is missing instead.
        let tls = tls.ok_or_else(|| ChannelError::NoCa(uri.to_owned()))?;
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    let (channel, sender) = Channel::balance_channel::<usize>(POOL_SIZE);
    for i in 0..POOL_SIZE {
        // The receiver lives as long as the channel; a failed send means the
        // channel is gone already.
        let _ = sender.try_send(tonic::transport::channel::Change::Insert(
            i,
            endpoint.clone(),
        ));
    }
    Ok(tower::Layer::layer(&crate::grpc_observe::client(), channel))
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}: an https:// endpoint needs --grpc-tls-ca")]
    NoCa(String),
}

/// Retries of a call that failed transiently, after the first attempt.
const RETRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(20);

/// Runs `call` until it succeeds, fails for good, or [`RETRIES`] retries with
/// doubling backoff (and jitter) are spent. Only for idempotent calls: a
/// call whose answer was lost may have taken effect.
pub async fn retry<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(status) if attempt < RETRIES && retryable(&status) => {
                attempt += 1;
                let jitter = Duration::from_micros(u64::from(jitter_seed()) % 10_000);
                tracing::debug!(%status, attempt, "retrying call");
                tokio::time::sleep(backoff + jitter).await;
                backoff *= 2;
            }
            Err(status) => return Err(status),
        }
    }
}

/// Unavailable covers a refused or reset connection and a restarting
/// service; a deadline is not retried, since the caller's time is spent.
fn retryable(status: &tonic::Status) -> bool {
    Error::from_status(status).kind() == ErrorKind::Unavailable
}

fn jitter_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_unavailable_but_not_invalid_input() {
        let calls = AtomicU32::new(0);
        let result = retry(|| async {
            match calls.fetch_add(1, Ordering::Relaxed) {
                0 | 1 => Err(tonic::Status::unavailable("restarting")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(result.ok(), Some(7));
        assert_eq!(calls.load(Ordering::Relaxed), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(tonic::Status::invalid_argument("bad"))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry(|| async {
            calls.fetch_add(1, Ordering::Relaxed);
            Err(tonic::Status::unavailable("down"))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::Relaxed), 1 + RETRIES);
    }
}
