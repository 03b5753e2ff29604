//! A store on a cluster that may not answer yet.
//!
//! A service started before Aerospike listens (a pod scheduled before the
//! database's, a database restarting) stays up: its gRPC port answers, its
//! readiness is false, and every store call fails with UNAVAILABLE, which
//! callers retry; meanwhile it connects in the background, with backoff,
//! until the cluster answers. Then it is ready, and stays up to date with
//! the cluster's state ([`Cluster::watch`]).

use std::sync::Arc;
use std::time::Duration;

use allezon_core::admin::Readiness;
use allezon_core::config::AerospikeArgs;
use allezon_core::shutdown::Shutdown;
use allezon_core::{Error, Result};
use tokio::sync::OnceCell;

use crate::Cluster;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A store that exists once the cluster answered.
#[derive(Debug)]
pub struct Pending<S>(Arc<OnceCell<S>>);

impl<S> Clone for Pending<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S> Pending<S> {
    /// The store, or UNAVAILABLE while the cluster has not answered yet.
    pub fn get(&self) -> Result<&S> {
        self.0
            .get()
            .ok_or_else(|| Error::unavailable("the Aerospike cluster is not reachable yet"))
    }
}

impl<S: Send + Sync + 'static> Pending<S> {
    /// Connects to the cluster in `args` in the background, retrying with
    /// backoff until it answers or `shutdown`; then builds the store with
    /// `make`. The `aerospike` readiness condition is false until then.
    pub fn connect(
        args: &AerospikeArgs,
        readiness: &Readiness,
        shutdown: &Shutdown,
        make: impl FnOnce(Cluster) -> S + Send + 'static,
    ) -> Self {
        let cell = Arc::new(OnceCell::new());
        readiness.set_condition("aerospike", false);
        let (args, readiness, shutdown) = (args.clone(), readiness.clone(), shutdown.clone());
        let pending = Self(Arc::clone(&cell));
        tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            let cluster = loop {
                match Cluster::connect(&args).await {
                    Ok(cluster) => break cluster,
                    Err(err) => {
                        tracing::warn!(%err, ?backoff, "Aerospike not reachable; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            let _ = cell.set(make(cluster.clone()));
            readiness.set_condition("aerospike", true);
            cluster.watch(&readiness, &shutdown);
            tracing::info!("connected to Aerospike");
        });
        pending
    }
}
