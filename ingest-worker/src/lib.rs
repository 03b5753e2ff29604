//! ingest-worker: folds the event log into aggregate cells (being built; see issue 3).
