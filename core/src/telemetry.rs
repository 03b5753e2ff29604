//! Logging and tracing set-up shared by every binary.
//!
//! Log lines go to stderr; `RUST_LOG` picks the level (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call twice (tests do): the second
/// call is a no-op.
pub fn init(service: &'static str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init()
        .is_ok();
    if installed {
        tracing::info!(service, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}
