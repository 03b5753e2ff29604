//! End-to-end tests: the real `allezon` binary, started on port 0 with a
//! fresh data directory, driven over HTTP the way external clients drive it.
//!
//! One test binary (`autotests = false`) so the suite links once.

// Test helpers panic on anything unexpected: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod aggregates;
mod bad_input;
mod collector;
mod consistency;
mod durability;
mod multiprocess;
mod multiprocess_tracing;
mod observability;
mod outage;
mod outliers;
mod profiles;
mod replay;
mod startup;
mod support;
mod tracing;
