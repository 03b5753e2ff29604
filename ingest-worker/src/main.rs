use clap::Parser;

#[global_allocator]
static ALLOCATOR: allezon_core::Allocator = allezon_core::Allocator;

/// ingest-worker: folds the Kafka event log into aggregate cells.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ingest_worker::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = allezon_core::config::parse_with_admin_default("127.0.0.1:9469");
    let telemetry = allezon_core::telemetry::init("ingest-worker");
    let result = ingest_worker::run(cli.config, allezon_core::shutdown::on_signal()).await;
    // The spans of the last requests, and of the shutdown, are exported
    // before the process exits.
    telemetry.shutdown().await;
    if let Err(err) = result {
        // Exit here rather than by returning: a worker stopped as stuck may
        // leave a thread inside a client call that never returns, and the
        // runtime's drop would wait for it forever, keeping the process up
        // and its supervisor from restarting it.
        eprintln!("Error: {err:#}");
        std::process::exit(1);
    }
    Ok(())
}
