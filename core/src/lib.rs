//! Allezon's shared library: the domain types and their JSON and protobuf
//! forms, the contract's time formats, query parsing, the error type with its
//! HTTP and gRPC mappings, shared configuration, shutdown and telemetry.

pub mod admin;
pub mod cells;
pub mod client;
pub mod config;
pub mod error;
pub mod grpc;
pub mod grpc_observe;
pub mod metrics;
pub mod net;
pub mod query;
pub mod shutdown;
pub mod tag;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod trace;

pub use error::{Error, ErrorKind, Result};
pub use tag::{Action, Device, ProductId, ProductInfo, UserTag};

/// The allocator every binary installs. Answers are built from many small
/// strings (a profile is 400 tags of 8 fields, decoded twice on its way out),
/// and glibc's malloc spent more time on them than the work itself did.
pub use mimalloc::MiMalloc as Allocator;
