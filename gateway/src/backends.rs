//! gRPC clients of the services behind the gateway.

use std::time::Duration;

use allezon_proto::v1::profile_service_client::ProfileServiceClient;
use tonic::transport::{Channel, Endpoint};

/// Per-call deadline. Clients give up after 200 ms on tags and profiles, so a
/// call that takes longer has already failed for them; the margin absorbs a
/// slow fsync without turning it into an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct Backends {
    pub profiles: ProfileServiceClient<Channel>,
}

impl Backends {
    /// Clients that connect on first use (and reconnect after failures), so the
    /// gateway may start before the services it calls.
    pub fn connect_lazy(profile_svc: &str) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            profiles: ProfileServiceClient::new(channel(profile_svc)?)
                .max_decoding_message_size(allezon_core::grpc::MAX_MESSAGE_BYTES),
        })
    }
}

fn channel(uri: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}
