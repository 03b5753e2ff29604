//! End-to-end tests: the real system, started on port 0.
