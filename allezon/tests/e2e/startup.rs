//! Starting on a data directory: what the all-in-one does before it serves.

use allezon_core::shutdown::Shutdown;

fn config(dir: &std::path::Path, http_addr: std::net::SocketAddr) -> allezon::Config {
    allezon::Config {
        http_addr,
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_tls: Default::default(),
        max_ingest_lag_ms: 45_000,
        data: allezon_core::config::DataDirArgs {
            data_dir: dir.to_owned(),
        },
        admin: allezon_core::config::AdminArgs {
            admin_addr: "off".parse().unwrap(),
        },
    }
}

/// The HTTP port is bound before the stores open (it listens only once
/// the log is replayed): a port already taken fails the start at once,
/// and leaves the data directory free for the next start.
#[tokio::test]
async fn a_taken_http_port_fails_the_start_before_the_stores_open() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = allezon::start(
        config(dir.path(), taken.local_addr().unwrap()),
        Shutdown::new(),
    )
    .await
    .err()
    .expect("the start fails on a taken port");
    assert!(
        err.to_string().to_lowercase().contains("address"),
        "the error says why: {err:#}"
    );

    let shutdown = Shutdown::new();
    let running = allezon::start(
        config(dir.path(), "127.0.0.1:0".parse().unwrap()),
        shutdown.clone(),
    )
    .await
    .expect("the directory opens again");
    shutdown.cancel();
    running.wait().await.unwrap();
}
