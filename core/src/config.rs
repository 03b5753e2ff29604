//! Configuration pieces shared by the binaries. Precedence is
//! defaults < environment < flags, which `clap` with `env` gives us.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Where a service keeps its embedded stores.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory of the embedded stores and log; created when missing.
    #[arg(long, env = "ALLEZON_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

/// The address a gRPC service listens on.
#[derive(Debug, Clone, Args)]
pub struct GrpcAddrArgs {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "ALLEZON_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
}

/// What every standalone gRPC service is started with.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub grpc: GrpcAddrArgs,
    #[command(flatten)]
    pub data: DataDirArgs,
}

/// How a client reaches one of our gRPC services.
pub fn endpoint_uri(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
