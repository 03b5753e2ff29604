use clap::Parser;

#[global_allocator]
static ALLOCATOR: allezon_core::Allocator = allezon_core::Allocator;

/// allezon-replay: replays a deterministic tag stream against a deployment and
/// checks every answer. Exits 1 on any wrong answer, timeout or error.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: allezon_replay::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = allezon_replay::run(cli.config).await?;
    print!("{}", allezon_replay::render(&report));
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}
