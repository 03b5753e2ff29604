//! End-to-end tests: the real `allezon` binary, started on port 0 with a
//! fresh data directory, driven over HTTP the way external clients drive it.
//!
//! One test binary (`autotests = false`) so the suite links once.

mod bad_input;
mod durability;
mod profiles;
mod support;
