//! ingest-worker: consumes the event log, folds tags into per-minute cells for
//! all 8 filter combinations, and sends packed increments to aggregate-svc,
//! exactly once (see [`worker`]).
//!
//! With the embedded log it runs inside the all-in-one `allezon` binary,
//! which owns the log.

mod ids;
pub mod worker;

pub use worker::{Worker, WorkerConfig, WorkerError};
