//! What every gRPC server of ours runs beside its own services: the standard
//! health service, server reflection (so `grpcurl` works without .proto
//! files), and graceful shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::shutdown::Shutdown;

/// Largest message a service accepts or sends: batches of aggregate deltas and
/// full profiles stay well below it.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Reset streams tolerated before the accept loop catches up.
const MAX_PENDING_RESETS: usize = 4096;

/// Serves `routes` plus health and reflection on `listener` until `shutdown`
/// is cancelled, then drains in-flight calls.
///
/// `services` are the fully qualified names reported as SERVING by the health
/// service (the empty name, for the whole server, is always reported).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    services: &[&str],
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    for service in services {
        reporter
            .set_service_status(*service, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(allezon_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let routes = routes.add_service(health).add_service(reflection);

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
    Server::builder()
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
