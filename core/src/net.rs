//! Listening sockets.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel completes and queues before we accept them.
/// Tokio's `TcpListener::bind` asks for 128, the standard library's value:
/// a client opening 256 connections at once (a load tool, a checker, a
/// proxy after a restart) can overflow that queue while the two cores are
/// busy, and a dropped handshake is retried only after a second, five times
/// the 200 ms a tag's answer may take. Linux caps it at `somaxconn` (4,096
/// by default).
const BACKLOG: u32 = 4_096;

/// Binds a listener on `addr` with a deep accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    Reserved::bind(addr)?.listen()
}

/// A socket bound to its address but not listening yet: a port where a
/// server listens already shows at once, while connections to this one are
/// still refused. A server that must do slow work before it can answer
/// (replaying a log) binds its port first and listens once ready.
/// Listening early would let clients connect and wait in the accept queue
/// for all of that work.
pub struct Reserved(TcpSocket);

impl Reserved {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server rebinds at once.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Self(socket))
    }

    /// The bound address (the port chosen, for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }

    /// Starts accepting connections. Can still fail with the address in
    /// use: with `SO_REUSEADDR`, Linux lets two sockets bind one port as
    /// long as neither listens.
    pub fn listen(self) -> std::io::Result<TcpListener> {
        self.0.listen(BACKLOG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port another server listens on cannot be bound; a bound one
    /// refuses connections until it listens.
    #[tokio::test]
    async fn a_bound_port_refuses_connections_until_it_listens() {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|err| panic!("{err}"));
        let busy = busy.local_addr().unwrap_or_else(|err| panic!("{err}"));
        let taken = Reserved::bind(busy).err();
        assert_eq!(
            taken.map(|err| err.kind()),
            Some(std::io::ErrorKind::AddrInUse)
        );

        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|err| panic!("{err}"));
        let reserved = Reserved::bind(addr).unwrap_or_else(|err| panic!("{err}"));
        let addr = reserved.local_addr().unwrap_or_else(|err| panic!("{err}"));
        let refused = tokio::net::TcpStream::connect(addr).await.err();
        assert_eq!(
            refused.map(|err| err.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        let listener = reserved.listen().unwrap_or_else(|err| panic!("{err}"));
        let client = tokio::net::TcpStream::connect(addr);
        let (connected, accepted) = tokio::join!(client, listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
    }

    /// More than tokio's default queue of 128 connect while nothing accepts:
    /// each would otherwise wait a second for its handshake to be retried.
    #[tokio::test]
    async fn a_burst_of_connections_is_queued_before_any_accept() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|err| panic!("{err}"));
        let listener = bind(addr).unwrap_or_else(|err| panic!("{err}"));
        let addr = listener.local_addr().unwrap_or_else(|err| panic!("{err}"));
        let burst = tokio::task::spawn_blocking(move || {
            (0..400)
                .map(|_| {
                    std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_millis(500),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .unwrap_or_else(|err| panic!("{err}"));
        let connected = burst.unwrap_or_else(|err| panic!("a connection waited: {err}"));
        assert_eq!(connected.len(), 400);
        let (accepted, _) = listener
            .accept()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(accepted.peer_addr().ok(), connected[0].local_addr().ok());
    }
}
