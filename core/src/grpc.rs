//! What every gRPC server of ours runs beside its own services: the standard
//! health service, server reflection (so `grpcurl` works without .proto
//! files), and graceful shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin::Readiness;
use crate::shutdown::Shutdown;

/// Largest message a service accepts or sends: batches of aggregate deltas and
/// full profiles stay well below it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Reset streams tolerated before the accept loop catches up.
const MAX_PENDING_RESETS: usize = 4096;

/// Serves `routes` plus health and reflection on `listener` until `shutdown`
/// is cancelled, then drains in-flight calls.
///
/// The health service answers two questions. The empty name (the whole
/// server) is liveness: SERVING from the start until shutdown, so a probe
/// never restarts a process that waits for its store. Each name in
/// `services` is readiness: SERVING while `readiness` holds, NOT_SERVING
/// while it does not (a store not reachable yet or lost, a stopping
/// server), so gRPC readiness probes and `/readyz` always agree.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&'static str],
    readiness: Readiness,
    shutdown: Shutdown,
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let names: Vec<&'static str> = services.to_vec();
    let mut ready = readiness.subscribe();
    {
        let reporter = reporter.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // The service names follow readiness, and go NOT_SERVING for
            // good on shutdown; the whole server's `""` is `on_shutdown`'s.
            loop {
                let status = if *ready.borrow_and_update() && !shutdown.is_cancelled() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in &names {
                    reporter.set_service_status(*name, status).await;
                }
                if shutdown.is_cancelled() {
                    return;
                }
                tokio::select! {
                    changed = ready.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => {}
                }
            }
        });
    }
    // Both reflection protocols: grpcurl up to 1.8 (the one PyPI ships, and
    // many operators still run) asks v1alpha only, newer tools ask v1.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(allezon_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let on_shutdown = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            // Report NOT_SERVING first so balancers stop sending new calls.
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
        }
    };
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .layer(crate::grpc_observe::server())
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        // Our callers cancel calls whose own clients gave up; hyper's default
        // (20 reset streams pending) takes a burst of those for a rapid-reset
        // attack and drops the connection with every call on it.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), on_shutdown)
        .await
}
