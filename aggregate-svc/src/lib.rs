//! aggregate-svc: per-minute COUNT and SUM(price) cells (being built; see issue 3).
