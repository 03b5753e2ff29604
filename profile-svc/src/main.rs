use clap::Parser;

#[global_allocator]
static ALLOCATOR: allezon_core::Allocator = allezon_core::Allocator;

/// profile-svc: per-cookie profiles over gRPC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: profile_svc::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = allezon_core::config::parse_with_admin_default("127.0.0.1:9466");
    let telemetry = allezon_core::telemetry::init("profile-svc");
    let result = profile_svc::run(cli.config, allezon_core::shutdown::on_signal()).await;
    // The spans of the last requests, and of the shutdown, are exported
    // before the process exits.
    telemetry.shutdown().await;
    result
}
