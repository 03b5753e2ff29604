use clap::Parser;

#[global_allocator]
static ALLOCATOR: allezon_core::Allocator = allezon_core::Allocator;

/// Allezon, all in one process on the embedded backends.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: allezon::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = allezon_core::config::parse_with_admin_default("127.0.0.1:9464");
    let telemetry = allezon_core::telemetry::init("allezon");
    let running = allezon::start(cli.config, allezon_core::shutdown::on_signal()).await?;
    // One machine-readable line, so scripts and tests started with port 0
    // learn where to connect.
    let admin = running
        .admin_addr
        .map_or_else(|| "off".to_owned(), |addr| addr.to_string());
    println!(
        "allezon listening http={} grpc={} admin={admin}",
        running.http_addr, running.grpc_addr
    );
    let result = running.wait().await;
    // The spans of the last requests, and of the shutdown, are exported
    // before the process exits.
    telemetry.shutdown().await;
    result
}
