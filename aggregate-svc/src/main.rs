use clap::Parser;

#[global_allocator]
static ALLOCATOR: allezon_core::Allocator = allezon_core::Allocator;

/// aggregate-svc: per-minute aggregate cells over gRPC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: aggregate_svc::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = allezon_core::config::parse_with_admin_default("127.0.0.1:9467");
    let telemetry = allezon_core::telemetry::init("aggregate-svc");
    let result = aggregate_svc::run(cli.config, allezon_core::shutdown::on_signal()).await;
    // The spans of the last requests, and of the shutdown, are exported
    // before the process exits.
    telemetry.shutdown().await;
    result
}
