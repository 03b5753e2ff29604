//! The admin port: `/healthz` (the process is alive), `/readyz` (it can do
//! its work) and `/metrics` (Prometheus text, from [`crate::metrics`]).
//!
//! It is on by default in every binary, on an address of its own, never on
//! the public REST port: an operator's endpoints are not the shops'.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use http::{StatusCode, header};
use tokio::sync::watch;

use crate::shutdown::Shutdown;

/// Where the admin port listens: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<SocketAddr>);

impl FromStr for AdminAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(Self(None))
        } else {
            s.parse().map(|addr| Self(Some(addr)))
        }
    }
}

impl fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// The condition every process has: it finished starting.
const STARTED: &str = "started";

/// Whether the process can do its work: ready when every condition holds.
///
/// A process starts unready (`started` is false until [`Readiness::set`]);
/// each dependency it watches adds a condition of its own, false while that
/// dependency is lost. `/readyz` and the gRPC health service both follow it.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    conditions: Mutex<BTreeMap<&'static str, bool>>,
    ready: watch::Sender<bool>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(Inner {
            conditions: Mutex::new(BTreeMap::from([(STARTED, false)])),
            ready: watch::Sender::new(false),
        }))
    }
}

impl Readiness {
    /// A readiness that holds already: for servers started inside tests,
    /// and for parts whose process watches its dependencies elsewhere.
    pub fn started() -> Self {
        let readiness = Self::default();
        readiness.set(true);
        readiness
    }

    /// Marks the process as started (or, with `false`, as stopping).
    pub fn set(&self, ready: bool) {
        self.set_condition(STARTED, ready);
    }

    /// Records whether the dependency or task `name` is usable.
    pub fn set_condition(&self, name: &'static str, ok: bool) {
        let mut conditions = self
            .0
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = conditions.insert(name, ok);
        if before != Some(ok) {
            if ok {
                tracing::info!(condition = name, "ready again");
            } else if name != STARTED {
                tracing::warn!(condition = name, "not ready");
            }
        }
        let ready = conditions.values().all(|ok| *ok);
        self.0.ready.send_if_modified(|was| {
            let changed = *was != ready;
            *was = ready;
            changed
        });
    }

    pub fn is_ready(&self) -> bool {
        *self.0.ready.borrow()
    }

    /// Follows every change of [`Readiness::is_ready`].
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.ready.subscribe()
    }

    /// The conditions that do not hold now, but the ones named in
    /// `excluded`; `started` is never left out (a process stopping is
    /// never ready).
    pub fn failing_without(&self, excluded: &[&str]) -> Vec<&'static str> {
        let mut failing = self.failing();
        failing.retain(|name| *name == STARTED || !excluded.contains(name));
        failing
    }

    /// The conditions that do not hold now.
    pub fn failing(&self) -> Vec<&'static str> {
        self.0
            .conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(name, _)| *name)
            .collect()
    }

    /// Runs `probe` every `every` until `shutdown`, keeping the condition
    /// `name` to its answer: a lost dependency turns the process unready,
    /// and ready again once it answers.
    pub fn watch<F, Fut>(&self, name: &'static str, every: Duration, shutdown: Shutdown, probe: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let readiness = self.clone();
        tokio::spawn(async move {
            loop {
                let ok = tokio::select! {
                    () = shutdown.cancelled() => return,
                    ok = probe() => ok,
                };
                readiness.set_condition(name, ok);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        });
    }
}

pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                    crate::metrics::render(),
                )
            }),
        )
        .with_state(readiness)
}

/// `/readyz`: every condition, or every one but those named by `exclude`
/// (repeated, or comma-separated), as Kubernetes' own API server does: a
/// probe may leave out a dependency whose loss the process answers for
/// itself (the gateway's, while a service behind it is down), while a
/// plain `/readyz` still says it is missing.
async fn readyz(
    State(readiness): State<Readiness>,
    RawQuery(query): RawQuery,
) -> (StatusCode, String) {
    let excluded: Vec<&str> = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("exclude="))
        .flat_map(|names| names.split(','))
        .collect();
    let failing = readiness.failing_without(&excluded);
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join(", ")),
        )
    }
}

/// Binds the admin port on `addr` (unless `off`) and serves it until
/// `shutdown`. Returns the bound address, so port 0 can be used.
pub async fn spawn(
    addr: AdminAddr,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(addr) = addr.0 else { return Ok(None) };
    let listener = crate::net::bind(addr)?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "admin listening");
    tokio::spawn(async move {
        let served = axum::serve(listener, router(readiness))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!(%err, "admin port stopped");
        }
    });
    Ok(Some(bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_started_and_every_dependency_holds() {
        let readiness = Readiness::default();
        assert!(!readiness.is_ready());
        readiness.set(true);
        assert!(readiness.is_ready());
        readiness.set_condition("kafka", false);
        assert!(!readiness.is_ready());
        assert_eq!(readiness.failing(), ["kafka"]);
        readiness.set_condition("kafka", true);
        assert!(readiness.is_ready());
    }

    #[test]
    fn readiness_can_leave_conditions_out() {
        let readiness = Readiness::started();
        readiness.set_condition("profile-svc", false);
        assert!(!readiness.is_ready());
        assert!(readiness.failing_without(&["profile-svc"]).is_empty());
        assert_eq!(
            readiness.failing_without(&["aggregate-svc"]),
            ["profile-svc"]
        );
        readiness.set(false);
        // Leaving a dependency out never hides that the process is stopping.
        assert_eq!(readiness.failing_without(&["profile-svc"]), ["started"]);
        assert_eq!(
            readiness.failing_without(&["profile-svc", "started"]),
            ["started"]
        );
    }

    #[test]
    fn admin_addr_is_an_address_or_off() {
        assert_eq!("off".parse::<AdminAddr>().unwrap(), AdminAddr(None));
        let addr: AdminAddr = "127.0.0.1:9090".parse().unwrap();
        assert_eq!(addr.to_string(), "127.0.0.1:9090");
        assert!("nonsense".parse::<AdminAddr>().is_err());
    }
}
