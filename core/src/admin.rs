//! The admin port: `/healthz` (the process is alive), `/readyz` (it can do
//! its work) and `/metrics` (Prometheus text format).
//!
//! Metrics are a small registry of named counters and gauges rather than a
//! metrics framework: each service exports a handful of numbers, and the
//! text format is simple enough that owning it costs less than a dependency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::StatusCode;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

struct Metric {
    help: &'static str,
    kind: Kind,
    value: Arc<AtomicI64>,
}

/// A number the admin port exports. Cheap to clone and to update.
#[derive(Debug, Clone)]
pub struct Value(Arc<AtomicI64>);

impl Value {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

static REGISTRY: LazyLock<Mutex<BTreeMap<String, Metric>>> = LazyLock::new(Default::default);

fn register(name: &str, help: &'static str, kind: Kind) -> Value {
    let mut registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let metric = registry.entry(name.to_owned()).or_insert_with(|| Metric {
        help,
        kind,
        value: Arc::default(),
    });
    Value(Arc::clone(&metric.value))
}

/// A monotonically increasing count; the same name gives the same counter.
/// `name` may carry Prometheus labels: `allezon_x_total{result="ok"}`.
pub fn counter(name: &str, help: &'static str) -> Value {
    register(name, help, Kind::Counter)
}

/// A value that goes up and down.
pub fn gauge(name: &str, help: &'static str) -> Value {
    register(name, help, Kind::Gauge)
}

/// Everything registered, in the Prometheus text format.
pub fn render() -> String {
    let registry = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = String::new();
    let mut described = None;
    for (name, metric) in registry.iter() {
        let family = name.split('{').next().unwrap_or(name);
        if described != Some(family) {
            let kind = match metric.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {family} {}", metric.help);
            let _ = writeln!(out, "# TYPE {family} {kind}");
            described = Some(family);
        }
        let _ = writeln!(out, "{name} {}", metric.value.load(Ordering::Relaxed));
    }
    out
}

/// Whether the process can do its work; `/readyz` answers 503 until set.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { render() }))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves the admin port on `addr`, when given, until `shutdown`.
pub async fn spawn(
    addr: Option<SocketAddr>,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let Some(addr) = addr else { return Ok(()) };
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "admin listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, router(readiness))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(%err, "admin port stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_once_with_their_labels() {
        counter("t_admin_total{result=\"ok\"}", "test counter").add(3);
        counter("t_admin_total{result=\"err\"}", "test counter").inc();
        gauge("t_admin_lag", "test gauge").set(-2);
        let text = render();
        assert_eq!(text.matches("# TYPE t_admin_total counter").count(), 1);
        assert!(text.contains("t_admin_total{result=\"ok\"} 3\n"));
        assert!(text.contains("t_admin_total{result=\"err\"} 1\n"));
        assert!(text.contains("# TYPE t_admin_lag gauge\nt_admin_lag -2\n"));
    }
}
